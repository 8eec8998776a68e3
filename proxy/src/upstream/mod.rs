//! The next tier, and every request sent to it: which upstream a request
//! goes to ([`Route`]), the request itself ([`request`]: the client's fields
//! less what must not be forwarded, plus ours), sending it with retries and
//! health reports ([`Upstream`]), the pooled HTTP client
//! ([`UpstreamClient`]), and how an exchange fails ([`UpstreamError`]).

pub mod error;
mod http2;
pub mod request;
mod send;

pub use error::{BoxError, ClientBodyError, UpstreamError, UpstreamErrorKind};
pub use send::Upstream;

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use outpost_config::Site;
use outpost_net::RecvBody;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::key::Key;
use crate::tls::UpstreamTls;
use crate::tls::client::{Connector, Dial};

/// Request bodies sent upstream.
pub type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

/// Idle upstream connections are kept this long for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream host.
const POOL_MAX_IDLE_PER_HOST: usize = 256;

/// One place a request can be sent.
#[derive(Debug, Clone)]
pub struct Target {
    /// Scheme and authority: `http://127.0.0.1:9000`.
    pub base: Uri,
    /// Host header to send; the client's when `None`.
    pub host: Option<String>,
    pub connect_timeout: Duration,
    /// Time the target has to acknowledge what was sent to it before the
    /// link counts as cut (see [`Dial::link`]).
    pub link_timeout: Duration,
    /// Time allowed for the response head.
    pub response_timeout: Duration,
    /// For logs and metrics: `origin` or the shield's name.
    pub label: Arc<str>,
    /// Caps requests in flight to this target; more wait in line.
    pub limit: Option<Arc<Semaphore>>,
    /// A CA trusted for this target besides the node's (https only).
    pub ca: Option<PathBuf>,
    /// Speak HTTP/2 to it: over TLS when its handshake (ALPN) says it
    /// does, in cleartext from the first byte (another Outpost tier, which
    /// accepts it); HTTP/1.1 when it does not.
    pub http2: bool,
    /// A shield of this node's fleet, which is told how far the node has
    /// followed the control plane (`Outpost-Seq`); an origin is not.
    pub shield: bool,
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.base == other.base && self.host == other.host && self.label == other.label
    }
}

impl Eq for Target {}

impl Target {
    /// How connections to it are made and kept.
    pub fn dial(&self) -> Dial {
        Dial { connect: self.connect_timeout, link: Some(self.link_timeout) }
    }

    /// The site's origins, in configured order.
    pub fn origins(site: &Site) -> Vec<Target> {
        site.origins.iter().map(Target::origin).collect()
    }

    /// One of a site's origins, without a cap on requests in flight.
    pub fn origin(o: &outpost_config::Origin) -> Target {
        Target {
            base: o.url.clone(),
            host: o.host.clone(),
            connect_timeout: o.connect_timeout,
            link_timeout: o.link_timeout,
            response_timeout: o.response_timeout,
            label: Arc::from("origin"),
            limit: None,
            ca: o.ca.clone(),
            // Offered in the TLS handshake, which the origin answers with
            // what it speaks; never assumed in cleartext.
            http2: o.http2 && o.url.scheme_str() == Some("https"),
            shield: false,
        }
    }
}

/// Chooses the upstream for a request. Edges route to shields (or origins);
/// shields route to origins.
pub trait Route: Send + Sync + Debug + 'static {
    /// Targets to try, best first. The first that answers is used. `key`
    /// is the request's placement (`RequestKey::placement`), alike on every
    /// node.
    fn targets(&self, site: &Site, key: Key) -> Vec<Target>;
    /// What happened when `target` was tried (for passive health).
    fn report(&self, _target: &Target, _ok: bool) {}
    /// Does `resp` show `target` well? By default, [`status_well`].
    fn answered_well(&self, _target: &Target, resp: &Response<RecvBody>) -> bool {
        status_well(resp.status())
    }
    /// `resp` is `target` saying it could not reach its own upstream (a
    /// shield cut off from the origin), or failing of itself: another
    /// target may answer, so an idempotent request without a body tries the
    /// next one. By default, never.
    fn passed_on_fault(&self, _site: &Site, _target: &Target, _resp: &Response<RecvBody>) -> bool {
        false
    }
    /// `target` gave no answer in time to a request of `site`.
    fn no_answer(&self, _site: &Site, target: &Target) {
        self.report(target, false);
    }
    /// Why the node cannot fill misses as it should (every upstream of a
    /// kind down), for the registry; empty when it can.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
    /// The node's sites changed (and at start): learn their upstreams.
    fn sites_changed(&self, _sites: &[Arc<Site>]) {}
    /// Starts background work (health probes) until `shutdown`.
    fn start(self: Arc<Self>, _shutdown: CancellationToken, _probes: Probes) {}
}

/// Any status but a 5xx shows an upstream well; a 508 says the request
/// looped (a configuration mistake), not that the upstream is unwell.
pub fn status_well(status: http::StatusCode) -> bool {
    !status.is_server_error() || status == http::StatusCode::LOOP_DETECTED
}

/// Straight to the site's origins.
#[derive(Debug, Default)]
pub struct OriginRoute;

impl Route for OriginRoute {
    fn targets(&self, site: &Site, _key: Key) -> Vec<Target> {
        Target::origins(site)
    }
}

impl UpstreamClient {
    fn h1_only(&self, target: &Target, name: &str) -> bool {
        let key = H2Key::of(target, name);
        let mut map = self.h1_only.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(since) if since.elapsed() < H1_FALLBACK => true,
            Some(_) => {
                map.remove(&key);
                false
            }
            None => false,
        }
    }

    /// A stream's place on an open HTTP/2 connection to the target with
    /// one free, or on a new one. However many requests ask at once, one
    /// connection is made at a time: the others wait for it. With
    /// [`MAX_H2_CONNS`] open and every stream taken, or when another cannot
    /// be made, a place on the one with the fewest streams open: the
    /// request waits there for one to end.
    async fn h2_conn(&self, target: &Target, name: &str) -> Result<http2::Slot, H2Failure> {
        let key = H2Key::of(target, name);
        // A connection that could not be made is not tried again for a
        // while when others are open: requests take turns on those.
        let backing_off = || {
            let failed = self.h2_failed.lock().unwrap_or_else(|p| p.into_inner());
            failed.get(&key).is_some_and(|at| at.elapsed() < H2_CONNECT_BACKOFF)
        };
        // A free place; or, with `full`, the least busy when no free one.
        let pick = |full: bool| {
            let conns = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            let open: Vec<&http2::Conn> = conns.get(&key).into_iter().flatten().filter(|c| !c.is_closed()).collect();
            if let Some(slot) = open.iter().find_map(|c| c.free_slot()) {
                return Some(slot);
            }
            let full = full || open.len() >= MAX_H2_CONNS;
            full.then(|| open.into_iter().min_by_key(|c| c.streams_open()).map(http2::Conn::slot)).flatten()
        };
        if let Some(slot) = pick(backing_off()) {
            return Ok(slot);
        }
        let gate = {
            let mut gates = self.h2_gates.lock().unwrap_or_else(|p| p.into_inner());
            // Gates no one holds or waits on go with the connections that
            // closed: a target no longer asked leaves nothing behind.
            gates.retain(|_, g| Arc::strong_count(g) > 1);
            Arc::clone(gates.entry(key.clone()).or_default())
        };
        let _one = gate.lock().await;
        if let Some(slot) = pick(backing_off()) {
            return Ok(slot);
        }
        match self.h2_connect(target, name, key.clone()).await {
            Ok(conn) => {
                self.h2_failed.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                Ok(conn.slot())
            }
            // Those open still take requests, in turn.
            Err(e) => {
                let mut failed = self.h2_failed.lock().unwrap_or_else(|p| p.into_inner());
                failed.retain(|_, at| at.elapsed() < H2_CONNECT_BACKOFF);
                failed.insert(key.clone(), Instant::now());
                drop(failed);
                pick(true).ok_or(e)
            }
        }
    }

    /// A new HTTP/2 connection to `target`, kept for the requests after.
    /// Over TLS, HTTP/2 is offered with ALPN beside HTTP/1.1, and a target
    /// that picks HTTP/1.1 is [`H2Failure::NotOffered`].
    async fn h2_connect(&self, target: &Target, name: &str, key: H2Key) -> Result<http2::Conn, H2Failure> {
        let tls = target.base.scheme_str() == Some("https");
        let (ca, resolve, dial) = (target.ca.as_deref(), self.resolve.clone(), target.dial());
        let mut connector =
            if tls { self.tls.connector_h2(ca, resolve, dial) } else { self.tls.connector(ca, resolve, dial) };
        let connect = |e| H2Failure::Error(UpstreamError::new(UpstreamErrorKind::Connect, name).caused_by(e));
        let io = tower_service::Service::call(&mut connector, target.base.clone()).await.map_err(connect)?;
        if tls && !hyper_util::client::legacy::connect::Connection::connected(&io).is_negotiated_h2() {
            return Err(H2Failure::NotOffered);
        }
        let conn = http2::Conn::handshake(TokioIo::new(io), tls, self.h2_idle).await.map_err(|e| connect(e.into()))?;
        // Another connection to a target an open one has shown speaks
        // HTTP/2 is not taken for a refusal if it breaks before its first
        // answer (a connection only taken to be proven shows nothing).
        let shown = {
            let conns = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            conns.get(&key).is_some_and(|open| open.iter().any(|c| !c.is_closed() && c.has_shown()))
        };
        if shown {
            conn.assume_proven();
        }
        let mut conns = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|_, open| {
            open.retain(|c| !c.is_closed());
            !open.is_empty()
        });
        conns.entry(key).or_default().push(conn.clone());
        Ok(conn)
    }

    /// `req` over `conn` (a new connection when it has closed since). Its
    /// `Host` becomes the `:authority`.
    async fn send_h2(
        &self,
        target: &Target,
        name: &str,
        slot: http2::Slot,
        req: Request<ReqBody>,
        bodyless: bool,
    ) -> Result<Response<RecvBody>, H2Failure> {
        let conn = slot.conn.clone();
        let protocol = |e: BoxError| {
            let kind = match error::client_body_error(&*e) {
                Some(c) => UpstreamErrorKind::ClientBody { too_large: c.too_large },
                None if error::link_cut(&*e) => UpstreamErrorKind::Connect,
                None => UpstreamErrorKind::Protocol,
            };
            H2Failure::Error(UpstreamError::new(kind, name).caused_by(e))
        };
        let (mut parts, body) = req.into_parts();
        let authority = parts.headers.remove(http::header::HOST);
        let authority = authority.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(name);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let scheme = target.base.scheme_str().unwrap_or("http");
        parts.uri =
            format!("{scheme}://{authority}{path}").parse().map_err(|e: http::uri::InvalidUri| protocol(e.into()))?;
        let again = bodyless.then(|| parts.clone());
        let stall = target.response_timeout;
        let sent = match slot.send(Request::from_parts(parts, body), stall).await {
            // Closed since it was made: a new connection, once.
            Err(http2::SendError::Closed(req, _)) if conn.is_proven() => {
                self.h2_conn(target, name).await?.send(*req, stall).await
            }
            sent => sent,
        };
        match sent {
            Ok(resp) => Ok(resp),
            // Closed before it answered anything: the target does not
            // speak HTTP/2 (one that reads the preface as a bad HTTP/1
            // request and hangs up); another connection would be refused
            // the same.
            Err(e) if !conn.is_proven() && e.is_refusal() => Err(H2Failure::Refused(e.into_cause())),
            // Never taken: a request without a body goes again on a new
            // connection, once.
            Err(http2::SendError::Closed(_, e) | http2::SendError::Unsent(e)) => match again {
                Some(parts) => {
                    let empty = http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync();
                    let slot = self.h2_conn(target, name).await?;
                    slot.send(Request::from_parts(parts, empty), stall).await.map_err(|e| protocol(e.into_cause()))
                }
                None => Err(protocol(e.into())),
            },
            Err(http2::SendError::Broke(e)) => Err(protocol(e)),
        }
    }

    /// Asks `name` in HTTP/1.1 for [`H1_FALLBACK`].
    fn use_h1(&self, target: &Target, name: &str, why: &dyn std::fmt::Display) {
        tracing::info!(upstream = %name, %why, "the upstream does not speak HTTP/2; using HTTP/1.1");
        self.h1_only.lock().unwrap_or_else(|p| p.into_inner()).insert(H2Key::of(target, name), Instant::now());
    }
}

/// A client for health probes.
pub type ProbeClient = Client<Connector, http_body_util::Empty<Bytes>>;

/// Clients kept per key, each with the TLS configuration it connects with,
/// and made again once that configuration is another (a site's extra CA
/// file changed or appeared): connections made after that trust what the
/// file says now, and the pool of the old ones goes with the old client.
#[derive(Debug)]
struct Kept<K, C>(Mutex<HashMap<K, (Arc<rustls::ClientConfig>, C)>>);

impl<K: std::hash::Hash + Eq, C: Clone> Kept<K, C> {
    fn new() -> Kept<K, C> {
        Kept(Mutex::new(HashMap::new()))
    }

    fn get(&self, key: K, config: Arc<rustls::ClientConfig>, make: impl FnOnce(Arc<rustls::ClientConfig>) -> C) -> C {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((made_with, client)) = kept.get(&key)
            && Arc::ptr_eq(made_with, &config)
        {
            return client.clone();
        }
        let client = make(Arc::clone(&config));
        kept.insert(key, (config, client.clone()));
        client
    }
}

/// Makes health-probe clients that connect as requests do: same resolver,
/// same TLS trust and client certificate.
#[derive(Debug, Clone)]
pub struct Probes {
    tls: Arc<UpstreamTls>,
    resolve: crate::resolve::Resolve,
    /// One per CA and connect timeout, so checks reuse connections.
    clients: Arc<Kept<(Option<PathBuf>, Duration), ProbeClient>>,
}

impl Probes {
    /// A client for upstreams trusting `extra_ca` besides the node's roots.
    pub fn client(&self, extra_ca: Option<&std::path::Path>, connect_timeout: Duration) -> ProbeClient {
        let config = self.tls.config(extra_ca);
        self.clients.get((extra_ca.map(PathBuf::from), connect_timeout), config, |config| {
            let dial = Dial::connect(connect_timeout);
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_timer(TokioTimer::new())
                .build(crate::tls::client::connector(config, self.resolve.clone(), dial))
        })
    }
}

/// Connections are pooled per way of dialling and extra CA.
type PoolKey = (Dial, Option<PathBuf>);

/// HTTP/2 connections one node keeps to one target at most. A request
/// goes on the first with a stream free; with every stream of each taken,
/// another is made: a shield allows 256 on one, and slow clients of
/// answers passed through, each holding its stream until it has read the
/// answer, would otherwise hold up every other request to that shield.
const MAX_H2_CONNS: usize = 8;
/// After a connection to a target could not be made, how long requests
/// finding those open full wait on one of them rather than each trying to
/// make another, in turn, at a connect timeout each.
const H2_CONNECT_BACKOFF: Duration = Duration::from_secs(5);

/// Pooled keep-alive clients, one per connect timeout and CA in use.
#[derive(Debug)]
pub struct UpstreamClient {
    resolve: crate::resolve::Resolve,
    tls: Arc<UpstreamTls>,
    clients: Kept<PoolKey, Client<Connector, ReqBody>>,
    probe_clients: Arc<Kept<(Option<PathBuf>, Duration), ProbeClient>>,
    /// The HTTP/2 connections to each target that speaks it, every
    /// request to it multiplexed on the first with a stream free (one,
    /// unless its streams are taken: see [`MAX_H2_CONNS`]).
    h2: Mutex<HashMap<H2Key, Vec<http2::Conn>>>,
    /// Held while a target's HTTP/2 connection is being made.
    h2_gates: Mutex<HashMap<H2Key, Arc<tokio::sync::Mutex<()>>>>,
    /// When a connection to a target could not be made last
    /// ([`H2_CONNECT_BACKOFF`]).
    h2_failed: Mutex<HashMap<H2Key, Instant>>,
    /// Targets that did not answer in HTTP/2, and since when: asked in
    /// HTTP/1.1 for [`H1_FALLBACK`].
    h1_only: Mutex<HashMap<H2Key, Instant>>,
    /// How long an HTTP/2 connection with no stream open is kept.
    h2_idle: Duration,
}

/// What requests share an HTTP/2 connection: the same scheme and
/// authority and, over TLS, the same extra CA. A connection whose
/// certificate one site's CA vouched for is never used for a site that
/// does not trust that CA, and a cleartext one never for `https`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct H2Key {
    tls: bool,
    authority: String,
    ca: Option<PathBuf>,
}

impl H2Key {
    fn of(target: &Target, authority: &str) -> H2Key {
        let tls = target.base.scheme_str() == Some("https");
        H2Key { tls, authority: authority.to_string(), ca: target.ca.clone().filter(|_| tls) }
    }
}

/// How long a target that did not answer in HTTP/2 is asked in HTTP/1.1
/// before HTTP/2 is tried again.
const H1_FALLBACK: Duration = Duration::from_secs(300);

/// How making or using an HTTP/2 connection failed.
enum H2Failure {
    /// For good, as said.
    Error(UpstreamError),
    /// The target's TLS handshake chose HTTP/1.1.
    NotOffered,
    /// A request on a connection that has not answered one yet failed: the
    /// target does not speak HTTP/2.
    Refused(BoxError),
}

impl Default for UpstreamClient {
    fn default() -> Self {
        UpstreamClient::new(Arc::new(UpstreamTls::default()))
    }
}

impl UpstreamClient {
    pub fn new(tls: Arc<UpstreamTls>) -> UpstreamClient {
        UpstreamClient {
            resolve: crate::resolve::Resolve::system(),
            tls,
            clients: Kept::new(),
            probe_clients: Arc::new(Kept::new()),
            h2: Mutex::new(HashMap::new()),
            h2_gates: Mutex::new(HashMap::new()),
            h2_failed: Mutex::new(HashMap::new()),
            h1_only: Mutex::new(HashMap::new()),
            h2_idle: POOL_IDLE_TIMEOUT,
        }
    }

    /// Clients for health probes, with the same TLS settings and resolver.
    pub fn probes(&self) -> Probes {
        Probes { tls: Arc::clone(&self.tls), resolve: self.resolve.clone(), clients: Arc::clone(&self.probe_clients) }
    }

    fn client(&self, dial: Dial, ca: Option<&PathBuf>) -> Client<Connector, ReqBody> {
        let config = self.tls.config(ca.map(PathBuf::as_path));
        self.clients.get((dial, ca.cloned()), config, |config| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
                .pool_timer(TokioTimer::new())
                .build(crate::tls::client::connector(config, self.resolve.clone(), dial))
        })
    }

    /// Sends `req` (whose URI is origin-form) to `target`, waiting at most
    /// the target's response timeout for the head.
    pub async fn send(&self, target: &Target, mut req: Request<ReqBody>) -> Result<Response<RecvBody>, UpstreamError> {
        let name = target.base.authority().map_or_else(String::new, |a| a.to_string());
        if target.http2 && !self.h1_only(target, &name) {
            let deadline = tokio::time::Instant::now() + target.response_timeout;
            let conn = match tokio::time::timeout_at(deadline, self.h2_conn(target, &name)).await {
                Err(_) => return Err(UpstreamError::new(UpstreamErrorKind::Timeout, name)),
                Ok(Ok(conn)) => Some(conn),
                Ok(Err(H2Failure::NotOffered)) => {
                    self.use_h1(target, &name, &"its TLS handshake chose HTTP/1.1");
                    None
                }
                Ok(Err(H2Failure::Error(e))) => return Err(e),
                Ok(Err(H2Failure::Refused(e))) => {
                    return Err(UpstreamError::new(UpstreamErrorKind::Protocol, name).caused_by(e));
                }
            };
            if let Some(conn) = conn {
                // A request without a body can be sent again over a new
                // connection when it never went; in HTTP/1.1, when its
                // method is idempotent (a target that does not speak
                // HTTP/2 may have acted on it).
                let bodyless = http_body::Body::size_hint(req.body()).exact() == Some(0);
                let again = (bodyless && req.method().is_idempotent()).then(|| {
                    let (method, uri, headers) = (req.method().clone(), req.uri().clone(), req.headers().clone());
                    (method, uri, headers, req.extensions().clone())
                });
                let used = conn.conn.clone();
                let sent = tokio::time::timeout_at(deadline, self.send_h2(target, &name, conn, req, bodyless)).await;
                let refused = match sent {
                    Err(_) => {
                        // No answer in time: the connection may be dead.
                        used.check();
                        return Err(UpstreamError::new(UpstreamErrorKind::Timeout, name));
                    }
                    Ok(Ok(resp)) => return Ok(resp),
                    Ok(Err(H2Failure::Error(e))) => return Err(e),
                    Ok(Err(H2Failure::NotOffered)) => {
                        return Err(UpstreamError::new(UpstreamErrorKind::Protocol, name));
                    }
                    Ok(Err(H2Failure::Refused(e))) => e,
                };
                self.use_h1(target, &name, &refused);
                let Some((method, uri, headers, extensions)) = again else {
                    return Err(UpstreamError::new(UpstreamErrorKind::Protocol, name).caused_by(refused));
                };
                req = Request::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync());
                *req.method_mut() = method;
                *req.uri_mut() = uri;
                *req.headers_mut() = headers;
                *req.extensions_mut() = extensions;
            }
        }
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("{}://{}{}", target.base.scheme_str().unwrap_or("http"), name, path);
        *req.uri_mut() = uri.parse().map_err(|e: http::uri::InvalidUri| {
            UpstreamError::new(UpstreamErrorKind::Protocol, name.as_str()).caused_by(e)
        })?;
        let client = self.client(target.dial(), target.ca.as_ref());
        match tokio::time::timeout(target.response_timeout, client.request(req)).await {
            Err(_) => Err(UpstreamError::new(UpstreamErrorKind::Timeout, name)),
            Ok(Ok(resp)) => match framing_fault(resp.headers()) {
                Some(why) => Err(UpstreamError::new(UpstreamErrorKind::Protocol, name).caused_by(why)),
                None => Ok(resp.map(RecvBody::hyper)),
            },
            Ok(Err(e)) => {
                let kind = match error::client_body_error(&e) {
                    Some(c) => UpstreamErrorKind::ClientBody { too_large: c.too_large },
                    None if e.is_connect() || error::link_cut(&e) => UpstreamErrorKind::Connect,
                    None => UpstreamErrorKind::Protocol,
                };
                Err(UpstreamError::new(kind, name).caused_by(e))
            }
        }
    }
}

/// What is wrong with an HTTP/1.1 response's framing that hyper lets
/// through: a transfer coding besides chunked, which no request asked for
/// (hyper takes the chunks off and leaves, say, gzip on bytes that would be
/// stored and served as the body itself), or both `Transfer-Encoding` and
/// `Content-Length`, which RFC 9112 §6.3 has handled as an error (the
/// length would be passed on for a body framed otherwise).
fn framing_fault(headers: &http::HeaderMap) -> Option<&'static str> {
    let mut codings = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
        .peekable();
    codings.peek()?;
    if codings.any(|c| !c.eq_ignore_ascii_case(b"chunked")) {
        return Some("a transfer coding other than chunked, which was not asked for");
    }
    headers.contains_key(http::header::CONTENT_LENGTH).then_some("both Transfer-Encoding and Content-Length")
}

#[cfg(test)]
mod framing_tests {
    #[test]
    fn transfer_codings_besides_chunked_and_a_length_beside_them_are_faults() {
        let map = |pairs: &[(&'static str, &'static str)]| -> http::HeaderMap {
            pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
        };
        assert_eq!(super::framing_fault(&map(&[])), None);
        assert_eq!(super::framing_fault(&map(&[("content-length", "5")])), None);
        assert_eq!(super::framing_fault(&map(&[("transfer-encoding", "Chunked")])), None);
        for bad in ["gzip, chunked", "gzip", "chunked, identity"] {
            assert!(super::framing_fault(&map(&[("transfer-encoding", bad)])).is_some(), "{bad}");
        }
        assert!(super::framing_fault(&map(&[("transfer-encoding", "chunked"), ("content-length", "5")])).is_some());
    }
}
