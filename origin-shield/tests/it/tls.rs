//! TLS between tiers: edge → shield with mutual TLS, shield → an HTTPS test
//! origin whose certificate comes from a private CA.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use outpost_load::OriginServer;
use outpost_proxy::tls::files::{load_certs, load_key};
use outpost_proxy::tls::pki::{LocalCa, Request as CertRequest};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::shield::established_to;
use crate::topology::{Running, node_file, via};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Presents one certificate and remembers the names clients asked for.
#[derive(Debug)]
struct RecordingResolver {
    key: Arc<CertifiedKey>,
    asked: Mutex<Vec<Option<String>>>,
}

impl ResolvesServerCert for RecordingResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.asked.lock().unwrap().push(hello.server_name().map(str::to_string));
        Some(Arc::clone(&self.key))
    }
}

/// The test origin over HTTPS with a certificate for `localhost`, speaking
/// HTTP/1.1 only.
async fn tls_origin(ca: &LocalCa, dir: &Path) -> (u16, Arc<RecordingResolver>, tokio_util::sync::DropGuard) {
    tls_origin_speaking(ca, dir, &[b"http/1.1"]).await
}

/// The same, offering these protocols in its TLS handshake (ALPN).
async fn tls_origin_speaking(
    ca: &LocalCa,
    dir: &Path,
    alpn: &[&[u8]],
) -> (u16, Arc<RecordingResolver>, tokio_util::sync::DropGuard) {
    let (cert, key) = ca.issue(&CertRequest::server(&["localhost"], YEAR)).unwrap().write(dir, "origin").unwrap();
    let signer = rustls::crypto::ring::sign::any_supported_type(&load_key(&key).unwrap()).unwrap();
    let resolver = Arc::new(RecordingResolver {
        key: Arc::new(CertifiedKey::new(load_certs(&cert).unwrap(), signer)),
        asked: Mutex::new(Vec::new()),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let server = OriginServer::bind(&["127.0.0.1:0".parse().unwrap()], None).await.unwrap().with_tls(Arc::new(config));
    let port = server.local_addrs()[0].port();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    (port, resolver, stop.drop_guard())
}

async fn start(node: outpost_proxy::node::Node) -> (Running, Vec<std::net::SocketAddr>) {
    let https = node.https_addrs();
    let running = Running::spawn(node);
    (running, https)
}

#[tokio::test]
async fn tiers_talk_tls_with_client_certificates_and_a_private_origin_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = LocalCa::generate("tier CA").unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    ca.issue(&CertRequest::server(&["127.0.0.1"], YEAR)).unwrap().write(d, "shield").unwrap();
    let client = CertRequest { client: true, ..CertRequest::server(&["edge-1"], YEAR) };
    ca.issue(&client).unwrap().write(d, "edge-client").unwrap();
    // Signed by another CA: the shield must refuse it.
    let stranger = LocalCa::generate("other CA").unwrap();
    stranger.issue(&client).unwrap().write(d, "stranger").unwrap();

    let (origin_port, seen, _origin) = tls_origin(&ca, d).await;
    // The shield reaches the origin by name, trusting the site's CA file.
    std::fs::write(
        d.join("site.toml"),
        format!(
            "[site]\nid = \"s\"\nhosts = [\"s.test\"]\nallow_direct = false\n\
             [[origin]]\nurl = \"https://localhost:{origin_port}\"\nca = \"ca.pem\"\nresponse_timeout = \"5s\"\n\
             [cache]\ndefault_ttl = \"60s\"\n"
        ),
    )
    .unwrap();
    let shield_cfg = node_file(
        d,
        "shield-tls",
        "[node]\nname = \"shield-tls\"\nrole = \"shield\"\nsites = [\"site.toml\"]\naccess_log = \"off\"\n\
         [listen]\nhttps = [\"127.0.0.1:0\"]\n\
         [tls]\ncert = \"shield.pem\"\nkey = \"shield.key\"\nunknown_sni = \"default\"\nclient_ca = \"ca.pem\"\n\
         [cache]\nmemory = \"16MiB\"\n",
    );
    let (shield_node, _pool) = outpost_shield::bind(&shield_cfg).await.unwrap();
    let (shield, shield_https) = start(shield_node).await;

    let edge_file = |name: &str, identity: &str| {
        format!(
            "[node]\nname = \"{name}\"\nrole = \"edge\"\npop = \"p\"\nlatitude = 0.0\nlongitude = 0.0\n\
             sites = [\"site.toml\"]\naccess_log = \"off\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
             [tls]\nupstream_ca = \"ca.pem\"\n{identity}\n[cache]\nmemory = \"16MiB\"\n\
             [upstream]\nshields = [\"https://{}\"]\nprobe_interval = \"100ms\"\n",
            shield_https[0]
        )
    };
    let good = node_file(
        d,
        "edge-1",
        &edge_file("edge-1", "upstream_cert = \"edge-client.pem\"\nupstream_key = \"edge-client.key\""),
    );
    let (edge, _) = start(outpost_edge::bind(&good).await.unwrap()).await;

    // Client → edge (http) → shield (https, mutual TLS) → origin (https).
    let r = via(edge.addr, "/t/a?size=300").await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body.len(), 300);
    assert!(r.cache_status().starts_with("shield-tls; fwd=uri-miss"), "{}", r.cache_status());
    let again = via(edge.addr, "/t/a?size=300").await;
    assert!(again.cache_status().contains("edge-1; hit"), "{}", again.cache_status());
    // The shield asked for the origin by the URL's name, and verified it.
    assert!(seen.asked.lock().unwrap().iter().any(|n| n.as_deref() == Some("localhost")));

    // Edges without a client certificate, or with one from another CA, are
    // refused by the shield during the handshake.
    for (name, identity) in
        [("edge-2", ""), ("edge-3", "upstream_cert = \"stranger.pem\"\nupstream_key = \"stranger.key\"")]
    {
        let cfg = node_file(d, name, &edge_file(name, identity));
        let (edge, _) = start(outpost_edge::bind(&cfg).await.unwrap()).await;
        let r = via(edge.addr, "/t/a?size=300").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{name}: {}", r.cache_status());
        edge.stop().await;
    }
    shield.stop().await;
    edge.stop().await;
}

/// Over TLS, tiers speak HTTP/2 when the handshake says both do: 200
/// misses at once from an edge to a shield over HTTPS, and from the shield
/// to an HTTPS origin that offers h2, each go over a connection or two; an
/// origin that offers only HTTP/1.1 is asked in HTTP/1.1, a connection per
/// request in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_speak_http2_over_tls_where_the_handshake_offers_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = LocalCa::generate("tier CA").unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    ca.issue(&CertRequest::server(&["127.0.0.1"], YEAR)).unwrap().write(d, "shield").unwrap();
    let (h2_port, _, _h2_origin) = tls_origin_speaking(&ca, d, &[b"h2", b"http/1.1"]).await;
    let (h1_port, _, _h1_origin) = tls_origin(&ca, d).await;
    for (id, port, extra) in [("h2", h2_port, ""), ("h1", h1_port, ""), ("off", h2_port, "http2 = false\n")] {
        std::fs::write(
            d.join(format!("{id}.toml")),
            format!(
                "[site]\nid = \"{id}\"\nhosts = [\"{id}.test\"]\nallow_direct = false\n\
                 [[origin]]\nurl = \"https://localhost:{port}\"\nca = \"ca.pem\"\nresponse_timeout = \"5s\"\n{extra}"
            ),
        )
        .unwrap();
    }
    let shield_cfg = node_file(
        d,
        "shield-h2",
        "[node]\nname = \"shield-h2\"\nrole = \"shield\"\nsites = [\"h2.toml\", \"h1.toml\", \"off.toml\"]\naccess_log = \"off\"\n\
         [listen]\nhttps = [\"127.0.0.1:0\"]\n[tls]\ncert = \"shield.pem\"\nkey = \"shield.key\"\nunknown_sni = \"default\"\n\
         [cache]\nmemory = \"64MiB\"\n",
    );
    let (shield_node, _pool) = outpost_shield::bind(&shield_cfg).await.unwrap();
    let (shield, shield_https) = start(shield_node).await;
    let edge_file = |name: &str, http2: bool| {
        node_file(
            d,
            name,
            &format!(
                "[node]\nname = \"{name}\"\nrole = \"edge\"\npop = \"p\"\nlatitude = 0.0\nlongitude = 0.0\n\
                 sites = [\"h2.toml\", \"h1.toml\", \"off.toml\"]\naccess_log = \"off\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
                 [tls]\nupstream_ca = \"ca.pem\"\n[cache]\nmemory = \"64MiB\"\n\
                 [upstream]\nshields = [\"https://{}\"]\nhttp2 = {http2}\n",
                shield_https[0]
            ),
        )
    };
    let (edge, _) = start(outpost_edge::bind(&edge_file("edge-1", true)).await.unwrap()).await;
    // `n` misses at once through `edge` (objects under `prefix`); the time
    // to the last answer.
    let burst = |edge: std::net::SocketAddr, site: &'static str, prefix: &'static str, n: usize| async move {
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                tokio::spawn(async move {
                    crate::topology::get(&format!("http://{edge}/{prefix}/{i}?delay=200ms&cc=max-age%3D600"), site)
                        .await
                })
            })
            .collect();
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{site}: {}", r.cache_status());
            assert_eq!(r.body.len(), 1024);
        }
        started.elapsed()
    };
    let took_h2 = burst(edge.addr, "h2.test", "burst", 200).await;
    let (to_shield, to_origin) = (established_to(shield_https[0].port()), established_to(h2_port));
    assert!(to_shield <= 2, "edge → shield over HTTPS: {to_shield} connections");
    assert!(to_origin <= 2, "shield → origin over HTTPS with h2: {to_origin} connections");
    // The same through an edge that speaks HTTP/1.1 to the shield.
    let (edge_h1, _) = start(outpost_edge::bind(&edge_file("edge-h1", false)).await.unwrap()).await;
    let took_h1 = burst(edge_h1.addr, "h2.test", "by-h1", 200).await;
    let h1_links = established_to(shield_https[0].port()) - to_shield;
    println!(
        "200 concurrent misses over HTTPS (origin answers after 200 ms), edge → shield connections and time to the \
         last answer: HTTP/2 {to_shield} in {took_h2:?}, HTTP/1.1 {h1_links} in {took_h1:?}"
    );
    assert!(h1_links >= 10 * to_shield.max(1), "HTTP/1.1 over TLS: {h1_links} connections");
    edge_h1.stop().await;
    burst(edge.addr, "h1.test", "burst", 50).await;
    let to_h1 = established_to(h1_port);
    assert!(to_h1 >= 10, "an origin that speaks only HTTP/1.1 gets a connection per request in flight: {to_h1}");
    outpost_testkit::eventually("the HTTP/1.1 edge's connections to close", || async {
        established_to(shield_https[0].port()) <= 2
    })
    .await;
    // A site that turns HTTP/2 off for the same origin: HTTP/1.1 to it.
    burst(edge.addr, "off.test", "burst", 50).await;
    let to_origin = established_to(h2_port);
    assert!(to_origin >= 10, "`http2 = false`: a connection per request in flight: {to_origin}");
    shield.stop().await;
    edge.stop().await;
}

/// Two sites with the same HTTPS origin, one trusting a CA of its own for
/// it, the other only the node's roots: the HTTP/2 connection that site's
/// CA vouched for never carries the other site's requests. (Shared, a
/// certificate one tenant's CA signed would answer for another tenant who
/// never trusted it.) A cleartext connection is never shared with `https`
/// either: the key is the scheme, the authority and the CA.
#[tokio::test]
async fn an_upstream_connection_one_sites_ca_vouched_for_is_not_used_for_another_site() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = LocalCa::generate("a tenant's CA").unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    let (port, _, _origin) = tls_origin_speaking(&ca, d, &[b"h2", b"http/1.1"]).await;
    for (id, extra) in [("own", "ca = \"ca.pem\"\n"), ("roots", "")] {
        std::fs::write(
            d.join(format!("{id}.toml")),
            format!(
                "[site]\nid = \"{id}\"\nhosts = [\"{id}.test\"]\nallow_direct = false\n\
                 [[origin]]\nurl = \"https://localhost:{port}\"\nresponse_timeout = \"5s\"\n{extra}"
            ),
        )
        .unwrap();
    }
    let shield_cfg = node_file(
        d,
        "shield-keys",
        "[node]\nname = \"shield-keys\"\nrole = \"shield\"\nsites = [\"own.toml\", \"roots.toml\"]\n\
         access_log = \"off\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n[cache]\nmemory = \"16MiB\"\n",
    );
    let (shield_node, _pool) = outpost_shield::bind(&shield_cfg).await.unwrap();
    let (shield, _) = start(shield_node).await;
    let addr = shield.addr;
    let get = |site: &'static str, path: &'static str| async move {
        crate::topology::get(&format!("http://{addr}{path}?cc=max-age%3D600"), site).await
    };
    let r = get("own.test", "/a").await;
    assert_eq!(r.status, StatusCode::OK, "the site trusting the CA: {}", String::from_utf8_lossy(&r.body));
    assert_eq!(established_to(port), 1, "one HTTP/2 connection to the origin");
    let r = get("roots.test", "/b").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "the site that does not trust the CA reached the origin");
    let r = get("own.test", "/c").await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    shield.stop().await;
}

/// A site's extra CA file, replaced, is what new connections to its origin
/// trust, over HTTP/1.1 as over HTTP/2 and for health checks: one that
/// arrives after the site is used, and one that withdraws the CA.
#[tokio::test]
async fn an_origin_ca_file_replaced_is_trusted_anew_over_http1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = LocalCa::generate("the origin's CA").unwrap();
    let other = LocalCa::generate("another CA").unwrap();
    let (port, _, _origin) = tls_origin(&ca, d).await;
    // Swapped in whole (a new file renamed over the old), as operators and
    // configuration tools replace files.
    let put_ca = |which: &LocalCa| {
        std::fs::write(d.join("ca.new"), which.cert_pem()).unwrap();
        std::fs::rename(d.join("ca.new"), d.join("ca.pem")).unwrap();
    };
    put_ca(&other);
    std::fs::write(
        d.join("site.toml"),
        format!(
            "[site]\nid = \"s\"\nhosts = [\"s.test\"]\nallow_direct = false\n\
             [[origin]]\nurl = \"https://localhost:{port}\"\nca = \"ca.pem\"\nresponse_timeout = \"5s\"\nhttp2 = false\n"
        ),
    )
    .unwrap();
    let shield_cfg = node_file(
        d,
        "shield-ca",
        "[node]\nname = \"shield-ca\"\nrole = \"shield\"\nsites = [\"site.toml\"]\n\
         access_log = \"off\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n[cache]\nmemory = \"16MiB\"\n",
    );
    let (shield_node, _pool) = outpost_shield::bind(&shield_cfg).await.unwrap();
    let (shield, _) = start(shield_node).await;
    let addr = shield.addr;
    let get = |path: &'static str| async move {
        crate::topology::get(&format!("http://{addr}{path}?cc=max-age%3D600"), "s.test").await
    };
    assert_eq!(get("/a").await.status, StatusCode::BAD_GATEWAY, "trusting another CA");
    // The file is looked at once a second at most: each try a path of its
    // own, since an answer that was let through is kept.
    let tries = std::sync::atomic::AtomicUsize::new(0);
    let status = |prefix: &'static str| {
        let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move { crate::topology::get(&format!("http://{addr}/{prefix}{n}?cc=max-age%3D600"), "s.test").await.status }
    };
    put_ca(&ca);
    let within = Duration::from_secs(3);
    outpost_testkit::eventually_within("the CA put in place to be trusted", within, || async {
        status("b").await == StatusCode::OK
    })
    .await;
    put_ca(&other);
    outpost_testkit::eventually_within("the CA withdrawn to be distrusted, kept connections too", within, || async {
        status("c").await == StatusCode::BAD_GATEWAY
    })
    .await;
    assert_eq!(status("d").await, StatusCode::BAD_GATEWAY, "and for good");
    shield.stop().await;
}
