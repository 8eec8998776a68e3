//! The edge role: the engine in front of clients, choosing a shield for each
//! miss by rendezvous hash (or the origin when there is no shield), failing
//! over between shields and going to the origin directly when every shield
//! is down and the site allows it.

mod shields;

use std::sync::Arc;

use outpost_config::{NodeConfig, RoleConfig};
use outpost_proxy::Tier;
use outpost_proxy::node::{Node, NodeError};
use tokio_util::sync::CancellationToken;

pub use shields::ShieldRoute;

/// Binds an edge described by `node` (listeners, admin, cache).
pub async fn bind(node: &NodeConfig) -> Result<Node, NodeError> {
    let RoleConfig::Edge(edge) = &node.role else {
        return Err(NodeError::NotAProxy(node.file.display().to_string()));
    };
    let route = Arc::new(ShieldRoute::new(&edge.upstream));
    Node::bind(node, Tier::Edge, route).await
}

/// Binds and serves until `shutdown`.
pub async fn run(node: &NodeConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    bind(node).await?.run(shutdown).await?;
    Ok(())
}
