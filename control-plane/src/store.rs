//! The control plane's durable store: one redb file holding the sites with
//! their versions, the ordered event log, purge records and the node
//! registry. Every change is one write transaction, committed durably
//! before it is acknowledged, so a control plane killed at any moment has
//! lost nothing it answered for. redb refuses a file another process has
//! open: two control planes cannot share one store.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use outpost_config::{Event, EventRecord, Purge, PurgeTarget};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
const EVENTS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("events");
const SITES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("sites");
const PURGES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("purges");
const NODES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("nodes");

/// `meta` keys.
const NEXT_SEQ: &str = "next_seq";
const FIRST_SEQ: &str = "first_seq";
const NEXT_PURGE: &str = "next_purge";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store `{0}` is open in another control plane process; only one may use it")]
    InUse(String),
    #[error("store: {0}")]
    Db(String),
}

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub use outpost_config::api::{NodeRecord, SiteRecord};

/// A purge and when it entered the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeRecord {
    pub purge: Purge,
    pub seq: u64,
    pub at_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
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
            for t in [SITES, PURGES, NODES] {
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
        Ok(Store { db: Arc::new(database) })
    }

    fn meta(&self, key: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(META).map_err(db)?;
        Ok(t.get(key).map_err(db)?.map_or(0, |v| v.value()))
    }

    /// The last sequence number in the log (0: none yet).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.meta(NEXT_SEQ)?.saturating_sub(1))
    }

    /// The oldest sequence number still in the log.
    pub fn first_seq(&self) -> Result<u64, StoreError> {
        self.meta(FIRST_SEQ)
    }

    /// Appends an event and applies it to the tables, in one transaction.
    fn append(&self, event: Event, purge_seq_out: Option<&mut u64>) -> Result<EventRecord, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let record;
        {
            let mut meta = tx.open_table(META).map_err(db)?;
            let seq = meta.get(NEXT_SEQ).map_err(db)?.map_or(1, |v| v.value());
            meta.insert(NEXT_SEQ, seq + 1).map_err(db)?;
            let at_ms = now_ms();
            match &event {
                Event::SiteUpserted { site_id, version, toml } => {
                    let rec =
                        SiteRecord { id: site_id.clone(), version: *version, toml: toml.clone(), updated_ms: at_ms };
                    let bytes = serde_json::to_vec(&rec).map_err(db)?;
                    tx.open_table(SITES).map_err(db)?.insert(site_id.as_str(), bytes.as_slice()).map_err(db)?;
                }
                Event::SiteDeleted { site_id } => {
                    tx.open_table(SITES).map_err(db)?.remove(site_id.as_str()).map_err(db)?;
                }
                Event::Purge(p) => {
                    let rec = PurgeRecord { purge: p.clone(), seq, at_ms };
                    let bytes = serde_json::to_vec(&rec).map_err(db)?;
                    tx.open_table(PURGES).map_err(db)?.insert(p.id.as_str(), bytes.as_slice()).map_err(db)?;
                }
            }
            record = EventRecord { seq, at_ms, event };
            let bytes = serde_json::to_vec(&record).map_err(db)?;
            tx.open_table(EVENTS).map_err(db)?.insert(seq, bytes.as_slice()).map_err(db)?;
            if let Some(out) = purge_seq_out {
                *out = seq;
            }
        }
        tx.commit().map_err(db)?;
        Ok(record)
    }

    /// Stores a new version of a site (already validated) and logs it.
    pub fn upsert_site(&self, id: &str, toml: &str) -> Result<EventRecord, StoreError> {
        let version = self.site(id)?.map_or(1, |s| s.version + 1);
        self.append(Event::SiteUpserted { site_id: id.to_string(), version, toml: toml.to_string() }, None)
    }

    /// Removes a site; `None` when there was none.
    pub fn delete_site(&self, id: &str) -> Result<Option<EventRecord>, StoreError> {
        if self.site(id)?.is_none() {
            return Ok(None);
        }
        self.append(Event::SiteDeleted { site_id: id.to_string() }, None).map(Some)
    }

    pub fn site(&self, id: &str) -> Result<Option<SiteRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(SITES).map_err(db)?;
        let v = t.get(id).map_err(db)?;
        v.map(|v| serde_json::from_slice(v.value()).map_err(db)).transpose()
    }

    pub fn sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(SITES).map_err(db)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db)? {
            let (_, v) = row.map_err(db)?;
            out.push(serde_json::from_slice(v.value()).map_err(db)?);
        }
        Ok(out)
    }

    /// Logs a purge, giving it the next purge id.
    pub fn add_purge(&self, site_id: &str, target: PurgeTarget, soft: bool) -> Result<PurgeRecord, StoreError> {
        let id = {
            let tx = self.db.begin_write().map_err(db)?;
            let n;
            {
                let mut meta = tx.open_table(META).map_err(db)?;
                n = meta.get(NEXT_PURGE).map_err(db)?.map_or(1, |v| v.value());
                meta.insert(NEXT_PURGE, n + 1).map_err(db)?;
            }
            tx.commit().map_err(db)?;
            format!("p{n}")
        };
        let purge = Purge { id: id.clone(), site_id: site_id.to_string(), target, soft };
        let mut seq = 0;
        let rec = self.append(Event::Purge(purge.clone()), Some(&mut seq))?;
        Ok(PurgeRecord { purge, seq, at_ms: rec.at_ms })
    }

    pub fn purge(&self, id: &str) -> Result<Option<PurgeRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(PURGES).map_err(db)?;
        let v = t.get(id).map_err(db)?;
        v.map(|v| serde_json::from_slice(v.value()).map_err(db)).transpose()
    }

    /// Events after `seq`, oldest first, at most `limit`.
    pub fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
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
    pub fn compact(&self, keep: u64) -> Result<u64, StoreError> {
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
    pub fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(db)?;
        tx.set_durability(redb::Durability::None).map_err(db)?;
        {
            let bytes = serde_json::to_vec(node).map_err(db)?;
            tx.open_table(NODES).map_err(db)?.insert(node.name.as_str(), bytes.as_slice()).map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// Takes a node out of the registry.
    pub fn remove_node(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(db)?;
        tx.set_durability(redb::Durability::None).map_err(db)?;
        tx.open_table(NODES).map_err(db)?.remove(name).map_err(db)?;
        tx.commit().map_err(db)
    }

    pub fn nodes(&self) -> Result<BTreeMap<String, NodeRecord>, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sites_purges_and_nodes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(s.last_seq().unwrap(), 0);
            let e = s.upsert_site("a", "[site]").unwrap();
            assert_eq!(e.seq, 1);
            let e = s.upsert_site("a", "[site] v2").unwrap();
            assert!(matches!(e.event, Event::SiteUpserted { version: 2, .. }));
            let p = s.add_purge("a", PurgeTarget::All, true).unwrap();
            assert_eq!((p.purge.id.as_str(), p.seq), ("p1", 3));
            assert!(s.delete_site("nope").unwrap().is_none());
            s.put_node(&NodeRecord {
                load_rps: None,
                name: "edge-1".into(),
                role: outpost_config::Role::Edge,
                pop: Some("fra".into()),
                addrs: vec![],
                acked_seq: 3,
                last_contact_ms: 1,
            })
            .unwrap();
            assert!(matches!(Store::open(&path), Err(StoreError::InUse(_))), "a second opener is refused");
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.last_seq().unwrap(), 3);
        assert_eq!(s.site("a").unwrap().unwrap().version, 2);
        assert_eq!(s.purge("p1").unwrap().unwrap().seq, 3);
        assert_eq!(s.events_after(1, 10).unwrap().len(), 2);
        assert_eq!(s.nodes().unwrap()["edge-1"].acked_seq, 3);
        assert_eq!(s.compact(1).unwrap(), 2);
        assert_eq!(s.first_seq().unwrap(), 3);
        assert_eq!(s.events_after(0, 10).unwrap().len(), 1);
    }
}
