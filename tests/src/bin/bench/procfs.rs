//! What `/proc` says about a daemon: memory, threads, fds, CPU time, context switches.

use std::path::Path;
use std::time::Duration;

use crate::bench::error::{BenchError, Result};

/// One look at a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// `VmRSS`, kB.
    pub rss_kb: u64,
    /// `RssAnon` (heap, stacks), kB.
    pub rss_anon_kb: u64,
    /// `RssFile` (mapped binary and libraries), kB.
    pub rss_file_kb: u64,
    /// `VmHWM` (peak RSS), kB.
    pub hwm_kb: u64,
    /// `VmSize`, kB.
    pub vsz_kb: u64,
    /// Proportional set size (`smaps_rollup`: shared pages divided among their users), kB.
    pub pss_kb: u64,
    pub threads: u64,
    pub fds: u64,
}

fn status_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| BenchError::io(format!("reading {}", path.display()), e))
}

/// Memory, thread and fd counts of `pid`.
pub fn stats(pid: i32) -> Result<ProcStats> {
    let base = Path::new("/proc").join(pid.to_string());
    let status = read(&base.join("status"))?;
    // Absent on old kernels: then 0.
    let pss_kb = std::fs::read_to_string(base.join("smaps_rollup"))
        .map(|t| status_field(&t, "Pss"))
        .unwrap_or(0);
    let fds = std::fs::read_dir(base.join("fd"))
        .map_err(|e| BenchError::io(format!("listing /proc/{pid}/fd"), e))?
        .count();
    Ok(ProcStats {
        rss_kb: status_field(&status, "VmRSS"),
        rss_anon_kb: status_field(&status, "RssAnon"),
        rss_file_kb: status_field(&status, "RssFile"),
        hwm_kb: status_field(&status, "VmHWM"),
        vsz_kb: status_field(&status, "VmSize"),
        pss_kb,
        threads: status_field(&status, "Threads"),
        fds: u64::try_from(fds).unwrap_or(u64::MAX),
    })
}

/// CPU accounting of a whole process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    /// `utime + stime` of `/proc/PID/stat` (all threads, incl. reaped ones), clock ticks.
    pub ticks: u64,
    /// Sum of `/proc/PID/task/*/schedstat` run time (live threads only), ns.
    pub run_ns: u64,
    /// Voluntary + involuntary context switches of the live threads.
    pub ctx_switches: u64,
    /// Voluntary context switches of the live threads: each is a sleeping thread woken up.
    pub wakeups: u64,
}

/// `utime + stime` from a `/proc/PID/stat` line (fields 14 and 15, after the `(comm)`).
fn stat_ticks(stat: &str) -> u64 {
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // After ")": field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

pub fn cpu(pid: i32) -> Result<CpuSample> {
    let base = Path::new("/proc").join(pid.to_string());
    let ticks = stat_ticks(&read(&base.join("stat"))?);
    let mut run_ns = 0;
    let mut ctx = 0;
    let mut wakeups = 0;
    let tasks = std::fs::read_dir(base.join("task"))
        .map_err(|e| BenchError::io(format!("listing /proc/{pid}/task"), e))?;
    for t in tasks.flatten() {
        // A thread may end between the listing and the read: skip it.
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            run_ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
            let voluntary = status_field(&s, "voluntary_ctxt_switches");
            wakeups += voluntary;
            ctx += voluntary + status_field(&s, "nonvoluntary_ctxt_switches");
        }
    }
    Ok(CpuSample {
        ticks,
        run_ns,
        ctx_switches: ctx,
        wakeups,
    })
}

/// Clock ticks per second for `/proc/PID/stat` (`getconf CLK_TCK`; Linux' USER_HZ is 100).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// The three load averages, as `uptime` prints them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU time between two samples, in seconds (from ticks) and ns (from schedstat).
pub fn cpu_delta(a: CpuSample, b: CpuSample, hz: u64) -> (Duration, Duration, u64) {
    let ticks = b.ticks.saturating_sub(a.ticks);
    let from_ticks = Duration::from_secs_f64(ticks as f64 / hz.max(1) as f64);
    let from_sched = Duration::from_nanos(b.run_ns.saturating_sub(a.run_ns));
    (
        from_ticks,
        from_sched,
        b.ctx_switches.saturating_sub(a.ctx_switches),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_text() {
        let st = "VmHWM:\t  4000 kB\nVmRSS:\t  3000 kB\nThreads:\t4\n";
        assert_eq!(status_field(st, "VmRSS"), 3000);
        assert_eq!(status_field(st, "Threads"), 4);
        assert_eq!(status_field(st, "Nope"), 0);
        let stat = "123 (hi there) S 1 2 3 4 5 6 7 8 9 10 17 5 0 0";
        assert_eq!(stat_ticks(stat), 22);
        let me = i32::try_from(std::process::id()).unwrap_or(1);
        assert!(stats(me).map(|s| s.rss_kb > 0).unwrap_or(false));
    }
}
