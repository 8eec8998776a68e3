//! The edge role: the engine in front of clients, choosing a shield for each
//! miss by rendezvous hash (or the origin when there is no shield), failing
//! over between shields and reporting health and load.
//!
//! Today an edge fetches misses from the site's origins directly; shield
//! selection arrives with the shield tier.

use std::sync::Arc;

use outpost_config::NodeConfig;
use outpost_proxy::Tier;
use outpost_proxy::node::{Node, NodeError};
use outpost_proxy::upstream::OriginRoute;
use tokio_util::sync::CancellationToken;

/// Binds an edge described by `node` (listeners, admin, cache).
pub async fn bind(node: &NodeConfig) -> Result<Node, NodeError> {
    Node::bind(node, Tier::Edge, Arc::new(OriginRoute)).await
}

/// Binds and serves until `shutdown`.
pub async fn run(node: &NodeConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    bind(node).await?.run(shutdown).await?;
    Ok(())
}
