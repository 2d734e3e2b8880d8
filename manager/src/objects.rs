//! The manager's exported objects and what a step of the model sends: object paths, the
//! changes to the object tree (`ObjectOp`), the signals state changes produce, and the
//! `Outbox` that collects them for the core to apply. No I/O here.

use dbus::arg::{PropMap, RefArg, Variant};
use dbus::message::MessageType;
use dbus::Message;
use dbus_crossroads::Context;
use hirte_common::names::escape_path_element;
use hirte_common::protocol::{self, error, error_reply};
use std::cell::RefCell;

pub const METRICS_PATH: &str = "/org/containers/hirte/metrics";
pub const METRICS_IFACE: &str = "org.containers.hirte.Metrics";

pub fn monitor_path(id: u32) -> String {
    format!("{}/{id}", protocol::MONITOR_PATH_PREFIX)
}

pub fn job_path(id: u32) -> String {
    format!("{}/{id}", protocol::JOB_PATH_PREFIX)
}

pub fn node_path(name: &str) -> String {
    format!(
        "{}/{}",
        protocol::NODE_PATH_PREFIX,
        escape_path_element(name)
    )
}

/// Changes to the exported object tree, applied by the core (which owns `Crossroads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectOp {
    AddJob(u32),
    RemoveJob(u32),
    AddMonitor(u32),
    RemoveMonitor(u32),
}

/// The effects of one step: bus messages to send and object-tree changes. The core applies
/// the object changes first, so a job object exists before its `JobNew` and the reply naming it.
#[derive(Default)]
pub struct Outbox {
    messages: Vec<Message>,
    ops: Vec<ObjectOp>,
}

impl Outbox {
    /// Queues a message; `None` (a message that could not be built) is skipped.
    pub fn send(&mut self, msg: Option<Message>) {
        if let Some(m) = msg {
            self.messages.push(m);
        }
    }

    pub fn send_all(&mut self, msgs: impl IntoIterator<Item = Message>) {
        self.messages.extend(msgs);
    }

    pub fn object(&mut self, op: ObjectOp) {
        self.ops.push(op);
    }

    /// Whether an answer to the same call as `reply` (its serial, its caller) is queued.
    pub fn answers(&self, reply: &Message) -> bool {
        self.messages.iter().any(|m| same_call(m, reply))
    }

    /// Everything queued so far, emptied: (object changes, messages).
    pub fn take(&mut self) -> (Vec<ObjectOp>, Vec<Message>) {
        (
            std::mem::take(&mut self.ops),
            std::mem::take(&mut self.messages),
        )
    }
}

/// Whether two answers answer the same call: the same serial, the same caller.
pub fn same_call(a: &Message, b: &Message) -> bool {
    matches!(a.msg_type(), MessageType::MethodReturn | MessageType::Error)
        && a.get_reply_serial().is_some()
        && a.get_reply_serial() == b.get_reply_serial()
        && a.destination() == b.destination()
}

/// Copies an agent's answer (return values or error) into the reply to the D-Bus caller.
pub fn relay_answer(call: &Message, mut answer: Message) -> Option<Message> {
    if call.get_no_reply() {
        return None;
    }
    if answer.msg_type() == MessageType::Error {
        let err = answer.as_result().err()?;
        return error_reply(
            call,
            err.name().unwrap_or(error::PROTOCOL),
            err.message().unwrap_or(""),
        );
    }
    Some(protocol::copy_answer(call, &answer))
}

pub fn signal(path: &str, iface: &str, member: &str) -> Option<Message> {
    Message::new_signal(path.to_string(), iface.to_string(), member.to_string()).ok()
}

/// `PropertiesChanged` of one string property.
pub fn properties_changed(path: &str, iface: &str, name: &str, value: String) -> Option<Message> {
    let mut changed = PropMap::new();
    changed.insert(
        name.to_string(),
        Variant(Box::new(value) as Box<dyn RefArg>),
    );
    signal(path, "org.freedesktop.DBus.Properties", "PropertiesChanged")
        .map(|m| m.append3(iface, changed, Vec::<String>::new()))
}

/// The messages crossroads' `Context` holds (its reply), so they go through the outbox.
pub fn context_messages(ctx: &mut Context) -> Vec<Message> {
    let sink = VecSender::default();
    let _ = ctx.flush_messages(&sink);
    sink.take()
}

/// Collects the messages crossroads sends, for the caller to pass on.
#[derive(Default)]
pub struct VecSender(RefCell<Vec<Message>>);

impl VecSender {
    pub fn take(self) -> Vec<Message> {
        self.0.into_inner()
    }
}

impl dbus::channel::Sender for VecSender {
    fn send(&self, msg: Message) -> Result<u32, ()> {
        self.0.borrow_mut().push(msg);
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_escape_node_names() {
        assert_eq!(job_path(4), "/org/containers/hirte/job/4");
        assert_eq!(monitor_path(2), "/org/containers/hirte/monitor/2");
        assert!(node_path("a-b").starts_with("/org/containers/hirte/node/"));
        assert!(!node_path("a-b").contains('-'));
    }

    #[test]
    fn outbox_hands_over_everything_once() {
        let mut out = Outbox::default();
        out.send(signal("/a", "a.b", "C"));
        out.send(None);
        out.object(ObjectOp::AddJob(1));
        let (ops, msgs) = out.take();
        assert_eq!(ops, vec![ObjectOp::AddJob(1)]);
        assert_eq!(msgs.len(), 1);
        let (ops, msgs) = out.take();
        assert!(ops.is_empty() && msgs.is_empty());
    }

    #[test]
    fn properties_changed_carries_the_value() {
        let m = properties_changed("/a", "a.b", "Status", "up".into()).expect("a signal");
        let (iface, props): (&str, PropMap) = m.read2().expect("two arguments");
        assert_eq!(iface, "a.b");
        assert_eq!(props.get("Status").and_then(|v| v.0.as_str()), Some("up"));
    }
}
