//! Upstream host names resolve through hickory-resolver: asynchronous (not
//! the blocking system resolver on a thread pool) with a TTL-honouring cache.
//! Literal IP addresses never reach it: the connector uses them as they are.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::ResolverConfig;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hyper_util::client::legacy::connect::dns::Name;

/// A hyper connector resolver backed by hickory.
#[derive(Clone)]
pub struct Resolve {
    /// `None` when no resolver could be built: every name then fails to
    /// resolve (literal addresses still work).
    resolver: Option<TokioResolver>,
}

impl std::fmt::Debug for Resolve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolve")
    }
}

impl Resolve {
    /// The system's resolver configuration (`/etc/resolv.conf`, hosts file).
    /// Without one, only the hosts file is used: no name server is guessed.
    pub fn system() -> Resolve {
        let hosts_only = || {
            let config = ResolverConfig::from_parts(None, Vec::new(), Vec::new());
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default()).build()
        };
        let built = match TokioResolver::builder_tokio() {
            Ok(b) => b.build(),
            Err(e) => {
                tracing::warn!(error = %e, "no system resolver configuration; resolving from the hosts file only");
                hosts_only()
            }
        };
        let resolver = built
            .or_else(|_| hosts_only())
            .map_err(|e| tracing::error!(error = %e, "no resolver: host names will not resolve"))
            .ok();
        Resolve { resolver }
    }
}

impl tower_service::Service<Name> for Resolve {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let Some(resolver) = resolver else {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no resolver is available"));
            };
            let ips = resolver.lookup_ip(name.as_str()).await.map_err(|e| {
                io::Error::new(io::ErrorKind::NotFound, format!("cannot resolve {}: {e}", name.as_str()))
            })?;
            // The connector fills in the port.
            let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(addrs.into_iter())
        })
    }
}
