//! The geo-IP DNS server: authoritative for the CDN's zone, steering each
//! client to the nearest healthy PoP.
//!
//! UDP and TCP on one address: UDP through our own listener (`udp.rs`,
//! with a fast path for the common query), TCP through ours too (`tcp.rs`,
//! with connections capped). The MaxMind file is checked for changes every
//! [`RELOAD_CHECK`] and swapped without dropping queries; a bad replacement
//! keeps the old database in service.

pub mod geo;
mod limit;
pub mod registry;
pub mod server;
pub mod steer;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_config::{NodeConfig, RoleConfig};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

pub use geo::{GeoDb, GeoError, build_database};
pub use server::GeoDns;

/// How often the database file is checked for a replacement.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{0} is not a dns node file")]
    NotDns(String),
    #[error(transparent)]
    Geo(#[from] GeoError),
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A client configuration that trusts nothing: enough for an `http://`
/// control plane; an `https://` one needs [`DnsNode::with_control_tls`].
fn plain_client_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
        .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
}

/// A bound DNS node.
#[derive(Debug)]
pub struct DnsNode {
    pub handler: Arc<GeoDns>,
    udp: UdpSocket,
    tcp: TcpListener,
    registry: Option<registry::RegistryLink>,
}

impl DnsNode {
    /// Opens the database (a missing or corrupt file is an error) and binds.
    pub async fn bind(node: &NodeConfig) -> Result<DnsNode, DnsError> {
        let RoleConfig::Dns(cfg) = &node.role else {
            return Err(DnsError::NotDns(node.file.display().to_string()));
        };
        let addr = node.listen.dns.ok_or_else(|| DnsError::Config("listen.dns is missing".into()))?;
        let geo = Arc::new(GeoDb::open(&cfg.geoip)?);
        let handler = Arc::new(GeoDns::new(&node.name, cfg, geo).map_err(DnsError::Config)?);
        // UDP and TCP share the port. With port 0 the UDP port is picked
        // first and may be taken for TCP: pick again.
        let tries = if addr.port() == 0 { 20 } else { 1 };
        let mut last = None;
        for _ in 0..tries {
            let udp = UdpSocket::bind(addr).await.map_err(|source| DnsError::Bind { addr, source })?;
            let bound = udp.local_addr().map_err(|source| DnsError::Bind { addr, source })?;
            match TcpListener::bind(bound).await {
                Ok(tcp) => {
                    let registry = node.control.as_ref().map(|c| registry::RegistryLink {
                        urls: c.urls.clone(),
                        token_file: c.token_file.clone(),
                        tls: Arc::new(plain_client_config()),
                        pops: cfg.pops.clone(),
                    });
                    return Ok(DnsNode { handler, udp, tcp, registry });
                }
                Err(source) => last = Some(DnsError::Bind { addr: bound, source }),
            }
        }
        Err(last.unwrap_or(DnsError::Config("no address to bind".into())))
    }

    /// Verifies an `https` control plane with `tls` (its CA, for one).
    pub fn with_control_tls(mut self, tls: Arc<rustls::ClientConfig>) -> DnsNode {
        if let Some(r) = &mut self.registry {
            r.tls = tls;
        }
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.udp.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Answers until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DnsError> {
        let local = self.addr();
        // The UDP threads stop on shutdown, and also when this future is
        // dropped unfinished (its runtime shutting down), which would
        // otherwise wait for them forever.
        let udp_stop = shutdown.child_token();
        let _udp_stop_on_drop = udp_stop.clone().drop_guard();
        let udp = udp::serve(Arc::clone(&self.handler), self.udp, &udp_stop)
            .map_err(|source| DnsError::Bind { addr: local, source })?;
        let tcp = tokio::spawn(tcp::serve(Arc::clone(&self.handler), self.tcp, shutdown.clone()));
        if let Some(link) = self.registry {
            registry::follow(Arc::clone(&self.handler), link, shutdown.clone());
        }
        let geo = Arc::clone(&self.handler.geo);
        let mut tick = tokio::time::interval(RELOAD_CHECK);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    // Checking a whole database takes a while: off the runtime.
                    let geo = Arc::clone(&geo);
                    match tokio::task::spawn_blocking(move || geo.reload_if_changed()).await {
                        Ok(Ok(true)) => {
                            metrics::counter!("outpost_dns_geoip_reloads_total", "result" => "loaded").increment(1);
                            tracing::info!("geo-IP database reloaded");
                        }
                        Ok(Ok(false)) | Err(_) => {}
                        Ok(Err(e)) => {
                            metrics::counter!("outpost_dns_geoip_reloads_total", "result" => "refused").increment(1);
                            tracing::warn!(error = %e, "new geo-IP database refused; the old one stays in service");
                        }
                    }
                }
            }
        }
        for task in udp {
            let _ = task.await;
        }
        let _ = tcp.await;
        Ok(())
    }
}
