//! The caching proxy engine that edges and shields run. [`Engine::handle`]
//! takes a request through the named steps listed in `request.rs`, each in
//! the module it names: `lookup` (5, 6), `wait` (7, 8), `forward` (other
//! methods), with `fetch` behind every flight. This module holds the
//! engine's state and its purge operations.

mod context;
mod fetch;
pub(crate) mod flight;
mod forward;
pub(crate) mod hold;
mod invalidations;
mod lookup;
mod refill;
mod represent;
mod request;
pub(crate) mod respond;
mod segment;
pub(crate) mod sites;
mod wait;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{Request, Response};
use outpost_config::{CacheStorage, Limits, PurgeTarget, Site};
use outpost_net::{HeaderLookup, RecvBody};

use crate::clock::Clock;
use crate::host::RequestHost;
use crate::key::{Key, RequestKey, Scope, normalize_path, shape_query};
use crate::observe::{AccessLog, Metrics};
use crate::purge::PurgeRules;
use crate::store::{Entry, Store, StoreError, StoredObject};
use crate::tls::CertStore;
use crate::upstream::request::Hop;
use crate::upstream::{Route, Upstream, UpstreamClient};
use flight::Flights;
use respond::ResponseRules;
pub(crate) use sites::SiteTable;

/// Silence from the control plane longer than this is a partition.
/// That is, once the event stream is dead: the control plane has been
/// silent for three heartbeats.
pub(crate) const PARTITION_AFTER: std::time::Duration = outpost_config::api::DEAD_AFTER;

/// Slack a shield adds to the moment an edge began to apply an event it
/// has not ([`Engine::behind_the_edge`]): copies fetched within it after
/// that moment are checked too (the moment is measured in milliseconds,
/// and from the edge's answer to the shield's reading of it).
pub const CLAIM_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// A decimal number and nothing else (no sign, no space), as
/// `Outpost-Seq` and `Outpost-Seq-Age` are written.
fn plain_number(value: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(value).ok()?;
    s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse::<u64>().ok()).flatten()
}

/// Copies fetched before this are checked, for an edge that began to
/// apply an event `age_ms` ago by its own account (`None`: it does not
/// say, or it says before 1970): [`CLAIM_MARGIN`]
/// after it began, and no later than now. Measured on this node's clock,
/// as its copies' times are: no two clocks need agree.
fn claim_cutoff(now: std::time::SystemTime, age_ms: Option<u64>) -> std::time::SystemTime {
    let began = age_ms
        .and_then(|a| now.checked_sub(std::time::Duration::from_millis(a)))
        .filter(|b| *b >= std::time::UNIX_EPOCH);
    began.and_then(|b| b.checked_add(CLAIM_MARGIN)).map_or(now, |c| c.min(now))
}

/// [`claim_cutoff`] in the time copies are stamped in (`Clock::stamp`),
/// given the last stamp. Stamps more than [`CLAIM_MARGIN`] ahead of the
/// wall clock (stepped back since) cannot tell which copies came before
/// the edge's claim: every copy stamped so far is checked. Within the
/// margin (stamps in one microsecond run a little ahead; a small step)
/// the margin covers them.
fn claim_since(
    now: std::time::SystemTime,
    last_stamp: std::time::SystemTime,
    age_ms: Option<u64>,
) -> std::time::SystemTime {
    if last_stamp > now + CLAIM_MARGIN {
        last_stamp + std::time::Duration::from_micros(1)
    } else {
        claim_cutoff(now, age_ms)
    }
}

fn epoch_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Which tier an engine serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// In front of clients: strips CDN-only headers before them.
    Edge,
    /// In front of origins, behind edges.
    Shield,
}

/// Everything an engine is built from.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub node: String,
    pub tier: Tier,
    pub limits: Limits,
    pub cache: CacheStorage,
    pub sites: Vec<Site>,
    pub access_log: outpost_config::AccessLog,
    pub tls: outpost_config::NodeTls,
    /// Port of the node's first HTTPS listener: where `https_only` sites
    /// send plain-HTTP clients (443 when unset).
    pub https_port: Option<u16>,
    /// Port of the node's first HTTP/3 listener, advertised in `Alt-Svc`
    /// for sites with `http3 = true`.
    pub quic_port: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("purge rules: {0}")]
    Purges(std::io::Error),
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    #[error("no site `{0}` on this node")]
    UnknownSite(String),
    #[error("bad purge: {0}")]
    BadPurge(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsFileError),
}

/// Locks that variant indexes are updated under, each for the URLs whose
/// keys fall to it.
const VARIANT_TURNS: usize = 64;

#[derive(Debug)]
pub struct Engine {
    pub node: Arc<str>,
    hop: Hop,
    pub tier: Tier,
    pub limits: Limits,
    sites: ArcSwap<SiteTable>,
    pub store: Store,
    pub purges: PurgeRules,
    flights: Arc<Flights>,
    upstream: Upstream,
    pub clock: Clock,
    pub metrics: Metrics,
    log: AccessLog,
    /// Whether the node follows a control plane, and when (engine clock, ms
    /// since the epoch; 0 = never) it last heard from it.
    control_linked: std::sync::atomic::AtomicBool,
    control_contact_ms: std::sync::atomic::AtomicU64,
    /// The control plane's last event this node applied and kept (0: none).
    control_seq: std::sync::atomic::AtomicU64,
    /// The furthest event being applied or applied ([`Engine::applying`]),
    /// and when this node began to apply it.
    applying_seq: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
    /// Taken while a URL's variant index is read and written again
    /// (`FetchJob::index_variant`), one of them by the URL's key.
    variant_turns: Box<[tokio::sync::Mutex<()>]>,
    /// Why the control plane refuses this node's token (revoked, another
    /// node's), while it does: an operator must give it another.
    control_refusal: std::sync::Mutex<Option<String>>,
    /// A credential handed over that the node holds in memory only, as it
    /// could not write it to its token file: why, while it does.
    credential_unwritten: std::sync::Mutex<Option<String>>,
    /// Sites from the control plane that do not load here, and why.
    sites_unloaded: std::sync::Mutex<Vec<String>>,
    started_ms: u64,
    rules: ResponseRules,
    /// Certificates presented by the node's TLS listeners, by SNI.
    pub certs: Arc<CertStore>,
    /// HTTP-01 challenges of the control plane's running ACME orders.
    pub challenges: crate::acme::Challenges,
    /// Keys whose upstream just failed: served stale without asking again.
    holds: hold::Holds,
    /// How often each URL was invalidated, for the fetches under way then.
    invalidations: invalidations::Invalidations,
    /// The fetches each client network's connections have running, and
    /// their cap (`[limits] fetches_per_network`).
    pub(crate) networks: Arc<outpost_net::Networks>,
    /// Representations being made from stored copies.
    making: represent::Making,
    pub https_port: Option<u16>,
    /// `Alt-Svc` for responses over HTTP/1.1 and HTTP/2 of sites with
    /// `http3 = true`, when the node listens on QUIC.
    pub(crate) alt_svc: Option<http::HeaderValue>,
}

impl Engine {
    /// Opens the cache (recovering a disk tier) and the purge rules.
    pub async fn open(config: EngineConfig, route: Arc<dyn Route>) -> Result<Arc<Engine>, EngineError> {
        let store = Store::open(&config.cache).await?;
        let purges = match &config.cache.path {
            Some(dir) => PurgeRules::open(dir).map_err(EngineError::Purges)?,
            None => PurgeRules::in_memory(),
        };
        // A rule kept from a run whose wall clock was ahead of this one's
        // still comes before every copy fetched from now on.
        let clock = Clock::default();
        let newest = purges.newest();
        if newest.duration_since(clock.now()).is_ok_and(|ahead| ahead > std::time::Duration::from_secs(3600)) {
            tracing::warn!(
                ahead_s = newest.duration_since(clock.now()).map_or(0, |d| d.as_secs()),
                "purge rules were made by a clock ahead of this one's; copies and purges are stamped after them until it catches up"
            );
        }
        clock.stamp_after(newest);
        if !config.sites.is_empty() {
            // Sites from the node's own files (a node that follows a
            // control plane learns of deletions from it).
            let ids = config.sites.iter().map(|s| s.id.to_string());
            match purges.note_sites(ids, clock.stamp()) {
                Ok(new) if !new.is_empty() => {
                    tracing::info!(sites = ?new, "sites not served at the last start: nothing stored under their ids is served");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not record the node's sites beside its purge rules"),
            }
        }
        let metrics = Metrics::new(&config.node);
        let log = AccessLog::start(&config.node, &config.access_log).map_err(EngineError::AccessLog)?;
        let upstream_tls = Arc::new(crate::tls::UpstreamTls::new(&config.tls)?);
        let certs = Arc::new(CertStore::new(&config.node, &config.tls)?);
        let engine = Engine {
            node: Arc::from(config.node.as_str()),
            hop: Hop::new(&config.node),
            tier: config.tier,
            limits: config.limits,
            sites: ArcSwap::from_pointee(SiteTable::new(config.sites)),
            store,
            purges,
            flights: Arc::new(Flights::default()),
            upstream: Upstream::new(
                route,
                UpstreamClient::new(upstream_tls),
                metrics.clone(),
                Arc::from(config.node.as_str()),
            ),
            clock,
            metrics,
            log,
            control_linked: std::sync::atomic::AtomicBool::new(false),
            control_contact_ms: std::sync::atomic::AtomicU64::new(0),
            control_seq: std::sync::atomic::AtomicU64::new(0),
            applying_seq: std::sync::Mutex::new((0, None)),
            variant_turns: (0..VARIANT_TURNS).map(|_| tokio::sync::Mutex::new(())).collect(),
            control_refusal: std::sync::Mutex::new(None),
            credential_unwritten: std::sync::Mutex::new(None),
            sites_unloaded: std::sync::Mutex::default(),
            started_ms: epoch_ms(std::time::SystemTime::now()),
            rules: ResponseRules { strip_cdn_headers: config.tier == Tier::Edge },
            certs,
            challenges: crate::acme::Challenges::default(),
            holds: hold::Holds::default(),
            invalidations: invalidations::Invalidations::default(),
            networks: outpost_net::Networks::new(config.limits.fetches_per_network),
            making: represent::Making::default(),
            https_port: config.https_port,
            alt_svc: config.quic_port.and_then(|p| http::HeaderValue::try_from(format!("h3=\":{p}\"; ma=86400")).ok()),
        };
        engine.metrics.sites.set(engine.sites.load().len() as f64);
        let sites = engine.sites.load().sites().cloned().collect::<Vec<_>>();
        engine.upstream.route().sites_changed(&sites);
        engine.certs.set_sites(sites);
        Ok(Arc::new(engine))
    }

    /// Replaces the site set; requests already running keep the old one.
    pub fn set_sites(&self, sites: Vec<Site>) {
        self.sites.store(Arc::new(SiteTable::new(sites)));
        self.metrics.sites.set(self.sites.load().len() as f64);
        let sites = self.sites.load().sites().cloned().collect::<Vec<_>>();
        self.upstream.route().sites_changed(&sites);
        self.certs.set_sites(sites);
    }

    /// The site `site_id` was deleted: nothing stored for it before now is
    /// served again, should a site of the same id come back (perhaps
    /// another tenant's, under the same hosts or a fixed `host`). A hard
    /// purge of everything of the site, kept as the rules are.
    pub fn forget_site(&self, site_id: &str) {
        match self.purges.apply(site_id, &PurgeTarget::All, &[], false, self.clock.stamp()) {
            Ok(()) => self.metrics.purge_rules.set(self.purges.len() as f64),
            Err(e) => tracing::warn!(site = site_id, error = %e, "could not record a deleted site's purge"),
        }
    }

    /// Records a purge for a site this node has not loaded (one its
    /// configuration skipped), so that the copies it still holds of it are
    /// purged should the site load again: prefix, tag and whole-site rules
    /// as they are; URLs, which are matched as the site's query rules shape
    /// them, as the whole site (more than asked, never less).
    pub fn purge_absent_site(&self, site_id: &str, target: &PurgeTarget, soft: bool) -> Result<(), EngineError> {
        let target = match target.normalized().map_err(EngineError::BadPurge)? {
            PurgeTarget::Urls { .. } => PurgeTarget::All,
            other => other,
        };
        self.purges.apply(site_id, &target, &[], soft, self.clock.stamp()).map_err(EngineError::Purges)?;
        self.metrics.purge();
        self.metrics.purge_rules.set(self.purges.len() as f64);
        Ok(())
    }

    /// Marks this node as following a control plane.
    pub fn link_control(&self) {
        self.control_linked.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Records the control plane's last event applied and kept.
    pub fn applied_through(&self, seq: u64) {
        self.control_seq.store(seq, std::sync::atomic::Ordering::Release);
        let mut applying = self.applying_seq.lock().unwrap_or_else(|p| p.into_inner());
        if applying.0 != seq {
            *applying = (seq, Some(std::time::Instant::now()));
        }
    }

    /// Records that the control plane's event `seq` is being applied: from
    /// now on this node's fetches say so (see [`Engine::mark_fetch`]). A
    /// purge takes effect here as its rule is set, before it is kept on
    /// disk and the event counts as applied; a fetch from a shield that has
    /// not applied it, begun in between, must already ask the shield to
    /// check its copy, or the copy is stored here as fetched after the
    /// purge.
    pub fn applying(&self, seq: u64) {
        let mut applying = self.applying_seq.lock().unwrap_or_else(|p| p.into_inner());
        if seq > applying.0 {
            *applying = (seq, Some(std::time::Instant::now()));
        }
    }

    /// Records that a snapshot of the control plane at `seq` is being
    /// applied: its purges take effect from now, whatever its sequence (a
    /// control plane whose log began again may send one below the events
    /// this node had applied, which is then said until the snapshot is
    /// kept).
    pub fn applying_snapshot(&self, seq: u64) {
        let mut applying = self.applying_seq.lock().unwrap_or_else(|p| p.into_inner());
        *applying = (applying.0.max(seq), Some(std::time::Instant::now()));
    }

    /// An edge's fetches from its shields say how far it has followed the
    /// control plane ([`OUTPOST_SEQ`](crate::headers::OUTPOST_SEQ)), and
    /// how long ago it began to apply that event, in milliseconds
    /// ([`OUTPOST_SEQ_AGE`](crate::headers::OUTPOST_SEQ_AGE)): a shield
    /// behind it checks its copy with the origin before answering, as it
    /// may not have applied a purge the edge has. Its copy would otherwise
    /// be stored at the edge as fetched now, after the purge, and served
    /// as fresh.
    pub(crate) fn mark_fetch(&self, req: &mut http::Request<crate::upstream::ReqBody>) {
        let (seq, began) = *self.applying_seq.lock().unwrap_or_else(|p| p.into_inner());
        if self.tier == Tier::Edge && seq > 0 {
            let headers = req.headers_mut();
            headers.insert(crate::headers::OUTPOST_SEQ, crate::headers::decimal(seq));
            if let Some(b) = began {
                let age = u64::try_from(b.elapsed().as_millis()).unwrap_or(u64::MAX);
                headers.insert(crate::headers::OUTPOST_SEQ_AGE, crate::headers::decimal(age));
            }
        }
    }

    /// When the request comes from an edge that has applied events of the
    /// control plane this shield has not (see [`Engine::mark_fetch`]):
    /// copies fetched before then are checked with the origin
    /// ([`claim_cutoff`]: from when the edge began to apply the furthest of
    /// them, or now when it does not say). Nothing of what one request
    /// says is kept for another: a client that passes for an edge (a
    /// shield without `client_ca` takes anyone) has its own request
    /// checked at most.
    pub(crate) fn behind_the_edge(&self, headers: &impl outpost_net::HeaderLookup) -> Option<std::time::SystemTime> {
        if self.tier != Tier::Shield || !self.control_linked.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let theirs = plain_number(headers.get(&crate::headers::OUTPOST_SEQ)?.as_bytes())?;
        if theirs <= self.control_seq.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let age = headers.get(&crate::headers::OUTPOST_SEQ_AGE).and_then(|v| plain_number(v.as_bytes()));
        // The last stamp first: one taken between the two reads is then
        // not later than `now`.
        let last_stamp = self.clock.last_stamp();
        Some(claim_since(self.clock.now(), last_stamp, age))
    }

    /// Records that the control plane was just heard from.
    pub fn control_contact(&self) {
        self.control_contact_ms.store(epoch_ms(self.clock.now()), std::sync::atomic::Ordering::Release);
    }

    /// Records why the control plane refuses this node's token (`None`:
    /// it takes it again); the reason recorded before.
    pub fn control_refused(&self, why: Option<String>) -> Option<String> {
        std::mem::replace(&mut *self.control_refusal.lock().unwrap_or_else(|p| p.into_inner()), why)
    }

    /// Records that the node holds a credential handed over in memory
    /// only, and why (`None`: it is written now, or no longer used).
    /// Sites from the control plane that do not load on this node (each
    /// said as a problem until it loads).
    pub fn sites_unloaded(&self, problems: Vec<String>) {
        *self.sites_unloaded.lock().unwrap_or_else(|p| p.into_inner()) = problems;
    }

    pub fn credential_unwritten(&self, why: Option<String>) {
        *self.credential_unwritten.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Why the node is not serving as it should, for the registry and
    /// `/healthz`: its cache disk's trouble, a control plane that refuses
    /// its token, a credential held in memory only, then its upstreams'.
    /// Empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self.store.disk_problem().into_iter().collect();
        let refusal = self.control_refusal.lock().unwrap_or_else(|p| p.into_inner()).clone();
        out.extend(refusal.map(|why| format!("the control plane refuses this node's token: {why}")));
        out.extend(self.credential_unwritten.lock().unwrap_or_else(|p| p.into_inner()).clone());
        out.extend(self.sites_unloaded.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        // One per upstream target, possibly many: after the node's own.
        out.extend(self.upstream.route().problems());
        out.truncate(outpost_config::MAX_PROBLEMS);
        for p in &mut out {
            if p.len() > outpost_config::MAX_PROBLEM_LEN {
                let mut end = outpost_config::MAX_PROBLEM_LEN;
                while !p.is_char_boundary(end) {
                    end -= 1;
                }
                p.truncate(end);
            }
        }
        out
    }

    /// How long the node has been cut off from its control plane, once
    /// that is longer than [`PARTITION_AFTER`] (counted from start when it
    /// was never reached).
    pub fn partitioned_for(&self) -> Option<std::time::Duration> {
        if !self.control_linked.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let last = match self.control_contact_ms.load(std::sync::atomic::Ordering::Acquire) {
            0 => self.started_ms,
            t => t,
        };
        let silent = std::time::Duration::from_millis(epoch_ms(self.clock.now()).saturating_sub(last));
        (silent > PARTITION_AFTER).then_some(silent)
    }

    /// Cut off from the control plane past `site`'s grace: purges may have
    /// been missed, so hits are revalidated, and stale copies stand in when
    /// the upstream does not answer.
    pub fn distrusts(&self, site: &Site) -> bool {
        self.partitioned_for().is_some_and(|p| p > site.stale.partition_grace)
    }

    /// Starts the route's background work (health probes).
    pub fn start_route(&self, shutdown: tokio_util::sync::CancellationToken) {
        Arc::clone(self.upstream.route()).start(shutdown, self.upstream.probes());
    }

    pub fn sites(&self) -> Arc<SiteTable> {
        self.sites.load_full()
    }

    /// Serves one request that came on `conn`. The request's own future,
    /// not one wrapped in another: each async layer would hold the request
    /// again, and hyper moves the whole for every request.
    pub fn handle(
        self: Arc<Self>,
        req: Request<RecvBody>,
        conn: outpost_net::Conn,
    ) -> impl Future<Output = Response<respond::Body>> + Send + 'static {
        request::handle(self, req, conn, Instant::now())
    }

    /// Answers at once, from the memory tier, a GET or HEAD the listener
    /// read itself, when nothing on its path needs to wait.
    pub fn answer_now(
        this: &Arc<Self>,
        req: Request<()>,
        conn: &outpost_net::Conn,
        fields: &mut outpost_net::Fields,
    ) -> Option<Response<respond::Body>> {
        request::answer_now(this, req, conn, fields, Instant::now())
    }

    /// Answers a request the listener refused to read (`why`: its framing
    /// cannot be trusted) with 400, counted and logged like any other.
    pub fn refuse_request(
        self: &Arc<Self>,
        req: Request<RecvBody>,
        client: Option<std::net::SocketAddr>,
        why: &'static str,
    ) -> Response<respond::Body> {
        request::refused(self, &req, client, Instant::now(), why)
    }

    /// Counts and logs a request the listener could not parse, which it
    /// answered with `status` itself.
    pub(crate) fn unreadable_request(&self, client: Option<std::net::SocketAddr>, status: http::StatusCode) {
        request::unreadable(self, client, status);
    }

    /// The primary key of a URL in one scope, for a request with `headers`
    /// (which count on sites whose keys take request headers: `cache.key_headers`,
    /// `headers.forward`); `None`: its path does not normalise, so no
    /// request is keyed under it.
    fn url_key(&self, site: &Site, scope: Scope<'_>, url: &str, headers: &impl HeaderLookup) -> Option<Key> {
        let (path, query) = url.split_once('?').map_or((url, None), |(p, q)| (p, Some(q)));
        let path = normalize_path(path).ok()?;
        let query = shape_query(query, &site.cache);
        Some(RequestKey::new(self.store.key_secret(), site, scope, &path, query.as_deref(), headers).primary)
    }

    /// The copies stored under a URL's primary key (its object, or the
    /// variants its index knows), and its variant index's key, if it has
    /// one.
    async fn stored_for_key(&self, primary: Key) -> (Vec<(Key, Arc<StoredObject>)>, Option<Key>) {
        match self.store.get(primary).await {
            Some(Entry::Object(o)) => (vec![(primary, o)], None),
            Some(Entry::Variants(v)) => {
                let mut found = Vec::new();
                for k in &v.known {
                    if let Some(Entry::Object(o)) = self.store.get(*k).await {
                        found.push((*k, o));
                    }
                }
                (found, Some(primary))
            }
            _ => (Vec::new(), None),
        }
    }

    /// The stored keys of a URL in one scope (its object, or its variant
    /// index and the variants it knows), removed at once.
    async fn remove_url(&self, site: &Site, scope: Scope<'_>, url: &str) {
        let Some(primary) = self.url_key(site, scope, url, &http::HeaderMap::new()) else { return };
        let (objects, index) = self.stored_for_key(primary).await;
        for (k, o) in objects {
            self.store.remove_object(k, &o);
        }
        if let Some(index) = index {
            self.store.remove(index);
        }
    }

    /// Marks the stored copies of a URL in one scope invalid, as an unsafe
    /// method's success asks (RFC 9111 §4.4): each is validated before it
    /// is sent again ([`Engine::invalidate`]). A fetch of the URL under way
    /// leaves the flights, so later requests start another, and invalidates
    /// the copy it stores ([`Engine::invalidate_if_since`]). On a site
    /// whose keys take request headers, the copies found are those keyed
    /// as the unsafe request was (`headers`: its client's own) and as a
    /// request without those headers; copies under other values are other
    /// keys, left as they are.
    async fn invalidate_url(&self, site: &Site, scope: Scope<'_>, url: &str, headers: &impl HeaderLookup) {
        let own = self.url_key(site, scope, url, headers);
        let bare = self.url_key(site, scope, url, &http::HeaderMap::new());
        let keys = if own == bare { [own, None] } else { [own, bare] };
        for primary in keys.into_iter().flatten() {
            self.invalidations.record(primary);
            self.flights.forget(primary);
            for (k, o) in self.stored_for_key(primary).await.0 {
                self.flights.forget(k);
                self.invalidate(k, &o);
            }
        }
    }

    /// The turn to update the variant index of the URL whose primary key
    /// is `primary`: two fetches of its variants that end at once would
    /// otherwise each write the index as it read it, one without the
    /// other's variant.
    pub(crate) async fn variant_turn(&self, primary: Key) -> tokio::sync::MutexGuard<'_, ()> {
        self.variant_turns[(primary % self.variant_turns.len() as u128) as usize].lock().await
    }

    /// Where the invalidations of the URL whose primary key is `primary`
    /// stand, as a fetch of it begins.
    pub(crate) fn invalidation_mark(&self, primary: Key) -> u64 {
        self.invalidations.mark(primary)
    }

    /// Was the URL invalidated since `mark`? A fetch that began before
    /// then invalidates the copy it stored ([`Engine::invalidate`]):
    /// checked once the copy is stored, so an invalidation in between
    /// finds the copy or is found.
    fn invalidated_since(&self, primary: Key, mark: u64) -> bool {
        self.invalidations.since(primary, mark)
    }

    /// Invalidates `obj`, stored under `key` by a fetch of the URL whose
    /// primary key is `primary` that began at `mark`, if the URL was
    /// invalidated since. As [`Engine::invalidate`] does, except that a
    /// copy without an `ETag` is kept, for the requests still reading the
    /// fetch's body from the store, with its `Last-Modified` taken away:
    /// the next request fetches it whole.
    pub(crate) fn invalidate_if_since(&self, primary: Key, mark: u64, key: Key, obj: &Arc<StoredObject>) {
        if !self.invalidated_since(primary, mark) {
            return;
        }
        if obj.headers.contains_key(http::header::ETAG) {
            self.invalidate(key, obj);
        } else {
            let mut marked = StoredObject { timing: obj.timing.invalidated(), ..StoredObject::clone(obj) };
            marked.headers.remove(http::header::LAST_MODIFIED);
            self.store.insert(key, Entry::Object(Arc::new(marked)));
        }
    }

    /// Marks one stored copy invalid. A copy with an `ETag` stays, to be
    /// validated before it is sent again: any client can send the unsafe
    /// request, so what it costs the upstream is a conditional request (a
    /// 304 for an object that did not change), not the object again. One
    /// without is removed: its validation would fetch it whole all the
    /// same, and `Last-Modified` alone, to the second, would call a change
    /// made within the second unchanged. A copy replaced meanwhile (a
    /// fetch stored a newer one) is left as it is.
    fn invalidate(&self, key: Key, o: &Arc<StoredObject>) {
        if !o.headers.contains_key(http::header::ETAG) {
            self.store.remove_object(key, o);
            return;
        }
        let unchanged = match self.store.get_in_memory(key) {
            Some(Entry::Object(now)) => Arc::ptr_eq(&now, o),
            Some(_) => false,
            // Read from the disk tier: nothing newer is in memory.
            None => true,
        };
        if unchanged {
            let marked = StoredObject { timing: o.timing.invalidated(), ..StoredObject::clone(o) };
            self.store.insert(key, Entry::Object(Arc::new(marked)));
        }
    }

    /// Applies a purge: a timestamped rule (persisted), and for URL purges
    /// the URL's stored keys are removed as well.
    pub async fn purge(&self, site_id: &str, target: &PurgeTarget, soft: bool) -> Result<(), EngineError> {
        // Written as requests are keyed (the control plane sends it so
        // already; a purge from elsewhere is brought to that form here).
        let target = &target.normalized().map_err(EngineError::BadPurge)?;
        let sites = self.sites.load();
        let site = sites.get(site_id).ok_or_else(|| EngineError::UnknownSite(site_id.to_string()))?;
        let mut urls = Vec::new();
        if let PurgeTarget::Urls { urls: normalized } = target {
            for u in normalized {
                let (p, q) = u.split_once('?').map_or((u.as_str(), None), |(p, q)| (p, Some(q)));
                let p = p.to_string();
                let q = shape_query(q, &site.cache);
                urls.push(match q {
                    Some(q) => format!("{p}?{q}"),
                    None => p,
                });
            }
        }
        self.purges.apply(site_id, target, &urls, soft, self.clock.stamp()).map_err(EngineError::Purges)?;
        if !soft {
            // The rule already makes every copy a miss; removing the copies
            // the node can name frees their space now. (Copies under other
            // hosts of a wildcard, or with a port, go at their next lookup.)
            for u in &urls {
                for scope in self.scopes(site) {
                    self.remove_url(site, scope, u).await;
                }
            }
        }
        self.metrics.purge();
        self.metrics.purge_rules.set(self.purges.len() as f64);
        Ok(())
    }

    /// The scopes a site's URLs are commonly stored under: each exact host,
    /// over each scheme an edge sends.
    fn scopes<'a>(&self, site: &'a Site) -> Vec<Scope<'a>> {
        let hosts: Vec<RequestHost<'a>> = site
            .hosts
            .iter()
            .filter_map(|h| match &h.value {
                outpost_config::HostPattern::Exact(name) => RequestHost::parse(name).ok(),
                outpost_config::HostPattern::Wildcard(_) => None,
            })
            .collect();
        let mut out = Vec::new();
        for proto in [Some("http"), Some("https"), None] {
            for host in &hosts {
                out.push(Scope::of(site, proto, *host));
            }
        }
        out.dedup();
        out
    }

    /// Refreshes the gauges that are read rather than counted.
    pub fn update_gauges(&self) {
        self.metrics.partitioned_seconds.set(self.partitioned_for().map_or(0.0, |d| d.as_secs_f64()));
        self.metrics.memory_bytes.set(self.store.memory_usage() as f64);
        self.metrics.body_file_bytes.set(self.store.body_file_bytes() as f64);
        self.metrics.disk_problem.set(if self.store.disk_problem().is_some() { 1.0 } else { 0.0 });
        self.metrics.flights.set(self.flights.len() as f64);
        self.metrics.purge_rules.set(self.purges.len() as f64);
    }

    /// Flushes the cache to disk, and records how far the clock's stamps
    /// have gone (`Clock::stamp`), so that the next run orders its copies
    /// and purges after this one's even when its wall clock is behind.
    pub async fn close(&self) {
        self.store.close().await;
        if let Err(e) = self.purges.note_stamped(self.clock.latest()) {
            tracing::warn!(error = %e, "could not record the clock's last stamp beside the purge rules");
        }
    }
}

#[cfg(test)]
mod claim_tests {
    use std::time::{Duration, SystemTime};

    use super::{CLAIM_MARGIN, claim_cutoff, claim_since, plain_number};

    #[test]
    fn a_claim_is_a_plain_number() {
        assert_eq!(plain_number(b"42"), Some(42));
        assert_eq!(plain_number(b"0"), Some(0));
        for junk in ["", "abc", "-1", "+1", " 1", "1 ", "1e9", "99999999999999999999999", "42; at=7"] {
            assert_eq!(plain_number(junk.as_bytes()), None, "{junk}");
        }
        assert_eq!(plain_number(&[b'4', 0xff]), None);
    }

    #[test]
    fn copies_fetched_before_the_edge_began_and_a_margin_are_checked() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // Not said: everything fetched before now.
        assert_eq!(claim_cutoff(now, None), now);
        // Begun just now, or within the margin: the same.
        assert_eq!(claim_cutoff(now, Some(0)), now);
        assert_eq!(claim_cutoff(now, Some(CLAIM_MARGIN.as_millis() as u64 / 2)), now);
        // Begun a minute ago: what was fetched since then and the margin is not.
        let minute = claim_cutoff(now, Some(60_000));
        assert_eq!(minute, now - Duration::from_secs(60) + CLAIM_MARGIN);
        // Before 1970: taken as not said.
        assert_eq!(claim_cutoff(now, Some(u64::MAX)), now);
    }

    /// After the wall clock stepped back, copies fetched since are stamped
    /// ahead of it, close together: a cutoff from the wall clock would
    /// leave them all unchecked, however long before the claim they came.
    #[test]
    fn with_stamps_ahead_of_the_wall_clock_every_copy_is_checked() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let earlier = now - Duration::from_millis(3);
        assert_eq!(claim_since(now, earlier, Some(60_000)), claim_cutoff(now, Some(60_000)), "stamps behind now");
        assert_eq!(claim_since(now, now, Some(60_000)), claim_cutoff(now, Some(60_000)));
        let just_ahead = now + Duration::from_micros(2);
        assert_eq!(claim_since(now, just_ahead, Some(60_000)), claim_cutoff(now, Some(60_000)), "within the margin");
        let ahead = now + Duration::from_secs(120);
        assert!(claim_since(now, ahead, Some(60_000)) > ahead, "past the last stamp");
        assert!(claim_since(now, ahead, None) > ahead);
    }
}
