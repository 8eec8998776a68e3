//! TLS termination: the certificate for each connection chosen by SNI from
//! the sites' files, reloaded when a site changes or a file is replaced.
//!
//! The server configuration is built once per node; certificates live in a
//! [`CertStore`] that the configuration asks on every handshake, so swapping
//! the store's table changes what new connections see while connections
//! already established keep the keys they negotiated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use metrics::{Counter, gauge};
use outpost_config::{HostPattern, NodeTls, Site, SiteTls, UnknownSni};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};

use super::files::{Fingerprint, LoadedCert, TlsFileError, fingerprint, load_pair, load_roots};
use crate::engine::sites::HostMap;

/// TLS sessions remembered for resumption by session id (TLS 1.2); tickets
/// (TLS 1.3 and 1.2) need no server memory.
const SESSION_CACHE: usize = 32 * 1024;

/// Certificates by the names clients ask for.
#[derive(Debug, Default)]
struct CertTable {
    names: HostMap<Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

/// One certificate/key file pair and what was last loaded from it.
#[derive(Debug)]
struct Source {
    seen: (Option<Fingerprint>, Option<Fingerprint>),
    loaded: Option<LoadedCert>,
    /// The error of the last attempt, while the files stay as they were.
    error: Option<TlsFileError>,
}

#[derive(Debug, Default)]
struct Sources {
    files: HashMap<(PathBuf, PathBuf), Source>,
    sites: Vec<Arc<Site>>,
    /// Certificates of `acme = true` sites, by site, with the chain they
    /// were loaded from.
    issued: HashMap<String, (String, LoadedCert)>,
}

/// The certificates a node presents, found by SNI.
#[derive(Debug)]
pub struct CertStore {
    node: String,
    default_files: Option<(PathBuf, PathBuf)>,
    /// Where sites' certificate files may be.
    site_dirs: Vec<PathBuf>,
    unknown: UnknownSni,
    table: ArcSwap<CertTable>,
    sources: Mutex<Sources>,
    rejected: Counter,
}

impl CertStore {
    /// The store for a node. Its own default certificate must load: a node
    /// file is local, so a broken one stops the start.
    pub fn new(node: &str, tls: &NodeTls) -> Result<CertStore, TlsFileError> {
        let default_files = tls.cert.as_ref().map(|c| (c.cert.clone(), c.key.clone()));
        let store = CertStore {
            node: node.to_string(),
            default_files,
            site_dirs: tls.site_cert_dirs.clone(),
            unknown: tls.unknown_sni,
            table: ArcSwap::from_pointee(CertTable::default()),
            sources: Mutex::new(Sources::default()),
            rejected: metrics::counter!("outpost_tls_unknown_name_total", "node" => node.to_string()),
        };
        if let Some((cert, key)) = &store.default_files {
            let loaded = load_pair(cert, key, SystemTime::now())?;
            for w in &loaded.warnings {
                tracing::warn!(node = %store.node, "{w}");
            }
        }
        store.refresh();
        Ok(store)
    }

    /// The sites changed: certificates follow their `[tls]` sections.
    pub fn set_sites(&self, sites: Vec<Arc<Site>>) {
        self.lock().sites = sites;
        self.refresh();
    }

    /// The sites with an ACME certificate in use.
    pub fn issued_sites(&self) -> Vec<String> {
        self.lock().issued.keys().cloned().collect()
    }

    /// The chain (PEM) of a site's ACME certificate in use, if any.
    pub fn issued_chain(&self, site: &str) -> Option<String> {
        self.lock().issued.get(site).map(|(chain, _)| chain.clone())
    }

    /// Sets (or with `None` drops) a site's ACME certificate, loaded from
    /// `chain` (PEM).
    pub fn set_issued(&self, site: &str, cert: Option<(String, LoadedCert)>) {
        {
            let mut sources = self.lock();
            match cert {
                Some((chain, loaded)) => {
                    for w in &loaded.warnings {
                        tracing::warn!(node = %self.node, site, "{w}");
                    }
                    tracing::info!(node = %self.node, site, names = ?loaded.names, "ACME certificate installed");
                    sources.issued.insert(site.to_string(), (chain, loaded));
                }
                None => drop(sources.issued.remove(site)),
            }
        }
        self.refresh();
    }

    /// Does a name (lower-case) have a certificate, not counting the default?
    pub fn has(&self, name: &str) -> bool {
        self.table.load().names.find(name).is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reloads every file pair whose files changed and rebuilds the table.
    /// A pair that fails to load keeps what it held before, so replacing a
    /// certificate with a broken file never takes a site's HTTPS down.
    pub fn refresh(&self) {
        let mut sources = self.lock();
        let sources = &mut *sources;
        let mut wanted: Vec<(PathBuf, PathBuf)> = sources
            .sites
            .iter()
            .filter_map(|s| match &s.tls {
                Some(SiteTls::Files { cert, key }) => Some((cert.value.clone(), key.value.clone())),
                _ => None,
            })
            .collect();
        wanted.extend(self.default_files.clone());
        sources.files.retain(|k, _| wanted.contains(k));
        let now = SystemTime::now();
        let mut changed = false;
        for pair in wanted {
            let seen = (fingerprint(&pair.0), fingerprint(&pair.1));
            let source =
                sources.files.entry(pair.clone()).or_insert(Source { seen: (None, None), loaded: None, error: None });
            if source.seen == seen && (source.loaded.is_some() || source.error.is_some()) {
                continue;
            }
            source.seen = seen;
            changed = true;
            // A site's files must be where the node allows (the node's own
            // default certificate comes from its own file, and is trusted).
            let is_site = self.default_files.as_ref() != Some(&pair);
            let allowed = if is_site {
                super::files::confined(&pair.0, &self.site_dirs)
                    .and_then(|()| super::files::confined(&pair.1, &self.site_dirs))
            } else {
                Ok(())
            };
            match allowed.and_then(|()| load_pair(&pair.0, &pair.1, now)) {
                Ok(loaded) => {
                    for w in &loaded.warnings {
                        tracing::warn!(node = %self.node, "{w}");
                    }
                    tracing::debug!(node = %self.node, cert = %pair.0.display(), names = ?loaded.names, "certificate loaded");
                    source.loaded = Some(loaded);
                    source.error = None;
                }
                Err(e) => {
                    let kept = if source.loaded.is_some() { "; the previous certificate stays in use" } else { "" };
                    tracing::error!(node = %self.node, "{e}{kept}");
                    source.error = Some(e);
                }
            }
        }
        let mut table = CertTable::default();
        let mut errors = 0;
        for site in &sources.sites {
            let (loaded, from) = match &site.tls {
                None => continue,
                Some(SiteTls::Files { cert, key }) => {
                    let pair = (cert.value.clone(), key.value.clone());
                    // The node's own files, named by a site, are held to
                    // the folders any site's are: a site that could name
                    // them would have the node present its certificate,
                    // and sign with its key, for the site's hosts.
                    if self.default_files.as_ref() == Some(&pair)
                        && let Err(e) = super::files::confined(&pair.0, &self.site_dirs)
                            .and_then(|()| super::files::confined(&pair.1, &self.site_dirs))
                    {
                        tracing::error!(node = %self.node, site = %site.id, "{e}");
                        errors += 1;
                        continue;
                    }
                    let source = &sources.files[&pair];
                    errors += usize::from(source.error.is_some());
                    (source.loaded.as_ref(), cert.value.display().to_string())
                }
                Some(SiteTls::Acme) => (sources.issued.get(&site.id).map(|(_, l)| l), format!("acme:{}", site.id)),
            };
            let Some(loaded) = loaded else { continue };
            let expiry = loaded.not_after.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            gauge!("outpost_tls_certificate_expiry_timestamp_seconds", "node" => self.node.clone(), "site" => site.id.clone()).set(expiry);
            for host in &site.hosts {
                if let HostPattern::Exact(name) = &host.value
                    && changed
                    && !loaded.covers(name)
                {
                    tracing::warn!(node = %self.node, site = %site.id, host = %name, cert = %from, "the site's certificate does not cover this host");
                }
                table.names.insert(&host.value, Arc::clone(&loaded.key));
            }
        }
        if let Some(files) = &self.default_files {
            table.default = sources.files.get(files).and_then(|s| s.loaded.as_ref()).map(|l| Arc::clone(&l.key));
        }
        gauge!("outpost_tls_certificate_errors", "node" => self.node.clone()).set(errors as f64);
        self.table.store(Arc::new(table));
    }

    /// Watches the certificate files until `shutdown`, checking every
    /// `every` for replaced files.
    pub fn watch(self: Arc<Self>, every: std::time::Duration, shutdown: tokio_util::sync::CancellationToken) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let store = Arc::clone(&self);
                let _ = tokio::task::spawn_blocking(move || store.refresh()).await;
            }
        });
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        if let Some(name) = hello.server_name() {
            let found = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                table.names.find(&name.to_ascii_lowercase()).cloned()
            } else {
                table.names.find(name).cloned()
            };
            if found.is_some() {
                return found;
            }
        }
        let fallback = match self.unknown {
            UnknownSni::Default => table.default.clone(),
            UnknownSni::Reject => None,
        };
        if fallback.is_none() {
            self.rejected.increment(1);
        }
        fallback
    }
}

/// The TLS configuration of a node's HTTP/3 listeners: the same
/// certificates by SNI, TLS 1.3 only (QUIC has no other), ALPN `h3`,
/// resumption by tickets, no early data (0-RTT requests could be
/// replayed), and client certificates required when `client_ca` is set,
/// as on the TCP listeners.
pub fn quic_server_config(certs: Arc<CertStore>, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>, TlsFileError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&version::TLS13])
        .map_err(|e| TlsFileError::Setup(e.to_string()))?;
    let mut config = match client_verifier(client_ca, provider)? {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h3".to_vec()];
    config.max_early_data_size = 0;
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsFileError::Setup(e.to_string()))?;
    Ok(Arc::new(config))
}

/// What checks clients' certificates when `client_ca` is set: every
/// client must present one it signed.
fn client_verifier(
    client_ca: Option<&Path>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, TlsFileError> {
    let Some(ca) = client_ca else { return Ok(None) };
    let roots = Arc::new(load_roots(ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| TlsFileError::BadCertificate(ca.to_path_buf(), e.to_string()))?;
    Ok(Some(verifier))
}

/// The server configuration of a node's TLS listeners: TLS 1.3 and 1.2,
/// ALPN `h2` then `http/1.1`, resumption by tickets and by session id, and
/// client certificates required when `client_ca` is set.
pub fn server_config(certs: Arc<CertStore>, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>, TlsFileError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| TlsFileError::Setup(e.to_string()))?;
    let builder = match client_verifier(client_ca, provider)? {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsFileError::Setup(e.to_string()))?;
    Ok(Arc::new(config))
}
