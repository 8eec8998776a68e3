//! Requests to the next tier, built from a client's: its fields less what
//! must not go upstream, plus this node's own (`Via`, `CDN-Loop`,
//! `Forwarded`, `X-Forwarded-For`, `X-Forwarded-Proto`). The `Host` sent is
//! chosen per target when the request is sent ([`super::Upstream`]).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use outpost_config::coding::Coding;
use outpost_config::{Site, WITHHELD_REQUEST_HEADERS};
use outpost_net::HeaderLookup;

use super::ReqBody;
use crate::headers::{CDN_LOOP, FORWARDED, OUTPOST_SEQ, OUTPOST_SEQ_AGE, X_FORWARDED_FOR, X_FORWARDED_PROTO};
use crate::policy::is_hop_by_hop;

/// Request fields that describe the client's own message, never copied
/// upstream: the upstream request is framed by its own body
/// (`Content-Length` is set from the body actually sent), and
/// `Expect: 100-continue` was answered to the client by this node. A copied
/// `Content-Length` on a request sent without its body would make the
/// upstream read the next request on the connection as this one's body.
const MESSAGE_FIELDS: [HeaderName; 3] = [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::EXPECT];

/// Request fields that a cacheable fetch does not forward: the cache asks
/// for the whole current object and answers ranges, conditionals and the
/// client's own cache preferences itself. `Request-Range` is the old
/// name some servers still read as `Range`.
const NOT_FORWARDED_ON_FETCH: [HeaderName; 9] = [
    header::RANGE,
    HeaderName::from_static("request-range"),
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::CACHE_CONTROL,
    header::PRAGMA,
];

/// How this node marks the requests it sends upstream.
#[derive(Debug)]
pub struct Hop {
    pub node: Arc<str>,
    /// This node's `CDN-Loop` member (RFC 8586): its name and a secret made
    /// at start, so a request carrying it really passed this node.
    pub loop_member: String,
}

impl Hop {
    pub fn new(node: &str) -> Hop {
        Hop { node: Arc::from(node), loop_member: format!("{node}; t={}", random_hex(16)) }
    }

    /// Did this request already pass this node? Only the member this node
    /// added, with its secret, counts: a client's `Via` or `CDN-Loop` naming
    /// our nodes proves nothing.
    pub fn looped(&self, headers: &impl HeaderLookup) -> bool {
        headers
            .get_all(&CDN_LOOP)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|m| m.trim() == self.loop_member)
    }
}

/// `bytes` random bytes from the system's generator, in hex.
fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if read.is_err() {
        // No /dev/urandom: std's per-process random hash keys stand in.
        use std::hash::{BuildHasher, RandomState};
        for (i, b) in buf.iter_mut().enumerate() {
            *b = RandomState::new().hash_one(i) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The client's side of an upstream request.
#[derive(Debug, Clone)]
pub struct FromClient {
    pub headers: HeaderMap,
    pub ip: Option<IpAddr>,
    /// `X-Forwarded-Proto` to send (see the request path).
    pub proto: Option<&'static str>,
    /// The request came from an edge of ours (this node is a shield): the
    /// `Forwarded` list it carries is that edge's, passed on. A client's
    /// own is withheld at the edge, as the other override fields are.
    pub from_edge: bool,
}

/// Cookies sent as several fields (HTTP/2 and HTTP/3 clients send each
/// cookie as a field of its own) made one, joined with `; ` as RFC 9113
/// §8.2.3 asks of a request passed on in HTTP/1.1: origins that read the
/// first `Cookie` line alone, or join lines with `, `, would otherwise see
/// a broken session.
fn join_cookies(h: &mut HeaderMap) {
    let mut crumbs = h.get_all(header::COOKIE).iter();
    if crumbs.nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for crumb in h.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Each crumb was a valid field value, and so is their join.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

/// Headers for an upstream request: the client's, less hop-by-hop and
/// framing fields and (on a cacheable fetch) what the cache answers itself,
/// plus ours.
pub fn forward_headers(hop: &Hop, site: &Site, from: &FromClient, cacheable: bool) -> HeaderMap {
    let client = &from.headers;
    let mut h = HeaderMap::with_capacity(client.len() + 2);
    for (name, value) in client {
        if is_hop_by_hop(name, client)
            || MESSAGE_FIELDS.contains(name)
            || name == X_FORWARDED_PROTO
            || name == OUTPOST_SEQ
            || name == OUTPOST_SEQ_AGE
            || (cacheable && NOT_FORWARDED_ON_FETCH.contains(name))
            || (WITHHELD_REQUEST_HEADERS.contains(&name.as_str())
                && !site.headers.forward.contains(name)
                && !(from.from_edge && name == FORWARDED))
        {
            continue;
        }
        h.append(name.clone(), value.clone());
    }
    join_cookies(&mut h);
    let node = &*hop.node;
    extend_list(&mut h, header::VIA, &format!("1.1 {node}"));
    extend_list(&mut h, CDN_LOOP, &hop.loop_member);
    if let Some(p) = from.proto {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(p));
    }
    if let Some(ip) = from.ip {
        // RFC 7239: IPv6 addresses are quoted and bracketed.
        let hop = match ip {
            IpAddr::V4(v4) => format!("for={v4};by={node}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";by={node}"),
        };
        extend_list(&mut h, FORWARDED, &hop);
        extend_list(&mut h, X_FORWARDED_FOR, &ip.to_string());
    }
    h
}

/// Appends `item` to a comma-separated list header, as one line.
fn extend_list(h: &mut HeaderMap, name: HeaderName, item: &str) {
    let prev: Vec<&str> = h.get_all(&name).iter().filter_map(|v| v.to_str().ok()).collect();
    let value = if prev.is_empty() { item.to_string() } else { format!("{}, {item}", prev.join(", ")) };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(name, v);
    }
}

/// A cacheable fetch of `path`: GET, no body, conditional on `validators`
/// (a stored copy's headers) when revalidating. `coding`: the one coding
/// asked for in place of the client's `Accept-Encoding`, when the site
/// negotiates codings (the response is keyed by it).
pub fn fetch(
    hop: &Hop,
    site: &Site,
    from: &FromClient,
    path: &str,
    validators: Option<&HeaderMap>,
    coding: Option<Coding>,
) -> Request<ReqBody> {
    let mut headers = forward_headers(hop, site, from, true);
    if let Some(c) = coding {
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(c.token()));
    }
    if let Some(stored) = validators {
        if let Some(etag) = stored.get(header::ETAG) {
            headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = stored.get(header::LAST_MODIFIED) {
            headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }
    let mut req = Request::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    *req.headers_mut() = headers;
    req
}

/// Calls `pass` with each interim response (1xx: `103 Early Hints`, say)
/// the upstream sends before its answer to `req`: its status and fields,
/// less the hop-by-hop ones. They are never stored.
pub fn on_interim(req: &mut Request<ReqBody>, pass: impl Fn(StatusCode, HeaderMap) + Send + Sync + 'static) {
    let interim = OnInterim(Arc::new(pass));
    // HTTP/1.1 upstreams: hyper's client reports them here.
    let for_hyper = interim.clone();
    hyper::ext::on_informational(req, move |r| for_hyper.pass(r.status(), r.headers()));
    // HTTP/2 upstreams: the client there reads the request's own.
    req.extensions_mut().insert(interim);
}

/// Where a request's interim responses go ([`on_interim`]).
#[derive(Clone)]
pub(crate) struct OnInterim(Arc<dyn Fn(StatusCode, HeaderMap) + Send + Sync>);

impl OnInterim {
    /// Hands on one interim response, less its hop-by-hop fields.
    pub(crate) fn pass(&self, status: StatusCode, all: &HeaderMap) {
        let mut fields = HeaderMap::with_capacity(all.len());
        for (name, value) in all.iter().filter(|(name, _)| !is_hop_by_hop(name, all)) {
            fields.append(name.clone(), value.clone());
        }
        (self.0)(status, fields);
    }
}

/// A request forwarded with its body (`length`: the length the client
/// declared and hyper checked; without one the body goes chunked).
pub fn forward(
    hop: &Hop,
    site: &Site,
    from: &FromClient,
    method: &Method,
    target: &str,
    body: ReqBody,
    length: Option<u64>,
) -> Request<ReqBody> {
    let mut up = Request::new(body);
    *up.method_mut() = method.clone();
    *up.uri_mut() = target.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    *up.headers_mut() = forward_headers(hop, site, from, false);
    if let Some(n) = length {
        up.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    up
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(extra: &str) -> Site {
        format!("[site]\nid = \"a\"\nhosts = [\"a.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:1\"\n{extra}")
            .parse()
            .unwrap()
    }

    fn from(pairs: &[(&'static str, &'static str)], proto: Option<&'static str>) -> FromClient {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(*k, HeaderValue::from_static(v));
        }
        FromClient { headers, ip: None, proto, from_edge: false }
    }

    #[test]
    fn the_clients_framing_never_goes_upstream() {
        let f = from(
            &[
                ("content-length", "10"),
                ("transfer-encoding", "chunked"),
                ("expect", "100-continue"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("accept", "*/*"),
                ("range", "bytes=0-1"),
            ],
            None,
        );
        for cacheable in [true, false] {
            let up = forward_headers(&Hop::new("edge-1"), &site(""), &f, cacheable);
            for name in ["content-length", "transfer-encoding", "expect", "connection", "x-hop"] {
                assert!(!up.contains_key(name), "{name} forwarded (cacheable: {cacheable})");
            }
            assert_eq!(up["accept"], "*/*");
            assert_eq!(up.contains_key("range"), !cacheable, "a fetch asks for the whole object");
            assert_eq!(up["via"], "1.1 edge-1");
        }
    }

    #[test]
    fn override_fields_are_withheld_unless_the_site_forwards_them() {
        let mut f = from(&[], Some("https"));
        for name in WITHHELD_REQUEST_HEADERS {
            f.headers.insert(HeaderName::from_static(name), HeaderValue::from_static("evil.test"));
        }
        f.headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("gopher"));
        let up = forward_headers(&Hop::new("edge-1"), &site(""), &f, true);
        for name in WITHHELD_REQUEST_HEADERS {
            assert!(!up.contains_key(name), "{name} forwarded");
        }
        assert_eq!(up[X_FORWARDED_PROTO], "https", "the client's own value is replaced");
        f.proto = None;
        let up =
            forward_headers(&Hop::new("shield-1"), &site("[headers]\nforward = [\"x-forwarded-host\"]\n"), &f, true);
        assert_eq!(up["x-forwarded-host"], "evil.test");
        assert!(!up.contains_key("x-original-url"));
        assert!(!up.contains_key(X_FORWARDED_PROTO), "a shield passes on only http or https");
    }

    #[test]
    fn an_edge_sends_its_own_forwarded_element_and_a_shield_passes_on_its_edges() {
        let mut f = from(&[("forwarded", "host=evil.test;proto=http"), ("x-forwarded-for", "10.9.9.9")], Some("https"));
        f.ip = Some("192.0.2.7".parse().unwrap());
        let up = forward_headers(&Hop::new("edge-1"), &site(""), &f, true);
        assert_eq!(up[FORWARDED], "for=192.0.2.7;by=edge-1", "the client's host= never reaches the origin");
        assert_eq!(up[X_FORWARDED_FOR], "10.9.9.9, 192.0.2.7", "appended, as CDNs do: the last entry is ours");
        // At a shield, the edge's element is passed on and the shield's
        // appended.
        let mut at_shield = from(&[("forwarded", "for=192.0.2.7;by=edge-1")], None);
        (at_shield.ip, at_shield.from_edge) = (Some("10.0.0.2".parse().unwrap()), true);
        let up = forward_headers(&Hop::new("shield-1"), &site(""), &at_shield, true);
        assert_eq!(up[FORWARDED], "for=192.0.2.7;by=edge-1, for=10.0.0.2;by=shield-1");
        // A site that forwards the client's `Forwarded` keys it too.
        let up = forward_headers(&Hop::new("edge-1"), &site("[headers]\nforward = [\"forwarded\"]\n"), &f, true);
        assert_eq!(up[FORWARDED], "host=evil.test;proto=http, for=192.0.2.7;by=edge-1");
    }

    #[test]
    fn loops_are_recognised_by_this_nodes_secret_only() {
        let hop = Hop::new("shield-1");
        let f = from(&[("via", "1.1 edge-fra, 1.1 shield-1"), ("cdn-loop", "shield-1, shield-1; t=guess")], None);
        assert!(!hop.looped(&f.headers), "a client's Via or CDN-Loop proves nothing");
        let up = forward_headers(&hop, &site(""), &f, true);
        assert!(hop.looped(&up), "what this node sent upstream, back again");
        assert!(!Hop::new("shield-1").looped(&up), "another process's secret differs");
        assert_eq!(up[header::VIA], "1.1 edge-fra, 1.1 shield-1, 1.1 shield-1");
    }
}
