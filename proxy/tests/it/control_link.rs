//! An edge following a control plane that misbehaves: a stand-in control
//! plane written against the wire, so it can say what a real one would
//! not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// A control plane whose event streams carry only heartbeats that say the
/// log ends at `seq`, every 300 ms, and never an event; it takes every
/// acknowledgement. Counts the streams opened.
async fn heartbeats_only(seq: u64) -> (SocketAddr, Arc<AtomicUsize>) {
    scripted(Vec::new(), seq).await
}

/// A control plane whose event streams send `lines` (JSON), then
/// heartbeats at `seq` every 300 ms; it takes every acknowledgement.
/// Counts the streams opened.
async fn scripted(lines: Vec<String>, seq: u64) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&streams);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = conn.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&head);
                if !head.starts_with("GET /v1/events") {
                    let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").await;
                    return;
                }
                counted.fetch_add(1, Ordering::Relaxed);
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n")
                    .await;
                for line in lines {
                    if conn.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
                loop {
                    let line = format!("{{\"type\":\"heartbeat\",\"seq\":{seq}}}\n");
                    if conn.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
        }
    });
    (addr, streams)
}

async fn edge_following(dir: &std::path::Path, control: SocketAddr) -> Edge {
    std::fs::write(dir.join("node.token"), "t0ken").unwrap();
    let origin = "127.0.0.1:9".parse().unwrap();
    let link = format!("[control]\nurl = \"http://{control}\"\ntoken_file = \"node.token\"\n");
    Edge::start_with(dir, &site_toml(origin, DEFAULT_RULES), "memory = \"8MiB\"", &link).await
}

/// Heartbeats that keep saying the log is past what the stream delivers
/// mean the stream misses events (a replica whose feed stalled): the edge
/// resumes on a new stream within two heartbeats, where a healthy stream,
/// whose heartbeats it has caught up with, is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_heartbeats_run_ahead_of_its_events_is_left() {
    let (ahead, ahead_streams) = heartbeats_only(5).await;
    let (level, level_streams) = heartbeats_only(0).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _behind = edge_following(d1.path(), ahead).await;
    let _caught_up = edge_following(d2.path(), level).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (left, kept) = (ahead_streams.load(Ordering::Relaxed), level_streams.load(Ordering::Relaxed));
    assert!(left >= 2, "the edge stayed on a stream that never delivers what its heartbeats announce ({left})");
    assert_eq!(kept, 1, "a stream the edge has caught up with was left");
}

/// A site version this node cannot load (a key its version does not know:
/// a control plane newer than the node) keeps the version it serves, and
/// the node says so among its problems, rather than dropping the site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_version_the_node_cannot_load_keeps_the_one_it_serves() {
    use outpost_config::{Event, EventRecord, StreamLine};
    let origin = Origin::start().await;
    let site = |version: u64, extra: &str| {
        let toml = format!(
            "[site]\nid = \"c\"\nhosts = [\"c.test\"]\n{extra}\n[[origin]]\nurl = \"http://{}\"\n",
            origin.addr
        );
        let event = Event::SiteUpserted { site_id: "c".into(), version, toml };
        serde_json::to_string(&StreamLine::Event { record: EventRecord { seq: version, at_ms: 0, event } }).unwrap()
    };
    let (control, _) = scripted(vec![site(1, ""), site(2, "future_key = true")], 2).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = edge_following(dir.path(), control).await;
    let problem = || edge.engine.problems().into_iter().find(|p| p.contains("site `c` version 2 does not load here"));
    eventually("the unloadable version said as a problem", || std::future::ready(problem().is_some())).await;
    assert!(problem().unwrap().contains("the version before serves"), "{problem:?}", problem = problem());
    let r = send(http::Method::GET, &format!("http://{}/hello", edge.addr), &[("host", "c.test")]).await;
    assert_eq!(r.status, http::StatusCode::OK, "the version before is served");
}
