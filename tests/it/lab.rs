//! The failure suite on real hosts: every node a real `outpost` process in
//! a network namespace of its own, faults done to links and processes by
//! the lab ([`outpost::lab`]). Clients run on the lab's client host. Each
//! scenario prints one line with its figures. Needs root.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use outpost::lab::{InNetns, Kind, Lab, plan};
use outpost_config::api::{DEAD_AFTER, PurgeRequest};
use outpost_testkit::Reply;

use crate::topology::{Load, dns_query, origin_fetches, request};

const SITE_HOST: &str = "www.example.test";
const SITE: &str = "example";
const NAME: &str = "example.cdn.example.test.";

/// Labs this process has up, removed if the run is interrupted.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// On Ctrl-C or SIGTERM (nextest's, at a timeout), every lab this process
/// made is removed before it exits.
fn remove_labs_on_signal() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM");
                let mut int = signal(SignalKind::interrupt()).expect("SIGINT");
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            });
            let names = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
            for n in names {
                let _ = outpost::lab::down_named_all(Some(&n));
            }
            std::process::exit(130);
        });
    });
}

/// A lab of the `up` topology (`config/`, with `edit` applied to the site
/// file), and a thread on its client host.
struct TestLab {
    lab: Lab,
    client: InNetns,
    _dir: outpost_testkit::TestDir,
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|n| *n != self.lab.plan.name);
        }
    }
}

async fn start(name: &str, ha: bool, edit: impl Fn(String) -> String) -> TestLab {
    remove_labs_on_signal();
    // What a killed run of this test left behind.
    outpost::lab::down_named_all(Some(name)).expect("listing namespaces");
    let dir = outpost_testkit::tempdir();
    let config = dir.path().join("config");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config"), &config);
    let site = config.join("example.site.toml");
    std::fs::write(&site, edit(std::fs::read_to_string(&site).unwrap())).unwrap();
    let plan = plan::build(&config, &dir.path().join("lab"), name, ha).unwrap();
    LIVE.lock().unwrap().push(name.to_string());
    let lab = Lab::up(plan, Path::new(env!("CARGO_BIN_EXE_outpost"))).await.unwrap();
    let client = lab.enter("client").unwrap();
    TestLab { lab, client, _dir: dir }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The site's origin answers within `secs` or is given up on.
fn response_timeout(secs: u64) -> impl Fn(String) -> String {
    move |site| site.replace("response_timeout = \"30s\"", &format!("response_timeout = \"{secs}s\""))
}

impl TestLab {
    fn addr(&self, host: &str) -> SocketAddr {
        let (_, h) = self.lab.plan.host(host).unwrap();
        h.addr(h.port().unwrap())
    }

    fn edges(&self) -> Vec<SocketAddr> {
        self.lab.plan.of_kind(Kind::Edge).map(|h| h.addr(h.port().unwrap())).collect()
    }

    fn edge_names(&self) -> Vec<String> {
        self.lab.plan.of_kind(Kind::Edge).map(|h| h.name.clone()).collect()
    }

    /// Every object fetched once through every edge.
    async fn warm(&self, objects: &[String]) {
        for e in self.edges() {
            for p in objects {
                assert_eq!(self.get(e, p).await.unwrap().status, StatusCode::OK, "{p} via {e}");
            }
        }
    }

    /// Steady load from the client host over every edge and `objects`.
    async fn load(&self, objects: &[String]) -> Load {
        let (edges, objects) = (self.edges(), objects.to_vec());
        self.client.run(async move { Load::start_for(SITE_HOST, edges, objects, 8) }).await
    }

    /// Requests the origin host got for paths starting with `prefix`.
    async fn origin_fetches(&self, prefix: &'static str) -> u64 {
        let origin = self.addr("origin");
        self.client.run(async move { origin_fetches(origin, prefix).await }).await
    }

    /// A GET of the site from the client host.
    async fn get(&self, edge: SocketAddr, path: &str) -> Result<Reply, String> {
        let url = format!("http://{edge}{path}");
        self.client.run(async move { request(Method::GET, &url, SITE_HOST, None, "").await }).await
    }

    /// The DNS answer the client host gets for the site's name.
    async fn resolve(&self) -> Vec<IpAddr> {
        let dns = self.addr("dns");
        self.client.run(async move { dns_query(dns, NAME, None).await }).await
    }

    async fn purge(&self, urls: &[String], timeout: Duration) -> outpost_config::api::PurgeStatus {
        let api = self.lab.admin_client().unwrap();
        let req = PurgeRequest {
            site: SITE.into(),
            urls: urls.to_vec(),
            wait: true,
            timeout_ms: Some(timeout.as_millis() as u64),
            ..PurgeRequest::default()
        };
        self.client.run(async move { api.purge(&req).await }).await.unwrap()
    }

    /// Waits (15 s at most) until `node` has applied event `seq`.
    async fn wait_applied(&self, node: &str, seq: u64) {
        let api = self.lab.admin_client().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let api = api.clone();
            let nodes = self.client.run(async move { api.nodes().await }).await.unwrap_or_default();
            if nodes.iter().any(|n| n.node.name == node && n.node.acked_seq >= seq) {
                return;
            }
            assert!(Instant::now() < deadline, "{node} did not apply {seq}: {nodes:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every edge and shield, connected to some replica.
    async fn wait_nodes_connected(&self) {
        let api = self.lab.admin_client().unwrap();
        let want: Vec<String> = self
            .lab
            .plan
            .hosts
            .iter()
            .filter(|h| matches!(h.kind, Kind::Edge | Kind::Shield))
            .map(|h| h.name.clone())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let api = api.clone();
            let nodes = self.client.run(async move { api.nodes().await }).await.unwrap_or_default();
            if want.iter().all(|w| nodes.iter().any(|n| n.node.name == *w && n.connected)) {
                return;
            }
            assert!(Instant::now() < deadline, "nodes not all connected: {nodes:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn last_member(r: &Reply) -> String {
    r.cache_status().rsplit(',').next().unwrap_or_default().trim().to_string()
}

/// A client resolving the site by name through the geo-DNS server and
/// fetching from the edge it was sent to; that edge's host is isolated
/// mid-run. DNS stops answering it within the registry's timeout and the
/// client's next fetch goes to another PoP's edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_dns_moves_a_client_off_an_isolated_edge() {
    let t = start("dnsmove", false, |s| s).await;
    let names = t.edge_names();
    let by_ip = |ip: IpAddr| t.lab.plan.hosts.iter().find(|h| IpAddr::V4(h.ip) == ip).map(|h| h.name.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        let answer = t.resolve().await;
        if let Some(ip) = answer.first() {
            break *ip;
        }
        assert!(Instant::now() < deadline, "DNS never answered {NAME}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first_name = by_ip(first).unwrap();
    assert!(names.contains(&first_name), "DNS answered {first}, no edge");
    let path = "/dns/a?size=1KiB&cc=max-age%3D60";
    let r = t.get(SocketAddr::new(first, 8080), path).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.cache_status().contains(&first_name), "{}", r.cache_status());

    let (mut requests, mut errors) = (0u64, 0u64);
    let isolated = Instant::now();
    t.lab.isolate(&first_name).unwrap();
    let (moved_to, detect) = loop {
        let answer = t.resolve().await;
        requests += 1;
        if let Some(ip) = answer.first().filter(|ip| **ip != first) {
            break (*ip, isolated.elapsed());
        }
        assert!(isolated.elapsed() < DEAD_AFTER * 3, "DNS still answers the isolated {first_name}: {answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let moved_name = by_ip(moved_to).unwrap();
    let r = t.get(SocketAddr::new(moved_to, 8080), path).await.unwrap();
    requests += 1;
    errors += u64::from(r.status != StatusCode::OK);
    assert_eq!(r.status, StatusCode::OK);
    assert!(last_member(&r).starts_with(&moved_name), "{}", r.cache_status());

    t.lab.rejoin(&first_name).unwrap();
    let rejoined = Instant::now();
    while !t.resolve().await.contains(&first) {
        assert!(rejoined.elapsed() < Duration::from_secs(15), "{first_name} never came back in the answers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recover = rejoined.elapsed();
    println!(
        "lab: edge host isolated: {requests} requests, {errors} errors, DNS moved {first_name} -> {moved_name} in {} ms \
         (registry timeout {} ms), answered it again {} ms after it rejoined",
        detect.as_millis(),
        DEAD_AFTER.as_millis(),
        recover.as_millis()
    );
    // Within the registry timeout, give or take this test's own polling.
    assert!(detect <= DEAD_AFTER + Duration::from_millis(300), "DNS moved after {detect:?}");
}

/// A shield host paused (SIGSTOP: hung, not dead) under load: the edges
/// time out on it, mark it down and go on through the other shield, and
/// take it back once it is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_a_paused_shield_under_load() {
    let t = start("pause", false, response_timeout(2)).await;
    let edges = t.edges();
    // Keys shield-1 owns: never stored, so every request asks its owner.
    let mut owned = Vec::new();
    for i in 0..40 {
        let p = format!("/pause/own{i}?size=1KiB&cc=no-store");
        let r = t.get(edges[0], &p).await.unwrap();
        if r.cache_status().contains("shield-1;") {
            owned.push(p);
        }
    }
    assert!(owned.len() >= 5, "shield-1 owns {} of 40 keys", owned.len());
    let objects: Vec<String> = (0..20).map(|i| format!("/pause/o{i}?size=4KiB&cc=max-age%3D2")).collect();
    t.warm(&objects).await;
    let load = t.load(&objects).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = t.origin_fetches("/pause/o").await;
    let paused = Instant::now();
    t.lab.pause("shield-1").unwrap();
    // Detected: a key shield-1 owns is answered quickly without it.
    let mut probes = owned.iter().cycle();
    let detect = loop {
        let p = probes.next().unwrap();
        let asked = Instant::now();
        let r = t.get(edges[0], p).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{p}: {}", r.cache_status());
        if asked.elapsed() < Duration::from_millis(500) && !r.cache_status().contains("shield-1;") {
            break paused.elapsed();
        }
        assert!(paused.elapsed() < Duration::from_secs(20), "the edge still waits on the paused shield");
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    t.lab.resume("shield-1").unwrap();
    let resumed = Instant::now();
    let recover = loop {
        let r = t.get(edges[0], &owned[0]).await.unwrap();
        if r.cache_status().contains("shield-1;") {
            break resumed.elapsed();
        }
        assert!(resumed.elapsed() < Duration::from_secs(10), "shield-1 not taken back: {}", r.cache_status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seen = load.stop().await;
    let fetched = t.origin_fetches("/pause/o").await - before;
    let (requests, errors, stale) = seen.counts();
    let slowest = seen.slowest_ms.load(Ordering::Relaxed);
    println!(
        "lab: shield host paused: {requests} requests, {errors} errors, {stale} stale, slowest {slowest} ms, \
         origin fetches {fetched} ({} objects, max-age 2 s), detected in {} ms (response timeout 2 s), \
         taken back {} ms after resume",
        objects.len(),
        detect.as_millis(),
        recover.as_millis()
    );
    assert_eq!(errors, 0);
    assert!(requests > 100, "{requests} requests");
}

/// A shield cut off from the origin while the edges still reach it: every
/// GET of a key it owns is answered through the other shield, with no
/// error. The first waits out the link timeout on the connection the
/// shield held to the origin (not the 30 s response timeout) and the
/// shield's failed connects after it; from then on the edges pass
/// it over for the site, so no request waits on it. Once the link heals it
/// owns its keys again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_a_shield_cut_from_the_origin_is_passed_over() {
    // The origin's response timeout stays 30 s: the cut shows in the
    // link timeout, as packets sent to the origin go unacknowledged.
    let t = start("uplink", false, |site| {
        site.replace("response_timeout = \"30s\"", "response_timeout = \"30s\"\nlink_timeout = \"2s\"")
    })
    .await;
    let edge = t.edges()[0];
    // Keys shield-1 owns: never stored, so every request asks its owner.
    let mut owned = Vec::new();
    for i in 0..40 {
        let p = format!("/uplink/own{i}?size=1KiB&cc=no-store");
        let r = t.get(edge, &p).await.unwrap();
        if r.cache_status().contains("shield-1;") {
            owned.push(p);
        }
    }
    assert!(owned.len() >= 5, "shield-1 owns {} of 40 keys", owned.len());

    t.lab.cut("shield-1", "origin", true).unwrap();
    let mut took = Vec::new();
    for p in &owned {
        let asked = Instant::now();
        let r = t.get(edge, p).await.unwrap();
        took.push(asked.elapsed());
        assert_eq!(r.status, StatusCode::OK, "{p}: {}", r.cache_status());
        assert!(r.cache_status().contains("shield-2;"), "{p}: {}", r.cache_status());
    }
    let waited = took.iter().filter(|d| **d >= Duration::from_millis(800)).count();
    assert!(waited <= 1, "only the first request waits on the cut-off shield: {took:?}");
    assert!(took[0] < Duration::from_secs(10), "the cut shows in the 2 s link timeout: {took:?}");

    t.lab.heal("shield-1", "origin").unwrap();
    let healed = Instant::now();
    let back = loop {
        let r = t.get(edge, &owned[0]).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.cache_status());
        if r.cache_status().contains("shield-1;") {
            break healed.elapsed();
        }
        assert!(healed.elapsed() < Duration::from_secs(40), "shield-1 not taken back: {}", r.cache_status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "lab: shield cut from the origin: {} of its keys answered through the other shield, no error, the first in {} ms, the slowest after it {} ms; owned again {} ms after the link healed",
        owned.len(),
        took[0].as_millis(),
        took[1..].iter().max().unwrap().as_millis(),
        back.as_millis()
    );
}

/// An edge host isolated while purges are issued, then healed: it applies
/// them in order, and serves nothing purged afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_an_isolated_edge_catches_up_on_purges_in_order() {
    let t = start("purge", false, |s| s).await;
    t.wait_nodes_connected().await;
    let edges = t.edges();
    let fra = edges[0];
    let objects: Vec<String> = (0..5).map(|i| format!("/purge/o{i}?size=2KiB&cc=max-age%3D600")).collect();
    for p in &objects {
        t.get(fra, p).await.unwrap();
        assert!(t.get(fra, p).await.unwrap().is_hit(), "{p} is not cached at edge-fra");
    }
    t.lab.isolate("edge-fra").unwrap();
    let mut seqs = Vec::new();
    for p in &objects {
        let status = t.purge(std::slice::from_ref(p), Duration::from_secs(2)).await;
        assert!(!status.acked.iter().any(|n| n == "edge-fra"), "the isolated edge acked: {status:?}");
        seqs.push(status.seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "purges out of order: {seqs:?}");
    let last = *seqs.last().unwrap();
    t.lab.rejoin("edge-fra").unwrap();
    let healed = Instant::now();
    t.wait_applied("edge-fra", last).await;
    let lag = healed.elapsed();
    let mut served_purged = 0;
    for p in &objects {
        let r = t.get(fra, p).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        served_purged += usize::from(r.is_hit());
    }
    println!(
        "lab: edge host isolated during {} purges: applied in order (seq {}..={last}) {} ms after it rejoined, \
         {served_purged} purged objects served",
        objects.len(),
        seqs[0],
        lag.as_millis()
    );
    assert_eq!(served_purged, 0);
}

/// An etcd member and a control-plane replica isolated together (the
/// minority): writes there get 503 with the reason; writes on the majority
/// side succeed and reach every node, those that followed the cut-off
/// replica too; after the heal, both sides agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_a_minority_of_the_control_plane_refuses_writes() {
    let t = start("minority", true, |s| s).await;
    t.wait_nodes_connected().await;
    let minority = t.lab.enter("control-2").unwrap();
    let token = std::fs::read_to_string(t.lab.plan.admin_token.as_ref().unwrap()).unwrap().trim().to_string();
    let cut_off = t.addr("control-2");
    let purge_there = move |path: &'static str| {
        let (url, token) = (format!("http://{cut_off}/v1/purge"), token.clone());
        async move {
            let body = format!("{{\"site\": \"{SITE}\", \"urls\": [\"{path}\"]}}");
            request(Method::POST, &url, "", Some(&token), &body).await
        }
    };
    let r = minority.run(purge_there("/minority/before")).await.unwrap();
    assert!(r.status.is_success(), "{}: {}", r.status, String::from_utf8_lossy(&r.body));

    t.lab.partition(&["etcd-3", "control-2"]).unwrap();
    let cut = Instant::now();
    let refused = loop {
        let r = minority.run(purge_there("/minority/during")).await.unwrap();
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            break r;
        }
        assert!(cut.elapsed() < Duration::from_secs(15), "the cut-off replica still writes: {}", r.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let detect = cut.elapsed();
    let reason: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(reason["error"], "no_quorum", "{reason}");

    // The majority side: a purge every node applies, those that followed
    // control-2 included.
    let nodes = t.lab.plan.hosts.iter().filter(|h| matches!(h.kind, Kind::Edge | Kind::Shield)).count();
    let purged = Instant::now();
    let status = t.purge(&["/minority/majority".to_string()], Duration::from_secs(15)).await;
    let majority_seq = status.seq;
    let api = t.lab.admin_client().unwrap();
    let everywhere = loop {
        let api = api.clone();
        let listed = t.client.run(async move { api.nodes().await }).await;
        let applied = listed.as_ref().map_or(0, |all| {
            all.iter().filter(|n| n.node.acked_seq >= majority_seq && n.node.role != outpost_config::Role::Dns).count()
        });
        if applied == nodes {
            break purged.elapsed();
        }
        assert!(purged.elapsed() < Duration::from_secs(30), "{applied} of {nodes} nodes applied the purge: {listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    t.lab.heal_all().unwrap();
    let healed = Instant::now();
    let back = loop {
        let r = minority.run(purge_there("/minority/after")).await.unwrap();
        if r.status.is_success() {
            break r;
        }
        assert!(healed.elapsed() < Duration::from_secs(20), "control-2 still refuses: {}", r.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recover = healed.elapsed();
    let after: serde_json::Value = serde_json::from_slice(&back.body).unwrap();
    assert!(after["seq"].as_u64().unwrap() > majority_seq, "control-2 wrote behind the majority: {after}");
    // Both replicas see the same log end.
    let health =
        |addr: SocketAddr| async move { request(Method::GET, &format!("http://{addr}/healthz"), "", None, "").await };
    let one = t.client.run(health(t.addr("control"))).await.unwrap();
    let two = minority.run(health(cut_off)).await.unwrap();
    let (one, two): (serde_json::Value, serde_json::Value) =
        (serde_json::from_slice(&one.body).unwrap(), serde_json::from_slice(&two.body).unwrap());
    assert_eq!(one["seq"], two["seq"], "the replicas disagree: {one} / {two}");
    println!(
        "lab: etcd-3 and control-2 cut off: writes there refused (503 no_quorum) after {} ms, the majority's purge \
         applied by all {nodes} nodes in {} ms, control-2 wrote again {} ms after the heal, both at seq {}",
        detect.as_millis(),
        everywhere.as_millis(),
        recover.as_millis(),
        one["seq"]
    );
}

/// The origin's host isolated under load: the edges answer from cache
/// (stale where it expired) with no errors and no origin fetches, and are
/// fresh again soon after it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_origin_host_isolated_under_load() {
    let t = start("origin", false, response_timeout(2)).await;
    let edges = t.edges();
    let objects: Vec<String> = (0..10).map(|i| format!("/origin/o{i}?size=4KiB&cc=max-age%3D2")).collect();
    t.warm(&objects).await;
    let load = t.load(&objects).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Counted on the origin's own host, which still reaches itself while
    // cut off: the count brackets exactly the isolation, not a fetch that
    // landed just before it or a revalidation just after the rejoin.
    let at_origin = t.lab.enter("origin").unwrap();
    let origin = t.addr("origin");
    let count = || at_origin.run(async move { origin_fetches(origin, "/origin/").await });
    t.lab.isolate("origin").unwrap();
    let before = count().await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = count().await - before;
    t.lab.rejoin("origin").unwrap();
    let healed = Instant::now();
    let recover = loop {
        let mut fresh = 0;
        for (i, p) in objects.iter().enumerate() {
            let r = t.get(edges[i % edges.len()], p).await.unwrap();
            fresh += usize::from(!r.cache_status().contains("stale"));
        }
        if fresh == objects.len() {
            break healed.elapsed();
        }
        assert!(healed.elapsed() < Duration::from_secs(15), "objects still stale 15 s after the origin came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recovery_fetches = t.origin_fetches("/origin/").await - before - during;
    let seen = load.stop().await;
    let (requests, errors, stale) = seen.counts();
    println!(
        "lab: origin host isolated 8 s: {requests} requests, {errors} errors, {stale} stale, origin fetches {during} \
         during / {recovery_fetches} to recover ({} objects), fresh {} ms after it rejoined",
        objects.len(),
        recover.as_millis()
    );
    assert_eq!(during, 0, "nothing reached the isolated origin");
    assert_eq!(errors, 0);
    assert!(stale > 0, "stale copies answered during the outage");
}

/// A shield's process killed with SIGKILL under load and restarted with
/// its disk: no client error, and what it held is still on its disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_a_shield_killed_and_restarted_with_its_disk() {
    let t = start("shieldkill", false, |s| s).await;
    let edges = t.edges();
    let objects: Vec<String> = (0..20).map(|i| format!("/kill/o{i}?size=4KiB&cc=max-age%3D600")).collect();
    let mut owned = Vec::new();
    for p in &objects {
        let r = t.get(edges[0], p).await.unwrap();
        if r.cache_status().contains("shield-1;") {
            owned.push(p.clone());
        }
    }
    assert!(!owned.is_empty());
    let load = t.load(&objects).await;
    // Under load, and long enough for the disk tier to have written what
    // the shield stored (it writes in the background; one second was not
    // always enough for the edge's in
    // `lab_an_edge_killed_under_load_restarts_with_a_consistent_disk`).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = t.origin_fetches("/kill/").await;
    t.lab.kill("shield-1").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let while_down = t.origin_fetches("/kill/").await - before;
    let restarting = Instant::now();
    t.lab.restart("shield-1").await.unwrap();
    let restarted = restarting.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = load.stop().await;
    // Straight to the restarted shield, from the client host.
    let shield = t.addr("shield-1");
    let mut kept = 0;
    for p in &owned {
        let url = format!("http://{shield}{p}");
        let r = t
            .client
            .run(async move { outpost_testkit::get(&url, &[("host", SITE_HOST), ("x-forwarded-proto", "http")]).await })
            .await;
        kept += usize::from(r.cache_status().contains("shield-1; hit"));
    }
    let (requests, errors, _) = seen.counts();
    println!(
        "lab: shield host's process killed: {requests} requests, {errors} errors, origin fetches {while_down} while \
         it was down, restarted and listening in {} ms, {kept}/{} objects still on its disk",
        restarted.as_millis(),
        owned.len()
    );
    assert_eq!(errors, 0);
    assert_eq!(kept, owned.len(), "the restarted shield lost objects from its disk");
}

/// The link between the control plane and one edge cut both ways during
/// three purges, under load: the edge keeps serving, the others apply the
/// purges, and after the heal the cut edge applies them in order and
/// serves nothing purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_control_cut_from_one_edge_during_purges() {
    let t = start("ctlcut", false, |s| s).await;
    t.wait_nodes_connected().await;
    let fra = t.addr("edge-fra");
    let objects: Vec<String> = (0..3).map(|i| format!("/ctlcut/o{i}?size=2KiB&cc=max-age%3D600")).collect();
    t.warm(&objects).await;
    // Load on the cut edge only: what another edge fetches after a purge
    // is rightly a hit later.
    let load = {
        let objects = objects.clone();
        t.client.run(async move { Load::start_for(SITE_HOST, vec![fra], objects, 4) }).await
    };
    t.lab.cut("edge-fra", "control", true).unwrap();
    let mut seqs = Vec::new();
    for p in &objects {
        let status = t.purge(std::slice::from_ref(p), Duration::from_secs(2)).await;
        assert!(!status.acked.iter().any(|n| n == "edge-fra"), "the cut edge acked: {status:?}");
        assert_eq!(status.acked.len(), 4, "every other node applied it: {status:?}");
        seqs.push(status.seq);
    }
    // The cut edge still serves its (now outdated) copies.
    for p in &objects {
        assert_eq!(t.get(fra, p).await.unwrap().status, StatusCode::OK);
    }
    let seen = load.stop().await;
    t.lab.heal("edge-fra", "control").unwrap();
    let healed = Instant::now();
    let last = *seqs.last().unwrap();
    t.wait_applied("edge-fra", last).await;
    let lag = healed.elapsed();
    let mut hits = 0;
    for e in t.edges() {
        for p in &objects {
            hits += usize::from(last_member(&t.get(e, p).await.unwrap()).contains("; hit"));
        }
    }
    let (requests, errors, stale) = seen.counts();
    println!(
        "lab: control cut from edge-fra during 3 purges: {requests} requests, {errors} errors, {stale} stale, \
         purges {seqs:?} applied {} ms after the heal, {hits} purged objects served as hits",
        lag.as_millis()
    );
    assert_eq!(errors, 0);
    assert_eq!(hits, 0);
}

/// An edge's process killed with SIGKILL under load: DNS stops answering
/// it, and answers it again once it is restarted with its disk, which
/// gives back every object byte for byte, those it had stored as hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_an_edge_killed_under_load_restarts_with_a_consistent_disk() {
    let t = start("edgekill", false, |s| s).await;
    let fra = t.addr("edge-fra");
    let t = &t;
    let in_dns = |want: bool| async move {
        let started = Instant::now();
        while t.resolve().await.contains(&fra.ip()) != want {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "DNS {} the edge",
                if want { "never answers" } else { "still answers" }
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        started.elapsed()
    };
    in_dns(true).await;
    let objects: Vec<String> =
        (0..12).map(|i| format!("/edgekill/{i}?size={}&cc=max-age%3D600", ["64KiB", "1MiB", "3MiB"][i % 3])).collect();
    let load = {
        let objects = objects.clone();
        t.client.run(async move { Load::start_for(SITE_HOST, vec![fra], objects, 6) }).await
    };
    // Under load until the edge holds every object (a loaded machine takes
    // longer to fetch them), and three seconds more for its disk tier to
    // write the heads (one was not always enough on a machine running the
    // whole suite in one process).
    let started = Instant::now();
    for p in &objects {
        while !t.get(fra, p).await.is_ok_and(|r| last_member(&r).starts_with("edge-fra; hit")) {
            assert!(started.elapsed() < Duration::from_secs(30), "{p} never became a hit at the edge");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    t.lab.kill("edge-fra").unwrap();
    let withdrawn = in_dns(false).await;
    let seen = load.stop().await;
    t.lab.restart("edge-fra").await.unwrap();
    let back = in_dns(true).await;
    let mut hits = 0;
    for p in &objects {
        let r = t.get(fra, p).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{p}: {}", r.cache_status());
        let path = p.split('?').next().unwrap();
        let seed = outpost_load::content::seed(path, 0, &[]);
        assert_eq!(outpost_load::content::first_mismatch(seed, 0, &r.body), None, "{p}: corrupt body after the kill");
        hits += usize::from(last_member(&r).starts_with("edge-fra; hit"));
    }
    let (requests, errors, _) = seen.counts();
    println!(
        "lab: edge host's process killed: {requests} requests ({errors} cut off by the kill), 0 corrupt bodies, \
         {hits}/{} objects hits from disk after restart; DNS withdrew it in {} ms, answered it {} ms after restart",
        objects.len(),
        withdrawn.as_millis(),
        back.as_millis()
    );
    assert!(hits > 0, "nothing came back from the disk");
}

/// The control plane's process killed with SIGKILL under load and
/// restarted: what it acknowledged is kept, every node reconnects by
/// itself, and clients saw no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_control_plane_killed_and_restarted_loses_nothing_acknowledged() {
    let t = start("ctlkill", false, |s| s).await;
    t.wait_nodes_connected().await;
    let objects: Vec<String> = (0..6).map(|i| format!("/ctlkill/o{i}?size=4KiB&cc=max-age%3D600")).collect();
    t.warm(&objects).await;
    let before = t.purge(&objects[..1], Duration::from_secs(5)).await;
    assert_eq!(before.acked.len(), 5, "{before:?}");
    let load = t.load(&objects).await;
    t.lab.kill("control").unwrap();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    t.lab.restart("control").await.unwrap();
    let api = t.lab.admin_client().unwrap();
    let kept = {
        let (api, id) = (api.clone(), before.id.clone());
        t.client.run(async move { api.purge_status(&id).await }).await.unwrap()
    };
    assert_eq!(kept.seq, before.seq, "the acknowledged purge survived");
    t.wait_nodes_connected().await;
    let reconnected = killed.elapsed();
    let after = t.purge(&objects[1..2], Duration::from_secs(5)).await;
    assert_eq!(after.acked.len(), 5, "{after:?}");
    let seen = load.stop().await;
    let (requests, errors, _) = seen.counts();
    println!(
        "lab: control plane's process killed: {requests} requests, {errors} errors, the acknowledged purge kept, \
         every node back {} ms after the kill (1 s of it down)",
        reconnected.as_millis()
    );
    assert_eq!(errors, 0);
}

/// `outpost lab up` interrupted, once while it builds and once while it
/// runs, leaves no namespace and no process behind.
#[test]
fn lab_interrupted_leaves_nothing_behind() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (signal, when) in [("TERM", "running"), ("INT", "building")] {
        let dir = outpost_testkit::tempdir();
        let name = format!("int{}", signal.to_lowercase());
        let _ = outpost::lab::down_named_all(Some(&name));
        let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["lab", "up", "--name", &name, "--config-dir"])
            .arg(root.join("config"))
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Read all it prints, as a terminal would.
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (up_tx, up_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if line.contains("is up") {
                    let _ = up_tx.send(());
                }
            }
        });
        if when == "running" {
            assert!(up_rx.recv_timeout(Duration::from_secs(60)).is_ok(), "the lab never came up");
        } else {
            // Some hosts exist, not all.
            let deadline = Instant::now() + Duration::from_secs(20);
            while outpost::lab::net::namespaces(Some(&name)).unwrap().len() < 3 {
                assert!(Instant::now() < deadline, "the lab never started building");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let pid = child.id().to_string();
        assert!(Command::new("kill").args([format!("-{signal}").as_str(), &pid]).status().unwrap().success());
        let status = child.wait().unwrap();
        let left = outpost::lab::net::namespaces(Some(&name)).unwrap();
        let procs = Command::new("pgrep").args(["-f", &dir.path().display().to_string()]).output().unwrap();
        println!("lab: SIG{signal} while {when}: exited {status}, {} namespaces left", left.len());
        assert!(left.is_empty(), "SIG{signal} while {when} left {left:?}");
        assert_eq!(status.success(), when == "running", "exit status {status} after SIG{signal} while {when}");
        assert!(
            procs.stdout.is_empty(),
            "SIG{signal} while {when} left processes: {}",
            String::from_utf8_lossy(&procs.stdout)
        );
    }
}

/// The README's walk through `outpost lab`: up (detached), a fetch from
/// the client host, every fault verb as `status` shows it, and down.
#[test]
fn lab_cli_drives_a_detached_lab() {
    use std::process::Command;
    let dir = outpost_testkit::tempdir();
    let name = "cli";
    let _ = outpost::lab::down_named_all(Some(name));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lab = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .arg("lab")
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .current_dir(root)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "lab {args:?}: {}{text}", String::from_utf8_lossy(&out.stderr));
        text
    };
    struct Down<'a>(&'a str);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = outpost::lab::down_named_all(Some(self.0));
        }
    }
    let _down = Down(name);
    let up = lab(&["up", "--name", name, "--detach"]);
    assert!(up.contains("is up"), "{up}");
    let status = |lab: &dyn Fn(&[&str]) -> String| -> serde_json::Value {
        serde_json::from_str(&lab(&["status", "--json"])).unwrap()
    };
    let host = |s: &serde_json::Value, h: &str| s.as_array().unwrap().iter().find(|x| x["name"] == h).unwrap().clone();
    let edge = host(&status(&lab), "edge-fra");
    let url = format!("http://{}:8080/readme?size=64&cc=max-age%3D60", edge["ip"].as_str().unwrap());
    let fetch = lab(&[
        "exec",
        "client",
        "--",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: www.example.test",
        &url,
    ]);
    assert_eq!(fetch, "200");

    lab(&["cut", "edge-fra", "shield-1"]);
    lab(&["cut", "edge-sin", "shield-2", "--one-way"]);
    lab(&["isolate", "edge-iad"]);
    lab(&["pause", "shield-2"]);
    lab(&["kill", "origin"]);
    let s = status(&lab);
    assert_eq!(host(&s, "shield-1")["cut_from"], serde_json::json!(["edge-fra"]));
    assert_eq!(host(&s, "edge-fra")["cut_from"], serde_json::json!(["shield-1"]));
    assert_eq!(
        host(&s, "shield-2")["cut_from"],
        serde_json::json!(["edge-sin"]),
        "one way: shield-2 hears nothing from edge-sin"
    );
    assert_eq!(host(&s, "edge-sin")["cut_from"], serde_json::json!([]));
    assert_eq!(host(&s, "edge-iad")["linked"], false);
    assert_eq!(host(&s, "shield-2")["process"], "paused");
    assert_eq!(host(&s, "origin")["process"], "dead");

    lab(&["heal", "--all"]);
    lab(&["resume", "shield-2"]);
    lab(&["restart", "origin"]);
    let s = status(&lab);
    for h in s.as_array().unwrap() {
        assert_eq!(h["cut_from"], serde_json::json!([]), "{h}");
        assert_eq!(h["linked"], true, "{h}");
        assert!(h["process"] == "running" || h["kind"] == "client", "{h}");
    }
    let down = lab(&["down"]);
    assert!(down.contains("removed"), "{down}");
    assert!(outpost::lab::net::namespaces(Some(name)).unwrap().is_empty());
}

/// Without root, the lab refuses with what to do, and creates nothing.
#[test]
fn lab_refuses_without_privilege() {
    let dir = outpost_testkit::tempdir();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(env!("CARGO_BIN_EXE_outpost"))
        .args(["lab", "up", "--name", "noroot", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(outpost::lab::net::namespaces(Some("noroot")).unwrap().is_empty());
}

/// A namespace of its own, removed (with what runs in it) when dropped.
struct Netns(String);

impl Netns {
    fn create(lab: &str) -> Netns {
        remove_labs_on_signal();
        outpost::lab::down_named_all(Some(lab)).expect("listing namespaces");
        LIVE.lock().unwrap().push(lab.to_string());
        let ns = Netns(outpost::lab::net::ns_name(lab, "net"));
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ip(&["netns", "add", &ns.0]);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        for i in 11..=13 {
            ip(&["-n", &ns.0, "addr", "add", &format!("fd00:77::{i}/128"), "dev", "lo"]);
        }
        ns
    }

    /// `outpost ARGS` inside the namespace, killed when dropped.
    fn spawn(&self, args: &[&str]) -> crate::topology::Process {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.0, env!("CARGO_BIN_EXE_outpost")])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        crate::topology::Process::adopt(child)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        outpost::lab::net::delete_ns(&self.0, Duration::from_secs(2));
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|n| !self.0.contains(&format!("-{n}-")));
        }
    }
}

/// IPv6 end to end: three edges that listen only on IPv6 addresses (in a
/// namespace of the test's own), registered with the control plane; an
/// IPv6 client subnet gets its nearest PoP's edge as AAAA, fetches the site
/// from it over IPv6, and moves to the next nearest PoP when that edge is
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_aaaa_steers_ipv6_clients_to_ipv6_edges_end_to_end() {
    use hickory_proto::rr::RecordType;
    let ns = Netns::create("v6");
    let dir = outpost_testkit::tempdir();
    let d = dir.path();
    let path = |f: &str| d.join(f).to_str().unwrap().to_string();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/geoip/sample.mmdb"), d.join("geo.mmdb")).unwrap();
    let control = "[control]\nurl = \"http://127.0.0.1:7000\"\ntoken_file = \"node.token\"\n";
    std::fs::write(
        d.join("control.toml"),
        "[node]\nname = \"control\"\nrole = \"control\"\n[listen]\nhttp = [\"127.0.0.1:7000\"]\n\
         [store]\npath = \"control.redb\"\n[auth]\nadmin_token_file = \"admin.token\"\nnode_token_file = \"node.token\"\n",
    )
    .unwrap();
    let pops = [("fra", 50.11, 8.68, 11), ("iad", 38.95, -77.45, 12), ("sin", 1.35, 103.99, 13)];
    let mut dns = String::from(
        "[node]\nname = \"dns\"\nrole = \"dns\"\n[listen]\ndns = \"[::1]:5353\"\n\
         [dns]\nzone = \"cdn.test.\"\ngeoip = \"geo.mmdb\"\ndefault_pop = \"fra\"\nsites = [\"shop\"]\n",
    );
    for (pop, lat, lon, i) in pops {
        dns.push_str(&format!(
            "[[dns.pop]]\nname = \"{pop}\"\nlatitude = {lat}\nlongitude = {lon}\nnetworks = [\"fd00:77::/64\"]\n"
        ));
        std::fs::write(
            d.join(format!("edge-{pop}.toml")),
            format!(
                "[node]\nname = \"edge-{pop}\"\nrole = \"edge\"\npop = \"{pop}\"\nlatitude = {lat}\nlongitude = {lon}\n\
                 access_log = \"off\"\n[listen]\nhttp = [\"[fd00:77::{i}]:8080\"]\n[cache]\nmemory = \"16MiB\"\n\
                 [upstream]\nmode = \"origin\"\n{control}"
            ),
        )
        .unwrap();
    }
    std::fs::write(d.join("dns.toml"), format!("{dns}{control}")).unwrap();

    let _origin = ns.spawn(&["origin", "--listen", "127.0.0.1:9000"]);
    let _control = ns.spawn(&["control", "--config", &path("control.toml")]);
    let client = InNetns::enter(&ns.0).unwrap();
    let get = |url: String, host: &'static str, token: Option<String>, body: String| {
        client.run(async move {
            let method = if body.is_empty() { Method::GET } else { Method::PUT };
            request(method, &url, host, token.as_deref(), &body).await
        })
    };
    let until = |what: &str, started: Instant| {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
    };
    let started = Instant::now();
    while get("http://127.0.0.1:7000/healthz".into(), "x", None, String::new()).await.is_err() {
        until("the control plane never listened", started);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = std::fs::read_to_string(d.join("admin.token")).unwrap();
    let site = "[site]\nid = \"shop\"\nhosts = [\"shop.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:9000\"\n";
    let stored: Reply = get("http://127.0.0.1:7000/v1/sites/shop".into(), "x", Some(admin), site.into()).await.unwrap();
    assert!(stored.status.is_success(), "{}", String::from_utf8_lossy(&stored.body));
    let mut edges: Vec<_> =
        pops.iter().map(|(pop, ..)| ns.spawn(&["edge", "--config", &path(&format!("edge-{pop}.toml"))])).collect();
    let _dns = ns.spawn(&["dns", "--config", &path("dns.toml")]);

    let dns_addr: SocketAddr = "[::1]:5353".parse().unwrap();
    let aaaa = |subnet: &'static str| {
        client.run(async move {
            crate::topology::dns_records(dns_addr, "shop.cdn.test.", RecordType::AAAA, Some((subnet, 48))).await
        })
    };
    let v6 = |i: u8| vec![format!("fd00:77::{i}").parse::<IpAddr>().unwrap()];
    // Every edge registered with its IPv6 address: each client network
    // gets its nearest PoP's edge.
    let started = Instant::now();
    for (subnet, edge) in [("2a02:c7c::", 11), ("2001:4860::", 12), ("2001:218::", 13)] {
        while aaaa(subnet).await != v6(edge) {
            until(&format!("{subnet}/48 never got edge {edge}: {:?}", aaaa(subnet).await), started);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let steered = started.elapsed();
    // The site, through the London answer, over IPv6.
    let r = get("http://[fd00:77::11]:8080/v6-object".into(), "shop.test", None, String::new()).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    // Frankfurt's edge dies: London goes to the next nearest PoP.
    edges[0].kill();
    let killed = Instant::now();
    while aaaa("2a02:c7c::").await != v6(12) {
        until("London never left the killed edge", killed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "IPv6: three edges steered by AAAA within {} ms of starting; a killed edge left the answers in {} ms",
        steered.as_millis(),
        killed.elapsed().as_millis()
    );
}
