//! Content codings (RFC 9110 §8.4) by name: what a site's `[compress]
//! codings` lists and a response's `Content-Encoding` says. Negotiation and
//! the codecs are in `outpost_net::coding`.

use http::HeaderMap;
use http::header::CONTENT_ENCODING;

/// A content coding Outpost can make and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    Identity,
    Gzip,
    Br,
    Zstd,
}

/// Every coding, in the order a server prefers them when a client weighs
/// them the same: the smallest text first.
pub const ALL: [Coding; 4] = [Coding::Br, Coding::Zstd, Coding::Gzip, Coding::Identity];

impl Coding {
    /// Its name in `Content-Encoding` and `Accept-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }

    /// A coding by name, as `Accept-Encoding` and `Content-Encoding` write
    /// it (case-insensitive; `x-gzip` is gzip, RFC 9110 §8.4.1.3).
    pub fn parse(name: &str) -> Option<Coding> {
        let name = name.trim();
        ALL.into_iter().find(|c| name.eq_ignore_ascii_case(c.token())).or_else(|| {
            let gzip = name.eq_ignore_ascii_case("x-gzip");
            gzip.then_some(Coding::Gzip)
        })
    }

    /// The coding of a response's body: `Identity` without
    /// `Content-Encoding`; `None` when it names a coding this module does
    /// not know, or more than one.
    pub fn of(headers: &HeaderMap) -> Option<Coding> {
        let mut found = Coding::Identity;
        for value in headers.get_all(CONTENT_ENCODING) {
            for name in value.to_str().ok()?.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match (found, Coding::parse(name)?) {
                    (_, Coding::Identity) => {}
                    (Coding::Identity, c) => found = c,
                    // Two codings stacked: not one this module reads.
                    _ => return None,
                }
            }
        }
        Some(found)
    }

    /// Its place in arrays indexed by coding.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn content_encoding_names_one_known_coding() {
        let of = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_ENCODING, HeaderValue::from_static(v));
            Coding::of(&h)
        };
        assert_eq!(Coding::of(&HeaderMap::new()), Some(Coding::Identity));
        assert_eq!(of("gzip"), Some(Coding::Gzip));
        assert_eq!(of("BR"), Some(Coding::Br));
        assert_eq!(of("identity"), Some(Coding::Identity));
        assert_eq!(of("gzip, br"), None, "stacked codings");
        assert_eq!(of("deflate"), None);
    }
}
