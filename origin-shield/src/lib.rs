//! The origin-shield role: the engine in front of the origins, with origin
//! pools, active health checks, per-origin concurrency caps and retries with
//! backoff, so a burst of misses from every edge costs the origin one request.

mod origins;

use std::sync::Arc;

use outpost_config::{NodeConfig, RoleConfig};
use outpost_proxy::Tier;
use outpost_proxy::node::{Node, NodeError};
use tokio_util::sync::CancellationToken;

pub use origins::OriginPool;

/// Binds a shield described by `node`; returns the node and its origin pool.
pub async fn bind(node: &NodeConfig) -> Result<(Node, Arc<OriginPool>), NodeError> {
    if !matches!(node.role, RoleConfig::Shield(_)) {
        return Err(NodeError::NotAProxy(node.file.display().to_string()));
    }
    let pool = Arc::new(OriginPool::default());
    let bound = Node::bind(node, Tier::Shield, Arc::clone(&pool) as Arc<dyn outpost_proxy::upstream::Route>).await?;
    Ok((bound, pool))
}

/// Binds and serves until `shutdown`.
pub async fn run(node: &NodeConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    bind(node).await?.0.run(shutdown).await?;
    Ok(())
}
