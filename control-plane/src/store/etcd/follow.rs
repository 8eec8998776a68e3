//! What a replica follows in the cluster: the log (feeding its event
//! streams), the registry (acknowledgements and open streams at any
//! replica), and its own open streams, published on a lease.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use etcd_client::{EventType, GetOptions, KeyValue, PutOptions, WatchOptions};
use outpost_config::EventRecord;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{EtcdBackend, FOLLOW_RETRY, PRESENCE_TTL, decode, unavailable};
use crate::store::{RegistryChange, StoreError, db, now_ms};

impl EtcdBackend {
    /// Sends `tx` every event after `after`, in log order, as any replica
    /// commits it, until `stop`; a broken watch is resumed from the last
    /// event sent, so none is skipped or sent twice.
    pub(in crate::store) async fn follow_events(
        &self,
        after: u64,
        tx: broadcast::Sender<EventRecord>,
        stop: CancellationToken,
    ) {
        let last = AtomicU64::new(after);
        self.retrying("the event log", &stop, || self.follow_from(&last, &tx)).await;
    }

    /// Runs `watch` until `stop`, again after each failure (from the next
    /// member, after a pause).
    async fn retrying<F, Fut>(&self, what: &str, stop: &CancellationToken, mut watch: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        loop {
            let failed = tokio::select! {
                _ = stop.cancelled() => return,
                r = watch() => r,
            };
            if let Err(e) = failed {
                tracing::warn!(error = %e, "watching {what} failed; resuming");
                self.next_member();
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(FOLLOW_RETRY) => {}
            }
        }
    }

    /// The events after `last`, then a watch from the revision they were
    /// read at; returns only on failure.
    async fn follow_from(&self, last: &AtomicU64, tx: &broadcast::Sender<EventRecord>) -> Result<(), StoreError> {
        let from = self.event_key(last.load(Ordering::Relaxed) + 1);
        let send = |rec: EventRecord| {
            if rec.seq > last.load(Ordering::Relaxed) {
                last.store(rec.seq, Ordering::Relaxed);
                let _ = tx.send(rec);
            }
        };
        let end = self.key(&["events0"]);
        let options = GetOptions::new().with_range(end);
        let resp = self.kv().get(from, Some(options)).await.map_err(unavailable)?;
        let revision = resp.header().map_or(0, |h| h.revision());
        for kv in resp.kvs() {
            send(decode(kv)?);
        }
        let folder = self.key(&["events", ""]);
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut stream = self.watcher().watch(folder, Some(options)).await.map_err(unavailable)?;
        while let Some(resp) = stream.message().await.map_err(unavailable)? {
            if resp.canceled() {
                return Err(StoreError::Db(format!("the watch was cancelled: {}", resp.cancel_reason())));
            }
            for event in resp.events().iter().filter(|e| e.event_type() == EventType::Put) {
                if let Some(kv) = event.kv() {
                    send(decode(kv)?);
                }
            }
        }
        Err(db("the watch ended"))
    }
}

impl EtcdBackend {
    /// Marks `node`'s stream open (or closed) at this replica.
    pub(in crate::store) fn set_present(&self, node: &str, open: bool) {
        let (set, wake) = &*self.present;
        let mut set = set.lock().unwrap_or_else(|p| p.into_inner());
        let changed = if open { set.insert(node.to_string()) } else { set.remove(node) };
        if changed {
            wake.notify_one();
        }
    }

    /// Publishes this replica's open streams on a lease it keeps alive,
    /// until `stop`; a lease lost (the cluster unreachable for longer than
    /// its life) is replaced and the records written again.
    pub(in crate::store) async fn keep_presence(&self, stop: CancellationToken) {
        self.retrying("the presence lease", &stop, || self.presence_on_one_lease()).await;
    }

    async fn presence_on_one_lease(&self) -> Result<(), StoreError> {
        let mut client = self.follower();
        let ttl = i64::try_from(PRESENCE_TTL.as_secs()).unwrap_or(6).max(2);
        let lease = client.lease_grant(ttl, None).await.map_err(unavailable)?.id();
        let (mut keeper, mut acks) = client.lease_keep_alive(lease).await.map_err(unavailable)?;
        let mut published: BTreeSet<String> = BTreeSet::new();
        let mut renew = tokio::time::interval(PRESENCE_TTL / 3);
        loop {
            let wanted = self.present.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for node in wanted.difference(&published) {
                let key = self.key(&["conn", node, &self.replica]);
                client
                    .put(key, now_ms().to_string(), Some(PutOptions::new().with_lease(lease)))
                    .await
                    .map_err(unavailable)?;
            }
            for node in published.difference(&wanted) {
                client.delete(self.key(&["conn", node, &self.replica]), None).await.map_err(unavailable)?;
            }
            published = wanted;
            tokio::select! {
                _ = self.present.1.notified() => {}
                _ = renew.tick() => {
                    keeper.keep_alive().await.map_err(unavailable)?;
                    match acks.message().await.map_err(unavailable)? {
                        Some(r) if r.ttl() > 0 => {}
                        _ => return Err(db("the cluster no longer knows the lease")),
                    }
                }
            }
        }
    }

    /// Calls `changed` with every registry record any replica writes and
    /// every stream opened or closed at any replica, until `stop`.
    pub(in crate::store) async fn follow_registry(
        &self,
        changed: &(dyn Fn(RegistryChange) + Send + Sync),
        stop: CancellationToken,
    ) {
        self.retrying("the node registry", &stop, || self.watch_registry(changed)).await;
    }

    async fn watch_registry(&self, changed: &(dyn Fn(RegistryChange) + Send + Sync)) -> Result<(), StoreError> {
        let (nodes, conn) = (self.key(&["nodes", ""]), self.key(&["conn", ""]));
        let name = |kv: &KeyValue| String::from_utf8_lossy(&kv.key()[conn.len()..]).into_owned();
        let mut client = self.kv();
        let open = client.get(conn.clone(), Some(GetOptions::new().with_prefix().with_keys_only()));
        let open = open.await.map_err(unavailable)?;
        let revision = open.header().map_or(0, |h| h.revision());
        changed(RegistryChange::Streams(open.kvs().iter().map(name).collect()));
        // Both folders share the prefix up to their names: watch the range
        // that holds them, and sort what comes.
        let options = WatchOptions::new().with_range(self.key(&["nodes0"])).with_start_revision(revision + 1);
        let mut stream = self.watcher().watch(conn.clone(), Some(options)).await.map_err(unavailable)?;
        while let Some(resp) = stream.message().await.map_err(unavailable)? {
            if resp.canceled() {
                return Err(StoreError::Db(format!("the watch was cancelled: {}", resp.cancel_reason())));
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let put = event.event_type() == EventType::Put;
                if kv.key().starts_with(nodes.as_bytes()) && put {
                    changed(RegistryChange::Node(decode(kv)?));
                } else if kv.key().starts_with(conn.as_bytes()) {
                    changed(RegistryChange::Stream(name(kv), put));
                }
            }
        }
        Err(db("the watch ended"))
    }
}
