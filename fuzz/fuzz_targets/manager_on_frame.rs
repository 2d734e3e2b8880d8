//! The manager's handling of a registered agent's frames, without sockets: `Manager` (its
//! sans-IO core, `manager/src/state.rs`; hirte is a binary crate, so its modules are
//! compiled in from their sources) with node `n1` registered on an in-memory link.
//!
//! Input: byte 0 picks which calls are in flight first (a `ListUnits` relay, a job start,
//! a `GetUnitProperties` relay). Then byte 1 picks the mode. Even: the rest is a frame stream
//! from the agent (`FrameDecoder`, as the connection thread decodes it). Odd: the rest
//! answers the calls the manager sent the agent: for each, a method return with arguments
//! built from the bytes, or an error. Between steps the manager's effects are taken and its
//! link queue drained; at the end its timers run and the link closes.
//!
//! Checked: no panic (libFuzzer's panic hook aborts even where the core would contain one),
//! and nothing is left in flight once the node's link has closed.
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../manager/src/agent_msg.rs"]
mod agent_msg;
#[path = "../../manager/src/agents.rs"]
mod agents;
#[path = "../../manager/src/api/mod.rs"]
mod api;
#[path = "../../manager/src/audit.rs"]
mod audit;
#[path = "../../manager/src/calls.rs"]
mod calls;
#[path = "../../manager/src/core.rs"]
mod core;
#[path = "../../manager/src/dependencies.rs"]
mod dependencies;
#[path = "../../manager/src/events.rs"]
mod events;
#[path = "../../manager/src/fanout.rs"]
mod fanout;
#[path = "../../manager/src/flood.rs"]
mod flood;
#[path = "../../manager/src/jobs.rs"]
mod jobs;
#[path = "../../manager/src/link.rs"]
mod link;
#[path = "../../manager/src/listener.rs"]
mod listener;
#[path = "../../manager/src/monitor.rs"]
mod monitor;
#[path = "../../manager/src/nodes.rs"]
mod nodes;
#[path = "../../manager/src/objects.rs"]
mod objects;
#[path = "../../manager/src/proxy.rs"]
mod proxy;
// rustc resolves the children of a #[path] file beside it, not in state/: state.rs names
// its `inbound` child's path under cfg(fuzzing).
#[path = "../../manager/src/state.rs"]
mod state;

use dbus::message::MessageType;
use dbus::Message;
use dbus_crossroads::Context;
use hirte_common::bounds::MAX_FRAME_SIZE;
use hirte_common::config::ManagerConfig;
use hirte_common::frame::FrameDecoder;
use hirte_common::handshake::register_call;
use hirte_common::protocol;
use hirte_common::stream::Peer;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

/// A D-Bus client's call on node n1's object, as the API hands it to the manager.
fn api_call(member: &str) -> Option<Context> {
    let mut m = Message::new_method_call(
        protocol::MANAGER_BUS_NAME,
        "/org/containers/hirte/node/n1",
        protocol::NODE_IFACE,
        member,
    )
    .ok()?;
    m.set_serial(7);
    m.set_sender(Some(dbus::strings::BusName::new(":1.5").ok()?));
    Context::new(m)
}

/// Takes the frames the manager queued for the agent, decoded.
fn sent(h: &events::LinkHandle) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(bytes) = h.queue.try_pop() {
        let mut d = FrameDecoder::new(MAX_FRAME_SIZE);
        if d.push(&bytes).is_ok() {
            while let Ok(Some(m)) = d.next_message() {
                out.push(m);
            }
        }
    }
    out
}

/// An answer to `call` built from the front of `input`.
fn answer(call: &Message, input: &mut &[u8]) -> Option<Message> {
    let (&kind, rest) = input.split_first()?;
    *input = rest;
    let mut take = |n: usize| {
        let n = n.min(input.len());
        let (a, b) = input.split_at(n);
        *input = b;
        String::from_utf8_lossy(a).replace('\0', "")
    };
    Some(match kind % 6 {
        0 => {
            let name = dbus::strings::ErrorName::new("org.freedesktop.systemd1.NoSuchUnit").ok()?;
            let text = std::ffi::CString::new(take(16)).ok()?;
            call.error(&name, &text)
        }
        1 => call.method_return(),
        2 => call.method_return().append1(take(24)),
        3 => call.method_return().append1(dbus::Path::new("/org/freedesktop/systemd1/job/1").ok()?),
        4 => call.method_return().append1(vec![take(8), take(8)]),
        _ => {
            let row = (
                take(12), take(4), take(4), take(4), take(4), take(4),
                dbus::Path::new("/u").ok()?, 0u32, take(4), dbus::Path::new("/j").ok()?,
            );
            call.method_return().append1(vec![row])
        }
    })
}

fuzz_target!(|data: &[u8]| {
    hirte_common::sys::disable_libdbus_abort();
    let (Some(&calls), Some(&mode)) = (data.first(), data.get(1)) else {
        return;
    };
    let mut rest = &data[2..];
    let cfg = ManagerConfig {
        allowed_node_names: vec!["n1".into()],
        ..ManagerConfig::default()
    };
    let mut m = state::Manager::new(cfg);
    let Ok(h) = events::LinkHandle::new(1, Peer::Unix) else {
        return;
    };
    let Some(mut reg) = register_call("n1") else {
        return;
    };
    reg.set_serial(1);
    m.on_register(h.clone(), "n1", &reg);
    if calls & 1 != 0 {
        if let Some(ctx) = api_call("ListUnits") {
            let _ = m.relay(0, "ListUnits", |_| {}, ctx);
        }
    }
    if calls & 2 != 0 {
        if let Some(ctx) = api_call("StartUnit") {
            let fill = |_: &mut Message, _: u32| {};
            let _ = m.start_job(0, "StartUnit", "start", "x.service".into(), fill, ctx);
        }
    }
    if calls & 4 != 0 {
        if let Some(ctx) = api_call("GetUnitProperties") {
            let _ = m.relay(0, "GetUnitProperties", |_| {}, ctx);
        }
    }
    let _ = m.take_effects();
    let to_agent = sent(&h);
    if mode % 2 == 0 {
        let mut d = FrameDecoder::new(MAX_FRAME_SIZE);
        if d.push(rest).is_ok() {
            while let Ok(Some(msg)) = d.next_message() {
                m.on_frame(1, msg);
                let _ = m.take_effects();
                let _ = sent(&h);
            }
        }
    } else {
        for call in to_agent.iter().filter(|c| c.msg_type() == MessageType::MethodCall) {
            let Some(mut reply) = answer(call, &mut rest) else {
                break;
            };
            reply.set_serial(1000);
            m.on_frame(1, reply);
            let _ = m.take_effects();
            let _ = sent(&h);
        }
    }
    m.tick(Instant::now() + Duration::from_secs(3600));
    let _ = m.take_effects();
    m.on_link_closed(1, "fuzz");
    let _ = m.take_effects();
    assert!(m.is_idle(), "calls or jobs left after the node's link closed");
});
