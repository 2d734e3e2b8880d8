//! Rows 1 and 2: a unit start to job done, and a relayed property read, each against the
//! same operation straight on the node's systemd.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbus::blocking::Connection;
use hirte_tests::{connect_bus, Cluster};

use crate::bench::dbusx::{
    self, call, job_roundtrip, method, HIRTE_DEST, HIRTE_NODE, PROPS, SD_DEST, SD_UNIT,
};
use crate::bench::error::{BenchError, Result};
use crate::bench::report::{Goal, Json, Metric, TargetOn};
use crate::bench::setup::{TOGGLE_UNIT, TRUE_UNIT};
use crate::bench::stats::Samples;
use crate::bench::{procfs, settle, spawn, summary_json, Ctx};

/// Bound of one timed command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// `hirtectl ARGS` against the cluster's manager, as an operator on the host runs it.
pub fn hirtectl(c: &Cluster, args: &[&str]) -> Command {
    let mut cmd = Command::new(c.bin_dir().join("hirtectl"));
    cmd.args(args)
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address());
    cmd
}

/// `systemctl --user ARGS` for `node`'s systemd: with `inside`, entered into the node's
/// network and mount namespaces with nsenter (as the harness does); without, run straight
/// from the host with the node's environment (the same private socket, one exec less).
pub fn systemctl(c: &Cluster, node: &str, args: &[&str], inside: bool) -> Result<Command> {
    let run = c
        .node_runtime_dir(node)
        .ok_or_else(|| BenchError::failed(format!("no node {node}")))?;
    let bus = c
        .node_bus_address(node)
        .ok_or_else(|| BenchError::failed(format!("no node {node}")))?;
    let mut cmd = if inside {
        let pid = c
            .systemd_pid(node)
            .ok_or_else(|| BenchError::failed(format!("systemd of {node} not running")))?;
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid.to_string(), "--net", "--mount", "systemctl"]);
        cmd
    } else {
        Command::new("systemctl")
    };
    cmd.arg("--user")
        .args(args)
        .env("XDG_RUNTIME_DIR", run)
        .env("DBUS_SESSION_BUS_ADDRESS", bus)
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .env_remove("DBUS_SYSTEM_BUS_ADDRESS");
    Ok(cmd)
}

/// Times one run of `cmd`; a failed run is an error.
fn time_cmd(mut cmd: Command) -> Result<Duration> {
    let (d, st) = spawn::timed(&mut cmd, COMMAND_TIMEOUT)?;
    if !st.success() {
        let out = spawn::output(&mut cmd, COMMAND_TIMEOUT).err();
        return Err(BenchError::failed(format!(
            "{:?} {:?} exited with {st}: {out:?}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>()
        )));
    }
    Ok(d)
}

fn expect_done(what: &str, result: String) -> Result<()> {
    if result == "done" {
        Ok(())
    } else {
        Err(BenchError::failed(format!("{what}: job ended '{result}'")))
    }
}

/// Row 1 on `node` (a node other than the manager's).
pub fn row1(ctx: &mut Ctx, c: &Cluster, node: &str) -> Result<()> {
    ctx.phase("row 1: start a oneshot /bin/true unit on a remote node");
    let unit = TRUE_UNIT;
    let out = spawn::output(&mut hirtectl(c, &["start", node, unit]), COMMAND_TIMEOUT)?;
    if !out.contains("done") {
        return Err(BenchError::failed(format!("hirtectl start printed: {out}")));
    }
    spawn::output(
        &mut systemctl(c, node, &["start", unit], false)?,
        COMMAND_TIMEOUT,
    )?;
    spawn::output(
        &mut systemctl(c, node, &["start", unit], true)?,
        COMMAND_TIMEOUT,
    )?;
    let sd = c.node_bus(node)?;
    dbusx::watch_systemd_jobs(&sd)?;
    let sys = c.system_bus()?;
    dbusx::watch_manager_jobs(&sys)?;
    let npath = dbusx::node_path(&sys, node)?;
    let raw = |s: &mut Samples| -> Result<()> {
        let t = Instant::now();
        let r = job_roundtrip(&sd, dbusx::sd_job_call("StartUnit", unit)?)?;
        s.push_us(t.elapsed());
        expect_done("raw StartUnit", r)
    };
    let relay = |s: &mut Samples| -> Result<()> {
        let t = Instant::now();
        let r = job_roundtrip(&sys, dbusx::node_job_call(&npath, "StartUnit", unit)?)?;
        s.push_us(t.elapsed());
        expect_done("Node.StartUnit", r)
    };
    let iters = ctx.sizes.start_iters;
    let k = ctx.sizes.inproc_per_iter;
    let mut ctl = Samples::new();
    let mut sc = Samples::new();
    let mut sc_in = Samples::new();
    let mut s_raw = Samples::new();
    let mut s_relay = Samples::new();
    let mut ctl_ver = Samples::new();
    let mut sc_ver = Samples::new();
    let mut scratch = Samples::new();
    for _ in 0..3 {
        raw(&mut scratch)?;
        relay(&mut scratch)?;
        time_cmd(hirtectl(c, &["start", node, unit]))?;
        time_cmd(systemctl(c, node, &["start", unit], false)?)?;
    }
    // Interleaved, in a rotating order, so drift in the machine's load hits all alike.
    for i in 0..iters {
        for step in 0..7 {
            match (step + i) % 7 {
                0 => ctl.push_us(time_cmd(hirtectl(c, &["start", node, unit]))?),
                1 => sc.push_us(time_cmd(systemctl(c, node, &["start", unit], false)?)?),
                2 => sc_in.push_us(time_cmd(systemctl(c, node, &["start", unit], true)?)?),
                3 => {
                    for _ in 0..k {
                        raw(&mut s_raw)?;
                    }
                }
                4 => {
                    for _ in 0..k {
                        relay(&mut s_relay)?;
                    }
                }
                5 => ctl_ver.push_us(time_cmd(hirtectl(c, &["--version"]))?),
                _ => sc_ver.push_us(time_cmd(systemctl(c, node, &["--version"], false)?)?),
            }
        }
    }
    let ms = |s: &Samples| {
        let mut m = s.summary();
        for v in [
            &mut m.min,
            &mut m.p25,
            &mut m.median,
            &mut m.p75,
            &mut m.p99,
            &mut m.p999,
            &mut m.max,
            &mut m.mean,
        ] {
            *v /= 1000.0;
        }
        m
    };
    let (ctl_s, sc_s, sc_in_s) = (ms(&ctl), ms(&sc), ms(&sc_in));
    let (raw_s, relay_s) = (ms(&s_raw), ms(&s_relay));
    let (ctl_ver_s, sc_ver_s) = (ms(&ctl_ver), ms(&sc_ver));
    ctx.metric(
        Metric::median(
            "1",
            "start.hirtectl",
            &format!("`hirtectl start {node} {unit}` to job done"),
            &ctl_s,
            "ms",
        )
        .vs("systemctl", sc_s.median)
        .c_text("0.74x")
        .target(TargetOn::Ratio, Goal::AtMost(0.7)),
    );
    ctx.metric(Metric::median(
        "1",
        "start.systemctl",
        "`systemctl --user start` of the same unit, same node (host exec, node env)",
        &sc_s,
        "ms",
    ));
    ctx.metric(Metric::median(
        "1",
        "start.systemctl_nsenter",
        "the same `systemctl --user start`, entered into the node with nsenter",
        &sc_in_s,
        "ms",
    ));
    ctx.metric(
        Metric::median(
            "1",
            "start.hirtectl_vs_nsenter",
            "`hirtectl start` against the nsenter'd systemctl",
            &ctl_s,
            "ms",
        )
        .vs("systemctl in node", sc_in_s.median),
    );
    ctx.metric(Metric::median(
        "1",
        "start.raw",
        "raw D-Bus StartUnit -> JobRemoved on the node's bus, from Rust (floor)",
        &raw_s,
        "ms",
    ));
    ctx.metric(
        Metric::median(
            "1",
            "start.relay",
            "Node.StartUnit -> JobRemoved through the manager's D-Bus API, from Rust",
            &relay_s,
            "ms",
        )
        .vs("raw", raw_s.median),
    );
    ctx.metric(
        Metric::new(
            "1",
            "start.relay_added",
            "manager+agent relay added over raw (median - median)",
            relay_s.median - raw_s.median,
            "ms",
        )
        .n(relay_s.n)
        .detail(format!(
            "p25 diff {:.3} / p75 diff {:.3}",
            relay_s.p25 - raw_s.p25,
            relay_s.p75 - raw_s.p75
        ))
        .target(TargetOn::Value, Goal::Below(0.3)),
    );
    ctx.metric(
        Metric::median(
            "1",
            "start.hirtectl_version",
            "`hirtectl --version` (process start floor)",
            &ctl_ver_s,
            "ms",
        )
        .vs("systemctl --version", sc_ver_s.median),
    );
    ctx.section(
        "row1",
        Json::obj(vec![
            ("node", Json::str(node)),
            ("unit", Json::str(unit)),
            ("hirtectl_start_ms", summary_json(&ctl_s, "ms")),
            ("systemctl_start_ms", summary_json(&sc_s, "ms")),
            ("systemctl_start_nsenter_ms", summary_json(&sc_in_s, "ms")),
            ("raw_dbus_ms", summary_json(&raw_s, "ms")),
            ("relay_dbus_ms", summary_json(&relay_s, "ms")),
            ("hirtectl_version_ms", summary_json(&ctl_ver_s, "ms")),
            ("systemctl_version_ms", summary_json(&sc_ver_s, "ms")),
        ]),
    );
    Ok(())
}

/// One direct and one relayed read, alternating, `n` times.
fn reads(
    n: usize,
    direct: &dyn Fn() -> Result<Duration>,
    relayed: &dyn Fn() -> Result<Duration>,
) -> Result<(Samples, Samples)> {
    let mut d = Samples::with_capacity(n);
    let mut r = Samples::with_capacity(n);
    for i in 0..n {
        if i % 2 == 0 {
            d.push_us(direct()?);
            r.push_us(relayed()?);
        } else {
            r.push_us(relayed()?);
            d.push_us(direct()?);
        }
    }
    Ok((d, r))
}

/// One load node's loop: start, wait for the job, stop, wait, through the manager; with a
/// `pace`, one start/stop cycle per `pace`, else as fast as the jobs finish.
fn load_loop(
    bus: &str,
    node: &str,
    pace: Option<Duration>,
    stop: &AtomicBool,
    ops: &AtomicU64,
    errors: &AtomicU64,
) -> Result<()> {
    let conn: Connection = connect_bus(bus)?;
    dbusx::watch_manager_jobs(&conn)?;
    let path = dbusx::node_path(&conn, node)?;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for member in ["StartUnit", "StopUnit"] {
            match job_roundtrip(&conn, dbusx::node_job_call(&path, member, TOGGLE_UNIT)?) {
                Ok(r) if r == "done" => {
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(p) = pace {
            next += p;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
    }
    Ok(())
}

struct ReadRow {
    direct: crate::bench::stats::Summary,
    relayed: crate::bench::stats::Summary,
}

/// What the load did while the reads ran.
struct Load {
    secs: f64,
    jobs: u64,
    errors: u64,
    /// Manager CPU over the window, fraction of one core.
    manager_cpu: f64,
}

/// Rows of one read phase; `loaded`: the phase runs start/stop loops, where issue 13 (target
/// 5) wants the relayed read's p99/p50 no worse than the direct read's in the same phase.
fn read_metrics(ctx: &mut Ctx, phase: &str, key: &str, r: &ReadRow, loaded: bool) {
    let (d, v) = (&r.direct, &r.relayed);
    ctx.metric(
        Metric::new(
            "2",
            &format!("read.{key}.added_p50"),
            &format!("relayed read added latency p50 ({phase})"),
            v.median - d.median,
            "µs",
        )
        .n(v.n)
        .detail(format!(
            "added p99 {:.0} µs / p999 {:.0} µs",
            v.p99 - d.p99,
            v.p999 - d.p999
        )),
    );
    ctx.metric(
        Metric::new(
            "2",
            &format!("read.{key}.relayed"),
            &format!("Node.GetUnitProperty ActiveState via manager, p50 ({phase})"),
            v.median,
            "µs",
        )
        .n(v.n)
        .vs("direct", d.median)
        .detail(format!(
            "p99 {:.0} / p999 {:.0} / max {:.0}; direct p99 {:.0} / p999 {:.0}",
            v.p99, v.p999, v.max, d.p99, d.p999
        )),
    );
    let jitter = Metric::new(
        "2",
        &format!("read.{key}.jitter"),
        &format!("relayed read jitter p99/p50 ({phase})"),
        v.p99 / v.median,
        "x",
    )
    .n(v.n)
    .vs("direct read p99/p50", d.p99 / d.median)
    .detail(format!(
        "relayed p99 {:.0} / p50 {:.0} µs; direct p99 {:.0} / p50 {:.0} µs",
        v.p99, v.median, d.p99, d.median
    ));
    // Ratio to the direct read's own p99/p50 at most 1: relayed p99/p50 <= direct p99/p50.
    ctx.metric(if loaded {
        jitter.target(TargetOn::Ratio, Goal::AtMost(1.0))
    } else {
        jitter
    });
}

/// Reads while every node of `load_nodes` runs its start/stop loop.
fn loaded_reads(
    ctx: &Ctx,
    c: &Cluster,
    load_nodes: &[String],
    pace: Option<Duration>,
    n: usize,
    direct: &dyn Fn() -> Result<Duration>,
    relayed: &dyn Fn() -> Result<Duration>,
) -> Result<(ReadRow, Load)> {
    let bus = c.bus_address();
    let mpid = c
        .manager_pid()
        .ok_or_else(|| BenchError::failed("manager not running"))?;
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    std::thread::scope(|s| -> Result<(ReadRow, Load)> {
        let mut handles = Vec::new();
        for ln in load_nodes {
            let (bus, stop, ops, errors) = (&bus, &stop, &ops, &errors);
            handles.push(s.spawn(move || load_loop(bus, ln, pace, stop, ops, errors)));
        }
        settle(ctx, Duration::from_secs(1), "load loops warming up");
        let ops0 = ops.load(Ordering::Relaxed);
        let cpu0 = procfs::cpu(mpid);
        let t = Instant::now();
        let res = reads(n, direct, relayed);
        let secs = t.elapsed().as_secs_f64();
        let cpu1 = procfs::cpu(mpid);
        let jobs = ops.load(Ordering::Relaxed) - ops0;
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(BenchError::failed("a load thread panicked")),
            }
        }
        let (d, r) = res?;
        let manager_cpu = match (cpu0, cpu1) {
            (Ok(a), Ok(b)) => procfs::cpu_delta(a, b, ctx.hz).1.as_secs_f64() / secs,
            _ => f64::NAN,
        };
        Ok((
            ReadRow {
                direct: d.summary(),
                relayed: r.summary(),
            },
            Load {
                secs,
                jobs,
                errors: errors.load(Ordering::Relaxed),
                manager_cpu,
            },
        ))
    })
}

fn load_json(l: &Load) -> Json {
    Json::obj(vec![
        ("seconds", Json::num(l.secs)),
        ("jobs", Json::num(l.jobs as f64)),
        ("jobs_per_s", Json::num(l.jobs as f64 / l.secs)),
        ("job_errors", Json::num(l.errors as f64)),
        ("manager_cpu_share_of_one_core", Json::num(l.manager_cpu)),
    ])
}

/// Row 2: reads of `unit`'s ActiveState on `node`, idle, while `load_nodes` run paced
/// start/stop loops (5 cycles/s each), and while they run them flat out.
pub fn row2(
    ctx: &mut Ctx,
    c: &Cluster,
    node: &str,
    load_nodes: &[String],
    unit: &str,
) -> Result<()> {
    ctx.phase("row 2: relayed property read vs direct");
    let sys = c.system_bus()?;
    let npath = dbusx::node_path(&sys, node)?;
    let sd = c.node_bus(node)?;
    let upath = dbusx::unit_path(&sd, unit)?;
    let direct = || -> Result<Duration> {
        let m = method(SD_DEST, &upath, PROPS, "Get")?.append2(SD_UNIT, "ActiveState");
        let t = Instant::now();
        call(&sd, m)?;
        Ok(t.elapsed())
    };
    let relayed = || -> Result<Duration> {
        let m = method(HIRTE_DEST, &npath, HIRTE_NODE, "GetUnitProperty")?.append3(
            unit,
            SD_UNIT,
            "ActiveState",
        );
        let t = Instant::now();
        call(&sys, m)?;
        Ok(t.elapsed())
    };
    let a = dbusx::read_string_variant(&call(
        &sd,
        method(SD_DEST, &upath, PROPS, "Get")?.append2(SD_UNIT, "ActiveState"),
    )?)?;
    let b = dbusx::read_string_variant(&call(
        &sys,
        method(HIRTE_DEST, &npath, HIRTE_NODE, "GetUnitProperty")?.append3(
            unit,
            SD_UNIT,
            "ActiveState",
        ),
    )?)?;
    if a != b || a.is_empty() {
        return Err(BenchError::failed(format!(
            "direct read '{a}' != relayed read '{b}'"
        )));
    }
    reads(200, &direct, &relayed)?;
    let n = ctx.sizes.reads;
    let (d, r) = reads(n, &direct, &relayed)?;
    let idle = ReadRow {
        direct: d.summary(),
        relayed: r.summary(),
    };
    read_metrics(ctx, "idle", "idle", &idle, false);
    let k = load_nodes.len();
    let pace = Duration::from_millis(200);
    let (paced, paced_load) = loaded_reads(ctx, c, load_nodes, Some(pace), n, &direct, &relayed)?;
    read_metrics(
        ctx,
        &format!(
            "{k} nodes in paced start/stop loops, {:.0} jobs/s",
            paced_load.jobs as f64 / paced_load.secs
        ),
        "paced",
        &paced,
        true,
    );
    let (loaded, load) = loaded_reads(ctx, c, load_nodes, None, n, &direct, &relayed)?;
    read_metrics(
        ctx,
        &format!(
            "{k} nodes in start/stop loops flat out, {:.0} jobs/s",
            load.jobs as f64 / load.secs
        ),
        "loaded",
        &loaded,
        true,
    );
    for (what, l) in [("paced", &paced_load), ("flat out", &load)] {
        ctx.log(&format!(
            "   load {what}: {} jobs in {:.1}s, manager CPU {:.0}% of a core",
            l.jobs,
            l.secs,
            l.manager_cpu * 100.0
        ));
        if l.errors > 0 {
            ctx.note(format!(
                "row 2 ({what}): {} start/stop jobs of the load loops did not end 'done'",
                l.errors
            ));
        }
    }
    ctx.section(
        "row2",
        Json::obj(vec![
            ("node", Json::str(node)),
            ("unit", Json::str(unit)),
            ("idle_direct_us", summary_json(&idle.direct, "us")),
            ("idle_relayed_us", summary_json(&idle.relayed, "us")),
            ("paced_direct_us", summary_json(&paced.direct, "us")),
            ("paced_relayed_us", summary_json(&paced.relayed, "us")),
            ("paced_load", load_json(&paced_load)),
            ("loaded_direct_us", summary_json(&loaded.direct, "us")),
            ("loaded_relayed_us", summary_json(&loaded.relayed, "us")),
            ("loaded_load", load_json(&load)),
            (
                "load_nodes",
                Json::Arr(load_nodes.iter().map(|n| Json::str(n.clone())).collect()),
            ),
        ]),
    );
    Ok(())
}
