//! The control plane's HTTP API under `/v1/`; its wire types are
//! `outpost_config::api`.
//!
//! Operators use the admin token; nodes use the node token for the event
//! stream and acknowledgements. Tokens are compared in constant time and
//! never logged. Every error is JSON `{"error": …, "detail": …}` with its
//! status.

mod events;
mod handlers;
mod revocations;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use outpost_config::EventRecord;
use outpost_config::api::{ErrorBody, paths};
use tokio::sync::{broadcast, watch};

use crate::store::{RegistryChange, Store, StoreError};

/// Largest request body: a site file or a purge of up to 1000 URLs.
pub const MAX_BODY: usize = 1 << 20;
pub use outpost_config::api::HEARTBEAT;
/// Events read past the furthest-behind node to age its oldest
/// unapplied purge.
const PURGE_AGE_SCAN: usize = 512;

/// One event in this many sets off a pruning of purge records
/// ([`Store::prune_purges`]).
const PRUNE_EVERY: u64 = 1024;

/// How long a purge with `wait` waits for acknowledgements by default.
pub const DEFAULT_PURGE_WAIT: Duration = Duration::from_secs(5);
/// How often a replica checks its store's quorum, and how long quorum may
/// be missing (a leader election) before the replica counts it lost.
pub const QUORUM_PROBE: Duration = Duration::from_secs(1);
pub const QUORUM_GRACE: Duration = Duration::from_secs(2);
/// Purges one token may issue per second (sustained), and in a burst.
pub const PURGE_RATE: f64 = 50.0;
pub const PURGE_BURST: f64 = 200.0;

/// An API error: status, a machine-readable word and a sentence.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError { status, error, detail: detail.into() }
    }

    fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(detail) => ApiError::new(StatusCode::CONFLICT, "conflict", detail),
            StoreError::Unavailable(detail) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_quorum",
                format!(
                    "this replica cannot reach a quorum of its store, so it takes no writes; try another replica ({detail})"
                ),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.error.to_string(), detail: self.detail })).into_response()
    }
}

/// Who a node-scoped call comes from.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// The node token: it may speak for any node.
    Fleet,
    /// A node's own credential (not revoked when it was shown): it speaks
    /// for `name` alone, and what is sealed for it is sealed under
    /// `credential`.
    Node { name: String, generation: u64, credential: String },
}

impl Caller {
    /// Refuses (403) a call about node `name` from a credential of another.
    pub(crate) fn speaks_for(&self, name: &str) -> Result<(), ApiError> {
        match self {
            Caller::Node { name: own, .. } if own != name => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "wrong_node",
                format!("this credential is node `{own}`'s; it cannot speak for node `{name}`"),
            )),
            _ => Ok(()),
        }
    }
}

/// Compares without an early exit, so timing does not reveal a prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer …` header; the scheme is
/// case-insensitive (RFC 9110 §11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.trim_start();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Keys a rate limiter tracks before it forgets those at rest.
const MAX_BUCKETS: usize = 4096;

/// How often a full rate limiter looks for keys at rest to forget.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A token bucket per key: purges per token, console sign-ins per client
/// network ([`client_network`]). At most [`MAX_BUCKETS`] keys: when that
/// many are in use and none is at rest (swept at most once a second, not
/// on every call), a key not seen before takes the place of the one used
/// longest ago. Refusing it instead would let a flood from many networks
/// keep everyone else from signing in.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    levels: HashMap<String, (f64, Instant)>,
    swept: Instant,
}

impl Default for RateLimiter {
    /// The purge limit.
    fn default() -> Self {
        RateLimiter::new(PURGE_RATE, PURGE_BURST)
    }
}

impl RateLimiter {
    pub(crate) fn new(rate: f64, burst: f64) -> RateLimiter {
        let buckets = Buckets { levels: HashMap::new(), swept: Instant::now() };
        RateLimiter { rate, burst, buckets: Mutex::new(buckets) }
    }

    pub(crate) fn allow(&self, token: &str) -> bool {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if b.levels.len() >= MAX_BUCKETS && !b.levels.contains_key(token) {
            if now.duration_since(b.swept) >= SWEEP_EVERY {
                // Keys that would be full again hold nothing worth keeping.
                let (rate, burst) = (self.rate, self.burst);
                b.levels.retain(|_, (level, at)| *level + now.duration_since(*at).as_secs_f64() * rate < burst);
                b.swept = now;
            }
            if b.levels.len() >= MAX_BUCKETS
                && let Some(oldest) = b.levels.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone())
            {
                b.levels.remove(&oldest);
            }
        }
        let (level, at) = b.levels.entry(token.to_string()).or_insert((self.burst, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The network a client's address stands for, as a rate limiter's key: an
/// IPv4 address, or an IPv6 address's /64 (one host is given a /64, so
/// each of its addresses would otherwise have a limit of its own).
pub(crate) fn client_network(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Everything the handlers share.
pub struct Control {
    pub store: Store,
    admin_token: String,
    /// The node token: accepted from nodes as it is (for any name) while
    /// `shared_node_token` holds, and the secret each node's own
    /// credential derives from (`crate::credential`).
    node_token: String,
    shared_node_token: std::sync::atomic::AtomicBool,
    /// The read-only token (`[auth] viewer_token_file`), when there is one.
    viewer_token: std::sync::OnceLock<String>,
    /// New events, as committed.
    pub(crate) events: broadcast::Sender<EventRecord>,
    /// Nodes with an open stream: name → streams.
    connected: Mutex<HashMap<String, usize>>,
    /// Highest applied sequence per node (mirrors the registry).
    acked: Mutex<HashMap<String, u64>>,
    /// Bumped on every acknowledgement, for purges that wait.
    ack_changed: watch::Sender<u64>,
    /// Certificate keys found not to open under the node token, warned of.
    unopened_seals: Mutex<std::collections::HashSet<String>>,
    /// When `/metrics` last read the store for its gauges, and the
    /// per-node gauges it rendered then.
    gauges_read: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
    limiter: RateLimiter,
    retention: u64,
    /// Nodes silent this long leave the registry.
    node_expiry: Duration,
    /// Ends the event streams when the control plane stops (a graceful
    /// shutdown would otherwise wait for them forever).
    pub closing: tokio_util::sync::CancellationToken,
    /// The store could commit at the last look ([`Control::watch_quorum`]).
    quorum: std::sync::atomic::AtomicBool,
    /// Streams open at any replica of a shared store (`node/replica`), as
    /// its registry watch reports them.
    elsewhere: Mutex<std::collections::BTreeSet<String>>,
    /// Whether this control plane orders ACME certificates (`[acme]`).
    acme: std::sync::atomic::AtomicBool,
    /// The lowest credential generation taken per node.
    pub(crate) revocations: revocations::Revocations,
    /// Held from a site write's check of other sites' hosts to its commit,
    /// so two writes at once cannot both claim one host through this
    /// replica.
    pub(crate) site_writes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("store", &self.store).finish_non_exhaustive()
    }
}

impl Control {
    pub async fn new(
        store: Store,
        admin_token: String,
        node_token: String,
        retention: u64,
        node_expiry: Duration,
    ) -> Result<Arc<Control>, StoreError> {
        // A replica that starts while its store is unreachable starts all
        // the same: it says so (`/healthz`, stale heartbeats) and catches
        // up through its registry watch once the store answers.
        let acked = match store.nodes().await {
            Ok(nodes) => nodes.into_iter().map(|(k, v)| (k, v.acked_seq)).collect(),
            Err(e) if store.is_shared() => {
                tracing::warn!(error = %e, "the store does not answer; starting without its registry");
                HashMap::new()
            }
            Err(e) => return Err(e),
        };
        let quorum = store.has_quorum().await;
        Ok(Arc::new(Control {
            store,
            admin_token,
            node_token,
            events: broadcast::channel(4096).0,
            connected: Mutex::new(HashMap::new()),
            acked: Mutex::new(acked),
            ack_changed: watch::channel(0).0,
            unopened_seals: Mutex::new(std::collections::HashSet::new()),
            gauges_read: tokio::sync::Mutex::new(None),
            limiter: RateLimiter::default(),
            retention,
            node_expiry,
            closing: tokio_util::sync::CancellationToken::new(),
            quorum: std::sync::atomic::AtomicBool::new(quorum),
            elsewhere: Mutex::default(),
            acme: std::sync::atomic::AtomicBool::new(false),
            shared_node_token: std::sync::atomic::AtomicBool::new(true),
            viewer_token: std::sync::OnceLock::new(),
            site_writes: tokio::sync::Mutex::new(()),
            revocations: revocations::Revocations::default(),
        }))
    }

    /// Marks this control plane as one that orders ACME certificates: sites
    /// with `[tls] acme = true` are refused by one that does not.
    pub fn enable_acme(&self) {
        self.acme.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Accepts nodes' own credentials alone: the node token itself no
    /// longer speaks for any node (`[auth] shared_node_token = false`).
    pub fn refuse_shared_node_token(&self) {
        self.shared_node_token.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes `token` as the read-only token: it reads what the admin
    /// token reads and changes nothing (`[auth] viewer_token_file`). Set
    /// once, before serving.
    pub fn set_viewer_token(&self, token: String) {
        let _ = self.viewer_token.set(token);
    }

    /// The read-only token, if there is one (the console's read-only sign-in).
    pub(crate) fn viewer_token(&self) -> Option<&str> {
        self.viewer_token.get().map(String::as_str)
    }

    /// Whether the node token itself speaks for nodes (and opens the
    /// console read-only).
    pub(crate) fn shares_node_token(&self) -> bool {
        self.shared_node_token.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn orders_certificates(&self) -> bool {
        self.acme.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The admin token (the console signs operators in with it).
    pub(crate) fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The node token (the console's read-only sign-in).
    pub(crate) fn node_token(&self) -> &str {
        &self.node_token
    }

    fn admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        check(headers, &self.admin_token)
    }

    /// A read: the admin token, or the read-only one.
    fn reader(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let refused = match self.admin(headers) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        match (bearer(headers), self.viewer_token()) {
            (Some(given), Some(viewer)) if constant_time_eq(given.as_bytes(), viewer.as_bytes()) => Ok(()),
            _ => Err(refused),
        }
    }

    /// Who a node-scoped call comes from: a node's own credential, not
    /// revoked, or the node token (any node, while the control plane
    /// accepts it).
    async fn node(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if let Some(t) = bearer(headers)
            && let Some(v) = crate::credential::verify(&self.node_token, t)
        {
            let caller = Caller::Node { name: v.name.to_string(), generation: v.generation, credential: t.to_string() };
            self.still_taken(&caller).await?;
            return Ok(caller);
        }
        check(headers, &self.node_token)?;
        if !self.shares_node_token() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "credential_required",
                "this control plane takes each node's own credential (`outpost node-token NAME`), not the node token",
            ));
        }
        Ok(Caller::Fleet)
    }

    /// Refuses (401) a node credential revoked since it was made.
    pub(crate) async fn still_taken(&self, caller: &Caller) -> Result<(), ApiError> {
        let Caller::Node { name, generation, .. } = caller else {
            return Ok(());
        };
        let lowest = self.revocations.taken(&self.store, name).await?.lowest;
        if *generation < lowest {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "credential_revoked",
                format!(
                    "node `{name}`'s credential of generation {generation} was revoked; this control plane takes generation {lowest} and later (`outpost credentials rotate {name}`)"
                ),
            ));
        }
        Ok(())
    }

    /// Whether `sealed` is a certificate key not seen before among those
    /// that do not open under the node token (so it is warned of once).
    /// Bounded: past [`MAX_UNOPENED_SEALS`] the set starts again.
    pub(crate) fn first_unopened_seal(&self, sealed: &str) -> bool {
        first_of(&self.unopened_seals, sealed, MAX_UNOPENED_SEALS)
    }

    /// The credential to hand the caller, when it shows a node credential
    /// of the generation just before one rotated with a hand-over: the
    /// node's name, the generation handed and the credential.
    pub(crate) async fn hand_over(&self, headers: &HeaderMap) -> Option<(String, u64, String)> {
        let v = crate::credential::verify(&self.node_token, bearer(headers)?)?;
        let cached = self.revocations.taken(&self.store, v.name).await.ok()?;
        if !cached.hands_over_to(v.generation, crate::store::now_ms()) {
            return None;
        }
        // Asked of the store itself: the node may have taken it through
        // another replica since the copy here was read.
        let taken = self.revocations.taken_now(&self.store, v.name).await.ok()?;
        taken.hands_over_to(v.generation, crate::store::now_ms()).then(|| {
            let credential = crate::credential::credential_of_generation(&self.node_token, v.name, taken.lowest);
            (v.name.to_string(), taken.lowest, credential)
        })
    }

    /// A read of the registry or the PoP weights: the admin token, the
    /// read-only one, or any node's (DNS servers read them with theirs).
    async fn reader_or_node(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.reader(headers).is_ok() {
            return Ok(());
        }
        self.node(headers).await.map(drop)
    }

    /// Publishes a committed event to the streams, then compacts the log.
    /// A shared store's events reach the streams through its watch, in log
    /// order whichever replica wrote them, so they are not sent here.
    pub(crate) async fn publish(&self, rec: EventRecord) {
        let seq = rec.seq;
        if !self.store.is_shared() {
            let _ = self.events.send(rec);
        }
        if let Err(e) = self.store.compact(self.retention).await {
            tracing::warn!(error = %e, "log compaction failed");
        }
        // A scan of the purge records: now and then, and off the caller's
        // path. One event in PRUNE_EVERY is written by one replica only.
        if seq.is_multiple_of(PRUNE_EVERY) {
            let store = self.store.clone();
            tokio::spawn(async move {
                match store.prune_purges(events::SNAPSHOT_PURGES).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(pruned = n, "purge records pruned"),
                    Err(e) => tracing::warn!(error = %e, "pruning purge records failed"),
                }
            });
        }
    }

    /// Nodes with an event stream open here, or at any replica of a
    /// shared store.
    fn connected_nodes(&self) -> Vec<String> {
        let mut set: std::collections::BTreeSet<String> = {
            let c = self.connected.lock().unwrap_or_else(|p| p.into_inner());
            c.iter().filter(|(_, n)| **n > 0).map(|(k, _)| k.clone()).collect()
        };
        let elsewhere = self.elsewhere.lock().unwrap_or_else(|p| p.into_inner());
        set.extend(elsewhere.iter().filter_map(|s| s.split_once('/')).map(|(node, _)| node.to_string()));
        set.into_iter().collect()
    }

    /// A change any replica made to the registry: purges waiting for
    /// acknowledgements look again.
    pub fn registry_changed(&self, change: RegistryChange) {
        match change {
            RegistryChange::Node(n) => {
                let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
                let e = acked.entry(n.name).or_default();
                *e = (*e).max(n.acked_seq);
            }
            RegistryChange::Streams(all) => *self.elsewhere.lock().unwrap_or_else(|p| p.into_inner()) = all,
            RegistryChange::Stream(stream, open) => {
                let mut elsewhere = self.elsewhere.lock().unwrap_or_else(|p| p.into_inner());
                if open {
                    elsewhere.insert(stream);
                } else {
                    elsewhere.remove(&stream);
                }
            }
        }
        self.ack_changed.send_modify(|v| *v += 1);
    }

    fn acked_seq(&self, node: &str) -> u64 {
        self.acked.lock().unwrap_or_else(|p| p.into_inner()).get(node).copied().unwrap_or(0)
    }

    /// Takes nodes silent for longer than the expiry out of the registry;
    /// returns their names.
    pub async fn expire_nodes(&self) -> Result<Vec<String>, ApiError> {
        let connected = self.connected_nodes();
        let now = crate::store::now_ms();
        let limit = self.node_expiry.as_millis() as u64;
        let mut gone = Vec::new();
        for (name, n) in self.store.nodes().await.map_err(ApiError::from)? {
            if !connected.contains(&name) && now.saturating_sub(n.last_contact_ms) > limit {
                self.store.remove_node(&name).await.map_err(ApiError::from)?;
                self.acked.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
                gone.push(name);
            }
        }
        Ok(gone)
    }

    /// Whether the store could commit at the last look.
    pub fn has_quorum(&self) -> bool {
        self.quorum.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Refuses a write at once (503) while the store has no quorum, rather
    /// than after a commit that cannot happen has timed out.
    fn writable(&self) -> Result<(), ApiError> {
        if self.has_quorum() {
            Ok(())
        } else {
            Err(StoreError::Unavailable("the last look found no quorum".into()).into())
        }
    }

    /// Looks every [`QUORUM_PROBE`] whether the store can commit, until the
    /// control plane closes. Quorum missing for [`QUORUM_GRACE`] (longer
    /// than a leader election) counts as lost: a replica without it says so
    /// in its heartbeats and its health, and refuses writes at once.
    pub async fn watch_quorum(&self) {
        let mut tick = tokio::time::interval(QUORUM_PROBE);
        let mut missing_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = self.closing.cancelled() => return,
                _ = tick.tick() => {}
            }
            let answered = self.store.has_quorum().await;
            missing_since = if answered { None } else { missing_since.or_else(|| Some(tokio::time::Instant::now())) };
            let now = missing_since.is_none_or(|t| t.elapsed() < QUORUM_GRACE);
            let before = self.quorum.swap(now, std::sync::atomic::Ordering::Relaxed);
            if before != now {
                tracing::warn!(quorum = now, "the store's quorum {}", if now { "is back" } else { "is lost" });
            }
        }
    }

    /// How often the registry is swept for expired nodes.
    pub fn expiry_sweep(&self) -> Duration {
        (self.node_expiry / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    /// Refreshes the gauges `/metrics` shows of the log and sites, and
    /// returns those of each node as Prometheus text. At most once a
    /// second: `/metrics` answers anyone, and each refresh reads the whole
    /// registry and site list from the store (between, the text read
    /// last). A node's gauges are rendered here, not recorded, so a node
    /// gone from the registry leaves no series behind (a retired node's
    /// last `silent_seconds` would page for ever).
    ///
    /// One scrape reads at a time; those meanwhile get the text read last.
    /// A read that fails is tried again a second later, not at once.
    pub(crate) async fn node_gauges(&self) -> String {
        // A scrape that waits here for another's read finds its text fresh.
        let mut read = self.gauges_read.lock().await;
        if let Some((at, text)) = read.as_ref()
            && at.elapsed() < GAUGES_FRESH
        {
            return text.clone();
        }
        let text = match self.read_gauges().await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(error = %e.detail, "control-plane gauges not refreshed");
                read.take().map(|(_, text)| text).unwrap_or_default()
            }
        };
        *read = Some((std::time::Instant::now(), text.clone()));
        text
    }

    async fn read_gauges(&self) -> Result<String, ApiError> {
        let last = self.store.last_seq().await.map_err(ApiError::from)?;
        metrics::gauge!("outpost_control_last_seq").set(last as f64);
        metrics::gauge!("outpost_control_sites").set(self.store.sites().await.map_err(ApiError::from)?.len() as f64);
        let connected = self.connected_nodes();
        let nodes = self.store.nodes().await.map_err(ApiError::from)?;
        let up = nodes.keys().filter(|n| connected.contains(n)).count();
        metrics::gauge!("outpost_control_nodes", "state" => "connected").set(up as f64);
        metrics::gauge!("outpost_control_nodes", "state" => "disconnected").set((nodes.len() - up) as f64);
        let now = crate::store::now_ms();
        let acked: BTreeMap<&String, u64> =
            nodes.iter().map(|(name, n)| (name, n.acked_seq.max(self.acked_seq(name)))).collect();
        // The purges someone has not applied yet (the oldest few hundred).
        let behind = acked.values().copied().min().unwrap_or(last);
        let unapplied = self.store.events_after(behind, PURGE_AGE_SCAN).await.map_err(ApiError::from)?;
        let mut lag = NodeGauge::new("outpost_control_node_lag_events", "Events the node has not acknowledged.");
        let mut purge = NodeGauge::new(
            "outpost_control_oldest_unacknowledged_purge_seconds",
            "Age of the oldest purge the node has not acknowledged (0: none).",
        );
        let mut silent =
            NodeGauge::new("outpost_control_node_silent_seconds", "Time since the node was last heard from.");
        for (name, n) in &nodes {
            let acked = acked[name];
            let role = n.role.as_str();
            lag.add(name, Some(role), last.saturating_sub(acked) as f64);
            let oldest = unapplied.iter().find(|e| e.seq > acked && matches!(e.event, outpost_config::Event::Purge(_)));
            purge.add(name, None, oldest.map_or(0.0, |e| now.saturating_sub(e.at_ms) as f64 / 1000.0));
            silent.add(name, Some(role), now.saturating_sub(n.last_contact_ms) as f64 / 1000.0);
        }
        Ok([lag, purge, silent].into_iter().map(|g| g.text).collect())
    }
}

/// One gauge with a series per node, as Prometheus text.
struct NodeGauge {
    name: &'static str,
    text: String,
}

impl NodeGauge {
    fn new(name: &'static str, help: &str) -> NodeGauge {
        NodeGauge { name, text: format!("# HELP {name} {help}\n# TYPE {name} gauge\n") }
    }

    /// A node's series. Node names are letters, digits and `-`, and roles
    /// fixed words, so no label value needs escaping.
    fn add(&mut self, node: &str, role: Option<&str>, value: f64) {
        use std::fmt::Write as _;
        let name = self.name;
        let _ = match role {
            Some(role) => writeln!(self.text, "{name}{{node=\"{node}\",role=\"{role}\"}} {value}"),
            None => writeln!(self.text, "{name}{{node=\"{node}\"}} {value}"),
        };
    }
}

/// Unopenable certificate keys remembered, so each is warned of once.
const MAX_UNOPENED_SEALS: usize = 1024;

/// Whether `key` is new to `seen`, which it joins; a set of `most` starts
/// again empty.
fn first_of(seen: &Mutex<std::collections::HashSet<String>>, key: &str, most: usize) -> bool {
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    if seen.contains(key) {
        return false;
    }
    if seen.len() >= most {
        seen.clear();
    }
    seen.insert(key.to_string())
}

/// How long `/metrics` serves the gauges it last read from the store.
const GAUGES_FRESH: Duration = Duration::from_secs(1);

/// Counts API requests by route and status.
pub(crate) async fn count_requests(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    metrics::counter!("outpost_control_requests_total", "route" => route, "status" => resp.status().as_u16().to_string())
        .increment(1);
    resp
}

/// Gives the errors the framework answers itself (a method the path does
/// not take, a body over the limit or not UTF-8, a path segment that does
/// not decode) the API's JSON shape, their text as the detail: every
/// error a client gets reads as one.
pub(crate) async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let detail = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        t => t.to_string(),
    };
    let mut out = (status, Json(ErrorBody { error: error.to_string(), detail })).into_response();
    // `Allow` and the like stay.
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// A request's body, read after its caller's token has been checked: a
/// client with none is answered at once, and cannot make the API wait for
/// and buffer a body of up to [`MAX_BODY`] bytes first.
pub(crate) async fn read_body(body: axum::body::Body) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        let e = e.into_inner();
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("bodies are at most {MAX_BODY} bytes"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("the body could not be read: {e}"))
        }
    })
}

/// [`read_body`], as UTF-8 text.
pub(crate) async fn read_text(body: axum::body::Body) -> Result<String, ApiError> {
    String::from_utf8(read_body(body).await?.into())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("the body is not UTF-8: {e}")))
}

/// Parses a JSON body whatever its Content-Type says (operators post JSON
/// with plain `curl -d`), reporting where it is malformed.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))
}

fn check(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    match bearer(headers) {
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "send `Authorization: Bearer <token>`")),
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the token is not valid")),
    }
}

/// The API's routes.
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route(paths::HEALTH, get(handlers::healthz))
        .route(paths::METRICS, get(handlers::metrics))
        .route(paths::SITES, get(handlers::list_sites).post(handlers::put_site))
        .route(paths::SITE_ROUTE, get(handlers::get_site).put(handlers::put_site_id).delete(handlers::delete_site))
        .route(paths::SITE_VERSIONS_ROUTE, get(handlers::site_versions))
        .route(paths::PURGE, post(handlers::purge))
        .route(paths::PURGE_ROUTE, get(handlers::get_purge))
        .route(paths::NODES, get(handlers::nodes))
        .route(paths::NODE_CREDENTIAL_ROUTE, post(handlers::rotate_credential).delete(handlers::revoke_credential))
        .route(paths::POPS, get(handlers::pops))
        .route(paths::POP_ROUTE, put(handlers::put_pop))
        .route(paths::EVENTS, get(events::stream))
        .route(paths::ACK, post(events::ack))
        .fallback(handlers::not_found)
        .route_layer(axum::middleware::from_fn(count_requests))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_is_first_once_in_a_bounded_set() {
        let seen = Mutex::new(std::collections::HashSet::new());
        assert!(first_of(&seen, "a", 2));
        assert!(!first_of(&seen, "a", 2));
        assert!(first_of(&seen, "b", 2));
        assert!(!first_of(&seen, "b", 2), "a full set still knows what it holds");
        assert!(first_of(&seen, "c", 2));
        assert_eq!(seen.lock().unwrap().len(), 1, "full: started again");
    }

    #[test]
    fn a_full_rate_limiter_lets_a_new_key_in_and_keeps_limiting_the_rest() {
        let limiter = RateLimiter::new(0.001, 1.0);
        for i in 0..MAX_BUCKETS {
            assert!(limiter.allow(&format!("k{i}")));
            std::thread::sleep(Duration::from_micros(1));
        }
        assert!(limiter.allow("new"), "a new key, in the place of the one used longest ago");
        assert!(!limiter.allow("new"), "and limited as any");
        assert!(!limiter.allow("k1"), "a key already limited stays limited");
        assert_eq!(limiter.buckets.lock().unwrap().levels.len(), MAX_BUCKETS);
        assert!(!limiter.buckets.lock().unwrap().levels.contains_key("k0"));
        let limiter = RateLimiter::new(1000.0, 1.0);
        for i in 0..MAX_BUCKETS {
            assert!(limiter.allow(&format!("k{i}")));
        }
        limiter.buckets.lock().unwrap().swept -= SWEEP_EVERY;
        std::thread::sleep(Duration::from_millis(10));
        assert!(limiter.allow("new"), "keys at rest are forgotten to make room");
        assert_eq!(limiter.buckets.lock().unwrap().levels.len(), 1);
    }

    #[test]
    fn clients_are_limited_by_network() {
        let net = |s: &str| client_network(s.parse().unwrap());
        assert_eq!(net("2001:db8:1:2:aaaa::1"), net("2001:db8:1:2:bbbb::2"));
        assert_ne!(net("2001:db8:1:2::1"), net("2001:db8:1:3::1"));
        assert_eq!(net("::ffff:192.0.2.1"), net("192.0.2.1"));
        assert_ne!(net("192.0.2.1"), net("192.0.2.2"));
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(axum::http::header::AUTHORIZATION, axum::http::HeaderValue::from_static(v));
            bearer(&h).map(str::to_string)
        };
        assert_eq!(with("Bearer t0k").as_deref(), Some("t0k"));
        assert_eq!(with("bearer t0k").as_deref(), Some("t0k"));
        assert_eq!(with("BEARER   t0k ").as_deref(), Some("t0k"));
        assert_eq!(with("Basic t0k"), None);
        assert_eq!(with("Bearert0k"), None);
    }

    #[test]
    fn purges_are_rate_limited_per_token() {
        let l = RateLimiter::default();
        let allowed = (0..1000).filter(|_| l.allow("a")).count();
        assert!((PURGE_BURST as usize..PURGE_BURST as usize + 5).contains(&allowed), "{allowed}");
        assert!(l.allow("b"), "another token has its own bucket");
    }
}
