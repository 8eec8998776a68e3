//! The benchmarks' load client against servers that answer as told: every
//! body discarded to its last byte and no further (the next head reads),
//! interim heads passed over, closing responses followed by a new
//! connection, statuses, broken responses and silence counted, latency
//! measured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outpost_load::sink::load;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How a test server answers each request.
#[derive(Clone, Copy)]
struct Answer {
    status: u16,
    /// The body's length, as `Content-Length` says.
    length: usize,
    /// Body bytes actually sent before the connection is closed (`None`:
    /// all of them, and the connection stays open).
    cut_at: Option<usize>,
    delay: Duration,
    /// A 103 before each response.
    interim: bool,
    /// Each response says `Connection: TE, Close` (a list, in capitals), and
    /// the connection closes.
    close: bool,
    /// Requests are read and never answered.
    silent: bool,
}

const INTERIM: &[u8] = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n";

/// A server answering every request on every connection with `answer`:
/// the head and the body's first kilobyte in one write, the rest of the
/// body in writes of 64 KiB, each byte a function of its place. Returns
/// its address and the count of requests it read and of connections.
async fn server(answer: Answer) -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let (seen, opened) = (Arc::clone(&requests), Arc::clone(&connections));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            opened.fetch_add(1, Ordering::Relaxed);
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: up to its blank line.
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    assert!(buf.starts_with(b"GET /bench/x?size=9 HTTP/1.1\r\nHost: sink.test\r\n"), "{buf:?}");
                    buf.drain(..end);
                    seen.fetch_add(1, Ordering::Relaxed);
                    if answer.silent {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(answer.delay).await;
                    let body: Vec<u8> = (0..answer.length).map(|i| (i % 251) as u8).collect();
                    let sent = answer.cut_at.unwrap_or(answer.length);
                    let mut first = if answer.interim { INTERIM.to_vec() } else { Vec::new() };
                    let close = if answer.close { "Connection: TE, Close\r\n" } else { "" };
                    let (status, length) = (answer.status, answer.length);
                    first.extend_from_slice(
                        format!("HTTP/1.1 {status} X\r\nContent-Length: {length}\r\n{close}\r\n").as_bytes(),
                    );
                    first.extend_from_slice(&body[..sent.min(1024)]);
                    if s.write_all(&first).await.is_err() {
                        return;
                    }
                    for piece in body[sent.min(1024)..sent].chunks(64 * 1024) {
                        if s.write_all(piece).await.is_err() {
                            return;
                        }
                    }
                    if answer.cut_at.is_some() || answer.close {
                        return;
                    }
                }
            });
        }
    });
    (addr, requests, connections)
}

const OK: Answer = Answer {
    status: 200,
    length: 300 * 1024 + 7,
    cut_at: None,
    delay: Duration::ZERO,
    interim: false,
    close: false,
    silent: false,
};

#[tokio::test]
async fn every_body_is_discarded_to_its_last_byte() {
    let (addr, requests, _) = server(OK).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", 4, Duration::from_millis(800)).await;
    assert_eq!((t.read_errors, t.connect_errors, t.timeouts, t.non_2xx_3xx), (0, 0, 0, 0), "{t:?}");
    assert!(t.done >= 40, "four connections in 0.8 s took {} responses", t.done);
    // Each connection may have sent one request more, past the end.
    let asked = requests.load(Ordering::Relaxed);
    assert!((t.done..=t.done + 4).contains(&asked), "{asked} requests for {} responses", t.done);
    let head = format!("HTTP/1.1 200 X\r\nContent-Length: {}\r\n\r\n", OK.length).len() as u64;
    assert_eq!(t.bytes, t.done * (head + OK.length as u64));
    assert_eq!(t.latency.len(), t.done);
}

#[tokio::test]
async fn statuses_that_are_not_2xx_or_3xx_are_counted() {
    let (addr, _, _) = server(Answer { status: 404, length: 10, ..OK }).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", 2, Duration::from_millis(300)).await;
    assert!(t.done > 0 && t.non_2xx_3xx == t.done, "{t:?}");
    assert_eq!(t.read_errors, 0);
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_not_a_response() {
    let (addr, requests, _) = server(Answer { cut_at: Some(100_000), ..OK }).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", 2, Duration::from_millis(300)).await;
    assert_eq!(t.done, 0, "{t:?}");
    assert!(t.read_errors > 0, "{t:?}");
    assert!(requests.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn latency_is_from_the_request_to_the_last_byte() {
    let (addr, _, _) = server(Answer { delay: Duration::from_millis(30), ..OK }).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", 2, Duration::from_millis(400)).await;
    assert!(t.done >= 4, "{t:?}");
    let p50 = t.latency.value_at_percentile(50.0);
    assert!((30_000..200_000).contains(&p50), "p50 {p50} µs for answers held 30 ms");
}

#[tokio::test]
async fn a_server_that_is_not_there_is_counted_and_the_load_still_ends() {
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let t = load(addr, "sink.test", "/bench/x?size=9", 2, Duration::from_millis(200)).await;
    assert_eq!(t.done, 0);
    assert!(t.connect_errors > 0, "{t:?}");
}

#[tokio::test]
async fn interim_heads_are_passed_over_and_a_closing_response_ends_its_connection() {
    let (addr, _, connections) = server(Answer { interim: true, close: true, length: 5000, ..OK }).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", 2, Duration::from_millis(400)).await;
    assert_eq!((t.read_errors, t.timeouts), (0, 0), "{t:?}");
    assert!(t.done >= 10, "{t:?}");
    let head = "HTTP/1.1 200 X\r\nContent-Length: 5000\r\nConnection: TE, Close\r\n\r\n".len() as u64;
    assert_eq!(t.bytes, t.done * (INTERIM.len() as u64 + head + 5000));
    // A connection a response: the two open at the end may have asked for
    // one more each.
    let opened = connections.load(Ordering::Relaxed);
    assert!((t.done..=t.done + 2).contains(&opened), "{opened} connections for {} responses", t.done);
}

#[tokio::test]
async fn a_response_that_never_comes_is_a_timeout() {
    let (addr, requests, _) = server(Answer { silent: true, ..OK }).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", 2, Duration::from_millis(300)).await;
    assert_eq!((t.done, t.read_errors, t.timeouts), (0, 0, 2), "{t:?}");
    assert_eq!(requests.load(Ordering::Relaxed), 2);
}
