//! Running a scenario: virtual users, each with its own keep-alive HTTP/1.1
//! connection, driven by the executor.
//!
//! - `constant-vus` and `ramping-vus` are closed models: each VU sends its
//!   next request when the last one is answered.
//! - `constant-arrival-rate` is an open model: requests start on schedule
//!   whether or not earlier ones have been answered, each taking an idle
//!   connection (or opening one, up to `max_vus`); when none is free the
//!   iteration is dropped and counted, so a slow server shows up as latency
//!   and drops rather than as a quietly lower rate (no coordinated omission).
//!
//! Each VU records into its own statistics; a collector merges them every
//! second into the run's histogram and its per-second series.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use hickory_resolver::TokioResolver;

use super::dial::{self, Conn, Tls, Version};
use super::metrics::{Second, Summary, Timings, new_histogram};
use super::scenario::{Action, Check, Executor, Picker, Scenario};

/// What one VU (or one arrival) measured since the collector last looked.
#[derive(Debug)]
struct Tally {
    latency: Histogram<u64>,
    timings: Timings,
    reqs: u64,
    failed: u64,
    hits: u64,
    bytes: u64,
    checks: Vec<(u64, u64)>,
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// How long requests in flight at the end of a run may finish before they
/// are aborted (and count as failed).
const END_GRACE: Duration = Duration::from_secs(10);

/// Longest a request may take, its body read: past it, it counts as
/// failed (k6's default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A request under way, counted as failed if it never ends: one still
/// waiting on a target that answers nothing when the run stops (its task
/// is aborted) failed as much as one refused, and a run whose every
/// request hung must not pass for want of any.
struct Unfinished<'a> {
    tally: &'a Mutex<Tally>,
    done: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.tally.lock().unwrap_or_else(|p| p.into_inner()).failed_request();
        }
    }
}

impl Tally {
    /// A request that got no answer: failed, with every check.
    fn failed_request(&mut self) {
        self.reqs += 1;
        self.failed += 1;
        for c in &mut self.checks {
            c.1 += 1;
        }
    }

    fn new(checks: usize) -> Tally {
        Tally {
            latency: new_histogram(),
            timings: Timings::new(),
            reqs: 0,
            failed: 0,
            hits: 0,
            bytes: 0,
            checks: vec![(0, 0); checks],
        }
    }

    /// Adds `other`'s figures to these and zeroes `other`.
    fn absorb(&mut self, other: &mut Tally) {
        let _ = self.latency.add(&other.latency);
        other.latency.reset();
        for (mine, theirs) in self.timings.each().into_iter().zip(other.timings.each()) {
            let _ = mine.add(&*theirs);
            theirs.reset();
        }
        self.reqs += std::mem::take(&mut other.reqs);
        self.failed += std::mem::take(&mut other.failed);
        self.hits += std::mem::take(&mut other.hits);
        self.bytes += std::mem::take(&mut other.bytes);
        for (total, c) in self.checks.iter_mut().zip(&mut other.checks) {
            let (pass, fail) = std::mem::take(c);
            total.0 += pass;
            total.1 += fail;
        }
    }
}

/// Where a target URL points: an address, or a name resolved for every
/// new connection (through the scenario's DNS server, or the system's).
#[derive(Debug, Clone)]
enum Dest {
    Addr(SocketAddr),
    Name(String, u16),
}

/// The request every VU sends, prepared once.
#[derive(Debug)]
struct Plan {
    targets: Vec<(Dest, HeaderValue)>,
    /// For targets named by host name.
    resolver: Option<TokioResolver>,
    host: Option<HeaderValue>,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    checks: Vec<Check>,
    sizes: Vec<String>,
    /// Set for `https://` targets.
    tls: Option<Tls>,
    /// A new connection for every request.
    fresh: bool,
    version: Version,
}

/// Is the response a hit at the cache nearest the client (the last member
/// of `Cache-Status`)?
pub fn is_edge_hit(cache_status: Option<&HeaderValue>) -> bool {
    cache_status
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|last| last.split(';').skip(1).any(|p| p.trim() == "hit"))
}

/// An idle VU of the open model: its connection, target, object picker and
/// statistics.
type Vu = (Option<Conn>, usize, Picker, Arc<Mutex<Tally>>);

/// A resolver asking `server` (`ip:port`), or the system's resolver.
fn resolver(server: Option<&str>) -> Result<TokioResolver, String> {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let built = match server {
        Some(s) => {
            let addr: SocketAddr = s.parse().map_err(|_| format!("target dns `{s}`: not an ip:port"))?;
            let mut ns = NameServerConfig::udp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            let config = ResolverConfig::from_parts(None, Vec::new(), vec![ns]);
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default()).build()
        }
        None => TokioResolver::builder_tokio().and_then(|b| b.build()),
    };
    built.map_err(|e| format!("target dns: {e}"))
}

async fn connect(addr: SocketAddr) -> Option<Conn> {
    dial::connect(addr, None, Version::Http1).await.map(|(c, _)| c)
}

impl Plan {
    fn new(s: &Scenario) -> Result<Plan, String> {
        let mut targets = Vec::new();
        let mut schemes = Vec::new();
        for u in &s.target.urls {
            let uri: http::Uri = u.parse().map_err(|e| format!("target url `{u}`: {e}"))?;
            let authority = uri.authority().ok_or_else(|| format!("target url `{u}` has no host"))?;
            let https = match uri.scheme_str() {
                Some("https") => true,
                Some("http") | None => false,
                Some(other) => return Err(format!("target url `{u}`: no scheme `{other}` (http or https)")),
            };
            schemes.push(https);
            let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
            let host = authority.host().trim_matches(['[', ']']);
            let dest = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => Dest::Addr(SocketAddr::new(ip, port)),
                Err(_) => Dest::Name(host.to_string(), port),
            };
            let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
            targets.push((dest, host));
        }
        let resolver = if targets.iter().any(|(d, _)| matches!(d, Dest::Name(..))) {
            Some(resolver(s.target.dns.as_deref())?)
        } else {
            None
        };
        let host = s.target.host.as_deref().map(HeaderValue::from_str).transpose().map_err(|e| e.to_string())?;
        let mut headers = Vec::new();
        for (k, v) in &s.requests.headers {
            headers.push((
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header `{k}`: {e}"))?,
                HeaderValue::from_str(v).map_err(|e| format!("header `{k}`: {e}"))?,
            ));
        }
        if let Some(r) = &s.requests.range {
            headers.push((http::header::RANGE, HeaderValue::from_str(r).map_err(|e| e.to_string())?));
        }
        let version = match (s.target.http2, s.target.http3) {
            (_, true) if !schemes.iter().all(|&h| h) => {
                return Err("target http3: HTTP/3 needs https:// urls".into());
            }
            (true, true) => return Err("target: http2 and http3 exclude each other".into()),
            (_, true) => Version::Http3,
            (true, false) => Version::Http2,
            (false, false) => Version::Http1,
        };
        let tls = match (schemes.iter().any(|&h| h), schemes.iter().all(|&h| h)) {
            (false, _) => None,
            (true, false) => return Err("target urls: all https or all http, not a mix".into()),
            (true, true) => {
                let t = &s.target;
                let from_url = targets.first().map(|(d, _): &(Dest, _)| match d {
                    Dest::Addr(a) => a.ip().to_string(),
                    Dest::Name(n, _) => n.clone(),
                });
                let name = t
                    .server_name
                    .clone()
                    .or_else(|| t.host.as_deref().map(|h| h.rsplit_once(':').map_or(h, |(n, _)| n).to_string()))
                    .or(from_url)
                    .unwrap_or_default();
                Some(Tls::new(&name, t.ca.as_deref(), t.insecure_skip_tls_verify, t.tls_resumption, version)?)
            }
        };
        let path = s.requests.path.replace("{run}", &run_id());
        Ok(Plan {
            targets,
            resolver,
            host,
            path,
            headers,
            checks: s.checks.clone(),
            sizes: s.requests.sizes.clone(),
            tls,
            fresh: s.target.no_connection_reuse,
            version,
        })
    }

    /// Where a new connection to `dest` goes: a name's first address, as
    /// the resolver has it (it keeps answers for their TTL).
    async fn address(&self, dest: &Dest) -> Option<SocketAddr> {
        match dest {
            Dest::Addr(a) => Some(*a),
            Dest::Name(name, port) => {
                let resolver = self.resolver.as_ref()?;
                let ip = resolver.lookup_ip(name.as_str()).await.ok()?.iter().next()?;
                Some(SocketAddr::new(ip, *port))
            }
        }
    }

    /// One request on `conn` (reopened if it broke), recorded in `tally`.
    async fn send(&self, conn: &mut Option<Conn>, target: usize, picker: &mut Picker, tally: &Mutex<Tally>) {
        // From the first step: a request still connecting when the run ends
        // failed as much as one waiting for its answer.
        let mut unfinished = Unfinished { tally, done: false };
        let (dest, authority) = &self.targets[target];
        if self.fresh {
            *conn = None;
        }
        let mut opened = None;
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            *conn = match self.address(dest).await {
                Some(addr) => dial::connect(addr, self.tls.as_ref(), self.version).await.map(|(c, o)| {
                    opened = Some(o);
                    c
                }),
                None => None,
            };
        }
        let n = picker.pick();
        let mut path = self.path.replace("{n}", &n.to_string());
        if !self.sizes.is_empty() {
            path = path.replace("{size}", &self.sizes[(n as usize - 1) % self.sizes.len()]);
        }
        let mut req = Request::get(path);
        req = req.header(http::header::HOST, self.host.as_ref().unwrap_or(authority));
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let Ok(mut req) = req.body(Empty::new()) else { return };
        // Tell an HTTP/1.1 server the connection ends with this request
        // (HTTP/2 has no such header: the connection is simply dropped).
        if self.fresh && matches!(conn, Some(Conn::H1(_))) {
            req.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        let started = Instant::now();
        let result = match conn.as_mut() {
            Some(c) => tokio::time::timeout(REQUEST_TIMEOUT, c.send(req)).await.ok().and_then(Result::ok),
            None => None,
        };
        let Some(resp) = result else {
            *conn = None;
            return;
        };
        let head = Instant::now();
        let (parts, body) = resp.into_parts();
        let left = REQUEST_TIMEOUT.saturating_sub(started.elapsed());
        let bytes = match tokio::time::timeout(left, body.len()).await {
            Ok(Ok(n)) => n,
            _ => {
                *conn = None;
                u64::MAX
            }
        };
        unfinished.done = true;
        let took = started.elapsed().as_micros() as u64;
        let hit = is_edge_hit(parts.headers.get("cache-status"));
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        let t = &mut *t;
        t.reqs += 1;
        t.latency.saturating_record(took.max(1));
        record(&mut t.timings.waiting, head - started);
        match opened {
            Some(o) => {
                record(&mut t.timings.connecting, o.connecting);
                if let Some(tls) = o.tls_handshaking {
                    record(&mut t.timings.tls_handshaking, tls);
                }
                record(&mut t.timings.first_byte, head - o.at);
            }
            None => record(&mut t.timings.first_byte, head - started),
        }
        let broken = bytes == u64::MAX;
        t.failed += u64::from(broken || parts.status.as_u16() >= 400);
        t.hits += u64::from(hit);
        t.bytes += if broken { 0 } else { bytes };
        for (check, count) in self.checks.iter().zip(&mut t.checks) {
            let ok = !broken
                && check.status.is_none_or(|s| s == parts.status.as_u16())
                && match (&check.header, &check.contains) {
                    (Some(h), Some(want)) => parts
                        .headers
                        .get(h.as_str())
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.contains(want.as_str())),
                    (Some(h), None) => parts.headers.contains_key(h.as_str()),
                    _ => true,
                };
            if ok {
                count.0 += 1;
            } else {
                count.1 += 1;
            }
        }
    }
}

/// The id `{run}` stands for: distinct for every run (milliseconds since
/// the epoch, in hex), fixed within one.
fn run_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        format!("{ms:x}")
    })
    .clone()
}

/// Sends one action's request; its status, or why it failed.
/// How long an action, or a read of the origin's counters, may take from
/// connecting to the last byte of the answer: a peer that holds either
/// must not hold the run.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn fire(a: &Action) -> Result<u16, String> {
    tokio::time::timeout(CALL_TIMEOUT, fire_once(a))
        .await
        .map_err(|_| format!("no whole answer within {} s", CALL_TIMEOUT.as_secs()))?
}

async fn fire_once(a: &Action) -> Result<u16, String> {
    let url = a.url.replace("{run}", &run_id());
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let authority = uri.authority().ok_or_else(|| format!("{url} has no host"))?.clone();
    let addr: SocketAddr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80))
        .parse()
        .map_err(|_| format!("{url}: the host must be an IP address"))?;
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(a.method.as_str())
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority.as_str());
    let token = a
        .token_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .or_else(|| std::env::var("OUTPOST_TOKEN").ok())
        .map(|t| t.trim().to_string());
    if let Some(t) = token.filter(|_| a.token_file.is_some()) {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if a.body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let body = http_body_util::Full::new(Bytes::from(a.body.clone().unwrap_or_default()));
    let req = req.body(body).map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// Runs the scenario's actions on their schedule until `deadline`.
fn start_actions(actions: &[Action], started: Instant, deadline: Instant) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    actions
        .iter()
        .cloned()
        .map(|a| {
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                let mut at = started + a.at;
                while at < deadline {
                    tokio::time::sleep_until(at.into()).await;
                    match fire(&a).await {
                        Ok(status) if status < 400 => ok += 1,
                        Ok(status) => {
                            failed += 1;
                            tracing::warn!(action = %a.name, status, "action refused");
                        }
                        Err(e) => {
                            failed += 1;
                            tracing::warn!(action = %a.name, error = %e, "action failed");
                        }
                    }
                    match a.every {
                        Some(every) => at += every,
                        None => break,
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

/// Live figures for the progress line.
#[derive(Debug, Default)]
pub struct Live {
    pub reqs: AtomicU64,
    pub failed: AtomicU64,
    pub vus: AtomicU32,
}

/// What the run's tasks share.
struct Shared {
    plan: Plan,
    started: Instant,
    stop: AtomicBool,
    live: Live,
    /// Arrivals of the open model that found no free VU.
    dropped: AtomicU64,
    /// Every VU's statistics, for the collector.
    tallies: Mutex<Vec<Arc<Mutex<Tally>>>>,
}

impl Shared {
    /// Statistics for a new VU, registered with the collector.
    fn tally(&self) -> Arc<Mutex<Tally>> {
        let t = Arc::new(Mutex::new(Tally::new(self.plan.checks.len())));
        lock(&self.tallies).push(Arc::clone(&t));
        t
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `s` to completion. `on_second` is called with each second's
/// figures as they come (for a progress line).
pub async fn run(s: &Scenario, on_second: &(dyn Fn(&Second, Duration) + Sync)) -> Result<Summary, String> {
    let plan = Plan::new(s)?;
    let prefix = s.requests.prefix().to_string();
    let origin_before = match &s.target.origin {
        Some(o) => Some(origin_total(o, &prefix).await?),
        None => None,
    };
    let picker = Picker::new(&s.requests, 0x5EED);
    let started = Instant::now();
    let deadline = started + s.executor.duration();
    let shared = Arc::new(Shared {
        plan,
        started,
        stop: AtomicBool::new(false),
        live: Live::default(),
        dropped: AtomicU64::new(0),
        tallies: Mutex::new(Vec::new()),
    });
    let actions = start_actions(&s.actions, started, deadline);
    let mut tasks = tokio::task::JoinSet::new();
    match &s.executor {
        Executor::ConstantVus { .. } | Executor::RampingVus { .. } => {
            let executor = Arc::new(s.executor.clone());
            for i in 0..s.executor.max_vus() {
                let (tally, picker) = (shared.tally(), picker.fork(u64::from(i) + 1));
                tasks.spawn(closed_vu(Arc::clone(&shared), Arc::clone(&executor), i, picker, tally));
            }
        }
        Executor::ConstantArrivalRate { rate, time_unit, pre_allocated_vus, .. } => {
            let per_sec = f64::from(*rate) / time_unit.as_secs_f64();
            let vus = (*pre_allocated_vus, s.executor.max_vus());
            tasks.spawn(arrivals(Arc::clone(&shared), per_sec, vus, picker));
        }
    }
    let mut collector = Collector::new(shared.plan.checks.len());
    let mut t = 0;
    loop {
        let next = started + Duration::from_secs(u64::from(t) + 1);
        tokio::time::sleep_until(next.min(deadline).into()).await;
        let vus = shared.live.vus.load(Ordering::Relaxed);
        let end = Instant::now() >= deadline;
        if end {
            shared.stop.store(true, Ordering::Relaxed);
            // Requests in flight finish (bounded by their own timeouts).
            let _ = tokio::time::timeout(END_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
            tasks.abort_all();
            // Aborted, each request still under way counts as failed as its
            // task is dropped: waited for, so this second's tally has them.
            while tasks.join_next().await.is_some() {}
        }
        t += 1;
        on_second(collector.collect(&shared.tallies, t, vus), started.elapsed());
        if end {
            break;
        }
    }
    let mut action_results = Vec::new();
    for (a, task) in s.actions.iter().zip(actions) {
        let (ok, failed) = task.await.unwrap_or((0, 0));
        action_results.push((a.name.clone(), ok, failed));
    }
    let origin_requests = match (&s.target.origin, origin_before) {
        (Some(o), Some(before)) => Some(origin_total(o, &prefix).await?.saturating_sub(before)),
        _ => None,
    };
    let Collector { total, series, max_vus } = collector;
    let checks = s.checks.iter().zip(total.checks).map(|(c, (p, f))| (c.name.clone(), p, f)).collect();
    Ok(Summary {
        elapsed: started.elapsed(),
        reqs: total.reqs,
        failed: total.failed,
        hits: total.hits,
        bytes: total.bytes,
        dropped: shared.dropped.load(Ordering::Relaxed),
        max_vus,
        checks,
        origin_requests,
        latency: total.latency,
        timings: total.timings,
        series,
        actions: action_results,
    })
}

/// VU `i` of the closed model: its next request when the last is answered,
/// while the executor wants at least `i + 1` VUs.
async fn closed_vu(shared: Arc<Shared>, executor: Arc<Executor>, i: u32, mut picker: Picker, tally: Arc<Mutex<Tally>>) {
    let mut conn = None;
    let target = i as usize % shared.plan.targets.len();
    let mut active = false;
    while !shared.stopped() {
        let want = executor.vus_at(shared.started.elapsed());
        if i >= want {
            if active {
                shared.live.vus.fetch_sub(1, Ordering::Relaxed);
                active = false;
                conn = None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if !active {
            shared.live.vus.fetch_add(1, Ordering::Relaxed);
            active = true;
        }
        shared.plan.send(&mut conn, target, &mut picker, &tally).await;
    }
}

/// The open model: `per_sec` arrivals on schedule, each on an idle VU (or a
/// new one, from `vus.0` pre-allocated up to `vus.1`); dropped when none is
/// free.
async fn arrivals(shared: Arc<Shared>, per_sec: f64, vus: (u32, u32), picker: Picker) {
    let (pre_allocated, max_vus) = vus;
    let new_vu = |n: u32| -> Vu {
        (None, n as usize % shared.plan.targets.len(), picker.fork(u64::from(n) + 1), shared.tally())
    };
    let pool: Arc<Mutex<Vec<Vu>>> = Arc::new(Mutex::new((0..pre_allocated).map(new_vu).collect()));
    let mut created = pre_allocated;
    let mut issued: u64 = 0;
    let mut inflight = tokio::task::JoinSet::new();
    while !shared.stopped() {
        let due = (shared.started.elapsed().as_secs_f64() * per_sec) as u64;
        while issued < due {
            issued += 1;
            let idle = lock(&pool).pop();
            let vu = match idle {
                Some(vu) => vu,
                None if created < max_vus => {
                    created += 1;
                    new_vu(created - 1)
                }
                None => {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            let (shared, pool) = (Arc::clone(&shared), Arc::clone(&pool));
            inflight.spawn(async move {
                shared.live.vus.fetch_add(1, Ordering::Relaxed);
                let (mut conn, target, mut picker, tally) = vu;
                shared.plan.send(&mut conn, target, &mut picker, &tally).await;
                shared.live.vus.fetch_sub(1, Ordering::Relaxed);
                lock(&pool).push((conn, target, picker, tally));
            });
        }
        while inflight.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // As the run does with closed VUs: requests in flight finish, then
    // those still waiting are aborted and waited for, so each counts as
    // failed before the run's last tally (within the run's own wait).
    let drain = async { while inflight.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(END_GRACE.saturating_sub(Duration::from_secs(1)), drain).await;
    inflight.abort_all();
    while inflight.join_next().await.is_some() {}
}

/// Merges every VU's statistics once a second into the run's totals and
/// its per-second series.
struct Collector {
    total: Tally,
    series: Vec<Second>,
    max_vus: u32,
}

impl Collector {
    fn new(checks: usize) -> Collector {
        Collector { total: Tally::new(checks), series: Vec::new(), max_vus: 0 }
    }

    /// Second `t`'s figures, with `vus` active.
    fn collect(&mut self, tallies: &Mutex<Vec<Arc<Mutex<Tally>>>>, t: u32, vus: u32) -> &Second {
        let mut second = Tally::new(self.total.checks.len());
        for tally in lock(tallies).iter() {
            second.absorb(&mut lock(tally));
        }
        let q =
            |p: f64| if second.latency.is_empty() { 0.0 } else { second.latency.value_at_quantile(p) as f64 / 1000.0 };
        let (p50_ms, p95_ms, p99_ms) = (q(0.5), q(0.95), q(0.99));
        let (reqs, failed, hits) = (second.reqs, second.failed, second.hits);
        self.total.absorb(&mut second);
        self.max_vus = self.max_vus.max(vus);
        self.series.push(Second { t, reqs, failed, hits, vus, p50_ms, p95_ms, p99_ms });
        &self.series[self.series.len() - 1]
    }
}

/// Requests the test origin has counted (`/__origin/stats`) for paths
/// under `prefix`.
async fn origin_total(origin: &str, prefix: &str) -> Result<u64, String> {
    tokio::time::timeout(CALL_TIMEOUT, origin_stats(origin, prefix))
        .await
        .map_err(|_| format!("the origin at {origin} sent no whole stats within {} s", CALL_TIMEOUT.as_secs()))?
}

async fn origin_stats(origin: &str, prefix: &str) -> Result<u64, String> {
    let url = format!("{}/__origin/stats", origin.trim_end_matches('/'));
    let uri: http::Uri = url.parse().map_err(|e| format!("target origin `{origin}`: {e}"))?;
    let authority = uri.authority().ok_or_else(|| format!("target origin `{origin}` has no host"))?.clone();
    let addr: SocketAddr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80))
        .parse()
        .map_err(|_| format!("target origin `{origin}`: the host must be an IP address"))?;
    let mut conn = connect(addr).await.ok_or_else(|| format!("cannot reach the origin at {origin}"))?;
    let req = Request::get(uri.path())
        .header(http::header::HOST, authority.as_str())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = conn.send(req).await.map_err(|e| format!("origin stats: {e}"))?;
    let dial::Answer::Hyper(body) = resp.into_body() else { return Err("origin stats: not HTTP/1.1".into()) };
    let body = body.collect().await.map_err(|e| format!("origin stats: {e}"))?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("origin stats: {e}"))?;
    let paths = v["paths"].as_object().ok_or_else(|| "origin stats without paths".to_string())?;
    Ok(paths.iter().filter(|(p, _)| p.starts_with(prefix)).filter_map(|(_, n)| n.as_u64()).sum())
}
