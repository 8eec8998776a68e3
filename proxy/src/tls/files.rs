//! PEM files: certificate chains, private keys and CA bundles, loaded with
//! errors that name the file and say what is wrong with it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// What is wrong with a certificate, key or CA file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFileError {
    #[error("{0}: file does not exist")]
    Missing(PathBuf),
    #[error("{0}: cannot read: {1}")]
    Unreadable(PathBuf, String),
    #[error("{0}: not PEM (expected -----BEGIN …----- sections)")]
    NotPem(PathBuf),
    #[error("{0}: malformed PEM: {1}")]
    BadPem(PathBuf, String),
    #[error("{0}: holds no CERTIFICATE")]
    NoCertificate(PathBuf),
    #[error("{0}: holds no PRIVATE KEY")]
    NoKey(PathBuf),
    #[error("{0}: unsupported private key: {1}")]
    UnsupportedKey(PathBuf, String),
    #[error("{key}: the private key does not belong to the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{0}: not a usable certificate: {1}")]
    BadCertificate(PathBuf, String),
    #[error(
        "{0}: outside the folders this node reads site certificates from (its config folder and [tls] site_cert_dirs)"
    )]
    OutsideFolders(PathBuf),
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Checks that `path` (after following links) lies inside one of `dirs`.
pub fn confined(path: &Path, dirs: &[PathBuf]) -> Result<(), TlsFileError> {
    let real = path.canonicalize().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => TlsFileError::Missing(path.to_path_buf()),
        _ => TlsFileError::Unreadable(path.to_path_buf(), e.to_string()),
    })?;
    if dirs.iter().filter_map(|d| d.canonicalize().ok()).any(|d| real.starts_with(d)) {
        Ok(())
    } else {
        Err(TlsFileError::OutsideFolders(path.to_path_buf()))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => TlsFileError::Missing(path.to_path_buf()),
        _ => TlsFileError::Unreadable(path.to_path_buf(), e.to_string()),
    })
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Every certificate in a PEM file, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    certs_from_pem(&read(path)?, path)
}

/// Every certificate in PEM text, in order; `path` names it in errors.
fn certs_from_pem(bytes: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    if !is_pem(bytes) {
        return Err(TlsFileError::NotPem(path.to_path_buf()));
    }
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::BadPem(path.to_path_buf(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    key_from_pem(&read(path)?, path)
}

fn key_from_pem(bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    if !is_pem(bytes) {
        return Err(TlsFileError::NotPem(path.to_path_buf()));
    }
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsFileError::NoKey(path.to_path_buf()),
        e => TlsFileError::BadPem(path.to_path_buf(), e.to_string()),
    })
}

/// A CA bundle as a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    add_roots(&mut roots, path)?;
    Ok(roots)
}

/// Adds a CA bundle's certificates to `roots`.
pub fn add_roots(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsFileError> {
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsFileError::BadCertificate(path.to_path_buf(), e.to_string()))?;
    }
    Ok(())
}

/// A certificate chain with its key, ready to present.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// When the leaf certificate stops being valid.
    pub not_after: SystemTime,
    /// DNS names (and IP addresses, as text) the leaf certificate covers.
    pub names: Vec<String>,
    /// Problems that do not stop the certificate being used: expired, not
    /// yet valid.
    pub warnings: Vec<String>,
}

impl LoadedCert {
    /// Does the certificate cover `host` (lower-case)? A wildcard covers one
    /// label, as RFC 6125 has it.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(suffix) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => n == host,
        })
    }
}

/// Loads a certificate chain and its private key, checking that they belong
/// together. An expired certificate loads with a warning: a node keeps
/// serving with it rather than failing every handshake of the site.
pub fn load_pair(cert: &Path, key: &Path, now: SystemTime) -> Result<LoadedCert, TlsFileError> {
    pair_from_pem(&read(cert)?, &read(key)?, (cert, key), now)
}

/// A certificate the control plane obtained by ACME, its key opened with
/// the node token. Errors name it `acme:<site>`.
pub fn load_issued(
    issued: &outpost_config::IssuedCertificate,
    site: &str,
    token: &str,
    now: SystemTime,
) -> Result<LoadedCert, TlsFileError> {
    let label = PathBuf::from(format!("acme:{site}"));
    let key = outpost_net::seal::open(token, &outpost_net::seal::certificate_key(site), &issued.sealed_key)
        .map_err(|e| TlsFileError::Unreadable(label.clone(), format!("sealed key: {e}")))?;
    pair_from_pem(issued.chain_pem.as_bytes(), &key, (&label, &label), now)
}

fn pair_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    (cert, key): (&Path, &Path),
    now: SystemTime,
) -> Result<LoadedCert, TlsFileError> {
    let chain = certs_from_pem(cert_pem, cert)?;
    let der = key_from_pem(key_pem, key)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| TlsFileError::UnsupportedKey(key.to_path_buf(), e.to_string()))?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => return Err(TlsFileError::KeyMismatch { cert: cert.to_path_buf(), key: key.to_path_buf() }),
    }
    let (_, leaf) = x509_parser::parse_x509_certificate(&certified.cert[0])
        .map_err(|e| TlsFileError::BadCertificate(cert.to_path_buf(), e.to_string()))?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let not_before = at(leaf.validity().not_before.timestamp());
    let not_after = at(leaf.validity().not_after.timestamp());
    let mut warnings = Vec::new();
    if now > not_after {
        warnings.push(format!(
            "{}: certificate expired on {}; clients will refuse it",
            cert.display(),
            humantime::format_rfc3339_seconds(not_after)
        ));
    } else if now < not_before {
        warnings.push(format!(
            "{}: certificate is not valid until {}",
            cert.display(),
            humantime::format_rfc3339_seconds(not_before)
        ));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(n) => names.push(n.to_ascii_lowercase()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        names.push(std::net::Ipv4Addr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        names.push(std::net::Ipv6Addr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(LoadedCert { key: Arc::new(certified), not_after, names, warnings })
}

/// What the reloader compares to notice a replaced file: modification
/// time, size and inode (a rename over the file changes the inode even
/// within one clock tick).
pub type Fingerprint = (SystemTime, u64, u64);

/// A file's fingerprint, or `None` when it cannot be read.
pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}
