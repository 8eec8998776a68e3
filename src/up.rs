//! `outpost up`: the whole CDN on this machine, from one config folder.
//!
//! Every file in the folder is validated first (all problems reported, nothing
//! started on any error); then every role is started in this process — the
//! control plane first, with the site files pushed to it, then the test
//! origin, the DNS server, the shields and the edges — and a table of
//! endpoints is printed.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use outpost_config::{AccessLog, ConfigFile, NodeConfig, RoleConfig};

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
        let Some(tls) = &site.tls else { continue };
        let in_dir = |p: &Path| p.parent().and_then(|d| d.canonicalize().ok()).is_some_and(|d| d == canonical);
        if !in_dir(&tls.cert.value) || !in_dir(&tls.key.value) {
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
        let (cert, key) = (&tls.cert.value, &tls.key.value);
        write_file(key, issued.key_pem.as_bytes(), true)
            .with_context(|| format!("cannot write `{}`", key.display()))?;
        write_file(cert, issued.cert_pem.as_bytes(), false)
            .with_context(|| format!("cannot write `{}`", cert.display()))?;
    }
    Ok(ca.map(|_| tls_dir.join("ca.pem")))
}

/// Every `.toml` file of the folder, sorted, so runs are repeatable.
fn config_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read config folder `{}`", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && !outpost_config::is_cargo_manifest(p))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no .toml files in `{}`", dir.display());
    }
    Ok(files)
}

pub async fn run(config_dir: &Path, data_dir: &Path) -> anyhow::Result<()> {
    run_until(config_dir, data_dir, signals::shutdown_token(), None).await
}

/// Runs until `stop` is cancelled; `ready` is told once every role listens.
pub async fn run_until(
    config_dir: &Path,
    data_dir: &Path,
    stop: tokio_util::sync::CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    // The metrics recorder goes in before any role makes its metrics: a
    // counter made earlier would count into nothing.
    let _ = outpost_proxy::engine::observe::prometheus();
    let files = config_files(config_dir)?;
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let problems = outpost_config::check_files(&paths);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!("{} problem(s) in `{}`; nothing was started", problems.len(), config_dir.display());
    }
    let mut nodes: Vec<NodeConfig> = Vec::new();
    let mut site_files = Vec::new();
    let mut sites = Vec::new();
    for p in &paths {
        match outpost_config::load_file(p)? {
            ConfigFile::Node(n) => nodes.push(*n),
            ConfigFile::Site(site) => {
                site_files.push(p.to_path_buf());
                sites.push(*site);
            }
        }
    }
    let local_ca = issue_local_certs(data_dir, &sites)?;

    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut try_lines = Vec::new();
    let mut edge_lines = Vec::new();
    // Each node's access log goes to a file, so the console stays readable.
    for node in &mut nodes {
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
    let mut dig_lines = Vec::new();
    let mut https_lines = Vec::new();
    let mut purge_lines = Vec::new();
    // The control plane first: it writes the tokens the other nodes read,
    // and the site files are pushed to it.
    for node in &nodes {
        if let RoleConfig::Control(_) = &node.role {
            let render = Box::new(|| outpost_proxy::engine::observe::prometheus().render());
            let bound = outpost_control::node::ControlNode::bind(node, render).await.with_context(|| {
                format!("the control plane could not start: change [listen] http in `{}`", node.file.display())
            })?;
            let addr = bound.addr();
            rows.push(("control".into(), node.name.clone(), format!("http://{addr}/v1/")));
            for f in &site_files {
                let text = std::fs::read_to_string(f)?;
                let stored = bound
                    .control
                    .upsert_site_text(&text, None)
                    .map_err(|e| anyhow::anyhow!("pushing `{}`: {}", f.display(), e.detail))?;
                purge_lines.push(format!("cargo run --release -- purge --site {} --prefix /hello --wait", stored.id));
            }
            let stop = stop.clone();
            tasks.spawn(async move { bound.run(stop).await });
        }
    }
    for node in &nodes {
        if let RoleConfig::Dns(d) = &node.role {
            let bound = crate::roles::Dns::bind(node).await.with_context(|| {
                format!("dns `{}` could not start: change [listen] dns in `{}`", node.name, node.file.display())
            })?;
            let addr = bound.node.addr();
            rows.push(("dns".into(), node.name.clone(), format!("udp+tcp {addr} (zone {})", d.zone)));
            if let Some(a) = bound.admin_addr() {
                rows.push(("admin".into(), node.name.clone(), format!("http://{a}/metrics")));
            }
            if let Some(site) = d.sites.first() {
                dig_lines.push(format!(
                    "dig @{} -p {} +subnet=81.2.69.0/24 {site}.{} A +short   # London: the fra edge",
                    addr.ip(),
                    addr.port(),
                    d.zone.trim_end_matches('.')
                ));
            }
            let stop = stop.clone();
            tasks.spawn(async move { bound.run(stop).await.map_err(|e| std::io::Error::other(e.to_string())) });
        }
        if let RoleConfig::Shield(_) = &node.role {
            let (bound, _) = outpost_shield::bind(node).await.with_context(|| {
                format!("shield `{}` could not start: change [listen] in `{}`", node.name, node.file.display())
            })?;
            for addr in bound.http_addrs() {
                rows.push(("shield".into(), node.name.clone(), format!("http://{addr}")));
            }
            let stop = stop.clone();
            tasks.spawn(async move { bound.run(stop).await });
        }
        if let RoleConfig::Edge(_) = &node.role {
            let bound = outpost_edge::bind(node).await.with_context(|| {
                format!("edge `{}` could not start: change [listen] in `{}`", node.name, node.file.display())
            })?;
            for addr in bound.http_addrs() {
                rows.push(("edge".into(), node.name.clone(), format!("http://{addr}")));
                edge_lines.push(format!(
                    "curl -si -H 'Host: www.example.test' 'http://{addr}/hello?size=64&cc=max-age%3D60' | grep -i cache-status"
                ));
            }
            for addr in bound.https_addrs() {
                rows.push(("edge".into(), node.name.clone(), format!("https://{addr}")));
                if let Some(ca) = &local_ca {
                    https_lines.push(format!(
                        "curl -si --cacert {} --resolve www.example.test:{port}:{ip} 'https://www.example.test:{port}/hello?size=64' | grep -i -e '^HTTP' -e cache-status",
                        ca.display(),
                        port = addr.port(),
                        ip = addr.ip()
                    ));
                }
            }
            if let Some(a) = bound.admin_addr() {
                rows.push(("admin".into(), node.name.clone(), format!("http://{a}/metrics")));
            }
            let stop = stop.clone();
            tasks.spawn(async move { bound.run(stop).await });
        }
        if let RoleConfig::Origin(o) = &node.role {
            let server =
                outpost_load::OriginServer::bind(&node.listen.http, o.dir.clone()).await.with_context(|| {
                    format!("the test origin could not start: change [listen] http in `{}`", node.file.display())
                })?;
            for addr in server.local_addrs() {
                rows.push(("origin".into(), node.name.clone(), format!("http://{addr}")));
                try_lines.push(format!("curl -si 'http://{addr}/hello?size=64&cc=max-age%3D60' | head -n 8"));
                try_lines.push(format!("curl -s http://{addr}/__origin/stats"));
            }
            tasks.spawn(server.run(stop.clone()));
        }
    }
    if tasks.is_empty() {
        bail!("no role in `{}` can be started by `up` (it needs at least an origin node file)", config_dir.display());
    }

    println!("Outpost is up (config: {})\n", config_dir.display());
    println!("  {:<8} {:<12} ENDPOINT", "ROLE", "NAME");
    for (role, name, endpoint) in &rows {
        println!("  {role:<8} {name:<12} {endpoint}");
    }
    println!("\nTry:");
    for l in &dig_lines {
        println!("  {l}");
    }
    // An edge twice: a miss, then a hit.
    if let Some(l) = edge_lines.first() {
        println!("  {l}");
        println!("  {l}");
    }
    for l in https_lines.iter().take(1) {
        println!("  {l}");
    }
    for l in &try_lines {
        println!("  {l}");
    }
    for l in purge_lines.iter().take(1) {
        println!("  {l}");
    }
    if !purge_lines.is_empty() {
        println!("  cargo run --release -- status");
    }
    println!("\nCtrl-C stops everything.");
    if let Some(ready) = ready {
        let _ = ready.send(());
    }

    while let Some(r) = tasks.join_next().await {
        r.context("a role panicked")??;
    }
    println!("Outpost stopped.");
    Ok(())
}
