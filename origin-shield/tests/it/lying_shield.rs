//! An edge's HTTP/2 client against a shield that misbehaves: one that
//! floods interim responses, one that turns streams away, one that reads
//! request bodies slowly. The "shield" here is a bare h2 server that
//! answers the edge's probes in HTTP/1.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::topology::*;

/// How the fake shield answers.
#[derive(Clone, Copy)]
enum Play {
    /// `n` interim responses (a `100`, then `103`s), then the answer.
    Flood(usize),
    /// Resets the first stream it is sent with `REFUSED_STREAM`; answers
    /// the rest.
    RefuseFirst,
    /// Reads each request's body a little at a time, and answers with the
    /// number of bytes it got.
    CountBody,
    /// Answers the first request on its first connection, then stops
    /// reading that connection (a hung process: its socket stays open,
    /// the kernel still acknowledges), and answers on every other.
    HangFirstConnection,
    /// Allows two streams on a connection; answers a path under `/held`
    /// with its head and a byte, then nothing more (the answer of a slow
    /// client, passed through, is held as long); any other at once.
    TwoStreams,
    /// Speaks HTTP/2 on its first connection, answers one request there
    /// and closes it; then hangs up on the HTTP/2 preface, as a server
    /// put in its place that speaks HTTP/1.1 only would (which it
    /// answers).
    H2ThenGone,
    /// Answers every request `500` with no `Cache-Status` of its own: a
    /// shield failing on its own, or a load balancer before it.
    Fail,
}

struct FakeShield {
    addr: SocketAddr,
    /// What it was asked, in order: `GET /path`, with `refused` or the
    /// bytes of body read (`broke` if the body was cut).
    seen: Arc<Mutex<Vec<String>>>,
    _task: tokio_util::sync::DropGuard,
}

impl FakeShield {
    async fn start(play: Play) -> FakeShield {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (log, until) = (Arc::clone(&seen), stop.clone());
        tokio::spawn(async move {
            let streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            loop {
                let s = tokio::select! {
                    _ = until.cancelled() => return,
                    s = listener.accept() => s.unwrap().0,
                };
                let counts = (Arc::clone(&streams), Arc::clone(&conns));
                tokio::spawn(serve(s, play, Arc::clone(&log), counts));
            }
        });
        FakeShield { addr, seen, _task: stop.drop_guard() }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

type Counter = Arc<std::sync::atomic::AtomicUsize>;

async fn serve(mut s: TcpStream, play: Play, seen: Arc<Mutex<Vec<String>>>, (streams, conns): (Counter, Counter)) {
    let mut first = [0u8; 3];
    if s.peek(&mut first).await.is_err() {
        return;
    }
    if &first != b"PRI" {
        // A probe in HTTP/1.1: any answer means up.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.is_err() {
                    return;
                }
            }
        }
        return;
    }
    let nth = conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut builder = h2::server::Builder::new();
    if matches!(play, Play::TwoStreams) {
        builder.max_concurrent_streams(2);
    }
    if matches!(play, Play::H2ThenGone) && nth > 0 {
        return;
    }
    let Ok(mut conn) = builder.handshake(s).await else { return };
    let mut served = 0;
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        served += 1;
        if matches!(play, Play::HangFirstConnection) && nth == 0 && served == 2 {
            // Hung: nothing more is read or sent here, PINGs included.
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        let n = streams.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            // With how far the edge says it has followed the control plane.
            // and how long ago it began to apply that event.
            let field = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let asked = match (field("outpost-seq"), field("outpost-seq-age")) {
                (Some(seq), Some(age)) => format!("{} {} seq={seq} age={age}", req.method(), req.uri().path()),
                (Some(seq), None) => format!("{} {} seq={seq}", req.method(), req.uri().path()),
                _ => format!("{} {}", req.method(), req.uri().path()),
            };
            let answer = |body: String| {
                let head = Response::builder().header("content-length", body.len()).body(()).unwrap();
                (head, Bytes::from(body))
            };
            let (head, body) = match play {
                Play::RefuseFirst if n == 0 => {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    seen.lock().unwrap().push(format!("{asked} refused"));
                    return;
                }
                Play::TwoStreams => {
                    seen.lock().unwrap().push(format!("{asked} conn={nth}"));
                    if !req.uri().path().starts_with("/held") {
                        let (head, body) = answer("fake".into());
                        if let Ok(mut tx) = respond.send_response(head, false) {
                            let _ = tx.send_data(body, true);
                        }
                        return;
                    }
                    let head = Response::builder().body(()).unwrap();
                    if let Ok(mut tx) = respond.send_response(head, false) {
                        let _ = tx.send_data(Bytes::from_static(b"h"), false);
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    return;
                }
                Play::H2ThenGone => {
                    // Its one connection in HTTP/2 answers once, then ends.
                    seen.lock().unwrap().push(format!("{asked} conn={nth}"));
                    let (head, body) = answer("fake".into());
                    if let Ok(mut tx) = respond.send_response(head, false) {
                        let _ = tx.send_data(body, true);
                    }
                    return;
                }
                Play::Fail => {
                    let head = Response::builder().status(500).header("content-length", 4).body(()).unwrap();
                    (head, Bytes::from_static(b"oops"))
                }
                Play::RefuseFirst | Play::HangFirstConnection => answer("fake".into()),
                Play::Flood(count) => {
                    for i in 0..count {
                        let mut r = Response::builder();
                        r = if i == 0 {
                            r.status(100)
                        } else {
                            r.status(103).header("link", format!("</f{i}.css>; rel=preload"))
                        };
                        respond.send_informational(r.body(()).unwrap()).unwrap();
                    }
                    answer("fake".into())
                }
                Play::CountBody => {
                    let mut recv = req.into_body();
                    let mut got = 0usize;
                    let mut broke = false;
                    while let Some(data) = recv.data().await {
                        match data {
                            Ok(d) => {
                                got += d.len();
                                let _ = recv.flow_control().release_capacity(d.len());
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                            Err(_) => {
                                broke = true;
                                break;
                            }
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(format!("{asked} {}", if broke { "broke".into() } else { got.to_string() }));
                    if broke {
                        return;
                    }
                    answer(got.to_string())
                }
            };
            if !matches!(play, Play::CountBody) {
                seen.lock().unwrap().push(asked);
            }
            if let Ok(mut tx) = respond.send_response(head, false) {
                let _ = tx.send_data(body, true);
            }
        });
        if matches!(play, Play::H2ThenGone) {
            // Its answer out (the connection driven meanwhile), it ends.
            let _ = tokio::time::timeout(Duration::from_millis(300), conn.accept()).await;
            return;
        }
    }
}

/// An edge whose one shield is `fake`, and whose site's origin counts what
/// reaches it (nothing should: the edge only goes there when the shield
/// fails it).
async fn edge_before(fake: &FakeShield, extra: &str) -> (Running, Origin, tempfile::TempDir) {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("site.toml"), site(&[origin.addr], "")).unwrap();
    let edge = edge_with(dir.path(), "edge-1", &[fake.addr], extra).await;
    (edge, origin, dir)
}

/// An edge's fetches tell its shield of a control-plane event from the
/// moment the edge begins to apply it (a purge takes effect as its rule is
/// set), not only once it is kept: a fetch in between must already have
/// the shield check its copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_tells_its_shield_of_an_event_it_is_applying() {
    let fake = FakeShield::start(Play::RefuseFirst).await;
    let (edge, _origin, _dir) = edge_before(&fake, "").await;
    edge.engine.applied_through(6);
    let _ = via(edge.addr, "/before?cc=no-store").await;
    let began = std::time::Instant::now();
    edge.engine.applying(7);
    let r = via(edge.addr, "/during?cc=no-store").await;
    assert_eq!(r.status, StatusCode::OK);
    // With how long ago the edge began to apply it, in milliseconds.
    let said = |path: &str| -> (u64, u64) {
        let seen = fake.seen();
        let line = seen.iter().find(|l| l.starts_with(&format!("GET {path} "))).unwrap_or_else(|| panic!("{seen:?}"));
        let (seq, age) = line.split_once(" seq=").unwrap().1.split_once(" age=").unwrap_or_else(|| panic!("{line}"));
        (seq.parse().unwrap(), age.parse().unwrap())
    };
    let ms = |since: std::time::Instant| since.elapsed().as_millis() as u64;
    let (seq, age) = said("/during");
    assert_eq!(seq, 7);
    assert!(age <= ms(began), "{age} ms ago, begun {} ms ago", ms(began));
    // Said again, applied and kept, the same event keeps the moment it
    // was begun.
    tokio::time::sleep(Duration::from_millis(300)).await;
    edge.engine.applying(7);
    edge.engine.applied_through(7);
    let _ = via(edge.addr, "/again?cc=no-store").await;
    let (seq, age) = said("/again");
    assert_eq!(seq, 7);
    assert!((300..=ms(began)).contains(&age), "{age} ms ago, begun {} ms ago", ms(began));
    // A control plane's log begun again from an earlier event is said as
    // it is, begun now.
    let again = std::time::Instant::now();
    edge.engine.applied_through(3);
    let _ = via(edge.addr, "/after?cc=no-store").await;
    let (seq, age) = said("/after");
    assert_eq!(seq, 3);
    assert!(age <= ms(again), "{age} ms ago, begun {} ms ago", ms(again));
    // So is a snapshot's, whatever its sequence: its purges take effect
    // from now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snapshot = std::time::Instant::now();
    edge.engine.applying_snapshot(2);
    let _ = via(edge.addr, "/snapshot?cc=no-store").await;
    let (seq, age) = said("/snapshot");
    assert_eq!(seq, 3);
    assert!(age <= ms(snapshot), "{age} ms ago, begun {} ms ago", ms(snapshot));
}

/// Streams a shield allows on one connection, each held by an answer
/// that does not end (as a slow client of an answer passed through holds
/// its own), do not hold up the edge's other requests to that shield: it
/// opens another connection for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_opens_another_connection_when_a_shields_streams_are_taken() {
    let fake = FakeShield::start(Play::TwoStreams).await;
    let (edge, origin, _dir) = edge_before(&fake, "").await;
    let mut held = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(edge.addr).await.unwrap();
        s.write_all(format!("GET /held{i}?cc=no-store HTTP/1.1\r\nHost: s.test\r\n\r\n").as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "closed before its head");
            head.extend_from_slice(&buf[..n]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
        held.push(s);
    }
    let r = tokio::time::timeout(Duration::from_secs(3), via(edge.addr, "/next?cc=no-store")).await;
    let r = r.expect("the request waited for a stream of the first connection");
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"fake"[..]));
    let seen = fake.seen();
    assert!(
        seen.contains(&"GET /held0 conn=0".to_string()) && seen.contains(&"GET /held1 conn=0".to_string()),
        "{seen:?}"
    );
    assert!(seen.contains(&"GET /next conn=1".to_string()), "{seen:?}");
    assert_eq!(origin.total().await, 0);
    drop(held);
}

/// A shield that fails on its own (a 500 naming no upstream's fault) is
/// passed over for the request that met it, as one that cannot reach the
/// origin is: the next shield answers, and no client sees the 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shields_own_failure_is_passed_over() {
    let fake = FakeShield::start(Play::Fail).await;
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("site.toml"), site(&[origin.addr], "")).unwrap();
    let (b, _) = shield(dir.path(), "shield-b", "127.0.0.1:0".parse().unwrap()).await;
    let e = edge(dir.path(), "edge-1", &[fake.addr, b.addr]).await;
    for i in 0..20 {
        let r = via(e.addr, &format!("/own/{i}?cc=max-age%3D600")).await;
        let cs = r.cache_status();
        assert_eq!(r.status, StatusCode::OK, "{i}: {cs}");
        assert!(cs.starts_with("shield-b; fwd=uri-miss"), "{i}: through the shield that answers: {cs}");
    }
    assert!(!fake.seen().is_empty(), "the failing shield was asked first for some keys");
    assert_eq!(origin.stats().await["paths"].as_object().unwrap().len(), 20, "each fetched once");
}

/// A cleartext shield that spoke HTTP/2 and then does not (another server
/// in its place, speaking HTTP/1.1 only) is asked in HTTP/1.1: a new
/// connection is taken to speak HTTP/2 only while one open to the target
/// has shown it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_that_stops_speaking_http2_is_asked_in_http1() {
    let fake = FakeShield::start(Play::H2ThenGone).await;
    let (edge, origin, _dir) = edge_before(&fake, "").await;
    let r = via(edge.addr, "/first?cc=no-store").await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"fake"[..]));
    // Its connection closed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = tokio::time::timeout(Duration::from_secs(10), via(edge.addr, "/second?cc=no-store")).await.unwrap();
    // The HTTP/1.1 server's empty answer.
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 0), "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(fake.seen(), ["GET /first conn=0"]);
    assert_eq!(origin.total().await, 0);
}

/// A shield that sends 40 interim responses before its answer: the client
/// gets the first 8 (less the `100`), then the answer whole. One that sends
/// 100 is given up on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shields_flood_of_interim_responses_is_cut_at_eight() {
    let fake = FakeShield::start(Play::Flood(40)).await;
    let (edge, origin, _dir) = edge_before(&fake, "").await;
    let lines = crate::shield::head_lines(edge.addr, "/flood").await;
    let statuses: Vec<&String> = lines.iter().filter(|l| l.starts_with("HTTP/")).collect();
    assert_eq!(statuses.len(), 9, "{lines:?}");
    assert!(statuses[..8].iter().all(|l| *l == "HTTP/1.1 103 Early Hints"), "{lines:?}");
    assert!(lines.contains(&"link: </f1.css>; rel=preload".to_string()), "{lines:?}");
    assert_eq!(statuses[8], "HTTP/1.1 200 OK");
    let r = via(edge.addr, "/flood/again").await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 4));
    assert_eq!(&r.body[..], b"fake");
    assert_eq!(fake.seen(), ["GET /flood", "GET /flood/again"]);
    assert_eq!(origin.total().await, 0);

    // Past 64, the shield's answer is given up on: the edge goes to the
    // origin, and its client has had no more than 8.
    let endless = FakeShield::start(Play::Flood(100)).await;
    let (edge, origin, _dir) = edge_before(&endless, "").await;
    let lines = crate::shield::head_lines(edge.addr, "/endless?size=3").await;
    let statuses: Vec<&String> = lines.iter().filter(|l| l.starts_with("HTTP/")).collect();
    assert!(statuses.len() <= 9, "{lines:?}");
    assert_eq!(statuses.last().map(|s| s.as_str()), Some("HTTP/1.1 200 OK"));
    assert_eq!(endless.seen(), ["GET /endless"]);
    assert_eq!(origin.count("/endless").await, 1);
}

/// A stream the shield refuses (`REFUSED_STREAM`: never processed) is
/// sent again to the same shield, not failed over to the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_shield_refuses_is_sent_again() {
    let fake = FakeShield::start(Play::RefuseFirst).await;
    let (edge, origin, _dir) = edge_before(&fake, "").await;
    let r = via(edge.addr, "/refused").await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 4));
    assert_eq!(&r.body[..], b"fake");
    assert_eq!(fake.seen(), ["GET /refused refused", "GET /refused"]);
    assert_eq!(origin.total().await, 0);
}

/// Request bodies cross an HTTP/2 hop no faster than the shield's windows
/// open: one ten times its 64 KiB window arrives whole; one past the
/// edge's body limit, sent chunked, is cut there, and the client is told
/// 413 (its fault), not 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_cross_an_http2_hop_and_one_too_large_is_a_413() {
    let fake = FakeShield::start(Play::CountBody).await;
    let (edge, origin, _dir) = edge_before(&fake, "[limits]\nbody = \"1MiB\"\n").await;
    let at = edge.addr;
    let status = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader, Write};
        let s = std::net::TcpStream::connect(at).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'y'; 65_536];
            let _ = write!(w, "POST /big HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n");
            for _ in 0..32 {
                if write!(w, "{:x}\r\n", chunk.len())
                    .and_then(|()| w.write_all(&chunk))
                    .and_then(|()| w.write_all(b"\r\n"))
                    .is_err()
                {
                    return;
                }
            }
            let _ = w.write_all(b"0\r\n\r\n");
        });
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        let _ = writer.join();
        line
    })
    .await
    .unwrap();
    // The first request on the edge's new connection: the client's
    // fault, not a sign the shield does not speak HTTP/2.
    assert!(status.starts_with("HTTP/1.1 413 "), "{status}");

    let body = vec![b'x'; 655_360];
    let url = format!("http://{}/up", edge.addr);
    let r = outpost_testkit::request(Method::POST, &url, &[("host", "s.test")], &body).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"655360"[..]));
    let seen = || async {
        let mut seen = fake.seen();
        seen.sort();
        seen == ["POST /big broke", "POST /up 655360"]
    };
    eventually("the shield saw the big body cut", seen).await;
    assert_eq!(origin.total().await, 0);
}

/// A shield that hangs with its connection open (the process stuck, the
/// host's kernel still acknowledging) costs the requests sent there their
/// timeout, and then its connection: the edge's PING goes unanswered, the
/// connection is dropped, and the next request makes a new one, answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_a_hung_shield_is_dropped_once_it_leaves_a_ping_unanswered() {
    let fake = FakeShield::start(Play::HangFirstConnection).await;
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let site = format!(
        "[site]\nid = \"s\"\nhosts = [\"s.test\"]\n[[origin]]\nurl = \"http://{}\"\nresponse_timeout = \"300ms\"\n",
        origin.addr
    );
    std::fs::write(dir.path().join("site.toml"), site).unwrap();
    let edge = edge_with(dir.path(), "edge-1", &[fake.addr], "").await;
    let first = via(edge.addr, "/first?cc=no-store").await;
    assert_eq!(&first.body[..], b"fake");
    // The shield hangs: this one waits out its timeout there, then is
    // answered by the origin.
    let hung = via(edge.addr, "/hung?cc=no-store").await;
    assert_eq!(hung.status, StatusCode::OK);
    assert_eq!(origin.count("/hung").await, 1);
    let started = std::time::Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let r = via(edge.addr, &format!("/after/{n}?cc=no-store")).await;
        if &r.body[..] == b"fake" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the hung connection was never dropped");
    }
    assert!(fake.seen().contains(&format!("GET /after/{n}")), "{:?}", fake.seen());
}
