//! The test origin: an HTTP/1.1 and HTTP/2 (h2c) server of synthetic
//! objects, for tests, benchmarks and `outpost up`.
//!
//! # URL grammar
//!
//! Any path outside `/__origin/` and `/files/` is a synthetic object whose
//! body is deterministic (see [`crate::content`]: seed from the path, the
//! path's version and the values of the headers its `Vary` names). The query
//! string shapes the response; an unknown parameter is a 400.
//!
//! | parameter | effect |
//! |---|---|
//! | `size=N` | body length: bytes, or `64KiB`, `5MiB`, `1GiB` (default 1024) |
//! | `status=C` | status code (default 200) |
//! | `cc=V` | `Cache-Control: V` |
//! | `cdn_cc=V` / `sc=V` | `CDN-Cache-Control` / `Surrogate-Control` |
//! | `keys=a+b` / `tags=a,b` | `Surrogate-Key` / `Cache-Tag` |
//! | `vary=H` | `Vary: H`; the body then depends on the request's `H` |
//! | `etag=T` / `etag=none` | this ETag (quoted if needed) / no ETag; default `"<seed>-<size>"` |
//! | `lm=SECS` / `lm=DATE` / `lm=none` | `Last-Modified`; default 2024-01-01 |
//! | `expires=DATE`, `set_cookie=V`, `content_type=V` | those headers |
//! | `header=name:value` | any other response header (repeatable) |
//! | `early=LINK` | first a `103 Early Hints` with `Link: LINK` (repeatable: one field each), before `delay`; HTTP/1.1 only, not behind a pipelined request |
//! | `delay=200ms` | wait before the response head |
//! | `fail=503` / `fail=reset` / `fail=hang[&hang=5s]` | that status / close without answering / hold then close |
//! | `chunk=16KiB&chunk_delay=10ms` | stream the body in chunks, pausing between them |
//! | `abort_after=N` | break the connection after N body bytes |
//! | `no_length=1` | no Content-Length (chunked) and no ranges |
//! | `text=1` | a text body (words, 64-byte lines, see [`crate::content::text`]), `text/plain` unless `content_type` says |
//! | `encoding=gzip\|br\|zstd` | the body (of `size` bytes before) sent in that coding, with `Content-Encoding` |
//! | `v`, `id`, `n`, `_` | ignored: for making URLs distinct |
//!
//! Conditional requests (`If-None-Match`, `If-Modified-Since`) get 304;
//! `Range` gets 206 (several ranges: multipart/byteranges) or 416, honouring
//! `If-Range`. Other methods get the same object after their body is read.
//!
//! # Control endpoints
//!
//! - `GET /__origin/stats`: `{"total": N, "paths": {"/a": n}, "methods": {...},
//!   "conditional": n, "not_modified": n, "health": n}`. Control and health
//!   requests are not in `total`.
//! - `POST /__origin/reset`: zero the counters, versions and fault.
//! - `POST /__origin/bump?path=/a`: new version of `/a` (new bytes and ETag).
//! - `POST /__origin/fault?mode=503|reset|hang|delay|off[&prefix=/a][&delay=1s]`:
//!   fail (or slow) every request under `prefix` until `mode=off`, the way an
//!   origin outage looks; the health endpoint is included.
//! - `GET /__origin/health`: 200 `ok` unless a fault covers it.
//! - `GET /__origin/request?path=/a`: the headers of the last request for `/a`.
//! - `GET /files/REL`: the file `REL` of the directory given with `--dir`.

mod early;
mod object;
mod represent;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use object::{Fail, Spec};
use represent::{Body, Outcome, Repr, Source, full};

/// Request bodies larger than this are refused: the origin only needs to see
/// that a body arrived.
const MAX_REQUEST_BODY: usize = 64 << 20;
/// How long a stopping origin lets in-flight responses finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Paths whose last request headers are kept for `/__origin/request`.
const MAX_REMEMBERED_PATHS: usize = 10_000;

#[derive(Debug, Default, Serialize)]
struct Counters {
    total: u64,
    paths: BTreeMap<String, u64>,
    methods: BTreeMap<String, u64>,
    conditional: u64,
    not_modified: u64,
    health: u64,
}

#[derive(Debug, Clone)]
struct Fault {
    fail: Option<Fail>,
    delay: Duration,
    prefix: String,
}

#[derive(Debug, Default)]
struct State {
    dir: Option<PathBuf>,
    counters: Mutex<Counters>,
    versions: Mutex<HashMap<String, u64>>,
    fault: Mutex<Option<Fault>>,
    last_request: Mutex<HashMap<String, BTreeMap<String, String>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the counters down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A bound, not yet serving, test origin.
#[derive(Debug)]
pub struct OriginServer {
    listeners: Vec<TcpListener>,
    state: Arc<State>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl OriginServer {
    /// Binds every address (port 0 picks a free port) and, with `dir`, serves
    /// that directory under `/files/`.
    pub async fn bind(addrs: &[SocketAddr], dir: Option<PathBuf>) -> io::Result<Self> {
        if addrs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the origin needs an address to listen on"));
        }
        let mut listeners = Vec::new();
        for a in addrs {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
            listeners.push(l);
        }
        Ok(OriginServer { listeners, state: Arc::new(State { dir, ..State::default() }), tls: None })
    }

    /// Serves HTTPS instead of cleartext on every listener (ALPN per `config`).
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// Serves until `shutdown` is cancelled, then lets open responses finish.
    pub async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
        let graceful = Arc::new(GracefulShutdown::new());
        let mut accepting = tokio::task::JoinSet::new();
        for listener in self.listeners {
            let state = Arc::clone(&self.state);
            let tls = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
            let shutdown = shutdown.clone();
            let graceful = Arc::clone(&graceful);
            accepting.spawn(async move {
                loop {
                    let (stream, _) = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = listener.accept() => match r {
                            Ok(x) => x,
                            Err(e) => {
                                tracing::warn!(error = %e, "origin accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                    };
                    let _ = stream.set_nodelay(true);
                    let state = Arc::clone(&state);
                    let early = Arc::new(early::Early::default());
                    let hints = Arc::clone(&early);
                    let svc = service_fn(move |req| handle(Arc::clone(&state), Arc::clone(&hints), req));
                    match &tls {
                        None => {
                            let builder = auto::Builder::new(TokioExecutor::new());
                            let io = TokioIo::new(early::EarlyIo::new(stream, early));
                            let conn = builder.serve_connection(io, svc).into_owned();
                            let conn = graceful.watch(conn);
                            tokio::spawn(async move {
                                let _ = conn.await;
                            });
                        }
                        Some(acceptor) => {
                            // The handshake runs in the connection's task; a
                            // connection that finishes it after shutdown began
                            // is dropped.
                            let (acceptor, graceful) = (acceptor.clone(), Arc::downgrade(&graceful));
                            tokio::spawn(async move {
                                let handshake = tokio::time::timeout(SHUTDOWN_GRACE, acceptor.accept(stream)).await;
                                let Ok(Ok(stream)) = handshake else { return };
                                let builder = auto::Builder::new(TokioExecutor::new());
                                let io = TokioIo::new(early::EarlyIo::new(stream, early));
                                let conn = builder.serve_connection(io, svc).into_owned();
                                let Some(watch) = graceful.upgrade().map(|g| g.watch(conn)) else { return };
                                let _ = watch.await;
                            });
                        }
                    }
                }
            });
        }
        while accepting.join_next().await.is_some() {}
        // A TLS connection finishing its handshake holds the tracker for a
        // moment; then there is nothing to wait for.
        if let Ok(graceful) = Arc::try_unwrap(graceful) {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
        }
        Ok(())
    }
}

/// Binds and serves until `shutdown`.
pub async fn run(addrs: &[SocketAddr], dir: Option<PathBuf>, shutdown: CancellationToken) -> io::Result<()> {
    OriginServer::bind(addrs, dir).await?.run(shutdown).await
}

/// Hyper closes the connection without a response when a service fails:
/// that is how `fail=reset` is done.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset as the request asked")
    }
}

impl std::error::Error for Reset {}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(full(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

async fn handle(state: Arc<State>, early: Arc<early::Early>, req: Request<Incoming>) -> Result<Response<Body>, Reset> {
    let path = req.uri().path().to_string();
    if let Some(control) = path.strip_prefix("/__origin/")
        && control != "health"
    {
        return Ok(control_endpoint(&state, control, req.method(), req.uri().query()));
    }
    let (parts, body) = req.into_parts();
    // Read the request body so the client's request completes.
    if parts.method != Method::GET
        && parts.method != Method::HEAD
        && Limited::new(body, MAX_REQUEST_BODY).collect().await.is_err()
    {
        return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large or broken\n"));
    }
    let fault = lock(&state.fault).clone().filter(|f| path.starts_with(&f.prefix));
    if path == "/__origin/health" {
        lock(&state.counters).health += 1;
    } else {
        count(&state, &path, &parts);
    }
    if let Some(f) = fault {
        if !f.delay.is_zero() {
            tokio::time::sleep(f.delay).await;
        }
        if let Some(fail) = f.fail {
            return fail_now(fail).await;
        }
    }
    if path == "/__origin/health" {
        return Ok(text(StatusCode::OK, "ok\n"));
    }
    if let (Some(rel), Some(dir)) = (path.strip_prefix("/files/"), state.dir.as_deref()) {
        return Ok(serve_file(&state, dir, rel, &parts).await);
    }
    let spec = match Spec::from_query(parts.uri.query().unwrap_or("")) {
        Ok(s) => s,
        Err(msg) => return Ok(text(StatusCode::BAD_REQUEST, format!("{msg}\n"))),
    };
    if !spec.early.is_empty() && parts.version == http::Version::HTTP_11 {
        early.hint(&spec.early);
    }
    if !spec.delay.is_zero() {
        tokio::time::sleep(spec.delay).await;
    }
    if let Some(fail) = spec.fail {
        return fail_now(fail).await;
    }
    let version = lock(&state.versions).get(&path).copied().unwrap_or(0);
    let seed = crate::content::seed(&path, version, &spec.vary_values(&parts.headers));
    let coding = spec.encoding.map_or(String::new(), |c| format!("-{}", c.token()));
    let etag = spec.etag.clone().map(|e| {
        e.unwrap_or_else(|| {
            HeaderValue::from_str(&format!("\"{seed:016x}-{}{coding}\"", spec.size))
                .unwrap_or(HeaderValue::from_static("\"x\""))
        })
    });
    let mut source = Source::Synthetic { seed, text: spec.text };
    let mut len = spec.size;
    let mut headers = spec.headers;
    if let Some(c) = spec.encoding {
        if spec.size > object::MAX_ENCODED {
            return Ok(text(StatusCode::BAD_REQUEST, format!("encoding: at most {} bytes\n", object::MAX_ENCODED)));
        }
        let plain = if spec.text {
            crate::content::text(seed, 0, len as usize)
        } else {
            crate::content::bytes(seed, 0, len as usize)
        };
        let Ok(encoded) = outpost_net::coding::encode(c, &plain) else {
            return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n".to_string()));
        };
        len = encoded.len() as u64;
        source = Source::Memory(encoded.into());
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c.token()));
    }
    let repr = Repr {
        status: spec.status,
        len,
        etag,
        last_modified: spec.last_modified,
        headers,
        source,
        chunk: spec.chunk,
        chunk_delay: spec.chunk_delay,
        abort_after: spec.abort_after,
        unknown_length: spec.unknown_length,
    };
    Ok(finish(&state, repr, &parts))
}

fn count(state: &State, path: &str, parts: &http::request::Parts) {
    let conditional =
        parts.headers.contains_key(header::IF_NONE_MATCH) || parts.headers.contains_key(header::IF_MODIFIED_SINCE);
    {
        let mut c = lock(&state.counters);
        c.total += 1;
        *c.paths.entry(path.to_string()).or_default() += 1;
        *c.methods.entry(parts.method.to_string()).or_default() += 1;
        c.conditional += u64::from(conditional);
    }
    // Repeated lines of one field are joined, as RFC 9110 §5.3 allows.
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes());
        headers
            .entry(k.to_string())
            .and_modify(|prev| *prev = format!("{prev}, {v}"))
            .or_insert_with(|| v.into_owned());
    }
    let mut last = lock(&state.last_request);
    if last.len() < MAX_REMEMBERED_PATHS || last.contains_key(path) {
        last.insert(path.to_string(), headers);
    }
}

fn finish(state: &State, repr: Repr, parts: &http::request::Parts) -> Response<Body> {
    let (resp, outcome) = repr.respond(&parts.method, &parts.headers);
    if outcome == Outcome::NotModified {
        lock(&state.counters).not_modified += 1;
    }
    resp
}

async fn fail_now(fail: Fail) -> Result<Response<Body>, Reset> {
    match fail {
        Fail::Status(code) => Ok(text(code, format!("failing with {code} as asked\n"))),
        Fail::Reset => Err(Reset),
        Fail::Hang(d) => {
            tokio::time::sleep(d).await;
            Err(Reset)
        }
    }
}

fn control_endpoint(state: &State, name: &str, method: &Method, query: Option<&str>) -> Response<Body> {
    match (method, name) {
        (&Method::GET, "stats") => json(&*lock(&state.counters)),
        (&Method::POST, "reset") => {
            *lock(&state.counters) = Counters::default();
            lock(&state.versions).clear();
            *lock(&state.fault) = None;
            lock(&state.last_request).clear();
            json(&serde_json::json!({"reset": true}))
        }
        (&Method::POST, "bump") => {
            let Some(path) = query_param(query, "path") else {
                return text(StatusCode::BAD_REQUEST, "bump needs ?path=/the/object\n");
            };
            let mut versions = lock(&state.versions);
            let v = versions.entry(path.clone()).or_default();
            *v += 1;
            json(&serde_json::json!({"path": path, "version": *v}))
        }
        (&Method::POST, "fault") => {
            let mode = query_param(query, "mode").unwrap_or_default();
            let prefix = query_param(query, "prefix").unwrap_or_else(|| "/".into());
            let delay = match query_param(query, "delay").map(|d| humantime::parse_duration(&d)) {
                None => Duration::ZERO,
                Some(Ok(d)) => d,
                Some(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("delay: {e}\n")),
            };
            let hang = query_param(query, "hang").and_then(|d| humantime::parse_duration(&d).ok());
            let fault = match mode.as_str() {
                "off" => None,
                "delay" => Some(Fault { fail: None, delay, prefix }),
                other => match Fail::parse(other, hang) {
                    Ok(fail) => Some(Fault { fail: Some(fail), delay, prefix }),
                    Err(msg) => return text(StatusCode::BAD_REQUEST, format!("{msg}, delay or off\n")),
                },
            };
            let active = fault.is_some();
            *lock(&state.fault) = fault;
            json(&serde_json::json!({"fault": active, "mode": mode}))
        }
        (&Method::GET, "request") => {
            let path = query_param(query, "path").unwrap_or_default();
            match lock(&state.last_request).get(&path) {
                Some(h) => json(h),
                None => text(StatusCode::NOT_FOUND, format!("no request for `{path}` yet\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, format!("no control endpoint {method} /__origin/{name}\n")),
    }
}

/// A path under the served directory, or `None` when it would leave it.
fn contained(dir: &Path, rel: &str) -> Option<PathBuf> {
    let decoded: String = form_urlencoded::parse(format!("p={}", rel.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())?;
    let rel = Path::new(&decoded);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(dir.join(rel))
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css",
        "js" => "text/javascript",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "svg" => "image/svg+xml",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

async fn serve_file(state: &State, dir: &Path, rel: &str, parts: &http::request::Parts) -> Response<Body> {
    let Some(path) = contained(dir, rel) else {
        return text(StatusCode::FORBIDDEN, "path leaves the served directory\n");
    };
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() => m,
        _ => return text(StatusCode::NOT_FOUND, "no such file\n"),
    };
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let secs = modified.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut headers = http::HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&path)));
    let repr = Repr {
        status: StatusCode::OK,
        len: meta.len(),
        etag: HeaderValue::from_str(&format!("\"{secs:x}-{:x}\"", meta.len())).ok(),
        last_modified: Some(modified),
        headers,
        source: Source::File { path },
        chunk: object::DEFAULT_CHUNK,
        chunk_delay: Duration::ZERO,
        abort_after: None,
        unknown_length: false,
    };
    finish(state, repr, parts)
}
