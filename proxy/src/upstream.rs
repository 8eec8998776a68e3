//! The next tier: which upstream a miss goes to ([`Route`]) and the pooled
//! HTTP client that sends it ([`UpstreamClient`]).

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use outpost_config::Site;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::key::Key;
use crate::tls::UpstreamTls;
use crate::tls::client::Connector;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
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
    /// Time allowed for the response head.
    pub response_timeout: Duration,
    /// For logs and metrics: `origin` or the shield's name.
    pub label: Arc<str>,
    /// Caps requests in flight to this target; more wait in line.
    pub limit: Option<Arc<Semaphore>>,
    /// A CA trusted for this target besides the node's (https only).
    pub ca: Option<PathBuf>,
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.base == other.base && self.host == other.host && self.label == other.label
    }
}

impl Eq for Target {}

impl Target {
    /// The site's origins, in configured order.
    pub fn origins(site: &Site) -> Vec<Target> {
        site.origins
            .iter()
            .map(|o| Target {
                base: o.url.clone(),
                host: o.host.clone(),
                connect_timeout: o.connect_timeout,
                response_timeout: o.response_timeout,
                label: Arc::from("origin"),
                limit: None,
                ca: o.ca.clone(),
            })
            .collect()
    }
}

/// Chooses the upstream for a request. Edges route to shields (or origins);
/// shields route to origins.
pub trait Route: Send + Sync + Debug + 'static {
    /// Targets to try, best first. The first that answers is used.
    fn targets(&self, site: &Site, key: Key) -> Vec<Target>;
    /// What happened when `target` was tried (for passive health).
    fn report(&self, _target: &Target, _ok: bool) {}
    /// The node's sites changed (and at start): learn their upstreams.
    fn sites_changed(&self, _sites: &[Arc<Site>]) {}
    /// Starts background work (health probes) until `shutdown`.
    fn start(self: Arc<Self>, _shutdown: CancellationToken, _probes: Probes) {}
}

/// Straight to the site's origins.
#[derive(Debug, Default)]
pub struct OriginRoute;

impl Route for OriginRoute {
    fn targets(&self, site: &Site, _key: Key) -> Vec<Target> {
        Target::origins(site)
    }
}

/// Why an upstream exchange failed: the upstream side of the error split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {0}")]
    Connect(String),
    #[error("no response from {0} in time")]
    Timeout(String),
    #[error("bad response from {0}: {1}")]
    Protocol(String, String),
    #[error("{0} answered {1}")]
    Status(String, u16),
    #[error("the response body from {0} broke off: {1}")]
    Body(String, String),
    #[error("no upstream is configured for this site")]
    NoTarget,
    /// The client's request body failed while it was being forwarded: the
    /// client's fault, not the upstream's.
    #[error("the request body {}", if *too_large { "is too large" } else { "is malformed" })]
    ClientBody { too_large: bool },
}

/// Marks an error of a client's request body, so a failed exchange can be
/// blamed on the right side.
#[derive(Debug, thiserror::Error)]
#[error("request body: {message}")]
pub struct ClientBodyError {
    pub message: String,
    pub too_large: bool,
}

fn client_body_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientBodyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<ClientBodyError>() {
            return Some(c);
        }
        cur = err.source();
    }
    None
}

impl UpstreamError {
    pub fn as_str(&self) -> &'static str {
        match self {
            UpstreamError::Connect(..) => "connect",
            UpstreamError::Timeout(..) => "timeout",
            UpstreamError::Protocol(..) => "protocol",
            UpstreamError::Status(..) => "status",
            UpstreamError::Body(..) => "body",
            UpstreamError::NoTarget => "no-target",
            UpstreamError::ClientBody { .. } => "client-body",
        }
    }

    /// Failures before any response: a retry elsewhere may succeed (for
    /// idempotent requests). That includes a keep-alive connection the peer
    /// closed just as the request went out.
    pub fn is_retryable(&self) -> bool {
        matches!(self, UpstreamError::Connect(_) | UpstreamError::Timeout(_) | UpstreamError::Protocol(..))
    }
}

/// A client for health probes.
pub type ProbeClient = Client<Connector, http_body_util::Empty<Bytes>>;

/// Makes health-probe clients that connect as requests do: same resolver,
/// same TLS trust and client certificate.
#[derive(Debug, Clone)]
pub struct Probes {
    tls: Arc<UpstreamTls>,
    resolve: crate::resolve::Resolve,
}

impl Probes {
    /// A client for upstreams trusting `extra_ca` besides the node's roots.
    pub fn client(&self, extra_ca: Option<&std::path::Path>, connect_timeout: Duration) -> ProbeClient {
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(self.tls.connector(extra_ca, self.resolve.clone(), connect_timeout))
    }
}

/// Connections are pooled per connect timeout and extra CA.
type PoolKey = (Duration, Option<PathBuf>);

/// Pooled keep-alive clients, one per connect timeout and CA in use.
#[derive(Debug)]
pub struct UpstreamClient {
    resolve: crate::resolve::Resolve,
    tls: Arc<UpstreamTls>,
    clients: Mutex<HashMap<PoolKey, Client<Connector, ReqBody>>>,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        UpstreamClient::new(Arc::new(UpstreamTls::default()))
    }
}

impl UpstreamClient {
    pub fn new(tls: Arc<UpstreamTls>) -> UpstreamClient {
        UpstreamClient { resolve: crate::resolve::Resolve::system(), tls, clients: Mutex::new(HashMap::new()) }
    }

    /// Clients for health probes, with the same TLS settings and resolver.
    pub fn probes(&self) -> Probes {
        Probes { tls: Arc::clone(&self.tls), resolve: self.resolve.clone() }
    }

    fn client(&self, connect_timeout: Duration, ca: Option<&PathBuf>) -> Client<Connector, ReqBody> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry((connect_timeout, ca.cloned()))
            .or_insert_with(|| {
                let connector = self.tls.connector(ca.map(PathBuf::as_path), self.resolve.clone(), connect_timeout);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
                    .pool_timer(TokioTimer::new())
                    .build(connector)
            })
            .clone()
    }

    /// Sends `req` (whose URI is origin-form) to `target`, waiting at most
    /// the target's response timeout for the head.
    pub async fn send(&self, target: &Target, mut req: Request<ReqBody>) -> Result<Response<Incoming>, UpstreamError> {
        let name = target.base.authority().map_or_else(String::new, |a| a.to_string());
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("{}://{}{}", target.base.scheme_str().unwrap_or("http"), name, path);
        *req.uri_mut() = uri.parse().map_err(|e| UpstreamError::Protocol(name.clone(), format!("{e}")))?;
        let client = self.client(target.connect_timeout, target.ca.as_ref());
        match tokio::time::timeout(target.response_timeout, client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(name)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => {
                tracing::debug!(upstream = %name, error = ?e, "cannot connect");
                Err(UpstreamError::Connect(name))
            }
            Ok(Err(e)) if client_body_error(&e).is_some() => {
                Err(UpstreamError::ClientBody { too_large: client_body_error(&e).is_some_and(|c| c.too_large) })
            }
            Ok(Err(e)) => {
                let detail = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
                Err(UpstreamError::Protocol(name, detail))
            }
        }
    }
}
