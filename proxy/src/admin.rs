//! The admin listener: `/metrics` (Prometheus) and `/healthz`, for any node
//! that can say how it is ([`Health`]).

use std::io;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use outpost_net::RecvBody;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
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
        let problems = self.problems();
        let status = if problems.is_empty() { "ok" } else { "degraded" };
        serde_json::json!({"status": status, "node": &*self.node, "sites": self.sites().len(), "problems": problems})
    }

    fn refresh(&self) {
        self.update_gauges();
    }
}

fn answer(req: &Request<RecvBody>, node: &dyn Health) -> Response<Body> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            node.refresh();
            (StatusCode::OK, "text/plain; version=0.0.4", outpost_net::metrics::render())
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, "application/json", node.health().to_string()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// The admin endpoints as a server's handler.
struct Admin(Arc<dyn Health>);

impl outpost_net::Handler for Admin {
    fn call(
        self: Arc<Self>,
        req: Request<RecvBody>,
        _conn: outpost_net::Conn,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        std::future::ready(answer(&req, self.0.as_ref()))
    }
}

/// Serves the admin endpoints until `shutdown`, with the node's limits and
/// timeouts like any of its listeners.
pub async fn serve(
    node: Arc<dyn Health>,
    listener: TcpListener,
    config: outpost_net::ServerConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let listeners = vec![outpost_net::Listener { tcp: listener, tls: None }];
    outpost_net::serve(Arc::new(Admin(node)), listeners, config, shutdown).await
}
