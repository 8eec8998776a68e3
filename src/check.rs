//! `outpost check FILE…`: validate files the way every process will load them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use outpost_config::ConfigFile;

pub(crate) fn run(files: &[PathBuf]) -> ExitCode {
    let (manifests, paths): (Vec<&Path>, Vec<&Path>) =
        files.iter().map(PathBuf::as_path).partition(|p| outpost_config::is_cargo_manifest(p));
    for m in &manifests {
        println!("skipped {}: a Cargo manifest, not an Outpost file", m.display());
    }
    let problems = outpost_config::check_files(&paths);
    if problems.is_empty() {
        let (mut nodes, mut sites) = (0, 0);
        for p in &paths {
            match outpost_config::load_file(p) {
                Ok(ConfigFile::Node(_)) => nodes += 1,
                Ok(ConfigFile::Site(_)) => sites += 1,
                Err(_) => {}
            }
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
