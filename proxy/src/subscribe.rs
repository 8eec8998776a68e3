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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Uri;
use outpost_config::api::StreamQuery;
use outpost_config::{Ack, Event, Role, Site, SiteSnapshot, StreamLine};
use outpost_net::control::{ControlClient, Token};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

pub(crate) use outpost_config::api::DEAD_AFTER;
use outpost_config::api::RECONNECT_BACKOFF_MAX as MAX_BACKOFF;

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
    pub role: Role,
    pub pop: Option<String>,
    pub addrs: Vec<String>,
}

/// Where and how a node reaches its control plane.
#[derive(Debug, Clone)]
pub struct Link {
    /// The control plane, or each of its replicas.
    pub urls: Vec<Uri>,
    pub token_file: PathBuf,
    /// Verifies the control plane when the url is `https`.
    pub tls: Arc<rustls::ClientConfig>,
    /// Folder that relative paths in received sites resolve against.
    pub base: PathBuf,
}

#[derive(Debug)]
pub struct Subscriber {
    engine: Arc<Engine>,
    control: Vec<Uri>,
    token_file: PathBuf,
    base: PathBuf,
    tls: Arc<rustls::ClientConfig>,
    me: Identity,
    state_file: Option<PathBuf>,
    state: Mutex<LocalState>,
    /// Milliseconds since the epoch of the last line from the control plane.
    last_contact: AtomicU64,
    /// Requests served and when, at the last acknowledgement (for the load).
    /// Requests and hits counted at the last acknowledgement, and when.
    last_load: Mutex<(u64, u64, std::time::Instant)>,
    /// A certificate held did not load: the next stream asks for the
    /// current ones (`StreamQuery::certificates`).
    refresh_certificates: AtomicBool,
    /// A credential handed over that could not be written to the token
    /// file, with the token the file still has: used in its place
    /// ([`Token::Held`]) and written at each connection until it is.
    held: Arc<Mutex<Option<(String, String)>>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The sites of a snapshot; relative paths in them (certificates) resolve
/// against `base`, the node file's folder. A site that does not load here
/// (a key this node's version does not know, say) keeps the version
/// `engine` serves, if any, and is said as a problem until it loads.
///
/// `reborn`: ids whose served version is another site's (deleted, and one
/// created since under its id): never kept.
fn parse_sites(engine: &Engine, sites: &BTreeMap<String, SiteSnapshot>, base: &Path, reborn: &[String]) -> Vec<Site> {
    let serving = engine.sites();
    let mut problems = Vec::new();
    let loaded = sites
        .values()
        .filter_map(|s| match Site::parse_in(Path::new(&s.id), &s.toml, base) {
            Ok(site) => Some(site),
            Err(e) => {
                let kept = serving.get(&s.id).filter(|_| !reborn.contains(&s.id)).map(|site| Site::clone(site));
                tracing::error!(site = %s.id, version = s.version, kept = kept.is_some(), error = %e,
                    "a site from the control plane does not load here");
                let first = e.to_string().lines().next().unwrap_or_default().to_string();
                let what = if kept.is_some() { "the version before serves" } else { "not served" };
                problems.push(format!("site `{}` version {} does not load here ({what}): {first}", s.id, s.version));
                kept
            }
        })
        .collect();
    engine.sites_unloaded(problems);
    loaded
}

/// Whether `new`, from a snapshot, is the site this node holds as `old`
/// (perhaps changed) rather than another created under its id since: a
/// different creation, or a version lower than the one held.
fn same_site(old: &SiteSnapshot, new: &SiteSnapshot) -> bool {
    let reborn = old.created_seq != 0 && new.created_seq != 0 && old.created_seq != new.created_seq;
    !reborn && new.version >= old.version
}

/// Between streams that hand over a credential this node cannot take (not
/// its own, or with a token file it cannot read).
const UNTAKEN_CREDENTIAL_PAUSE: Duration = Duration::from_secs(30);
/// How long a new stream's first line is waited for before the node
/// counts itself taken: a credential handed over comes at once.
const HAND_OVER_WAIT: Duration = Duration::from_millis(200);

/// Longest credential taken from the control plane.
const MAX_CREDENTIAL_LEN: usize = 512;

/// Whether `credential` has the shape of node `name`'s own (the control
/// plane checks the rest): a line of it cannot name another node, or
/// carry what does not belong in a token file.
fn is_own_credential(name: &str, credential: &str) -> bool {
    let own = credential.strip_prefix("node.").and_then(|rest| rest.strip_prefix(name));
    own.is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
        && credential.len() <= MAX_CREDENTIAL_LEN
        && credential.bytes().all(|b| b.is_ascii_graphic())
}

/// Replaces `path` with `secret` (mode 0600) at once: written beside it
/// (a new file, never one a link points elsewhere from), flushed, renamed
/// over it and the rename flushed, so a crash leaves the old or the new.
/// A token file that is a link keeps the link: its target is replaced.
fn replace_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = std::fs::canonicalize(path)?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other("the token file has no folder"));
    };
    let tmp = dir.join(format!(".{}.new", name.to_string_lossy()));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    // The new file is in place; only a crash now could undo the rename.
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(folder = %dir.display(), error = %e, "cannot flush the token file's folder");
    }
    Ok(())
}

/// The node's token: its file's, or a credential handed over that is held
/// in its place.
fn node_token(file: &Path, held: &Arc<Mutex<Option<(String, String)>>>) -> Token {
    Token::Held { file: file.to_path_buf(), held: Arc::clone(held) }
}

/// Puts the sites' ACME certificates in use, opening each new one's key
/// with the node's token; a certificate that does not open or load leaves
/// the one in use (if any) in place. False when one did not: the node
/// asks for the current ones when it next connects (its token may have
/// changed since they were sealed for it).
fn install_certificates(engine: &Engine, sites: &BTreeMap<String, SiteSnapshot>, node_token: &Token) -> bool {
    for gone in engine.certs.issued_sites().into_iter().filter(|s| sites.get(s).is_none_or(|s| s.certificate.is_none()))
    {
        engine.certs.set_issued(&gone, None);
    }
    let mut token = None;
    let mut all = true;
    for (id, cert) in sites.iter().filter_map(|(id, s)| Some((id, s.certificate.as_ref()?))) {
        if engine.certs.issued_chain(id).as_deref() == Some(cert.chain_pem.as_str()) {
            continue;
        }
        let token = match &mut token {
            Some(t) => t,
            None => match node_token.read() {
                Ok(t) => token.insert(t),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the node token to open ACME certificates");
                    return false;
                }
            },
        };
        match crate::tls::files::load_issued(cert, id, token, SystemTime::now()) {
            Ok(loaded) => engine.certs.set_issued(id, Some((cert.chain_pem.clone(), loaded))),
            Err(e) => {
                tracing::error!(site = %id, error = %e, "the site's ACME certificate does not load here");
                all = false;
            }
        }
    }
    all
}

/// The state a node kept, or none. A file that does not read is set aside
/// (`control-state.json.bad`) and said as an error: the node then starts
/// with no sites until the control plane sends them, which it should not
/// do quietly.
fn load_state(file: &Path) -> LocalState {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return LocalState::default(),
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "the control-plane state cannot be read; starting without it");
            return LocalState::default();
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(state) => state,
        Err(e) => {
            let aside = file.with_extension("json.bad");
            let _ = std::fs::rename(file, &aside);
            tracing::error!(file = %file.display(), aside = %aside.display(), error = %e,
                "the control-plane state is damaged; set aside, starting without it until the control plane answers");
            LocalState::default()
        }
    }
}

impl Subscriber {
    /// Loads the persisted state (applying its sites to the engine at once).
    pub fn new(engine: Arc<Engine>, link: Link, me: Identity, state_dir: Option<&Path>) -> Subscriber {
        let state_file = state_dir.map(|d| d.join("control-state.json"));
        let state = state_file.as_deref().map(load_state).unwrap_or_default();
        let held = Arc::new(Mutex::new(None));
        let mut refresh = false;
        if state.seq > 0 {
            engine.set_sites(parse_sites(&engine, &state.sites, &link.base, &[]));
            refresh = !install_certificates(&engine, &state.sites, &node_token(&link.token_file, &held));
        }
        engine.link_control();
        engine.applied_through(state.seq);
        Subscriber {
            engine,
            control: link.urls,
            token_file: link.token_file,
            base: link.base,
            tls: link.tls,
            me,
            state_file,
            state: Mutex::new(state),
            last_contact: AtomicU64::new(0),
            last_load: Mutex::new((0, 0, std::time::Instant::now())),
            refresh_certificates: AtomicBool::new(refresh),
            held,
        }
    }

    fn token(&self) -> Token {
        node_token(&self.token_file, &self.held)
    }

    /// Puts the sites' certificates in use; asks for the current ones at
    /// the next connection if one did not load.
    fn install_certificates(&self, sites: &BTreeMap<String, SiteSnapshot>) {
        let all = install_certificates(&self.engine, sites, &self.token());
        self.refresh_certificates.store(!all, Ordering::Release);
    }

    /// Records that everything through `seq` is applied and kept.
    fn moved_to(&self, seq: u64) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).seq = seq;
        self.engine.applied_through(seq);
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

    /// Writes the state durably (the file and its folder synced), so what
    /// is acknowledged survives a power loss; an error says the state
    /// could not be kept, and nothing is acknowledged.
    fn persist(&self, state: &LocalState) -> Result<(), String> {
        use std::io::Write as _;
        let Some(f) = &self.state_file else { return Ok(()) };
        let tmp = f.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec(state).map_err(std::io::Error::other)?;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, f)?;
            if let Some(dir) = f.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            tracing::error!(file = %f.display(), error = %e, "could not persist the control-plane state");
            format!("the control-plane state could not be written: {e}")
        })
    }

    /// Applies a purge. An error is a rule that could not be written to
    /// disk: it holds in memory, but a restart would forget it, so the
    /// node neither moves on nor acknowledges, and is sent it again.
    async fn purge(&self, p: &outpost_config::Purge) -> Result<(), String> {
        use crate::engine::EngineError;
        let result = match self.engine.purge(&p.site_id, &p.target, p.soft).await {
            // A site this node skipped: what it still holds of it is
            // purged all the same.
            Err(EngineError::UnknownSite(_)) => self.engine.purge_absent_site(&p.site_id, &p.target, p.soft),
            other => other,
        };
        match result {
            Ok(()) => Ok(()),
            Err(e @ EngineError::Purges(_)) => {
                tracing::error!(purge = %p.id, error = %e, "a purge rule could not be written to disk; not acknowledged");
                Err(format!("purge {}: {e}", p.id))
            }
            Err(e) => {
                tracing::debug!(purge = %p.id, error = %e, "purge not applied here");
                Ok(())
            }
        }
    }

    /// The control plane hands this node a new credential (a rotation
    /// with a hand-over): it replaces the token file, which every call
    /// reads, and the certificates are asked for again, sealed for it. A
    /// file that cannot be written keeps its token, and the credential is
    /// used in its place from memory, said on `/healthz` and written at
    /// the next connection that can. The error says why it was not taken.
    fn take_credential(&self, credential: &str) -> Result<(), String> {
        if !is_own_credential(&self.me.name, credential) {
            return Err("the control plane handed over a credential that is not this node's".into());
        }
        self.refresh_certificates.store(true, Ordering::Release);
        if let Err(e) = replace_secret(&self.token_file, credential) {
            let file = self.token_file.display();
            let on_file = Token::File(self.token_file.clone()).read().map_err(|read| {
                format!("cannot write the credential the control plane handed over to {file}: {e}; nor read the token there: {read}")
            })?;
            // The advice first: a problem is cut to 200 bytes.
            let why = format!(
                "a credential handed over is held in memory only (a restart goes back to the refused one): make the token file writable, and it is written within seconds, or put a new credential there; cannot write {file}: {e}"
            );
            tracing::error!(node = %self.me.name, "{why}");
            *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some((on_file, credential.to_string()));
            self.engine.credential_unwritten(Some(why));
            return Ok(());
        }
        tracing::info!(node = %self.me.name, file = %self.token_file.display(), "took the credential the control plane handed over");
        Ok(())
    }

    /// Writes a credential held in memory to the token file, once it can;
    /// one the file no longer needs (its token set by hand since) is let
    /// go. At each connection and acknowledgement. (A token set by hand
    /// between the look at the file and the write is written over.)
    fn write_held(&self) {
        let Some((replaced, instead)) = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            // Let go elsewhere (`Token::Held` found the file changed).
            self.engine.credential_unwritten(None);
            return;
        };
        let settled = match Token::File(self.token_file.clone()).read() {
            // Being written by hand: look again later.
            Ok(on_file) if on_file.is_empty() => false,
            Ok(on_file) if on_file != replaced => true,
            Ok(_) => match replace_secret(&self.token_file, &instead) {
                Ok(()) => {
                    tracing::info!(node = %self.me.name, file = %self.token_file.display(), "wrote the credential held in memory");
                    true
                }
                Err(_) => false,
            },
            Err(_) => false,
        };
        if settled {
            *self.held.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.engine.credential_unwritten(None);
        }
    }

    /// Applies a line; the sequence it brings the node to, if any. An
    /// error is what could not be kept (a purge rule, the state file): the
    /// stream is left, to be sent it again.
    async fn apply(&self, line: StreamLine) -> Result<Option<u64>, String> {
        match line {
            StreamLine::Heartbeat { .. } => Ok(None),
            // Taken in `follow`, as the sole line of a stream.
            StreamLine::Credential { .. } => Ok(None),
            StreamLine::Certificates { certificates } => {
                let state = {
                    let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    for (id, cert) in certificates {
                        if let Some(site) = st.sites.get_mut(&id) {
                            site.certificate = Some(cert);
                        }
                    }
                    st.clone()
                };
                // Kept before they are put in use: a certificate served is
                // one a restart finds too.
                self.persist(&state)?;
                self.install_certificates(&state.sites);
                Ok(None)
            }
            StreamLine::Snapshot { seq, sites, purges } => {
                // Said to shields from before its first rule takes effect.
                self.engine.applying_snapshot(seq);
                if let Err(e) = self.engine.purges.soft_purge_everything(self.engine.clock.stamp()) {
                    tracing::error!(error = %e, "could not record the snapshot's soft purge; not acknowledged");
                    return Err(format!("the snapshot's soft purge: {e}"));
                }
                let (state, gone) = {
                    let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    let sites: BTreeMap<String, SiteSnapshot> = sites.into_iter().map(|s| (s.id.clone(), s)).collect();
                    // Deleted while this node was behind, or deleted and
                    // created again: the same id, another site.
                    let gone: Vec<String> = st
                        .sites
                        .values()
                        .filter(|old| sites.get(&old.id).is_none_or(|new| !same_site(old, new)))
                        .map(|old| old.id.clone())
                        .collect();
                    st.sites = sites;
                    // The sequence moves once all of it is kept (below).
                    let mut state = st.clone();
                    state.seq = seq;
                    (state, gone)
                };
                for id in &gone {
                    self.engine.forget_site(id);
                }
                self.engine.set_sites(parse_sites(&self.engine, &state.sites, &self.base, &gone));
                self.install_certificates(&state.sites);
                // The hard purges the node missed: the soft one above would
                // let a 304 or stale-if-error serve what they removed.
                for p in &purges {
                    self.purge(p).await?;
                }
                self.persist(&state)?;
                self.moved_to(seq);
                Ok(Some(seq))
            }
            StreamLine::Event { record } => {
                if record.seq <= self.seq() {
                    return Ok(None);
                }
                self.engine.applying(record.seq);
                let (mut sites_changed, mut certs_changed) = (false, false);
                // A site created (version 1) under an id served before.
                let mut reborn = Vec::new();
                match &record.event {
                    Event::SiteUpserted { site_id, version, toml } => {
                        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        let old = st.sites.remove(site_id);
                        let created_seq = match &old {
                            _ if *version == 1 => record.seq,
                            Some(old) => old.created_seq,
                            None => 0,
                        };
                        let certificate = old.and_then(|s| s.certificate);
                        let (id, toml) = (site_id.clone(), toml.clone());
                        let snap = SiteSnapshot { id, version: *version, toml, created_seq, certificate };
                        st.sites.insert(site_id.clone(), snap);
                        sites_changed = true;
                        if *version == 1 {
                            // A site's copies begin at its creation: whatever
                            // is stored under its id from before (a deleted
                            // site's, even one a request in flight across the
                            // deletion stored after it) is dropped.
                            drop(st);
                            self.engine.forget_site(site_id);
                            reborn.push(site_id.clone());
                        }
                    }
                    Event::Certificate { site_id, certificate } => {
                        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(site) = st.sites.get_mut(site_id) {
                            site.certificate = Some(certificate.clone());
                            certs_changed = true;
                        }
                    }
                    Event::AcmeChallenge { site_id, token, key_authorization, until_ms } => {
                        self.engine.challenges.add(site_id, token, key_authorization, *until_ms, now_ms());
                    }
                    Event::SiteDeleted { site_id } => {
                        self.state.lock().unwrap_or_else(|p| p.into_inner()).sites.remove(site_id);
                        self.engine.forget_site(site_id);
                        sites_changed = true;
                    }
                    Event::Purge(p) => self.purge(p).await?,
                }
                let state = {
                    let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    state.seq = record.seq;
                    state
                };
                if sites_changed {
                    self.engine.set_sites(parse_sites(&self.engine, &state.sites, &self.base, &reborn));
                }
                if sites_changed || certs_changed {
                    self.install_certificates(&state.sites);
                }
                self.persist(&state)?;
                self.moved_to(record.seq);
                Ok(Some(record.seq))
            }
        }
    }

    async fn ack(&self, client: &ControlClient, seq: u64) {
        self.write_held();
        let (load_rps, hit_permille) = {
            let (served, hits) = (self.engine.metrics.served(), self.engine.metrics.hits());
            let mut last = self.last_load.lock().unwrap_or_else(|p| p.into_inner());
            let (count, hit_count, at) = *last;
            *last = (served, hits, std::time::Instant::now());
            let secs = at.elapsed().as_secs_f64();
            let requests = served.saturating_sub(count);
            let rps = (secs >= 0.5).then(|| (requests as f64 / secs).round() as u64);
            let permille =
                (requests > 0).then(|| (hits.saturating_sub(hit_count).min(requests) * 1000 / requests) as u16);
            (rps, permille)
        };
        let ack =
            Ack { node: self.me.name.clone(), seq, load_rps, hit_permille, problems: Some(self.engine.problems()) };
        if let Err(e) = client.ack(&ack).await {
            tracing::debug!(node = %self.me.name, error = %e, "acknowledgement not taken");
        }
    }

    /// The control plane refuses this node's token: said once (an error,
    /// as an operator must act) for each new reason, and on `/healthz`
    /// until it takes the token again. The node keeps serving what it has
    /// and keeps trying, reading the token file again each time.
    fn refused(&self, e: &outpost_net::control::ClientError) {
        let why = e.to_string();
        if self.engine.control_refused(Some(why.clone())).as_ref() != Some(&why) {
            tracing::error!(node = %self.me.name, error = %why, "the control plane refuses this node's token; serving what it has meanwhile");
        }
    }

    fn heard(&self) {
        self.last_contact.store(now_ms(), Ordering::Release);
        self.engine.control_contact();
    }

    /// The control plane handed this node a new credential: taken, the
    /// next stream is opened with it. Not taken, the node says why on
    /// `/healthz` and waits before it opens another, which would be
    /// handed the same.
    async fn handed(&self, credential: &str) -> Result<(), String> {
        match self.take_credential(credential) {
            Ok(()) => Err("handed a new credential: connecting with it".into()),
            Err(why) => {
                tracing::error!(node = %self.me.name, "{why}");
                self.engine.control_refused(Some(why.clone()));
                tokio::time::sleep(UNTAKEN_CREDENTIAL_PAUSE).await;
                Err(why)
            }
        }
    }

    /// One connection: stream until it ends or goes silent.
    async fn follow(&self, client: &ControlClient) -> Result<(), String> {
        self.write_held();
        let query = StreamQuery {
            after: self.seq(),
            node: self.me.name.clone(),
            role: self.me.role,
            pop: self.me.pop.clone(),
            addrs: self.me.addrs.join(","),
            certificates: self.refresh_certificates.load(Ordering::Acquire),
        };
        let mut stream = match client.events(&query).await {
            Ok(stream) => stream,
            Err(e) => {
                if e.refuses_token() {
                    self.refused(&e);
                }
                return Err(e.to_string());
            }
        };
        // A stream opened to hand this node a new credential carries it at
        // once, alone; any other stream is followed, from what came first.
        let mut pending = match tokio::time::timeout(HAND_OVER_WAIT, stream.next()).await {
            Ok(Some(Ok(StreamLine::Credential { credential }))) => return self.handed(&credential).await,
            Ok(first) => Some(first),
            Err(_) => None,
        };
        if self.engine.control_refused(None).is_some() {
            tracing::info!(node = %self.me.name, "the control plane takes this node's token again");
        }
        self.heard();
        // Report where we stand (a heartbeat from this side too).
        self.ack(client, self.seq()).await;
        let mut unacked = false;
        let mut behind: Option<u64> = None;
        let mut first = true;
        loop {
            let next = match pending.take() {
                Some(first) => Ok(first),
                None => tokio::time::timeout(DEAD_AFTER, stream.next()).await,
            };
            let line = match next {
                Err(_) => return Err("no heartbeat from the control plane".into()),
                Ok(None) => return Err("the stream ended".into()),
                Ok(Some(Err(e))) if e.is_retryable() => return Err(e.to_string()),
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "unreadable line from the control plane");
                    continue;
                }
                Ok(Some(Ok(line))) => line,
            };
            if let StreamLine::Credential { credential } = &line {
                // Later than it should (a slow link), but alone: taken.
                if std::mem::replace(&mut first, false) {
                    return self.handed(credential).await;
                }
                tracing::warn!(node = %self.me.name, "a credential amid the control plane's stream: ignored");
                continue;
            }
            first = false;
            self.heard();
            if let StreamLine::Heartbeat { stale: true, .. } = line {
                client.prefer_next();
                return Err(format!("{} has lost its store's quorum: following another replica", client.base()));
            }
            // The log's end, as a heartbeat gives it, still not reached a
            // heartbeat later: this stream misses events (its replica's
            // feed stalled), so resume from here, on another replica.
            if let StreamLine::Heartbeat { seq: head, .. } = line {
                if behind.is_some_and(|h| self.seq() < h) {
                    client.prefer_next();
                    return Err(format!("{} stopped sending events before {head}: resuming", client.base()));
                }
                behind = (head > self.seq()).then_some(head);
            }
            // The log has no holes: an event past the next one means this
            // stream skipped some, so start again from where this node is.
            if let StreamLine::Event { record } = &line
                && record.seq > self.seq().saturating_add(1)
            {
                return Err(format!("event {} came after {}: resuming from there", record.seq, self.seq()));
            }
            unacked |= match line {
                StreamLine::Heartbeat { .. } => true,
                line => self.apply(line).await?.is_some(),
            };
            // A backlog is acknowledged once, after its last line.
            if unacked && !stream.has_line() {
                self.ack(client, self.seq()).await;
                unacked = false;
            }
        }
    }

    /// Follows the control plane until `shutdown`, reconnecting as needed.
    pub fn start(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let urls: Vec<String> = self.control.iter().map(ToString::to_string).collect();
            let client = ControlClient::new(&urls, self.token(), Arc::clone(&self.tls)).with_timeout(DEAD_AFTER);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_state_file_is_set_aside_not_read_as_empty_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("control-state.json");
        assert_eq!(load_state(&file).seq, 0, "none yet");
        std::fs::write(&file, br#"{"seq": 7, "sites": {}}"#).unwrap();
        assert_eq!(load_state(&file).seq, 7);
        std::fs::write(&file, br#"{"seq": 7, "si"#).unwrap();
        assert_eq!(load_state(&file).seq, 0);
        assert!(!file.exists());
        assert_eq!(std::fs::read(dir.path().join("control-state.json.bad")).unwrap(), br#"{"seq": 7, "si"#);
    }

    #[test]
    fn a_credential_handed_over_must_be_this_nodes() {
        assert!(is_own_credential("edge-1", "node.edge-1.1.0a1b2c"));
        for lie in [
            "node.edge-10.1.0a1b2c",
            "node.edge-2.1.0a1b2c",
            "node.edge-1",
            "node.edge-1.",
            "edge-1.1.0a1b2c",
            "node.edge-1.1.0a1b\nc",
            "node.edge-1.1.0a1b c",
        ] {
            assert!(!is_own_credential("edge-1", lie), "{lie:?}");
        }
        assert!(!is_own_credential("edge-1", &format!("node.edge-1.1.{}", "a".repeat(MAX_CREDENTIAL_LEN))));
    }

    #[test]
    fn a_secret_is_replaced_whole_and_kept_to_its_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.token");
        std::fs::write(&path, "node.edge-1.0.old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace_secret(&path, "node.edge-1.1.new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "node.edge-1.1.new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["node.token"], "nothing left beside it");

        // A link keeps pointing where it did; a file left from a crash
        // beside the target is replaced, not written through.
        let linked = dir.path().join("linked.token");
        std::os::unix::fs::symlink(&path, &linked).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "untouched").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(".node.token.new")).unwrap();
        replace_secret(&linked, "node.edge-1.2.newer").unwrap();
        assert!(std::fs::symlink_metadata(&linked).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "node.edge-1.2.newer");
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "untouched");
        // One that cannot be replaced is an error, and the file stays.
        std::fs::create_dir(dir.path().join(".node.token.new")).unwrap();
        assert!(replace_secret(&path, "node.edge-1.3.lost").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "node.edge-1.2.newer");
    }
}
