//! Which node credentials the control plane still takes.
//!
//! One record in the store maps each node ever revoked to the lowest
//! credential generation it takes for that node (`crate::credential`);
//! a node not in it takes generation 0 and up. Every replica reads the
//! record again when its copy is a heartbeat old, so a revocation through
//! one replica holds at the others within two heartbeats; streams at the
//! replica that revoked end at once, those elsewhere at their next
//! heartbeat. A revocation is a compare-and-swap on the record, so two
//! replicas revoking at once both count.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio::sync::watch;

use super::HEARTBEAT;
use crate::store::{Store, StoreError};

/// The store record: JSON, node name → lowest generation taken.
const RECORD: &str = "credential-generations";
/// Tries at a revocation that other revocations keep racing.
const SWAP_TRIES: usize = 16;

type Table = BTreeMap<String, u64>;

#[derive(Debug)]
pub(crate) struct Revocations {
    /// The record as last read (or written) here, and when.
    cached: tokio::sync::Mutex<Option<(Instant, Table)>>,
    /// Bumped when this replica revokes, so its open streams look again.
    pub(crate) changed: watch::Sender<u64>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations { cached: tokio::sync::Mutex::new(None), changed: watch::channel(0).0 }
    }
}

fn parse(raw: Option<&str>) -> Result<Table, StoreError> {
    match raw {
        None => Ok(Table::new()),
        Some(text) => {
            serde_json::from_str(text).map_err(|e| StoreError::Db(format!("the record `{RECORD}` does not read: {e}")))
        }
    }
}

impl Revocations {
    /// The lowest generation of `node`'s credentials taken. The record is
    /// read again when the copy here is a heartbeat old; when the store
    /// cannot be read then, the copy serves (a replica cut off from its
    /// store keeps working with what it knew), and with no copy yet the
    /// answer is the store's error.
    pub(crate) async fn lowest(&self, store: &Store, node: &str) -> Result<u64, StoreError> {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_none_or(|(at, _)| at.elapsed() >= HEARTBEAT) {
            match store.record(RECORD).await.and_then(|raw| parse(raw.as_deref())) {
                Ok(table) => *cached = Some((Instant::now(), table)),
                Err(e) => match cached.as_mut() {
                    Some((at, _)) => {
                        tracing::warn!(error = %e, "cannot read the credential revocations: using the copy of {:?} ago", at.elapsed());
                        // Once a heartbeat, not on every call.
                        *at = Instant::now();
                    }
                    None => return Err(e),
                },
            }
        }
        Ok(cached.as_ref().and_then(|(_, table)| table.get(node)).copied().unwrap_or(0))
    }

    /// Revokes every credential `node` has had: the lowest generation
    /// taken becomes one past the last. Returns that generation.
    pub(crate) async fn revoke(&self, store: &Store, node: &str) -> Result<u64, StoreError> {
        for _ in 0..SWAP_TRIES {
            let raw = store.record(RECORD).await?;
            let mut table = parse(raw.as_deref())?;
            let next = table
                .get(node)
                .copied()
                .unwrap_or(0)
                .checked_add(1)
                .ok_or_else(|| StoreError::Db(format!("node `{node}` has no credential generation left")))?;
            table.insert(node.to_string(), next);
            let new = serde_json::to_string(&table).map_err(crate::store::db)?;
            if store.swap_record(RECORD, raw, Some(new)).await? {
                *self.cached.lock().await = Some((Instant::now(), table));
                self.changed.send_modify(|v| *v += 1);
                tracing::info!(node, generation = next, "revoked the node's credentials below this generation");
                return Ok(next);
            }
        }
        Err(StoreError::Conflict(format!(
            "node `{node}`'s credentials were revoked by other writers {SWAP_TRIES} times meanwhile; try again"
        )))
    }
}
