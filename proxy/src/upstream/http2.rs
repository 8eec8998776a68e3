//! HTTP/2 to the next tier, spoken with h2 itself (hyper's client drops an
//! answer's interim responses): a connection per target, shared by every
//! request to it (another while every stream of those open is taken);
//! each answer's 1xx handed on as they come; a request's body sent no
//! faster than the target's windows take it; a connection with no stream
//! open for a while closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use http::{HeaderValue, Method, Request, Response, header};
use http_body::Body as _;
use outpost_net::RecvBody;
use outpost_net::http2::{Stall, declared_length, send_body, strip_connection_fields};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, oneshot};
use tokio_util::task::AbortOnDropHandle;

use super::request::OnInterim;
use super::{BoxError, ReqBody};

/// A stream's window as hyper's HTTP/2 client sets it: room for a fast
/// hop to stream large bodies without waiting on window updates.
const STREAM_WINDOW: u32 = 2 << 20;
/// The connection's: every stream a shield lets an edge open with its
/// window full at once. The bytes a stream's reader has not taken count
/// against the connection's window too, and every site's misses to a
/// target share a connection: with hyper's 5 MiB, three clients reading
/// answers passed through slowly stopped all of them. What a connection
/// holds stays bounded by its streams' windows.
const CONNECTION_WINDOW: u32 = STREAM_WINDOW * outpost_net::http2::MAX_STREAMS;
const MAX_SEND_BUFFER: usize = 1 << 20;
const MAX_HEADER_LIST: u32 = 16 << 10;
/// Streams opened before the target's settings say how many it allows.
const INITIAL_MAX_SEND_STREAMS: usize = 100;
/// A connection that has read nothing for this long asks its target
/// whether it is still there.
const KEEPALIVE: Duration = Duration::from_secs(20);
/// How long a PING may wait for its answer while nothing at all is read.
const PONG_WAIT: Duration = Duration::from_secs(5);
/// Interim responses before an answer past which the stream is given up
/// (those passed on are fewer: `outpost_net::Interim::MOST`).
const MAX_INTERIM: usize = 64;
/// How long a request whose body failed waits to learn why.
const BODY_VERDICT: Duration = Duration::from_secs(1);

/// An HTTP/2 connection to a target, shared by every request to it.
#[derive(Debug, Clone)]
pub(super) struct Conn {
    sender: SendRequest<Bytes>,
    /// What its task and its requests know of it.
    shared: Arc<Shared>,
}

/// What a connection's task shares with its requests.
#[derive(Debug)]
struct Shared {
    /// It takes no more requests: its connection has ended, or is going
    /// away.
    closed: AtomicBool,
    /// The target has shown it speaks HTTP/2: by ALPN, by answering a
    /// PING or a request on this connection, or by a frame of HTTP/2's
    /// own.
    proven: AtomicBool,
    /// It has shown so itself (by ALPN, an answer, a PING's, a frame of
    /// HTTP/2's own), not only been taken to by another connection to the
    /// same target ([`Conn::assume_proven`]).
    shown: AtomicBool,
    /// Bytes read from the target so far.
    read: AtomicU64,
    /// Asks the task to check the target is still there ([`Conn::check`]).
    check: Notify,
    /// Streams open: counted from the request until the answer's body
    /// ends or is dropped, and the request's body is sent.
    open: AtomicUsize,
    /// When the connection was made, and the milliseconds from then until
    /// a stream last opened or closed.
    born: Instant,
    used: AtomicU64,
}

impl Shared {
    /// The target has shown it speaks HTTP/2 on this connection.
    fn prove(&self) {
        self.proven.store(true, Ordering::Relaxed);
        self.shown.store(true, Ordering::Relaxed);
    }

    fn touch(&self) {
        self.used.store(self.born.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// No stream has been open on it for `idle`. (A stream that opens or
    /// closes between the two reads leaves `used` past `now`: not idle.)
    fn idle_for(&self, idle: Duration) -> bool {
        let now = self.born.elapsed().as_millis() as u64;
        self.open.load(Ordering::Acquire) == 0
            && now.saturating_sub(self.used.load(Ordering::Acquire)) >= idle.as_millis() as u64
    }
}

/// A stream counted open on its connection while this lives.
struct Open(Arc<Shared>);

impl Open {
    fn new(shared: &Arc<Shared>) -> Open {
        shared.open.fetch_add(1, Ordering::AcqRel);
        shared.touch();
        Open(Arc::clone(shared))
    }

    /// One more, when fewer than `max` are open.
    fn below(shared: &Arc<Shared>, max: usize) -> Option<Open> {
        shared.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        shared.touch();
        Some(Open(Arc::clone(shared)))
    }
}

/// A stream's place on a connection, taken as the connection is chosen
/// for a request ([`Conn::slot`]), so requests choosing at once do not
/// all take its last free stream.
pub(super) struct Slot {
    pub(super) conn: Conn,
    open: Open,
}

impl Slot {
    /// [`Conn::send`] in this place.
    pub(super) async fn send(self, req: Request<ReqBody>, stall: Duration) -> Result<Response<RecvBody>, SendError> {
        self.conn.send(req, stall, self.open).await
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a request over HTTP/2 failed.
pub(super) enum SendError {
    /// The connection had closed before the request could go: the request
    /// as it was, body and all.
    Closed(Box<Request<ReqBody>>, h2::Error),
    /// The target never took the request: it could not be sent, or the
    /// target turned the stream away (GOAWAY past it, or
    /// `REFUSED_STREAM`). It can be sent again elsewhere.
    Unsent(h2::Error),
    /// The exchange broke once the request was out (a client body's error
    /// among the causes, when that is why).
    Broke(BoxError),
}

impl SendError {
    /// What a target that does not speak HTTP/2 causes: the connection
    /// closed or broken, or bytes that are not HTTP/2. Not a client body's
    /// error, nor a stream HTTP/2 itself ended.
    pub(super) fn is_refusal(&self) -> bool {
        match self {
            SendError::Closed(..) => true,
            SendError::Unsent(e) => !e.is_remote(),
            SendError::Broke(e) => e.downcast_ref::<h2::Error>().is_some_and(|e| e.is_io() || e.is_library()),
        }
    }

    pub(super) fn into_cause(self) -> BoxError {
        match self {
            SendError::Closed(_, e) | SendError::Unsent(e) => e.into(),
            SendError::Broke(e) => e,
        }
    }
}

impl Conn {
    /// HTTP/2 over `io`, the connection driven by a task of its own, and
    /// closed once no stream has been open on it for `idle`. `proven`: the
    /// target is known to speak it.
    pub(super) async fn handshake<T>(io: T, proven: bool, idle: Duration) -> Result<Conn, h2::Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            proven: AtomicBool::new(proven),
            shown: AtomicBool::new(proven),
            read: AtomicU64::new(0),
            check: Notify::new(),
            open: AtomicUsize::new(0),
            born: Instant::now(),
            used: AtomicU64::new(0),
        });
        let io = Counted { io, shared: Arc::clone(&shared) };
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .enable_push(false)
            .handshake::<Counted<T>, Bytes>(io)
            .await?;
        tokio::spawn(drive(connection, Arc::clone(&shared), idle));
        Ok(Conn { sender, shared })
    }

    /// A request on it got no answer in time: is the target still there?
    /// (A PING now, rather than at the next round.)
    pub(super) fn check(&self) {
        self.shared.check.notify_one();
    }

    pub(super) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// A place for a stream, when fewer are open on it than the target
    /// allows on one connection.
    pub(super) fn free_slot(&self) -> Option<Slot> {
        let open = Open::below(&self.shared, self.sender.current_max_send_streams())?;
        Some(Slot { conn: self.clone(), open })
    }

    /// A place for a stream, however many are open: past the target's
    /// limit, the stream waits for one of them to end.
    pub(super) fn slot(&self) -> Slot {
        Slot { conn: self.clone(), open: Open::new(&self.shared) }
    }

    /// Streams open on it ([`Shared::open`]).
    pub(super) fn streams_open(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    pub(super) fn is_proven(&self) -> bool {
        self.shared.proven.load(Ordering::Relaxed)
    }

    /// The target has shown on this connection itself that it speaks
    /// HTTP/2 (not only been taken to: [`Conn::assume_proven`]).
    pub(super) fn has_shown(&self) -> bool {
        self.shared.shown.load(Ordering::Relaxed)
    }

    /// Takes the target to speak HTTP/2, as another open connection to it
    /// has shown: a failure before this one's first answer is then not a
    /// refusal.
    pub(super) fn assume_proven(&self) {
        self.shared.proven.store(true, Ordering::Relaxed);
    }

    /// Sends `req` (its URI absolute: scheme and authority become the
    /// pseudo-fields) in the place `open`, and waits for the answer's head. Interim responses
    /// before it go to the request's [`OnInterim`]. The body is sent by a
    /// task of its own; a target that opens no window for `stall` has the
    /// stream reset.
    async fn send(&self, req: Request<ReqBody>, stall: Duration, open: Open) -> Result<Response<RecvBody>, SendError> {
        let mut sender = match self.sender.clone().ready().await {
            Ok(sender) => sender,
            Err(e) => {
                // It takes no more requests: the next gets a new one.
                self.shared.closed.store(true, Ordering::Relaxed);
                return Err(SendError::Closed(Box::new(req), e));
            }
        };
        let open = Arc::new(open);
        let (mut parts, body) = req.into_parts();
        let interim = parts.extensions.remove::<OnInterim>();
        strip_connection_fields(&mut parts.headers);
        if let Some(len) = body.size_hint().exact()
            && (len > 0 || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH))
        {
            parts.headers.entry(header::CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(len));
        }
        let ended = body.is_end_stream();
        let (response, stream) =
            sender.send_request(Request::from_parts(parts, ()), ended).map_err(SendError::Unsent)?;
        // The body's task, aborted if the answer is given up before its
        // head comes (the stream is then reset); after, it runs on to the
        // body's end, for a target may answer before it has read it all.
        let mut body_task = None;
        if !ended {
            let (why_tx, why_rx) = oneshot::channel();
            let open = Arc::clone(&open);
            let task = tokio::spawn(async move {
                let _open = open;
                if let Err(e) = send_body(body, stream, Stall::after(stall)).await {
                    let _ = why_tx.send(e);
                }
            });
            body_task = Some((AbortOnDropHandle::new(task), why_rx));
        }
        let result = head(response, interim.as_ref()).await;
        let result = match result {
            Ok(resp) => Ok(resp),
            Err(Headless::H2(e)) => Err(e),
            Err(Headless::Flood) => {
                return Err(SendError::Broke(format!("more than {MAX_INTERIM} interim responses").into()));
            }
        };
        match result {
            Ok(resp) => {
                self.shared.prove();
                if let Some((task, _)) = body_task {
                    task.detach();
                }
                let (parts, recv) = resp.into_parts();
                let declared = declared_length(&parts.headers);
                Ok(Response::from_parts(parts, RecvBody::h2_holding(recv, declared, Box::new(open))))
            }
            Err(e) => {
                if e.is_remote() {
                    // A frame of HTTP/2's own (RST_STREAM, GOAWAY): the
                    // target speaks it.
                    self.shared.prove();
                }
                if e.is_go_away() {
                    self.shared.closed.store(true, Ordering::Relaxed);
                }
                // Reset by this side: its body failed, and says why.
                if e.is_reset()
                    && !e.is_remote()
                    && !e.is_library()
                    && let Some((_, why)) = body_task
                    && let Ok(Ok(why)) = tokio::time::timeout(BODY_VERDICT, why).await
                {
                    return Err(SendError::Broke(why));
                }
                let turned_away = e.is_remote() && (e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM));
                Err(if turned_away { SendError::Unsent(e) } else { SendError::Broke(e.into()) })
            }
        }
    }
}

/// Drives `connection` until it ends, or until the target leaves a PING
/// unanswered, and nothing else comes from it, for [`PONG_WAIT`]. A PING
/// goes at once (its answer proves the target speaks HTTP/2 before any
/// request has been answered), after [`KEEPALIVE`] without a byte read,
/// and when [`Conn::check`] asks (a request on it timed out). A target
/// that vanished without closing (a host gone, a link cut) would otherwise
/// keep its connection open, and every request sent there would wait out
/// its timeout, for as long as TCP takes to give up. A busy connection
/// whose PING waits behind the data ahead of it is not dropped: the data
/// coming in is an answer too. A connection with no stream open for
/// `idle` is dropped as well: its PINGs would otherwise keep it open, past
/// the target's own idle timeout, for as long as the node runs. The
/// connection is dropped, and `closed` set, so the next request makes a
/// new one.
async fn drive<T>(connection: h2::client::Connection<Counted<T>, Bytes>, shared: Arc<Shared>, idle: Duration)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut connection = std::pin::pin!(connection);
    let mut ping = connection.ping_pong();
    let mut first = true;
    let mut seen = 0;
    loop {
        if !std::mem::take(&mut first) {
            tokio::select! {
                ended = &mut connection => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "an upstream HTTP/2 connection failed");
                    }
                    break;
                }
                () = tokio::time::sleep(KEEPALIVE.min(idle)) => {
                    if shared.idle_for(idle) {
                        tracing::debug!("an idle upstream HTTP/2 connection is closed");
                        break;
                    }
                    let now = shared.read.load(Ordering::Relaxed);
                    if std::mem::replace(&mut seen, now) != now {
                        continue;
                    }
                }
                () = shared.check.notified() => {}
            }
        }
        let Some(pinger) = ping.as_mut() else { continue };
        // The connection is driven while the PING waits: it reads the PONG.
        let before = shared.read.load(Ordering::Relaxed);
        let answered = tokio::select! {
            _ = &mut connection => break,
            pong = tokio::time::timeout(PONG_WAIT, pinger.ping(h2::Ping::opaque())) => matches!(pong, Ok(Ok(_))),
        };
        if answered {
            shared.prove();
        } else if shared.read.load(Ordering::Relaxed) == before {
            tracing::info!("an upstream left a PING unanswered: its HTTP/2 connection is dropped");
            break;
        }
        seen = shared.read.load(Ordering::Relaxed);
    }
    shared.closed.store(true, Ordering::Relaxed);
}

/// An upstream connection's I/O, counting the bytes read.
struct Counted<T> {
    io: T,
    shared: Arc<Shared>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.shared.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The answer's head, each interim response before it handed to
/// `interim`. They are taken as they come whether or
/// not anyone wants them, so a target that sends many is not buffered
/// without bound; one that sends more than [`MAX_INTERIM`] is given up on.
async fn head(mut response: ResponseFuture, interim: Option<&OnInterim>) -> Result<Response<h2::RecvStream>, Headless> {
    let mut more = true;
    let mut count = 0;
    std::future::poll_fn(|cx| {
        while more {
            match response.poll_informational(cx) {
                Poll::Ready(Some(Ok(r))) => {
                    count += 1;
                    if count > MAX_INTERIM {
                        return Poll::Ready(Err(Headless::Flood));
                    }
                    if let Some(interim) = interim {
                        interim.pass(r.status(), r.headers());
                    }
                }
                Poll::Ready(Some(Err(_)) | None) => more = false,
                Poll::Pending => break,
            }
        }
        std::pin::Pin::new(&mut response).poll(cx).map_err(Headless::H2)
    })
    .await
}

/// Why no answer's head came.
enum Headless {
    H2(h2::Error),
    /// More than [`MAX_INTERIM`] interim responses.
    Flood,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use http_body_util::BodyExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A target that answers every request with `size` bytes, the last
    /// `delay` after the first, on one connection; `closed` is set when the
    /// client ends it.
    async fn target(size: usize, delay: Duration) -> (TcpStream, Arc<AtomicBool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&closed);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(socket).await.unwrap();
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                tokio::spawn(async move {
                    let mut send = respond.send_response(Response::new(()), false).unwrap();
                    send.send_data(Bytes::from(vec![b'x'; size - 1]), false).unwrap();
                    tokio::time::sleep(delay).await;
                    let _ = send.send_data(Bytes::from_static(b"x"), true);
                });
            }
            flag.store(true, Ordering::SeqCst);
        });
        (client, closed)
    }

    fn get() -> Request<ReqBody> {
        let empty = http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync();
        Request::get("http://target.test/a").body(empty).unwrap()
    }

    async fn closed_within(closed: &AtomicBool, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if closed.load(Ordering::SeqCst) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_connection_with_no_stream_open_is_closed_once_idle() {
        // Long enough that a loaded machine's stall does not pass for idle.
        let idle = Duration::from_millis(1000);
        let (io, closed) = target(1000, Duration::ZERO).await;
        let conn = Conn::handshake(io, true, idle).await.unwrap();
        for _ in 0..3 {
            let resp = conn.slot().send(get(), Duration::from_secs(5)).await.ok().unwrap();
            assert_eq!(resp.into_body().collect().await.unwrap().to_bytes().len(), 1000);
            // Used more often than it idles: kept.
            tokio::time::sleep(idle / 3).await;
            assert!(!conn.is_closed() && !closed.load(Ordering::SeqCst), "closed while in use");
        }
        assert!(closed_within(&closed, idle * 10).await, "an idle connection was kept");
        assert!(conn.is_closed());
    }

    #[tokio::test]
    async fn a_connection_whose_answer_is_still_coming_is_not_idle() {
        let idle = Duration::from_millis(1000);
        let (io, closed) = target(1000, idle * 4).await;
        let conn = Conn::handshake(io, true, idle).await.unwrap();
        let resp = conn.slot().send(get(), Duration::from_secs(5)).await.ok().unwrap();
        // The head has come, the body's last byte has not: the stream is
        // open, however long nothing else is asked.
        assert!(!closed_within(&closed, idle * 3).await, "closed under an answer still coming");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes().len(), 1000);
        assert!(closed_within(&closed, idle * 10).await, "kept once the answer was whole");
    }
}
