//! Row 3: `hirtectl list-units` over every node, and over one node, against the floor of
//! asking each node's systemd directly. Issue 13, target 1: `Manager.ListUnits` at most 1.3x
//! and `hirtectl list-units` at most 1.6x the direct fan-out floor, in the same run.
//!
//! Two parts of `Manager.ListUnits` are measured alone in the same runs, without targets:
//! (a) building the combined answer from the 50 real `ListUnits` answers as the manager does,
//! (b) an answer of that size and signature passing the manager's bus daemon to a caller; the
//! floor plus both is the structural floor of `Manager.ListUnits` with a libdbus-built reply
//! that passes the bus daemon.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dbus::arg::IterAppend;
use dbus::blocking::Connection;
use dbus::message::MessageType;
use dbus::strings::Signature;
use dbus::Message;
use hirte_common::args::{copy_args, encoded_len, same_path};
use hirte_common::protocol::{signature_of, UnitRow};
use hirte_tests::{Cluster, BENCH_BUS_NAME};

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
    read_units_answer("Manager.ListUnits", &r, nodes)
}

/// Decodes a `Manager.ListUnits` answer as a client does; fails unless it has `nodes` nodes.
fn read_units_answer(what: &str, r: &Message, nodes: usize) -> Result<()> {
    let parsed: std::collections::HashMap<String, Vec<UnitRow>> = r
        .read1()
        .map_err(|e| BenchError::failed(format!("{what} answered {e}")))?;
    if parsed.len() != nodes {
        return Err(BenchError::failed(format!(
            "{what} answered {} nodes, expected {nodes}",
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

/// The next message on `conn` that `want` accepts (others are dropped), before `deadline`.
fn next_message(
    conn: &Connection,
    deadline: Instant,
    want: impl Fn(&Message) -> bool,
) -> Result<Message> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BenchError::failed("no message in time"));
        }
        // None: only part of a large message was read yet.
        let m: Option<Message> = conn
            .channel()
            .blocking_pop_message(left)
            .map_err(|e| BenchError::dbus("waiting for a message", &e))?;
        if let Some(m) = m.filter(|m| want(m)) {
            return Ok(m);
        }
    }
}

/// `ListUnits` sent to every node's systemd at once, then all answers collected: what a
/// fan-out costs on this machine without Hirte (the answers are read, as the agents do).
/// Returns the time and the answers, in the order of `conns`.
fn parallel_floor(conns: &[Connection]) -> Result<(Duration, Vec<Message>)> {
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
    let mut answers = Vec::with_capacity(conns.len());
    for (c, serial) in conns.iter().zip(pending) {
        let m = next_message(c, deadline, |m| m.get_reply_serial() == Some(serial))?;
        let rows: Vec<UnitRow> = m
            .read1()
            .map_err(|e| BenchError::failed(format!("ListUnits answered {e}")))?;
        if rows.is_empty() {
            return Err(BenchError::failed("ListUnits: no units"));
        }
        answers.push(m);
    }
    Ok((t.elapsed(), answers))
}

/// The manager's answer to `Manager.ListUnits` built from the nodes' answers: a bench-side
/// copy of `reply` in manager/src/fanout.rs (the manager is a binary crate, not a library),
/// its `FanOut::Units` case with the same calls. The manager frees each part once copied;
/// the bench keeps them for the next run.
fn build_reply(call: &Message, parts: &[(String, Message)]) -> Result<Message> {
    let mut m = call.method_return();
    let value = "a(ssssssouso)";
    for (node, part) in parts {
        let got = signature_of(part);
        if got != value {
            return Err(BenchError::failed(format!("{node}: got ({got})")));
        }
    }
    let sig = |s: &str| Signature::new(s.to_string()).map_err(BenchError::failed);
    let (key, value) = (sig("s")?, sig(value)?);
    let mut failed = None;
    IterAppend::new(&mut m).append_dict(&key, &value, |dict| {
        for (node, part) in parts {
            dict.append_dict_entry(|entry| {
                entry.append(node.as_str());
                if let Err(e) = copy_args(&mut part.iter_init(), entry, &same_path) {
                    failed.get_or_insert(format!("{node}: {e}"));
                }
            });
        }
    });
    match failed {
        None => Ok(m),
        Some(e) => Err(BenchError::failed(e)),
    }
}

/// A stand-in server on the manager's bus: owns `BENCH_BUS_NAME` and answers each method
/// call with the next reply it is handed (built for that call in advance).
fn bench_server(c: &Cluster) -> Result<(mpsc::Sender<Message>, JoinHandle<Result<()>>)> {
    let conn = c.system_bus()?;
    let owned = conn
        .request_name(BENCH_BUS_NAME, false, false, true)
        .map_err(|e| BenchError::dbus(format!("RequestName {BENCH_BUS_NAME}"), &e))?;
    if owned != dbus::blocking::stdintf::org_freedesktop_dbus::RequestNameReply::PrimaryOwner {
        return Err(BenchError::failed(format!("{BENCH_BUS_NAME}: {owned:?}")));
    }
    let (tx, rx) = mpsc::channel::<Message>();
    let serve = move || -> Result<()> {
        for reply in rx {
            let deadline = Instant::now() + dbusx::CALL_TIMEOUT;
            next_message(&conn, deadline, |m| m.msg_type() == MessageType::MethodCall)?;
            conn.channel()
                .send(reply)
                .map_err(|()| BenchError::failed("cannot send the answer"))?;
            conn.channel().flush();
        }
        Ok(())
    };
    Ok((tx, std::thread::spawn(serve)))
}

/// One run of the parts of `Manager.ListUnits`: (a) the reply to a call from `sys` (serial
/// `serial`) built from `parts` and encoded once, (b) that reply sent by the stand-in server
/// through the bus to `sys`, received and decoded. Returns both times and the reply's bytes.
fn reply_parts(
    sys: &Connection,
    parts: &[(String, Message)],
    serial: u32,
    server: &mpsc::Sender<Message>,
) -> Result<(Duration, Duration, usize)> {
    // The call's serial and sender are set before it is sent, so that its reply can be built
    // first (libdbus keeps a serial already set; the bus sets the sender anyway).
    let mut q = method(
        BENCH_BUS_NAME,
        "/",
        "org.containers.hirte.Bench",
        "ListUnits",
    )?;
    q.set_serial(serial);
    q.set_sender(Some(sys.unique_name()));
    let t = Instant::now();
    let reply = build_reply(&q, parts)?;
    let bytes = encoded_len(&reply);
    let build = t.elapsed();
    server
        .send(reply)
        .map_err(|_| BenchError::failed("the stand-in server has stopped"))?;
    let t = Instant::now();
    let r = call(sys, q)?;
    read_units_answer("the stand-in server", &r, parts.len())?;
    Ok((build, t.elapsed(), bytes))
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
    // The nodes' real answers, for the reply built alone (a) and sent through the bus (b).
    let (_, answers) = parallel_floor(&node_conns)?;
    let parts: Vec<(String, Message)> = nodes.iter().cloned().zip(answers).collect();
    let (server, serving) = bench_server(c)?;
    let mut reply_build = Samples::new();
    let mut bus_hop = Samples::new();
    let mut structural = Samples::new();
    let mut reply_bytes = 0;
    let mut all = Samples::new();
    let mut single = Samples::new();
    let mut api = Samples::new();
    let mut floor_par = Samples::new();
    let mut floor_seq = Samples::new();
    let mut floor_one = Samples::new();
    let runs = ctx.sizes.list_all_runs;
    for run in 0..runs {
        all.push_us(timed_cmd(c, &["list-units"])?);
        let t = Instant::now();
        manager_list_units(&sys, nodes.len())?;
        api.push_us(t.elapsed());
        let (floor, _) = parallel_floor(&node_conns)?;
        floor_par.push_us(floor);
        // Serials far above the connection's own, which count from 1.
        let serial = u32::try_from(run).map_or(u32::MAX, |r| 0x4000_0000 + r);
        let (build, hop, bytes) = reply_parts(&sys, &parts, serial, &server)?;
        reply_bytes = bytes;
        reply_build.push_us(build);
        bus_hop.push_us(hop);
        structural.push_us(floor + build + hop);
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
    drop(server);
    serving
        .join()
        .map_err(|_| BenchError::failed("the stand-in server panicked"))??;
    let (all_s, single_s, api_s) = (to_ms(&all), to_ms(&single), to_ms(&api));
    let (build_s, hop_s, struct_s) = (to_ms(&reply_build), to_ms(&bus_hop), to_ms(&structural));
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
    let floor = ("direct fan-out floor", par_s.median);
    ctx.metric(
        Metric::median(
            "3",
            "list.part_reply_build",
            &format!(
                "part: the manager's reply built alone from the {} real answers (copy_args, then encoded once)",
                nodes.len()
            ),
            &build_s,
            "ms",
        )
        .vs(floor.0, floor.1),
    );
    ctx.metric(
        Metric::median(
            "3",
            "list.part_bus_hop",
            &format!(
                "part: that {:.1} MB answer through the system bus from a stand-in server, decoded",
                reply_bytes as f64 / 1e6
            ),
            &hop_s,
            "ms",
        )
        .vs(floor.0, floor.1),
    );
    ctx.metric(
        Metric::median(
            "3",
            "list.structural_floor",
            "structural floor of Manager.ListUnits: floor_parallel + reply building + bus hop (per run)",
            &struct_s,
            "ms",
        )
        .vs(floor.0, floor.1),
    );
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
            ("reply_bytes", Json::num(reply_bytes as f64)),
            ("part_reply_build_ms", summary_json(&build_s, "ms")),
            ("part_bus_hop_ms", summary_json(&hop_s, "ms")),
            ("structural_floor_ms", summary_json(&struct_s, "ms")),
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
