//! The floor the cache-hit bench measures Outpost against: a hyper server
//! that answers every request with the same body from memory, on one
//! thread, and does nothing else.
//!
//!     bare_hyper ADDR SIZE_BYTES [multi]
//!
//! `multi` runs it on tokio's multi-threaded runtime, as Outpost runs,
//! instead of the single-threaded one. SIGTERM ends it with an exit, not
//! the signal, so that an instrumented build writes its profile
//! (`load-tests/bench/pgo.sh`).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(size)) = (args.next(), args.next()) else {
        return Err("usage: bare_hyper ADDR SIZE_BYTES".into());
    };
    let body = Bytes::from(vec![b'x'; size.parse()?]);
    let runtime = match args.next().as_deref() {
        Some("multi") => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
    };
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                _ = term.recv() => return Ok(()),
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}
