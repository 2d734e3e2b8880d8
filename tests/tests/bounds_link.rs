//! The manager's link write timeout: a registered peer that stops reading does not hold the
//! manager, its connection thread or other nodes; its link is closed after the bound.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::time::Duration;

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
