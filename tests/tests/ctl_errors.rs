//! hirtectl's error paths: each is one line on stderr and a non-zero exit, never a panic;
//! and `hirtectl exec`, whose exit status is the command's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use hirte_tests::{Cluster, ClusterSpec, Signal};

const NODES: [&str; 3] = ["primary", "agent1", "agent2"];

/// Runs every command, checks each is a one-line failure whose line contains `needle`;
/// returns the problems found (all commands run, so one report shows every offender).
fn check_all(c: &Cluster, cmds: &[&[&str]], needle: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for args in cmds {
        let out = c.hirtectl(args);
        let what = format!("hirtectl {}", args.join(" "));
        if let Some(p) = one_line_problem(&out) {
            problems.push(format!("{what}: {p}"));
            continue;
        }
        let line = stderr(&out);
        if !line.starts_with("hirtectl: ") || !line.contains(needle) {
            problems.push(format!(
                "{what}: expected 'hirtectl: ...{needle}...', got {line:?}"
            ));
        }
        // Unit operations may print the job result on stdout, nothing else is expected there.
        let so = stdout(&out);
        if !so.is_empty() && !so.contains("operation result") {
            problems.push(format!("{what}: unexpected stdout {so:?}"));
        }
    }
    problems
}

#[track_caller]
fn assert_none(problems: Vec<String>) {
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

// [itest->req~ctl.errors~1]
// [itest->req~api.errors~1]
#[test]
fn ctl_errors_unknown_node_and_missing_unit_are_one_line() {
    if !hirte_tests::require_root("ctl_errors_unknown_node_and_missing_unit_are_one_line") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let unknown: [&[&str]; 8] = [
        &["list-units", "nope"],
        &["start", "nope", "httpd.service"],
        &["stop", "nope", "httpd.service"],
        &["restart", "nope", "httpd.service"],
        &["status", "nope", "httpd.service"],
        &["enable", "nope", "httpd.service"],
        &["disable", "nope", "httpd.service"],
        &["daemon-reload", "nope"],
    ];
    let mut problems = check_all(&c, &unknown, "nope");
    // "No such node" exits like systemctl's "no such unit" (4).
    for args in unknown {
        let out = c.hirtectl(args);
        if out.status.code() != Some(4) {
            problems.push(format!(
                "hirtectl {}: exit {:?}, want 4",
                args.join(" "),
                out.status.code()
            ));
        }
    }
    let missing: [&[&str]; 6] = [
        &["start", "agent1", "missing.service"],
        &["stop", "agent1", "missing.service"],
        &["restart", "agent1", "missing.service"],
        &["status", "agent1", "missing.service"],
        &["enable", "agent1", "missing.service"],
        &["disable", "agent1", "missing.service"],
    ];
    problems.extend(check_all(&c, &missing, "missing.service"));
    // "Unit not found" exits 4 as systemctl does.
    for args in &missing[..4] {
        let out = c.hirtectl(args);
        if out.status.code() != Some(4) {
            problems.push(format!(
                "hirtectl {}: exit {:?}, want 4",
                args.join(" "),
                out.status.code()
            ));
        }
    }
    assert_none(problems);

    // Usage errors exit 2 (clap's message), never a panic.
    for args in [&["start", "agent1"][..], &["no-such-command"], &["start"]] {
        let out = c.hirtectl(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "hirtectl {args:?}: {}",
            show(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{}", show(&out));
    }

    // A job that ends other than 'done': the result on stdout, one error line, non-zero.
    c.write_unit("agent1", "broken.service", FAILING_UNIT)
        .unwrap();
    let out = c.hirtectl(&["start", "agent1", "broken.service"]);
    let line = one_line_failure(&out, "start of a failing unit");
    assert!(
        line.contains("broken.service") && line.contains("failed"),
        "{line}"
    );
    assert_eq!(
        stdout(&out).trim(),
        "Unit broken.service start operation result: failed"
    );
    // Reload of a unit that cannot reload.
    c.write_unit(
        "agent1",
        "plain.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    )
    .unwrap();
    ok(
        &c.hirtectl(&["start", "agent1", "plain.service"]),
        "start plain",
    );
    let out = c.hirtectl(&["reload", "agent1", "plain.service"]);
    let line = one_line_failure(&out, "reload of a unit without ExecReload");
    assert!(line.contains("plain.service"), "{line}");
    assert_all_online(&c, &NODES);
}

// [itest->req~ctl.errors~1]
// [itest->req~api.node~1]
#[test]
fn ctl_errors_offline_node_is_one_line() {
    if !hirte_tests::require_root("ctl_errors_offline_node_is_one_line") {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    c.write_unit("agent2", "svc.service", SLEEP_UNIT).unwrap();
    c.kill_agent("agent2", Signal::SIGKILL);
    c.wait_node_state("agent2", "offline", SOON).unwrap();
    let cmds: [&[&str]; 8] = [
        &["list-units", "agent2"],
        &["start", "agent2", "svc.service"],
        &["stop", "agent2", "svc.service"],
        &["restart", "agent2", "svc.service"],
        &["status", "agent2", "svc.service"],
        &["enable", "agent2", "svc.service"],
        &["disable", "agent2", "svc.service"],
        &["daemon-reload", "agent2"],
    ];
    let mut problems = check_all(&c, &cmds, "offline");
    for args in cmds {
        let line = stderr(&c.hirtectl(args));
        if !line.contains("agent2") {
            problems.push(format!(
                "hirtectl {}: does not name the node: {line:?}",
                args.join(" ")
            ));
        }
    }
    assert_none(problems);
    // The node's systemd was not touched; the other nodes still work.
    assert_eq!(is_active(&c, "agent2", "svc.service"), "inactive");
    ok(&c.hirtectl(&["list-units", "agent1"]), "list-units agent1");
    ok(
        &c.hirtectl(&["list-nodes"]),
        "list-nodes with a node offline",
    );
}

// [itest->req~ctl.errors~1]
#[test]
fn ctl_errors_manager_not_running_or_no_bus_is_one_line() {
    if !hirte_tests::require_root("ctl_errors_manager_not_running_or_no_bus_is_one_line") {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let st = c
        .kill_manager(Signal::SIGTERM)
        .expect("manager was running");
    assert!(st.success(), "manager exit on SIGTERM: {st:?}");
    let cmds: [&[&str]; 9] = [
        &["list-nodes"],
        &["list-units"],
        &["list-units", "agent1"],
        &["start", "agent1", "svc.service"],
        &["stop", "agent1", "svc.service"],
        &["restart", "agent1", "svc.service"],
        &["status", "agent1", "svc.service"],
        &["enable", "agent1", "svc.service"],
        &["daemon-reload", "agent1"],
    ];
    assert_none(check_all(&c, &cmds, "not running"));

    // No system bus at all.
    let bin = c.bin_dir().join("hirtectl");
    let out = run_timeout(
        Command::new(&bin)
            .arg("list-nodes")
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                "unix:path=/nonexistent/hirte-no-bus",
            )
            .env_remove("RUST_BACKTRACE"),
        Duration::from_secs(30),
    );
    let line = one_line_failure(&out, "hirtectl without a bus");
    assert!(
        line.starts_with("hirtectl: ") && line.contains("bus"),
        "{line}"
    );
}

// [itest->req~ctl.exec~1]
// [itest->req~ctl.errors~1]
#[test]
fn ctl_exec_relays_output_and_exit_status_and_reports_failures_in_one_line() {
    if !hirte_tests::require_root(
        "ctl_exec_relays_output_and_exit_status_and_reports_failures_in_one_line",
    ) {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    // stdout and stderr unchanged, the command's exit status.
    let out = c.hirtectl(&[
        "exec",
        "agent1",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert_eq!(
        (stdout(&out).as_str(), stderr(&out).as_str()),
        ("out\n", "err\n")
    );
    // A shell when asked for, on that node; the guide's single-string form is split into
    // words.
    let out = c.hirtectl(&[
        "exec",
        "agent2",
        "sh",
        "-c",
        "ip -4 -o addr show dev eth0 | grep -c 10.200.0.3/24",
    ]);
    assert_eq!(ok(&out, "exec shell form").trim(), "1");
    let out = c.hirtectl(&["exec", "agent2", "ip -4 -o addr show dev eth0"]);
    assert!(ok(&out, "exec single string").contains("10.200.0.3/24"));
    let out = c.hirtectl(&["exec", "primary", "sh -c 'exit 0'"]);
    ok(&out, "exec exit 0");
    // Over its timeout: exit 124 with one line.
    let out = c.hirtectl(&["exec", "--timeout", "1", "agent1", "sleep", "30"]);
    assert_eq!(out.status.code(), Some(124), "{}", show(&out));
    one_line_failure(&out, "exec timeout");
    // Unknown and offline nodes.
    let out = c.hirtectl(&["exec", "nope", "true"]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(one_line_failure(&out, "exec on unknown node").contains("nope"));
    c.kill_agent("agent2", Signal::SIGKILL);
    c.wait_node_state("agent2", "offline", SOON).unwrap();
    let out = c.hirtectl(&["exec", "agent2", "true"]);
    let line = one_line_failure(&out, "exec on offline node");
    assert!(
        line.contains("agent2") && line.contains("offline"),
        "{line}"
    );
}
