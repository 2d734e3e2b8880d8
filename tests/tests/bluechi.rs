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
        assert!(
            text.lines().any(|l| l == check),
            "missing '{check}' in:\n{text}"
        );
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

/// The members of `iface` in one introspection document, one line each as in
/// tests/bluechi/members-1.2.txt.
fn members(xml: &str, iface: &str) -> Vec<String> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let rest = &tag[start..];
        Some(rest[..rest.find('"')?].to_string())
    };
    let mut out = Vec::new();
    let mut inside = false;
    let mut current: Option<(String, Vec<String>)> = None;
    let mut property: Option<(String, String)> = None;
    for raw in xml.split('<').skip(1) {
        let tag = raw.split('>').next().unwrap_or_default();
        let name = attr(tag, "name").unwrap_or_default();
        if tag.starts_with("interface ") {
            inside = name == iface;
        } else if tag.starts_with("/interface") {
            inside = false;
        } else if !inside {
        } else if tag.starts_with("property ") {
            let line = format!("{iface} property {name} {}", attr(tag, "type").unwrap());
            if tag.ends_with('/') {
                out.push(format!("{line} true"));
            } else {
                property = Some((line, "true".to_string()));
            }
        } else if tag.starts_with("annotation ") {
            // A property without the annotation emits changes (the D-Bus default).
            if let Some((_, emits)) = property.as_mut() {
                if name == "org.freedesktop.DBus.Property.EmitsChangedSignal" {
                    *emits = attr(tag, "value").unwrap();
                }
            }
        } else if tag.starts_with("/property") {
            if let Some((line, emits)) = property.take() {
                out.push(format!("{line} {emits}"));
            }
        } else if tag.starts_with("method ") || tag.starts_with("signal ") {
            let kind = tag.split(' ').next().unwrap().to_string();
            let line = format!("{iface} {kind} {name}");
            if tag.ends_with('/') {
                out.push(line);
            } else {
                current = Some((line, Vec::new()));
            }
        } else if tag.starts_with("arg ") {
            if let Some((line, args)) = current.as_mut() {
                let dir = match attr(tag, "direction") {
                    Some(d) => format!("{d}:"),
                    None if line.contains(" method ") => "in:".to_string(),
                    None => String::new(),
                };
                args.push(format!("{dir}{name}:{}", attr(tag, "type").unwrap()));
            }
        } else if tag.starts_with("/method") || tag.starts_with("/signal") {
            if let Some((line, args)) = current.take() {
                out.push(format!("{line} {}", args.join(" ")).trim_end().to_string());
            }
        }
    }
    out.sort();
    out
}

fn expected(iface: &str) -> Vec<String> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("bluechi/members-1.2.txt"),
    )
    .unwrap();
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.split(' ').next() == Some(iface))
        .map(str::to_string)
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no members of {iface} in the fixture");
    v
}

fn introspect(bus: &dbus::blocking::Connection, dest: &str, path: &str) -> String {
    let proxy = bus.with_proxy(dest, path, Duration::from_secs(10));
    let (xml,): (String,) = proxy
        .method_call("org.freedesktop.DBus.Introspectable", "Introspect", ())
        .unwrap_or_else(|e| panic!("Introspect {path}: {e}"));
    xml
}

/// Every org.eclipse.bluechi.* interface we serve has BlueChi 1.2's members, no more, no
/// fewer, with the same argument names and types.
// [itest->req~bluechi.introspection~1]
#[test]
fn bluechi_introspection_equals_bluechi_member_for_member() {
    if !hirte_tests::require_root("bluechi_introspection_equals_bluechi_member_for_member") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    write_config_unit(&c, NODE, "bc-slow.service", SLOW_UNIT, true);
    let bus = c.system_bus().unwrap();
    let dest = "org.eclipse.bluechi";
    let ctl = bus.with_proxy(dest, "/org/eclipse/bluechi", Duration::from_secs(10));
    let ctl_iface = "org.eclipse.bluechi.Controller";
    let (node,): (dbus::Path<'static>,) = ctl.method_call(ctl_iface, "GetNode", (NODE,)).unwrap();
    let (monitor,): (dbus::Path<'static>,) =
        ctl.method_call(ctl_iface, "CreateMonitor", ()).unwrap();
    let (job,): (dbus::Path<'static>,) = bus
        .with_proxy(dest, node.clone(), Duration::from_secs(10))
        .method_call(
            "org.eclipse.bluechi.Node",
            "StartUnit",
            ("bc-slow.service", "replace"),
        )
        .unwrap();
    let objects = [
        ("/org/eclipse/bluechi".to_string(), ctl_iface),
        (node.to_string(), "org.eclipse.bluechi.Node"),
        (job.to_string(), "org.eclipse.bluechi.Job"),
        (monitor.to_string(), "org.eclipse.bluechi.Monitor"),
        (
            "/org/eclipse/bluechi/metrics".to_string(),
            "org.eclipse.bluechi.Metrics",
        ),
    ];
    for (path, iface) in objects {
        let xml = introspect(&bus, dest, &path);
        assert_eq!(members(&xml, iface), expected(iface), "{path}:\n{xml}");
        assert!(
            !xml.contains("org.containers.hirte"),
            "{path} shows Hirte's names:\n{xml}"
        );
    }
    let node_bus = c.node_bus(NODE).unwrap();
    let xml = introspect(
        &node_bus,
        "org.eclipse.bluechi.Agent",
        "/org/eclipse/bluechi",
    );
    let iface = "org.eclipse.bluechi.Agent";
    assert_eq!(members(&xml, iface), expected(iface), "{xml}");
}

/// A BlueChi controller file works renamed, and the keys we do not use are named in a
/// warning (the manager then stops at the missing bus, which is beside the point here).
// [itest->req~bluechi.config~1]
#[test]
fn bluechi_config_keys_we_do_not_use_are_named_in_a_warning() {
    let dir = std::env::temp_dir().join(format!("hirte-bluechi-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("controller.conf");
    std::fs::write(
        &file,
        "[bluechi-controller]\nControllerPort=842\nAllowedNodeNames=a\nUseTCP=true\nTCPKeepAliveCount=6\n",
    )
    .unwrap();
    let out = run_timeout(
        Command::new(hirte_tests::binary("hirte").unwrap())
            .args(["-c"])
            .arg(&file)
            .env("HIRTE_CONFIG_DIR", &dir)
            .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus"),
        Duration::from_secs(20),
    );
    let err = stderr(&out);
    for key in ["UseTCP", "TCPKeepAliveCount"] {
        assert!(
            err.lines()
                .any(|l| l.contains("WARN") && l.contains(&format!("{key}="))),
            "no warning naming {key}:\n{err}"
        );
    }
    assert!(
        err.contains("port 842"),
        "ControllerPort= not applied:\n{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Both names at once by default, on one connection; `BlueChiBusName=no` leaves only ours.
// [itest->req~bluechi.bus-name~1]
// [itest->req~bluechi.switch~1]
#[test]
fn bluechi_name_beside_ours_and_switched_off() {
    if !hirte_tests::require_root("bluechi_name_beside_ours_and_switched_off") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES[..1])).unwrap();
    let bus = c.system_bus().unwrap();
    assert!(hirte_tests::name_has_owner(&bus, "org.containers.hirte").unwrap());
    assert!(hirte_tests::name_has_owner(&bus, "org.eclipse.bluechi").unwrap());
    drop(c);
    let mut spec = ClusterSpec::new(&NODES[..1]);
    spec.manager_conf = "BlueChiBusName=no\n".to_string();
    let c = Cluster::start(spec).unwrap();
    let bus = c.system_bus().unwrap();
    assert!(hirte_tests::name_has_owner(&bus, "org.containers.hirte").unwrap());
    assert!(!hirte_tests::name_has_owner(&bus, "org.eclipse.bluechi").unwrap());
}
