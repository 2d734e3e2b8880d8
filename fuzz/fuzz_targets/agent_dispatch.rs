//! The agent's dispatch of the manager's frames, without sockets: the agent's core on the
//! `FakeSystemd` test double (`agent/src/testing.rs`; hirte-agent is a binary crate, so its
//! modules are compiled in from their sources), fed decoded frames as its link thread would,
//! with systemd's `JobRemoved`/`PropertiesChanged` signals and timer turns in between.
//!
//! Input: byte 0 picks the mode. Even: the rest is a frame stream from the manager (decoded
//! with `FrameDecoder`, like the link thread). Odd: the rest is a script: each step names a
//! method of the agent's internal interface (or an unknown one) and builds its arguments
//! from the following bytes (strings, integers, string arrays, property lists, variants),
//! then maybe a systemd signal for the last job or a timer turn.
//!
//! Checked besides "no panic" (libfuzzer's panic hook aborts even inside the core's
//! `catch_unwind`): every answer the core sends replies to a call it was given, and no call
//! is answered more often than it was made.
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../agent/src/bluechi_api.rs"]
mod bluechi_api;
#[path = "../../agent/src/core/mod.rs"]
mod core;
#[path = "../../agent/src/error.rs"]
mod error;
#[path = "../../agent/src/link.rs"]
mod link;
#[path = "../../agent/src/local_api.rs"]
mod local_api;
#[path = "../../agent/src/proxy.rs"]
mod proxy;
#[path = "../../agent/src/reconnect.rs"]
mod reconnect;
#[path = "../../agent/src/resolve.rs"]
mod resolve;
#[path = "../../agent/src/systemd.rs"]
mod systemd;
#[path = "../../agent/src/testing.rs"]
mod testing;

use dbus::arg::{PropMap, RefArg, Variant};
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::MAX_FRAME_SIZE;
use hirte_common::frame::FrameDecoder;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::time::Instant;
use testing::Harness;

/// Methods of `org.containers.hirte.internal.Agent`, and two it does not have.
const MEMBERS: &[&str] = &[
    "StartUnit",
    "StopUnit",
    "RestartUnit",
    "ReloadUnit",
    "StartTransientUnit",
    "JobCancel",
    "GetUnitProperties",
    "GetUnitProperty",
    "SetLogLevel",
    "EnableMetrics",
    "DisableMetrics",
    "Subscribe",
    "Unsubscribe",
    "Exec",
    "StartDep",
    "StopDep",
    "ListUnits",
    "ListUnitFiles",
    "Reload",
    "EnableUnitFiles",
    "DisableUnitFiles",
    "FreezeUnit",
    "ThawUnit",
    "KillUnit",
    "SetUnitProperties",
    "GetUnitFileState",
    "ResetFailed",
    "ResetFailedUnit",
    "GetDefaultTarget",
    "SetDefaultTarget",
    "Register",
    "NoSuchMethod",
];

const RESULTS: &[&str] = &["done", "failed", "canceled", "timeout", "dependency", "skipped"];

/// Reads bytes off the front of the input.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for _ in 0..self.byte()? % 9 {
            v = v << 8 | u64::from(self.byte()?);
        }
        Some(v)
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::from(self.byte()? % 64);
        let take = len.min(self.0.len());
        let (s, rest) = self.0.split_at(take);
        self.0 = rest;
        // Unit-like names more often than not: the agent validates what it gets.
        let text = String::from_utf8_lossy(s).replace('\0', "");
        Some(match len % 3 {
            0 => format!("{text}.service"),
            _ => text,
        })
    }

    /// Appends one argument of a type the next byte picks.
    fn append(&mut self, msg: Message) -> Option<Message> {
        Some(match self.byte()? % 8 {
            0 => msg.append1(self.string()?),
            1 => msg.append1(self.u64()? as u32),
            2 => msg.append1(self.u64()?),
            3 => msg.append1(self.byte()? & 1 == 1),
            4 => msg.append1(self.u64()? as i32),
            5 => {
                let n = self.byte()? % 8;
                let v: Option<Vec<String>> = (0..n).map(|_| self.string()).collect();
                msg.append1(v?)
            }
            6 => {
                let mut props: Vec<(String, Variant<Box<dyn RefArg>>)> = Vec::new();
                for _ in 0..self.byte()? % 4 {
                    let name = self.string()?;
                    let value: Box<dyn RefArg> = match self.byte()? % 3 {
                        0 => Box::new(self.string()?),
                        1 => Box::new(self.u64()?),
                        _ => Box::new(self.byte()? & 1 == 1),
                    };
                    props.push((name, Variant(value)));
                }
                msg.append1(props)
            }
            _ => msg.append1(Variant(self.string()?)),
        })
    }
}

/// A call the way the manager sends it: the link's destination, the agent's interface.
fn call(h: &mut Harness, member: &str) -> Message {
    h.manager_call(member)
}

fn run_script(h: &mut Harness, mut input: Bytes<'_>, calls: &mut HashMap<u32, usize>) {
    while let Some(b) = input.byte() {
        let member = MEMBERS[usize::from(b) % MEMBERS.len()];
        let mut msg = call(h, member);
        for _ in 0..input.byte().unwrap_or(0) % 6 {
            match input.append(msg) {
                Some(m) => msg = m,
                None => return,
            }
        }
        if let Some(s) = msg.get_serial() {
            *calls.entry(s).or_default() += 1;
        }
        h.deliver(msg);
        match input.byte().unwrap_or(0) % 4 {
            0 => {
                let job = h.sd().last_job_path();
                let unit = input.string().unwrap_or_default();
                let result = RESULTS[usize::from(input.byte().unwrap_or(0)) % RESULTS.len()];
                h.core.on_bus_message(testing::job_removed(&job, &unit, result));
            }
            1 => {
                let unit = input.string().unwrap_or_default();
                let path = format!(
                    "/org/freedesktop/systemd1/unit/{}",
                    hirte_common::names::escape_path_element(&unit)
                );
                let state = input.string().unwrap_or_default();
                h.core.on_bus_message(testing::properties_changed(
                    &path,
                    systemd::UNIT_IFACE,
                    &[("ActiveState", state.as_str())],
                ));
            }
            2 => h.core.expire_execs(Instant::now() + std::time::Duration::from_secs(7200)),
            _ => {}
        }
    }
}

fn run_frames(h: &mut Harness, stream: &[u8], calls: &mut HashMap<u32, usize>) {
    let mut d = FrameDecoder::new(MAX_FRAME_SIZE);
    if d.push(stream).is_err() {
        return;
    }
    while let Ok(Some(msg)) = d.next_message() {
        if msg.msg_type() == MessageType::MethodCall {
            if let Some(s) = msg.get_serial() {
                *calls.entry(s).or_default() += 1;
            }
        }
        h.deliver(msg);
    }
}

fuzz_target!(|data: &[u8]| {
    hirte_common::sys::disable_libdbus_abort();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut h = Harness::new();
    let mut calls = HashMap::new();
    if mode % 2 == 0 {
        run_frames(&mut h, rest, &mut calls);
    } else {
        run_script(&mut h, Bytes(rest), &mut calls);
    }
    let mut answered: HashMap<u32, usize> = HashMap::new();
    for m in h.to_manager() {
        if matches!(m.msg_type(), MessageType::MethodReturn | MessageType::Error) {
            let serial = m.get_reply_serial().unwrap_or(0);
            let n = answered.entry(serial).or_default();
            *n += 1;
            let called = calls.get(&serial).copied().unwrap_or(0);
            assert!(*n <= called, "serial {serial}: {n} answers to {called} calls");
        }
    }
    let _ = std::fs::remove_dir_all(h.core.exec_dir());
});
