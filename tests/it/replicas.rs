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
fn replica_file(dir: &Path, name: &str, cluster: &EtcdCluster, listen: SocketAddr) -> outpost_config::NodeConfig {
    let endpoints = cluster.endpoints().iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    load(
        dir,
        name,
        &format!(
            "[node]\nname = \"{name}\"\nrole = \"control\"\n[listen]\nhttp = [\"{listen}\"]\n\
             [store]\nbackend = \"etcd\"\nendpoints = [{endpoints}]\nprefix = \"/cdn/\"\n\
             [auth]\nadmin_token_file = \"admin.token\"\nnode_token_file = \"node.token\"\n"
        ),
    )
}

/// A control-plane replica in this process.
async fn replica(dir: &Path, name: &str, cluster: &EtcdCluster, stop: &CancellationToken) -> SocketAddr {
    let cfg = replica_file(dir, name, cluster, "127.0.0.1:0".parse().unwrap());
    let node = outpost_control::node::ControlNode::bind(&cfg).await.unwrap();
    let addr = node.addr();
    tokio::spawn(node.run(stop.clone()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_and_purges_through_either_replica_reach_every_node_in_one_order() {
    let cluster = EtcdCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let origin = test_origin(&stop).await;
    let a = replica(dir.path(), "control-a", &cluster, &stop).await;
    let b = replica(dir.path(), "control-b", &cluster, &stop).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let admin = admin.trim();
    let api = |at: SocketAddr, path: &str| format!("http://{at}{path}");

    // A site written through A is listed by B, and reaches the edges that
    // follow either.
    let r = call(Method::POST, &api(a, "/v1/sites"), Some(admin), None, &site(origin)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    let listed = call(Method::GET, &api(b, "/v1/sites"), Some(admin), None, "").await.json();
    assert_eq!(listed[0]["id"], "shop", "{listed}");
    let (e1, _s1) = edge_node(dir.path(), 1, a).await;
    let (e2, _s2) = edge_node(dir.path(), 2, b).await;
    for e in [e1, e2] {
        eventually("the site at both edges", || async {
            let url = format!("http://{e}/x?cc=max-age%3D600");
            call(Method::GET, &url, None, Some("shop.test"), "").await.status == StatusCode::OK
        })
        .await;
    }

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
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_hands_its_nodes_to_another_within_two_seconds() {
    let cluster = EtcdCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let origin = test_origin(&stop).await;
    let a = replica(dir.path(), "control-a", &cluster, &stop).await;
    let b = free_addr();
    replica_file(dir.path(), "control-b", &cluster, b);
    let file = dir.path().join("control-b.toml");
    let mut replica_b = Process::spawn(&["control", "--config", file.to_str().unwrap()]);
    wait_listening(b, "replica B").await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let admin = admin.trim();
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
    let body = r#"{"site": "shop", "all": true, "wait": true, "timeout_ms": 2000}"#;
    let r = call(Method::POST, &format!("http://{a}/v1/purge"), Some(admin), None, body).await;
    let took = killed.elapsed();
    let report = r.json();
    assert_eq!(r.status, StatusCode::OK, "{report}");
    assert_eq!(report["acked"], serde_json::json!(["edge-1", "edge-2"]), "{report}");
    assert!(took < std::time::Duration::from_secs(2), "the nodes moved to A {took:?} after B died");
    let seq = report["seq"].as_u64().unwrap();
    for engine in [one, two] {
        assert!(engine.partitioned_for().is_none(), "a node that moved is not cut off");
    }
    println!("replica SIGKILL: every node acknowledged purge {seq} through the survivor {} ms after", took.as_millis());
    stop.cancel();
}
