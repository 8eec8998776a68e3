//! Records the git revision the binary is built from, for `--version`:
//! `OUTPOST_REVISION` from the environment when set (a build from a source
//! tarball), else `git describe`, else "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=OUTPOST_REVISION");
    let revision = std::env::var("OUTPOST_REVISION").ok().filter(|r| !r.is_empty()).or_else(|| {
        // Rebuilt when the checked-out commit changes.
        // (A file that does not exist would rebuild every time.)
        if let Ok(git_dir) = git(&["rev-parse", "--git-dir"]) {
            let branch = git(&["symbolic-ref", "-q", "HEAD"]).unwrap_or_default();
            for file in ["HEAD", "index", "packed-refs", branch.as_str()] {
                let path = std::path::Path::new(&git_dir).join(file);
                if !file.is_empty() && path.is_file() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }
        git(&["describe", "--always", "--dirty", "--abbrev=12"]).ok()
    });
    println!("cargo:rustc-env=OUTPOST_REVISION={}", revision.as_deref().unwrap_or("unknown"));
}

fn git(args: &[&str]) -> Result<String, ()> {
    let out = Command::new("git").args(args).output().map_err(|_| ())?;
    if !out.status.success() {
        return Err(());
    }
    String::from_utf8(out.stdout).map(|s| s.trim().to_string()).map_err(|_| ())
}
