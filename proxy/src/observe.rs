//! Metrics and access logs. Metric handles are made once per engine, so the
//! request path only increments them: no label formatting or allocation per
//! request. All metrics carry the node name (several nodes can share one
//! process under `outpost up`).

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use outpost_config::AccessLog as AccessLogTarget;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::cache_status::Outcome;
use outpost_config::coding::Coding;

const OUTCOMES: [Outcome; 11] = [
    Outcome::Hit,
    Outcome::StaleWhileRevalidate,
    Outcome::StaleIfError,
    Outcome::StalePartitioned,
    Outcome::Revalidated,
    Outcome::UriMiss,
    Outcome::VaryMiss,
    Outcome::Expired,
    Outcome::Pass,
    Outcome::Local,
    Outcome::Error,
];

/// Codings in `Coding::index` order.
const CODINGS: [Coding; 4] = [Coding::Identity, Coding::Gzip, Coding::Br, Coding::Zstd];

#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Vec<Counter>,
    status: [Counter; 5],
    hit_seconds: Histogram,
    miss_seconds: Histogram,
    upstream_seconds: Histogram,
    upstream_errors: Counter,
    upstream_body_errors: Counter,
    /// Stored bodies finished from upstream after part of them left the
    /// store: done, failed.
    body_refills: [Counter; 2],
    coalesced: Counter,
    /// Requests refused a fetch: their connection had its share running.
    fetches_refused: Counter,
    /// Representations made from stored copies, by coding (in
    /// `Coding::index` order): made, failed; and the bytes made.
    representations: [[Counter; 2]; 4],
    representation_bytes: [Counter; 4],
    purges: Counter,
    tls_ok: Counter,
    tls_failed: Counter,
    tls_resumed: Counter,
    /// From accept to a finished TLS handshake.
    /// Full handshakes, then resumed ones.
    tls_seconds: [Histogram; 2],
    /// From accept to a new connection's first response byte: cleartext,
    /// TLS.
    first_byte_seconds: [Histogram; 2],
    /// Requests answered, and those answered from the cache, for the load
    /// and hit ratio the node reports.
    served: std::sync::Arc<std::sync::atomic::AtomicU64>,
    hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub memory_bytes: Gauge,
    /// Bytes of the disk tier's body files.
    pub body_file_bytes: Gauge,
    /// 1 while the disk tier is full or unreadable.
    pub disk_problem: Gauge,
    pub flights: Gauge,
    pub purge_rules: Gauge,
    pub sites: Gauge,
    /// Seconds cut off from the control plane (0: in contact).
    pub partitioned_seconds: Gauge,
}

impl Metrics {
    pub fn new(node: &str) -> Metrics {
        let node = node.to_string();
        let requests = OUTCOMES
            .iter()
            .map(|o| counter!("outpost_requests_total", "node" => node.clone(), "cache" => o.as_str()))
            .collect();
        let status = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|c| counter!("outpost_responses_total", "node" => node.clone(), "class" => c));
        Metrics {
            requests,
            status,
            hit_seconds: histogram!("outpost_request_duration_seconds", "node" => node.clone(), "served" => "cache"),
            miss_seconds: histogram!("outpost_request_duration_seconds", "node" => node.clone(), "served" => "upstream"),
            upstream_seconds: histogram!("outpost_upstream_duration_seconds", "node" => node.clone()),
            upstream_errors: counter!("outpost_upstream_errors_total", "node" => node.clone()),
            upstream_body_errors: counter!("outpost_upstream_body_errors_total", "node" => node.clone()),
            body_refills: ["ok", "failed"]
                .map(|r| counter!("outpost_body_refills_total", "node" => node.clone(), "result" => r)),
            coalesced: counter!("outpost_coalesced_waiters_total", "node" => node.clone()),
            fetches_refused: counter!("outpost_fetches_refused_total", "node" => node.clone()),
            representations: CODINGS.map(|c| {
                ["made", "failed"].map(|r| {
                    counter!("outpost_representations_made_total", "node" => node.clone(), "coding" => c.token(), "result" => r)
                })
            }),
            representation_bytes: CODINGS
                .map(|c| counter!("outpost_representation_bytes_total", "node" => node.clone(), "coding" => c.token())),
            served: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
            hits: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
            tls_ok: counter!("outpost_tls_handshakes_total", "node" => node.clone(), "result" => "ok"),
            tls_failed: counter!("outpost_tls_handshakes_total", "node" => node.clone(), "result" => "failed"),
            tls_resumed: counter!("outpost_tls_resumed_total", "node" => node.clone()),
            tls_seconds: ["full", "resumed"]
                .map(|k| histogram!("outpost_tls_handshake_duration_seconds", "node" => node.clone(), "kind" => k)),
            first_byte_seconds: ["http", "https"]
                .map(|s| histogram!("outpost_first_byte_seconds", "node" => node.clone(), "scheme" => s)),
            purges: counter!("outpost_purges_total", "node" => node.clone()),
            memory_bytes: gauge!("outpost_cache_memory_bytes", "node" => node.clone()),
            body_file_bytes: gauge!("outpost_cache_body_file_bytes", "node" => node.clone()),
            disk_problem: gauge!("outpost_cache_disk_problem", "node" => node.clone()),
            flights: gauge!("outpost_fetches_in_flight", "node" => node.clone()),
            purge_rules: gauge!("outpost_purge_rules", "node" => node.clone()),
            sites: gauge!("outpost_sites", "node" => node.clone()),
            partitioned_seconds: gauge!("outpost_partitioned_seconds", "node" => node),
        }
    }

    /// Requests answered since the node started.
    pub fn served(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests answered from the cache since the node started.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn request(&self, outcome: Outcome, status: u16, took: Duration) {
        self.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if outcome.is_hit() {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.requests[i].increment(1);
        }
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.status[class].increment(1);
        if outcome.is_hit() { &self.hit_seconds } else { &self.miss_seconds }.record(took.as_secs_f64());
    }

    pub fn upstream(&self, took: Duration, ok: bool) {
        self.upstream_seconds.record(took.as_secs_f64());
        if !ok {
            self.upstream_errors.increment(1);
        }
    }

    pub fn upstream_body_error(&self) {
        self.upstream_body_errors.increment(1);
    }

    pub fn body_refill(&self, ok: bool) {
        self.body_refills[usize::from(!ok)].increment(1);
    }

    /// A representation in `coding` made (`bytes` long) or not.
    pub fn representation(&self, coding: Coding, ok: bool, bytes: usize) {
        debug_assert_eq!(CODINGS[coding.index()], coding);
        self.representations[coding.index()][usize::from(!ok)].increment(1);
        self.representation_bytes[coding.index()].increment(bytes as u64);
    }

    pub fn coalesced(&self) {
        self.coalesced.increment(1);
    }

    pub fn fetch_refused(&self) {
        self.fetches_refused.increment(1);
    }

    pub fn purge(&self) {
        self.purges.increment(1);
    }

    pub fn tls_handshake(&self, how: outpost_net::Handshake, took: Duration) {
        use outpost_net::Handshake;
        match how {
            Handshake::Failed => self.tls_failed.increment(1),
            Handshake::Full | Handshake::Resumed => {
                let resumed = how == Handshake::Resumed;
                self.tls_ok.increment(1);
                if resumed {
                    self.tls_resumed.increment(1);
                }
                self.tls_seconds[usize::from(resumed)].record(took.as_secs_f64());
            }
        }
    }

    pub fn first_byte(&self, secure: bool, took: Duration) {
        self.first_byte_seconds[usize::from(secure)].record(took.as_secs_f64());
    }
}

/// One access log line.
#[derive(Debug, Serialize)]
pub(crate) struct AccessRecord {
    pub ts: String,
    pub node: String,
    pub client: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub cache: &'static str,
    /// Content length of the response, when known at the head.
    pub bytes: Option<u64>,
    pub upstream_ms: Option<f64>,
    pub duration_ms: f64,
    /// The content coding of the body sent, when codings were negotiated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coding: Option<&'static str>,
    /// This node made that coding from the stored one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub transformed: bool,
    /// The host or path was longer than the log keeps, and cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Lines that could not be queued are dropped (and counted), never waited
/// for: logging must not slow the request path.
const LOG_QUEUE: usize = 8192;

/// What the writer thread is sent.
#[derive(Debug)]
// Lines are nearly every message: boxing them would allocate per request.
#[allow(clippy::large_enum_variant)]
enum LogMsg {
    Line(AccessRecord),
    /// Look at the reopen generation now (a SIGHUP).
    Wake,
}

/// Bumped by [`reopen_access_logs`]; each writer reopens its file when it
/// sees a generation it has not opened.
static REOPEN: AtomicU64 = AtomicU64::new(0);
/// Every file writer, to wake on a reopen.
static WRITERS: Mutex<Vec<mpsc::WeakSender<LogMsg>>> = Mutex::new(Vec::new());

/// Closes and reopens every access log file at its path, as after a log
/// rotation (the process's answer to SIGHUP): lines written from now on go
/// to the new file. Lines already queued go to whichever file is open.
pub fn reopen_access_logs() {
    REOPEN.fetch_add(1, Ordering::SeqCst);
    let mut writers = WRITERS.lock().unwrap_or_else(|p| p.into_inner());
    writers.retain(|w| match w.upgrade() {
        Some(tx) => {
            // A full queue wakes the writer anyway.
            let _ = tx.try_send(LogMsg::Wake);
            true
        }
        None => false,
    });
}

/// The access log's destination, reopened on a new generation.
struct LogFile {
    path: Option<PathBuf>,
    out: BufWriter<Box<dyn Write + Send>>,
    generation: u64,
}

impl LogFile {
    fn open(target: &AccessLogTarget) -> std::io::Result<Option<LogFile>> {
        let generation = REOPEN.load(Ordering::SeqCst);
        let (path, out): (_, Box<dyn Write + Send>) = match target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => (None, Box::new(std::io::stdout())),
            AccessLogTarget::File(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                (Some(p.clone()), Box::new(append(p)?))
            }
        };
        Ok(Some(LogFile { path, out: BufWriter::new(out), generation }))
    }

    /// Reopens the file if a reopen was asked since it was opened. A file
    /// that cannot be opened keeps the old one (and says so).
    fn follow_reopen(&mut self) {
        let generation = REOPEN.load(Ordering::SeqCst);
        let Some(path) = self.path.as_ref().filter(|_| generation != self.generation) else { return };
        self.generation = generation;
        let _ = self.out.flush();
        match append(path) {
            Ok(f) => self.out = BufWriter::new(Box::new(f)),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot reopen the access log; writing to the old file")
            }
        }
    }
}

fn append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

#[derive(Debug, Clone)]
pub(crate) struct AccessLog {
    tx: Option<mpsc::Sender<LogMsg>>,
    dropped: Counter,
}

impl AccessLog {
    pub(crate) fn start(node: &str, target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let dropped = counter!("outpost_access_log_dropped_total", "node" => node.to_string());
        let Some(mut file) = LogFile::open(target)? else { return Ok(AccessLog { tx: None, dropped }) };
        let (tx, mut rx) = mpsc::channel::<LogMsg>(LOG_QUEUE);
        if file.path.is_some() {
            WRITERS.lock().unwrap_or_else(|p| p.into_inner()).push(tx.downgrade());
        }
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            while let Some(msg) = rx.blocking_recv() {
                file.follow_reopen();
                if let LogMsg::Line(rec) = msg
                    && let Ok(mut line) = serde_json::to_vec(&rec)
                {
                    line.push(b'\n');
                    let _ = file.out.write_all(&line);
                }
                if rx.is_empty() {
                    let _ = file.out.flush();
                }
            }
            let _ = file.out.flush();
        })?;
        Ok(AccessLog { tx: Some(tx), dropped })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub(crate) fn write(&self, rec: AccessRecord) {
        if let Some(tx) = &self.tx
            && tx.try_send(LogMsg::Line(rec)).is_err()
        {
            self.dropped.increment(1);
        }
    }
}
