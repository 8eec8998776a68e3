//! HTTP/3: QUIC listeners (quinn) speaking HTTP/3 (the h3 crate), whose
//! requests take the same path as every other: the server's [`Handler`].
//!
//! Each QUIC connection gets an in-memory HTTP/2 connection to itself
//! (hyper's, both ends): HTTP/3 requests are sent on it as HTTP/2
//! streams, the handler answers them as it answers HTTP/2 clients, and
//! the answers go back as HTTP/3. Streams stay concurrent (HTTP/2 multiplexes as QUIC does), and
//! the cache, `Cache-Status`, access log and metrics are the ones every
//! protocol gets. The cost is the HTTP/2 framing in memory on each request;
//! the handler tells HTTP/3 requests by [`crate::Conn::http3`].
//!
//! Limits: `limits.max_connections` QUIC connections (more are refused),
//! `limits.quic_streams` requests open at once per connection (the
//! client waits for more: QUIC stream credit), `limits.idle_timeout` of
//! silence closes a connection, handshakes must finish within
//! `limits.header_read_timeout`, and header sections are capped at
//! `limits.max_header_bytes`. 0-RTT is off: early data can be replayed by
//! anyone who saw it, and a cache's requests gain little from it.
//!
//! Shutdown: the endpoint stops accepting connections, every connection is
//! told (GOAWAY) to start no new requests, and requests already running
//! finish within `limits.shutdown_grace`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use outpost_config::Limits;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{BoxError, Conn, Handler};

/// How long a draining connection whose requests are all answered waits for
/// the client to close before closing it: closing at once could drop the
/// last bytes of an answer still unacknowledged.
const LINGER: Duration = Duration::from_secs(1);

/// Bytes the in-memory HTTP/2 connection buffers each way.
const BRIDGE_BUFFER: usize = 256 * 1024;
/// Its flow-control windows: large, since both ends are this process.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// A bound HTTP/3 listener.
#[derive(Debug)]
pub struct QuicListener {
    pub endpoint: quinn::Endpoint,
}

impl QuicListener {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }
}

/// Serves HTTP/3 on `socket` (bound beforehand, so port 0 can be reported
/// early) with `tls` (TLS 1.3, ALPN `h3`, no early data) and `limits`.
pub fn quic_listener(
    socket: std::net::UdpSocket,
    tls: Arc<rustls::ServerConfig>,
    limits: &Limits,
) -> io::Result<QuicListener> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(io::Error::other)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(limits.quic_streams))
        // HTTP/3's own: control, QPACK encoder and decoder, and room.
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(8))
        .max_idle_timeout(Some(limits.idle_timeout.try_into().map_err(io::Error::other)?));
    config.transport_config(Arc::new(transport));
    config.max_incoming(limits.max_connections as usize);
    let runtime = quinn::default_runtime().ok_or_else(|| io::Error::other("no async runtime for QUIC"))?;
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket, runtime)?;
    Ok(QuicListener { endpoint })
}

/// Serves HTTP/3 on `listener` with `handler` until `shutdown`.
pub async fn serve_quic<H: Handler>(
    handler: Arc<H>,
    listener: QuicListener,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let endpoint = listener.endpoint;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        if endpoint.open_connections() >= limits.max_connections as usize {
            // At the cap: refused at once (QUIC has no idle connection
            // to close instead, as TCP listeners do).
            incoming.refuse();
            continue;
        }
        let (handler, shutdown) = (Arc::clone(&handler), shutdown.clone());
        tasks.spawn(async move {
            let peer = incoming.remote_address();
            match tokio::time::timeout(limits.header_read_timeout, incoming).await {
                Ok(Ok(conn)) => {
                    if let Err(e) = connection(handler, conn, limits, shutdown).await {
                        tracing::debug!(%peer, error = %e, "HTTP/3 connection ended");
                    }
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "QUIC handshake failed"),
                Err(_) => tracing::debug!(%peer, "QUIC handshake timed out"),
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    // No new connections; those open finish their requests.
    endpoint.set_server_config(None);
    let grace = limits.shutdown_grace;
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        tasks.abort_all();
    }
    endpoint.close(quinn::VarInt::from_u32(0x100), b"shutting down"); // H3_NO_ERROR
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// One QUIC connection: HTTP/3 in, the in-memory HTTP/2 connection to the
/// handler, answers back.
async fn connection<H: Handler>(
    handler: Arc<H>,
    conn: quinn::Connection,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let info = Conn { peer: conn.remote_address(), secure: true, http3: true, sendfile: None, interim: None };
    let (near, far) = tokio::io::duplex(BRIDGE_BUFFER);
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (handler, info) = (Arc::clone(&handler), info.clone());
        async move { Ok::<_, Infallible>(handler.call(req.map(crate::RequestBody::hyper), info).await) }
    });
    let server = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(limits.quic_streams)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .serve_connection(TokioIo::new(far), service);
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::debug!(error = %e, "HTTP/3 bridge ended");
        }
    });
    let (sender, bridge) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_reset_streams(limits.quic_streams as usize)
        .handshake::<_, RequestBody>(TokioIo::new(near))
        .await?;
    tokio::spawn(async move {
        let _ = bridge.await;
    });

    let quic = conn.clone();
    let mut h3 = h3::server::builder()
        .max_field_section_size(limits.max_header_bytes)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await?;
    let mut inflight = tokio::task::JoinSet::new();
    let mut draining = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled(), if !draining => {
                // GOAWAY: the client starts nothing new here.
                draining = true;
                h3.shutdown(0).await?;
            }
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let sender = sender.clone();
                    inflight.spawn(async move {
                        if let Err(e) = exchange(resolver, sender).await {
                            tracing::debug!(error = %e, "HTTP/3 request ended early");
                        }
                    });
                }
                Ok(None) => break,
                Err(e) if e.is_h3_no_error() => break,
                Err(e) => return Err(e.into()),
            },
        }
        if draining && inflight.is_empty() {
            // Every request answered: give the client a moment to take the
            // last bytes and close by itself, then close rather than wait.
            let _ = tokio::time::timeout(LINGER, h3.accept()).await;
            quic.close(quinn::VarInt::from_u32(0x100), b"");
            return Ok(());
        }
    }
    while inflight.join_next().await.is_some() {}
    Ok(())
}

type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// One request: read it, send it over the bridge, answer with what comes
/// back, body frame by body frame.
async fn exchange(
    resolver: Resolver,
    mut sender: hyper::client::conn::http2::SendRequest<RequestBody>,
) -> Result<(), BoxError> {
    let (req, stream) = resolver.resolve_request().await?;
    let (mut send, mut recv) = stream.split();
    let (tx, rx) = mpsc::channel(4);
    let (parts, ()) = req.into_parts();
    let pump = async move {
        loop {
            match recv.recv_data().await {
                Ok(Some(mut chunk)) => {
                    let bytes = chunk.copy_to_bytes(chunk.remaining());
                    if tx.send(Ok(Frame::data(bytes))).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    if let Ok(Some(trailers)) = recv.recv_trailers().await {
                        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                    }
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(Box::new(e) as BoxError)).await;
                    return;
                }
            }
        }
    };
    let ask = async move {
        sender.ready().await?;
        let resp = sender.send_request(Request::from_parts(parts, RequestBody(rx))).await?;
        Ok::<_, BoxError>(resp)
    };
    let (resp, ()) = tokio::join!(ask, pump);
    let (parts, mut body) = resp?.into_parts();
    send.send_response(Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => send.send_data(data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}

/// An HTTP/3 request's body as it arrives, for the bridge.
struct RequestBody(mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx)
    }
}
