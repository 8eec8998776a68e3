//! Request paths as the cache keys them, shared by nodes (keys) and the
//! control plane (purges by URL), so a purge names exactly what requests
//! are stored under.

use std::borrow::Cow;

/// A request path that cannot be keyed safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("the path has a malformed percent-encoding")]
    BadEscape,
    #[error("the path contains a control character or NUL")]
    Control,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 normalisation that never merges distinct resources: decode
/// percent-encoded unreserved characters, upper-case the other escapes, and
/// remove dot segments (§5.2.4). `%2F` stays encoded; `//` stays.
pub fn normalize_path(raw: &str) -> Result<String, BadPath> {
    normalized(raw).map(Cow::into_owned)
}

/// [`normalize_path`], borrowing `raw` when it is already normal (most
/// paths: no escapes, no dot segments).
pub fn normalized(raw: &str) -> Result<Cow<'_, str>, BadPath> {
    if !raw.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    let bytes = raw.as_bytes();
    if !bytes.iter().any(|b| *b == b'%' || *b < 0x20 || *b == 0x7f) && !raw.contains("/.") {
        return Ok(Cow::Borrowed(raw));
    }
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x20 || b == 0x7f {
            return Err(BadPath::Control);
        }
        if b == b'%' {
            let (Some(h), Some(l)) = (bytes.get(i + 1).and_then(|x| hex(*x)), bytes.get(i + 2).and_then(|x| hex(*x)))
            else {
                return Err(BadPath::BadEscape);
            };
            let v = h * 16 + l;
            if v == 0 {
                return Err(BadPath::Control);
            }
            if is_unreserved(v) {
                decoded.push(v as char);
            } else {
                decoded.push('%');
                decoded.push(char::from(b"0123456789ABCDEF"[(v >> 4) as usize]));
                decoded.push(char::from(b"0123456789ABCDEF"[(v & 15) as usize]));
            }
            i += 3;
        } else {
            // Bytes ≥ 0x80 come from a `&str`, so whole characters follow.
            let ch_len = raw[i..].chars().next().map_or(1, char::len_utf8);
            decoded.push_str(&raw[i..i + ch_len]);
            i += ch_len;
        }
    }
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

fn remove_dot_segments(path: &str) -> String {
    if !path.contains("/.") {
        return path.to_string();
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if trailing_slash || result.is_empty() {
        result.push('/');
    }
    result
}

/// Percent-encodes what a request target can never carry raw (bytes of
/// non-ASCII characters), as a client does before sending `/café`.
pub fn encode_non_ascii(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
            out.push(char::from(b"0123456789ABCDEF"[(b & 15) as usize]));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_without_merging_resources() {
        assert_eq!(normalize_path("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(normalize_path("/a/b/..").unwrap(), "/a/");
        assert_eq!(normalize_path("/../../x").unwrap(), "/x");
        assert_eq!(normalize_path("/%7euser/%41%2f%2a").unwrap(), "/~user/A%2F%2A");
        assert_eq!(normalize_path("/a//b").unwrap(), "/a//b");
        assert_eq!(normalize_path("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize_path("/.hidden/x.y").unwrap(), "/.hidden/x.y");
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("a"), Err(BadPath::NotAbsolute));
        assert_eq!(normalize_path("/%zz"), Err(BadPath::BadEscape));
        assert_eq!(normalize_path("/%4"), Err(BadPath::BadEscape));
        assert_eq!(normalize_path("/a%00b"), Err(BadPath::Control));
    }

    #[test]
    fn non_ascii_is_encoded_as_clients_send_it() {
        assert_eq!(encode_non_ascii("/café?q=ü"), "/caf%C3%A9?q=%C3%BC");
        assert_eq!(encode_non_ascii("/plain"), "/plain");
        assert_eq!(normalize_path(&encode_non_ascii("/café")).unwrap(), normalize_path("/caf%c3%a9").unwrap());
    }

    proptest::proptest! {
        #[test]
        fn normalising_never_panics_and_is_idempotent(path in "/[ -~é]{0,40}") {
            if let Ok(once) = normalize_path(&path) {
                proptest::prop_assert!(once.starts_with('/'));
                proptest::prop_assert_eq!(normalize_path(&once).unwrap(), once.clone());
            }
        }
    }
}
