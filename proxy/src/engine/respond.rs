//! Responses from a stored or in-flight object: conditional requests,
//! ranges, HEAD, `Age`, the site's header rules. The node's own answers
//! (errors, 421, 400, redirects) are built in `crate::error`.

use std::io;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use outpost_config::Site;
use outpost_net::multipart::{Part, byteranges};

use super::context::{Answer, Ctx};
use super::flight::{Flight, SharedHead};
use super::refill::{Refill, Reopen, resumable};
use super::represent::{self, Serving};
use crate::cache_status::{CacheStatus, Detail, Outcome};
use crate::headers::{CACHE_STATUS, CDN_ONLY, decimal};
use crate::key::Key;
use crate::policy::is_hop_by_hop;
use crate::store::{Blob, BodyRef, Piece, Store, StoredObject};
use outpost_net::RecvBody;
use outpost_net::sendfile::{MAX_RANGE, SendFile, SharedFile};
use outpost_net::{Fields, HeaderLookup};

pub(crate) use outpost_net::Body;

pub(crate) fn empty() -> Body {
    Body::empty()
}

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Body::full(b)
}

pub(super) fn stream_body(s: impl Stream<Item = io::Result<Bytes>> + Send + 'static) -> Body {
    Body::new(StreamBody::new(s.map_ok(Frame::data)))
}

/// Where a response body comes from.
pub(crate) enum BodySource<'a> {
    Stored {
        store: &'a Store,
        key: Key,
        body: &'a BodyRef,
        sendfile: Option<&'a SendFile>,
        /// The request and copy a refill is made from, if the body is read
        /// as a stream: most hits are one frame and need none.
        refill: Option<(&'a Ctx, &'a StoredObject)>,
    },
    Flight {
        store: Store,
        flight: Arc<Flight>,
        head: Arc<SharedHead>,
        refill: Option<Box<Refill>>,
    },
    /// A body already cut to the one range asked, of an object of `len`.
    Ready {
        len: u64,
        body: std::sync::Mutex<Option<Body>>,
    },
}

impl BodySource<'_> {
    fn len(&self) -> Option<u64> {
        match self {
            BodySource::Stored { body, .. } => Some(body.len()),
            BodySource::Flight { head, .. } => head.len,
            BodySource::Ready { len, .. } => Some(*len),
        }
    }

    /// The body's bytes from `start` to `end`, as the whole body of a
    /// response.
    fn range(&self, start: u64, end: Option<u64>) -> Body {
        self.range_made(start, end, true)
    }

    /// [`BodySource::range`] for one part of a body of several, made
    /// before the parts ahead of it are sent.
    fn part(&self, start: u64, end: Option<u64>) -> Body {
        self.range_made(start, end, false)
    }

    /// A stand-in frame queues its file range as it is made, and the
    /// connection sends queued ranges in turn: only a body that is a
    /// response's whole body (`alone`) may make one before it is polled.
    /// A part's frames are made when the body reaches it, or a part sent
    /// whole from its chunk would go out ahead of a part before it that
    /// streams, and each part would carry another's bytes.
    fn range_made(&self, start: u64, end: Option<u64>, alone: bool) -> Body {
        match self {
            // An inline body is already in memory: a slice, no stream.
            BodySource::Stored { body: BodyRef::Inline(Blob::Heap(b)), .. } => {
                let end = end.unwrap_or(b.len() as u64).min(b.len() as u64) as usize;
                full(b.slice((start as usize).min(end)..end))
            }
            BodySource::Stored { store, key, body, sendfile, refill } => {
                let to = end.unwrap_or(body.len());
                // The usual hit: one chunk at hand holds the range, and it
                // goes as one frame, without a stream.
                if let Some(frame) = store
                    .piece_now(*key, body, start, to)
                    .filter(|p| alone || sendfile.is_none() || matches!(p.blob, Blob::Heap(_)))
                    .and_then(|p| whole_frame(p, *sendfile))
                {
                    return full(frame);
                }
                let refill = match (refill, body) {
                    (Some((cx, obj)), BodyRef::Chunked { len, generation, .. }) => {
                        Refill::new(cx, obj, Some(*len), Some((*key, *generation)))
                    }
                    _ => None,
                };
                let (store, key, body, sendfile) = ((*store).clone(), *key, (*body).clone(), sendfile.cloned());
                let open: Reopen = Arc::new(move |from| {
                    let sendfile = sendfile.clone();
                    let pieces = store.pieces(key, &body, from, to);
                    pieces.map_ok(move |p| piece_frames(p, sendfile.clone())).try_flatten().boxed()
                });
                stream_body(resumable(open, start, end, refill))
            }
            BodySource::Ready { body, .. } => {
                body.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().unwrap_or_else(empty)
            }
            BodySource::Flight { store, flight, head, refill } => {
                let (store, flight, head) = (store.clone(), Arc::clone(flight), Arc::clone(head));
                let open: Reopen = Arc::new(move |from| {
                    flight.body(store.clone(), &head, from, end).map_ok(|b| (b.len() as u64, b)).boxed()
                });
                stream_body(resumable(open, start, end, refill.as_deref().cloned()))
            }
        }
    }
}

/// Most bytes of a file read into memory at once, for a body the
/// connection cannot send from the file (TLS, HTTP/2, HTTP/3): a stored
/// chunk (1 MiB) is read a part at a time as the client takes it. A buffer
/// this size comes from the allocator's free lists, where a whole chunk's
/// would be mapped afresh (and faulted in page by page) for every
/// response, and it is encrypted while still in the CPU's cache.
const READ_PIECE: usize = 64 << 10;

/// `p` as pieces of at most [`READ_PIECE`] bytes when its bytes have to be
/// read from a file; whole when they are in memory already.
fn read_sized(p: Piece) -> Vec<Piece> {
    match p.blob {
        Blob::File(_) if p.end - p.start > READ_PIECE => (p.start..p.end)
            .step_by(READ_PIECE)
            .map(|at| Piece { blob: p.blob.clone(), start: at, end: (at + READ_PIECE).min(p.end) })
            .collect(),
        _ => vec![p],
    }
}

/// A piece as one frame, when that needs no read: a slice of memory, or a
/// stand-in for a file the connection sends itself.
fn whole_frame(p: Piece, sendfile: Option<&SendFile>) -> Option<Bytes> {
    match (&p.blob, sendfile) {
        (Blob::Heap(_), _) | (Blob::File(_), Some(_)) if p.end - p.start <= MAX_RANGE => piece_frame(&p, sendfile).ok(),
        _ => None,
    }
}

/// A body frame for a piece: a stand-in the connection sends from the
/// piece's file (a memfd or a body file) when it can, the bytes themselves otherwise.
fn piece_frame(p: &Piece, sendfile: Option<&SendFile>) -> io::Result<Bytes> {
    match (&p.blob, sendfile) {
        (Blob::File(f), Some(s)) if p.end - p.start <= MAX_RANGE => {
            let (file, at, len): (SharedFile, _, _) = (f.clone(), p.start as u64, p.end - p.start);
            Ok(if f.on_disk() { s.disk_frame(&file, at, len) } else { s.frame(&file, at, len) })
        }
        _ => p.blob.read(p.start, p.end),
    }
}

/// A piece's body frames, each with its length: [`piece_frame`]'s one
/// frame when the connection sends from the file or the bytes are in
/// memory; otherwise the bytes read from the file a part at a time
/// ([`read_sized`]), each when the body is asked for it. The range of a
/// disk-tier file whose first byte the page cache does not hold is first
/// read into the page cache on the blocking pool (`sendfile::load`, no
/// copy into user space): a read that waits for the disk on a runtime
/// thread stalls every connection on it, and a piece read whole into
/// memory there would hold a megabyte for as long as a slow client took
/// to read it, on each of a connection's streams.
fn piece_frames(p: Piece, sendfile: Option<SendFile>) -> BoxStream<'static, io::Result<(u64, Bytes)>> {
    match (&p.blob, sendfile) {
        (Blob::File(f), None) if f.on_disk() && !outpost_net::sendfile::cached(&**f, p.start as u64) => {
            metrics::counter!("outpost_cold_file_ranges_total", "path" => "read").increment(1);
            cold_frames(p)
        }
        (Blob::File(_), None) => read_frames(p).boxed(),
        (_, sendfile) => {
            let len = (p.end - p.start) as u64;
            futures_util::stream::once(std::future::ready(piece_frame(&p, sendfile.as_ref()).map(|b| (len, b)))).boxed()
        }
    }
}

/// A file piece's bytes read a part at a time ([`read_sized`]), each when
/// the body is asked for it, with its length.
fn read_frames(p: Piece) -> impl futures_util::Stream<Item = io::Result<(u64, Bytes)>> {
    futures_util::stream::iter(read_sized(p))
        .map(|p| p.blob.read(p.start, p.end).map(|b| ((p.end - p.start) as u64, b)))
}

/// [`read_frames`] for a piece of a file the page cache does not hold:
/// read into the page cache first, on the blocking pool.
fn cold_frames(p: Piece) -> BoxStream<'static, io::Result<(u64, Bytes)>> {
    let Blob::File(f) = &p.blob else { return read_frames(p).boxed() };
    let (file, at, len) = (Arc::clone(f), p.start as u64, p.end - p.start);
    let loaded = tokio::task::spawn_blocking(move || outpost_net::sendfile::load(&*file, at, len));
    futures_util::stream::once(async move { loaded.await.map(|()| read_frames(p)).map_err(io::Error::other) })
        .try_flatten()
        .boxed()
}

/// Node-wide settings that shape client responses.
#[derive(Debug, Clone)]
pub(crate) struct ResponseRules {
    /// CDN-targeted headers and tags are for CDN tiers; an edge removes them
    /// before the client, a shield passes them on to its edges.
    pub strip_cdn_headers: bool,
}

fn strip_weak(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// RFC 9110 §13.1.2 / §13.1.3 evaluated against a stored 200.
fn not_modified(req: &impl HeaderLookup, obj: &StoredObject) -> bool {
    if let Some(inm) = req.get(&header::IF_NONE_MATCH) {
        let Some(etag) = obj.headers.get(header::ETAG) else { return false };
        let list = inm.as_bytes();
        return list.split(|b| *b == b',').any(|t| {
            let t = t.trim_ascii();
            t == b"*" || strip_weak(t) == strip_weak(etag.as_bytes())
        });
    }
    // Most requests ask nothing: the stored date is parsed only for those that do.
    let date =
        |v: Option<&HeaderValue>| v.and_then(|v| v.to_str().ok()).and_then(|s| httpdate::parse_http_date(s).ok());
    let Some(since) = date(req.get(&header::IF_MODIFIED_SINCE)) else { return false };
    date(obj.headers.get(header::LAST_MODIFIED)).is_some_and(|lm| lm <= since)
}

/// RFC 9110 §13.1.5: an entity tag compared strongly; a date only when
/// the copy's `Last-Modified` is a strong validator (two versions made
/// within one second share one: a resumed download would join the tail of
/// one to the head of the other).
fn if_range_holds(req: &HeaderMap, obj: &StoredObject) -> bool {
    let Some(v) = req.get(header::IF_RANGE) else { return true };
    if v.as_bytes().starts_with(b"\"") {
        return obj.headers.get(header::ETAG).is_some_and(|e| e == v);
    }
    obj.headers.get(header::LAST_MODIFIED).is_some_and(|lm| lm == v) && super::refill::strong_date(&obj.headers)
}

/// The node's and the site's rules for every client response: CDN-only
/// fields leave at the edge, then the site's `[headers]` remove and set.
fn apply_rules(headers: &mut HeaderMap, site: &Site, rules: &ResponseRules) {
    remove_by_rules(headers, site, rules);
    for (name, value) in &site.headers.set {
        if ruled(name, rules) {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Do the site's `[headers]` rules touch `name` on this node? Everywhere
/// but `Cache-Status` at a shield: its edges read the shield's member
/// there to tell an origin's error passed on from the shield's own, and
/// would take a shield whose member a rule removed (or forged) out of
/// service for each of an origin's 5xx. The edge applies the rules to
/// what its clients get.
fn ruled(name: &HeaderName, rules: &ResponseRules) -> bool {
    rules.strip_cdn_headers || name != CACHE_STATUS
}

/// The rules for the fields of an upstream's interim (1xx) response sent
/// on: CDN-only fields leave at the edge, the site's `[headers]` remove
/// theirs (what they set is for final responses), and `Set-Cookie` never
/// goes: a 1xx of a shared fetch reaches every request waiting on it.
pub(crate) fn interim_rules(headers: &mut HeaderMap, site: &Site, rules: &ResponseRules) {
    remove_by_rules(headers, site, rules);
    headers.remove(header::SET_COOKIE);
}

/// The fields the rules take out of every response sent on.
fn remove_by_rules(headers: &mut HeaderMap, site: &Site, rules: &ResponseRules) {
    if rules.strip_cdn_headers {
        for name in &CDN_ONLY {
            headers.remove(name);
        }
    }
    for name in site.headers.remove.iter().filter(|n| ruled(n, rules)) {
        headers.remove(name);
    }
}

/// A response passed through unstored: hop-by-hop fields dropped, the
/// rules applied, our `Cache-Status` member appended to the upstream's.
/// Its body fails once the upstream has been quiet for the origin's
/// `response_timeout`, as a stored answer's fetch does: nothing else would
/// end it, since the client waits on the node, and the upstream exchange
/// (counted against the origin's cap) would be held as long.
pub(crate) fn passed_response(cx: &Ctx, resp: Response<RecvBody>, detail: Option<Detail>) -> Answer {
    let (parts, body) = resp.into_parts();
    let idle = cx.site.origins.first().map_or(super::fetch::DEFAULT_BODY_IDLE, |o| o.response_timeout);
    passed_with(cx, parts, Body::new(body.idle_limit(idle, "the upstream")), detail)
}

/// The same, with the body given.
pub(crate) fn passed_with(cx: &Ctx, parts: http::response::Parts, body: Body, detail: Option<Detail>) -> Answer {
    let status = CacheStatus {
        fwd_status: Some(parts.status.as_u16()),
        detail,
        partitioned: cx.partitioned,
        ..CacheStatus::new(Outcome::Pass)
    };
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 1);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name, &parts.headers) && name != CACHE_STATUS {
            headers.append(name.clone(), value.clone());
        }
    }
    apply_rules(&mut headers, &cx.site, &cx.engine.rules);
    headers.insert(CACHE_STATUS, status.header(&cx.engine.node, parts.headers.get(CACHE_STATUS)));
    let mut out = Response::new(body);
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    (out, status)
}

/// A stored copy as the response (`represent::serve` chooses which).
/// `now` is the engine clock's time the request was judged at;
/// `refillable`: a part of the body that leaves the store while it is read
/// may be fetched again from upstream (not for a representation made here).
pub(crate) fn serve_object(
    cx: &Ctx,
    key: Key,
    obj: &StoredObject,
    status: CacheStatus,
    now: SystemTime,
    refillable: bool,
) -> Answer {
    let status = CacheStatus { partitioned: cx.partitioned, ..status };
    let engine = &cx.engine;
    // Only a chunked body can lose a part while it is read.
    let refill = refillable.then_some((cx, obj));
    let store = &engine.store;
    let source = BodySource::Stored { store, key, body: &obj.body, sendfile: cx.sendfile.as_ref(), refill };
    let header = status.header(&engine.node, None);
    let resp = object_response(&cx.site, &engine.rules, &cx.method, &cx.headers, obj, source, now, header);
    (resp, status)
}

/// Builds the client response for an object.
#[allow(clippy::too_many_arguments)]
pub(crate) fn object_response(
    site: &Site,
    rules: &ResponseRules,
    method: &Method,
    req: &HeaderMap,
    obj: &StoredObject,
    source: BodySource<'_>,
    now: SystemTime,
    cache_status: HeaderValue,
) -> Response<Body> {
    let mut resp = Response::new(empty());
    let mut headers = obj.headers.clone();
    headers.insert(header::AGE, decimal(obj.timing.age(now).as_secs()));
    headers.insert(CACHE_STATUS, cache_status);
    apply_rules(&mut headers, site, rules);
    let ok = obj.status == StatusCode::OK;
    if ok && not_modified(req, obj) {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        for name in ["content-type", "content-encoding", "content-language", "content-range"] {
            headers.remove(name);
        }
        *resp.headers_mut() = headers;
        return resp;
    }
    let len = source.len();
    if let (true, Some(len), Some(range)) = (ok, len, req.get(header::RANGE).and_then(|v| v.to_str().ok())) {
        if if_range_holds(req, obj) {
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            match http_range_header::parse_range_header(range).map(|r| r.validate(len)) {
                // Unparseable ranges are ignored (RFC 9110 §14.2).
                Err(_) => {}
                Ok(Ok(ranges)) if ranges.is_empty() => {}
                Ok(Err(_)) => {
                    *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                        headers.insert(header::CONTENT_RANGE, v);
                    }
                    headers.remove(header::CONTENT_TYPE);
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                    *resp.headers_mut() = headers;
                    return resp;
                }
                Ok(Ok(ranges)) => return partial(resp, headers, method, &source, len, &ranges),
            }
        }
    } else if ok && len.is_some() {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    *resp.status_mut() = obj.status;
    if let Some(len) = len {
        headers.insert(header::CONTENT_LENGTH, decimal(len));
    }
    *resp.headers_mut() = headers;
    if method != Method::HEAD {
        *resp.body_mut() = source.range(0, len);
    }
    resp
}

/// Fields a client response sets itself: a site whose `[headers]` rules
/// name one of them has its hits' fields put in a map ([`object_response`]),
/// where the rules and these fields meet in the order they always have.
static SET_HERE: [HeaderName; 9] = [
    header::AGE,
    CACHE_STATUS,
    header::ACCEPT_RANGES,
    header::CONTENT_LENGTH,
    header::ALT_SVC,
    header::VARY,
    header::DATE,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
];

/// The usual hit answered at once, a whole 200 (no condition holds, no
/// range is asked), with its fields written to `fields` without a map of
/// their own: the fields [`Serving::answer`] gives, the site's rules
/// applied, and `alt_svc` when the site advertises HTTP/3. All but `Age`
/// and `Cache-Status` are copied from those kept with the copy
/// ([`HitFields`]), made from its stored map at its first such hit. The
/// response, its `Cache-Status` and its length; `None`, with nothing
/// written, for any other response.
pub(super) fn fields_now(
    cx: &Ctx,
    serving: &Serving,
    alt_svc: Option<&HeaderValue>,
    fields: &mut Fields,
) -> Option<(Response<Body>, CacheStatus, u64)> {
    let (obj, site, strip) = (&*serving.obj, &cx.site, cx.engine.rules.strip_cdn_headers);
    if obj.status != StatusCode::OK || cx.headers.contains_key(header::RANGE) || not_modified(&cx.headers, obj) {
        return None;
    }
    let kept = obj.derived.get_or_make(
        |kept: &HitFields| kept.made_for(site, strip, alt_svc, serving.vary),
        || HitFields::new(obj, site, strip, alt_svc, serving.vary),
    );
    fields.extend(kept.fields.as_ref()?);
    let status = CacheStatus { partitioned: cx.partitioned, ..serving.status.clone() };
    fields.append(&header::AGE, &decimal(obj.timing.age(serving.now).as_secs()));
    if !status.with_bytes(&cx.engine.node, None, |v| fields.append_bytes(&CACHE_STATUS, v)) {
        fields.append(&CACHE_STATUS, &HeaderValue::from_static("outpost"));
    }
    let len = obj.body.len();
    fields.length(len);
    let mut resp = Response::new(empty());
    if cx.method != Method::HEAD {
        let refill = serving.refillable.then_some((cx, obj));
        let store = &cx.engine.store;
        let source =
            BodySource::Stored { store, key: serving.key, body: &obj.body, sendfile: cx.sendfile.as_ref(), refill };
        *resp.body_mut() = source.range(0, Some(len));
    }
    Some((resp, status, len))
}

/// Which site something kept with a copy was worked out under: the site's
/// allocation, held (not the site: a superseded one is let go) so that a
/// site reloaded since is never taken for it.
pub(super) struct SiteMark(Weak<Site>);

impl SiteMark {
    pub(super) fn of(site: &Arc<Site>) -> SiteMark {
        SiteMark(Arc::downgrade(site))
    }

    pub(super) fn is(&self, site: &Arc<Site>) -> bool {
        std::ptr::eq(self.0.as_ptr(), Arc::as_ptr(site))
    }
}

/// The fields of a copy's whole 200 hits that are the same from one hit to
/// the next (all but `Age` and `Cache-Status`), encoded once and kept with
/// the copy ([`StoredObject::derived`]) for the rules they were made under:
/// the stored fields the rules keep, the site's `set` fields,
/// `Accept-Ranges`, `Vary` and `Alt-Svc`.
pub(super) struct HitFields {
    site: SiteMark,
    strip: bool,
    alt_svc: Option<HeaderValue>,
    vary: bool,
    /// `None` when the site's rules name a field a hit sets itself: such
    /// hits go through a map.
    fields: Option<Fields>,
}

impl HitFields {
    fn new(obj: &StoredObject, site: &Arc<Site>, strip: bool, alt_svc: Option<&HeaderValue>, vary: bool) -> HitFields {
        let ruled =
            |name: &HeaderName| site.headers.remove.contains(name) || site.headers.set.iter().any(|(n, _)| n == name);
        let fields = (!SET_HERE.iter().any(ruled)).then(|| {
            let mut fields = Fields::default();
            let mut listed = false;
            for (name, value) in &obj.headers {
                match *name {
                    // Set here; the framing and connection fields are never
                    // stored (`fetch::storable_headers`), and a response sets its own.
                    header::AGE
                    | CACHE_STATUS
                    | header::ACCEPT_RANGES
                    | header::CONTENT_LENGTH
                    | header::TRANSFER_ENCODING
                    | header::CONNECTION => continue,
                    header::ALT_SVC if alt_svc.is_some() => continue,
                    header::VARY => listed = listed || represent::lists_accept_encoding([value]),
                    _ => {}
                }
                if (strip && CDN_ONLY.contains(name)) || ruled(name) {
                    continue;
                }
                fields.append(name, value);
            }
            for (name, value) in &site.headers.set {
                fields.append(name, value);
            }
            fields.append(&header::ACCEPT_RANGES, &HeaderValue::from_static("bytes"));
            if vary && !listed {
                fields.append(&header::VARY, &HeaderValue::from_static("Accept-Encoding"));
            }
            if let Some(v) = alt_svc {
                fields.append(&header::ALT_SVC, v);
            }
            fields
        });
        HitFields { site: SiteMark::of(site), strip, alt_svc: alt_svc.cloned(), vary, fields }
    }

    fn made_for(&self, site: &Arc<Site>, strip: bool, alt_svc: Option<&HeaderValue>, vary: bool) -> bool {
        self.site.is(site) && self.strip == strip && self.vary == vary && self.alt_svc.as_ref() == alt_svc
    }
}

fn partial(
    mut resp: Response<Body>,
    mut headers: HeaderMap,
    method: &Method,
    source: &BodySource<'_>,
    len: u64,
    ranges: &[std::ops::RangeInclusive<u64>],
) -> Response<Body> {
    *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    if let [r] = ranges {
        let (start, end) = (*r.start(), *r.end());
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
            headers.insert(header::CONTENT_RANGE, v);
        }
        headers.insert(header::CONTENT_LENGTH, decimal(end - start + 1));
        *resp.headers_mut() = headers;
        if method != Method::HEAD {
            *resp.body_mut() = source.range(start, Some(end + 1));
        }
        return resp;
    }
    // Unforeseeable: a body that held it could otherwise fake parts.
    let boundary = {
        use std::hash::BuildHasher as _;
        let random = std::collections::hash_map::RandomState::new();
        format!("OUTPOST-{:016x}{:016x}", random.hash_one(len), random.hash_one(!len))
    };
    let content_type = headers.remove(header::CONTENT_TYPE);
    let multipart = byteranges(&boundary, content_type.as_ref(), ranges, len);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(multipart.len));
    headers.insert(header::CONTENT_TYPE, multipart.content_type);
    *resp.headers_mut() = headers;
    if method != Method::HEAD {
        let bodies: Vec<Body> = multipart
            .parts
            .into_iter()
            .map(|part| match part {
                Part::Text(text) => full(text),
                Part::Range(s, e) => source.part(s, Some(e)),
            })
            .collect();
        let frames = futures_util::stream::iter(bodies).flat_map(|b| b.into_data_stream());
        *resp.body_mut() = Body::new(StreamBody::new(frames.map_ok(Frame::data)));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Entry;
    use crate::store::entry::tests::sample;

    #[tokio::test]
    async fn a_cold_piece_is_loaded_off_the_runtime_then_read_a_part_at_a_time() {
        use futures_util::TryStreamExt;
        use std::io::Write;
        let data: Vec<u8> = (0..(1 << 20) - 7).map(|i: usize| (i % 253) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let blob = Blob::disk_file(f, data.len());
        let frames: Vec<(u64, Bytes)> =
            cold_frames(Piece { blob, start: 5, end: data.len() }).try_collect().await.unwrap();
        assert_eq!(frames.len(), 16, "parts of at most {READ_PIECE} bytes, not the megabyte at once");
        assert!(frames.iter().all(|(n, b)| *n as usize == b.len() && b.len() <= READ_PIECE));
        let got: Vec<u8> = frames.into_iter().flat_map(|(_, b)| b.to_vec()).collect();
        assert!(got == data[5..], "the piece's bytes, in order");
    }

    #[test]
    fn a_chunk_read_into_memory_is_read_a_part_at_a_time() {
        let data: Vec<u8> = (0..(1 << 20) + 5).map(|i: usize| (i % 251) as u8).collect();
        let blob = Blob::keep(Bytes::from(data.clone()));
        assert!(matches!(blob, Blob::File(_)), "a chunk this size is kept in a memfd");
        let parts = read_sized(Piece { blob: blob.clone(), start: 3, end: data.len() });
        assert_eq!(parts.len(), 17);
        assert!(parts.iter().all(|p| p.end - p.start <= READ_PIECE && p.end > p.start));
        let mut read = Vec::new();
        for p in &parts {
            read.extend_from_slice(&p.blob.read(p.start, p.end).unwrap());
        }
        assert_eq!(read, data[3..], "every byte, once, in order");
        // Bytes in memory are sliced, not read: they stay one piece.
        let heap = Blob::Heap(Bytes::from(data));
        assert_eq!(read_sized(Piece { blob: heap, start: 0, end: 1 << 20 }).len(), 1);
    }

    fn obj(headers: &[(&'static str, &'static str)]) -> StoredObject {
        let Entry::Object(o) = sample(BodyRef::Inline(Bytes::from_static(b"0123456789").into())) else {
            unreachable!()
        };
        let mut o = (*o).clone();
        o.status = StatusCode::OK;
        for (k, v) in headers {
            o.headers.insert(*k, HeaderValue::from_static(v));
        }
        o
    }

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn conditional_requests_against_the_stored_copy() {
        let o = obj(&[("etag", "\"v1\""), ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")]);
        assert!(not_modified(&req(&[("if-none-match", "\"v1\"")]), &o));
        assert!(not_modified(&req(&[("if-none-match", "\"x\", W/\"v1\"")]), &o));
        assert!(not_modified(&req(&[("if-none-match", "*")]), &o));
        assert!(!not_modified(&req(&[("if-none-match", "\"v2\"")]), &o));
        assert!(not_modified(&req(&[("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT")]), &o));
        assert!(!not_modified(&req(&[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")]), &o));
        assert!(
            !not_modified(
                &req(&[("if-none-match", "\"v2\""), ("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT")]),
                &o
            ),
            "If-None-Match decides when present"
        );
        assert!(if_range_holds(&req(&[("if-range", "\"v1\"")]), &o));
        assert!(!if_range_holds(&req(&[("if-range", "W/\"v1\"")]), &o), "If-Range is a strong comparison");
        assert!(if_range_holds(&req(&[]), &o));
    }
}
