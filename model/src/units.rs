//! Small value types written as strings in config files: durations, byte
//! sizes, host names and path patterns.

use std::fmt;
use std::time::Duration;

/// The longest duration a file may give (ten years): longer ones are a
/// mistake, and added to a clock they would overflow it.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Parses `"30s"`, `"250ms"`, `"1h 30m"`, `"7d"`, up to [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!("a duration must not be negative, found `{text}`"));
    }
    let d = humantime::parse_duration(t)
        .map_err(|e| format!("`{text}` is not a duration such as \"30s\" or \"5m\": {e}"))?;
    if d > MAX_DURATION {
        return Err(format!("`{text}` is longer than any duration here may be (ten years)"));
    }
    Ok(d)
}

/// Parses `"512MiB"`, `"64 KiB"`, `"1GB"`, `"100"` (bytes). Binary units are
/// powers of 1024, decimal ones powers of 1000.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("`{text}` is not a size such as \"512MiB\", \"64KiB\" or \"1GB\"");
    if t.starts_with('-') {
        return Err(format!("a size must not be negative, found `{text}`"));
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    if num.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(multiplier).ok_or_else(|| format!("`{text}` is too large"));
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let bytes = f * multiplier as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(bytes.round() as u64)
}

/// A host a site answers for: an exact name or `*.suffix`, which matches one
/// or more labels in front of the suffix (not the suffix itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// Stores the suffix with its leading dot: `.example.test`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if name.is_empty() || name.len() > 253 {
            return Err(format!("`{text}` is not a host name"));
        }
        for label in name.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(format!(
                    "`{text}` is not a host name: labels are letters, digits and inner hyphens, \
                     and `*.` may only start a wildcard"
                ));
            }
        }
        if wild && !name.contains('.') {
            return Err(format!("`{text}` would claim every name under a top-level domain: name one below it"));
        }
        Ok(if wild { HostPattern::Wildcard(format!(".{name}")) } else { HostPattern::Exact(name.to_string()) })
    }

    /// Does this pattern match `host` (already lower-case, without port)?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }

    /// Could one host name be matched by both patterns?
    pub fn overlaps(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Exact(h), w @ HostPattern::Wildcard(_))
            | (w @ HostPattern::Wildcard(_), HostPattern::Exact(h)) => w.matches(h),
            // `*.a.b` and `*.b` both match `x.a.b`.
            (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => a.ends_with(b.as_str()) || b.ends_with(a.as_str()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// A URL path pattern: literal text with `*` matching any run of characters
/// (slashes included). `/static/*` matches everything under `/static/`;
/// `*.css` matches every stylesheet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    parts: Vec<String>,
}

/// A pattern's literal part as request paths are matched: normalised as
/// they are (non-ASCII and reserved escapes upper-cased, unreserved ones
/// decoded), so `/%7Euser/*` matches `/~user/a` and `/café/*` matches
/// `/caf%C3%A9/a`. `None` for a part normalising would change otherwise
/// (a dot segment), which no normalised path contains.
fn normal_part(part: &str, after_star: bool, before_star: bool) -> Option<String> {
    // A side that meets a `*` is padded, so `/.` before one (`/.*`, dot
    // files) is not taken for a dot segment.
    let (head, tail) = (if after_star { "x" } else { "" }, if before_star { "x" } else { "" });
    let rooted = format!("/{head}{}{tail}", crate::path::encode_non_ascii(part));
    let normal = crate::path::normalized(&rooted).ok()?;
    let normal = normal.strip_prefix('/')?.strip_prefix(head)?.strip_suffix(tail)?;
    // Dot segments are resolved: a part that changed in length other than
    // by escapes is not one a normalised path can hold.
    let escapes = |s: &str| s.bytes().filter(|b| *b == b'%').count();
    let plain = |s: &str| s.len() - 2 * escapes(s);
    let decoded = crate::path::encode_non_ascii(part);
    (plain(normal) == plain(&decoded)).then(|| normal.to_string())
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if !(text.starts_with('/') || text.starts_with('*')) {
            return Err(format!("path pattern `{text}` must start with `/` or `*`"));
        }
        if text.contains(['?', '#']) || text.chars().any(char::is_whitespace) {
            return Err(format!("path pattern `{text}` must not contain `?`, `#` or spaces"));
        }
        let mut parts = Vec::new();
        let count = text.split('*').count();
        for (i, part) in text.split('*').enumerate() {
            parts.push(normal_part(part, i > 0, i + 1 < count).ok_or_else(|| {
                format!("path pattern `{text}`: `{part}` is not part of a path a request can have (a dot segment?)")
            })?);
        }
        Ok(PathPattern { text: text.to_string(), parts })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, path: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(x) => x,
            None => return path.is_empty(),
        };
        let Some(mut remaining) = path.strip_prefix(first.as_str()) else { return false };
        let Some((last, middle)) = rest.split_last() else { return remaining.is_empty() };
        for part in middle {
            match remaining.find(part.as_str()) {
                Some(i) => remaining = &remaining[i + part.len()..],
                None => return false,
            }
        }
        remaining.len() >= last.len() && remaining.ends_with(last.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("512MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_byte_size("64 KiB"), Ok(65536));
        assert_eq!(parse_byte_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_byte_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_byte_size("100"), Ok(100));
        assert!(parse_byte_size("-1MiB").unwrap_err().contains("negative"));
        assert!(parse_byte_size("12 furlongs").is_err());
        assert!(parse_byte_size("MiB").is_err());
        assert!(parse_byte_size("99999999999TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("30").is_err(), "a unit is required");
        assert_eq!(parse_duration("3650d"), Ok(MAX_DURATION));
        assert!(parse_duration("3651d").unwrap_err().contains("ten years"));
        assert!(parse_duration("10000000000000000000s").unwrap_err().contains("ten years"));
    }

    #[test]
    fn host_patterns() {
        let exact = HostPattern::parse("WWW.Example.test.").unwrap();
        assert_eq!(exact, HostPattern::Exact("www.example.test".into()));
        let wild = HostPattern::parse("*.example.test").unwrap();
        assert!(wild.matches("a.example.test"));
        assert!(wild.matches("a.b.example.test"));
        assert!(!wild.matches("example.test"));
        assert!(!wild.matches("aexample.test"));
        assert!(wild.overlaps(&exact));
        assert!(wild.overlaps(&HostPattern::parse("*.b.example.test").unwrap()));
        assert!(!wild.overlaps(&HostPattern::parse("*.example.org").unwrap()));
        assert!(!exact.overlaps(&HostPattern::parse("example.test").unwrap()));
        for bad in ["", "a..b", "-a.b", "a_b.c", "a.*.b", "*", "a b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(wild.to_string(), "*.example.test");
    }

    #[test]
    fn path_patterns() {
        let p = PathPattern::parse("/static/*").unwrap();
        assert!(p.matches("/static/a/b.css"));
        assert!(p.matches("/static/"));
        assert!(!p.matches("/stat"));
        let css = PathPattern::parse("*.css").unwrap();
        assert!(css.matches("/x/y.css"));
        assert!(!css.matches("/x/y.css.map"));
        let mid = PathPattern::parse("/img/*/thumb/*.jpg").unwrap();
        assert!(mid.matches("/img/1/thumb/a.jpg"));
        assert!(!mid.matches("/img/1/full/a.jpg"));
        let exact = PathPattern::parse("/robots.txt").unwrap();
        assert!(exact.matches("/robots.txt") && !exact.matches("/robots.txt2"));
        // Literal parts are normalised as request paths are.
        let tilde = PathPattern::parse("/%7euser/private/*").unwrap();
        assert!(tilde.matches("/~user/private/a") && tilde.as_str() == "/%7euser/private/*");
        assert!(PathPattern::parse("/café/*").unwrap().matches("/caf%C3%A9/menu"));
        assert!(PathPattern::parse("/a%2fb/*").unwrap().matches("/a%2Fb/c"));
        assert!(PathPattern::parse("/.well-known/*").unwrap().matches("/.well-known/acme"));
        assert!(PathPattern::parse("/a/../b/*").unwrap_err().contains("dot segment"));
        for dotted in ["/.*", "*.*", "/img*.*", "/a/..*", "/.well-known/*"] {
            assert!(PathPattern::parse(dotted).is_ok(), "{dotted}");
        }
        assert!(PathPattern::parse("/.*").unwrap().matches("/.env"));
        assert!(PathPattern::parse("static").is_err());
        assert!(PathPattern::parse("/a?b").is_err());
    }
}
