//! Acceptance tests of the shield tier.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::topology::*;

struct Cdn {
    _dir: tempfile::TempDir,
    origin: Origin,
    shields: Vec<Running>,
    edges: Vec<Running>,
}

async fn cdn() -> Cdn {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    std::fs::write(dir.path().join("site.toml"), site(&[origin.addr], "")).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut shields = Vec::new();
    for name in ["shield-a", "shield-b"] {
        shields.push(shield(dir.path(), name, any).await.0);
    }
    let shield_addrs: Vec<SocketAddr> = shields.iter().map(|s| s.addr).collect();
    let mut edges = Vec::new();
    for name in ["edge-1", "edge-2", "edge-3"] {
        edges.push(edge(dir.path(), name, &shield_addrs).await);
    }
    Cdn { _dir: dir, origin, shields, edges }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_across_three_edges_costs_the_origin_one_request_per_object() {
    let cdn = cdn().await;
    let edges: Vec<SocketAddr> = cdn.edges.iter().map(|e| e.addr).collect();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let edge = edges[i % 3];
        tasks.push(tokio::spawn(async move { via(edge, "/herd?size=20000&delay=300ms&cc=max-age%3D600").await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.len(), 20_000);
    }
    let one = cdn.origin.total().await;
    println!("1000 concurrent requests over 3 edges for one cold object: origin requests = {one}");
    assert_eq!(one, 1);

    let mut tasks = Vec::new();
    for n in 0..200 {
        for edge in edges.clone() {
            tasks
                .push(tokio::spawn(async move { via(edge, &format!("/many/{n}?delay=200ms&cc=max-age%3D600")).await }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    let many = cdn.origin.total().await - one;
    println!("200 distinct cold objects, each from all 3 edges at once (600 requests): origin requests = {many}");
    assert_eq!(many, 200);
}

/// A cold path whose shield (by the edges' rendezvous) is `shield`.
async fn path_owned_by(edge: SocketAddr, shield: &str, tag: &str) -> String {
    for n in 0..200 {
        let path = format!("/own/{tag}/{n}?cc=max-age%3D600");
        let r = via(edge, &path).await;
        if r.cache_status().starts_with(&format!("{shield};")) {
            return path;
        }
    }
    panic!("no key found for {shield}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_shield_moves_only_its_keys_and_its_return_moves_them_back() {
    let mut cdn = cdn().await;
    let edges: Vec<SocketAddr> = cdn.edges.iter().map(|e| e.addr).collect();
    let a_addr = cdn.shields[0].addr;
    // Warm objects at every edge.
    let warm: Vec<String> = (0..20).map(|i| format!("/warm/{i}?cc=max-age%3D600")).collect();
    for p in &warm {
        for e in &edges {
            assert_eq!(via(*e, p).await.status, StatusCode::OK);
        }
    }
    // Steady load on every edge while shield-a goes away.
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut load = Vec::new();
    for (i, e) in edges.iter().enumerate() {
        let (e, running, warm) = (*e, Arc::clone(&running), warm.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut n) = (0u32, 0u32, 0usize);
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let path =
                    if n % 4 == 3 { format!("/load/{i}/{n}?cc=max-age%3D600") } else { warm[n % warm.len()].clone() };
                match try_send(http::Method::GET, &format!("http://{e}{path}"), "s.test").await {
                    Ok(r) if r.status == StatusCode::OK => ok += 1,
                    _ => errors += 1,
                }
                n += 1;
            }
            (ok, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = cdn.shields.remove(0);
    let stopped = Instant::now();
    a.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut errors) = (0, 0);
    for l in load {
        let (o, e) = l.await.unwrap();
        ok += o;
        errors += e;
    }
    println!("load while shield-a stopped: {ok} requests ok, {errors} errors");
    assert_eq!(errors, 0);
    assert!(ok > 50);
    // Under load: the warm objects keep coming from the edges; new keys that
    // shield-a owned are fetched through shield-b, with no client error.
    let mut moved = Vec::new();
    for round in 0..5 {
        for p in &warm {
            for e in &edges {
                let r = via(*e, p).await;
                assert_eq!(r.status, StatusCode::OK, "{p}");
                assert!(r.cache_status().contains("; hit"), "{}", r.cache_status());
            }
        }
        let r = via(edges[round % 3], &format!("/cold/{round}?cc=max-age%3D600")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.cache_status().starts_with("shield-b;"), "{}", r.cache_status());
        moved.push(stopped.elapsed());
    }
    println!("shield-a down: keys served by shield-b from {:?} after the stop", moved[0]);
    assert!(cdn.edges.iter().all(|e| e.engine.sites().len() == 1));
    // shield-a comes back on its address; its keys go back to it.
    let (back, _) = shield(cdn._dir.path(), "shield-a", a_addr).await;
    let returned = Instant::now();
    eventually("shield-a to take its keys back", || async {
        let n = returned.elapsed().as_nanos();
        via(edges[0], &format!("/again/{n}?cc=max-age%3D600")).await.cache_status().starts_with("shield-a;")
    })
    .await;
    println!("shield-a back: its keys returned within {:?}", returned.elapsed());
    let p = path_owned_by(edges[1], "shield-a", "after").await;
    assert!(via(edges[1], &p).await.cache_status().contains("; hit"));
    back.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_shield_down_edges_go_to_the_origin() {
    let mut cdn = cdn().await;
    for s in cdn.shields.drain(..) {
        s.stop().await;
    }
    let r = via(cdn.edges[0].addr, "/direct?cc=max-age%3D600").await;
    assert_eq!(r.status, StatusCode::OK);
    let cs = r.cache_status();
    assert!(cs.starts_with("edge-1; fwd=uri-miss"), "no shield in the path: {cs}");
    assert_eq!(cdn.origin.stats().await["paths"]["/direct"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_absorbs_an_origin_outage_for_edges_that_never_saw_the_object() {
    let cdn = cdn().await;
    let path = "/outage?cc=max-age%3D10";
    let first = via(cdn.edges[0].addr, path).await;
    let shield_name = first.cache_status().split(';').next().unwrap().to_string();
    let owner = cdn.shields.iter().find(|s| *s.engine.node == *shield_name).unwrap();
    // The shield's fetch may still be closing after the client has the
    // body: wait until the shield answers from its store.
    let at_shield = format!("http://{}{path}", owner.addr);
    eventually("the shield to hold the object", || async {
        get(&at_shield, "s.test").await.cache_status().starts_with(&format!("{shield_name}; hit"))
    })
    .await;
    owner.engine.clock.advance(Duration::from_secs(30));
    cdn.origin.control("fault?mode=503").await;
    let r = via(cdn.edges[2].addr, path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, first.body);
    let cs = r.cache_status();
    assert!(cs.starts_with(&format!("{shield_name}; hit; fwd=stale; fwd-status=503")), "{cs}");
    assert!(cs.contains("detail=stale-if-error, edge-3;"), "the shield's member first, then the edge's: {cs}");
}

/// A shield that stands its stale copy in for an origin that fails (here
/// as a 304 to an edge revalidating) does not renew the edge's copy: a
/// soft purge at both tiers still has the edge ask again once the origin
/// is back, rather than serve its copy as fetched after the purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shields_stale_answer_does_not_undo_an_edges_purge() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    std::fs::write(dir.path().join("site.toml"), site(&[origin.addr], "")).unwrap();
    let (shield, _) = shield(dir.path(), "shield-a", "127.0.0.1:0".parse().unwrap()).await;
    let edge = edge(dir.path(), "edge-1", &[shield.addr]).await;
    let path = "/sp?cc=max-age%3D600";
    assert_eq!(via(edge.addr, path).await.status, StatusCode::OK);
    let at_shield = format!("http://{}{path}", shield.addr);
    eventually("the shield to hold the object", || async {
        get(&at_shield, "s.test").await.cache_status().starts_with("shield-a; hit")
    })
    .await;
    let purge = outpost_config::PurgeTarget::Urls { urls: vec![path.to_string()] };
    shield.engine.purge("s", &purge, true).await.unwrap();
    edge.engine.purge("s", &purge, true).await.unwrap();
    origin.control("fault?mode=503").await;
    let during = via(edge.addr, path).await;
    assert_eq!(during.status, StatusCode::OK, "{}", during.cache_status());
    assert!(during.cache_status().contains("fwd=stale"), "the shield stood its copy in: {}", during.cache_status());
    origin.control("fault?mode=off").await;
    // Past the time the shield holds the key after its origin failed.
    shield.engine.clock.advance(Duration::from_secs(5));
    let before = origin.count("/sp").await;
    let after = via(edge.addr, path).await;
    assert_eq!(after.status, StatusCode::OK);
    assert!(!after.cache_status().starts_with("edge-1; hit"), "the purge was undone: {}", after.cache_status());
    assert_eq!(origin.count("/sp").await, before + 1, "asked again, through the shield: {}", after.cache_status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_origins_are_taken_out_and_put_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::start().await;
    let b = Origin::start().await;
    let check = "[origin.health]\npath = \"/__origin/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\n\
                 healthy_threshold = 1\nunhealthy_threshold = 1\n";
    let mut text = "[site]\nid = \"s\"\nhosts = [\"s.test\"]\n".to_string();
    for o in [a.addr, b.addr] {
        text.push_str(&format!("\n[[origin]]\nurl = \"http://{o}\"\n{check}"));
    }
    std::fs::write(dir.path().join("site.toml"), text).unwrap();
    let (sh, pool) = shield(dir.path(), "shield-a", "127.0.0.1:0".parse().unwrap()).await;
    let pool = Arc::clone(&pool);
    let through = |n: String| {
        let addr = sh.addr;
        async move { get(&format!("http://{addr}{n}"), "s.test").await }
    };
    // Both in service: objects spread over both origins.
    for n in 0..40 {
        assert_eq!(through(format!("/spread/{n}?cc=max-age%3D600")).await.status, StatusCode::OK);
    }
    let (a0, b0) = (a.total().await, b.total().await);
    assert!(a0 > 5 && b0 > 5, "rendezvous spreads keys: a={a0} b={b0}");
    a.control("fault?mode=503").await;
    eventually("origin a to be taken out", || async { pool.health("s") == [false, true] }).await;
    for n in 0..40 {
        assert_eq!(through(format!("/out/{n}?cc=max-age%3D600")).await.status, StatusCode::OK);
    }
    assert_eq!(a.total().await, a0, "no request reached the failing origin");
    assert_eq!(b.total().await, b0 + 40);
    a.control("fault?mode=off").await;
    eventually("origin a to be put back", || async { pool.health("s") == [true, true] }).await;
    for n in 0..40 {
        through(format!("/back/{n}?cc=max-age%3D600")).await;
    }
    assert!(a.total().await > a0 + 5, "origin a serves again");
    sh.stop().await;
}

/// An origin's `max_connections` counts an exchange until its body's last
/// byte, not only until its head: a slow body passed on to a client (not
/// stored) keeps its place, and the next request waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_cap_counts_an_exchange_until_its_body_ends() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::start().await;
    let text = format!(
        "[site]\nid = \"s\"\nhosts = [\"s.test\"]\n\n[[origin]]\nurl = \"http://{}\"\nmax_connections = 1\n",
        a.addr
    );
    std::fs::write(dir.path().join("site.toml"), text).unwrap();
    let (sh, _pool) = shield(dir.path(), "shield-a", "127.0.0.1:0".parse().unwrap()).await;
    let addr = sh.addr;
    // Five chunks 600 ms apart: its body takes 2.4 s after its head.
    let slow = tokio::spawn(async move {
        get(&format!("http://{addr}/slow?size=80KiB&chunk=16KiB&chunk_delay=600ms&cc=no-store"), "s.test").await
    });
    eventually("the slow answer to begin", || async { a.count("/slow").await == 1 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quick = tokio::spawn(async move { get(&format!("http://{addr}/quick?cc=no-store"), "s.test").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.count("/quick").await, 0, "sent while the slow body still held the origin's one place");
    let slow = slow.await.unwrap();
    assert_eq!((slow.status, slow.body.len()), (StatusCode::OK, 80 << 10));
    assert_eq!(quick.await.unwrap().status, StatusCode::OK, "sent once the place was free");
    assert_eq!(a.count("/quick").await, 1);
    sh.stop().await;
}

/// A request waits for a place under the origin's cap as long as it would
/// for an answer (`response_timeout`), then is a 504: exchanges that hold
/// every place do not hold the requests queued behind them for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_a_place_under_the_cap_no_longer_than_for_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::start().await;
    let text = format!(
        "[site]\nid = \"s\"\nhosts = [\"s.test\"]\n\n[[origin]]\nurl = \"http://{}\"\nmax_connections = 1\n\
         response_timeout = \"1s\"\n",
        a.addr
    );
    std::fs::write(dir.path().join("site.toml"), text).unwrap();
    let (sh, _pool) = shield(dir.path(), "shield-a", "127.0.0.1:0".parse().unwrap()).await;
    let addr = sh.addr;
    // Ten chunks 500 ms apart: the place is held for 4.5 s, and the origin
    // is never quiet for its whole response_timeout.
    let slow = tokio::spawn(async move {
        get(&format!("http://{addr}/held?size=10KiB&chunk=1KiB&chunk_delay=500ms&cc=no-store"), "s.test").await
    });
    eventually("the slow answer to begin", || async { a.count("/held").await == 1 }).await;
    let started = Instant::now();
    let queued = get(&format!("http://{addr}/queued?cc=no-store"), "s.test").await;
    let waited = started.elapsed();
    assert_eq!(queued.status, StatusCode::GATEWAY_TIMEOUT, "{}", queued.cache_status());
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "waited {waited:?}");
    assert_eq!(a.count("/queued").await, 0, "never sent");
    let slow = slow.await.unwrap();
    assert_eq!((slow.status, slow.body.len()), (StatusCode::OK, 10 << 10), "the exchange holding the place ends well");
    assert_eq!(get(&format!("http://{addr}/queued?cc=no-store"), "s.test").await.status, StatusCode::OK);

    // The wait counts against the time for the answer: a place that frees
    // after 600 ms leaves 400 for a head, and an origin that takes 700 ms
    // to send one is a 504 at about a second, not a 200 at 1.3 s (past
    // what an edge waits for its shield).
    let slow = tokio::spawn(async move {
        get(&format!("http://{addr}/held2?size=4KiB&chunk=1KiB&chunk_delay=200ms&cc=no-store"), "s.test").await
    });
    eventually("the slow answer to begin", || async { a.count("/held2").await == 1 }).await;
    let started = Instant::now();
    let late = get(&format!("http://{addr}/late?delay=700ms&cc=no-store"), "s.test").await;
    let took = started.elapsed();
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT, "{} after {took:?}", late.cache_status());
    assert!(took < Duration::from_millis(1900), "answered after {took:?}");
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    sh.stop().await;
}

/// Health checks run side by side: origins that accept connections and
/// never answer, each costing its check's whole timeout, do not hold up
/// the check that finds another origin failing. (Run one after the other,
/// three such origins put 9 s between one origin's checks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_never_answers_its_checks_holds_up_no_other_check() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::start().await;
    let mut silent = Vec::new();
    let mut text = "[site]\nid = \"s\"\nhosts = [\"s.test\"]\n".to_string();
    for _ in 0..3 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        text.push_str(&format!(
            "\n[[origin]]\nurl = \"http://{}\"\n[origin.health]\npath = \"/h\"\ninterval = \"100ms\"\ntimeout = \"3s\"\n",
            listener.local_addr().unwrap()
        ));
        // Accepts, holds each connection, never reads or writes.
        silent.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        }));
    }
    text.push_str(&format!(
        "\n[[origin]]\nurl = \"http://{}\"\n[origin.health]\npath = \"/__origin/health\"\ninterval = \"100ms\"\n\
         timeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n",
        a.addr
    ));
    std::fs::write(dir.path().join("site.toml"), text).unwrap();
    let (sh, pool) = shield(dir.path(), "shield-a", "127.0.0.1:0".parse().unwrap()).await;
    // The checks of the silent origins under way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.health("s"), [true, true, true, true], "in service until a check says otherwise");
    a.control("fault?mode=503").await;
    // Within 7 s: one round of checks lasts the longest check's timeout
    // (3 s), not the sum of them (9 s).
    let out = || async { pool.health("s").last() == Some(&false) };
    outpost_testkit::eventually_within("origin a to be taken out", Duration::from_secs(7), out).await;
    sh.stop().await;
    for s in silent {
        s.abort();
    }
}

/// Two sites with the same origin and health path: each site's view of
/// the origin is checked and moved on its own. (Checks were scheduled by
/// URL and path, so one site's checks stood for both and the other's view
/// never moved: its failover was off.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_sharing_an_origin_each_see_it_fail_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::start().await;
    let check = "[origin.health]\npath = \"/__origin/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\n\
                 healthy_threshold = 1\nunhealthy_threshold = 1\n";
    for id in ["s", "t"] {
        let text =
            format!("[site]\nid = \"{id}\"\nhosts = [\"{id}.test\"]\n[[origin]]\nurl = \"http://{}\"\n{check}", a.addr);
        std::fs::write(dir.path().join(format!("{id}.toml")), text).unwrap();
    }
    let cfg = node_file(
        dir.path(),
        "shield-a",
        "[node]\nname = \"shield-a\"\nrole = \"shield\"\nsites = [\"s.toml\", \"t.toml\"]\naccess_log = \"off\"\n\
         [listen]\nhttp = [\"127.0.0.1:0\"]\n[cache]\nmemory = \"32MiB\"\n",
    );
    let (node, pool) = outpost_shield::bind(&cfg).await.unwrap();
    let sh = Running::spawn(node);
    a.control("fault?mode=503").await;
    eventually("both sites to take the origin out", || async {
        pool.health("s") == [false] && pool.health("t") == [false]
    })
    .await;
    a.control("fault?mode=off").await;
    eventually("both sites to put it back", || async { pool.health("s") == [true] && pool.health("t") == [true] })
        .await;
    sh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_between_tiers_and_the_loop_guard() {
    let cdn = cdn().await;
    let edge = cdn.edges[0].addr;
    let r = via(edge, "/hdr?cc=max-age%3D60").await;
    let shield = r.cache_status().split(';').next().unwrap().to_string();
    let seen = get(&format!("http://{}/__origin/request?path=/hdr", cdn.origin.addr), "x").await;
    let h: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(h["via"], format!("1.1 edge-1, 1.1 {shield}"));
    assert_eq!(h["x-forwarded-for"], "127.0.0.1, 127.0.0.1");
    assert_eq!(h["forwarded"], format!("for=127.0.0.1;by=edge-1, for=127.0.0.1;by={shield}"));
    assert_eq!(h["host"], "s.test", "the client's Host reaches the origin");
    assert!(h["cdn-loop"].as_str().unwrap().starts_with("edge-1; t="), "{}", h["cdn-loop"]);
    // A client's Via or CDN-Loop naming our nodes is not a loop: only what
    // a node added itself, with its secret, counts.
    let forged = [("via", "1.1 edge-1, 1.1 shield-a, 1.1 shield-b"), ("cdn-loop", "edge-1, shield-a; t=0")];
    let r = try_send_with(edge, "/forged?cc=max-age%3D60", &forged).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.cache_status());
    assert!(r.cache_status().starts_with("shield-"), "served through a shield: {}", r.cache_status());
    // A real loop: the shields' origin is the edge itself. The edge sees its
    // own mark come back and answers 508, which is no reason to take the
    // shields out.
    let looping = site(&[edge], "");
    for sh in &cdn.shields {
        sh.engine.set_sites(vec![looping.parse().unwrap()]);
    }
    let r = via(edge, "/loop").await;
    assert_eq!(r.status, StatusCode::LOOP_DETECTED, "{}", r.cache_status());
    let r = via(edge, "/loop2").await;
    assert_eq!(r.status, StatusCode::LOOP_DETECTED, "still through the shields: {}", r.cache_status());
    assert!(r.cache_status().contains("shield-"), "{}", r.cache_status());
    assert_eq!(cdn.origin.stats().await["paths"].get("/loop"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_host_names_resolve_and_concurrency_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::start().await;
    // `localhost` goes through hickory (the hosts file); at most two requests
    // reach the origin at once, the rest wait their turn.
    let text = format!(
        "[site]\nid = \"s\"\nhosts = [\"s.test\"]\n[[origin]]\nurl = \"http://localhost:{}\"\nmax_connections = 2\n",
        o.addr.port()
    );
    std::fs::write(dir.path().join("site.toml"), text).unwrap();
    let (sh, _) = shield(dir.path(), "shield-a", "127.0.0.1:0".parse().unwrap()).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..8 {
        let addr = sh.addr;
        tasks.push(tokio::spawn(async move { get(&format!("http://{addr}/capped/{n}?delay=250ms"), "s.test").await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK, "queued, not refused");
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(950), "8 requests of 250 ms, 2 at a time, took {took:?}");
    assert_eq!(o.total().await, 8);
    sh.stop().await;
}

/// The member of `Cache-Status` a node named `node` wrote.
fn member<'a>(cache_status: &'a str, node: &str) -> &'a str {
    cache_status.split(", ").find(|m| m.starts_with(node)).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shields_make_the_codings_and_edges_store_what_they_get() {
    use outpost_net::coding::{self, Coding};
    let cdn = cdn().await;
    let path = "/page.html?text=1&size=100KiB&content_type=text/html&cc=max-age%3D600";
    let plain = outpost_load::content::text(outpost_load::content::seed("/page.html", 0, &[]), 0, 100 << 10);
    let asks = [
        ("gzip, deflate, br, zstd", Coding::Br),
        ("gzip, br", Coding::Br),
        ("gzip", Coding::Gzip),
        ("", Coding::Identity),
    ];
    let mut made_at_shield = 0;
    for round in 0..2 {
        for (e, edge) in cdn.edges.iter().enumerate() {
            for (ae, want) in asks {
                let r = try_send_with(edge.addr, path, &[("accept-encoding", ae)]).await;
                assert_eq!(r.status, StatusCode::OK);
                assert_eq!(Coding::of(&r.headers), Some(want), "{ae}");
                assert_eq!(coding::decode(want, &r.body, 1 << 20).unwrap(), plain, "{ae}: the origin's bytes");
                let cs = r.cache_status();
                let mine = member(&cs, &format!("edge-{}", e + 1));
                assert!(mine.ends_with(&format!("; coding={}", want.token())), "the edge stores what it got: {cs}");
                if round == 1 {
                    assert!(mine.contains("; hit"), "{cs}");
                }
                if cs.contains("transformed") {
                    assert!(cs.starts_with("shield-") && member(&cs, "shield-").ends_with("; transformed"), "{cs}");
                    made_at_shield += 1;
                }
            }
        }
    }
    assert_eq!(cdn.origin.total().await, 1, "one origin request for every edge and coding");
    // Each edge asked for br and gzip once: made by the shield each time
    // (streamed on its miss, then from what it stored).
    assert_eq!(made_at_shield, 6);
}

/// Established TCP connections whose local end is 127.0.0.1:`port`, from
/// `/proc/net/tcp`: what a server listening there holds open.
pub(crate) fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    // Accepted on 127.0.0.1 (as the kernel writes it, in hex): a socket of
    // another test bound to another loopback address may have the same
    // port number.
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f[1] == local && f[3] == "01"
        })
        .count()
}

/// 200 misses at once from one edge to one shield, over HTTP/2 (the
/// default) and over HTTP/1.1: the connections the shield holds after.
async fn misses_at_once(http2: bool) -> (usize, u64, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    std::fs::write(dir.path().join("site.toml"), site(&[origin.addr], "")).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (shield, _) = shield(dir.path(), "shield-a", any).await;
    let edge = edge_with(dir.path(), "edge-1", &[shield.addr], &format!("http2 = {http2}")).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let edge = edge.addr;
            tokio::spawn(async move { via(edge, &format!("/burst/{n}?delay=200ms&cc=max-age%3D600")).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.len(), 1024);
    }
    (established_to(shield.addr.port()), origin.total().await, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_multiplexes_its_misses_to_a_shield_over_http2() {
    let (h2, origin_h2, took_h2) = misses_at_once(true).await;
    let (h1, origin_h1, took_h1) = misses_at_once(false).await;
    println!(
        "200 concurrent misses (origin answers after 200 ms), edge → shield connections and time to the last answer: \
         HTTP/2 {h2} in {took_h2:?}, HTTP/1.1 {h1} in {took_h1:?}"
    );
    assert_eq!((origin_h2, origin_h1), (200, 200), "the origin sees each object once");
    assert!(h2 <= 2, "HTTP/2: {h2} connections");
    // How many overlap depends on how fast the requests come; at least
    // ten times as many, by far, whatever the machine's load.
    assert!(h1 >= 10 * h2.max(1), "HTTP/1.1 needs a connection per request in flight: {h1}");
}

/// An edge's misses share one HTTP/2 connection to a shield: clients that
/// read answers passed through (never stored) slowly leave those streams'
/// bytes unread at the edge, and that must not stop the connection's other
/// streams, every site's misses to that shield.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_answers_passed_through_do_not_stall_an_edges_connection_to_its_shield() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    std::fs::write(dir.path().join("site.toml"), site(&[origin.addr], "")).unwrap();
    let (shield, _) = shield(dir.path(), "shield-a", "127.0.0.1:0".parse().unwrap()).await;
    let edge = edge_with(dir.path(), "edge-1", &[shield.addr], "http2 = true").await;
    // Warm: the connection to the shield is open, and proven.
    assert_eq!(via(edge.addr, "/warm?size=1KiB").await.status, StatusCode::OK);
    let mut held = Vec::new();
    for n in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 << 10).unwrap();
        let mut conn = socket.connect(edge.addr).await.unwrap();
        let head = format!("GET /passed/{n}?size=32MiB&cc=no-store HTTP/1.1\r\nHost: s.test\r\n\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut first = [0u8; 1024];
        let got = conn.read(&mut first).await.unwrap();
        assert!(first[..got].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first[..got]));
        // Read no more: the edge's socket buffers fill, then the stream's
        // window at the edge.
        held.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let next = tokio::time::timeout(Duration::from_secs(10), via(edge.addr, "/next?size=64KiB")).await;
    let next = next.expect("a miss behind slow readers' streams waited for them");
    assert_eq!((next.status, next.body.len()), (StatusCode::OK, 64 << 10));
    println!("a miss beside four stalled passed-through answers took {:?}", started.elapsed());
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_that_speaks_only_http1_is_asked_in_http1() {
    use outpost_load::raw::{RawOrigin, Received};
    let dir = tempfile::tempdir().unwrap();
    let raw = RawOrigin::start().await.unwrap();
    std::fs::write(dir.path().join("site.toml"), site(&[raw.addr()], "")).unwrap();
    let edge = edge(dir.path(), "edge-1", &[raw.addr()]).await;
    for n in 0..3 {
        let r = via(edge.addr, &format!("/old/{n}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, outpost_load::raw::answer_body("GET", &format!("/old/{n}")));
    }
    // The HTTP/2 preface was tried once, and refused as a malformed HTTP/1
    // request; then every request went in HTTP/1.1.
    let received = raw.received();
    let refused = received.iter().filter(|r| matches!(r, Received::Malformed { .. })).count();
    assert_eq!(refused, 1, "{received:?}");
    let asked: Vec<String> = raw.requests().iter().map(|r| format!("{} {}", r.method, r.target)).collect();
    assert_eq!(asked, ["GET /old/0", "GET /old/1", "GET /old/2"]);
}

/// Whether a GET sent as raw bytes to `addr` got a `103 Early Hints` before
/// its 200.
fn hinted(addr: SocketAddr, path: &str) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: s.test\r\n\r\n").unwrap();
    let mut first = String::new();
    BufReader::new(&mut s).read_line(&mut first).unwrap();
    assert!(first.starts_with("HTTP/1.1 103 ") || first.starts_with("HTTP/1.1 200 "), "{first}");
    first.starts_with("HTTP/1.1 103 ")
}

/// `[[early_hints]]` are for browsers: an edge sends them before a miss, a
/// shield never sends them to the edges it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_hints_come_from_edges_only() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hints = "[[early_hints]]\npattern = \"/*\"\nlink = [\"</a.css>; rel=preload\"]\n";
    std::fs::write(dir.path().join("site.toml"), site(&[origin.addr], hints)).unwrap();
    let (shield, _) = shield(dir.path(), "shield-1", "127.0.0.1:0".parse().unwrap()).await;
    let edge = edge(dir.path(), "edge-1", &[shield.addr]).await;
    let (at_shield, at_edge) = (shield.addr, edge.addr);
    let (from_shield, from_edge) = tokio::task::spawn_blocking(move || {
        (hinted(at_shield, "/h/one?size=10&delay=50ms"), hinted(at_edge, "/h/two?size=10&delay=50ms"))
    })
    .await
    .unwrap();
    assert!(!from_shield, "a shield sent a 103");
    assert!(from_edge, "the edge sent no 103 before a miss");
}

/// An origin's `103 Early Hints` cross the shield to the client, whether
/// the edge speaks HTTP/1.1 to the shield or HTTP/2 (the default), and the
/// answer after them comes whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origins_early_hints_cross_the_shield_over_http1_and_http2() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("site.toml"), site(&[origin.addr], "")).unwrap();
    let (shield, _) = shield(dir.path(), "shield-1", "127.0.0.1:0".parse().unwrap()).await;
    let edge = edge_with(dir.path(), "edge-1", &[shield.addr], "http2 = false").await;
    let lines = head_lines(edge.addr, "/e?size=10&early=%3C/o.css%3E;%20rel=preload&delay=300ms").await;
    assert_eq!(lines, ["HTTP/1.1 103 Early Hints", "link: </o.css>; rel=preload", "", "HTTP/1.1 200 OK"]);
    assert_eq!(origin.count("/e").await, 1);
    let over_h2 = edge_with(dir.path(), "edge-2", &[shield.addr], "").await;
    let r = via(over_h2.addr, "/e2?size=10&early=%3C/o.css%3E;%20rel=preload&delay=300ms").await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 10), "the answer whole after the shield's 1xx");
    let lines = head_lines(over_h2.addr, "/e3?size=10&early=%3C/o.css%3E;%20rel=preload&delay=300ms").await;
    assert_eq!(lines, ["HTTP/1.1 103 Early Hints", "link: </o.css>; rel=preload", "", "HTTP/1.1 200 OK"]);
    assert_eq!((origin.count("/e2").await, origin.count("/e3").await), (1, 1));
}

/// The status lines and fields a GET of `path` at `at` gets, up to and
/// with the final status line.
pub(crate) async fn head_lines(at: std::net::SocketAddr, path: &str) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(at).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: s.test\r\n\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let line = line.trim_end().to_string();
            let done = line.starts_with("HTTP/1.1 200");
            lines.push(line);
            if done {
                return lines;
            }
        }
    })
    .await
    .unwrap()
}

/// An edge whose shields are probed only every minute: a shield marked
/// down stays down for the test.
async fn edge_probing_slowly(dir: &std::path::Path, name: &str, shields: &[SocketAddr], sites: &str) -> Running {
    edge_serving(dir, name, shields, sites, "probe_interval = \"60s\"").await
}

/// A shield that passes on an origin's 5xx, or answers for an origin it
/// cannot reach or that is too slow, is up and working: one site's broken
/// origin, or any client who can make an origin answer 500, must not take
/// the shield out of service for every other site (their misses would go
/// to their origins directly). A request the shield leaves unanswered in
/// time (it tries a lone slow origin twice, past the edge's patience) has
/// it probed, and it answers the probe. A shield that cannot be reached is
/// still taken out at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origins_errors_do_not_take_the_shields_out_of_service() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    std::fs::write(dir.path().join("site.toml"), site(&[origin.addr], "")).unwrap();
    let closed = outpost_testkit::free_addr();
    std::fs::write(
        dir.path().join("gone.toml"),
        format!(
            "[site]\nid = \"gone\"\nhosts = [\"gone.test\"]\n[[origin]]\nurl = \"http://{closed}\"\n\
             connect_timeout = \"200ms\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("slow.toml"),
        format!(
            "[site]\nid = \"slow\"\nhosts = [\"slow.test\"]\n[[origin]]\nurl = \"http://{}\"\n\
             response_timeout = \"1500ms\"\n",
            origin.addr
        ),
    )
    .unwrap();
    let sites = "\"site.toml\", \"gone.toml\", \"slow.toml\"";
    let cfg = node_file(
        dir.path(),
        "shield-a",
        &format!(
            "[node]\nname = \"shield-a\"\nrole = \"shield\"\nsites = [{sites}]\naccess_log = \"off\"\n\
             [listen]\nhttp = [\"127.0.0.1:0\"]\n[cache]\nmemory = \"32MiB\"\n"
        ),
    );
    // One shield: once it is marked down, every miss goes to the origin.
    let shield = Running::spawn(outpost_shield::bind(&cfg).await.unwrap().0);
    let edge = edge_probing_slowly(dir.path(), "edge-1", &[shield.addr], sites).await;
    let through_a_shield = |r: &Resp| r.cache_status().starts_with("shield-a;");
    let url = format!("http://{}/slow?delay=10s", edge.addr);
    let r = get(&url, "slow.test").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.cache_status());
    // The shield's own 504, in the time the edge waits for it: the origin
    // that did not answer in time is not asked the same again.
    assert!(through_a_shield(&r), "the 504 came from the shield: {}", r.cache_status());
    assert_eq!(origin.count("/slow").await, 1, "the slow origin was asked once");
    // The probe it started has had time to be answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let r = via(edge.addr, &format!("/broken/{i}?status=500")).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(through_a_shield(&r), "the 500 came through the shield: {}", r.cache_status());
        let url = format!("http://{}/gone/{i}", edge.addr);
        let r = get(&url, "gone.test").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.cache_status());
        assert!(through_a_shield(&r), "the 502 came from the shield: {}", r.cache_status());
    }
    for i in 0..3 {
        let r = via(edge.addr, &format!("/fine/{i}?cc=max-age%3D600")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(through_a_shield(&r), "the shield was taken out for another site's origin: {}", r.cache_status());
    }
    shield.stop().await;
    // A shield that cannot be reached is down at once: the next miss goes
    // to the origin itself.
    via(edge.addr, "/after/0?cc=max-age%3D600").await;
    let r = via(edge.addr, "/after/1?cc=max-age%3D600").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.cache_status().starts_with("edge-1; fwd=uri-miss"), "{}", r.cache_status());
}

/// A site whose `[headers]` rules remove `Cache-Status` (or set their
/// own) has them applied at the edge only: at the shield they would take
/// away the member by which its edges tell an origin's 500 passed on from
/// the shield's own failure, and every origin error would take the shield
/// out of service and be asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sites_rules_on_cache_status_do_not_hide_a_shields_member_from_its_edges() {
    for rule in ["remove = [\"cache-status\"]", "set = { \"cache-status\" = \"forged\" }"] {
        let dir = tempfile::tempdir().unwrap();
        let origin = Origin::start().await;
        std::fs::write(dir.path().join("site.toml"), site(&[origin.addr], &format!("[headers]\n{rule}\n"))).unwrap();
        let (shield, _) = shield(dir.path(), "shield-a", "127.0.0.1:0".parse().unwrap()).await;
        let edge = edge_probing_slowly(dir.path(), "edge-1", &[shield.addr], "\"site.toml\"").await;
        let r = via(edge.addr, "/broken?status=500").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{rule}");
        assert!(!r.cache_status().contains("shield-a"), "{rule}: the edge applies the rule: {}", r.cache_status());
        assert_eq!(origin.count("/broken").await, 1, "{rule}: the origin's 500 was not asked again");
        via(edge.addr, "/fine?cc=max-age%3D600").await;
        let asked = origin.last_request("/fine").await;
        assert!(
            asked["via"].as_str().unwrap_or("").contains("shield-a"),
            "{rule}: the shield is still in service: {asked}"
        );
    }
}

/// A shield that takes connections and answers nothing (a hung process):
/// the request it leaves unanswered has it probed, the probe goes
/// unanswered too, and it is taken out: the next miss goes to the origin
/// at once instead of waiting out the shield.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_that_answers_nothing_is_taken_out_once_its_probe_is_unanswered_too() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    std::fs::write(
        dir.path().join("site.toml"),
        format!(
            "[site]\nid = \"s\"\nhosts = [\"s.test\"]\n[[origin]]\nurl = \"http://{}\"\nresponse_timeout = \"300ms\"\n",
            origin.addr
        ),
    )
    .unwrap();
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });
    let edge = edge_probing_slowly(dir.path(), "edge-1", &[hung_addr], "\"site.toml\"").await;
    let r = via(edge.addr, "/first?cc=max-age%3D600").await;
    assert_eq!(r.status, StatusCode::OK, "the origin answers once the shield has not");
    // The probe (1 s) goes unanswered, and the shield is taken out.
    let down = || edge.engine.problems().iter().any(|p| p.contains("every shield is down"));
    outpost_testkit::eventually("the hung shield taken out", || std::future::ready(down())).await;
    let started = Instant::now();
    let r = via(edge.addr, "/second?cc=max-age%3D600").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.cache_status().starts_with("edge-1; fwd=uri-miss"), "{}", r.cache_status());
    assert!(started.elapsed() < Duration::from_millis(1000), "waited {:?} for a hung shield", started.elapsed());
    held.abort();
}

/// A shield that cannot reach the site's origin (its uplink broken: here,
/// nothing listens where its site file points) answers 502
/// `detail=connect`: the edge asks the other shield for the same GET, so
/// no key the first owns is an error for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_that_cannot_reach_the_origin_is_passed_over() {
    let origin = Origin::start().await;
    let (cut, good) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let nowhere = outpost_testkit::free_addr();
    std::fs::write(cut.path().join("site.toml"), site(&[nowhere], "")).unwrap();
    std::fs::write(good.path().join("site.toml"), site(&[origin.addr], "")).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (a, _) = shield(cut.path(), "shield-a", any).await;
    let (b, _) = shield(good.path(), "shield-b", any).await;
    let e = edge(good.path(), "edge-1", &[a.addr, b.addr]).await;
    for i in 0..20 {
        let r = via(e.addr, &format!("/cut/{i}?cc=max-age%3D600")).await;
        let cs = r.cache_status();
        assert_eq!(r.status, StatusCode::OK, "{i}: {cs}");
        assert!(cs.starts_with("shield-b; fwd=uri-miss"), "{i}: through the shield that reaches the origin: {cs}");
    }
    assert_eq!(origin.stats().await["paths"].as_object().unwrap().len(), 20, "each fetched once");
}
