//! Calls that will get no answer from their node, and what a panic owes (the panic policy,
//! `safety/manual.md` 3.4a): a step of the core that panicked is contained here, its lock
//! cleared with a logged note, and every call it held answered.

use super::{lock, Manager, PendingKind, Shared};
use crate::calls::Call;
use crate::fanout::Part;
use dbus::Message;
use hirte_common::protocol::error_reply;
use hirte_common::{log_debug, log_error};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The error a call gets when the manager's handling of it panicked.
pub const INTERNAL_ERROR: &str = "org.freedesktop.DBus.Error.Failed";
const INTERNAL_TEXT: &str = "internal error in the manager handling this call";

/// The `Failed` answer owed to `call` if its handling panics, built before it runs (`None`
/// for a call that wants no answer, or for anything but a method call).
pub fn internal_error(call: &Message) -> Option<Message> {
    if call.msg_type() != dbus::message::MessageType::MethodCall {
        return None;
    }
    error_reply(call, INTERNAL_ERROR, INTERNAL_TEXT)
}

/// Whether `reply` answers `call` (its serial, its sender).
fn answers(reply: &Message, call: &Message) -> bool {
    reply.get_reply_serial().is_some()
        && reply.get_reply_serial() == call.get_serial()
        && reply.destination().as_deref() == call.sender().as_deref()
}

/// Runs one step of the core on the model. A panic in it is contained: logged, the model's
/// poisoned lock cleared with a logged note, the call in flight the step had taken from its
/// table failed (`Manager::settle_after_panic`). Returns `owed` (see `internal_error`) for
/// the caller to send when the step panicked and the model neither answered that call nor
/// holds it to answer later; `None` otherwise.
// [impl->req~manager.panic-answered~1]
pub fn contain(
    model: &Shared,
    what: &str,
    owed: Option<Message>,
    step: impl FnOnce(),
) -> Option<Message> {
    if catch_unwind(AssertUnwindSafe(step)).is_ok() {
        return None;
    }
    log_error!("Internal error while handling {what}; the manager continues");
    let settled = catch_unwind(AssertUnwindSafe(|| {
        if model.is_poisoned() {
            // Every table keeps its invariants across its own methods (none panics); what a
            // panic between two of them can leave is settled below, so the model goes on.
            log_error!("The panic interrupted a change of the model; its call is failed, the model used on");
            model.clear_poison();
        }
        let mut m = lock(model);
        m.settle_after_panic();
        owed.filter(|r| !m.answers_or_holds(r))
    }));
    settled.unwrap_or_else(|_| {
        log_error!("Internal error while failing the calls of {what}");
        model.clear_poison();
        None
    })
}

/// What is owed for a call in flight taken from its table, built before its answer is
/// handled, so that a panic while handling it cannot lose it.
pub(super) enum Rescue {
    /// The D-Bus caller's `Failed`, and the job the call would have made public.
    Caller {
        reply: Option<Message>,
        job: Option<u32>,
    },
    /// One node's part of a fan-out; `reply` answers its caller if the panic closed it.
    Part {
        agg: u64,
        reply: Option<Message>,
    },
    Dep {
        target: String,
        unit: String,
    },
    Internal,
}

impl Manager {
    /// Takes the call an agent's answer belongs to from its table and handles the answer
    /// (`complete`), with what is owed to the call's caller kept aside until done.
    pub(super) fn on_answer(
        &mut self,
        idx: usize,
        answer: Message,
        handle: impl FnOnce(&mut Manager, usize, Call<PendingKind>, Message),
    ) {
        let Some(call) = self.agents.answer(idx, &answer) else {
            return;
        };
        let rescue = match call.kind() {
            PendingKind::Relay(ctx) => Rescue::Caller {
                reply: internal_error(ctx.message()),
                job: None,
            },
            PendingKind::JobStart { ctx, job } => Rescue::Caller {
                reply: internal_error(ctx.message()),
                job: Some(*job),
            },
            PendingKind::Part { agg } => Rescue::Part {
                agg: *agg,
                reply: self.fan_outs.caller(*agg).and_then(internal_error),
            },
            PendingKind::StartDep { target, unit } => Rescue::Dep {
                target: target.clone(),
                unit: unit.clone(),
            },
            PendingKind::Internal => Rescue::Internal,
        };
        self.in_hand = Some(rescue);
        handle(self, idx, call, answer);
        self.in_hand = None;
    }

    /// After a panic: fails the call in hand, unless it was answered before the panic.
    pub fn settle_after_panic(&mut self) {
        let text = INTERNAL_TEXT;
        match self.in_hand.take() {
            None | Some(Rescue::Internal) => {}
            Some(Rescue::Caller { reply, job }) => {
                if reply.as_ref().is_some_and(|r| self.out.answers(r)) {
                    return;
                }
                if let Some(job) = job.filter(|&j| !self.jobs.is_started(j)) {
                    self.jobs.discard(job, &mut self.out);
                }
                self.out.send(reply);
            }
            Some(Rescue::Part { agg, reply }) => {
                if self.fan_outs.is_open(agg) {
                    let (name, text) = (INTERNAL_ERROR.to_string(), text.to_string());
                    self.fan_outs
                        .add(agg, Part::Failed { name, text }, &mut self.out);
                } else if let Some(r) = reply.filter(|r| !self.out.answers(r)) {
                    self.out.send(Some(r));
                }
            }
            Some(Rescue::Dep { target, unit }) => {
                let actions = self.deps.start_failed(&target, &unit, INTERNAL_ERROR, text);
                self.run_deps(actions);
            }
        }
    }

    /// Whether the model answered the call `reply` answers, or holds it to answer later.
    pub fn answers_or_holds(&self, reply: &Message) -> bool {
        let held = |k: &PendingKind| match k {
            PendingKind::Relay(ctx) | PendingKind::JobStart { ctx, .. } => {
                answers(reply, ctx.message())
            }
            _ => false,
        };
        self.out.answers(reply)
            || self.agents.waiting().any(held)
            || self.fan_outs.callers().any(|c| answers(reply, c))
    }

    /// Fails a call that will get no answer.
    pub(super) fn fail_pending(&mut self, call: Call<PendingKind>, name: &str, text: &str) {
        let member = call.member();
        match call.into_kind() {
            PendingKind::Relay(ctx) => self.out.send(error_reply(ctx.message(), name, text)),
            PendingKind::JobStart { ctx, job } => {
                self.jobs.discard(job, &mut self.out);
                self.out.send(error_reply(ctx.message(), name, text));
            }
            PendingKind::Part { agg } => {
                let part = Part::Failed {
                    name: name.to_string(),
                    text: text.to_string(),
                };
                self.fan_outs.add(agg, part, &mut self.out);
            }
            PendingKind::Internal => log_debug!("{member} not answered: {text}"),
            PendingKind::StartDep { target, unit } => {
                let actions = self.deps.start_failed(&target, &unit, name, text);
                self.run_deps(actions);
            }
        }
    }
}
