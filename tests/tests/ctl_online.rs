//! `hirtectl is-online node|agent|system` and hirtectl's one-line errors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod ctl_common;

use std::time::{Duration, Instant};

use ctl_common::*;
use hirte_tests::{Cluster, ClusterSpec, Signal};

// [itest->req~ctl.is-online~1]
// [itest->req~agent.local-api~1]
#[test]
fn ctl_is_online_node_agent_and_system() {
    if !hirte_tests::require_root("ctl_is_online_node_agent_and_system") {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();
    let n2_bus = c.node_bus_address("n2").unwrap();
    let on_n2 = [("DBUS_SESSION_BUS_ADDRESS", n2_bus.as_str())];

    assert_eq!(ctl_ok(&c, &["is-online", "node", "n2"]), "online\n");
    assert_eq!(ctl_ok(&c, &["is-online", "node", "n2", "-q"]), "");
    assert_eq!(ctl_ok(&c, &["is-online", "system"]), "up\n");
    // The agent's local API on the node's own bus (a --user agent).
    let (code, out, err) = run_env(&c, &["is-online", "agent"], &on_n2);
    assert_eq!((code, out.as_str()), (Some(0), "online\n"), "{err}");

    c.kill_agent("n2", Signal::SIGKILL);
    c.wait_node_state("n2", "offline", SOON).unwrap();
    let o = c.hirtectl(&["is-online", "node", "n2"]);
    assert_eq!((o.status.code(), stdout(&o)), (Some(1), "offline\n".into()));
    assert!(stderr(&o).is_empty(), "not an error: {}", show(&o));
    let o = c.hirtectl(&["is-online", "system"]);
    assert_eq!(
        (o.status.code(), stdout(&o)),
        (Some(1), "degraded\n".into())
    );
    let (code, _, err) = run_env(&c, &["is-online", "agent"], &on_n2);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no hirte-agent"), "{err}");

    // --wait: gives up after the wait...
    let t0 = Instant::now();
    let o = c.hirtectl(&["is-online", "node", "n2", "--wait", "400"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // ... or returns as soon as the node is back.
    let clients_before = bus_clients(&c);
    let node_wait = Bg::spawn(&c, &["is-online", "node", "n2", "--wait", "20000"]);
    let agent_wait = Bg::spawn_env(&c, &["is-online", "agent", "--wait", "20000"], &on_n2);
    let system_wait = Bg::spawn(&c, &["is-online", "system", "--wait", "20000", "-q"]);
    // Both manager waiters hold their bus connection while they poll: once both are on the
    // bus they are waiting (a waiter that gave up would have left it).
    c.wait_for("the two waiters on the manager's bus", SOON, || {
        bus_clients(&c) >= clients_before + 2
    })
    .unwrap();
    c.start_agent("n2").unwrap();
    let t0 = Instant::now();
    let (code, lines, err) = node_wait.finish(SOON);
    assert_eq!(
        (code, lines),
        (Some(0), vec!["online".to_string()]),
        "{err}"
    );
    let (code, lines, err) = agent_wait.finish(SOON);
    assert_eq!(
        (code, lines),
        (Some(0), vec!["online".to_string()]),
        "{err}"
    );
    let (code, lines, err) = system_wait.finish(SOON);
    assert_eq!((code, lines), (Some(0), vec![]), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());

    let o = c.hirtectl(&["is-online", "node", "nope"]);
    one_line_failure(&o, Some(4), "is-online of an unknown node");
}

// [itest->req~ctl.errors~1]
#[test]
fn ctl_errors_are_one_line_with_a_status() {
    if !hirte_tests::require_root("ctl_errors_are_one_line_with_a_status") {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();
    c.write_unit("n1", "sl.service", SLEEP_UNIT).unwrap();

    // Usage errors: exit 2.
    for args in [
        &["bogus"][..],
        &["start", "n1"],
        &["list-nodes", "--output", "yaml"],
        &["-o", "json", "start", "n1", "sl.service"],
        &["status", "--count", "1"],
        &["set-property", "n1", "sl.service", "Nope=1"],
        &["kill", "n1", "sl.service", "-s", "99"],
        &["exec", "--timeout", "99999", "n1", "true"],
    ] {
        let o = c.hirtectl(args);
        one_line_failure(&o, Some(2), &format!("{args:?}"));
    }
    // Unknown node / unit / unit file: exit 4.
    for args in [
        &["start", "nope", "sl.service"][..],
        &["list-units", "nope"],
        &["list-unit-files", "nope"],
        &["status", "nope"],
        &["status", "n1", "nope.service"],
        &[
            "status",
            "n1",
            "sl.service",
            "nope.service",
            "nope2.service",
        ],
        &["is-enabled", "n1", "nope.service"],
        &["enable", "n1", "nope.service"],
        &["daemon-reload", "nope"],
        &["reset-failed", "nope"],
        &["monitor", "nope"],
        &["is-online", "node", "nope"],
    ] {
        let o = c.hirtectl(args);
        one_line_failure(&o, Some(4), &format!("{args:?}"));
    }
    let o = c.hirtectl(&[
        "status",
        "n1",
        "sl.service",
        "nope.service",
        "nope2.service",
    ]);
    assert!(
        stderr(&o).contains("nope.service, nope2.service"),
        "{}",
        show(&o)
    );

    // An offline node: one line naming it.
    c.kill_agent("n2", Signal::SIGKILL);
    c.wait_node_state("n2", "offline", SOON).unwrap();
    for args in [
        &["start", "n2", "sl.service"][..],
        &["list-units", "n2"],
        &["status", "n2", "sl.service"],
        &["freeze", "n2", "sl.service"],
        &["set-property", "n2", "sl.service", "CPUWeight=5"],
        &["get-default", "n2"],
        &["reset-failed", "n2"],
    ] {
        let o = c.hirtectl(args);
        let line = one_line_failure(&o, Some(1), &format!("{args:?}"));
        assert!(line.contains("n2"), "{args:?}: {line}");
    }
    // reset-failed of every node skips the offline one.
    ctl_ok(&c, &["reset-failed"]);

    // No manager: one line saying so, for every kind of command.
    c.kill_manager(Signal::SIGTERM);
    for args in [
        &["list-nodes"][..],
        &["list-units"],
        &["status"],
        &["start", "n1", "sl.service"],
        &["monitor"],
        &["exec", "n1", "true"],
        &["metrics", "listen"],
        &["is-online", "system"],
    ] {
        let o = c.hirtectl(args);
        let line = one_line_failure(&o, Some(1), &format!("{args:?} without a manager"));
        assert!(line.contains("not running"), "{args:?}: {line}");
    }
}

// [itest->req~ctl.errors~1]
// [itest->req~ctl.monitor~1]
#[test]
fn ctl_monitor_ends_in_one_line_when_the_manager_stops() {
    if !hirte_tests::require_root("ctl_monitor_ends_in_one_line_when_the_manager_stops") {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&["n1"])).unwrap();
    c.write_unit("n1", "sl.service", SLEEP_UNIT).unwrap();
    ctl_ok(&c, &["start", "n1", "sl.service"]);
    // Each prints something once it is set up (the unit's current state; the first table).
    let mut m = Bg::spawn(&c, &["monitor", "n1", "sl.service"]);
    m.expect_line(&c, "the current state", |l| {
        l.starts_with("n1 sl.service: ")
    });
    let mut w = Bg::spawn(&c, &["status", "-w"]);
    w.expect_line(&c, "the node table", |l| l.starts_with("n1 "));
    c.kill_manager(Signal::SIGTERM);
    for (what, bg) in [("monitor", m), ("status -w", w)] {
        let (code, _, err) = bg.finish(SOON);
        assert_eq!(code, Some(1), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(err.contains("manager stopped"), "{what}: {err}");
    }
}

/// Unique names on the cluster's system bus: the connected clients.
fn bus_clients(c: &Cluster) -> usize {
    let conn = c.system_bus().unwrap();
    let proxy = conn.with_proxy(
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        Duration::from_secs(5),
    );
    let (names,): (Vec<String>,) = proxy
        .method_call("org.freedesktop.DBus", "ListNames", ())
        .unwrap();
    // Not counting this probe's own connection.
    names.iter().filter(|n| n.starts_with(':')).count() - 1
}
