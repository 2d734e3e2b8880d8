//! Recovery: the manager restarted (SIGKILL and SIGTERM), an agent stopped and restarted, a
//! node cut off the network and healed, the manager's name moved to another address. Nodes
//! come back by themselves; units stay controllable.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use common::*;
use hirte_tests::{Cluster, ClusterSpec, Signal, MANAGER_PORT};

const NODES: [&str; 3] = ["primary", "agent1", "agent2"];

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

/// Brings the manager back after it went away and checks the cluster is whole again:
/// every agent re-registered by itself, units started before are still seen running, and
/// new unit operations work on every node.
fn restart_manager_and_check(c: &mut Cluster, before: &str) {
    let connects_before = count(&c.manager_log(), "connected from");
    assert!(
        c.hirtectl(&["list-nodes"]).status.code() != Some(0),
        "hirtectl answered with no manager ({before})"
    );
    c.start_manager().unwrap();
    // ReconnectInterval is 500 ms in the harness; 10 s leaves room for a loaded machine.
    c.wait_all_online(SOON)
        .unwrap_or_else(|e| panic!("after {before}: {e}"));
    let log = c.manager_log();
    assert_eq!(
        count(&log, "connected from") - connects_before,
        3,
        "each agent registers exactly once again:\n{log}"
    );
    for n in NODES {
        let alog = c.agent_log(n);
        assert!(
            count(&alog, &format!("as node '{n}'")) >= 2,
            "{n} did not reconnect:\n{alog}"
        );
        assert!(alog.contains("Lost the manager connection"), "{n}:\n{alog}");
    }
    // State: what ran before still runs and is reported so.
    let out = ok(
        &c.hirtectl(&["status", "agent1", "keep.service"]),
        "status after restart",
    );
    assert!(out.contains("active") && out.contains("running"), "{out}");
    // Control: every node takes new jobs.
    for n in NODES {
        ok(
            &c.hirtectl(&["restart", n, "keep.service"]),
            &format!("restart keep.service on {n} after {before}"),
        );
        assert_eq!(is_active(c, n, "keep.service"), "active");
    }
    ok(
        &c.hirtectl(&["stop", "agent2", "keep.service"]),
        "stop after restart",
    );
    assert_eq!(is_active(c, "agent2", "keep.service"), "inactive");
    let status: String = prop(
        &c.system_bus().unwrap(),
        MANAGER_PATH,
        MANAGER_IFACE,
        "Status",
    )
    .unwrap();
    assert_eq!(status, "up");
}

fn cluster_with_running_units() -> Cluster {
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    for n in NODES {
        c.write_unit(n, "keep.service", SLEEP_UNIT).unwrap();
        ok(&c.hirtectl(&["start", n, "keep.service"]), "start keep");
    }
    c
}

// [itest->req~manager.restart-recovery~1]
// [itest->req~agent.reconnect~1]
#[test]
fn reconnect_after_manager_sigkill_all_nodes_return_and_units_controllable() {
    if !hirte_tests::require_root(
        "reconnect_after_manager_sigkill_all_nodes_return_and_units_controllable",
    ) {
        return;
    }
    let mut c = cluster_with_running_units();
    let st = c
        .kill_manager(Signal::SIGKILL)
        .expect("manager was running");
    assert!(!st.success());
    // Units keep running on the nodes while the manager is gone.
    for n in NODES {
        assert_eq!(is_active(&c, n, "keep.service"), "active");
    }
    restart_manager_and_check(&mut c, "SIGKILL");
    // And once more: recovery is not a one-off.
    c.kill_manager(Signal::SIGKILL);
    c.start_manager().unwrap();
    c.wait_all_online(SOON).unwrap();
}

// [itest->req~manager.restart-recovery~1]
// [itest->req~manager.sigterm~1]
// [itest->req~agent.reconnect~1]
#[test]
fn reconnect_after_manager_sigterm_clean_exit_and_nodes_return() {
    if !hirte_tests::require_root("reconnect_after_manager_sigterm_clean_exit_and_nodes_return") {
        return;
    }
    let mut c = cluster_with_running_units();
    let st = c
        .kill_manager(Signal::SIGTERM)
        .expect("manager was running");
    assert!(st.success(), "manager exit status on SIGTERM: {st:?}");
    let log = c.manager_log();
    assert!(log.contains("Stopped"), "{log}");
    for n in NODES {
        assert_eq!(is_active(&c, n, "keep.service"), "active");
    }
    restart_manager_and_check(&mut c, "SIGTERM");
}

// [itest->req~manager.sigterm~1]
// [itest->req~manager.offline-cleanup~1]
#[test]
fn reconnect_manager_sigterm_ends_jobs_in_flight_with_a_result() {
    if !hirte_tests::require_root("reconnect_manager_sigterm_ends_jobs_in_flight_with_a_result") {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    c.write_unit("agent1", "slow.service", SLOW_UNIT).unwrap();
    c.write_unit("agent2", "slow2.service", SLOW_UNIT).unwrap();
    let sig = Signals::manager(&c);
    let bus = c.system_bus().unwrap();
    let (job,): (dbus::Path<'static>,) = call(
        &bus,
        &node_path("agent1"),
        NODE_IFACE,
        "StartUnit",
        ("slow.service", "replace"),
    )
    .unwrap();
    // hirtectl waiting on a job when the manager stops gets an answer, not a hang.
    let waiter = {
        let bin = c.bin_dir().join("hirtectl");
        let addr = c.bus_address();
        std::thread::spawn(move || {
            run_timeout(
                std::process::Command::new(bin)
                    .args(["start", "agent2", "slow2.service"])
                    .env("DBUS_SYSTEM_BUS_ADDRESS", addr),
                std::time::Duration::from_secs(60),
            )
        })
    };
    c.wait_for("hirtectl's start job to be accepted", SOON, || {
        c.agent_log("agent2").contains("start slow2.service")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
    // The manager waits up to 5 s for jobs in flight, then cancels them: not the
    // harness' kill_manager (SIGKILL after 5 s), but SIGTERM and a longer wait.
    c.signal_manager(Signal::SIGTERM).unwrap();
    // While the jobs in flight get their grace, new calls are refused with Busy.
    wait_manager_log(&c, "the drain message", |l| {
        l.contains("Shutting down: refusing new calls, letting jobs in flight finish")
    });
    let err = call::<_, (dbus::Path<'static>,)>(
        &bus,
        &node_path("agent1"),
        NODE_IFACE,
        "StartUnit",
        ("default.target", "replace"),
    )
    .unwrap_err();
    assert_eq!(err.0, "org.containers.hirte.Error.Busy", "{err:?}");
    assert!(err.1.contains("shutting down"), "{err:?}");
    let st = c
        .wait_manager_exit(std::time::Duration::from_secs(30))
        .expect("manager exits after SIGTERM");
    assert!(st.success(), "manager exit status on SIGTERM: {st:?}");
    let removed = sig.job_removed(&job, SOON);
    let (_, _, _, result) = removed.expect("JobRemoved for the job in flight before exit");
    assert_eq!(result, "cancelled");
    assert!(c.manager_log().contains("Stopped"));
    let out = waiter.join().unwrap();
    one_line_failure(&out, "hirtectl start interrupted by manager stop");
}

// [itest->req~agent.sigterm~1]
// [itest->req~agent.reconnect~1]
// [itest->req~log.events~1]
#[test]
fn reconnect_agent_sigterm_exits_cleanly_and_rejoins_when_restarted() {
    if !hirte_tests::require_root(
        "reconnect_agent_sigterm_exits_cleanly_and_rejoins_when_restarted",
    ) {
        return;
    }
    let mut c = cluster_with_running_units();
    let st = c
        .kill_agent("agent2", Signal::SIGTERM)
        .expect("agent was running");
    assert!(st.success(), "agent exit status on SIGTERM: {st:?}");
    c.wait_node_state("agent2", "offline", SOON).unwrap();
    wait_manager_log(&c, "the disconnect", |l| {
        l.contains("Agent 'agent2' disconnected")
    });
    assert_eq!(is_active(&c, "agent2", "keep.service"), "active");
    c.start_agent("agent2").unwrap();
    c.wait_node_state("agent2", "online", SOON).unwrap();
    ok(
        &c.hirtectl(&["stop", "agent2", "keep.service"]),
        "stop after agent restart",
    );
    assert_eq!(is_active(&c, "agent2", "keep.service"), "inactive");
}

// [itest->req~manager.heartbeat-threshold~1]
// [itest->req~agent.reconnect~1]
// [itest->req~manager.offline-cleanup~1]
// [itest->req~link.heartbeat~1]
#[test]
fn reconnect_partitioned_node_goes_offline_then_rejoins_after_heal() {
    if !hirte_tests::require_root("reconnect_partitioned_node_goes_offline_then_rejoins_after_heal")
    {
        return;
    }
    let mut spec = ClusterSpec::new(&NODES);
    spec.manager_conf = "NodeHeartbeatThreshold=3s\n".into();
    let c = Cluster::start(spec).unwrap();
    c.write_unit("agent2", "slow.service", SLOW_UNIT).unwrap();
    let sig = Signals::manager(&c);
    let bus = c.system_bus().unwrap();
    let (job,): (dbus::Path<'static>,) = call(
        &bus,
        &node_path("agent2"),
        NODE_IFACE,
        "StartUnit",
        ("slow.service", "replace"),
    )
    .unwrap();

    c.set_link("agent2", false).unwrap();
    // Silent for NodeHeartbeatThreshold: offline, its job ends 'cancelled'.
    c.wait_node_state("agent2", "offline", SOON).unwrap();
    let (_, node, _, result) = sig.job_removed(&job, SOON).expect("JobRemoved");
    assert_eq!((node.as_str(), result.as_str()), ("agent2", "cancelled"));
    wait_manager_log(&c, "the heartbeat timeout", |l| {
        l.contains("Agent 'agent2' disconnected: no heartbeat for more than 3s")
    });
    assert_all_online(&c, &["primary", "agent1"]);
    let out = c.hirtectl(&["list-units", "agent2"]);
    one_line_failure(&out, "list-units of a partitioned node");

    // Heal: the agent notices the silent manager, reconnects by itself.
    c.set_link("agent2", true).unwrap();
    c.wait_node_state("agent2", "online", SOON).unwrap();
    assert_all_online(&c, &NODES);
    ok(
        &c.hirtectl(&["stop", "agent2", "slow.service"]),
        "stop on the healed node",
    );
    // A oneshot stopped while starting ends inactive or failed, but no longer runs.
    let st = is_active(&c, "agent2", "slow.service");
    assert!(st == "inactive" || st == "failed", "{st}");
}

// [itest->req~manager.sigterm~1]
#[test]
fn reconnect_manager_sigterm_lets_a_short_job_in_flight_finish_done() {
    if !hirte_tests::require_root(
        "reconnect_manager_sigterm_lets_a_short_job_in_flight_finish_done",
    ) {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    // A start job that takes about 2 s: well within the 5 s SHUTDOWN_GRACE.
    c.write_unit(
        "agent1",
        "short.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sleep 2\n",
    )
    .unwrap();
    let sig = Signals::manager(&c);
    let bus = c.system_bus().unwrap();
    let (job,): (dbus::Path<'static>,) = call(
        &bus,
        &node_path("agent1"),
        NODE_IFACE,
        "StartUnit",
        ("short.service", "replace"),
    )
    .unwrap();
    c.signal_manager(Signal::SIGTERM).unwrap();
    let (_, _, _, result) = sig
        .job_removed(&job, SOON)
        .expect("JobRemoved for the job in flight");
    assert_eq!(
        result,
        "done",
        "a job that ends within the shutdown grace must get its real result\n{}",
        c.manager_log()
    );
    assert_eq!(is_active(&c, "agent1", "short.service"), "active");
    let st = c
        .wait_manager_exit(std::time::Duration::from_secs(30))
        .expect("manager exits after SIGTERM");
    assert!(st.success(), "{st:?}");
}

/// A start job that takes a while, but ends by itself.
const TEN_SECOND_START: &str =
    "[Unit]\nDescription=Ten seconds to start\n[Service]\nType=oneshot\nExecStart=/bin/sleep 10\n";

fn systemd_jobs(c: &Cluster, node: &str) -> String {
    stdout(&c.systemctl(node, &["list-jobs", "--no-legend"]))
}

// H-A6: the restarted manager numbers its jobs from 1 again; the end of a systemd job the
// old manager asked for must not end the new manager's job with the same id.
// [itest->req~agent.job-done~1]
#[test]
fn reconnect_a_job_of_the_old_manager_does_not_end_the_new_managers_job_with_its_id() {
    if !hirte_tests::require_root(
        "reconnect_a_job_of_the_old_manager_does_not_end_the_new_managers_job_with_its_id",
    ) {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    c.write_unit("agent1", "old.service", TEN_SECOND_START)
        .unwrap();
    c.write_unit("agent1", "new.service", SLOW_UNIT).unwrap();
    let bus = c.system_bus().unwrap();
    let start = |bus: &dbus::blocking::Connection, unit: &str| {
        let (job,): (dbus::Path<'static>,) = call(
            bus,
            &node_path("agent1"),
            NODE_IFACE,
            "StartUnit",
            (unit, "replace"),
        )
        .unwrap();
        job.to_string()
    };
    let old_job = start(&bus, "old.service");
    c.kill_manager(Signal::SIGKILL)
        .expect("manager was running");
    c.start_manager().unwrap();
    c.wait_all_online(SOON)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
    let sig = Signals::manager(&c);
    let new_job = start(&bus, "new.service");
    assert_eq!(new_job, old_job, "the restarted manager reuses the job id");
    assert!(
        systemd_jobs(&c, "agent1").contains("old.service"),
        "the old job ended before the new one started: the case is not shown"
    );
    // The old systemd job ends while the new manager's job with its id runs.
    c.wait_for("old.service's start job to end", SOON, || {
        !systemd_jobs(&c, "agent1").contains("old.service")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
    let removed = sig.job_removed(&new_job, std::time::Duration::from_secs(3));
    assert!(
        removed.is_none(),
        "the new manager's job {new_job} was ended by the old job's result: {removed:?}"
    );
    let state: String = prop(&bus, &new_job, JOB_IFACE, "State").unwrap();
    assert_eq!(state, "running");
    assert!(systemd_jobs(&c, "agent1").contains("new.service"));
    let log = c.agent_log("agent1");
    assert!(
        log.contains("belonged to an earlier manager session; result not sent"),
        "{log}"
    );
}

/// The manager's port in `ss` output of `agent1`'s established connections to `ip`.
fn agent1_connected_to(c: &Cluster, ip: &str) -> bool {
    let out = c.node_shell(
        "agent1",
        &format!("ss -Htn state established dst {ip} dport = :{MANAGER_PORT}"),
    );
    !stdout(&out).trim().is_empty()
}

/// `getent hosts NAME` inside `agent1`.
fn agent1_lookup(c: &Cluster, name: &str) -> String {
    stdout(&c.node_shell("agent1", &format!("getent hosts {name}")))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

// [itest->req~agent.reconnect~1]
#[test]
fn reconnect_agent_looks_up_manager_host_anew_and_follows_a_moved_name() {
    if !hirte_tests::require_root(
        "reconnect_agent_looks_up_manager_host_anew_and_follows_a_moved_name",
    ) {
        return;
    }
    const NAME: &str = "hirte-manager.test";
    // A: a second address of the manager's node (the manager listens on 0.0.0.0);
    // B: its own address. Node addresses end at .250, so .251 is free.
    const A: &str = "10.200.0.251";
    let mut spec = ClusterSpec::new(&["primary", "agent1"]);
    spec.start_agents = false;
    let mut c = Cluster::start(spec).unwrap();
    let b = c.node_ip("primary").unwrap();
    ok(
        &c.node_shell("primary", &format!("ip addr add {A}/24 dev eth0")),
        "add address A to the manager's node",
    );
    // agent1's own /etc/hosts: a file of the test bind-mounted over it in agent1's mount
    // namespace only. glibc reads /etc/hosts on every lookup; the file is rewritten in
    // place (same inode), so the bind mount shows each new content.
    let hosts = c.node_dir("agent1").unwrap().join("hosts");
    let map = |ip: &str| {
        std::fs::write(&hosts, format!("127.0.0.1 localhost\n{ip} {NAME}\n")).unwrap();
    };
    map(A);
    ok(
        &c.node_shell(
            "agent1",
            &format!("mount --bind {} /etc/hosts", hosts.display()),
        ),
        "bind-mount agent1's /etc/hosts",
    );
    assert_eq!(
        agent1_lookup(&c, NAME),
        A,
        "{NAME} in agent1 before the move"
    );
    std::fs::write(
        c.node_config_dir("agent1")
            .unwrap()
            .join("agent.conf.d/50-name.conf"),
        format!("[hirte-agent]\nManagerHost={NAME}\n"),
    )
    .unwrap();
    c.start_agent("primary").unwrap();
    c.start_agent("agent1").unwrap();
    c.wait_node_state("agent1", "online", SOON).unwrap();
    assert!(
        agent1_connected_to(&c, A),
        "agent1 is online but not connected to {A}"
    );

    // The name moves to B, and A goes away with the old manager: only an agent that looks
    // the name up again on its next attempt finds the manager (one that kept A retries a
    // dead address for ever).
    map(&b);
    assert_eq!(
        agent1_lookup(&c, NAME),
        b,
        "{NAME} in agent1 after the move"
    );
    c.kill_manager(Signal::SIGKILL)
        .expect("manager was running");
    ok(
        &c.node_shell("primary", &format!("ip addr del {A}/24 dev eth0")),
        "remove address A",
    );
    c.start_manager().unwrap();
    c.wait_node_state("agent1", "online", SOON)
        .unwrap_or_else(|e| panic!("agent1 did not follow {NAME} to {b}: {e}"));
    assert!(
        agent1_connected_to(&c, &b),
        "agent1 is online but not connected to {b}"
    );
    let alog = c.agent_log("agent1");
    assert!(
        count(&alog, "Connected to manager at") >= 2,
        "agent1 did not register twice:\n{alog}"
    );
}
