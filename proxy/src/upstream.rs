//! The next tier: which upstream a miss goes to ([`Route`]) and the pooled
//! HTTP client that sends it ([`UpstreamClient`]).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use outpost_config::Site;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::key::Key;

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
    fn start(self: Arc<Self>, _shutdown: CancellationToken) {}
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

type Connector = HttpConnector<crate::resolve::Resolve>;

/// Pooled keep-alive clients, one per connect timeout in use.
#[derive(Debug)]
pub struct UpstreamClient {
    resolve: crate::resolve::Resolve,
    clients: Mutex<HashMap<Duration, Client<Connector, ReqBody>>>,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        UpstreamClient { resolve: crate::resolve::Resolve::system(), clients: Mutex::new(HashMap::new()) }
    }
}

impl UpstreamClient {
    fn client(&self, connect_timeout: Duration) -> Client<Connector, ReqBody> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(connect_timeout)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new_with_resolver(self.resolve.clone());
                connector.set_connect_timeout(Some(connect_timeout));
                connector.set_nodelay(true);
                connector.set_keepalive(Some(Duration::from_secs(60)));
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
        let client = self.client(target.connect_timeout);
        match tokio::time::timeout(target.response_timeout, client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(name)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(name)),
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
