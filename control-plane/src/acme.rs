//! Certificates by ACME (RFC 8555) for sites with `[tls] acme = true`.
//!
//! The control plane is the one orderer of the fleet: edges and shields
//! never talk to the CA. For each such site it keeps one certificate
//! covering the site's exact host names, ordered when there is none (or the
//! names changed, or the node token that seals its key changed) and renewed
//! when a third of its lifetime is left.
//!
//! An order's HTTP-01 challenges go into the event log, so every node
//! answers them on the site's hosts and the CA may reach any edge; the
//! challenge is marked ready once the connected nodes have applied it (or
//! after [`APPLY_WAIT`]). The certificate goes into the store and the log
//! with its private key sealed under the node token ([`outpost_net::seal`]),
//! so the key is in clear nowhere but in the nodes' memory.
//!
//! The account and the certificates live in the store: replicas of a shared
//! store use the same ones, a restart orders nothing that is still good,
//! and an order is claimed in the store first so two replicas never run the
//! same one.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use outpost_config::{AcmeConfig, Event, HostPattern, IssuedCertificate, Site, SiteTls};
use serde::{Deserialize, Serialize};

use crate::api::Control;
use crate::store::now_ms;

/// How long the connected nodes get to apply a challenge before the CA is
/// told to check it.
pub const APPLY_WAIT: Duration = Duration::from_secs(10);
/// How long nodes keep answering a challenge, and how long an order's claim
/// holds off other replicas.
const ORDER_LIFETIME: Duration = Duration::from_secs(600);
/// How long the CA gets to validate and to issue.
const VALIDATION_WAIT: Duration = Duration::from_secs(120);
/// One request to the CA.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed order a site waits this long, doubling per failure up to
/// [`MAX_BACKOFF`] (CAs limit failed validations per name and hour).
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// Store records.
const ACCOUNT: &str = "acme/account";
fn claim_record(site: &str) -> String {
    format!("acme/order/{site}")
}
/// What the account's key is sealed for (under the admin token).
const ACCOUNT_PURPOSE: &str = "ACME account key";

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> AcmeError {
    AcmeError::Other(e.to_string())
}

/// The account as the store keeps it: the directory it belongs to and its
/// credentials, sealed.
#[derive(Debug, Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    sealed: String,
}

/// Who holds a site's order, until when.
#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    replica: String,
    until_ms: u64,
}

/// The HTTP client the ACME library speaks through: hyper with rustls
/// (ring), trusting the public web roots and the configured CA file.
struct AcmeHttp(Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl AcmeHttp {
    fn new(ca: Option<&Path>) -> Result<AcmeHttp, AcmeError> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(ca) = ca {
            use rustls::pki_types::pem::PemObject;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| other(format!("{}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(other(format!("{}: holds no CERTIFICATE", ca.display())));
            }
            for c in certs {
                roots.add(c).map_err(|e| other(format!("{}: {e}", ca.display())))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        Ok(AcmeHttp(Client::builder(TokioExecutor::new()).build(connector)))
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = self.0.request(req);
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, sent).await {
                Ok(Ok(resp)) => Ok(BytesResponse::from(resp)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(outpost_net::error_chain(&e).into())),
                Err(_) => Err(instant_acme::Error::Str("no answer from the ACME server in time")),
            }
        })
    }
}

/// The control plane's orderer.
pub struct Orderer {
    control: Arc<Control>,
    cfg: AcmeConfig,
    replica: String,
    http: Arc<AcmeHttp>,
    account: tokio::sync::Mutex<Option<Account>>,
    /// Sites whose last order failed: how often, and when to try again.
    failed: Mutex<HashMap<String, (u32, Instant)>>,
}

impl std::fmt::Debug for Orderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orderer").field("directory", &self.cfg.directory).finish_non_exhaustive()
    }
}

/// What a site with `acme = true` needs: its id and exact names, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    site: String,
    names: Vec<String>,
}

impl Orderer {
    pub fn new(control: Arc<Control>, cfg: AcmeConfig, replica: &str) -> Result<Orderer, AcmeError> {
        let http = Arc::new(AcmeHttp::new(cfg.ca.as_deref())?);
        Ok(Orderer {
            control,
            cfg,
            replica: replica.to_string(),
            http,
            account: tokio::sync::Mutex::new(None),
            failed: Mutex::new(HashMap::new()),
        })
    }

    /// Checks every `check_every`, and at once when a site changes, until
    /// the control plane closes.
    pub async fn run(self: Arc<Self>) {
        let mut events = self.control.events.subscribe();
        let mut tick = tokio::time::interval(self.cfg.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.control.closing.cancelled() => return,
                _ = tick.tick() => {}
                ev = events.recv() => match ev {
                    Ok(rec) if matches!(rec.event, Event::SiteUpserted { .. }) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    Ok(_) => continue,
                },
            }
            if let Err(e) = self.check().await {
                tracing::warn!(error = %e, "ACME: could not check the certificates");
            }
        }
    }

    /// Orders what is missing or due, one site at a time.
    pub async fn check(&self) -> Result<(), AcmeError> {
        let store = &self.control.store;
        let certs = store.certificates().await?;
        let node_token = self.control.node_token().to_string();
        let wants = wanted(&store.sites().await?);
        for want in &wants {
            let now = now_ms();
            let why = match certs.get(&want.site) {
                None => "no certificate yet",
                Some(c) if c.names != want.names => "the site's hosts changed",
                Some(c) if now >= c.renew_at_ms() => "a third of its lifetime is left",
                Some(c)
                    if outpost_net::seal::open(
                        &node_token,
                        &outpost_net::seal::certificate_key(&want.site),
                        &c.sealed_key,
                    )
                    .is_err() =>
                {
                    "its key is sealed under another node token"
                }
                Some(_) => continue,
            };
            if self
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&want.site)
                .is_some_and(|(_, at)| Instant::now() < *at)
            {
                continue;
            }
            if !self.claim(&want.site).await? {
                tracing::debug!(site = %want.site, "ACME: another replica is ordering this site's certificate");
                continue;
            }
            tracing::info!(site = %want.site, names = ?want.names, reason = why, "ACME: ordering a certificate");
            let result = self.order(want).await;
            self.release(&want.site).await;
            let outcome = match result {
                Ok(cert) => {
                    self.failed.lock().unwrap_or_else(|p| p.into_inner()).remove(&want.site);
                    tracing::info!(site = %want.site, not_after_ms = cert.not_after_ms, "ACME: certificate issued");
                    "issued"
                }
                Err(e) => {
                    let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                    let n = failed.get(&want.site).map_or(0, |(n, _)| *n) + 1;
                    let wait = FIRST_BACKOFF.saturating_mul(1 << (n - 1).min(16)).min(MAX_BACKOFF);
                    failed.insert(want.site.clone(), (n, Instant::now() + wait));
                    tracing::error!(site = %want.site, error = %e, retry_in_s = wait.as_secs(), "ACME: order failed");
                    "failed"
                }
            };
            metrics::counter!("outpost_acme_orders_total", "site" => want.site.clone(), "result" => outcome)
                .increment(1);
        }
        let failing = {
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            failed.retain(|site, _| wants.iter().any(|w| w.site == *site));
            failed.len()
        };
        metrics::gauge!("outpost_acme_failing_sites").set(failing as f64);
        for (site, cert) in store.certificates().await? {
            metrics::gauge!("outpost_acme_certificate_expiry_timestamp_seconds", "site" => site)
                .set(cert.not_after_ms as f64 / 1000.0);
        }
        Ok(())
    }

    /// Takes the site's order for this replica, unless another holds it.
    async fn claim(&self, site: &str) -> Result<bool, AcmeError> {
        let store = &self.control.store;
        let current = store.record(&claim_record(site)).await?;
        if let Some(held) = current.as_deref().and_then(|c| serde_json::from_str::<Claim>(c).ok())
            && held.replica != self.replica
            && held.until_ms > now_ms()
        {
            return Ok(false);
        }
        let mine = Claim { replica: self.replica.clone(), until_ms: now_ms() + ORDER_LIFETIME.as_millis() as u64 };
        let mine = serde_json::to_string(&mine).map_err(other)?;
        Ok(store.swap_record(&claim_record(site), current, Some(mine)).await?)
    }

    async fn release(&self, site: &str) {
        let store = &self.control.store;
        if let Ok(Some(current)) = store.record(&claim_record(site)).await
            && serde_json::from_str::<Claim>(&current).is_ok_and(|c| c.replica == self.replica)
        {
            let _ = store.swap_record(&claim_record(site), Some(current), None).await;
        }
    }

    /// The account: from memory, from the store, or made now (and stored).
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut cached = self.account.lock().await;
        if let Some(a) = cached.as_ref() {
            return Ok(a.clone());
        }
        let store = &self.control.store;
        let token = self.control.admin_token().to_string();
        let found = store.record(ACCOUNT).await?;
        let stored = found.as_deref().and_then(|s| serde_json::from_str::<StoredAccount>(s).ok());
        if let Some(stored) = stored.filter(|s| s.directory == self.cfg.directory) {
            match outpost_net::seal::open(&token, ACCOUNT_PURPOSE, &stored.sealed)
                .map_err(other)
                .and_then(|b| serde_json::from_slice::<AccountCredentials>(&b).map_err(other))
            {
                Ok(creds) => {
                    let account = Account::builder_with_http(Box::new(SharedHttp(Arc::clone(&self.http))))
                        .from_credentials(creds)
                        .await?;
                    *cached = Some(account.clone());
                    return Ok(account);
                }
                Err(e) => tracing::warn!(error = %e, "ACME: the stored account does not open; making a new one"),
            }
        }
        let contact: Vec<&str> = self.cfg.contact.iter().map(String::as_str).collect();
        let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
        let (account, creds) = Account::builder_with_http(Box::new(SharedHttp(Arc::clone(&self.http))))
            .create(&new, self.cfg.directory.clone(), None)
            .await?;
        let sealed = outpost_net::seal::seal(&token, ACCOUNT_PURPOSE, &serde_json::to_vec(&creds).map_err(other)?)
            .map_err(other)?;
        let record =
            serde_json::to_string(&StoredAccount { directory: self.cfg.directory.clone(), sealed }).map_err(other)?;
        if !store.swap_record(ACCOUNT, found, Some(record)).await? {
            // Another replica stored one meanwhile: this one still works
            // for this order, and the next start uses the stored one.
            tracing::info!("ACME: another replica registered an account at the same time");
        }
        tracing::info!(account = account.id(), "ACME: account registered");
        *cached = Some(account.clone());
        Ok(account)
    }

    /// One order, from new order to certificate in the store.
    async fn order(&self, want: &Wanted) -> Result<IssuedCertificate, AcmeError> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = want.names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let until_ms = now_ms() + ORDER_LIFETIME.as_millis() as u64;
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => return Err(AcmeError::Other(format!("an authorization is {other:?}"))),
                }
                let mut challenge = authz
                    .challenge(ChallengeType::Http01)
                    .ok_or_else(|| other("the CA offers no http-01 challenge"))?;
                let key_authorization = challenge.key_authorization().as_str().to_string();
                let logged = self
                    .control
                    .store
                    .log_challenge(&want.site, &challenge.token, &key_authorization, until_ms)
                    .await?
                    .ok_or_else(|| other("the site was deleted during its order"))?;
                let seq = logged.seq;
                self.control.publish(logged).await;
                self.control.wait_applied(seq, tokio::time::Instant::now() + APPLY_WAIT).await;
                challenge.set_ready().await?;
            }
        }
        let status = order.poll_ready(&RetryPolicy::new().timeout(VALIDATION_WAIT)).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Other(format!("the order is {status:?}: {}", why_invalid(&mut order).await)));
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&RetryPolicy::new().timeout(VALIDATION_WAIT)).await?;
        let (not_before_ms, not_after_ms) = validity(&chain_pem)?;
        let sealed_key = outpost_net::seal::seal(
            self.control.node_token(),
            &outpost_net::seal::certificate_key(&want.site),
            key_pem.as_bytes(),
        )
        .map_err(other)?;
        let cert = IssuedCertificate { chain_pem, sealed_key, names: want.names.clone(), not_before_ms, not_after_ms };
        let logged = self
            .control
            .store
            .put_certificate(&want.site, &cert)
            .await?
            .ok_or_else(|| other("the site was deleted during its order"))?;
        self.control.publish(logged).await;
        Ok(cert)
    }
}

/// Hands the shared client to the library, which wants a box.
struct SharedHttp(Arc<AcmeHttp>);

impl HttpClient for SharedHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        self.0.request(req)
    }
}

/// What the CA said about a failed order's challenges.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    if let Some(p) = &order.state().error {
        reasons.push(p.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                reasons.push(p.to_string());
            }
        }
    }
    if reasons.is_empty() { "no reason given".into() } else { reasons.join("; ") }
}

/// The leaf's validity, in epoch milliseconds.
fn validity(chain_pem: &str) -> Result<(u64, u64), AcmeError> {
    use rustls::pki_types::pem::PemObject;
    let leaf = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| other("the CA sent no certificate"))?
        .map_err(other)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(other)?;
    let ms = |t: i64| u64::try_from(t).unwrap_or(0) * 1000;
    Ok((ms(cert.validity().not_before.timestamp()), ms(cert.validity().not_after.timestamp())))
}

/// The sites that want an ACME certificate, with their exact names.
fn wanted(sites: &[crate::store::SiteRecord]) -> Vec<Wanted> {
    sites
        .iter()
        .filter_map(|rec| {
            let site = Site::parse_in(Path::new(&rec.id), &rec.toml, Path::new(".")).ok()?;
            if site.tls != Some(SiteTls::Acme) {
                return None;
            }
            let mut names: Vec<String> = site
                .hosts
                .iter()
                .filter_map(|h| match &h.value {
                    HostPattern::Exact(n) => Some(n.clone()),
                    HostPattern::Wildcard(_) => None,
                })
                .collect();
            names.sort();
            names.dedup();
            (!names.is_empty()).then_some(Wanted { site: site.id, names })
        })
        .collect()
}
