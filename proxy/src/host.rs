//! The host a request names, checked before anything else uses it: a
//! Host value that is not a valid authority is refused, and the normalised
//! form is what finds the site, enters the cache key and goes upstream.

/// Longest host name (RFC 1035: 253 characters, without the trailing dot).
const MAX_HOST_NAME: usize = 253;

/// A request's host that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadHost {
    #[error("the request names no host")]
    Missing,
    #[error("the Host is not a host name or IP address with an optional port")]
    Invalid,
}

/// A request's host (from `Host` or the target's authority), checked as an
/// RFC 3986 authority without user information: a DNS name of letters,
/// digits, `-`, `_` and dots, an IPv4 address, or a bracketed IPv6 address,
/// then an optional port. Borrowed from the request: checking it allocates
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHost<'a> {
    /// As sent, without a trailing dot; compare it lower-cased.
    name: &'a str,
    port: Option<u16>,
}

impl<'a> RequestHost<'a> {
    pub fn parse(raw: &'a str) -> Result<RequestHost<'a>, BadHost> {
        if raw.is_empty() {
            return Err(BadHost::Missing);
        }
        let (name, port) = if raw.starts_with('[') {
            let close = raw.find(']').ok_or(BadHost::Invalid)?;
            raw[1..close].parse::<std::net::Ipv6Addr>().map_err(|_| BadHost::Invalid)?;
            match &raw[close + 1..] {
                "" => (&raw[..=close], None),
                rest => (&raw[..=close], Some(rest.strip_prefix(':').ok_or(BadHost::Invalid)?)),
            }
        } else {
            match raw.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (raw, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) if (1..=5).contains(&p.len()) => {
                let n = p.bytes().try_fold(0u32, |n, b| b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0')));
                Some(n.and_then(|n| u16::try_from(n).ok()).ok_or(BadHost::Invalid)?)
            }
            Some(_) => return Err(BadHost::Invalid),
        };
        let name = if name.starts_with('[') { name } else { check_name(name)? };
        Ok(RequestHost { name, port })
    }

    /// The name as sent (any case), without a trailing dot; IPv6 literals
    /// keep their brackets.
    pub fn name(&self) -> &'a str {
        self.name
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The normalised authority, as keyed and as sent upstream: the name in
    /// lower case, then `:port` when the client gave one.
    pub fn authority(&self) -> String {
        let mut s = self.name.to_ascii_lowercase();
        if let Some(p) = self.port {
            s.push(':');
            s.push_str(&p.to_string());
        }
        s
    }

    /// Feeds the normalised authority to `f` in pieces, without allocating.
    pub fn hash_into(&self, mut f: impl FnMut(&[u8])) {
        let mut buf = [0u8; 64];
        for part in self.name.as_bytes().chunks(buf.len()) {
            let out = &mut buf[..part.len()];
            out.copy_from_slice(part);
            out.make_ascii_lowercase();
            f(out);
        }
        if let Some(p) = self.port {
            f(b":");
            f(&p.to_be_bytes());
        }
    }
}

/// A DNS name or IPv4 address: non-empty labels of letters, digits, `-` and
/// `_`, at most 63 long, one trailing dot allowed (and dropped). One pass
/// over the bytes: it runs for every request.
fn check_name(name: &str) -> Result<&str, BadHost> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOST_NAME {
        return Err(BadHost::Invalid);
    }
    let mut label = 0usize;
    for b in name.bytes() {
        if b == b'.' {
            if label == 0 {
                return Err(BadHost::Invalid);
            }
            label = 0;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            label += 1;
            if label > 63 {
                return Err(BadHost::Invalid);
            }
        } else {
            return Err(BadHost::Invalid);
        }
    }
    if label == 0 { Err(BadHost::Invalid) } else { Ok(name) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_hosts_are_checked_and_normalised() {
        let ok = |raw: &str| RequestHost::parse(raw).map(|h| h.authority());
        assert_eq!(ok("WWW.Example.TEST.").unwrap(), "www.example.test");
        assert_eq!(ok("www.example.test:8080").unwrap(), "www.example.test:8080");
        assert_eq!(ok("127.0.0.1:80").unwrap(), "127.0.0.1:80");
        assert_eq!(ok("[::1]:80").unwrap(), "[::1]:80");
        assert_eq!(ok("[::1]").unwrap(), "[::1]");
        assert_eq!(ok("_srv.a-b.test").unwrap(), "_srv.a-b.test");
        assert_eq!(RequestHost::parse(""), Err(BadHost::Missing));
        for bad in [
            "evil.example/.r.test",
            "a.r.test/x",
            "user@a.test",
            "a.test:",
            "a.test:99999",
            "a.test:8o",
            "a..test",
            ".a.test",
            "a.test..",
            "a test",
            "a.test:80:80",
            "::1",
            "[::1",
            "[::1]x",
            "[nothex]",
            "a%2ftest",
            "a.test\\x",
            "a.test?x",
            "a.test#x",
        ] {
            assert_eq!(RequestHost::parse(bad), Err(BadHost::Invalid), "{bad}");
        }
        let long = format!("{}.test", "a".repeat(64));
        assert_eq!(RequestHost::parse(&long), Err(BadHost::Invalid), "a label over 63");
        // The key sees the lower-cased authority, in pieces.
        let mut fed = Vec::new();
        RequestHost::parse(&format!("{0}.{0}.TEST:8080", "X".repeat(50)))
            .unwrap()
            .hash_into(|b| fed.extend_from_slice(b));
        let mut want = format!("{0}.{0}.test:", "x".repeat(50)).into_bytes();
        want.extend_from_slice(&8080u16.to_be_bytes());
        assert_eq!(fed, want);
    }
}
