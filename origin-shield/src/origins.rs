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

    /// The state of `origin`, a new version of `old`'s origin: what was
    /// learned of it (its health, its checks' counts) goes on, and so does
    /// its cap, resized in place, so the exchanges in flight still count.
    fn carried(origin: &Origin, old: &OriginState) -> OriginState {
        let (was, now) = (old.origin.max_connections as usize, origin.max_connections as usize);
        let limit = Arc::clone(&old.limit);
        if now > was {
            limit.add_permits(now - was);
        } else if now < was {
            // Those not in use go now; those in use, as they come back.
            let owed = (was - now) - limit.forget_permits(was - now);
            if owed > 0
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                let limit = Arc::clone(&limit);
                rt.spawn(async move {
                    if let Ok(p) = limit.acquire_many_owned(owed as u32).await {
                        p.forget();
                    }
                });
            }
        }
        // What the checks found goes on while they are the same checks;
        // with none left, only checks would ever put the origin back, so
        // it is in service; with other checks, they start counting anew.
        let (healthy, counts) = match (&origin.health, &old.origin.health) {
            (None, _) => (true, (0, 0)),
            (Some(now), Some(was)) if now == was => (
                old.healthy.load(Ordering::Acquire),
                (old.successes.load(Ordering::Acquire), old.failures.load(Ordering::Acquire)),
            ),
            (Some(_), _) => (old.healthy.load(Ordering::Acquire), (0, 0)),
        };
        OriginState {
            origin: origin.clone(),
            healthy: AtomicBool::new(healthy),
            successes: AtomicU32::new(counts.0),
            failures: AtomicU32::new(counts.1),
            limit,
        }
    }

    /// Whether this is the state of the same origin as `o` names, if not
    /// in the same words: asked at the same address, for the same host,
    /// trusting the same CA.
    fn same_origin(&self, o: &Origin) -> bool {
        self.origin.url == o.url && self.origin.host == o.host && self.origin.ca == o.ca
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
    /// The states of `site`'s origins. Only [`Route::sites_changed`] (and
    /// a site's first request) writes them: a request still holding an
    /// older version of the site finds the states of the same origins in
    /// the current one, and must not put back states of its own, or each
    /// request of each version would start its origins' health and caps
    /// over.
    fn states(&self, site: &Site) -> Vec<Arc<OriginState>> {
        {
            let sites = self.sites.read().unwrap_or_else(|p| p.into_inner());
            if let Some(current) = sites.get(&site.id) {
                return site
                    .origins
                    .iter()
                    .map(|o| {
                        let exact = current.iter().find(|s| s.origin == *o);
                        exact
                            .or_else(|| current.iter().find(|s| s.same_origin(o)))
                            .cloned()
                            // An origin the site no longer has: alone.
                            .unwrap_or_else(|| Arc::new(OriginState::new(o)))
                    })
                    .collect();
            }
        }
        self.learn(site)
    }

    /// Takes `site`'s origins as current, carrying over the state of each
    /// that was an origin of its version before.
    fn learn(&self, site: &Site) -> Vec<Arc<OriginState>> {
        let mut sites = self.sites.write().unwrap_or_else(|p| p.into_inner());
        let old = sites.get(&site.id);
        if let Some(old) = old
            && old.len() == site.origins.len()
            && old.iter().zip(&site.origins).all(|(a, o)| a.origin == *o)
        {
            return old.clone();
        }
        let mut left: Vec<Arc<OriginState>> = old.cloned().unwrap_or_default();
        let states: Vec<Arc<OriginState>> = site
            .origins
            .iter()
            .map(|o| match left.iter().position(|s| s.same_origin(o)) {
                Some(i) => {
                    let old = left.remove(i);
                    if old.origin == *o { old } else { Arc::new(OriginState::carried(o, &old)) }
                }
                None => Arc::new(OriginState::new(o)),
            })
            .collect();
        sites.insert(site.id.clone(), states.clone());
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
            self.learn(site);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn site(origins: &str) -> Arc<Site> {
        let text = format!("[site]\nid = \"s\"\nhosts = [\"s.test\"]\n{origins}");
        Arc::new(Site::parse(std::path::Path::new("s.toml"), &text).unwrap())
    }

    /// Origin A, with its weight, its cap and, if `checked`, health checks.
    fn a(weight: u32, max: u32, checked: bool) -> String {
        let health = if checked { "[origin.health]\npath = \"/h\"\n" } else { "" };
        format!("[[origin]]\nurl = \"http://127.0.0.1:1\"\nweight = {weight}\nmax_connections = {max}\n{health}")
    }

    const B: &str = "[[origin]]\nurl = \"http://127.0.0.1:2\"\n";
    const C: &str = "[[origin]]\nurl = \"http://127.0.0.1:3\"\n";

    fn limit_of(pool: &OriginPool, site: &Site, url: &str) -> Arc<Semaphore> {
        let state = pool.states(site).into_iter().find(|s| s.origin.url.to_string().starts_with(url)).unwrap();
        Arc::clone(&state.limit)
    }

    /// A site's new version keeps what was learned of the origins it still
    /// has, and its cap; a request of the version before neither undoes
    /// that nor starts them over.
    #[tokio::test]
    async fn a_changed_site_keeps_its_origins_health_and_caps() {
        let pool = OriginPool::default();
        let v1 = site(&format!("{}{B}", a(1, 2, true)));
        pool.sites_changed(&[Arc::clone(&v1)]);
        let check = pool.states(&v1)[0].origin.health.clone().unwrap();
        for _ in 0..check.unhealthy_threshold {
            pool.states(&v1)[0].record(false, &check);
        }
        assert_eq!(pool.health("s"), [false, true]);
        let held = limit_of(&pool, &v1, "http://127.0.0.1:1").try_acquire_owned().unwrap();

        // A's weight changes; C comes.
        let v2 = site(&format!("{}{B}{C}", a(3, 2, true)));
        pool.sites_changed(&[Arc::clone(&v2)]);
        assert_eq!(pool.health("s"), [false, true, true], "A is still down");
        let cap = limit_of(&pool, &v2, "http://127.0.0.1:1");
        assert!(Arc::ptr_eq(&cap, &limit_of(&pool, &v1, "http://127.0.0.1:1")), "one cap for both versions");
        assert_eq!(cap.available_permits(), 1, "the exchange in flight still counts");
        // A request of the old version changes nothing.
        let _ = pool.targets(&v1, 7);
        assert_eq!(pool.health("s"), [false, true, true]);

        // A's cap goes down to 1 while one is in use: none left until it
        // comes back, then one.
        let v3 = site(&format!("{}{B}", a(3, 1, true)));
        pool.sites_changed(&[Arc::clone(&v3)]);
        let cap3 = limit_of(&pool, &v3, "http://127.0.0.1:1");
        assert!(Arc::ptr_eq(&cap, &cap3));
        assert_eq!(cap3.available_permits(), 0);
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), async {
            while cap3.available_permits() != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("one place, once the exchange ended");
        assert_eq!(pool.health("s"), [false, true], "C left with the version that had it");

        // Its checks taken out: nothing but they would put it back, so it
        // is in service again.
        pool.sites_changed(&[site(&format!("{}{B}", a(3, 1, false)))]);
        assert_eq!(pool.health("s"), [true, true], "checks taken out: in service");
    }
}
