//! Every role has one shape: [`BoundRole::bind`] binds its listeners (port 0
//! allowed) and reports the addresses it got ([`BoundRole::endpoints`]);
//! [`BoundRole::run`] serves until the shutdown token fires. `outpost
//! <role>` runs one per process, as production does; `outpost up` runs
//! them all in [`START_ORDER`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use outpost_config::{NodeConfig, Role, RoleConfig};
use tokio_util::sync::CancellationToken;

use crate::signals;

/// The order `up` starts roles in, each before what needs it: the origin;
/// the control plane, which writes the tokens the others read; the DNS
/// servers; the shields; the edges in front of them.
pub const START_ORDER: [Role; 5] = [Role::Origin, Role::Control, Role::Dns, Role::Shield, Role::Edge];

/// What a bound address is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Http,
    Https,
    /// `/metrics` and `/healthz`.
    Admin,
    /// UDP and TCP.
    Dns,
    /// The control plane's API.
    Api,
}

/// An address a role listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub service: Service,
    pub addr: SocketAddr,
}

#[derive(Debug)]
enum Inner {
    Origin(outpost_load::OriginServer),
    Control(outpost_control::node::ControlNode),
    Dns { node: outpost_control::dns::DnsNode, admin: Option<tokio::net::TcpListener> },
    Proxy(outpost_proxy::node::Node),
}

/// A role bound to its addresses, ready to run.
#[derive(Debug)]
pub struct BoundRole {
    pub name: String,
    pub role: Role,
    limits: outpost_config::Limits,
    inner: Inner,
}

impl BoundRole {
    /// Binds the role a node file describes. The error names the file.
    pub async fn bind(node: &NodeConfig) -> anyhow::Result<BoundRole> {
        let what =
            || format!("{} `{}` could not start from `{}`", node.role().as_str(), node.name, node.file.display());
        let inner = match &node.role {
            RoleConfig::Origin(o) => Inner::Origin(
                outpost_load::OriginServer::bind(&node.listen.http, o.dir.clone()).await.with_context(what)?,
            ),
            RoleConfig::Control(_) => {
                Inner::Control(outpost_control::node::ControlNode::bind(node).await.with_context(what)?)
            }
            RoleConfig::Dns(_) => {
                let mut dns = outpost_control::dns::DnsNode::bind(node).await.with_context(what)?;
                if let Some(link) = &node.control {
                    // The registry may be served over HTTPS with a private CA.
                    dns = dns.with_control_tls(outpost_proxy::tls::client_config(link.ca.as_deref().as_slice(), None)?);
                }
                let admin = match node.listen.admin {
                    Some(a) => Some(outpost_net::bind(&[a], node.limits.listen_backlog).with_context(what)?.remove(0)),
                    None => None,
                };
                Inner::Dns { node: dns, admin }
            }
            RoleConfig::Shield(_) => Inner::Proxy(outpost_shield::bind(node).await.with_context(what)?.0),
            RoleConfig::Edge(_) => Inner::Proxy(outpost_edge::bind(node).await.with_context(what)?),
        };
        // Who this node is, for joins in queries (`* on (node) group_left
        // (pop) outpost_node_info`) and for spotting mixed versions.
        metrics::gauge!(
            "outpost_node_info",
            "node" => node.name.clone(),
            "role" => node.role().as_str(),
            "pop" => node.pop.as_ref().map_or_else(String::new, |p| p.name.clone()),
            "version" => crate::VERSION,
        )
        .set(1.0);
        Ok(BoundRole { name: node.name.clone(), role: node.role(), limits: node.limits, inner })
    }

    /// The addresses it listens on.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let at = |service, addrs: Vec<SocketAddr>| addrs.into_iter().map(move |addr| Endpoint { service, addr });
        match &self.inner {
            Inner::Origin(o) => at(Service::Http, o.local_addrs()).collect(),
            Inner::Control(c) => at(Service::Api, vec![c.addr()]).collect(),
            Inner::Dns { node, admin } => at(Service::Dns, vec![node.addr()])
                .chain(at(Service::Admin, admin.iter().filter_map(|l| l.local_addr().ok()).collect()))
                .collect(),
            Inner::Proxy(p) => at(Service::Http, p.http_addrs())
                .chain(at(Service::Https, p.https_addrs()))
                .chain(at(Service::Admin, p.admin_addr().into_iter().collect()))
                .collect(),
        }
    }

    /// The engine of an edge or shield that takes its sites from its own
    /// files (no `[control]`): the one SIGHUP reloads them into.
    pub fn file_sites_engine(&self) -> Option<Arc<outpost_proxy::Engine>> {
        match &self.inner {
            Inner::Proxy(p) if p.subscriber().is_none() => Some(Arc::clone(p.engine())),
            _ => None,
        }
    }

    /// The control plane's state, for a role that is one.
    pub fn control(&self) -> Option<&Arc<outpost_control::api::Control>> {
        match &self.inner {
            Inner::Control(c) => Some(&c.control),
            _ => None,
        }
    }

    /// Serves until `shutdown`, then stops cleanly.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        match self.inner {
            Inner::Origin(o) => o.run(shutdown).await?,
            Inner::Control(c) => c.run(shutdown).await?,
            Inner::Dns { node, admin } => {
                if let Some(l) = admin {
                    let server = outpost_net::ServerConfig { name: self.name.as_str().into(), limits: self.limits };
                    let health = Arc::new(DnsHealth { name: self.name });
                    tokio::spawn(outpost_proxy::admin::serve(health, l, server, shutdown.clone()));
                }
                node.run(shutdown).await?;
            }
            Inner::Proxy(p) => p.run(shutdown).await?,
        }
        Ok(())
    }
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

/// `outpost <role> --config FILE`: one role in this process until Ctrl-C
/// or SIGTERM.
pub async fn serve(path: &Path, role: Role) -> anyhow::Result<()> {
    signals::hold_hangup();
    let node = NodeConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if node.role() != role {
        bail!("{} is a {} node file, not {}", path.display(), node.role().as_str(), role.as_str());
    }
    // Before any role makes its metrics, so they are recorded.
    outpost_net::metrics::install_prometheus();
    let bound = BoundRole::bind(&node).await?;
    for e in bound.endpoints() {
        tracing::info!(node = %node.name, addr = %e.addr, "{} {:?} listening", role.as_str(), e.service);
    }
    if let Some(engine) = bound.file_sites_engine() {
        signals::reload_sites_on_hangup(path.to_path_buf(), engine);
    }
    bound.run(signals::shutdown_token()).await
}
