//! The fetch behind a flight: ask the upstream, decide what may be stored,
//! stream the body to the store and to every waiter, and refresh a stored
//! copy on 304.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use outpost_config::{Site, WITHHELD_REQUEST_HEADERS};
use tokio::sync::oneshot;

use super::flight::{FlightGuard, Head, SharedHead};
use super::{Engine, Hop};
use crate::key::{Key, RequestKey, vary_names};
use crate::policy::{self, NotStored, RequestFacts, StorePlan, Timing, is_hop_by_hop, kept_on_304};
use crate::store::{BodyRef, BodyWriter, Entry, MAX_KNOWN_VARIANTS, StoredObject, Variants};
use crate::upstream::UpstreamError;

static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");
pub(crate) const CDN_LOOP: HeaderName = HeaderName::from_static("cdn-loop");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Request headers that a cacheable fetch does not forward: the cache asks
/// for the whole current object and answers ranges, conditionals and the
/// client's own cache preferences itself.
const NOT_FORWARDED_ON_FETCH: [HeaderName; 8] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::CACHE_CONTROL,
    header::PRAGMA,
];

/// The client request's facts a fetch needs.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub headers: HeaderMap,
    /// Path and shaped query sent upstream.
    pub path: String,
    pub client: Option<IpAddr>,
    pub has_authorization: bool,
    /// The request said `Cache-Control: no-store`: nothing of its response
    /// is stored (RFC 9111 §5.2.1.5).
    pub no_store: bool,
    /// Host sent upstream (the client's, from Host or the target).
    pub host: Option<HeaderValue>,
    /// `X-Forwarded-Proto` to set, at the edge.
    pub proto: Option<&'static str>,
}

/// One fetch, run in its own task.
#[derive(Debug)]
pub(crate) struct FetchJob {
    pub engine: Arc<Engine>,
    pub guard: FlightGuard,
    pub site: Arc<Site>,
    pub rkey: RequestKey,
    pub request: Origin,
    /// The stored copy being revalidated, and its key.
    pub stale: Option<(Key, Arc<StoredObject>)>,
    /// Where a response that must not be shared goes (the leader).
    pub pass: Option<oneshot::Sender<Response<Incoming>>>,
}

/// Request fields that describe the client's own message, never copied
/// upstream: the upstream request is framed by its own body
/// (`Content-Length` is set from the body actually sent), and
/// `Expect: 100-continue` was answered to the client by this node. A copied
/// `Content-Length` on a request sent without its body would make the
/// upstream read the next request on the connection as this one's body.
const MESSAGE_FIELDS: [HeaderName; 3] = [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::EXPECT];

/// Headers for an upstream request: the client's, less hop-by-hop and
/// framing fields, plus `Via`, `X-Forwarded-For` and, from the edge,
/// `X-Forwarded-Proto`.
pub(crate) fn forward_headers(
    hop: &Hop,
    site: &Site,
    client: &HeaderMap,
    from: Option<IpAddr>,
    proto: Option<&'static str>,
    cacheable: bool,
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(client.len() + 2);
    for (name, value) in client {
        if is_hop_by_hop(name, client)
            || MESSAGE_FIELDS.contains(name)
            || name == X_FORWARDED_PROTO
            || (cacheable && NOT_FORWARDED_ON_FETCH.contains(name))
            || (WITHHELD_REQUEST_HEADERS.contains(&name.as_str()) && !site.headers.forward.contains(name))
        {
            continue;
        }
        h.append(name.clone(), value.clone());
    }
    let node = &*hop.node;
    extend_list(&mut h, header::VIA, &format!("1.1 {node}"));
    extend_list(&mut h, CDN_LOOP, &hop.loop_member);
    if let Some(p) = proto {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(p));
    }
    if let Some(ip) = from {
        // RFC 7239: IPv6 addresses are quoted and bracketed.
        let hop = match ip {
            IpAddr::V4(v4) => format!("for={v4};by={node}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";by={node}"),
        };
        extend_list(&mut h, HeaderName::from_static("forwarded"), &hop);
        extend_list(&mut h, HeaderName::from_static("x-forwarded-for"), &ip.to_string());
    }
    h
}

/// Appends `item` to a comma-separated list header, as one line.
fn extend_list(h: &mut HeaderMap, name: HeaderName, item: &str) {
    let prev: Vec<&str> = h.get_all(&name).iter().filter_map(|v| v.to_str().ok()).collect();
    let value = if prev.is_empty() { item.to_string() } else { format!("{}, {item}", prev.join(", ")) };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(name, v);
    }
}

/// Tags from `Surrogate-Key` (space-separated) and `Cache-Tag` (comma-separated).
fn tags(headers: &HeaderMap) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (name, sep) in [(&SURROGATE_KEY, ' '), (&CACHE_TAG, ',')] {
        for v in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
            for t in v.split(sep).map(str::trim).filter(|t| !t.is_empty()) {
                if !out.iter().any(|x| x == t) {
                    out.push(t.to_string());
                }
            }
        }
    }
    out
}

/// The values of the `strip` fields: what the stored copy leaves out.
fn withheld(from: &HeaderMap, strip: &[HeaderName]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for name in strip {
        for v in from.get_all(name) {
            h.append(name.clone(), v.clone());
        }
    }
    h
}

/// The headers a stored copy keeps.
fn storable_headers(from: &HeaderMap, strip: &[HeaderName]) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if is_hop_by_hop(name, from)
            || name == header::AGE
            || name == header::CONTENT_LENGTH
            || name == CACHE_STATUS
            || strip.contains(name)
        {
            continue;
        }
        h.append(name.clone(), value.clone());
    }
    h
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse().ok())
}

impl FetchJob {
    fn upstream_request(&self) -> Request<crate::upstream::ReqBody> {
        let mut headers = forward_headers(
            &self.engine.hop,
            &self.site,
            &self.request.headers,
            self.request.client,
            self.request.proto,
            true,
        );
        if let Some((_, stale)) = &self.stale {
            if let Some(etag) = stale.headers.get(header::ETAG) {
                headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(lm) = stale.headers.get(header::LAST_MODIFIED) {
                headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
            }
        }
        let mut req = Request::new(super::respond::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.request.path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        *req.headers_mut() = headers;
        req
    }

    fn plan(&self, status: StatusCode, headers: &HeaderMap, at: SystemTime) -> Result<StorePlan, NotStored> {
        let facts = RequestFacts {
            method: &Method::GET,
            path: self.rkey.url.split('?').next().unwrap_or("/"),
            has_authorization: self.request.has_authorization,
            no_store: self.request.no_store,
        };
        policy::storability(facts, status, headers, &self.site.cache, &self.site.stale, at)
    }

    pub(crate) async fn run(mut self) {
        let engine = Arc::clone(&self.engine);
        let started = engine.clock.now();
        let started_real = SystemTime::now();
        let req = self.upstream_request();
        let host = self.request.host.clone();
        let result = engine.send(&self.site, self.rkey.primary, req, host).await;
        let now = engine.clock.now();
        let key = self.guard.flight.key;
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                if self.stale.is_some() {
                    engine.holds.failed(key, now);
                }
                self.guard.flight.set_head(Head::Failed(e));
                return;
            }
        };
        // Age from Date and Age headers is measured on the real clock: the
        // upstream's Date is a real time (the engine clock may be advanced).
        let age = |headers: &HeaderMap| policy::initial_age(headers, started_real, SystemTime::now());
        let status = resp.status();

        if status == StatusCode::NOT_MODIFIED
            && let Some((key, stale)) = self.stale.take()
        {
            let initial_age = age(resp.headers());
            self.revalidated(key, &stale, resp.headers(), initial_age, started, now);
            return;
        }
        // A partitioned node past its grace keeps serving stale copies too.
        let partitioned = engine.partitioned_for().is_some_and(|p| p > self.site.stale.partition_grace);
        if status.is_server_error()
            && let Some((_, stale)) = &self.stale
            && (partitioned || stale.timing.usable_if_error(now))
        {
            let label = self.site.id.clone();
            engine.holds.failed(key, now);
            self.guard.flight.set_head(Head::Failed(UpstreamError::Status(label, status.as_u16())));
            return;
        }
        engine.holds.succeeded(key);
        let plan = self.plan(status, resp.headers(), now);
        let too_large = content_length(resp.headers()).is_some_and(|l| l > self.site.cache.max_object_size);
        let not_stored = match (&plan, too_large) {
            (Ok(_), true) => Some(NotStored::TooLarge),
            (Ok(_), false) => None,
            (Err(r), _) => Some(*r),
        };
        // Error pages are shared with waiters even when not stored, unless
        // they belong to one user: a failing origin gets one request.
        let personal = matches!(not_stored, Some(NotStored::Private | NotStored::SetCookie | NotStored::Authorization));
        let share = not_stored.is_none() || (status.is_server_error() && !personal);
        if let (Some(_), Some((key, stale))) = (not_stored, &self.stale) {
            // The origin no longer allows storing it: stop revalidating a dead copy.
            engine.store.remove_object(*key, stale);
        }
        if !share {
            self.guard.flight.set_head(Head::Pass(not_stored.map_or("uncacheable", NotStored::as_str)));
            if let Some(tx) = self.pass.take() {
                let _ = tx.send(resp);
            }
            return;
        }
        let initial_age = age(resp.headers());
        self.stream(resp, plan.ok().filter(|_| not_stored.is_none()), not_stored, initial_age, started, now).await;
    }

    fn revalidated(
        &mut self,
        key: Key,
        stale: &StoredObject,
        fresh: &HeaderMap,
        initial_age: std::time::Duration,
        started: SystemTime,
        now: SystemTime,
    ) {
        let engine = &self.engine;
        let mut headers = stale.headers.clone();
        for name in fresh.keys() {
            if kept_on_304(name) || is_hop_by_hop(name, fresh) || name == header::AGE || name == CACHE_STATUS {
                continue;
            }
            headers.remove(name);
            for v in fresh.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        let mut kept_out = HeaderMap::new();
        let object = match self.plan(stale.status, &headers, now) {
            Ok(plan) => {
                kept_out = withheld(&headers, &plan.strip);
                let obj = StoredObject {
                    headers: storable_headers(&headers, &plan.strip),
                    tags: tags(&headers),
                    fetched_at: started,
                    timing: Timing {
                        lifetime: plan.lifetime,
                        initial_age,
                        response_time: now,
                        stale_while_revalidate: plan.stale_while_revalidate,
                        stale_if_error: plan.stale_if_error,
                        always_revalidate: plan.always_revalidate,
                    },
                    shareable_with_auth: plan.shareable_with_auth,
                    ..stale.clone()
                };
                let obj = Arc::new(obj);
                engine.store.insert(key, Entry::Object(Arc::clone(&obj)));
                obj
            }
            Err(_) => {
                // Valid now, but no longer storable: serve it this once.
                engine.store.remove_object(key, stale);
                Arc::new(StoredObject { headers, fetched_at: started, ..stale.clone() })
            }
        };
        self.guard.close();
        self.guard.flight.set_head(Head::Revalidated(object, Arc::new(kept_out)));
    }

    async fn stream(
        mut self,
        resp: Response<Incoming>,
        plan: Option<StorePlan>,
        not_stored: Option<NotStored>,
        initial_age: std::time::Duration,
        started: SystemTime,
        now: SystemTime,
    ) {
        let engine = Arc::clone(&self.engine);
        let (parts, mut body) = resp.into_parts();
        let strip = plan.as_ref().map_or(&[][..], |p| &p.strip[..]);
        let vary = vary_names(&parts.headers);
        let object_key =
            if vary.is_empty() { self.rkey.primary } else { self.rkey.variant(&vary, &self.request.headers) };
        let mut writer: Option<BodyWriter> = plan.as_ref().map(|_| engine.store.body_writer(object_key));
        let plan_timing = plan.as_ref().map(|p| Timing {
            lifetime: p.lifetime,
            initial_age,
            response_time: now,
            stale_while_revalidate: p.stale_while_revalidate,
            stale_if_error: p.stale_if_error,
            always_revalidate: p.always_revalidate,
        });
        let object = StoredObject {
            status: parts.status,
            headers: storable_headers(&parts.headers, strip),
            url: self.rkey.url.clone(),
            tags: tags(&parts.headers),
            fetched_at: started,
            timing: plan_timing.unwrap_or(Timing {
                lifetime: std::time::Duration::ZERO,
                initial_age: std::time::Duration::ZERO,
                response_time: now,
                stale_while_revalidate: std::time::Duration::ZERO,
                stale_if_error: std::time::Duration::ZERO,
                always_revalidate: true,
            }),
            shareable_with_auth: plan.as_ref().is_some_and(|p| p.shareable_with_auth),
            body: BodyRef::Inline(Bytes::new()),
        };
        let declared = content_length(&parts.headers);
        let head = Arc::new(SharedHead {
            object: Arc::new(object),
            object_key,
            vary: vary.clone(),
            len: declared,
            storing: writer.is_some(),
            not_stored: not_stored.map(NotStored::as_str),
            upstream_status: parts.headers.get(&CACHE_STATUS).cloned(),
            generation: writer.as_ref().map_or(0, BodyWriter::generation),
            withheld: withheld(&parts.headers, strip),
        });
        let flight = Arc::clone(&self.guard.flight);
        flight.set_head(Head::Shared(Arc::clone(&head)));

        let max = self.site.cache.max_object_size;
        let idle = self.site.origins.first().map_or(std::time::Duration::from_secs(30), |o| o.response_timeout);
        let mut received = 0u64;
        loop {
            flight.wait_for_readers().await;
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => Err("the upstream body stalled".to_string()),
                Ok(None) => break,
                Ok(Some(Err(e))) => Err(e.to_string()),
                Ok(Some(Ok(f))) => Ok(f),
            };
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    if let Some(w) = writer.take() {
                        w.abandon();
                    }
                    engine.metrics.upstream_body_error();
                    flight.finish_body(Err(e));
                    return;
                }
            };
            let Ok(data) = frame.into_data() else { continue };
            received += data.len() as u64;
            if let Some(w) = writer.as_mut() {
                w.push(&data);
                if w.len() > max
                    && let Some(w) = writer.take()
                {
                    w.abandon();
                }
            }
            let stored_through = writer.as_ref().map_or(0, BodyWriter::stored_through);
            flight.push(data, stored_through);
        }
        if let Some(w) = writer.take() {
            if declared.is_none_or(|d| d == received) {
                let body = w.finish();
                let obj = StoredObject { body, ..(*head.object).clone() };
                engine.store.insert(object_key, Entry::Object(Arc::new(obj)));
                if !vary.is_empty() {
                    self.index_variant(&vary, object_key).await;
                }
            } else {
                w.abandon();
            }
        }
        // Leave the map only once the object is stored: the next request
        // then finds it instead of starting another fetch.
        self.guard.close();
        flight.finish_body(Ok(()));
    }

    async fn index_variant(&self, vary: &[HeaderName], key: Key) {
        let store = &self.engine.store;
        let mut known = match store.get(self.rkey.primary).await {
            Some(Entry::Variants(v)) if v.names == vary => v.known.clone(),
            _ => Vec::new(),
        };
        if !known.contains(&key) {
            known.push(key);
            if known.len() > MAX_KNOWN_VARIANTS {
                known.remove(0);
            }
        }
        store.insert(self.rkey.primary, Entry::Variants(Arc::new(Variants { names: vary.to_vec(), known })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_clients_framing_never_goes_upstream() {
        let h = client(&[
            ("content-length", "10"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("accept", "*/*"),
            ("range", "bytes=0-1"),
        ]);
        let site: Site =
            "[site]\nid = \"a\"\nhosts = [\"a.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:1\"\n".parse().unwrap();
        for cacheable in [true, false] {
            let up = forward_headers(&Hop::new("edge-1"), &site, &h, None, None, cacheable);
            for name in ["content-length", "transfer-encoding", "expect", "connection", "x-hop"] {
                assert!(!up.contains_key(name), "{name} forwarded (cacheable: {cacheable})");
            }
            assert_eq!(up["accept"], "*/*");
            assert_eq!(up.contains_key("range"), !cacheable, "a fetch asks for the whole object");
            assert_eq!(up["via"], "1.1 edge-1");
        }
    }
}

#[cfg(test)]
mod withheld {
    use super::*;

    #[test]
    fn override_fields_are_withheld_unless_the_site_forwards_them() {
        let mut client = HeaderMap::new();
        for name in WITHHELD_REQUEST_HEADERS {
            client.insert(HeaderName::from_static(name), HeaderValue::from_static("evil.test"));
        }
        client.insert(X_FORWARDED_PROTO, HeaderValue::from_static("gopher"));
        let base = "[site]\nid = \"a\"\nhosts = [\"a.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:1\"\n";
        let plain: Site = base.parse().unwrap();
        let up = forward_headers(&Hop::new("edge-1"), &plain, &client, None, Some("https"), true);
        for name in WITHHELD_REQUEST_HEADERS {
            assert!(!up.contains_key(name), "{name} forwarded");
        }
        assert_eq!(up[X_FORWARDED_PROTO], "https", "the client's own value is replaced");
        let keeps: Site = format!("{base}[headers]\nforward = [\"x-forwarded-host\"]\n").parse().unwrap();
        let up = forward_headers(&Hop::new("shield-1"), &keeps, &client, None, None, true);
        assert_eq!(up["x-forwarded-host"], "evil.test");
        assert!(!up.contains_key("x-original-url"));
        assert!(!up.contains_key(X_FORWARDED_PROTO), "a shield passes on only http or https");
    }
}
