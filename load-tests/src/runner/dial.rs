//! Opening a VU's connection: TCP, then TLS for `https://` targets, each
//! step timed (k6's `http_req_connecting` and `http_req_tls_handshaking`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long a connection may take to open, TLS included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A VU's open connection.
pub(super) struct Conn {
    pub(super) send: SendRequest<Empty<Bytes>>,
}

/// How long opening a connection took.
#[derive(Debug, Clone, Copy)]
pub(super) struct Opened {
    pub(super) at: Instant,
    pub(super) connecting: Duration,
    /// `None` for cleartext.
    pub(super) tls_handshaking: Option<Duration>,
}

/// TLS for `https://` targets.
#[derive(Clone)]
pub(super) struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Tls {
    /// A client for `server_name` trusting the certificates in `ca` (a PEM
    /// file), the web's roots without it, or anything when `insecure`;
    /// resuming sessions when `resume`.
    pub(super) fn new(server_name: &str, ca: Option<&str>, insecure: bool, resume: bool) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if insecure {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            let mut roots = RootCertStore::empty();
            match ca {
                Some(path) => {
                    let certs = CertificateDer::pem_file_iter(path)
                        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| format!("target ca `{path}`: {e}"))?;
                    if certs.is_empty() {
                        return Err(format!("target ca `{path}`: no certificate in it"));
                    }
                    roots.add_parsable_certificates(certs);
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots)
        };
        let mut config = builder.with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("target server_name `{server_name}`: {e}"))?;
        Ok(Tls { connector: TlsConnector::from(Arc::new(config)), name })
    }
}

/// Opens a connection to `addr`, over TLS when `tls` is set.
pub(super) async fn connect(addr: SocketAddr, tls: Option<&Tls>) -> Option<(Conn, Opened)> {
    let at = Instant::now();
    let open = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let connecting = at.elapsed();
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            return Some((handshake(stream).await?, Opened { at, connecting, tls_handshaking: None }));
        };
        let stream = tls.connector.connect(tls.name.clone(), stream).await.ok()?;
        let tls_handshaking = Some(at.elapsed() - connecting);
        Some((handshake(stream).await?, Opened { at, connecting, tls_handshaking }))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open).await.ok()?
}

async fn handshake<S>(stream: S) -> Option<Conn>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(Conn { send })
}

/// Accepts any certificate, but still checks that the server holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
