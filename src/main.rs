//! `outpost`: one binary for every role of the CDN.
//!
//! `outpost up` runs a whole CDN on this machine from `config/`; the other
//! subcommands run one role per process, as production does, or talk to a
//! running CDN.

mod check;
mod client;

use outpost::{lab, roles, signals, up};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use outpost_config::Role;
use outpost_config::api::PurgeRequest;

use outpost::VERSION;

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version = VERSION,
    about = "An edge CDN: caching edges, origin shields, a control plane and geo-IP DNS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole CDN on this machine from the files in a config folder.
    Up {
        /// Folder holding the node and site files.
        #[arg(long, default_value = "config")]
        config_dir: PathBuf,
        /// Where logs and other run-time state go.
        #[arg(long, default_value = ".outpost")]
        data_dir: PathBuf,
        /// Run the control plane as two replicas on a local three-member
        /// etcd cluster (needs Debian's etcd-server).
        #[arg(long)]
        ha: bool,
    },
    /// Run an edge node: cache in front of clients.
    Edge {
        /// The edge's node file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the geo-IP DNS server, or build its database.
    Dns {
        /// The DNS node file.
        #[arg(long, required_unless_present = "build_geoip")]
        config: Option<PathBuf>,
        /// Build a MaxMind City database from a TOML source file, then exit.
        #[arg(long, num_args = 2, value_names = ["SOURCE", "OUT"])]
        build_geoip: Option<Vec<PathBuf>>,
    },
    /// Run the control plane: site store, purges, the node event stream.
    Control {
        /// The control plane's node file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print nodes' own credentials, one a line, derived from the control
    /// plane's node token: each goes in its node's `[control] token_file`,
    /// and speaks for that node alone.
    NodeToken {
        /// The control plane's node file (it names the node token file).
        #[arg(long)]
        config: PathBuf,
        /// Node names, as their `[node] name`.
        #[arg(required = true)]
        names: Vec<String>,
        /// Write each to `DIR/NAME.token` (mode 0600) instead of printing it.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Revoke a node's credentials, or rotate them (revoke, and get one of
    /// the next generation), through the control plane.
    Credentials {
        #[command(subcommand)]
        action: CredentialsAction,
        /// Control-plane URL; for replicas, repeat it or separate URLs with commas.
        #[arg(long, global = true, value_delimiter = ',', default_value = "http://127.0.0.1:7000")]
        control: Vec<String>,
        /// Print JSON instead of a line.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Manage sites on the control plane.
    Sites {
        #[command(subcommand)]
        action: SitesAction,
        /// Control-plane URL; for replicas, repeat it or separate URLs with commas.
        #[arg(long, global = true, value_delimiter = ',', default_value = "http://127.0.0.1:7000")]
        control: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// PoP weights for geo-DNS: drain a PoP for maintenance, bring it back.
    Pops {
        #[command(subcommand)]
        action: PopsAction,
        /// Control-plane URL; for replicas, repeat it or separate URLs with commas.
        #[arg(long, global = true, value_delimiter = ',', default_value = "http://127.0.0.1:7000")]
        control: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Purge cached objects on every node.
    Purge {
        #[arg(long)]
        site: String,
        /// Paths (with query) to purge; repeat for several.
        #[arg(long = "url", group = "what")]
        urls: Vec<String>,
        /// Every path starting with this.
        #[arg(long, group = "what")]
        prefix: Option<String>,
        /// Every object tagged so (Surrogate-Key / Cache-Tag); repeat for several.
        #[arg(long = "tag", group = "what")]
        tags: Vec<String>,
        /// Everything of the site.
        #[arg(long, group = "what")]
        all: bool,
        /// Mark stale (revalidate) instead of removing.
        #[arg(long)]
        soft: bool,
        /// Wait until every connected node applied it (5 s at most); exits
        /// 1, naming them, if some have not by then.
        #[arg(long)]
        wait: bool,
        /// Control-plane URL; for replicas, repeat it or separate URLs with commas.
        #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:7000")]
        control: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run a k6-style load scenario; exits 99 when a threshold fails.
    Load {
        /// The scenario file (see load-tests/scenarios/).
        scenario: PathBuf,
        /// `json=FILE`: the metrics, thresholds and per-second series as JSON.
        #[arg(long, value_name = "json=FILE")]
        out: Option<String>,
        /// A self-contained HTML report with latency and throughput charts.
        #[arg(long, value_name = "FILE.html")]
        report: Option<PathBuf>,
        /// The end-of-test summary as JSON, in the layout of k6's `--summary-export`.
        #[arg(long, value_name = "FILE.json")]
        summary_export: Option<PathBuf>,
        /// No progress line.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show the nodes the control plane knows, their lag and last contact.
    Status {
        /// Control-plane URL; for replicas, repeat it or separate URLs with commas.
        #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:7000")]
        control: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run an origin shield: cache in front of the origins, behind the edges.
    Shield {
        /// The shield's node file.
        #[arg(long)]
        config: PathBuf,
    },
    /// The configuration reference.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Validate node and site files; print `file:line:column: message` for each problem.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The CDN on real hosts (network namespaces) and faults to break it; needs root.
    Lab {
        #[command(subcommand)]
        action: lab::cli::LabAction,
        /// The lab's folder: node files, logs, disks, and its state.
        #[arg(long, global = true, default_value = ".outpost/lab")]
        dir: PathBuf,
    },
    /// Print a completion script for a shell (bash: `source <(outpost completions bash)`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for outpost and each of its commands into a folder.
    Manpages {
        /// The folder (made if missing); pages are named outpost.1, outpost-edge.1, …
        dir: PathBuf,
    },
    /// Run the test origin (see `outpost_load::origin` for its URL grammar).
    Origin {
        /// Address to listen on; repeat for several.
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// Serve this directory under /files/.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print every section and key of node and site files, with its default (Markdown: docs/config.md).
    Reference,
}

#[derive(Debug, Subcommand)]
enum SitesAction {
    /// Upload a site file (validated by the control plane).
    Push { file: PathBuf },
    /// List the sites.
    List,
    /// Delete a site.
    Rm { id: String },
    /// The versions the control plane keeps of a site (the last 20), newest first.
    Versions { id: String },
    /// What changed between two versions of a site (default: the previous and the current).
    Diff {
        id: String,
        /// The older version.
        #[arg(long)]
        from: Option<u64>,
        /// The newer version.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Make a kept version of a site the current one again (as a new version).
    Rollback { id: String, version: u64 },
}

#[derive(Subcommand, Debug)]
enum CredentialsAction {
    /// Revoke every credential the node had and print (or write) its new one.
    Rotate {
        /// The node, as its `[node] name`.
        node: String,
        /// Write the credential to `DIR/NODE.token` (mode 0600) instead of printing it.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Also hand the new credential to the node over its event stream; it
        /// writes it to its token file and goes on. For routine rotation only:
        /// whoever holds the old credential is handed the new one.
        #[arg(long)]
        hand_over: bool,
    },
    /// Revoke every credential the node had; it is refused until given a new one.
    Revoke {
        /// The node, as its `[node] name`.
        node: String,
    },
}

#[derive(Subcommand, Debug)]
enum PopsAction {
    /// List the PoPs whose weight was set.
    List,
    /// Send none of a PoP's clients to it (DNS answers the next nearest PoP).
    Drain {
        pop: String,
        /// Why, kept with the weight for the next operator.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Give a PoP back all its clients.
    Undrain { pop: String },
    /// Keep this percentage of a PoP's client networks (0 to 100).
    Weight {
        pop: String,
        #[arg(value_parser = clap::value_parser!(u8).range(0..=100))]
        weight: u8,
        #[arg(long)]
        reason: Option<String>,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,foyer=warn,foyer_storage=warn,hickory_server=warn")
    });
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { files } => return Ok(check::run(&files)),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "outpost", &mut script);
            // A reader that stops early (`| head`) is not an error.
            if let Err(e) = std::io::Write::write_all(&mut std::io::stdout(), &script)
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(e.into());
            }
        }
        Command::Manpages { dir } => {
            let n = manpages(&dir)?;
            println!("wrote {n} pages to {}", dir.display());
        }
        Command::Config { action: ConfigAction::Reference } => print!("{}", outpost_config::schema::reference()),
        Command::Up { config_dir, data_dir, ha } => {
            init_logging();
            raise_file_limit();
            runtime()?.block_on(up::run(&config_dir, &data_dir, ha))?;
        }
        Command::Edge { config } => serve(&config, Role::Edge)?,
        Command::Shield { config } => serve(&config, Role::Shield)?,
        Command::Control { config } => serve(&config, Role::Control)?,
        Command::Dns { config, build_geoip: Some(paths) } if config.is_none() => {
            let n = outpost_control::dns::build_database(&paths[0], &paths[1]).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("wrote {} ({n} networks)", paths[1].display());
        }
        Command::Dns { config, .. } => serve(&config.unwrap_or_default(), Role::Dns)?,
        Command::NodeToken { config, names, out } => {
            let node = outpost_config::NodeConfig::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let credentials = outpost_control::credential::for_nodes(&node, &names).map_err(anyhow::Error::msg)?;
            for (name, credential) in names.iter().zip(credentials) {
                match &out {
                    Some(dir) => {
                        let path = dir.join(format!("{name}.token"));
                        up::write_secret(&path, &credential)?;
                        println!("{}", path.display());
                    }
                    None => println!("{credential}"),
                }
            }
        }
        Command::Sites { action, control, json } => runtime()?.block_on(sites(action, &control, json))?,
        Command::Pops { action, control, json } => runtime()?.block_on(pops(action, &control, json))?,
        Command::Credentials { action, control, json } => runtime()?.block_on(credentials(action, &control, json))?,
        Command::Purge { site, urls, prefix, tags, all, soft, wait, control, json } => {
            let req = PurgeRequest { site, urls, prefix, tags, all, soft, wait, timeout_ms: None };
            runtime()?.block_on(purge(&req, &control, json))?;
        }
        Command::Load { scenario, out, report, summary_export, quiet } => {
            return load(&scenario, out.as_deref(), report, summary_export, quiet);
        }
        Command::Lab { action, dir } => return runtime()?.block_on(lab::cli::run(action, &dir)),
        Command::Status { control, json } => runtime()?.block_on(status(&control, json))?,
        Command::Origin { listen, dir } => {
            init_logging();
            runtime()?.block_on(origin(&listen, dir))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `outpost.1` and a page per command (`outpost-sites-push.1` for a
/// nested one); returns how many.
fn manpages(dir: &Path) -> anyhow::Result<usize> {
    fn write(dir: &Path, cmd: clap::Command, name: String) -> anyhow::Result<usize> {
        let cmd = cmd.name(name.clone());
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.1")), page)?;
        let mut n = 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            n += write(dir, sub.clone(), format!("{name}-{}", sub.get_name()))?;
        }
        Ok(n)
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    write(dir, cmd, "outpost".into())
}

fn serve(config: &Path, role: Role) -> anyhow::Result<()> {
    init_logging();
    raise_file_limit();
    runtime()?.block_on(roles::serve(config, role))
}

/// A server holds a descriptor per connection and per large cached body
/// (their memfds): the soft limit goes up to the hard one, as far as the
/// system lets an unprivileged process go.
fn raise_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
}

async fn purge(req: &PurgeRequest, control: &[String], json: bool) -> anyhow::Result<()> {
    let status = client::connect(control)?.purge(req).await.map_err(client::explain)?;
    if json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        client::print_purge(&status);
    }
    // Asked to wait: a script goes on only once every connected node has
    // applied it (`purge --wait && deploy`).
    if req.wait && !status.pending.is_empty() {
        anyhow::bail!(
            "purge {} is not applied yet by {} (logged: they take it when they can)",
            status.id,
            status.pending.join(", ")
        );
    }
    Ok(())
}

async fn status(control: &[String], json: bool) -> anyhow::Result<()> {
    let nodes = client::connect(control)?.nodes().await.map_err(client::explain)?;
    if json {
        println!("{}", serde_json::to_string(&nodes)?);
    } else {
        client::print_nodes(&nodes);
    }
    Ok(())
}

fn load(
    scenario: &Path,
    out: Option<&str>,
    report: Option<PathBuf>,
    k6_summary: Option<PathBuf>,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let json = match out.map(|o| o.strip_prefix("json=")) {
        None => None,
        Some(Some(file)) => Some(PathBuf::from(file)),
        Some(None) => {
            eprintln!("error: --out takes json=FILE");
            return Ok(ExitCode::from(2));
        }
    };
    let outputs = outpost_load::runner::Outputs { json, html: report, k6_summary, progress: !quiet };
    let done =
        runtime()?.block_on(outpost_load::runner::run_file(scenario, &outputs)).map_err(|e| anyhow::anyhow!(e))?;
    Ok(if done.passed() { ExitCode::SUCCESS } else { ExitCode::from(outpost_load::runner::THRESHOLD_FAILED) })
}

async fn origin(listen: &[SocketAddr], dir: Option<PathBuf>) -> anyhow::Result<()> {
    let server = outpost_load::OriginServer::bind(listen, dir).await?;
    for addr in server.local_addrs() {
        tracing::info!(%addr, "test origin listening");
    }
    server.run(signals::shutdown_token()).await?;
    Ok(())
}

async fn credentials(action: CredentialsAction, control: &[String], json: bool) -> anyhow::Result<()> {
    let api = client::connect(control)?;
    let (rec, out) = match action {
        CredentialsAction::Rotate { node, out, hand_over } => {
            (api.rotate_credential(&node, hand_over).await.map_err(client::explain)?, out)
        }
        CredentialsAction::Revoke { node } => (api.revoke_credential(&node).await.map_err(client::explain)?, None),
    };
    if json {
        println!("{}", serde_json::to_string(&rec)?);
        return Ok(());
    }
    match (&rec.credential, out) {
        (Some(credential), Some(dir)) => {
            let path = dir.join(format!("{}.token", rec.node));
            up::write_secret(&path, credential)?;
            println!("{}", path.display());
        }
        (Some(credential), None) => println!("{credential}"),
        (None, _) => println!("node `{}`: every credential below generation {} is revoked", rec.node, rec.generation),
    }
    Ok(())
}

async fn pops(action: PopsAction, control: &[String], json: bool) -> anyhow::Result<()> {
    use outpost_config::api::{FULL_WEIGHT, PopWeight};
    let api = client::connect(control)?;
    let (pop, weight) = match action {
        PopsAction::List => {
            let pops = api.pops().await.map_err(client::explain)?;
            if json {
                println!("{}", serde_json::to_string(&pops)?);
            } else {
                client::print_pops(&pops);
            }
            return Ok(());
        }
        PopsAction::Drain { pop, reason } => (pop, PopWeight { weight: 0, reason }),
        PopsAction::Undrain { pop } => (pop, PopWeight { weight: FULL_WEIGHT, reason: None }),
        PopsAction::Weight { pop, weight, reason } => (pop, PopWeight { weight, reason }),
    };
    let rec = api.set_pop(&pop, &weight).await.map_err(client::explain)?;
    if json {
        println!("{}", serde_json::to_string(&rec)?);
    } else {
        client::print_pops(std::slice::from_ref(&rec));
    }
    Ok(())
}

async fn sites(action: SitesAction, control: &[String], json: bool) -> anyhow::Result<()> {
    let api = client::connect(control)?;
    let out = match action {
        SitesAction::Push { file } => {
            let text = std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            serde_json::to_string(&api.push_site(&text).await.map_err(|e| client::explain_site(e, &file))?)?
        }
        SitesAction::List => {
            let sites = api.sites().await.map_err(client::explain)?;
            if !json {
                client::print_sites(&sites);
                return Ok(());
            }
            serde_json::to_string(&sites)?
        }
        SitesAction::Rm { id } => serde_json::to_string(&api.delete_site(&id).await.map_err(client::explain)?)?,
        SitesAction::Versions { id } => {
            let versions = api.site_versions(&id).await.map_err(client::explain)?;
            if !json {
                client::print_versions(&versions);
                return Ok(());
            }
            serde_json::to_string(&versions)?
        }
        SitesAction::Diff { id, from, to } => {
            let versions = api.site_versions(&id).await.map_err(client::explain)?;
            let pick = |v: Option<u64>, default: usize| match v {
                Some(v) => versions.iter().find(|r| r.version == v),
                None => versions.get(default),
            };
            let (Some(old), Some(new)) = (pick(from, 1), pick(to, 0)) else {
                return Err(client::not_kept(&id, &versions));
            };
            print!("{}", client::diff(old, new));
            return Ok(());
        }
        SitesAction::Rollback { id, version } => {
            let versions = api.site_versions(&id).await.map_err(client::explain)?;
            let Some(old) = versions.iter().find(|r| r.version == version) else {
                return Err(client::not_kept(&id, &versions));
            };
            serde_json::to_string(&api.push_site(&old.toml).await.map_err(client::explain)?)?
        }
    };
    println!("{out}");
    Ok(())
}
