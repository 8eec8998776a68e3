//! `outpost lab ...`: the lab from a shell, to rehearse failures.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::{Kind, Lab, net, plan};
use crate::signals;

#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Build the hosts and start every node; runs until Ctrl-C (or
    /// `outpost lab down`), then removes everything.
    Up {
        /// Folder holding the node and site files (the topology).
        #[arg(long, default_value = "config")]
        config_dir: PathBuf,
        /// The lab's name: its namespaces are `ol-<name>-<host>`.
        #[arg(long, default_value = "lab")]
        name: String,
        /// Three etcd hosts and two control-plane hosts.
        #[arg(long)]
        ha: bool,
        /// Return once it is up and leave it running.
        #[arg(long)]
        detach: bool,
    },
    /// Stop every process and remove every namespace and link.
    Down {
        /// Every lab on this machine, with or without its folder.
        #[arg(long)]
        all: bool,
    },
    /// Each host: address, process, link, and what it no longer receives.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Cut the link between two hosts, both ways (or only from A to B).
    Cut {
        a: String,
        b: String,
        #[arg(long)]
        one_way: bool,
    },
    /// Heal the link between two hosts, or every fault with --all.
    Heal {
        #[arg(required_unless_present = "all")]
        a: Option<String>,
        #[arg(required_unless_present = "all")]
        b: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Cut these hosts off from all the others (they still reach each other).
    Partition {
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// Take a host's link down.
    Isolate { host: String },
    /// Bring an isolated host's link back.
    Rejoin { host: String },
    /// SIGKILL a host's process (its disk stays).
    Kill { host: String },
    /// Start a host's process again, killing it first if it runs.
    Restart { host: String },
    /// SIGSTOP a host's process: it looks hung.
    Pause { host: String },
    /// SIGCONT a paused host.
    Resume { host: String },
    /// Run a command on a host (e.g. `outpost lab exec client -- curl ...`).
    Exec {
        host: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

pub async fn run(action: LabAction, dir: &Path) -> anyhow::Result<ExitCode> {
    let one = |f: &dyn Fn(&Lab) -> anyhow::Result<()>| -> anyhow::Result<ExitCode> {
        f(&Lab::open(dir)?)?;
        Ok(ExitCode::SUCCESS)
    };
    match action {
        LabAction::Up { config_dir, name, ha, detach } => up(&config_dir, dir, &name, ha, detach).await,
        LabAction::Down { all } => {
            net::check_privilege()?;
            let name = if all { None } else { Some(Lab::open(dir)?.plan.name.clone()) };
            let n = super::down_named_all(name.as_deref())?;
            println!("removed {n} namespaces");
            Ok(ExitCode::SUCCESS)
        }
        LabAction::Status { json } => {
            let lab = Lab::open(dir)?;
            let status = lab.status()?;
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                println!("{:<12} {:<8} {:<12} {:<8} {:<5} CUT FROM", "HOST", "KIND", "ADDRESS", "PROCESS", "LINK");
                for s in status {
                    let link = if s.linked { "up" } else { "down" };
                    let cut = if s.cut_from.is_empty() { "-".to_string() } else { s.cut_from.join(",") };
                    println!(
                        "{:<12} {:<8} {:<12} {:<8} {:<5} {cut}",
                        s.name,
                        s.kind,
                        s.ip.to_string(),
                        s.process,
                        link
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LabAction::Cut { a, b, one_way } => one(&|l| l.cut(&a, &b, !one_way)),
        LabAction::Heal { all: true, .. } => one(&|l| l.heal_all()),
        LabAction::Heal { a, b, .. } => {
            one(&|l| l.heal(a.as_deref().unwrap_or_default(), b.as_deref().unwrap_or_default()))
        }
        LabAction::Partition { hosts } => {
            let group: Vec<&str> = hosts.iter().map(String::as_str).collect();
            one(&|l| l.partition(&group))
        }
        LabAction::Isolate { host } => one(&|l| l.isolate(&host)),
        LabAction::Rejoin { host } => one(&|l| l.rejoin(&host)),
        LabAction::Kill { host } => one(&|l| l.kill(&host)),
        LabAction::Pause { host } => one(&|l| l.pause(&host)),
        LabAction::Resume { host } => one(&|l| l.resume(&host)),
        LabAction::Restart { host } => {
            let lab = Lab::open(dir)?;
            lab.restart(&host).await?;
            Ok(ExitCode::SUCCESS)
        }
        LabAction::Exec { host, command } => {
            let lab = Lab::open(dir)?;
            lab.plan.host(&host)?;
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &net::ns_name(&lab.plan.name, &host)])
                .args(&command)
                .status()
                .context("cannot run `ip netns exec`")?;
            Ok(ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)))
        }
    }
}

async fn up(config_dir: &Path, dir: &Path, name: &str, ha: bool, detach: bool) -> anyhow::Result<ExitCode> {
    net::check_privilege()?;
    let stop = signals::shutdown_token();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let dir = dir.canonicalize()?;
    let plan = plan::build(config_dir, &dir, name, ha)?;
    let exe = std::env::current_exe()?;
    let lab = tokio::select! {
        lab = Lab::up(plan, &exe) => lab?,
        () = stop.cancelled() => {
            super::down_named_all(Some(name))?;
            anyhow::bail!("interrupted; the lab was removed");
        }
    };
    print_table(&lab);
    if detach {
        println!("\n`outpost lab down` removes it.");
        lab.detach();
        return Ok(ExitCode::SUCCESS);
    }
    println!("\nCtrl-C (or `outpost lab down`) removes it.");
    // Until a signal, or until another command took the lab down.
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                if net::namespaces(Some(name)).map(|n| n.is_empty()).unwrap_or(false) {
                    break;
                }
            }
        }
    }
    lab.down();
    println!("lab {name} removed");
    Ok(ExitCode::SUCCESS)
}

fn print_table(lab: &Lab) {
    let plan = &lab.plan;
    println!("Lab `{}` is up ({} hosts on {}/{})\n", plan.name, plan.hosts.len(), plan::SUBNET, plan::PREFIX);
    println!("  {:<12} {:<8} {:<12} {:<5} PORTS", "HOST", "KIND", "ADDRESS", "POP");
    for h in &plan.hosts {
        let ports: Vec<String> = h.ports.iter().map(u16::to_string).collect();
        let pop = h.pop.as_deref().unwrap_or("-");
        println!("  {:<12} {:<8} {:<12} {pop:<5} {}", h.name, h.kind.as_str(), h.ip.to_string(), ports.join(","));
    }
    println!("\nTry:");
    if let Some(edge) = plan.of_kind(Kind::Edge).next()
        && let Some(port) = edge.port()
    {
        println!(
            "  outpost lab exec client -- curl -si -H 'Host: www.example.test' 'http://{}/hello?size=64&cc=max-age%3D60'",
            edge.addr(port)
        );
        if let Some(shield) = plan.of_kind(Kind::Shield).next() {
            println!("  outpost lab cut {} {}", edge.name, shield.name);
        }
    }
    if let Some(dns) = plan.of_kind(Kind::Dns).next()
        && let Some(port) = dns.port()
    {
        println!("  outpost lab exec client -- dig @{} -p {port} example.cdn.example.test A +short", dns.ip);
    }
    if let Some(shield) = plan.of_kind(Kind::Shield).last() {
        println!("  outpost lab pause {}", shield.name);
    }
    println!("  outpost lab status");
}
