//! Bounds enforced by the agent itself, shown on a real node.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

use std::time::{Duration, Instant};

use hirte_tests::{connect_bus, Cluster, ClusterSpec};

const NODE_IFACE: &str = "org.containers.hirte.Node";
const N1_PATH: &str = "/org/containers/hirte/node/n1";
/// `MAX_AGENT_EXECS` in agent/src/core/exec.rs.
const MAX_AGENT_EXECS: usize = 16;

type ExecResult = Result<(i32, Vec<u8>, Vec<u8>), dbus::Error>;

fn exec(addr: &str, argv: &[&str]) -> ExecResult {
    let bus = connect_bus(addr).unwrap();
    let proxy = bus.with_proxy("org.containers.hirte", N1_PATH, Duration::from_secs(60));
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    proxy.method_call(NODE_IFACE, "Exec", (argv, 20_000_000u64))
}

// [itest->req~agent.exec~2]
#[test]
fn bounds_agent_runs_at_most_16_commands_at_once() {
    if !hirte_tests::require_root("bounds_agent_runs_at_most_16_commands_at_once") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["primary", "n1"])).unwrap();
    let addr = c.bus_address();
    let running: Vec<_> = (0..MAX_AGENT_EXECS)
        .map(|_| {
            let a = addr.clone();
            std::thread::spawn(move || exec(&a, &["sleep", "3"]))
        })
        .collect();
    c.wait_for("16 commands running", Duration::from_secs(10), || {
        c.agent_log("n1")
            .matches("Exec of 'sleep' (1 arguments)")
            .count()
            == MAX_AGENT_EXECS
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
    let err = exec(&addr, &["true"]).unwrap_err();
    assert_eq!(
        err.name(),
        Some("org.containers.hirte.Error.Busy"),
        "{err:?}"
    );
    assert!(
        err.message()
            .unwrap_or("")
            .contains("16 commands already running"),
        "{err:?}"
    );
    for t in running {
        let (status, _, _) = t.join().unwrap().unwrap();
        assert_eq!(status, 0);
    }
    // The slots are free again.
    let (status, out, _) = exec(&addr, &["echo", "again"]).unwrap();
    assert_eq!((status, out.as_slice()), (0, &b"again\n"[..]));
}

// [itest->req~agent.relay~1]
#[test]
fn bounds_agent_hung_systemd_call_ends_at_the_systemd_call_timeout() {
    if !hirte_tests::require_root("bounds_agent_hung_systemd_call_ends_at_the_systemd_call_timeout")
    {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["primary", "n1"])).unwrap();
    let addr = c.bus_address();
    let sd = c.systemd_pid("n1").unwrap();
    let pid = nix::unistd::Pid::from_raw(sd);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let started = std::time::Instant::now();
    let bus = connect_bus(&addr).unwrap();
    let proxy = bus.with_proxy("org.containers.hirte", N1_PATH, Duration::from_secs(90));
    let r: Result<(String,), dbus::Error> =
        proxy.method_call(NODE_IFACE, "GetUnitFileState", ("default.target",));
    let waited = started.elapsed();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // SYSTEMD_CALL_TIMEOUT (25 s) ends the agent's call before AgentCallTimeout (30 s).
    let err = r.unwrap_err();
    assert_eq!(
        err.name(),
        Some("org.freedesktop.DBus.Error.NoReply"),
        "{err:?}"
    );
    // The agent's SYSTEMD_CALL_TIMEOUT (25 s) ends the call; its start is a little before ours.
    assert!(waited >= Duration::from_secs(20), "{waited:?}");
    hirte_tests::assert_within(
        "req~agent.relay~1",
        "a hung systemd call answered NoReply (SYSTEMD_CALL_TIMEOUT 25 s)",
        waited,
        Duration::from_secs(25),
        Duration::from_secs(1),
    );
    // The node stayed online (heartbeats do not wait for systemd) and serves again.
    assert_eq!(c.node_state("n1").as_deref(), Some("online"));
    let (state,): (String,) = proxy
        .method_call(NODE_IFACE, "GetUnitFileState", ("default.target",))
        .unwrap();
    assert!(!state.is_empty());
}

/// `MAX_AGENT_JOBS` in common/src/bounds.rs.
const MAX_AGENT_JOBS: usize = 1024;

// [itest->req~bounds.jobs~1]
#[test]
fn bounds_agent_tracks_at_most_1024_jobs() {
    if !hirte_tests::require_root("bounds_agent_tracks_at_most_1024_jobs") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["primary", "n1"])).unwrap();
    // systemd merges every start of this unit into its one running job; the agent still
    // tracks each manager job on it.
    c.write_unit(
        "n1",
        "slow.service",
        "[Service]\nType=oneshot\nExecStartPre=/bin/sleep 120\nExecStart=/bin/true\n",
    )
    .unwrap();
    let bus = connect_bus(&c.bus_address()).unwrap();
    let proxy = bus.with_proxy("org.containers.hirte", N1_PATH, Duration::from_secs(30));
    for i in 0..MAX_AGENT_JOBS {
        let r: Result<(dbus::Path<'static>,), dbus::Error> =
            proxy.method_call(NODE_IFACE, "StartUnit", ("slow.service", "replace"));
        r.unwrap_or_else(|e| panic!("job {i}: {e:?}"));
    }
    let r: Result<(dbus::Path<'static>,), dbus::Error> =
        proxy.method_call(NODE_IFACE, "StartUnit", ("slow.service", "replace"));
    let err = r.unwrap_err();
    assert_eq!(
        err.name(),
        Some("org.containers.hirte.Error.Busy"),
        "{err:?}"
    );
    assert!(
        err.message()
            .unwrap_or("")
            .contains("1024 jobs in flight on node 'n1'"),
        "{err:?}"
    );
    // Other calls to the node still work.
    let (state,): (String,) = proxy
        .method_call(NODE_IFACE, "GetUnitFileState", ("slow.service",))
        .unwrap();
    assert!(!state.is_empty());
}

/// `EXEC_GRACE` in agent/src/core/exec.rs.
const EXEC_GRACE: Duration = Duration::from_secs(5);

// [itest->req~agent.exec~2]
#[test]
fn bounds_agent_exec_ignoring_sigterm_is_stopped_and_answered_after_the_grace() {
    if !hirte_tests::require_root(
        "bounds_agent_exec_ignoring_sigterm_is_stopped_and_answered_after_the_grace",
    ) {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["primary", "n1"])).unwrap();
    let addr = c.bus_address();
    // systemd's start timeout (1 s) sends SIGTERM, which the command ignores; systemd then
    // waits TimeoutStopSec (90 s) before SIGKILL, so the job has not ended at 1 s + grace.
    let started = std::time::Instant::now();
    let call = std::thread::spawn(move || {
        let bus = connect_bus(&addr).unwrap();
        let proxy = bus.with_proxy("org.containers.hirte", N1_PATH, Duration::from_secs(60));
        let argv: Vec<String> = ["sh", "-c", "trap '' TERM; sleep 60"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r: Result<(i32, Vec<u8>, Vec<u8>), dbus::Error> =
            proxy.method_call(NODE_IFACE, "Exec", (argv, 1_000_000u64));
        (r, started.elapsed())
    });
    let show = |unit: &str| {
        hirte_tests::output::stdout(
            &c.systemctl("n1", &["show", "-p", "ActiveState,SubState,Result", unit]),
        )
    };
    c.wait_for("the Exec unit", Duration::from_secs(10), || {
        c.agent_log("n1").contains(" as hirte-exec-")
    })
    .unwrap();
    let log = c.agent_log("n1");
    let unit = log
        .lines()
        .find_map(|l| l.split(" as hirte-exec-").nth(1))
        .map(|u| format!("hirte-exec-{}", u.trim()))
        .unwrap();
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    // systemd's own timeout has fired; the command lives on.
    let at_3s = show(&unit);
    assert!(
        at_3s.contains("SubState=stop-sigterm") && at_3s.contains("Result=timeout"),
        "{at_3s}"
    );
    let (r, waited) = call.join().unwrap();
    let err = r.unwrap_err();
    assert_eq!(
        err.name(),
        Some("org.containers.hirte.Error.Timeout"),
        "{err:?}"
    );
    assert_eq!(err.message(), Some("command did not finish within 1s"));
    assert!(
        waited >= Duration::from_secs(1) + EXEC_GRACE - Duration::from_millis(500),
        "answered after {waited:?}"
    );
    hirte_tests::assert_within(
        "req~agent.exec~1",
        "Timeout answer for a 1 s command ignoring SIGTERM (1 s + EXEC_GRACE 5 s)",
        waited,
        Duration::from_secs(1) + EXEC_GRACE,
        Duration::from_secs(1),
    );
    // The agent stopped the unit and killed what ignored SIGTERM: the unit is gone soon,
    // not after systemd's TimeoutStopSec (90 s), so its MAX_AGENT_EXECS slot is truly free.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut state = String::new();
    while Instant::now() < deadline {
        state = hirte_tests::output::stdout(
            &c.systemctl("n1", &["show", "-p", "ActiveState", "--value", &unit]),
        );
        if !matches!(state.trim(), "active" | "deactivating" | "activating") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "FIGURE exec grace: at 3 s {at_3s:?}; Timeout answer after {waited:?}; unit then {}",
        state.trim()
    );
    assert!(
        !matches!(state.trim(), "active" | "deactivating" | "activating"),
        "the command outlived the grace: {unit} is {state}"
    );
}
