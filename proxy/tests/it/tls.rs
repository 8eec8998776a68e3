//! TLS termination at an edge: certificates from a private CA made with
//! rcgen, a rustls client over loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use outpost_config::NodeConfig;
use outpost_proxy::node::Node;
use outpost_proxy::tls::TlsFileError;
use outpost_proxy::tls::files::{load_certs, load_pair};
use outpost_proxy::tls::pki::{Issued, LocalCa, Request as CertRequest};
use outpost_proxy::upstream::OriginRoute;
use outpost_proxy::{Engine, Tier};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::harness::{DEFAULT_RULES, Origin, send};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

struct TlsEdge {
    http: SocketAddr,
    https: SocketAddr,
    engine: Arc<Engine>,
    _stop: tokio_util::sync::DropGuard,
}

/// An edge with one https and one http listener, serving `sites` (file
/// names in `dir`), with `tls` as its node `[tls]` section.
async fn tls_edge(dir: &Path, sites: &[&str], tls: &str) -> TlsEdge {
    let list: Vec<String> = sites.iter().map(|s| format!("\"{s}\"")).collect();
    let node = format!(
        "[node]\nname = \"edge-tls\"\nrole = \"edge\"\npop = \"tst\"\nlatitude = 0.0\nlongitude = 0.0\n\
         sites = [{}]\naccess_log = \"off\"\n\n[listen]\nhttp = [\"127.0.0.1:0\"]\nhttps = [\"127.0.0.1:0\"]\n\n\
         {tls}\n[cache]\nmemory = \"16MiB\"\n\n[upstream]\nmode = \"origin\"\n",
        list.join(", ")
    );
    let file = dir.join("edge.toml");
    std::fs::write(&file, node).unwrap();
    let cfg = NodeConfig::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let bound = Node::bind(&cfg, Tier::Edge, Arc::new(OriginRoute)).await.unwrap();
    let (http, https) = (bound.http_addrs()[0], bound.https_addrs()[0]);
    let engine = Arc::clone(bound.engine());
    let stop = CancellationToken::new();
    tokio::spawn(bound.run(stop.clone()));
    TlsEdge { http, https, engine, _stop: stop.drop_guard() }
}

/// Writes a site file `<id>.toml` for `hosts` in front of `origin`, with a
/// `[tls]` section naming `<id>.pem` and `<id>.key` when `tls`.
pub(crate) fn write_site(dir: &Path, id: &str, hosts: &[&str], origin: SocketAddr, extra: &str) {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    let text = format!(
        "[site]\nid = \"{id}\"\nhosts = [{}]\n{extra}\n[[origin]]\nurl = \"http://{origin}\"\n\n\
         [tls]\ncert = \"{id}.pem\"\nkey = \"{id}.key\"\n\n{DEFAULT_RULES}",
        hosts.join(", ")
    );
    std::fs::write(dir.join(format!("{id}.toml")), text).unwrap();
}

pub(crate) fn issue(ca: &LocalCa, dir: &Path, stem: &str, names: &[&str]) -> Issued {
    let issued = ca.issue(&CertRequest::server(names, YEAR)).unwrap();
    issued.write(dir, stem).unwrap();
    issued
}

pub(crate) fn ca_file(ca: &LocalCa, dir: &Path) -> PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, ca.cert_pem()).unwrap();
    path
}

/// A client trusting `ca` only, offering `alpn`.
fn client(ca: &Path, alpn: &[&[u8]], versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let roots = outpost_proxy::tls::files::load_roots(ca).unwrap();
    let mut c = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

pub(crate) fn h2_h1(ca: &Path) -> Arc<ClientConfig> {
    client(ca, &[b"h2", b"http/1.1"], &[&rustls::version::TLS13, &rustls::version::TLS12])
}

pub(crate) async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

pub(crate) fn leaf(issued: &Issued) -> CertificateDer<'static> {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = issued.write(dir.path(), "x").unwrap();
    load_certs(&cert).unwrap().remove(0)
}

/// A request over an established TLS connection, by the protocol ALPN chose.
pub(crate) struct Conn {
    h2: Option<hyper::client::conn::http2::SendRequest<Empty<Bytes>>>,
    h1: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
}

impl Conn {
    pub(crate) async fn open(stream: TlsStream<TcpStream>) -> Conn {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            Conn { h2: Some(send), h1: None }
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Conn { h2: None, h1: Some(send) }
        }
    }

    pub(crate) async fn get(&mut self, host: &str, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
        let resp = if let Some(h2) = &mut self.h2 {
            let uri = format!("https://{host}{path}");
            h2.send_request(Request::get(uri).body(Empty::new()).unwrap()).await.unwrap()
        } else {
            let h1 = self.h1.as_mut().unwrap();
            h1.ready().await.unwrap();
            h1.send_request(Request::get(path).header("host", host).body(Empty::new()).unwrap()).await.unwrap()
        };
        let (parts, body) = resp.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
    }
}

/// One site `a` for `a.test` (with `site_extra` in its `[site]`) on an edge
/// whose node file adds `node_extra`, both certificates from a new CA.
struct OneSite {
    origin: Origin,
    dir: tempfile::TempDir,
    ca_pem: PathBuf,
    edge: TlsEdge,
}

async fn one_site(site_extra: &str, node_extra: &str) -> OneSite {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::generate("test CA").unwrap();
    let ca_pem = ca_file(&ca, dir.path());
    issue(&ca, dir.path(), "a", &["a.test"]);
    write_site(dir.path(), "a", &["a.test"], origin.addr, site_extra);
    let edge = tls_edge(dir.path(), &["a.toml"], node_extra).await;
    OneSite { origin, dir, ca_pem, edge }
}

fn cache_status(h: &http::HeaderMap) -> String {
    h.get("cache-status").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn each_name_gets_its_sites_certificate_with_h2_tls12_and_resumption() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::generate("test CA").unwrap();
    let ca_pem = ca_file(&ca, dir.path());
    let a = issue(&ca, dir.path(), "a", &["a.test"]);
    let b = issue(&ca, dir.path(), "b", &["*.b.test"]);
    write_site(dir.path(), "a", &["a.test"], origin.addr, "");
    write_site(dir.path(), "b", &["*.b.test"], origin.addr, "");
    let edge = tls_edge(dir.path(), &["a.toml", "b.toml"], "").await;
    let config = h2_h1(&ca_pem);

    // The exact name and a name under the wildcard each get their own site's
    // certificate, verified against the CA; ALPN picks h2.
    let sa = connect(edge.https, "a.test", Arc::clone(&config)).await.unwrap();
    assert_eq!(presented(&sa), leaf(&a));
    assert_eq!(sa.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(sa.get_ref().1.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    let sb = connect(edge.https, "img.b.test", Arc::clone(&config)).await.unwrap();
    assert_eq!(presented(&sb), leaf(&b));

    // Cache hits over TLS, on one h2 connection.
    let mut conn = Conn::open(sa).await;
    let (s1, h1, body1) = conn.get("a.test", "/tls/obj?size=2000").await;
    let (s2, h2, body2) = conn.get("a.test", "/tls/obj?size=2000").await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert!(cache_status(&h1).contains("fwd=uri-miss"), "{}", cache_status(&h1));
    assert!(cache_status(&h2).contains("; hit"), "{}", cache_status(&h2));
    assert_eq!(body1, body2);
    assert_eq!(body1.len(), 2000);
    assert_eq!(origin.count("/tls/obj").await, 1);
    // The origin hears that the client came over HTTPS.
    let seen = send(Method::GET, &format!("http://{}/__origin/request?path=/tls/obj", origin.addr), &[]).await;
    let seen: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https", "{seen}");

    // HTTP/1.1 when the client offers only that; TLS 1.2 when it is all the
    // client speaks.
    let old = client(&ca_pem, &[b"http/1.1"], &[&rustls::version::TLS12]);
    let s = connect(edge.https, "a.test", Arc::clone(&old)).await.unwrap();
    assert_eq!(s.get_ref().1.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, headers, _) = Conn::open(s).await.get("a.test", "/tls/obj?size=2000").await;
    assert_eq!(status, StatusCode::OK);
    assert!(cache_status(&headers).contains("; hit"));

    // A second connection from the same client resumes its session, with
    // TLS 1.3 tickets and with TLS 1.2.
    for config in [&config, &old] {
        let first = connect(edge.https, "a.test", Arc::clone(config)).await.unwrap();
        // A TLS 1.3 ticket arrives after the handshake: read until it has.
        let mut conn = Conn::open(first).await;
        conn.get("a.test", "/tls/obj?size=2000").await;
        let again = connect(edge.https, "a.test", Arc::clone(config)).await.unwrap();
        assert_eq!(again.get_ref().1.handshake_kind(), Some(HandshakeKind::Resumed));
    }
}

#[tokio::test]
async fn unknown_names_are_refused_or_get_the_default_certificate() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::generate("test CA").unwrap();
    let ca_pem = ca_file(&ca, dir.path());
    issue(&ca, dir.path(), "a", &["a.test"]);
    let fallback = issue(&ca, dir.path(), "node", &["edge.cdn.test", "127.0.0.1"]);
    write_site(dir.path(), "a", &["a.test"], origin.addr, "");
    let config = h2_h1(&ca_pem);

    let strict = tls_edge(dir.path(), &["a.toml"], "").await;
    let e = connect(strict.https, "other.test", Arc::clone(&config)).await.unwrap_err();
    assert!(e.to_string().contains("alert"), "a clean handshake failure: {e}");
    // No SNI at all (a client connecting by address) is an unknown name too.
    let e = connect(strict.https, "127.0.0.1", Arc::clone(&config)).await.unwrap_err();
    assert!(e.to_string().contains("alert"), "{e}");
    // The listener keeps serving known names after refusing.
    assert!(connect(strict.https, "a.test", Arc::clone(&config)).await.is_ok());

    let lenient = tls_edge(
        dir.path(),
        &["a.toml"],
        "[tls]\nunknown_sni = \"default\"\ncert = \"node.pem\"\nkey = \"node.key\"\n",
    )
    .await;
    let s = connect(lenient.https, "127.0.0.1", Arc::clone(&config)).await.unwrap();
    assert_eq!(presented(&s), leaf(&fallback));
    // An unknown host over TLS still gets no site: 421, as in cleartext.
    let (status, _, _) = Conn::open(s).await.get("other.test", "/x").await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test]
async fn replaced_certificates_and_changed_sites_reach_new_connections_only() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::generate("test CA").unwrap();
    let ca_pem = ca_file(&ca, dir.path());
    let old = issue(&ca, dir.path(), "a", &["a.test"]);
    write_site(dir.path(), "a", &["a.test"], origin.addr, "");
    let edge = tls_edge(dir.path(), &["a.toml"], "").await;
    let config = h2_h1(&ca_pem);

    let before = connect(edge.https, "a.test", Arc::clone(&config)).await.unwrap();
    assert_eq!(presented(&before), leaf(&old));
    let mut kept = Conn::open(before).await;
    assert_eq!(kept.get("a.test", "/r").await.0, StatusCode::OK);

    // The files are replaced in place; the node is not told.
    let new = issue(&ca, dir.path(), "a", &["a.test"]);
    let mut seen_new = false;
    for _ in 0..100 {
        let s = connect(edge.https, "a.test", Arc::clone(&config)).await.unwrap();
        if presented(&s) == leaf(&new) {
            seen_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_new, "a new connection gets the replaced certificate");
    // The connection made before keeps working.
    assert_eq!(kept.get("a.test", "/r").await.0, StatusCode::OK);

    // A broken replacement is refused and the last good one stays.
    std::fs::write(dir.path().join("a.pem"), "not a certificate").unwrap();
    edge.engine.certs.refresh();
    let s = connect(edge.https, "a.test", Arc::clone(&config)).await.unwrap();
    assert_eq!(presented(&s), leaf(&new));

    // A site added at run time (as the control plane does) is served over
    // TLS by the next connection.
    let c = issue(&ca, dir.path(), "c", &["c.test"]);
    write_site(dir.path(), "c", &["c.test"], origin.addr, "");
    assert!(connect(edge.https, "c.test", Arc::clone(&config)).await.is_err());
    let sites = ["a", "c"].map(|id| outpost_config::Site::load(&dir.path().join(format!("{id}.toml"))).unwrap());
    edge.engine.set_sites(sites.to_vec());
    let s = connect(edge.https, "c.test", Arc::clone(&config)).await.unwrap();
    assert_eq!(presented(&s), leaf(&c));
    assert_eq!(Conn::open(s).await.get("c.test", "/c").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_certificates_are_read_only_from_the_folders_the_node_allows() {
    let origin = Origin::start().await;
    let node_dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let allowed = tempfile::tempdir().unwrap();
    let ca = LocalCa::generate("test CA").unwrap();
    let config = h2_h1(&ca_file(&ca, node_dir.path()));
    issue(&ca, node_dir.path(), "in", &["in.test"]);
    let (out_cert, out_key) =
        ca.issue(&CertRequest::server(&["out.test"], YEAR)).unwrap().write(elsewhere.path(), "out").unwrap();
    let (ok_cert, ok_key) =
        ca.issue(&CertRequest::server(&["ok.test"], YEAR)).unwrap().write(allowed.path(), "ok").unwrap();
    // A link inside the node's folder that leads outside it counts as outside.
    std::os::unix::fs::symlink(&out_cert, node_dir.path().join("link.pem")).unwrap();
    std::os::unix::fs::symlink(&out_key, node_dir.path().join("link.key")).unwrap();
    write_site(node_dir.path(), "in", &["in.test"], origin.addr, "");
    let tls = format!("[tls]\nsite_cert_dirs = [\"{}\"]\n", allowed.path().display());
    let edge = tls_edge(node_dir.path(), &["in.toml"], &tls).await;
    // Sites as the control plane would push them, naming files anywhere.
    let site = |id: &str, cert: &Path, key: &Path| {
        let text = format!(
            "[site]\nid = \"{id}\"\nhosts = [\"{id}.test\"]\n[[origin]]\nurl = \"http://{}\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            origin.addr,
            cert.display(),
            key.display()
        );
        outpost_config::Site::parse_in(Path::new("pushed.toml"), &text, node_dir.path()).unwrap()
    };
    let inside = outpost_config::Site::load(&node_dir.path().join("in.toml")).unwrap();
    edge.engine.set_sites(vec![
        inside,
        site("out", &out_cert, &out_key),
        site("link", &node_dir.path().join("link.pem"), &node_dir.path().join("link.key")),
        site("ok", &ok_cert, &ok_key),
        site("shadow", Path::new("/etc/shadow"), Path::new("/etc/shadow")),
    ]);
    assert!(connect(edge.https, "in.test", Arc::clone(&config)).await.is_ok(), "the node's own folder");
    assert!(connect(edge.https, "ok.test", Arc::clone(&config)).await.is_ok(), "a folder the node lists");
    for refused in ["out.test", "link.test", "shadow.test"] {
        assert!(connect(edge.https, refused, Arc::clone(&config)).await.is_err(), "{refused} was served");
    }
    let err = outpost_proxy::tls::files::confined(&out_cert, &[node_dir.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, TlsFileError::OutsideFolders(_)), "{err}");
    assert!(err.to_string().contains("outside the folders"), "{err}");
}

/// The node's own certificate, kept outside the folders site certificates
/// may come from, is not a site's for naming its files: the node would
/// present it, and sign with its key, for that site's hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_naming_the_nodes_own_certificate_files_is_held_to_the_same_folders() {
    let origin = Origin::start().await;
    let node_dir = tempfile::tempdir().unwrap();
    let own = tempfile::tempdir().unwrap();
    let ca = LocalCa::generate("test CA").unwrap();
    let config = h2_h1(&ca_file(&ca, node_dir.path()));
    let (cert, key) =
        ca.issue(&CertRequest::server(&["node.test", "taken.test"], YEAR)).unwrap().write(own.path(), "node").unwrap();
    issue(&ca, node_dir.path(), "in", &["in.test"]);
    write_site(node_dir.path(), "in", &["in.test"], origin.addr, "");
    let tls = format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display());
    let edge = tls_edge(node_dir.path(), &["in.toml"], &tls).await;
    let text = format!(
        "[site]\nid = \"taken\"\nhosts = [\"taken.test\"]\n[[origin]]\nurl = \"http://{}\"\n\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        origin.addr,
        cert.display(),
        key.display()
    );
    let taken = outpost_config::Site::parse_in(Path::new("pushed.toml"), &text, node_dir.path()).unwrap();
    let inside = outpost_config::Site::load(&node_dir.path().join("in.toml")).unwrap();
    edge.engine.set_sites(vec![inside, taken]);
    assert!(connect(edge.https, "in.test", Arc::clone(&config)).await.is_ok());
    assert!(connect(edge.https, "taken.test", Arc::clone(&config)).await.is_err(), "the node's certificate was served");
}

#[tokio::test]
async fn certificate_files_are_checked_and_an_expired_one_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = LocalCa::generate("test CA").unwrap();
    let (cert, key) = ca.issue(&CertRequest::server(&["a.test"], YEAR)).unwrap().write(d, "good").unwrap();
    let (other_cert, _) = ca.issue(&CertRequest::server(&["b.test"], YEAR)).unwrap().write(d, "other").unwrap();
    std::fs::write(d.join("junk.pem"), "hello").unwrap();
    let now = SystemTime::now();

    let loaded = load_pair(&cert, &key, now).unwrap();
    assert!(loaded.warnings.is_empty());
    assert!(loaded.covers("a.test") && !loaded.covers("b.test"));
    let missing = d.join("missing.pem");
    assert_eq!(load_pair(&missing, &key, now).unwrap_err(), TlsFileError::Missing(missing.clone()));
    let e = load_pair(&d.join("junk.pem"), &key, now).unwrap_err();
    assert_eq!(e, TlsFileError::NotPem(d.join("junk.pem")));
    assert!(e.to_string().starts_with(&format!("{}: not PEM", d.join("junk.pem").display())));
    assert_eq!(load_pair(&cert, &cert, now).unwrap_err(), TlsFileError::NoKey(cert.clone()));
    let e = load_pair(&other_cert, &key, now).unwrap_err();
    assert_eq!(e, TlsFileError::KeyMismatch { cert: other_cert.clone(), key: key.clone() });
    assert!(e.to_string().contains("does not belong to the certificate"), "{e}");

    // Expired: loaded, with a warning, and presented (clients decide).
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800); // 2000-01-01
    let expired = ca
        .issue(&CertRequest { names: &["a.test"], not_before: long_ago, not_after: long_ago + YEAR, client: false })
        .unwrap();
    let (ecert, ekey) = expired.write(d, "a").unwrap();
    let loaded = load_pair(&ecert, &ekey, now).unwrap();
    assert!(loaded.warnings[0].contains("expired on 2000-12-31"), "{:?}", loaded.warnings);

    let origin = Origin::start().await;
    write_site(d, "a", &["a.test"], origin.addr, "");
    let edge = tls_edge(d, &["a.toml"], "").await;
    let ca_pem = ca_file(&ca, d);
    let e = connect(edge.https, "a.test", h2_h1(&ca_pem)).await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("expired"), "the client sees the expired certificate: {e}");

    // A node's own certificate is local: a broken one stops the node file.
    let node = "[node]\nname = \"n\"\nrole = \"edge\"\npop = \"p\"\nlatitude = 0.0\nlongitude = 0.0\n\
                [listen]\nhttps = [\"127.0.0.1:0\"]\n[tls]\ncert = \"nope.pem\"\n[cache]\nmemory = \"16MiB\"\n\
                [upstream]\nmode = \"origin\"\n";
    std::fs::write(d.join("bad.toml"), node).unwrap();
    let e = NodeConfig::load(&d.join("bad.toml")).unwrap_err().to_string();
    assert!(e.contains("bad.toml:10:8: file") && e.contains("nope.pem` does not exist"), "{e}");
    assert!(e.contains("tls.cert needs tls.key beside it"), "{e}");
}

#[tokio::test]
async fn https_only_sites_send_plain_http_clients_to_https_with_308() {
    let OneSite { origin, dir: _dir, ca_pem, edge } = one_site("https_only = true\n", "").await;

    let url = format!("http://{}/p/x?size=10&v=2", edge.http);
    let r = send(Method::GET, &url, &[("host", "A.test:8080")]).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    let expected = format!("https://a.test:{}/p/x?size=10&v=2", edge.https.port());
    assert_eq!(r.headers["location"], expected.as_str());
    assert_eq!(origin.count("/p/x").await, 0, "a redirect never reaches the origin");

    let s = connect(edge.https, "a.test", h2_h1(&ca_pem)).await.unwrap();
    let (status, _, body) = Conn::open(s).await.get("a.test", "/p/x?size=10&v=2").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.is_empty());
}

/// The count of a histogram's samples whose labels include all of `labels`.
fn histogram_count(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}_count{{")) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Reads the process's metrics, so it runs in a process of its own.
#[test]
fn new_connections_time_their_handshake_and_first_byte() {
    crate::harness::with_metrics_in_own_process(
        "tls::new_connections_time_their_handshake_and_first_byte",
        connection_timings,
    );
}

async fn connection_timings() {
    let OneSite { origin: _origin, dir: _dir, ca_pem, edge } = one_site("", "").await;
    let render = outpost_net::metrics::render;
    let node = "node=\"edge-tls\"";
    assert_eq!(histogram_count(&render(), "outpost_tls_handshake_duration_seconds", &[node]), 0);

    // Two TLS connections from one client, one request each (the second
    // resumes the first's session); one cleartext connection.
    let client = h2_h1(&ca_pem);
    for _ in 0..2 {
        let stream = connect(edge.https, "a.test", Arc::clone(&client)).await.unwrap();
        let (status, _, _) = Conn::open(stream).await.get("a.test", "/timed?size=100").await;
        assert_eq!(status, StatusCode::OK);
    }
    let plain = send(Method::GET, &format!("http://{}/timed?size=100", edge.http), &[("host", "a.test")]).await;
    assert_eq!(plain.status, StatusCode::OK);
    // A handshake that fails is counted, not timed.
    let refused = connect(edge.https, "unknown.test", h2_h1(&ca_pem)).await;
    assert!(refused.is_err());

    // A first byte is timed just after the write that sent it returns, so
    // the client can read its answer a moment before the time is recorded.
    let first_bytes = |scheme: &str| {
        histogram_count(&render(), "outpost_first_byte_seconds", &[node, &format!("scheme=\"{scheme}\"")])
    };
    outpost_testkit::eventually("first bytes timed", || {
        let done = first_bytes("https") >= 2 && first_bytes("http") >= 1;
        async move { done }
    })
    .await;
    let text = render();
    assert_eq!(histogram_count(&text, "outpost_tls_handshake_duration_seconds", &[node]), 2, "{text}");
    for kind in ["kind=\"full\"", "kind=\"resumed\""] {
        assert_eq!(
            histogram_count(&text, "outpost_tls_handshake_duration_seconds", &[node, kind]),
            1,
            "{kind}: {text}"
        );
    }
    assert!(text.contains(&format!("outpost_tls_resumed_total{{{node}}} 1")), "{text}");
    assert_eq!(histogram_count(&text, "outpost_first_byte_seconds", &[node, "scheme=\"https\""]), 2, "{text}");
    assert_eq!(histogram_count(&text, "outpost_first_byte_seconds", &[node, "scheme=\"http\""]), 1, "{text}");
    assert!(text.contains("outpost_tls_handshake_duration_seconds_bucket{"), "with buckets: {text}");
}

/// Clients that open connections and stall inside the TLS handshake, some
/// after a partial ClientHello and some after none, hold no place a real
/// visitor needs: handshakes are not capped, so a new client is answered at
/// once while 300 stalled ones wait out the header-read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_do_not_keep_new_visitors_out() {
    use tokio::io::AsyncWriteExt;
    let OneSite { origin: _origin, dir: _dir, ca_pem, edge } =
        one_site("", "[limits]\nheader_read_timeout = \"30s\"\n").await;

    // The first bytes of a TLS record carrying a ClientHello, and no more.
    let partial: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    let mut stalled = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(edge.https).await.unwrap();
        if i % 2 == 0 {
            s.write_all(partial).await.unwrap();
        }
        stalled.push(s);
    }
    // A real visitor, after all of them: its handshake and request finish
    // long before the stalled ones could time out.
    let visit = async {
        let s = connect(edge.https, "a.test", h2_h1(&ca_pem)).await.unwrap();
        Conn::open(s).await.get("a.test", "/stalled/visit?size=100").await
    };
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), visit).await.expect("the visitor waited");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 100);
    // The stalled connections are all still open: nothing made room by
    // closing them.
    let mut buf = [0u8; 1];
    let mut open = 0;
    for s in &stalled {
        if matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            open += 1;
        }
    }
    assert_eq!(open, stalled.len(), "stalled handshakes were closed early");
}

/// `[[early_hints]]` over TLS: an HTTP/1.1 client (hyper's, which reads
/// interim responses) gets the 103 before a miss's answer, not before a
/// hit's; so does an HTTP/2 client (h2's).
#[tokio::test]
async fn early_hints_reach_http1_and_http2_clients_over_tls_before_a_miss() {
    let hints = "[[early_hints]]\npattern = \"/hinted/*\"\nlink = [\"</a.css>; rel=preload; as=style\"]\n";
    let OneSite { origin, dir: _dir, ca_pem, edge } = one_site(hints, "").await;
    let h1 = client(&ca_pem, &[b"http/1.1"], &[&rustls::version::TLS13]);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    for round in 0..2 {
        let stream = connect(edge.https, "a.test", Arc::clone(&h1)).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let mut req = Request::get("/hinted/page?size=300&delay=200ms")
            .header("host", "a.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (tx, start) = (Arc::clone(&seen), std::time::Instant::now());
        hyper::ext::on_informational(&mut req, move |r| {
            let links: Vec<String> =
                r.headers().get_all("link").iter().map(|v| v.to_str().unwrap().to_string()).collect();
            tx.lock().unwrap().push((r.status(), links, start.elapsed()));
        });
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes().len(), 300);
        let answered = start.elapsed();
        let seen = seen.lock().unwrap();
        // The first request is a miss that waits 200 ms on the origin; the
        // second a hit answered at once.
        assert_eq!(seen.len(), 1, "{seen:?}");
        let (status, links, at) = &seen[0];
        assert_eq!(*status, StatusCode::EARLY_HINTS);
        assert_eq!(links, &["</a.css>; rel=preload; as=style"]);
        if round == 0 {
            assert!(*at + Duration::from_millis(100) < answered, "the 103 at {at:?}, the answer at {answered:?}");
        }
    }
    assert_eq!(origin.count("/hinted/page").await, 1);
    // Two misses on one connection, the second read by hyper: each gets
    // the site's hints, then the origin's, before its answer.
    let stream = connect(edge.https, "a.test", Arc::clone(&h1)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for n in 0..2 {
        let mut req = Request::get(format!("/hinted/kept{n}?size=20&delay=100ms&early=%3C/o{n}.css%3E"))
            .header("host", "a.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tx = Arc::clone(&seen);
        hyper::ext::on_informational(&mut req, move |r| {
            let links: Vec<String> =
                r.headers().get_all("link").iter().map(|v| v.to_str().unwrap().to_string()).collect();
            tx.lock().unwrap().push((r.status(), links));
        });
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes().len(), 20);
        let hints = StatusCode::EARLY_HINTS;
        let want =
            [(hints, vec!["</a.css>; rel=preload; as=style".to_string()]), (hints, vec![format!("</o{n}.css>")])];
        assert_eq!(*seen.lock().unwrap(), want, "request {n}");
    }
    let h2 = connect(edge.https, "a.test", h2_h1(&ca_pem)).await.unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let send = crate::harness::h2_client(h2).await;
    for (round, want) in [(0, 1), (1, 0)] {
        let got = crate::harness::h2_get(&send, "https://a.test/hinted/other?size=50&delay=200ms").await;
        assert_eq!((got.status, got.body.len()), (StatusCode::OK, 50));
        let links: Vec<&[String]> = got.interim.iter().map(|(_, l, _)| &l[..]).collect();
        assert_eq!(links.len(), want, "round {round}: {got:?}");
        if let Some((status, links, at)) = got.interim.first() {
            assert_eq!(*status, StatusCode::EARLY_HINTS);
            assert_eq!(links, &["</a.css>; rel=preload; as=style"]);
            assert!(
                *at + Duration::from_millis(100) < got.final_at,
                "the 103 at {at:?}, the answer at {:?}",
                got.final_at
            );
        }
    }
}
