//! HTTP/2 connections, served with h2 itself rather than through hyper's
//! server, which has no way to send a stream an interim (1xx) response.
//! What hyper's server did is done here the same way:
//! - each stream's answer is a task of its own;
//! - a stream the client resets drops its answer unfinished;
//! - an answer's head loses the fields that speak of a connection (HTTP/2
//!   has none: h2 refuses them), gets a `Date` if it has none, and a
//!   `Content-Length` when its body's length is known;
//! - a body goes as the client's window allows, a frame at a time;
//!
//! and two things more: a stream whose client opens no window for the
//! send timeout is reset, as an HTTP/1 connection whose client stops
//! reading is closed; and a client that resets stream after stream before
//! their answers is shut out ([`Resets`]).
//!
//! A stream's interim responses ([`Interim`]) are queued for its task,
//! which sends them while the answer is awaited, and those queued by the
//! time the answer comes just before it: never after it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::server::{Connection, Handshake, SendResponse};
use h2::{RecvStream, SendStream};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body::Body as HttpBody;
use outpost_config::Limits;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Counters;
use super::interim::{Interim, Stream};
use crate::{BoxError, RecvBody};

/// A stream's window, and the connection's, before the client's settings
/// say otherwise: hyper's, larger than the protocol's 64 KiB, which holds
/// back a client's uploads on any but the shortest round trip.
const WINDOW: u32 = 1 << 20;
/// Most bytes of answers queued for a connection beyond what the client's
/// windows let go: hyper's.
const SEND_BUFFER: usize = 400 << 10;
/// Streams whose answers the client may reset while they are awaited
/// before the connection is ended for it (a reset flood): h2's.
const LOCAL_RESETS: usize = 1024;
/// Streams a peer may have open at once on one connection.
pub const MAX_STREAMS: u32 = 256;

/// h2's settings for a connection under `limits`.
pub(super) fn builder(limits: &Limits) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS)
        .max_local_error_reset_streams(Some(LOCAL_RESETS));
    b
}

/// One HTTP/2 connection: the handshake, then each stream the client opens
/// handed to `accept`, until the client or a shutdown ends it.
pub(super) struct Server<T: AsyncRead + AsyncWrite + Unpin, F> {
    state: State<T>,
    /// A shutdown asked for during the handshake.
    close_pending: bool,
    accept: F,
    resets: Arc<Resets>,
    /// The connection was told to calm down ([`Resets::too_many`]).
    calmed: bool,
}

enum State<T: AsyncRead + AsyncWrite + Unpin> {
    Handshaking(Handshake<T, Bytes>),
    Serving(Connection<T, Bytes>),
}

impl<T, F> Server<T, F>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<RecvStream>, SendResponse<Bytes>) + Unpin,
{
    /// `resets` is what the connection's streams ([`answer`]) count.
    pub(super) fn new(io: T, limits: &Limits, resets: Arc<Resets>, accept: F) -> Self {
        let state = State::Handshaking(builder(limits).handshake(io));
        Server { state, close_pending: false, accept, resets, calmed: false }
    }

    /// Asks the client to open no more streams (GOAWAY); those open finish.
    pub(super) fn graceful_shutdown(self: Pin<&mut Self>) {
        let this = self.get_mut();
        match &mut this.state {
            State::Handshaking(_) => this.close_pending = true,
            State::Serving(conn) => conn.graceful_shutdown(),
        }
    }
}

impl<T, F> Future for Server<T, F>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<RecvStream>, SendResponse<Bytes>) + Unpin,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Handshaking(hs) => {
                    let mut conn = ready!(Pin::new(hs).poll(cx))?;
                    if std::mem::take(&mut this.close_pending) {
                        conn.graceful_shutdown();
                    }
                    this.state = State::Serving(conn);
                }
                State::Serving(conn) => {
                    if !this.calmed && this.resets.too_many() {
                        // GOAWAY (ENHANCE_YOUR_CALM); h2 closes the
                        // connection once it is written.
                        tracing::warn!(
                            "a client reset more streams before their answers than it let finish (rapid reset); closing its connection"
                        );
                        conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                        this.calmed = true;
                    }
                    match ready!(conn.poll_accept(cx)) {
                        Some(Ok((req, respond))) => (this.accept)(req, respond),
                        Some(Err(e)) => return Poll::Ready(Err(e)),
                        None => return Poll::Ready(Ok(())),
                    }
                }
            }
        }
    }
}

/// What a connection's streams count of how they ended, to tell a client
/// that opens streams only to reset them (HTTP/2 "rapid reset",
/// CVE-2023-44487): reset streams leave the concurrency limit at once, so
/// such a client has the server start work without bound.
#[derive(Debug, Default)]
pub(super) struct Resets {
    /// Streams the client reset before their answer.
    early: std::sync::atomic::AtomicU64,
    answered: std::sync::atomic::AtomicU64,
}

/// Resets before an answer a connection is allowed in all, however many
/// it had answered: a browser cancels what it no longer needs, but seldom
/// more than it lets finish.
const EARLY_RESETS: u64 = 1000;

impl Resets {
    fn early(&self) {
        self.early.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn answered(&self) {
        self.answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// More than [`EARLY_RESETS`] streams reset before their answer, and
    /// more of them than streams answered.
    fn too_many(&self) -> bool {
        let early = self.early.load(std::sync::atomic::Ordering::Relaxed);
        early > EARLY_RESETS && early > self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A stream's request, with the body h2 delivers, and the queue its
/// interim responses go to.
pub(super) fn request(req: Request<RecvStream>) -> (Request<RecvBody>, Interim, Arc<Stream>) {
    let (parts, recv) = req.into_parts();
    let declared = declared_length(&parts.headers);
    let (interim, stream) = Interim::stream();
    (Request::from_parts(parts, RecvBody::h2(recv, declared)), interim, stream)
}

/// The length a message declares, if every `Content-Length` it has says
/// the same (h2 refuses a stream whose data does not match it).
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.to_str().ok()?.split(',') {
            let n = part.trim().parse::<u64>().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    length
}

/// Answers one stream with `answer`, and sends the interim responses
/// queued in `stream` while it is awaited (counted in `counters`). A
/// client that resets the stream first drops the answer unfinished; one
/// that opens no window for `stall` has it reset ([`send_body`]).
pub(super) async fn answer<F, B>(
    answer: F,
    mut respond: SendResponse<Bytes>,
    stream: Arc<Stream>,
    counters: Counters,
    stall: Stall,
    resets: Arc<Resets>,
) where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: HttpBody<Data = Bytes, Error = BoxError>,
{
    let mut answer = std::pin::pin!(answer);
    let resp = std::future::poll_fn(|cx| {
        if stream.poll_waiting(cx).is_ready() {
            send_interim(&mut respond, &stream, &counters);
        }
        if let Poll::Ready(Ok(resp)) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(resp));
        }
        respond.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(resp) = resp else {
        tracing::debug!(stream = ?respond.stream_id(), "the client reset a stream before its answer");
        resets.early();
        return;
    };
    resets.answered();
    // What was queued by now goes just before the answer; nothing after.
    stream.close();
    send_interim(&mut respond, &stream, &counters);
    let (mut parts, body) = resp.into_parts();
    answer_head(&mut parts.headers, &body);
    if body.is_end_stream() {
        if let Err(e) = respond.send_response(Response::from_parts(parts, ()), true) {
            tracing::debug!(error = %e, "an answer's head was not sent");
        }
        return;
    }
    match respond.send_response(Response::from_parts(parts, ()), false) {
        Ok(tx) => {
            if let Err(e) = send_body(body, tx, stall).await {
                tracing::debug!(error = %e, "an answer's body ended early");
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "an answer's head was not sent");
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    }
}

/// Sends what `stream` has queued on `respond`.
fn send_interim(respond: &mut SendResponse<Bytes>, stream: &Stream, counters: &Counters) {
    for (head, source) in stream.take() {
        match respond.send_informational(head) {
            Ok(()) => Stream::sent(source, counters),
            Err(e) => tracing::debug!(error = %e, "an interim response was not sent"),
        }
    }
}

/// An answer's head as HTTP/2 and HTTP/3 send it: without the fields that
/// speak of a connection, with a `Date` if it has none, and with a
/// `Content-Length` when `body` knows its length and is not empty.
pub(crate) fn answer_head(headers: &mut HeaderMap, body: &impl HttpBody) {
    strip_connection_fields(headers);
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, super::direct::date_value());
    }
    if !body.is_end_stream()
        && let Some(len) = body.size_hint().exact()
        && !headers.contains_key(header::CONTENT_LENGTH)
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// When a peer that holds up a body is given up on: past `after` waiting
/// for window, unless it has taken `min_take` bytes since the wait began
/// (`send_min_rate` × `send_timeout`: a client that opens a window a few
/// bytes wide now and then is not reading, whatever it says).
#[derive(Debug, Clone)]
pub struct Stall {
    pub after: Duration,
    pub min_take: u64,
    /// The connection whose streams share `min_take`: a client reading
    /// many answers at once over a slow link reads each slowly.
    shared: Option<Arc<super::ConnState>>,
}

impl Stall {
    /// A client's, by the node's limits.
    pub fn of(limits: &outpost_config::Limits) -> Stall {
        let min_take = (limits.send_min_rate as f64 * limits.send_timeout.as_secs_f64()) as u64;
        Stall { after: limits.send_timeout, min_take, shared: None }
    }

    /// Any byte taken restarts the wait.
    pub fn after(after: Duration) -> Stall {
        Stall { after, min_take: 0, shared: None }
    }

    /// The same, for each of the streams of `conn`.
    pub(super) fn shared_by(self, conn: Arc<super::ConnState>) -> Stall {
        Stall { shared: Some(conn), ..self }
    }

    /// What one stream must take now.
    fn min_take(&self) -> u64 {
        let streams = self.shared.as_ref().map_or(1, |c| c.active.load(std::sync::atomic::Ordering::Acquire));
        self.min_take / streams.max(1) as u64
    }
}

/// Sends `body` on `tx`, a frame at a time as the peer's windows let it
/// go; a body that fails resets the stream (`INTERNAL_ERROR`). A peer that
/// opens no window for `stall` (the send timeout: a client that stopped
/// reading), or too little ([`Stall`]), has the stream reset (`CANCEL`), as an HTTP/1 client that
/// stops reading has its connection closed: a stalled stream would
/// otherwise hold its answer, and its connection busy, for good. The
/// proxy's upstream client sends request bodies with it too.
pub async fn send_body<B>(body: B, mut tx: SendStream<Bytes>, stall: Stall) -> Result<(), BoxError>
where
    B: HttpBody<Data = Bytes, Error = BoxError>,
{
    let mut body = std::pin::pin!(body);
    // A frame taken from the body, waiting for window.
    let mut held: Option<(Bytes, bool)> = None;
    // What the client has given room for since it first made a frame wait
    // (`None`: it has not, or has given enough since), how long frames
    // waited for room before, and since when and until when one waits now.
    let mut taken: Option<u64> = None;
    let mut waited = Duration::ZERO;
    let mut waiting: Option<(std::time::Instant, Pin<Box<tokio::time::Sleep>>)> = None;
    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(reason) = tx.poll_reset(cx) {
                return Poll::Ready(Err(BoxError::from(h2::Error::from(reason?))));
            }
            if let Some((mut data, last)) = held.take() {
                // Handed to h2 no faster than the client's windows take it
                // (h2 would buffer the whole of it): the answer stays in
                // progress, its connection busy and timed as such, until
                // its last bytes are on their way.
                while !data.is_empty() {
                    tx.reserve_capacity(data.len());
                    let room = tx.capacity();
                    if room > 0 {
                        // Progress, once the client has read enough of it;
                        // the wait is over either way.
                        let chunk = data.split_to(room.min(data.len()));
                        if let Some((since, _)) = waiting.take() {
                            waited += since.elapsed();
                        }
                        if let Some(t) = taken.as_mut() {
                            *t += chunk.len() as u64;
                            if *t >= stall.min_take() {
                                (taken, waited) = (None, Duration::ZERO);
                            }
                        }
                        tx.send_data(chunk, last && data.is_empty())?;
                        continue;
                    }
                    match tx.poll_capacity(cx) {
                        Poll::Pending => {
                            taken.get_or_insert(0);
                            let left = stall.after.saturating_sub(waited);
                            let (_, timer) = waiting
                                .get_or_insert_with(|| (std::time::Instant::now(), Box::pin(tokio::time::sleep(left))));
                            if timer.as_mut().poll(cx).is_ready() {
                                tx.send_reset(h2::Reason::CANCEL);
                                return Poll::Ready(Err("the peer opened no window for the send timeout".into()));
                            }
                            held = Some((data, last));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                        Poll::Ready(None) => return Poll::Ready(Err("the stream closed".into())),
                    }
                }
                if last {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let last = body.is_end_stream();
                        if data.is_empty() {
                            tx.send_data(data, last)?;
                            if last {
                                return Poll::Ready(Ok(()));
                            }
                        } else {
                            held = Some((data, last));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            tx.reserve_capacity(0);
                            tx.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(e)) => {
                    tx.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Poll::Ready(Err(e));
                }
                None => {
                    tx.reserve_capacity(0);
                    tx.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    })
    .await
}

/// Fields that speak of one connection, which HTTP/2 forbids (RFC 9113
/// §8.2.2), removed: those `Connection` names, and the usual ones.
pub fn strip_connection_fields(headers: &mut HeaderMap) {
    if let Some(named) = headers.remove(header::CONNECTION)
        && let Ok(named) = named.to_str()
    {
        for name in named.split(',') {
            headers.remove(name.trim());
        }
    }
    for name in [header::TRANSFER_ENCODING, header::UPGRADE, header::TE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}
