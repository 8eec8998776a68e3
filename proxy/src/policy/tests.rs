//! Policy tests with exact times: no clock, no sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use outpost_config::{CacheRules, PathPattern, PathRule, StalePolicy};

use super::*;

const T0: u64 = 1_700_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}

fn get() -> RequestFacts<'static> {
    RequestFacts { method: &Method::GET, path: "/a", has_authorization: false, no_store: false }
}

fn no_defaults() -> (CacheRules, StalePolicy) {
    let rules = CacheRules { default_ttl: Duration::ZERO, ..CacheRules::default() };
    let stale = StalePolicy {
        while_revalidate: Duration::ZERO,
        if_error: Duration::ZERO,
        partition_grace: Duration::from_secs(300),
    };
    (rules, stale)
}

fn plan(status: u16, pairs: &[(&str, &str)]) -> Result<StorePlan, NotStored> {
    let (rules, stale) = no_defaults();
    storability(get(), StatusCode::from_u16(status).unwrap(), &headers(pairs), &rules, &stale, at(T0))
}

fn lifetime(status: u16, pairs: &[(&str, &str)]) -> Option<u64> {
    plan(status, pairs).ok().map(|p| p.lifetime.as_secs())
}

#[test]
fn s_maxage_beats_max_age_beats_expires() {
    let date = httpdate::fmt_http_date(at(T0));
    let expires = httpdate::fmt_http_date(at(T0 + 300));
    assert_eq!(lifetime(200, &[("cache-control", "max-age=60, s-maxage=120"), ("expires", &expires)]), Some(120));
    assert_eq!(lifetime(200, &[("cache-control", "max-age=60"), ("expires", &expires)]), Some(60));
    assert_eq!(lifetime(200, &[("date", &date), ("expires", &expires)]), Some(300));
    assert_eq!(lifetime(200, &[("date", &date), ("expires", "0")]), Some(0), "invalid Expires means expired");
}

#[test]
fn cdn_cache_control_takes_precedence_and_hides_cache_control() {
    let h = [("cache-control", "no-cache, max-age=0"), ("cdn-cache-control", "max-age=600")];
    let p = plan(200, &h).unwrap();
    assert_eq!(p.lifetime.as_secs(), 600);
    assert!(!p.always_revalidate, "Cache-Control's no-cache is for browsers here");
    assert_eq!(lifetime(200, &[("cache-control", "max-age=5"), ("surrogate-control", "max-age=50")]), Some(50));
    assert_eq!(
        lifetime(200, &[("surrogate-control", "max-age=50"), ("cdn-cache-control", "max-age=500")]),
        Some(500),
        "CDN-Cache-Control over Surrogate-Control"
    );
    // As a whole: nothing of Cache-Control counts once a targeted field
    // speaks (RFC 9213 §2.1), not even no-store or private, nor Expires.
    assert_eq!(
        plan(200, &[("cache-control", "no-store"), ("cdn-cache-control", "max-age=600")]).unwrap().lifetime.as_secs(),
        600
    );
    assert_eq!(
        plan(200, &[("cache-control", "private"), ("cdn-cache-control", "max-age=600")]).unwrap().lifetime.as_secs(),
        600
    );
    let expires = httpdate::fmt_http_date(at(T0 + 300));
    assert_eq!(lifetime(200, &[("expires", &expires)]), Some(300));
    assert_eq!(
        lifetime(200, &[("expires", &expires), ("cdn-cache-control", "public")]),
        Some(0),
        "Expires does not count: public alone gets the (zero) default"
    );
    // The CDN's own directives still bind: private there is private.
    assert_eq!(plan(200, &[("cdn-cache-control", "private")]), Err(NotStored::Private));
    assert_eq!(
        plan(200, &[("cdn-cache-control", "no-store"), ("cache-control", "max-age=60")]),
        Err(NotStored::NoStore)
    );
    // An empty targeted field says nothing: Cache-Control applies.
    assert_eq!(plan(200, &[("cdn-cache-control", ""), ("cache-control", "no-store")]), Err(NotStored::NoStore));
    // Outpost's own field first, over every other.
    assert_eq!(
        lifetime(
            200,
            &[
                ("outpost-cache-control", "max-age=7"),
                ("cdn-cache-control", "max-age=500"),
                ("cache-control", "max-age=5")
            ]
        ),
        Some(7)
    );
    assert_eq!(
        plan(200, &[("outpost-cache-control", "no-store"), ("cdn-cache-control", "max-age=500")]),
        Err(NotStored::NoStore)
    );
}

#[test]
fn no_store_private_and_cookies() {
    assert_eq!(plan(200, &[("cache-control", "no-store, max-age=60")]), Err(NotStored::NoStore));
    assert_eq!(plan(200, &[("cache-control", "private, max-age=60")]), Err(NotStored::Private));
    assert_eq!(plan(200, &[("cache-control", "max-age=60"), ("set-cookie", "a=1")]), Err(NotStored::SetCookie));
    let p = plan(200, &[("cache-control", "max-age=60, no-cache=\"set-cookie\""), ("set-cookie", "a=1")]).unwrap();
    assert_eq!(p.strip, vec![http::header::SET_COOKIE], "stored without the cookie");
    assert!(!p.always_revalidate);
    let p = plan(200, &[("cache-control", "max-age=60, private=\"x-user\"")]).unwrap();
    assert_eq!(p.strip, vec![http::HeaderName::from_static("x-user")]);
}

#[test]
fn no_cache_is_stored_but_always_revalidated_and_never_stale() {
    let p = plan(200, &[("cache-control", "no-cache, max-age=60, stale-if-error=600")]).unwrap();
    assert!(p.always_revalidate && p.never_stale);
    assert_eq!(p.stale_if_error, Duration::ZERO);
    let t = timing(&p, 0);
    assert_eq!(t.freshness(at(T0)), Freshness::Stale(Duration::ZERO));
}

#[test]
fn must_revalidate_proxy_revalidate_and_s_maxage_forbid_stale() {
    for cc in ["max-age=10, must-revalidate", "max-age=10, proxy-revalidate", "s-maxage=10"] {
        let p =
            plan(200, &[("cache-control", &format!("{cc}, stale-while-revalidate=60, stale-if-error=60"))]).unwrap();
        assert!(p.never_stale, "{cc}");
        let t = timing(&p, 0);
        assert_eq!(t.freshness(at(T0 + 11)), Freshness::Stale(Duration::from_secs(1)), "{cc}");
        assert!(!t.usable_if_error(at(T0 + 11)), "{cc}");
    }
}

fn timing(p: &StorePlan, initial_age: u64) -> Timing {
    Timing {
        lifetime: p.lifetime,
        initial_age: Duration::from_secs(initial_age),
        response_time: at(T0),
        stale_while_revalidate: p.stale_while_revalidate,
        stale_if_error: p.stale_if_error,
        always_revalidate: p.always_revalidate,
    }
}

#[test]
fn stale_while_revalidate_and_stale_if_error_windows() {
    let p = plan(200, &[("cache-control", "max-age=10, stale-while-revalidate=20, stale-if-error=100")]).unwrap();
    let t = timing(&p, 0);
    assert_eq!(t.freshness(at(T0 + 5)), Freshness::Fresh(Duration::from_secs(5)));
    assert_eq!(t.freshness(at(T0 + 15)), Freshness::StaleWhileRevalidate(Duration::from_secs(5)));
    assert_eq!(t.freshness(at(T0 + 30)), Freshness::Stale(Duration::from_secs(20)));
    assert!(t.usable_if_error(at(T0 + 109)));
    assert!(!t.usable_if_error(at(T0 + 110)));
    assert_eq!(t.ttl_seconds(at(T0 + 30)), -20);
}

/// An invalidated copy (RFC 9111 §4.4) is validated before it is sent
/// again, however fresh it was: never served stale meanwhile, nor in place
/// of an error.
#[test]
fn an_invalidated_copy_is_stale_at_once_and_stands_in_for_nothing() {
    let p = plan(200, &[("cache-control", "max-age=600, stale-while-revalidate=60, stale-if-error=600")]).unwrap();
    let t = timing(&p, 0).invalidated();
    assert_eq!(t.freshness(at(T0 + 5)), Freshness::Stale(Duration::from_secs(5)));
    assert!(!t.usable_if_error(at(T0 + 5)));
    assert!(!t.stands_in(at(T0 + 5), true), "not even on a node cut off from its control plane");
    assert!(timing(&p, 0).stands_in(at(T0 + 5), true) && timing(&p, 0).stands_in(at(T0 + 700), false));
    assert_eq!(t.age(at(T0 + 5)), timing(&p, 0).age(at(T0 + 5)), "its age is its own still");
}

#[test]
fn site_stale_defaults_apply_when_the_origin_is_silent() {
    let (rules, mut stale) = no_defaults();
    stale.while_revalidate = Duration::from_secs(7);
    stale.if_error = Duration::from_secs(3600);
    let h = headers(&[("cache-control", "max-age=10")]);
    let p = storability(get(), StatusCode::OK, &h, &rules, &stale, at(T0)).unwrap();
    assert_eq!((p.stale_while_revalidate.as_secs(), p.stale_if_error.as_secs()), (7, 3600));
    let h = headers(&[("cache-control", "max-age=10, stale-if-error=5")]);
    let p = storability(get(), StatusCode::OK, &h, &rules, &stale, at(T0)).unwrap();
    assert_eq!(p.stale_if_error.as_secs(), 5, "the origin's own value wins");
}

#[test]
fn freshness_is_guessed_from_last_modified_only_where_the_default_is_zero() {
    let (mut rules, stale) = no_defaults();
    rules.heuristic_max = Duration::from_secs(3600);
    let guess = |pairs: &[(&str, &str)], rules: &CacheRules| {
        storability(get(), StatusCode::OK, &headers(pairs), rules, &stale, at(T0))
            .map(|p| (p.lifetime.as_secs(), p.heuristic))
    };
    let date = httpdate::fmt_http_date(at(T0));
    let lm = |ago: u64| httpdate::fmt_http_date(at(T0 - ago));
    // A tenth of the time since it changed, by the response's Date.
    assert_eq!(guess(&[("date", &date), ("last-modified", &lm(1000))], &rules), Ok((100, true)));
    assert_eq!(guess(&[("last-modified", &lm(1000))], &rules), Ok((100, true)), "no Date: the time it arrived");
    // Capped by the site.
    assert_eq!(guess(&[("date", &date), ("last-modified", &lm(10 * 86400))], &rules), Ok((3600, true)));
    // Nothing to guess from: not stored.
    assert_eq!(guess(&[("date", &date)], &rules), Err(NotStored::NoFreshness));
    assert_eq!(guess(&[("date", &date), ("last-modified", "yesterday")], &rules), Err(NotStored::NoFreshness));
    let future = httpdate::fmt_http_date(at(T0 + 60));
    assert_eq!(guess(&[("date", &date), ("last-modified", &future)], &rules), Err(NotStored::NoFreshness));
    // Explicit freshness, a status TTL or a default TTL come first.
    assert_eq!(guess(&[("cache-control", "max-age=5"), ("last-modified", &lm(1000))], &rules), Ok((5, false)));
    let mut with_default = rules.clone();
    with_default.default_ttl = Duration::from_secs(60);
    assert_eq!(guess(&[("date", &date), ("last-modified", &lm(1000))], &with_default), Ok((60, false)));
    // Never guessed for a status that needs explicit freshness, or when the site says 0s.
    let redirect =
        storability(get(), StatusCode::FOUND, &headers(&[("last-modified", &lm(1000))]), &rules, &stale, at(T0));
    assert_eq!(redirect.map(|p| p.lifetime), Err(NotStored::Status));
    let mut never = rules.clone();
    never.heuristic_max = Duration::ZERO;
    assert_eq!(guess(&[("date", &date), ("last-modified", &lm(1000))], &never), Err(NotStored::NoFreshness));
}

#[test]
fn age_from_upstream_is_counted() {
    let date = httpdate::fmt_http_date(at(T0 - 30));
    let h = headers(&[("date", &date), ("age", "100")]);
    // Apparent age 30, Age 100 + 2 s delay: the larger, 102.
    assert_eq!(initial_age(&h, at(T0 - 2), at(T0)), Duration::from_secs(102));
    let h = headers(&[("date", &date)]);
    assert_eq!(initial_age(&h, at(T0), at(T0)), Duration::from_secs(30));
    let h = headers(&[("age", "garbage")]);
    assert_eq!(initial_age(&h, at(T0), at(T0)), Duration::ZERO);
    // Only digits are an Age: the leading digits of anything else are not.
    for invalid in ["1a", "-1", "+5", "5, 6", "5 6", "0x10", "1e3", "", "5.0"] {
        let h = headers(&[("age", invalid)]);
        assert_eq!(initial_age(&h, at(T0), at(T0)), Duration::ZERO, "Age: {invalid:?} is invalid, ignored");
    }
    let h = headers(&[("age", " 7 ")]);
    assert_eq!(initial_age(&h, at(T0), at(T0)), Duration::from_secs(7));
    let h = headers(&[("age", "99999999999999999999999")]);
    assert_eq!(initial_age(&h, at(T0), at(T0)), Duration::from_secs(DELTA_SECONDS_MAX), "too large is 2^31");
    let p = plan(200, &[("cache-control", "max-age=60")]).unwrap();
    let t = timing(&p, 50);
    assert_eq!(t.freshness(at(T0 + 5)), Freshness::Fresh(Duration::from_secs(5)));
    assert_eq!(t.age(at(T0 + 5)), Duration::from_secs(55));
}

#[test]
fn heuristic_freshness_only_where_allowed() {
    let (mut rules, stale) = no_defaults();
    // Silent origin, default TTL zero: nothing to go on.
    assert_eq!(plan(200, &[]), Err(NotStored::NoFreshness));
    rules.default_ttl = Duration::from_secs(60);
    let silent = HeaderMap::new();
    let p = storability(get(), StatusCode::OK, &silent, &rules, &stale, at(T0)).unwrap();
    assert_eq!(p.lifetime.as_secs(), 60);
    // Not cacheable by default: 302, 500, 206 — not even with a default TTL.
    for status in [302, 500, 206, 307] {
        let r = storability(get(), StatusCode::from_u16(status).unwrap(), &silent, &rules, &stale, at(T0));
        assert_eq!(r, Err(NotStored::Status), "{status}");
    }
    // With explicit freshness a 302 may be stored; 206 never.
    assert_eq!(lifetime(302, &[("cache-control", "max-age=30")]), Some(30));
    assert_eq!(plan(206, &[("cache-control", "max-age=30")]), Err(NotStored::Status));
}

#[test]
fn negative_caching_by_status_ttl() {
    let (mut rules, stale) = no_defaults();
    rules.status_ttl.insert(404, Duration::from_secs(15));
    rules.status_ttl.insert(503, Duration::from_secs(2));
    let silent = HeaderMap::new();
    let p = storability(get(), StatusCode::NOT_FOUND, &silent, &rules, &stale, at(T0)).unwrap();
    assert_eq!(p.lifetime.as_secs(), 15);
    let p = storability(get(), StatusCode::SERVICE_UNAVAILABLE, &silent, &rules, &stale, at(T0)).unwrap();
    assert_eq!(p.lifetime.as_secs(), 2);
    let explicit = headers(&[("cache-control", "max-age=99")]);
    let p = storability(get(), StatusCode::NOT_FOUND, &explicit, &rules, &stale, at(T0)).unwrap();
    assert_eq!(p.lifetime.as_secs(), 99, "the origin's freshness wins over the status TTL");
}

#[test]
fn path_rules_force_and_bypass() {
    let (mut rules, stale) = no_defaults();
    rules.paths = vec![
        PathRule {
            pattern: PathPattern::parse("/static/*").unwrap(),
            ttl: Some(Duration::from_secs(3600)),
            force: true,
            bypass: false,
        },
        PathRule { pattern: PathPattern::parse("/api/*").unwrap(), ttl: None, force: false, bypass: true },
        PathRule {
            pattern: PathPattern::parse("/docs/*").unwrap(),
            ttl: Some(Duration::from_secs(120)),
            force: false,
            bypass: false,
        },
    ];
    let req = |path: &'static str| RequestFacts { path, ..get() };
    let h = headers(&[("cache-control", "no-store, no-cache, max-age=0")]);
    let p = storability(req("/static/app.js"), StatusCode::OK, &h, &rules, &stale, at(T0)).unwrap();
    assert_eq!(p.lifetime.as_secs(), 3600);
    assert!(!p.always_revalidate && !p.never_stale);
    let private = headers(&[("cache-control", "private")]);
    assert_eq!(
        storability(req("/static/me.js"), StatusCode::OK, &private, &rules, &stale, at(T0)),
        Err(NotStored::Private)
    );
    let ok = headers(&[("cache-control", "max-age=60")]);
    assert_eq!(storability(req("/api/x"), StatusCode::OK, &ok, &rules, &stale, at(T0)), Err(NotStored::PathBypass));
    let silent = HeaderMap::new();
    let p = storability(req("/docs/a"), StatusCode::OK, &silent, &rules, &stale, at(T0)).unwrap();
    assert_eq!(p.lifetime.as_secs(), 120, "a path TTL stands in for silence");
    let p = storability(req("/docs/a"), StatusCode::OK, &ok, &rules, &stale, at(T0)).unwrap();
    assert_eq!(p.lifetime.as_secs(), 60, "but does not override the origin without force");
    // Force keeps objects, never what a client provoked or a passing
    // failure: those go by the origin's word as anywhere else.
    for status in [400, 403, 206, 304, 500, 501, 502, 503] {
        let status = StatusCode::from_u16(status).unwrap();
        assert!(storability(req("/static/app.js"), status, &h, &rules, &stale, at(T0)).is_err(), "{status}");
        if status != StatusCode::NOT_IMPLEMENTED {
            // (501 is cacheable by default, so the rule's TTL stands in
            // for the origin's silence, as an unforced rule's does.)
            assert!(storability(req("/static/app.js"), status, &silent, &rules, &stale, at(T0)).is_err(), "{status}");
        }
    }
    let p = storability(req("/static/gone.js"), StatusCode::NOT_FOUND, &h, &rules, &stale, at(T0)).unwrap();
    assert_eq!(p.lifetime.as_secs(), 3600, "a 404 is an answer about the object");
    rules.status_ttl.insert(503, Duration::from_secs(5));
    assert!(storability(req("/static/app.js"), StatusCode::SERVICE_UNAVAILABLE, &h, &rules, &stale, at(T0)).is_ok());
}

/// A byte outside ASCII in one directive (a note in quotes) leaves the
/// others on its line in force: `private` is never lost to it.
#[test]
fn a_non_ascii_byte_does_not_hide_a_lines_other_directives() {
    let (rules, stale) = no_defaults();
    let mut h = HeaderMap::new();
    h.insert("cache-control", HeaderValue::from_bytes(b"private, no-store, x-note=\"\xc3\xa9\"").unwrap());
    h.insert("expires", HeaderValue::from_static("Thu, 01 Jan 2099 00:00:00 GMT"));
    assert_eq!(storability(get(), StatusCode::OK, &h, &rules, &stale, at(T0)), Err(NotStored::Private));
    let mut h = HeaderMap::new();
    h.insert("cache-control", HeaderValue::from_bytes(b"max-age=60, x-note=\"\xff\"").unwrap());
    assert_eq!(storability(get(), StatusCode::OK, &h, &rules, &stale, at(T0)).unwrap().lifetime.as_secs(), 60);
}

#[test]
fn authorization_needs_explicit_permission() {
    let (rules, stale) = no_defaults();
    let req = RequestFacts { has_authorization: true, ..get() };
    let h = headers(&[("cache-control", "max-age=60")]);
    assert_eq!(storability(req, StatusCode::OK, &h, &rules, &stale, at(T0)), Err(NotStored::Authorization));
    for cc in ["public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"] {
        let h = headers(&[("cache-control", cc)]);
        let p = storability(req, StatusCode::OK, &h, &rules, &stale, at(T0)).unwrap();
        assert!(p.shareable_with_auth, "{cc}");
    }
}

#[test]
fn vary_star_methods_and_request_no_store() {
    assert_eq!(plan(200, &[("cache-control", "max-age=60"), ("vary", "Accept, *")]), Err(NotStored::VaryStar));
    assert!(plan(200, &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")]).is_ok());
    let (rules, stale) = no_defaults();
    let h = headers(&[("cache-control", "max-age=60")]);
    let post = RequestFacts { method: &Method::POST, ..get() };
    assert_eq!(storability(post, StatusCode::OK, &h, &rules, &stale, at(T0)), Err(NotStored::Method));
    let head = RequestFacts { method: &Method::HEAD, ..get() };
    assert!(storability(head, StatusCode::OK, &h, &rules, &stale, at(T0)).is_ok());
    let ns = RequestFacts { no_store: true, ..get() };
    assert_eq!(storability(ns, StatusCode::OK, &h, &rules, &stale, at(T0)), Err(NotStored::RequestNoStore));
}

#[test]
fn hop_by_hop_fields() {
    let conn = headers(&[("connection", "close, X-Secret")]);
    for name in ["connection", "keep-alive", "transfer-encoding", "upgrade", "x-secret"] {
        assert!(is_hop_by_hop(&http::HeaderName::from_bytes(name.as_bytes()).unwrap(), &conn), "{name}");
    }
    assert!(!is_hop_by_hop(&http::header::CACHE_CONTROL, &conn));
    assert!(kept_on_304(&http::header::CONTENT_LENGTH) && !kept_on_304(&http::header::CACHE_CONTROL));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn storability_never_panics(
            status in 100u16..1000,
            cc in ".{0,60}",
            cdn in ".{0,40}",
            expires in ".{0,40}",
            age in ".{0,12}",
            vary in ".{0,20}",
        ) {
            let mut h = HeaderMap::new();
            for (k, v) in [("cache-control", cc), ("cdn-cache-control", cdn), ("expires", expires), ("age", age), ("vary", vary)] {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(k, v);
                }
            }
            let (rules, stale) = no_defaults();
            if let Ok(status) = StatusCode::from_u16(status) {
                if let Ok(p) = storability(get(), status, &h, &rules, &stale, at(T0)) {
                    let t = timing(&p, 0);
                    let _ = t.freshness(at(T0 + 1_000_000));
                    let _ = t.ttl_seconds(at(0));
                }
                let _ = initial_age(&h, at(T0), at(T0 - 5));
            }
        }
    }
}
