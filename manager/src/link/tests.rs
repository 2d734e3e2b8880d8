//! Unit tests of the connection thread (`link.rs`).

use super::*;
use dbus::Message;
use hirte_common::handshake::register_call;
use hirte_common::stream::Peer;
use std::io::Write;
use std::os::unix::net::UnixStream;

/// A connection thread on one end of a socket pair; the other end plays the agent.
fn spawn() -> (
    UnixStream,
    Arc<LinkHandle>,
    Arc<BoundedQueue<LinkEvent>>,
    Arc<AtomicUsize>,
) {
    let (agent, handle, events, handshakes, _) = spawn_named("link-test");
    (agent, handle, events, handshakes)
}

/// `spawn`, the thread named `name` (at most 15 bytes, to find it in /proc), and its
/// shutdown flag.
/// The agent's end, the link's handle, the core's queue, the handshake count, `shutdown`.
type Spawned = (
    UnixStream,
    Arc<LinkHandle>,
    Arc<BoundedQueue<LinkEvent>>,
    Arc<AtomicUsize>,
    Arc<AtomicBool>,
);

fn spawn_named(name: &str) -> Spawned {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let stream = LinkStream::Unix(ours);
    hirte_common::linkio::prepare(&stream).unwrap();
    let handle = LinkHandle::new(1, Peer::Unix).unwrap();
    let events = Arc::new(BoundedQueue::new(16).unwrap());
    let handshakes = Arc::new(AtomicUsize::new(1));
    let shutdown = Arc::new(AtomicBool::new(false));
    let link = LinkThread {
        stream: Some(stream),
        handle: handle.clone(),
        events: events.clone(),
        handshakes: handshakes.clone(),
        shutdown: shutdown.clone(),
        tls: None,
    };
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || link.run())
        .unwrap();
    (theirs, handle, events, handshakes, shutdown)
}

fn frame(mut msg: dbus::Message, serial: u32) -> Vec<u8> {
    msg.set_serial(serial);
    encode_message(&msg, MAX_FRAME_SIZE).unwrap()
}

/// A signal above the handshake frame cap, well within `MAX_FRAME_SIZE`.
fn big_signal() -> Vec<u8> {
    let msg = dbus::Message::new_signal("/x", "org.x.Y", "Z")
        .unwrap()
        .append1("x".repeat(4 * MAX_HANDSHAKE_FRAME_SIZE));
    frame(msg, 2)
}

fn next_event(events: &BoundedQueue<LinkEvent>, within: Duration) -> Option<LinkEvent> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(ev) = events.try_pop() {
            return Some(ev);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Until the core accepted the name, the connection keeps its handshake slot and its
/// 4 KiB frame cap: a large frame sent right behind the Register never reaches the core.
// [utest->req~link.register-first~1]
// [utest->req~link.max-frame~1]
#[test]
fn a_register_the_core_has_not_accepted_keeps_the_handshake_limits() {
    let (mut agent, _handle, events, handshakes) = spawn();
    let mut bytes = frame(register_call("n1").unwrap(), 1);
    bytes.extend(big_signal());
    agent.write_all(&bytes).unwrap();
    let ev = next_event(&events, Duration::from_secs(2));
    assert!(
        matches!(ev, Some(LinkEvent::Register { .. })),
        "no Register"
    );
    // The core never answers: the frame behind the Register is refused, not handed on.
    match next_event(&events, Duration::from_secs(2)) {
        Some(LinkEvent::Frame { size, .. }) => {
            panic!("a {size}-byte frame of an unaccepted connection reached the core")
        }
        Some(LinkEvent::Closed { reason, .. }) => {
            assert!(reason.contains("exceeds"), "{reason}")
        }
        _ => panic!("the connection did not end"),
    }
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
}

/// Once the core accepted (and answered), the slot is freed and frames up to
/// `MAX_FRAME_SIZE` pass.
// [utest->req~link.register-first~1]
#[test]
fn an_accepted_register_lifts_the_frame_cap_and_frees_the_slot() {
    let (mut agent, handle, events, handshakes) = spawn();
    let mut register = register_call("n1").unwrap();
    register.set_serial(1);
    agent
        .write_all(&frame(register.duplicate().unwrap(), 1))
        .unwrap();
    let ev = next_event(&events, Duration::from_secs(2));
    assert!(
        matches!(ev, Some(LinkEvent::Register { .. })),
        "no Register"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        1,
        "slot freed before acceptance"
    );
    handle.accept();
    let mut reply = register.method_return();
    reply.set_serial(1);
    handle.queue.try_push(frame(reply, 1)).unwrap();
    let mut d = hirte_common::frame::FrameDecoder::new(MAX_FRAME_SIZE);
    let mut buf = [0u8; 4096];
    while d.next_message().unwrap().is_none() {
        let n = std::io::Read::read(&mut agent, &mut buf).unwrap();
        d.push(buf.get(..n).unwrap()).unwrap();
    }
    agent.write_all(&big_signal()).unwrap();
    match next_event(&events, Duration::from_secs(2)) {
        Some(LinkEvent::Frame { size, .. }) => assert!(size > MAX_HANDSHAKE_FRAME_SIZE),
        _ => panic!("the large frame of an accepted connection did not arrive"),
    }
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
}

/// Registers `agent`'s link, accepts it as the core would and reads the reply.
fn register_and_accept(
    agent: &mut UnixStream,
    handle: &LinkHandle,
    events: &BoundedQueue<LinkEvent>,
) {
    let mut register = register_call("n1").unwrap();
    register.set_serial(1);
    agent
        .write_all(&frame(register.duplicate().unwrap(), 1))
        .unwrap();
    let ev = next_event(events, Duration::from_secs(2));
    assert!(
        matches!(ev, Some(LinkEvent::Register { .. })),
        "no Register"
    );
    handle.accept();
    handle
        .queue
        .try_push(frame(register.method_return(), 1))
        .unwrap();
    let mut d = hirte_common::frame::FrameDecoder::new(MAX_FRAME_SIZE);
    let mut buf = [0u8; 4096];
    while d.next_message().unwrap().is_none() {
        let n = std::io::Read::read(agent, &mut buf).unwrap();
        d.push(buf.get(..n).unwrap()).unwrap();
    }
}

/// The voluntary context switches of this process's thread named `name`: how often it
/// went to sleep, i.e. how often it woke up.
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

/// Nothing to read, nothing to send: a registered link thread sleeps in one poll() on its
/// socket and its queue's eventfd, with no timer (it used to wake every `CORE_TICK`, 20
/// times in these 2 s). A close request still wakes it at once.
// [utest->req~link.idle-no-wakeups~1]
#[test]
fn an_idle_registered_link_thread_does_not_wake_up() {
    let (mut agent, handle, events, _, _) = spawn_named("link-idle");
    register_and_accept(&mut agent, &handle, &events);
    std::thread::sleep(Duration::from_millis(100));
    let before = wake_ups("link-idle");
    std::thread::sleep(Duration::from_secs(2));
    let woken = wake_ups("link-idle") - before;
    assert!(woken <= 1, "the idle link thread woke {woken} times in 2 s");
    handle.request_close("test over");
    match next_event(&events, Duration::from_secs(2)) {
        Some(LinkEvent::Closed { reason, .. }) => assert_eq!(reason, "test over"),
        _ => panic!("the close request did not wake the link thread"),
    }
}

/// Shutdown sets the flag and rings every live link's eventfd (`LiveLinks::wake_all`):
/// an idle link with no timer ends at once.
// [utest->req~link.idle-no-wakeups~1]
#[test]
fn shutdown_wakes_an_idle_link_through_the_live_links() {
    let (mut agent, handle, events, _, shutdown) = spawn_named("link-stop");
    register_and_accept(&mut agent, &handle, &events);
    let live = crate::events::LiveLinks::default();
    live.insert(handle.clone());
    shutdown.store(true, Ordering::Relaxed);
    live.wake_all();
    match next_event(&events, Duration::from_secs(2)) {
        Some(LinkEvent::Closed { reason, .. }) => {
            assert_eq!(reason, End::Shutdown.to_string())
        }
        _ => panic!("shutdown did not reach the idle link thread"),
    }
}

/// A heartbeat is answered by the connection thread in the wake-up that read it: the echo
/// goes out with the link's next serial, the time is left for the core, and the core hears
/// nothing. A second one within `CORE_TICK` goes to the core (which charges it to the
/// node's unasked budget), so a flood of heartbeats cannot bypass that budget.
// [utest->req~link.heartbeat~1]
// [utest->req~manager.idle-no-wakeups~1]
#[test]
fn the_connection_thread_answers_a_heartbeat_and_the_core_sleeps_on() {
    let (mut agent, handle, events, _, _) = spawn_named("link-hb");
    register_and_accept(&mut agent, &handle, &events);
    assert!(handle.heard().is_none());
    agent
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let heartbeat = || {
        Message::new_signal(
            hirte_common::protocol::INTERNAL_AGENT_PATH,
            hirte_common::protocol::INTERNAL_AGENT_IFACE,
            "Heartbeat",
        )
        .unwrap()
    };
    agent.write_all(&frame(heartbeat(), 2)).unwrap();
    let mut d = hirte_common::frame::FrameDecoder::new(MAX_FRAME_SIZE);
    let mut buf = [0u8; 4096];
    let echo = loop {
        if let Some(m) = d.next_message().unwrap() {
            break m;
        }
        let n = std::io::Read::read(&mut agent, &mut buf).unwrap();
        d.push(buf.get(..n).unwrap()).unwrap();
    };
    assert_eq!(echo.member().as_deref(), Some("Heartbeat"));
    assert_eq!(
        echo.interface().as_deref(),
        Some(hirte_common::protocol::INTERNAL_MANAGER_IFACE)
    );
    assert_eq!(echo.get_serial(), Some(1), "the link's first serial");
    assert!(handle.heard().is_some_and(|h| h.monotonic_us > 0));
    assert!(next_event(&events, Duration::from_millis(200)).is_none());
    // At once again: the core's turn.
    agent.write_all(&frame(heartbeat(), 3)).unwrap();
    agent.write_all(&frame(heartbeat(), 4)).unwrap();
    match next_event(&events, Duration::from_secs(2)) {
        Some(LinkEvent::Frame { msg, .. }) => {
            assert_eq!(msg.member().as_deref(), Some("Heartbeat"))
        }
        _ => panic!("a heartbeat within CORE_TICK did not reach the core"),
    }
}
