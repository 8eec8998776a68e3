//! The fetch behind a flight, run in its own task: ask the upstream, decide
//! what may be stored, stream the body to the store and to every waiter,
//! and refresh a stored copy on 304.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use outpost_config::Site;
use outpost_net::{Errand, RecvBody};
use tokio::sync::oneshot;

use super::Engine;
use super::context::Ctx;
use super::flight::{Flight, FlightGuard, Head, SharedHead};
use crate::cache_status::Detail;
use crate::error::Error;
use crate::headers::{CACHE_STATUS, CACHE_TAG, SURROGATE_KEY};
use crate::key::{Key, RequestKey, vary_names};
use crate::policy::{self, NotStored, RequestFacts, StorePlan, Timing, is_hop_by_hop, kept_on_304};
use crate::store::{BodyRef, BodyWriter, Entry, MAX_KNOWN_VARIANTS, StoredObject, Variants};
use crate::upstream::request::{self, FromClient};
use crate::upstream::{UpstreamError, UpstreamErrorKind};

/// How long the upstream's body may pause when the origin says nothing.
pub(super) const DEFAULT_BODY_IDLE: Duration = Duration::from_secs(30);

/// What the body of a shared fetch must keep up: a frame within every
/// `idle` (the origin's `response_timeout`), and `min_rate` bytes a second
/// on average over each `idle` of waiting for frames (`body_min_rate`).
/// Only time spent waiting on the upstream counts, not time the fetch
/// waits for its readers or the store. Without the rate, an origin that
/// sends a byte now and then holds the fetch, every request waiting on it,
/// and a place under the origin's `max_connections`, for as long as it
/// pleases.
#[derive(Debug)]
struct BodyPace {
    idle: Duration,
    min_rate: u64,
    /// Bytes and time waiting for them in the current window.
    got: u64,
    waited: Duration,
}

impl BodyPace {
    /// For a body with the response fields `headers`: an event stream
    /// (which may be shared and stored when it says `no-cache`) sends
    /// little between its events, and is held to `idle` alone.
    fn of(site: &Site, headers: &HeaderMap) -> BodyPace {
        let origin = site.origins.first();
        let events = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream")));
        let min_rate = origin.map_or(outpost_config::DEFAULT_ORIGIN_BODY_MIN_RATE, |o| o.body_min_rate);
        BodyPace {
            idle: origin.map_or(DEFAULT_BODY_IDLE, |o| o.response_timeout),
            min_rate: if events { 0 } else { min_rate },
            got: 0,
            waited: Duration::ZERO,
        }
    }

    /// Counts `n` bytes that took `waited` to come; false once a window
    /// of `idle` has brought less than the rate.
    fn came(&mut self, n: u64, waited: Duration) -> bool {
        self.got += n;
        self.waited += waited;
        if self.waited < self.idle {
            return true;
        }
        let enough = self.got as f64 >= self.min_rate as f64 * self.waited.as_secs_f64();
        (self.got, self.waited) = (0, Duration::ZERO);
        enough
    }
}

/// What a fetch needs of the request that started it.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub from: FromClient,
    /// The request said `Cache-Control: no-store`: nothing of its response
    /// is stored (RFC 9111 §5.2.1.5).
    pub no_store: bool,
    pub has_authorization: bool,
    /// Host sent upstream.
    pub host: Option<HeaderValue>,
}

/// One fetch.
#[derive(Debug)]
pub(crate) struct FetchJob {
    engine: Arc<Engine>,
    guard: FlightGuard,
    site: Arc<Site>,
    rkey: RequestKey,
    request: Fetched,
    /// The stored copy being revalidated, and its key.
    stale: Option<(Key, Arc<StoredObject>)>,
    /// Where a response that must not be shared goes (the leader).
    pass: Option<oneshot::Sender<Response<RecvBody>>>,
    /// The place the fetch holds among the fetches its client's connection
    /// may have running, given up when it ends.
    _errand: Errand,
    /// Where its URL's invalidations stood as it began.
    mark: u64,
}

/// When the fetch started and its response came (engine clock), and when
/// it started by the real clock (the upstream's `Date` is a real time).
#[derive(Debug, Clone, Copy)]
struct Times {
    started: SystemTime,
    started_real: SystemTime,
    now: SystemTime,
}

impl Times {
    /// Age from the response's `Date` and `Age` headers.
    fn initial_age(&self, headers: &HeaderMap) -> Duration {
        policy::initial_age(headers, self.started_real, SystemTime::now())
    }
}

/// When what came with `headers` was fetched from the origin: as the fetch
/// began, unless the upstream answered from a copy of its own kept past
/// freshness because it could not reach its own upstream (its
/// `Cache-Status` member a `hit` with `fwd=stale`: a shield's
/// stale-if-error, or one cut off from the control plane). That copy is as
/// old as its `Age` says, or up to a second older (`Age` is whole seconds:
/// the earlier time counts, so a purge after it applies): stored as
/// fetched now, it would count as fetched
/// after every purge this node applied meanwhile, and undo a soft purge
/// the upstream's copy was standing in for.
fn fetched_when(headers: &HeaderMap, times: &Times) -> SystemTime {
    // The nearest upstream's member is the last.
    let nearest = headers.get_all(CACHE_STATUS).iter().next_back().and_then(|v| v.to_str().ok()).unwrap_or_default();
    let nearest = nearest.rsplit(',').next().unwrap_or_default();
    let has = |param: &str| nearest.split(';').any(|p| p.trim() == param);
    if !(has("hit") && has("fwd=stale")) {
        return times.started;
    }
    let age = headers.get(header::AGE).and_then(policy::age).unwrap_or(0);
    times.started.checked_sub(Duration::from_secs(age.saturating_add(1))).unwrap_or(times.started)
}

/// Freshness as a plan says, from `now`.
pub(super) fn timing(plan: &StorePlan, initial_age: Duration, now: SystemTime) -> Timing {
    Timing {
        lifetime: plan.lifetime,
        initial_age,
        response_time: now,
        stale_while_revalidate: plan.stale_while_revalidate,
        stale_if_error: plan.stale_if_error,
        always_revalidate: plan.always_revalidate,
    }
}

/// Tags from `Surrogate-Key` (space-separated) and `Cache-Tag` (comma-separated).
pub(super) fn tags(headers: &HeaderMap) -> Vec<String> {
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
pub(super) fn storable_headers(from: &HeaderMap, strip: &[HeaderName]) -> HeaderMap {
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

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse().ok())
}

impl FetchJob {
    pub(crate) fn new(
        cx: &Ctx,
        (guard, errand): (FlightGuard, Errand),
        request: Fetched,
        stale: Option<(Key, Arc<StoredObject>)>,
        pass: Option<oneshot::Sender<Response<RecvBody>>>,
    ) -> FetchJob {
        FetchJob {
            engine: Arc::clone(&cx.engine),
            guard,
            site: Arc::clone(&cx.site),
            rkey: cx.rkey.clone(),
            request,
            stale,
            pass,
            _errand: errand,
            mark: cx.engine.invalidation_mark(cx.rkey.primary),
        }
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
        let (started, started_real) = (engine.clock.stamp(), SystemTime::now());
        let result = loop {
            // The keyed URL (normalised path, shaped query) is what goes upstream.
            let validators = self.stale.as_ref().map(|(_, s)| &s.headers);
            let mut req = request::fetch(
                &engine.hop,
                &self.site,
                &self.request.from,
                &self.rkey.url,
                validators,
                self.rkey.coding,
            );
            engine.mark_fetch(&mut req);
            let (flight, site, node) = (Arc::clone(&self.guard.flight), Arc::clone(&self.site), Arc::clone(&engine));
            request::on_interim(&mut req, move |status, mut fields| {
                super::respond::interim_rules(&mut fields, &site, &node.rules);
                flight.interim(status, fields);
            });
            let result = engine.upstream.send(&self.site, self.rkey.placement(), req, self.request.host.clone()).await;
            // A 304 that names another copy than the one stored (another
            // validator, another Vary) says nothing of it (RFC 9111
            // §4.3.4): the copy is dropped and the object asked for whole.
            if let (Ok(resp), Some((key, stale))) = (&result, &self.stale)
                && resp.status() == StatusCode::NOT_MODIFIED
                && !vouches_for(resp.headers(), &stale.headers)
            {
                engine.store.remove_object(*key, stale);
                self.stale = None;
                continue;
            }
            break result;
        };
        let times = Times { started, started_real, now: engine.clock.now() };
        match result {
            Err(e) => self.failed(e, times.now),
            Ok(resp) if resp.status() == StatusCode::NOT_MODIFIED && self.stale.is_some() => {
                self.revalidated(resp.headers(), times);
            }
            Ok(resp) if resp.status().is_server_error() && self.stale_stands_in(times.now) => {
                let e = UpstreamError::new(UpstreamErrorKind::Status(resp.status().as_u16()), self.site.id.as_str());
                self.failed(e, times.now);
            }
            Ok(resp) => self.answered(resp, times).await,
        }
    }

    /// May the stored copy stand in for an upstream error now? (A node cut
    /// off from its control plane past the site's grace keeps serving stale
    /// copies too.)
    fn stale_stands_in(&self, now: SystemTime) -> bool {
        self.stale.as_ref().is_some_and(|(_, s)| s.timing.stands_in(now, self.engine.distrusts(&self.site)))
    }

    /// No usable response: waiters serve stale if they may, or an error;
    /// the key is held so the failing upstream is not asked again at once.
    fn failed(&self, e: UpstreamError, now: SystemTime) {
        if self.stale.is_some() {
            self.engine.holds.failed(self.guard.flight.key, now);
        }
        self.guard.flight.set_head(Head::Failed(Error::from(e)));
    }

    /// A response to pass on: stored and shared, shared only (an error
    /// page), or handed to the leader alone.
    async fn answered(mut self, resp: Response<RecvBody>, times: Times) {
        let engine = Arc::clone(&self.engine);
        engine.holds.succeeded(self.guard.flight.key);
        let status = resp.status();
        let plan = self.plan(status, resp.headers(), times.now);
        let too_large = content_length(resp.headers()).is_some_and(|l| l > self.site.cache.max_object_size);
        let not_stored = match (&plan, too_large) {
            (Ok(_), true) => Some(NotStored::TooLarge),
            (Ok(_), false) => None,
            (Err(r), _) => Some(*r),
        };
        // Error pages are shared with waiters even when not stored, unless
        // they belong to one user (whatever reason kept them from being
        // stored first): a failing origin gets one request.
        let personal = policy::personal(resp.headers(), self.request.has_authorization);
        // Not a 429: an origin limits by the client the edge names, so one
        // client's 429 is not everyone's.
        let share = not_stored.is_none() || (status.is_server_error() && !personal);
        if let (Some(why), Some((key, stale))) = (not_stored, &self.stale)
            && !self.request.has_authorization
            && speaks_for_the_copy(status, why)
        {
            // The origin no longer allows storing it: stop revalidating a
            // dead copy.
            engine.store.remove_object(*key, stale);
        }
        if !share {
            self.guard.flight.set_head(Head::Pass(not_stored.map_or(Detail::Uncacheable, Detail::NotStored)));
            if let Some(tx) = self.pass.take() {
                let _ = tx.send(resp);
            }
            return;
        }
        self.stream(resp, plan.ok().filter(|_| not_stored.is_none()), not_stored, times).await;
    }

    /// A 304: the stored copy with the fresh fields, stored again if it
    /// still may be ([`vouches_for`] it).
    fn revalidated(&mut self, fresh: &HeaderMap, times: Times) {
        let Some((key, stale)) = self.stale.take() else { return };
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
        let (object, kept_out, shared) = match self.plan(stale.status, &headers, times.now) {
            Ok(plan) => {
                let obj = Arc::new(StoredObject {
                    headers: storable_headers(&headers, &plan.strip),
                    tags: tags(&headers),
                    fetched_at: fetched_when(fresh, &times),
                    timing: timing(&plan, times.initial_age(fresh), times.now),
                    shareable_with_auth: plan.shareable_with_auth,
                    ..(*stale).clone()
                });
                self.engine.store.insert(key, Entry::Object(Arc::clone(&obj)));
                // Invalidated while the validation was under way.
                self.engine.invalidate_if_since(self.rkey.primary, self.mark, key, &obj);
                (obj, withheld(&headers, &plan.strip), true)
            }
            Err(why) => {
                // Valid now, but no longer storable: serve it this once, to
                // the requests waiting on it too; the cookies it sets go to
                // the request that asked alone. One that makes the copy one
                // user's (`private`, or asked with credentials) goes to that
                // request only, fields and all: everyone else asks for
                // themselves. A request's own `no-store` keeps this answer
                // out of the store, not the copy. The head goes, not the
                // body: this answer is read from it (its chunks are left to
                // eviction).
                if why != NotStored::RequestNoStore && !self.request.has_authorization {
                    self.engine.store.remove(key);
                }
                let mine = withheld(&headers, &[header::SET_COOKIE]);
                headers.remove(header::SET_COOKIE);
                let shared = !policy::personal(&headers, self.request.has_authorization);
                let fetched_at = fetched_when(fresh, &times);
                (Arc::new(StoredObject { headers, fetched_at, ..(*stale).clone() }), mine, shared)
            }
        };
        self.guard.close();
        self.guard.flight.set_head(Head::Revalidated(object, Arc::new(kept_out), shared));
    }

    /// The head every waiter reads, and the writer of the stored copy.
    fn shared_head(
        &self,
        headers: &HeaderMap,
        status: StatusCode,
        plan: Option<&StorePlan>,
        not_stored: Option<NotStored>,
        times: Times,
    ) -> (Arc<SharedHead>, Option<BodyWriter>) {
        let strip = plan.map_or(&[][..], |p| &p.strip[..]);
        let vary = vary_names(headers);
        let object_key =
            if vary.is_empty() { self.rkey.primary } else { self.rkey.variant(&vary, &self.request.from.headers) };
        let writer = plan.map(|_| self.engine.store.body_writer(object_key));
        let object = StoredObject {
            status,
            headers: storable_headers(headers, strip),
            url: self.rkey.url.clone(),
            tags: tags(headers),
            fetched_at: fetched_when(headers, &times),
            timing: plan
                .map_or_else(|| Timing::never_fresh(times.now), |p| timing(p, times.initial_age(headers), times.now)),
            shareable_with_auth: plan.is_some_and(|p| p.shareable_with_auth),
            body: BodyRef::Inline(Bytes::new().into()),
            derived: Default::default(),
        };
        let head = SharedHead {
            object: Arc::new(object),
            object_key,
            vary,
            len: content_length(headers),
            storing: writer.is_some(),
            detail: not_stored.map(Detail::NotStored).or(plan.filter(|p| p.heuristic).map(|_| Detail::Heuristic)),
            upstream_status: headers.get(&CACHE_STATUS).cloned(),
            generation: writer.as_ref().map_or(0, BodyWriter::generation),
            withheld: withheld(headers, strip),
        };
        (Arc::new(head), writer)
    }

    /// Streams the body to every waiter and, when it is stored, to the store.
    async fn stream(
        mut self,
        resp: Response<RecvBody>,
        plan: Option<StorePlan>,
        not_stored: Option<NotStored>,
        times: Times,
    ) {
        let (parts, body) = resp.into_parts();
        let (head, writer) = self.shared_head(&parts.headers, parts.status, plan.as_ref(), not_stored, times);
        let flight = Arc::clone(&self.guard.flight);
        flight.set_head(Head::Shared(Arc::clone(&head)));
        let pace = BodyPace::of(&self.site, &parts.headers);
        let Some((writer, received, last)) = self.pump(body, &flight, writer, head.len, pace).await else { return };
        let stored = writer.is_some();
        if let Some(w) = writer {
            if head.len.is_none_or(|d| d == received) {
                let obj = Arc::new(StoredObject { body: w.finish(), ..(*head.object).clone() });
                self.engine.store.insert(head.object_key, Entry::Object(Arc::clone(&obj)));
                // An unsafe method changed the URL while this fetch was
                // under way: what it got may predate the change, so the
                // copy is left as the change left those stored then.
                self.engine.invalidate_if_since(self.rkey.primary, self.mark, head.object_key, &obj);
                if !head.vary.is_empty() {
                    self.index_variant(&head.vary, head.object_key).await;
                }
            } else {
                w.abandon();
            }
        }
        // Leave the map only once the object is stored: the next request
        // then finds it instead of starting another fetch. Only then do the
        // last bytes go out, so a client that asks again the moment its
        // answer ends finds the stored copy, not this finished fetch.
        self.guard.close();
        if let Some(last) = last {
            flight.push(last, if stored { received } else { 0 });
        }
        flight.finish_body(Ok(()));
    }

    /// Moves the body's frames to the flight and the writer until the end;
    /// `None` when the body broke (the flight is told). The writer is
    /// dropped past the site's largest object. The frame that completes a
    /// body of known length `len` is held back and returned, for the
    /// caller to pass on once the object is stored.
    async fn pump(
        &self,
        mut body: RecvBody,
        flight: &Flight,
        mut writer: Option<BodyWriter>,
        len: Option<u64>,
        mut pace: BodyPace,
    ) -> Option<(Option<BodyWriter>, u64, Option<Bytes>)> {
        let max = self.site.cache.max_object_size;
        let mut received = 0u64;
        let mut last = None;
        loop {
            flight.wait_for_readers().await;
            let asked = std::time::Instant::now();
            let frame = match tokio::time::timeout(pace.idle, body.frame()).await {
                Ok(None) => return Some((writer, received, last)),
                Ok(Some(Ok(f))) => Ok(f),
                Ok(Some(Err(e))) => Err(e.to_string()),
                Err(_) => Err("the upstream body stalled".to_string()),
            };
            let frame = frame.and_then(|f| {
                // The frame that ends the body (trailers, HTTP/2's empty
                // last frame) leaves nothing more to wait for.
                let n = f.data_ref().map_or(0, |d| d.len() as u64);
                let ended = http_body::Body::is_end_stream(&body);
                (ended || pace.came(n, asked.elapsed())).then_some(f).ok_or_else(|| {
                    format!("the upstream body came slower than {} bytes a second (body_min_rate)", pace.min_rate)
                })
            });
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    if let Some(w) = writer.take() {
                        w.abandon();
                    }
                    self.engine.metrics.upstream_body_error();
                    flight.finish_body(Err(e));
                    return None;
                }
            };
            // An empty frame (HTTP/2 ends a stream with one) carries nothing,
            // and must not take the place of the held-back last frame.
            let Ok(data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            received += data.len() as u64;
            if let Some(w) = writer.as_mut() {
                w.push(&data);
                if w.len() > max
                    && let Some(w) = writer.take()
                {
                    // Too large to store, known only now (no length was
                    // given): requests from now on fetch for themselves, as
                    // for a length over the limit, rather than join a body
                    // whose start they cannot read.
                    w.abandon();
                    flight.unstore();
                    self.engine.flights.forget_flight(&self.guard.flight);
                }
            }
            if len == Some(received) {
                last = Some(data);
                continue;
            }
            flight.push(data, writer.as_ref().map_or(0, BodyWriter::stored_through));
        }
    }

    /// Lists the variant stored under `key` in its URL's index. The
    /// index is what an unsafe method's invalidation visits, so a variant
    /// that leaves the list (the oldest, past [`MAX_KNOWN_VARIANTS`])
    /// leaves the store too: any client can send variants enough to push
    /// a popular one off the list, which would then be served unchanged
    /// after a POST that changed it.
    async fn index_variant(&self, vary: &[HeaderName], key: Key) {
        let store = &self.engine.store;
        let _turn = self.engine.variant_turn(self.rkey.primary).await;
        let mut known = match store.get(self.rkey.primary).await {
            Some(Entry::Variants(v)) if v.names == vary => v.known.clone(),
            // Another Vary: the variants listed under the old one leave the
            // store with their list (they would be found again should the
            // Vary change back, unlisted).
            Some(Entry::Variants(v)) => {
                v.known.iter().for_each(|k| store.remove(*k));
                Vec::new()
            }
            _ => Vec::new(),
        };
        if !known.contains(&key) {
            known.push(key);
            if known.len() > MAX_KNOWN_VARIANTS {
                // The head only: clients reading its body read on.
                store.remove(known.remove(0));
            }
        }
        store.insert(self.rkey.primary, Entry::Variants(Arc::new(Variants { names: vary.to_vec(), known })));
    }
}

/// Does a 304 with `fresh` fields stand for the copy stored with
/// `stored` (RFC 9111 §4.3.4)? Its `ETag`, when it sends one, must be the
/// copy's (compared weakly, as `If-None-Match` is); else its
/// `Last-Modified`, when it sends one; and its `Vary`, when it sends one.
/// A 304 that sends none of them is taken as the answer to the validators
/// asked with.
fn vouches_for(fresh: &HeaderMap, stored: &HeaderMap) -> bool {
    fn weak(v: &header::HeaderValue) -> &[u8] {
        let b = v.as_bytes();
        b.strip_prefix(b"W/").unwrap_or(b)
    }
    let same = |name: header::HeaderName, compare: &dyn Fn(&header::HeaderValue, &header::HeaderValue) -> bool| match (
        fresh.get(&name),
        stored.get(&name),
    ) {
        (None, _) => true,
        (Some(f), Some(s)) => compare(f, s),
        (Some(_), None) => false,
    };
    let vary = |h: &HeaderMap| -> Vec<String> {
        let mut names: Vec<String> = h
            .get_all(header::VARY)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let validator = if fresh.contains_key(header::ETAG) {
        same(header::ETAG, &|f, s| weak(f) == weak(s))
    } else {
        same(header::LAST_MODIFIED, &|f, s| f == s)
    };
    validator && (!fresh.contains_key(header::VARY) || vary(fresh) == vary(stored))
}

/// Does an answer that is not stored (`why`) end the stale copy it was
/// asked to refresh? Only one that speaks for the resource (a new
/// representation, a redirect, 404 or 410) and not only for the request
/// (its own `no-store`, or its credentials: a request that carries any
/// never ends the shared copy, as any client can send one). A busy or failing origin's
/// answer (429, 5xx) or one the request provoked (400, 401, 403, 431: any
/// client can send a request that gets one) leaves the copy, to be
/// validated later and to stand in for errors.
fn speaks_for_the_copy(status: StatusCode, why: NotStored) -> bool {
    let about_the_resource =
        status.is_success() || status.is_redirection() || status == StatusCode::NOT_FOUND || status == StatusCode::GONE;
    about_the_resource && !matches!(why, NotStored::RequestNoStore | NotStored::Authorization)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rate is judged over each window of `idle` spent waiting, and
    /// only then; 0 asks for nothing.
    #[test]
    fn a_body_is_judged_by_what_each_window_of_waiting_brought() {
        let second = Duration::from_secs(1);
        let pace = |min_rate| BodyPace { idle: 2 * second, min_rate, got: 0, waited: Duration::ZERO };
        let mut p = pace(1000);
        assert!(p.came(1, second), "half a window: not judged yet");
        assert!(!p.came(1, second), "a window with 2 bytes, 2000 asked");
        let mut p = pace(1000);
        assert!(p.came(1500, second) && p.came(600, second), "2100 bytes in 2 s");
        assert!(p.came(0, second) && !p.came(10, second), "each window afresh");
        let mut p = pace(0);
        assert!(p.came(0, 10 * second), "no rate asked");
    }

    /// What an upstream says of its copy moves the time it is stored as
    /// fetched only earlier, and only for its own stale stand-in; junk and
    /// extreme values do neither harm nor panic.
    #[test]
    fn an_upstreams_stale_answer_is_as_old_as_its_copy_whatever_it_sends() {
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let times = Times { started, started_real: started, now: started };
        let at = |fields: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in fields {
                h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            fetched_when(&h, &times)
        };
        let stale = "shield-a; hit; fwd=stale; fwd-status=503";
        let back = |secs| started - Duration::from_secs(secs);
        assert_eq!(at(&[("cache-status", stale), ("age", "30")]), back(31));
        assert_eq!(at(&[("cache-status", stale)]), back(1), "no Age: a second, as Age 0");
        assert_eq!(at(&[("cache-status", "shield-a;hit;fwd=stale"), ("age", "5")]), back(6), "no spaces");
        // Another tier's stand-in, before the nearest's own fetch, says
        // nothing of the nearest's copy; nor do other outcomes.
        assert_eq!(at(&[("cache-status", &format!("{stale}, shield-a; fwd=uri-miss")), ("age", "30")]), started);
        assert_eq!(at(&[("cache-status", stale), ("cache-status", "edge-0; fwd=miss"), ("age", "30")]), started);
        assert_eq!(at(&[("cache-status", "shield-a; hit"), ("age", "30")]), started, "a fresh hit");
        assert_eq!(at(&[("cache-status", "shield-a; fwd=stale; fwd-status=304"), ("age", "30")]), started);
        assert_eq!(at(&[("cache-status", "shield-a; hitfwd=stale"), ("age", "30")]), started);
        // Junk Age counts as none; an enormous one is capped, not a panic.
        for junk in ["-5", "1e9", "", "3 4", "0x10"] {
            assert_eq!(at(&[("cache-status", stale), ("age", junk)]), back(1), "{junk:?}");
        }
        assert!(at(&[("cache-status", stale), ("age", "99999999999999999999999")]) < back(1 << 30));
    }

    #[test]
    fn a_304_vouches_only_for_the_copy_its_fields_name() {
        let map = |pairs: &[(&'static str, &'static str)]| -> HeaderMap {
            pairs
                .iter()
                .map(|(k, v)| (header::HeaderName::from_static(k), header::HeaderValue::from_static(v)))
                .collect()
        };
        let stored =
            map(&[("etag", "\"v1\""), ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"), ("vary", "Accept-Language")]);
        assert!(vouches_for(&map(&[]), &stored), "a bare 304 answers the validators asked with");
        assert!(vouches_for(&map(&[("etag", "W/\"v1\"")]), &stored), "compared weakly");
        assert!(!vouches_for(&map(&[("etag", "\"v2\"")]), &stored));
        assert!(vouches_for(&map(&[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")]), &stored));
        assert!(!vouches_for(&map(&[("last-modified", "Tue, 02 Jan 2024 00:00:00 GMT")]), &stored));
        assert!(
            vouches_for(&map(&[("etag", "\"v1\""), ("last-modified", "Tue, 02 Jan 2024 00:00:00 GMT")]), &stored),
            "the ETag decides when there is one"
        );
        assert!(vouches_for(&map(&[("vary", "accept-language ")]), &stored));
        assert!(!vouches_for(&map(&[("vary", "Accept-Encoding")]), &stored), "another Vary, another copy");
        assert!(!vouches_for(&map(&[("etag", "\"v1\"")]), &map(&[])), "a validator the copy never had");
    }
}
