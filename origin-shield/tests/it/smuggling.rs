//! No request's bytes reach another request upstream. The origin here reads
//! every request by its declared framing, as nginx does, so a proxy that
//! sends a `Content-Length` without its body would make it read the next
//! request on the pooled connection as that body, and cache the wrong answer
//! under the victim's URL.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use outpost_load::raw::{RawOrigin, RawRequest, Received, answer_body, exchange};

use crate::topology::*;

const WAIT: Duration = Duration::from_secs(5);

/// How requests reach the raw origin.
enum Path {
    EdgeDirect,
    ThroughShield,
}

struct Setup {
    _dir: tempfile::TempDir,
    origin: RawOrigin,
    edge: Running,
    _shield: Option<Running>,
}

async fn setup(path: Path) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let origin = RawOrigin::start().await.unwrap();
    std::fs::write(dir.path().join("site.toml"), site(&[origin.addr()], "")).unwrap();
    let (edge, shield) = match path {
        Path::EdgeDirect => {
            let cfg = node_file(
                dir.path(),
                "edge-d",
                "[node]\nname = \"edge-d\"\nrole = \"edge\"\npop = \"d\"\nlatitude = 0.0\nlongitude = 0.0\n\
                 sites = [\"site.toml\"]\naccess_log = \"off\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
                 [cache]\nmemory = \"32MiB\"\n[upstream]\nmode = \"origin\"\n",
            );
            (Running::spawn(outpost_edge::bind(&cfg).await.unwrap()), None)
        }
        Path::ThroughShield => {
            let (sh, _) = shield(dir.path(), "shield-s", "127.0.0.1:0".parse().unwrap()).await;
            (edge(dir.path(), "edge-s", &[sh.addr]).await, Some(sh))
        }
    };
    Setup { _dir: dir, origin, edge, _shield: shield }
}

/// Every request the origin parsed, checking that nothing arrived malformed.
fn parsed(origin: &RawOrigin) -> Vec<RawRequest> {
    for r in origin.received() {
        if let Received::Malformed { reason, bytes, .. } = r {
            panic!("the origin read bytes that are no request ({reason}): {:?}", String::from_utf8_lossy(&bytes));
        }
    }
    origin.requests()
}

fn targets(reqs: &[RawRequest]) -> Vec<(String, String)> {
    reqs.iter().map(|r| (r.method.clone(), r.target.clone())).collect()
}

fn pair(m: &str, t: &str) -> (String, String) {
    (m.to_string(), t.to_string())
}

/// A GET and a HEAD that declare bodies carrying whole requests, then a
/// victim's ordinary GET: the origin must see three bodiless GETs, and the
/// victim's URL must hold the victim's answer.
async fn smuggled_bodies_are_not_sent_upstream(s: &Setup) {
    let edge = s.edge.addr;
    let smuggled = "GET /poison HTTP/1.1\r\nHost: s.test\r\n\r\n";
    let attack = format!(
        "GET /a HTTP/1.1\r\nHost: s.test\r\nContent-Length: {n}\r\n\r\n{smuggled}\
         HEAD /h HTTP/1.1\r\nHost: s.test\r\nContent-Length: {n}\r\n\r\n{smuggled}",
        n = smuggled.len()
    );
    let answers = exchange(edge, attack.as_bytes(), 2, &[false, true], WAIT).await.unwrap();
    assert_eq!(answers.len(), 2, "both requests answered");
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[0].body, answer_body("GET", "/a").as_bytes());
    assert_eq!(answers[1].status, 200);
    let victim = exchange(edge, b"GET /victim HTTP/1.1\r\nHost: s.test\r\n\r\n", 1, &[], WAIT).await.unwrap();
    assert_eq!(victim[0].body, answer_body("GET", "/victim").as_bytes(), "the victim gets its own answer");
    // Again, from the cache: what was stored is the victim's answer too.
    let again = exchange(edge, b"GET /victim HTTP/1.1\r\nHost: s.test\r\n\r\n", 1, &[], WAIT).await.unwrap();
    assert_eq!(again[0].body, answer_body("GET", "/victim").as_bytes());
    assert!(again[0].header("cache-status").is_some_and(|c| c.ends_with("hit") || c.contains("; hit")));

    let reqs = parsed(&s.origin);
    assert_eq!(targets(&reqs), vec![pair("GET", "/a"), pair("GET", "/h"), pair("GET", "/victim")]);
    for r in &reqs {
        assert!(r.body.is_empty(), "{} {} carried a body upstream", r.method, r.target);
        assert!(r.header("content-length").is_empty(), "{} {} declared a length upstream", r.method, r.target);
        assert!(r.header("transfer-encoding").is_empty());
    }
}

/// Requests whose bodies do go upstream arrive with exactly those bytes, by
/// length or chunked, and the next request on the connection stays whole.
async fn forwarded_bodies_arrive_whole(s: &Setup) {
    s.origin.clear();
    let edge = s.edge.addr;
    let req = "POST /p HTTP/1.1\r\nHost: s.test\r\nContent-Length: 5\r\n\r\nhello\
               PUT /q HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
               POST /empty HTTP/1.1\r\nHost: s.test\r\nContent-Length: 0\r\n\r\n\
               DELETE /d HTTP/1.1\r\nHost: s.test\r\nExpect: 100-continue\r\n\r\n\
               GET /after HTTP/1.1\r\nHost: s.test\r\n\r\n";
    let answers = exchange(edge, req.as_bytes(), 5, &[], WAIT).await.unwrap();
    assert_eq!(answers.iter().map(|a| a.status).collect::<Vec<_>>(), vec![200; 5]);
    let reqs = parsed(&s.origin);
    assert_eq!(
        targets(&reqs),
        vec![
            pair("POST", "/p"),
            pair("PUT", "/q"),
            pair("POST", "/empty"),
            pair("DELETE", "/d"),
            pair("GET", "/after")
        ]
    );
    assert_eq!(reqs[0].body, b"hello");
    assert_eq!(reqs[0].header("content-length"), vec!["5"]);
    assert_eq!(reqs[1].body, b"abcde");
    assert_eq!(reqs[2].header("content-length"), vec!["0"]);
    assert!(reqs[3].header("expect").is_empty(), "Expect was answered here, not passed on");
    assert!(reqs[4].body.is_empty() && reqs[4].header("content-length").is_empty());
}

/// The same over HTTP/2: a GET whose DATA frames carry a request.
async fn http2_bodies_are_not_sent_upstream(s: &Setup) {
    s.origin.clear();
    // HTTP/2 names the host in `:authority`, so the URL carries the site's.
    let tcp = tokio::net::TcpStream::connect(s.edge.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let send = |method: Method, path: &str, body: &'static [u8]| {
        let mut req = Request::builder().method(method).uri(format!("http://s.test{path}"));
        if !body.is_empty() {
            req = req.header("content-length", body.len());
        }
        let req = req.body(Full::new(Bytes::from_static(body))).unwrap();
        let mut sender = sender.clone();
        async move {
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status();
            (status, resp.into_body().collect().await.unwrap().to_bytes())
        }
    };
    let smuggled = b"GET /poison2 HTTP/1.1\r\nHost: s.test\r\n\r\n";
    let (status, body) = send(Method::GET, "/h2a", smuggled).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, answer_body("GET", "/h2a").as_bytes()));
    let (status, _) = send(Method::HEAD, "/h2h", smuggled).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = send(Method::GET, "/h2victim", b"").await;
    assert_eq!(&body[..], answer_body("GET", "/h2victim").as_bytes());
    let (_, body) = send(Method::POST, "/h2post", b"12345").await;
    assert_eq!(&body[..], answer_body("POST", "/h2post").as_bytes());
    let reqs = parsed(&s.origin);
    assert_eq!(
        targets(&reqs),
        vec![pair("GET", "/h2a"), pair("GET", "/h2h"), pair("GET", "/h2victim"), pair("POST", "/h2post")]
    );
    assert!(reqs[..3].iter().all(|r| r.body.is_empty() && r.header("content-length").is_empty()));
    assert_eq!(reqs[3].body, b"12345");
}

async fn check(path: Path) {
    let s = setup(path).await;
    smuggled_bodies_are_not_sent_upstream(&s).await;
    forwarded_bodies_arrive_whole(&s).await;
    http2_bodies_are_not_sent_upstream(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_bytes_reach_another_request_from_an_edge() {
    check(Path::EdgeDirect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_bytes_reach_another_request_through_a_shield() {
    check(Path::ThroughShield).await;
}
