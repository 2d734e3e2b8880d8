//! The manager <-> agent link over a Unix socket for the local agent (`ManagerSocket=` in
//! `hirte.conf`, `ManagerAddress=unix:path=...` in `agent.conf`), next to TCP.
//! Real manager, agents and systemd per node (see `hirte_tests`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use common::*;
use hirte_common::bounds::MAX_FRAME_SIZE;
use hirte_common::frame::{encode_message, FrameDecoder};
use hirte_common::handshake::register_call;
use hirte_tests::{wait_until, Cluster, ClusterSpec};
use nix::sys::signal::Signal;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The manager's node (its agent is the local one) and a TCP node.
const NODES: [&str; 2] = ["primary", "agent1"];

/// A cluster with nothing started yet, and the socket path the manager will use.
fn unix_cluster() -> (Cluster, PathBuf) {
    let mut spec = ClusterSpec::new(&NODES);
    spec.start_manager = false;
    spec.start_agents = false;
    let c = Cluster::start(spec).unwrap_or_else(|e| panic!("cluster start: {e}"));
    let sock = c.dir().join("hirte.sock");
    let etc = c.node_config_dir("primary").unwrap();
    std::fs::create_dir_all(etc.join("hirte.conf.d")).unwrap();
    std::fs::write(
        etc.join("hirte.conf.d/50-socket.conf"),
        format!("[hirte]\nManagerSocket={}\n", sock.display()),
    )
    .unwrap();
    std::fs::create_dir_all(etc.join("agent.conf.d")).unwrap();
    std::fs::write(
        etc.join("agent.conf.d/50-unix.conf"),
        format!(
            "[hirte-agent]\nManagerAddress=unix:path={}\n",
            sock.display()
        ),
    )
    .unwrap();
    (c, sock)
}

/// Whether a socket file is at `path`.
fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Sends `Register(name)` over the manager's Unix socket and returns its answer.
fn register_over_socket(sock: &Path, name: &str) -> Option<dbus::Message> {
    let mut s = UnixStream::connect(sock).unwrap();
    let mut call = register_call(name).unwrap();
    call.set_serial(1);
    s.write_all(&encode_message(&call, MAX_FRAME_SIZE).unwrap())
        .unwrap();
    s.set_read_timeout(Some(SOON)).unwrap();
    let mut decoder = FrameDecoder::new(MAX_FRAME_SIZE);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Ok(Some(m)) = decoder.next_message() {
            return Some(m);
        }
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => decoder.push(&buf[..n]).ok()?,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

// [itest->req~link.unix-socket~1]
// [itest->req~agent.reconnect~1]
// [itest->req~manager.register-refused~1]
#[test]
fn link_unix_local_agent_registers_over_the_socket_and_runs_units() {
    if !hirte_tests::require_root("link_unix_local_agent_registers_over_the_socket_and_runs_units")
    {
        return;
    }
    let (mut c, sock) = unix_cluster();
    // A socket left by a killed manager: replaced, not an error.
    drop(UnixListener::bind(&sock).unwrap());
    assert!(is_socket(&sock), "stale socket in place");
    assert_eq!(
        UnixStream::connect(&sock).unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );

    // The local agent starts first: a connect that fails is retried every ReconnectInterval.
    c.start_agent("primary").unwrap();
    wait_agent_log(&c, "primary", "a failed connect to the socket", |l| {
        l.contains(&format!(
            "Cannot reach manager at unix:path={}: cannot connect: {}",
            sock.display(),
            sock.display()
        )) && l.contains("retrying every 500ms")
    });

    c.start_manager().unwrap();
    // The stale socket was replaced by a live one (its inode number may well be reused).
    if let Err(e) = wait_until("the manager's socket to accept", SOON, || {
        UnixStream::connect(&sock).is_ok()
    }) {
        panic!("{e}: {}\n{}", sock.display(), c.log_tails());
    }
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o660, "mode of {}", sock.display());
    c.start_agent("agent1").unwrap();
    c.wait_all_online(SOON)
        .unwrap_or_else(|e| panic!("nodes online: {e}\n{}", c.log_tails()));

    let log = c.manager_log();
    for line in [
        format!("Listening on unix:path={}", sock.display()),
        "Agent 'primary' connected from unix".to_string(),
        "Agent 'agent1' connected from 10.200.0.2".to_string(),
    ] {
        assert!(log.contains(&line), "manager log lacks {line:?}:\n{log}");
    }
    let alog = c.agent_log("primary");
    assert!(
        alog.contains(&format!(
            "Connected to manager at unix:path={} as node 'primary'",
            sock.display()
        )),
        "{alog}"
    );
    let bus = c.system_bus().unwrap();
    let peer: String = prop(&bus, &node_path("primary"), NODE_IFACE, "PeerIp").unwrap();
    assert_eq!(peer, "unix");
    let local_address = {
        use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
        let nb = c.node_bus("primary").unwrap();
        let addr: String = nb
            .with_proxy(
                "org.containers.hirte.Agent",
                MANAGER_PATH,
                Duration::from_secs(5),
            )
            .get("org.containers.hirte.Agent", "ManagerAddress")
            .unwrap();
        addr
    };
    assert_eq!(local_address, format!("unix:path={}", sock.display()));

    // Units are started through the socket link like through TCP.
    c.write_unit("primary", "unixlink.service", SLEEP_UNIT)
        .unwrap();
    ok(
        &c.hirtectl(&["start", "primary", "unixlink.service"]),
        "hirtectl start primary unixlink.service",
    );
    assert_eq!(is_active(&c, "primary", "unixlink.service"), "active");

    // A name outside AllowedNodeNames is refused over the socket as over TCP.
    let reply = register_over_socket(&sock, "stranger").expect("Register answered");
    assert_eq!(
        error_name(reply).as_deref(),
        Some("org.containers.hirte.Error.NotAllowed")
    );
    wait_manager_log(&c, "the refusal of 'stranger' from unix", |l| {
        l.contains("Refused agent 'stranger' from unix")
    });
    assert_all_online(&c, &NODES);

    // A clean exit removes the socket; the agent keeps retrying.
    let st = c
        .kill_manager(Signal::SIGTERM)
        .expect("manager was running");
    assert!(st.success(), "manager exit status on SIGTERM: {st:?}");
    assert!(
        std::fs::symlink_metadata(&sock).is_err(),
        "{} left after a clean exit",
        sock.display()
    );
    assert!(c.agent_pid("primary").is_some(), "the local agent exited");
    c.shutdown().unwrap();
}

// [itest->req~link.unix-socket~1]
#[test]
fn link_unix_manager_refuses_to_replace_a_file_that_is_not_a_socket() {
    if !hirte_tests::require_root(
        "link_unix_manager_refuses_to_replace_a_file_that_is_not_a_socket",
    ) {
        return;
    }
    let (mut c, sock) = unix_cluster();
    std::fs::write(&sock, "precious\n").unwrap();
    c.spawn_manager().unwrap();
    let st = c
        .wait_manager_exit(SOON)
        .unwrap_or_else(|| panic!("manager still running:\n{}", c.log_tails()));
    assert!(!st.success(), "{st:?}");
    let log = c.manager_log();
    let want = format!(
        "ManagerSocket: {} exists and is not a socket; refusing to replace it",
        sock.display()
    );
    assert!(log.contains(&want), "manager log lacks {want:?}:\n{log}");
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "precious\n");
    c.shutdown().unwrap();
}
