//! A local certificate authority: `outpost up` creates one in its data
//! folder and issues the example site's certificate from it, and tests use
//! one to build the certificates they need. Keys are ECDSA P-256.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// How long a certificate issued for `outpost up` stays valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Validity of the local CA itself.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issued certificates start a little in the past, for clocks that differ.
const BACKDATE: Duration = Duration::from_secs(3600);

/// A certificate and its key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `<stem>.pem` (the certificate) and `<stem>.key` (mode 0600)
    /// into `dir`, replacing them atomically; returns both paths.
    pub fn write(&self, dir: &Path, stem: &str) -> io::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        write_file(&key, self.key_pem.as_bytes(), true)?;
        write_file(&cert, self.cert_pem.as_bytes(), false)?;
        Ok((cert, key))
    }
}

/// Replaces `path` with `bytes` atomically; a `secret` file (a key) is
/// readable by its owner only, from its first byte.
pub fn write_file(path: &Path, bytes: &[u8], secret: bool) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // A leftover from a crash may carry other permissions: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// DNS names (`*.example.test` for a wildcard) and IP addresses.
    pub names: &'a [&'a str],
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// A client certificate (for mutual TLS) rather than a server one.
    pub client: bool,
}

impl<'a> Request<'a> {
    /// A server certificate for `names`, valid from an hour ago for `validity`.
    pub fn server(names: &'a [&'a str], validity: Duration) -> Request<'a> {
        let now = SystemTime::now();
        Request { names, not_before: now - BACKDATE, not_after: now + validity, client: false }
    }
}

fn err(e: rcgen::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// A certificate authority that can issue server and client certificates.
#[derive(Debug)]
pub struct LocalCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl LocalCa {
    /// A new CA named `name`.
    pub fn generate(name: &str) -> io::Result<LocalCa> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name.remove(DnType::CommonName);
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(DnType::OrganizationName, "Outpost");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(LocalCa { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA in `dir` (`ca.pem`, `ca.key`), created there on first use.
    pub fn load_or_create(dir: &Path, name: &str) -> io::Result<LocalCa> {
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert.is_file() && key.is_file() {
            let cert_pem = std::fs::read_to_string(&cert)?;
            let key = KeyPair::from_pem(&std::fs::read_to_string(&key)?)
                .map_err(|e| io::Error::other(format!("{}: {e}", key.display())))?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
                .map_err(|e| io::Error::other(format!("{}: {e}", cert.display())))?;
            return Ok(LocalCa { cert_pem, issuer });
        }
        std::fs::create_dir_all(dir)?;
        let ca = LocalCa::generate(name)?;
        write_file(&key, ca.issuer.key().serialize_pem().as_bytes(), true)?;
        write_file(&cert, ca.cert_pem.as_bytes(), false)?;
        Ok(ca)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `req`.
    pub fn issue(&self, req: &Request<'_>) -> io::Result<Issued> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        for name in req.names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().map_err(err)?),
            };
            params.subject_alt_names.push(san);
        }
        params.distinguished_name.remove(DnType::CommonName);
        params.distinguished_name.push(DnType::CommonName, req.names.first().copied().unwrap_or("outpost"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![if req.client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        params.use_authority_key_identifier_extension = true;
        params.not_before = req.not_before.into();
        params.not_after = req.not_after.into();
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}
