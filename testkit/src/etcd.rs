//! A real etcd cluster on loopback, for the tests of the replicated store:
//! every member its own `etcd` process with its own data folder, stopped
//! (SIGKILL) when the cluster is dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_addr;

/// How long a new cluster may take to elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One member: its process (None while killed) and its addresses.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    process: Option<Child>,
}

#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
    initial_cluster: String,
    tls: Option<ClientTls>,
}

/// PEM files for members that serve clients over TLS and require their
/// certificates: the CA that signed both sides, and the members' own.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster has a leader.
    /// Panics, saying what to install, when `etcd` is not on the machine.
    pub async fn start(size: usize) -> EtcdCluster {
        EtcdCluster::start_with(size, |_| None).await
    }

    /// Starts `size` members whose clients must speak TLS with a certificate:
    /// `tls` gets the members' client addresses and gives the files.
    pub async fn start_tls(size: usize, tls: impl FnOnce(&[SocketAddr]) -> ClientTls) -> EtcdCluster {
        EtcdCluster::start_with(size, |addrs| Some(tls(addrs))).await
    }

    async fn start_with(size: usize, tls: impl FnOnce(&[SocketAddr]) -> Option<ClientTls>) -> EtcdCluster {
        if Command::new("etcd").arg("--version").stdout(Stdio::null()).status().is_err() {
            panic!("etcd is not installed: run scripts/deps.sh as root (Debian's etcd-server)");
        }
        let dir = tempfile::tempdir().expect("a temporary folder");
        let members: Vec<Member> = (0..size)
            .map(|i| Member { name: format!("m{i}"), client: free_addr(), peer: free_addr(), process: None })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}=http://{}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let tls = tls(&members.iter().map(|m| m.client).collect::<Vec<_>>());
        let mut cluster = EtcdCluster { members, dir, initial_cluster, tls };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_healthy().await;
        cluster
    }

    /// The members' client URLs, for `[store] endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| self.client_url(m.client)).collect()
    }

    fn client_url(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn spawn(&mut self, i: usize) {
        let data = self.data_dir(i);
        let m = &self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name))).expect("a log file");
        let client = self.client_url(m.client);
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command.arg("--cert-file").arg(&tls.cert).arg("--key-file").arg(&tls.key);
            command.arg("--trusted-ca-file").arg(&tls.ca).arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args(["--initial-advertise-peer-urls", &format!("http://{}", m.peer)])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", "outpost-test"])
            // Fast elections on loopback: a killed leader is replaced in
            // about a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.members[i].process = Some(child);
    }

    /// Turns authentication on: a `root` user, and `user` with `password`
    /// allowed to read and write every key under `prefix`.
    pub fn require_users(&self, user: &str, password: &str, prefix: &str) {
        let endpoints = self.endpoints().join(",");
        let run = |args: &[&str]| {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={endpoints}"))
                .args(args)
                .output()
                .expect("etcdctl runs (Debian's etcd-client; scripts/deps.sh installs it)");
            assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["user", "add", "root:root-secret"]);
        run(&["user", "add", &format!("{user}:{password}")]);
        run(&["role", "add", user]);
        run(&["role", "grant-permission", user, "readwrite", "--prefix=true", prefix]);
        run(&["user", "grant-role", user, user]);
        run(&["auth", "enable"]);
    }

    /// SIGKILL to member `i`: no shutdown, its data folder stays.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Starts member `i` again on its data folder.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// The member that leads the cluster now, as the running members report it.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut ids = Vec::new();
            let mut leader = None;
            for m in &self.members {
                let url = format!("http://{}/v3/maintenance/status", m.client);
                let status = match m.process {
                    Some(_) => crate::request(http::Method::POST, &url, &[], b"{}").await.ok(),
                    None => None,
                };
                let json = status.and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok());
                ids.push(json.as_ref().and_then(|j| j["header"]["member_id"].as_str().map(str::to_string)));
                leader = leader.or_else(|| json.as_ref().and_then(|j| j["leader"].as_str().map(str::to_string)));
            }
            if let Some(i) = leader.and_then(|l| ids.iter().position(|id| id.as_deref() == Some(l.as_str()))) {
                return i;
            }
            assert!(Instant::now() < deadline, "the cluster has no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running member reports the cluster healthy.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        for m in self.members.iter().filter(|m| m.process.is_some()) {
            let url = format!("http://{}/health", m.client);
            loop {
                // A member behind TLS is ready for its clients once it listens.
                let healthy = match self.tls {
                    Some(_) => tokio::net::TcpStream::connect(m.client).await.is_ok(),
                    None => crate::request(http::Method::GET, &url, &[], b"")
                        .await
                        .is_ok_and(|r| r.status.is_success() && String::from_utf8_lossy(&r.body).contains("true")),
                };
                if healthy {
                    break;
                }
                if Instant::now() > deadline {
                    let log =
                        std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name))).unwrap_or_default();
                    let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                    panic!("etcd member {} is not healthy after {START_TIMEOUT:?}; its log ends:\n{tail}", m.name);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
