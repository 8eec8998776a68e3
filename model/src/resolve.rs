//! Stage 3 of loading a file: what it names on the file system. Reading the
//! TOML (stage 1) and checking its values (stage 2) touch nothing but the
//! text; they note each path the node will use, with where it was written,
//! and resolving checks them all: files exist, folders the node writes are
//! writable, and a node's static site files load.

use std::path::Path;

use crate::Site;
use crate::diag::{Diagnostic, Need, Pending};

/// Checks every noted path and loads the static site files: the sites, and
/// every problem found.
pub(crate) fn resolve(pending: &[Pending]) -> (Vec<Site>, Vec<Diagnostic>) {
    let mut problems = check(pending);
    let mut sites = Vec::new();
    for p in pending.iter().filter(|p| p.need == Need::SiteFile) {
        if !p.path.is_file() {
            let message = format!("site file `{}` does not exist", p.path.display());
            problems.push(Diagnostic { loc: p.loc.clone(), message });
            continue;
        }
        match Site::load(&p.path) {
            Ok(site) => sites.push(site),
            Err(e) => problems.extend(e.diagnostics),
        }
    }
    problems.extend(crate::check_sites(&sites));
    (sites, problems)
}

/// The problems with `pending`'s files and folders (site files are
/// loaded by [`resolve`]).
fn check(pending: &[Pending]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for p in pending {
        let problem = match &p.need {
            Need::File if !p.path.is_file() => Some(format!("file `{}` does not exist", p.path.display())),
            Need::Dir if !p.path.is_dir() => Some(format!("`{}` is not a directory", p.path.display())),
            Need::WritableDir(what) => writable_dir(&p.path).err().map(|e| format!("{what} {e}")),
            _ => None,
        };
        if let Some(message) = problem {
            out.push(Diagnostic { loc: p.loc.clone(), message });
        }
    }
    out
}

/// The folder exists and is writable, or can be created: its nearest
/// existing ancestor is a writable folder. Checked by writing a probe file,
/// which is what actually matters (permissions, read-only mounts, quotas).
fn writable_dir(path: &Path) -> Result<(), String> {
    let mut probe_dir = path;
    loop {
        if probe_dir.exists() {
            break;
        }
        match probe_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe_dir = p,
            _ => {
                probe_dir = Path::new(".");
                break;
            }
        }
    }
    if !probe_dir.is_dir() {
        return Err(format!("`{}` is not usable: `{}` is not a directory", path.display(), probe_dir.display()));
    }
    let probe = probe_dir.join(format!(".outpost-write-check-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!("`{}` is not writable: {e}", path.display())),
    }
}
