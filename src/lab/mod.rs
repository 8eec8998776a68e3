//! `outpost lab`: the CDN on real hosts. Every node of a config folder (the
//! `up` topology by default) becomes a host: a network namespace with its
//! own address on a private bridge, running a real `outpost` process with
//! its own node file, as an operator deploys it. Faults are verbs on hosts
//! and links ([`Lab::cut`], [`Lab::isolate`], [`Lab::kill`], [`Lab::pause`]
//! and their opposites), done to the kernel's state, so the processes fail
//! as machines do. The lab's state is its folder (`lab.json`) and the
//! kernel's namespaces, so any `outpost lab` command can act on a lab that
//! another one started; [`Lab::down`] (or dropping the [`Lab`] that built
//! it) removes every namespace, link and process.

pub mod cli;
pub mod net;
pub mod plan;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use outpost_net::control::{ControlClient, Token};
use rustix::process::Signal;
use serde::Serialize;

pub use net::InNetns;
pub use plan::{Host, Kind, Plan};

/// How long a host's process may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process stopped with SIGTERM may take to exit.
const STOP_GRACE: Duration = Duration::from_secs(3);
const STATE_FILE: &str = "lab.json";

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    pub plan: Plan,
    /// The `outpost` binary the hosts run.
    exe: PathBuf,
    /// Processes this one started, reaped when they die.
    children: Mutex<HashMap<String, Child>>,
    /// Whether dropping this removes the lab.
    owned: bool,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            self.down();
        }
    }
}

/// One host as `outpost lab status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub kind: &'static str,
    pub ip: Ipv4Addr,
    /// `running`, `paused`, `dead`, or `-` for the client host.
    pub process: &'static str,
    /// Its link to the switch is up.
    pub linked: bool,
    /// Hosts it receives nothing from.
    pub cut_from: Vec<String>,
}

impl Lab {
    /// Builds the network of `plan` and starts every host in order, the
    /// control plane's sites pushed as soon as it listens. On any error,
    /// what was built is removed.
    pub async fn up(plan: Plan, exe: &Path) -> anyhow::Result<Lab> {
        net::check_privilege()?;
        let existing = net::namespaces(Some(&plan.name))?;
        if !existing.is_empty() {
            bail!("lab `{}` is already up ({} namespaces); `outpost lab down` first", plan.name, existing.len());
        }
        let lab = Lab { plan, exe: exe.to_path_buf(), children: Mutex::new(HashMap::new()), owned: true };
        for sub in ["logs", ".outpost"] {
            std::fs::create_dir_all(lab.plan.dir.join(sub))?;
        }
        std::fs::write(lab.plan.dir.join(STATE_FILE), serde_json::to_vec_pretty(&lab.plan)?)?;
        lab.build_network()?;
        lab.start_all().await?;
        Ok(lab)
    }

    /// The lab whose folder is `dir`, started by another process.
    pub fn open(dir: &Path) -> anyhow::Result<Lab> {
        let file = dir.join(STATE_FILE);
        let text = std::fs::read(&file)
            .with_context(|| format!("no lab in `{}` (no {STATE_FILE}); `outpost lab up` first", dir.display()))?;
        let plan: Plan = serde_json::from_slice(&text).with_context(|| format!("`{}`", file.display()))?;
        let exe = std::env::current_exe()?;
        Ok(Lab { plan, exe, children: Mutex::new(HashMap::new()), owned: false })
    }

    /// Leaves the lab running when this is dropped.
    pub fn detach(mut self) {
        self.owned = false;
    }

    fn build_network(&self) -> anyhow::Result<()> {
        net::create_switch(&self.plan.name)?;
        for (i, h) in self.plan.hosts.iter().enumerate() {
            net::create_host(&self.plan.name, &h.name, i, h.ip, plan::PREFIX)?;
        }
        Ok(())
    }

    async fn start_all(&self) -> anyhow::Result<()> {
        let mut pushed = false;
        let hosts = &self.plan.hosts;
        let mut i = 0;
        while i < hosts.len() {
            // Hosts of one kind start together (etcd's members need each other).
            let kind = hosts[i].kind;
            let group: Vec<&Host> = hosts[i..].iter().take_while(|h| h.kind == kind).collect();
            i += group.len();
            for h in &group {
                self.spawn(h)?;
            }
            for h in &group {
                self.wait_listening(h).await?;
            }
            if kind == Kind::Control && !pushed {
                pushed = true;
                self.push_sites().await?;
                self.give_credentials(&group)?;
            }
        }
        Ok(())
    }

    /// Writes each node's own credential where its node file reads it,
    /// from the node token the control plane (`control`'s first host)
    /// wrote at its start.
    fn give_credentials(&self, control: &[&Host]) -> anyhow::Result<()> {
        let Some(file) = control.iter().find_map(|h| h.node_file.as_ref()) else { return Ok(()) };
        let control = outpost_config::NodeConfig::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
        for h in self.plan.hosts.iter().filter(|h| !matches!(h.kind, Kind::Control)) {
            if let Some(file) = &h.node_file {
                let node = outpost_config::NodeConfig::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
                crate::up::give_credential(&node, &control)?;
            }
        }
        Ok(())
    }

    fn ns(&self, host: &str) -> String {
        net::ns_name(&self.plan.name, host)
    }

    /// Starts host `h`'s process, its output appended to its log.
    fn spawn(&self, h: &Host) -> anyhow::Result<()> {
        if h.kind == Kind::Client {
            return Ok(());
        }
        let log_file = self.plan.log(&h.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_file)?;
        let program = if h.program.is_empty() { self.exe.as_os_str() } else { h.program.as_ref() };
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(&h.name)])
            .arg(program)
            .args(&h.args)
            .current_dir(&self.plan.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own group: a Ctrl-C meant for the lab reaches the lab,
            // which stops the hosts itself.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", h.name))?;
        if let Ok(mut children) = self.children.lock() {
            children.insert(h.name.clone(), child);
        }
        Ok(())
    }

    /// Waits until every port of `h` accepts connections, from inside its
    /// own host.
    async fn wait_listening(&self, h: &Host) -> anyhow::Result<()> {
        if h.ports.is_empty() {
            return Ok(());
        }
        let inside = InNetns::enter(&self.ns(&h.name))?;
        let addrs: Vec<_> = h.ports.iter().map(|p| h.addr(*p)).collect();
        let deadline = Instant::now() + START_TIMEOUT;
        for addr in addrs {
            loop {
                let connected = inside
                    .run(async move {
                        tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await
                    })
                    .await;
                if matches!(connected, Ok(Ok(_))) {
                    break;
                }
                if self.exited(&h.name) || Instant::now() > deadline {
                    bail!("{} did not start listening on {addr}; its log:\n{}", h.name, self.log_tail(&h.name));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The process this one started for `host` has exited.
    fn exited(&self, host: &str) -> bool {
        self.children
            .lock()
            .ok()
            .and_then(|mut c| c.get_mut(host).map(|child| !matches!(child.try_wait(), Ok(None))))
            .unwrap_or(false)
    }

    fn log_tail(&self, host: &str) -> String {
        let text = std::fs::read_to_string(self.plan.log(host)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// An admin client of the control plane, for use inside the lab (from
    /// the client host).
    pub fn admin_client(&self) -> anyhow::Result<ControlClient> {
        let token = self.plan.admin_token.clone().context("the lab has no control plane")?;
        let tls = outpost_proxy::tls::client_config(&[], None)?;
        Ok(ControlClient::new(&self.plan.control_urls(), Token::File(token), tls))
    }

    async fn push_sites(&self) -> anyhow::Result<()> {
        let client = self.admin_client()?;
        let inside = self.enter("client")?;
        for file in &self.plan.site_files {
            let text = std::fs::read_to_string(file)?;
            let c = client.clone();
            inside
                .run(async move { c.push_site(&text).await })
                .await
                .map_err(|e| anyhow::anyhow!("pushing `{}`: {}", file.display(), e))?;
        }
        Ok(())
    }

    /// A thread inside host `host`'s namespace, to run clients there.
    pub fn enter(&self, host: &str) -> anyhow::Result<InNetns> {
        self.plan.host(host)?;
        InNetns::enter(&self.ns(host))
    }

    fn index(&self, host: &str) -> anyhow::Result<usize> {
        self.plan.host(host).map(|(i, _)| i)
    }

    fn ip(&self, host: &str) -> anyhow::Result<Ipv4Addr> {
        self.plan.host(host).map(|(_, h)| h.ip)
    }

    /// Cuts the link from `a` to `b` (packets from `a` no longer reach
    /// `b`) and, with `both`, from `b` to `a`.
    pub fn cut(&self, a: &str, b: &str, both: bool) -> anyhow::Result<()> {
        net::set_cut(&self.ns(b), self.ip(a)?, true)?;
        if both {
            net::set_cut(&self.ns(a), self.ip(b)?, true)?;
        }
        Ok(())
    }

    /// Heals the link between `a` and `b`, both ways.
    pub fn heal(&self, a: &str, b: &str) -> anyhow::Result<()> {
        net::set_cut(&self.ns(b), self.ip(a)?, false)?;
        net::set_cut(&self.ns(a), self.ip(b)?, false)
    }

    /// Splits the lab in two: `group` on one side, every other host on
    /// the other; hosts on one side still reach each other.
    pub fn partition(&self, group: &[&str]) -> anyhow::Result<()> {
        for g in group {
            self.plan.host(g)?;
        }
        for other in self.plan.hosts.iter().filter(|h| !group.contains(&h.name.as_str())) {
            for g in group {
                self.cut(g, &other.name, true)?;
            }
        }
        Ok(())
    }

    /// Heals every cut link and rejoins every isolated host.
    pub fn heal_all(&self) -> anyhow::Result<()> {
        for (i, h) in self.plan.hosts.iter().enumerate() {
            for ip in net::cut_from(&self.ns(&h.name))? {
                net::set_cut(&self.ns(&h.name), ip, false)?;
            }
            net::set_port(&self.plan.name, i, true)?;
        }
        Ok(())
    }

    /// Takes `host`'s only link down: nothing in, nothing out.
    pub fn isolate(&self, host: &str) -> anyhow::Result<()> {
        net::set_port(&self.plan.name, self.index(host)?, false)
    }

    pub fn rejoin(&self, host: &str) -> anyhow::Result<()> {
        net::set_port(&self.plan.name, self.index(host)?, true)
    }

    /// SIGKILL to `host`'s process; its disk stays as it was.
    pub fn kill(&self, host: &str) -> anyhow::Result<()> {
        let ns = self.ns(host);
        self.plan.host(host)?;
        net::signal_all(&ns, Signal::CONT);
        while net::signal_all(&ns, Signal::KILL) > 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.reap(host);
        Ok(())
    }

    /// Starts `host`'s process again (killing it first if it runs) and
    /// waits until it listens.
    pub async fn restart(&self, host: &str) -> anyhow::Result<()> {
        self.kill(host)?;
        let (_, h) = self.plan.host(host)?;
        self.spawn(h)?;
        self.wait_listening(h).await
    }

    /// SIGSTOP: the host keeps its sockets and answers nothing (a hung node).
    pub fn pause(&self, host: &str) -> anyhow::Result<()> {
        self.plan.host(host)?;
        if net::signal_all(&self.ns(host), Signal::STOP) == 0 {
            bail!("nothing runs on {host}");
        }
        Ok(())
    }

    pub fn resume(&self, host: &str) -> anyhow::Result<()> {
        self.plan.host(host)?;
        net::signal_all(&self.ns(host), Signal::CONT);
        Ok(())
    }

    fn reap(&self, host: &str) {
        if let Ok(mut children) = self.children.lock()
            && let Some(mut child) = children.remove(host)
        {
            let _ = child.wait();
        }
    }

    pub fn status(&self) -> anyhow::Result<Vec<HostStatus>> {
        let by_ip: HashMap<Ipv4Addr, &str> = self.plan.hosts.iter().map(|h| (h.ip, h.name.as_str())).collect();
        let mut out = Vec::new();
        for (i, h) in self.plan.hosts.iter().enumerate() {
            let ns = self.ns(&h.name);
            let process = match (h.kind, net::pids(&ns).is_empty(), net::paused(&ns)) {
                (Kind::Client, _, _) => "-",
                (_, true, _) => "dead",
                (_, false, true) => "paused",
                (_, false, false) => "running",
            };
            let cut_from =
                net::cut_from(&ns)?.iter().map(|ip| by_ip.get(ip).map_or(ip.to_string(), |n| n.to_string())).collect();
            out.push(HostStatus {
                name: h.name.clone(),
                kind: h.kind.as_str(),
                ip: h.ip,
                process,
                linked: net::port_up(&self.plan.name, i),
                cut_from,
            });
        }
        Ok(out)
    }

    /// Stops every process and removes every namespace and link of the lab.
    pub fn down(&self) {
        down_named(&self.plan.name);
        if let Ok(mut children) = self.children.lock() {
            for (_, mut c) in children.drain() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Removes lab `name` (every lab with `None`) from the kernel: processes,
/// namespaces and, with them, links and firewall rules. Returns how many
/// namespaces went.
pub fn down_named_all(name: Option<&str>) -> anyhow::Result<usize> {
    let all = net::namespaces(name)?;
    // Hosts first, in parallel; the switch (and with it the bridge) last.
    let (switches, hosts): (Vec<String>, Vec<String>) = all.iter().cloned().partition(|n| n.ends_with("--switch"));
    std::thread::scope(|s| {
        for ns in &hosts {
            s.spawn(move || net::delete_ns(ns, STOP_GRACE));
        }
    });
    for ns in &switches {
        net::delete_ns(ns, STOP_GRACE);
    }
    Ok(all.len())
}

fn down_named(name: &str) {
    if let Err(e) = down_named_all(Some(name)) {
        eprintln!("lab {name}: {e:#}");
    }
}
