//! Large hits sent by the kernel from the cache's memfds: the bytes a
//! client gets are the origin's, whatever the framing (whole, ranges,
//! several ranges, HEAD, pipelined, HTTP/2), and a client that stops
//! reading is still cut off.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Empty};

use crate::harness::*;

fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

/// The bytes `start..end` of the origin's body for `path`, of `len` bytes.
fn origin_bytes(path: &str, len: usize) -> Vec<u8> {
    outpost_load::content::bytes(outpost_load::content::seed(path, 0, &[]), 0, len)
}

fn sent_from_files(text: &str) -> u64 {
    counter(text, "outpost_sendfile_bytes_total", "")
}

async fn metrics(edge: &Edge) -> String {
    let m = send(Method::GET, &format!("http://{}/metrics", edge.admin), &[]).await;
    String::from_utf8_lossy(&m.body).into_owned()
}

/// Reads the process's metrics, so it runs in a process of its own.
#[test]
fn large_hits_are_sent_from_files_byte_for_byte() {
    with_metrics_in_own_process("sendfile::large_hits_are_sent_from_files_byte_for_byte", large_hits);
}

async fn large_hits() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    // One body inline (one memfd), one in chunks (a memfd each: the last
    // is large enough for one too).
    let objects = [("/one", 300 << 10), ("/chunks", (2 << 20) + 100_000)];
    for (path, len) in objects {
        let r = edge.get(&format!("{path}?size={len}&cc=max-age%3D600")).await;
        assert_eq!(r.body.len(), len);
        assert_origin_bytes(path, &r.body);
    }
    let before = sent_from_files(&metrics(&edge).await);
    let addr = edge.addr;
    let sent = tokio::task::spawn_blocking(move || {
        let mut sent = 0;
        for (path, len) in objects {
            sent += check_framings(addr, path, len);
        }
        sent
    })
    .await
    .unwrap();
    // The bytes are counted as each sendfile returns, so the client can
    // hold the last of them a moment before they are.
    crate::harness::eventually("the last sendfile counted", || async {
        sent_from_files(&metrics(&edge).await) - before >= sent
    })
    .await;
    let after = sent_from_files(&metrics(&edge).await);
    assert_eq!(after - before, sent, "every hit body byte went out by sendfile");
    assert_eq!(origin.count("/one").await + origin.count("/chunks").await, 2, "all hits");

    // HTTP/2 writes its own frames: the same bytes, none from files.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let url = format!("http://localhost:{}/chunks?size={}&cc=max-age%3D600", edge.addr.port(), objects[1].1);
    // Its own key (the authority names another host): a miss, then a hit.
    for want in ["miss", "hit"] {
        let resp = client.request(http::Request::get(&url).body(Empty::new()).unwrap()).await.unwrap();
        assert!(resp.headers()["cache-status"].to_str().unwrap().contains(want), "{:?}", resp.headers());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), objects[1].1);
        assert_origin_bytes("/chunks", &body);
    }
    assert_eq!(sent_from_files(&metrics(&edge).await), after, "HTTP/2 sends no file ranges");
}

/// Whole, HEAD, one range across a chunk boundary, two ranges, three, and
/// all of them pipelined on one connection; returns the body bytes asked for.
fn check_framings(addr: SocketAddr, path: &str, len: usize) -> u64 {
    let want = origin_bytes(path, len);
    let target = format!("{path}?size={len}&cc=max-age%3D600");
    let (a, b) = (len / 2 - 100, len / 2 + 100);
    // Across the first chunk's end when there are chunks, and then one
    // in a chunk at hand: each part's file range must go out in its turn
    // (a part sent whole from its chunk is not to overtake the one before
    // it, which streams).
    let (c, d) = (((1 << 20) - 10).min(len - 1000), len - 1);
    let (d2, e, f) = (c + 299, c + 400, c + 599);
    let requests = [
        format!("GET {target} HTTP/1.1\r\nHost: t.test\r\n\r\n"),
        format!("HEAD {target} HTTP/1.1\r\nHost: t.test\r\n\r\n"),
        format!("GET {target} HTTP/1.1\r\nHost: t.test\r\nRange: bytes={a}-{b}\r\n\r\n"),
        format!("GET {target} HTTP/1.1\r\nHost: t.test\r\nRange: bytes=0-9,{c}-{d}\r\n\r\n"),
        format!("GET {target} HTTP/1.1\r\nHost: t.test\r\nRange: bytes=0-9,{c}-{d2},{e}-{f}\r\n\r\n"),
        format!("GET {target} HTTP/1.1\r\nHost: t.test\r\n\r\n"),
    ];
    let (mut s, mut r) = connect(addr);
    // Pipelined: every request in one write before any answer is read.
    s.write_all(requests.concat().as_bytes()).unwrap();
    let (status, h, body) = read_response(&mut r, false);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(header(&h, "cache-status").contains("hit"), "{h:?}");
    assert!(body == want, "{path}: the whole body differs from the origin's");
    let (status, h, body) = read_response(&mut r, true);
    assert_eq!((status.as_str(), header(&h, "content-length"), body.len()), ("HTTP/1.1 200 OK", &*len.to_string(), 0));
    let (status, h, body) = read_response(&mut r, false);
    assert_eq!(status, "HTTP/1.1 206 Partial Content");
    assert_eq!(header(&h, "content-range"), format!("bytes {a}-{b}/{len}"));
    assert!(body == want[a..=b], "{path}: the range differs");
    let (status, h, body) = read_response(&mut r, false);
    assert_eq!(status, "HTTP/1.1 206 Partial Content");
    let boundary = header(&h, "content-type").split("boundary=").nth(1).unwrap().to_string();
    let parts = multipart_parts(&body, &boundary);
    assert_eq!(parts.len(), 2);
    assert!(parts[0] == want[..10] && parts[1] == want[c..=d], "{path}: the ranges differ");
    let (status, h, body) = read_response(&mut r, false);
    assert_eq!(status, "HTTP/1.1 206 Partial Content");
    let boundary = header(&h, "content-type").split("boundary=").nth(1).unwrap().to_string();
    let parts = multipart_parts(&body, &boundary);
    assert_eq!(parts.len(), 3);
    assert!(parts[0] == want[..10], "{path}: the first of three ranges differs");
    assert!(parts[1] == want[c..=d2], "{path}: the second of three ranges differs");
    assert!(parts[2] == want[e..=f], "{path}: the third of three ranges differs");
    let (status, _, body) = read_response(&mut r, false);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body == want, "{path}: the body after the others differs");
    (2 * len + (b - a + 1) + 10 + (d - c + 1) + 10 + (d2 - c + 1) + (f - e + 1)) as u64
}

/// The bodies of a `multipart/byteranges` payload.
fn multipart_parts(body: &[u8], boundary: &str) -> Vec<Vec<u8>> {
    let delimiter = format!("\r\n--{boundary}");
    let text = [b"\r\n", body].concat();
    let mut parts = Vec::new();
    let mut rest = &text[..];
    while let Some(at) = find(rest, delimiter.as_bytes()) {
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let start = find(rest, b"\r\n\r\n").unwrap() + 4;
        let end = find(&rest[start..], delimiter.as_bytes()).unwrap();
        parts.push(rest[start..start + end].to_vec());
    }
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_or_hangs_up_on_a_file_hit_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start_with(
        dir.path(),
        &site_toml(origin.addr, DEFAULT_RULES),
        "memory = \"64MiB\"\ndisk = \"128MiB\"",
        "[limits]\nsend_timeout = \"1s\"\n",
    )
    .await;
    let path = "/big?size=24MiB&cc=max-age%3D600";
    assert_eq!(edge.get(path).await.body.len(), 24 << 20);
    let request = format!("GET {path} HTTP/1.1\r\nHost: t.test\r\n\r\n");
    let addr = edge.addr;
    let got = tokio::task::spawn_blocking(move || {
        outpost_load::raw::read_after_stall(addr, request.as_bytes(), Duration::from_secs(4)).unwrap()
    })
    .await
    .unwrap();
    assert!(got < 20 << 20, "the stalled client was cut off, not sent 24 MiB ({got} bytes)");
    // A client that hangs up mid-body (unread bytes: a reset) ends only
    // its own send.
    let addr = edge.addr;
    tokio::task::spawn_blocking(move || {
        let (mut s, mut r) = connect(addr);
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t.test\r\n\r\n").as_bytes()).unwrap();
        let mut some = vec![0; 64 << 10];
        std::io::Read::read_exact(&mut r, &mut some).unwrap();
    })
    .await
    .unwrap();
    // And the node goes on sending files to others.
    let r = edge.get(path).await;
    assert_eq!(r.body.len(), 24 << 20);
    assert_origin_bytes("/big", &r.body);
}

/// The value of the metric `name` on the line that has `label` too.
fn counter(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |n| n.parse::<f64>().unwrap() as u64)
}

/// Bytes of `path` the page cache holds, as `fincore` reports them: it
/// asks without reading, where a read, even one that must not wait, starts
/// the disk reading ahead.
fn cached_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux-extra; scripts/deps.sh installs it)");
    assert!(out.status.success(), "fincore: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Drops every file under `dir` from the page cache; returns the files of
/// one of `sizes` (a body file holds just its chunk's bytes).
fn evict_files(dir: &std::path::Path, sizes: &[u64]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(evict_files(&path, sizes));
            continue;
        }
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        if sizes.contains(&f.metadata().unwrap().len()) {
            found.push(path);
        }
    }
    found
}

/// Reads the process's metrics, so it runs in a process of its own.
#[test]
fn a_disk_hit_whose_file_left_the_page_cache_is_read_off_the_runtime() {
    with_metrics_in_own_process(
        "sendfile::a_disk_hit_whose_file_left_the_page_cache_is_read_off_the_runtime",
        cold_disk_hit,
    );
}

/// GET `path` of `t.test` over HTTP/2 without TLS: its cache status and
/// body.
async fn get_h2(edge: SocketAddr, path: &str) -> (String, Bytes) {
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(edge).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://t.test{path}")).body(Empty::<Bytes>::new()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.headers()["cache-status"].to_str().unwrap().to_string();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

async fn cold_disk_hit() {
    const COLD: &str = "outpost_cold_file_ranges_total";
    let (by_sendfile, by_read) = ("path=\"sendfile\"", "path=\"read\"");
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    // Two chunks, each a body file of the disk tier's (a body up to a
    // chunk is stored inline with its head instead).
    let len = (1 << 20) + 300_000;
    let path = format!("/cold?size={len}&cc=max-age%3D600");
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    assert_eq!(edge.get(&path).await.body.len(), len);
    let warm = edge.get(&path).await;
    assert!(warm.headers["cache-status"].to_str().unwrap().contains("hit"), "{:?}", warm.headers);
    assert!(get_h2(edge.addr, &path).await.0.contains("hit"), "HTTP/2 asks for the same object");
    assert_eq!(counter(&metrics(&edge).await, COLD, ""), 0, "files the page cache holds are read at once");
    edge.stop().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;

    // Twice over: the page cache lets go of every file of the cache, then
    // HTTP/1 sends the body with sendfile, then HTTP/2 reads it into memory.
    let http1 = |target: String| {
        let addr = edge.addr;
        tokio::task::spawn_blocking(move || {
            let (mut s, mut r) = connect(addr);
            s.write_all(format!("GET {target} HTTP/1.1\r\nHost: t.test\r\n\r\n").as_bytes()).unwrap();
            let (status, h, body) = read_response(&mut r, false);
            (format!("{status}; {}", header(&h, "cache-status")), Bytes::from(body))
        })
    };
    for round in 1..=2 {
        for (by, label) in [("HTTP/1", by_sendfile), ("HTTP/2", by_read)] {
            // Each chunk's range is found cold and read off the runtime. The
            // question (a read that must not wait) starts the disk reading
            // ahead, and on a fast disk that read now and then ends before
            // the kernel looks: the range is then rightly found in memory.
            // So a request that found fewer cold ranges is made again.
            let mut found = Vec::new();
            for _ in 0..5 {
                // Again while a page comes back after the eviction: a read
                // of the round before may still be under way (readahead),
                // and would fill a file as this round's request is made.
                let mut files = Vec::new();
                for _ in 0..20 {
                    files = evict_files(&dir.path().join("cache"), &[1 << 20, 300_000]);
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    if files.iter().all(|f| cached_bytes(f) == 0) {
                        break;
                    }
                }
                assert_eq!(files.len(), 2, "a body file for each chunk: {files:?}");
                for f in &files {
                    assert_eq!(cached_bytes(f), 0, "{} left the page cache", f.display());
                }
                let before = counter(&metrics(&edge).await, COLD, label);
                let (status, body) = match by {
                    "HTTP/1" => http1(path.clone()).await.unwrap(),
                    _ => get_h2(edge.addr, &path).await,
                };
                assert!(status.contains("hit"), "{by}, round {round}: {status}");
                assert!(body == origin_bytes("/cold", len), "{by}, round {round}: the body differs from the origin's");
                found.push(counter(&metrics(&edge).await, COLD, label) - before);
                for f in &files {
                    let len = std::fs::metadata(f).unwrap().len();
                    assert!(cached_bytes(f) >= len, "{by}, round {round}: {} is in memory, whole", f.display());
                }
                if found.last() == Some(&2) {
                    break;
                }
            }
            assert_eq!(
                found.last(),
                Some(&2),
                "{by}, round {round}: a cold range for each chunk, read off the runtime first (cold ranges found by each try: {found:?})"
            );
            assert!(found.iter().all(|&n| n <= 2), "{by}, round {round}: no range counted twice: {found:?}");
        }
    }
    assert_eq!(origin.count("/cold").await, 1, "every later answer was a hit");
}

/// A body file of the disk tier cut short after a hit opened it (by a
/// hand, or a failing disk): the answer that meets the short file breaks
/// off (its length was promised), and the next request gets the whole
/// body again, fetched anew, rather than every answer breaking off until
/// the file is evicted. Over HTTP/1, whose body the kernel sends from the
/// file, and over HTTP/2, whose body is read into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_file_cut_short_after_it_was_opened_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let len = (1 << 20) + 300_000;
    // No validator, so the copy is fetched again whole rather than
    // finished by range.
    let path = format!("/short?size={len}&cc=max-age%3D600&etag=none&lm=none");
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    assert_eq!(edge.get(&path).await.body.len(), len);
    let whole = origin_bytes("/short", len);
    for (round, by) in ["HTTP/1", "HTTP/2"].into_iter().enumerate() {
        // A hit opens the body files, which the store then keeps open.
        let hit = edge.get(&path).await;
        assert!(hit.is_hit() && hit.body == whole, "{by}: {}", hit.cache_status());
        let files = evict_files(&dir.path().join("cache"), &[1 << 20]);
        assert_eq!(files.len(), 1, "{by}: the first chunk's file: {files:?}");
        std::fs::File::options().write(true).open(&files[0]).unwrap().set_len(4096).unwrap();
        let got = match by {
            "HTTP/1" => {
                let addr = edge.addr;
                let target = path.clone();
                tokio::task::spawn_blocking(move || {
                    use std::io::Read;
                    let (mut s, mut r) = connect(addr);
                    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: t.test\r\n\r\n").as_bytes()).unwrap();
                    let mut got = Vec::new();
                    let _ = r.read_to_end(&mut got);
                    got.len()
                })
                .await
                .unwrap()
            }
            _ => {
                let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(edge.addr).await.unwrap());
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
                tokio::spawn(conn);
                let req = http::Request::get(format!("http://t.test{path}")).body(Empty::<Bytes>::new()).unwrap();
                // Reset before its head or during its body, as the read
                // that meets the end comes first or later.
                match send.send_request(req).await {
                    Ok(resp) => resp.into_body().collect().await.map_or(0, |b| b.to_bytes().len()),
                    Err(_) => 0,
                }
            }
        };
        assert!(got < len, "{by}: the answer that met the short file breaks off ({got} bytes)");
        let again = edge.get(&path).await;
        assert!(again.cache_status().contains("fwd=uri-miss"), "{by}: fetched again: {}", again.cache_status());
        assert!(again.body == whole, "{by}: the whole body");
        assert_eq!(origin.count("/short").await, round as u64 + 2);
    }
}
