//! Starts the test origin and an edge in this process, on port 0.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::Method;
use outpost_config::NodeConfig;
use outpost_proxy::node::Node;
use outpost_proxy::upstream::OriginRoute;
use outpost_proxy::{Engine, Tier};
use tokio_util::sync::CancellationToken;

pub struct Edge {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub engine: Arc<Engine>,

    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Site file text for a site in front of `origin`; `extra` is appended.
pub fn site_toml(origin: SocketAddr, extra: &str) -> String {
    format!(
        "[site]\nid = \"t\"\nhosts = [\"t.test\", \"localhost\"]\n\n[[origin]]\nurl = \"http://{origin}\"\nresponse_timeout = \"5s\"\n\n{extra}"
    )
}

/// What tests usually want: a minute of default freshness and no stale
/// windows unless a test asks.
pub const DEFAULT_RULES: &str =
    "[cache]\ndefault_ttl = \"60s\"\n\n[stale]\nwhile_revalidate = \"0s\"\nif_error = \"0s\"\n";

impl Edge {
    pub async fn start(dir: &Path, site: &str) -> Edge {
        Edge::start_with(dir, site, "memory = \"32MiB\"\ndisk = \"128MiB\"", "").await
    }

    /// An edge in front of `origin` with the default rules, a memory cache
    /// and these `[limits]`.
    pub async fn limited(dir: &Path, origin: SocketAddr, limits: &str) -> Edge {
        Edge::start_with(dir, &site_toml(origin, DEFAULT_RULES), "memory = \"32MiB\"", limits).await
    }

    pub async fn start_with(dir: &Path, site: &str, cache: &str, limits: &str) -> Edge {
        Edge::start_node(dir, site, cache, limits, "off").await
    }

    /// An edge with the default rules that writes its access log to
    /// `dir/access.log`.
    pub async fn logging(dir: &Path, origin: SocketAddr) -> Edge {
        Edge::start_node(dir, &site_toml(origin, DEFAULT_RULES), "memory = \"32MiB\"", "", "access.log").await
    }

    async fn start_node(dir: &Path, site: &str, cache: &str, limits: &str, access_log: &str) -> Edge {
        std::fs::write(dir.join("site.toml"), site).unwrap();
        let node = format!(
            "[node]\nname = \"edge-test\"\nrole = \"edge\"\npop = \"tst\"\nlatitude = 0.0\nlongitude = 0.0\n\
             sites = [\"site.toml\"]\naccess_log = \"{access_log}\"\n\n[listen]\nhttp = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\n\n\
             [cache]\n{cache}\npath = \"cache\"\n\n[upstream]\nmode = \"origin\"\n\n{limits}"
        );
        let file = dir.join("edge.toml");
        std::fs::write(&file, &node).unwrap();
        let cfg = NodeConfig::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let bound = Node::bind(&cfg, Tier::Edge, Arc::new(OriginRoute)).await.unwrap();
        let addr = bound.http_addrs()[0];
        let admin = bound.admin_addr().unwrap();
        let engine = Arc::clone(bound.engine());
        let stop = CancellationToken::new();
        let task = tokio::spawn(bound.run(stop.clone()));
        Edge { addr, admin, engine, stop, task }
    }

    /// Stops the edge as Ctrl-C would: open responses finish, the cache is
    /// flushed.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> Resp {
        send(Method::GET, &self.url(path), &[("host", "t.test")]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut h = vec![("host", "t.test")];
        h.extend_from_slice(headers);
        send(Method::GET, &self.url(path), &h).await
    }
}

pub use outpost_testkit::{Origin, Reply as Resp, eventually};

pub async fn send(method: Method, url: &str, headers: &[(&str, &str)]) -> Resp {
    try_send(method, url, headers).await.unwrap()
}

pub async fn try_send(method: Method, url: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    outpost_testkit::request(method, url, headers, b"").await
}

pub async fn send_body(method: Method, url: &str, host: &str, body: &'static [u8]) -> Resp {
    outpost_testkit::request(method, url, &[("host", host)], body).await.unwrap()
}

/// Asserts that `body` is the origin's content for `path` (version 0).
pub fn assert_origin_bytes(path: &str, body: &[u8]) {
    let seed = outpost_load::content::seed(path, 0, &[]);
    assert_eq!(outpost_load::content::first_mismatch(seed, 0, body), None, "{path}: body differs from the origin's");
}

/// Runs `test` on a runtime of its own in a new process of this test
/// binary, with the metrics exporter the program installs: for tests that
/// read the process's metrics.
pub fn with_metrics_in_own_process<F: std::future::Future<Output = ()>>(name: &str, test: impl FnOnce() -> F) {
    in_own_process(name, || {
        outpost_net::metrics::install_prometheus();
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(test());
    });
}

pub use outpost_testkit::in_own_process;

/// One HTTP/1.1 response read off `r`: its head (lower-cased names) and body.
pub fn read_response(r: &mut impl std::io::BufRead, head_only: bool) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; if head_only { 0 } else { len }];
    r.read_exact(&mut body).unwrap();
    (status.trim_end().to_string(), headers, body)
}

/// The value of `series` (name and labels, as exported) in the process's
/// metrics, served by `edge`'s admin listener; 0 when it is not there.
pub async fn metric(edge: &Edge, series: &str) -> f64 {
    let m = send(Method::GET, &format!("http://{}/metrics", edge.admin), &[]).await;
    let text = String::from_utf8_lossy(&m.body).into_owned();
    let line = text.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')));
    line.map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

/// What one request on a new connection got: the interim responses
/// (status line and fields) and when the first arrived, then the final
/// response's status line and when its head arrived.
pub struct Exchange {
    pub interim: Vec<(String, Vec<(String, String)>)>,
    pub interim_at: Option<std::time::Duration>,
    pub status: String,
    pub final_at: std::time::Duration,
}

pub fn exchange(addr: SocketAddr, request: &str) -> Exchange {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    s.write_all(request.as_bytes()).unwrap();
    let mut r = std::io::BufReader::new(&mut s);
    let (mut interim, mut interim_at) = (Vec::new(), None);
    loop {
        let head_only = request.starts_with("HEAD");
        let (status, fields, _) = read_response(&mut r, head_only);
        if status.split(' ').nth(1).is_some_and(|code| code.starts_with('1')) {
            interim_at.get_or_insert(started.elapsed());
            interim.push((status, fields));
            continue;
        }
        return Exchange { interim, interim_at, status, final_at: started.elapsed() };
    }
}

/// What one HTTP/2 request got: its interim responses (status, `link`
/// values, and when each came), then the answer's status, when its head
/// came, and its body.
#[derive(Debug)]
pub struct H2Exchange {
    pub interim: Vec<(http::StatusCode, Vec<String>, std::time::Duration)>,
    pub status: http::StatusCode,
    pub final_at: std::time::Duration,
    pub body: Vec<u8>,
}

/// An HTTP/2 client (h2's, which reads interim responses) over `io`.
pub async fn h2_client<T>(io: T) -> h2::client::SendRequest<bytes::Bytes>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    send
}

/// A GET of `url` on a stream of its own.
pub async fn h2_get(send: &h2::client::SendRequest<bytes::Bytes>, url: &str) -> H2Exchange {
    let started = std::time::Instant::now();
    let mut send = send.clone().ready().await.unwrap();
    let (mut resp, _) = send.send_request(http::Request::get(url).body(()).unwrap(), true).unwrap();
    let mut interim = Vec::new();
    while let Some(r) = std::future::poll_fn(|cx| resp.poll_informational(cx)).await {
        let r = r.unwrap();
        let links = r.headers().get_all("link").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        interim.push((r.status(), links, started.elapsed()));
    }
    let resp = resp.await.unwrap();
    let final_at = started.elapsed();
    let status = resp.status();
    let mut recv = resp.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        recv.flow_control().release_capacity(chunk.len()).unwrap();
        body.extend_from_slice(&chunk);
    }
    H2Exchange { interim, status, final_at, body }
}

/// `n` GETs of `url` (host `t.test`) sent at once; their answers in order.
pub async fn at_once(url: &str, n: usize) -> Vec<Resp> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { send(Method::GET, &url, &[("host", "t.test")]).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// Reads a request head (through its blank line) from `s`; `None` when the
/// peer closes or fails first.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}
