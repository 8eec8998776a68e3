//! The request path, step by step, each step a function called in this
//! order:
//!
//! 1. **framing** — refuse what cannot be read safely (400), here and in the
//!    listener ([`refused`]);
//! 2. **loop** — a request carrying this node's own `CDN-Loop` mark (508);
//! 3. **site** — by the checked host: none is 400, an unknown one 421 and
//!    never proxied; an ACME challenge of an `acme = true` site is answered
//!    here; an `https_only` site sends plain HTTP to HTTPS (308);
//! 4. **key** — normalised path, shaped query, the scope the origin sees;
//! 5. **lookup** — memory, then disk, then `Vary` ([`super::lookup`]);
//! 6. **serve** — the purge rules, then a fresh hit or
//!    stale-while-revalidate ([`super::lookup`]), in the coding the request
//!    is answered in ([`super::represent`]);
//! 7. **fetch** — the chunks of a range far into a cold object
//!    ([`super::segment`]), or join the key's flight or lead it
//!    ([`super::wait`]);
//! 8. **fail over** — stale-if-error, or an error response ([`super::wait`]);
//! 9. **log** — `Cache-Status`, metrics, access log ([`finish`]).
//!
//! Methods other than GET and HEAD go from step 4 to [`super::forward`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use outpost_config::{Site, SiteTls};
use outpost_net::RecvBody;

use super::context::{Answer, Ctx, failed, upstream_proto};
use super::respond::Body;
use super::{Engine, Tier, forward, lookup, respond};
use crate::cache_status::{CacheStatus, Outcome};
use crate::error::{Error, redirect};
use crate::headers::CACHE_STATUS;
use crate::host::{BadHost, RequestHost};
use crate::key::{RequestKey, Scope, normalized, shape_query};
use crate::observe::AccessRecord;
use outpost_net::{Conn, Fields, HeaderLookup, RequestHeaders};

/// What the access log says of a request, taken before the request is
/// consumed (only when the log is on): method, host, path, and whether
/// the host or path was cut.
type LogLine = Option<(String, String, String, bool)>;

/// Most of a request's host and path the access log keeps. A client can
/// send 32 KiB of either, and over HTTP/2 repeat it for a few bytes a
/// request (the header table): logged whole, its lines would cost the
/// node hundreds of times what they cost the client.
const LOGGED_HOST: usize = 255;
const LOGGED_METHOD: usize = 32;
const LOGGED_PATH: usize = 2048;

fn log_line<B>(engine: &Engine, req: &Request<B>) -> LogLine {
    engine.log.enabled().then(|| {
        let (host, cut_host) = cut(host_of(req.uri(), req.headers()).unwrap_or(""), LOGGED_HOST);
        let (path, cut_path) = cut(req.uri().path(), LOGGED_PATH);
        let (method, cut_method) = cut(req.method().as_str(), LOGGED_METHOD);
        (method, host, path, cut_host || cut_path || cut_method)
    })
}

/// `s`, at most `max` bytes of it, and whether it was cut.
fn cut(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_string(), false);
    }
    let end = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    (s[..end].to_string(), true)
}

pub(super) async fn handle(
    engine: Arc<Engine>,
    req: Request<RecvBody>,
    conn: Conn,
    started: Instant,
) -> Response<Body> {
    let engine = &engine;
    let log = log_line(engine, &req);
    let (client, http3) = (Some(conn.peer), conn.http3);
    let answer = match prepare(engine, req, conn) {
        Err(Ended::Failed(e)) => failed(engine, e),
        Err(Ended::Redirect(to)) => (redirect(to), CacheStatus::new(Outcome::Local)),
        Err(Ended::Answered(resp)) => (*resp, CacheStatus::new(Outcome::Local)),
        Ok((cx, body)) => {
            let mut answer = if cx.method == Method::GET || cx.method == Method::HEAD {
                // Not kept across the lookup: the hit path's future stays
                // as small as before.
                drop(body);
                lookup::cacheable(&cx).await
            } else {
                // Boxed, like every path that goes upstream: the request's
                // future stays small, and a hit moves fewer bytes.
                Box::pin(forward::forward(&cx, body)).await
            };
            advertise_http3(engine, http3, &cx.site, &mut answer.0);
            answer
        }
    };
    finish(engine, answer, client, started, log)
}

/// The request path for a GET or HEAD that the listener read itself, up
/// to a fresh hit the memory tier holds in the stored representation:
/// steps 1 to 6 and 9 as above, none of which waits. `None` when any step
/// would wait or answer otherwise (a refusal, a redirect, a miss, a
/// coding to make, a copy on disk); the listener then hands the request
/// to [`handle`], which takes it again from step 1.
pub(super) fn answer_now(
    engine: &Arc<Engine>,
    req: Request<()>,
    conn: &Conn,
    fields: &mut Fields,
    started: Instant,
) -> Option<Response<Body>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    let log = log_line(engine, &req);
    let (cx, ()) = prepare(engine, req, conn.clone()).ok()?;
    let Some(serving) = lookup::cacheable_now(&cx) else {
        early_hints(&cx, fields);
        return None;
    };
    let alt_svc = alt_svc(engine, conn.http3, &cx.site);
    if let Some((resp, status, len)) = respond::fields_now(&cx, &serving, alt_svc, fields) {
        record(engine, &status, resp.status(), Some(len), Some(conn.peer), started.elapsed(), log);
        return Some(resp);
    }
    let mut answer = serving.answer(&cx);
    advertise_http3(engine, conn.http3, &cx.site, &mut answer.0);
    Some(finish(engine, answer, Some(conn.peer), started, log))
}

/// The site's `[[early_hints]]` for a GET at an edge that waits for its
/// answer: the first rule whose pattern matches the normalised path, as
/// `[[cache.path]]` rules match it.
fn early_hints(cx: &Ctx, fields: &mut Fields) {
    if let Some(links) = hints(cx) {
        fields.early_hints(links);
    }
}

/// [`early_hints`] for a request hyper read (one that came while hyper
/// held the connection, or over TLS after a miss), when it misses: sent
/// through the connection's interim slot, unless they went out already
/// when the listener offered it the request first.
pub(super) fn early_hints_on_miss(cx: &Ctx) {
    if let (Some(interim), Some(links)) = (&cx.interim, hints(cx))
        && !interim.hinted()
    {
        interim.early_hints(links);
    }
}

/// The `Link` values of the first `[[early_hints]]` rule that matches a
/// GET at an edge.
fn hints(cx: &Ctx) -> Option<&[HeaderValue]> {
    if cx.engine.tier != Tier::Edge || cx.method != Method::GET || cx.site.early_hints.is_empty() {
        return None;
    }
    cx.site.early_hints.iter().find(|r| r.pattern.matches(cx.path())).map(|r| r.links.as_slice())
}

/// `Alt-Svc` for a response of a site with `http3 = true`, unless it goes
/// over HTTP/3 already.
fn alt_svc<'a>(engine: &'a Engine, over_http3: bool, site: &Site) -> Option<&'a HeaderValue> {
    engine.alt_svc.as_ref().filter(|_| site.http3 && !over_http3)
}

/// [`alt_svc`] on a response.
fn advertise_http3(engine: &Engine, over_http3: bool, site: &Site, resp: &mut Response<Body>) {
    if let Some(v) = alt_svc(engine, over_http3, site) {
        resp.headers_mut().insert(header::ALT_SVC, v.clone());
    }
}

/// Step 1, decided by the listener: a request whose framing it could not
/// trust (both `Content-Length` and `Transfer-Encoding`, or a stream it
/// could not follow) is answered 400 and logged like any other.
pub(super) fn refused(
    engine: &Arc<Engine>,
    req: &Request<RecvBody>,
    client: Option<SocketAddr>,
    started: Instant,
    why: &'static str,
) -> Response<Body> {
    let log = log_line(engine, req);
    finish(engine, failed(engine, Error::BadRequest(why)), client, started, log)
}

/// How a request ends before step 5.
enum Ended {
    Failed(Error),
    /// `https_only`: to this URL.
    Redirect(HeaderValue),
    /// Answered by the node itself (an ACME challenge).
    Answered(Box<Response<Body>>),
}

impl From<Error> for Ended {
    fn from(e: Error) -> Ended {
        Ended::Failed(e)
    }
}

/// Steps 1 to 4: the request's site and key, or how it ends.
fn prepare<B>(engine: &Arc<Engine>, req: Request<B>, conn: Conn) -> Result<(Ctx, B), Ended> {
    let (mut parts, body) = req.into_parts();
    drop_nominated(&mut parts.headers);
    let headers = RequestHeaders::new(std::mem::take(&mut parts.headers));
    check_framing(&headers)?;
    if engine.hop.looped(&headers) {
        return Err(Error::Loop.into());
    }
    let (host, site) = find_site(engine, &parts.uri, &headers)?;
    if let Some(token) = parts.uri.path().strip_prefix(crate::acme::CHALLENGE_PATH)
        && matches!(site.tls, Some(SiteTls::Acme))
    {
        return Err(Ended::Answered(Box::new(acme_answer(engine, &site, token, &parts.method))));
    }
    let secure = conn.secure;
    if site.https_only && !secure {
        return Err(Ended::Redirect(https_location(&parts.uri, &host, engine.https_port)));
    }
    let rkey = key(engine, &site, &parts.uri, &headers, host, secure)?;
    if parts.method == Method::TRACE || parts.method == Method::CONNECT {
        return Err(Error::MethodNotAllowed.into());
    }
    let cx = Ctx {
        engine: Arc::clone(engine),
        site,
        rkey,
        method: parts.method,
        headers,
        client: Some(conn.peer),
        partitioned: engine.partitioned_for().map(|p| p.as_secs()),
        uri: parts.uri,
        secure,
        sendfile: conn.sendfile,
        interim: conn.interim,
        errands: conn.errands,
    };
    Ok((cx, body))
}

/// Removes the fields the client named in `Connection`: they are for this
/// hop alone (RFC 9110 §7.6.1), and go no further. Removed as the request
/// is read, so the cache key, `Vary` and the upstream request all see the
/// same fields: left in the key, a keyed field the client named (`Accept-
/// Language`, a site's `key_headers`) would be withheld from the origin,
/// and its answer without it stored for every request that sends it.
fn drop_nominated(headers: &mut http::HeaderMap) {
    // The usual request names nothing but `keep-alive`: nothing allocated.
    let named: Vec<http::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"))
        .filter_map(|t| http::HeaderName::from_bytes(t).ok())
        .filter(|name| name != header::CONNECTION)
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Step 3, for a site whose certificate comes by ACME: the key
/// authorization of a challenge its running order gave, over HTTP or
/// HTTPS (never redirected: the CA asks over HTTP), never stored.
fn acme_answer(engine: &Engine, site: &Site, token: &str, method: &Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return crate::error::plain(StatusCode::METHOD_NOT_ALLOWED, "ACME challenges are read with GET");
    }
    let now = super::epoch_ms(std::time::SystemTime::now());
    match engine.challenges.answer(&site.id, token, now) {
        Some(answer) => {
            let len = answer.len();
            let mut r = Response::new(if method == Method::HEAD {
                super::respond::empty()
            } else {
                super::respond::full(answer)
            });
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            r
        }
        None => crate::error::plain(StatusCode::NOT_FOUND, "no such ACME challenge here"),
    }
}

/// Step 1: message framing that a proxy must not guess at (RFC 9112 §6.3).
fn check_framing(h: &RequestHeaders) -> Result<(), Error> {
    let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
    let length = lengths.next().is_some();
    if lengths.next().is_some() {
        return Err(Error::BadRequest("more than one Content-Length"));
    }
    if length && h.contains_key(header::TRANSFER_ENCODING) {
        return Err(Error::BadRequest("both Content-Length and Transfer-Encoding"));
    }
    if h.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(Error::BadRequest("more than one Host"));
    }
    Ok(())
}

/// Step 3: the site, by the request's checked host (RFC 9112 §3.2: a
/// request without a valid Host is a bad request).
fn find_site<'r>(
    engine: &Engine,
    uri: &'r Uri,
    headers: &'r RequestHeaders,
) -> Result<(RequestHost<'r>, Arc<Site>), Error> {
    let host = match RequestHost::parse(host_of(uri, headers).unwrap_or("")) {
        Ok(h) => h,
        Err(BadHost::Missing) => return Err(Error::BadRequest("no Host")),
        Err(BadHost::Invalid) => return Err(Error::BadRequest("invalid Host")),
    };
    let site = engine.sites.load().find(&host).cloned().ok_or(Error::UnknownHost)?;
    Ok((host, site))
}

/// Step 4: where the request's object is kept.
fn key(
    engine: &Engine,
    site: &Site,
    uri: &Uri,
    headers: &RequestHeaders,
    host: RequestHost<'_>,
    secure: bool,
) -> Result<RequestKey, Error> {
    let path = normalized(uri.path()).map_err(|_| Error::BadRequest("malformed path"))?;
    let query = shape_query(uri.query(), &site.cache);
    let scope = Scope::of(site, upstream_proto(engine.tier, secure, headers), host);
    Ok(RequestKey::new(engine.store.key_secret(), site, scope, &path, query.as_deref(), headers))
}

fn host_of<'a>(uri: &'a Uri, headers: &'a impl HeaderLookup) -> Option<&'a str> {
    uri.authority().map(|a| a.as_str()).or_else(|| headers.get(&header::HOST).and_then(|h| h.to_str().ok()))
}

/// Where an `https_only` site sends a plain-HTTP request: the same host
/// (without the client's port) and target, over HTTPS on the node's port.
fn https_location(uri: &Uri, host: &RequestHost<'_>, https_port: Option<u16>) -> HeaderValue {
    let host = host.name().to_ascii_lowercase();
    let port = match https_port {
        Some(443) | None => String::new(),
        Some(p) => format!(":{p}"),
    };
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    HeaderValue::from_str(&format!("https://{host}{port}{target}")).unwrap_or_else(|_| HeaderValue::from_static("/"))
}

/// Step 9: `Cache-Status`, metrics and the access log.
fn finish(
    engine: &Engine,
    (mut resp, status): Answer,
    client: Option<SocketAddr>,
    started: Instant,
    log: LogLine,
) -> Response<Body> {
    if !resp.headers().contains_key(CACHE_STATUS) {
        resp.headers_mut().insert(CACHE_STATUS, status.header(&engine.node, None));
    }
    let bytes = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    record(engine, &status, resp.status(), bytes, client, started.elapsed(), log);
    resp
}

/// A request the listener could not parse (it answered `code` itself):
/// counted, and logged with `-` for what could not be read.
pub(super) fn unreadable(engine: &Engine, client: Option<SocketAddr>, code: StatusCode) {
    let log = engine.log.enabled().then(|| ("-".to_string(), "-".to_string(), "-".to_string(), false));
    record(engine, &CacheStatus::new(Outcome::Local), code, None, client, Duration::ZERO, log);
}

/// Metrics and the access log line of one answered request.
fn record(
    engine: &Engine,
    status: &CacheStatus,
    code: StatusCode,
    bytes: Option<u64>,
    client: Option<SocketAddr>,
    took: Duration,
    log: LogLine,
) {
    engine.metrics.request(status.outcome, code.as_u16(), took);
    if let Some((method, host, path, truncated)) = log {
        engine.log.write(AccessRecord {
            ts: humantime::format_rfc3339_millis(engine.clock.now()).to_string(),
            node: engine.node.to_string(),
            client: client.map(|c| c.ip().to_string()).unwrap_or_default(),
            method,
            host,
            path,
            status: code.as_u16(),
            cache: status.outcome.as_str(),
            bytes,
            upstream_ms: status.upstream_wait.map(|d| d.as_secs_f64() * 1000.0),
            duration_ms: took.as_secs_f64() * 1000.0,
            coding: status.coding.map(|(c, _)| c.token()),
            transformed: status.coding.is_some_and(|(_, made)| made),
            truncated,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_ambiguities_are_refused() {
        let req = |pairs: &[(&'static str, &'static str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            RequestHeaders::new(h)
        };
        assert!(check_framing(&req(&[("content-length", "3"), ("transfer-encoding", "chunked")])).is_err());
        assert!(check_framing(&req(&[("content-length", "3"), ("content-length", "4")])).is_err());
        assert!(check_framing(&req(&[("host", "a"), ("host", "b")])).is_err());
        assert!(check_framing(&req(&[("transfer-encoding", "chunked"), ("content-length", "3")])).is_err());
        assert!(check_framing(&req(&[("content-length", "3")])).is_ok());
        assert!(check_framing(&req(&[("transfer-encoding", "chunked"), ("host", "a")])).is_ok());
    }
}
