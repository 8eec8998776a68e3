//! `outpost check FILE…`: validate files the way every process will load them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use outpost_config::ConfigFile;

pub(crate) fn run(files: &[PathBuf]) -> ExitCode {
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let problems = outpost_config::check_files(&paths);
    if problems.is_empty() {
        let (mut nodes, mut sites) = (0, 0);
        let mut tls_errors = 0;
        for p in &paths {
            match outpost_config::load_file(p) {
                Ok(ConfigFile::Node(node)) => {
                    nodes += 1;
                    tls_errors += check_node_tls(&node);
                    // The node's own sites, as it will load them: their
                    // certificates, within the folders it reads them from.
                    for site in node.proxy().map_or(&[][..], |proxy| &proxy.sites[..]) {
                        tls_errors += check_tls(site, Some(&node.tls.site_cert_dirs));
                    }
                }
                Ok(ConfigFile::Site(site)) => {
                    sites += 1;
                    tls_errors += check_tls(&site, None);
                }
                Err(_) => {}
            }
        }
        if tls_errors > 0 {
            eprintln!("{tls_errors} problem{} found", if tls_errors == 1 { "" } else { "s" });
            return ExitCode::FAILURE;
        }
        let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        println!("ok: {} ({}, {})", plural(paths.len(), "file"), plural(nodes, "node"), plural(sites, "site"));
        return ExitCode::SUCCESS;
    }
    for p in &problems {
        eprintln!("{p}");
    }
    eprintln!("{} problem{} found", problems.len(), if problems.len() == 1 { "" } else { "s" });
    ExitCode::FAILURE
}

/// Loads the node's own `[tls]` files as it will at its start, where a
/// broken one stops it: its default certificate, the CA its clients'
/// certificates are checked against, and what it trusts and presents
/// upstream. (That they exist is checked with the file's other paths.)
fn check_node_tls(node: &outpost_config::NodeConfig) -> usize {
    use outpost_config::RoleConfig;
    let mut errors = 0;
    let mut report = |what: &str, result: Result<(), String>| {
        if let Err(e) = result {
            eprintln!("{}: [tls] {what}: {e}", node.file.display());
            errors += 1;
        }
    };
    match &node.role {
        RoleConfig::Control(_) => {
            if let Some(files) = &node.tls.cert {
                report("cert", outpost_control::tls::server_config(files).map(drop).map_err(|e| e.to_string()));
            }
        }
        RoleConfig::Edge(_) | RoleConfig::Shield(_) => {
            let tls = &node.tls;
            match outpost_proxy::tls::CertStore::new(&node.name, tls) {
                Ok(certs) => {
                    if tls.client_ca.is_some() {
                        let config =
                            outpost_proxy::tls::server_config(std::sync::Arc::new(certs), tls.client_ca.as_deref());
                        report("client_ca", config.map(drop).map_err(|e| e.to_string()));
                    }
                }
                Err(e) => report("cert", Err(e.to_string())),
            }
            if tls.upstream_ca.is_some() || tls.upstream_cert.is_some() {
                let upstream = outpost_proxy::tls::UpstreamTls::new(tls).map(drop).map_err(|e| e.to_string());
                report("upstream_ca / upstream_cert", upstream);
            }
        }
        _ => {}
    }
    errors
}

/// Loads a site's certificate and key as a node will (one whose node file
/// lists it reads them only within `dirs`, its site certificate folders).
/// A file that does not exist yet is a warning (certificates are often
/// deployed separately, and `outpost up` issues its own); one that is there
/// but unusable, or outside the node's folders, is an error.
fn check_tls(site: &outpost_config::Site, dirs: Option<&[PathBuf]>) -> usize {
    use outpost_proxy::tls::TlsFileError;
    let Some(outpost_config::SiteTls::Files { cert, key }) = &site.tls else { return 0 };
    if let Some(dirs) = dirs {
        for file in [cert, key] {
            // One missing is the warning below.
            if let Err(e @ TlsFileError::OutsideFolders(_)) = outpost_proxy::tls::confined(&file.value, dirs) {
                eprintln!("{}: {e}", file.loc);
                return 1;
            }
        }
    }
    match outpost_proxy::tls::load_pair(&cert.value, &key.value, std::time::SystemTime::now()) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{}: warning: {w}", cert.loc);
            }
            0
        }
        Err(TlsFileError::Missing(path)) => {
            let at = if path == key.value { &key.loc } else { &cert.loc };
            eprintln!("{at}: warning: `{}` does not exist yet; the site has no HTTPS until it does", path.display());
            0
        }
        Err(e) => {
            let at = match &e {
                TlsFileError::NoKey(p) | TlsFileError::UnsupportedKey(p, _) | TlsFileError::NotPem(p)
                    if *p == key.value =>
                {
                    &key.loc
                }
                TlsFileError::KeyMismatch { .. } => &key.loc,
                _ => &cert.loc,
            };
            eprintln!("{at}: {e}");
            1
        }
    }
}
