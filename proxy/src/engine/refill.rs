//! A stored body that breaks off mid-read is finished from upstream.
//!
//! A large body's chunks can leave the store while a client reads it: the
//! memory tier evicts a chunk whose disk write was dropped under a burst, or
//! has not landed yet. The lookup saw every chunk, so the response has
//! promised its length; rather than cut the client off, the rest is asked of
//! the upstream as a range pinned to the stored copy's validator
//! (`If-Range`, RFC 9110 §13.1.5), checked to be the same representation, and
//! the chunks it covers are stored again.

use std::io;
use std::sync::Arc;

use outpost_config::coding::Coding;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use outpost_config::Site;
use outpost_net::RecvBody;

use super::Engine;
use super::context::Ctx;
use super::fetch::DEFAULT_BODY_IDLE;
use crate::key::Key;
use crate::store::{BodyRef, CHUNK_SIZE, Entry, Store, StoredObject};
use crate::upstream::request::{self, FromClient};

/// How to fetch the rest of one body.
#[derive(Clone)]
pub(crate) struct Refill {
    engine: Arc<Engine>,
    site: Arc<Site>,
    /// The request's placement (`RequestKey::placement`): it chooses the
    /// upstream.
    route: Key,
    url: String,
    from: FromClient,
    host: Option<HeaderValue>,
    /// The stored copy's strong validator, sent as `If-Range` and required
    /// back: its `ETag`, or its `Last-Modified` when it has none.
    validator: (header::HeaderName, HeaderValue),
    /// The whole body's length, when known.
    len: Option<u64>,
    /// Where the body's chunks are stored (object key, generation): what is
    /// fetched goes back there.
    chunks: Option<(Key, u64)>,
    /// The stored copy's coding, asked for again whenever Outpost knows it
    /// (the client's own `Accept-Encoding` could pick another), and its
    /// `Content-Encoding`, required back.
    coding: Option<Coding>,
    encoding: Option<HeaderValue>,
}

impl std::fmt::Debug for Refill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refill").field("url", &self.url).field("len", &self.len).finish()
    }
}

/// The validator a range of the same representation can be asked by: a
/// strong `ETag`, else `Last-Modified` when it is strong; none for a weak
/// `ETag`. `Last-Modified` is strong only when the copy's `Date` is at
/// least a second after it (RFC 9110 §8.8.2.2, §13.1.5): two versions
/// made within one second share a `Last-Modified`, and one of them then
/// has a `Date` in that same second.
pub(super) fn validator(headers: &HeaderMap) -> Option<(header::HeaderName, HeaderValue)> {
    match headers.get(header::ETAG) {
        Some(e) if e.as_bytes().starts_with(b"W/") => None,
        Some(e) => Some((header::ETAG, e.clone())),
        None => {
            strong_date(headers).then(|| Some((header::LAST_MODIFIED, headers.get(header::LAST_MODIFIED)?.clone())))?
        }
    }
}

/// Whether the copy's `Last-Modified` is a strong validator: its `Date`
/// at least a second after it.
pub(super) fn strong_date(headers: &HeaderMap) -> bool {
    let modified = crate::policy::date_header(headers, &header::LAST_MODIFIED);
    let date = crate::policy::date_header(headers, &header::DATE);
    matches!((modified, date), (Some(m), Some(d)) if d >= m + Duration::from_secs(1))
}

/// `Content-Range: bytes first-last/complete` of a 206.
pub(super) fn content_range(headers: &HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, complete) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let complete = if complete == "*" { None } else { Some(complete.parse().ok()?) };
    Some((first.parse().ok()?, last.parse().ok()?, complete))
}

impl Refill {
    /// For a body of `obj` (`len` bytes, when known) stored as chunks under
    /// `chunks`; `None` when the copy has no strong validator to pin a
    /// range to.
    pub(crate) fn new(cx: &Ctx, obj: &StoredObject, len: Option<u64>, chunks: Option<(Key, u64)>) -> Option<Refill> {
        Some(Refill {
            validator: validator(&obj.headers)?,
            engine: Arc::clone(&cx.engine),
            site: Arc::clone(&cx.site),
            route: cx.rkey.placement(),
            url: cx.rkey.url.clone(),
            from: cx.client_side(),
            host: cx.upstream_host(),
            len,
            chunks,
            coding: Coding::of(&obj.headers),
            encoding: obj.headers.get(header::CONTENT_ENCODING).cloned(),
        })
    }

    /// The body's bytes from `pos` on, from upstream: to `end` (None: to
    /// the end), or to where the store holds the body again (what is
    /// stored is not fetched twice). Also where the bytes stop.
    async fn rest(&self, pos: u64, end: Option<u64>) -> io::Result<(BoxStream<'static, io::Result<Bytes>>, u64)> {
        let chunk = CHUNK_SIZE as u64;
        let end = end.or(self.len);
        // Whole chunks when they can be stored again.
        let repair = self.chunks.filter(|_| self.len.is_some());
        let (from, to) = match (repair, self.len) {
            (Some((key, generation)), Some(len)) => {
                let from = pos / chunk * chunk;
                let to = end.map_or(len, |e| e.div_ceil(chunk) * chunk).min(len);
                let stored = self.engine.store.next_stored_chunk(key, generation, (from / chunk) as u32 + 1, to);
                (from, stored.map_or(to, |i| u64::from(i) * chunk))
            }
            _ => (pos, end.or(self.len).unwrap_or(u64::MAX)),
        };
        let mut req = request::fetch(&self.engine.hop, &self.site, &self.from, &self.url, None, self.coding);
        let range = if to == u64::MAX { format!("bytes={from}-") } else { format!("bytes={from}-{}", to - 1) };
        let headers = req.headers_mut();
        headers.insert(header::RANGE, HeaderValue::from_str(&range).map_err(io::Error::other)?);
        headers.insert(header::IF_RANGE, self.validator.1.clone());
        let resp = self.engine.upstream.send(&self.site, self.route, req, self.host.clone()).await;
        let resp = resp.map_err(|e| io::Error::other(format!("the upstream could not finish the body: {e}")))?;
        if self.changed(&resp) {
            self.forget_copy().await;
            return Err(io::Error::other("the upstream's copy has changed"));
        }
        let started = match self.check(&resp, from, to) {
            Ok(started) => started,
            Err(e) => {
                // Another range than asked, or none the copy's length
                // allows: the length the copy was stored with (an earlier
                // range's total) is not what the upstream serves, and each
                // hit would break off here. A busy upstream's 503 says
                // nothing of the copy.
                if matches!(resp.status(), StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE) {
                    self.forget_copy().await;
                }
                return Err(e);
            }
        };
        let idle = self.site.origins.first().map_or(DEFAULT_BODY_IDLE, |o| o.response_timeout);
        let repair =
            repair.map(|(key, generation)| Repair::new(self.engine.store.clone(), key, generation, started, to));
        let until = end.map_or(to, |e| e.min(to));
        let body = Upstream {
            body: resp.into_body(),
            // The response starts at `started`: skip to `pos`.
            skip: pos - started,
            left: if until == u64::MAX { u64::MAX } else { until - pos },
            repair,
            idle,
        };
        Ok((futures_util::stream::unfold(body, Upstream::next).boxed(), until))
    }

    /// Is the response another representation than the stored copy's:
    /// another validator, or a body of another length (whole, or the
    /// total a range gives)? Only an answer with a body says so: a 503 or
    /// a 429 from a busy upstream carries no validator, and says nothing
    /// of the copy.
    fn changed(&self, resp: &Response<RecvBody>) -> bool {
        let h = resp.headers();
        let (name, value) = &self.validator;
        let other_total = match resp.status() {
            StatusCode::OK => super::fetch::content_length(h),
            StatusCode::PARTIAL_CONTENT => content_range(h).and_then(|(_, _, total)| total),
            _ => return false,
        };
        h.get(name) != Some(value)
            || h.get(header::CONTENT_ENCODING) != self.encoding.as_ref()
            || (self.len.is_some() && other_total.is_some_and(|l| Some(l) != self.len))
    }

    /// Drops the stored copy whose rest has changed upstream: it can never
    /// be finished, and each hit on it would break off where this one did.
    /// Only that copy (by its generation): a newer one stored meanwhile
    /// stays.
    async fn forget_copy(&self) {
        let Some((key, generation)) = self.chunks else { return };
        let store = &self.engine.store;
        if let Some(Entry::Object(o)) = store.get(key).await
            && matches!(o.body, BodyRef::Chunked { generation: g, .. } if g == generation)
        {
            tracing::info!(node = %self.engine.node, url = %self.url, "a stored copy changed upstream before its body could be finished; dropped");
            store.remove_object(key, &o);
        }
    }

    /// Is the response the same representation, from where it was asked?
    /// Where its body starts.
    fn check(&self, resp: &Response<RecvBody>, from: u64, to: u64) -> io::Result<u64> {
        let h = resp.headers();
        let len = self.len;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => match content_range(h) {
                Some((first, last, complete))
                    if first == from
                        && (to == u64::MAX || last.checked_add(1) == Some(to))
                        && (len.is_none() || complete.is_none() || complete == len) =>
                {
                    Ok(from)
                }
                _ => Err(io::Error::other("the upstream answered another range")),
            },
            // An upstream that ignores ranges sends it all.
            StatusCode::OK if len.is_none() || super::fetch::content_length(h).is_none_or(|l| Some(l) == len) => Ok(0),
            s => Err(io::Error::other(format!("the upstream answered the range with {s}"))),
        }
    }
}

/// The body of a range response, cut to the `left` bytes after the first
/// `skip`, storing the whole chunks it passes when `repair` says where.
pub(super) fn range_body(
    body: RecvBody,
    skip: u64,
    left: u64,
    repair: Option<Repair>,
    idle: Duration,
) -> BoxStream<'static, io::Result<Bytes>> {
    futures_util::stream::unfold(Upstream { body, skip, left, repair, idle }, Upstream::next).boxed()
}

/// Puts back the whole chunks a refill passes.
pub(super) struct Repair {
    store: Store,
    key: Key,
    generation: u64,
    /// The chunk being filled.
    index: u32,
    buf: BytesMut,
    /// Body offset of the next byte, and where the repaired part ends.
    at: u64,
    end: u64,
    /// An entry stored once every chunk is (the object a partial fetch
    /// makes: nothing of it is found before its chunks are whole).
    then: Option<(Key, Entry)>,
    /// The engine, the URL's primary key and where its invalidations stood
    /// as the fetch began: the stored entry is invalidated if one came
    /// since ([`Engine::invalidate_if_since`]).
    checked: Option<(Arc<Engine>, Key, u64)>,
}

impl Repair {
    /// Stores the chunks of the body under `key` (`generation`) that the
    /// bytes from `at` (a chunk's start) to `end` cover.
    pub(super) fn new(store: Store, key: Key, generation: u64, at: u64, end: u64) -> Repair {
        let index = (at / CHUNK_SIZE as u64) as u32;
        Repair { store, key, generation, index, buf: BytesMut::new(), at, end, then: None, checked: None }
    }

    /// Stores `entry` under `key` once the chunks are stored, and
    /// invalidates it if its URL (primary key `primary`) was invalidated
    /// since `mark`.
    pub(super) fn then_store(self, key: Key, entry: Entry, engine: &Arc<Engine>, primary: Key, mark: u64) -> Repair {
        Repair { then: Some((key, entry)), checked: Some((Arc::clone(engine), primary, mark)), ..self }
    }

    fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.at < self.end {
            let room = (CHUNK_SIZE - self.buf.len()).min((self.end - self.at) as usize);
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.at += n as u64;
            if self.buf.len() == CHUNK_SIZE || self.at == self.end {
                self.store.restore_chunk(self.key, self.generation, self.index, self.buf.split().freeze());
                self.index += 1;
            }
        }
        if self.at == self.end
            && let Some((key, entry)) = self.then.take()
        {
            // A copy fetched since (a whole fetch that ended first, perhaps
            // of a newer version) is not replaced by this older one.
            let newer = match (&entry, self.store.get_in_memory(key)) {
                (Entry::Object(ours), Some(Entry::Object(theirs))) => theirs.fetched_at >= ours.fetched_at,
                _ => false,
            };
            if newer {
                return;
            }
            self.store.insert(key, entry.clone());
            if let (Some((engine, primary, mark)), Entry::Object(obj)) = (self.checked.take(), &entry) {
                engine.invalidate_if_since(primary, mark, key, obj);
            }
        }
    }
}

/// The upstream's body, cut to the bytes the reader wants.
struct Upstream {
    body: RecvBody,
    skip: u64,
    left: u64,
    repair: Option<Repair>,
    idle: Duration,
}

impl Upstream {
    async fn next(mut self) -> Option<(io::Result<Bytes>, Upstream)> {
        loop {
            if self.left == 0 && self.repair.as_ref().is_none_or(|r| r.at >= r.end) {
                return None;
            }
            let frame = match tokio::time::timeout(self.idle, self.body.frame()).await {
                Ok(None) if self.left == 0 || self.left == u64::MAX => return None,
                Ok(None) => return Some((Err(io::Error::other("the upstream's range ended early")), self.done())),
                Ok(Some(Ok(f))) => f,
                Ok(Some(Err(e))) => return Some((Err(io::Error::other(e)), self.done())),
                Err(_) => return Some((Err(io::Error::other("the upstream's range stalled")), self.done())),
            };
            let Ok(mut data) = frame.into_data() else { continue };
            if let Some(r) = self.repair.as_mut() {
                r.push(&data);
            }
            let skipped = self.skip.min(data.len() as u64);
            self.skip -= skipped;
            let _ = data.split_to(skipped as usize);
            let take = self.left.min(data.len() as u64);
            if take == 0 {
                continue;
            }
            if self.left != u64::MAX {
                self.left -= take;
            }
            data.truncate(take as usize);
            if self.left == 0 {
                // The reader's last bytes: the connection stops reading
                // once it has sent them, so the chunk being repaired is
                // finished first.
                self.finish_repair().await;
            }
            return Some((Ok(data), self));
        }
    }

    /// Reads the body on until the chunks being repaired are whole (or
    /// it breaks: they are then fetched again when next read).
    async fn finish_repair(&mut self) {
        while self.repair.as_ref().is_some_and(|r| r.at < r.end) {
            match tokio::time::timeout(self.idle, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let (Ok(data), Some(r)) = (frame.into_data(), self.repair.as_mut()) {
                        r.push(&data);
                    }
                }
                _ => {
                    self.repair = None;
                    return;
                }
            }
        }
    }

    /// After an error: nothing more.
    fn done(mut self) -> Upstream {
        self.left = 0;
        self.repair = None;
        self
    }
}

/// A body read from the store from `start` to `end`, as (bytes covered,
/// frame) pairs, finished from upstream when a stored part turns out to be
/// missing (`io::ErrorKind::NotFound`). Without a refill, the error ends it.
/// Opens a body's stored frames again from an offset (after a part of it
/// came from upstream).
pub(crate) type Reopen = Arc<dyn Fn(u64) -> BoxStream<'static, io::Result<(u64, Bytes)>> + Send + Sync>;

/// A body read from the store from `start` to `end`, as (bytes covered,
/// frame) pairs. A stored part that turns out to be missing
/// (`io::ErrorKind::NotFound`) is fetched from upstream, up to where the
/// store holds the body again, and the store is read on from there
/// (`reopen`). Without a refill, the error ends it.
pub(crate) fn resumable(
    open: Reopen,
    start: u64,
    end: Option<u64>,
    refill: Option<Refill>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    enum Source {
        Store(BoxStream<'static, io::Result<(u64, Bytes)>>, u64),
        /// From upstream until the offset given.
        Upstream(BoxStream<'static, io::Result<Bytes>>, u64),
        Done,
    }
    let first = Source::Store(open(start), start);
    let refill = refill.map(Arc::new);
    futures_util::stream::unfold(first, move |state| {
        let (open, refill) = (Arc::clone(&open), refill.clone());
        async move {
            let mut state = state;
            loop {
                state = match state {
                    Source::Store(mut s, pos) => match s.next().await {
                        None => return None,
                        Some(Ok((n, frame))) => return Some((Ok(frame), Source::Store(s, pos + n))),
                        Some(Err(e)) if e.kind() == io::ErrorKind::NotFound && refill.is_some() => {
                            let refill = refill.as_ref()?;
                            let metrics = &refill.engine.metrics;
                            tracing::info!(node = %refill.engine.node, url = %refill.url, at = pos, error = %e,
                                "part of a cached body is not stored; fetching it from upstream");
                            // Boxed: an upstream fetch's state is large, and the
                            // stream (moved into every hit's body) would carry it.
                            match Box::pin(refill.rest(pos, end)).await {
                                Ok((rest, until)) => {
                                    metrics.body_refill(true);
                                    Source::Upstream(rest, until)
                                }
                                Err(e) => {
                                    metrics.body_refill(false);
                                    return Some((Err(e), Source::Done));
                                }
                            }
                        }
                        Some(Err(e)) => return Some((Err(e), Source::Done)),
                    },
                    Source::Upstream(mut s, until) => match s.next().await {
                        Some(item) => return Some((item, Source::Upstream(s, until))),
                        // The store holds the rest (or more of it) again.
                        None if until != u64::MAX && end.is_none_or(|e| until < e) => Source::Store(open(until), until),
                        None => return None,
                    },
                    Source::Done => return None,
                };
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_body_stream_does_not_carry_a_fetch_state() {
        // Every hit on a chunked body moves this stream into a box; what a
        // refill needs from upstream is boxed only when it happens.
        let open: Reopen = Arc::new(|_| futures_util::stream::empty().boxed());
        let size = std::mem::size_of_val(&resumable(open, 0, None, None));
        assert!(size <= 512, "{size} bytes");
    }

    #[test]
    fn a_range_is_pinned_to_a_strong_validator() {
        let mut h = HeaderMap::new();
        assert!(validator(&h).is_none(), "nothing to pin to");
        h.insert(header::LAST_MODIFIED, HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"));
        assert!(validator(&h).is_none(), "without a Date, Last-Modified may be shared by two versions");
        h.insert(header::DATE, HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"));
        assert!(validator(&h).is_none(), "sent within the second it names: weak");
        h.insert(header::DATE, HeaderValue::from_static("Mon, 01 Jan 2024 00:00:01 GMT"));
        assert_eq!(validator(&h).unwrap().0, header::LAST_MODIFIED);
        h.insert(header::LAST_MODIFIED, HeaderValue::from_static("yesterday"));
        assert!(validator(&h).is_none(), "a date that does not read");
        h.insert(header::LAST_MODIFIED, HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"));
        h.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        assert_eq!(validator(&h).unwrap(), (header::ETAG, HeaderValue::from_static("\"v1\"")));
        h.insert(header::ETAG, HeaderValue::from_static("W/\"v1\""));
        assert!(validator(&h).is_none(), "a weak ETag says the bytes may differ");
    }

    #[test]
    fn content_ranges_are_read_strictly() {
        let cr = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_RANGE, HeaderValue::from_static(v));
            content_range(&h)
        };
        assert_eq!(cr("bytes 0-9/100"), Some((0, 9, Some(100))));
        assert_eq!(cr("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(cr("bytes 5-9"), None);
        assert_eq!(cr("bytes -9/100"), None);
        assert_eq!(cr("items 0-9/100"), None);
    }
}
