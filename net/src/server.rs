//! The accept loop: a connection cap that makes room by closing the
//! connection idle the longest, TLS handshakes in each connection's own task
//! (under the header-read timeout, counted from accept), and a graceful
//! shutdown.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_config::Limits;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{Closed, ConnState, conn, serve_connection};
use crate::{Handler, Listener};

/// Pause after a failed accept (out of descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At the cap with every connection busy, how often to look again for one
/// gone idle.
const EVICT_RETRY: Duration = Duration::from_millis(100);

/// Open connections, for making room at the cap.
#[derive(Debug, Default)]
struct Table {
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connection idle the longest (no request in progress).
    fn evict_oldest_idle(&self) -> bool {
        let conns = self.lock();
        let victim = conns.values().filter_map(|c| c.idle_since().map(|t| (t, c))).min_by_key(|(t, _)| *t);
        match victim {
            Some((_, c)) => {
                c.evicting.store(true, Ordering::Release);
                c.evict.cancel();
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
    let base = Instant::now();
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.limits.max_connections as usize));
    let table = Arc::new(Table::default());
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        let (handler, shutdown, tracker, permits, table, config) = (
            Arc::clone(&handler),
            shutdown.clone(),
            tracker.clone(),
            Arc::clone(&permits),
            Arc::clone(&table),
            config.clone(),
        );
        accepting.spawn(async move {
            let mut next_id = 0u64;
            loop {
                // At the cap, the connection idle the longest makes room;
                // while every one is busy, wait for one to end or go idle.
                let permit = loop {
                    if let Ok(p) = Arc::clone(&permits).try_acquire_owned() {
                        break p;
                    }
                    if table.evict_oldest_idle() {
                        metrics::counter!("outpost_connections_evicted_total", "node" => config.name.to_string())
                            .increment(1);
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => break p, Err(_) => return },
                        _ = tokio::time::sleep(EVICT_RETRY) => {}
                    }
                };
                let (stream, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = listener.tcp.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    },
                };
                let accepted = Instant::now();
                let _ = stream.set_nodelay(true);
                let state = Arc::new(ConnState::new(base, accepted));
                next_id += 1;
                let id = next_id;
                table.lock().insert(id, Arc::clone(&state));
                let (handler, shutdown, table, config) =
                    (Arc::clone(&handler), shutdown.clone(), Arc::clone(&table), config.clone());
                let tls = listener.tls.clone().map(TlsAcceptor::from);
                tracker.spawn(async move {
                    let closed = match tls {
                        None => {
                            serve_connection(handler, stream, conn(peer, false), false, state, config.limits, shutdown)
                                .await
                        }
                        Some(acceptor) => {
                            let wait = config.limits.header_read_timeout;
                            let handshake = tokio::select! {
                                _ = shutdown.cancelled() => None,
                                _ = state.evict.cancelled() => None,
                                r = tokio::time::timeout(wait, acceptor.accept(stream)) => Some(r),
                            };
                            match handshake {
                                Some(Ok(Ok(tls))) => {
                                    handler.tls_handshake(true);
                                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                                    let c = conn(peer, true);
                                    serve_connection(handler, tls, c, h2, state, config.limits, shutdown).await
                                }
                                Some(Ok(Err(e))) => {
                                    handler.tls_handshake(false);
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    Closed::Ended
                                }
                                Some(Err(_)) => {
                                    handler.tls_handshake(false);
                                    tracing::debug!(%peer, "TLS handshake not finished in time");
                                    Closed::HeaderTimeout
                                }
                                None => Closed::Shutdown,
                            }
                        }
                    };
                    if closed != Closed::Ended && closed != Closed::Shutdown {
                        metrics::counter!(
                            "outpost_connections_closed_total",
                            "node" => config.name.to_string(),
                            "reason" => closed.as_str()
                        )
                        .increment(1);
                    }
                    table.lock().remove(&id);
                    drop(permit);
                });
            }
        });
    }
    while accepting.join_next().await.is_some() {}
    tracker.close();
    if tokio::time::timeout(config.limits.shutdown_grace, tracker.wait()).await.is_err() {
        tracing::warn!(node = %config.name, "connections still open after the shutdown grace period");
    }
    Ok(())
}

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
