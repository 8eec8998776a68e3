//! What the steps of one request share once its site and key are known,
//! and the shape of their answer.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response};
use outpost_config::Site;
use outpost_net::sendfile::SendFile;
use outpost_net::{Errands, HeaderLookup, Interim, RequestHeaders};

use super::respond::Body;
use super::{Engine, Tier};
use crate::cache_status::{CacheStatus, Outcome};
use crate::error::Error;
use crate::headers::X_FORWARDED_PROTO;
use crate::host::RequestHost;
use crate::key::{RequestKey, Scope};
use crate::upstream::request::FromClient;

/// A response and how this node handled the request.
pub(crate) type Answer = (Response<Body>, CacheStatus);

/// The answer to a request that failed.
pub(crate) fn failed(engine: &Engine, e: Error) -> Answer {
    let outcome = match e.class() {
        crate::error::Class::Client => Outcome::Local,
        _ => Outcome::Error,
    };
    let status = CacheStatus { detail: e.detail(), ..CacheStatus::new(outcome) };
    (e.response(&engine.node), status)
}

/// A request past steps 1 to 4: its site and key are known.
pub(crate) struct Ctx {
    pub(crate) engine: Arc<Engine>,
    pub(crate) site: Arc<Site>,
    pub(crate) rkey: RequestKey,
    pub(crate) method: Method,
    pub(crate) headers: RequestHeaders,
    pub(crate) client: Option<SocketAddr>,
    /// Seconds cut off from the control plane, when partitioned.
    pub(crate) partitioned: Option<u64>,
    /// The request target, as received (HTTP/2 names the host in its
    /// authority).
    pub(crate) uri: http::Uri,
    /// Received over TLS.
    pub(crate) secure: bool,
    /// Stored bodies may be sent from their files (cleartext HTTP/1).
    pub(crate) sendfile: Option<SendFile>,
    /// Where the upstream's interim responses go, when the client can be
    /// sent them (an HTTP/1.1 request hyper reads).
    pub(crate) interim: Option<Interim>,
    /// The fetches running for the connection's requests: each fetch this
    /// request starts holds a place until it ends.
    pub(crate) errands: Errands,
}

impl Ctx {
    /// A place for one more fetch that may outlive the request, counted
    /// against its connection and its client's network
    /// ([`outpost_net::Errands`]; `spare`: work no request waits on, which
    /// takes only the first half of each): `None` when either has its
    /// share running.
    pub(crate) fn errand(&self, spare: bool) -> Option<outpost_net::Errand> {
        let networks = &self.engine.networks;
        match (self.client, spare) {
            (Some(c), false) => self.errands.start_within(networks, c.ip()),
            (Some(c), true) => self.errands.start_spare_within(networks, c.ip()),
            (None, false) => self.errands.start(),
            (None, true) => self.errands.start_spare(),
        }
    }

    /// The request's host, checked in step 3.
    pub(crate) fn host(&self) -> Option<RequestHost<'_>> {
        let raw = match self.uri.authority() {
            Some(a) => a.as_str(),
            None => self.headers.get(header::HOST)?.to_str().ok()?,
        };
        RequestHost::parse(raw).ok()
    }

    /// The Host sent upstream: the normalised form the key covers (lower
    /// case, no trailing dot). Built when a request goes upstream, and
    /// when a hit's body is read as a stream, for the refill it may need.
    pub(crate) fn upstream_host(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.host()?.authority()).ok()
    }

    /// The key scope of this request's URLs, or of another host's.
    pub(crate) fn scope<'a>(&'a self, host: Option<RequestHost<'a>>) -> Scope<'a> {
        match host.or_else(|| self.host()) {
            Some(h) => Scope::of(&self.site, self.proto(), h),
            None => Scope { proto: self.proto(), host: None },
        }
    }

    pub(crate) fn proto(&self) -> Option<&'static str> {
        upstream_proto(self.engine.tier, self.secure, &self.headers)
    }

    /// The client's side of an upstream request.
    pub(crate) fn client_side(&self) -> FromClient {
        FromClient {
            headers: HeaderMap::clone(&self.headers),
            ip: self.client.map(|c| c.ip()),
            proto: self.proto(),
            from_edge: self.engine.tier == Tier::Shield,
        }
    }

    /// The keyed URL's path (normalised), without the query.
    pub(crate) fn path(&self) -> &str {
        self.rkey.url.split('?').next().unwrap_or("/")
    }
}

/// `X-Forwarded-Proto` for upstream requests: set by the edge, where the
/// client's scheme is known (a client's own value is never trusted); tiers
/// behind it pass on what the edge said, when it is `http` or `https`.
pub(crate) fn upstream_proto(tier: Tier, secure: bool, headers: &impl HeaderLookup) -> Option<&'static str> {
    match tier {
        Tier::Edge => Some(if secure { "https" } else { "http" }),
        Tier::Shield => match headers.get(&X_FORWARDED_PROTO).map(HeaderValue::as_bytes) {
            Some(b"https") => Some("https"),
            Some(b"http") => Some("http"),
            _ => None,
        },
    }
}
