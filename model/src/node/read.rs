//! Reading a node file's tables into a [`NodeConfig`]: each section's
//! keys, values and the rules between them. Paths are noted, not touched.

use std::path::Path;
use std::time::Duration;

/// The most `[limits] headers` may be: hyper reserves a slot for each on
/// every request it reads.
const MAX_HEADERS_LIMIT: u32 = 10_000;

use http::Uri;
use toml::Spanned;

use super::*;
use crate::decode::{ByteSize, Decode, Table, Val, parse_str, positive};
use crate::diag::{Need, Sink, base_dir};
use crate::schema::{self, FileKind};

/// Reads a node file's tables: stages 1 and 2, and the paths it names
/// noted for stage 3.
pub(super) fn decode_node(s: &mut Sink<'_>, root: &mut Table<'_, '_>, file: &Path) -> Option<NodeConfig> {
    let base = base_dir(file);
    let head = decode_head(s, root, &base)?;
    let role = head.role;
    unused_sections(s, root, role);
    let listen = decode_listen(s, root, role);
    let tls = node_tls(s, root, role, &base, listen.as_ref());
    let limits = match root.table(s, "limits").filter(|_| role.uses("limits")) {
        Some(mut t) => decode_limits(s, &mut t, Limits::for_role(role)),
        None => Limits::for_role(role),
    };
    let control = if role.uses("control") { decode_control_link(s, root, &base) } else { None };
    let role_config = decode_role(s, root, &base, head.access_log, role, control.is_some());
    Some(NodeConfig {
        file: file.to_path_buf(),
        name: head.name?,
        pop: head.pop,
        listen: listen?,
        limits,
        tls,
        control,
        role: role_config?,
        pending: Vec::new(),
    })
}

/// What `[node]` says.
struct Head {
    name: Option<String>,
    role: Role,
    pop: Option<Pop>,
    access_log: AccessLog,
}

fn decode_head(s: &mut Sink<'_>, root: &mut Table<'_, '_>, base: &Path) -> Option<Head> {
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
    // Loaded when the node is resolved.
    for f in &site_files {
        s.later(&f.span(), base.join(f.get_ref()), Need::SiteFile);
    }
    let access_log = if proxy_role {
        let log: Option<Spanned<String>> = head.opt(s, "access_log");
        match log.as_ref().map(|l| l.get_ref().as_str()) {
            None | Some("stdout") => AccessLog::Stdout,
            Some("off") => AccessLog::Off,
            Some(path) => {
                let file = base.join(path);
                // Its folder is made at start if need be: checked now, with
                // this line, rather than failing the start without it.
                if let (Some(l), Some(folder)) = (&log, file.parent()) {
                    s.later(&l.span(), folder.to_path_buf(), Need::WritableDir("access log folder"));
                }
                AccessLog::File(file)
            }
        }
    } else {
        AccessLog::Off
    };
    head.finish(s);
    Some(Head { name: name.map(Spanned::into_inner), role, pop, access_log })
}

/// Sections that exist but the role does not use.
fn unused_sections(s: &mut Sink<'_>, root: &mut Table<'_, '_>, role: Role) {
    for section in schema::sections(FileKind::Node).filter(|sec| sec.name != "node" && !sec.name.contains('.')) {
        if !role.uses(section.name) && root.has(section.name) {
            let span = root.span_of(section.name);
            s.error(&span, format!("[{}] is not used by a {} node", section.name, role.as_str()));
        }
    }
}

fn node_tls(s: &mut Sink<'_>, root: &mut Table<'_, '_>, role: Role, base: &Path, listen: Option<&Listen>) -> NodeTls {
    let mut tls = match root.table(s, "tls").filter(|_| role.uses("tls")) {
        Some(mut t) => decode_tls(s, &mut t, role, base, listen),
        None => NodeTls::default(),
    };
    tls.site_cert_dirs.insert(0, base.to_path_buf());
    if role == Role::Control && listen.is_some_and(|l| !l.https.is_empty()) && tls.cert.is_none() {
        s.error(&root.span.clone(), "listen.https needs [tls] cert and key for the API");
    }
    tls
}

fn decode_control_link(s: &mut Sink<'_>, root: &mut Table<'_, '_>, base: &Path) -> Option<ControlLink> {
    let mut t = root.table(s, "control")?;
    let url: Option<Uri> = t.opt(s, "url");
    let urls: Option<Spanned<Vec<Uri>>> = t.opt(s, "urls");
    let urls = match (url, urls) {
        (Some(u), None) => Some(vec![u]),
        (None, Some(list)) if !list.get_ref().is_empty() => Some(list.into_inner()),
        (None, Some(list)) => {
            s.error(&list.span(), "urls must name at least one control-plane replica");
            None
        }
        (None, None) => {
            s.error(&t.span.clone(), "missing key `url` (or `urls`, one per control-plane replica)");
            None
        }
        (Some(_), Some(list)) => {
            s.error(&list.span(), "give `url` or `urls`, not both");
            None
        }
    };
    let token_file: Option<String> = t.req(s, "token_file");
    let ca = t.opt::<Spanned<String>>(s, "ca").map(|p| s.later(&p.span(), base.join(p.get_ref()), Need::File));
    t.finish(s);
    Some(ControlLink { urls: urls?, token_file: base.join(token_file?), ca })
}

/// The role's own sections.
fn decode_role(
    s: &mut Sink<'_>,
    root: &mut Table<'_, '_>,
    base: &Path,
    access_log: AccessLog,
    role: Role,
    has_control: bool,
) -> Option<RoleConfig> {
    Some(match role {
        Role::Edge | Role::Shield => {
            let cache = decode_cache_storage(s, root, base);
            // Sites are loaded when the node is resolved.
            let proxy = ProxyNode { cache: cache?, access_log, sites: Vec::new() };
            if role == Role::Edge {
                let upstream = decode_upstream(s, root)?;
                RoleConfig::Edge(EdgeNode { proxy, upstream })
            } else {
                RoleConfig::Shield(proxy)
            }
        }
        Role::Control => RoleConfig::Control(decode_control(s, root, base)?),
        Role::Dns => RoleConfig::Dns(super::dns::decode_dns(s, root, base, has_control)?),
        Role::Origin => {
            let dir = root.table(s, "origin").and_then(|mut t| {
                let dir =
                    t.opt::<Spanned<String>>(s, "dir").map(|d| s.later(&d.span(), base.join(d.get_ref()), Need::Dir));
                t.finish(s);
                dir
            });
            RoleConfig::Origin(OriginNode { dir })
        }
    })
}

pub(super) fn coordinate(s: &mut Sink<'_>, t: &mut Table<'_, '_>, key: &'static str, limit: f64) -> Option<f64> {
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
    for key in ["http", "https", "quic", "admin", "dns"] {
        if !role.listens(key) && t.has(key) {
            let span = t.span_of(key);
            s.error(&span, format!("listen.{key} is not used by a {} node", role.as_str()));
        }
    }
    let listen = Listen {
        http: if role.listens("http") { t.or(s, "http", Vec::new()) } else { Vec::new() },
        https: if role.listens("https") { t.or(s, "https", Vec::new()) } else { Vec::new() },
        quic: if role.listens("quic") { t.or(s, "quic", Vec::new()) } else { Vec::new() },
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

fn decode_tls(s: &mut Sink<'_>, t: &mut Table<'_, '_>, role: Role, base: &Path, listen: Option<&Listen>) -> NodeTls {
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
    // A shield trusts what its edges say of their clients (the scheme, how
    // far they follow the control plane): one that asks edges for their
    // certificate takes that only from them.
    if role == Role::Shield && t.has("client_ca") && listen.is_some_and(|l| !l.http.is_empty()) {
        s.error(
            &t.span_of("client_ca"),
            "a shield that requires edges' certificates (client_ca) cannot also listen on listen.http, \
             where any client would pass for an edge",
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

fn decode_limits(s: &mut Sink<'_>, t: &mut Table<'_, '_>, d: Limits) -> Limits {
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
    let max_headers = if max_headers > MAX_HEADERS_LIMIT {
        s.error(
            &t.span_of("headers"),
            format!("headers must be at most {MAX_HEADERS_LIMIT}: each request reserves room for that many"),
        );
        d.max_headers
    } else {
        max_headers
    };
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
    let body_read_timeout = timeout(s, "body_read_timeout", d.body_read_timeout);
    let shutdown_grace = timeout(s, "shutdown_grace", d.shutdown_grace);
    let send_min_rate = match t.opt::<Spanned<ByteSize>>(s, "send_min_rate") {
        Some(b) if b.get_ref().0 > MAX_SEND_MIN_RATE => {
            s.error(&b.span(), "send_min_rate must be at most 1GiB (a second)");
            d.send_min_rate
        }
        Some(b) => b.get_ref().0,
        None => d.send_min_rate,
    };
    let max_connections = positive(s, t, "max_connections", d.max_connections);
    let listen_backlog = positive(s, t, "listen_backlog", d.listen_backlog);
    let quic_streams = positive(s, t, "quic_streams", d.quic_streams);
    let fetches_per_connection = t.or(s, "fetches_per_connection", d.fetches_per_connection);
    let fetches_per_network = t.or(s, "fetches_per_network", d.fetches_per_network);
    // On an edge, a quarter of the places, however many there are.
    let quarter = if d.connections_per_network == 0 { 0 } else { max_connections.div_ceil(4) };
    let connections_per_network = t.or(s, "connections_per_network", quarter);
    t.finish(s);
    Limits {
        max_header_bytes,
        max_headers,
        max_request_body,
        header_read_timeout,
        idle_timeout,
        send_timeout,
        body_read_timeout,
        send_min_rate,
        max_connections,
        listen_backlog,
        shutdown_grace,
        quic_streams,
        fetches_per_connection,
        fetches_per_network,
        connections_per_network,
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
    let large_bodies = match t.opt::<Spanned<u8>>(s, "large_bodies") {
        Some(v) if *v.get_ref() > 90 => {
            s.error(&v.span(), "cache.large_bodies is a percentage of cache.disk from 0 to 90");
            DEFAULT_LARGE_BODIES
        }
        Some(v) => v.into_inner(),
        None => DEFAULT_LARGE_BODIES,
    };
    t.finish(s);
    Some(CacheStorage { memory: memory?.get_ref().0, disk, path, large_bodies })
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
    if probe_interval.is_zero() {
        s.error(&t.span_of("probe_interval"), "probe_interval must be longer than zero");
    }
    let http2 = t.or(s, "http2", true);
    t.finish(s);
    Some(Upstream { mode, shields, probe_interval, http2 })
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
    let backend = decode_store_backend(s, &mut store, base);
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
    let shared_node_token: Option<bool> = auth.opt(s, "shared_node_token");
    let viewer: Option<String> = auth.opt(s, "viewer_token_file");
    auth.finish(s);
    let acme = root.table(s, "acme").and_then(|mut t| decode_acme(s, &mut t, base));
    Some(ControlNode {
        store: backend?,
        log_retention,
        node_expiry,
        admin_token_file: base.join(admin?),
        node_token_file: base.join(node?),
        shared_node_token: shared_node_token.unwrap_or(true),
        viewer_token_file: viewer.map(|v| base.join(v)),
        acme,
    })
}

fn decode_acme(s: &mut Sink<'_>, t: &mut Table<'_, '_>, base: &Path) -> Option<AcmeConfig> {
    let directory: Option<Spanned<String>> = t.req(s, "directory");
    if let Some(d) = &directory
        && !d.get_ref().starts_with("https://")
    {
        s.error(&d.span(), format!("ACME directory `{}` must be an https:// URL (RFC 8555 §6.1)", d.get_ref()));
    }
    let contact: Spanned<Vec<String>> = t.or(s, "contact", Spanned::new(0..0, Vec::new()));
    for c in contact.get_ref() {
        if !c.starts_with("mailto:") || c.len() <= "mailto:".len() {
            s.error(&contact.span(), format!("ACME contact `{c}` must be a mailto: URL"));
        }
    }
    let ca = t.opt::<String>(s, "ca").map(|p| base.join(p));
    let check_every = match t.opt::<Spanned<Duration>>(s, "check_every") {
        Some(d) if d.get_ref().is_zero() => {
            s.error(&d.span(), "check_every must be longer than zero");
            DEFAULT_ACME_CHECK
        }
        Some(d) => d.into_inner(),
        None => DEFAULT_ACME_CHECK,
    };
    t.finish(s);
    Some(AcmeConfig { directory: directory?.into_inner(), contact: contact.into_inner(), ca, check_every })
}

/// `[store] backend` and the keys of the backend it names.
fn decode_store_backend(s: &mut Sink<'_>, store: &mut Table<'_, '_>, base: &Path) -> Option<StoreBackend> {
    let backend = store.opt::<Spanned<String>>(s, "backend");
    let file = |s: &mut Sink<'_>, p: Spanned<String>| s.later(&p.span(), base.join(p.get_ref()), Need::File);
    match backend.as_ref().map(|b| b.get_ref().as_str()) {
        None | Some("redb") => {
            let path = store.req::<Spanned<String>>(s, "path").map(|p| {
                let full = base.join(p.get_ref());
                let folder = full.parent().map_or_else(|| base.to_path_buf(), Path::to_path_buf);
                s.later(&p.span(), folder, Need::WritableDir("store folder"));
                full
            });
            Some(StoreBackend::Redb { path: path? })
        }
        Some("etcd") => {
            if let Some(p) = store.opt::<Spanned<String>>(s, "path") {
                s.error(&p.span(), "path is for backend = \"redb\": an etcd store keeps no file");
            }
            let endpoints: Option<Spanned<Vec<String>>> = store.req(s, "endpoints");
            if let Some(e) = &endpoints {
                if e.get_ref().is_empty() {
                    s.error(&e.span(), "endpoints must name at least one etcd member");
                }
                for url in e.get_ref() {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        s.error(&e.span(), format!("etcd endpoint `{url}` must start with http:// or https://"));
                    }
                }
            }
            let prefix = store.or(s, "prefix", DEFAULT_ETCD_PREFIX.to_string());
            let ca = store.opt::<Spanned<String>>(s, "ca").map(|p| file(s, p));
            let cert = store.opt::<Spanned<String>>(s, "cert").map(|p| file(s, p));
            let key = store.opt::<Spanned<String>>(s, "key").map(|p| file(s, p));
            let identity = both(s, store, (cert, key), "cert and key");
            let user: Option<String> = store.opt(s, "user");
            let password = store.opt::<Spanned<String>>(s, "password_file").map(|p| file(s, p));
            let user = both(s, store, (user, password), "user and password_file");
            let compact_every = store.or(s, "compact_every", DEFAULT_ETCD_COMPACT_EVERY);
            Some(StoreBackend::Etcd(EtcdStore {
                endpoints: endpoints?.into_inner(),
                prefix,
                ca,
                identity,
                user,
                compact_every,
            }))
        }
        Some(other) => {
            let span = backend.as_ref().map(|b| b.span()).unwrap_or_default();
            s.error(&span, format!("store backend must be \"redb\" or \"etcd\", found `{other}`"));
            None
        }
    }
}

/// Two keys that go together: both, or neither (`what` names them).
fn both<A, B>(s: &mut Sink<'_>, t: &Table<'_, '_>, pair: (Option<A>, Option<B>), what: &str) -> Option<(A, B)> {
    match pair {
        (Some(a), Some(b)) => Some((a, b)),
        (None, None) => None,
        _ => {
            s.error(&t.span.clone(), format!("{what} go together: give both or neither"));
            None
        }
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
