//! Manager failover without VRRP (requirements/failover.md): agents with an ordered manager
//! list (`ManagerHost=m1,m2`), the reconnect backoff, `ManagerPreferFirst=`, the local API's
//! `SwitchController`, and what a standby manager and the new manager hold after a failover
//! (nodes, monitors, proxies, jobs in flight). Two real managers: the harness' on `m1`, and
//! a [`NodeManager`] on `m2` with its own system bus.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hirte_tests::{Cluster, ClusterSpec, NodeManager, Signal};

const NODES: [&str; 3] = ["m1", "m2", "n1"];
/// The harness' agents beat every second.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Room for a machine shared with other builds; the bounds themselves are stated apart.
const LOAD_TOLERANCE: Duration = Duration::from_secs(3);

const AGENT_NAME: &str = "org.containers.hirte.Agent";
const AGENT_PATH: &str = "/org/containers/hirte";
const AGENT_IFACE: &str = "org.containers.hirte.Agent";

/// Writes `agent.conf.d/50-failover.conf` on every node (the harness' `agent.conf` already
/// sets `ManagerHost`, and a key may appear once per file).
fn agent_dropin(c: &Cluster, text: &str) {
    for n in c.nodes() {
        let d = c.node_config_dir(n).unwrap().join("agent.conf.d");
        std::fs::write(d.join("50-failover.conf"), format!("[hirte-agent]\n{text}")).unwrap();
    }
}

/// Manager on m1 (the harness') and a standby on m2; agents list both (plus `extra` keys).
fn list_cluster(extra: &str, sections: &str) -> (Cluster, NodeManager) {
    let mut spec = ClusterSpec::new(&NODES);
    spec.start_agents = false;
    spec.manager_sections = sections.to_string();
    let mut c = Cluster::start(spec).unwrap();
    let standby = NodeManager::prepare(&c, "m2").unwrap();
    standby.start(&c).unwrap();
    let (a, b) = (c.node_ip("m1").unwrap(), c.node_ip("m2").unwrap());
    agent_dropin(&c, &format!("ManagerHost={a},{b}\n{extra}"));
    for n in NODES {
        c.start_agent(n).unwrap();
    }
    c.wait_all_online(SOON)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
    (c, standby)
}

fn states(rows: Option<Vec<(String, String)>>) -> Vec<String> {
    rows.unwrap_or_default()
        .into_iter()
        .map(|(n, s)| format!("{n}={s}"))
        .collect()
}

fn all(state: &str) -> Vec<String> {
    NODES.iter().map(|n| format!("{n}={state}")).collect()
}

/// Waits until every node is online on `m`; returns how long that took.
fn wait_online_on(m: &NodeManager, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    let mut last = Vec::new();
    while t0.elapsed() < timeout {
        last = states(m.list_nodes());
        if last == all("online") {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "not all online on {}: {last:?}\n{}",
        m.bus_address(),
        m.log()
    );
}

/// Stops the harness' manager on m1 the hard way and returns when it is gone.
fn crash_m1(c: &mut Cluster) -> Instant {
    let t = Instant::now();
    c.kill_manager(Signal::SIGKILL).expect("manager on m1 ran");
    t
}

// [itest->req~agent.manager-list~1]
// [itest->req~manager.standby~1]
// [itest->req~failover.state~1]
#[test]
fn failover_list_agents_move_to_the_standby_and_stay_and_no_manager_holds_stale_nodes() {
    if !hirte_tests::require_root(
        "failover_list_agents_move_to_the_standby_and_stay_and_no_manager_holds_stale_nodes",
    ) {
        return;
    }
    let (mut c, standby) = list_cluster("", "");
    c.write_unit("n1", "keep.service", SLEEP_UNIT).unwrap();
    c.write_unit(
        "n1",
        "short.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sleep 3\n",
    )
    .unwrap();
    // The standby has no agents: every node is offline there, nothing stale.
    assert_eq!(states(standby.list_nodes()), all("offline"));

    // A client of the standby monitors n1 before any agent is there.
    let events_file = c.dir().join("monitor.out");
    let mut monitor = Command::new(c.bin_dir().join("hirtectl"))
        .args(["monitor", "n1", "keep.service", "--timeout", "60"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", standby.bus_address())
        .stdout(std::fs::File::create(&events_file).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A job in flight on m1 when it dies.
    let bus = c.system_bus().unwrap();
    let (job,): (dbus::Path<'static>,) = call(
        &bus,
        &node_path("n1"),
        NODE_IFACE,
        "StartUnit",
        ("short.service", "replace"),
    )
    .unwrap();
    wait_agent_log(&c, "n1", "the start job", |l| {
        l.contains("start short.service")
    });

    let t0 = crash_m1(&mut c);
    let took = wait_online_on(&standby, SOON);
    eprintln!(
        "list failover: all 3 agents online on the standby {:?} after the first manager was killed (bound {:?})",
        t0.elapsed(),
        HEARTBEAT + Duration::from_secs(1)
    );
    assert!(
        took <= HEARTBEAT + Duration::from_secs(1) + LOAD_TOLERANCE,
        "failover took {took:?}"
    );
    for n in NODES {
        let log = c.agent_log(n);
        assert!(
            log.contains(&format!(
                "Connected to manager at {}:2020 as node '{n}'",
                c.node_ip("m2").unwrap()
            )),
            "{n}:\n{log}"
        );
    }

    // Control through the new manager.
    let out = standby.hirtectl(&["start", "n1", "keep.service"]);
    ok(&out, "start keep.service through the standby");
    assert_eq!(is_active(&c, "n1", "keep.service"), "active");
    // The job in flight on the old manager: systemd finishes it, its result is not sent to
    // the new manager (it never knew the job); the unit's state is.
    wait_agent_log(&c, "n1", "the old job's result to be dropped", |l| {
        l.contains("belonged to an earlier manager session; result not sent")
    });
    assert!(!format!("{job}").is_empty());
    let st = ok(
        &standby.hirtectl(&["status", "n1", "short.service"]),
        "status of the unit whose job ran on the old manager",
    );
    assert!(st.contains("active"), "{st}");
    // The monitor opened on the standby before the failover sees the unit once n1 arrived.
    let mut events = String::new();
    let seen = c.wait_for(
        "the monitor on the new manager to see keep.service",
        SOON,
        || {
            events = std::fs::read_to_string(&events_file).unwrap_or_default();
            events.contains("n1 keep.service: active/running")
        },
    );
    let _ = monitor.kill();
    let _ = monitor.wait();
    seen.unwrap_or_else(|e| panic!("{e}; monitor printed:\n{events}"));
    eprintln!("monitor on the new manager:\n{events}");

    // The first manager comes back: the agents stay where they registered, and the first
    // manager, now the standby, holds no stale nodes.
    c.start_manager().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(states(standby.list_nodes()), all("online"));
    assert_eq!(states(c.list_nodes()), all("offline"));
}

// [itest->req~agent.manager-failback~1]
// [itest->req~manager.standby~1]
#[test]
fn failover_list_prefer_first_moves_back_once_the_first_manager_listens() {
    if !hirte_tests::require_root(
        "failover_list_prefer_first_moves_back_once_the_first_manager_listens",
    ) {
        return;
    }
    let (mut c, standby) = list_cluster("ManagerPreferFirst=yes\n", "");
    // `HIRTE_FAILOVER_RUNS=N` repeats the cycle for the figures (`ci/bench-failover`).
    let runs = failover_runs();
    let bound = HEARTBEAT + Duration::from_secs(1);
    for run in 1..=runs {
        // Failover: the standby listens all along, so the time counts from the kill.
        let t0 = crash_m1(&mut c);
        wait_online_on(&standby, SOON);
        let over = t0.elapsed();
        eprintln!(
            "FIGURE list failover run {run}: all 3 agents online on the standby {over:?} after the first manager was killed (bound {bound:?}); measured {over:?}; load {}",
            load_average()
        );
        assert!(over <= bound + LOAD_TOLERANCE, "{over:?}");

        let t0 = Instant::now();
        c.start_manager().unwrap();
        let listening = t0.elapsed();
        c.wait_all_online(SOON)
            .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
        let back = t0.elapsed() - listening;
        // The probe runs every ReconnectInterval (500 ms here), then the agent registers.
        let failback_bound = Duration::from_millis(500) + bound;
        eprintln!(
            "FIGURE list failback run {run}: all 3 agents back on the first manager {back:?} after it listened ({listening:?} to start; bound {failback_bound:?}); measured {back:?}; load {}",
            load_average()
        );
        assert!(back <= failback_bound + LOAD_TOLERANCE, "{back:?}");
        // They left the standby: it shows them offline at once (closed connections).
        let mut last = Vec::new();
        c.wait_for("the standby to show every node offline", SOON, || {
            last = states(standby.list_nodes());
            last == all("offline")
        })
        .unwrap_or_else(|e| panic!("{e}: {last:?}"));
    }
    for n in NODES {
        assert!(c.agent_log(n).contains("listens again; moving back to it"));
    }
}

// [itest->req~agent.switch-controller~1]
#[test]
fn failover_switch_controller_on_the_local_api_moves_one_agent() {
    if !hirte_tests::require_root("failover_switch_controller_on_the_local_api_moves_one_agent") {
        return;
    }
    let (c, standby) = list_cluster("", "");
    let b = c.node_ip("m2").unwrap();
    let local = c.node_bus("n1").unwrap();
    let proxy = local.with_proxy(AGENT_NAME, AGENT_PATH, Duration::from_secs(10));
    // Bad addresses are refused with a reason and change nothing.
    let err: dbus::Error = proxy
        .method_call::<(), _, _, _>(AGENT_IFACE, "SwitchController", ("udp:host=x",))
        .unwrap_err();
    assert_eq!(
        err.name(),
        Some("org.freedesktop.DBus.Error.InvalidArgs"),
        "{err:?}"
    );
    assert!(err.message().unwrap().contains("udp:host=x"), "{err:?}");
    let to = format!("tcp:host={b},port=2020");
    proxy
        .method_call::<(), _, _, _>(AGENT_IFACE, "SwitchController", (to.as_str(),))
        .unwrap();
    c.wait_node_state("n1", "offline", SOON).unwrap();
    let mut last = Vec::new();
    c.wait_for("n1 online on the standby", SOON, || {
        last = states(standby.list_nodes());
        last.contains(&"n1=online".to_string())
    })
    .unwrap_or_else(|e| panic!("{e}: {last:?}\n{}", c.agent_log("n1")));
    use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
    let addr: String = proxy.get(AGENT_IFACE, "ManagerAddress").unwrap();
    assert_eq!(addr, to);
    // The others stay on the first manager.
    assert_eq!(c.node_state("m2").as_deref(), Some("online"));
    ok(
        &standby.hirtectl(&["list-units", "n1"]),
        "list-units of n1 on the manager it switched to",
    );
}

// [itest->req~agent.reconnect-backoff~1]
#[test]
fn failover_agent_whose_manager_starts_late_is_online_well_before_one_reconnect_interval() {
    if !hirte_tests::require_root(
        "failover_agent_whose_manager_starts_late_is_online_well_before_one_reconnect_interval",
    ) {
        return;
    }
    let mut spec = ClusterSpec::new(&["m1", "n1"]);
    spec.start_agents = false;
    spec.start_manager = false;
    let mut c = Cluster::start(spec).unwrap();
    // The guide's 10 s interval.
    agent_dropin(&c, "ReconnectInterval=10s\n");
    for n in ["m1", "n1"] {
        c.start_agent(n).unwrap();
    }
    wait_agent_log(&c, "n1", "a refused connect", |l| {
        l.contains("Cannot reach manager at") && l.contains("retrying every 10s at most")
    });
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = Instant::now();
    c.start_manager().unwrap();
    let listening = t0.elapsed();
    c.wait_all_online(SOON)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
    let online = t0.elapsed() - listening;
    eprintln!(
        "FIGURE backoff: agents refused for 1.5 s, online {online:?} after the manager listened (ReconnectInterval 10 s)"
    );
    // 1.5 s of failures: the backoff is at 0.8-1.6 s, far below the 10 s interval.
    assert!(online < Duration::from_secs(5), "{online:?}");
}

// [itest->req~failover.state~1]
#[test]
fn failover_proxies_are_announced_again_to_the_new_manager() {
    if !hirte_tests::require_root("failover_proxies_are_announced_again_to_the_new_manager") {
        return;
    }
    let (mut c, standby) = list_cluster("", "[node n1]\nAllowDependenciesOn=m2\n");
    c.write_unit("m2", "target.service", SLEEP_UNIT).unwrap();
    c.write_unit(
        "n1",
        "consumer.service",
        "[Unit]\nWants=hirte-proxy@m2_target.service\nAfter=hirte-proxy@m2_target.service\n[Service]\nExecStart=/bin/sleep infinity\n",
    )
    .unwrap();
    ok(
        &c.systemctl("n1", &["start", "consumer.service"]),
        "start consumer",
    );
    assert_eq!(is_active(&c, "m2", "target.service"), "active");
    crash_m1(&mut c);
    wait_online_on(&standby, SOON);
    // The new manager learnt the proxy from n1's agent: stopping the target through it stops
    // the proxy on n1, which only a manager that knows the proxy can do.
    ok(
        &standby.hirtectl(&["stop", "m2", "target.service"]),
        "stop the target through the new manager",
    );
    let mut last = String::new();
    c.wait_for("the proxy on n1 to stop", SOON, || {
        last = is_active(&c, "n1", "hirte-proxy@m2_target.service");
        last == "inactive" || last == "failed"
    })
    .unwrap_or_else(|e| panic!("{e}: {last}\n{}\n{}", standby.log(), c.log_tails()));
}
