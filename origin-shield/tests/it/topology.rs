//! Builds origins, shields and edges in this process, on port 0.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::Method;
use outpost_config::NodeConfig;
use outpost_proxy::Engine;
use outpost_shield::OriginPool;
use tokio_util::sync::CancellationToken;

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
    edge_with(dir, name, shields, "").await
}

/// An edge whose `[upstream]` section also has `upstream`.
pub async fn edge_with(dir: &Path, name: &str, shields: &[SocketAddr], upstream: &str) -> Running {
    let upstream = format!("probe_interval = \"100ms\"\n{upstream}");
    edge_serving(dir, name, shields, "\"site.toml\"", &upstream).await
}

/// An edge of the site files `sites` (a TOML list's items) whose
/// `[upstream]` section has `upstream` besides its shields.
pub async fn edge_serving(dir: &Path, name: &str, shields: &[SocketAddr], sites: &str, upstream: &str) -> Running {
    let list: Vec<String> = shields.iter().map(|s| format!("\"http://{s}\"")).collect();
    let cfg = node_file(
        dir,
        name,
        &format!(
            "[node]\nname = \"{name}\"\nrole = \"edge\"\npop = \"{name}\"\nlatitude = 0.0\nlongitude = 0.0\n\
             sites = [{sites}]\naccess_log = \"off\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
             [cache]\nmemory = \"32MiB\"\n[upstream]\nshields = [{}]\n{upstream}\n",
            list.join(", ")
        ),
    );
    Running::spawn(outpost_edge::bind(&cfg).await.unwrap())
}

pub use outpost_testkit::{Origin, Reply as Resp, eventually};

pub async fn send(method: Method, url: &str, host: &str) -> Resp {
    try_send(method, url, host).await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

pub async fn try_send(method: Method, url: &str, host: &str) -> Result<Resp, String> {
    outpost_testkit::request(method, url, &[("host", host)], b"").await
}

pub async fn get(url: &str, host: &str) -> Resp {
    send(Method::GET, url, host).await
}

/// A GET through an edge with extra request headers.
pub async fn try_send_with(edge: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut h = vec![("host", "s.test")];
    h.extend_from_slice(headers);
    outpost_testkit::get(&format!("http://{edge}{path}"), &h).await
}

/// A GET through an edge for the site `s.test`.
pub async fn via(edge: SocketAddr, path: &str) -> Resp {
    get(&format!("http://{edge}{path}"), "s.test").await
}
