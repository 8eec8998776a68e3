//! HTTP/1 requests answered without hyper.
//!
//! Between requests, an HTTP/1 connection whose handler answers some
//! requests at once ([`Handler::answer_now`]) reads the next head itself.
//! A complete head of a GET or HEAD that carries no body and asks nothing
//! of the connection (no `Connection` but `keep-alive`, no `Upgrade`, no
//! `Expect`), in HTTP/1.1, within the server's limits, is offered to the
//! handler; what it answers is written here, the head encoded as hyper
//! encodes it. Everything else — a head still partial, one hyper would
//! refuse, one the handler declines, anything after it — goes to hyper at
//! that request boundary, with the bytes read so far given to it first.
//! A connection that idles for a tick parks as it does under hyper.
//!
//! So the requests answered here are the ones with no framing to follow:
//! no body, nothing pipelined behind a body. The request the handler sees
//! is built from the same bytes by the same `http` types hyper uses.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Closed, Counters, Signals, TrackedIo, Transport, Watch};
use crate::{Body, Conn, Handler};

/// Most header fields a head answered here may have (hyper's own default
/// limit); a head with more goes to hyper, which applies the server's.
const MAX_FIELDS: usize = 100;
/// Room made in the read buffer before a read.
const READ_SIZE: usize = 4096;

/// Header fields of a response answered at once that the handler writes
/// itself ([`Handler::answer_now`]) rather than put in the response's
/// map, encoded as hyper encodes a map's: the name in lower case, `: `,
/// the value, CRLF. They are sent first, before the map's fields. A
/// handler that keeps a response's fields in a map of its own writes them
/// from there, and builds and drops no map for the response.
///
/// Framing is not written here: the body's length goes by
/// [`Fields::length`], and `Transfer-Encoding` and `Connection` only in
/// the response's map.
#[derive(Debug, Default)]
pub struct Fields {
    bytes: Vec<u8>,
    /// `Content-Length`, as if the response's map said it.
    length: Option<u64>,
    /// A `Date` is among them.
    date: bool,
    /// Interim responses, encoded, sent before the request goes to
    /// [`Handler::call`] when the handler leaves it there.
    interim: Vec<u8>,
}

impl Fields {
    /// Appends a field. `Content-Length`, `Transfer-Encoding` and
    /// `Connection` are not appended (a debug build panics): they decide
    /// the framing, which the server works out from the response.
    pub fn append(&mut self, name: &HeaderName, value: &HeaderValue) {
        // A value is a field value already.
        self.push(name, value.as_bytes());
    }

    /// Appends a field whose value is given as bytes, if they make a field
    /// value (as `HeaderValue::from_bytes` has it: no control character
    /// but a tab); `false`, and nothing written, if they do not. The same
    /// fields as [`Fields::append`] are not appended.
    pub fn append_bytes(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        // Every byte looked at, without a branch on each, so it vectorises.
        let fits = value.iter().fold(true, |ok, &b| ok & ((b >= b' ' && b != 0x7f) | (b == b'\t')));
        fits && self.push(name, value)
    }

    fn push(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        match *name {
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION => {
                debug_assert!(false, "{name} is not written among a response's fields");
                return false;
            }
            header::DATE => self.date = true,
            _ => {}
        }
        line(&mut self.bytes, name.as_str().as_bytes(), value);
        true
    }

    /// Appends the fields written to `other` (not its length): fields a
    /// handler writes once and keeps, for many responses.
    pub fn extend(&mut self, other: &Fields) {
        self.bytes.extend_from_slice(&other.bytes);
        self.date |= other.date;
    }

    /// The response's `Content-Length`, as if its map said `n`.
    pub fn length(&mut self, n: u64) {
        self.length = Some(n);
    }

    /// Forgets what is written.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.interim.clear();
        (self.length, self.date) = (None, false);
    }

    /// A `103 Early Hints` (RFC 8297) with a `Link` field for each of
    /// `links`, sent at once if the handler leaves the request to
    /// [`Handler::call`] (answers `None`), before that response; dropped if
    /// it answers at once. Values are field values already, so nothing
    /// sent can end the head early.
    pub fn early_hints<'a>(&mut self, links: impl IntoIterator<Item = &'a HeaderValue>) {
        let fields = links.into_iter().map(|link| (&header::LINK, link));
        super::interim::encode(&mut self.interim, StatusCode::EARLY_HINTS, fields);
    }
}

/// The buffers of a connection answered here, kept while it is busy.
#[derive(Default)]
pub(super) struct Direct {
    /// Bytes read.
    buf: BytesMut,
    /// The head of the response being written.
    head: Vec<u8>,
    /// The fields the handler writes itself.
    fields: Fields,
}

impl Direct {
    /// Answers requests until one is hyper's (`Ok`: `io.replay` holds it)
    /// or the connection must close.
    pub(super) async fn turn<H: Handler, S: Transport>(
        &mut self,
        handler: &Arc<H>,
        io: &mut TrackedIo<S>,
        watch: &mut Watch<'_>,
        conn: &Conn,
        counters: &Counters,
    ) -> Result<(), Closed> {
        loop {
            // Held while the connection is busy, let go of when it parks.
            let mut signals = std::pin::pin!(watch.signals());
            loop {
                if io.replay.is_empty() {
                    if self.read(io, watch, signals.as_mut()).await? {
                        continue;
                    }
                    break;
                }
                if !self.answer(handler, io, watch, conn, counters).await? {
                    return Ok(());
                }
            }
            *self = Direct::default();
            watch.park(io.inner.socket(), &counters.parked).await?;
        }
    }

    /// Answers the request at the start of `io.replay`: `Ok(false)` when it
    /// is hyper's.
    async fn answer<H: Handler, S: Transport>(
        &mut self,
        handler: &Arc<H>,
        io: &mut TrackedIo<S>,
        watch: &mut Watch<'_>,
        conn: &Conn,
        counters: &Counters,
    ) -> Result<bool, Closed> {
        if io.state.lost.load(Ordering::Acquire) {
            return Ok(false);
        }
        let limits = watch.limits;
        let Some((req, head)) = parse(&io.replay, limits.max_header_bytes as usize, limits.max_headers as usize) else {
            return Ok(false);
        };
        let head_only = req.method() == Method::HEAD;
        let state = Arc::clone(&io.state);
        state.active.fetch_add(1, Ordering::AcqRel);
        // The head is in: no header timer runs (a head handed to hyper
        // starts it again as hyper reads it).
        state.head_started.store(0, Ordering::Release);
        self.fields.clear();
        let Some(resp) = H::answer_now(handler, req, conn, &mut self.fields) else {
            let sent = if self.fields.interim.is_empty() {
                Ok(())
            } else {
                counters.interim.increment(1);
                state.interim.slot().hinted_next();
                let mut writing = std::pin::pin!(write_interim(io, &self.fields.interim));
                match std::future::poll_fn(|cx| Poll::Ready(writing.as_mut().poll(cx))).await {
                    Poll::Ready(r) => r.map_err(|_| Closed::Ended),
                    Poll::Pending => watch.finishing(writing).await.and_then(|r| r.map_err(|_| Closed::Ended)),
                }
            };
            state.active.fetch_sub(1, Ordering::AcqRel);
            return sent.map(|()| false);
        };
        counters.direct.increment(1);
        io.replay.advance(head);
        if io.replay.is_empty() {
            // Holds the read buffer, which the next read reuses.
            io.replay = Bytes::new();
        }
        // Most writes finish at once: the signals are watched only for one
        // that waits.
        self.head.clear();
        let (framing, keep_alive) = encode_head(&resp, &self.fields, head_only, &mut self.head);
        let mut writing = std::pin::pin!(write_response(io, &self.head, framing, resp.into_body()));
        let written = match std::future::poll_fn(|cx| Poll::Ready(writing.as_mut().poll(cx))).await {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => watch.finishing(writing).await,
        };
        state.idle_since.store(super::now_ms(), Ordering::Release);
        state.active.fetch_sub(1, Ordering::AcqRel);
        match written {
            Ok(Ok(true)) if keep_alive => Ok(true),
            Ok(_) => Err(Closed::Ended),
            Err(why) => Err(why),
        }
    }

    /// Waits for the next bytes: `Ok(false)` once the connection has idled
    /// for a tick, and is to park.
    async fn read<S: Transport>(
        &mut self,
        io: &mut TrackedIo<S>,
        watch: &mut Watch<'_>,
        signals: Pin<&mut Signals<'_>>,
    ) -> Result<bool, Closed> {
        // Reclaims the buffer once the last request's bytes are let go.
        self.buf.reserve(READ_SIZE);
        match watch.idle(io.inner.read_buf(&mut self.buf), signals).await? {
            Some(Ok(0) | Err(_)) => Err(Closed::Ended),
            Some(Ok(_)) => {
                io.replay = self.buf.split().freeze();
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// The request at the start of `buf`, and the length of its head, if it
/// is one to offer the handler (within the server's limits on head size
/// and field count, which hyper answers with 431); anything else is
/// hyper's.
fn parse(buf: &Bytes, max_head: usize, max_fields: usize) -> Option<(Request<()>, usize)> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let fields = &mut fields[..max_fields.min(MAX_FIELDS)];
    let mut parsed = httparse::Request::new(&mut []);
    let head = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, buf, fields) {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        _ => return None,
    };
    let (Some(method), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return None;
    };
    let method = match method {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    let Ok(uri) = Uri::from_maybe_shared(buf.slice_ref(target.as_bytes())) else { return None };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else { return None };
        let asks_more = match name {
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::EXPECT | header::UPGRADE => true,
            header::CONNECTION => !field.value.eq_ignore_ascii_case(b"keep-alive"),
            _ => false,
        };
        if asks_more {
            return None;
        }
        let Ok(value) = HeaderValue::from_maybe_shared(buf.slice_ref(field.value)) else { return None };
        headers.append(name, value);
    }
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some((req, head))
}

/// How a response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body is sent (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// `resp`'s head as hyper writes it for an HTTP/1.1 request (lower-case
/// names in the map's order, `Content-Length` or chunked framing added
/// when the body's length asks for it, `Date` last when missing), written
/// to `out` with `fields` before the map's; the framing of its body and
/// whether the connection stays open.
fn encode_head(resp: &Response<Body>, fields: &Fields, head_only: bool, out: &mut Vec<u8>) -> (Framing, bool) {
    let status = resp.status();
    let body = resp.body();
    // hyper's view of the body: none, a known length, or unknown.
    let length = if body.is_end_stream() { None } else { Some(body.size_hint().exact()) };
    let can_length = !status.is_informational() && !matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_body = can_length && !head_only;
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&fields.bytes);
    // What hyper makes of a `Content-Length` the response says: the
    // framing, or `None` when it leaves the field out.
    let said_length = |value: Option<u64>| match length {
        Some(Some(n)) => Some(Framing::Length(n)),
        Some(None) => value.map(Framing::Length),
        // An empty body: the length is said only to HEAD.
        None if head_only => Some(Framing::Length(0)),
        None => None,
    };
    let mut framing = None;
    if let Some(n) = fields.length
        && let Some(f) = said_length(Some(n))
    {
        framing = Some(f);
        line(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
    }
    let (mut wrote_date, mut keep_alive) = (fields.date, true);
    for (name, value) in resp.headers() {
        match *name {
            header::CONTENT_LENGTH => {
                if framing.is_some() {
                    continue;
                }
                match said_length(value.to_str().ok().and_then(|v| v.parse().ok())) {
                    Some(f) => framing = Some(f),
                    None => continue,
                }
            }
            header::TRANSFER_ENCODING => {
                if framing.is_some() || !can_body {
                    continue;
                }
                framing = Some(Framing::Chunked);
            }
            header::CONNECTION
                if value.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")) =>
            {
                keep_alive = false;
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let framing = match framing {
        Some(f) => f,
        None => match length {
            // Unknown: chunked where a body may follow (the body is framed
            // by nothing else in HTTP/1.1).
            Some(None) => {
                if can_body {
                    out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                }
                Framing::Chunked
            }
            None | Some(Some(0)) => {
                if can_length && !head_only {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            Some(Some(n)) => {
                if can_length {
                    line(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
                }
                Framing::Length(n)
            }
        },
    };
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let framing = if can_body { framing } else { Framing::None };
    (framing, keep_alive)
}

/// One field, encoded.
pub(super) fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the current time as an HTTP date ([`with_date`]).
fn date(out: &mut Vec<u8>) {
    with_date(|v| out.extend_from_slice(v.as_bytes()));
}

/// The current time as an HTTP date ([`with_date`]), for a head h2 or h3
/// encodes.
pub(super) fn date_value() -> HeaderValue {
    with_date(HeaderValue::clone)
}

/// Calls `f` with the current time as an HTTP date, formatted once a
/// second and borrowed, not cloned, so a hit answered at once pays no
/// reference count for it. The time is the kernel's coarse clock (one
/// tick behind at most, a few milliseconds), which costs a fraction of a
/// precise read: a `Date` is to the second.
fn with_date<R>(f: impl FnOnce(&HeaderValue) -> R) -> R {
    thread_local!(static NOW: std::cell::RefCell<(u64, Option<HeaderValue>)> = const { std::cell::RefCell::new((0, None)) });
    let secs = u64::try_from(rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse).tv_sec).unwrap_or(0);
    NOW.with_borrow_mut(|(at, value)| match value {
        Some(v) if *at == secs => f(v),
        _ => {
            *at = secs;
            let text = httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
            let v = HeaderValue::from_maybe_shared(Bytes::from(text)).expect("an HTTP date is a field value");
            f(value.insert(v))
        }
    })
}

/// Writes `head`, then `body` in `framing`; `Ok(false)` when the body did
/// not fill its length, and the connection is to close after it.
async fn write_response<S: Transport>(
    io: &mut TrackedIo<S>,
    head: &[u8],
    framing: Framing,
    mut body: Body,
) -> io::Result<bool> {
    let mut first = Bytes::new();
    if framing != Framing::None
        && let Some(frame) = next_data(&mut body).await?
    {
        first = frame;
    }
    let mut sent = first.len() as u64;
    match framing {
        Framing::Chunked => {
            let size = chunk_size(first.len());
            let end: &[u8] = if first.is_empty() { b"" } else { b"\r\n" };
            write_all(
                io,
                &mut [IoSlice::new(head), IoSlice::new(size.as_bytes()), IoSlice::new(&first), IoSlice::new(end)],
            )
            .await?;
            if !first.is_empty() {
                while let Some(data) = next_data(&mut body).await? {
                    let size = chunk_size(data.len());
                    write_all(io, &mut [IoSlice::new(size.as_bytes()), IoSlice::new(&data), IoSlice::new(b"\r\n")])
                        .await?;
                }
                write_all(io, &mut [IoSlice::new(b"0\r\n\r\n")]).await?;
            }
        }
        _ => {
            // Never a byte past the length, as hyper cuts a body at it
            // (and keeps the connection, whose bytes are then in step):
            // bytes past it would read as the next response.
            let limit = match framing {
                Framing::Length(n) => n,
                Framing::None | Framing::Chunked => u64::MAX,
            };
            let within = |data: Bytes, sent: u64| {
                let room = usize::try_from(limit - sent).unwrap_or(usize::MAX);
                if data.len() > room { (data.slice(..room), true) } else { (data, false) }
            };
            let (first, mut over) = within(first, 0);
            sent = first.len() as u64;
            write_all(io, &mut [IoSlice::new(head), IoSlice::new(&first)]).await?;
            drop(first);
            while framing != Framing::None && !over && sent < limit {
                let Some(data) = next_data(&mut body).await? else { break };
                let (data, past) = within(data, sent);
                over = past;
                sent += data.len() as u64;
                write_all(io, &mut [IoSlice::new(&data)]).await?;
            }
        }
    }
    io.flush().await?;
    // A body shorter or longer than its length leaves the client unable
    // to find the next response: the connection ends.
    let whole = match framing {
        Framing::Length(n) => sent == n,
        Framing::None | Framing::Chunked => true,
    };
    Ok(whole)
}

/// Writes interim responses, flushed: they go before the final response,
/// which takes its time.
async fn write_interim<S: Transport>(io: &mut TrackedIo<S>, heads: &[u8]) -> io::Result<()> {
    write_all(io, &mut [IoSlice::new(heads)]).await?;
    io.flush().await
}

/// A chunk's size line; empty for the end of the body.
fn chunk_size(len: usize) -> String {
    if len == 0 { "0\r\n\r\n".to_string() } else { format!("{len:x}\r\n") }
}

/// The body's next bytes, skipping trailers and empty frames.
async fn next_data(body: &mut Body) -> io::Result<Option<Bytes>> {
    while let Some(frame) = body.frame().await {
        match frame.map_err(io::Error::other)?.into_data() {
            Ok(data) if !data.is_empty() => return Ok(Some(data)),
            _ => {}
        }
    }
    Ok(None)
}

/// Writes every byte of `parts`, in as few writes as the transport takes.
async fn write_all<S: Transport>(io: &mut TrackedIo<S>, mut parts: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        let n = io.write_vectored(parts).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_take_only_field_values_and_note_a_date() {
        let mut f = Fields::default();
        assert!(f.append_bytes(&header::ETAG, b"\"v1\"\tx"));
        for bad in [&b"a\r\nx-injected: 1"[..], b"a\nb", b"a\0b", b"a\x7fb"] {
            assert!(!f.append_bytes(&header::ETAG, bad), "{bad:?}");
        }
        assert_eq!(f.bytes, b"etag: \"v1\"\tx\r\n", "nothing of a refused value is written");
        assert!(!f.date);
        f.append(&header::DATE, &HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"));
        assert!(f.date, "a Date of the handler's own keeps the server from adding one");
        let links = [HeaderValue::from_static("</a.css>; rel=preload"), HeaderValue::from_static("</b.js>")];
        f.early_hints(&links);
        assert_eq!(f.interim, b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\nlink: </b.js>\r\n\r\n");
        f.clear();
        assert!(f.bytes.is_empty() && f.length.is_none() && !f.date && f.interim.is_empty());
    }
}
