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
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::metrics::{Second, Summary, new_histogram};
use super::scenario::{Action, Check, Executor, Picker, Scenario};

/// What one VU (or one arrival) measured since the collector last looked.
#[derive(Debug)]
struct Tally {
    latency: Histogram<u64>,
    reqs: u64,
    failed: u64,
    hits: u64,
    bytes: u64,
    checks: Vec<(u64, u64)>,
}

impl Tally {
    fn new(checks: usize) -> Tally {
        Tally { latency: new_histogram(), reqs: 0, failed: 0, hits: 0, bytes: 0, checks: vec![(0, 0); checks] }
    }
}

/// The request every VU sends, prepared once.
#[derive(Debug)]
struct Plan {
    targets: Vec<(SocketAddr, HeaderValue)>,
    host: Option<HeaderValue>,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    checks: Vec<Check>,
    sizes: Vec<String>,
}

/// Is the response a hit at the cache nearest the client (the last member
/// of `Cache-Status`)?
pub fn is_edge_hit(cache_status: Option<&HeaderValue>) -> bool {
    cache_status
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|last| last.split(';').skip(1).any(|p| p.trim() == "hit"))
}

struct Conn {
    send: SendRequest<Empty<Bytes>>,
}

/// An idle VU of the open model: its connection, target, object picker and
/// statistics.
type Vu = (Option<Conn>, usize, Picker, Arc<Mutex<Tally>>);

async fn connect(addr: SocketAddr) -> Option<Conn> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await.ok()?.ok()?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(Conn { send })
}

impl Plan {
    fn new(s: &Scenario) -> Result<Plan, String> {
        let mut targets = Vec::new();
        for u in &s.target.urls {
            let uri: http::Uri = u.parse().map_err(|e| format!("target url `{u}`: {e}"))?;
            let authority = uri.authority().ok_or_else(|| format!("target url `{u}` has no host"))?;
            let port = authority.port_u16().unwrap_or(80);
            let addr: SocketAddr = format!("{}:{port}", authority.host().trim_matches(['[', ']']))
                .parse()
                .map_err(|_| format!("target url `{u}`: the host must be an IP address"))?;
            let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
            targets.push((addr, host));
        }
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
        let path = s.requests.path.replace("{run}", &run_id());
        Ok(Plan { targets, host, path, headers, checks: s.checks.clone(), sizes: s.requests.sizes.clone() })
    }

    /// One request on `conn` (reopened if it broke), recorded in `tally`.
    async fn send(&self, conn: &mut Option<Conn>, target: usize, picker: &mut Picker, tally: &Mutex<Tally>) {
        let (addr, authority) = &self.targets[target];
        if conn.as_ref().is_none_or(|c| c.send.is_closed()) {
            *conn = connect(*addr).await;
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
        let Ok(req) = req.body(Empty::new()) else { return };
        let started = Instant::now();
        let result = match conn.as_mut() {
            Some(c) => match c.send.ready().await {
                Ok(()) => c.send.send_request(req).await.ok(),
                Err(_) => None,
            },
            None => None,
        };
        let Some(resp) = result else {
            *conn = None;
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            t.reqs += 1;
            t.failed += 1;
            for c in &mut t.checks {
                c.1 += 1;
            }
            return;
        };
        let (parts, body) = resp.into_parts();
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes().len() as u64,
            Err(_) => {
                *conn = None;
                u64::MAX
            }
        };
        let took = started.elapsed().as_micros() as u64;
        let hit = is_edge_hit(parts.headers.get("cache-status"));
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        let t = &mut *t;
        t.reqs += 1;
        let _ = t.latency.record(took.max(1));
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
async fn fire(a: &Action) -> Result<u16, String> {
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
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?;
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

/// Runs `s` to completion. `on_second` is called with each second's
/// figures as they come (for a progress line).
pub async fn run(s: &Scenario, on_second: &(dyn Fn(&Second, Duration) + Sync)) -> Result<Summary, String> {
    let plan = Arc::new(Plan::new(s)?);
    let prefix = s.requests.prefix().to_string();
    let origin_before = match &s.target.origin {
        Some(o) => Some(origin_total(o, &prefix).await?),
        None => None,
    };
    let picker = Picker::new(&s.requests, 0x5EED);
    let checks = plan.checks.len();
    let tallies: Arc<Mutex<Vec<Arc<Mutex<Tally>>>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(Live::default());
    let dropped = Arc::new(AtomicU64::new(0));
    let duration = s.executor.duration();
    let started = Instant::now();
    let deadline = started + duration;
    let actions = start_actions(&s.actions, started, deadline);

    let new_tally = move |tallies: &Mutex<Vec<Arc<Mutex<Tally>>>>| {
        let t = Arc::new(Mutex::new(Tally::new(checks)));
        tallies.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::clone(&t));
        t
    };

    let mut tasks = tokio::task::JoinSet::new();
    match &s.executor {
        Executor::ConstantVus { .. } | Executor::RampingVus { .. } => {
            let executor = Arc::new(s.executor.clone());
            for i in 0..s.executor.max_vus() {
                let (plan, stop, live, executor) =
                    (Arc::clone(&plan), Arc::clone(&stop), Arc::clone(&live), Arc::clone(&executor));
                let tally = new_tally(&tallies);
                let mut picker = picker.fork(u64::from(i) + 1);
                tasks.spawn(async move {
                    let mut conn = None;
                    let target = i as usize % plan.targets.len();
                    let mut active = false;
                    while !stop.load(Ordering::Relaxed) {
                        let want = executor.vus_at(started.elapsed());
                        if i >= want {
                            if active {
                                live.vus.fetch_sub(1, Ordering::Relaxed);
                                active = false;
                                conn = None;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        if !active {
                            live.vus.fetch_add(1, Ordering::Relaxed);
                            active = true;
                        }
                        plan.send(&mut conn, target, &mut picker, &tally).await;
                    }
                });
            }
        }
        Executor::ConstantArrivalRate { rate, time_unit, pre_allocated_vus, .. } => {
            let max_vus = s.executor.max_vus();
            let per_sec = f64::from(*rate) / time_unit.as_secs_f64();
            let pool: Arc<Mutex<Vec<Vu>>> = Arc::new(Mutex::new(Vec::new()));
            for i in 0..*pre_allocated_vus {
                let target = i as usize % plan.targets.len();
                let vu = (None, target, picker.fork(u64::from(i) + 1), new_tally(&tallies));
                pool.lock().unwrap_or_else(|p| p.into_inner()).push(vu);
            }
            let created = Arc::new(AtomicU32::new(*pre_allocated_vus));
            let (plan, stop, live, dropped, tallies) =
                (Arc::clone(&plan), Arc::clone(&stop), Arc::clone(&live), Arc::clone(&dropped), Arc::clone(&tallies));
            tasks.spawn(async move {
                let mut issued: u64 = 0;
                let mut inflight = tokio::task::JoinSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let due = (started.elapsed().as_secs_f64() * per_sec) as u64;
                    while issued < due {
                        issued += 1;
                        let vu = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
                        let vu = match vu {
                            Some(vu) => vu,
                            None if created.load(Ordering::Relaxed) < max_vus => {
                                let n = created.fetch_add(1, Ordering::Relaxed);
                                (
                                    None,
                                    n as usize % plan.targets.len(),
                                    picker.fork(u64::from(n) + 1),
                                    new_tally(&tallies),
                                )
                            }
                            None => {
                                dropped.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        };
                        let (plan, pool, live) = (Arc::clone(&plan), Arc::clone(&pool), Arc::clone(&live));
                        inflight.spawn(async move {
                            live.vus.fetch_add(1, Ordering::Relaxed);
                            let (mut conn, target, mut picker, tally) = vu;
                            plan.send(&mut conn, target, &mut picker, &tally).await;
                            live.vus.fetch_sub(1, Ordering::Relaxed);
                            pool.lock().unwrap_or_else(|p| p.into_inner()).push((conn, target, picker, tally));
                        });
                    }
                    while inflight.try_join_next().is_some() {}
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                while inflight.join_next().await.is_some() {}
            });
        }
    }

    // The collector: merges every VU's tally once a second.
    let mut latency = new_histogram();
    let (mut reqs, mut failed, mut hits, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut check_totals = vec![(0u64, 0u64); checks];
    let mut series = Vec::new();
    let mut max_vus = 0;
    let mut collect = |t: u32, series: &mut Vec<Second>, vus: u32| {
        let mut second = new_histogram();
        let (mut sr, mut sf, mut sh) = (0, 0, 0);
        for tally in tallies.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let mut x = tally.lock().unwrap_or_else(|p| p.into_inner());
            let _ = second.add(&x.latency);
            x.latency.reset();
            sr += x.reqs;
            sf += x.failed;
            sh += x.hits;
            bytes += x.bytes;
            for (total, c) in check_totals.iter_mut().zip(&mut x.checks) {
                total.0 += c.0;
                total.1 += c.1;
                *c = (0, 0);
            }
            x.reqs = 0;
            x.failed = 0;
            x.hits = 0;
            x.bytes = 0;
        }
        let _ = latency.add(&second);
        reqs += sr;
        failed += sf;
        hits += sh;
        let q = |p: f64| if second.is_empty() { 0.0 } else { second.value_at_quantile(p) as f64 / 1000.0 };
        let s = Second { t, reqs: sr, failed: sf, hits: sh, vus, p50_ms: q(0.5), p95_ms: q(0.95), p99_ms: q(0.99) };
        series.push(s);
    };
    let mut t = 0;
    loop {
        let next = started + Duration::from_secs(u64::from(t) + 1);
        tokio::time::sleep_until(next.min(deadline).into()).await;
        let vus = live.vus.load(Ordering::Relaxed);
        max_vus = max_vus.max(vus);
        if Instant::now() >= deadline {
            stop.store(true, Ordering::Relaxed);
            // Requests in flight finish (bounded by their own timeouts).
            let _ = tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} })
                .await;
            tasks.abort_all();
            t += 1;
            collect(t, &mut series, vus);
            if let Some(last) = series.last() {
                on_second(last, started.elapsed());
            }
            break;
        }
        t += 1;
        collect(t, &mut series, vus);
        if let Some(last) = series.last() {
            on_second(last, started.elapsed());
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
    let checks = s.checks.iter().zip(check_totals).map(|(c, (p, f))| (c.name.clone(), p, f)).collect();
    Ok(Summary {
        elapsed: started.elapsed(),
        reqs,
        failed,
        hits,
        bytes,
        dropped: dropped.load(Ordering::Relaxed),
        max_vus,
        checks,
        origin_requests,
        latency,
        series,
        actions: action_results,
    })
}

/// Requests the test origin has counted (`/__origin/stats`) for paths
/// under `prefix`.
async fn origin_total(origin: &str, prefix: &str) -> Result<u64, String> {
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
    let resp = conn.send.send_request(req).await.map_err(|e| format!("origin stats: {e}"))?;
    let body = resp.into_body().collect().await.map_err(|e| format!("origin stats: {e}"))?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("origin stats: {e}"))?;
    let paths = v["paths"].as_object().ok_or_else(|| "origin stats without paths".to_string())?;
    Ok(paths.iter().filter(|(p, _)| p.starts_with(prefix)).filter_map(|(_, n)| n.as_u64()).sum())
}
