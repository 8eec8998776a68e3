//! What Outpost's tests share, so no crate's tests grow their own copy:
//! waiting for a condition ([`eventually`]), an HTTP client ([`request`]
//! and [`Reply`]), free loopback addresses ([`free_addr`]), and the test
//! origin running in the test's process ([`Origin`]), a real etcd
//! cluster on loopback ([`etcd::EtcdCluster`]), a process of its own
//! for a test that measures its process ([`in_own_process`], [`rss_kib`]),
//! and a temporary folder that nodes still stopping cannot leave behind
//! ([`tempdir`]).

pub mod etcd;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

/// How long [`eventually`] waits, and how often it looks.
pub const EVENTUALLY: Duration = Duration::from_secs(5);
const EVENTUALLY_POLL: Duration = Duration::from_millis(25);

/// Waits until `f` holds, at most [`EVENTUALLY`]; for effects of background
/// work. Panics naming `what` when it never does.
pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, EVENTUALLY, f).await
}

/// [`eventually`] with a limit of its own: for a wait whose bound is what
/// the test tells apart (parallel work from serial, say).
pub async fn eventually_within<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(EVENTUALLY_POLL).await;
    }
    panic!("timed out waiting for {what}");
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `Cache-Status` header, or "".
    pub fn cache_status(&self) -> String {
        self.headers.get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    }

    /// Served from this node's cache: its member says `hit`.
    pub fn is_hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
}

/// Sends a request with exactly these headers and body (a new connection
/// each time), and reads the whole response.
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Reply, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, b) = resp.into_parts();
    let body = b.collect().await.map_err(|e| format!("body: {e:?}"))?.to_bytes();
    Ok(Reply { status: parts.status, headers: parts.headers, body })
}

/// A GET with `headers`, which must be answered.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    request(Method::GET, url, headers, b"").await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// A loopback address nothing listens on, for a process that must be told
/// its address before it starts. Each call picks another address in
/// 127.0.0.0/8 (never 127.0.0.1) as well as a port the system had free, so
/// two tests do not race for one.
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() * 4099;
    let ip = Ipv4Addr::new(127, 100 + (n >> 16 & 0x7f) as u8, (n >> 8) as u8, 2 + (n as u8 % 250));
    let l = std::net::TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("no free port on {ip}: {e}"));
    l.local_addr().unwrap_or_else(|e| panic!("{e}"))
}

/// A temporary folder for nodes that run in the test's process, removed
/// when dropped even while those nodes are still stopping.
///
/// A node writes into its folder as it stops (its purge rules, the disk
/// tier's last blocks). When that write lands between the removal's listing
/// of a folder and its `rmdir`, a plain [`tempfile::TempDir`] leaves the
/// folder behind. This one tries again until the folder is gone: once it
/// is, a late write fails instead of creating it again.
#[derive(Debug)]
pub struct TestDir(Option<tempfile::TempDir>);

/// A new [`TestDir`] under the system's temporary folder.
pub fn tempdir() -> TestDir {
    TestDir(Some(tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary folder: {e}"))))
}

impl TestDir {
    pub fn path(&self) -> &std::path::Path {
        self.0.as_ref().map(|d| d.path()).unwrap_or_else(|| unreachable!("only drop takes the folder"))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else { return };
        let path = dir.keep();
        for _ in 0..40 {
            // An error is a file that came while the folder was emptied:
            // the next round takes it.
            let _ = std::fs::remove_dir_all(&path);
            if !path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} was still written to after 2 s; left behind", path.display());
    }
}

/// The test origin, running in this process until dropped.
#[derive(Debug)]
pub struct Origin {
    pub addr: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

impl Origin {
    pub async fn start() -> Origin {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = outpost_load::OriginServer::bind(&[any], None).await.unwrap_or_else(|e| panic!("origin: {e}"));
        let addr = server.local_addrs()[0];
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));
        Origin { addr, _stop: stop.drop_guard() }
    }

    /// `/__origin/stats`: how many requests it served, in all and by path.
    pub async fn stats(&self) -> serde_json::Value {
        get(&format!("http://{}/__origin/stats", self.addr), &[]).await.json()
    }

    pub async fn total(&self) -> u64 {
        self.stats().await["total"].as_u64().unwrap_or(0)
    }

    /// Requests it served for `path`.
    pub async fn count(&self, path: &str) -> u64 {
        self.stats().await["paths"][path].as_u64().unwrap_or(0)
    }

    /// The headers of the last request for `path`, as JSON.
    pub async fn last_request(&self, path: &str) -> serde_json::Value {
        get(&format!("http://{}/__origin/request?path={path}", self.addr), &[]).await.json()
    }

    /// A control call (`reset`, `fault?mode=…`, `bump?path=…`).
    pub async fn control(&self, what: &str) {
        let url = format!("http://{}/__origin/{what}", self.addr);
        let r = request(Method::POST, &url, &[], b"").await.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(r.status, StatusCode::OK, "origin control {what}");
    }
}

/// Runs `work` in a new process of this test binary running only the test
/// `name`: for tests that measure their own process (`cargo test` runs the
/// binary's other tests beside it).
pub fn in_own_process(name: &str, work: impl FnOnce()) {
    const CHILD: &str = "OUTPOST_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        work();
        return;
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("this test's binary: {e}"));
    let out = std::process::Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap_or_else(|e| panic!("{name} could not be started in its own process: {e}"));
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} failed in its own process");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"), "{name} did not run in its own process");
}

/// This process's resident memory, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or_else(|| panic!("no VmRSS: {status}"));
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}
