//! The node's side of the control plane: follow `/v1/events` from the last
//! applied sequence, apply each event to the engine in order, persist the
//! sequence and the site set, and acknowledge.
//!
//! The state file means a node restarted while cut off still serves its last
//! site set. A stream silent for [`DEAD_AFTER`] (three missed heartbeats) is
//! treated as dead and reconnected; a snapshot (the node was behind the
//! log's retention) replaces the site set and soft-purges everything stored
//! before it, so nothing purged meanwhile is served as fresh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use outpost_config::{Ack, Event, Site, SiteSnapshot, StreamLine};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

/// No line for this long means the link is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(6);
/// Longest pause between reconnection attempts: a healed link is used
/// again within this (plus the replay), so catching up stays under a second.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What the node persists about the control plane.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct LocalState {
    seq: u64,
    sites: BTreeMap<String, SiteSnapshot>,
}

/// Who this node is, for the registry.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub role: String,
    pub pop: Option<String>,
    pub addrs: Vec<String>,
}

/// Where and how a node reaches its control plane.
#[derive(Debug, Clone)]
pub struct Link {
    pub url: Uri,
    pub token_file: PathBuf,
    /// Verifies the control plane when the url is `https`.
    pub tls: Arc<rustls::ClientConfig>,
    /// Folder that relative paths in received sites resolve against.
    pub base: PathBuf,
}

type ControlClient = Client<crate::tls::client::Connector, Full<Bytes>>;

#[derive(Debug)]
pub struct Subscriber {
    engine: Arc<Engine>,
    control: Uri,
    token_file: PathBuf,
    base: PathBuf,
    tls: Arc<rustls::ClientConfig>,
    me: Identity,
    state_file: Option<PathBuf>,
    state: Mutex<LocalState>,
    /// Milliseconds since the epoch of the last line from the control plane.
    last_contact: AtomicU64,
    /// Requests served and when, at the last acknowledgement (for the load).
    last_load: Mutex<(u64, std::time::Instant)>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The sites of a snapshot; relative paths in them (certificates) resolve
/// against `base`, the node file's folder.
fn parse_sites(sites: &BTreeMap<String, SiteSnapshot>, base: &Path) -> Vec<Site> {
    sites
        .values()
        .filter_map(|s| match Site::parse_in(Path::new(&s.id), &s.toml, base) {
            Ok(site) => Some(site),
            Err(e) => {
                tracing::warn!(site = %s.id, error = %e, "site from the control plane does not load here; skipped");
                None
            }
        })
        .collect()
}

impl Subscriber {
    /// Loads the persisted state (applying its sites to the engine at once).
    pub fn new(engine: Arc<Engine>, link: Link, me: Identity, state_dir: Option<&Path>) -> Subscriber {
        let state_file = state_dir.map(|d| d.join("control-state.json"));
        let state: LocalState = state_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if state.seq > 0 {
            engine.set_sites(parse_sites(&state.sites, &link.base));
        }
        engine.link_control();
        Subscriber {
            engine,
            control: link.url,
            token_file: link.token_file,
            base: link.base,
            tls: link.tls,
            me,
            state_file,
            state: Mutex::new(state),
            last_contact: AtomicU64::new(0),
            last_load: Mutex::new((0, std::time::Instant::now())),
        }
    }

    /// The last sequence applied.
    pub fn seq(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).seq
    }

    /// How long since the control plane was last heard from (None: never).
    pub fn since_contact(&self) -> Option<Duration> {
        match self.last_contact.load(Ordering::Acquire) {
            0 => None,
            t => Some(Duration::from_millis(now_ms().saturating_sub(t))),
        }
    }

    fn persist(&self, state: &LocalState) {
        let Some(f) = &self.state_file else { return };
        let tmp = f.with_extension("json.tmp");
        let ok = serde_json::to_vec(state)
            .ok()
            .and_then(|b| std::fs::write(&tmp, b).ok())
            .and_then(|_| std::fs::rename(&tmp, f).ok());
        if ok.is_none() {
            tracing::warn!(file = %f.display(), "could not persist the control-plane state");
        }
    }

    async fn apply(&self, line: StreamLine) -> Option<u64> {
        match line {
            StreamLine::Heartbeat { .. } => None,
            StreamLine::Snapshot { seq, sites } => {
                let now = self.engine.clock.now();
                if let Err(e) = self.engine.purges.soft_purge_everything(now) {
                    tracing::warn!(error = %e, "could not record the snapshot's soft purge");
                }
                let state = {
                    let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.sites = sites.into_iter().map(|s| (s.id.clone(), s)).collect();
                    st.seq = seq;
                    st.clone()
                };
                self.engine.set_sites(parse_sites(&state.sites, &self.base));
                self.persist(&state);
                Some(seq)
            }
            StreamLine::Event { record } => {
                if record.seq <= self.seq() {
                    return None;
                }
                let mut sites_changed = false;
                match &record.event {
                    Event::SiteUpserted { site_id, version, toml } => {
                        let snap = SiteSnapshot { id: site_id.clone(), version: *version, toml: toml.clone() };
                        self.state.lock().unwrap_or_else(|p| p.into_inner()).sites.insert(site_id.clone(), snap);
                        sites_changed = true;
                    }
                    Event::SiteDeleted { site_id } => {
                        self.state.lock().unwrap_or_else(|p| p.into_inner()).sites.remove(site_id);
                        sites_changed = true;
                    }
                    Event::Purge(p) => {
                        if let Err(e) = self.engine.purge(&p.site_id, &p.target, p.soft).await {
                            tracing::debug!(purge = %p.id, error = %e, "purge not applied here");
                        }
                    }
                }
                let state = {
                    let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.seq = record.seq;
                    st.clone()
                };
                if sites_changed {
                    self.engine.set_sites(parse_sites(&state.sites, &self.base));
                }
                self.persist(&state);
                Some(record.seq)
            }
        }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.control.to_string().trim_end_matches('/'), path_and_query)
    }

    async fn ack(&self, client: &ControlClient, token: &str, seq: u64) {
        let load_rps = {
            let served = self.engine.metrics.served();
            let mut last = self.last_load.lock().unwrap_or_else(|p| p.into_inner());
            let (count, at) = *last;
            *last = (served, std::time::Instant::now());
            let secs = at.elapsed().as_secs_f64();
            (secs >= 0.5).then(|| ((served.saturating_sub(count)) as f64 / secs).round() as u64)
        };
        let body = serde_json::to_vec(&Ack { node: self.me.name.clone(), seq, load_rps }).unwrap_or_default();
        let req = Request::post(self.url("/v1/ack"))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        if let Ok(req) = req
            && let Ok(Ok(resp)) = tokio::time::timeout(DEAD_AFTER, client.request(req)).await
        {
            let _ = resp.into_body().collect().await;
        }
    }

    /// One connection: stream until it ends or goes silent.
    async fn follow(&self, client: &ControlClient) -> Result<(), String> {
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("node token `{}`: {e}", self.token_file.display()))?
            .trim()
            .to_string();
        let q = format!(
            "/v1/events?after={}&node={}&role={}{}&addrs={}",
            self.seq(),
            self.me.name,
            self.me.role,
            self.me.pop.as_ref().map_or(String::new(), |p| format!("&pop={p}")),
            self.me.addrs.join(",")
        );
        let req = Request::get(self.url(&q))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(DEAD_AFTER, client.request(req))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("the control plane answered {}", resp.status()));
        }
        self.last_contact.store(now_ms(), Ordering::Release);
        self.engine.control_contact();
        // Report where we stand (a heartbeat from this side too).
        self.ack(client, &token, self.seq()).await;
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        loop {
            let frame = match tokio::time::timeout(DEAD_AFTER, body.frame()).await {
                Err(_) => return Err("no heartbeat from the control plane".into()),
                Ok(None) => return Err("the stream ended".into()),
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else { continue };
            self.last_contact.store(now_ms(), Ordering::Release);
            self.engine.control_contact();
            buf.extend_from_slice(&data);
            let mut applied = None;
            let mut heartbeat = false;
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(i + 1);
                match serde_json::from_slice::<StreamLine>(&line[..i]) {
                    Ok(StreamLine::Heartbeat { .. }) => heartbeat = true,
                    Ok(l) => applied = self.apply(l).await.or(applied),
                    Err(e) => tracing::warn!(error = %e, "unreadable line from the control plane"),
                }
            }
            if let Some(seq) = applied {
                self.ack(client, &token, seq).await;
            } else if heartbeat {
                self.ack(client, &token, self.seq()).await;
            }
        }
    }

    /// Follows the control plane until `shutdown`, reconnecting as needed.
    pub fn start(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let connector = crate::tls::client::connector(
                Arc::clone(&self.tls),
                crate::resolve::Resolve::system(),
                Duration::from_secs(2),
            );
            let client: ControlClient = Client::builder(TokioExecutor::new()).build(connector);
            let mut backoff = Duration::from_millis(100);
            loop {
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = self.follow(&client) => r,
                };
                if let Err(e) = result {
                    tracing::debug!(node = %self.me.name, error = %e, "control-plane stream lost; reconnecting");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if self.since_contact().is_some_and(|d| d < Duration::from_secs(1)) {
                    backoff = Duration::from_millis(100);
                }
            }
        });
    }
}
