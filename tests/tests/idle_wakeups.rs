//! An idle cluster costs no periodic wake-ups (issue 13, target 3): the manager's core and
//! listener threads and the agent's core sleep until a real deadline or an fd has work; the
//! signals' flags reach them through an eventfd, not a tick. Counted as the voluntary context
//! switches of each thread (each is one wake-up of a sleeping thread) over a window, on the
//! real binaries with real `systemd --user` nodes. Before this, each of these threads woke
//! every `CORE_TICK` (100 ms): 30 times in the window.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use common::SOON;
use hirte_tests::{Cluster, ClusterSpec};
use std::time::Duration;

const WINDOW: Duration = Duration::from_secs(3);

/// Voluntary context switches of each thread of `pid`, by thread id, with its name.
fn wakeups(pid: i32) -> Vec<(i32, String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: i32 = e.unwrap().file_name().to_string_lossy().parse().unwrap();
        let dir = format!("/proc/{pid}/task/{tid}");
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(format!("{dir}/comm")),
            std::fs::read_to_string(format!("{dir}/status")),
        ) else {
            continue;
        };
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap();
        out.push((tid, comm.trim().to_string(), n));
    }
    out
}

/// Wake-ups over `WINDOW` of each (pid, thread name): `main` is the main thread, `link-*`
/// all of the manager's connection threads together.
fn over_window(pids: &[(i32, &str)]) -> Vec<u64> {
    let before: Vec<_> = pids.iter().map(|(p, _)| wakeups(*p)).collect();
    std::thread::sleep(WINDOW);
    pids.iter()
        .zip(before)
        .map(|((pid, name), before)| {
            let after = wakeups(*pid);
            let count = |v: &[(i32, String, u64)]| {
                v.iter()
                    .filter(|(tid, comm, _)| match *name {
                        "main" => tid == pid,
                        "link-*" => comm.starts_with("link-"),
                        _ => comm == name,
                    })
                    .map(|t| t.2)
                    .sum::<u64>()
            };
            count(&after) - count(&before)
        })
        .collect()
}

// [itest->req~manager.idle-no-wakeups~1]
// [itest->req~agent.core-idle-no-wakeups~1]
#[test]
fn idle_wakeups_core_listener_and_agent_core_sleep_between_deadlines() {
    if !hirte_tests::require_root(
        "idle_wakeups_core_listener_and_agent_core_sleep_between_deadlines",
    ) {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();
    c.wait_node_state("n2", "online", SOON).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let manager = c.manager_pid().unwrap();
    let agent = c.agent_pid("n2").unwrap();
    let counts = over_window(&[
        (manager, "main"),
        (manager, "listener"),
        (manager, "link-*"),
        (agent, "main"),
    ]);
    let (core, listener, links, agent_core) = (counts[0], counts[1], counts[2], counts[3]);
    eprintln!(
        "FIGURE wake-ups in {WINDOW:?}, 2 idle nodes heartbeating every 1 s: manager core \
         {core}, listener {listener}, connection threads {links}, agent core {agent_core}"
    );
    // Two agents heartbeat once a second each: 6 heartbeats in the window, each read and
    // echoed by its connection thread in one wake-up (7-8 when the window catches one more
    // each). The core wakes only for the earliest node's silence deadline (at most once in
    // the window with NodeHeartbeatThreshold well above the interval).
    assert!(
        core <= 2,
        "the manager core woke {core} times in {WINDOW:?}"
    );
    assert!(
        links <= 8,
        "the connection threads woke {links} times in {WINDOW:?}"
    );
    assert!(
        listener == 0,
        "the listener woke {listener} times in {WINDOW:?}"
    );
    assert!(
        agent_core <= 2,
        "the agent core woke {agent_core} times in {WINDOW:?}"
    );

    // The flags still take effect at once: SIGHUP re-reads the configuration.
    let re_read = "Configuration re-read";
    let (m0, a0) = (c.manager_log().len(), c.agent_log("n2").len());
    c.signal_manager(nix::sys::signal::Signal::SIGHUP).unwrap();
    c.signal_agent("n2", nix::sys::signal::Signal::SIGHUP)
        .unwrap();
    c.wait_for(
        "both daemons to re-read on SIGHUP",
        Duration::from_secs(2),
        || c.manager_log()[m0..].contains(re_read) && c.agent_log("n2")[a0..].contains(re_read),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
}
