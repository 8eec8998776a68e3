//! The control-plane process: the store, the API listener, the tokens.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use outpost_config::{NodeConfig, RoleConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{Control, router};
use crate::store::{RegistryChange, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0} is not a control node file")]
    NotControl(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("token file `{path}`: {source}")]
    Token { path: String, source: io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("TLS: {0}")]
    Tls(io::Error),
    #[error(transparent)]
    Acme(crate::acme::AcmeError),
}

/// Reads a token file, creating it with a fresh random token (mode 0600)
/// when it does not exist yet.
pub fn token(path: &Path) -> Result<String, ControlError> {
    let err = |source| ControlError::Token { path: path.display().to_string(), source };
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut bytes = [0u8; 24];
    io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").map_err(err)?, &mut bytes).map_err(err)?;
    let t: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(mut f) => f.write_all(t.as_bytes()).map_err(err)?,
            // Another replica sharing this folder made it first: use its.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return written_by_another(path).map_err(err),
            Err(e) => return Err(err(e)),
        }
    }
    Ok(t)
}

/// The token another process is writing into `path`, once it is there.
fn written_by_another(path: &Path) -> io::Result<String> {
    for _ in 0..100 {
        let t = std::fs::read_to_string(path)?;
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(io::Error::other("the token file stays empty"))
}

/// A bound control plane.
#[derive(Debug)]
pub struct ControlNode {
    pub control: Arc<Control>,
    listener: TcpListener,
    /// Names the server in metrics; limits its connections.
    server: outpost_net::ServerConfig,
    /// Serves HTTPS with this when the node listens on `listen.https`.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Orders certificates for `acme = true` sites, with `[acme]` set.
    acme: Option<Arc<crate::acme::Orderer>>,
    /// How often an etcd store's history is compacted (zero: never).
    compact_every: std::time::Duration,
}

/// Compacts an etcd store's history every `every`, each time to the
/// revision it stood at the time before, until `stopped`. Every replica
/// does it: compacting to a revision another has passed is no error.
async fn compact_history(store: &Store, every: std::time::Duration, stopped: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = 0;
    loop {
        tokio::select! {
            _ = stopped.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.compact_history(last).await {
            Ok(now) => last = now,
            Err(e) => tracing::warn!(error = %e, "could not compact the etcd history"),
        }
    }
}

impl ControlNode {
    pub async fn bind(node: &NodeConfig) -> Result<ControlNode, ControlError> {
        let RoleConfig::Control(cfg) = &node.role else {
            return Err(ControlError::NotControl(node.file.display().to_string()));
        };
        let replica = format!("{}-{}-{:x}", node.name, std::process::id(), crate::store::now_ms());
        let store = Store::open(&cfg.store, &replica).await?;
        let admin = token(&cfg.admin_token_file)?;
        let nodes = token(&cfg.node_token_file)?;
        let tls = match (&node.listen.https.first(), &node.tls.cert) {
            (Some(_), Some(files)) => Some(crate::tls::server_config(files).map_err(ControlError::Tls)?),
            _ => None,
        };
        let addr = node
            .listen
            .https
            .first()
            .or(node.listen.http.first())
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7000)));
        let listener = outpost_net::listen(addr, node.limits.listen_backlog)
            .map_err(|source| ControlError::Bind { addr, source })?;
        let control = Control::new(store, admin, nodes, cfg.log_retention, cfg.node_expiry).await?;
        if !cfg.shared_node_token {
            control.refuse_shared_node_token();
        }
        if let Some(path) = &cfg.viewer_token_file {
            control.set_viewer_token(token(path)?);
        }
        let server = outpost_net::ServerConfig { name: node.name.as_str().into(), limits: node.limits };
        // Zero until an order fails: the alert on it has a series to watch
        // on every control plane.
        metrics::gauge!("outpost_acme_failing_sites").set(0.0);
        let acme = match &cfg.acme {
            Some(acme) => Some(Arc::new({
                control.enable_acme();
                crate::acme::Orderer::new(Arc::clone(&control), acme.clone(), &replica).map_err(ControlError::Acme)?
            })),
            None => None,
        };
        let compact_every = match &cfg.store {
            outpost_config::StoreBackend::Etcd(e) => e.compact_every,
            _ => std::time::Duration::ZERO,
        };
        Ok(ControlNode { control, listener, server, tls, acme, compact_every })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Whether the API is served over HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves the API until `shutdown`, with the node's limits and timeouts
    /// (header-read and idle timeouts, a connection cap). Event streams end
    /// when it stops, so open exchanges can finish.
    pub async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
        let closing = self.control.closing.clone();
        let stopped = shutdown.clone();
        tokio::spawn(async move {
            stopped.cancelled().await;
            closing.cancel();
        });
        let control = Arc::clone(&self.control);
        tokio::spawn(async move {
            let c = Arc::clone(&control);
            let changed = move |change: RegistryChange| c.registry_changed(change);
            control.store.follow_registry(&changed, control.closing.clone()).await;
        });
        let control = Arc::clone(&self.control);
        tokio::spawn(async move { control.watch_quorum().await });
        if !self.compact_every.is_zero() {
            let (control, every, stopped) = (Arc::clone(&self.control), self.compact_every, shutdown.clone());
            tokio::spawn(async move { compact_history(&control.store, every, stopped).await });
        }
        let control = Arc::clone(&self.control);
        let after = control.store.last_seq().await.unwrap_or(0);
        tokio::spawn(async move {
            let (tx, stop) = (control.events.clone(), control.closing.clone());
            control.store.follow_events(after, tx, stop).await;
        });
        let control = Arc::clone(&self.control);
        let stopped = shutdown.clone();
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(control.expiry_sweep());
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = sweep.tick() => {}
                }
                match control.expire_nodes().await {
                    Ok(gone) if !gone.is_empty() => tracing::info!(nodes = ?gone, "silent nodes left the registry"),
                    Err(e) => tracing::warn!(error = %e.detail, "registry sweep failed"),
                    _ => {}
                }
            }
        });
        if let Some(acme) = self.acme {
            tokio::spawn(acme.run());
        }
        let secure = self.tls.is_some();
        let app = outpost_net::TowerHandler(
            router(Arc::clone(&self.control)).merge(crate::console::router(self.control, secure)),
        );
        let listeners = vec![outpost_net::Listener { tcp: self.listener, tls: self.tls }];
        outpost_net::serve(Arc::new(app), listeners, self.server, shutdown).await
    }
}
