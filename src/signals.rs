//! Ctrl-C and SIGTERM both mean "stop cleanly"; SIGHUP reopens the access
//! logs (after a rotation) and reloads the site files of a node that has
//! no control plane.

use tokio_util::sync::CancellationToken;

/// From now on SIGHUP no longer ends the process, its default: one sent
/// while the node starts (logrotate's reload of every unit, say) is taken
/// as nothing, not as a stop that systemd, counting it a clean exit, would
/// not restart. (A handler, once registered, stays for the process's life.)
#[cfg(unix)]
pub fn hold_hangup() {
    use tokio::signal::unix::{SignalKind, signal};
    if let Err(e) = signal(SignalKind::hangup()) {
        tracing::warn!(error = %e, "cannot handle SIGHUP");
    }
}

#[cfg(not(unix))]
pub fn hold_hangup() {}

/// A token cancelled on the first Ctrl-C or SIGTERM. From then on, SIGHUP
/// reopens the access logs instead of ending the process.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping");
        t.cancel();
    });
    reopen_logs_on_hangup();
    token
}

#[cfg(unix)]
fn reopen_logs_on_hangup() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reopening the access logs");
                    outpost_proxy::reopen_access_logs();
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP"),
    }
}

#[cfg(not(unix))]
fn reopen_logs_on_hangup() {}

/// On SIGHUP, reads the node file at `path` and its site files again and,
/// when every one of them is sound, serves the sites they describe. A
/// mistake anywhere is logged with its `file:line:column` and changes
/// nothing: the sites loaded before keep serving. Only the sites are
/// reloaded; the rest of the node file takes a restart.
#[cfg(unix)]
pub fn reload_sites_on_hangup(path: std::path::PathBuf, engine: std::sync::Arc<outpost_proxy::Engine>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => return tracing::warn!(error = %e, "cannot handle SIGHUP"),
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let path = path.clone();
            let loaded = tokio::task::spawn_blocking(move || outpost_config::NodeConfig::load(&path)).await;
            match loaded {
                Ok(Ok(node)) => match node.proxy() {
                    Some(proxy) => {
                        // As at a start: a site id new since (perhaps another
                        // site given a removed one's id) serves nothing
                        // stored under it before.
                        let ids = proxy.sites.iter().map(|s| s.id.to_string());
                        match engine.purges.note_sites(ids, engine.clock.stamp()) {
                            Ok(new) if !new.is_empty() => {
                                tracing::info!(sites = ?new, "SIGHUP: new site ids serve nothing stored before")
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "SIGHUP: could not record the sites beside the purge rules")
                            }
                        }
                        engine.set_sites(proxy.sites.clone());
                        tracing::info!(sites = proxy.sites.len(), "SIGHUP: site files reloaded");
                    }
                    None => tracing::error!("SIGHUP: the node file no longer describes an edge or shield; sites kept"),
                },
                Ok(Err(e)) => {
                    tracing::error!("SIGHUP: the sites were not reloaded, the ones loaded keep serving:\n{e}")
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: the sites were not reloaded"),
            }
        }
    });
}

#[cfg(not(unix))]
pub fn reload_sites_on_hangup(_path: std::path::PathBuf, _engine: std::sync::Arc<outpost_proxy::Engine>) {}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
