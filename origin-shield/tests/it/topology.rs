//! Builds origins, shields and edges in this process, on port 0.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use outpost_config::NodeConfig;
use outpost_load::OriginServer;
use outpost_proxy::Engine;
use outpost_shield::OriginPool;
use tokio_util::sync::CancellationToken;

pub struct Origin {
    pub addr: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

impl Origin {
    pub async fn start() -> Origin {
        let server = OriginServer::bind(&["127.0.0.1:0".parse().unwrap()], None).await.unwrap();
        let addr = server.local_addrs()[0];
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));
        Origin { addr, _stop: stop.drop_guard() }
    }

    pub async fn stats(&self) -> serde_json::Value {
        serde_json::from_slice(&get(&format!("http://{}/__origin/stats", self.addr), "x").await.body).unwrap()
    }

    pub async fn total(&self) -> u64 {
        self.stats().await["total"].as_u64().unwrap()
    }

    pub async fn control(&self, what: &str) {
        let r = send(Method::POST, &format!("http://{}/__origin/{what}", self.addr), "x").await;
        assert_eq!(r.status, StatusCode::OK);
    }
}

/// A running shield or edge.
pub struct Running {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Runs a bound node until stopped; `addr` is its first listener.
    pub fn spawn(node: outpost_proxy::node::Node) -> Running {
        let addr = node.http_addrs().into_iter().chain(node.https_addrs()).next().unwrap();
        let engine = Arc::clone(node.engine());
        let stop = CancellationToken::new();
        let task = tokio::spawn(node.run(stop.clone()));
        Running { addr, engine, stop, task }
    }

    /// Stops it: listeners close, so the next connection is refused.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

pub fn site(origins: &[SocketAddr], extra: &str) -> String {
    let mut s = "[site]\nid = \"s\"\nhosts = [\"s.test\"]\n".to_string();
    for o in origins {
        s.push_str(&format!("\n[[origin]]\nurl = \"http://{o}\"\nresponse_timeout = \"5s\"\n"));
    }
    s.push_str("\n[cache]\ndefault_ttl = \"60s\"\n[stale]\nwhile_revalidate = \"0s\"\nif_error = \"1h\"\n");
    s.push_str(extra);
    s
}

pub fn node_file(dir: &Path, name: &str, body: &str) -> NodeConfig {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, body).unwrap();
    NodeConfig::load(&file).unwrap_or_else(|e| panic!("{e}"))
}

/// A shield named `name` listening on `listen` (port 0 for any).
pub async fn shield(dir: &Path, name: &str, listen: SocketAddr) -> (Running, Arc<OriginPool>) {
    let cfg = node_file(
        dir,
        name,
        &format!(
            "[node]\nname = \"{name}\"\nrole = \"shield\"\nsites = [\"site.toml\"]\naccess_log = \"off\"\n\
             [listen]\nhttp = [\"{listen}\"]\n[cache]\nmemory = \"32MiB\"\ndisk = \"64MiB\"\npath = \"cache-{name}\"\n"
        ),
    );
    let (node, pool) = outpost_shield::bind(&cfg).await.unwrap();
    (Running::spawn(node), pool)
}

pub async fn edge(dir: &Path, name: &str, shields: &[SocketAddr]) -> Running {
    let list: Vec<String> = shields.iter().map(|s| format!("\"http://{s}\"")).collect();
    let cfg = node_file(
        dir,
        name,
        &format!(
            "[node]\nname = \"{name}\"\nrole = \"edge\"\npop = \"{name}\"\nlatitude = 0.0\nlongitude = 0.0\n\
             sites = [\"site.toml\"]\naccess_log = \"off\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
             [cache]\nmemory = \"32MiB\"\n[upstream]\nshields = [{}]\nprobe_interval = \"100ms\"\n",
            list.join(", ")
        ),
    );
    Running::spawn(outpost_edge::bind(&cfg).await.unwrap())
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn cache_status(&self) -> String {
        self.headers.get("cache-status").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
    }
}

pub async fn send(method: Method, url: &str, host: &str) -> Resp {
    try_send(method, url, host).await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

pub async fn try_send(method: Method, url: &str, host: &str) -> Result<Resp, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = Request::builder().method(method).uri(url).header("host", host).body(Empty::new()).unwrap();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| format!("{e:?}"))?.to_bytes();
    Ok(Resp { status: parts.status, headers: parts.headers, body })
}

pub async fn get(url: &str, host: &str) -> Resp {
    send(Method::GET, url, host).await
}

/// A GET through an edge with extra request headers.
pub async fn try_send_with(edge: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::get(format!("http://{edge}{path}")).header("host", "s.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Empty::new()).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    Resp { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
}

/// A GET through an edge for the site `s.test`.
pub async fn via(edge: SocketAddr, path: &str) -> Resp {
    get(&format!("http://{edge}{path}"), "s.test").await
}

pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}
