//! The store in an etcd cluster, shared by every control-plane replica.
//!
//! Keys, under the configured prefix `P`:
//!
//! | key | value |
//! |---|---|
//! | `P/meta/seq` | the last sequence number given (decimal) |
//! | `P/meta/first` | the oldest sequence number still in the log |
//! | `P/meta/purge` | the last purge number given |
//! | `P/events/<seq, 20 digits>` | an [`EventRecord`] (JSON) |
//! | `P/sites/<id>` | a [`SiteRecord`] |
//! | `P/history/<id>/<version, 20 digits>` | the site's last [`super::HISTORY`] versions |
//! | `P/purges/<id>` | a [`PurgeRecord`] |
//! | `P/nodes/<name>` | a [`NodeRecord`] |
//! | `P/pops/<name>` | a [`PopRecord`] (a PoP's weight, set by an operator) |
//! | `P/conn/<name>/<replica>` | present while `replica` has the node's stream open (on the replica's lease) |
//!
//! Every write that logs an event is one transaction that succeeds only if
//! `P/meta/seq` and every record it read are unchanged since it read them,
//! so the log has one order across replicas and nothing is written twice;
//! a transaction that lost a race on the sequence alone is retried, one
//! that lost it on the record it changes is a [`StoreError::Conflict`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity, KeyValue, TlsOptions,
    Txn, TxnOp, TxnOpResponse,
};
use outpost_config::{EtcdStore, Event, EventRecord, IssuedCertificate, Purge, PurgeTarget};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{NodeRecord, PopRecord, PurgeRecord, SiteRecord, StoreError, db, now_ms};

mod follow;

/// Purge records pruned a transaction: etcd takes at most 128 operations
/// in one (`--max-txn-ops`), and each batch also writes the marks.
const PRUNE_BATCH: usize = 100;

/// How long one call to the cluster may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to the cluster may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Transactions retried after losing a race for the next sequence number,
/// before the write is reported as failed.
const MAX_RACES: usize = 64;
/// How long a read with quorum waits for one member (longer than a
/// leader election) before asking the next.
const READ_WAIT: Duration = Duration::from_secs(2);
/// How long a quorum check waits for an answer.
const QUORUM_WAIT: Duration = Duration::from_secs(1);
/// How long a write keeps trying while the cluster does not answer (a
/// leader election takes about a second), and the pause between tries.
const WRITE_PATIENCE: Duration = Duration::from_secs(5);
const WRITE_RETRY: Duration = Duration::from_millis(100);
/// Pause before watching the log again after the watch failed.
const FOLLOW_RETRY: Duration = Duration::from_millis(200);
/// How long a replica's presence records outlive it: its nodes count as
/// disconnected this long after it dies or loses the cluster, the time a
/// node takes to notice a dead stream.
const PRESENCE_TTL: Duration = outpost_config::api::DEAD_AFTER;

/// The largest reply read from etcd.
const MAX_REPLY: usize = 1 << 30;

#[derive(Clone)]
pub(super) struct EtcdBackend {
    /// A client per member, so a dead member is left for the next one
    /// rather than tried again at random.
    members: std::sync::Arc<[Client]>,
    /// The same members, for watches and leases: these need the member
    /// to have a leader.
    followers: std::sync::Arc<[Client]>,
    /// The member calls go to; moves on when one does not answer.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The last quorum check ([`EtcdBackend::has_quorum`]) found one.
    quorum_seen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    prefix: String,
    /// This process's writers take turns: they would only race each other
    /// for the sequence number; races with other replicas are retried.
    writing: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// This replica's name among the replicas.
    replica: String,
    /// The nodes whose streams this replica has open, and a wake-up for
    /// the task that publishes them ([`EtcdBackend::keep_presence`]).
    present: std::sync::Arc<(std::sync::Mutex<BTreeSet<String>>, tokio::sync::Notify)>,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// A record as read, with the revision a transaction compares against
/// (0: absent).
struct Read<T> {
    value: Option<T>,
    revision: i64,
}

impl EtcdBackend {
    pub(super) async fn connect(cfg: &EtcdStore, replica: &str) -> Result<EtcdBackend, StoreError> {
        let mut options = ConnectOptions::new().with_timeout(CALL_TIMEOUT).with_connect_timeout(CONNECT_TIMEOUT);
        if cfg.ca.is_some() || cfg.identity.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read_file(ca)?));
            }
            if let Some((cert, key)) = &cfg.identity {
                tls = tls.identity(Identity::from_pem(read_file(cert)?, read_file(key)?));
            }
            options = options.with_tls(tls);
        }
        if let Some((user, password_file)) = &cfg.user {
            let password = String::from_utf8(read_file(password_file)?).map_err(db)?;
            options = options.with_user(user.clone(), password.trim().to_string());
        }
        let (mut members, mut followers) = (Vec::new(), Vec::new());
        // Watches and leases need a member with a leader: one cut off from
        // its cluster ends them (within a few election timeouts) instead
        // of keeping them open on a past that no longer moves, which
        // would starve this replica's streams silently.
        let with_leader = options.clone().with_require_leader(true);
        for endpoint in &cfg.endpoints {
            let connect = |options: ConnectOptions| async move {
                Client::connect([endpoint], Some(options))
                    .await
                    .map_err(|e| StoreError::Db(format!("cannot reach etcd at {endpoint}: {e}")))
            };
            members.push(connect(options.clone()).await?);
            followers.push(connect(with_leader.clone()).await?);
        }
        let prefix = cfg.prefix.trim_end_matches('/').to_string();
        Ok(EtcdBackend {
            members: members.into(),
            followers: followers.into(),
            current: std::sync::Arc::default(),
            quorum_seen: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            prefix,
            writing: std::sync::Arc::default(),
            replica: replica.to_string(),
            present: std::sync::Arc::default(),
        })
    }

    /// The client of the member calls go to now.
    fn client(&self) -> Client {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.members.len();
        self.members[i].clone()
    }

    /// The key-value calls of the member calls go to, taking replies up to
    /// [`MAX_REPLY`]: gRPC's own 4 MiB would fail every read of the sites
    /// once they total that much, or of a long backlog of events, as if
    /// the cluster had no quorum.
    fn kv(&self) -> etcd_client::KvClient {
        self.client().kv_client().max_decoding_message_size(MAX_REPLY)
    }

    /// The client for watches and leases on the member calls go to now.
    fn follower(&self) -> Client {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.followers.len();
        self.followers[i].clone()
    }

    /// The watches of [`follower`](Self::follower), taking replies up to
    /// [`MAX_REPLY`] as [`kv`](Self::kv) does.
    fn watcher(&self) -> etcd_client::WatchClient {
        self.follower().watch_client().max_decoding_message_size(MAX_REPLY)
    }

    /// Calls go to the next member from now on (this one did not answer).
    fn next_member(&self) {
        self.current.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push('/');
            k.push_str(p);
        }
        k
    }

    fn history_key(&self, id: &str, version: u64) -> String {
        self.key(&["history", id, &format!("{version:020}")])
    }

    fn event_key(&self, seq: u64) -> String {
        self.key(&["events", &format!("{seq:020}")])
    }

    async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Read<T>, StoreError> {
        let mut resp = self.read(key.to_string(), GetOptions::new()).await?;
        match resp.take_kvs().into_iter().next() {
            Some(kv) => Ok(Read { value: Some(decode(&kv)?), revision: kv.mod_revision() }),
            None => Ok(Read { value: None, revision: 0 }),
        }
    }

    async fn counter(&self, name: &str) -> Result<Read<u64>, StoreError> {
        self.get(&self.key(&["meta", name])).await
    }

    /// Every record under `P/<folder>/`, in key order.
    async fn list<T: DeserializeOwned>(&self, folder: &str) -> Result<Vec<(String, T)>, StoreError> {
        let from = self.key(&[folder, ""]);
        let resp = self.read(from.clone(), GetOptions::new().with_prefix()).await?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let name = String::from_utf8_lossy(&kv.key()[from.len()..]).into_owned();
                Ok((name, decode(kv)?))
            })
            .collect()
    }

    /// A read as the cluster's majority sees it; when no member can give
    /// that (no quorum reachable from here), what a member knows, which
    /// may be behind.
    async fn read(&self, key: String, options: GetOptions) -> Result<etcd_client::GetResponse, StoreError> {
        // A replica that has seen its quorum answer reads with it, each
        // member given the time of a leader election; one whose last look
        // (or whose quorum probe meanwhile) found none settles for its member.
        for _ in 0..self.members.len() {
            if !self.quorum_seen.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            match tokio::time::timeout(READ_WAIT, self.kv().get(key.clone(), Some(options.clone()))).await {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(e)) => tracing::debug!(error = %e, "a read with quorum failed"),
                Err(_) => tracing::debug!("a read with quorum had no answer"),
            }
            self.next_member();
        }
        // No member could answer with the quorum: what one of them knows.
        let mut last = None;
        for _ in 0..self.members.len() {
            let mut client = self.kv();
            let read = client.get(key.clone(), Some(options.clone().with_serializable()));
            match tokio::time::timeout(READ_WAIT, read).await {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(e)) => last = Some(unavailable(e)),
                Err(_) => last = Some(StoreError::Unavailable("no etcd member answered a read".into())),
            }
            self.next_member();
        }
        Err(last.unwrap_or_else(|| db("no etcd member")))
    }

    /// A read that needs the quorum answers within [`QUORUM_WAIT`], from
    /// any member: all are asked at once, and calls go from now on to the
    /// first that answered.
    pub(super) async fn has_quorum(&self) -> bool {
        let key = self.key(&["meta", "seq"]);
        let mut probes = tokio::task::JoinSet::new();
        for (i, member) in self.members.iter().enumerate() {
            let (mut client, key) = (member.clone(), key.clone());
            probes.spawn(async move {
                let probe = client.get(key, Some(GetOptions::new().with_keys_only()));
                matches!(tokio::time::timeout(QUORUM_WAIT, probe).await, Ok(Ok(_))).then_some(i)
            });
        }
        let mut answered = None;
        while let Some(probe) = probes.join_next().await {
            if let Ok(Some(i)) = probe {
                answered = Some(i);
                break;
            }
        }
        if let Some(i) = answered {
            self.current.store(i, std::sync::atomic::Ordering::Relaxed);
        }
        self.quorum_seen.store(answered.is_some(), std::sync::atomic::Ordering::Relaxed);
        answered.is_some()
    }

    /// Commits `ops` if every `guard` holds.
    async fn commit(&self, guards: Vec<Compare>, ops: Vec<TxnOp>) -> Result<bool, StoreError> {
        match self.kv().txn(Txn::new().when(guards).and_then(ops)).await {
            Ok(resp) => Ok(resp.succeeded()),
            Err(e) => {
                self.next_member();
                Err(unavailable(e))
            }
        }
    }

    /// Logs the event `make` returns from the current state, with the
    /// writes `make` adds; retried when another writer took the sequence
    /// number meanwhile. `make` is given the sequence number and the time
    /// the event is logged at (what its own records say too), and gives
    /// `None` for nothing to log.
    async fn append<F, Fut>(&self, mut make: F) -> Result<Option<EventRecord>, StoreError>
    where
        F: FnMut(u64, u64) -> Fut,
        Fut: std::future::Future<Output = Result<Option<Planned>, StoreError>>,
    {
        let _turn = self.writing.lock().await;
        let deadline = tokio::time::Instant::now() + WRITE_PATIENCE;
        // A record whose commit was sent but not confirmed: it may be in.
        let mut unconfirmed: Option<EventRecord> = None;
        let mut races = 0;
        loop {
            if let Some(sent) = &unconfirmed
                && let Ok(Read { value: Some(found), .. }) = self.get::<EventRecord>(&self.event_key(sent.seq)).await
            {
                if &found == sent {
                    return Ok(unconfirmed);
                }
                unconfirmed = None;
            }
            // However the members answer (or do not: a link that drops
            // packets holds a call until its own timeout), the write ends
            // at the deadline. A commit sent but unanswered by then may
            // still land: the caller hears that the outcome is unknown.
            let Ok(attempt) = tokio::time::timeout_at(deadline, self.append_once(&mut make)).await else {
                return Err(StoreError::Unavailable(format!(
                    "the cluster did not confirm the write within {} s; it may or may not have been made",
                    WRITE_PATIENCE.as_secs()
                )));
            };
            match attempt {
                Ok(Appended::Done(record)) => return Ok(record),
                Ok(Appended::Raced) if races < MAX_RACES => {
                    races += 1;
                    // Another replica wrote meanwhile: step aside a moment, a
                    // little differently each time, so two do not collide again.
                    let jitter = u64::from(std::process::id() % 7) + now_ms() % 5;
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Ok(Appended::Raced) => {
                    return Err(StoreError::Db(format!(
                        "gave up after losing {MAX_RACES} races for the next sequence number"
                    )));
                }
                // The cluster did not answer (a leader election, a lost
                // member): try again until the patience runs out, checking
                // first whether the unconfirmed commit landed.
                Ok(Appended::Unconfirmed(record)) if tokio::time::Instant::now() < deadline => {
                    unconfirmed = Some(record);
                    tokio::time::sleep(WRITE_RETRY).await;
                }
                Err(StoreError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(WRITE_RETRY).await;
                }
                Ok(Appended::Unconfirmed(_)) => return Err(StoreError::Unavailable("no answer to a commit".into())),
                Err(e) => return Err(e),
            }
        }
    }

    /// One try at [`EtcdBackend::append`].
    async fn append_once<F, Fut>(&self, make: &mut F) -> Result<Appended, StoreError>
    where
        F: FnMut(u64, u64) -> Fut,
        Fut: std::future::Future<Output = Result<Option<Planned>, StoreError>>,
    {
        let seq = self.counter("seq").await?;
        let next = seq.value.unwrap_or(0) + 1;
        let at_ms = now_ms();
        let Some(plan) = make(next, at_ms).await? else { return Ok(Appended::Done(None)) };
        let record = EventRecord { seq: next, at_ms, event: plan.event };
        let seq_key = self.key(&["meta", "seq"]);
        let mut guards = vec![unchanged(&seq_key, seq.revision)];
        guards.extend(plan.guards);
        let mut ops = vec![TxnOp::put(seq_key, next.to_string(), None), put(self.event_key(next), &record)?];
        ops.extend(plan.ops);
        match self.commit(guards, ops).await {
            Ok(true) => Ok(Appended::Done(Some(record))),
            Ok(false) => Ok(Appended::Raced),
            Err(StoreError::Unavailable(_)) => Ok(Appended::Unconfirmed(record)),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.counter("seq").await?.value.unwrap_or(0))
    }

    pub(super) async fn first_seq(&self) -> Result<u64, StoreError> {
        Ok(self.counter("first").await?.value.unwrap_or(1))
    }

    pub(super) async fn upsert_site(
        &self,
        id: &str,
        toml: &str,
        base: Option<u64>,
        checked: Option<u64>,
    ) -> Result<EventRecord, StoreError> {
        let key = self.key(&["sites", id]);
        let logged = self
            .append(|seq, at_ms| {
                let key = key.clone();
                async move {
                    // The events between are fixed: the write is guarded
                    // by the sequence number `seq` follows.
                    if let Some(checked) = checked {
                        let between = seq.saturating_sub(checked.saturating_add(1));
                        let logged = match between {
                            0 => Vec::new(),
                            n => self.events_after(checked, usize::try_from(n).unwrap_or(usize::MAX)).await?,
                        };
                        if super::sites_moved(checked, seq, &logged) {
                            return Err(StoreError::SitesMoved);
                        }
                    }
                    let current: Read<SiteRecord> = self.get(&key).await?;
                    let version = current.value.as_ref().map(|s| s.version);
                    if version != base {
                        return Err(super::redb::conflict(id, base, version));
                    }
                    let created_seq = current.value.as_ref().map_or(seq, |s| s.created_seq);
                    let version = base.unwrap_or(0) + 1;
                    let rec = SiteRecord {
                        id: id.to_string(),
                        version,
                        toml: toml.to_string(),
                        updated_ms: at_ms,
                        created_seq,
                    };
                    let mut ops = vec![put(key.clone(), &rec)?, put(self.history_key(id, version), &rec)?];
                    if let Some(old) = version.checked_sub(super::HISTORY) {
                        ops.push(TxnOp::delete(self.history_key(id, old), None));
                    }
                    Ok(Some(Planned {
                        event: Event::SiteUpserted { site_id: id.to_string(), version, toml: toml.to_string() },
                        guards: vec![unchanged(&key, current.revision)],
                        ops,
                    }))
                }
            })
            .await?;
        logged.ok_or_else(|| db("a site upsert logged nothing"))
    }

    pub(super) async fn delete_site(&self, id: &str) -> Result<Option<EventRecord>, StoreError> {
        let key = self.key(&["sites", id]);
        self.append(|_, _| {
            let key = key.clone();
            async move {
                let current: Read<SiteRecord> = self.get(&key).await?;
                if current.value.is_none() {
                    return Ok(None);
                }
                Ok(Some(Planned {
                    event: Event::SiteDeleted { site_id: id.to_string() },
                    guards: vec![unchanged(&key, current.revision)],
                    ops: vec![
                        TxnOp::delete(key.clone(), None),
                        TxnOp::delete(self.key(&["history", id, ""]), Some(DeleteOptions::new().with_prefix())),
                        TxnOp::delete(self.key(&["certificates", id]), None),
                    ],
                }))
            }
        })
        .await
    }

    pub(super) async fn site(&self, id: &str) -> Result<Option<SiteRecord>, StoreError> {
        Ok(self.get(&self.key(&["sites", id])).await?.value)
    }

    pub(super) async fn site_history(&self, id: &str) -> Result<Vec<SiteRecord>, StoreError> {
        let mut all: Vec<SiteRecord> = self.list(&format!("history/{id}")).await?.into_iter().map(|(_, s)| s).collect();
        all.reverse();
        Ok(all)
    }

    pub(super) async fn sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
        Ok(self.list("sites").await?.into_iter().map(|(_, s)| s).collect())
    }

    /// The last sequence number and the sites, read together in one
    /// transaction: as the quorum sees them at one revision, never what a
    /// member alone knows (a checked write needs the quorum all the same).
    /// As a write does, it keeps trying other members for
    /// [`WRITE_PATIENCE`] (a cluster electing its leader answers nothing).
    pub(super) async fn sites_at_seq(&self) -> Result<(u64, Vec<SiteRecord>), StoreError> {
        let from = self.key(&["sites", ""]);
        let deadline = tokio::time::Instant::now() + WRITE_PATIENCE;
        let resp = loop {
            let reads = vec![
                TxnOp::get(self.key(&["meta", "seq"]), None),
                TxnOp::get(from.clone(), Some(GetOptions::new().with_prefix())),
            ];
            let failed = match tokio::time::timeout(READ_WAIT, self.kv().txn(Txn::new().and_then(reads))).await {
                Ok(Ok(resp)) => break resp,
                Ok(Err(e)) => unavailable(e),
                Err(_) => StoreError::Unavailable("no etcd member answered a read".into()),
            };
            self.next_member();
            if tokio::time::Instant::now() >= deadline {
                return Err(failed);
            }
            tokio::time::sleep(WRITE_RETRY).await;
        };
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (Some(seq), Some(sites)) = (gets.next(), gets.next()) else {
            return Err(db("a read of the sites and the sequence number came back short"));
        };
        let seq = match seq.kvs().first() {
            Some(kv) => decode::<u64>(kv)?,
            None => 0,
        };
        let sites = sites.kvs().iter().map(decode).collect::<Result<Vec<SiteRecord>, _>>()?;
        Ok((seq, sites))
    }

    pub(super) async fn add_purge(
        &self,
        site_id: &str,
        target: PurgeTarget,
        soft: bool,
    ) -> Result<PurgeRecord, StoreError> {
        let counter_key = self.key(&["meta", "purge"]);
        let logged = self
            .append(|seq, at_ms| {
                let (counter_key, target) = (counter_key.clone(), target.clone());
                async move {
                    let counter = self.counter("purge").await?;
                    let n = counter.value.unwrap_or(0) + 1;
                    let purge = Purge { id: format!("p{n}"), site_id: site_id.to_string(), target, soft };
                    let rec = PurgeRecord { purge: purge.clone(), seq, at_ms };
                    Ok(Some(Planned {
                        event: Event::Purge(purge),
                        guards: vec![unchanged(&counter_key, counter.revision)],
                        ops: vec![
                            TxnOp::put(counter_key, n.to_string(), None),
                            put(self.key(&["purges", &rec.purge.id]), &rec)?,
                        ],
                    }))
                }
            })
            .await?;
        match logged.map(|r| (r.seq, r.at_ms, r.event)) {
            Some((seq, at_ms, Event::Purge(purge))) => Ok(PurgeRecord { purge, seq, at_ms }),
            _ => Err(db("a purge logged as another event")),
        }
    }

    pub(super) async fn purge(&self, id: &str) -> Result<Option<PurgeRecord>, StoreError> {
        Ok(self.get(&self.key(&["purges", id])).await?.value)
    }

    /// Compacts the cluster's history up to `to` (a revision read a turn
    /// ago, so watches that have fallen this far behind are few: they
    /// resume from their last sequence when etcd cancels them), and gives
    /// the revision now, for the next turn. Another replica having
    /// compacted further already is no error.
    pub(super) async fn compact_history(&self, to: i64) -> Result<i64, StoreError> {
        let resp = self.read(self.key(&["meta", "seq"]), GetOptions::new().with_keys_only()).await?;
        let now = resp.header().map_or(0, |h| h.revision());
        if to > 0 && to < now {
            match self.kv().compact(to, None).await {
                Ok(_) => tracing::debug!(revision = to, "etcd history compacted"),
                Err(e) if e.to_string().contains("compacted") => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(now)
    }

    /// The purges logged after `seq` (a scan: snapshots only).
    pub(super) async fn purges_after(&self, seq: u64) -> Result<Vec<PurgeRecord>, StoreError> {
        let all: Vec<(String, PurgeRecord)> = self.list("purges").await?;
        Ok(all.into_iter().map(|(_, p)| p).filter(|p| p.seq > seq).collect())
    }

    /// Prunes the purge records a snapshot no longer needs one by one
    /// ([`super::Store::prune_purges`]), [`PRUNE_BATCH`] a transaction,
    /// each with the marks its records leave. Another replica's marks
    /// written meanwhile end the turn (the next one goes on), so a mark
    /// never goes back.
    pub(super) async fn prune_purges(&self, keep_hard: usize) -> Result<u64, StoreError> {
        let first = self.counter("first").await?.value.unwrap_or(1);
        let all: Vec<(String, PurgeRecord)> = self.list("purges").await?;
        let (gone, _) = super::prunable(all.into_iter().map(|(_, p)| p).collect(), first, keep_hard);
        let marks_key = self.key(&["meta", "pruned-purges"]);
        let mut pruned = 0;
        for batch in gone.chunks(PRUNE_BATCH) {
            let marks: Read<BTreeMap<String, u64>> = self.get(&marks_key).await?;
            let mut next = marks.value.unwrap_or_default();
            for p in batch.iter().filter(|p| !p.purge.soft) {
                let mark = next.entry(p.purge.site_id.clone()).or_default();
                *mark = (*mark).max(p.seq);
            }
            let mut ops: Vec<TxnOp> =
                batch.iter().map(|p| TxnOp::delete(self.key(&["purges", &p.purge.id]), None)).collect();
            ops.push(put(marks_key.clone(), &next)?);
            if !self.commit(vec![unchanged(&marks_key, marks.revision)], ops).await? {
                break;
            }
            pruned += batch.len() as u64;
        }
        Ok(pruned)
    }

    pub(super) async fn pruned_purges(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        Ok(self.get(&self.key(&["meta", "pruned-purges"])).await?.value.unwrap_or_default())
    }

    pub(super) async fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let end = self.key(&["events0"]);
        let options = GetOptions::new().with_range(end).with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let resp = self.read(self.event_key(seq + 1), options).await?;
        resp.kvs().iter().map(decode).collect()
    }

    pub(super) async fn compact(&self, keep: u64) -> Result<u64, StoreError> {
        let last = self.last_seq().await?;
        let first = self.counter("first").await?;
        let first_seq = first.value.unwrap_or(1);
        let first_kept = last.saturating_sub(keep) + 1;
        if first_kept <= first_seq {
            return Ok(0);
        }
        let first_key = self.key(&["meta", "first"]);
        let ops = vec![
            TxnOp::delete(self.event_key(first_seq), Some(DeleteOptions::new().with_range(self.event_key(first_kept)))),
            TxnOp::put(first_key.clone(), first_kept.to_string(), None),
        ];
        // Another replica compacting at once: one of the two does it.
        let done = self.commit(vec![unchanged(&first_key, first.revision)], ops).await?;
        Ok(if done { first_kept - first_seq } else { 0 })
    }

    pub(super) async fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let op = put(self.key(&["nodes", &node.name]), node)?;
        self.commit(Vec::new(), vec![op]).await.map(drop)
    }

    pub(super) async fn remove_node(&self, name: &str) -> Result<(), StoreError> {
        self.kv().delete(self.key(&["nodes", name]), None).await.map_err(unavailable).map(drop)
    }

    pub(super) async fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self.get(&self.key(&["nodes", name])).await?.value)
    }

    pub(super) async fn nodes(&self) -> Result<BTreeMap<String, NodeRecord>, StoreError> {
        Ok(self.list("nodes").await?.into_iter().collect())
    }

    pub(super) async fn put_pop(&self, pop: &PopRecord) -> Result<(), StoreError> {
        let op = put(self.key(&["pops", &pop.name]), pop)?;
        self.commit(Vec::new(), vec![op]).await.map(drop)
    }

    pub(super) async fn pops(&self) -> Result<Vec<PopRecord>, StoreError> {
        Ok(self.list("pops").await?.into_iter().map(|(_, p)| p).collect())
    }

    pub(super) async fn put_certificate(
        &self,
        site_id: &str,
        cert: &IssuedCertificate,
    ) -> Result<Option<EventRecord>, StoreError> {
        let event = Event::Certificate { site_id: site_id.to_string(), certificate: cert.clone() };
        let op = put(self.key(&["certificates", site_id]), cert)?;
        self.log_for_site(event, vec![op]).await
    }

    pub(super) async fn log_challenge(&self, event: Event) -> Result<Option<EventRecord>, StoreError> {
        self.log_for_site(event, Vec::new()).await
    }

    /// Logs `event` with `ops` if its site exists, guarded so that a
    /// deletion meanwhile wins.
    async fn log_for_site(&self, event: Event, ops: Vec<TxnOp>) -> Result<Option<EventRecord>, StoreError> {
        let key = self.key(&["sites", event.site_id()]);
        self.append(|_, _| {
            let (key, event, ops) = (key.clone(), event.clone(), ops.clone());
            async move {
                let current: Read<SiteRecord> = self.get(&key).await?;
                if current.value.is_none() {
                    return Ok(None);
                }
                Ok(Some(Planned { event, guards: vec![unchanged(&key, current.revision)], ops }))
            }
        })
        .await
    }

    pub(super) async fn certificate(&self, site_id: &str) -> Result<Option<IssuedCertificate>, StoreError> {
        Ok(self.get(&self.key(&["certificates", site_id])).await?.value)
    }

    pub(super) async fn certificates(&self) -> Result<BTreeMap<String, IssuedCertificate>, StoreError> {
        Ok(self.list("certificates").await?.into_iter().collect())
    }

    pub(super) async fn record(&self, name: &str) -> Result<Option<String>, StoreError> {
        let mut resp = self.read(self.key(&["records", name]), GetOptions::new()).await?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    pub(super) async fn swap_record(
        &self,
        name: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool, StoreError> {
        let key = self.key(&["records", name]);
        let guard = match expected {
            Some(v) => Compare::value(key.clone(), CompareOp::Equal, v),
            None => Compare::version(key.clone(), CompareOp::Equal, 0),
        };
        let op = match new {
            Some(v) => TxnOp::put(key, v, None),
            None => TxnOp::delete(key, None),
        };
        self.commit(vec![guard], vec![op]).await
    }
}

/// How one try at appending ended.
enum Appended {
    /// Committed (or nothing to log).
    Done(Option<EventRecord>),
    /// Another writer took the sequence number first.
    Raced,
    /// Sent, with no answer: it may have been committed.
    Unconfirmed(EventRecord),
}

/// What an event's transaction adds to the log entry: the event, the
/// records it must find unchanged, and the writes that apply it.
struct Planned {
    event: Event,
    guards: Vec<Compare>,
    ops: Vec<TxnOp>,
}

/// The key is still at `revision` (0: still absent).
fn unchanged(key: &str, revision: i64) -> Compare {
    if revision == 0 {
        Compare::version(key, CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(key, CompareOp::Equal, revision)
    }
}

fn put<T: Serialize>(key: String, value: &T) -> Result<TxnOp, StoreError> {
    Ok(TxnOp::put(key, serde_json::to_vec(value).map_err(db)?, None))
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, StoreError> {
    serde_json::from_slice(kv.value()).map_err(|e| db(format!("{}: {e}", String::from_utf8_lossy(kv.key()))))
}

/// A failed call to the cluster: it could not be reached, or could not
/// commit (no quorum), as far as this replica can tell.
fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Db(format!("{}: {e}", path.display())))
}
