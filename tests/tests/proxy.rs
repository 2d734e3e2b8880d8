//! Cross-node dependencies (requirements/proxy.md): units on one node that need a service on
//! another through `hirte-proxy@NODE_UNIT.service` (requesting node) and
//! `hirte-dep@UNIT.service` (target node), with real systemd, agents, manager and helper. The
//! harness installs both user templates on every node, the helper's output in
//! `<node>/proxy.log`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use dbus::blocking::Connection;
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::MAX_AGENT_PROXIES;
use hirte_common::protocol::error::{ACTIVATION_FAILED, BUSY, INVALID_ARGS};
use hirte_tests::{Cluster, ClusterSpec, Signal};

const AGENT_NAME: &str = "org.containers.hirte.Agent";
const AGENT_PATH: &str = "/org/containers/hirte";
const AGENT_IFACE: &str = "org.containers.hirte.Agent";

/// `hirte-proxy@NODE_UNIT.service` for `unit` (with `.service`) on `node`.
fn proxy(node: &str, unit: &str) -> String {
    format!(
        "hirte-proxy@{node}_{}.service",
        unit.strip_suffix(".service").unwrap()
    )
}

/// `hirte-dep@UNIT.service` for `unit` (with `.service`).
fn dep(unit: &str) -> String {
    format!("hirte-dep@{unit}")
}

/// A cluster whose manager allows each `(from, to)`: `AllowDependenciesOn=to` in `[node from]`.
fn spec(nodes: &[&str], allow: &[(&str, &str)]) -> ClusterSpec {
    let mut s = ClusterSpec::new(nodes);
    for (from, to) in allow {
        s.manager_sections
            .push_str(&format!("[node {from}]\nAllowDependenciesOn={to}\n"));
    }
    s
}

/// A unit that needs `target` on `node` with `kind=` (`Wants`, `Requires`, `BindsTo`) and
/// `After=` on its proxy, and runs `exec`.
fn consumer(kind: &str, node: &str, target: &str, service: &str) -> String {
    let p = proxy(node, target);
    format!("[Unit]\nDescription=Needs {target} on {node}\n{kind}={p}\nAfter={p}\n[Service]\n{service}\n")
}

const SLEEPING: &str = "ExecStart=/bin/sleep infinity";

/// Waits until `systemctl --user is-active unit` on `node` is one of `want`.
#[track_caller]
fn wait_state(c: &Cluster, node: &str, unit: &str, want: &[&str]) {
    let mut last = String::new();
    let r = c.wait_for(&format!("{unit} on {node}"), SOON, || {
        last = is_active(c, node, unit);
        want.contains(&last.as_str())
    });
    if r.is_err() {
        panic!(
            "{unit} on {node} is {last:?}, not one of {want:?}\n{}\n{}",
            stdout(&c.systemctl(node, &["status", unit])),
            c.log_tails()
        );
    }
}

#[track_caller]
fn assert_state(c: &Cluster, node: &str, unit: &str, want: &str) {
    let st = is_active(c, node, unit);
    assert_eq!(st, want, "{unit} on {node}\n{}", c.log_tails());
}

#[track_caller]
fn start_ok(c: &Cluster, node: &str, unit: &str) {
    let o = c.systemctl(node, &["start", unit]);
    assert!(
        o.status.success(),
        "start {unit} on {node}: {}\n{}",
        show(&o),
        c.log_tails()
    );
}

/// Starts `unit` on `node`, which must fail; returns the helper's `cannot start` line from
/// the node's proxy log that names `target`.
#[track_caller]
fn start_fails(c: &Cluster, node: &str, unit: &str, target: &str) -> String {
    let o = c.systemctl(node, &["start", unit]);
    assert!(
        !o.status.success(),
        "start {unit} on {node} succeeded\n{}",
        c.log_tails()
    );
    let log = c.proxy_log(node);
    log.lines()
        .find(|l| l.contains("cannot start") && l.contains(target))
        .unwrap_or_else(|| {
            panic!(
                "no 'cannot start' line for {target} in {node}'s proxy log:\n{log}\n{}",
                c.log_tails()
            )
        })
        .to_string()
}

/// The manager's WARN lines.
fn manager_warnings(c: &Cluster) -> Vec<String> {
    c.manager_log()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("WARN"))
        .map(str::to_string)
        .collect()
}

/// The manager's line containing `needle`: one that the documented
/// `journalctl -u hirte | grep -E 'prox|needs'` finds, with the fields `NODE=` and `UNIT=`.
#[track_caller]
fn manager_proxy_line(c: &Cluster, needle: &str, node: &str, unit: &str) {
    let log = c.manager_log();
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no manager line with {needle:?}:\n{log}"));
    assert!(line.contains("prox") || line.contains("needs"), "{line}");
    assert!(line.contains(&format!("NODE={node}")), "{line}");
    assert!(line.contains(&format!("UNIT={unit}")), "{line}");
}

/// A blocking call on the node's agent; the D-Bus error as (name, message).
fn agent_call(
    bus: &Connection,
    member: &str,
    args: (&str, &str, &str),
) -> Result<(), (String, String)> {
    bus.with_proxy(AGENT_NAME, AGENT_PATH, Duration::from_secs(10))
        .method_call::<(), _, _, _>(AGENT_IFACE, member, args)
        .map_err(|e: dbus::Error| {
            (
                e.name().unwrap_or("").to_string(),
                e.message().unwrap_or("").to_string(),
            )
        })
}

/// Sends `CreateProxy` without waiting for the answer; returns the call's serial.
fn create_no_wait(bus: &Connection, local: &str, node: &str, unit: &str) -> u32 {
    let m = Message::new_method_call(AGENT_NAME, AGENT_PATH, AGENT_IFACE, "CreateProxy")
        .unwrap()
        .append3(local, node, unit);
    bus.channel().send(m).expect("sending CreateProxy")
}

/// Collects answers (method returns and errors) to our calls until `done` says so or
/// `timeout` passes; returns them as (reply serial, error name or "" for success, message).
fn answers(
    bus: &Connection,
    timeout: Duration,
    mut done: impl FnMut(&[(u32, String, String)]) -> bool,
) -> Vec<(u32, String, String)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Ok(Some(mut m)) = bus.channel().blocking_pop_message(left) {
            let Some(serial) = m.get_reply_serial() else {
                continue;
            };
            match m.msg_type() {
                MessageType::MethodReturn => got.push((serial, String::new(), String::new())),
                MessageType::Error => {
                    let e = m.as_result().err();
                    let field = |f: fn(&dbus::Error) -> Option<&str>| {
                        e.as_ref().and_then(f).unwrap_or("").to_string()
                    };
                    got.push((
                        serial,
                        field(dbus::Error::name),
                        field(dbus::Error::message),
                    ));
                }
                _ => {}
            }
        }
    }
    got
}

/// Waits until the agent owns its name on the node bus.
#[track_caller]
fn wait_agent_on_bus(c: &Cluster, bus: &Connection, node: &str) {
    let r = c.wait_for("the agent's bus name", SOON, || {
        hirte_tests::name_has_owner(bus, AGENT_NAME).unwrap_or(false)
    });
    if r.is_err() {
        panic!("{node}: agent never owned {AGENT_NAME}\n{}", c.log_tails());
    }
}

// ---------------------------------------------------------------------------------------

// [itest->req~proxy.templates~1]
// [itest->req~proxy.helper~1]
// [itest->req~proxy.agent-api~1]
// [itest->req~proxy.dep~1]
// [itest->req~proxy.allow~1]
#[test]
fn proxy_consumer_starts_after_its_target_is_active_on_the_other_node() {
    if !hirte_tests::require_root(
        "proxy_consumer_starts_after_its_target_is_active_on_the_other_node",
    ) {
        return;
    }
    let c = Cluster::start(spec(&["agent1", "agent2"], &[("agent1", "agent2")])).unwrap();
    let mark = c.dir().join("target-ready");
    // The target takes a second to become active; the consumer fails unless it runs after.
    c.write_unit(
        "agent2",
        "target.service",
        &format!(
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'sleep 1; touch {}'\n",
            mark.display()
        ),
    )
    .unwrap();
    c.write_unit(
        "agent1",
        "consumer.service",
        &consumer(
            "Wants",
            "agent2",
            "target.service",
            &format!(
                "Type=oneshot\nRemainAfterExit=yes\nExecStart=/bin/test -e {}",
                mark.display()
            ),
        ),
    )
    .unwrap();

    start_ok(&c, "agent1", "consumer.service");
    let p = proxy("agent2", "target.service");
    assert_state(&c, "agent1", "consumer.service", "active");
    assert_state(&c, "agent1", &p, "active");
    assert_state(&c, "agent2", "target.service", "active");
    assert_state(&c, "agent2", &dep("target.service"), "active");
    assert!(mark.exists());
    // Same host, same monotonic clock: the consumer ran after the target was active.
    let t_target: u64 = unit_prop(
        &c,
        "agent2",
        "target.service",
        "ActiveEnterTimestampMonotonic",
    )
    .parse()
    .unwrap();
    let t_consumer: u64 = unit_prop(
        &c,
        "agent1",
        "consumer.service",
        "ExecMainStartTimestampMonotonic",
    )
    .parse()
    .unwrap();
    assert!(
        t_target > 0 && t_consumer >= t_target,
        "{t_consumer} < {t_target}"
    );
    // Nothing failed on the way: the helper printed nothing.
    assert!(
        !c.proxy_log("agent1").contains("cannot"),
        "{}",
        c.proxy_log("agent1")
    );

    // The last user gone, the proxy stops (StopWhenUnneeded) and releases the anchor; the
    // target itself stays (it has no StopWhenUnneeded=).
    ok(
        &c.systemctl("agent1", &["stop", "consumer.service"]),
        "stop consumer",
    );
    wait_state(&c, "agent1", &p, &["inactive"]);
    wait_state(&c, "agent2", &dep("target.service"), &["inactive"]);
    assert_state(&c, "agent2", "target.service", "active");
}

// [itest->req~proxy.allow~1]
// [itest->req~proxy.helper~1]
#[test]
fn proxy_is_refused_unless_allow_dependencies_on_names_the_target_node() {
    if !hirte_tests::require_root(
        "proxy_is_refused_unless_allow_dependencies_on_names_the_target_node",
    ) {
        return;
    }
    // agent2 may depend on agent1, not the other way round: nothing allows agent1 -> agent2.
    let c = Cluster::start(spec(&["agent1", "agent2"], &[("agent2", "agent1")])).unwrap();
    c.write_unit("agent2", "target.service", SLEEP_UNIT)
        .unwrap();
    c.write_unit(
        "agent1",
        "needs.service",
        &consumer("Requires", "agent2", "target.service", SLEEPING),
    )
    .unwrap();
    let p = proxy("agent2", "target.service");

    // The proxy fails, so a unit that Requires= it does not start.
    let o = c.systemctl("agent1", &["start", "needs.service"]);
    assert!(!o.status.success(), "{}", show(&o));
    assert_state(&c, "agent1", &p, "failed");
    assert!(
        ["inactive", "failed"].contains(&is_active(&c, "agent1", "needs.service").as_str()),
        "needs.service ran"
    );
    // The helper's one line names node, unit and the refusal.
    let line = start_fails(&c, "agent1", &p, "target.service");
    assert!(line.contains("agent2"), "{line}");
    assert!(line.to_lowercase().contains("allow"), "{line}");
    // Nothing was started on agent2.
    assert_state(&c, "agent2", "target.service", "inactive");
    assert_state(&c, "agent2", &dep("target.service"), "inactive");
    // The manager said so at warning level.
    let warns = manager_warnings(&c);
    assert!(
        warns
            .iter()
            .any(|l| l.contains("agent1") && l.contains("agent2") && l.contains("target.service")),
        "no warning about the refused proxy: {warns:#?}"
    );
}

// [itest->req~proxy.helper~1]
// [itest->req~proxy.dep~1]
// [itest->req~proxy.refcount~1]
// [itest->req~proxy.agent-api~1]
#[test]
fn proxy_fails_with_a_reason_for_a_missing_or_failing_target_and_can_be_retried() {
    if !hirte_tests::require_root(
        "proxy_fails_with_a_reason_for_a_missing_or_failing_target_and_can_be_retried",
    ) {
        return;
    }
    let c = Cluster::start(spec(&["agent1", "agent2"], &[("agent1", "agent2")])).unwrap();

    // No such unit on agent2.
    let p = proxy("agent2", "nosuch.service");
    let line = start_fails(&c, "agent1", &p, "nosuch.service");
    assert!(line.contains("agent2"), "{line}");
    assert_state(&c, "agent1", &p, "failed");
    assert_state(&c, "agent2", &dep("nosuch.service"), "inactive");

    // A target whose start fails: the anchor's job fails, the proxy with it.
    c.write_unit("agent2", "broken.service", FAILING_UNIT)
        .unwrap();
    let p = proxy("agent2", "broken.service");
    let line = start_fails(&c, "agent1", &p, "broken.service");
    assert!(line.contains("agent2"), "{line}");
    assert!(
        line.contains("dependency") || line.contains("fail"),
        "no cause in {line:?}"
    );
    assert_state(&c, "agent1", &p, "failed");
    assert_state(&c, "agent2", "broken.service", "failed");
    assert!(
        ["inactive", "failed"].contains(&is_active(&c, "agent2", &dep("broken.service")).as_str())
    );

    // The failed proxy was forgotten everywhere: once the target is fixed, a new start works.
    c.write_unit(
        "agent2",
        "broken.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
    )
    .unwrap();
    ok(
        &c.systemctl("agent2", &["reset-failed", "broken.service"]),
        "reset-failed",
    );
    ok(
        &c.systemctl("agent1", &["reset-failed", &p]),
        "reset-failed",
    );
    // (A proxy started on its own stops at once: it is StopWhenUnneeded=.)
    c.write_unit(
        "agent1",
        "retry.service",
        &consumer("Requires", "agent2", "broken.service", SLEEPING),
    )
    .unwrap();
    start_ok(&c, "agent1", "retry.service");
    assert_state(&c, "agent1", &p, "active");
    assert_state(&c, "agent2", "broken.service", "active");
    assert_state(&c, "agent2", &dep("broken.service"), "active");
}

// [itest->req~proxy.target-stopped~1]
// [itest->req~proxy.refcount~1]
#[test]
fn proxy_target_stopped_on_its_node_stops_the_proxy_and_bound_units() {
    if !hirte_tests::require_root(
        "proxy_target_stopped_on_its_node_stops_the_proxy_and_bound_units",
    ) {
        return;
    }
    let c = Cluster::start(spec(&["agent1", "agent2"], &[("agent1", "agent2")])).unwrap();
    c.write_unit("agent2", "target.service", SLEEP_UNIT)
        .unwrap();
    c.write_unit(
        "agent1",
        "bound.service",
        &consumer("BindsTo", "agent2", "target.service", SLEEPING),
    )
    .unwrap();
    let p = proxy("agent2", "target.service");
    start_ok(&c, "agent1", "bound.service");
    assert_state(&c, "agent2", "target.service", "active");
    assert_state(&c, "agent1", &p, "active");

    ok(
        &c.hirtectl(&["stop", "agent2", "target.service"]),
        "hirtectl stop agent2 target.service",
    );
    // A stop, not a failure: the proxy ends inactive, and takes the bound unit with it.
    wait_state(&c, "agent1", &p, &["inactive"]);
    wait_state(&c, "agent1", "bound.service", &["inactive"]);
    assert_state(&c, "agent2", &dep("target.service"), "inactive");
    assert_state(&c, "agent2", "target.service", "inactive");
}

// [itest->req~proxy.refcount~1]
#[test]
fn proxy_target_needed_by_two_nodes_stops_only_with_its_last_user() {
    if !hirte_tests::require_root("proxy_target_needed_by_two_nodes_stops_only_with_its_last_user")
    {
        return;
    }
    let c = Cluster::start(spec(
        &["agent1", "agent2", "agent3"],
        &[("agent1", "agent2"), ("agent3", "agent2")],
    ))
    .unwrap();
    c.write_unit(
        "agent2",
        "shared.service",
        "[Unit]\nStopWhenUnneeded=yes\n[Service]\nExecStart=/bin/sleep infinity\n",
    )
    .unwrap();
    let user = consumer("Wants", "agent2", "shared.service", SLEEPING);
    c.write_unit("agent1", "user.service", &user).unwrap();
    c.write_unit("agent3", "user.service", &user).unwrap();
    let p = proxy("agent2", "shared.service");
    let d = dep("shared.service");
    start_ok(&c, "agent1", "user.service");
    start_ok(&c, "agent3", "user.service");
    assert_state(&c, "agent1", &p, "active");
    assert_state(&c, "agent3", &p, "active");
    assert_state(&c, "agent2", &d, "active");
    assert_state(&c, "agent2", "shared.service", "active");

    // One user goes: its proxy stops and is removed; the other still counts.
    ok(
        &c.systemctl("agent1", &["stop", "user.service"]),
        "stop on agent1",
    );
    wait_state(&c, "agent1", &p, &["inactive"]);
    // The manager reads agent1's link in order: once a call through it is answered, it has
    // seen ProxyRemoved; once one to agent2 is, agent2 has seen any StopDep sent before.
    ok(&c.hirtectl(&["list-units", "agent1"]), "list-units agent1");
    ok(&c.hirtectl(&["list-units", "agent2"]), "list-units agent2");
    // A StopDep would have queued a stop job by now: once agent2's systemd has no job left,
    // the anchor's state is final.
    c.wait_for("agent2's systemd without jobs", SOON, || {
        c.systemctl("agent2", &["list-jobs", "--no-legend"])
            .stdout
            .is_empty()
    })
    .unwrap();
    assert_state(&c, "agent2", &d, "active");
    assert_state(&c, "agent2", "shared.service", "active");
    assert_state(&c, "agent3", &p, "active");

    // The last user goes: the anchor goes, and the unneeded target with it.
    ok(
        &c.systemctl("agent3", &["stop", "user.service"]),
        "stop on agent3",
    );
    wait_state(&c, "agent3", &p, &["inactive"]);
    wait_state(&c, "agent2", &d, &["inactive"]);
    wait_state(&c, "agent2", "shared.service", &["inactive"]);
}

// [itest->req~proxy.refcount~1]
// [itest->req~proxy.dep~1]
// [itest->req~proxy.log~1]
#[test]
fn proxy_anchor_is_started_again_when_the_target_node_registers_again() {
    if !hirte_tests::require_root(
        "proxy_anchor_is_started_again_when_the_target_node_registers_again",
    ) {
        return;
    }
    let mut c = Cluster::start(spec(&["agent1", "agent2"], &[("agent1", "agent2")])).unwrap();
    c.write_unit("agent2", "target.service", SLEEP_UNIT)
        .unwrap();
    c.write_unit(
        "agent1",
        "consumer.service",
        &consumer("Wants", "agent2", "target.service", SLEEPING),
    )
    .unwrap();
    let p = proxy("agent2", "target.service");
    let d = dep("target.service");
    start_ok(&c, "agent1", "consumer.service");
    assert_state(&c, "agent2", &d, "active");

    // The target node's agent dies; meanwhile the anchor goes away there.
    c.kill_agent("agent2", Signal::SIGKILL);
    c.wait_node_state("agent2", "offline", SOON).unwrap();
    ok(&c.systemctl("agent2", &["stop", &d]), "stop the anchor");
    // An offline target node is not a stopped target: the proxy stays.
    assert_state(&c, "agent1", &p, "active");

    // Back online, the manager asks for the anchor again.
    c.start_agent("agent2").unwrap();
    c.wait_node_state("agent2", "online", SOON).unwrap();
    wait_state(&c, "agent2", &d, &["active"]);
    manager_proxy_line(
        &c,
        "Node 'agent2' registered: starting 'target.service' there for the proxies",
        "agent2",
        "target.service",
    );
    assert_state(&c, "agent2", "target.service", "active");
    assert_state(&c, "agent1", &p, "active");
    assert_state(&c, "agent1", "consumer.service", "active");
}

// [itest->req~proxy.refcount~1]
// [itest->req~proxy.agent-api~1]
// [itest->req~proxy.log~1]
#[test]
fn proxy_requesting_node_offline_releases_the_anchor_until_it_is_back() {
    if !hirte_tests::require_root(
        "proxy_requesting_node_offline_releases_the_anchor_until_it_is_back",
    ) {
        return;
    }
    // agent2 requests a service of agent1 (the manager's node), so its link can be cut.
    let mut s = spec(&["agent1", "agent2"], &[("agent2", "agent1")]);
    s.manager_conf = "NodeHeartbeatThreshold=3s\n".into();
    let mut c = Cluster::start(s).unwrap();
    c.write_unit("agent1", "target.service", SLEEP_UNIT)
        .unwrap();
    c.write_unit(
        "agent2",
        "consumer.service",
        &consumer("Wants", "agent1", "target.service", SLEEPING),
    )
    .unwrap();
    let p = proxy("agent1", "target.service");
    let d = dep("target.service");
    start_ok(&c, "agent2", "consumer.service");
    assert_state(&c, "agent1", &d, "active");

    // Partition: the manager drops agent2's proxy with the node, and the anchor with it.
    c.set_link("agent2", false).unwrap();
    c.wait_node_state("agent2", "offline", SOON).unwrap();
    wait_state(&c, "agent1", &d, &["inactive"]);
    manager_proxy_line(
        &c,
        "Node 'agent2' went offline: no proxy needs 'target.service' on node 'agent1'",
        "agent2",
        "target.service",
    );
    assert_state(&c, "agent2", &p, "active");
    // Healed: the agent announces its proxy again, the anchor comes back.
    c.set_link("agent2", true).unwrap();
    c.wait_node_state("agent2", "online", SOON).unwrap();
    wait_state(&c, "agent1", &d, &["active"]);

    // The requesting agent dies: the same release.
    c.kill_agent("agent2", Signal::SIGKILL);
    c.wait_node_state("agent2", "offline", SOON).unwrap();
    wait_state(&c, "agent1", &d, &["inactive"]);
    // A new agent takes over the proxy that is still active, and announces it: the anchor
    // comes back without touching the proxy.
    c.start_agent("agent2").unwrap();
    c.wait_node_state("agent2", "online", SOON).unwrap();
    wait_state(&c, "agent1", &d, &["active"]);
    assert!(
        c.agent_log("agent2").contains("taken over"),
        "{}",
        c.agent_log("agent2")
    );
    // Restarting the proxy goes through remove and create with the new agent.
    ok(
        &c.systemctl("agent2", &["restart", &p]),
        "restart the proxy",
    );
    assert_state(&c, "agent2", &p, "active");
    wait_state(&c, "agent1", &d, &["active"]);
    assert_state(&c, "agent1", "target.service", "active");
}

// [itest->req~proxy.agent-api~1]
// [itest->req~proxy.helper~1]
#[test]
fn proxy_local_api_and_helper_refuse_bad_input() {
    if !hirte_tests::require_root("proxy_local_api_and_helper_refuse_bad_input") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["agent1"])).unwrap();
    let bus = c.node_bus("agent1").unwrap();
    wait_agent_on_bus(&c, &bus, "agent1");
    let local = "hirte-proxy@agent2_db.service";
    for (what, args) in [
        ("invalid node name", (local, "no/such node", "db.service")),
        ("empty node name", (local, "", "db.service")),
        ("not a .service", (local, "agent2", "db.socket")),
        (
            "a template instance",
            ("hirte-proxy@agent2_a.service", "agent2", "a@b.service"),
        ),
        ("an empty unit", (local, "agent2", "")),
        (
            "an invalid local service",
            ("not a unit/", "agent2", "db.service"),
        ),
    ] {
        let err = agent_call(&bus, "CreateProxy", args).expect_err(what);
        assert_eq!(err.0, INVALID_ARGS, "{what}: {err:?}");
        assert!(!err.1.is_empty(), "{what}: no message");
    }
    // Removing what the agent does not know succeeds (a stop job must not fail for it).
    agent_call(&bus, "RemoveProxy", (local, "agent2", "db.service")).unwrap();
    let o = c.node_shell(
        "agent1",
        &format!(
            "{} --user remove agent2_db.service",
            c.bin_dir().join("hirte-proxy").display()
        ),
    );
    assert!(o.status.success(), "{}", show(&o));
    // The agent is still fine.
    assert_all_online(&c, &["agent1"]);

    // Usage errors: exit 2 before any call (the bus here does not exist).
    let helper = c.bin_dir().join("hirte-proxy");
    for args in [
        vec![],
        vec!["create"],
        vec!["frobnicate", "agent2_db.service"],
        vec!["--user", "create", "nounderscore.service"],
        vec!["--user", "create", "agent2_.service"],
        vec!["--user", "remove", "agent2_"],
    ] {
        let o = run_timeout(
            Command::new(&helper)
                .args(&args)
                .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")
                .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus"),
            Duration::from_secs(10),
        );
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", show(&o));
        let err = stderr(&o);
        assert!(!err.trim().is_empty(), "{args:?}: no usage text");
        assert!(!err.contains("local bus"), "{args:?} tried a call: {err}");
    }
}

// [itest->req~proxy.agent-api~1]
#[test]
fn proxy_agent_answers_busy_beyond_128_proxies_and_replaces_same_target() {
    if !hirte_tests::require_root(
        "proxy_agent_answers_busy_beyond_128_proxies_and_replaces_same_target",
    ) {
        return;
    }
    // No manager: every CreateProxy is recorded and waits for the link, unanswered.
    let mut s = ClusterSpec::new(&["agent1"]);
    s.start_manager = false;
    let c = Cluster::start(s).unwrap();
    let bus = c.node_bus("agent1").unwrap();
    wait_agent_on_bus(&c, &bus, "agent1");
    let local = |i: usize| format!("hirte-proxy@agent2_t{i}.service");
    let unit = |i: usize| format!("t{i}.service");
    let mut pending: Vec<u32> = (0..MAX_AGENT_PROXIES)
        .map(|i| create_no_wait(&bus, &local(i), "agent2", &unit(i)))
        .collect();
    let over = create_no_wait(&bus, &local(999), "agent2", &unit(999));
    let got = answers(&bus, SOON, |g| g.iter().any(|a| a.0 == over));
    let seen: HashSet<u32> = pending.iter().copied().collect();
    let early: Vec<_> = got.iter().filter(|a| seen.contains(&a.0)).collect();
    assert!(early.is_empty(), "answered before any manager: {early:?}");
    let a = got
        .iter()
        .find(|a| a.0 == over)
        .expect("no answer to the 129th CreateProxy");
    assert_eq!(a.1, BUSY, "129th: {a:?}");

    // The same node and unit again replaces the first (no new slot needed); the first caller
    // hears so.
    let again = create_no_wait(&bus, &local(0), "agent2", &unit(0));
    let got = answers(&bus, SOON, |g| g.iter().any(|a| a.0 == pending[0]));
    let first = got
        .iter()
        .find(|a| a.0 == pending[0])
        .expect("no answer to the replaced CreateProxy");
    assert_eq!(first.1, ACTIVATION_FAILED, "{first:?}");
    assert!(first.2.contains("replaced"), "{first:?}");
    assert!(
        !got.iter().any(|a| a.0 == again),
        "replacement answered: {got:?}"
    );
    pending[0] = again;

    // Removing one frees its slot for exactly one more.
    agent_call(&bus, "RemoveProxy", (&local(5), "agent2", &unit(5))).unwrap();
    let next = create_no_wait(&bus, &local(200), "agent2", &unit(200));
    let over = create_no_wait(&bus, &local(201), "agent2", &unit(201));
    let got = answers(&bus, SOON, |g| g.iter().any(|a| a.0 == over));
    assert!(
        !got.iter().any(|a| a.0 == next),
        "the freed slot was refused: {got:?}"
    );
    let a = got
        .iter()
        .find(|a| a.0 == over)
        .expect("no answer to the extra CreateProxy");
    assert_eq!(a.1, BUSY, "{a:?}");
    // The agent still serves its other members.
    use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
    let status: String = bus
        .with_proxy(AGENT_NAME, AGENT_PATH, Duration::from_secs(5))
        .get(AGENT_IFACE, "Status")
        .unwrap();
    assert_eq!(status, "offline");
}
