//! An edge or shield process: the engine, its client listeners and its admin
//! listener, bound first (so port 0 works and the addresses can be reported)
//! and then run until shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use outpost_config::{NodeConfig, ProxyNode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineConfig, EngineError, Tier};
use crate::serve::Listener;
use crate::upstream::Route;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0} is not an edge or shield node file")]
    NotAProxy(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A bound edge or shield.
#[derive(Debug)]
pub struct Node {
    engine: Arc<Engine>,
    http: Vec<TcpListener>,
    https: Vec<TcpListener>,
    quic: Vec<outpost_net::quic::QuicListener>,
    admin: Option<TcpListener>,
    tls: Option<Arc<rustls::ServerConfig>>,
    subscriber: Option<Arc<crate::subscribe::Subscriber>>,
}

impl EngineConfig {
    pub fn from_node(node: &NodeConfig, proxy: &ProxyNode, tier: Tier) -> EngineConfig {
        EngineConfig {
            node: node.name.clone(),
            tier,
            limits: node.limits,
            cache: proxy.cache.clone(),
            sites: proxy.sites.clone(),
            access_log: proxy.access_log.clone(),
            tls: node.tls.clone(),
            https_port: node.listen.https.first().map(|a| a.port()),
            quic_port: node.listen.quic.first().map(|a| a.port()),
        }
    }
}

/// How often certificate files are checked for replacement.
const CERT_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

impl Node {
    /// Opens the engine (recovering its disk cache) and binds its listeners.
    pub async fn bind(node: &NodeConfig, tier: Tier, route: Arc<dyn Route>) -> Result<Node, NodeError> {
        let proxy = node.proxy().ok_or_else(|| NodeError::NotAProxy(node.file.display().to_string()))?;
        let backlog = node.limits.listen_backlog;
        let http = crate::serve::bind(&node.listen.http, backlog)?;
        let https = crate::serve::bind(&node.listen.https, backlog)?;
        let admin = match node.listen.admin {
            Some(a) => Some(crate::serve::bind(&[a], backlog)?.remove(0)),
            None => None,
        };
        let udp = node.listen.quic.iter().map(std::net::UdpSocket::bind).collect::<io::Result<Vec<_>>>()?;
        let mut config = EngineConfig::from_node(node, proxy, tier);
        // Port 0 in the file: the port actually bound.
        config.https_port = https.first().and_then(|l| l.local_addr().ok()).map(|a| a.port()).or(config.https_port);
        config.quic_port = udp.first().and_then(|s| s.local_addr().ok()).map(|a| a.port()).or(config.quic_port);
        let engine = Engine::open(config, route).await?;
        let tls = if https.is_empty() {
            None
        } else {
            Some(
                crate::tls::server_config(Arc::clone(&engine.certs), node.tls.client_ca.as_deref())
                    .map_err(EngineError::Tls)?,
            )
        };
        let quic = if udp.is_empty() {
            Vec::new()
        } else {
            let tls = crate::tls::quic_server_config(Arc::clone(&engine.certs), node.tls.client_ca.as_deref())
                .map_err(EngineError::Tls)?;
            udp.into_iter()
                .map(|s| outpost_net::quic::quic_listener(s, Arc::clone(&tls), &node.limits))
                .collect::<io::Result<Vec<_>>>()?
        };
        let control_tls = match &node.control {
            Some(link) => {
                Some(crate::tls::client_config(link.ca.as_deref().as_slice(), None).map_err(EngineError::Tls)?)
            }
            None => None,
        };
        let subscriber = node.control.as_ref().zip(control_tls).map(|(link, tls)| {
            let me = crate::subscribe::Identity {
                name: node.name.clone(),
                role: node.role(),
                pop: node.pop.as_ref().map(|p| p.name.clone()),
                addrs: http.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.to_string()).collect(),
            };
            let link = crate::subscribe::Link {
                urls: link.urls.clone(),
                token_file: link.token_file.clone(),
                tls,
                base: outpost_config::base_dir(&node.file),
            };
            Arc::new(crate::subscribe::Subscriber::new(Arc::clone(&engine), link, me, proxy.cache.path.as_deref()))
        });
        Ok(Node { engine, http, https, quic, tls, admin, subscriber })
    }

    /// The control-plane follower, when the node has a `[control]` section.
    pub fn subscriber(&self) -> Option<&Arc<crate::subscribe::Subscriber>> {
        self.subscriber.as_ref()
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.http.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.https.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    pub fn quic_addrs(&self) -> Vec<SocketAddr> {
        self.quic.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown`, then finishes open responses and flushes the
    /// cache to disk.
    pub async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
        self.engine.start_route(shutdown.clone());
        if let Some(s) = &self.subscriber {
            Arc::clone(s).start(shutdown.clone());
        }
        let health: Arc<dyn crate::admin::Health> = Arc::clone(&self.engine) as Arc<dyn crate::admin::Health>;
        let server = outpost_net::ServerConfig { name: Arc::clone(&self.engine.node), limits: self.engine.limits };
        let admin = self.admin.map(|l| tokio::spawn(crate::admin::serve(health, l, server.clone(), shutdown.clone())));
        if self.tls.is_some() || !self.quic.is_empty() {
            Arc::clone(&self.engine.certs).watch(CERT_RELOAD_INTERVAL, shutdown.clone());
        }
        let quic: Vec<_> = self
            .quic
            .into_iter()
            .map(|l| {
                let config =
                    outpost_net::ServerConfig { name: Arc::clone(&self.engine.node), limits: self.engine.limits };
                let served = outpost_net::quic::serve_quic(Arc::clone(&self.engine), l, config, shutdown.clone());
                tokio::spawn(served)
            })
            .collect();
        let mut listeners: Vec<Listener> = self.http.into_iter().map(|tcp| Listener { tcp, tls: None }).collect();
        listeners.extend(self.https.into_iter().map(|tcp| Listener { tcp, tls: self.tls.clone() }));
        let served = outpost_net::serve(Arc::clone(&self.engine), listeners, server, shutdown.clone()).await;
        if let Some(a) = admin {
            let _ = a.await;
        }
        for q in quic {
            let _ = q.await;
        }
        self.engine.close().await;
        served
    }
}
