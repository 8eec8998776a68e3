//! Outpost's data model, shared by every process: node files, site files and
//! control-plane events.
//!
//! Files are TOML. Loading parses into typed values (addresses, durations,
//! byte sizes, URLs, host and path patterns) and validates everything at once:
//! every problem comes back as `file:line:column: message`, and a file with
//! any problem yields no config at all, so a bad file never half-applies.

pub mod api;
pub mod coding;
mod decode;
mod diag;
mod event;
mod node;
pub mod path;
mod resolve;
pub mod schema;
mod site;
mod units;

use std::path::Path;

use toml::Spanned;
use toml::de::DeTable;

pub use decode::ByteSize;
pub use diag::{ConfigError, Diagnostic, Loc, Located, base_dir};
pub use event::{
    Ack, Event, EventRecord, IssuedCertificate, MAX_PROBLEM_LEN, MAX_PROBLEMS, MAX_PURGE_ITEMS, Purge, PurgeTarget,
    SiteSnapshot, StreamLine, purge_path, purge_url,
};
pub use node::*;
pub use site::*;
pub use units::{HostPattern, PathPattern, parse_byte_size, parse_duration};

/// A loaded file of either kind.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigFile {
    Node(Box<NodeConfig>),
    Site(Box<Site>),
}

/// Loads (reads, checks and resolves) a node or site file, telling them
/// apart by their first table (`[node]` or `[site]`).
pub fn load_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = read_file(path)?;
    let (doc, _) = DeTable::parse_recoverable(&text);
    if doc.get_ref().iter().any(|(k, _)| k.get_ref() == "site") {
        Site::parse(path, &text).map(|s| ConfigFile::Site(Box::new(s)))
    } else if doc.get_ref().iter().any(|(k, _)| k.get_ref() == "node") {
        NodeConfig::load_text(path, &text).map(|n| ConfigFile::Node(Box::new(n)))
    } else {
        // Report the syntax errors, if any, and what the file is missing.
        let mut s = diag::Sink::new(path, &text);
        parse_document(&mut s);
        s.error(&(0..0), "neither a node file ([node]) nor a site file ([site])");
        s.finish(None::<ConfigFile>)
    }
}

/// Checks several files together: each on its own, then the sites among them
/// against each other (ids and hosts must not collide). Returns every problem.
pub fn check_files(paths: &[&Path]) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    let mut sites = Vec::new();
    for path in paths {
        match load_file(path) {
            Ok(ConfigFile::Site(site)) => sites.push(*site),
            Ok(ConfigFile::Node(_)) => {}
            Err(e) => problems.extend(e.diagnostics),
        }
    }
    problems.extend(check_sites(&sites));
    problems
}

/// Problems between sites: a repeated id, or a host two sites both answer for.
pub fn check_sites(sites: &[Site]) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    for (i, a) in sites.iter().enumerate() {
        for b in &sites[..i] {
            if a.id == b.id {
                let loc = a.hosts.first().map(|h| h.loc.clone());
                if let Some(loc) = loc {
                    problems.push(Diagnostic { loc, message: format!("site id `{}` is used twice", a.id) });
                }
            }
            for ha in &a.hosts {
                if let Some(hb) = b.hosts.iter().find(|hb| hb.overlaps(ha)) {
                    problems.push(Diagnostic {
                        loc: ha.loc.clone(),
                        message: format!(
                            "host `{}` of site `{}` overlaps `{}` of site `{}` at {}",
                            ha.value, a.id, hb.value, b.id, hb.loc
                        ),
                    });
                }
            }
        }
    }
    problems
}

pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::whole_file(path, format!("cannot read file: {e}")))
}

/// Parses TOML into the spanned tree, reporting every syntax error.
pub(crate) fn parse_document<'i>(s: &mut diag::Sink<'i>) -> Option<Spanned<DeTable<'i>>> {
    let (doc, errors) = DeTable::parse_recoverable(s.src);
    for e in &errors {
        let span = e.span().unwrap_or(0..0);
        s.error(&span, e.message().trim_end().to_string());
    }
    // After a syntax error the tree is partial: still read it, so the other
    // problems are reported too, but the caller's result will be an error.
    Some(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The operator's example files, in the repository's `config/`.
    fn examples_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
    }

    fn examples() -> Vec<PathBuf> {
        let dir = examples_dir();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_example_file_loads() {
        let files = examples();
        assert!(files.len() >= 9, "expected the up topology's files, found {files:?}");
        for f in &files {
            if let Err(e) = load_file(f) {
                panic!("{} does not load:\n{e}", f.display());
            }
        }
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        assert_eq!(check_files(&refs), Vec::new());
    }

    #[test]
    fn example_topology_matches_the_documented_pops() {
        let dir = examples_dir();
        for (file, pop, ip, lat, lon) in [
            ("edge-fra.toml", "fra", "127.0.0.11", 50.11, 8.68),
            ("edge-iad.toml", "iad", "127.0.0.12", 38.95, -77.45),
            ("edge-sin.toml", "sin", "127.0.0.13", 1.35, 103.99),
        ] {
            let ConfigFile::Node(node) = load_file(&dir.join(file)).unwrap() else { panic!("{file} is not a node") };
            let p = node.pop.as_ref().unwrap();
            assert_eq!((p.name.as_str(), p.latitude, p.longitude), (pop, lat, lon));
            assert_eq!(node.listen.http[0].to_string(), format!("{ip}:8080"));
            assert_eq!(node.listen.https[0].to_string(), format!("{ip}:8443"));
            let RoleConfig::Edge(edge) = &node.role else { panic!("{file} is not an edge") };
            assert_eq!(edge.upstream.shields.len(), 2);
        }
        let ConfigFile::Site(site) = load_file(&dir.join("example.site.toml")).unwrap() else { panic!() };
        assert_eq!(site.id, "example");
        assert!(site.serves("www.example.test") && site.serves("localhost"));
        assert_eq!(site.origins[0].url.to_string(), "http://127.0.0.1:9000/");
        let ConfigFile::Node(dns) = load_file(&dir.join("dns.toml")).unwrap() else { panic!() };
        let RoleConfig::Dns(d) = &dns.role else { panic!() };
        assert_eq!(d.zone, "cdn.example.test.");
        assert_eq!(dns.listen.dns.unwrap().port(), 5353);
    }

    #[test]
    fn sites_that_share_a_host_are_rejected_together() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        std::fs::write(&a, "[site]\nid = \"a\"\nhosts = [\"*.shop.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:1\"\n")
            .unwrap();
        std::fs::write(
            &b,
            "[site]\nid = \"b\"\nhosts = [\"x.test\", \"www.shop.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        let problems = check_files(&[&a, &b]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = problems[0].to_string();
        assert!(
            p.starts_with(&format!("{}:3:20: host `www.shop.test` of site `b` overlaps `*.shop.test`", b.display())),
            "{p}"
        );
    }

    #[test]
    fn a_file_of_neither_kind_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.toml");
        std::fs::write(&f, "a = 1\n").unwrap();
        let e = load_file(&f).unwrap_err();
        assert_eq!(e.diagnostics.len(), 1, "{e}");
        assert!(e.to_string().ends_with(":1:1: neither a node file ([node]) nor a site file ([site])"));
        let missing = load_file(&dir.path().join("missing.toml")).unwrap_err();
        assert!(missing.to_string().contains("cannot read file"));
    }
}
