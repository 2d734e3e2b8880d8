//! Event-driven hirtectl commands on real systemd: monitor (across an agent's death and
//! return), status -w, metrics listen; and job cancel through the D-Bus API.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod ctl_common;

use std::time::{Duration, Instant};

use ctl_common::*;
use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
use dbus::blocking::Connection;
use dbus::Message;
use hirte_tests::{Cluster, ClusterSpec, Signal};

/// The first message on `conn` within `timeout` that `pred` accepts.
fn wait_signal(
    conn: &Connection,
    timeout: Duration,
    mut pred: impl FnMut(&Message) -> bool,
) -> Option<Message> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        if let Ok(Some(m)) = conn.channel().blocking_pop_message(left) {
            if pred(&m) {
                return Some(m);
            }
        }
    }
}

// [itest->req~ctl.monitor~1]
// [itest->req~manager.monitors~1]
// [itest->req~manager.monitor-virtual~1]
// [itest->req~api.monitor~1]
#[test]
fn ctl_monitor_follows_a_node_disconnect_and_reconnect() {
    if !hirte_tests::require_root("ctl_monitor_follows_a_node_disconnect_and_reconnect") {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();
    c.write_unit("n2", "svc.service", SLEEP_UNIT).unwrap();
    c.write_unit("n2", "other.service", SLEEP_UNIT).unwrap();
    c.write_unit("n1", "svc.service", SLEEP_UNIT).unwrap();
    ctl_ok(&c, &["start", "n2", "svc.service"]);
    let mut m = Bg::spawn(&c, &["monitor", "n2", "svc.service"]);
    // A new subscription first reports the unit's current state (virtual): it is in place.
    m.expect_line(&c, "the current state", |l| {
        l == "n2 svc.service: active/running (virtual)"
    });
    ctl_ok(&c, &["restart", "n2", "svc.service"]);
    m.expect_line(&c, "n2 svc.service: active/running (real)", |l| {
        l == "n2 svc.service: active/running (real)"
    });
    // Events of other units and of other nodes are not for this monitor.
    ctl_ok(&c, &["start", "n2", "other.service"]);
    ctl_ok(&c, &["start", "n1", "svc.service"]);

    // The agent dies: subscribers learn that the unit is gone for them.
    c.kill_agent("n2", Signal::SIGKILL);
    m.expect_line(&c, "the virtual agent-offline state", |l| {
        l == "n2 svc.service: inactive/agent-offline (virtual)"
    });
    m.expect_line(&c, "the virtual removal", |l| {
        l == "n2 svc.service: removed (virtual)"
    });

    // It comes back: the subscription carries on and events flow again.
    c.start_agent("n2").unwrap();
    c.wait_node_state("n2", "online", SOON).unwrap();
    ctl_ok(&c, &["stop", "n2", "svc.service"]);
    m.expect_line(&c, "the stop after the reconnect", |l| {
        l == "n2 svc.service: inactive/dead (real)"
    });

    // SIGINT ends it cleanly.
    m.signal(Signal::SIGINT);
    let (code, lines, err) = m.finish(SOON);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(err.is_empty(), "{err}");
    for l in &lines {
        assert!(
            l.starts_with("n2 svc.service: "),
            "foreign event: {l}\n{lines:#?}"
        );
    }
    let offline = lines
        .iter()
        .position(|l| l.contains("agent-offline"))
        .unwrap();
    assert_eq!(
        lines[offline + 1],
        "n2 svc.service: removed (virtual)",
        "{lines:#?}"
    );
}

// [itest->req~ctl.monitor~1]
// [itest->req~ctl.json~1]
// [itest->req~manager.monitors~1]
#[test]
fn ctl_monitor_json_wildcards_and_bounds() {
    if !hirte_tests::require_root("ctl_monitor_json_wildcards_and_bounds") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();
    for n in ["n1", "n2"] {
        c.write_unit(n, "a.service", SLEEP_UNIT).unwrap();
        c.write_unit(n, "b.service", SLEEP_UNIT).unwrap();
    }

    // Two units of one node (SubscribeList), JSON with property changes.
    let mut m = Bg::spawn(
        &c,
        &[
            "-o",
            "json",
            "monitor",
            "n1",
            "a.service",
            "b.service",
            "--properties",
        ],
    );
    m.poke_until(
        &c,
        "an a.service event",
        || {
            ctl_ok(&c, &["restart", "n1", "a.service"]);
        },
        |l| l.contains(r#""unit":"a.service""#),
    );
    ctl_ok(&c, &["start", "n1", "b.service"]);
    ctl_ok(&c, &["start", "n2", "a.service"]);
    m.expect_line(&c, "b.service running", |l| {
        l.contains(r#""unit":"b.service","active":"active","sub":"running""#)
    });
    ctl_ok(&c, &["stop", "n1", "a.service"]);
    m.expect_line(&c, "a.service removed", |l| {
        l.contains(r#""event":"removed""#) && l.contains(r#""unit":"a.service""#)
    });
    m.signal(Signal::SIGTERM);
    let (code, lines, err) = m.finish(SOON);
    assert_eq!(code, Some(0), "stderr: {err}");
    let mut kinds = std::collections::BTreeSet::new();
    for l in &lines {
        let ev = json(l);
        let kind = ev.s("event").to_string();
        assert_documented(&format!("monitor {kind}"), std::slice::from_ref(&ev));
        assert_eq!(ev.s("node"), "n1", "{l}");
        assert!(["a.service", "b.service"].contains(&ev.s("unit")), "{l}");
        if kind == "state" {
            assert!(["real", "virtual"].contains(&ev.s("reason")), "{l}");
        }
        kinds.insert(kind);
    }
    for k in ["state", "removed", "properties"] {
        assert!(kinds.contains(k), "no {k} event in {lines:#?}");
    }

    // No node: every node's units; --count ends it.
    let mut all = Bg::spawn(&c, &["monitor", "--count", "500", "--timeout", "20"]);
    all.poke_until(
        &c,
        "an n1 event",
        || {
            ctl_ok(&c, &["restart", "n1", "b.service"]);
        },
        |l| l.starts_with("n1 b.service: "),
    );
    ctl_ok(&c, &["restart", "n2", "b.service"]);
    all.expect_line(&c, "an n2 event", |l| l.starts_with("n2 b.service: "));
    all.signal(Signal::SIGINT);
    let (code, _, err) = all.finish(SOON);
    assert_eq!(code, Some(0), "interrupted before the count: {err}");

    let o = c.hirtectl(&[
        "monitor",
        "n2",
        "b.service",
        "--count",
        "1",
        "--timeout",
        "20",
    ]);
    // Subscribing to a loaded unit reports its current state at once.
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(stdout(&o).lines().count(), 1, "{}", show(&o));

    // --timeout alone: a normal end; with --count not reached: one line, exit 1.
    let t0 = Instant::now();
    let o = c.hirtectl(&["monitor", "n1", "nothing.service", "--timeout", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).is_empty(), "{}", show(&o));
    assert!(t0.elapsed() < Duration::from_secs(5));
    let o = c.hirtectl(&[
        "monitor",
        "n1",
        "nothing.service",
        "--count",
        "2",
        "--timeout",
        "1",
    ]);
    let line = one_line_failure(&o, Some(1), "monitor --count not reached");
    assert!(line.contains("0 of 2"), "{line}");
    let o = c.hirtectl(&["monitor", "nope"]);
    one_line_failure(&o, Some(4), "monitor of an unknown node");
}

// [itest->req~api.job~1]
// [itest->req~ctl.unit-ops~1]
#[test]
fn ctl_job_cancel_ends_the_start_job_canceled() {
    if !hirte_tests::require_root("ctl_job_cancel_ends_the_start_job_canceled") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();
    c.write_unit(
        "n2",
        "slow.service",
        "[Service]\nType=oneshot\nExecStartPre=/bin/sleep 60\nExecStart=/bin/true\n",
    )
    .unwrap();
    let conn = c.system_bus().unwrap();
    conn.add_match_no_cb(&format!(
        "type='signal',sender='{BUS_NAME}',interface='{MANAGER_IFACE}'"
    ))
    .unwrap();

    let start = Bg::spawn(&c, &["start", "n2", "slow.service"]);
    let new =
        wait_signal(&conn, SOON, |m| m.member().as_deref() == Some("JobNew")).expect("JobNew");
    let (id, job): (u32, dbus::Path) = new.read2().unwrap();
    let job = job.into_static();
    let proxy = conn.with_proxy(BUS_NAME, job.clone(), Duration::from_secs(10));
    let prop = |name: &str| -> String { proxy.get(JOB_IFACE, name).unwrap() };
    assert_eq!(prop("Unit"), "slow.service");
    assert_eq!(prop("Node"), "n2");
    assert_eq!(prop("JobType"), "start");
    let job_id: u32 = proxy.get(JOB_IFACE, "Id").unwrap();
    assert_eq!(job_id, id);
    eventually(&c, "the job to run", SOON, || prop("State") == "running");
    assert_eq!(is_active(&c, "n2", "slow.service"), "activating");

    let t0 = Instant::now();
    let r: Result<(), _> = proxy.method_call(JOB_IFACE, "Cancel", ());
    r.unwrap_or_else(|e: dbus::Error| panic!("Cancel: {e:?}\n{}", c.log_tails()));
    let removed = wait_signal(&conn, SOON, |m| {
        m.member().as_deref() == Some("JobRemoved")
            && m.read2::<u32, dbus::Path>().is_ok_and(|(_, p)| p == job)
    })
    .expect("JobRemoved");
    let (rid, _, node, unit, result): (u32, dbus::Path, String, String, String) =
        removed.read5().unwrap();
    assert_eq!(
        (rid, node.as_str(), unit.as_str(), result.as_str()),
        (id, "n2", "slow.service", "canceled")
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        t0.elapsed()
    );

    // hirtectl start, which was waiting for that job, reports the result.
    let (code, lines, err) = start.finish(SOON);
    assert_eq!(code, Some(1), "{lines:?} {err}");
    assert_eq!(
        lines,
        ["Unit slow.service start operation result: canceled"]
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("canceled"), "{err}");
    // Cancelling a running start job leaves the unit as it is (as in systemd); stop it.
    ctl_ok(&c, &["stop", "n2", "slow.service"]);
    // The job object is gone.
    let again: Result<(), dbus::Error> = proxy.method_call(JOB_IFACE, "Cancel", ());
    assert!(again.is_err(), "Cancel of an ended job must fail");
}

// [itest->req~ctl.status~1]
// [itest->req~ctl.json~1]
#[test]
fn ctl_status_watch_redraws_on_change() {
    if !hirte_tests::require_root("ctl_status_watch_redraws_on_change") {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();
    c.write_unit("n2", "w.service", SLEEP_UNIT).unwrap();

    // Units: first the current state, then one redraw after the start.
    let mut w = Bg::spawn(
        &c,
        &[
            "status",
            "n2",
            "w.service",
            "-w",
            "--count",
            "1",
            "--timeout",
            "20",
        ],
    );
    // The first drawing comes after the subscription.
    w.expect_line(&c, "the first table", |l| l.starts_with("w.service "));
    ctl_ok(&c, &["start", "n2", "w.service"]);
    let (code, lines, err) = w.finish(Duration::from_secs(25));
    assert_eq!(code, Some(0), "{lines:#?} {err}");
    let tables: Vec<&[String]> = lines.split(|l| l.is_empty()).collect();
    assert_eq!(tables.len(), 2, "{lines:#?}");
    assert!(tables[0][1].contains(" inactive "), "{lines:#?}");
    assert!(tables[1][0].starts_with("UNIT "), "{lines:#?}");
    assert!(tables[1][1].contains(" active ") && tables[1][1].contains(" running "));

    // All units of a node: a unit that starts is a change.
    c.write_unit("n1", "w1.service", SLEEP_UNIT).unwrap();
    let mut w = Bg::spawn(
        &c,
        &["status", "n1", "-w", "--count", "1", "--timeout", "20"],
    );
    w.expect_line(&c, "the first table", |l| l.starts_with("UNIT "));
    ctl_ok(&c, &["start", "n1", "w1.service"]);
    let (code, lines, err) = w.finish(Duration::from_secs(25));
    assert_eq!(code, Some(0), "{lines:#?} {err}");
    let tables: Vec<&[String]> = lines.split(|l| l.is_empty()).collect();
    assert_eq!(tables.len(), 2, "{lines:#?}");
    assert!(
        !tables[0].iter().any(|l| l.starts_with("w1.service ")),
        "{lines:#?}"
    );
    let row = tables[1]
        .iter()
        .find(|l| l.starts_with("w1.service "))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(
        row.contains(" active ") && row.contains(" running "),
        "{row}"
    );

    // Nodes, as JSON: a line per drawing; the agent's death is a change.
    let mut w = Bg::spawn(
        &c,
        &[
            "-o",
            "json",
            "status",
            "-w",
            "--count",
            "1",
            "--timeout",
            "20",
        ],
    );
    w.expect_line(&c, "the first drawing", |l| l.starts_with('['));
    c.kill_agent("n2", Signal::SIGKILL);
    let (code, lines, err) = w.finish(Duration::from_secs(25));
    assert_eq!(code, Some(0), "{lines:#?} {err}");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let before = json(&lines[0]);
    let after = json(&lines[1]);
    assert_documented("list-nodes", before.arr());
    assert_documented("list-nodes", after.arr());
    assert_eq!(before.arr()[1].s("state"), "online");
    assert_eq!(after.arr()[1].s("state"), "offline");

    // Nothing changes: --count not reached within --timeout is one line.
    let o = c.hirtectl(&["status", "n1", "-w", "--count", "3", "--timeout", "1"]);
    let line = one_line_failure(&o, Some(1), "status -w without changes");
    assert!(line.contains("0 of 3"), "{line}");
    assert!(stdout(&o).starts_with("UNIT "), "{}", show(&o));
    let o = c.hirtectl(&["status", "--count", "1"]);
    one_line_failure(&o, Some(2), "--count without -w");
}

/// Restarts `warm.service` on `node` until the listener prints a line: then it is listening.
fn sync_metrics(c: &Cluster, l: &mut Bg, node: &str) {
    l.poke_until(
        c,
        "a metrics signal of warm.service",
        || {
            ctl_ok(c, &["restart", node, "warm.service"]);
        },
        |line| line.contains("warm.service"),
    );
}

// [itest->req~ctl.metrics~1]
// [itest->req~manager.metrics~1]
// [itest->req~ctl.json~1]
#[test]
fn ctl_metrics_enable_listen_disable() {
    if !hirte_tests::require_root("ctl_metrics_enable_listen_disable") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();
    for u in ["warm.service", "m1.service", "m2.service", "m3.service"] {
        c.write_unit("n2", u, SLEEP_UNIT).unwrap();
    }
    ctl_ok(&c, &["metrics", "enable"]);
    let mut l = Bg::spawn(&c, &["-o", "json", "metrics", "listen", "--timeout", "60"]);
    sync_metrics(&c, &mut l, "n2");
    ctl_ok(&c, &["start", "n2", "m1.service"]);
    // Both signals come as the job ends; their order is not part of the contract.
    for signal in ["StartUnitJobMetrics", "AgentJobMetrics"] {
        let pred = |line: &str| line.contains(signal) && line.contains("m1.service");
        if !l.seen.iter().any(|x| pred(x)) {
            l.expect_line(&c, signal, pred);
        }
    }
    // Disabled: nothing more, the listener stays.
    ctl_ok(&c, &["metrics", "disable"]);
    ctl_ok(&c, &["start", "n2", "m3.service"]);
    assert_eq!(
        l.wait_line(Duration::from_secs(2), |line| line.contains("m3.service")),
        None,
        "metrics while disabled"
    );
    l.signal(Signal::SIGINT);
    let (code, lines, err) = l.finish(SOON);
    assert_eq!(code, Some(0), "{lines:#?} {err}\n{}", c.log_tails());
    let mut m1 = Vec::new();
    for line in &lines {
        let v = json(line);
        let shape = match v.s("signal") {
            "StartUnitJobMetrics" => "metrics start",
            "AgentJobMetrics" => "metrics agent",
            other => panic!("unexpected signal {other}"),
        };
        assert_documented(shape, std::slice::from_ref(&v));
        assert_eq!(v.s("node"), "n2", "{line}");
        if v.s("unit") == "m1.service" {
            m1.push(v.s("signal").to_string());
        }
    }
    m1.sort();
    assert_eq!(m1, ["AgentJobMetrics", "StartUnitJobMetrics"], "{lines:#?}");

    // Text, with --count.
    ctl_ok(&c, &["metrics", "enable"]);
    let mut l = Bg::spawn(
        &c,
        &["metrics", "listen", "--count", "1000", "--timeout", "60"],
    );
    sync_metrics(&c, &mut l, "n2");
    ctl_ok(&c, &["start", "n2", "m2.service"]);
    let line = l.expect_line(&c, "an m2.service line", |line| line.contains("m2.service"));
    assert!(line.starts_with("n2 m2.service: "), "{line}");
    assert!(line.ends_with("ms") || line.ends_with("ms)"), "{line}");
    drop(l);
    let o = c.hirtectl(&["metrics", "listen", "--count", "1", "--timeout", "1"]);
    let line = one_line_failure(&o, Some(1), "metrics listen --count not reached");
    assert!(line.contains("0 of 1"), "{line}");
}

/// `unit_start_prop_time_usec` (BlueChi's `unit_start_prop_time_micros`) is the unit's own
/// start time, from leaving `inactive` to entering `active`: for a unit that needs 300 ms to
/// start it cannot be 0.
// [itest->req~manager.metrics~1]
#[test]
fn ctl_metrics_report_the_unit_start_propagation_time() {
    if !hirte_tests::require_root("ctl_metrics_report_the_unit_start_propagation_time") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["n1"])).unwrap();
    c.write_unit("n1", "warm.service", SLEEP_UNIT).unwrap();
    c.write_unit(
        "n1",
        "slowish.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sleep 0.3\n",
    )
    .unwrap();
    ctl_ok(&c, &["metrics", "enable"]);
    let mut l = Bg::spawn(&c, &["-o", "json", "metrics", "listen", "--timeout", "60"]);
    sync_metrics(&c, &mut l, "n1");
    ctl_ok(&c, &["start", "n1", "slowish.service"]);
    let line = l.expect_line(&c, "StartUnitJobMetrics of slowish.service", |line| {
        line.contains("StartUnitJobMetrics") && line.contains("slowish.service")
    });
    let start = json(&line);
    let job = start.u("job_measured_time_usec");
    let prop = start.u("unit_start_prop_time_usec");
    assert!(job >= 250_000, "job time {job} µs for a 300 ms start");
    assert!(
        (250_000..=job).contains(&prop),
        "unit start propagation time {prop} µs for a 300 ms start (job {job} µs)"
    );
}

/// A state change is one `UnitStateChanged`: systemd repeats `PropertiesChanged` with the same
/// ActiveState/SubState (e.g. when only its Job property changes), which must not be
/// reported as another change.
// [itest->req~manager.monitors~1]
#[test]
fn ctl_monitor_reports_each_state_change_once() {
    if !hirte_tests::require_root("ctl_monitor_reports_each_state_change_once") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["n1"])).unwrap();
    c.write_unit("n1", "once.service", SLEEP_UNIT).unwrap();
    ctl_ok(&c, &["start", "n1", "once.service"]);
    let mut m = Bg::spawn(&c, &["monitor", "n1", "once.service"]);
    m.expect_line(&c, "the current state", |l| {
        l == "n1 once.service: active/running (virtual)"
    });
    ctl_ok(&c, &["stop", "n1", "once.service"]);
    ctl_ok(&c, &["start", "n1", "once.service"]);
    m.expect_line(&c, "running again", |l| {
        l == "n1 once.service: active/running (real)"
    });
    // Let late duplicates arrive, then end.
    let _ = m.wait_line(Duration::from_secs(1), |_| false);
    m.signal(Signal::SIGINT);
    let (code, lines, err) = m.finish(SOON);
    assert_eq!(code, Some(0), "{err}");
    let states: Vec<&String> = lines
        .iter()
        .filter(|l| l.ends_with("(real)") && l.contains('/'))
        .collect();
    for pair in states.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "the same state reported twice in a row: {lines:#?}"
        );
    }
}
