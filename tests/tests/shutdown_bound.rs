//! The exit after SIGTERM is bounded even when a daemon thread is stuck: the main thread
//! waits at most `SHUTDOWN_JOIN_TIMEOUT` for the listener and connection threads (agent: the
//! link thread), logs those still running, and exits.
//!
//! The stuck thread is made real, not simulated: SIGHUP makes the manager's listener (the
//! agent's link thread) re-read the TLS files, and the certificate file has been replaced by
//! a FIFO with no writer, so `open()` blocks for good. Before the bound, the final join
//! waited forever and the daemon never exited.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use common::*;
use hirte_common::bounds::SHUTDOWN_JOIN_TIMEOUT;
use hirte_tests::pki::{Pki, Spec};
use hirte_tests::{Cluster, ClusterSpec, Signal};
use std::path::Path;
use std::time::{Duration, Instant};

/// The manager's last flush of bus answers at exit (`SHUTDOWN_FLUSH`, `manager/src/core.rs`).
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
/// Signal delivery, the test's polling and a busy machine.
const TOLERANCE: Duration = Duration::from_secs(1);
/// How long the test waits for an exit at all (the old code never exits).
const GIVE_UP: Duration = Duration::from_secs(20);

fn tls_cluster() -> (Cluster, Pki) {
    let mut spec = ClusterSpec::new(&["primary", "agent1"]);
    spec.start_manager = false;
    spec.start_agents = false;
    let c = Cluster::start(spec).unwrap_or_else(|e| panic!("cluster start: {e}"));
    let pki = Pki::new(&c.dir().join("pki"), "fleet").unwrap();
    (c, pki)
}

fn drop_in(c: &Cluster, node: &str, file: &str, text: &str) {
    let dir = c.node_config_dir(node).unwrap().join(format!("{file}.d"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("50-tls.conf"), text).unwrap();
}

fn tls_keys(section: &str, cert: &Path, key: &Path, trusted: &Path) -> String {
    format!(
        "[{section}]\nCertificateFile={}\nKeyFile={}\nTrustedCertificateFile={}\n",
        cert.display(),
        key.display(),
        trusted.display()
    )
}

/// Replaces `cert` by a FIFO nobody writes to: whoever opens it for reading blocks.
fn cert_becomes_fifo(cert: &Path) {
    std::fs::rename(cert, cert.with_extension("orig")).unwrap();
    nix::unistd::mkfifo(cert, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// A manager whose listener is stuck (TLS re-read from a FIFO) and which holds a connection
/// in its TLS handshake exits after SIGTERM within the flush plus `SHUTDOWN_JOIN_TIMEOUT`,
/// and says which threads it left running.
// [itest->req~manager.sigterm~1]
#[test]
fn shutdown_bound_manager_exits_with_a_stuck_listener_within_the_join_timeout() {
    if !hirte_tests::require_root(
        "shutdown_bound_manager_exits_with_a_stuck_listener_within_the_join_timeout",
    ) {
        return;
    }
    let (mut c, pki) = tls_cluster();
    let manager = pki
        .issue("manager", &Spec::manager(&["10.200.0.1", "127.0.0.1"]))
        .unwrap();
    let text = tls_keys("hirte", &manager.cert, &manager.key, &pki.ca_file());
    drop_in(&c, "primary", "hirte.conf", &text);
    c.start_manager().unwrap();
    wait_manager_log(&c, "mutual TLS", |l| l.contains("mutual TLS"));

    // A connection that never starts its TLS handshake: its thread waits in the handshake.
    let _silent = RawLink::connect(&c, "agent1");
    cert_becomes_fifo(&manager.cert);
    c.signal_manager(Signal::SIGHUP).unwrap();
    // The listener re-reads the files within one tick and then blocks in open().
    std::thread::sleep(Duration::from_millis(500));

    let t0 = Instant::now();
    c.signal_manager(Signal::SIGTERM).unwrap();
    let status = c.wait_manager_exit(GIVE_UP);
    let took = t0.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "the manager did not exit within {GIVE_UP:?} of SIGTERM with a stuck listener\n{}",
            c.log_tails()
        )
    });
    assert!(status.success(), "manager exit: {status:?}");
    hirte_tests::assert_within(
        "req~manager.sigterm~1",
        "manager SIGTERM to exit, listener stuck (idle: flush + join timeout)",
        took,
        SHUTDOWN_FLUSH + SHUTDOWN_JOIN_TIMEOUT,
        TOLERANCE,
    );
    let log = c.manager_log();
    assert!(
        log.lines()
            .any(|l| l.contains("Exiting with the listener thread") && l.contains("still running")),
        "no record of the thread left running:\n{log}"
    );
}

/// An agent whose link thread is stuck (TLS re-read from a FIFO between two connection
/// attempts) exits after SIGTERM within `SHUTDOWN_JOIN_TIMEOUT`.
// [itest->req~agent.sigterm~1]
#[test]
fn shutdown_bound_agent_exits_with_a_stuck_link_thread_within_the_join_timeout() {
    if !hirte_tests::require_root(
        "shutdown_bound_agent_exits_with_a_stuck_link_thread_within_the_join_timeout",
    ) {
        return;
    }
    let (mut c, pki) = tls_cluster();
    let leaf = pki.issue("agent1", &Spec::node("agent1")).unwrap();
    let text = tls_keys("hirte-agent", &leaf.cert, &leaf.key, &pki.ca_file());
    drop_in(&c, "agent1", "agent.conf", &text);
    // No manager: the agent keeps retrying, re-reading the TLS files after a SIGHUP.
    c.start_agent("agent1").unwrap();
    wait_agent_log(&c, "agent1", "mutual TLS", |l| l.contains("mutual TLS"));
    cert_becomes_fifo(&leaf.cert);
    c.signal_agent("agent1", Signal::SIGHUP).unwrap();
    // The next attempt (the harness' ReconnectInterval is 500 ms) blocks in open().
    std::thread::sleep(Duration::from_millis(1500));

    let t0 = Instant::now();
    c.signal_agent("agent1", Signal::SIGTERM).unwrap();
    let status = c.wait_agent_exit("agent1", GIVE_UP);
    let took = t0.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "the agent did not exit within {GIVE_UP:?} of SIGTERM with a stuck link thread\n{}",
            c.log_tails()
        )
    });
    assert!(status.success(), "agent exit: {status:?}");
    hirte_tests::assert_within(
        "req~agent.sigterm~1",
        "agent SIGTERM to exit, link thread stuck (join timeout)",
        took,
        SHUTDOWN_JOIN_TIMEOUT,
        TOLERANCE,
    );
    let log = c.agent_log("agent1");
    assert!(
        log.lines()
            .any(|l| l.contains("Exiting with the link thread still running")),
        "no record of the thread left running:\n{log}"
    );
}
