//! The bounded queues between threads, shown full on real daemons: the agent's outbound
//! queue to the manager (`LINK_OUTBOUND_DEPTH`, with the `JobDone` retry list) and the core
//! queues of the manager and of the agent (`CORE_QUEUE_DEPTH`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::{
    BUS_WRITE_TIMEOUT, CORE_QUEUE_DEPTH, LINK_OUTBOUND_DEPTH, MAX_FRAME_SIZE,
};
use hirte_common::frame::encode_message;
use hirte_common::protocol;
use hirte_tests::{Cluster, ClusterSpec, Signal, MANAGER_PORT};

/// Writes a sysctl of the node's network namespace (`key` as under /proc/sys).
fn set_net_sysctl(c: &Cluster, node: &str, key: &str, value: &str) {
    let path = format!("/proc/sys/{key}");
    let v = value.to_string();
    let got = c
        .in_node_net(node, move || {
            std::fs::write(&path, &v).unwrap();
            std::fs::read_to_string(&path).unwrap()
        })
        .unwrap();
    assert_eq!(
        got.split_whitespace().collect::<Vec<_>>(),
        value.split_whitespace().collect::<Vec<_>>(),
        "{key} in {node}"
    );
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

// ---- agent outbound queue: the JobDone retry list ------------------------------------------

// [itest->req~bounds.queues~1]
// [itest->req~agent.job-done~1]
#[test]
fn bounds_queues_agent_outbound_full_keeps_every_job_done_for_later() {
    if !hirte_tests::require_root(
        "bounds_queues_agent_outbound_full_keeps_every_job_done_for_later",
    ) {
        return;
    }
    /// Manager jobs that end at the same moment on the agent. With metrics on, each sends
    /// `JobMetrics` and `JobDone`: 1,000 frames, far more than the socket buffers (4 KiB
    /// each side, set below) and the 256-frame outbound queue hold.
    const JOBS: usize = 500;
    const _: () = assert!(2 * JOBS > LINK_OUTBOUND_DEPTH + 100);
    let mut spec = ClusterSpec::new(&["primary", "n1"]);
    spec.start_manager = false;
    spec.start_agents = false;
    // The manager stays stopped while 500 jobs end, which takes over 3 s on a loaded machine:
    // neither side may give the link up meanwhile for lack of heartbeats (the harness default
    // would after 3 s). The agent's LINK_WRITE_TIMEOUT (5 s) still applies: this test is in
    // the time-bounds group (.config/nextest.toml) so that other tests' load does not add to it.
    spec.agent_conf = "ManagerHeartbeatThreshold=60s\n".into();
    spec.manager_conf = "NodeHeartbeatThreshold=60s\n".into();
    let mut c = Cluster::start(spec).unwrap();
    // Small socket buffers on both ends, so a stopped manager stalls the agent's link
    // thread after a few KiB instead of after the default buffers (hundreds of KiB).
    set_net_sysctl(&c, "primary", "net/ipv4/tcp_rmem", "4096 4096 4096");
    set_net_sysctl(&c, "n1", "net/ipv4/tcp_wmem", "4096 4096 4096");
    c.start_manager().unwrap();
    c.start_agent("n1").unwrap();
    c.wait_node_state("n1", "online", SOON).unwrap();

    // Every start of gate.service merges into systemd's one start job, which ends when the
    // test creates the gate file: then all JOBS manager jobs end in one turn of the agent.
    let gate = c.node_dir("n1").unwrap().join("gate");
    c.write_unit(
        "n1",
        "gate.service",
        &format!(
            "[Service]\nType=oneshot\nExecStartPre=/bin/sh -c \"while [ ! -e {} ]; do sleep 0.05; done\"\nExecStart=/bin/true\n",
            gate.display()
        ),
    )
    .unwrap();
    let bus = c.system_bus().unwrap();
    let () = call(&bus, MANAGER_PATH, MANAGER_IFACE, "EnableMetrics", ()).unwrap();
    let sig = Signals::manager(&c);
    let mut ids = BTreeSet::new();
    for i in 0..JOBS {
        let (job,): (dbus::Path<'static>,) = call(
            &bus,
            &node_path("n1"),
            NODE_IFACE,
            "StartUnit",
            ("gate.service", "replace"),
        )
        .unwrap_or_else(|e| panic!("job {i}: {e:?}"));
        let id: u32 = job.rsplit('/').next().unwrap().parse().unwrap();
        ids.insert(id);
    }

    // The manager stops reading; the jobs end on the agent.
    c.signal_manager(Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    std::fs::write(&gate, "").unwrap();
    let done_line = "(start gate.service) done: done";
    let ended = c.wait_for("every job to end on the agent", SOON, || {
        count(&c.agent_log("n1"), done_line) == JOBS
    });
    let log = c.agent_log("n1");
    let dropped = count(
        &log,
        "Outgoing queue to the manager is full; message dropped",
    );
    c.signal_manager(Signal::SIGCONT).unwrap();
    let held = stopped.elapsed();
    ended.unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
    // The queue was full: JobMetrics (which may be dropped) were.
    assert!(dropped > 0, "the outbound queue never filled:\n{log}");

    // Every job's JobDone reached the manager, in the order the agent ended the jobs.
    let agent_order: Vec<u32> = log
        .lines()
        .filter(|l| l.contains(done_line))
        .map(|l| {
            let w = l.split("Job ").nth(1).unwrap();
            w.split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect();
    let mut removed = Vec::new();
    let deadline = Instant::now() + SOON;
    while removed.len() < JOBS && Instant::now() < deadline {
        if let Some(m) = sig.wait(Duration::from_millis(200), |m| {
            m.member().as_deref() == Some("JobRemoved")
        }) {
            let (id, _p, node, _unit, result) = m
                .read5::<u32, dbus::Path, String, String, String>()
                .unwrap();
            assert_eq!((node.as_str(), result.as_str()), ("n1", "done"), "job {id}");
            removed.push(id);
        }
    }
    assert_eq!(removed.len(), JOBS, "{}", c.log_tails());
    assert_eq!(removed.iter().copied().collect::<BTreeSet<_>>(), ids);
    assert_eq!(removed, agent_order);
    let log = c.agent_log("n1");
    assert!(!log.contains("Result of job"), "{log}");
    assert!(!log.contains("Lost the manager connection"), "{log}");
    assert_eq!(c.node_state("n1").as_deref(), Some("online"));
    eprintln!(
        "FIGURE agent outbound queue: {JOBS} jobs ended while the manager was stopped for {held:?}; \
         {dropped} JobMetrics dropped at the full queue; {} JobRemoved (done), in the agent's order",
        removed.len()
    );
}

// ---- manager core queue ----------------------------------------------------------------

/// PID of the cluster's system-bus `dbus-daemon` (its config file is in the cluster dir).
fn bus_daemon_pid(c: &Cluster) -> i32 {
    let dir = c.dir().display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("dbus-daemon") && cmd.contains(&format!("--config-file={dir}")) {
            return pid;
        }
    }
    panic!("no dbus-daemon for {dir}");
}

// [itest->req~bounds.bus-write~1]
#[test]
fn bounds_queues_manager_stalled_bus_never_stops_the_core_and_ends_it_after_the_timeout() {
    if !hirte_tests::require_root(
        "bounds_queues_manager_stalled_bus_never_stops_the_core_and_ends_it_after_the_timeout",
    ) {
        return;
    }
    let mut spec = ClusterSpec::new(&["primary", "spare"]);
    spec.start_agents = false;
    let mut c = Cluster::start(spec).unwrap();
    let mut raw = RawLink::connect(&c, "spare");
    raw.register("spare").expect("Register answered");
    let addr = c.bus_address();

    // A caller waits for an answer from "spare"; the raw agent answers it with 3 MiB, more
    // than the system bus socket takes while the bus is stopped.
    let caller = std::thread::spawn(move || {
        let bus = hirte_tests::connect_bus(&addr).unwrap();
        let r: Result<(String,), dbus::Error> = bus
            .with_proxy(BUS_NAME, node_path("spare"), Duration::from_secs(60))
            .method_call(NODE_IFACE, "GetUnitFileState", ("x.service",));
        r.map(|(s,)| s.len())
    });
    let relayed = loop {
        let m = raw.read_msg(SOON).expect("the relayed call");
        if m.msg_type() == MessageType::MethodCall
            && m.member().as_deref() == Some("GetUnitFileState")
        {
            break m;
        }
    };
    let bus_pid = nix::unistd::Pid::from_raw(bus_daemon_pid(&c));
    nix::sys::signal::kill(bus_pid, Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    let big = "x".repeat(3 * 1024 * 1024);
    raw.send_msg(relayed.method_return().append1(big.as_str()), 2)
        .unwrap();

    // The core goes on serving agents while the answer waits for the bus: every heartbeat
    // is echoed, for 3 s.
    let mut serial = 3;
    let mut echoes = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        raw.send_msg(heartbeat(), serial).unwrap();
        serial += 1;
        let echo = raw.read_msg(Duration::from_secs(1));
        assert!(
            echo.is_some_and(|m| m.member().as_deref() == Some("Heartbeat")),
            "heartbeat {serial} not echoed while the bus is stopped\n{}",
            c.log_tails()
        );
        echoes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // A bus that takes nothing for BUS_WRITE_TIMEOUT ends the manager with a reason (under
    // systemd, Restart=on-failure brings it back; the agents reconnect).
    let status = c.wait_manager_exit(BUS_WRITE_TIMEOUT + Duration::from_secs(10));
    let exited_after = t0.elapsed();
    nix::sys::signal::kill(bus_pid, Signal::SIGCONT).unwrap();
    let status = status.unwrap_or_else(|| panic!("manager still running\n{}", c.log_tails()));
    assert!(!status.success(), "{status:?}");
    assert!(
        c.manager_log()
            .contains("the bus has not taken our messages for 10s"),
        "{}",
        c.log_tails()
    );
    assert!(
        exited_after >= BUS_WRITE_TIMEOUT
            && exited_after < BUS_WRITE_TIMEOUT + Duration::from_secs(5),
        "exited after {exited_after:?}"
    );
    // The caller gets an error (its connection's peer went away), not a hang.
    let _ = caller.join().unwrap();
    eprintln!(
        "FIGURE stalled system bus: {echoes} heartbeats echoed meanwhile; manager exited after {exited_after:?} ({status:?})"
    );
}

/// Stops one thread of another process (ptrace), leaving its other threads running: the
/// manager's core (its main thread) without its connection threads.
struct StoppedThread(nix::unistd::Pid);

impl StoppedThread {
    /// Stops the thread while it sleeps in `poll` (its idle wait), never halfway through its
    /// work: a thread frozen while it holds the event queue's or the log's lock would stall
    /// the connection threads too, which no running core can do.
    fn stop_idle(tid: i32) -> StoppedThread {
        use nix::sys::ptrace;
        use nix::sys::wait::{waitpid, WaitPidFlag};
        let tid = nix::unistd::Pid::from_raw(tid);
        for _ in 0..500 {
            ptrace::seize(tid, ptrace::Options::empty()).unwrap();
            ptrace::interrupt(tid).unwrap();
            waitpid(tid, Some(WaitPidFlag::__WALL)).unwrap();
            // Interrupted in a system call, `orig_rax` holds its number (else -1).
            let regs = ptrace::getregs(tid).unwrap();
            let in_poll = [nix::libc::SYS_poll, nix::libc::SYS_ppoll]
                .iter()
                .any(|nr| u64::try_from(*nr).ok() == Some(regs.orig_rax));
            if in_poll {
                return StoppedThread(tid);
            }
            ptrace::detach(tid, None).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("the thread was never found idle in poll");
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        let _ = nix::sys::ptrace::detach(self.0, None);
    }
}

// [itest->req~bounds.queues~1]
#[test]
fn bounds_queues_manager_core_queue_full_closes_the_flooding_link() {
    if !hirte_tests::require_root("bounds_queues_manager_core_queue_full_closes_the_flooding_link")
    {
        return;
    }
    let mut spec = ClusterSpec::new(&["primary", "spare"]);
    spec.start_agents = false;
    spec.manager_conf = "NodeHeartbeatThreshold=3s\n".into();
    let c = Cluster::start(spec).unwrap();
    let mut raw = RawLink::connect(&c, "spare");
    raw.register("spare").expect("Register answered");

    // Nothing an agent sends can stall the core (bus writes and agent calls never block
    // it), so the test stops the core thread alone; the connection threads keep reading.
    let core = StoppedThread::stop_idle(c.manager_pid().unwrap());
    // The connection thread answers one heartbeat per CORE_TICK itself; the next one, right
    // after, is the core's to answer.
    raw.send_msg(heartbeat(), 2).unwrap();
    raw.send_msg(heartbeat(), 3).unwrap();
    assert!(
        raw.read_msg(Duration::from_millis(500)).is_some(),
        "the connection thread did not echo the first heartbeat"
    );
    assert!(
        raw.read_msg(Duration::from_millis(500)).is_none(),
        "a stopped core echoed a heartbeat"
    );
    // More events than the core queue holds.
    let mut flood = Vec::new();
    for i in 0..(CORE_QUEUE_DEPTH + 1000) {
        let mut m = heartbeat();
        m.set_serial(u32::try_from(i).unwrap() + 4);
        flood.extend(encode_message(&m, MAX_FRAME_SIZE).unwrap());
    }
    let t0 = Instant::now();
    let _ = raw.send_raw(&flood); // fails once the manager closes the link
    let closed = raw.closed_within(SOON);
    let closed_after = t0.elapsed();
    let warned = c.wait_for("the close-not-delivered warning", SOON, || {
        c.manager_log()
            .contains("core queue full, close not delivered")
    });
    let stalled = t0.elapsed();
    drop(core);
    assert!(
        closed,
        "the flooding link was not closed\n{}",
        c.log_tails()
    );
    warned.unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
    // Closed by its connection thread after waiting CORE_PUSH_TIMEOUT (2 s) for room.
    assert!(
        closed_after >= Duration::from_millis(1500),
        "closed after {closed_after:?}"
    );
    // The close never reached the core: the node is still online until its heartbeats
    // are missing for NodeHeartbeatThreshold (3 s).
    let t1 = Instant::now();
    assert_eq!(c.node_state("spare").as_deref(), Some("online"));
    c.wait_node_state("spare", "offline", SOON).unwrap();
    let offline_after = t1.elapsed();
    wait_manager_log(&c, "the heartbeat timeout", |l| {
        l.contains("Agent 'spare' disconnected: no heartbeat for more than 3s")
    });
    // The node can register again; the manager works as before.
    let mut again = RawLink::connect(&c, "spare");
    let reply = again.register("spare").expect("second Register answered");
    assert_eq!(error_name(reply), None);
    c.wait_node_state("spare", "online", SOON).unwrap();
    eprintln!(
        "FIGURE manager core queue: {} heartbeats flooded with the core stopped; link closed after {closed_after:?}, \
         close-not-delivered warning after {stalled:?}; offline {offline_after:?} after the core resumed",
        CORE_QUEUE_DEPTH + 1000
    );
}

// ---- agent core queue ------------------------------------------------------------------

/// Node "n1"'s agent, started towards a listener the test holds on the manager's address
/// (no manager runs).
fn agent_with_fake_manager(agent_conf: &str) -> (Cluster, TcpListener) {
    let mut spec = ClusterSpec::new(&["primary", "n1"]);
    spec.start_manager = false;
    spec.start_agents = false;
    spec.agent_conf = agent_conf.to_string();
    let mut c = Cluster::start(spec).unwrap();
    let ip = c.node_ip("primary").unwrap();
    let listener = c
        .in_node_net("primary", move || {
            TcpListener::bind((ip.as_str(), MANAGER_PORT))
        })
        .unwrap()
        .unwrap();
    c.start_agent("n1").unwrap();
    (c, listener)
}

/// The manager's end of one agent connection, played by the test.
struct FakeManager {
    link: RawLink,
}

impl FakeManager {
    /// Accepts the next agent connection and answers its Register.
    fn accept(listener: &TcpListener, timeout: Duration) -> FakeManager {
        let deadline = Instant::now() + timeout;
        listener.set_nonblocking(true).unwrap();
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("no agent connection: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        let mut fm = FakeManager {
            link: RawLink::from_stream(stream),
        };
        let register = fm.read(deadline).expect("Register");
        assert_eq!(register.member().as_deref(), Some("Register"));
        fm.send(register.method_return(), 1).unwrap();
        fm
    }

    fn send(&mut self, msg: Message, serial: u32) -> std::io::Result<()> {
        self.link.send_msg(msg, serial)
    }

    fn read(&mut self, deadline: Instant) -> Option<Message> {
        self.link
            .read_msg(deadline.saturating_duration_since(Instant::now()))
    }
}

fn agent_call<'a>(member: &str, arg: impl Into<Option<&'a str>>) -> Message {
    let m = Message::new_method_call(
        protocol::AGENT_BUS_NAME,
        protocol::INTERNAL_AGENT_PATH,
        protocol::INTERNAL_AGENT_IFACE,
        member,
    )
    .unwrap();
    match arg.into() {
        Some(a) => m.append1(a),
        None => m,
    }
}

// [itest->req~bounds.queues~1]
// [itest->req~agent.reconnect~1]
#[test]
fn bounds_queues_agent_core_queue_full_drops_the_link_and_reconnects() {
    if !hirte_tests::require_root(
        "bounds_queues_agent_core_queue_full_drops_the_link_and_reconnects",
    ) {
        return;
    }
    // The test plays the manager: the real one never has more than
    // MAX_PENDING_CALLS_PER_NODE (128) calls out to a node, far below the queue's 4,096.
    // The fake manager echoes no heartbeats; only the full queue may end the link.
    let (c, listener) = agent_with_fake_manager("ManagerHeartbeatThreshold=1min\n");
    let mut fm = FakeManager::accept(&listener, SOON);
    wait_agent_log(&c, "n1", "the registration", |l| {
        l.contains("Connected to manager at")
    });

    // The node's systemd stops: the agent's core blocks in the first call (up to
    // SYSTEMD_CALL_TIMEOUT, 25 s) while its link thread keeps queueing the rest.
    let sd = nix::unistd::Pid::from_raw(c.systemd_pid("n1").unwrap());
    nix::sys::signal::kill(sd, Signal::SIGSTOP).unwrap();
    let calls = CORE_QUEUE_DEPTH + 1000;
    let mut flood = Vec::new();
    for i in 0..calls {
        // The first call blocks the core; the rest need no systemd, so the backlog drains fast.
        let mut m = if i == 0 {
            agent_call("GetUnitFileState", "default.target")
        } else {
            agent_call("DisableMetrics", None)
        };
        m.set_serial(u32::try_from(i).unwrap() + 2);
        flood.extend(encode_message(&m, MAX_FRAME_SIZE).unwrap());
    }
    let t0 = Instant::now();
    // Kept open until the agent drops it (closing it would end the link before the bound).
    let writer = std::thread::spawn(move || {
        let _ = fm.link.send_raw(&flood); // fails once the agent drops the link
        fm
    });
    let gave_up = c.wait_for("the agent to give the link up", SOON, || {
        c.agent_log("n1").contains(
            "Lost the manager connection: agent core not accepting messages; reconnecting",
        )
    });
    let after = t0.elapsed();
    nix::sys::signal::kill(sd, Signal::SIGCONT).unwrap();
    gave_up.unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
    drop(writer.join().unwrap());
    assert!(
        after >= Duration::from_millis(1500),
        "gave up after {after:?}"
    );

    // The agent reconnects by itself and serves calls again. Answers to the flood's calls
    // may still come on the new connection; only ours counts.
    let t1 = Instant::now();
    let deadline = t1 + Duration::from_secs(20);
    let state = 'outer: loop {
        assert!(Instant::now() < deadline, "no answer\n{}", c.log_tails());
        let mut fm = FakeManager::accept(&listener, SOON);
        let serial = 0x7fff_0000;
        if fm
            .send(agent_call("GetUnitFileState", "default.target"), serial)
            .is_err()
        {
            continue;
        }
        while let Some(m) = fm.read(Instant::now() + SOON) {
            if m.get_reply_serial() == Some(serial) {
                assert_eq!(m.msg_type(), MessageType::MethodReturn, "{m:?}");
                break 'outer m.read1::<String>().unwrap();
            }
        }
    };
    assert!(!state.is_empty());
    let back = t1.elapsed();
    eprintln!(
        "FIGURE agent core queue: {calls} calls with the core blocked; link dropped after {after:?}; \
         answering again {back:?} after systemd resumed"
    );
}

// ---- agent handshake -----------------------------------------------------------------------

// [itest->req~agent.register~1]
#[test]
fn bounds_queues_agent_gives_up_on_an_unanswered_register_after_the_handshake_timeout() {
    if !hirte_tests::require_root(
        "bounds_queues_agent_gives_up_on_an_unanswered_register_after_the_handshake_timeout",
    ) {
        return;
    }
    let (c, listener) = agent_with_fake_manager("");
    // A "manager" that accepts and reads the Register, and never answers it.
    listener.set_nonblocking(false).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let mut silent = RawLink::from_stream(stream);
    let register = silent.read_msg(SOON).expect("Register");
    assert_eq!(register.member().as_deref(), Some("Register"));
    let t0 = Instant::now();
    wait_agent_log(&c, "n1", "the handshake timeout", |l| {
        l.contains("no answer to Register within 5s")
    });
    let after = t0.elapsed();
    assert!(after >= Duration::from_secs(4), "gave up after {after:?}");
    hirte_tests::assert_within(
        "req~agent.register~1",
        "unanswered Register given up (HANDSHAKE_TIMEOUT 5 s)",
        after,
        Duration::from_secs(5),
        Duration::from_secs(1),
    );
    eprintln!("FIGURE agent handshake: unanswered Register given up after {after:?}");
}

/// The answer to the call with `serial` (heartbeats and other signals are skipped).
fn answer_to(fm: &mut FakeManager, serial: u32) -> Message {
    let deadline = Instant::now() + SOON;
    loop {
        let m = fm
            .read(deadline)
            .unwrap_or_else(|| panic!("no answer to call {serial}"));
        if matches!(m.msg_type(), MessageType::MethodReturn | MessageType::Error)
            && m.get_reply_serial() == Some(serial)
        {
            return m;
        }
    }
}

/// The agent answers calls it cannot execute with clear errors and goes on: a wrong signature
/// gets InvalidArgs naming both signatures, an unknown member UnknownMethod, another
/// interface UnknownInterface. The test plays the manager.
// [itest->req~agent.relay~1]
#[test]
fn agent_answers_malformed_calls_from_the_manager_with_clear_errors() {
    if !hirte_tests::require_root(
        "agent_answers_malformed_calls_from_the_manager_with_clear_errors",
    ) {
        return;
    }
    let (c, listener) = agent_with_fake_manager("");
    let mut fm = FakeManager::accept(&listener, SOON);
    let other_iface = Message::new_method_call(
        protocol::AGENT_BUS_NAME,
        protocol::INTERNAL_AGENT_PATH,
        "org.example.NotHirte",
        "ListUnits",
    )
    .unwrap();
    let cases: Vec<(Message, &str, &str)> = vec![
        (
            agent_call("StartUnit", None).append1(7u32),
            "org.containers.hirte.Error.InvalidArgs",
            "StartUnit takes (",
        ),
        (
            agent_call("Frobnicate", "x"),
            "org.freedesktop.DBus.Error.UnknownMethod",
            "Frobnicate",
        ),
        (
            other_iface,
            "org.freedesktop.DBus.Error.UnknownInterface",
            "org.example.NotHirte",
        ),
    ];
    for (serial, (msg, name, text)) in (10u32..).zip(cases) {
        fm.send(msg, serial).unwrap();
        let mut answer = answer_to(&mut fm, serial);
        let err = answer.as_result().expect_err("an error answer");
        let (got, message) = (err.name().unwrap_or(""), err.message().unwrap_or(""));
        assert_eq!(got, name, "{message}");
        assert!(message.contains(text), "{name}: {message}");
    }
    // Still serving: a good call is answered.
    fm.send(agent_call("ListUnits", None), 20).unwrap();
    let mut answer = answer_to(&mut fm, 20);
    assert!(answer.as_result().is_ok(), "{:?}", answer.as_result().err());
    assert!(c.agent_pid("n1").is_some(), "the agent exited");
}

/// The agent's local API tells the node when the manager was last heard and when the link
/// was lost; a change of `Status` is announced with PropertiesChanged.
// [itest->req~agent.local-api~1]
#[test]
fn agent_local_api_reports_last_seen_and_disconnect_times() {
    if !hirte_tests::require_root("agent_local_api_reports_last_seen_and_disconnect_times") {
        return;
    }
    let now_us = || {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros(),
        )
        .unwrap()
    };
    let (c, listener) = agent_with_fake_manager("");
    let node_bus = hirte_tests::connect_bus(&c.node_bus_address("n1").unwrap()).unwrap();
    node_bus
        .add_match_no_cb(
            "type='signal',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',path='/org/containers/hirte'",
        )
        .unwrap();
    let agent = node_bus.with_proxy(protocol::AGENT_BUS_NAME, "/org/containers/hirte", SOON);
    let get_u64 = |name: &str| -> u64 {
        use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
        agent.get(protocol::AGENT_IFACE, name).unwrap()
    };
    let get_str = |name: &str| -> String {
        use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
        agent.get(protocol::AGENT_IFACE, name).unwrap()
    };
    let mut fm = FakeManager::accept(&listener, SOON);
    c.wait_for("the agent online", SOON, || get_str("Status") == "online")
        .unwrap();
    assert_eq!(get_u64("DisconnectTimestamp"), 0, "no link lost yet");
    // Every frame from the manager counts: a heartbeat sent now moves LastSeenTimestamp.
    let before_beat = now_us();
    let beat = Message::new_signal(
        protocol::INTERNAL_MANAGER_PATH,
        protocol::INTERNAL_MANAGER_IFACE,
        "Heartbeat",
    )
    .unwrap();
    fm.send(beat, 2).unwrap();
    c.wait_for("LastSeenTimestamp after the heartbeat", SOON, || {
        get_u64("LastSeenTimestamp") >= before_beat
    })
    .unwrap();
    assert!(get_u64("LastSeenTimestamp") <= now_us());

    // The link goes: Status offline with PropertiesChanged, DisconnectTimestamp set.
    let before_drop = now_us();
    drop(fm);
    let mut changed = None;
    let deadline = Instant::now() + SOON;
    // (The "online" of the connect may still be queued before it.)
    while changed.as_deref() != Some("offline") && Instant::now() < deadline {
        if let Ok(Some(m)) = node_bus
            .channel()
            .blocking_pop_message(Duration::from_millis(200))
        {
            if let Ok((iface, props)) = m.read2::<&str, dbus::arg::PropMap>() {
                if iface == protocol::AGENT_IFACE {
                    changed = dbus::arg::prop_cast::<String>(&props, "Status").cloned();
                }
            }
        }
    }
    assert_eq!(changed.as_deref(), Some("offline"));
    assert_eq!(get_str("Status"), "offline");
    let lost = get_u64("DisconnectTimestamp");
    assert!(
        (before_drop..=now_us()).contains(&lost),
        "DisconnectTimestamp {lost} outside the drop ({before_drop}..now)"
    );
}
