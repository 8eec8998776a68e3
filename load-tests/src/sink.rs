//! A keep-alive GET load whose response bodies the kernel discards
//! (`recv` with `MSG_TRUNC`), so the client's CPU goes on requests, not on
//! copying bodies: `load-tests/examples/sink_load.rs` runs it for the
//! benchmarks. `wrk` reads every body byte into its buffer 8 KiB at a time:
//! at 100 KiB and more it fills its core before the server under test
//! does, and then sets req/s and latency itself. Each connection sends a
//! request, reads the head (parsed; the status and `Content-Length` taken),
//! discards the body, and sends the next. Interim (1xx) heads are passed
//! over, a response that says `Connection: close` is followed by a new
//! connection, and one that takes longer than wrk's timeout (2 s) counts as
//! a timeout, whenever it ends, and the connection is opened again (wrk
//! keeps it). A response that ends after the load's end is not counted.
//! Bodies are framed by `Content-Length` or chunked; a chunked body's size
//! lines and trailers are read and its data skipped (in the kernel in
//! cleartext, decrypted over TLS, where chunks need not end with a
//! record); a body that runs to the connection's end is a read error.
//! Requests may carry fields of the caller's ([`Ask`]). HTTP/1.1 to one
//! address, bounded by time.
//!
//! Over TLS ([`Tls`]) a client that decrypted every body would cost as much
//! per byte as the server that encrypted it, and would set the pace as wrk
//! does. So after rustls's handshake (TLS 1.3 only) the client takes the
//! connection's traffic keys and keeps the record layer itself: it
//! encrypts its requests and decrypts records until a response's head is
//! read, then discards the body's records in the kernel as above, unread,
//! reading only each record's 5-byte header. A record's plaintext is its
//! length less the AEAD's tag (16 bytes, for each of TLS 1.3's suites) and
//! the inner content type (1). This takes it that servers do not pad
//! records (rustls and OpenSSL do not by default) and send nothing but the
//! body amid one: padding, or a session ticket amid a body, would be
//! counted as body bytes, and the response would end in a read error
//! (past its end, or the next head unreadable). Handshake records between
//! responses (session tickets) are decrypted and passed over; a key update
//! ends the connection as an error, since the keys taken would no longer
//! open the records. The keys are taken once the handshake is done, and
//! with them rustls's count of the records it has read: a record the
//! server sent with its last handshake flight and that rustls had only in
//! part would be lost and put the count out of step (every response on
//! the connection a read error). nginx (OpenSSL) and rustls send their
//! tickets only after the client's `Finished`, so nothing is in flight
//! then.

use std::time::{Duration, Instant};

use rustix::net::RecvFlags;
use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::pki_types::ServerName;
use rustls::{ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Longest response head read.
const MAX_HEAD: usize = 16 * 1024;
/// Most body bytes discarded by one `recv`.
const DISCARD: usize = 4 << 20;
/// How long a response may take before it counts as a timeout (wrk's).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection may wait for its response past the end: more
/// than [`REQUEST_TIMEOUT`], so every request ends in a response or one.
const GRACE: Duration = Duration::from_secs(5);
/// A TLS record's header: content type, legacy version, length.
const RECORD_HEADER: usize = 5;
/// The most a TLS 1.3 record may carry: 2^14 bytes of plaintext, its inner
/// content type and padding, and the tag (RFC 8446, 5.2).
const MAX_RECORD: usize = (1 << 14) + 256;
/// What a TLS 1.3 record adds to the plaintext it carries, unpadded: the
/// inner content type and a 16-byte tag (every TLS 1.3 suite's).
const RECORD_OVERHEAD: usize = 1 + 16;
/// The handshake message type of a TLS 1.3 key update.
const KEY_UPDATE: u8 = 24;

/// What a load did.
pub struct Tally {
    /// Responses taken whole before the end.
    pub done: u64,
    /// Their bytes, heads and bodies.
    pub bytes: u64,
    /// Those whose status was not 2xx or 3xx.
    pub non_2xx_3xx: u64,
    /// Connections that could not be opened.
    pub connect_errors: u64,
    /// Connections that failed or ended mid-response, or sent what does
    /// not read as a response to the request (each reopened).
    pub read_errors: u64,
    /// Responses that took longer than [`REQUEST_TIMEOUT`] (each
    /// connection reopened).
    pub timeouts: u64,
    /// Each response's time from its request to its last byte, in µs.
    pub latency: hdrhistogram::Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            done: 0,
            bytes: 0,
            non_2xx_3xx: 0,
            connect_errors: 0,
            read_errors: 0,
            timeouts: 0,
            latency: histogram(),
        }
    }
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("done", &self.done)
            .field("bytes", &self.bytes)
            .field("non_2xx_3xx", &self.non_2xx_3xx)
            .field("connect_errors", &self.connect_errors)
            .field("read_errors", &self.read_errors)
            .field("timeouts", &self.timeouts)
            .field("p50_us", &self.latency.value_at_quantile(0.5))
            .finish()
    }
}

impl Tally {
    fn add(&mut self, t: &Tally) {
        self.done += t.done;
        self.bytes += t.bytes;
        self.non_2xx_3xx += t.non_2xx_3xx;
        self.connect_errors += t.connect_errors;
        self.read_errors += t.read_errors;
        self.timeouts += t.timeouts;
        self.latency.add(&t.latency).expect("histograms of one shape");
    }
}

/// How to reach a server over TLS: the client's configuration (TLS 1.3,
/// HTTP/1.1, traffic keys extractable) and the name the server is asked
/// for.
#[derive(Clone)]
pub struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Tls {
    /// A client for `server_name` trusting the certificates in the PEM
    /// file `ca`.
    pub fn new(server_name: &str, ca: &std::path::Path) -> Result<Tls, String> {
        let roots = crate::ca_roots(ca)?;
        let mut config =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.enable_secret_extraction = true;
        let name = ServerName::try_from(server_name.to_string()).map_err(|e| format!("`{server_name}`: {e}"))?;
        Ok(Tls { connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)), name })
    }
}

/// What each request of a load asks for.
#[derive(Clone, Debug, Default)]
pub struct Ask {
    /// The `Host` field.
    pub host: String,
    /// The request target; `{n}` in it stands for a number below
    /// `objects`, drawn for each request, uniformly, from a generator
    /// seeded by the connection's index (so a run asks the same order
    /// again). With `objects` 0, the path is sent as it is.
    pub path: String,
    pub objects: u64,
    /// Each of the `objects` is asked for once, in a shuffled order the
    /// connections share (the same in every run), and the load ends when
    /// the last has been asked for and answered, or at its time limit.
    pub once: bool,
    /// Fields sent after `Host`, each a `Name: value` line without its
    /// line end.
    pub fields: Vec<String>,
}

impl Ask {
    /// `GET path` with `Host: host` and nothing else.
    pub fn new(host: &str, path: &str) -> Ask {
        Ask { host: host.to_string(), path: path.to_string(), ..Ask::default() }
    }

    /// The request's bytes, with `{n}` left in the path.
    fn request(&self) -> Result<String, String> {
        let mut request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", self.path, self.host);
        for field in &self.fields {
            let well_formed = field
                .split_once(':')
                .is_some_and(|(name, _)| !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
                && !field.bytes().any(|b| b == b'\r' || b == b'\n');
            if !well_formed {
                return Err(format!("`{field}` is not a `Name: value` field"));
            }
            request.push_str(field);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        Ok(request)
    }
}

/// `GET path` with `Host: host` on `conns` connections to `addr`, over
/// `tls` when given, for `length`, each connection one request at a time;
/// runs on the current runtime.
pub async fn load(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
    tls: Option<&Tls>,
    conns: usize,
    length: Duration,
) -> Tally {
    load_asking(addr, &Ask::new(host, path), tls, conns, length).await.expect("a plain GET is well formed")
}

/// [`load`] with the requests `ask` describes; an error when one of its
/// fields is not well formed.
pub async fn load_asking(
    addr: std::net::SocketAddr,
    ask: &Ask,
    tls: Option<&Tls>,
    conns: usize,
    length: Duration,
) -> Result<Tally, String> {
    let request = ask.request()?;
    let (before, after) = match request.split_once("{n}") {
        Some((before, after)) if ask.objects > 0 => (before.to_string(), after.to_string()),
        _ => (request, String::new()),
    };
    let (before, after): (std::sync::Arc<str>, std::sync::Arc<str>) = (before.into(), after.into());
    let objects = if after.is_empty() { 0 } else { ask.objects };
    let order = (ask.once && objects > 0).then(|| Once {
        order: shuffled(objects).into(),
        next: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    });
    let end = Instant::now() + length;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..conns {
        let mut requests = Requests {
            before: std::sync::Arc::clone(&before),
            after: std::sync::Arc::clone(&after),
            objects,
            state: seed(i as u64),
            once: order.clone(),
            buf: Vec::new(),
        };
        let tls = tls.cloned();
        tasks.spawn(async move {
            let mut t = Tally::default();
            // Ended by the deadline, whatever a connection is waiting for.
            let deadline = tokio::time::Instant::from_std(end + GRACE);
            let _ = tokio::time::timeout_at(deadline, run(addr, tls.as_ref(), &mut requests, end, &mut t)).await;
            t
        });
    }
    let mut total = Tally::default();
    while let Some(t) = tasks.join_next().await {
        total.add(&t.expect("a connection's task"));
    }
    Ok(total)
}

/// The requests one connection sends.
struct Requests {
    /// The request up to where `{n}` stood, and from there on; with
    /// `objects` 0, `before` is the whole request.
    before: std::sync::Arc<str>,
    after: std::sync::Arc<str>,
    objects: u64,
    /// The generator's state (xorshift64).
    state: u64,
    /// The order shared by the connections of a load that asks for each
    /// object once.
    once: Option<Once>,
    buf: Vec<u8>,
}

#[derive(Clone)]
struct Once {
    order: std::sync::Arc<[u64]>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// A generator's first state for stream `i`: never zero, which xorshift
/// would keep.
fn seed(i: u64) -> u64 {
    0x9e37_79b9_7f4a_7c15 ^ (i + 1)
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The numbers below `n` in an order shuffled the same way every time
/// (Fisher-Yates).
fn shuffled(n: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..n).collect();
    let mut state = seed(u64::MAX - 1);
    for i in (1..order.len()).rev() {
        let j = (xorshift(&mut state) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

impl Requests {
    /// The next request; `None` once a load that asks for each object
    /// once has handed them all out.
    fn next(&mut self) -> Option<&[u8]> {
        self.buf.clear();
        self.buf.extend_from_slice(self.before.as_bytes());
        if self.objects > 0 {
            let n = match &self.once {
                Some(once) => *once.order.get(once.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))?,
                None => xorshift(&mut self.state) % self.objects,
            };
            self.buf.extend_from_slice(n.to_string().as_bytes());
            self.buf.extend_from_slice(self.after.as_bytes());
        }
        Some(&self.buf)
    }
}

/// Microseconds, 1 µs to 100 s, to three figures.
fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// One connection's requests until `end`, reconnecting after an error.
async fn run(addr: std::net::SocketAddr, tls: Option<&Tls>, requests: &mut Requests, end: Instant, t: &mut Tally) {
    let mut head = vec![0u8; MAX_HEAD];
    // Where the kernel discards body bytes (`recv` writes nothing there),
    // and over TLS where chunk data is decrypted to be dropped.
    let mut scratch = vec![0u8; DISCARD];
    while Instant::now() < end {
        let Ok(mut s) = Conn::open(addr, tls).await else {
            t.connect_errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while Instant::now() < end {
            let Some(request) = requests.next() else { return };
            let sent = Instant::now();
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut s, request, &mut head, &mut scratch)).await {
                Ok(Ok(r)) => {
                    // Counted only when it ended in time, as wrk counts.
                    if Instant::now() > end {
                        return;
                    }
                    t.done += 1;
                    t.bytes += r.bytes;
                    if !(200..400).contains(&r.status) {
                        t.non_2xx_3xx += 1;
                    }
                    let micros = sent.elapsed().as_micros() as u64;
                    t.latency.saturating_record(micros.max(1));
                    if r.close {
                        break;
                    }
                }
                Ok(Err(_)) => {
                    t.read_errors += 1;
                    break;
                }
                Err(_) => {
                    t.timeouts += 1;
                    break;
                }
            }
        }
    }
}

/// A response taken.
struct Response {
    status: u16,
    /// Its bytes, interim heads included.
    bytes: u64,
    /// It said `Connection: close`.
    close: bool,
}

/// Sends `request` and takes its response: the head into `head`, the body
/// discarded.
async fn exchange(s: &mut Conn, request: &[u8], head: &mut [u8], scratch: &mut [u8]) -> std::io::Result<Response> {
    s.send(request).await?;
    let (mut filled, mut interim) = (0, 0u64);
    let (status, head_len, length, close) = loop {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut fields);
        if filled > 0
            && let httparse::Status::Complete(len) = resp.parse(&head[..filled]).map_err(std::io::Error::other)?
        {
            let status = resp.code.unwrap_or(0);
            if (100..200).contains(&status) && status != 101 {
                // An interim head: the response follows it.
                head.copy_within(len..filled, 0);
                filled -= len;
                interim += len as u64;
                continue;
            }
            let field = |name: &str| resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
            let chunked = |codings: &[u8]| {
                codings.rsplit(|b| *b == b',').next().is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
            };
            let length = match field("transfer-encoding") {
                Some(codings) if chunked(codings) => None,
                Some(_) => return Err(std::io::Error::other("a body that runs to the connection's end")),
                None => Some(
                    field("content-length")
                        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok())
                        .ok_or_else(|| std::io::Error::other("a response without Content-Length or chunks"))?,
                ),
            };
            let close = field("connection")
                .is_some_and(|v| v.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")));
            break (status, len, length, close);
        }
        if filled == head.len() {
            return Err(std::io::Error::other("response head too long"));
        }
        let n = s.read(&mut head[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    };
    let Some(length) = length else {
        head.copy_within(head_len..filled, 0);
        let body = chunks(s, head, filled - head_len, scratch).await?;
        return Ok(Response { status, bytes: interim + head_len as u64 + body, close });
    };
    let already = (filled - head_len) as u64;
    if already > length {
        return Err(std::io::Error::other(PAST_THE_END));
    }
    s.discard(length - already, scratch).await?;
    Ok(Response { status, bytes: interim + head_len as u64 + length, close })
}

const PAST_THE_END: &str = "more bytes than the response's length (pipelining is not sent)";

/// Takes a chunked body whose first `filled` bytes are at the start of
/// `buf`: the chunks' size lines and the trailers are read through `buf`,
/// the chunks' data skipped ([`Conn::skip`]). Returns the body's bytes as
/// sent, framing included.
async fn chunks(s: &mut Conn, buf: &mut [u8], mut filled: usize, scratch: &mut [u8]) -> std::io::Result<u64> {
    let (mut at, mut wire) = (0, 0u64);
    loop {
        let size_line = line(s, buf, &mut at, &mut filled).await?;
        wire += (size_line.len() + 2) as u64;
        let digits = buf[size_line].split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
        let size = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.len() <= 16)
            .and_then(|d| u64::from_str_radix(d, 16).ok())
            .ok_or_else(|| std::io::Error::other("a chunk size that does not read"))?;
        if size == 0 {
            break;
        }
        let held = ((filled - at) as u64).min(size);
        at += held as usize;
        s.skip(size - held, scratch).await?;
        wire += size;
        let end = line(s, buf, &mut at, &mut filled).await?;
        if !end.is_empty() {
            return Err(std::io::Error::other("a chunk longer than its size"));
        }
        wire += 2;
    }
    // Trailers, to the blank line.
    loop {
        let trailer = line(s, buf, &mut at, &mut filled).await?;
        wire += (trailer.len() + 2) as u64;
        if trailer.is_empty() {
            break;
        }
    }
    if at < filled {
        return Err(std::io::Error::other(PAST_THE_END));
    }
    Ok(wire)
}

/// The next line in `buf[*at..*filled]`, reading more when it holds no
/// line end: its place in `buf`, without the CRLF, `*at` moved past it.
async fn line(
    s: &mut Conn,
    buf: &mut [u8],
    at: &mut usize,
    filled: &mut usize,
) -> std::io::Result<std::ops::Range<usize>> {
    loop {
        if let Some(p) = buf[*at..*filled].windows(2).position(|w| w == b"\r\n") {
            let line = *at..*at + p;
            *at += p + 2;
            return Ok(line);
        }
        buf.copy_within(*at..*filled, 0);
        *filled -= *at;
        *at = 0;
        if *filled == buf.len() {
            return Err(std::io::Error::other("a chunk line too long"));
        }
        let n = s.read(&mut buf[*filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        *filled += n;
    }
}

/// A connection, in cleartext or over TLS with the record layer kept here.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsConn>),
}

/// A TLS 1.3 connection after its handshake.
struct TlsConn {
    s: TcpStream,
    sealing: Box<dyn MessageEncrypter>,
    sent: u64,
    opening: Box<dyn MessageDecrypter>,
    /// Records received, the next one's sequence number.
    received: u64,
    /// One record as received.
    record: Vec<u8>,
    /// Application data decrypted and not yet read, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
}

impl Conn {
    /// Connects, and shakes hands when `tls` is given.
    async fn open(addr: std::net::SocketAddr, tls: Option<&Tls>) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        let Some(tls) = tls else { return Ok(Conn::Plain(s)) };
        // A handshake that stalls is a connection that failed, as a
        // response that stalls is a timeout.
        let (s, conn) = tokio::time::timeout(REQUEST_TIMEOUT, tls.connector.connect(tls.name.clone(), s))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??
            .into_inner();
        let Some(SupportedCipherSuite::Tls13(suite)) = conn.negotiated_cipher_suite() else {
            return Err(std::io::Error::other("not TLS 1.3"));
        };
        let secrets = conn.dangerous_extract_secrets().map_err(std::io::Error::other)?;
        let keys = |secrets| match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
            _ => Err(std::io::Error::other("an AEAD this client does not know")),
        };
        let ((sent, tx), (received, rx)) = (secrets.tx, secrets.rx);
        let ((tx_key, tx_iv), (rx_key, rx_iv)) = (keys(tx)?, keys(rx)?);
        Ok(Conn::Tls(Box::new(TlsConn {
            s,
            sealing: suite.aead_alg.encrypter(tx_key, tx_iv),
            sent,
            opening: suite.aead_alg.decrypter(rx_key, rx_iv),
            received,
            record: vec![0u8; MAX_RECORD],
            plain: Vec::with_capacity(1 << 14),
            plain_at: 0,
        })))
    }

    async fn send(&mut self, request: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(request).await,
            Conn::Tls(t) => {
                let plain = OutboundPlainMessage {
                    typ: ContentType::ApplicationData,
                    version: ProtocolVersion::TLSv1_2,
                    payload: OutboundChunks::Single(request),
                };
                let sealed = t.sealing.encrypt(plain, t.sent).map_err(std::io::Error::other)?;
                t.sent += 1;
                t.s.write_all(&sealed.encode()).await
            }
        }
    }

    /// Reads response bytes into `buf`; 0 at the connection's end.
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let t = match self {
            Conn::Plain(s) => return s.read(buf).await,
            Conn::Tls(t) => t,
        };
        while t.plain_at == t.plain.len() {
            let Some(len) = t.record_header().await? else { return Ok(0) };
            t.s.read_exact(&mut t.record[..len]).await?;
            let sealed =
                InboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, &mut t.record[..len]);
            let opened = t.opening.decrypt(sealed, t.received).map_err(std::io::Error::other)?;
            t.received += 1;
            match opened.typ {
                ContentType::ApplicationData => {
                    t.plain.clear();
                    t.plain.extend_from_slice(opened.payload);
                    t.plain_at = 0;
                }
                ContentType::Handshake if has_key_update(opened.payload) => {
                    return Err(std::io::Error::other("a TLS key update, which this client does not follow"));
                }
                // Session tickets: nothing for the load.
                ContentType::Handshake => {}
                other => return Err(std::io::Error::other(format!("a TLS record of type {other:?}"))),
            }
        }
        let n = buf.len().min(t.plain.len() - t.plain_at);
        buf[..n].copy_from_slice(&t.plain[t.plain_at..t.plain_at + n]);
        t.plain_at += n;
        Ok(n)
    }

    /// Passes over the next `left` bytes of the response: in the kernel in
    /// cleartext; over TLS they are decrypted and dropped, since they need
    /// not end with a record.
    async fn skip(&mut self, mut left: u64, scratch: &mut [u8]) -> std::io::Result<()> {
        if let Conn::Plain(s) = self {
            return discard(s, left, scratch).await;
        }
        while left > 0 {
            let want = (left as usize).min(scratch.len());
            let n = self.read(&mut scratch[..want]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            left -= n as u64;
        }
        Ok(())
    }

    /// Discards the next `left` bytes of the response, in the kernel.
    async fn discard(&mut self, mut left: u64, scratch: &mut [u8]) -> std::io::Result<()> {
        let t = match self {
            Conn::Plain(s) => return discard(s, left, scratch).await,
            Conn::Tls(t) => t,
        };
        let decrypted = (t.plain.len() - t.plain_at) as u64;
        if decrypted > left {
            return Err(std::io::Error::other(PAST_THE_END));
        }
        t.plain_at = t.plain.len();
        left -= decrypted;
        while left > 0 {
            let Some(len) = t.record_header().await? else {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            };
            let carried =
                len.checked_sub(RECORD_OVERHEAD)
                    .ok_or_else(|| std::io::Error::other("a TLS record shorter than its tag"))? as u64;
            if carried > left {
                return Err(std::io::Error::other("a TLS record past the response's end"));
            }
            discard(&t.s, len as u64, scratch).await?;
            t.received += 1;
            left -= carried;
        }
        Ok(())
    }
}

impl TlsConn {
    /// Reads a record's header: its length, or `None` at the connection's
    /// end. Only application data is taken once the handshake is done.
    async fn record_header(&mut self) -> std::io::Result<Option<usize>> {
        let mut header = [0u8; RECORD_HEADER];
        match self.s.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if header[0] != u8::from(ContentType::ApplicationData) || len > MAX_RECORD {
            return Err(std::io::Error::other(format!("a TLS record header {header:?}")));
        }
        Ok(Some(len))
    }
}

/// Whether the handshake messages `msgs` hold a key update.
fn has_key_update(mut msgs: &[u8]) -> bool {
    while let [typ, a, b, c, ..] = *msgs {
        if typ == KEY_UPDATE {
            return true;
        }
        let len = u32::from_be_bytes([0, a, b, c]) as usize;
        msgs = msgs.get(4 + len..).unwrap_or_default();
    }
    false
}

/// Discards the next `left` bytes `s` receives, in the kernel.
async fn discard(s: &TcpStream, mut left: u64, scratch: &mut [u8]) -> std::io::Result<()> {
    while left > 0 {
        let want = (left as usize).min(scratch.len());
        let n = s
            .async_io(Interest::READABLE, || {
                rustix::net::recv(s, &mut scratch[..want], RecvFlags::TRUNC | RecvFlags::DONTWAIT)
                    .map(|(_, n)| n)
                    .map_err(std::io::Error::from)
            })
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_update_is_found_among_handshake_messages() {
        // A session ticket (type 4) of 3 bytes, then a key update (24).
        let ticket = [4u8, 0, 0, 3, 1, 2, 3];
        let update = [KEY_UPDATE, 0, 0, 1, 0];
        assert!(!has_key_update(&ticket));
        assert!(has_key_update(&update));
        assert!(has_key_update(&[ticket.as_slice(), update.as_slice()].concat()));
        assert!(!has_key_update(&[ticket.as_slice(), &[24, 0]].concat()), "a message cut short is not one");
        // A length past the end ends the walk.
        assert!(!has_key_update(&[4, 0xff, 0xff, 0xff, 24, 0, 0, 1, 0]));
    }
}
