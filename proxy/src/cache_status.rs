//! `Cache-Status` (RFC 9211): how this node handled a request, with the
//! same names in metrics labels and access logs.
//!
//! Members are listed from the cache closest to the origin to the one
//! closest to the user (RFC 9211 §2), so a node appends its member to what
//! its upstream (a shield) sent on forwarded responses. Stored copies keep no
//! upstream member: on a hit, only this node handled the request.

use http::HeaderValue;
use outpost_config::coding::Coding;

use crate::policy::NotStored;
use crate::upstream::UpstreamErrorKind;

/// The outcome of one request, as named in `Cache-Status`, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fresh stored response.
    Hit,
    /// Stale response served while revalidating in the background.
    StaleWhileRevalidate,
    /// Stale response served because the upstream failed.
    StaleIfError,
    /// Stale response served because the upstream is unreachable and the
    /// node is partitioned from the control plane.
    StalePartitioned,
    /// Stored response revalidated with the upstream (304) and served.
    Revalidated,
    /// Nothing stored for the URL.
    UriMiss,
    /// The URL is stored, but not the variant this request selects.
    VaryMiss,
    /// A stored response could not be used (stale, purged) and was replaced.
    Expired,
    /// Not cacheable (method, request, response): forwarded.
    Pass,
    /// The node answered by itself: 400, 421, 416, redirects.
    Local,
    /// The upstream failed and nothing usable was stored.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::StaleWhileRevalidate => "stale-while-revalidate",
            Outcome::StaleIfError => "stale-if-error",
            Outcome::StalePartitioned => "stale-partitioned",
            Outcome::Revalidated => "revalidated",
            Outcome::UriMiss => "uri-miss",
            Outcome::VaryMiss => "vary-miss",
            Outcome::Expired => "expired",
            Outcome::Pass => "pass",
            Outcome::Local => "local",
            Outcome::Error => "error",
        }
    }

    /// Served from storage without waiting for the upstream.
    pub fn is_hit(self) -> bool {
        matches!(self, Outcome::Hit | Outcome::StaleWhileRevalidate | Outcome::StaleIfError | Outcome::StalePartitioned)
    }

    /// The `fwd` parameter: why the request went upstream.
    fn fwd(self) -> Option<&'static str> {
        match self {
            Outcome::UriMiss => Some("uri-miss"),
            Outcome::VaryMiss => Some("vary-miss"),
            Outcome::Expired | Outcome::Revalidated => Some("stale"),
            Outcome::StaleIfError | Outcome::StalePartitioned => Some("stale"),
            Outcome::Pass => Some("bypass"),
            Outcome::Error => Some("miss"),
            _ => None,
        }
    }
}

/// Why, in a word: the `detail=` of `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// The response was not stored, for this reason.
    NotStored(NotStored),
    /// A response that must not be shared, for no stated reason.
    Uncacheable,
    /// The method is never cached.
    Method,
    /// How the upstream failed.
    Upstream(UpstreamErrorKind),
    /// This node failed.
    Internal,
    /// Stored with a lifetime guessed from `Last-Modified`.
    Heuristic,
}

impl Detail {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Detail::NotStored(r) => r.as_str(),
            Detail::Uncacheable => "uncacheable",
            Detail::Method => "method",
            Detail::Upstream(k) => k.as_str(),
            Detail::Internal => "internal",
            Detail::Heuristic => "heuristic",
        }
    }
}

/// One node's `Cache-Status` member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheStatus {
    pub outcome: Outcome,
    pub fwd_status: Option<u16>,
    pub stored: bool,
    pub ttl: Option<i64>,
    /// Waited for another request's fetch instead of fetching.
    pub collapsed: bool,
    /// Why, in a word: a not-stored reason, a stale reason, an error kind.
    pub detail: Option<Detail>,
    /// Time this request waited for the upstream's response head (not in
    /// the header; for the access log).
    pub upstream_wait: Option<std::time::Duration>,
    /// Seconds the node has been cut off from its control plane.
    pub partitioned: Option<u64>,
    /// The content coding of the body sent, when codings were negotiated,
    /// and whether this node made it from the stored coding.
    pub coding: Option<(Coding, bool)>,
}

impl CacheStatus {
    pub(crate) fn new(outcome: Outcome) -> CacheStatus {
        CacheStatus {
            outcome,
            fwd_status: None,
            stored: false,
            ttl: None,
            collapsed: false,
            detail: None,
            upstream_wait: None,
            partitioned: None,
            coding: None,
        }
    }

    /// The member for `node`, appended to `upstream`'s list when given.
    pub(crate) fn header(&self, node: &str, upstream: Option<&HeaderValue>) -> HeaderValue {
        self.with_bytes(node, upstream, HeaderValue::from_bytes).unwrap_or_else(|_| HeaderValue::from_static("outpost"))
    }

    /// [`CacheStatus::header`]'s bytes, lent to `f`: written on the stack
    /// for the usual member, on the heap for a long list.
    pub(crate) fn with_bytes<T>(&self, node: &str, upstream: Option<&HeaderValue>, f: impl FnOnce(&[u8]) -> T) -> T {
        let mut line = Line::new();
        self.write(node, upstream, &mut line);
        f(line.bytes())
    }

    fn write(&self, node: &str, upstream: Option<&HeaderValue>, s: &mut Line) {
        if let Some(prev) = upstream.and_then(|v| v.to_str().ok()).filter(|v| !v.trim().is_empty()) {
            s.put(prev.as_bytes());
            s.put(b", ");
        }
        // An sf-token starts with a letter; anything else is quoted.
        if node.starts_with(|c: char| c.is_ascii_alphabetic()) {
            s.put(node.as_bytes());
        } else {
            s.put(b"\"");
            s.put(node.as_bytes());
            s.put(b"\"");
        }
        if self.outcome.is_hit() {
            s.put(b"; hit");
        }
        if let Some(fwd) = self.outcome.fwd() {
            s.put(b"; fwd=");
            s.put(fwd.as_bytes());
        }
        if let Some(code) = self.fwd_status {
            s.put(b"; fwd-status=");
            s.number(code.into());
        }
        if self.stored {
            s.put(b"; stored");
        }
        if self.collapsed {
            s.put(b"; collapsed");
        }
        if let Some(ttl) = self.ttl {
            s.put(if ttl < 0 { b"; ttl=-" } else { b"; ttl=" });
            s.number(ttl.unsigned_abs());
        }
        let detail = match self.outcome {
            Outcome::StaleWhileRevalidate
            | Outcome::StaleIfError
            | Outcome::StalePartitioned
            | Outcome::Revalidated => Some(self.detail.map_or(self.outcome.as_str(), Detail::as_str)),
            _ => self.detail.map(Detail::as_str),
        };
        if let Some(d) = detail {
            s.put(b"; detail=");
            s.put(d.as_bytes());
        }
        if let Some(p) = self.partitioned {
            s.put(b"; partitioned=");
            s.number(p);
        }
        if let Some((coding, made)) = self.coding {
            s.put(b"; coding=");
            s.put(coding.token().as_bytes());
            if made {
                s.put(b"; transformed");
            }
        }
    }
}

/// A member's bytes: on the stack while they fit, then on the heap.
struct Line {
    buf: [u8; 192],
    len: usize,
    spilled: Vec<u8>,
}

impl Line {
    fn new() -> Line {
        Line { buf: [0; 192], len: 0, spilled: Vec::new() }
    }

    fn put(&mut self, b: &[u8]) {
        if self.spilled.is_empty() {
            let end = self.len + b.len();
            if let Some(room) = self.buf.get_mut(self.len..end) {
                room.copy_from_slice(b);
                self.len = end;
                return;
            }
            self.spilled.extend_from_slice(&self.buf[..self.len]);
        }
        self.spilled.extend_from_slice(b);
    }

    fn number(&mut self, n: u64) {
        self.put(crate::headers::digits(n, &mut [0; 20]).as_bytes());
    }

    fn bytes(&self) -> &[u8] {
        if self.spilled.is_empty() { &self.buf[..self.len] } else { &self.spilled }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_after_a_long_list_is_whole() {
        let long: String = (0..20).map(|i| format!("shield-{i}; fwd=uri-miss; ttl=60, ")).collect();
        let upstream = HeaderValue::from_str(long.trim_end_matches(", ")).unwrap();
        assert!(upstream.len() > 192);
        let hit = CacheStatus { ttl: Some(55), ..CacheStatus::new(Outcome::Hit) };
        let value = hit.header("edge-fra", Some(&upstream));
        assert_eq!(value, format!("{}, edge-fra; hit; ttl=55", upstream.to_str().unwrap()).as_str());
    }

    #[test]
    fn members_follow_rfc_9211() {
        let hit = CacheStatus { ttl: Some(55), ..CacheStatus::new(Outcome::Hit) };
        assert_eq!(hit.header("edge-fra", None), "edge-fra; hit; ttl=55");
        let miss =
            CacheStatus { fwd_status: Some(200), stored: true, ttl: Some(60), ..CacheStatus::new(Outcome::UriMiss) };
        let shield = HeaderValue::from_static("shield-1; fwd=uri-miss; fwd-status=200; stored; ttl=60");
        assert_eq!(
            miss.header("edge-fra", Some(&shield)),
            "shield-1; fwd=uri-miss; fwd-status=200; stored; ttl=60, edge-fra; fwd=uri-miss; fwd-status=200; stored; ttl=60"
        );
        let stale = CacheStatus { fwd_status: Some(503), ttl: Some(-30), ..CacheStatus::new(Outcome::StaleIfError) };
        assert_eq!(stale.header("e", None), "e; hit; fwd=stale; fwd-status=503; ttl=-30; detail=stale-if-error");
        let pass = CacheStatus {
            detail: Some(Detail::NotStored(NotStored::Private)),
            fwd_status: Some(200),
            ..CacheStatus::new(Outcome::Pass)
        };
        assert_eq!(pass.header("1node", None), "\"1node\"; fwd=bypass; fwd-status=200; detail=private");
        let collapsed = CacheStatus { collapsed: true, ..CacheStatus::new(Outcome::UriMiss) };
        assert_eq!(collapsed.header("e", None), "e; fwd=uri-miss; collapsed");
        let made = CacheStatus { coding: Some((Coding::Br, true)), ..CacheStatus::new(Outcome::Hit) };
        assert_eq!(made.header("e", None), "e; hit; coding=br; transformed");
        let passed_on = CacheStatus { coding: Some((Coding::Gzip, false)), ..CacheStatus::new(Outcome::Hit) };
        assert_eq!(passed_on.header("e", None), "e; hit; coding=gzip");
    }
}
