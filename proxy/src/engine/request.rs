//! The request path, step by step:
//!
//! 1. **framing** — refuse what cannot be read safely (400);
//! 2. **loop** — a request that already passed this node is refused (508);
//! 3. **site** — by Host; an unknown host is never proxied (421);
//! 4. **key** — normalised path, shaped query, key headers;
//! 5. **lookup** — memory, then disk, then `Vary`, then the purge rules;
//! 6. **serve** — fresh hit; stale-while-revalidate; or
//! 7. **fetch** — join the key's flight or lead it, revalidating a stored copy;
//! 8. **fail over** — stale-if-error, or an error response;
//! 9. **log** — `Cache-Status`, metrics, access log.
//!
//! Other methods are forwarded uncached, and a successful unsafe method
//! invalidates its URL (RFC 9111 §4.4).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use outpost_config::Site;
use tokio::sync::oneshot;

use super::fetch::{CDN_LOOP, FetchJob, Origin, X_FORWARDED_PROTO, forward_headers};
use super::flight::{Head, Join};
use super::observe::AccessRecord;
use super::respond::{Body, BodySource, Local, object_response};
use super::{Engine, Tier};
use crate::cache_status::{CacheStatus, Outcome};
use crate::host::{BadHost, RequestHost};
use crate::key::{Key, RequestKey, Scope, normalize_path, shape_query};
use crate::policy::{Directives, Freshness, is_hop_by_hop};
use crate::purge::Verdict;
use crate::serve::Secure;
use crate::store::{Entry, StoredObject};

/// What the steps after `key` need.
struct Ctx {
    engine: Arc<Engine>,
    site: Arc<Site>,
    rkey: RequestKey,
    method: Method,
    headers: HeaderMap,
    client: Option<SocketAddr>,
    /// Seconds cut off from the control plane, when partitioned.
    partitioned: Option<u64>,
    /// The request target's authority (HTTP/2 names the host there).
    authority: Option<http::uri::Authority>,
    /// Received over TLS.
    secure: bool,
}

impl Ctx {
    /// The Host sent upstream. HTTP/2 (and an HTTP/1.1 absolute-form target)
    /// name the host in the target, not in Host, and the target's authority
    /// is the one that counts (RFC 9113 §8.3.1). Built only when a request
    /// goes upstream, never on a hit.
    /// The host was checked before the key was made; this is its normalised
    /// form (lower case, no trailing dot), which the key covers.
    fn upstream_host(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.host()?.authority()).ok()
    }

    /// The request's host, checked in step 3.
    fn host(&self) -> Option<RequestHost<'_>> {
        let raw = match &self.authority {
            Some(a) => a.as_str(),
            None => self.headers.get(header::HOST)?.to_str().ok()?,
        };
        RequestHost::parse(raw).ok()
    }

    /// The key scope of this request's URLs, or of another host's.
    fn scope<'a>(&'a self, host: Option<RequestHost<'a>>) -> Scope<'a> {
        match host.or_else(|| self.host()) {
            Some(h) => Scope::of(&self.site, self.proto(), h),
            None => Scope { proto: self.proto(), host: None },
        }
    }

    fn proto(&self) -> Option<&'static str> {
        upstream_proto(self.engine.tier, self.secure, &self.headers)
    }
}

/// `X-Forwarded-Proto` for upstream requests: set by the edge, where the
/// client's scheme is known (a client's own value is never trusted); tiers
/// behind it pass on what the edge said, when it is `http` or `https`.
fn upstream_proto(tier: Tier, secure: bool, headers: &HeaderMap) -> Option<&'static str> {
    match tier {
        Tier::Edge => Some(if secure { "https" } else { "http" }),
        Tier::Shield => match headers.get(X_FORWARDED_PROTO).map(HeaderValue::as_bytes) {
            Some(b"https") => Some("https"),
            Some(b"http") => Some("http"),
            _ => None,
        },
    }
}

type Answer = (Response<Body>, CacheStatus);

fn local(l: Local) -> Answer {
    let status = CacheStatus::new(if matches!(l, Local::Upstream(_)) { Outcome::Error } else { Outcome::Local });
    (l.response(), status)
}

/// What the access log says of a request, taken before the request is
/// consumed (only when the log is on).
type LogLine = Option<(String, String, String)>;

fn log_line<B>(engine: &Engine, req: &Request<B>) -> LogLine {
    engine
        .log
        .enabled()
        .then(|| (req.method().to_string(), host_of(req).unwrap_or("").to_string(), req.uri().path().to_string()))
}

pub(super) async fn handle(
    engine: &Arc<Engine>,
    req: Request<Incoming>,
    client: Option<SocketAddr>,
    started: Instant,
) -> Response<Body> {
    let log = log_line(engine, &req);
    let answer = steps(engine, req, client).await;
    finish(engine, answer, client, started, log)
}

/// Step 1, decided by the listener: a request whose framing it could not
/// trust (both `Content-Length` and `Transfer-Encoding`, or a stream it
/// could not follow) is answered 400 and logged like any other.
pub(super) fn refused(
    engine: &Arc<Engine>,
    req: &Request<Incoming>,
    client: Option<SocketAddr>,
    started: Instant,
    why: &'static str,
) -> Response<Body> {
    let log = log_line(engine, req);
    finish(engine, local(Local::BadRequest(why)), client, started, log)
}

/// Step 9: `Cache-Status`, metrics and the access log.
fn finish(
    engine: &Engine,
    (mut resp, status): Answer,
    client: Option<SocketAddr>,
    started: Instant,
    log: LogLine,
) -> Response<Body> {
    if !resp.headers().contains_key("cache-status") {
        resp.headers_mut().insert("cache-status", status.header(&engine.node, None));
    }
    let took = started.elapsed();
    engine.metrics.request(status.outcome, resp.status().as_u16(), took);
    if let Some((method, host, path)) = log {
        engine.log.write(AccessRecord {
            ts: humantime::format_rfc3339_millis(engine.clock.now()).to_string(),
            node: engine.node.to_string(),
            client: client.map(|c| c.ip().to_string()).unwrap_or_default(),
            method,
            host,
            path,
            status: resp.status().as_u16(),
            cache: status.outcome.as_str(),
            bytes: resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            upstream_ms: status.upstream_wait.map(|d| d.as_secs_f64() * 1000.0),
            duration_ms: took.as_secs_f64() * 1000.0,
        });
    }
    resp
}

/// Where an `https_only` site sends a plain-HTTP request: the same host
/// (without the client's port) and target, over HTTPS on the node's port.
fn https_location<B>(req: &Request<B>, host: &RequestHost<'_>, https_port: Option<u16>) -> HeaderValue {
    let host = host.name().to_ascii_lowercase();
    let port = match https_port {
        Some(443) | None => String::new(),
        Some(p) => format!(":{p}"),
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    HeaderValue::from_str(&format!("https://{host}{port}{target}")).unwrap_or_else(|_| HeaderValue::from_static("/"))
}

fn host_of<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// Step 1: message framing that a proxy must not guess at (RFC 9112 §6.3).
fn check_framing<B>(req: &Request<B>) -> Result<(), Local> {
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(Local::BadRequest("both Content-Length and Transfer-Encoding"));
    }
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(Local::BadRequest("more than one Content-Length"));
    }
    if h.get_all(header::HOST).iter().count() > 1 {
        return Err(Local::BadRequest("more than one Host"));
    }
    Ok(())
}

/// Step 2: did this request already pass this node? Only a `CDN-Loop`
/// member this node added itself counts (RFC 8586): its name with the
/// node's secret, which a client cannot guess. A client's `Via` or
/// `CDN-Loop` naming our nodes proves nothing.
fn is_loop(headers: &HeaderMap, member: &str) -> bool {
    headers
        .get_all(CDN_LOOP)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| m.trim() == member)
}

async fn steps(engine: &Arc<Engine>, req: Request<Incoming>, client: Option<SocketAddr>) -> Answer {
    if let Err(l) = check_framing(&req) {
        return local(l);
    }
    if is_loop(req.headers(), &engine.hop.loop_member) {
        return local(Local::Loop);
    }
    // RFC 9112 §3.2: a request without a valid Host is a bad request.
    let host = match RequestHost::parse(host_of(&req).unwrap_or("")) {
        Ok(h) => h,
        Err(BadHost::Missing) => return local(Local::BadRequest("no Host")),
        Err(BadHost::Invalid) => return local(Local::BadRequest("invalid Host")),
    };
    let sites = engine.sites();
    let Some(site) = sites.find(&host).cloned() else {
        return local(Local::UnknownHost);
    };
    let secure = req.extensions().get::<Secure>().is_some();
    if site.https_only && !secure {
        return local(Local::Redirect(https_location(&req, &host, engine.https_port)));
    }
    let Ok(path) = normalize_path(req.uri().path()) else {
        return local(Local::BadRequest("malformed path"));
    };
    let query = shape_query(req.uri().query(), &site.cache);
    let scope = Scope::of(&site, upstream_proto(engine.tier, secure, req.headers()), host);
    let rkey = RequestKey::new(&site, scope, &path, query.as_deref(), req.headers());
    let method = req.method().clone();
    if method == Method::TRACE || method == Method::CONNECT {
        return local(Local::MethodNotAllowed);
    }
    let (parts, body) = req.into_parts();
    let cx = Ctx {
        engine: Arc::clone(engine),
        site,
        rkey,
        method: method.clone(),
        headers: parts.headers,
        client,
        partitioned: engine.partitioned_for().map(|p| p.as_secs()),
        authority: parts.uri.authority().cloned(),
        secure,
    };
    if method == Method::GET || method == Method::HEAD {
        cacheable(&cx).await
    } else {
        let raw_query = parts.uri.query().map(str::to_owned);
        // Boxed, like every path that goes upstream: the request's future
        // stays small, and a hit moves fewer bytes.
        Box::pin(forward(&cx, body, raw_query, &path)).await
    }
}

/// Step 5: the stored object for this request, following `Vary`.
struct Found {
    key: Key,
    object: Option<Arc<StoredObject>>,
    vary_miss: bool,
}

async fn lookup(cx: &Ctx) -> Found {
    let store = &cx.engine.store;
    // An object whose body did not all reach the disk (a crash) is dropped
    // and fetched again.
    let whole = |key: Key, o: Arc<StoredObject>| {
        if store.has_body(key, &o) {
            Some(o)
        } else {
            tracing::warn!(node = %cx.engine.node, "a cached body is incomplete (lost in a crash?); fetching it again");
            store.remove_object(key, &o);
            None
        }
    };
    match store.get(cx.rkey.primary).await {
        Some(Entry::Object(o)) => Found { key: cx.rkey.primary, object: whole(cx.rkey.primary, o), vary_miss: false },
        Some(Entry::Variants(v)) => {
            let key = cx.rkey.variant(&v.names, &cx.headers);
            match store.get(key).await {
                Some(Entry::Object(o)) => {
                    let object = whole(key, o);
                    let vary_miss = object.is_none();
                    Found { key, object, vary_miss }
                }
                _ => Found { key, object: None, vary_miss: true },
            }
        }
        _ => Found { key: cx.rkey.primary, object: None, vary_miss: false },
    }
}

fn serve_stored(cx: &Ctx, key: Key, obj: &StoredObject, status: CacheStatus) -> Answer {
    let status = CacheStatus { partitioned: cx.partitioned, ..status };
    let engine = &cx.engine;
    let now = engine.clock.now();
    let source = BodySource::Stored { store: engine.store.clone(), key, body: obj.body.clone() };
    let header = status.header(&engine.node, None);
    let resp = object_response(&cx.site, &engine.rules, &cx.method, &cx.headers, obj, source, now, header);
    (resp, status)
}

fn origin_of(cx: &Ctx) -> Origin {
    Origin {
        no_store: Directives::parse_all(cx.headers.get_all(header::CACHE_CONTROL)).no_store,
        headers: cx.headers.clone(),
        // The keyed URL (normalised path, shaped query) is what goes upstream.
        path: cx.rkey.url.clone(),
        client: cx.client.map(|c| c.ip()),
        has_authorization: cx.headers.contains_key(header::AUTHORIZATION),
        host: cx.upstream_host(),
        proto: cx.proto(),
    }
}

/// Steps 5 to 8 for GET and HEAD.
async fn cacheable(cx: &Ctx) -> Answer {
    let engine = &cx.engine;
    let auth = cx.headers.contains_key(header::AUTHORIZATION);
    let asked = Directives::parse_all(cx.headers.get_all(header::CACHE_CONTROL));
    // A request that says `no-store` may be answered from the cache, but
    // what it fetches is neither stored nor shared: it fetches alone.
    let alone = auth || asked.no_store;
    // Cut off from the control plane past the site's grace: purges may have
    // been missed, so hits are revalidated, and stale copies stand in when
    // the upstream does not answer.
    let distrust = cx.partitioned.is_some_and(|p| p > cx.site.stale.partition_grace.as_secs());
    for _ in 0..3 {
        let found = lookup(cx).await;
        let now = engine.clock.now();
        let mut stale = None;
        let mut outcome = if found.vary_miss { Outcome::VaryMiss } else { Outcome::UriMiss };
        if let Some(obj) = found.object {
            let verdict = engine.purges.check(&cx.site.id, &obj);
            if verdict == Verdict::Invalid {
                // Purged: the copy is gone, so this is a miss, not a stale hit.
                engine.store.remove_object(found.key, &obj);
                outcome = Outcome::UriMiss;
            } else if !auth || obj.shareable_with_auth {
                let freshness = match verdict {
                    Verdict::Valid if !distrust => obj.timing.freshness(now),
                    _ => Freshness::Stale(obj.timing.age(now)),
                };
                let ttl = Some(obj.timing.ttl_seconds(now));
                match freshness {
                    Freshness::Fresh(_) => {
                        return serve_stored(
                            cx,
                            found.key,
                            &obj,
                            CacheStatus { ttl, ..CacheStatus::new(Outcome::Hit) },
                        );
                    }
                    Freshness::StaleWhileRevalidate(_) => {
                        // While the upstream is failing for this key, the
                        // stale copy is served without trying again.
                        if !engine.holds.held(found.key, now) {
                            revalidate_in_background(cx, found.key, Arc::clone(&obj));
                        }
                        let status = CacheStatus { ttl, ..CacheStatus::new(Outcome::StaleWhileRevalidate) };
                        return serve_stored(cx, found.key, &obj, status);
                    }
                    Freshness::Stale(_) => {
                        // The upstream failed for this key a moment ago:
                        // the stale copy again, without asking it.
                        if engine.holds.held(found.key, now) && (distrust || obj.timing.usable_if_error(now)) {
                            let kind = if distrust { Outcome::StalePartitioned } else { Outcome::StaleIfError };
                            let status = CacheStatus { ttl, ..CacheStatus::new(kind) };
                            return serve_stored(cx, found.key, &obj, status);
                        }
                        outcome = Outcome::Expired;
                        stale = Some((found.key, obj));
                    }
                }
            }
        }
        if asked.only_if_cached {
            return local(Local::OnlyIfCached);
        }
        // Boxed: the fetch's state is large, and a hit never needs it.
        match Box::pin(fetch(cx, found.key, stale, outcome, alone, distrust)).await {
            Some(answer) => return answer,
            None => continue,
        }
    }
    // The variant kept changing under us: fetch alone.
    let found = lookup(cx).await;
    Box::pin(fetch(cx, found.key, None, Outcome::VaryMiss, true, false))
        .await
        .unwrap_or_else(|| local(Local::BadRequest("unstable variant")))
}

/// Stale-while-revalidate: one background revalidation per key.
fn revalidate_in_background(cx: &Ctx, key: Key, obj: Arc<StoredObject>) {
    if let Join::Leader(guard) = cx.engine.flights.join(key) {
        let job = FetchJob {
            engine: Arc::clone(&cx.engine),
            guard,
            site: Arc::clone(&cx.site),
            rkey: cx.rkey.clone(),
            request: origin_of(cx),
            stale: Some((key, obj)),
            pass: None,
        };
        tokio::spawn(job.run());
    }
}

/// Step 7: joins or leads the fetch for `key`. `None` means the shared
/// response is another variant: look up again.
async fn fetch(
    cx: &Ctx,
    key: Key,
    stale: Option<(Key, Arc<StoredObject>)>,
    outcome: Outcome,
    alone: bool,
    partitioned: bool,
) -> Option<Answer> {
    let engine = &cx.engine;
    let join = if alone { Join::Leader(engine.flights.private(key)) } else { engine.flights.join(key) };
    let (flight, pass_rx) = match join {
        Join::Leader(guard) => {
            let flight = Arc::clone(&guard.flight);
            let (tx, rx) = oneshot::channel();
            let job = FetchJob {
                engine: Arc::clone(engine),
                guard,
                site: Arc::clone(&cx.site),
                rkey: cx.rkey.clone(),
                request: origin_of(cx),
                stale: stale.clone(),
                pass: Some(tx),
            };
            tokio::spawn(job.run());
            (flight, Some(rx))
        }
        Join::Waiter(flight) => {
            engine.metrics.coalesced();
            (flight, None)
        }
    };
    let collapsed = pass_rx.is_none();
    let waiting = Instant::now();
    let mut answer = fetch_answer(cx, key, stale, outcome, collapsed, flight, pass_rx, partitioned).await?;
    answer.1.upstream_wait.get_or_insert(waiting.elapsed());
    Some(answer)
}

// The steps of one wait, spelled out: bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
async fn fetch_answer(
    cx: &Ctx,
    key: Key,
    stale: Option<(Key, Arc<StoredObject>)>,
    outcome: Outcome,
    collapsed: bool,
    flight: Arc<super::flight::Flight>,
    pass_rx: Option<oneshot::Receiver<Response<Incoming>>>,
    partitioned: bool,
) -> Option<Answer> {
    let engine = &cx.engine;
    let now = || engine.clock.now();
    match flight.head().await {
        Head::Shared(head) => {
            if collapsed && !head.vary.is_empty() && cx.rkey.variant(&head.vary, &cx.headers) != head.object_key {
                return None;
            }
            let obj = &as_leader_sees(&head.object, &head.withheld, collapsed);
            let status = CacheStatus {
                fwd_status: Some(obj.status.as_u16()),
                stored: head.storing,
                ttl: head.storing.then(|| obj.timing.ttl_seconds(now())),
                collapsed,
                detail: head.not_stored,
                partitioned: cx.partitioned,
                ..CacheStatus::new(outcome)
            };
            let header = status.header(&engine.node, head.upstream_status.as_ref());
            let source = BodySource::Flight {
                store: engine.store.clone(),
                flight: Arc::clone(&flight),
                head: Arc::clone(&head),
            };
            let resp = object_response(&cx.site, &engine.rules, &cx.method, &cx.headers, obj, source, now(), header);
            Some((resp, status))
        }
        Head::Revalidated(obj, withheld) => {
            let obj = as_leader_sees(&obj, &withheld, collapsed);
            let status = CacheStatus {
                fwd_status: Some(304),
                stored: true,
                ttl: Some(obj.timing.ttl_seconds(now())),
                collapsed,
                ..CacheStatus::new(Outcome::Revalidated)
            };
            Some(serve_stored(cx, flight.key, &obj, status))
        }
        Head::Pass(why) => match pass_rx {
            Some(rx) => Some(match rx.await {
                Ok(resp) => pass_response(cx, resp, Some(why)),
                Err(_) => local(Local::BadRequest("upstream response lost")),
            }),
            // Not shareable: this request fetches for itself.
            None => Box::pin(fetch(cx, key, stale, Outcome::Pass, true, partitioned)).await,
        },
        Head::Failed(error) => {
            if let Some((skey, obj)) = stale.filter(|(_, o)| partitioned || o.timing.usable_if_error(now())) {
                let kind = if partitioned { Outcome::StalePartitioned } else { Outcome::StaleIfError };
                let status = CacheStatus {
                    fwd_status: match &error {
                        crate::upstream::UpstreamError::Status(_, code) => Some(*code),
                        _ => None,
                    },
                    ttl: Some(obj.timing.ttl_seconds(now())),
                    collapsed,
                    ..CacheStatus::new(kind)
                };
                return Some(serve_stored(cx, skey, &obj, status));
            }
            let mut answer = local(Local::Upstream(error.clone()));
            answer.1.detail = Some(error.as_str());
            answer.1.collapsed = collapsed;
            answer.1.partitioned = cx.partitioned;
            Some(answer)
        }
        Head::Pending => Some(local(Local::Upstream(crate::upstream::UpstreamError::NoTarget))),
    }
}

/// The object as the request that made the fetch gets it: with the fields
/// kept out of the stored copy (`no-cache="set-cookie"`). Requests that
/// joined the fetch, like later hits, get the stored copy.
fn as_leader_sees(obj: &Arc<StoredObject>, withheld: &HeaderMap, collapsed: bool) -> Arc<StoredObject> {
    if collapsed || withheld.is_empty() {
        return Arc::clone(obj);
    }
    let mut headers = obj.headers.clone();
    for (name, value) in withheld {
        headers.append(name.clone(), value.clone());
    }
    Arc::new(StoredObject { headers, ..(**obj).clone() })
}

/// A response passed through unstored: hop-by-hop fields dropped, header
/// rules applied, our `Cache-Status` member appended.
fn pass_response(cx: &Ctx, resp: Response<Incoming>, detail: Option<&'static str>) -> Answer {
    let (parts, body) = resp.into_parts();
    let status = CacheStatus {
        fwd_status: Some(parts.status.as_u16()),
        detail,
        partitioned: cx.partitioned,
        ..CacheStatus::new(Outcome::Pass)
    };
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 1);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name, &parts.headers) && name != "cache-status" {
            headers.append(name.clone(), value.clone());
        }
    }
    if cx.engine.rules.strip_cdn_headers {
        for name in ["cdn-cache-control", "surrogate-control", "surrogate-key", "cache-tag"] {
            headers.remove(name);
        }
    }
    for name in &cx.site.headers.remove {
        headers.remove(name);
    }
    for (name, value) in &cx.site.headers.set {
        headers.insert(name.clone(), value.clone());
    }
    headers.insert("cache-status", status.header(&cx.engine.node, parts.headers.get("cache-status")));
    let mut out = Response::new(body.map_err(|e| -> crate::upstream::BoxError { Box::new(e) }).boxed_unsync());
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    (out, status)
}

/// Methods other than GET and HEAD: forwarded with their body, never
/// stored; a 2xx/3xx answer to an unsafe method invalidates the URL and the
/// same-site `Location` / `Content-Location` (RFC 9111 §4.4).
async fn forward(cx: &Ctx, body: Incoming, raw_query: Option<String>, path: &str) -> Answer {
    let engine = &cx.engine;
    let max = engine.limits.max_request_body;
    let declared =
        cx.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|l| l > max) {
        return local(Local::PayloadTooLarge);
    }
    // The body goes upstream with the length the client declared (hyper
    // has checked it, and delivers exactly that many bytes or an error);
    // without one it is sent chunked, or not at all when empty.
    let length = declared.and_then(|_| http_body::Body::size_hint(&body).exact());
    let body = Limited::new(body, max as usize)
        .map_err(|e| -> crate::upstream::BoxError {
            let too_large = e.is::<http_body_util::LengthLimitError>();
            Box::new(crate::upstream::ClientBodyError { message: e.to_string(), too_large })
        })
        .boxed_unsync();
    let mut up = Request::new(body);
    *up.method_mut() = cx.method.clone();
    let target = match &raw_query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    *up.uri_mut() = target.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    *up.headers_mut() =
        forward_headers(&engine.hop, &cx.site, &cx.headers, cx.client.map(|c| c.ip()), cx.proto(), false);
    if let Some(n) = length {
        up.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let host = cx.upstream_host();
    let waiting = Instant::now();
    let sent = engine.send(&cx.site, cx.rkey.primary, up, host).await;
    let mut answer = forwarded(cx, sent).await;
    answer.1.upstream_wait = Some(waiting.elapsed());
    answer
}

async fn forwarded(cx: &Ctx, sent: Result<Response<Incoming>, crate::upstream::UpstreamError>) -> Answer {
    let engine = &cx.engine;
    match sent {
        Ok(resp) => {
            let unsafe_method = !cx.method.is_safe();
            let status = resp.status();
            if unsafe_method && (status.is_success() || status.is_redirection()) {
                engine.remove_url(&cx.site, cx.scope(None), &cx.rkey.url).await;
                for name in [header::LOCATION, header::CONTENT_LOCATION] {
                    if let Some((host, url)) = same_site_path(cx, resp.headers().get(&name)) {
                        let host = host.as_deref().and_then(|h| RequestHost::parse(h).ok());
                        engine.remove_url(&cx.site, cx.scope(host), &url).await;
                    }
                }
            }
            pass_response(cx, resp, Some("method"))
        }
        Err(crate::upstream::UpstreamError::ClientBody { too_large: true }) => local(Local::PayloadTooLarge),
        Err(crate::upstream::UpstreamError::ClientBody { too_large: false }) => {
            local(Local::BadRequest("malformed request body"))
        }
        Err(e) => local(Local::Upstream(e)),
    }
}

/// The host (absent: the request's own) and path of a `Location`-style
/// value when it points into this site.
fn same_site_path(cx: &Ctx, value: Option<&HeaderValue>) -> Option<(Option<String>, String)> {
    let text = value?.to_str().ok()?;
    if text.starts_with('/') {
        return Some((None, text.to_string()));
    }
    let uri: http::Uri = text.parse().ok()?;
    let authority = uri.authority()?.as_str();
    let host = RequestHost::parse(authority).ok()?;
    let path = uri.path_and_query().map_or("/".into(), |p| p.to_string());
    cx.site.serves(&host.name().to_ascii_lowercase()).then(|| (Some(authority.to_string()), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_recognised_by_this_nodes_secret_only() {
        let hop = super::super::Hop::new("shield-1");
        let mut h = HeaderMap::new();
        h.append(header::VIA, HeaderValue::from_static("1.1 edge-fra, 1.1 shield-1"));
        h.append(CDN_LOOP, HeaderValue::from_static("shield-1, shield-1; t=guess"));
        assert!(!is_loop(&h, &hop.loop_member), "a client's Via or CDN-Loop proves nothing");
        let up = super::super::fetch::forward_headers(&hop, &site(), &h, None, None, true);
        assert!(is_loop(&up, &hop.loop_member), "what this node sent upstream, back again");
        assert!(!is_loop(&up, &super::super::Hop::new("shield-1").loop_member), "another process's secret differs");
        assert_eq!(up[header::VIA], "1.1 edge-fra, 1.1 shield-1, 1.1 shield-1");
    }

    fn site() -> Site {
        "[site]\nid = \"a\"\nhosts = [\"a.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:1\"\n".parse().unwrap()
    }

    #[test]
    fn framing_ambiguities_are_refused() {
        let req = |pairs: &[(&'static str, &'static str)]| {
            let mut r = Request::new(());
            for (k, v) in pairs {
                r.headers_mut().append(*k, HeaderValue::from_static(v));
            }
            r
        };
        assert!(check_framing(&req(&[("content-length", "3"), ("transfer-encoding", "chunked")])).is_err());
        assert!(check_framing(&req(&[("content-length", "3"), ("content-length", "4")])).is_err());
        assert!(check_framing(&req(&[("host", "a"), ("host", "b")])).is_err());
        assert!(check_framing(&req(&[("content-length", "3")])).is_ok());
    }
}
