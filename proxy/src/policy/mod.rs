//! RFC 9111 shared-cache policy as pure functions: what may be stored, for
//! how long, and whether a stored response may be served now. No I/O, no
//! clock: callers pass the times, so every rule is tested with exact numbers.
//!
//! Precedence for this cache's directives: `CDN-Cache-Control` (RFC 9213),
//! then `Surrogate-Control`, then `Cache-Control` with `Expires`. When a
//! CDN-targeted header is present, `Cache-Control` and `Expires` are ignored
//! for freshness (RFC 9213 §2.1) — but `private` and `no-store` in
//! `Cache-Control` are still honoured, since they protect the client.
//!
//! Site rules layer on top: a path rule's `force` TTL replaces the origin's
//! freshness (never `private` or `Set-Cookie`), a path `bypass` stores
//! nothing, `status_ttl` makes a status cacheable with a TTL, and
//! `default_ttl` applies when the origin gives no freshness for a status
//! that is cacheable by default (RFC 9111 §4.2.2).

mod directives;

pub(crate) use directives::{DELTA_SECONDS_MAX, Directives, Qualified};

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};
use outpost_config::{CacheRules, MAX_TTL, PathRule, StalePolicy};

use crate::headers::{CDN_CACHE_CONTROL, OUTPOST_CACHE_CONTROL, SURROGATE_CONTROL};

/// Why a response was not stored; the names appear in `Cache-Status`
/// (`detail=`), metrics and access logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    SetCookie,
    VaryStar,
    Authorization,
    NoFreshness,
    PathBypass,
    TooLarge,
    RequestNoStore,
}

impl NotStored {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryStar => "vary-star",
            NotStored::Authorization => "authorization",
            NotStored::NoFreshness => "no-freshness",
            NotStored::PathBypass => "path-bypass",
            NotStored::TooLarge => "too-large",
            NotStored::RequestNoStore => "request-no-store",
        }
    }
}

/// How a storable response is to be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorePlan {
    /// Freshness lifetime (RFC 9111 §4.2.1), before age is subtracted.
    pub lifetime: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// `no-cache`: stored, but revalidated before every use.
    pub always_revalidate: bool,
    /// `must-revalidate`, `proxy-revalidate`, `s-maxage` or `no-cache`: never
    /// served stale, not even on error.
    pub never_stale: bool,
    /// May answer requests that carry `Authorization` (RFC 9111 §3.5).
    pub shareable_with_auth: bool,
    /// Fields to drop before storing (qualified `no-cache` / `private`).
    pub strip: Vec<HeaderName>,
    /// The lifetime was guessed from `Last-Modified` (RFC 9111 §4.2.2).
    pub heuristic: bool,
}

/// Statuses cacheable without explicit freshness (RFC 9110 §15.1), less
/// 206, which this cache never stores (it fetches whole objects).
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Statuses a forced path rule stores whatever the origin says: those
/// cacheable by default but 501, and those the site gives a TTL of its own
/// (`status_ttl`).
fn forceable(status: StatusCode, rules: &CacheRules) -> bool {
    (heuristically_cacheable(status) && !status.is_server_error()) || rules.status_ttl.contains_key(&status.as_u16())
}

/// Does a response belong to one user, whatever else kept it from being
/// stored: it sets a cookie, says `private`, or answers a request with
/// credentials? Such a response is never handed to other requests.
pub(crate) fn personal(headers: &HeaderMap, has_authorization: bool) -> bool {
    has_authorization
        || headers.contains_key(header::SET_COOKIE)
        || Directives::parse_all(headers.get_all(header::CACHE_CONTROL)).private.is_some()
}

/// The directives this cache obeys: the first targeted field with any
/// (`Outpost-Cache-Control`, `CDN-Cache-Control`, `Surrogate-Control`),
/// which replaces `Cache-Control` and `Expires` as a whole (RFC 9213
/// §2.1); else `Cache-Control`. The bool says whether they came from
/// `Cache-Control` (so `Expires` counts).
pub(crate) fn effective_directives(headers: &HeaderMap) -> (Directives, bool) {
    for name in [&OUTPOST_CACHE_CONTROL, &CDN_CACHE_CONTROL, &SURROGATE_CONTROL] {
        let d = Directives::parse_all(headers.get_all(name));
        if !d.is_empty() {
            return (d, false);
        }
    }
    (Directives::parse_all(headers.get_all(header::CACHE_CONTROL)), true)
}

/// A field's HTTP-date, when it has one that reads.
pub(crate) fn date_header(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    headers.get(name).and_then(|v| v.to_str().ok()).and_then(|s| httpdate::parse_http_date(s).ok())
}

/// The freshness the origin gave explicitly, if any.
fn explicit_lifetime(
    d: &Directives,
    use_expires: bool,
    headers: &HeaderMap,
    response_time: SystemTime,
) -> Option<Duration> {
    if let Some(s) = d.s_maxage {
        return Some(Duration::from_secs(s));
    }
    if let Some(m) = d.max_age {
        return Some(Duration::from_secs(m));
    }
    if !use_expires || !headers.contains_key(header::EXPIRES) {
        return None;
    }
    // An invalid Expires (such as "0") means already expired (RFC 9111 §5.3).
    let Some(expires) = date_header(headers, &header::EXPIRES) else { return Some(Duration::ZERO) };
    let date = date_header(headers, &header::DATE).unwrap_or(response_time);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// The first path rule matching `path`.
pub(crate) fn path_rule<'r>(rules: &'r CacheRules, path: &str) -> Option<&'r PathRule> {
    rules.paths.iter().find(|r| r.pattern.matches(path))
}

/// What the request contributes to the decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestFacts<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub has_authorization: bool,
    pub no_store: bool,
}

/// Decides whether a response may be stored and how (RFC 9111 §3).
pub(crate) fn storability(
    req: RequestFacts<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    rules: &CacheRules,
    stale: &StalePolicy,
    response_time: SystemTime,
) -> Result<StorePlan, NotStored> {
    if !(req.method == Method::GET || req.method == Method::HEAD) {
        return Err(NotStored::Method);
    }
    let rule = path_rule(rules, req.path);
    if rule.is_some_and(|r| r.bypass) {
        return Err(NotStored::PathBypass);
    }
    if req.no_store {
        return Err(NotStored::RequestNoStore);
    }
    let (d, use_expires) = effective_directives(headers);
    // Forced only where the status is one to keep: a forced rule never
    // pins an error a client provoked (a 400 for an oversized field), a
    // passing outage, or a part of the object.
    let force = rule.filter(|r| r.force && forceable(status, rules)).and_then(|r| r.ttl);
    let permit = permission(req, headers, &d, !use_expires, force.is_some())?;
    let explicit = explicit_lifetime(&d, use_expires, headers, response_time);
    let guess = heuristic_lifetime(headers, response_time, rules.heuristic_max);
    let (lifetime, heuristic) = lifetime(status, rules, rule, force, explicit, guess, d.public)?;
    let never_stale = force.is_none()
        && (d.must_revalidate || d.proxy_revalidate || d.s_maxage.is_some() || permit.always_revalidate);
    let swr = d.stale_while_revalidate.map_or(stale.while_revalidate, Duration::from_secs);
    let sie = d.stale_if_error.map_or(stale.if_error, Duration::from_secs);
    // Capped so purge rules provably outlive every object (see purge.rs).
    Ok(StorePlan {
        lifetime: lifetime.min(MAX_TTL),
        stale_while_revalidate: if never_stale { Duration::ZERO } else { swr.min(MAX_TTL) },
        stale_if_error: if never_stale { Duration::ZERO } else { sie.min(MAX_TTL) },
        always_revalidate: permit.always_revalidate,
        never_stale,
        shareable_with_auth: permit.shareable_with_auth,
        strip: permit.strip,
        heuristic,
    })
}

/// What the response's own directives allow a shared cache to keep.
struct Permit {
    strip: Vec<HeaderName>,
    always_revalidate: bool,
    shareable_with_auth: bool,
}

/// Reads `private`, `no-store`, `Vary: *`, `no-cache`, `Set-Cookie` and the
/// request's credentials into a refusal or a [`Permit`]. A forced path rule
/// overrides `no-store` and unqualified `no-cache`, never `private`. With
/// a `targeted` field, `Cache-Control` is for browsers and is not read.
fn permission(
    req: RequestFacts<'_>,
    headers: &HeaderMap,
    d: &Directives,
    targeted: bool,
    forced: bool,
) -> Result<Permit, NotStored> {
    let cc =
        if targeted { Directives::default() } else { Directives::parse_all(headers.get_all(header::CACHE_CONTROL)) };
    let names = |f: &[String]| -> Vec<HeaderName> {
        f.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect()
    };
    // `private` protects one user's data whatever else is said.
    let mut strip: Vec<HeaderName> = Vec::new();
    for private in [&cc.private, &d.private] {
        match private {
            Some(Qualified::All) => return Err(NotStored::Private),
            Some(Qualified::Fields(f)) => strip.extend(names(f)),
            None => {}
        }
    }
    if !forced && (d.no_store || cc.no_store) {
        return Err(NotStored::NoStore);
    }
    let vary_star = headers
        .get_all(header::VARY)
        .iter()
        .any(|v| v.to_str().map_or(true, |s| s.split(',').any(|t| t.trim() == "*")));
    if vary_star {
        return Err(NotStored::VaryStar);
    }
    let mut always_revalidate = false;
    match &d.no_cache {
        Some(Qualified::All) if !forced => always_revalidate = true,
        Some(Qualified::Fields(f)) => strip.extend(names(f)),
        _ => {}
    }
    // A personalised response is not shared unless the origin asked for the
    // cookie to be dropped from the stored copy.
    if headers.contains_key(header::SET_COOKIE) && !strip.contains(&header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    let shareable_with_auth = d.public || d.s_maxage.is_some() || d.must_revalidate || cc.public;
    if req.has_authorization && !shareable_with_auth {
        return Err(NotStored::Authorization);
    }
    strip.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    strip.dedup();
    Ok(Permit { strip, always_revalidate, shareable_with_auth })
}

/// A tenth of the time since `Last-Modified` (by the response's `Date`),
/// at most `max` (RFC 9111 §4.2.2); none without a usable date, or when
/// `max` is zero.
fn heuristic_lifetime(headers: &HeaderMap, response_time: SystemTime, max: Duration) -> Option<Duration> {
    let modified = date_header(headers, &header::LAST_MODIFIED)?;
    let date = date_header(headers, &header::DATE).unwrap_or(response_time);
    let guess = (date.duration_since(modified).ok()? / 10).min(max);
    (!guess.is_zero()).then_some(guess)
}

/// How long the response stays fresh, and whether that was guessed, in
/// order of precedence: a forced path rule, the origin's explicit lifetime,
/// the site's per-status TTL, the path rule's TTL, the default TTL, then
/// (where the default is zero) the `guess` from `Last-Modified`; or why it
/// may not be stored.
fn lifetime(
    status: StatusCode,
    rules: &CacheRules,
    rule: Option<&PathRule>,
    force: Option<Duration>,
    explicit: Option<Duration>,
    guess: Option<Duration>,
    public: bool,
) -> Result<(Duration, bool), NotStored> {
    if let Some(t) = force {
        return Ok((t, false));
    }
    if let Some(e) = explicit {
        return if is_final_cacheable_with_explicit(status) { Ok((e, false)) } else { Err(NotStored::Status) };
    }
    if let Some(t) = rules.status_ttl.get(&status.as_u16()).copied() {
        return Ok((t, false));
    }
    if !heuristically_cacheable(status) {
        return Err(NotStored::Status);
    }
    if let Some(t) = rule.and_then(|r| r.ttl) {
        return Ok((t, false));
    }
    if !rules.default_ttl.is_zero() {
        return Ok((rules.default_ttl, false));
    }
    if let Some(g) = guess {
        return Ok((g, true));
    }
    if public {
        return Ok((Duration::ZERO, false));
    }
    Err(NotStored::NoFreshness)
}

/// Final statuses that may be stored when the origin gives explicit
/// freshness even though they are not cacheable by default (RFC 9111 §3:
/// "the response contains a max-age, s-maxage or Expires"), such as 302.
fn is_final_cacheable_with_explicit(status: StatusCode) -> bool {
    status.as_u16() >= 200 && status != StatusCode::PARTIAL_CONTENT && status != StatusCode::NOT_MODIFIED
}

/// An `Age` value: delta-seconds, digits only (RFC 9111 §5.1), too large
/// → 2^31 (§1.2.2). Anything else (`1a`, `-1`, `+5`, a list) is invalid and
/// ignored, never read as its leading digits.
pub(crate) fn age(v: &http::HeaderValue) -> Option<u64> {
    let s = v.to_str().ok()?.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().map_or(DELTA_SECONDS_MAX, |n| n.min(DELTA_SECONDS_MAX)))
}

/// RFC 9111 §4.2.3: the age the response already had when it arrived.
pub(crate) fn initial_age(headers: &HeaderMap, request_time: SystemTime, response_time: SystemTime) -> Duration {
    let date = date_header(headers, &header::DATE);
    let apparent = date.and_then(|d| response_time.duration_since(d).ok()).unwrap_or(Duration::ZERO);
    let age_value = headers.get(header::AGE).and_then(age).map_or(Duration::ZERO, Duration::from_secs);
    let response_delay = response_time.duration_since(request_time).unwrap_or(Duration::ZERO);
    apparent.max(age_value + response_delay)
}

/// Where a stored response stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Serve it; this much freshness is left.
    Fresh(Duration),
    /// Stale by this much, inside stale-while-revalidate: serve it and
    /// revalidate in the background.
    StaleWhileRevalidate(Duration),
    /// Stale by this much: revalidate before serving (stale-if-error may
    /// still use it when the upstream fails).
    Stale(Duration),
}

/// The timing facts kept with a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub lifetime: Duration,
    pub initial_age: Duration,
    pub response_time: SystemTime,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub always_revalidate: bool,
}

impl Timing {
    /// The timing of a response that is never served from storage (a shared
    /// error page): no freshness, always revalidated.
    pub fn never_fresh(now: SystemTime) -> Timing {
        Timing {
            lifetime: Duration::ZERO,
            initial_age: Duration::ZERO,
            response_time: now,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            always_revalidate: true,
        }
    }

    /// The timing of a copy marked invalid (RFC 9111 §4.4): validated
    /// before it is sent again, never served stale in the meantime.
    pub fn invalidated(self) -> Timing {
        Timing {
            lifetime: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            always_revalidate: true,
            ..self
        }
    }

    /// RFC 9111 §4.2.3 current_age.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.response_time).unwrap_or(Duration::ZERO)
    }

    /// Freshness left (positive) or staleness (negative), in whole seconds,
    /// as `Cache-Status: ttl=` reports it.
    pub fn ttl_seconds(&self, now: SystemTime) -> i64 {
        let age = self.age(now).as_secs() as i64;
        self.lifetime.as_secs() as i64 - age
    }

    pub fn freshness(&self, now: SystemTime) -> Freshness {
        let age = self.age(now);
        if self.always_revalidate {
            return Freshness::Stale(age.saturating_sub(self.lifetime));
        }
        if age < self.lifetime {
            return Freshness::Fresh(self.lifetime - age);
        }
        let stale_by = age - self.lifetime;
        if stale_by < self.stale_while_revalidate {
            Freshness::StaleWhileRevalidate(stale_by)
        } else {
            Freshness::Stale(stale_by)
        }
    }

    /// May this response stand in for an upstream error now (RFC 5861 §4)?
    pub fn usable_if_error(&self, now: SystemTime) -> bool {
        let age = self.age(now);
        age < self.lifetime || age - self.lifetime < self.stale_if_error
    }

    /// May this copy stand in for an upstream error now: within its
    /// stale-if-error window, or at any age on a node cut off from its
    /// control plane (`partitioned`); never one that must be validated
    /// before every use (`no-cache`, or invalidated: RFC 9111 §4.2.4).
    pub fn stands_in(&self, now: SystemTime, partitioned: bool) -> bool {
        !self.always_revalidate && (partitioned || self.usable_if_error(now))
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) and the ones named by `Connection`:
/// never stored, never forwarded.
pub(crate) fn is_hop_by_hop(name: &HeaderName, connection: &HeaderMap) -> bool {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ];
    if HOP.contains(&name.as_str()) {
        return true;
    }
    connection
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(name.as_str()))
}

/// Fields a 304 must not change in the stored response (RFC 9111 §3.2).
pub(crate) fn kept_on_304(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length" | "content-encoding" | "content-type" | "content-range" | "transfer-encoding"
    )
}

#[cfg(test)]
mod tests;
