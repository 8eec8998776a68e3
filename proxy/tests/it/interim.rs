//! Interim responses an upstream sends before its answer (`103 Early
//! Hints` and other 1xx), passed on to HTTP/1.1 and HTTP/2 clients: ahead
//! of the answer, never inside another answer, never to HTTP/1.0, never
//! stored, and only as much as a lying upstream is allowed.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::*;

fn get(target: &str, version: &str) -> String {
    format!("GET {target} {version}\r\nHost: t.test\r\n\r\n")
}

/// A status line, fields and body.
type Answer = (String, Vec<(String, String)>, Vec<u8>);

/// The `link` fields of an interim response.
fn links(fields: &[(String, String)]) -> Vec<&str> {
    fields.iter().filter(|(k, _)| k == "link").map(|(_, v)| v.as_str()).collect()
}

/// Reads responses from `r` until `finals` final ones have come: each
/// status line, fields and body, interim ones included.
fn responses(r: &mut impl std::io::BufRead, finals: usize) -> Vec<Answer> {
    let mut out = Vec::new();
    let mut left = finals;
    while left > 0 {
        let resp = read_response(r, false);
        if !resp.0.starts_with("HTTP/1.1 1") {
            left -= 1;
        }
        out.push(resp);
    }
    out
}

#[test]
fn an_origins_early_hints_reach_the_client_before_its_answer() {
    with_metrics_in_own_process("interim::an_origins_early_hints_reach_the_client_before_its_answer", origin_hints);
}

async fn origin_hints() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let site_hints = "[[early_hints]]\npattern = \"/k/*\"\nlink = [\"</site.css>; rel=preload\"]\n";
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, &format!("{DEFAULT_RULES}{site_hints}"))).await;
    let addr = edge.addr;
    let hinted = "/a?size=100&early=%3C/a.css%3E;%20rel=preload&early=%3C/b.js%3E&delay=600ms";
    let (miss, hit, old) = tokio::task::spawn_blocking(move || {
        (
            exchange(addr, &get(hinted, "HTTP/1.1")),
            exchange(addr, &get(hinted, "HTTP/1.1")),
            exchange(addr, &get("/old?size=10&early=%3C/a.css%3E&delay=100ms", "HTTP/1.0")),
        )
    })
    .await
    .unwrap();
    assert_eq!(miss.status, "HTTP/1.1 200 OK");
    assert_eq!(miss.interim.len(), 1, "{:?}", miss.interim);
    let (status, fields) = &miss.interim[0];
    assert_eq!(status, "HTTP/1.1 103 Early Hints");
    assert_eq!(links(fields), ["</a.css>; rel=preload", "</b.js>"]);
    // Passed on when the origin sent it, not with its answer 600 ms later.
    let at = miss.interim_at.unwrap();
    assert!(at + Duration::from_millis(300) < miss.final_at, "103 at {at:?}, the answer at {:?}", miss.final_at);
    assert!(hit.interim.is_empty(), "an interim response is never stored: {:?}", hit.interim);
    assert_eq!(old.status, "HTTP/1.0 200 OK");
    assert!(old.interim.is_empty(), "an HTTP/1.0 client never sees a 1xx");

    // On one connection: the first request read by the listener, the
    // second by hyper, which holds the connection after a miss. Each gets
    // the site's hints once, then the origin's.
    let answers = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut all = Vec::new();
        for n in 1..=2 {
            s.write_all(get(&format!("/k/{n}?size=50&early=%3C/{n}.css%3E&delay=200ms"), "HTTP/1.1").as_bytes())
                .unwrap();
            all.extend(responses(&mut r, 1));
        }
        all
    })
    .await
    .unwrap();
    let shape: Vec<(&str, Vec<&str>, usize)> =
        answers.iter().map(|(status, fields, body)| (status.as_str(), links(fields), body.len())).collect();
    assert_eq!(
        shape,
        [
            ("HTTP/1.1 103 Early Hints", vec!["</site.css>; rel=preload"], 0),
            ("HTTP/1.1 103 Early Hints", vec!["</1.css>"], 0),
            ("HTTP/1.1 200 OK", vec![], 50),
            ("HTTP/1.1 103 Early Hints", vec!["</site.css>; rel=preload"], 0),
            ("HTTP/1.1 103 Early Hints", vec!["</2.css>"], 0),
            ("HTTP/1.1 200 OK", vec![], 50),
        ]
    );
    assert_eq!(metric(&edge, "outpost_interim_forwarded_total{node=\"edge-test\"}").await, 3.0);
    assert_eq!(metric(&edge, "outpost_early_hints_sent_total{node=\"edge-test\"}").await, 2.0);
}

/// A client that pipelines a request behind a large answer and reads
/// slowly: the second request's hints wait until every byte of the first
/// answer is written (hyper still holds its last bytes when the origin's
/// 103 comes), and go before the second answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_never_land_inside_an_answer_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    let addr = edge.addr;
    // 32 MiB read at about 50 MiB/s: more than loopback's socket buffers
    // hold (about 10 MiB between them), so they stay full to the end.
    let big = "/big?size=32MiB";
    let second = "/second?size=30&early=%3C/s.css%3E&delay=1500ms";
    let answers = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{}{}", get(big, "HTTP/1.1"), get(second, "HTTP/1.1")).as_bytes()).unwrap();
        let mut r = BufReader::with_capacity(256 << 10, SlowReader(s));
        responses(&mut r, 2)
    })
    .await
    .unwrap();
    let shape: Vec<(&str, usize)> = answers.iter().map(|(status, _, body)| (status.as_str(), body.len())).collect();
    assert_eq!(shape, [("HTTP/1.1 200 OK", 32 << 20), ("HTTP/1.1 103 Early Hints", 0), ("HTTP/1.1 200 OK", 30)]);
    assert_eq!(links(&answers[1].1), ["</s.css>"]);
    let stored = send(http::Method::GET, &format!("http://{addr}{big}"), &[("host", "t.test")]).await;
    assert!(answers[0].2 == stored.body, "the first answer's bytes, none moved");
}

/// Reads at most 256 KiB each 5 ms.
struct SlowReader(TcpStream);

impl Read for SlowReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(5));
        let n = buf.len().min(256 << 10);
        self.0.read(&mut buf[..n])
    }
}

/// An upstream that reads a request head and writes `script`.
async fn scripted(script: Vec<u8>) -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let script = script.clone();
            tokio::spawn(async move {
                if read_head(&mut s).await.is_some() {
                    let _ = s.write_all(&script).await;
                }
            });
        }
    });
    addr
}

/// What an upstream that lies or floods sends in 1xx: a 103 larger than
/// the limit, fields that speak of framing or the connection, a `100
/// Continue` nobody asked for, a `101`, and more 103s than a request may
/// pass on. The client gets the well-formed ones, within the limits, and
/// the answer whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_floods_or_lies_in_interim_responses_passes_on_only_whats_allowed() {
    let mut script = Vec::new();
    script
        .extend_from_slice(format!("HTTP/1.1 103 Early Hints\r\nlink: <{}>\r\n\r\n", "x".repeat(20 << 10)).as_bytes());
    script.extend_from_slice(
        b"HTTP/1.1 102 Processing\r\nconnection: x-secret\r\nx-secret: 1\r\ncontent-length: 5\r\n\
          transfer-encoding: chunked\r\nkeep-alive: timeout=1\r\nx-kept: yes\r\nset-cookie: id=1\r\n\
          x-powered-by: php\r\n\r\n",
    );
    script.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    for n in 0..12 {
        script.extend_from_slice(format!("HTTP/1.1 103 Early Hints\r\nlink: </{n}.css>\r\n\r\n").as_bytes());
    }
    script.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncache-control: max-age=60\r\n\r\nhello");
    let upstream = scripted(script).await;
    let dir = tempfile::tempdir().unwrap();
    let rules = format!("{DEFAULT_RULES}\n[headers]\nremove = [\"x-powered-by\"]\n");
    let edge = Edge::start(dir.path(), &site_toml(upstream, &rules)).await;
    let addr = edge.addr;
    let got = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(get("/flood", "HTTP/1.1").as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let answers = responses(&mut r, 1);
        // Nothing follows the answer on the connection.
        r.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut more = [0u8; 1];
        let after = r.read(&mut more);
        (answers, after.ok())
    })
    .await
    .unwrap();
    let (answers, after) = got;
    assert!(after.is_none(), "bytes after the answer");
    let statuses: Vec<&str> = answers.iter().map(|(s, _, _)| s.as_str()).collect();
    let mut want = vec!["HTTP/1.1 102 Processing"];
    want.extend(std::iter::repeat_n("HTTP/1.1 103 Early Hints", 7));
    want.push("HTTP/1.1 200 OK");
    assert_eq!(statuses, want, "the oversized 103 and the 100 dropped, eight interim responses at most");
    let names: Vec<&str> = answers[0].1.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["x-kept"], "hop-by-hop, framing, cookie and the site's removed fields are not passed on");
    for (n, (_, fields, _)) in answers[1..8].iter().enumerate() {
        assert_eq!(links(fields), [format!("</{n}.css>")]);
    }
    assert_eq!(answers[8].2, b"hello");

    // The same over HTTP/2, where each is a HEADERS frame on the stream.
    let send = h2_client(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
    let got = h2_get(&send, "http://t.test/flood2").await;
    let statuses: Vec<u16> = got.interim.iter().map(|(s, _, _)| s.as_u16()).collect();
    assert_eq!(statuses, [102, 103, 103, 103, 103, 103, 103, 103]);
    let links: Vec<&[String]> = got.interim[1..].iter().map(|(_, l, _)| &l[..]).collect();
    assert_eq!(links, (0..7).map(|n| [format!("</{n}.css>")]).collect::<Vec<_>>());
    assert_eq!((got.status.as_u16(), &got.body[..]), (200, &b"hello"[..]));
}

/// Requests that wait on another's fetch get the origin's hints too: one
/// that joins at once, and one that joins after the 103 came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_waiting_on_a_fetch_gets_the_origins_hints() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    let addr = edge.addr;
    let path = "/shared?size=40&early=%3C/shared.css%3E&delay=800ms";
    let ask = move |after: u64| {
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(after));
            exchange(addr, &get(path, "HTTP/1.1"))
        })
    };
    let (first, second, late) = (ask(0), ask(50), ask(400));
    for (who, x) in [("first", first.await.unwrap()), ("second", second.await.unwrap()), ("late", late.await.unwrap())]
    {
        assert_eq!(x.status, "HTTP/1.1 200 OK", "{who}");
        let got: Vec<(&str, Vec<&str>)> = x.interim.iter().map(|(s, f)| (s.as_str(), links(f))).collect();
        assert_eq!(got, [("HTTP/1.1 103 Early Hints", vec!["</shared.css>"])], "{who}");
    }
    assert_eq!(origin.count("/shared").await, 1, "one fetch for the three");
}

/// Over HTTP/2 (prior knowledge, on the cleartext listener): the site's
/// hints and the origin's reach each stream, while streams run side by
/// side on one connection and are answered in another order than asked;
/// none on a hit; counted as over HTTP/1.1.
#[test]
fn early_hints_reach_http2_clients_stream_by_stream() {
    with_metrics_in_own_process("interim::early_hints_reach_http2_clients_stream_by_stream", h2_hints);
}

async fn h2_hints() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let site_hints = "[[early_hints]]\npattern = \"/k/*\"\nlink = [\"</site.css>; rel=preload\"]\n";
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, &format!("{DEFAULT_RULES}{site_hints}"))).await;
    let send = h2_client(tokio::net::TcpStream::connect(edge.addr).await.unwrap()).await;
    let url = |p: &str| format!("http://t.test{p}");
    let paths = [
        "/k/1?size=100&early=%3C/1.css%3E&delay=900ms",
        "/k/2?size=200&early=%3C/2.css%3E&delay=300ms",
        "/plain?size=50&early=%3C/3.css%3E&delay=600ms",
    ];
    let urls = paths.map(url);
    let (one, two, three) = tokio::join!(h2_get(&send, &urls[0]), h2_get(&send, &urls[1]), h2_get(&send, &urls[2]));
    let site = || vec!["</site.css>; rel=preload".to_string()];
    for (got, want, size) in [
        (&one, vec![site(), vec!["</1.css>".to_string()]], 100),
        (&two, vec![site(), vec!["</2.css>".to_string()]], 200),
        (&three, vec![vec!["</3.css>".to_string()]], 50),
    ] {
        assert_eq!((got.status.as_u16(), got.body.len()), (200, size), "{got:?}");
        assert!(got.interim.iter().all(|(s, _, _)| *s == http::StatusCode::EARLY_HINTS), "{got:?}");
        let links: Vec<Vec<String>> = got.interim.iter().map(|(_, l, _)| l.clone()).collect();
        assert_eq!(links, want);
        // The origin's came when the origin sent it, not with its answer.
        let at = got.interim.last().unwrap().2;
        assert!(at + Duration::from_millis(200) < got.final_at, "103 at {at:?}, the answer at {:?}", got.final_at);
    }
    assert!(two.final_at < three.final_at && three.final_at < one.final_at, "answered as the origin answered");
    let hit = h2_get(&send, &url(paths[0])).await;
    assert_eq!((hit.status.as_u16(), hit.body.len()), (200, 100));
    assert!(hit.interim.is_empty(), "an interim response is never stored: {:?}", hit.interim);
    assert_eq!(metric(&edge, "outpost_interim_forwarded_total{node=\"edge-test\"}").await, 3.0);
    assert_eq!(metric(&edge, "outpost_early_hints_sent_total{node=\"edge-test\"}").await, 2.0);
}
