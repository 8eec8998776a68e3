//! Step 7 for a range far into an object nothing is stored for (a video
//! seek, a resumed download). Fetching the object from its start would make
//! the client wait for every byte before its range; instead the chunks its
//! range covers are asked for (a 206), stored as part of the object, and
//! the range is answered from them as they arrive. The object is stored
//! with its whole length and only those chunks (once they are all stored):
//! a later request reads what
//! is stored and fetches only the chunks missing (`refill.rs`, pinned to
//! the copy's validator), so the object is completed without fetching
//! anything stored twice.
//!
//! Only a 206 of the range asked, with the whole length, a strong
//! validator, no `Vary` and storable as a 200 would be, is stored; another
//! 206 is passed to the client alone; anything else (an upstream that
//! ignores ranges) and the request takes the usual path.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use futures_util::StreamExt as _;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_range_header::SyntacticallyCorrectRange;
use outpost_net::RecvBody;

use super::context::{Answer, Ctx};
use super::fetch::{DEFAULT_BODY_IDLE, storable_headers, tags, timing};
use super::refill::{Repair, content_range, range_body, validator};
use super::respond::{BodySource, object_response, passed_with, stream_body};
use crate::cache_status::{CacheStatus, Outcome};
use crate::key::{Key, vary_names};
use crate::policy::{self, Directives, RequestFacts};
use crate::store::{BodyRef, CHUNK_SIZE, Entry, StoredObject, new_generation};
use crate::upstream::request;

/// The range of a request that takes this path: a GET without
/// conditionals for one range, `a-b` or `a-`, that starts past the first
/// chunk.
pub(super) fn wanted(cx: &Ctx) -> Option<(u64, Option<u64>)> {
    range_of(&cx.method, &cx.headers)
}

fn range_of(method: &Method, headers: &http::HeaderMap) -> Option<(u64, Option<u64>)> {
    if method != Method::GET {
        return None;
    }
    let conditional = [
        header::IF_RANGE,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
    ];
    if conditional.iter().any(|h| headers.contains_key(h)) {
        return None;
    }
    // Read by the parser that answers it (`respond`), or the two could
    // disagree on what was asked. A suffix range (`-500`) has no start;
    // several ranges are answered from the whole object.
    let ranges = http_range_header::parse_range_header(headers.get(header::RANGE)?.to_str().ok()?).ok()?;
    let (first, last) = match ranges.into_ranges()[..] {
        [SyntacticallyCorrectRange::FromStart(first)] => (first, None),
        [SyntacticallyCorrectRange::Indexed(first, last)] => (first, Some(last)),
        _ => return None,
    };
    // A last byte past any object is an open end (and no chunk arithmetic
    // overflows on it).
    let last = last.filter(|l| *l < 1 << 62);
    (first >= CHUNK_SIZE as u64 && first < 1 << 62).then_some((first, last))
}

/// Fetches the chunks that `first..=last` covers and answers the range from
/// them, storing them under `key`; `None` when the upstream did not answer
/// with a 206 of them (the caller fetches the whole object).
pub(super) async fn fetch(cx: &Ctx, key: Key, first: u64, last: Option<u64>) -> Option<Answer> {
    let engine = &cx.engine;
    // A place among the fetches the client's connection and network may
    // have running, held until the range's body ends: without one, the
    // whole object's fetch is what the request waits on (or is refused).
    let place = cx.errand(false)?;
    let chunk = CHUNK_SIZE as u64;
    let from = first / chunk * chunk;
    let to = last.map(|l| (l / chunk + 1) * chunk);
    let range = to.map_or_else(|| format!("bytes={from}-"), |t| format!("bytes={from}-{}", t - 1));
    let mut req = request::fetch(&engine.hop, &cx.site, &cx.client_side(), &cx.rkey.url, None, cx.rkey.coding);
    req.headers_mut().insert(header::RANGE, HeaderValue::from_str(&range).ok()?);
    // Begun before it says how far this node has followed the control
    // plane: a purge applied in between is after the fetch began, not
    // before a fetch that did not tell the shield of it.
    let (started, started_real, waiting) = (engine.clock.stamp(), SystemTime::now(), Instant::now());
    engine.mark_fetch(&mut req);
    let mark = engine.invalidation_mark(cx.rkey.primary);
    let resp = engine.upstream.send(&cx.site, cx.rkey.placement(), req, cx.upstream_host()).await.ok()?;
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return None;
    }
    let (start, end, total) = content_range(resp.headers())?;
    let total = total?;
    if start != from || end.checked_add(1) != Some(to.map_or(total, |t| t.min(total))) || first >= total {
        return None;
    }
    let wanted_end = last.map_or(total, |l| (l + 1).min(total));
    let idle = cx.site.origins.first().map_or(DEFAULT_BODY_IDLE, |o| o.response_timeout);
    let now = engine.clock.now();
    let mut answer = match stored_object(cx, &resp, total, started, started_real, now) {
        Some(obj) => {
            let BodyRef::Chunked { generation, .. } = obj.body else { return None };
            // The object is stored once its chunks are: an upstream that
            // breaks off (or lies about its length) leaves nothing found.
            let repair = Repair::new(engine.store.clone(), key, generation, from, end + 1).then_store(
                key,
                Entry::Object(Arc::new(obj.clone())),
                engine,
                cx.rkey.primary,
                mark,
            );
            let body = range_body(resp.into_body(), first - from, wanted_end - first, Some(repair), idle)
                .inspect(move |_| _ = &place)
                .boxed();
            let source = BodySource::Ready { len: total, body: Mutex::new(Some(stream_body(body))) };
            let status = CacheStatus {
                fwd_status: Some(206),
                stored: true,
                ttl: Some(obj.timing.ttl_seconds(now)),
                partitioned: cx.partitioned,
                ..CacheStatus::new(Outcome::UriMiss)
            };
            let header = status.header(&engine.node, None);
            let resp = object_response(&cx.site, &engine.rules, &cx.method, &cx.headers, &obj, source, now, header);
            (resp, status)
        }
        None => {
            drop(place);
            passed(cx, resp, first, wanted_end, total, idle)
        }
    };
    answer.1.upstream_wait = Some(waiting.elapsed());
    Some(answer)
}

/// The object a 206 of `total` bytes makes, when it may be stored.
fn stored_object(
    cx: &Ctx,
    resp: &Response<RecvBody>,
    total: u64,
    started: SystemTime,
    started_real: SystemTime,
    now: SystemTime,
) -> Option<StoredObject> {
    let mut headers = resp.headers().clone();
    headers.remove(header::CONTENT_RANGE);
    headers.remove(header::CONTENT_LENGTH);
    if !vary_names(&headers).is_empty() || validator(&headers).is_none() || total > cx.site.cache.max_object_size {
        return None;
    }
    let facts = RequestFacts {
        method: &Method::GET,
        path: cx.path(),
        has_authorization: cx.headers.contains_key(header::AUTHORIZATION),
        no_store: Directives::parse_all(cx.headers.get_all(header::CACHE_CONTROL)).no_store,
    };
    let plan = policy::storability(facts, StatusCode::OK, &headers, &cx.site.cache, &cx.site.stale, now).ok()?;
    let initial_age = policy::initial_age(&headers, started_real, SystemTime::now());
    Some(StoredObject {
        status: StatusCode::OK,
        headers: storable_headers(&headers, &plan.strip),
        url: cx.rkey.url.clone(),
        tags: tags(&headers),
        fetched_at: started,
        timing: timing(&plan, initial_age, now),
        shareable_with_auth: plan.shareable_with_auth,
        body: BodyRef::Chunked { len: total, chunk_size: CHUNK_SIZE as u32, generation: new_generation() },
        derived: Default::default(),
    })
}

/// A 206 that is not stored: the client's range of it, passed on.
fn passed(cx: &Ctx, resp: Response<RecvBody>, first: u64, end: u64, total: u64, idle: std::time::Duration) -> Answer {
    let (mut parts, body) = resp.into_parts();
    let from = content_range(&parts.headers).map_or(first, |(s, _, _)| s);
    let body = stream_body(range_body(body, first - from, end - first, None, idle));
    if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{}/{total}", end - 1)) {
        parts.headers.insert(header::CONTENT_RANGE, v);
    }
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - first));
    passed_with(cx, parts, body, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_range_far_into_the_object_takes_this_path() {
        let of = |method: Method, pairs: &[(&'static str, &'static str)]| {
            let headers =
                pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect();
            range_of(&method, &headers)
        };
        let range = |v: &'static str| of(Method::GET, &[("range", v)]);
        assert_eq!(range("bytes=2000000-2000099"), Some((2_000_000, Some(2_000_099))));
        assert_eq!(range("bytes=1048576-"), Some((1_048_576, None)));
        assert_eq!(range("bytes=2000000-18446744073709551615"), Some((2_000_000, None)), "past any object: open");
        for refused in [
            "bytes=0-99",
            "bytes=1048575-",
            "bytes=-500",
            "bytes=3000000-2000000",
            "bytes=2000000-2000099,4000000-",
            "bytes=abc-",
            "bytes=+1048576-",
            "bytes=1048576 -",
            "bytes=2000000-+2000099",
            "bytes=99999999999999999999999-",
            "items=2000000-",
            "bytes 2000000-",
            "",
        ] {
            assert_eq!(range(refused), None, "{refused}");
        }
        assert_eq!(of(Method::HEAD, &[("range", "bytes=2000000-")]), None);
        assert_eq!(of(Method::GET, &[("range", "bytes=2000000-"), ("if-range", "\"x\"")]), None);
        assert_eq!(of(Method::GET, &[("range", "bytes=2000000-"), ("if-none-match", "*")]), None);
    }
}
