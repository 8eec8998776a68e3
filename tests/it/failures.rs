//! Parts fail and links break across the whole topology; clients keep being
//! served and nothing acknowledged is lost. Each scenario prints one line:
//! requests, errors, stale answers, origin fetches and, where it applies,
//! the purge lag.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::topology::{Load, SITE_HOST, Topology, dns_london, request, shield_get};

fn paths(prefix: &str, n: usize, cc: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}?size=4KiB&cc={cc}")).collect()
}

async fn warm(t: &Topology, paths: &[String]) {
    for e in 0..t.edges.len() {
        for p in paths {
            let r = t.get(e, p).await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{p}: {}", r.cache_status());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_down_for_10s_under_load() {
    let t = Topology::start().await;
    let objects = paths("/s1/", 20, "max-age%3D5");
    warm(&t, &objects).await;
    let fetched = t.origin_count("/s1/").await;
    let load = Load::start(t.edges.iter().map(|e| e.addr).collect(), objects.clone(), 12);
    tokio::time::sleep(Duration::from_millis(500)).await;

    t.origin_relay.cut();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = t.origin_count("/s1/").await - fetched;
    let attempts = t.origin_relay.refused();
    t.origin_relay.heal();
    let healed = Instant::now();
    let before_recovery = t.origin_count("/s1/").await;
    // Fresh again: every object answered without a stale marker. When
    // each was first seen fresh, since the heal.
    let mut fresh_at: Vec<Option<Duration>> = vec![None; objects.len()];
    while fresh_at.iter().any(Option::is_none) {
        assert!(healed.elapsed() < Duration::from_secs(10), "objects still stale 10 s after the origin came back");
        for (i, p) in objects.iter().enumerate() {
            let r = t.get(i % 3, p).await.unwrap();
            if !r.cache_status().contains("stale") {
                fresh_at[i].get_or_insert(healed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = healed.elapsed();
    // Objects back long enough before the last (max-age 5 s, less a second
    // for `Age`'s rounding) to have expired again meanwhile, under the load.
    let again = fresh_at.iter().flatten().filter(|at| recovered.saturating_sub(**at) >= Duration::from_secs(4)).count();
    let recovery_fetches = t.origin_count("/s1/").await - before_recovery;
    let seen = load.stop().await;
    let (requests, errors, stale) = seen.counts();
    let summary = format!(
        "origin down 10 s: {requests} requests, {errors} errors, {stale} stale, origin fetches {during} during \
         ({attempts} connection attempts refused) / {recovery_fetches} to recover ({} objects), fresh {} ms after",
        objects.len(),
        recovered.as_millis()
    );
    println!("{summary}");
    assert_eq!(errors, 0, "{summary}");
    assert!(stale > 0, "stale copies answered during the outage: {summary}");
    assert_eq!(during, 0, "the origin was unreachable: {summary}");
    // Failing keys are held (1, 2, then 4 s): a few tries per object, not
    // one per client request.
    assert!(attempts <= 10 * objects.len() as u64, "{summary}");
    // One revalidation per object brings it back (by the shield that owns
    // it, which every edge agrees on): not a storm, which would be one per
    // client request. An object back early may have expired again before
    // the last one was back, and been revalidated once more.
    assert!(recovery_fetches <= (objects.len() + again) as u64 + 2, "{again} back long before the last: {summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shield_killed_under_load_and_restarted_with_its_disk() {
    let mut t = Topology::start().await;
    let objects = paths("/s2/", 20, "max-age%3D1");
    warm(&t, &objects).await;
    // The objects shield-1 owns (every edge agrees): the ones it fetched.
    let mut owned = Vec::new();
    for p in &objects {
        let shield = t.shields[0].listen;
        let r = shield_get(shield, p).await;
        if !r.cache_status().contains("fwd=uri-miss") {
            owned.push(p.clone());
        }
    }
    let load = Load::start(t.edges.iter().map(|e| e.addr).collect(), objects.clone(), 12);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = t.origin_count("/s2/").await;
    t.shields[0].stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let while_down = t.origin_count("/s2/").await - before;
    t.shields[0].start().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = load.stop().await;
    let (requests, errors, stale) = seen.counts();

    // Straight to the restarted shield: what it held before is still on its
    // disk (a hit or a 304 revalidation of the stored copy, never a miss).
    let shield = t.shields[0].listen;
    let mut kept = 0;
    for p in &owned {
        let r = shield_get(shield, p).await;
        let cs = r.cache_status();
        if cs.contains("shield-1; hit") || cs.contains("fwd=stale; fwd-status=304") {
            kept += 1;
        }
    }
    println!(
        "shield killed: {requests} requests, {errors} errors, {stale} stale, origin fetches {while_down} by shield-2 \
         while down, {kept}/{} of its objects still on shield-1's disk after restart",
        owned.len()
    );
    assert_eq!(errors, 0);
    assert!(while_down > 0, "shield-2 took over the dead shield's keys");
    assert!(!owned.is_empty() && kept == owned.len(), "shield-1 kept its disk cache: {kept} of {}", owned.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_plane_cut_from_one_edge_during_three_purges() {
    let t = Topology::start().await;
    let objects = paths("/s3/", 3, "max-age%3D600");
    warm(&t, &objects).await;
    for e in 0..3 {
        for p in &objects {
            assert!(t.get(e, p).await.unwrap().cache_status().contains("; hit"));
        }
    }
    let load = Load::start(vec![t.edges[0].addr], objects.clone(), 4);
    t.edges[0].control_relay.cut();
    let mut last_seq = 0;
    for p in &objects {
        let body = format!("{{\"site\": \"shop\", \"urls\": [\"{p}\"], \"wait\": true, \"timeout_ms\": 2000}}");
        let r = t.purge(&body).await;
        last_seq = r["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {r}"));
        let acked = r["acked"].as_array().unwrap();
        assert!(acked.len() == 4 && !acked.iter().any(|n| n == "edge-fra"), "only the cut edge is missing: {r}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The cut edge kept serving its (now outdated) copies.
    for p in &objects {
        let r = t.get(0, p).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    // The load stops first, so the copies checked below can only be the ones
    // from before the purges.
    let seen = load.stop().await;
    t.edges[0].control_relay.heal();
    let healed = Instant::now();
    let url = format!("http://{}/v1/nodes", t.control);
    loop {
        let r = request(Method::GET, &url, "x", Some(&t.admin_token), "").await.unwrap();
        let nodes: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let acked = nodes.as_array().unwrap().iter().find(|n| n["name"] == "edge-fra").unwrap()["acked_seq"].as_u64();
        if acked.is_some_and(|a| a >= last_seq) {
            break;
        }
        assert!(healed.elapsed() < Duration::from_secs(5), "edge-fra did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lag = healed.elapsed();
    // No purged object is a hit anywhere now.
    for e in 0..3 {
        for p in &objects {
            let r = t.get(e, p).await.unwrap();
            assert!(
                !r.cache_status().rsplit(',').next().unwrap().contains("; hit"),
                "{}: {p}: {}",
                t.edges[e].name,
                r.cache_status()
            );
        }
    }
    let (requests, errors, _) = seen.counts();
    println!(
        "control cut from edge-fra: {requests} requests, {errors} errors, 0 stale, 3 purges applied {} ms after heal",
        lag.as_millis()
    );
    assert_eq!(errors, 0);
    // The reconnect waits up to its backoff (500 ms) first; the rest is
    // slack for a loaded machine. The lag is printed above.
    assert!(lag < Duration::from_secs(4), "purges applied {lag:?} after the heal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_links_between_edge_and_shield() {
    // Origin response timeout 1 s: an edge gives a shield 2 s.
    let t = Topology::start_with("1s").await;
    let objects = paths("/s6/", 4, "max-age%3D1");
    warm(&t, &objects).await;
    // 200 ms each way on edge-fra's links to both shields: slower, served.
    for r in &t.edges[0].shield_relays {
        r.set_latency(Duration::from_millis(200));
    }
    let started = Instant::now();
    let r = t.get(0, "/s6/new?size=4KiB&cc=max-age%3D60").await.unwrap();
    let slow = started.elapsed();
    assert_eq!(r.status, StatusCode::OK);
    assert!(slow >= Duration::from_millis(400), "the latency applies: {slow:?}");

    // Three seconds each way: past the timeout. Stale copies answer, and no
    // request waits longer than the timeouts of the two shields it tries.
    for r in &t.edges[0].shield_relays {
        r.set_latency(Duration::from_secs(3));
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut tasks = Vec::new();
    for p in objects.clone() {
        let addr = t.edges[0].addr;
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = request(Method::GET, &format!("http://{addr}{p}"), SITE_HOST, None, "").await.unwrap();
            (r.status, r.cache_status(), started.elapsed())
        }));
    }
    let mut slowest = Duration::ZERO;
    let mut stale = 0;
    for task in tasks {
        let (status, cs, took) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{cs}");
        stale += usize::from(cs.contains("stale-if-error"));
        slowest = slowest.max(took);
    }
    println!(
        "slow links: {} requests, 0 errors, {stale} stale, 200 ms link: {} ms; 3 s link: slowest {} ms (limit 2 s per shield)",
        objects.len() + 1,
        slow.as_millis(),
        slowest.as_millis()
    );
    assert_eq!(stale, objects.len());
    assert!(slowest < Duration::from_secs(5), "a request waited {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dns_stops_answering_a_stopped_edge_and_resumes() {
    let mut t = Topology::start().await;
    let fra: std::net::IpAddr = t.edges[0].addr.ip();
    let deadline = Instant::now() + Duration::from_secs(5);
    while dns_london(t.dns).await != vec![fra] {
        assert!(Instant::now() < deadline, "London never went to edge-fra");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    t.edges[0].stop().await;
    loop {
        let answer = dns_london(t.dns).await;
        if !answer.contains(&fra) && !answer.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still answering {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let withdrawn = started.elapsed();
    t.edges[0].start().await;
    let restarted = Instant::now();
    while !dns_london(t.dns).await.contains(&fra) {
        assert!(restarted.elapsed() < Duration::from_secs(5), "edge-fra never came back in the answers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "edge stopped: DNS stopped answering it after {} ms and answered it again {} ms after its restart (TTL 30 s)",
        withdrawn.as_millis(),
        restarted.elapsed().as_millis()
    );
}

/// Waits until London's answer satisfies `want`, within five seconds.
async fn london_until(dns: std::net::SocketAddr, what: &str, want: impl Fn(&[std::net::IpAddr]) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let answer = dns_london(dns).await;
        if want(&answer) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: still answering {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An edge that cannot reach any shield reports it; DNS sends its clients
/// to the next nearest PoP until the shields are back. An operator's drain,
/// through the CLI, does the same for a whole PoP.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dns_passes_over_an_edge_cut_from_its_shields_and_a_drained_pop() {
    let t = Topology::start().await;
    let fra = t.edges[0].addr.ip();
    let iad = t.edges[1].addr.ip();
    london_until(t.dns, "London never went to edge-fra", |a| a == [fra]).await;

    for r in &t.edges[0].shield_relays {
        r.cut();
    }
    // A miss finds both shields gone (the site may not go direct).
    let r = t.get(0, "/cut-off-miss").await.unwrap();
    assert!(r.status.is_server_error(), "{}", r.status);
    let moved = london_until(t.dns, "edge-fra lost its shields", |a| a == [iad]).await;
    let nodes =
        request(Method::GET, &format!("http://{}/v1/nodes", t.control), "x", Some(&t.admin_token), "").await.unwrap();
    let nodes: serde_json::Value = serde_json::from_slice(&nodes.body).unwrap();
    let fra_node = nodes.as_array().unwrap().iter().find(|n| n["name"] == "edge-fra").unwrap();
    let problem = fra_node["problems"][0].as_str().unwrap_or_default();
    assert!(problem.starts_with("every shield is down"), "{fra_node}");
    for r in &t.edges[0].shield_relays {
        r.heal();
    }
    let back = london_until(t.dns, "edge-fra has its shields again", |a| a == [fra]).await;
    assert_eq!(t.get(0, "/after-the-cut").await.unwrap().status, StatusCode::OK);

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(args)
            .args(["--control", &format!("http://{}", t.control)])
            .env("OUTPOST_TOKEN", &t.admin_token)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let drained = cli(&["pops", "drain", "fra", "--reason", "fibre work"]);
    assert!(drained.contains("fra") && drained.contains("fibre work"), "{drained}");
    let drain = london_until(t.dns, "fra drained", |a| a == [iad]).await;
    let listed = cli(&["pops", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["weight"], 0, "{listed}");
    cli(&["pops", "undrain", "fra"]);
    let undrain = london_until(t.dns, "fra back in service", |a| a == [fra]).await;
    println!(
        "edge-fra cut from its shields: out of London's answers in {} ms, back {} ms after the link healed; \
         fra drained: out in {} ms, back in {} ms",
        moved.as_millis(),
        back.as_millis(),
        drain.as_millis(),
        undrain.as_millis()
    );
}

/// An edge whose cache disk fills up reports it, and DNS answers its
/// PoP's other edge only, until there is room again. The edge runs as its
/// own process in a mount namespace of its own, on a 64 MiB tmpfs the test
/// fills (needs root; the mount vanishes with the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_with_a_full_cache_disk_reports_it_and_dns_answers_its_neighbour() {
    let t = Topology::start().await;
    let fra = t.edges[0].addr.ip();
    let disk = t.file("small-disk");
    std::fs::create_dir_all(&disk).unwrap();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 61], crate::topology::free_addr().port()));
    let shields: Vec<String> = t
        .shields
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{{ name = \"shield-{}\", url = \"http://{}\" }}", i + 1, s.listen))
        .collect();
    let node_file = t.file("edge-disk.toml");
    std::fs::write(
        &node_file,
        format!(
            "[node]\nname = \"edge-disk\"\nrole = \"edge\"\npop = \"fra\"\nlatitude = 50.11\nlongitude = 8.68\naccess_log = \"off\"\n\
             [listen]\nhttp = [\"{listen}\"]\n[cache]\nmemory = \"16MiB\"\ndisk = \"32MiB\"\npath = \"small-disk/cache\"\n\
             [upstream]\nshields = [{}]\n[control]\nurl = \"http://{}\"\ntoken_file = \"node.token\"\n",
            shields.join(", "),
            t.control
        ),
    )
    .unwrap();
    let script =
        r#"mount -t tmpfs -o size=64m outpost-test "$0" && fallocate -l 60m "$0/fill" && exec "$1" edge --config "$2""#;
    let child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(&disk)
        .arg(env!("CARGO_BIN_EXE_outpost"))
        .arg(&node_file)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("unshare (util-linux)");
    let mut edge = crate::topology::Process::adopt(child);
    crate::topology::wait_listening(listen, "edge-disk").await;

    let problems = || async {
        let r = request(Method::GET, &format!("http://{}/v1/nodes", t.control), "x", Some(&t.admin_token), "")
            .await
            .unwrap();
        let nodes: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let node = nodes.as_array().unwrap().iter().find(|n| n["name"] == "edge-disk").cloned();
        node.map(|n| n["problems"].clone())
    };
    let started = Instant::now();
    loop {
        let p = problems().await;
        if p.as_ref().and_then(|p| p[0].as_str()).is_some_and(|p| p.starts_with("the cache disk is full")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "edge-disk reports {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Registered and live, yet London gets edge-fra alone.
    for _ in 0..5 {
        assert_eq!(dns_london(t.dns).await, [fra]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Room again (the test reaches the tmpfs through the process's root).
    std::fs::remove_file(format!("/proc/{}/root{}/fill", edge.child.id(), disk.display())).unwrap();
    let freed = london_until(t.dns, "edge-disk has room", |a| a.contains(&listen.ip()) && a.contains(&fra)).await;
    assert_eq!(problems().await, Some(serde_json::Value::Null), "no problems left");
    edge.kill();
    println!(
        "a full cache disk: reported and passed over; answered again {} ms after room was made",
        freed.as_millis()
    );
}

#[test]
fn two_control_planes_on_one_store_the_second_refuses() {
    let dir = outpost_testkit::tempdir();
    let file = |name: &str, listen: std::net::SocketAddr| {
        let f = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &f,
            format!(
                "[node]\nname = \"{name}\"\nrole = \"control\"\n[listen]\nhttp = [\"{listen}\"]\n\
                 [store]\npath = \"shared.redb\"\n[auth]\nadmin_token_file = \"admin.token\"\nnode_token_file = \"node.token\"\n"
            ),
        )
        .unwrap();
        f
    };
    let first_listen = crate::topology::free_addr();
    let (a, b) = (file("control-a", first_listen), file("control-b", crate::topology::free_addr()));
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["control", "--config"])
        .arg(&a)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Listening means its store is open.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(first_listen).is_err() {
        assert!(Instant::now() < deadline, "the first control plane did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["control", "--config"])
        .arg(&b)
        .output()
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
    let stderr = String::from_utf8_lossy(&second.stderr);
    println!("split brain: the second control plane exited {:?}: {}", second.status.code(), stderr.trim());
    assert!(!second.status.success());
    assert!(stderr.contains("shared.redb"), "the message names the file: {stderr}");
    assert!(stderr.to_lowercase().contains("another") || stderr.to_lowercase().contains("in use"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_plane_killed_and_restarted_loses_nothing_acknowledged() {
    use crate::topology::{Options, wait_listening};
    let mut t = Topology::start_opts(Options { control_process: true, ..Options::default() }).await;
    let objects = paths("/s4/", 6, "max-age%3D600");
    warm(&t, &objects).await;
    let api = |path: &str| format!("http://{}{path}", t.control);
    // Acknowledged before the crash: a second site and a purge.
    let blog = crate::topology::site_text(t.origin, "5s")
        .replace("id = \"shop\"", "id = \"blog\"")
        .replace(SITE_HOST, "blog.test");
    let r = request(Method::PUT, &api("/v1/sites/blog"), "x", Some(&t.admin_token), &blog).await.unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
    let purge = t.purge(&format!("{{\"site\": \"shop\", \"urls\": [\"{}\"], \"wait\": true}}", objects[0])).await;
    let purge_id = purge["id"].as_str().unwrap().to_string();

    let load = Load::start(t.edges.iter().map(|e| e.addr).collect(), objects.clone(), 6);
    let process = t.control_process.as_mut().unwrap();
    process.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    t.control_process.as_mut().unwrap().restart();
    wait_listening(t.control, "the restarted control plane").await;
    let seen = load.stop().await;

    let r = request(Method::GET, &api("/v1/sites/blog"), "x", Some(&t.admin_token), "").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "the acknowledged site survived");
    let r = request(Method::GET, &api(&format!("/v1/purges/{purge_id}")), "x", Some(&t.admin_token), "").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "the acknowledged purge survived");
    // Every node reconnects by itself, and a new purge reaches all of them.
    let mut reconnected = Duration::ZERO;
    loop {
        let r = request(Method::GET, &api("/v1/nodes"), "x", Some(&t.admin_token), "").await.unwrap();
        let nodes: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let connected = nodes.as_array().unwrap().iter().filter(|n| n["connected"] == true).count();
        if connected == 5 {
            reconnected = reconnected.max(killed.elapsed());
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "only {connected} of 5 nodes reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = t.purge(&format!("{{\"site\": \"shop\", \"urls\": [\"{}\"], \"wait\": true}}", objects[1])).await;
    assert_eq!(after["acked"].as_array().unwrap().len(), 5, "{after}");
    // The blog site reached the edges too (it was in the log before the crash).
    let r = request(Method::GET, &format!("http://{}/b", t.edges[0].addr), "blog.test", None, "").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let (requests, errors, _) = seen.counts();
    println!(
        "control plane SIGKILL: {requests} requests, {errors} errors, 0 stale, site and purge kept, 5 nodes back \
         {} ms after the kill (1 s of it down)",
        reconnected.as_millis()
    );
    assert_eq!(errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_killed_under_load_restarts_with_a_consistent_disk() {
    use crate::relay::Relay;
    use crate::topology::{Process, wait_listening};
    let t = Topology::start().await;
    let listen = crate::topology::free_addr();
    let ip = listen.ip();
    let mut relays = Vec::new();
    for s in &t.shields {
        relays.push(Relay::start(s.listen).await);
    }
    let control_relay = Relay::start(t.control).await;
    let list: Vec<String> = relays
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{{ name = \"shield-{}\", url = \"http://{}\" }}", i + 1, r.addr))
        .collect();
    let file = t.file("edge-proc.toml");
    std::fs::write(
        &file,
        format!(
            "[node]\nname = \"edge-proc\"\nrole = \"edge\"\npop = \"fra\"\nlatitude = 50.11\nlongitude = 8.68\n\
             access_log = \"off\"\n[listen]\nhttp = [\"{listen}\"]\n\
             [cache]\nmemory = \"8MiB\"\ndisk = \"128MiB\"\npath = \"cache-edge-proc\"\n\
             [upstream]\nshields = [{}]\n[control]\nurl = \"http://{}\"\ntoken_file = \"node.token\"\n",
            list.join(", "),
            control_relay.addr
        ),
    )
    .unwrap();
    let mut edge = Process::spawn(&["edge", "--config", file.to_str().unwrap()]);
    wait_listening(listen, "the edge process").await;
    let objects: Vec<String> =
        (0..12).map(|i| format!("/s5/{i}?size={}&cc=max-age%3D600", ["64KiB", "1MiB", "3MiB"][i % 3])).collect();
    let in_dns = |want: bool| {
        let dns = t.dns;
        async move {
            let started = Instant::now();
            while dns_london(dns).await.contains(&ip) != want {
                assert!(
                    started.elapsed() < Duration::from_secs(6),
                    "DNS still {}answers the edge",
                    if want { "never " } else { "" }
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            started.elapsed()
        }
    };
    in_dns(true).await;
    let load = Load::start(vec![listen], objects.clone(), 6);
    // Killed under load once every object has been stored (a hit) and the
    // disk tier, which writes behind, has had time to take them.
    let warming = Instant::now();
    for p in &objects {
        while !request(Method::GET, &format!("http://{listen}{p}"), SITE_HOST, None, "")
            .await
            .is_ok_and(|r| r.cache_status().contains("edge-proc; hit"))
        {
            assert!(warming.elapsed() < Duration::from_secs(30), "{p} never became a hit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    edge.kill();
    let withdrawn = in_dns(false).await;
    let seen = load.stop().await;
    edge.restart();
    wait_listening(listen, "the restarted edge").await;
    let back = in_dns(true).await;

    // Every object, read back from the restarted edge, is byte for byte the
    // origin's; those on disk come back as hits.
    let mut hits = 0;
    for p in &objects {
        let r = request(Method::GET, &format!("http://{listen}{p}"), SITE_HOST, None, "").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{p}: {}", r.cache_status());
        let path = p.split('?').next().unwrap();
        let seed = outpost_load::content::seed(path, 0, &[]);
        assert_eq!(outpost_load::content::first_mismatch(seed, 0, &r.body), None, "{p}: corrupt body after the crash");
        hits += usize::from(r.cache_status().contains("edge-proc; hit"));
    }
    // Heads written before the kill are recovered: a disk tier that came
    // back empty would make every object a miss. (A missing body file is
    // refilled by range and still a hit; the store's own tests check that
    // body files are recovered.)
    assert!(hits > 0, "no object came back from disk after the restart");
    let (requests, errors, _) = seen.counts();
    println!(
        "edge SIGKILL: {requests} requests ({errors} cut off by the kill), 0 corrupt bodies, {hits}/{} objects hits \
         from disk after restart; DNS withdrew it in {} ms, answered it {} ms after restart",
        objects.len(),
        withdrawn.as_millis(),
        back.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_that_reaches_the_edges_before_the_shields_serves_nothing_purged() {
    let t = Topology::start().await;
    let objects = paths("/s9/", 3, "max-age%3D600");
    // A client that reaches a shield (which takes anyone, with no
    // `client_ca`) and passes for an edge far ahead of it, long ago, has
    // its own request checked with the origin at most, and nothing else:
    // the copies fetched after it are still checked once the shield is
    // behind a purge.
    for s in &t.shields {
        for claim in ["", "18446744073709551615", "18446744073709551615 0", "4000000000 99999999999", "99 x"] {
            let (seq, age) = claim.split_once(' ').unwrap_or((claim, ""));
            let url = format!("http://{}/s9/lure?size=1KiB&cc=max-age%3D600", s.listen);
            let h =
                [("host", SITE_HOST), ("x-forwarded-proto", "http"), ("outpost-seq", seq), ("outpost-seq-age", age)];
            // The first, with no claim, stores the copy the others find.
            let h: Vec<_> = h.into_iter().filter(|(_, v)| !v.is_empty()).collect();
            let r = outpost_testkit::get(&url, &h).await;
            assert_eq!(r.status, StatusCode::OK, "{claim}");
        }
    }
    warm(&t, &objects).await;
    // A client cannot make a shield go to the origin by claiming to have
    // followed the control plane further than it has.
    let one = "/s9/one?size=4KiB&cc=max-age%3D600";
    assert_eq!(t.get(0, one).await.unwrap().status, StatusCode::OK);
    let before = t.origin_count("/s9/").await;
    let url = format!("http://{}{one}", t.edges[1].addr);
    let r = outpost_testkit::get(&url, &[("host", SITE_HOST), ("outpost-seq", "18446744073709551615")]).await;
    assert!(r.cache_status().split(',').next().unwrap().contains("; hit"), "{}", r.cache_status());
    assert_eq!(t.origin_count("/s9/").await, before);
    // Straight to a shield, a value that is no sequence is no sequence.
    for s in &t.shields {
        shield_get(s.listen, one).await;
        let before = t.origin_count("/s9/").await;
        for junk in ["abc", "-1", "", "7x", "99999999999999999999999", "1e9"] {
            let url = format!("http://{}{one}", s.listen);
            let h = [("host", SITE_HOST), ("x-forwarded-proto", "http"), ("outpost-seq", junk)];
            let r = outpost_testkit::get(&url, &h).await;
            assert!(r.cache_status().contains("; hit"), "{junk:?}: {}", r.cache_status());
        }
        assert_eq!(t.origin_count("/s9/").await, before);
    }
    // The shields miss the purge: cut off from the control plane, as a
    // shield a moment behind its edges is for that moment.
    for s in &t.shields {
        s.control_relay.cut();
    }
    let urls: Vec<String> = objects.iter().map(|p| format!("\"{p}\"")).collect();
    let body = format!("{{\"site\": \"shop\", \"urls\": [{}], \"wait\": true, \"timeout_ms\": 5000}}", urls.join(", "));
    let r = t.purge(&body).await;
    let acked = r["acked"].as_array().unwrap();
    assert!(
        acked.len() == 3 && !acked.iter().any(|n| n.as_str().unwrap().starts_with("shield")),
        "the edges alone applied it: {r}"
    );
    // Each shield still holds its pre-purge copy as fresh. The edge, which
    // has none now, must not take that copy as a new one: it asks again,
    // and the shield checks with the origin.
    let before = t.origin_count("/s9/").await;
    for p in &objects {
        let r = t.get(0, p).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{p}");
        let shield_said = r.cache_status().split(',').next().unwrap_or("").to_string();
        assert!(!shield_said.contains("; hit"), "{p}: the shield served its pre-purge copy: {}", r.cache_status());
    }
    assert_eq!(t.origin_count("/s9/").await - before, objects.len() as u64, "each copy checked with the origin once");
    // What the edge stored then is served as a hit, without asking again.
    for p in &objects {
        let r = t.get(0, p).await.unwrap();
        assert!(r.cache_status().rsplit(',').next().unwrap().contains("; hit"), "{p}: {}", r.cache_status());
    }
    // Copies the shield fetched more than `CLAIM_MARGIN` after the edges
    // began to apply the purge are served as they are, however long the
    // shield stays behind (those it fetched sooner are checked again for
    // the next edge, at most once).
    tokio::time::sleep(outpost_proxy::CLAIM_MARGIN + Duration::from_millis(300)).await;
    let before = t.origin_count("/s9/").await;
    for p in &objects {
        assert_eq!(t.get(1, p).await.unwrap().status, StatusCode::OK, "{p}");
    }
    for p in &objects {
        let r = t.get(2, p).await.unwrap();
        assert!(r.cache_status().split(',').next().unwrap().contains("; hit"), "{p}: {}", r.cache_status());
    }
    assert!(t.origin_count("/s9/").await - before <= objects.len() as u64);
    for s in &t.shields {
        s.control_relay.heal();
    }
}
