//! Private keys of ACME certificates as the control plane stores and sends
//! them: AES-256-GCM under a key derived (HKDF-SHA256) from the node token,
//! which every node and the control plane hold and nobody else does. The
//! store, the event log, the wire and a node's state file see only the
//! sealed form; a changed node token makes old seals unreadable, and the
//! control plane then orders a new certificate.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::{SecureRandom, SystemRandom};

/// Separates these seals from any other use of the token.
const SALT: &[u8] = b"outpost sealed certificate keys v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a sealed value")]
    Malformed,
    #[error("cannot be opened with this node token (changed since it was sealed, or tampered with)")]
    Key,
    #[error("no randomness: {0}")]
    Random(String),
}

/// What a site's ACME certificate key is sealed for: its site, so one
/// site's sealed key cannot be passed off as another's.
pub fn certificate_key(site: &str) -> String {
    format!("certificate key of site {site}")
}

fn key(token: &str, purpose: &str) -> LessSafeKey {
    let prk = Salt::new(HKDF_SHA256, SALT).extract(token.as_bytes());
    let info = [purpose.as_bytes()];
    let okm = prk.expand(&info, &AES_256_GCM).expect("32 bytes is a valid HKDF-SHA256 output length");
    let mut bytes = [0u8; 32];
    okm.fill(&mut bytes).expect("the output length matches the algorithm's key length");
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("an AES-256 key is 32 bytes"))
}

/// Seals `plain` for `purpose` (bound as associated data, so a seal made
/// for one site cannot be passed off as another's): hex of nonce, then
/// ciphertext and tag.
pub fn seal(token: &str, purpose: &str, plain: &[u8]) -> Result<String, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|e| SealError::Random(e.to_string()))?;
    let mut data = plain.to_vec();
    key(token, purpose)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.as_bytes()), &mut data)
        .map_err(|_| SealError::Key)?;
    let mut out = String::with_capacity(2 * (NONCE_LEN + data.len()));
    for b in nonce.iter().chain(&data) {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

/// Opens what [`seal`] made with the same token and purpose.
pub fn open(token: &str, purpose: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
    if !sealed.len().is_multiple_of(2) || !sealed.is_ascii() {
        return Err(SealError::Malformed);
    }
    let mut bytes = (0..sealed.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&sealed[i..i + 2], 16).map_err(|_| SealError::Malformed))
        .collect::<Result<Vec<u8>, _>>()?;
    if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(SealError::Malformed);
    }
    let mut body = bytes.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| SealError::Malformed)?;
    let plain = key(token, purpose)
        .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut body)
        .map_err(|_| SealError::Key)?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_opens_with_its_token_and_purpose_only() {
        let sealed = seal("t0ken", "site shop", b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!sealed.contains("BEGIN"), "nothing of the plain text shows");
        assert_eq!(open("t0ken", "site shop", &sealed).unwrap(), b"-----BEGIN PRIVATE KEY-----");
        assert_ne!(sealed, seal("t0ken", "site shop", b"-----BEGIN PRIVATE KEY-----").unwrap(), "fresh nonces");
        assert_eq!(open("other", "site shop", &sealed), Err(SealError::Key));
        assert_eq!(open("t0ken", "site blog", &sealed), Err(SealError::Key), "bound to its purpose");
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(open("t0ken", "site shop", std::str::from_utf8(&flipped).unwrap()), Err(SealError::Key));
        for bad in ["", "abc", "zz", &sealed[..20], "é"] {
            assert_eq!(open("t0ken", "site shop", bad), Err(SealError::Malformed), "{bad:?}");
        }
    }
}
