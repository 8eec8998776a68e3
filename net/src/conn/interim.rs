//! Interim (1xx) responses for a request hyper holds on an HTTP/1
//! connection: an upstream's `103 Early Hints`, say, that arrives before
//! its final response, or the handler's own early hints.
//!
//! hyper's server cannot send a 1xx, but while it waits on a request's
//! answer it reads the connection to notice a close, and that read is the
//! connection's own I/O wrapper's. A handler queues interim responses in
//! the connection's [`Slot`] through its request's [`Interim`]; the slot
//! wakes the connection, and the wrapper writes them at hyper's next read.
//!
//! They are written only at a point where nothing can be cut in two:
//! - while the request that queued them waits for its answer, or at the
//!   answer's first write, before its bytes (the answer can come in the
//!   same turn of the connection as the interim responses, before hyper
//!   reads); that write is their last chance, and what is still queued
//!   after it is dropped, never written inside or after the answer;
//! - when it is the only request being answered (no earlier response is
//!   still being written);
//! - and when every byte given to be written has been flushed, so what
//!   goes next starts where no message was cut. hyper usually reads the
//!   next request only once the last answer is flushed, but not when that
//!   answer came before the request's body was read.
//!
//! hyper does not read while bytes a client pipelined wait in its buffer:
//! then a request's interim responses wait for its answer's first write.
//! Once taken, an interim response is written whole, before any other
//! byte; one the client does not take is timed as any write is. Only
//! HTTP/1.1 requests get them (an HTTP/1.0 client must never
//! see a 1xx), and only 1xx other than 100 and 101, which belong to one
//! hop each.
//!
//! An HTTP/2 or HTTP/3 stream's are queued in a [`Stream`] of its own,
//! which the stream's task sends ([`super::http2`], [`crate::quic`]), with
//! the same limits.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use http::StatusCode;
use http::header::{self, HeaderName, HeaderValue};
use tokio::io::AsyncWrite;

use super::ConnState;

/// Most interim responses queued for one request; more are dropped (an
/// upstream that sends them without end gets no further).
pub(crate) const MAX_PER_REQUEST: usize = 8;
/// Most bytes of interim responses queued for one request.
pub(crate) const MAX_BYTES: usize = 16 << 10;

/// A request's way to send interim responses before its answer: see the
/// [module](self). Cheap to clone; a clone kept past the request's answer
/// sends nothing.
#[derive(Clone)]
pub struct Interim(To);

#[derive(Clone)]
enum To {
    /// An HTTP/1 request hyper holds: queued in its connection's [`Slot`].
    H1 {
        /// The connection, whose [`Slot`] is [`ConnState::interim`].
        conn: Arc<ConnState>,
        /// The request's number on its connection.
        id: u64,
        /// The handler's own early hints went out before hyper read it.
        hinted: bool,
    },
    /// An HTTP/2 or HTTP/3 stream: queued for the stream's task, which
    /// sends them.
    Stream(Arc<Stream>),
}

impl std::fmt::Debug for Interim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            To::H1 { id, .. } => f.debug_struct("Interim").field("id", id).finish_non_exhaustive(),
            To::Stream(_) => f.write_str("Interim::Stream"),
        }
    }
}

impl Interim {
    /// Most interim responses one request is sent.
    pub const MOST: usize = MAX_PER_REQUEST;
    /// Most bytes of interim responses one request is sent.
    pub const MAX_BYTES: usize = MAX_BYTES;

    /// An HTTP/2 or HTTP/3 stream's: what it queues, its task sends.
    pub(crate) fn stream() -> (Interim, Arc<Stream>) {
        let stream = Arc::new(Stream::default());
        (Interim(To::Stream(Arc::clone(&stream))), stream)
    }

    /// An HTTP/1 request's number on its connection.
    pub(crate) fn id(&self) -> Option<u64> {
        match self.0 {
            To::H1 { id, .. } => Some(id),
            To::Stream(_) => None,
        }
    }

    /// Whether the request was sent the handler's own early hints already:
    /// those it wrote with [`crate::Fields::early_hints`] when the
    /// connection offered it the request first.
    pub fn hinted(&self) -> bool {
        matches!(self.0, To::H1 { hinted: true, .. })
    }

    /// Queues an interim response with `fields` (those that frame a
    /// message, `Content-Length`, `Transfer-Encoding` and `Connection`,
    /// are left out: a 1xx has no body, and says nothing of the
    /// connection). `false` when it will not be sent: not a 1xx this
    /// server passes on, the request answered already, or over
    /// [`MAX_PER_REQUEST`] or [`MAX_BYTES`].
    pub fn send<'a>(
        &self,
        status: StatusCode,
        fields: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    ) -> bool {
        if !status.is_informational() || matches!(status, StatusCode::CONTINUE | StatusCode::SWITCHING_PROTOCOLS) {
            return false;
        }
        self.queue(status, fields, Source::Upstream)
    }

    /// Queues the handler's own `103 Early Hints` with a `Link` field for
    /// each of `links`, as [`crate::Fields::early_hints`] does for a
    /// request the connection reads itself; counted as those are.
    pub fn early_hints<'a>(&self, links: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
        let fields = links.into_iter().map(|link| (&header::LINK, link));
        self.queue(StatusCode::EARLY_HINTS, fields, Source::Own)
    }

    fn queue<'a>(
        &self,
        status: StatusCode,
        fields: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
        source: Source,
    ) -> bool {
        let (conn, id) = match &self.0 {
            To::H1 { conn, id, .. } => (conn, *id),
            To::Stream(stream) => return stream.queue(status, fields, source),
        };
        let slot = conn.interim.slot();
        let mut q = slot.queue.lock().unwrap_or_else(|p| p.into_inner());
        if slot.open.load(Ordering::Acquire) != id {
            return false;
        }
        if q.id != id {
            *q = Queue { id, ..Queue::default() };
        }
        if q.count >= MAX_PER_REQUEST {
            return false;
        }
        let (start, room) = (q.bytes.len(), MAX_BYTES.saturating_sub(q.sent + q.bytes.len()));
        encode(&mut q.bytes, status, fields);
        if q.bytes.len() - start > room {
            q.bytes.truncate(start);
            return false;
        }
        q.count += 1;
        q.heads[source as usize] += 1;
        slot.waiting.store(true, Ordering::Release);
        drop(q);
        slot.waker.wake();
        true
    }
}

/// An interim response's head, with `fields` but those that frame a
/// message or speak of the connection.
pub(crate) fn encode<'a>(
    out: &mut Vec<u8>,
    status: StatusCode,
    fields: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in fields {
        if matches!(*name, header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION) {
            continue;
        }
        super::direct::line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Where an interim response comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    /// The upstream's, passed on.
    Upstream = 0,
    /// The handler's own early hints.
    Own = 1,
}

/// Interim responses taken to be written: the upstream's, and the
/// handler's own.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    pub(crate) upstream: u64,
    pub(crate) own: u64,
}

/// Interim responses queued for one request.
#[derive(Debug, Default)]
struct Queue {
    /// The request they are for.
    id: u64,
    bytes: Vec<u8>,
    /// Responses in `bytes`, by [`Source`].
    heads: [u64; 2],
    /// Responses queued for the request, taken or not.
    count: usize,
    /// Bytes of the request's already taken.
    sent: usize,
}

/// A connection's [`Slot`], made when it is first needed: a connection
/// whose requests are all answered at once carries only this.
#[derive(Debug, Default)]
pub(crate) struct LazySlot(std::sync::OnceLock<Box<Slot>>);

impl LazySlot {
    /// The slot, if it was made.
    pub(crate) fn get(&self) -> Option<&Slot> {
        self.0.get().map(|s| &**s)
    }

    /// The slot, made now if it was not.
    pub(crate) fn slot(&self) -> &Slot {
        self.0.get_or_init(|| Box::new(Slot::new()))
    }
}

/// One HTTP/1 connection's interim responses; see the [module](self).
#[derive(Debug)]
pub(crate) struct Slot {
    /// The request that may send interim responses now; 0: none.
    open: AtomicU64,
    /// The last request answered: what it queued goes before its answer.
    answered: AtomicU64,
    /// The last request's number.
    last: AtomicU64,
    /// Something is queued.
    waiting: AtomicBool,
    /// The next request hyper reads was sent the handler's early hints.
    hinted: AtomicBool,
    queue: Mutex<Queue>,
    /// The connection's task, woken when something is queued.
    waker: AtomicWaker,
}

impl Slot {
    pub(crate) fn new() -> Slot {
        Slot {
            open: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            last: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            hinted: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
        }
    }

    /// Opens `conn`'s slot to a request hyper has just read: until its
    /// answer, [`Interim::send`] queues.
    pub(crate) fn open(conn: &Arc<ConnState>) -> Interim {
        let slot = conn.interim.slot();
        let id = slot.last.fetch_add(1, Ordering::Relaxed) + 1;
        slot.open.store(id, Ordering::Release);
        let hinted = slot.hinted.swap(false, Ordering::AcqRel);
        Interim(To::H1 { conn: Arc::clone(conn), id, hinted })
    }

    /// The request handed to hyper next was sent the handler's early
    /// hints ([`Interim::hinted`]).
    pub(crate) fn hinted_next(&self) {
        self.hinted.store(true, Ordering::Release);
    }

    /// The request `id` has its answer: nothing more is queued for it
    /// (under the queue's lock, so no [`Interim::send`] is half done), and
    /// what is queued may go just before the answer's first byte.
    pub(crate) fn close(&self, id: u64) {
        let _q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if self.open.compare_exchange(id, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.answered.store(id, Ordering::Release);
        }
    }

    /// At hyper's write, once what could go before it has: the answered
    /// request had its one chance, and what it still has queued is
    /// dropped, never written later, inside or after its answer.
    pub(crate) fn retire(&self) {
        if self.answered.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.answered.store(0, Ordering::Release);
        if q.id != self.open.load(Ordering::Acquire) {
            q.bytes.clear();
            q.heads = [0; 2];
            self.waiting.store(false, Ordering::Release);
        }
    }

    /// Something is queued.
    pub(crate) fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire)
    }

    /// Called at each of hyper's reads: when a request is open, notes the
    /// task to wake (see [`Slot::take`]).
    pub(crate) fn watch(&self, cx: &Context<'_>) {
        if self.open.load(Ordering::Acquire) != 0 {
            self.waker.register(cx.waker());
        }
    }

    /// When something is queued and `free` (see the [module](self)), takes
    /// it to be written: the bytes, and how many responses they are. At a
    /// read, while the request waits for its answer; at the first write of
    /// its answer, what it queued after the last read (the answer can come
    /// in the same turn of the connection as the interim responses).
    pub(crate) fn take(&self, free: impl FnOnce() -> bool) -> Option<(Bytes, Taken)> {
        if !self.waiting.load(Ordering::Acquire) || !free() {
            return None;
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.waiting.store(false, Ordering::Release);
        let current = q.id == self.open.load(Ordering::Acquire) || q.id == self.answered.load(Ordering::Acquire);
        if !current || q.bytes.is_empty() {
            // Queued for a request whose answer has gone out since.
            q.bytes.clear();
            q.heads = [0; 2];
            return None;
        }
        q.sent += q.bytes.len();
        let [upstream, own] = std::mem::take(&mut q.heads);
        Some((Bytes::from(std::mem::take(&mut q.bytes)), Taken { upstream, own }))
    }
}

/// Interim responses queued for one HTTP/2 or HTTP/3 stream, which its
/// task sends ([`super::http2::answer`], [`crate::quic`]): the same limits as an HTTP/1 request's, in
/// HPACK's measure of fields (a name, a value and 32 bytes each).
#[derive(Debug, Default)]
pub(crate) struct Stream {
    /// Something is queued.
    waiting: AtomicBool,
    queue: Mutex<StreamQueue>,
    /// The stream's task, woken when something is queued.
    waker: AtomicWaker,
}

#[derive(Debug, Default)]
struct StreamQueue {
    /// The answer came: nothing more is queued.
    closed: bool,
    heads: Vec<(http::Response<()>, Source)>,
    /// Responses queued, sent or not.
    count: usize,
    bytes: usize,
}

impl Stream {
    fn queue<'a>(
        &self,
        status: StatusCode,
        fields: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
        source: Source,
    ) -> bool {
        let mut head = http::Response::new(());
        *head.status_mut() = status;
        for (name, value) in fields {
            if *name != header::CONTENT_LENGTH {
                head.headers_mut().append(name.clone(), value.clone());
            }
        }
        super::http2::strip_connection_fields(head.headers_mut());
        let size: usize = head.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum();
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.closed || q.count >= MAX_PER_REQUEST || q.bytes + size > MAX_BYTES {
            return false;
        }
        q.count += 1;
        q.bytes += size;
        q.heads.push((head, source));
        self.waiting.store(true, Ordering::Release);
        drop(q);
        self.waker.wake();
        true
    }

    /// The answer came: what is queued goes before it, nothing after.
    pub(crate) fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
    }

    /// Ready once something is queued; the task is woken when it is.
    pub(crate) fn poll_waiting(&self, cx: &Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.waiting.load(Ordering::Acquire) { Poll::Ready(()) } else { Poll::Pending }
    }

    /// What is queued, to be sent now; each counted in `counters` once
    /// sent ([`Stream::sent`]).
    pub(crate) fn take(&self) -> Vec<(http::Response<()>, Source)> {
        if !self.waiting.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.waiting.store(false, Ordering::Release);
        std::mem::take(&mut q.heads)
    }

    /// Counts an interim response sent.
    pub(crate) fn sent(source: Source, counters: &super::Counters) {
        match source {
            Source::Upstream => counters.forwarded.increment(1),
            Source::Own => counters.interim.increment(1),
        }
    }
}

/// Writes what is left of `owed` to `io`, then flushes it (over TLS,
/// pushes the records to the socket): ready once all of it is written,
/// with whether the flush is done too.
pub(crate) fn poll_owed<S: AsyncWrite + Unpin>(
    io: &mut S,
    owed: &mut Bytes,
    cx: &mut Context<'_>,
) -> Poll<io::Result<bool>> {
    while !owed.is_empty() {
        let n = std::task::ready!(Pin::new(&mut *io).poll_write(cx, owed))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        owed.advance(n);
    }
    Poll::Ready(Ok(Pin::new(io).poll_flush(cx).is_ready()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Arc<ConnState> {
        Arc::new(ConnState::new(std::time::Instant::now(), &tokio_util::sync::CancellationToken::new()))
    }

    fn take(conn: &ConnState) -> Option<(Bytes, Taken)> {
        conn.interim.slot().take(|| true)
    }

    #[test]
    fn only_the_open_request_queues_and_only_its_own_are_taken() {
        let conn = conn();
        let link = HeaderValue::from_static("</a.css>");
        let first = Slot::open(&conn);
        assert!(first.early_hints([&link]));
        conn.interim.slot().close(first.id().unwrap());
        assert!(!first.early_hints([&link]), "answered: nothing more is queued");
        let (bytes, _) = take(&conn).expect("what it queued before goes before its answer");
        assert_eq!(&bytes[..], b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n");
        assert!(!first.early_hints([&link]) && take(&conn).is_none());
        let stale = Slot::open(&conn);
        assert!(stale.early_hints([&link]));
        conn.interim.slot().close(stale.id().unwrap());
        let second = Slot::open(&conn);
        conn.interim.slot().close(second.id().unwrap());
        let second = Slot::open(&conn);
        assert_eq!(take(&conn), None, "what a request queued is never sent once a later one was answered");
        assert!(!first.early_hints([&link]), "an old handle sends nothing for the next request");
        let fields = [
            (header::LINK, HeaderValue::from_static("</b.js>")),
            (header::CONTENT_LENGTH, HeaderValue::from_static("5")),
            (header::TRANSFER_ENCODING, HeaderValue::from_static("chunked")),
            (header::CONNECTION, HeaderValue::from_static("close")),
        ];
        assert!(second.send(StatusCode::from_u16(104).unwrap(), fields.iter().map(|(n, v)| (n, v))));
        assert!(second.early_hints([&link]));
        let (bytes, taken) = take(&conn).unwrap();
        assert_eq!(
            &bytes[..],
            b"HTTP/1.1 104 \r\nlink: </b.js>\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n",
            "fields that frame a message or speak of the connection are left out"
        );
        assert_eq!(taken, Taken { upstream: 1, own: 1 });
        assert_eq!(take(&conn), None, "taken once");
        conn.interim.slot().close(second.id().unwrap());
        assert!(!conn.interim.slot().hinted.load(Ordering::Acquire));
        conn.interim.slot().hinted_next();
        assert!(Slot::open(&conn).hinted() && !Slot::open(&conn).hinted(), "told to the next request only");
    }

    #[test]
    fn what_an_answered_request_queued_goes_at_its_answers_first_write_or_never() {
        let conn = conn();
        let link = HeaderValue::from_static("</a.css>");
        let request = Slot::open(&conn);
        assert!(request.early_hints([&link]) && request.early_hints([&link]));
        conn.interim.slot().close(request.id().unwrap());
        // Its answer's first write: what may go first is taken, then the
        // request is retired.
        assert_eq!(take(&conn).map(|(_, n)| n.own), Some(2));
        conn.interim.slot().retire();
        let request = Slot::open(&conn);
        assert!(request.early_hints([&link]));
        conn.interim.slot().close(request.id().unwrap());
        // Not taken by its answer's first write (hyper still held bytes of
        // another): dropped, never written inside or after the answer.
        conn.interim.slot().retire();
        assert!(!conn.interim.slot().waiting());
        assert_eq!(take(&conn), None);
        // A request opened since keeps what it queued.
        let next = Slot::open(&conn);
        assert!(next.early_hints([&link]));
        conn.interim.slot().retire();
        assert!(take(&conn).is_some());
    }

    #[test]
    fn a_request_passes_on_a_bounded_number_of_1xx_and_never_100_or_101() {
        let conn = conn();
        let request = Slot::open(&conn);
        let none = || std::iter::empty::<(&HeaderName, &HeaderValue)>();
        for status in [100, 101, 200, 304] {
            assert!(!request.send(StatusCode::from_u16(status).unwrap(), none()), "{status}");
        }
        let big = HeaderValue::from_bytes(&vec![b'x'; MAX_BYTES]).unwrap();
        assert!(!request.send(StatusCode::EARLY_HINTS, [(&header::LINK, &big)]), "over the byte limit");
        for n in 0..MAX_PER_REQUEST {
            assert!(request.send(StatusCode::EARLY_HINTS, none()), "{n}");
            if n == 2 {
                // Taken ones count as well.
                assert_eq!(take(&conn).unwrap().1.upstream, 3);
            }
        }
        assert!(!request.send(StatusCode::EARLY_HINTS, none()), "over the count");
        assert_eq!(take(&conn).unwrap().1.upstream, MAX_PER_REQUEST as u64 - 3);
    }

    #[test]
    fn an_http2_stream_queues_the_same_1xx_within_the_same_limits_until_its_answer() {
        let (interim, stream) = Interim::stream();
        let queued = || stream.queue.lock().unwrap().heads.len();
        let none = || std::iter::empty::<(&HeaderName, &HeaderValue)>();
        for status in [100, 101, 200, 304] {
            assert!(!interim.send(StatusCode::from_u16(status).unwrap(), none()), "{status}");
        }
        let big = HeaderValue::from_bytes(&vec![b'x'; MAX_BYTES]).unwrap();
        assert!(!interim.send(StatusCode::EARLY_HINTS, [(&header::LINK, &big)]), "over the byte limit");
        assert!(!interim.hinted());
        let fields = [
            (header::LINK, HeaderValue::from_static("</b.js>")),
            (header::CONTENT_LENGTH, HeaderValue::from_static("5")),
            (header::CONNECTION, HeaderValue::from_static("x-secret")),
            (HeaderName::from_static("x-secret"), HeaderValue::from_static("1")),
            (HeaderName::from_static("keep-alive"), HeaderValue::from_static("timeout=1")),
        ];
        assert!(interim.send(StatusCode::from_u16(104).unwrap(), fields.iter().map(|(n, v)| (n, v))));
        {
            let q = stream.queue.lock().unwrap();
            let (head, _) = &q.heads[0];
            let names: Vec<&str> = head.headers().keys().map(|n| n.as_str()).collect();
            assert_eq!((head.status().as_u16(), names), (104, vec!["link"]), "no field HTTP/2 forbids");
        }
        for n in 1..MAX_PER_REQUEST {
            assert!(interim.early_hints([&HeaderValue::from_static("</a.css>")]), "{n}");
        }
        assert_eq!(queued(), MAX_PER_REQUEST);
        assert!(!interim.send(StatusCode::EARLY_HINTS, none()), "over the count");
        let (other, other_stream) = Interim::stream();
        other_stream.close();
        assert!(!other.send(StatusCode::EARLY_HINTS, none()), "answered: nothing more is queued");
    }
}
