//! The operator's client of the control-plane API: `outpost sites`,
//! `outpost purge`, `outpost status`. The token comes from `OUTPOST_TOKEN`,
//! or from `.outpost/admin.token` as `outpost up` writes it. An `https://`
//! control plane is verified against the public roots and, when set, the CA
//! file in `OUTPOST_CA`.

use std::path::Path;

use anyhow::Context;
use outpost_config::api::{NodeStatus, PopRecord, PurgeStatus, SiteRecord, SiteSummary};
use outpost_net::control::{ClientError, ControlClient, Token};

/// Where `outpost up` keeps the admin token.
pub(crate) const UP_TOKEN_FILE: &str = ".outpost/admin.token";

/// The client of the control plane at `urls` (one per replica), with the
/// operator's token.
pub(crate) fn connect(urls: &[String]) -> anyhow::Result<ControlClient> {
    let token = match std::env::var("OUTPOST_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Token::Value(t),
        _ if Path::new(UP_TOKEN_FILE).is_file() => Token::File(UP_TOKEN_FILE.into()),
        _ => anyhow::bail!(
            "no token: set OUTPOST_TOKEN, or run from the folder where `outpost up` keeps .outpost/admin.token"
        ),
    };
    let ca = std::env::var_os("OUTPOST_CA").filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let tls = outpost_proxy::tls::client_config(ca.as_deref().as_slice(), None).context("OUTPOST_CA")?;
    Ok(ControlClient::new(urls, token, tls))
}

/// What the operator is told when a call fails.
pub(crate) fn explain(e: ClientError) -> anyhow::Error {
    match e {
        e if e.is_unauthorized() => {
            anyhow::anyhow!("the control plane refused the token: set OUTPOST_TOKEN to the admin token ({e})")
        }
        e @ ClientError::Unreachable { .. } => {
            anyhow::anyhow!("{e}: is `outpost up` or `outpost control` running? (--control URL chooses another)")
        }
        e => anyhow::anyhow!(e),
    }
}

/// As [`explain`], for a site file pushed from `file`: the control plane
/// names the text it was sent `site.toml`, and its problems are given at
/// the operator's own file's lines instead.
pub(crate) fn explain_site(e: ClientError, file: &std::path::Path) -> anyhow::Error {
    match e {
        ClientError::Api { error, detail, .. } if error == "invalid_site" => {
            let at_file = |line: &str| match line.strip_prefix("site.toml:") {
                Some(rest) => format!("{}:{rest}", file.display()),
                None => line.to_string(),
            };
            anyhow::anyhow!("{}", detail.lines().map(at_file).collect::<Vec<_>>().join("\n"))
        }
        e => explain(e),
    }
}

fn ago(ms: u64) -> String {
    match ms {
        0..=1999 => format!("{ms} ms"),
        _ => format!("{} s", ms / 1000),
    }
}

pub(crate) fn print_sites(sites: &[SiteSummary]) {
    println!("{:<20} {:>7}  HOSTS", "SITE", "VERSION");
    for s in sites {
        println!("{:<20} {:>7}  {}", s.id, s.version, s.hosts.join(", "));
    }
}

pub(crate) fn print_versions(versions: &[SiteRecord]) {
    println!("{:>7}  {:<20}  LINES", "VERSION", "SAVED (UTC)");
    for v in versions {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(v.updated_ms);
        println!(
            "{:>7}  {:<20}  {}",
            v.version,
            humantime::format_rfc3339_seconds(at).to_string(),
            v.toml.lines().count()
        );
    }
}

/// Asked for a version of site `id` it does not keep.
pub(crate) fn not_kept(id: &str, versions: &[SiteRecord]) -> anyhow::Error {
    let kept: Vec<String> = versions.iter().map(|r| r.version.to_string()).collect();
    anyhow::anyhow!("site `{id}` keeps versions {} only", kept.join(", "))
}

/// A unified diff of two versions of a site file.
pub(crate) fn diff(old: &SiteRecord, new: &SiteRecord) -> String {
    similar::TextDiff::from_lines(&old.toml, &new.toml)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{} v{}", old.id, old.version), &format!("{} v{}", new.id, new.version))
        .to_string()
}

pub(crate) fn print_nodes(nodes: &[NodeStatus]) {
    println!(
        "{:<14} {:<7} {:<5} {:<10} {:>6} {:>12} {:>8} {:>6} {:>10}  ADDRESSES",
        "NODE", "ROLE", "POP", "CONNECTED", "LAG", "LAST SEEN", "REQ/S", "HITS", "CREDENTIAL"
    );
    for n in nodes {
        println!(
            "{:<14} {:<7} {:<5} {:<10} {:>6} {:>12} {:>8} {:>6} {:>10}  {}",
            n.node.name,
            n.node.role.as_str(),
            n.node.pop.as_deref().unwrap_or("-"),
            if n.connected { "yes" } else { "no" },
            n.lag,
            ago(n.since_contact_ms),
            n.node.load_rps.map_or("-".to_string(), |r| r.to_string()),
            n.node.hit_permille.map_or("-".to_string(), |h| format!("{:.1}%", f64::from(h) / 10.0)),
            n.node.credential_generation.map_or("shared".to_string(), |g| format!("gen {g}")),
            n.node.addrs.join(", ")
        );
        for p in &n.node.problems {
            println!("    problem: {p}");
        }
    }
}

pub(crate) fn print_pops(pops: &[PopRecord]) {
    println!("{:<10} {:>6}  REASON", "POP", "WEIGHT");
    for p in pops {
        println!("{:<10} {:>6}  {}", p.name, p.weight, p.reason.as_deref().unwrap_or("-"));
    }
}

pub(crate) fn print_purge(p: &PurgeStatus) {
    println!("purge {} (event {}) for site {}", p.id, p.seq, p.site);
    println!("  applied by: {}", if p.acked.is_empty() { "-".into() } else { p.acked.join(", ") });
    if !p.pending.is_empty() {
        println!("  not yet:    {}", p.pending.join(", "));
    }
}
