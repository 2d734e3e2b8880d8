//! The pieces of `hirte-bench`: see `hirte-bench.rs` for the order of the phases.

pub mod dbusx;
pub mod error;
pub mod fake;
pub mod footprint;
pub mod latency;
pub mod listing;
pub mod liveness;
pub mod memory;
pub mod procfs;
pub mod profile;
pub mod report;
pub mod setup;
pub mod spawn;
pub mod stats;
pub mod tls;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use report::{Json, Metric};

/// Sample counts: the full run, or `--quick` (about a third, for trying the bench out).
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub start_iters: usize,
    pub inproc_per_iter: usize,
    pub reads: usize,
    pub list_all_runs: usize,
    pub list_node_runs: usize,
    pub kills: usize,
    pub stops: usize,
    pub restarts: usize,
    pub agent_ops: usize,
    pub cpu_window: Duration,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            start_iters: 60,
            inproc_per_iter: 5,
            reads: 10_000,
            list_all_runs: 21,
            list_node_runs: 51,
            kills: 5,
            stops: 3,
            restarts: 3,
            agent_ops: 1000,
            cpu_window: Duration::from_secs(5),
        }
    }

    pub fn quick() -> Sizes {
        Sizes {
            start_iters: 15,
            inproc_per_iter: 4,
            reads: 2_000,
            list_all_runs: 7,
            list_node_runs: 15,
            kills: 2,
            stops: 1,
            restarts: 1,
            agent_ops: 1000,
            cpu_window: Duration::from_secs(3),
        }
    }
}

/// Shared state of one bench run: options, the results so far, progress output.
pub struct Ctx {
    pub sizes: Sizes,
    pub quick: bool,
    pub profile: bool,
    pub out: PathBuf,
    pub t0: Instant,
    pub hz: u64,
    pub metrics: Vec<Metric>,
    /// Raw data and context per phase, for `results.json`.
    pub sections: Vec<(String, Json)>,
    /// Load average at each phase start.
    pub loads: Vec<(String, String)>,
    /// Things a reader of the numbers must know (fewer samples, fallbacks, failures).
    pub notes: Vec<String>,
}

impl Ctx {
    pub fn log(&self, msg: &str) {
        eprintln!("[{:>6.1}s] {msg}", self.t0.elapsed().as_secs_f64());
    }

    pub fn phase(&mut self, name: &str) {
        let load = procfs::loadavg();
        self.log(&format!("== {name} (load {load})"));
        self.loads.push((name.to_string(), load));
    }

    pub fn metric(&mut self, m: Metric) {
        self.log(&format!(
            "   {} {}: {} {}{}",
            m.row,
            m.label,
            report::fmt_num(m.value),
            m.unit,
            m.ratio()
                .map(|r| format!(
                    " ({r:.2}x {})",
                    m.reference.as_ref().map(|x| x.0.as_str()).unwrap_or("")
                ))
                .unwrap_or_default()
        ));
        self.metrics.push(m);
    }

    pub fn section(&mut self, name: &str, j: Json) {
        self.sections.push((name.to_string(), j));
    }

    pub fn note(&mut self, n: impl Into<String>) {
        let n = n.into();
        self.log(&format!("   note: {n}"));
        self.notes.push(n);
    }
}

/// A summary as JSON (values in the unit they were taken in).
pub fn summary_json(s: &stats::Summary, unit: &str) -> Json {
    Json::obj(vec![
        ("unit", Json::str(unit)),
        ("n", Json::num(s.n as f64)),
        ("min", Json::num(s.min)),
        ("p25", Json::num(s.p25)),
        ("median", Json::num(s.median)),
        ("p75", Json::num(s.p75)),
        ("p99", Json::num(s.p99)),
        ("p999", Json::num(s.p999)),
        ("max", Json::num(s.max)),
        ("mean", Json::num(s.mean)),
    ])
}

/// Sleeps, logging why (settling times are part of the method).
pub fn settle(ctx: &Ctx, d: Duration, why: &str) {
    ctx.log(&format!("   settling {d:?}: {why}"));
    std::thread::sleep(d);
}
