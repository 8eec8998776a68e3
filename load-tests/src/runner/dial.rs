//! Opening a VU's connection: TCP, then TLS for `https://` targets, each
//! step timed (k6's `http_req_connecting` and `http_req_tls_handshaking`);
//! HTTP/1.1, or HTTP/2 when asked (by ALPN over TLS, by prior knowledge in
//! cleartext), or HTTP/3 (QUIC, `https://` only).

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
    H3(H3Conn),
}

/// An HTTP/3 connection: its own UDP socket, as a TCP connection has its
/// own port.
pub(super) struct H3Conn {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    quic: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

/// A response body, whichever protocol brought it.
pub(super) enum Answer {
    Hyper(Incoming),
    H3(Box<h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>>),
}

impl Answer {
    /// How many body bytes arrived, once all have.
    pub(super) async fn len(self) -> Result<u64, String> {
        match self {
            Answer::Hyper(body) => {
                use http_body_util::BodyExt;
                Ok(body.collect().await.map_err(|e| e.to_string())?.to_bytes().len() as u64)
            }
            Answer::H3(mut stream) => {
                use bytes::Buf;
                let mut n = 0;
                while let Some(chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
                    n += chunk.remaining() as u64;
                }
                Ok(n)
            }
        }
    }
}

impl Conn {
    pub(super) fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
            Conn::H3(c) => c.quic.close_reason().is_some(),
        }
    }

    /// Sends `req` once the connection can take it; the answer's head, its
    /// body still to read.
    pub(super) async fn send(&mut self, req: Request<Empty<Bytes>>) -> Result<Response<Answer>, String> {
        match self {
            Conn::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                Ok(s.send_request(req).await.map_err(|e| e.to_string())?.map(Answer::Hyper))
            }
            Conn::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                Ok(s.send_request(req).await.map_err(|e| e.to_string())?.map(Answer::Hyper))
            }
            Conn::H3(c) => {
                // HTTP/3 carries the host as `:authority`, from the URI.
                let (mut parts, _) = req.into_parts();
                let host = parts.headers.remove(http::header::HOST);
                let host = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("localhost");
                let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                parts.uri =
                    format!("https://{host}{target}").parse().map_err(|e: http::uri::InvalidUri| e.to_string())?;
                let mut stream =
                    c.send.send_request(Request::from_parts(parts, ())).await.map_err(|e| e.to_string())?;
                stream.finish().await.map_err(|e| e.to_string())?;
                let head = stream.recv_response().await.map_err(|e| e.to_string())?;
                Ok(head.map(|()| Answer::H3(Box::new(stream))))
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
    /// For HTTP/3: QUIC's view of the same configuration.
    quic: Option<quinn::ClientConfig>,
}

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    Http1,
    /// HTTP/2 where TLS negotiates it, and always in cleartext (h2c).
    Http2,
    /// HTTP/3 over QUIC (`https://` targets only).
    Http3,
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
            let roots = match ca {
                Some(path) => crate::ca_roots(std::path::Path::new(path)).map_err(|e| format!("target ca {e}"))?,
                None => {
                    let mut roots = RootCertStore::empty();
                    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                    roots
                }
            };
            builder.with_root_certificates(roots)
        };
        let mut config = builder.with_no_client_auth();
        config.alpn_protocols = match version {
            Version::Http1 => vec![b"http/1.1".to_vec()],
            Version::Http2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Version::Http3 => vec![b"h3".to_vec()],
        };
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("target server_name `{server_name}`: {e}"))?;
        let config = Arc::new(config);
        let quic = match version {
            Version::Http3 => {
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::clone(&config))
                    .map_err(|e| format!("HTTP/3: {e}"))?;
                Some(quinn::ClientConfig::new(Arc::new(crypto)))
            }
            _ => None,
        };
        Ok(Tls { connector: TlsConnector::from(config), name, quic })
    }
}

/// Opens a connection to `addr`, over TLS when `tls` is set.
pub(super) async fn connect(addr: SocketAddr, tls: Option<&Tls>, version: Version) -> Option<(Conn, Opened)> {
    let at = Instant::now();
    if let Some(quic) = tls.and_then(|t| t.quic.clone().map(|q| (t, q))) {
        let open = async {
            let conn = connect_h3(addr, quic.0, quic.1).await?;
            Some((conn, Opened { at, connecting: at.elapsed(), tls_handshaking: None }))
        };
        return tokio::time::timeout(CONNECT_TIMEOUT, open).await.ok()?;
    }
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

/// A QUIC connection (TLS 1.3 inside) speaking HTTP/3.
async fn connect_h3(addr: SocketAddr, tls: &Tls, config: quinn::ClientConfig) -> Option<Conn> {
    let local: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
    let mut endpoint = quinn::Endpoint::client(local).ok()?;
    endpoint.set_default_client_config(config);
    let name = match &tls.name {
        ServerName::DnsName(n) => n.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => return None,
    };
    let quic = endpoint.connect(addr, &name).ok()?.await.ok()?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone())).await.ok()?;
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Some(Conn::H3(H3Conn { send, quic, _endpoint: endpoint }))
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
        Version::Http3 => None,
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
