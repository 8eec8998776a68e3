//! `outpost up`, run in this process with the example configuration moved
//! to other addresses, and `outpost load` against it: a scenario whose thresholds hold exits 0,
//! one with a threshold that cannot hold exits 99.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn outpost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
}

/// The repository's `config/` with every address moved: 127.0.0.1 becomes
/// 127.0.0.40, the edges 127.0.0.41 to .43, and the ports 10000 up, so
/// nothing collides with an `outpost up` already running on this machine
/// or with other tests.
pub(crate) fn moved_config(to: &Path, base: u8) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    std::fs::create_dir_all(to.join("geoip")).unwrap();
    std::fs::copy(from.join("geoip/sample.mmdb"), to.join("geoip/sample.mmdb")).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") || path.file_name().is_some_and(|n| n == "Cargo.toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("127.0.0.1:", &format!("127.0.0.{base}:"))
            .replace("127.0.0.11", &format!("127.0.0.{}", base + 1))
            .replace("127.0.0.12", &format!("127.0.0.{}", base + 2))
            .replace("127.0.0.13", &format!("127.0.0.{}", base + 3))
            // and every port by 10000.
            .replace(":8080", ":18080")
            .replace(":8443", ":18443")
            .replace(":9090", ":19090")
            .replace(":8101", ":18101")
            .replace(":8102", ":18102")
            .replace(":9201", ":19201")
            .replace(":9202", ":19202")
            .replace(":7000", ":17000")
            .replace(":5353", ":15353")
            .replace(":9053", ":19053")
            .replace(":9000", ":19000");
        std::fs::write(to.join(path.file_name().unwrap()), text).unwrap();
    }
}

fn scenario(dir: &Path, name: &str, thresholds: &str) -> std::path::PathBuf {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "[target]\nurls = [\"http://127.0.0.41:18080\", \"http://127.0.0.42:18080\", \"http://127.0.0.43:18080\"]\n\
             host = \"www.example.test\"\norigin = \"http://127.0.0.40:19000\"\n\
             [executor]\ntype = \"constant-vus\"\nvus = 6\nduration = \"2s\"\n\
             [requests]\npath = \"/{name}/{{n}}?size=1KiB&cc=max-age%3D600\"\nobjects = 20\n\
             [[check]]\nname = \"status is 200\"\nstatus = 200\n\
             [[action]]\nname = \"purge\"\nat = \"1s\"\nurl = \"http://127.0.0.40:17000/v1/purge\"\n\
             body = '{{\"site\": \"example\", \"prefix\": \"/{name}/\"}}'\ntoken_file = \".outpost/admin.token\"\n\
             [thresholds]\n{thresholds}\n"
        ),
    )
    .unwrap();
    file
}

/// A target that takes connections and answers nothing fails the run:
/// each request still waiting when the run ends counts as failed, and no
/// threshold passes for want of requests.
#[test]
fn a_target_that_answers_nothing_fails_the_run() {
    let dir = outpost_testkit::tempdir();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Takes connections and keeps them, unanswered, until the test ends.
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(64).collect();
        drop(held);
    });
    // Closed VUs, and arrivals at a rate (two VUs, both taken by the first
    // two arrivals for good).
    let executors = [
        "type = \"constant-vus\"\nvus = 2\nduration = \"1s\"\n",
        "type = \"constant-arrival-rate\"\nrate = 4\nduration = \"1s\"\npre_allocated_vus = 2\n",
    ];
    for (i, executor) in executors.into_iter().enumerate() {
        let file = dir.path().join(format!("hung{i}.toml"));
        std::fs::write(
            &file,
            format!(
                "[target]\nurls = [\"http://{addr}\"]\n[executor]\n{executor}[requests]\npath = \"/x\"\nobjects = 1\n\
                 [thresholds]\nhttp_req_failed = [\"rate<0.01\"]\nhttp_req_duration = [\"p(95)<20ms\"]\n"
            ),
        )
        .unwrap();
        let json = dir.path().join(format!("hung{i}.json"));
        let out = outpost()
            .args(["load", "-q", "--out"])
            .arg(format!("json={}", json.display()))
            .arg(&file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(99), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(json["metrics"]["http_reqs"]["count"], 2, "one request per VU, each never answered: {json}");
        assert_eq!(json["metrics"]["http_req_failed"]["fails"], 2, "{json}");
    }
}

/// An origin (`[target] origin`) whose counters never come, and an action
/// whose answer never comes, do not hold the run: the first ends it with a
/// reason, the second counts as a failed action.
#[test]
fn a_peer_that_holds_an_action_or_the_origins_counters_does_not_hold_the_run() {
    let dir = outpost_testkit::tempdir();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = listener.local_addr().unwrap();
    // Reads each request and answers only a head: the body never comes.
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for mut conn in listener.incoming().take(64).flatten() {
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = std::io::Write::write_all(&mut conn, b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{");
            kept.push(conn);
        }
    });
    let run = |name: &str, scenario: String| {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, scenario).unwrap();
        let json = dir.path().join(format!("{name}.json"));
        let mut child = outpost()
            .args(["load", "-q", "--out"])
            .arg(format!("json={}", json.display()))
            .arg(&file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name}: the run was still going after 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (child.wait_with_output().unwrap(), json)
    };
    let executor =
        "[executor]\ntype = \"constant-vus\"\nvus = 1\nduration = \"1s\"\n[requests]\npath = \"/x\"\nobjects = 1\n";
    let (out, _) =
        run("origin", format!("[target]\nurls = [\"http://{held}\"]\norigin = \"http://{held}\"\n{executor}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("sent no whole stats"), "{stderr}");
    let (out, json) = run(
        "action",
        format!(
            "[target]\nurls = [\"http://{held}\"]\n{executor}\
             [[action]]\nname = \"held\"\nat = \"0s\"\nurl = \"http://{held}/v1/purge\"\nbody = '{{}}'\n"
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code().is_some(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(json["metrics"]["actions"][0]["failed"], 1, "{json}");
    assert_eq!(json["metrics"]["actions"][0]["ok"], 0, "{json}");
}

/// `up` (with `ha`, `up --ha`) on the example files moved to addresses
/// from `127.0.0.<base>`, in `d`, running until the token is cancelled.
pub(crate) async fn start_up(
    d: &Path,
    base: u8,
    ha: bool,
) -> (tokio_util::sync::CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    moved_config(&d.join("config"), base);
    let stop = tokio_util::sync::CancellationToken::new();
    let (ready, up_ready) = tokio::sync::oneshot::channel();
    let (config, data) = (d.join("config"), d.join(".outpost"));
    let up_stop = stop.clone();
    let up = tokio::spawn(async move { outpost::up::run_until(&config, &data, ha, up_stop, Some(ready)).await });
    tokio::time::timeout(Duration::from_secs(60), up_ready).await.expect("up did not come up").unwrap();
    (stop, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_runs_against_up_and_a_failed_threshold_exits_99() {
    let dir = outpost_testkit::tempdir();
    let d = dir.path();
    let (stop, up) = start_up(d, 40, false).await;
    // HTTPS on every edge, with the certificate `up` issued from its CA.
    assert!(tokio::net::TcpStream::connect("127.0.0.41:18443").await.is_ok());
    assert!(d.join(".outpost/tls/ca.pem").is_file());
    // DNS steers a London client to the fra edge, and counts it on its
    // admin listener.
    let dns = "127.0.0.40:15353".parse().unwrap();
    let london = crate::topology::dns_a(dns, "example.cdn.example.test.").await;
    assert_eq!(london, vec!["127.0.0.41".parse::<std::net::IpAddr>().unwrap()]);
    let metrics =
        crate::topology::request(http::Method::GET, "http://127.0.0.40:19053/metrics", "x", None, "").await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(metrics.contains("outpost_dns_queries_total{node=\"dns\",type=\"A\",rcode=\"noerror\"} "), "{metrics}");

    let out = outpost()
        .current_dir(d)
        .args(["load", "-q", "--out"])
        .arg(format!("json={}", d.join("pass.json").display()))
        .arg("--report")
        .arg(d.join("pass.html"))
        .arg(scenario(
            d,
            "pass",
            // No hit-ratio threshold: how many requests (and so hits) fit
            // in the run depends on what else the machine runs; the misses
            // are checked below.
            "http_req_failed = [\"rate<0.01\"]\norigin_requests = [\"count<=40\"]\nchecks = [\"rate>0.99\"]",
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("✓ origin_requests count<=40"), "{stdout}");
    assert!(stdout.contains("action purge") && stdout.contains("1 ok, 0 failed"), "{stdout}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("pass.json")).unwrap()).unwrap();
    let reqs = json["metrics"]["http_reqs"]["count"].as_u64().unwrap();
    let origin = json["metrics"]["origin_requests"].as_u64().unwrap();
    // 20 objects, fetched once, then again after the purge.
    assert!((20..=40).contains(&origin), "{origin} origin requests");
    // Everything else was a hit at the edge. The misses: each edge's first
    // request per object, before and after the purge (20 × 3 × 2), and
    // those that waited on one (at most the 6 VUs, per edge and phase).
    // How many requests fit in the run depends on the machine and what
    // else runs on it; the misses do not.
    let hits = json["metrics"]["cache_hit_ratio"]["hits"].as_u64().unwrap();
    assert!(reqs - hits <= 20 * 3 * 2 + 6 * 3 * 2, "{hits} hits of {reqs} requests for {origin} origin fetches");
    assert!(json["series"].as_array().unwrap().len() >= 2);
    let html = std::fs::read_to_string(d.join("pass.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Latency over time"));

    let out = outpost()
        .current_dir(d)
        .args(["load", "-q", "--summary-export"])
        .arg(d.join("fail-summary.json"))
        .arg(scenario(d, "fail", "http_req_duration = [\"p(99)<1us\"]\nhttp_req_failed = [\"rate<0.01\"]"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(99), "{stdout}");
    assert!(stdout.contains("✗ http_req_duration p(99)<1us"), "{stdout}");
    assert!(stdout.contains("✓ http_req_failed rate<0.01"), "{stdout}");
    // A failed threshold is `true` in k6's export.
    let k6: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("fail-summary.json")).unwrap()).unwrap();
    assert_eq!(k6["metrics"]["http_req_duration"]["thresholds"]["p(99)<1us"], true);
    assert_eq!(k6["metrics"]["http_req_failed"]["thresholds"]["rate<0.01"], false);

    // By name, through Outpost's own geo-DNS, with k6's summary export.
    let dns_queries = || async {
        let m = crate::topology::request(http::Method::GET, "http://127.0.0.40:19053/metrics", "x", None, "").await;
        let m = String::from_utf8_lossy(&m.unwrap().body).into_owned();
        m.lines()
            .filter(|l| l.starts_with("outpost_dns_queries_total{") && l.contains("type=\"A\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let asked_before = dns_queries().await;
    let named = scenario(d, "named", "http_req_failed = [\"rate<0.01\"]\nhttp_req_duration = [\"p(95)<10s\"]");
    let text = std::fs::read_to_string(&named).unwrap().replace(
        "urls = [\"http://127.0.0.41:18080\", \"http://127.0.0.42:18080\", \"http://127.0.0.43:18080\"]",
        "urls = [\"http://example.cdn.example.test:18080\"]\ndns = \"127.0.0.40:15353\"",
    );
    assert!(text.contains("example.cdn.example.test"));
    std::fs::write(&named, text).unwrap();
    let export = d.join("k6-summary.json");
    let out =
        outpost().current_dir(d).args(["load", "-q", "--summary-export"]).arg(&export).arg(&named).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(dns_queries().await > asked_before, "the name was resolved through outpost dns");
    // What the summary printed, read back from the export.
    let printed = |metric: &str| -> Vec<String> {
        let line =
            stdout.lines().find(|l| l.contains(&format!(" {metric}."))).unwrap_or_else(|| panic!("{metric}: {stdout}"));
        line.split(": ").nth(1).unwrap().split_whitespace().map(str::to_string).collect()
    };
    let k6: serde_json::Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    let m = &k6["metrics"];
    let reqs = m["http_reqs"]["count"].as_u64().unwrap();
    assert!(reqs > 0);
    assert_eq!(printed("http_reqs")[0], reqs.to_string());
    let failed = printed("http_req_failed");
    assert_eq!(failed[2], m["http_req_failed"]["passes"].to_string(), "{failed:?}");
    assert_eq!(failed[4], m["http_req_failed"]["fails"].to_string(), "{failed:?}");
    let hits = printed("cache_hit_ratio");
    assert_eq!(hits[2], m["cache_hit_ratio"]["passes"].to_string());
    assert_eq!(printed("vus_max")[0], m["vus_max"]["value"].to_string());
    assert_eq!(printed("checks")[2], m["checks"]["passes"].to_string());
    let p95 = printed("http_req_duration").iter().find_map(|v| v.strip_prefix("p(95)=").map(str::to_string)).unwrap();
    let exported = m["http_req_duration"]["p(95)"].as_f64().unwrap();
    // Printed rounded, in µs, ms or s.
    let (value, unit_ms, rounding) = if let Some(v) = p95.strip_suffix("µs") {
        (v, 0.001, 0.0005)
    } else if let Some(v) = p95.strip_suffix("ms") {
        (v, 1.0, 0.005)
    } else {
        (p95.strip_suffix('s').unwrap(), 1000.0, 5.0)
    };
    let printed_ms = value.parse::<f64>().unwrap() * unit_ms;
    assert!((printed_ms - exported).abs() <= rounding + 1e-9, "printed p(95)={p95}, exported {exported} ms");
    // Thresholds: expression -> failed, as k6 writes them.
    assert_eq!(m["http_req_failed"]["thresholds"]["rate<0.01"], false);
    assert_eq!(m["http_req_duration"]["thresholds"]["p(95)<10s"], false);
    assert_eq!(k6["root_group"]["checks"][0]["name"], "status is 200");
    assert!(k6["state"]["testRunDurationMs"].as_f64().unwrap() >= 2000.0);

    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(60), up).await.expect("up did not stop");
    stopped.unwrap().expect("up stops cleanly");
}

/// `up --ha`: the control plane as two replicas on a local three-member
/// etcd cluster; either replica serves the API, and a purge through the
/// second reaches every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_ha_runs_two_control_plane_replicas_on_a_local_etcd_cluster() {
    let dir = outpost_testkit::tempdir();
    let d = dir.path();
    let (stop, up) = start_up(d, 60, true).await;
    let admin = std::fs::read_to_string(d.join(".outpost/admin.token")).unwrap();
    let request = |url: String, body: &'static str| {
        let admin = admin.trim().to_string();
        async move {
            let method = if body.is_empty() { http::Method::GET } else { http::Method::POST };
            crate::topology::request(method, &url, "x", Some(&admin), body).await.unwrap()
        }
    };
    for api in ["127.0.0.60:17000", "127.0.0.60:17001"] {
        let sites = request(format!("http://{api}/v1/sites"), "").await;
        assert!(String::from_utf8_lossy(&sites.body).contains("\"id\":\"example\""), "{api}");
    }
    outpost_testkit::eventually("every node following a replica", || async {
        let nodes = request("http://127.0.0.60:17000/v1/nodes".into(), "").await;
        let nodes: serde_json::Value = serde_json::from_slice(&nodes.body).unwrap();
        nodes.as_array().is_some_and(|n| n.len() == 5 && n.iter().all(|n| n["connected"] == true))
    })
    .await;
    let body = r#"{"site": "example", "prefix": "/", "wait": true}"#;
    let r = request("http://127.0.0.60:17001/v1/purge".into(), body).await;
    let report: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(r.status, http::StatusCode::OK, "{report}");
    assert_eq!(report["acked"].as_array().unwrap().len(), 5, "{report}");

    // The README's walkthrough, on replicas: DNS sends London to fra, the
    // fra edge misses then hits, and the CLI's purge through both replicas
    // reaches every node, after which the edge misses again.
    let london = crate::topology::dns_a("127.0.0.60:15353".parse().unwrap(), "example.cdn.example.test.").await;
    assert_eq!(london, vec!["127.0.0.61".parse::<std::net::IpAddr>().unwrap()]);
    let edge = "http://127.0.0.61:18080/hello?size=64&cc=max-age%3D300";
    let get =
        || async { crate::topology::request(http::Method::GET, edge, "www.example.test", None, "").await.unwrap() };
    assert!(!get().await.is_hit());
    assert!(get().await.is_hit());
    let replicas = "http://127.0.0.60:17000,http://127.0.0.60:17001";
    let out = outpost()
        .current_dir(d)
        .args(["purge", "--site", "example", "--prefix", "/hello", "--wait", "--json", "--control", replicas])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["acked"].as_array().unwrap().len(), 5, "{report}");
    assert!(!get().await.is_hit(), "purged");
    let out = outpost().current_dir(d).args(["status", "--json", "--control", replicas]).output().unwrap();
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 5, "{nodes}");

    stop.cancel();
    up.await.unwrap().unwrap();
    assert!(std::net::TcpStream::connect("127.0.0.1:23790").is_err(), "the etcd members stopped with up");
}
