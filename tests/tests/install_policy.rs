//! The shipped D-Bus policies on a real system-type bus (the harness's private dbus-daemon,
//! configured like Debian's system bus): root may do everything, a member of
//! `hirte-operators` only the read-only part of the manager API, anybody else nothing; the
//! agent's local API is root's, its properties everybody's.

// Test code: a failed step must fail the test, with a message saying which.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod install_support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use dbus::arg::Variant;
use dbus::channel::{MatchingReceiver, Sender};
use dbus::message::MatchRule;
use hirte_tests::{Cluster, ClusterSpec};
use install_support::policy::check_manager_policy;
use install_support::*;

const PROPS: &str = "org.freedesktop.DBus.Properties";
const AGENT_NAME: &str = "org.containers.hirte.Agent";

/// Serves `org.containers.hirte.Agent` as root on the bus at `address` (a stand-in for the
/// agent's local API: every call answered, `Get` with "online") until `stop` is set.
fn serve_agent_name(
    address: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<(), String>> {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let conn = hirte_tests::connect_bus(&address).map_err(|e| e.to_string())?;
        let reply = conn
            .request_name(AGENT_NAME, false, false, true)
            .map_err(|e| format!("RequestName: {e}"));
        let _ = tx.send(reply.as_ref().map(|_| ()).map_err(Clone::clone));
        reply?;
        conn.start_receive(
            MatchRule::new_method_call(),
            Box::new(|msg, conn| {
                let r = if msg.member().as_deref() == Some("Get") {
                    msg.method_return().append1(Variant("online"))
                } else {
                    msg.method_return()
                };
                let _ = conn.send(r);
                true
            }),
        );
        while !stop.load(Ordering::Relaxed) {
            conn.process(Duration::from_millis(50))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("agent stand-in started")
        .expect("root may own org.containers.hirte.Agent");
    h
}

/// Installs the agent policy next to the manager's on the cluster's bus and checks it.
fn check_agent_policy(c: &Cluster, op: &Operator) {
    let addr = c.bus_address();
    let dest = c.dir().join("system.d/org.containers.hirte.Agent.conf");
    std::fs::copy(repo_file(AGENT_POLICY), &dest).unwrap();
    let o = busctl_call(
        None,
        &addr,
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "ReloadConfig",
        &[],
    );
    assert_ok(&o, "ReloadConfig");

    // Nobody but root may own the name.
    let as_nobody_w = |p: &str, a: &[&str]| as_nobody(p, a);
    let o = busctl_call(
        Some(&as_nobody_w),
        &addr,
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "RequestName",
        &["su", AGENT_NAME, "4"],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("Access denied"),
        "nobody must not own {AGENT_NAME}: {}",
        show(&o)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let server = serve_agent_name(addr.clone(), stop.clone());
    let as_op = |p: &str, a: &[&str]| op.command(p, a);
    for (who, uid, wrap) in [
        ("nobody", 65534, &as_nobody_w as &Wrap),
        ("operator", op.uid, &as_op),
    ] {
        let out = assert_ok(
            &busctl_call(
                Some(wrap),
                &addr,
                AGENT_NAME,
                "/org/containers/hirte",
                PROPS,
                "Get",
                &["ss", AGENT_NAME, "Status"],
            ),
            &format!("{who} reads the agent's Status"),
        );
        assert!(out.contains("online"), "{out}");
        let o = busctl_call(
            Some(wrap),
            &addr,
            AGENT_NAME,
            "/org/containers/hirte",
            AGENT_NAME,
            "CreateProxy",
            &["sss", "x.service", "n1", "y.service"],
        );
        assert_refused_by_bus(
            &o,
            &format!("{who} Agent.CreateProxy"),
            &c.dir().join("bus.log"),
            uid,
            "CreateProxy",
        );
    }
    assert_ok(
        &busctl_call(
            None,
            &addr,
            AGENT_NAME,
            "/org/containers/hirte",
            AGENT_NAME,
            "CreateProxy",
            &["sss", "x.service", "n1", "y.service"],
        ),
        "root Agent.CreateProxy",
    );
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap().unwrap();
}

/// BlueChi's name (manager/dbus/org.eclipse.bluechi.conf) has the same rules: the operator
/// reads and is refused every change, through either name's interfaces; root acts.
fn check_bluechi_policy(c: &Cluster, op: &Operator) {
    const DEST: &str = "org.eclipse.bluechi";
    const ROOT: &str = "/org/eclipse/bluechi";
    let installed = std::fs::read(c.dir().join("system.d/org.eclipse.bluechi.conf")).unwrap();
    assert_eq!(
        installed,
        std::fs::read(repo_file("manager/dbus/org.eclipse.bluechi.conf")).unwrap()
    );
    let addr = c.bus_address();
    let bus_log = c.dir().join("bus.log");
    let node = "/org/eclipse/bluechi/node/n2";
    let as_op = |p: &str, a: &[&str]| op.command(p, a);
    let op_call = |path: &str, iface: &str, member: &str, args: &[&str]| {
        busctl_call(Some(&as_op), &addr, DEST, path, iface, member, args)
    };
    let out = assert_ok(
        &op_call(ROOT, "org.eclipse.bluechi.Controller", "ListNodes", &[]),
        "operator BlueChi ListNodes",
    );
    assert!(out.contains("/org/eclipse/bluechi/node/n2"), "{out}");
    let out = assert_ok(
        &op_call(
            node,
            PROPS,
            "Get",
            &["ss", "org.eclipse.bluechi.Node", "Status"],
        ),
        "operator BlueChi Node Status",
    );
    assert!(out.contains("online"), "{out}");
    let start = ["ss", "policy-probe.service", "replace"];
    for (path, iface) in [
        (node, "org.eclipse.bluechi.Node"),
        // Our interface through BlueChi's name: the same refusal.
        ("/org/containers/hirte/node/n2", "org.containers.hirte.Node"),
    ] {
        let o = op_call(path, iface, "StartUnit", &start);
        assert_refused_by_bus(
            &o,
            &format!("operator {iface}.StartUnit"),
            &bus_log,
            op.uid,
            "StartUnit",
        );
    }
    assert_ok(
        &busctl_call(
            None,
            &addr,
            DEST,
            node,
            "org.eclipse.bluechi.Node",
            "StartUnit",
            &start,
        ),
        "root BlueChi StartUnit",
    );
}

// [itest->req~install.policy-operators~1]
// [itest->req~api.policy~1]
// [itest->req~bluechi.bus-name~1]
#[test]
fn operators_read_and_only_root_acts_on_a_system_bus() {
    if !hirte_tests::require_root("operators_read_and_only_root_acts_on_a_system_bus") {
        return;
    }
    let policy = repo_file(MANAGER_POLICY);
    assert!(Path::new(&policy).is_file());
    // The group must exist before the bus reads the policy: dbus-daemon resolves group
    // names when it loads its configuration.
    let op = Operator::create();
    // Every test binary is its own process under nextest; this one only ever uses the
    // shipped policy, so setting the variable cannot affect another test.
    std::env::set_var("HIRTE_DBUS_POLICY", &policy);
    let c = Cluster::start(ClusterSpec::new(&["n1", "n2"]))
        .unwrap_or_else(|e| panic!("cluster start failed: {e}"));
    let installed = std::fs::read(c.dir().join("system.d/org.containers.hirte.conf")).unwrap();
    assert_eq!(installed, std::fs::read(&policy).unwrap());
    check_manager_policy(&c, &op);
    check_bluechi_policy(&c, &op);
    check_agent_policy(&c, &op);
    drop(c);
    drop(op);
}
