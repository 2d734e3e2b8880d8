//! The node registry: the configured nodes, the session of each online one (its link, the
//! serials of what the manager sends on it, the units its agent watches) and the cluster's
//! status. Sending here means queueing a frame on the link; the connection thread writes it.

use crate::events::{Heard, LinkHandle, LinkId, SendError};
use crate::flood::FloodBudget;
use crate::objects::{node_path, properties_changed, signal, Outbox};
use dbus::Message;
use hirte_common::log_fields;
use hirte_common::protocol::{self, error};
use hirte_common::wait::{now_monotonic_us, now_realtime_us};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A registered, live link to a node's agent.
struct Session {
    link: Arc<LinkHandle>,
    /// Units this agent currently watches (for monitors and proxies).
    agent_subs: BTreeSet<String>,
    /// Some (un)subscription could not be sent yet: retried every tick.
    subs_pending: bool,
    /// What the agent sent unasked lately.
    unasked: FloodBudget,
}

impl Session {
    fn send(&mut self, msg: Message) -> Result<u32, SendError> {
        let serial = self.link.serials.next_serial();
        self.link.send(msg, serial).map(|()| serial)
    }
}

pub struct Node {
    name: String,
    path: String,
    session: Option<Session>,
    peer_ip: String,
    last_seen: Option<Instant>,
    last_seen_realtime_us: u64,
    last_seen_monotonic_us: u64,
}

impl Node {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn peer_ip(&self) -> &str {
        &self.peer_ip
    }

    /// The last heartbeat its connection thread answered itself (see `LinkHandle::heard`).
    fn heard(&self) -> Option<Heard> {
        self.session.as_ref().and_then(|s| s.link.heard())
    }

    pub fn last_seen_realtime_us(&self) -> u64 {
        let heard = self.heard().map_or(0, |h| h.realtime_us);
        self.last_seen_realtime_us.max(heard)
    }

    pub fn last_seen_monotonic_us(&self) -> u64 {
        let heard = self.heard().map_or(0, |h| h.monotonic_us);
        self.last_seen_monotonic_us.max(heard)
    }

    /// When anything was last heard from the node: by the core, or a heartbeat its
    /// connection thread answered (`clock` pairs an `Instant` with CLOCK_MONOTONIC µs).
    fn last_heard(&self, clock: (Instant, u64)) -> Option<Instant> {
        let core = self.last_seen?;
        let link = self.heard().and_then(|h| {
            let ago = Duration::from_micros(clock.1.saturating_sub(h.monotonic_us));
            clock.0.checked_sub(ago)
        });
        Some(link.map_or(core, |l| l.max(core)))
    }

    pub fn is_online(&self) -> bool {
        self.session.is_some()
    }

    pub fn status(&self) -> &'static str {
        if self.is_online() {
            protocol::NODE_ONLINE
        } else {
            protocol::NODE_OFFLINE
        }
    }
}

/// Why a Register was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    NotAllowed { name: String },
    AlreadyOnline { name: String, peer: String },
}

impl RegisterError {
    /// The D-Bus error name the agent gets.
    pub fn error_name(&self) -> &'static str {
        match self {
            RegisterError::NotAllowed { .. } => error::NOT_ALLOWED,
            RegisterError::AlreadyOnline { .. } => error::ADDRESS_IN_USE,
        }
    }
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::NotAllowed { name } => {
                write!(f, "node name '{name}' is not in AllowedNodeNames")
            }
            RegisterError::AlreadyOnline { name, peer } => {
                write!(f, "a node named '{name}' is already online (from {peer})")
            }
        }
    }
}

pub struct NodeTable {
    nodes: Vec<Node>,
    by_name: HashMap<String, usize>,
    links: HashMap<LinkId, usize>,
    last_status: &'static str,
    /// No online node was last heard from before this (a lower bound, exact after each
    /// `silent` scan): the core sleeps until it plus the threshold instead of scanning every
    /// node on every wake-up. Heartbeats only move `last_seen` later, so it stays a bound.
    earliest_seen: Option<Instant>,
}

impl NodeTable {
    pub fn new(names: &[String]) -> Self {
        let nodes: Vec<Node> = names
            .iter()
            .map(|name| Node {
                name: name.clone(),
                path: node_path(name),
                session: None,
                peer_ip: String::new(),
                last_seen: None,
                last_seen_realtime_us: 0,
                last_seen_monotonic_us: 0,
            })
            .collect();
        let by_name = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let mut t = NodeTable {
            nodes,
            by_name,
            links: HashMap::new(),
            last_status: "down",
            earliest_seen: None,
        };
        t.last_status = t.status();
        t
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn get(&self, idx: usize) -> Option<&Node> {
        self.nodes.get(idx)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The node's name, empty for an index that names no node.
    pub fn name(&self, idx: usize) -> String {
        self.get(idx).map(|n| n.name.clone()).unwrap_or_default()
    }

    pub fn is_online(&self, idx: usize) -> bool {
        self.get(idx).is_some_and(Node::is_online)
    }

    /// Indexes of the online nodes.
    pub fn online(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.is_online(*i))
            .collect()
    }

    /// The node a registered link belongs to.
    pub fn by_link(&self, link: LinkId) -> Option<usize> {
        self.links.get(&link).copied()
    }

    /// `up` when every configured node is online, `down` when none is, else `degraded`.
    // [impl->req~manager.status~1]
    pub fn status(&self) -> &'static str {
        let online = self.nodes.iter().filter(|n| n.is_online()).count();
        if online == 0 {
            "down"
        } else if online == self.nodes.len() {
            "up"
        } else {
            "degraded"
        }
    }

    /// Decides on a Register for `name` arriving on `handle`: refused (the agent gets the
    /// error and the link closes), or answered and the node online. `Ok(None)`: the answer
    /// could not be queued and the link closes.
    // [impl->req~manager.register-refused~1]
    // [impl->req~manager.register-duplicate~1]
    pub fn register(
        &mut self,
        handle: Arc<LinkHandle>,
        name: &str,
        call: &Message,
    ) -> Result<Option<usize>, RegisterError> {
        let refusal = match self.index(name) {
            None => Err(RegisterError::NotAllowed {
                name: name.to_string(),
            }),
            Some(idx) => match self.nodes.get(idx) {
                Some(n) if n.is_online() => Err(RegisterError::AlreadyOnline {
                    name: name.to_string(),
                    peer: n.peer_ip.clone(),
                }),
                _ => Ok(idx),
            },
        };
        let idx = match refusal {
            Ok(idx) => idx,
            Err(e) => {
                if let Some(reply) = protocol::error_reply(call, e.error_name(), &e.to_string()) {
                    let _ = handle.send(reply, 1);
                }
                handle.request_close(&e.to_string());
                return Err(e);
            }
        };
        handle.accept();
        if handle
            .send(call.method_return(), handle.serials.next_serial())
            .is_err()
        {
            handle.request_close("could not queue the Register reply");
            return Ok(None);
        }
        self.links.insert(handle.id, idx);
        if let Some(n) = self.nodes.get_mut(idx) {
            n.peer_ip = handle.peer.to_string();
            n.session = Some(Session {
                link: handle,
                agent_subs: BTreeSet::new(),
                subs_pending: false,
                unasked: FloodBudget::new(Instant::now()),
            });
        }
        self.touch(idx);
        Ok(Some(idx))
    }

    /// Ends a node's session and asks its link to close; false if it was not online.
    pub fn disconnect(&mut self, idx: usize, reason: &str) -> bool {
        let Some(session) = self.nodes.get_mut(idx).and_then(|n| n.session.take()) else {
            return false;
        };
        session.link.request_close(reason);
        self.links.remove(&session.link.id);
        true
    }

    /// Charges a message the node sent unasked to its budget; the reason to cut it off
    /// when over (see `FloodBudget`).
    pub fn charge_unasked(&mut self, idx: usize, size: usize, now: Instant) -> Result<(), String> {
        match self.nodes.get_mut(idx).and_then(|n| n.session.as_mut()) {
            Some(s) => s.unasked.charge(size, now),
            None => Ok(()),
        }
    }

    /// Something arrived from the node: it is alive.
    pub fn touch(&mut self, idx: usize) {
        if let Some(n) = self.nodes.get_mut(idx) {
            let now = Instant::now();
            n.last_seen = Some(now);
            self.earliest_seen.get_or_insert(now);
            n.last_seen_realtime_us = now_realtime_us();
            n.last_seen_monotonic_us = now_monotonic_us();
        }
    }

    /// Online nodes not heard from for more than `threshold`; a scan of the table only once
    /// the earliest of them can be, which also renews the bound for the rest.
    // [impl->req~manager.heartbeat-threshold~1]
    pub fn silent(&mut self, now: Instant, threshold: Duration) -> Vec<usize> {
        if self
            .earliest_seen
            .is_none_or(|t| now.saturating_duration_since(t) <= threshold)
        {
            return Vec::new();
        }
        let mut silent = Vec::new();
        let mut earliest: Option<Instant> = None;
        let clock = (Instant::now(), now_monotonic_us());
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(seen) = n.last_heard(clock).filter(|_| n.is_online()) else {
                continue;
            };
            if now.saturating_duration_since(seen) > threshold {
                silent.push(i);
            } else {
                earliest = Some(earliest.map_or(seen, |e| e.min(seen)));
            }
        }
        self.earliest_seen = earliest;
        silent
    }

    /// When the earliest online node falls silent unless it is heard from before.
    pub fn next_silence(&self, threshold: Duration) -> Option<Instant> {
        self.earliest_seen.map(|t| t + threshold)
    }

    /// Queues a message to the node's agent with the session's next serial, which it returns.
    pub fn send(&mut self, idx: usize, msg: Message) -> Result<u32, SendError> {
        match self.nodes.get_mut(idx).and_then(|n| n.session.as_mut()) {
            Some(s) => s.send(msg),
            None => Err(SendError::Closed),
        }
    }

    /// What the node's agent watches; `None` when it is offline.
    pub fn agent_subs(&self, idx: usize) -> Option<&BTreeSet<String>> {
        let session = self.nodes.get(idx)?.session.as_ref()?;
        Some(&session.agent_subs)
    }

    /// Records what the agent now watches and whether more (un)subscriptions must follow.
    pub fn set_agent_subs(&mut self, idx: usize, subs: BTreeSet<String>, in_sync: bool) {
        if let Some(s) = self.nodes.get_mut(idx).and_then(|n| n.session.as_mut()) {
            s.agent_subs = subs;
            s.subs_pending = !in_sync;
        }
    }

    /// Whether any online node's subscriptions are not yet what the manager wants.
    pub fn any_unsynced(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| n.session.as_ref().is_some_and(|s| s.subs_pending))
    }

    /// Answers a heartbeat the core got (the connection thread answers the rest itself),
    /// on the link's own serials.
    pub fn echo_heartbeat(&self, idx: usize) {
        if let Some(s) = self.nodes.get(idx).and_then(|n| n.session.as_ref()) {
            let _ = s.link.echo_heartbeat();
        }
    }

    /// Online nodes whose agent's subscriptions are not yet what the manager wants.
    pub fn unsynced(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| {
                self.nodes
                    .get(*i)
                    .and_then(|n| n.session.as_ref())
                    .is_some_and(|s| s.subs_pending)
            })
            .collect()
    }

    /// The node's and, if it moved, the manager's status change.
    pub fn announce(&mut self, idx: usize, out: &mut Outbox) {
        let Some(node) = self.nodes.get(idx) else {
            return;
        };
        let state = node.status();
        let sig = properties_changed(&node.path, protocol::NODE_IFACE, "Status", state.into());
        out.send(sig);
        let sig = signal(
            protocol::MANAGER_PATH,
            protocol::MANAGER_IFACE,
            "NodeConnectionStateChanged",
        )
        .map(|m| m.append2(node.name.clone(), state));
        out.send(sig);
        let status = self.status();
        if status != self.last_status {
            self.last_status = status;
            log_fields!(
                Info,
                [("STATUS", status)],
                "Manager status is now '{status}'"
            );
            out.send(properties_changed(
                protocol::MANAGER_PATH,
                protocol::MANAGER_IFACE,
                "Status",
                status.into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hirte_common::stream::Peer;

    fn table() -> NodeTable {
        NodeTable::new(&["a".to_string(), "b".to_string()])
    }

    fn register_call() -> Message {
        let mut r = hirte_common::handshake::register_call("a").unwrap();
        r.set_serial(1);
        r
    }

    fn queued(h: &LinkHandle) -> Vec<Message> {
        h.take_queued()
    }

    #[test]
    fn register_answers_and_brings_the_node_online() {
        let mut t = table();
        let h = LinkHandle::new(7, Peer::Unix).unwrap();
        assert_eq!(t.register(h.clone(), "a", &register_call()), Ok(Some(0)));
        assert_eq!(t.by_link(7), Some(0));
        assert!(t.is_online(0));
        assert_eq!(t.status(), "degraded");
        let answers = queued(&h);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].get_reply_serial(), Some(1));
        assert!(t.disconnect(0, "bye"));
        assert!(!t.disconnect(0, "bye"));
        assert_eq!(t.by_link(7), None);
        assert_eq!(h.close_requested().as_deref(), Some("bye"));
    }

    #[test]
    fn unknown_and_duplicate_names_are_refused_and_closed() {
        let mut t = table();
        let h = LinkHandle::new(1, Peer::Unix).unwrap();
        let err = t.register(h.clone(), "zz", &register_call()).unwrap_err();
        assert_eq!(err.error_name(), error::NOT_ALLOWED);
        let mut reply = queued(&h).remove(0);
        assert_eq!(
            reply.as_result().unwrap_err().name(),
            Some(error::NOT_ALLOWED)
        );
        assert!(h.close_requested().is_some());
        let first = LinkHandle::new(2, Peer::Unix).unwrap();
        t.register(first, "a", &register_call()).unwrap();
        let second = LinkHandle::new(3, Peer::Unix).unwrap();
        let err = t
            .register(second.clone(), "a", &register_call())
            .unwrap_err();
        assert_eq!(err.error_name(), error::ADDRESS_IN_USE);
        assert!(err.to_string().contains("already online"));
        assert_eq!(t.by_link(3), None);
    }

    #[test]
    fn status_changes_are_announced_once() {
        let mut t = table();
        let mut out = Outbox::default();
        let h = LinkHandle::new(1, Peer::Unix).unwrap();
        t.register(h, "a", &register_call()).unwrap();
        t.announce(0, &mut out);
        // Node Status, NodeConnectionStateChanged, Manager Status.
        assert_eq!(out.take().1.len(), 3);
        t.announce(0, &mut out);
        assert_eq!(out.take().1.len(), 2);
    }

    #[test]
    fn silent_nodes_are_found_and_offline_nodes_cannot_be_sent_to() {
        let mut t = table();
        let h = LinkHandle::new(1, Peer::Unix).unwrap();
        t.register(h, "a", &register_call()).unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(t.silent(later, Duration::from_secs(10)), vec![0]);
        assert!(t.silent(Instant::now(), Duration::from_secs(10)).is_empty());
        let sig = Message::new_signal("/a", "a.b", "C").unwrap();
        assert!(matches!(t.send(1, sig), Err(SendError::Closed)));
    }

    /// Heartbeats the connection thread answered count as much as frames the core saw.
    // [utest->req~manager.heartbeat-threshold~1]
    #[test]
    fn a_heartbeat_the_connection_thread_answered_keeps_the_node_online() {
        let mut t = table();
        let h = LinkHandle::new(1, Peer::Unix).unwrap();
        t.register(h.clone(), "a", &register_call()).unwrap();
        let threshold = Duration::from_millis(50);
        let registered = t.next_silence(threshold).unwrap();
        std::thread::sleep(Duration::from_millis(80));
        h.heard_now();
        assert!(t.silent(Instant::now(), threshold).is_empty());
        // The scan moved the bound on to the heartbeat's time.
        assert!(t.next_silence(threshold).unwrap() >= registered + Duration::from_millis(80));
        let node = t.nodes.first().unwrap();
        assert_eq!(
            node.last_seen_monotonic_us(),
            h.heard().unwrap().monotonic_us
        );
        let later = Instant::now() + Duration::from_secs(1);
        assert_eq!(t.silent(later, threshold), vec![0]);
    }

    #[test]
    fn subscription_state_is_kept_per_session() {
        let mut t = table();
        assert!(t.agent_subs(0).is_none());
        let h = LinkHandle::new(1, Peer::Unix).unwrap();
        t.register(h, "a", &register_call()).unwrap();
        t.set_agent_subs(0, BTreeSet::from(["x".to_string()]), false);
        assert_eq!(t.unsynced(), vec![0]);
        assert_eq!(t.agent_subs(0).map(BTreeSet::len), Some(1));
        t.set_agent_subs(0, BTreeSet::new(), true);
        assert!(t.unsynced().is_empty());
    }
}
