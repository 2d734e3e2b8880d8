//! Talking to the agents: the node table and the calls in flight together, so that a call is
//! only recorded when it was queued on its node's link, and a node that goes offline takes
//! its calls along. What an answer means (`K`) is the caller's business.

use crate::calls::{Call, CallError, CallTable};
use crate::events::{LinkHandle, LinkId};
use crate::nodes::{NodeTable, RegisterError};
use crate::objects::{signal, Outbox};
use dbus::arg::messageitem::MessageItem;
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::MAX_AGENT_SIGNAL_SIZE;
use hirte_common::protocol::{self, error, error_reply};
use hirte_common::timespan::format_timespan;
use hirte_common::wait::earliest;
use hirte_common::{log_debug, log_warn};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Agents<K> {
    nodes: NodeTable,
    calls: CallTable<K>,
    /// How long an agent has to answer a call (`AgentCallTimeout`).
    call_timeout: Duration,
}

impl<K> Agents<K> {
    pub fn new(names: &[String], call_timeout: Duration) -> Self {
        Agents {
            nodes: NodeTable::new(names),
            calls: CallTable::default(),
            call_timeout,
        }
    }

    pub fn nodes(&self) -> &NodeTable {
        &self.nodes
    }

    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// What the calls in flight wait for.
    pub fn waiting(&self) -> impl Iterator<Item = &K> {
        self.calls.kinds()
    }

    /// See `NodeTable::register`.
    pub fn register(
        &mut self,
        handle: Arc<LinkHandle>,
        name: &str,
        call: &Message,
    ) -> Result<Option<usize>, RegisterError> {
        self.nodes.register(handle, name, call)
    }

    /// Ends a node's session; its calls in flight are returned, to be failed. `None` if it
    /// was not online.
    pub fn disconnect(&mut self, idx: usize, reason: &str) -> Option<Vec<Call<K>>> {
        if !self.nodes.disconnect(idx, reason) {
            return None;
        }
        Some(self.calls.drop_node(idx))
    }

    /// The node's and the cluster's status change.
    pub fn announce(&mut self, idx: usize, out: &mut Outbox) {
        self.nodes.announce(idx, out);
    }

    /// Sends one call to a node's agent and remembers what to do with the answer.
    pub fn call(
        &mut self,
        idx: usize,
        member: &'static str,
        fill: impl FnOnce(&mut Message),
        kind: K,
        timeout: Duration,
    ) -> Result<(), Box<(CallError, K)>> {
        let deadline = Instant::now() + timeout;
        let fail = |e: CallError, kind| Err(Box::new((e, kind)));
        let Some(node) = self.nodes.get(idx) else {
            return fail(CallError::NoSuchNode, kind);
        };
        let name = node.name().to_string();
        if !node.is_online() {
            return fail(CallError::Offline { node: name }, kind);
        }
        if !self.calls.has_room(idx, member) {
            let in_flight = self.calls.in_flight(idx);
            return fail(
                CallError::WindowFull {
                    node: name,
                    in_flight,
                },
                kind,
            );
        }
        let Ok(mut msg) = Message::new_method_call(
            protocol::LINK_PEER,
            protocol::INTERNAL_AGENT_PATH,
            protocol::INTERNAL_AGENT_IFACE,
            member,
        ) else {
            return fail(CallError::BadMember, kind);
        };
        fill(&mut msg);
        match self.nodes.send(idx, msg) {
            Ok(serial) => {
                self.calls.insert(idx, serial, member, deadline, kind);
                Ok(())
            }
            Err(e) => {
                let e = CallError::from_send(e, &name);
                log_warn!("{member} to node '{name}' not sent: {e}");
                fail(e, kind)
            }
        }
    }

    /// Sends a signal (no answer expected) to a node's agent; false if it could not go.
    pub fn signal(&mut self, idx: usize, msg: Message) -> bool {
        if !self.nodes.is_online(idx) {
            return false;
        }
        match self.nodes.send(idx, msg) {
            Ok(_) => true,
            Err(e) => {
                log_warn!("Signal to node '{}' not sent: {e}", self.nodes.name(idx));
                false
            }
        }
    }

    /// A signal to one proxy object (`path`) of a node's agent.
    pub fn tell_proxy(&mut self, node: &str, path: &str, member: &str, items: &[MessageItem]) {
        let Some(idx) = self.nodes.index(node) else {
            return;
        };
        if let Some(mut msg) = signal(path, protocol::INTERNAL_PROXY_IFACE, member) {
            msg.append_items(items);
            self.signal(idx, msg);
        }
    }

    /// A message arrived on a registered link: the node it came from, now known alive.
    pub fn heard_from(&mut self, link: LinkId) -> Option<usize> {
        let idx = self.nodes.by_link(link)?;
        self.nodes.touch(idx);
        Some(idx)
    }

    /// Whether a frame of `size` bytes from `link` goes on to be handled. An answer to a
    /// call in flight always does; anything else is charged to the node's unasked budget,
    /// and a signal larger than `MAX_AGENT_SIGNAL_SIZE` (agents never send one) breaks the
    /// protocol: either way `Err` with the node to cut off and why, before any decoding.
    // [impl->req~bounds.agent-flood~1]
    pub fn admit(
        &mut self,
        link: LinkId,
        msg: &Message,
        size: usize,
        now: Instant,
    ) -> Result<bool, (usize, String)> {
        let Some(idx) = self.nodes.by_link(link) else {
            return Ok(false);
        };
        let kind = msg.msg_type();
        let serial = msg.get_reply_serial().unwrap_or(0);
        if matches!(kind, MessageType::MethodReturn | MessageType::Error)
            && self.calls.is_waiting(idx, serial)
        {
            return Ok(true);
        }
        let verdict = if kind == MessageType::Signal && size > MAX_AGENT_SIGNAL_SIZE {
            Err(format!(
                "protocol error: a signal of {size} bytes, the limit is {MAX_AGENT_SIGNAL_SIZE}"
            ))
        } else {
            self.nodes.charge_unasked(idx, size, now)
        };
        verdict.map(|()| true).map_err(|reason| {
            log_warn!("Node '{}' cut off: {reason}", self.nodes.name(idx));
            (idx, reason)
        })
    }

    /// The call an agent's answer belongs to.
    pub fn answer(&mut self, idx: usize, answer: &Message) -> Option<Call<K>> {
        let serial = answer.get_reply_serial().unwrap_or(0);
        let call = self.calls.answer(idx, serial);
        if call.is_none() {
            log_debug!(
                "Node '{}' answered serial {serial}, which has no call waiting (late or never sent)",
                self.nodes.name(idx)
            );
        }
        call
    }

    /// Agents only answer and signal; a call from one is refused.
    pub fn refuse_call(&mut self, idx: usize, call: &Message) {
        let member = call.member().map(|m| m.to_string()).unwrap_or_default();
        let text = if member == "Register" {
            "already registered on this connection".to_string()
        } else {
            format!("agents may not call '{member}'")
        };
        log_warn!("Node '{}': {text}", self.nodes.name(idx));
        if let Some(reply) = error_reply(call, error::PROTOCOL, &text) {
            let _ = self.nodes.send(idx, reply);
        }
    }

    /// Echoes a heartbeat, so the agent can tell a silent manager from a quiet one.
    // [impl->req~link.heartbeat~1]
    pub fn echo_heartbeat(&mut self, idx: usize) {
        self.nodes.echo_heartbeat(idx);
    }

    /// Online nodes not heard from for more than `threshold`, with the reason to drop them.
    // [impl->req~manager.heartbeat-threshold~1]
    pub fn silent(&mut self, now: Instant, threshold: Duration) -> Vec<(usize, String)> {
        let reason = format!("no heartbeat for more than {}", format_timespan(threshold));
        self.nodes
            .silent(now, threshold)
            .into_iter()
            .map(|idx| (idx, reason.clone()))
            .collect()
    }

    /// Calls past their deadline, removed, each with the error text for its caller.
    // [impl->req~manager.call-timeout~1]
    pub fn expired(&mut self, now: Instant) -> Vec<(Call<K>, String)> {
        let mut out = Vec::new();
        for (idx, call) in self.calls.expired(now) {
            let text = format!(
                "node '{}' did not answer {} within {}",
                self.nodes.name(idx),
                call.member(),
                format_timespan(self.call_timeout)
            );
            log_warn!("{text}");
            out.push((call, text));
        }
        out
    }

    /// Remaining time until the earliest call deadline or the earliest node silence.
    pub fn next_deadline(&self, now: Instant, threshold: Duration) -> Option<Duration> {
        let silence = self
            .nodes
            .next_silence(threshold)
            .map(|t| t.saturating_duration_since(now));
        earliest(self.calls.next_deadline(now), silence)
    }

    /// No call in flight.
    pub fn is_quiet(&self) -> bool {
        self.calls.is_empty()
    }

    /// Brings what a node's agent watches in line with `wanted` (`Subscribe`/`Unsubscribe`
    /// calls whose answers get `kind()`). Only what was actually sent is recorded; the rest
    /// is retried on the next tick (the node's call window may be full right now).
    pub fn sync_subscriptions(&mut self, idx: usize, wanted: BTreeSet<String>, kind: fn() -> K) {
        let Some(current) = self.nodes.agent_subs(idx).cloned() else {
            return;
        };
        let mut now = current.clone();
        let timeout = self.call_timeout;
        // A call too large for the link is final: retrying it would fail the same way.
        let done = |r: Result<(), Box<(CallError, K)>>| match r {
            Ok(()) => true,
            Err(f) => matches!(f.0, CallError::TooLarge(_)),
        };
        for unit in current.difference(&wanted) {
            let fill = |m: &mut Message| m.append_all((unit.clone(),));
            if done(self.call(idx, "Unsubscribe", fill, kind(), timeout)) {
                now.remove(unit);
            }
        }
        for unit in wanted.difference(&current) {
            let fill = |m: &mut Message| m.append_all((unit.clone(),));
            if done(self.call(idx, "Subscribe", fill, kind(), timeout)) {
                now.insert(unit.clone());
            }
        }
        let in_sync = now == wanted;
        self.nodes.set_agent_subs(idx, now, in_sync);
    }

    /// Online nodes whose agent's subscriptions must be retried.
    pub fn unsynced(&self) -> Vec<usize> {
        self.nodes.unsynced()
    }

    /// Whether any node's subscriptions wait for a retry (no list built: asked every turn).
    pub fn any_unsynced(&self) -> bool {
        self.nodes.any_unsynced()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hirte_common::bounds::MAX_PENDING_CALLS_PER_NODE;
    use hirte_common::stream::Peer;

    fn online() -> (Agents<u32>, Arc<LinkHandle>) {
        let mut a = Agents::new(&["n1".to_string()], Duration::from_secs(5));
        let h = LinkHandle::new(1, Peer::Unix).unwrap();
        let mut r = hirte_common::handshake::register_call("n1").unwrap();
        r.set_serial(1);
        assert_eq!(a.register(h.clone(), "n1", &r), Ok(Some(0)));
        sent(&h);
        (a, h)
    }

    fn sent(h: &LinkHandle) -> Vec<Message> {
        h.take_queued()
    }

    fn member(m: &Message) -> String {
        m.member().map(|s| s.to_string()).unwrap_or_default()
    }

    #[test]
    fn an_answer_finds_its_call_once() {
        let (mut a, h) = online();
        let t = a.call_timeout();
        a.call(0, "ListUnits", |_| {}, 7, t).unwrap();
        let call = sent(&h).remove(0);
        let mut answer = call.method_return();
        answer.set_serial(40);
        assert_eq!(a.heard_from(1), Some(0));
        assert_eq!(a.answer(0, &answer).map(Call::into_kind), Some(7));
        assert!(a.answer(0, &answer).is_none());
        assert!(a.is_quiet());
    }

    #[test]
    fn a_full_window_refuses_calls_without_sending() {
        let (mut a, h) = online();
        let t = a.call_timeout();
        for _ in 0..MAX_PENDING_CALLS_PER_NODE {
            a.call(0, "X", |_| {}, 0, t).unwrap();
            sent(&h);
        }
        let e = a.call(0, "X", |_| {}, 0, t).unwrap_err();
        assert!(matches!(e.0, CallError::WindowFull { .. }));
        assert!(sent(&h).is_empty());
    }

    /// Read-only callers (and the manager's own subscriptions) cannot fill the window:
    /// root's start and stop still get through.
    // [utest->req~bounds.control-reserve~1]
    #[test]
    fn read_only_calls_leave_room_for_calls_that_change_state() {
        let (mut a, h) = online();
        let t = a.call_timeout();
        let mut read_only = 0;
        while a.call(0, "ListUnits", |_| {}, 0, t).is_ok() {
            read_only += 1;
            assert!(read_only <= MAX_PENDING_CALLS_PER_NODE);
        }
        let e = a.call(0, "Subscribe", |_| {}, 0, t).unwrap_err();
        assert_eq!(
            e.0.to_string(),
            format!("node 'n1' has {read_only} calls in flight; try again later")
        );
        assert!(read_only < MAX_PENDING_CALLS_PER_NODE);
        for member in ["StartUnit", "StopUnit"] {
            a.call(0, member, |_| {}, 0, t).unwrap();
        }
        assert_eq!(sent(&h).len(), read_only + 2);
    }

    #[test]
    fn a_disconnected_node_takes_its_calls_along() {
        let (mut a, h) = online();
        let t = a.call_timeout();
        a.call(0, "X", |_| {}, 1, t).unwrap();
        assert_eq!(a.disconnect(0, "gone").map(|c| c.len()), Some(1));
        assert!(a.disconnect(0, "gone").is_none());
        assert!(a.is_quiet());
        assert_eq!(h.close_requested().as_deref(), Some("gone"));
        let e = a.call(0, "X", |_| {}, 1, t).unwrap_err();
        assert!(matches!(e.0, CallError::Offline { .. }));
        assert!(!a.signal(0, signal("/a", "a.b", "C").unwrap()));
    }

    #[test]
    fn expired_calls_say_who_did_not_answer_what() {
        let (mut a, _h) = online();
        a.call(0, "StartDep", |_| {}, 1, Duration::from_secs(1))
            .unwrap();
        let later = Instant::now() + Duration::from_secs(2);
        let expired = a.expired(later);
        assert_eq!(expired.len(), 1);
        assert!(expired[0]
            .1
            .starts_with("node 'n1' did not answer StartDep within"));
        // Only the node's silence is left to wait for.
        let silence = a.next_deadline(later, Duration::from_secs(60)).unwrap();
        assert!(silence > Duration::from_secs(50), "{silence:?}");
        assert_eq!(
            a.next_deadline(later, Duration::from_secs(1)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn subscriptions_follow_what_is_wanted() {
        let (mut a, h) = online();
        a.sync_subscriptions(0, BTreeSet::from(["x".to_string()]), || 0);
        let calls: Vec<String> = sent(&h).iter().map(member).collect();
        assert_eq!(calls, ["Subscribe"]);
        a.sync_subscriptions(0, BTreeSet::new(), || 0);
        let calls: Vec<String> = sent(&h).iter().map(member).collect();
        assert_eq!(calls, ["Unsubscribe"]);
        assert!(a.unsynced().is_empty());
    }

    /// A name too large for a frame fails its Subscribe for good (logged once), not on
    /// every tick.
    #[test]
    fn a_subscription_too_large_for_the_link_is_not_retried() {
        let (mut a, h) = online();
        let huge = "x".repeat(hirte_common::bounds::MAX_FRAME_SIZE);
        a.sync_subscriptions(0, BTreeSet::from([huge.clone()]), || 0);
        assert!(sent(&h).is_empty());
        assert!(a.unsynced().is_empty());
        a.sync_subscriptions(0, BTreeSet::from([huge]), || 0);
        assert!(sent(&h).is_empty());
        assert!(a.is_quiet());
    }

    #[test]
    fn calls_from_agents_are_refused_and_heartbeats_echoed() {
        let (mut a, h) = online();
        let mut call = Message::new_method_call("a.b", "/", "a.b", "Register").unwrap();
        call.set_serial(9);
        a.refuse_call(0, &call);
        a.echo_heartbeat(0);
        let mut back = sent(&h);
        let err = back[0].as_result().unwrap_err();
        assert_eq!(err.message(), Some("already registered on this connection"));
        assert_eq!(member(&back[1]), "Heartbeat");
    }
}
