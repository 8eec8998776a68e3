//! Every HTTP server in Outpost — edges' and shields' client listeners,
//! their admin listeners, the control plane's API — accepts connections
//! here, so each gets the same defences:
//!
//! - a connection cap that makes room by closing the connection idle the
//!   longest, so idle connections cannot lock new clients out;
//! - a header-read timeout from accept (slowloris, and connections that
//!   never send a byte), an idle timeout between requests, and a send
//!   timeout for clients that stop reading;
//! - an idle HTTP/1 connection parked outside hyper, holding only its
//!   socket until the next request arrives;
//! - TLS handshakes in each connection's own task, under the header-read
//!   timeout;
//! - HTTP/1 request framing followed beside hyper ([`h1`]), so a request
//!   with both `Content-Length` and `Transfer-Encoding` is refused even when
//!   pipelined behind another;
//! - a graceful shutdown that lets open exchanges finish.
//!
//! What a server does with a request is its [`Handler`]'s business.
//!
//! [`control`] is the one client of the control-plane API; [`metrics`]
//! the process's exporter, which the program installs; [`multipart`] the
//! layout of a response with several ranges; [`coding`] content codings
//! (`Accept-Encoding`, gzip, brotli, zstd); [`http2`] what the proxy's
//! upstream HTTP/2 client shares with the server.

mod body;
pub mod coding;
pub mod control;
mod errands;
pub mod h1;
pub mod metrics;
pub mod multipart;
pub mod quic;
mod quic_frames;
pub mod seal;
pub mod sendfile;

mod conn;
mod recv_body;

/// What an HTTP/2 client shares with the server: the proxy's upstream
/// client speaks h2 as the server does.
pub mod http2 {
    pub use crate::conn::http2::{MAX_STREAMS, Stall, declared_length, send_body, strip_connection_fields};
}
mod request_headers;
mod server;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};

use tokio::net::TcpListener;

pub use body::Body;
pub use conn::{Fields, Interim};
pub use errands::{Errand, Errands, Networks};
pub use recv_body::RecvBody;
pub use request_headers::{HeaderLookup, NameSet, RequestHeaders};
pub use server::{ServerConfig, bind, listen, serve};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A bound listener.
#[derive(Debug)]
pub struct Listener {
    pub tcp: TcpListener,
    /// Terminates TLS on accepted connections; cleartext when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The connection a request came on. Handed to the handler with each
/// request, in place of request extensions (which cost allocations on
/// every request).
#[derive(Debug, Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    /// Received over TLS.
    pub secure: bool,
    /// Received over HTTP/3.
    pub http3: bool,
    /// On a cleartext HTTP/1 connection: where a handler queues file
    /// ranges its body frames stand in for.
    pub sendfile: Option<sendfile::SendFile>,
    /// On an HTTP/1.1 request hyper reads, and on an HTTP/2 or HTTP/3 stream: where a handler queues interim
    /// (1xx) responses to send before its answer.
    pub interim: Option<Interim>,
    /// What the handler has running for the connection's requests, that
    /// may outlive them: capped at `limits.fetches_per_connection`.
    pub errands: Errands,
}

/// What a server does with requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn call(self: Arc<Self>, req: Request<RecvBody>, conn: Conn) -> impl Future<Output = Response<Body>> + Send;

    /// Whether [`Handler::answer_now`] answers any request: when it does,
    /// HTTP/1 connections read request heads themselves between requests
    /// and offer the handler those it may answer at once.
    const ANSWERS_NOW: bool = false;

    /// Answers at once, without waiting on anything, a GET or HEAD in
    /// HTTP/1.1 that has no body and asks nothing of the connection (a
    /// hit held in memory, say); `None` leaves the request to
    /// [`Handler::call`]. The response is written as hyper would write it,
    /// with `fields` first: fields the handler may write there itself
    /// rather than in the response's map (empty when it is called; what
    /// it writes there is dropped when it answers `None`, but for interim
    /// responses, [`Fields::early_hints`], which are sent then, before the
    /// request goes to [`Handler::call`]).
    fn answer_now(_this: &Arc<Self>, _req: Request<()>, _conn: &Conn, _fields: &mut Fields) -> Option<Response<Body>> {
        None
    }

    /// Answers a request whose framing cannot be trusted (`why` says how);
    /// the server closes the connection after it. Default: a plain 400.
    fn refuse(
        self: Arc<Self>,
        _req: Request<RecvBody>,
        _conn: Conn,
        why: &'static str,
    ) -> impl Future<Output = Response<Body>> + Send {
        std::future::ready(bad_request(why))
    }

    /// A request too malformed to parse (no method or path to speak of):
    /// the server has answered `status` and closed the connection.
    fn unreadable(&self, _conn: Conn, _status: http::StatusCode) {}

    /// A TLS handshake ended, `took` after the connection was accepted.
    fn tls_handshake(&self, _how: Handshake, _took: std::time::Duration) {}

    /// A new connection's first response byte was written, `took` after
    /// the connection was accepted (`secure`: over TLS).
    fn first_byte(&self, _secure: bool, _took: std::time::Duration) {}
}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// A full handshake: a key exchange and the certificate's signature.
    Full,
    /// A session resumed from a ticket or session id: no signature.
    Resumed,
    Failed,
}

/// An error and its causes, as one line, for logs and messages.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// A plain-text 400 naming what was wrong.
pub fn bad_request(why: &str) -> Response<Body> {
    let mut r = Response::new(Body::full(format!("bad request: {why}\n")));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    r
}

/// Serves a tower service, such as an axum router.
#[derive(Debug, Clone)]
pub struct TowerHandler<S>(pub S);

impl<S, B> Handler for TowerHandler<S>
where
    S: tower_service::Service<Request<RecvBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// The connection rides along as a request extension.
    fn call(self: Arc<Self>, mut req: Request<RecvBody>, conn: Conn) -> impl Future<Output = Response<Body>> + Send {
        req.extensions_mut().insert(conn);
        let mut svc = self.0.clone();
        async move {
            let ready = std::future::poll_fn(|cx| svc.poll_ready(cx)).await;
            let resp = match ready {
                Ok(()) => svc.call(req).await,
                Err(never) => match never {},
            };
            match resp {
                Ok(r) => r.map(Body::new),
                Err(never) => match never {},
            }
        }
    }
}
