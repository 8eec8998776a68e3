//! From a config folder (the one `outpost up` runs) to a lab: one host per
//! node file, each with its own address, and the node files rewritten so
//! that every address a node listens on becomes its host's (same port),
//! and every reference to it (upstream shields, the origin, the control
//! plane, DNS PoPs' edges) follows. With `ha`, three etcd hosts and a
//! second control-plane host join, as `up --ha` runs them on loopback.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use outpost_config::{ConfigFile, NodeConfig, Role, RoleConfig};
use serde::{Deserialize, Serialize};

use crate::roles::START_ORDER;

/// The lab's subnet: host `i` gets `.10 + i`.
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);
pub const PREFIX: u8 = 24;
const FIRST_HOST: u8 = 10;
/// etcd's client and peer ports on an etcd host.
pub const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
const ETCD_MEMBERS: usize = 3;

/// What runs on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Origin,
    Etcd,
    Control,
    Dns,
    Shield,
    Edge,
    /// Runs nothing: where clients (and `outpost lab exec`) run from.
    Client,
}

impl Kind {
    fn of(role: Role) -> Kind {
        match role {
            Role::Origin => Kind::Origin,
            Role::Control => Kind::Control,
            Role::Dns => Kind::Dns,
            Role::Shield => Kind::Shield,
            Role::Edge => Kind::Edge,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Origin => "origin",
            Kind::Etcd => "etcd",
            Kind::Control => "control",
            Kind::Dns => "dns",
            Kind::Shield => "shield",
            Kind::Edge => "edge",
            Kind::Client => "client",
        }
    }
}

/// A host of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub kind: Kind,
    pub ip: Ipv4Addr,
    /// The edge's PoP.
    pub pop: Option<String>,
    /// `etcd`, or empty for the `outpost` binary; with `args`, how the
    /// host's process starts (and restarts).
    pub program: String,
    pub args: Vec<String>,
    /// TCP ports the process listens on once it is up.
    pub ports: Vec<u16>,
    /// Its node file, when it has one.
    pub node_file: Option<PathBuf>,
}

impl Host {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// The first port the host serves HTTP (or etcd, or DNS) on.
    pub fn port(&self) -> Option<u16> {
        self.ports.first().copied()
    }
}

/// The whole lab: its name (namespaces are `ol-<name>-<host>`), folder and
/// hosts, in start order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub dir: PathBuf,
    pub hosts: Vec<Host>,
    /// The site files, pushed through the control plane once it is up.
    pub site_files: Vec<PathBuf>,
    /// The admin token file the control plane writes.
    pub admin_token: Option<PathBuf>,
}

impl Plan {
    pub fn host(&self, name: &str) -> anyhow::Result<(usize, &Host)> {
        self.hosts.iter().enumerate().find(|(_, h)| h.name == name).with_context(|| {
            let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            format!("no host `{name}` in the lab (hosts: {})", names.join(", "))
        })
    }

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(move |h| h.kind == kind)
    }

    /// The control plane's URLs, one per replica.
    pub fn control_urls(&self) -> Vec<String> {
        self.of_kind(Kind::Control).filter_map(|h| h.port().map(|p| format!("http://{}", h.addr(p)))).collect()
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    pub fn log(&self, host: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{host}.log"))
    }
}

/// Where each node's addresses go.
#[derive(Debug, Default)]
struct Moves {
    addrs: HashMap<SocketAddr, SocketAddr>,
    /// Addresses owned by exactly one node (a DNS PoP's `edges`).
    ips: HashMap<IpAddr, Option<IpAddr>>,
}

impl Moves {
    fn add(&mut self, from: SocketAddr, to: Ipv4Addr) {
        self.addrs.insert(from, SocketAddr::new(IpAddr::V4(to), from.port()));
        let owner = self.ips.entry(from.ip()).or_insert(Some(IpAddr::V4(to)));
        if *owner != Some(IpAddr::V4(to)) {
            *owner = None;
        }
    }

    /// `s` with the address it names moved; an error for a loopback
    /// address that is no node's.
    fn apply(&self, s: &str, own: Option<Ipv4Addr>) -> anyhow::Result<Option<String>> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return self.moved(a).map(|m| m.map(|m| m.to_string()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return match self.ips.get(&ip) {
                Some(Some(to)) => Ok(Some(to.to_string())),
                // Shared by several nodes, and one of this file's own node:
                // its own address (a DNS server's glue, say).
                Some(None) if own.is_some_and(|o| self.owned_by(ip, o)) => Ok(own.map(|o| o.to_string())),
                Some(None) => bail!("`{s}` is the address of several nodes; give each its own to place it"),
                None if ip.is_loopback() => bail!("`{s}` is no node's address; the lab cannot place it"),
                None => Ok(None),
            };
        }
        if let Some((scheme, rest)) = s.split_once("://") {
            let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
            if let Ok(a) = authority.parse::<SocketAddr>()
                && let Some(to) = self.moved(a)?
            {
                return Ok(Some(format!("{scheme}://{to}{path}")));
            }
        }
        Ok(None)
    }

    /// Some listen address on `ip` moved to host `host`.
    fn owned_by(&self, ip: IpAddr, host: Ipv4Addr) -> bool {
        self.addrs.iter().any(|(from, to)| from.ip() == ip && to.ip() == IpAddr::V4(host))
    }

    fn moved(&self, a: SocketAddr) -> anyhow::Result<Option<SocketAddr>> {
        match self.addrs.get(&a) {
            Some(to) => Ok(Some(*to)),
            None if a.ip().is_loopback() => bail!("`{a}` is no node's address; the lab cannot place it"),
            None => Ok(None),
        }
    }
}

/// [`rewrite`] for every value of a table.
fn rewrite_table(t: &mut toml::Table, moves: &Moves, own: Option<Ipv4Addr>) -> anyhow::Result<()> {
    t.iter_mut().try_for_each(|(_, v)| rewrite(v, moves, own))
}

/// Moves every address in `value`, a file of the node on host `own` (none
/// for a site file).
fn rewrite(value: &mut toml::Value, moves: &Moves, own: Option<Ipv4Addr>) -> anyhow::Result<()> {
    match value {
        toml::Value::String(s) => {
            if let Some(new) = moves.apply(s, own)? {
                *s = new;
            }
        }
        toml::Value::Array(a) => a.iter_mut().try_for_each(|v| rewrite(v, moves, own))?,
        toml::Value::Table(t) => rewrite_table(t, moves, own)?,
        _ => {}
    }
    Ok(())
}

fn listens(node: &NodeConfig) -> Vec<SocketAddr> {
    let l = &node.listen;
    // The DNS port first: it is what a DNS host is for.
    let mut all: Vec<SocketAddr> =
        l.dns.into_iter().chain(l.http.iter().copied()).chain(l.https.iter().copied()).collect();
    all.extend(l.admin);
    all
}

/// Copies `from` into `to`, folders too.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create `{}`", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot read `{}`", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy `{}`", entry.path().display()))?;
        }
    }
    Ok(())
}

fn table<'a>(t: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    let v = t.entry(key.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !v.is_table() {
        *v = toml::Value::Table(toml::Table::new());
    }
    v.as_table_mut().expect("made a table above")
}

fn strings<S: ToString>(items: impl IntoIterator<Item = S>) -> toml::Value {
    toml::Value::Array(items.into_iter().map(|s| toml::Value::String(s.to_string())).collect())
}

/// The plan for a lab named `name` in folder `dir` from the node and site
/// files of `config_dir`; writes the hosts' node files into `dir/config`.
pub fn build(config_dir: &Path, dir: &Path, name: &str, ha: bool) -> anyhow::Result<Plan> {
    if name.is_empty() || name.len() > 12 || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("a lab's name is 1 to 12 letters or digits (it names the namespaces), not `{name}`");
    }
    let (nodes, sites) = load_folder(config_dir)?;
    let config = dir.join("config");
    if config.exists() {
        std::fs::remove_dir_all(&config).with_context(|| format!("cannot clear `{}`", config.display()))?;
    }
    copy_dir(config_dir, &config)?;

    // Hosts in start order, etcd's before the control plane's.
    let mut hosts: Vec<Host> = Vec::new();
    let mut moves = Moves::default();
    let mut tables: Vec<NodeTable> = Vec::new();
    for (file, node) in &nodes {
        if ha && node.role() == Role::Control && !hosts.iter().any(|h| h.kind == Kind::Etcd) {
            for i in 1..=ETCD_MEMBERS {
                let etcd = Host::etcd(format!("etcd-{i}"), host_ip(hosts.len())?);
                hosts.push(etcd);
            }
        }
        let ip = host_ip(hosts.len())?;
        for a in listens(node) {
            moves.add(a, ip);
        }
        let target = config.join(file.file_name().context("a node file without a name")?);
        let text = std::fs::read_to_string(file)?;
        tables.push((hosts.len(), target.clone(), text.parse().with_context(|| format!("`{}`", file.display()))?));
        hosts.push(Host::node(node, ip, target));
    }
    hosts.push(Host::client(host_ip(hosts.len())?));

    for (i, path, t) in &mut tables {
        rewrite_table(t, &moves, Some(hosts[*i].ip)).with_context(|| format!("in `{}`", path.display()))?;
    }
    for site in &sites {
        let target = config.join(site.file_name().context("a site file without a name")?);
        let mut t: toml::Table = std::fs::read_to_string(site)?.parse()?;
        rewrite_table(&mut t, &moves, None).with_context(|| format!("in `{}`", site.display()))?;
        std::fs::write(&target, toml::to_string(&t)?)?;
    }
    if ha {
        replicate(&mut hosts, &mut tables, dir, &config)?;
    }
    for (_, path, t) in &tables {
        std::fs::write(path, toml::to_string(t)?).with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    // The admin token's path, as the control plane's file resolves it.
    let admin_token = tables.iter().find_map(|(i, _, t)| {
        let file = t.get("auth")?.get("admin_token_file")?.as_str()?;
        (hosts[*i].kind == Kind::Control).then(|| config.join(file))
    });
    let site_files = sites.iter().filter_map(|s| s.file_name().map(|f| config.join(f))).collect();
    Ok(Plan { name: name.to_string(), dir: dir.to_path_buf(), hosts, site_files, admin_token })
}

/// The folder's node files (in start order) and site files, checked as
/// `outpost check` checks them.
fn load_folder(config_dir: &Path) -> anyhow::Result<(Vec<NodeFile>, Vec<PathBuf>)> {
    let files = crate::up::config_files(config_dir)?;
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let problems = outpost_config::check_files(&paths);
    if !problems.is_empty() {
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        bail!("{} problem(s) in `{}`:\n{}", problems.len(), config_dir.display(), all.join("\n"));
    }
    let (mut nodes, mut sites) = (Vec::new(), Vec::new());
    for p in &paths {
        match outpost_config::load_file(p)? {
            ConfigFile::Node(n) => nodes.push((p.to_path_buf(), *n)),
            ConfigFile::Site(_) => sites.push(p.to_path_buf()),
        }
    }
    nodes.sort_by_key(|(_, n)| START_ORDER.iter().position(|r| *r == n.role()));
    Ok((nodes, sites))
}

/// A node file and what it says.
type NodeFile = (PathBuf, NodeConfig);
/// A node file being rewritten: its host's index, where it goes, its text.
type NodeTable = (usize, PathBuf, toml::Table);

/// The address of host number `index`.
fn host_ip(index: usize) -> anyhow::Result<Ipv4Addr> {
    let n = u8::try_from(index).ok().and_then(|n| n.checked_add(FIRST_HOST)).context("too many hosts")?;
    let [a, b, c, _] = SUBNET.octets();
    Ok(Ipv4Addr::new(a, b, c, n))
}

impl Host {
    /// The host of a node file, its process started from `file`.
    fn node(node: &NodeConfig, ip: Ipv4Addr, file: PathBuf) -> Host {
        let mut ports: Vec<u16> = listens(node).iter().map(SocketAddr::port).collect();
        ports.dedup();
        let args = match &node.role {
            // The test origin takes its addresses, not a node file.
            RoleConfig::Origin(_) => std::iter::once("origin".to_string())
                .chain(
                    node.listen
                        .http
                        .iter()
                        .flat_map(|a| ["--listen".to_string(), SocketAddr::new(IpAddr::V4(ip), a.port()).to_string()]),
                )
                .collect(),
            _ => vec![node.role().as_str().to_string(), "--config".into(), file.display().to_string()],
        };
        Host {
            name: node.name.clone(),
            kind: Kind::of(node.role()),
            ip,
            pop: node.pop.as_ref().map(|p| p.name.clone()),
            program: String::new(),
            args,
            ports,
            node_file: (node.role() != Role::Origin).then_some(file),
        }
    }

    /// An etcd member; [`replicate`] gives it its command line.
    fn etcd(name: String, ip: Ipv4Addr) -> Host {
        let ports = vec![ETCD_CLIENT_PORT];
        Host { name, kind: Kind::Etcd, ip, pop: None, program: "etcd".into(), args: Vec::new(), ports, node_file: None }
    }

    fn client(ip: Ipv4Addr) -> Host {
        let name = "client".into();
        Host {
            name,
            kind: Kind::Client,
            ip,
            pop: None,
            program: String::new(),
            args: Vec::new(),
            ports: Vec::new(),
            node_file: None,
        }
    }
}

/// Three etcd hosts (already placed) get their command lines; the control
/// plane moves onto them and gains a second replica on a host of its own;
/// every node that follows it gets both URLs.
fn replicate(hosts: &mut Vec<Host>, tables: &mut Vec<NodeTable>, dir: &Path, config: &Path) -> anyhow::Result<()> {
    let members: Vec<(String, Ipv4Addr)> =
        hosts.iter().filter(|h| h.kind == Kind::Etcd).map(|h| (h.name.clone(), h.ip)).collect();
    let cluster: Vec<String> = members.iter().map(|(n, ip)| format!("{n}=http://{ip}:{ETCD_PEER_PORT}")).collect();
    for h in hosts.iter_mut().filter(|h| h.kind == Kind::Etcd) {
        h.args = etcd_args(h, &cluster.join(","), &dir.join(".outpost").join("etcd").join(&h.name));
    }
    let Some(first) = tables.iter().position(|(i, _, _)| hosts[*i].kind == Kind::Control) else {
        bail!("a replicated lab needs a control-plane node file in the folder");
    };
    let (host_index, _, control) = &mut tables[first];
    let host_index = *host_index;
    let store = table(control, "store");
    store.remove("path");
    store.insert("backend".into(), toml::Value::String("etcd".into()));
    store.insert("endpoints".into(), strings(members.iter().map(|(_, ip)| format!("http://{ip}:{ETCD_CLIENT_PORT}"))));
    let mut second = control.clone();

    // The second replica: the next address, after every other host, the
    // same ports.
    let one = hosts[host_index].clone();
    let Some(port) = one.port() else { bail!("the control plane listens on no HTTP address") };
    let last = hosts.iter().map(|h| h.ip.octets()[3]).max().unwrap_or(FIRST_HOST);
    let [a, b, c, _] = SUBNET.octets();
    let ip = Ipv4Addr::new(a, b, c, last + 1);
    let name = format!("{}-2", one.name);
    table(&mut second, "node").insert("name".into(), toml::Value::String(name.clone()));
    let mut moves = Moves::default();
    for p in &one.ports {
        moves.add(one.addr(*p), ip);
    }
    rewrite_table(table(&mut second, "listen"), &moves, None)?;
    let file = config.join(format!("{name}.toml"));
    let args = vec!["control".into(), "--config".into(), file.display().to_string()];
    let two = Host { name, ip, args, node_file: Some(file.clone()), ..one.clone() };
    let url_two = format!("http://{}", two.addr(port));
    hosts.insert(host_index + 1, two);
    for (i, _, _) in tables.iter_mut().filter(|(i, _, _)| *i > host_index) {
        *i += 1;
    }
    tables.insert(first + 1, (host_index + 1, file, second));
    follow_both(tables, &format!("http://{}", one.addr(port)), &url_two);
    Ok(())
}

fn etcd_args(h: &Host, cluster: &str, data: &Path) -> Vec<String> {
    let (client, peer) = (format!("http://{}:{ETCD_CLIENT_PORT}", h.ip), format!("http://{}:{ETCD_PEER_PORT}", h.ip));
    let data = data.display().to_string();
    [
        ("--name", h.name.as_str()),
        ("--data-dir", &data),
        ("--listen-client-urls", &client),
        ("--advertise-client-urls", &client),
        ("--listen-peer-urls", &peer),
        ("--initial-advertise-peer-urls", &peer),
        ("--initial-cluster", cluster),
        ("--initial-cluster-state", "new"),
        ("--initial-cluster-token", "outpost-lab"),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect()
}

/// Every node that follows the control plane at `one` gets `two` as well:
/// every other node first, so both replicas have nodes.
fn follow_both(tables: &mut [NodeTable], one: &str, two: &str) {
    for (n, (_, _, t)) in tables.iter_mut().enumerate() {
        let Some(link) = t.get_mut("control").and_then(toml::Value::as_table_mut) else { continue };
        let mut urls: Vec<String> = match link.remove("url") {
            Some(toml::Value::String(u)) => vec![u],
            _ => link
                .get("urls")
                .and_then(toml::Value::as_array)
                .map_or(Vec::new(), |a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
        };
        if urls.iter().any(|u| u.trim_end_matches('/') == one) {
            urls.insert(if n % 2 == 0 { 0 } else { urls.len() }, two.to_string());
        }
        link.insert("urls".into(), strings(urls));
    }
}
