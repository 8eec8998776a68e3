//! Operator endpoints: sites, purges, nodes, health and metrics.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use outpost_config::Site;
use outpost_config::api::{
    Deleted, FULL_WEIGHT, Health, NodeCredential, NodeStatus, PopRecord, PopWeight, PurgeRequest, PurgeStatus,
    RotateQuery, SiteSummary, Stored,
};

use super::{ApiError, Control, DEFAULT_PURGE_WAIT};
use crate::store::StoreError;
use crate::store::{PurgeRecord, now_ms};

type Shared = State<Arc<Control>>;

/// 200 `ok`, or 503 `no_quorum` from a replica that cannot commit (load
/// balancers take it out; nodes move to another replica).
pub(super) async fn healthz(State(c): Shared) -> Response {
    let seq = c.store.last_seq().await.unwrap_or(0);
    if c.has_quorum() {
        Json(Health { status: "ok".into(), seq }).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "no_quorum".into(), seq })).into_response()
    }
}

pub(super) async fn metrics(State(c): Shared) -> Response {
    let nodes = c.node_gauges().await;
    let mut text = outpost_net::metrics::render();
    text.push_str(&nodes);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; see /v1/sites, /v1/purge, /v1/nodes, /v1/pops")
}

pub(super) async fn list_sites(State(c): Shared, headers: HeaderMap) -> Result<Json<Vec<SiteSummary>>, ApiError> {
    // Read by operators and by DNS servers (with the node token), which
    // answer for the sites listed.
    c.reader_or_node(&headers).await?;
    let sites = c.store.sites().await.map_err(ApiError::from)?;
    Ok(Json(
        sites
            .into_iter()
            .map(|s| {
                let hosts = Site::parse(Path::new(&s.id), &s.toml)
                    .map(|site| site.hosts.iter().map(|h| h.value.to_string()).collect())
                    .unwrap_or_default();
                SiteSummary { id: s.id, version: s.version, updated_ms: s.updated_ms, hosts }
            })
            .collect(),
    ))
}

pub(super) async fn get_site(
    State(c): Shared,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    c.reader(&headers)?;
    match c.store.site(&id).await.map_err(ApiError::from)? {
        Some(s) => Ok(Json(s).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no site `{id}`"))),
    }
}

/// `GET /v1/sites/{id}/versions`: the versions the store keeps, newest
/// first.
pub(super) async fn site_versions(
    State(c): Shared,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Vec<outpost_config::api::SiteRecord>>, ApiError> {
    c.reader(&headers)?;
    let history = c.store.site_history(&id).await.map_err(ApiError::from)?;
    if history.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no site `{id}`")));
    }
    Ok(Json(history))
}

/// Validates a site file's text with the config crate; every problem is
/// reported, and nothing is stored unless all is well.
fn validate(text: &str, name: &str) -> Result<Site, ApiError> {
    let site = Site::parse(Path::new(name), text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_site",
            e.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"),
        )
    })?;
    Ok(site)
}

/// Times a site write checks the other sites again when another replica
/// wrote one in between.
const SITE_WRITE_TRIES: usize = 8;

/// The longest site file stored: an etcd write holds its text three times
/// (the site, its history, the event) within etcd's 1.5 MiB request limit.
const MAX_SITE_TEXT: usize = 400 << 10;

async fn store_site(c: Arc<Control>, text: String, expected: Option<String>) -> Result<Response, ApiError> {
    let stored = c.upsert_site_text(&text, expected.as_deref(), None).await?;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

impl Control {
    /// Validates and stores a site file's text, logging a new version only
    /// when the text changed; 409 when another writer changed the site
    /// meanwhile. With `at`, the version the writer started from (`None`:
    /// no such site), anything else is 409 too, and the store's
    /// compare-and-swap is on it. Used by the API, the console and
    /// `outpost up`.
    pub async fn upsert_site_text(
        &self,
        text: &str,
        expected: Option<&str>,
        at: Option<Option<u64>>,
    ) -> Result<Stored, ApiError> {
        let c = self;
        c.writable()?;
        if text.len() > MAX_SITE_TEXT {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "site_too_large",
                format!("a site file is at most {} KiB; this one is {} bytes", MAX_SITE_TEXT >> 10, text.len()),
            ));
        }
        let text = text.to_string();
        let site = validate(&text, "site.toml")?;
        if let Some(id) = expected
            && id != site.id
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "id_mismatch",
                format!("the URL names `{id}` but the file is site `{}`", site.id),
            ));
        }
        if site.tls == Some(outpost_config::SiteTls::Acme) && !c.orders_certificates() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "no_acme",
                "the site asks for `[tls] acme = true`, but this control plane has no [acme] directory to order \
                 from: add one to its node file, or give the site certificate files",
            ));
        }
        // Hosts must not collide with another site's, checked and
        // committed as one step: on this replica in turn, and against
        // another replica's writes by the store, which refuses the write
        // when a site was written after the check read them.
        let _one = c.site_writes.lock().await;
        for _ in 0..SITE_WRITE_TRIES {
            if let Some(stored) = c.check_and_store(site.clone(), &text, at).await? {
                return Ok(stored);
            }
        }
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "other sites kept changing while this one was checked against them: try again",
        ))
    }

    /// Stores `site` if its hosts collide with no other site's (409 when
    /// they do, or when `at` is not its version); `None` when another
    /// site was written between the check and the write, to check again.
    async fn check_and_store(
        &self,
        site: Site,
        text: &str,
        at: Option<Option<u64>>,
    ) -> Result<Option<Stored>, ApiError> {
        let c = self;
        let (checked, stored) = c.store.sites_at_seq().await.map_err(ApiError::from)?;
        let mut sites: Vec<Site> = Vec::new();
        for s in stored {
            if s.id != site.id
                && let Ok(other) = Site::parse(Path::new(&s.id), &s.toml)
            {
                sites.push(other);
            }
        }
        sites.push(site.clone());
        let clashes = outpost_config::check_sites(&sites);
        if !clashes.is_empty() {
            let detail = clashes.iter().map(|d| d.message.clone()).collect::<Vec<_>>().join("\n");
            return Err(ApiError::new(StatusCode::CONFLICT, "host_conflict", detail));
        }
        let existing = c.store.site(&site.id).await.map_err(ApiError::from)?;
        let current = existing.as_ref().map(|s| s.version);
        if let Some(at) = at
            && at != current
        {
            let detail = match (current, at) {
                (Some(v), None) => format!("a site `{}` exists already (version {v})", site.id),
                (Some(v), Some(_)) => {
                    format!("site `{}` is at version {v} now: someone else saved it meanwhile", site.id)
                }
                (None, _) => format!("site `{}` was deleted meanwhile", site.id),
            };
            return Err(ApiError::new(StatusCode::CONFLICT, "conflict", detail));
        }
        if let Some(existing) = &existing
            && existing.toml == text
        {
            let seq = c.store.last_seq().await.map_err(ApiError::from)?;
            return Ok(Some(Stored { id: site.id, version: existing.version, seq }));
        }
        let rec = match c.store.upsert_site_checked(&site.id, text, current, checked).await {
            Ok(rec) => rec,
            Err(StoreError::SitesMoved) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let version = match &rec.event {
            outpost_config::Event::SiteUpserted { version, .. } => *version,
            _ => 0,
        };
        let seq = rec.seq;
        c.publish(rec).await;
        Ok(Some(Stored { id: site.id, version, seq }))
    }
}

pub(super) async fn put_site(State(c): Shared, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    c.admin(&headers)?;
    store_site(c, super::read_text(body).await?, None).await
}

pub(super) async fn put_site_id(
    State(c): Shared,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Result<Response, ApiError> {
    c.admin(&headers)?;
    store_site(c, super::read_text(body).await?, Some(id)).await
}

pub(super) async fn delete_site(
    State(c): Shared,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    c.admin(&headers)?;
    c.writable()?;
    let deleted = c.store.delete_site(&id).await.map_err(ApiError::from)?;
    match deleted {
        Some(rec) => {
            let seq = rec.seq;
            c.publish(rec).await;
            Ok(Json(Deleted { id, deleted: true, seq }).into_response())
        }
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no site `{id}`"))),
    }
}

impl Control {
    /// A purge's report: the registered nodes that applied it, and the
    /// connected ones that have not yet.
    pub(crate) async fn purge_status(&self, p: &PurgeRecord) -> Result<PurgeStatus, ApiError> {
        let nodes: Vec<String> = self.store.nodes().await.map_err(ApiError::from)?.into_keys().collect();
        Ok(self.purge_status_among(p, &nodes))
    }

    /// The same, among these registered nodes (one registry read for many
    /// reports).
    pub(crate) fn purge_status_among(&self, p: &PurgeRecord, nodes: &[String]) -> PurgeStatus {
        let acked = nodes.iter().filter(|name| self.acked_seq(name) >= p.seq).cloned().collect();
        let pending = self.connected_nodes().into_iter().filter(|n| self.acked_seq(n) < p.seq).collect();
        PurgeStatus {
            id: p.purge.id.clone(),
            seq: p.seq,
            site: p.purge.site_id.clone(),
            target: p.purge.target.clone(),
            soft: p.purge.soft,
            at_ms: p.at_ms,
            acked,
            pending,
        }
    }

    /// Checks, rate-limits (per `who`) and logs a purge, and publishes it.
    pub(crate) async fn submit_purge(&self, req: &PurgeRequest, who: &str) -> Result<PurgeRecord, ApiError> {
        let target = req.target().map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_purge", m))?;
        // Before any read: a replica cut off from its store's quorum says so
        // at once rather than after reads that wait on the lost members.
        self.writable()?;
        if self.store.site(&req.site).await.map_err(ApiError::from)?.is_none() {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no site `{}`", req.site)));
        }
        if !self.limiter.allow(who) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many purges; batch URLs or wait a moment",
            ));
        }
        let rec = self.store.add_purge(&req.site, target, req.soft).await.map_err(ApiError::from)?;
        if let Some(ev) = self.store.events_after(rec.seq - 1, 1).await.map_err(ApiError::from)?.into_iter().next() {
            self.publish(ev).await;
        }
        Ok(rec)
    }

    /// Waits until every connected node has applied event `seq`, or
    /// `deadline`.
    pub(crate) async fn wait_applied(&self, seq: u64, deadline: tokio::time::Instant) {
        let mut changed = self.ack_changed.subscribe();
        loop {
            changed.borrow_and_update();
            if self.connected_nodes().iter().all(|n| self.acked_seq(n) >= seq) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                return;
            }
        }
    }

    /// Every registered node as the registry and this replica know it.
    pub(crate) async fn node_statuses(&self) -> Result<Vec<NodeStatus>, ApiError> {
        let last = self.store.last_seq().await.map_err(ApiError::from)?;
        let connected = self.connected_nodes();
        let now = now_ms();
        let mut out = Vec::new();
        for (name, mut n) in self.store.nodes().await.map_err(ApiError::from)? {
            n.acked_seq = n.acked_seq.max(self.acked_seq(&name));
            out.push(NodeStatus {
                connected: connected.contains(&name),
                lag: last.saturating_sub(n.acked_seq),
                since_contact_ms: now.saturating_sub(n.last_contact_ms),
                node: n,
            });
        }
        Ok(out)
    }
}

pub(super) async fn purge(State(c): Shared, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    c.admin(&headers)?;
    let req: PurgeRequest = super::json_body(&super::read_body(body).await?)?;
    let token = super::bearer(&headers).unwrap_or_default().to_string();
    let rec = c.submit_purge(&req, &token).await?;
    if req.wait {
        let deadline = tokio::time::Instant::now() + req.timeout_ms.map_or(DEFAULT_PURGE_WAIT, Duration::from_millis);
        c.wait_applied(rec.seq, deadline).await;
    }
    let s = c.purge_status(&rec).await?;
    let code = if req.wait && s.pending.is_empty() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((code, Json(s)).into_response())
}

pub(super) async fn get_purge(
    State(c): Shared,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    c.reader(&headers)?;
    match c.store.purge(&id).await.map_err(ApiError::from)? {
        Some(p) => Ok(Json(c.purge_status(&p).await?).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no purge `{id}`"))),
    }
}

pub(super) async fn nodes(State(c): Shared, headers: HeaderMap) -> Result<Json<Vec<NodeStatus>>, ApiError> {
    // Read by operators and by DNS servers (with the node token).
    c.reader_or_node(&headers).await?;
    Ok(Json(c.node_statuses().await?))
}

/// `GET /v1/pops`: the PoPs whose weight an operator set (read by
/// operators and by DNS servers, with the node token).
pub(super) async fn pops(State(c): Shared, headers: HeaderMap) -> Result<Json<Vec<PopRecord>>, ApiError> {
    c.reader_or_node(&headers).await?;
    Ok(Json(c.store.pops().await.map_err(ApiError::from)?))
}

/// Longest reason kept with a PoP's weight.
const MAX_REASON_LEN: usize = 200;

/// `PUT /v1/pops/{name}`: sets a PoP's weight; 0 drains it.
pub(super) async fn put_pop(
    State(c): Shared,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PopRecord>, ApiError> {
    c.admin(&headers)?;
    let req: PopWeight = super::json_body(&super::read_body(body).await?)?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_pop", m);
    if !super::events::valid_name(&name) {
        return Err(bad(format!("`{name}` is not a PoP name (letters, digits and `-`, at most 63)")));
    }
    if req.weight > FULL_WEIGHT {
        return Err(bad(format!("weight {} is above {FULL_WEIGHT}", req.weight)));
    }
    if req.reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_LEN) {
        return Err(bad(format!("a reason is at most {MAX_REASON_LEN} bytes")));
    }
    c.writable()?;
    let rec = PopRecord { name, weight: req.weight, reason: req.reason, updated_ms: now_ms() };
    c.store.put_pop(&rec).await.map_err(ApiError::from)?;
    tracing::info!(pop = %rec.name, weight = rec.weight, reason = ?rec.reason, "PoP weight set");
    Ok(Json(rec))
}

/// Revokes every credential node `name` had (admin token); the lowest
/// generation taken from now on.
async fn revoke(c: &Control, name: &str, headers: &HeaderMap, hand_over: bool) -> Result<u64, ApiError> {
    c.admin(headers)?;
    if !super::events::valid_name(name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_node",
            format!("`{name}` is not a node name (letters, digits and `-`, at most 63)"),
        ));
    }
    c.writable()?;
    Ok(c.revocations.revoke(&c.store, name, hand_over).await?)
}

/// `POST /v1/nodes/{name}/credential[?hand_over=true]`: revokes every
/// credential the node had and hands out one of the next generation. The
/// node's streams end (here at once, at other replicas within two
/// heartbeats) and it is refused until it presents the new one; with
/// `hand_over`, its streams are sent the new one first.
pub(super) async fn rotate_credential(
    State(c): Shared,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    query: Result<Query<RotateQuery>, QueryRejection>,
) -> Result<Json<NodeCredential>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let generation = revoke(&c, &name, &headers, q.hand_over).await?;
    let credential = crate::credential::credential_of_generation(c.node_token(), &name, generation);
    Ok(Json(NodeCredential { node: name, generation, credential: Some(credential) }))
}

/// `DELETE /v1/nodes/{name}/credential`: revokes every credential the node
/// had, handing out none (a node taken over, or retired).
pub(super) async fn revoke_credential(
    State(c): Shared,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Json<NodeCredential>, ApiError> {
    let generation = revoke(&c, &name, &headers, false).await?;
    Ok(Json(NodeCredential { node: name, generation, credential: None }))
}
