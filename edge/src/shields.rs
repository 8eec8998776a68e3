//! Shield selection: the shield for a key is the best-ranked healthy one by
//! rendezvous hash, so all edges agree and a shield's loss moves only its
//! keys. A shield that refuses or fails of itself (a 5xx its own
//! `Cache-Status` does not lay on its upstream) is marked down at once
//! (passive) and probed every `probe_interval` until it answers again
//! (active). A shield that answers for one site's origin (its 5xx passed
//! on, or a 502 or 504 for an origin it cannot reach or that is slow) is
//! well, and one that leaves a request unanswered in time is probed at
//! once, and marked down only if the probe goes unanswered too: one site's
//! broken or slow origin, or any client who can make an origin answer 500,
//! must not take the shields out of service for every site. With every
//! shield down, the site's origins are tried directly when the site allows
//! it.
//!
//! A shield that answers it cannot reach a site's origin at all (its
//! member says `detail=connect` or `detail=no-target`: its uplink is
//! broken, or the origin is down for everyone) stays in service, but a GET
//! is tried once more through the next target; so is a GET a shield failed
//! of itself (which takes it out too). Either shield is passed
//! over for that site for [`PASS_OVER`]: ranked after the others, so
//! requests go through a shield that reaches the origin while one that
//! cannot is tried again later. A shield that leaves a request of a site
//! unanswered in time (still waiting on an origin it cannot reach) is
//! passed over for that site too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Response, Uri};
use http_body_util::Empty;
use outpost_config::{Site, Upstream, UpstreamMode};
use outpost_net::RecvBody;
use outpost_proxy::key::Key;
use outpost_proxy::rendezvous;
use outpost_proxy::upstream::{ProbeClient, Probes, Route, Target, status_well};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Connecting to a shield on the CDN's own network takes milliseconds.
const SHIELD_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A shield that leaves what an edge sent it unacknowledged this long is
/// cut off from it: the edge goes to the next target instead of waiting
/// out the origin's response timeout. Long enough that a brief loss of
/// the route does not end every response on a shared HTTP/2 connection.
const SHIELD_LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time a shield gets beyond the origin's response timeout (it may
/// have to fetch from the origin first).
const SHIELD_EXTRA_TIME: Duration = Duration::from_secs(1);
/// What a shield's `Cache-Status` member says of an error that was its
/// upstream's, besides the status the upstream answered (`fwd-status`):
/// why it could not answer.
const UPSTREAMS_FAULT: [&str; 5] =
    ["detail=connect", "detail=timeout", "detail=protocol", "detail=status", "detail=no-target"];
/// What a shield's `Cache-Status` member says when it could not reach the
/// site's origin at all: another shield may.
const UNREACHED: [&str; 2] = ["detail=connect", "detail=no-target"];
/// How long a shield that could not reach a site's origin is ranked after
/// the others for that site.
const PASS_OVER: Duration = Duration::from_secs(10);
/// Most (shield, site) pairs passed over at once; past it the oldest are
/// forgotten (sites are few, and come from the control plane).
const MAX_PASSED_OVER: usize = 4096;
/// A probe answer (any HTTP response) must arrive within this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A Host no site has: a shield answers it with 421, which proves it is up.
const PROBE_HOST: &str = "probe.outpost.invalid";

#[derive(Debug)]
struct Shield {
    base: Uri,
    name: String,
    down: AtomicBool,
    /// Down, and its last probe got no HTTP answer at all: not a shield
    /// passing on an origin's 5xx, but one that cannot be reached.
    unreachable: AtomicBool,
    /// Left a request unanswered in time: probed at once, still in
    /// service meanwhile.
    suspect: AtomicBool,
}

/// The edge's route to its shields (or origins).
#[derive(Debug)]
pub struct ShieldRoute {
    shields: Vec<Shield>,
    mode: UpstreamMode,
    probe_interval: Duration,
    http2: bool,
    /// Wakes the prober for a suspect shield.
    probe_now: Notify,
    /// (shield base, site id) → until when that shield is ranked last for
    /// that site, having answered it could not reach the site's origin.
    passed_over: std::sync::Mutex<std::collections::HashMap<(Uri, String), std::time::Instant>>,
}

impl ShieldRoute {
    pub fn new(upstream: &Upstream) -> ShieldRoute {
        let shields = upstream
            .shields
            .iter()
            .map(|u| Shield {
                base: u.url.clone(),
                name: u.name.clone(),
                down: AtomicBool::new(false),
                unreachable: AtomicBool::new(false),
                suspect: AtomicBool::new(false),
            })
            .collect();
        ShieldRoute {
            shields,
            mode: upstream.mode,
            probe_interval: upstream.probe_interval,
            http2: upstream.http2,
            probe_now: Notify::new(),
            passed_over: std::sync::Mutex::default(),
        }
    }

    /// The shield's last `Cache-Status` member: its own, added after those
    /// of the tiers behind it.
    fn own_member(resp: &Response<RecvBody>) -> &str {
        let last = resp.headers().get_all("cache-status").iter().next_back();
        last.and_then(|v| v.to_str().ok()).and_then(|v| v.rsplit(',').next()).unwrap_or("")
    }

    /// Ranks `shield` after the others for `site`, for [`PASS_OVER`].
    fn pass_over(&self, shield: &Shield, site: &Site) {
        let mut map = self.passed_over.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_PASSED_OVER {
            let now = std::time::Instant::now();
            map.retain(|_, until| *until > now);
        }
        if map.len() < MAX_PASSED_OVER
            && map.insert((shield.base.clone(), site.id.to_string()), std::time::Instant::now() + PASS_OVER).is_none()
        {
            tracing::warn!(shield = %shield.name, site = %site.id, "the shield could not answer for the site's origin: passed over for {PASS_OVER:?}");
        }
    }

    /// The shields passed over for `site` now (and forgets the pairs
    /// whose time is up): one lock a miss, nothing allocated while none is.
    fn passed_over_for(&self, site: &str) -> Vec<Uri> {
        let mut map = self.passed_over.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return Vec::new();
        }
        let now = std::time::Instant::now();
        map.retain(|_, until| *until > now);
        map.keys().filter(|(_, s)| s == site).map(|(base, _)| base.clone()).collect()
    }

    /// Names of the shields currently up (for tests and status).
    pub fn healthy(&self) -> Vec<String> {
        self.shields.iter().filter(|s| !s.down.load(Ordering::Acquire)).map(|s| s.name.clone()).collect()
    }

    /// The shield that owns the URL placed at `key`
    /// (`RequestKey::placement`) among the given names (all edges agree).
    pub fn owner(&self, key: Key) -> Option<String> {
        let names: Vec<(&str, u32)> = self.shields.iter().map(|s| (s.name.as_str(), 1)).collect();
        rendezvous::rank(key, &names).first().map(|i| self.shields[*i].name.clone())
    }

    fn target(&self, shield: &Shield, site: &Site) -> Target {
        let origin_wait = site.origins.iter().map(|o| o.response_timeout).max().unwrap_or(Duration::from_secs(30));
        Target {
            base: shield.base.clone(),
            host: None,
            connect_timeout: SHIELD_CONNECT_TIMEOUT,
            link_timeout: SHIELD_LINK_TIMEOUT,
            response_timeout: origin_wait + SHIELD_EXTRA_TIME,
            label: Arc::from(shield.name.as_str()),
            limit: None,
            ca: None,
            http2: self.http2,
            shield: true,
        }
    }

    async fn probe(client: &ProbeClient, shield: &Shield) -> bool {
        let Ok(req) = http::Request::get(&shield.base).header(http::header::HOST, PROBE_HOST).body(Empty::new()) else {
            return false;
        };
        matches!(tokio::time::timeout(PROBE_TIMEOUT, client.request(req)).await, Ok(Ok(_)))
    }
}

impl Route for ShieldRoute {
    fn targets(&self, site: &Site, key: Key) -> Vec<Target> {
        if self.mode == UpstreamMode::Origin || self.shields.is_empty() {
            return Target::origins(site);
        }
        let names: Vec<(&str, u32)> = self.shields.iter().map(|s| (s.name.as_str(), 1)).collect();
        let ranked = rendezvous::rank(key, &names);
        let passed = self.passed_over_for(&site.id);
        let (mut targets, last): (Vec<Target>, Vec<Target>) = ranked
            .iter()
            .map(|i| &self.shields[*i])
            .filter(|s| !s.down.load(Ordering::Acquire))
            .map(|s| self.target(s, site))
            .partition(|t| !passed.contains(&t.base));
        targets.extend(last);
        if site.allow_direct {
            // Last resort within the same request: the origin itself.
            targets.extend(Target::origins(site));
        } else if targets.is_empty() {
            // Nothing else allowed: try the shields anyway, best first.
            targets = ranked.iter().map(|i| self.target(&self.shields[*i], site)).collect();
        }
        targets
    }

    fn problems(&self) -> Vec<String> {
        let used = self.mode == UpstreamMode::Shield && !self.shields.is_empty();
        // Only what probes confirm: an answer judged a shield's own failure
        // marks it down, and must not move a PoP's clients elsewhere
        // unless probes find it gone.
        let gone = |s: &Shield| s.down.load(Ordering::Acquire) && s.unreachable.load(Ordering::Acquire);
        if used && self.shields.iter().all(gone) {
            let names: Vec<&str> = self.shields.iter().map(|s| s.name.as_str()).collect();
            return vec![format!("every shield is down ({})", names.join(", "))];
        }
        Vec::new()
    }

    fn answered_well(&self, _target: &Target, resp: &Response<RecvBody>) -> bool {
        if status_well(resp.status()) {
            return true;
        }
        // A 5xx it passed on, failed to get, or keeps (a hit: an origin's
        // 5xx it stored) is its upstream's.
        let member = Self::own_member(resp);
        member
            .split(';')
            .map(str::trim)
            .any(|p| p.starts_with("fwd-status=") || p == "hit" || UPSTREAMS_FAULT.contains(&p))
    }

    fn passed_on_fault(&self, site: &Site, target: &Target, resp: &Response<RecvBody>) -> bool {
        let Some(shield) = self.shields.iter().find(|s| s.base == target.base) else {
            return false;
        };
        // Its origin out of its reach, or its own failure (a 5xx that names
        // no upstream's fault: an error of its own, or of a load balancer
        // before it): another shield, or the origin, may answer. An
        // origin's own 5xx, or a slow origin's 504, goes to the client: the
        // next target would ask that origin the same again.
        let unreached = Self::own_member(resp).split(';').any(|p| UNREACHED.contains(&p.trim()));
        let own = !self.answered_well(target, resp);
        if !resp.status().is_server_error() || !(unreached || own) {
            return false;
        }
        self.pass_over(shield, site);
        true
    }

    fn no_answer(&self, site: &Site, target: &Target) {
        let Some(s) = self.shields.iter().find(|s| s.base == target.base) else {
            return;
        };
        if !s.suspect.swap(true, Ordering::AcqRel) {
            self.probe_now.notify_one();
        }
        // Hung, or waiting on an origin it cannot reach: either way the
        // next request for the site goes elsewhere first.
        self.pass_over(s, site);
    }

    fn report(&self, target: &Target, ok: bool) {
        if let Some(s) = self.shields.iter().find(|s| s.base == target.base) {
            let was_down = s.down.swap(!ok, Ordering::AcqRel);
            if ok {
                s.unreachable.store(false, Ordering::Release);
            }
            if !ok && !was_down {
                tracing::warn!(shield = %s.name, "shield marked down");
            }
        }
    }

    fn start(self: Arc<Self>, shutdown: CancellationToken, probes: Probes) {
        if self.shields.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let client = probes.client(None, SHIELD_CONNECT_TIMEOUT);
            let mut tick = tokio::time::interval(self.probe_interval);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                    () = self.probe_now.notified() => {}
                }
                let due = |s: &&Shield| s.down.load(Ordering::Acquire) || s.suspect.load(Ordering::Acquire);
                for s in self.shields.iter().filter(due) {
                    let up = Self::probe(&client, s).await;
                    let suspect = s.suspect.swap(false, Ordering::AcqRel);
                    s.unreachable.store(!up, Ordering::Release);
                    if up && s.down.swap(false, Ordering::AcqRel) {
                        tracing::info!(shield = %s.name, "shield back up");
                    } else if !up && suspect && !s.down.swap(true, Ordering::AcqRel) {
                        tracing::warn!(shield = %s.name, "shield marked down: a request and a probe went unanswered");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(status: u16, cache_status: &[&str]) -> bool {
        let route = ShieldRoute::new(&Upstream {
            mode: UpstreamMode::Shield,
            shields: Vec::new(),
            probe_interval: Duration::from_secs(1),
            http2: false,
        });
        let target = Target {
            base: Uri::from_static("http://127.0.0.1:1"),
            host: None,
            connect_timeout: SHIELD_CONNECT_TIMEOUT,
            link_timeout: SHIELD_LINK_TIMEOUT,
            response_timeout: SHIELD_EXTRA_TIME,
            label: Arc::from("shield"),
            limit: None,
            ca: None,
            http2: false,
            shield: true,
        };
        let mut resp = Response::new(RecvBody::empty());
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
        for v in cache_status {
            resp.headers_mut().append("cache-status", http::HeaderValue::from_str(v).unwrap());
        }
        route.answered_well(&target, &resp)
    }

    /// Only the shield's own member, the last, can lay a 5xx on its
    /// upstream: an origin that forges members of its own before it, or a
    /// 5xx with no member at all, is the shield's.
    #[test]
    fn a_shields_5xx_is_its_upstreams_only_when_its_own_member_says_so() {
        assert!(judged(200, &[]));
        assert!(judged(508, &[]));
        assert!(judged(500, &["shield-a; fwd=uri-miss; fwd-status=500; detail=status"]));
        assert!(judged(502, &["shield-a; fwd=miss; detail=connect"]));
        assert!(judged(504, &["origin; hit", "shield-a; fwd=miss; detail=timeout"]));
        assert!(judged(500, &["shield-a; hit; ttl=50"]), "an origin's 500 it stored");
        assert!(!judged(500, &["shield-a; hits"]), "a word that starts like one is not it");
        assert!(!judged(500, &[]), "no member: not an answer of the shield's engine");
        assert!(!judged(500, &["shield-a; fwd=miss; detail=internal"]));
        assert!(!judged(503, &["evil; fwd-status=500, shield-a; fwd=miss; detail=internal"]));
        assert!(!judged(503, &["evil; detail=connect", "shield-a; detail=internal"]));
        assert!(!judged(500, &["shield-a; detail=connections"]), "a word that starts like one is not it");
    }

    /// A shield that answers it could not reach the site's origin at all
    /// is passed over for that site alone, ranked after the others; an
    /// origin's own error, a slow origin, or a member forged before the
    /// shield's own are not that.
    #[test]
    fn a_shield_that_cannot_reach_a_sites_origin_is_ranked_last_for_that_site() {
        let shield = |n: u16| outpost_config::ShieldAddr {
            name: format!("shield-{n}"),
            url: format!("http://127.0.0.{n}:8101").parse().unwrap(),
        };
        let route = ShieldRoute::new(&Upstream {
            mode: UpstreamMode::Shield,
            shields: vec![shield(1), shield(2), shield(3)],
            probe_interval: Duration::from_secs(1),
            http2: false,
        });
        let site = |id: &str| -> Site {
            format!("[site]\nid = \"{id}\"\nhosts = [\"{id}.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:1\"\n")
                .parse()
                .unwrap()
        };
        let (a, b) = (site("a"), site("b"));
        let key = 42;
        // The shields in the order tried (the origin, with `allow_direct`, after them).
        let order = |s: &Site| {
            let all: Vec<String> = route.targets(s, key).into_iter().map(|t| t.label.to_string()).collect();
            assert_eq!(all.last().map(String::as_str), Some("origin"), "{all:?}");
            all[..all.len() - 1].to_vec()
        };
        let first = order(&a);
        assert_eq!(first.len(), 3);
        let owner = route.targets(&a, key).remove(0);
        let answer = |status: u16, members: &[&str]| {
            let mut resp = Response::new(RecvBody::empty());
            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
            for v in members {
                resp.headers_mut().append("cache-status", http::HeaderValue::from_str(v).unwrap());
            }
            resp
        };
        for (status, members, why) in [
            (500, vec!["shield; fwd=uri-miss; fwd-status=500; detail=status"], "the origin's own 500"),
            (504, vec!["shield; fwd=miss; detail=timeout"], "a slow origin"),
            (502, vec!["origin; detail=connect", "shield; fwd=miss; detail=status"], "a member forged before"),
            (200, vec!["shield; fwd=miss; detail=connect"], "not an error"),
        ] {
            assert!(!route.passed_on_fault(&a, &owner, &answer(status, &members)), "{why}");
        }
        assert_eq!(order(&a), first, "nothing passed over");
        assert!(route.passed_on_fault(&a, &owner, &answer(502, &["shield; fwd=miss; detail=connect"])));
        let now = order(&a);
        assert_eq!(now[..2], first[1..], "the others first");
        assert_eq!(now[2], first[0], "the owner last");
        assert_eq!(order(&b), first, "for that site alone");
        assert!(route.passed_on_fault(&b, &owner, &answer(503, &["shield; fwd=miss; detail=no-target"])));
        assert_eq!(order(&b)[2], first[0]);
        // The shield's own failure, or that of what stands before it.
        for (status, members, site_id) in
            [(500, vec!["shield; fwd=miss; detail=internal"], "d"), (503, vec![], "e"), (502, vec!["lb"], "f")]
        {
            let s = site(site_id);
            assert!(route.passed_on_fault(&s, &owner, &answer(status, &members)), "{status} {members:?}");
            assert_eq!(order(&s)[2], first[0], "{status} {members:?}: the owner last");
        }
        // A request of a site left unanswered in time: passed over too.
        let c = site("c");
        assert_eq!(order(&c), first);
        route.no_answer(&c, &owner);
        assert_eq!(order(&c)[2], first[0]);
        let other = route.targets(&a, key).remove(0);
        assert!(
            !route.passed_on_fault(
                &a,
                &Target { base: Uri::from_static("http://192.0.2.1:1"), ..other },
                &answer(502, &["s; detail=connect"])
            ),
            "not one of its shields"
        );
    }
}
