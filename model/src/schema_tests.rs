//! The declarations match what the readers read, and the committed
//! reference is what they generate.

use std::path::Path;

use super::*;
use crate::{NodeConfig, Site};

/// A file holding every declared key of `kind` (for `role`), with its
/// example value.
fn every_key(kind: FileKind, role: Option<Role>) -> String {
    let mut out = String::new();
    for s in sections(kind) {
        let used = role.is_none_or(|r| s.roles.contains(&r));
        if !used || s.shape == Shape::Map {
            continue;
        }
        let _ = writeln!(out, "{}", s.header());
        for k in s.keys.iter().filter(|k| role.is_none_or(|r| k.used_by(r))) {
            let value = if k.name == "role" { format!("\"{}\"", role.unwrap().as_str()) } else { k.example.into() };
            let _ = writeln!(out, "{} = {value}", k.name);
        }
    }
    out
}

/// Problems that say a key is not read, or a declared example is not a
/// valid value of its key.
fn undeclared_or_invalid(e: &crate::ConfigError) -> Vec<String> {
    e.diagnostics
        .iter()
        .map(ToString::to_string)
        .filter(|m| m.contains("unknown key") || m.contains("is not used by") || m.contains("expected "))
        .collect()
}

#[test]
fn every_declared_node_key_is_read_by_its_roles() {
    for role in [Role::Edge, Role::Shield, Role::Control, Role::Dns, Role::Origin] {
        let text = every_key(FileKind::Node, Some(role));
        if let Err(e) = NodeConfig::parse(Path::new("every.toml"), &text) {
            assert_eq!(undeclared_or_invalid(&e), Vec::<String>::new(), "{role:?}:\n{text}");
        }
    }
}

#[test]
fn every_declared_site_key_is_read() {
    let text = every_key(FileKind::Site, None);
    if let Err(e) = Site::parse(Path::new("every.site.toml"), &text) {
        assert_eq!(undeclared_or_invalid(&e), Vec::<String>::new(), "{text}");
    }
}

#[test]
fn every_key_is_documented_with_its_default() {
    for s in SECTIONS {
        assert!(!s.doc.is_empty(), "{} has no doc", s.header());
        assert!(s.shape == Shape::Map || !s.keys.is_empty(), "{} declares no keys", s.header());
        for k in s.keys {
            assert!(k.doc.ends_with('.'), "{}.{}: a doc is sentences", s.name, k.name);
            assert!(k.roles.iter().all(|r| s.roles.contains(r)), "{}.{}: roles outside the section's", s.name, k.name);
        }
    }
    let reference = reference();
    assert!(reference.contains("- **`idle_timeout`** (duration; default: `\"1m\"`)"), "{reference}");
    assert!(reference.contains("- **`memory`** (size; default: required)"));
    assert!(reference.contains("- **`max_object_size`** (size; default: `\"1GiB\"`)"));
}

#[test]
fn units_are_written_in_their_largest_whole_unit() {
    assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
    assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    assert_eq!(format_duration(Duration::ZERO), "0s");
    assert_eq!(format_size(32 * 1024), "32KiB");
    assert_eq!(format_size(1 << 30), "1GiB");
    assert_eq!(format_size(1000), "1000");
    assert_eq!(format_size(0), "0");
    for d in [Duration::from_secs(90), Duration::from_secs(86_400), Duration::from_millis(250)] {
        assert_eq!(crate::parse_duration(&format_duration(d)), Ok(d));
    }
    assert_eq!(crate::parse_byte_size(&format_size(16 << 20)), Ok(16 << 20));
}

/// `docs/config.md` is generated; set `OUTPOST_WRITE_REFERENCE=1` to
/// rewrite it (or run `outpost config reference > docs/config.md`).
#[test]
fn the_committed_reference_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
    let generated = reference();
    if std::env::var_os("OUTPOST_WRITE_REFERENCE").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/config.md is stale: run `outpost config reference > docs/config.md` \
         (or this test with OUTPOST_WRITE_REFERENCE=1)"
    );
}
