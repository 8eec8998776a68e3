//! Sending a request to the next tier: the route's targets in order, a
//! growing pause between attempts, retries only for idempotent requests
//! without a body whose failure came before any response (and, once, for a
//! GET or HEAD without a body a target answered could not reach its own
//! upstream, or failed of itself: `Route::passed_on_fault`),
//! a passive health report for every attempt, and the target's concurrency
//! cap held until the response is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use outpost_config::Site;
use outpost_net::RecvBody;

use super::{Probes, ReqBody, Route, UpstreamClient, UpstreamError, UpstreamErrorKind};
use crate::key::Key;
use crate::observe::Metrics;

/// Pause before the second attempt at an upstream; doubles per attempt.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// Where a node's upstream requests go, and how they get there.
#[derive(Debug)]
pub struct Upstream {
    route: Arc<dyn Route>,
    client: UpstreamClient,
    metrics: Metrics,
    node: Arc<str>,
}

impl Upstream {
    pub fn new(route: Arc<dyn Route>, client: UpstreamClient, metrics: Metrics, node: Arc<str>) -> Upstream {
        Upstream { route, client, metrics, node }
    }

    pub fn route(&self) -> &Arc<dyn Route> {
        &self.route
    }

    /// Clients for health probes, connecting as requests do.
    pub fn probes(&self) -> Probes {
        self.client.probes()
    }

    /// Sends `req` for `site`'s object placed at `key`
    /// (`RequestKey::placement`). `client_host` is the `Host`
    /// sent to targets that have none of their own.
    pub async fn send(
        &self,
        site: &Site,
        key: Key,
        req: Request<ReqBody>,
        client_host: Option<HeaderValue>,
    ) -> Result<Response<RecvBody>, UpstreamError> {
        let mut targets = self.route.targets(site, key);
        // Tried again only without a body: one is spent on the first try,
        // and a PUT sent again without it would replace the resource with
        // nothing.
        let retry = req.method().is_idempotent() && http_body::Body::size_hint(req.body()).exact() == Some(0);
        if retry && targets.len() == 1 {
            // A lone upstream gets a second chance after a pause.
            targets.push(targets[0].clone());
        }
        let (parts, body) = req.into_parts();
        let mut body = Some(body);
        let mut last = UpstreamError::no_target();
        // A target that could not reach its own upstream: its answer, kept
        // in case no other target does better. Another target is tried so
        // once per request, and only for a GET or HEAD that may be sent again.
        let mut passed_on: Option<Response<RecvBody>> = None;
        let pass_over = retry && matches!(parts.method, http::Method::GET | http::Method::HEAD);
        for (i, target) in targets.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(RETRY_BACKOFF * (1 << (i - 1).min(4))).await;
            }
            // A place under the target's cap, within the time an answer
            // has (`response_timeout` counts from here, the wait and the
            // head together: the edge asking waits about as long): a cap
            // held by exchanges that do not end must not hold every
            // request queued behind it for good.
            let waiting = Instant::now();
            let permit = match &target.limit {
                Some(limit) => {
                    match tokio::time::timeout(target.response_timeout, Arc::clone(limit).acquire_owned()).await {
                        Ok(permit) => permit.ok(),
                        Err(_) => {
                            let name = target.base.authority().map_or_else(String::new, |a| a.to_string());
                            let secs = target.response_timeout.as_secs_f64();
                            last = UpstreamError::new(UpstreamErrorKind::Timeout, name)
                                .caused_by(format!("every place under max_connections was taken for {secs} s"));
                            // Nothing was sent: another target may be asked,
                            // whatever the request, but not this one again.
                            match targets.get(i + 1) {
                                Some(next) if next.base != target.base => continue,
                                _ => break,
                            }
                        }
                    }
                }
                None => None,
            };
            let body = body.take().unwrap_or_else(|| Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync());
            let mut attempt = Request::from_parts(parts.clone(), body);
            let host =
                target.host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()).or_else(|| client_host.clone());
            if let Some(h) = host {
                attempt.headers_mut().insert(header::HOST, h);
            }
            if !target.shield {
                attempt.headers_mut().remove(crate::headers::OUTPOST_SEQ);
                attempt.headers_mut().remove(crate::headers::OUTPOST_SEQ_AGE);
            }
            let started = Instant::now();
            let waited = started - waiting;
            let result = if target.limit.is_none() || waited < std::time::Duration::from_millis(1) {
                self.client.send(target, attempt).await
            } else {
                // What is left of the time, for the head (the target's own
                // limits, an upload's stall among them, stay as they are).
                let left = target.response_timeout.saturating_sub(waited);
                match tokio::time::timeout(left, self.client.send(target, attempt)).await {
                    Ok(result) => result,
                    Err(_) => {
                        let name = target.base.authority().map_or_else(String::new, |a| a.to_string());
                        Err(UpstreamError::new(UpstreamErrorKind::Timeout, name))
                    }
                }
            };
            self.metrics.upstream(started.elapsed(), result.is_ok());
            // The route judges an answer (a shield passing on an origin's
            // 5xx is well) and a silence (a slow origin behind a shield, or
            // a hung shield); a client's body that failed says nothing of
            // the upstream at all.
            match &result {
                Ok(r) => self.route.report(target, self.route.answered_well(target, r)),
                Err(e) if matches!(e.kind, UpstreamErrorKind::ClientBody { .. }) => {}
                Err(e) if e.kind == UpstreamErrorKind::Timeout => self.route.no_answer(site, target),
                Err(_) => self.route.report(target, false),
            }
            match result {
                Ok(resp)
                    if pass_over
                        && passed_on.is_none()
                        && targets.get(i + 1).is_some_and(|next| next.base != target.base)
                        && self.route.passed_on_fault(site, target, &resp) =>
                {
                    tracing::debug!(node = %self.node, target = %target.base, status = %resp.status(), "the upstream could not answer for its own: trying the next");
                    passed_on = Some(resp);
                }
                Ok(resp) => {
                    // Counted against the target's cap until the body's
                    // last byte, whoever reads it (a response's head is
                    // often let go of long before).
                    return Ok(match permit {
                        Some(p) => resp.map(|body| body.holding(Box::new(p))),
                        None => resp,
                    });
                }
                Err(e) => {
                    tracing::debug!(node = %self.node, target = %target.base, error = %super::error::chain(&e), "upstream failed");
                    // A lone target that did not answer in time is not
                    // waited out twice: an edge waits for its shield about
                    // as long as the shield waits for its origin, so the
                    // shield's 504 would never reach it, and the origin
                    // slow already would be asked again.
                    let same_again = targets.get(i + 1).is_some_and(|next| next.base == target.base);
                    let again = retry && e.is_retryable() && !(same_again && e.kind == UpstreamErrorKind::Timeout);
                    last = e;
                    if !again {
                        break;
                    }
                }
            }
        }
        passed_on.ok_or(last)
    }
}
