//! The control plane's durable state: the sites with their versions, the
//! ordered event log, purge records and the node registry, behind one
//! interface whatever keeps them.
//!
//! - [`redb`](self::redb): one file on this machine, the default. Every
//!   change is one write transaction, committed durably before it is
//!   acknowledged; redb refuses a file another process has open, so two
//!   control planes cannot share one.
//! - [`etcd`](self::etcd): a cluster that any number of control-plane
//!   replicas share; every write is a transaction guarded by what it read.
//!
//! Every write that logs an event takes the next sequence number in the
//! same transaction that applies it, so the log has one order. A site
//! upsert names the version it replaces: when another writer got there
//! first the upsert is refused ([`StoreError::Conflict`]) rather than
//! silently stacked on top.

mod etcd;
mod redb;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use outpost_config::{EventRecord, IssuedCertificate, Purge, PurgeTarget, StoreBackend};
use serde::{Deserialize, Serialize};

pub use outpost_config::api::{NodeRecord, PopRecord, SiteRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store `{0}` is open in another control plane process; only one may use it")]
    InUse(String),
    /// A conditional write found the record changed.
    #[error("{0}")]
    Conflict(String),
    /// A site write found another site written (or deleted) after what
    /// its caller checked it against ([`Store::upsert_site_checked`]).
    #[error("another site was written meanwhile")]
    SitesMoved,
    /// The shared store cannot commit from here (no quorum reachable).
    #[error("the store has no quorum here: {0}")]
    Unavailable(String),
    #[error("store: {0}")]
    Db(String),
}

pub(crate) fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Whether the events logged after `checked`, up to the one numbered
/// `next` (`logged`: those still in the log), may have changed the sites:
/// one of them did, or some are no longer there to tell.
fn sites_moved(checked: u64, next: u64, logged: &[EventRecord]) -> bool {
    let between = next.saturating_sub(checked.saturating_add(1));
    logged.len() as u64 != between
        || logged.iter().any(|r| {
            matches!(r.event, outpost_config::Event::SiteUpserted { .. } | outpost_config::Event::SiteDeleted { .. })
        })
}

/// How many versions of a site the store keeps, for diffs and rollbacks.
pub const HISTORY: u64 = 20;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A purge and when it entered the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeRecord {
    pub purge: Purge,
    pub seq: u64,
    pub at_ms: u64,
}

/// Of `records`, those [`Store::prune_purges`] prunes (oldest first), and
/// the marks their hard purges leave: per site, the last one's sequence.
fn prunable(mut records: Vec<PurgeRecord>, first: u64, keep_hard: usize) -> (Vec<PurgeRecord>, BTreeMap<String, u64>) {
    records.sort_by_key(|p| p.seq);
    let hard: Vec<u64> = records.iter().filter(|p| !p.purge.soft).map(|p| p.seq).collect();
    // The oldest of the last `keep_hard` hard purges: everything before it
    // has that many after it.
    let cut = match keep_hard {
        0 => u64::MAX,
        n if hard.len() >= n => hard[hard.len() - n],
        _ => 0,
    };
    // Soft purges never go into a snapshot: theirs go once the log has
    // moved past them.
    records.retain(|p| p.seq < first && (p.purge.soft || p.seq < cut));
    let mut marks = BTreeMap::new();
    for p in records.iter().filter(|p| !p.purge.soft) {
        marks.insert(p.purge.site_id.clone(), p.seq);
    }
    (records, marks)
}

/// A change to the registry of a shared store, as its watch sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryChange {
    /// A node's record, as some replica wrote it.
    Node(NodeRecord),
    /// Every stream open at any replica (`node/replica`), as the watch begins.
    Streams(BTreeSet<String>),
    /// A stream opened (`true`) or closed at a replica (`node/replica`).
    Stream(String, bool),
}

/// The store, cheap to clone. Its calls never block the async workers.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Redb(redb::RedbStore),
    Etcd(Box<etcd::EtcdBackend>),
}

/// Runs a call of the blocking backend off the async workers.
async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(db)?
}

/// Dispatches `$call` to the backend (the blocking one off the workers).
macro_rules! backend {
    ($self:ident, |$b:ident| $call:expr) => {
        match &$self.backend {
            Backend::Redb(b) => {
                let $b = b.clone();
                off_thread(move || $call).await
            }
            Backend::Etcd($b) => $call.await,
        }
    };
}

impl Store {
    /// The store a node file's `[store]` names; `replica` names this
    /// process among those sharing it.
    pub async fn open(backend: &StoreBackend, replica: &str) -> Result<Store, StoreError> {
        match backend {
            StoreBackend::Redb { path } => Store::open_file(path).await,
            StoreBackend::Etcd(cfg) => {
                Ok(Store { backend: Backend::Etcd(Box::new(etcd::EtcdBackend::connect(cfg, replica).await?)) })
            }
        }
    }

    /// The redb file at `path`, created when missing.
    pub async fn open_file(path: &std::path::Path) -> Result<Store, StoreError> {
        let path = path.to_path_buf();
        let b = off_thread(move || redb::RedbStore::open(&path)).await?;
        Ok(Store { backend: Backend::Redb(b) })
    }

    /// Whether other control-plane processes write to this store too.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Etcd(_))
    }

    /// For a shared store: sends `tx` every event after `after`, in order,
    /// whichever replica committed it, until `stop`. A store of one process
    /// has no other writer, and returns at once.
    pub async fn follow_events(
        &self,
        after: u64,
        tx: tokio::sync::broadcast::Sender<EventRecord>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        if let Backend::Etcd(b) = &self.backend {
            b.follow_events(after, tx, stop).await;
        }
    }

    /// Records that `node`'s event stream is open (or closed) here, for
    /// the other replicas of a shared store.
    pub fn set_present(&self, node: &str, open: bool) {
        if let Backend::Etcd(b) = &self.backend {
            b.set_present(node, open);
        }
    }

    /// For a shared store, until `stop`: publishes the streams open here
    /// (on a lease, so they vanish with this replica), and tells `changed`
    /// of every registry record any replica writes and every stream opened
    /// or closed at any replica. A store of one process returns at once.
    pub async fn follow_registry(
        &self,
        changed: &(dyn Fn(RegistryChange) + Send + Sync),
        stop: tokio_util::sync::CancellationToken,
    ) {
        if let Backend::Etcd(b) = &self.backend {
            tokio::join!(b.keep_presence(stop.clone()), b.follow_registry(changed, stop));
        }
    }

    /// Whether writes can commit now: for a shared store, a read that needs
    /// the cluster's quorum answered in time.
    pub async fn has_quorum(&self) -> bool {
        match &self.backend {
            Backend::Etcd(b) => b.has_quorum().await,
            Backend::Redb(_) => true,
        }
    }

    /// The last sequence number in the log (0: none yet).
    pub async fn last_seq(&self) -> Result<u64, StoreError> {
        backend!(self, |b| b.last_seq())
    }

    /// The oldest sequence number still in the log.
    pub async fn first_seq(&self) -> Result<u64, StoreError> {
        backend!(self, |b| b.first_seq())
    }

    /// Stores a new version of a site (already validated) and logs it.
    /// `base` is the version the caller saw (`None`: no such site); when
    /// the site has moved on since, nothing is written and the answer is
    /// [`StoreError::Conflict`].
    pub async fn upsert_site(&self, id: &str, toml: &str, base: Option<u64>) -> Result<EventRecord, StoreError> {
        let (id, toml) = (id.to_string(), toml.to_string());
        backend!(self, |b| b.upsert_site(&id, &toml, base, None))
    }

    /// [`Store::upsert_site`] for a site checked against the others (no
    /// two may serve one host) as they were when the log's last sequence
    /// number was `checked`: when a site was written or deleted since,
    /// nothing is written and the answer is [`StoreError::SitesMoved`], to
    /// check again. The check and the write are one step however many
    /// replicas share the store: each write is guarded by the sequence
    /// number it takes.
    pub async fn upsert_site_checked(
        &self,
        id: &str,
        toml: &str,
        base: Option<u64>,
        checked: u64,
    ) -> Result<EventRecord, StoreError> {
        let (id, toml) = (id.to_string(), toml.to_string());
        backend!(self, |b| b.upsert_site(&id, &toml, base, Some(checked)))
    }

    /// Removes a site and logs it; `None` when there was none.
    pub async fn delete_site(&self, id: &str) -> Result<Option<EventRecord>, StoreError> {
        let id = id.to_string();
        backend!(self, |b| b.delete_site(&id))
    }

    pub async fn site(&self, id: &str) -> Result<Option<SiteRecord>, StoreError> {
        let id = id.to_string();
        backend!(self, |b| b.site(&id))
    }

    /// A site's versions, newest first: the last [`HISTORY`] of them
    /// (the current one included), kept until the site is deleted.
    pub async fn site_history(&self, id: &str) -> Result<Vec<SiteRecord>, StoreError> {
        let id = id.to_string();
        backend!(self, |b| b.site_history(&id))
    }

    pub async fn sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
        backend!(self, |b| b.sites())
    }

    /// The last sequence number and the sites as they stood at it, read
    /// together: what a checked write ([`Store::upsert_site_checked`])
    /// compares against. On a shared store this needs the quorum, as the
    /// write does: a member's own view may be behind the number.
    pub async fn sites_at_seq(&self) -> Result<(u64, Vec<SiteRecord>), StoreError> {
        backend!(self, |b| b.sites_at_seq())
    }

    /// Logs a purge, giving it the next purge id.
    pub async fn add_purge(&self, site_id: &str, target: PurgeTarget, soft: bool) -> Result<PurgeRecord, StoreError> {
        let site_id = site_id.to_string();
        backend!(self, |b| b.add_purge(&site_id, target, soft))
    }

    pub async fn purge(&self, id: &str) -> Result<Option<PurgeRecord>, StoreError> {
        let id = id.to_string();
        backend!(self, |b| b.purge(&id))
    }

    /// For an etcd store: compacts the cluster's history to `to` (the
    /// revision the last call gave), and gives the revision now. Nothing
    /// for redb, which keeps no history.
    pub async fn compact_history(&self, to: i64) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Etcd(b) => b.compact_history(to).await,
            Backend::Redb(_) => Ok(0),
        }
    }

    /// The purges logged after `seq`, oldest first.
    pub async fn purges_after(&self, seq: u64) -> Result<Vec<PurgeRecord>, StoreError> {
        let mut all = backend!(self, |b| b.purges_after(seq))?;
        all.sort_by_key(|p| p.seq);
        Ok(all)
    }

    /// Prunes the purge records a snapshot no longer needs one by one:
    /// those logged before the log's first event that are soft (no
    /// snapshot carries those) or have at least `keep_hard` hard purges
    /// logged after them. A node behind one of
    /// them is behind all of those too, so its snapshot purges each site
    /// with one whole anyway. Each pruned hard purge leaves its site a
    /// mark ([`Store::pruned_purges`]) that says so. Returns how many
    /// records went; without this they would pile up for as long as the
    /// store lives.
    pub async fn prune_purges(&self, keep_hard: usize) -> Result<u64, StoreError> {
        backend!(self, |b| b.prune_purges(keep_hard))
    }

    /// Sites whose hard purges were pruned, each with the sequence of the
    /// last one. Read after [`Store::purges_after`], so a pruning between
    /// the two reads leaves a purge in both, never in neither.
    pub async fn pruned_purges(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        backend!(self, |b| b.pruned_purges())
    }

    /// Events after `seq`, oldest first, at most `limit`.
    pub async fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        backend!(self, |b| b.events_after(seq, limit))
    }

    /// Drops events so that at most `keep` remain; nodes further behind
    /// catch up from a snapshot. Returns how many were dropped.
    pub async fn compact(&self, keep: u64) -> Result<u64, StoreError> {
        backend!(self, |b| b.compact(keep))
    }

    /// Registers or refreshes a node.
    pub async fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let node = node.clone();
        backend!(self, |b| b.put_node(&node))
    }

    /// Takes a node out of the registry.
    pub async fn remove_node(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        backend!(self, |b| b.remove_node(&name))
    }

    /// One node's registry record.
    pub async fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        let name = name.to_string();
        backend!(self, |b| b.node(&name))
    }

    pub async fn nodes(&self) -> Result<BTreeMap<String, NodeRecord>, StoreError> {
        backend!(self, |b| b.nodes())
    }

    /// Sets a PoP's weight (replacing what was set before).
    pub async fn put_pop(&self, pop: &PopRecord) -> Result<(), StoreError> {
        let pop = pop.clone();
        backend!(self, |b| b.put_pop(&pop))
    }

    /// Every PoP whose weight an operator set, by name.
    pub async fn pops(&self) -> Result<Vec<PopRecord>, StoreError> {
        backend!(self, |b| b.pops())
    }

    /// Stores a site's new ACME certificate and logs it; `None` (nothing
    /// written) when the site is gone.
    pub async fn put_certificate(
        &self,
        site_id: &str,
        cert: &IssuedCertificate,
    ) -> Result<Option<EventRecord>, StoreError> {
        let (site_id, cert) = (site_id.to_string(), cert.clone());
        backend!(self, |b| b.put_certificate(&site_id, &cert))
    }

    /// A site's ACME certificate.
    pub async fn certificate(&self, site_id: &str) -> Result<Option<IssuedCertificate>, StoreError> {
        let site_id = site_id.to_string();
        backend!(self, |b| b.certificate(&site_id))
    }

    /// Every site's ACME certificate, by site.
    pub async fn certificates(&self) -> Result<BTreeMap<String, IssuedCertificate>, StoreError> {
        backend!(self, |b| b.certificates())
    }

    /// Logs an HTTP-01 challenge for the nodes to answer; `None` when the
    /// site is gone.
    pub async fn log_challenge(
        &self,
        site_id: &str,
        token: &str,
        key_authorization: &str,
        until_ms: u64,
    ) -> Result<Option<EventRecord>, StoreError> {
        let event = outpost_config::Event::AcmeChallenge {
            site_id: site_id.to_string(),
            token: token.to_string(),
            key_authorization: key_authorization.to_string(),
            until_ms,
        };
        backend!(self, |b| b.log_challenge(event))
    }

    /// A small record kept beside the sites (the ACME account, order
    /// claims), by name.
    pub async fn record(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_string();
        backend!(self, |b| b.record(&name))
    }

    /// Sets (`Some`) or removes (`None`) record `name` if it still holds
    /// `expected` (`None`: absent); `false` when another writer changed it.
    pub async fn swap_record(
        &self,
        name: &str,
        expected: Option<String>,
        new: Option<String>,
    ) -> Result<bool, StoreError> {
        let name = name.to_string();
        backend!(self, |b| b.swap_record(&name, expected.as_deref(), new.as_deref()))
    }
}

#[cfg(test)]
mod tests;
