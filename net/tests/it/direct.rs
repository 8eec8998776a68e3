//! HTTP/1 requests answered without hyper: the same bytes as hyper's, and
//! every request that is not one to answer so handed to hyper whole.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use outpost_config::Limits;
use outpost_load::raw::read_after_stall;

use super::{Echo, HyperOnly, answer_to, blocking, get, limits, response, short_header_timeout, start, start_with};

/// Everything `request` gets back before the server closes: the request is
/// followed by one that closes the connection.
fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "{request}GET /end HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    // The time of day is the one thing that may differ.
    let text = String::from_utf8(out).unwrap();
    text.split("\r\n").map(|l| if l.starts_with("date: ") { "date: -" } else { l }).collect::<Vec<_>>().join("\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_answered_at_once_is_byte_for_byte_what_hyper_writes() {
    let direct = start(Limits::default()).await;
    let echo = Arc::new(Echo::default());
    let hyper = start_with(Arc::new(HyperOnly(Arc::clone(&echo))), echo, Limits::default()).await;
    let (a, b) = (direct.addr, hyper.addr);
    let shapes = [
        "plain",
        "length",
        "stream",
        "boxed",
        "no-content",
        "not-modified",
        "repeated",
        "close",
        "dated",
        "unknown",
        "long",
        "short",
    ];
    let mut asked = 0;
    for method in ["GET", "HEAD"] {
        // Each shape with its fields in the map, then written by the
        // handler itself.
        for shape in shapes.iter().flat_map(|s| [s.to_string(), format!("fields/{s}")]) {
            let request = format!("{method} /now/{shape} HTTP/1.1\r\nHost: a\r\n\r\n");
            let (ours, theirs) = blocking(move || (exchange(a, &request), exchange(b, &request))).await;
            asked += 1;
            // A body that ends short of its length: hyper sends nothing of
            // it (it writes the head with the body), and ours its bytes;
            // both close the connection, so the client finds it cut short.
            if !(shape.ends_with("short") && method == "GET") {
                assert_eq!(ours, theirs, "{method} /now/{shape}");
            }
            assert!(ours.contains(&format!("x-shape: {shape}")), "{ours}");
            if shape.ends_with("long") && method == "GET" {
                assert!(ours.contains("\r\n\r\ntwelve bHTTP/1.1"), "8 bytes, then the next response: {ours}");
            }
            if shape.ends_with("close") || (method == "GET" && shape.ends_with("short")) {
                assert!(!ours.contains("GET /end"), "the connection closed after the response: {ours}");
            } else {
                assert!(ours.ends_with("GET /end"), "the next request was answered after it: {ours}");
            }
        }
    }
    assert_eq!(direct.echo.now.load(Ordering::SeqCst), asked, "each was answered at once");
    assert_eq!(hyper.echo.now.load(Ordering::SeqCst), 0);
    // Keep-alive `Connection` is no reason to go to hyper.
    let kept =
        blocking(move || exchange(a, "GET /now/plain HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n")).await;
    assert!(kept.starts_with("HTTP/1.1 200 OK\r\n") && kept.ends_with("GET /end"), "{kept}");
    assert_eq!(direct.echo.now.load(Ordering::SeqCst), asked + 1);
}

/// Requests that ask something of the connection, or carry a body, or
/// that hyper would refuse, each followed in the same write by a request
/// that could be answered at once: hyper answers both, so no byte of a
/// body is ever read as a head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_a_plain_get_goes_to_hyper_with_everything_behind_it() {
    let server = start(Limits::default()).await;
    let addr = server.addr;
    let cases: [(&str, &[&str]); 8] = [
        // The body's bytes are a head that could be answered at once.
        (
            "GET /now/plain HTTP/1.1\r\nHost: a\r\nContent-Length: 36\r\n\r\nGET /now/plain HTTP/1.1\r\nHost: a\r\n\r\n",
            &["200", "200"],
        ),
        ("GET /now/plain HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &["200", "200"]),
        ("POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi", &["200", "200"]),
        ("GET /now/plain HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", &["200", "200"]),
        ("GET /now/plain HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n", &["200", "200"]),
        ("GET /now/plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", &["200"]),
        // A folded line: hyper refuses it, and the connection.
        ("GET /now/plain HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", &["400"]),
        ("GET /now/pl ain HTTP/1.1\r\nHost: a\r\n\r\n", &["400"]),
    ];
    for (first, statuses) in cases {
        let request = format!("{first}GET /now/plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let answer = blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        })
        .await;
        let got: Vec<&str> = answer.match_indices("HTTP/1.").map(|(i, _)| &answer[i + 9..i + 12]).collect();
        assert_eq!(got, statuses, "{first:?}: {answer}");
    }
    assert_eq!(server.echo.now.load(Ordering::SeqCst), 0, "nothing behind such a request is answered at once");
    assert_eq!(get(addr, "/after").lines().last().unwrap(), "GET /after", "the server keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_answered_at_once_and_by_hyper_take_turns_on_one_connection() {
    let server = start(short_header_timeout()).await;
    let addr = server.addr;
    let echo = Arc::clone(&server.echo);
    blocking(move || {
        let (now, calls) = (|| echo.now.load(Ordering::SeqCst), || echo.calls.load(Ordering::SeqCst));
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // At once, then hyper's, then (hyper holding the connection) the
        // rest of the write.
        s.write_all(
            b"GET /now/plain HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
              GET /now/length HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .unwrap();
        assert_eq!(response(&mut s).1, "twelve bytes");
        assert_eq!(response(&mut s).1, "POST /p abc");
        assert_eq!(response(&mut s).1, "twelve bytes");
        assert_eq!((now(), calls()), (1, 2));
        // A head split across a pause is answered (by hyper, unless the
        // server read both parts at once).
        s.write_all(b"GET /now/plain HTTP/1.1\r\nHo").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"st: a\r\n\r\n").unwrap();
        assert_eq!(response(&mut s).1, "twelve bytes");
        assert_eq!(now() + calls(), 4);
        // Once hyper lets the connection go, the next is answered at once.
        let waiting = std::time::Instant::now();
        loop {
            let before = now();
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(b"GET /now/plain HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            assert_eq!(response(&mut s).1, "twelve bytes");
            if now() > before {
                break;
            }
            assert!(waiting.elapsed() < Duration::from_secs(10), "hyper never let the connection go");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_an_answer_given_at_once_is_cut_off() {
    let server = start(limits(|l| l.send_timeout = Duration::from_millis(500))).await;
    let addr = server.addr;
    let request = b"GET /now/big HTTP/1.1\r\nHost: a\r\n\r\n";
    let received = blocking(move || read_after_stall(addr, request, Duration::from_millis(2500)).unwrap()).await;
    assert!(received < 16 << 20, "the stalled client still got {received} bytes of 32 MiB");
    assert_eq!(server.echo.now.load(Ordering::SeqCst), 1);
    assert_eq!(get(addr, "/after").lines().last().unwrap(), "GET /after", "the server keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_answered_at_once_idles_parks_and_times_out_as_any_other() {
    let server = start(limits(|l| {
        l.header_read_timeout = Duration::from_millis(400);
        l.idle_timeout = Duration::from_millis(1500);
    }))
    .await;
    let addr = server.addr;
    let (first, closed) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /now/plain HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let first = response(&mut s).1;
        // Past the header timeout, inside the idle one: still open.
        std::thread::sleep(Duration::from_millis(800));
        s.write_all(b"GET /now/length HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(response(&mut s).1, "twelve bytes");
        let idle = std::time::Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        (first, idle.elapsed())
    })
    .await;
    assert_eq!(first, "twelve bytes");
    // Past the 400 ms header timeout, with room for a stall between the
    // answer and the client starting its clock.
    assert!(closed >= Duration::from_millis(900) && closed < Duration::from_secs(3), "closed after {closed:?}");
    assert_eq!(server.echo.now.load(Ordering::SeqCst), 2);
}

/// A head within hyper's bounds but past the server's limits on fields or
/// size is not answered at once: hyper refuses it, as it would any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_past_the_servers_limits_is_refused_as_hyper_refuses_it() {
    let server = start(limits(|l| {
        l.max_headers = 4;
        l.max_header_bytes = 8192;
    }))
    .await;
    let addr = server.addr;
    let many = "GET /now/plain HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n".to_string();
    let long = format!("GET /now/plain HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "y".repeat(10_000));
    for request in [many, long] {
        let (answer, _) = blocking(move || answer_to(addr, request.as_bytes())).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{}", &answer[..answer.len().min(200)]);
    }
    assert_eq!(server.echo.now.load(Ordering::SeqCst), 0);
    // Four fields fit.
    let answer = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /now/plain HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n").unwrap();
        response(&mut s)
    })
    .await;
    assert_eq!(answer, ("HTTP/1.1 200 OK".to_string(), "twelve bytes".to_string()));
    assert_eq!(server.echo.now.load(Ordering::SeqCst), 1);
}

/// After an answer given at once, a client that starts the next head and
/// stalls is cut off at the header timeout, not kept for the idle one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_begun_and_stalled_after_an_answer_given_at_once_gets_the_header_timeout() {
    let server = start(short_header_timeout()).await;
    let addr = server.addr;
    let (answer, closed) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /now/plain HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let answer = response(&mut s);
        // A byte at a time, then nothing.
        for b in b"GET /now/pl" {
            s.write_all(&[*b]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let stalled = std::time::Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        (answer, stalled.elapsed())
    })
    .await;
    assert_eq!(answer.1, "twelve bytes");
    assert!(closed < Duration::from_secs(2), "a stalled head held the connection {closed:?}");
    assert_eq!(server.echo.now.load(Ordering::SeqCst), 1);
}

/// The server's shutdown and a connection's eviction reach a connection
/// answered at once through one token: a response being written still
/// finishes, and a connection waiting for its next request (not parked
/// yet) closes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_an_answer_given_at_once_finishes_and_a_waiting_connection_closes() {
    // Ticks of a second: the waiting connection does not park meanwhile.
    let server = start(limits(|l| l.idle_timeout = Duration::from_secs(30))).await;
    let addr = server.addr;
    let (mut waiting, mut writing) = blocking(move || {
        let mut waiting = TcpStream::connect(addr).unwrap();
        waiting.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        waiting.write_all(b"GET /now/plain HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(response(&mut waiting).1, "twelve bytes");
        // 32 MiB answered at once, not read: its write waits for the client.
        let mut writing = TcpStream::connect(addr).unwrap();
        writing.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        writing.write_all(b"GET /now/big HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        (waiting, writing)
    })
    .await;
    let started = std::time::Instant::now();
    server.stop.cancel();
    let (closed, received) = blocking(move || {
        let closed = matches!(waiting.read(&mut [0u8; 8]), Ok(0));
        let took = started.elapsed();
        let mut all = Vec::new();
        let _ = writing.read_to_end(&mut all);
        assert!(closed && took < Duration::from_millis(900), "the waiting connection closed after {took:?}");
        (closed, all.len())
    })
    .await;
    assert!(closed);
    assert!(received > 32 << 20, "the answer in flight finished: {received} bytes");
    assert_eq!(server.echo.now.load(Ordering::SeqCst), 2);
}
