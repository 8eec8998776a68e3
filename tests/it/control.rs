//! The control plane with three edges and the test origin, in this process.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use outpost_config::NodeConfig;
use tokio_util::sync::CancellationToken;

use crate::topology::Reply;
use outpost_testkit::eventually;

pub(crate) async fn call(method: Method, url: &str, token: Option<&str>, host: Option<&str>, body: &str) -> Reply {
    crate::topology::request(method, url, host.unwrap_or(""), token, body).await.unwrap()
}

/// The status a server answers a request head with, when the head
/// announces `length` bytes of body and none follow; `None` when it waits
/// for the body (3 seconds).
pub(crate) async fn status_before_body(addr: SocketAddr, method: &str, path: &str, headers: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 1000000\r\n{headers}\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), read).await.ok()?;
    std::str::from_utf8(got.get(9..12)?).ok()?.parse().ok()
}

struct Cdn {
    dir: outpost_testkit::TestDir,
    control: SocketAddr,
    admin: String,
    edges: Vec<SocketAddr>,
    origin: SocketAddr,
    stop: CancellationToken,
    _edges: Vec<tokio_util::sync::DropGuard>,
}

/// Stops the edges before the folder goes (which waits for their last
/// writes into it).
impl Drop for Cdn {
    fn drop(&mut self) {
        self.stop.cancel();
        self._edges.clear();
    }
}

impl Cdn {
    fn api(&self, path: &str) -> String {
        format!("http://{}{path}", self.control)
    }

    async fn admin_call(&self, method: Method, path: &str, body: &str) -> Reply {
        call(method, &self.api(path), Some(&self.admin), None, body).await
    }

    async fn via(&self, edge: usize, path: &str) -> Reply {
        call(Method::GET, &format!("http://{}{path}", self.edges[edge]), None, Some("shop.test"), "").await
    }
}

pub(crate) fn load(dir: &Path, name: &str, text: &str) -> NodeConfig {
    let f = dir.join(format!("{name}.toml"));
    std::fs::write(&f, text).unwrap();
    NodeConfig::load(&f).unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) async fn start_control(
    dir: &Path,
    stop: &CancellationToken,
) -> (SocketAddr, Arc<outpost_control::api::Control>) {
    start_control_keeping(dir, stop, 1000).await
}

async fn start_control_keeping(
    dir: &Path,
    stop: &CancellationToken,
    retention: u64,
) -> (SocketAddr, Arc<outpost_control::api::Control>) {
    start_control_with(dir, stop, &format!("log_retention = {retention}\n"), "").await
}

/// The store backend the control-plane tests run against: `redb`, or a
/// fresh three-member etcd cluster with `OUTPOST_TEST_STORE=etcd` (one
/// battery, two backends).
fn etcd_backend() -> bool {
    std::env::var("OUTPOST_TEST_STORE").is_ok_and(|v| v == "etcd")
}

/// A control plane whose `[store]` has `store` added, and `extra` at the
/// end of its node file. On etcd, the cluster is the one this test started
/// in `dir` (a control plane started again finds it), and it lives as long
/// as the test.
async fn start_control_with(
    dir: &Path,
    stop: &CancellationToken,
    store: &str,
    extra: &str,
) -> (SocketAddr, Arc<outpost_control::api::Control>) {
    let backend = if etcd_backend() {
        let known = dir.join("etcd.endpoints");
        let endpoints = match std::fs::read_to_string(&known) {
            Ok(e) => e,
            Err(_) => {
                let cluster = outpost_testkit::etcd::EtcdCluster::start(3).await;
                let e = cluster.endpoints().iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
                std::fs::write(&known, &e).unwrap();
                // Dropped, and its members killed, when the test's runtime ends.
                tokio::spawn(async move {
                    std::future::pending::<()>().await;
                    drop(cluster);
                });
                e
            }
        };
        format!("backend = \"etcd\"\nendpoints = [{endpoints}]\n")
    } else {
        "path = \"control.redb\"\n".to_string()
    };
    let cfg = load(
        dir,
        "control",
        &format!(
            "[node]\nname = \"control\"\nrole = \"control\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
             [store]\n{backend}{store}[auth]\nadmin_token_file = \"admin.token\"\n\
             node_token_file = \"node.token\"\n{extra}"
        ),
    );
    let node = outpost_control::node::ControlNode::bind(&cfg).await.unwrap();
    let addr = node.addr();
    let control = Arc::clone(&node.control);
    tokio::spawn(node.run(stop.clone()));
    (addr, control)
}

pub(crate) async fn edge_node(dir: &Path, i: usize, control: SocketAddr) -> (SocketAddr, CancellationToken) {
    let (addr, stop, _) = edge_engine(dir, i, control).await;
    (addr, stop)
}

pub(crate) async fn edge_engine(
    dir: &Path,
    i: usize,
    control: SocketAddr,
) -> (SocketAddr, CancellationToken, Arc<outpost_proxy::Engine>) {
    edge_following(dir, i, &format!("url = \"http://{control}\"")).await
}

/// Stops edges before their test's folder is removed: an edge still
/// running writes its state into it as the folder goes, and leaves it
/// behind in the system's temporary folder. Stopping takes them a moment.
pub(crate) async fn stop_edges(stops: &[&CancellationToken]) {
    for s in stops {
        s.cancel();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Edge `i`, whose `[control]` section names the control plane with
/// `control_url` (a `url = …` or `urls = […]` line).
pub(crate) async fn edge_following(
    dir: &Path,
    i: usize,
    control_url: &str,
) -> (SocketAddr, CancellationToken, Arc<outpost_proxy::Engine>) {
    let cfg = load(
        dir,
        &format!("edge-{i}"),
        &format!(
            "[node]\nname = \"edge-{i}\"\nrole = \"edge\"\npop = \"p{i}\"\nlatitude = 0.0\nlongitude = 0.0\naccess_log = \"off\"\n\
             [listen]\nhttp = [\"127.0.0.1:0\"]\n[cache]\nmemory = \"16MiB\"\ndisk = \"32MiB\"\npath = \"cache-{i}\"\n\
             [upstream]\nmode = \"origin\"\n[control]\n{control_url}\ntoken_file = \"node.token\"\n"
        ),
    );
    let node = outpost_edge::bind(&cfg).await.unwrap();
    let addr = node.http_addrs()[0];
    let engine = Arc::clone(node.engine());
    let stop = CancellationToken::new();
    tokio::spawn(node.run(stop.clone()));
    (addr, stop, engine)
}

async fn cdn() -> Cdn {
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let origin_addr = test_origin(&stop).await;
    let (control, _) = start_control(dir.path(), &stop).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let mut edges = Vec::new();
    let mut edge_stops = Vec::new();
    for i in 1..=3 {
        let (addr, edge_stop) = edge_node(dir.path(), i, control).await;
        edges.push(addr);
        edge_stops.push(edge_stop.drop_guard());
    }
    Cdn { dir, control, admin, edges, origin: origin_addr, stop, _edges: edge_stops }
}

/// The test origin on port 0, until `stop`.
pub(crate) async fn test_origin(stop: &CancellationToken) -> SocketAddr {
    let origin = outpost_load::OriginServer::bind(&["127.0.0.1:0".parse().unwrap()], None).await.unwrap();
    let addr = origin.local_addrs()[0];
    tokio::spawn(origin.run(stop.clone()));
    addr
}

pub(crate) fn site(origin: SocketAddr) -> String {
    format!("[site]\nid = \"shop\"\nhosts = [\"shop.test\"]\n\n[[origin]]\nurl = \"http://{origin}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_upload_reaches_every_node_and_a_bad_one_changes_nothing() {
    let cdn = cdn().await;
    assert_eq!(cdn.via(0, "/x").await.status, StatusCode::MISDIRECTED_REQUEST, "no site yet");
    let r = cdn.admin_call(Method::POST, "/v1/sites", &site(cdn.origin)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["version"], 1);
    for e in 0..3 {
        eventually("the site to reach the edge", || async {
            cdn.via(e, "/x?cc=max-age%3D60").await.status == StatusCode::OK
        })
        .await;
    }
    let bad = "[site]\nid = \"Shop\"\nhosts = [\"shop.test\"]\n[[origin]]\nurl = \"ftp://x\"\n";
    let r = cdn.admin_call(Method::POST, "/v1/sites", bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let j = r.json();
    assert_eq!(j["error"], "invalid_site");
    let detail = j["detail"].as_str().unwrap();
    assert!(
        detail.contains("site.toml:2:6:") && detail.contains("site.toml:5:7:"),
        "every problem with its position: {detail}"
    );
    // A site that wants an ACME certificate from a control plane with no
    // [acme] directory would never get one: refused, saying so.
    let r = cdn.admin_call(Method::POST, "/v1/sites", &format!("{}[tls]\nacme = true\n", site(cdn.origin))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "no_acme", "{}", String::from_utf8_lossy(&r.body));
    let list = cdn.admin_call(Method::GET, "/v1/sites", "").await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["version"], 1, "nothing changed");
    cdn.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_with_wait_returns_every_acknowledgement_and_the_next_request_misses() {
    let cdn = cdn().await;
    cdn.admin_call(Method::POST, "/v1/sites", &site(cdn.origin)).await;
    for e in 0..3 {
        for _ in 0..400 {
            if cdn.via(e, "/p?cc=max-age%3D600&keys=k").await.status == StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let r = cdn.via(e, "/p?cc=max-age%3D600&keys=k").await;
        if r.status != StatusCode::OK {
            let nodes = cdn.admin_call(Method::GET, "/v1/nodes", "").await;
            let sites = cdn.admin_call(Method::GET, "/v1/sites", "").await;
            panic!(
                "edge {e} answers {} {:?}: nodes {} sites {}",
                r.status,
                String::from_utf8_lossy(&r.body),
                String::from_utf8_lossy(&nodes.body),
                String::from_utf8_lossy(&sites.body)
            );
        }
        assert!(
            cdn.via(e, "/p?cc=max-age%3D600&keys=k").await.headers["cache-status"].to_str().unwrap().contains("; hit")
        );
    }
    eventually("three connected nodes", || async {
        let n = cdn.admin_call(Method::GET, "/v1/nodes", "").await.json();
        n.as_array().unwrap().iter().filter(|x| x["connected"] == true).count() == 3
    })
    .await;
    let r = cdn.admin_call(Method::POST, "/v1/purge", r#"{"site": "shop", "tags": ["k"], "wait": true}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    let mut acked: Vec<&str> = j["acked"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    acked.sort();
    assert_eq!(acked, ["edge-1", "edge-2", "edge-3"]);
    assert_eq!(j["pending"], serde_json::json!([]));
    for e in 0..3 {
        let r = cdn.via(e, "/p?cc=max-age%3D600&keys=k").await;
        assert!(!r.headers["cache-status"].to_str().unwrap().contains("; hit"), "edge {e} still had it");
    }
    let later = cdn.admin_call(Method::GET, &format!("/v1/purges/{}", j["id"].as_str().unwrap()), "").await.json();
    assert_eq!(later["acked"].as_array().unwrap().len(), 3);
    cdn.stop.cancel();
}

/// A deleted site's copies are never served again: not to a new site given
/// the same id later (another tenant's, perhaps, with other origins), even
/// from the disk tier, which outlives the deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_created_again_under_a_deleted_ones_id_gets_none_of_its_copies() {
    let cdn = cdn().await;
    let r = cdn.admin_call(Method::POST, "/v1/sites", &site(cdn.origin)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let path = "/kept?cc=max-age%3D3600";
    eventually("the site's copy to be a hit", || async {
        let r = cdn.via(0, path).await;
        r.status == StatusCode::OK && r.headers["cache-status"].to_str().unwrap().contains("; hit")
    })
    .await;
    let r = cdn.admin_call(Method::DELETE, "/v1/sites/shop", "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    eventually("the deletion to reach the edge", || async {
        cdn.via(0, path).await.status == StatusCode::MISDIRECTED_REQUEST
    })
    .await;
    let other = test_origin(&cdn.stop).await;
    let r = cdn.admin_call(Method::POST, "/v1/sites", &site(other)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    let r = loop {
        let r = cdn.via(0, path).await;
        if r.status != StatusCode::MISDIRECTED_REQUEST {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.status, StatusCode::OK);
    let cs = r.headers["cache-status"].to_str().unwrap();
    assert!(cs.contains("fwd=uri-miss"), "the deleted site's copy was served: {cs}");
    cdn.stop.cancel();
}

/// A host belongs to one site: a second site claiming it is refused with
/// 409, and of two sites uploaded at once with the same host, one is
/// stored and the other refused, never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_is_claimed_by_one_site_even_by_two_uploads_at_once() {
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let (control, _) = start_control(dir.path(), &stop).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let post = |id: String, host: String| {
        let (url, admin) = (format!("http://{control}/v1/sites"), admin.clone());
        async move {
            let text =
                format!("[site]\nid = \"{id}\"\nhosts = [\"{host}\"]\n[[origin]]\nurl = \"http://127.0.0.1:1\"\n");
            call(Method::POST, &url, Some(&admin), None, &text).await
        }
    };
    assert_eq!(post("first".into(), "taken.test".into()).await.status, StatusCode::CREATED);
    let r = post("second".into(), "taken.test".into()).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["error"], "host_conflict");
    for i in 0..20 {
        let host = format!("race-{i}.test");
        let (a, b) = tokio::join!(post(format!("a{i}"), host.clone()), post(format!("b{i}"), host));
        let mut got = [a.status, b.status];
        got.sort();
        assert_eq!(got, [StatusCode::CREATED, StatusCode::CONFLICT], "round {i}");
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_names_urls_as_requests_are_keyed_and_refuses_what_none_can_be() {
    let cdn = cdn().await;
    cdn.admin_call(Method::POST, "/v1/sites", &site(cdn.origin)).await;
    let path = "/caf%c3%a9?cc=max-age%3D600";
    eventually("the site at the edge", || async { cdn.via(0, path).await.status == StatusCode::OK }).await;
    assert!(cdn.via(0, path).await.headers["cache-status"].to_str().unwrap().contains("; hit"));
    eventually("a connected edge", || async {
        let n = cdn.admin_call(Method::GET, "/v1/nodes", "").await.json();
        n.as_array().unwrap().iter().any(|x| x["name"] == "edge-1" && x["connected"] == true)
    })
    .await;
    // As an operator types it: the stored `/caf%C3%A9` is what it purges.
    let body = r#"{"site": "shop", "urls": ["/café?cc=max-age%3D600"], "wait": true}"#;
    let r = cdn.admin_call(Method::POST, "/v1/purge", body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["target"]["urls"][0], "/caf%C3%A9?cc=max-age%3D600", "stored as requests are keyed");
    let after = cdn.via(0, path).await;
    assert!(!after.headers["cache-status"].to_str().unwrap().contains("; hit"), "the purge removed it");
    // A URL no request can have is refused, and nothing is logged.
    let seq = call(Method::GET, &cdn.api("/healthz"), None, None, "").await.json()["seq"].clone();
    for bad in [r#"{"site": "shop", "urls": ["/a%zz"]}"#, r#"{"site": "shop", "prefix": "/b%4"}"#] {
        let r = cdn.admin_call(Method::POST, "/v1/purge", bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.json()["detail"].as_str().unwrap().contains("can match no request"), "{bad}");
    }
    assert_eq!(call(Method::GET, &cdn.api("/healthz"), None, None, "").await.json()["seq"], seq);
    cdn.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_cuts_off_slow_heads_and_makes_room_at_its_connection_cap() {
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let limits = "[limits]\nheader_read_timeout = \"500ms\"\nidle_timeout = \"30s\"\nmax_connections = 8\n";
    let (addr, _) = start_control_with(dir.path(), &stop, "", limits).await;
    let (slowest, waited) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        // Slow heads (more than the cap): each is cut off by the header timeout.
        let started = std::time::Instant::now();
        let mut slow: Vec<std::net::TcpStream> = (0..12)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let _ = s.write_all(b"GET /v1/sites HTTP/1.1\r\nHost: a\r\nX-Slow: ");
                s
            })
            .collect();
        let mut slowest = Duration::ZERO;
        for s in &mut slow {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.read(&mut [0u8; 64]);
            slowest = slowest.max(started.elapsed());
        }
        // Idle connections fill the cap; a new client still gets in.
        let _idle: Vec<std::net::TcpStream> = (0..8).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        (slowest, started.elapsed())
    })
    .await
    .unwrap();
    assert!(slowest < Duration::from_secs(3), "a slow head held the API for {slowest:?}");
    assert!(waited < Duration::from_secs(2), "at the cap a new client waited {waited:?}");
    stop.cancel();
}

/// A call with exactly these headers.
async fn call_with(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    outpost_testkit::request(method, url, headers, body.as_bytes()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_holds_only_what_nodes_can_truly_claim_and_forgets_the_silent() {
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let (addr, _) = start_control_with(dir.path(), &stop, "node_expiry = \"1s\"\n", "").await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let token = std::fs::read_to_string(dir.path().join("node.token")).unwrap();
    let api = |p: &str| format!("http://{addr}{p}");
    // The scheme of Authorization is case-insensitive (RFC 9110 §11.1).
    let lower = format!("bearer {admin}");
    let r = call_with(Method::GET, &api("/v1/sites"), &[("authorization", &lower)], "").await;
    assert_eq!(r.status, StatusCode::OK);
    // A node cannot claim events the log does not have.
    let huge = format!("/v1/events?after={}&node=edge-a&role=edge&pop=fra&addrs=127.0.0.1:80", u64::MAX);
    let stream = {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = Request::get(api(&huge))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        client.request(req).await.unwrap()
    };
    assert_eq!(stream.status(), StatusCode::OK);
    let nodes = call(Method::GET, &api("/v1/nodes"), Some(&admin), None, "").await.json();
    assert_eq!(nodes[0]["acked_seq"], 0, "clamped to the end of the log: {nodes}");
    assert!(nodes[0].get("credential_generation").is_none(), "the shared node token: {nodes}");
    let ack = |seq: u64, node: &'static str| {
        let body = format!(r#"{{"node": "{node}", "seq": {seq}}}"#);
        let token = token.clone();
        let url = api("/v1/ack");
        async move { call(Method::POST, &url, Some(&token), None, &body).await }
    };
    let r = ack(u64::MAX, "edge-a").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "ahead_of_log");
    let r = ack(0, "edge-nobody").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "only registered nodes acknowledge");
    for bad in ["role=admin&pop=fra&addrs=", "role=edge&pop=fra&addrs=%3Cscript%3E", "role=edge&pop=a%20b&addrs="] {
        let url = api(&format!("/v1/events?after=0&node=edge-b&{bad}"));
        let r = call(Method::GET, &url, Some(&token), None, "").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // Its gauges are on /metrics while it is registered.
    let metrics = || async {
        String::from_utf8(call(Method::GET, &api("/metrics"), None, None, "").await.body.to_vec()).unwrap()
    };
    let series = [
        "outpost_control_node_silent_seconds{node=\"edge-a\",role=\"edge\"} ",
        "outpost_control_node_lag_events{node=\"edge-a\",role=\"edge\"} 0\n",
        "outpost_control_oldest_unacknowledged_purge_seconds{node=\"edge-a\"} 0\n",
    ];
    let text = metrics().await;
    for s in series {
        assert!(text.contains(s), "{s} missing from\n{text}");
    }
    assert_eq!(text.matches("# TYPE outpost_control_node_silent_seconds gauge").count(), 1, "{text}");
    // Once its stream is gone and it stays silent past the expiry, the node
    // leaves the registry, and its gauges go with it.
    drop(stream);
    eventually("the node to leave the registry", || async {
        call(Method::GET, &api("/v1/nodes"), Some(&admin), None, "").await.json().as_array().unwrap().is_empty()
    })
    .await;
    eventually("its gauges to leave /metrics", || async { !metrics().await.contains("node=\"edge-a\"") }).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_type_round_trips_through_the_real_server() {
    use outpost_config::api::{PurgeRequest, StreamQuery};
    use outpost_config::{Ack, Event, PurgeTarget, Role, StreamLine};
    use outpost_net::control::{ClientError, ControlClient, Token};
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let (addr, _) = start_control(dir.path(), &stop).await;
    let tls = outpost_proxy::tls::client_config(&[], None).unwrap();
    let base = format!("http://{addr}");
    let admin = ControlClient::new(&[&base], Token::File(dir.path().join("admin.token")), Arc::clone(&tls));
    let node = ControlClient::new(&[&base], Token::File(dir.path().join("node.token")), Arc::clone(&tls));

    assert_eq!(admin.health().await.unwrap().seq, 0);
    let text = "[site]\nid = \"rt\"\nhosts = [\"rt.test\", \"*.rt.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:9\"\n";
    let stored = admin.push_site(text).await.unwrap();
    assert_eq!((stored.id.as_str(), stored.version, stored.seq), ("rt", 1, 1));
    assert_eq!(admin.push_site(text).await.unwrap(), stored, "the same text is not a new version");
    let sites = admin.sites().await.unwrap();
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0].hosts, ["rt.test", "*.rt.test"]);
    let record = admin.site("rt").await.unwrap();
    assert_eq!((record.toml.as_str(), record.version), (text, 1));

    // A node's stream: the backlog, then a heartbeat; its acknowledgement
    // shows in the registry.
    let query = StreamQuery {
        after: 0,
        node: "edge-rt".into(),
        role: Role::Edge,
        pop: Some("fra".into()),
        addrs: "127.0.0.1:8080,[::1]:8080".into(),
        certificates: false,
    };
    let mut stream = node.events(&query).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        matches!(&first, StreamLine::Event { record } if record.seq == 1 && matches!(&record.event, Event::SiteUpserted { site_id, version: 1, .. } if site_id == "rt")),
        "{first:?}"
    );
    let second = stream.next().await;
    assert!(matches!(&second, Some(Ok(StreamLine::Heartbeat { seq: 1, stale: false }))), "{second:?}");
    let full = vec!["the cache disk is full: 3 MiB free of 512 MiB".to_string()];
    let ack = |problems: Option<Vec<String>>| Ack {
        node: "edge-rt".into(),
        seq: 1,
        load_rps: Some(42),
        hit_permille: Some(250),
        problems,
    };
    node.ack(&ack(Some(full.clone()))).await.unwrap();
    let nodes = node.nodes().await.unwrap();
    let n = &nodes[0];
    assert_eq!((n.node.name.as_str(), n.node.role, n.node.pop.as_deref()), ("edge-rt", Role::Edge, Some("fra")));
    assert_eq!(n.node.addrs, ["127.0.0.1:8080", "[::1]:8080"]);
    assert_eq!((n.node.acked_seq, n.lag, n.connected, n.node.load_rps), (1, 0, true, Some(42)));
    assert_eq!(n.node.hit_permille, Some(250));
    assert_eq!(n.node.problems, full);
    node.ack(&ack(None)).await.unwrap();
    assert_eq!(node.nodes().await.unwrap()[0].node.problems, full, "a node that does not say changes nothing");
    node.ack(&ack(Some(Vec::new()))).await.unwrap();
    assert!(node.nodes().await.unwrap()[0].node.problems.is_empty(), "a node that says all is well is");
    let e = node.ack(&ack(Some(vec!["x".repeat(201)]))).await.unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 400, error, .. } if error == "too_many_problems"), "{e}");
    let e = node.ack(&ack(Some(vec!["x".into(); 9]))).await.unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 400, .. }), "{e}");
    assert!(node.nodes().await.unwrap()[0].node.problems.is_empty(), "a refused report changes nothing");
    // A hit ratio above a thousand per thousand is taken as a thousand; one
    // that is no u16 is refused and changes nothing.
    let lying = Ack { hit_permille: Some(5000), ..ack(None) };
    node.ack(&lying).await.unwrap();
    assert_eq!(node.nodes().await.unwrap()[0].node.hit_permille, Some(1000));
    let node_token = std::fs::read_to_string(dir.path().join("node.token")).unwrap();
    for bad in [
        r#"{"node": "edge-rt", "seq": 1, "hit_permille": 70000}"#,
        r#"{"node": "edge-rt", "seq": 1, "hit_permille": -1}"#,
    ] {
        let r = call(Method::POST, &format!("{base}/v1/ack"), Some(&node_token), None, bad).await;
        assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")), "{bad}");
    }
    assert_eq!(node.nodes().await.unwrap()[0].node.hit_permille, Some(1000));

    // PoP weights: set by operators, read by DNS servers.
    use outpost_config::api::PopWeight;
    let drain = PopWeight { weight: 0, reason: Some("fibre work".into()) };
    let set = admin.set_pop("fra", &drain).await.unwrap();
    assert_eq!((set.name.as_str(), set.weight, set.reason.as_deref()), ("fra", 0, Some("fibre work")));
    assert_eq!(node.pops().await.unwrap(), [set], "the node token reads the weights");
    assert!(node.set_pop("fra", &drain).await.unwrap_err().is_unauthorized(), "and cannot set them");
    let e = admin.set_pop("fra", &PopWeight { weight: 101, reason: None }).await.unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 400, error, .. } if error == "invalid_pop"), "{e}");
    let e = admin.set_pop("fra.x", &drain).await.unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 400, error, .. } if error == "invalid_pop"), "{e}");
    assert_eq!(admin.pops().await.unwrap()[0].weight, 0, "refused calls change nothing");

    // A purge, its report, and its event on the stream.
    let req = PurgeRequest { site: "rt".into(), urls: vec!["/café".into()], ..PurgeRequest::default() };
    let purge = admin.purge(&req).await.unwrap();
    assert_eq!(purge.target, PurgeTarget::Urls { urls: vec!["/caf%C3%A9".into()] });
    assert_eq!((purge.site.as_str(), purge.seq, purge.soft), ("rt", 2, false));
    assert_eq!(admin.purge_status(&purge.id).await.unwrap().id, purge.id);
    // Heartbeats come every two seconds between events, however long the
    // calls above took.
    async fn next_event(stream: &mut outpost_net::control::EventStream) -> StreamLine {
        loop {
            match stream.next().await.unwrap().unwrap() {
                StreamLine::Heartbeat { .. } => continue,
                line => return line,
            }
        }
    }
    let line = next_event(&mut stream).await;
    assert!(
        matches!(line, StreamLine::Event { record } if matches!(&record.event, Event::Purge(p) if p.id == purge.id))
    );

    let deleted = admin.delete_site("rt").await.unwrap();
    assert_eq!((deleted.id.as_str(), deleted.deleted, deleted.seq), ("rt", true, 3));
    let line = next_event(&mut stream).await;
    assert!(matches!(line, StreamLine::Event { record } if matches!(&record.event, Event::SiteDeleted { .. })));

    // Errors come back typed.
    let e = admin.site("nope").await.unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 404, error, .. } if error == "not_found"), "{e}");
    let e = admin.purge(&PurgeRequest { site: "rt".into(), ..PurgeRequest::default() }).await.unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 400, error, .. } if error == "invalid_purge"), "{e}");
    let wrong = ControlClient::new(&[&base], Token::Value("wrong".into()), Arc::clone(&tls));
    assert!(wrong.sites().await.unwrap_err().is_unauthorized());
    assert!(node.site("rt").await.unwrap_err().is_unauthorized(), "the node token is not an admin token");
    assert!(node.push_site("[site]").await.unwrap_err().is_unauthorized());
    // The site list (ids and hosts) is read by DNS servers, with the node token.
    assert_eq!(node.sites().await.unwrap(), admin.sites().await.unwrap());
    let gone = ControlClient::new(&["http://127.0.0.1:9"], Token::Value("x".into()), tls);
    assert!(matches!(gone.health().await.unwrap_err(), ClientError::Unreachable { .. }));

    // A site's versions, newest first (the deleted one's went with it); an
    // id no site has, however it is spelled, has none.
    assert!(admin.site_versions("rt").await.unwrap_err().to_string().contains("no site"));
    let admin_token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    for id in ["rt%2F00000000000000000001", "..", "%00", &"x".repeat(5000)] {
        let r = call(Method::GET, &format!("{base}/v1/sites/{id}/versions"), Some(&admin_token), None, "").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{id}");
    }
    admin.push_site(text).await.unwrap();
    let second = text.replace("9\"", "10\"");
    assert_eq!(admin.push_site(&second).await.unwrap().version, 2);
    let versions: Vec<(u64, String)> =
        admin.site_versions("rt").await.unwrap().into_iter().map(|r| (r.version, r.toml)).collect();
    assert_eq!(versions, [(2, second.clone()), (1, text.to_string())]);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_get_401_401_400_and_change_nothing() {
    let cdn = cdn().await;
    let no_token = call(Method::POST, &cdn.api("/v1/sites"), None, None, &site(cdn.origin)).await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    assert_eq!(no_token.json()["error"], "unauthorized");
    let wrong = call(Method::POST, &cdn.api("/v1/sites"), Some("nope"), None, &site(cdn.origin)).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let node_token = std::fs::read_to_string(cdn.dir.path().join("node.token")).unwrap();
    let wrong_kind = call(Method::POST, &cdn.api("/v1/sites"), Some(&node_token), None, &site(cdn.origin)).await;
    assert_eq!(wrong_kind.status, StatusCode::UNAUTHORIZED, "the node token is not an admin token");
    let bad_json = cdn.admin_call(Method::POST, "/v1/purge", "{not json").await;
    assert_eq!(bad_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_json.json()["error"], "invalid_json");
    let two_targets =
        cdn.admin_call(Method::POST, "/v1/purge", r#"{"site": "shop", "all": true, "tags": ["a"]}"#).await;
    assert_eq!(two_targets.status, StatusCode::BAD_REQUEST);
    assert_eq!(cdn.admin_call(Method::GET, "/v1/sites", "").await.json(), serde_json::json!([]));
    // PoP weights: what a broken script or a hostile caller sends.
    let long_reason = format!(r#"{{"weight": 0, "reason": "{}"}}"#, "x".repeat(201));
    for (body, error) in [
        ("{not json", "invalid_json"),
        (r#"{"weight": -1}"#, "invalid_json"),
        (r#"{"weight": 256}"#, "invalid_json"),
        (r#"{"weight": "0"}"#, "invalid_json"),
        (r#"{"reason": "no weight"}"#, "invalid_json"),
        (r#"{"weight": 101}"#, "invalid_pop"),
        (long_reason.as_str(), "invalid_pop"),
    ] {
        let r = cdn.admin_call(Method::PUT, "/v1/pops/fra", body).await;
        assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::BAD_REQUEST, Some(error)), "{body}");
    }
    let bad_name = cdn.admin_call(Method::PUT, "/v1/pops/fr%2Fa", r#"{"weight": 0}"#).await;
    assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);
    let by_node = call(Method::PUT, &cdn.api("/v1/pops/fra"), Some(&node_token), None, r#"{"weight": 0}"#).await;
    assert_eq!(by_node.status, StatusCode::UNAUTHORIZED, "a node cannot drain a PoP");
    assert_eq!(cdn.admin_call(Method::GET, "/v1/pops", "").await.json(), serde_json::json!([]));
    let health = call(Method::GET, &cdn.api("/healthz"), None, None, "").await.json();
    assert_eq!(health["seq"], 0, "no event was logged");
    assert_eq!(cdn.admin_call(Method::GET, "/v1/nope", "").await.status, StatusCode::NOT_FOUND);
    // What the framework refuses itself reads as the API's errors too.
    let wrong_method = cdn.admin_call(Method::GET, "/v1/purge", "").await;
    assert_eq!(
        (wrong_method.status, wrong_method.json()["error"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    assert!(wrong_method.headers.contains_key("allow"), "{:?}", wrong_method.headers);
    // A caller without a valid token is answered before its body is read:
    // it cannot make the API wait for and buffer a megabyte.
    for (method, path, headers) in [
        ("POST", "/v1/sites", String::new()),
        ("PUT", "/v1/sites/shop", "authorization: Bearer nope\r\n".to_string()),
        ("POST", "/v1/purge", String::new()),
        ("PUT", "/v1/pops/fra", format!("authorization: Bearer {node_token}\r\n")),
        ("POST", "/v1/ack", String::new()),
    ] {
        assert_eq!(status_before_body(cdn.control, method, path, &headers).await, Some(401), "{method} {path}");
    }
    let padded = format!("{}\n{}", "#".repeat(500 << 10), site(cdn.origin));
    let too_long = cdn.admin_call(Method::POST, "/v1/sites", &padded).await;
    assert_eq!(
        (too_long.status, too_long.json()["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("site_too_large"))
    );
    let huge = format!(r#"{{"site": "shop", "urls": ["/{}"]}}"#, "a".repeat(2 << 20));
    let too_large = cdn.admin_call(Method::POST, "/v1/purge", &huge).await;
    assert_eq!(
        (too_large.status, too_large.json()["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );
    let headers = [("authorization", format!("Bearer {}", cdn.admin))];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let not_utf8 =
        outpost_testkit::request(Method::POST, &cdn.api("/v1/sites"), &headers, b"\xff\xfe[site]").await.unwrap();
    assert_eq!((not_utf8.status, not_utf8.json()["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    assert!(not_utf8.json()["detail"].as_str().is_some_and(|d| !d.is_empty()), "the framework's reason, kept");
    assert_eq!(cdn.admin_call(Method::GET, "/v1/sites", "").await.json(), serde_json::json!([]), "nothing changed");
    cdn.stop.cancel();
}

/// The test origin and a control plane that takes nodes' own credentials
/// only and has a read-only token, in `d`, until `stop`; with its admin
/// token.
async fn credentials_only(d: &Path, stop: &CancellationToken) -> (SocketAddr, String, SocketAddr) {
    let origin = test_origin(stop).await;
    let (control, _) =
        start_control_with(d, stop, "", "shared_node_token = false\nviewer_token_file = \"viewer.token\"\n").await;
    (control, std::fs::read_to_string(d.join("admin.token")).unwrap(), origin)
}

/// A node's own credential (`outpost node-token`) opens its own stream and
/// acknowledges for it, never for another node; one with its name changed
/// is nothing; and with `shared_node_token = false` the node token itself
/// no longer speaks for any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_credential_speaks_for_its_own_node_alone() {
    let dir = outpost_testkit::tempdir();
    let d = dir.path();
    let stop = CancellationToken::new();
    let (control, admin, origin) = credentials_only(d, &stop).await;
    let secret = std::fs::read_to_string(d.join("node.token")).unwrap();
    let api = |p: &str| format!("http://{control}{p}");
    let cfg = NodeConfig::load(&d.join("control.toml")).unwrap();
    let own = outpost_control::credential::for_nodes(&cfg, &["edge-1".into()]).unwrap().remove(0);
    for name in ["edge 1", "Edge-1", "-edge", "edge-", ""] {
        assert!(outpost_control::credential::for_nodes(&cfg, &[name.into()]).is_err(), "`{name}` is not a node name");
    }

    // Edge 1 follows the control plane with its credential.
    let e1 = d.join("e1");
    std::fs::create_dir(&e1).unwrap();
    std::fs::write(e1.join("node.token"), &own).unwrap();
    let (edge, _edge_stop, _) = edge_following(&e1, 1, &format!("url = \"http://{control}\"")).await;
    let r = call(Method::POST, &api("/v1/sites"), Some(&admin), None, &site(origin)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    eventually("edge 1 to serve the site", || async {
        call(Method::GET, &format!("http://{edge}/hello"), None, Some("shop.test"), "").await.status == StatusCode::OK
    })
    .await;

    // It cannot speak for edge 2: neither its stream nor its acknowledgement.
    let as_two = "/v1/events?after=0&node=edge-2&role=edge&pop=p2&addrs=";
    let r = call(Method::GET, &api(as_two), Some(&own), None, "").await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::FORBIDDEN, Some("wrong_node")));
    let r = call(Method::POST, &api("/v1/ack"), Some(&own), None, r#"{"node": "edge-2", "seq": 1}"#).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::FORBIDDEN, Some("wrong_node")));
    // Its own acknowledgement goes through.
    let r = call(Method::POST, &api("/v1/ack"), Some(&own), None, r#"{"node": "edge-1", "seq": 1}"#).await;
    assert!(r.status.is_success(), "{:?}", r.status);
    // Renamed, it is no credential at all.
    let forged = own.replacen("edge-1", "edge-2", 1);
    assert_eq!(call(Method::GET, &api(as_two), Some(&forged), None, "").await.status, StatusCode::UNAUTHORIZED);
    // The node token itself speaks for no node here.
    let r = call(Method::GET, &api(as_two), Some(secret.trim()), None, "").await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::FORBIDDEN, Some("credential_required")));
    let r = call(Method::POST, &api("/v1/ack"), Some(secret.trim()), None, r#"{"node": "edge-1", "seq": 1}"#).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let nodes = call(Method::GET, &api("/v1/nodes"), Some(&admin), None, "").await.json();
    let names: Vec<_> = nodes.as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["edge-1"], "{nodes}");
    stop_edges(&[&_edge_stop]).await;
    stop.cancel();
}

/// The read-only token reads what operators read, through the API and the
/// console, and changes nothing; the node token, no longer shared with the
/// nodes, opens no console session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_token_reads_and_changes_nothing() {
    let dir = outpost_testkit::tempdir();
    let d = dir.path();
    let stop = CancellationToken::new();
    let (control, admin, origin) = credentials_only(d, &stop).await;
    let viewer = std::fs::read_to_string(d.join("viewer.token")).unwrap().trim().to_string();
    assert!(viewer.len() >= 32 && viewer != admin.trim(), "made at first start, a token of its own");
    let api = |p: &str| format!("http://{control}{p}");
    assert_eq!(
        call(Method::POST, &api("/v1/sites"), Some(&admin), None, &site(origin)).await.status,
        StatusCode::CREATED
    );
    let body = r#"{"site": "shop", "all": true}"#;
    assert_eq!(call(Method::POST, &api("/v1/purge"), Some(&admin), None, body).await.status, StatusCode::ACCEPTED);

    for path in ["/v1/sites", "/v1/sites/shop", "/v1/sites/shop/versions", "/v1/purges/p1", "/v1/nodes", "/v1/pops"] {
        let r = call(Method::GET, &api(path), Some(&viewer), None, "").await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&r.body));
    }
    let r = call(Method::GET, &api("/v1/sites/shop"), Some(&viewer), None, "").await;
    assert_eq!(r.json()["id"], "shop");
    let writes = [
        (Method::POST, "/v1/purge", body.to_string()),
        (Method::PUT, "/v1/sites/shop", site(origin)),
        (Method::DELETE, "/v1/sites/shop", String::new()),
        (Method::PUT, "/v1/pops/fra", r#"{"weight": 0}"#.to_string()),
        (Method::POST, "/v1/nodes/edge-1/credential", String::new()),
        (Method::DELETE, "/v1/nodes/edge-1/credential", String::new()),
        (Method::GET, "/v1/events?after=0&node=edge-1&role=edge&pop=p1&addrs=", String::new()),
        (Method::POST, "/v1/ack", r#"{"node": "edge-1", "seq": 1}"#.to_string()),
    ];
    for (method, path, body) in writes {
        let r = call(method.clone(), &api(path), Some(&viewer), None, &body).await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            "{method} {path}"
        );
    }
    let seq = call(Method::GET, &api("/healthz"), None, None, "").await.json()["seq"].clone();
    assert_eq!(seq, 2, "the site and the purge, nothing after");

    // The console: read-only with it, nothing with the node token.
    let sign_in = |token: String| async move {
        let form = [("content-type", "application/x-www-form-urlencoded")];
        outpost_testkit::request(Method::POST, &api("/console/login"), &form, format!("token={token}").as_bytes())
            .await
            .unwrap()
    };
    let r = sign_in(viewer.clone()).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.headers["set-cookie"].to_str().unwrap().starts_with("outpost_console=ro."), "{:?}", r.headers);
    let node_token = std::fs::read_to_string(d.join("node.token")).unwrap();
    assert_eq!(sign_in(node_token.trim().to_string()).await.status, StatusCode::UNAUTHORIZED);
    stop.cancel();
}

/// Runs `outpost credentials ARGS` against the control plane at `control`
/// with the admin token; its standard output, or the test fails.
fn credentials_cli(control: SocketAddr, admin: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("credentials")
        .args(args)
        .args(["--control", &format!("http://{control}")])
        .env("OUTPOST_TOKEN", admin)
        .output()
        .unwrap();
    assert!(out.status.success(), "credentials {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A control plane taking node credentials alone, with the site `shop`,
/// and edge 1 following it with its credential of generation 0.
struct EdgeOnCredential {
    _dir: outpost_testkit::TestDir,
    stop: CancellationToken,
    control: SocketAddr,
    admin: String,
    /// Generation 0 of edge 1's and edge 2's credentials.
    creds: Vec<String>,
    /// Edge 1's.
    token_file: std::path::PathBuf,
    edge: SocketAddr,
    engine: Arc<outpost_proxy::Engine>,
    _edge_stop: CancellationToken,
}

impl EdgeOnCredential {
    async fn start() -> EdgeOnCredential {
        let dir = outpost_testkit::tempdir();
        let d = dir.path();
        let stop = CancellationToken::new();
        let (control, admin, origin) = credentials_only(d, &stop).await;
        let cfg = NodeConfig::load(&d.join("control.toml")).unwrap();
        let creds = outpost_control::credential::for_nodes(&cfg, &["edge-1".into(), "edge-2".into()]).unwrap();
        let e1 = d.join("e1");
        std::fs::create_dir(&e1).unwrap();
        let token_file = e1.join("node.token");
        std::fs::write(&token_file, &creds[0]).unwrap();
        let (edge, edge_stop, engine) = edge_following(&e1, 1, &format!("url = \"http://{control}\"")).await;
        let sites = format!("http://{control}/v1/sites");
        assert_eq!(call(Method::POST, &sites, Some(&admin), None, &site(origin)).await.status, StatusCode::CREATED);
        let t = EdgeOnCredential {
            _dir: dir,
            stop,
            control,
            admin,
            creds,
            token_file,
            edge,
            engine,
            _edge_stop: edge_stop,
        };
        eventually("edge 1 to follow", || async { t.edge_1().await["connected"] == true }).await;
        t
    }

    /// Edge 1 in the registry (`null` before it registers).
    async fn edge_1(&self) -> serde_json::Value {
        let nodes = call(Method::GET, &format!("http://{}/v1/nodes", self.control), Some(&self.admin), None, "").await;
        nodes.json().as_array().unwrap().iter().find(|n| n["name"] == "edge-1").cloned().unwrap_or_default()
    }
}

impl Drop for EdgeOnCredential {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A node's credential revoked through the CLI is refused at once, on
/// every call and on the stream it had open; a rotated one takes over, and
/// the node catches up on what it missed once it holds it. Other nodes'
/// credentials are untouched, and only the admin token revokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_is_refused_at_once_and_a_rotated_one_takes_over() {
    let t = EdgeOnCredential::start().await;
    let (control, admin, engine, edge) = (t.control, t.admin.clone(), Arc::clone(&t.engine), t.edge);
    let (old, other) = (&t.creds[0], &t.creds[1]);
    let e1 = t.token_file.parent().unwrap();
    let api = |p: &str| format!("http://{control}{p}");
    let edge_1 = || t.edge_1();

    // Only the admin token revokes; names are checked.
    let r = call(Method::POST, &api("/v1/nodes/edge-1/credential"), Some(old), None, "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = call(Method::DELETE, &api("/v1/nodes/edge-1/credential"), Some(other), None, "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = call(Method::POST, &api("/v1/nodes/edge_1/credential"), Some(&admin), None, "").await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_node")));

    // Rotated: the old credential is refused everywhere, and the stream it
    // holds open ends.
    let keys = e1.parent().unwrap().join("keys");
    let written = credentials_cli(control, &admin, &["rotate", "edge-1", "--out", keys.to_str().unwrap()]);
    assert_eq!(written.trim(), keys.join("edge-1.token").to_str().unwrap());
    let new = std::fs::read_to_string(keys.join("edge-1.token")).unwrap();
    assert!(new.starts_with("node.edge-1.1."), "{new}");
    let own_stream = "/v1/events?after=0&node=edge-1&role=edge&pop=p1&addrs=";
    let r = call(Method::GET, &api(own_stream), Some(old), None, "").await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("credential_revoked")));
    let r = call(Method::POST, &api("/v1/ack"), Some(old), None, r#"{"node": "edge-1", "seq": 1}"#).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("credential_revoked")));
    assert_eq!(call(Method::GET, &api("/v1/nodes"), Some(old), None, "").await.status, StatusCode::UNAUTHORIZED);
    eventually("edge 1's stream to end", || async { edge_1().await["connected"] == false }).await;
    // The edge says why on /healthz (it cannot tell the control plane).
    eventually("edge 1 to report the refusal", || async {
        engine.problems().iter().any(|p| p.contains("refuses this node's token") && p.contains("credential_revoked"))
    })
    .await;
    // Another node's credential still speaks for it.
    let r = call(Method::GET, &api("/v1/nodes"), Some(other), None, "").await;
    assert_eq!(r.status, StatusCode::OK);

    // Cut off, the edge keeps serving what it has; a purge waits for it.
    assert_eq!(
        call(Method::GET, &format!("http://{edge}/hello"), None, Some("shop.test"), "").await.status,
        StatusCode::OK
    );
    let body = r#"{"site": "shop", "all": true}"#;
    assert_eq!(call(Method::POST, &api("/v1/purge"), Some(&admin), None, body).await.status, StatusCode::ACCEPTED);
    let last = call(Method::GET, &api("/healthz"), None, None, "").await.json()["seq"].as_u64().unwrap();
    tokio::time::sleep(2 * outpost_config::api::HEARTBEAT).await;
    let stuck = edge_1().await;
    assert!(stuck["connected"] == false && stuck["acked_seq"].as_u64() < Some(last), "{stuck}");

    // Given the new credential, it comes back and catches up.
    std::fs::write(e1.join("node.token"), &new).unwrap();
    eventually("edge 1 to catch up with its new credential", || async {
        let n = edge_1().await;
        n["connected"] == true && n["acked_seq"].as_u64() == Some(last)
    })
    .await;
    assert_eq!(engine.problems(), Vec::<String>::new(), "taken again");

    // Revoked with none handed out: the new one goes the same way.
    let said = credentials_cli(control, &admin, &["revoke", "edge-1", "--json"]);
    let said: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!((said["node"].as_str(), said["generation"].as_u64()), (Some("edge-1"), Some(2)), "{said}");
    assert!(said.get("credential").is_none(), "{said}");
    let r = call(Method::GET, &api(own_stream), Some(&new), None, "").await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("credential_revoked")));
    eventually("edge 1's stream to end again", || async { edge_1().await["connected"] == false }).await;
    let r = call(Method::GET, &api("/v1/nodes"), Some(other), None, "").await;
    assert_eq!(r.status, StatusCode::OK);
}

/// A credential rotated with a hand-over reaches its node: its open stream
/// ends, and the next it opens with the credential before is handed the
/// new one, which the node writes over its token file and goes on with,
/// catching every event after. Once it has used the new one, the old one
/// is handed nothing. A rotation without one, or a credential two
/// generations old, is handed nothing; a node that cannot write its token
/// file goes on with the credential from memory, says so, and writes it
/// once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_rotated_with_a_hand_over_reaches_its_node() {
    use std::os::unix::fs::PermissionsExt;

    use outpost_config::api::StreamQuery;
    use outpost_config::{Role, StreamLine};
    use outpost_net::control::{ControlClient, Token};
    let t = EdgeOnCredential::start().await;
    let (control, admin, engine, token_file) = (t.control, t.admin.clone(), Arc::clone(&t.engine), &t.token_file);
    let (old, idle) = (&t.creds[0], &t.creds[1]);
    let api = |p: &str| format!("http://{control}{p}");
    let edge_1 = || t.edge_1();

    assert_eq!(edge_1().await["credential_generation"], 0, "the registry shows the credential in use");
    let said = credentials_cli(control, &admin, &["rotate", "edge-1", "--hand-over", "--json"]);
    let said: serde_json::Value = serde_json::from_str(&said).unwrap();
    let new = said["credential"].as_str().unwrap().to_string();
    assert!(new.starts_with("node.edge-1.1."), "{said}");
    eventually("edge 1 to write the credential handed over", || async {
        std::fs::read_to_string(token_file).unwrap() == new
    })
    .await;
    assert_eq!(std::fs::metadata(token_file).unwrap().permissions().mode() & 0o777, 0o600);
    let r = call(Method::POST, &api("/v1/ack"), Some(old), None, r#"{"node": "edge-1", "seq": 1}"#).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("credential_revoked")));
    // It follows with the new one: a purge after reaches it.
    let body = r#"{"site": "shop", "all": true}"#;
    assert_eq!(call(Method::POST, &api("/v1/purge"), Some(&admin), None, body).await.status, StatusCode::ACCEPTED);
    let last = call(Method::GET, &api("/healthz"), None, None, "").await.json()["seq"].as_u64().unwrap();
    eventually("edge 1 to catch up with the credential handed over", || async {
        let n = edge_1().await;
        n["connected"] == true && n["acked_seq"].as_u64() == Some(last)
    })
    .await;
    assert_eq!(engine.problems(), Vec::<String>::new(), "never refused");
    assert_eq!(edge_1().await["credential_generation"], 1);
    // The new one used, the old one opens no stream and is handed nothing.
    let own_stream = "/v1/events?after=0&node=edge-1&role=edge&pop=p1&addrs=";
    let r = call(Method::GET, &api(own_stream), Some(old), None, "").await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("credential_revoked")));

    // A node between streams, rotated with a hand-over: the stream it opens
    // with the credential before is handed the new one and ends.
    let said = credentials_cli(control, &admin, &["rotate", "edge-2", "--hand-over", "--json"]);
    let handed = serde_json::from_str::<serde_json::Value>(&said).unwrap()["credential"].as_str().unwrap().to_string();
    let idle_stream = "/v1/events?after=0&node=edge-2&role=edge&pop=p1&addrs=";
    for _ in 0..2 {
        let r = call(Method::GET, &api(idle_stream), Some(idle), None, "").await;
        assert_eq!(r.status, StatusCode::OK);
        let line: StreamLine = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(line, StreamLine::Credential { credential: handed.clone() });
    }
    // Opening a stream with the new one ends the hand-over.
    let tls = outpost_proxy::tls::client_config(&[], None).unwrap();
    let as_two = ControlClient::new(&[api("")], Token::Value(handed.clone()), tls);
    let query = StreamQuery {
        after: 0,
        node: "edge-2".into(),
        role: Role::Edge,
        pop: None,
        addrs: String::new(),
        certificates: false,
    };
    drop(as_two.events(&query).await.unwrap());
    let r = call(Method::GET, &api(idle_stream), Some(idle), None, "").await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("credential_revoked")));
    // Rotated again without a hand-over: nothing is handed, to the
    // generation before or the one before that.
    credentials_cli(control, &admin, &["rotate", "edge-2", "--json"]);
    for stale in [&handed, idle] {
        let r = call(Method::GET, &api(idle_stream), Some(stale), None, "").await;
        assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("credential_revoked")));
    }
    // With a hand-over, only the generation just before is handed it.
    credentials_cli(control, &admin, &["rotate", "edge-2", "--hand-over", "--json"]);
    let r = call(Method::GET, &api(idle_stream), Some(&handed), None, "").await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("credential_revoked")));
    // A bad query is refused before anything is revoked.
    let r = call(Method::POST, &api("/v1/nodes/edge-2/credential?hand_over=maybe"), Some(&admin), None, "").await;
    assert_eq!((r.status, r.json()["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")));
    let said = credentials_cli(control, &admin, &["revoke", "edge-2", "--json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&said).unwrap()["generation"], 4, "{said}");

    // A node that cannot write its token file keeps the file it has, goes
    // on with the credential from memory, and says so on /healthz until
    // it can write it, which it does on its open stream.
    let blocker = token_file.with_file_name(".node.token.new");
    let rotate = |hand_over: bool| {
        let args: &[&str] =
            if hand_over { &["rotate", "edge-1", "--hand-over", "--json"] } else { &["rotate", "edge-1", "--json"] };
        let said = credentials_cli(control, &admin, args);
        serde_json::from_str::<serde_json::Value>(&said).unwrap()["credential"].as_str().unwrap().to_string()
    };
    let held = |p: &String| p.contains("a credential handed over is held in memory only");
    let generation = |n: u64| {
        let edge_1 = &edge_1;
        async move {
            let e = edge_1().await;
            e["connected"] == true && e["credential_generation"] == n
        }
    };
    std::fs::create_dir(&blocker).unwrap();
    let second = rotate(true);
    eventually("edge 1 to hold the credential handed over", || async { engine.problems().iter().any(held) }).await;
    assert_eq!(std::fs::read_to_string(token_file).unwrap(), new);
    assert_eq!(call(Method::POST, &api("/v1/purge"), Some(&admin), None, body).await.status, StatusCode::ACCEPTED);
    let last = call(Method::GET, &api("/healthz"), None, None, "").await.json()["seq"].as_u64().unwrap();
    eventually("edge 1 to catch up with the credential it holds, and report holding it", || async {
        let e = edge_1().await;
        let reported = e["problems"].as_array().is_some_and(|p| {
            p.iter().any(|p| p.as_str().is_some_and(|p| p.contains("a credential handed over is held in memory")))
        });
        generation(2).await && e["acked_seq"].as_u64() == Some(last) && reported
    })
    .await;
    std::fs::remove_dir(&blocker).unwrap();
    eventually("edge 1 to write the credential it held", || async {
        std::fs::read_to_string(token_file).unwrap() == second && engine.problems().is_empty()
    })
    .await;
    assert!(generation(2).await, "on the stream it had");

    // Held again, then refused (rotated without a hand-over): a credential
    // put in the file by hand is used, and the one held let go.
    std::fs::create_dir(&blocker).unwrap();
    rotate(true);
    eventually("edge 1 to hold the next credential", || async {
        generation(3).await && engine.problems().iter().any(held)
    })
    .await;
    let by_hand = rotate(false);
    eventually("edge 1 to be refused", || async {
        engine.problems().iter().any(|p| p.contains("the control plane refuses this node's token"))
    })
    .await;
    std::fs::write(token_file, &by_hand).unwrap();
    eventually("edge 1 to connect with the credential put there by hand", || async {
        generation(4).await && engine.problems().is_empty()
    })
    .await;
    assert_eq!(std::fs::read_to_string(token_file).unwrap(), by_hand);
    std::fs::remove_dir(&blocker).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_sites_log_and_purges_across_a_restart() {
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let (addr, control) = start_control(dir.path(), &stop).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let origin: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert_eq!(
        call(Method::POST, &format!("http://{addr}/v1/sites"), Some(&admin), None, &site(origin)).await.status,
        StatusCode::CREATED
    );
    let p =
        call(Method::POST, &format!("http://{addr}/v1/purge"), Some(&admin), None, r#"{"site": "shop", "all": true}"#)
            .await;
    assert_eq!(p.status, StatusCode::ACCEPTED);
    stop.cancel();
    // The server's tasks have ended and released the store file: open it again.
    eventually("the control plane to stop", || async { Arc::strong_count(&control) == 1 }).await;
    drop(control);
    let stop = CancellationToken::new();
    let (addr, _) = start_control(dir.path(), &stop).await;
    let sites = call(Method::GET, &format!("http://{addr}/v1/sites"), Some(&admin), None, "").await.json();
    assert_eq!(sites[0]["id"], "shop");
    let purge = call(Method::GET, &format!("http://{addr}/v1/purges/p1"), Some(&admin), None, "").await;
    assert_eq!(purge.status, StatusCode::OK);
    assert_eq!(purge.json()["seq"], 2);
    stop.cancel();
}

/// Purges `site`'s `tags` (moving the log on), then starts edge 1 again
/// and waits until it has caught up.
async fn back_after_purges(
    dir: &Path,
    control: SocketAddr,
    admin: &str,
    site: &str,
    tags: &[&str],
) -> (SocketAddr, CancellationToken) {
    let api = |path: &str| format!("http://{control}{path}");
    for tag in tags {
        let body = format!(r#"{{"site": "{site}", "tags": ["{tag}"]}}"#);
        assert_eq!(call(Method::POST, &api("/v1/purge"), Some(admin), None, &body).await.status, StatusCode::ACCEPTED);
    }
    let back = edge_node(dir, 1, control).await;
    eventually("the edge to catch up", || async {
        let n = call(Method::GET, &api("/v1/nodes"), Some(admin), None, "").await.json();
        n[0]["lag"] == 0 && n[0]["connected"] == true
    })
    .await;
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_compacted_log_takes_a_snapshot_and_serves_nothing_purged_as_a_hit() {
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let origin_addr = test_origin(&stop).await;
    let (control, _) = start_control_keeping(dir.path(), &stop, 2).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let api = |path: &str| format!("http://{control}{path}");
    assert_eq!(
        call(Method::POST, &api("/v1/sites"), Some(&admin), None, &site(origin_addr)).await.status,
        StatusCode::CREATED
    );
    let (edge, edge_stop) = edge_node(dir.path(), 1, control).await;
    let get = |addr: SocketAddr| async move {
        call(Method::GET, &format!("http://{addr}/gone?cc=max-age%3D600&keys=old"), None, Some("shop.test"), "").await
    };
    let kept = |addr: SocketAddr| async move {
        call(Method::GET, &format!("http://{addr}/kept?cc=max-age%3D600&keys=other"), None, Some("shop.test"), "").await
    };
    eventually("the site", || async { get(edge).await.status == StatusCode::OK }).await;
    assert!(get(edge).await.headers["cache-status"].to_str().unwrap().contains("; hit"));
    kept(edge).await;
    assert!(kept(edge).await.headers["cache-status"].to_str().unwrap().contains("; hit"));
    // The edge goes away; meanwhile its object is purged and the log moves
    // on past what it keeps.
    edge_stop.cancel();
    eventually("the edge to leave", || async {
        call(Method::GET, &api("/v1/nodes"), Some(&admin), None, "").await.json()[0]["connected"] == false
    })
    .await;
    let (edge, _again) = back_after_purges(dir.path(), control, &admin, "shop", &["old", "a", "b", "c"]).await;
    let r = get(edge).await;
    let cs = r.headers["cache-status"].to_str().unwrap().to_string();
    assert!(!cs.contains("; hit"), "an object purged while the edge was away is not a hit: {cs}");
    // The hard tag purge left the log before the edge came back; the
    // snapshot carries it, so the object is gone, not revalidated (a 304
    // or an origin error would otherwise serve it again).
    assert!(cs.contains("fwd=uri-miss"), "{cs}");
    // What no hard purge named is made stale by the snapshot, and
    // revalidated.
    let cs = kept(edge).await.headers["cache-status"].to_str().unwrap().to_string();
    assert!(cs.contains("fwd=stale; fwd-status=304"), "{cs}");
    stop.cancel();
}

/// `outpost purge --wait` fails, naming them, while connected nodes have
/// not applied the purge: a script that goes on after it (a deploy) would
/// otherwise go on while they still serve what it purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_wait_fails_while_a_connected_node_has_not_applied_it() {
    use tokio::io::AsyncWriteExt;
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let origin_addr = test_origin(&stop).await;
    let (control, _) = start_control(dir.path(), &stop).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let token = std::fs::read_to_string(dir.path().join("node.token")).unwrap();
    let api = |path: &str| format!("http://{control}{path}");
    let r = call(Method::POST, &api("/v1/sites"), Some(&admin), None, &site(origin_addr)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    // A node that opens its stream and never acknowledges.
    let mut held = tokio::net::TcpStream::connect(control).await.unwrap();
    let open = format!(
        "GET /v1/events?after=0&node=edge-9&role=edge&pop=p1&addrs= HTTP/1.1\r\nhost: c\r\n\
         authorization: Bearer {}\r\n\r\n",
        token.trim()
    );
    held.write_all(open.as_bytes()).await.unwrap();
    eventually("the node to connect", || async {
        call(Method::GET, &api("/v1/nodes"), Some(&admin), None, "").await.json()[0]["connected"] == true
    })
    .await;
    let (control, token) = (format!("http://{control}"), admin.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["purge", "--site", "shop", "--all", "--wait", "--control", &control])
            .env("OUTPOST_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a purge not applied everywhere passed its wait: {said}");
    assert!(said.contains("not applied yet by edge-9"), "{said}");
    drop(held);
    stop.cancel();
}

/// A purge whose rule a node cannot write to its disk is not acknowledged
/// (a restart would forget it), and the node takes it again until it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_a_node_cannot_keep_is_not_acknowledged_until_it_can() {
    let cdn = cdn().await;
    let r = cdn.admin_call(Method::POST, "/v1/sites", &site(cdn.origin)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let acked = |node: &'static str| {
        let cdn = &cdn;
        async move {
            let nodes = cdn.admin_call(Method::GET, "/v1/nodes", "").await.json();
            let n = nodes.as_array().unwrap().iter().find(|n| n["name"] == node).cloned().unwrap_or_default();
            n["acked_seq"].as_u64().unwrap_or(0)
        }
    };
    eventually("edge 1 to take the site", || async { acked("edge-1").await == 1 }).await;
    // Where edge 1 writes its purge rules, a folder stands in the way.
    let blocker = cdn.dir.path().join("cache-1/purges.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let r = cdn.admin_call(Method::POST, "/v1/purge", r#"{"site": "shop", "all": true}"#).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    eventually("the others to take the purge", || async { acked("edge-2").await == 2 && acked("edge-3").await == 2 })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(acked("edge-1").await, 1, "a purge it could not keep was acknowledged");
    std::fs::remove_dir(&blocker).unwrap();
    eventually("edge 1 to take the purge once it can keep it", || async { acked("edge-1").await == 2 }).await;
    assert!(cdn.dir.path().join("cache-1/purges.json").exists());
    cdn.stop.cancel();
}

/// A node that has applied past the log's end (the control plane's store
/// restored from an older backup, or made anew) is sent a snapshot: it
/// would otherwise take every event of the new log for one it has, and
/// never apply any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_ahead_of_a_restored_log_takes_a_snapshot() {
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let origin_addr = test_origin(&stop).await;
    let (control, _) = start_control(dir.path(), &stop).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let api = |path: &str| format!("http://{control}{path}");
    let r = call(Method::POST, &api("/v1/sites"), Some(&admin), None, &site(origin_addr)).await;
    assert_eq!((r.status, r.json()["seq"].as_u64()), (StatusCode::CREATED, Some(1)));
    // Edge 1 kept the state of a log that reached 1000.
    std::fs::create_dir_all(dir.path().join("cache-1")).unwrap();
    std::fs::write(dir.path().join("cache-1/control-state.json"), r#"{"seq": 1000, "sites": {}}"#).unwrap();
    let (edge, edge_stop) = edge_node(dir.path(), 1, control).await;
    eventually("the edge to serve the site the new log has", || async {
        call(Method::GET, &format!("http://{edge}/hello"), None, Some("shop.test"), "").await.status == StatusCode::OK
    })
    .await;
    let nodes = call(Method::GET, &api("/v1/nodes"), Some(&admin), None, "").await.json();
    assert_eq!(nodes[0]["acked_seq"], 1, "{nodes}");
    edge_stop.cancel();
    stop.cancel();
}

/// A node cut off while its site was deleted, and another created under the
/// same id, learns of both from the snapshot it catches up with: the old
/// site's copies are dropped, not revalidated with the new site's origins
/// (from which a failure would serve them stale), while a site merely
/// changed meanwhile keeps its copies to revalidate. A site deleted meanwhile
/// is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_compacted_log_tells_a_site_created_again_from_one_changed() {
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let origin_addr = test_origin(&stop).await;
    let (control, _) = start_control_keeping(dir.path(), &stop, 2).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let api = |path: &str| format!("http://{control}{path}");
    let upload = |id: &str, host: &str, method: Method, note: &str| {
        let text = format!(
            "# {note}\n[site]\nid = \"{id}\"\nhosts = [\"{host}\"]\n\n[[origin]]\nurl = \"http://{origin_addr}\"\n"
        );
        let url = if method == Method::PUT { api(&format!("/v1/sites/{id}")) } else { api("/v1/sites") };
        let admin = admin.clone();
        async move { call(method, &url, Some(&admin), None, &text).await }
    };
    for (id, host) in [("shop", "shop.test"), ("kept", "kept.test"), ("gone", "gone.test")] {
        let r = upload(id, host, Method::POST, "first").await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    }
    let (edge, edge_stop) = edge_node(dir.path(), 1, control).await;
    let get = |host: &'static str| async move {
        call(Method::GET, &format!("http://{edge}/obj?cc=max-age%3D600"), None, Some(host), "").await
    };
    for host in ["shop.test", "kept.test", "gone.test"] {
        eventually("the site's copy to be a hit", || async {
            let r = get(host).await;
            r.status == StatusCode::OK && r.headers["cache-status"].to_str().unwrap().contains("; hit")
        })
        .await;
    }
    edge_stop.cancel();
    eventually("the edge to leave", || async {
        call(Method::GET, &api("/v1/nodes"), Some(&admin), None, "").await.json()[0]["connected"] == false
    })
    .await;
    // Meanwhile: `shop` deleted and created again, `kept` changed, `gone`
    // deleted, and the log moves on past what it keeps.
    for id in ["shop", "gone"] {
        let r = call(Method::DELETE, &api(&format!("/v1/sites/{id}")), Some(&admin), None, "").await;
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(upload("shop", "shop.test", Method::POST, "another").await.status, StatusCode::CREATED);
    let r = upload("kept", "kept.test", Method::PUT, "changed").await;
    assert!(r.status.is_success(), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["version"], 2);
    let (edge, _again) = back_after_purges(dir.path(), control, &admin, "kept", &["a", "b", "c"]).await;
    let get = |host: &'static str| async move {
        call(Method::GET, &format!("http://{edge}/obj?cc=max-age%3D600"), None, Some(host), "").await
    };
    let cs = |r: &Reply| r.headers["cache-status"].to_str().unwrap().to_string();
    let reborn = get("shop.test").await;
    assert_eq!(reborn.status, StatusCode::OK);
    assert!(cs(&reborn).contains("fwd=uri-miss"), "the deleted site's copy was kept: {}", cs(&reborn));
    let kept = get("kept.test").await;
    assert!(cs(&kept).contains("fwd=stale"), "a changed site's copy is revalidated: {}", cs(&kept));
    assert_eq!(get("gone.test").await.status, StatusCode::MISDIRECTED_REQUEST);
    stop.cancel();
}

/// Purge latency from the API call to the last node's acknowledgement, with
/// 10 edges on loopback, over 200 purges, then site pushes per second. A
/// measurement, not a check: run it with `cargo nextest run -p outpost
/// --run-ignored only purge_latency --no-capture` (and again with
/// `OUTPOST_TEST_STORE=etcd`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; prints p50/p99"]
async fn purge_latency() {
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let (control, _) = start_control(dir.path(), &stop).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let api = |path: &str| format!("http://{control}{path}");
    call(Method::POST, &api("/v1/sites"), Some(&admin), None, &site("127.0.0.1:9".parse().unwrap())).await;
    let mut guards = Vec::new();
    for i in 1..=10 {
        guards.push(edge_node(dir.path(), i, control).await.1.drop_guard());
    }
    eventually("ten connected nodes", || async {
        let n = call(Method::GET, &api("/v1/nodes"), Some(&admin), None, "").await.json();
        n.as_array().unwrap().iter().filter(|x| x["connected"] == true && x["lag"] == 0).count() == 10
    })
    .await;
    let mut took = Vec::new();
    for i in 0..200 {
        let body = format!(r#"{{"site": "shop", "tags": ["t{i}"], "wait": true}}"#);
        let started = std::time::Instant::now();
        let r = call(Method::POST, &api("/v1/purge"), Some(&admin), None, &body).await;
        took.push(started.elapsed());
        assert_eq!(r.json()["acked"].as_array().unwrap().len(), 10, "every node acknowledged");
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let store = if etcd_backend() { "etcd" } else { "redb" };
    println!(
        "{store}: purge latency, 10 nodes, 200 purges: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(took[99]),
        ms(took[197]),
        ms(took[199])
    );
    // Site pushes, one after another, each a new version that reaches the
    // ten nodes' streams.
    let started = std::time::Instant::now();
    for i in 0..200 {
        let text = format!("{}\n# version {i}\n", site("127.0.0.1:9".parse().unwrap()));
        let r = call(Method::POST, &api("/v1/sites"), Some(&admin), None, &text).await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    println!("{store}: {:.0} site pushes per second", 200.0 / started.elapsed().as_secs_f64());
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_past_its_grace_a_node_revalidates_hits_and_serves_stale_when_the_origin_fails() {
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let origin_addr = test_origin(&stop).await;
    let control_stop = CancellationToken::new();
    let (control, _) = start_control(dir.path(), &control_stop).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    // No stale-if-error: only the partition lets a stale copy stand in.
    let text = format!("{}\n[stale]\nif_error = \"0s\"\npartition_grace = \"30s\"\n", site(origin_addr));
    assert_eq!(
        call(Method::POST, &format!("http://{control}/v1/sites"), Some(&admin), None, &text).await.status,
        StatusCode::CREATED
    );
    let (edge, _edge_stop, engine) = edge_engine(dir.path(), 1, control).await;
    let get = || async move {
        call(Method::GET, &format!("http://{edge}/part?cc=max-age%3D600"), None, Some("shop.test"), "").await
    };
    eventually("the site", || async { get().await.status == StatusCode::OK }).await;
    let hit = get().await;
    assert!(hit.headers["cache-status"].to_str().unwrap().starts_with("edge-1; hit"));
    assert!(engine.partitioned_for().is_none());
    // How far the edge follows the control plane is for shields alone.
    let asked = call(Method::GET, &format!("http://{origin_addr}/__origin/request?path=/part"), None, None, "").await;
    assert_eq!(asked.status, StatusCode::OK);
    assert!(asked.json().get("outpost-seq").is_none(), "sent to the origin: {}", asked.json());

    control_stop.cancel();
    // No heartbeat can arrive once the control plane has stopped listening.
    eventually("the control plane to stop", || async { tokio::net::TcpStream::connect(control).await.is_err() }).await;
    // Inside the grace a hit is still a hit; past it, hits are revalidated.
    // (The time since the last heartbeat is the clock's advance plus the
    // real time gone by: the grace leaves 20 s of it.)
    engine.clock.advance(Duration::from_secs(10));
    let r = get().await;
    let cs = r.headers["cache-status"].to_str().unwrap().to_string();
    assert!(cs.contains("; hit") && cs.contains("partitioned="), "inside the grace: {cs}");
    engine.clock.advance(Duration::from_secs(25));
    let r = get().await;
    let cs = r.headers["cache-status"].to_str().unwrap().to_string();
    assert!(cs.contains("fwd=stale; fwd-status=304") && cs.contains("partitioned="), "revalidated: {cs}");
    call(Method::POST, &format!("http://{origin_addr}/__origin/fault?mode=503"), None, None, "").await;
    let r = get().await;
    assert_eq!(r.status, StatusCode::OK, "the stale copy stands in");
    let cs = r.headers["cache-status"].to_str().unwrap().to_string();
    assert!(cs.contains("detail=stale-partitioned") && cs.contains("partitioned="), "{cs}");
    assert_eq!(r.body, hit.body);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_keeps_serving_and_applies_missed_purges_in_order_on_healing() {
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let origin_addr = test_origin(&stop).await;
    let (control, _) = start_control(dir.path(), &stop).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let api = |path: &str| format!("http://{control}{path}");
    call(Method::POST, &api("/v1/sites"), Some(&admin), None, &site(origin_addr)).await;
    let relay = crate::relay::Relay::start(control).await;
    let (edge, _edge_stop, _) = edge_engine(dir.path(), 1, relay.addr).await;
    let get = |path: &'static str| async move {
        call(Method::GET, &format!("http://{edge}{path}"), None, Some("shop.test"), "").await
    };
    eventually("the site", || async { get("/a?cc=max-age%3D600&keys=one").await.status == StatusCode::OK }).await;
    get("/b?cc=max-age%3D600&keys=two").await;
    relay.cut();
    for tag in ["one", "two"] {
        let body = format!(r#"{{"site": "shop", "tags": ["{tag}"]}}"#);
        assert_eq!(call(Method::POST, &api("/v1/purge"), Some(&admin), None, &body).await.status, StatusCode::ACCEPTED);
    }
    // Cut off, the edge keeps serving what it has (it has not heard of the purges).
    for path in ["/a?cc=max-age%3D600&keys=one", "/b?cc=max-age%3D600&keys=two"] {
        let r = get(path).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.headers["cache-status"].to_str().unwrap().contains("; hit"));
    }
    let last = call(Method::GET, &api("/healthz"), None, None, "").await.json()["seq"].as_u64().unwrap();
    relay.heal();
    let healed = std::time::Instant::now();
    eventually("the edge to apply both purges", || async {
        let n = call(Method::GET, &api("/v1/nodes"), Some(&admin), None, "").await.json();
        n[0]["acked_seq"].as_u64() == Some(last)
    })
    .await;
    let took = healed.elapsed();
    println!("applied both purges {took:?} after healing");
    // The reconnect waits up to its backoff (500 ms) first; the rest is
    // slack for a loaded machine.
    assert!(took < Duration::from_secs(4), "applied within 4 s of healing: {took:?}");
    for path in ["/a?cc=max-age%3D600&keys=one", "/b?cc=max-age%3D600&keys=two"] {
        assert!(!get(path).await.headers["cache-status"].to_str().unwrap().contains("; hit"), "{path} was purged");
    }
    stop.cancel();
}

#[tokio::test]
async fn the_api_and_event_stream_run_over_tls_and_nodes_verify_the_control_plane() {
    use outpost_proxy::tls::pki::{LocalCa, Request as CertRequest};
    let dir = outpost_testkit::tempdir();
    let d = dir.path();
    let stop = CancellationToken::new();
    let origin = test_origin(&stop).await;
    let ca = LocalCa::generate("control CA").unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    let year = Duration::from_secs(365 * 24 * 3600);
    ca.issue(&CertRequest::server(&["127.0.0.1"], year)).unwrap().write(d, "control").unwrap();
    let cfg = load(
        d,
        "control",
        "[node]\nname = \"control\"\nrole = \"control\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\n\
         [tls]\ncert = \"control.pem\"\nkey = \"control.key\"\n\
         [store]\npath = \"control.redb\"\n[auth]\nadmin_token_file = \"admin.token\"\nnode_token_file = \"node.token\"\n",
    );
    let node = outpost_control::node::ControlNode::bind(&cfg).await.unwrap();
    assert!(node.is_tls());
    let control = node.addr();
    tokio::spawn(node.run(stop.clone()));
    let admin = std::fs::read_to_string(d.join("admin.token")).unwrap();

    // One edge trusts the control plane's CA; the other knows only the
    // public roots and must not take anything from it.
    let edge = |i: usize, ca_line: &str| {
        load(
            d,
            &format!("edge-{i}"),
            &format!(
                "[node]\nname = \"edge-{i}\"\nrole = \"edge\"\npop = \"p\"\nlatitude = 0.0\nlongitude = 0.0\n\
                 access_log = \"off\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n[cache]\nmemory = \"16MiB\"\n\
                 [upstream]\nmode = \"origin\"\n[control]\nurl = \"https://{control}\"\ntoken_file = \"node.token\"\n{ca_line}"
            ),
        )
    };
    let mut addrs = Vec::new();
    for (i, line) in [(1, "ca = \"ca.pem\"\n"), (2, "")] {
        let node = outpost_edge::bind(&edge(i, line)).await.unwrap();
        addrs.push(node.http_addrs()[0]);
        tokio::spawn(node.run(stop.clone()));
    }

    // Cleartext to the TLS port gets nowhere; HTTPS with the CA works.
    let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(format!("http://{control}/v1/sites")).body(Full::new(Bytes::new())).unwrap();
    assert!(plain.request(req).await.is_err());
    let tls = outpost_proxy::tls::client_config(&[&d.join("ca.pem")], None).unwrap();
    let api = outpost_net::control::ControlClient::new(
        &[format!("https://{control}")],
        outpost_net::control::Token::Value(admin),
        tls,
    );
    assert_eq!(api.push_site(&site(origin)).await.unwrap().id, "shop");

    let get = |addr: SocketAddr| async move {
        call(Method::GET, &format!("http://{addr}/tls-pushed"), None, Some("shop.test"), "").await.status
    };
    eventually("the verifying edge to get the site over the TLS stream", || async {
        get(addrs[0]).await == StatusCode::OK
    })
    .await;
    assert_eq!(get(addrs[1]).await, StatusCode::MISDIRECTED_REQUEST, "an edge that cannot verify gets nothing");

    // The console over HTTPS: its session cookie is `Secure`.
    let (ca_file, token_file) = (d.join("ca.pem"), d.join("admin.token"));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-s", "-m", "10", "-o", "/dev/null", "-D", "-", "--cacert"])
            .arg(ca_file)
            .arg("--data-urlencode")
            .arg(format!("token@{}", token_file.display()))
            .arg(format!("https://{control}/console/login"))
            .output()
            .expect("curl runs (scripts/deps.sh installs it)")
    })
    .await
    .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let cookie = head.lines().find(|l| l.starts_with("set-cookie:")).unwrap_or_else(|| panic!("{head}"));
    assert!(
        cookie.contains("; secure") && cookie.contains("httponly") && cookie.contains("samesite=strict"),
        "{cookie}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_report_their_load_to_the_registry() {
    let cdn = cdn().await;
    let r = cdn.admin_call(Method::POST, "/v1/sites", &site(cdn.origin)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    eventually("the site to reach the edge", || async {
        cdn.via(0, "/load?cc=max-age%3D60").await.status == StatusCode::OK
    })
    .await;
    // Steady requests to edge-1 only, across at least two heartbeats, all
    // of one object (hits); a few to edge-3, each a new object (misses).
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    // Edge-3's misses come by the clock, so every report covers some
    // however slowly this loop runs.
    let mut last_miss = started;
    while started.elapsed() < Duration::from_millis(4500) {
        assert_eq!(cdn.via(0, "/load?cc=max-age%3D60").await.status, StatusCode::OK);
        sent += 1;
        if last_miss.elapsed() >= Duration::from_millis(100) {
            last_miss = std::time::Instant::now();
            assert_eq!(cdn.via(2, &format!("/load?cc=max-age%3D60&n={sent}")).await.status, StatusCode::OK);
        }
    }
    let r = cdn.admin_call(Method::GET, "/v1/nodes", "").await;
    let nodes = r.json();
    let load = |name: &str| nodes.as_array().unwrap().iter().find(|n| n["name"] == name).unwrap()["load_rps"].as_u64();
    let busy = load("edge-1").expect("edge-1 reported its load");
    let rate = sent as f64 / started.elapsed().as_secs_f64();
    assert!(busy as f64 > rate / 3.0 && (busy as f64) < rate * 3.0, "reported {busy} req/s, sent {rate:.0} req/s");
    assert!(load("edge-2").unwrap_or(0) < busy / 10, "an idle edge reports little: {nodes}");
    let hits =
        |name: &str| nodes.as_array().unwrap().iter().find(|n| n["name"] == name).unwrap()["hit_permille"].as_u64();
    assert!(hits("edge-1").is_some_and(|h| h >= 990), "one object asked again and again: {nodes}");
    assert_eq!(hits("edge-3"), Some(0), "a new object every time: {nodes}");
    assert_eq!(hits("edge-2"), None, "an edge that answered nothing has no ratio: {nodes}");
}

/// `outpost sites versions`, `diff` and `rollback`, through the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_diffs_and_rolls_back_site_versions() {
    let dir = outpost_testkit::tempdir();
    let stop = CancellationToken::new();
    let (control, _) = start_control(dir.path(), &stop).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let v1 = site("127.0.0.1:9".parse().unwrap());
    let v2 = v1.replace("[\"shop.test\"]", "[\"shop.test\", \"www.shop.test\"]");
    for text in [&v1, &v2] {
        let r = call(Method::POST, &format!("http://{control}/v1/sites"), Some(&admin), None, text).await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let cli = |args: &[&str]| {
        let (args, admin): (Vec<String>, String) = (args.iter().map(|a| a.to_string()).collect(), admin.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
                    .args(["sites"])
                    .args(&args)
                    .args(["--control", &format!("http://{control}")])
                    .env("OUTPOST_TOKEN", admin)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = cli(&["versions", "shop"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let versions: Vec<&str> = text.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(versions, ["2", "1"], "{text}");
    let out = cli(&["diff", "shop"]).await;
    let diff = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(diff.contains("--- shop v1") && diff.contains("+++ shop v2"), "{diff}");
    assert!(diff.contains("\n-hosts = [\"shop.test\"]\n+hosts = [\"shop.test\", \"www.shop.test\"]\n"), "{diff}");
    let out = cli(&["diff", "shop", "--from", "7"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("keeps versions 2, 1 only"));
    let out = cli(&["rollback", "shop", "1"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = call(Method::GET, &format!("http://{control}/v1/sites/shop"), Some(&admin), None, "").await;
    assert_eq!((r.json()["version"].as_u64(), r.json()["toml"].as_str()), (Some(3), Some(v1.as_str())));
    // A site file the control plane refuses: its problems at the lines of
    // the file pushed, under its own name.
    let bad = dir.path().join("shop-bad.toml");
    std::fs::write(&bad, "[site]\nid = \"shop\"\nhosts = 7\n").unwrap();
    let out = cli(&["push", bad.to_str().unwrap()]).await;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(said.contains(&format!("{}:3:", bad.display())), "{said}");
    assert!(!said.contains("site.toml"), "{said}");
    stop.cancel();
}
