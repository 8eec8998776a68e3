//! Cache keys against a client who forges them: a request header value
//! made so that a public hash of its key would be another value's.

use http::{HeaderMap, HeaderValue};
use outpost_proxy::key::{Scope, material};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;

/// The first 128 bytes of XXH3's published default secret (`kSecret`).
/// `acc` and `finish` are checked against the xxhash crate, so a wrong
/// byte here fails the test rather than weakening it.
const SECRET: [u8; 128] = [
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c, 0xde, 0xd4, 0x6d,
    0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f, 0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0,
    0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21, 0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0,
    0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c, 0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b,
    0x1b, 0x53, 0x2e, 0xa3, 0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac,
    0xd8, 0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d, 0x8a, 0x51,
    0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
];

fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn mix16(m: &[u8], at: usize, s: usize) -> u64 {
    let p = u128::from(word(m, at) ^ word(&SECRET, s)) * u128::from(word(m, at + 8) ^ word(&SECRET, s + 8));
    (p as u64) ^ ((p >> 64) as u64)
}

fn sum(m: &[u8], at: usize) -> u64 {
    word(m, at).wrapping_add(word(m, at + 8))
}

/// XXH3-128 (default secret, no seed) of 17 to 128 bytes, as its two
/// accumulators before the final mix.
fn acc(m: &[u8]) -> (u64, u64) {
    let len = m.len();
    assert!((17..=128).contains(&len));
    let (mut lo, mut hi) = ((len as u64).wrapping_mul(P1), 0u64);
    let rounds = [(48, len.wrapping_sub(64), 96), (32, len.wrapping_sub(48), 64), (16, len.wrapping_sub(32), 32)];
    let n = [96, 64, 32].iter().filter(|&&over| len > over).count();
    for &(f, b, s) in rounds[3 - n..].iter().chain([(0, len - 16, 0)].iter()) {
        lo = lo.wrapping_add(mix16(m, f, s)) ^ sum(m, b);
        hi = hi.wrapping_add(mix16(m, b, s + 16)) ^ sum(m, f);
    }
    (lo, hi)
}

fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 37;
    h = h.wrapping_mul(0x1656_6791_9E37_79F9);
    h ^ (h >> 32)
}

fn finish((lo, hi): (u64, u64), len: usize) -> u128 {
    let low = avalanche(lo.wrapping_add(hi));
    let high = 0u64.wrapping_sub(avalanche(
        lo.wrapping_mul(P1).wrapping_add(hi.wrapping_mul(P4)).wrapping_add((len as u64).wrapping_mul(P2)),
    ));
    u128::from(low) | (u128::from(high) << 64)
}

/// A byte a header value may hold that is not whitespace.
fn allowed(b: u8) -> bool {
    (0x21..0x7f).contains(&b) || b >= 0x80
}

fn inverse(d: u64) -> u64 {
    let mut x = d;
    for _ in 0..6 {
        x = x.wrapping_mul(2u64.wrapping_sub(d.wrapping_mul(x)));
    }
    x
}

/// A header value `v` such that `prefix ++ v ++ [0xff, 0x00]` (a key's
/// material with `v` as its last header's value) is 128 bytes whose XXH3-128
/// is `victim`'s. Each round of XXH3 mixes two 16-byte words by a product
/// of their halves XORed with the secret; a half equal to the secret makes
/// the product zero, a half one off it makes the product the other half.
/// With the secret public, the accumulators can be steered round by round
/// to any value, and the final mix, a bijection, follows.
fn forge(victim: &[u8], prefix: &[u8]) -> Vec<u8> {
    let len = 128usize;
    assert!(prefix.len() <= 64, "the value must cover the last 64 bytes");
    let (lv, hv) = acc(victim);
    let a = lv.wrapping_add(hv);
    let b = lv.wrapping_mul(P1).wrapping_add(hv.wrapping_mul(P4)).wrapping_add((victim.len() as u64).wrapping_mul(P2));
    // The accumulators (lo, hi) that finish to the victim's hash.
    let c = b.wrapping_sub((len as u64).wrapping_mul(P2)).wrapping_sub(a.wrapping_mul(P4));
    assert_eq!(c % 4, 0, "the victim's length must be a multiple of 4");
    let lo_t = (c >> 2).wrapping_mul(inverse(P1.wrapping_sub(P4) >> 2));
    let hi_t = a.wrapping_sub(lo_t);
    let mut m = vec![b'a'; len];
    m[..prefix.len()].copy_from_slice(prefix);
    m[len - 2..].copy_from_slice(&[0xff, 0x00]);
    let put = |m: &mut Vec<u8>, at: usize, w: u64| m[at..at + 8].copy_from_slice(&w.to_le_bytes());
    let mut state = 0x243F_6A88_85A3_08D3u64;
    for _ in 0..50_000_000u64 {
        // Other filler each try: the words of rounds two and three.
        for at in (80..96).chain(96..112) {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            m[at] = b'0' + ((state >> 33) % 75) as u8;
        }
        // Round four's back word: low half the secret's, so its product
        // is zero and its high half sets `lo` alone.
        put(&mut m, 112, word(&SECRET, 16));
        // Round one's back word: low half one off the secret's, so its
        // product is its high half, which sets `hi`.
        put(&mut m, 64, word(&SECRET, 112) ^ 1);
        let h3 = hi_t ^ sum(&m, 0);
        let h2 = (h3 ^ sum(&m, 16)).wrapping_sub(mix16(&m, 96, 48));
        let h1 = (h2 ^ sum(&m, 32)).wrapping_sub(mix16(&m, 80, 80));
        let b1_hi = (h1 ^ sum(&m, 48)) ^ word(&SECRET, 120);
        put(&mut m, 72, b1_hi);
        if !m[72..80].iter().all(|&b| allowed(b)) {
            continue;
        }
        let mut lo = (len as u64).wrapping_mul(P1);
        for (f, bk, s) in [(48, 64, 96), (32, 80, 64), (16, 96, 32)] {
            lo = lo.wrapping_add(mix16(&m, f, s)) ^ sum(&m, bk);
        }
        let hi4 = (lo_t ^ lo.wrapping_add(mix16(&m, 0, 0))).wrapping_sub(word(&SECRET, 16));
        let bytes = hi4.to_le_bytes();
        if bytes[6..] != [0xff, 0x00] || !bytes[..6].iter().all(|&b| allowed(b)) {
            continue;
        }
        put(&mut m, 120, hi4);
        assert_eq!(acc(&m), (lo_t, hi_t));
        return m[prefix.len()..len - 2].to_vec();
    }
    panic!("no value found");
}

/// A site keyed by `X-Device`, whose origin gets a Host of its own
/// (`o.test`), so keys leave the client's out.
fn site(origin: std::net::SocketAddr) -> String {
    format!(
        "[site]\nid = \"t\"\nhosts = [\"t.test\"]\n\n[[origin]]\nurl = \"http://{origin}\"\nhost = \"o.test\"\n\n\
         [cache]\ndefault_ttl = \"60s\"\nkey_headers = [\"x-device\"]\n"
    )
}

/// One GET on its own connection, with `x-device` set to these bytes:
/// its status line and `Cache-Status`.
async fn get_as(edge: &Edge, path: &str, device: &[u8]) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\nX-Device: ").into_bytes();
    req.extend_from_slice(device);
    req.extend_from_slice(b"\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    let text = String::from_utf8_lossy(&got);
    let status = text.lines().next().unwrap_or_default().to_string();
    let cache_status = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("cache-status:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    (status, cache_status)
}

/// Keys were once a public hash (XXH3-128) of the request's parts, checked
/// against the stored URL alone. A client could then forge an `X-Device`
/// value (on a site keyed by it) whose key was another value's, have its
/// own answer stored there, and have it served to every client who sends
/// that other value. Keys are now hashed under the cache's secret: the
/// forged value is a key of its own.
#[tokio::test]
async fn a_header_value_forged_to_share_another_values_public_hash_gets_its_own_copy() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site(origin.addr)).await;
    let path = "/dev";
    let sites = edge.engine.sites();
    let s = sites.get("t").unwrap();
    let scope = Scope { proto: Some("http"), host: None };
    let material_of = |device: &[u8]| {
        let mut h = HeaderMap::new();
        h.insert("x-device", HeaderValue::from_bytes(device).unwrap());
        let mut m = Vec::new();
        material(s, scope, path, &h, &mut m);
        m
    };
    // A victim's value whose material is a multiple of 4 bytes long.
    let victim = ["phone", "tablet", "mobile", "desktop"]
        .into_iter()
        .find(|v| material_of(v.as_bytes()).len() % 4 == 0)
        .unwrap();
    let victim_material = material_of(victim.as_bytes());
    let empty = material_of(b"");
    let forged = forge(&victim_material, &empty[..empty.len() - 2]);
    let forged_material = material_of(&forged);
    assert_eq!(finish(acc(&victim_material), victim_material.len()), xxhash_rust::xxh3::xxh3_128(&victim_material));
    assert_eq!(
        xxhash_rust::xxh3::xxh3_128(&forged_material),
        xxhash_rust::xxh3::xxh3_128(&victim_material),
        "the forged value has the victim's public hash"
    );
    drop(sites);

    // The forger's request is fetched and stored first.
    let (status, cs) = get_as(&edge, path, &forged).await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(cs.contains("fwd=uri-miss"), "{cs}");
    let (_, cs) = get_as(&edge, path, &forged).await;
    assert!(cs.contains("; hit"), "the forged value's own copy: {cs}");
    // The victim's value is a key of its own: fetched, not the forger's copy.
    let (status, cs) = get_as(&edge, path, victim.as_bytes()).await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(!cs.contains("; hit"), "{victim} was served the forger's copy: {cs}");
    assert_eq!(origin.count("/dev").await, 2, "each value fetched once");
    assert!(get_as(&edge, path, victim.as_bytes()).await.1.contains("; hit"), "{victim}'s own copy");
}
