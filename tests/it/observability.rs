//! The Prometheus assets in `deploy/` against the real thing: Debian's
//! Prometheus scrapes `outpost up` with the shipped scrape config and
//! rules; every dashboard query and every alert's series returns data, no
//! rule fails to evaluate, and an edge stopped on purpose fires
//! `OutpostEdgeDown` within its `for:` window.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::load::start_up;
use crate::topology::{Process, dns_a, request, wait_listening};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// Prometheus's HTTP API at `prom`: the `data` of a GET.
async fn api(prom: &str, path: &str) -> Value {
    let r = request(Method::GET, &format!("http://{prom}{path}"), "", None, "").await.unwrap();
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    assert_eq!(v["status"], "success", "{path}: {}", String::from_utf8_lossy(&r.body));
    v["data"].clone()
}

/// The samples an instant query returns.
async fn query(prom: &str, expr: &str) -> Vec<Value> {
    api(prom, &format!("/api/v1/query?query={}", encode(expr))).await["result"].as_array().cloned().unwrap_or_default()
}

/// Every query in the dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("grafana/outpost.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push((p["title"].as_str().unwrap().to_string(), t["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// Each alert's series: its expression without the final comparison (the
/// rules are written `SERIES OP NUMBER`).
fn alert_series(rules: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap().iter().filter(|r| r["type"] == "alerting") {
            let (name, expr) = (rule["name"].as_str().unwrap(), rule["query"].as_str().unwrap().trim());
            let cut = [" > ", " < ", " == ", " != ", " >= ", " <= "].iter().filter_map(|op| expr.rfind(op)).max();
            let cut = cut.unwrap_or_else(|| panic!("{name}: `{expr}` is not SERIES OP NUMBER"));
            let threshold = expr[cut..].trim_start_matches([' ', '>', '<', '=', '!']);
            assert!(threshold.parse::<f64>().is_ok(), "{name}: `{expr}` does not end in a number");
            out.push((name.to_string(), expr[..cut].to_string()));
        }
    }
    out
}

/// The shipped scrape config, pointed at `up` on `control` and at one
/// more edge, with one-second intervals.
fn prometheus_config(dir: &Path, control: &str, extra_edge_admin: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(deploy().join("prometheus/prometheus.yml")).unwrap();
    assert!(shipped.contains("\"127.0.0.1:7000\""), "the scrape config targets `outpost up`");
    let config = shipped
        .replace("\"127.0.0.1:7000\"", &format!("\"{control}\""))
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        + &format!("  - job_name: outpost-edge\n    static_configs:\n      - targets: [\"{extra_edge_admin}\"]\n");
    std::fs::copy(deploy().join("prometheus/rules.yml"), dir.join("rules.yml")).unwrap();
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    let check = Command::new("promtool").arg("check").arg("config").arg(&path).output();
    let check = check.expect("promtool is missing: scripts/deps.sh installs Debian's prometheus");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_every_dashboard_query_and_alert_and_an_edge_down_fires() {
    let dir = outpost_testkit::tempdir();
    let d = dir.path();
    let (stop, up) = start_up(d, 80, false).await;
    // One more edge in PoP fra, in a process of its own, to stop on purpose.
    let fra = std::fs::read_to_string(d.join("config/edge-fra.toml")).unwrap();
    let extra = fra.replace("edge-fra", "edge-extra").replace("127.0.0.81", "127.0.0.84");
    std::fs::write(d.join("config/edge-extra.toml"), extra).unwrap();
    // Its own credential, as an operator adds a node.
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["node-token", "--config"])
        .arg(d.join("config/control.toml"))
        .arg("--out")
        .arg(d.join(".outpost"))
        .arg("edge-extra")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), d.join(".outpost/edge-extra.token").display().to_string());
    let mut edge = Process::spawn(&["edge", "--config", d.join("config/edge-extra.toml").to_str().unwrap()]);
    wait_listening("127.0.0.84:19090".parse().unwrap(), "the extra edge's admin").await;

    let prom = "127.0.0.80:19099";
    let config = prometheus_config(d, "127.0.0.80:17000", "127.0.0.84:19090");
    let mut prometheus = Process::adopt(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", d.join("tsdb").display()))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(d.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus is missing: scripts/deps.sh installs Debian's prometheus"),
    );
    wait_listening(prom.parse().unwrap(), "prometheus").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !request(Method::GET, &format!("http://{prom}/-/ready"), "", None, "").await.is_ok_and(|r| r.status == 200) {
        assert!(Instant::now() < deadline, "prometheus did not get ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Both targets scraped before the traffic, so rates see it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while query(prom, "up == 1").await.len() < 2 {
        assert!(Instant::now() < deadline, "prometheus did not scrape both targets: {:?}", query(prom, "up").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Traffic for every panel: misses through the shields, then hits, on
    // every edge; DNS questions.
    for round in 0..2 {
        for (i, edge) in ["127.0.0.81", "127.0.0.82", "127.0.0.83", "127.0.0.84"].iter().enumerate() {
            for n in 0..5 {
                let url = format!("http://{edge}:18080/o{i}-{n}?size=1000&cc=max-age%3D600");
                let r = request(Method::GET, &url, "www.example.test", None, "").await.unwrap();
                assert_eq!(r.status, 200, "round {round}: {url}");
            }
        }
        for _ in 0..5 {
            assert!(!dns_a("127.0.0.80:15353".parse().unwrap(), "example.cdn.example.test.").await.is_empty());
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    // Every dashboard query and every alert's series has data.
    let mut missing = Vec::new();
    let rules = api(prom, "/api/v1/rules").await;
    let checks: Vec<(String, String)> = dashboard_queries().into_iter().chain(alert_series(&rules)).collect();
    assert!(checks.len() > 25, "{checks:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    for (what, expr) in &checks {
        loop {
            let got = query(prom, expr).await;
            if got.iter().any(|s| s["value"][1].as_str().is_some_and(|v| v != "NaN")) {
                break;
            }
            if Instant::now() > deadline {
                missing.push(format!("{what}: {expr}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let requests = query(prom, "sum by (node, cache) (outpost_requests_total) > 0").await;
    assert!(missing.is_empty(), "no data for:\n{}\nrequests: {requests:?}", missing.join("\n"));
    // Every rule evaluates without error.
    let rules = api(prom, "/api/v1/rules").await;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }
    // Nothing fires on a healthy fleet.
    assert!(query(prom, "ALERTS{alertstate=\"firing\"}").await.is_empty(), "{:?}", query(prom, "ALERTS").await);

    // The extra edge stops: pending once the control plane has not heard
    // from it for 15 s, firing a minute later.
    edge.kill();
    let killed = Instant::now();
    let state =
        |s: &'static str| format!("ALERTS{{alertname=\"OutpostEdgeDown\",node=\"edge-extra\",alertstate=\"{s}\"}}");
    let pending = loop {
        if !query(prom, &state("pending")).await.is_empty() {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(40), "OutpostEdgeDown never went pending");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let firing = loop {
        if !query(prom, &state("firing")).await.is_empty() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < pending + Duration::from_secs(75),
            "OutpostEdgeDown pending at {pending:?} never fired"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        firing >= pending + Duration::from_secs(59),
        "fired at {firing:?}, before its `for:` after pending at {pending:?}"
    );
    // Only that edge.
    let firing_alerts = query(prom, "ALERTS{alertstate=\"firing\"}").await;
    assert!(firing_alerts.iter().all(|a| a["metric"]["node"] == "edge-extra"), "{firing_alerts:?}");

    prometheus.kill();
    stop.cancel();
    up.await.unwrap().unwrap();
}
