//! The whole topology in this process, on loopback: the test origin, the
//! control plane, the DNS server, two shields and three edges, with every
//! link between them going through a fault-injecting [`Relay`]:
//! edge → shield (one relay per pair), shield → origin, and every node →
//! control plane. Stopping a node drops its sockets and its memory; its disk
//! cache stays, as after a crash.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use outpost_config::NodeConfig;
use tokio_util::sync::CancellationToken;

use crate::relay::Relay;

pub const SITE_HOST: &str = "shop.test";
const POPS: [(&str, f64, f64); 3] = [("fra", 50.11, 8.68), ("iad", 38.95, -77.45), ("sin", 1.35, 103.99)];

pub use outpost_testkit::{Reply, free_addr};

/// One request, with `host` as its Host (the URL's when empty); `Err` when
/// there was no response (or it broke off).
pub async fn request(method: Method, url: &str, host: &str, token: Option<&str>, body: &str) -> Result<Reply, String> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if !host.is_empty() {
        headers.push(("host", host));
    }
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    outpost_testkit::request(method, url, &headers, body.as_bytes()).await
}

/// A GET straight to a shield, as an edge sends it for a plain-HTTP client
/// (the scheme an edge forwards is part of the shield's cache key).
pub async fn shield_get(shield: SocketAddr, path: &str) -> Reply {
    outpost_testkit::get(&format!("http://{shield}{path}"), &[("host", SITE_HOST), ("x-forwarded-proto", "http")]).await
}

pub fn load_node(dir: &Path, name: &str, text: &str) -> NodeConfig {
    let f = dir.join(format!("{name}.toml"));
    std::fs::write(&f, text).unwrap();
    NodeConfig::load(&f).unwrap_or_else(|e| panic!("{e}"))
}

/// A node running in this process.
pub struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    fn spawn(node: outpost_proxy::node::Node) -> Running {
        let stop = CancellationToken::new();
        let task = tokio::spawn(node.run(stop.clone()));
        Running { stop, task }
    }

    /// Stops it: listeners and connections close, memory is dropped.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

pub struct Shield {
    pub listen: SocketAddr,
    pub cfg: NodeConfig,
    pub node: Option<Running>,
    pub control_relay: Relay,
}

pub struct Edge {
    pub name: String,
    pub addr: SocketAddr,
    pub cfg: NodeConfig,
    pub node: Option<Running>,
    /// To shield 0 and shield 1.
    pub shield_relays: Vec<Relay>,
    pub control_relay: Relay,
}

pub struct Topology {
    pub dir: outpost_testkit::TestDir,
    pub origin: SocketAddr,
    /// Shields reach the origin through this.
    pub origin_relay: Relay,
    pub control: SocketAddr,
    pub admin_token: String,
    pub shields: Vec<Shield>,
    pub edges: Vec<Edge>,
    pub dns: SocketAddr,
    _dns_relay: Relay,
    /// The control plane, when it runs as its own process.
    pub control_process: Option<Process>,
    stop: CancellationToken,
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The site every scenario uses: objects from the origin (through its
/// relay), stale copies allowed for an hour when the origin fails.
pub fn site_text(origin: SocketAddr, response_timeout: &str) -> String {
    format!(
        "[site]\nid = \"shop\"\nhosts = [\"{SITE_HOST}\"]\nallow_direct = false\n\
         [[origin]]\nurl = \"http://{origin}\"\nconnect_timeout = \"500ms\"\nresponse_timeout = \"{response_timeout}\"\n\
         [cache]\ndefault_ttl = \"60s\"\n[stale]\nwhile_revalidate = \"0s\"\nif_error = \"1h\"\npartition_grace = \"5m\"\n"
    )
}

/// How a topology is built.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The site's origin response timeout.
    pub response_timeout: &'static str,
    /// Run the control plane as a real `outpost control` process (so it can
    /// be killed with SIGKILL) rather than in this process.
    pub control_process: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { response_timeout: "5s", control_process: false }
    }
}

/// A real `outpost` process, killed with SIGKILL when dropped.
pub struct Process {
    pub child: std::process::Child,
    args: Vec<String>,
}

impl Process {
    pub fn spawn(args: &[&str]) -> Process {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Process { child, args }
    }

    /// A child started some other way (killed when dropped, not restartable).
    pub fn adopt(child: std::process::Child) -> Process {
        Process { child, args: Vec::new() }
    }

    /// SIGKILL: no shutdown, no flush; the OS drops its sockets.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The same command again.
    pub fn restart(&mut self) {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        *self = Process::spawn(&args);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until something listens on `addr`.
pub async fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{what} is not listening on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Topology {
    pub async fn start() -> Topology {
        Topology::start_opts(Options::default()).await
    }

    /// The topology with the site's origin response timeout set.
    pub async fn start_with(response_timeout: &'static str) -> Topology {
        Topology::start_opts(Options { response_timeout, ..Options::default() }).await
    }

    pub async fn start_opts(opts: Options) -> Topology {
        let dir = outpost_testkit::tempdir();
        let d = dir.path().to_path_buf();
        let stop = CancellationToken::new();

        let origin_server = outpost_load::OriginServer::bind(&["127.0.0.1:0".parse().unwrap()], None).await.unwrap();
        let origin = origin_server.local_addrs()[0];
        tokio::spawn(origin_server.run(stop.clone()));
        let origin_relay = Relay::start(origin).await;

        let (control, control_process) = start_control(&d, opts.control_process, &stop).await;
        let admin_token = std::fs::read_to_string(d.join("admin.token")).unwrap();
        let url = format!("http://{control}/v1/sites/shop");
        let site = site_text(origin_relay.addr, opts.response_timeout);
        let r = request(Method::PUT, &url, "x", Some(&admin_token), &site).await.unwrap();
        assert!(r.status.is_success(), "{}", String::from_utf8_lossy(&r.body));

        let shields = start_shields(&d, control).await;
        let edges = start_edges(&d, control, &shields).await;
        let (dns, dns_relay) = start_dns(&d, control, &stop).await;
        let t = Topology {
            dir,
            origin,
            origin_relay,
            control,
            admin_token,
            shields,
            edges,
            dns,
            _dns_relay: dns_relay,
            control_process,
            stop,
        };
        t.wait_until_serving().await;
        t
    }

    /// A file in the topology's folder (node files, caches, tokens).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Every edge has the site from the control plane.
    async fn wait_until_serving(&self) {
        for e in &self.edges {
            let url = format!("http://{}/__warmup", e.addr);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let r = request(Method::GET, &url, SITE_HOST, None, "").await;
                if r.is_ok_and(|r| r.status == StatusCode::OK) {
                    break;
                }
                assert!(Instant::now() < deadline, "{} never got the site", e.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub async fn get(&self, edge: usize, path: &str) -> Result<Reply, String> {
        request(Method::GET, &format!("http://{}{path}", self.edges[edge].addr), SITE_HOST, None, "").await
    }

    /// Requests the origin counted for paths under `prefix`.
    pub async fn origin_count(&self, prefix: &str) -> u64 {
        origin_fetches(self.origin, prefix).await
    }

    /// A purge through the API, returning its event sequence.
    pub async fn purge(&self, body: &str) -> serde_json::Value {
        let url = format!("http://{}/v1/purge", self.control);
        let r = request(Method::POST, &url, "x", Some(&self.admin_token), body).await.unwrap();
        assert!(r.status.is_success(), "{}", String::from_utf8_lossy(&r.body));
        serde_json::from_slice(&r.body).unwrap()
    }
}

impl Edge {
    pub async fn stop(&mut self) {
        if let Some(n) = self.node.take() {
            n.stop().await;
        }
    }

    /// Starts it again from its node file (and its disk cache).
    pub async fn start(&mut self) {
        let node = outpost_edge::bind(&self.cfg).await.unwrap();
        self.addr = node.http_addrs()[0];
        self.node = Some(Running::spawn(node));
    }
}

impl Shield {
    pub async fn start(&mut self) {
        let (node, _) = outpost_shield::bind(&self.cfg).await.unwrap();
        self.node = Some(Running::spawn(node));
    }

    pub async fn stop(&mut self) {
        if let Some(n) = self.node.take() {
            n.stop().await;
        }
    }
}

/// What steady load through the edges saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub stale: AtomicU64,
    pub hits: AtomicU64,
    pub slowest_ms: AtomicU64,
}

impl Seen {
    /// Requests, errors and stale answers.
    pub fn counts(&self) -> (u64, u64, u64) {
        (self.requests.load(Ordering::Relaxed), self.errors.load(Ordering::Relaxed), self.stale.load(Ordering::Relaxed))
    }
}

/// Steady load: `clients` loops over the edges and `paths`, until stopped.
pub struct Load {
    pub seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(edges: Vec<SocketAddr>, paths: Vec<String>, clients: usize) -> Load {
        Load::start_for(SITE_HOST, edges, paths, clients)
    }

    /// As [`Load::start`], for the site at `host`.
    pub fn start_for(host: &'static str, edges: Vec<SocketAddr>, paths: Vec<String>, clients: usize) -> Load {
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (seen, stop, edges, paths) = (Arc::clone(&seen), Arc::clone(&stop), edges.clone(), paths.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let edge = edges[i % edges.len()];
                    let path = &paths[(i / edges.len()) % paths.len()];
                    i += 1;
                    let started = Instant::now();
                    let r = request(Method::GET, &format!("http://{edge}{path}"), host, None, "").await;
                    seen.slowest_ms.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    seen.requests.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok(r) if r.status == StatusCode::OK => {
                            let cs = r.cache_status();
                            if cs.contains("stale") {
                                seen.stale.fetch_add(1, Ordering::Relaxed);
                            }
                            if cs.rsplit(',').next().is_some_and(|m| m.contains("; hit")) {
                                seen.hits.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(r) => {
                            eprintln!("load: {path} via {edge}: {} {}", r.status, r.cache_status());
                            seen.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("load: {path} via {edge}: {e}");
                            seen.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Load { seen, stop, tasks }
    }

    pub async fn stop(self) -> Arc<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.seen
    }
}

/// Requests the test origin at `origin` got for paths starting with `prefix`.
pub async fn origin_fetches(origin: SocketAddr, prefix: &str) -> u64 {
    let r = request(Method::GET, &format!("http://{origin}/__origin/stats"), "x", None, "").await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["paths"].as_object().unwrap().iter().filter(|(p, _)| p.starts_with(prefix)).filter_map(|(_, n)| n.as_u64()).sum()
}

/// The A records the DNS server gives a London client.
pub async fn dns_london(dns: SocketAddr) -> Vec<IpAddr> {
    dns_a(dns, "shop.cdn.test.").await
}

/// The A records for `name` as a London client (by its ECS subnet) gets them.
pub async fn dns_a(dns: SocketAddr, name: &str) -> Vec<IpAddr> {
    dns_query(dns, name, Some("81.2.69.0")).await
}

/// The A records for `name`, asked with the ECS option for `subnet`/24 or,
/// without, as a stub resolver asks; from a socket of the host (network
/// namespace) the caller runs on. None when nothing answers within 2 s.
pub async fn dns_query(dns: SocketAddr, name: &str, subnet: Option<&str>) -> Vec<IpAddr> {
    dns_records(dns, name, hickory_proto::rr::RecordType::A, subnet.map(|s| (s, 24))).await
}

/// The A or AAAA records for `name`, asked with the ECS option for
/// `subnet` (address, prefix) or without.
pub async fn dns_records(
    dns: SocketAddr,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
    subnet: Option<(&str, u8)>,
) -> Vec<IpAddr> {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{Name, RData};
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some((subnet, prefix)) = subnet {
        let mut e = Edns::new();
        e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(subnet.parse().unwrap(), prefix, 0)));
        m.set_edns(e);
    }
    let packet = m.to_vec().unwrap();
    let any: SocketAddr = if dns.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
    let sock = tokio::net::UdpSocket::bind(any).await.unwrap();
    sock.send_to(&packet, dns).await.unwrap();
    let mut buf = [0u8; 2048];
    let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await else {
        return Vec::new();
    };
    let reply = Message::from_vec(&buf[..n]).unwrap();
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// The control plane, in this process or (`own_process`) as its own.
async fn start_control(d: &Path, own_process: bool, stop: &CancellationToken) -> (SocketAddr, Option<Process>) {
    let listen = if own_process { free_addr() } else { "127.0.0.1:0".parse().unwrap() };
    let cfg = load_node(
        d,
        "control",
        &format!(
            "[node]\nname = \"control\"\nrole = \"control\"\n[listen]\nhttp = [\"{listen}\"]\n\
             [store]\npath = \"control.redb\"\n[auth]\nadmin_token_file = \"admin.token\"\nnode_token_file = \"node.token\"\n"
        ),
    );
    if own_process {
        let file = d.join("control.toml");
        let p = Process::spawn(&["control", "--config", file.to_str().unwrap()]);
        wait_listening(listen, "the control plane").await;
        return (listen, Some(p));
    }
    let control_node = outpost_control::node::ControlNode::bind(&cfg).await.unwrap();
    let addr = control_node.addr();
    tokio::spawn(control_node.run(stop.clone()));
    (addr, None)
}

/// Two shields, each following the control plane through its own relay.
async fn start_shields(d: &Path, control: SocketAddr) -> Vec<Shield> {
    let mut shields = Vec::new();
    for i in 1..=2 {
        let name = format!("shield-{i}");
        let listen = free_addr();
        let control_relay = Relay::start(control).await;
        let cfg = load_node(
            d,
            &name,
            &format!(
                "[node]\nname = \"{name}\"\nrole = \"shield\"\naccess_log = \"off\"\n[listen]\nhttp = [\"{listen}\"]\n\
                 [cache]\nmemory = \"16MiB\"\ndisk = \"64MiB\"\npath = \"cache-{name}\"\n\
                 [control]\nurl = \"http://{}\"\ntoken_file = \"node.token\"\n",
                control_relay.addr
            ),
        );
        let mut shield = Shield { listen, cfg, node: None, control_relay };
        shield.start().await;
        shields.push(shield);
    }
    shields
}

/// An edge in each of [`POPS`], reaching every shield and the control
/// plane through relays of its own.
async fn start_edges(d: &Path, control: SocketAddr, shields: &[Shield]) -> Vec<Edge> {
    let mut edges = Vec::new();
    for (i, (pop, lat, lon)) in POPS.iter().enumerate() {
        let name = format!("edge-{pop}");
        let mut shield_relays = Vec::new();
        for s in shields {
            shield_relays.push(Relay::start(s.listen).await);
        }
        let control_relay = Relay::start(control).await;
        // Named, so every edge agrees which shield owns a key.
        let list: Vec<String> = shield_relays
            .iter()
            .enumerate()
            .map(|(i, r)| format!("{{ name = \"shield-{}\", url = \"http://{}\" }}", i + 1, r.addr))
            .collect();
        let ip = format!("127.0.0.{}", 51 + i);
        let cfg = load_node(
            d,
            &name,
            &format!(
                "[node]\nname = \"{name}\"\nrole = \"edge\"\npop = \"{pop}\"\nlatitude = {lat}\nlongitude = {lon}\n\
                 access_log = \"off\"\n[listen]\nhttp = [\"{ip}:0\"]\n\
                 [cache]\nmemory = \"16MiB\"\ndisk = \"64MiB\"\npath = \"cache-{name}\"\n\
                 [upstream]\nshields = [{}]\nprobe_interval = \"200ms\"\n\
                 [control]\nurl = \"http://{}\"\ntoken_file = \"node.token\"\n",
                list.join(", "),
                control_relay.addr
            ),
        );
        let node = outpost_edge::bind(&cfg).await.unwrap();
        let addr = node.http_addrs()[0];
        edges.push(Edge { name, addr, cfg, node: Some(Running::spawn(node)), shield_relays, control_relay });
    }
    edges
}

/// The geo-DNS node with the sample database, one PoP per edge.
async fn start_dns(d: &Path, control: SocketAddr, stop: &CancellationToken) -> (SocketAddr, Relay) {
    let dns_relay = Relay::start(control).await;
    std::fs::create_dir_all(d.join("geoip")).unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/geoip/sample.mmdb");
    std::fs::copy(sample, d.join("geoip/sample.mmdb")).unwrap();
    let mut dns_text = format!(
        "[node]\nname = \"dns\"\nrole = \"dns\"\n[listen]\ndns = \"127.0.0.1:0\"\n\
         [dns]\nzone = \"cdn.test.\"\nttl = \"30s\"\ngeoip = \"geoip/sample.mmdb\"\ndefault_pop = \"fra\"\nsites = [\"shop\"]\n\
         [dns.continents]\nEU = \"fra\"\nNA = \"iad\"\nAS = \"sin\"\n\
         [control]\nurl = \"http://{}\"\ntoken_file = \"node.token\"\n",
        dns_relay.addr
    );
    for (pop, lat, lon) in POPS {
        dns_text.push_str(&format!(
            "[[dns.pop]]\nname = \"{pop}\"\nlatitude = {lat}\nlongitude = {lon}\nnetworks = [\"127.0.0.0/8\"]\n"
        ));
    }
    let dns_cfg = load_node(d, "dns", &dns_text);
    let dns_node = outpost_control::dns::DnsNode::bind(&dns_cfg).await.unwrap();
    let dns = dns_node.addr();
    tokio::spawn(dns_node.run(stop.clone()));
    (dns, dns_relay)
}
