//! Calls that span all online nodes (`Manager.ListUnits`, ...): each node's part is
//! collected, then the caller gets one reply. Any failing node fails the whole call, naming
//! the node: a partial list would hide it.

use crate::objects::{context_messages, Outbox};
use dbus::arg::IterAppend;
use dbus::strings::Signature;
use dbus::Message;
use dbus_crossroads::{Context, MethodErr};
use hirte_common::args::{copy_args, encoded_len, same_path};
use hirte_common::bounds::MAX_FANOUT_BYTES;
use hirte_common::log_warn;
use hirte_common::protocol::{error, signature_of};
use std::collections::HashMap;
use std::fmt;

/// What a call that spans all online nodes answers once every part is in.
#[derive(Clone, Copy)]
pub enum FanOut {
    /// `a{sa(ssssssouso)}`: node -> units.
    Units,
    /// `a{sa(ss)}`: node -> unit files.
    UnitFiles,
    /// Nothing: every node just has to acknowledge (metrics on/off).
    Ack,
}

/// One node's contribution to a fan-out.
pub enum Part {
    /// The node's answer.
    Answer { node: String, answer: Message },
    /// The node failed: error name and text (naming the node).
    Failed { name: String, text: String },
    /// Every call was sent (the fan-out is held open until then).
    AllSent,
}

/// A node's answer was not what the call returns.
#[derive(Debug)]
pub struct FanOutError {
    node: String,
    cause: String,
}

impl fmt::Display for FanOutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node '{}' sent a malformed answer: {}",
            self.node, self.cause
        )
    }
}

struct Aggregate {
    ctx: Option<Context>,
    kind: FanOut,
    remaining: usize,
    parts: Vec<(String, Message)>,
    /// The first failing node's error name and message.
    failure: Option<(String, String)>,
    /// Bytes of the answers so far (`MAX_FANOUT_BYTES`).
    bytes: usize,
}

#[derive(Default)]
pub struct FanOuts {
    open: HashMap<u64, Aggregate>,
    next_id: u64,
}

impl Aggregate {
    /// Keeps an answer within the byte budget; beyond it the call fails whole.
    // [impl->req~bounds.fanout-bytes~1]
    fn keep(&mut self, node: String, answer: Message) {
        if self.bytes > MAX_FANOUT_BYTES {
            return; // already failed: later answers are not kept
        }
        self.bytes = self.bytes.saturating_add(encoded_len(&answer));
        if self.bytes <= MAX_FANOUT_BYTES {
            self.parts.push((node, answer));
            return;
        }
        self.parts = Vec::new();
        let text = format!(
            "the nodes' answers exceed {MAX_FANOUT_BYTES} bytes (at node '{node}'); \
             ask the nodes one at a time"
        );
        log_warn!("A call to all nodes failed: {text}");
        self.failure.get_or_insert((error::BUSY.to_string(), text));
    }
}

impl FanOuts {
    /// Opens a fan-out to `nodes` nodes; it completes after their parts and `Part::AllSent`.
    pub fn open(&mut self, kind: FanOut, ctx: Option<Context>, nodes: usize) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.open.insert(
            id,
            Aggregate {
                ctx,
                kind,
                remaining: nodes + 1,
                parts: Vec::new(),
                failure: None,
                bytes: 0,
            },
        );
        id
    }

    /// Adds a part; the last one queues the reply to the caller.
    pub fn add(&mut self, id: u64, part: Part, out: &mut Outbox) {
        let Some(a) = self.open.get_mut(&id) else {
            return;
        };
        match part {
            Part::Answer { node, answer } => a.keep(node, answer),
            Part::Failed { name, text } => {
                a.failure.get_or_insert((name, text));
            }
            Part::AllSent => {}
        }
        a.remaining = a.remaining.saturating_sub(1);
        if a.remaining > 0 {
            return;
        }
        let Some(a) = self.open.remove(&id) else {
            return;
        };
        let Some(mut ctx) = a.ctx else {
            return;
        };
        let result = match a.failure {
            Some(f) => Err(f),
            None => reply(a.kind, a.parts, ctx.message())
                .map_err(|e| (error::PROTOCOL.to_string(), e.to_string())),
        };
        match result {
            Ok(reply) => {
                if !ctx.message().get_no_reply() {
                    out.send(Some(reply));
                }
                // The parts are freed: their scattered pages go back, not only the heap's top.
                hirte_common::sys::release_free_memory();
            }
            Err((name, text)) => {
                ctx.reply::<()>(Err(MethodErr::from((name, text))));
                out.send_all(context_messages(&mut ctx));
            }
        }
    }

    /// The call an open fan-out answers when complete (`None`: closed, or no caller).
    pub fn caller(&self, id: u64) -> Option<&Message> {
        self.open.get(&id)?.ctx.as_ref().map(Context::message)
    }

    pub fn is_open(&self, id: u64) -> bool {
        self.open.contains_key(&id)
    }

    /// The calls the open fan-outs will answer.
    pub fn callers(&self) -> impl Iterator<Item = &Message> {
        self.open
            .values()
            .filter_map(|a| a.ctx.as_ref().map(Context::message))
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// Builds the combined answer of a fan-out call from each node's reply: each node's part
/// is checked by its signature and copied value by value into the map (9,000 unit rows go
/// through no tree of values, neither generic nor typed).
fn reply(
    kind: FanOut,
    parts: Vec<(String, Message)>,
    call: &Message,
) -> Result<Message, FanOutError> {
    let mut m = call.method_return();
    let value = match kind {
        FanOut::Units => "a(ssssssouso)",
        FanOut::UnitFiles => "a(ss)",
        FanOut::Ack => return Ok(m),
    };
    for (node, part) in &parts {
        let got = signature_of(part);
        if got != value {
            let cause = format!("expected ({value}), got ({got})");
            let node = node.clone();
            return Err(FanOutError { node, cause });
        }
    }
    let sig = |s: &str| Signature::new(s.to_string()).map_err(|e| e.to_string());
    let (key, value) = match (sig("s"), sig(value)) {
        (Ok(k), Ok(v)) => (k, v),
        (Err(cause), _) | (_, Err(cause)) => {
            let node = String::new();
            return Err(FanOutError { node, cause });
        }
    };
    let mut failed = None;
    IterAppend::new(&mut m).append_dict(&key, &value, |dict| {
        // Each part is freed once copied: the peak is the reply, not the reply and the parts.
        for (node, part) in parts {
            dict.append_dict_entry(|entry| {
                entry.append(node.as_str());
                if let Err(e) = copy_args(&mut part.iter_init(), entry, &same_path) {
                    failed.get_or_insert((node, e.to_string()));
                }
            });
        }
    });
    match failed {
        None => Ok(m),
        Some((node, cause)) => Err(FanOutError { node, cause }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        let mut m =
            Message::new_method_call("org.containers.hirte", "/org/containers/hirte", "a.b", "X")
                .unwrap();
        m.set_serial(5);
        Context::new(m).unwrap()
    }

    fn answer(files: Vec<(String, String)>) -> Message {
        let mut call = Message::new_method_call("a.b", "/", "a.b", "ListUnitFiles").unwrap();
        call.set_serial(1);
        call.method_return().append1(files)
    }

    #[test]
    fn parts_are_combined_once_all_are_in() {
        let mut f = FanOuts::default();
        let mut out = Outbox::default();
        let id = f.open(FanOut::UnitFiles, Some(ctx()), 2);
        let a = answer(vec![("a.service".into(), "enabled".into())]);
        f.add(
            id,
            Part::Answer {
                node: "n1".into(),
                answer: a,
            },
            &mut out,
        );
        f.add(id, Part::AllSent, &mut out);
        assert!(out.take().1.is_empty());
        f.add(
            id,
            Part::Answer {
                node: "n2".into(),
                answer: answer(vec![]),
            },
            &mut out,
        );
        let msgs = out.take().1;
        assert_eq!(msgs.len(), 1);
        let map: HashMap<String, Vec<(String, String)>> = msgs[0].read1().unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map["n1"][0].0, "a.service");
        assert!(f.is_empty());
    }

    #[test]
    fn the_first_failure_fails_the_call() {
        let mut f = FanOuts::default();
        let mut out = Outbox::default();
        let id = f.open(FanOut::Units, Some(ctx()), 2);
        for text in ["node 'n1': first", "node 'n2': second"] {
            let part = Part::Failed {
                name: error::TIMEOUT.into(),
                text: text.into(),
            };
            f.add(id, part, &mut out);
        }
        f.add(id, Part::AllSent, &mut out);
        let mut msgs = out.take().1;
        let err = msgs[0].as_result().unwrap_err();
        assert_eq!(err.name(), Some(error::TIMEOUT));
        assert_eq!(err.message(), Some("node 'n1': first"));
    }

    #[test]
    fn a_malformed_part_is_a_protocol_error_naming_the_node() {
        let mut f = FanOuts::default();
        let mut out = Outbox::default();
        let id = f.open(FanOut::Units, Some(ctx()), 1);
        let mut call = Message::new_method_call("a.b", "/", "a.b", "ListUnits").unwrap();
        call.set_serial(1);
        let wrong = call.method_return().append1("not a list");
        f.add(
            id,
            Part::Answer {
                node: "n1".into(),
                answer: wrong,
            },
            &mut out,
        );
        f.add(id, Part::AllSent, &mut out);
        let mut msgs = out.take().1;
        let err = msgs[0].as_result().unwrap_err();
        assert_eq!(err.name(), Some(error::PROTOCOL));
        assert!(err
            .message()
            .unwrap()
            .contains("node 'n1' sent a malformed answer"));
    }

    fn big_answer(bytes: usize) -> Message {
        answer(vec![("x".repeat(bytes), "enabled".into())])
    }

    // [utest->req~bounds.fanout-bytes~1]
    #[test]
    fn answers_beyond_the_byte_budget_fail_the_call_whole_with_busy() {
        let part = 4_000_000;
        let fit = MAX_FANOUT_BYTES / (part + 100);
        // Within the budget: one map of every node's answer.
        let mut f = FanOuts::default();
        let mut out = Outbox::default();
        let id = f.open(FanOut::UnitFiles, Some(ctx()), fit);
        for i in 0..fit {
            let node = format!("n{i}");
            let answer = big_answer(part);
            f.add(id, Part::Answer { node, answer }, &mut out);
        }
        f.add(id, Part::AllSent, &mut out);
        let msgs = out.take().1;
        let map: HashMap<String, Vec<(String, String)>> = msgs[0].read1().unwrap();
        assert_eq!(map.len(), fit);
        // One answer more: the call fails whole, the answers are dropped at once.
        let id = f.open(FanOut::UnitFiles, Some(ctx()), fit + 2);
        for i in 0..=fit {
            let node = format!("n{i}");
            let answer = big_answer(part);
            f.add(id, Part::Answer { node, answer }, &mut out);
        }
        assert!(f.open[&id].parts.is_empty());
        let node = "late".to_string();
        f.add(
            id,
            Part::Answer {
                node,
                answer: big_answer(part),
            },
            &mut out,
        );
        assert!(f.open[&id].parts.is_empty(), "a later answer is not kept");
        f.add(id, Part::AllSent, &mut out);
        let mut msgs = out.take().1;
        assert_eq!(msgs.len(), 1);
        let err = msgs[0].as_result().unwrap_err();
        assert_eq!(err.name(), Some(error::BUSY));
        let text = err.message().unwrap();
        assert!(text.contains("exceed 31457280 bytes"), "{text}");
        assert!(f.is_empty());
    }
}
