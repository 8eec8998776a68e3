//! A node file: one per process, saying what role it plays and where.
//!
//! Every role shares `[node]`, `[listen]` and `[limits]`; the other sections
//! belong to particular roles, and a section a role does not use is an error
//! rather than something silently ignored.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::Uri;
use toml::Spanned;

use crate::decode::{ByteSize, Decode, Table, Val, parse_str};
use crate::diag::{ConfigError, Need, Pending, Sink, base_dir};
use crate::schema::{self, FileKind};
use crate::site::{Site, positive};

/// Largest request head (request line and headers). Browsers send 1–4 KiB;
/// 32 KiB leaves room for big cookies while capping what a client can pin.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 32 * 1024;
/// Most request headers accepted; hyper's own default, generous for browsers.
pub const DEFAULT_MAX_HEADERS: u32 = 100;
/// Largest request body forwarded upstream. A CDN carries small form posts
/// and API calls; bulk uploads belong on another path.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 16 * 1024 * 1024;
/// Time a client has to send its whole request head: long enough for a slow
/// mobile link, short enough that slowloris cannot hold connections open.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A response the client has not taken a byte of for this long is dropped
/// with its connection: a reader that stopped holds nothing for longer.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Open client connections per node. At the cap, the connection idle the
/// longest is closed to make room; new ones wait only while all are busy.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// How long a stopping node lets in-flight responses finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// A node silent this long leaves the control plane's registry: a day
/// rides out any outage an operator would still want to see in `status`.
pub const DEFAULT_NODE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// How often an edge probes a shield it has marked down.
pub const DEFAULT_SHIELD_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Events the control plane keeps before compacting; a node further behind
/// takes a snapshot.
pub const DEFAULT_LOG_RETENTION: u64 = 100_000;
/// TTL of geo-DNS answers: short, so a failed PoP drains within half a minute.
pub const DEFAULT_DNS_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Edge,
    Shield,
    Control,
    Dns,
    Origin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Shield => "shield",
            Role::Control => "control",
            Role::Dns => "dns",
            Role::Origin => "origin",
        }
    }

    /// Does a node of this role use the top-level section `name`?
    fn uses(self, name: &str) -> bool {
        schema::role_sections(self).any(|s| s.name == name)
    }

    /// Does a node of this role use `[listen] key`?
    fn listens(self, key: &str) -> bool {
        schema::section(FileKind::Node, "listen").and_then(|s| s.key(key)).is_some_and(|k| k.used_by(self))
    }
}

impl Decode for Role {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "a role", |t| match t {
            "edge" => Ok(Role::Edge),
            "shield" => Ok(Role::Shield),
            "control" => Ok(Role::Control),
            "dns" => Ok(Role::Dns),
            "origin" => Ok(Role::Origin),
            _ => Err(format!("role must be one of edge, shield, control, dns, origin; found `{t}`")),
        })
    }
}

/// One process's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub file: PathBuf,
    /// Unique among the CDN's nodes; names it in `Cache-Status` and the registry.
    pub name: String,
    /// `[node] pop`, `latitude`, `longitude`: required for an edge, optional
    /// for a shield. Default: none.
    pub pop: Option<Pop>,
    pub listen: Listen,
    /// `[limits]`. Default: [`Limits::default`].
    pub limits: Limits,
    /// `[tls]`. Default: no certificates, unknown names rejected.
    pub tls: NodeTls,
    /// `[control]`. Default: none (the node serves its own site files).
    pub control: Option<ControlLink>,
    pub role: RoleConfig,
    /// Paths to check when it is resolved.
    pending: Vec<Pending>,
}

/// A node's own TLS settings; sites bring their certificates themselves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeTls {
    /// Presented when no site's certificate matches the name a client asks
    /// for (or it names none), if `unknown_sni` says so. The control plane's
    /// API certificate. Default: none.
    pub cert: Option<CertFiles>,
    /// Default: [`UnknownSni::Reject`].
    pub unknown_sni: UnknownSni,
    /// Clients must present a certificate issued by this CA (mutual TLS:
    /// shields requiring it from edges). Default: none (no client certificates asked for).
    pub client_ca: Option<PathBuf>,
    /// Trusted besides the public roots when verifying https upstreams.
    /// Default: none (the public roots only).
    pub upstream_ca: Option<PathBuf>,
    /// Presented to https upstreams that ask for a client certificate.
    /// Default: none.
    pub upstream_cert: Option<CertFiles>,
    /// The only folders sites' certificate and key files may be read from
    /// (a site file pushed through the control plane must not make a node
    /// read, say, `/etc/shadow`). Default: the node file's folder; listed
    /// folders (`[tls] site_cert_dirs`, relative to the node file) add to it.
    pub site_cert_dirs: Vec<PathBuf>,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a TLS listener does with a client asking for a name no site serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownSni {
    /// Fail the handshake (`unrecognized_name`-style alert): nothing about the
    /// node's other sites is revealed.
    #[default]
    Reject,
    /// Present the node's default certificate (`[tls] cert`).
    Default,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pop {
    pub name: String,
    pub latitude: f64,
    pub longitude: f64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Listen {
    /// Default: none (a node serving HTTP needs `http` or `https`).
    pub http: Vec<SocketAddr>,
    /// Default: none.
    pub https: Vec<SocketAddr>,
    /// `/metrics` and `/healthz`. Default: none.
    pub admin: Option<SocketAddr>,
    /// UDP and TCP port of the DNS server. Required for a DNS node.
    pub dns: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `header_bytes`. Default: [`DEFAULT_MAX_HEADER_BYTES`] (32KiB).
    pub max_header_bytes: u64,
    /// `headers`. Default: [`DEFAULT_MAX_HEADERS`] (100).
    pub max_headers: u32,
    /// `body`. Default: [`DEFAULT_MAX_REQUEST_BODY`] (16MiB).
    pub max_request_body: u64,
    /// Default: [`DEFAULT_HEADER_READ_TIMEOUT`] (10s).
    pub header_read_timeout: Duration,
    /// Default: [`DEFAULT_IDLE_TIMEOUT`] (60s).
    pub idle_timeout: Duration,
    /// Default: [`DEFAULT_SEND_TIMEOUT`] (30s).
    pub send_timeout: Duration,
    /// Default: [`DEFAULT_MAX_CONNECTIONS`] (10000).
    pub max_connections: u32,
    /// Default: [`DEFAULT_SHUTDOWN_GRACE`] (30s).
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// How a node reaches the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlLink {
    pub url: Uri,
    /// Holds the node token; read at start, never logged.
    pub token_file: PathBuf,
    /// Trusted besides the public roots when the url is `https`. Default: none.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RoleConfig {
    Edge(EdgeNode),
    Shield(ProxyNode),
    Control(ControlNode),
    Dns(DnsNode),
    Origin(OriginNode),
}

/// Where a node writes its access log (JSON lines).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLog {
    Off,
    #[default]
    Stdout,
    File(PathBuf),
}

/// What edges and shields share: a cache and the sites known before the
/// control plane says anything.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyNode {
    pub cache: CacheStorage,
    /// Default: [`AccessLog::Stdout`].
    pub access_log: AccessLog,
    /// Sites from local files, served when no control plane is configured
    /// and until the control plane's own set arrives. Default: none.
    pub sites: Vec<Site>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeNode {
    pub proxy: ProxyNode,
    pub upstream: Upstream,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStorage {
    /// Required, at least 1MiB.
    pub memory: u64,
    /// Zero means memory only. Default: 0.
    pub disk: u64,
    /// Required when `disk` is not zero. Default: none.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamMode {
    /// Misses go to a shield picked by rendezvous hash.
    Shield,
    /// Misses go to the site's origin directly.
    Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Default: [`UpstreamMode::Shield`].
    pub mode: UpstreamMode,
    /// Required with [`UpstreamMode::Shield`]. Default: none.
    pub shields: Vec<ShieldAddr>,
    /// Default: [`DEFAULT_SHIELD_PROBE_INTERVAL`] (1s).
    pub probe_interval: Duration,
}

/// A shield as an edge reaches it: `"http://10.0.0.5:8101"`, or
/// `{ name = "shield-1", url = "http://10.0.0.5:8101" }` when edges reach the
/// same shield by different addresses. Edges agree which shield owns a key
/// by hashing shield names (the URL's host and port when no name is given),
/// so every edge must name a shield the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShieldAddr {
    pub name: String,
    pub url: Uri,
}

impl Decode for ShieldAddr {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        if let toml::de::DeValue::String(_) = v.get_ref() {
            let url = Uri::decode(s, v)?;
            let name = url.authority().map_or_else(|| url.to_string(), |a| a.to_string());
            return Some(ShieldAddr { name, url });
        }
        let mut t = Table::of(s, "a shield", v)?;
        let name: Option<String> = t.req(s, "name");
        let url: Option<Uri> = t.req(s, "url");
        t.finish(s);
        Some(ShieldAddr { name: name?, url: url? })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlNode {
    /// `[store] path`: required.
    pub store: PathBuf,
    /// Default: [`DEFAULT_LOG_RETENTION`] (100000 events).
    pub log_retention: u64,
    /// A node not heard from for this long leaves the registry (it is
    /// registered again when it reconnects). Default: `24h`.
    pub node_expiry: Duration,
    pub admin_token_file: PathBuf,
    pub node_token_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsNode {
    /// Fully qualified, lower-case, ending in `.`.
    pub zone: String,
    /// Default: [`DEFAULT_DNS_TTL`] (30s).
    pub ttl: Duration,
    pub geoip: PathBuf,
    /// Default: none.
    pub nameservers: Vec<String>,
    pub pops: Vec<DnsPop>,
    pub default_pop: String,
    /// ISO country code → PoP, for records without a location. Default: none.
    pub countries: BTreeMap<String, String>,
    /// Continent code → PoP, when the country has no entry. Default: none.
    pub continents: BTreeMap<String, String>,
    /// Site ids answered as `<id>.<zone>` until the control plane lists
    /// them. Default: none.
    pub sites: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsPop {
    pub name: String,
    pub latitude: f64,
    pub longitude: f64,
    /// Static edge addresses, used until (or without) the node registry.
    /// Default: none.
    pub edges: Vec<IpAddr>,
    /// Networks the PoP's edges may register addresses in, besides `edges`.
    /// DNS answers only with registered addresses these two allow, so a
    /// leaked node token cannot steer clients elsewhere. Default: none.
    pub networks: Vec<ipnet::IpNet>,
}

impl DnsPop {
    /// May DNS answer with `ip`, registered by one of this PoP's edges?
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.edges.contains(&ip) || self.networks.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginNode {
    /// Served under `/files/`. Default: none.
    pub dir: Option<PathBuf>,
}

impl NodeConfig {
    /// Reads and checks a node file's text (stages 1 and 2): every problem
    /// with `file:line:column`, nothing read from or written to disk. The
    /// paths it names are checked by [`NodeConfig::resolve`].
    pub fn parse(file: &Path, text: &str) -> Result<NodeConfig, ConfigError> {
        let (node, pending) = NodeConfig::parse_noting(file, text);
        node.map(|node| NodeConfig { pending, ..node })
    }

    /// Stages 1 and 2, and the paths the file names, even when it has errors.
    fn parse_noting(file: &Path, text: &str) -> (Result<NodeConfig, ConfigError>, Vec<Pending>) {
        let mut s = Sink::new(file, text);
        let node = crate::parse_document(&mut s).and_then(|doc| {
            let mut root = Table::root(FileKind::Node, doc.span(), doc.get_ref());
            let node = decode_node(&mut s, &mut root, file);
            root.finish(&mut s);
            node
        });
        let pending = std::mem::take(&mut s.pending);
        (s.finish(node), pending)
    }

    /// Stage 3: the file system. Files the node reads exist, folders it
    /// writes are writable, and its static site files load (their sites
    /// go into the node's site list). Every problem is reported.
    pub fn resolve(&mut self) -> Result<(), ConfigError> {
        let (sites, problems) = crate::resolve::resolve(&self.pending);
        if !problems.is_empty() {
            return Err(ConfigError { diagnostics: problems });
        }
        self.set_sites(sites);
        Ok(())
    }

    fn set_sites(&mut self, sites: Vec<Site>) {
        match &mut self.role {
            RoleConfig::Edge(e) => e.proxy.sites = sites,
            RoleConfig::Shield(p) => p.sites = sites,
            _ => {}
        }
    }

    /// Reads, checks and resolves a node file. A file with mistakes in its
    /// text is still resolved, so one run reports every problem.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = crate::read_file(path)?;
        NodeConfig::load_text(path, &text)
    }

    pub(crate) fn load_text(path: &Path, text: &str) -> Result<NodeConfig, ConfigError> {
        let (node, pending) = NodeConfig::parse_noting(path, text);
        let (sites, problems) = crate::resolve::resolve(&pending);
        match node {
            Ok(mut node) if problems.is_empty() => {
                node.pending = pending;
                node.set_sites(sites);
                Ok(node)
            }
            Ok(_) => Err(ConfigError { diagnostics: problems }),
            Err(mut e) => {
                e.diagnostics.extend(problems);
                e.diagnostics.sort_by(|a, b| {
                    (&a.loc.file, a.loc.line, a.loc.column).cmp(&(&b.loc.file, b.loc.line, b.loc.column))
                });
                Err(e)
            }
        }
    }

    pub fn role(&self) -> Role {
        match self.role {
            RoleConfig::Edge(_) => Role::Edge,
            RoleConfig::Shield(_) => Role::Shield,
            RoleConfig::Control(_) => Role::Control,
            RoleConfig::Dns(_) => Role::Dns,
            RoleConfig::Origin(_) => Role::Origin,
        }
    }

    /// The cache and static sites of an edge or shield.
    pub fn proxy(&self) -> Option<&ProxyNode> {
        match &self.role {
            RoleConfig::Edge(e) => Some(&e.proxy),
            RoleConfig::Shield(p) => Some(p),
            _ => None,
        }
    }
}

impl FromStr for NodeConfig {
    type Err = ConfigError;
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        NodeConfig::parse(Path::new("<inline>"), text)
    }
}

fn decode_node(s: &mut Sink<'_>, root: &mut Table<'_, '_>, file: &Path) -> Option<NodeConfig> {
    let base = base_dir(file);
    let Some(mut head) = root.table(s, "node") else {
        s.error(&root.span.clone(), "missing table [node] (a node file starts with [node] name = \"…\", role = \"…\")");
        return None;
    };
    let name: Option<Spanned<String>> = head.req(s, "name");
    if let Some(n) = &name
        && crate::site::check_site_id(n.get_ref()).is_err()
    {
        s.error(&n.span(), format!("node name `{}` must be lower-case letters, digits and inner hyphens", n.get_ref()));
    }
    let role: Role = head.req(s, "role")?;
    let pop = decode_pop(s, &mut head, role);
    let proxy_role = matches!(role, Role::Edge | Role::Shield);
    let site_files: Vec<Spanned<String>> = if proxy_role { head.or(s, "sites", Vec::new()) } else { Vec::new() };
    let access_log = if proxy_role {
        match head.opt::<String>(s, "access_log").as_deref() {
            None | Some("stdout") => AccessLog::Stdout,
            Some("off") => AccessLog::Off,
            Some(path) => AccessLog::File(base.join(path)),
        }
    } else {
        AccessLog::Off
    };
    head.finish(s);

    // Sections that exist but the role does not use.
    for section in schema::sections(FileKind::Node).filter(|sec| sec.name != "node" && !sec.name.contains('.')) {
        if !role.uses(section.name) && root.has(section.name) {
            let span = root.span_of(section.name);
            s.error(&span, format!("[{}] is not used by a {} node", section.name, role.as_str()));
        }
    }

    let listen = decode_listen(s, root, role);
    let mut tls = match root.table(s, "tls").filter(|_| role.uses("tls")) {
        Some(mut t) => decode_tls(s, &mut t, role, &base),
        None => NodeTls::default(),
    };
    tls.site_cert_dirs.insert(0, base.clone());
    if role == Role::Control
        && let Some(l) = &listen
        && !l.https.is_empty()
        && tls.cert.is_none()
    {
        s.error(&root.span.clone(), "listen.https needs [tls] cert and key for the API");
    }
    let limits = match root.table(s, "limits").filter(|_| role.uses("limits")) {
        Some(mut t) => decode_limits(s, &mut t),
        None => Limits::default(),
    };
    let control = if role.uses("control") {
        root.table(s, "control").and_then(|mut t| {
            let url: Option<Uri> = t.req(s, "url");
            let token_file: Option<String> = t.req(s, "token_file");
            let ca = t.opt::<Spanned<String>>(s, "ca").map(|p| s.later(&p.span(), base.join(p.get_ref()), Need::File));
            t.finish(s);
            Some(ControlLink { url: url?, token_file: base.join(token_file?), ca })
        })
    } else {
        None
    };

    for f in &site_files {
        s.later(&f.span(), base.join(f.get_ref()), Need::SiteFile);
    }
    // Loaded when the node is resolved.
    let sites = Vec::new();
    let role_config = match role {
        Role::Edge | Role::Shield => {
            let cache = decode_cache_storage(s, root, &base);
            let proxy = ProxyNode { cache: cache?, access_log, sites };
            if role == Role::Edge {
                let upstream = decode_upstream(s, root)?;
                RoleConfig::Edge(EdgeNode { proxy, upstream })
            } else {
                RoleConfig::Shield(proxy)
            }
        }
        Role::Control => RoleConfig::Control(decode_control(s, root, &base)?),
        Role::Dns => RoleConfig::Dns(decode_dns(s, root, &base, control.is_some())?),
        Role::Origin => {
            let dir = root.table(s, "origin").and_then(|mut t| {
                let dir =
                    t.opt::<Spanned<String>>(s, "dir").map(|d| s.later(&d.span(), base.join(d.get_ref()), Need::Dir));
                t.finish(s);
                dir
            });
            RoleConfig::Origin(OriginNode { dir })
        }
    };
    Some(NodeConfig {
        file: file.to_path_buf(),
        name: name?.into_inner(),
        pop,
        listen: listen?,
        limits,
        tls,
        control,
        role: role_config,
        pending: Vec::new(),
    })
}

fn coordinate(s: &mut Sink<'_>, t: &mut Table<'_, '_>, key: &'static str, limit: f64) -> Option<f64> {
    let v: Spanned<f64> = t.req(s, key)?;
    if v.get_ref().abs() > limit {
        s.error(&v.span(), format!("{key} must be between -{limit} and {limit}"));
        return None;
    }
    Some(v.into_inner())
}

fn decode_pop(s: &mut Sink<'_>, head: &mut Table<'_, '_>, role: Role) -> Option<Pop> {
    if !matches!(role, Role::Edge | Role::Shield) {
        return None;
    }
    // Edges need their location for DNS steering; shields only a name.
    if role == Role::Shield && !head.has("pop") {
        return None;
    }
    let name: String = head.req(s, "pop")?;
    if role == Role::Shield && !head.has("latitude") {
        return Some(Pop { name, latitude: 0.0, longitude: 0.0 });
    }
    let latitude = coordinate(s, head, "latitude", 90.0);
    let longitude = coordinate(s, head, "longitude", 180.0);
    Some(Pop { name, latitude: latitude?, longitude: longitude? })
}

fn decode_listen(s: &mut Sink<'_>, root: &mut Table<'_, '_>, role: Role) -> Option<Listen> {
    let Some(mut t) = root.table(s, "listen") else {
        s.error(&root.span.clone(), format!("missing table [listen] for a {} node", role.as_str()));
        return None;
    };
    for key in ["http", "https", "admin", "dns"] {
        if !role.listens(key) && t.has(key) {
            let span = t.span_of(key);
            s.error(&span, format!("listen.{key} is not used by a {} node", role.as_str()));
        }
    }
    let listen = Listen {
        http: if role.listens("http") { t.or(s, "http", Vec::new()) } else { Vec::new() },
        https: if role.listens("https") { t.or(s, "https", Vec::new()) } else { Vec::new() },
        admin: if role.listens("admin") { t.opt(s, "admin") } else { None },
        dns: if role.listens("dns") { t.req(s, "dns") } else { None },
    };
    let serves_http = matches!(role, Role::Edge | Role::Shield | Role::Control | Role::Origin);
    if serves_http && listen.http.is_empty() && listen.https.is_empty() {
        s.error(&t.span.clone(), format!("a {} node needs at least one listen.http address", role.as_str()));
    }
    if role == Role::Control && listen.http.len() + listen.https.len() > 1 {
        s.error(&t.span.clone(), "the control plane's API listens on one address, http or https");
    }
    t.finish(s);
    Some(listen)
}

fn decode_tls(s: &mut Sink<'_>, t: &mut Table<'_, '_>, role: Role, base: &Path) -> NodeTls {
    let mut file = |s: &mut Sink<'_>, t: &mut Table<'_, '_>, key: &'static str| {
        t.opt::<Spanned<String>>(s, key).map(|p| s.later(&p.span(), base.join(p.get_ref()), Need::File))
    };
    let pair = |s: &mut Sink<'_>,
                t: &mut Table<'_, '_>,
                file: &mut dyn FnMut(&mut Sink<'_>, &mut Table<'_, '_>, &'static str) -> Option<PathBuf>,
                cert: &'static str,
                key: &'static str| {
        let (has_cert, has_key) = (t.has(cert), t.has(key));
        let pair = (file(s, t, cert), file(s, t, key));
        if has_cert != has_key {
            let (present, missing) = if has_cert { (cert, key) } else { (key, cert) };
            s.error(&t.span_of(present), format!("tls.{present} needs tls.{missing} beside it"));
        }
        match pair {
            (Some(cert), Some(key)) => Some(CertFiles { cert, key }),
            _ => None,
        }
    };
    let cert = pair(s, t, &mut file, "cert", "key");
    if role == Role::Control {
        if cert.is_none() && !t.has("cert") {
            s.error(&t.span.clone(), "[tls] of the control plane needs cert and key");
        }
        t.finish(s);
        return NodeTls { cert, ..NodeTls::default() };
    }
    let unknown_sni = t.or(s, "unknown_sni", UnknownSni::Reject);
    if unknown_sni == UnknownSni::Default && !t.has("cert") {
        s.error(
            &t.span_of("unknown_sni"),
            "unknown_sni = \"default\" needs the default certificate: tls.cert and tls.key",
        );
    }
    let client_ca = file(s, t, "client_ca");
    let upstream_ca = file(s, t, "upstream_ca");
    let upstream_cert = pair(s, t, &mut file, "upstream_cert", "upstream_key");
    // A folder need not exist yet (`outpost up` makes its own at start).
    let dirs: Vec<String> = t.or(s, "site_cert_dirs", Vec::new());
    let site_cert_dirs = dirs.iter().map(|d| base.join(d)).collect();
    t.finish(s);
    NodeTls { cert, unknown_sni, client_ca, upstream_ca, upstream_cert, site_cert_dirs }
}

impl Decode for UnknownSni {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "\"reject\" or \"default\"", |t| match t {
            "reject" => Ok(UnknownSni::Reject),
            "default" => Ok(UnknownSni::Default),
            _ => Err(format!("tls.unknown_sni must be \"reject\" or \"default\", found `{t}`")),
        })
    }
}

fn decode_limits(s: &mut Sink<'_>, t: &mut Table<'_, '_>) -> Limits {
    let d = Limits::default();
    let header_bytes = t.opt::<Spanned<ByteSize>>(s, "header_bytes");
    let max_header_bytes = match header_bytes {
        Some(b) if !(1024..=1 << 20).contains(&b.get_ref().0) => {
            s.error(&b.span(), "header_bytes must be between 1KiB and 1MiB");
            d.max_header_bytes
        }
        Some(b) => b.get_ref().0,
        None => d.max_header_bytes,
    };
    let max_headers = positive(s, t, "headers", d.max_headers);
    let max_request_body = t.opt::<ByteSize>(s, "body").map_or(d.max_request_body, |b| b.0);
    let mut timeout = |s: &mut Sink<'_>, key: &'static str, default: Duration| match t.opt::<Spanned<Duration>>(s, key)
    {
        Some(v) if v.get_ref().is_zero() => {
            s.error(&v.span(), format!("{key} must be longer than zero"));
            default
        }
        Some(v) => v.into_inner(),
        None => default,
    };
    let header_read_timeout = timeout(s, "header_read_timeout", d.header_read_timeout);
    let idle_timeout = timeout(s, "idle_timeout", d.idle_timeout);
    let send_timeout = timeout(s, "send_timeout", d.send_timeout);
    let shutdown_grace = timeout(s, "shutdown_grace", d.shutdown_grace);
    let max_connections = positive(s, t, "max_connections", d.max_connections);
    t.finish(s);
    Limits {
        max_header_bytes,
        max_headers,
        max_request_body,
        header_read_timeout,
        idle_timeout,
        send_timeout,
        max_connections,
        shutdown_grace,
    }
}

fn decode_cache_storage(s: &mut Sink<'_>, root: &mut Table<'_, '_>, base: &Path) -> Option<CacheStorage> {
    let Some(mut t) = root.table(s, "cache") else {
        s.error(&root.span.clone(), "missing table [cache] (memory, disk and path of the object cache)");
        return None;
    };
    let memory: Option<Spanned<ByteSize>> = t.req(s, "memory");
    if let Some(m) = &memory
        && m.get_ref().0 < 1 << 20
    {
        s.error(&m.span(), "cache.memory must be at least 1MiB");
    }
    let disk = t.or(s, "disk", ByteSize(0)).0;
    let path: Option<Spanned<String>> = t.opt(s, "path");
    let path = match path {
        Some(p) => Some(s.later(&p.span(), base.join(p.get_ref()), Need::WritableDir("cache path"))),
        None if disk > 0 => {
            s.error(&t.span.clone(), "cache.disk is set but cache.path is missing");
            None
        }
        None => None,
    };
    if disk > 0 && disk < 16 << 20 {
        s.error(&t.span_of("disk"), "cache.disk must be 0 (memory only) or at least 16MiB");
    }
    t.finish(s);
    Some(CacheStorage { memory: memory?.get_ref().0, disk, path })
}

fn decode_upstream(s: &mut Sink<'_>, root: &mut Table<'_, '_>) -> Option<Upstream> {
    let mut t = match root.table(s, "upstream") {
        Some(t) => t,
        None => {
            s.error(&root.span.clone(), "an edge needs [upstream] with shields, or mode = \"origin\"");
            return None;
        }
    };
    let mode = t.or(s, "mode", UpstreamMode::Shield);
    let shields: Vec<ShieldAddr> = t.or(s, "shields", Vec::new());
    if mode == UpstreamMode::Shield && shields.is_empty() {
        s.error(
            &t.span_of("shields"),
            "upstream.shields is empty but mode is \"shield\": list the shields or set mode = \"origin\"",
        );
    }
    let probe_interval = t.or(s, "probe_interval", DEFAULT_SHIELD_PROBE_INTERVAL);
    t.finish(s);
    Some(Upstream { mode, shields, probe_interval })
}

impl Decode for UpstreamMode {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "\"shield\" or \"origin\"", |t| match t {
            "shield" => Ok(UpstreamMode::Shield),
            "origin" => Ok(UpstreamMode::Origin),
            _ => Err(format!("upstream.mode must be \"shield\" or \"origin\", found `{t}`")),
        })
    }
}

fn decode_control(s: &mut Sink<'_>, root: &mut Table<'_, '_>, base: &Path) -> Option<ControlNode> {
    let Some(mut store) = root.table(s, "store") else {
        s.error(&root.span.clone(), "missing table [store] (path of the control plane's database)");
        return None;
    };
    let path = store.req::<Spanned<String>>(s, "path").map(|p| {
        let full = base.join(p.get_ref());
        let folder = full.parent().map_or_else(|| base.to_path_buf(), Path::to_path_buf);
        s.later(&p.span(), folder, Need::WritableDir("store folder"));
        full
    });
    let log_retention = store.or(s, "log_retention", DEFAULT_LOG_RETENTION);
    let node_expiry = match store.opt::<Spanned<Duration>>(s, "node_expiry") {
        Some(d) if d.get_ref().is_zero() => {
            s.error(&d.span(), "node_expiry must be longer than zero");
            DEFAULT_NODE_EXPIRY
        }
        Some(d) => d.into_inner(),
        None => DEFAULT_NODE_EXPIRY,
    };
    store.finish(s);
    let Some(mut auth) = root.table(s, "auth") else {
        s.error(&root.span.clone(), "missing table [auth] (admin_token_file and node_token_file)");
        return None;
    };
    let admin: Option<String> = auth.req(s, "admin_token_file");
    let node: Option<String> = auth.req(s, "node_token_file");
    auth.finish(s);
    Some(ControlNode {
        store: path?,
        log_retention,
        node_expiry,
        admin_token_file: base.join(admin?),
        node_token_file: base.join(node?),
    })
}

fn decode_dns(s: &mut Sink<'_>, root: &mut Table<'_, '_>, base: &Path, has_control: bool) -> Option<DnsNode> {
    let Some(mut t) = root.table(s, "dns") else {
        s.error(&root.span.clone(), "missing table [dns] (zone, geoip, pops)");
        return None;
    };
    let zone = t.req::<Spanned<String>>(s, "zone").and_then(|z| match normalise_zone(z.get_ref()) {
        Ok(zone) => Some(zone),
        Err(m) => {
            s.error(&z.span(), m);
            None
        }
    });
    let ttl = match t.opt::<Spanned<Duration>>(s, "ttl") {
        Some(v) if v.get_ref().as_secs() == 0 || v.get_ref().as_secs() > 86_400 => {
            s.error(&v.span(), "dns.ttl must be between 1s and 1 day");
            DEFAULT_DNS_TTL
        }
        Some(v) => v.into_inner(),
        None => DEFAULT_DNS_TTL,
    };
    let geoip: Option<String> = t.req(s, "geoip");
    let nameservers: Vec<String> = t.or(s, "nameservers", Vec::new());
    let sites: Vec<Spanned<String>> = t.or(s, "sites", Vec::new());
    for id in &sites {
        if let Err(m) = crate::site::check_site_id(id.get_ref()) {
            s.error(&id.span(), m);
        }
    }
    let default_pop: Option<Spanned<String>> = t.req(s, "default_pop");
    let pops: Vec<DnsPop> = t
        .tables(s, "pop")
        .into_iter()
        .filter_map(|mut p| {
            let name: Option<String> = p.req(s, "name");
            let latitude = coordinate(s, &mut p, "latitude", 90.0);
            let longitude = coordinate(s, &mut p, "longitude", 180.0);
            let edges: Vec<IpAddr> = p.or(s, "edges", Vec::new());
            let networks: Vec<ipnet::IpNet> = p.or(s, "networks", Vec::new());
            if edges.is_empty() && !has_control {
                s.error(&p.span.clone(), "a PoP needs static edges when there is no [control] to report them");
            } else if edges.is_empty() && networks.is_empty() {
                s.error(
                    &p.span.clone(),
                    "a PoP needs `edges` or `networks`: DNS answers only with the addresses they allow",
                );
            }
            p.finish(s);
            Some(DnsPop { name: name?, latitude: latitude?, longitude: longitude?, edges, networks })
        })
        .collect();
    if pops.is_empty() {
        s.error(&t.span.clone(), "dns needs at least one [[dns.pop]]");
    }
    let mut map = |s: &mut Sink<'_>, key: &'static str, valid: &dyn Fn(&str) -> bool| {
        let mut out = BTreeMap::new();
        if let Some(m) = t.table(s, key) {
            for (k, v) in m.entries() {
                if !valid(k.get_ref()) {
                    s.error(&k.span(), format!("`{}` is not a code for dns.{key}", k.get_ref()));
                }
                if let Some(pop) = <Spanned<String>>::decode(s, v) {
                    if !pops.iter().any(|p| p.name == *pop.get_ref()) {
                        s.error(&pop.span(), format!("no [[dns.pop]] is named `{}`", pop.get_ref()));
                    }
                    out.insert(k.get_ref().to_string(), pop.into_inner());
                }
            }
        }
        out
    };
    let countries = map(s, "countries", &|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()));
    let continents = map(s, "continents", &|c| ["AF", "AN", "AS", "EU", "NA", "OC", "SA"].contains(&c));
    if let Some(d) = &default_pop
        && !pops.is_empty()
        && !pops.iter().any(|p| p.name == *d.get_ref())
    {
        s.error(&d.span(), format!("default_pop `{}` is not one of the [[dns.pop]] names", d.get_ref()));
    }
    t.finish(s);
    Some(DnsNode {
        zone: zone?,
        ttl,
        geoip: base.join(geoip?),
        nameservers,
        pops,
        default_pop: default_pop?.into_inner(),
        countries,
        continents,
        sites: sites.into_iter().map(Spanned::into_inner).collect(),
    })
}

/// `cdn.example.test` or `cdn.example.test.` → `cdn.example.test.`.
fn normalise_zone(text: &str) -> Result<String, String> {
    let name = text.trim_end_matches('.');
    match crate::units::HostPattern::parse(name) {
        Ok(crate::units::HostPattern::Exact(n)) => Ok(format!("{n}.")),
        _ => Err(format!("`{text}` is not a DNS zone name")),
    }
}

impl Decode for IpAddr {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "an IP address", |t| t.parse().map_err(|_| format!("`{t}` is not an IP address")))
    }
}

impl Decode for ipnet::IpNet {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "a network such as \"192.0.2.0/24\"", |t| {
            t.parse().map_err(|_| format!("`{t}` is not a network such as 192.0.2.0/24"))
        })
    }
}
