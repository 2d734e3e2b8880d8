//! Registration of agents with the manager: accepted names, refused names, duplicates.
//! Real manager, agents and systemd per node (see `hirte_tests`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use common::*;
use hirte_tests::{Cluster, ClusterSpec};

const GUIDE_NODES: [&str; 3] = ["primary", "agent1", "agent2"];

/// Starts the manager and the three guide nodes' agents; `extra` nodes get no agent yet.
fn guide_cluster_with(extra: &[&str]) -> Cluster {
    let mut nodes: Vec<&str> = GUIDE_NODES.to_vec();
    nodes.extend_from_slice(extra);
    let mut spec = ClusterSpec::new(&nodes);
    spec.start_agents = false;
    let mut c = Cluster::start(spec).unwrap_or_else(|e| panic!("cluster start: {e}"));
    for n in GUIDE_NODES {
        c.start_agent(n).unwrap();
    }
    c.wait_all_online(SOON)
        .unwrap_or_else(|e| panic!("guide nodes online: {e}"));
    c
}

/// Makes `node`'s agent register as `name` (a drop-in in its `agent.conf.d/`).
fn set_agent_node_name(c: &Cluster, node: &str, name: &str) {
    let dir = c.node_config_dir(node).unwrap().join("agent.conf.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("50-node-name.conf"),
        format!("[hirte-agent]\nNodeName={name}\n"),
    )
    .unwrap();
}

// [itest->req~manager.register~1]
// [itest->req~agent.register~1]
// [itest->req~log.events~1]
// [itest->req~ctl.list-nodes~1]
#[test]
fn registration_guide_nodes_online_and_connect_logged_with_ip() {
    if !hirte_tests::require_root("registration_guide_nodes_online_and_connect_logged_with_ip") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&GUIDE_NODES)).unwrap();
    let out = c.hirtectl(&["list-nodes"]);
    let text = ok(&out, "hirtectl list-nodes");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NODE", "STATE", "LAST", "SEEN"], "{text}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "{text}");
    for n in GUIDE_NODES {
        let row = rows
            .iter()
            .find(|r| r[0] == n)
            .unwrap_or_else(|| panic!("{n} missing: {text}"));
        assert_eq!(row[1], "online", "{text}");
        let seen = row[2..].join(" ");
        assert!(
            seen == "now" || (row.len() == 4 && row[3] == "ago" && row[2].ends_with('s')),
            "last seen of {n}: {seen:?}\n{text}"
        );
    }

    let log = c.manager_log();
    for (node, ip) in [
        ("primary", "127.0.0.1"),
        ("agent1", "10.200.0.2"),
        ("agent2", "10.200.0.3"),
    ] {
        let line = format!("Agent '{node}' connected from {ip}");
        assert!(log.contains(&line), "manager log lacks {line:?}:\n{log}");
        let alog = c.agent_log(node);
        assert!(
            alog.contains(&format!("as node '{node}'")),
            "agent log of {node} does not say it connected:\n{alog}"
        );
    }
    // The peer address the manager reports is the one it logged.
    let bus = c.system_bus().unwrap();
    let ip: String = prop(&bus, &node_path("agent2"), NODE_IFACE, "PeerIp").unwrap();
    assert_eq!(ip, "10.200.0.3");
}

// [itest->req~manager.register-refused~1]
// [itest->req~agent.register~1]
// [itest->req~log.events~1]
// [itest->req~api.errors~1]
#[test]
fn registration_name_outside_allowed_node_names_is_refused_and_logged_both_sides() {
    if !hirte_tests::require_root(
        "registration_name_outside_allowed_node_names_is_refused_and_logged_both_sides",
    ) {
        return;
    }
    let mut c = guide_cluster_with(&["agent3"]);
    // agent3 is allowed, but its agent is (mis)configured to call itself "stranger".
    set_agent_node_name(&c, "agent3", "stranger");
    c.start_agent("agent3").unwrap();

    wait_manager_log(&c, "the refusal of 'stranger'", |l| {
        l.contains("Refused agent 'stranger' from 10.200.0.4")
            && l.contains("'stranger' is not in AllowedNodeNames")
    });
    wait_agent_log(&c, "agent3", "the refusal reason", |l| {
        l.contains("manager refused registration") && l.contains("not in AllowedNodeNames")
    });
    // The agent keeps retrying (every ReconnectInterval) instead of exiting.
    wait_manager_log(&c, "a second attempt of 'stranger'", |l| {
        l.matches("Refused agent 'stranger'").count() >= 2
    });
    assert!(c.agent_pid("agent3").is_some(), "refused agent exited");

    let rows = c.list_nodes().unwrap();
    assert!(
        rows.iter().all(|(n, _)| n != "stranger"),
        "refused name listed: {rows:?}"
    );
    let states = hirte_tests::states_map(&rows);
    assert_eq!(states.get("agent3").map(String::as_str), Some("offline"));
    assert_all_online(&c, &GUIDE_NODES);
    let out = c.hirtectl(&["list-nodes"]);
    let text = ok(&out, "list-nodes");
    let agent3 = text.lines().find(|l| l.starts_with("agent3")).unwrap();
    assert!(agent3.ends_with("never"), "{text}");

    // The same refusal on the wire: the error name is NotAllowed, then the link is closed.
    let mut raw = RawLink::connect(&c, "agent1");
    let reply = raw.register("stranger2").expect("an answer to Register");
    assert_eq!(
        error_name(reply).as_deref(),
        Some("org.containers.hirte.Error.NotAllowed")
    );
    assert!(raw.closed_within(SOON), "refused link left open");
    assert_all_online(&c, &GUIDE_NODES);
}

// [itest->req~manager.register-duplicate~1]
// [itest->req~agent.register~1]
// [itest->req~log.events~1]
// [itest->req~api.errors~1]
#[test]
fn registration_second_agent_with_online_name_is_refused_first_stays_online() {
    if !hirte_tests::require_root(
        "registration_second_agent_with_online_name_is_refused_first_stays_online",
    ) {
        return;
    }
    let mut c = guide_cluster_with(&["twin"]);
    // A job of the first agent1 in flight: it must survive the impostor's attempt.
    c.write_unit("agent1", "slow.service", SLOW_UNIT).unwrap();
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
    let job = job.to_string();
    set_agent_node_name(&c, "twin", "agent1");
    c.start_agent("twin").unwrap();

    wait_manager_log(&c, "the refusal of the second 'agent1'", |l| {
        l.contains("Refused agent 'agent1' from 10.200.0.4")
            && l.contains("'agent1' is already online (from 10.200.0.2)")
    });
    wait_agent_log(&c, "twin", "the refusal reason", |l| {
        l.contains("manager refused registration") && l.contains("is already online")
    });
    assert!(c.agent_pid("twin").is_some(), "refused agent exited");

    // The first agent1 is untouched: online, same address, its job still running,
    // and it is the one that acts.
    assert_all_online(&c, &GUIDE_NODES);
    let unit: String = prop(&bus, &job, JOB_IFACE, "Unit").expect("job object still there");
    assert_eq!(unit, "slow.service");
    assert!(
        sig.job_removed(&job, std::time::Duration::from_millis(500))
            .is_none(),
        "the first agent1's job ended"
    );
    let (): () = call(&bus, &job, JOB_IFACE, "Cancel", ()).unwrap();
    let (_, _, _, result) = sig
        .job_removed(&job, SOON)
        .expect("JobRemoved after Cancel");
    assert_eq!(result, "canceled");
    let ip: String = prop(&bus, &node_path("agent1"), NODE_IFACE, "PeerIp").unwrap();
    assert_eq!(ip, "10.200.0.2");
    assert!(
        !c.manager_log().contains("Agent 'agent1' disconnected"),
        "{}",
        c.manager_log()
    );
    c.write_unit("agent1", "only-on-agent1.service", SLEEP_UNIT)
        .unwrap();
    ok(
        &c.hirtectl(&["start", "agent1", "only-on-agent1.service"]),
        "start on agent1",
    );
    assert_eq!(is_active(&c, "agent1", "only-on-agent1.service"), "active");
    assert_eq!(is_active(&c, "twin", "only-on-agent1.service"), "inactive");

    // On the wire: AddressInUse, link closed, the real agent2 stays online.
    let mut raw = RawLink::connect(&c, "primary");
    let reply = raw.register("agent2").expect("an answer to Register");
    assert_eq!(
        error_name(reply).as_deref(),
        Some("org.containers.hirte.Error.AddressInUse")
    );
    assert!(raw.closed_within(SOON), "refused link left open");
    assert_all_online(&c, &GUIDE_NODES);
    let ip: String = prop(&bus, &node_path("agent2"), NODE_IFACE, "PeerIp").unwrap();
    assert_eq!(ip, "10.200.0.3");
}

/// A free TCP port on 127.0.0.1 (the host's loopback is shared with other test runs).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Ends the wrapped process when the test ends, also on failure.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Socket activation as `hirte.socket` does it, with systemd's own `systemd-socket-activate`:
/// the manager serves the socket it is passed (an agent registers through it) and ignores
/// `ManagerAddress`/`ManagerPort`.
// [itest->req~manager.socket-activation~1]
#[test]
fn registration_through_a_socket_passed_by_systemd() {
    if !hirte_tests::require_root("registration_through_a_socket_passed_by_systemd") {
        return;
    }
    let mut spec = ClusterSpec::new(&["n1"]);
    spec.start_manager = false;
    spec.start_agents = false;
    let c = Cluster::start(spec).unwrap();
    let dir = c.node_dir("n1").unwrap().join("activated-manager");
    std::fs::create_dir_all(&dir).unwrap();
    let (passed, configured) = (free_port(), free_port());
    std::fs::write(
        dir.join("hirte.conf"),
        format!(
            "[hirte]\nManagerAddress=127.0.0.1\nManagerPort={configured}\nAllowedNodeNames=n1\nLogTarget=stderr\nLogLevel=debug\n"
        ),
    )
    .unwrap();
    let log = dir.join("manager.log");
    let mut cmd = std::process::Command::new("systemd-socket-activate");
    // It hands the program only the variables named with -E.
    cmd.args([
        "-E",
        "DBUS_SYSTEM_BUS_ADDRESS",
        "-E",
        "HIRTE_CONFIG_DIR",
        "-l",
    ])
    .arg(format!("127.0.0.1:{passed}"))
    .arg(hirte_tests::binary("hirte").unwrap())
    .env("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address())
    .env("HIRTE_CONFIG_DIR", &dir)
    .env_remove("LISTEN_FDS")
    .env_remove("LISTEN_PID")
    .env_remove("NOTIFY_SOCKET")
    .stdout(std::fs::File::create(&log).unwrap())
    .stderr(std::fs::File::create(dir.join("activate.log")).unwrap());
    let _manager = KillOnDrop(cmd.spawn().unwrap());
    // systemd-socket-activate listens at once and starts the manager on the first connection.
    c.wait_for("the activation socket", SOON, || {
        std::net::TcpStream::connect(("127.0.0.1", passed)).is_ok()
    })
    .unwrap();
    let stream = std::net::TcpStream::connect(("127.0.0.1", passed)).unwrap();
    let mut raw = RawLink::from_stream(stream);
    let reply = raw.register("n1").expect("an answer to Register");
    let show_log = || {
        format!(
            "{}{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(dir.join("activate.log")).unwrap_or_default()
        )
    };
    assert_eq!(error_name(reply), None, "Register refused\n{}", show_log());
    c.wait_for("n1 online", SOON, || {
        c.node_state("n1").as_deref() == Some("online")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", show_log()));
    let text = show_log();
    assert!(
        text.contains("Using the listening socket passed by systemd (socket activation)"),
        "{text}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", configured)).is_err(),
        "the configured ManagerPort {configured} is open too\n{text}"
    );
}

/// One peer that registers a refused name over and over cannot flood the log: the manager
/// logs `PEER_BURST` refusals per `PEER_WINDOW`, counts the rest and reports the count when
/// the next window starts; another peer's refusal still shows at once.
// [itest->req~log.peer-rate-limit~1]
#[test]
fn registration_refusals_from_one_peer_are_rate_limited_and_summarised() {
    use dbus::message::MessageType;
    use hirte_common::log::{PEER_BURST, PEER_WINDOW};
    if !hirte_tests::require_root(
        "registration_refusals_from_one_peer_are_rate_limited_and_summarised",
    ) {
        return;
    }
    let mut spec = ClusterSpec::new(&["primary", "agent1", "agent2"]);
    spec.start_agents = false;
    let c = Cluster::start(spec).unwrap_or_else(|e| panic!("cluster start: {e}"));
    let ip = c.node_ip("agent1").unwrap();
    let refusal = format!("Refused agent 'stranger' from {ip}");
    let attempts = 3 * PEER_BURST as usize;
    for i in 0..attempts {
        let mut raw = RawLink::connect(&c, "agent1");
        let reply = raw.register("stranger").expect("an answer to Register");
        assert_eq!(reply.msg_type(), MessageType::Error, "attempt {i}");
        assert!(raw.closed_within(SOON), "attempt {i} left open");
    }
    // Another peer is not held back by the first one's flood.
    let other = c.node_ip("agent2").unwrap();
    let mut raw = RawLink::connect(&c, "agent2");
    raw.register("stranger").expect("an answer to Register");
    wait_manager_log(&c, "agent2's refusal", |l| {
        l.contains(&format!("Refused agent 'stranger' from {other}"))
    });
    let log = c.manager_log();
    assert_eq!(
        log.matches(&refusal).count(),
        PEER_BURST as usize,
        "refusals logged for {attempts} attempts:\n{log}"
    );
    // The next window: the next refusal is logged after the count of those suppressed.
    std::thread::sleep(PEER_WINDOW);
    let mut raw = RawLink::connect(&c, "agent1");
    raw.register("stranger").expect("an answer to Register");
    let suppressed = attempts - PEER_BURST as usize;
    manager_log_line(
        &c,
        &[&format!(
            "{suppressed} similar messages from {ip} suppressed"
        )],
    );
    wait_manager_log(&c, "the refusal of the next window", |l| {
        l.matches(&refusal).count() == PEER_BURST as usize + 1
    });
    assert!(c.manager_pid().is_some());
}
