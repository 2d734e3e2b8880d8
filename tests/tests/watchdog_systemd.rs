//! The agent's watchdog against a slow systemd, under real systemd managers: the agent runs
//! as a `systemd --user` service with the shipped user unit (its `WatchdogSec=`), and its
//! node's systemd is stopped (SIGSTOP, not killed) for 25 s while a call to it is pending.
//!
//! The two roles are two managers, so that stopping one cannot stop the other: node n1's
//! systemd supervises the agent (and would kill it on a missed watchdog ping); the agent is
//! node n2's agent, talking to n2's systemd over n2's bus, and that systemd is the one
//! stopped. The agent runs in n1's namespaces, which changes nothing it does: it reaches
//! n2's bus by its socket path and the manager by its address.

// Test code: a failed step must fail the test, with a message saying which.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use hirte_tests::output::{show, stdout};
use hirte_tests::{Cluster, ClusterSpec};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The unit under test, as shipped.
const SHIPPED_UNIT: &str = include_str!("../../packaging/systemd/user/hirte-agent.service");
/// How long n2's systemd is stopped: the probe, and `SYSTEMD_CALL_TIMEOUT`.
const STOPPED_FOR: Duration = Duration::from_secs(25);
/// How long after its last ping the agent is when n2's systemd stops: past any half-interval
/// ping schedule's slack, so a schedule that does not ping before the call is caught.
const PING_AGE: Duration = Duration::from_secs(8);

/// Resumes a stopped process when the test ends, whatever happens.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

fn prop(c: &Cluster, node: &str, unit: &str, name: &str) -> String {
    let o = c.systemctl(node, &["show", "-p", name, "--value", unit]);
    stdout(&o).trim().to_string()
}

fn now_monotonic_us() -> u64 {
    hirte_common::wait::now_monotonic_us()
}

// [itest->req~ops.watchdog-call-timeout~1]
#[test]
fn watchdog_agent_service_survives_its_systemd_stopped_for_25s() {
    if !hirte_tests::require_root("watchdog_agent_service_survives_its_systemd_stopped_for_25s") {
        return;
    }
    let watchdog = SHIPPED_UNIT
        .lines()
        .find_map(|l| l.strip_prefix("WatchdogSec="))
        .expect("the shipped user unit sets WatchdogSec=");
    assert_eq!(watchdog, "30s", "this test reasons about the shipped 30 s");

    let spec = ClusterSpec {
        start_agents: false,
        ..ClusterSpec::new(&["n1", "n2"])
    };
    let c = Cluster::start(spec).unwrap();
    let agent = c.bin_dir().join("hirte-agent");
    let log = c.node_dir("n1").unwrap().join("unit-agent-n2.log");
    // The shipped unit, with only what points it at n2 and at the binary under test.
    let unit = SHIPPED_UNIT.replace(
        "ExecStart=/usr/bin/hirte-agent --user",
        &format!(
            "ExecStart={} --user\nEnvironment=DBUS_SESSION_BUS_ADDRESS={} HIRTE_CONFIG_DIR={}\n\
             StandardOutput=append:{}\nStandardError=inherit",
            agent.display(),
            c.node_bus_address("n2").unwrap(),
            c.node_config_dir("n2").unwrap().display(),
            log.display()
        ),
    );
    assert!(unit.contains("WatchdogSec=30s") && unit.contains(" --user\n"));
    c.write_unit("n1", "hirte-agent-n2.service", &unit).unwrap();
    let o = c.systemctl("n1", &["start", "hirte-agent-n2.service"]);
    assert!(o.status.success(), "start: {}", show(&o));
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    c.wait_node_state("n2", "online", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent_log()));
    let main_pid = prop(&c, "n1", "hirte-agent-n2.service", "MainPID");

    // Wait until the agent's last ping is PING_AGE old (the supervisor records it).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let last: u64 = prop(
            &c,
            "n1",
            "hirte-agent-n2.service",
            "WatchdogTimestampMonotonic",
        )
        .parse()
        .unwrap_or(0);
        let age = Duration::from_micros(now_monotonic_us().saturating_sub(last));
        if last > 0 && age >= PING_AGE {
            eprintln!("last watchdog ping {age:?} ago");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no watchdog ping seen\n{}",
            agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Stop n2's systemd and make the agent call it: the call blocks for STOPPED_FOR.
    let systemd = c.systemd_pid("n2").unwrap();
    kill(Pid::from_raw(systemd), Signal::SIGSTOP).unwrap();
    let resume = Resume(systemd);
    let t0 = Instant::now();
    let listed = std::thread::scope(|s| {
        let call = s.spawn(|| c.hirtectl_timeout(&["list-units", "n2"], Duration::from_secs(60)));
        std::thread::sleep(STOPPED_FOR);
        drop(resume);
        eprintln!("n2's systemd resumed after {:?}", t0.elapsed());
        call.join().unwrap()
    });
    eprintln!(
        "list-units n2 ended after {:?}: {:?}",
        t0.elapsed(),
        listed.status
    );

    // Past the point where a missed ping would have killed it (the call started PING_AGE
    // after the last ping), plus the time systemd needs to notice and restart.
    std::thread::sleep(Duration::from_secs(5));
    let result = prop(&c, "n1", "hirte-agent-n2.service", "Result");
    let restarts = prop(&c, "n1", "hirte-agent-n2.service", "NRestarts");
    let now_pid = prop(&c, "n1", "hirte-agent-n2.service", "MainPID");
    assert_eq!(
        (result.as_str(), restarts.as_str(), now_pid.as_str()),
        ("success", "0", main_pid.as_str()),
        "the agent was killed (Result, NRestarts, MainPID)\n{}",
        agent_log()
    );
    c.wait_node_state("n2", "online", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent_log()));
    let o = c.hirtectl(&["list-units", "n2"]);
    assert!(o.status.success(), "list-units after: {}", show(&o));
    let o = c.systemctl("n1", &["stop", "hirte-agent-n2.service"]);
    assert!(o.status.success(), "stop: {}", show(&o));
}
