//! Step 6, the representation: which coding of a stored or in-flight
//! object a request gets.
//!
//! A site with `[compress] codings` answers each request in one coding
//! (`RequestKey::coding`: the best of the site's codings and identity by the
//! client's `Accept-Encoding`), asks its upstream for that coding alone and
//! keys `Vary: Accept-Encoding` by it, so the spellings of a coding share one
//! stored variant. An object stored as identity that the site compresses
//! (its type, its size, no `no-transform`) is answered in the request's
//! coding, *made* from the stored copy: once, kept in the store under
//! [`made_key`], and served from there after. An object stored encoded (by
//! the origin, or by a shield) goes as it is to clients that accept its
//! coding, and decoded to the rest. A response in flight is recoded as it
//! streams, into the same bytes the stored representation will have.
//!
//! So the tier that stores the origin's response first (a shield, or an
//! edge without one) is the one that compresses; tiers below it ask it for
//! the coding their client wants and store that.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use futures_util::future::{BoxFuture, Shared};
use futures_util::{FutureExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use outpost_net::coding::{self, Coding, Recoder};

use super::Engine;
use super::context::{Answer, Ctx};
use super::respond::{Body, SiteMark, serve_object};
use crate::cache_status::CacheStatus;
use crate::key::{Key, made_key};
use crate::policy::Directives;
use crate::store::{Entry, StoredObject};
use outpost_config::Site;

/// How a request is answered from an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Choice {
    /// With the object's own bytes; `vary`: the answer depends on
    /// `Accept-Encoding` (which the response's `Vary` then says).
    Stored { vary: bool },
    /// In this coding, made from the object's.
    Made(Coding),
}

const AS_IS: Choice = Choice::Stored { vary: false };

/// The representation `cx`'s request gets of `obj`, whose body is `len`
/// bytes when known.
pub(super) fn choose(cx: &Ctx, obj: &StoredObject, len: Option<u64>) -> Choice {
    let Some(wanted) = cx.rkey.coding else { return AS_IS };
    if obj.status != StatusCode::OK {
        return AS_IS;
    }
    let compress = &cx.site.compress;
    let codings = obj.derived.get_or_make(|kept: &Codings| kept.site.is(&cx.site), || Codings::new(obj, &cx.site));
    match codings.stored {
        // A coding of its own that Outpost cannot read: as it is.
        None => AS_IS,
        Some(Coding::Identity) => {
            let fits = len.is_some_and(|l| l >= compress.min_size && l <= compress.max_size);
            if !fits || !codings.covered || codings.no_transform {
                AS_IS
            } else if wanted == Coding::Identity {
                Choice::Stored { vary: true }
            } else {
                Choice::Made(wanted)
            }
        }
        Some(stored) => {
            let accepted = &cx.rkey.accepted;
            // A client that refuses identity too gets the stored coding
            // (RFC 9110 §12.5.3 lets a server send it).
            let decode = !accepted.accepts(stored)
                && accepted.accepts(Coding::Identity)
                && len.is_some_and(|l| l <= compress.max_size)
                && !codings.no_transform;
            if decode { Choice::Made(Coding::Identity) } else { Choice::Stored { vary: true } }
        }
    }
}

/// What [`choose`] needs of a copy's fields under a site's rules, worked
/// out at its first hit and kept with it (`StoredObject::derived`): a hit
/// then reads them instead of its fields.
struct Codings {
    site: SiteMark,
    /// The copy's own coding (`None`: one Outpost cannot read).
    stored: Option<Coding>,
    /// The site compresses the copy's `Content-Type`.
    covered: bool,
    /// `Cache-Control: no-transform`.
    no_transform: bool,
}

impl Codings {
    fn new(obj: &StoredObject, site: &Arc<Site>) -> Codings {
        let kind = obj.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        Codings {
            site: SiteMark::of(site),
            stored: Coding::of(&obj.headers),
            covered: kind.is_some_and(|t| site.compress.covers(t)),
            no_transform: Directives::parse_all(obj.headers.get_all(header::CACHE_CONTROL)).no_transform,
        }
    }
}

/// A stored copy as the request's representation: the copy itself, or the
/// coding made from it (found in the store, or made now and kept).
pub(super) async fn serve(cx: &Ctx, key: Key, obj: Arc<StoredObject>, status: CacheStatus, now: SystemTime) -> Answer {
    let serving = match choose(cx, &obj, Some(obj.body.len())) {
        Choice::Stored { vary } => Serving::stored(key, obj, status, now, vary),
        Choice::Made(c) => match Box::pin(made(cx, key, &obj, c)).await {
            Some((mkey, made)) => Serving::made(mkey, made, c, status, now),
            None => Serving::stored(key, obj, status, now, true),
        },
    };
    serving.answer(cx)
}

/// The representation in `coding` made from `obj` (under `key`), when the
/// memory tier holds it whole.
pub(super) fn made_now(cx: &Ctx, key: Key, obj: &StoredObject, coding: Coding) -> Option<(Key, Arc<StoredObject>)> {
    let store = &cx.engine.store;
    let mkey = made_key(key, obj.fetched_at, coding);
    match store.get_in_memory(mkey)? {
        Entry::Object(o) if store.has_body(mkey, &o) => Some((mkey, o)),
        _ => None,
    }
}

/// A copy chosen to answer a request, in the representation the request
/// gets: the stored copy, or a coding made from it.
pub(super) struct Serving {
    pub(super) key: Key,
    pub(super) obj: Arc<StoredObject>,
    /// With the coding sent.
    pub(super) status: CacheStatus,
    /// When the copy was judged (engine clock).
    pub(super) now: SystemTime,
    /// The response's `Vary` is to list `Accept-Encoding`.
    pub(super) vary: bool,
    /// A part of the body that leaves the store while it is read may be
    /// fetched again from upstream (not for a representation made here).
    pub(super) refillable: bool,
}

impl Serving {
    /// The stored copy itself; `vary`: the answer depends on
    /// `Accept-Encoding`.
    pub(super) fn stored(
        key: Key,
        obj: Arc<StoredObject>,
        status: CacheStatus,
        now: SystemTime,
        vary: bool,
    ) -> Serving {
        let coding = vary.then(|| (Coding::of(&obj.headers).unwrap_or(Coding::Identity), false));
        Serving { key, obj, status: CacheStatus { coding, ..status }, now, vary, refillable: true }
    }

    /// A representation made in `coding` (under `mkey`).
    pub(super) fn made(
        mkey: Key,
        made: Arc<StoredObject>,
        coding: Coding,
        status: CacheStatus,
        now: SystemTime,
    ) -> Serving {
        let status = CacheStatus { coding: Some((coding, true)), ..status };
        Serving { key: mkey, obj: made, status, now, vary: false, refillable: false }
    }

    /// The answer, its fields in a map.
    pub(super) fn answer(self, cx: &Ctx) -> Answer {
        let (mut resp, status) = serve_object(cx, self.key, &self.obj, self.status, self.now, self.refillable);
        if self.vary {
            add_vary(resp.headers_mut());
        }
        (resp, status)
    }
}

/// Adds `Accept-Encoding` to a response's `Vary` unless it is there.
pub(super) fn add_vary(headers: &mut HeaderMap) {
    if !lists_accept_encoding(headers.get_all(header::VARY)) {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// Whether `Vary` values list `Accept-Encoding` (or `*`).
pub(super) fn lists_accept_encoding<'a>(vary: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    vary.into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|n| n.trim().eq_ignore_ascii_case("accept-encoding") || n.trim() == "*")
}

/// The fields of a representation in `coding` made from a stored copy:
/// its `Content-Encoding`, an `ETag` of its own (the stored one with the
/// coding's name appended, so a validator of one coding never matches
/// another's bytes), and `Vary: Accept-Encoding`.
pub(super) fn made_headers(stored: &HeaderMap, coding: Coding) -> HeaderMap {
    let mut h = stored.clone();
    match coding {
        Coding::Identity => h.remove(header::CONTENT_ENCODING),
        c => h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c.token())),
    };
    if let Some(tag) = h.remove(header::ETAG) {
        let bytes = tag.as_bytes();
        if bytes.len() >= 2 && bytes.ends_with(b"\"") {
            let mut v = bytes[..bytes.len() - 1].to_vec();
            v.push(b'-');
            v.extend_from_slice(coding.token().as_bytes());
            v.push(b'"');
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                h.insert(header::ETAG, v);
            }
        }
    }
    add_vary(&mut h);
    h
}

/// Representations being made, so each is made once however many
/// requests want it at the same moment; and those that could not be made
/// (a stored coding that is corrupt, or decodes past the limit), so each
/// is tried once a copy, not for every request that asks: each try reads
/// the whole body and decodes up to the limit.
#[derive(Debug, Default)]
pub(crate) struct Making(Mutex<HashMap<Key, UnderWay>>, Mutex<std::collections::HashSet<Key>>);

/// Representations remembered as not to be made; past it, the set begins
/// anew (each key costs one more try).
const UNMAKEABLE: usize = 4096;

/// A representation being made, as every request that wants it waits on
/// it: what it came to (`None`: it could not be made).
type UnderWay = Shared<BoxFuture<'static, Option<Arc<StoredObject>>>>;

impl Making {
    /// The making of `mkey` under way, or the one `start` begins (`None`
    /// from it: none begun).
    fn join(
        &self,
        mkey: Key,
        start: impl FnOnce() -> Option<BoxFuture<'static, Option<Arc<StoredObject>>>>,
    ) -> Option<UnderWay> {
        if self.1.lock().unwrap_or_else(PoisonError::into_inner).contains(&mkey) {
            return None;
        }
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(under_way) = map.get(&mkey) {
            return Some(under_way.clone());
        }
        let started = start()?.shared();
        map.insert(mkey, started.clone());
        Some(started)
    }

    /// `mkey` cannot be made from its copy (its key names the copy's
    /// fetch): not to be tried again.
    fn failed(&self, mkey: Key) {
        let mut failed = self.1.lock().unwrap_or_else(PoisonError::into_inner);
        if failed.len() >= UNMAKEABLE {
            failed.clear();
        }
        failed.insert(mkey);
    }
}

/// Takes a making out of the map when dropped.
struct Done<'a>(&'a Making, Key);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.1);
    }
}

/// The stored representation under `mkey`, whole.
async fn stored_made(engine: &Engine, mkey: Key) -> Option<Arc<StoredObject>> {
    match engine.store.get(mkey).await {
        Some(Entry::Object(o)) if engine.store.has_body(mkey, &o) => Some(o),
        _ => None,
    }
}

/// The representation in `coding` of the object stored under `key`: from
/// the store, or made now (and stored); `None` when it cannot be made.
///
/// The making is a task of its own, which every request wanting it waits
/// on: a client that goes away (a stream reset) does not abandon it half
/// done for the next to begin again, and it holds one of its client
/// connection's places ([`outpost_net::Errands`]) until it ends, so no
/// connection has more made at once than it may have fetches running
/// (none begun without a place: the stored representation is served).
async fn made(cx: &Ctx, key: Key, obj: &Arc<StoredObject>, coding: Coding) -> Option<(Key, Arc<StoredObject>)> {
    let engine = &cx.engine;
    let mkey = made_key(key, obj.fetched_at, coding);
    if let Some(o) = stored_made(engine, mkey).await {
        return Some((mkey, o));
    }
    let start = || {
        let place = cx.errand(false)?;
        // Made in memory: what a coding decodes to is bounded as what is
        // encoded is (a small body can decode to any size), and by the
        // site's largest object.
        let limit = cx.site.compress.max_size.min(cx.site.cache.max_object_size);
        let (engine, obj) = (Arc::clone(engine), Arc::clone(obj));
        let task = tokio::spawn(async move {
            let _place = place;
            // Leaves the map however the making ends (a panic too), so
            // the next request begins it again.
            let _done = Done(&engine.making, mkey);
            // Looked up again: a making that ended between the lookup
            // above and the start of this one has left it in the store.
            match stored_made(&engine, mkey).await {
                Some(o) => Some(o),
                None => make(&engine, limit, key, &obj, coding, mkey).await,
            }
        });
        Some(async move { task.await.ok().flatten() }.boxed())
    };
    let made = engine.making.join(mkey, start)?.await;
    made.map(|o| (mkey, o))
}

async fn make(
    engine: &Engine,
    limit: u64,
    key: Key,
    obj: &Arc<StoredObject>,
    coding: Coding,
    mkey: Key,
) -> Option<Arc<StoredObject>> {
    let from = Coding::of(&obj.headers)?;
    let len = obj.body.len();
    let mut body = Vec::with_capacity(len as usize);
    let mut read = std::pin::pin!(engine.store.read(key, &obj.body, 0, len));
    while let Some(piece) = read.next().await {
        body.extend_from_slice(&piece.ok()?);
    }
    let recoded = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
        match from {
            Coding::Identity => coding::encode(coding, &body),
            // Decoded, and not copied again to "encode" it as itself.
            from if coding == Coding::Identity => coding::decode(from, &body, limit),
            from => coding::encode(coding, &coding::decode(from, &body, limit)?),
        }
    })
    .await
    .map_err(io::Error::other)
    .and_then(|r| r);
    let bytes = match recoded {
        Ok(b) => b,
        Err(e) => {
            engine.making.failed(mkey);
            engine.metrics.representation(coding, false, 0);
            tracing::warn!(node = %engine.node, url = %obj.url, from = from.token(), to = coding.token(), error = %e, "cannot make a representation; serving the stored one");
            return None;
        }
    };
    engine.metrics.representation(coding, true, bytes.len());
    let mut writer = engine.store.body_writer(mkey);
    writer.push(&bytes);
    let made = Arc::new(StoredObject {
        headers: made_headers(&obj.headers, coding),
        body: writer.finish(),
        ..(**obj).clone()
    });
    engine.store.insert(mkey, Entry::Object(Arc::clone(&made)));
    Some(made)
}

/// A body recoded as it streams: encoded into `to` from identity, or
/// decoded from `from` (at most `limit` bytes out). Decoded a little input
/// at a time: a frame of a few kilobytes can decode to any size, and what
/// one push makes is held whole until it is sent.
pub(super) fn recoded(body: Body, from: Coding, to: Coding, len: Option<u64>, limit: u64) -> Body {
    use http_body_util::BodyExt;
    const DECODED_INPUT: usize = 1024;
    let (recoder, step) = if from == Coding::Identity {
        (Recoder::encoder(to, len), usize::MAX)
    } else {
        (Recoder::decoder(from, limit), DECODED_INPUT)
    };
    let frames = futures_util::stream::unfold(
        (Some(body.into_data_stream()), recoder.map_err(|e| e.to_string()), bytes::Bytes::new()),
        move |(mut body, recoder, mut pending)| async move {
            let mut recoder = match recoder {
                Ok(r) => r,
                Err(_) if body.is_none() => return None,
                Err(e) => return Some((Err(io::Error::other(e)), (None, Err(String::new()), pending))),
            };
            loop {
                if !pending.is_empty() {
                    let piece = pending.split_to(step.min(pending.len()));
                    match recoder.push(&piece) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Some((Ok(bytes::Bytes::from(out)), (body, Ok(recoder), pending))),
                        Err(e) => return Some((Err(e), (None, Err(String::new()), pending))),
                    }
                }
                let Some(frames) = body.as_mut() else { break };
                match frames.next().await {
                    Some(Ok(data)) => pending = data,
                    Some(Err(e)) => return Some((Err(io::Error::other(e)), (None, Err(String::new()), pending))),
                    None => body = None,
                }
            }
            let last = recoder.finish();
            Some((last.map(bytes::Bytes::from), (None, Err(String::new()), pending)))
        },
    );
    super::respond::stream_body(frames)
}

/// A response whose body is recoded as it streams has no length to promise.
pub(super) fn without_length(resp: &mut Response<Body>) {
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    resp.headers_mut().remove(header::ACCEPT_RANGES);
}
