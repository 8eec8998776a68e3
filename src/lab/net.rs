//! The lab's network: one namespace per host, each joined by a veth pair to
//! a bridge that lives in a namespace of its own (the lab's switch), so
//! nothing of the lab touches the machine's own network. Faults are kernel
//! state, not code in our processes: a cut link is an nftables set in the
//! receiving host that drops what comes from the cut peer (silently, as a
//! dead link does), an isolated host is its switch port taken down.

use std::future::Future;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Every namespace the lab makes starts so; `outpost lab down --all` and
/// the end of CI look for it.
pub const NS_PREFIX: &str = "ol-";
/// The bridge inside the switch namespace.
const BRIDGE: &str = "br0";
/// The nftables table each host gets; its set `cut` holds the peers whose
/// packets the host no longer receives.
const TABLE: &str = "lab";

/// The namespace of a host of lab `lab`.
pub fn ns_name(lab: &str, host: &str) -> String {
    format!("{NS_PREFIX}{lab}-{host}")
}

/// The namespace of the lab's switch.
pub fn switch_ns(lab: &str) -> String {
    format!("{NS_PREFIX}{lab}--switch")
}

/// The switch port of host number `index`.
fn port(index: usize) -> String {
    format!("p{index}")
}

/// Runs a command; its stderr becomes the error.
pub(crate) fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{program}`"))?;
    if !out.status.success() {
        bail!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `nft -f -` with `rules` inside namespace `ns`.
fn nft(ns: &str, rules: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `nft`")?;
    child.stdin.take().context("nft's stdin")?.write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft in `{ns}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Refuses, with what to do, when this process cannot build a lab.
pub fn check_privilege() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "the lab creates network namespaces, links and firewall rules, which needs root \
             (CAP_NET_ADMIN and CAP_SYS_ADMIN): run it as root, e.g. `sudo outpost lab up`"
        );
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        if Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            bail!("the lab needs `{tool}`: install Debian's {package} (`sudo scripts/deps.sh`)");
        }
    }
    Ok(())
}

/// The lab namespaces that exist now, of lab `lab` (every lab's with `None`).
pub fn namespaces(lab: Option<&str>) -> anyhow::Result<Vec<String>> {
    let prefix = match lab {
        Some(l) => format!("{NS_PREFIX}{l}-"),
        None => NS_PREFIX.to_string(),
    };
    let listed = run("ip", &["netns", "list"])?;
    Ok(listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect())
}

/// The processes inside namespace `ns`.
pub fn pids(ns: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", ns])
        .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Sends `signal` to every process of `ns`; how many got it.
pub fn signal_all(ns: &str, signal: rustix::process::Signal) -> usize {
    pids(ns)
        .into_iter()
        .filter_map(rustix::process::Pid::from_raw)
        .filter(|pid| rustix::process::kill_process(*pid, signal).is_ok())
        .count()
}

/// Whether any process of `ns` is stopped (SIGSTOP): a hung host.
pub fn paused(ns: &str) -> bool {
    pids(ns).into_iter().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
            .unwrap_or(false)
    })
}

/// Creates the switch: a namespace holding one bridge.
pub fn create_switch(lab: &str) -> anyhow::Result<()> {
    let sw = switch_ns(lab);
    run("ip", &["netns", "add", &sw])?;
    run("ip", &["-n", &sw, "link", "add", BRIDGE, "type", "bridge"])?;
    run("ip", &["-n", &sw, "link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Creates host number `index`: its namespace, `eth0` with `ip/prefix`
/// plugged into the switch, and its (empty) cut set.
pub fn create_host(lab: &str, host: &str, index: usize, ip: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    let (ns, sw, port) = (ns_name(lab, host), switch_ns(lab), port(index));
    run("ip", &["netns", "add", &ns])?;
    run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
    run("ip", &["-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &sw])?;
    run("ip", &["-n", &ns, "addr", "add", &format!("{ip}/{prefix}"), "dev", "eth0"])?;
    run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
    run("ip", &["-n", &sw, "link", "set", &port, "master", BRIDGE, "up"])?;
    nft(
        &ns,
        &format!(
            "table inet {TABLE} {{\n  set cut {{ type ipv4_addr; }}\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    ip saddr @cut drop\n  }}\n}}\n"
        ),
    )
}

/// Host `ns` stops (`true`) or resumes receiving packets from `from`.
pub fn set_cut(ns: &str, from: Ipv4Addr, cut: bool) -> anyhow::Result<()> {
    let verb = if cut { "add" } else { "delete" };
    if !cut && !cut_from(ns)?.contains(&from) {
        return Ok(());
    }
    nft(ns, &format!("{verb} element inet {TABLE} cut {{ {from} }}\n"))
}

/// The peers host `ns` receives nothing from.
pub fn cut_from(ns: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let out = run("ip", &["netns", "exec", ns, "nft", "list", "set", "inet", TABLE, "cut"])?;
    let Some((_, elements)) = out.split_once("elements = {") else { return Ok(Vec::new()) };
    let elements = elements.split('}').next().unwrap_or_default();
    Ok(elements.split(',').filter_map(|e| e.trim().parse().ok()).collect())
}

/// Takes host number `index`'s switch port down (isolated) or up.
pub fn set_port(lab: &str, index: usize, up: bool) -> anyhow::Result<()> {
    run("ip", &["-n", &switch_ns(lab), "link", "set", &port(index), if up { "up" } else { "down" }])?;
    Ok(())
}

/// Whether host number `index`'s switch port is up.
pub fn port_up(lab: &str, index: usize) -> bool {
    run("ip", &["-n", &switch_ns(lab), "-o", "link", "show", &port(index)])
        .map(|out| {
            out.split_once('<')
                .and_then(|(_, f)| f.split_once('>'))
                .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"))
        })
        .unwrap_or(false)
}

/// Removes namespace `ns`, first killing what runs in it (SIGTERM, then
/// SIGKILL for what is still there after `grace`).
pub fn delete_ns(ns: &str, grace: std::time::Duration) {
    use rustix::process::Signal;
    // A paused process would never see the SIGTERM.
    signal_all(ns, Signal::CONT);
    if signal_all(ns, Signal::TERM) > 0 {
        let deadline = std::time::Instant::now() + grace;
        while !pids(ns).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    while signal_all(ns, Signal::KILL) > 0 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = run("ip", &["netns", "del", ns]);
}

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A thread inside a host's namespace, running futures there: every socket
/// they open is the host's, as if the code ran on that machine. The thread
/// ends when this is dropped.
#[derive(Debug)]
pub struct InNetns {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
}

impl InNetns {
    pub fn enter(ns: &str) -> anyhow::Result<InNetns> {
        let file = std::fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("no namespace `{ns}`"))?;
        let (jobs, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (entered, result) = std::sync::mpsc::channel();
        std::thread::Builder::new().name(format!("in-{ns}")).spawn(move || {
            let moved = rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            );
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let runtime = match (moved, runtime) {
                (Ok(()), Ok(rt)) => {
                    let _ = entered.send(Ok(()));
                    rt
                }
                (Err(e), _) => return drop(entered.send(Err(anyhow::anyhow!("setns: {e}")))),
                (_, Err(e)) => return drop(entered.send(Err(e.into()))),
            };
            runtime.block_on(async move {
                while let Some(job) = rx.recv().await {
                    tokio::spawn(job);
                }
            });
        })?;
        result.recv().context("the namespace thread died")??;
        Ok(InNetns { jobs })
    }

    /// Runs `job` in the namespace and returns its output.
    pub async fn run<F, T>(&self, job: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.jobs.send(Box::pin(async move {
            let _ = tx.send(job.await);
        }));
        assert!(sent.is_ok(), "the namespace thread is gone");
        rx.await.expect("the namespace thread dropped a job")
    }
}
