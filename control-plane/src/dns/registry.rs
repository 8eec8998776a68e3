//! The DNS server's view of edge health: the control plane's node registry,
//! read every [`POLL`]. An edge is answered while it holds its event stream
//! open, or was heard from within [`FRESH`]; one that died (its stream
//! closed) leaves the answers at the next poll, well within a TTL. A PoP the
//! registry has never listed keeps its static edges from the node file, and
//! while the control plane cannot be reached the last known set stays.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use outpost_config::DnsPop;

use super::server::GeoDns;

/// How often the registry is read.
pub const POLL: Duration = Duration::from_secs(1);
/// An edge not connected but heard from within this still counts: its
/// stream is being re-established (nodes reconnect within half a second).
pub const FRESH: Duration = Duration::from_millis(1500);
/// Time allowed for one registry read.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Where the registry is.
#[derive(Debug, Clone)]
pub struct RegistryLink {
    pub url: Uri,
    pub token_file: PathBuf,
    /// Verifies an `https` control plane.
    pub tls: Arc<rustls::ClientConfig>,
    /// The PoPs, with the addresses each may be answered with.
    pub pops: Vec<DnsPop>,
}

#[derive(Debug, Deserialize)]
struct NodeEntry {
    role: String,
    pop: Option<String>,
    #[serde(default)]
    addrs: Vec<String>,
    connected: bool,
    since_contact_ms: u64,
}

/// Healthy edge addresses by PoP, from a registry listing: only PoPs this
/// server knows, and only addresses the PoP's `edges` or `networks` allow
/// (a registered address outside them is counted in `rejected`, never
/// answered).
fn healthy_edges(nodes: &[NodeEntry], pops: &[DnsPop], rejected: &mut Vec<String>) -> BTreeMap<String, Vec<IpAddr>> {
    let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.role == "edge") {
        let Some(pop) = n.pop.as_ref().and_then(|p| pops.iter().find(|x| x.name == *p)) else { continue };
        let entry = out.entry(pop.name.clone()).or_default();
        if !(n.connected || n.since_contact_ms < FRESH.as_millis() as u64) {
            continue;
        }
        for a in &n.addrs {
            let ip = a.parse::<std::net::SocketAddr>().map(|s| s.ip()).or_else(|_| a.parse::<IpAddr>());
            match ip {
                Ok(ip) if ip.is_unspecified() || entry.contains(&ip) => {}
                Ok(ip) if pop.allows(ip) => entry.push(ip),
                _ => rejected.push(format!("{a} ({})", pop.name)),
            }
        }
    }
    out
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

async fn read(client: &HttpsClient, link: &RegistryLink) -> Result<Vec<NodeEntry>, String> {
    let token = std::fs::read_to_string(&link.token_file)
        .map_err(|e| format!("node token `{}`: {e}", link.token_file.display()))?;
    let url = format!("{}/v1/nodes", link.url.to_string().trim_end_matches('/'));
    let req = Request::get(url)
        .header(http::header::AUTHORIZATION, format!("Bearer {}", token.trim()))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(TIMEOUT, client.request(req))
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("the control plane answered {}", resp.status()));
    }
    let body = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("unreadable registry: {e}"))
}

/// Follows the registry until `shutdown`, steering by what it says about
/// the link's PoPs.
pub fn follow(dns: Arc<GeoDns>, link: RegistryLink, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut last_rejected: Vec<String> = Vec::new();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let connector = hyper_rustls::HttpsConnector::from((http, Arc::clone(&link.tls)));
        let client: HttpsClient = Client::builder(TokioExecutor::new()).build(connector);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match read(&client, &link).await {
                Ok(nodes) => {
                    if failing {
                        tracing::info!("node registry reachable again");
                        failing = false;
                    }
                    let mut rejected = Vec::new();
                    for (pop, edges) in healthy_edges(&nodes, &link.pops, &mut rejected) {
                        dns.steering.set_edges(&pop, edges);
                    }
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

    fn node(role: &str, pop: &str, addr: &str, connected: bool, since: u64) -> NodeEntry {
        NodeEntry {
            role: role.into(),
            pop: Some(pop.into()),
            addrs: vec![addr.into()],
            connected,
            since_contact_ms: since,
        }
    }

    #[test]
    fn only_live_edges_are_answered_and_dead_pops_empty() {
        let nodes = [
            node("edge", "fra", "127.0.0.11:8080", true, 60_000),
            node("edge", "fra", "127.0.0.14:8080", false, 1_000),
            node("edge", "iad", "127.0.0.12:8080", false, 60_000),
            node("shield", "fra", "127.0.0.1:8101", true, 0),
            node("edge", "sin", "0.0.0.0:8080", true, 0),
        ];
        let pops = pops();
        let mut rejected = Vec::new();
        let h = healthy_edges(&nodes, &pops, &mut rejected);
        let ips = |s: &[&str]| s.iter().map(|a| a.parse::<IpAddr>().unwrap()).collect::<Vec<_>>();
        assert_eq!(h["fra"], ips(&["127.0.0.11", "127.0.0.14"]));
        assert!(h["iad"].is_empty(), "a dead edge empties its PoP");
        assert!(h["sin"].is_empty(), "an unspecified address is never answered");
        assert_eq!(h.len(), 3);
        assert!(rejected.is_empty());
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
            node("edge", "fra", "127.0.0.11:8080", true, 0),
            node("edge", "fra", "6.6.6.6:80", true, 0),
            node("edge", "iad", "127.0.0.12:8080", true, 0),
            node("edge", "iad", "127.0.0.99:8080", true, 0),
            node("edge", "nowhere", "127.0.0.11:8080", true, 0),
        ];
        let mut rejected = Vec::new();
        let h = healthy_edges(&nodes, &pops(), &mut rejected);
        assert_eq!(h["fra"], vec!["127.0.0.11".parse::<IpAddr>().unwrap()]);
        assert_eq!(h["iad"], vec!["127.0.0.12".parse::<IpAddr>().unwrap()], "only the listed edge");
        assert!(!h.contains_key("nowhere"), "a PoP this server does not know is ignored");
        assert_eq!(rejected, ["6.6.6.6:80 (fra)", "127.0.0.99:8080 (iad)"]);
    }
}
