//! HTTPS for the API and the event stream: the server configuration. The
//! listener (`outpost_net`) completes each handshake in its connection's
//! own task, under the header-read timeout.

use std::io;
use std::path::Path;
use std::sync::Arc;

use outpost_config::CertFiles;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn file_error(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()))
}

/// The API's server configuration: the certificate and key of `files`,
/// TLS 1.3 and 1.2, ALPN `http/1.1` (the event stream is a long response).
pub fn server_config(files: &CertFiles) -> io::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error(&files.cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(&files.cert, e))?;
    if chain.is_empty() {
        return Err(file_error(&files.cert, "holds no CERTIFICATE"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            file_error(&files.key, format!("does not fit the certificate in {}: {e}", files.cert.display()))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
