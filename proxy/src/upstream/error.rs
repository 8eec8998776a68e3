//! Why an exchange with an upstream failed: what went wrong, with which
//! upstream, and the underlying cause (kept as an error, so its chain
//! reaches the log).

use std::sync::Arc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong with an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No connection could be made, or the one made stopped being
    /// acknowledged (the link is cut).
    Connect,
    /// No response head in time.
    Timeout,
    /// The exchange broke (a bad response, a connection closed under it).
    Protocol,
    /// A server error, stood in for by a stale copy.
    Status(u16),
    /// No upstream is available for the site (every shield down, and the
    /// site does not allow going to the origin directly).
    NoTarget,
    /// The client's request body failed while it was being forwarded: the
    /// client's fault, not the upstream's.
    ClientBody { too_large: bool },
}

impl UpstreamErrorKind {
    /// The word in `Cache-Status` `detail=`, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::Status(_) => "status",
            UpstreamErrorKind::NoTarget => "no-target",
            UpstreamErrorKind::ClientBody { .. } => "client-body",
        }
    }
}

/// An upstream exchange that failed.
#[derive(Debug, Clone)]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    /// Which upstream (its authority or name).
    pub upstream: Arc<str>,
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl UpstreamError {
    pub fn new(kind: UpstreamErrorKind, upstream: impl Into<Arc<str>>) -> UpstreamError {
        UpstreamError { kind, upstream: upstream.into(), cause: None }
    }

    /// The same, caused by `cause`.
    pub fn caused_by(mut self, cause: impl Into<BoxError>) -> UpstreamError {
        self.cause = Some(Arc::from(cause.into()));
        self
    }

    pub fn no_target() -> UpstreamError {
        UpstreamError::new(UpstreamErrorKind::NoTarget, "")
    }

    /// Failures before any response: a retry elsewhere may succeed (for
    /// idempotent requests). That includes a keep-alive connection the peer
    /// closed just as the request went out.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, UpstreamErrorKind::Connect | UpstreamErrorKind::Timeout | UpstreamErrorKind::Protocol)
    }

    pub fn as_str(&self) -> &'static str {
        self.kind.as_str()
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = &self.upstream;
        match self.kind {
            UpstreamErrorKind::Connect => write!(f, "cannot connect to {who}"),
            UpstreamErrorKind::Timeout => write!(f, "no response from {who} in time"),
            UpstreamErrorKind::Protocol => write!(f, "the exchange with {who} broke"),
            UpstreamErrorKind::Status(code) => write!(f, "{who} answered {code}"),
            UpstreamErrorKind::NoTarget => write!(f, "no upstream is available for this site"),
            UpstreamErrorKind::ClientBody { too_large: true } => write!(f, "the request body is too large"),
            UpstreamErrorKind::ClientBody { too_large: false } => write!(f, "the request body is malformed"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Marks an error of a client's request body, so a failed exchange can be
/// blamed on the right side.
#[derive(Debug, thiserror::Error)]
#[error("request body: {message}")]
pub struct ClientBodyError {
    pub message: String,
    pub too_large: bool,
}

/// `e` and its sources, outermost first.
fn causes<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |err| err.source())
}

/// The client-body error somewhere in `e`'s chain.
pub(crate) fn client_body_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientBodyError> {
    causes(e).find_map(|err| err.downcast_ref::<ClientBodyError>())
}

/// Whether the kernel ended the connection under `e` because the peer
/// stopped acknowledging what was sent (`ETIMEDOUT`: the link timeout, or
/// unanswered keepalive probes). The link is cut: as far as reaching the
/// upstream goes, that is a failed connect, not a broken exchange.
pub(crate) fn link_cut(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).any(|err| {
        let io = err.downcast_ref::<std::io::Error>().or_else(|| err.downcast_ref::<h2::Error>()?.get_io());
        io.is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

pub use outpost_net::error_chain as chain;

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// An error with a source, as hyper's and hyper-util's are.
    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] BoxError);

    #[test]
    fn only_an_unacknowledged_link_counts_as_cut() {
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "Connection timed out");
        assert!(link_cut(&timed_out()));
        assert!(link_cut(&Wrapped(Box::new(Wrapped(timed_out().into())))));
        for other in [io::ErrorKind::ConnectionReset, io::ErrorKind::UnexpectedEof, io::ErrorKind::BrokenPipe] {
            assert!(!link_cut(&Wrapped(io::Error::from(other).into())), "{other:?}");
        }
        assert!(!link_cut(&Wrapped("a bad response head".into())));
    }
}
