//! One registered node that floods the manager with maximal frames (issue 12 item 2): the
//! manager's memory stays bounded in bytes, every other node stays online and answers, and
//! the flooding node is cut off: at its first signal above `MAX_AGENT_SIGNAL_SIZE` (which no
//! agent sends), else by its unasked budget (`MAX_UNASKED_BYTES_PER_WINDOW`,
//! `MAX_UNASKED_FRAMES_PER_WINDOW` per `UNASKED_WINDOW`; `manager::flood::tests`).
//!
//! The flooder is a hand-made agent (common's framing and `Register`, like the bench's fake
//! agents): no real agent sends such frames. It sends, as fast as the manager reads,
//! frames just under 4 MiB: unit signals with one huge property, unit signals with 262,000
//! small properties, and method returns nobody asked for; once cut off it registers again
//! and goes on, for 10 s.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use dbus::arg::{Dict, Variant};
use dbus::Message;
use hirte_common::bounds::MAX_FRAME_SIZE;
use hirte_common::frame::encode_message;
use hirte_common::protocol;
use hirte_tests::{Cluster, ClusterSpec};

const FLOOD_FOR: Duration = Duration::from_secs(10);
/// The manager's peak RSS (VmHWM) over the whole test, flood included.
const MAX_MANAGER_RSS_KIB: u64 = 80 * 1024;
/// A `list-units` to a well-behaved node during the flood answers within this.
const LIST_UNITS_IN_TIME: Duration = Duration::from_secs(3);

fn unit_signal(member: &str) -> Message {
    Message::new_signal(
        protocol::INTERNAL_AGENT_PATH,
        protocol::INTERNAL_AGENT_IFACE,
        member,
    )
    .unwrap()
}

/// The three kinds of frame, encoded once, each just under `MAX_FRAME_SIZE`.
fn flood_frames() -> Vec<Vec<u8>> {
    let huge = "x".repeat(MAX_FRAME_SIZE - 4096);
    let one_huge = unit_signal("UnitPropertiesChanged").append3(
        "a.service",
        "org.freedesktop.systemd1.Unit",
        Dict::new([("Description", Variant(huge.as_str()))]),
    );
    let many_small = unit_signal("UnitPropertiesChanged").append3(
        "a.service",
        "org.freedesktop.systemd1.Unit",
        Dict::new((0..262_000).map(|_| ("p", Variant(1u8)))),
    );
    let mut call = Message::new_method_call("a.b", "/a", "a.b", "Never").unwrap();
    call.set_serial(999_999);
    let stray = call.method_return().append1(huge.as_str());
    [stray.duplicate().unwrap(), one_huge, stray, many_small]
        .into_iter()
        .map(|mut m| {
            m.set_serial(7);
            let bytes = encode_message(&m, MAX_FRAME_SIZE).unwrap();
            assert!(bytes.len() > MAX_FRAME_SIZE - 8192, "{}", bytes.len());
            bytes
        })
        .collect()
}

fn vm_hwm_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

// [itest->req~bounds.agent-flood~1]
// [itest->req~bounds.core-queue-bytes~1]
// [itest->req~bounds.core-turn~1]
#[test]
fn bounds_flood_a_node_sending_maximal_frames_is_cut_off_and_the_rest_goes_on() {
    if !hirte_tests::require_root(
        "bounds_flood_a_node_sending_maximal_frames_is_cut_off_and_the_rest_goes_on",
    ) {
        return;
    }
    let mut spec = ClusterSpec::new(&["primary", "agent1", "spare"]);
    spec.start_agents = false;
    let mut c = Cluster::start(spec).unwrap();
    for n in ["primary", "agent1"] {
        c.start_agent(n).unwrap();
    }
    for n in ["primary", "agent1"] {
        c.wait_node_state(n, "online", SOON).unwrap();
    }
    let pid = c.manager_pid().unwrap();
    let rss_before = vm_hwm_kib(pid);
    let frames = flood_frames();
    let done = AtomicBool::new(false);
    let c = &c;

    let (sessions, sent_mib, probes) = std::thread::scope(|s| {
        let flooder = s.spawn(|| {
            // The prober stops with the flood, also when the flood fails.
            struct Done<'a>(&'a AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _done = Done(&done);
            // (seconds from register to the manager closing the link) per session.
            let mut sessions: Vec<Duration> = Vec::new();
            let mut sent = 0usize;
            let t0 = Instant::now();
            while t0.elapsed() < FLOOD_FOR {
                let mut raw = RawLink::connect(c, "agent1");
                let Some(reply) = raw.register("spare") else {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                if reply.msg_type() != dbus::message::MessageType::MethodReturn {
                    // The previous session is not cleared yet.
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                let start = Instant::now();
                'session: loop {
                    for f in &frames {
                        if raw.send_raw(f).is_err() {
                            break 'session;
                        }
                        sent += f.len();
                        if start.elapsed() > Duration::from_secs(30) {
                            panic!("a flooding session was never cut off");
                        }
                    }
                }
                sessions.push(start.elapsed());
            }
            (sessions, sent / (1024 * 1024))
        });
        // Meanwhile: the other nodes stay online and answer.
        let mut probes: Vec<Duration> = Vec::new();
        while !done.load(Ordering::Relaxed) {
            for n in ["primary", "agent1"] {
                let state = c.node_state(n);
                assert_eq!(
                    state.as_deref(),
                    Some("online"),
                    "{n} during the flood\n{}",
                    c.log_tails()
                );
            }
            let t = Instant::now();
            let out = c.hirtectl(&["list-units", "agent1"]);
            let took = t.elapsed();
            let text = ok(&out, "list-units agent1 during the flood");
            assert!(text.contains("default.target"), "{text}");
            assert!(
                took < LIST_UNITS_IN_TIME,
                "list-units agent1 took {took:?} during the flood"
            );
            probes.push(took);
            std::thread::sleep(Duration::from_millis(200));
        }
        let (sessions, sent) = flooder.join().unwrap();
        (sessions, sent, probes)
    });
    let rss_peak = vm_hwm_kib(pid);
    let log = c.manager_log();
    let cut_off = log
        .lines()
        .filter(|l| l.contains("Node 'spare' cut off: "))
        .count();
    assert!(
        !sessions.is_empty() && cut_off >= sessions.len(),
        "{} flooding sessions, {cut_off} cut-offs logged\n{}",
        sessions.len(),
        c.log_tails()
    );
    let longest = sessions.iter().max().copied().unwrap_or_default();
    assert!(
        longest < Duration::from_secs(5),
        "a flooding session lasted {longest:?}"
    );
    c.wait_all_online(SOON).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        rss_peak < MAX_MANAGER_RSS_KIB,
        "manager peak RSS {rss_peak} KiB (before the flood {rss_before} KiB)"
    );
    let slowest = probes.iter().max().copied().unwrap_or_default();
    eprintln!(
        "FIGURE flood: {sent_mib} MiB in {} sessions over {FLOOD_FOR:?}, each cut off after at most {longest:?}; \
         manager peak RSS {rss_before} KiB before -> {rss_peak} KiB; {} list-units to agent1 during the flood, slowest {slowest:?}",
        sessions.len(),
        probes.len()
    );
}
