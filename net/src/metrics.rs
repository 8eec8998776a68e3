//! The process's metrics exporter. The program installs it once, before
//! any role makes its metrics (a counter made earlier counts into nothing);
//! every `/metrics` endpoint renders it. Libraries only record, through the
//! `metrics` facade.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: sub-millisecond hits to slow origins.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histograms' samples are folded into their buckets.
const UPKEEP: Duration = Duration::from_secs(1);

/// Installs the Prometheus recorder (once; later calls change nothing).
pub fn install_prometheus() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(h) => {
                upkeep(h.clone());
                h
            }
            // Another recorder is already installed (an embedding program):
            // render from a private one so /metrics still answers.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    });
}

/// Text written at each render, after what is recorded: series made from
/// state at the moment of the scrape, which would otherwise be recorded
/// for ever once seen. `None` from one: its source is gone, and it goes.
type Scraped = Box<dyn Fn() -> Option<String> + Send + Sync>;

static SCRAPED: std::sync::Mutex<Vec<Scraped>> = std::sync::Mutex::new(Vec::new());

/// Adds `source` to what every `/metrics` of this process renders.
pub fn scrape_also(source: impl Fn() -> Option<String> + Send + Sync + 'static) {
    SCRAPED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Box::new(source));
}

/// What `/metrics` answers: the Prometheus text of everything recorded
/// (empty when no recorder was installed), then what [`scrape_also`]'s
/// sources write now.
pub fn render() -> String {
    let mut text = HANDLE.get().map(PrometheusHandle::render).unwrap_or_default();
    let mut sources = SCRAPED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    sources.retain(|source| match source() {
        Some(more) => {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&more);
            true
        }
        None => false,
    });
    text
}

/// Folds histograms' samples into their buckets every [`UPKEEP`]. The
/// recorder keeps each sample until then (about 25 bytes of it); left to
/// `/metrics` scrapes, a node nobody scrapes (no admin listener) would keep
/// every request's and every DNS query's for as long as it runs.
fn upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP);
            handle.run_upkeep();
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread for the metrics' upkeep: histograms are folded only when scraped");
    }
}
