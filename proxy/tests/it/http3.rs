//! HTTP/3 at an edge, with the h3 crate's own client over quinn: hits and
//! misses on the one request path, the certificate chosen by SNI, a large
//! body byte for byte, `Alt-Svc` on the other protocols, the stream limit,
//! and a graceful shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, StatusCode};
use outpost_config::NodeConfig;
use outpost_proxy::Tier;
use outpost_proxy::node::Node;
use outpost_proxy::tls::pki::LocalCa;
use outpost_proxy::upstream::OriginRoute;
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use crate::harness::{Origin, assert_origin_bytes, eventually, send};
use crate::tls::{ca_file, issue, leaf, write_site};

struct QuicEdge {
    http: SocketAddr,
    https: SocketAddr,
    quic: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// An edge with plain HTTP, HTTPS and HTTP/3 listeners serving `sites`.
async fn quic_edge(dir: &Path, sites: &[&str], limits: &str) -> QuicEdge {
    let list: Vec<String> = sites.iter().map(|s| format!("\"{s}\"")).collect();
    let node = format!(
        "[node]\nname = \"edge-h3\"\nrole = \"edge\"\npop = \"tst\"\nlatitude = 0.0\nlongitude = 0.0\n\
         sites = [{}]\naccess_log = \"off\"\n\n[listen]\nhttp = [\"127.0.0.1:0\"]\nhttps = [\"127.0.0.1:0\"]\n\
         quic = [\"127.0.0.1:0\"]\n\n[cache]\nmemory = \"32MiB\"\n\n[upstream]\nmode = \"origin\"\n\n[limits]\n{limits}\n",
        list.join(", ")
    );
    let file = dir.join("edge.toml");
    std::fs::write(&file, node).unwrap();
    let cfg = NodeConfig::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let bound = Node::bind(&cfg, Tier::Edge, Arc::new(OriginRoute)).await.unwrap();
    let (http, https, quic) = (bound.http_addrs()[0], bound.https_addrs()[0], bound.quic_addrs()[0]);
    let stop = CancellationToken::new();
    let task = tokio::spawn(bound.run(stop.clone()));
    QuicEdge { http, https, quic, stop, task }
}

/// An HTTP/3 connection: the h3 client's request sender, and the
/// certificate the edge presented.
struct H3 {
    send: Sender,
    cert: CertificateDer<'static>,
    _endpoint: quinn::Endpoint,
}

async fn connect(addr: SocketAddr, sni: &str, ca: &Path) -> Result<H3, String> {
    connect_as(addr, sni, ca, None, None).await
}

/// [`connect`], with the client's own QUIC transport settings.
async fn connect_with(
    addr: SocketAddr,
    sni: &str,
    ca: &Path,
    transport: Option<quinn::TransportConfig>,
) -> Result<H3, String> {
    connect_as(addr, sni, ca, None, transport).await
}

/// A client certificate chain and its key.
type Identity = (Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>);

/// [`connect_with`], presenting `identity` when asked for a certificate.
async fn connect_as(
    addr: SocketAddr,
    sni: &str,
    ca: &Path,
    identity: Option<Identity>,
    transport: Option<quinn::TransportConfig>,
) -> Result<H3, String> {
    let (endpoint, conn) = quic_connect(addr, sni, h3_tls(ca, identity), transport).await?;
    h3_over(endpoint, conn).await
}

/// HTTP/3 over a QUIC connection made.
async fn h3_over(endpoint: quinn::Endpoint, conn: quinn::Connection) -> Result<H3, String> {
    let cert = conn
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|c| c[0].clone())
        .unwrap();
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok(H3 { send, cert, _endpoint: endpoint })
}

/// A client's TLS 1.3 for HTTP/3, trusting `ca`, presenting `identity`
/// when asked for a certificate.
fn h3_tls(ca: &Path, identity: Option<Identity>) -> rustls::ClientConfig {
    let roots = outpost_proxy::tls::files::load_roots(ca).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls
}

/// A QUIC connection speaking `tls` (its ALPN set), to `addr` as `sni`.
async fn quic_connect(
    addr: SocketAddr,
    sni: &str,
    tls: rustls::ClientConfig,
    transport: Option<quinn::TransportConfig>,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    quic_connect_from("127.0.0.1", addr, sni, tls, transport).await
}

/// [`quic_connect`] from the address `from`.
async fn quic_connect_from(
    from: &str,
    addr: SocketAddr,
    sni: &str,
    tls: rustls::ClientConfig,
    transport: Option<quinn::TransportConfig>,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let quic_tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(format!("{from}:0").parse().unwrap()).unwrap();
    let mut client = quinn::ClientConfig::new(Arc::new(quic_tls));
    if let Some(t) = transport {
        client.transport_config(Arc::new(t));
    }
    endpoint.set_default_client_config(client);
    let conn = endpoint.connect(addr, sni).map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
    Ok((endpoint, conn))
}

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

impl H3 {
    async fn get(&mut self, host: &str, path: &str) -> Result<(StatusCode, HeaderMap, Vec<u8>), String> {
        get(&mut self.send, host, path).await
    }
}

/// One GET over HTTP/3: status, fields and the whole body.
async fn get(send: &mut Sender, host: &str, path: &str) -> Result<(StatusCode, HeaderMap, Vec<u8>), String> {
    let req = Request::get(format!("https://{host}{path}")).body(()).unwrap();
    exchange(send, req, Bytes::new()).await.map(|(_, status, h, body)| (status, h, body))
}

/// The interim responses before an answer: status and `link` values.
type Interim = Vec<(StatusCode, Vec<String>)>;

/// `req` with `body` over HTTP/3: the interim responses, then the answer's
/// status, fields and whole body.
async fn exchange(
    send: &mut Sender,
    req: Request<()>,
    body: Bytes,
) -> Result<(Interim, StatusCode, HeaderMap, Vec<u8>), String> {
    let mut stream = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    if !body.is_empty() {
        stream.send_data(body).await.map_err(|e| e.to_string())?;
    }
    finish(&mut stream).await?;
    let mut interim = Vec::new();
    let resp = loop {
        let resp = stream.recv_response().await.map_err(|e| format!("response: {e}"))?;
        if !resp.status().is_informational() {
            break resp;
        }
        let links = resp.headers().get_all("link").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        interim.push((resp.status(), links));
    };
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.map_err(|e| format!("body: {e}"))? {
        while chunk.has_remaining() {
            let c = chunk.chunk();
            body.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok((interim, resp.status(), resp.headers().clone(), body))
}

/// Ends the request as a client must take it: a server that answers
/// without the rest of the request may ask it to stop sending, with
/// H3_NO_ERROR, and its answer still counts (RFC 9114 section 4.1).
async fn finish(stream: &mut h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>) -> Result<(), String> {
    match stream.finish().await {
        Err(h3::error::StreamError::RemoteTerminate { code, .. }) if code == h3::error::Code::H3_NO_ERROR => Ok(()),
        r => r.map_err(|e| format!("finish: {e}")),
    }
}

/// Site `a` (`a.test`) in `d` in front of `origin`, its certificate from a
/// new CA; the CA's file.
fn site_a(d: &Path, origin: &Origin) -> std::path::PathBuf {
    let ca = LocalCa::generate("h3 CA").unwrap();
    issue(&ca, d, "a", &["a.test"]);
    write_site(d, "a", &["a.test"], origin.addr, "");
    ca_file(&ca, d)
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// A node that requires client certificates (`[tls] client_ca`, as a
/// shield asks of its edges) requires them over HTTP/3 as over TCP: a
/// client without one gets no answer, one with a certificate the CA signed
/// does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_requires_client_certificates_where_the_node_does() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = LocalCa::generate("h3 CA").unwrap();
    let ca_pem = ca_file(&ca, d);
    issue(&ca, d, "a", &["a.test"]);
    write_site(d, "a", &["a.test"], origin.addr, "");
    let client = outpost_proxy::tls::pki::Request {
        client: true,
        ..outpost_proxy::tls::pki::Request::server(&["edge-1"], Duration::from_secs(3600))
    };
    let (cert, key) = ca.issue(&client).unwrap().write(d, "edge-client").unwrap();
    let edge = quic_edge(d, &["a.toml"], &format!("\n[tls]\nclient_ca = \"{}\"\n", ca_pem.display())).await;
    let anonymous = async {
        let mut h3 = connect(edge.quic, "a.test", &ca_pem).await?;
        h3.get("a.test", "/h3?size=100").await
    };
    let refused = tokio::time::timeout(Duration::from_secs(10), anonymous).await.expect("an answer or a refusal");
    assert!(refused.is_err(), "answered without a client certificate: {:?}", refused.map(|r| r.0));
    let identity =
        (outpost_proxy::tls::files::load_certs(&cert).unwrap(), outpost_proxy::tls::files::load_key(&key).unwrap());
    let mut h3 = connect_as(edge.quic, "a.test", &ca_pem, Some(identity), None).await.unwrap();
    let (status, _, body) = h3.get("a.test", "/h3?size=100").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 100);
    edge.stop.cancel();
    edge.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_serves_hits_and_misses_with_each_sites_certificate_and_is_advertised() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = LocalCa::generate("h3 CA").unwrap();
    let ca_pem = ca_file(&ca, d);
    let a = issue(&ca, d, "a", &["a.test"]);
    let b = issue(&ca, d, "b", &["b.test"]);
    write_site(d, "a", &["a.test"], origin.addr, "http3 = true");
    write_site(d, "b", &["b.test"], origin.addr, "");
    let edge = quic_edge(d, &["a.toml", "b.toml"], "").await;

    let mut h3 = connect(edge.quic, "a.test", &ca_pem).await.unwrap();
    assert_eq!(h3.cert, leaf(&a), "a.test's certificate");
    let (status, h, body) = h3.get("a.test", "/h3?size=3000&cc=max-age%3D60").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(header(&h, "cache-status").contains("fwd=uri-miss"), "{h:?}");
    assert_origin_bytes("/h3", &body);
    let (_, h, body) = h3.get("a.test", "/h3?size=3000&cc=max-age%3D60").await.unwrap();
    assert!(header(&h, "cache-status").contains("hit"), "{h:?}");
    assert_origin_bytes("/h3", &body);
    assert_eq!(header(&h, "alt-svc"), "", "no Alt-Svc over HTTP/3 itself");
    assert_eq!(origin.count("/h3").await, 1, "one request path: the miss filled the cache every protocol reads");

    // A large object, byte for byte, on the same connection.
    let (status, _, body) = h3.get("a.test", "/big3?size=4194304&cc=max-age%3D60").await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, 4 << 20));
    assert_origin_bytes("/big3", &body);

    let mut other = connect(edge.quic, "b.test", &ca_pem).await.unwrap();
    assert_eq!(other.cert, leaf(&b), "b.test's certificate");
    assert_eq!(other.get("b.test", "/h3b?cc=max-age%3D60").await.unwrap().0, StatusCode::OK);
    assert!(connect(edge.quic, "nobody.test", &ca_pem).await.is_err(), "an unknown name gets no certificate");

    // A request whose header section is over the node's limit is refused
    // and the edge keeps serving, on that connection too.
    let big = "x".repeat(40 << 10);
    let req = Request::get("https://a.test/h3?size=3000").header("x-big", big).body(()).unwrap();
    let refused = match h3.send.send_request(req).await {
        Ok(mut stream) => {
            let _ = stream.finish().await;
            stream.recv_response().await.map(|r| r.status())
        }
        Err(e) => Err(e),
    };
    assert!(!matches!(refused, Ok(StatusCode::OK)), "{refused:?}");
    assert_eq!(h3.get("a.test", "/h3?size=3000").await.unwrap().0, StatusCode::OK);

    // The other protocols advertise HTTP/3 for the site that asks.
    let port = edge.quic.port();
    let r = send(http::Method::GET, &format!("http://{}/h3?size=3000", edge.http), &[("host", "a.test")]).await;
    assert_eq!(header(&r.headers, "alt-svc"), format!("h3=\":{port}\"; ma=86400"));
    let r = send(http::Method::GET, &format!("http://{}/h3b", edge.http), &[("host", "b.test")]).await;
    assert_eq!(header(&r.headers, "alt-svc"), "", "not for a site without http3");
    let tls = crate::tls::connect(edge.https, "a.test", crate::tls::h2_h1(&ca_pem)).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, h, _) = crate::tls::Conn::open(tls).await.get("a.test", "/h3?size=3000").await;
    assert_eq!((status, header(&h, "alt-svc")), (StatusCode::OK, format!("h3=\":{port}\"; ma=86400")), "over HTTP/2");
    edge.stop.cancel();
    edge.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_holds_its_connection_and_stream_limits_and_drains_on_shutdown() {
    let (origin, dir) = (Origin::start().await, tempfile::tempdir().unwrap());
    let d = dir.path();
    let ca_pem = site_a(d, &origin);
    let edge = quic_edge(d, &["a.toml"], "quic_streams = 2\nshutdown_grace = \"10s\"\nmax_connections = 1").await;
    let h3 = connect(edge.quic, "a.test", &ca_pem).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), connect(edge.quic, "a.test", &ca_pem)).await;
    assert!(matches!(second, Ok(Err(_))), "a connection over max_connections is refused at once");

    // Three slow requests on one connection allowed two at a time: the
    // third reaches the origin only once one of the first two is done.
    let slow = |path: &'static str| {
        let mut send = h3.send.clone();
        tokio::spawn(async move { get(&mut send, "a.test", path).await })
    };
    let first = [slow("/s1?delay=4s"), slow("/s2?delay=4s")];
    eventually("the first two to reach the origin", || async {
        (origin.count("/s1").await, origin.count("/s2").await) == (1, 1)
    })
    .await;
    let sent = std::time::Instant::now();
    let third = slow("/s3?delay=100ms");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let waited = origin.count("/s3").await;
    // Only meaningful while the first two are still being answered.
    if sent.elapsed() < Duration::from_millis(3500) {
        assert_eq!(waited, 0, "a third stream waits for credit");
    }
    for f in first {
        assert_eq!(f.await.unwrap().unwrap().0, StatusCode::OK);
    }
    assert_eq!(third.await.unwrap().unwrap().0, StatusCode::OK);
    assert_eq!(origin.count("/s3").await, 1);

    // Shutdown: a request in flight finishes, new connections are refused.
    let inflight = slow("/s4?delay=1s");
    eventually("the request in flight to reach the origin", || async { origin.count("/s4").await == 1 }).await;
    edge.stop.cancel();
    let (status, _, body) = inflight.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_origin_bytes("/s4", &body);
    let again = tokio::time::timeout(Duration::from_secs(2), connect(edge.quic, "a.test", &ca_pem)).await;
    assert!(!matches!(again, Ok(Ok(_))), "no new connections while draining");
    edge.task.await.unwrap().unwrap();
}

/// One client network holds no more than `connections_per_network`
/// HTTP/3 connections: another from it (here 127.0.0.0/24) is closed once
/// its handshake is done, with H3_EXCESSIVE_LOAD; a client of another
/// network is served, and so is the first still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_holds_one_networks_connections_to_its_share() {
    let (origin, dir) = (Origin::start().await, tempfile::tempdir().unwrap());
    let d = dir.path();
    let ca_pem = site_a(d, &origin);
    let edge = quic_edge(d, &["a.toml"], "connections_per_network = 1").await;
    let mut first = connect(edge.quic, "a.test", &ca_pem).await.unwrap();
    assert_eq!(first.get("a.test", "/one").await.unwrap().0, StatusCode::OK);
    let (_endpoint, extra) =
        quic_connect_from("127.0.0.2", edge.quic, "a.test", h3_tls(&ca_pem, None), None).await.unwrap();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), extra.closed()).await.expect("the extra connection was kept");
    let excessive = quinn::VarInt::from_u32(0x107);
    assert!(matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == excessive), "{closed:?}");
    let (endpoint, other) =
        quic_connect_from("127.0.1.1", edge.quic, "a.test", h3_tls(&ca_pem, None), None).await.unwrap();
    let mut other = h3_over(endpoint, other).await.unwrap();
    assert_eq!(other.get("a.test", "/two").await.unwrap().0, StatusCode::OK);
    assert_eq!(first.get("a.test", "/three").await.unwrap().0, StatusCode::OK);
}

/// `outpost load` with `http3 = true`: every request over QUIC, answered
/// from the cache once each object is in it; HTTP/3 to an `http://`
/// target is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_runner_speaks_http3() {
    use outpost_load::runner::{Scenario, exec};
    let (origin, dir) = (Origin::start().await, tempfile::tempdir().unwrap());
    let d = dir.path();
    let ca_pem = site_a(d, &origin);
    let edge = quic_edge(d, &["a.toml"], "").await;
    let scenario = |url: String| {
        let text = format!(
            "[target]\nurls = [\"{url}\"]\nhost = \"a.test\"\nserver_name = \"a.test\"\nca = \"{}\"\nhttp3 = true\n\
             [executor]\ntype = \"constant-vus\"\nvus = 4\nduration = \"1s\"\n\
             [requests]\npath = \"/load3/{{n}}?size=1KiB&cc=max-age%3D60\"\nobjects = 5\n\
             [[check]]\nname = \"hit or miss at the edge\"\nheader = \"cache-status\"\ncontains = \"edge-h3\"\n",
            ca_pem.display()
        );
        let file = d.join("s.toml");
        std::fs::write(&file, text).unwrap();
        Scenario::load(&file).unwrap()
    };
    let s = exec::run(&scenario(format!("https://{}", edge.quic)), &|_, _| {}).await.unwrap();
    assert!(s.reqs >= 20 && s.failed == 0, "{} of {} failed", s.failed, s.reqs);
    assert_eq!(s.bytes, s.reqs * 1024);
    assert!(s.hits >= s.reqs - 4 * 5, "{} hits of {}: at most each VU's first of each object misses", s.hits, s.reqs);
    assert!(s.checks.iter().all(|(_, _, failed)| *failed == 0), "{:?}", s.checks);
    let misses: u64 = load_fetches(&origin).await;
    assert!(misses <= 5, "{misses} origin requests for 5 objects");
    let err = exec::run(&scenario(format!("http://{}", edge.http)), &|_, _| {}).await.unwrap_err();
    assert!(err.contains("HTTP/3 needs https://"), "{err}");
    edge.stop.cancel();
}

async fn load_fetches(origin: &Origin) -> u64 {
    let stats = origin.stats().await;
    stats["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.starts_with("/load3/"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum()
}

/// Site `a` (`a.test`, with `extra` under `[site]`) in front of a new
/// origin, at an edge with these `[limits]`.
struct OneSite {
    origin: Origin,
    dir: tempfile::TempDir,
    ca_pem: std::path::PathBuf,
    edge: QuicEdge,
}

async fn one_site(extra: &str, limits: &str) -> OneSite {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = LocalCa::generate("h3 CA").unwrap();
    let ca_pem = ca_file(&ca, d);
    issue(&ca, d, "a", &["a.test"]);
    write_site(d, "a", &["a.test"], origin.addr, extra);
    let edge = quic_edge(d, &["a.toml"], limits).await;
    OneSite { origin, dir, ca_pem, edge }
}

/// An answer whose upstream breaks off mid-body has its stream reset, not
/// finished: an HTTP/3 client must not take what came for the whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_breaks_off_resets_its_http3_stream() {
    let site = one_site("", "").await;
    let mut h3 = connect(site.edge.quic, "a.test", &site.ca_pem).await.unwrap();
    for path in ["/cut?size=256KiB&abort_after=40000&cc=no-store", "/cut2?size=256KiB&abort_after=40000&no_length=1"] {
        let got = h3.get("a.test", path).await;
        // The stream reset (H3_INTERNAL_ERROR), not the connection.
        let said = got.as_ref().err().cloned().unwrap_or_default();
        assert!(said.contains("H3_INTERNAL_ERROR"), "{path}: {:?}", got.map(|(s, _, b)| (s, b.len())));
    }
    // The connection goes on.
    let (status, _, body) = h3.get("a.test", "/whole?size=4KiB").await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, 4096));
}

/// A body longer than its Content-Length whose end comes late: the
/// request body is dropped while a read of the stream still waits, and
/// the client gets a client error, not a broken exchange (a 502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_its_length_with_a_late_end_is_a_client_error() {
    let site = one_site("", "").await;
    let mut h3 = connect(site.edge.quic, "a.test", &site.ca_pem).await.unwrap();
    for round in 0..3 {
        let req = Request::post(format!("https://a.test/late{round}")).header("content-length", 10).body(()).unwrap();
        let mut stream = h3.send.send_request(req).await.unwrap();
        stream.send_data(Bytes::from(vec![b'x'; 20])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = finish(&mut stream).await;
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.recv_response()).await.unwrap();
        let status = resp.map(|r| r.status()).map_err(|e| e.to_string());
        assert!(status.as_ref().is_ok_and(|s| s.is_client_error()), "round {round}: {status:?}");
    }
    let (status, _, body) = h3.get("a.test", "/after?size=1KiB").await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, 1024));
}

/// A request stream left without its head past the header timeout is
/// reset, not finished: a stream finished with nothing on it would pass
/// for an answer that ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_its_head_in_time_is_reset() {
    let site = one_site("", "header_read_timeout = \"1s\"\n").await;
    let (_endpoint, conn) = quic_connect(site.edge.quic, "a.test", h3_tls(&site.ca_pem, None), None).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // A HEADERS frame's type, and nothing more.
    send.write_all(&[0x01]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 16)).await.unwrap();
    // H3_INTERNAL_ERROR: the stream reset, the connection still open.
    let reset = quinn::ReadToEndError::Read(quinn::ReadError::Reset(quinn::VarInt::from_u32(0x102)));
    assert_eq!(got.as_ref().err(), Some(&reset), "{got:?}");
    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
}

/// A connection is sent GOAWAY once it has been asked
/// `outpost_net::quic::MAX_REQUESTS` requests, and closed: h3 keeps each
/// stream that ended before its head for the connection's life, and a
/// client ending streams at once, in a loop, would grow that without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_connection_is_closed_after_its_most_requests() {
    let site = one_site("", "").await;
    let (_endpoint, conn) = quic_connect(site.edge.quic, "a.test", h3_tls(&site.ca_pem, None), None).await.unwrap();
    let most = outpost_net::quic::MAX_REQUESTS;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut opened = 0;
    while opened < most + 100 && std::time::Instant::now() < deadline {
        let Ok(Ok((mut send, _recv))) = tokio::time::timeout(Duration::from_secs(5), conn.open_bi()).await else {
            break;
        };
        if send.finish().is_err() {
            break;
        }
        opened += 1;
    }
    assert!(opened >= most, "closed after {opened} streams");
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    assert!(closed.is_ok(), "the connection was not closed after {opened} streams");
}

/// Straight to the handler, without a hop in between: the site's early
/// hints and the origin's 1xx reach an HTTP/3 client before a miss's
/// answer, each a HEADERS frame, and none before a hit's; a request body
/// reaches the origin whole, with the length the client declared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_clients_get_early_hints_and_send_bodies() {
    let hints = "[[early_hints]]\npattern = \"/hinted/*\"\nlink = [\"</site.css>; rel=preload\"]\n";
    let OneSite { origin, dir: _dir, ca_pem, edge } = one_site(hints, "").await;
    let mut h3 = connect(edge.quic, "a.test", &ca_pem).await.unwrap();
    let path = "https://a.test/hinted/p?size=700&early=%3C/o.css%3E&delay=200ms";
    let site = || vec!["</site.css>; rel=preload".to_string()];
    for (round, want) in [("miss", vec![site(), vec!["</o.css>".to_string()]]), ("hit", vec![])] {
        let req = Request::get(path).body(()).unwrap();
        let (interim, status, _, body) = exchange(&mut h3.send, req, Bytes::new()).await.unwrap();
        assert_eq!((status, body.len()), (StatusCode::OK, 700), "{round}");
        assert!(interim.iter().all(|(s, _)| *s == StatusCode::EARLY_HINTS), "{round}: {interim:?}");
        let links: Vec<Vec<String>> = interim.into_iter().map(|(_, l)| l).collect();
        assert_eq!(links, want, "{round}");
    }

    let upload = Bytes::from((0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let req = Request::post("https://a.test/up3").header("content-length", upload.len()).body(()).unwrap();
    let (interim, status, _, _) = exchange(&mut h3.send, req, upload).await.unwrap();
    assert_eq!((status, interim.len()), (StatusCode::OK, 0));
    let seen = send(http::Method::GET, &format!("http://{}/__origin/request?path=/up3", origin.addr), &[]).await;
    let seen: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(seen["content-length"], "300000", "{seen}");
    // A body longer or shorter than its Content-Length is malformed (RFC
    // 9114 §4.1.2): refused, never passed on cut or padded to fit.
    for (declared, sent) in [(10usize, 20usize), (20, 10)] {
        let path = format!("https://a.test/cl{declared}");
        let req = Request::post(&path).header("content-length", declared).body(()).unwrap();
        let answer = exchange(&mut h3.send, req, Bytes::from(vec![b'x'; sent])).await;
        assert!(
            answer.is_err() || answer.as_ref().is_ok_and(|a| a.1.is_client_error()),
            "{declared}/{sent}: {:?}",
            answer.map(|a| a.1)
        );
        let seen =
            send(http::Method::GET, &format!("http://{}/__origin/request?path=/cl{declared}", origin.addr), &[]).await;
        assert_ne!(
            seen.status,
            StatusCode::OK,
            "{declared}/{sent} reached the origin: {:?}",
            String::from_utf8_lossy(&seen.body)
        );
    }
    edge.stop.cancel();
    let _ = edge.task.await;
}

/// A GET answered before the client has ended its request stream asks the
/// client to stop sending with H3_NO_ERROR, as RFC 9114 says, not with a
/// code HTTP/3 does not define (which its clients may take for a failed
/// request), and the answer is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_answered_before_its_end_is_stopped_with_h3_no_error() {
    let OneSite { origin: _origin, dir: _dir, ca_pem, edge } = one_site("", "").await;
    let mut h3 = connect(edge.quic, "a.test", &ca_pem).await.unwrap();
    let req = Request::get("https://a.test/early?size=5000").body(()).unwrap();
    let mut stream = h3.send.send_request(req).await.unwrap();
    assert_eq!(stream.recv_response().await.unwrap().status(), StatusCode::OK);
    let mut got = 0;
    while let Some(chunk) = stream.recv_data().await.unwrap() {
        got += chunk.remaining();
    }
    assert_eq!(got, 5000);
    // The server has dropped the request's body by now; its stop request
    // may still be on its way.
    let code = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.send_data(Bytes::from_static(b"late")).await {
                Err(h3::error::StreamError::RemoteTerminate { code, .. }) => break code,
                Err(e) => panic!("{e}"),
                Ok(()) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .expect("the server asks the client to stop sending");
    assert_eq!(code, h3::error::Code::H3_NO_ERROR);
    assert_eq!(h3.get("a.test", "/early?size=5000").await.unwrap().0, StatusCode::OK);
    edge.stop.cancel();
    let _ = edge.task.await;
}

/// A request stream whose first frame declares a length of 2^40 (a HEADERS
/// frame, or one of a type HTTP/3 does not know, which h3 would hold whole
/// as it came) is stopped with H3_EXCESSIVE_LOAD as the frame's header
/// passes, not read on while the client sends; the edge serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_longer_than_any_head_is_refused_before_its_bytes_are_held() {
    let OneSite { origin: _origin, dir: _dir, ca_pem, edge } = one_site("", "").await;
    let (_endpoint, conn) = quic_connect(edge.quic, "a.test", h3_tls(&ca_pem, None), None).await.unwrap();
    for frame_type in [0x01u8, 0x21] {
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        // The type, then a length of 2^40 as an 8-byte varint.
        send.write_all(&[frame_type, 0xc0, 0, 0, 0x01, 0, 0, 0, 0]).await.unwrap();
        let junk = vec![b'x'; 64 << 10];
        let mut sent = 0usize;
        let stopped = loop {
            match tokio::time::timeout(Duration::from_secs(5), send.write_all(&junk)).await {
                Ok(Ok(())) => sent += junk.len(),
                Ok(Err(quinn::WriteError::Stopped(code))) => break code.into_inner(),
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => panic!("neither read nor stopped"),
            }
            assert!(sent < 16 << 20, "type {frame_type:#x}: {sent} bytes taken in and the stream still open");
        };
        assert_eq!(stopped, 0x107, "H3_EXCESSIVE_LOAD, for type {frame_type:#x}");
    }
    // The control stream: a SETTINGS frame of 2^40 bytes, which h3 would
    // hold whole. The stream is stopped or the connection closed, early.
    let (_endpoint, conn) = quic_connect(edge.quic, "a.test", h3_tls(&ca_pem, None), None).await.unwrap();
    let mut control = conn.open_uni().await.unwrap();
    control.write_all(&[0x00, 0x04, 0xc0, 0, 0, 0x01, 0, 0, 0, 0]).await.unwrap();
    let junk = vec![0u8; 64 << 10];
    let mut sent = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), control.write_all(&junk)).await {
            Ok(Ok(())) => sent += junk.len(),
            Ok(Err(_)) => break,
            Err(_) => panic!("the control stream was neither read nor stopped"),
        }
        assert!(sent < 16 << 20, "{sent} bytes of one control frame taken in");
    }
    let mut h3 = connect(edge.quic, "a.test", &ca_pem).await.unwrap();
    assert_eq!(h3.get("a.test", "/after?size=100").await.unwrap().0, StatusCode::OK);
    edge.stop.cancel();
    let _ = edge.task.await;
}

/// A client that takes nothing of an answer (it opens no stream credit)
/// has the stream reset after the send timeout, as an HTTP/1 client that
/// stops reading has its connection closed; the edge goes on serving it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_client_that_takes_nothing_has_its_stream_reset_after_the_send_timeout() {
    let OneSite { origin: _origin, dir: _dir, ca_pem, edge } = one_site("", "send_timeout = \"500ms\"").await;
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(16 << 10));
    let mut h3 = connect_with(edge.quic, "a.test", &ca_pem, Some(transport)).await.unwrap();
    let req = Request::get("https://a.test/stall3?size=4194304&cc=max-age%3D60").body(()).unwrap();
    let mut stream = h3.send.send_request(req).await.unwrap();
    finish(&mut stream).await.unwrap();
    assert_eq!(stream.recv_response().await.unwrap().status(), StatusCode::OK);
    // Nothing read for three times the send timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut got = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.recv_data()).await {
            Ok(Ok(Some(chunk))) => got += chunk.remaining(),
            Ok(Ok(None)) => break None,
            Ok(Err(e)) => break Some(e.to_string()),
            Err(_) => panic!("the stream neither ended nor was reset"),
        }
    };
    assert!(ended.is_some(), "the whole answer came ({got} bytes): the stalled stream was never reset");
    assert!(got < 4 << 20, "{got}");
    let (status, _, body) = h3.get("a.test", "/stall3?size=4194304&cc=max-age%3D60").await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, 4 << 20), "the connection serves on");
    edge.stop.cancel();
    let _ = edge.task.await;
}

/// A client that opens stream credit a little at a time, slower than
/// `send_min_rate`, has its stream reset, as over TCP; one that reads at
/// once takes the whole answer under the same limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_client_reading_slower_than_the_minimum_rate_has_its_stream_reset() {
    let limits = "send_timeout = \"2s\"\nsend_min_rate = 262144\n";
    let OneSite { origin: _origin, dir: _dir, ca_pem, edge } = one_site("", limits).await;
    let url = "/trickle3?size=8388608&cc=max-age%3D60";
    let window = || {
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(quinn::VarInt::from_u32(16 << 10));
        Some(transport)
    };
    let mut fast = connect_with(edge.quic, "a.test", &ca_pem, window()).await.unwrap();
    let (status, _, body) = fast.get("a.test", url).await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, 8 << 20), "a client reading at once");
    let mut h3 = connect_with(edge.quic, "a.test", &ca_pem, window()).await.unwrap();
    let req = Request::get(format!("https://a.test{url}")).body(()).unwrap();
    let mut stream = h3.send.send_request(req).await.unwrap();
    finish(&mut stream).await.unwrap();
    assert_eq!(stream.recv_response().await.unwrap().status(), StatusCode::OK);
    // A chunk (at most the 16 KiB of credit) every 250 ms: at most
    // 64 KiB/s, against a minimum of 256 KiB/s.
    let mut got = 0;
    let reading = async {
        loop {
            match stream.recv_data().await {
                Ok(Some(chunk)) => got += chunk.remaining(),
                Ok(None) => return None,
                Err(e) => return Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let ended = tokio::time::timeout(Duration::from_secs(20), reading).await.expect("the slow stream was never reset");
    assert!(ended.is_some(), "the whole answer came ({got} bytes)");
    assert!(got < 4 << 20, "{got}");
    edge.stop.cancel();
    let _ = edge.task.await;
}

/// Past a quarter of the connection cap a new client proves its address
/// (a Retry round trip, which spoofed Initial packets cannot make) and is
/// served; a connection that asks nothing is closed at `idle_timeout`
/// even while its client keeps it alive with PINGs, so such connections
/// cannot hold every place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_clients_retry_under_load_and_idle_connections_close_despite_pings() {
    let OneSite { origin: _origin, dir: _dir, ca_pem, edge } =
        one_site("", "max_connections = 4\nconnections_per_network = 0\nidle_timeout = \"1s\"\n").await;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(200)));
    let mut pinging = connect_with(edge.quic, "a.test", &ca_pem, Some(transport)).await.unwrap();
    assert_eq!(pinging.get("a.test", "/q1").await.unwrap().0, StatusCode::OK);
    let mut second = connect(edge.quic, "a.test", &ca_pem).await.expect("served after a Retry");
    assert_eq!(second.get("a.test", "/q2").await.unwrap().0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(pinging.get("a.test", "/q3").await.is_err(), "an idle connection kept by PINGs was not closed");
}
