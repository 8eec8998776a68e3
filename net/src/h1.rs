//! Reads an HTTP/1 request stream beside hyper, head by head, to see what
//! hyper does not show: a head with both `Content-Length` and
//! `Transfer-Encoding` (hyper frames it by the latter and drops the
//! former, RFC 9112 §6.3, so the service never sees the conflict). Each body
//! is followed by its framing, so heads pipelined behind a body, or behind
//! another request in the same packet, are read too.
//!
//! The tracker splits heads into lines as hyper's parser does. Where it cannot
//! follow the stream (a head it cannot parse, a length it cannot read) it
//! stops and says so; the server then refuses every later request on the
//! connection rather than trust framing it could not check.

use std::collections::VecDeque;

/// What the tracker found in one request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Framed one way only.
    Clean,
    /// Both `Content-Length` and `Transfer-Encoding`: a smuggling attempt.
    Conflict,
    /// The tracker lost the stream at or before this head.
    Unreadable,
}

impl Framing {
    /// Why a request with this framing is refused (none when clean).
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            Framing::Clean => None,
            Framing::Conflict => Some("both Content-Length and Transfer-Encoding"),
            Framing::Unreadable => Some("request framing could not be followed"),
        }
    }
}

/// Longest chunk-size line (with extensions) or trailer line followed.
const MAX_LINE: usize = 8 << 10;
/// Most hex digits in a chunk size (u64).
const MAX_SIZE_DIGITS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// Body bytes still to skip.
    Length(u64),
    /// A chunk-size line.
    ChunkSize,
    /// Chunk data still to skip, then its CRLF.
    ChunkData(u64),
    /// The CR (2) or LF (1) after chunk data.
    ChunkEnd(u8),
    /// Trailer lines up to an empty one.
    Trailers,
    /// Nothing more is read (HTTP/2, or after a refusal).
    Stopped,
}

/// Follows one connection's request stream.
#[derive(Debug)]
pub struct Tracker {
    state: State,
    /// A head or line split across reads.
    partial: Vec<u8>,
    /// Bytes of trailers read for the current body.
    trailer_bytes: usize,
    max_head: usize,
    max_fields: usize,
}

impl Tracker {
    /// `max_head` and `max_fields` are the server's own limits: a head over
    /// them is refused by hyper, and the tracker stops there too.
    pub fn new(max_head: usize, max_fields: usize) -> Tracker {
        Tracker { state: State::Head, partial: Vec::new(), trailer_bytes: 0, max_head, max_fields: max_fields.max(1) }
    }

    /// Stops following (the connection speaks HTTP/2).
    pub fn stop(&mut self) {
        self.state = State::Stopped;
        self.partial = Vec::new();
    }

    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Between two requests: every byte read belongs to a head or a body
    /// already complete.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Head && self.partial.is_empty()
    }

    /// Part of a head has come, not all of it.
    pub fn mid_head(&self) -> bool {
        self.state == State::Head && !self.partial.is_empty()
    }

    /// Lets go of the buffer a split head or line left behind.
    pub fn shrink(&mut self) {
        if self.partial.is_empty() {
            self.partial = Vec::new();
        }
    }

    /// Reads `input`, the next bytes of the stream, pushing one verdict per
    /// request head completed.
    pub fn feed(&mut self, mut input: &[u8], out: &mut VecDeque<Framing>) {
        while !input.is_empty() {
            input = match self.state {
                State::Stopped => return,
                State::Head => self.head(input, out),
                State::Length(n) => {
                    let take = n.min(input.len() as u64);
                    self.state = if take == n { State::Head } else { State::Length(n - take) };
                    &input[take as usize..]
                }
                State::ChunkData(n) => {
                    let take = n.min(input.len() as u64);
                    self.state = if take == n { State::ChunkEnd(2) } else { State::ChunkData(n - take) };
                    &input[take as usize..]
                }
                State::ChunkEnd(expect) => {
                    let want = if expect == 2 { b'\r' } else { b'\n' };
                    if input[0] != want {
                        // hyper refuses the body; the connection ends.
                        return self.lose(out);
                    }
                    self.state = if expect == 2 { State::ChunkEnd(1) } else { State::ChunkSize };
                    &input[1..]
                }
                State::ChunkSize | State::Trailers => match self.line(input) {
                    Line::Incomplete => return,
                    // hyper refuses a chunk-size line that ends in a bare
                    // LF, and reads a trailer line on to its CRLF: a bare
                    // LF there could end the body here and not there.
                    Line::TooLong | Line::BareLf => return self.lose(out),
                    Line::Done(line, rest) => {
                        self.after_line(&line, out);
                        rest
                    }
                },
            };
        }
    }

    /// Reads a request head from `input` (after any partial one).
    fn head<'a>(&mut self, input: &'a [u8], out: &mut VecDeque<Framing>) -> &'a [u8] {
        let held = self.partial.len();
        if held > 0 {
            self.partial.extend_from_slice(input);
        }
        let parsed = {
            let buf = if held > 0 { &self.partial[..] } else { input };
            parse_head(buf, self.max_fields)
        };
        match parsed {
            Parsed::Complete { len, framing, next } => {
                self.partial.clear();
                out.push_back(framing);
                self.state = next;
                &input[len - held..]
            }
            Parsed::Partial => {
                if held == 0 {
                    self.partial.extend_from_slice(input);
                }
                if self.partial.len() > self.max_head {
                    // hyper answers 431 and closes.
                    self.lose(out);
                }
                &[]
            }
            Parsed::Invalid => {
                // hyper answers 400 and closes.
                self.lose(out);
                &[]
            }
        }
    }

    /// The next line, without its CRLF.
    fn line<'a>(&mut self, input: &'a [u8]) -> Line<'a> {
        match input.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&input[..i]);
                if line.pop_if(|b| *b == b'\r').is_none() {
                    return Line::BareLf;
                }
                if line.len() > MAX_LINE { Line::TooLong } else { Line::Done(line, &input[i + 1..]) }
            }
            None => {
                self.partial.extend_from_slice(input);
                if self.partial.len() > MAX_LINE { Line::TooLong } else { Line::Incomplete }
            }
        }
    }

    fn after_line(&mut self, line: &[u8], out: &mut VecDeque<Framing>) {
        match self.state {
            State::ChunkSize => match chunk_size(line) {
                Some(0) => {
                    self.trailer_bytes = 0;
                    self.state = State::Trailers;
                }
                Some(n) => self.state = State::ChunkData(n),
                None => self.lose(out),
            },
            State::Trailers => {
                self.trailer_bytes += line.len() + 2;
                if line.is_empty() {
                    self.state = State::Head;
                } else if self.trailer_bytes > self.max_head {
                    self.lose(out);
                }
            }
            _ => {}
        }
    }

    /// The stream can no longer be followed: every later request is
    /// refused.
    fn lose(&mut self, out: &mut VecDeque<Framing>) {
        out.push_back(Framing::Unreadable);
        self.stop();
    }
}

/// A chunk-size or trailer line as read so far.
enum Line<'a> {
    Incomplete,
    TooLong,
    /// Ended by an LF without a CR.
    BareLf,
    /// The line, and what follows it.
    Done(Vec<u8>, &'a [u8]),
}

enum Parsed {
    Complete { len: usize, framing: Framing, next: State },
    Partial,
    Invalid,
}

/// Reads a request head at the start of `buf`: where it ends, and how its
/// body is framed. It splits lines as httparse does (CRLF or LF, leading
/// empty lines skipped) but checks only what framing needs: hyper parses and
/// checks the head itself, and closes the connection on a head it refuses,
/// so only a head it accepts can have a body that matters.
fn parse_head(buf: &[u8], max_fields: usize) -> Parsed {
    let mut pos = 0;
    while buf[pos..].starts_with(b"\r\n") || buf[pos..].starts_with(b"\n") {
        pos += if buf[pos] == b'\r' { 2 } else { 1 };
    }
    let mut request_line = true;
    let mut fields = 0usize;
    let mut length: Option<Result<u64, ()>> = None;
    let mut chunked_last: Option<bool> = None;
    loop {
        let Some(nl) = buf[pos..].iter().position(|b| *b == b'\n') else { return Parsed::Partial };
        let line = &buf[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if request_line {
            request_line = false;
            if !line.ends_with(b" HTTP/1.1") && !line.ends_with(b" HTTP/1.0") {
                return Parsed::Invalid;
            }
            continue;
        }
        if line.is_empty() {
            let (framing, next) = body_framing(length, chunked_last);
            return Parsed::Complete { len: pos, framing, next };
        }
        fields += 1;
        // A folded line or a name with spaces: hyper refuses the head.
        let Some(colon) = line.iter().position(|b| *b == b':') else { return Parsed::Invalid };
        let name = &line[..colon];
        if fields > max_fields || name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
            return Parsed::Invalid;
        }
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            length = Some(match (length, content_length(value)) {
                (None, v) => v,
                (Some(Ok(a)), Ok(b)) if a == b => Ok(a),
                _ => Err(()),
            });
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii();
            chunked_last = Some(last.eq_ignore_ascii_case(b"chunked"));
        }
    }
}

/// The body framing of a request head, as hyper reads it.
fn body_framing(length: Option<Result<u64, ()>>, chunked_last: Option<bool>) -> (Framing, State) {
    match (chunked_last, length) {
        (Some(_), Some(_)) => (Framing::Conflict, State::Stopped),
        (Some(true), None) => (Framing::Clean, State::ChunkSize),
        // hyper refuses a request whose last coding is not chunked.
        (Some(false), None) => (Framing::Unreadable, State::Stopped),
        (None, Some(Ok(0)) | None) => (Framing::Clean, State::Head),
        (None, Some(Ok(n))) => (Framing::Clean, State::Length(n)),
        (None, Some(Err(()))) => (Framing::Unreadable, State::Stopped),
    }
}

/// A `Content-Length` value: digits, or a list of equal ones.
fn content_length(value: &[u8]) -> Result<u64, ()> {
    let mut out = None;
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n: u64 = std::str::from_utf8(part).map_err(drop)?.parse().map_err(drop)?;
        match out {
            Some(prev) if prev != n => return Err(()),
            _ => out = Some(n),
        }
    }
    out.ok_or(())
}

/// The size on a chunk-size line: hex digits, then optional whitespace and
/// extensions.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > MAX_SIZE_DIGITS {
        return None;
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(parts: &[&[u8]]) -> Vec<Framing> {
        let mut t = Tracker::new(8192, 100);
        let mut out = VecDeque::new();
        for p in parts {
            t.feed(p, &mut out);
        }
        out.into_iter().collect()
    }

    fn split_everywhere(stream: &[u8]) -> Vec<Vec<Framing>> {
        (0..=stream.len()).map(|i| verdicts(&[&stream[..i], &stream[i..]])).collect()
    }

    #[test]
    fn pipelined_conflicts_are_found_behind_any_body() {
        let stream: &[u8] = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
            POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
            POST /d HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let want = vec![Framing::Clean, Framing::Clean, Framing::Clean, Framing::Conflict];
        for (i, got) in split_everywhere(stream).into_iter().enumerate() {
            assert_eq!(got, want, "split at {i}");
        }
        // A byte at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(verdicts(&bytes), want);
    }

    #[test]
    fn a_body_that_looks_like_a_request_is_skipped() {
        let inner = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream = format!("POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n", inner.len()).into_bytes();
        stream.extend_from_slice(inner);
        stream.extend_from_slice(b"GET /b HTTP/1.1\r\n\r\n");
        assert_eq!(verdicts(&[&stream]), vec![Framing::Clean, Framing::Clean]);
    }

    #[test]
    fn what_cannot_be_followed_is_unreadable_and_stops() {
        for s in [
            &b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\nGET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXY",
            b"GARBAGE\r\n\r\n",
        ] {
            let v = verdicts(&[s]);
            assert_eq!(v.last(), Some(&Framing::Unreadable), "{:?}", String::from_utf8_lossy(s));
        }
        assert_eq!(verdicts(&[b"GET / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\nabcd"]), vec![Framing::Clean]);
        // Many fields (more than the first, small try holds) are read too.
        let mut many = String::from("POST / HTTP/1.1\r\n");
        for i in 0..60 {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(verdicts(&[many.as_bytes()]), vec![Framing::Conflict]);
        // A head longer than the limit stops the tracker too.
        let mut t = Tracker::new(64, 10);
        let mut out = VecDeque::new();
        t.feed(&[b'a'; 100], &mut out);
        assert!(t.is_stopped());
    }

    #[test]
    fn leading_empty_lines_are_followed_and_bare_lf_chunk_lines_are_not() {
        let s =
            b"\r\n\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(verdicts(&[s]), vec![Framing::Clean, Framing::Clean]);
        // hyper refuses the first; it reads the second's LF as part of a
        // trailer line, and the head after it as trailers.
        for s in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\nGET /g HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\n\r\n",
        ] {
            assert_eq!(verdicts(&[s]), vec![Framing::Clean, Framing::Unreadable], "{:?}", String::from_utf8_lossy(s));
        }
    }
}
