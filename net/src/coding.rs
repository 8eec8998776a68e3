//! Content codings (RFC 9110 §8.4): what a request's `Accept-Encoding`
//! allows, and the encoders and decoders for the codings Outpost makes and
//! reads. Shared by the caching engine and the test origin.

use std::io::{self, Write};

use crate::HeaderLookup;
use http::header::ACCEPT_ENCODING;

pub use outpost_config::coding::{ALL, Coding};

/// Brotli quality. Measured on 100 KiB and 2 MiB of text
/// (`net/examples/codings.rs`): 7 makes 4–5 % fewer bytes than 6 for 6–27 %
/// more time, while 9 takes 2.5 times 7's for 4–7 % fewer; a representation
/// is made while its first client waits.
pub const BROTLI_QUALITY: u32 = 7;
/// zstd level: 9 matches brotli 6's size in half its time; 3 is 3–5 %
/// larger, 12 four times slower.
pub const ZSTD_LEVEL: i32 = 9;
/// gzip level: zlib's default, within 1 % of level 9's size in 80 % of
/// its time.
pub const GZIP_LEVEL: u32 = 6;

/// What a request's `Accept-Encoding` allows: a weight from 0 to 1000 for
/// each coding (RFC 9110 §12.5.3).
///
/// A request without the field gets `identity` only. The RFC would allow
/// any coding then, but clients that send no `Accept-Encoding` (scripts,
/// old tools, health checks) rarely decode one, and no server answers them
/// with one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    weights: [u16; 4],
}

/// `identity`'s weight when a request's list neither names it nor has `*`:
/// acceptable, after anything the client named.
const IDENTITY_UNLISTED: u16 = 1;

impl Accepted {
    /// Reads every `Accept-Encoding` line. A member whose weight is not a
    /// valid qvalue is ignored; codings this module does not know are
    /// ignored; a coding listed twice keeps its highest weight.
    pub fn parse(headers: &impl HeaderLookup) -> Accepted {
        let mut lines = headers.get_all(&ACCEPT_ENCODING).iter().peekable();
        if lines.peek().is_none() {
            return Accepted { weights: [1000, 0, 0, 0] };
        }
        let mut named: [Option<u16>; 4] = [None; 4];
        let mut star: Option<u16> = None;
        for line in lines {
            let Ok(line) = line.to_str() else { continue };
            for member in line.split(',') {
                let mut parts = member.split(';');
                let name = parts.next().unwrap_or_default().trim();
                if name.is_empty() {
                    continue;
                }
                let mut weight = Some(1000);
                for param in parts {
                    let (k, v) = param.split_once('=').unwrap_or((param, ""));
                    if k.trim().eq_ignore_ascii_case("q") {
                        weight = qvalue(v.trim());
                    }
                }
                let Some(weight) = weight else { continue };
                let slot = if name == "*" {
                    &mut star
                } else if let Some(c) = Coding::parse(name) {
                    &mut named[c.index()]
                } else {
                    continue;
                };
                *slot = Some(slot.map_or(weight, |w| w.max(weight)));
            }
        }
        let mut weights = [0; 4];
        for c in ALL {
            let unlisted = if c == Coding::Identity { IDENTITY_UNLISTED } else { 0 };
            weights[c.index()] = named[c.index()].or(star).unwrap_or(unlisted);
        }
        Accepted { weights }
    }

    /// The client's weight for `coding`, 0 (refused) to 1000.
    pub fn weight(&self, coding: Coding) -> u16 {
        self.weights[coding.index()]
    }

    pub fn accepts(&self, coding: Coding) -> bool {
        self.weight(coding) > 0
    }

    /// The coding of `offer` the client weighs most, ties going to the
    /// earlier in `offer`; `None` when it refuses them all.
    pub fn best(&self, offer: &[Coding]) -> Option<Coding> {
        let mut best: Option<(Coding, u16)> = None;
        for &c in offer {
            let w = self.weight(c);
            if w > 0 && best.is_none_or(|(_, bw)| w > bw) {
                best = Some((c, w));
            }
        }
        best.map(|(c, _)| c)
    }
}

/// A qvalue (RFC 9110 §12.4.2) in thousandths: `0`, `0.5`, `1`, `1.000`;
/// `None` for anything else (`1e0`, `+1`, `1.5`, `0.0001`).
pub fn qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths =
        frac.bytes().chain(std::iter::repeat(b'0')).take(3).fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// A body changed from one coding to another as it passes: encoded into a
/// coding, or decoded from one. The same input gives the same bytes however
/// it is split into pieces, so a representation made as a response streams
/// is the one made whole and stored (their `ETag` is the same).
pub struct Recoder {
    inner: Inner,
    /// Most bytes a decoder may produce.
    limit: u64,
    produced: u64,
}

enum Inner {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Gunzip(flate2::write::MultiGzDecoder<Capped>),
    Unbr(Box<brotli::DecompressorWriter<Capped>>),
    Unzstd(zstd::stream::write::Decoder<'static, Capped>),
    Same,
}

impl Recoder {
    /// Encodes into `coding` a body of `len` bytes (when known: the larger
    /// ones get a larger window, and zstd writes the size in its frame).
    pub fn encoder(coding: Coding, len: Option<u64>) -> io::Result<Recoder> {
        let inner = match coding {
            Coding::Identity => Inner::Same,
            Coding::Gzip => {
                Inner::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(GZIP_LEVEL)))
            }
            Coding::Br => {
                // A window as large as the body (up to brotli's 16 MiB)
                // finds the repeats of a large file.
                let size = len.unwrap_or(1 << 22).max(1 << 16);
                let lgwin = (u64::BITS - size.leading_zeros()).clamp(16, 24);
                Inner::Br(Box::new(brotli::CompressorWriter::new(Vec::new(), 4096, BROTLI_QUALITY, lgwin)))
            }
            Coding::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
                e.set_pledged_src_size(len)?;
                e.include_contentsize(len.is_some())?;
                Inner::Zstd(e)
            }
        };
        Ok(Recoder { inner, limit: u64::MAX, produced: 0 })
    }

    /// Decodes from `coding`; an error once the output passes `limit`
    /// bytes (a small body can hold a huge one).
    pub fn decoder(coding: Coding, limit: u64) -> io::Result<Recoder> {
        let out = Capped { buf: Vec::new(), left: limit, limit };
        let inner = match coding {
            Coding::Identity => Inner::Same,
            Coding::Gzip => Inner::Gunzip(flate2::write::MultiGzDecoder::new(out)),
            Coding::Br => Inner::Unbr(Box::new(brotli::DecompressorWriter::new(out, 4096))),
            Coding::Zstd => Inner::Unzstd(zstd::stream::write::Decoder::new(out)?),
        };
        Ok(Recoder { inner, limit, produced: 0 })
    }

    /// Takes in `data`; returns the output it makes ready (often nothing:
    /// encoders gather a block first).
    pub fn push(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        let out = match &mut self.inner {
            Inner::Same => data.to_vec(),
            Inner::Gzip(w) => drain(w, data, |w| w.get_mut())?,
            Inner::Br(w) => drain(w.as_mut(), data, |w| w.get_mut())?,
            Inner::Zstd(w) => drain(w, data, |w| w.get_mut())?,
            Inner::Gunzip(w) => drain(w, data, |w| &mut w.get_mut().buf)?,
            Inner::Unbr(w) => drain(w.as_mut(), data, |w| &mut w.get_mut().buf)?,
            Inner::Unzstd(w) => drain(w, data, |w| &mut w.get_mut().buf)?,
        };
        self.count(out)
    }

    /// Ends the body: the last of the output; an error when the input was
    /// not a whole body in the coding being decoded.
    pub fn finish(self) -> io::Result<Vec<u8>> {
        let mut this = self;
        let out = match std::mem::replace(&mut this.inner, Inner::Same) {
            Inner::Same => Vec::new(),
            Inner::Gzip(w) => w.finish()?,
            Inner::Br(w) => w.into_inner(),
            Inner::Zstd(w) => w.finish()?,
            Inner::Gunzip(w) => w.finish()?.buf,
            Inner::Unbr(mut w) => {
                w.close()?;
                w.into_inner().map_err(|_| io::Error::new(io::ErrorKind::UnexpectedEof, "brotli body ends early"))?.buf
            }
            Inner::Unzstd(w) => w.finish()?.buf,
        };
        this.count(out)
    }

    fn count(&mut self, out: Vec<u8>) -> io::Result<Vec<u8>> {
        self.produced += out.len() as u64;
        if self.produced > self.limit {
            return Err(io::Error::other(format!("decodes to more than {} bytes", self.limit)));
        }
        Ok(out)
    }
}

impl std::fmt::Debug for Recoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recoder").field("produced", &self.produced).field("limit", &self.limit).finish_non_exhaustive()
    }
}

/// Where a decoder writes: refused once more than `left` bytes would have
/// been written, so a small body that decodes to a huge one fails within
/// its limit rather than after it has all been made.
struct Capped {
    buf: Vec<u8>,
    left: u64,
    limit: u64,
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let limit = self.limit;
        self.left = self
            .left
            .checked_sub(data.len() as u64)
            .ok_or_else(|| io::Error::other(format!("decodes to more than {limit} bytes")))?;
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `data` to `w`, then takes what reached its buffer.
fn drain<W: Write>(w: &mut W, data: &[u8], buf: impl Fn(&mut W) -> &mut Vec<u8>) -> io::Result<Vec<u8>> {
    w.write_all(data)?;
    Ok(std::mem::take(buf(w)))
}

/// `data` in `coding`, as stored representations are made.
pub fn encode(coding: Coding, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut r = Recoder::encoder(coding, Some(data.len() as u64))?;
    let mut out = r.push(data)?;
    out.extend(r.finish()?);
    Ok(out)
}

/// `data` decoded from `coding`; an error when it is not a whole body in
/// that coding or decodes to more than `limit` bytes.
pub fn decode(coding: Coding, data: &[u8], limit: u64) -> io::Result<Vec<u8>> {
    let mut r = Recoder::decoder(coding, limit)?;
    let mut out = r.push(data)?;
    out.extend(r.finish()?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn accepted(lines: &[&'static str]) -> Accepted {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(ACCEPT_ENCODING, HeaderValue::from_static(l));
        }
        Accepted::parse(&h)
    }

    fn weights(a: Accepted) -> [u16; 4] {
        [a.weight(Coding::Br), a.weight(Coding::Zstd), a.weight(Coding::Gzip), a.weight(Coding::Identity)]
    }

    #[test]
    fn accept_encoding_follows_rfc_9110() {
        // br, zstd, gzip, identity
        assert_eq!(weights(accepted(&[])), [0, 0, 0, 1000], "no field: identity only");
        assert_eq!(weights(accepted(&[""])), [0, 0, 0, 1], "empty field: identity only");
        assert_eq!(weights(accepted(&["gzip, deflate, br, zstd"])), [1000, 1000, 1000, 1]);
        assert_eq!(weights(accepted(&["GZIP;Q=0.5", " br ; q=0.8 "])), [800, 0, 500, 1]);
        assert_eq!(weights(accepted(&["x-gzip"])), [0, 0, 1000, 1]);
        assert_eq!(weights(accepted(&["*"])), [1000, 1000, 1000, 1000]);
        assert_eq!(weights(accepted(&["*;q=0"])), [0, 0, 0, 0], "nothing, not even identity");
        assert_eq!(weights(accepted(&["gzip, *;q=0"])), [0, 0, 1000, 0]);
        assert_eq!(weights(accepted(&["br;q=0, *"])), [0, 1000, 1000, 1000]);
        assert_eq!(weights(accepted(&["identity;q=0, gzip"])), [0, 0, 1000, 0]);
        assert_eq!(weights(accepted(&["gzip;q=0.1, gzip"])), [0, 0, 1000, 1], "highest weight wins");
        // Invalid weights drop the member, not the field.
        assert_eq!(weights(accepted(&["br;q=2, gzip;q=0.0001, zstd;q=x, gzip;q=1.5"])), [0, 0, 0, 1]);
        assert_eq!(weights(accepted(&["br;q=1.000, zstd;q=0., gzip;q=0.001"])), [1000, 0, 1, 1]);
        assert_eq!(weights(accepted(&["compress, deflate, sdch"])), [0, 0, 0, 1], "unknown codings ignored");
    }

    #[test]
    fn the_best_coding_breaks_ties_in_the_servers_order() {
        let a = accepted(&["gzip, br, zstd"]);
        assert_eq!(a.best(&ALL), Some(Coding::Br));
        assert_eq!(a.best(&[Coding::Gzip, Coding::Identity]), Some(Coding::Gzip));
        assert_eq!(accepted(&["br;q=0.5, gzip"]).best(&ALL), Some(Coding::Gzip));
        assert_eq!(accepted(&[]).best(&ALL), Some(Coding::Identity));
        assert_eq!(accepted(&["*;q=0"]).best(&ALL), None);
        assert_eq!(accepted(&["identity;q=0"]).best(&[Coding::Identity]), None);
    }

    #[test]
    fn every_coding_round_trips_and_decoding_is_bounded() {
        let text: Vec<u8> =
            (0..50_000u32).flat_map(|i| format!("line {} of the text\n", i % 97).into_bytes()).collect();
        for c in ALL {
            let encoded = encode(c, &text).unwrap();
            if c != Coding::Identity {
                assert!(encoded.len() * 10 < text.len(), "{c:?}: {} of {}", encoded.len(), text.len());
            }
            assert_eq!(decode(c, &encoded, text.len() as u64).unwrap(), text, "{c:?}");
            if c != Coding::Identity {
                assert!(decode(c, &encoded, text.len() as u64 - 1).is_err(), "{c:?}: past the limit");
                assert!(decode(c, &encoded[..encoded.len() / 2], u64::MAX).is_err(), "{c:?}: truncated");
                assert!(decode(c, b"not compressed at all", u64::MAX).is_err(), "{c:?}: garbage");
            }
        }
    }

    #[test]
    fn a_body_streamed_in_pieces_encodes_to_the_same_bytes() {
        let text: Vec<u8> = (0..40_000u32).flat_map(|i| format!("{} {}\n", i % 89, i % 13).into_bytes()).collect();
        let mut seed = 7u64;
        for c in ALL {
            let whole = encode(c, &text).unwrap();
            for _ in 0..3 {
                let mut r = Recoder::encoder(c, Some(text.len() as u64)).unwrap();
                let mut out = Vec::new();
                let mut rest = &text[..];
                while !rest.is_empty() {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let n = ((seed >> 33) as usize % 70_000 + 1).min(rest.len());
                    out.extend(r.push(&rest[..n]).unwrap());
                    rest = &rest[n..];
                }
                out.extend(r.finish().unwrap());
                assert!(out == whole, "{c:?}: pieces gave other bytes");
            }
            let mut d = Recoder::decoder(c, u64::MAX).unwrap();
            let mut plain = Vec::new();
            for piece in whole.chunks(777) {
                plain.extend(d.push(piece).unwrap());
            }
            plain.extend(d.finish().unwrap());
            assert!(plain == text, "{c:?}: decoded in pieces");
        }
    }
}
