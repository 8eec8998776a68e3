//! A site: the hosts it answers for, its origins and how its objects are cached.
//!
//! Written by operators as TOML (see the repository's `config/example.site.toml`), uploaded to
//! the control plane as text and parsed again by every node, so the text is
//! the unit of exchange and [`Site::parse`] is the one way in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use toml::Spanned;

use crate::decode::{ByteSize, Decode, Table, Val, parse_str, string};
use crate::diag::{ConfigError, Located, Sink, base_dir};
use crate::schema::FileKind;
use crate::units::{HostPattern, PathPattern};

/// The longest TTL any rule may set. Beyond a year a "cached" object is really
/// a static file, and RFC 9111 treats `Expires` more than a year out as a
/// configuration mistake.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Freshness for a response that says nothing about it, when the site does not
/// choose. Short, so an origin that forgot its headers is not pinned for long.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Objects larger than this are streamed through uncached unless the site says.
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 1 << 30;
/// How long an edge may serve a stale object while it revalidates in the
/// background, when the origin sends no `stale-while-revalidate`.
pub const DEFAULT_STALE_WHILE_REVALIDATE: Duration = Duration::ZERO;
/// How long a stale object may stand in for an origin error when the origin
/// sends no `stale-if-error`: a day rides out most outages.
pub const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(24 * 3600);
/// How long a node cut off from the control plane trusts its cached objects
/// before it revalidates every hit.
pub const DEFAULT_PARTITION_GRACE: Duration = Duration::from_secs(300);
/// Connecting to an origin on a healthy network takes milliseconds; two
/// seconds means it is down or unreachable.
pub const DEFAULT_ORIGIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for an origin's response headers.
pub const DEFAULT_ORIGIN_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests one shield sends one origin at once; more wait in a queue.
pub const DEFAULT_ORIGIN_MAX_CONNECTIONS: u32 = 64;
/// Time between an origin's health checks.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Time one health check may take.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive passed checks that bring a down origin back: one lucky answer
/// is not enough.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Consecutive failed checks that take an origin out: one lost packet is not
/// enough.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

/// A site as every node uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// A DNS label: the site is also `<id>.<zone>` in the CDN's DNS zone.
    pub id: String,
    pub hosts: Vec<Located<HostPattern>>,
    /// Plain-HTTP clients get a 308 to the HTTPS URL. Default: `false`.
    pub https_only: bool,
    /// Edges may go to the origin directly when every shield is down.
    /// Default: `true`.
    pub allow_direct: bool,
    /// At least one.
    pub origins: Vec<Origin>,
    /// Default: [`CacheRules::default`].
    pub cache: CacheRules,
    /// Default: [`StalePolicy::default`].
    pub stale: StalePolicy,
    /// Default: none (no certificate of its own).
    pub tls: Option<SiteTls>,
    /// Default: no changes.
    pub headers: HeaderRules,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// `http://` or `https://` with a host and port, no path.
    pub url: Uri,
    /// Host header sent to the origin. Default: none (the client's).
    pub host: Option<String>,
    /// Default: 1.
    pub weight: u32,
    /// Default: [`DEFAULT_ORIGIN_CONNECT_TIMEOUT`] (2s).
    pub connect_timeout: Duration,
    /// Default: [`DEFAULT_ORIGIN_RESPONSE_TIMEOUT`] (30s).
    pub response_timeout: Duration,
    /// Default: [`DEFAULT_ORIGIN_MAX_CONNECTIONS`] (64).
    pub max_connections: u32,
    /// Default: none (only failing requests take the origin out).
    pub health: Option<HealthCheck>,
    /// Trusted besides the public roots when the url is `https`: a private
    /// CA. Default: none.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Required.
    pub path: String,
    /// Default: [`DEFAULT_HEALTH_INTERVAL`] (5s).
    pub interval: Duration,
    /// Default: [`DEFAULT_HEALTH_TIMEOUT`] (2s).
    pub timeout: Duration,
    /// Consecutive successes that bring a down origin back. Default:
    /// [`DEFAULT_HEALTHY_THRESHOLD`] (2).
    pub healthy_threshold: u32,
    /// Consecutive failures that take an origin out. Default:
    /// [`DEFAULT_UNHEALTHY_THRESHOLD`] (3).
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryMode {
    /// The query string as the client sent it.
    Keep,
    /// Parameters sorted by name, so `?a=1&b=2` and `?b=2&a=1` share an object.
    Sort,
    /// The query string is not part of the key (nor sent upstream).
    Ignore,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheRules {
    /// Freshness when the origin gives none and the status is cacheable.
    /// Default: [`DEFAULT_TTL`] (60s).
    pub default_ttl: Duration,
    /// Default: [`DEFAULT_MAX_OBJECT_SIZE`] (1GiB).
    pub max_object_size: u64,
    /// Default: [`QueryMode::Keep`].
    pub query: QueryMode,
    /// Parameters removed from the key and the upstream request. Default: none.
    pub query_drop: Vec<String>,
    /// Request headers whose values are part of every key. Default: none.
    pub key_headers: Vec<HeaderName>,
    /// TTL per status code, which also makes that status cacheable
    /// (negative caching of 404s and the like). Default: none.
    pub status_ttl: BTreeMap<u16, Duration>,
    /// Per-path overrides, first match wins. Default: none.
    pub paths: Vec<PathRule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PathRule {
    pub pattern: PathPattern,
    /// TTL for responses that carry no freshness of their own (or all, with
    /// `force`). Default: none (the site's `default_ttl`).
    pub ttl: Option<Duration>,
    /// Use `ttl` whatever the origin's cache headers say. Default: `false`.
    pub force: bool,
    /// Never cache this path. Default: `false`.
    pub bypass: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StalePolicy {
    /// Default: [`DEFAULT_STALE_WHILE_REVALIDATE`] (0s).
    pub while_revalidate: Duration,
    /// Default: [`DEFAULT_STALE_IF_ERROR`] (1 day).
    pub if_error: Duration,
    /// Default: [`DEFAULT_PARTITION_GRACE`] (5m).
    pub partition_grace: Duration,
}

/// The certificate edges and shields present for the site's hosts. The files
/// are read by each node (a site file travels through the control plane, the
/// key never does), so their existence is checked where they are used.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteTls {
    /// PEM: the leaf certificate first, then its intermediates.
    pub cert: Located<PathBuf>,
    /// PEM: PKCS#8, PKCS#1 or SEC1 private key.
    pub key: Located<PathBuf>,
}

/// Request fields that change what a request means to many origin
/// frameworks (its host, scheme, URL or method) without being part of the
/// cache key. A client could use them to make an origin answer one URL with
/// another's content, cached for everyone, so nodes withhold them from
/// upstream requests unless a site lists them in `[headers] forward` (which
/// also adds them to the key).
pub const WITHHELD_REQUEST_HEADERS: [&str; 16] = [
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "front-end-https",
    "x-url-scheme",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Changes made to every response sent to a client, and the withheld
/// request fields this site's origin needs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderRules {
    /// Default: none.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Default: none.
    pub remove: Vec<HeaderName>,
    /// Fields of [`WITHHELD_REQUEST_HEADERS`] sent upstream anyway; each is
    /// part of every cache key of the site. Default: none.
    pub forward: Vec<HeaderName>,
}

impl Site {
    /// Parses and validates a site file's text. `file` names it in messages and
    /// its folder anchors relative paths (TLS and CA files).
    pub fn parse(file: &Path, text: &str) -> Result<Site, ConfigError> {
        Site::parse_in(file, text, &base_dir(file))
    }

    /// Like [`Site::parse`], with relative paths anchored at `base`: a node
    /// resolves the paths of a site received from the control plane against
    /// its own configuration folder.
    pub fn parse_in(file: &Path, text: &str, base: &Path) -> Result<Site, ConfigError> {
        let mut s = Sink::new(file, text);
        let site = crate::parse_document(&mut s).and_then(|doc| {
            let mut root = Table::root(FileKind::Site, doc.span(), doc.get_ref());
            let site = decode_site(&mut s, &mut root, base);
            root.finish(&mut s);
            site
        });
        s.finish(site)
    }

    /// Reads and parses a site file.
    pub fn load(path: &Path) -> Result<Site, ConfigError> {
        let text = crate::read_file(path)?;
        Site::parse(path, &text)
    }

    /// Does some origin of this site get the client's Host? Then the host
    /// is part of the cache key (an origin may answer each host differently).
    pub fn origin_sees_client_host(&self) -> bool {
        self.origins.iter().any(|o| o.host.is_none())
    }

    /// Does this site answer for `host` (lower-case, no port)?
    pub fn serves(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.matches(host))
    }
}

impl FromStr for Site {
    type Err = ConfigError;
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        Site::parse(Path::new("<inline>"), text)
    }
}

fn decode_site(s: &mut Sink<'_>, root: &mut Table<'_, '_>, base: &Path) -> Option<Site> {
    let mut head = match root.table(s, "site") {
        Some(t) => t,
        None => {
            s.error(&root.span.clone(), "missing table [site] (a site file starts with [site] id = \"…\")");
            return None;
        }
    };
    let id: Option<Spanned<String>> = head.req(s, "id");
    if let Some(id) = &id
        && let Err(msg) = check_site_id(id.get_ref())
    {
        s.error(&id.span(), msg);
    }
    let hosts = decode_hosts(s, &mut head);
    let https_only = head.or(s, "https_only", false);
    let allow_direct = head.or(s, "allow_direct", true);
    head.finish(s);

    let origin_tables = root.tables(s, "origin");
    if origin_tables.is_empty() {
        s.error(&root.span.clone(), "a site needs at least one [[origin]] with a url");
    }
    let origins: Vec<Origin> = origin_tables.into_iter().filter_map(|mut t| decode_origin(s, &mut t, base)).collect();

    let cache = match root.table(s, "cache") {
        Some(mut t) => decode_cache(s, &mut t),
        None => Some(CacheRules::default()),
    };
    let stale = match root.table(s, "stale") {
        Some(mut t) => decode_stale(s, &mut t),
        None => StalePolicy::default(),
    };
    let tls = root.table(s, "tls").and_then(|mut t| {
        let mut path = |s: &mut Sink<'_>, key| {
            t.req::<Spanned<String>>(s, key).map(|p| s.located(&p.span(), base.join(p.get_ref())))
        };
        let cert = path(s, "cert");
        let key = path(s, "key");
        t.finish(s);
        Some(SiteTls { cert: cert?, key: key? })
    });
    let headers = match root.table(s, "headers") {
        Some(mut t) => decode_header_rules(s, &mut t),
        None => HeaderRules::default(),
    };
    Some(Site {
        id: id?.into_inner(),
        hosts: hosts?,
        https_only,
        allow_direct,
        origins,
        cache: cache?,
        stale,
        tls,
        headers,
    })
}

/// Site ids are DNS labels: lower-case letters, digits and inner hyphens.
pub fn check_site_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok { Ok(()) } else { Err(format!("site id `{id}` must be 1 to 63 lower-case letters, digits or inner hyphens")) }
}

fn decode_hosts(s: &mut Sink<'_>, head: &mut Table<'_, '_>) -> Option<Vec<Located<HostPattern>>> {
    let raw: Vec<Spanned<String>> = head.req(s, "hosts")?;
    if raw.is_empty() {
        s.error(&head.span_of("hosts"), "a site needs at least one host");
        return None;
    }
    let mut hosts: Vec<Located<HostPattern>> = Vec::new();
    for h in &raw {
        match HostPattern::parse(h.get_ref()) {
            Ok(p) => {
                if let Some(prev) = hosts.iter().find(|q| q.overlaps(&p)) {
                    s.error(&h.span(), format!("host `{p}` overlaps `{}` at {}", prev.value, prev.loc));
                }
                hosts.push(s.located(&h.span(), p));
            }
            Err(msg) => s.error(&h.span(), msg),
        }
    }
    Some(hosts)
}

impl Decode for Uri {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "a URL such as \"http://127.0.0.1:9000\"", parse_base_url)
    }
}

/// An `http(s)://host[:port]` URL with no path, query or credentials.
pub fn parse_base_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text.parse().map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{text}` must start with http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{text}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("`{text}` must not carry credentials"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("`{text}` must not have a path or query: give the scheme, host and port only"));
    }
    Ok(uri)
}

fn ttl(s: &mut Sink<'_>, t: &mut Table<'_, '_>, key: &'static str, default: Duration) -> Duration {
    match t.opt::<Spanned<Duration>>(s, key) {
        Some(d) if *d.get_ref() > MAX_TTL => {
            s.error(&d.span(), format!("{key} is out of range: at most 365 days"));
            default
        }
        Some(d) => d.into_inner(),
        None => default,
    }
}

fn decode_origin(s: &mut Sink<'_>, t: &mut Table<'_, '_>, base: &Path) -> Option<Origin> {
    let url: Option<Uri> = t.req(s, "url");
    let ca = t.opt::<Spanned<String>>(s, "ca").map(|p| {
        if url.as_ref().is_some_and(|u| u.scheme_str() != Some("https")) {
            s.error(&p.span(), "origin ca is only used with an https url");
        }
        base.join(p.get_ref())
    });
    let host = t.opt::<Spanned<String>>(s, "host").and_then(|h| match HostPattern::parse(h.get_ref()) {
        Ok(HostPattern::Exact(name)) => Some(name),
        _ => {
            s.error(&h.span(), format!("origin host `{}` must be a plain host name", h.get_ref()));
            None
        }
    });
    let weight = positive(s, t, "weight", 1);
    let connect_timeout = t.or(s, "connect_timeout", DEFAULT_ORIGIN_CONNECT_TIMEOUT);
    let response_timeout = t.or(s, "response_timeout", DEFAULT_ORIGIN_RESPONSE_TIMEOUT);
    let max_connections = positive(s, t, "max_connections", DEFAULT_ORIGIN_MAX_CONNECTIONS);
    let health = t.table(s, "health").and_then(|mut h| {
        let path: Option<Spanned<String>> = h.req(s, "path");
        let path = path.and_then(|p| {
            if p.get_ref().starts_with('/') {
                Some(p.into_inner())
            } else {
                s.error(&p.span(), "a health-check path starts with `/`");
                None
            }
        });
        let interval = h.or(s, "interval", DEFAULT_HEALTH_INTERVAL);
        let timeout = h.or(s, "timeout", DEFAULT_HEALTH_TIMEOUT);
        let healthy_threshold = positive(s, &mut h, "healthy_threshold", DEFAULT_HEALTHY_THRESHOLD);
        let unhealthy_threshold = positive(s, &mut h, "unhealthy_threshold", DEFAULT_UNHEALTHY_THRESHOLD);
        if interval.is_zero() {
            s.error(&h.span_of("interval"), "interval must be longer than zero");
        }
        h.finish(s);
        Some(HealthCheck { path: path?, interval, timeout, healthy_threshold, unhealthy_threshold })
    });
    t.finish(s);
    Some(Origin { url: url?, host, weight, connect_timeout, response_timeout, max_connections, health, ca })
}

/// An integer that must be at least 1.
pub(crate) fn positive(s: &mut Sink<'_>, t: &mut Table<'_, '_>, key: &'static str, default: u32) -> u32 {
    match t.opt::<Spanned<u32>>(s, key) {
        Some(v) if *v.get_ref() == 0 => {
            s.error(&v.span(), format!("{key} must be at least 1"));
            default
        }
        Some(v) => v.into_inner(),
        None => default,
    }
}

impl Default for CacheRules {
    fn default() -> Self {
        CacheRules {
            default_ttl: DEFAULT_TTL,
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
            query: QueryMode::Keep,
            query_drop: Vec::new(),
            key_headers: Vec::new(),
            status_ttl: BTreeMap::new(),
            paths: Vec::new(),
        }
    }
}

impl Default for StalePolicy {
    fn default() -> Self {
        StalePolicy {
            while_revalidate: DEFAULT_STALE_WHILE_REVALIDATE,
            if_error: DEFAULT_STALE_IF_ERROR,
            partition_grace: DEFAULT_PARTITION_GRACE,
        }
    }
}

impl Decode for QueryMode {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "\"keep\", \"sort\" or \"ignore\"", |t| match t {
            "keep" => Ok(QueryMode::Keep),
            "sort" => Ok(QueryMode::Sort),
            "ignore" => Ok(QueryMode::Ignore),
            _ => Err(format!("query must be \"keep\", \"sort\" or \"ignore\", found `{t}`")),
        })
    }
}

impl Decode for HeaderName {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "a header name", |t| {
            HeaderName::from_bytes(t.as_bytes()).map_err(|_| format!("`{t}` is not a valid header name"))
        })
    }
}

fn decode_cache(s: &mut Sink<'_>, t: &mut Table<'_, '_>) -> Option<CacheRules> {
    let default_ttl = ttl(s, t, "default_ttl", DEFAULT_TTL);
    let max_object_size = match t.opt::<Spanned<ByteSize>>(s, "max_object_size") {
        Some(b) if b.get_ref().0 == 0 => {
            s.error(&b.span(), "max_object_size must be larger than zero");
            DEFAULT_MAX_OBJECT_SIZE
        }
        Some(b) => b.get_ref().0,
        None => DEFAULT_MAX_OBJECT_SIZE,
    };
    let query = t.or(s, "query", QueryMode::Keep);
    let query_drop: Vec<String> = t.or(s, "query_drop", Vec::new());
    if query == QueryMode::Ignore && !query_drop.is_empty() {
        s.error(&t.span_of("query_drop"), "query_drop has no effect with query = \"ignore\"");
    }
    let key_headers: Vec<Spanned<HeaderName>> = t.or(s, "key_headers", Vec::new());
    for h in &key_headers {
        if h.get_ref() == http::header::HOST {
            s.error(&h.span(), "the host is already in every key (as the site id)");
        }
    }
    let mut status_ttl = BTreeMap::new();
    if let Some(codes) = t.table(s, "status_ttl") {
        for (code, v) in codes.entries() {
            let status = code.get_ref().parse::<u16>().ok().filter(|c| (200..=599).contains(c));
            let Some(status) = status else {
                s.error(&code.span(), format!("`{}` is not an HTTP status code from 200 to 599", code.get_ref()));
                continue;
            };
            match Duration::decode(s, v) {
                Some(d) if d > MAX_TTL => s.error(&v.span(), "TTL is out of range: at most 365 days"),
                Some(d) => {
                    status_ttl.insert(status, d);
                }
                None => {}
            }
        }
    }
    let paths = t
        .tables(s, "path")
        .into_iter()
        .filter_map(|mut p| {
            let pattern = p
                .req::<Spanned<String>>(s, "pattern")
                .and_then(|x| PathPattern::parse(x.get_ref()).map_err(|m| s.error(&x.span(), m)).ok());
            let rule_ttl = if p.has("ttl") { Some(ttl(s, &mut p, "ttl", DEFAULT_TTL)) } else { None };
            let force = p.or(s, "force", false);
            let bypass = p.or(s, "bypass", false);
            if force && rule_ttl.is_none() {
                s.error(&p.span_of("force"), "force = true needs a ttl to force");
            }
            if bypass && (rule_ttl.is_some() || force) {
                s.error(&p.span_of("bypass"), "bypass = true cannot be combined with ttl or force");
            }
            p.finish(s);
            Some(PathRule { pattern: pattern?, ttl: rule_ttl, force, bypass })
        })
        .collect();
    t.finish(s);
    Some(CacheRules {
        default_ttl,
        max_object_size,
        query,
        query_drop,
        key_headers: key_headers.into_iter().map(Spanned::into_inner).collect(),
        status_ttl,
        paths,
    })
}

fn decode_stale(s: &mut Sink<'_>, t: &mut Table<'_, '_>) -> StalePolicy {
    let d = StalePolicy::default();
    let policy = StalePolicy {
        while_revalidate: ttl(s, t, "while_revalidate", d.while_revalidate),
        if_error: ttl(s, t, "if_error", d.if_error),
        partition_grace: ttl(s, t, "partition_grace", d.partition_grace),
    };
    t.finish(s);
    policy
}

fn decode_header_rules(s: &mut Sink<'_>, t: &mut Table<'_, '_>) -> HeaderRules {
    let mut rules = HeaderRules::default();
    if let Some(set) = t.table(s, "set") {
        for (name, v) in set.entries() {
            let Ok(n) = HeaderName::from_bytes(name.get_ref().as_bytes()) else {
                s.error(&name.span(), format!("`{}` is not a valid header name", name.get_ref()));
                continue;
            };
            let Some(text) = string(s, v, "a header value") else { continue };
            match HeaderValue::from_str(text) {
                Ok(value) => rules.set.push((n, value)),
                Err(_) => s.error(&v.span(), "header values must be visible ASCII"),
            }
        }
    }
    rules.remove = t.or(s, "remove", Vec::new());
    let forward: Vec<Spanned<HeaderName>> = t.or(s, "forward", Vec::new());
    for name in forward {
        if WITHHELD_REQUEST_HEADERS.contains(&name.get_ref().as_str()) {
            rules.forward.push(name.into_inner());
        } else {
            let msg = format!(
                "`{}` is forwarded anyway; `forward` lists withheld fields: {}",
                name.get_ref(),
                WITHHELD_REQUEST_HEADERS.join(", ")
            );
            s.error(&name.span(), msg);
        }
    }
    t.finish(s);
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[site]
id = "shop"
hosts = ["shop.test"]

[[origin]]
url = "http://127.0.0.1:9000"
"#;

    fn errors(text: &str) -> Vec<String> {
        match Site::from_str(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn minimal_site_gets_documented_defaults() {
        let site: Site = MINIMAL.parse().unwrap();
        assert_eq!(site.id, "shop");
        assert!(site.serves("shop.test") && !site.serves("other.test"));
        assert_eq!(site.cache.default_ttl, DEFAULT_TTL);
        assert_eq!(site.cache.query, QueryMode::Keep);
        assert_eq!(site.stale, StalePolicy::default());
        assert_eq!(site.origins[0].connect_timeout, DEFAULT_ORIGIN_CONNECT_TIMEOUT);
        assert_eq!(site.origins[0].url.port_u16(), Some(9000));
        assert!(site.allow_direct && !site.https_only && site.tls.is_none());
    }

    #[test]
    fn full_site_reads_every_field() {
        let site: Site = r#"
[site]
id = "full-1"
hosts = ["www.full.test", "*.cdn.full.test"]
https_only = true
allow_direct = false

[[origin]]
url = "https://origin-a.full.test:8443"
host = "www.full.test"
weight = 3
connect_timeout = "500ms"
response_timeout = "10s"
max_connections = 8
[origin.health]
path = "/health"
interval = "2s"
unhealthy_threshold = 2

[[origin]]
url = "http://[::1]:9001"

[cache]
default_ttl = "5m"
max_object_size = "2GiB"
query = "sort"
query_drop = ["utm_source"]
key_headers = ["Accept-Language"]
status_ttl = { 404 = "10s", 301 = "1h" }

[[cache.path]]
pattern = "/static/*"
ttl = "7d"
force = true

[[cache.path]]
pattern = "/api/*"
bypass = true

[stale]
while_revalidate = "30s"
if_error = "1h"
partition_grace = "10m"

[headers]
set = { "x-served-by" = "outpost" }
remove = ["x-powered-by"]
forward = ["X-Forwarded-Host"]
"#
        .parse()
        .unwrap();
        assert_eq!(site.hosts.len(), 2);
        assert!(site.serves("a.cdn.full.test"));
        assert!(site.https_only && !site.allow_direct);
        assert_eq!(site.origins.len(), 2);
        let a = &site.origins[0];
        assert_eq!((a.weight, a.max_connections, a.host.as_deref()), (3, 8, Some("www.full.test")));
        assert_eq!(a.connect_timeout, Duration::from_millis(500));
        let h = a.health.as_ref().unwrap();
        assert_eq!(
            (h.path.as_str(), h.interval, h.unhealthy_threshold, h.healthy_threshold),
            ("/health", Duration::from_secs(2), 2, 2)
        );
        assert_eq!(site.cache.max_object_size, 2 << 30);
        assert_eq!(site.cache.query, QueryMode::Sort);
        assert_eq!(site.cache.key_headers, vec![HeaderName::from_static("accept-language")]);
        assert_eq!(site.cache.status_ttl[&404], Duration::from_secs(10));
        assert_eq!(site.cache.paths.len(), 2);
        assert!(site.cache.paths[0].force && site.cache.paths[1].bypass);
        assert!(site.cache.paths[0].pattern.matches("/static/app.js"));
        assert_eq!(site.stale.partition_grace, Duration::from_secs(600));
        assert_eq!(site.headers.set[0].0, "x-served-by");
        assert_eq!(site.headers.remove, vec![HeaderName::from_static("x-powered-by")]);
        assert_eq!(site.headers.forward, vec![HeaderName::from_static("x-forwarded-host")]);
    }

    #[test]
    fn three_mistakes_give_three_located_errors() {
        let e = errors(
            "[site]\nid = \"Bad_Id\"\nhosts = [\"a.test\"]\n\n[[origin]]\nurl = \"ftp://x\"\n\n[cache]\ndefault_ttl = \"soon\"\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(e[0], "<inline>:2:6: site id `Bad_Id` must be 1 to 63 lower-case letters, digits or inner hyphens");
        assert_eq!(e[1], "<inline>:6:7: `ftp://x` must start with http:// or https://");
        assert!(e[2].starts_with("<inline>:9:15: `soon` is not a duration such as \"30s\""), "{e:?}");
    }

    #[test]
    fn bad_values_are_rejected() {
        let with = |extra: &str| errors(&format!("{MINIMAL}{extra}"));
        assert!(with("[cache]\nmax_object_size = \"-1MiB\"")[0].contains("must not be negative"));
        assert!(with("[cache]\nmax_object_size = -1")[0].contains("must not be negative"));
        assert!(with("[cache]\ndefault_ttl = \"400d\"")[0].contains("out of range"));
        assert!(with("[cache]\nstatus_ttl = { 99 = \"1s\" }")[0].contains("not an HTTP status code"));
        assert!(with("[cache]\nquery = \"shuffle\"")[0].contains("query must be"));
        assert!(with("[cache]\nquery = \"ignore\"\nquery_drop = [\"a\"]")[0].contains("no effect"));
        assert!(with("[cache]\nkey_headers = [\"host\"]")[0].contains("already in every key"));
        assert!(with("[[cache.path]]\npattern = \"/a/*\"\nforce = true")[0].contains("needs a ttl"));
        assert!(with("[stale]\nif_error = \"forever\"")[0].contains("not a duration"));
        assert_eq!(with("[tls]\ncert = \"site.pem\"").len(), 1, "a certificate needs its key");
        assert!(with("[cache]\ndefualt_ttl = \"1s\"")[0].contains("did you mean `default_ttl`"));
        assert!(with("[headers]\nset = { \"bad header\" = \"x\" }")[0].contains("not a valid header name"));
        assert!(with("[headers]\nforward = [\"accept\"]")[0].contains("forwarded anyway"));
    }

    #[test]
    fn overlapping_hosts_in_one_site_are_rejected() {
        let e = errors(
            "[site]\nid = \"a\"\nhosts = [\"*.a.test\", \"x.a.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:1\"\n",
        );
        assert_eq!(e, ["<inline>:3:22: host `x.a.test` overlaps `*.a.test` at <inline>:3:10"]);
    }

    #[test]
    fn structure_errors() {
        assert!(errors("")[0].contains("missing table [site]"));
        let e = errors("[site]\nid = \"a\"\nhosts = []\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().any(|m| m.contains("at least one host")));
        assert!(e.iter().any(|m| m.contains("at least one [[origin]]")));
        assert!(errors(&format!("{MINIMAL}[[origin]]\nurl = \"http://h:1/path\""))[0].contains("must not have a path"));
        assert!(errors(&format!("{MINIMAL}bogus = 1"))[0].contains("unknown key `bogus` in [[origin]]"));
    }

    #[test]
    fn syntax_errors_carry_their_position() {
        let e = errors("[site]\nid = \"a\nhosts = [\"a.test\"]\n");
        assert!(e.iter().any(|m| m.starts_with("<inline>:2:8: invalid basic string")), "{e:?}");
    }
}
