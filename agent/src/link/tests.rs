//! The link thread against a fake manager on a Unix socket: what wakes it while idle.

use super::*;
use crate::reconnect::SwitchRequest;
use hirte_common::stream::LinkStream;
use std::os::unix::net::UnixListener;
use std::time::Duration;

struct Running {
    /// The fake manager's end, kept open so the session stays up.
    manager: FrameLink,
    outbound: Arc<BoundedQueue<Vec<u8>>>,
    events: Arc<BoundedQueue<FromLink>>,
    shutdown: Arc<AtomicBool>,
    switch: Arc<SwitchRequest>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts a link thread named `name` (heartbeat every 10 s, manager silence 60 s) and
/// answers its Register; returns once the core heard `Connected`.
fn connected(name: &str) -> Running {
    let sock = std::env::temp_dir().join(format!("hirte-{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    let mut cfg = AgentConfig {
        node_name: "n".into(),
        ..AgentConfig::default()
    };
    for (k, v) in [
        ("ManagerAddress", format!("unix:path={}", sock.display())),
        ("HeartbeatInterval", "10s".to_string()),
        ("ManagerHeartbeatThreshold", "60s".to_string()),
    ] {
        cfg.apply(&hirte_common::config::cli_entry(k, &v)).unwrap();
    }
    let outbound = Arc::new(BoundedQueue::new(16).unwrap());
    let events = Arc::new(BoundedQueue::new(16).unwrap());
    let shutdown = Arc::new(AtomicBool::new(false));
    let switch = Arc::new(SwitchRequest::waking(outbound.clone()));
    let ch = Channels {
        events: events.clone(),
        outbound: outbound.clone(),
        shutdown: shutdown.clone(),
        serials: Arc::new(SerialCounter::default()),
        session: Arc::new(AtomicU64::new(0)),
    };
    let reconnect = Reconnect::new(&cfg, switch.clone());
    let link = Link::new(
        cfg,
        &ch,
        Arc::new(AtomicU64::new(0)),
        None,
        Arc::new(AtomicBool::new(false)),
        reconnect,
    );
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || link.run())
        .unwrap();
    let (stream, _) = listener.accept().unwrap();
    let _ = std::fs::remove_file(&sock);
    let mut manager = FrameLink::plain(LinkStream::Unix(stream), MAX_FRAME_SIZE);
    let register = loop {
        manager.read_within(Duration::from_secs(5)).unwrap();
        if let Some(m) = manager.next_message().unwrap() {
            break m;
        }
    };
    assert_eq!(register.member().as_deref(), Some("Register"));
    let mut reply = register.method_return();
    let bytes = SerialCounter::default()
        .encode(&mut reply, MAX_FRAME_SIZE)
        .unwrap();
    manager.write_frame(&bytes).unwrap();
    match next_event(&events) {
        Some(FromLink::Connected(_)) => {}
        _ => panic!("the link did not register"),
    }
    Running {
        manager,
        outbound,
        events,
        shutdown,
        switch,
        thread,
    }
}

fn next_event(events: &BoundedQueue<FromLink>) -> Option<FromLink> {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Some(ev) = events.try_pop() {
            return Some(ev);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// The thread's voluntary context switches: each one is a wake-up from a blocking wait.
fn wake_ups(name: &str) -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap();
        return line.trim().parse().unwrap();
    }
    panic!("no thread named {name}");
}

/// The manager's heartbeats from the agent, counted while draining the socket.
fn heartbeats(manager: &mut FrameLink) -> usize {
    let mut n = 0;
    loop {
        while let Some(m) = manager.next_message().unwrap() {
            n += usize::from(m.member().as_deref() == Some("Heartbeat"));
        }
        if !manager.read_within(Duration::from_millis(1)).unwrap() {
            return n;
        }
    }
}

/// Connected, nothing to send, heartbeat not due: the link thread sleeps in one poll() on
/// its socket and the outbound queue's eventfd until the next heartbeat (it used to wake
/// every `CORE_TICK`, 20 times in these 2 s). Queued frames still go out at once.
// [utest->req~agent.idle-no-wakeups~1]
#[test]
fn an_idle_connected_link_thread_does_not_wake_up() {
    let mut r = connected("agent-link-idle");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(heartbeats(&mut r.manager), 1, "one heartbeat on connecting");
    let before = wake_ups("agent-link-idle");
    std::thread::sleep(Duration::from_secs(2));
    let woken = wake_ups("agent-link-idle") - before;
    assert!(woken <= 1, "the idle link thread woke {woken} times in 2 s");
    let mut sig = Link::heartbeat().unwrap();
    let bytes = SerialCounter::default()
        .encode(&mut sig, MAX_FRAME_SIZE)
        .unwrap();
    r.outbound.try_push(bytes).unwrap();
    r.manager.read_within(Duration::from_secs(2)).unwrap();
    assert_eq!(
        heartbeats(&mut r.manager),
        1,
        "a queued frame goes out at once"
    );
    r.shutdown.store(true, Ordering::Relaxed);
    r.outbound.wake_only();
}

/// Shutdown sets the flag and rings the outbound queue (as `main` does): the idle session
/// ends at once, without waiting for its next heartbeat.
// [utest->req~agent.idle-no-wakeups~1]
#[test]
fn shutdown_wakes_an_idle_link_at_once() {
    let r = connected("agent-link-stop");
    std::thread::sleep(Duration::from_millis(100));
    r.shutdown.store(true, Ordering::Relaxed);
    r.outbound.wake_only();
    assert!(hirte_common::wait::wait_for(Duration::from_secs(1), || r
        .thread
        .is_finished()));
    assert!(matches!(
        next_event(&r.events),
        Some(FromLink::Disconnected)
    ));
}

/// A `SwitchController` request rings the outbound queue: the idle session leaves at once.
// [utest->req~agent.idle-no-wakeups~1]
#[test]
fn a_switch_request_wakes_an_idle_link_at_once() {
    let r = connected("agent-link-switch");
    std::thread::sleep(Duration::from_millis(100));
    r.switch
        .request(hirte_common::config::ManagerAddress::parse("unix:path=/nonexistent").unwrap());
    assert!(matches!(
        next_event(&r.events),
        Some(FromLink::Disconnected)
    ));
    r.shutdown.store(true, Ordering::Relaxed);
    r.outbound.wake_only();
}
