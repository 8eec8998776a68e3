//! The end of a run: k6's summary layout, a JSON file and a self-contained
//! HTML page with latency-over-time and throughput charts (inline SVG).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::metrics::{Summary, TIMINGS, Threshold};

/// A threshold and how it came out.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub threshold: Threshold,
    pub value: Option<f64>,
    pub ok: bool,
}

fn line(out: &mut String, mark: &str, name: &str, value: &str) {
    let dots = ".".repeat(32usize.saturating_sub(name.len()));
    let _ = writeln!(out, "   {mark} {name}{dots}: {value}");
}

fn bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2}s", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.2}ms")
    } else {
        format!("{:.0}µs", v * 1000.0)
    }
}

/// A trend's line, from microseconds.
fn trend(h: &Histogram<u64>) -> String {
    let q = |p: f64| ms(h.value_at_quantile(p) as f64 / 1000.0);
    format!(
        "avg={} min={} med={} max={} p(90)={} p(95)={} p(99)={}",
        ms(h.mean() / 1000.0),
        ms(h.min() as f64 / 1000.0),
        q(0.5),
        ms(h.max() as f64 / 1000.0),
        q(0.9),
        q(0.95),
        q(0.99)
    )
}

/// A trend in the JSON report, in milliseconds.
fn trend_json(h: &Histogram<u64>) -> serde_json::Value {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    serde_json::json!({
        "avg": h.mean() / 1000.0, "min": h.min() as f64 / 1000.0, "med": q(0.5), "max": h.max() as f64 / 1000.0,
        "p90": q(0.9), "p95": q(0.95), "p99": q(0.99),
    })
}

/// The summary as k6 prints it: metrics, then their thresholds marked ✓/✗.
pub fn text(s: &Summary, outcomes: &[Outcome]) -> String {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let mut out = String::new();
    let mark = |metric: &str| -> &'static str {
        let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.threshold.metric == metric).collect();
        if mine.is_empty() {
            " "
        } else if mine.iter().all(|o| o.ok) {
            "✓"
        } else {
            "✗"
        }
    };
    for (name, _, fail) in &s.checks {
        let sign = if *fail == 0 { "✓" } else { "✗" };
        let _ =
            writeln!(out, "     {sign} {name}{}", if *fail == 0 { String::new() } else { format!(" ({fail} failed)") });
    }
    // A metric's line, marked with how its thresholds came out.
    let metric = |out: &mut String, name: &str, value: &str| line(out, mark(name), name, value);
    // k6's layout for a rate: the share true, then how many true and false.
    let rate = |yes: u64, all: u64| {
        let pct = if all == 0 { 0.0 } else { 100.0 * yes as f64 / all as f64 };
        format!("{pct:.2}% ✓ {yes} ✗ {}", all - yes)
    };
    if !s.checks.is_empty() {
        out.push('\n');
        let (p, f) = s.checks_passed();
        metric(&mut out, "checks", &rate(p, p + f));
    }
    metric(&mut out, "cache_hit_ratio", &rate(s.hits, s.reqs));
    metric(&mut out, "data_received", &format!("{} {}/s", bytes(s.bytes), bytes((s.bytes as f64 / secs) as u64)));
    if s.dropped > 0 || mark("dropped_iterations") != " " {
        metric(&mut out, "dropped_iterations", &format!("{} {:.1}/s", s.dropped, s.dropped as f64 / secs));
    }
    for name in TIMINGS {
        if let Some(h) = s.trend(name).filter(|h| !h.is_empty()) {
            metric(&mut out, name, &trend(h));
        }
    }
    let duration = if s.latency.is_empty() { "no responses".to_string() } else { trend(&s.latency) };
    metric(&mut out, "http_req_duration", &duration);
    metric(&mut out, "http_req_failed", &rate(s.failed, s.reqs));
    metric(&mut out, "http_reqs", &format!("{} {:.1}/s", s.reqs, s.reqs as f64 / secs));
    if let Some(n) = s.origin_requests {
        metric(&mut out, "origin_requests", &n.to_string());
    }
    line(&mut out, " ", "vus_max", &s.max_vus.to_string());
    for (name, ok, failed) in &s.actions {
        line(
            &mut out,
            if *failed == 0 { " " } else { "✗" },
            &format!("action {name}"),
            &format!("{ok} ok, {failed} failed"),
        );
    }
    if !outcomes.is_empty() {
        out.push('\n');
        for o in outcomes {
            let value = o.value.map_or("not measured".to_string(), |v| format!("{v:.4}"));
            let _ = writeln!(
                out,
                "   {} {} {} (measured {value})",
                if o.ok { "✓" } else { "✗" },
                o.threshold.metric,
                o.threshold.text
            );
        }
    }
    out
}

/// The run as JSON: the metrics, the thresholds and the per-second series.
pub fn json(s: &Summary, outcomes: &[Outcome]) -> serde_json::Value {
    let rate = |n: u64| if s.reqs == 0 { 0.0 } else { n as f64 / s.reqs as f64 };
    let mut metrics = serde_json::json!({
        "http_reqs": {"count": s.reqs, "rate": s.reqs as f64 / s.elapsed.as_secs_f64().max(1e-9)},
        "http_req_failed": {"fails": s.failed, "rate": rate(s.failed)},
        "cache_hit_ratio": {"hits": s.hits, "rate": rate(s.hits)},
        "http_req_duration_ms": trend_json(&s.latency),
        "data_received": s.bytes,
        "dropped_iterations": s.dropped,
        "origin_requests": s.origin_requests,
        "vus_max": s.max_vus,
        "actions": s.actions.iter().map(|(n, o, f)| serde_json::json!({"name": n, "ok": o, "failed": f})).collect::<Vec<_>>(),
        "checks": s.checks.iter().map(|(n, p, f)| serde_json::json!({"name": n, "passes": p, "fails": f})).collect::<Vec<_>>(),
    });
    for name in TIMINGS {
        if let Some(h) = s.trend(name).filter(|h| !h.is_empty()) {
            metrics[format!("{name}_ms")] = trend_json(h);
        }
    }
    serde_json::json!({
        "duration_s": s.elapsed.as_secs_f64(),
        "metrics": metrics,
        "thresholds": outcomes.iter().map(|o| serde_json::json!({
            "metric": o.threshold.metric, "threshold": o.threshold.text, "value": o.value, "ok": o.ok,
        })).collect::<Vec<_>>(),
        "series": s.series,
    })
}

/// The trend statistics in a k6 summary export, in its order.
const K6_TREND_STATS: [&str; 7] = ["avg", "min", "med", "max", "p(90)", "p(95)", "p(99)"];

/// The run in the layout of k6's `--summary-export` file, so tools written
/// for k6 read it: counters as `count` and `rate`, rates as `passes`,
/// `fails` and `value`, trends (milliseconds) by statistic, gauges as
/// `value`, `min`, `max`; each metric's thresholds map their expression to
/// whether it failed, as k6 writes them; checks under `root_group`.
/// `cache_hit_ratio` and `origin_requests` are ours.
pub fn k6_summary(s: &Summary, outcomes: &[Outcome], stdout_tty: bool, stderr_tty: bool) -> serde_json::Value {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let counter = |n: u64| serde_json::json!({"count": n, "rate": n as f64 / secs});
    let rate = |yes: u64, of: u64| serde_json::json!({"passes": yes, "fails": of - yes, "value": if of == 0 { 0.0 } else { yes as f64 / of as f64 }});
    let trend = |h: &Histogram<u64>| {
        let ms = |us: f64| us / 1000.0;
        let q = |p: f64| ms(h.value_at_quantile(p) as f64);
        let values = [ms(h.mean()), ms(h.min() as f64), q(0.5), ms(h.max() as f64), q(0.9), q(0.95), q(0.99)];
        serde_json::Value::Object(K6_TREND_STATS.iter().zip(values).map(|(k, v)| (k.to_string(), v.into())).collect())
    };
    let (passes, fails) = s.checks_passed();
    let mut metrics = serde_json::json!({
        "http_reqs": counter(s.reqs),
        "iterations": counter(s.reqs),
        "http_req_failed": rate(s.failed, s.reqs),
        "checks": rate(passes, passes + fails),
        "data_received": counter(s.bytes),
        "dropped_iterations": counter(s.dropped),
        "vus_max": {"value": s.max_vus, "min": s.max_vus, "max": s.max_vus},
        "http_req_duration": trend(&s.latency),
        "cache_hit_ratio": rate(s.hits, s.reqs),
    });
    if let Some(n) = s.origin_requests {
        metrics["origin_requests"] = counter(n);
    }
    for name in TIMINGS {
        if let Some(h) = s.trend(name).filter(|h| !h.is_empty()) {
            metrics[name] = trend(h);
        }
    }
    for o in outcomes {
        let m = &mut metrics[o.threshold.metric.as_str()];
        if m.is_null() {
            *m = serde_json::json!({});
        }
        m["thresholds"][o.threshold.text.as_str()] = (!o.ok).into();
    }
    let checks: Vec<serde_json::Value> = s
        .checks
        .iter()
        .map(|(name, p, f)| serde_json::json!({"name": name, "path": format!("::{name}"), "id": "", "passes": p, "fails": f}))
        .collect();
    serde_json::json!({
        "root_group": {"name": "", "path": "", "id": "d41d8cd98f00b204e9800998ecf8427e", "groups": [], "checks": checks},
        "options": {"summaryTrendStats": K6_TREND_STATS, "summaryTimeUnit": "", "noColor": false},
        "state": {"isStdOutTTY": stdout_tty, "isStdErrTTY": stderr_tty, "testRunDurationMs": s.elapsed.as_secs_f64() * 1000.0},
        "metrics": metrics,
    })
}

/// An SVG line chart of `lines` (label, colour, points) over the run.
fn chart(title: &str, unit: &str, lines: &[(&str, &str, Vec<f64>)]) -> String {
    let (w, h, pad) = (760.0, 220.0, 40.0);
    let n = lines.iter().map(|l| l.2.len()).max().unwrap_or(0).max(2);
    let top = lines.iter().flat_map(|l| l.2.iter().copied()).fold(0.0f64, f64::max).max(1e-9) * 1.1;
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (n - 1) as f64;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / top;
    let mut svg = format!(
        "<h2>{title}</h2><svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\">\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"#999\"/>\
         <text x=\"4\" y=\"{}\" font-size=\"11\">{top:.1} {unit}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\">{n} s</text>",
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        pad - 6.0,
        w - pad - 20.0,
        h - pad + 16.0
    );
    for (i, (label, colour, points)) in lines.iter().enumerate() {
        let path: Vec<String> = points.iter().enumerate().map(|(j, v)| format!("{:.1},{:.1}", x(j), y(*v))).collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"{colour}\">{label}</text>",
            path.join(" "),
            w - pad - 120.0,
            pad + 14.0 * i as f64
        );
    }
    svg.push_str("</svg>");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A self-contained HTML page: the summary and two charts, no scripts.
pub fn html(name: &str, s: &Summary, outcomes: &[Outcome]) -> String {
    let col = |f: fn(&super::metrics::Second) -> f64| s.series.iter().map(f).collect::<Vec<f64>>();
    let latency = chart(
        "Latency over time",
        "ms",
        &[
            ("p50", "#2b8a3e", col(|x| x.p50_ms)),
            ("p95", "#e67700", col(|x| x.p95_ms)),
            ("p99", "#c92a2a", col(|x| x.p99_ms)),
        ],
    );
    let throughput = chart(
        "Throughput",
        "req/s",
        &[
            ("requests", "#1864ab", col(|x| x.reqs as f64)),
            ("hits", "#2b8a3e", col(|x| x.hits as f64)),
            ("failed", "#c92a2a", col(|x| x.failed as f64)),
        ],
    );
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>outpost load: {n}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f4f4f4;padding:1em}}</style></head>\
         <body><h1>{n}</h1><pre>{summary}</pre>{latency}{throughput}</body></html>\n",
        n = escape(name),
        summary = escape(&text(s, outcomes)),
    )
}
