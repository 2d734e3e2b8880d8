//! The manager's D-Bus policy checked from both sides on a running cluster; used by
//! install_policy.rs (the policy in the checkout) and install_destdir.rs (the installed copy).

use std::time::Duration;

use hirte_tests::Cluster;

use super::*;

const DEST: &str = "org.containers.hirte";
const MANAGER_PATH: &str = "/org/containers/hirte";
const MANAGER: &str = "org.containers.hirte.Manager";
const NODE: &str = "org.containers.hirte.Node";
const MONITOR: &str = "org.containers.hirte.Monitor";
const PROPS: &str = "org.freedesktop.DBus.Properties";

const UNIT: &str = "[Unit]\nDescription=policy test\n[Service]\nExecStart=/bin/sleep infinity\n";

/// Checks both sides of the manager policy on a running cluster with nodes `n1` and `n2`
/// whose bus loaded the policy under test, with `op` created before the cluster started.
pub fn check_manager_policy(c: &Cluster, op: &Operator) {
    let addr = c.bus_address();
    let bus_log = c.dir().join("bus.log");
    let node_path = format!("{MANAGER_PATH}/node/n2");
    let as_op = |p: &str, a: &[&str]| op.command(p, a);
    let op_call = |path: &str, iface: &str, member: &str, args: &[&str]| {
        busctl_call(Some(&as_op), &addr, DEST, path, iface, member, args)
    };
    let root_call = |path: &str, iface: &str, member: &str, args: &[&str]| {
        busctl_call(None, &addr, DEST, path, iface, member, args)
    };
    c.write_unit("n2", "policy-probe.service", UNIT).unwrap();

    // --- the operator: read-only calls work ---
    let out = assert_ok(
        &op_call(MANAGER_PATH, MANAGER, "ListNodes", &[]),
        "operator ListNodes",
    );
    assert!(out.contains("\"n2\"") && out.contains("online"), "{out}");
    assert_ok(
        &op_call(MANAGER_PATH, MANAGER, "GetNode", &["s", "n2"]),
        "operator GetNode",
    );
    assert_ok(
        &op_call(MANAGER_PATH, MANAGER, "ListUnits", &[]),
        "operator Manager.ListUnits",
    );
    assert_ok(
        &op_call(MANAGER_PATH, MANAGER, "ListUnitFiles", &[]),
        "operator Manager.ListUnitFiles",
    );
    let out = assert_ok(
        &op_call(MANAGER_PATH, PROPS, "Get", &["ss", MANAGER, "Status"]),
        "operator Properties.Get Status",
    );
    assert!(out.contains("\"up\""), "{out}");
    assert_ok(
        &op_call(MANAGER_PATH, PROPS, "GetAll", &["s", MANAGER]),
        "operator Properties.GetAll",
    );
    assert_ok(
        &op_call(
            MANAGER_PATH,
            "org.freedesktop.DBus.Introspectable",
            "Introspect",
            &[],
        ),
        "operator Introspect",
    );
    assert_ok(
        &op_call(&node_path, NODE, "ListUnits", &[]),
        "operator Node.ListUnits",
    );
    let out = assert_ok(
        &op_call(
            &node_path,
            NODE,
            "GetUnitProperty",
            &[
                "sss",
                "policy-probe.service",
                "org.freedesktop.systemd1.Unit",
                "ActiveState",
            ],
        ),
        "operator Node.GetUnitProperty",
    );
    assert!(out.contains("inactive"), "{out}");
    assert_ok(
        &op_call(
            &node_path,
            NODE,
            "GetUnitProperties",
            &[
                "ss",
                "policy-probe.service",
                "org.freedesktop.systemd1.Unit",
            ],
        ),
        "operator Node.GetUnitProperties",
    );
    assert_ok(
        &op_call(
            &node_path,
            NODE,
            "GetUnitFileState",
            &["s", "policy-probe.service"],
        ),
        "operator Node.GetUnitFileState",
    );
    assert_ok(
        &op_call(&node_path, NODE, "GetDefaultTarget", &[]),
        "operator Node.GetDefaultTarget",
    );
    assert_ok(
        &op_call(&node_path, PROPS, "Get", &["ss", NODE, "Status"]),
        "operator Node Status",
    );
    // A monitor lives as long as its owner's connection: one busctl process cannot keep it,
    // so creating it is the check (Subscribe from another connection is the manager's
    // NotAllowed, not the bus's refusal).
    let out = assert_ok(
        &op_call(MANAGER_PATH, MANAGER, "CreateMonitor", &[]),
        "operator CreateMonitor",
    );
    let monitor = out.split('"').nth(1).unwrap_or("").to_string();
    assert!(
        monitor.starts_with("/org/containers/hirte/monitor/"),
        "{out}"
    );
    let sub = op_call(&monitor, MONITOR, "Subscribe", &["ss", "*", "*"]);
    assert!(
        !stderr(&sub).contains("Access denied"),
        "Monitor.Subscribe must pass the bus policy: {}",
        show(&sub)
    );
    // hirtectl as the operator: reading works.
    let mut ctl = op.command(
        &c.bin_dir().join("hirtectl").display().to_string(),
        &["list-nodes"],
    );
    ctl.env("DBUS_SYSTEM_BUS_ADDRESS", &addr)
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
    let out = run(&mut ctl, Duration::from_secs(30));
    assert!(
        out.status.success() && stdout(&out).contains("n2"),
        "{}",
        show(&out)
    );

    // --- the operator: everything that changes something is refused by the bus ---
    let refused: [(&str, &str, &str, Vec<&str>); 16] = [
        (
            &node_path,
            NODE,
            "StartUnit",
            vec!["ss", "policy-probe.service", "replace"],
        ),
        (
            &node_path,
            NODE,
            "StopUnit",
            vec!["ss", "policy-probe.service", "replace"],
        ),
        (
            &node_path,
            NODE,
            "RestartUnit",
            vec!["ss", "policy-probe.service", "replace"],
        ),
        (
            &node_path,
            NODE,
            "ReloadUnit",
            vec!["ss", "policy-probe.service", "replace"],
        ),
        (
            &node_path,
            NODE,
            "KillUnit",
            vec!["ssi", "policy-probe.service", "all", "9"],
        ),
        (
            &node_path,
            NODE,
            "FreezeUnit",
            vec!["s", "policy-probe.service"],
        ),
        (
            &node_path,
            NODE,
            "EnableUnitFiles",
            vec!["asbb", "1", "policy-probe.service", "true", "false"],
        ),
        (
            &node_path,
            NODE,
            "Exec",
            vec!["ast", "1", "/bin/true", "1000000"],
        ),
        (&node_path, NODE, "Reload", vec![]),
        (&node_path, NODE, "ResetFailed", vec![]),
        (&node_path, NODE, "SetLogLevel", vec!["s", "debug"]),
        (
            &node_path,
            NODE,
            "SetDefaultTarget",
            vec!["sb", "default.target", "false"],
        ),
        (MANAGER_PATH, MANAGER, "SetLogLevel", vec!["s", "debug"]),
        (MANAGER_PATH, MANAGER, "EnableMetrics", vec![]),
        (
            MANAGER_PATH,
            PROPS,
            "Set",
            vec!["ssv", MANAGER, "LogLevel", "s", "debug"],
        ),
        (
            "/org/containers/hirte/job/1",
            "org.containers.hirte.Job",
            "Cancel",
            vec![],
        ),
    ];
    for (path, iface, member, args) in &refused {
        let o = op_call(path, iface, member, args);
        assert_refused_by_bus(
            &o,
            &format!("operator {iface}.{member}"),
            &bus_log,
            op.uid,
            member,
        );
    }
    // Nothing was started on the operator's behalf.
    let st = c.systemctl("n2", &["is-active", "policy-probe.service"]);
    assert_eq!(stdout(&st).trim(), "inactive", "{}", show(&st));
    let mut ctl = op.command(
        &c.bin_dir().join("hirtectl").display().to_string(),
        &["start", "n2", "policy-probe.service"],
    );
    ctl.env("DBUS_SYSTEM_BUS_ADDRESS", &addr)
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
    let out = run(&mut ctl, Duration::from_secs(30));
    assert!(
        !out.status.success() && stderr(&out).contains("permission denied"),
        "{}",
        show(&out)
    );

    // --- anybody else: not even reading ---
    let as_nobody_w = |p: &str, a: &[&str]| as_nobody(p, a);
    let o = busctl_call(
        Some(&as_nobody_w),
        &addr,
        DEST,
        MANAGER_PATH,
        MANAGER,
        "ListNodes",
        &[],
    );
    assert_refused_by_bus(&o, "nobody ListNodes", &bus_log, 65534, "ListNodes");
    let o = busctl_call(
        Some(&as_nobody_w),
        &addr,
        DEST,
        MANAGER_PATH,
        PROPS,
        "Get",
        &["ss", MANAGER, "Status"],
    );
    assert_refused_by_bus(&o, "nobody Properties.Get", &bus_log, 65534, "Get");

    // --- root: everything ---
    assert_ok(
        &root_call(MANAGER_PATH, MANAGER, "ListNodes", &[]),
        "root ListNodes",
    );
    let out = assert_ok(
        &root_call(
            &node_path,
            NODE,
            "StartUnit",
            &["ss", "policy-probe.service", "replace"],
        ),
        "root StartUnit",
    );
    assert!(out.contains("/org/containers/hirte/job/"), "{out}");
    wait_for(
        "policy-probe.service active",
        Duration::from_secs(10),
        || stdout(&c.systemctl("n2", &["is-active", "policy-probe.service"])).trim() == "active",
    );
    assert_ok(
        &root_call(
            &node_path,
            NODE,
            "StopUnit",
            &["ss", "policy-probe.service", "replace"],
        ),
        "root StopUnit",
    );
}
