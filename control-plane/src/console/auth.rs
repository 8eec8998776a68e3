//! Who is signed in to the console, and the token that proves a form was
//! sent from one of its pages.
//!
//! Signing in with the admin token opens an operator session; with the
//! read-only token (`[auth] viewer_token_file`), or the node token while
//! nodes share it (`[auth] shared_node_token`), a read-only one. The
//! cookie holds no token: `role.expiry.nonce.mac`, the MAC an HMAC-SHA256
//! under a key derived from the tokens. Nothing is kept per session, so every replica that shares
//! the tokens honours the cookie and a restart signs nobody out, while a
//! changed token ends every session at once. A form's CSRF token is the
//! MAC of the session's nonce under the same key: a page of another site
//! can neither read it nor make it.

use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::{COOKIE, HOST, ORIGIN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The session cookie's name.
pub(super) const COOKIE_NAME: &str = "outpost_console";
/// How long a session lasts.
pub(super) const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The form field and the header (for the console's scripts) that carry
/// the CSRF token.
pub(super) const CSRF_FIELD: &str = "csrf";
pub(super) const CSRF_HEADER: &str = "x-csrf-token";

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Signed in with the admin token: everything.
    Operator,
    /// Signed in with a read-only token: look, change nothing.
    ReadOnly,
}

impl Role {
    fn tag(self) -> &'static str {
        match self {
            Role::Operator => "op",
            Role::ReadOnly => "ro",
        }
    }
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Session {
    pub(super) role: Role,
    nonce: String,
}

/// The key sessions are signed with, and the tokens that open them.
pub(super) struct Keys {
    key: hmac::Key,
    admin_token: String,
    /// The tokens that open a read-only session.
    read_only: Vec<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys { .. }")
    }
}

impl Keys {
    /// Sessions signed under the admin and node tokens (and the read-only
    /// token, when there is one), so a changed token ends them all. The
    /// node token opens a read-only session when `node_signs_in`.
    pub(super) fn new(admin_token: &str, node_token: &str, viewer_token: Option<&str>, node_signs_in: bool) -> Keys {
        let derive = hmac::Key::new(hmac::HMAC_SHA256, admin_token.as_bytes());
        let mut msg = b"outpost console sessions\0".to_vec();
        msg.extend_from_slice(node_token.as_bytes());
        if let Some(v) = viewer_token {
            msg.push(0);
            msg.extend_from_slice(v.as_bytes());
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&derive, &msg).as_ref());
        let read_only =
            viewer_token.into_iter().chain(node_signs_in.then_some(node_token)).map(str::to_string).collect();
        Keys { key, admin_token: admin_token.to_string(), read_only }
    }

    /// The role a token typed at sign-in opens, compared in constant time.
    pub(super) fn role_of(&self, token: &str) -> Option<Role> {
        let token = token.trim().as_bytes();
        if crate::api::constant_time_eq(token, self.admin_token.as_bytes()) {
            Some(Role::Operator)
        } else if self.read_only.iter().any(|t| crate::api::constant_time_eq(token, t.as_bytes())) {
            Some(Role::ReadOnly)
        } else {
            None
        }
    }

    /// A new session's cookie value, expiring [`LIFETIME`] after `now_s`.
    pub(super) fn issue(&self, role: Role, now_s: u64) -> String {
        let mut nonce = [0u8; 16];
        SystemRandom::new().fill(&mut nonce).expect("the system's random source works");
        let body = format!("{}.{}.{}", role.tag(), now_s + LIFETIME.as_secs(), hex(&nonce));
        let mac = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", hex(mac.as_ref()))
    }

    /// The session a cookie value names, if it is ours, intact and not expired.
    pub(super) fn verify(&self, value: &str, now_s: u64) -> Option<Session> {
        let (body, mac) = value.rsplit_once('.')?;
        hmac::verify(&self.key, body.as_bytes(), &unhex(mac)?).ok()?;
        let mut parts = body.split('.');
        let role = match parts.next()? {
            "op" => Role::Operator,
            "ro" => Role::ReadOnly,
            _ => return None,
        };
        let expires: u64 = parts.next()?.parse().ok()?;
        let nonce = parts.next()?.to_string();
        (expires > now_s && parts.next().is_none()).then_some(Session { role, nonce })
    }

    /// The CSRF token of a session's forms.
    pub(super) fn csrf(&self, session: &Session) -> String {
        hex(hmac::sign(&self.key, format!("csrf.{}", session.nonce).as_bytes()).as_ref())
    }

    /// Whether `given` is the session's CSRF token (constant time).
    pub(super) fn csrf_ok(&self, session: &Session, given: &str) -> bool {
        unhex(given)
            .is_some_and(|mac| hmac::verify(&self.key, format!("csrf.{}", session.nonce).as_bytes(), &mac).is_ok())
    }
}

/// The session cookie's value in a request, if it sent one.
pub(super) fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value that opens a session (`Secure` when the console
/// is served over HTTPS).
pub(super) fn set_cookie(value: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}={value}; Path=/console; Max-Age={}; HttpOnly; SameSite=Strict{secure}", LIFETIME.as_secs())
}

/// The `Set-Cookie` value that ends one.
pub(super) fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

/// Whether a state-changing request comes from a page of the console
/// itself, as far as the browser says: `Sec-Fetch-Site` when sent, and an
/// `Origin` naming the host asked. Requests without either (a script, an
/// old browser) still need the CSRF token.
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return false;
    }
    match headers.get(ORIGIN) {
        None => true,
        Some(origin) => {
            let (Ok(origin), Some(host)) = (origin.to_str(), headers.get(HOST).and_then(|h| h.to_str().ok())) else {
                return false;
            };
            origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_are_signed_expire_and_end_when_a_token_changes() {
        let keys = Keys::new("admin-secret", "node-secret", None, true);
        assert_eq!(keys.role_of(" admin-secret\n"), Some(Role::Operator));
        assert_eq!(keys.role_of("node-secret"), Some(Role::ReadOnly));
        assert_eq!(keys.role_of("admin-secreT"), None);
        let op = keys.issue(Role::Operator, 1000);
        assert!(!op.contains("admin-secret"), "the cookie holds no token: {op}");
        let s = keys.verify(&op, 1000).expect("a fresh cookie verifies");
        assert_eq!(s.role, Role::Operator);
        assert!(keys.verify(&op, 1000 + LIFETIME.as_secs()).is_none(), "expired");
        // A read-only cookie turned into an operator's is refused.
        let ro = keys.issue(Role::ReadOnly, 1000);
        assert_eq!(keys.verify(&ro, 1000).unwrap().role, Role::ReadOnly);
        let forged = ro.replacen("ro.", "op.", 1);
        assert!(keys.verify(&forged, 1000).is_none(), "{forged}");
        let longer = op.replacen(&format!(".{}.", 1000 + LIFETIME.as_secs()), ".99999999999.", 1);
        assert!(keys.verify(&longer, 1000).is_none());
        for junk in ["", ".", "op", "op.1.2.zz", &format!("{op}.x"), &"a".repeat(4000)] {
            assert!(keys.verify(junk, 1000).is_none(), "{junk}");
        }
        let other = |admin, node, viewer| Keys::new(admin, node, viewer, true).verify(&op, 1000);
        assert!(other("admin-secret", "node-2", None).is_none(), "another node token");
        assert!(other("admin-2", "node-secret", None).is_none(), "another admin token");
        assert!(other("admin-secret", "node-secret", Some("viewer")).is_none(), "a read-only token added");
        assert!(other("admin-secret", "node-secret", None).is_some(), "a replica with the same tokens");
    }

    #[test]
    fn the_read_only_token_opens_a_read_only_session_and_the_node_token_only_while_nodes_share_it() {
        let keys = Keys::new("admin-secret", "node-secret", Some("viewer-secret"), false);
        assert_eq!(keys.role_of("viewer-secret\n"), Some(Role::ReadOnly));
        assert_eq!(keys.role_of("node-secret"), None, "the node token is the nodes' root secret");
        assert_eq!(keys.role_of("viewer-secre"), None);
        assert_eq!(keys.role_of(""), None);
        let shared = Keys::new("admin-secret", "node-secret", Some("viewer-secret"), true);
        assert_eq!(shared.role_of("node-secret"), Some(Role::ReadOnly));
        assert_eq!(shared.role_of("viewer-secret"), Some(Role::ReadOnly));
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let keys = Keys::new("a", "n", None, true);
        let one = keys.verify(&keys.issue(Role::Operator, 0), 0).unwrap();
        let two = keys.verify(&keys.issue(Role::Operator, 0), 0).unwrap();
        let t = keys.csrf(&one);
        assert!(keys.csrf_ok(&one, &t));
        assert!(!keys.csrf_ok(&two, &t), "another session's token");
        assert!(!keys.csrf_ok(&one, ""));
        assert!(!keys.csrf_ok(&one, &t[..t.len() - 2]));
        assert!(!keys.csrf_ok(&one, "zz"));
    }

    #[test]
    fn the_cookie_is_found_among_others_and_same_origin_is_judged_by_the_browser_headers() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; outpost_consolex=2"));
        h.append(COOKIE, HeaderValue::from_static("b=3;  outpost_console=v.1; c=4"));
        assert_eq!(cookie(&h), Some("v.1"));
        assert!(set_cookie("v", true).ends_with("HttpOnly; SameSite=Strict; Secure"));
        assert!(!set_cookie("v", false).contains("Secure"));

        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            same_origin(&h)
        };
        assert!(with(&[("host", "127.0.0.1:7000")]));
        assert!(with(&[
            ("host", "127.0.0.1:7000"),
            ("origin", "http://127.0.0.1:7000"),
            ("sec-fetch-site", "same-origin")
        ]));
        assert!(!with(&[("host", "127.0.0.1:7000"), ("origin", "http://evil.test")]));
        assert!(!with(&[("host", "127.0.0.1:7000"), ("origin", "null")]));
        assert!(!with(&[("host", "127.0.0.1:7000"), ("sec-fetch-site", "cross-site")]));
        assert!(!with(&[("host", "127.0.0.1:7000"), ("sec-fetch-site", "same-site")]));
        assert!(!with(&[("origin", "http://127.0.0.1:7000")]), "an origin and no host");
    }
}
