//! Client connections: the engine as the handler of an `outpost_net`
//! server, which accepts, terminates TLS, speaks HTTP/1.1 and HTTP/2 (by
//! ALPN over TLS, by preface in cleartext), applies the node's limits and
//! timeouts, and refuses requests whose framing it cannot trust.

use std::future::Future;
use std::sync::Arc;

use http::{Request, Response};
use outpost_net::RecvBody;
use outpost_net::{Conn, Fields, Handler};

pub(crate) use outpost_net::{Listener, bind};

use crate::engine::Engine;
use crate::engine::respond::Body;

impl Handler for Engine {
    fn call(self: Arc<Self>, req: Request<RecvBody>, conn: Conn) -> impl Future<Output = Response<Body>> + Send {
        self.handle(req, conn)
    }

    const ANSWERS_NOW: bool = true;

    fn answer_now(this: &Arc<Self>, req: Request<()>, conn: &Conn, fields: &mut Fields) -> Option<Response<Body>> {
        Engine::answer_now(this, req, conn, fields)
    }

    fn refuse(
        self: Arc<Self>,
        req: Request<RecvBody>,
        conn: Conn,
        why: &'static str,
    ) -> impl Future<Output = Response<Body>> + Send {
        std::future::ready(self.refuse_request(req, Some(conn.peer), why))
    }

    fn unreadable(&self, conn: Conn, status: http::StatusCode) {
        self.unreadable_request(Some(conn.peer), status);
    }

    fn tls_handshake(&self, how: outpost_net::Handshake, took: std::time::Duration) {
        self.metrics.tls_handshake(how, took);
    }

    fn first_byte(&self, secure: bool, took: std::time::Duration) {
        self.metrics.first_byte(secure, took);
    }
}
