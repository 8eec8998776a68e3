//! Per-node credentials: a token that speaks for one node name only.
//!
//! `node.NAME.MAC`, where MAC is HMAC-SHA256 of the name under the control
//! plane's node token (`[auth] node_token_file`), in hex. The control
//! plane checks one by computing the MAC again, so it keeps nothing per
//! node, and any replica that shares the node token accepts it. A node
//! holding one can open its own event stream and acknowledge for itself,
//! never for another name; the certificate keys it is sent are sealed
//! under its own credential. `outpost node-token` prints them.
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

fn message(name: &str) -> Vec<u8> {
    [CONTEXT, name.as_bytes()].concat()
}

/// The credential of node `name`, derived from the node token `secret`.
pub fn node_credential(secret: &str, name: &str) -> String {
    let tag = hmac::sign(&key(secret), &message(name));
    let mac: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{name}.{mac}")
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
            let valid = !n.is_empty() && n.len() <= 63 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if valid {
                Ok(node_credential(secret, n))
            } else {
                Err(format!("node name `{n}`: must be 1 to 63 letters, digits or hyphens"))
            }
        })
        .collect()
}

/// The node name `token` is a valid credential of under `secret`; `None`
/// for anything else (checked in constant time).
pub fn verify<'a>(secret: &str, token: &'a str) -> Option<&'a str> {
    let (name, mac) = token.strip_prefix(PREFIX)?.rsplit_once('.')?;
    // One spelling only: lower-case hex, as made.
    if mac.len() != 64 || !mac.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mac = (0..32).map(|i| u8::from_str_radix(&mac[2 * i..2 * i + 2], 16).ok()).collect::<Option<Vec<u8>>>()?;
    hmac::verify(&key(secret), &message(name), &mac).ok()?;
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_names_its_node_under_its_secret_only() {
        let c = node_credential("s3cret", "edge-1");
        assert!(c.starts_with("node.edge-1."), "{c}");
        assert_eq!(verify("s3cret", &c), Some("edge-1"));
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
    }
}
