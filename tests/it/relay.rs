//! A small fault-injecting TCP relay for tests. It forwards connections to a
//! target and can be told to:
//! - cut: drop every open connection and refuse new ones (accept and close
//!   at once) until healed;
//! - drop mid-stream: end the connections open now, leaving new ones alone;
//! - add latency: hold every chunk for a while before passing it on, both
//!   ways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    latency_ms: Arc<AtomicU64>,
    /// Connections refused while cut.
    refused: Arc<AtomicU64>,
    /// Cancelled on every cut or drop: ends the connections open then.
    epoch: Arc<std::sync::Mutex<CancellationToken>>,
    _stop: tokio_util::sync::DropGuard,
}

/// Copies one direction, each chunk held back by the current latency.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let ms = latency.load(Ordering::Acquire);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        Relay::start_on("127.0.0.1:0".parse().unwrap(), target).await
    }

    /// A relay listening on `listen` (port 0 for any).
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> Relay {
        let listener = TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let latency_ms = Arc::new(AtomicU64::new(0));
        let epoch = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let refused = Arc::new(AtomicU64::new(0));
        let (c, e, s, l, r) =
            (Arc::clone(&cut), Arc::clone(&epoch), stop.clone(), Arc::clone(&latency_ms), Arc::clone(&refused));
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                if c.load(Ordering::Acquire) {
                    r.fetch_add(1, Ordering::Relaxed);
                    drop(client);
                    continue;
                }
                let token = e.lock().unwrap().clone();
                let latency = Arc::clone(&l);
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(target).await else { return };
                    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    let up = pump(cr, uw, Arc::clone(&latency));
                    let down = pump(ur, cw, latency);
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = async { tokio::join!(up, down) } => {}
                    }
                });
            }
        });
        Relay { addr, cut, latency_ms, refused, epoch, _stop: stop.drop_guard() }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.drop_open();
    }

    /// Connections refused while cut, so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::Release);
    }

    /// Ends the connections open now, mid-stream; new ones go through.
    pub fn drop_open(&self) {
        let mut e = self.epoch.lock().unwrap();
        e.cancel();
        *e = CancellationToken::new();
    }

    /// Holds every chunk, both ways, for `latency` (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms.store(latency.as_millis() as u64, Ordering::Release);
    }
}
