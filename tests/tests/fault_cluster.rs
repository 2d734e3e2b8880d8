//! Faults the cluster must survive: agents killed, stopped or cut off, the manager killed or
//! stopped, a node's systemd restarted. Each test asserts what happens (states, signals,
//! errors, exit codes), never how fast; the times it measures are printed
//! (`--no-capture`) and recorded in `docs/reliability.md`.
//!
//! Timings are made short by configuration: agents beat every 1 s and retry every 500 ms
//! (harness defaults), the manager declares a node offline after `NodeHeartbeatThreshold=3s`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use dbus::blocking::Connection;
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::{
    CONNECT_TIMEOUT, CORE_TICK, HANDSHAKE_TIMEOUT, MAX_PENDING_CALLS_PER_NODE,
    RESERVED_CONTROL_CALLS_PER_NODE,
};
use hirte_tests::{Cluster, ClusterSpec, Signal};

/// A oneshot whose start job stays in flight for 30 s.
const SLOW_30: &str =
    "[Unit]\nDescription=Slow oneshot\n[Service]\nType=oneshot\nExecStart=/bin/sleep 30\n";
/// A oneshot whose start job finishes after 2 s.
const SLOW_2: &str =
    "[Unit]\nDescription=Short oneshot\n[Service]\nType=oneshot\nExecStart=/bin/sleep 2\n";
/// Generous bound for anything the configuration makes happen within a few seconds.
const WAIT: Duration = Duration::from_secs(20);
/// Signal delivery, this test's polling and a busy machine, on top of a detection bound.
const DETECTION_TOLERANCE: Duration = Duration::from_millis(500);
/// The manager's drain period at SIGTERM (`manager/src/core.rs`, `req~manager.sigterm~1`).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const MANAGER_SIGNALS: &str =
    "type='signal',sender='org.containers.hirte',interface='org.containers.hirte.Manager'";

/// A bus connection that keeps every message it receives until a test asks for it, so that
/// replies and signals can be awaited in any order without losing any.
struct Inbox {
    conn: Connection,
    kept: VecDeque<Message>,
}

impl Inbox {
    fn new(c: &Cluster, rules: &[&str]) -> Inbox {
        let conn = c.system_bus().expect("system bus");
        for r in rules {
            conn.add_match_no_cb(r).expect("add match");
        }
        Inbox {
            conn,
            kept: VecDeque::new(),
        }
    }

    /// The first message (kept or new, within `timeout`) that `pred` accepts; it is removed.
    fn wait(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Message) -> bool,
    ) -> Option<Message> {
        if let Some(i) = self.kept.iter().position(&mut pred) {
            return self.kept.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Ok(Some(m)) = self.conn.channel().blocking_pop_message(left) {
                if pred(&m) {
                    return Some(m);
                }
                self.kept.push_back(m);
            }
        }
    }

    /// Sends a method call to the manager without waiting; returns its serial.
    fn send_call(&self, msg: Message) -> u32 {
        self.conn.channel().send(msg).expect("send call")
    }

    /// The reply (or error) to the call with this serial.
    fn reply(&mut self, serial: u32, timeout: Duration) -> Option<Message> {
        self.wait(timeout, |m| {
            matches!(m.msg_type(), MessageType::MethodReturn | MessageType::Error)
                && m.get_reply_serial() == Some(serial)
        })
    }

    /// A blocking call on this connection (messages arriving meanwhile are kept).
    fn call(&mut self, msg: Message) -> Result<Message, (String, String)> {
        let serial = self.send_call(msg);
        let mut m = self
            .reply(serial, Duration::from_secs(30))
            .ok_or_else(|| ("no reply".to_string(), String::new()))?;
        match m.as_result() {
            Ok(_) => Ok(m),
            Err(e) => Err((
                e.name().unwrap_or("").to_string(),
                e.message().unwrap_or("").to_string(),
            )),
        }
    }

    /// `JobRemoved` of the job at `job`: (node, unit, result).
    fn job_removed(&mut self, job: &str, timeout: Duration) -> Option<(String, String, String)> {
        let m = self.wait(timeout, |m| {
            m.member().as_deref() == Some("JobRemoved")
                && m.read2::<u32, dbus::Path>().is_ok_and(|(_, p)| &*p == job)
        })?;
        let (_, _, node, unit, result) = m
            .read5::<u32, dbus::Path, String, String, String>()
            .expect("JobRemoved (uosss)");
        Some((node, unit, result))
    }

    /// `NodeConnectionStateChanged(node, state)`.
    fn node_state(&mut self, node: &str, state: &str, timeout: Duration) -> bool {
        self.wait(timeout, |m| {
            m.member().as_deref() == Some("NodeConnectionStateChanged")
                && m.read2::<&str, &str>()
                    .is_ok_and(|(n, s)| n == node && s == state)
        })
        .is_some()
    }

    /// A monitor signal `member` whose string arguments start with `args`.
    fn monitor_event(&mut self, member: &str, args: &[&str], timeout: Duration) -> Option<Message> {
        self.wait(timeout, |m| {
            m.interface().as_deref() == Some("org.containers.hirte.Monitor")
                && m.member().as_deref() == Some(member)
                && strings_of(m)
                    .starts_with(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        })
    }

    /// Every monitor signal received so far (kept), for failure messages.
    fn describe_kept(&self) -> String {
        self.kept
            .iter()
            .map(|m| format!("{:?} {:?}", m.member(), strings_of(m)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The leading string arguments of a message.
fn strings_of(m: &Message) -> Vec<String> {
    m.get_items()
        .into_iter()
        .map_while(|i| match i {
            dbus::arg::messageitem::MessageItem::Str(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn method(path: &str, iface: &str, member: &str) -> Message {
    Message::new_method_call(BUS_NAME, path, iface, member).expect("method call")
}

/// `Node.StartUnit(unit, "replace")` on `node` through `inbox`; returns the job path.
fn start_unit(inbox: &mut Inbox, node: &str, unit: &str) -> String {
    let msg = method(&node_path(node), NODE_IFACE, "StartUnit").append2(unit, "replace");
    let reply = inbox
        .call(msg)
        .unwrap_or_else(|e| panic!("StartUnit {unit} on {node}: {e:?}"));
    reply
        .read1::<dbus::Path>()
        .expect("StartUnit returns a job path")
        .to_string()
}

/// Creates a monitor owned by `inbox`'s connection and subscribes it to `unit` on `node`.
fn monitor_unit(inbox: &mut Inbox, node: &str, unit: &str) -> String {
    let reply = inbox
        .call(method(MANAGER_PATH, MANAGER_IFACE, "CreateMonitor"))
        .expect("CreateMonitor");
    let path = reply
        .read1::<dbus::Path>()
        .expect("monitor path")
        .to_string();
    let sub = method(&path, "org.containers.hirte.Monitor", "Subscribe").append2(node, unit);
    inbox.call(sub).expect("Subscribe");
    path
}

fn spec(nodes: &[&str], manager_conf: &str) -> ClusterSpec {
    let mut s = ClusterSpec::new(nodes);
    s.manager_conf = manager_conf.to_string();
    s
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

// ---- agent killed ---------------------------------------------------------------------

// [itest->req~manager.offline-cleanup~1]
// [itest->req~manager.monitor-virtual~1]
// [itest->req~agent.reconnect~1]
#[test]
fn fault_agent_sigkill_cancels_job_sends_virtual_events_and_recovers() {
    if !hirte_tests::require_root(
        "fault_agent_sigkill_cancels_job_sends_virtual_events_and_recovers",
    ) {
        return;
    }
    let mut c =
        Cluster::start(spec(&["primary", "agent1"], "NodeHeartbeatThreshold=3s\n")).unwrap();
    c.write_unit("agent1", "slow.service", SLOW_30).unwrap();
    let mut bus = Inbox::new(&c, &[MANAGER_SIGNALS]);
    let mut mon = Inbox::new(&c, &[]);
    monitor_unit(&mut mon, "agent1", "slow.service");

    let job = start_unit(&mut bus, "agent1", "slow.service");
    // The job is in flight: systemd runs `sleep 30`.
    mon.monitor_event(
        "UnitStateChanged",
        &["agent1", "slow.service", "activating"],
        WAIT,
    )
    .unwrap_or_else(|| panic!("no activating event; got:\n{}", mon.describe_kept()));

    let t0 = Instant::now();
    let st = c
        .kill_agent("agent1", Signal::SIGKILL)
        .expect("agent reaped");
    assert_eq!(st.signal(), Some(9));
    assert!(
        bus.node_state("agent1", "offline", WAIT),
        "agent1 never went offline\n{}",
        c.log_tails()
    );
    let detect = t0.elapsed();
    let (node, unit, result) = bus
        .job_removed(&job, WAIT)
        .unwrap_or_else(|| panic!("no JobRemoved for {job}\n{}", c.log_tails()));
    assert_eq!((node.as_str(), unit.as_str()), ("agent1", "slow.service"));
    assert_eq!(result, "cancelled");
    assert_eq!(c.node_state("agent1").as_deref(), Some("offline"));

    // The monitor's owner learns that the unit is gone for it.
    let state = mon
        .monitor_event(
            "UnitStateChanged",
            &["agent1", "slow.service", "inactive", "agent-offline"],
            WAIT,
        )
        .unwrap_or_else(|| panic!("no virtual UnitStateChanged; got:\n{}", mon.describe_kept()));
    assert_eq!(
        strings_of(&state).get(4).map(String::as_str),
        Some("virtual")
    );
    mon.monitor_event("UnitRemoved", &["agent1", "slow.service", "virtual"], WAIT)
        .unwrap_or_else(|| panic!("no virtual UnitRemoved; got:\n{}", mon.describe_kept()));
    // Calls to the node fail with Offline while it is away.
    let err = call::<_, (dbus::Path,)>(
        &c.system_bus().unwrap(),
        &node_path("agent1"),
        NODE_IFACE,
        "StartUnit",
        ("slow.service", "replace"),
    )
    .unwrap_err();
    assert_eq!(err.0, "org.containers.hirte.Error.Offline", "{err:?}");

    // Back: the subscription is restored, the monitor hears of the unit again.
    let t1 = Instant::now();
    c.start_agent("agent1").unwrap();
    assert!(
        bus.node_state("agent1", "online", WAIT),
        "agent1 never came back\n{}",
        c.log_tails()
    );
    let back = t1.elapsed();
    mon.monitor_event("UnitNew", &["agent1", "slow.service", "virtual"], WAIT)
        .unwrap_or_else(|| panic!("no UnitNew after reconnect; got:\n{}", mon.describe_kept()));
    // The unit is controllable again (systemd kept running the old job meanwhile).
    ok(
        &c.hirtectl(&["stop", "agent1", "slow.service"]),
        "stop after reconnect",
    );
    mon.monitor_event(
        "UnitStateChanged",
        &["agent1", "slow.service", "inactive", "dead", "real"],
        WAIT,
    )
    .unwrap_or_else(|| {
        panic!(
            "no real event after reconnect; got:\n{}",
            mon.describe_kept()
        )
    });
    eprintln!(
        "FIGURE agent SIGKILL -> offline signal: {}; agent start -> online: {}",
        secs(detect),
        secs(back)
    );
}

// [itest->req~agent.sigterm~1]
#[test]
fn fault_agent_sigterm_exits_zero_and_node_goes_offline() {
    if !hirte_tests::require_root("fault_agent_sigterm_exits_zero_and_node_goes_offline") {
        return;
    }
    let mut c =
        Cluster::start(spec(&["primary", "agent1"], "NodeHeartbeatThreshold=3s\n")).unwrap();
    let mut bus = Inbox::new(&c, &[MANAGER_SIGNALS]);
    let t0 = Instant::now();
    let st = c
        .kill_agent("agent1", Signal::SIGTERM)
        .expect("agent reaped");
    hirte_tests::assert_within(
        "req~agent.sigterm~1",
        "SIGTERM -> exit of an idle agent (CORE_TICK)",
        t0.elapsed(),
        CORE_TICK,
        DETECTION_TOLERANCE,
    );
    assert_eq!(
        st.code(),
        Some(0),
        "agent exit status {st:?}\n{}",
        c.agent_log("agent1")
    );
    assert!(
        bus.node_state("agent1", "offline", WAIT),
        "{}",
        c.log_tails()
    );
    assert!(
        c.agent_log("agent1").contains("Shutting down"),
        "{}",
        c.agent_log("agent1")
    );
    wait_manager_log(&c, "agent1's disconnect", |l| {
        l.contains("Agent 'agent1' disconnected")
    });
    assert_all_online(&c, &["primary"]);
}

/// Five agent kills (connection closed: the manager sees EOF) and five agent stalls
/// (SIGSTOP: only the heartbeat threshold can tell), each timed from the signal to the
/// manager's `NodeConnectionStateChanged(offline)`, and from recovery to `online`.
// [itest->req~manager.heartbeat-threshold~1]
// [itest->req~agent.reconnect~1]
#[test]
fn fault_detection_time_repeated_kill_and_stall() {
    if !hirte_tests::require_root("fault_detection_time_repeated_kill_and_stall") {
        return;
    }
    const RUNS: usize = 5;
    let mut c =
        Cluster::start(spec(&["primary", "agent1"], "NodeHeartbeatThreshold=3s\n")).unwrap();
    let mut bus = Inbox::new(&c, &[MANAGER_SIGNALS]);
    let mut kill_rows = Vec::new();
    for run in 0..RUNS {
        let t0 = Instant::now();
        c.kill_agent("agent1", Signal::SIGKILL)
            .expect("agent reaped");
        assert!(
            bus.node_state("agent1", "offline", WAIT),
            "run {run}: {}",
            c.log_tails()
        );
        let offline = t0.elapsed();
        let t1 = Instant::now();
        c.start_agent("agent1").unwrap();
        assert!(
            bus.node_state("agent1", "online", WAIT),
            "run {run}: {}",
            c.log_tails()
        );
        kill_rows.push((offline, t1.elapsed()));
    }
    let mut stall_rows = Vec::new();
    for run in 0..RUNS {
        let t0 = Instant::now();
        c.signal_agent("agent1", Signal::SIGSTOP).unwrap();
        let went = bus.node_state("agent1", "offline", WAIT);
        let offline = t0.elapsed();
        let t1 = Instant::now();
        c.signal_agent("agent1", Signal::SIGCONT).unwrap();
        assert!(
            went,
            "run {run}: stalled agent never offline\n{}",
            c.log_tails()
        );
        assert!(
            bus.node_state("agent1", "online", WAIT),
            "run {run}: {}",
            c.log_tails()
        );
        stall_rows.push((offline, t1.elapsed()));
    }
    assert!(c.manager_log().contains("no heartbeat for more than 3s"));
    assert_all_online(&c, &["primary", "agent1"]);
    for (i, (off, on)) in kill_rows.iter().enumerate() {
        eprintln!(
            "FIGURE kill run {i}: SIGKILL -> offline {}, start -> online {}",
            secs(*off),
            secs(*on)
        );
    }
    for (i, (off, on)) in stall_rows.iter().enumerate() {
        eprintln!(
            "FIGURE stall run {i}: SIGSTOP -> offline {}, SIGCONT -> online {}",
            secs(*off),
            secs(*on)
        );
    }
    // A closed connection: offline within CORE_TICK of the manager noticing the EOF.
    let worst = |rows: &[(Duration, Duration)]| rows.iter().map(|r| r.0).max().unwrap_or_default();
    hirte_tests::assert_within(
        "req~manager.heartbeat-threshold~1",
        &format!("slowest of {RUNS} SIGKILL -> offline (CORE_TICK)"),
        worst(&kill_rows),
        CORE_TICK,
        DETECTION_TOLERANCE,
    );
    // A stall: the last frame came at most one HeartbeatInterval (1 s) before SIGSTOP, so
    // offline follows the signal between threshold - interval and threshold + CORE_TICK.
    let earliest = stall_rows.iter().map(|r| r.0).min().unwrap_or_default();
    assert!(
        earliest >= Duration::from_secs(2) - CORE_TICK,
        "a stalled node went offline {earliest:?} after SIGSTOP, before the 3 s threshold"
    );
    hirte_tests::assert_within(
        "req~manager.heartbeat-threshold~1",
        &format!("slowest of {RUNS} SIGSTOP -> offline (NodeHeartbeatThreshold 3 s + CORE_TICK)"),
        worst(&stall_rows),
        Duration::from_secs(3) + CORE_TICK,
        DETECTION_TOLERANCE,
    );
}

// ---- manager killed or stopped -------------------------------------------------------

// [itest->req~manager.restart-recovery~1]
// [itest->req~agent.reconnect~1]
#[test]
fn fault_manager_sigkill_restart_every_agent_back_state_correct() {
    if !hirte_tests::require_root("fault_manager_sigkill_restart_every_agent_back_state_correct") {
        return;
    }
    const NODES: [&str; 3] = ["primary", "agent1", "agent2"];
    let mut c = Cluster::start(spec(&NODES, "NodeHeartbeatThreshold=3s\n")).unwrap();
    for n in NODES {
        c.write_unit(n, "work.service", SLEEP_UNIT).unwrap();
    }
    ok(
        &c.hirtectl(&["start", "agent1", "work.service"]),
        "start before the crash",
    );
    let agents: Vec<i32> = NODES.iter().map(|n| c.agent_pid(n).unwrap()).collect();

    let st = c.kill_manager(Signal::SIGKILL).expect("manager reaped");
    assert_eq!(st.signal(), Some(9));
    // Agents notice (connection reset) and keep retrying.
    for n in NODES {
        wait_agent_log(&c, n, "the lost manager", |l| {
            l.contains("Lost the manager connection")
        });
    }
    let t0 = Instant::now();
    c.start_manager().unwrap();
    c.wait_all_online(WAIT).unwrap();
    let back = t0.elapsed();
    // ReconnectInterval (500 ms here) + CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT after the new
    // manager listens; measured from its start, so the bound holds with start-up included.
    hirte_tests::assert_within(
        "req~manager.restart-recovery~1",
        "manager start -> all 3 agents online (ReconnectInterval 0.5 s + 3 s + 5 s)",
        back,
        Duration::from_millis(500) + CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT,
        Duration::from_secs(1),
    );

    // Same agent processes: none needed a restart.
    let now: Vec<i32> = NODES.iter().map(|n| c.agent_pid(n).unwrap()).collect();
    assert_eq!(agents, now);
    let rows = c.list_nodes().expect("list-nodes");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_all_online(&c, &NODES);
    let bus = c.system_bus().unwrap();
    let status: String = prop(&bus, MANAGER_PATH, MANAGER_IFACE, "Status").unwrap();
    assert_eq!(status, "up");
    // Units survived on the nodes and are controllable through the new manager.
    let units = ok(&c.hirtectl(&["list-units", "agent1"]), "list-units agent1");
    assert!(units.contains("work.service"), "{units}");
    assert_eq!(is_active(&c, "agent1", "work.service"), "active");
    for n in NODES {
        ok(
            &c.hirtectl(&["restart", n, "work.service"]),
            &format!("restart on {n}"),
        );
        assert_eq!(is_active(&c, n, "work.service"), "active");
        ok(
            &c.hirtectl(&["stop", n, "work.service"]),
            &format!("stop on {n}"),
        );
        assert_eq!(is_active(&c, n, "work.service"), "inactive");
    }
    eprintln!(
        "FIGURE manager restart -> all 3 agents online: {}",
        secs(back)
    );
}

// [itest->req~manager.sigterm~1]
// [itest->req~manager.offline-cleanup~1]
#[test]
fn fault_manager_sigterm_answers_jobs_and_calls_in_flight_exits_zero() {
    if !hirte_tests::require_root(
        "fault_manager_sigterm_answers_jobs_and_calls_in_flight_exits_zero",
    ) {
        return;
    }
    // Long thresholds: the stalled agent2 must still count as online when SIGTERM comes.
    let mut c = Cluster::start(spec(
        &["primary", "agent1", "agent2"],
        "NodeHeartbeatThreshold=60s\nAgentCallTimeout=60s\n",
    ))
    .unwrap();
    c.write_unit("agent1", "short.service", SLOW_2).unwrap();
    c.write_unit("agent1", "slow.service", SLOW_30).unwrap();
    let mut bus = Inbox::new(&c, &[MANAGER_SIGNALS]);
    let short = start_unit(&mut bus, "agent1", "short.service");
    let slow = start_unit(&mut bus, "agent1", "slow.service");
    // A call that cannot be answered: agent2 is frozen.
    c.signal_agent("agent2", Signal::SIGSTOP).unwrap();
    let pending = bus.send_call(method(&node_path("agent2"), NODE_IFACE, "ListUnits"));
    // The call is in flight once the manager has written it to the frozen agent's socket.
    c.wait_for("the ListUnits call in agent2's receive queue", SOON, || {
        link_recv_queue(&c, "agent2") > 0
    })
    .unwrap();

    let t0 = Instant::now();
    c.signal_manager(Signal::SIGTERM).unwrap();
    // While draining, new calls are refused.
    let mut late = String::from("no error");
    for _ in 0..20 {
        let serial = bus.send_call(method(&node_path("agent1"), NODE_IFACE, "ListUnits"));
        let mut r = bus.reply(serial, WAIT).expect("answer during drain");
        if let Err(e) = r.as_result() {
            late = format!("{}: {}", e.name().unwrap_or(""), e.message().unwrap_or(""));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The short job finishes within the grace period with systemd's result; the slow one and
    // the frozen node's call are ended when the grace period runs out.
    let r_short = bus.job_removed(&short, WAIT).map(|r| r.2);
    let r_slow = bus.job_removed(&slow, WAIT).map(|r| r.2);
    let slow_ended = t0.elapsed();
    let frozen = bus.reply(pending, WAIT).map(|mut m| match m.as_result() {
        Ok(_) => "a success".to_string(),
        Err(e) => e.name().unwrap_or("").to_string(),
    });
    let st = c.wait_manager_exit(WAIT);
    let exited = t0.elapsed();
    c.signal_agent("agent2", Signal::SIGCONT).unwrap();
    let log = c.manager_log();
    let got = format!(
        "call during drain: {late}\nshort.service (2 s) result: {r_short:?}\n\
         slow.service (30 s) result: {r_slow:?}\nfrozen node's call: {frozen:?}\n\
         exit: {st:?}\nmanager log:\n{log}"
    );
    assert!(late.starts_with("org.containers.hirte.Error.Busy"), "{got}");
    assert_eq!(r_short.as_deref(), Some("done"), "{got}");
    assert_eq!(r_slow.as_deref(), Some("cancelled"), "{got}");
    assert_eq!(
        frozen.as_deref(),
        Some("org.containers.hirte.Error.Offline"),
        "{got}"
    );
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{got}");
    assert!(log.contains("Shutting down: refusing new calls"), "{log}");
    assert!(log.contains("finished: cancelled"), "{log}");
    // The grace period is given in full, and the exit follows it within a tick (the
    // tolerance covers this test's polling and a loaded machine).
    assert!(
        slow_ended >= SHUTDOWN_GRACE - Duration::from_millis(100),
        "slow.service was cancelled {slow_ended:?} after SIGTERM, before the 5 s grace"
    );
    hirte_tests::assert_within(
        "req~manager.sigterm~1",
        "SIGTERM to exit with a job and a call in flight (grace 5 s + CORE_TICK)",
        exited,
        SHUTDOWN_GRACE + CORE_TICK,
        Duration::from_millis(1000),
    );
    // The agents stay up and keep trying to reach the manager.
    for n in ["agent1", "agent2"] {
        wait_agent_log(&c, n, "the lost manager", |l| {
            l.contains("Lost the manager connection")
        });
        assert!(c.agent_pid(n).is_some(), "agent {n} exited");
    }
}

// ---- jobs ------------------------------------------------------------------------------

/// Two StartUnit calls for one unit while its start job runs: systemd merges the second into
/// the first (same systemd job), but each manager job must still end with a JobRemoved.
/// (The soak benchmark found this: with several cycles per unit in flight, JobRemoved signals
/// went missing and their job objects stayed forever.)
// [itest->req~manager.jobs~1]
// [itest->req~agent.job-done~1]
#[test]
fn fault_merged_systemd_jobs_each_end_with_job_removed() {
    if !hirte_tests::require_root("fault_merged_systemd_jobs_each_end_with_job_removed") {
        return;
    }
    let c = Cluster::start(spec(&["primary", "agent1"], "")).unwrap();
    c.write_unit("agent1", "short.service", SLOW_2).unwrap();
    let mut bus = Inbox::new(&c, &[MANAGER_SIGNALS]);
    let first = start_unit(&mut bus, "agent1", "short.service");
    let second = start_unit(&mut bus, "agent1", "short.service");
    assert_ne!(first, second, "the manager handed out one job twice");
    let r_second = bus.job_removed(&second, WAIT).map(|r| r.2);
    let r_first = bus.job_removed(&first, Duration::from_secs(5)).map(|r| r.2);
    let still: Result<String, _> = prop(&c.system_bus().unwrap(), &first, JOB_IFACE, "State");
    assert!(
        r_first.is_some() && r_second.is_some(),
        "JobRemoved: first job {first}: {r_first:?}, second job {second}: {r_second:?}; \
         the first job object still exists: {:?}; agent log:\n{}",
        still,
        c.agent_log("agent1")
            .lines()
            .filter(|l| l.contains("short.service"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(r_second.as_deref(), Some("done"));
}

// ---- network ---------------------------------------------------------------------------

// [itest->req~fault.partition~1]
// [itest->req~manager.heartbeat-threshold~1]
// [itest->req~agent.reconnect~1]
#[test]
fn fault_partition_node_offline_after_threshold_then_online_when_healed() {
    if !hirte_tests::require_root(
        "fault_partition_node_offline_after_threshold_then_online_when_healed",
    ) {
        return;
    }
    const NODES: [&str; 3] = ["primary", "agent1", "agent2"];
    let c = Cluster::start(spec(&NODES, "NodeHeartbeatThreshold=3s\n")).unwrap();
    c.write_unit("agent2", "work.service", SLEEP_UNIT).unwrap();
    let mut bus = Inbox::new(&c, &[MANAGER_SIGNALS]);

    let t0 = Instant::now();
    c.set_link("agent2", false).unwrap();
    assert!(
        bus.node_state("agent2", "offline", WAIT),
        "{}",
        c.log_tails()
    );
    let detect = t0.elapsed();
    assert!(
        detect >= Duration::from_secs(2) - CORE_TICK,
        "offline {detect:?} after the cut, before the 3 s threshold"
    );
    hirte_tests::assert_within(
        "req~fault.partition~1",
        "link cut -> offline (NodeHeartbeatThreshold 3 s + CORE_TICK)",
        detect,
        Duration::from_secs(3) + CORE_TICK,
        DETECTION_TOLERANCE,
    );
    wait_manager_log(&c, "the heartbeat timeout", |l| {
        l.contains("Agent 'agent2' disconnected: no heartbeat for more than 3s")
    });
    // The rest of the cluster is unaffected.
    assert_all_online(&c, &["primary", "agent1"]);
    ok(
        &c.hirtectl(&["list-units", "agent1"]),
        "list-units agent1 during the partition",
    );
    let line = one_line_failure(
        &c.hirtectl(&["list-units", "agent2"]),
        "list-units agent2 while cut off",
    );
    assert!(line.contains("offline"), "{line}");
    // The agent, hearing nothing from the manager, gives the link up too.
    wait_agent_log(&c, "agent2", "the silent manager", |l| {
        l.contains("Lost the manager connection: no message from the manager for 3s")
    });

    let t1 = Instant::now();
    c.set_link("agent2", true).unwrap();
    assert!(
        bus.node_state("agent2", "online", WAIT),
        "{}",
        c.log_tails()
    );
    let heal = t1.elapsed();
    ok(
        &c.hirtectl(&["start", "agent2", "work.service"]),
        "start after healing",
    );
    assert_eq!(is_active(&c, "agent2", "work.service"), "active");
    assert_all_online(&c, &NODES);
    eprintln!(
        "FIGURE partition -> offline: {}; heal -> online: {}",
        secs(detect),
        secs(heal)
    );
}

// ---- stalled agent ---------------------------------------------------------------------

// [itest->req~fault.stalled-agent~1]
// [itest->req~manager.call-timeout~1]
#[test]
fn fault_stalled_agent_call_times_out_other_nodes_keep_answering() {
    if !hirte_tests::require_root("fault_stalled_agent_call_times_out_other_nodes_keep_answering") {
        return;
    }
    // The threshold is long enough that the stalled node stays online: its call must end by
    // the call timeout, not by the node dropping.
    let c = Cluster::start(spec(
        &["primary", "agent1", "agent2"],
        "NodeHeartbeatThreshold=10s\nAgentCallTimeout=2s\n",
    ))
    .unwrap();
    let mut bus = Inbox::new(&c, &[]);
    // Baseline latency of a relayed call to agent2.
    let mut base = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        bus.call(method(&node_path("agent2"), NODE_IFACE, "ListUnits"))
            .expect("ListUnits agent2");
        base.push(t.elapsed());
    }

    c.signal_agent("agent1", Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    let stalled = bus.send_call(method(&node_path("agent1"), NODE_IFACE, "ListUnits"));
    // Meanwhile agent2 keeps answering.
    let mut during = Vec::new();
    while t0.elapsed() < Duration::from_millis(1500) {
        let t = Instant::now();
        bus.call(method(&node_path("agent2"), NODE_IFACE, "ListUnits"))
            .expect("ListUnits agent2 while agent1 is stalled");
        during.push(t.elapsed());
    }
    let mut answer = bus
        .reply(stalled, WAIT)
        .expect("the stalled node's call is answered");
    let waited = t0.elapsed();
    let e = answer.as_result().expect_err("an error");
    let name = e.name().unwrap_or("").to_string();
    // The threshold (10 s) is far beyond the call timeout (2 s): the node stays online and the
    // call ends by the timeout.
    assert_eq!(
        (name.as_str(), e.message().unwrap_or("")),
        (
            "org.containers.hirte.Error.Timeout",
            "node 'agent1' did not answer ListUnits within 2s"
        )
    );
    assert!(
        waited >= Duration::from_secs(2),
        "answered after {waited:?}"
    );
    hirte_tests::assert_within(
        "req~manager.call-timeout~1",
        "Timeout of a call to a stalled node (AgentCallTimeout 2 s + CORE_TICK)",
        waited,
        Duration::from_secs(2) + CORE_TICK,
        Duration::from_millis(500),
    );
    assert!(
        c.manager_log()
            .contains("did not answer ListUnits within 2s"),
        "{}",
        c.manager_log()
    );
    // hirtectl's view of the same: one line, non-zero exit.
    let line = one_line_failure(
        &c.hirtectl(&["list-units", "agent1"]),
        "list-units on a stalled node",
    );
    assert!(line.contains("within 2s"), "{line}");
    c.signal_agent("agent1", Signal::SIGCONT).unwrap();
    // Once resumed, the node serves again (its late answers are dropped by the manager).
    c.wait_for("agent1 answering again", WAIT, || {
        c.hirtectl(&["list-units", "agent1"]).status.success()
    })
    .unwrap();
    assert_all_online(&c, &["primary", "agent1", "agent2"]);
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    let avg = |v: &[Duration]| v.iter().sum::<Duration>() / u32::try_from(v.len().max(1)).unwrap();
    eprintln!(
        "FIGURE stalled call answered after {} ({name}); agent2 ListUnits: baseline avg {} max {} ({} calls), during stall avg {} max {} ({} calls)",
        secs(waited),
        secs(avg(&base)),
        secs(max(&base)),
        base.len(),
        secs(avg(&during)),
        secs(max(&during)),
        during.len()
    );
    // Not delayed: a call to agent2 blocked behind the stalled node would take the rest of the
    // 2 s timeout; each one answered within 0.5 s (several times the baseline) shows it was not.
    assert!(
        during.len() >= 3,
        "only {} calls to agent2 in 1.5 s",
        during.len()
    );
    hirte_tests::assert_within(
        "req~manager.call-timeout~1",
        &format!(
            "slowest of {} calls to agent2 during the stall (baseline max {})",
            during.len(),
            secs(max(&base))
        ),
        max(&during),
        Duration::ZERO,
        Duration::from_millis(500),
    );
}

/// At most 128 calls may await one node: with agent1 stopped, 96 read-only calls are taken
/// (the 97th is Busy) and 32 calls that change state fill the window, the 129th call
/// fails at once with Busy, calls to agent2 are answered meanwhile, and once agent1 resumes
/// all 128 are answered.
// [itest->req~bounds.pending-calls~1]
// [itest->req~bounds.control-reserve~1]
#[test]
fn fault_stalled_node_takes_128_calls_and_refuses_the_129th_with_busy() {
    if !hirte_tests::require_root(
        "fault_stalled_node_takes_128_calls_and_refuses_the_129th_with_busy",
    ) {
        return;
    }
    let c = Cluster::start(spec(
        &["primary", "agent1", "agent2"],
        "NodeHeartbeatThreshold=60s\nAgentCallTimeout=60s\n",
    ))
    .unwrap();
    // Two clients: the system bus lets one connection wait for at most 128 replies itself.
    let mut first = Inbox::new(&c, &[]);
    let mut bus = Inbox::new(&c, &[]);
    let list = |node: &str| method(&node_path(node), NODE_IFACE, "ListUnits");
    // A call that changes state (harmlessly): it may use the slots read-only calls leave.
    let control = || method(&node_path("agent1"), NODE_IFACE, "SetLogLevel").append1("info");
    let read_only_share = MAX_PENDING_CALLS_PER_NODE - RESERVED_CONTROL_CALLS_PER_NODE;
    c.signal_agent("agent1", Signal::SIGSTOP).unwrap();
    let mut taken: Vec<(usize, u32)> = (0..read_only_share)
        .map(|_| (0, first.send_call(list("agent1"))))
        .collect();
    // The manager reads each client's calls in order: once this one is answered, the 96
    // before it are in flight.
    first
        .call(list("agent2"))
        .expect("a call to agent2 while agent1 has 96 calls in flight");
    // Read-only calls stop at their share; the rest of the window is kept for control.
    assert_eq!(
        bus.call(list("agent1")).map(|_| ()),
        Err((
            "org.containers.hirte.Error.Busy".to_string(),
            format!("node 'agent1' has {read_only_share} calls in flight; try again later")
        ))
    );
    taken.extend(
        (read_only_share..MAX_PENDING_CALLS_PER_NODE).map(|_| (1, bus.send_call(control()))),
    );
    // ... and the next call of the second client finds the window full.
    let t = Instant::now();
    let refused = bus.call(control());
    let refused_after = t.elapsed();
    assert_eq!(
        refused.map(|_| ()),
        Err((
            "org.containers.hirte.Error.Busy".to_string(),
            "node 'agent1' has 128 calls in flight; try again later".to_string()
        ))
    );
    hirte_tests::assert_within(
        "req~bounds.pending-calls~1",
        "Busy for the 129th call to a stalled node",
        refused_after,
        Duration::ZERO,
        Duration::from_millis(500),
    );
    let t = Instant::now();
    bus.call(list("agent2"))
        .expect("a call to agent2 while agent1 has 128 calls in flight");
    hirte_tests::assert_within(
        "req~bounds.pending-calls~1",
        "a call to another node while agent1's window is full",
        t.elapsed(),
        Duration::ZERO,
        Duration::from_millis(500),
    );
    c.signal_agent("agent1", Signal::SIGCONT).unwrap();
    for (i, (client, serial)) in taken.into_iter().enumerate() {
        let inbox = if client == 0 { &mut first } else { &mut bus };
        let mut reply = inbox
            .reply(serial, WAIT)
            .unwrap_or_else(|| panic!("call {i} of 128 never answered"));
        assert!(reply.as_result().is_ok(), "call {i} of 128: {reply:?}");
    }
    bus.call(list("agent1"))
        .expect("agent1 takes calls again once its window drained");
}

// ---- node's systemd restarted -----------------------------------------------------------

/// Starts a new `systemd --user` for `node` in that node's namespaces (entered through its
/// agent, which shares them) and cgroup, as the harness does at cluster start. The harness
/// has no call for this; the cluster's cgroup teardown still ends the process.
fn respawn_node_systemd(c: &Cluster, node: &str) -> Child {
    let idx = c
        .nodes()
        .iter()
        .position(|n| *n == node)
        .expect("node index");
    let agent = c.agent_pid(node).expect("agent running");
    let dir = c.node_dir(node).expect("node dir");
    let procs: Vec<PathBuf> = c
        .resources()
        .cgroups
        .iter()
        .map(|r| r.join(format!("n{idx}")).join("cgroup.procs"))
        .collect();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("systemd.log"))
        .expect("systemd.log");
    let systemd = ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("systemd binary");
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", &agent.to_string(), "--net", "--mount", "sh", "-c"])
        .arg(r#"sd=$1; shift; for f in "$@"; do echo $$ > "$f" || exit 125; done; exec "$sd" --user"#)
        .arg("sh")
        .arg(systemd)
        .args(&procs)
        .current_dir(&dir)
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("DBUS_SESSION_BUS_ADDRESS", format!("unix:path={}", dir.join("run/bus").display()))
        .env("SYSTEMD_LOG_TARGET", "console")
        .env("SYSTEMD_COLORS", "0")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log);
    for v in [
        "DBUS_SYSTEM_BUS_ADDRESS",
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "MANAGERPID",
        "INVOCATION_ID",
        "JOURNAL_STREAM",
        "WATCHDOG_PID",
        "WATCHDOG_USEC",
    ] {
        cmd.env_remove(v);
    }
    cmd.spawn().expect("spawning systemd --user")
}

// [itest->req~fault.systemd-restart~1]
// [itest->req~agent.systemd-reconnect~1]
#[test]
fn fault_node_systemd_restarted_agent_refuses_then_reattaches() {
    if !hirte_tests::require_root("fault_node_systemd_restarted_agent_refuses_then_reattaches") {
        return;
    }
    let c = Cluster::start(spec(
        &["primary", "agent1", "agent2"],
        "NodeHeartbeatThreshold=3s\n",
    ))
    .unwrap();
    // In the persistent unit dir, so the new systemd finds it too.
    write_config_unit(&c, "agent1", "slow.service", SLOW_30, true);
    write_config_unit(&c, "agent1", "work.service", SLEEP_UNIT, true);
    let mut bus = Inbox::new(&c, &[MANAGER_SIGNALS]);
    let job = start_unit(&mut bus, "agent1", "slow.service");

    let old = c.systemd_pid("agent1").expect("systemd of agent1");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), Signal::SIGTERM).unwrap();
    c.wait_for("agent1's systemd to exit", WAIT, || {
        c.systemd_pid("agent1").is_none()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.systemd_log("agent1")));
    wait_agent_log(&c, "agent1", "the lost systemd", |l| {
        l.contains("Lost systemd")
    });
    // The job in flight is not left hanging: it ends with a result.
    let (_, _, result) = bus
        .job_removed(&job, WAIT)
        .unwrap_or_else(|| panic!("no JobRemoved\n{}", c.log_tails()));
    assert!(
        ["cancelled", "canceled"].contains(&result.as_str()),
        "{result}"
    );
    // The node stays online and answers every call with an error meanwhile.
    assert_eq!(c.node_state("agent1").as_deref(), Some("online"));
    let line = one_line_failure(
        &c.hirtectl(&["list-units", "agent1"]),
        "list-units without systemd",
    );
    assert!(line.contains("not reachable"), "{line}");
    ok(
        &c.hirtectl(&["list-units", "agent2"]),
        "list-units on another node",
    );
    assert!(
        c.agent_pid("agent1").is_some(),
        "agent1 exited with its systemd"
    );

    let mut sd = respawn_node_systemd(&c, "agent1");
    let t0 = Instant::now();
    wait_agent_log(&c, "agent1", "the reconnect to systemd", |l| {
        l.contains("Reconnected to systemd")
    });
    let back = t0.elapsed();
    let units = ok(
        &c.hirtectl(&["list-units", "agent1"]),
        "list-units after systemd is back",
    );
    assert!(units.contains("default.target"), "{units}");
    ok(
        &c.hirtectl(&["start", "agent1", "work.service"]),
        "start after systemd is back",
    );
    let status = ok(&c.hirtectl(&["status", "agent1", "work.service"]), "status");
    assert!(status.contains("active"), "{status}");
    assert_all_online(&c, &["primary", "agent1", "agent2"]);
    eprintln!(
        "FIGURE node systemd respawned -> agent reattached: {}",
        secs(back)
    );
    c.shutdown().unwrap();
    // The cluster's cgroup teardown killed it; reap it.
    let _ = sd.wait();
}

/// Bytes waiting unread in the node's agent socket to the manager (`ss` Recv-Q).
fn link_recv_queue(c: &Cluster, node: &str) -> u64 {
    let out = c.node_shell(node, "ss -Htn state established '( dport = :2020 )'");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
