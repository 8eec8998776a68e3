//! The node side of the API: the event stream and acknowledgements.
//!
//! `GET /v1/events?after=SEQ&node=NAME&role=ROLE[&pop=P][&addrs=A,B]` answers
//! with JSON lines ([`StreamLine`]): a snapshot when `after` is older than
//! the log reaches, every event after it, then new events as they are
//! committed, with a heartbeat every [`HEARTBEAT`]. A node that falls too
//! far behind the live channel is disconnected and replays on reconnect.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use outpost_config::Role;
use outpost_config::api::{DEAD_AFTER, StreamQuery};
use outpost_config::{
    Ack, Event, EventRecord, IssuedCertificate, MAX_PROBLEM_LEN, MAX_PROBLEMS, SiteSnapshot, StreamLine,
};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, Caller, Control, HEARTBEAT};
use crate::store::{NodeRecord, Store, now_ms};

/// Counts a node's open streams down when one ends.
struct Connection {
    control: Arc<Control>,
    node: String,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut c = self.control.connected.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Gone, not kept at zero: names that came and went (any
                // holder of the node token can make up names) cost nothing.
                c.remove(&self.node);
                self.control.store.set_present(&self.node, false);
            }
        }
        drop(c);
        self.control.ack_changed.send_modify(|v| *v += 1);
    }
}

impl Connection {
    /// The node has not been heard from (stream opened, acknowledgement,
    /// through any replica) for [`DEAD_AFTER`].
    async fn silent(&self) -> bool {
        let heard = match self.control.store.node(&self.node).await {
            Ok(Some(n)) => n.last_contact_ms,
            // Unknown, or the store cannot say: keep the stream.
            _ => return false,
        };
        now_ms().saturating_sub(heard) > DEAD_AFTER.as_millis() as u64
    }

    /// The credential that opened the stream has been revoked since (a
    /// store that cannot say leaves the stream open). A node rotated with
    /// a hand-over is handed its new credential when it opens the next.
    async fn revoked(&self, caller: &Caller) -> bool {
        let revoked = matches!(self.control.still_taken(caller).await, Err(e) if e.status == StatusCode::UNAUTHORIZED);
        if revoked {
            tracing::info!(node = %self.node, "the node's credential was revoked: closing its stream");
        }
        revoked
    }
}

fn line(l: &StreamLine) -> Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Writes the lines of one node's stream. The store keeps certificate keys
/// sealed under the node token; a node with its own credential gets them
/// sealed under that instead, as it does not hold the node token.
#[derive(Clone)]
struct Writer {
    /// Holds the node token the store's seals are under.
    control: Arc<Control>,
    /// Who opened the stream.
    caller: Caller,
}

impl Writer {
    fn line(&self, mut l: StreamLine) -> Bytes {
        if let Caller::Node { credential: to, .. } = &self.caller {
            let from = self.control.node_token();
            match &mut l {
                StreamLine::Snapshot { sites, .. } => {
                    for s in sites {
                        if let Some(cert) = &mut s.certificate {
                            self.reseal(cert, &s.id, from, to);
                        }
                    }
                }
                StreamLine::Event { record } => {
                    if let Event::Certificate { site_id, certificate } = &mut record.event {
                        self.reseal(certificate, site_id, from, to);
                    }
                }
                StreamLine::Certificates { certificates } => {
                    for (site, cert) in certificates {
                        self.reseal(cert, site, from, to);
                    }
                }
                _ => {}
            }
        }
        line(&l)
    }
}

impl Writer {
    /// Seals a certificate's key under `to` instead of `from`. One that
    /// does not open (sealed under a node token since replaced, which the
    /// ACME orderer is about to order again) goes as it is: the node
    /// cannot open it and keeps the certificate it has. Said once per key,
    /// not on every stream that carries it.
    fn reseal(&self, cert: &mut IssuedCertificate, site: &str, from: &str, to: &str) {
        let purpose = outpost_net::seal::certificate_key(site);
        match outpost_net::seal::open(from, &purpose, &cert.sealed_key)
            .and_then(|plain| outpost_net::seal::seal(to, &purpose, &plain))
        {
            Ok(sealed) => cert.sealed_key = sealed,
            Err(e) => {
                if self.control.first_unopened_seal(&cert.sealed_key) {
                    tracing::warn!(site, error = %e, "a certificate key does not open under the node token");
                }
            }
        }
    }
}

/// Most addresses one node registers.
const MAX_ADDRS: usize = 16;

/// The addresses a node says it serves on: socket addresses (`ip:port`,
/// `[v6]:port`), at most [`MAX_ADDRS`], written back in canonical form.
fn listen_addrs(list: &str) -> Result<Vec<String>, ApiError> {
    let bad = |detail: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_addrs", detail);
    let parts: Vec<&str> = list.split(',').filter(|a| !a.is_empty()).collect();
    if parts.len() > MAX_ADDRS {
        return Err(bad(format!("at most {MAX_ADDRS} addresses, found {}", parts.len())));
    }
    parts
        .into_iter()
        .map(|a| {
            a.parse::<std::net::SocketAddr>()
                .map(|s| s.to_string())
                .map_err(|_| bad(format!("`{a}` is not an address with a port, such as 192.0.2.10:80")))
        })
        .collect()
}

pub(super) fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 63 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `GET /v1/events`: registers the node, then streams the backlog and the
/// live log.
pub(super) async fn stream(
    State(c): State<Arc<Control>>,
    conn: Option<axum::Extension<outpost_net::Conn>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = match c.node(&headers).await {
        Ok(caller) => caller,
        // A node rotated with a hand-over: the stream it had open ended,
        // and the next it opens with the credential before (at once, as a
        // node does; or after a restart) is handed the new one, alone.
        Err(refused) => match c.hand_over(&headers).await {
            Some((node, generation, credential)) => {
                tracing::warn!(
                    %node,
                    generation,
                    peer = %conn.map_or_else(|| "unknown".to_string(), |axum::Extension(c)| c.peer.to_string()),
                    "handing a node rotated with a hand-over its new credential, to a stream opened with the one before"
                );
                return Ok(ndjson(Body::from(line(&StreamLine::Credential { credential }))));
            }
            None => return Err(refused),
        },
    };
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    caller.speaks_for(&q.node)?;
    let addrs = check(&q)?;
    if let Caller::Node { name, generation, .. } = &caller {
        // A hand-over to this generation is done: the credential before
        // gets nothing more (when the store cannot say so now, at the next
        // stream). Asked of the store itself, once a stream: the copy here
        // may predate the rotation.
        if let Err(e) = c.revocations.handed_over(&c.store, name, *generation).await {
            tracing::warn!(node = %name, error = %e, "cannot record that the node took its handed-over credential");
        }
    }
    let writer = Writer { control: Arc::clone(&c), caller };
    // Subscribe before reading the backlog, so nothing falls in between.
    let rx = c.events.subscribe();
    let (mut backlog, cursor, last) = backlog(&c.store, q.after, &writer, c.has_quorum()).await?;
    if q.certificates {
        let certificates = c.store.certificates().await.map_err(ApiError::from)?;
        backlog.insert(0, writer.line(StreamLine::Certificates { certificates }));
    }
    let generation = match &writer.caller {
        Caller::Node { generation, .. } => Some(*generation),
        Caller::Fleet => None,
    };
    register(&c, &q, addrs, last, generation).await?;
    {
        let mut connected = c.connected.lock().unwrap_or_else(|p| p.into_inner());
        let streams = connected.entry(q.node.clone()).or_default();
        *streams += 1;
        if *streams == 1 {
            c.store.set_present(&q.node, true);
        }
    }
    let conn = Connection { control: Arc::clone(&c), node: q.node };
    Ok(ndjson(Body::from_stream(lines(backlog, rx, cursor, conn, writer))))
}

/// A stream's answer: JSON lines, never stored.
fn ndjson(body: Body) -> Response {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The query's names and addresses are well formed; the addresses in
/// canonical form.
fn check(q: &StreamQuery) -> Result<Vec<String>, ApiError> {
    let name_rule = "must be 1 to 63 letters, digits or hyphens";
    if !valid_name(&q.node) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_node", format!("node {name_rule}")));
    }
    if !matches!(q.role, Role::Edge | Role::Shield) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_role", "role must be `edge` or `shield`"));
    }
    if q.pop.as_deref().is_some_and(|p| !valid_name(p)) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_pop", format!("pop {name_rule}")));
    }
    listen_addrs(&q.addrs)
}

/// Most hard purges a snapshot carries one by one; past it, each site
/// with one is purged whole. Records of older ones are pruned
/// ([`Store::prune_purges`]).
pub(crate) const SNAPSHOT_PURGES: usize = 1000;

/// The lines a node that has applied through `after` needs: a snapshot when
/// the log no longer reaches back that far, or when the node is past the
/// log's end (a store restored from a backup, or made anew: its events
/// would otherwise all be taken for ones the node has, and skipped), then
/// every later event. Also the last sequence sent and the log's end.
/// `sure`: the store's reads are current (it has its quorum), so a node
/// ahead of them is truly ahead.
async fn backlog(store: &Store, after: u64, writer: &Writer, sure: bool) -> Result<(Vec<Bytes>, u64, u64), ApiError> {
    let first = store.first_seq().await.map_err(ApiError::from)?;
    let last = store.last_seq().await.map_err(ApiError::from)?;
    let mut lines = Vec::new();
    let mut cursor = after.min(last);
    // Ahead only as the quorum sees the log (a read that fails rather than
    // fall back on one member, which may lag), and only of a log that has
    // begun: an empty store (a mistake) must not make every node drop its
    // sites.
    let ahead = after > last && sure && last > 0 && {
        let (quorum_last, _) = store.sites_at_seq().await.map_err(ApiError::from)?;
        after > quorum_last && quorum_last > 0
    };
    if ahead {
        tracing::warn!(
            after,
            last,
            "a node has applied past the log's end (a store restored or made anew?): it gets a snapshot"
        );
    }
    if (after.saturating_add(1) < first && last > 0) || ahead {
        let mut certificates = store.certificates().await.map_err(ApiError::from)?;
        let sites = store
            .sites()
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(|s| SiteSnapshot {
                certificate: certificates.remove(&s.id),
                id: s.id,
                version: s.version,
                toml: s.toml,
                created_seq: s.created_seq,
            })
            .collect();
        // A log made anew: its purges' sequences say nothing of what the
        // node has seen, so all the hard ones go (folded past the cap).
        let since = if ahead { 0 } else { after };
        let records = store.purges_after(since).await.map_err(ApiError::from)?;
        let pruned = store.pruned_purges().await.map_err(ApiError::from)?;
        let pruned = pruned.into_iter().filter(|&(_, seq)| seq > since).map(|(site, _)| site).collect();
        let purges = snapshot_purges(records, pruned);
        lines.push(writer.line(StreamLine::Snapshot { seq: last, sites, purges }));
        cursor = last;
    }
    for record in store.events_after(cursor, usize::MAX).await.map_err(ApiError::from)? {
        cursor = record.seq;
        lines.push(writer.line(StreamLine::Event { record }));
    }
    Ok((lines, cursor, last))
}

/// The hard purges among `records`, at most [`SNAPSHOT_PURGES`] of them:
/// past that, or when the node missed hard purges whose records were
/// pruned (`pruned`: their sites), one that purges each of their sites
/// whole.
fn snapshot_purges(records: Vec<crate::store::PurgeRecord>, pruned: Vec<String>) -> Vec<outpost_config::Purge> {
    let hard: Vec<outpost_config::Purge> = records.into_iter().map(|r| r.purge).filter(|p| !p.soft).collect();
    if hard.len() <= SNAPSHOT_PURGES && pruned.is_empty() {
        return hard;
    }
    let mut sites: std::collections::BTreeMap<String, String> =
        pruned.into_iter().map(|site| (site, "pruned".to_string())).collect();
    sites.extend(hard.into_iter().map(|p| (p.site_id.clone(), p.id)));
    sites
        .into_iter()
        .map(|(site_id, id)| outpost_config::Purge {
            id,
            site_id,
            target: outpost_config::PurgeTarget::All,
            soft: false,
        })
        .collect()
}

/// Records the node in the registry, keeping what it acknowledged before.
async fn register(
    c: &Control,
    q: &StreamQuery,
    addrs: Vec<String>,
    last: u64,
    credential_generation: Option<u64>,
) -> Result<(), ApiError> {
    let store = &c.store;
    let previous = store.node(&q.node).await.map_err(ApiError::from)?;
    let node = NodeRecord {
        name: q.node.clone(),
        role: q.role,
        pop: q.pop.clone(),
        addrs,
        // Never ahead of the log: a node cannot claim events that do not exist.
        acked_seq: previous.as_ref().map_or(q.after, |p| p.acked_seq.max(q.after)).min(last),
        last_contact_ms: now_ms(),
        load_rps: previous.as_ref().and_then(|p| p.load_rps),
        hit_permille: previous.as_ref().and_then(|p| p.hit_permille),
        // Kept until the node says otherwise: a node that restarts with its
        // problem is not answered in between.
        problems: previous.map(|p| p.problems).unwrap_or_default(),
        credential_generation,
    };
    store.put_node(&node).await.map_err(ApiError::from)
}

/// The stream body: the backlog, then each live event after `cursor`, with
/// a heartbeat when nothing happens. `rx` subscribed before the backlog was
/// read, so every event committed since is in one or the other.
fn lines(
    backlog: Vec<Bytes>,
    rx: broadcast::Receiver<EventRecord>,
    cursor: u64,
    conn: Connection,
    writer: Writer,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    let heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let mut revoked = conn.control.revocations.changed.subscribe();
    revoked.mark_unchanged();
    futures_util::stream::unfold(
        (backlog.into_iter(), rx, cursor, heartbeat, conn, writer, revoked),
        |(mut backlog, mut rx, mut cursor, mut heartbeat, conn, writer, mut revoked)| async move {
            if let Some(b) = backlog.next() {
                return Some((Ok(b), (backlog, rx, cursor, heartbeat, conn, writer, revoked)));
            }
            let next = loop {
                tokio::select! {
                    _ = conn.control.closing.cancelled() => return None,
                    // Revoked here: look at once (elsewhere: at the heartbeat).
                    Ok(()) = revoked.changed() => {
                        if conn.revoked(&writer.caller).await {
                            return None;
                        }
                    }
                    r = rx.recv() => match r {
                        // Events committed at once can be published out of
                        // order: the ones between come from the log, so the
                        // node gets them in order rather than reconnecting.
                        Ok(record) if record.seq > cursor.saturating_add(1) => {
                            let want = usize::try_from(record.seq - cursor).unwrap_or(usize::MAX);
                            let between = conn.control.store.events_after(cursor, want).await.unwrap_or_default();
                            let whole = between.first().is_some_and(|r| r.seq == cursor + 1)
                                && between.last().is_some_and(|r| r.seq == record.seq);
                            if !whole {
                                cursor = record.seq;
                                break StreamLine::Event { record };
                            }
                            cursor = record.seq;
                            let mut lines = between.into_iter().map(|record| writer.line(StreamLine::Event { record }));
                            let first = lines.next().unwrap_or_default();
                            let rest: Vec<Bytes> = lines.collect();
                            return Some((Ok(first), (rest.into_iter(), rx, cursor, heartbeat, conn, writer, revoked)));
                        }
                        Ok(record) if record.seq > cursor => {
                            cursor = record.seq;
                            break StreamLine::Event { record };
                        }
                        Ok(_) => continue,
                        // Too far behind the live channel, or shutting down:
                        // end the stream; the node reconnects and replays.
                        Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return None,
                    },
                    _ = heartbeat.tick() => {
                        // A node acknowledges every heartbeat; one not heard
                        // from for three is gone, even if no FIN said so.
                        if conn.silent().await {
                            tracing::info!(node = %conn.node, "no word from the node: closing its stream");
                            return None;
                        }
                        if conn.revoked(&writer.caller).await {
                            return None;
                        }
                        let seq = conn.control.store.last_seq().await.unwrap_or(cursor);
                        break StreamLine::Heartbeat { seq, stale: !conn.control.has_quorum() };
                    }
                }
            };
            Some((Ok(writer.line(next)), (backlog, rx, cursor, heartbeat, conn, writer, revoked)))
        },
    )
}

pub(super) async fn ack(
    State(c): State<Arc<Control>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<StatusCode, ApiError> {
    let caller = c.node(&headers).await?;
    let a: Ack = super::json_body(&super::read_body(body).await?)?;
    caller.speaks_for(&a.node)?;
    if let Some(problems) = &a.problems
        && (problems.len() > MAX_PROBLEMS || problems.iter().any(|p| p.len() > MAX_PROBLEM_LEN))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_problems",
            format!("at most {MAX_PROBLEMS} problems of at most {MAX_PROBLEM_LEN} bytes each"),
        ));
    }
    let last = c.store.last_seq().await.map_err(ApiError::from)?;
    if a.seq > last {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ahead_of_log",
            format!("event {} does not exist yet; the log ends at {last}", a.seq),
        ));
    }
    let node = a.node.clone();
    let known = match c.store.node(&a.node).await.map_err(ApiError::from)? {
        Some(mut n) => {
            n.acked_seq = n.acked_seq.max(a.seq);
            n.last_contact_ms = now_ms();
            if a.load_rps.is_some() {
                n.load_rps = a.load_rps;
            }
            if let Some(p) = a.hit_permille {
                n.hit_permille = Some(p.min(1000));
            }
            if let Some(problems) = &a.problems
                && *problems != n.problems
            {
                tracing::info!(node = %n.name, ?problems, "the node reports how it serves");
                n.problems = problems.clone();
            }
            c.store.put_node(&n).await.map_err(ApiError::from)?;
            true
        }
        None => false,
    };
    if !known {
        // Only a node that opened its stream is in the registry.
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_node", format!("no node `{node}` is registered")));
    }
    {
        let mut acked = c.acked.lock().unwrap_or_else(|p| p.into_inner());
        let e = acked.entry(node).or_default();
        *e = (*e).max(a.seq);
    }
    c.ack_changed.send_modify(|v| *v += 1);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;

    /// Two events committed at once and published out of order (the
    /// second first) reach a stream in order: the one between is read from
    /// the log, rather than skipped, which made every node reconnect.
    #[tokio::test]
    async fn events_published_out_of_order_are_sent_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_file(&dir.path().join("c.redb")).await.unwrap();
        let control = Control::new(store, "a".into(), "n".into(), 1000, Duration::from_secs(60)).await.unwrap();
        let mut records = Vec::new();
        for _ in 0..3 {
            let p = control.store.add_purge("s", outpost_config::PurgeTarget::All, false).await.unwrap();
            records.push(EventRecord { seq: p.seq, at_ms: p.at_ms, event: outpost_config::Event::Purge(p.purge) });
        }
        let rx = control.events.subscribe();
        let writer = Writer { control: Arc::clone(&control), caller: Caller::Fleet };
        let conn = Connection { control: Arc::clone(&control), node: "edge-1".into() };
        let mut stream = Box::pin(lines(Vec::new(), rx, 1, conn, writer));
        control.events.send(records[2].clone()).unwrap();
        control.events.send(records[1].clone()).unwrap();
        let mut seqs = Vec::new();
        for _ in 0..2 {
            let line = tokio::time::timeout(Duration::from_secs(1), stream.next()).await.unwrap().unwrap().unwrap();
            match serde_json::from_slice::<StreamLine>(&line).unwrap() {
                StreamLine::Event { record } => seqs.push(record.seq),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seqs, [2, 3]);
    }

    /// A node behind hard purges whose records were pruned has each of
    /// their sites purged whole by its snapshot, with the sites of the
    /// records kept; a site whose pruned purges it had applied is left.
    #[tokio::test]
    async fn a_snapshot_purges_whole_the_sites_whose_missed_purges_were_pruned() {
        use outpost_config::{Purge, PurgeTarget};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_file(&dir.path().join("c.redb")).await.unwrap();
        let control = Control::new(store, "a".into(), "n".into(), 1, Duration::from_secs(60)).await.unwrap();
        for site in ["applied", "missed", "kept"] {
            let tags = PurgeTarget::Tags { tags: vec!["t".into()] };
            control.store.add_purge(site, tags, false).await.unwrap();
        }
        control.store.compact(1).await.unwrap();
        assert_eq!(control.store.prune_purges(1).await.unwrap(), 2);
        let writer = Writer { control: Arc::clone(&control), caller: Caller::Fleet };
        let (lines, _, _) = backlog(&control.store, 1, &writer, true).await.unwrap();
        let purges = match serde_json::from_slice::<StreamLine>(&lines[0]).unwrap() {
            StreamLine::Snapshot { purges, .. } => purges,
            other => panic!("{other:?}"),
        };
        let whole =
            |site: &str, id: &str| Purge { id: id.into(), site_id: site.into(), target: PurgeTarget::All, soft: false };
        assert_eq!(purges, [whole("kept", "p3"), whole("missed", "pruned")]);
    }

    /// Publishing now and then prunes the purge records no snapshot needs.
    #[tokio::test]
    async fn publishing_prunes_purge_records_now_and_then() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_file(&dir.path().join("c.redb")).await.unwrap();
        let control = Control::new(store, "a".into(), "n".into(), 1, Duration::from_secs(60)).await.unwrap();
        let mut last = None;
        for _ in 0..super::super::PRUNE_EVERY {
            last = Some(control.store.add_purge("s", outpost_config::PurgeTarget::All, false).await.unwrap());
        }
        let p = last.unwrap();
        control.publish(EventRecord { seq: p.seq, at_ms: p.at_ms, event: outpost_config::Event::Purge(p.purge) }).await;
        // All but the last SNAPSHOT_PURGES records go (purge n is logged
        // at n).
        let gone = super::super::PRUNE_EVERY - SNAPSHOT_PURGES as u64;
        outpost_testkit::eventually("the records to be pruned", || async {
            control.store.purge(&format!("p{gone}")).await.unwrap().is_none()
        })
        .await;
        assert!(control.store.purge(&format!("p{}", gone + 1)).await.unwrap().is_some());
        assert_eq!(control.store.pruned_purges().await.unwrap()["s"], gone);
    }
}
