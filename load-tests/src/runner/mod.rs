//! `outpost load SCENARIO.toml`: a k6-style load runner. A scenario file
//! ([`scenario`]) names the target, an executor, the request mix, checks
//! and thresholds; [`exec`] runs it; [`report`] prints k6's summary and
//! writes JSON and HTML reports. A failed threshold makes the run exit 99,
//! as k6 does.

mod dial;
pub mod exec;
pub mod metrics;
pub mod report;
pub mod scenario;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

pub use metrics::{Summary, Threshold};
pub use report::Outcome;
pub use scenario::Scenario;

/// k6's exit code when a threshold fails.
pub const THRESHOLD_FAILED: u8 = 99;

/// Where the results go besides the terminal.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub json: Option<PathBuf>,
    pub html: Option<PathBuf>,
    /// The summary in the layout of k6's `--summary-export`.
    pub k6_summary: Option<PathBuf>,
    /// A progress line on stderr every second.
    pub progress: bool,
}

/// What a run came to.
#[derive(Debug)]
pub struct Finished {
    pub summary: Summary,
    pub outcomes: Vec<Outcome>,
}

impl Finished {
    pub fn passed(&self) -> bool {
        self.outcomes.iter().all(|o| o.ok)
    }
}

/// Evaluates the scenario's thresholds against a run.
pub fn evaluate(s: &Scenario, summary: &Summary) -> Vec<Outcome> {
    let mut out = Vec::new();
    for (metric, exprs) in &s.thresholds {
        for e in exprs {
            // Parsed once already when the scenario was loaded.
            if let Ok(threshold) = Threshold::parse(metric, e) {
                let (value, ok) = threshold.check(summary);
                out.push(Outcome { threshold, value, ok });
            }
        }
    }
    out
}

/// Runs the scenario in `file`, prints the summary and writes the outputs.
pub async fn run_file(file: &Path, outputs: &Outputs) -> Result<Finished, String> {
    let s = Scenario::load(file).map_err(|e| e.to_string())?;
    let total = s.executor.duration();
    let tty = std::io::stderr().is_terminal();
    let progress = |sec: &metrics::Second, at: std::time::Duration| {
        if !outputs.progress {
            return;
        }
        let done = (at.as_secs_f64() / total.as_secs_f64()).min(1.0);
        let width = 30;
        let filled = (done * width as f64) as usize;
        let bar = format!("{}{}", "=".repeat(filled), " ".repeat(width - filled));
        let text = format!(
            "running [{bar}] {:>3.0}% {:.0}s/{:.0}s  vus {:>4}  {:>7} req/s  failed {}",
            done * 100.0,
            at.as_secs_f64(),
            total.as_secs_f64(),
            sec.vus,
            sec.reqs,
            sec.failed
        );
        let mut err = std::io::stderr();
        let _ = if tty { write!(err, "\r{text}") } else { writeln!(err, "{text}") };
        let _ = err.flush();
    };
    let summary = exec::run(&s, &progress).await?;
    if outputs.progress && tty {
        eprintln!();
    }
    let outcomes = evaluate(&s, &summary);
    println!("\n  scenario: {}\n", file.display());
    print!("{}", report::text(&summary, &outcomes));
    if let Some(path) = &outputs.json {
        let text = serde_json::to_string_pretty(&report::json(&summary, &outcomes)).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &outputs.k6_summary {
        let summary = report::k6_summary(&summary, &outcomes, std::io::stdout().is_terminal(), tty);
        let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &outputs.html {
        std::fs::write(path, report::html(&file.display().to_string(), &summary, &outcomes))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Finished { summary, outcomes })
}
