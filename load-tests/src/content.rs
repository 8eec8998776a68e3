//! The test origin's deterministic object bytes.
//!
//! Every synthetic object's body is a pure function of a seed (derived from
//! its path, version and varied header values) and the byte offset, so any
//! client can check any byte range it received without holding a copy.

/// The seed of an object: its path (without query), its version (bumped by
/// `POST /__origin/bump`) and the values of the request headers its `Vary`
/// names, in order.
pub fn seed(path: &str, version: u64, vary_values: &[&str]) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike std's hashers.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(path.as_bytes());
    eat(&version.to_le_bytes());
    for v in vary_values {
        eat(&[0xff]);
        eat(v.as_bytes());
    }
    h
}

fn mix(mut z: u64) -> u64 {
    // splitmix64's finaliser: every 8-byte block looks random and is
    // independent of its neighbours, so offsets can be computed directly.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the object's bytes starting at `offset`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let block = mix(seed ^ (pos / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&block[start..start + n]);
        i += n;
        pos += n as u64;
    }
}

/// Bytes per line of a text object.
pub const TEXT_LINE: u64 = 64;

/// Words text objects are made of: markup and code, as static text is.
const WORDS: [&str; 64] = [
    "<div",
    "class=",
    "\"row\">",
    "</div>",
    "<span>",
    "</span>",
    "<a",
    "href=",
    "\"/static/",
    "app.js\"",
    "function",
    "return",
    "const",
    "let",
    "var",
    "if",
    "else",
    "for",
    "while",
    "=>",
    "{",
    "}",
    "(",
    ")",
    "null;",
    "true;",
    "false;",
    "this.",
    "document.",
    "window.",
    "color:",
    "margin:",
    "0",
    "1px",
    "16px",
    "solid",
    "#fff;",
    "#333;",
    "display:",
    "flex;",
    "none;",
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "with",
    "as",
    "on",
    "by",
    "data-id=",
    "\"item\"",
    "<li>",
    "</li>",
    "<ul>",
    "</ul>",
    "<p>",
    "</p>",
    "import",
    "export",
    "default",
];

/// Line `n` of a text object: words chosen by the seed, spaces to pad,
/// a newline; each line is computed alone, so any range can be checked.
fn text_line(seed: u64, n: u64) -> [u8; TEXT_LINE as usize] {
    let mut line = [b' '; TEXT_LINE as usize];
    line[TEXT_LINE as usize - 1] = b'\n';
    let mut bits = mix(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x7e47);
    let mut at = 0;
    let mut used = 0;
    loop {
        if used == 60 {
            bits = mix(bits);
            used = 0;
        }
        let word = WORDS[(bits >> used) as usize & 63].as_bytes();
        used += 6;
        if at + word.len() + 1 > TEXT_LINE as usize - 1 {
            return line;
        }
        line[at..at + word.len()].copy_from_slice(word);
        at += word.len() + 1;
    }
}

/// Fills `buf` with a text object's bytes starting at `offset`: compressible
/// (about 4:1 with gzip), and as checkable at any offset as [`fill`].
pub fn fill_text(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let line = text_line(seed, pos / TEXT_LINE);
        let start = (pos % TEXT_LINE) as usize;
        let n = (TEXT_LINE as usize - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&line[start..start + n]);
        i += n;
        pos += n as u64;
    }
}

/// The bytes `offset..offset + len` of a text object.
pub fn text(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    fill_text(seed, offset, &mut buf);
    buf
}

/// The bytes `offset..offset + len` of an object.
pub fn bytes(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    fill(seed, offset, &mut buf);
    buf
}

/// Where `body` first differs from the object's bytes at `offset`, if anywhere.
pub fn first_mismatch(seed: u64, offset: u64, body: &[u8]) -> Option<u64> {
    let mut expected = [0u8; 4096];
    for (n, chunk) in body.chunks(expected.len()).enumerate() {
        let at = offset + (n * expected.len()) as u64;
        let want = &mut expected[..chunk.len()];
        fill(seed, at, want);
        if let Some(i) = chunk.iter().zip(want.iter()).position(|(a, b)| a != b) {
            return Some(at + i as u64);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_text_and_any_slice_matches_the_whole() {
        let s = seed("/t", 0, &[]);
        let whole = text(s, 0, 10_000);
        assert!(whole.iter().all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n'));
        assert_eq!(whole.iter().filter(|b| **b == b'\n').count(), 10_000 / 64);
        for (off, len) in [(0, 1), (3, 130), (63, 2), (500, 500), (9_999, 1)] {
            assert_eq!(text(s, off as u64, len), whole[off..off + len]);
        }
        assert_ne!(text(seed("/u", 0, &[]), 0, 64), whole[..64], "the seed chooses the words");
    }

    #[test]
    fn any_slice_matches_the_whole() {
        let s = seed("/a", 0, &[]);
        let whole = bytes(s, 0, 1000);
        for (off, len) in [(0, 1), (3, 13), (7, 9), (500, 500), (999, 1)] {
            assert_eq!(bytes(s, off as u64, len), whole[off..off + len]);
        }
        assert_eq!(first_mismatch(s, 100, &whole[100..]), None);
        let mut bad = whole.clone();
        bad[777] ^= 1;
        assert_eq!(first_mismatch(s, 0, &bad), Some(777));
    }

    #[test]
    fn seeds_separate_objects() {
        let a = seed("/a", 0, &[]);
        assert_ne!(a, seed("/b", 0, &[]));
        assert_ne!(a, seed("/a", 1, &[]));
        assert_ne!(seed("/a", 0, &["en"]), seed("/a", 0, &["de"]));
        assert_ne!(bytes(a, 0, 64), bytes(seed("/b", 0, &[]), 0, 64));
    }
}
