//! The load runner against the test origin over HTTPS: a new connection per
//! request when asked (each handshake counted at the server), connections
//! reused otherwise, and a certificate it must not trust refused.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper_util::rt::TokioIo;
use outpost_load::OriginServer;
use outpost_load::runner::{Scenario, Summary, exec};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

/// Presents one certificate and counts the handshakes that asked for it,
/// and the sessions resumed.
#[derive(Debug)]
struct Counting {
    key: Arc<CertifiedKey>,
    hellos: AtomicU64,
    /// Hellos that offered HTTP/2.
    h2: AtomicU64,
    sessions: Arc<dyn StoresServerSessions>,
    resumed: AtomicU64,
}

impl StoresServerSessions for Counting {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.sessions.put(key, value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let v = self.sessions.get(key);
        self.resumed.fetch_add(u64::from(v.is_some()), Ordering::Relaxed);
        v
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let v = self.sessions.take(key);
        self.resumed.fetch_add(u64::from(v.is_some()), Ordering::Relaxed);
        v
    }
    fn can_cache(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for Counting {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.hellos.fetch_add(1, Ordering::Relaxed);
        let h2 = hello.alpn().is_some_and(|mut offered| offered.any(|p| p == b"h2"));
        self.h2.fetch_add(u64::from(h2), Ordering::Relaxed);
        Some(Arc::clone(&self.key))
    }
}

/// A self-signed certificate for `name`: (certificate PEM, resolver).
fn certificate(name: &str) -> (String, Arc<Counting>) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
    let key = Arc::new(CertifiedKey::new(vec![c.cert.der().clone()], signer));
    let sessions = ServerSessionMemoryCache::new(1024);
    (
        c.cert.pem(),
        Arc::new(Counting {
            key,
            hellos: AtomicU64::new(0),
            h2: AtomicU64::new(0),
            sessions,
            resumed: AtomicU64::new(0),
        }),
    )
}

/// The test origin over HTTPS presenting `resolver`'s certificate.
async fn origin(resolver: &Arc<Counting>) -> (u16, tokio_util::sync::DropGuard) {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(resolver) as Arc<dyn ResolvesServerCert>);
    config.session_storage = Arc::clone(resolver) as Arc<dyn StoresServerSessions>;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let server = OriginServer::bind(&["127.0.0.1:0".parse().unwrap()], None).await.unwrap().with_tls(Arc::new(config));
    let port = server.local_addrs()[0].port();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    (port, stop.drop_guard())
}

async fn run(dir: &Path, port: u16, target: &str) -> Summary {
    run_on(dir, &format!("https://127.0.0.1:{port}"), target).await
}

async fn run_on(dir: &Path, url: &str, target: &str) -> Summary {
    let text = format!(
        "[target]\nurls = [\"{url}\"]\n{target}\n\
         [executor]\ntype = \"constant-vus\"\nvus = 2\nduration = \"1s\"\n\
         [requests]\npath = \"/tls/{{n}}?size=1KiB\"\nobjects = 5\n"
    );
    let file = dir.join("s.toml");
    std::fs::write(&file, &text).unwrap();
    let scenario = Scenario::load(&file).unwrap();
    exec::run(&scenario, &|_, _| {}).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_targets_time_each_new_connection_and_refuse_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, resolver) = certificate("origin.test");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();
    let (port, _stop) = origin(&resolver).await;
    let trusted = format!("server_name = \"origin.test\"\nca = \"{}\"", ca.display());

    // A new connection per request: one handshake at the server for each,
    // each timed, and the wait to the first byte includes it. Each is a
    // full handshake when resumption is off.
    let s = run(dir.path(), port, &format!("{trusted}\nno_connection_reuse = true\ntls_resumption = false")).await;
    let handshakes = resolver.hellos.swap(0, Ordering::Relaxed);
    assert_eq!(resolver.resumed.swap(0, Ordering::Relaxed), 0, "resumed with resumption off");
    assert!(s.reqs >= 10, "{} requests", s.reqs);
    assert_eq!(s.failed, 0);
    assert_eq!(handshakes, s.reqs, "one handshake per request");
    assert_eq!(s.timings.tls_handshaking.len(), s.reqs);
    assert_eq!(s.timings.connecting.len(), s.reqs);
    assert_eq!(s.timings.first_byte.len(), s.reqs);
    let (hs, first, waiting) = (&s.timings.tls_handshaking, &s.timings.first_byte, &s.timings.waiting);
    assert!(first.min() > hs.min(), "first byte {} µs within a handshake of {} µs", first.min(), hs.min());
    assert!(first.mean() > waiting.mean() + hs.mean() * 0.9);

    // Reused connections: one handshake per VU (and one more for any the
    // server closed), no per-request handshake times.
    let s = run(dir.path(), port, &trusted).await;
    let handshakes = resolver.hellos.swap(0, Ordering::Relaxed);
    assert!(s.reqs >= 10 && s.failed == 0);
    assert!(handshakes <= 4 && handshakes as usize == s.timings.tls_handshaking.len() as usize, "{handshakes}");

    // Another name than the certificate's: every request fails, none is
    // answered, though the server saw the handshakes begin.
    let s = run(dir.path(), port, &format!("server_name = \"other.test\"\nca = \"{}\"", ca.display())).await;
    assert!(s.reqs > 0 && s.failed == s.reqs, "{} of {} failed", s.failed, s.reqs);
    assert!(s.timings.tls_handshaking.is_empty() && s.timings.waiting.is_empty());
    assert!(resolver.hellos.swap(0, Ordering::Relaxed) > 0);

    // HTTP/2 when asked: offered by ALPN on every new connection, and
    // spoken.
    let s = run(dir.path(), port, &format!("{trusted}\nno_connection_reuse = true\nhttp2 = true")).await;
    assert!(s.reqs >= 10 && s.failed == 0, "{} of {} failed", s.failed, s.reqs);
    assert_eq!(resolver.h2.swap(0, Ordering::Relaxed), s.reqs);
    resolver.hellos.store(0, Ordering::Relaxed);

    // Told to trust anything, it connects; and by default new connections
    // resume the sessions of earlier ones.
    let s = run(dir.path(), port, "insecure_skip_tls_verify = true\nno_connection_reuse = true").await;
    assert!(s.reqs >= 10 && s.failed == 0);
    let resumed = resolver.resumed.swap(0, Ordering::Relaxed);
    assert!(resumed >= s.reqs - 4, "{resumed} of {} resumed", s.reqs);
}

#[test]
fn mixed_schemes_and_a_bad_server_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (target, want) in [
        ("urls = [\"https://127.0.0.1:1\", \"http://127.0.0.1:2\"]", "not a mix"),
        ("urls = [\"https://127.0.0.1:1\"]\nserver_name = \"bad name!\"", "server_name"),
    ] {
        let text = format!(
            "[target]\n{target}\n[executor]\ntype = \"constant-vus\"\nvus = 1\nduration = \"1s\"\n\
             [requests]\npath = \"/\"\n"
        );
        let file = dir.path().join("s.toml");
        std::fs::write(&file, text).unwrap();
        let scenario = Scenario::load(&file).unwrap();
        let err = rt.block_on(exec::run(&scenario, &|_, _| {})).unwrap_err();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn a_missing_or_empty_ca_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    for (ca, want) in [(dir.path().join("none.pem"), "none.pem"), (empty, "no certificate")] {
        let text = format!(
            "[target]\nurls = [\"https://127.0.0.1:1\"]\nca = \"{}\"\n[executor]\ntype = \"constant-vus\"\nvus = 1\n\
             duration = \"1s\"\n[requests]\npath = \"/\"\n",
            ca.display()
        );
        let file = dir.path().join("s.toml");
        std::fs::write(&file, text).unwrap();
        let scenario = Scenario::load(&file).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let err = rt.block_on(exec::run(&scenario, &|_, _| {})).unwrap_err();
        assert!(err.contains(want), "{err}");
    }
}

/// `http2 = true` in cleartext speaks h2c by prior knowledge: the test
/// origin answers it, and a server that speaks only HTTP/1.1 does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http2_is_spoken_by_prior_knowledge() {
    let dir = tempfile::tempdir().unwrap();
    let server = OriginServer::bind(&["127.0.0.1:0".parse().unwrap()], None).await.unwrap();
    let addr = server.local_addrs()[0];
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    let _stop = stop.drop_guard();
    let s = run_on(dir.path(), &format!("http://{addr}"), "http2 = true\nno_connection_reuse = true").await;
    assert!(s.reqs >= 10 && s.failed == 0, "{} of {} failed", s.failed, s.reqs);

    // An HTTP/1.1-only server takes the h2 preface for a bad request.
    let h1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h1_addr = h1.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = h1.accept().await else { return };
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });
    let s = run_on(dir.path(), &format!("http://{h1_addr}"), "http2 = true").await;
    assert!(s.reqs > 0 && s.failed == s.reqs, "{} of {} failed", s.failed, s.reqs);
    let s = run_on(dir.path(), &format!("http://{h1_addr}"), "").await;
    assert!(s.reqs > 0 && s.failed == 0, "{} of {} failed over HTTP/1.1", s.failed, s.reqs);
    // An https target that answers in cleartext: every request fails, none
    // is timed as a handshake, and the run ends on time.
    let s = run_on(dir.path(), &format!("https://{h1_addr}"), "insecure_skip_tls_verify = true").await;
    assert!(s.reqs > 0 && s.failed == s.reqs, "{} of {} failed", s.failed, s.reqs);
    assert!(s.timings.tls_handshaking.is_empty());
}
