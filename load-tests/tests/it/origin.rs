use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use outpost_load::OriginServer;
use outpost_load::content;
use tokio_util::sync::CancellationToken;

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(dir: Option<std::path::PathBuf>) -> Running {
        let server = OriginServer::bind(&["127.0.0.1:0".parse().unwrap()], dir).await.unwrap();
        let addr = server.local_addrs()[0];
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone()));
        Running { addr, stop, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn stats(&self) -> serde_json::Value {
        let r = send(Method::GET, &self.url("/__origin/stats"), &[]).await.unwrap();
        serde_json::from_slice(&r.2).unwrap()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

type Resp = (StatusCode, HeaderMap, Bytes);

async fn send(method: Method, url: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Empty::new()).unwrap()).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| format!("body: {e:?}"))?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    send(Method::GET, url, headers).await.unwrap()
}

#[tokio::test]
async fn serves_deterministic_bytes_of_any_size() {
    let o = Running::start(None).await;
    for size in [0usize, 1, 1000, 65_537, 3 << 20] {
        let (status, headers, body) = get(&o.url(&format!("/obj/{size}?size={size}")), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-length"], size.to_string().as_str());
        assert_eq!(body.len(), size);
        let seed = content::seed(&format!("/obj/{size}"), 0, &[]);
        assert_eq!(content::first_mismatch(seed, 0, &body), None, "size {size}");
    }
    let (_, h, body) = get(&o.url("/default"), &[]).await;
    assert_eq!(body.len(), 1024);
    assert_eq!(h["accept-ranges"], "bytes");
    o.stop().await;
}

#[tokio::test]
async fn response_headers_follow_the_query() {
    let o = Running::start(None).await;
    let q = "/h?cc=public,%20max-age%3D60&cdn_cc=max-age%3D600&sc=max-age%3D30&keys=a+b&tags=x,y&vary=Accept-Language\
             &etag=v1&lm=1700000000&status=404&header=x-extra:%20yes&set_cookie=s%3D1";
    let (status, h, _) = get(&o.url(q), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(h["cache-control"], "public, max-age=60");
    assert_eq!(h["cdn-cache-control"], "max-age=600");
    assert_eq!(h["surrogate-control"], "max-age=30");
    assert_eq!(h["surrogate-key"], "a b");
    assert_eq!(h["cache-tag"], "x,y");
    assert_eq!(h["vary"], "Accept-Language");
    assert_eq!(h["etag"], "\"v1\"");
    assert_eq!(h["last-modified"], "Tue, 14 Nov 2023 22:13:20 GMT");
    assert_eq!(h["x-extra"], "yes");
    assert_eq!(h["set-cookie"], "s=1");
    let (status, _, body) = get(&o.url("/h?sise=1"), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("unknown parameter `sise`"));
    o.stop().await;
}

#[tokio::test]
async fn varied_objects_differ_per_header_value() {
    let o = Running::start(None).await;
    let url = o.url("/v?vary=accept-language");
    let (_, h_en, en) = get(&url, &[("accept-language", "en")]).await;
    let (_, h_de, de) = get(&url, &[("accept-language", "de")]).await;
    assert_ne!(en, de);
    assert_ne!(h_en["etag"], h_de["etag"]);
    assert_eq!(content::first_mismatch(content::seed("/v", 0, &["de"]), 0, &de), None);
}

#[tokio::test]
async fn conditional_requests_get_304() {
    let o = Running::start(None).await;
    let url = o.url("/c?cc=max-age%3D60");
    let (_, h, _) = get(&url, &[]).await;
    let etag = h["etag"].to_str().unwrap().to_string();
    let lm = h["last-modified"].to_str().unwrap().to_string();

    let (status, h304, body) = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(h304["etag"], etag.as_str());
    assert_eq!(h304["cache-control"], "max-age=60", "304 carries the caching headers");
    let weak = format!("\"other\", W/{etag}");
    assert_eq!(get(&url, &[("if-none-match", &weak)]).await.0, StatusCode::NOT_MODIFIED);
    assert_eq!(get(&url, &[("if-none-match", "\"nope\"")]).await.0, StatusCode::OK);
    assert_eq!(get(&url, &[("if-modified-since", &lm)]).await.0, StatusCode::NOT_MODIFIED);
    assert_eq!(get(&url, &[("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")]).await.0, StatusCode::OK);
    // If-None-Match wins over If-Modified-Since.
    assert_eq!(get(&url, &[("if-none-match", "\"nope\""), ("if-modified-since", &lm)]).await.0, StatusCode::OK);

    let s = o.stats().await;
    assert_eq!(s["conditional"], 6);
    assert_eq!(s["not_modified"], 3);
    // A new version changes the ETag, so the old one no longer matches.
    send(Method::POST, &o.url("/__origin/bump?path=/c"), &[]).await.unwrap();
    let (status, h2, body2) = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(h2["etag"], etag.as_str());
    assert_eq!(content::first_mismatch(content::seed("/c", 1, &[]), 0, &body2), None);
}

#[tokio::test]
async fn ranges_single_multiple_and_unsatisfiable() {
    let o = Running::start(None).await;
    let url = o.url("/r?size=1000");
    let seed = content::seed("/r", 0, &[]);
    let (status, h, body) = get(&url, &[("range", "bytes=100-199")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(h["content-range"], "bytes 100-199/1000");
    assert_eq!(body, content::bytes(seed, 100, 100));
    let (_, h, body) = get(&url, &[("range", "bytes=-10")]).await;
    assert_eq!(h["content-range"], "bytes 990-999/1000");
    assert_eq!(body, content::bytes(seed, 990, 10));

    let (status, h, body) = get(&url, &[("range", "bytes=0-9, 500-509")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    let ct = h["content-type"].to_str().unwrap();
    let boundary = ct.strip_prefix("multipart/byteranges; boundary=").unwrap();
    assert_eq!(h["content-length"], body.len().to_string().as_str());
    let text = body.to_vec();
    let needle = "Content-Range: bytes 500-509/1000\r\n\r\n".to_string();
    let at = text.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() + needle.len();
    assert_eq!(&text[at..at + 10], content::bytes(seed, 500, 10).as_slice());
    assert!(text.ends_with(format!("--{boundary}--\r\n").as_bytes()));

    let (status, h, _) = get(&url, &[("range", "bytes=5000-")]).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h["content-range"], "bytes */1000");
    // Garbage is ignored; a stale If-Range gives the whole object.
    assert_eq!(get(&url, &[("range", "lines=1-2")]).await.0, StatusCode::OK);
    let (status, _, body) = get(&url, &[("range", "bytes=0-9"), ("if-range", "\"old\"")]).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 1000));
}

#[tokio::test]
async fn injected_failures() {
    let o = Running::start(None).await;
    let (status, _, _) = get(&o.url("/f?fail=503"), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(send(Method::GET, &o.url("/f?fail=reset"), &[]).await.is_err(), "reset closes without a response");
    let started = Instant::now();
    assert!(send(Method::GET, &o.url("/f?fail=hang&hang=300ms"), &[]).await.is_err());
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(&o.url("/f?delay=200ms"), &[]).await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));
    // A body broken off midway is an error for the client, after some bytes.
    let broken = send(Method::GET, &o.url("/f?size=1MiB&abort_after=100000&chunk=10000"), &[]).await;
    let err = broken.unwrap_err();
    assert!(err.contains("body"), "the head arrives, the body breaks: {err}");

    // An outage covering a prefix, health check included, until turned off.
    send(Method::POST, &o.url("/__origin/fault?mode=502&prefix=/"), &[]).await.unwrap();
    assert_eq!(get(&o.url("/g"), &[]).await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(get(&o.url("/__origin/health"), &[]).await.0, StatusCode::BAD_GATEWAY);
    send(Method::POST, &o.url("/__origin/fault?mode=off"), &[]).await.unwrap();
    assert_eq!(get(&o.url("/g"), &[]).await.0, StatusCode::OK);
    assert_eq!(get(&o.url("/__origin/health"), &[]).await.0, StatusCode::OK);
    let bad = get(&o.url("/__origin/fault?mode=sometimes"), &[]).await;
    assert_eq!(bad.0, StatusCode::NOT_FOUND, "control endpoints are POST");
    let bad = send(Method::POST, &o.url("/__origin/fault?mode=sometimes"), &[]).await.unwrap();
    assert_eq!(bad.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn slow_chunks_arrive_as_they_are_sent() {
    let o = Running::start(None).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let started = Instant::now();
    let resp = client.get(o.url("/s?size=4000&chunk=1000&chunk_delay=150ms").parse().unwrap()).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first.len(), 1000);
    assert!(started.elapsed() < Duration::from_millis(450), "the first chunk does not wait for the rest");
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest.len(), 3000);
    assert!(started.elapsed() >= Duration::from_millis(450));
}

#[tokio::test]
async fn counts_requests_per_path_and_resets() {
    let o = Running::start(None).await;
    for _ in 0..3 {
        get(&o.url("/a?size=1"), &[]).await;
    }
    get(&o.url("/b"), &[]).await;
    get(&o.url("/__origin/health"), &[]).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let post = Request::post(o.url("/a")).body(Full::new(Bytes::from_static(b"form=1"))).unwrap();
    assert_eq!(client.request(post).await.unwrap().status(), StatusCode::OK);
    let s = o.stats().await;
    assert_eq!(s["total"], 5);
    assert_eq!(s["paths"]["/a"], 4);
    assert_eq!(s["paths"]["/b"], 1);
    assert_eq!(s["methods"]["POST"], 1);
    assert_eq!(s["health"], 1);
    let last = get(&o.url("/__origin/request?path=/b"), &[]).await;
    let headers: serde_json::Value = serde_json::from_slice(&last.2).unwrap();
    assert_eq!(headers["host"], o.addr.to_string());
    send(Method::POST, &o.url("/__origin/reset"), &[]).await.unwrap();
    let s = o.stats().await;
    assert_eq!(s["total"], 0);
    assert_eq!(s["paths"], serde_json::json!({}));
}

#[tokio::test]
async fn speaks_http2_with_prior_knowledge() {
    let o = Running::start(None).await;
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Empty<Bytes>>();
    let resp = client.get(o.url("/h2?size=100000").parse().unwrap()).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(content::first_mismatch(content::seed("/h2", 0, &[]), 0, &body), None);
    assert_eq!(body.len(), 100_000);
}

#[tokio::test]
async fn serves_a_directory_without_leaving_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("css")).unwrap();
    std::fs::write(dir.path().join("css/site.css"), "body { color: red }").unwrap();
    std::fs::write(dir.path().join("secret"), "no").unwrap();
    let served = dir.path().join("css");
    let o = Running::start(Some(dir.path().to_path_buf())).await;
    let (status, h, body) = get(&o.url("/files/css/site.css"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["content-type"], "text/css");
    assert_eq!(&body[..], b"body { color: red }");
    let (status, _, body) = get(&o.url("/files/css/site.css"), &[("range", "bytes=0-3")]).await;
    assert_eq!((status, &body[..]), (StatusCode::PARTIAL_CONTENT, &b"body"[..]));
    let etag = h["etag"].to_str().unwrap();
    assert_eq!(get(&o.url("/files/css/site.css"), &[("if-none-match", etag)]).await.0, StatusCode::NOT_MODIFIED);
    assert_eq!(get(&o.url("/files/nope.css"), &[]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&o.url("/files/css/%2E%2E/secret"), &[]).await.0, StatusCode::FORBIDDEN);
    drop(served);
}
