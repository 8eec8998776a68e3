//! Cache keys. A key is a 128-bit hash of everything the upstream sees that
//! can change its answer: the site id, the `X-Forwarded-Proto` sent up, the
//! normalised Host when an origin of the site gets the client's (never the
//! raw Host), the method class (HEAD shares GET's entries), the normalised
//! path, the query as the site's rules shape it, and the values of the
//! site's key headers and of the withheld headers it forwards. A response
//! with `Vary` adds a second level: the variant key mixes in the request's
//! values of the varied headers.
//!
//! Keys are hashed with SipHash-1-3 under the cache's own random
//! [`KeySecret`], a pseudo-random function: a client who does not know the
//! secret cannot aim two requests at one key. A fast public hash would let
//! one: XXH3's rounds can be undone with chosen bytes, so a header value
//! can be made whose key is another value's, and the copy fetched for the
//! one served to the other (the stored URL is checked, but the URL is the
//! same). Where every node must agree without sharing a secret (which
//! shield or origin a miss goes to), [`RequestKey::placement`] is a public
//! hash of the same parts (what keys were before they had a secret, so
//! nodes of either version place alike): it picks a place, never a copy.

use std::borrow::Cow;
use std::hash::Hasher;
use std::io;

use http::header::{ACCEPT_ENCODING, HeaderMap, HeaderName};
use outpost_config::{CacheRules, QueryMode, Site};
use outpost_net::HeaderLookup;
use outpost_net::coding::{Accepted, Coding, qvalue};
use siphasher::sip128::{Hasher128, SipHasher13};
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

use crate::host::RequestHost;

pub use outpost_config::path::{BadPath, normalize_path, normalized};

/// A stored entry's key.
pub type Key = u128;

/// The secret a cache's keys are hashed with: drawn at random for each
/// cache, and kept beside a disk tier so that its keys hold across
/// restarts. Never sent, logged or shown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeySecret([u8; 16]);

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySecret(..)")
    }
}

impl KeySecret {
    /// A new secret from the kernel's random source.
    pub fn random() -> io::Result<KeySecret> {
        let mut bytes = [0u8; 16];
        let mut filled = 0;
        while filled < bytes.len() {
            match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
                Ok(n) => filled += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(KeySecret(bytes))
    }

    pub fn from_bytes(bytes: [u8; 16]) -> KeySecret {
        KeySecret(bytes)
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    fn hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_key(&self.0)
    }

    fn hash(&self, bytes: &[u8]) -> Key {
        let mut h = self.hasher();
        h.write(bytes);
        h.finish128().into()
    }
}

fn param_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(k, _)| k)
}

fn dropped(name: &str, drop: &[String]) -> bool {
    drop.iter().any(|d| match d.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => d == name,
    })
}

/// The query string as keyed and as sent upstream, or `None` for none.
pub fn shape_query<'a>(query: Option<&'a str>, rules: &CacheRules) -> Option<Cow<'a, str>> {
    let q = query.filter(|q| !q.is_empty())?;
    match rules.query {
        QueryMode::Ignore => None,
        QueryMode::Keep if rules.query_drop.is_empty() => Some(Cow::Borrowed(q)),
        mode => {
            let mut pairs: Vec<&str> =
                q.split('&').filter(|p| !p.is_empty() && !dropped(param_name(p), &rules.query_drop)).collect();
            if mode == QueryMode::Sort {
                // Stable: repeated names keep their order (`a=1&a=2` ≠ `a=2&a=1`).
                pairs.sort_by(|a, b| param_name(a).cmp(param_name(b)));
            }
            (!pairs.is_empty()).then(|| Cow::Owned(pairs.join("&")))
        }
    }
}

/// A request's place in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// Identifies the resource (before `Vary`).
    pub primary: Key,
    /// Normalised path plus shaped query: what purges by URL and prefix match.
    pub url: String,
    /// What the request's `Accept-Encoding` allows.
    pub accepted: Accepted,
    /// The coding the request is keyed and answered in: the best for it of
    /// the site's codings and identity. `None` when the site makes no
    /// codings: `Accept-Encoding` then passes through as written.
    pub coding: Option<Coding>,
    /// What its variant keys are hashed with: the primary key's secret.
    secret: KeySecret,
    /// See [`RequestKey::placement`].
    placement: Key,
}

/// The combined value of a request header, as compared for keys and `Vary`
/// (RFC 9111 §4.1): lines joined with ", ", outer whitespace trimmed.
fn header_value(headers: &impl HeaderLookup, name: &HeaderName, out: &mut Vec<u8>) {
    let mut first = true;
    for v in headers.get_all(name) {
        if !first {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(trim(v.as_bytes()));
        first = false;
    }
    out.extend_from_slice(&[0xff, u8::from(first)]);
}

/// A request header as `Vary` compares it: equivalent spellings share a
/// variant. Members of the list are compared with the whitespace around and
/// inside them collapsed (`a ,  b` is `a, b`); a well-formed
/// `Accept-Language` also without case and in preference order (`de,
/// en;q=0.8` is `en;q=0.80,DE`; equal weights keep their order). Absent
/// and empty stay different.
/// `Accept-Encoding` is the coding the request is answered in, when the
/// site negotiates one: the spellings of a coding share its variant.
fn vary_value(headers: &impl HeaderLookup, name: &HeaderName, coding: Option<Coding>, out: &mut impl Hasher) {
    if let (Some(c), true) = (coding, *name == ACCEPT_ENCODING) {
        out.write(c.token().as_bytes());
        out.write(&[0xfe]);
        return;
    }
    let values = headers.get_all(name);
    let present = values.iter().next().is_some();
    // Each member's words, then a separator.
    let members = values.iter().flat_map(|v| v.as_bytes().split(|b| *b == b','));
    if *name == http::header::ACCEPT_LANGUAGE {
        // Sorted, so gathered first (a short list: at most a request head).
        let members: Vec<String> = members
            .map(|m| String::from_utf8_lossy(m).split_ascii_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|m| !m.is_empty())
            .collect();
        for m in languages(&members) {
            out.write(m.as_bytes());
            out.write(b",");
        }
    } else {
        // Hashed as they are read: a hit on a varied object allocates nothing.
        for m in members {
            let mut any = false;
            for (i, w) in m.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty()).enumerate() {
                if i > 0 {
                    out.write(b" ");
                }
                out.write(w);
                any = true;
            }
            if any {
                out.write(b",");
            }
        }
    }
    out.write(&[0xff, u8::from(present)]);
}

/// `Accept-Language` members as `tag` or `tag;q=0.xyz`, lower-case, best
/// first, equal weights in the order the client listed them (some origins
/// take that order as a preference: RFC 9110 §12.5.4). Only a list that
/// reads strictly (RFC 4647 ranges, at most one `q` each, RFC 9110
/// qvalues, each range once) is brought to that form: any other list is
/// kept as it came (whitespace aside), its own variant, since an origin
/// may read a list that bends the grammar (`de;q=0;q=1`, `de;q=1e0`)
/// otherwise than it looks, and must not be given another list's copy.
fn languages(members: &[String]) -> Vec<String> {
    let strict = || -> Option<Vec<String>> {
        let mut weighed: Vec<(u16, String)> = Vec::new();
        for m in members {
            let (range, params) = m.split_once(';').map_or((m.as_str(), None), |(r, p)| (r, Some(p)));
            let range = range.trim().to_ascii_lowercase();
            let q = match params {
                None => 1000,
                Some(p) => qvalue(p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q="))?)?,
            };
            if !language_range(&range) || weighed.iter().any(|(_, r)| *r == range) {
                return None;
            }
            weighed.push((q, range));
        }
        // Stable: equal weights keep the client's order.
        weighed.sort_by_key(|(q, _)| std::cmp::Reverse(*q));
        Some(weighed.into_iter().map(|(q, r)| if q == 1000 { r } else { format!("{r};q=0.{q:03}") }).collect())
    };
    strict().unwrap_or_else(|| members.to_vec())
}

/// An RFC 4647 basic language range: `*`, or 1–8 letters then `-` and 1–8
/// letters or digits, any number of times.
fn language_range(r: &str) -> bool {
    let mut subtags = r.split('-');
    let first = subtags.next().unwrap_or_default();
    r == "*"
        || ((1..=8).contains(&first.len())
            && first.bytes().all(|b| b.is_ascii_alphabetic())
            && subtags.all(|t| (1..=8).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric())))
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

/// What the upstream sees of a request besides its target and fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scope<'a> {
    /// The `X-Forwarded-Proto` sent upstream.
    pub proto: Option<&'a str>,
    /// The client's host, when the site's origins get it.
    pub host: Option<RequestHost<'a>>,
}

impl<'a> Scope<'a> {
    /// The scope of a request to `site` for `host` over `proto`.
    pub fn of(site: &Site, proto: Option<&'a str>, host: RequestHost<'a>) -> Scope<'a> {
        Scope { proto, host: site.origin_sees_client_host().then_some(host) }
    }
}

thread_local! {
    /// The bytes a request's key is hashed from, kept on each thread from
    /// one request to the next: hashed in one call, which costs less than
    /// a streaming hasher fed piece by piece and gives the same digest.
    static MATERIAL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The bytes a request's primary key is hashed from (into `m`, cleared
/// first): everything the upstream sees that can change its answer, each
/// part ended so that no two requests' parts run together alike.
pub fn material(site: &Site, scope: Scope<'_>, url: &str, headers: &impl HeaderLookup, m: &mut Vec<u8>) {
    m.clear();
    m.extend_from_slice(site.id.as_bytes());
    m.push(0);
    m.extend_from_slice(scope.proto.unwrap_or("").as_bytes());
    m.push(0);
    if let Some(host) = scope.host {
        host.hash_into(|b| m.extend_from_slice(b));
    }
    // Method class: only GET (and HEAD, served from GET) is cached.
    m.extend_from_slice(b"\0GET\0");
    m.extend_from_slice(url.as_bytes());
    for name in site.cache.key_headers.iter().chain(&site.headers.forward) {
        m.push(0);
        m.extend_from_slice(name.as_str().as_bytes());
        header_value(headers, name, m);
    }
}

impl RequestKey {
    /// The key of a request to `site`, hashed with `secret`. `path` must
    /// already be normalised; `query` is the shaped query.
    pub fn new(
        secret: &KeySecret,
        site: &Site,
        scope: Scope<'_>,
        path: &str,
        query: Option<&str>,
        headers: &impl HeaderLookup,
    ) -> RequestKey {
        // One allocation, of the right size.
        let mut url = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
        url.push_str(path);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        let (primary, placement) = MATERIAL.with_borrow_mut(|m| {
            material(site, scope, &url, headers, m);
            (secret.hash(m), xxh3_128(m))
        });
        let accepted = Accepted::parse(headers);
        RequestKey { primary, url, accepted, coding: answered_in(site, &accepted), secret: *secret, placement }
    }

    /// The key of this request's variant of a response that varies on `names`.
    pub fn variant(&self, names: &[HeaderName], headers: &impl HeaderLookup) -> Key {
        let mut h = self.secret.hasher();
        h.write(&self.primary.to_le_bytes());
        for name in names {
            h.write(name.as_str().as_bytes());
            vary_value(headers, name, self.coding, &mut h);
        }
        h.finish128().into()
    }

    /// Where a miss of this request goes among a site's shields or
    /// weighted origins (rendezvous): every node must pick alike without
    /// sharing a secret, so this is a public hash (XXH3-128) of the parts
    /// its key is hashed from, the key itself before keys had a secret, so
    /// that nodes of either version send a request to the same shield. It
    /// picks a place to ask, never a stored copy: a client who aims two
    /// requests at one place only sends them to the same upstream.
    pub fn placement(&self) -> Key {
        self.placement
    }
}

/// The coding a request is answered in: the best of the site's codings
/// and identity by the client's weights (the site's order breaks ties);
/// identity when it refuses them all, as RFC 9110 §12.5.3 allows.
fn answered_in(site: &Site, accepted: &Accepted) -> Option<Coding> {
    let codings = &site.compress.codings;
    if codings.is_empty() {
        return None;
    }
    let mut offer = [Coding::Identity; 4];
    let n = codings.len().min(3);
    offer[..n].copy_from_slice(&codings[..n]);
    Some(accepted.best(&offer[..=n]).unwrap_or(Coding::Identity))
}

/// The key of the representation of the object stored under `key` (fetched
/// at `fetched_at`) in `coding`, made from it. A new copy of the object
/// (a refetch, a revalidation) has a new time, so an old representation is
/// never served for it. A public hash will do here and in [`chunk_key`]:
/// what is hashed is a secret-keyed key no client knows.
pub fn made_key(key: Key, fetched_at: std::time::SystemTime, coding: Coding) -> Key {
    let nanos = fetched_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut h = Xxh3::new();
    h.update(&key.to_le_bytes());
    h.update(&nanos.to_le_bytes());
    h.update(coding.token().as_bytes());
    h.update(b"made");
    h.digest128()
}

/// The field names a response's `Vary` lists, lower-case, in order, without
/// repeats. (`*` is refused earlier: such responses are never stored.)
pub fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(http::header::VARY) {
        let Ok(text) = v.to_str() else { continue };
        for t in text.split(',') {
            if let Ok(n) = HeaderName::from_bytes(t.trim().as_bytes())
                && !names.contains(&n)
            {
                names.push(n);
            }
        }
    }
    names
}

/// The key of chunk `index` of a body stored under `key` with `generation`.
/// The generation changes with every stored copy, so chunks of an old copy
/// are never mixed into a new one.
pub fn chunk_key(key: Key, generation: u64, index: u32) -> Key {
    let mut h = Xxh3::new();
    h.update(&key.to_le_bytes());
    h.update(&generation.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(b"chunk");
    h.digest128()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn rules(mode: QueryMode, drop: &[&str]) -> CacheRules {
        CacheRules { query: mode, query_drop: drop.iter().map(|s| s.to_string()).collect(), ..CacheRules::default() }
    }

    #[test]
    fn query_rules() {
        let q = Some("b=2&utm_source=x&a=1&a=0&utm_medium=y");
        assert_eq!(shape_query(q, &rules(QueryMode::Keep, &[])).as_deref(), q);
        assert_eq!(
            shape_query(q, &rules(QueryMode::Sort, &[])).as_deref(),
            Some("a=1&a=0&b=2&utm_medium=y&utm_source=x")
        );
        assert_eq!(shape_query(q, &rules(QueryMode::Sort, &["utm_*"])).as_deref(), Some("a=1&a=0&b=2"));
        assert_eq!(
            shape_query(q, &rules(QueryMode::Keep, &["utm_source"])).as_deref(),
            Some("b=2&a=1&a=0&utm_medium=y")
        );
        assert_eq!(shape_query(q, &rules(QueryMode::Ignore, &[])), None);
        assert_eq!(shape_query(Some("utm_source=1"), &rules(QueryMode::Sort, &["utm_source"])), None);
        assert_eq!(shape_query(Some(""), &rules(QueryMode::Keep, &[])), None);
    }

    fn secret() -> KeySecret {
        KeySecret::from_bytes(*b"sixteen byte key")
    }

    fn site(id: &str, extra: &str) -> Site {
        format!("[site]\nid = \"{id}\"\nhosts = [\"*.r.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:1\"\n{extra}")
            .parse()
            .unwrap()
    }

    #[test]
    fn keys_separate_sites_urls_and_key_headers() {
        let (a_site, b_site) = (site("a", ""), site("b", ""));
        let h = HeaderMap::new();
        let none = Scope::default();
        let a = RequestKey::new(&secret(), &a_site, none, "/x", None, &h);
        assert_eq!(a, RequestKey::new(&secret(), &a_site, none, "/x", None, &h));
        assert_ne!(a.primary, RequestKey::new(&secret(), &b_site, none, "/x", None, &h).primary);
        assert_ne!(a.primary, RequestKey::new(&secret(), &a_site, none, "/x", Some("q"), &h).primary);
        assert_eq!(RequestKey::new(&secret(), &a_site, none, "/x", Some("q=1"), &h).url, "/x?q=1");
        let with = site("a", "[cache]\nkey_headers = [\"x-device\"]\n");
        let mut mobile = HeaderMap::new();
        mobile.insert("x-device", HeaderValue::from_static(" mobile "));
        let mut mobile2 = HeaderMap::new();
        mobile2.insert("x-device", HeaderValue::from_static("mobile"));
        let k1 = RequestKey::new(&secret(), &with, none, "/x", None, &mobile);
        assert_eq!(k1, RequestKey::new(&secret(), &with, none, "/x", None, &mobile2), "whitespace does not matter");
        assert_ne!(k1.primary, RequestKey::new(&secret(), &with, none, "/x", None, &h).primary);
        // A withheld field the site forwards is keyed.
        let fwd = site("a", "[headers]\nforward = [\"x-forwarded-host\"]\n");
        let mut xfh = HeaderMap::new();
        xfh.insert("x-forwarded-host", HeaderValue::from_static("evil.test"));
        assert_ne!(
            RequestKey::new(&secret(), &fwd, none, "/x", None, &xfh),
            RequestKey::new(&secret(), &fwd, none, "/x", None, &h)
        );
        assert_eq!(
            RequestKey::new(&secret(), &a_site, none, "/x", None, &xfh),
            RequestKey::new(&secret(), &a_site, none, "/x", None, &h)
        );
    }

    /// The disk tier keeps objects under these keys across restarts, its
    /// secret kept beside it: under one secret a key is always the same.
    /// Another secret makes other keys, and the placement (which every node
    /// computes alike, secret or not) stays.
    #[test]
    fn keys_hold_under_one_secret_and_differ_under_another() {
        let s = site("a", "[cache]\nkey_headers = [\"x-device\"]\n");
        let mut h = HeaderMap::new();
        h.append("x-device", http::HeaderValue::from_static(" phone "));
        h.append("x-device", http::HeaderValue::from_static("tablet"));
        let host = RequestHost::parse("Alice.r.test:8443").unwrap();
        let scope = Scope::of(&s, Some("https"), host);
        let key = RequestKey::new(&secret(), &s, scope, "/p/i.png", Some("v=2"), &h);
        assert_eq!(format!("{:032x}", key.primary), "1d7815b0f541347d35139d1f0cd58f89");
        let plain = RequestKey::new(&secret(), &s, Scope::default(), "/", None, &HeaderMap::new());
        assert_eq!(format!("{:032x}", plain.primary), "9b2ca51d9e250c39fa62a6234f90d577");
        let names = [HeaderName::from_static("x-device")];
        assert_eq!(format!("{:032x}", key.variant(&names, &h)), "31b38b767b96c8e05042f900dc90a2a7");
        let other = KeySecret::from_bytes(*b"another 16 bytes");
        let elsewhere = RequestKey::new(&other, &s, scope, "/p/i.png", Some("v=2"), &h);
        assert_ne!(elsewhere.primary, key.primary);
        assert_ne!(elsewhere.variant(&names, &h), key.variant(&names, &h));
        assert_eq!(elsewhere.placement(), key.placement());
        // The key these parts had before keys had a secret: nodes of either
        // version send the request to the same shield.
        assert_eq!(format!("{:032x}", key.placement()), "bafb4b098ae84dbfb6a86a6a73fb519e");
        assert_eq!(format!("{:032x}", plain.placement()), "5c9acf9ba1a39aa801b6f29d53d6935c");
        assert_eq!(format!("{other:?}"), "KeySecret(..)", "a secret is never shown");
    }

    #[test]
    fn random_secrets_differ() {
        assert_ne!(KeySecret::random().unwrap(), KeySecret::random().unwrap());
    }

    #[test]
    fn keys_cover_the_host_and_scheme_the_origin_sees() {
        let s = site("a", "");
        let h = HeaderMap::new();
        let key = |proto: Option<&str>, host: &str| {
            let host = RequestHost::parse(host).unwrap();
            RequestKey::new(&secret(), &s, Scope::of(&s, proto, host), "/profile", None, &h).primary
        };
        let alice = key(Some("https"), "alice.r.test");
        assert_ne!(alice, key(Some("https"), "bob.r.test"), "one host's answer is not another's");
        assert_eq!(alice, key(Some("https"), "ALICE.r.test."), "the host is normalised");
        assert_ne!(alice, key(Some("http"), "alice.r.test"), "an origin may answer http and https differently");
        assert_ne!(alice, key(Some("https"), "alice.r.test:8443"));
        // When every origin gets a fixed Host, the client's does not matter.
        let fixed = site("a", "[[origin]]\nurl = \"http://127.0.0.1:2\"\nhost = \"o.test\"\n");
        assert!(fixed.origin_sees_client_host(), "the first origin still gets the client's");
        let only_fixed: Site =
            "[site]\nid = \"a\"\nhosts = [\"*.r.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:1\"\nhost = \"o.test\"\n"
                .parse()
                .unwrap();
        let k = |host: &str| {
            let host = RequestHost::parse(host).unwrap();
            RequestKey::new(&secret(), &only_fixed, Scope::of(&only_fixed, Some("https"), host), "/p", None, &h).primary
        };
        assert_eq!(k("alice.r.test"), k("bob.r.test"));
    }

    #[test]
    fn variants_follow_vary_values() {
        let k = RequestKey::new(&secret(), &site("a", ""), Scope::default(), "/x", None, &HeaderMap::new());
        let names = [HeaderName::from_static("accept-language")];
        let mut en = HeaderMap::new();
        en.insert("accept-language", HeaderValue::from_static("en"));
        let mut de = HeaderMap::new();
        de.insert("accept-language", HeaderValue::from_static("de"));
        assert_ne!(k.variant(&names, &en), k.variant(&names, &de));
        assert_eq!(k.variant(&names, &en), k.variant(&names, &en.clone()));
        // Absent and empty are different requests.
        let mut empty = HeaderMap::new();
        empty.insert("accept-language", HeaderValue::from_static(""));
        assert_ne!(k.variant(&names, &HeaderMap::new()), k.variant(&names, &empty));
        let mut resp = HeaderMap::new();
        resp.append("vary", HeaderValue::from_static("Accept-Language, accept-language"));
        resp.append("vary", HeaderValue::from_static("X-Dev"));
        assert_eq!(
            vary_names(&resp),
            vec![HeaderName::from_static("accept-language"), HeaderName::from_static("x-dev")]
        );
        assert_ne!(chunk_key(1, 1, 0), chunk_key(1, 2, 0));
        assert_ne!(chunk_key(1, 1, 0), chunk_key(1, 1, 1));
    }

    #[test]
    fn equivalent_spellings_share_a_variant() {
        let k = RequestKey::new(&secret(), &site("a", ""), Scope::default(), "/x", None, &HeaderMap::new());
        let variant = |name: &'static str, values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(name, HeaderValue::from_static(v));
            }
            k.variant(&[HeaderName::from_static(name)], &h)
        };
        let lang = |values: &[&'static str]| variant("accept-language", values);
        let same = lang(&["en-US,fr"]);
        for spelling in [&["EN-us ,  fr;q=1"][..], &["en-US", "fr"], &["en-us;Q=1.000,FR"]] {
            assert_eq!(lang(spelling), same, "{spelling:?}");
        }
        assert_ne!(lang(&["fr, en-US"]), same, "equal weights in another order may be another preference");
        assert_eq!(lang(&["de, en;q=0.8"]), lang(&["en;q=0.80,DE"]), "weights order the list");
        assert_eq!(lang(&["de;q=0.5"]), lang(&["de;q=0.500"]));
        assert_ne!(lang(&["en;q=0.8,de"]), lang(&["en,de;q=0.8"]), "different preferences");
        assert_ne!(lang(&["en"]), lang(&["en;q=0"]), "q=0 refuses a language");
        assert_ne!(lang(&["en"]), lang(&["de"]));
        // Lists that bend the grammar are their own variants: an origin may
        // read them otherwise than they look.
        for bent in
            ["de;q=0;q=1", "de;q=1e0", "de;q=+1", "de;q=1.0001", "de;q=1.5", "de;level=1", "de, de", "d_e", "de;q="]
        {
            let bent = HeaderValue::from_static(bent);
            let mut h = HeaderMap::new();
            h.insert("accept-language", bent.clone());
            let got = k.variant(&[HeaderName::from_static("accept-language")], &h);
            assert_ne!(got, lang(&["de"]), "{bent:?}");
        }
        assert_eq!(lang(&["de;q=0;q=1"]), lang(&["de;q=0;q=1 "]), "whitespace aside, as it came");
        assert_ne!(lang(&["de;q=0;q=1"]), lang(&["DE;q=0;q=1"]), "case kept where the list is kept as it came");
        // Other fields: only whitespace is normalised; order and case count.
        let other = |values: &[&'static str]| variant("x-dev", values);
        assert_eq!(other(&["a,  b"]), other(&["a ,b"]));
        assert_eq!(other(&["a, b"]), other(&["a", "b"]));
        assert_eq!(other(&["one  two"]), other(&["one two"]));
        assert_ne!(other(&["a, b"]), other(&["b, a"]));
        assert_ne!(other(&["A"]), other(&["a"]));
        assert_ne!(other(&[]), other(&[""]), "absent and empty differ");
    }

    proptest! {
        #[test]
        fn variants_of_hostile_fields_never_panic(v in proptest::collection::vec(any::<u8>(), 0..200)) {
            let k = RequestKey::new(&secret(), &site("a", ""), Scope::default(), "/x", None, &HeaderMap::new());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                for name in ["accept-language", "x-dev"] {
                    let mut h = HeaderMap::new();
                    h.insert(name, v.clone());
                    let _ = k.variant(&[HeaderName::from_static(name)], &h);
                }
            }
        }

        #[test]
        fn query_shaping_never_panics(q in "[a-z=&_*]{0,30}") {
            for mode in [QueryMode::Keep, QueryMode::Sort, QueryMode::Ignore] {
                let _ = shape_query(Some(&q), &rules(mode, &["a", "b*"]));
            }
        }
    }
}
