//! Hits the listener answers at once (fresh copies the memory tier holds),
//! against the same hits answered through hyper: the same status, fields
//! and bytes, in every shape a hit takes. Fields are compared as HTTP
//! compares them: in order within a name, in any order across names.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::harness::*;

type Answer = (String, Vec<(String, String)>, Vec<u8>);
/// A method, a target and request fields.
type Case<'a> = (&'static str, &'static str, Vec<(&'static str, &'a str)>);

/// `method path` with `headers`, in one write, or (`split`) in two with a
/// pause between, which the listener hands to hyper.
fn ask(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], split: bool) -> Answer {
    let fields: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    ask_raw(addr, &format!("{method} {path} HTTP/1.1\r\nHost: t.test\r\n{fields}\r\n"), split)
}

/// [`ask`] with the request's head as it is sent.
fn ask_raw(addr: SocketAddr, request: &str, split: bool) -> Answer {
    let method = request.split(' ').next().unwrap_or_default();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if split {
        s.write_all(&request.as_bytes()[..8]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(&request.as_bytes()[8..]).unwrap();
    } else {
        s.write_all(request.as_bytes()).unwrap();
    }
    let (status, mut fields, mut body) = read_response(&mut BufReader::new(&mut s), method == "HEAD");
    // What the clock says may differ by a second.
    fields.retain(|(k, _)| k != "date" && k != "age");
    // A multipart boundary is drawn at random for each answer.
    for (k, v) in &mut fields {
        if k == "content-type"
            && let Some(at) = v.find("boundary=")
        {
            let boundary = v[at + "boundary=".len()..].to_string();
            let text = String::from_utf8_lossy(&body).replace(&boundary, "BOUNDARY");
            body = text.into_bytes();
            v.replace_range(at.., "boundary=BOUNDARY");
        }
    }
    // Stable: the values of one name keep their order.
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in &mut fields {
        if k == "cache-status"
            && let Some(at) = v.find("ttl=")
        {
            let end = v[at..].find(';').map_or(v.len(), |e| at + e);
            v.replace_range(at..end, "ttl=-");
        }
    }
    (status, fields, body)
}

/// The host of a request the listener reads is taken as hyper's path takes
/// it: in any case, with a trailing dot, from an absolute-form target over
/// the `Host` field, and a second `Host` refused alike. Each spelling is
/// asked through hyper until it hits, then at once: the answers match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_read_at_once_as_hyper_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    let addr = edge.addr;
    let heads = [
        ("GET /d/h?size=64 HTTP/1.1\r\nHost: t.test\r\n\r\n", "200"),
        ("GET /d/h?size=64 HTTP/1.1\r\nHost: T.TEST.\r\n\r\n", "200"),
        ("GET http://t.test/d/h?size=64 HTTP/1.1\r\nHost: localhost\r\n\r\n", "200"),
        ("GET /d/h?size=64 HTTP/1.1\r\nHost: localhost\r\n\r\n", "200"),
        ("GET /d/h?size=64 HTTP/1.1\r\nHost: t.test\r\nHost: localhost\r\n\r\n", "400"),
        ("GET /d/h?size=64 HTTP/1.1\r\nHost: other.test\r\n\r\n", "421"),
    ];
    for (head, status) in heads {
        let (hyper, ours) = tokio::task::spawn_blocking(move || {
            ask_raw(addr, head, true);
            (ask_raw(addr, head, true), ask_raw(addr, head, false))
        })
        .await
        .unwrap();
        assert_eq!((&ours.0, &ours.1), (&hyper.0, &hyper.1), "{head:?}");
        assert!(ours.2 == hyper.2, "{head:?}: the bodies differ");
        assert!(ours.0.starts_with(&format!("HTTP/1.1 {status} ")), "{head:?}: {}", ours.0);
        if status == "200" {
            assert!(header(&ours.1, "cache-status").contains("; hit"), "{head:?}: {ours:?}");
        }
    }
    // The first three are one object, the fourth another.
    assert_eq!(origin.count("/d/h").await, 2);
}

#[test]
fn hits_answered_at_once_are_the_hits_hyper_answers() {
    with_metrics_in_own_process("direct::hits_answered_at_once_are_the_hits_hyper_answers", compare);
}

async fn compare() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    // Rules that set a field the origin sends, set one it does not, and
    // remove one.
    let rules =
        "[headers]\nset = { \"x-powered-by\" = \"edge\", \"x-served-by\" = \"outpost\" }\nremove = [\"x-drop\"]\n";
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, &format!("{DEFAULT_RULES}{rules}"))).await;
    let direct = || metric(&edge, "outpost_requests_answered_directly_total{node=\"edge-test\"}");
    let plain = "/d/plain?size=3000";
    let etag = edge.get(plain).await.headers.get("etag").unwrap().to_str().unwrap().to_string();
    let text = "/d/text.txt?text=1&size=5000";
    // Fields for the edge to drop (CDN-only, and by the rules), to replace
    // and to keep.
    let ruled =
        "/d/ruled?size=700&keys=k1&tags=t1&header=x-drop:1&header=x-powered-by:origin&header=x-kept:1&header=age:5";
    let cases: Vec<Case<'_>> = vec![
        ("GET", plain, vec![]),
        ("HEAD", plain, vec![]),
        ("GET", plain, vec![("if-none-match", etag.as_str())]),
        ("GET", plain, vec![("range", "bytes=10-99")]),
        ("GET", plain, vec![("range", "bytes=0-9,20-29")]),
        ("GET", plain, vec![("range", "bytes=5000-")]),
        ("GET", text, vec![]),
        ("GET", text, vec![("accept-encoding", "gzip")]),
        ("GET", text, vec![("accept-encoding", "br;q=1, gzip;q=0.5")]),
        ("HEAD", text, vec![("accept-encoding", "zstd")]),
        ("GET", "/d/vary?size=100&vary=Accept-Language", vec![("accept-language", "en")]),
        ("GET", "/d/listed.txt?text=1&size=5000&vary=Accept-Encoding", vec![("accept-encoding", "gzip")]),
        ("GET", ruled, vec![]),
        ("HEAD", ruled, vec![]),
        ("GET", ruled, vec![("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT")]),
    ];
    let addr = edge.addr;
    for (method, path, headers) in cases {
        let owned: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let before = tokio::task::spawn_blocking({
            let owned = owned.clone();
            move || {
                let h: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                // Stored, and its coding made, through hyper.
                ask(addr, method, path, &h, true);
                ask(addr, method, path, &h, true)
            }
        })
        .await
        .unwrap();
        assert!(header(&before.1, "cache-status").contains("; hit"), "{method} {path} {headers:?}: {before:?}");
        let counted = direct().await;
        let asking = move |split| {
            let owned = owned.clone();
            tokio::task::spawn_blocking(move || {
                let h: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                ask(addr, method, path, &h, split)
            })
        };
        let ours = asking(false).await.unwrap();
        // Counted before the split request: a late reader could take its
        // two writes as one, and answer it at once too.
        assert_eq!(direct().await, counted + 1.0, "{method} {path} {headers:?} was answered at once, once");
        let again = asking(true).await.unwrap();
        for theirs in [again, before] {
            assert_eq!((&ours.0, &ours.1), (&theirs.0, &theirs.1), "{method} {path} {headers:?}");
            assert!(ours.2 == theirs.2, "{method} {path} {headers:?}: the bodies differ");
        }
    }
    assert_eq!(origin.count("/d/plain").await, 1);
    // Both ways, the rules held.
    let (_, fields, _) = tokio::task::spawn_blocking(move || ask(addr, "GET", ruled, &[], false)).await.unwrap();
    for (name, value) in
        [("x-powered-by", "edge"), ("x-served-by", "outpost"), ("x-kept", "1"), ("accept-ranges", "bytes")]
    {
        assert_eq!(header(&fields, name), value, "{name}: {fields:?}");
    }
    for gone in ["x-drop", "surrogate-key", "cache-tag"] {
        assert!(fields.iter().all(|(k, _)| k != gone), "{gone}: {fields:?}");
    }
    // The copy keeps its hits' fields, made under the rules of the site
    // as it was: new rules reach its next hit.
    let rules = "[headers]\nset = { \"x-served-by\" = \"reloaded\" }\nremove = [\"x-kept\"]\n";
    let site: outpost_config::Site = site_toml(origin.addr, &format!("{DEFAULT_RULES}{rules}")).parse().unwrap();
    edge.engine.set_sites(vec![site]);
    let counted = direct().await;
    let (_, fields, _) = tokio::task::spawn_blocking(move || ask(addr, "GET", ruled, &[], false)).await.unwrap();
    assert_eq!(direct().await, counted + 1.0, "answered at once");
    assert!(header(&fields, "cache-status").contains("; hit"), "{fields:?}");
    for (name, value) in [("x-powered-by", "origin"), ("x-served-by", "reloaded"), ("x-drop", "1")] {
        assert_eq!(header(&fields, name), value, "{name}: {fields:?}");
    }
    assert!(fields.iter().all(|(k, _)| k != "x-kept"), "{fields:?}");
    // And which types the site compresses: the text copy, whose gzip was
    // made, is now sent as it is.
    let ask_gzip = move || ask(addr, "GET", text, &[("accept-encoding", "gzip")], false);
    let (_, fields, _) = tokio::task::spawn_blocking(ask_gzip).await.unwrap();
    assert_eq!(header(&fields, "content-encoding"), "gzip", "{fields:?}");
    let compress = "[compress]\ntypes = [\"image/*\"]\n";
    let site: outpost_config::Site = site_toml(origin.addr, &format!("{DEFAULT_RULES}{compress}")).parse().unwrap();
    edge.engine.set_sites(vec![site]);
    let (_, fields, body) = tokio::task::spawn_blocking(ask_gzip).await.unwrap();
    assert!(fields.iter().all(|(k, _)| k != "content-encoding" && k != "vary"), "{fields:?}");
    assert_eq!(body.len(), 5000);
}

#[test]
fn early_hints_go_before_an_answer_that_waits_and_never_before_one_at_once() {
    with_metrics_in_own_process(
        "direct::early_hints_go_before_an_answer_that_waits_and_never_before_one_at_once",
        early_hints,
    );
}

async fn early_hints() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    // The first rule that matches wins: `/page/plain` never gets the
    // second's.
    let hints = "[[early_hints]]\npattern = \"/page/*\"\n\
                 link = [\"</app.css>; rel=preload; as=style\", \"<https://img.t.test>; rel=preconnect\"]\n\
                 [[early_hints]]\npattern = \"/page/plain\"\nlink = [\"</never.css>; rel=preload\"]\n";
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, &format!("{DEFAULT_RULES}{hints}"))).await;
    let addr = edge.addr;
    let get = |target: &str, version: &str| format!("GET {target} {version}\r\nHost: t.test\r\n\r\n");
    let slow = "/page/plain?size=100&delay=600ms";
    let (miss, hit, head, unmatched, old, dotted) = tokio::task::spawn_blocking(move || {
        (
            exchange(addr, &get(slow, "HTTP/1.1")),
            exchange(addr, &get(slow, "HTTP/1.1")),
            exchange(addr, "HEAD /page/head?size=10&delay=100ms HTTP/1.1\r\nHost: t.test\r\n\r\n"),
            exchange(addr, &get("/other?size=10", "HTTP/1.1")),
            exchange(addr, &get("/page/old?size=10", "HTTP/1.0")),
            // Matched as `[[cache.path]]` rules are: on the normalised path.
            exchange(addr, &get("/x/../page/dotted?size=10", "HTTP/1.1")),
        )
    })
    .await
    .unwrap();

    assert_eq!(miss.status, "HTTP/1.1 200 OK");
    assert_eq!(miss.interim.len(), 1, "one 103 before the miss's answer");
    let (status, fields) = &miss.interim[0];
    assert_eq!(status, "HTTP/1.1 103 Early Hints");
    let links: Vec<&str> = fields.iter().filter(|(k, _)| k == "link").map(|(_, v)| v.as_str()).collect();
    assert_eq!(links, ["</app.css>; rel=preload; as=style", "<https://img.t.test>; rel=preconnect"]);
    assert_eq!(fields.len(), 2, "only the rule's links: {fields:?}");
    // Sent when the edge found it could not answer at once, not with the
    // origin's answer 600 ms later.
    let at = miss.interim_at.unwrap();
    assert!(at + Duration::from_millis(300) < miss.final_at, "103 at {at:?}, the answer at {:?}", miss.final_at);

    assert_eq!(hit.status, "HTTP/1.1 200 OK");
    assert!(hit.interim.is_empty(), "a hit answered at once needs no hints");
    for (what, x) in [("HEAD", &head), ("a path no rule matches", &unmatched), ("HTTP/1.0", &old)] {
        assert!(x.status.ends_with(" 200 OK"), "{what}: {}", x.status);
        assert!(x.interim.is_empty(), "{what} gets no 103");
    }
    assert_eq!(dotted.interim.len(), 1, "/x/../page/dotted is /page/dotted");
    assert_eq!(origin.count("/page/plain").await, 1);

    // A client that pipelines a hinted miss, a hit and another miss in one
    // write: the 103 goes before the first answer, and every answer after
    // it is whole and in order (no byte of the stream is lost or moved).
    let answers = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let three = ["/page/piped?size=70&delay=100ms", slow, "/other/piped?size=90"];
        s.write_all(three.map(|t| get(t, "HTTP/1.1")).concat().as_bytes()).unwrap();
        let mut r = BufReader::new(&mut s);
        (0..4).map(|_| read_response(&mut r, false)).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let shape: Vec<(&str, usize)> = answers.iter().map(|(status, _, body)| (status.as_str(), body.len())).collect();
    assert_eq!(
        shape,
        [("HTTP/1.1 103 Early Hints", 0), ("HTTP/1.1 200 OK", 70), ("HTTP/1.1 200 OK", 100), ("HTTP/1.1 200 OK", 90)]
    );
    assert_eq!(header(&answers[0].1, "link"), "</app.css>; rel=preload; as=style");
    assert_eq!(metric(&edge, "outpost_early_hints_sent_total{node=\"edge-test\"}").await, 3.0);
}
