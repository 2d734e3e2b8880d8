//! The manager's link write timeout: a registered peer that stops reading does not hold the
//! manager, its connection thread or other nodes; its link is closed after the bound.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::time::{Duration, Instant};

use common::*;
use dbus::channel::Sender;
use hirte_tests::{Cluster, ClusterSpec};

// [itest->req~link.bad-frame~1]
// [itest->req~bounds.queues~1]
#[test]
fn bounds_link_peer_that_stops_reading_is_closed_after_the_write_timeout() {
    if !hirte_tests::require_root(
        "bounds_link_peer_that_stops_reading_is_closed_after_the_write_timeout",
    ) {
        return;
    }
    let mut spec = ClusterSpec::new(&["primary", "agent1", "spare"]);
    spec.start_agents = false;
    // Silence alone must not end the link within the test: only the write timeout may.
    spec.manager_conf = "NodeHeartbeatThreshold=1min\nAgentCallTimeout=1min\n".into();
    let mut c = Cluster::start(spec).unwrap();
    for n in ["primary", "agent1"] {
        c.start_agent(n).unwrap();
    }
    let mut raw = RawLink::connect(&c, "agent1");
    raw.register("spare").expect("Register answered");
    c.wait_node_state("spare", "online", Duration::from_secs(10))
        .unwrap();

    // 64 calls of 1 MiB each for "spare", which never reads: far more than the socket
    // buffers hold, so the manager's write to it blocks until LINK_WRITE_TIMEOUT (5 s).
    let bus = c.system_bus().unwrap();
    let big = "x".repeat(1024 * 1024);
    for serial in 0..64 {
        let msg = dbus::Message::new_method_call(
            "org.containers.hirte",
            node_path("spare"),
            "org.containers.hirte.Node",
            "GetUnitFileState",
        )
        .unwrap()
        .append1(big.as_str());
        bus.send(msg).unwrap_or_else(|()| panic!("send {serial}"));
    }
    // Meanwhile the manager and the other nodes keep answering.
    let out = c.hirtectl(&["list-units", "agent1"]);
    assert!(out.status.success(), "{}", show(&out));

    c.wait_node_state("spare", "offline", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
    let log = c.manager_log();
    let line = log
        .lines()
        .find(|l| l.contains("Agent 'spare' disconnected"))
        .unwrap_or_else(|| panic!("no disconnect line\n{log}"));
    assert!(line.contains("I/O error"), "{line}");
    assert_eq!(c.node_state("agent1").as_deref(), Some("online"));
    drop(raw);
}

/// `CONNECT_TIMEOUT` in common/src/bounds.rs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `ip ARGS` on the host; panics with its output when it fails.
fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    ok(&out, &format!("ip {}", args.join(" ")))
}

// [itest->req~agent.reconnect~1]
#[test]
fn bounds_link_agent_connect_to_a_manager_dropping_syns_times_out_then_retries() {
    if !hirte_tests::require_root(
        "bounds_link_agent_connect_to_a_manager_dropping_syns_times_out_then_retries",
    ) {
        return;
    }
    let mut spec = ClusterSpec::new(&["primary", "n1"]);
    spec.start_agents = false;
    let mut c = Cluster::start(spec).unwrap();
    let (ns0, ns1) = (
        c.node_netns("primary").unwrap(),
        c.node_netns("n1").unwrap(),
    );
    let manager_ip = c.node_ip("primary").unwrap();
    // A permanent neighbour entry for the manager: with the cable pulled, an ARP lookup
    // would fail after 3 probes (3 s) with "No route to host", racing the connect timeout;
    // with it, the SYNs are silently dropped and only the timeout can end the attempt.
    let link = ip(&["-n", &ns0, "-o", "link", "show", "eth0"]);
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {link}"))
        .to_string();
    ip(&[
        "-n",
        &ns1,
        "neigh",
        "replace",
        &manager_ip,
        "lladdr",
        &mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    c.set_link("n1", false).unwrap();

    let t0 = Instant::now();
    c.start_agent("n1").unwrap();
    let failed =
        format!("cannot connect: {manager_ip}:2020: connection timed out; retrying every 500ms");
    c.wait_for("the first connect attempt to time out", SOON, || {
        c.agent_log("n1")
            .lines()
            .any(|l| l.contains("Cannot reach manager at") && l.contains(&failed))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
    let first = t0.elapsed();
    // The next attempt (ReconnectInterval = 500 ms later) ends the same way.
    let again = format!(
        "Still cannot reach the manager: cannot connect: {manager_ip}:2020: connection timed out"
    );
    c.wait_for("the second connect attempt to time out", SOON, || {
        c.agent_log("n1").contains(&again)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
    let second = t0.elapsed();
    assert!(
        first >= CONNECT_TIMEOUT - Duration::from_millis(500),
        "first attempt failed after {first:?}"
    );
    hirte_tests::assert_within(
        "req~agent.reconnect~1",
        "first connect to a SYN-dropping manager given up (CONNECT_TIMEOUT 3 s)",
        first,
        CONNECT_TIMEOUT,
        Duration::from_secs(1),
    );
    assert!(
        second - first >= CONNECT_TIMEOUT,
        "second attempt failed {:?} after the first",
        second - first
    );
    assert_eq!(c.node_state("n1").as_deref(), Some("offline"));

    // The drop is lifted: an attempt after that connects and the node comes online.
    let t1 = Instant::now();
    c.set_link("n1", true).unwrap();
    c.wait_node_state("n1", "online", SOON).unwrap();
    let heal = t1.elapsed();
    assert!(c.agent_log("n1").contains("Connected to manager at"));
    eprintln!(
        "FIGURE connect timeout: first attempt failed after {first:?}, second {:?} later; online {heal:?} after the drop was lifted",
        second - first
    );
}
