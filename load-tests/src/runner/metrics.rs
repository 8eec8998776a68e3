//! What a run measured, and thresholds over it, k6 style:
//! `http_req_duration = ["p(95)<20ms"]`, `http_req_failed = ["rate<0.001"]`.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are kept in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!("valid histogram bounds"))
}

/// The parts of a request's time besides its whole duration.
#[derive(Debug, Clone)]
pub struct Timings {
    /// Opening the TCP connection, for requests that opened one.
    pub connecting: Histogram<u64>,
    /// The TLS handshake, for requests that opened a TLS connection.
    pub tls_handshaking: Histogram<u64>,
    /// From sending the request to the response head.
    pub waiting: Histogram<u64>,
    /// To the response head from the start of the connection when the
    /// request opened one, else from sending: what a visitor waits for.
    pub first_byte: Histogram<u64>,
}

impl Timings {
    pub fn new() -> Timings {
        Timings {
            connecting: new_histogram(),
            tls_handshaking: new_histogram(),
            waiting: new_histogram(),
            first_byte: new_histogram(),
        }
    }

    pub(super) fn each(&mut self) -> [&mut Histogram<u64>; 4] {
        [&mut self.connecting, &mut self.tls_handshaking, &mut self.waiting, &mut self.first_byte]
    }
}

impl Default for Timings {
    fn default() -> Self {
        Timings::new()
    }
}

/// One second of the run, for the charts.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: u32,
    pub reqs: u64,
    pub failed: u64,
    pub hits: u64,
    pub vus: u32,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Summary {
    pub elapsed: Duration,
    pub reqs: u64,
    pub failed: u64,
    pub hits: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub max_vus: u32,
    /// Per check: name, passes, fails.
    pub checks: Vec<(String, u64, u64)>,
    pub origin_requests: Option<u64>,
    pub latency: Histogram<u64>,
    pub timings: Timings,
    pub series: Vec<Second>,
    /// Per action: name, requests answered below 400, requests failed.
    pub actions: Vec<(String, u64, u64)>,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

impl Summary {
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// The durations a trend metric names, in microseconds.
    pub fn trend(&self, metric: &str) -> Option<&Histogram<u64>> {
        match metric {
            "http_req_duration" => Some(&self.latency),
            "http_req_connecting" => Some(&self.timings.connecting),
            "http_req_tls_handshaking" => Some(&self.timings.tls_handshaking),
            "http_req_waiting" => Some(&self.timings.waiting),
            "http_req_first_byte" => Some(&self.timings.first_byte),
            _ => None,
        }
    }

    pub fn checks_passed(&self) -> (u64, u64) {
        self.checks.iter().fold((0, 0), |(p, f), c| (p + c.1, f + c.2))
    }

    /// The value of `metric` under `agg`, if the run has it.
    fn value(&self, metric: &str, agg: Agg) -> Option<f64> {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        if let Some(h) = self.trend(metric) {
            let ms = |us: f64| us / 1000.0;
            return match agg {
                Agg::Avg => Some(ms(h.mean())),
                Agg::Min => Some(ms(h.min() as f64)),
                Agg::Max => Some(ms(h.max() as f64)),
                Agg::Med => Some(ms(h.value_at_quantile(0.5) as f64)),
                Agg::P(p) => Some(ms(h.value_at_quantile(p / 100.0) as f64)),
                Agg::Rate | Agg::Count => None,
            };
        }
        match (metric, agg) {
            ("http_req_failed", Agg::Rate) => Some(ratio(self.failed, self.reqs)),
            ("cache_hit_ratio", Agg::Rate) => Some(ratio(self.hits, self.reqs)),
            ("checks", Agg::Rate) => {
                let (p, f) = self.checks_passed();
                Some(ratio(p, p + f))
            }
            ("http_reqs", Agg::Count) => Some(self.reqs as f64),
            ("http_reqs", Agg::Rate) => Some(self.reqs as f64 / secs),
            ("origin_requests", Agg::Count) => self.origin_requests.map(|n| n as f64),
            ("dropped_iterations", Agg::Count) => Some(self.dropped as f64),
            ("data_received", Agg::Count) => Some(self.bytes as f64),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Agg {
    Avg,
    Min,
    Med,
    Max,
    P(f64),
    Rate,
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

/// One threshold: `<aggregate> <op> <value>` on a metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub metric: String,
    pub text: String,
    agg: Agg,
    op: Op,
    /// In the metric's unit: milliseconds for durations.
    value: f64,
}

/// The parts of a request's time, as metrics in milliseconds.
pub const TIMINGS: [&str; 4] =
    ["http_req_connecting", "http_req_tls_handshaking", "http_req_waiting", "http_req_first_byte"];

const METRICS: [&str; 12] = [
    "http_req_duration",
    "http_req_connecting",
    "http_req_tls_handshaking",
    "http_req_waiting",
    "http_req_first_byte",
    "http_req_failed",
    "cache_hit_ratio",
    "checks",
    "http_reqs",
    "origin_requests",
    "dropped_iterations",
    "data_received",
];

impl Threshold {
    pub fn parse(metric: &str, text: &str) -> Result<Threshold, String> {
        if !METRICS.contains(&metric) {
            return Err(format!("no metric `{metric}` for thresholds (one of {})", METRICS.join(", ")));
        }
        let bad =
            || format!("threshold `{text}` on {metric}: expected e.g. \"p(95)<20ms\", \"rate<0.01\", \"count<100\"");
        let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let at = t.find(['<', '>']).ok_or_else(bad)?;
        let (agg, rest) = t.split_at(at);
        let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
            (Op::Le, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Op::Ge, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Op::Lt, v)
        } else if let Some(v) = rest.strip_prefix('>') {
            (Op::Gt, v)
        } else {
            return Err(bad());
        };
        let agg = match agg {
            "avg" => Agg::Avg,
            "min" => Agg::Min,
            "med" => Agg::Med,
            "max" => Agg::Max,
            "rate" => Agg::Rate,
            "count" => Agg::Count,
            p if p.starts_with("p(") && p.ends_with(')') => {
                let n: f64 = p[2..p.len() - 1].parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&n) {
                    return Err(bad());
                }
                Agg::P(n)
            }
            _ => return Err(bad()),
        };
        let value = if metric == "http_req_duration" || TIMINGS.contains(&metric) {
            let (num, scale) = if let Some(v) = value.strip_suffix("ms") {
                (v, 1.0)
            } else if let Some(v) = value.strip_suffix("us") {
                (v, 0.001)
            } else if let Some(v) = value.strip_suffix('s') {
                (v, 1000.0)
            } else {
                (value, 1.0)
            };
            num.parse::<f64>().map_err(|_| bad())? * scale
        } else {
            value.parse::<f64>().map_err(|_| bad())?
        };
        let th = Threshold { metric: metric.to_string(), text: text.to_string(), agg, op, value };
        // The aggregate must make sense for the metric.
        let probe = Summary {
            elapsed: Duration::from_secs(1),
            reqs: 0,
            failed: 0,
            hits: 0,
            bytes: 0,
            dropped: 0,
            max_vus: 0,
            checks: Vec::new(),
            origin_requests: Some(0),
            latency: new_histogram(),
            timings: Timings::new(),
            series: Vec::new(),
            actions: Vec::new(),
        };
        if probe.value(metric, agg).is_none() {
            return Err(format!("threshold `{text}`: {metric} has no such aggregate"));
        }
        Ok(th)
    }

    /// The measured value and whether the threshold holds. A metric the run
    /// could not measure (origin_requests without a target origin) fails,
    /// and so does every threshold of a run that made no request: a target
    /// that answers nothing must not pass `rate<0.01` with a rate of none.
    pub fn check(&self, s: &Summary) -> (Option<f64>, bool) {
        if s.reqs == 0 {
            return (None, false);
        }
        let Some(v) = s.value(&self.metric, self.agg) else { return (None, false) };
        let ok = match self.op {
            Op::Lt => v < self.value,
            Op::Le => v <= self.value,
            Op::Gt => v > self.value,
            Op::Ge => v >= self.value,
        };
        (Some(v), ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_hold_or_fail() {
        let mut latency = new_histogram();
        for us in [1_000u64, 2_000, 3_000, 50_000] {
            latency.record(us).unwrap();
        }
        let mut timings = Timings::new();
        timings.first_byte.record(4_000).unwrap();
        let s = Summary {
            elapsed: Duration::from_secs(2),
            reqs: 4,
            failed: 1,
            hits: 3,
            bytes: 10,
            dropped: 0,
            max_vus: 1,
            checks: vec![("ok".into(), 3, 1)],
            origin_requests: Some(2),
            latency,
            timings,
            series: Vec::new(),
            actions: Vec::new(),
        };
        let holds = |m: &str, t: &str| Threshold::parse(m, t).unwrap().check(&s).1;
        assert!(holds("http_req_duration", "p(50) < 3ms"));
        assert!(!holds("http_req_duration", "p(95)<20ms"));
        assert!(holds("http_req_duration", "max<0.06s"));
        assert!(holds("http_req_failed", "rate<=0.25"));
        assert!(!holds("http_req_failed", "rate<0.25"));
        assert!(holds("cache_hit_ratio", "rate>0.7"));
        assert!(holds("origin_requests", "count<3"));
        assert!(holds("http_reqs", "rate>=2"));
        assert!(holds("checks", "rate>0.7"));
        assert!(holds("http_req_first_byte", "p(99)<5ms"));
        assert!(!holds("http_req_first_byte", "med<3ms"));
        assert!(Threshold::parse("http_req_waiting", "rate<1").is_err());
        assert!(Threshold::parse("http_req_failed", "p(95)<1").is_err());
        assert!(Threshold::parse("latency", "p(95)<1").is_err());
        assert!(Threshold::parse("http_req_duration", "p(95)=1").is_err());
        // A run that made no request measured nothing: no threshold holds.
        let none = Summary { reqs: 0, failed: 0, hits: 0, latency: new_histogram(), ..s };
        let none_holds = |m: &str, t: &str| Threshold::parse(m, t).unwrap().check(&none);
        assert_eq!(none_holds("http_req_failed", "rate<0.01"), (None, false));
        assert_eq!(none_holds("http_req_duration", "p(95)<20ms"), (None, false));
    }
}
