//! HTTP/3: QUIC listeners (quinn) speaking HTTP/3 (the h3 crate), whose
//! requests take the same path as every other: the server's [`Handler`].
//!
//! Each request is a task of its own, which hands it to the handler with
//! its body as the stream delivers it ([`RecvBody`]), sends the interim
//! responses the handler queues while its answer is awaited ([`Interim`],
//! each a HEADERS frame), then the answer, with the head HTTP/2 would send.
//! The cache, `Cache-Status`, access log and metrics are the ones every
//! protocol gets; the handler tells HTTP/3 requests by
//! [`crate::Conn::http3`].
//!
//! Limits: `limits.max_connections` QUIC connections (more are refused),
//! `limits.connections_per_network` from one client network (more are
//! closed once their handshake is done),
//! `limits.quic_streams` requests open at once per connection (the
//! client waits for more: QUIC stream credit), `limits.idle_timeout` of
//! silence closes a connection, handshakes and each request's head must
//! finish within `limits.header_read_timeout`, and header sections are
//! capped at `limits.max_header_bytes`, as is every frame but DATA, as
//! its header passes ([`crate::quic_frames`]: h3 would hold it whole). 0-RTT is off: early data can be replayed by
//! anyone who saw it, and a cache's requests gain little from it.
//!
//! Shutdown: the endpoint stops accepting connections, every connection is
//! told (GOAWAY) to start no new requests, and requests already running
//! finish within `limits.shutdown_grace`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use outpost_config::Limits;
use tokio_util::sync::CancellationToken;

use crate::conn::{Counters, Stream, http2};
use crate::quic_frames::Bounded;
use crate::{BoxError, Conn, Errands, Handler, Interim, RecvBody, ServerConfig};

/// How long a draining connection whose requests are all answered waits for
/// the client to close before closing it: closing at once could drop the
/// last bytes of an answer still unacknowledged.
const LINGER: Duration = Duration::from_secs(1);

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

/// Bytes one request stream may have in flight towards the node.
const QUIC_STREAM_WINDOW: u32 = 256 << 10;
/// Bytes all of a connection's streams may have in flight towards it.
const QUIC_CONNECTION_WINDOW: u32 = 2 << 20;
/// Bytes of a connection's answers sent and not yet acknowledged, at most.
const QUIC_SEND_WINDOW: u64 = 4 << 20;

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
        .max_idle_timeout(Some(limits.idle_timeout.try_into().map_err(io::Error::other)?))
        // HTTP/3 uses no DATAGRAM frames: none is taken (quinn would keep
        // 1.25 MB of them per connection, never read).
        .datagram_receive_buffer_size(None)
        // What a client may have in flight towards us, unread: a stream's
        // worth, and a connection's in all (quinn's default leaves the
        // latter unbounded, 1.25 MB times every stream).
        .stream_receive_window(quinn::VarInt::from_u32(QUIC_STREAM_WINDOW))
        .receive_window(quinn::VarInt::from_u32(QUIC_CONNECTION_WINDOW))
        // What the node keeps of its answers until the client acknowledges
        // it (quinn's default, 10 MB, a client that acknowledges nothing
        // holds as long as it likes, and its sends all seem taken at once,
        // so the minimum rate never applies).
        .send_window(QUIC_SEND_WINDOW);
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
    config: ServerConfig,
    shutdown: CancellationToken,
) {
    let limits = config.limits;
    let counters = Counters::new(&config.name);
    let networks = crate::Networks::new(limits.connections_per_network);
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
        let open = endpoint.open_connections();
        if open >= limits.max_connections as usize {
            // At the cap: refused at once (QUIC has no idle connection
            // to close instead, as TCP listeners do).
            incoming.refuse();
            continue;
        }
        // Past a quarter of the cap, a client proves its address (a Retry
        // round trip) before it costs a handshake and a place: Initial
        // packets from spoofed addresses could otherwise fill them all.
        if open >= limits.max_connections as usize / 4 && !incoming.remote_address_validated() {
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let refused = || {
            let reason = crate::conn::Closed::NetworkCap.as_str();
            metrics::counter!("outpost_connections_closed_total", "node" => config.name.to_string(), "reason" => reason)
                .increment(1);
        };
        // Counted once the address is proved, by a Retry or the handshake:
        // Initial packets from spoofed addresses cannot use up a network's
        // places, nor handshakes left hanging those of the node.
        let peer = incoming.remote_address();
        let proved = match incoming.remote_address_validated().then(|| networks.enter(peer.ip())) {
            Some(None) => {
                refused();
                incoming.refuse();
                continue;
            }
            proved => proved.flatten(),
        };
        let (handler, shutdown, counters) = (Arc::clone(&handler), shutdown.clone(), counters.clone());
        let (networks, node) = (Arc::clone(&networks), Arc::clone(&config.name));
        tasks.spawn(async move {
            match tokio::time::timeout(limits.header_read_timeout, incoming).await {
                Ok(Ok(conn)) => {
                    let Some(_place) = proved.or_else(|| networks.enter(peer.ip())) else {
                        let reason = crate::conn::Closed::NetworkCap.as_str();
                        metrics::counter!("outpost_connections_closed_total", "node" => node.to_string(), "reason" => reason)
                            .increment(1);
                        // H3_EXCESSIVE_LOAD.
                        conn.close(quinn::VarInt::from_u32(0x107), b"too many connections from this network");
                        return;
                    };
                    if let Err(e) = connection(handler, conn, limits, counters, shutdown).await {
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

/// One QUIC connection: each HTTP/3 request answered by the handler on a
/// task of its own.
async fn connection<H: Handler>(
    handler: Arc<H>,
    conn: quinn::Connection,
    limits: Limits,
    counters: Counters,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let errands = Errands::new(limits.fetches_per_connection);
    let info = Conn { peer: conn.remote_address(), secure: true, http3: true, sendfile: None, interim: None, errands };
    let quic = conn.clone();
    // A client that gives no room for the node's control stream would
    // hold the connection here for ever.
    let mut builder = h3::server::builder();
    builder.max_field_section_size(limits.max_header_bytes);
    let setup = builder.build::<_, Bytes>(Bounded::new(h3_quinn::Connection::new(conn), limits.max_header_bytes));
    let mut h3 =
        tokio::time::timeout(limits.header_read_timeout, setup).await.map_err(|_| "HTTP/3 setup timed out")??;
    let mut inflight = tokio::task::JoinSet::new();
    // Answers being sent: they share the minimum rate.
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (mut draining, mut requests) = (false, 0u64);
    // With no request open, a connection is closed after `idle_timeout`
    // even if the client keeps it alive with PINGs: otherwise connections
    // that never ask anything would hold every place.
    let idle = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(idle);
    loop {
        if !inflight.is_empty() {
            idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
        }
        tokio::select! {
            () = &mut idle, if inflight.is_empty() => {
                quic.close(quinn::VarInt::from_u32(0x100), b"idle");
                return Ok(());
            }
            _ = shutdown.cancelled(), if !draining => {
                // GOAWAY: the client starts nothing new here.
                draining = true;
                goaway(&mut h3, limits.send_timeout).await?;
            }
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {
                // Idle from the end of the last request, not its start.
                idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
            }
            accepted = h3.accept() => match accepted {
                // Past the GOAWAY's id: the client takes it as never
                // processed, and may send it again. Refused unanswered.
                Ok(Some(mut resolver)) if draining => {
                    use h3::quic::SendStream as _;
                    resolver.frame_stream.reset(h3::error::Code::H3_REQUEST_REJECTED.value());
                }
                Ok(Some(resolver)) => {
                    requests += 1;
                    if requests >= MAX_REQUESTS && !draining {
                        // h3 keeps each stream that ended before its head
                        // for the connection's life: a client ending
                        // streams at once, in a loop, would grow that
                        // without end. It starts again on a new one.
                        draining = true;
                        goaway(&mut h3, limits.send_timeout).await?;
                    }
                    let (handler, info, counters) = (Arc::clone(&handler), info.clone(), counters.clone());
                    let (stall, head_timeout) = (Pace::of(&limits, Arc::clone(&open)), limits.header_read_timeout);
                    inflight.spawn(async move {
                        if let Err(e) = exchange(resolver, handler, info, counters, stall, head_timeout).await {
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
            // (Not a wait for its next stream, which comes at once from a
            // busy client: closing drops what it has not acknowledged.)
            let _ = tokio::time::timeout(LINGER, quic.closed()).await;
            quic.close(quinn::VarInt::from_u32(0x100), b"");
            return Ok(());
        }
    }
    while inflight.join_next().await.is_some() {}
    // The same for a client that went away first.
    let _ = tokio::time::timeout(LINGER, quic.closed()).await;
    Ok(())
}

type Resolver = h3::server::RequestResolver<Bounded<h3_quinn::Connection>, Bytes>;

/// Requests one HTTP/3 connection is asked, at most: past them it is sent
/// GOAWAY, and the client opens another (nginx's `keepalive_requests`,
/// larger).
pub const MAX_REQUESTS: u64 = 10_000;

/// Sends GOAWAY, within `stall`: a client that gives no credit for the
/// node's control stream would hold it there. Its id is the first request
/// not processed (RFC 9114 section 5.2): the one after the last accepted
/// (h3's `shutdown(0)` names the last accepted itself, which a client
/// could then send again elsewhere, though it is answered here).
async fn goaway(
    h3: &mut h3::server::Connection<Bounded<h3_quinn::Connection>, Bytes>,
    stall: Duration,
) -> Result<(), BoxError> {
    match tokio::time::timeout(stall, h3.shutdown(1)).await {
        Ok(sent) => Ok(sent?),
        Err(_) => Err("the client took no GOAWAY for the send timeout".into()),
    }
}

/// The send timer of one answer over HTTP/3, as over TCP: a send may wait
/// for the client's stream credit up to the send timeout, less what sends
/// waited before since the client last took `send_min_rate` × the send
/// timeout (shared among the connection's answers being sent). Any credit
/// at all used to restart the wait, so a client opening a byte now and
/// then held its answer, and what it keeps alive, for as long as it liked.
struct Pace {
    after: Duration,
    min_take: u64,
    open: Arc<std::sync::atomic::AtomicUsize>,
    waited: Duration,
    taken: u64,
}

impl Pace {
    fn of(limits: &Limits, open: Arc<std::sync::atomic::AtomicUsize>) -> Pace {
        // The same minimum as over HTTP/2.
        let http2::Stall { after, min_take, .. } = http2::Stall::of(limits);
        Pace { after, min_take, open, waited: Duration::ZERO, taken: 0 }
    }

    /// How long the next send may wait.
    fn left(&self) -> Duration {
        self.after.saturating_sub(self.waited)
    }

    /// A send of `len` bytes that took `took`.
    fn sent(&mut self, len: usize, took: Duration) {
        self.waited += took;
        self.taken += len as u64;
        let answers = self.open.load(std::sync::atomic::Ordering::Relaxed).max(1) as u64;
        if self.taken >= self.min_take / answers {
            (self.waited, self.taken) = (Duration::ZERO, 0);
        }
    }
}

/// Most of an answer's body handed to one send (a DATA frame each).
const SEND_PIECE: usize = 16 << 10;

/// Counts an answer among those being sent while it lives.
struct Open(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One request: read its head, hand it to the handler with its body as it
/// arrives, send the interim responses the handler queues while its answer
/// is awaited, then the answer, frame by frame. A client that takes none
/// of it for the send timeout (QUIC's flow control holds every byte of a
/// stream, its heads too), or too little of it ([`Pace`]), has the stream
/// reset; one that sends no whole head within `head_timeout` has it
/// dropped.
async fn exchange<H: Handler>(
    resolver: Resolver,
    handler: Arc<H>,
    info: Conn,
    counters: Counters,
    mut pace: Pace,
    head_timeout: Duration,
) -> Result<(), BoxError> {
    let stall = pace.after;
    // The head within the header timeout, as over TCP.
    let (req, stream) = tokio::time::timeout(head_timeout, resolver.resolve_request())
        .await
        .map_err(|_| "no request head within the header timeout")??;
    let (mut send, recv) = stream.split();
    let (parts, ()) = req.into_parts();
    let declared = http2::declared_length(&parts.headers);
    let (interim, queue) = Interim::stream();
    let conn = Conn { interim: Some(interim), ..info };
    let mut answer = std::pin::pin!(handler.call(Request::from_parts(parts, RecvBody::h3(recv, declared)), conn));
    let resp = loop {
        let next = std::future::poll_fn(|cx| {
            if queue.poll_waiting(cx).is_ready() {
                return Poll::Ready(None);
            }
            answer.as_mut().poll(cx).map(Some)
        })
        .await;
        match next {
            Some(resp) => break resp,
            None => send_interim(&mut send, &queue, &counters, stall).await?,
        }
    };
    // What was queued by now goes just before the answer; nothing after.
    queue.close();
    send_interim(&mut send, &queue, &counters, stall).await?;
    let (mut parts, body) = resp.into_parts();
    http2::answer_head(&mut parts.headers, &body);
    let head = Response::from_parts(parts, ());
    let sent = tokio::time::timeout(stall, send.send_response(head)).await;
    timed(&mut send, sent)?;
    pace.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _open = Open(Arc::clone(&pace.open));
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                // The answer broke off (its upstream failed): the stream is
                // reset, or dropping it would finish it, and the client
                // would take what it got for the whole answer.
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Err(e);
            }
        };
        match frame.into_data() {
            Ok(mut data) => {
                // A piece at a time, so a send's wait measures the client's
                // pace: a frame of megabytes could take longer than the send
                // timeout to go to a client reading at a fair rate.
                while !data.is_empty() {
                    let piece = data.split_to(data.len().min(SEND_PIECE));
                    let (len, started) = (piece.len(), std::time::Instant::now());
                    let sent = tokio::time::timeout(pace.left(), send.send_data(piece)).await;
                    timed(&mut send, sent)?;
                    pace.sent(len, started.elapsed());
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let sent = tokio::time::timeout(pace.left(), send.send_trailers(trailers)).await;
                    timed(&mut send, sent)?;
                    // Trailers end the stream: nothing may follow them.
                    break;
                }
            }
        }
    }
    let sent = tokio::time::timeout(pace.left(), send.finish()).await;
    timed(&mut send, sent)?;
    Ok(())
}

type SendHalf = h3::server::RequestStream<crate::quic_frames::Guarded<h3_quinn::SendStream<Bytes>, Bytes>, Bytes>;

/// A send the client took in time, or the stream reset: it took nothing
/// for the send timeout.
fn timed<T, E: Into<BoxError>>(
    send: &mut SendHalf,
    sent: Result<Result<T, E>, tokio::time::error::Elapsed>,
) -> Result<T, BoxError> {
    match sent {
        Ok(r) => r.map_err(Into::into),
        Err(_) => {
            send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            Err("the client took nothing for the send timeout".into())
        }
    }
}

/// Sends what `queue` holds of interim responses, each a HEADERS frame.
async fn send_interim(
    send: &mut SendHalf,
    queue: &Stream,
    counters: &Counters,
    stall: Duration,
) -> Result<(), BoxError> {
    for (head, source) in queue.take() {
        let sent = tokio::time::timeout(stall, send.send_response(head)).await;
        // Larger than the client takes (its MAX_FIELD_SECTION_SIZE): that
        // one is left out, and the answer still goes.
        if let Ok(Err(h3::error::StreamError::HeaderTooBig { .. })) = sent {
            continue;
        }
        timed(send, sent)?;
        Stream::sent(source, counters);
    }
    Ok(())
}
