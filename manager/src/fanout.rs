//! Calls that span all online nodes (`Manager.ListUnits`, ...): each node's part is
//! collected, then the caller gets one reply. Any failing node fails the whole call, naming
//! the node: a partial list would hide it.

use crate::objects::{context_messages, Outbox};
use dbus::arg::Arg;
use dbus::Message;
use dbus_crossroads::{Context, MethodErr};
use hirte_common::protocol::{error, UnitRow};
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

/// A node's answer could not be decoded.
#[derive(Debug)]
pub struct FanOutError {
    node: String,
    cause: dbus::arg::TypeMismatchError,
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
}

#[derive(Default)]
pub struct FanOuts {
    open: HashMap<u64, Aggregate>,
    next_id: u64,
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
            Part::Answer { node, answer } => a.parts.push((node, answer)),
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

/// Builds the combined answer of a fan-out call from each node's reply.
/// Decodes each node's part with its static type and appends the map to the reply directly
/// (9,000 unit rows go through no generic `MessageItem` tree).
fn reply(
    kind: FanOut,
    parts: Vec<(String, Message)>,
    call: &Message,
) -> Result<Message, FanOutError> {
    fn collect<T: Arg + for<'a> dbus::arg::Get<'a>>(
        parts: Vec<(String, Message)>,
    ) -> Result<HashMap<String, T>, FanOutError> {
        parts
            .into_iter()
            .map(|(node, msg)| match msg.read1::<T>() {
                Ok(v) => Ok((node, v)),
                Err(cause) => Err(FanOutError { node, cause }),
            })
            .collect()
    }
    let m = call.method_return();
    Ok(match kind {
        FanOut::Units => m.append1(collect::<Vec<UnitRow>>(parts)?),
        FanOut::UnitFiles => m.append1(collect::<Vec<(String, String)>>(parts)?),
        FanOut::Ack => m,
    })
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
}
