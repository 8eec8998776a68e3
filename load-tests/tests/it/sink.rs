//! The benchmarks' load client against servers that answer as told: every
//! body discarded to its last byte and no further (the next head reads),
//! interim heads passed over, closing responses followed by a new
//! connection, statuses, broken responses and silence counted, latency
//! measured; over TLS 1.3 too, where the client keeps the record layer
//! itself and discards the body's records unread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outpost_load::sink::{Ask, Tally, Tls, load, load_asking};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
    /// The head goes in two writes, split in its middle, the second with
    /// 20 KiB of the body (over TLS: a record with half the head, then a
    /// full one of 16 KiB with the rest of it and the body's start).
    split_head: bool,
    /// The body goes chunked ([`chunked`]) rather than with a length.
    chunked: bool,
}

/// `body` chunked: a chunk of 1,000 bytes with an extension, one of
/// 70,000, then the rest, then the last chunk and a trailer.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (first, rest) = body.split_at(1000.min(body.len()));
    let (second, third) = rest.split_at(70_000.min(rest.len()));
    for (i, chunk) in [first, second, third].into_iter().enumerate() {
        if !chunk.is_empty() {
            let ext = if i == 0 { ";name=\"v\"" } else { "" };
            out.extend_from_slice(format!("{:X}{ext}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"0\r\nx-sum: 1\r\n\r\n");
    out
}

/// The head of every response of `answer`.
fn response_head(answer: Answer) -> String {
    let framing = if answer.chunked {
        "Transfer-Encoding: gzip, chunked".to_string()
    } else {
        format!("Content-Length: {}", answer.length)
    };
    let close = if answer.close { "Connection: TE, Close\r\n" } else { "" };
    format!("HTTP/1.1 {} X\r\n{framing}\r\n{close}\r\n", answer.status)
}

/// The body of every response of `answer` as sent: each byte a function
/// of its place, chunked when it says.
fn sent_body(answer: Answer) -> Vec<u8> {
    let body: Vec<u8> = (0..answer.length).map(|i| (i % 251) as u8).collect();
    if answer.chunked { chunked(&body) } else { body }
}

const INTERIM: &[u8] = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n";

/// A server answering every request on every connection with `answer`:
/// the head and the body's first kilobyte in one write, the rest of the
/// body in writes of 64 KiB, each byte a function of its place. Returns
/// its address and the count of requests it read and of connections.
async fn server(answer: Answer) -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    serve(answer, None).await
}

/// The same over TLS, with a self-signed certificate for `sink.test`
/// offering only `suite` (TLS 1.3); rustls's server sends its session
/// tickets after the handshake. Returns, besides, the client for it.
async fn tls_server(
    answer: Answer,
    suite: rustls::SupportedCipherSuite,
) -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>, Tls, tempfile::TempDir) {
    let c = rcgen::generate_simple_self_signed(vec!["sink.test".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, c.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into());
    let provider =
        rustls::crypto::CryptoProvider { cipher_suites: vec![suite], ..rustls::crypto::ring::default_provider() };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![c.cert.der().clone()], key)
        .unwrap();
    let (addr, requests, connections) = serve(answer, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
    (addr, requests, connections, Tls::new("sink.test", &ca).unwrap(), dir)
}

async fn serve(answer: Answer, tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let (seen, opened) = (Arc::clone(&requests), Arc::clone(&connections));
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            opened.fetch_add(1, Ordering::Relaxed);
            let (seen, tls) = (Arc::clone(&seen), tls.clone());
            tokio::spawn(async move {
                match tls {
                    None => answer_on(s, answer, &seen).await,
                    Some(tls) => {
                        if let Ok(s) = tls.accept(s).await {
                            answer_on(s, answer, &seen).await;
                        }
                    }
                }
            });
        }
    });
    (addr, requests, connections)
}

/// The next request's head `s` sends (up to its blank line), with `buf`
/// holding what was read past it; `None` at the connection's end.
async fn next_request<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    Some(String::from_utf8(buf.drain(..end).collect()).unwrap())
}

/// Answers every request `s` sends with `answer`, counting them in `seen`.
async fn answer_on<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, answer: Answer, seen: &AtomicU64) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = next_request(&mut s, &mut buf).await else { return };
        assert!(head.starts_with("GET /bench/x?size=9 HTTP/1.1\r\nHost: sink.test\r\n"), "{head:?}");
        seen.fetch_add(1, Ordering::Relaxed);
        if answer.silent {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(answer.delay).await;
        let body = sent_body(answer);
        let sent = answer.cut_at.unwrap_or(body.len());
        let mut first = if answer.interim { INTERIM.to_vec() } else { Vec::new() };
        let head_at = first.len();
        first.extend_from_slice(response_head(answer).as_bytes());
        let start = if answer.split_head { 20 * 1024 } else { 1024 };
        first.extend_from_slice(&body[..sent.min(start)]);
        if answer.split_head {
            // Amid the head, in its `Content-Length`.
            let half = head_at + 25;
            if s.write_all(&first[..half]).await.is_err() || s.flush().await.is_err() {
                return;
            }
            first.drain(..half);
        }
        if s.write_all(&first).await.is_err() || s.flush().await.is_err() {
            return;
        }
        for piece in body[sent.min(start)..sent].chunks(64 * 1024) {
            if s.write_all(piece).await.is_err() {
                return;
            }
        }
        if s.flush().await.is_err() {
            return;
        }
        if answer.cut_at.is_some() || answer.close {
            return;
        }
    }
}

const OK: Answer = Answer {
    status: 200,
    length: 300 * 1024 + 7,
    cut_at: None,
    delay: Duration::ZERO,
    interim: false,
    close: false,
    silent: false,
    split_head: false,
    chunked: false,
};

#[tokio::test]
async fn every_body_is_discarded_to_its_last_byte() {
    let (addr, requests, _) = server(OK).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", None, 4, Duration::from_millis(800)).await;
    assert_eq!((t.read_errors, t.connect_errors, t.timeouts, t.non_2xx_3xx), (0, 0, 0, 0), "{t:?}");
    assert!(t.done >= 40, "four connections in 0.8 s took {} responses", t.done);
    // Each connection may have sent one request more, past the end.
    let asked = requests.load(Ordering::Relaxed);
    assert!((t.done..=t.done + 4).contains(&asked), "{asked} requests for {} responses", t.done);
    assert_eq!(t.bytes, t.done * response_bytes(OK));
    assert_eq!(t.latency.len(), t.done);
}

#[tokio::test]
async fn statuses_that_are_not_2xx_or_3xx_are_counted() {
    let (addr, _, _) = server(Answer { status: 404, length: 10, ..OK }).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", None, 2, Duration::from_millis(300)).await;
    assert!(t.done > 0 && t.non_2xx_3xx == t.done, "{t:?}");
    assert_eq!(t.read_errors, 0);
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_not_a_response() {
    let (addr, requests, _) = server(Answer { cut_at: Some(100_000), ..OK }).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", None, 2, Duration::from_millis(300)).await;
    assert_eq!(t.done, 0, "{t:?}");
    assert!(t.read_errors > 0, "{t:?}");
    assert!(requests.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn latency_is_from_the_request_to_the_last_byte() {
    let (addr, _, _) = server(Answer { delay: Duration::from_millis(30), ..OK }).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", None, 2, Duration::from_millis(400)).await;
    assert!(t.done >= 4, "{t:?}");
    let p50 = t.latency.value_at_percentile(50.0);
    assert!((30_000..200_000).contains(&p50), "p50 {p50} µs for answers held 30 ms");
}

#[tokio::test]
async fn a_server_that_is_not_there_is_counted_and_the_load_still_ends() {
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let t = load(addr, "sink.test", "/bench/x?size=9", None, 2, Duration::from_millis(200)).await;
    assert_eq!(t.done, 0);
    assert!(t.connect_errors > 0, "{t:?}");
}

#[tokio::test]
async fn interim_heads_are_passed_over_and_a_closing_response_ends_its_connection() {
    let (addr, _, connections) = server(Answer { interim: true, close: true, length: 5000, ..OK }).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", None, 2, Duration::from_millis(400)).await;
    assert_eq!((t.read_errors, t.timeouts), (0, 0), "{t:?}");
    assert!(t.done >= 10, "{t:?}");
    assert_eq!(t.bytes, t.done * (INTERIM.len() as u64 + response_bytes(Answer { close: true, length: 5000, ..OK })));
    // A connection a response: the two open at the end may have asked for
    // one more each.
    let opened = connections.load(Ordering::Relaxed);
    assert!((t.done..=t.done + 2).contains(&opened), "{opened} connections for {} responses", t.done);
}

#[tokio::test]
async fn a_response_that_never_comes_is_a_timeout() {
    let (addr, requests, _) = server(Answer { silent: true, ..OK }).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", None, 2, Duration::from_millis(300)).await;
    assert_eq!((t.done, t.read_errors, t.timeouts), (0, 0, 2), "{t:?}");
    assert_eq!(requests.load(Ordering::Relaxed), 2);
}

/// What every response of `answer` adds to the byte count: its head and
/// body.
fn response_bytes(answer: Answer) -> u64 {
    (response_head(answer).len() + sent_body(answer).len()) as u64
}

fn assert_clean(t: &Tally) {
    assert_eq!((t.read_errors, t.connect_errors, t.timeouts, t.non_2xx_3xx), (0, 0, 0, 0), "{t:?}");
}

#[tokio::test]
async fn over_tls_every_body_is_discarded_to_its_last_record() {
    // 300 KiB and 7 bytes: the head split over two records, the second
    // full (16 KiB), more than the client's head buffer has room for after
    // the first, so body bytes are left decrypted and unread; then 18
    // records of body, the last one short. rustls's server sends its
    // session tickets before the first response.
    let answer = Answer { split_head: true, ..OK };
    let (addr, requests, connections, tls, _dir) =
        tls_server(answer, rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", Some(&tls), 4, Duration::from_millis(800)).await;
    assert_clean(&t);
    assert!(t.done >= 20, "four connections in 0.8 s took {} responses", t.done);
    assert_eq!(connections.load(Ordering::Relaxed), 4, "each connection kept: {t:?}");
    let asked = requests.load(Ordering::Relaxed);
    assert!((t.done..=t.done + 4).contains(&asked), "{asked} requests for {} responses", t.done);
    assert_eq!(t.bytes, t.done * response_bytes(answer));
}

#[tokio::test]
async fn over_tls_each_suite_is_spoken() {
    use rustls::crypto::ring::cipher_suite::{TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256};
    for suite in [TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256] {
        let answer = Answer { length: 40_000, interim: true, ..OK };
        let (addr, _, _, tls, _dir) = tls_server(answer, suite).await;
        let t = load(addr, "sink.test", "/bench/x?size=9", Some(&tls), 2, Duration::from_millis(300)).await;
        assert_clean(&t);
        assert!(t.done >= 4, "{suite:?}: {t:?}");
        assert_eq!(t.bytes, t.done * (INTERIM.len() as u64 + response_bytes(answer)), "{suite:?}");
    }
}

#[tokio::test]
async fn over_tls_a_body_cut_short_is_an_error_and_an_untrusted_server_is_not_loaded() {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let (addr, requests, _, tls, _dir) = tls_server(Answer { cut_at: Some(100_000), ..OK }, suite).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", Some(&tls), 2, Duration::from_millis(300)).await;
    assert_eq!(t.done, 0, "{t:?}");
    assert!(t.read_errors > 0, "{t:?}");
    assert!(requests.load(Ordering::Relaxed) > 0);

    // Another server's certificate: no handshake completes.
    let (other, requests, _, _, _other_dir) = tls_server(OK, suite).await;
    let t = load(other, "sink.test", "/bench/x?size=9", Some(&tls), 2, Duration::from_millis(200)).await;
    assert_eq!(t.done, 0, "{t:?}");
    assert!(t.connect_errors > 0, "{t:?}");
    assert_eq!(requests.load(Ordering::Relaxed), 0);
}

/// A server answering every request with `response`, noting each
/// request's head.
async fn fixed_server(response: &'static [u8]) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = Arc::clone(&heads);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let noted = Arc::clone(&noted);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = next_request(&mut s, &mut buf).await {
                    noted.lock().unwrap().push(head);
                    if s.write_all(response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn a_set_of_paths_is_asked_for_at_random_and_each_answer_read() {
    let (addr, heads) = fixed_server(b"HTTP/1.1 200 X\r\nContent-Length: 5\r\n\r\nhello").await;
    let ask = Ask { objects: 10, ..Ask::new("sink.test", "/set/{n}?size=5") };
    let t = load_asking(addr, &ask, None, 2, Duration::from_millis(300)).await.unwrap();
    assert_clean(&t);
    assert!(t.done >= 100, "{t:?}");
    let paths: Vec<String> = heads.lock().unwrap().iter().map(|h| h.split(' ').nth(1).unwrap().to_string()).collect();
    let mut counts = [0u64; 10];
    for p in &paths {
        let n: usize = p.strip_prefix("/set/").and_then(|r| r.strip_suffix("?size=5")).unwrap().parse().unwrap();
        counts[n] += 1;
    }
    let each = paths.len() as u64 / 10;
    assert!(counts.iter().all(|&c| c > each / 2 && c < each * 2), "{} requests spread as {counts:?}", paths.len());
}

#[tokio::test]
async fn a_set_asked_once_asks_for_each_path_once_and_then_ends() {
    let (addr, heads) = fixed_server(b"HTTP/1.1 200 X\r\nContent-Length: 5\r\n\r\nhello").await;
    let ask = Ask { objects: 50, once: true, ..Ask::new("sink.test", "/set/{n}") };
    let started = std::time::Instant::now();
    let t = load_asking(addr, &ask, None, 3, Duration::from_secs(20)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "the load ran on for {:?}", started.elapsed());
    assert_clean(&t);
    assert_eq!(t.done, 50, "{t:?}");
    let paths: Vec<String> = heads.lock().unwrap().iter().map(|h| h.split(' ').nth(1).unwrap().to_string()).collect();
    let mut sorted = paths.clone();
    sorted.sort_by_key(|p| p.strip_prefix("/set/").unwrap().parse::<u64>().unwrap());
    assert_eq!(sorted, (0..50).map(|n| format!("/set/{n}")).collect::<Vec<_>>());
    assert_ne!(paths, sorted, "asked in a shuffled order");
}

#[tokio::test]
async fn chunked_bodies_are_taken_to_their_trailers() {
    // In cleartext the chunks' data is discarded in the kernel, over TLS
    // decrypted: either way the next head must read, on the same
    // connection, and every byte of framing is counted.
    let answer = Answer { chunked: true, ..OK };
    let (addr, requests, connections) = server(answer).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", None, 2, Duration::from_millis(400)).await;
    assert_clean(&t);
    assert!(t.done >= 10, "{t:?}");
    assert_eq!(connections.load(Ordering::Relaxed), 2, "each connection kept: {t:?}");
    let asked = requests.load(Ordering::Relaxed);
    assert!((t.done..=t.done + 2).contains(&asked), "{asked} requests for {} responses", t.done);
    assert_eq!(t.bytes, t.done * response_bytes(answer));

    let answer = Answer { chunked: true, split_head: true, ..OK };
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let (addr, _, connections, tls, _dir) = tls_server(answer, suite).await;
    let t = load(addr, "sink.test", "/bench/x?size=9", Some(&tls), 2, Duration::from_millis(400)).await;
    assert_clean(&t);
    assert!(t.done >= 4, "{t:?}");
    assert_eq!(connections.load(Ordering::Relaxed), 2, "each connection kept: {t:?}");
    assert_eq!(t.bytes, t.done * response_bytes(answer));
}

#[tokio::test]
async fn chunks_that_lie_and_bodies_without_an_end_are_read_errors() {
    for (response, why) in [
        (&b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello!\r\n0\r\n\r\n"[..], "a chunk past its size"),
        (b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", "a size in no base"),
        (b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", "an empty size"),
        (b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nextra", "bytes past the last chunk"),
        (b"HTTP/1.1 200 X\r\nTransfer-Encoding: gzip\r\n\r\nhello", "a body to the connection's end"),
        (b"HTTP/1.1 200 X\r\n\r\nhello", "no framing at all"),
    ] {
        let (addr, heads) = fixed_server(response).await;
        let t = load(addr, "sink.test", "/x", None, 1, Duration::from_millis(100)).await;
        assert_eq!(t.done, 0, "{why}: {t:?}");
        assert!(t.read_errors > 0, "{why}: {t:?}");
        assert!(!heads.lock().unwrap().is_empty(), "{why}");
    }
}

#[tokio::test]
async fn fields_given_go_with_every_request_and_malformed_ones_are_refused() {
    let (addr, heads) = fixed_server(b"HTTP/1.1 200 X\r\nContent-Length: 2\r\n\r\nok").await;
    let ask = Ask {
        fields: vec!["Accept-Encoding: br, gzip".into(), "X-Empty:".into()],
        ..Ask::new("sink.test", "/page.js")
    };
    let t = load_asking(addr, &ask, None, 1, Duration::from_millis(100)).await.unwrap();
    assert_clean(&t);
    let heads = heads.lock().unwrap().clone();
    assert!(t.done > 0 && heads.len() as u64 >= t.done, "{t:?}");
    for head in heads {
        assert_eq!(head, "GET /page.js HTTP/1.1\r\nHost: sink.test\r\nAccept-Encoding: br, gzip\r\nX-Empty:\r\n\r\n");
    }
    for bad in ["no colon", ": no name", "Two Words: x", "X: a\r\nInjected: b", "X: a\n"] {
        let ask = Ask { fields: vec![bad.into()], ..Ask::new("sink.test", "/") };
        let e = load_asking(addr, &ask, None, 1, Duration::from_millis(50)).await.unwrap_err();
        assert!(e.contains("not a `Name: value` field"), "{bad:?}: {e}");
    }
}
