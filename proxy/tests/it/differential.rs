//! Differential fuzzing of the request path: random request heads and
//! bodies, valid and hostile (conflicting or malformed framing, bad hosts,
//! bodies that hold requests, pipelining), sent as raw bytes through an
//! edge to an origin that reads requests byte by byte, as nginx does.
//!
//! What the origin receives must parse, and be the requests a correct
//! HTTP/1.1 reader makes of the client's bytes, in order, each with its own
//! method (HEAD is fetched as GET), target and body (none for GET and HEAD):
//! a subsequence, since the edge refuses some and answers others from
//! cache. No request's bytes may ever reach another request upstream.
//!
//! `OUTPOST_FUZZ_CASES` sets how many cases run (default 1000); each run
//! prints how many it ran and what became of the requests.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use outpost_load::raw::{RawOrigin, Received, Rest, Stream, exchange, parse_stream};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::harness::*;

/// How a generated request frames its body.
#[derive(Debug, Clone)]
enum Framing {
    None,
    /// `Content-Length` off by this much from the body's real length.
    Length(i64),
    /// A `Content-Length` value written as given.
    LengthText(&'static str),
    /// Two `Content-Length` fields.
    TwoLengths(i64),
    /// `Transfer-Encoding` with this value, the body chunked when it names
    /// chunked last.
    Chunked(&'static str),
    /// Both, in either order.
    Both(bool),
}

#[derive(Debug, Clone)]
struct Gen {
    method: &'static str,
    suffix: &'static str,
    http10: bool,
    host: Option<&'static str>,
    extra: Vec<(&'static str, &'static str)>,
    framing: Framing,
    body: Vec<u8>,
    /// A chunk-size line ending in a bare LF, or an extension.
    odd_chunks: bool,
}

fn gen_request() -> impl Strategy<Value = Gen> {
    let method = prop::sample::select(vec!["GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "FOO"]);
    let suffix = prop::sample::select(vec!["", "", "?q=1", "/x", "/%7Eu", "/a/../b", "?a=1&b=2", "/%zz"]);
    let host = prop::sample::select(vec![
        Some("t.test"),
        Some("t.test"),
        Some("T.TEST."),
        Some("t.test:80"),
        None,
        Some("evil/.t.test"),
        Some("other.test"),
    ]);
    let extra = prop::collection::vec(
        prop::sample::select(vec![
            ("Expect", "100-continue"),
            ("Connection", "keep-alive"),
            ("Connection", "close"),
            ("Connection", "content-length"),
            ("X-Forwarded-Host", "evil.test"),
            ("Upgrade", "websocket"),
            ("Accept", "*/*"),
            ("Cache-Control", "no-store"),
            ("Range", "bytes=0-1"),
            ("X-Fold", "a\r\n b"),
            ("Host", "t.test"),
            ("Content-Length ", "1"),
        ]),
        0..3,
    );
    let framing = prop_oneof![
        3 => Just(Framing::None),
        4 => (-3i64..=3).prop_map(|d| Framing::Length(if d.abs() == 3 { d * 7 } else { 0 })),
        1 => prop::sample::select(vec!["+3", "3, 3", " 3", "3 ", "-1", "abc", "0x3", "99999999999999999999"])
            .prop_map(Framing::LengthText),
        1 => (-2i64..=2).prop_map(Framing::TwoLengths),
        3 => prop::sample::select(vec!["chunked", "chunked", "Chunked", "gzip, chunked", "chunked, gzip", "identity", " chunked"])
            .prop_map(Framing::Chunked),
        1 => any::<bool>().prop_map(Framing::Both),
    ];
    let body = prop_oneof![
        2 => Just(Vec::new()),
        2 => prop::collection::vec(prop::sample::select(b"abcxyz019\r\n :".to_vec()), 0..40),
        // A whole request: legitimate where a correct reader sees it as
        // the next request, smuggled anywhere else.
        2 => Just(b"GET /d/CASE/99 HTTP/1.1\r\nHost: t.test\r\n\r\n".to_vec()),
    ];
    (method, suffix, any::<u8>(), host, extra, framing, body, any::<bool>()).prop_map(
        |(method, suffix, v, host, extra, framing, body, odd_chunks)| Gen {
            method,
            suffix,
            http10: v < 20,
            host,
            extra,
            framing,
            body,
            odd_chunks,
        },
    )
}

/// The bytes of one request; its target is `/d/<case>/<index><suffix>`.
fn render(g: &Gen, case: u64, index: usize) -> Vec<u8> {
    let mut head = format!("{} /d/{case}/{index}{} HTTP/1.{}\r\n", g.method, g.suffix, if g.http10 { 0 } else { 1 });
    if let Some(h) = g.host {
        let _ = write!(head, "Host: {h}\r\n");
    }
    for (k, v) in &g.extra {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    let own = String::from_utf8_lossy(&g.body).replace("CASE", &case.to_string()).into_bytes();
    let len = own.len() as i64;
    let mut body = own.clone();
    match &g.framing {
        Framing::None => {}
        Framing::Length(d) => {
            let _ = write!(head, "Content-Length: {}\r\n", (len + d).max(0));
        }
        Framing::LengthText(t) => {
            let _ = write!(head, "Content-Length: {t}\r\n");
        }
        Framing::TwoLengths(d) => {
            let _ = write!(head, "Content-Length: {len}\r\nContent-Length: {}\r\n", (len + d).max(0));
        }
        Framing::Chunked(te) => {
            let _ = write!(head, "Transfer-Encoding: {te}\r\n");
            if te.trim().to_ascii_lowercase().ends_with("chunked") {
                body = chunked(&own, g.odd_chunks);
            }
        }
        Framing::Both(te_first) => {
            let (cl, te) = (format!("Content-Length: {len}\r\n"), "Transfer-Encoding: chunked\r\n");
            head.push_str(if *te_first { te } else { &cl });
            head.push_str(if *te_first { &cl } else { te });
            body = chunked(&own, g.odd_chunks);
        }
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    out
}

fn chunked(body: &[u8], odd: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(7) {
        let eol: &[u8] = if odd { b";x=1\n" } else { b"\r\n" };
        out.extend_from_slice(format!("{:x}", piece.len()).as_bytes());
        out.extend_from_slice(eol);
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The case and index a target names, if it is one of ours.
fn id_of(target: &str) -> Option<(usize, usize)> {
    let rest = target.strip_prefix("/d/")?;
    let (case, rest) = rest.split_once('/')?;
    let index = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    Some((case.parse().ok()?, index.parse().ok()?))
}

/// A case as a correct reader sees it: its bytes, the requests in them, how
/// they end, and how far the origin's requests have matched.
struct Case {
    bytes: Vec<u8>,
    reference: Stream,
    /// Reference requests the origin's have matched so far.
    next: usize,
}

#[derive(Debug, Default)]
struct Tally {
    cases: u64,
    sent: u64,
    forwarded: u64,
    partial: u64,
}

/// Checks what the origin received against what a correct reader makes of
/// the client's bytes, case by case (a request can arrive after its case's
/// client has gone, so each is checked against its own case).
fn check(cases: &mut [Case], r: &Received, tally: &mut Tally) -> Result<(), TestCaseError> {
    match r {
        Received::Request(o) => {
            let Some((c, id)) = id_of(&o.target).filter(|(c, _)| *c < cases.len()) else {
                return Err(TestCaseError::fail(format!("the origin got a request no client sent: {o:?}")));
            };
            let case = &mut cases[c];
            // The reference request with this id, after the last matched.
            let requests = &case.reference.requests;
            let found = requests[case.next..].iter().position(|x| id_of(&x.target) == Some((c, id)));
            // A GET or HEAD is fetched on its head: its body may never come,
            // or not parse, and it still goes up (without it).
            let unfinished = case.reference.unfinished.as_ref().filter(|h| id_of(&h.target) == Some((c, id)));
            if let (None, Some(h)) = (found, unfinished) {
                prop_assert!(h.method == "GET" || h.method == "HEAD", "{} forwarded without its body", h.target);
                prop_assert_eq!(&o.method, "GET");
                prop_assert!(o.body.is_empty() && o.header("content-length").is_empty());
                case.next = requests.len();
                tally.forwarded += 1;
                return Ok(());
            }
            let Some(at) = found else {
                return Err(TestCaseError::fail(format!(
                    "the origin got {} {} with {:?}, which a correct reader does not see (or not in this order) in {:?}",
                    o.method,
                    o.target,
                    String::from_utf8_lossy(&o.body),
                    String::from_utf8_lossy(&case.bytes)
                )));
            };
            let x = &requests[case.next + at];
            case.next += at + 1;
            let cacheable = x.method == "GET" || x.method == "HEAD";
            let method = if x.method == "HEAD" { "GET" } else { x.method.as_str() };
            prop_assert_eq!(&o.method, method, "method of {}", x.target);
            let want: &[u8] = if cacheable { &[] } else { &x.body };
            prop_assert_eq!(&o.body[..], want, "body of {} {}", x.method, x.target);
            if cacheable {
                prop_assert!(o.header("content-length").is_empty(), "a GET went up with a length");
            }
            tally.forwarded += 1;
        }
        Received::Malformed { reason, bytes, .. } => {
            // A request cut off upstream (its client left, or never sent
            // all of its body): harmless when it is the start of a request
            // a correct reader sees the client send. Anything else is a
            // desync.
            let partial = parse_stream(bytes);
            let head = partial.unfinished.as_ref().filter(|_| partial.rest == Rest::Incomplete);
            let id = head.and_then(|h| id_of(&h.target));
            let case = id.and_then(|(c, _)| cases.get(c));
            let sent = case.is_some_and(|c| {
                let r = &c.reference;
                r.requests
                    .iter()
                    .chain(&r.unfinished)
                    .any(|x| id_of(&x.target) == id && Some(&x.method) == head.map(|h| &h.method))
            });
            prop_assert!(
                reason.contains("closed inside a request") && sent,
                "the origin read bytes that are no request ({}): {:?}; the client sent {:?}",
                reason,
                String::from_utf8_lossy(bytes),
                case.map(|c| String::from_utf8_lossy(&c.bytes))
            );
            tally.partial += 1;
        }
    }
    Ok(())
}

#[test]
fn what_reaches_the_origin_is_exactly_what_the_edge_accepted() {
    let total: u32 = std::env::var("OUTPOST_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (origin, edge) = rt.block_on(async {
        let origin = RawOrigin::start().await.unwrap();
        let edge = Edge::start(dir.path(), &site_toml(origin.addr(), DEFAULT_RULES)).await;
        (origin, edge)
    });
    // Records are checked as they arrive, which may be after their case
    // (a request cut off when its client left): a failure names its case's
    // bytes itself, and shrinking would blame whichever case ran last.
    let config = Config { cases: total, failure_persistence: None, max_shrink_iters: 0, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let state = std::cell::RefCell::new((Vec::<Case>::new(), 0usize, Tally::default()));
    let started = Instant::now();
    let result = runner.run(&prop::collection::vec(gen_request(), 1..4), |reqs| {
        let mut guard = state.borrow_mut();
        let (cases, seen, tally) = &mut *guard;
        let case = cases.len();
        let mut stream = Vec::new();
        for (i, g) in reqs.iter().enumerate() {
            stream.extend_from_slice(&render(g, case as u64, i));
        }
        cases.push(Case { reference: parse_stream(&stream), bytes: stream.clone(), next: 0 });
        let heads: Vec<bool> = reqs.iter().map(|g| g.method == "HEAD").collect();
        // Everything is sent at once; the edge answers, refuses (and
        // closes), or waits for body bytes that never come.
        let _ = rt.block_on(exchange(edge.addr, &stream, reqs.len(), &heads, Duration::from_secs(1)));
        tally.cases += 1;
        tally.sent += reqs.len() as u64;
        let received = origin.received();
        for r in &received[*seen..] {
            check(cases, r, tally)?;
        }
        *seen = received.len();
        Ok(())
    });
    // Stragglers: requests cut off when their clients left.
    std::thread::sleep(Duration::from_millis(300));
    let (mut cases, seen, mut tally) = state.into_inner();
    let late = origin.received();
    let late_result = late[seen..].iter().try_for_each(|r| check(&mut cases, r, &mut tally));
    println!(
        "differential: {} cases, {} requests sent, {} reached the origin whole, {} cut off with their client, in {:.1} s",
        tally.cases,
        tally.sent,
        tally.forwarded,
        tally.partial,
        started.elapsed().as_secs_f64()
    );
    drop(edge);
    if let Err(e) = result {
        panic!("{e}");
    }
    if let Err(e) = late_result {
        panic!("{e}");
    }
    assert!(tally.forwarded > 0 && tally.sent > tally.forwarded, "cases must both reach the origin and be refused");
}
