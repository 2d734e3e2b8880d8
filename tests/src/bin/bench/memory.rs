//! Issue 13's target 2, the manager's memory: a fresh manager, its memory idle with 0 nodes,
//! with all nodes, after 20 and after 40 `Manager.ListUnits` over D-Bus (`VmRSS` and `VmHWM`
//! of `/proc/PID/status`). The full run measures it once on its 50-node cluster (`once`);
//! `--only-memory` (`run`) brings up a 50-node cluster of its own (the main cluster's settings
//! and units) and measures it per manager variant. Variants (`--variant`) are other manager
//! binaries and/or environment settings on the same cluster, so a change is measured against
//! its base in one run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hirte_tests::{Cluster, ClusterSpec};

use crate::bench::error::{BenchError, Result};
use crate::bench::footprint::{self, mb, Timeline};
use crate::bench::listing::manager_list_units;
use crate::bench::procfs::ProcStats;
use crate::bench::report::{fmt_num, Goal, Json, Metric, TargetOn};
use crate::bench::{settle, Ctx};

/// List-units per measured round.
const ROUND: usize = 20;

/// One manager to measure: a binary (default: the release one) and environment settings.
#[derive(Debug, Clone, Default)]
pub struct Variant {
    pub binary: Option<PathBuf>,
    pub env: Vec<String>,
}

impl Variant {
    /// `PATH`, `VAR=VALUE`, or `PATH,VAR=VALUE,...`; `-` is the release binary, unchanged.
    pub fn parse(s: &str) -> Variant {
        let mut v = Variant::default();
        for item in s.split(',').filter(|i| !i.is_empty() && *i != "-") {
            if item.contains('=') && !item.starts_with('/') {
                v.env.push(item.to_string());
            } else {
                v.binary = Some(PathBuf::from(item));
            }
        }
        v
    }

    fn label(&self) -> String {
        let bin = self
            .binary
            .as_ref()
            .map(|b| b.display().to_string())
            .unwrap_or_else(|| "release hirte".to_string());
        if self.env.is_empty() {
            bin
        } else {
            format!("{bin} with {}", self.env.join(" "))
        }
    }

    /// Points `dir/hirte` at this variant.
    fn install(&self, dir: &Path, release: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let bin = self.binary.clone().unwrap_or_else(|| release.join("hirte"));
        let script = format!(
            "#!/bin/sh\nexec env {} {} \"$@\"\n",
            self.env.join(" "),
            bin.display()
        );
        let tmp = dir.join(".hirte.mem");
        let dest = dir.join("hirte");
        std::fs::write(&tmp, script)
            .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
            .and_then(|()| std::fs::rename(&tmp, &dest))
            .map_err(|e| BenchError::io(format!("writing {}", dest.display()), e))
    }
}

fn list_units(c: &Cluster, nodes: usize, n: usize) -> Result<()> {
    let sys = c.system_bus()?;
    for _ in 0..n {
        manager_list_units(&sys, nodes)?;
    }
    Ok(())
}

struct Readings {
    idle0: ProcStats,
    idle: ProcStats,
    after20: ProcStats,
    after40: ProcStats,
}

fn measure(ctx: &Ctx, c: &mut Cluster, tl: &mut Timeline, nodes: usize) -> Result<Readings> {
    let _ = c.kill_manager(hirte_tests::Signal::SIGTERM);
    // Agents reconnect every ReconnectInterval: hold them off so the manager is seen with
    // 0 nodes, by stopping them while it starts.
    for n in c
        .nodes()
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>()
    {
        let _ = c.kill_agent(&n, hirte_tests::Signal::SIGTERM);
    }
    c.start_manager()?;
    settle(
        ctx,
        Duration::from_secs(2),
        "manager idle, no agent connected",
    );
    let idle0 = tl.manager(ctx, c, "0 nodes")?;
    for n in c
        .nodes()
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>()
    {
        c.start_agent(&n)?;
    }
    let sys = c.system_bus()?;
    footprint::wait_online(&sys, nodes, Duration::from_secs(120))?;
    settle(ctx, Duration::from_secs(3), "all agents idle");
    let idle = tl.manager(ctx, c, &format!("{nodes} nodes idle"))?;
    list_units(c, nodes, ROUND)?;
    settle(ctx, Duration::from_secs(1), "reply sent");
    let after20 = tl.manager(ctx, c, &format!("after {ROUND} list-units"))?;
    list_units(c, nodes, ROUND)?;
    settle(ctx, Duration::from_secs(1), "reply sent");
    let after40 = tl.manager(ctx, c, &format!("after {} list-units", 2 * ROUND))?;
    Ok(Readings {
        idle0,
        idle,
        after20,
        after40,
    })
}

/// The three rows of issue 13's target 2 from one measurement. `who` names the variant
/// (empty in the full run: the release manager); `key` ends the metric keys.
fn rows(ctx: &mut Ctx, r: &Readings, nodes: usize, key: &str, who: &str) {
    let growth =
        i64::try_from(r.after40.hwm_kb).unwrap_or(0) - i64::try_from(r.after20.hwm_kb).unwrap_or(0);
    let key = |k: &str| format!("mem13.{k}{key}");
    let who = if who.is_empty() {
        String::new()
    } else {
        format!(" [{who}]")
    };
    ctx.metric(
        Metric::new(
            "4",
            &key("idle0_rss"),
            &format!("manager VmRSS idle, 0 nodes, fresh start{who}"),
            mb(r.idle0.rss_kb),
            "MB",
        )
        .detail(format!("VmHWM {} MB", fmt_num(mb(r.idle0.hwm_kb))))
        .target(TargetOn::Value, Goal::Below(3.0)),
    );
    ctx.metric(
        Metric::new(
            "4",
            &key("after20_hwm"),
            &format!("manager VmHWM after {ROUND} Manager.ListUnits, {nodes} nodes{who}"),
            mb(r.after20.hwm_kb),
            "MB",
        )
        .detail(format!(
            "VmRSS {} MB (idle {} MB, VmHWM idle {} MB); {} threads",
            fmt_num(mb(r.after20.rss_kb)),
            fmt_num(mb(r.idle.rss_kb)),
            fmt_num(mb(r.idle.hwm_kb)),
            r.after20.threads
        ))
        .c(8.9)
        .target(TargetOn::Value, Goal::AtMost(8.0)),
    );
    ctx.metric(
        Metric::new(
            "4",
            &key("growth_hwm"),
            &format!(
                "manager VmHWM growth from {ROUND} to {} Manager.ListUnits{who}",
                2 * ROUND
            ),
            growth as f64,
            "kB",
        )
        .detail(format!(
            "VmRSS {} -> {} MB",
            fmt_num(mb(r.after20.rss_kb)),
            fmt_num(mb(r.after40.rss_kb))
        ))
        .target(TargetOn::Value, Goal::AtMost(64.0)),
    );
}

fn readings_json(who: &str, r: &Readings) -> Json {
    let s = |p: &ProcStats| {
        Json::obj(vec![
            ("rss_kb", Json::num(p.rss_kb as f64)),
            ("hwm_kb", Json::num(p.hwm_kb as f64)),
            ("anon_kb", Json::num(p.rss_anon_kb as f64)),
            ("file_kb", Json::num(p.rss_file_kb as f64)),
        ])
    };
    Json::obj(vec![
        ("variant", Json::str(who)),
        ("idle_0_nodes", s(&r.idle0)),
        ("idle", s(&r.idle)),
        ("after_20", s(&r.after20)),
        ("after_40", s(&r.after40)),
    ])
}

/// The full run's measurement, once, with the manager binary the cluster runs: on the main
/// cluster (`nodes` nodes, units installed, every agent online). It restarts the manager and
/// every agent; it returns with a fresh manager and all `nodes` nodes online again.
pub fn once(ctx: &mut Ctx, c: &mut Cluster, tl: &mut Timeline, nodes: usize) -> Result<()> {
    ctx.phase("row 4: manager memory (fresh manager at 0 nodes, then 20 and 40 ListUnits)");
    let r = measure(ctx, c, tl, nodes)?;
    rows(ctx, &r, nodes, "", "");
    ctx.section(
        "memory",
        Json::Arr(vec![readings_json(&Variant::default().label(), &r)]),
    );
    Ok(())
}

/// Runs the memory measurement for each variant (the release manager if none).
pub fn run(
    ctx: &mut Ctx,
    wrap_dir: &Path,
    release: &Path,
    nodes: usize,
    variants: &[Variant],
) -> Result<()> {
    ctx.phase(&format!("memory: bringing up {nodes} nodes"));
    let names: Vec<String> = (0..nodes).map(|i| format!("n{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut spec = ClusterSpec::new(&refs);
    spec.start_agents = false;
    spec.start_manager = false;
    spec.bin_dir = Some(wrap_dir.to_path_buf());
    let manager_conf = format!(
        "[hirte]\nLogLevel=info\nNodeHeartbeatThreshold=3000ms\nAllowedNodeNames={}\n",
        names.join(",")
    );
    let agent_conf =
        "[hirte-agent]\nLogLevel=info\nHeartbeatInterval=1000ms\nReconnectInterval=500ms\n";
    let mut c = Cluster::start(spec)?;
    crate::bench::setup::drop_ins(&c, &manager_conf, agent_conf)?;
    c.start_manager()?;
    crate::bench::setup::install_units(&c)?;
    let default = [Variant::default()];
    let variants = if variants.is_empty() {
        &default[..]
    } else {
        variants
    };
    let mut tl = Timeline::default();
    let mut raw = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        ctx.phase(&format!("memory: {}", v.label()));
        v.install(wrap_dir, release)?;
        let r = measure(ctx, &mut c, &mut tl, nodes);
        Variant::default().install(wrap_dir, release)?;
        let r = r?;
        let who = v.label();
        rows(ctx, &r, nodes, &format!(".{i}"), &who);
        raw.push(readings_json(&who, &r));
    }
    ctx.section("memory", Json::Arr(raw));
    ctx.section("footprint_timeline", tl.to_json());
    ctx.phase("memory: tearing down");
    c.shutdown()?;
    Ok(())
}
