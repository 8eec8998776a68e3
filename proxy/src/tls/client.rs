//! TLS towards upstreams (edge → shield, shield → origin) and the control
//! plane: verification against the public web roots plus the CA files the
//! configuration names, SNI from the URL's host, and an optional client
//! certificate for mutual TLS between tiers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::connect::HttpConnector;
use outpost_config::{CertFiles, NodeTls};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, version};

use super::files::{TlsFileError, add_roots, load_certs, load_key};
use crate::resolve::Resolve;

/// An upstream connector: plain TCP for `http://`, TLS for `https://`.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector<Resolve>>;

/// How long making a connection, and keeping it, may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dial {
    /// Time to connect.
    pub connect: Duration,
    /// Time the peer has to acknowledge what was sent on the connection
    /// (`TCP_USER_TIMEOUT`, Linux): past it the kernel ends the connection
    /// with `ETIMEDOUT`, so a link cut without a word (packets dropped)
    /// shows in seconds, not after the response timeout. It also bounds
    /// unanswered keepalive probes on an idle pooled connection. A peer
    /// that is only slow to answer acknowledges the request at once, so
    /// it does not count; one that stops reading a request body (its
    /// receive window shut) for that long does. `None`: the kernel's
    /// default (minutes).
    pub link: Option<Duration>,
}

impl Dial {
    /// A connect timeout alone.
    pub fn connect(connect: Duration) -> Dial {
        Dial { connect, link: None }
    }
}

/// A connector for `http://` and `https://` URLs, TLS per `config`.
pub fn connector(config: Arc<ClientConfig>, resolve: Resolve, dial: Dial) -> Connector {
    let mut http = HttpConnector::new_with_resolver(resolve);
    http.enforce_http(false);
    http.set_connect_timeout(Some(dial.connect));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    http.set_tcp_user_timeout(dial.link);
    Connector::from((http, config))
}

/// A client configuration trusting the public web roots and `extra_ca`,
/// presenting `identity` when the server asks for a client certificate.
pub fn client_config(extra_ca: &[&Path], identity: Option<&CertFiles>) -> Result<Arc<ClientConfig>, TlsFileError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for ca in extra_ca {
        add_roots(&mut roots, ca)?;
    }
    let identity = identity.map(|c| Ok::<_, TlsFileError>((load_certs(&c.cert)?, load_key(&c.key)?))).transpose()?;
    build(roots, identity)
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A client configuration's extra CA, and whether it offers HTTP/2 (ALPN).
type ConfigKey = (Option<PathBuf>, bool);

/// A file as it stands: modified, length, inode (`None`: none there).
type Stamp = (std::time::SystemTime, u64, u64);

/// A configuration, its extra CA file as it stood when it was built, and
/// when that file was last looked at.
type Built = (Option<Stamp>, Instant, Arc<ClientConfig>);

/// How long a site's extra CA file is taken to stand as last seen: a file
/// replaced is read within this, and a request does not cost a `stat`.
const CA_RECHECK: Duration = Duration::from_secs(1);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

fn build(roots: RootCertStore, identity: Option<Identity>) -> Result<Arc<ClientConfig>, TlsFileError> {
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| TlsFileError::Setup(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => {
            builder.with_client_auth_cert(chain, key).map_err(|e| TlsFileError::Setup(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The TLS side of a node's upstream connections. Client configurations are
/// built once per extra CA file (a site's origin may name its own) and kept,
/// so connections share their session caches and resume.
#[derive(Debug)]
pub struct UpstreamTls {
    /// Public roots plus the node's `upstream_ca`.
    roots: RootCertStore,
    identity: Option<Arc<Identity>>,
    /// Built configurations, with the extra CA file as it stood when each
    /// was built ([`stamp`]): a file replaced, or one missing then and
    /// there now, is read again.
    configs: Mutex<HashMap<ConfigKey, Built>>,
    /// The folders a site's extra CA file must lie in: a node's, as for
    /// site certificates (its config folder and `[tls] site_cert_dirs`),
    /// so a site file cannot make the node trust a CA kept elsewhere on
    /// it (its own internal CA, say). `None`: anywhere.
    ca_dirs: Option<Vec<PathBuf>>,
    /// [`CA_RECHECK`], but in tests.
    recheck: Duration,
}

impl UpstreamTls {
    /// From a node's `[tls]`; its files must load.
    pub fn new(tls: &NodeTls) -> Result<UpstreamTls, TlsFileError> {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(ca) = &tls.upstream_ca {
            add_roots(&mut roots, ca)?;
        }
        let identity = match &tls.upstream_cert {
            Some(c) => Some(Arc::new((load_certs(&c.cert)?, load_key(&c.key)?))),
            None => None,
        };
        let this = UpstreamTls {
            roots,
            identity,
            configs: Mutex::new(HashMap::new()),
            ca_dirs: Some(tls.site_cert_dirs.clone()),
            recheck: CA_RECHECK,
        };
        // Fails now, at start, if the identity is unusable.
        this.build(None)?;
        Ok(this)
    }

    fn build(&self, extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsFileError> {
        let mut roots = self.roots.clone();
        if let Some(ca) = extra_ca {
            if let Some(dirs) = &self.ca_dirs {
                super::files::confined(ca, dirs)?;
            }
            add_roots(&mut roots, ca)?;
        }
        build(roots, self.identity.as_ref().map(|i| (i.0.clone(), i.1.clone_key())))
    }

    /// The client configuration for upstreams trusting `extra_ca` as well.
    /// A CA file that cannot be loaded is reported and left out: such an
    /// upstream then fails verification rather than being trusted blindly.
    pub fn config(&self, extra_ca: Option<&Path>) -> Arc<ClientConfig> {
        self.config_for(extra_ca, false)
    }

    fn config_for(&self, extra_ca: Option<&Path>, h2: bool) -> Arc<ClientConfig> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (extra_ca.map(Path::to_path_buf), h2);
        let checked = Instant::now();
        if let Some((_, last, c)) = configs.get(&key)
            && (extra_ca.is_none() || checked.saturating_duration_since(*last) < self.recheck)
        {
            return Arc::clone(c);
        }
        let now = extra_ca.and_then(stamp);
        if let Some((built, last, c)) = configs.get_mut(&key)
            && *built == now
        {
            *last = checked;
            return Arc::clone(c);
        }
        let mut config = self.build(extra_ca).unwrap_or_else(|e| {
            tracing::error!("upstream CA: {e}");
            self.build(None).unwrap_or_else(|_| {
                build(RootCertStore::empty(), None).expect("an empty client configuration always builds")
            })
        });
        if h2 {
            Arc::make_mut(&mut config).alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        configs.insert(key, (now, checked, Arc::clone(&config)));
        config
    }

    /// A connector for upstreams trusting `extra_ca` as well.
    pub fn connector(&self, extra_ca: Option<&Path>, resolve: Resolve, dial: Dial) -> Connector {
        connector(self.config(extra_ca), resolve, dial)
    }

    /// The same, offering HTTP/2 beside HTTP/1.1 in the TLS handshake
    /// (ALPN); the connection says which the server chose.
    pub fn connector_h2(&self, extra_ca: Option<&Path>, resolve: Resolve, dial: Dial) -> Connector {
        connector(self.config_for(extra_ca, true), resolve, dial)
    }
}

impl Default for UpstreamTls {
    /// Public roots only, no client certificate.
    fn default() -> Self {
        UpstreamTls {
            roots: RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
            identity: None,
            configs: Mutex::new(HashMap::new()),
            ca_dirs: None,
            recheck: CA_RECHECK,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::pki::LocalCa;

    /// A site's extra CA is read only from the folders site certificates
    /// may come from; one elsewhere on the node is left out, and upstreams
    /// are then checked against the node's roots alone.
    #[test]
    fn a_sites_extra_ca_must_lie_in_the_nodes_site_folders() {
        let (allowed, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let pem = LocalCa::generate("a CA").unwrap().cert_pem().to_string();
        let (inside, outside) = (allowed.path().join("ca.pem"), elsewhere.path().join("ca.pem"));
        std::fs::write(&inside, &pem).unwrap();
        std::fs::write(&outside, &pem).unwrap();
        let tls =
            UpstreamTls::new(&NodeTls { site_cert_dirs: vec![allowed.path().to_path_buf()], ..NodeTls::default() })
                .unwrap();
        assert!(tls.build(Some(&inside)).is_ok());
        assert!(matches!(tls.build(Some(&outside)), Err(TlsFileError::OutsideFolders(_))));
        // A link inside that points outside is outside.
        let link = allowed.path().join("link.pem");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        assert!(matches!(tls.build(Some(&link)), Err(TlsFileError::OutsideFolders(_))));
        assert!(UpstreamTls::default().build(Some(&outside)).is_ok(), "a client made without a node reads any");
    }

    /// An extra CA file missing when a site first names it, or replaced
    /// later, is read again once it is there or changed: the failure, and
    /// the old file, are not kept for the life of the process.
    #[test]
    fn a_sites_extra_ca_is_read_again_once_it_appears_or_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut tls =
            UpstreamTls::new(&NodeTls { site_cert_dirs: vec![dir.path().to_path_buf()], ..NodeTls::default() })
                .unwrap();
        let ca = dir.path().join("ca.pem");
        let pem = LocalCa::generate("CA").unwrap().cert_pem().to_string();
        let waited = tls.config(Some(&ca));
        std::fs::write(&ca, pem).unwrap();
        assert!(Arc::ptr_eq(&waited, &tls.config(Some(&ca))), "the file is looked at again only once a second");
        std::thread::sleep(CA_RECHECK + Duration::from_millis(100));
        assert!(!Arc::ptr_eq(&waited, &tls.config(Some(&ca))), "and then read");
        tls.recheck = Duration::ZERO;
        std::fs::remove_file(&ca).unwrap();
        let missing = tls.config(Some(&ca));
        assert!(Arc::ptr_eq(&missing, &tls.config(Some(&ca))), "kept while nothing changes");
        std::fs::write(&ca, LocalCa::generate("first CA").unwrap().cert_pem()).unwrap();
        let first = tls.config(Some(&ca));
        assert!(!Arc::ptr_eq(&missing, &first), "the file, once there, is read");
        assert!(Arc::ptr_eq(&first, &tls.config(Some(&ca))));
        std::fs::write(&ca, format!("{}\n", LocalCa::generate("second CA").unwrap().cert_pem())).unwrap();
        let second = tls.config(Some(&ca));
        assert!(!Arc::ptr_eq(&first, &second), "a replaced file is read again");
    }
}
