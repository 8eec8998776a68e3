//! Every way a request can fail, with the side that failed (the client, an
//! upstream, or this node), whether trying again makes sense, and its cause;
//! and the one place a failure becomes a response: status, body,
//! `Cache-Status` detail, whether the connection closes after it and, for
//! internal failures, a log line with the cause chain.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::cache_status::Detail;
use crate::engine::respond::{Body, full};
use crate::upstream::{UpstreamError, UpstreamErrorKind};

/// Which side failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The request cannot or may not be served as sent: 4xx.
    Client,
    /// The next tier failed or could not be reached: 5xx, a stale copy may
    /// stand in.
    Upstream,
    /// This node failed: 500, logged with its cause.
    Internal,
}

/// A request that failed.
#[derive(Debug, Clone)]
pub(crate) enum Error {
    BadRequest(&'static str),
    /// No site for the host: never proxied anywhere.
    UnknownHost,
    MethodNotAllowed,
    /// The request came back to this node.
    Loop,
    PayloadTooLarge,
    /// `only-if-cached` and nothing usable is stored.
    OnlyIfCached,
    /// The request would start an upstream fetch, and its connection has
    /// `limits.fetches_per_connection` running, or its client's network
    /// `limits.fetches_per_network`.
    TooManyFetches,
    Upstream(UpstreamError),
    /// This node's own failure (`what` went wrong; `cause` says why).
    Internal {
        what: &'static str,
        cause: String,
    },
}

impl From<UpstreamError> for Error {
    fn from(e: UpstreamError) -> Error {
        match e.kind {
            // The client's body broke, not the upstream.
            UpstreamErrorKind::ClientBody { too_large: true } => Error::PayloadTooLarge,
            UpstreamErrorKind::ClientBody { too_large: false } => {
                Error::BadRequest("the request body did not come whole (malformed, cut off, or stalled)")
            }
            _ => Error::Upstream(e),
        }
    }
}

impl Error {
    pub(crate) fn internal(what: &'static str, cause: impl std::fmt::Display) -> Error {
        Error::Internal { what, cause: cause.to_string() }
    }

    pub(crate) fn class(&self) -> Class {
        match self {
            Error::Upstream(_) => Class::Upstream,
            Error::Internal { .. } => Class::Internal,
            _ => Class::Client,
        }
    }

    /// Trying again (elsewhere, or later) may succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Error::Upstream(e) => e.is_retryable(),
            Error::Internal { .. } | Error::TooManyFetches => true,
            _ => false,
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::UnknownHost => StatusCode::MISDIRECTED_REQUEST,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Loop => StatusCode::LOOP_DETECTED,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::OnlyIfCached => StatusCode::GATEWAY_TIMEOUT,
            Error::TooManyFetches => StatusCode::TOO_MANY_REQUESTS,
            Error::Upstream(e) => match e.kind {
                UpstreamErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                UpstreamErrorKind::NoTarget => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            },
            Error::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `Cache-Status` `detail=`, when there is one.
    pub(crate) fn detail(&self) -> Option<Detail> {
        match self {
            Error::Upstream(e) => Some(Detail::Upstream(e.kind)),
            Error::Internal { .. } => Some(Detail::Internal),
            _ => None,
        }
    }

    /// The connection cannot be trusted (or read) past this request: its
    /// bytes were malformed, or a body was left unread.
    pub(crate) fn closes_connection(&self) -> bool {
        matches!(self, Error::BadRequest(_) | Error::PayloadTooLarge)
    }

    fn reason(&self) -> String {
        match self {
            Error::BadRequest(why) => format!("bad request: {why}"),
            Error::UnknownHost => "this server does not serve that host".into(),
            Error::MethodNotAllowed => "method not allowed".into(),
            Error::Loop => "request loop detected".into(),
            Error::PayloadTooLarge => "request body too large".into(),
            Error::OnlyIfCached => "not in cache (only-if-cached)".into(),
            Error::TooManyFetches => "this connection has too many upstream fetches running".into(),
            Error::Upstream(e) => format!("upstream error: {}", e.as_str()),
            Error::Internal { .. } => "internal error".into(),
        }
    }

    /// The response for it. Internal failures are logged here, with their
    /// cause; their response says no more than "internal error".
    pub(crate) fn response(&self, node: &str) -> Response<Body> {
        if let Error::Internal { what, cause } = self {
            tracing::error!(node, what, cause, "internal failure answered with 500");
        }
        let mut r = plain(self.status(), &self.reason());
        if self.is_retryable() {
            // RFC 9110 §10.2.3: worth trying again shortly.
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.closes_connection() {
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(self, Error::MethodNotAllowed) {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
        }
        r
    }
}

/// A short text answer that no cache keeps.
pub(crate) fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{text}\n")));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `https_only`: a 308 to the same URL over HTTPS.
pub(crate) fn redirect(to: HeaderValue) -> Response<Body> {
    let mut r = plain(StatusCode::PERMANENT_REDIRECT, &format!("moved to {}", to.to_str().unwrap_or("https")));
    r.headers_mut().insert(header::LOCATION, to);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_class_status_and_detail() {
        let up = |k| Error::from(UpstreamError::new(k, "o"));
        assert_eq!(up(UpstreamErrorKind::Timeout).status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(up(UpstreamErrorKind::Connect).status(), StatusCode::BAD_GATEWAY);
        assert_eq!(up(UpstreamErrorKind::NoTarget).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(up(UpstreamErrorKind::Connect).class(), Class::Upstream);
        assert!(up(UpstreamErrorKind::Connect).is_retryable());
        assert_eq!(up(UpstreamErrorKind::Connect).response("n").headers()[header::RETRY_AFTER], "1");
        assert!(!Error::Loop.response("n").headers().contains_key(header::RETRY_AFTER));
        assert_eq!(up(UpstreamErrorKind::Connect).detail().map(Detail::as_str), Some("connect"));
        // A client body that broke is the client's failure.
        let body = up(UpstreamErrorKind::ClientBody { too_large: true });
        assert_eq!((body.class(), body.status()), (Class::Client, StatusCode::PAYLOAD_TOO_LARGE));
        let internal = Error::internal("the fetch ended without an answer", "task panicked");
        assert_eq!((internal.class(), internal.status()), (Class::Internal, StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(Error::Loop.status(), StatusCode::LOOP_DETECTED);
        assert_eq!(Error::UnknownHost.status(), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(Error::BadRequest("x").response("n").headers()[header::CONNECTION], "close");
        assert!(!Error::MethodNotAllowed.response("n").headers().contains_key(header::CONNECTION));
        let r = Error::MethodNotAllowed.response("n");
        assert!(r.headers().contains_key(header::ALLOW));
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let r = redirect(HeaderValue::from_static("https://a.test/"));
        assert_eq!(
            (r.status(), &r.headers()[header::LOCATION]),
            (StatusCode::PERMANENT_REDIRECT, &HeaderValue::from_static("https://a.test/"))
        );
    }
}
