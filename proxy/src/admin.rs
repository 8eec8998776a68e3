//! The admin listener: `/metrics` (Prometheus) and `/healthz`, for any node
//! that can say how it is ([`Health`]).

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

/// What a node's admin listener reports.
pub trait Health: Send + Sync + 'static {
    /// The `/healthz` document.
    fn health(&self) -> serde_json::Value;
    /// Called before `/metrics` renders, to refresh sampled gauges.
    fn refresh(&self) {}
}

impl Health for Engine {
    fn health(&self) -> serde_json::Value {
        serde_json::json!({"status": "ok", "node": &*self.node, "sites": self.sites().len()})
    }

    fn refresh(&self) {
        self.update_gauges();
    }
}

fn answer(req: &Request<Incoming>, node: &dyn Health) -> Response<Body> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            node.refresh();
            (StatusCode::OK, "text/plain; version=0.0.4", prometheus().render())
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, "application/json", node.health().to_string()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(node: Arc<dyn Health>, listener: TcpListener, shutdown: CancellationToken) -> io::Result<()> {
    let _ = prometheus();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => r?,
        };
        let node = Arc::clone(&node);
        let svc = service_fn(move |req: Request<Incoming>| {
            let r = answer(&req, node.as_ref());
            async move { Ok::<_, std::convert::Infallible>(r) }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
