//! The server's defences, with a trivial handler over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};

use outpost_config::Limits;
use outpost_load::raw::read_after_stall;
use outpost_net::{Body, Conn, Fields, Handler, Listener, RecvBody, ServerConfig};
use tokio_util::sync::CancellationToken;

mod direct;

/// Never answers `/hang`; answers `/big` with 32 MiB, a POST with its path and body, a GET or
/// HEAD under `/now/` with the response [`shaped`] names, and anything else
/// with its path; counts calls. Requests under `/now/` are answered at once
/// (`answer_now`), and counted apart; under `/now/fields/`, with the
/// response's fields written to the connection's [`Fields`] rather than
/// left in its map.
#[derive(Default)]
struct Echo {
    calls: AtomicUsize,
    now: AtomicUsize,
}

impl Handler for Echo {
    const ANSWERS_NOW: bool = true;

    fn call(self: Arc<Self>, req: Request<RecvBody>, _conn: Conn) -> impl Future<Output = Response<Body>> + Send {
        self.calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if req.uri().path() == "/hang" {
                std::future::pending::<()>().await;
            }
            if req.uri().path() == "/pause" {
                // 16 MiB, then nothing for 3 s (an origin thinking), then
                // the last bytes.
                use futures_util::StreamExt;
                let frames = futures_util::stream::iter([0u8, 1])
                    .then(|i| async move {
                        if i == 1 {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            return Bytes::from_static(b"end");
                        }
                        Bytes::from(vec![b'x'; 16 << 20])
                    })
                    .map(|b| Ok::<_, outpost_net::BoxError>(http_body::Frame::data(b)));
                return Response::new(Body::new(http_body_util::StreamBody::new(frames)));
            }
            let body = if let Some(shape) = req.uri().path().strip_prefix("/now/") {
                return shaped(req.method(), shape);
            } else if req.uri().path() == "/big" {
                Bytes::from(vec![b'x'; 32 << 20])
            } else if req.method() == http::Method::POST {
                let head = format!("POST {} ", req.uri().path());
                let sent = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                Bytes::from([head.as_bytes(), &sent].concat())
            } else {
                Bytes::from(format!("{} {}", req.method(), req.uri().path()))
            };
            Response::new(Body::full(body))
        }
    }

    fn answer_now(this: &Arc<Self>, req: Request<()>, _conn: &Conn, fields: &mut Fields) -> Option<Response<Body>> {
        use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
        let shape = req.uri().path().strip_prefix("/now/")?;
        this.now.fetch_add(1, Ordering::SeqCst);
        let mut resp = shaped(req.method(), shape);
        if shape.starts_with("fields/") {
            // In the map's order; framing stays in the map.
            let (mut kept, mut last) = (http::HeaderMap::new(), None);
            for (name, value) in std::mem::take(resp.headers_mut()) {
                // The name comes with the first of its values only.
                let name = name.or(last.take()).expect("a name");
                last = Some(name.clone());
                match name {
                    CONTENT_LENGTH => fields.length(value.to_str().unwrap().parse().unwrap()),
                    CONNECTION | TRANSFER_ENCODING => _ = kept.append(name.clone(), value),
                    _ => fields.append(&name, &value),
                }
            }
            *resp.headers_mut() = kept;
        }
        Some(resp)
    }
}

/// The same answers as [`Echo`], all of them from hyper.
#[derive(Default)]
struct HyperOnly(Arc<Echo>);

impl Handler for HyperOnly {
    fn call(self: Arc<Self>, req: Request<RecvBody>, conn: Conn) -> impl Future<Output = Response<Body>> + Send {
        Arc::clone(&self.0).call(req, conn)
    }
}

/// Responses of every shape a head is encoded for, by name (after
/// `fields/`, if the name starts with it).
fn shaped(method: &http::Method, shape: &str) -> Response<Body> {
    use http::header::{CONNECTION, CONTENT_LENGTH, DATE, ETAG, SET_COOKIE};
    use http::{HeaderValue, StatusCode};
    let full = |b: &'static [u8]| Body::full(Bytes::from_static(b));
    let head = method == http::Method::HEAD;
    let mut resp = Response::new(full(if head { b"" } else { b"twelve bytes" }));
    let h = resp.headers_mut();
    h.insert("x-shape", HeaderValue::from_str(shape).unwrap());
    match shape.strip_prefix("fields/").unwrap_or(shape) {
        // The length from the body alone.
        "plain" => {}
        // The length said, as a stored hit says it.
        "length" => {
            h.insert(CONTENT_LENGTH, HeaderValue::from(12));
        }
        // A body of unknown length: chunked.
        "stream" => {
            use futures_util::StreamExt;
            let frames = futures_util::stream::iter([&b"one "[..], b"two ", b"three"])
                .map(|b| Ok::<_, outpost_net::BoxError>(http_body::Frame::data(Bytes::from_static(b))));
            *resp.body_mut() = Body::new(http_body_util::StreamBody::new(frames));
        }
        "no-content" => {
            *resp.status_mut() = StatusCode::NO_CONTENT;
            *resp.body_mut() = full(b"");
        }
        "not-modified" => {
            h.insert(ETAG, HeaderValue::from_static("\"v1\""));
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            *resp.body_mut() = full(b"");
        }
        // Fields repeated, an uncommon status, the length said.
        "repeated" => {
            h.append(SET_COOKIE, HeaderValue::from_static("a=1"));
            h.append(SET_COOKIE, HeaderValue::from_static("b=2"));
            h.insert(CONTENT_LENGTH, HeaderValue::from(12));
            *resp.status_mut() = StatusCode::IM_A_TEAPOT;
        }
        "close" => {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        // A body that yields more than the length it says, and one that
        // yields less: no byte past the length goes out.
        "long" => *resp.body_mut() = Body::new(Said { length: 8, data: Some(Bytes::from_static(b"twelve bytes")) }),
        "short" => *resp.body_mut() = Body::new(Said { length: 16, data: Some(Bytes::from_static(b"twelve bytes")) }),
        // A date of its own: the server adds none.
        "dated" => {
            h.insert(DATE, HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"));
        }
        // A body of known length behind a box, as a stored chunk's stream.
        "boxed" => {
            let body = if head { Bytes::new() } else { Bytes::from_static(b"twelve bytes") };
            *resp.body_mut() = Body::new(Full::new(body));
        }
        "big" => *resp.body_mut() = Body::full(vec![b'x'; 32 << 20]),
        _ => *resp.status_mut() = StatusCode::NOT_FOUND,
    }
    resp
}

/// A body whose size hint says `length`, whatever it yields.
struct Said {
    length: u64,
    data: Option<Bytes>,
}

impl http_body::Body for Said {
    type Data = Bytes;
    type Error = outpost_net::BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.length)
    }
}

struct Server {
    addr: SocketAddr,
    echo: Arc<Echo>,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(limits: Limits) -> Server {
    let echo = Arc::new(Echo::default());
    start_with(Arc::clone(&echo), echo, limits).await
}

/// A server of `handler`, whose calls `echo` counts.
async fn start_with<H: Handler>(handler: Arc<H>, echo: Arc<Echo>, limits: Limits) -> Server {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let stop = CancellationToken::new();
    let config = ServerConfig { name: Arc::from("test"), limits };
    tokio::spawn(outpost_net::serve(handler, vec![Listener { tcp, tls: None }], config, stop.clone()));
    Server { addr, echo, stop }
}

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

/// How long until the server closes `s` (reading and discarding).
fn closed_after(mut s: TcpStream, started: Instant) -> Duration {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_byte_gets_the_header_timeout_not_the_idle_one() {
    let server = start(short_header_timeout()).await;
    let addr = server.addr;
    let took = blocking(move || closed_after(TcpStream::connect(addr).unwrap(), Instant::now())).await;
    assert!(took < Duration::from_secs(2), "a silent connection stayed open {took:?}");
    assert!(took >= Duration::from_millis(350), "closed before the timeout: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_connection_idle_longest_makes_room() {
    let server = start(limits(|l| {
        l.max_connections = 20;
        l.header_read_timeout = Duration::from_secs(30);
        l.idle_timeout = Duration::from_secs(30);
    }))
    .await;
    let addr = server.addr;
    let (waited, oldest_closed, newest_open) = blocking(move || {
        // Twenty idle connections fill the cap: the first is the oldest.
        let idle: Vec<TcpStream> = (0..20)
            .map(|_| {
                let s = TcpStream::connect(addr).unwrap();
                std::thread::sleep(Duration::from_millis(5));
                s
            })
            .collect();
        // Past the grace a connection just accepted has.
        std::thread::sleep(Duration::from_millis(700));
        let started = Instant::now();
        let answer = get(addr, "/new");
        let waited = started.elapsed();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("GET /new"), "{answer}");
        let mut first = idle[0].try_clone().unwrap();
        first.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let oldest_closed = matches!(first.read(&mut [0u8; 8]), Ok(0));
        let mut last = idle[19].try_clone().unwrap();
        last.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let newest_open = last.read(&mut [0u8; 8]).is_err();
        (waited, oldest_closed, newest_open)
    })
    .await;
    assert!(waited < Duration::from_secs(1), "the new client waited {waited:?}");
    assert!(oldest_closed, "the oldest idle connection was closed to make room");
    assert!(newest_open, "the newest one was left alone");
}

/// A busy connection (`GET /big`, never read) from `from`.
async fn busy_from(from: &str, addr: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    s
}

/// Whether the server has closed `s` within `wait` (reading what it sent).
async fn closed_within(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 1 << 20];
    let end = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// At the cap, a connection whose answer waits on its client is busy, not
/// idle, however its answer was handed over (here one frame of 32 MiB,
/// taken whole at once): it is not closed to make room, and the newcomer
/// waits; once one ends, the newcomer is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_a_connection_sending_is_not_closed_to_make_room() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(limits(|l| {
        l.max_connections = 4;
        l.send_timeout = Duration::from_secs(60);
        l.send_min_rate = 0;
    }))
    .await;
    let addr = server.addr;
    let mut busy = Vec::new();
    for _ in 0..4 {
        busy.push(busy_from("127.0.0.1", addr).await);
    }
    // Every write waits on its client, past the grace of a newcomer.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut newcomer = tokio::net::TcpStream::connect(addr).await.unwrap();
    newcomer.write_all(b"GET /new HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut got = [0u8; 64];
    let answered = tokio::time::timeout(Duration::from_millis(700), newcomer.read(&mut got)).await;
    assert!(answered.is_err(), "a connection still sending was closed to make room");
    for s in &mut busy {
        assert!(!closed_within(s, Duration::from_millis(10)).await, "a busy connection was closed");
    }
    drop(busy.remove(0));
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), newcomer.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("GET /new"), "{answer}");
}

/// A GET of `path` from `from`, the connection closed after it: what came back.
async fn get_from(from: &str, addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "GET {path} from {from}: no answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// One client network's connections, kept busy, hold no more than
/// `connections_per_network` of the places: past it, another from that
/// network (IPv4 /24) is closed at once, and none is closed for it (an
/// idle one of another network fills the last place). A client of a third
/// network is served; the first has a place again once one of its own
/// ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_network_holds_no_more_than_its_share_of_the_connections() {
    let server = start(limits(|l| {
        l.max_connections = 4;
        l.connections_per_network = 3;
        l.send_timeout = Duration::from_secs(60);
        l.send_min_rate = 0;
    }))
    .await;
    let addr = server.addr;
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(busy_from("127.0.0.1", addr).await);
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.1.1:0".parse().unwrap()).unwrap();
    let mut idle = socket.connect(addr).await.unwrap();
    // Past the grace a connection just accepted has: the idle one could
    // be closed to make room.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut extra = busy_from("127.0.0.2", addr).await;
    assert!(closed_within(&mut extra, Duration::from_secs(2)).await, "a fourth connection of the network was served");
    assert!(!closed_within(&mut idle, Duration::from_millis(10)).await, "one was closed for one over the cap");
    for s in &mut busy {
        assert!(!closed_within(s, Duration::from_millis(10)).await, "a connection was closed for one over the cap");
    }
    let answer = get_from("127.0.2.1", addr, "/other").await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("GET /other"), "{answer}");
    drop(busy.remove(0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = get_from("127.0.0.3", addr, "/again").await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("GET /again"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    let server = start(limits(|l| l.send_timeout = Duration::from_millis(500))).await;
    let addr = server.addr;
    // The client never reads: the server's writes stall once the socket
    // buffers fill.
    let request = b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n";
    let received = blocking(move || read_after_stall(addr, request, Duration::from_millis(2500)).unwrap()).await;
    // What arrived is what the socket buffers held when the server gave up.
    assert!(received < 16 << 20, "the stalled client still got {received} bytes of 32 MiB");
    assert_eq!(get(addr, "/after").lines().last().unwrap(), "GET /after", "the server keeps serving");
}

/// Limits with this send timeout and minimum send rate.
fn send_limits(timeout: Duration, min_rate: u64) -> Limits {
    limits(|l| {
        l.send_timeout = timeout;
        l.send_min_rate = min_rate;
    })
}

/// A GET of `path` (the connection closed after it) from a client whose
/// small receive buffer keeps the node's writes waiting on its reads.
async fn small_buffer_get(addr: SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    s
}

/// Time with nothing waiting to be written (an origin that pauses) is not
/// the client's: one that made a write wait, then took what came at once,
/// keeps its connection through a pause longer than the send timeout,
/// though it has not yet taken `send_min_rate` × `send_timeout` bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_of_the_answer_is_not_counted_against_a_client_that_reads() {
    use tokio::io::AsyncReadExt;
    let server = start(send_limits(Duration::from_secs(1), 64 << 20)).await;
    let mut s = small_buffer_get(server.addr, "/pause").await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the answer never ended");
    // Chunked: the last bytes, then the last chunk.
    assert!(got.ends_with(b"end\r\n0\r\n\r\n"), "cut off after {} bytes", got.len());
}

/// A slow-read client takes a little now and then, enough to restart a
/// timer that waits for no byte at all: below `send_min_rate` it is cut off
/// as a client that takes nothing is, and one above it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_a_trickle_is_cut_off_below_the_minimum_rate() {
    use tokio::io::AsyncReadExt;
    let server = start(send_limits(Duration::from_secs(4), 1 << 20)).await;
    let addr = server.addr;
    // Reads `chunk` bytes every 50 ms for `trickle`, then the rest as fast
    // as it comes: how much of the answer (32 MiB) came in all. A client
    // cut off gets what the socket buffers held when the server closed.
    // Its small receive buffer keeps the node's writes waiting on it, and
    // the node's send buffer wakes the writer each time a third of it has
    // drained: more often than the send timeout at these rates.
    let read_at = |chunk: usize, trickle: Duration| async move {
        let mut s = small_buffer_get(addr, "/big").await;
        let (started, mut got, mut buf) = (Instant::now(), 0usize, vec![0u8; 1 << 20]);
        while started.elapsed() < trickle {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut want = chunk;
            while want > 0 {
                match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf[..want])).await {
                    Ok(Ok(0) | Err(_)) | Err(_) => return got,
                    Ok(Ok(n)) => (got, want) = (got + n, want - n),
                }
            }
        }
        while let Ok(Ok(n @ 1..)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            got += n;
        }
        got
    };
    // 640 KiB a second for ten seconds, of a 1 MiB/s minimum: cut off.
    let got = read_at(32 << 10, Duration::from_secs(10)).await;
    assert!(got < 24 << 20, "a client taking 640 KiB/s of a 1 MiB/s minimum got {got} bytes of 32 MiB");
    // 20 MiB a second, for three seconds: kept, and given it all.
    let got = read_at(1 << 20, Duration::from_secs(3)).await;
    assert!(got > 32 << 20, "a client above the minimum rate got {got} bytes of 32 MiB");
    assert_eq!(get(addr, "/after").lines().last().unwrap(), "GET /after", "the server keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_conflicts_are_refused_even_pipelined() {
    let server = start(Limits::default()).await;
    let addr = server.addr;
    let answer = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /smuggle HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
              GET /third HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await;
    let statuses: Vec<&str> = answer.match_indices("HTTP/1.1 ").map(|(i, _)| &answer[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "400"], "{answer}");
    assert!(answer.contains("both Content-Length and Transfer-Encoding"), "{answer}");
    assert_eq!(server.echo.calls.load(Ordering::SeqCst), 1, "only the first request reached the handler");
}

/// A chunked body's last chunk followed by a bare LF: hyper reads on to the
/// next CRLF CRLF as trailers (and drops them), so the head after the LF
/// is no request of hyper's. The framing follower must not count it as one,
/// or the next request takes its verdict and a conflict behind it is let
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_lf_in_a_chunked_body_does_not_let_a_framing_conflict_through() {
    let server = start(Limits::default()).await;
    let addr = server.addr;
    let answer = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n\
              GET /ghost HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await;
    assert!(!answer.contains("/ghost") && !answer.contains("/b"), "a request after the bare LF was answered: {answer}");
    assert!(server.echo.calls.load(Ordering::SeqCst) <= 1, "{answer}");
}

/// A burst of new connections that arrive before any is accepted waits in
/// the listener's backlog: the kernel drops the handshakes of connections
/// past a full backlog, and their clients retry only after a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_connections_waits_in_the_backlog_not_in_retries() {
    const BURST: usize = 600; // well past the standard library's 128
    let listener = outpost_net::bind(&["127.0.0.1:0".parse().unwrap()], 1024).unwrap().remove(0);
    let addr = listener.local_addr().unwrap();
    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        connecting.spawn(async move {
            let c = tokio::time::timeout(Duration::from_millis(700), tokio::net::TcpStream::connect(addr)).await;
            c.ok().and_then(Result::ok)
        });
    }
    // Kept open until they are accepted.
    let open: Vec<_> = connecting.join_all().await.into_iter().flatten().collect();
    let connected = open.len();
    assert_eq!(connected, BURST, "connections that had to retry their handshake: {}", BURST - connected);
    for _ in 0..BURST {
        tokio::time::timeout(Duration::from_secs(1), listener.accept()).await.unwrap().unwrap();
    }
}

/// One response from `s`, framed by its `Content-Length`: the status line
/// and the body.
fn response(s: &mut TcpStream) -> (String, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "the connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no length in {head}"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head.lines().next().unwrap().to_string(), String::from_utf8(body).unwrap())
}

/// A header-read timeout of 400 ms, and an idle timeout long past it. It
/// makes the connection's tick 100 ms, so an idle connection parks within
/// about 200 ms.
fn short_header_timeout() -> Limits {
    limits(|l| {
        l.header_read_timeout = Duration::from_millis(400);
        l.idle_timeout = Duration::from_secs(30);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_serves_what_comes_next_on_the_same_socket() {
    let server = start(short_header_timeout()).await;
    let addr = server.addr;
    blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for round in 0..3 {
            write!(s, "GET /one-{round} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            assert_eq!(response(&mut s), ("HTTP/1.1 200 OK".into(), format!("GET /one-{round}")));
            // Parked, then woken by two pipelined requests in one write.
            std::thread::sleep(Duration::from_millis(500));
            write!(s, "GET /a-{round} HTTP/1.1\r\nHost: a\r\n\r\nGET /b-{round} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            assert_eq!(response(&mut s).1, format!("GET /a-{round}"));
            assert_eq!(response(&mut s).1, format!("GET /b-{round}"));
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await;
    assert_eq!(server.echo.calls.load(Ordering::SeqCst), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_begun_before_a_pause_is_not_cut_by_parking() {
    // Ticks of 500 ms; the head's two halves are 700 ms apart, inside the
    // 2 s header timeout but past the idle time that parks a connection.
    let server = start(limits(|l| {
        l.header_read_timeout = Duration::from_secs(2);
        l.idle_timeout = Duration::from_secs(30);
    }))
    .await;
    let addr = server.addr;
    blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(response(&mut s).1, "GET /first");
        std::thread::sleep(Duration::from_millis(1200));
        s.write_all(b"GET /split HTTP/1.1\r\nHo").unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        s.write_all(b"st: a\r\n\r\n").unwrap();
        assert_eq!(response(&mut s).1, "GET /split");
        // And a body split the same way is not cut either.
        std::thread::sleep(Duration::from_millis(1200));
        s.write_all(b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc").unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        s.write_all(b"defGET /after HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(response(&mut s).1, "POST /body abcdef");
        assert_eq!(response(&mut s).1, "GET /after");
    })
    .await;
}

/// The start of a head pipelined behind a request still being answered
/// has the header timeout from the moment that answer ends, not only the
/// idle timeout: a client dribbling heads behind its requests holds its
/// connection no longer than one sending them alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_begun_during_an_answer_has_the_header_timeout_once_it_ends() {
    let server = start(limits(|l| {
        l.header_read_timeout = Duration::from_millis(800);
        l.idle_timeout = Duration::from_secs(20);
    }))
    .await;
    let addr = server.addr;
    let took = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        // The POST is answered once its body is whole; the body's last
        // bytes come with the first byte of the next head.
        s.write_all(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(b"defG").unwrap();
        assert_eq!(response(&mut s).1, "POST /p abcdef");
        let answered = Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        answered.elapsed()
    })
    .await;
    assert!(took < Duration::from_secs(5), "the half head was left to the idle timeout: closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connections_close_at_shutdown_and_make_room_at_the_cap() {
    let server = start(limits(|l| {
        l.max_connections = 2;
        l.header_read_timeout = Duration::from_millis(400);
        l.idle_timeout = Duration::from_secs(30);
    }))
    .await;
    let addr = server.addr;
    let (oldest_closed, answer, mut newest) = blocking(move || {
        let open = || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            response(&mut s);
            s
        };
        let mut oldest = open();
        std::thread::sleep(Duration::from_millis(50));
        let newest = open();
        std::thread::sleep(Duration::from_millis(500));
        // Both parked: the cap closes the oldest for a third client.
        let answer = get(addr, "/third");
        oldest.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let oldest_closed = matches!(oldest.read(&mut [0u8; 8]), Ok(0));
        (oldest_closed, answer, newest)
    })
    .await;
    assert!(oldest_closed, "the oldest parked connection made room");
    assert!(answer.ends_with("GET /third"), "{answer}");
    let started = Instant::now();
    server.stop.cancel();
    let took = blocking(move || {
        newest.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = newest.read(&mut [0u8; 8]).unwrap_or(1);
        assert_eq!(n, 0, "closed at shutdown");
        started.elapsed()
    })
    .await;
    assert!(took < Duration::from_secs(2), "a parked connection outlived shutdown by {took:?}");
}

/// What a connection that sent `bytes` (and then waited) gets back before
/// the server closes it, and how long that took.
fn answer_to(addr: SocketAddr, bytes: &[u8]) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_read_to_tell_http2_from_http1_are_not_a_way_around_the_defences() {
    let server = start(short_header_timeout()).await;
    let addr = server.addr;
    let (calls, cases) = blocking(move || {
        // Half a preface, then silence: the header timeout, as for any
        // head that never ends.
        let stalled = answer_to(addr, b"PRI * HTTP/2.0\r\n");
        // A method that begins like the preface: HTTP/1, every byte read
        // ahead given back.
        let pri = answer_to(addr, b"PRI /pri HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        // The preface's start, then something else: not HTTP/2, and not
        // a request either.
        let broken = answer_to(addr, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n");
        // A preface one byte at a time, then a dead stream: nothing read
        // ahead is lost, nothing hangs.
        let mut s = TcpStream::connect(addr).unwrap();
        for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
            s.write_all(&[*b]).unwrap();
        }
        s.write_all(b"\x00\x00").unwrap();
        let started = Instant::now();
        let dead = closed_after(s, started);
        (get(addr, "/after"), (stalled, pri, broken, dead))
    })
    .await;
    let ((stalled, stalled_took), (pri, _), (broken, _), dead) = cases;
    assert!(stalled.is_empty(), "half a preface gets nothing: {stalled:?}");
    assert!(stalled_took >= Duration::from_millis(350), "closed before the header timeout: {stalled_took:?}");
    assert!(stalled_took < Duration::from_secs(2), "half a preface held the connection {stalled_took:?}");
    assert!(pri.starts_with("HTTP/1.1 200") && pri.ends_with("PRI /pri"), "{pri:?}");
    assert!(broken.starts_with("HTTP/1.1 400 "), "a broken preface is a bad request: {broken:?}");
    assert!(dead < Duration::from_secs(2), "a dead HTTP/2 stream held the connection {dead:?}");
    assert!(calls.ends_with("GET /after"), "the server goes on: {calls:?}");
}

/// An HTTP/2 client that resets a stream while its answer is awaited: the
/// request is over, so the connection goes idle and the idle timeout ends
/// it (counted busy for good, it would never be timed out or evicted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_reset_before_its_answer_leaves_its_connection_idle() {
    let server = start(limits(|l| l.idle_timeout = Duration::from_millis(500))).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://{}/hang", server.addr)).body(()).unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let called = Instant::now();
    while server.echo.calls.load(Ordering::SeqCst) == 0 {
        assert!(called.elapsed() < Duration::from_secs(5), "the request never reached the handler");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reset = Instant::now();
    // Its last handle dropped, h2 resets the stream (CANCEL).
    drop(resp);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "a connection whose only stream was reset was never closed");
    let took = reset.elapsed();
    assert!(took >= Duration::from_millis(400), "closed before the idle timeout: {took:?}");
}

/// An HTTP/2 client on the cleartext listener (prior knowledge).
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    send
}

/// Sends `req` with `body` (in frames of up to 64 KiB, as the window lets
/// them go) and reads the answer's head and body.
async fn h2_exchange(
    send: &h2::client::SendRequest<Bytes>,
    req: Request<()>,
    body: Bytes,
) -> (http::response::Parts, Bytes) {
    let mut send = send.clone().ready().await.unwrap();
    let (resp, mut tx) = send.send_request(req, body.is_empty()).unwrap();
    let mut left = body;
    while !left.is_empty() {
        tx.reserve_capacity(left.len().min(64 << 10));
        let room = std::future::poll_fn(|cx| tx.poll_capacity(cx)).await.unwrap().unwrap();
        let chunk = left.split_to(room.min(left.len()));
        tx.send_data(chunk, left.is_empty()).unwrap();
    }
    let (parts, mut recv) = resp.await.unwrap().into_parts();
    let mut got = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        recv.flow_control().release_capacity(chunk.len()).unwrap();
        got.extend_from_slice(&chunk);
    }
    (parts, Bytes::from(got))
}

/// HTTP/2 as the server speaks it: an upload larger than every window
/// reaches the handler whole (the server opens the window as the handler
/// reads), an answer larger than them reaches the client whole, and an
/// answer's head loses what HTTP/2 forbids, gains a `Date`, and says its
/// length when its body knows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_carry_bodies_past_every_window_and_heads_http2_allows() {
    let server = start(Limits::default()).await;
    let send = h2_client(server.addr).await;
    let url = |path: &str| format!("http://{}{path}", server.addr);
    let upload = Bytes::from((0..3u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let post = Request::post(url("/up")).header("content-length", upload.len()).body(()).unwrap();
    let (head, body) = tokio::time::timeout(Duration::from_secs(10), h2_exchange(&send, post, upload.clone()))
        .await
        .expect("an upload past the windows stalled");
    assert_eq!(head.status, 200);
    assert_eq!(body.len(), "POST /up ".len() + upload.len());
    assert!(body[9..] == upload[..], "the upload reached the handler whole");

    let (head, body) = h2_exchange(&send, Request::get(url("/big")).body(()).unwrap(), Bytes::new()).await;
    assert_eq!((head.status.as_u16(), body.len()), (200, 32 << 20));
    assert!(body.iter().all(|&b| b == b'x'));

    let (head, body) = h2_exchange(&send, Request::get(url("/now/close")).body(()).unwrap(), Bytes::new()).await;
    assert_eq!(head.status, 200);
    assert_eq!(body, "twelve bytes");
    assert!(head.headers.get("connection").is_none(), "{:?}", head.headers);
    assert_eq!(head.headers["content-length"], "12", "the length the body knows");
    let date = head.headers["date"].to_str().unwrap();
    assert!(httpdate::parse_http_date(date).is_ok(), "{date:?}");
    let (head, _) = h2_exchange(&send, Request::get(url("/now/dated")).body(()).unwrap(), Bytes::new()).await;
    assert_eq!(head.headers.get_all("date").iter().collect::<Vec<_>>(), ["Mon, 01 Jan 2024 00:00:00 GMT"]);
    let (head, body) = h2_exchange(&send, Request::get(url("/now/stream")).body(()).unwrap(), Bytes::new()).await;
    assert_eq!(body, "one two three");
    assert!(head.headers.get("content-length").is_none() && head.headers.get("transfer-encoding").is_none());
}

/// An HTTP/2 client that stops opening window on a stream (it stopped
/// reading) has the stream reset after the send timeout, and its
/// connection goes idle and is closed in time: nothing is held for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_whose_client_opens_no_window_is_reset_after_the_send_timeout() {
    let server = start(limits(|l| {
        l.send_timeout = Duration::from_millis(500);
        l.idle_timeout = Duration::from_secs(1);
    }))
    .await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (send, conn) =
        h2::client::Builder::new().initial_window_size(16 << 10).handshake::<_, Bytes>(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = Request::get(format!("http://{}/big", server.addr)).body(()).unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let mut recv = resp.await.unwrap().into_body();
    let stalled = Instant::now();
    // What the window let through is read, and the window never opened
    // again.
    let (mut got, mut ended) = (0, None);
    let read = async {
        while let Some(chunk) = recv.data().await {
            match chunk {
                Ok(chunk) => got += chunk.len(),
                Err(e) => {
                    ended = Some(e);
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("a stalled stream was never reset");
    let took = stalled.elapsed();
    assert!(got <= 16 << 10, "more than the window: {got}");
    let reason = ended.expect("the stream ended as if whole").reason();
    assert_eq!(reason, Some(h2::Reason::CANCEL));
    assert!(took >= Duration::from_millis(250), "reset before the send timeout: {took:?}");
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(closed.is_ok(), "the connection was held after its stream was reset");
    drop(send);
}

/// An HTTP/2 client that opens its window a little now and then (20 KiB a
/// second) restarts a timer that waits for no room at all: below
/// `send_min_rate` its stream is reset as a stalled one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_whose_client_opens_a_trickle_of_window_is_reset() {
    let server = start(send_limits(Duration::from_secs(1), 256 << 10)).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (send, conn) =
        h2::client::Builder::new().initial_window_size(16 << 10).handshake::<_, Bytes>(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = Request::get(format!("http://{}/big", server.addr)).body(()).unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let mut recv = resp.await.unwrap().into_body();
    let (mut got, mut ended) = (0, None);
    let read = async {
        while let Some(chunk) = recv.data().await {
            match chunk {
                Ok(chunk) => {
                    got += chunk.len();
                    // Taken at 20 KiB a second before the room is given back.
                    tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / (20 << 10) as f64)).await;
                    let _ = recv.flow_control().release_capacity(chunk.len());
                }
                Err(e) => {
                    ended = Some(e);
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("a trickling stream was never reset");
    assert!(got < 1 << 20, "{got} bytes");
    assert_eq!(ended.expect("the stream ended as if whole").reason(), Some(h2::Reason::CANCEL));
}

/// An HTTP/2 client that reads a large answer slowly but steadily, with
/// pauses shorter than the send timeout, gets all of it, however long past
/// the idle and header timeouts it takes: the answer is in progress until
/// its last bytes are on their way, not once handed to h2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_http2_reader_gets_a_whole_answer_past_the_idle_timeout() {
    let server = start(limits(|l| {
        l.send_timeout = Duration::from_secs(2);
        l.idle_timeout = Duration::from_millis(300);
        l.header_read_timeout = Duration::from_millis(300);
    }))
    .await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(256 << 10)
        .initial_connection_window_size(256 << 10)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = Request::get(format!("http://{}/big", server.addr)).body(()).unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let mut recv = resp.await.unwrap().into_body();
    let started = Instant::now();
    let (mut got, mut paused) = (0usize, 0usize);
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("the answer was cut");
        got += chunk.len();
        if got / (1 << 20) > paused {
            // A pause a megabyte, the window closed meanwhile.
            paused = got / (1 << 20);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        recv.flow_control().release_capacity(chunk.len()).unwrap();
    }
    assert_eq!(got, 32 << 20);
    assert!(started.elapsed() > Duration::from_secs(2), "not slow enough to test: {:?}", started.elapsed());
}

/// HTTP/2 "rapid reset" (CVE-2023-44487): a client that opens streams and
/// resets each once its request is being answered (reset streams leave
/// the concurrency limit at once, so the server would start work without
/// bound; those reset before they are taken, h2 counts itself) has its
/// connection closed, told to calm down; the server serves others after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_resets_stream_after_stream_is_shut_out() {
    let server = start(Limits::default()).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let echo = Arc::clone(&server.echo);
    let url = format!("http://{}/hang", server.addr);
    let driver = &conn;
    let flood = async move {
        let mut send = send;
        let mut reset = 0;
        for _ in 0..40 {
            let mut open = Vec::new();
            for _ in 0..100 {
                send = match send.ready().await {
                    Ok(s) => s,
                    Err(_) => return reset,
                };
                match send.send_request(Request::get(&url).body(()).unwrap(), true) {
                    Ok((resp, _)) => open.push(resp),
                    Err(_) => return reset,
                }
            }
            // Each reset once the handler has it.
            let called = Instant::now();
            while echo.calls.load(Ordering::SeqCst) < reset + open.len() {
                // Shut out: the streams sent after the GOAWAY are not
                // taken, but refused, and the connection closes.
                let refused = open.iter_mut().any(|r| matches!(futures_util::FutureExt::now_or_never(r), Some(Err(_))));
                if driver.is_finished() || refused {
                    return reset;
                }
                let calls = echo.calls.load(Ordering::SeqCst);
                assert!(
                    called.elapsed() < Duration::from_secs(10),
                    "the handler never had them: {reset} reset, {calls} taken of {}",
                    reset + open.len()
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            reset += open.len();
            drop(open);
        }
        reset
    };
    let reset = tokio::time::timeout(Duration::from_secs(60), flood).await.expect("the flood hung");
    assert!(reset < 4000, "every stream was taken");
    assert!(reset >= 1000, "shut out before the limit: {reset}");
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await.expect("the connection stayed open");
    let e = ended.unwrap().expect_err("the connection ended as if nothing were wrong");
    // The GOAWAY's reason; or, when the client was still writing as the
    // server hung up after it, the broken pipe it met first.
    assert!(e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || e.is_io(), "{e:?}");
    assert!(get(server.addr, "/after").ends_with("GET /after"), "the server goes on");
}

/// Histograms' samples are folded into their buckets as the node runs,
/// not only when `/metrics` is scraped: a node nobody scrapes would
/// otherwise keep every sample. Each round records two million (about
/// 50 MB kept unfolded); after the first, memory stays where it was.
#[test]
fn histogram_samples_are_folded_without_a_scrape() {
    outpost_testkit::in_own_process("histogram_samples_are_folded_without_a_scrape", || {
        outpost_net::metrics::install_prometheus();
        let round = || {
            let h = metrics::histogram!("outpost_test_latency_seconds");
            for i in 0..2_000_000u32 {
                h.record(f64::from(i % 1000) / 1e6);
            }
            std::thread::sleep(Duration::from_secs(3));
            outpost_testkit::rss_kib()
        };
        let first = round();
        let rounds: Vec<u64> = (0..3).map(|_| round()).collect();
        let grown = rounds[2].saturating_sub(first);
        assert!(grown < 10 * 1024, "three more rounds grew memory by {grown} KiB: {first} KiB, then {rounds:?}");
        assert!(outpost_net::metrics::render().contains("outpost_test_latency_seconds_count 8000000"));
    });
}
