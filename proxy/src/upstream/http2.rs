//! HTTP/2 to the next tier, spoken with h2 itself (hyper's client drops an
//! answer's interim responses): one connection per target, shared by every
//! request to it; each answer's 1xx handed on as they come; a request's
//! body sent no faster than the target's windows take it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use http::{HeaderValue, Request, Response, header};
use http_body::Body as _;
use outpost_net::RecvBody;
use outpost_net::http2::{declared_length, send_body, strip_connection_fields};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, oneshot};

use super::request::OnInterim;
use super::{BoxError, ReqBody};

/// Windows and buffers as hyper's HTTP/2 client sets them: room for a
/// fast hop to stream large bodies without waiting on window updates.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;
const MAX_SEND_BUFFER: usize = 1 << 20;
const MAX_HEADER_LIST: u32 = 16 << 10;
/// Streams opened before the target's settings say how many it allows.
const INITIAL_MAX_SEND_STREAMS: usize = 100;
/// A connection's target is asked this often whether it is still there.
const KEEPALIVE: Duration = Duration::from_secs(20);
/// How long a PING may wait for its answer.
const PONG_WAIT: Duration = Duration::from_secs(3);
/// How long a request whose body failed waits to learn why.
const BODY_VERDICT: Duration = Duration::from_secs(1);

/// An HTTP/2 connection to a target, shared by every request to it.
#[derive(Debug, Clone)]
pub(super) struct Conn {
    sender: SendRequest<Bytes>,
    /// It takes no more requests: its connection has ended, or is going
    /// away.
    closed: Arc<AtomicBool>,
    /// The target has shown it speaks HTTP/2: by ALPN, or by answering a
    /// request on this connection.
    proven: Arc<AtomicBool>,
    /// Asks its task to check the target is still there ([`Conn::check`]).
    check: Arc<Notify>,
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
    pub(super) fn into_cause(self) -> BoxError {
        match self {
            SendError::Closed(_, e) | SendError::Unsent(e) => e.into(),
            SendError::Broke(e) => e,
        }
    }
}

impl Conn {
    /// HTTP/2 over `io`, the connection driven by a task of its own.
    /// `proven`: the target is known to speak it.
    pub(super) async fn handshake<T>(io: T, proven: bool) -> Result<Conn, h2::Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .enable_push(false)
            .handshake::<T, Bytes>(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let check = Arc::new(Notify::new());
        tokio::spawn(drive(connection, Arc::clone(&check), Arc::clone(&closed)));
        Ok(Conn { sender, closed, proven: Arc::new(AtomicBool::new(proven)), check })
    }

    /// A request on it got no answer in time: is the target still there?
    /// (A PING now, rather than at the next round.)
    pub(super) fn check(&self) {
        self.check.notify_one();
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub(super) fn is_proven(&self) -> bool {
        self.proven.load(Ordering::Relaxed)
    }

    /// Sends `req` (its URI absolute: scheme and authority become the
    /// pseudo-fields) and waits for the answer's head. Interim responses
    /// before it go to the request's [`OnInterim`]. The body is sent by a
    /// task of its own; a target that opens no window for `stall` has the
    /// stream reset.
    pub(super) async fn send(&self, req: Request<ReqBody>, stall: Duration) -> Result<Response<RecvBody>, SendError> {
        let mut sender = match self.sender.clone().ready().await {
            Ok(sender) => sender,
            Err(e) => {
                // It takes no more requests: the next gets a new one.
                self.closed.store(true, Ordering::Relaxed);
                return Err(SendError::Closed(Box::new(req), e));
            }
        };
        let (mut parts, body) = req.into_parts();
        let interim = parts.extensions.remove::<OnInterim>();
        strip_connection_fields(&mut parts.headers);
        if let Some(len) = body.size_hint().exact()
            && len > 0
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
            let task = tokio::spawn(async move {
                if let Err(e) = send_body(body, stream, stall).await {
                    let _ = why_tx.send(e);
                }
            });
            body_task = Some((AbortOnDrop(Some(task)), why_rx));
        }
        let result = head(response, interim.as_ref()).await;
        match result {
            Ok(resp) => {
                self.proven.store(true, Ordering::Relaxed);
                if let Some((mut task, _)) = body_task {
                    task.0 = None;
                }
                let (parts, recv) = resp.into_parts();
                let declared = declared_length(&parts.headers);
                Ok(Response::from_parts(parts, RecvBody::h2(recv, declared)))
            }
            Err(e) => {
                if e.is_remote() {
                    // A frame of HTTP/2's own (RST_STREAM, GOAWAY): the
                    // target speaks it.
                    self.proven.store(true, Ordering::Relaxed);
                }
                if e.is_go_away() {
                    self.closed.store(true, Ordering::Relaxed);
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
/// unanswered for [`PONG_WAIT`]: one sent every [`KEEPALIVE`], and at once
/// when `check` is notified. A target that vanished without closing (a
/// host gone, a link cut) would otherwise keep its connection open, and
/// every request sent there would wait out its timeout, for as long as
/// TCP takes to give up. The connection is dropped, and `closed` set, so
/// the next request makes a new one.
async fn drive<T>(connection: h2::client::Connection<T, Bytes>, check: Arc<Notify>, closed: Arc<AtomicBool>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut connection = std::pin::pin!(connection);
    let mut ping = connection.ping_pong();
    loop {
        tokio::select! {
            ended = &mut connection => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "an upstream HTTP/2 connection failed");
                }
                break;
            }
            () = tokio::time::sleep(KEEPALIVE) => {}
            () = check.notified() => {}
        }
        let Some(pinger) = ping.as_mut() else { continue };
        // The connection is driven while the PING waits: it reads the PONG.
        let answered = tokio::select! {
            _ = &mut connection => break,
            pong = tokio::time::timeout(PONG_WAIT, pinger.ping(h2::Ping::opaque())) => matches!(pong, Ok(Ok(_))),
        };
        if !answered {
            tracing::info!("an upstream left a PING unanswered: its HTTP/2 connection is dropped");
            break;
        }
    }
    closed.store(true, Ordering::Relaxed);
}

/// The answer's head, each interim response before it handed to
/// `interim`. They are taken as they come whether or not anyone wants
/// them, so a target that sends many is not buffered without bound.
async fn head(
    mut response: ResponseFuture,
    interim: Option<&OnInterim>,
) -> Result<Response<h2::RecvStream>, h2::Error> {
    let mut more = true;
    std::future::poll_fn(|cx| {
        while more {
            match response.poll_informational(cx) {
                Poll::Ready(Some(Ok(r))) => {
                    if let Some(interim) = interim {
                        interim.pass(r.status(), r.headers());
                    }
                }
                Poll::Ready(Some(Err(_)) | None) => more = false,
                Poll::Pending => break,
            }
        }
        std::pin::Pin::new(&mut response).poll(cx)
    })
    .await
}

/// Aborts its task when dropped, unless let go.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}
