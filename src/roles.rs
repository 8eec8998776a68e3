//! One role per process, as production runs them.

use std::path::Path;

use anyhow::{Context, bail};
use outpost_config::{NodeConfig, Role};

use crate::signals;

fn load(path: &Path, role: Role) -> anyhow::Result<NodeConfig> {
    let node = NodeConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if node.role() != role {
        bail!("{} is a {} node file, not {}", path.display(), node.role().as_str(), role.as_str());
    }
    Ok(node)
}

async fn serve(node: &NodeConfig, bound: outpost_proxy::node::Node) -> anyhow::Result<()> {
    for a in bound.http_addrs() {
        tracing::info!(node = %node.name, addr = %a, "{} listening", node.role().as_str());
    }
    if let Some(a) = bound.admin_addr() {
        tracing::info!(node = %node.name, addr = %a, "admin listening");
    }
    let stop = signals::shutdown_token();
    bound.run(stop).await?;
    Ok(())
}

pub async fn edge(path: &Path) -> anyhow::Result<()> {
    let node = load(path, Role::Edge)?;
    let bound = outpost_edge::bind(&node).await.with_context(|| format!("starting edge `{}`", node.name))?;
    serve(&node, bound).await
}

pub async fn shield(path: &Path) -> anyhow::Result<()> {
    let node = load(path, Role::Shield)?;
    let (bound, _) = outpost_shield::bind(&node).await.with_context(|| format!("starting shield `{}`", node.name))?;
    serve(&node, bound).await
}

/// What a DNS node's admin listener reports.
struct DnsHealth {
    name: String,
}

impl outpost_proxy::admin::Health for DnsHealth {
    fn health(&self) -> serde_json::Value {
        serde_json::json!({"status": "ok", "node": self.name, "role": "dns"})
    }
}

/// A bound DNS node and its admin listener.
#[derive(Debug)]
pub struct Dns {
    pub node: outpost_control::dns::DnsNode,
    admin: Option<tokio::net::TcpListener>,
    name: String,
    limits: outpost_config::Limits,
}

impl Dns {
    pub async fn bind(node: &NodeConfig) -> anyhow::Result<Dns> {
        // Before the server makes its metrics, so they are recorded.
        let _ = outpost_proxy::engine::observe::prometheus();
        let mut bound = outpost_control::dns::DnsNode::bind(node).await?;
        if let Some(link) = &node.control {
            // The registry may be served over HTTPS with a private CA.
            bound = bound.with_control_tls(outpost_proxy::tls::client_config(link.ca.as_deref().as_slice(), None)?);
        }
        let admin = match node.listen.admin {
            Some(a) => Some(outpost_proxy::serve::bind(&[a]).await?.remove(0)),
            None => None,
        };
        Ok(Dns { node: bound, admin, name: node.name.clone(), limits: node.limits })
    }

    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub async fn run(self, stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
        if let Some(l) = self.admin {
            let server = outpost_net::ServerConfig { name: self.name.as_str().into(), limits: self.limits };
            let health = std::sync::Arc::new(DnsHealth { name: self.name });
            tokio::spawn(outpost_proxy::admin::serve(health, l, server, stop.clone()));
        }
        self.node.run(stop).await?;
        Ok(())
    }
}

pub async fn dns(path: &Path) -> anyhow::Result<()> {
    let node = load(path, Role::Dns)?;
    let bound = Dns::bind(&node).await?;
    tracing::info!(node = %node.name, addr = %bound.node.addr(), "dns listening (udp and tcp)");
    bound.run(signals::shutdown_token()).await
}

pub async fn control(path: &Path) -> anyhow::Result<()> {
    let node = load(path, Role::Control)?;
    // Before the control plane makes its metrics, so they are recorded.
    let _ = outpost_proxy::engine::observe::prometheus();
    let bound = outpost_control::node::ControlNode::bind(
        &node,
        Box::new(|| outpost_proxy::engine::observe::prometheus().render()),
    )
    .await?;
    tracing::info!(node = %node.name, addr = %bound.addr(), "control plane listening");
    bound.run(signals::shutdown_token()).await?;
    Ok(())
}
