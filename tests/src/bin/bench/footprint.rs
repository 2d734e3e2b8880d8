//! Rows 4 and 6: what the daemons hold (memory, threads, fds) and what heartbeats cost the
//! manager, from 0 to 1,000 connected nodes.

use std::path::Path;
use std::time::{Duration, Instant};

use dbus::blocking::Connection;
use hirte_tests::{Cluster, ClusterSpec, MANAGER_PORT};

use crate::bench::dbusx::{self, call, job_roundtrip, method, HIRTE_DEST, HIRTE_NODE, SD_UNIT};
use crate::bench::error::{BenchError, Result};
use crate::bench::fake::{self, Fleet};
use crate::bench::procfs::{self, ProcStats};
use crate::bench::report::{fmt_num, Goal, Json, Metric, TargetOn};
use crate::bench::setup::TRUE_UNIT;
use crate::bench::{settle, Ctx};

/// kB (KiB, as /proc counts) to MB (10^6 bytes): the stricter reading of the targets.
pub fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

fn stats_json(s: &ProcStats) -> Json {
    Json::obj(vec![
        ("rss_kb", Json::num(s.rss_kb as f64)),
        ("rss_anon_kb", Json::num(s.rss_anon_kb as f64)),
        ("rss_file_kb", Json::num(s.rss_file_kb as f64)),
        ("hwm_kb", Json::num(s.hwm_kb as f64)),
        ("vsz_kb", Json::num(s.vsz_kb as f64)),
        ("pss_kb", Json::num(s.pss_kb as f64)),
        ("threads", Json::num(s.threads as f64)),
        ("fds", Json::num(s.fds as f64)),
    ])
}

fn detail(s: &ProcStats) -> String {
    format!(
        "{} threads, {} fds; anon {} / file {} MB; PSS {} MB; peak {} MB",
        s.threads,
        s.fds,
        fmt_num(mb(s.rss_anon_kb)),
        fmt_num(mb(s.rss_file_kb)),
        fmt_num(mb(s.pss_kb)),
        fmt_num(mb(s.hwm_kb))
    )
}

/// Readings of the daemons over the run, in order.
#[derive(Default)]
pub struct Timeline {
    pub manager: Vec<(String, ProcStats)>,
    pub agent: Vec<(String, ProcStats)>,
}

impl Timeline {
    pub fn manager(&mut self, ctx: &Ctx, c: &Cluster, label: &str) -> Result<ProcStats> {
        let pid = c
            .manager_pid()
            .ok_or_else(|| BenchError::failed("manager not running"))?;
        let s = procfs::stats(pid)?;
        ctx.log(&format!(
            "   manager [{label}]: RSS {} MB, {}",
            fmt_num(mb(s.rss_kb)),
            detail(&s)
        ));
        self.manager.push((label.to_string(), s));
        Ok(s)
    }

    pub fn agent(&mut self, ctx: &Ctx, c: &Cluster, node: &str, label: &str) -> Result<ProcStats> {
        let pid = c
            .agent_pid(node)
            .ok_or_else(|| BenchError::failed(format!("agent {node} not running")))?;
        let s = procfs::stats(pid)?;
        ctx.log(&format!(
            "   agent {node} [{label}]: RSS {} MB, {}",
            fmt_num(mb(s.rss_kb)),
            detail(&s)
        ));
        self.agent.push((format!("{node}: {label}"), s));
        Ok(s)
    }

    pub fn to_json(&self) -> Json {
        let arr = |v: &Vec<(String, ProcStats)>| {
            Json::Arr(
                v.iter()
                    .map(|(l, s)| {
                        Json::obj(vec![
                            ("when", Json::str(l.clone())),
                            ("stats", stats_json(s)),
                        ])
                    })
                    .collect(),
            )
        };
        Json::obj(vec![
            ("manager", arr(&self.manager)),
            ("agent", arr(&self.agent)),
        ])
    }
}

/// Issue 13, target 3: the manager's idle CPU per node per second, at most this (µs).
const IDLE_CPU_TARGET_US: f64 = 20.0;

/// Issue 13, target 3: wake-ups the manager may take per second beyond one per heartbeat
/// received, for its nearest deadlines (its own timers: node liveness, call deadlines), whatever
/// the node count.
const DEADLINE_WAKEUPS_PER_S: f64 = 1.0;

pub fn manager_metric(key: &str, label: &str, s: &ProcStats) -> Metric {
    Metric::new("4", key, label, mb(s.rss_kb), "MB").detail(detail(s))
}

pub fn agent_metric(key: &str, label: &str, s: &ProcStats) -> Metric {
    Metric::new("4", key, label, mb(s.rss_kb), "MB")
        .detail(detail(s))
        .c(3.4)
        .target(TargetOn::Value, Goal::AtMost(3.0))
}

/// RSS of every running agent (kB), for the spread across nodes.
pub fn all_agents(c: &Cluster) -> Vec<u64> {
    c.nodes()
        .iter()
        .filter_map(|n| c.agent_pid(n))
        .filter_map(|p| procfs::stats(p).ok())
        .map(|s| s.rss_kb)
        .collect()
}

/// `n` operations on `node` through the manager: unit starts to job done, property reads,
/// `ListUnits` and `GetUnitProperties`, in turn.
pub fn agent_ops(c: &Cluster, node: &str, n: usize) -> Result<()> {
    let sys = c.system_bus()?;
    dbusx::watch_manager_jobs(&sys)?;
    let path = dbusx::node_path(&sys, node)?;
    for i in 0..n {
        match i % 4 {
            0 => {
                job_roundtrip(&sys, dbusx::node_job_call(&path, "StartUnit", TRUE_UNIT)?)?;
            }
            1 => {
                call(
                    &sys,
                    method(HIRTE_DEST, &path, HIRTE_NODE, "GetUnitProperty")?.append3(
                        TRUE_UNIT,
                        SD_UNIT,
                        "ActiveState",
                    ),
                )?;
            }
            2 => {
                call(&sys, method(HIRTE_DEST, &path, HIRTE_NODE, "ListUnits")?)?;
            }
            _ => {
                call(
                    &sys,
                    method(HIRTE_DEST, &path, HIRTE_NODE, "GetUnitProperties")?
                        .append2(TRUE_UNIT, SD_UNIT),
                )?;
            }
        }
    }
    Ok(())
}

/// Waits until `ListNodes` shows at least `want` nodes online.
pub fn wait_online(conn: &Connection, want: usize, timeout: Duration) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let online = dbusx::list_nodes(conn)
            .map(|rows| rows.iter().filter(|(_, s)| s == "online").count())
            .unwrap_or(0);
        if online >= want {
            return Ok(t.elapsed());
        }
        if t.elapsed() > timeout {
            return Err(BenchError::failed(format!(
                "only {online} of {want} nodes online after {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fake agent names `fake-0000` ...
pub fn fake_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("fake-{i:04}")).collect()
}

/// Manager CPU over one window while the fleet heartbeats.
struct Window {
    wall: f64,
    cpu_ticks: f64,
    cpu_sched: f64,
    heartbeats: u64,
    echoes: u64,
    ctx_switches: u64,
    /// Voluntary context switches of all manager threads: wake-ups of a sleeping thread.
    wakeups: u64,
}

fn window(pid: i32, fleet: &Fleet, d: Duration, hz: u64) -> Result<Window> {
    let a = procfs::cpu(pid)?;
    let s0 = fleet.sent();
    let e0 = fleet.echoes();
    let t = Instant::now();
    std::thread::sleep(d);
    let b = procfs::cpu(pid)?;
    let s1 = fleet.sent();
    let e1 = fleet.echoes();
    let wall = t.elapsed().as_secs_f64();
    let (ticks, sched, ctxsw) = procfs::cpu_delta(a, b, hz);
    Ok(Window {
        wall,
        cpu_ticks: ticks.as_secs_f64(),
        cpu_sched: sched.as_secs_f64(),
        heartbeats: s1 - s0,
        echoes: e1 - e0,
        ctx_switches: ctxsw,
        wakeups: b.wakeups.saturating_sub(a.wakeups),
    })
}

fn window_json(w: &Window) -> Json {
    Json::obj(vec![
        ("wall_s", Json::num(w.wall)),
        ("cpu_s_utime_stime", Json::num(w.cpu_ticks)),
        ("cpu_s_schedstat", Json::num(w.cpu_sched)),
        ("heartbeats", Json::num(w.heartbeats as f64)),
        ("echoes", Json::num(w.echoes as f64)),
        ("context_switches", Json::num(w.ctx_switches as f64)),
        (
            "wakeups_voluntary_ctxt_switches",
            Json::num(w.wakeups as f64),
        ),
    ])
}

/// Row 4 at 500 nodes: fake agents join the real ones on the running manager.
pub fn at_500(
    ctx: &mut Ctx,
    tl: &mut Timeline,
    c: &Cluster,
    node: &str,
    real: usize,
    fakes: &[String],
) -> Result<()> {
    ctx.phase(&format!(
        "row 4: manager with {} connected nodes ({real} real agents + {} fake)",
        real + fakes.len(),
        fakes.len()
    ));
    let sys = c.system_bus()?;
    let fleet = Fleet::start(Duration::from_secs(1))?;
    for chunk in fakes.chunks(100) {
        fleet.add(fake::connect(c, node, MANAGER_PORT, chunk)?)?;
    }
    wait_online(&sys, real + fakes.len(), Duration::from_secs(60))?;
    settle(
        ctx,
        Duration::from_secs(3),
        "heartbeats of all nodes flowing",
    );
    ctx.log(&format!("   fake agents held: {}", fleet.held()));
    let s = tl.manager(ctx, c, &format!("{} nodes", real + fakes.len()))?;
    ctx.metric(
        manager_metric(
            "mem.manager_500",
            &format!(
                "manager RSS, {} connected nodes ({} fake agents)",
                real + fakes.len(),
                fakes.len()
            ),
            &s,
        )
        .target(TargetOn::Value, Goal::Below(6.0)),
    );
    fleet.stop();
    // The fakes' connections are closed: back to the real agents only.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let online = dbusx::list_nodes(&sys)?
            .iter()
            .filter(|(_, s)| s == "online")
            .count();
        if online <= real {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Row 6: a manager with 1,001 allowed nodes, fed by 10 .. 1,000 fake agents.
pub fn scale_curve(ctx: &mut Ctx, bins: &Path, steps: &[usize]) -> Result<()> {
    ctx.phase("row 6: scale curve with fake agents");
    let max = steps.iter().copied().max().unwrap_or(0);
    let names = fake_names(max);
    let mut allowed = vec!["s0".to_string()];
    allowed.extend(names.iter().cloned());
    let mut spec = ClusterSpec::new(&["s0"]);
    spec.start_agents = false;
    spec.start_manager = false;
    spec.bin_dir = Some(bins.to_path_buf());
    let mut c = Cluster::start(spec)?;
    crate::bench::setup::drop_ins(
        &c,
        &format!(
            "[hirte]\nLogLevel=info\nAllowedNodeNames={}\n",
            allowed.join(",")
        ),
        "[hirte-agent]\nLogLevel=info\n",
    )?;
    c.start_manager()?;
    let pid = c
        .manager_pid()
        .ok_or_else(|| BenchError::failed("manager not running"))?;
    let sys = c.system_bus()?;
    settle(ctx, Duration::from_secs(1), "manager idle");
    let base = procfs::stats(pid)?;
    ctx.log(&format!(
        "   0 nodes: RSS {} MB, {}",
        fmt_num(mb(base.rss_kb)),
        detail(&base)
    ));
    let fleet = Fleet::start(Duration::from_secs(1))?;
    let mut have = 0usize;
    let mut points = vec![Json::obj(vec![
        ("nodes", Json::num(0.0)),
        ("stats", stats_json(&base)),
    ])];
    let w = ctx.sizes.cpu_window;
    for &n in steps {
        if let Some(batch) = names.get(have..n) {
            for chunk in batch.chunks(100) {
                fleet.add(fake::connect(&c, "s0", MANAGER_PORT, chunk)?)?;
            }
        }
        have = n;
        wait_online(&sys, n, Duration::from_secs(60))?;
        fleet.set_interval(Duration::from_secs(1));
        settle(ctx, Duration::from_secs(2), "heartbeats at 1/s");
        let st = procfs::stats(pid)?;
        let a = window(pid, &fleet, w, ctx.hz)?;
        fleet.set_interval(Duration::from_millis(250));
        settle(ctx, Duration::from_millis(1200), "heartbeats at 4/s");
        let b = window(pid, &fleet, w, ctx.hz)?;
        fleet.set_interval(Duration::from_secs(1));
        let online = dbusx::list_nodes(&sys)?
            .iter()
            .filter(|(_, s)| s == "online")
            .count();
        let (ra_cpu, ra_hb) = (a.cpu_sched / a.wall, a.heartbeats as f64 / a.wall);
        let (rb_cpu, rb_hb) = (b.cpu_sched / b.wall, b.heartbeats as f64 / b.wall);
        let per_hb_ticks = a.cpu_ticks / a.heartbeats.max(1) as f64 * 1e6;
        // schedstat (ns) rather than utime+stime (10 ms ticks): at 10 nodes a window holds
        // about one tick of CPU. Both are in the JSON.
        let per_hb_sched = a.cpu_sched / a.heartbeats.max(1) as f64 * 1e6;
        let marginal = if rb_hb > ra_hb {
            (rb_cpu - ra_cpu) / (rb_hb - ra_hb) * 1e6
        } else {
            f64::NAN
        };
        let idle_per_node = (ra_cpu - marginal / 1e6 * ra_hb) / n as f64 * 1e6;
        let ctx_per_s = a.ctx_switches as f64 / a.wall;
        let wake_per_s = a.wakeups as f64 / a.wall;
        let wake_per_hb = a.wakeups as f64 / a.heartbeats.max(1) as f64;
        let rss_per_node = (st.rss_kb.saturating_sub(base.rss_kb)) as f64 / n as f64;
        ctx.metric(
            Metric::new("6", &format!("scale.cpu_per_hb.{n}"), &format!("manager CPU per heartbeat, {n} nodes at 1 heartbeat/s (all CPU / heartbeats)"), per_hb_sched, "µs")
                .detail(format!(
                    "utime+stime {:.0} µs; marginal {:.0} µs/heartbeat (1/s vs 4/s); fixed {:.1} µs CPU per node per s; {:.1}% of a core; {:.0} context switches/s",
                    per_hb_ticks,
                    marginal,
                    idle_per_node,
                    ra_cpu * 100.0,
                    ctx_per_s
                )),
        );
        ctx.metric(
            Metric::new(
                "6",
                &format!("scale.idle_cpu_per_node.{n}"),
                &format!("manager idle CPU per node per second, {n} nodes (fixed: all CPU minus marginal per heartbeat)"),
                idle_per_node,
                "µs",
            )
            .detail(format!(
                "all CPU {:.1} µs per node per s ({:.1}% of a core); window {:.1} s at 1 heartbeat/s",
                ra_cpu / n as f64 * 1e6,
                ra_cpu * 100.0,
                a.wall
            ))
            .target(TargetOn::Value, Goal::Below(IDLE_CPU_TARGET_US)),
        );
        ctx.metric(
            Metric::new(
                "6",
                &format!("scale.wakeups_per_hb.{n}"),
                &format!("manager wake-ups per heartbeat received, {n} nodes (target: 1 per heartbeat + {} per s for the nearest deadlines)", DEADLINE_WAKEUPS_PER_S),
                wake_per_hb,
                "",
            )
            .detail(format!(
                "wake-ups/s minus heartbeats/s: {:.1} (allowance {}); per node per s: {:.2} wake-ups, {:.2} heartbeats; voluntary context switches of all threads, same window as the CPU",
                wake_per_s - ra_hb,
                DEADLINE_WAKEUPS_PER_S,
                wake_per_s / n as f64,
                ra_hb / n as f64
            ))
            .target(
                TargetOn::Value,
                Goal::AtMost(1.0 + DEADLINE_WAKEUPS_PER_S / ra_hb.max(f64::MIN_POSITIVE)),
            ),
        );
        ctx.metric(
            Metric::new(
                "6",
                &format!("scale.rss_per_node.{n}"),
                &format!("manager RSS per node, {n} nodes"),
                rss_per_node,
                "kB",
            )
            .detail(format!(
                "total {} MB; {} threads, {} fds; {online} online",
                fmt_num(mb(st.rss_kb)),
                st.threads,
                st.fds
            )),
        );
        points.push(Json::obj(vec![
            ("nodes", Json::num(n as f64)),
            ("online", Json::num(online as f64)),
            ("stats", stats_json(&st)),
            ("window_1s", window_json(&a)),
            ("window_250ms", window_json(&b)),
            ("cpu_per_heartbeat_us_ticks", Json::num(per_hb_ticks)),
            ("cpu_per_heartbeat_us_schedstat", Json::num(per_hb_sched)),
            ("marginal_cpu_per_heartbeat_us", Json::num(marginal)),
            ("fixed_cpu_us_per_node_per_s", Json::num(idle_per_node)),
            ("wakeups_per_s", Json::num(wake_per_s)),
            ("wakeups_per_heartbeat", Json::num(wake_per_hb)),
            ("rss_kb_per_node", Json::num(rss_per_node)),
        ]));
    }
    let closed = fleet.closed();
    if closed > 0 {
        ctx.note(format!(
            "row 6: the manager closed {closed} fake agent connections"
        ));
    }
    fleet.stop();
    ctx.section(
        "row6",
        Json::obj(vec![
            ("allowed_nodes", Json::num(allowed.len() as f64)),
            ("fake_agents", Json::str("tests/src/bin/bench/fake.rs: Register + Heartbeat over TCP with hirte_common framing, one thread for all")),
            ("points", Json::Arr(points)),
        ]),
    );
    c.shutdown()?;
    Ok(())
}
