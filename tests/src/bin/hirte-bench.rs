//! `hirte-bench`: the benchmark of issues 6 and 13, run by `ci/bench` (never by the test suite).
//!
//! ```text
//! sudo HIRTE_BIN_DIR=$PWD/target/release target/release/hirte-bench [--quick] [--no-profile] [--only-tls] [--out DIR]
//! ```
//!
//! Row 7 (the cost of mutual TLS, issue 11) runs last on two small clusters of its own;
//! `--only-tls` runs just that row. `--only-memory [--nodes N] [--variant V]...` measures the
//! manager's memory of issue 13 (idle, after 20 and 40 `Manager.ListUnits`) for each variant
//! (`bench/memory.rs`).
//!
//! One run brings up a 50-node cluster (real `systemd --user`, real agents, release
//! binaries), measures rows 1-5 on it and the manager's memory of issue 13 (a fresh manager,
//! after row 5), then a 1-node manager fed by 10 .. 1,000 fake agents for row 6, and writes
//! `DIR/results.json` and `DIR/results.md` (default `target/bench`).
//!
//! Issue 13's targets, each a row with its target and whether it was met, in one run:
//! 1. `list.all_api`: `Manager.ListUnits`, 50 nodes x 180 units, at most 1.3x the direct
//!    fan-out floor (`list.floor_parallel`); `list.all`: `hirtectl list-units`, at most 1.6x.
//! 2. `mem13.after20_hwm`: manager VmHWM after 20 `Manager.ListUnits` at 50 nodes at most
//!    8 MB; `mem13.growth_hwm`: at most +64 kB over 20 more; `mem13.idle0_rss`: below 3 MB idle
//!    with 0 nodes (`bench/memory.rs`).
//! 3. `scale.idle_cpu_per_node.N`: manager CPU per node per second below 20 µs;
//!    `scale.wakeups_per_hb.N`: wake-ups (voluntary context switches of all manager threads)
//!    at most one per heartbeat received plus a fixed allowance for the nearest deadlines
//!    (`bench/footprint.rs`), both at N = 10, 100, 500, 1,000 nodes.
//! 4. `start.hirtectl`: `hirtectl start` at most 0.7x `systemctl --user start`;
//!    `start.relay_added`: relay over raw StartUnit -> JobRemoved below 0.3 ms.
//! 5. `read.paced.jitter`, `read.loaded.jitter`: relayed read p99/p50 under 10 nodes' start/stop
//!    loops no worse than the direct read's p99/p50 in the same phase.
//! 6. `mem.agent_idle`, `mem.agent_ops`, `mem.agent_heavy`: agent RSS at most 3.0 MB.

#[path = "bench/mod.rs"]
mod bench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hirte_tests::{Cluster, ClusterSpec};

use bench::error::{BenchError, Result};
use bench::footprint::{self, mb, Timeline};
use bench::liveness::Liveness;
use bench::report::{self, fmt_num, Goal, Json, Metric, TargetOn};
use bench::{settle, Ctx, Sizes};

const USAGE: &str = "usage: hirte-bench [--quick] [--no-profile] [--only-tls] [--only-memory [--nodes N] [--variant [PATH][,VAR=VALUE]...]...] [--out DIR]";

/// Nodes of the main cluster (the manager runs on the first, which has an agent too).
const NODES: usize = 50;
/// Fake agents added in row 4 to reach 500 connected nodes.
const FAKES_AT_500: usize = 450;
/// Row 6 steps.
const SCALE_STEPS: [usize; 4] = [10, 100, 500, 1000];

/// Where the measured binaries come from: their directory and the checkout's revision
/// (with `-dirty` when daemon sources differ from it).
fn provenance(bins: &std::path::Path) -> String {
    let rev = first_line("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = std::process::Command::new("git")
        .args([
            "status",
            "--porcelain",
            "--",
            "common",
            "manager",
            "agent",
            "ctl",
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    format!(
        "{} (checkout {rev}{})",
        bins.display(),
        if dirty { "-dirty" } else { "" }
    )
}

struct Opts {
    quick: bool,
    only_tls: bool,
    only_memory: bool,
    mem_nodes: usize,
    variants: Vec<bench::memory::Variant>,
    profile: bool,
    out: PathBuf,
}

fn parse_args() -> std::result::Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        only_tls: false,
        only_memory: false,
        mem_nodes: NODES,
        variants: Vec::new(),
        profile: true,
        out: PathBuf::from("target/bench"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--no-profile" => o.profile = false,
            "--only-tls" => o.only_tls = true,
            "--only-memory" => o.only_memory = true,
            "--nodes" => {
                o.mem_nodes = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--nodes needs a number")?
            }
            "--variant" => o.variants.push(bench::memory::Variant::parse(
                &it.next().ok_or("--variant needs [PATH][,VAR=VALUE]...")?,
            )),
            "--out" => o.out = PathBuf::from(it.next().ok_or("--out needs a directory")?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(o)
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn machine() -> Json {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let free = std::process::Command::new("free")
        .arg("-h")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    Json::obj(vec![
        ("nproc", Json::str(first_line("nproc", &[]))),
        ("cpu_model", Json::str(cpu)),
        ("free_h", Json::str(free.trim_end())),
        ("kernel", Json::str(first_line("uname", &["-r"]))),
        (
            "systemd",
            Json::str(first_line("systemctl", &["--version"])),
        ),
        ("uptime", Json::str(first_line("uptime", &[]))),
    ])
}

fn node_names() -> Vec<String> {
    (0..NODES).map(|i| format!("n{i:02}")).collect()
}

/// Rows 1-5 (and the 500-node point of row 4) on the 50-node cluster.
fn main_cluster(ctx: &mut Ctx, wrap: &bench::profile::Wrapper) -> Result<()> {
    ctx.phase(&format!("bringing up {NODES} nodes"));
    let names = node_names();
    let fakes = footprint::fake_names(FAKES_AT_500);
    let mut allowed = names.clone();
    allowed.extend(fakes.iter().cloned());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut spec = ClusterSpec::new(&refs);
    spec.start_agents = false;
    spec.start_manager = false;
    spec.bin_dir = Some(wrap.dir.clone());
    let lv = Liveness {
        heartbeat_interval: Duration::from_secs(1),
        node_threshold: Duration::from_secs(3),
        reconnect_interval: Duration::from_millis(500),
        core_tick: hirte_common::bounds::CORE_TICK,
    };
    let manager_conf = format!(
        "[hirte]\nLogLevel=info\nNodeHeartbeatThreshold={}ms\nAllowedNodeNames={}\n",
        lv.node_threshold.as_millis(),
        allowed.join(",")
    );
    let agent_conf = format!(
        "[hirte-agent]\nLogLevel=info\nHeartbeatInterval={}ms\nReconnectInterval={}ms\n",
        lv.heartbeat_interval.as_millis(),
        lv.reconnect_interval.as_millis()
    );
    let t = Instant::now();
    let mut c = Cluster::start(spec)?;
    bench::setup::drop_ins(&c, &manager_conf, &agent_conf)?;
    c.start_manager()?;
    ctx.log(&format!(
        "   {NODES} nodes' systemd and the manager up in {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    let mut tl = Timeline::default();
    settle(
        ctx,
        Duration::from_secs(2),
        "manager idle, no agent connected",
    );
    let m0 = tl.manager(ctx, &c, "0 nodes")?;
    ctx.metric(
        footprint::manager_metric(
            "mem.manager_0",
            &format!(
                "manager RSS idle, 0 connected nodes ({} allowed)",
                allowed.len()
            ),
            &m0,
        )
        // Issue 13's target (< 3 MB) is on `mem13.idle0_rss`, the same reading later.
        .c(3.5),
    );
    let counts = bench::setup::install_units(&c)?;
    let min_units = counts.iter().map(|(_, n)| *n).min().unwrap_or(0);
    let max_units = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
    ctx.log(&format!(
        "   units per node after setup: {min_units}..{max_units}"
    ));
    for n in &names {
        c.start_agent(n)?;
    }
    let sys = c.system_bus()?;
    let online = footprint::wait_online(&sys, NODES, Duration::from_secs(120))?;
    ctx.log(&format!(
        "   {NODES} agents online {:.1}s after the first start",
        online.as_secs_f64()
    ));
    settle(ctx, Duration::from_secs(3), "all agents idle");
    let m50 = tl.manager(ctx, &c, "50 nodes idle")?;
    ctx.metric(
        footprint::manager_metric(
            "mem.manager_50",
            &format!("manager RSS idle, {NODES} connected nodes"),
            &m50,
        )
        .c_text("4.2 MB at 51 nodes"),
    );
    let remote = names
        .get(1)
        .cloned()
        .ok_or_else(|| BenchError::failed("need 2 nodes"))?;
    let a_idle = tl.agent(ctx, &c, &remote, "idle")?;
    let all = footprint::all_agents(&c);
    let (amin, amax) = (
        all.iter().copied().min().unwrap_or(0),
        all.iter().copied().max().unwrap_or(0),
    );
    ctx.metric(
        footprint::agent_metric(
            "mem.agent_idle",
            &format!("agent RSS idle ({remote})"),
            &a_idle,
        )
        .detail(format!(
            "all {} agents: {} .. {} MB; {} threads, {} fds; PSS {} MB (the agents share their pages)",
            all.len(),
            fmt_num(mb(amin)),
            fmt_num(mb(amax)),
            a_idle.threads,
            a_idle.fds,
            fmt_num(mb(a_idle.pss_kb))
        )),
    );
    let ops = ctx.sizes.agent_ops;
    footprint::agent_ops(&c, &remote, ops)?;
    let a1 = tl.agent(ctx, &c, &remote, &format!("after {ops} operations"))?;
    footprint::agent_ops(&c, &remote, ops)?;
    let a2 = tl.agent(ctx, &c, &remote, &format!("after {} operations", 2 * ops))?;
    ctx.metric(
        footprint::agent_metric(
            "mem.agent_ops",
            &format!("agent RSS after {ops} operations through the manager"),
            &a1,
        )
        .detail(format!(
            "after {} operations: {} MB (growth {} kB)",
            2 * ops,
            fmt_num(mb(a2.rss_kb)),
            i64::try_from(a2.rss_kb).unwrap_or(0) - i64::try_from(a1.rss_kb).unwrap_or(0)
        )),
    );
    let m_ops = tl.manager(ctx, &c, &format!("after {} agent operations", 2 * ops))?;

    bench::latency::row1(ctx, &c, &remote)?;
    let m_r1 = tl.manager(ctx, &c, "after row 1")?;
    let load: Vec<String> = names.iter().skip(2).take(10).cloned().collect();
    bench::latency::row2(ctx, &c, &remote, &load, bench::profile::READ_UNIT)?;
    let m_r2 = tl.manager(ctx, &c, "after row 2")?;
    bench::listing::row3(ctx, &c, &remote)?;
    let m_heavy = tl.manager(ctx, &c, "after rows 1-3 (heavy use)")?;
    let a_end = tl.agent(ctx, &c, &remote, "after rows 1-3")?;
    ctx.metric(
        footprint::manager_metric(
            "mem.manager_heavy",
            "manager RSS after rows 1-3 (heavy use)",
            &m_heavy,
        )
        .c(7.8)
        .detail(format!(
            "timeline MB: 50 idle {} / +{} ops {} / row 1 {} / row 2 {} / rows 1-3 {}; {} threads",
            fmt_num(mb(m50.rss_kb)),
            2 * ops,
            fmt_num(mb(m_ops.rss_kb)),
            fmt_num(mb(m_r1.rss_kb)),
            fmt_num(mb(m_r2.rss_kb)),
            fmt_num(mb(m_heavy.rss_kb)),
            m_heavy.threads
        )),
    );
    ctx.metric(
        footprint::agent_metric(
            "mem.agent_heavy",
            &format!("agent RSS after rows 1-3 ({remote})"),
            &a_end,
        )
        .detail(format!("{} threads, {} fds", a_end.threads, a_end.fds)),
    );
    let m_heavy2_growth = {
        footprint::agent_ops(&c, &remote, ops)?;
        bench::listing::row3_once(&c)?;
        let s = tl.manager(ctx, &c, "after one more round")?;
        i64::try_from(s.rss_kb).unwrap_or(0) - i64::try_from(m_heavy.rss_kb).unwrap_or(0)
    };
    ctx.metric(
        Metric::new(
            "4",
            "mem.manager_flat",
            "manager RSS growth over one more round of use after rows 1-3",
            m_heavy2_growth as f64,
            "kB",
        )
        .target(TargetOn::Value, Goal::AtMost(64.0)),
    );

    // Experiment: the same use on a fresh manager, with the default malloc and with glibc's
    // per-thread arenas limited to 2 (MALLOC_ARENA_MAX, no code change).
    let mut fresh = Vec::new();
    for env in [None, Some("MALLOC_ARENA_MAX=2")] {
        match env {
            Some(v) => wrap.with_env("hirte", v)?,
            None => wrap.plain("hirte")?,
        }
        let _ = c.kill_manager(hirte_tests::Signal::SIGTERM);
        c.start_manager()?;
        let res = (|| -> Result<bench::procfs::ProcStats> {
            footprint::wait_online(&sys, NODES, Duration::from_secs(60))?;
            footprint::agent_ops(&c, &remote, ops)?;
            for _ in 0..10 {
                bench::listing::row3_once(&c)?;
            }
            tl.manager(
                ctx,
                &c,
                &format!(
                    "fresh, {}, after {ops} ops + 10 list-units",
                    env.unwrap_or("default malloc")
                ),
            )
        })();
        wrap.plain("hirte")?;
        fresh.push(res?);
    }
    let _ = c.kill_manager(hirte_tests::Signal::SIGTERM);
    c.start_manager()?;
    footprint::wait_online(&sys, NODES, Duration::from_secs(60))?;
    if let (Some(plain), Some(arena)) = (fresh.first(), fresh.get(1)) {
        ctx.metric(footprint::manager_metric(
            "mem.manager_fresh_use",
            &format!("manager RSS, fresh start + {ops} operations + 10 list-units"),
            plain,
        ));
        ctx.metric(
            footprint::manager_metric(
                "mem.manager_fresh_use_arena2",
                "experiment: the same with MALLOC_ARENA_MAX=2",
                arena,
            )
            .vs("default malloc", mb(plain.rss_kb)),
        );
    }

    let kill_node = names.get(12).cloned().unwrap_or_default();
    let stop_node = names.get(13).cloned().unwrap_or_default();
    bench::liveness::row5(ctx, &mut c, &kill_node, &stop_node, lv)?;
    // Issue 13's manager memory: restarts the manager and every agent, ends with all online.
    bench::memory::once(ctx, &mut c, &mut tl, NODES)?;

    if ctx.profile {
        if let Err(e) = bench::profile::run(ctx, &mut c, wrap, &remote) {
            ctx.note(format!("profiles incomplete: {e}"));
            wrap.plain("hirte")?;
            wrap.plain("hirte-agent")?;
        }
    }

    let first = names.first().cloned().unwrap_or_default();
    settle(ctx, Duration::from_secs(2), "fresh manager");
    let fresh = tl.manager(ctx, &c, "50 nodes, after restart")?;
    ctx.log(&format!(
        "   manager after restart, 50 nodes: {} MB",
        fmt_num(mb(fresh.rss_kb))
    ));
    footprint::at_500(ctx, &mut tl, &c, &first, NODES, &fakes)?;
    ctx.section("footprint_timeline", tl.to_json());
    ctx.section(
        "cluster",
        Json::obj(vec![
            ("nodes", Json::num(NODES as f64)),
            ("units_per_node_min", Json::num(min_units as f64)),
            ("units_per_node_max", Json::num(max_units as f64)),
            ("manager_conf", Json::str("LogLevel=info, NodeHeartbeatThreshold=3s, AllowedNodeNames: 50 nodes + 450 fake")),
            ("agent_conf", Json::str("LogLevel=info, HeartbeatInterval=1s, ReconnectInterval=500ms, --user")),
        ]),
    );
    ctx.phase("tearing down the 50-node cluster");
    c.shutdown()?;
    Ok(())
}

fn write_results(ctx: &Ctx, started: &str, binaries: &str) -> Result<()> {
    std::fs::create_dir_all(&ctx.out)
        .map_err(|e| BenchError::io(format!("creating {}", ctx.out.display()), e))?;
    let mut fields = vec![
        (
            "generated_by",
            Json::str("ci/bench (tests/src/bin/hirte-bench.rs)"),
        ),
        ("started", Json::str(started)),
        ("quick", Json::Bool(ctx.quick)),
        ("binaries", Json::str(binaries)),
        ("duration_s", Json::num(ctx.t0.elapsed().as_secs_f64())),
        ("machine", machine()),
        (
            "load_at_phase_start",
            Json::Arr(
                ctx.loads
                    .iter()
                    .map(|(p, l)| {
                        Json::obj(vec![
                            ("phase", Json::str(p.clone())),
                            ("loadavg", Json::str(l.clone())),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "metrics",
            Json::Arr(ctx.metrics.iter().map(Metric::to_json).collect()),
        ),
        (
            "notes",
            Json::Arr(ctx.notes.iter().map(|n| Json::str(n.clone())).collect()),
        ),
    ];
    let mut raw = Vec::new();
    for (k, v) in &ctx.sections {
        raw.push((k.clone(), v.clone()));
    }
    fields.push(("raw", Json::Obj(raw)));
    let json = Json::obj(fields).render();
    let p = ctx.out.join("results.json");
    std::fs::write(&p, json).map_err(|e| BenchError::io(format!("writing {}", p.display()), e))?;
    let mut md = format!(
        "# Hirte-rs benchmark results\n\nRun started {started}, took {:.0} s{}. Machine: {} CPUs ({}), load average at start {}. Binaries: {binaries}.\n\n",
        ctx.t0.elapsed().as_secs_f64(),
        if ctx.quick { " (--quick: fewer samples)" } else { "" },
        first_line("nproc", &[]),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_default(),
        ctx.loads.first().map(|(_, l)| l.as_str()).unwrap_or("?")
    );
    md.push_str(&report::markdown_table(&ctx.metrics));
    md.push_str("\nLoad average (1/5/15 min) at the start of each phase:\n\n");
    for (p, l) in &ctx.loads {
        md.push_str(&format!("- {p}: {l}\n"));
    }
    if !ctx.notes.is_empty() {
        md.push_str("\nNotes:\n\n");
        for n in &ctx.notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    let p = ctx.out.join("results.md");
    std::fs::write(&p, md).map_err(|e| BenchError::io(format!("writing {}", p.display()), e))?;
    ctx.log(&format!("wrote {} and results.json", p.display()));
    Ok(())
}

fn run(opts: Opts) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(BenchError::failed(
            "hirte-bench needs root (namespaces, cgroups, systemd): run `sudo ci/bench`",
        ));
    }
    let real = hirte_tests::bin_dir()?;
    let real = real
        .canonicalize()
        .map_err(|e| BenchError::io(format!("resolving {}", real.display()), e))?;
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| BenchError::io(format!("creating {}", opts.out.display()), e))?;
    let out = opts
        .out
        .canonicalize()
        .map_err(|e| BenchError::io(format!("resolving {}", opts.out.display()), e))?;
    let wrap = bench::profile::Wrapper::create(&out.join("bin"), &real)?;
    let started = first_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
    let mut ctx = Ctx {
        sizes: if opts.quick {
            Sizes::quick()
        } else {
            Sizes::full()
        },
        quick: opts.quick,
        profile: opts.profile,
        out,
        t0: Instant::now(),
        hz: bench::procfs::clock_ticks_per_sec(),
        metrics: Vec::new(),
        sections: Vec::new(),
        loads: Vec::new(),
        notes: Vec::new(),
    };
    ctx.log(&format!(
        "binaries: {}; results: {}",
        real.display(),
        ctx.out.display()
    ));
    if opts.quick {
        ctx.note("--quick: fewer samples than the full run");
    }
    if opts.only_tls {
        ctx.note("--only-tls: row 7 only");
        let tls_res = bench::tls::row7(&mut ctx, &wrap.dir);
        write_results(&ctx, &started, &provenance(&real))?;
        return tls_res;
    }
    if opts.only_memory {
        ctx.note("--only-memory: the manager's memory (issue 13) only");
        let res = bench::memory::run(&mut ctx, &wrap.dir, &real, opts.mem_nodes, &opts.variants);
        write_results(&ctx, &started, &provenance(&real))?;
        return res;
    }
    let main_res = main_cluster(&mut ctx, &wrap);
    if let Err(e) = &main_res {
        ctx.note(format!("50-node cluster phases stopped early: {e}"));
    }
    let scale_res = footprint::scale_curve(&mut ctx, &wrap.dir, &SCALE_STEPS);
    if let Err(e) = &scale_res {
        ctx.note(format!("scale curve stopped early: {e}"));
    }
    let tls_res = bench::tls::row7(&mut ctx, &wrap.dir);
    if let Err(e) = &tls_res {
        ctx.note(format!("row 7 (TLS) stopped early: {e}"));
    }
    write_results(&ctx, &started, &provenance(&real))?;
    main_res?;
    scale_res?;
    tls_res
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hirte-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
