//! Methods other than GET and HEAD: forwarded with their body, never
//! stored; a 2xx or 3xx answer to an unsafe method invalidates the URL and
//! the same-site `Location` / `Content-Location` (RFC 9111 §4.4): their
//! copies are validated before they are sent again.

use std::sync::Arc;
use std::time::Instant;

use http::Response;
use http::header::{self, HeaderValue};
use http_body_util::{BodyExt, Limited};
use outpost_net::RecvBody;

use super::context::{Answer, Ctx, failed};
use super::respond::passed_response;
use crate::cache_status::Detail;
use crate::error::Error;
use crate::host::RequestHost;
use crate::upstream::{BoxError, ClientBodyError, UpstreamError, request};

/// A forward takes a place among the fetches the client's connection and
/// network may have running, as a fetch does, held until the answer's
/// last byte: each holds an exchange with the upstream.
pub(super) async fn forward(cx: &Ctx, body: RecvBody) -> Answer {
    let engine = &cx.engine;
    let max = engine.limits.max_request_body;
    let declared =
        cx.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|l| l > max) {
        return failed(engine, Error::PayloadTooLarge);
    }
    let Some(place) = cx.errand(false) else {
        engine.metrics.fetch_refused();
        tracing::debug!(client = ?cx.client, "forward refused: the connection or its network has its share running");
        return failed(engine, Error::TooManyFetches);
    };
    let mut body = body.idle_limit(engine.limits.body_read_timeout, "the client");
    // An HTTP/2 request ended by an empty DATA frame is known empty once
    // that frame is in: it may then be sent again.
    body.settle();
    // The body goes upstream with the length the client declared (hyper
    // has checked it, and delivers exactly that many bytes or an error);
    // without one it is sent chunked, or not at all when empty.
    let length = declared.and_then(|_| http_body::Body::size_hint(&body).exact());
    let body = Limited::new(body, max as usize)
        .map_err(|e| -> BoxError {
            let too_large = e.is::<http_body_util::LengthLimitError>();
            Box::new(ClientBodyError { message: e.to_string(), too_large })
        })
        .boxed_unsync();
    // The normalised path, with the query as the client sent it.
    let target = match cx.uri.query() {
        Some(q) => format!("{}?{q}", cx.path()),
        None => cx.path().to_string(),
    };
    let mut up = request::forward(&engine.hop, &cx.site, &cx.client_side(), &cx.method, &target, body, length);
    if let Some(interim) = cx.interim.clone() {
        let (site, engine) = (Arc::clone(&cx.site), Arc::clone(&cx.engine));
        request::on_interim(&mut up, move |status, mut fields| {
            super::respond::interim_rules(&mut fields, &site, &engine.rules);
            interim.send(status, &fields);
        });
    }
    let waiting = Instant::now();
    let sent = engine.upstream.send(&cx.site, cx.rkey.placement(), up, cx.upstream_host()).await;
    let sent = sent.map(|resp| resp.map(|body| body.holding(Box::new(place))));
    let mut answer = forwarded(cx, sent).await;
    answer.1.upstream_wait = Some(waiting.elapsed());
    answer
}

async fn forwarded(cx: &Ctx, sent: Result<Response<RecvBody>, UpstreamError>) -> Answer {
    let engine = &cx.engine;
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => return failed(engine, Error::from(e)),
    };
    let status = resp.status();
    if !cx.method.is_safe() && (status.is_success() || status.is_redirection()) {
        engine.invalidate_url(&cx.site, cx.scope(None), &cx.rkey.url, &cx.headers).await;
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some((host, url)) = same_site_path(cx, resp.headers().get(&name)) {
                let host = host.as_deref().and_then(|h| RequestHost::parse(h).ok());
                engine.invalidate_url(&cx.site, cx.scope(host), &url, &cx.headers).await;
            }
        }
    }
    passed_response(cx, resp, Some(Detail::Method))
}

/// The host (absent: the request's own) and path of a `Location`-style
/// value when it points into this site.
fn same_site_path(cx: &Ctx, value: Option<&HeaderValue>) -> Option<(Option<String>, String)> {
    let text = value?.to_str().ok()?;
    if text.starts_with('/') {
        return Some((None, text.to_string()));
    }
    let uri: http::Uri = text.parse().ok()?;
    let authority = uri.authority()?.as_str();
    let host = RequestHost::parse(authority).ok()?;
    let path = uri.path_and_query().map_or("/".into(), |p| p.to_string());
    cx.site.serves(&host.name().to_ascii_lowercase()).then(|| (Some(authority.to_string()), path))
}
