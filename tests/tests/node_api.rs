//! The public D-Bus API of the manager, called directly on its bus (no hirtectl): the Manager
//! object, every Node method the manager relays today, Job objects and their signals.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use dbus::arg::{prop_cast, PropMap, RefArg, Variant};
use dbus::blocking::Connection;
use dbus::Path;
use hirte_tests::{Cluster, ClusterSpec, Signal};

/// Names with characters that must be escaped in object paths.
const NODES: [&str; 3] = ["primary", "agent-1", "agent.2"];
const A1: &str = "agent-1";
const A2: &str = "agent.2";

type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    Path<'static>,
    u32,
    String,
    Path<'static>,
);
type Changes = Vec<(String, String, String)>;
/// A call's outcome with its D-Bus error as (name, message).
type CallResult = Result<(), (String, String)>;

fn now_us() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

fn node_call<A: dbus::arg::AppendAll, R: dbus::arg::ReadAll + 'static>(
    bus: &Connection,
    node: &str,
    member: &str,
    args: A,
) -> Result<R, (String, String)> {
    call(bus, &node_path(node), NODE_IFACE, member, args)
}

/// Starts a job with `member` and returns its object path.
#[track_caller]
fn job(bus: &Connection, node: &str, member: &str, unit: &str) -> String {
    let (p,): (Path<'static>,) = node_call(bus, node, member, (unit, "replace"))
        .unwrap_or_else(|e| panic!("{member} {unit} on {node}: {e:?}"));
    let p = p.to_string();
    assert!(
        p.starts_with("/org/containers/hirte/job/"),
        "{member} returned {p}"
    );
    p
}

/// Runs a job to its end; checks JobNew and JobRemoved; returns the result.
#[track_caller]
fn run_job(sig: &Signals, bus: &Connection, node: &str, member: &str, unit: &str) -> String {
    let path = job(bus, node, member, unit);
    let id: u32 = path.rsplit('/').next().unwrap().parse().unwrap();
    let (rid, rnode, runit, result) = sig
        .job_removed(&path, SOON)
        .unwrap_or_else(|| panic!("no JobRemoved for {member} {unit} ({path})"));
    assert_eq!((rid, rnode.as_str(), runit.as_str()), (id, node, unit));
    result
}

fn status_changed(m: &dbus::Message, path: &str) -> Option<String> {
    if m.member().as_deref() != Some("PropertiesChanged") || m.path().as_deref() != Some(path) {
        return None;
    }
    let (_iface, changed, _inv): (String, PropMap, Vec<String>) = m.read3().ok()?;
    prop_cast::<String>(&changed, "Status").cloned()
}

// [itest->req~api.manager~1]
// [itest->req~api.node~1]
// [itest->req~manager.status~1]
// [itest->req~manager.list-units~1]
// [itest->req~common.path-escape~1]
// [itest->req~api.errors~1]
#[test]
fn node_api_manager_members_node_properties_and_status_transitions() {
    if !hirte_tests::require_root("node_api_manager_members_node_properties_and_status_transitions")
    {
        return;
    }
    let t0 = now_us();
    let mut c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let bus = c.system_bus().unwrap();

    // ListNodes: name, escaped object path, state, peer address.
    let (nodes,): (Vec<(String, Path<'static>, String, String)>,) =
        call(&bus, MANAGER_PATH, MANAGER_IFACE, "ListNodes", ()).unwrap();
    let mut got: Vec<(String, String, String, String)> = nodes
        .into_iter()
        .map(|(n, p, s, ip)| (n, p.to_string(), s, ip))
        .collect();
    got.sort();
    let want = |n: &str, p: &str, ip: &str| (n.into(), p.into(), "online".into(), ip.into());
    assert_eq!(
        got,
        vec![
            want(A1, "/org/containers/hirte/node/agent_2d1", "10.200.0.2"),
            want(A2, "/org/containers/hirte/node/agent_2e2", "10.200.0.3"),
            want("primary", "/org/containers/hirte/node/primary", "127.0.0.1"),
        ]
    );

    // GetNode: the same paths; an unknown name is NodeNotFound.
    for n in NODES {
        let (p,): (Path<'static>,) =
            call(&bus, MANAGER_PATH, MANAGER_IFACE, "GetNode", (n,)).unwrap();
        assert_eq!(p.to_string(), node_path(n));
    }
    let err = call::<_, (Path<'static>,)>(&bus, MANAGER_PATH, MANAGER_IFACE, "GetNode", ("nope",))
        .unwrap_err();
    assert_eq!(err.0, "org.containers.hirte.Error.NodeNotFound", "{err:?}");
    assert!(err.1.contains("nope"), "{err:?}");

    // Manager.ListUnits: every online node's units, keyed by node.
    let (all,): (HashMap<String, Vec<UnitRow>>,) =
        call(&bus, MANAGER_PATH, MANAGER_IFACE, "ListUnits", ()).unwrap();
    let mut keys: Vec<&String> = all.keys().collect();
    keys.sort();
    assert_eq!(keys, [A1, A2, "primary"]);
    for (n, units) in &all {
        assert!(
            units
                .iter()
                .any(|u| u.0 == "default.target" && u.3 == "active"),
            "{n}: no active default.target"
        );
    }

    // Manager properties.
    let status: String = prop(&bus, MANAGER_PATH, MANAGER_IFACE, "Status").unwrap();
    assert_eq!(status, "up");
    let level: String = prop(&bus, MANAGER_PATH, MANAGER_IFACE, "LogLevel").unwrap();
    assert_eq!(level, "debug");
    let target: String = prop(&bus, MANAGER_PATH, MANAGER_IFACE, "LogTarget").unwrap();
    assert_eq!(target, "stderr");

    // Node properties.
    for (n, ip) in [
        ("primary", "127.0.0.1"),
        (A1, "10.200.0.2"),
        (A2, "10.200.0.3"),
    ] {
        let p = node_path(n);
        let name: String = prop(&bus, &p, NODE_IFACE, "Name").unwrap();
        let st: String = prop(&bus, &p, NODE_IFACE, "Status").unwrap();
        let peer: String = prop(&bus, &p, NODE_IFACE, "PeerIp").unwrap();
        let seen: u64 = prop(&bus, &p, NODE_IFACE, "LastSeenTimestamp").unwrap();
        let mono: u64 = prop(&bus, &p, NODE_IFACE, "LastSeenTimestampMonotonic").unwrap();
        assert_eq!(
            (name.as_str(), st.as_str(), peer.as_str()),
            (n, "online", ip)
        );
        // A wall-clock time in microseconds, from this test's lifetime.
        assert!(
            seen >= t0.saturating_sub(60_000_000) && seen <= now_us() + 60_000_000,
            "{seen} vs {t0}"
        );
        assert!(mono > 0);
    }
    // LastSeenTimestamp moves with the heartbeats.
    let p1 = node_path(A1);
    let first: u64 = prop(&bus, &p1, NODE_IFACE, "LastSeenTimestamp").unwrap();
    c.wait_for("LastSeenTimestamp to advance", SOON, || {
        prop::<u64>(&bus, &p1, NODE_IFACE, "LastSeenTimestamp").unwrap() > first
    })
    .unwrap();

    // Status transitions, each announced with PropertiesChanged; node state changes too.
    let sig = Signals::manager(&c);
    c.kill_agent(A2, Signal::SIGKILL);
    let m = sig
        .wait(SOON, |m| status_changed(m, MANAGER_PATH).is_some())
        .expect("manager Status PropertiesChanged");
    assert_eq!(
        status_changed(&m, MANAGER_PATH).as_deref(),
        Some("degraded")
    );
    let st: String = prop(&bus, MANAGER_PATH, MANAGER_IFACE, "Status").unwrap();
    assert_eq!(st, "degraded");
    let st: String = prop(&bus, &node_path(A2), NODE_IFACE, "Status").unwrap();
    assert_eq!(st, "offline");
    let name: String = prop(&bus, &node_path(A2), NODE_IFACE, "Name").unwrap();
    assert_eq!(name, A2);
    let (nodes,): (Vec<(String, Path<'static>, String, String)>,) =
        call(&bus, MANAGER_PATH, MANAGER_IFACE, "ListNodes", ()).unwrap();
    assert!(
        nodes.iter().any(|n| n.0 == A2 && n.2 == "offline"),
        "{nodes:?}"
    );
    // Manager.ListUnits goes on with the online nodes.
    let (all,): (HashMap<String, Vec<UnitRow>>,) =
        call(&bus, MANAGER_PATH, MANAGER_IFACE, "ListUnits", ()).unwrap();
    let mut keys: Vec<&String> = all.keys().collect();
    keys.sort();
    assert_eq!(keys, [A1, "primary"]);

    c.kill_agent(A1, Signal::SIGKILL);
    c.kill_agent("primary", Signal::SIGKILL);
    c.wait_for("manager Status down", SOON, || {
        prop::<String>(&bus, MANAGER_PATH, MANAGER_IFACE, "Status").unwrap() == "down"
    })
    .unwrap();
    let m = sig
        .wait(SOON, |m| {
            status_changed(m, MANAGER_PATH).as_deref() == Some("down")
        })
        .expect("PropertiesChanged Status=down");
    drop(m);

    for n in NODES {
        c.start_agent(n).unwrap();
    }
    c.wait_all_online(SOON).unwrap();
    sig.wait(SOON, |m| {
        status_changed(m, MANAGER_PATH).as_deref() == Some("up")
    })
    .expect("PropertiesChanged Status=up");
    let st: String = prop(&bus, MANAGER_PATH, MANAGER_IFACE, "Status").unwrap();
    assert_eq!(st, "up");
}

// [itest->req~api.node~1]
// [itest->req~manager.jobs~1]
// [itest->req~agent.job-done~1]
// [itest->req~manager.node-relay~1]
// [itest->req~agent.relay~1]
#[test]
fn node_api_unit_jobs_report_systemd_results_in_signals() {
    if !hirte_tests::require_root("node_api_unit_jobs_report_systemd_results_in_signals") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let bus = c.system_bus().unwrap();
    c.write_unit(A1, "svc.service", SLEEP_UNIT).unwrap();
    c.write_unit(A1, "broken.service", FAILING_UNIT).unwrap();
    let sig = Signals::manager(&c);

    // StartUnit: JobNew carries the returned path, JobRemoved the result.
    let path = job(&bus, A1, "StartUnit", "svc.service");
    let id: u32 = path.rsplit('/').next().unwrap().parse().unwrap();
    let new = sig
        .wait(SOON, |m| m.member().as_deref() == Some("JobNew"))
        .expect("JobNew");
    let (nid, npath): (u32, Path<'static>) = new.read2().unwrap();
    assert_eq!((nid, npath.to_string()), (id, path.clone()));
    let (_, node, unit, result) = sig.job_removed(&path, SOON).expect("JobRemoved");
    assert_eq!(
        (node.as_str(), unit.as_str(), result.as_str()),
        (A1, "svc.service", "done")
    );
    assert_eq!(is_active(&c, A1, "svc.service"), "active");
    assert_eq!(is_active(&c, A2, "svc.service"), "inactive");

    // ReloadUnit, RestartUnit (a new main process), StopUnit.
    assert_eq!(run_job(&sig, &bus, A1, "ReloadUnit", "svc.service"), "done");
    let pid = unit_prop(&c, A1, "svc.service", "MainPID");
    assert_eq!(
        run_job(&sig, &bus, A1, "RestartUnit", "svc.service"),
        "done"
    );
    let pid2 = unit_prop(&c, A1, "svc.service", "MainPID");
    assert!(pid != pid2 && pid2 != "0", "{pid} -> {pid2}");
    assert_eq!(is_active(&c, A1, "svc.service"), "active");
    assert_eq!(run_job(&sig, &bus, A1, "StopUnit", "svc.service"), "done");
    assert_eq!(is_active(&c, A1, "svc.service"), "inactive");

    // A unit that fails: result "failed", as systemd says.
    assert_eq!(
        run_job(&sig, &bus, A1, "StartUnit", "broken.service"),
        "failed"
    );
    assert_eq!(is_active(&c, A1, "broken.service"), "failed");
    // Reload of a unit that cannot reload: systemd's error is relayed, no job.
    c.write_unit(
        A1,
        "noreload.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    )
    .unwrap();
    assert_eq!(
        run_job(&sig, &bus, A1, "StartUnit", "noreload.service"),
        "done"
    );
    let err =
        node_call::<_, (Path<'static>,)>(&bus, A1, "ReloadUnit", ("noreload.service", "replace"))
            .unwrap_err();
    assert_eq!(
        err.0, "org.freedesktop.systemd1.JobTypeNotApplicable",
        "{err:?}"
    );
    // No such unit: systemd's error name and text come through unchanged.
    let err =
        node_call::<_, (Path<'static>,)>(&bus, A1, "StartUnit", ("missing.service", "replace"))
            .unwrap_err();
    assert_eq!(err.0, "org.freedesktop.systemd1.NoSuchUnit", "{err:?}");
    assert!(err.1.contains("missing.service"), "{err:?}");
    // Jobs on the manager's own node work the same.
    c.write_unit("primary", "local.service", SLEEP_UNIT)
        .unwrap();
    assert_eq!(
        run_job(&sig, &bus, "primary", "StartUnit", "local.service"),
        "done"
    );
    assert_eq!(is_active(&c, "primary", "local.service"), "active");
    let log = c.manager_log();
    assert!(
        log.contains("of 'broken.service' on node 'agent-1' finished: failed"),
        "{log}"
    );
}

// [itest->req~api.node~1]
// [itest->req~manager.node-relay~1]
// [itest->req~agent.relay~1]
#[test]
fn node_api_units_properties_unit_files_and_daemon_reload() {
    if !hirte_tests::require_root("node_api_units_properties_unit_files_and_daemon_reload") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let bus = c.system_bus().unwrap();
    write_config_unit(&c, A1, "svc.service", SLEEP_UNIT, true);
    ok(&c.systemctl(A1, &["start", "svc.service"]), "start svc");

    // ListUnits: systemd's rows of that node.
    let (units,): (Vec<UnitRow>,) = node_call(&bus, A1, "ListUnits", ()).unwrap();
    let row = units
        .iter()
        .find(|u| u.0 == "svc.service")
        .expect("svc.service listed");
    assert_eq!(
        (row.2.as_str(), row.3.as_str(), row.4.as_str()),
        ("loaded", "active", "running")
    );
    let (other,): (Vec<UnitRow>,) = node_call(&bus, A2, "ListUnits", ()).unwrap();
    assert!(other.iter().all(|u| u.0 != "svc.service"));

    // GetUnitProperties / GetUnitProperty.
    let (props,): (PropMap,) =
        node_call(&bus, A1, "GetUnitProperties", ("svc.service", UNIT_IFACE)).unwrap();
    assert_eq!(
        prop_cast::<String>(&props, "Id").map(String::as_str),
        Some("svc.service")
    );
    assert_eq!(
        prop_cast::<String>(&props, "ActiveState").map(String::as_str),
        Some("active")
    );
    assert_eq!(
        prop_cast::<String>(&props, "Description").map(String::as_str),
        Some("Sleeps forever")
    );
    let (sprops,): (PropMap,) = node_call(
        &bus,
        A1,
        "GetUnitProperties",
        ("svc.service", "org.freedesktop.systemd1.Service"),
    )
    .unwrap();
    let main_pid = sprops.get("MainPID").and_then(|v| v.as_u64()).unwrap();
    assert_eq!(
        main_pid.to_string(),
        unit_prop(&c, A1, "svc.service", "MainPID")
    );
    let (v,): (Variant<String>,) = node_call(
        &bus,
        A1,
        "GetUnitProperty",
        ("svc.service", UNIT_IFACE, "SubState"),
    )
    .unwrap();
    assert_eq!(v.0, "running");
    let err = node_call::<_, (Variant<Box<dyn RefArg>>,)>(
        &bus,
        A1,
        "GetUnitProperty",
        ("svc.service", UNIT_IFACE, "NoSuchProperty"),
    )
    .unwrap_err();
    assert!(
        err.0.contains("UnknownProperty") || err.0.contains("InvalidArgs"),
        "{err:?}"
    );

    // EnableUnitFiles / DisableUnitFiles, persistent and runtime.
    let (install_info, changes): (bool, Changes) = node_call(
        &bus,
        A1,
        "EnableUnitFiles",
        (vec!["svc.service"], false, false),
    )
    .unwrap();
    assert!(install_info);
    assert!(
        changes
            .iter()
            .any(|(k, f, _)| k == "symlink" && f.ends_with("default.target.wants/svc.service")),
        "{changes:?}"
    );
    assert_eq!(is_enabled(&c, A1, "svc.service"), "enabled");
    let (changes,): (Changes,) =
        node_call(&bus, A1, "DisableUnitFiles", (vec!["svc.service"], false)).unwrap();
    assert!(changes.iter().any(|(k, _, _)| k == "unlink"), "{changes:?}");
    assert_eq!(is_enabled(&c, A1, "svc.service"), "disabled");
    let (_, changes): (bool, Changes) = node_call(
        &bus,
        A1,
        "EnableUnitFiles",
        (vec!["svc.service"], true, false),
    )
    .unwrap();
    assert!(!changes.is_empty());
    assert_eq!(is_enabled(&c, A1, "svc.service"), "enabled-runtime");
    let _: (Changes,) =
        node_call(&bus, A1, "DisableUnitFiles", (vec!["svc.service"], true)).unwrap();
    assert_eq!(is_enabled(&c, A1, "svc.service"), "disabled");
    let err = node_call::<_, (bool, Changes)>(
        &bus,
        A1,
        "EnableUnitFiles",
        (vec!["missing.service"], false, false),
    )
    .unwrap_err();
    assert!(
        !err.0.is_empty() && err.1.contains("missing.service"),
        "{err:?}"
    );

    // Reload (daemon-reload): a changed unit file takes effect only after it.
    write_config_unit(
        &c,
        A1,
        "svc.service",
        &SLEEP_UNIT.replace("Sleeps forever", "Sleeps, edited"),
        false,
    );
    let (v,): (Variant<String>,) = node_call(
        &bus,
        A1,
        "GetUnitProperty",
        ("svc.service", UNIT_IFACE, "Description"),
    )
    .unwrap();
    assert_eq!(v.0, "Sleeps forever");
    let (): () = node_call(&bus, A1, "Reload", ()).unwrap();
    let (v,): (Variant<String>,) = node_call(
        &bus,
        A1,
        "GetUnitProperty",
        ("svc.service", UNIT_IFACE, "Description"),
    )
    .unwrap();
    assert_eq!(v.0, "Sleeps, edited");
    assert_eq!(
        unit_prop(&c, A1, "svc.service", "Description"),
        "Sleeps, edited"
    );
}

// [itest->req~api.job~1]
// [itest->req~manager.jobs~1]
#[test]
fn node_api_job_object_properties_and_cancel() {
    if !hirte_tests::require_root("node_api_job_object_properties_and_cancel") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let bus = c.system_bus().unwrap();
    c.write_unit(A1, "slow.service", SLOW_UNIT).unwrap();
    let sig = Signals::manager(&c);

    let path = job(&bus, A1, "StartUnit", "slow.service");
    let id: u32 = path.rsplit('/').next().unwrap().parse().unwrap();
    let jid: u32 = prop(&bus, &path, JOB_IFACE, "Id").unwrap();
    let node: String = prop(&bus, &path, JOB_IFACE, "Node").unwrap();
    let unit: String = prop(&bus, &path, JOB_IFACE, "Unit").unwrap();
    let jtype: String = prop(&bus, &path, JOB_IFACE, "JobType").unwrap();
    let state: String = prop(&bus, &path, JOB_IFACE, "State").unwrap();
    assert_eq!(
        (jid, node.as_str(), unit.as_str(), jtype.as_str()),
        (id, A1, "slow.service", "start")
    );
    assert!(state == "waiting" || state == "running", "{state}");
    c.wait_for("slow.service activating on agent-1", SOON, || {
        is_active(&c, A1, "slow.service") == "activating"
    })
    .unwrap();

    // Cancel: systemd cancels its job, JobRemoved says so, the object is gone.
    let (): () = call(&bus, &path, JOB_IFACE, "Cancel", ()).unwrap();
    let (_, _, _, result) = sig
        .job_removed(&path, SOON)
        .expect("JobRemoved after Cancel");
    assert_eq!(result, "canceled");
    assert!(
        prop::<u32>(&bus, &path, JOB_IFACE, "Id").is_err(),
        "job object still there"
    );

    // A restart job has its own type, and can be cancelled too.
    let p2 = job(&bus, A1, "RestartUnit", "slow.service");
    let jtype: String = prop(&bus, &p2, JOB_IFACE, "JobType").unwrap();
    assert_eq!(jtype, "restart");
    let (): () = call(&bus, &p2, JOB_IFACE, "Cancel", ()).unwrap();
    let (_, _, _, result) = sig.job_removed(&p2, SOON).expect("JobRemoved of restart");
    assert_eq!(result, "canceled");
    // Cancelling an ended job: its object is gone.
    let err = call::<_, ()>(&bus, &p2, JOB_IFACE, "Cancel", ()).unwrap_err();
    assert_eq!(
        err,
        (
            "org.freedesktop.DBus.Error.UnknownMethod".to_string(),
            "Path, Interface, or Method does not exist".to_string()
        )
    );
}

// [itest->req~api.job~1]
#[test]
fn node_api_job_state_follows_systemd_to_running() {
    if !hirte_tests::require_root("node_api_job_state_follows_systemd_to_running") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let bus = c.system_bus().unwrap();
    c.write_unit(A1, "slow.service", SLOW_UNIT).unwrap();
    let sig = Signals::new(
        &c,
        &["type='signal',sender='org.containers.hirte',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'"],
    );
    let path = job(&bus, A1, "StartUnit", "slow.service");
    // systemd runs the start job of a oneshot unit while its ExecStart runs.
    c.wait_for("systemd to run the start job", SOON, || {
        stdout(&c.systemctl(A1, &["list-jobs", "--no-legend"])).contains("running")
    })
    .unwrap();
    let changed = sig.wait(SOON, |m| {
        m.path().as_deref() == Some(path.as_str())
            && m.read2::<&str, PropMap>().is_ok_and(|(_, p)| {
                prop_cast::<String>(&p, "State").is_some_and(|s| s == "running")
            })
    });
    let state: String = prop(&bus, &path, JOB_IFACE, "State").unwrap();
    assert_eq!(state, "running", "Job.State while systemd runs the job");
    assert!(
        changed.is_some(),
        "no PropertiesChanged(State=running) on {path}"
    );
}

// [itest->req~api.node~1]
// [itest->req~manager.offline-cleanup~1]
// [itest->req~api.errors~1]
// [itest->req~manager.register~1]
#[test]
fn node_api_offline_node_fails_calls_with_offline_and_cancels_its_jobs() {
    if !hirte_tests::require_root(
        "node_api_offline_node_fails_calls_with_offline_and_cancels_its_jobs",
    ) {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let bus = c.system_bus().unwrap();
    c.write_unit(A2, "slow.service", SLOW_UNIT).unwrap();
    c.write_unit(A2, "svc.service", SLEEP_UNIT).unwrap();
    let sig = Signals::manager(&c);

    // A job in flight when the node drops ends "cancelled", not silently.
    let path = job(&bus, A2, "StartUnit", "slow.service");
    c.kill_agent(A2, Signal::SIGKILL);
    let (_, node, unit, result) = sig
        .job_removed(&path, SOON)
        .expect("JobRemoved on disconnect");
    assert_eq!(
        (node.as_str(), unit.as_str(), result.as_str()),
        (A2, "slow.service", "cancelled")
    );
    let changed = sig.wait(SOON, |m| {
        m.member().as_deref() == Some("NodeConnectionStateChanged")
            && m.read2::<&str, &str>()
                .is_ok_and(|(n, s)| n == A2 && s == "offline")
    });
    assert!(
        changed.is_some(),
        "no NodeConnectionStateChanged(agent.2, offline)"
    );

    let offline = "org.containers.hirte.Error.Offline";
    let calls: Vec<(&str, CallResult)> = vec![
        (
            "StartUnit",
            node_call::<_, (Path<'static>,)>(&bus, A2, "StartUnit", ("svc.service", "replace"))
                .map(drop),
        ),
        (
            "StopUnit",
            node_call::<_, (Path<'static>,)>(&bus, A2, "StopUnit", ("svc.service", "replace"))
                .map(drop),
        ),
        (
            "RestartUnit",
            node_call::<_, (Path<'static>,)>(&bus, A2, "RestartUnit", ("svc.service", "replace"))
                .map(drop),
        ),
        (
            "ReloadUnit",
            node_call::<_, (Path<'static>,)>(&bus, A2, "ReloadUnit", ("svc.service", "replace"))
                .map(drop),
        ),
        (
            "ListUnits",
            node_call::<_, (Vec<UnitRow>,)>(&bus, A2, "ListUnits", ()).map(drop),
        ),
        (
            "GetUnitProperties",
            node_call::<_, (PropMap,)>(&bus, A2, "GetUnitProperties", ("svc.service", UNIT_IFACE))
                .map(drop),
        ),
        (
            "GetUnitProperty",
            node_call::<_, (Variant<Box<dyn RefArg>>,)>(
                &bus,
                A2,
                "GetUnitProperty",
                ("svc.service", UNIT_IFACE, "Id"),
            )
            .map(drop),
        ),
        (
            "EnableUnitFiles",
            node_call::<_, (bool, Changes)>(
                &bus,
                A2,
                "EnableUnitFiles",
                (vec!["svc.service"], false, false),
            )
            .map(drop),
        ),
        (
            "DisableUnitFiles",
            node_call::<_, (Changes,)>(&bus, A2, "DisableUnitFiles", (vec!["svc.service"], false))
                .map(drop),
        ),
        ("Reload", node_call::<_, ()>(&bus, A2, "Reload", ())),
    ];
    for (member, r) in calls {
        let err = r.expect_err(member);
        assert_eq!(err.0, offline, "{member}: {err:?}");
        assert!(
            err.1.contains(A2),
            "{member}: message should name the node: {err:?}"
        );
    }
    // Properties still read while offline.
    let name: String = prop(&bus, &node_path(A2), NODE_IFACE, "Name").unwrap();
    let st: String = prop(&bus, &node_path(A2), NODE_IFACE, "Status").unwrap();
    assert_eq!((name.as_str(), st.as_str()), (A2, "offline"));
    let seen: u64 = prop(&bus, &node_path(A2), NODE_IFACE, "LastSeenTimestamp").unwrap();
    assert!(seen > 0, "last seen of a node that was online");
    // The others are unaffected.
    assert_eq!(
        run_job(&sig, &bus, A1, "StartUnit", "default.target"),
        "done"
    );

    // Back online: calls work again.
    c.start_agent(A2).unwrap();
    let back = sig.wait(SOON, |m| {
        m.member().as_deref() == Some("NodeConnectionStateChanged")
            && m.read2::<&str, &str>()
                .is_ok_and(|(n, s)| n == A2 && s == "online")
    });
    assert!(
        back.is_some(),
        "no NodeConnectionStateChanged(agent.2, online)"
    );
    assert_eq!(run_job(&sig, &bus, A2, "StartUnit", "svc.service"), "done");
    assert_eq!(is_active(&c, A2, "svc.service"), "active");
}

type Props = Vec<(String, Variant<Box<dyn RefArg>>)>;

fn var<T: RefArg + 'static>(v: T) -> Variant<Box<dyn RefArg>> {
    Variant(Box::new(v) as Box<dyn RefArg>)
}

// [itest->req~api.node~1]
// [itest->req~manager.node-relay~1]
// [itest->req~agent.relay~1]
// [itest->req~manager.jobs~1]
#[test]
fn node_api_transient_units_control_properties_unit_files_and_targets() {
    if !hirte_tests::require_root(
        "node_api_transient_units_control_properties_unit_files_and_targets",
    ) {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let bus = c.system_bus().unwrap();
    let sig = Signals::manager(&c);

    // StartTransientUnit: a job like StartUnit; the unit exists only on that node.
    let exec_start: Vec<(String, Vec<String>, bool)> = vec![(
        "/bin/sleep".into(),
        vec!["/bin/sleep".into(), "infinity".into()],
        false,
    )];
    let props: Props = vec![
        ("Description".into(), var("Transient sleeper".to_string())),
        ("ExecStart".into(), var(exec_start)),
    ];
    let aux: Vec<(String, Props)> = Vec::new();
    let (tjob,): (Path<'static>,) = node_call(
        &bus,
        A1,
        "StartTransientUnit",
        ("tsleep.service", "replace", props, aux),
    )
    .unwrap();
    let (_, node, unit, result) = sig.job_removed(&tjob, SOON).expect("JobRemoved");
    assert_eq!(
        (node.as_str(), unit.as_str(), result.as_str()),
        (A1, "tsleep.service", "done")
    );
    assert_eq!(is_active(&c, A1, "tsleep.service"), "active");
    assert_eq!(
        unit_prop(&c, A1, "tsleep.service", "Description"),
        "Transient sleeper"
    );
    assert_eq!(is_active(&c, A2, "tsleep.service"), "inactive");

    // FreezeUnit/ThawUnit: done, or systemd's own refusal relayed (no freezer here).
    match node_call::<_, ()>(&bus, A1, "FreezeUnit", ("tsleep.service",)) {
        Ok(()) => {
            assert_eq!(
                unit_prop(&c, A1, "tsleep.service", "FreezerState"),
                "frozen"
            );
            let (): () = node_call(&bus, A1, "ThawUnit", ("tsleep.service",)).unwrap();
            assert_eq!(
                unit_prop(&c, A1, "tsleep.service", "FreezerState"),
                "running"
            );
        }
        Err((name, msg)) => {
            assert!(name.starts_with("org.freedesktop."), "{name}: {msg}");
            assert!(msg.contains("tsleep.service"), "{name}: {msg}");
            hirte_tests::not_shown(
                "req~api.node~1",
                &format!("freezing: FreezeUnit/ThawUnit succeeding (systemd refuses freezing here: {name}: {msg}); its refusal is relayed unchanged"),
            );
        }
    }

    // SetUnitProperties (runtime) shows in systemd.
    let props: Props = vec![("CPUWeight".into(), var(200u64))];
    let (): () = node_call(
        &bus,
        A1,
        "SetUnitProperties",
        ("tsleep.service", true, props),
    )
    .unwrap();
    assert_eq!(unit_prop(&c, A1, "tsleep.service", "CPUWeight"), "200");

    // KillUnit: SIGTERM to the main process ends the service.
    let (): () = node_call(&bus, A1, "KillUnit", ("tsleep.service", "main", 15i32)).unwrap();
    c.wait_for("tsleep.service to end after KillUnit", SOON, || {
        is_active(&c, A1, "tsleep.service") != "active"
    })
    .unwrap();

    // ResetFailedUnit and ResetFailed.
    c.write_unit(A1, "broken1.service", FAILING_UNIT).unwrap();
    c.write_unit(A1, "broken2.service", FAILING_UNIT).unwrap();
    for u in ["broken1.service", "broken2.service"] {
        let path = job(&bus, A1, "StartUnit", u);
        assert_eq!(sig.job_removed(&path, SOON).unwrap().3, "failed");
        assert_eq!(is_active(&c, A1, u), "failed");
    }
    let (): () = node_call(&bus, A1, "ResetFailedUnit", ("broken1.service",)).unwrap();
    assert_eq!(is_active(&c, A1, "broken1.service"), "inactive");
    assert_eq!(is_active(&c, A1, "broken2.service"), "failed");
    let (): () = node_call(&bus, A1, "ResetFailed", ()).unwrap();
    assert_eq!(is_active(&c, A1, "broken2.service"), "inactive");

    // ListUnitFiles / GetUnitFileState.
    write_config_unit(&c, A1, "svc.service", SLEEP_UNIT, true);
    let (files,): (Vec<(String, String)>,) = node_call(&bus, A1, "ListUnitFiles", ()).unwrap();
    let (path, state) = files
        .iter()
        .find(|(p, _)| p.ends_with("/svc.service"))
        .unwrap_or_else(|| panic!("svc.service not in ListUnitFiles"));
    assert!(
        path.starts_with(&config_unit_dir(&c, A1).display().to_string()),
        "{path}"
    );
    assert_eq!(state, "disabled");
    let (st,): (String,) = node_call(&bus, A1, "GetUnitFileState", ("svc.service",)).unwrap();
    assert_eq!(st, "disabled");
    ok(&c.systemctl(A1, &["enable", "svc.service"]), "enable");
    let (st,): (String,) = node_call(&bus, A1, "GetUnitFileState", ("svc.service",)).unwrap();
    assert_eq!(st, "enabled");
    // systemd's own error, relayed with its name and message unchanged.
    let err =
        node_call::<_, (String,)>(&bus, A1, "GetUnitFileState", ("missing.service",)).unwrap_err();
    assert_eq!(
        err,
        (
            "org.freedesktop.DBus.Error.FileNotFound".to_string(),
            "No such file or directory".to_string()
        )
    );

    // GetDefaultTarget / SetDefaultTarget, confirmed by the node's systemd.
    let (t,): (String,) = node_call(&bus, A1, "GetDefaultTarget", ()).unwrap();
    assert_eq!(t, stdout(&c.systemctl(A1, &["get-default"])).trim());
    let (changes,): (Changes,) =
        node_call(&bus, A1, "SetDefaultTarget", ("basic.target", true)).unwrap();
    assert!(!changes.is_empty());
    assert_eq!(
        stdout(&c.systemctl(A1, &["get-default"])).trim(),
        "basic.target"
    );
    let (t,): (String,) = node_call(&bus, A1, "GetDefaultTarget", ()).unwrap();
    assert_eq!(t, "basic.target");

    // SetLogLevel on the node's agent: a known level is taken, an unknown one refused.
    let (): () = node_call(&bus, A1, "SetLogLevel", ("warn",)).unwrap();
    let err = node_call::<_, ()>(&bus, A1, "SetLogLevel", ("loud",)).unwrap_err();
    assert!(err.0.ends_with("InvalidArgs"), "{err:?}");
    // Other nodes were not touched by any of this.
    let (t,): (String,) = node_call(&bus, A2, "GetDefaultTarget", ()).unwrap();
    assert_eq!(t, "default.target");
}

// [itest->req~api.exec~1]
// [itest->req~agent.exec~2]
#[test]
fn node_api_exec_runs_on_the_node_with_status_output_and_bounds() {
    if !hirte_tests::require_root("node_api_exec_runs_on_the_node_with_status_output_and_bounds") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let bus = c.system_bus().unwrap();
    type ExecOut = (i32, Vec<u8>, Vec<u8>);
    let exec = |node: &str, argv: &[&str], t: u64| -> Result<ExecOut, (String, String)> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        node_call(&bus, node, "Exec", (argv, t))
    };

    // argv as given, exit status, stdout and stderr apart.
    let (st, out, err) = exec(A1, &["sh", "-c", "echo out; echo err >&2; exit 3"], 0).unwrap();
    assert_eq!(
        (st, out.as_slice(), err.as_slice()),
        (3, &b"out\n"[..], &b"err\n"[..])
    );
    // Arguments pass unchanged (spaces, quotes).
    let (st, out, _) = exec(A1, &["printf", "%s|", "a b", "'c'"], 0).unwrap();
    assert_eq!(
        (st, String::from_utf8_lossy(&out).as_ref()),
        (0, "a b|'c'|")
    );
    // One argument with blanks is split into words, no shell (the guide's form).
    let (st, out, _) = exec(A1, &["echo hello   world | tr a-z A-Z"], 0).unwrap();
    assert_eq!(
        (st, String::from_utf8_lossy(&out).as_ref()),
        (0, "hello world | tr a-z A-Z\n")
    );
    // It runs on that node: its network, its systemd.
    let (_, out, _) = exec(A2, &["ip -4 -o addr show dev eth0"], 0).unwrap();
    assert!(String::from_utf8_lossy(&out).contains("10.200.0.3/24"));
    // Killed by a signal: 128 + N.
    let (st, _, _) = exec(A1, &["sh", "-c", "kill -9 0"], 0).unwrap();
    assert_eq!(st, 137);
    // A command over its timeout: Timeout.
    let err = exec(A1, &["sleep", "30"], 1_000_000).unwrap_err();
    assert_eq!(err.0, "org.containers.hirte.Error.Timeout", "{err:?}");
    // Bounds: no argv, too many args, too long a timeout.
    let err = exec(A1, &[], 0).unwrap_err();
    assert_eq!(err.0, "org.containers.hirte.Error.InvalidArgs", "{err:?}");
    let many = vec!["x"; 257];
    let err = exec(A1, &many, 0).unwrap_err();
    assert_eq!(err.0, "org.containers.hirte.Error.InvalidArgs", "{err:?}");
    let err = exec(A1, &["true"], 3_600_000_001).unwrap_err();
    assert_eq!(err.0, "org.containers.hirte.Error.InvalidArgs", "{err:?}");
    // Output beyond EXEC_MAX_OUTPUT is cut.
    let (st, out, _) = exec(A1, &["head -c 200000 /dev/zero"], 0).unwrap();
    assert_eq!((st, out.len()), (0, hirte_common::bounds::EXEC_MAX_OUTPUT));
    // The agent cleans up its capture files.
    let dir = c.node_runtime_dir(A1).unwrap().join("hirte-agent");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "capture files left in {}: {left:?}",
        dir.display()
    );
}

// [itest->req~api.exec~1]
// [itest->req~config.manager-keys~1]
#[test]
fn node_api_exec_refused_when_allow_exec_is_no() {
    if !hirte_tests::require_root("node_api_exec_refused_when_allow_exec_is_no") {
        return;
    }
    let mut spec = ClusterSpec::new(&NODES);
    spec.manager_conf = "AllowExec=no\n".into();
    let c = Cluster::start(spec).unwrap();
    let bus = c.system_bus().unwrap();
    let marker = c.node_runtime_dir(A1).unwrap().join("exec-ran");
    let argv = vec![format!("touch {}", marker.display())];
    let err = node_call::<_, (i32, Vec<u8>, Vec<u8>)>(&bus, A1, "Exec", (argv, 0u64)).unwrap_err();
    assert_eq!(err.0, "org.containers.hirte.Error.NotAllowed", "{err:?}");
    assert!(err.1.contains("AllowExec=no"), "{err:?}");
    assert!(!marker.exists(), "the command ran anyway");
    let out = c.hirtectl(&["exec", A1, "true"]);
    let line = one_line_failure(&out, "hirtectl exec with AllowExec=no");
    assert!(line.contains("AllowExec=no"), "{line}");
}

// [itest->req~agent.exec~2]
// [itest->req~ctl.exec~1]
#[test]
fn node_api_exec_passes_dollar_signs_and_percent_unchanged() {
    if !hirte_tests::require_root("node_api_exec_passes_dollar_signs_and_percent_unchanged") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let bus = c.system_bus().unwrap();
    // What a shell user types: `hirtectl exec agent-1 printf '[%s]' '$$' '${HOME}' '%n'`.
    let argv: Vec<String> = ["printf", "[%s]", "$$", "${HOME}", "$1", "%n"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (st, out, err): (i32, Vec<u8>, Vec<u8>) =
        node_call(&bus, A1, "Exec", (argv, 0u64)).unwrap();
    assert_eq!(st, 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(
        String::from_utf8_lossy(&out),
        "[$$][${HOME}][$1][%n]",
        "Exec argv must reach the command unchanged"
    );
    let out = c.hirtectl(&["exec", A1, "printf", "[%s]", "$$", "${HOME}"]);
    assert_eq!(stdout(&out), "[$$][${HOME}]", "{}", show(&out));
    // A shell named by the caller expands, not systemd.
    let out = c.hirtectl(&["exec", A1, "sh", "-c", "x=5; echo \"$x ${x}\""]);
    assert_eq!(stdout(&out), "5 5\n", "{}", show(&out));
    // One string is split into words: `$` reaches the command unchanged.
    let out = c.hirtectl(&["exec", A1, "echo \"$x ${x}\""]);
    assert_eq!(stdout(&out), "$x ${x}\n", "{}", show(&out));
}

const MONITOR_IFACE: &str = "org.containers.hirte.Monitor";

/// A second manager on a bus where `org.containers.hirte` is taken refuses to start (exit 1)
/// and says why; the running manager is unaffected.
// [itest->req~api.manager~1]
#[test]
fn node_api_second_manager_exits_when_the_bus_name_is_taken() {
    if !hirte_tests::require_root("node_api_second_manager_exits_when_the_bus_name_is_taken") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["primary"])).unwrap();
    let dir = c.node_dir("primary").unwrap().join("second-manager");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hirte.conf"),
        "[hirte]\nManagerAddress=127.0.0.1\nManagerPort=2099\nAllowedNodeNames=primary\nLogTarget=stderr\n",
    )
    .unwrap();
    let mut cmd = std::process::Command::new(hirte_tests::binary("hirte").unwrap());
    cmd.env("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address())
        .env("HIRTE_CONFIG_DIR", &dir)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET");
    let out = run_timeout(&mut cmd, SOON);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("org.containers.hirte is already owned: is another manager running?"),
        "{err}"
    );
    assert_all_online(&c, &["primary"]);
}

/// `Manager.ListUnits` answers all or nothing: one node that does not answer in time fails
/// the whole call with its name, never a partial dictionary.
// [itest->req~manager.list-units~1]
#[test]
fn node_api_manager_list_units_fails_whole_when_one_node_fails() {
    if !hirte_tests::require_root("node_api_manager_list_units_fails_whole_when_one_node_fails") {
        return;
    }
    let mut spec = ClusterSpec::new(&NODES);
    spec.manager_conf = "AgentCallTimeout=1s\nNodeHeartbeatThreshold=30s\n".into();
    let c = Cluster::start(spec).unwrap();
    let bus = c.system_bus().unwrap();
    let (all,): (HashMap<String, Vec<UnitRow>>,) =
        call(&bus, MANAGER_PATH, MANAGER_IFACE, "ListUnits", ()).unwrap();
    assert_eq!(all.len(), 3, "{:?}", all.keys());
    c.signal_agent(A2, Signal::SIGSTOP).unwrap();
    let r = call::<_, (HashMap<String, Vec<UnitRow>>,)>(
        &bus,
        MANAGER_PATH,
        MANAGER_IFACE,
        "ListUnits",
        (),
    );
    let r_files = call::<_, (HashMap<String, Vec<(String, String)>>,)>(
        &bus,
        MANAGER_PATH,
        MANAGER_IFACE,
        "ListUnitFiles",
        (),
    );
    c.signal_agent(A2, Signal::SIGCONT).unwrap();
    for (what, err) in [
        ("ListUnits", r.map(|_| ()).unwrap_err()),
        ("ListUnitFiles", r_files.map(|_| ()).unwrap_err()),
    ] {
        assert_eq!(
            err.0, "org.containers.hirte.Error.Timeout",
            "{what}: {err:?}"
        );
        assert_eq!(
            err.1,
            format!("node '{A2}' did not answer {what} within 1s"),
            "{what}"
        );
    }
    // Once it answers again, the whole dictionary is back.
    c.wait_for("ListUnits of every node again", SOON, || {
        call::<_, (HashMap<String, Vec<UnitRow>>,)>(
            &bus,
            MANAGER_PATH,
            MANAGER_IFACE,
            "ListUnits",
            (),
        )
        .is_ok_and(|(m,)| m.len() == 3)
    })
    .unwrap();
}

/// A monitor's events reach its peers; `RemovePeer` tells the peer (`PeerRemoved`) and stops
/// delivery to it; `Unsubscribe` stops a subscription; unknown ids get `NoSuchSubscription`.
// [itest->req~api.monitor~1]
// [itest->req~manager.monitors~1]
// [itest->req~manager.monitor-owner-gone~1]
#[test]
fn node_api_monitor_peers_unsubscribe_and_unknown_ids() {
    if !hirte_tests::require_root("node_api_monitor_peers_unsubscribe_and_unknown_ids") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    c.write_unit(A1, "one.service", SLEEP_UNIT).unwrap();
    c.write_unit(A1, "two.service", SLEEP_UNIT).unwrap();
    let owner = Signals::new(&c, &[]);
    let peer = Signals::new(&c, &[]);
    let (m,): (Path,) = call(
        &owner.conn,
        MANAGER_PATH,
        MANAGER_IFACE,
        "CreateMonitor",
        (),
    )
    .unwrap();
    let (sub_one,): (u32,) = call(
        &owner.conn,
        &m,
        MONITOR_IFACE,
        "Subscribe",
        (A1, "one.service"),
    )
    .unwrap();
    let (_sub_two,): (u32,) = call(
        &owner.conn,
        &m,
        MONITOR_IFACE,
        "Subscribe",
        (A1, "two.service"),
    )
    .unwrap();
    let peer_name = peer.conn.unique_name().to_string();
    let (peer_id,): (u32,) = call(&owner.conn, &m, MONITOR_IFACE, "AddPeer", (peer_name,)).unwrap();
    let active = |unit: &'static str| {
        move |msg: &dbus::Message| {
            msg.member().as_deref() == Some("UnitStateChanged")
                && msg
                    .read3::<&str, &str, &str>()
                    .is_ok_and(|(n, u, a)| n == A1 && u == unit && a == "active")
        }
    };
    // Both the owner and the peer get the events.
    ok(&c.hirtectl(&["start", A1, "one.service"]), "start one");
    assert!(
        owner.wait(SOON, active("one.service")).is_some(),
        "owner: no event"
    );
    assert!(
        peer.wait(SOON, active("one.service")).is_some(),
        "peer: no event"
    );

    // Unsubscribe: one.service's events stop, two.service's go on. The manager numbers its
    // messages in sending order: an event with a serial above the Unsubscribe reply's was
    // sent after the subscription ended (events still queued from before are not).
    let after_unsubscribe = serial_of_call(&owner, &m, "Unsubscribe", (sub_one,));
    ok(&c.hirtectl(&["stop", A1, "one.service"]), "stop one");
    ok(&c.hirtectl(&["start", A1, "two.service"]), "start two");
    let mut seen = Vec::new();
    let got = owner.wait(SOON, |msg| {
        if let Ok((_, u)) = msg.read2::<&str, &str>() {
            if msg.get_serial().is_some_and(|s| s > after_unsubscribe) {
                seen.push(format!("{:?} {u}", msg.member()));
            }
        }
        active("two.service")(msg)
    });
    assert!(got.is_some(), "no event for two.service: {seen:?}");
    assert!(
        seen.iter().all(|s| !s.contains("one.service")),
        "events for the unsubscribed one.service: {seen:?}"
    );

    // RemovePeer: the peer is told why and gets nothing more.
    let after_removal = serial_of_call(&owner, &m, "RemovePeer", (peer_id, "bye now"));
    let removed = peer
        .wait(SOON, |msg| msg.member().as_deref() == Some("PeerRemoved"))
        .expect("PeerRemoved at the peer");
    assert_eq!(removed.read1::<&str>().unwrap(), "bye now");
    ok(&c.hirtectl(&["stop", A1, "two.service"]), "stop two");
    assert!(
        owner
            .wait(SOON, |msg| msg.member().as_deref()
                == Some("UnitStateChanged")
                && msg.read3::<&str, &str, &str>().is_ok_and(|(_, u, a)| u
                    == "two.service"
                    && a == "inactive"))
            .is_some(),
        "owner: no inactive event for two.service"
    );
    // The owner's event was sent after the peer was removed, and a peer's copy goes out in
    // the same step: the peer has none sent after its removal.
    assert!(
        peer.wait(Duration::from_millis(200), |msg| msg
            .get_serial()
            .is_some_and(|s| s > after_removal)
            && msg.member().as_deref() == Some("UnitStateChanged"))
            .is_none(),
        "a removed peer still got events"
    );

    // An owner that leaves the bus takes its monitor along; its peers are told why.
    let leaving = Signals::new(&c, &[]);
    let (m2,): (Path,) = call(
        &leaving.conn,
        MANAGER_PATH,
        MANAGER_IFACE,
        "CreateMonitor",
        (),
    )
    .unwrap();
    let peer_name = peer.conn.unique_name().to_string();
    let (_,): (u32,) = call(&leaving.conn, &m2, MONITOR_IFACE, "AddPeer", (peer_name,)).unwrap();
    drop(leaving);
    let removed = peer
        .wait(SOON, |msg| msg.member().as_deref() == Some("PeerRemoved"))
        .expect("PeerRemoved when the owner left");
    assert_eq!(removed.read1::<&str>().unwrap(), "owner left the bus");
    assert!(
        call::<_, ()>(&owner.conn, &m2, MONITOR_IFACE, "Close", ()).is_err(),
        "the monitor of the owner that left still exists"
    );

    // Unknown ids.
    for (member, err) in [
        (
            "Unsubscribe",
            call::<_, ()>(&owner.conn, &m, MONITOR_IFACE, "Unsubscribe", (sub_one,)).unwrap_err(),
        ),
        (
            "RemovePeer",
            call::<_, ()>(
                &owner.conn,
                &m,
                MONITOR_IFACE,
                "RemovePeer",
                (peer_id, "again"),
            )
            .unwrap_err(),
        ),
    ] {
        assert_eq!(
            err.0, "org.containers.hirte.Error.NoSuchSubscription",
            "{member}: {err:?}"
        );
    }
}

/// Calls a monitor method that must succeed and returns the serial of the manager's reply.
fn serial_of_call<A: dbus::arg::AppendAll>(
    on: &Signals,
    monitor: &Path,
    member: &str,
    args: A,
) -> u32 {
    let mut msg = dbus::Message::new_method_call(
        "org.containers.hirte",
        monitor.clone(),
        MONITOR_IFACE,
        member,
    )
    .unwrap();
    args.append(&mut dbus::arg::IterAppend::new(&mut msg));
    let reply = on
        .conn
        .channel()
        .send_with_reply_and_block(msg, SOON)
        .unwrap_or_else(|e| panic!("{member}: {e:?}"));
    reply.get_serial().unwrap()
}
