//! Header names this node reads or writes beyond the standard ones that
//! `http::header` names: each spelled once.

use std::sync::LazyLock;

use http::{HeaderName, HeaderValue};

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
/// The control plane's last event an edge applied, sent with its fetches
/// to its shields (`Engine::mark_fetch`); never taken from a client.
pub(crate) const OUTPOST_SEQ: HeaderName = HeaderName::from_static("outpost-seq");
/// How long ago, in milliseconds, the edge began to apply that event.
pub(crate) const OUTPOST_SEQ_AGE: HeaderName = HeaderName::from_static("outpost-seq-age");
/// How the client reached the edge, `http` or `https`.
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Fields meant for this CDN, never shown to clients by an edge.
pub(crate) static CDN_ONLY: [HeaderName; 4] = [OUTPOST_CACHE_CONTROL, SURROGATE_CONTROL, SURROGATE_KEY, CACHE_TAG];

/// `n` in decimal, as a header value: one allocation (the `From<u64>` of
/// `http` makes two), none below [`SMALL`] (an `Age` of a busy object).
pub(crate) fn decimal(n: u64) -> HeaderValue {
    // Static values: a clone is a copy, with no count to share between threads.
    static TABLE: LazyLock<Vec<HeaderValue>> =
        LazyLock::new(|| (0..SMALL).map(|n| HeaderValue::from_static(n.to_string().leak())).collect());
    if let Some(v) = usize::try_from(n).ok().and_then(|i| TABLE.get(i)) {
        return v.clone();
    }
    HeaderValue::from_str(digits(n, &mut [0; 20])).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// `n` in decimal, written at the end of `buf`, without the formatting
/// machinery.
pub(crate) fn digits(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// The numbers [`decimal`] keeps made.
const SMALL: u64 = 1000;

#[cfg(test)]
mod tests {
    #[test]
    fn decimal_is_the_number_written_out() {
        for n in [0, 1, 9, 10, 99, 100, 999, 1000, 1001, 65_535, 102_400, u64::MAX] {
            assert_eq!(super::decimal(n), n.to_string().as_str(), "{n}");
        }
    }
}
