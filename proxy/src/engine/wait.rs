//! Steps 7 and 8 for GET and HEAD: join the fetch already running for the
//! key, or lead one (revalidating a stored copy when there is one), then
//! answer from what the fetch got: the shared response as it streams, the
//! revalidated copy, a response that must not be shared, or — when the
//! upstream failed — a stale copy or an error.

use std::sync::Arc;
use std::time::Instant;

use http::Response;
use http::header::HeaderMap;
use outpost_net::{Errand, RecvBody};
use tokio::sync::oneshot;

use super::context::{Answer, Ctx, failed};
use super::fetch::{FetchJob, Fetched};
use super::flight::{Flight, Head, Join, SharedHead};
use super::lookup;
use super::refill::Refill;
use super::represent::{self, Choice};
use super::respond::{BodySource, object_response, passed_response};
use crate::cache_status::{CacheStatus, Outcome};
use crate::error::Error;
use crate::key::Key;
use crate::policy::Directives;
use crate::store::StoredObject;
use crate::upstream::UpstreamErrorKind;
use outpost_config::coding::Coding;

/// A request step 6 could not answer from the store.
pub(super) struct Miss {
    pub key: Key,
    /// The stored copy to revalidate, and its key.
    pub stale: Option<(Key, Arc<StoredObject>)>,
    pub outcome: Outcome,
    /// Left a fetch that began before a purge ([`predates_a_purge`]):
    /// the fetch it joins now is taken as it is.
    pub refetched: bool,
}

/// The fetch a request waits on.
struct Joined {
    flight: Arc<Flight>,
    /// The leader's channel for a response that must not be shared.
    pass: Option<oneshot::Receiver<Response<RecvBody>>>,
}

impl Joined {
    /// Waited for another request's fetch.
    fn collapsed(&self) -> bool {
        self.pass.is_none()
    }
}

/// What a fetch job needs of the request that starts it.
fn fetched(cx: &Ctx) -> Fetched {
    Fetched {
        from: cx.client_side(),
        no_store: Directives::parse_all(cx.headers.get_all(http::header::CACHE_CONTROL)).no_store,
        has_authorization: cx.headers.contains_key(http::header::AUTHORIZATION),
        host: cx.upstream_host(),
    }
}

/// Why a request leads no fetch though none is running for its key.
enum NoLead {
    /// A fetch stored what it wants after it looked.
    Stored(lookup::Hit),
    /// Its connection has its share of fetches running.
    Refused,
}

/// A place for one more fetch among those `cx`'s connection and its
/// client's network may have running: `None` (counted) when either has
/// its share.
fn errand(cx: &Ctx) -> Option<Errand> {
    let errand = cx.errand(false);
    if errand.is_none() {
        cx.engine.metrics.fetch_refused();
        let network = cx.client.map(|c| cx.engine.networks.running(c.ip()));
        tracing::debug!(client = ?cx.client, connection = cx.errands.running(), ?network, "fetch refused: the connection or its network has its share running");
    }
    errand
}

/// Step 7: joins or leads the fetch for the key (`alone`: a private fetch
/// nobody joins), then answers (step 8). `None` means the shared response is
/// another variant: look up again. A request that would lead a fetch while
/// its connection has its share running is answered 429 (or with a stale
/// copy that may stand in for an error); one that can wait on a fetch
/// already running always may.
pub(super) async fn fetch(cx: &Ctx, miss: Miss, alone: bool, distrust: bool) -> Option<Answer> {
    let engine = &cx.engine;
    let mut place = None;
    let join = if alone {
        place = errand(cx);
        if place.is_none() {
            return Some(fail_over(cx, miss, Error::TooManyFetches, false, distrust).await);
        }
        Join::Leader(engine.flights.private(miss.key, &cx.rkey.url))
    } else {
        // Decided under the map's lock, only when no fetch is running.
        let lead = || match lookup::stored_since(cx, miss.key, distrust) {
            Some(hit) => Some(NoLead::Stored(hit)),
            None => {
                place = errand(cx);
                place.is_none().then_some(NoLead::Refused)
            }
        };
        match engine.flights.join_unless(miss.key, &cx.rkey.url, lead) {
            Ok(join) => join,
            Err(NoLead::Stored(hit)) => return Some(hit.serve(cx).await),
            Err(NoLead::Refused) => return Some(fail_over(cx, miss, Error::TooManyFetches, false, distrust).await),
        }
    };
    // The upstream's interim responses go to every request waiting on
    // the fetch that can be sent them.
    if let Some(interim) = &cx.interim {
        let flight = match &join {
            Join::Leader(guard) => &guard.flight,
            Join::Waiter(flight) => flight,
        };
        flight.pass_interim_to(interim.clone());
    }
    let joined = match (join, place) {
        (Join::Leader(guard), Some(place)) => {
            let flight = Arc::clone(&guard.flight);
            let (tx, rx) = oneshot::channel();
            let job = FetchJob::new(cx, (guard, place), fetched(cx), miss.stale.clone(), Some(tx));
            tokio::spawn(job.run());
            Joined { flight, pass: Some(rx) }
        }
        (Join::Leader(_), None) => unreachable!("a leader has its place"),
        (Join::Waiter(flight), _) => {
            engine.metrics.coalesced();
            Joined { flight, pass: None }
        }
    };
    let waiting = Instant::now();
    let mut answer = answer(cx, miss, joined, distrust).await?;
    answer.1.upstream_wait.get_or_insert(waiting.elapsed());
    Some(answer)
}

/// Stale-while-revalidate: one background revalidation per key, unless
/// the request's connection has half its share of fetches running
/// ([`outpost_net::Errands::start_spare`]: the stale copy is served all the same, and
/// a later request revalidates).
pub(super) fn revalidate_in_background(cx: &Ctx, key: Key, obj: Arc<StoredObject>) {
    let mut place = None;
    let lead = || {
        place = cx.errand(true);
        place.is_none().then_some(())
    };
    if let Ok(Join::Leader(guard)) = cx.engine.flights.join_unless(key, &cx.rkey.url, lead)
        && let Some(place) = place
    {
        tokio::spawn(FetchJob::new(cx, (guard, place), fetched(cx), Some((key, obj)), None).run());
    }
}

/// Whether a purge this node (or, at a shield, the asking edge) has
/// applied came after the fetch that got `obj` began.
fn predates_a_purge(cx: &Ctx, obj: &StoredObject) -> bool {
    cx.engine.purges.check(&cx.site.id, obj) != crate::purge::Verdict::Valid || lookup::asked_to_check(cx, obj)
}

/// Step 8: the answer from what the fetch got.
async fn answer(cx: &Ctx, miss: Miss, joined: Joined, distrust: bool) -> Option<Answer> {
    let collapsed = joined.collapsed();
    let head = joined.flight.head().await;
    // A fetch another request began before a purge (or, at a shield, before
    // events an edge has applied and this node has not) gets what the purge
    // was for: not for a request that joins it now. It leaves the map, so
    // requests from now on fetch anew, this one among them: it leads or
    // joins the next fetch, once (the one it joins then is taken as it is,
    // so this does not repeat however fast purges come), without the copy
    // it found before the purge to revalidate or stand in for an error, if
    // the purge removed that.
    let got = match &head {
        Head::Shared(head) => Some(&head.object),
        Head::Revalidated(obj, ..) => Some(obj),
        _ => None,
    };
    if collapsed && !miss.refetched && got.is_some_and(|obj| predates_a_purge(cx, obj)) {
        cx.engine.flights.forget_flight(&joined.flight);
        let purges = &cx.engine.purges;
        let stale = miss.stale.filter(|(_, o)| purges.check(&cx.site.id, o) != crate::purge::Verdict::Invalid);
        return Box::pin(fetch(cx, Miss { stale, refetched: true, ..miss }, false, distrust)).await;
    }
    match head {
        // Joined a body that outgrew the largest object stored after its
        // start left the window: this request fetches for itself.
        Head::Shared(_) if collapsed && !joined.flight.serves_from(0) => {
            let alone = Miss { outcome: Outcome::Pass, ..miss };
            Box::pin(fetch(cx, alone, true, distrust)).await
        }
        Head::Shared(head) => shared(cx, miss.outcome, &joined, head),
        Head::Revalidated(_, _, false) if collapsed => {
            let alone = Miss { outcome: Outcome::Pass, ..miss };
            Box::pin(fetch(cx, alone, true, distrust)).await
        }
        Head::Revalidated(obj, withheld, _) => {
            let obj = as_leader_sees(&obj, &withheld, collapsed);
            let now = cx.engine.clock.now();
            let ttl = Some(obj.timing.ttl_seconds(now));
            let status = CacheStatus {
                fwd_status: Some(304),
                stored: true,
                ttl,
                collapsed,
                ..CacheStatus::new(Outcome::Revalidated)
            };
            Some(represent::serve(cx, joined.flight.key, obj, status, now).await)
        }
        Head::Pass(why) => match joined.pass {
            Some(rx) => Some(match rx.await {
                Ok(resp) => passed_response(cx, resp, Some(why)),
                Err(_) => failed(&cx.engine, Error::internal("a passed response", "the fetch dropped it")),
            }),
            // Not shareable: this request fetches for itself.
            None => {
                let alone = Miss { outcome: Outcome::Pass, ..miss };
                Box::pin(fetch(cx, alone, true, distrust)).await
            }
        },
        Head::Failed(error) => Some(fail_over(cx, miss, error, collapsed, distrust).await),
        Head::Pending => Some(failed(&cx.engine, Error::internal("a fetch", "it ended without an answer"))),
    }
}

/// A shared response, streamed as it arrives; `None` when it is another
/// variant than this request's.
fn shared(cx: &Ctx, outcome: Outcome, joined: &Joined, head: Arc<SharedHead>) -> Option<Answer> {
    let collapsed = joined.collapsed();
    if collapsed && !head.vary.is_empty() && cx.rkey.variant(&head.vary, &cx.headers) != head.object_key {
        return None;
    }
    let engine = &cx.engine;
    let now = engine.clock.now();
    let obj = &as_leader_sees(&head.object, &head.withheld, collapsed);
    let status = CacheStatus {
        fwd_status: Some(obj.status.as_u16()),
        stored: head.storing,
        ttl: head.storing.then(|| obj.timing.ttl_seconds(now)),
        collapsed,
        detail: head.detail,
        partitioned: cx.partitioned,
        ..CacheStatus::new(outcome)
    };
    // A reader that falls behind reads stored chunks, which can go missing.
    let large = head.storing && head.len.is_none_or(|l| l > crate::store::CHUNK_SIZE as u64);
    let refill =
        large.then(|| Refill::new(cx, obj, head.len, Some((head.object_key, head.generation)))).flatten().map(Box::new);
    let flight = Arc::clone(&joined.flight);
    let source = BodySource::Flight { store: engine.store.clone(), flight, head: Arc::clone(&head), refill };
    match represent::choose(cx, obj, head.len) {
        Choice::Stored { vary } => {
            let coding = vary.then(|| (Coding::of(&obj.headers).unwrap_or(Coding::Identity), false));
            let status = CacheStatus { coding, ..status };
            let header = status.header(&engine.node, head.upstream_status.as_ref());
            let mut resp = object_response(&cx.site, &engine.rules, &cx.method, &cx.headers, obj, source, now, header);
            if vary {
                represent::add_vary(resp.headers_mut());
            }
            Some((resp, status))
        }
        Choice::Made(to) => {
            // Recoded as it streams: the whole body, since the bytes of a
            // range of the made coding are not known before it is made.
            let status = CacheStatus { coding: Some((to, true)), ..status };
            let header = status.header(&engine.node, head.upstream_status.as_ref());
            let made = StoredObject { headers: represent::made_headers(&obj.headers, to), ..(**obj).clone() };
            let mut req = http::HeaderMap::clone(&cx.headers);
            req.remove(http::header::RANGE);
            let mut resp = object_response(&cx.site, &engine.rules, &cx.method, &req, &made, source, now, header);
            if resp.status() == http::StatusCode::OK {
                represent::without_length(&mut resp);
                if cx.method != http::Method::HEAD {
                    let from = Coding::of(&obj.headers).unwrap_or(Coding::Identity);
                    let body = std::mem::replace(resp.body_mut(), super::respond::empty());
                    *resp.body_mut() = represent::recoded(body, from, to, head.len, cx.site.cache.max_object_size);
                }
            }
            Some((resp, status))
        }
    }
}

/// The upstream failed: a stale copy stands in when it may (stale-if-error,
/// or cut off from the control plane), otherwise the error.
async fn fail_over(cx: &Ctx, miss: Miss, error: Error, collapsed: bool, distrust: bool) -> Answer {
    let now = cx.engine.clock.now();
    if let Some((key, obj)) = miss.stale.filter(|(_, o)| o.timing.stands_in(now, distrust)) {
        let kind = if distrust { Outcome::StalePartitioned } else { Outcome::StaleIfError };
        let fwd_status = match &error {
            Error::Upstream(e) => match e.kind {
                UpstreamErrorKind::Status(code) => Some(code),
                _ => None,
            },
            _ => None,
        };
        let ttl = Some(obj.timing.ttl_seconds(now));
        let status = CacheStatus { fwd_status, ttl, collapsed, ..CacheStatus::new(kind) };
        return represent::serve(cx, key, obj, status, now).await;
    }
    let mut answer = failed(&cx.engine, error);
    answer.1.collapsed = collapsed;
    answer.1.partitioned = cx.partitioned;
    answer
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
