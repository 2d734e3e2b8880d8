//! Row 3: `hirtectl list-units` over every node, and over one node, against the floor of
//! asking each node's systemd directly. Issue 13, target 1: `Manager.ListUnits` at most 1.3x
//! and `hirtectl list-units` at most 1.6x the direct fan-out floor, in the same run.

use std::time::Instant;

use dbus::blocking::Connection;
use dbus::Message;
use hirte_tests::Cluster;

use crate::bench::dbusx::{
    self, call, method, HIRTE_DEST, HIRTE_MANAGER, HIRTE_PATH, SD_DEST, SD_MANAGER, SD_PATH,
};
use crate::bench::error::{BenchError, Result};
use crate::bench::latency::{hirtectl, COMMAND_TIMEOUT};
use crate::bench::report::{Goal, Json, Metric, TargetOn};
use crate::bench::stats::{Samples, Summary};
use crate::bench::{spawn, summary_json, Ctx};

fn to_ms(s: &Samples) -> Summary {
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
}

/// Data rows of a table printed by hirtectl (lines minus the header).
fn table_rows(out: &str) -> usize {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .count()
        .saturating_sub(1)
}

/// `Manager.ListUnits` over the system bus, decoded; fails unless it answers for `nodes` nodes.
pub fn manager_list_units(sys: &Connection, nodes: usize) -> Result<()> {
    let r = call(
        sys,
        method(HIRTE_DEST, HIRTE_PATH, HIRTE_MANAGER, "ListUnits")?,
    )?;
    let parsed: std::collections::HashMap<String, Vec<hirte_common::protocol::UnitRow>> = r
        .read1()
        .map_err(|e| BenchError::failed(format!("Manager.ListUnits answered {e}")))?;
    if parsed.len() != nodes {
        return Err(BenchError::failed(format!(
            "Manager.ListUnits answered {} nodes, expected {nodes}",
            parsed.len()
        )));
    }
    Ok(())
}

fn timed_cmd(c: &Cluster, args: &[&str]) -> Result<std::time::Duration> {
    let mut cmd = hirtectl(c, args);
    let (d, st) = spawn::timed(&mut cmd, COMMAND_TIMEOUT)?;
    if !st.success() {
        return Err(BenchError::failed(format!(
            "hirtectl {args:?} exited with {st}"
        )));
    }
    Ok(d)
}

/// `ListUnits` sent to every node's systemd at once, then all answers collected: what a
/// fan-out costs on this machine without Hirte (the answers are read, as the agents do).
fn parallel_floor(conns: &[Connection]) -> Result<std::time::Duration> {
    let t = Instant::now();
    let mut pending = Vec::with_capacity(conns.len());
    for c in conns {
        let m = method(SD_DEST, SD_PATH, SD_MANAGER, "ListUnits")?;
        let serial = c
            .channel()
            .send(m)
            .map_err(|()| BenchError::failed("cannot send ListUnits"))?;
        pending.push(serial);
    }
    let deadline = Instant::now() + dbusx::CALL_TIMEOUT;
    for (c, serial) in conns.iter().zip(pending) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BenchError::failed("ListUnits: no answer in time"));
            }
            // None: only part of a large answer was read yet.
            let m: Option<Message> = c
                .channel()
                .blocking_pop_message(left)
                .map_err(|e| BenchError::dbus("ListUnits", &e))?;
            let Some(m) = m else { continue };
            if m.get_reply_serial() == Some(serial) {
                let rows: Vec<hirte_common::protocol::UnitRow> = m
                    .read1()
                    .map_err(|e| BenchError::failed(format!("ListUnits answered {e}")))?;
                if rows.is_empty() {
                    return Err(BenchError::failed("ListUnits: no units"));
                }
                break;
            }
        }
    }
    Ok(t.elapsed())
}

pub fn row3(ctx: &mut Ctx, c: &Cluster, one: &str) -> Result<()> {
    ctx.phase("row 3: list-units across all nodes");
    let nodes: Vec<String> = c.nodes().into_iter().map(str::to_string).collect();
    let out = spawn::output(&mut hirtectl(c, &["list-units"]), COMMAND_TIMEOUT)?;
    let rows_all = table_rows(&out);
    let out1 = spawn::output(&mut hirtectl(c, &["list-units", one]), COMMAND_TIMEOUT)?;
    let rows_one = table_rows(&out1);
    ctx.log(&format!(
        "   hirtectl list-units: {rows_all} rows; list-units {one}: {rows_one} rows"
    ));
    let node_conns: Vec<Connection> = nodes
        .iter()
        .map(|n| c.node_bus(n))
        .collect::<std::result::Result<_, _>>()?;
    let sys = c.system_bus()?;
    let one_conn = c.node_bus(one)?;
    for _ in 0..2 {
        timed_cmd(c, &["list-units"])?;
        timed_cmd(c, &["list-units", one])?;
    }
    let mut all = Samples::new();
    let mut single = Samples::new();
    let mut api = Samples::new();
    let mut floor_par = Samples::new();
    let mut floor_seq = Samples::new();
    let mut floor_one = Samples::new();
    let runs = ctx.sizes.list_all_runs;
    for _ in 0..runs {
        all.push_us(timed_cmd(c, &["list-units"])?);
        let t = Instant::now();
        manager_list_units(&sys, nodes.len())?;
        api.push_us(t.elapsed());
        floor_par.push_us(parallel_floor(&node_conns)?);
        let t = Instant::now();
        for nc in &node_conns {
            let r = call(nc, method(SD_DEST, SD_PATH, SD_MANAGER, "ListUnits")?)?;
            let _: Vec<hirte_common::protocol::UnitRow> = r
                .read1()
                .map_err(|e| BenchError::failed(format!("ListUnits answered {e}")))?;
        }
        floor_seq.push_us(t.elapsed());
    }
    for _ in 0..ctx.sizes.list_node_runs {
        single.push_us(timed_cmd(c, &["list-units", one])?);
        let t = Instant::now();
        let r = call(
            &one_conn,
            method(SD_DEST, SD_PATH, SD_MANAGER, "ListUnits")?,
        )?;
        let _: Vec<hirte_common::protocol::UnitRow> = r
            .read1()
            .map_err(|e| BenchError::failed(format!("ListUnits answered {e}")))?;
        floor_one.push_us(t.elapsed());
    }
    let (all_s, single_s, api_s) = (to_ms(&all), to_ms(&single), to_ms(&api));
    let (par_s, seq_s, one_s) = (to_ms(&floor_par), to_ms(&floor_seq), to_ms(&floor_one));
    ctx.metric(
        Metric::median(
            "3",
            "list.all",
            &format!(
                "`hirtectl list-units`, {} nodes, {rows_all} rows",
                nodes.len()
            ),
            &all_s,
            "ms",
        )
        .vs("direct fan-out floor", par_s.median)
        .c(180.0)
        .target(TargetOn::Ratio, Goal::AtMost(1.6)),
    );
    ctx.metric(
        Metric::median(
            "3",
            "list.all_api",
            "Manager.ListUnits over D-Bus from Rust (no process, no table)",
            &api_s,
            "ms",
        )
        .vs("direct fan-out floor", par_s.median)
        .c_text("about 1.65x the floor")
        .target(TargetOn::Ratio, Goal::AtMost(1.3)),
    );
    ctx.metric(Metric::median(
        "3",
        "list.floor_parallel",
        &format!(
            "floor: ListUnits sent to all {} systemds at once from Rust",
            nodes.len()
        ),
        &par_s,
        "ms",
    ));
    ctx.metric(Metric::median(
        "3",
        "list.floor_sequential",
        &format!(
            "floor: ListUnits to the {} systemds one after another",
            nodes.len()
        ),
        &seq_s,
        "ms",
    ));
    ctx.metric(
        Metric::median(
            "3",
            "list.one",
            &format!("`hirtectl list-units {one}`, {rows_one} rows"),
            &single_s,
            "ms",
        )
        .vs("direct ListUnits", one_s.median),
    );
    ctx.section(
        "row3",
        Json::obj(vec![
            ("nodes", Json::num(nodes.len() as f64)),
            ("rows_all", Json::num(rows_all as f64)),
            ("rows_one", Json::num(rows_one as f64)),
            ("hirtectl_list_units_ms", summary_json(&all_s, "ms")),
            ("manager_listunits_dbus_ms", summary_json(&api_s, "ms")),
            ("floor_parallel_ms", summary_json(&par_s, "ms")),
            ("floor_sequential_ms", summary_json(&seq_s, "ms")),
            ("hirtectl_list_units_one_ms", summary_json(&single_s, "ms")),
            ("floor_one_ms", summary_json(&one_s, "ms")),
        ]),
    );
    Ok(())
}

/// One `hirtectl list-units` over all nodes (more use for the flatness check).
pub fn row3_once(c: &Cluster) -> Result<()> {
    timed_cmd(c, &["list-units"]).map(|_| ())
}
