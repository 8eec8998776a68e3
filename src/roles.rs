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

pub(crate) async fn edge(path: &Path) -> anyhow::Result<()> {
    let node = load(path, Role::Edge)?;
    let bound = outpost_edge::bind(&node).await.with_context(|| format!("starting edge `{}`", node.name))?;
    for a in bound.http_addrs() {
        tracing::info!(node = %node.name, addr = %a, "edge listening");
    }
    if let Some(a) = bound.admin_addr() {
        tracing::info!(node = %node.name, addr = %a, "admin listening");
    }
    let stop = signals::shutdown_token();
    bound.run(stop).await?;
    Ok(())
}
