//! Per-node credentials: a token that speaks for one node name only.
//!
//! `node.NAME.MAC` (generation 0) or `node.NAME.GEN.MAC`, where MAC is
//! HMAC-SHA256 of the name and generation under the control plane's node
//! token (`[auth] node_token_file`), in hex. The control plane checks one
//! by computing the MAC again, and any replica that shares the node token
//! accepts it. A node holding one can open its own event stream and
//! acknowledge for itself, never for another name; the certificate keys
//! it is sent are sealed under its own credential. `outpost node-token`
//! prints generation 0 without asking the control plane.
//!
//! What the control plane keeps per node is the lowest generation it still
//! takes (`Revocations`, one record in the store): revoking a node's
//! credential raises it, and a rotation hands out a credential of the new
//! generation (`outpost credentials rotate NAME`). Nodes never revoked
//! cost nothing.
//!
//! The node token itself still works on every node-scoped call, for any
//! name, unless `[auth] shared_node_token = false`.

use ring::hmac;

/// Separates these MACs from any other use of the node token.
const CONTEXT: &[u8] = b"outpost node credential v1\0";
const PREFIX: &str = "node.";

fn key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

fn message(name: &str, generation: u64) -> Vec<u8> {
    match generation {
        0 => [CONTEXT, name.as_bytes()].concat(),
        g => [CONTEXT, name.as_bytes(), b"\0", g.to_string().as_bytes()].concat(),
    }
}

/// The credential of node `name`, derived from the node token `secret`.
pub fn node_credential(secret: &str, name: &str) -> String {
    credential_of_generation(secret, name, 0)
}

/// The credential of node `name` at `generation` (0 is the one
/// `outpost node-token` prints; a rotation hands out the next).
pub fn credential_of_generation(secret: &str, name: &str, generation: u64) -> String {
    let tag = hmac::sign(&key(secret), &message(name, generation));
    let mac: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    match generation {
        0 => format!("{PREFIX}{name}.{mac}"),
        g => format!("{PREFIX}{name}.{g}.{mac}"),
    }
}

/// A credential's node name and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified<'a> {
    pub name: &'a str,
    pub generation: u64,
}

/// The credentials of `names` under the node token of the control plane
/// whose node file is `config` (`outpost node-token`). The token file must
/// exist already: the control plane makes it at its first start.
pub fn for_nodes(config: &outpost_config::NodeConfig, names: &[String]) -> Result<Vec<String>, String> {
    let outpost_config::RoleConfig::Control(control) = &config.role else {
        return Err(format!("{} is not a control plane's node file", config.file.display()));
    };
    let path = &control.node_token_file;
    let secret = std::fs::read_to_string(path).map_err(|e| format!("node token file {}: {e}", path.display()))?;
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(format!("node token file {} is empty", path.display()));
    }
    names
        .iter()
        .map(|n| {
            // The rule `[node] name` is read under: a credential for a name
            // no node can have would be handed out and never work.
            match outpost_config::check_site_id(n) {
                Ok(()) => Ok(node_credential(secret, n)),
                Err(_) => Err(format!("node name `{n}`: must be 1 to 63 lower-case letters, digits or inner hyphens")),
            }
        })
        .collect()
}

/// The node name and generation `token` is a valid credential of under
/// `secret`; `None` for anything else (the MAC checked in constant time).
/// Whether that generation is still taken is the control plane's
/// question (`Revocations`).
pub fn verify<'a>(secret: &str, token: &'a str) -> Option<Verified<'a>> {
    let (rest, mac) = token.strip_prefix(PREFIX)?.rsplit_once('.')?;
    let (name, generation) = match rest.split_once('.') {
        None => (rest, 0),
        // One spelling only, as made: decimal, no sign or leading zero, never 0.
        Some((name, g)) if !g.starts_with('0') && g.bytes().all(|b| b.is_ascii_digit()) => (name, g.parse().ok()?),
        Some(_) => return None,
    };
    // One spelling only: lower-case hex, as made.
    if mac.len() != 64 || !mac.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mac = (0..32).map(|i| u8::from_str_radix(&mac[2 * i..2 * i + 2], 16).ok()).collect::<Option<Vec<u8>>>()?;
    hmac::verify(&key(secret), &message(name, generation), &mac).ok()?;
    Some(Verified { name, generation })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_names_its_node_under_its_secret_only() {
        let c = node_credential("s3cret", "edge-1");
        assert!(c.starts_with("node.edge-1."), "{c}");
        let edge_1 = |generation| Some(Verified { name: "edge-1", generation });
        assert_eq!(verify("s3cret", &c), edge_1(0));
        assert_eq!(verify("other", &c), None, "another control plane's");
        assert_eq!(verify("s3cret", "s3cret"), None, "the node token is not a credential");
        // Renamed, or its MAC changed or cut: nothing.
        assert_eq!(verify("s3cret", &c.replace("edge-1", "edge-2")), None);
        let mac_at = c.rfind('.').unwrap() + 1;
        let mut flipped = c.clone().into_bytes();
        flipped[mac_at] = if flipped[mac_at] == b'a' { b'b' } else { b'a' };
        assert_eq!(verify("s3cret", std::str::from_utf8(&flipped).unwrap()), None);
        assert_eq!(verify("s3cret", &c[..c.len() - 1]), None);
        assert_eq!(verify("s3cret", &c[..mac_at]), None);
        assert_eq!(verify("s3cret", &c.to_uppercase().replacen("NODE.EDGE-1", "node.edge-1", 1)), None, "upper case");
        assert_eq!(verify("s3cret", "node.edge-1"), None);
        assert_eq!(verify("s3cret", ""), None);
        // Every name its own.
        assert_ne!(node_credential("s3cret", "a"), node_credential("s3cret", "b"));

        // Later generations: each its own MAC, named in the credential.
        let g2 = credential_of_generation("s3cret", "edge-1", 2);
        assert!(g2.starts_with("node.edge-1.2."), "{g2}");
        assert_eq!(verify("s3cret", &g2), edge_1(2));
        assert_eq!(verify("s3cret", &credential_of_generation("s3cret", "edge-1", u64::MAX)), edge_1(u64::MAX));
        assert_eq!(credential_of_generation("s3cret", "edge-1", 0), c, "generation 0 is the plain one");
        let mac = |c: &str| c.rsplit_once('.').unwrap().1.to_string();
        for (forged, why) in [
            (format!("node.edge-1.3.{}", mac(&g2)), "another generation's MAC"),
            (format!("node.edge-1.1.{}", mac(&c)), "generation 0's MAC, a generation named"),
            (format!("node.edge-1.02.{}", mac(&g2)), "a leading zero"),
            (format!("node.edge-1.0.{}", mac(&c)), "generation 0 spelt out"),
            (format!("node.edge-1.+2.{}", mac(&g2)), "a sign"),
            (format!("node.edge-1.2.2.{}", mac(&g2)), "two generations"),
            (format!("node.edge-1.18446744073709551616.{}", mac(&g2)), "past u64"),
            (format!("node.edge-1..{}", mac(&c)), "an empty generation"),
        ] {
            assert_eq!(verify("s3cret", &forged), None, "{why}: {forged}");
        }
    }
}
