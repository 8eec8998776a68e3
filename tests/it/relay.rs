//! A small fault-injecting TCP relay for tests: it forwards connections to
//! a target until cut, when it drops every open connection and refuses new
//! ones (accepts and closes at once), until healed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Cancelled on every cut: ends the connections open at that moment.
    epoch: Arc<std::sync::Mutex<CancellationToken>>,
    _stop: tokio_util::sync::DropGuard,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (c, e, s) = (Arc::clone(&cut), Arc::clone(&epoch), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                if c.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let token = e.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    }
                });
            }
        });
        Relay { addr, cut, epoch, _stop: stop.drop_guard() }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        let mut e = self.epoch.lock().unwrap();
        e.cancel();
        *e = CancellationToken::new();
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::Release);
    }
}
