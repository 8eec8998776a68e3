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

use crate::decode::Table;
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
/// The most freshness guessed from `Last-Modified` (RFC 9111 §4.2.2).
pub const DEFAULT_HEURISTIC_MAX: Duration = Duration::from_secs(24 * 3600);
/// Objects larger than this are streamed through uncached unless the site says.
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 1 << 30;
/// Media types compressed when a site does not list its own: text, and
/// the binary formats that are mostly text or uncompressed tables.
pub const DEFAULT_COMPRESS_TYPES: [&str; 17] = [
    "text/*",
    "application/javascript",
    "application/json",
    "application/ld+json",
    "application/manifest+json",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/x-javascript",
    "application/wasm",
    "application/vnd.ms-fontobject",
    "application/x-font-ttf",
    "font/ttf",
    "font/otf",
    "image/svg+xml",
    "image/x-icon",
];
/// Smaller bodies are sent as they are: they fit in a packet either way.
pub const DEFAULT_COMPRESS_MIN_SIZE: u64 = 1 << 10;
/// Larger bodies are sent as they are: a representation is made whole, in
/// memory, before it is stored.
pub const DEFAULT_COMPRESS_MAX_SIZE: u64 = 16 << 20;
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
/// How long an origin may leave what was sent to it unacknowledged before
/// the connection is given up as cut.
pub const DEFAULT_ORIGIN_LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a second an origin must send of a body the node shares or
/// stores, on average over each `response_timeout`: a body that trickles
/// in a byte now and then would hold the fetch, every request waiting on
/// it and a place under `max_connections` for as long as it pleased.
pub const DEFAULT_ORIGIN_BODY_MIN_RATE: u64 = 1024;
/// The highest `body_min_rate` a site file may set.
pub const MAX_BODY_MIN_RATE: u64 = 1 << 30;
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
    /// `http3`: responses over HTTP/1.1 and HTTP/2 from a node listening
    /// on QUIC carry `Alt-Svc: h3=…`. Default: `false`.
    pub http3: bool,
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
    /// Default: [`Compression::default`].
    pub compress: Compression,
    /// `[[early_hints]]`, the first whose pattern matches wins. Default:
    /// none.
    pub early_hints: Vec<EarlyHints>,
}

/// `Link` fields an edge sends in a `103 Early Hints` before it answers a
/// GET for a matching path that it cannot answer at once (RFC 8297), so a
/// browser can fetch or connect while the response is on its way.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyHints {
    pub pattern: PathPattern,
    /// `Link` field values, each `<URI-reference>` and its parameters.
    pub links: Vec<HeaderValue>,
}

/// Most `Link` values one `[[early_hints]]` rule may send.
pub const MAX_EARLY_HINT_LINKS: usize = 32;

/// Which responses get compressed representations, and in which codings.
#[derive(Debug, Clone, PartialEq)]
pub struct Compression {
    /// Codings made for clients that accept them; the first wins when a
    /// client weighs several the same. Empty: `Accept-Encoding` and the
    /// origin's codings pass through untouched. Default: br, zstd, gzip.
    pub codings: Vec<crate::coding::Coding>,
    /// Media types (lower case; `text/*` covers a top-level type).
    /// Default: [`DEFAULT_COMPRESS_TYPES`].
    pub types: Vec<String>,
    /// Default: [`DEFAULT_COMPRESS_MIN_SIZE`] (1KiB).
    pub min_size: u64,
    /// Default: [`DEFAULT_COMPRESS_MAX_SIZE`] (16MiB).
    pub max_size: u64,
}

impl Compression {
    /// Does the site compress bodies of this `Content-Type` (parameters
    /// and case ignored)?
    pub fn covers(&self, content_type: &str) -> bool {
        // Bytes, not characters: this runs for every hit.
        let ct = content_type.as_bytes();
        let media = ct.iter().position(|&b| b == b';').map_or(ct, |end| &ct[..end]).trim_ascii();
        let top = media.iter().position(|&b| b == b'/').map_or(&b""[..], |end| &media[..end]);
        // Lengths first: most types are told apart by them alone.
        self.types.iter().any(|t| {
            let t = t.as_bytes();
            (t.len() == media.len() && t.eq_ignore_ascii_case(media))
                || (!top.is_empty()
                    && t.len() == top.len() + 2
                    && t.ends_with(b"/*")
                    && t[..top.len()].eq_ignore_ascii_case(top))
        })
    }
}

impl Default for Compression {
    fn default() -> Self {
        use crate::coding::Coding;
        Compression {
            codings: vec![Coding::Br, Coding::Zstd, Coding::Gzip],
            types: DEFAULT_COMPRESS_TYPES.iter().map(|t| t.to_string()).collect(),
            min_size: DEFAULT_COMPRESS_MIN_SIZE,
            max_size: DEFAULT_COMPRESS_MAX_SIZE,
        }
    }
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
    /// Time the origin's side of a connection has to acknowledge what was
    /// sent on it (`TCP_USER_TIMEOUT`): past it the link counts as cut, as
    /// a failed connect does, without waiting out `response_timeout`. An
    /// origin that stops reading a request body (its receive window shut)
    /// for as long is given up too. Default: [`DEFAULT_ORIGIN_LINK_TIMEOUT`]
    /// (10s).
    pub link_timeout: Duration,
    /// Bytes a second the origin must send of a body the node shares or
    /// stores, on average over each `response_timeout` of waiting for it
    /// (time the fetch waits for its readers does not count); 0: none.
    /// Default: [`DEFAULT_ORIGIN_BODY_MIN_RATE`] (1 KiB).
    pub body_min_rate: u64,
    /// Default: [`DEFAULT_ORIGIN_MAX_CONNECTIONS`] (64).
    pub max_connections: u32,
    /// Default: none (only failing requests take the origin out).
    pub health: Option<HealthCheck>,
    /// Trusted besides the public roots when the url is `https`: a private
    /// CA. Default: none.
    pub ca: Option<PathBuf>,
    /// Offer HTTP/2 in the TLS handshake of an `https` origin (it picks).
    /// Default: true.
    pub http2: bool,
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
    /// Cap on the freshness guessed from `Last-Modified` (a tenth of its
    /// age, RFC 9111 §4.2.2) where `default_ttl` is zero; zero: never
    /// guess. Default: [`DEFAULT_HEURISTIC_MAX`] (1 day).
    pub heuristic_max: Duration,
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

/// The certificate edges and shields present for the site's hosts.
#[derive(Debug, Clone, PartialEq)]
pub enum SiteTls {
    /// Files each node reads (a site file travels through the control
    /// plane, the key never does), so their existence is checked where they
    /// are used.
    Files {
        /// PEM: the leaf certificate first, then its intermediates.
        cert: Located<PathBuf>,
        /// PEM: PKCS#8, PKCS#1 or SEC1 private key.
        key: Located<PathBuf>,
    },
    /// `acme = true`: the control plane orders the certificate from its
    /// ACME directory (HTTP-01, answered by whichever node the CA reaches),
    /// renews it and sends it to every node with its key sealed.
    Acme,
}

/// Request fields that change what a request means to many origin
/// frameworks (its host, scheme, URL or method) without being part of the
/// cache key. A client could use them to make an origin answer one URL with
/// another's content, cached for everyone, so nodes withhold them from
/// upstream requests unless a site lists them in `[headers] forward` (which
/// also adds them to the key). `Forwarded` among them: its `host=` and
/// `proto=` are read by frameworks as `X-Forwarded-Host` is; an edge sends
/// its own element alone, and a shield passes on its edges' list.
pub const WITHHELD_REQUEST_HEADERS: [&str; 21] = [
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-protocol",
    "x-forwarded-prefix",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-ssl",
    "x-scheme",
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
            let site = read::decode_site(&mut s, &mut root, base);
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

/// Site ids are DNS labels: lower-case letters, digits and inner hyphens.
pub fn check_site_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok { Ok(()) } else { Err(format!("site id `{id}` must be 1 to 63 lower-case letters, digits or inner hyphens")) }
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

impl Default for CacheRules {
    fn default() -> Self {
        CacheRules {
            default_ttl: DEFAULT_TTL,
            heuristic_max: DEFAULT_HEURISTIC_MAX,
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

mod read;

#[cfg(test)]
mod tests;
