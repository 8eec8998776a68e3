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

pub(crate) async fn edge(path: &Path) -> anyhow::Result<()> {
    let node = load(path, Role::Edge)?;
    let bound = outpost_edge::bind(&node).await.with_context(|| format!("starting edge `{}`", node.name))?;
    serve(&node, bound).await
}

pub(crate) async fn shield(path: &Path) -> anyhow::Result<()> {
    let node = load(path, Role::Shield)?;
    let (bound, _) = outpost_shield::bind(&node).await.with_context(|| format!("starting shield `{}`", node.name))?;
    serve(&node, bound).await
}
