//! A registered node speaks only for itself (issue 11, item 6): a hostile fake agent that
//! registered under its own valid name sends messages about another node's jobs, units,
//! proxies and calls, and none of it reaches that node's state or its callers. The fake
//! agents are played by the test (raw link); the manager, the real agent and systemd are
//! real (see `hirte_tests`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use common::*;
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::protocol::{INTERNAL_AGENT_IFACE, INTERNAL_AGENT_PATH};
use hirte_tests::{Cluster, ClusterSpec};
use std::time::Duration;

fn agent_signal(member: &str) -> Message {
    Message::new_signal(INTERNAL_AGENT_PATH, INTERNAL_AGENT_IFACE, member).unwrap()
}

fn error(call: &Message, name: &str, text: &str) -> Message {
    call.error(
        &dbus::strings::ErrorName::new(name).unwrap(),
        &std::ffi::CString::new(text).unwrap(),
    )
}

/// The next method call the manager relays to a fake agent (heartbeat echoes skipped).
fn next_call(raw: &mut RawLink) -> Message {
    loop {
        let m = raw.read_msg(SOON).expect("a relayed call");
        if m.msg_type() == MessageType::MethodCall {
            return m;
        }
    }
}

// [itest->req~manager.node-isolation~1]
#[test]
fn hostile_registered_agent_cannot_touch_other_nodes_jobs_calls_units_or_proxies() {
    if !hirte_tests::require_root(
        "hostile_registered_agent_cannot_touch_other_nodes_jobs_calls_units_or_proxies",
    ) {
        return;
    }
    let mut spec = ClusterSpec::new(&["primary", "agent1"]);
    spec.start_manager = false;
    spec.start_agents = false;
    let mut c = Cluster::start(spec).unwrap();
    let etc = c.node_config_dir("primary").unwrap().join("hirte.conf.d");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("50-nodes.conf"),
        "[hirte]\nAllowedNodeNames=primary,agent1,evil,victim\n[node evil]\nAllowDependenciesOn=primary\n",
    )
    .unwrap();
    c.start_manager().unwrap();
    for n in ["primary", "agent1"] {
        c.start_agent(n).unwrap();
    }
    c.wait_node_state("agent1", "online", SOON).unwrap();
    c.write_unit(
        "agent1",
        "slow.service",
        "[Service]\nType=oneshot\nExecStart=/bin/sleep 60\n",
    )
    .unwrap();
    let bus = c.system_bus().unwrap();
    let signals = Signals::manager(&c);
    let mut evil = RawLink::connect(&c, "agent1");
    assert_eq!(
        evil.register("evil").unwrap().msg_type(),
        MessageType::MethodReturn
    );
    let mut victim = RawLink::connect(&c, "agent1");
    assert_eq!(
        victim.register("victim").unwrap().msg_type(),
        MessageType::MethodReturn
    );
    let mut serial = 100;
    let mut next = || {
        serial += 1;
        serial
    };

    // 1. Jobs: agent1's job in flight; evil claims it is done and changes its state.
    let (job,): (dbus::Path,) = call(
        &bus,
        &node_path("agent1"),
        NODE_IFACE,
        "StartUnit",
        ("slow.service", "replace"),
    )
    .unwrap();
    let job_id: u32 = job.rsplit('/').next().unwrap().parse().unwrap();
    evil.send_msg(
        agent_signal("JobStateChanged").append2(job_id, "waiting"),
        next(),
    )
    .unwrap();
    evil.send_msg(agent_signal("JobDone").append2(job_id, "done"), next())
        .unwrap();
    wait_manager_log(&c, "evil's JobDone refused", |l| {
        l.contains(&format!("Node 'evil' reported unknown job {job_id}"))
    });
    assert!(signals
        .job_removed(&job, Duration::from_millis(500))
        .is_none());
    let state: String = prop(&bus, job.as_ref(), JOB_IFACE, "State").unwrap();
    assert_eq!(state, "running", "evil changed agent1's job");

    for raw in [&mut evil, &mut victim] {
        raw.send_msg(heartbeat(), 2).unwrap();
    }

    // 2. Calls: a call relayed to victim; evil answers its serial first (a return and an
    //    error), then victim answers. The caller gets victim's answer.
    let bus_addr = c.bus_address();
    let caller = std::thread::spawn(move || {
        let conn = hirte_tests::connect_bus(&bus_addr).unwrap();
        let m =
            Message::new_method_call(BUS_NAME, node_path("victim"), NODE_IFACE, "GetUnitProperty")
                .unwrap()
                .append3("x.service", "org.freedesktop.systemd1.Unit", "ActiveState");
        conn.channel()
            .send_with_reply_and_block(m, Duration::from_secs(20))
            .map(|_| "ok".to_string())
            .unwrap_or_else(|e| e.name().unwrap_or("").to_string())
    });
    let relayed = next_call(&mut victim);
    evil.send_msg(relayed.method_return(), next()).unwrap();
    evil.send_msg(
        error(&relayed, "org.example.Error.Evil", "from evil"),
        next(),
    )
    .unwrap();
    let s = relayed.get_serial().unwrap();
    wait_manager_log(&c, "evil's answers ignored", |l| {
        l.matches(&format!(
            "Node 'evil' answered serial {s}, which has no call waiting"
        ))
        .count()
            >= 2
    });
    assert!(
        !caller.is_finished(),
        "evil's answer completed victim's call"
    );
    victim
        .send_msg(
            error(&relayed, "org.example.Error.Victim", "from victim"),
            next(),
        )
        .unwrap();
    assert_eq!(caller.join().unwrap(), "org.example.Error.Victim");

    for raw in [&mut evil, &mut victim] {
        raw.send_msg(heartbeat(), 3).unwrap();
    }

    // 3. Units: evil's unit signals are evil's; a monitor of victim's units sees none.
    let watch = Signals::new(
        &c,
        &["type='signal',sender='org.containers.hirte',interface='org.containers.hirte.Monitor'"],
    );
    let (monitor,): (dbus::Path,) = call(
        &watch.conn,
        MANAGER_PATH,
        MANAGER_IFACE,
        "CreateMonitor",
        (),
    )
    .unwrap();
    let _: (u32,) = call(
        &watch.conn,
        monitor.as_ref(),
        "org.containers.hirte.Monitor",
        "Subscribe",
        ("*", "x.service"),
    )
    .unwrap();
    // Both fake agents are asked to watch the unit; they answer as an agent would.
    for raw in [&mut evil, &mut victim] {
        let m = next_call(raw);
        raw.send_msg(m.method_return(), 4).unwrap();
    }
    evil.send_msg(
        agent_signal("UnitStateChanged")
            .append3("x.service", "active", "running")
            .append1("real"),
        next(),
    )
    .unwrap();
    let mut seen = Vec::new();
    watch
        .wait(SOON, |m| {
            if m.member().as_deref() != Some("UnitStateChanged") {
                return false;
            }
            let (node, unit): (String, String) = m.read2().unwrap();
            seen.push((node.clone(), unit));
            node == "evil"
        })
        .unwrap_or_else(|| panic!("evil's own unit event never reached the monitor: {seen:?}"));
    assert!(
        seen.iter().all(|(n, _)| n != "victim"),
        "evil's event was attributed to victim: {seen:?}"
    );

    // 4. Proxies: evil may depend on primary only; a proxy on victim is refused.
    evil.send_msg(
        agent_signal("ProxyNew").append3(
            "victim",
            "x.service",
            dbus::Path::new("/org/containers/hirte/internal/proxy/evil_x").unwrap(),
        ),
        next(),
    )
    .unwrap();
    wait_manager_log(&c, "evil's proxy on victim refused", |l| {
        l.contains("Refused proxy of node 'evil' for 'x.service' on node 'victim'")
    });
    assert!(
        !c.manager_log()
            .contains("needs 'x.service' on node 'victim'"),
        "a proxy of evil on victim was accepted"
    );

    // Nothing of it changed the other nodes.
    for n in ["primary", "agent1", "victim"] {
        assert_eq!(c.node_state(n).as_deref(), Some("online"), "{n}");
    }
}
