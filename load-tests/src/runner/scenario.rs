//! A load scenario file, in the spirit of k6's options: the target, one
//! executor, the request mix, checks and thresholds.
//!
//! ```toml
//! [target]
//! urls = ["http://127.0.0.11:8080", "http://127.0.0.12:8080"]  # round-robin per VU
//! host = "www.example.test"               # Host header (default: the URL's)
//! origin = "http://127.0.0.1:9000"        # test origin, read for origin_requests
//! # https:// urls: server_name = "…" (SNI), ca = "ca.pem" or
//! #                insecure_skip_tls_verify = true
//! no_connection_reuse = false             # true: a new connection per request
//! tls_resumption = true                   # false: every TLS handshake a full one
//! http2 = false                           # true: HTTP/2 (ALPN for https, h2c for http)
//! http3 = false                           # true: HTTP/3 over QUIC (https only)
//!
//! [executor]
//! type = "constant-vus"                   # or ramping-vus, constant-arrival-rate
//! vus = 16
//! duration = "10s"
//! # ramping-vus: start_vus = 0, stages = [{ duration = "5s", target = 20 }, …]
//! # constant-arrival-rate: rate = 2000, time_unit = "1s", duration = "10s",
//! #                        pre_allocated_vus = 50, max_vus = 200
//!
//! [requests]
//! path = "/obj/{n}?size=1KiB&cc=max-age%3D60"   # {n}: the object number
//! objects = 1000
//! distribution = "zipf"                   # or "uniform"
//! zipf_exponent = 1.0
//! headers = { "accept-encoding" = "identity" }
//! range = "bytes=0-1023"                  # optional Range header
//!
//! [[check]]
//! name = "status is 200"
//! status = 200
//! [[check]]
//! name = "served by the CDN"
//! header = "cache-status"
//! contains = "edge"
//!
//! [thresholds]
//! http_req_duration = ["p(95)<20ms"]
//! http_req_failed = ["rate<0.001"]
//! cache_hit_ratio = ["rate>0.9"]
//! origin_requests = ["count<1000"]
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub target: Target,
    pub executor: Executor,
    pub requests: Requests,
    #[serde(default, rename = "check")]
    pub checks: Vec<Check>,
    #[serde(default)]
    pub thresholds: BTreeMap<String, Vec<String>>,
    /// Requests made on a schedule during the run: purges, faults.
    #[serde(default, rename = "action")]
    pub actions: Vec<Action>,
}

/// A request sent at `at` into the run (and then every `every`, if set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub name: String,
    #[serde(with = "duration", default = "zero")]
    pub at: Duration,
    #[serde(with = "opt_duration", default)]
    pub every: Option<Duration>,
    #[serde(default = "post")]
    pub method: String,
    /// `http://` only; `{run}` is replaced as in request paths.
    pub url: String,
    pub body: Option<String>,
    /// A bearer token read from this file (relative to the working folder),
    /// or from the `OUTPOST_TOKEN` variable when the file is missing.
    pub token_file: Option<String>,
}

fn zero() -> Duration {
    Duration::ZERO
}
fn post() -> String {
    "POST".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `http://` or `https://` URLs, by IP address or host name.
    pub urls: Vec<String>,
    /// The DNS server (`ip:port`) host names in `urls` resolve through, as
    /// a client's resolver would ask it (default: the system's resolver).
    pub dns: Option<String>,
    pub host: Option<String>,
    pub origin: Option<String>,
    /// The TLS server name for `https://` targets (default: `host` without
    /// its port, else the URL's host).
    pub server_name: Option<String>,
    /// A PEM file of the certificates to trust for `https://` targets
    /// (default: the web's roots).
    pub ca: Option<String>,
    /// Accept any certificate (k6's `insecureSkipTLSVerify`).
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    /// Every request on a new connection, closed after it (k6's
    /// `noConnectionReuse`), so each pays for connecting and TLS.
    #[serde(default)]
    pub no_connection_reuse: bool,
    /// New TLS connections resume an earlier session, as browsers do;
    /// `false`: every one is a full handshake, as a first visit is.
    #[serde(default = "yes")]
    pub tls_resumption: bool,
    /// HTTP/2: offered first by ALPN to `https://` targets, spoken by prior
    /// knowledge (h2c) to `http://` ones.
    #[serde(default)]
    pub http2: bool,
    /// HTTP/3 over QUIC to `https://` targets, on the URL's port (UDP).
    #[serde(default)]
    pub http3: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Executor {
    ConstantVus {
        vus: u32,
        #[serde(with = "duration")]
        duration: Duration,
    },
    RampingVus {
        #[serde(default)]
        start_vus: u32,
        stages: Vec<Stage>,
    },
    ConstantArrivalRate {
        rate: u32,
        #[serde(with = "duration", default = "one_second")]
        time_unit: Duration,
        #[serde(with = "duration")]
        duration: Duration,
        pre_allocated_vus: u32,
        max_vus: Option<u32>,
    },
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    #[serde(with = "duration")]
    pub duration: Duration,
    pub target: u32,
}

impl Executor {
    /// How long the executor runs.
    pub fn duration(&self) -> Duration {
        match self {
            Executor::ConstantVus { duration, .. } | Executor::ConstantArrivalRate { duration, .. } => *duration,
            Executor::RampingVus { stages, .. } => stages.iter().map(|s| s.duration).sum(),
        }
    }

    /// Most VUs it may run at once.
    pub fn max_vus(&self) -> u32 {
        match self {
            Executor::ConstantVus { vus, .. } => *vus,
            Executor::RampingVus { start_vus, stages } => {
                stages.iter().map(|s| s.target).max().unwrap_or(0).max(*start_vus)
            }
            Executor::ConstantArrivalRate { pre_allocated_vus, max_vus, .. } => {
                max_vus.unwrap_or(*pre_allocated_vus).max(*pre_allocated_vus)
            }
        }
    }

    /// VUs wanted `at` into a ramping run: linear within each stage.
    pub fn vus_at(&self, at: Duration) -> u32 {
        match self {
            Executor::RampingVus { start_vus, stages } => {
                let (mut from, mut start) = (*start_vus as f64, Duration::ZERO);
                for s in stages {
                    if at < start + s.duration {
                        let f = (at - start).as_secs_f64() / s.duration.as_secs_f64().max(1e-9);
                        return (from + (s.target as f64 - from) * f).round() as u32;
                    }
                    from = s.target as f64;
                    start += s.duration;
                }
                from as u32
            }
            _ => self.max_vus(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    Zipf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requests {
    /// A path with `{n}` where the object number goes, `{size}` for one of
    /// `sizes` (chosen by object number) and `{run}` for an id unique to
    /// the run (so a run starts with a cold cache).
    pub path: String,
    #[serde(default)]
    pub sizes: Vec<String>,
    #[serde(default = "one")]
    pub objects: u64,
    #[serde(default = "uniform")]
    pub distribution: Distribution,
    #[serde(default = "zipf_exponent")]
    pub zipf_exponent: f64,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub range: Option<String>,
}

fn one() -> u64 {
    1
}
fn uniform() -> Distribution {
    Distribution::Uniform
}
fn zipf_exponent() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    pub status: Option<u16>,
    pub header: Option<String>,
    pub contains: Option<String>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Some).map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))
    }
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))
    }
}

impl Requests {
    /// The static start of the path: what the origin's counters are
    /// summed over for `origin_requests`.
    pub fn prefix(&self) -> &str {
        let end = self.path.find(['{', '?']).unwrap_or(self.path.len());
        &self.path[..end]
    }
}

/// Most arrivals a second a scenario may ask for: more than one machine's
/// runner can start, and the arrivals loop would fall behind for good.
const MAX_RATE: f64 = 1_000_000.0;

impl Scenario {
    /// Parses and checks a scenario; errors carry the file and, for TOML
    /// mistakes, the line and column.
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
        let invalid = |message: String| ScenarioError::Invalid { path: path.display().to_string(), message };
        let s: Scenario = toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
        if s.target.urls.is_empty() {
            return Err(invalid("target.urls is empty".into()));
        }
        for u in &s.target.urls {
            if !u.starts_with("http://") && !u.starts_with("https://") {
                return Err(invalid(format!("target url `{u}` must start with http:// or https://")));
            }
        }
        if s.executor.duration().is_zero() {
            return Err(invalid("the executor's duration must be longer than zero".into()));
        }
        if s.executor.max_vus() == 0 {
            return Err(invalid("the executor needs at least one VU".into()));
        }
        if s.requests.objects == 0 || !s.requests.path.starts_with('/') {
            return Err(invalid("requests.path must start with / and objects must be at least 1".into()));
        }
        if s.requests.path.contains("{size}") && s.requests.sizes.is_empty() {
            return Err(invalid("requests.path uses {size} but requests.sizes is empty".into()));
        }
        // Every path the run will ask for is a path a request can carry (a
        // space in a size would otherwise make no request, again and again).
        let sizes: Vec<&str> = match s.requests.sizes.is_empty() {
            true => vec![""],
            false => s.requests.sizes.iter().map(String::as_str).collect(),
        };
        for size in sizes {
            let path = s.requests.path.replace("{n}", "1").replace("{size}", size).replace("{run}", "0");
            if http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
                return Err(invalid(format!("requests.path `{path}` is not a path a request can carry")));
            }
        }
        if let Executor::ConstantArrivalRate { rate, time_unit, .. } = &s.executor {
            let per_sec = f64::from(*rate) / time_unit.as_secs_f64();
            if *rate == 0 || time_unit.is_zero() || per_sec > MAX_RATE {
                return Err(invalid(format!(
                    "rate / time_unit must be above zero and at most {MAX_RATE} a second (this one: {rate} per {time_unit:?})"
                )));
            }
        }
        for c in &s.checks {
            if c.contains.is_some() && c.header.is_none() {
                return Err(invalid(format!("check `{}`: contains needs a header to look in", c.name)));
            }
            if c.status.is_none() && c.header.is_none() {
                return Err(invalid(format!("check `{}` checks nothing: give a status or a header", c.name)));
            }
        }
        for a in &s.actions {
            if !a.url.starts_with("http://") {
                return Err(invalid(format!("action `{}`: url must start with http://", a.name)));
            }
            if a.every.is_some_and(|e| e.is_zero()) {
                return Err(invalid(format!("action `{}`: every must be longer than zero", a.name)));
            }
        }
        for (metric, exprs) in &s.thresholds {
            for e in exprs {
                super::metrics::Threshold::parse(metric, e).map_err(invalid)?;
            }
        }
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Invalid {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Scenario::parse(path, &text)
    }
}

/// Object numbers drawn uniformly or by a Zipf law, from a small fast
/// generator (xorshift64*; load generation needs speed, not secrecy).
#[derive(Debug, Clone)]
pub struct Picker {
    state: u64,
    /// Cumulative Zipf weights, normalised; empty for uniform.
    cdf: std::sync::Arc<[f64]>,
    objects: u64,
}

impl Picker {
    pub fn new(req: &Requests, seed: u64) -> Picker {
        let cdf: std::sync::Arc<[f64]> = match req.distribution {
            Distribution::Uniform => std::sync::Arc::from(Vec::new()),
            Distribution::Zipf => {
                let mut acc = 0.0;
                let mut v: Vec<f64> = (1..=req.objects)
                    .map(|k| {
                        acc += 1.0 / (k as f64).powf(req.zipf_exponent);
                        acc
                    })
                    .collect();
                for x in &mut v {
                    *x /= acc;
                }
                std::sync::Arc::from(v)
            }
        };
        Picker { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, cdf, objects: req.objects }
    }

    /// Shares the Zipf table with a new seed.
    pub fn fork(&self, seed: u64) -> Picker {
        Picker {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            cdf: std::sync::Arc::clone(&self.cdf),
            objects: self.objects,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// An object number, 1-based: 1 is the most popular under Zipf.
    pub fn pick(&mut self) -> u64 {
        let r = self.next_u64();
        if self.cdf.is_empty() {
            return r % self.objects + 1;
        }
        let u = (r >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|c| *c < u) as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_the_first_objects_and_uniform_does_not() {
        let mut req = Requests {
            path: "/o/{n}".into(),
            objects: 100,
            distribution: Distribution::Zipf,
            zipf_exponent: 1.0,
            headers: BTreeMap::new(),
            range: None,
            sizes: Vec::new(),
        };
        let mut p = Picker::new(&req, 7);
        let draws: Vec<u64> = (0..20_000).map(|_| p.pick()).collect();
        assert!(draws.iter().all(|n| (1..=100).contains(n)));
        let first = draws.iter().filter(|n| **n == 1).count() as f64 / 20_000.0;
        // H(100) ≈ 5.19, so object 1 is drawn about 19% of the time.
        assert!((0.16..0.23).contains(&first), "{first}");
        req.distribution = Distribution::Uniform;
        let mut p = Picker::new(&req, 7);
        let ones = (0..20_000).filter(|_| p.pick() == 1).count() as f64 / 20_000.0;
        assert!(ones < 0.02, "{ones}");
    }

    #[test]
    fn ramping_vus_interpolate_between_stages() {
        let e: Executor = toml::from_str::<BTreeMap<String, Executor>>(
            "[e]\ntype = \"ramping-vus\"\nstart_vus = 0\nstages = [{ duration = \"10s\", target = 20 }, { duration = \"10s\", target = 0 }]",
        )
        .unwrap()
        .remove("e")
        .unwrap();
        assert_eq!(e.duration(), Duration::from_secs(20));
        assert_eq!(e.max_vus(), 20);
        assert_eq!(e.vus_at(Duration::from_secs(5)), 10);
        assert_eq!(e.vus_at(Duration::from_secs(10)), 20);
        assert_eq!(e.vus_at(Duration::from_secs(15)), 10);
    }

    #[test]
    fn bad_files_are_refused_with_their_position() {
        let e = Scenario::parse(Path::new("s.toml"), "[target]\nurls = [\"http://a\"]\n[executor]\ntype = \"warp\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.toml: TOML parse error at line 4, column 8"), "{e}");
        assert!(e.contains("unknown variant `warp`"), "{e}");
    }

    /// What would make no request, or arrivals without end, or a check
    /// that cannot fail, is refused when the scenario is read.
    #[test]
    fn scenarios_that_could_not_run_as_written_are_refused() {
        let base = "[target]\nurls = [\"http://127.0.0.1:9\"]\n\
                    [executor]\ntype = \"constant-vus\"\nvus = 1\nduration = \"1s\"\n";
        let arrivals = |rate: &str, unit: &str| {
            format!(
                "[target]\nurls = [\"http://127.0.0.1:9\"]\n[executor]\ntype = \"constant-arrival-rate\"\n\
                 rate = {rate}\ntime_unit = \"{unit}\"\nduration = \"1s\"\npre_allocated_vus = 1\n\
                 [requests]\npath = \"/a\"\nobjects = 1\n"
            )
        };
        let cases = [
            (format!("{base}[requests]\npath = \"/a/{{size}}\"\nobjects = 1\nsizes = [\"1 KiB\"]\n"), "not a path"),
            (format!("{base}[requests]\npath = \"/a b\"\nobjects = 1\n"), "not a path"),
            (arrivals("10", "0s"), "rate / time_unit"),
            (arrivals("0", "1s"), "rate / time_unit"),
            (arrivals("4000000", "1s"), "rate / time_unit"),
            (
                format!("{base}[requests]\npath = \"/a\"\nobjects = 1\n[[check]]\nname = \"c\"\ncontains = \"x\"\n"),
                "needs a header",
            ),
            (format!("{base}[requests]\npath = \"/a\"\nobjects = 1\n[[check]]\nname = \"c\"\n"), "checks nothing"),
        ];
        for (text, why) in cases {
            let e = Scenario::parse(Path::new("s.toml"), &text).map(drop).unwrap_err().to_string();
            assert!(e.starts_with("s.toml") && e.contains(why), "{e}\n{text}");
        }
        let fine = format!("{base}[requests]\npath = \"/a/{{n}}?s={{size}}\"\nobjects = 1\nsizes = [\"1KiB\"]\n");
        assert!(Scenario::parse(Path::new("s.toml"), &fine).is_ok());
        assert!(Scenario::parse(Path::new("s.toml"), &arrivals("1000", "1s")).is_ok());
    }
}
