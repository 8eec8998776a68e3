//! The DNS server's view of edge health: the control plane's node registry,
//! read every [`POLL`]. An edge is answered while it holds its event stream
//! open, or was heard from within [`FRESH`]; one that died (its stream
//! closed) leaves the answers at the next poll, well within a TTL. An edge
//! that reports a problem (every shield down, its cache disk full) is
//! answered only when no PoP has an edge without one. A PoP the registry
//! has never listed keeps its static edges from the node file, and while
//! the control plane cannot be reached the last known set stays. The PoP
//! weights operators set are read with the registry.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use outpost_config::api::NodeStatus;
use outpost_config::{DnsPop, Role};
use outpost_net::control::{ControlClient, Token};
use tokio_util::sync::CancellationToken;

use super::server::GeoDns;

/// How often the registry is read.
pub const POLL: Duration = Duration::from_secs(1);
/// An edge not connected but heard from within this still counts: its
/// stream is being re-established (nodes retry at least every
/// `RECONNECT_BACKOFF_MAX`, so three tries fit in it).
pub const FRESH: Duration = Duration::from_millis(3 * outpost_config::api::RECONNECT_BACKOFF_MAX.as_millis() as u64);
/// A connected edge silent this long is dead: it acknowledges every
/// heartbeat, so this allows one lost acknowledgement, and one poll later
/// it is out of the answers within the registry's `DEAD_AFTER`.
pub const SILENT_AFTER: Duration =
    Duration::from_millis(outpost_config::api::DEAD_AFTER.as_millis() as u64 - POLL.as_millis() as u64);
/// Time allowed for one registry read.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Where the registry is.
#[derive(Debug, Clone)]
pub struct RegistryLink {
    /// The control plane, or each of its replicas.
    pub urls: Vec<Uri>,
    pub token_file: PathBuf,
    /// Verifies an `https` control plane.
    pub tls: Arc<rustls::ClientConfig>,
    /// The PoPs, with the addresses each may be answered with.
    pub pops: Vec<DnsPop>,
}

/// A PoP's live edges: those that serve well, and those that report a
/// problem.
#[derive(Debug, Default, PartialEq)]
struct Live {
    sound: Vec<IpAddr>,
    degraded: Vec<IpAddr>,
}

/// Live edge addresses by PoP, from a registry listing: only PoPs this
/// server knows, and only addresses the PoP's `edges` or `networks` allow
/// (a registered address outside them is counted in `rejected`, never
/// answered).
fn live_edges(nodes: &[NodeStatus], pops: &[DnsPop], rejected: &mut Vec<String>) -> BTreeMap<String, Live> {
    let mut out: BTreeMap<String, Live> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.node.role == Role::Edge) {
        let Some(pop) = n.node.pop.as_ref().and_then(|p| pops.iter().find(|x| x.name == *p)) else { continue };
        let entry = out.entry(pop.name.clone()).or_default();
        if !answerable(n) {
            continue;
        }
        for a in &n.node.addrs {
            let list = if n.node.problems.is_empty() { &mut entry.sound } else { &mut entry.degraded };
            match addr_ip(a) {
                Some(ip) if ip.is_unspecified() || list.contains(&ip) => {}
                Some(ip) if pop.allows(ip) => list.push(ip),
                _ => rejected.push(format!("{a} ({})", pop.name)),
            }
        }
    }
    out
}

/// Whether a registered node is alive enough to be answered: connected
/// and heard from lately, or heard from within [`FRESH`] (its stream is
/// being re-established). A connected node reports every heartbeat; one
/// silent for longer is cut off even if its stream looks open (a link that
/// died without a FIN keeps a TCP connection open for many minutes).
pub fn answerable(n: &NodeStatus) -> bool {
    let silent_for = n.since_contact_ms;
    (n.connected && silent_for < SILENT_AFTER.as_millis() as u64) || silent_for < FRESH.as_millis() as u64
}

/// Notes, for `outpost_dns_answerable` ([`GeoDns::answerable_text`]),
/// whether this server answers with each registered edge.
fn record_answerable(dns: &GeoDns, nodes: &[NodeStatus], live: &BTreeMap<String, Live>) {
    let mut now = Vec::new();
    for n in nodes.iter().filter(|n| n.node.role == Role::Edge) {
        let pop = n.node.pop.clone().unwrap_or_default();
        let answered = live.get(&pop).is_some_and(|l| {
            n.node.addrs.iter().filter_map(|a| addr_ip(a)).any(|ip| l.sound.contains(&ip) || l.degraded.contains(&ip))
        });
        now.push((pop, n.node.name.clone(), answered));
    }
    now.sort();
    *dns.answerable.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = now;
}

/// The IP of a registered address (`ip:port` or a bare IP).
fn addr_ip(a: &str) -> Option<IpAddr> {
    a.parse::<std::net::SocketAddr>().map(|s| s.ip()).or_else(|_| a.parse::<IpAddr>()).ok()
}

/// Polls between two reads of the site list (a site created or deleted is
/// answered or NXDOMAIN within this many seconds).
const SITES_EVERY: u64 = 3;

/// Follows the registry until `shutdown`, steering by what it says about
/// the link's PoPs, and answering for the sites the control plane lists.
pub fn follow(dns: Arc<GeoDns>, link: RegistryLink, shutdown: CancellationToken) {
    let scraped = Arc::downgrade(&dns);
    outpost_net::metrics::scrape_also(move || scraped.upgrade().map(|dns| dns.answerable_text()));
    tokio::spawn(async move {
        let mut last_rejected: Vec<String> = Vec::new();
        let client = ControlClient::new(
            &link.urls.iter().map(ToString::to_string).collect::<Vec<_>>(),
            Token::File(link.token_file.clone()),
            Arc::clone(&link.tls),
        )
        .with_timeout(TIMEOUT);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut answering_known = false;
        let mut polls: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // The site list costs the control plane a read of every site:
            // every few polls, not each.
            if polls.is_multiple_of(SITES_EVERY) {
                match client.sites().await {
                    Ok(sites) => dns.set_sites(sites.into_iter().map(|s| s.id)),
                    // The sites stay as last read.
                    Err(e) => tracing::debug!(error = %e, "cannot read the site list"),
                }
            }
            polls = polls.wrapping_add(1);
            match client.pops().await {
                Ok(pops) => dns.steering.set_weights(&pops.into_iter().map(|p| (p.name, p.weight)).collect()),
                // Weights stay as last read (a control plane from before
                // weights answers 404: every PoP at full weight).
                Err(e) => tracing::debug!(error = %e, "cannot read the PoP weights"),
            }
            match client.nodes().await {
                Ok(nodes) => {
                    if failing {
                        tracing::info!("node registry reachable again");
                        failing = false;
                    }
                    let mut rejected = Vec::new();
                    let live = live_edges(&nodes, &link.pops, &mut rejected);
                    record_answerable(&dns, &nodes, &live);
                    for (pop, live) in live {
                        dns.steering.set_edges(&pop, live.sound, live.degraded);
                    }
                    let none_live = dns.steering.none_live();
                    if none_live && !answering_known {
                        tracing::error!("no PoP has a live edge in the registry; answering the last known edges");
                    }
                    answering_known = none_live;
                    if !rejected.is_empty() {
                        metrics::counter!("outpost_dns_registry_rejected_total").increment(rejected.len() as u64);
                        if rejected != last_rejected {
                            tracing::warn!(
                                addrs = ?rejected,
                                "edges registered addresses outside their PoP's edges and networks; not answered"
                            );
                        }
                    }
                    last_rejected = rejected;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read the node registry; answering from the last known edges");
                        failing = true;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(role: Role, pop: &str, addr: &str, connected: bool, since: u64) -> NodeStatus {
        NodeStatus {
            node: outpost_config::api::NodeRecord {
                name: format!("{pop}-{addr}"),
                role,
                pop: Some(pop.into()),
                addrs: vec![addr.into()],
                acked_seq: 0,
                last_contact_ms: 0,
                load_rps: None,
                hit_permille: None,
                problems: Vec::new(),
                credential_generation: None,
            },
            connected,
            lag: 0,
            since_contact_ms: since,
        }
    }

    #[test]
    fn only_live_edges_are_answered_and_dead_pops_empty() {
        let nodes = [
            node(Role::Edge, "fra", "127.0.0.11:8080", true, 1_500),
            node(Role::Edge, "fra", "127.0.0.14:8080", false, 1_000),
            // Its stream looks open, but it has said nothing for a minute:
            // the link died without a FIN.
            node(Role::Edge, "fra", "127.0.0.15:8080", true, 60_000),
            node(Role::Edge, "iad", "127.0.0.12:8080", false, 60_000),
            node(Role::Shield, "fra", "127.0.0.1:8101", true, 0),
            node(Role::Edge, "sin", "0.0.0.0:8080", true, 0),
        ];
        let pops = pops();
        let mut rejected = Vec::new();
        let h = live_edges(&nodes, &pops, &mut rejected);
        let ips = |s: &[&str]| s.iter().map(|a| a.parse::<IpAddr>().unwrap()).collect::<Vec<_>>();
        assert_eq!(h["fra"].sound, ips(&["127.0.0.11", "127.0.0.14"]));
        assert_eq!(h["iad"], Live::default(), "a dead edge empties its PoP");
        assert_eq!(h["sin"], Live::default(), "an unspecified address is never answered");
        assert_eq!(h.len(), 3);
        assert!(rejected.is_empty());
    }

    #[test]
    fn an_edge_reporting_a_problem_is_live_but_degraded() {
        let mut troubled = node(Role::Edge, "fra", "127.0.0.14:8080", true, 0);
        troubled.node.problems = vec!["every shield is down (a, b)".into()];
        let nodes = [node(Role::Edge, "fra", "127.0.0.11:8080", true, 0), troubled];
        let h = live_edges(&nodes, &pops(), &mut Vec::new());
        let ip = |a: &str| vec![a.parse::<IpAddr>().unwrap()];
        assert_eq!(h["fra"], Live { sound: ip("127.0.0.11"), degraded: ip("127.0.0.14") });
    }

    fn pops() -> Vec<DnsPop> {
        let pop = |name: &str, edges: &[&str], networks: &[&str]| DnsPop {
            name: name.into(),
            latitude: 0.0,
            longitude: 0.0,
            edges: edges.iter().map(|e| e.parse().unwrap()).collect(),
            networks: networks.iter().map(|n| n.parse().unwrap()).collect(),
        };
        vec![pop("fra", &[], &["127.0.0.0/24"]), pop("iad", &["127.0.0.12"], &[]), pop("sin", &[], &["0.0.0.0/0"])]
    }

    #[test]
    fn a_registered_address_outside_the_pops_edges_and_networks_is_never_answered() {
        let nodes = [
            node(Role::Edge, "fra", "127.0.0.11:8080", true, 0),
            node(Role::Edge, "fra", "6.6.6.6:80", true, 0),
            node(Role::Edge, "iad", "127.0.0.12:8080", true, 0),
            node(Role::Edge, "iad", "127.0.0.99:8080", true, 0),
            node(Role::Edge, "nowhere", "127.0.0.11:8080", true, 0),
        ];
        let mut rejected = Vec::new();
        let h = live_edges(&nodes, &pops(), &mut rejected);
        assert_eq!(h["fra"].sound, vec!["127.0.0.11".parse::<IpAddr>().unwrap()]);
        assert_eq!(h["iad"].sound, vec!["127.0.0.12".parse::<IpAddr>().unwrap()], "only the listed edge");
        assert!(!h.contains_key("nowhere"), "a PoP this server does not know is ignored");
        assert_eq!(rejected, ["6.6.6.6:80 (fra)", "127.0.0.99:8080 (iad)"]);
    }
}
