//! A request's header fields, looked up by name many times over.
//!
//! Serving one request asks its header map for a dozen names or more
//! (`Content-Length`, `Transfer-Encoding`, `CDN-Loop`, `Cache-Control`,
//! `Authorization`, `Accept-Encoding`, the conditionals, `Range`, …), and
//! most of them are absent. `HeaderMap` answers each by hashing the name
//! (FNV over the name's representation, byte by byte) and probing its
//! table: about a hundred instructions, whether the name is there or not.
//!
//! [`RequestHeaders`] keeps, beside the map, one bit for each name it holds
//! ([`NameSet`], a 64-bit Bloom filter with one hash), made in one pass
//! over the map's names. A name whose bit is clear is not in the map, and
//! its lookup ends there; a name whose bit is set is looked up in the map
//! as before. The set has no false negatives, so every lookup answers as
//! the map would. The map cannot be changed through a `RequestHeaders`:
//! the set stays true.

use std::borrow::Borrow;
use std::ops::Deref;
use std::sync::LazyLock;

use http::HeaderMap;
use http::header::{GetAll, HeaderName, HeaderValue};

/// Which names a header map may hold: one bit per name, by a hash of the
/// name's length and its first, middle and last bytes. A clear bit means
/// the name is not there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NameSet(u64);

impl NameSet {
    /// The names of `map`.
    pub fn of(map: &HeaderMap) -> NameSet {
        NameSet(map.keys().fold(0, |set, name| set | bit(name)))
    }

    /// Might the map this set was made of hold `name`? `false` is certain.
    pub fn may_hold(self, name: &HeaderName) -> bool {
        self.0 & bit(name) != 0
    }
}

/// `name`'s bit. Names in a map are in lower case, and never empty.
#[inline]
fn bit(name: &HeaderName) -> u64 {
    let s = name.as_str().as_bytes();
    let (first, middle, last) = match s {
        [] => (0, 0, 0),
        _ => (s[0], s[s.len() / 2], s[s.len() - 1]),
    };
    let mixed = ((s.len() as u32) << 24 | u32::from(first) << 16 | u32::from(middle) << 8 | u32::from(last))
        .wrapping_mul(0x9E37_79B9);
    1 << (mixed >> 26)
}

/// A request's header map with the [`NameSet`] of its names: lookups of
/// names it does not hold cost a few instructions. Reads like the map
/// (it dereferences to it); `get`, `get_all` and `contains_key` are the
/// map's own, answered the same.
#[derive(Debug, Clone, Default)]
pub struct RequestHeaders {
    map: HeaderMap,
    names: NameSet,
}

/// Lent out for a name not held: a map with no entries answers any lookup
/// at once.
static NONE: LazyLock<HeaderMap> = LazyLock::new(HeaderMap::new);

impl RequestHeaders {
    pub fn new(map: HeaderMap) -> RequestHeaders {
        RequestHeaders { names: NameSet::of(&map), map }
    }

    /// Every value of `name`, as [`HeaderMap::get_all`].
    #[inline]
    pub fn get_all(&self, name: impl Borrow<HeaderName>) -> GetAll<'_, HeaderValue> {
        let name = name.borrow();
        if self.names.may_hold(name) { self.map.get_all(name) } else { NONE.get_all(name) }
    }

    /// The first value of `name`, as [`HeaderMap::get`].
    #[inline]
    pub fn get(&self, name: impl Borrow<HeaderName>) -> Option<&HeaderValue> {
        let name = name.borrow();
        if self.names.may_hold(name) { self.map.get(name) } else { None }
    }

    /// Whether `name` is there, as [`HeaderMap::contains_key`].
    #[inline]
    pub fn contains_key(&self, name: impl Borrow<HeaderName>) -> bool {
        let name = name.borrow();
        self.names.may_hold(name) && self.map.contains_key(name)
    }

    /// The map, given back.
    pub fn into_map(self) -> HeaderMap {
        self.map
    }
}

impl Deref for RequestHeaders {
    type Target = HeaderMap;
    fn deref(&self) -> &HeaderMap {
        &self.map
    }
}

impl From<HeaderMap> for RequestHeaders {
    fn from(map: HeaderMap) -> RequestHeaders {
        RequestHeaders::new(map)
    }
}

/// Looking up fields by name, in a [`HeaderMap`] or, quicker for names not
/// there, in [`RequestHeaders`]. For code that reads a request's fields
/// from either.
pub trait HeaderLookup {
    /// Every value of `name`, in order.
    fn get_all(&self, name: &HeaderName) -> GetAll<'_, HeaderValue>;
    /// The first value of `name`.
    fn get(&self, name: &HeaderName) -> Option<&HeaderValue>;
    /// Whether `name` is there.
    fn contains_key(&self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }
}

impl HeaderLookup for RequestHeaders {
    fn get_all(&self, name: &HeaderName) -> GetAll<'_, HeaderValue> {
        RequestHeaders::get_all(self, name)
    }
    fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        RequestHeaders::get(self, name)
    }
    fn contains_key(&self, name: &HeaderName) -> bool {
        RequestHeaders::contains_key(self, name)
    }
}

impl HeaderLookup for HeaderMap {
    fn get_all(&self, name: &HeaderName) -> GetAll<'_, HeaderValue> {
        HeaderMap::get_all(self, name)
    }
    fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        HeaderMap::get(self, name)
    }
    fn contains_key(&self, name: &HeaderName) -> bool {
        HeaderMap::contains_key(self, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a browser sends for a page's asset.
    const BROWSER: &[&str] = &[
        "host",
        "user-agent",
        "accept",
        "accept-language",
        "accept-encoding",
        "cookie",
        "referer",
        "connection",
        "sec-fetch-dest",
        "sec-fetch-mode",
        "sec-fetch-site",
        "sec-ch-ua",
        "sec-ch-ua-mobile",
        "sec-ch-ua-platform",
        "priority",
        "dnt",
    ];
    /// What serving a request looks up, usually absent.
    const LOOKED_UP: &[&str] = &[
        "content-length",
        "transfer-encoding",
        "cache-control",
        "authorization",
        "if-none-match",
        "if-modified-since",
        "if-range",
        "range",
        "pragma",
        "via",
        "cdn-loop",
        "x-forwarded-proto",
    ];

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in fields {
            m.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    fn values<'a>(all: GetAll<'a, HeaderValue>) -> Vec<&'a HeaderValue> {
        all.iter().collect()
    }

    #[test]
    fn every_lookup_answers_as_the_map_does() {
        let mut fields: Vec<(&str, &str)> = BROWSER.iter().map(|n| (*n, "v")).collect();
        fields.extend([("x-device", "phone"), ("cache-control", "no-cache"), ("cache-control", "max-age=0")]);
        let m = map(&fields);
        let h = RequestHeaders::new(m.clone());
        let mut asked = 0;
        for name in BROWSER.iter().chain(LOOKED_UP).chain(&["x-device", "x-other", "a", "host2"]) {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(values(h.get_all(&name)), values(m.get_all(&name)), "{name}");
            assert_eq!(h.get(&name), m.get(&name), "{name}");
            assert_eq!(h.contains_key(&name), m.contains_key(&name), "{name}");
            assert_eq!(values(HeaderLookup::get_all(&h, &name)), values(m.get_all(&name)), "{name}");
            assert_eq!(HeaderLookup::contains_key(&h, &name), m.contains_key(&name), "{name}");
            asked += 1;
        }
        assert_eq!(asked, BROWSER.len() + LOOKED_UP.len() + 4);
        assert_eq!(values(h.get_all(http::header::CACHE_CONTROL)).len(), 2, "every value, in order");
        assert!(RequestHeaders::default().get(http::header::HOST).is_none());
    }

    #[test]
    fn a_name_held_always_has_its_bit() {
        for n in BROWSER.iter().chain(LOOKED_UP) {
            let name = HeaderName::from_bytes(n.as_bytes()).unwrap();
            let set = NameSet::of(&map(&[(n, "v")]));
            assert!(set.may_hold(&name), "{n}");
        }
    }

    #[test]
    fn names_looked_up_are_told_apart_from_a_browsers() {
        // The set is worth keeping only if it rules out most of what is
        // looked up in the usual request.
        let set = NameSet::of(&map(&BROWSER.iter().map(|n| (*n, "v")).collect::<Vec<_>>()));
        let held: Vec<&str> = LOOKED_UP
            .iter()
            .copied()
            .filter(|n| set.may_hold(&HeaderName::from_bytes(n.as_bytes()).unwrap()))
            .collect();
        assert!(held.len() <= 2, "{} of {} names not sent still look held: {held:?}", held.len(), LOOKED_UP.len());
        let only_host = NameSet::of(&map(&[("host", "a")]));
        for n in LOOKED_UP {
            assert!(!only_host.may_hold(&HeaderName::from_bytes(n.as_bytes()).unwrap()), "{n}");
        }
    }
}
