//! Certificates by ACME against Pebble, Let's Encrypt's test CA, started
//! here (`scripts/deps.sh` installs it): a control plane orders for a site
//! with `[tls] acme = true`, Pebble validates HTTP-01 at whichever edge our
//! own DNS server sends it to, every edge serves HTTPS with the
//! certificate, a control-plane restart orders nothing new, and the
//! certificate is renewed when a third of its (shortened) lifetime is left.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use outpost_testkit::eventually;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::control::{load, test_origin};
use crate::topology::dns_query;

/// Lifetime of Pebble's certificates here: renewed 20 s after issue.
const VALIDITY_S: u64 = 30;
const HOST: &str = "shop.cdn.test";

/// Pebble on loopback, killed on drop.
struct Pebble {
    child: Child,
    directory: String,
    management: SocketAddr,
    /// The CA of Pebble's own HTTPS (not of what it issues).
    https_ca: PathBuf,
    log: PathBuf,
}

impl Pebble {
    fn start(dir: &Path, http_port: u16, dns: SocketAddr) -> Pebble {
        use outpost_proxy::tls::pki::{LocalCa, Request};
        let ca = LocalCa::generate("Pebble HTTPS test CA").unwrap();
        let https_ca = dir.join("pebble-ca.pem");
        std::fs::write(&https_ca, ca.cert_pem()).unwrap();
        let (listen, management, tls) =
            (outpost_testkit::free_addr(), outpost_testkit::free_addr(), outpost_testkit::free_addr());
        let ips = [listen.ip().to_string(), management.ip().to_string()];
        let names: Vec<&str> = ips.iter().map(String::as_str).collect();
        let (cert, key) =
            ca.issue(&Request::server(&names, Duration::from_secs(3600))).unwrap().write(dir, "pebble").unwrap();
        let config = serde_json::json!({ "pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": tls.port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
            "certificateValidityPeriod": VALIDITY_S,
        }});
        let file = dir.join("pebble.json");
        std::fs::write(&file, config.to_string()).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&file)
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("pebble.log")).unwrap())
            .spawn()
            .expect("pebble runs (scripts/deps.sh installs it)");
        Pebble { child, directory: format!("https://{listen}/dir"), management, https_ca, log: dir.join("pebble.log") }
    }

    /// The root Pebble issues under (made afresh at every start); asked
    /// until Pebble listens, for 10 s at most (it starts in the
    /// background).
    async fn root(&self) -> CertificateDer<'static> {
        let config = client_config(&[std::fs::read(&self.https_ca).unwrap()]);
        let host = self.management.ip().to_string();
        let started = std::time::Instant::now();
        let (_, status, body) = loop {
            match tls_get(self.management, &host, Arc::clone(&config), "/roots/0").await {
                Ok(got) => break got,
                Err(e) if started.elapsed() > Duration::from_secs(10) => panic!("Pebble never answered: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        assert_eq!(status, 200);
        CertificateDer::from_pem_slice(&body).unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("pebble's log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

fn client_config(roots_pem: &[Vec<u8>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in roots_pem {
        for c in CertificateDer::pem_slice_iter(pem) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    with_roots(roots)
}

fn trusting(root: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    with_roots(roots)
}

fn with_roots(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One HTTPS GET with `sni` as the name, verified against `config`'s
/// roots: the leaf certificate presented, the status and the body.
async fn tls_get(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> std::io::Result<(CertificateDer<'static>, u16, Vec<u8>)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.as_bytes().to_vec()).unwrap_or_default();
    Ok((leaf, status, body))
}

/// The certificate an edge presents for the site once it serves the
/// site's content over HTTPS with one that chains to `root` (and is not
/// `other`), within a minute.
async fn served_leaf(
    https: SocketAddr,
    root: &CertificateDer<'static>,
    other: Option<&CertificateDer<'static>>,
) -> CertificateDer<'static> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = tls_get(https, HOST, trusting(root), "/hello?cc=max-age%3D60").await;
        match got {
            Ok((leaf, 200, body)) if Some(&leaf) != other => {
                assert!(!body.is_empty(), "the origin's answer");
                return leaf;
            }
            _ if std::time::Instant::now() > deadline => {
                panic!("{https}: no such certificate within a minute: {got:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A plain-HTTP request to an edge for the site's host.
async fn plain(addr: SocketAddr, method: Method, path: &str) -> outpost_testkit::Reply {
    outpost_testkit::request(method, &format!("http://{addr}{path}"), &[("host", HOST)], b"").await.unwrap()
}

/// A control plane on `addr` (fixed, so edges find it again after a
/// restart), ordering from `pebble`.
async fn control(
    dir: &Path,
    addr: SocketAddr,
    pebble: &Pebble,
    stop: &CancellationToken,
) -> Arc<outpost_control::api::Control> {
    let cfg = load(
        dir,
        "control",
        &format!(
            "[node]\nname = \"control\"\nrole = \"control\"\n[listen]\nhttp = [\"{addr}\"]\n\
             [store]\npath = \"control.redb\"\n[auth]\nadmin_token_file = \"admin.token\"\n\
             node_token_file = \"node.token\"\n\
             [acme]\ndirectory = \"{}\"\ncontact = [\"mailto:ops@cdn.test\"]\nca = \"pebble-ca.pem\"\ncheck_every = \"1s\"\n",
            pebble.directory
        ),
    );
    // A control plane just stopped may still hold the store file and the
    // port until its tasks end (at most its shutdown grace).
    let started = std::time::Instant::now();
    let node = loop {
        match outpost_control::node::ControlNode::bind(&cfg).await {
            Ok(node) => break node,
            Err(e) if started.elapsed() < cfg.limits.shutdown_grace + Duration::from_secs(5) => {
                tracing::debug!(error = %e, "the control plane does not start yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the control plane does not start: {e}"),
        }
    };
    let control = Arc::clone(&node.control);
    tokio::spawn(node.run(stop.clone()));
    control
}

/// The certificates in the control plane's log, as a node reading its
/// event stream from the start sees them.
async fn logged_certificates(control: SocketAddr, node_token: &str) -> Vec<outpost_config::IssuedCertificate> {
    let tls = client_config(&[]);
    let client = outpost_net::control::ControlClient::new(
        &[format!("http://{control}")],
        outpost_net::control::Token::Value(node_token.to_string()),
        tls,
    );
    let query = outpost_config::api::StreamQuery {
        after: 0,
        node: "log-reader".into(),
        role: outpost_config::Role::Shield,
        pop: None,
        addrs: String::new(),
        certificates: false,
    };
    let mut stream = client.events(&query).await.unwrap();
    let mut out = Vec::new();
    while let Ok(Some(Ok(line))) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
        match line {
            outpost_config::StreamLine::Event { record } => {
                if let outpost_config::Event::Certificate { certificate, .. } = record.event {
                    out.push(certificate);
                }
            }
            _ => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_gets_its_certificate_by_acme_on_every_edge_and_renews_it() {
    let _ = tracing_subscriber::fmt().with_env_filter("outpost_control::acme=debug").with_test_writer().try_init();
    let dir = outpost_testkit::tempdir();
    let d = dir.path();
    let stop = CancellationToken::new();
    let origin = test_origin(&stop).await;

    // Every edge listens for plain HTTP on the same port (the one Pebble
    // validates on) at an address of its own.
    let http_port = outpost_testkit::free_addr().port();
    let control_addr = outpost_testkit::free_addr();

    // Our DNS server answers for shop.cdn.test with the edges.
    let mut dns_text = format!(
        "[node]\nname = \"dns\"\nrole = \"dns\"\n[listen]\ndns = \"127.0.0.1:0\"\n\
         [dns]\nzone = \"cdn.test.\"\nttl = \"5s\"\ngeoip = \"{}\"\ndefault_pop = \"fra\"\nsites = [\"shop\"]\n\
         [control]\nurl = \"http://{control_addr}\"\ntoken_file = \"node.token\"\n",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/geoip/sample.mmdb").display()
    );
    for pop in ["fra", "iad"] {
        dns_text.push_str(&format!(
            "[[dns.pop]]\nname = \"{pop}\"\nlatitude = 0.0\nlongitude = 0.0\nnetworks = [\"127.0.0.0/8\"]\n"
        ));
    }
    let dns_node = outpost_control::dns::DnsNode::bind(&load(d, "dns", &dns_text)).await.unwrap();
    let dns = dns_node.addr();
    tokio::spawn(dns_node.run(stop.clone()));

    let pebble = Pebble::start(d, http_port, dns);
    let control_stop = CancellationToken::new();
    let running = control(d, control_addr, &pebble, &control_stop).await;
    let admin = std::fs::read_to_string(d.join("admin.token")).unwrap();

    // Edge 2 holds its own credential, printed by the CLI: the keys it is
    // sent are sealed under that, not under the node token it lacks.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["node-token", "--config"])
        .arg(d.join("control.toml"))
        .arg("edge-2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(d.join("edge-2.token"), &out.stdout).unwrap();
    let edge_file = |i: usize, pop: &str, token: &str| {
        let ip = format!("127.0.0.{}", 40 + i);
        load(
            d,
            &format!("edge-{i}"),
            &format!(
                "[node]\nname = \"edge-{i}\"\nrole = \"edge\"\npop = \"{pop}\"\nlatitude = 0.0\nlongitude = 0.0\naccess_log = \"off\"\n\
                 [listen]\nhttp = [\"{ip}:{http_port}\"]\nhttps = [\"{ip}:0\"]\n[cache]\nmemory = \"16MiB\"\ndisk = \"32MiB\"\npath = \"cache-{i}\"\n\
                 [upstream]\nmode = \"origin\"\n[control]\nurl = \"http://{control_addr}\"\ntoken_file = \"{token}\"\n"
            ),
        )
    };
    let mut edges = Vec::new();
    for (i, pop, token) in [(1, "fra", "node.token"), (2, "iad", "edge-2.token")] {
        let cfg = edge_file(i, pop, token);
        let node = outpost_edge::bind(&cfg).await.unwrap();
        let edge_stop = stop.child_token();
        edges.push((node.http_addrs()[0], node.https_addrs()[0], edge_stop.clone(), cfg));
        tokio::spawn(node.run(edge_stop));
    }
    eventually("DNS to answer with an edge", || async { !dns_query(dns, "shop.cdn.test.", None).await.is_empty() })
        .await;

    let site = format!(
        "[site]\nid = \"shop\"\nhosts = [\"{HOST}\"]\nhttps_only = true\n[[origin]]\nurl = \"http://{origin}\"\n[tls]\nacme = true\n"
    );
    // Pebble answers before the first order (one that failed would wait
    // out its backoff).
    let root = pebble.root().await;
    let r =
        crate::control::call(Method::POST, &format!("http://{control_addr}/v1/sites"), Some(&admin), None, &site).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));

    // Issued, validated at an edge, and served by every edge.
    let mut first = Vec::new();
    for (_, https, ..) in &edges {
        first.push(served_leaf(*https, &root, None).await);
    }
    assert_eq!(first[0], first[1], "one certificate for the fleet");

    // A challenge path no order gave is 404 from the edge, over plain
    // HTTP too (never redirected), and never reaches the origin; a POST
    // there is refused.
    let before = crate::topology::origin_fetches(origin, "/.well-known").await;
    let http = edges[0].0;
    let r = plain(http, Method::GET, "/.well-known/acme-challenge/not-a-token").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = plain(http, Method::POST, "/.well-known/acme-challenge/not-a-token").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(crate::topology::origin_fetches(origin, "/.well-known").await, before);
    assert_eq!(
        plain(http, Method::GET, "/hello").await.status,
        StatusCode::PERMANENT_REDIRECT,
        "https_only holds elsewhere"
    );

    // The key never travels or rests in clear: not in the log, not in an
    // edge's state file.
    let node_token = std::fs::read_to_string(d.join("node.token")).unwrap();
    let logged = logged_certificates(control_addr, &node_token).await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].names, [HOST]);
    let raw = serde_json::to_string(&logged[0]).unwrap();
    assert!(!raw.contains("PRIVATE KEY") && logged[0].sealed_key.len() > 200, "{raw}");
    let state = std::fs::read_to_string(d.join("cache-1/control-state.json")).unwrap();
    assert!(state.contains(&logged[0].sealed_key) && !state.contains("PRIVATE KEY"));

    // A restarted control plane (same store, same account) orders nothing
    // while the certificate has more than a third of its life left.
    control_stop.cancel();
    // Its tasks end and release the store file.
    eventually("the control plane to stop", || async { Arc::strong_count(&running) == 1 }).await;
    drop(running);
    let control_stop = CancellationToken::new();
    control(d, control_addr, &pebble, &control_stop).await;
    let issued = &logged[0];
    let quiet_until = issued.renew_at_ms().saturating_sub(2_000);
    tokio::time::sleep(Duration::from_millis(quiet_until.saturating_sub(now_ms()).min(5_000))).await;
    assert!(now_ms() < issued.renew_at_ms(), "the check ran inside the certificate's first two thirds");
    assert_eq!(logged_certificates(control_addr, &node_token).await.len(), 1, "no new order after the restart");

    // Renewed once a third of its lifetime is left, and every edge moves to
    // the new certificate.
    let mut renewed = Vec::new();
    for (_, https, ..) in &edges {
        renewed.push(served_leaf(*https, &root, Some(&first[0])).await);
    }
    assert_eq!(renewed[0], renewed[1]);
    let logged = logged_certificates(control_addr, &node_token).await;
    assert_eq!(logged.len(), 2, "one renewal: {logged:?}");
    assert!(logged[1].not_after_ms > issued.not_after_ms);
    assert!(now_ms() >= issued.renew_at_ms(), "not renewed early");

    // An edge restarted while the control plane is down serves the
    // certificate it had, from its state file.
    control_stop.cancel();
    let (_, _, edge_stop, cfg) = edges.swap_remove(0);
    edge_stop.cancel();
    let node = loop {
        match outpost_edge::bind(&cfg).await {
            Ok(node) => break node,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let https = node.https_addrs()[0];
    let edge_stop = stop.child_token();
    tokio::spawn(node.run(edge_stop.clone()));
    let (leaf, status, _) = tls_get(https, HOST, trusting(&root), "/hello?cc=max-age%3D60").await.unwrap();
    assert_eq!((leaf, status), (renewed[0].clone(), 200));

    // Given its own credential, edge 1 cannot open the key it holds,
    // sealed under the node token: it asks for the certificates again and
    // serves the one it had, sealed for it now.
    edge_stop.cancel();
    let control_stop = CancellationToken::new();
    control(d, control_addr, &pebble, &control_stop).await;
    let own = outpost_control::credential::node_credential(node_token.trim(), "edge-1");
    std::fs::write(d.join("edge-1.token"), &own).unwrap();
    let cfg = edge_file(1, "fra", "edge-1.token");
    let node = loop {
        match outpost_edge::bind(&cfg).await {
            Ok(node) => break node,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let https = node.https_addrs()[0];
    tokio::spawn(node.run(stop.clone()));
    eventually("edge 1 to serve the certificate under its own credential", || async {
        tls_get(https, HOST, trusting(&root), "/hello?cc=max-age%3D60").await.is_ok_and(|(leaf, ..)| leaf == renewed[0])
    })
    .await;
    let sealed: Vec<_> = logged.iter().map(|c| c.sealed_key.as_str()).collect();
    let state = std::fs::read_to_string(d.join("cache-1/control-state.json")).unwrap();
    assert!(!sealed.iter().any(|k| state.contains(k)), "resealed for the node, not the node token's seal");
    assert!(state.contains("\"sealed_key\""), "the state keeps the certificate: {state}");
    stop.cancel();
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}
