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
//! A rotation with a hand-over also writes `NAME/hand-over/GEN` in the
//! same record: until when the node's credential of generation GEN, its
//! lowest, is handed to a stream opened with the generation just before
//! (the node's open stream ends as in any rotation; the next it opens
//! gets the new credential). The node's first stream with the new
//! generation removes the mark, as does the next revocation; past its
//! time it counts for nothing. Every value is a number, so a replica that
//! predates hand-overs reads the record as before (a mark is to it a node
//! that never connects); and a mark names its generation, so a revocation
//! through such a replica, which leaves the mark, still ends it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::HEARTBEAT;
use crate::store::{Store, StoreError, now_ms};

/// The store record: JSON, node name → lowest generation taken, and
/// `NAME/hand-over/GEN` → until when (ms since the epoch) the hand-over of
/// generation GEN holds.
const RECORD: &str = "credential-generations";
/// Tries at a change that other changes keep racing.
const SWAP_TRIES: usize = 16;
/// How long a hand-over waits for its node: a node down longer is given
/// its new credential by hand.
pub(crate) const HAND_OVER_FOR: Duration = Duration::from_secs(24 * 3600);

type Table = BTreeMap<String, u64>;

fn mark(node: &str, generation: u64) -> String {
    format!("{node}/hand-over/{generation}")
}

/// Removes every hand-over mark of `node`.
fn unmark(table: &mut Table, node: &str) {
    let prefix = format!("{node}/hand-over/");
    table.retain(|k, _| !k.starts_with(&prefix));
}

/// What the control plane takes of one node's credentials.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Taken {
    /// The lowest generation taken.
    pub(crate) lowest: u64,
    /// Until when (ms since the epoch) the credential of generation
    /// `lowest` is handed to a stream of generation `lowest - 1`.
    pub(crate) hand_over_until_ms: Option<u64>,
}

impl Taken {
    fn of(table: &Table, node: &str) -> Taken {
        let lowest = table.get(node).copied().unwrap_or(0);
        Taken { lowest, hand_over_until_ms: table.get(&mark(node, lowest)).copied() }
    }

    /// Whether a caller of `generation` is to be handed the credential of
    /// generation [`Taken::lowest`] at `now_ms`.
    pub(crate) fn hands_over_to(&self, generation: u64, now_ms: u64) -> bool {
        self.hand_over_until_ms.is_some_and(|until| now_ms < until) && generation.checked_add(1) == Some(self.lowest)
    }
}

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
        Ok(cached.as_ref().map(|(_, table)| Taken::of(table, node)).unwrap_or_default())
    }

    /// The same, read from the store now (the copy here refreshed), or
    /// the store's error: for a hand-over, which the copy may show after
    /// another replica saw the node take it.
    pub(crate) async fn taken_now(&self, store: &Store, node: &str) -> Result<Taken, StoreError> {
        let table = parse(store.record(RECORD).await?.as_deref())?;
        let taken = Taken::of(&table, node);
        *self.cached.lock().await = Some((Instant::now(), table));
        Ok(taken)
    }

    /// Revokes every credential `node` has had: the lowest generation
    /// taken becomes one past the last, handed over to the node's next
    /// stream with `hand_over`. Returns that generation.
    pub(crate) async fn revoke(&self, store: &Store, node: &str, hand_over: bool) -> Result<u64, StoreError> {
        let until = hand_over.then(|| now_ms().saturating_add(HAND_OVER_FOR.as_millis() as u64));
        let next = self
            .change(store, |table| {
                let lowest = Taken::of(table, node)
                    .lowest
                    .checked_add(1)
                    .ok_or_else(|| StoreError::Db(format!("node `{node}` has no credential generation left")))?;
                table.insert(node.to_string(), lowest);
                unmark(table, node);
                if let Some(until) = until {
                    table.insert(mark(node, lowest), until);
                }
                Ok(Some(lowest))
            })
            .await?;
        let lowest = next.unwrap_or_default();
        tracing::info!(node, generation = lowest, hand_over, "revoked the node's credentials below this generation");
        Ok(lowest)
    }

    /// The node has opened a stream with the credential of `generation`:
    /// a hand-over of it is done, and the generation before gets nothing
    /// more. Reads the store afresh, as a copy here may predate the
    /// hand-over; writes only when there is a mark to remove.
    pub(crate) async fn handed_over(&self, store: &Store, node: &str, generation: u64) -> Result<(), StoreError> {
        let done = self
            .change(store, |table| {
                let taken = Taken::of(table, node);
                if taken.hand_over_until_ms.is_none() || taken.lowest != generation {
                    return Ok(None);
                }
                unmark(table, node);
                Ok(Some(()))
            })
            .await?;
        if done.is_some() {
            tracing::info!(node, generation, "the node took the credential handed over to it");
        }
        Ok(())
    }

    /// Changes the record with `edit`, by compare-and-swap; `edit`
    /// returning `None` leaves it as it is. Returns what `edit` returned.
    async fn change<T>(
        &self,
        store: &Store,
        edit: impl Fn(&mut Table) -> Result<Option<T>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        for _ in 0..SWAP_TRIES {
            let raw = store.record(RECORD).await?;
            let mut table = parse(raw.as_deref())?;
            let Some(out) = edit(&mut table)? else { return Ok(None) };
            let new = serde_json::to_string(&table).map_err(crate::store::db)?;
            if store.swap_record(RECORD, raw, Some(new)).await? {
                *self.cached.lock().await = Some((Instant::now(), table));
                self.changed.send_modify(|v| *v += 1);
                return Ok(Some(out));
            }
        }
        Err(StoreError::Conflict(format!(
            "the credential record was changed by other writers {SWAP_TRIES} times meanwhile; try again"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_is_for_the_generation_before_and_until_its_time() {
        let table: Table =
            serde_json::from_str(r#"{"a": 2, "a/hand-over/1": 1000, "b": 3, "b/hand-over/3": 1000}"#).unwrap();
        let (a, b) = (Taken::of(&table, "a"), Taken::of(&table, "b"));
        // A's mark is of a generation revoked since (through a replica
        // that left it): it hands nothing over.
        assert_eq!(a, Taken { lowest: 2, hand_over_until_ms: None });
        assert!(b.hands_over_to(2, 999));
        assert!(!b.hands_over_to(2, 1000), "past its time");
        assert!(!b.hands_over_to(1, 999) && !b.hands_over_to(3, 999) && !a.hands_over_to(1, 0));
        assert_eq!(Taken::of(&table, "c"), Taken::default(), "never revoked");
        let edge = Taken { lowest: 0, hand_over_until_ms: Some(u64::MAX) };
        assert!(!edge.hands_over_to(u64::MAX, 0));
        // A replica that predates hand-overs reads the record as before.
        let old: BTreeMap<String, u64> = serde_json::from_str(&serde_json::to_string(&table).unwrap()).unwrap();
        assert_eq!(old["b"], 3);
    }
}
