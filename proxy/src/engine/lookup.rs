//! Steps 5 and 6 for GET and HEAD: find the stored object (memory, disk,
//! `Vary`, purge rules) and serve it when it may be served; otherwise hand
//! the request to step 7 with what it found.

use std::sync::Arc;

use http::header;

use super::context::{Answer, Ctx, failed};
use super::represent::Serving;
use super::wait::{self, Miss};
use super::{refill, represent, segment};
use crate::cache_status::{CacheStatus, Outcome};
use crate::error::Error;
use crate::key::Key;
use crate::policy::{Directives, Freshness};
use crate::purge::Verdict;
use crate::store::{Entry, StoredObject};

/// Times a request looks up again when the response it waited for turned
/// out to be another variant, before it fetches alone.
const VARIANT_RETRIES: usize = 3;

/// Steps 5 to 8 for GET and HEAD.
pub(super) async fn cacheable(cx: &Ctx) -> Answer {
    let asked = Directives::parse_all(cx.headers.get_all(header::CACHE_CONTROL));
    let auth = cx.headers.contains_key(header::AUTHORIZATION);
    // A request with credentials, or one that says `no-store`, may be
    // answered from the cache, but what it fetches is neither stored nor
    // shared: it fetches alone.
    let alone = auth || asked.no_store;
    let distrust = cx.engine.distrusts(&cx.site);
    let mut hinted = false;
    for _ in 0..VARIANT_RETRIES {
        let found = lookup(cx).await;
        let miss = match serve(cx, found, (auth, alone), distrust) {
            Ok(hit) => return hit.serve(cx).await,
            Err(miss) => miss,
        };
        if asked.only_if_cached {
            return failed(&cx.engine, Error::OnlyIfCached);
        }
        if !hinted {
            super::request::early_hints_on_miss(cx);
            hinted = true;
        }
        // A range far into an object nothing is stored for: its chunks only.
        if miss.stale.is_none()
            && miss.outcome == Outcome::UriMiss
            && !alone
            && !distrust
            && let Some((first, last)) = segment::wanted(cx)
            && let Some(answer) = Box::pin(segment::fetch(cx, miss.key, first, last)).await
        {
            return answer;
        }
        // Boxed: the fetch's state is large, and a hit never needs it.
        if let Some(answer) = Box::pin(wait::fetch(cx, miss, alone, distrust)).await {
            return answer;
        }
    }
    // The variant kept changing under us: fetch alone.
    let found = lookup(cx).await;
    let miss = Miss { key: found.key, stale: None, outcome: Outcome::VaryMiss, refetched: false };
    Box::pin(wait::fetch(cx, miss, true, false))
        .await
        .unwrap_or_else(|| failed(&cx.engine, Error::BadRequest("unstable variant")))
}

/// Steps 5 and 6 without waiting: a hit on a copy the memory tier holds,
/// in a representation it holds too. `None` when step 5 would read the
/// disk, a coding is still to be made, or the request is not a hit.
pub(super) fn cacheable_now(cx: &Ctx) -> Option<Serving> {
    let found = lookup_now(cx)?;
    let obj = found.object.as_ref()?;
    if asked_to_check(cx, obj) {
        return None;
    }
    // Decided before `serve`, whose stale-while-revalidate starts a
    // revalidation: a request answered on the usual path instead must not
    // start a second.
    let made = match represent::choose(cx, obj, Some(obj.body.len())) {
        represent::Choice::Stored { vary } => Err(vary),
        represent::Choice::Made(c) => Ok((c, represent::made_now(cx, found.key, obj, c)?)),
    };
    let auth = cx.headers.contains_key(header::AUTHORIZATION);
    let no_store = cx.headers.contains_key(header::CACHE_CONTROL)
        && Directives::parse_all(cx.headers.get_all(header::CACHE_CONTROL)).no_store;
    let hit = serve(cx, found, (auth, auth || no_store), cx.engine.distrusts(&cx.site)).ok()?;
    Some(match made {
        Err(vary) => Serving::stored(hit.key, hit.obj, hit.status, hit.now, vary),
        Ok((c, (mkey, m))) => Serving::made(mkey, m, c, hit.status, hit.now),
    })
}

/// What step 5 found.
struct Found {
    key: Key,
    object: Option<Arc<StoredObject>>,
    vary_miss: bool,
}

/// An object stored in part (a range of it, or what reached the disk
/// before a crash) is served, and its missing chunks fetched as they are
/// read, when a strong validator pins them to the same copy; otherwise it
/// is dropped and fetched again.
fn whole(cx: &Ctx, key: Key, o: Arc<StoredObject>) -> Option<Arc<StoredObject>> {
    let store = &cx.engine.store;
    if !for_this_url(cx, &o) {
        return None;
    }
    if store.has_body(key, &o) || refill::validator(&o.headers).is_some() {
        Some(o)
    } else {
        tracing::warn!(node = %cx.engine.node, "a cached body is incomplete (lost in a crash?); fetching it again");
        store.remove_object(key, &o);
        None
    }
}

/// Whether a copy found under this request's key was stored for its URL.
/// Keys are hashed under the cache's secret, so no client can aim two
/// requests at one key; should two URLs share one all the same (a secret
/// read off the disk), the copy of one is a miss for the other (and the
/// fetch that follows replaces it), never a hit.
fn for_this_url(cx: &Ctx, o: &StoredObject) -> bool {
    let same = o.url == cx.rkey.url;
    if !same {
        tracing::warn!(node = %cx.engine.node, stored = %o.url, asked = %cx.rkey.url, "two URLs share a cache key; the stored copy is not served");
    }
    same
}

/// A shield checks its copy with the origin before serving it to an edge
/// that has applied control-plane events it has not
/// (`Engine::behind_the_edge`): one of them may purge the copy.
pub(super) fn asked_to_check(cx: &Ctx, obj: &StoredObject) -> bool {
    cx.engine.behind_the_edge(&cx.headers).is_some_and(|since| obj.fetched_at < since)
}

/// Step 5 from the memory tier alone: the stored object for this request,
/// when the memory tier holds it (and the variant index, under `Vary`).
fn lookup_now(cx: &Ctx) -> Option<Found> {
    let store = &cx.engine.store;
    let (key, o) = match store.get_in_memory(cx.rkey.primary)? {
        Entry::Object(o) => (cx.rkey.primary, o),
        Entry::Variants(v) => {
            let key = cx.rkey.variant(&v.names, &cx.headers);
            match store.get_in_memory(key)? {
                Entry::Object(o) => (key, o),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(Found { key, object: whole(cx, key, o), vary_miss: false })
}

/// Step 5: the stored object for this request, following `Vary`.
async fn lookup(cx: &Ctx) -> Found {
    let store = &cx.engine.store;
    let whole = |key, o| whole(cx, key, o);
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

/// A stored copy step 6 serves.
pub(super) struct Hit {
    key: Key,
    obj: Arc<StoredObject>,
    status: CacheStatus,
    /// When it was judged (engine clock).
    now: std::time::SystemTime,
}

impl Hit {
    pub(super) async fn serve(self, cx: &Ctx) -> Answer {
        represent::serve(cx, self.key, self.obj, self.status, self.now).await
    }
}

/// A fresh copy of `key` that the memory tier holds now, though this
/// request's lookup missed it: a fetch stored it and ended in between.
/// Checked as it joins the fetches in flight, so the object is not fetched
/// twice (`Flights::join_unless`).
pub(super) fn stored_since(cx: &Ctx, key: Key, distrust: bool) -> Option<Hit> {
    let engine = &cx.engine;
    if distrust {
        return None;
    }
    let Some(Entry::Object(obj)) = engine.store.get_in_memory(key) else { return None };
    if !for_this_url(cx, &obj) || asked_to_check(cx, &obj) {
        return None;
    }
    let now = engine.clock.now();
    // Cheapest first: this runs under the flights' lock, and an expired
    // copy (the usual reason to be here with one in memory) stops at its
    // freshness, before its chunks are counted.
    let Freshness::Fresh(_) = obj.timing.freshness(now) else { return None };
    if engine.purges.check(&cx.site.id, &obj) != Verdict::Valid || !engine.store.has_body(key, &obj) {
        return None;
    }
    let ttl = Some(obj.timing.ttl_seconds(now));
    Some(Hit { key, obj, status: CacheStatus { ttl, ..CacheStatus::new(Outcome::Hit) }, now })
}

/// Step 6: the stored copy, if it may be served now (`represent::serve`
/// then answers in the request's coding); otherwise what step 7 needs. Cut
/// off from the control plane past the site's grace (`distrust`), purges
/// may have been missed: hits are revalidated, and stale copies stand in
/// when the upstream does not answer. A request that fetches `alone`
/// (credentials, or its own `no-store`) starts no background
/// revalidation: what it fetched would not be stored, and would only take
/// the key's one revalidation from others.
fn serve(cx: &Ctx, found: Found, (auth, alone): (bool, bool), distrust: bool) -> Result<Hit, Miss> {
    let engine = &cx.engine;
    let outcome = if found.vary_miss { Outcome::VaryMiss } else { Outcome::UriMiss };
    let miss = Miss { key: found.key, stale: None, outcome, refetched: false };
    let Some(obj) = found.object else { return Err(miss) };
    let verdict = engine.purges.check(&cx.site.id, &obj);
    if verdict == Verdict::Invalid {
        // Purged: the copy is gone, so this is a miss, not a stale hit.
        engine.store.remove_object(found.key, &obj);
        return Err(Miss { outcome: Outcome::UriMiss, ..miss });
    }
    if auth && !obj.shareable_with_auth {
        return Err(miss);
    }
    let now = engine.clock.now();
    let freshness = match verdict {
        Verdict::Valid if !distrust && !asked_to_check(cx, &obj) => obj.timing.freshness(now),
        _ => Freshness::Stale(obj.timing.age(now)),
    };
    let ttl = Some(obj.timing.ttl_seconds(now));
    let key = found.key;
    let answer =
        |outcome| Hit { key, obj: Arc::clone(&obj), status: CacheStatus { ttl, ..CacheStatus::new(outcome) }, now };
    let held = engine.holds.held(found.key, now);
    match freshness {
        Freshness::Fresh(_) => Ok(answer(Outcome::Hit)),
        Freshness::StaleWhileRevalidate(_) => {
            // While the upstream is failing for this key, the stale copy is
            // served without trying again.
            if !held && !alone {
                wait::revalidate_in_background(cx, found.key, Arc::clone(&obj));
            }
            Ok(answer(Outcome::StaleWhileRevalidate))
        }
        // The upstream failed for this key a moment ago: the stale copy
        // again, without asking it.
        Freshness::Stale(_) if held && obj.timing.stands_in(now, distrust) => {
            Ok(answer(if distrust { Outcome::StalePartitioned } else { Outcome::StaleIfError }))
        }
        Freshness::Stale(_) => {
            Err(Miss { key: found.key, stale: Some((found.key, obj)), outcome: Outcome::Expired, refetched: false })
        }
    }
}
