//! Cache behaviour as a client and the origin see it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use outpost_config::PurgeTarget;

use crate::harness::*;

async fn setup(extra: &str) -> (tempfile::TempDir, Origin, Edge) {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, extra)).await;
    (dir, origin, edge)
}

#[tokio::test]
async fn hit_after_miss() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let first = edge.get("/a?size=5000&cc=max-age%3D60").await;
    assert_eq!(first.status, StatusCode::OK);
    let cs = first.cache_status();
    assert!(cs.starts_with("edge-test; fwd=uri-miss; fwd-status=200; stored; ttl=60"), "{cs}");
    assert_origin_bytes("/a", &first.body);
    let second = edge.get("/a?size=5000&cc=max-age%3D60").await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!(second.body, first.body);
    assert_eq!(second.headers["content-length"], "5000");
    assert!(second.headers.contains_key("age"));
    assert_eq!(origin.count("/a").await, 1);
    // HEAD is answered from the GET entry.
    let head = send(Method::HEAD, &edge.url("/a?size=5000&cc=max-age%3D60"), &[("host", "t.test")]).await;
    assert!(head.is_hit() && head.body.is_empty());
    assert_eq!(head.headers["content-length"], "5000");
    assert_eq!(origin.count("/a").await, 1);
}

#[tokio::test]
async fn no_store_and_private_are_never_stored() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    for (path, q, detail) in [("/ns", "cc=no-store", "no-store"), ("/pr", "cc=private,%20max-age%3D60", "private")] {
        for _ in 0..2 {
            let r = edge.get(&format!("{path}?{q}")).await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.cache_status().contains(&format!("detail={detail}")), "{}", r.cache_status());
            assert!(!r.cache_status().contains("stored"));
        }
        assert_eq!(origin.count(path).await, 2, "{path}");
    }
    // A cookie-setting response is personal: not stored either.
    edge.get("/ck?set_cookie=s%3D1&cc=max-age%3D60").await;
    let r = edge.get("/ck?set_cookie=s%3D1&cc=max-age%3D60").await;
    assert!(r.cache_status().contains("detail=set-cookie"));
    assert_eq!(origin.count("/ck").await, 2);
}

#[tokio::test]
async fn a_request_that_says_no_store_stores_nothing() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let url = "/rns?cc=max-age%3D60";
    let r = edge.get_with(url, &[("cache-control", "no-store")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.cache_status().contains("detail=request-no-store"), "{}", r.cache_status());
    assert!(!r.cache_status().contains("stored"), "{}", r.cache_status());
    let next = edge.get(url).await;
    assert!(next.cache_status().contains("fwd=uri-miss"), "nothing was stored: {}", next.cache_status());
    assert_eq!(origin.count("/rns").await, 2);
    // What is already stored may answer it (RFC 9111 §5.2.1.5).
    let hit = edge.get_with(url, &[("cache-control", "no-store")]).await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
}

/// A request's `no-store` keeps its own answer out of the store; it does
/// not take away a stale copy others would be served when the origin
/// fails, whether the origin answers it in full or with a 304.
#[tokio::test]
async fn a_request_that_says_no_store_leaves_the_stale_copy_for_others() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    // Without validators the origin answers in full; with them, 304.
    for (path, validators) in [("/kept", "&etag=none&lm=none"), ("/kept304", "")] {
        let url = format!("{path}?cc=max-age%3D10,%20stale-if-error%3D300{validators}");
        let good = edge.get(&url).await;
        edge.engine.clock.advance(Duration::from_secs(20));
        let r = edge.get_with(&url, &[("cache-control", "no-store")]).await;
        assert_eq!(r.status, StatusCode::OK);
        let conditional = origin.last_request(path).await.get("if-none-match").is_some();
        assert_eq!(conditional, validators.is_empty(), "{path}");
        origin.control("fault?mode=503").await;
        let r = edge.get(&url).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: the stale copy was dropped: {}", r.cache_status());
        assert!(r.cache_status().contains("detail=stale-if-error"), "{path}: {}", r.cache_status());
        assert_eq!(r.body, good.body);
        origin.control("fault?mode=off").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_kept_out_of_the_cache_reach_only_the_client_that_fetched() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    // `no-cache="set-cookie"`: store the object, not its cookie.
    let url = "/sc?set_cookie=sid%3D42&cc=max-age%3D60,%20no-cache%3D%22set-cookie%22&delay=300ms";
    let mut with_cookie = 0;
    for r in at_once(&edge.url(url), 5).await {
        assert_eq!(r.status, StatusCode::OK);
        with_cookie += usize::from(r.headers.get("set-cookie").is_some_and(|c| c == "sid=42"));
    }
    assert_eq!(origin.count("/sc").await, 1, "one fetch for all five");
    assert_eq!(with_cookie, 1, "the request that made the fetch gets its cookie, the others do not");
    let hit = edge.get(url).await;
    assert!(hit.is_hit() && hit.headers.get("set-cookie").is_none(), "{}", hit.cache_status());
}

/// An error page that sets a cookie (a session begun before the failure)
/// is not handed to the requests waiting on the same fetch, even when it
/// also says `no-store`: each gets an answer fetched for itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_page_that_sets_a_cookie_is_not_shared_with_waiting_requests() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let url = "/err?status=500&cc=no-store,%20no-cache&set_cookie=sid%3D42&delay=300ms";
    let mut with_cookie = 0;
    for r in at_once(&edge.url(url), 5).await {
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        with_cookie += usize::from(r.headers.get("set-cookie").is_some());
    }
    assert_eq!(origin.count("/err").await, with_cookie as u64, "each cookie from a fetch made for its request");
}

/// An origin whose 304 sets a cookie (a session renewed on every answer):
/// the revalidated copy goes to every request that waited on it, the
/// cookie only to the request that asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_set_on_a_304_reaches_only_the_request_that_revalidated() {
    let (upstream, asked) = revalidating_origin(
        "HTTP/1.1 200 OK\r\netag: \"v1\"\r\ncache-control: no-cache\r\ncontent-length: 5\r\n\r\nhello".into(),
        |n| {
            format!(
                "HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncache-control: no-cache\r\nset-cookie: sid=user{n}\r\n"
            )
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &site_toml(upstream, DEFAULT_RULES)).await;
    assert_eq!(edge.get("/renewed").await.body, &b"hello"[..]);
    let cookies = each_own(at_once(&edge.url("/renewed"), 5).await, "set-cookie", b"hello");
    let revalidations = asked.load(Ordering::SeqCst);
    assert!(revalidations < 5, "the requests waited on one revalidation ({revalidations})");
    assert_eq!(cookies.len(), revalidations, "each revalidation's cookie to its own request: {cookies:?}");
}

/// A 304 that makes the copy `private` is that user's answer: requests
/// waiting on the revalidation do not get it (or its fields), but ask for
/// themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_that_makes_the_copy_private_reaches_only_the_request_that_revalidated() {
    let (upstream, asked) = revalidating_origin(
        "HTTP/1.1 200 OK\r\netag: \"v1\"\r\ncache-control: no-cache\r\ncontent-length: 5\r\n\r\nhello".into(),
        |n| format!("HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncache-control: private\r\nx-user: user{n}\r\n"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &site_toml(upstream, DEFAULT_RULES)).await;
    assert_eq!(edge.get("/mine").await.body, &b"hello"[..]);
    let users = each_own(at_once(&edge.url("/mine"), 5).await, "x-user", b"hello");
    assert_eq!(users.len(), asked.load(Ordering::SeqCst), "a user's 304 went to another request: {users:?}");
}

/// A 304 that makes a large copy `no-store` ends the copy, but the answer
/// it validated is still read whole from the copy's body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_that_ends_a_large_copy_still_answers_with_all_of_it() {
    const LEN: usize = 2 << 20;
    let head = format!("HTTP/1.1 200 OK\r\netag: W/\"v1\"\r\ncache-control: no-cache\r\ncontent-length: {LEN}\r\n\r\n");
    let (upstream, asked) = revalidating_origin(head + &"x".repeat(LEN), |_| {
        "HTTP/1.1 304 Not Modified\r\netag: W/\"v1\"\r\ncache-control: no-store\r\n".to_string()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &site_toml(upstream, DEFAULT_RULES)).await;
    assert_eq!(edge.get("/large").await.body.len(), LEN);
    let r = edge.get("/large").await;
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, LEN), "{}", r.cache_status());
    assert!(r.body.iter().all(|&b| b == b'x'));
    assert!(!edge.get("/large").await.cache_status().contains("; hit"), "the copy no longer stored");
}

/// An origin that answers `first` to an unconditional request and, after
/// 300 ms, `revalidated(n)` (a head; the n-th such) to a conditional one,
/// each on a connection of its own; also how many conditional ones came.
async fn revalidating_origin(
    first: String,
    revalidated: impl Fn(usize) -> String + Send + Sync + 'static,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let (seen, first, revalidated) = (Arc::clone(&asked), Arc::new(first), Arc::new(revalidated));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (seen, first, revalidated) = (Arc::clone(&seen), Arc::clone(&first), Arc::clone(&revalidated));
            tokio::spawn(async move {
                let Some(head) = read_head(&mut s).await else { return };
                let conditional = String::from_utf8_lossy(&head).to_ascii_lowercase().contains("if-none-match");
                let answer = if conditional {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    revalidated(n) + "connection: close\r\n\r\n"
                } else {
                    first.replacen("\r\n", "\r\nconnection: close\r\n", 1)
                };
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (upstream, asked)
}

/// The values of `field` across `answers`, each `body` whole: no value
/// went to two of them.
fn each_own(answers: Vec<Resp>, field: &str, body: &[u8]) -> Vec<String> {
    let mut values = Vec::new();
    for r in answers {
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, body));
        values.extend(r.headers.get_all(field).iter().map(|v| v.to_str().unwrap().to_string()));
    }
    let mut distinct = values.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), values.len(), "a {field} went to more than one request: {values:?}");
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_variants_are_kept_apart() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let url = "/v?vary=Accept-Language&cc=max-age%3D60";
    let en = edge.get_with(url, &[("accept-language", "en")]).await;
    let de = edge.get_with(url, &[("accept-language", "de")]).await;
    assert!(de.cache_status().contains("fwd=vary-miss"), "{}", de.cache_status());
    let en2 = edge.get_with(url, &[("accept-language", "en")]).await;
    let de2 = edge.get_with(url, &[("accept-language", "de")]).await;
    assert!(en2.is_hit() && de2.is_hit());
    assert_ne!(en.body, de.body);
    assert_eq!(en.body, en2.body);
    assert_eq!(de.body, de2.body);
    let seed = outpost_load::content::seed("/v", 0, &["de"]);
    assert_eq!(outpost_load::content::first_mismatch(seed, 0, &de2.body), None);
    assert_eq!(origin.count("/v").await, 2);
    // Equivalent spellings of Accept-Language share a variant: case,
    // spacing and where the weights put a language do not count.
    assert!(edge.get_with(url, &[("accept-language", " EN ")]).await.is_hit());
    let mixed = edge.get_with(url, &[("accept-language", "en-GB, de;q=0.5, fr")]).await;
    assert!(!mixed.is_hit());
    for spelling in ["EN-gb , fr, de;q=0.50", "en-gb,de;q=0.5,fr"] {
        let r = edge.get_with(url, &[("accept-language", spelling)]).await;
        assert!(r.is_hit(), "{spelling}: {}", r.cache_status());
        assert_eq!(r.body, mixed.body);
    }
    assert!(!edge.get_with(url, &[("accept-language", "en-GB;q=0.5, de, fr")]).await.is_hit(), "other preferences");
    // Equal weights in another order, which an origin may take as a
    // preference, and a list that bends the grammar (an origin may read
    // `de;q=0;q=1` as refusing German): each its own variant, never the
    // copy of the list it resembles.
    assert!(!edge.get_with(url, &[("accept-language", "fr, en-GB, de;q=0.5")]).await.is_hit());
    let bent = edge.get_with(url, &[("accept-language", "de;q=0;q=1")]).await;
    assert!(!bent.is_hit(), "{}", bent.cache_status());
    assert!(edge.get_with(url, &[("accept-language", "de")]).await.is_hit(), "de's own copy is kept");
    assert_eq!(origin.count("/v").await, 6);
}

/// A field the client names in `Connection` is for that hop alone: it is
/// gone before the request is keyed, not only before it goes upstream. A
/// client that names its keyed `Accept-Language` gets the answer for a
/// request without one, stored as such, and never plants it in the
/// variant of those who send the field.
#[tokio::test]
async fn a_keyed_field_named_in_connection_is_dropped_before_the_key_is_made() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let url = "/nominated?vary=Accept-Language&cc=max-age%3D60";
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(
        format!(
            "GET {url} HTTP/1.1\r\nHost: t.test\r\nAccept-Language: de\r\nConnection: close, Accept-Language\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut planted = Vec::new();
    s.read_to_end(&mut planted).await.unwrap();
    assert!(planted.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&planted[..planted.len().min(200)]));
    assert_eq!(origin.last_request("/nominated").await.get("accept-language"), None, "not sent upstream");
    let de = edge.get_with(url, &[("accept-language", "de")]).await;
    assert!(!de.is_hit(), "the German variant was planted: {}", de.cache_status());
    let seed = outpost_load::content::seed("/nominated", 0, &["de"]);
    assert_eq!(outpost_load::content::first_mismatch(seed, 0, &de.body), None, "the German answer");
    assert!(edge.get(url).await.is_hit(), "the answer without the field, stored as such");
    assert_eq!(origin.count("/nominated").await, 2);
    // A client that calls its own Host hop-by-hop has no host: refused, and
    // the node goes on.
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(format!("GET {url} HTTP/1.1\r\nHost: t.test\r\nConnection: close, host\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut refused = Vec::new();
    s.read_to_end(&mut refused).await.unwrap();
    assert!(refused.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&refused[..refused.len().min(200)]));
    assert!(edge.get(url).await.is_hit());
}

#[tokio::test]
async fn stale_objects_are_revalidated_with_304() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let url = "/r?size=20000&cc=max-age%3D10";
    let first = edge.get(url).await;
    edge.engine.clock.advance(Duration::from_secs(11));
    let second = edge.get(url).await;
    let cs = second.cache_status();
    assert!(cs.contains("fwd=stale; fwd-status=304; stored; ttl=10"), "{cs}");
    assert_eq!(second.body, first.body, "the stored body is served");
    let stats = origin.stats().await;
    assert_eq!(stats["paths"]["/r"], 2);
    assert_eq!(stats["conditional"], 1);
    assert_eq!(stats["not_modified"], 1, "the origin did not resend the body");
    assert!(edge.get(url).await.is_hit(), "fresh again after the 304");
    assert_eq!(origin.count("/r").await, 2);
    // no-cache: stored, but every use is revalidated.
    edge.get("/nc?cc=no-cache").await;
    let r = edge.get("/nc?cc=no-cache").await;
    assert!(r.cache_status().contains("fwd-status=304"), "{}", r.cache_status());
    assert_eq!(origin.stats().await["not_modified"], 2);
}

/// An origin that answers its n-th connection's one request with
/// `answers[n]` (the last one again past the end) and closes; it keeps each
/// request head.
async fn scripted_origin(answers: Vec<&'static str>) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let n = {
                let mut kept = kept.lock().unwrap();
                kept.push(String::from_utf8_lossy(&got).into_owned());
                kept.len() - 1
            };
            let answer = answers[n.min(answers.len() - 1)];
            let _ = s.write_all(answer.replace('\n', "\r\n").as_bytes()).await;
        }
    });
    (addr, heads)
}

/// An upstream whose range answers lie about where they are: each gives
/// the fifth megabyte of an 8 MiB object, whatever was asked. The first,
/// asked for that megabyte, stores the object as 8 MiB. A hit that needs
/// another part asks for it, gets the same fifth megabyte, and breaks off;
/// the copy that can never be finished is dropped then, so the next
/// request is not a hit that breaks off the same way.
#[tokio::test]
async fn a_copy_whose_upstream_answers_another_range_than_asked_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (mib, total) = (1u64 << 20, 8u64 << 20);
    let lie: &'static str = Box::leak(
        format!(
            "HTTP/1.1 206 Partial Content\ncache-control: max-age=600\netag: \"v1\"\n\
             content-range: bytes {}-{}/{total}\ncontent-length: {mib}\nconnection: close\n\n{}",
            4 * mib,
            5 * mib - 1,
            "x".repeat(mib as usize)
        )
        .into_boxed_str(),
    );
    let (addr, heads) = scripted_origin(vec![lie]).await;
    let edge = Edge::start(dir.path(), &site_toml(addr, DEFAULT_RULES)).await;
    let r = edge.get_with("/seek", &[("range", "bytes=5000000-5000999")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", r.cache_status());
    assert_eq!(r.headers["content-range"], format!("bytes 5000000-5000999/{total}"));
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    // The whole object: a hit on the partial copy, whose first chunk is
    // asked for and never comes.
    let url = edge.url("/seek");
    assert!(try_send(Method::GET, &url, &[("host", "t.test")]).await.is_err(), "the hit broke off");
    assert!(
        heads.lock().unwrap()[1].to_ascii_lowercase().contains("range: bytes=0-"),
        "{:?}",
        heads.lock().unwrap()[1]
    );
    // Asked for whole (no range: a miss), and its answer passed on.
    let again = try_send(Method::GET, &url, &[("host", "t.test")]).await.expect("not a hit that breaks off again");
    assert!(!again.is_hit(), "{}", again.cache_status());
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 3);
    assert!(!heads[2].to_ascii_lowercase().contains("range:"), "asked for whole: {}", heads[2]);
}

/// A 304 whose `ETag` is not the stored copy's vouches for another copy
/// (RFC 9111 §4.3.4): the stored one is not refreshed under the other's
/// validator, and the object is asked for whole.
#[tokio::test]
async fn a_304_for_another_copy_is_not_taken_for_the_stored_one() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, heads) = scripted_origin(vec![
        "HTTP/1.1 200 OK\ncache-control: max-age=1\netag: \"v1\"\ncontent-length: 8\nconnection: close\n\nold-body",
        "HTTP/1.1 304 Not Modified\ncache-control: max-age=60\netag: \"v2\"\nconnection: close\n\n",
        "HTTP/1.1 200 OK\ncache-control: max-age=60\netag: \"v2\"\ncontent-length: 8\nconnection: close\n\nnew-body",
    ])
    .await;
    let edge = Edge::start(dir.path(), &site_toml(addr, DEFAULT_RULES)).await;
    assert_eq!(&edge.get("/x").await.body[..], b"old-body");
    edge.engine.clock.advance(Duration::from_secs(5));
    let r = edge.get("/x").await;
    assert_eq!(&r.body[..], b"new-body", "{}", r.cache_status());
    assert_eq!(r.headers["etag"], "\"v2\"");
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert!(heads[1].to_ascii_lowercase().contains("if-none-match: \"v1\""), "{}", heads[1]);
    assert!(!heads[2].to_ascii_lowercase().contains("if-none-match"), "asked for whole: {}", heads[2]);
    let hit = edge.get("/x").await;
    assert!(hit.is_hit() && &hit.body[..] == b"new-body", "{}", hit.cache_status());
}

/// An answer that speaks only of the origin's load (429) or of the request
/// leaves the stale copy: it stands in when the origin then fails.
#[tokio::test]
async fn a_busy_origins_answer_leaves_the_stale_copy_for_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, heads) = scripted_origin(vec![
        "HTTP/1.1 200 OK\ncache-control: max-age=1, stale-if-error=3600\netag: \"v1\"\ncontent-length: 8\nconnection: close\n\nold-body",
        "HTTP/1.1 429 Too Many Requests\nretry-after: 1\ncontent-length: 4\nconnection: close\n\nbusy",
        "HTTP/1.1 503 Service Unavailable\ncontent-length: 4\nconnection: close\n\ndown",
    ])
    .await;
    let edge = Edge::start(dir.path(), &site_toml(addr, DEFAULT_RULES)).await;
    assert_eq!(&edge.get("/x").await.body[..], b"old-body");
    edge.engine.clock.advance(Duration::from_secs(5));
    assert_eq!(edge.get("/x").await.status, StatusCode::TOO_MANY_REQUESTS);
    let r = edge.get("/x").await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"old-body"[..]), "{}", r.cache_status());
    let heads = heads.lock().unwrap().clone();
    assert!(heads[2].to_ascii_lowercase().contains("if-none-match: \"v1\""), "still validated: {}", heads[2]);
}

/// A response framed in a way no request asked for is a bad gateway, never
/// a body: gzip under the chunks (taken off, the gzip would be stored as
/// the object itself), or a length beside the chunks.
#[tokio::test]
async fn upstream_framing_no_request_asked_for_is_refused_not_stored() {
    for answer in [
        "HTTP/1.1 200 OK\ncache-control: max-age=60\ntransfer-encoding: gzip, chunked\nconnection: close\n\n5\nhello\n0\n\n",
        "HTTP/1.1 200 OK\ncache-control: max-age=60\ntransfer-encoding: chunked\ncontent-length: 3\nconnection: close\n\n5\nhello\n0\n\n",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (addr, heads) = scripted_origin(vec![answer]).await;
        let edge = Edge::start(dir.path(), &site_toml(addr, DEFAULT_RULES)).await;
        let mut asked = 0;
        for _ in 0..2 {
            let r = edge.get("/framed").await;
            assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{answer:?}: {}", r.cache_status());
            let now = heads.lock().unwrap().len();
            assert!(now > asked, "nothing stored, the origin asked again: {answer:?}");
            asked = now;
        }
    }
}

#[tokio::test]
async fn a_changed_object_replaces_the_stale_copy() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let url = "/chg?cc=max-age%3D5";
    edge.get(url).await;
    origin.control("bump?path=/chg").await;
    edge.engine.clock.advance(Duration::from_secs(6));
    let r = edge.get(url).await;
    assert!(r.cache_status().contains("fwd=stale; fwd-status=200; stored"), "{}", r.cache_status());
    let seed = outpost_load::content::seed("/chg", 1, &[]);
    assert_eq!(outpost_load::content::first_mismatch(seed, 0, &r.body), None, "the new version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_fetches_once() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    // The origin takes three seconds: the five stale hits all come while
    // the revalidation is in flight, however slow this machine is.
    let url = "/swr?cc=max-age%3D10,%20stale-while-revalidate%3D60&delay=3s";
    edge.get(url).await;
    edge.engine.clock.advance(Duration::from_secs(15));
    let mut waits = Vec::new();
    for _ in 0..5 {
        let r = edge.get(url).await;
        // Five seconds past its freshness (more as the slow revalidation
        // takes its time), served stale.
        let cs = r.cache_status();
        assert!(["-5", "-6", "-7", "-8"].iter().any(|t| cs.contains(&format!("hit; ttl={t}; "))), "{cs}");
        assert!(cs.ends_with("detail=stale-while-revalidate"), "{cs}");
        waits.push(r);
    }
    // The origin answers the revalidation before the edge stores its result:
    // wait for the edge to serve the refreshed object (stale hits meanwhile
    // join the one revalidation in flight).
    outpost_testkit::eventually_within("the revalidated object", Duration::from_secs(15), || async {
        let status = edge.get(url).await.cache_status();
        status.starts_with("edge-test; hit; ttl=") && !status.contains("stale")
    })
    .await;
    assert_eq!(origin.stats().await["not_modified"], 1);
    assert_eq!(origin.count("/swr").await, 2, "five stale hits, one revalidation");

    // A failing origin: the first background revalidation fails and the key
    // is held, so further stale hits do not try again for a while.
    let url = "/swr?cc=max-age%3D10,%20stale-while-revalidate%3D60,%20stale-if-error%3D300";
    edge.get(url).await;
    edge.engine.clock.advance(Duration::from_secs(15));
    origin.control("fault?mode=503").await;
    let before = origin.count("/swr").await;
    edge.get(url).await;
    eventually("the failed revalidation", || async { origin.count("/swr").await > before }).await;
    for _ in 0..20 {
        let r = edge.get(url).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.cache_status());
        assert!(r.cache_status().contains("detail=stale-while-revalidate"), "{}", r.cache_status());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(origin.count("/swr").await - before <= 2, "{} tries", origin.count("/swr").await - before);
}

/// A request with its own `no-store` is answered stale while the copy may
/// be revalidated, but does not start the revalidation: it
/// would not store what it fetched, and would hold the key's one
/// revalidation from others.
#[tokio::test]
async fn a_request_that_may_not_store_starts_no_background_revalidation() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let url = "/swr-own?cc=max-age%3D10,%20stale-while-revalidate%3D60";
    edge.get(url).await;
    edge.engine.clock.advance(Duration::from_secs(15));
    for _ in 0..3 {
        let r = edge.get_with(url, &[("cache-control", "no-store")]).await;
        assert!(r.cache_status().contains("detail=stale-while-revalidate"), "{}", r.cache_status());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.count("/swr-own").await, 1, "revalidated for a request that may not store");
    edge.get(url).await;
    eventually("the revalidation", || async { origin.count("/swr-own").await == 2 }).await;
}

#[tokio::test]
async fn stale_if_error_covers_origin_failures() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let url = "/sie?cc=max-age%3D10,%20stale-if-error%3D300";
    let good = edge.get(url).await;
    edge.engine.clock.advance(Duration::from_secs(20));
    for mode in ["503", "reset"] {
        origin.control(&format!("fault?mode={mode}")).await;
        let before = origin.count("/sie").await;
        for _ in 0..20 {
            let r = edge.get(url).await;
            assert_eq!(r.status, StatusCode::OK, "{mode}");
            assert_eq!(r.body, good.body);
            assert!(r.cache_status().contains("detail=stale-if-error"), "{mode}: {}", r.cache_status());
        }
        // One attempt (and its retry), then the key is held: no storm
        // against a failing origin.
        assert!(origin.count("/sie").await - before <= 2, "{mode}: {}", origin.count("/sie").await - before);
        // The hold (1 s, then longer) runs on the engine's clock.
        edge.engine.clock.advance(Duration::from_secs(10));
    }
    origin.control("fault?mode=off").await;
    let r = edge.get(url).await;
    assert!(r.cache_status().contains("fwd=stale; fwd-status=304"), "{}", r.cache_status());
    // Past the stale-if-error window the error reaches the client.
    edge.engine.clock.advance(Duration::from_secs(400));
    origin.control("fault?mode=503").await;
    assert_eq!(edge.get(url).await.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale() {
    let (_d, origin, edge) = setup(&DEFAULT_RULES.replace("if_error = \"0s\"", "if_error = \"1h\"")).await;
    let url = "/mr?cc=max-age%3D10,%20must-revalidate,%20stale-if-error%3D300";
    edge.get(url).await;
    edge.engine.clock.advance(Duration::from_secs(11));
    origin.control("fault?mode=503").await;
    let r = edge.get(url).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!r.cache_status().contains("stale-if-error"), "{}", r.cache_status());
    origin.control("fault?mode=reset").await;
    assert_eq!(edge.get(url).await.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_cold_requests_cost_one_origin_request() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    // The origin waits a second, so every request has joined the fetch by
    // the time it answers, even on a loaded machine.
    let url = edge.url("/herd?size=300000&delay=1s&cc=max-age%3D60");
    let mut bodies = Vec::new();
    let mut collapsed = 0;
    for r in at_once(&url, 100).await {
        assert_eq!(r.status, StatusCode::OK);
        collapsed += usize::from(r.cache_status().contains("collapsed"));
        bodies.push(r.body);
    }
    assert_eq!(origin.count("/herd").await, 1);
    assert!(bodies.iter().all(|b| *b == bodies[0]), "all 100 bodies are byte-identical");
    assert_origin_bytes("/herd", &bodies[0]);
    assert_eq!(collapsed, 99, "one leader, 99 collapsed waiters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_fetch_does_not_break_the_others() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let path = "/slow?size=200000&chunk=20000&chunk_delay=30ms&cc=max-age%3D60";
    // The leader reads its head and a little body, then goes away.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::get(edge.url(path)).header("host", "t.test").body(http_body_util::Empty::new()).unwrap();
    let resp = client.request(req).await.unwrap();
    let mut body = resp.into_body();
    let _ = http_body_util::BodyExt::frame(&mut body).await;
    let follower = tokio::spawn({
        let url = edge.url(path);
        async move { send(Method::GET, &url, &[("host", "t.test")]).await }
    });
    drop(body);
    drop(client);
    let r = follower.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 200_000);
    assert_origin_bytes("/slow", &r.body);
    assert_eq!(origin.count("/slow").await, 1);
    assert!(edge.get(path).await.is_hit(), "the fetch completed and was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_slows_nobody_and_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    // Long enough that the others finish while the stalled client is still
    // connected: what keeps them fast is its detachment, not its timeout.
    let send_timeout = Duration::from_secs(10);
    let limits = format!("[limits]\nsend_timeout = \"{}s\"\n", send_timeout.as_secs());
    let edge = Edge::start_with(
        dir.path(),
        &site_toml(origin.addr, DEFAULT_RULES),
        "memory = \"32MiB\"\ndisk = \"256MiB\"",
        &limits,
    )
    .await;
    let path = "/stall?size=50MiB&cc=max-age%3D600";
    // The first client asks for the object and never reads a byte.
    let addr = edge.addr;
    let request = format!("GET {path} HTTP/1.1\r\nHost: t.test\r\n\r\n");
    // By the time it reads, the edge has given up on it: what arrives is
    // what the socket buffers held, then the end. The send timeout runs from
    // when the socket filled, which a loaded machine may reach seconds after
    // the request: the stall leaves room for that.
    let stall = send_timeout + Duration::from_secs(6);
    let stalled = tokio::task::spawn_blocking(move || {
        outpost_load::raw::read_after_stall(addr, request.as_bytes(), stall).unwrap()
    });
    eventually("the fill to start", || async { origin.count("/stall").await == 1 }).await;
    // Others reading the same object, at once and a moment later, get it
    // at the fill's pace: well before the edge would have cut the stalled
    // reader off, so nothing waited for it.
    let bound = send_timeout * 7 / 10;
    let started = std::time::Instant::now();
    let r = edge.get(path).await;
    let first = started.elapsed();
    assert_eq!(r.body.len(), 50 << 20);
    assert_origin_bytes("/stall", &r.body);
    // One fetch served both, the stalled client never made another.
    assert_eq!(origin.count("/stall").await, 1);
    // A moment later: the fill has finished. (This object is larger than
    // the memory tier, so until its disk write lands a reader may fetch it
    // again: the hit path's storage work is where that window closes.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let later = edge.get(path).await;
    let second = started.elapsed();
    assert_eq!(later.body.len(), 50 << 20);
    assert!(first < bound, "a reader beside the stalled one took {first:?}");
    assert!(second < bound, "a later reader took {second:?}");
    let got = stalled.await.unwrap();
    assert!(got < 30 << 20, "the stalled client was cut off, not served 50 MiB ({got} bytes)");
}

/// Sends a GET for `path` on a socket with a small receive buffer, reads
/// the head and the first `first` body bytes, and hands back the socket and
/// the body length.
async fn start_reading(
    addr: std::net::SocketAddr,
    path: &str,
    first: usize,
) -> (tokio::net::TcpStream, Vec<u8>, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut conn = socket.connect(addr).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let head_end = loop {
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the edge closed before the head");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("cache-status: edge-test; hit"), "{head}");
    let len: usize =
        head.split("content-length: ").nth(1).and_then(|s| s.split("\r\n").next()).unwrap().parse().unwrap();
    let mut body = got.split_off(head_end);
    while body.len() < first {
        let mut buf = vec![0u8; first - body.len()];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the edge closed early");
        body.extend_from_slice(&buf[..n]);
    }
    (conn, body, len)
}

/// A hit on a memory-only edge whose unread chunks other traffic evicts
/// while its client stalls; the origin's copy is changed meanwhile when
/// `changed`. What the client got, the body's length, and the edge.
async fn hit_evicted_mid_read(
    origin: &Origin,
    dir: &std::path::Path,
    path: &str,
    changed: bool,
) -> (Vec<u8>, usize, Edge) {
    use tokio::io::AsyncReadExt;
    let edge = Edge::start_with(dir, &site_toml(origin.addr, DEFAULT_RULES), "memory = \"96MiB\"", "").await;
    assert_eq!(edge.get(path).await.body.len(), 32 << 20);
    let (mut conn, mut body, len) = start_reading(edge.addr, path, 1 << 20).await;
    // Other objects, together larger than the memory tier, push out every
    // chunk the stalled hit has not read yet.
    for i in 0..2 {
        let other = format!("/other{i}?size=80MiB&cc=max-age%3D600");
        assert_eq!(edge.get(&other).await.body.len(), 80 << 20);
    }
    if changed {
        origin.control(&format!("bump?path={}", path.split('?').next().unwrap())).await;
    }
    // The edge ends a body it cannot finish by closing the connection.
    let _ = conn.read_to_end(&mut body).await;
    (body, len, edge)
}

/// A hit whose later chunks leave the store while its client is still
/// reading is finished from the origin by a range of whole chunks pinned
/// to the stored copy's validator: the client gets every byte.
#[tokio::test]
async fn a_hit_whose_chunks_are_evicted_mid_read_is_finished_from_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let path = "/evicted?size=32MiB&cc=max-age%3D600";
    let (body, len, edge) = hit_evicted_mid_read(&origin, dir.path(), path, false).await;
    assert_eq!(len, 32 << 20);
    assert_eq!(body.len(), len, "the hit's body broke off");
    assert_origin_bytes("/evicted", &body);
    // The rest came from the origin as ranges of whole chunks, one for each
    // run of chunks gone (what is still stored is read, not fetched again).
    assert!(origin.count("/evicted").await >= 2, "the rest came from the origin");
    let asked = origin.last_request("/evicted").await;
    let range = asked["range"].as_str().unwrap();
    let (from, to) = range["bytes=".len()..].split_once('-').unwrap();
    let (from, to): (usize, usize) = (from.parse().unwrap(), to.parse().unwrap());
    assert!(from >= 1 << 20 && from.is_multiple_of(1 << 20), "whole chunks from past what was read: {range}");
    assert!(to == len - 1 || (to + 1).is_multiple_of(1 << 20), "whole chunks: {range}");
    assert_eq!(asked["if-range"], serde_json::json!(edge.get(path).await.headers["etag"].to_str().unwrap()));
}

/// The same, but the origin's copy changed in between: the range comes
/// back as another representation, which is refused. The client's body
/// breaks off (its length was promised), and never splices two versions.
#[tokio::test]
async fn a_refill_of_a_changed_object_is_refused_not_spliced() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let path = "/changed?size=32MiB&cc=max-age%3D600";
    let (body, len, _edge) = hit_evicted_mid_read(&origin, dir.path(), path, true).await;
    assert!(body.len() >= 1 << 20 && body.len() < len, "{} of {len} bytes", body.len());
    assert_origin_bytes("/changed", &body);
    assert_eq!(origin.count("/changed").await, 2, "the range was asked for");
}

/// A copy whose body files are gone (a crash, a cache folder cleaned by
/// hand) and whose origin has changed since can never be finished: its
/// first hit breaks off, and the copy is dropped, so that the next request
/// fetches the new version rather than breaking off the same way.
#[tokio::test]
async fn a_copy_that_lost_its_body_and_changed_upstream_is_dropped_not_served_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = "/lost?size=3MiB&cc=max-age%3D600";
    let (origin, site) = stored_without_body(dir.path(), path).await;
    origin.control("bump?path=/lost").await;

    let edge = Edge::start(dir.path(), &site).await;
    // Cut short, as an error or a short body: never two versions spliced.
    if let Ok(r) = try_send(Method::GET, &edge.url(path), &[("host", "t.test")]).await {
        assert!(r.body.len() < 3 << 20, "two versions spliced: {}", r.cache_status());
    }
    assert_eq!(origin.count("/lost").await, 2, "the rest was asked for by range");
    let next = edge.get(path).await;
    assert_eq!(next.body.len(), 3 << 20);
    assert!(!next.is_hit(), "{}", next.cache_status());
    assert_eq!(origin.last_request("/lost").await.get("range"), None, "a whole fetch");
    let seed = outpost_load::content::seed("/lost", 1, &[]);
    assert_eq!(outpost_load::content::first_mismatch(seed, 0, &next.body), None, "the new version");
    assert!(edge.get(path).await.is_hit());
}

/// RFC 9213 at the edge: `CDN-Cache-Control` replaces `Cache-Control` as a
/// whole (a `no-store` there is for browsers) and travels on to the client,
/// where another CDN may obey it; `Outpost-Cache-Control` is obeyed first
/// and never leaves; `Surrogate-Control` is consumed too. An invalid `Age`
/// is ignored rather than read as its leading digits.
#[tokio::test]
async fn targeted_cache_control_fields_are_obeyed_and_forwarded_or_consumed() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let url = "/targeted?size=100&cc=no-store&cdn_cc=max-age%3D300&header=outpost-cache-control:max-age%3D60\
               &sc=max-age%3D5&header=age:%2B50";
    let first = edge.get(url).await;
    let cs = first.cache_status();
    assert!(cs.contains("; stored; ttl=60"), "Outpost-Cache-Control's lifetime, stored despite no-store: {cs}");
    assert_eq!(first.headers["cdn-cache-control"], "max-age=300", "passed on downstream");
    assert_eq!(first.headers["cache-control"], "no-store", "the browser's field is untouched");
    assert!(!first.headers.contains_key("outpost-cache-control"), "Outpost's own field stays here");
    assert!(!first.headers.contains_key("surrogate-control"));
    let second = edge.get(url).await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!(second.headers["cdn-cache-control"], "max-age=300");
    // `+50` is not an Age: the copy is not 50 s old.
    let age: u64 = second.headers["age"].to_str().unwrap().parse().unwrap();
    assert!(age < 50, "Age {age}");
    assert_eq!(origin.count("/targeted").await, 1);
}

/// With `default_ttl = "0s"`, a response with `Last-Modified` and no stated
/// freshness is kept for a tenth of its age, capped by `heuristic_max`,
/// and `Cache-Status` says so; one without is not stored.
#[tokio::test]
async fn freshness_is_guessed_from_last_modified_where_the_site_has_no_default() {
    let rules = "[cache]\ndefault_ttl = \"0s\"\nheuristic_max = \"1h\"\n\n[stale]\nwhile_revalidate = \"0s\"\nif_error = \"0s\"\n";
    let (_d, origin, edge) = setup(rules).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let ttl = |cs: &str| -> u64 { cs.split("ttl=").nth(1).unwrap().split(';').next().unwrap().trim().parse().unwrap() };
    let url = format!("/guess?size=10&lm={}", now - 2000);
    let first = edge.get(&url).await;
    let cs = first.cache_status();
    assert!(cs.contains("; stored;") && cs.ends_with("detail=heuristic"), "{cs}");
    assert!((198..=200).contains(&ttl(&cs)), "a tenth of 2000 s: {cs}");
    let hit = edge.get(&url).await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(origin.count("/guess").await, 1);
    // Changed ten days ago: capped at the site's hour.
    let old = edge.get(&format!("/old?size=10&lm={}", now - 10 * 86400)).await.cache_status();
    assert!((3598..=3600).contains(&ttl(&old)) && old.ends_with("detail=heuristic"), "{old}");
    // Nothing to guess from.
    let none = edge.get("/none?size=10&lm=none").await.cache_status();
    assert!(!none.contains("stored") && none.contains("detail=no-freshness"), "{none}");
}

#[tokio::test]
async fn ranges_and_conditionals_are_answered_from_cache() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let url = "/rg?size=100000&cc=max-age%3D60";
    let full = edge.get(url).await;
    let r = edge.get_with(url, &[("range", "bytes=1000-1999")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(r.is_hit());
    assert_eq!(r.headers["content-range"], "bytes 1000-1999/100000");
    assert_eq!(r.body, full.body.slice(1000..2000));
    let r = edge.get_with(url, &[("range", "bytes=0-9,-10")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("multipart/byteranges; boundary="));
    // The boundary cannot be foreseen (a body that held it could fake
    // parts): another answer, another boundary.
    let again = edge.get_with(url, &[("range", "bytes=0-9,-10")]).await;
    assert_ne!(r.headers["content-type"], again.headers["content-type"]);
    let r = edge.get_with(url, &[("range", "bytes=200000-")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers["content-range"], "bytes */100000");
    let etag = full.headers["etag"].to_str().unwrap().to_string();
    let r = edge.get_with(url, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty() && r.is_hit());
    let lm = full.headers["last-modified"].to_str().unwrap().to_string();
    assert_eq!(edge.get_with(url, &[("if-modified-since", &lm)]).await.status, StatusCode::NOT_MODIFIED);
    assert_eq!(origin.count("/rg").await, 1);
    // A range on a cold object: the whole object is fetched once, the range served.
    let r = edge.get_with("/rg2?size=50000&cc=max-age%3D60", &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, outpost_load::content::bytes(outpost_load::content::seed("/rg2", 0, &[]), 10, 10));
    assert!(edge.get("/rg2?size=50000&cc=max-age%3D60").await.is_hit());
}

#[tokio::test]
async fn purges_by_url_prefix_tag_all_and_soft() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let objs = ["/p/a?keys=red", "/p/b?keys=blue", "/q/c?keys=red+green"];
    let warm = || async {
        for o in objs {
            edge.get(&format!("{o}&cc=max-age%3D600")).await;
        }
    };
    let hit = |o: &'static str| {
        let url = format!("{o}&cc=max-age%3D600");
        let edge = &edge;
        async move { edge.get(&url).await }
    };
    warm().await;
    assert!(hit(objs[0]).await.is_hit());

    edge.engine
        .purge("t", &PurgeTarget::Urls { urls: vec!["/p/a?keys=red&cc=max-age%3D600".into()] }, false)
        .await
        .unwrap();
    let r = hit(objs[0]).await;
    assert!(r.cache_status().contains("fwd=uri-miss"), "{}", r.cache_status());
    assert!(hit(objs[1]).await.is_hit());
    assert_eq!(origin.count("/p/a").await, 2);

    edge.engine.purge("t", &PurgeTarget::Prefix { prefix: "/p/".into() }, false).await.unwrap();
    assert!(!hit(objs[0]).await.is_hit() && !hit(objs[1]).await.is_hit());
    assert!(hit(objs[2]).await.is_hit());

    edge.engine.purge("t", &PurgeTarget::Tags { tags: vec!["green".into()] }, false).await.unwrap();
    let r = hit(objs[2]).await;
    assert!(r.cache_status().contains("fwd=uri-miss"), "purged objects are refetched: {}", r.cache_status());
    assert!(hit(objs[0]).await.is_hit());

    edge.engine.purge("t", &PurgeTarget::All, false).await.unwrap();
    for o in objs {
        assert!(!hit(o).await.is_hit(), "{o}");
    }
    let before = origin.stats().await["not_modified"].as_u64().unwrap();
    edge.engine.purge("t", &PurgeTarget::All, true).await.unwrap();
    let r = hit(objs[1]).await;
    assert!(r.cache_status().contains("fwd=stale; fwd-status=304"), "soft purge revalidates: {}", r.cache_status());
    assert_eq!(origin.stats().await["not_modified"].as_u64().unwrap(), before + 1);
    assert!(hit(objs[1]).await.is_hit());
    assert!(edge.engine.purge("nope", &PurgeTarget::All, false).await.is_err());
}

/// A purge made just after the wall clock was stepped back still covers
/// the copies fetched before the step, and the copies fetched after it are
/// kept. (Prefix rules: a hard purge by URL also removes the copies it can
/// name, which would hide a rule that comes too early.)
#[tokio::test]
async fn a_purge_after_the_clock_steps_back_covers_what_was_fetched_before_the_step() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let url = "/step/a?cc=max-age%3D600";
    assert!(!edge.get(url).await.is_hit());
    assert!(edge.get(url).await.is_hit());
    edge.engine.clock.step_back(Duration::from_secs(120));
    edge.engine.purge("t", &PurgeTarget::Prefix { prefix: "/step/".into() }, false).await.unwrap();
    let r = edge.get(url).await;
    assert!(r.cache_status().contains("fwd=uri-miss"), "the copy from before the step is purged: {}", r.cache_status());
    assert!(edge.get(url).await.is_hit(), "the copy fetched after the purge is kept");
    assert_eq!(origin.count("/step/a").await, 2);
}

/// A run whose wall clock is behind the last one's (stepped back while
/// the node was down) still orders purges and copies as that run did: the
/// rules kept from it do not purge what this run fetches, and a purge in
/// this run covers the copies the last one fetched, as the stop recorded
/// how far its stamps had gone.
#[tokio::test]
async fn a_restart_behind_the_last_runs_clock_keeps_purges_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let site = site_toml(origin.addr, DEFAULT_RULES);
    let edge = Edge::start(dir.path(), &site).await;
    // The last run's clock is two minutes ahead of the next one's.
    edge.engine.clock.advance(Duration::from_secs(120));
    let (a, b) = ("/kept/a?cc=max-age%3D600", "/kept/b?cc=max-age%3D600");
    assert_eq!(edge.get(a).await.status, StatusCode::OK);
    edge.engine.purge("t", &PurgeTarget::Prefix { prefix: "/kept/".into() }, false).await.unwrap();
    assert!(!edge.get(b).await.is_hit());
    assert!(edge.get(b).await.is_hit(), "fetched after the purge");
    edge.stop().await;
    let edge = Edge::start(dir.path(), &site).await;
    assert!(edge.get(a).await.cache_status().contains("fwd=uri-miss"), "purged before the restart");
    let r = edge.get(a).await;
    assert!(r.is_hit(), "the copy fetched after the restart is kept: {}", r.cache_status());
    assert!(edge.get(b).await.is_hit(), "kept across the restart");
    edge.engine.purge("t", &PurgeTarget::Prefix { prefix: "/kept/".into() }, false).await.unwrap();
    let r = edge.get(b).await;
    assert!(r.cache_status().contains("fwd=uri-miss"), "the last run's copy is purged: {}", r.cache_status());
    assert_eq!((origin.count("/kept/a").await, origin.count("/kept/b").await), (2, 2));
    edge.stop().await;
}

/// Variants enough to push a URL's popular variant off its index (which
/// an unsafe method's invalidation visits) take it out of the store too:
/// a POST that changed the URL is never followed by the old copy as a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_pushed_off_its_index_is_not_served_after_a_post() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let url = "/pushed?vary=X-Dev&cc=max-age%3D600";
    let victim = [("x-dev", "victim")];
    edge.get_with(url, &victim).await;
    assert!(edge.get_with(url, &victim).await.is_hit());
    for i in 0..64 {
        let junk = format!("junk{i}");
        edge.get_with(url, &[("x-dev", junk.as_str())]).await;
    }
    let r = send_body(Method::POST, &edge.url(url), "t.test", b"a=1").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = edge.get_with(url, &victim).await;
    assert!(!r.is_hit(), "served unchanged after the POST: {}", r.cache_status());
    assert_eq!(origin.count("/pushed").await, 1 + 64 + 1 + 1);
}

/// A 2xx to an unsafe method invalidates its URL (RFC 9111 §4.4): the copy
/// is validated before it is sent again. Any client can send the POST, so
/// a copy with an ETag costs the origin a conditional request (304), not
/// the object; one without (`Last-Modified` alone is to the second) is
/// fetched again.
#[tokio::test]
async fn unsafe_methods_are_forwarded_and_invalidate() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let (form, plain) = ("/form?size=50000&cc=max-age%3D600", "/plain?size=500&cc=max-age%3D600&etag=none");
    for url in [form, plain] {
        edge.get(url).await;
        assert!(edge.get(url).await.is_hit());
        let r = send_body(Method::POST, &edge.url(url), "t.test", b"a=1").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.cache_status().contains("fwd=bypass"), "{}", r.cache_status());
    }
    assert_eq!(origin.stats().await["methods"]["POST"], 2);
    let before = origin.stats().await["not_modified"].as_u64().unwrap();
    let r = edge.get(form).await;
    assert!(!r.is_hit(), "the POST invalidated the URL");
    assert!(r.cache_status().contains("fwd-status=304"), "validated, not fetched again: {}", r.cache_status());
    assert_origin_bytes("/form", &r.body);
    assert_eq!(origin.stats().await["not_modified"].as_u64().unwrap(), before + 1);
    assert!(edge.get(form).await.is_hit(), "fresh again once validated");
    let r = edge.get(plain).await;
    assert!(r.cache_status().contains("fwd=uri-miss; fwd-status=200"), "fetched again: {}", r.cache_status());
    assert_eq!(origin.count("/plain").await, 3, "a GET, the POST, and the GET again");
}

/// On a site whose keys take a request header, a POST invalidates the copy
/// its own client is sent and the one for requests without the header;
/// copies under other values of the header are other keys, kept.
#[tokio::test]
async fn an_unsafe_method_invalidates_its_clients_own_copy_on_a_site_keyed_by_a_request_header() {
    let rules = "[cache]\ndefault_ttl = \"60s\"\nkey_headers = [\"x-device\"]\n\n[stale]\nwhile_revalidate = \"0s\"\nif_error = \"0s\"\n";
    let (_d, origin, edge) = setup(rules).await;
    let url = "/dev?size=500&cc=max-age%3D600";
    let as_device = |device: Option<&'static str>| {
        let edge = &edge;
        async move {
            match device {
                Some(d) => edge.get_with(url, &[("x-device", d)]).await,
                None => edge.get(url).await,
            }
        }
    };
    for device in [Some("phone"), Some("tablet"), None] {
        assert!(!as_device(device).await.is_hit(), "{device:?}: its own key");
        assert!(as_device(device).await.is_hit(), "{device:?}");
    }
    let validated = origin.stats().await["not_modified"].as_u64().unwrap();
    let r =
        outpost_testkit::request(Method::POST, &edge.url(url), &[("host", "t.test"), ("x-device", "phone")], b"a=1")
            .await
            .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    for device in [Some("phone"), None] {
        let r = as_device(device).await;
        assert!(r.cache_status().contains("fwd=stale; fwd-status=304"), "{device:?}, validated: {}", r.cache_status());
    }
    assert!(as_device(Some("tablet")).await.is_hit(), "another device's copy is another key");
    assert_eq!(origin.stats().await["not_modified"].as_u64().unwrap(), validated + 2);
    assert_eq!(origin.count("/dev").await, 6, "three fetches, the POST and two validations");
}

/// A GET whose fetch is under way when a POST to its URL succeeds: the
/// origin may have answered the GET before the change, so its copy is
/// validated before it is sent again (with an ETag) or fetched again
/// whole (without). A request after the POST does not join that fetch.
#[tokio::test]
async fn a_fetch_under_way_across_an_unsafe_method_stores_its_copy_invalidated() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let tagged = ("/inflight-tagged", "/inflight-tagged?size=5000&cc=max-age%3D600");
    let plain = ("/inflight-plain", "/inflight-plain?size=500&cc=max-age%3D600&etag=none");
    for (path, url) in [tagged, plain] {
        // The origin holds the GET back; the POST, sent once the GET has
        // reached it, is answered at once.
        origin.control(&format!("fault?mode=delay&prefix={path}&delay=1s")).await;
        let post = async {
            while origin.count(path).await == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            origin.control("fault?mode=off").await;
            let r = send_body(Method::POST, &edge.url(url), "t.test", b"a=1").await;
            assert_eq!(r.status, StatusCode::OK);
        };
        let (got, after) = tokio::join!(edge.get(url), async {
            post.await;
            edge.get(url).await
        });
        assert_eq!((got.status, after.status), (StatusCode::OK, StatusCode::OK));
        assert!(got.cache_status().contains("fwd=uri-miss"), "{}", got.cache_status());
        assert!(
            !after.cache_status().contains("collapsed"),
            "joined the fetch begun before the POST: {}",
            after.cache_status()
        );
        assert_eq!(origin.count(path).await, 3, "the GET, the POST, and the GET after it");
    }
    let before = origin.stats().await["not_modified"].as_u64().unwrap();
    let r = edge.get(tagged.1).await;
    assert!(r.cache_status().contains("fwd-status=304"), "stored fresh across the POST: {}", r.cache_status());
    assert_origin_bytes(tagged.0, &r.body);
    assert_eq!(origin.stats().await["not_modified"].as_u64().unwrap(), before + 1);
    assert!(edge.get(tagged.1).await.is_hit(), "fresh once validated");
    let r = edge.get(plain.1).await;
    assert!(!r.is_hit() && r.cache_status().contains("fwd-status=200"), "{}", r.cache_status());
    assert_eq!(origin.count(plain.0).await, 4, "fetched whole again");
    assert!(edge.get(plain.1).await.is_hit(), "a fetch begun after the POST is stored");

    // A range far into a cold object fetches its chunk alone: stored the
    // same way across a POST.
    let (path, url) = ("/inflight-seek", "/inflight-seek?size=3MiB&cc=max-age%3D600");
    let range = [("range", "bytes=2100000-2100099")];
    origin.control(&format!("fault?mode=delay&prefix={path}&delay=1s")).await;
    let post = async {
        while origin.count(path).await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        origin.control("fault?mode=off").await;
        assert_eq!(send_body(Method::POST, &edge.url(url), "t.test", b"a=1").await.status, StatusCode::OK);
    };
    let (got, ()) = tokio::join!(edge.get_with(url, &range), post);
    assert!(got.cache_status().contains("fwd-status=206; stored"), "{}", got.cache_status());
    let r = edge.get_with(url, &range).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(!r.is_hit(), "the chunk fetched across the POST was served as fresh: {}", r.cache_status());
}

/// A purge for a site the node has not loaded (its configuration skipped
/// it) still reaches what the node holds of it: when the site loads again,
/// a URL purged meanwhile (taken as the whole site, since the URL is
/// matched as the site's query rules shape it) and a tag purged meanwhile
/// are misses.
#[tokio::test]
async fn a_purge_for_a_site_not_loaded_holds_when_it_loads_again() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let site: outpost_config::Site = site_toml(origin.addr, DEFAULT_RULES).parse().unwrap();
    for (url, target) in [
        ("/absent-url?cc=max-age%3D600", PurgeTarget::Urls { urls: vec!["/absent-url?cc=max-age%3D600".into()] }),
        ("/absent-tag?cc=max-age%3D600&keys=gone", PurgeTarget::Tags { tags: vec!["gone".into()] }),
    ] {
        edge.get(url).await;
        assert!(edge.get(url).await.is_hit());
        edge.engine.set_sites(Vec::new());
        let e = edge.engine.purge("t", &target, false).await.unwrap_err();
        assert!(e.to_string().contains("no site"), "{e}");
        edge.engine.purge_absent_site("t", &target, false).unwrap();
        edge.engine.set_sites(vec![site.clone()]);
        let r = edge.get(url).await;
        assert!(!r.is_hit(), "{url}: purged while the site was not loaded: {}", r.cache_status());
    }
}

#[tokio::test]
async fn restart_keeps_hits_and_keeps_purged_objects_purged() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let site = site_toml(origin.addr, DEFAULT_RULES);
    let edge = Edge::start(dir.path(), &site).await;
    let big = "/big?size=3MiB&cc=max-age%3D600";
    let small = "/small?cc=max-age%3D600";
    let gone = "/gone?cc=max-age%3D600&keys=old";
    let b1 = edge.get(big).await;
    edge.get(small).await;
    edge.get(gone).await;
    edge.engine.purge("t", &PurgeTarget::Tags { tags: vec!["old".into()] }, false).await.unwrap();
    edge.stop().await;

    let edge = Edge::start(dir.path(), &site).await;
    let r = edge.get(big).await;
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(r.body, b1.body);
    assert_origin_bytes("/big", &r.body);
    assert!(edge.get(small).await.is_hit());
    let r = edge.get(gone).await;
    assert!(!r.is_hit(), "still purged after the restart: {}", r.cache_status());
    assert_eq!(origin.count("/big").await, 1);
    assert_eq!(origin.count("/gone").await, 2);
    edge.stop().await;
}

/// A site removed from a node's files while it was down, and another given
/// its id later: the disk tier still holds the old site's copies under that
/// id, and none is served to the new one. A restart with the same sites
/// keeps its hits (above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_id_the_node_did_not_serve_at_its_last_start_gets_none_of_the_copies_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let url = "/kept?cc=max-age%3D600";
    let edge = Edge::start(dir.path(), &site_toml(origin.addr, DEFAULT_RULES)).await;
    edge.get(url).await;
    assert!(edge.get(url).await.is_hit());
    edge.stop().await;
    let other_id = site_toml(origin.addr, DEFAULT_RULES).replace("id = \"t\"", "id = \"u\"");
    Edge::start(dir.path(), &other_id).await.stop().await;
    let another = Origin::start().await;
    let edge = Edge::start(dir.path(), &site_toml(another.addr, DEFAULT_RULES)).await;
    let r = edge.get(url).await;
    assert!(r.cache_status().contains("fwd=uri-miss"), "the old site's copy was served: {}", r.cache_status());
    assert_eq!(another.count("/kept").await, 1);
    edge.stop().await;
}

use outpost_testkit::rss_kib;

/// Measures this process's memory, so it runs alone in a process of its own
/// (`cargo test` runs the other tests of this binary beside it), on one
/// thread, so per-thread allocator arenas do not inflate it; the
/// multi-threaded tests above cover the races.
#[test]
fn a_50_mib_object_streams_through_in_chunks() {
    in_own_process("cache::a_50_mib_object_streams_through_in_chunks", || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(stream_50_mib());
    });
}

async fn stream_50_mib() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let edge =
        Edge::start_with(dir.path(), &site_toml(origin.addr, DEFAULT_RULES), "memory = \"8MiB\"\ndisk = \"96MiB\"", "")
            .await;
    let path = "/huge?size=50MiB&cc=max-age%3D600";
    let seed = outpost_load::content::seed("/huge", 0, &[]);
    let before = rss_kib();
    let mut peak = before;
    // Read as a stream and check each piece: the test never holds the body.
    for round in 0..2 {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let req =
            http::Request::get(edge.url(path)).header("host", "t.test").body(http_body_util::Empty::new()).unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.headers()["content-length"], (50u64 << 20).to_string().as_str());
        let hit = resp.headers()["cache-status"].to_str().unwrap().contains("; hit");
        assert_eq!(hit, round == 1, "miss first, then a hit from chunks");
        let mut body = resp.into_body();
        let mut at = 0u64;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            let data =
                frame.unwrap_or_else(|e| panic!("round {round}: body broke at byte {at}: {e}")).into_data().unwrap();
            assert_eq!(outpost_load::content::first_mismatch(seed, at, &data), None);
            at += data.len() as u64;
            peak = peak.max(rss_kib());
        }
        assert_eq!(at, 50 << 20);
    }
    let grown_mib = (peak.saturating_sub(before)) / 1024;
    println!("RSS grew by {grown_mib} MiB while streaming 50 MiB twice");
    // Measured alone (nextest runs each test in its own process): 32 to
    // 40 MiB, of which 8 MiB is the memory tier by design and most of the
    // rest foyer's write queue and the allocator's retained arenas. It does
    // not grow with the object: a 200 MiB object peaks at about 43 MiB.
    // The bound is the object's size less a margin, so it fails if the
    // body is ever held whole.
    assert!(grown_mib < 48, "memory grew by {grown_mib} MiB for a 50 MiB object");
    let r = edge.get_with(path, &[("range", "bytes=40000000-40000099")]).await;
    assert_eq!(r.status, http::StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, outpost_load::content::bytes(seed, 40_000_000, 100));
    // The object is fetched whole once. A chunk the disk tier dropped under
    // a burst of writes (a busy disk: other tests beside this one) is asked
    // for again alone, as a range of whole chunks; never the object.
    let fetches = origin.count("/huge").await;
    assert!(fetches <= 2, "{fetches} fetches of /huge");
    if fetches == 2 {
        let last = origin.last_request("/huge").await;
        assert!(last["range"].as_str().is_some_and(|r| r.starts_with("bytes=")), "a refill is a range: {last}");
    }
}

#[tokio::test]
async fn objects_over_the_size_limit_stream_through_uncached() {
    let rules = DEFAULT_RULES.replace("default_ttl = \"60s\"", "default_ttl = \"60s\"\nmax_object_size = \"100KiB\"");
    let (_d, origin, edge) = setup(&rules).await;
    for path in ["/large?size=200KiB&cc=max-age%3D60", "/chunked?size=200KiB&cc=max-age%3D60&no_length=1"] {
        for _ in 0..2 {
            let r = edge.get(path).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.body.len(), 200 * 1024);
            assert!(!r.is_hit(), "{path}: {}", r.cache_status());
        }
    }
    let first = edge.get("/large?size=200KiB&cc=max-age%3D60").await;
    assert!(first.cache_status().contains("detail=too-large"), "{}", first.cache_status());
    assert_eq!(origin.count("/large").await, 3);
    assert_eq!(origin.count("/chunked").await, 2, "an unannounced large body is not stored either");
    assert!(edge.get("/small?size=50KiB&cc=max-age%3D60").await.cache_status().contains("stored"));
}

/// The default rules' freshness, with objects stored up to 1 MiB.
const ONE_MIB_OBJECTS: &str = "default_ttl = \"60s\"\nmax_object_size = \"1MiB\"";

/// GET `path` of `t.test` over HTTP/1.1: the body, to read as it comes.
async fn streamed(edge: &Edge, path: &str) -> hyper::body::Incoming {
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(edge.addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req =
        http::Request::get(path).header("host", "t.test").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    send.send_request(req).await.unwrap().into_body()
}

/// A body without a length that outgrows the largest object stored, asked
/// for again once its start has left what the fetch keeps for its readers
/// (8 MiB): the late request gets the whole body on a fetch of its own,
/// not a 200 that breaks at its first byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_an_unannounced_body_outgrew_the_store_gets_it_whole() {
    use http_body_util::BodyExt;
    let (_d, origin, edge) = setup(&DEFAULT_RULES.replace("default_ttl = \"60s\"", ONE_MIB_OBJECTS)).await;
    let path = "/grow?size=24MiB&no_length=1&chunk=256KiB&chunk_delay=25ms&cc=max-age%3D60";
    // The first client reads the body as it comes, 10 MiB of it.
    let mut body = streamed(&edge, path).await;
    let mut first = Vec::new();
    while first.len() < 10 << 20 {
        let frame = body.frame().await.expect("the body ended early").expect("the body broke");
        first.extend_from_slice(&frame.into_data().unwrap_or_default());
    }
    let rest = async {
        while let Some(frame) = body.frame().await {
            first.extend_from_slice(&frame.expect("the first body broke").into_data().unwrap_or_default());
        }
    };
    let (late, ()) = tokio::join!(edge.get(path), rest);
    assert_eq!(late.status, StatusCode::OK);
    assert_eq!(late.body.len(), 24 << 20, "{}", late.cache_status());
    assert_origin_bytes("/grow", &late.body);
    assert!(!late.cache_status().contains("collapsed"), "{}", late.cache_status());
    assert_eq!(first.len(), 24 << 20);
    assert_origin_bytes("/grow", &first);
    assert_eq!(origin.count("/grow").await, 2, "the late request fetched for itself");
}

/// A reader of such a body that stops for a while (past the fetch's wait
/// for it) and so falls behind what the fetch keeps: the body has a strong
/// validator, so the answer is finished from the origin by range instead
/// of breaking off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_left_behind_by_an_unannounced_body_too_large_to_store_is_finished_by_range() {
    use http_body_util::BodyExt;
    let (_d, origin, edge) = setup(&DEFAULT_RULES.replace("default_ttl = \"60s\"", ONE_MIB_OBJECTS)).await;
    let path = "/lag?size=24MiB&no_length=1&chunk=256KiB&chunk_delay=10ms&cc=max-age%3D60";
    let mut body = streamed(&edge, path).await;
    let mut got = Vec::new();
    let mut paused = false;
    while let Some(frame) = body.frame().await {
        got.extend_from_slice(&frame.expect("the body broke").into_data().unwrap_or_default());
        if !paused && got.len() >= 1 << 20 {
            // The whole body arrives meanwhile; what the socket buffers
            // hold is far less than the 16 MiB the fetch lets go of.
            tokio::time::sleep(Duration::from_secs(4)).await;
            paused = true;
        }
    }
    assert_eq!(got.len(), 24 << 20);
    assert_origin_bytes("/lag", &got);
    assert_eq!(origin.count("/lag").await, 2, "the rest fetched once more");
    let range = origin.last_request("/lag").await["range"].as_str().unwrap_or("").to_string();
    assert!(range.starts_with("bytes=") && range.ends_with('-') && range != "bytes=0-", "{range}");
}

#[tokio::test]
async fn a_range_far_into_a_cold_object_costs_its_chunks_and_the_object_is_completed_later() {
    use outpost_load::content::{first_mismatch, seed};
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let path = "/seek?size=8MiB&cc=max-age%3D600";
    let (mib, total) = (1u64 << 20, 8u64 << 20);
    let s = seed("/seek", 0, &[]);
    let asked = || async { origin.last_request("/seek").await["range"].as_str().unwrap_or("").to_string() };
    let range = |first: u64, last: u64| {
        let edge = &edge;
        async move { edge.get_with(path, &[("range", &format!("bytes={first}-{last}"))]).await }
    };
    let check = |r: &Resp, first: u64, last: u64| {
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", r.cache_status());
        assert_eq!(r.headers["content-range"], format!("bytes {first}-{last}/{total}"));
        assert_eq!(r.body.len() as u64, last - first + 1);
        assert_eq!(first_mismatch(s, first, &r.body), None, "bytes {first}-{last}");
    };

    // A seek into chunk 4 fetches chunk 4 alone.
    let r = range(5_000_000, 5_000_999).await;
    check(&r, 5_000_000, 5_000_999);
    assert!(r.cache_status().contains("fwd=uri-miss; fwd-status=206; stored"), "{}", r.cache_status());
    assert_eq!((origin.count("/seek").await, asked().await), (1, format!("bytes={}-{}", 4 * mib, 5 * mib - 1)));
    // Another range inside it is a hit.
    let r = range(4_200_000, 4_300_000).await;
    check(&r, 4_200_000, 4_300_000);
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(origin.count("/seek").await, 1);
    // A range over stored and missing chunks fetches the missing ones only.
    let r = range(3 * mib + 5, 5 * mib + 10).await;
    check(&r, 3 * mib + 5, 5 * mib + 10);
    assert_eq!((origin.count("/seek").await, asked().await), (3, format!("bytes={}-{}", 5 * mib, 6 * mib - 1)));
    // The whole object: the gaps before and after what is stored.
    let r = edge.get(path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len() as u64, total);
    assert_origin_bytes("/seek", &r.body);
    assert_eq!((origin.count("/seek").await, asked().await), (5, format!("bytes={}-{}", 6 * mib, total - 1)));
    // Complete now.
    let r = edge.get(path).await;
    assert!(r.is_hit());
    assert_origin_bytes("/seek", &r.body);
    assert_eq!(origin.count("/seek").await, 5);

    // An open range fetches from its chunk to the end.
    let r = edge.get_with("/open?size=3MiB&cc=max-age%3D600", &[("range", "bytes=2100000-")]).await;
    assert_eq!(r.headers["content-range"], "bytes 2100000-3145727/3145728");
    assert_eq!(first_mismatch(seed("/open", 0, &[]), 2_100_000, &r.body), None);
    assert_eq!(origin.last_request("/open").await["range"], "bytes=2097152-");
    // An upstream that ignores ranges: the object is fetched as usual.
    let r = edge.get_with("/whole?size=3MiB&no_length=1&cc=max-age%3D600", &[("range", "bytes=2100000-2100009")]).await;
    // (Its length unknown until it ends, the range is not answered: all of it is.)
    assert_eq!(r.status, StatusCode::OK);
    assert_origin_bytes("/whole", &r.body);
    assert_eq!(origin.count("/whole").await, 2, "the range, refused, then the object");
    assert!(edge.get("/whole?size=3MiB&no_length=1&cc=max-age%3D600").await.is_hit());
}

/// An upstream that lies in its 206: a Content-Range for other bytes than
/// asked, or one that promises more body than it sends. The first is not
/// taken as a part of the object; the second breaks off, is never passed
/// on as whole, and the node goes on.
#[tokio::test]
async fn a_lying_partial_answer_is_not_stored_as_part_of_the_object() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    // Content-Range for bytes the edge did not ask for.
    let other = "/other?status=206&size=1000&cc=max-age%3D600&header=content-range:bytes%200-999/1000";
    let r = edge.get_with(other, &[("range", "bytes=2100000-2100099")]).await;
    assert!(!r.cache_status().contains("stored"), "{}", r.cache_status());
    // The range asked, but a body far shorter than it says.
    let short = "/short?status=206&size=1000&cc=max-age%3D600&header=content-range:bytes%202097152-3145727/8388608";
    let r = try_send(Method::GET, &edge.url(short), &[("host", "t.test"), ("range", "bytes=2100000-2100099")]).await;
    match r {
        Err(_) => {}
        Ok(r) => assert!(r.body.len() < 100, "a broken body is not made whole: {} bytes", r.body.len()),
    }
    // Nothing of it was stored: the whole object is a miss.
    let whole = edge.get(short).await;
    assert!(!whole.is_hit(), "{}", whole.cache_status());
    assert!(edge.get("/fine?size=100").await.status == StatusCode::OK, "the node goes on");
    assert!(origin.count("/short").await >= 2, "each request asked the origin again");
}

/// RFC 9110 §13.1.5: `If-Range` with a date holds only when the copy's
/// `Last-Modified` is a strong validator. One in the same second as the
/// copy's `Date` is weak (another version could share it): the whole body
/// comes back, not a range that could join two versions.
#[tokio::test]
async fn if_range_with_a_weak_last_modified_gets_the_whole_body() {
    let (_d, _origin, edge) = setup(DEFAULT_RULES).await;
    // Not past the copy's `Date` by a second whatever second the answer
    // comes in: an hour ahead of it.
    let ahead = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    for (path, strong) in [
        (format!("/ir-weak?size=100&etag=none&lm={ahead}&cc=max-age%3D600"), false),
        ("/ir-strong?size=100&etag=none&lm=1704067200&cc=max-age%3D600".to_string(), true),
    ] {
        let first = edge.get(&path).await;
        assert_eq!(first.status, StatusCode::OK);
        let lm = first.headers["last-modified"].to_str().unwrap().to_string();
        let r = edge.get_with(&path, &[("range", "bytes=0-9"), ("if-range", &lm)]).await;
        if strong {
            assert_eq!((r.status, r.body.len()), (StatusCode::PARTIAL_CONTENT, 10), "{path}");
        } else {
            assert_eq!((r.status, r.body.len()), (StatusCode::OK, 100), "{path}");
        }
    }
}

/// An answer passed through unstored whose upstream stops sending midway
/// is ended after the origin's `response_timeout` (5 s here), as a stored
/// answer's fetch is; it used to hold the client, and the exchange with
/// the origin, for as long as the origin kept quiet.
#[tokio::test]
async fn a_passed_answer_whose_upstream_goes_quiet_is_ended() {
    let (_d, _origin, edge) = setup(DEFAULT_RULES).await;
    let started = std::time::Instant::now();
    let url = edge.url("/quiet?size=2000&chunk=1000&chunk_delay=100s&cc=no-store");
    let r = tokio::time::timeout(Duration::from_secs(30), try_send(Method::GET, &url, &[("host", "t.test")])).await;
    let r = r.expect("the answer was still open after 30 s");
    assert!(r.is_err(), "an answer cut short is never a whole one: {:?}", r.map(|r| r.body.len()));
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(15), "ended after {took:?}");
}

/// A shared body that trickles (a byte every half second: never quiet for
/// `response_timeout`, 2 s here, yet far below `body_min_rate`) is given
/// up after a window of it, for the request that made the fetch and the
/// one that joined it; nothing is stored, and the next request fetches
/// anew. It used to hold them, and the origin's place, as long as the
/// origin went on. An answer passed through unstored, or an event stream,
/// may trickle as it likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_body_that_trickles_below_the_minimum_rate_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let site = site_toml(origin.addr, DEFAULT_RULES).replace("response_timeout = \"5s\"", "response_timeout = \"2s\"");
    let edge = Edge::start(dir.path(), &site).await;
    let url = edge.url("/drip?size=100KiB&chunk=1&chunk_delay=500ms&cc=max-age%3D60");
    let get = || try_send(Method::GET, &url, &[("host", "t.test")]);
    let started = std::time::Instant::now();
    let late = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        get().await
    };
    let both = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(get(), late) }).await;
    let (first, joined) = both.expect("the trickle was still open after 20 s");
    let took = started.elapsed();
    assert!(
        first.is_err() && joined.is_err(),
        "both cut: {:?} {:?}",
        first.map(|r| r.body.len()),
        joined.map(|r| r.body.len())
    );
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "ended after {took:?}");
    assert_eq!(origin.count("/drip").await, 1, "the second request joined the first's fetch");
    // Nothing was stored: the next request fetches again.
    let again = tokio::time::timeout(Duration::from_secs(20), get()).await.expect("the trickle was still open");
    assert!(again.is_err());
    assert_eq!(origin.count("/drip").await, 2);

    // Passed through, or an event stream (shared when it says only
    // `no-cache`), the same pace goes on to the end.
    for query in ["cc=no-store", "cc=no-cache&content_type=text/event-stream"] {
        let stream = edge.url(&format!("/events?size=6&chunk=1&chunk_delay=700ms&{query}"));
        let r = try_send(Method::GET, &stream, &[("host", "t.test")]);
        let r = tokio::time::timeout(Duration::from_secs(20), r).await.expect("the stream was still open after 20 s");
        let r = r.unwrap_or_else(|e| panic!("{query}: a stream that trickles is not cut: {e}"));
        assert_eq!(r.body.len(), 6, "{query}");
    }
}

/// Only the upstream's silence counts, not a client's: one that stops
/// reading a passed answer for longer than `response_timeout` gets all of
/// it once it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_answer_waits_for_a_client_that_pauses() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_d, _origin, edge) = setup(DEFAULT_RULES).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    let mut conn = socket.connect(edge.addr).await.unwrap();
    let head = "GET /paused?size=32MiB&cc=no-store HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n";
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut got = vec![0u8; 1024];
    let n = conn.read(&mut got).await.unwrap();
    got.truncate(n);
    tokio::time::sleep(Duration::from_secs(6)).await;
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut got)).await.unwrap().unwrap();
    let at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got[..at]));
    assert_eq!(got.len() - at, 32 << 20, "the whole body");
}

/// A fetch under way when a purge comes is not joined by the requests
/// after it: they fetch anew, and what they fetched is what is kept.
#[tokio::test]
async fn a_request_after_a_purge_does_not_join_a_fetch_begun_before_it() {
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let url_purge = |u: &str| PurgeTarget::Urls { urls: vec![u.to_string()] };
    for (path, url, target) in [
        ("/pf-url", "/pf-url?size=500&cc=max-age%3D600", url_purge("/pf-url?size=500&cc=max-age%3D600")),
        (
            "/pf-prefix/a",
            "/pf-prefix/a?size=500&cc=max-age%3D600",
            PurgeTarget::Prefix { prefix: "/pf-prefix/".into() },
        ),
    ] {
        // The origin holds the first GET back; the purge comes once it has
        // reached the origin, and a GET after it.
        origin.control(&format!("fault?mode=delay&prefix={path}&delay=1s")).await;
        let purge_then_get = async {
            while origin.count(path).await == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            origin.control("fault?mode=off").await;
            edge.engine.purge("t", &target, false).await.unwrap();
            edge.get(url).await
        };
        let (first, after) = tokio::join!(edge.get(url), purge_then_get);
        assert_eq!((first.status, after.status), (StatusCode::OK, StatusCode::OK));
        assert!(
            !after.cache_status().contains("collapsed"),
            "joined a fetch begun before the purge: {}",
            after.cache_status()
        );
        assert_eq!(origin.count(path).await, 2, "{path}: the GET before the purge and the one after");
        let next = edge.get(url).await;
        assert!(next.is_hit(), "{path}: the copy fetched after the purge is kept: {}", next.cache_status());
        assert_eq!(origin.count(path).await, 2);
    }
}

/// A refill that meets a busy upstream (a 503 carries no validator) says
/// nothing of the copy: the copy is kept, and finished by range once the
/// upstream answers again, not dropped and fetched whole.
#[tokio::test]
async fn a_refill_that_meets_a_busy_upstream_keeps_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = "/busy?size=3MiB&cc=max-age%3D600";
    let (origin, site) = stored_without_body(dir.path(), path).await;
    origin.control("fault?mode=503").await;
    let edge = Edge::start(dir.path(), &site).await;
    if let Ok(r) = try_send(Method::GET, &edge.url(path), &[("host", "t.test")]).await {
        assert!(r.body.len() < 3 << 20, "{}", r.cache_status());
    }
    origin.control("fault?mode=off").await;
    let next = edge.get(path).await;
    assert_eq!(next.body.len(), 3 << 20);
    assert!(next.is_hit(), "the copy was dropped: {}", next.cache_status());
    assert!(origin.last_request("/busy").await.get("range").is_some(), "finished by range");
    assert_origin_bytes("/busy", &next.body);
}

/// A 3 MiB object `path` stored by an edge in `dir`, stopped since, whose
/// body files are gone (a crash, a cache folder cleaned by hand) and whose
/// head is kept; the origin and the site.
async fn stored_without_body(dir: &std::path::Path, path: &str) -> (Origin, String) {
    stored_and_damaged(dir, path, |file| std::fs::remove_file(file).unwrap()).await
}

/// As [`stored_without_body`], with `damage` done to each body file.
async fn stored_and_damaged(dir: &std::path::Path, path: &str, damage: impl Fn(&std::path::Path)) -> (Origin, String) {
    let origin = Origin::start().await;
    let site = site_toml(origin.addr, DEFAULT_RULES);
    let edge = Edge::start(dir, &site).await;
    assert_eq!(edge.get(path).await.body.len(), 3 << 20);
    edge.stop().await;
    let mut damaged = 0;
    for fan in std::fs::read_dir(dir.join("cache").join("bodies")).unwrap().flatten() {
        for file in std::fs::read_dir(fan.path()).unwrap().flatten() {
            damage(&file.path());
            damaged += 1;
        }
    }
    assert_eq!(damaged, 3, "the body was stored as three files");
    (origin, site)
}

/// Body files cut short on disk (a full disk, a crash, a hand) are never
/// served short, nor left to fail every later request: with a validator
/// that pins the copy, the short chunks are fetched again by range; without
/// one, the object is fetched again whole. Either way the next request is a
/// whole hit.
#[tokio::test]
async fn body_files_cut_short_are_fetched_again_not_served_short() {
    for (name, query, pinned) in [
        ("/cut-pinned", "size=3MiB&cc=max-age%3D600", true),
        ("/cut-unpinned", "size=3MiB&etag=none&lm=none&cc=max-age%3D600", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = format!("{name}?{query}");
        let cut = |file: &std::path::Path| {
            std::fs::OpenOptions::new().write(true).open(file).unwrap().set_len(1000).unwrap();
        };
        let (origin, site) = stored_and_damaged(dir.path(), &path, cut).await;
        let edge = Edge::start(dir.path(), &site).await;
        let first = edge.get(&path).await;
        assert_eq!(first.body.len(), 3 << 20, "{name}: {}", first.cache_status());
        assert_origin_bytes(name, &first.body);
        let asked = origin.last_request(name).await;
        assert_eq!(asked.get("range").is_some(), pinned, "{name}: {asked:?}");
        let next = edge.get(&path).await;
        assert!(next.is_hit(), "{name}: {}", next.cache_status());
        assert_origin_bytes(name, &next.body);
    }
}

/// A range fetched far into an object nothing was stored for is stored
/// once its reader has taken it all; a whole copy stored meanwhile (here of
/// a newer version) is not replaced by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_fetch_that_ends_late_does_not_replace_a_copy_stored_since() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_d, origin, edge) = setup(DEFAULT_RULES).await;
    let path = "/late?size=16MiB&cc=max-age%3D600";
    // A reader of most of the object that stalls after its first bytes.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut conn = socket.connect(edge.addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: t.test\r\nRange: bytes=1048576-\r\nConnection: close\r\n\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 64 << 10];
    let n = conn.read(&mut first).await.unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 206"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    // The object changes, and a whole fetch stores the new version.
    origin.control("bump?path=/late").await;
    let whole = edge.get(path).await;
    assert_eq!(whole.body.len(), 16 << 20);
    let seed = outpost_load::content::seed("/late", 1, &[]);
    assert_eq!(outpost_load::content::first_mismatch(seed, 0, &whole.body), None, "the new version");
    // The stalled reader takes the rest of the old version; the copy stored
    // is still the new one.
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.unwrap();
    let again = edge.get(path).await;
    assert!(again.is_hit(), "{}", again.cache_status());
    assert_eq!(
        outpost_load::content::first_mismatch(seed, 0, &again.body),
        None,
        "the old range replaced the new copy"
    );
}
