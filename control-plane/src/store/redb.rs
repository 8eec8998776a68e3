//! The store in one redb file. Every change is one write transaction,
//! committed durably before it is acknowledged, so a control plane killed
//! at any moment has lost nothing it answered for.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use outpost_config::{Event, EventRecord, IssuedCertificate, Purge, PurgeTarget};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{NodeRecord, PopRecord, PurgeRecord, SiteRecord, StoreError, db, now_ms};

const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
const EVENTS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("events");
const SITES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("sites");
const PURGES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("purges");
const NODES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("nodes");
const POPS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("pops");
/// Sites' ACME certificates, by site.
const CERTS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("certificates");
/// Small named records: the ACME account, order claims.
const RECORDS: TableDefinition<'static, &str, &str> = TableDefinition::new("records");
/// Per site, the sequence of its last hard purge whose record was pruned
/// (`RedbStore::prune_purges`).
const PRUNED: TableDefinition<'static, &str, u64> = TableDefinition::new("pruned_purges");
/// The last [`super::HISTORY`] versions of every site, by (id, version).
const HISTORY: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("site_history");

/// `meta` keys.
const NEXT_SEQ: &str = "next_seq";
const FIRST_SEQ: &str = "first_seq";
const NEXT_PURGE: &str = "next_purge";

#[derive(Debug, Clone)]
pub(super) struct RedbStore {
    db: Arc<Database>,
}

impl RedbStore {
    pub(super) fn open(path: &Path) -> Result<RedbStore, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(db)?;
        }
        let database = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.display().to_string()),
            other => db(other),
        })?;
        let tx = database.begin_write().map_err(db)?;
        {
            tx.open_table(EVENTS).map_err(db)?;
            tx.open_table(HISTORY).map_err(db)?;
            tx.open_table(RECORDS).map_err(db)?;
            tx.open_table(PRUNED).map_err(db)?;
            for t in [SITES, PURGES, NODES, POPS, CERTS] {
                tx.open_table(t).map_err(db)?;
            }
            let mut meta = tx.open_table(META).map_err(db)?;
            if meta.get(NEXT_SEQ).map_err(db)?.is_none() {
                meta.insert(NEXT_SEQ, 1).map_err(db)?;
                meta.insert(FIRST_SEQ, 1).map_err(db)?;
                meta.insert(NEXT_PURGE, 1).map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(RedbStore { db: Arc::new(database) })
    }

    fn meta(&self, key: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(META).map_err(db)?;
        Ok(t.get(key).map_err(db)?.map_or(0, |v| v.value()))
    }

    /// The last sequence number in the log (0: none yet).
    pub(super) fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.meta(NEXT_SEQ)?.saturating_sub(1))
    }

    /// The oldest sequence number still in the log.
    pub(super) fn first_seq(&self) -> Result<u64, StoreError> {
        self.meta(FIRST_SEQ)
    }

    /// Appends an event and applies it to the tables, in one transaction.
    /// `event` is made inside it, from what the transaction reads, so
    /// nothing can change between the check and the write.
    fn append(
        &self,
        event: impl FnOnce(&WriteTransaction) -> Result<Event, StoreError>,
    ) -> Result<EventRecord, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let event = event(&tx)?;
        let record;
        {
            let mut meta = tx.open_table(META).map_err(db)?;
            let seq = meta.get(NEXT_SEQ).map_err(db)?.map_or(1, |v| v.value());
            meta.insert(NEXT_SEQ, seq + 1).map_err(db)?;
            let at_ms = now_ms();
            match &event {
                Event::SiteUpserted { site_id, version, toml } => {
                    let created_seq = site_in(&tx, site_id)?.map_or(seq, |s| s.created_seq);
                    let (id, text) = (site_id.clone(), toml.clone());
                    let rec = SiteRecord { id, version: *version, toml: text, updated_ms: at_ms, created_seq };
                    let bytes = serde_json::to_vec(&rec).map_err(db)?;
                    tx.open_table(SITES).map_err(db)?.insert(site_id.as_str(), bytes.as_slice()).map_err(db)?;
                    let mut history = tx.open_table(HISTORY).map_err(db)?;
                    history.insert((site_id.as_str(), *version), bytes.as_slice()).map_err(db)?;
                    if let Some(old) = version.checked_sub(super::HISTORY) {
                        history.retain_in((site_id.as_str(), 0)..=(site_id.as_str(), old), |_, _| false).map_err(db)?;
                    }
                }
                Event::SiteDeleted { site_id } => {
                    tx.open_table(SITES).map_err(db)?.remove(site_id.as_str()).map_err(db)?;
                    tx.open_table(CERTS).map_err(db)?.remove(site_id.as_str()).map_err(db)?;
                    let mut history = tx.open_table(HISTORY).map_err(db)?;
                    history
                        .retain_in((site_id.as_str(), 0)..=(site_id.as_str(), u64::MAX), |_, _| false)
                        .map_err(db)?;
                }
                Event::Purge(p) => {
                    let rec = PurgeRecord { purge: p.clone(), seq, at_ms };
                    let bytes = serde_json::to_vec(&rec).map_err(db)?;
                    tx.open_table(PURGES).map_err(db)?.insert(p.id.as_str(), bytes.as_slice()).map_err(db)?;
                }
                Event::Certificate { site_id, certificate } => {
                    let bytes = serde_json::to_vec(certificate).map_err(db)?;
                    tx.open_table(CERTS).map_err(db)?.insert(site_id.as_str(), bytes.as_slice()).map_err(db)?;
                }
                Event::AcmeChallenge { .. } => {}
            }
            record = EventRecord { seq, at_ms, event };
            let bytes = serde_json::to_vec(&record).map_err(db)?;
            tx.open_table(EVENTS).map_err(db)?.insert(seq, bytes.as_slice()).map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(record)
    }

    /// Stores a new version of a site if it is still at `base`, and logs it.
    pub(super) fn upsert_site(
        &self,
        id: &str,
        toml: &str,
        base: Option<u64>,
        checked: Option<u64>,
    ) -> Result<EventRecord, StoreError> {
        self.append(|tx| {
            if let Some(checked) = checked {
                let next = tx.open_table(META).map_err(db)?.get(NEXT_SEQ).map_err(db)?.map_or(1, |v| v.value());
                let events = tx.open_table(EVENTS).map_err(db)?;
                let mut logged = Vec::new();
                for row in events.range(checked.saturating_add(1)..next).map_err(db)? {
                    let (_, v) = row.map_err(db)?;
                    logged.push(serde_json::from_slice(v.value()).map_err(db)?);
                }
                if super::sites_moved(checked, next, &logged) {
                    return Err(StoreError::SitesMoved);
                }
            }
            let current = site_in(tx, id)?.map(|s| s.version);
            if current != base {
                return Err(conflict(id, base, current));
            }
            Ok(Event::SiteUpserted { site_id: id.to_string(), version: base.unwrap_or(0) + 1, toml: toml.to_string() })
        })
    }

    /// Removes a site; `None` when there was none.
    pub(super) fn delete_site(&self, id: &str) -> Result<Option<EventRecord>, StoreError> {
        let logged = self.append(|tx| match site_in(tx, id)? {
            Some(_) => Ok(Event::SiteDeleted { site_id: id.to_string() }),
            None => Err(StoreError::Conflict(String::new())),
        });
        match logged {
            Ok(rec) => Ok(Some(rec)),
            Err(StoreError::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) fn site(&self, id: &str) -> Result<Option<SiteRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(SITES).map_err(db)?;
        let v = t.get(id).map_err(db)?;
        v.map(|v| serde_json::from_slice(v.value()).map_err(db)).transpose()
    }

    pub(super) fn site_history(&self, id: &str) -> Result<Vec<SiteRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(HISTORY).map_err(db)?;
        let mut out = Vec::new();
        for row in t.range((id, 0)..=(id, u64::MAX)).map_err(db)?.rev() {
            let (_, v) = row.map_err(db)?;
            out.push(serde_json::from_slice(v.value()).map_err(db)?);
        }
        Ok(out)
    }

    pub(super) fn sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        Self::sites_in(&tx)
    }

    /// The last sequence number and the sites, from one read transaction.
    pub(super) fn sites_at_seq(&self) -> Result<(u64, Vec<SiteRecord>), StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let seq = tx.open_table(META).map_err(db)?.get(NEXT_SEQ).map_err(db)?.map_or(0, |v| v.value());
        Ok((seq.saturating_sub(1), Self::sites_in(&tx)?))
    }

    fn sites_in(tx: &redb::ReadTransaction) -> Result<Vec<SiteRecord>, StoreError> {
        let t = tx.open_table(SITES).map_err(db)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db)? {
            let (_, v) = row.map_err(db)?;
            out.push(serde_json::from_slice(v.value()).map_err(db)?);
        }
        Ok(out)
    }

    /// Logs a purge, giving it the next purge id.
    pub(super) fn add_purge(&self, site_id: &str, target: PurgeTarget, soft: bool) -> Result<PurgeRecord, StoreError> {
        let rec = self.append(|tx| {
            let mut meta = tx.open_table(META).map_err(db)?;
            let n = meta.get(NEXT_PURGE).map_err(db)?.map_or(1, |v| v.value());
            meta.insert(NEXT_PURGE, n + 1).map_err(db)?;
            Ok(Event::Purge(Purge { id: format!("p{n}"), site_id: site_id.to_string(), target, soft }))
        })?;
        match rec.event {
            Event::Purge(purge) => Ok(PurgeRecord { purge, seq: rec.seq, at_ms: rec.at_ms }),
            _ => Err(db("a purge logged as another event")),
        }
    }

    pub(super) fn purge(&self, id: &str) -> Result<Option<PurgeRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(PURGES).map_err(db)?;
        let v = t.get(id).map_err(db)?;
        v.map(|v| serde_json::from_slice(v.value()).map_err(db)).transpose()
    }

    /// The purges logged after `seq` (a scan: snapshots only).
    pub(super) fn purges_after(&self, seq: u64) -> Result<Vec<PurgeRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(PURGES).map_err(db)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db)? {
            let (_, v) = row.map_err(db)?;
            let p: PurgeRecord = serde_json::from_slice(v.value()).map_err(db)?;
            if p.seq > seq {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Prunes the purge records a snapshot no longer needs one by one
    /// ([`super::Store::prune_purges`]), in one transaction with the marks
    /// they leave.
    pub(super) fn prune_purges(&self, keep_hard: usize) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let pruned = {
            let first = tx.open_table(META).map_err(db)?.get(FIRST_SEQ).map_err(db)?.map_or(1, |v| v.value());
            let mut purges = tx.open_table(PURGES).map_err(db)?;
            let mut all = Vec::new();
            for row in purges.iter().map_err(db)? {
                let (_, v) = row.map_err(db)?;
                all.push(serde_json::from_slice::<PurgeRecord>(v.value()).map_err(db)?);
            }
            let (gone, marks) = super::prunable(all, first, keep_hard);
            for p in &gone {
                purges.remove(p.purge.id.as_str()).map_err(db)?;
            }
            let mut kept = tx.open_table(PRUNED).map_err(db)?;
            for (site, seq) in marks {
                let before = kept.get(site.as_str()).map_err(db)?.map_or(0, |v| v.value());
                kept.insert(site.as_str(), seq.max(before)).map_err(db)?;
            }
            gone.len() as u64
        };
        if pruned == 0 {
            tx.abort().map_err(db)?;
        } else {
            tx.commit().map_err(db)?;
        }
        Ok(pruned)
    }

    pub(super) fn pruned_purges(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(PRUNED).map_err(db)?;
        let mut out = BTreeMap::new();
        for row in t.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            out.insert(k.value().to_string(), v.value());
        }
        Ok(out)
    }

    /// Events after `seq`, oldest first, at most `limit`.
    pub(super) fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(EVENTS).map_err(db)?;
        let mut out = Vec::new();
        for row in t.range(seq + 1..).map_err(db)?.take(limit) {
            let (_, v) = row.map_err(db)?;
            out.push(serde_json::from_slice(v.value()).map_err(db)?);
        }
        Ok(out)
    }

    /// Drops events so that at most `keep` remain; nodes further behind
    /// catch up from a snapshot.
    pub(super) fn compact(&self, keep: u64) -> Result<u64, StoreError> {
        let last = self.last_seq()?;
        let first_kept = last.saturating_sub(keep) + 1;
        let first = self.first_seq()?;
        if first_kept <= first {
            return Ok(0);
        }
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut t = tx.open_table(EVENTS).map_err(db)?;
            for seq in first..first_kept {
                t.remove(seq).map_err(db)?;
            }
            tx.open_table(META).map_err(db)?.insert(FIRST_SEQ, first_kept).map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(first_kept - first)
    }

    /// Registers or refreshes a node. Registry updates come with every
    /// acknowledgement and need no fsync of their own: each node persists
    /// its own sequence, and the next durable commit writes them too.
    pub(super) fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(db)?;
        tx.set_durability(redb::Durability::None).map_err(db)?;
        {
            let bytes = serde_json::to_vec(node).map_err(db)?;
            tx.open_table(NODES).map_err(db)?.insert(node.name.as_str(), bytes.as_slice()).map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// Takes a node out of the registry.
    pub(super) fn remove_node(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(db)?;
        tx.set_durability(redb::Durability::None).map_err(db)?;
        tx.open_table(NODES).map_err(db)?.remove(name).map_err(db)?;
        tx.commit().map_err(db)
    }

    pub(super) fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(NODES).map_err(db)?;
        let v = t.get(name).map_err(db)?;
        v.map(|v| serde_json::from_slice(v.value()).map_err(db)).transpose()
    }

    pub(super) fn nodes(&self) -> Result<BTreeMap<String, NodeRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(NODES).map_err(db)?;
        let mut out = BTreeMap::new();
        for row in t.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            out.insert(k.value().to_string(), serde_json::from_slice(v.value()).map_err(db)?);
        }
        Ok(out)
    }
}

impl RedbStore {
    /// Sets a PoP's weight, durably: an operator's drain outlives a crash.
    pub(super) fn put_pop(&self, pop: &PopRecord) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let bytes = serde_json::to_vec(pop).map_err(db)?;
            tx.open_table(POPS).map_err(db)?.insert(pop.name.as_str(), bytes.as_slice()).map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    pub(super) fn pops(&self) -> Result<Vec<PopRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(POPS).map_err(db)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db)? {
            out.push(serde_json::from_slice(row.map_err(db)?.1.value()).map_err(db)?);
        }
        Ok(out)
    }
}

impl RedbStore {
    /// Stores and logs a site's certificate, unless the site is gone.
    pub(super) fn put_certificate(
        &self,
        site_id: &str,
        cert: &IssuedCertificate,
    ) -> Result<Option<EventRecord>, StoreError> {
        self.log_for_site(Event::Certificate { site_id: site_id.to_string(), certificate: cert.clone() })
    }

    pub(super) fn log_challenge(&self, event: Event) -> Result<Option<EventRecord>, StoreError> {
        self.log_for_site(event)
    }

    /// Logs `event` if its site still exists.
    fn log_for_site(&self, event: Event) -> Result<Option<EventRecord>, StoreError> {
        let logged = self.append(|tx| match site_in(tx, event.site_id())? {
            Some(_) => Ok(event),
            None => Err(StoreError::Conflict(String::new())),
        });
        match logged {
            Ok(rec) => Ok(Some(rec)),
            Err(StoreError::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) fn certificate(&self, site_id: &str) -> Result<Option<IssuedCertificate>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(CERTS).map_err(db)?;
        let v = t.get(site_id).map_err(db)?;
        v.map(|v| serde_json::from_slice(v.value()).map_err(db)).transpose()
    }

    pub(super) fn certificates(&self) -> Result<BTreeMap<String, IssuedCertificate>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(CERTS).map_err(db)?;
        let mut out = BTreeMap::new();
        for row in t.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            out.insert(k.value().to_string(), serde_json::from_slice(v.value()).map_err(db)?);
        }
        Ok(out)
    }

    pub(super) fn record(&self, name: &str) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(RECORDS).map_err(db)?;
        Ok(t.get(name).map_err(db)?.map(|v| v.value().to_string()))
    }

    pub(super) fn swap_record(
        &self,
        name: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut t = tx.open_table(RECORDS).map_err(db)?;
            let current = t.get(name).map_err(db)?.map(|v| v.value().to_string());
            if current.as_deref() != expected {
                return Ok(false);
            }
            match new {
                Some(v) => drop(t.insert(name, v).map_err(db)?),
                None => drop(t.remove(name).map_err(db)?),
            }
        }
        tx.commit().map_err(db)?;
        Ok(true)
    }
}

/// The site `id` as the transaction `tx` sees it.
fn site_in(tx: &WriteTransaction, id: &str) -> Result<Option<SiteRecord>, StoreError> {
    let t = tx.open_table(SITES).map_err(db)?;
    let v = t.get(id).map_err(db)?;
    v.map(|v| serde_json::from_slice(v.value()).map_err(db)).transpose()
}

pub(super) fn conflict(id: &str, base: Option<u64>, current: Option<u64>) -> StoreError {
    let version = |v: Option<u64>| v.map_or_else(|| "absent".to_string(), |v| format!("version {v}"));
    StoreError::Conflict(format!("site `{id}` is at {}, not {}: it changed meanwhile", version(current), version(base)))
}
