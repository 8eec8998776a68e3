//! Miss coalescing: one upstream fetch per key at a time, shared by every
//! request that wants it.
//!
//! The fetch runs in its own task, not in any client's, so a client that
//! goes away never cancels it for the others; if the task itself ends
//! without an answer (panic, shutdown), [`FlightGuard`]'s drop fails the
//! flight, so nobody waits forever.
//!
//! Waiters read the body as it arrives. The flight keeps the bytes its
//! slowest attached reader still needs, up to [`MAX_LAG`]. When a reader
//! falls that far behind, the fetch waits for it only while it keeps
//! reading, and only [`LAG_BUDGET`] in all over the fetch: a reader that
//! stops for [`STALL`], or still lags when the budget is spent, is detached.
//! A detached reader (or one that joins late) reads whole chunks from the
//! store, and its connection's send timeout ends it if it never reads again.
//! A body that outgrows the largest object stored ([`Flight::unstore`])
//! leaves the map: a request that comes after its start has left the
//! window fetches on its own instead of joining.
//! So a client that stops reading costs the others at most [`STALL`], a
//! large body is never held whole, and no client waits for all of it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::HeaderName;
use tokio::sync::watch;

use outpost_net::Interim;

use crate::error::Error;
use crate::key::Key;
use crate::store::{BodyRef, CHUNK_SIZE, Store, StoredObject};

/// Most bytes held for slow readers. A reader further behind than this
/// reads from the store; behind a body that outgrew the store, it is
/// finished from upstream by range under a strong validator (or gets an
/// error); behind a body never stored, it gets an error.
const MAX_LAG: u64 = 8 << 20;
/// Bytes kept behind the stored point even when no reader needs them: a
/// chunk just handed to the store may not be readable until its disk write
/// lands, and readers that are about to start (or join late) begin behind.
const STORE_SETTLE: u64 = 2 << 20;
/// A reader `MAX_LAG` behind that has not asked for more in this long is
/// detached: it has stopped reading, and the fetch goes on without it.
const STALL: Duration = Duration::from_millis(500);
/// The most the fetch waits, over its whole body, for readers `MAX_LAG`
/// behind; once spent, lagging readers are detached.
const LAG_BUDGET: Duration = Duration::from_secs(2);

/// The head of a shared response.
#[derive(Debug)]
pub(crate) struct SharedHead {
    /// The object as it is being stored (its body field is not yet final).
    pub object: Arc<StoredObject>,
    /// Where it will be stored.
    pub object_key: Key,
    /// `Vary` names: a waiter whose variant differs must not use it.
    pub vary: Vec<HeaderName>,
    /// Content length, when the upstream gave one.
    pub len: Option<u64>,
    /// Will be stored (false for shared error pages).
    pub storing: bool,
    /// Why not, when not; or how, when the lifetime was guessed.
    pub detail: Option<crate::cache_status::Detail>,
    /// The upstream's own `Cache-Status`, to append to.
    pub upstream_status: Option<http::HeaderValue>,
    /// Generation of the body chunks being written.
    pub generation: u64,
    /// Fields kept out of the stored copy (qualified `no-cache` or
    /// `private`, such as `Set-Cookie`): only the request that made the
    /// fetch gets them.
    pub withheld: http::HeaderMap,
}

/// What a flight ended in, as a waiter sees it.
#[derive(Debug, Clone)]
pub(crate) enum Head {
    Pending,
    /// A response to stream (and, usually, store).
    Shared(Arc<SharedHead>),
    /// The stored copy was revalidated (304) and refreshed; the fields kept
    /// out of it go to the request that made the fetch only. Not shared
    /// (`false`: the 304 made the copy one user's, `private` or asked with
    /// credentials): only that request is answered with it, and everyone
    /// else fetches alone, as for [`Head::Pass`].
    Revalidated(Arc<StoredObject>, Arc<http::HeaderMap>, bool),
    /// Not shareable (the reason): the leader streams it; everyone else
    /// fetches alone.
    Pass(crate::cache_status::Detail),
    /// No response: waiters serve stale if they may, or an error.
    Failed(Error),
}

#[derive(Debug, Default)]
struct BodyState {
    frames: VecDeque<(u64, Bytes)>,
    received: u64,
    /// First byte still in `frames`.
    window_start: u64,
    /// Bytes already readable from the store as whole chunks.
    stored_through: u64,
    /// The body outgrew the largest object stored: its head said it would
    /// be stored, but nothing behind the window can be read from the store
    /// any more.
    unstored: bool,
    done: Option<Result<(), String>>,
    /// Every attached reader, by id: where it is, and when it last asked
    /// for more.
    readers: std::collections::BTreeMap<u64, Position>,
    next_reader: u64,
    /// Time the fetch has spent waiting for lagging readers.
    waited: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Position {
    at: u64,
    moved: Instant,
}

impl BodyState {
    /// Drops frames that every connected reader has passed and that have
    /// settled in the store — never more than `MAX_LAG` behind.
    fn trim(&mut self) {
        let slowest = self.readers.values().map(|p| p.at).min().unwrap_or(u64::MAX);
        let settled = self.stored_through.saturating_sub(STORE_SETTLE);
        let keep_from = slowest.min(settled).max(self.received.saturating_sub(MAX_LAG));
        while let Some((start, f)) = self.frames.front() {
            if start + f.len() as u64 <= keep_from {
                self.frames.pop_front();
            } else {
                break;
            }
        }
        self.window_start = self.frames.front().map_or(self.received, |(s, _)| *s);
    }
}

/// Unregisters a reader when its response body is dropped.
struct Reader {
    flight: Arc<Flight>,
    id: u64,
}

impl Reader {
    fn at(&self, pos: u64) {
        let mut st = self.flight.lock();
        // A detached reader is not put back: it reads from the store.
        if let Some(p) = st.body.readers.get_mut(&self.id) {
            *p = Position { at: pos, moved: Instant::now() };
        }
        drop(st);
        self.flight.progressed.notify_one();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut st = self.flight.lock();
        st.body.readers.remove(&self.id);
        st.body.trim();
        drop(st);
        self.flight.progressed.notify_one();
    }
}

#[derive(Debug)]
struct State {
    head: Head,
    body: BodyState,
}

/// One in-flight fetch.
#[derive(Debug)]
pub(crate) struct Flight {
    pub key: Key,
    /// The URL fetched (normalised path and shaped query): a request for
    /// another URL whose key is the same never waits on this flight.
    url: Box<str>,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// Readers moved on: the fetch may be waiting for them.
    progressed: tokio::sync::Notify,
    interim: Mutex<Passing>,
}

impl Flight {
    fn new(key: Key, url: &str) -> Arc<Flight> {
        Arc::new(Flight {
            key,
            url: url.into(),
            state: Mutex::new(State { head: Head::Pending, body: BodyState::default() }),
            changed: watch::channel(0).0,
            progressed: tokio::sync::Notify::new(),
            interim: Mutex::default(),
        })
    }
}

/// The upstream's interim responses (1xx), passed on to every request
/// waiting on the flight that can be sent them, until the flight has its
/// head (no 1xx comes after it).
#[derive(Debug, Default)]
struct Passing {
    /// Those passed on so far, for requests that join later.
    seen: Vec<(http::StatusCode, http::HeaderMap)>,
    /// The waiting requests'. One answered since sends nothing.
    to: Vec<Interim>,
    /// The head came: nothing more is kept or passed on.
    over: bool,
}

impl Flight {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Waits for the head.
    pub(crate) async fn head(&self) -> Head {
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            let head = self.lock().head.clone();
            if !matches!(head, Head::Pending) {
                return head;
            }
            if rx.changed().await.is_err() {
                return Head::Failed(Error::internal("a fetch", "its flight ended without an answer"));
            }
        }
    }

    /// Passes the upstream's interim responses on to the request `interim`
    /// is for: those received so far at once, the others as they come.
    pub(crate) fn pass_interim_to(&self, interim: Interim) {
        let mut p = self.interim.lock().unwrap_or_else(|p| p.into_inner());
        if p.over {
            return;
        }
        for (status, fields) in &p.seen {
            interim.send(*status, fields);
        }
        p.to.push(interim);
    }

    /// An interim response from the upstream (the fields it may pass on),
    /// for every request waiting on the flight. No request is sent more
    /// than [`Interim::MOST`], nor one larger than [`Interim::MAX_BYTES`],
    /// nor a `100` or `101` (each hop's own): those are dropped here, once,
    /// not once per request.
    pub(crate) fn interim(&self, status: http::StatusCode, fields: http::HeaderMap) {
        let mut p = self.interim.lock().unwrap_or_else(|p| p.into_inner());
        let size: usize = fields.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        let own_hop = matches!(status, http::StatusCode::CONTINUE | http::StatusCode::SWITCHING_PROTOCOLS);
        if p.over || own_hop || p.seen.len() >= Interim::MOST || size > Interim::MAX_BYTES {
            return;
        }
        for to in &p.to {
            to.send(status, &fields);
        }
        p.seen.push((status, fields));
    }

    pub(crate) fn set_head(&self, head: Head) {
        self.lock().head = head;
        // What waits on the flight from now on gets no 1xx: the upstream
        // has answered.
        *self.interim.lock().unwrap_or_else(|p| p.into_inner()) = Passing { over: true, ..Passing::default() };
        self.bump();
    }

    /// Appends body bytes. `stored_through` says how much is in the store.
    pub(crate) fn push(&self, data: Bytes, stored_through: u64) {
        {
            let mut st = self.lock();
            let b = &mut st.body;
            let at = b.received;
            b.received += data.len() as u64;
            b.frames.push_back((at, data));
            b.stored_through = stored_through;
            b.trim();
        }
        self.bump();
    }

    /// The body will not be stored after all (it outgrew the largest
    /// object): readers behind the window can no longer read it from the
    /// store.
    pub(crate) fn unstore(&self) {
        {
            let mut st = self.lock();
            st.body.unstored = true;
            st.body.stored_through = 0;
            st.body.trim();
        }
        self.bump();
    }

    /// Can a reader starting at `pos` read the body from here: is `pos`
    /// still in the window, or stored?
    pub(crate) fn serves_from(&self, pos: u64) -> bool {
        let st = self.lock();
        let b = &st.body;
        pos >= b.window_start || (!b.unstored && pos < b.stored_through)
    }

    /// Waits while an attached reader is `MAX_LAG` behind and still
    /// reading, within the fetch's [`LAG_BUDGET`]; detaches readers that
    /// stopped (for [`STALL`]) or that still lag once the budget is spent.
    pub(crate) async fn wait_for_readers(&self) {
        loop {
            let wake = {
                let mut st = self.lock();
                let b = &mut st.body;
                let now = Instant::now();
                let received = b.received;
                let lagging = |p: &Position| received.saturating_sub(p.at) >= MAX_LAG;
                let out_of_budget = b.waited >= LAG_BUDGET;
                let before = b.readers.len();
                b.readers.retain(|_, p| !(lagging(p) && (out_of_budget || now.duration_since(p.moved) >= STALL)));
                if b.readers.len() != before {
                    b.trim();
                }
                // The earliest moment a lagging reader counts as stalled.
                match b.readers.values().filter(|p| lagging(p)).map(|p| p.moved + STALL).min() {
                    None => return,
                    Some(stall) => stall.min(now + LAG_BUDGET.saturating_sub(b.waited)),
                }
            };
            let started = Instant::now();
            let _ = tokio::time::timeout_at(wake.into(), self.progressed.notified()).await;
            self.lock().body.waited += started.elapsed();
        }
    }

    pub(crate) fn finish_body(&self, result: Result<(), String>) {
        self.lock().body.done = Some(result);
        self.bump();
    }

    /// The body bytes `start..end` (`end` None: to the end) as they arrive;
    /// bytes that left the window are read from `store` (the body's chunks
    /// under `object_key` / `generation`).
    pub(crate) fn body(
        self: &Arc<Self>,
        store: Store,
        head: &SharedHead,
        start: u64,
        end: Option<u64>,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let flight = Arc::clone(self);
        let (key, generation, storing) = (head.object_key, head.generation, head.storing);
        let limit = end.unwrap_or(u64::MAX);
        let rx = self.changed.subscribe();
        let reader = {
            let mut st = self.lock();
            let id = st.body.next_reader;
            st.body.next_reader += 1;
            st.body.readers.insert(id, Position { at: start, moved: Instant::now() });
            Reader { flight: Arc::clone(self), id }
        };
        futures_util::stream::unfold((start, rx, false, reader), move |(pos, mut rx, over, reader)| {
            let flight = Arc::clone(&flight);
            let store = store.clone();
            async move {
                if over {
                    return None;
                }
                reader.at(pos);
                // Each item, and whether the stream ends after it.
                let item = loop {
                    rx.borrow_and_update();
                    match flight.step(pos, limit, storing) {
                        Step::Yield(bytes) if !bytes.is_empty() => break Ok(bytes),
                        Step::Yield(_) | Step::Wait => {
                            if rx.changed().await.is_err() {
                                break Err(io::Error::other("the fetch ended without finishing the body"));
                            }
                        }
                        Step::FromStore(upto) => break read_stored(&store, key, generation, pos, upto).await,
                        Step::Done => return None,
                        // Not found, as a stored chunk gone missing is: a
                        // body with a strong validator is finished from
                        // upstream by range (`refill::resumable`).
                        Step::Behind => {
                            break Err(io::Error::new(
                                io::ErrorKind::NotFound,
                                "a reader fell too far behind the fetch",
                            ));
                        }
                        Step::Fail(msg) => break Err(io::Error::other(msg)),
                    }
                };
                Some(match item {
                    Ok(bytes) => {
                        let next = pos + bytes.len() as u64;
                        (Ok(bytes), (next, rx, false, reader))
                    }
                    Err(e) => (Err(e), (pos, rx, true, reader)),
                })
            }
        })
    }

    /// What a reader at `pos` (reading up to `limit`) does next.
    fn step(&self, pos: u64, limit: u64, storing: bool) -> Step {
        let st = self.lock();
        let b = &st.body;
        if pos >= limit {
            Step::Done
        } else if pos < b.window_start {
            if storing && !b.unstored && pos < b.stored_through {
                Step::FromStore(b.stored_through.min(limit))
            } else if b.unstored {
                Step::Behind
            } else {
                // Behind the store too (a store far behind, or a body not
                // stored): not fetched again beside the fetch still writing.
                Step::Fail("a reader fell too far behind the fetch".into())
            }
        } else if pos < b.received {
            let (fs, f) = b.frames.iter().rev().find(|(s, _)| *s <= pos).cloned().unwrap_or_default();
            let from = (pos - fs) as usize;
            let to = (f.len() as u64).min(limit.saturating_sub(fs)) as usize;
            Step::Yield(f.slice(from..to.max(from)))
        } else {
            match &b.done {
                Some(Ok(())) => Step::Done,
                Some(Err(e)) => Step::Fail(e.clone()),
                None => Step::Wait,
            }
        }
    }
}

/// A body reader's next move.
enum Step {
    /// Bytes from the window (possibly empty: wait for more).
    Yield(Bytes),
    /// The bytes have left the window: read the store up to here.
    FromStore(u64),
    /// The bytes have left the window, and the body outgrew the store.
    Behind,
    /// Nothing new yet.
    Wait,
    Done,
    Fail(String),
}

/// The next stored chunk of the body being fetched, from `pos` to at most `upto`.
async fn read_stored(store: &Store, key: Key, generation: u64, pos: u64, upto: u64) -> io::Result<Bytes> {
    let body = BodyRef::Chunked { len: upto, chunk_size: CHUNK_SIZE as u32, generation };
    let mut chunks = Box::pin(store.read(key, &body, pos, upto));
    match chunks.next().await {
        Some(Ok(bytes)) if !bytes.is_empty() => Ok(bytes),
        Some(Err(e)) => Err(e),
        _ => Err(io::Error::new(io::ErrorKind::NotFound, "stored chunk unreadable")),
    }
}

/// The fetches in flight, by key.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<Key, Arc<Flight>>>,
}

/// Either start the fetch or wait for the one already running.
#[derive(Debug)]
pub(crate) enum Join {
    Leader(FlightGuard),
    Waiter(Arc<Flight>),
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Arc<Flight>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub(crate) fn join(self: &Arc<Self>, key: Key, url: &str) -> Join {
        let Ok(join) = self.join_unless(key, url, || None::<std::convert::Infallible>);
        join
    }

    /// [`join`](Self::join), unless `stored` finds what a fetch for `key`
    /// stored after this request looked: such a fetch has left the map, and
    /// would otherwise be made again. `stored` runs under the map's lock,
    /// only when no fetch is in flight; a fetch stores its object before it
    /// leaves the map, so none can end unseen in between.
    ///
    /// A flight for another URL under the same key (two URLs crafted to
    /// share a hash) is not joined: the request leads a fetch of its own
    /// that nobody joins, so neither waits on the other's answer.
    pub(crate) fn join_unless<T>(
        self: &Arc<Self>,
        key: Key,
        url: &str,
        stored: impl FnOnce() -> Option<T>,
    ) -> Result<Join, T> {
        let mut map = self.lock();
        let taken = match map.get(&key) {
            Some(f) if *f.url == *url => return Ok(Join::Waiter(Arc::clone(f))),
            Some(_) => true,
            None => false,
        };
        if let Some(found) = stored() {
            return Err(found);
        }
        let flight = Flight::new(key, url);
        if taken {
            return Ok(Join::Leader(FlightGuard { flights: None, flight }));
        }
        map.insert(key, Arc::clone(&flight));
        Ok(Join::Leader(FlightGuard { flights: Some(Arc::clone(self)), flight }))
    }

    /// A flight nobody else can join (a request that must not share).
    pub(crate) fn private(&self, key: Key, url: &str) -> FlightGuard {
        FlightGuard { flights: None, flight: Flight::new(key, url) }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Takes the flight for `key` out of the map (what it got predates an
    /// invalidation): requests from now on start another; those waiting on
    /// it keep it.
    pub(crate) fn forget(&self, key: Key) {
        self.lock().remove(&key);
    }

    /// Takes `flight` out of the map, if it is still the one there.
    pub(crate) fn forget_flight(&self, flight: &Arc<Flight>) {
        let mut map = self.lock();
        if map.get(&flight.key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(&flight.key);
        }
    }
}

/// Held by the fetch task. Leaving the map (`close`) is what lets the next
/// request start a new fetch; dropping without an answer fails the flight.
#[derive(Debug)]
pub(crate) struct FlightGuard {
    flights: Option<Arc<Flights>>,
    pub flight: Arc<Flight>,
}

impl FlightGuard {
    /// Takes the flight out of the map: later requests see the store.
    pub(crate) fn close(&mut self) {
        if let Some(flights) = self.flights.take() {
            let mut map = flights.lock();
            if map.get(&self.flight.key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                map.remove(&self.flight.key);
            }
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.close();
        let mut st = self.flight.lock();
        let mut changed = false;
        if matches!(st.head, Head::Pending) {
            st.head = Head::Failed(Error::internal("a fetch", "it stopped before an answer"));
            changed = true;
        }
        if st.body.done.is_none() {
            st.body.done = Some(Err("the fetch stopped before the end of the body".into()));
            changed = true;
        }
        drop(st);
        if changed {
            self.flight.bump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_that_stored_and_ended_after_a_lookup_is_not_made_again() {
        let flights = Arc::new(Flights::default());
        let store = Mutex::new(None::<&str>);
        let stored = || *store.lock().unwrap();
        // A looks, misses and leads the fetch.
        assert!(stored().is_none());
        let Join::Leader(mut a) = flights.join(7, "/a") else { panic!("nothing was in flight") };
        // B looks and misses too; while A is in flight, B waits for it.
        assert!(stored().is_none());
        assert!(matches!(flights.join_unless(7, "/a", stored), Ok(Join::Waiter(_))));
        // C looks and misses; before C joins, A stores its object and ends.
        assert!(stored().is_none());
        *store.lock().unwrap() = Some("A's object");
        a.close();
        // C takes what A stored instead of fetching it again.
        assert!(matches!(flights.join_unless(7, "/a", stored), Err("A's object")));
        assert_eq!(flights.len(), 0, "no second fetch started");
        // With nothing stored, the next request leads a new fetch.
        *store.lock().unwrap() = None;
        assert!(matches!(flights.join_unless(7, "/a", stored), Ok(Join::Leader(_))));
    }

    /// Two URLs whose keys are the same (crafted to share a hash) never
    /// wait on each other's fetch: the second leads one nobody joins.
    #[test]
    fn a_request_for_another_url_under_the_same_key_does_not_wait_on_its_fetch() {
        let flights = Arc::new(Flights::default());
        let Join::Leader(_a) = flights.join(7, "/a") else { panic!("nothing was in flight") };
        let Join::Leader(b) = flights.join(7, "/b?crafted") else { panic!("waited on another URL's fetch") };
        assert!(b.flights.is_none(), "the other URL's fetch is private");
        assert_eq!(flights.len(), 1);
        let Join::Waiter(f) = flights.join(7, "/a") else { panic!("the same URL leads a second fetch") };
        assert_eq!(&*f.url, "/a");
        assert!(matches!(flights.join(7, "/b?crafted"), Join::Leader(_)), "nor does it wait on the private one");
    }
}
