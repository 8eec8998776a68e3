//! `outpost up --ha`: the control plane as two replicas on a three-member
//! etcd cluster on this machine, everything else as `up` runs it. The
//! members are `etcd` processes (Debian's `etcd-server`) with their data
//! under `<data_dir>/etcd`, stopped when `up` stops.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use outpost_config::{EtcdStore, NodeConfig, RoleConfig, StoreBackend};

/// Members of the local cluster, and the first of their client and peer
/// ports (member `i` uses the port plus `i`).
const MEMBERS: u16 = 3;
const CLIENT_PORT: u16 = 23790;
const PEER_PORT: u16 = 23800;
/// How long the members may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The running members; dropping it stops them.
#[derive(Debug)]
pub struct LocalEtcd {
    members: Vec<Child>,
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Starts the members and waits until each listens; their client URLs are
/// the endpoints of the replicas' `[store]`.
pub async fn start(data_dir: &Path) -> anyhow::Result<(LocalEtcd, Vec<String>)> {
    if Command::new("etcd").arg("--version").stdout(Stdio::null()).status().is_err() {
        bail!("`up --ha` runs etcd, which is not installed: install Debian's etcd-server (`sudo scripts/deps.sh`)");
    }
    let cluster: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}=http://{}", addr(PEER_PORT + i))).collect();
    let mut running = LocalEtcd { members: Vec::new() };
    for i in 0..MEMBERS {
        let dir = data_dir.join("etcd").join(format!("m{i}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
        let log = std::fs::File::create(data_dir.join("logs").join(format!("etcd-m{i}.log")))
            .context("cannot create etcd's log file")?;
        let (client, peer) = (format!("http://{}", addr(CLIENT_PORT + i)), format!("http://{}", addr(PEER_PORT + i)));
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "outpost-up"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start etcd")?;
        running.members.push(child);
    }
    let deadline = Instant::now() + START_TIMEOUT;
    for i in 0..MEMBERS {
        while tokio::net::TcpStream::connect(addr(CLIENT_PORT + i)).await.is_err() {
            if Instant::now() > deadline {
                bail!("etcd member m{i} is not listening on {}; see its log in the data folder", addr(CLIENT_PORT + i));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let endpoints = (0..MEMBERS).map(|i| format!("http://{}", addr(CLIENT_PORT + i))).collect();
    Ok((running, endpoints))
}

/// Turns the folder's one control plane into two replicas on `endpoints`
/// (the second listens one port above the first), and gives every node
/// that follows it both URLs.
pub fn replicate(nodes: &mut Vec<NodeConfig>, endpoints: &[String]) -> anyhow::Result<()> {
    let Some(first) = nodes.iter().position(|n| matches!(n.role, RoleConfig::Control(_))) else {
        bail!("`up --ha` needs a control-plane node file in the folder");
    };
    let store = StoreBackend::Etcd(EtcdStore {
        endpoints: endpoints.to_vec(),
        prefix: outpost_config::DEFAULT_ETCD_PREFIX.to_string(),
        ca: None,
        identity: None,
        user: None,
        compact_every: outpost_config::DEFAULT_ETCD_COMPACT_EVERY,
    });
    if let RoleConfig::Control(c) = &mut nodes[first].role {
        c.store = store;
    }
    let mut second = nodes[first].clone();
    second.name = format!("{}-2", second.name);
    let Some(api) = second.listen.http.first_mut() else {
        bail!("`up --ha` needs the control plane to listen on plain HTTP (listen.http)");
    };
    let (one, two) = (*api, SocketAddr::new(api.ip(), api.port() + 1));
    *api = two;
    nodes.insert(first + 1, second);
    for node in nodes.iter_mut() {
        if let Some(link) = &mut node.control
            && link.urls.iter().any(|u| u.port_u16() == Some(one.port()))
        {
            let url = format!("http://{two}").parse().context("the second replica's URL")?;
            link.urls.push(url);
        }
    }
    Ok(())
}
