//! The control plane's HTTP API on the wire: every path, request and
//! response body, and registry entry, as the server answers them and as the
//! CLI, the nodes' subscriber and the DNS servers read them. One definition
//! for all of them: a renamed field is a compile error everywhere at once.
//! The event stream's lines ([`StreamLine`](crate::StreamLine)) and
//! acknowledgements ([`Ack`](crate::Ack)) live beside the events.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{PurgeTarget, Role};

/// How often the event stream carries a heartbeat, so either side notices a
/// dead link within a few seconds.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A stream silent this long (three missed heartbeats) is dead: the node
/// reconnects, and counts itself cut off from the control plane.
pub const DEAD_AFTER: Duration = Duration::from_secs(3 * HEARTBEAT.as_secs());
/// Longest pause between a node's attempts to reconnect its stream: a
/// healed link is used again within this.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The API's paths.
pub mod paths {
    pub const SITES: &str = "/v1/sites";
    pub const PURGE: &str = "/v1/purge";
    pub const NODES: &str = "/v1/nodes";
    pub const POPS: &str = "/v1/pops";
    pub const EVENTS: &str = "/v1/events";
    pub const ACK: &str = "/v1/ack";
    pub const HEALTH: &str = "/healthz";
    pub const METRICS: &str = "/metrics";
    /// The routes of the one-resource paths below, as the server matches
    /// them.
    pub const SITE_ROUTE: &str = "/v1/sites/{id}";
    pub const SITE_VERSIONS_ROUTE: &str = "/v1/sites/{id}/versions";
    pub const POP_ROUTE: &str = "/v1/pops/{name}";
    pub const PURGE_ROUTE: &str = "/v1/purges/{id}";
    pub const NODE_CREDENTIAL_ROUTE: &str = "/v1/nodes/{name}/credential";

    /// `name` as one path segment: every byte but unreserved ones
    /// percent-encoded (and a segment of dots too), so that a name with a
    /// `?`, `#` or `/` in it names itself, not another resource (`shop?x`
    /// is not `shop`).
    fn segment(name: &str) -> String {
        use std::fmt::Write;
        let dots = !name.is_empty() && name.bytes().all(|b| b == b'.');
        let mut out = String::with_capacity(name.len());
        for b in name.bytes() {
            if (b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~')) || (b == b'.' && !dots) {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
        out
    }

    /// One site.
    pub fn site(id: &str) -> String {
        format!("{SITES}/{}", segment(id))
    }

    /// A site's kept versions, newest first.
    pub fn site_versions(id: &str) -> String {
        format!("{SITES}/{}/versions", segment(id))
    }

    /// One PoP's weight.
    pub fn pop(name: &str) -> String {
        format!("{POPS}/{}", segment(name))
    }

    /// One purge's report.
    pub fn purge(id: &str) -> String {
        format!("/v1/purges/{}", segment(id))
    }

    /// A node's credential: `POST` rotates it, `DELETE` revokes it.
    pub fn node_credential(name: &str) -> String {
        format!("{NODES}/{}/credential", segment(name))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn names_are_one_segment_each() {
            assert_eq!(super::site("shop-1.example_x"), "/v1/sites/shop-1.example_x");
            assert_eq!(super::site("shop?x"), "/v1/sites/shop%3Fx", "not the site `shop`");
            assert_eq!(super::site("shop#old"), "/v1/sites/shop%23old");
            assert_eq!(super::site_versions("a/../b"), "/v1/sites/a%2F..%2Fb/versions");
            assert_eq!(super::site(".."), "/v1/sites/%2E%2E");
            assert_eq!(super::site("a b"), "/v1/sites/a%20b");
            assert_eq!(super::node_credential("édge"), "/v1/nodes/%C3%A9dge/credential");
            assert_eq!(super::pop("fra"), "/v1/pops/fra");
            assert_eq!(super::purge("p-1"), "/v1/purges/p-1");
            // Each route matches its path.
            let as_route = |path: String, name: &str| path.replace("NAME", &format!("{{{name}}}"));
            assert_eq!(as_route(super::site("NAME"), "id"), super::SITE_ROUTE);
            assert_eq!(as_route(super::site_versions("NAME"), "id"), super::SITE_VERSIONS_ROUTE);
            assert_eq!(as_route(super::pop("NAME"), "name"), super::POP_ROUTE);
            assert_eq!(as_route(super::purge("NAME"), "id"), super::PURGE_ROUTE);
            assert_eq!(as_route(super::node_credential("NAME"), "name"), super::NODE_CREDENTIAL_ROUTE);
        }
    }
}

/// `POST /v1/nodes/{name}/credential` (a rotation: every credential the
/// node had is revoked and a new one handed out) and `DELETE` (a
/// revocation alone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCredential {
    pub node: String,
    /// The lowest credential generation the control plane takes for this
    /// node from now on.
    pub generation: u64,
    /// The new credential, of that generation (a rotation only): it goes
    /// in the node's `[control] token_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `POST /v1/nodes/{name}/credential?hand_over=…`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateQuery {
    /// Hand the new credential to the node over its event stream, so it
    /// goes on without an operator copying the file: for a routine
    /// rotation, not a credential that may have leaked (whoever holds the
    /// old one is handed the new). The node's open stream ends as in any
    /// rotation, and the next one it opens with the credential of the
    /// generation before is handed the new one instead of a refusal; once
    /// it has opened one with the new one, the old one gets nothing more.
    #[serde(default)]
    pub hand_over: bool,
}

/// `GET /v1/sites`: one line per site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteSummary {
    pub id: String,
    pub version: u64,
    pub updated_ms: u64,
    pub hosts: Vec<String>,
}

/// `GET /v1/sites/{id}`: a stored site file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    pub id: String,
    pub version: u64,
    pub toml: String,
    pub updated_ms: u64,
    /// The sequence of the event that created the site (its version 1):
    /// what tells a site deleted and created again under its id from an
    /// update. 0 in records stored before it was kept.
    #[serde(default)]
    pub created_seq: u64,
}

/// `POST /v1/sites`, `PUT /v1/sites/{id}`: what was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub id: String,
    pub version: u64,
    /// The event that carries it (the log's end, when nothing changed).
    pub seq: u64,
}

/// `DELETE /v1/sites/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub id: String,
    pub deleted: bool,
    pub seq: u64,
}

/// `POST /v1/purge`: exactly one of `urls`, `prefix`, `tags` and `all`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    pub site: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Mark stale (revalidate) instead of removing.
    #[serde(default)]
    pub soft: bool,
    /// Answer once every connected node applied it, or at the timeout.
    #[serde(default)]
    pub wait: bool,
    /// How long `wait` waits. Default: 5 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl PurgeRequest {
    /// What it purges, normalised as requests are keyed; the message says
    /// what is wrong otherwise.
    pub fn target(&self) -> Result<PurgeTarget, String> {
        let chosen = [!self.urls.is_empty(), self.prefix.is_some(), !self.tags.is_empty(), self.all];
        if chosen.iter().filter(|x| **x).count() != 1 {
            return Err("give exactly one of `urls`, `prefix`, `tags` or `all`".into());
        }
        let t = if !self.urls.is_empty() {
            PurgeTarget::Urls { urls: self.urls.clone() }
        } else if let Some(p) = &self.prefix {
            PurgeTarget::Prefix { prefix: p.clone() }
        } else if !self.tags.is_empty() {
            PurgeTarget::Tags { tags: self.tags.clone() }
        } else {
            PurgeTarget::All
        };
        t.normalized()
    }
}

/// A purge and who has applied it (`POST /v1/purge`, `GET /v1/purges/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeStatus {
    pub id: String,
    pub seq: u64,
    pub site: String,
    pub target: PurgeTarget,
    pub soft: bool,
    pub at_ms: u64,
    /// Nodes that applied it.
    pub acked: Vec<String>,
    /// Connected nodes that have not yet.
    pub pending: Vec<String>,
}

/// A node as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub role: Role,
    pub pop: Option<String>,
    /// Where it serves, `ip:port`.
    pub addrs: Vec<String>,
    /// Highest event sequence it has applied.
    pub acked_seq: u64,
    pub last_contact_ms: u64,
    /// Requests per second, as it last reported.
    #[serde(default)]
    pub load_rps: Option<u64>,
    /// Hits per thousand requests, as it last reported.
    #[serde(default)]
    pub hit_permille: Option<u16>,
    /// Why it is not serving as it should, as it last reported; empty when
    /// it is. A DNS server answers an edge with problems only when no PoP
    /// has an edge without.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The generation of the node's own credential it last opened its
    /// stream with; absent when it opened it with the node token the fleet
    /// shares (`[auth] shared_node_token`), so an operator sees which
    /// nodes still need their own before turning that off, and which took
    /// a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_generation: Option<u64>,
}

/// Full weight: a PoP gets every client it is nearest to.
pub const FULL_WEIGHT: u8 = 100;

/// `GET /v1/pops`, `PUT /v1/pops/{name}`: the share of its clients a PoP
/// keeps, set by an operator (a PoP never set has [`FULL_WEIGHT`]). At 0 it
/// is drained: DNS servers send its clients to the next nearest PoP; in
/// between, that share of client networks (the same networks every time)
/// stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopRecord {
    pub name: String,
    /// 0 (drained) to 100.
    pub weight: u8,
    /// Why, for the next operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub updated_ms: u64,
}

/// `PUT /v1/pops/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopWeight {
    pub weight: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/nodes`: a registry entry and how the node stands now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    #[serde(flatten)]
    pub node: NodeRecord,
    /// Its event stream is open.
    pub connected: bool,
    /// Events it has not applied yet.
    pub lag: u64,
    pub since_contact_ms: u64,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    /// The log's end.
    pub seq: u64,
}

/// Every error: a machine-readable word and a sentence, with its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub detail: String,
}

/// `GET /v1/events?…`: who is subscribing, from where in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamQuery {
    /// The last sequence the node applied.
    #[serde(default)]
    pub after: u64,
    pub node: String,
    pub role: Role,
    #[serde(default)]
    pub pop: Option<String>,
    /// Comma-separated `ip:port` addresses the node serves on.
    #[serde(default)]
    pub addrs: String,
    /// Send the sites' current certificates first
    /// ([`crate::StreamLine::Certificates`]): the node cannot open the keys
    /// of those it holds (its token changed since they were sealed).
    #[serde(default)]
    pub certificates: bool,
}

impl StreamQuery {
    /// The path and query string of the request.
    pub fn path_and_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("after", &self.after.to_string());
        q.append_pair("node", &self.node);
        q.append_pair("role", self.role.as_str());
        if let Some(p) = &self.pop {
            q.append_pair("pop", p);
        }
        q.append_pair("addrs", &self.addrs);
        if self.certificates {
            q.append_pair("certificates", "true");
        }
        format!("{}?{}", paths::EVENTS, q.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_request_names_one_target() {
        let base = PurgeRequest { site: "s".into(), ..PurgeRequest::default() };
        assert!(base.target().is_err(), "none");
        let all = PurgeRequest { all: true, ..base.clone() };
        assert_eq!(all.target(), Ok(PurgeTarget::All));
        let two = PurgeRequest { all: true, tags: vec!["t".into()], ..base.clone() };
        assert!(two.target().is_err());
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(json, r#"{"site":"s","all":true,"soft":false,"wait":false}"#);
        assert_eq!(serde_json::from_str::<PurgeRequest>(&json).unwrap(), all);
        assert!(serde_json::from_str::<PurgeRequest>(r#"{"site":"s","al":true}"#).is_err(), "unknown fields");
    }

    #[test]
    fn a_stream_query_is_encoded() {
        let q = StreamQuery {
            after: 7,
            node: "edge-1".into(),
            role: Role::Edge,
            pop: Some("fra".into()),
            addrs: "[::1]:80,127.0.0.1:80".into(),
            certificates: false,
        };
        assert_eq!(
            q.path_and_query(),
            "/v1/events?after=7&node=edge-1&role=edge&pop=fra&addrs=%5B%3A%3A1%5D%3A80%2C127.0.0.1%3A80"
        );
        let asking = StreamQuery { certificates: true, pop: None, addrs: String::new(), ..q };
        assert_eq!(asking.path_and_query(), "/v1/events?after=7&node=edge-1&role=edge&addrs=&certificates=true");
    }
}
