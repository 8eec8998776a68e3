//! The layout of a `multipart/byteranges` body (RFC 9110 §14.6), for any
//! server answering one request with several ranges of a representation.

use std::ops::RangeInclusive;

use bytes::Bytes;
use http::HeaderValue;

/// One piece of the body, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Boundary and part headers.
    Text(Bytes),
    /// The representation's bytes `start..end` (end exclusive).
    Range(u64, u64),
}

/// A multipart body: its pieces, its length and its `Content-Type`.
#[derive(Debug, Clone)]
pub struct Byteranges {
    pub parts: Vec<Part>,
    pub len: u64,
    pub content_type: HeaderValue,
}

/// Lays out `ranges` of a representation `len` bytes long whose own type
/// is `content_type`, separated by `boundary` (letters, digits and `-`).
pub fn byteranges(
    boundary: &str,
    content_type: Option<&HeaderValue>,
    ranges: &[RangeInclusive<u64>],
    len: u64,
) -> Byteranges {
    let mut parts = Vec::with_capacity(ranges.len() * 2 + 1);
    let mut total = 0u64;
    for r in ranges {
        let mut head = format!("\r\n--{boundary}\r\n");
        if let Some(ct) = content_type.and_then(|v| v.to_str().ok()) {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str(&format!("Content-Range: bytes {}-{}/{len}\r\n\r\n", r.start(), r.end()));
        total += head.len() as u64 + (r.end() - r.start() + 1);
        parts.push(Part::Text(Bytes::from(head)));
        parts.push(Part::Range(*r.start(), *r.end() + 1));
    }
    let tail = format!("\r\n--{boundary}--\r\n");
    total += tail.len() as u64;
    parts.push(Part::Text(Bytes::from(tail)));
    let content_type = HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
        .unwrap_or_else(|_| HeaderValue::from_static("multipart/byteranges"));
    Byteranges { parts, len: total, content_type }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_is_the_sum_of_the_parts_and_each_part_names_its_range() {
        let ct = HeaderValue::from_static("text/plain");
        let body = byteranges("B", Some(&ct), &[0..=9, 90..=99], 100);
        let mut text = String::new();
        let mut len = 0;
        for p in &body.parts {
            match p {
                Part::Text(b) => {
                    text.push_str(std::str::from_utf8(b).unwrap());
                    len += b.len() as u64;
                }
                Part::Range(s, e) => {
                    text.push_str(&format!("<{s}..{e}>"));
                    len += e - s;
                }
            }
        }
        assert_eq!(
            text,
            "\r\n--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-9/100\r\n\r\n<0..10>\
             \r\n--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 90-99/100\r\n\r\n<90..100>\r\n--B--\r\n"
        );
        assert_eq!(body.len, len);
        assert_eq!(body.content_type, "multipart/byteranges; boundary=B");
    }
}
