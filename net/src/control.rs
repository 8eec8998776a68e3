//! The one client of the control-plane API, used by the operator's CLI,
//! every node's subscriber and the DNS servers: typed calls over the wire
//! types of `outpost_config::api`, a token (given, or read from its file at
//! every call, so a replaced token is picked up), TLS for `https://`, a
//! timeout per call, and retries for reads that could not connect.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use outpost_config::api::{
    Deleted, ErrorBody, Health, NodeCredential, NodeStatus, PopRecord, PopWeight, PurgeRequest, PurgeStatus,
    SiteRecord, SiteSummary, Stored, StreamQuery, paths,
};
use outpost_config::{Ack, StreamLine};
use serde::de::DeserializeOwned;

/// How long one call may take, unless the caller says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to the control plane on a healthy network is quick.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts at a read whose connection failed, and the first pause between.
const READ_ATTEMPTS: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Where the bearer token comes from.
#[derive(Debug, Clone)]
pub enum Token {
    Value(String),
    /// Read at every call (trimmed), so a replaced token is used at once.
    File(PathBuf),
    /// Read from `file` as [`Token::File`] is, except while `held` has a
    /// replacement for the token the file holds: `(the file's token, the
    /// one used instead)`. A file whose token has changed since (set by
    /// hand; not merely emptied) is read again, and the replacement
    /// forgotten.
    Held {
        file: PathBuf,
        held: Arc<std::sync::Mutex<Option<(String, String)>>>,
    },
}

impl Token {
    /// The token now.
    pub fn read(&self) -> Result<String, ClientError> {
        match self {
            Token::Value(t) => Ok(t.trim().to_string()),
            Token::File(path) => read_token_file(path),
            Token::Held { file, held } => {
                let on_file = read_token_file(file)?;
                let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
                match held.as_ref() {
                    // An empty file is one being written: not a change yet.
                    Some((replaced, instead)) if *replaced == on_file || on_file.is_empty() => Ok(instead.clone()),
                    Some(_) => {
                        *held = None;
                        Ok(on_file)
                    }
                    None => Ok(on_file),
                }
            }
        }
    }
}

fn read_token_file(path: &std::path::Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|e| ClientError::Token(format!("`{}`: {e}", path.display())))
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the control plane at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("the control plane at {url} did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{error} ({status}): {detail}")]
    Api { status: u16, error: String, detail: String },
    #[error("unexpected answer from the control plane: {0}")]
    Decode(String),
    #[error("token {0}")]
    Token(String),
}

impl ClientError {
    /// The control plane refused the token.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ClientError::Api { status: 401, .. })
    }

    /// The control plane refuses the token: not valid, revoked, or not
    /// allowed to speak for this node (401, 403), or it cannot be read.
    pub fn refuses_token(&self) -> bool {
        matches!(self, ClientError::Api { status: 401 | 403, .. } | ClientError::Token(_))
    }

    /// Trying again (or another replica) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => true,
            ClientError::Api { status, .. } => *status >= 500,
            ClientError::Decode(_) | ClientError::Token(_) => false,
        }
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A client of the control plane: of one process, or of any of the
/// replicas that share a store. Calls go to the replica that answered
/// last; one that cannot be reached hands the call to the next.
#[derive(Debug, Clone)]
pub struct ControlClient {
    bases: Arc<[String]>,
    /// The replica calls go to first, shared by the client's clones.
    current: Arc<AtomicUsize>,
    token: Token,
    timeout: Duration,
    http: Client<Https, Full<Bytes>>,
}

impl ControlClient {
    /// A client of the control plane at `urls` (`http://` or `https://`,
    /// verified with `tls`): one URL, or one per replica. Each URL may
    /// itself be a comma-separated list, as operators type them.
    pub fn new<S: AsRef<str>>(urls: &[S], token: Token, tls: Arc<rustls::ClientConfig>) -> ControlClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let connector = Https::from((http, tls));
        let http = Client::builder(TokioExecutor::new()).build(connector);
        let bases: Vec<String> = urls
            .iter()
            .flat_map(|u| u.as_ref().split(','))
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        ControlClient {
            bases: bases.into(),
            current: Arc::new(AtomicUsize::new(0)),
            token,
            timeout: DEFAULT_TIMEOUT,
            http,
        }
    }

    /// How long each call may take (the event stream: until its head).
    /// Default: [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> ControlClient {
        self.timeout = timeout;
        self
    }

    /// The replica calls go to now.
    pub fn base(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.bases.len().max(1);
        self.bases.get(i).map_or("", String::as_str)
    }

    /// Calls go to the next replica from now on (this one is unfit, though
    /// it answers).
    pub fn prefer_next(&self) {
        if self.bases.len() > 1 {
            self.fail_over(self.current.load(Ordering::Relaxed) % self.bases.len());
        }
    }

    /// The next replica takes the calls (after `failed` could not answer).
    fn fail_over(&self, failed: usize) {
        let next = (failed + 1) % self.bases.len().max(1);
        let _ = self.current.compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    async fn send_once(
        &self,
        base: &str,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Result<Response<Incoming>, ClientError> {
        let url = format!("{base}{path}");
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(AUTHORIZATION, format!("Bearer {}", self.token.read()?));
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| ClientError::Unreachable { url: url.clone(), cause: e.to_string() })?;
        match tokio::time::timeout(self.timeout, self.http.request(req)).await {
            Err(_) => Err(ClientError::Timeout { url, secs: self.timeout.as_secs() }),
            Ok(Err(e)) => Err(ClientError::Unreachable { url, cause: crate::error_chain(&e) }),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// Sends a request to the current replica. One that cannot be reached
    /// passes it to the next, every replica in turn; a read is tried so
    /// around [`READ_ATTEMPTS`] times, with a growing, jittered pause
    /// between rounds. A read a replica answered with 5xx or not in time
    /// goes to the next replica too; a write that may have been received
    /// is not sent twice.
    async fn send(&self, method: Method, path: &str, body: &[u8]) -> Result<Response<Incoming>, ClientError> {
        let rounds = if method == Method::GET { READ_ATTEMPTS } else { 1 };
        let mut pause = RETRY_PAUSE;
        let mut last = None;
        for round in 0..rounds {
            if round > 0 {
                tokio::time::sleep(jittered(pause)).await;
                pause *= 2;
            }
            for _ in 0..self.bases.len() {
                let i = self.current.load(Ordering::Relaxed) % self.bases.len();
                let result = self.send_once(&self.bases[i], &method, path, body).await;
                let pass_on = match &result {
                    Err(ClientError::Unreachable { .. }) => true,
                    Err(ClientError::Timeout { .. }) => method == Method::GET,
                    Ok(resp) => method == Method::GET && resp.status().is_server_error(),
                    Err(_) => false,
                };
                if !pass_on {
                    return result;
                }
                self.fail_over(i);
                last = Some(result);
            }
        }
        last.unwrap_or(Err(ClientError::Decode("no control-plane URL".into())))
    }

    /// A call whose answer is JSON of type `T` (an error answer becomes
    /// [`ClientError::Api`]).
    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: &[u8]) -> Result<T, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = match tokio::time::timeout(self.timeout, resp.into_body().collect()).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    url: format!("{}{path}", self.base()),
                    secs: self.timeout.as_secs(),
                });
            }
            Ok(Err(e)) => return Err(ClientError::Decode(e.to_string())),
            Ok(Ok(b)) => b.to_bytes(),
        };
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(format!("{path}: {e}")))
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, paths::HEALTH, &[]).await
    }

    pub async fn sites(&self) -> Result<Vec<SiteSummary>, ClientError> {
        self.call(Method::GET, paths::SITES, &[]).await
    }

    pub async fn site(&self, id: &str) -> Result<SiteRecord, ClientError> {
        self.call(Method::GET, &paths::site(id), &[]).await
    }

    /// A site's kept versions, newest first.
    pub async fn site_versions(&self, id: &str) -> Result<Vec<SiteRecord>, ClientError> {
        self.call(Method::GET, &paths::site_versions(id), &[]).await
    }

    /// Uploads a site file's text (validated by the control plane).
    pub async fn push_site(&self, toml: &str) -> Result<Stored, ClientError> {
        self.call(Method::POST, paths::SITES, toml.as_bytes()).await
    }

    pub async fn delete_site(&self, id: &str) -> Result<Deleted, ClientError> {
        self.call(Method::DELETE, &paths::site(id), &[]).await
    }

    pub async fn purge(&self, req: &PurgeRequest) -> Result<PurgeStatus, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(Method::POST, paths::PURGE, &body).await
    }

    pub async fn purge_status(&self, id: &str) -> Result<PurgeStatus, ClientError> {
        self.call(Method::GET, &paths::purge(id), &[]).await
    }

    /// The node registry (admin or node token).
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, ClientError> {
        self.call(Method::GET, paths::NODES, &[]).await
    }

    /// The PoPs whose weight an operator set (admin or node token).
    pub async fn pops(&self) -> Result<Vec<PopRecord>, ClientError> {
        self.call(Method::GET, paths::POPS, &[]).await
    }

    /// Sets a PoP's weight; 0 drains it.
    pub async fn set_pop(&self, name: &str, weight: &PopWeight) -> Result<PopRecord, ClientError> {
        let body = serde_json::to_vec(weight).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(Method::PUT, &paths::pop(name), &body).await
    }

    /// Revokes every credential node `name` had and returns one of the
    /// next generation (admin token). With `hand_over`, the node's event streams are sent the new
    /// credential first ([`outpost_config::api::RotateQuery`]).
    pub async fn rotate_credential(&self, name: &str, hand_over: bool) -> Result<NodeCredential, ClientError> {
        let path = paths::node_credential(name);
        let path = if hand_over { format!("{path}?hand_over=true") } else { path };
        self.call(Method::POST, &path, &[]).await
    }

    /// Revokes every credential node `name` had (admin token).
    pub async fn revoke_credential(&self, name: &str) -> Result<NodeCredential, ClientError> {
        self.call(Method::DELETE, &paths::node_credential(name), &[]).await
    }

    /// Acknowledges the events a node applied (node token).
    pub async fn ack(&self, ack: &Ack) -> Result<(), ClientError> {
        let body = serde_json::to_vec(ack).map_err(|e| ClientError::Decode(e.to_string()))?;
        let resp = self.send(Method::POST, paths::ACK, &body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        if status.is_success() { Ok(()) } else { Err(api_error(status, &bytes)) }
    }

    /// Opens the event stream (node token).
    pub async fn events(&self, q: &StreamQuery) -> Result<EventStream, ClientError> {
        let resp = self.send(Method::GET, &q.path_and_query(), &[]).await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        Ok(EventStream { body: resp.into_body(), buf: BytesMut::new(), scanned: 0, broken: false })
    }
}

/// `pause`, give or take a quarter, so clients that failed together do not
/// come back together.
fn jittered(pause: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let quarter = pause / 4;
    pause - quarter + quarter * 2 * (nanos % 1000) / 1000
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let e: ErrorBody = serde_json::from_slice(body)
        .unwrap_or_else(|_| ErrorBody { error: "error".into(), detail: String::from_utf8_lossy(body).into_owned() });
    ClientError::Api { status: status.as_u16(), error: e.error, detail: e.detail }
}

/// The lines of an open event stream.
#[derive(Debug)]
pub struct EventStream {
    body: Incoming,
    buf: BytesMut,
    /// How much of `buf` is known to hold no line's end: a snapshot is one
    /// line of many megabytes, arriving in frames of a few kilobytes, and
    /// looking through all of it again for each frame would take time
    /// that grows with its square.
    scanned: usize,
    /// A line ran past [`MAX_LINE`]: the stream is over.
    broken: bool,
}

/// The longest line an event stream may send. A snapshot of the largest
/// fleets is tens of megabytes; past this, a control plane (or whoever
/// stands in the middle of an `http://` link) would hold the node's memory
/// for as long as it kept sending.
#[cfg(not(test))]
pub const MAX_LINE: usize = 256 << 20;
#[cfg(test)]
pub const MAX_LINE: usize = 1 << 20;

impl EventStream {
    /// Whether a whole line has arrived and not been taken yet: a reader
    /// applying a backlog acknowledges once, after the last.
    pub fn has_line(&self) -> bool {
        self.buf[self.scanned..].contains(&b'\n')
    }

    /// The next line; `None` when the stream ends. A line that does not
    /// read is an error item, and the stream goes on after it.
    pub async fn next(&mut self) -> Option<Result<StreamLine, ClientError>> {
        if self.broken {
            return None;
        }
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(self.scanned + i + 1);
                self.scanned = 0;
                let line = &line[..line.len() - 1];
                return Some(serde_json::from_slice(line).map_err(|e| ClientError::Decode(e.to_string())));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_LINE {
                self.broken = true;
                self.buf = BytesMut::new();
                let cause = format!("a line of more than {} MiB", MAX_LINE >> 20);
                return Some(Err(ClientError::Unreachable { url: "event stream".into(), cause }));
            }
            match self.body.frame().await? {
                Err(e) => {
                    return Some(Err(ClientError::Unreachable { url: "event stream".into(), cause: e.to_string() }));
                }
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that sends one endless line ends the stream once the line
    /// passes [`MAX_LINE`], rather than holding ever more of the node's
    /// memory; the lines before it are read.
    #[tokio::test]
    async fn an_endless_line_ends_the_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 4096];
            let _ = sock.read(&mut head).await.unwrap();
            let line = br#"{"type":"heartbeat","seq":3}"#;
            let start = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n", line.len() + 1);
            sock.write_all(start.as_bytes()).await.unwrap();
            sock.write_all(line).await.unwrap();
            sock.write_all(b"\n\r\n").await.unwrap();
            let piece = vec![b'x'; 64 << 10];
            // Until the reader hangs up, or far past the cap.
            for _ in 0..64 * MAX_LINE / piece.len() {
                let chunk = format!("{:x}\r\n", piece.len());
                let wrote = async {
                    sock.write_all(chunk.as_bytes()).await?;
                    sock.write_all(&piece).await?;
                    sock.write_all(b"\r\n").await
                };
                if wrote.await.is_err() {
                    break;
                }
            }
        });
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let client = ControlClient::new(&[format!("http://{addr}")], Token::Value("t".into()), Arc::new(tls));
        let query = StreamQuery {
            after: 0,
            node: "edge-1".into(),
            role: outpost_config::Role::Edge,
            pop: None,
            addrs: String::new(),
            certificates: false,
        };
        let mut stream = client.events(&query).await.unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert!(matches!(first, StreamLine::Heartbeat { seq: 3, .. }), "{first:?}");
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(err.is_retryable() && err.to_string().contains("a line of more than 1 MiB"), "{err}");
        assert!(stream.next().await.is_none(), "the stream is over");
        assert!(stream.buf.capacity() == 0, "the line is let go");
    }

    #[test]
    fn a_held_token_stands_in_for_the_files_until_the_file_changes() {
        let file = std::env::temp_dir().join(format!("outpost-held-token-{}", std::process::id()));
        std::fs::write(&file, "old\n").unwrap();
        let held = Arc::new(std::sync::Mutex::new(Some(("old".to_string(), "new".to_string()))));
        let token = Token::Held { file: file.clone(), held: Arc::clone(&held) };
        assert_eq!(token.read().unwrap(), "new");
        std::fs::write(&file, "").unwrap();
        assert_eq!(token.read().unwrap(), "new", "a file being written is not a change");
        std::fs::write(&file, "by-hand").unwrap();
        assert_eq!(token.read().unwrap(), "by-hand");
        assert!(held.lock().unwrap().is_none(), "let go once the file changed");
        std::fs::write(&file, "old").unwrap();
        assert_eq!(token.read().unwrap(), "old", "and not taken up again");
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(token.read(), Err(ClientError::Token(_))));
    }
}
