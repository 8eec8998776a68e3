//! Control-plane events: the ordered log every node follows.
//!
//! Sites travel as their TOML text so every node validates them with the same
//! parser the control plane used. Events are JSON on the wire (one per line in
//! the `/v1/events` stream) and in the control plane's store.

use serde::{Deserialize, Serialize};

use crate::path::{encode_non_ascii, normalize_path};

/// One entry of the log, with its place in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Starts at 1 and increases by one per event, with no gaps.
    pub seq: u64,
    /// When the control plane accepted it, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    SiteUpserted {
        site_id: String,
        version: u64,
        toml: String,
    },
    SiteDeleted {
        site_id: String,
    },
    Purge(Purge),
    /// A certificate the control plane obtained by ACME for a site with
    /// `[tls] acme = true`; it replaces the site's previous one.
    Certificate {
        site_id: String,
        certificate: IssuedCertificate,
    },
    /// An HTTP-01 challenge of a running ACME order: every node answers
    /// `GET /.well-known/acme-challenge/{token}` for the site's hosts with
    /// `key_authorization` (public, not a secret) until `until_ms`.
    AcmeChallenge {
        site_id: String,
        token: String,
        key_authorization: String,
        until_ms: u64,
    },
}

impl Event {
    /// The site an event is about.
    pub fn site_id(&self) -> &str {
        match self {
            Event::SiteUpserted { site_id, .. }
            | Event::SiteDeleted { site_id }
            | Event::Certificate { site_id, .. }
            | Event::AcmeChallenge { site_id, .. } => site_id,
            Event::Purge(p) => &p.site_id,
        }
    }
}

/// A certificate as the control plane stores and sends it: the chain in
/// PEM, its private key sealed (AES-256-GCM under a key derived from the
/// node token), so neither the store nor the wire holds it in clear.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// The leaf certificate, then its intermediates.
    pub chain_pem: String,
    /// The sealed PKCS#8 private key, base64.
    pub sealed_key: String,
    /// The DNS names it covers, as ordered.
    pub names: Vec<String>,
    /// Its validity, milliseconds since the Unix epoch.
    pub not_before_ms: u64,
    pub not_after_ms: u64,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("names", &self.names)
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

impl IssuedCertificate {
    /// When a third of its lifetime is left: time to renew.
    pub fn renew_at_ms(&self) -> u64 {
        let life = self.not_after_ms.saturating_sub(self.not_before_ms);
        self.not_after_ms.saturating_sub(life / 3)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purge {
    /// Unique per purge; `GET /v1/purges/{id}` reports its acknowledgements.
    pub id: String,
    pub site_id: String,
    pub target: PurgeTarget,
    /// Mark matching objects stale (revalidate, still usable under
    /// stale-if-error) instead of invalid.
    #[serde(default)]
    pub soft: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum PurgeTarget {
    /// Paths with their query, such as `/img/a.png?w=200`; every variant goes.
    Urls {
        urls: Vec<String>,
    },
    /// Every path that starts with this.
    Prefix {
        prefix: String,
    },
    /// Every object whose `Surrogate-Key` / `Cache-Tag` names one of these.
    Tags {
        tags: Vec<String>,
    },
    All,
}

/// One line of the `/v1/events` stream (JSON lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamLine {
    /// The next event of the log.
    Event { record: EventRecord },
    /// The node was further behind than the log reaches (or ahead of it: a
    /// log restored from a backup): the whole site set as of `seq`. The
    /// node replaces its sites and soft-purges everything it stored
    /// before, then applies `purges`: the hard ones logged after the
    /// sequence it asked from, which a soft purge would otherwise let a
    /// 304 or stale-if-error serve again.
    Snapshot {
        seq: u64,
        sites: Vec<SiteSnapshot>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        purges: Vec<Purge>,
    },
    /// The sites' current certificates, by site id, sent first to a node
    /// that asked (`certificates` in its query). They replace the ones it
    /// holds; events after them go on as before.
    Certificates { certificates: std::collections::BTreeMap<String, IssuedCertificate> },
    /// The node's credential was rotated with a hand-over
    /// ([`crate::api::RotateQuery::hand_over`]): this is its new one, the
    /// only line of a stream opened with the credential before. The node
    /// writes it to its token file and connects again with it.
    Credential { credential: String },
    /// Sent every couple of seconds so a dead link is noticed. `stale`: the
    /// replica sending it has lost its store's quorum, so what it knows may
    /// be behind; a node that can follows another replica.
    Heartbeat {
        seq: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stale: bool,
    },
}

/// A site in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteSnapshot {
    pub id: String,
    pub version: u64,
    pub toml: String,
    /// The sequence of the event that created the site
    /// ([`crate::api::SiteRecord::created_seq`]); 0 where unknown. A node
    /// holding the id under another creation drops the old site's copies.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created_seq: u64,
    /// The site's ACME certificate, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<IssuedCertificate>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A node's acknowledgement: every event up to `seq` is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub node: String,
    pub seq: u64,
    /// Requests per second the node served since its previous
    /// acknowledgement: its load, for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_rps: Option<u64>,
    /// Of every thousand requests since its previous acknowledgement, how
    /// many it answered from its cache; `None` when it answered none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hit_permille: Option<u16>,
    /// Why the node is not serving as it should (every shield down, its
    /// cache disk full), empty when it is; `None` from a node that does
    /// not say, which leaves what the registry knew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
}

/// Most problems one acknowledgement may report, and the longest each may be.
pub const MAX_PROBLEMS: usize = 8;
pub const MAX_PROBLEM_LEN: usize = 200;

/// Most URLs or tags in one purge: bigger batches are split by the client.
pub const MAX_PURGE_ITEMS: usize = 1_000;

impl PurgeTarget {
    /// Checks a purge target an API client sent; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        self.normalized().map(drop)
    }

    /// The target with every URL and prefix written as requests are keyed
    /// (non-ASCII percent-encoded, escapes upper-cased, dot segments
    /// removed), so `/café` purges what `/caf%C3%A9` stored. A URL or
    /// prefix no request can have (`/a%zz`) is refused.
    pub fn normalized(&self) -> Result<PurgeTarget, String> {
        let check_list = |what: &str, items: &[String]| {
            if items.is_empty() {
                return Err(format!("a purge by {what} needs at least one {what}"));
            }
            if items.len() > MAX_PURGE_ITEMS {
                return Err(format!("at most {MAX_PURGE_ITEMS} {what}s per purge, found {}", items.len()));
            }
            Ok(())
        };
        match self {
            PurgeTarget::Urls { urls } => {
                check_list("url", urls)?;
                let urls = urls.iter().map(|u| purge_url(u)).collect::<Result<_, _>>()?;
                Ok(PurgeTarget::Urls { urls })
            }
            PurgeTarget::Prefix { prefix } => {
                if !prefix.starts_with('/') {
                    return Err(format!("a purge prefix is a path starting with `/`, found `{prefix}`"));
                }
                if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) || prefix.contains(['?', '#']) {
                    return Err(format!("purge prefix `{prefix}` must be a path, without spaces, query or fragment"));
                }
                let prefix = normalize_path(&encode_non_ascii(prefix))
                    .map_err(|e| format!("purge prefix `{prefix}` can match no request: {e}"))?;
                Ok(PurgeTarget::Prefix { prefix })
            }
            PurgeTarget::Tags { tags } => {
                check_list("tag", tags)?;
                match tags.iter().find(|t| t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control())) {
                    Some(t) => Err(format!("tag `{t}` must be non-empty, without spaces")),
                    None => Ok(self.clone()),
                }
            }
            PurgeTarget::All => Ok(PurgeTarget::All),
        }
    }
}

/// A purge URL as requests are keyed: its normalised path, and its query
/// with non-ASCII percent-encoded (the site's query rules apply at each
/// node).
pub fn purge_url(url: &str) -> Result<String, String> {
    let raw = purge_path(url)?;
    let (path, query) = raw.split_once('?').map_or((&*raw, None), |(p, q)| (p, Some(q)));
    let path =
        normalize_path(&encode_non_ascii(path)).map_err(|e| format!("purge url `{url}` can match no request: {e}"))?;
    Ok(match query {
        Some(q) => format!("{path}?{}", encode_non_ascii(q)),
        None => path,
    })
}

/// The path and query a purge URL names. Accepts `/a?b` or a full
/// `https://host/a?b` (the host is ignored: the site is named separately).
/// A full URL's host ends at its first `/`, `?` or `#`: `https://h?x=/a`
/// names `/?x=/a`, not `/a`.
pub fn purge_path(url: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    use std::borrow::Cow;
    let path = if url.starts_with('/') {
        Cow::Borrowed(url)
    } else if let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) {
        match rest.find(['/', '?', '#']) {
            Some(i) if rest[i..].starts_with('/') => Cow::Borrowed(&rest[i..]),
            Some(i) => Cow::Owned(format!("/{}", &rest[i..])),
            None => Cow::Borrowed("/"),
        }
    } else {
        return Err(format!("purge url `{url}` must be a path starting with `/` or an http(s) URL"));
    };
    if path.contains('#') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("purge url `{url}` must not contain spaces or a fragment"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_json() {
        let events = [
            Event::SiteUpserted { site_id: "a".into(), version: 3, toml: "[site]\n".into() },
            Event::SiteDeleted { site_id: "a".into() },
            Event::Purge(Purge {
                id: "p1".into(),
                site_id: "a".into(),
                target: PurgeTarget::Tags { tags: vec!["t1".into()] },
                soft: true,
            }),
            Event::Purge(Purge { id: "p2".into(), site_id: "a".into(), target: PurgeTarget::All, soft: false }),
        ];
        for (i, event) in events.into_iter().enumerate() {
            let rec = EventRecord { seq: i as u64 + 1, at_ms: 1_700_000_000_000, event };
            let json = serde_json::to_string(&rec).unwrap();
            assert_eq!(serde_json::from_str::<EventRecord>(&json).unwrap(), rec);
        }
        let wire = r#"{"seq":9,"at_ms":1,"event":{"type":"purge","id":"x","site_id":"s","target":{"by":"prefix","prefix":"/img/"}}}"#;
        let rec: EventRecord = serde_json::from_str(wire).unwrap();
        assert_eq!(rec.event.site_id(), "s");
        let Event::Purge(p) = rec.event else { panic!("not a purge") };
        assert!(!p.soft, "soft defaults to false");
        assert_eq!(p.target, PurgeTarget::Prefix { prefix: "/img/".into() });
    }

    #[test]
    fn purge_targets_are_validated() {
        assert!(PurgeTarget::Urls { urls: vec![] }.validate().is_err());
        assert!(PurgeTarget::Urls { urls: vec!["img/a".into()] }.validate().is_err());
        assert!(PurgeTarget::Urls { urls: vec!["/a b".into()] }.validate().is_err());
        assert!(PurgeTarget::Urls { urls: vec!["/a?x=1".into(), "https://h.test/b".into()] }.validate().is_ok());
        assert!(PurgeTarget::Prefix { prefix: "img".into() }.validate().is_err());
        assert!(PurgeTarget::Tags { tags: vec!["".into()] }.validate().is_err());
        assert!(PurgeTarget::Tags { tags: vec!["x".into(); MAX_PURGE_ITEMS + 1] }.validate().is_err());
        assert!(PurgeTarget::All.validate().is_ok());
        assert_eq!(purge_path("https://h.test/b?c").as_deref(), Ok("/b?c"));
        // The host ends at the first `/`, `?` or `#`.
        assert_eq!(purge_path("https://h.test?ref=/checkout").as_deref(), Ok("/?ref=/checkout"));
        assert_eq!(purge_path("https://h.test?x=1").as_deref(), Ok("/?x=1"));
        assert!(purge_path("https://h.test#f").is_err(), "a fragment is refused wherever it is");
        assert!(purge_path("https://h.test/a#f").is_err());
        // Written as requests are keyed; what no request can be is refused.
        let urls = |u: &[&str]| PurgeTarget::Urls { urls: u.iter().map(|s| s.to_string()).collect() }.normalized();
        assert_eq!(
            urls(&["/café", "/caf%c3%a9", "/a/./b/../c?q=ü", "https://h.test/%7euser"]),
            Ok(PurgeTarget::Urls {
                urls: vec!["/caf%C3%A9".into(), "/caf%C3%A9".into(), "/a/c?q=%C3%BC".into(), "/~user".into()]
            })
        );
        for bad in ["/a%zz", "/a%4", "/a%00"] {
            assert!(urls(&[bad]).unwrap_err().contains("can match no request"), "{bad}");
        }
        let prefix = |p: &str| PurgeTarget::Prefix { prefix: p.into() }.normalized();
        assert_eq!(prefix("/bilder/größe/"), Ok(PurgeTarget::Prefix { prefix: "/bilder/gr%C3%B6%C3%9Fe/".into() }));
        assert!(prefix("/a%zz").is_err() && prefix("/a b").is_err() && prefix("/a?x").is_err());
        assert_eq!(purge_path("http://h.test").as_deref(), Ok("/"));
    }
}
