//! Control-plane replicas sharing one etcd cluster: every replica serves
//! the whole API, and nodes following either see one log.

use std::net::SocketAddr;
use std::path::Path;

use http::{Method, StatusCode};
use outpost_testkit::etcd::EtcdCluster;
use outpost_testkit::eventually;
use tokio_util::sync::CancellationToken;

use crate::control::{call, edge_following, edge_node, load, site, test_origin};
use crate::topology::{Process, free_addr, wait_listening};

/// The node file of a control-plane replica on `cluster`, listening on
/// `listen`, in `dir` (which the replicas share for their token files).
/// `extra` adds lines to its `[store]` (TLS files, a user).
fn replica_file(
    dir: &Path,
    name: &str,
    endpoints: &[String],
    listen: SocketAddr,
    extra: &str,
) -> outpost_config::NodeConfig {
    let endpoints = endpoints.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    load(
        dir,
        name,
        &format!(
            "[node]\nname = \"{name}\"\nrole = \"control\"\n[listen]\nhttp = [\"{listen}\"]\n\
             [store]\nbackend = \"etcd\"\nendpoints = [{endpoints}]\nprefix = \"/cdn/\"\n{extra}\
             [auth]\nadmin_token_file = \"admin.token\"\nnode_token_file = \"node.token\"\n"
        ),
    )
}

/// What every test here starts from: a three-member etcd cluster, the
/// folder its replicas share (node files, tokens) and the test origin,
/// which runs until `stop`.
struct Lab {
    cluster: EtcdCluster,
    dir: outpost_testkit::TestDir,
    stop: CancellationToken,
    origin: SocketAddr,
}

impl Lab {
    async fn start() -> Lab {
        let cluster = EtcdCluster::start(3).await;
        let stop = CancellationToken::new();
        let origin = test_origin(&stop).await;
        Lab { cluster, dir: outpost_testkit::tempdir(), stop, origin }
    }
}

/// The admin token the first replica made.
fn admin_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string()
}

/// Waits until every edge serves the site's `path`.
async fn serving(edges: &[SocketAddr], path: &str) {
    for e in edges {
        eventually("the site at the edges", || async {
            let url = format!("http://{e}{path}");
            call(Method::GET, &url, None, Some("shop.test"), "").await.status == StatusCode::OK
        })
        .await;
    }
}

/// A control-plane replica in this process, using the etcd members at
/// `endpoints`.
async fn replica(dir: &Path, name: &str, endpoints: &[String], stop: &CancellationToken) -> SocketAddr {
    let cfg = replica_file(dir, name, endpoints, "127.0.0.1:0".parse().unwrap(), "");
    bind_replica(&cfg, stop).await.unwrap()
}

/// Binds the replica of `cfg` and runs it until `stop`.
async fn bind_replica(
    cfg: &outpost_config::NodeConfig,
    stop: &CancellationToken,
) -> Result<SocketAddr, outpost_control::node::ControlError> {
    let node = outpost_control::node::ControlNode::bind(cfg).await?;
    let addr = node.addr();
    tokio::spawn(node.run(stop.clone()));
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_and_purges_through_either_replica_reach_every_node_in_one_order() {
    let Lab { cluster, dir, stop, origin } = Lab::start().await;
    let a = replica(dir.path(), "control-a", &cluster.endpoints(), &stop).await;
    let b = replica(dir.path(), "control-b", &cluster.endpoints(), &stop).await;
    let admin = &admin_token(dir.path());
    let api = |at: SocketAddr, path: &str| format!("http://{at}{path}");

    // A site written through A is listed by B, and reaches the edges that
    // follow either.
    let r = call(Method::POST, &api(a, "/v1/sites"), Some(admin), None, &site(origin)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    let listed = call(Method::GET, &api(b, "/v1/sites"), Some(admin), None, "").await.json();
    assert_eq!(listed[0]["id"], "shop", "{listed}");
    let (e1, _s1) = edge_node(dir.path(), 1, a).await;
    let (e2, _s2) = edge_node(dir.path(), 2, b).await;
    serving(&[e1, e2], "/x?cc=max-age%3D600").await;

    // 200 purges at once, half through each replica: one order, no gap,
    // none twice.
    let purges: Vec<_> = (0..200)
        .map(|i| {
            let (at, admin) = (if i % 2 == 0 { a } else { b }, admin.to_string());
            tokio::spawn(async move {
                let body = format!(r#"{{"site": "shop", "urls": ["/p{i}"]}}"#);
                let r = call(Method::POST, &format!("http://{at}/v1/purge"), Some(&admin), None, &body).await;
                assert_eq!(r.status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&r.body));
                r.json()["seq"].as_u64().unwrap()
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for p in purges {
        seqs.push(p.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (2..202).collect::<Vec<_>>(), "the site is event 1; the purges 2 to 201");

    // Every node applies the whole log, in order (a node that finds a hole
    // in its stream starts again from its last event rather than skip it),
    // and both replicas say so.
    for at in [a, b] {
        eventually("every node at the end of the log", || async {
            let nodes = call(Method::GET, &api(at, "/v1/nodes"), Some(admin), None, "").await.json();
            let nodes = nodes.as_array().unwrap().clone();
            nodes.len() == 2 && nodes.iter().all(|n| n["acked_seq"] == 201 && n["lag"] == 0)
        })
        .await;
    }
    // Each replica sees both nodes connected, though each follows one,
    // and a purge that waits, sent through either, waits for both.
    for at in [a, b] {
        let nodes = call(Method::GET, &api(at, "/v1/nodes"), Some(admin), None, "").await.json();
        assert!(nodes.as_array().unwrap().iter().all(|n| n["connected"] == true), "{nodes}");
        let body = r#"{"site": "shop", "urls": ["/x?cc=max-age%3D600"], "wait": true}"#;
        let r = call(Method::POST, &api(at, "/v1/purge"), Some(admin), None, body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        let report = r.json();
        assert_eq!(report["acked"], serde_json::json!(["edge-1", "edge-2"]), "{report}");
    }
    let via_a = call(Method::GET, &api(a, "/v1/purges/p7"), Some(admin), None, "").await.json();
    let via_b = call(Method::GET, &api(b, "/v1/purges/p7"), Some(admin), None, "").await.json();
    assert_eq!(via_a["seq"], via_b["seq"]);
    crate::control::stop_edges(&[&_s1, &_s2]).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_hands_its_nodes_to_another_within_seconds() {
    let Lab { cluster, dir, stop, origin } = Lab::start().await;
    let a = replica(dir.path(), "control-a", &cluster.endpoints(), &stop).await;
    let b = free_addr();
    replica_file(dir.path(), "control-b", &cluster.endpoints(), b, "");
    let file = dir.path().join("control-b.toml");
    let mut replica_b = Process::spawn(&["control", "--config", file.to_str().unwrap()]);
    wait_listening(b, "replica B").await;
    let admin = &admin_token(dir.path());
    let r = call(Method::POST, &format!("http://{a}/v1/sites"), Some(admin), None, &site(origin)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Both edges follow B first, A after it.
    let urls = format!("urls = [\"http://{b}\", \"http://{a}\"]");
    let (_e1, _s1, one) = edge_following(dir.path(), 1, &urls).await;
    let (_e2, _s2, two) = edge_following(dir.path(), 2, &urls).await;
    eventually("both edges at the end of the log", || async {
        let nodes = call(Method::GET, &format!("http://{a}/v1/nodes"), Some(admin), None, "").await.json();
        nodes.as_array().unwrap().len() == 2
            && nodes.as_array().unwrap().iter().all(|n| n["connected"] == true && n["lag"] == 0)
    })
    .await;

    replica_b.kill();
    let killed = std::time::Instant::now();
    // A purge through the survivor that waits for every node: it can only
    // reach them once they follow A.
    let body = r#"{"site": "shop", "all": true, "wait": true, "timeout_ms": 8000}"#;
    let r = call(Method::POST, &format!("http://{a}/v1/purge"), Some(admin), None, body).await;
    let took = killed.elapsed();
    let report = r.json();
    assert_eq!(r.status, StatusCode::OK, "{report}");
    assert_eq!(report["acked"], serde_json::json!(["edge-1", "edge-2"]), "{report}");
    // Each node reconnects within its backoff (500 ms) and a few etcd
    // writes; the time measured is printed below, the bound is slack for
    // a loaded machine.
    assert!(took < std::time::Duration::from_secs(5), "the nodes moved to A {took:?} after B died");
    let seq = report["seq"].as_u64().unwrap();
    for engine in [one, two] {
        assert!(engine.partitioned_for().is_none(), "a node that moved is not cut off");
    }
    println!("replica SIGKILL: every node acknowledged purge {seq} through the survivor {} ms after", took.as_millis());
    crate::control::stop_edges(&[&_s1, &_s2]).await;
    stop.cancel();
}

/// What `at` answers to a write: a purge of everything on `shop`.
async fn purge_status(at: SocketAddr, admin: &str) -> (StatusCode, serde_json::Value) {
    let r = call(Method::POST, &format!("http://{at}/v1/purge"), Some(admin), None, r#"{"site": "shop", "all": true}"#)
        .await;
    (r.status, r.json())
}

async fn health(at: SocketAddr) -> StatusCode {
    call(Method::GET, &format!("http://{at}/healthz"), None, None, "").await.status
}

/// CP at the core, AP at the edge: a replica whose store has no quorum
/// refuses writes with 503 and says why, answers reads from what its member
/// knows, and sends its nodes to a replica that has quorum; the edges serve
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_quorum_refuses_writes_answers_reads_and_sends_its_nodes_elsewhere() {
    let Lab { mut cluster, dir, stop, origin } = Lab::start().await;
    let endpoints = cluster.endpoints();
    // A uses member 0 only, B the other two.
    let a = replica(dir.path(), "control-a", &endpoints[..1], &stop).await;
    let b = replica(dir.path(), "control-b", &endpoints[1..], &stop).await;
    let admin = &admin_token(dir.path());
    let r = call(Method::POST, &format!("http://{b}/v1/sites"), Some(admin), None, &site(origin)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let urls = format!("urls = [\"http://{a}\", \"http://{b}\"]");
    let (e1, _s1, _) = edge_following(dir.path(), 1, &urls).await;
    let (e2, _s2, _) = edge_following(dir.path(), 2, &urls).await;
    let object = |e: SocketAddr| async move {
        call(Method::GET, &format!("http://{e}/o?cc=max-age%3D600"), None, Some("shop.test"), "").await.status
    };
    serving(&[e1, e2], "/o?cc=max-age%3D600").await;

    // A's member dies: A has no quorum, says so, and its nodes move to B.
    cluster.kill(0);
    eventually("A to report no quorum", || async { health(a).await == StatusCode::SERVICE_UNAVAILABLE }).await;
    let (status, why) = purge_status(a, admin).await;
    assert_eq!((status, why["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("no_quorum")), "{why}");
    assert_eq!(health(b).await, StatusCode::OK);
    eventually("a purge through B reaching both edges", || async {
        let body = r#"{"site": "shop", "urls": ["/o?cc=max-age%3D600"], "wait": true, "timeout_ms": 1000}"#;
        let r = call(Method::POST, &format!("http://{b}/v1/purge"), Some(admin), None, body).await;
        r.status == StatusCode::OK && r.json()["acked"] == serde_json::json!(["edge-1", "edge-2"])
    })
    .await;
    for e in [e1, e2] {
        assert_eq!(object(e).await, StatusCode::OK, "the edges serve throughout");
    }

    // Member 0 back, then the other two gone: A's member is alive but alone.
    cluster.restart(0);
    eventually("A to have quorum again", || async { health(a).await == StatusCode::OK }).await;
    cluster.kill(1);
    cluster.kill(2);
    eventually("A to report no quorum", || async { health(a).await == StatusCode::SERVICE_UNAVAILABLE }).await;
    let (status, why) = purge_status(a, admin).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{why}");
    let sites = call(Method::GET, &format!("http://{a}/v1/sites"), Some(admin), None, "").await;
    assert_eq!(sites.status, StatusCode::OK, "reads answer from what the member knows");
    assert_eq!(sites.json()[0]["id"], "shop");
    for e in [e1, e2] {
        assert_eq!(object(e).await, StatusCode::OK, "the edges serve throughout");
    }

    // The majority returns: writes go through A again.
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_healthy().await;
    eventually("a write through A", || async { purge_status(a, admin).await.0 == StatusCode::ACCEPTED }).await;
    crate::control::stop_edges(&[&_s1, &_s2]).await;
    stop.cancel();
}

/// The etcd leader killed with SIGKILL while purges go through both
/// replicas every 50 ms and clients fetch from the edges: every purge
/// answered 2xx is in the log once and applied by every node, and no
/// client request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_leader_killed_in_a_purge_storm_loses_no_acknowledged_purge() {
    let Lab { mut cluster, dir, stop, origin } = Lab::start().await;
    let a = replica(dir.path(), "control-a", &cluster.endpoints(), &stop).await;
    let b = replica(dir.path(), "control-b", &cluster.endpoints(), &stop).await;
    let admin = admin_token(dir.path());
    let r = call(Method::POST, &format!("http://{a}/v1/sites"), Some(&admin), None, &site(origin)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (e1, _s1, one) = edge_following(dir.path(), 1, &format!("urls = [\"http://{a}\", \"http://{b}\"]")).await;
    let (e2, _s2, two) = edge_following(dir.path(), 2, &format!("urls = [\"http://{b}\", \"http://{a}\"]")).await;
    let get = |e: SocketAddr| async move {
        call(Method::GET, &format!("http://{e}/storm?cc=max-age%3D600"), None, Some("shop.test"), "").await.status
    };
    serving(&[e1, e2], "/storm?cc=max-age%3D600").await;
    // Clients fetch throughout.
    let loading = CancellationToken::new();
    let load = {
        let loading = loading.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !loading.is_cancelled() {
                for e in [e1, e2] {
                    if get(e).await == StatusCode::OK { ok += 1 } else { failed += 1 }
                }
            }
            (ok, failed)
        })
    };
    // Sixty purges, one every 50 ms, alternately through A and B; the
    // leader dies a second in.
    let mut answered = Vec::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    for i in 0..60 {
        tick.tick().await;
        if i == 20 {
            let leader = cluster.leader().await;
            cluster.kill(leader);
        }
        let at = if i % 2 == 0 { a } else { b };
        let body = format!(r#"{{"site": "shop", "tags": ["t{i}"]}}"#);
        let r = call(Method::POST, &format!("http://{at}/v1/purge"), Some(&admin), None, &body).await;
        if r.status.is_success() {
            answered.push((i, r.json()["id"].as_str().unwrap().to_string(), r.json()["seq"].as_u64().unwrap()));
        }
    }
    loading.cancel();
    let (ok, failed) = load.await.unwrap();
    assert_eq!(failed, 0, "client requests failed during the storm ({ok} succeeded)");
    assert!(answered.len() >= 40, "most purges went through: {} of 60", answered.len());
    // Each answered purge is in the log once, with the sequence it was given.
    let mut seqs: Vec<u64> = answered.iter().map(|(_, _, s)| *s).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), answered.len(), "no two purges share a sequence number");
    for (_, id, seq) in &answered {
        let p = call(Method::GET, &format!("http://{b}/v1/purges/{id}"), Some(&admin), None, "").await.json();
        assert_eq!(p["seq"].as_u64(), Some(*seq), "{p}");
    }
    // Every node applied through the last of them (in order: a node that
    // finds a hole in its stream starts again from its last event).
    let last = *seqs.last().unwrap();
    eventually("both nodes past the last answered purge", || async {
        let nodes = call(Method::GET, &format!("http://{a}/v1/nodes"), Some(&admin), None, "").await.json();
        nodes.as_array().is_some_and(|n| n.iter().filter(|n| n["acked_seq"].as_u64() >= Some(last)).count() == 2)
    })
    .await;
    for engine in [one, two] {
        // One rule for the site's purges by tag, and one per tag purged.
        assert!(engine.purges.len() > answered.len(), "{} rules for {} purges", engine.purges.len(), answered.len());
    }
    println!(
        "etcd leader SIGKILL in a purge storm: {} of 60 purges answered 2xx, all applied by both nodes; {ok} client requests, 0 failed",
        answered.len()
    );
    crate::control::stop_edges(&[&_s1, &_s2]).await;
    stop.cancel();
}

/// A cluster that requires TLS and client certificates: a replica with the
/// CA, a client certificate and its key writes and reads; one without its
/// certificate is refused by every member and takes no write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reach_an_etcd_cluster_over_tls_with_a_client_certificate() {
    use outpost_proxy::tls::pki::{LEAF_VALIDITY, LocalCa, Request};
    let dir = outpost_testkit::tempdir();
    let ca = LocalCa::generate("etcd test CA").unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let cluster = EtcdCluster::start_tls(3, |members| {
        let ips: Vec<String> = members.iter().map(|a| a.ip().to_string()).collect();
        let names: Vec<&str> = ips.iter().map(String::as_str).collect();
        let (cert, key) =
            ca.issue(&Request::server(&names, LEAF_VALIDITY)).unwrap().write(dir.path(), "member").unwrap();
        outpost_testkit::etcd::ClientTls { ca: dir.path().join("ca.pem"), cert, key }
    })
    .await;
    let mut client = Request::server(&["control"], LEAF_VALIDITY);
    client.client = true;
    ca.issue(&client).unwrap().write(dir.path(), "client").unwrap();
    let stop = CancellationToken::new();
    let origin = test_origin(&stop).await;
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let tls = "ca = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"\n";
    let with_cert = replica_file(dir.path(), "control-a", &cluster.endpoints(), any, tls);
    let a = bind_replica(&with_cert, &stop).await.unwrap();
    let admin = admin_token(dir.path());
    let r = call(Method::POST, &format!("http://{a}/v1/sites"), Some(&admin), None, &site(origin)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    let listed = call(Method::GET, &format!("http://{a}/v1/sites"), Some(&admin), None, "").await.json();
    assert_eq!(listed[0]["id"], "shop");

    let without = replica_file(dir.path(), "control-b", &cluster.endpoints(), any, "ca = \"ca.pem\"\n");
    let refused = match bind_replica(&without, &stop).await {
        Err(e) => e.to_string(),
        Ok(b) => {
            let r = call(
                Method::POST,
                &format!("http://{b}/v1/purge"),
                Some(&admin),
                None,
                r#"{"site": "shop", "all": true}"#,
            )
            .await;
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", String::from_utf8_lossy(&r.body));
            r.json()["error"].to_string()
        }
    };
    println!("a replica without a client certificate: {refused}");
    stop.cancel();
}

/// Two replicas take a new version of one site at the same instant: they
/// never both win from the same version; the one that loses gets 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_upserting_one_site_at_once_never_both_win() {
    let Lab { cluster, dir, stop, origin } = Lab::start().await;
    let a = replica(dir.path(), "control-a", &cluster.endpoints(), &stop).await;
    let b = replica(dir.path(), "control-b", &cluster.endpoints(), &stop).await;
    let admin = admin_token(dir.path());
    let text = site(origin);
    let r = call(Method::PUT, &format!("http://{a}/v1/sites/shop"), Some(&admin), None, &text).await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Rounds until one writer has lost a race (at least ten): how often the
    // two meet at the same instant depends on the machine's load.
    let mut conflicts = 0;
    let mut rounds = 0;
    for round in 0..100 {
        if round >= 10 && conflicts > 0 {
            break;
        }
        rounds += 1;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let racers: Vec<_> = [(a, "a"), (b, "b")]
            .into_iter()
            .map(|(at, who)| {
                let (barrier, admin) = (std::sync::Arc::clone(&barrier), admin.clone());
                let body = format!("{text}\n# round {round} by {who}\n");
                tokio::spawn(async move {
                    barrier.wait().await;
                    call(Method::PUT, &format!("http://{at}/v1/sites/shop"), Some(&admin), None, &body).await
                })
            })
            .collect();
        let mut won = Vec::new();
        for r in racers {
            let r = r.await.unwrap();
            match r.status {
                StatusCode::CREATED => won.push(r.json()["version"].as_u64().unwrap()),
                StatusCode::CONFLICT => {
                    assert_eq!(r.json()["error"], "conflict");
                    conflicts += 1;
                }
                other => panic!("{other}: {}", String::from_utf8_lossy(&r.body)),
            }
        }
        won.sort_unstable();
        won.dedup();
        assert!(!won.is_empty(), "round {round}: one of them wins");
        let versions = call(Method::GET, &format!("http://{b}/v1/sites/shop"), Some(&admin), None, "").await.json();
        assert_eq!(versions["version"].as_u64(), won.last().copied(), "round {round}: the winner's version stands");
    }
    assert!(conflicts > 0, "in {rounds} rounds at the same instant, no writer lost a race");
    println!("{rounds} rounds of simultaneous upserts through two replicas: {conflicts} answered 409");
    stop.cancel();
}

/// A node's credential revoked through one replica is refused by the
/// other within two heartbeats, and the stream the node holds open there
/// ends; two revocations at once through both replicas both count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_revoked_through_one_replica_is_refused_by_the_other() {
    let Lab { cluster, dir, stop, origin } = Lab::start().await;
    let a = replica(dir.path(), "control-a", &cluster.endpoints(), &stop).await;
    let b = replica(dir.path(), "control-b", &cluster.endpoints(), &stop).await;
    let admin = admin_token(dir.path());
    let secret = std::fs::read_to_string(dir.path().join("node.token")).unwrap();
    let own = outpost_control::credential::node_credential(secret.trim(), "edge-1");
    let e1 = dir.path().join("e1");
    std::fs::create_dir(&e1).unwrap();
    std::fs::write(e1.join("node.token"), &own).unwrap();
    let r = call(Method::POST, &format!("http://{a}/v1/sites"), Some(&admin), None, &site(origin)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (_edge, _edge_stop, _) = edge_following(&e1, 1, &format!("url = \"http://{b}\"")).await;
    let connected_at_b = || async {
        let nodes = call(Method::GET, &format!("http://{b}/v1/nodes"), Some(&admin), None, "").await.json();
        nodes.as_array().unwrap().iter().any(|n| n["name"] == "edge-1" && n["connected"] == true)
    };
    eventually("edge 1 to follow B", connected_at_b).await;
    let read_at_b = format!("http://{b}/v1/nodes");

    let r = call(Method::DELETE, &format!("http://{a}/v1/nodes/edge-1/credential"), Some(&admin), None, "").await;
    assert_eq!((r.status, r.json()["generation"].as_u64()), (StatusCode::OK, Some(1)));
    let revoked = std::time::Instant::now();
    let bound = 2 * outpost_config::api::HEARTBEAT + std::time::Duration::from_secs(2);
    let (mut refused, mut ended) = (None, None);
    while (refused.is_none() || ended.is_none()) && revoked.elapsed() < bound {
        if refused.is_none()
            && call(Method::GET, &read_at_b, Some(&own), None, "").await.status == StatusCode::UNAUTHORIZED
        {
            refused = Some(revoked.elapsed());
        }
        if ended.is_none() && !connected_at_b().await {
            ended = Some(revoked.elapsed());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (Some(refused), Some(ended)) = (refused, ended) else {
        panic!("{bound:?} after the revocation through A, B refused it: {refused:?}, its stream ended: {ended:?}");
    };
    println!(
        "revoked through A: refused by B after {} ms, its stream there ended after {} ms",
        refused.as_millis(),
        ended.as_millis()
    );

    // Two rotations at once, one through each replica: both count, and
    // each hands out its own generation.
    let rotate = |at: SocketAddr, query: &'static str| {
        let admin = admin.clone();
        tokio::spawn(async move {
            let url = format!("http://{at}/v1/nodes/edge-1/credential{query}");
            let r = call(Method::POST, &url, Some(&admin), None, "").await;
            assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
            let r = r.json();
            (r["generation"].as_u64().unwrap(), r["credential"].as_str().unwrap().to_string())
        })
    };
    let (x, y) = (rotate(a, ""), rotate(b, ""));
    let mut generations = [x.await.unwrap(), y.await.unwrap()];
    generations.sort_unstable();
    assert_eq!([generations[0].0, generations[1].0], [2, 3]);

    // Rotated with a hand-over through A while the edge follows B: B ends
    // its stream and hands it the new credential on the next; its first
    // stream with that ends the hand-over at A too.
    let third = generations[1].1.clone();
    std::fs::write(e1.join("node.token"), &third).unwrap();
    eventually("edge 1 to follow B again", connected_at_b).await;
    let (generation, fourth) = rotate(a, "?hand_over=true").await.unwrap();
    assert_eq!(generation, 4);
    eventually("edge 1 to be handed its credential through B", || async {
        std::fs::read_to_string(e1.join("node.token")).unwrap() == fourth && connected_at_b().await
    })
    .await;
    let at_a = format!("http://{a}/v1/events?after=0&node=edge-1&role=edge&pop=p1&addrs=");
    let r = call(Method::GET, &at_a, Some(&third), None, "").await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("credential_revoked")));
    crate::control::stop_edges(&[&_edge_stop]).await;
    stop.cancel();
}

/// A cluster with authentication on: a replica with the user and its
/// password file writes and reads under its prefix; one with a wrong
/// password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_log_in_to_an_etcd_cluster_with_a_user_and_password() {
    let Lab { cluster, dir, stop, origin } = Lab::start().await;
    cluster.require_users("outpost", "s3cret", "/cdn/");
    std::fs::write(dir.path().join("etcd.password"), "s3cret\n").unwrap();
    std::fs::write(dir.path().join("wrong.password"), "guess\n").unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let login = |file: &str| format!("user = \"outpost\"\npassword_file = \"{file}\"\n");
    let cfg = replica_file(dir.path(), "control-a", &cluster.endpoints(), any, &login("etcd.password"));
    let a = bind_replica(&cfg, &stop).await.unwrap();
    let admin = admin_token(dir.path());
    let r = call(Method::POST, &format!("http://{a}/v1/sites"), Some(&admin), None, &site(origin)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    let all = r#"{"site": "shop", "all": true}"#;
    let purge = call(Method::POST, &format!("http://{a}/v1/purge"), Some(&admin), None, all).await;
    assert_eq!(purge.status, StatusCode::ACCEPTED);

    let wrong = replica_file(dir.path(), "control-b", &cluster.endpoints(), any, &login("wrong.password"));
    let refused = bind_replica(&wrong, &stop).await.err().map(|e| e.to_string());
    let refused = refused.expect("a wrong password is refused");
    assert!(refused.contains("authentication failed") || refused.contains("invalid"), "{refused}");
    stop.cancel();
}
