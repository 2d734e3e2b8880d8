//! BlueChi's own clients against Hirte-rs: the `bluechi` Python bindings from PyPI (installed
//! by ci/setup, with Debian's python3-gi and python3-dasbus) drive the manager through
//! `org.eclipse.bluechi` and read the agent's `org.eclipse.bluechi.Agent`, on real systemd.
//! The script is tests/bluechi/client.py; it prints "ok <check>" per check.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use common::*;
use hirte_tests::{Cluster, ClusterSpec, Signal};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const NODES: [&str; 2] = ["primary", "agent-1"];
const NODE: &str = "agent-1";
const UNIT: &str = "bc-sleep.service";
const ENABLE_UNIT: &str = "bc-enable.service";
/// Debian's interpreter: python3-gi is built for it, whatever else is first on PATH.
const PYTHON: &str = "/usr/bin/python3";
const CLIENT_TIMEOUT: &str = "150";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bluechi/client.py")
}

/// Whether the bindings are installed (ci/setup installs them); says so when not.
fn bindings_present() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import bluechi.api, dasbus, gi"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("the bluechi Python bindings are missing: run ci/setup");
    }
    ok
}

/// The client, killed after `CLIENT_TIMEOUT` whatever happens (`timeout` from coreutils).
fn client(bus: &str) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", CLIENT_TIMEOUT, PYTHON])
        .arg(script())
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
    cmd
}

// [itest->req~bluechi.controller~1]
// [itest->req~bluechi.one-state~1]
// [itest->req~bluechi.bus-name~1]
#[test]
fn bluechi_python_bindings_drive_the_cluster() {
    if !hirte_tests::require_root("bluechi_python_bindings_drive_the_cluster") {
        return;
    }
    assert!(bindings_present(), "bluechi Python bindings not installed");
    let mut c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    write_config_unit(&c, NODE, UNIT, SLEEP_UNIT, false);
    write_config_unit(&c, NODE, ENABLE_UNIT, SLEEP_UNIT, true);

    let mut child = client(&c.bus_address())
        .args(["controller", NODE, UNIT, ENABLE_UNIT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line == "ready-offline" {
            break;
        }
        seen.push(line);
    }
    // The node goes away while the client watches.
    c.kill_agent(NODE, Signal::SIGKILL);
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    seen.extend(lines.map_while(Result::ok));
    let out = run_timeout_child(child, Duration::from_secs(120));
    let text = seen.join("\n");
    eprintln!("{text}");
    assert!(out, "the BlueChi client failed:\n{text}\n{}", c.log_tails());
    for check in [
        "ok list_nodes agent-1,primary",
        "ok controller properties",
        "ok list_units",
        "ok list_unit_files",
        "ok node properties",
        "ok node list_units",
        "ok start_unit JobRemoved done",
        "ok monitor UnitStateChanged active",
        "ok metrics StartUnitJobMetrics",
        "ok unit properties",
        "ok stop_unit JobRemoved done",
        "ok enable/disable unit files",
        "ok unknown node error",
        "ok node offline",
        "ok monitor offline event",
        "ok monitor close",
    ] {
        assert!(text.lines().any(|l| l == check), "missing '{check}' in:\n{text}");
    }
}

/// Waits for the client; true when it exited successfully (stderr is echoed for the log).
fn run_timeout_child(mut child: std::process::Child, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            eprintln!("{err}");
            return st.success();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// [itest->req~bluechi.agent~1]
#[test]
fn bluechi_python_bindings_read_the_agent() {
    if !hirte_tests::require_root("bluechi_python_bindings_read_the_agent") {
        return;
    }
    assert!(bindings_present(), "bluechi Python bindings not installed");
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let bus = c.node_bus_address(NODE).unwrap();
    let out = run_timeout(client(&bus).arg("agent"), Duration::from_secs(60));
    let text = stdout(&out);
    assert!(
        out.status.success() && text.contains("ok agent properties online"),
        "{}",
        show(&out)
    );
}
