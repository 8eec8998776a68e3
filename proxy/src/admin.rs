//! The admin listener: `/metrics` (Prometheus) and `/healthz`.

use std::io;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::engine::observe::prometheus;
use crate::engine::respond::{Body, full};

fn answer(req: &Request<Incoming>, engine: &Engine) -> Response<Body> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            engine.update_gauges();
            (StatusCode::OK, "text/plain; version=0.0.4", prometheus().render())
        }
        (&Method::GET, "/healthz") => {
            let body = serde_json::json!({"status": "ok", "node": &*engine.node, "sites": engine.sites().len()});
            (StatusCode::OK, "application/json", body.to_string())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(engine: Arc<Engine>, listener: TcpListener, shutdown: CancellationToken) -> io::Result<()> {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => r?,
        };
        let engine = Arc::clone(&engine);
        let svc = service_fn(move |req: Request<Incoming>| {
            let r = answer(&req, &engine);
            async move { Ok::<_, std::convert::Infallible>(r) }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
