//! Soak benchmark: many start/stop cycles of oneshot units over a 3-node cluster with monitors
//! open, counting every job's `JobRemoved` and sampling the daemons' memory, threads and fds.
//! Needs root (it brings up a harness cluster). Run through `ci/soak`.
//!
//! ```text
//! hirte-soak [--cycles N] [--concurrency C] [--units-per-node U] [--warmup W]
//!            [--max-minutes M] [--out FILE]
//! ```
//!
//! A cycle is `StartUnit` of a `Type=oneshot` `/bin/true` unit, its `JobRemoved`, then
//! `StopUnit` of it and that `JobRemoved`. Each node runs `C` cycles at a time in `C` slots;
//! slot `k` uses unit `k mod U`, so with `U >= C` no two jobs of a node ever hit one unit at
//! once, and with `U < C` (the default `U = 1`) they do. A job whose `JobRemoved` has not come
//! within 20 s is counted as lost and its slot moves on. The report (markdown) goes to stdout
//! and, with `--out`, to a file. Exit status 1 if a `JobRemoved` was lost.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbus::blocking::Connection;
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::names::escape_path_element;
use hirte_tests::{Cluster, ClusterSpec};

const NODES: [&str; 3] = ["primary", "agent1", "agent2"];
const BUS_NAME: &str = "org.containers.hirte";
const MANAGER_PATH: &str = "/org/containers/hirte";
const MANAGER_IFACE: &str = "org.containers.hirte.Manager";
const NODE_IFACE: &str = "org.containers.hirte.Node";
const MONITOR_IFACE: &str = "org.containers.hirte.Monitor";
const UNIT: &str =
    "[Unit]\nDescription=Soak oneshot\n[Service]\nType=oneshot\nExecStart=/bin/true\n";
/// How long a job may take before the soak stops waiting for its `JobRemoved`.
const JOB_GRACE: Duration = Duration::from_secs(20);

struct Opts {
    cycles: u64,
    concurrency: usize,
    units: usize,
    warmup: u64,
    max: Duration,
    out: Option<String>,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        cycles: 10_000,
        concurrency: 4,
        units: 1,
        warmup: 500,
        max: Duration::from_secs(9 * 60),
        out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{a}: {e}"));
        match a.as_str() {
            "--cycles" => o.cycles = num(val()?)?,
            "--concurrency" => o.concurrency = usize::try_from(num(val()?)?.max(1)).map_err(|e| e.to_string())?,
            "--units-per-node" => o.units = usize::try_from(num(val()?)?.max(1)).map_err(|e| e.to_string())?,
            "--warmup" => o.warmup = num(val()?)?,
            "--max-minutes" => o.max = Duration::from_secs(num(val()?)? * 60),
            "--out" => o.out = Some(val()?),
            "-h" | "--help" => {
                return Err("usage: hirte-soak [--cycles N] [--concurrency C] [--units-per-node U] [--warmup W] [--max-minutes M] [--out FILE]".into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// RSS (KiB), threads, open fds of a process.
#[derive(Clone, Copy, Default, Debug)]
struct Usage {
    rss_kib: u64,
    threads: u64,
    fds: u64,
}

fn usage(pid: Option<i32>) -> Usage {
    let Some(pid) = pid else {
        return Usage::default();
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Usage {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
    }
}

/// One usage row per daemon: manager, then each agent.
fn snapshot(c: &Cluster) -> Vec<(String, Usage)> {
    let mut v = vec![("manager".to_string(), usage(c.manager_pid()))];
    for n in NODES {
        v.push((format!("agent {n}"), usage(c.agent_pid(n))));
    }
    v
}

fn node_path(n: &str) -> String {
    format!("/org/containers/hirte/node/{}", escape_path_element(n))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Start,
    Stop,
}

struct Cycle {
    node: usize,
    slot: usize,
    unit: String,
    phase: Phase,
    job: Option<String>,
    since: Instant,
}

#[derive(Default)]
struct Counts {
    cycles_started: u64,
    cycles_done: u64,
    cycles_failed: u64,
    jobs_created: u64,
    job_removed: u64,
    job_new: u64,
    call_errors: BTreeMap<String, u64>,
    results: BTreeMap<String, u64>,
    lost: Vec<String>,
    lost_jobs: Vec<String>,
    max_latency: Duration,
    total_latency: Duration,
}

/// Counts monitor signals on its own connection until told to stop.
fn spawn_monitor(
    c: &Cluster,
    units: &[String],
    stop: Arc<AtomicBool>,
) -> Result<(std::thread::JoinHandle<()>, Arc<AtomicU64>), String> {
    let conn = c.system_bus().map_err(|e| e.to_string())?;
    let proxy = conn.with_proxy(BUS_NAME, MANAGER_PATH, Duration::from_secs(30));
    let (mon,): (dbus::Path,) = proxy
        .method_call(MANAGER_IFACE, "CreateMonitor", ())
        .map_err(|e| format!("CreateMonitor: {e}"))?;
    let mp = conn.with_proxy(BUS_NAME, mon.clone(), Duration::from_secs(30));
    for n in NODES {
        let _: (u32,) = mp
            .method_call(MONITOR_IFACE, "SubscribeList", (n, units.to_vec()))
            .map_err(|e| format!("SubscribeList: {e}"))?;
    }
    let count = Arc::new(AtomicU64::new(0));
    let c2 = count.clone();
    let h = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(Some(m)) = conn
                .channel()
                .blocking_pop_message(Duration::from_millis(100))
            {
                if m.msg_type() == MessageType::Signal
                    && m.interface().as_deref() == Some(MONITOR_IFACE)
                {
                    c2.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    Ok((h, count))
}

fn send_job_call(conn: &Connection, cy: &Cycle) -> Result<u32, String> {
    let member = match cy.phase {
        Phase::Start => "StartUnit",
        Phase::Stop => "StopUnit",
    };
    let node = NODES.get(cy.node).ok_or("bad node index")?;
    let msg = Message::new_method_call(BUS_NAME, node_path(node), NODE_IFACE, member)
        .map_err(|e| e.to_string())?
        .append2(cy.unit.as_str(), "replace");
    conn.channel()
        .send(msg)
        .map_err(|()| "send failed".to_string())
}

fn run(o: &Opts) -> Result<(String, bool), String> {
    let mut spec = ClusterSpec::new(&NODES);
    spec.start_manager = false;
    spec.start_agents = false;
    let mut c = Cluster::start(spec).map_err(|e| e.to_string())?;
    // Info level: the daemons' logs as in production, without per-message debug lines.
    for n in NODES {
        let dir = c.node_config_dir(n).ok_or("no config dir")?;
        std::fs::write(
            dir.join("agent.conf.d/50-soak.conf"),
            "[hirte-agent]\nLogLevel=info\n",
        )
        .map_err(|e| e.to_string())?;
    }
    let first = c.node_config_dir("primary").ok_or("no config dir")?;
    std::fs::write(
        first.join("hirte.conf.d/50-soak.conf"),
        "[hirte]\nLogLevel=info\n",
    )
    .map_err(|e| e.to_string())?;
    c.start_manager().map_err(|e| e.to_string())?;
    for n in NODES {
        c.start_agent(n).map_err(|e| e.to_string())?;
    }
    c.wait_all_online(Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    let units: Vec<String> = (0..o.units).map(|k| format!("soak{k}.service")).collect();
    for n in NODES {
        for u in &units {
            c.write_unit(n, u, UNIT).map_err(|e| e.to_string())?;
        }
    }
    let before = snapshot(&c);

    let stop = Arc::new(AtomicBool::new(false));
    let (mon_thread, mon_events) = spawn_monitor(&c, &units, stop.clone())?;
    let conn = c.system_bus().map_err(|e| e.to_string())?;
    conn.add_match_no_cb(
        "type='signal',sender='org.containers.hirte',interface='org.containers.hirte.Manager'",
    )
    .map_err(|e| e.to_string())?;

    let mut counts = Counts::default();
    let mut cycles: HashMap<u64, Cycle> = HashMap::new();
    let mut by_serial: HashMap<u32, u64> = HashMap::new();
    let mut by_job: HashMap<String, u64> = HashMap::new();
    // JobRemoved seen before the reply naming the job (should not happen, handled anyway).
    let mut early_removed: HashMap<String, String> = HashMap::new();
    let mut busy: Vec<Vec<bool>> = vec![vec![false; o.concurrency]; NODES.len()];
    let mut next_id: u64 = 0;
    let t0 = Instant::now();
    let mut warm: Option<(Vec<(String, Usage)>, Duration)> = None;
    let mut peak: Vec<(String, Usage)> = before.clone();
    let mut last_sample = Instant::now();
    let mut stopped_early = false;
    let mut trend: Vec<(u64, Vec<(String, Usage)>)> = Vec::new();

    loop {
        // Keep every free slot of every node busy, until N cycles have been started.
        for (node, node_slots) in busy.iter_mut().enumerate() {
            for (slot, is_busy) in node_slots.iter_mut().enumerate() {
                if *is_busy || counts.cycles_started >= o.cycles || stopped_early {
                    continue;
                }
                let cy = Cycle {
                    node,
                    slot,
                    unit: units.get(slot % units.len()).cloned().unwrap_or_default(),
                    phase: Phase::Start,
                    job: None,
                    since: Instant::now(),
                };
                let serial = send_job_call(&conn, &cy)?;
                next_id += 1;
                by_serial.insert(serial, next_id);
                cycles.insert(next_id, cy);
                counts.cycles_started += 1;
                *is_busy = true;
            }
        }
        if cycles.is_empty() {
            break;
        }
        if t0.elapsed() > o.max && !stopped_early {
            eprintln!(
                "hirte-soak: time limit reached after {} cycles; finishing those in flight",
                counts.cycles_done
            );
            stopped_early = true;
        }
        // Jobs that never end are counted as lost and dropped.
        let stale: Vec<u64> = cycles
            .iter()
            .filter(|(_, cy)| cy.since.elapsed() > JOB_GRACE)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(cy) = cycles.remove(&id) {
                counts.lost.push(format!(
                    "{} {:?} of {} job {:?}: no answer or JobRemoved within {JOB_GRACE:?}",
                    NODES.get(cy.node).unwrap_or(&"?"),
                    cy.phase,
                    cy.unit,
                    cy.job
                ));
                counts.cycles_failed += 1;
                if let Some(j) = &cy.job {
                    by_job.remove(j);
                    counts.lost_jobs.push(j.clone());
                }
                if let Some(b) = busy.get_mut(cy.node).and_then(|n| n.get_mut(cy.slot)) {
                    *b = false;
                }
            }
        }
        let Ok(Some(mut m)) = conn
            .channel()
            .blocking_pop_message(Duration::from_millis(100))
        else {
            continue;
        };
        let mut advance: Option<(u64, Option<String>)> = None;
        match m.msg_type() {
            MessageType::MethodReturn | MessageType::Error => {
                let Some(id) = m.get_reply_serial().and_then(|s| by_serial.remove(&s)) else {
                    continue;
                };
                match m.as_result() {
                    Ok(r) => {
                        let job = r
                            .read1::<dbus::Path>()
                            .map(|p| p.to_string())
                            .map_err(|e| e.to_string())?;
                        counts.jobs_created += 1;
                        if let Some(result) = early_removed.remove(&job) {
                            *counts.results.entry(result).or_default() += 1;
                            counts.job_removed += 1;
                            advance = Some((id, None));
                        } else {
                            if let Some(cy) = cycles.get_mut(&id) {
                                cy.job = Some(job.clone());
                            }
                            by_job.insert(job, id);
                        }
                    }
                    Err(e) => {
                        let name = e.name().unwrap_or("?").to_string();
                        *counts.call_errors.entry(name).or_default() += 1;
                        advance = Some((id, Some("call failed".into())));
                    }
                }
            }
            MessageType::Signal => match m.member().as_deref() {
                Some("JobNew") => counts.job_new += 1,
                Some("JobRemoved") => {
                    let Ok((_, path, _, _, result)) =
                        m.read5::<u32, dbus::Path, String, String, String>()
                    else {
                        continue;
                    };
                    let path = path.to_string();
                    match by_job.remove(&path) {
                        Some(id) => {
                            counts.job_removed += 1;
                            *counts.results.entry(result).or_default() += 1;
                            advance = Some((id, None));
                        }
                        None => {
                            early_removed.insert(path, result);
                        }
                    }
                }
                _ => {}
            },
            _ => {}
        }
        if let Some((id, failure)) = advance {
            let Some(mut cy) = cycles.remove(&id) else {
                continue;
            };
            let lat = cy.since.elapsed();
            counts.max_latency = counts.max_latency.max(lat);
            counts.total_latency += lat;
            let finished = failure.is_some() || cy.phase == Phase::Stop;
            if finished {
                if failure.is_some() {
                    counts.cycles_failed += 1;
                } else {
                    counts.cycles_done += 1;
                }
                if let Some(b) = busy.get_mut(cy.node).and_then(|n| n.get_mut(cy.slot)) {
                    *b = false;
                }
                let step = (o.cycles / 10).max(1);
                if counts.cycles_done % step == 0 {
                    trend.push((counts.cycles_done, snapshot(&c)));
                }
                if warm.is_none() && counts.cycles_done >= o.warmup {
                    warm = Some((snapshot(&c), t0.elapsed()));
                }
            } else {
                cy.phase = Phase::Stop;
                cy.job = None;
                cy.since = Instant::now();
                let serial = send_job_call(&conn, &cy)?;
                by_serial.insert(serial, id);
                cycles.insert(id, cy);
            }
        }
        if last_sample.elapsed() > Duration::from_secs(1) {
            last_sample = Instant::now();
            for (p, s) in peak.iter_mut().zip(snapshot(&c)) {
                p.1.rss_kib = p.1.rss_kib.max(s.1.rss_kib);
                p.1.threads = p.1.threads.max(s.1.threads);
                p.1.fds = p.1.fds.max(s.1.fds);
            }
        }
    }
    let took = t0.elapsed();
    // Let the daemons settle (link buffers drain, allocator returns memory), then measure.
    std::thread::sleep(Duration::from_secs(2));
    let after = snapshot(&c);
    stop.store(true, Ordering::Relaxed);
    let _ = mon_thread.join();
    // Jobs the soak gave up on: does the manager still export them (a leaked job)?
    let leftover_jobs = counts
        .lost_jobs
        .iter()
        .filter(|j| {
            use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
            let state: Result<String, dbus::Error> = conn
                .with_proxy(BUS_NAME, j.as_str(), Duration::from_secs(10))
                .get("org.containers.hirte.Job", "State");
            state.is_ok()
        })
        .count();
    let all_online = c
        .list_nodes()
        .is_some_and(|rows| rows.iter().all(|(_, s)| s == "online"));

    let lost = counts.jobs_created.saturating_sub(counts.job_removed);
    let ok = lost == 0 && counts.lost.is_empty() && leftover_jobs == 0 && all_online;
    let mut r = String::new();
    let cps = counts.cycles_done as f64 / took.as_secs_f64().max(0.001);
    r.push_str(&format!(
        "Soak: {} of {} cycles done ({} failed) in {:.1} s ({cps:.1} cycles/s, {:.1} jobs/s); 3 nodes, {} concurrent cycles per node over {} unit(s) per node, monitors open ({} monitor signals).\n\n",
        counts.cycles_done,
        o.cycles,
        counts.cycles_failed,
        took.as_secs_f64(),
        cps * 2.0,
        o.concurrency,
        o.units,
        mon_events.load(Ordering::Relaxed)
    ));
    r.push_str(&format!(
        "- jobs created (StartUnit/StopUnit answered with a job): {}\n- JobNew signals: {}\n- JobRemoved signals for those jobs: {}\n- lost (created, never removed): {lost}\n- of the lost jobs, still exported by the manager after the run (leaked job objects): {leftover_jobs}\n- results: {:?}\n- call errors: {:?}\n- job latency (call to JobRemoved): mean {:.1} ms, max {:.1} ms\n- all nodes online at the end: {all_online}\n",
        counts.jobs_created,
        counts.job_new,
        counts.job_removed,
        counts.results,
        counts.call_errors,
        counts.total_latency.as_secs_f64() * 1000.0 / (counts.job_removed.max(1) as f64),
        counts.max_latency.as_secs_f64() * 1000.0
    ));
    for l in counts.lost.iter().take(10) {
        r.push_str(&format!("- LOST: {l}\n"));
    }
    let (warm_rows, warm_at) = warm.unwrap_or_else(|| (after.clone(), took));
    r.push_str(&format!(
        "\n| process | RSS KiB start | after warm-up ({} cycles, {:.0} s) | end | peak | threads start / warm / end / peak | fds start / warm / end / peak |\n|---|---|---|---|---|---|---|\n",
        o.warmup.min(counts.cycles_done),
        warm_at.as_secs_f64()
    ));
    for (((name, b), (_, w)), ((_, a), (_, p))) in
        before.iter().zip(&warm_rows).zip(after.iter().zip(&peak))
    {
        r.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} / {} / {} / {} | {} / {} / {} / {} |\n",
            b.rss_kib,
            w.rss_kib,
            a.rss_kib,
            p.rss_kib.max(a.rss_kib),
            b.threads,
            w.threads,
            a.threads,
            p.threads.max(a.threads),
            b.fds,
            w.fds,
            a.fds,
            p.fds.max(a.fds)
        ));
    }
    r.push_str("\nRSS (KiB) every 10 % of the cycles: cycles: manager / agents\n\n");
    for (done, rows) in &trend {
        let rss: Vec<String> = rows.iter().map(|(_, u)| u.rss_kib.to_string()).collect();
        r.push_str(&format!("- {done}: {}\n", rss.join(" / ")));
    }
    if !ok {
        r.push_str(&format!(
            "\nManager log tail:\n```\n{}\n```\n",
            c.log_tails()
                .lines()
                .take(60)
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    c.shutdown().map_err(|e| e.to_string())?;
    Ok((r, ok))
}

fn main() -> ExitCode {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hirte-soak: {e}");
            return ExitCode::from(2);
        }
    };
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("hirte-soak: needs root (it creates namespaces and runs systemd)");
        return ExitCode::from(2);
    }
    match run(&o) {
        Ok((report, ok)) => {
            println!("{report}");
            if let Some(path) = &o.out {
                if let Err(e) = std::fs::write(path, &report) {
                    eprintln!("hirte-soak: writing {path}: {e}");
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("hirte-soak: {e}");
            ExitCode::FAILURE
        }
    }
}
