//! DNS over TCP (RFC 7766): length-prefixed queries on a connection the
//! client keeps while it asks. Answered whole by the full handler.
//!
//! Connections are capped, in all and per client network, so clients that
//! hold them open (one query every few seconds keeps a connection) cannot
//! use up the node's file descriptors and with them the TCP fallback that
//! truncated UDP answers rely on. A connection over a cap is closed at
//! once; one that sends no whole query within [`IDLE`] is closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::GeoDns;
use super::limit::network;

/// Most connections open at once.
pub(super) const MAX_CONNECTIONS: usize = 1024;
/// Most connections open at once from one client network (IPv4 /24,
/// IPv6 /56): a resolver farm behind one network keeps a few each.
pub(super) const MAX_PER_NETWORK: usize = 64;
/// A connection must bring its next whole query within this.
const IDLE: Duration = Duration::from_secs(5);
/// How long an answer may take to be written.
const WRITE: Duration = Duration::from_secs(5);
/// A pause after `accept` fails for want of descriptors, so the loop does
/// not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connections open, in all and per network.
#[derive(Debug, Default)]
struct Open {
    all: usize,
    by_network: HashMap<[u8; 8], usize>,
}

/// A place among the open connections, given back when dropped.
struct Place {
    open: Arc<Mutex<Open>>,
    network: [u8; 8],
}

impl Place {
    fn take(open: &Arc<Mutex<Open>>, ip: IpAddr) -> Option<Place> {
        let network = network(ip);
        let mut o = open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = o.by_network.get(&network).copied().unwrap_or(0);
        if o.all >= MAX_CONNECTIONS || mine >= MAX_PER_NETWORK {
            return None;
        }
        o.all += 1;
        o.by_network.insert(network, mine + 1);
        Some(Place { open: Arc::clone(open), network })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(|p| p.into_inner());
        o.all -= 1;
        if let Some(n) = o.by_network.get_mut(&self.network) {
            *n -= 1;
            if *n == 0 {
                o.by_network.remove(&self.network);
            }
        }
    }
}

/// Serves TCP on `listener` until `stop`.
pub(super) async fn serve(dns: Arc<GeoDns>, listener: TcpListener, stop: CancellationToken) {
    let open = Arc::new(Mutex::new(Open::default()));
    let mut refused_logged = false;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (conn, src) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (or another passing failure): wait,
                // rather than fail the same call at full speed.
                tracing::warn!(error = %e, "DNS over TCP: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(place) = Place::take(&open, src.ip()) else {
            if !std::mem::replace(&mut refused_logged, true) {
                tracing::warn!(client = %src, "DNS over TCP: connections at their cap; new ones are closed");
            }
            metrics::counter!("outpost_dns_tcp_refused_total").increment(1);
            continue;
        };
        refused_logged = false;
        let (dns, stop) = (Arc::clone(&dns), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = answer(&dns, conn, src) => {}
            }
            drop(place);
        });
    }
}

/// Answers the queries of one connection in turn, until it closes, goes
/// quiet for [`IDLE`] or sends what is not a query.
async fn answer(dns: &GeoDns, mut conn: TcpStream, src: SocketAddr) {
    let mut query = Vec::new();
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(IDLE, conn.read_u16()).await else { return };
        query.resize(usize::from(len), 0);
        if !matches!(tokio::time::timeout(IDLE, conn.read_exact(&mut query)).await, Ok(Ok(_))) {
            return;
        }
        let Some(reply) = super::udp::answer_full_over(dns, &query, src, Protocol::Tcp).await else { return };
        let Ok(len) = u16::try_from(reply.len()) else { return };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if !matches!(tokio::time::timeout(WRITE, conn.write_all(&framed)).await, Ok(Ok(()))) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_per_network_and_given_back() {
        let open = Arc::new(Mutex::new(Open::default()));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let held: Vec<Place> =
            (0..MAX_PER_NETWORK).map(|i| Place::take(&open, ip(&format!("192.0.2.{i}"))).unwrap()).collect();
        assert!(Place::take(&open, ip("192.0.2.250")).is_none(), "the network is at its cap");
        assert!(Place::take(&open, ip("::ffff:192.0.2.9")).is_none(), "mapped or not, one network");
        let other = Place::take(&open, ip("198.51.100.1")).expect("another network has its own");
        drop(held);
        assert!(Place::take(&open, ip("192.0.2.1")).is_some(), "places come back");
        drop(other);
        let o = open.lock().unwrap();
        assert_eq!((o.all, o.by_network.len()), (0, 0));
    }
}
