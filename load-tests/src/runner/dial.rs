//! Opening a VU's connection: TCP, then TLS for `https://` targets, each
//! step timed (k6's `http_req_connecting` and `http_req_tls_handshaking`);
//! HTTP/1.1, or HTTP/2 when asked (by ALPN over TLS, by prior knowledge in
//! cleartext).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long a connection may take to open, TLS included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A VU's open connection.
pub(super) enum Conn {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Conn {
    pub(super) fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }

    /// Sends `req` once the connection can take it.
    pub(super) async fn send(&mut self, req: Request<Empty<Bytes>>) -> hyper::Result<Response<Incoming>> {
        match self {
            Conn::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Conn::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
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

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    Http1,
    /// HTTP/2 where TLS negotiates it, and always in cleartext (h2c).
    Http2,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Tls {
    /// A client for `server_name` trusting the certificates in `ca` (a PEM
    /// file), the web's roots without it, or anything when `insecure`;
    /// resuming sessions when `resume`, offering HTTP/2 first for `Http2`.
    pub(super) fn new(
        server_name: &str,
        ca: Option<&str>,
        insecure: bool,
        resume: bool,
        version: Version,
    ) -> Result<Tls, String> {
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
        config.alpn_protocols = match version {
            Version::Http1 => vec![b"http/1.1".to_vec()],
            Version::Http2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("target server_name `{server_name}`: {e}"))?;
        Ok(Tls { connector: TlsConnector::from(Arc::new(config)), name })
    }
}

/// Opens a connection to `addr`, over TLS when `tls` is set.
pub(super) async fn connect(addr: SocketAddr, tls: Option<&Tls>, version: Version) -> Option<(Conn, Opened)> {
    let at = Instant::now();
    let open = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let connecting = at.elapsed();
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            return Some((handshake(stream, version).await?, Opened { at, connecting, tls_handshaking: None }));
        };
        let stream = tls.connector.connect(tls.name.clone(), stream).await.ok()?;
        let tls_handshaking = Some(at.elapsed() - connecting);
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let version = if h2 { Version::Http2 } else { Version::Http1 };
        Some((handshake(stream, version).await?, Opened { at, connecting, tls_handshaking }))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open).await.ok()?
}

async fn handshake<S>(stream: S, version: Version) -> Option<Conn>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    match version {
        Version::Http1 => {
            let (send, conn) = http1::handshake(io).await.ok()?;
            tokio::spawn(conn);
            Some(Conn::H1(send))
        }
        Version::Http2 => {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io).await.ok()?;
            tokio::spawn(conn);
            Some(Conn::H2(send))
        }
    }
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
