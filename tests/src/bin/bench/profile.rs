//! Where the time goes (rows 1 and 3): callgrind on the release binaries for CPU work, and
//! strace timelines for the waits. `perf` is installed but this VM exposes no hardware
//! counters (`perf stat -e instructions true` says "not supported").
//!
//! The cluster runs the daemons through `target/bench/bin/`, symlinks to the release
//! binaries; for a profile one symlink is swapped for a script that starts the binary under
//! `valgrind --tool=callgrind --instr-atstart=no`, and `callgrind_control` switches the
//! instrumentation on just around the workload and dumps it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hirte_tests::{Cluster, Signal};

use crate::bench::dbusx::{self, call, job_roundtrip, method, HIRTE_DEST, HIRTE_NODE, SD_UNIT};
use crate::bench::error::{BenchError, Result};
use crate::bench::footprint::wait_online;
use crate::bench::latency::{hirtectl, systemctl, COMMAND_TIMEOUT};
use crate::bench::report::Json;
use crate::bench::setup::TRUE_UNIT;
use crate::bench::{spawn, Ctx};

/// The unit row 2 reads.
pub const READ_UNIT: &str = "bench-1.service";
const BINARIES: [&str; 3] = ["hirte", "hirte-agent", "hirtectl"];
const VALGRIND_TIMEOUT: Duration = Duration::from_secs(180);

/// `target/bench/bin/`: what the bench cluster runs.
pub struct Wrapper {
    pub dir: PathBuf,
    real: PathBuf,
}

impl Wrapper {
    pub fn create(dir: &Path, real: &Path) -> Result<Wrapper> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::io(format!("creating {}", dir.display()), e))?;
        let w = Wrapper {
            dir: dir.to_path_buf(),
            real: real.to_path_buf(),
        };
        for b in BINARIES {
            let src = real.join(b);
            if !src.is_file() {
                return Err(BenchError::failed(format!(
                    "{} missing: run `cargo build --release --workspace --bins` first",
                    src.display()
                )));
            }
            w.plain(b)?;
        }
        Ok(w)
    }

    fn replace(&self, name: &str, make: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
        let tmp = self.dir.join(format!(".{name}.new"));
        let _ = std::fs::remove_file(&tmp);
        make(&tmp).map_err(|e| BenchError::io(format!("creating {}", tmp.display()), e))?;
        let dest = self.dir.join(name);
        std::fs::rename(&tmp, &dest)
            .map_err(|e| BenchError::io(format!("replacing {}", dest.display()), e))
    }

    /// `name` runs the release binary itself.
    pub fn plain(&self, name: &str) -> Result<()> {
        let target = self.real.join(name);
        self.replace(name, |tmp| std::os::unix::fs::symlink(&target, tmp))
    }

    /// `name` runs with an extra environment variable (`KEY=VALUE`).
    pub fn with_env(&self, name: &str, var: &str) -> Result<()> {
        let script = format!(
            "#!/bin/sh\nexec env {var} {} \"$@\"\n",
            self.real.join(name).display()
        );
        self.replace(name, |tmp| {
            std::fs::write(tmp, script)?;
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755))
        })
    }

    /// `name` runs under callgrind, instrumentation off until `callgrind_control -i on`.
    pub fn callgrind(&self, name: &str, out: &Path) -> Result<()> {
        let script = format!(
            "#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file={} {} \"$@\"\n",
            out.display(),
            self.real.join(name).display()
        );
        self.replace(name, |tmp| {
            std::fs::write(tmp, script)?;
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755))
        })
    }
}

fn control(args: &[&str]) -> Result<()> {
    spawn::output(
        Command::new("callgrind_control").args(args),
        Duration::from_secs(30),
    )
    .map(|_| ())
}

/// `callgrind_annotate` of `file` (exclusive and inclusive, top lines) into `dest`; returns
/// the total instruction count.
fn annotate(file: &Path, dest: &Path, title: &str) -> Result<u64> {
    let excl = spawn::output(
        Command::new("callgrind_annotate")
            .args(["--inclusive=no", "--threshold=99"])
            .arg(file),
        Duration::from_secs(60),
    )?;
    let incl = spawn::output(
        Command::new("callgrind_annotate")
            .args(["--inclusive=yes", "--threshold=99"])
            .arg(file),
        Duration::from_secs(60),
    )?;
    let total = excl
        .lines()
        .find(|l| l.contains("PROGRAM TOTALS"))
        .and_then(|l| l.split_whitespace().next())
        .map(|n| n.replace(',', ""))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let take = |s: &str| s.lines().take(70).collect::<Vec<_>>().join("\n");
    let text = format!(
        "# {title}\n# {}\n\n## exclusive (self) cost\n{}\n\n## inclusive cost\n{}\n",
        file.display(),
        take(&excl),
        take(&incl)
    );
    std::fs::write(dest, text)
        .map_err(|e| BenchError::io(format!("writing {}", dest.display()), e))?;
    Ok(total)
}

/// The newest `out.N` dump callgrind_control wrote for `out`.
fn last_dump(out: &Path) -> Option<PathBuf> {
    let dir = out.parent()?;
    let base = out.file_name()?.to_string_lossy().into_owned();
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u32 = name.strip_prefix(&format!("{base}."))?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// CPU ticks per second below which a profiled daemon counts as idle.
const IDLE_TICKS: u64 = 5;

/// Waits until the profiled daemons use no CPU for a second (under valgrind they lag far
/// behind: an agent may still be parsing the signals of the previous phase), at most 90 s.
fn wait_idle(ctx: &Ctx, pids: &[&str]) {
    let t = std::time::Instant::now();
    let ticks = |p: &str| {
        p.parse::<i32>()
            .ok()
            .and_then(|p| crate::bench::procfs::cpu(p).ok())
            .map(|c| c.ticks)
            .unwrap_or(0)
    };
    let mut last: Vec<u64> = pids.iter().map(|p| ticks(p)).collect();
    while t.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_secs(1));
        let now: Vec<u64> = pids.iter().map(|p| ticks(p)).collect();
        // At most 5% of a core: instrumented, the idle loops' own wake-ups (10 Hz per
        // thread, heartbeats) cost a few ticks per second.
        if now
            .iter()
            .zip(&last)
            .all(|(a, b)| a.saturating_sub(*b) <= IDLE_TICKS)
        {
            ctx.log(&format!(
                "   profiled daemons idle after {:.0}s",
                t.elapsed().as_secs_f64()
            ));
            return;
        }
        last = now;
    }
    ctx.log("   profiled daemons still busy after 90s");
}

fn pid_str(p: Option<i32>, what: &str) -> Result<String> {
    p.map(|p| p.to_string())
        .ok_or_else(|| BenchError::failed(format!("{what} not running")))
}

/// Restarts the manager and `agent_node`'s agent, the given ones under callgrind.
fn restart(
    c: &mut Cluster,
    w: &Wrapper,
    agent_node: &str,
    profile: Option<(&Path, &Path)>,
) -> Result<()> {
    let _ = c.kill_agent(agent_node, Signal::SIGTERM);
    let _ = c.kill_manager(Signal::SIGTERM);
    match profile {
        Some((m, a)) => {
            w.callgrind("hirte", m)?;
            w.callgrind("hirte-agent", a)?;
        }
        None => {
            w.plain("hirte")?;
            w.plain("hirte-agent")?;
        }
    }
    c.start_manager()?;
    c.start_agent(agent_node)?;
    let conn = c.system_bus()?;
    wait_online(&conn, c.nodes().len(), Duration::from_secs(60))?;
    Ok(())
}

/// The profiles of rows 1 and 3, into `<out>/profiles/`.
pub fn run(ctx: &mut Ctx, c: &mut Cluster, w: &Wrapper, node: &str) -> Result<()> {
    ctx.phase("profiles (callgrind, strace)");
    let dir = ctx.out.join("profiles");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| BenchError::io(format!("creating {}", dir.display()), e))?;
    let mut summary = Vec::new();

    // Client side: strace timelines and syscall counts, callgrind of hirtectl.
    let bus = format!("DBUS_SYSTEM_BUS_ADDRESS={}", c.bus_address());
    let ctl = c.bin_dir().join("hirtectl");
    let strace = |name: &str, flags: &[&str], cmd: Command| -> Result<()> {
        let mut s = Command::new("strace");
        s.args(flags)
            .arg("-o")
            .arg(dir.join(name))
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => s.env(k, v),
                None => s.env_remove(k),
            };
        }
        spawn::output(&mut s, COMMAND_TIMEOUT).map(|_| ())
    };
    strace(
        "strace-hirtectl-start.txt",
        &["-f", "-tt", "-T"],
        hirtectl(c, &["start", node, TRUE_UNIT]),
    )?;
    strace(
        "strace-c-hirtectl-start.txt",
        &["-f", "-c"],
        hirtectl(c, &["start", node, TRUE_UNIT]),
    )?;
    strace(
        "strace-systemctl-start.txt",
        &["-f", "-tt", "-T"],
        systemctl(c, node, &["start", TRUE_UNIT], false)?,
    )?;
    strace(
        "strace-c-systemctl-start.txt",
        &["-f", "-c"],
        systemctl(c, node, &["start", TRUE_UNIT], false)?,
    )?;
    strace(
        "strace-c-hirtectl-list-units.txt",
        &["-f", "-c"],
        hirtectl(c, &["list-units"]),
    )?;
    strace(
        "strace-hirtectl-list-units.txt",
        &["-f", "-tt", "-T"],
        hirtectl(c, &["list-units"]),
    )?;
    for (name, args) in [
        ("hirtectl-start", vec!["start", node, TRUE_UNIT]),
        ("hirtectl-list-units", vec!["list-units"]),
    ] {
        let out = dir.join(format!("callgrind.{name}.out"));
        let mut cmd = Command::new("valgrind");
        cmd.args(["--tool=callgrind"])
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(&ctl)
            .args(&args)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address());
        spawn::output(&mut cmd, VALGRIND_TIMEOUT)?;
        let total = annotate(
            &out,
            &dir.join(format!("callgrind-{name}.txt")),
            &format!("hirtectl {}", args.join(" ")),
        )?;
        ctx.log(&format!("   callgrind {name}: {total} instructions"));
        summary.push((
            format!("hirtectl {}", args.join(" ")),
            Json::num(total as f64),
        ));
    }
    let _ = bus;

    // Daemon side: manager and one agent under callgrind, one workload each.
    let m_out = dir.join("callgrind.manager.out");
    let a_out = dir.join("callgrind.agent.out");
    restart(c, w, node, Some((&m_out, &a_out)))?;
    let mpid = pid_str(c.manager_pid(), "manager")?;
    let apid = pid_str(c.agent_pid(node), "agent")?;
    let sys = c.system_bus()?;
    dbusx::watch_manager_jobs(&sys)?;
    let path = dbusx::node_path(&sys, node)?;
    let jobs = 100usize;
    let reads = 500usize;
    let lists = 3usize;
    let mut phases = Vec::new();
    wait_idle(ctx, &[&mpid, &apid]);
    control(&["-i", "on", &mpid])?;
    control(&["-i", "on", &apid])?;
    control(&["-z", &mpid])?;
    control(&["-z", &apid])?;
    for _ in 0..jobs {
        job_roundtrip(&sys, dbusx::node_job_call(&path, "StartUnit", TRUE_UNIT)?)?;
    }
    // Under valgrind the agent runs ~50x slower: let it finish the signals of this phase
    // (UnitNew, PropertiesChanged, UnitRemoved of each start) before the dump.
    wait_idle(ctx, &[&mpid, &apid]);
    control(&["-d", &mpid])?;
    control(&["-d", &apid])?;
    phases.push(("start", jobs, last_dump(&m_out), last_dump(&a_out)));
    control(&["-z", &mpid])?;
    control(&["-z", &apid])?;
    // A unit that stays loaded, as in row 2. (Reading bench-true.service instead makes
    // systemd load it and garbage-collect it again on each read: ~10 signals per read for
    // the agent to parse.)
    for _ in 0..reads {
        call(
            &sys,
            method(HIRTE_DEST, &path, HIRTE_NODE, "GetUnitProperty")?.append3(
                READ_UNIT,
                SD_UNIT,
                "ActiveState",
            ),
        )?;
    }
    wait_idle(ctx, &[&mpid, &apid]);
    control(&["-d", &mpid])?;
    control(&["-d", &apid])?;
    phases.push(("read", reads, last_dump(&m_out), last_dump(&a_out)));
    control(&["-z", &mpid])?;
    control(&["-z", &apid])?;
    for _ in 0..lists {
        spawn::output(&mut hirtectl(c, &["list-units"]), VALGRIND_TIMEOUT)?;
    }
    wait_idle(ctx, &[&mpid, &apid]);
    control(&["-d", &mpid])?;
    control(&["-d", &apid])?;
    phases.push(("list-units", lists, last_dump(&m_out), last_dump(&a_out)));
    restart(c, w, node, None)?;
    for (phase, ops, m, a) in phases {
        for (who, file) in [("manager", m), ("agent", a)] {
            let Some(file) = file else {
                ctx.note(format!(
                    "profile: no callgrind dump of the {who} for {phase}"
                ));
                continue;
            };
            let dest = dir.join(format!("callgrind-{who}-{phase}.txt"));
            let total = annotate(
                &file,
                &dest,
                &format!(
                    "{who}: {ops} x {phase} (incl. idle ticks until the daemons were idle again)"
                ),
            )?;
            let per_op = total as f64 / ops as f64;
            ctx.log(&format!(
                "   callgrind {who} {phase}: {total} instructions, {per_op:.0} per op"
            ));
            summary.push((format!("{who} {phase} per op"), Json::num(per_op)));
        }
    }
    ctx.section("profiles", Json::Obj(summary));
    Ok(())
}
