//! Cache-Control directives (RFC 9111 §5.2), as sent in `Cache-Control`,
//! `CDN-Cache-Control` (RFC 9213) and `Surrogate-Control`.
//!
//! The parser never fails and never panics: unknown directives are ignored,
//! and a malformed value for a freshness directive makes the response stale
//! (max-age 0), as RFC 9111 §1.2.2 asks for invalid delta-seconds.

use http::header::{GetAll, HeaderValue};

/// RFC 9111 §1.2.2: delta-seconds too large to represent are taken as 2^31.
pub(crate) const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// Field names that qualify `no-cache` or `private`: those fields are
/// dropped from what is stored, the rest may be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Qualified {
    /// The bare directive: the whole response.
    All,
    /// `no-cache="set-cookie, x-user"`: only these fields (lower-case).
    Fields(Vec<String>),
}

/// The directives of one header's values (all lines together).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    pub no_cache: Option<Qualified>,
    pub private: Option<Qualified>,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub immutable: bool,
    /// No intermediary may change the content (RFC 9111 §5.2.2.6): no
    /// coding is made from it.
    pub no_transform: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// Request only: answer from cache or 504.
    pub only_if_cached: bool,
}

/// A `delta-seconds` value: digits only; too large → 2^31; anything else → 0
/// (stale), never a panic.
fn delta_seconds(v: Option<&str>) -> u64 {
    match v {
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().map_or(DELTA_SECONDS_MAX, |n| n.min(DELTA_SECONDS_MAX))
        }
        _ => 0,
    }
}

fn field_list(v: Option<&str>) -> Qualified {
    match v {
        None => Qualified::All,
        Some(list) => {
            let fields: Vec<String> =
                list.split(',').map(|f| f.trim().to_ascii_lowercase()).filter(|f| !f.is_empty()).collect();
            if fields.is_empty() { Qualified::All } else { Qualified::Fields(fields) }
        }
    }
}

/// Splits `a, b="x, y", c=1` into directives, honouring quoted strings and
/// backslash escapes inside them.
fn split_directives(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Name up to '=', ',' or end.
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b',' {
            i += 1;
        }
        let name = text[start..i].trim().to_ascii_lowercase();
        let mut value = None;
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    // Push the full character starting here.
                    let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
                    v.push_str(&text[i..i + ch_len]);
                    i += ch_len;
                }
                i += 1; // closing quote (or end)
                value = Some(v);
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
            } else {
                let vs = i;
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
                value = Some(text[vs..i].trim().to_string());
            }
        }
        if !name.is_empty() {
            out.push((name, value));
        }
    }
    out
}

impl Directives {
    /// Parses every line of a header. A byte outside ASCII (in a quoted
    /// note, say) is read as a replacement character: the line's other
    /// directives (`private`, `no-store`) still count.
    pub(crate) fn parse_all(values: GetAll<'_, HeaderValue>) -> Directives {
        let mut d = Directives::default();
        for v in values {
            d.add(&String::from_utf8_lossy(v.as_bytes()));
        }
        d
    }

    #[cfg(test)]
    pub(crate) fn parse(text: &str) -> Directives {
        let mut d = Directives::default();
        d.add(text);
        d
    }

    /// Adds directives; the first occurrence of a valued directive wins
    /// (RFC 9111 §4.2.1).
    fn add(&mut self, text: &str) {
        for (name, value) in split_directives(text) {
            let v = value.as_deref();
            match name.as_str() {
                "max-age" => {
                    self.max_age.get_or_insert(delta_seconds(v));
                }
                "s-maxage" => {
                    self.s_maxage.get_or_insert(delta_seconds(v));
                }
                "stale-while-revalidate" => {
                    self.stale_while_revalidate.get_or_insert(delta_seconds(v));
                }
                "stale-if-error" => {
                    self.stale_if_error.get_or_insert(delta_seconds(v));
                }
                "no-store" => self.no_store = true,
                "no-cache" => merge(&mut self.no_cache, field_list(v)),
                "private" => merge(&mut self.private, field_list(v)),
                "public" => self.public = true,
                "must-revalidate" => self.must_revalidate = true,
                "proxy-revalidate" => self.proxy_revalidate = true,
                "immutable" => self.immutable = true,
                "no-transform" => self.no_transform = true,
                "only-if-cached" => self.only_if_cached = true,
                _ => {}
            }
        }
    }

    /// Any directive at all (an empty `CDN-Cache-Control` does not take over).
    pub(crate) fn is_empty(&self) -> bool {
        *self == Directives::default()
    }
}

/// Two qualified forms combine; the bare form covers everything.
fn merge(slot: &mut Option<Qualified>, new: Qualified) {
    *slot = match (slot.take(), new) {
        (None, n) => Some(n),
        (Some(Qualified::All), _) | (_, Qualified::All) => Some(Qualified::All),
        (Some(Qualified::Fields(mut a)), Qualified::Fields(b)) => {
            a.extend(b);
            Some(Qualified::Fields(a))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_directives() {
        let d = Directives::parse("public, max-age=60, s-maxage=\"120\", stale-while-revalidate=30, Must-Revalidate");
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.s_maxage, Some(120));
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert!(d.public && d.must_revalidate && !d.no_store);
    }

    #[test]
    fn first_value_wins_and_bad_values_mean_stale() {
        assert_eq!(Directives::parse("max-age=10, max-age=20").max_age, Some(10));
        assert_eq!(Directives::parse("max-age=abc").max_age, Some(0));
        assert_eq!(Directives::parse("max-age=-5").max_age, Some(0));
        assert_eq!(Directives::parse("max-age").max_age, Some(0));
        assert_eq!(Directives::parse("max-age=99999999999999999999999").max_age, Some(DELTA_SECONDS_MAX));
    }

    #[test]
    fn qualified_no_cache_and_private() {
        let d = Directives::parse("no-cache=\"Set-Cookie, X-User\", private");
        assert_eq!(d.no_cache, Some(Qualified::Fields(vec!["set-cookie".into(), "x-user".into()])));
        assert_eq!(d.private, Some(Qualified::All));
        let d = Directives::parse("no-cache");
        assert_eq!(d.no_cache, Some(Qualified::All));
        let d = Directives::parse("private=\"a\", private=\"b\"");
        assert_eq!(d.private, Some(Qualified::Fields(vec!["a".into(), "b".into()])));
    }

    #[test]
    fn quoted_commas_do_not_split() {
        let d = Directives::parse("no-cache=\"a, b\", max-age=5, ext=\"x,\\\"y\", no-store");
        assert_eq!(d.max_age, Some(5));
        assert!(d.no_store);
        assert_eq!(d.no_cache, Some(Qualified::Fields(vec!["a".into(), "b".into()])));
    }

    #[test]
    fn multiple_lines_are_one_list() {
        let mut h = http::HeaderMap::new();
        h.append("cache-control", HeaderValue::from_static("max-age=5"));
        h.append("cache-control", HeaderValue::from_static("no-store"));
        let d = Directives::parse_all(h.get_all("cache-control"));
        assert_eq!(d.max_age, Some(5));
        assert!(d.no_store);
        assert!(!d.is_empty() && Directives::parse(" , ,").is_empty());
    }

    proptest! {
        #[test]
        fn never_panics(text in ".{0,200}") {
            let _ = Directives::parse(&text);
        }

        #[test]
        fn never_panics_on_directive_shaped_input(parts in proptest::collection::vec("[a-zA-Z-]{0,12}(=(\"[^\"]{0,10}\"?|[0-9a-z]{0,22}))?", 0..8)) {
            let text = parts.join(", ");
            let d = Directives::parse(&text);
            if let Some(m) = d.max_age { prop_assert!(m <= DELTA_SECONDS_MAX); }
        }
    }
}
