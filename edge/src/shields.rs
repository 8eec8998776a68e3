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
/// Extra time a shield gets beyond the origin's response timeout (it may
/// have to fetch from the origin first).
const SHIELD_EXTRA_TIME: Duration = Duration::from_secs(1);
/// What a shield's `Cache-Status` member says of an error that was its
/// upstream's, besides the status the upstream answered (`fwd-status`):
/// why it could not answer.
const UPSTREAMS_FAULT: [&str; 5] =
    ["detail=connect", "detail=timeout", "detail=protocol", "detail=status", "detail=no-target"];
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
        }
    }

    /// Names of the shields currently up (for tests and status).
    pub fn healthy(&self) -> Vec<String> {
        self.shields.iter().filter(|s| !s.down.load(Ordering::Acquire)).map(|s| s.name.clone()).collect()
    }

    /// The shield that owns `key` among the given names (all edges agree).
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
            response_timeout: origin_wait + SHIELD_EXTRA_TIME,
            label: Arc::from(shield.name.as_str()),
            limit: None,
            ca: None,
            http2: self.http2,
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
        let mut targets: Vec<Target> = ranked
            .iter()
            .map(|i| &self.shields[*i])
            .filter(|s| !s.down.load(Ordering::Acquire))
            .map(|s| self.target(s, site))
            .collect();
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
        // The shield's member is the last: it adds its own after those of
        // the tiers behind it.
        let last = resp.headers().get_all("cache-status").iter().next_back();
        let member = last.and_then(|v| v.to_str().ok()).and_then(|v| v.rsplit(',').next()).unwrap_or("");
        member.split(';').map(str::trim).any(|p| p.starts_with("fwd-status=") || UPSTREAMS_FAULT.contains(&p))
    }

    fn no_answer(&self, target: &Target) {
        if let Some(s) = self.shields.iter().find(|s| s.base == target.base)
            && !s.suspect.swap(true, Ordering::AcqRel)
        {
            self.probe_now.notify_one();
        }
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
            response_timeout: SHIELD_EXTRA_TIME,
            label: Arc::from("shield"),
            limit: None,
            ca: None,
            http2: false,
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
        assert!(!judged(500, &[]), "no member: not an answer of the shield's engine");
        assert!(!judged(500, &["shield-a; fwd=miss; detail=internal"]));
        assert!(!judged(503, &["evil; fwd-status=500, shield-a; fwd=miss; detail=internal"]));
        assert!(!judged(503, &["evil; detail=connect", "shield-a; detail=internal"]));
        assert!(!judged(500, &["shield-a; detail=connections"]), "a word that starts like one is not it");
    }
}
