//! Representations: `Accept-Encoding` negotiation, compressed codings made
//! once from the stored copy, origin codings decoded for clients that
//! refuse them, validators and ranges per coding.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use http::{Method, StatusCode};
use outpost_net::coding::{self, Coding};

use crate::harness::*;

const TEXT: &str = "/t.txt?text=1&size=100KiB&cc=max-age%3D60";

fn text_of(path: &str, vary: &[&str]) -> Vec<u8> {
    let seed = outpost_load::content::seed(path, 0, vary);
    outpost_load::content::text(seed, 0, 100 << 10)
}

/// The body a client gets, decoded from its `Content-Encoding`.
fn decoded(r: &Resp) -> Vec<u8> {
    let c = Coding::of(&r.headers).expect("a coding Outpost knows");
    coding::decode(c, &r.body, 64 << 20).expect("a whole body in its coding")
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers.get(name).map_or("", |v| v.to_str().unwrap())
}

fn varies_on_accept_encoding(r: &Resp) -> bool {
    r.headers.get_all("vary").iter().any(|v| v.to_str().unwrap().to_ascii_lowercase().contains("accept-encoding"))
}

#[tokio::test]
async fn each_coding_is_made_once_and_decodes_to_the_origins_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::logging(dir.path(), origin.addr).await;
    let plain = text_of("/t.txt", &[]);

    let first = edge.get(TEXT).await;
    assert_eq!(first.body, plain, "a client that sends no Accept-Encoding gets identity");
    assert!(first.headers.get("content-encoding").is_none());
    assert!(varies_on_accept_encoding(&first), "the answer depends on Accept-Encoding");
    assert!(first.cache_status().ends_with("; coding=identity"), "{}", first.cache_status());
    let etag = header(&first, "etag").to_string();
    let sent = origin.last_request("/t.txt").await;
    assert_eq!(sent["accept-encoding"], "identity", "the origin is asked for the coding the client gets: {sent}");

    let mut bodies = HashMap::new();
    for (spelling, c) in
        [("gzip, deflate, br, zstd", Coding::Br), ("zstd, gzip;q=0.5", Coding::Zstd), ("x-gzip", Coding::Gzip)]
    {
        let r = edge.get_with(TEXT, &[("accept-encoding", spelling)]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(header(&r, "content-encoding"), c.token(), "{spelling}");
        assert_eq!(decoded(&r), plain, "{spelling}: decodes to the origin's bytes");
        assert!(r.body.len() * 3 < plain.len(), "{spelling}: {} bytes", r.body.len());
        assert_eq!(header(&r, "content-length"), r.body.len().to_string());
        assert_eq!(header(&r, "etag"), format!("{}-{}\"", &etag[..etag.len() - 1], c.token()), "an ETag of its own");
        assert!(varies_on_accept_encoding(&r));
        let cs = r.cache_status();
        assert!(
            cs.starts_with("edge-test; hit") && cs.ends_with(&format!("; coding={}; transformed", c.token())),
            "{cs}"
        );
        // Made once: the next request gets the stored bytes.
        let again = edge.get_with(TEXT, &[("accept-encoding", c.token())]).await;
        assert_eq!(again.body, r.body, "{spelling}: the same bytes from the store");
        // HEAD carries what GET does.
        let head = send(Method::HEAD, &edge.url(TEXT), &[("host", "t.test"), ("accept-encoding", c.token())]).await;
        for name in ["content-length", "content-encoding", "etag", "vary", "content-type"] {
            assert_eq!(
                head.headers.get_all(name).iter().collect::<Vec<_>>(),
                r.headers.get_all(name).iter().collect::<Vec<_>>(),
                "HEAD {name}"
            );
        }
        assert!(head.body.is_empty());
        bodies.insert(c, r.body);
    }
    assert_eq!(origin.count("/t.txt").await, 1, "one origin request for every coding");
    assert_eq!(bodies.len(), 3);

    let log = dir.path().join("access.log");
    let lines = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>()
    };
    eventually("the requests in the access log", || async { lines().len() >= 10 }).await;
    let lines = lines();
    assert_eq!(lines[0]["coding"], "identity");
    assert_eq!(lines[0].get("transformed"), None);
    assert!(lines.iter().any(|l| l["coding"] == "zstd" && l["transformed"] == true), "{lines:?}");
}

#[tokio::test]
async fn validators_and_ranges_belong_to_the_coding_sent() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    let br = edge.get_with(TEXT, &[("accept-encoding", "br")]).await;
    let br_tag = header(&br, "etag").to_string();
    let plain_tag = header(&edge.get(TEXT).await, "etag").to_string();
    assert_ne!(br_tag, plain_tag);

    let not_modified = edge.get_with(TEXT, &[("accept-encoding", "br"), ("if-none-match", &br_tag)]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(header(&not_modified, "etag"), br_tag);
    assert!(varies_on_accept_encoding(&not_modified));
    // Another coding's validator does not match these bytes.
    let gzip = edge.get_with(TEXT, &[("accept-encoding", "gzip"), ("if-none-match", &br_tag)]).await;
    assert_eq!(gzip.status, StatusCode::OK);
    assert_eq!(header(&gzip, "content-encoding"), "gzip");
    let other = edge.get_with(TEXT, &[("accept-encoding", "br"), ("if-none-match", &plain_tag)]).await;
    assert_eq!(other.status, StatusCode::OK, "identity's validator does not match the brotli bytes");
    assert_eq!(
        edge.get_with(TEXT, &[("if-none-match", &plain_tag)]).await.status,
        StatusCode::NOT_MODIFIED,
        "identity's own validator still works"
    );

    // A range is of the coding sent.
    let part =
        edge.get_with(TEXT, &[("accept-encoding", "br"), ("range", "bytes=100-1099"), ("if-range", &br_tag)]).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&part, "content-encoding"), "br");
    assert_eq!(header(&part, "content-range"), format!("bytes 100-1099/{}", br.body.len()));
    assert_eq!(part.body, br.body[100..1100]);
    let stale_range =
        edge.get_with(TEXT, &[("accept-encoding", "br"), ("range", "bytes=100-1099"), ("if-range", &plain_tag)]).await;
    assert_eq!(stale_range.status, StatusCode::OK, "If-Range with another coding's tag gets the whole body");
    assert_eq!(stale_range.body, br.body);
    assert_eq!(origin.count("/t.txt").await, 1);
}

#[tokio::test]
async fn a_miss_streams_the_bytes_it_will_store() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    // The body arrives in pieces; waiters that want another coding get it
    // recoded as it streams.
    let url = "/s.txt?text=1&size=100KiB&cc=max-age%3D60&chunk=8KiB&chunk_delay=5ms";
    let (a, b, c) = tokio::join!(
        edge.get_with(url, &[("accept-encoding", "br")]),
        edge.get_with(url, &[("accept-encoding", "gzip")]),
        edge.get(url),
    );
    assert_eq!(origin.count("/s.txt").await, 1, "one fetch for the three codings");
    let plain = text_of("/s.txt", &[]);
    for r in [&a, &b, &c] {
        assert_eq!(decoded(r), plain);
    }
    assert!(
        a.cache_status().contains("fwd=uri-miss") || a.cache_status().contains("collapsed"),
        "{}",
        a.cache_status()
    );
    let stored = edge.get_with(url, &[("accept-encoding", "br")]).await;
    assert!(stored.is_hit());
    assert_eq!(stored.body, a.body, "the streamed bytes are the stored bytes (one ETag, one representation)");
    assert_eq!(header(&stored, "etag"), header(&a, "etag"));
    assert_eq!(edge.get_with(url, &[("accept-encoding", "gzip")]).await.body, b.body);
}

#[tokio::test]
async fn what_must_not_or_need_not_be_compressed_is_sent_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    for (url, why) in [
        ("/n.txt?text=1&size=100KiB&cc=max-age%3D60,%20no-transform", "no-transform"),
        ("/i.png?text=1&size=100KiB&content_type=image/png", "not a compressible type"),
        ("/small.txt?text=1&size=500", "smaller than min_size"),
        ("/e.txt?text=1&size=100KiB&status=404", "not a 200"),
    ] {
        for _ in 0..2 {
            let r = edge.get_with(url, &[("accept-encoding", "br, gzip")]).await;
            assert!(r.headers.get("content-encoding").is_none(), "{why}");
            assert!(!varies_on_accept_encoding(&r), "{why}");
            assert!(!r.cache_status().contains("coding="), "{why}: {}", r.cache_status());
        }
    }
    // A site that makes no codings passes Accept-Encoding through.
    let dir2 = tempfile::tempdir().unwrap();
    let off =
        Edge::start(dir2.path(), &site_toml(origin.addr, &format!("{DEFAULT_RULES}\n[compress]\ncodings = []\n")))
            .await;
    let r = off.get_with(TEXT, &[("accept-encoding", "gzip, br")]).await;
    assert!(r.headers.get("content-encoding").is_none());
    assert_eq!(origin.last_request("/t.txt").await["accept-encoding"], "gzip, br");
}

#[tokio::test]
async fn origin_codings_are_kept_and_decoded_for_clients_that_refuse_them() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    // Room for the encoded body, not for what a bomb decodes to.
    let rules = DEFAULT_RULES.replace("[cache]\n", "[cache]\nmax_object_size = \"600KiB\"\n");
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, &rules)).await;
    let url = "/g.txt?text=1&size=100KiB&encoding=gzip&cc=max-age%3D60";
    let plain = text_of("/g.txt", &[]);
    let gz = edge.get_with(url, &[("accept-encoding", "gzip")]).await;
    assert_eq!(header(&gz, "content-encoding"), "gzip");
    assert_eq!(coding::decode(Coding::Gzip, &gz.body, 1 << 20).unwrap(), plain);
    let origin_tag = header(&gz, "etag").to_string();
    for ae in [None, Some("br"), Some("deflate")] {
        let headers: Vec<(&str, &str)> = ae.map(|v| ("accept-encoding", v)).into_iter().collect();
        let r = edge.get_with(url, &headers).await;
        assert!(r.headers.get("content-encoding").is_none(), "{ae:?}");
        assert_eq!(r.body, plain, "{ae:?}: decoded");
        assert_eq!(header(&r, "etag"), format!("{}-identity\"", &origin_tag[..origin_tag.len() - 1]));
        assert!(r.cache_status().ends_with("coding=identity; transformed"), "{}", r.cache_status());
    }
    // A client that refuses identity too gets the stored coding.
    let r = edge.get_with(url, &[("accept-encoding", "br, identity;q=0")]).await;
    assert_eq!(header(&r, "content-encoding"), "gzip");
    assert_eq!(origin.count("/g.txt").await, 1, "the encoded copy is fetched once");

    // An origin that labels plain text as gzip: the label cannot be
    // decoded, so the body goes as stored, and the node goes on.
    let liar = "/l.txt?text=1&size=100KiB&header=content-encoding:gzip&cc=max-age%3D60";
    let stored = edge.get_with(liar, &[("accept-encoding", "gzip")]).await;
    assert_eq!(stored.body, text_of("/l.txt", &[]));
    let r = edge.get(liar).await;
    assert_eq!((r.status, header(&r, "content-encoding")), (StatusCode::OK, "gzip"));
    assert_eq!(r.body, stored.body);
    assert!(edge.get(url).await.status == StatusCode::OK, "the node keeps serving");

    // A body that decodes past the site's largest object is not decoded.
    let bomb = "/b.txt?text=1&size=2MiB&encoding=gzip&cc=max-age%3D60";
    let stored = edge.get_with(bomb, &[("accept-encoding", "gzip")]).await;
    assert!(stored.body.len() < 600 << 10, "{}", stored.body.len());
    let r = edge.get(bomb).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(header(&r, "content-encoding"), "gzip", "sent as stored rather than decoded past the limit");
    assert_eq!(r.body, stored.body);
}

/// A stored coding is decoded in memory no further than representations
/// are made (`[compress] max_size`), however large the site's objects may
/// be: past it, sent as stored.
#[tokio::test]
async fn a_stored_coding_is_decoded_no_further_than_compress_max_size() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let rules = format!("{DEFAULT_RULES}[compress]\nmax_size = \"1MiB\"\n");
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, &rules)).await;
    for (url, decoded) in [
        ("/small.txt?text=1&size=500KiB&encoding=gzip&cc=max-age%3D60", true),
        ("/large.txt?text=1&size=2MiB&encoding=gzip&cc=max-age%3D60", false),
    ] {
        let stored = edge.get_with(url, &[("accept-encoding", "gzip")]).await;
        assert_eq!(header(&stored, "content-encoding"), "gzip");
        let r = edge.get(url).await;
        assert_eq!(r.status, StatusCode::OK);
        if decoded {
            assert!(r.headers.get("content-encoding").is_none(), "{url}");
        } else {
            assert_eq!((header(&r, "content-encoding"), &r.body), ("gzip", &stored.body), "{url}");
        }
    }
}

/// A small body that decodes to a huge one (a zstd frame of 2048 RLE
/// blocks: 256 MiB of zeros in 6 KiB) fails at its limit, without the
/// memory the whole would take, even when handed over in one piece. It
/// measures its own process, so it runs in a process of its own.
#[test]
fn a_body_that_decodes_past_its_limit_fails_without_decoding_it_all() {
    in_own_process("represent::a_body_that_decodes_past_its_limit_fails_without_decoding_it_all", || {
        let peak_kib = || -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        // Magic, a header with a 128 KiB window and no size, then RLE
        // blocks of 128 KiB of one byte each (3-byte header, 1 byte).
        let frame = |blocks: u32| {
            let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
            for i in 0..blocks {
                let header = (128 << 10) << 3 | 1 << 1 | u32::from(i + 1 == blocks);
                f.extend_from_slice(&header.to_le_bytes()[..3]);
                f.push(0);
            }
            f
        };
        assert_eq!(coding::decode(Coding::Zstd, &frame(8), 1 << 20).unwrap(), vec![0u8; 1 << 20], "a real frame");
        let bomb = frame(2048);
        let before = peak_kib();
        let e = coding::decode(Coding::Zstd, &bomb, 4 << 20).unwrap_err();
        assert!(e.to_string().contains("more than 4194304 bytes"), "{e}");
        let grew = peak_kib().saturating_sub(before);
        assert!(grew < 64 << 10, "decoding grew the peak by {grew} KiB");
    });
}

/// Reads the process's metrics, so it runs in a process of its own.
#[test]
fn a_zipf_load_with_ten_spellings_stores_one_variant_per_object_and_coding() {
    with_metrics_in_own_process(
        "represent::a_zipf_load_with_ten_spellings_stores_one_variant_per_object_and_coding",
        zipf,
    );
}

/// Ten ways browsers and tools write `Accept-Encoding`, and the coding
/// each is answered in.
const SPELLINGS: [(Option<&str>, Coding); 10] = [
    (Some("gzip, deflate, br, zstd"), Coding::Br),
    (Some("gzip, deflate, br"), Coding::Br),
    (Some("br;q=1.0, gzip;q=0.8, *;q=0.1"), Coding::Br),
    (Some("zstd, br;q=0.9"), Coding::Zstd),
    (Some("gzip, deflate"), Coding::Gzip),
    (Some("GZIP"), Coding::Gzip),
    (Some("x-gzip;q=0.5, identity;q=0.1"), Coding::Gzip),
    (Some("identity"), Coding::Identity),
    (Some("deflate"), Coding::Identity),
    (None, Coding::Identity),
];

async fn zipf() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start_with(
        dir.path(),
        &site_toml(origin.addr, &format!("{DEFAULT_RULES}\n[compress]\nmin_size = \"512B\"\n")),
        "memory = \"256MiB\"",
        "",
    )
    .await;
    // 1,000 objects, Zipf(1.0) over them; every tenth varies on
    // Accept-Encoding at the origin, which then sees the coding asked for.
    let weights: Vec<f64> = (1..=1000).map(|i| 1.0 / f64::from(i)).collect();
    let total: f64 = weights.iter().sum();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut plan = Vec::new();
    for _ in 0..4000 {
        let mut x = (next() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let object = weights.iter().position(|w| {
            x -= w;
            x <= 0.0
        });
        plan.push((object.unwrap_or(999), (next() % 10) as usize));
    }
    let wanted: HashSet<(usize, Coding)> = plan.iter().map(|&(o, s)| (o, SPELLINGS[s].1)).collect();
    let objects: HashSet<usize> = plan.iter().map(|&(o, _)| o).collect();
    let url = |o: usize| {
        let vary = if o.is_multiple_of(10) { "&vary=Accept-Encoding" } else { "" };
        format!("/z/{o}.js?text=1&size=2KiB&cc=max-age%3D600&content_type=application/javascript{vary}")
    };
    let edge = &edge;
    // Thirty-two requests at once for a coding of a stored object: made once.
    let hot = "/hot.js?text=1&size=2KiB&cc=max-age%3D600&content_type=application/javascript";
    assert_eq!(edge.get(hot).await.status, StatusCode::OK);
    let at_once =
        futures_util::future::join_all((0..32).map(|_| edge.get_with(hot, &[("accept-encoding", "br")]))).await;
    assert!(at_once.iter().all(|r| r.body == at_once[0].body && header(r, "content-encoding") == "br"));
    let results = futures_util::future::join_all(plan.chunks(250).map(|part| async move {
        for &(o, s) in part {
            let (spelling, coding) = SPELLINGS[s];
            let mut headers = vec![("host", "t.test")];
            headers.extend(spelling.map(|v| ("accept-encoding", v)));
            let r = send(Method::GET, &edge.url(&url(o)), &headers).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(Coding::of(&r.headers), Some(coding), "{spelling:?}");
            let vary: Vec<&str> = if o.is_multiple_of(10) { vec![coding.token()] } else { vec![] };
            let seed = outpost_load::content::seed(&format!("/z/{o}.js"), 0, &vary);
            let plain = coding::decode(coding, &r.body, 1 << 20).unwrap();
            assert_eq!(plain, outpost_load::content::text(seed, 0, 2048), "/z/{o}.js as {coding:?}");
        }
    }))
    .await;
    assert_eq!(results.len(), 16);
    // Each pair once more: a pair first asked for while its object was
    // being fetched was recoded as it streamed; now every one is made.
    for &(o, c) in &wanted {
        let mut headers = vec![("host", "t.test")];
        headers.extend((c != Coding::Identity).then(|| ("accept-encoding", c.token())));
        let r = send(Method::GET, &edge.url(&url(o)), &headers).await;
        assert!(r.is_hit(), "{}", r.cache_status());
    }

    let metrics = send(Method::GET, &format!("http://{}/metrics", edge.admin), &[]).await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    let made: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("outpost_representations_made_total") && l.contains("result=\"made\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum();
    let compressed: HashSet<_> = wanted.iter().filter(|(_, c)| *c != Coding::Identity).collect();
    assert_eq!(made, compressed.len() as u64 + 1, "one representation made per (object, coding): {metrics}");
    // The origin saw each object once, and each varying object once per
    // coding: never once per spelling.
    let varying: HashSet<_> = wanted.iter().filter(|(o, _)| o.is_multiple_of(10)).collect();
    let plain_objects = objects.iter().filter(|o| !o.is_multiple_of(10)).count();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(origin.total().await, (plain_objects + varying.len() + 1) as u64);
}

/// nginx serving a folder of text files, compressing them itself
/// (`gzip on`, `gzip_vary`, and `gzip_proxied any`, as an origin behind a
/// CDN is set up), one of them precompressed (`gzip_static`); one process
/// (`master_process off`), killed when dropped.
struct Nginx {
    addr: std::net::SocketAddr,
    child: std::process::Child,
}

impl Nginx {
    fn start(dir: &std::path::Path) -> Nginx {
        let addr = outpost_testkit::free_addr();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "master_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 64; }}\n\
                 http {{\n  include /etc/nginx/mime.types;\n  access_log off;\n  gzip on;\n  gzip_vary on;\n  gzip_proxied any;\n  gzip_comp_level 6;\n\
                 gzip_types text/css application/javascript text/plain;\n  server {{\n    listen {addr};\n    root {d}/www;\n\
                 location /pre/ {{ gzip_static on; }}\n  }}\n}}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("nginx")
            .args(["-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap(), "-g", "daemon off;"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx is not installed: run scripts/deps.sh");
        let nginx = Nginx { addr, child };
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return nginx;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("nginx did not start: {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn in_front_of_nginx_every_coding_is_the_files_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("pre")).unwrap();
    let files: Vec<(&str, Vec<u8>)> = ["app.js", "style.css", "pre/notes.txt"]
        .iter()
        .enumerate()
        .map(|(i, name)| (*name, outpost_load::content::text(i as u64 + 1, 0, 50_000 + i * 7_777)))
        .collect();
    for (name, bytes) in &files {
        std::fs::write(www.join(name), bytes).unwrap();
    }
    let pre = coding::encode(Coding::Gzip, &files[2].1).unwrap();
    std::fs::write(www.join("pre/notes.txt.gz"), &pre).unwrap();
    let nginx = Nginx::start(dir.path());
    let rules = format!("[cache]\ndefault_ttl = \"60s\"\n\n[[origin]]\nurl = \"http://{}\"\n", nginx.addr);
    let site = format!("[site]\nid = \"t\"\nhosts = [\"t.test\"]\n\n{rules}");
    let edge = Edge::start(dir.path(), &site).await;
    for (name, bytes) in &files {
        let path = format!("/{name}");
        for (ae, want, made_here) in [
            ("br, gzip", Coding::Br, true),
            ("gzip, deflate", Coding::Gzip, false),
            ("zstd", Coding::Zstd, true),
            ("", Coding::Identity, false),
        ] {
            for _ in 0..2 {
                let r = edge.get_with(&path, &[("accept-encoding", ae)]).await;
                assert_eq!(r.status, StatusCode::OK, "{path}");
                assert_eq!(Coding::of(&r.headers), Some(want), "{path} {ae}: {:?}", r.headers);
                assert_eq!(decoded(&r), *bytes, "{path} {ae}: the file's bytes");
                assert_eq!(r.cache_status().ends_with("; transformed"), made_here, "{path} {ae}: {}", r.cache_status());
            }
        }
    }
    // nginx's own gzip (and the precompressed file) went to the client as
    // nginx made them.
    let r = edge.get_with("/pre/notes.txt", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.body, pre);
}

/// A representation that cannot be made (a stored coding that does not
/// decode) is tried once a copy, not for every request that asks: each
/// try reads the whole body and decodes it.
#[test]
fn a_representation_that_cannot_be_made_is_tried_once() {
    with_metrics_in_own_process("represent::a_representation_that_cannot_be_made_is_tried_once", || async {
        let (dir, origin) = (tempfile::tempdir().unwrap(), Origin::start().await);
        let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
        let liar = "/once.txt?text=1&size=100KiB&header=content-encoding:gzip&cc=max-age%3D60";
        edge.get_with(liar, &[("accept-encoding", "gzip")]).await;
        for _ in 0..5 {
            let r = edge.get(liar).await;
            assert_eq!((r.status, header(&r, "content-encoding")), (StatusCode::OK, "gzip"));
        }
        let metrics = send(Method::GET, &format!("http://{}/metrics", edge.admin), &[]).await;
        let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
        let failed = metrics
            .lines()
            .find(|l| {
                l.starts_with("outpost_representations_made_total")
                    && l.contains("coding=\"identity\"")
                    && l.contains("result=\"failed\"")
            })
            .unwrap_or_else(|| panic!("{metrics}"));
        assert!(failed.ends_with(" 1"), "{failed}");
    });
}
