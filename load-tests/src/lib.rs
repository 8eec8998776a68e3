//! Outpost's black-box test tooling: the test origin ([`origin`]), the
//! deterministic content it serves ([`content`]) and a byte-exact recording
//! origin ([`raw`]), the load runner ([`runner`]) and the benchmarks' lean
//! load client ([`sink`]). It talks HTTP only and depends on no engine crate
//! (only on `outpost-net`, for the layout of multipart range bodies), so it
//! measures Outpost the way a customer's origin and clients see it.

pub mod content;
pub mod origin;
pub mod raw;
pub mod runner;
pub mod sink;

pub use origin::OriginServer;

/// The certificates in the PEM file `path`, as the roots a client trusts;
/// an error when there is no certificate in it.
pub(crate) fn ca_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("`{}`: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    if roots.add_parsable_certificates(certs).0 == 0 {
        return Err(format!("`{}`: no certificate in it", path.display()));
    }
    Ok(roots)
}
