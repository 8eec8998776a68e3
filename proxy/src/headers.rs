//! Header names this node reads or writes beyond the standard ones that
//! `http::header` names: each spelled once.

use http::HeaderName;

/// RFC 9211: how each cache handled the request.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// RFC 8586: the CDNs a request has passed, for loop detection.
pub(crate) const CDN_LOOP: HeaderName = HeaderName::from_static("cdn-loop");
/// RFC 9213: freshness for CDNs only. Obeyed, and passed on downstream,
/// where another CDN may obey it too.
pub(crate) const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
/// Freshness for Outpost alone (RFC 9213's targeted-field pattern): obeyed
/// first, and removed before clients.
pub(crate) const OUTPOST_CACHE_CONTROL: HeaderName = HeaderName::from_static("outpost-cache-control");
/// Freshness for surrogates (the older, Akamai/Fastly spelling).
pub(crate) const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");
/// Tags, space-separated.
pub(crate) const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// Tags, comma-separated.
pub(crate) const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");
/// RFC 7239.
pub(crate) const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// How the client reached the edge, `http` or `https`.
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Fields meant for this CDN, never shown to clients by an edge.
pub(crate) const CDN_ONLY: [HeaderName; 4] = [OUTPOST_CACHE_CONTROL, SURROGATE_CONTROL, SURROGATE_KEY, CACHE_TAG];
