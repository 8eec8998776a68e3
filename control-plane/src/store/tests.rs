//! One battery of store tests, run against every backend.

use super::*;
use outpost_config::Event;

fn node(name: &str, acked_seq: u64) -> NodeRecord {
    NodeRecord {
        load_rps: None,
        hit_permille: None,
        name: name.into(),
        role: outpost_config::Role::Edge,
        pop: Some("fra".into()),
        addrs: vec!["127.0.0.1:8080".into()],
        acked_seq,
        last_contact_ms: 1,
        problems: vec!["every shield is down".into()],
        credential_generation: Some(2),
    }
}

/// A PoP's weight is kept, replaced by the next one set, and nothing is
/// logged for it (nodes do not follow it; DNS servers read it).
pub(crate) async fn pop_weights_are_kept_and_replaced(s: &Store) {
    assert!(s.pops().await.unwrap().is_empty());
    let drained = PopRecord { name: "fra".into(), weight: 0, reason: Some("fibre work".into()), updated_ms: 5 };
    s.put_pop(&drained).await.unwrap();
    s.put_pop(&PopRecord { name: "iad".into(), weight: 40, reason: None, updated_ms: 6 }).await.unwrap();
    assert_eq!(s.pops().await.unwrap()[0], drained);
    s.put_pop(&PopRecord { name: "fra".into(), weight: 100, reason: None, updated_ms: 7 }).await.unwrap();
    let weights: Vec<(String, u8)> = s.pops().await.unwrap().into_iter().map(|p| (p.name, p.weight)).collect();
    assert_eq!(weights, [("fra".to_string(), 100), ("iad".to_string(), 40)]);
    assert_eq!(s.last_seq().await.unwrap(), 0);
}

/// Sites, the log, purges, the registry and compaction, on an empty store.
pub(crate) async fn log_sites_purges_and_nodes(s: &Store) {
    assert_eq!(s.last_seq().await.unwrap(), 0);
    assert_eq!(s.first_seq().await.unwrap(), 1);
    let e = s.upsert_site("a", "[site]", None).await.unwrap();
    assert_eq!(e.seq, 1);
    let e = s.upsert_site("a", "[site] v2", Some(1)).await.unwrap();
    assert!(matches!(e.event, Event::SiteUpserted { version: 2, .. }), "{e:?}");
    assert_eq!(s.site("a").await.unwrap().unwrap().toml, "[site] v2");
    let p = s.add_purge("a", PurgeTarget::All, true).await.unwrap();
    assert_eq!((p.purge.id.as_str(), p.seq), ("p1", 3));
    assert_eq!(s.purge("p1").await.unwrap().unwrap(), p);
    assert!(s.purge("p2").await.unwrap().is_none());
    assert_eq!(s.purges_after(2).await.unwrap(), std::slice::from_ref(&p), "a snapshot from 2 carries it");
    assert!(s.purges_after(3).await.unwrap().is_empty());
    assert!(s.delete_site("nope").await.unwrap().is_none());
    assert_eq!(s.last_seq().await.unwrap(), 3, "refusing to delete what is not there logs nothing");
    s.put_node(&node("edge-1", 3)).await.unwrap();
    s.put_node(&node("edge-2", 1)).await.unwrap();
    assert_eq!(s.nodes().await.unwrap()["edge-1"], node("edge-1", 3));
    s.remove_node("edge-2").await.unwrap();
    assert_eq!(s.nodes().await.unwrap().keys().collect::<Vec<_>>(), ["edge-1"]);
    let events = s.events_after(1, 10).await.unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(s.events_after(0, 1).await.unwrap().len(), 1, "at most `limit`");
    assert_eq!(s.site("a").await.unwrap().unwrap().created_seq, 1, "an update keeps the site's creation");
    let deleted = s.delete_site("a").await.unwrap().unwrap();
    assert_eq!(deleted.seq, 4);
    assert!(s.sites().await.unwrap().is_empty());
    assert_eq!(s.compact(1).await.unwrap(), 3);
    assert_eq!(s.first_seq().await.unwrap(), 4);
    assert_eq!(s.compact(1).await.unwrap(), 0, "nothing more to drop");
    assert_eq!(s.events_after(0, 10).await.unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), [4]);
    let again = s.upsert_site("a", "[site] another", None).await.unwrap();
    assert_eq!(s.site("a").await.unwrap().unwrap().created_seq, again.seq, "created again: a creation of its own");
}

/// Purge records leave once the log has moved past them and enough hard
/// purges came after them; each pruned hard purge marks its site, and a
/// mark only goes forward.
pub(crate) async fn purge_records_are_pruned_once_no_snapshot_needs_them(s: &Store) {
    let tag = |t: &str| PurgeTarget::Tags { tags: vec![t.to_string()] };
    for (site, soft) in [("a", false), ("d", true), ("b", false), ("a", false), ("c", false), ("c", false)] {
        s.add_purge(site, tag(site), soft).await.unwrap();
    }
    assert_eq!(s.compact(3).await.unwrap(), 3);
    assert_eq!(s.prune_purges(10).await.unwrap(), 1, "fewer hard purges than kept: only the soft one goes");
    assert!(s.pruned_purges().await.unwrap().is_empty(), "a soft purge leaves no mark");
    assert!(s.purge("p2").await.unwrap().is_none());
    // The last three hard purges are logged at 4, 5 and 6: what came
    // before 4 goes.
    assert_eq!(s.prune_purges(3).await.unwrap(), 2);
    let marks = |m: &[(&str, u64)]| m.iter().map(|&(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>();
    assert_eq!(s.pruned_purges().await.unwrap(), marks(&[("a", 1), ("b", 3)]));
    assert!(s.purge("p1").await.unwrap().is_none() && s.purge("p3").await.unwrap().is_none());
    assert_eq!(s.purges_after(0).await.unwrap().iter().map(|p| p.seq).collect::<Vec<_>>(), [4, 5, 6]);
    // Records still in the log stay, however many hard purges follow.
    assert_eq!(s.prune_purges(0).await.unwrap(), 0);
    assert_eq!(s.compact(1).await.unwrap(), 2);
    assert_eq!(s.prune_purges(0).await.unwrap(), 2);
    assert_eq!(s.pruned_purges().await.unwrap(), marks(&[("a", 4), ("b", 3), ("c", 5)]));
    assert_eq!(s.purge("p6").await.unwrap().unwrap().seq, 6);
}

/// An upsert from a stale version is refused and logs nothing; of many
/// writers racing from the same version, exactly one wins.
pub(crate) async fn upserts_are_compare_and_swap(s: &Store) {
    s.upsert_site("cas", "v1", None).await.unwrap();
    let last = s.last_seq().await.unwrap();
    assert!(matches!(s.upsert_site("cas", "again", None).await, Err(StoreError::Conflict(_))));
    assert!(matches!(s.upsert_site("cas", "from the future", Some(7)).await, Err(StoreError::Conflict(_))));
    assert_eq!(s.last_seq().await.unwrap(), last);
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.upsert_site("cas", &format!("racer {i}"), Some(1)).await })
        })
        .collect();
    let mut won = Vec::new();
    for (i, r) in racers.into_iter().enumerate() {
        match r.await.unwrap() {
            Ok(_) => won.push(i),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one writer wins: {won:?}");
    let site = s.site("cas").await.unwrap().unwrap();
    assert_eq!((site.version, site.toml), (2, format!("racer {}", won[0])));
    assert_eq!(s.last_seq().await.unwrap(), last + 1);
}

/// A site write checked against the sites as they were at a sequence
/// number is refused, writing nothing, once another site was written or
/// deleted since, or the events between are compacted away; other events
/// between (purges) do not stop it. The sites and the number are read
/// together.
pub(crate) async fn a_checked_site_write_is_refused_once_another_site_moved(s: &Store) {
    let ids = |sites: &[SiteRecord]| sites.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    let (at, none) = s.sites_at_seq().await.unwrap();
    assert_eq!((at, ids(&none)), (s.last_seq().await.unwrap(), vec![]));
    s.upsert_site("one", "[site] 1", None).await.unwrap();
    let (checked, sites) = s.sites_at_seq().await.unwrap();
    assert_eq!((checked, ids(&sites)), (s.last_seq().await.unwrap(), vec!["one".to_string()]));
    assert_eq!(sites[0].toml, "[site] 1");
    s.add_purge("one", PurgeTarget::All, false).await.unwrap();
    s.upsert_site_checked("two", "[site] 2", None, checked).await.expect("only a purge came between");
    for moved in ["written", "deleted", "compacted"] {
        let (checked, _) = s.sites_at_seq().await.unwrap();
        match moved {
            "written" => drop(s.upsert_site("one", "[site] 1 again", Some(1)).await.unwrap()),
            "deleted" => drop(s.delete_site("two").await.unwrap()),
            _ => {
                s.add_purge("one", PurgeTarget::All, false).await.unwrap();
                s.add_purge("one", PurgeTarget::All, false).await.unwrap();
                assert!(s.compact(1).await.unwrap() > 0);
            }
        }
        let last = s.last_seq().await.unwrap();
        let got = s.upsert_site_checked("three", "[site] 3", None, checked).await;
        assert!(matches!(got, Err(StoreError::SitesMoved)), "another site {moved}: {got:?}");
        assert_eq!((s.site("three").await.unwrap(), s.last_seq().await.unwrap()), (None, last), "nothing written");
    }
    let checked = s.last_seq().await.unwrap();
    s.upsert_site_checked("three", "[site] 3", None, checked).await.expect("checked again, it goes");
}

/// Concurrent purges each take their own sequence number and purge id.
pub(crate) async fn concurrent_writes_get_one_order(s: &Store) {
    let base = s.last_seq().await.unwrap();
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(
                async move { s.add_purge("a", PurgeTarget::Urls { urls: vec![format!("/{i}")] }, false).await },
            )
        })
        .collect();
    let mut seqs = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for w in writers {
        let p = w.await.unwrap().unwrap();
        seqs.push(p.seq);
        ids.insert(p.purge.id);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (base + 1..=base + 16).collect::<Vec<_>>());
    assert_eq!(ids.len(), 16);
    let logged = s.events_after(base, 100).await.unwrap();
    assert_eq!(logged.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs, "the log holds them in order, no gap");
}

async fn redb() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_file(&dir.path().join("c.redb")).await.unwrap();
    (dir, s)
}

#[tokio::test]
async fn a_redb_file_keeps_everything_and_refuses_a_second_opener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.redb");
    {
        let s = Store::open_file(&path).await.unwrap();
        s.upsert_site("a", "[site]", None).await.unwrap();
        s.add_purge("a", PurgeTarget::All, true).await.unwrap();
        s.put_node(&node("edge-1", 2)).await.unwrap();
        assert!(matches!(Store::open_file(&path).await, Err(StoreError::InUse(_))), "a second opener is refused");
    }
    let s = Store::open_file(&path).await.unwrap();
    assert_eq!(s.last_seq().await.unwrap(), 2);
    assert_eq!(s.site("a").await.unwrap().unwrap().version, 1);
    assert_eq!(s.purge("p1").await.unwrap().unwrap().seq, 2);
    assert_eq!(s.nodes().await.unwrap()["edge-1"].acked_seq, 2);
}

/// A store on a fresh three-member etcd cluster (kept alive beside it).
async fn etcd() -> (outpost_testkit::etcd::EtcdCluster, Store) {
    let cluster = outpost_testkit::etcd::EtcdCluster::start(3).await;
    let s = Store::open(&on(cluster.endpoints()), "test-a").await.unwrap();
    (cluster, s)
}

/// The etcd history is compacted to where the previous turn found it: a
/// read at an older revision is refused as compacted, the store's own
/// reads go on, and a turn behind another replica's is no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_history_is_compacted_to_the_previous_turn() {
    let (cluster, s) = etcd().await;
    s.upsert_site("a", "[site] 1", None).await.unwrap();
    let first = s.compact_history(0).await.unwrap();
    assert!(first > 0);
    for v in 2..5 {
        s.upsert_site("a", &format!("[site] {v}"), Some(v - 1)).await.unwrap();
    }
    let second = s.compact_history(first).await.unwrap();
    assert!(second > first, "{first} then {second}");
    let mut client = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let old = client.get("/test/", Some(etcd_client::GetOptions::new().with_prefix().with_revision(first - 1))).await;
    assert!(old.is_err_and(|e| e.to_string().contains("compacted")), "a revision before the turn is gone");
    let kept = client.get("/test/", Some(etcd_client::GetOptions::new().with_prefix().with_revision(first))).await;
    assert!(kept.is_ok(), "the turn's own revision stays readable");
    assert_eq!(s.site("a").await.unwrap().unwrap().version, 4);
    assert!(s.compact_history(first).await.is_ok(), "compacting to where it stands already");
}

/// Replies over gRPC's default 4 MiB are read: sites that total more, and
/// a backlog of events as large, would otherwise fail every read as if
/// the cluster had no quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_replies_over_four_mebibytes_are_read() {
    let (_cluster, s) = etcd().await;
    // A site's text goes into one write three times (the site, its
    // history, the event), within etcd's 1.5 MiB request limit.
    let big = "#".repeat(400 << 10);
    for i in 0..12 {
        s.upsert_site(&format!("s{i}"), &format!("{big}\n[site] {i}"), None).await.unwrap();
    }
    assert_eq!(s.sites().await.unwrap().len(), 12);
    let (seq, sites) = s.sites_at_seq().await.unwrap();
    assert_eq!((seq, sites.len()), (12, 12));
    assert_eq!(s.events_after(0, usize::MAX).await.unwrap().len(), 12);
}

/// The store on the members at `endpoints`, under the tests' prefix.
fn on(endpoints: Vec<String>) -> StoreBackend {
    StoreBackend::Etcd(outpost_config::EtcdStore {
        endpoints,
        prefix: "/test/".into(),
        ca: None,
        identity: None,
        user: None,
        compact_every: outpost_config::DEFAULT_ETCD_COMPACT_EVERY,
    })
}

/// Two stores on one cluster (two replicas' view) write one log: each sees
/// the other's writes, and their races are settled as one writer's are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_etcd_clients_share_one_log() {
    let (cluster, a) = etcd().await;
    let b = Store::open(&on(cluster.endpoints().into_iter().rev().collect()), "test-b").await.unwrap();
    a.upsert_site("s", "from a", None).await.unwrap();
    assert_eq!(b.site("s").await.unwrap().unwrap().toml, "from a");
    assert!(matches!(b.upsert_site("s", "from b", None).await, Err(StoreError::Conflict(_))));
    b.upsert_site("s", "from b", Some(1)).await.unwrap();
    let writers: Vec<_> = (0..20)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { s.add_purge("s", PurgeTarget::All, false).await.unwrap().seq })
        })
        .collect();
    let mut seqs = Vec::new();
    for w in writers {
        seqs.push(w.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (3..23).collect::<Vec<_>>(), "one order, no gap, none twice");
    assert_eq!(a.events_after(0, 100).await.unwrap(), b.events_after(0, 100).await.unwrap());
}

/// A site's last [`HISTORY`] versions are kept, newest first, apart from
/// another site whose id starts the same; a deleted site's history goes
/// with it, so a site made again under that id starts afresh.
pub(crate) async fn site_history_keeps_the_last_versions(s: &Store) {
    let mut base = None;
    for v in 1..=HISTORY + 3 {
        s.upsert_site("a", &format!("[site] v{v}"), base).await.unwrap();
        base = Some(v);
    }
    s.upsert_site("ab", "[site] other", None).await.unwrap();
    let history = s.site_history("a").await.unwrap();
    let versions: Vec<u64> = history.iter().map(|r| r.version).collect();
    assert_eq!(versions, (4..=HISTORY + 3).rev().collect::<Vec<_>>());
    assert_eq!(history[0].toml, format!("[site] v{}", HISTORY + 3));
    assert_eq!(history[0], s.site("a").await.unwrap().unwrap(), "the newest is the current one");
    assert_eq!(history.last().unwrap().toml, "[site] v4");
    assert_eq!(s.site_history("ab").await.unwrap().len(), 1);
    s.delete_site("a").await.unwrap().unwrap();
    assert!(s.site_history("a").await.unwrap().is_empty());
    s.upsert_site("a", "[site] again", None).await.unwrap();
    let again: Vec<(u64, String)> =
        s.site_history("a").await.unwrap().into_iter().map(|r| (r.version, r.toml)).collect();
    assert_eq!(again, [(1, "[site] again".to_string())]);
    assert_eq!(s.site_history("ab").await.unwrap().len(), 1, "another site's history stays");
}

/// A site's certificate is stored with its event and goes with the site;
/// a certificate or challenge for a site that does not exist logs
/// nothing; records swap only from what the writer saw.
pub(crate) async fn certificates_and_records(s: &Store) {
    let cert = outpost_config::IssuedCertificate {
        chain_pem: "-----BEGIN CERTIFICATE-----".into(),
        sealed_key: "00ff".into(),
        names: vec!["shop.test".into()],
        not_before_ms: 1_000,
        not_after_ms: 91_000,
    };
    assert_eq!(cert.renew_at_ms(), 61_000, "a third of the lifetime left");
    assert_eq!(s.put_certificate("shop", &cert).await.unwrap(), None, "no such site");
    assert_eq!(s.log_challenge("shop", "tok", "tok.thumb", 5).await.unwrap(), None);
    let last = s.last_seq().await.unwrap();
    s.upsert_site("shop", "[site]", None).await.unwrap();
    let rec = s.put_certificate("shop", &cert).await.unwrap().unwrap();
    assert_eq!(rec.seq, last + 2);
    assert!(
        matches!(&rec.event, Event::Certificate { site_id, certificate } if site_id == "shop" && *certificate == cert)
    );
    assert_eq!(s.certificate("shop").await.unwrap(), Some(cert.clone()));
    assert_eq!(s.certificates().await.unwrap().into_iter().collect::<Vec<_>>(), [("shop".to_string(), cert.clone())]);
    let ch = s.log_challenge("shop", "tok", "tok.thumb", 5).await.unwrap().unwrap();
    assert_eq!(s.events_after(rec.seq, 10).await.unwrap(), [ch]);
    s.delete_site("shop").await.unwrap().unwrap();
    assert_eq!(s.certificate("shop").await.unwrap(), None, "a deleted site's certificate goes with it");

    assert_eq!(s.record("acme/account").await.unwrap(), None);
    assert!(s.swap_record("acme/account", None, Some("a1".into())).await.unwrap());
    assert!(!s.swap_record("acme/account", None, Some("a2".into())).await.unwrap(), "it exists now");
    assert!(!s.swap_record("acme/account", Some("zz".into()), Some("a2".into())).await.unwrap());
    assert_eq!(s.record("acme/account").await.unwrap().as_deref(), Some("a1"));
    assert!(s.swap_record("acme/account", Some("a1".into()), Some("a2".into())).await.unwrap());
    assert!(s.swap_record("acme/account", Some("a2".into()), None).await.unwrap());
    assert_eq!(s.record("acme/account").await.unwrap(), None);
}

/// Every test of the battery, once on each backend.
macro_rules! battery {
    ($($test:ident),* $(,)?) => {
        mod on_redb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (_dir, s) = super::redb().await;
                    super::$test(&s).await;
                }
            )*
        }
        mod on_etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (_cluster, s) = super::etcd().await;
                    super::$test(&s).await;
                }
            )*
        }
    };
}

battery!(
    log_sites_purges_and_nodes,
    upserts_are_compare_and_swap,
    a_checked_site_write_is_refused_once_another_site_moved,
    concurrent_writes_get_one_order,
    pop_weights_are_kept_and_replaced,
    site_history_keeps_the_last_versions,
    certificates_and_records,
    purge_records_are_pruned_once_no_snapshot_needs_them
);

/// A record in the cluster that is not what the control plane wrote (a
/// broken tool, a hand edit) is an error naming its key, never a panic,
/// and leaves the other records readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_in_etcd_is_an_error_naming_its_key() {
    let (cluster, s) = etcd().await;
    s.upsert_site("good", "[site]", None).await.unwrap();
    let put = |key: &str, value: &str| {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", cluster.endpoints().join(",")))
            .args(["put", key, value])
            .output()
            .expect("etcdctl runs (scripts/deps.sh installs it)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    put("/test/sites/bad", "{not json");
    let e = s.sites().await.expect_err("a corrupt record is reported");
    assert!(matches!(&e, StoreError::Db(m) if m.contains("/test/sites/bad")), "{e}");
    assert!(s.site("bad").await.is_err());
    assert_eq!(s.site("good").await.unwrap().unwrap().toml, "[site]");
    put("/test/meta/seq", "minus one");
    assert!(s.add_purge("good", PurgeTarget::All, false).await.is_err(), "a corrupt counter stops writes");
    assert!(s.last_seq().await.is_err());
}
