//! A recording origin that reads requests byte by byte, as nginx and Apache
//! do: each head, then exactly the body its framing declares
//! (`Content-Length` or chunked), then the next request on the connection.
//! It records every request it parsed, so a test can check that what a proxy
//! sends upstream parses as exactly the requests the proxy accepted, and no
//! request's bytes ever reach another.
//!
//! Each answer is `200` with `Cache-Control: max-age=60` and a body (and an
//! `X-Echo` header, for HEAD) naming the request it answers (`GET /path`),
//! so a client can tell which request a cached answer came from.
//!
//! [`parse_stream`] is the same reader as a function: what a correct origin
//! makes of a byte stream, for tests to compare a proxy's output with.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Largest head this origin reads.
const MAX_HEAD: usize = 64 << 10;
/// Most header fields in one head.
const MAX_FIELDS: usize = 128;

/// One request as the origin parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    /// Field names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, as its framing declared it.
    pub body: Vec<u8>,
    /// Which connection it came on (in accept order) and its place there.
    pub conn: u64,
}

impl RawRequest {
    /// The values of a field, in order.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// What arrived: a request, or bytes that are not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Request(RawRequest),
    Malformed { conn: u64, reason: String, bytes: Vec<u8> },
}

/// The answer's body for a request: its method and target.
pub fn answer_body(method: &str, target: &str) -> String {
    format!("{method} {target}")
}

/// A running recording origin.
#[derive(Debug)]
pub struct RawOrigin {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
    stop: CancellationToken,
}

impl RawOrigin {
    /// Listens on a free loopback port.
    pub async fn start() -> io::Result<RawOrigin> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (l, s) = (Arc::clone(&log), stop.clone());
        tokio::spawn(async move {
            let mut conn = 0u64;
            loop {
                let stream = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => match r { Ok((stream, _)) => stream, Err(_) => continue },
                };
                conn += 1;
                let (l, s) = (Arc::clone(&l), s.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = serve(stream, conn, l) => {}
                    }
                });
            }
        });
        Ok(RawOrigin { addr, log, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The requests received so far (malformed input left out).
    pub fn requests(&self) -> Vec<RawRequest> {
        self.received()
            .into_iter()
            .filter_map(|r| match r {
                Received::Request(r) => Some(r),
                Received::Malformed { .. } => None,
            })
            .collect()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How a request's body is framed.
enum Framing {
    Length(usize),
    Chunked,
}

/// The outcome of reading from a buffer: done, or more bytes needed.
enum Parse<T> {
    Done(T, usize),
    Partial,
    Bad(String),
}

/// A parsed head: method, target and fields.
type Head = (String, String, Vec<(String, String)>);

fn parse_head(buf: &[u8]) -> Parse<Head> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let headers = req
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let (method, target) = (req.method.unwrap_or_default(), req.path.unwrap_or_default());
            Parse::Done((method.to_string(), target.to_string(), headers), n)
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Parse::Bad("head too large".into()),
        Ok(httparse::Status::Partial) => Parse::Partial,
        Err(e) => Parse::Bad(format!("head: {e}")),
    }
}

/// The body framing of a request head, as RFC 9112 §6.3 reads it.
fn framing(headers: &[(String, String)]) -> Result<Framing, String> {
    let te: Vec<&str> = headers.iter().filter(|(n, _)| n == "transfer-encoding").map(|(_, v)| v.as_str()).collect();
    let cl: Vec<&str> = headers.iter().filter(|(n, _)| n == "content-length").map(|(_, v)| v.as_str()).collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            return Err("both Transfer-Encoding and Content-Length".into());
        }
        let last = te.join(",");
        let last = last.rsplit(',').next().unwrap_or("").trim();
        return if last.eq_ignore_ascii_case("chunked") {
            Ok(Framing::Chunked)
        } else {
            Err(format!("transfer-coding `{last}` is not chunked"))
        };
    }
    // Values (one field, or a list of equal ones) must agree.
    let mut length: Option<usize> = None;
    for v in cl.iter().flat_map(|v| v.split(',')).map(str::trim) {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad content-length {cl:?}"));
        }
        let n: usize = v.parse().map_err(|e| format!("content-length: {e}"))?;
        if length.is_some_and(|l| l != n) {
            return Err(format!("conflicting content-length {cl:?}"));
        }
        length = Some(n);
    }
    Ok(Framing::Length(length.unwrap_or(0)))
}

/// A chunked body at the start of `buf`: its bytes, and how much it used.
fn parse_chunked(buf: &[u8]) -> Parse<Vec<u8>> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return if buf.len() - at > 1024 { Parse::Bad("chunk size line too long".into()) } else { Parse::Partial };
        };
        let line = &buf[at..at + eol];
        let size = line.split(|b| *b == b';').next().unwrap_or_default();
        let Some(size) = std::str::from_utf8(size).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok()) else {
            return Parse::Bad(format!("chunk size {:?}", String::from_utf8_lossy(line)));
        };
        at += eol + 2;
        if size == 0 {
            // Trailer fields, up to an empty line.
            loop {
                let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else { return Parse::Partial };
                at += eol + 2;
                if eol == 0 {
                    return Parse::Done(body, at);
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Parse::Partial;
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Parse::Bad("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

/// One whole request at the start of `buf`.
fn parse_request(buf: &[u8], conn: u64) -> Parse<RawRequest> {
    let ((method, target, headers), head_len) = match parse_head(buf) {
        Parse::Done(h, n) => (h, n),
        Parse::Partial => return Parse::Partial,
        Parse::Bad(e) => return Parse::Bad(e),
    };
    let rest = &buf[head_len..];
    let (body, used) = match framing(&headers) {
        Err(e) => return Parse::Bad(e),
        Ok(Framing::Length(n)) if rest.len() >= n => (rest[..n].to_vec(), n),
        Ok(Framing::Length(_)) => return Parse::Partial,
        Ok(Framing::Chunked) => match parse_chunked(rest) {
            Parse::Done(b, n) => (b, n),
            Parse::Partial => return Parse::Partial,
            Parse::Bad(e) => return Parse::Bad(e),
        },
    };
    Parse::Done(RawRequest { method, target, headers, body, conn }, head_len + used)
}

/// How a byte stream ended, after its whole requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rest {
    /// Nothing left over.
    Clean,
    /// A request began but did not finish.
    Incomplete,
    /// Bytes that are no request (why).
    Invalid(String),
}

/// What [`parse_stream`] makes of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// Every whole request, in order.
    pub requests: Vec<RawRequest>,
    /// How the stream goes on after them.
    pub rest: Rest,
    /// The head of the request that did not finish or did not parse, when
    /// the head itself is whole (with no body).
    pub unfinished: Option<RawRequest>,
}

/// Every whole request at the start of `bytes`, read as this origin reads
/// a connection, and how the stream goes on after them.
pub fn parse_stream(mut bytes: &[u8]) -> Stream {
    let mut requests = Vec::new();
    loop {
        if bytes.is_empty() {
            return Stream { requests, rest: Rest::Clean, unfinished: None };
        }
        let rest = match parse_request(bytes, 0) {
            Parse::Done(r, used) => {
                requests.push(r);
                bytes = &bytes[used..];
                continue;
            }
            Parse::Partial => Rest::Incomplete,
            Parse::Bad(e) => Rest::Invalid(e),
        };
        let unfinished = match parse_head(bytes) {
            Parse::Done((method, target, headers), _) => {
                Some(RawRequest { method, target, headers, body: Vec::new(), conn: 0 })
            }
            _ => None,
        };
        return Stream { requests, rest, unfinished };
    }
}

fn response(req: &RawRequest) -> Vec<u8> {
    let body = answer_body(&req.method, &req.target);
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-type: text/plain\r\nx-echo: {body}\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if req.method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

async fn serve(mut stream: TcpStream, conn: u64, log: Arc<Mutex<Vec<Received>>>) {
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 16 << 10];
    loop {
        // Answer every whole request in the buffer, in order.
        loop {
            match parse_request(&buf, conn) {
                Parse::Done(req, used) => {
                    buf.drain(..used);
                    let out = response(&req);
                    log.lock().unwrap_or_else(|p| p.into_inner()).push(Received::Request(req));
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
                Parse::Partial => break,
                Parse::Bad(reason) => {
                    let bytes = std::mem::take(&mut buf);
                    log.lock().unwrap_or_else(|p| p.into_inner()).push(Received::Malformed { conn, reason, bytes });
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    let reason = "the connection closed inside a request".to_string();
                    log.lock().unwrap_or_else(|p| p.into_inner()).push(Received::Malformed {
                        conn,
                        reason,
                        bytes: buf,
                    });
                }
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A response as [`exchange`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a field.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends `bytes` as they are on a new connection to `addr` and reads up to
/// `count` responses (fewer if the server closes), each framed by its
/// `Content-Length` or chunked coding. `head` lists which requests were HEAD
/// (their responses have no body). Gives up after `wait` without progress.
pub async fn exchange(
    addr: SocketAddr,
    bytes: &[u8],
    count: usize,
    head: &[bool],
    wait: std::time::Duration,
) -> io::Result<Vec<RawResponse>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(bytes).await?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    while out.len() < count {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut fields);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
            let status = resp.code.unwrap_or_default();
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let no_body = head.get(out.len()).copied().unwrap_or(false) || status == 304 || status < 200;
            let rest = &buf[n..];
            let parsed = if no_body {
                Some((Vec::new(), 0))
            } else if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
                match parse_chunked(rest) {
                    Parse::Done(b, used) => Some((b, used)),
                    Parse::Partial => None,
                    Parse::Bad(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
            } else {
                let len = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok());
                match len {
                    Some(len) if rest.len() >= len => Some((rest[..len].to_vec(), len)),
                    _ => None,
                }
            };
            if let Some((body, used)) = parsed {
                buf.drain(..n + used);
                if status >= 200 {
                    out.push(RawResponse { status, headers, body });
                }
                continue;
            }
        }
        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no response in time")),
        }
    }
    Ok(out)
}

/// Sends `request` on a new connection, reads nothing for `stall`, then
/// reads to the end: how many bytes arrived. A server that gave up on the
/// stalled client sends only what the socket buffers held. Blocking: run it
/// on a thread of its own.
pub fn read_after_stall(addr: SocketAddr, request: &[u8], stall: std::time::Duration) -> io::Result<usize> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.write_all(request)?;
    std::thread::sleep(stall);
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut total = 0usize;
    let mut buf = [0u8; 64 << 10];
    while let Ok(n @ 1..) = s.read(&mut buf) {
        total += n;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> RawRequest {
        match parse_request(bytes, 1) {
            Parse::Done(r, n) => {
                assert_eq!(n, bytes.len());
                r
            }
            Parse::Partial => panic!("partial"),
            Parse::Bad(e) => panic!("{e}"),
        }
    }

    #[test]
    fn requests_are_read_by_their_declared_framing() {
        let r = one(b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!((r.method.as_str(), r.target.as_str(), r.body.as_slice()), ("GET", "/a", &b"abc"[..]));
        let r =
            one(b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n1\r\nd\r\n0\r\nT: 1\r\n\r\n");
        assert_eq!(r.body, b"abcd");
        assert!(matches!(parse_request(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 1), Parse::Partial));
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 1),
            Parse::Bad(_)
        ));
        assert!(matches!(parse_request(b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx", 1), Parse::Bad(_)));
    }
}
