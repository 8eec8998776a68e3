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
//!
//! A rotation with a hand-over also marks the node's entry: a stream of
//! the generation just before is sent the new credential before it ends,
//! as is the next stream opened with that generation, until the node
//! opens one with the new credential, which clears the mark.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::HEARTBEAT;
use crate::store::{Store, StoreError};

/// The store record: JSON, node name → lowest generation taken (a
/// number), or that and the hand-over mark (an object).
const RECORD: &str = "credential-generations";
/// Tries at a revocation that other revocations keep racing.
const SWAP_TRIES: usize = 16;

/// What the control plane takes of one node's credentials.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub(crate) struct Taken {
    /// The lowest generation taken.
    pub(crate) lowest: u64,
    /// The credential of generation `lowest` is handed to a stream of
    /// generation `lowest - 1`.
    pub(crate) hand_over: bool,
}

impl Taken {
    /// Whether a caller of `generation` is to be handed the credential of
    /// generation [`Taken::lowest`].
    pub(crate) fn hands_over_to(&self, generation: u64) -> bool {
        self.hand_over && generation.checked_add(1) == Some(self.lowest)
    }
}

/// How an entry is written: a bare number without a hand-over, as before
/// hand-overs were.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Stored {
    Lowest(u64),
    Marked { lowest: u64, hand_over: bool },
}

impl From<Stored> for Taken {
    fn from(s: Stored) -> Taken {
        match s {
            Stored::Lowest(lowest) => Taken { lowest, hand_over: false },
            Stored::Marked { lowest, hand_over } => Taken { lowest, hand_over },
        }
    }
}

impl From<Taken> for Stored {
    fn from(t: Taken) -> Stored {
        match t.hand_over {
            false => Stored::Lowest(t.lowest),
            true => Stored::Marked { lowest: t.lowest, hand_over: true },
        }
    }
}

type Table = BTreeMap<String, Taken>;

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
    /// What is taken of `node`'s credentials. The record is read again
    /// when the copy here is a heartbeat old; when the store cannot be
    /// read then, the copy serves (a replica cut off from its store keeps
    /// working with what it knew), and with no copy yet the answer is the
    /// store's error.
    pub(crate) async fn taken(&self, store: &Store, node: &str) -> Result<Taken, StoreError> {
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
        Ok(cached.as_ref().and_then(|(_, table)| table.get(node)).copied().unwrap_or_default())
    }

    /// Revokes every credential `node` has had: the lowest generation
    /// taken becomes one past the last, handed over to the node's streams
    /// with `hand_over`. Returns that generation.
    pub(crate) async fn revoke(&self, store: &Store, node: &str, hand_over: bool) -> Result<u64, StoreError> {
        let next = self
            .change(store, node, |t| {
                let lowest = t
                    .lowest
                    .checked_add(1)
                    .ok_or_else(|| StoreError::Db(format!("node `{node}` has no credential generation left")))?;
                Ok(Some(Taken { lowest, hand_over }))
            })
            .await?;
        tracing::info!(
            node,
            generation = next.lowest,
            hand_over,
            "revoked the node's credentials below this generation"
        );
        Ok(next.lowest)
    }

    /// The node has used the credential of `generation`: a hand-over of it
    /// is done, and the generation before gets nothing more.
    pub(crate) async fn handed_over(&self, store: &Store, node: &str, generation: u64) -> Result<(), StoreError> {
        self.change(store, node, |t| {
            Ok((t.hand_over && t.lowest == generation).then_some(Taken { lowest: t.lowest, hand_over: false }))
        })
        .await?;
        tracing::info!(node, generation, "the node uses the credential handed over to it");
        Ok(())
    }

    /// Sets `node`'s entry to what `to` makes of it (`None`: leaves it),
    /// by compare-and-swap. Returns the entry as it stands after.
    async fn change(
        &self,
        store: &Store,
        node: &str,
        to: impl Fn(Taken) -> Result<Option<Taken>, StoreError>,
    ) -> Result<Taken, StoreError> {
        for _ in 0..SWAP_TRIES {
            let raw = store.record(RECORD).await?;
            let mut table = parse(raw.as_deref())?;
            let now = table.get(node).copied().unwrap_or_default();
            let Some(next) = to(now)? else { return Ok(now) };
            table.insert(node.to_string(), next);
            let new = serde_json::to_string(&table).map_err(crate::store::db)?;
            if store.swap_record(RECORD, raw, Some(new)).await? {
                *self.cached.lock().await = Some((Instant::now(), table));
                self.changed.send_modify(|v| *v += 1);
                return Ok(next);
            }
        }
        Err(StoreError::Conflict(format!(
            "node `{node}`'s credentials were changed by other writers {SWAP_TRIES} times meanwhile; try again"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_as_written_before_hand_overs_and_after() {
        let table: Table = serde_json::from_str(r#"{"a": 2, "b": {"lowest": 3, "hand_over": true}}"#).unwrap();
        assert_eq!(table["a"], Taken { lowest: 2, hand_over: false });
        assert_eq!(table["b"], Taken { lowest: 3, hand_over: true });
        assert_eq!(serde_json::to_string(&table).unwrap(), r#"{"a":2,"b":{"lowest":3,"hand_over":true}}"#);
        assert!(table["b"].hands_over_to(2));
        assert!(!table["b"].hands_over_to(1) && !table["b"].hands_over_to(3) && !table["a"].hands_over_to(1));
        assert!(!Taken { lowest: 0, hand_over: true }.hands_over_to(u64::MAX));
    }
}
