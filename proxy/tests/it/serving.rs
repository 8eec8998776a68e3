//! The client side: hosts, malformed requests, limits, HTTP/2, admin.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty};

use crate::harness::*;

fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

async fn raw_async(addr: std::net::SocketAddr, request: &'static [u8]) -> String {
    tokio::task::spawn_blocking(move || raw(addr, request)).await.unwrap()
}

#[tokio::test]
async fn unknown_hosts_get_421_and_are_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    for host in ["evil.test", "t.test.evil", &origin.addr.to_string()] {
        let r = send(Method::GET, &edge.url("/x"), &[("host", host)]).await;
        assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
    }
    // Absolute-form request naming another host: still refused.
    let resp =
        raw_async(edge.addr, b"GET http://evil.test/x HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 421"), "{resp}");
    assert_eq!(origin.stats().await["total"], 0);
    let ok = send(Method::GET, &edge.url("/x"), &[("host", "T.TEST:80")]).await;
    assert_eq!(ok.status, StatusCode::OK, "hosts match case-insensitively, port ignored");
}

#[tokio::test]
async fn hosts_are_checked_keyed_and_sent_normalised() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let site = format!(
        "[site]\nid = \"w\"\nhosts = [\"*.r.test\"]\n\n[[origin]]\nurl = \"http://{}\"\n\n{DEFAULT_RULES}",
        origin.addr
    );
    let edge = Edge::start(dir.path(), &site).await;
    let seen_host = || async {
        let seen = send(Method::GET, &format!("http://{}/__origin/request?path=/profile", origin.addr), &[]).await;
        let seen: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
        seen["host"].as_str().unwrap_or_default().to_string()
    };
    // One host's answer is never another's: each is its own entry, and the
    // origin sees each host.
    let alice = send(Method::GET, &edge.url("/profile?cc=max-age%3D60"), &[("host", "alice.r.test")]).await;
    assert!(alice.cache_status().contains("fwd=uri-miss"), "{}", alice.cache_status());
    let bob = send(Method::GET, &edge.url("/profile?cc=max-age%3D60"), &[("host", "bob.r.test")]).await;
    assert!(bob.cache_status().contains("fwd=uri-miss"), "bob got alice's entry: {}", bob.cache_status());
    assert_eq!(seen_host().await, "bob.r.test");
    assert_eq!(origin.count("/profile").await, 2);
    // The same host in another spelling is the same entry, and goes up
    // normalised.
    let again = send(Method::GET, &edge.url("/profile?cc=max-age%3D60"), &[("host", "ALICE.R.TEST.")]).await;
    assert!(again.is_hit(), "{}", again.cache_status());
    let r = send(Method::GET, &edge.url("/profile?cc=max-age%3D1&v=2"), &[("host", "Carol.R.test.")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(seen_host().await, "carol.r.test");
    // Host values that are not authorities are refused, not forwarded.
    for bad in ["evil.example/.r.test", "x@a.r.test", "a.r.test:99999", "a..r.test", "a.r.test:"] {
        let r = send(Method::GET, &edge.url("/bad"), &[("host", bad)]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400, not a 421.
    let resp = raw_async(edge.addr, b"GET /bad HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let resp = raw_async(edge.addr, b"GET /bad HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(origin.count("/bad").await, 0);
}

#[tokio::test]
async fn fields_that_override_the_url_are_withheld_from_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    let overrides = [
        ("x-forwarded-host", "evil.test"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-http-method-override", "DELETE"),
        // Read as `Range` by some servers: a part stored as the object.
        ("request-range", "bytes=0-0"),
        ("x-forwarded-proto", "https"),
    ];
    let r = edge.get_with("/ovr?cc=max-age%3D60", &overrides).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = send(Method::GET, &format!("http://{}/__origin/request?path=/ovr", origin.addr), &[]).await;
    let seen: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    for (name, _) in &overrides[..5] {
        assert!(seen.get(*name).is_none(), "{name} reached the origin: {seen}");
    }
    assert_eq!(seen["x-forwarded-proto"], "http", "the edge says how the client came");
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::logging(dir.path(), origin.addr).await;
    let cases: [&'static [u8]; 6] = [
        b"POST /x HTTP/1.1\r\nHost: t.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: t.test\r\nHost: other.test\r\n\r\n",
        b"GET /%zz HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost t.test\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for (i, c) in cases.iter().enumerate() {
        let resp = raw_async(edge.addr, c).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "case {i}: {resp:?}");
    }
    // The same conflict pipelined behind an ordinary request is refused
    // too, not re-framed and forwarded.
    let resp = raw_async(
        edge.addr,
        b"GET /first?cc=max-age%3D60 HTTP/1.1\r\nHost: t.test\r\n\r\n\
          POST /x HTTP/1.1\r\nHost: t.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("HTTP/1.1 400 Bad Request"), "{resp}");
    let r = edge.get("/after?cc=max-age%3D60").await;
    assert_eq!(r.status, StatusCode::OK, "the node keeps serving");
    assert_eq!(origin.stats().await["methods"].get("POST"), None, "nothing malformed reached the origin");

    let log = dir.path().join("access.log");
    let refused = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["status"] == 400)
            .map(|r| format!("{} {}", r["method"].as_str().unwrap(), r["path"].as_str().unwrap()))
            .collect::<Vec<_>>()
    };
    // Refused requests are logged like any other, with what could be read
    // of them: the three framing conflicts (the bad chunk is found while
    // forwarding), the two Hosts, the undecodable path, and the two
    // requests too malformed to parse.
    let expected = ["POST /x", "GET /x", "GET /%zz", "- -", "- -", "POST /x", "POST /x"];
    eventually("the refusals in the access log", || async { refused().len() == expected.len() }).await;
    let mut seen = refused();
    seen.sort();
    let mut expected = expected.map(String::from).to_vec();
    expected.sort();
    assert_eq!(seen, expected);
}

/// The access log keeps at most 2 KiB of a path and 255 bytes of a host,
/// and says when it cut one: a client can send 32 KiB of either per
/// request, and over HTTP/2 repeat them for a few bytes each.
#[tokio::test]
async fn the_access_log_cuts_a_long_path_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::logging(dir.path(), origin.addr).await;
    let long = format!("/long/{}", "a".repeat(20_000));
    assert_eq!(edge.get(&long).await.status, StatusCode::OK);
    assert_eq!(edge.get("/short").await.status, StatusCode::OK);
    let log = dir.path().join("access.log");
    let lines = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>()
    };
    eventually("both requests in the access log", || async { lines().len() == 2 }).await;
    let lines = lines();
    let (cut, whole) = if lines[0]["path"] == "/short" { (&lines[1], &lines[0]) } else { (&lines[0], &lines[1]) };
    assert_eq!(cut["path"].as_str().unwrap(), &long[..2048]);
    assert_eq!(cut["truncated"], true);
    assert_eq!(whole["truncated"], serde_json::Value::Null, "{whole}");
}

#[tokio::test]
async fn oversized_heads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::limited(dir.path(), origin.addr, "[limits]\nheader_bytes = \"8KiB\"\nheaders = 20\n").await;
    let big = format!("GET /x HTTP/1.1\r\nHost: t.test\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let addr = edge.addr;
    let resp = tokio::task::spawn_blocking(move || raw(addr, big.as_bytes())).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
    let mut many = String::from("GET /x HTTP/1.1\r\nHost: t.test\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let resp = tokio::task::spawn_blocking(move || raw(addr, many.as_bytes())).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
    assert_eq!(edge.get("/x").await.status, StatusCode::OK);

    // The default limit, 100 fields, holds too: 100 go upstream (whatever
    // the origin makes of them), 101 are refused at the edge.
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::limited(dir.path(), origin.addr, "").await;
    for (fields, passed) in [(100, true), (101, false)] {
        let mut head = String::from("GET /x HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n");
        for i in 2..fields {
            head.push_str(&format!("X-H{i}: v\r\n"));
        }
        head.push_str("\r\n");
        let addr = edge.addr;
        let resp = tokio::task::spawn_blocking(move || raw(addr, head.as_bytes())).await.unwrap();
        let refused_here = resp.starts_with("HTTP/1.1 431") && !resp.contains("fwd=");
        assert_eq!(!refused_here, passed, "{fields} fields: {resp:?}");
    }
}

/// An HTTP/2 client that keeps its connection with PINGs between requests
/// (as browsers do) keeps it until `idle_timeout`, not the header-read
/// timeout: those frames are no request head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_with_pings_lasts_until_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge =
        Edge::limited(dir.path(), origin.addr, "[limits]\nheader_read_timeout = \"500ms\"\nidle_timeout = \"10s\"\n")
            .await;
    let tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let (send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut pings = conn.ping_pong().unwrap();
    tokio::spawn(conn);
    let url = "http://t.test/h2idle?cc=max-age%3D60";
    assert_eq!(h2_get(&send, url).await.status, StatusCode::OK);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        pings.ping(h2::Ping::opaque()).await.expect("the connection is open");
    }
    assert_eq!(h2_get(&send, url).await.status, StatusCode::OK, "the same connection, 1.8 s later");
}

#[tokio::test]
async fn slow_request_heads_are_cut_off_and_idle_connections_closed() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::limited(
        dir.path(),
        origin.addr,
        "[limits]\nheader_read_timeout = \"500ms\"\nidle_timeout = \"1500ms\"\n",
    )
    .await;
    let addr = edge.addr;
    let (slow, idle) = tokio::task::spawn_blocking(move || {
        // Slowloris: a byte at a time, never finishing the head.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut closed_after = None;
        for b in b"GET /x HTTP/1.1\r\nHost: t.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if s.write_all(&[*b]).is_err() {
                closed_after = Some(started.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        let slow = closed_after.unwrap_or(started.elapsed());
        assert_eq!(n, 0, "closed without a response");
        // An idle keep-alive connection is closed after idle_timeout.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: t.test\r\n\r\n").unwrap();
        let mut first = [0u8; 4096];
        let _ = s.read(&mut first).unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        (slow, started.elapsed())
    })
    .await
    .unwrap();
    assert!(slow < Duration::from_millis(2500), "slowloris held the connection for {slow:?}");
    // The client starts its clock after reading the answer: a stall there
    // shortens what it sees, hence the margin (still past the 500 ms header
    // timeout).
    assert!(idle >= Duration::from_millis(900) && idle < Duration::from_secs(4), "idle close after {idle:?}");
}

#[tokio::test]
async fn http2_with_prior_knowledge() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    // `localhost` is one of the site's hosts, so :authority names the site.
    let url = format!("http://localhost:{}/h2?cc=max-age%3D60&size=70000", edge.addr.port());
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let resp = client.request(http::Request::get(&url).body(Empty::new()).unwrap()).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        statuses.push(resp.headers()["cache-status"].to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_origin_bytes("/h2", &body);
    }
    assert!(statuses[0].contains("fwd=uri-miss") && statuses[1].contains("; hit"), "{statuses:?}");
    assert_eq!(origin.count("/h2").await, 1);
    // HTTP/2 names the host in :authority; the HTTP/1.1 request upstream
    // carries it as Host, so the next tier finds the site too.
    let seen = send(Method::GET, &format!("http://{}/__origin/request?path=/h2", origin.addr), &[]).await;
    let seen: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(seen["host"], format!("localhost:{}", edge.addr.port()), "{seen}");
}

/// An HTTP/2 client that resets each stream once its fetch has begun (a
/// reset leaves the stream limit at once, the fetch goes on for others)
/// leaves no more fetches running than `fetches_per_connection`: the next
/// request that would start one is answered 429 at once and reaches no
/// origin. Hits, requests that wait on a running fetch and other
/// connections are served meanwhile, and each fetch that ends gives its
/// place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_leaves_no_more_fetches_running_than_its_share() {
    const SHARE: u64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::limited(dir.path(), origin.addr, &format!("[limits]\nfetches_per_connection = {SHARE}\n")).await;
    let slow = |i: u64| format!("http://t.test/slow?size={}&delay=2s&cc=max-age%3D60", 100 + i);
    let cheap = "http://t.test/cheap?size=10&cc=max-age%3D60";
    let send = h2_client(tokio::net::TcpStream::connect(edge.addr).await.unwrap()).await;
    assert_eq!(h2_get(&send, cheap).await.status, StatusCode::OK);
    for i in 0..SHARE {
        let mut s = send.clone().ready().await.unwrap();
        let (resp, _) = s.send_request(http::Request::get(slow(i)).body(()).unwrap(), true).unwrap();
        eventually("the fetch to reach the origin", || async { origin.count("/slow").await == i + 1 }).await;
        // Its last handle dropped, h2 resets the stream (CANCEL).
        drop(resp);
    }
    let started = Instant::now();
    let refused = h2_get(&send, &slow(SHARE)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&refused.body));
    assert!(started.elapsed() < Duration::from_millis(1000), "refused at once, not after a fetch");
    assert_eq!(origin.count("/slow").await, SHARE, "the refused request reached the origin");
    // So is a range far into an object nothing is stored for, which
    // fetches only its chunks.
    let mut s = send.clone().ready().await.unwrap();
    let far =
        http::Request::get("http://t.test/far?size=8MiB&cc=max-age%3D60").header("range", "bytes=5000000-5000099");
    let (resp, _) = s.send_request(far.body(()).unwrap(), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS, "a range fetch past the share");
    assert_eq!(origin.count("/far").await, 0);
    assert_eq!(h2_get(&send, cheap).await.status, StatusCode::OK, "a hit needs no fetch");
    // Waiting on a running fetch takes no place; another connection has a
    // share of its own.
    let (first, other) = (slow(0), slow(SHARE + 1).replace("http://t.test", ""));
    let (joined, other) = tokio::join!(h2_get(&send, &first), edge.get(&other));
    assert_eq!((joined.status, other.status), (StatusCode::OK, StatusCode::OK));
    assert!(joined.final_at > Duration::from_millis(300), "waited for the running fetch: {:?}", joined.final_at);
    assert_eq!(origin.count("/slow").await, SHARE + 1);
    // The fetches left behind end, and give their places back.
    eventually("the places to come back", || async { h2_get(&send, &slow(SHARE)).await.status == StatusCode::OK })
        .await;
    assert_eq!(origin.count("/slow").await, SHARE + 2);
}

/// A GET with `Connection: close` from the local address `from`: the
/// response's status code.
async fn status_from(from: &str, edge: std::net::SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut tcp = socket.connect(edge).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status line: {text}"))
}

/// A client that opens a connection per request leaves no more fetches
/// running than `fetches_per_network` for its whole network (IPv4 /24):
/// past it, a request that would start another is answered 429 at once
/// and reaches no origin, on a new connection too. Hits are served, and
/// another network has a share of its own; each fetch that ends gives its
/// place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connections_of_one_network_leave_no_more_fetches_running_than_its_share() {
    const SHARE: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::limited(dir.path(), origin.addr, &format!("[limits]\nfetches_per_network = {SHARE}\n")).await;
    let slow = |i: u64| format!("/slow?size={}&delay=2s&cc=max-age%3D60", 100 + i);
    let cheap = "/cheap?size=10&cc=max-age%3D60";
    assert_eq!(status_from("127.0.0.1", edge.addr, cheap).await, 200);
    let mut running = Vec::new();
    for i in 0..SHARE {
        let (edge, path) = (edge.addr, slow(i));
        running.push(tokio::spawn(async move { status_from("127.0.0.1", edge, &path).await }));
        eventually("the fetch to reach the origin", || async { origin.count("/slow").await == i + 1 }).await;
    }
    let started = Instant::now();
    assert_eq!(status_from("127.0.0.1", edge.addr, &slow(SHARE)).await, 429, "a new connection of the same network");
    assert_eq!(status_from("127.0.0.77", edge.addr, "/fresh?size=10").await, 429, "another address of the /24");
    assert!(started.elapsed() < Duration::from_millis(1000), "refused at once, not after a fetch");
    assert_eq!(
        origin.count("/slow").await + origin.count("/fresh").await,
        SHARE,
        "a refused request reached the origin"
    );
    assert_eq!(status_from("127.0.0.1", edge.addr, cheap).await, 200, "a hit needs no fetch");
    assert_eq!(status_from("127.0.1.1", edge.addr, "/fresh?size=10").await, 200, "another network has its own share");
    for r in running {
        assert_eq!(r.await.unwrap(), 200);
    }
    // The places came back with the fetches' end.
    assert_eq!(status_from("127.0.0.1", edge.addr, "/after?size=10").await, 200);
}

/// Forwarded requests (a POST's) take places among the network's fetches
/// as fetches do, held until the answer ends: past the share one is 429 at
/// once. A client that sends a head and withholds its body holds its
/// exchange with the origin for `body_read_timeout` only, then gets a 400,
/// and the place comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_take_a_share_of_fetches_and_a_withheld_body_holds_one_no_longer_than_body_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SHARE: u64 = 2;
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let limits = format!("[limits]\nfetches_per_network = {SHARE}\nbody_read_timeout = \"3s\"\n");
    let edge = Edge::limited(dir.path(), origin.addr, &limits).await;
    let mut withheld = Vec::new();
    for _ in 0..SHARE {
        let mut tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
        let head = "POST /withheld HTTP/1.1\r\nHost: t.test\r\nContent-Length: 1000\r\n\r\nfirst bytes";
        tcp.write_all(head.as_bytes()).await.unwrap();
        withheld.push(tcp);
    }
    // Under way (the origin counts a request once its body is in).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let refused = send_body(Method::POST, &edge.url("/another"), "t.test", b"a=1").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&refused.body));
    assert!(started.elapsed() < Duration::from_millis(2500), "refused at once, before the bodies' time ran out");
    assert_eq!(origin.count("/another").await, 0);
    for mut tcp in withheld {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await.expect("still held").unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    }
    assert!(started.elapsed() < Duration::from_secs(8), "held {:?}", started.elapsed());
    let after = send_body(Method::POST, &edge.url("/another"), "t.test", b"a=1").await;
    assert_eq!(after.status, StatusCode::OK, "the places came back");
}

/// Reads the process's metrics, so it runs in a process of its own, which
/// installs the exporter as the program does.
#[test]
fn admin_serves_metrics_and_health() {
    with_metrics_in_own_process("serving::admin_serves_metrics_and_health", metrics_and_health);
}

async fn metrics_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    edge.get("/m?cc=max-age%3D60").await;
    edge.get("/m?cc=max-age%3D60").await;
    let refused = raw_async(
        edge.addr,
        b"POST /x HTTP/1.1\r\nHost: t.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let h = send(Method::GET, &format!("http://{}/healthz", edge.admin), &[]).await;
    assert_eq!(h.status, StatusCode::OK);
    let health: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
    assert_eq!(health["node"], "edge-test");
    let m = send(Method::GET, &format!("http://{}/metrics", edge.admin), &[]).await;
    let text = String::from_utf8_lossy(&m.body);
    let hits = text
        .lines()
        .find(|l| {
            l.starts_with("outpost_requests_total") && l.contains("node=\"edge-test\"") && l.contains("cache=\"hit\"")
        })
        .unwrap_or_else(|| panic!("no hit counter in:\n{text}"));
    let n: f64 = hits.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{hits}");
    let client_errors = text
        .lines()
        .find(|l| l.starts_with("outpost_responses_total") && l.contains("class=\"4xx\""))
        .unwrap_or_else(|| panic!("no 4xx counter in:\n{text}"));
    assert!(client_errors.ends_with(" 1"), "the refused request is counted: {client_errors}");
    assert!(text.contains("outpost_request_duration_seconds_bucket"), "latency histogram present");
    assert!(text.contains("outpost_cache_memory_bytes{node=\"edge-test\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_cuts_off_slow_heads_too() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let limits = "[limits]\nheader_read_timeout = \"500ms\"\n";
    let edge = Edge::limited(dir.path(), origin.addr, limits).await;
    let admin = edge.admin;
    let held = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut s = TcpStream::connect(admin).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = s.read(&mut [0u8; 64]).unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        started.elapsed()
    })
    .await
    .unwrap();
    assert!(held < Duration::from_secs(3), "a slow head held the admin listener for {held:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_responses_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = http::Request::get(edge.url("/drain?size=50000&chunk=10000&chunk_delay=100ms"))
        .header("host", "t.test")
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let addr = edge.addr;
    let stopping = tokio::spawn(edge.stop());
    let body = resp.into_body().collect().await.expect("the response in flight completes").to_bytes();
    assert_eq!(body.len(), 50_000);
    assert_origin_bytes("/drain", &body);
    stopping.await.unwrap();
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
}

/// Reads the process's metrics, so it runs in a process of its own.
#[test]
fn idle_connections_park_and_wake_for_the_next_hit() {
    with_metrics_in_own_process("serving::idle_connections_park_and_wake_for_the_next_hit", park_and_wake);
}

async fn park_and_wake() {
    const CLIENTS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    // Ticks of 100 ms: a connection idle for one parks at the next.
    let edge = Edge::limited(dir.path(), origin.addr, "[limits]\nheader_read_timeout = \"400ms\"\n").await;
    let parked = || metric(&edge, "outpost_connections_parked{node=\"edge-test\"}");
    let request = b"GET /park?cc=max-age%3D60&size=3000 HTTP/1.1\r\nHost: t.test\r\n\r\n";
    let addr = edge.addr;
    let mut clients = tokio::task::spawn_blocking(move || {
        (0..CLIENTS)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(request).unwrap();
                assert_eq!(read_response(&mut BufReader::new(&mut s), false).0, "HTTP/1.1 200 OK");
                s
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    // A tick or two after going idle; polled, since a loaded machine can
    // run the ticks late.
    eventually("the idle clients' connections parked", || async { parked().await >= CLIENTS as f64 }).await;
    // Each parked connection answers its next request: a hit, whole.
    clients = tokio::task::spawn_blocking(move || {
        for s in &mut clients {
            s.write_all(request).unwrap();
            // Nothing follows a response until the next request, so a
            // reader for each one takes no bytes of another.
            let (status, head, body) = read_response(&mut BufReader::new(&mut *s), false);
            assert_eq!(status, "HTTP/1.1 200 OK");
            assert!(header(&head, "cache-status").contains("; hit"), "{head:?}");
            assert_origin_bytes("/park", &body);
        }
        clients
    })
    .await
    .unwrap();
    eventually("the connections parked again after the hits", || async { parked().await >= CLIENTS as f64 }).await;
    let again = parked().await;
    drop(clients);
    eventually("closed connections no longer counted", || async { parked().await <= again - CLIENTS as f64 }).await;
    assert_eq!(origin.count("/park").await, 1);
}

/// An origin that reads each request up to `end` and keeps what it read;
/// it hangs up on the first request when `hang_up_first`, and answers
/// every other with a 200.
async fn recording_origin(
    end: &'static [u8],
    hang_up_first: bool,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::<String>::new()));
    let kept = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let kept = Arc::clone(&kept);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 << 10];
                let mut got = Vec::new();
                while !got.windows(end.len()).any(|w| w == end) {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let first = {
                    let mut kept = kept.lock().unwrap();
                    kept.push(String::from_utf8_lossy(&got).into_owned());
                    kept.len() == 1
                };
                if !(first && hang_up_first) {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                }
            });
        }
    });
    (addr, requests)
}

/// A request whose body went to an upstream that broke off is never sent
/// again: its body is spent, and a PUT sent again without it would
/// replace the resource with nothing. A request without a body is.
#[tokio::test]
async fn a_request_body_spent_on_a_broken_upstream_is_not_sent_again_empty() {
    // An origin that hangs up on the first request it reads and answers
    // the ones after; it keeps the head of each.
    let (addr, heads) = recording_origin(b"\r\n\r\n", true).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &site_toml(addr, DEFAULT_RULES)).await;

    let r = send_body(Method::PUT, &edge.url("/doc"), "t.test", b"the new text").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = heads.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "sent again after its body was spent: {got:?}");
    assert!(got[0].starts_with("PUT /doc "), "{got:?}");

    // Without a body, the same break is tried once more.
    heads.lock().unwrap().clear();
    let r = send(Method::DELETE, &edge.url("/doc"), &[("host", "t.test")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(heads.lock().unwrap().len(), 2);

    // So is an HTTP/2 request whose HEADERS did not end its stream, ended
    // by an empty DATA frame sent with them: it has no body either.
    let h2 = h2_client(tokio::net::TcpStream::connect(edge.addr).await.unwrap()).await;
    for (body, tries) in [(Bytes::new(), 2), (Bytes::from_static(b"text"), 1)] {
        heads.lock().unwrap().clear();
        let mut ready = h2.clone().ready().await.unwrap();
        let req = http::Request::delete("http://t.test/doc").body(()).unwrap();
        let (resp, mut stream) = ready.send_request(req, false).unwrap();
        stream.send_data(body.clone(), true).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), resp).await.unwrap().unwrap();
        let got = heads.lock().unwrap().clone();
        assert_eq!(got.len(), tries, "{body:?}: {got:?}");
        assert!(got.iter().all(|h| h.starts_with("DELETE /doc ")), "{got:?}");
        // The one with a body sends it, chunked (no length was given).
        let chunked = got.iter().all(|h| h.to_ascii_lowercase().contains("transfer-encoding: chunked"));
        assert_eq!(chunked, !body.is_empty(), "{got:?}");
        let want = if tries == 2 { StatusCode::OK } else { StatusCode::BAD_GATEWAY };
        assert_eq!(resp.status(), want, "{body:?}");
    }
}

/// An HTTP/2 request body that came with its HEADERS, without a length,
/// goes upstream whole: the bytes looked at to see whether the body is
/// empty are sent first.
#[tokio::test]
async fn an_http2_body_without_a_length_goes_upstream_whole() {
    // An origin that keeps each request, head and chunked body, whole.
    let (addr, requests) = recording_origin(b"0\r\n\r\n", false).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &site_toml(addr, DEFAULT_RULES)).await;
    let h2 = h2_client(tokio::net::TcpStream::connect(edge.addr).await.unwrap()).await;
    // In two DATA frames, the second ending the stream; in one that ends
    // it (the frame looked at is then the whole body).
    let cases: [&[&'static [u8]]; 2] = [&[b"first part,", b" second part"], &[b"the whole body"]];
    for frames in cases {
        requests.lock().unwrap().clear();
        let mut ready = h2.clone().ready().await.unwrap();
        let (resp, mut stream) =
            ready.send_request(http::Request::post("http://t.test/form").body(()).unwrap(), false).unwrap();
        for (i, frame) in frames.iter().enumerate() {
            stream.send_data(Bytes::from_static(frame), i + 1 == frames.len()).unwrap();
        }
        let resp = tokio::time::timeout(Duration::from_secs(5), resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let got = requests.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{got:?}");
        let (head, body) = got[0].split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("POST /form ") && head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
            "{head}"
        );
        let mut sent = Vec::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size, 16).unwrap();
            if n == 0 {
                break;
            }
            sent.extend_from_slice(&after.as_bytes()[..n]);
            rest = &after[n + 2..];
        }
        assert_eq!(sent, frames.concat());
    }
}

/// Cookies an HTTP/2 client sends as fields of their own reach an HTTP/1.1
/// origin as one `Cookie` field, joined with `; ` (RFC 9113 §8.2.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_crumbs_reach_the_origin_as_one_field() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::limited(dir.path(), origin.addr, "").await;
    let send = h2_client(tokio::net::TcpStream::connect(edge.addr).await.unwrap()).await;
    let mut s = send.ready().await.unwrap();
    let req = http::Request::get("http://t.test/crumbs?size=10").header("cookie", "a=1").header("cookie", "b=2");
    let (resp, _) = s.send_request(req.body(()).unwrap(), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    assert_eq!(origin.last_request("/crumbs").await["cookie"], "a=1; b=2");
}
