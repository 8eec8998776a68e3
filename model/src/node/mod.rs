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

use crate::decode::Table;
use crate::diag::{ConfigError, Pending, Sink};
use crate::schema::{self, FileKind};
use crate::site::Site;

mod dns;
mod read;

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
/// A request body forwarded upstream that the client sends nothing of for
/// this long fails: a client that sends a head and withholds its body
/// holds an exchange with the origin no longer.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes a second a client must take, on average over each
/// `send_timeout`, once the node's writes to it wait: a client that takes
/// a byte now and then holds a connection (and what its response keeps
/// alive) no longer than one that takes none. Far below any real link.
pub const DEFAULT_SEND_MIN_RATE: u64 = 1024;
/// The highest `send_min_rate` a node file may set.
pub const MAX_SEND_MIN_RATE: u64 = 1 << 30;
/// Open client connections per node. At the cap, the connection idle the
/// longest is closed to make room; new ones wait only while all are busy.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Connections the kernel may queue for a listener before it accepts them
/// (Linux caps this at `net.core.somaxconn`).
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
/// How long a stopping node lets in-flight responses finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// A node silent this long leaves the control plane's registry: a day
/// rides out any outage an operator would still want to see in `status`.
pub const DEFAULT_NODE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Requests open at once on one HTTP/3 connection (HTTP/2's usual 100).
pub const DEFAULT_QUIC_STREAMS: u32 = 100;
/// Upstream fetches one client connection of an edge may have running at
/// once: twice the streams an HTTP/2 connection may have open, so a client
/// that leaves a revalidation in the background for each of them never
/// meets it. A shield has no cap by default ([`Limits::for_role`]): its
/// clients are edges, each carrying all its misses over one connection.
pub const DEFAULT_FETCHES_PER_CONNECTION: u32 = 512;
/// Upstream fetches the connections of one client network (IPv4 /24, IPv6
/// /56) may have running at once on an edge: four connections' worth, so
/// a client that opens many connections leaves no more than a few would,
/// while a network of many clients behind one address (a NAT) is far
/// from it. No cap by default on a shield, whose clients are edges.
pub const DEFAULT_FETCHES_PER_NETWORK: u32 = 4 * DEFAULT_FETCHES_PER_CONNECTION;
/// How often the control plane looks at ACME certificates (1h).
pub const DEFAULT_ACME_CHECK: Duration = Duration::from_secs(3600);
/// How often an edge probes a shield it has marked down.
pub const DEFAULT_SHIELD_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Events the control plane keeps before compacting; a node further behind
/// takes a snapshot.
pub const DEFAULT_LOG_RETENTION: u64 = 100_000;
/// TTL of geo-DNS answers: short, so a failed PoP drains within half a minute.
pub const DEFAULT_DNS_TTL: Duration = Duration::from_secs(30);
/// UDP answers per second to one client network (an IPv4 /24, an IPv6
/// /56) for one name and type, or for one kind of error; past it answers
/// are dropped, every second one sent truncated instead. Resolvers cache
/// what they are told for the TTL, so one that asks as often as this is
/// rare; a flood of spoofed queries is what does.
pub const DEFAULT_DNS_RATE_LIMIT: u32 = 100;

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
    /// HTTP/3 (QUIC, UDP) listeners, with the certificates of `https`.
    /// Default: none.
    pub quic: Vec<SocketAddr>,
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
    /// Default: [`DEFAULT_BODY_READ_TIMEOUT`] (30s).
    pub body_read_timeout: Duration,
    /// Bytes per second; 0: any byte taken restarts `send_timeout`.
    /// Default: [`DEFAULT_SEND_MIN_RATE`] (1KiB).
    pub send_min_rate: u64,
    /// Default: [`DEFAULT_MAX_CONNECTIONS`] (10000).
    pub max_connections: u32,
    /// Default: [`DEFAULT_LISTEN_BACKLOG`] (4096).
    pub listen_backlog: u32,
    /// Default: [`DEFAULT_SHUTDOWN_GRACE`] (30s).
    pub shutdown_grace: Duration,
    /// Requests one HTTP/3 connection may have open at once (QUIC
    /// bidirectional streams). Default: [`DEFAULT_QUIC_STREAMS`] (100).
    pub quic_streams: u32,
    /// Upstream fetches one client connection may have running at once,
    /// counting those that outlive their requests (a stream reset before
    /// its answer, a revalidation in the background); 0: no cap. Default:
    /// [`DEFAULT_FETCHES_PER_CONNECTION`] (512) on edges, 0 on shields.
    pub fetches_per_connection: u32,
    /// The same for all the connections of one client network (IPv4 /24,
    /// IPv6 /56) together; 0: no cap. Default:
    /// [`DEFAULT_FETCHES_PER_NETWORK`] (2048) on edges, 0 on shields.
    pub fetches_per_network: u32,
    /// Open connections from one client network (IPv4 /24, IPv6 /56);
    /// past it a new one from there is closed at once. 0: no cap.
    /// Default: a quarter of `max_connections` on edges (2500 with its
    /// default); 0 elsewhere (a shield's clients, the edges, may share one
    /// network, and so may the operators of a control plane).
    pub connections_per_network: u32,
}

impl Limits {
    /// The defaults for a node of `role`.
    pub fn for_role(role: Role) -> Limits {
        match role {
            Role::Shield => Limits { fetches_per_connection: 0, fetches_per_network: 0, ..Limits::default() },
            Role::Edge => Limits { connections_per_network: DEFAULT_MAX_CONNECTIONS.div_ceil(4), ..Limits::default() },
            _ => Limits::default(),
        }
    }
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
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            send_min_rate: DEFAULT_SEND_MIN_RATE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            quic_streams: DEFAULT_QUIC_STREAMS,
            fetches_per_connection: DEFAULT_FETCHES_PER_CONNECTION,
            fetches_per_network: DEFAULT_FETCHES_PER_NETWORK,
            connections_per_network: 0,
        }
    }
}

/// How a node reaches the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlLink {
    /// `url`, or one per replica in `urls`: calls fail over from one to
    /// the next.
    pub urls: Vec<Uri>,
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
    /// Percent of `disk` for bodies of 64 KiB and more, kept as plain
    /// files; 0 keeps every body in the block device. Default:
    /// [`DEFAULT_LARGE_BODIES`] (75).
    pub large_bodies: u8,
}

/// Default share of the disk tier for large bodies, in percent.
pub const DEFAULT_LARGE_BODIES: u8 = 75;

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
    /// Speak HTTP/2 to `http://` shields (prior knowledge), every miss to
    /// a shield multiplexed on one connection. Default: `true`.
    pub http2: bool,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlNode {
    /// `[store]`: where the sites, the log and the registry live.
    pub store: StoreBackend,
    /// Default: [`DEFAULT_LOG_RETENTION`] (100000 events).
    pub log_retention: u64,
    /// A node not heard from for this long leaves the registry (it is
    /// registered again when it reconnects). Default: `24h`.
    pub node_expiry: Duration,
    pub admin_token_file: PathBuf,
    pub node_token_file: PathBuf,
    /// Whether the node token itself may open any node's stream and
    /// acknowledge for it, besides the per-node credentials derived from
    /// it. Default: true.
    pub shared_node_token: bool,
    /// A read-only token: the console's read-only sign-in and the API's
    /// reads, nothing else. Default: none.
    pub viewer_token_file: Option<PathBuf>,
    /// `[acme]`: where certificates for sites with `[tls] acme = true`
    /// come from. Default: none (such sites get no certificate).
    pub acme: Option<AcmeConfig>,
}

/// The ACME directory the control plane orders certificates from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The directory URL, `https://`.
    pub directory: String,
    /// Account contacts, such as `mailto:ops@example.com`. Default: none.
    pub contact: Vec<String>,
    /// Extra CA certificates (PEM) trusted for the directory's HTTPS, for
    /// a private or test CA. Default: none (the system's roots).
    pub ca: Option<PathBuf>,
    /// How often certificates are checked for renewal (a third of their
    /// lifetime left) and failed orders retried. Default: [`DEFAULT_ACME_CHECK`].
    pub check_every: Duration,
}

/// Where the control plane keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// `backend = "redb"` (the default): one file on this machine, for one
    /// control-plane process.
    Redb { path: PathBuf },
    /// `backend = "etcd"`: a cluster shared by any number of control-plane
    /// replicas.
    Etcd(EtcdStore),
}

/// An etcd cluster, as `[store]` with `backend = "etcd"` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdStore {
    /// Members' client URLs, `http://` or `https://`; at least one.
    pub endpoints: Vec<String>,
    /// Every key the control plane writes starts with this. Default:
    /// [`DEFAULT_ETCD_PREFIX`].
    pub prefix: String,
    /// Trusted for the members' certificates (`https` endpoints). Default: none.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key, for members that require one.
    /// Default: none.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// etcd user and the file holding its password. Default: none.
    pub user: Option<(String, PathBuf)>,
    /// How often the cluster's history is compacted to where it stood at
    /// the previous turn; zero leaves it to etcd's own
    /// `--auto-compaction-*`. Default: [`DEFAULT_ETCD_COMPACT_EVERY`].
    pub compact_every: std::time::Duration,
}

/// The key prefix of an etcd store when the node file names none.
pub const DEFAULT_ETCD_PREFIX: &str = "/outpost/";

/// How often a replica compacts an etcd cluster's history by default: each
/// acknowledgement and heartbeat writes a revision, and a history never
/// compacted fills etcd's space quota, after which it refuses every write.
pub const DEFAULT_ETCD_COMPACT_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq)]
pub struct DnsNode {
    /// Fully qualified, lower-case, ending in `.`.
    pub zone: String,
    /// Default: [`DEFAULT_DNS_TTL`] (30s).
    pub ttl: Duration,
    pub geoip: PathBuf,
    /// Fully qualified, lower-case, ending in `.`. Default: none.
    pub nameservers: Vec<String>,
    /// `[dns.glue]`: addresses of the name servers inside the zone, by
    /// their (normalised) names. Default: none.
    pub glue: BTreeMap<String, Vec<IpAddr>>,
    pub pops: Vec<DnsPop>,
    pub default_pop: String,
    /// ISO country code → PoP, for records without a location. Default: none.
    pub countries: BTreeMap<String, String>,
    /// Continent code → PoP, when the country has no entry. Default: none.
    pub continents: BTreeMap<String, String>,
    /// Site ids answered as `<id>.<zone>` until the control plane lists
    /// them. Default: none.
    pub sites: Vec<String>,
    /// Response-rate limit over UDP; 0: none. Default:
    /// [`DEFAULT_DNS_RATE_LIMIT`] (100).
    pub rate_limit: u32,
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
            let node = read::decode_node(&mut s, &mut root, file);
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

#[cfg(test)]
mod tests;
