//! The synthetic object a request describes: the URL grammar of the test
//! origin (documented on [`crate::origin`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use outpost_net::coding::Coding;

/// Longest a `fail=hang` request is held before the connection is closed, so
/// a forgotten hang cannot keep a test process alive.
pub(crate) const MAX_HANG: Duration = Duration::from_secs(120);
/// Default object size when `size` is not given.
pub(crate) const DEFAULT_SIZE: u64 = 1024;
/// Largest body the origin encodes (`encoding=`): it is made in memory.
pub(crate) const MAX_ENCODED: u64 = 64 << 20;
/// Default body chunk: 64 KiB keeps large objects streaming without
/// holding them in memory.
pub(crate) const DEFAULT_CHUNK: usize = 64 * 1024;
/// `Last-Modified` of synthetic objects unless `lm` says otherwise:
/// 2024-01-01T00:00:00Z, fixed so `If-Modified-Since` tests are repeatable.
pub(crate) const DEFAULT_LAST_MODIFIED: u64 = 1_704_067_200;

/// How a request is told to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    Status(StatusCode),
    /// Close the connection without a response.
    Reset,
    /// Hold the request, then close without a response.
    Hang(Duration),
}

impl Fail {
    pub(crate) fn parse(text: &str, hang_for: Option<Duration>) -> Result<Fail, String> {
        match text {
            "reset" => Ok(Fail::Reset),
            "hang" => Ok(Fail::Hang(hang_for.unwrap_or(MAX_HANG).min(MAX_HANG))),
            code => code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.as_u16() >= 400)
                .map(Fail::Status)
                .ok_or_else(|| format!("fail must be reset, hang or a status from 400 to 999, found `{text}`")),
        }
    }
}

/// Everything a request's query asks of the origin.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) size: u64,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    /// `None`: no ETag; `Some(None)`: the default one; `Some(Some(v))`: this one.
    pub(crate) etag: Option<Option<HeaderValue>>,
    pub(crate) last_modified: Option<SystemTime>,
    pub(crate) delay: Duration,
    pub(crate) fail: Option<Fail>,
    pub(crate) chunk: usize,
    pub(crate) chunk_delay: Duration,
    pub(crate) abort_after: Option<u64>,
    /// Send without Content-Length (chunked on HTTP/1.1).
    pub(crate) unknown_length: bool,
    /// A text body (compressible) instead of random bytes.
    pub(crate) text: bool,
    /// The body sent in this content coding.
    pub(crate) encoding: Option<Coding>,
    /// `Link` values of a `103 Early Hints` sent first.
    pub(crate) early: Vec<HeaderValue>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            size: DEFAULT_SIZE,
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            etag: Some(None),
            last_modified: Some(UNIX_EPOCH + Duration::from_secs(DEFAULT_LAST_MODIFIED)),
            delay: Duration::ZERO,
            fail: None,
            chunk: DEFAULT_CHUNK,
            chunk_delay: Duration::ZERO,
            abort_after: None,
            unknown_length: false,
            text: false,
            encoding: None,
            early: Vec::new(),
        }
    }
}

fn header_value(key: &str, v: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(v).map_err(|_| format!("{key}: `{v}` is not a valid header value"))
}

fn duration(key: &str, v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v).map_err(|e| format!("{key}: `{v}` is not a duration such as 200ms: {e}"))
}

fn size(key: &str, v: &str) -> Result<u64, String> {
    let (num, mult) = match v.to_ascii_lowercase() {
        s if s.ends_with("kib") => (s[..s.len() - 3].to_string(), 1 << 10),
        s if s.ends_with("mib") => (s[..s.len() - 3].to_string(), 1 << 20),
        s if s.ends_with("gib") => (s[..s.len() - 3].to_string(), 1 << 30),
        s => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{key}: `{v}` is not a size such as 1024 or 64KiB"))
}

impl Spec {
    /// Reads the query string. Unknown parameters are errors, so a typo in a
    /// test shows up as a 400 instead of a silently different object.
    pub(crate) fn from_query(query: &str) -> Result<Spec, String> {
        let mut spec = Spec::default();
        let mut hang_for = None;
        let mut fail = None;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let (k, v) = (key.as_ref(), value.as_ref());
            let named = |name: &'static str| -> Result<(HeaderName, HeaderValue), String> {
                Ok((HeaderName::from_static(name), header_value(k, v)?))
            };
            match k {
                "size" => spec.size = size(k, v)?,
                "status" => {
                    spec.status = v
                        .parse::<u16>()
                        .ok()
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .ok_or_else(|| format!("status: `{v}` is not a status code"))?
                }
                "cc" | "cdn_cc" | "sc" | "keys" | "tags" | "vary" | "set_cookie" | "expires" | "content_type" => {
                    let name = match k {
                        "cc" => "cache-control",
                        "cdn_cc" => "cdn-cache-control",
                        "sc" => "surrogate-control",
                        "keys" => "surrogate-key",
                        "tags" => "cache-tag",
                        "vary" => "vary",
                        "set_cookie" => "set-cookie",
                        "expires" => "expires",
                        _ => "content-type",
                    };
                    let (n, val) = named(name)?;
                    spec.headers.append(n, val);
                }
                "header" => {
                    let (name, val) = v.split_once(':').ok_or_else(|| format!("header: `{v}` is not name:value"))?;
                    let name = HeaderName::from_bytes(name.trim().as_bytes())
                        .map_err(|_| format!("header: `{name}` is not a header name"))?;
                    spec.headers.append(name, header_value(k, val.trim())?);
                }
                "etag" => {
                    spec.etag = match v {
                        "none" => None,
                        _ if v.starts_with('"') || v.starts_with("W/\"") => Some(Some(header_value(k, v)?)),
                        _ => Some(Some(header_value(k, &format!("\"{v}\""))?)),
                    }
                }
                "lm" => {
                    spec.last_modified = match v {
                        "none" => None,
                        _ => Some(
                            v.parse::<u64>()
                                .map(|s| UNIX_EPOCH + Duration::from_secs(s))
                                .or_else(|_| httpdate::parse_http_date(v))
                                .map_err(|_| format!("lm: `{v}` is not Unix seconds or an HTTP date"))?,
                        ),
                    }
                }
                "early" => spec.early.push(header_value(k, v)?),
                "delay" => spec.delay = duration(k, v)?,
                "fail" => fail = Some(v.to_string()),
                "hang" => hang_for = Some(duration(k, v)?),
                "chunk" => spec.chunk = (size(k, v)? as usize).clamp(1, 16 << 20),
                "chunk_delay" => spec.chunk_delay = duration(k, v)?,
                "abort_after" => spec.abort_after = Some(size(k, v)?),
                "no_length" => spec.unknown_length = v != "0",
                "text" => spec.text = v != "0",
                "encoding" => {
                    spec.encoding = Some(
                        Coding::parse(v)
                            .filter(|c| *c != Coding::Identity)
                            .ok_or_else(|| format!("encoding: `{v}` is not gzip, br or zstd"))?,
                    )
                }
                // Free parameters that only make URLs distinct (cache busting).
                "v" | "id" | "n" | "_" => {}
                _ => return Err(format!("unknown parameter `{k}`; see the grammar in `outpost_load::origin`")),
            }
        }
        if let Some(f) = fail {
            spec.fail = Some(Fail::parse(&f, hang_for)?);
        }
        if spec.headers.contains_key(header::CONTENT_TYPE) {
            return Ok(spec);
        }
        let default_type = if spec.text { "text/plain; charset=utf-8" } else { "application/octet-stream" };
        spec.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(default_type));
        Ok(spec)
    }

    /// The request header values this object varies on, in `Vary` order.
    /// `Vary: *` contributes nothing: every request is its own variant.
    pub(crate) fn vary_values<'r>(&self, request: &'r HeaderMap) -> Vec<&'r str> {
        self.headers
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty() && *n != "*")
            .map(|n| request.get(n).and_then(|v| v.to_str().ok()).unwrap_or(""))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_grammar() {
        let s =
            Spec::from_query("size=64KiB&status=404&cc=max-age%3D60&keys=a+b&etag=x&lm=0&delay=5ms&fail=503").unwrap();
        assert_eq!(s.size, 65536);
        assert_eq!(s.status, StatusCode::NOT_FOUND);
        assert_eq!(s.headers["cache-control"], "max-age=60");
        assert_eq!(s.headers["surrogate-key"], "a b");
        assert_eq!(s.etag, Some(Some(HeaderValue::from_static("\"x\""))));
        assert_eq!(s.last_modified, Some(UNIX_EPOCH));
        assert_eq!(s.delay, Duration::from_millis(5));
        assert_eq!(s.fail, Some(Fail::Status(StatusCode::SERVICE_UNAVAILABLE)));
        assert_eq!(Spec::from_query("fail=hang&hang=1s").unwrap().fail, Some(Fail::Hang(Duration::from_secs(1))));
        assert_eq!(Spec::from_query("header=x-a:%201").unwrap().headers["x-a"], "1");
        assert!(Spec::from_query("etag=none&lm=none").map(|s| s.etag.is_none() && s.last_modified.is_none()).unwrap());
    }

    #[test]
    fn bad_queries_are_explained() {
        for (q, want) in [
            ("sise=1", "unknown parameter `sise`"),
            ("size=big", "size: `big`"),
            ("status=99999", "status:"),
            ("fail=200", "fail must be"),
            ("delay=soon", "delay:"),
            ("header=nocolon", "name:value"),
        ] {
            let e = Spec::from_query(q).unwrap_err();
            assert!(e.contains(want), "{q}: {e}");
        }
    }

    #[test]
    fn vary_values_follow_the_vary_header() {
        let s = Spec::from_query("vary=Accept-Language,%20X-Dev").unwrap();
        let mut req = HeaderMap::new();
        req.insert("accept-language", HeaderValue::from_static("de"));
        assert_eq!(s.vary_values(&req), ["de", ""]);
    }
}
