//! The manager's TCP port under abuse: raw clients that send garbage, empty or oversized
//! frames, the wrong first message, or nothing at all. Each such connection is closed; the
//! manager and the registered agents carry on.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::net::Shutdown;

use common::*;
use dbus::Message;
use hirte_common::bounds::{MAX_FRAME_SIZE, MAX_HANDSHAKE_FRAME_SIZE};
use hirte_common::frame::encode_message;
use hirte_tests::{Cluster, ClusterSpec};

const NODES: [&str; 3] = ["primary", "agent1", "agent2"];

/// The manager still serves: every node online, and a call relayed to an agent answers.
#[track_caller]
fn manager_still_serves(c: &Cluster, after: &str) {
    assert!(c.manager_pid().is_some(), "manager died after {after}");
    let out = c.hirtectl(&["list-nodes"]);
    ok(&out, &format!("list-nodes after {after}"));
    assert_all_online(c, &NODES);
    let units = ok(
        &c.hirtectl(&["list-units", "agent1"]),
        &format!("list-units agent1 after {after}"),
    );
    assert!(units.contains("default.target"), "{units}");
}

fn frame_of(payload: &[u8]) -> Vec<u8> {
    let mut v = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

// [itest->req~link.bad-frame~1]
// [itest->req~link.max-frame~1]
// [itest->req~link.register-first~1]
// [itest->req~link.framing~1]
// [itest->req~log.events~1]
#[test]
fn link_bad_frames_close_only_that_connection() {
    if !hirte_tests::require_root("link_bad_frames_close_only_that_connection") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let good = encode_message(
        &{
            let mut m = hirte_common::handshake::register_call("agent9").unwrap();
            m.set_serial(1);
            m
        },
        MAX_FRAME_SIZE,
    )
    .unwrap();

    let trailing = frame_of(&[&good[4..], &[0u8; 8][..]].concat());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // Text: its first 4 bytes read as a length of ~1.7 GB.
        (
            "text garbage",
            b"hello manager, this is not a frame\r\n".to_vec(),
            "exceeds the maximum",
        ),
        (
            "a frame of random bytes",
            frame_of(&[0xAB; 20]),
            "not a valid D-Bus message",
        ),
        ("a zero-length frame", vec![0, 0, 0, 0], "frame of length 0"),
        (
            "an oversized length before Register",
            u32::try_from(MAX_HANDSHAKE_FRAME_SIZE + 1)
                .unwrap()
                .to_be_bytes()
                .to_vec(),
            "exceeds the maximum of 4096",
        ),
        (
            "a message with trailing bytes in its frame",
            trailing,
            "holds a D-Bus message of",
        ),
    ];
    for (what, bytes, log_says) in cases {
        for from in ["primary", "agent2"] {
            let mut raw = RawLink::connect(&c, from);
            // The manager may close while we still write; that is fine.
            let _ = raw.send_raw(&bytes);
            assert!(
                raw.closed_within(SOON),
                "{what} from {from}: connection left open"
            );
            manager_still_serves(&c, what);
        }
        let log = c.manager_log();
        assert!(
            log.lines()
                .any(|l| l.contains("protocol error:") && l.contains(log_says)),
            "{what}: manager log lacks 'protocol error: ...{log_says}...':\n{log}"
        );
    }

    // A frame cut short by the peer closing its side.
    let mut raw = RawLink::connect(&c, "agent1");
    let _ = raw.send_raw(&good[..good.len() / 2]);
    raw.stream.shutdown(Shutdown::Write).unwrap();
    assert!(raw.closed_within(SOON), "truncated frame: left open");
    manager_still_serves(&c, "a truncated frame");

    // First message not Register: a signal is dropped with the link; a call gets an error first.
    let mut raw = RawLink::connect(&c, "agent1");
    raw.send_msg(heartbeat(), 1).unwrap();
    assert!(
        raw.closed_within(SOON),
        "Heartbeat before Register: left open"
    );
    let mut raw = RawLink::connect(&c, "agent1");
    let call = Message::new_method_call(
        "org.containers.hirte.Link",
        "/org/containers/hirte/internal",
        "org.containers.hirte.internal.Manager",
        "ListUnits",
    )
    .unwrap();
    raw.send_msg(call, 1).unwrap();
    let reply = raw.read_msg(SOON).expect("an error reply");
    assert_eq!(
        error_name(reply).as_deref(),
        Some("org.containers.hirte.Error.Protocol")
    );
    assert!(
        raw.closed_within(SOON),
        "ListUnits before Register: left open"
    );
    // Register with a name that is not a node name at all.
    let mut raw = RawLink::connect(&c, "agent1");
    let reply = raw.register("bad name/../x").expect("an error reply");
    assert!(error_name(reply).is_some());
    assert!(raw.closed_within(SOON), "bad node name: left open");
    let log = c.manager_log();
    assert!(log.contains("first message must be"), "{log}");
    assert!(log.contains("invalid node name"), "{log}");
    manager_still_serves(&c, "wrong first messages");
}

// [itest->req~link.register-timeout~1]
// [itest->req~link.bad-frame~1]
#[test]
fn link_silent_connections_are_closed_after_handshake_timeout() {
    if !hirte_tests::require_root("link_silent_connections_are_closed_after_handshake_timeout") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    c.write_unit("agent2", "work.service", SLEEP_UNIT).unwrap();
    // One sends nothing, one half a length prefix; both idle from here on.
    let mut silent = RawLink::connect(&c, "agent1");
    let mut partial = RawLink::connect(&c, "primary");
    partial.send_raw(&[0, 0]).unwrap();
    // While they hang in the handshake, the manager serves as usual.
    manager_still_serves(&c, "opening idle connections");
    ok(
        &c.hirtectl(&["start", "agent2", "work.service"]),
        "start during idle handshakes",
    );
    assert_eq!(is_active(&c, "agent2", "work.service"), "active");
    // HANDSHAKE_TIMEOUT is 5 s; allow for a loaded machine.
    let bound = std::time::Duration::from_secs(20);
    assert!(
        silent.closed_within(bound),
        "silent connection never closed"
    );
    assert!(
        partial.closed_within(bound),
        "half-header connection never closed"
    );
    let log = c.manager_log();
    assert!(log.contains("no Register within 5s"), "{log}");
    manager_still_serves(&c, "the handshake timeouts");
}

// [itest->req~link.max-frame~1]
// [itest->req~link.heartbeat~1]
// [itest->req~manager.heartbeat-threshold~1]
// [itest->req~link.register-first~1]
// [itest->req~log.events~1]
#[test]
fn link_registered_raw_peer_heartbeat_second_register_silence_and_oversize() {
    if !hirte_tests::require_root(
        "link_registered_raw_peer_heartbeat_second_register_silence_and_oversize",
    ) {
        return;
    }
    let mut spec = ClusterSpec::new(&["primary", "agent1", "agent2", "spare"]);
    spec.start_agents = false;
    // Agents beat every 1 s (harness default); 3 s without one means offline.
    spec.manager_conf = "NodeHeartbeatThreshold=3s\n".into();
    let mut c = Cluster::start(spec).unwrap();
    for n in NODES {
        c.start_agent(n).unwrap();
    }
    c.wait_all_online(SOON).unwrap();

    // A hand-made agent for "spare", from agent2's network.
    let mut raw = RawLink::connect(&c, "agent2");
    let reply = raw.register("spare").expect("Register answered");
    assert_eq!(
        reply.msg_type(),
        dbus::message::MessageType::MethodReturn,
        "{:?}",
        error_name(reply)
    );
    c.wait_node_state("spare", "online", SOON).unwrap();
    let bus = c.system_bus().unwrap();
    let ip: String = prop(&bus, &node_path("spare"), NODE_IFACE, "PeerIp").unwrap();
    assert_eq!(ip, "10.200.0.3");

    // The manager echoes a heartbeat.
    raw.send_msg(heartbeat(), 2).unwrap();
    let echo = raw.read_msg(SOON).expect("heartbeat echo");
    assert_eq!(echo.msg_type(), dbus::message::MessageType::Signal);
    assert_eq!(echo.member().as_deref(), Some("Heartbeat"));

    // A second Register on the same link is an error; the link and the node stay.
    raw.send_msg(hirte_common::handshake::register_call("spare").unwrap(), 3)
        .unwrap();
    let reply = raw.read_msg(SOON).expect("answer to the second Register");
    assert_eq!(
        error_name(reply).as_deref(),
        Some("org.containers.hirte.Error.Protocol")
    );
    assert!(c
        .manager_log()
        .contains("already registered on this connection"));
    // Agents may not call the manager otherwise either.
    let call = Message::new_method_call(
        "org.containers.hirte.Link",
        "/org/containers/hirte/internal",
        "org.containers.hirte.internal.Manager",
        "ListNodes",
    )
    .unwrap();
    raw.send_msg(call, 4).unwrap();
    let reply = raw.read_msg(SOON).expect("answer to ListNodes");
    assert_eq!(
        error_name(reply).as_deref(),
        Some("org.containers.hirte.Error.Protocol")
    );
    assert!(c.manager_log().contains("agents may not call 'ListNodes'"));
    assert_eq!(c.node_state("spare").as_deref(), Some("online"));

    // Silence: the manager drops the node after NodeHeartbeatThreshold and closes the link.
    c.wait_node_state("spare", "offline", SOON).unwrap();
    assert!(raw.closed_within(SOON), "silent registered link left open");
    wait_manager_log(&c, "the heartbeat timeout", |l| {
        l.contains("Agent 'spare' disconnected: no heartbeat for more than 3s")
    });
    assert_all_online(&c, &NODES);

    // Registered links may send up to MAX_FRAME_SIZE; one byte more closes the link.
    let mut raw = RawLink::connect(&c, "agent2");
    let reply = raw.register("spare").expect("Register answered");
    assert_eq!(reply.msg_type(), dbus::message::MessageType::MethodReturn);
    c.wait_node_state("spare", "online", SOON).unwrap();
    let _ = raw.send_raw(&u32::try_from(MAX_FRAME_SIZE + 1).unwrap().to_be_bytes());
    assert!(raw.closed_within(SOON), "oversized frame: link left open");
    c.wait_node_state("spare", "offline", SOON).unwrap();
    wait_manager_log(&c, "the oversize disconnect", |l| {
        l.contains("Agent 'spare' disconnected: protocol error: frame of 4194305 bytes exceeds the maximum of 4194304")
    });
    manager_still_serves(&c, "an oversized frame from a registered peer");
}

// [itest->req~bounds.connections~1]
// [itest->req~link.register-timeout~1]
#[test]
fn link_handshake_flood_is_bounded_and_slots_are_freed() {
    if !hirte_tests::require_root("link_handshake_flood_is_bounded_and_slots_are_freed") {
        return;
    }
    let mut spec = ClusterSpec::new(&["primary", "agent1", "agent2", "spare"]);
    spec.start_agents = false;
    let mut c = Cluster::start(spec).unwrap();
    for n in NODES {
        c.start_agent(n).unwrap();
    }
    c.wait_all_online(SOON).unwrap();

    // Fill every handshake slot (MAX_PENDING_HANDSHAKES) with idle connections.
    let accepted = |log: &str| {
        log.lines()
            .filter(|l| l.contains("DEBUG Connection ") && l.ends_with("from 10.200.0.3"))
            .count()
    };
    let before = accepted(&c.manager_log());
    let slots = hirte_common::bounds::MAX_PENDING_HANDSHAKES;
    let idle: Vec<RawLink> = (0..slots).map(|_| RawLink::connect(&c, "agent2")).collect();
    // The listener accepts asynchronously; wait until it has taken them all.
    wait_manager_log(&c, "all idle connections accepted", |l| {
        accepted(l) >= before + slots
    });
    // One more is closed at once, even a well-behaved one, and the refusal is logged.
    let mut extra = RawLink::connect(&c, "agent1");
    assert!(
        extra.closed_within(SOON),
        "connection beyond the bound left open"
    );
    wait_manager_log(&c, "the refusal", |l| {
        l.contains("Refused connection from 10.200.0.2: too many connections (64 handshaking")
    });
    // Registered nodes are served meanwhile.
    manager_still_serves(&c, "a handshake flood");

    // The idle ones time out (HANDSHAKE_TIMEOUT), which frees the slots.
    for mut l in idle {
        assert!(
            l.closed_within(std::time::Duration::from_secs(20)),
            "idle connection never closed"
        );
    }
    let mut raw = RawLink::connect(&c, "agent2");
    let reply = raw
        .register("spare")
        .expect("Register answered after the flood");
    assert_eq!(reply.msg_type(), dbus::message::MessageType::MethodReturn);
    c.wait_node_state("spare", "online", SOON).unwrap();
    manager_still_serves(&c, "the flood's end");
}

// [itest->req~link.register-timeout~1]
#[test]
fn link_trickled_register_is_closed_at_the_handshake_deadline() {
    if !hirte_tests::require_root("link_trickled_register_is_closed_at_the_handshake_deadline") {
        return;
    }
    let mut spec = ClusterSpec::new(&["primary", "agent1", "agent2", "spare"]);
    spec.start_agents = false;
    let mut c = Cluster::start(spec).unwrap();
    for n in NODES {
        c.start_agent(n).unwrap();
    }
    c.wait_all_online(SOON).unwrap();
    let mut m = hirte_common::handshake::register_call("spare").unwrap();
    m.set_serial(1);
    let frame = encode_message(&m, MAX_FRAME_SIZE).unwrap();
    let mut raw = RawLink::connect(&c, "agent2");
    let mut writer = raw.stream.try_clone().unwrap();
    // One byte every 200 ms: the whole Register would take far longer than 5 s.
    let t = std::thread::spawn(move || {
        use std::io::Write;
        for b in frame {
            if writer.write_all(&[b]).is_err() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        false
    });
    assert!(
        raw.closed_within(std::time::Duration::from_secs(20)),
        "trickling connection not closed"
    );
    let _ = raw.stream.shutdown(Shutdown::Both);
    let _ = t.join();
    assert_eq!(c.node_state("spare").as_deref(), Some("offline"));
    assert!(c.manager_log().contains("no Register within 5s"));
    manager_still_serves(&c, "a trickled Register");
}
