//! One client connection: its timers, the I/O wrapper that feeds them, and
//! the task that drives hyper until the connection ends.
//!
//! An HTTP/1 connection that idles is parked: hyper's connection, with its
//! buffers and the box for a request's future, is dropped, and the task
//! keeps only the socket, waiting for it to turn readable. The next bytes
//! start a new hyper connection on the same socket. To let go of hyper at
//! a clean point, the I/O wrapper answers hyper's next read with an end of
//! stream, and only when no request is in progress, nothing waits to be
//! written, the request stream stands between two heads and the socket
//! has nothing to read. hyper then ends the connection as a client's close
//! would, and its shutdown of the socket is not passed on.
//!
//! Timeouts follow the connection's state rather than hyper's single header
//! timer (which also runs while a keep-alive connection idles):
//! - waiting for a request head (from accept, or from the first byte of a
//!   later one): `header_read_timeout` — a client that connects and sends
//!   nothing, or sends a byte at a time, is cut off;
//! - idle between requests: `idle_timeout`;
//! - a write the client has not taken for `send_timeout`: the connection is
//!   dropped, so a reader that stopped holds nothing. Once a write has
//!   waited, the time writes wait adds up until the client has taken
//!   `send_min_rate` × `send_timeout` bytes, so one that takes a byte now
//!   and then is dropped too (time with nothing waiting to be written, the
//!   origin's pauses say, does not count);
//! - a request in progress: no client timer (upstream timeouts apply).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use outpost_config::Limits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::h1::{Framing, Tracker};
use crate::sendfile::{FileQueue, SendFile, is_stand_in};
use crate::{Body, BoxError, Conn, Errands, Handler, RecvBody};

mod direct;
pub(crate) mod http2;
mod interim;

pub use direct::Fields;
pub use interim::Interim;
pub(crate) use interim::Stream;
use interim::{LazySlot, Slot};

/// What one connection's parts share.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// When the connection was accepted. The times below are in ms of
    /// the kernel's coarse monotonic clock ([`now_ms`]).
    pub(crate) accepted: Instant,
    /// Requests being answered.
    active: AtomicUsize,
    /// When (+1; 0 = none) the request head being waited for was first
    /// waited for: at accept, or at the first byte of a later head.
    head_started: AtomicU64,
    /// Part of the next HTTP/1 head came while a request was answered: its
    /// time to come whole starts when that answer ends.
    head_pending: AtomicBool,
    /// When the connection last became idle.
    idle_since: AtomicU64,
    /// When (+1; 0 = none) a write began to wait for the client to read.
    write_blocked: AtomicU64,
    /// How long writes waited before, since the client last took
    /// `send_min_rate` × `send_timeout` bytes (ms).
    write_waited: AtomicU64,
    /// HTTP/1 heads' framing, in order, for the service to take.
    framing: Mutex<VecDeque<Framing>>,
    /// The HTTP/1 stream could not be followed: refuse what follows.
    lost: AtomicBool,
    /// Asks the I/O wrapper to end hyper's connection at its next read.
    park: AtomicBool,
    /// Cancelled when the connection must close: when the server shuts
    /// down (it is a child of the server's token) or evicts it to make
    /// room for a new one, which [`ConnState::evicting`] tells apart. One
    /// token, so a connection waiting for its next request watches one.
    pub(crate) close: CancellationToken,
    pub(crate) evicting: AtomicBool,
    /// Interim responses of the HTTP/1 request hyper is answering; made
    /// at the first request hyper reads.
    interim: LazySlot,
}

/// The kernel's coarse monotonic clock, in ms: one tick behind at most (a
/// few ms), which the connection's timers, in seconds, do not notice, and
/// a fraction of the cost of a precise read, which every request made
/// twice.
fn now_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (t.tv_sec as u64) * 1000 + (t.tv_nsec as u64) / 1_000_000
}

impl ConnState {
    /// A connection of the server whose shutdown is `shutdown`.
    pub(crate) fn new(accepted: Instant, shutdown: &CancellationToken) -> ConnState {
        let at = now_ms();
        ConnState {
            accepted,
            active: AtomicUsize::new(0),
            head_started: AtomicU64::new(at + 1),
            head_pending: AtomicBool::new(false),
            idle_since: AtomicU64::new(at),
            write_blocked: AtomicU64::new(0),
            write_waited: AtomicU64::new(0),
            framing: Mutex::new(VecDeque::new()),
            lost: AtomicBool::new(false),
            park: AtomicBool::new(false),
            close: shutdown.child_token(),
            evicting: AtomicBool::new(false),
            interim: LazySlot::default(),
        }
    }

    /// When this connection last did anything, if it has no request in
    /// progress (only such a connection may be closed to make room). An
    /// answer whose body hyper has taken whole but not yet written (one
    /// frame of many megabytes) is still in progress while its write waits.
    pub(crate) fn idle_since(&self) -> Option<u64> {
        if self.active.load(Ordering::Acquire) != 0
            || self.evicting.load(Ordering::Acquire)
            || self.write_blocked.load(Ordering::Acquire) != 0
        {
            return None;
        }
        match self.head_started.load(Ordering::Acquire) {
            0 => Some(self.idle_since.load(Ordering::Acquire)),
            h => Some(h - 1),
        }
    }

    /// The framing of the HTTP/1 request just parsed.
    fn next_framing(&self) -> Framing {
        if self.lost.load(Ordering::Acquire) {
            return Framing::Unreadable;
        }
        let f = self.framing.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        // The tracker sees every byte before hyper does; a request it did
        // not see the head of means it lost the stream.
        let f = f.unwrap_or(Framing::Unreadable);
        if f == Framing::Unreadable {
            self.lost.store(true, Ordering::Release);
        }
        f
    }

    /// The HTTP/1 request `opened` in the interim slot (if any) has its
    /// answer, or will have none: nothing more is queued for it.
    fn answered(&self, opened: Option<u64>) {
        if let Some(id) = opened
            && let Some(slot) = self.interim.get()
        {
            slot.close(id);
        }
    }

    /// A request is no longer in progress: answered, or dropped unanswered.
    fn finished(&self) {
        let now = now_ms();
        self.idle_since.store(now, Ordering::Release);
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1
            && self.head_pending.load(Ordering::Acquire)
            && self.head_pending.swap(false, Ordering::AcqRel)
        {
            let _ = self.head_started.compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Why [`ConnState::close`] was cancelled.
    fn closed_why(&self) -> Closed {
        if self.evicting.load(Ordering::Acquire) { Closed::Evicted } else { Closed::Shutdown }
    }

    /// Whether the connection has idled for `after` with nothing in
    /// progress: no request, no head begun, no write the client has not
    /// taken, a stream still followed.
    fn park_due(&self, after: Duration) -> bool {
        self.active.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == 0
            && self.write_blocked.load(Ordering::Acquire) == 0
            && !self.lost.load(Ordering::Acquire)
            && now_ms().saturating_sub(self.idle_since.load(Ordering::Acquire)) >= after.as_millis() as u64
    }
}

/// A connection's byte stream: cleartext TCP can also send from files.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The socket, when bytes written to it reach the client as they are.
    fn cleartext(&self) -> Option<&tokio::net::TcpStream> {
        None
    }

    /// The socket underneath.
    fn socket(&self) -> &tokio::net::TcpStream;
}

impl Transport for tokio::net::TcpStream {
    fn cleartext(&self) -> Option<&tokio::net::TcpStream> {
        Some(self)
    }

    fn socket(&self) -> &tokio::net::TcpStream {
        self
    }
}

impl Transport for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn socket(&self) -> &tokio::net::TcpStream {
        self.get_ref().0
    }
}

/// Marks head and write progress as bytes pass, follows HTTP/1 framing, and
/// sends file ranges in place of their stand-ins ([`crate::sendfile`]).
struct TrackedIo<S> {
    inner: S,
    state: Arc<ConnState>,
    tracker: Tracker,
    found: VecDeque<Framing>,
    /// Set on cleartext connections.
    files: Option<Arc<FileQueue>>,
    /// Told how long after accept the first response byte left.
    first_byte: Option<Box<dyn FnOnce(Duration) + Send>>,
    /// Bytes read to tell HTTP/2 from HTTP/1, given to hyper first.
    replay: Bytes,
    /// hyper was handed an end of stream to park the connection.
    parked: bool,
    /// Every byte given to be written has been flushed since (hyper
    /// flushes its own buffer before it asks for a flush): what is
    /// written next starts where nothing was cut ([`interim`]).
    clean: bool,
    /// Interim responses taken from [`ConnState::interim`] and not yet
    /// all written: written before anything else.
    owed: Bytes,
    /// The flush after the last of `owed` has not finished.
    unflushed: bool,
    /// Counts the interim responses taken: the upstream's, and the
    /// handler's own early hints.
    forwarded: metrics::Counter,
    hints: metrics::Counter,
    /// The connection speaks HTTP/2: bytes between requests start no head.
    http2: bool,
    /// Bytes the client has taken since a write began to wait, when one
    /// has (and the clock of waits runs), and how many stop that clock
    /// (`send_min_rate` × `send_timeout`).
    taken: Option<u64>,
    min_take: u64,
}

impl<S: Transport> TrackedIo<S> {
    /// At hyper's read: takes the interim responses queued for the request
    /// hyper is answering when they may go now, and writes what is owed.
    fn interim(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(slot) = self.state.interim.get() {
            slot.watch(cx);
        }
        match self.poll_owed(cx) {
            Poll::Ready(r) => r,
            // Written before anything else; hyper's next read or write
            // goes on with it.
            Poll::Pending => Ok(()),
        }
    }

    fn take_interim(&mut self) {
        let state = &*self.state;
        let Some(slot) = state.interim.get() else { return };
        let free = self.clean && self.owed.is_empty();
        // At most the request's own answer is in progress (none once hyper
        // has dropped a body it took whole, before its first write).
        if let Some((heads, n)) = slot.take(|| free && state.active.load(Ordering::Acquire) <= 1) {
            self.forwarded.increment(n.upstream);
            self.hints.increment(n.own);
            self.owed = heads;
        }
    }

    /// Writes what is owed of interim responses, and what may be taken
    /// of those queued: ready once none is owed.
    fn poll_owed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.owed.is_empty() {
                if self.unflushed {
                    // Records of the last ones still to push (TLS).
                    self.unflushed = Pin::new(&mut self.inner).poll_flush(cx).is_pending();
                }
                if !self.state.interim.get().is_some_and(Slot::waiting) {
                    return Poll::Ready(Ok(()));
                }
                self.take_interim();
                if self.owed.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
            let before = self.owed.len();
            let r = interim::poll_owed(&mut self.inner, &mut self.owed, cx);
            // A client that does not take them is timed as for any write.
            self.wrote(&r, (before - self.owed.len()) as u64);
            self.unflushed = !std::task::ready!(r)?;
        }
    }

    /// Before a write of hyper's (or of an answer given at once): the
    /// interim responses that may go first go, and the request answered
    /// last has had its chance ([`interim::Slot::retire`]).
    fn before_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_owed(cx))?;
        if let Some(slot) = self.state.interim.get() {
            slot.retire();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: Transport> AsyncRead for TrackedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.interim(cx)?;
        let before = buf.filled().len();
        let r = if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay.split_to(n));
            Poll::Ready(Ok(()))
        } else {
            let parking = self.state.park.load(Ordering::Acquire) && self.tracker.at_boundary();
            let r = Pin::new(&mut self.inner).poll_read(cx, buf);
            if parking && r.is_pending() {
                // Between heads with nothing to read: an end of stream
                // ends hyper's connection as a client's close would.
                self.parked = true;
                return Poll::Ready(Ok(()));
            }
            r
        };
        if buf.filled().len() > before {
            let this = &mut *self;
            if this.state.park.load(Ordering::Acquire) {
                this.state.park.store(false, Ordering::Release);
            }
            // A byte between HTTP/1 requests starts the next head. Not so
            // on HTTP/2 (its framing untracked): a client's PING or
            // WINDOW_UPDATE after its last answer is no request, and its
            // idle connection is left to `idle_timeout`.
            if this.state.active.load(Ordering::Acquire) == 0 && !this.http2 {
                let now = now_ms() + 1;
                let _ = this.state.head_started.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
            }
            if !this.tracker.is_stopped() {
                this.tracker.feed(&buf.filled()[before..], &mut this.found);
                if !this.found.is_empty() {
                    let mut q = this.state.framing.lock().unwrap_or_else(|p| p.into_inner());
                    q.extend(this.found.drain(..));
                }
                // Pipelined: the next head began during an answer. Its
                // header timeout starts when the answer ends, or a client
                // could dribble heads under the idle timeout alone.
                if this.state.active.load(Ordering::Acquire) != 0 {
                    this.state.head_pending.store(this.tracker.mid_head(), Ordering::Release);
                }
            }
        }
        r
    }
}

impl<S: Transport> TrackedIo<S> {
    /// Writes `bufs`, or, when stand-in bytes come first, the file range
    /// they stand for; bytes before a stand-in go in a write of their own,
    /// sent at once. (Held back with `MSG_MORE` for the file's first
    /// segment, they cost 1.1 to 5 times the CPU per hit on loopback under
    /// BBR, which then paces the whole response by timer: see "How they
    /// are sent" in docs/architecture.md.)
    fn poll_write_parts(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let (Some(files), Some(tcp)) = (&self.files, self.inner.cleartext()) else {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        };
        match bufs.iter().position(|b| is_stand_in(b)) {
            None => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            Some(0) => files.poll_send(tcp, cx, &bufs[0]),
            Some(i) => Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs[..i]),
        }
    }
}

impl<S: AsyncWrite + Unpin> TrackedIo<S> {
    /// Notes the connection's first response byte.
    fn sent(&mut self, r: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r
            && *n > 0
            && let Some(tell) = self.first_byte.take()
        {
            tell(self.state.accepted.elapsed());
        }
        let n = match r {
            Poll::Ready(Ok(n)) => *n as u64,
            _ => 0,
        };
        self.wrote(r, n);
    }

    /// Notes whether the client is taking what is written (`n` bytes of
    /// it). The time writes wait adds up from the first that waits until
    /// the client has taken `min_take` bytes since; a write that goes
    /// through pauses it (nothing waits), one that waits resumes it.
    fn wrote<T>(&mut self, r: &Poll<io::Result<T>>, n: u64) {
        let state = &*self.state;
        let blocked = state.write_blocked.load(Ordering::Acquire);
        match r {
            Poll::Pending => {
                if blocked == 0 {
                    state.write_blocked.store(now_ms() + 1, Ordering::Release);
                    self.taken.get_or_insert(0);
                }
            }
            Poll::Ready(Err(_)) => {
                state.write_blocked.store(0, Ordering::Release);
                state.write_waited.store(0, Ordering::Release);
                self.taken = None;
            }
            Poll::Ready(Ok(_)) => {
                let Some(taken) = self.taken.as_mut() else { return };
                *taken += n;
                if *taken >= self.min_take {
                    self.taken = None;
                    state.write_waited.store(0, Ordering::Release);
                } else if blocked != 0 {
                    let waited = now_ms().saturating_sub(blocked - 1);
                    state.write_waited.fetch_add(waited, Ordering::AcqRel);
                }
                if blocked != 0 {
                    state.write_blocked.store(0, Ordering::Release);
                }
            }
        }
    }
}

impl<S: Transport> AsyncWrite for TrackedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.before_write(cx))?;
        self.clean = false;
        let r = self.poll_write_parts(cx, &[io::IoSlice::new(buf)]);
        self.sent(&r);
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_owed(cx))?;
        // Every byte given has been written (hyper flushes its own
        // buffer before it asks for this).
        self.clean = true;
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(&r, 0);
        r
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parked {
            // hyper ends a parked connection; the client keeps it.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.before_write(cx))?;
        self.clean = false;
        let r = self.poll_write_parts(cx, bufs);
        self.sent(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that marks its request finished when dropped.
struct Tracked {
    inner: Body,
    state: Arc<ConnState>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.state.finished();
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// hyper's limit on request header fields when none is set.
const HYPER_MAX_HEADERS: u32 = 100;

fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut h1 = http1::Builder::new();
    h1
        // Body frames queued, never copied: `sendfile` relies on it.
        .writev(true)
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size((limits.max_header_bytes as usize).max(8192));
    // hyper's own limit is 100 headers, kept on the stack uninitialised; a
    // limit set explicitly costs filling an array of that size per request.
    if limits.max_headers != HYPER_MAX_HEADERS {
        h1.max_headers(limits.max_headers as usize);
    }
    h1
}

/// The HTTP/2 connection preface (RFC 9113 §3.4): a cleartext connection
/// that starts with it speaks HTTP/2 with prior knowledge.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the first bytes of a connection until they show whether it speaks
/// HTTP/2 (the preface) or HTTP/1 (anything else). What was read is given
/// to hyper before the socket's bytes. `None`: the client closed first.
async fn sniff<S: Transport>(io: &mut TrackedIo<S>) -> io::Result<Option<bool>> {
    use tokio::io::AsyncReadExt;
    let mut got = bytes::BytesMut::with_capacity(1024);
    let h2 = loop {
        if io.inner.read_buf(&mut got).await? == 0 {
            return Ok(None);
        }
        let n = got.len().min(PREFACE.len());
        if got[..n] != PREFACE[..n] {
            break false;
        }
        if n == PREFACE.len() {
            break true;
        }
    };
    io.replay = got.freeze();
    Ok(Some(h2))
}

/// How a connection's server (hyper's, or [`http2::Server`]) ended.
struct Served<E> {
    result: Result<(), E>,
    /// After the server's shutdown began.
    closing: bool,
}

/// A connection's timers and the server's signals, around whatever the
/// connection is doing.
struct Watch<'a> {
    peer: SocketAddr,
    state: &'a ConnState,
    limits: &'a Limits,
    ticker: tokio::time::Interval,
    tick: Duration,
}

/// The server's shutdown and the connection's eviction
/// ([`ConnState::close`]), as a future that can be waited on again and
/// again: each wait made anew would register with the token anew.
type Signals<'a> = tokio_util::sync::WaitForCancellationFuture<'a>;

impl<'a> Watch<'a> {
    fn signals(&self) -> Signals<'a> {
        self.state.close.cancelled()
    }

    /// Runs `fut` until it is done, or the connection must close.
    async fn around<F: Future>(&mut self, fut: F) -> Result<F::Output, Closed> {
        let signals = std::pin::pin!(self.signals());
        self.run(fut, signals, true, false).await.map(|r| r.expect("runs until done"))
    }

    /// [`Watch::around`] for a connection waiting for its next request,
    /// with `signals` waited on before: `Ok(None)` once it has idled for a
    /// tick, and may park.
    async fn idle<F: Future>(&mut self, fut: F, signals: Pin<&mut Signals<'_>>) -> Result<Option<F::Output>, Closed> {
        self.run(fut, signals, true, true).await
    }

    /// [`Watch::around`] for a response being written: the server's
    /// shutdown lets it finish.
    async fn finishing<F: Future>(&mut self, fut: F) -> Result<F::Output, Closed> {
        let signals = std::pin::pin!(self.signals());
        self.run(fut, signals, false, false).await.map(|r| r.expect("runs until done"))
    }

    async fn run<F: Future>(
        &mut self,
        fut: F,
        mut signals: Pin<&mut Signals<'_>>,
        shutdown: bool,
        park: bool,
    ) -> Result<Option<F::Output>, Closed> {
        tokio::pin!(fut);
        let mut watching = true;
        loop {
            tokio::select! {
                biased;
                r = &mut fut => return Ok(Some(r)),
                _ = signals.as_mut(), if watching => match self.state.closed_why() {
                    Closed::Shutdown if !shutdown => {
                        // The server shuts down while a response is
                        // written: it finishes. (A connection with a
                        // request in progress is never evicted.)
                        watching = false;
                    }
                    why => return Err(why),
                },
                _ = self.ticker.tick() => {
                    if let Some(why) = self.expired() {
                        return Err(why);
                    }
                    if park && self.state.park_due(self.tick) {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn expired(&self) -> Option<Closed> {
        let why = expired(self.state, self.limits)?;
        tracing::debug!(peer = %self.peer, reason = why.as_str(), "closing connection");
        Some(why)
    }

    /// Waits for `fut` on a parked connection: until it is done, the idle
    /// timeout (the one timer a parked connection has: it is idle, with no
    /// head begun and nothing to write), or the server's signals. No tick
    /// wakes it meanwhile.
    async fn parked<F: Future>(&mut self, fut: F) -> Result<F::Output, Closed> {
        let idle_since = self.state.idle_since.load(Ordering::Acquire);
        let left = (idle_since + self.limits.idle_timeout.as_millis() as u64).saturating_sub(now_ms());
        let deadline = Instant::now() + Duration::from_millis(left);
        let r = tokio::select! {
            r = fut => Ok(r),
            _ = self.state.close.cancelled() => Err(self.state.closed_why()),
            _ = tokio::time::sleep_until(deadline.into()) => {
                tracing::debug!(peer = %self.peer, reason = Closed::IdleTimeout.as_str(), "closing connection");
                Err(Closed::IdleTimeout)
            }
        };
        // Ticks missed while parked are not made up in a burst.
        self.ticker.reset();
        r
    }

    /// Parks the connection until `socket` has bytes to read (see
    /// [`Watch::parked`]), counted in `gauge` meanwhile.
    async fn park(&mut self, socket: &tokio::net::TcpStream, gauge: &metrics::Gauge) -> Result<(), Closed> {
        gauge.increment(1.0);
        let woke = self.parked(socket.readable()).await;
        gauge.decrement(1.0);
        woke?.map_err(|_| Closed::Ended)
    }

    /// Drives hyper's connection `served` until it ends or the connection
    /// must close. Shutdown is graceful: open exchanges finish. With
    /// `park`, a connection idle for a tick is asked to park.
    async fn serve<C, E>(&mut self, served: &mut C, graceful: fn(Pin<&mut C>), park: bool) -> Result<Served<E>, Closed>
    where
        C: Future<Output = Result<(), E>> + Unpin,
    {
        let mut closing = false;
        loop {
            tokio::select! {
                result = &mut *served => return Ok(Served { result, closing }),
                _ = self.state.close.cancelled(), if !closing => match self.state.closed_why() {
                    Closed::Shutdown => {
                        closing = true;
                        graceful(Pin::new(&mut *served));
                    }
                    why => return Err(why),
                },
                _ = self.ticker.tick() => {
                    if let Some(why) = self.expired() {
                        return Err(why);
                    }
                    if park && self.state.park_due(self.tick) {
                        // Seen at hyper's next read, which this loop's
                        // next poll of `served` makes.
                        self.state.park.store(true, Ordering::Release);
                    }
                }
            }
        }
    }
}

/// Why the server closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The connection ended on its own (client close, protocol error).
    Ended,
    HeaderTimeout,
    IdleTimeout,
    SendTimeout,
    Evicted,
    /// Refused as it came: its client's network had its
    /// `connections_per_network` open.
    NetworkCap,
    Shutdown,
}

impl Closed {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Closed::Ended => "ended",
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::SendTimeout => "send_timeout",
            Closed::Evicted => "evicted",
            Closed::NetworkCap => "network_cap",
            Closed::Shutdown => "shutdown",
        }
    }
}

/// The status hyper answered a request it could not parse with, if that is
/// how the connection ended.
fn unparsable(e: &hyper::Error) -> Option<http::StatusCode> {
    if e.is_parse_too_large() {
        Some(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
    } else if e.is_parse() {
        Some(http::StatusCode::BAD_REQUEST)
    } else {
        None
    }
}

/// What a server counts of its connections.
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    /// Connections parked now.
    pub(crate) parked: metrics::Gauge,
    /// HTTP/1 requests answered without hyper ([`direct`]).
    pub(crate) direct: metrics::Counter,
    /// The handler's own early hints sent (`103 Early Hints`: before a
    /// request went to hyper, or through [`Interim::early_hints`]).
    pub(crate) interim: metrics::Counter,
    /// Interim responses a handler passed on ([`Interim::send`]).
    pub(crate) forwarded: metrics::Counter,
}

impl Counters {
    /// The counters of the node called `name`.
    pub(crate) fn new(name: &str) -> Counters {
        Counters {
            parked: metrics::gauge!("outpost_connections_parked", "node" => name.to_string()),
            direct: metrics::counter!("outpost_requests_answered_directly_total", "node" => name.to_string()),
            interim: metrics::counter!("outpost_early_hints_sent_total", "node" => name.to_string()),
            forwarded: metrics::counter!("outpost_interim_forwarded_total", "node" => name.to_string()),
        }
    }
}

/// Serves one connection until it ends, a timer fires, or it is evicted.
/// `h2` says TLS negotiated HTTP/2 (no HTTP/1 stream to follow); a
/// connection that did not is HTTP/2 if it starts with the preface.
pub(crate) async fn serve_connection<H, S>(
    handler: Arc<H>,
    stream: S,
    conn: Conn,
    h2: bool,
    state: Arc<ConnState>,
    limits: Limits,
    counters: Counters,
) -> Closed
where
    H: Handler,
    S: Transport,
{
    let files = stream.cleartext().map(|_| Arc::new(FileQueue::default()));
    let sendfile = files.clone().map(SendFile::new);
    let sendfile_h1 = sendfile.clone();
    let told = Arc::clone(&handler);
    let watcher = Arc::clone(&handler);
    let secure = conn.secure;
    let first_byte: Box<dyn FnOnce(Duration) + Send> = Box::new(move |took| told.first_byte(secure, took));
    let mut io = TrackedIo {
        inner: stream,
        state: Arc::clone(&state),
        tracker: Tracker::new((limits.max_header_bytes as usize).max(8192), limits.max_headers as usize),
        found: VecDeque::new(),
        files,
        first_byte: Some(first_byte),
        replay: Bytes::new(),
        parked: false,
        clean: true,
        owed: Bytes::new(),
        unflushed: false,
        forwarded: counters.forwarded.clone(),
        hints: counters.interim.clone(),
        http2: false,
        taken: None,
        min_take: http2::Stall::of(&limits).min_take,
    };
    let svc_state = Arc::clone(&state);
    let for_service = conn.clone();
    // `h2`: an HTTP/2 stream's request, and its interim responses' way.
    let answer = move |req: Request<RecvBody>, h2: Option<Interim>| {
        let (handler, state) = (Arc::clone(&handler), Arc::clone(&svc_state));
        state.active.fetch_add(1, Ordering::AcqRel);
        state.head_started.store(0, Ordering::Release);
        let h1 = h2.is_none();
        let framing = if h1 { state.next_framing() } else { Framing::Clean };
        let mut conn = Conn { sendfile: sendfile.clone().filter(|_| h1), ..for_service.clone() };
        match framing.refusal() {
            None => {
                // An HTTP/1.0 client must never see a 1xx.
                conn.interim = h2.or_else(|| (req.version() == Version::HTTP_11).then(|| Slot::open(&state)));
                let opened = conn.interim.as_ref().and_then(Interim::id);
                let inner = Either::Left(handler.call(req, conn));
                Answering { inner, state: Some(state), close: false, opened }
            }
            Some(why) => {
                let inner = Either::Right(handler.refuse(req, conn, why));
                Answering { inner, state: Some(state), close: true, opened: None }
            }
        }
    };
    let tick = limits
        .header_read_timeout
        .min(limits.idle_timeout)
        .min(limits.send_timeout)
        .div_f64(4.0)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut watch =
        Watch { peer: conn.peer, state: &state, limits: &limits, ticker: tokio::time::interval(tick), tick };
    let h2 = h2
        || match watch.around(sniff(&mut io)).await {
            Ok(Ok(Some(h2))) => h2,
            Ok(Ok(None) | Err(_)) => return Closed::Ended,
            Err(why) => return why,
        };
    let report = |e: &hyper::Error| {
        tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
        if let Some(status) = unparsable(e) {
            watcher.unreadable(conn.clone(), status);
        }
    };
    if h2 {
        io.tracker.stop();
        io.http2 = true;
        let (counters, stall) = (counters.clone(), http2::Stall::of(&limits).shared_by(Arc::clone(&state)));
        let resets = Arc::new(http2::Resets::default());
        let counted = Arc::clone(&resets);
        let accept = move |req, respond| {
            let (req, interim, stream) = http2::request(req);
            let answering = answer(req, Some(interim));
            let resets = Arc::clone(&counted);
            tokio::spawn(http2::answer(answering, respond, stream, counters.clone(), stall.clone(), resets));
        };
        let mut served = Box::new(http2::Server::new(io, &limits, resets, accept));
        return match watch.serve(&mut *served, |c| c.graceful_shutdown(), false).await {
            Ok(Served { result, closing }) => {
                if let Err(e) = result {
                    tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
                }
                if closing { Closed::Shutdown } else { Closed::Ended }
            }
            Err(why) => why,
        };
    }
    let mut service = service_fn(move |req: Request<Incoming>| answer(req.map(RecvBody::hyper), None));
    let h1 = http1_builder(&limits);
    let mut direct = H::ANSWERS_NOW.then(direct::Direct::default);
    let direct_conn = Conn { sendfile: sendfile_h1, ..conn.clone() };
    loop {
        if let Some(direct) = &mut direct {
            // Requests answered at once, until one is hyper's.
            if let Err(why) = direct.turn(&watcher, &mut io, &mut watch, &direct_conn, &counters).await {
                return why;
            }
        }
        // hyper's connection, boxed: a parked connection's task keeps
        // only what it needs to wait.
        let mut served = Box::new(h1.serve_connection(TokioIo::new(io), service));
        let Served { result, closing } = match watch.serve(&mut *served, |c| c.graceful_shutdown(), true).await {
            Ok(s) => s,
            Err(why) => return why,
        };
        if let Err(e) = result {
            report(&e);
            return if closing { Closed::Shutdown } else { Closed::Ended };
        }
        let http1::Parts { io: parked_io, read_buf, service: parked_service, .. } = served.into_parts();
        (io, service) = (parked_io.into_inner(), parked_service);
        if closing || !io.parked {
            return if closing { Closed::Shutdown } else { Closed::Ended };
        }
        // Even empty, it holds hyper's read buffer.
        let unread = !read_buf.is_empty();
        drop(read_buf);
        if unread {
            // Parking waits for a boundary between heads, so hyper holds
            // nothing unread; if it did, those bytes would be lost.
            tracing::warn!(peer = %conn.peer, "a parked connection held unread bytes; closing it");
            return Closed::Ended;
        }
        if !state.framing.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            // Heads the framing follower saw that hyper never handed the
            // service: the two have read the stream differently, and the
            // verdicts left would fall to the wrong requests.
            tracing::warn!(peer = %conn.peer, "request framing out of step with hyper; closing the connection");
            return Closed::Ended;
        }
        io.parked = false;
        state.park.store(false, Ordering::Release);
        io.tracker.shrink();
        if let Err(why) = watch.park(io.inner.socket(), &counters.parked).await {
            return why;
        }
    }
}

/// The timer that has run out for this connection, if any.
fn expired(state: &ConnState, limits: &Limits) -> Option<Closed> {
    let now = now_ms();
    let past = |since: u64, limit: Duration| now.saturating_sub(since) > limit.as_millis() as u64;
    let blocked = state.write_blocked.load(Ordering::Acquire);
    let waited_before = state.write_waited.load(Ordering::Acquire);
    if blocked != 0 && past((blocked - 1).saturating_sub(waited_before), limits.send_timeout) {
        return Some(Closed::SendTimeout);
    }
    if state.active.load(Ordering::Acquire) > 0 {
        return None;
    }
    match state.head_started.load(Ordering::Acquire) {
        0 if past(state.idle_since.load(Ordering::Acquire), limits.idle_timeout) => Some(Closed::IdleTimeout),
        0 => None,
        h if past(h - 1, limits.header_read_timeout) => Some(Closed::HeaderTimeout),
        _ => None,
    }
}

pin_project_lite::pin_project! {
    /// A handler's answer, its body tracked for the connection's state
    /// (`close`: the connection closes after it). A future of its own, not
    /// an async block: hyper moves it for every request, and a block would
    /// hold the request and the connection a second time beside the
    /// handler's future. `opened`: the request's number in the
    /// connection's interim slot, closed when the answer comes.
    struct Answering<F> {
        #[pin]
        inner: F,
        state: Option<Arc<ConnState>>,
        close: bool,
        opened: Option<u64>,
    }

    impl<F> PinnedDrop for Answering<F> {
        /// Dropped before its answer came (an HTTP/2 stream the client
        /// reset, say): the request is over all the same, or its
        /// connection would never idle, time out or make room.
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(state) = this.state.take() {
                state.answered(*this.opened);
                state.finished();
            }
        }
    }
}

impl<F: Future<Output = Response<Body>>> Future for Answering<F> {
    type Output = Result<Response<Tracked>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.inner.poll(cx));
        if *this.close {
            resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let state = this.state.take().expect("an answer is polled to its end once");
        state.answered(*this.opened);
        let (parts, body) = resp.into_parts();
        Poll::Ready(Ok(Response::from_parts(parts, Tracked { inner: body, state })))
    }
}

/// The peer of a connection, for handlers.
pub(crate) fn conn(peer: SocketAddr, secure: bool, limits: &Limits) -> Conn {
    let errands = Errands::new(limits.fetches_per_connection);
    Conn { peer, secure, http3: false, sendfile: None, interim: None, errands }
}
