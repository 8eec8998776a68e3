//! `outpost up`: the whole CDN on this machine, from one config folder.
//!
//! Every file in the folder is validated first (all problems reported, nothing
//! started on any error); then every role is started in this process, in
//! [`START_ORDER`]: the test origin, the control plane (with the site files
//! pushed to it), the DNS servers, the shields and the edges. A table of
//! endpoints and commands to try is printed.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use outpost_config::{AccessLog, ConfigFile, NodeConfig, RoleConfig};

use crate::roles::{BoundRole, Endpoint, START_ORDER, Service};
use crate::signals;

/// Issues, from the local CA in `<data_dir>/tls` (created on first use), a
/// certificate for every site whose `[tls]` files live in that folder, so
/// the example site is served over HTTPS with nothing to set up. A fresh
/// certificate is issued at every start; the CA stays, so a client told to
/// trust it once keeps trusting it. Returns the CA file when one was used.
fn issue_local_certs(data_dir: &Path, sites: &[outpost_config::Site]) -> anyhow::Result<Option<PathBuf>> {
    use outpost_proxy::tls::pki::{LEAF_VALIDITY, LocalCa, Request, write_file};
    let tls_dir = data_dir.join("tls");
    std::fs::create_dir_all(&tls_dir).with_context(|| format!("cannot create `{}`", tls_dir.display()))?;
    let canonical = tls_dir.canonicalize()?;
    let mut ca = None;
    for site in sites {
        let Some(outpost_config::SiteTls::Files { cert, key }) = &site.tls else { continue };
        let in_dir = |p: &Path| p.parent().and_then(|d| d.canonicalize().ok()).is_some_and(|d| d == canonical);
        if !in_dir(&cert.value) || !in_dir(&key.value) {
            continue;
        }
        if ca.is_none() {
            ca = Some(
                LocalCa::load_or_create(&tls_dir, "Outpost local CA")
                    .with_context(|| format!("the local CA in `{}`", tls_dir.display()))?,
            );
        }
        let Some(ca) = &ca else { continue };
        let names: Vec<&str> = site
            .hosts
            .iter()
            .filter_map(|h| match &h.value {
                outpost_config::HostPattern::Exact(n) => Some(n.as_str()),
                outpost_config::HostPattern::Wildcard(_) => None,
            })
            .collect();
        let wildcards: Vec<String> = site
            .hosts
            .iter()
            .filter_map(|h| match &h.value {
                outpost_config::HostPattern::Wildcard(suffix) => Some(format!("*{suffix}")),
                outpost_config::HostPattern::Exact(_) => None,
            })
            .collect();
        let all: Vec<&str> = names.iter().copied().chain(wildcards.iter().map(String::as_str)).collect();
        let issued = ca.issue(&Request::server(&all, LEAF_VALIDITY))?;
        let (cert, key) = (&cert.value, &key.value);
        write_file(key, issued.key_pem.as_bytes(), true)
            .with_context(|| format!("cannot write `{}`", key.display()))?;
        write_file(cert, issued.cert_pem.as_bytes(), false)
            .with_context(|| format!("cannot write `{}`", cert.display()))?;
    }
    Ok(ca.map(|_| tls_dir.join("ca.pem")))
}

/// Every `.toml` file of the folder, sorted, so runs are repeatable.
pub(crate) fn config_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read config folder `{}`", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no .toml files in `{}`", dir.display());
    }
    Ok(files)
}

pub async fn run(config_dir: &Path, data_dir: &Path, ha: bool) -> anyhow::Result<()> {
    run_until(config_dir, data_dir, ha, signals::shutdown_token(), None).await
}

/// The node and site files of a folder, checked (all problems reported,
/// nothing started on any).
struct Files {
    nodes: Vec<NodeConfig>,
    site_files: Vec<PathBuf>,
    sites: Vec<outpost_config::Site>,
}

fn load(config_dir: &Path) -> anyhow::Result<Files> {
    let files = config_files(config_dir)?;
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let problems = outpost_config::check_files(&paths);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!("{} problem(s) in `{}`; nothing was started", problems.len(), config_dir.display());
    }
    let mut out = Files { nodes: Vec::new(), site_files: Vec::new(), sites: Vec::new() };
    for p in &paths {
        match outpost_config::load_file(p)? {
            ConfigFile::Node(n) => out.nodes.push(*n),
            ConfigFile::Site(site) => {
                out.site_files.push(p.to_path_buf());
                out.sites.push(*site);
            }
        }
    }
    Ok(out)
}

/// Each edge's and shield's access log goes to a file, so the console
/// stays readable.
fn log_to_files(nodes: &mut [NodeConfig], data_dir: &Path) {
    for node in nodes {
        let log = data_dir.join("logs").join(format!("{}.access.log", node.name));
        let proxy = match &mut node.role {
            RoleConfig::Edge(e) => Some(&mut e.proxy),
            RoleConfig::Shield(p) => Some(p),
            _ => None,
        };
        if let Some(p) = proxy.filter(|p| p.access_log == AccessLog::Stdout) {
            p.access_log = AccessLog::File(log);
        }
    }
}

/// Writes the node's own credential (derived from the node token of the
/// control plane whose node file is `control`) into its `[control]
/// token_file`, unless it is there already.
pub fn give_credential(node: &NodeConfig, control: &NodeConfig) -> anyhow::Result<()> {
    let Some(link) = &node.control else { return Ok(()) };
    let credential = outpost_control::credential::for_nodes(control, std::slice::from_ref(&node.name))
        .map_err(anyhow::Error::msg)?
        .remove(0);
    if std::fs::read_to_string(&link.token_file).is_ok_and(|t| t.trim() == credential) {
        return Ok(());
    }
    write_secret(&link.token_file, &credential)
}

/// Writes `secret` to `path`, readable by its owner alone, making its
/// folder if need be.
pub fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its mode on open: made the owner's alone.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut f, secret.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Runs until `stop` is cancelled; `ready` is told once every role listens.
/// Roles start in [`START_ORDER`], each bound before the next.
/// With `ha`, the control plane runs as two replicas on a local etcd
/// cluster ([`crate::ha`]).
pub async fn run_until(
    config_dir: &Path,
    data_dir: &Path,
    ha: bool,
    stop: tokio_util::sync::CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    // Before any role makes its metrics: a counter made earlier would
    // count into nothing.
    outpost_net::metrics::install_prometheus();
    let Files { mut nodes, site_files, sites } = load(config_dir)?;
    let local_ca = issue_local_certs(data_dir, &sites)?;
    log_to_files(&mut nodes, data_dir);
    nodes.sort_by_key(|n| START_ORDER.iter().position(|r| *r == n.role()));
    std::fs::create_dir_all(data_dir.join("logs")).context("cannot create the logs folder")?;
    let _etcd = if ha {
        let (etcd, endpoints) = crate::ha::start(data_dir).await?;
        crate::ha::replicate(&mut nodes, &endpoints)?;
        Some(etcd)
    } else {
        None
    };
    let mut console = Console::default();
    let mut pushed = false;
    let mut control_file = None;
    let mut tasks = tokio::task::JoinSet::new();
    for node in &nodes {
        // The control plane starts first and writes the node token; every
        // node after it gets its own credential.
        if let Some(control) = control_file {
            give_credential(node, control)?;
        }
        let bound = BoundRole::bind(node).await?;
        if node.role() == outpost_config::Role::Control {
            control_file.get_or_insert(node);
        }
        // Sites are pushed once, through the first control plane.
        if let Some(control) = bound.control().filter(|_| !pushed) {
            pushed = true;
            for f in &site_files {
                let text = std::fs::read_to_string(f)?;
                let stored = control
                    .upsert_site_text(&text, None, None)
                    .await
                    .map_err(|e| anyhow::anyhow!("pushing `{}`: {}", f.display(), e.detail))?;
                console.purge.push(format!("cargo run --release -- purge --site {} --prefix /hello --wait", stored.id));
            }
        }
        console.add(node, &bound.endpoints(), local_ca.as_deref());
        tasks.spawn(bound.run(stop.clone()));
    }
    if tasks.is_empty() {
        bail!("no role in `{}` can be started by `up` (it needs at least an origin node file)", config_dir.display());
    }
    console.print(config_dir);
    if let Some(ready) = ready {
        let _ = ready.send(());
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a role panicked")??;
    }
    println!("Outpost stopped.");
    Ok(())
}

/// What `up` prints: every endpoint, then commands to try.
#[derive(Debug, Default)]
struct Console {
    rows: Vec<(String, String, String)>,
    dig: Vec<String>,
    edge: Vec<String>,
    https: Vec<String>,
    origin: Vec<String>,
    purge: Vec<String>,
}

impl Console {
    fn add(&mut self, node: &NodeConfig, endpoints: &[Endpoint], local_ca: Option<&Path>) {
        let role = node.role().as_str();
        for e in endpoints {
            let (role, shown) = match (e.service, &node.role) {
                (Service::Admin, _) => ("admin", format!("http://{}/metrics", e.addr)),
                (Service::Api, _) => (role, format!("http://{}/v1/", e.addr)),
                (Service::Dns, RoleConfig::Dns(d)) => (role, format!("udp+tcp {} (zone {})", e.addr, d.zone)),
                (Service::Https, _) => (role, format!("https://{}", e.addr)),
                _ => (role, format!("http://{}", e.addr)),
            };
            self.rows.push((role.to_string(), node.name.clone(), shown));
            self.try_lines(node, e, local_ca);
        }
    }

    fn try_lines(&mut self, node: &NodeConfig, e: &Endpoint, local_ca: Option<&Path>) {
        let (addr, ip, port) = (e.addr, e.addr.ip(), e.addr.port());
        match (e.service, &node.role) {
            (Service::Dns, RoleConfig::Dns(d)) => {
                if let Some(site) = d.sites.first() {
                    let zone = d.zone.trim_end_matches('.');
                    self.dig.push(format!("dig @{ip} -p {port} +subnet=81.2.69.0/24 {site}.{zone} A +short   # London: the fra edge"));
                }
            }
            (Service::Http, RoleConfig::Edge(_)) => self.edge.push(format!(
                "curl -si -H 'Host: www.example.test' 'http://{addr}/hello?size=64&cc=max-age%3D60' | grep -i cache-status"
            )),
            (Service::Https, RoleConfig::Edge(_)) => {
                if let Some(ca) = local_ca {
                    self.https.push(format!(
                        "curl -si --cacert {} --resolve www.example.test:{port}:{ip} 'https://www.example.test:{port}/hello?size=64' | grep -i -e '^HTTP' -e cache-status",
                        ca.display()
                    ));
                }
            }
            (Service::Http, RoleConfig::Origin(_)) => {
                self.origin.push(format!("curl -si 'http://{addr}/hello?size=64&cc=max-age%3D60' | head -n 8"));
                self.origin.push(format!("curl -s http://{addr}/__origin/stats"));
            }
            _ => {}
        }
    }

    fn print(&self, config_dir: &Path) {
        println!("Outpost is up (config: {})\n", config_dir.display());
        println!("  {:<8} {:<12} ENDPOINT", "ROLE", "NAME");
        for (role, name, endpoint) in &self.rows {
            println!("  {role:<8} {name:<12} {endpoint}");
        }
        println!("\nTry:");
        // An edge twice: a miss, then a hit.
        let edge = self.edge.first().into_iter().flat_map(|l| [l, l]);
        let lines = self.dig.iter().chain(edge).chain(self.https.iter().take(1)).chain(&self.origin);
        for l in lines.chain(self.purge.iter().take(1)) {
            println!("  {l}");
        }
        if !self.purge.is_empty() {
            println!("  cargo run --release -- status");
        }
        println!("\nCtrl-C stops everything.");
    }
}
