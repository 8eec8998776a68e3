//! Turning a representation (synthetic object or file) into a response:
//! conditional requests (RFC 9110 §13), ranges (§14, including
//! multipart/byteranges) and streamed bodies.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use outpost_net::multipart::{Part, byteranges};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::content;

pub(crate) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Where the bytes come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Synthetic {
        seed: u64,
        text: bool,
    },
    /// Bytes made in advance (an encoded body).
    Memory(Bytes),
    File {
        path: PathBuf,
    },
}

/// One representation of a resource, ready to answer any request for it.
#[derive(Debug)]
pub(crate) struct Repr {
    pub(crate) status: StatusCode,
    pub(crate) len: u64,
    pub(crate) etag: Option<HeaderValue>,
    pub(crate) last_modified: Option<SystemTime>,
    /// Content-Type, caching headers and any others to send.
    pub(crate) headers: HeaderMap,
    pub(crate) source: Source,
    pub(crate) chunk: usize,
    pub(crate) chunk_delay: Duration,
    pub(crate) abort_after: Option<u64>,
    pub(crate) unknown_length: bool,
}

/// What the response turned out to be, for the origin's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Full,
    NotModified,
    Partial,
    Unsatisfiable,
}

pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

fn strip_weak(tag: &str) -> &str {
    tag.trim().strip_prefix("W/").unwrap_or(tag.trim())
}

/// `If-None-Match` uses the weak comparison: `W/"a"` matches `"a"`.
fn none_match(header: &str, etag: &str) -> bool {
    header.split(',').any(|t| t.trim() == "*" || strip_weak(t) == strip_weak(etag))
}

fn http_date(t: SystemTime) -> HeaderValue {
    HeaderValue::from_str(&httpdate::fmt_http_date(t)).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Repr {
    fn base_headers(&self, resp: &mut HeaderMap) {
        resp.extend(self.headers.clone());
        if let Some(e) = &self.etag {
            resp.insert(header::ETAG, e.clone());
        }
        if let Some(lm) = self.last_modified {
            resp.insert(header::LAST_MODIFIED, http_date(lm));
        }
    }

    fn is_not_modified(&self, req: &HeaderMap) -> bool {
        if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
            return self.etag.as_ref().and_then(|e| e.to_str().ok()).is_some_and(|e| none_match(inm, e));
        }
        let ims = req.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok());
        match (ims.and_then(|v| httpdate::parse_http_date(v).ok()), self.last_modified) {
            (Some(since), Some(lm)) => seconds(lm) <= seconds(since),
            _ => false,
        }
    }

    /// `If-Range` lets a range through only when the validator still matches
    /// (strong comparison for tags, exact date for Last-Modified).
    fn if_range_holds(&self, req: &HeaderMap) -> bool {
        let Some(v) = req.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else { return true };
        if v.starts_with('"') {
            return self.etag.as_ref().is_some_and(|e| e.as_bytes() == v.as_bytes());
        }
        match (httpdate::parse_http_date(v), self.last_modified) {
            (Ok(d), Some(lm)) => seconds(d) == seconds(lm),
            _ => false,
        }
    }

    /// Answers a request for this representation.
    pub(crate) fn respond(self, method: &Method, req: &HeaderMap) -> (Response<Body>, Outcome) {
        let mut resp = Response::new(empty());
        let cacheable_get = (method == Method::GET || method == Method::HEAD) && self.status == StatusCode::OK;
        if cacheable_get && self.is_not_modified(req) {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            self.base_headers(resp.headers_mut());
            resp.headers_mut().remove(header::CONTENT_TYPE);
            return (resp, Outcome::NotModified);
        }
        let range = req.get(header::RANGE).and_then(|v| v.to_str().ok());
        if cacheable_get
            && !self.unknown_length
            && self.if_range_holds(req)
            && let Some(range) = range
        {
            match http_range_header::parse_range_header(range).map(|r| r.validate(self.len)) {
                // A range we cannot parse is ignored, as RFC 9110 §14.2 allows.
                Err(_) => {}
                Ok(Ok(ranges)) if ranges.is_empty() => {}
                Ok(Ok(ranges)) => return (self.partial(method, ranges), Outcome::Partial),
                Ok(Err(_)) => {
                    *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                    let cr = HeaderValue::from_str(&format!("bytes */{}", self.len));
                    if let Ok(cr) = cr {
                        resp.headers_mut().insert(header::CONTENT_RANGE, cr);
                    }
                    return (resp, Outcome::Unsatisfiable);
                }
            }
        }
        *resp.status_mut() = self.status;
        self.base_headers(resp.headers_mut());
        if self.status == StatusCode::OK {
            resp.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
        if !self.unknown_length {
            resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(self.len));
        }
        if method != Method::HEAD {
            let len = self.len;
            *resp.body_mut() = self.stream(0, len);
        }
        (resp, Outcome::Full)
    }

    fn partial(self, method: &Method, ranges: Vec<std::ops::RangeInclusive<u64>>) -> Response<Body> {
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        self.base_headers(resp.headers_mut());
        resp.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let [r] = ranges.as_slice() {
            let (start, end) = (*r.start(), *r.end());
            let cr = format!("bytes {start}-{end}/{}", self.len);
            if let Ok(v) = HeaderValue::from_str(&cr) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            if method != Method::HEAD {
                *resp.body_mut() = self.stream(start, end + 1);
            }
            return resp;
        }
        // Several ranges: multipart/byteranges, assembled as a list of parts
        // that stream one after another.
        let boundary = format!("OUTPOST{:016x}", self.len ^ 0x5eed_5eed);
        let multipart = byteranges(&boundary, self.headers.get(header::CONTENT_TYPE), &ranges, self.len);
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(multipart.len));
        resp.headers_mut().insert(header::CONTENT_TYPE, multipart.content_type);
        if method != Method::HEAD {
            let repr = Arc::new(self);
            let stream = futures_util::stream::iter(multipart.parts).flat_map(move |part| match part {
                Part::Text(text) => futures_util::stream::once(async move { Ok(Frame::data(text)) }).boxed(),
                Part::Range(start, end) => Repr::frames(Arc::clone(&repr), start, end).boxed(),
            });
            *resp.body_mut() = StreamBody::new(stream).boxed_unsync();
        }
        resp
    }

    fn stream(self, start: u64, end: u64) -> Body {
        StreamBody::new(Repr::frames(Arc::new(self), start, end)).boxed_unsync()
    }

    /// The bytes `start..end` as frames of `chunk` bytes, `chunk_delay` apart,
    /// failing at `abort_after` if set.
    fn frames(
        repr: Arc<Repr>,
        start: u64,
        end: u64,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, io::Error>> + Send {
        struct State {
            repr: Arc<Repr>,
            pos: u64,
            end: u64,
            file: Option<tokio::fs::File>,
        }
        let state = State { repr, pos: start, end, file: None };
        futures_util::stream::unfold(state, |mut st| async move {
            if st.pos >= st.end {
                return None;
            }
            if let Some(limit) = st.repr.abort_after
                && st.pos >= limit
            {
                // Let the server flush what was sent, so the client sees
                // a response that breaks off rather than none at all.
                tokio::time::sleep(Duration::from_millis(20)).await;
                st.pos = st.end;
                return Some((Err(io::Error::other("aborted mid-body as the request asked")), st));
            }
            if !st.repr.chunk_delay.is_zero() {
                tokio::time::sleep(st.repr.chunk_delay).await;
            }
            let mut n = (st.end - st.pos).min(st.repr.chunk as u64);
            if let Some(limit) = st.repr.abort_after {
                n = n.min(limit - st.pos);
            }
            let data = match &st.repr.source {
                Source::Synthetic { seed, text: false } => Ok(content::bytes(*seed, st.pos, n as usize)),
                Source::Synthetic { seed, text: true } => Ok(content::text(*seed, st.pos, n as usize)),
                Source::Memory(b) => Ok(b[st.pos as usize..(st.pos + n) as usize].to_vec()),
                Source::File { path } => read_at(&mut st.file, path, st.pos, n as usize).await,
            };
            match data {
                Ok(data) => {
                    st.pos += n;
                    Some((Ok(Frame::data(Bytes::from(data))), st))
                }
                Err(e) => {
                    st.pos = st.end;
                    Some((Err(e), st))
                }
            }
        })
    }
}

async fn read_at(file: &mut Option<tokio::fs::File>, path: &PathBuf, pos: u64, n: usize) -> io::Result<Vec<u8>> {
    if file.is_none() {
        *file = Some(tokio::fs::File::open(path).await?);
    }
    let Some(f) = file.as_mut() else { return Err(io::Error::other("file not open")) };
    f.seek(io::SeekFrom::Start(pos)).await?;
    let mut buf = vec![0; n];
    f.read_exact(&mut buf).await?;
    Ok(buf)
}
