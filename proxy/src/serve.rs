//! Client connections: accept, TLS when the listener has it, HTTP/1.1 and
//! HTTP/2 (by ALPN over TLS, by preface in cleartext) on hyper-util's auto
//! server, with the node's limits.
//!
//! A TLS handshake runs in the connection's own task under the header-read
//! timeout, so a client that stalls mid-handshake holds one connection slot
//! for at most that long and never delays accepting others.
//!
//! Timeouts follow the connection's state rather than hyper's single
//! header timer (which also runs while a keep-alive connection idles):
//! - idle (no request in progress, nothing received): `idle_timeout`;
//! - a request head arriving (bytes received, no request yet): `header_read_timeout`,
//!   counted from its first byte — a slowloris client is cut off;
//! - a request in progress: no client timer (upstream timeouts apply).
//!
//! Shutdown stops accepting, asks every connection to finish its current
//! exchange, and waits up to `shutdown_grace`.
//!
//! hyper reads a request with both `Content-Length` and `Transfer-Encoding`
//! by the latter alone (RFC 9112 §6.3 allows it) and drops the former, so the
//! service never sees the conflict. Such a request is a smuggling attempt;
//! the I/O wrapper reads each HTTP/1 request head as it passes and flags it,
//! and the request is refused with 400.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Engine;
use crate::engine::respond::Body;
use crate::upstream::BoxError;

/// Binds every address; the error names the one that failed.
pub async fn bind(addrs: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        let l =
            TcpListener::bind(a).await.map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
        out.push(l);
    }
    Ok(out)
}

/// Per-connection state shared by the I/O wrapper, the service and the watchdog.
#[derive(Debug)]
struct ConnState {
    epoch: Instant,
    active: AtomicUsize,
    /// Millis since `epoch` (+1, 0 = none) when a request head began arriving.
    head_started: AtomicU64,
    /// Millis since `epoch` when the connection last became idle.
    idle_since: AtomicU64,
    /// The request head just read carried both Content-Length and
    /// Transfer-Encoding.
    framing_conflict: AtomicBool,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A bound client listener.
#[derive(Debug)]
pub struct Listener {
    pub tcp: TcpListener,
    /// Terminates TLS on accepted connections; cleartext when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Marks the request as received over TLS (an extension of the request).
#[derive(Debug, Clone, Copy)]
pub struct Secure;

/// Marks the start of a request head on the first bytes read while idle,
/// and reads HTTP/1 heads for framing conflicts.
struct TrackedIo<S> {
    inner: S,
    state: Arc<ConnState>,
    /// The request head being read, while one is.
    head: Vec<u8>,
    collecting: bool,
    /// HTTP/2 (or a head too large to matter): nothing to read.
    sniffing: bool,
    limit: usize,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Does a request head carry both framing fields?
fn framing_conflict(head: &[u8]) -> bool {
    let (mut cl, mut te) = (false, false);
    for line in head.split(|b| *b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let name = line[..colon].trim_ascii();
        cl |= name.eq_ignore_ascii_case(b"content-length");
        te |= name.eq_ignore_ascii_case(b"transfer-encoding");
    }
    cl && te
}

impl<S> TrackedIo<S> {
    fn sniff(&mut self, new: &[u8]) {
        if !self.collecting {
            if self.state.active.load(Ordering::Acquire) != 0 {
                return;
            }
            self.collecting = true;
            self.head.clear();
        }
        self.head.extend_from_slice(new);
        if self.head.starts_with(H2_PREFACE) {
            self.sniffing = false;
            return;
        }
        if let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") {
            if framing_conflict(&self.head[..end]) {
                self.state.framing_conflict.store(true, Ordering::Release);
            }
            self.collecting = false;
        } else if self.head.len() > self.limit {
            // hyper refuses it with 431; nothing to add.
            self.collecting = false;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            if self.state.active.load(Ordering::Acquire) == 0 {
                let now = self.state.now_ms() + 1;
                let _ = self.state.head_started.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
            }
            if self.sniffing {
                let new = buf.filled()[before..].to_vec();
                self.sniff(&new);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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
        self.state.idle_since.store(self.state.now_ms(), Ordering::Release);
        self.state.active.fetch_sub(1, Ordering::AcqRel);
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

fn builder(engine: &Engine) -> auto::Builder<TokioExecutor> {
    let limits = &engine.limits;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size((limits.max_header_bytes as usize).max(8192))
        .max_headers(limits.max_headers as usize);
    b.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_header_bytes as u32).max_concurrent_streams(256);
    b
}

/// Serves clients on `listeners` until `shutdown`.
pub async fn serve(engine: Arc<Engine>, listeners: Vec<Listener>, shutdown: CancellationToken) -> io::Result<()> {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(engine.limits.max_connections as usize));
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        let (engine, shutdown, tracker, permits) =
            (Arc::clone(&engine), shutdown.clone(), tracker.clone(), Arc::clone(&permits));
        accepting.spawn(async move {
            loop {
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                };
                let (stream, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = listener.tcp.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of descriptors and the like: back off, keep serving.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let engine = Arc::clone(&engine);
                let shutdown = shutdown.clone();
                let tls = listener.tls.clone().map(TlsAcceptor::from);
                tracker.spawn(async move {
                    match tls {
                        None => connection(engine, stream, peer, false, shutdown).await,
                        Some(acceptor) => {
                            let wait = engine.limits.header_read_timeout;
                            let handshake = tokio::select! {
                                _ = shutdown.cancelled() => return,
                                r = tokio::time::timeout(wait, acceptor.accept(stream)) => r,
                            };
                            match handshake {
                                Ok(Ok(tls)) => {
                                    engine.metrics.tls_handshake(true);
                                    connection(engine, tls, peer, true, shutdown).await;
                                }
                                Ok(Err(e)) => {
                                    engine.metrics.tls_handshake(false);
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                }
                                Err(_) => {
                                    engine.metrics.tls_handshake(false);
                                    tracing::debug!(%peer, "TLS handshake not finished in time");
                                }
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
    }
    while accepting.join_next().await.is_some() {}
    tracker.close();
    if tokio::time::timeout(engine.limits.shutdown_grace, tracker.wait()).await.is_err() {
        tracing::warn!(node = %engine.node, "connections still open after the shutdown grace period");
    }
    Ok(())
}

async fn connection<S>(engine: Arc<Engine>, stream: S, peer: SocketAddr, secure: bool, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState {
        epoch: Instant::now(),
        active: AtomicUsize::new(0),
        head_started: AtomicU64::new(0),
        idle_since: AtomicU64::new(0),
        framing_conflict: AtomicBool::new(false),
    });
    let limit = (engine.limits.max_header_bytes as usize).max(8192) + 4;
    let io = TokioIo::new(TrackedIo {
        inner: stream,
        state: Arc::clone(&state),
        head: Vec::new(),
        collecting: false,
        sniffing: true,
        limit,
    });
    let svc_state = Arc::clone(&state);
    let svc_engine = Arc::clone(&engine);
    let service = service_fn(move |mut req: Request<Incoming>| {
        let (engine, state) = (Arc::clone(&svc_engine), Arc::clone(&svc_state));
        if secure {
            req.extensions_mut().insert(Secure);
        }
        state.active.fetch_add(1, Ordering::AcqRel);
        state.head_started.store(0, Ordering::Release);
        async move {
            let resp = if state.framing_conflict.swap(false, Ordering::AcqRel) {
                engine.refuse_smuggling()
            } else {
                engine.handle(req, Some(peer)).await
            };
            let (parts, body) = resp.into_parts();
            let tracked: Body = http_body_util::BodyExt::boxed_unsync(Tracked { inner: body, state });
            Ok::<_, std::convert::Infallible>(Response::from_parts(parts, tracked))
        }
    });
    let builder = builder(&engine);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let limits = engine.limits;
    let tick = limits
        .header_read_timeout
        .min(limits.idle_timeout)
        .div_f64(4.0)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    let mut closing = false;
    loop {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ticker.tick() => {
                if state.active.load(Ordering::Acquire) > 0 {
                    continue;
                }
                let now = state.now_ms();
                let head = state.head_started.load(Ordering::Acquire);
                if head != 0 {
                    if now + 1 - head > limits.header_read_timeout.as_millis() as u64 {
                        tracing::debug!(%peer, "request head not received in time; closing");
                        return;
                    }
                } else if now - state.idle_since.load(Ordering::Acquire).min(now) > limits.idle_timeout.as_millis() as u64 {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::framing_conflict;

    #[test]
    fn framing_conflicts_are_found_in_any_case() {
        assert!(framing_conflict(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"));
        assert!(framing_conflict(b"POST / HTTP/1.1\r\ntransfer-encoding : chunked\r\ncontent-LENGTH: 3"));
        assert!(!framing_conflict(b"POST / HTTP/1.1\r\nContent-Length: 3"));
        assert!(!framing_conflict(b"GET /content-length:transfer-encoding: HTTP/1.1\r\nHost: a"));
    }
}
