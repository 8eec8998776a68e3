//! A keep-alive GET load whose response bodies the kernel discards
//! (`recv` with `MSG_TRUNC`), so the client's CPU goes on requests, not on
//! copying bodies: `load-tests/examples/sink_load.rs` runs it for the
//! benchmarks. `wrk` reads every body byte into its buffer 8 KiB at a time:
//! at 100 KiB and more it fills its core before the server under test
//! does, and then sets req/s and latency itself. Each connection sends a
//! request, reads the head (parsed; the status and `Content-Length` taken),
//! discards the body, and sends the next. Interim (1xx) heads are passed
//! over, a response that says `Connection: close` is followed by a new
//! connection, and one that takes longer than wrk's timeout (2 s) counts as
//! a timeout, whenever it ends, and the connection is opened again (wrk
//! keeps it). A response that ends after the load's end is not counted. Bodies must
//! have a `Content-Length` (the benchmarks' do): others are read errors.
//! Cleartext HTTP/1.1 to one address; bounded by time.

use std::time::{Duration, Instant};

use rustix::net::RecvFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Longest response head read.
const MAX_HEAD: usize = 16 * 1024;
/// Most body bytes discarded by one `recv`.
const DISCARD: usize = 4 << 20;
/// How long a response may take before it counts as a timeout (wrk's).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection may wait for its response past the end: more
/// than [`REQUEST_TIMEOUT`], so every request ends in a response or one.
const GRACE: Duration = Duration::from_secs(5);

/// What a load did.
pub struct Tally {
    /// Responses taken whole before the end.
    pub done: u64,
    /// Their bytes, heads and bodies.
    pub bytes: u64,
    /// Those whose status was not 2xx or 3xx.
    pub non_2xx_3xx: u64,
    /// Connections that could not be opened.
    pub connect_errors: u64,
    /// Connections that failed or ended mid-response, or sent what does
    /// not read as a response to the request (each reopened).
    pub read_errors: u64,
    /// Responses that took longer than [`REQUEST_TIMEOUT`] (each
    /// connection reopened).
    pub timeouts: u64,
    /// Each response's time from its request to its last byte, in µs.
    pub latency: hdrhistogram::Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            done: 0,
            bytes: 0,
            non_2xx_3xx: 0,
            connect_errors: 0,
            read_errors: 0,
            timeouts: 0,
            latency: histogram(),
        }
    }
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("done", &self.done)
            .field("bytes", &self.bytes)
            .field("non_2xx_3xx", &self.non_2xx_3xx)
            .field("connect_errors", &self.connect_errors)
            .field("read_errors", &self.read_errors)
            .field("timeouts", &self.timeouts)
            .field("p50_us", &self.latency.value_at_quantile(0.5))
            .finish()
    }
}

impl Tally {
    fn add(&mut self, t: &Tally) {
        self.done += t.done;
        self.bytes += t.bytes;
        self.non_2xx_3xx += t.non_2xx_3xx;
        self.connect_errors += t.connect_errors;
        self.read_errors += t.read_errors;
        self.timeouts += t.timeouts;
        self.latency.add(&t.latency).expect("histograms of one shape");
    }
}

/// `GET path` with `Host: host` on `conns` connections to `addr` for
/// `length`, each connection one request at a time; runs on the current
/// runtime.
pub async fn load(addr: std::net::SocketAddr, host: &str, path: &str, conns: usize, length: Duration) -> Tally {
    let request: std::sync::Arc<[u8]> = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes().into();
    let end = Instant::now() + length;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let request = std::sync::Arc::clone(&request);
        tasks.spawn(async move {
            let mut t = Tally::default();
            // Ended by the deadline, whatever a connection is waiting for.
            let deadline = tokio::time::Instant::from_std(end + GRACE);
            let _ = tokio::time::timeout_at(deadline, run(addr, &request, end, &mut t)).await;
            t
        });
    }
    let mut total = Tally::default();
    while let Some(t) = tasks.join_next().await {
        total.add(&t.expect("a connection's task"));
    }
    total
}

/// Microseconds, 1 µs to 100 s, to three figures.
fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// One connection's requests until `end`, reconnecting after an error.
async fn run(addr: std::net::SocketAddr, request: &[u8], end: Instant, t: &mut Tally) {
    let mut head = vec![0u8; MAX_HEAD];
    // Never written: the kernel discards what `recv` is asked to put here.
    let mut scratch = vec![0u8; DISCARD];
    while Instant::now() < end {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            t.connect_errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        while Instant::now() < end {
            let sent = Instant::now();
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut s, request, &mut head, &mut scratch)).await {
                Ok(Ok(r)) => {
                    // Counted only when it ended in time, as wrk counts.
                    if Instant::now() > end {
                        return;
                    }
                    t.done += 1;
                    t.bytes += r.bytes;
                    if !(200..400).contains(&r.status) {
                        t.non_2xx_3xx += 1;
                    }
                    let micros = sent.elapsed().as_micros() as u64;
                    t.latency.saturating_record(micros.max(1));
                    if r.close {
                        break;
                    }
                }
                Ok(Err(_)) => {
                    t.read_errors += 1;
                    break;
                }
                Err(_) => {
                    t.timeouts += 1;
                    break;
                }
            }
        }
    }
}

/// A response taken.
struct Response {
    status: u16,
    /// Its bytes, interim heads included.
    bytes: u64,
    /// It said `Connection: close`.
    close: bool,
}

/// Sends `request` and takes its response: the head into `head`, the body
/// discarded.
async fn exchange(s: &mut TcpStream, request: &[u8], head: &mut [u8], scratch: &mut [u8]) -> std::io::Result<Response> {
    s.write_all(request).await?;
    let (mut filled, mut interim) = (0, 0u64);
    let (status, head_len, length, close) = loop {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut fields);
        if filled > 0
            && let httparse::Status::Complete(len) = resp.parse(&head[..filled]).map_err(std::io::Error::other)?
        {
            let status = resp.code.unwrap_or(0);
            if (100..200).contains(&status) && status != 101 {
                // An interim head: the response follows it.
                head.copy_within(len..filled, 0);
                filled -= len;
                interim += len as u64;
                continue;
            }
            let field = |name: &str| resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
            let length = field("content-length")
                .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok())
                .ok_or_else(|| std::io::Error::other("a response without Content-Length"))?;
            let close = field("connection")
                .is_some_and(|v| v.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")));
            break (status, len, length, close);
        }
        if filled == head.len() {
            return Err(std::io::Error::other("response head too long"));
        }
        let n = s.read(&mut head[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    };
    let already = (filled - head_len) as u64;
    if already > length {
        return Err(std::io::Error::other("more bytes than the response's length (pipelining is not sent)"));
    }
    let mut left = length - already;
    while left > 0 {
        let want = (left as usize).min(scratch.len());
        let n = s
            .async_io(Interest::READABLE, || {
                rustix::net::recv(&*s, &mut scratch[..want], RecvFlags::TRUNC | RecvFlags::DONTWAIT)
                    .map(|(_, n)| n)
                    .map_err(std::io::Error::from)
            })
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        left -= n as u64;
    }
    Ok(Response { status, bytes: interim + head_len as u64 + length, close })
}
