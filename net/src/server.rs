//! The accept loop: a connection cap that makes room by closing the
//! connection idle the longest, TLS handshakes in each connection's own task
//! (under the header-read timeout, counted from accept), and a graceful
//! shutdown.
//!
//! New connections are taken one per turn of the runtime: after each accept
//! the loop yields until the I/O driver has been polled again, so every
//! connection already open is served between two new ones, as nginx's
//! event loop does with one accept per iteration. Under a flood of TLS
//! handshakes, which cost the server far more CPU than the client,
//! keep-alive requests then wait for at most a turn rather than for
//! every handshake accepted ahead of them; new connections wait in the
//! listener's backlog ([`listen`]), sized so a burst does not overflow it.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_config::Limits;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{Closed, ConnState, Counters, Transport, conn, serve_connection};
use crate::{Conn, Handler, Handshake, Listener};

/// Pause after a failed accept (out of descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At the cap with every connection busy, how often to look again for one
/// gone idle.
const EVICT_RETRY: Duration = Duration::from_millis(100);

/// An open connection.
#[derive(Debug)]
struct Open {
    state: Arc<ConnState>,
}

/// How long a connection just accepted is not closed to make room for
/// another: time for its handshake and its first head to come.
const NEWCOMER_GRACE: Duration = Duration::from_millis(500);

/// Open connections, for making room at the cap.
#[derive(Debug, Default)]
struct Table {
    conns: Mutex<HashMap<u64, Open>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Open>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connection idle the longest (no request in progress);
    /// of those idle since the same tick of the coarse clock, the one
    /// accepted first (ids follow accept order). One just accepted is let
    /// be for [`NEWCOMER_GRACE`]: it is what the place was made for, and
    /// while every other connection is busy it would be the only one idle.
    fn evict_oldest_idle(&self) -> bool {
        let conns = self.lock();
        let victim = conns
            .iter()
            .filter(|(_, o)| o.state.accepted.elapsed() >= NEWCOMER_GRACE)
            .filter_map(|(id, o)| o.state.idle_since().map(|t| ((t, *id), o)))
            .min_by_key(|(t, _)| *t);
        match victim {
            Some((_, o)) => {
                o.state.evicting.store(true, Ordering::Release);
                o.state.close.cancel();
                true
            }
            None => false,
        }
    }
}

/// What a server is called in logs and metrics, and how it is limited.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The node's name: the `node` label of the server's metrics.
    pub name: Arc<str>,
    pub limits: Limits,
}

/// Serves `handler` on `listeners` until `shutdown`, then lets open
/// exchanges finish for up to the shutdown grace.
pub async fn serve<H: Handler>(
    handler: Arc<H>,
    listeners: Vec<Listener>,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let server = Arc::new(Server {
        handler,
        permits: Arc::new(Semaphore::new(config.limits.max_connections as usize)),
        networks: crate::Networks::new(config.limits.connections_per_network),
        table: Table::default(),
        tracker: TaskTracker::new(),
        counters: Counters::new(&config.name),
        config,
        shutdown,
    });
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        accepting.spawn(Arc::clone(&server).accept(listener));
    }
    while accepting.join_next().await.is_some() {}
    server.tracker.close();
    if tokio::time::timeout(server.config.limits.shutdown_grace, server.tracker.wait()).await.is_err() {
        tracing::warn!(node = %server.config.name, "connections still open after the shutdown grace period");
    }
    Ok(())
}

/// What every listener's accept loop and every connection task share.
struct Server<H> {
    handler: Arc<H>,
    permits: Arc<Semaphore>,
    /// Connections open from each client network, and their cap.
    networks: Arc<crate::Networks>,
    table: Table,
    tracker: TaskTracker,
    config: ServerConfig,
    shutdown: CancellationToken,
    counters: Counters,
}

impl<H: Handler> Server<H> {
    /// Accepts on `listener` until shutdown, each connection in its own task.
    ///
    /// A connection from a network that has its
    /// [`connections_per_network`](Limits::connections_per_network) open is
    /// closed at once, before any other is closed to make room for it: a
    /// client network's connections, kept busy, cannot hold every place.
    async fn accept(self: Arc<Self>, listener: Listener) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = listener.tcp.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let Some(place) = self.networks.enter(peer.ip()) else {
                metrics::counter!(
                    "outpost_connections_closed_total",
                    "node" => self.config.name.to_string(),
                    "reason" => Closed::NetworkCap.as_str()
                )
                .increment(1);
                tracing::debug!(%peer, "connection refused: its network has its connections open");
                drop(stream);
                tokio::task::yield_now().await;
                continue;
            };
            let Some(permit) = self.room().await else { return };
            let _ = stream.set_nodelay(true);
            let state = Arc::new(ConnState::new(Instant::now(), &self.shutdown));
            // One count for every listener: the table holds them all.
            let id = self.table.next_id.fetch_add(1, Ordering::Relaxed);
            self.table.lock().insert(id, Open { state: Arc::clone(&state) });
            let tls = listener.tls.clone().map(TlsAcceptor::from);
            let server = Arc::clone(&self);
            self.tracker.spawn(async move {
                let closed = server.connection(stream, peer, tls, state).await;
                if closed != Closed::Ended && closed != Closed::Shutdown {
                    metrics::counter!(
                        "outpost_connections_closed_total",
                        "node" => server.config.name.to_string(),
                        "reason" => closed.as_str()
                    )
                    .increment(1);
                }
                server.table.lock().remove(&id);
                drop((permit, place));
            });
            // One new connection per turn (see the module's notes).
            tokio::task::yield_now().await;
        }
    }

    /// A connection slot. At the cap, the connection idle the longest makes
    /// room; while every one is busy, waits for one to end or go idle.
    /// `None` at shutdown.
    async fn room(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
                return Some(p);
            }
            if self.table.evict_oldest_idle() {
                metrics::counter!("outpost_connections_evicted_total", "node" => self.config.name.to_string())
                    .increment(1);
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                p = Arc::clone(&self.permits).acquire_owned() => return p.ok(),
                _ = tokio::time::sleep(EVICT_RETRY) => {}
            }
        }
    }

    /// One accepted connection, TLS handshake first when the listener has it.
    async fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<TlsAcceptor>,
        state: Arc<ConnState>,
    ) -> Closed {
        let Some(acceptor) = tls else {
            return self.http(stream, conn(peer, false, &self.config.limits), false, state).await;
        };
        // Boxed: a TLS connection's state is several times a cleartext
        // one's, and every connection's task would otherwise be its size.
        Box::pin(self.secure_connection(stream, peer, acceptor, state)).await
    }

    /// HTTP on an accepted connection's stream (`h2`: by ALPN).
    fn http<S: Transport>(
        &self,
        stream: S,
        conn: Conn,
        h2: bool,
        state: Arc<ConnState>,
    ) -> impl Future<Output = Closed> {
        let (limits, counters) = (self.config.limits, self.counters.clone());
        serve_connection(Arc::clone(&self.handler), stream, conn, h2, state, limits, counters)
    }

    /// One accepted connection on a TLS listener: the handshake, then HTTP.
    async fn secure_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        acceptor: TlsAcceptor,
        state: Arc<ConnState>,
    ) -> Closed {
        let handler = &self.handler;
        let handshake = tokio::select! {
            _ = state.close.cancelled() => return Closed::Shutdown,
            r = tokio::time::timeout(self.config.limits.header_read_timeout, acceptor.accept(stream)) => r,
        };
        match handshake {
            Ok(Ok(tls)) => {
                let how = match tls.get_ref().1.handshake_kind() {
                    Some(rustls::HandshakeKind::Resumed) => Handshake::Resumed,
                    _ => Handshake::Full,
                };
                handler.tls_handshake(how, state.accepted.elapsed());
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                self.http(tls, conn(peer, true, &self.config.limits), h2, state).await
            }
            Ok(Err(e)) => {
                handler.tls_handshake(Handshake::Failed, state.accepted.elapsed());
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                Closed::Ended
            }
            Err(_) => {
                handler.tls_handshake(Handshake::Failed, state.accepted.elapsed());
                tracing::debug!(%peer, "TLS handshake not finished in time");
                Closed::HeaderTimeout
            }
        }
    }
}

/// Binds every address with room for `backlog` connections not yet
/// accepted; the error names the address that failed.
pub fn bind(addrs: &[SocketAddr], backlog: u32) -> io::Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        let l = listen(*a, backlog).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
        out.push(l);
    }
    Ok(out)
}

/// A listener on `addr` with room for `backlog` connections not yet
/// accepted. The standard library's backlog (128) overflows under a burst
/// of new connections: the kernel then drops handshakes and clients wait a
/// second or more to retry.
pub fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
