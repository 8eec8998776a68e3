//! A shield's origins: each site's origins ranked per key by weighted
//! rendezvous hash (so one object keeps going to the same origin, and
//! weights set the shares), healthy ones first; active health checks take a
//! failing origin out and put it back; each origin has a cap on requests in
//! flight, with the rest queued, so a herd cannot overload it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http_body_util::Empty;
use outpost_config::{HealthCheck, Origin, Site};
use outpost_proxy::key::Key;
use outpost_proxy::rendezvous;
use outpost_proxy::upstream::{ProbeClient, Probes, Route, Target};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How often the checker looks for checks that are due.
const CHECK_TICK: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct OriginState {
    origin: Origin,
    healthy: AtomicBool,
    successes: AtomicU32,
    failures: AtomicU32,
    limit: Arc<Semaphore>,
}

impl OriginState {
    fn new(origin: &Origin) -> OriginState {
        OriginState {
            origin: origin.clone(),
            healthy: AtomicBool::new(true),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            limit: Arc::new(Semaphore::new(origin.max_connections as usize)),
        }
    }

    /// Records a health-check result against the thresholds.
    fn record(&self, ok: bool, check: &HealthCheck) {
        if ok {
            self.failures.store(0, Ordering::Release);
            let n = self.successes.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= check.healthy_threshold && !self.healthy.swap(true, Ordering::AcqRel) {
                tracing::info!(origin = %self.origin.url, "origin healthy again");
            }
        } else {
            self.successes.store(0, Ordering::Release);
            let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= check.unhealthy_threshold && self.healthy.swap(false, Ordering::AcqRel) {
                tracing::warn!(origin = %self.origin.url, "origin failed its health checks; taken out");
            }
        }
    }
}

/// The shield's route to origins.
#[derive(Debug, Default)]
pub struct OriginPool {
    /// By site id, the site's origins in configured order.
    sites: RwLock<HashMap<String, Vec<Arc<OriginState>>>>,
}

impl OriginPool {
    fn states(&self, site: &Site) -> Vec<Arc<OriginState>> {
        if let Some(s) = self.sites.read().unwrap_or_else(|p| p.into_inner()).get(&site.id)
            && s.len() == site.origins.len()
            && s.iter().zip(&site.origins).all(|(a, o)| a.origin == *o)
        {
            return s.clone();
        }
        let states: Vec<Arc<OriginState>> = site.origins.iter().map(|o| Arc::new(OriginState::new(o))).collect();
        self.sites.write().unwrap_or_else(|p| p.into_inner()).insert(site.id.clone(), states.clone());
        states
    }

    /// Whether each origin of `site` is in service, in configured order.
    pub fn health(&self, site_id: &str) -> Vec<bool> {
        self.sites
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(site_id)
            .map(|s| s.iter().map(|o| o.healthy.load(Ordering::Acquire)).collect())
            .unwrap_or_default()
    }

    async fn check(client: &ProbeClient, o: &OriginState, check: &HealthCheck) -> bool {
        let url = format!("{}{}", o.origin.url.to_string().trim_end_matches('/'), check.path);
        let mut req = http::Request::get(url);
        if let Some(h) = &o.origin.host {
            req = req.header(http::header::HOST, h);
        }
        let Ok(req) = req.body(Empty::new()) else { return false };
        match tokio::time::timeout(check.timeout, client.request(req)).await {
            Ok(Ok(resp)) => resp.status().is_success() || resp.status().is_redirection(),
            _ => false,
        }
    }
}

impl Route for OriginPool {
    fn targets(&self, site: &Site, key: Key) -> Vec<Target> {
        let states = self.states(site);
        let names: Vec<String> = states.iter().map(|s| s.origin.url.to_string()).collect();
        let weighted: Vec<(&str, u32)> =
            names.iter().zip(&states).map(|(n, s)| (n.as_str(), s.origin.weight)).collect();
        let ranked = rendezvous::rank(key, &weighted);
        // Healthy origins first; if none is, the others are still tried.
        let (up, down): (Vec<usize>, Vec<usize>) =
            ranked.into_iter().partition(|i| states[*i].healthy.load(Ordering::Acquire));
        up.into_iter()
            .chain(down)
            .map(|i| Target { limit: Some(Arc::clone(&states[i].limit)), ..Target::origin(&states[i].origin) })
            .collect()
    }

    fn problems(&self) -> Vec<String> {
        let sites = self.sites.read().unwrap_or_else(|p| p.into_inner());
        let mut down: Vec<String> = sites
            .iter()
            .filter(|(_, origins)| !origins.is_empty() && origins.iter().all(|o| !o.healthy.load(Ordering::Acquire)))
            .map(|(id, _)| format!("every origin of site `{id}` is down"))
            .collect();
        down.sort_unstable();
        down
    }

    fn sites_changed(&self, sites: &[Arc<Site>]) {
        for site in sites {
            self.states(site);
        }
        let ids: Vec<&str> = sites.iter().map(|s| s.id.as_str()).collect();
        self.sites.write().unwrap_or_else(|p| p.into_inner()).retain(|id, _| ids.contains(&id.as_str()));
    }

    fn start(self: Arc<Self>, shutdown: CancellationToken, probes: Probes) {
        tokio::spawn(async move {
            // Each site's view of an origin (its state) has a schedule of
            // its own, even where two sites name the same origin and path:
            // their intervals, hosts and CAs may differ, and each view
            // must move.
            let mut due: HashMap<usize, Instant> = HashMap::new();
            let mut tick = tokio::time::interval(CHECK_TICK);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let all: Vec<Arc<OriginState>> =
                    self.sites.read().unwrap_or_else(|p| p.into_inner()).values().flatten().cloned().collect();
                let now = Instant::now();
                let present: std::collections::HashSet<usize> = all.iter().map(|o| Arc::as_ptr(o) as usize).collect();
                due.retain(|id, _| present.contains(id));
                // Checks run side by side: an origin that takes its whole
                // timeout to answer holds up no other's check.
                let mut checks = tokio::task::JoinSet::new();
                for o in all {
                    let Some(check) = o.origin.health.clone() else { continue };
                    let id = Arc::as_ptr(&o) as usize;
                    if due.get(&id).is_some_and(|t| *t > now) {
                        continue;
                    }
                    due.insert(id, now + check.interval);
                    let client = probes.client(o.origin.ca.as_deref(), o.origin.connect_timeout);
                    checks.spawn(async move {
                        let ok = Self::check(&client, &o, &check).await;
                        o.record(ok, &check);
                    });
                }
                // Done before the next round is looked at, so one origin is
                // never checked twice at once.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = async { while checks.join_next().await.is_some() {} } => {}
                }
            }
        });
    }
}
