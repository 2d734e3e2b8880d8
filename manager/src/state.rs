//! The manager's model: nodes, their links and in-flight calls, jobs. Owned by the core thread
//! (behind a mutex only because D-Bus handler closures must be `Send`); nothing here does I/O.
//! Effects are collected in `outbox` (bus messages) and `object_ops` (objects to add/remove),
//! which the core applies after each step.

use crate::events::{LinkHandle, LinkId, SendError};
use crate::monitor::Monitors;
use crate::proxy::Proxies;
use dbus::arg::messageitem::MessageItem;
use dbus::arg::{Arg, PropMap, RefArg, Variant};
use dbus::message::MessageType;
use dbus::strings::ErrorName;
use dbus::{Message, Path};
use dbus_crossroads::{Context, MethodErr};
use hirte_common::bounds::{MAX_JOBS, MAX_PENDING_CALLS_PER_NODE};
use hirte_common::config::ManagerConfig;
use hirte_common::frame::SerialCounter;
use hirte_common::names::escape_path_element;
use hirte_common::protocol::{self, error, signature_of};
use hirte_common::wait::{now_monotonic_us, now_realtime_us};
use hirte_common::{log_debug, log_fields, log_warn};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub type Shared = Arc<Mutex<Manager>>;

/// Locks the model. A panic while it was held is logged by the core; the data is still
/// consistent at message granularity, so we keep serving rather than stop the manager.
pub fn lock(m: &Shared) -> MutexGuard<'_, Manager> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub use hirte_common::protocol::UnitRow;

/// What to do with an agent's answer.
pub enum PendingKind {
    /// Relay the answer verbatim to the D-Bus caller.
    Relay(Context),
    /// A unit job was requested: on success the job becomes public.
    JobStart { ctx: Context, job: u32 },
    /// One node's part of a call that spans all nodes.
    Part { agg: u64 },
    /// The manager's own call (monitor subscriptions): only a failure is logged.
    Internal,
    /// `StartDep` for proxies: the answer decides their fate (`dependencies.rs`).
    StartDep { target: String, unit: String },
}

/// A call that could not be sent: the error for the caller, and what was to be done.
type CallFailure = Box<(MethodErr, PendingKind)>;

pub struct Pending {
    pub member: &'static str,
    deadline: Instant,
    kind: PendingKind,
}

/// A registered, live link to a node's agent.
pub struct Online {
    pub link: Arc<LinkHandle>,
    serials: SerialCounter,
    pending: HashMap<u32, Pending>,
    /// Units this agent currently watches for monitors.
    agent_subs: BTreeSet<String>,
    /// Some (un)subscription could not be sent yet: retried every tick.
    subs_pending: bool,
}

pub struct Node {
    pub name: String,
    pub path: String,
    pub online: Option<Online>,
    pub peer_ip: String,
    pub last_seen: Option<Instant>,
    pub last_seen_realtime_us: u64,
    pub last_seen_monotonic_us: u64,
}

impl Node {
    pub fn status(&self) -> &'static str {
        if self.online.is_some() {
            protocol::NODE_ONLINE
        } else {
            protocol::NODE_OFFLINE
        }
    }
}

pub struct Job {
    pub id: u32,
    pub node: usize,
    pub unit: String,
    pub job_type: &'static str,
    pub state: String,
    /// Public (JobNew sent) once the agent accepted it.
    pub started: bool,
    pub created: Instant,
    /// The unit's inactive-to-active time the agent measured (metrics), else 0.
    pub start_propagation_us: u64,
    /// A result that arrived before the agent's acceptance was processed.
    pub early_result: Option<String>,
}

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

/// Spans-all-nodes calls (`Manager.ListUnits`, ...): parts are collected, then one reply.
pub struct Aggregate {
    ctx: Option<Context>,
    kind: FanOut,
    remaining: usize,
    parts: Vec<(String, Message)>,
    /// The first failing node's error name and message.
    failure: Option<(String, String)>,
}

/// Changes to the exported object tree, applied by the core (which owns `Crossroads`).
pub enum ObjectOp {
    AddJob(u32),
    RemoveJob(u32),
    AddMonitor(u32),
    RemoveMonitor(u32),
}

pub struct Manager {
    pub cfg: ManagerConfig,
    pub nodes: Vec<Node>,
    by_name: HashMap<String, usize>,
    links: HashMap<LinkId, usize>,
    pub jobs: BTreeMap<u32, Job>,
    next_job: u32,
    aggregates: HashMap<u64, Aggregate>,
    next_agg: u64,
    last_status: &'static str,
    pub outbox: Vec<Message>,
    pub object_ops: Vec<ObjectOp>,
    pub monitors: Monitors,
    pub metrics: bool,
    /// Set on SIGTERM: new calls are refused while jobs in flight finish.
    pub draining: bool,
    /// Cross-node dependencies (proxy services).
    pub proxies: Proxies,
}

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

pub fn merr(name: &'static str, text: impl Into<String>) -> MethodErr {
    MethodErr::from((name, text.into()))
}

/// An error reply to `call`, unless the caller asked for no reply.
fn error_reply(call: &Message, name: &str, text: &str) -> Option<Message> {
    if call.get_no_reply() {
        return None;
    }
    let name = ErrorName::new(name.to_string())
        .or_else(|_| ErrorName::new(error::PROTOCOL.to_string()))
        .ok()?;
    let text = std::ffi::CString::new(text.replace('\0', " ")).ok()?;
    Some(call.error(&name, &text))
}

/// Copies an agent's answer (return values or error) into the reply to the D-Bus caller.
fn relay_answer(call: &Message, mut answer: Message) -> Option<Message> {
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
    Some(protocol::copy_answer(call.method_return(), &answer))
}

impl Manager {
    pub fn new(cfg: ManagerConfig) -> Self {
        let nodes: Vec<Node> = cfg
            .allowed_node_names
            .iter()
            .map(|name| Node {
                name: name.clone(),
                path: node_path(name),
                online: None,
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
        let mut m = Manager {
            cfg,
            nodes,
            by_name,
            links: HashMap::new(),
            jobs: BTreeMap::new(),
            next_job: 0,
            aggregates: HashMap::new(),
            next_agg: 0,
            last_status: "down",
            outbox: Vec::new(),
            object_ops: Vec::new(),
            monitors: Monitors::default(),
            metrics: false,
            draining: false,
            proxies: Proxies::default(),
        };
        m.last_status = m.status();
        m
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// `up` when every configured node is online, `down` when none is, else `degraded`.
    // [impl->req~manager.status~1]
    pub fn status(&self) -> &'static str {
        let online = self.nodes.iter().filter(|n| n.online.is_some()).count();
        if online == 0 {
            "down"
        } else if online == self.nodes.len() {
            "up"
        } else {
            "degraded"
        }
    }

    fn emit(&mut self, msg: Option<Message>) {
        if let Some(m) = msg {
            self.outbox.push(m);
        }
    }

    pub(crate) fn signal(path: &str, iface: &str, member: &str) -> Option<Message> {
        Message::new_signal(path.to_string(), iface.to_string(), member.to_string()).ok()
    }

    fn properties_changed(path: &str, iface: &str, name: &str, value: String) -> Option<Message> {
        let mut changed = PropMap::new();
        changed.insert(
            name.to_string(),
            Variant(Box::new(value) as Box<dyn RefArg>),
        );
        Self::signal(path, "org.freedesktop.DBus.Properties", "PropertiesChanged")
            .map(|m| m.append3(iface, changed, Vec::<String>::new()))
    }

    /// Emits the node's and, if it moved, the manager's status change.
    fn announce_node_state(&mut self, idx: usize) {
        let Some(node) = self.nodes.get(idx) else {
            return;
        };
        let (name, path, state) = (node.name.clone(), node.path.clone(), node.status());
        let sig = Self::properties_changed(&path, protocol::NODE_IFACE, "Status", state.into());
        self.emit(sig);
        let sig = Self::signal(
            protocol::MANAGER_PATH,
            protocol::MANAGER_IFACE,
            "NodeConnectionStateChanged",
        )
        .map(|m| m.append2(name, state));
        self.emit(sig);
        let status = self.status();
        if status != self.last_status {
            self.last_status = status;
            log_fields!(
                Info,
                [("STATUS", status)],
                "Manager status is now '{status}'"
            );
            let sig = Self::properties_changed(
                protocol::MANAGER_PATH,
                protocol::MANAGER_IFACE,
                "Status",
                status.into(),
            );
            self.emit(sig);
        }
    }

    fn touch(&mut self, idx: usize) {
        if let Some(n) = self.nodes.get_mut(idx) {
            n.last_seen = Some(Instant::now());
            n.last_seen_realtime_us = now_realtime_us();
            n.last_seen_monotonic_us = now_monotonic_us();
        }
    }

    // ---- registration and liveness -------------------------------------------------------

    /// Decides on a Register from a new link.
    // [impl->req~manager.register~1]
    pub fn on_register(&mut self, handle: Arc<LinkHandle>, name: &str, call: &Message) {
        let peer = handle.peer;
        // [impl->req~manager.register-refused~1]
        // [impl->req~manager.register-duplicate~1]
        let refusal = match self.node_index(name) {
            None => Some((
                error::NOT_ALLOWED,
                format!("node name '{name}' is not in AllowedNodeNames"),
            )),
            Some(idx) => match self.nodes.get(idx).and_then(|n| n.online.as_ref()) {
                Some(_) => Some((
                    error::ADDRESS_IN_USE,
                    format!(
                        "a node named '{name}' is already online (from {})",
                        self.nodes
                            .get(idx)
                            .map(|n| n.peer_ip.as_str())
                            .unwrap_or("")
                    ),
                )),
                None => None,
            },
        };
        if let Some((err, text)) = refusal {
            log_fields!(
                Warn,
                [("NODE", name)],
                "Refused agent '{name}' from {peer}: {text}"
            );
            if let Some(reply) = error_reply(call, err, &text) {
                let _ = handle.send(reply, 1);
            }
            handle.request_close(&text);
            return;
        }
        let Some(idx) = self.node_index(name) else {
            return;
        };
        let mut serials = SerialCounter::default();
        if handle
            .send(call.method_return(), serials.next_serial())
            .is_err()
        {
            handle.request_close("could not queue the Register reply");
            return;
        }
        self.links.insert(handle.id, idx);
        if let Some(n) = self.nodes.get_mut(idx) {
            n.peer_ip = peer.to_string();
            n.online = Some(Online {
                link: handle,
                serials,
                pending: HashMap::new(),
                agent_subs: BTreeSet::new(),
                subs_pending: false,
            });
        }
        self.touch(idx);
        log_fields!(
            Info,
            [("NODE", name)],
            "Agent '{name}' connected from {peer}"
        );
        self.announce_node_state(idx);
        self.sync_agent_subscriptions(idx);
        self.start_needed_deps(idx);
        if self.metrics {
            let _ = self.call_node(idx, "EnableMetrics", |_| {}, PendingKind::Internal);
        }
    }

    /// A registered link ended (the connection thread saw it go).
    pub fn on_link_closed(&mut self, link: LinkId, reason: &str) {
        if let Some(idx) = self.links.get(&link).copied() {
            self.node_offline(idx, reason);
        }
    }

    /// Marks a node offline: its calls fail with `Offline`, its jobs end `cancelled`.
    // [impl->req~manager.offline-cleanup~1]
    pub fn node_offline(&mut self, idx: usize, reason: &str) {
        let Some(node) = self.nodes.get_mut(idx) else {
            return;
        };
        let Some(online) = node.online.take() else {
            return;
        };
        let name = node.name.clone();
        online.link.request_close(reason);
        self.links.remove(&online.link.id);
        log_fields!(
            Info,
            [("NODE", name.as_str())],
            "Agent '{name}' disconnected: {reason}"
        );
        let text = format!("node '{name}' went offline: {reason}");
        for (_, p) in online.pending {
            self.fail_pending(p, error::OFFLINE, &text);
        }
        let ids: Vec<u32> = self
            .jobs
            .values()
            .filter(|j| j.node == idx)
            .map(|j| j.id)
            .collect();
        for id in ids {
            self.finish_job(id, protocol::JOB_RESULT_CANCELLED);
        }
        self.announce_node_state(idx);
        self.virtual_offline_events(&name);
        self.drop_proxies_of(&name);
    }

    // ---- monitors ------------------------------------------------------------------------

    /// A monitor signal to each recipient (unicast: only the owner and its peers get it).
    fn monitor_signal(
        &mut self,
        monitor: u32,
        recipients: &[String],
        member: &str,
        items: &[MessageItem],
    ) {
        let path = monitor_path(monitor);
        for r in recipients {
            let Some(mut m) = Self::signal(&path, protocol::MONITOR_IFACE, member) else {
                continue;
            };
            m.append_items(items);
            let Ok(dest) = dbus::strings::BusName::new(r.clone()) else {
                continue;
            };
            m.set_destination(Some(dest));
            self.outbox.push(m);
        }
    }

    /// When a node drops, its subscribers learn that its units are gone for them.
    // [impl->req~manager.monitor-virtual~1]
    fn virtual_offline_events(&mut self, node: &str) {
        for (mid, recipients, units) in self.monitors.units_of_node(node) {
            for unit in units {
                let n = MessageItem::Str(node.to_string());
                let u = MessageItem::Str(unit);
                let state = [
                    n.clone(),
                    u.clone(),
                    MessageItem::Str("inactive".into()),
                    MessageItem::Str("agent-offline".into()),
                    MessageItem::Str("virtual".into()),
                ];
                self.monitor_signal(mid, &recipients, "UnitStateChanged", &state);
                let removed = [n, u, MessageItem::Str("virtual".into())];
                self.monitor_signal(mid, &recipients, "UnitRemoved", &removed);
            }
        }
    }

    /// Brings what a node's agent watches in line with what the monitors want.
    // [impl->req~manager.monitors~1]
    pub fn sync_agent_subscriptions(&mut self, idx: usize) {
        let Some(node) = self.nodes.get(idx) else {
            return;
        };
        let mut wanted = self.monitors.wanted_units(&node.name);
        if !wanted.contains(crate::monitor::WILDCARD) {
            wanted.extend(self.proxies.watched_units(&node.name));
        }
        let Some(current) = node.online.as_ref().map(|o| o.agent_subs.clone()) else {
            return;
        };
        // Only what was actually sent is recorded; the rest is retried on the next tick
        // (the node's call window may be full right now).
        let mut now = current.clone();
        for unit in current.difference(&wanted) {
            let u = unit.clone();
            let fill = |m: &mut Message| m.append_all((u,));
            if self
                .call_node(idx, "Unsubscribe", fill, PendingKind::Internal)
                .is_ok()
            {
                now.remove(unit);
            }
        }
        for unit in wanted.difference(&current) {
            let u = unit.clone();
            let fill = |m: &mut Message| m.append_all((u,));
            if self
                .call_node(idx, "Subscribe", fill, PendingKind::Internal)
                .is_ok()
            {
                now.insert(unit.clone());
            }
        }
        let in_sync = now == wanted;
        if let Some(o) = self.nodes.get_mut(idx).and_then(|n| n.online.as_mut()) {
            o.agent_subs = now;
            o.subs_pending = !in_sync;
        }
    }

    pub fn notify_peer_removed(&mut self, monitor: u32, peer: &str, reason: &str) {
        self.monitor_signal(
            monitor,
            &[peer.to_string()],
            "PeerRemoved",
            &[MessageItem::Str(reason.to_string())],
        );
    }

    pub fn sync_all_subscriptions(&mut self) {
        for idx in 0..self.nodes.len() {
            self.sync_agent_subscriptions(idx);
        }
    }

    /// Closes a monitor: its subscriptions end, its peers are told.
    pub fn close_monitor(&mut self, id: u32, reason: &str) {
        if let Some(m) = self.monitors.close(id) {
            let peers: Vec<String> = m.peers.values().cloned().collect();
            self.monitor_signal(
                id,
                &peers,
                "PeerRemoved",
                &[MessageItem::Str(reason.to_string())],
            );
            self.object_ops.push(ObjectOp::RemoveMonitor(id));
            self.sync_all_subscriptions();
        }
    }

    /// A bus client went away: its monitors close, it stops being anyone's peer.
    // [impl->req~manager.monitor-owner-gone~1]
    pub fn on_name_lost(&mut self, name: &str) {
        for id in self.monitors.owned_by(name) {
            self.close_monitor(id, "owner left the bus");
        }
        for (mid, pid) in self.monitors.peers_named(name) {
            let _ = self.monitors.remove_peer(mid, pid);
        }
    }

    /// A unit event from an agent, for the monitors that want it.
    fn route_unit_event(&mut self, node: &str, unit: &str, member: &str, items: Vec<MessageItem>) {
        let mut full = vec![MessageItem::Str(node.to_string())];
        full.extend(items);
        for (mid, recipients) in self.monitors.route(node, unit) {
            self.monitor_signal(mid, &recipients, member, &full);
        }
    }

    /// Called every core tick: heartbeats and call deadlines.
    // [impl->req~manager.heartbeat-threshold~1]
    pub fn tick(&mut self, now: Instant) {
        let threshold = self.cfg.node_heartbeat_threshold;
        let silent: Vec<usize> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.online.is_some()
                    && n.last_seen
                        .is_some_and(|t| now.saturating_duration_since(t) > threshold)
            })
            .map(|(i, _)| i)
            .collect();
        for idx in silent {
            let reason = format!(
                "no heartbeat for more than {}",
                hirte_common::timespan::format_timespan(threshold)
            );
            self.node_offline(idx, &reason);
        }
        let unsynced: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                self.nodes
                    .get(*i)
                    .and_then(|n| n.online.as_ref())
                    .is_some_and(|o| o.subs_pending)
            })
            .collect();
        for idx in unsynced {
            self.sync_agent_subscriptions(idx);
        }
        // [impl->req~manager.call-timeout~1]
        let mut expired = Vec::new();
        for node in &mut self.nodes {
            if let Some(online) = node.online.as_mut() {
                let serials: Vec<u32> = online
                    .pending
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(s, _)| *s)
                    .collect();
                for s in serials {
                    if let Some(p) = online.pending.remove(&s) {
                        expired.push((node.name.clone(), p));
                    }
                }
            }
        }
        let timeout = self.cfg.agent_call_timeout;
        for (name, p) in expired {
            let text = format!(
                "node '{name}' did not answer {} within {}",
                p.member,
                hirte_common::timespan::format_timespan(timeout)
            );
            log_warn!("{text}");
            self.fail_pending(p, error::TIMEOUT, &text);
        }
    }

    /// Ends a pending call with an error.
    fn fail_pending(&mut self, p: Pending, name: &str, text: &str) {
        match p.kind {
            PendingKind::Relay(ctx) => {
                let r = error_reply(ctx.message(), name, text);
                self.emit(r);
            }
            PendingKind::JobStart { ctx, job } => {
                self.drop_job(job);
                let r = error_reply(ctx.message(), name, text);
                self.emit(r);
            }
            PendingKind::Part { agg } => {
                self.aggregate_part(agg, None, Some((name.to_string(), text.to_string())))
            }
            PendingKind::Internal => log_debug!("{} not answered: {text}", p.member),
            PendingKind::StartDep { target, unit } => {
                self.start_dep_failed(&target, &unit, name, text)
            }
        }
    }

    // ---- calls to agents -----------------------------------------------------------------

    /// Sends one call to a node's agent and remembers what to do with the answer.
    pub(crate) fn call_node(
        &mut self,
        idx: usize,
        member: &'static str,
        fill: impl FnOnce(&mut Message),
        kind: PendingKind,
    ) -> Result<(), CallFailure> {
        let timeout = self.cfg.agent_call_timeout;
        self.call_node_within(idx, member, fill, kind, timeout)
    }

    pub(crate) fn call_node_within(
        &mut self,
        idx: usize,
        member: &'static str,
        fill: impl FnOnce(&mut Message),
        kind: PendingKind,
        timeout: Duration,
    ) -> Result<(), CallFailure> {
        let deadline = Instant::now() + timeout;
        if self.draining && !matches!(kind, PendingKind::Internal) {
            return Err(Box::new((
                merr(error::BUSY, "the manager is shutting down"),
                kind,
            )));
        }
        let Some(node) = self.nodes.get_mut(idx) else {
            return Err(Box::new((
                merr(error::NODE_NOT_FOUND, "no such node"),
                kind,
            )));
        };
        let Some(online) = node.online.as_mut() else {
            let text = format!("node '{}' is offline", node.name);
            return Err(Box::new((merr(error::OFFLINE, text), kind)));
        };
        // [impl->req~bounds.pending-calls~1]
        if online.pending.len() >= MAX_PENDING_CALLS_PER_NODE {
            let text = format!(
                "node '{}' has {MAX_PENDING_CALLS_PER_NODE} calls in flight; try again later",
                node.name
            );
            return Err(Box::new((merr(error::BUSY, text), kind)));
        }
        let Ok(mut msg) = Message::new_method_call(
            protocol::LINK_PEER,
            protocol::INTERNAL_AGENT_PATH,
            protocol::INTERNAL_AGENT_IFACE,
            member,
        ) else {
            return Err(Box::new((merr(error::INVALID_ARGS, "bad member"), kind)));
        };
        fill(&mut msg);
        let serial = online.serials.next_serial();
        if let Err(e) = online.link.send(msg, serial) {
            let (name, text) = match e {
                SendError::TooLarge(e) => (error::INVALID_ARGS, format!("call too large: {e}")),
                SendError::Full => (
                    error::BUSY,
                    format!("link to node '{}' is congested; try again later", node.name),
                ),
                SendError::Closed => (error::OFFLINE, format!("node '{}' is offline", node.name)),
            };
            log_warn!("{member} to node '{}' not sent: {text}", node.name);
            return Err(Box::new((merr(name, text), kind)));
        }
        online.pending.insert(
            serial,
            Pending {
                member,
                deadline,
                kind,
            },
        );
        Ok(())
    }

    /// Sends a signal (no answer expected) to a node's agent; false if it could not go.
    pub(crate) fn signal_node(&mut self, idx: usize, msg: Message) -> bool {
        let Some(node) = self.nodes.get_mut(idx) else {
            return false;
        };
        let Some(online) = node.online.as_mut() else {
            return false;
        };
        match online.link.send(msg, online.serials.next_serial()) {
            Ok(()) => true,
            Err(e) => {
                log_warn!("Signal to node '{}' not sent: {e}", node.name);
                false
            }
        }
    }

    /// Forwards a Node method to the agent; the agent's answer is relayed as is.
    // [impl->req~manager.node-relay~1]
    pub fn relay(
        &mut self,
        idx: usize,
        member: &'static str,
        fill: impl FnOnce(&mut Message),
        ctx: Context,
    ) -> Option<Context> {
        let timeout = self.cfg.agent_call_timeout;
        self.relay_within(idx, member, fill, ctx, timeout)
    }

    /// `relay` with its own answer deadline (for `Exec`, which runs as long as its command).
    pub fn relay_within(
        &mut self,
        idx: usize,
        member: &'static str,
        fill: impl FnOnce(&mut Message),
        ctx: Context,
        timeout: Duration,
    ) -> Option<Context> {
        match self.call_node_within(idx, member, fill, PendingKind::Relay(ctx), timeout) {
            Ok(()) => None,
            Err(f) => match *f {
                (e, PendingKind::Relay(mut ctx)) => {
                    ctx.reply::<()>(Err(e));
                    Some(ctx)
                }
                _ => None,
            },
        }
    }

    /// `Node.StartUnit` and friends: creates a job, asks the agent to run it.
    // [impl->req~manager.jobs~1]
    pub fn start_job(
        &mut self,
        idx: usize,
        member: &'static str,
        job_type: &'static str,
        unit: String,
        fill: impl FnOnce(&mut Message, u32),
        mut ctx: Context,
    ) -> Option<Context> {
        // [impl->req~bounds.jobs~1]
        if self.jobs.len() >= MAX_JOBS {
            ctx.reply::<()>(Err(merr(
                error::BUSY,
                format!("{MAX_JOBS} jobs are in flight; try again later"),
            )));
            return Some(ctx);
        }
        let id = self.allocate_job_id();
        self.jobs.insert(
            id,
            Job {
                id,
                node: idx,
                unit,
                job_type,
                state: "waiting".to_string(),
                started: false,
                created: Instant::now(),
                start_propagation_us: 0,
                early_result: None,
            },
        );
        let fill = |m: &mut Message| fill(m, id);
        match self.call_node(idx, member, fill, PendingKind::JobStart { ctx, job: id }) {
            Ok(()) => {
                self.object_ops.push(ObjectOp::AddJob(id));
                None
            }
            Err(f) => match *f {
                (e, PendingKind::JobStart { mut ctx, .. }) => {
                    self.jobs.remove(&id);
                    ctx.reply::<()>(Err(e));
                    Some(ctx)
                }
                _ => None,
            },
        }
    }

    fn allocate_job_id(&mut self) -> u32 {
        loop {
            self.next_job = self.next_job.checked_add(1).unwrap_or(1);
            if !self.jobs.contains_key(&self.next_job) {
                return self.next_job;
            }
        }
    }

    /// Removes a job that never became public.
    fn drop_job(&mut self, id: u32) {
        if self.jobs.remove(&id).is_some() {
            self.object_ops.push(ObjectOp::RemoveJob(id));
        }
    }

    /// Ends a job: `JobRemoved` with systemd's result (or `cancelled`), object removed.
    fn finish_job(&mut self, id: u32, result: &str) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if !job.started {
            // The agent's acceptance is still on its way; finish once it is processed.
            job.early_result = Some(result.to_string());
            return;
        }
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        let node = self
            .nodes
            .get(job.node)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        log_fields!(
            Info,
            [
                ("NODE", node.as_str()),
                ("UNIT", job.unit.as_str()),
                ("JOB", id.to_string().as_str())
            ],
            "Job {id} {} of '{}' on node '{node}' finished: {result}",
            job.job_type,
            job.unit
        );
        let sig = Self::signal(
            protocol::MANAGER_PATH,
            protocol::MANAGER_IFACE,
            "JobRemoved",
        )
        .and_then(|m| {
            let path = Path::new(job_path(id)).ok()?;
            let mut m = m.append3(id, path, node.clone());
            m.append_all((job.unit.clone(), result.to_string()));
            Some(m)
        });
        self.emit(sig);
        self.object_ops.push(ObjectOp::RemoveJob(id));
        // [impl->req~manager.metrics~1]
        if self.metrics && job.job_type == "start" {
            let micros = u64::try_from(job.created.elapsed().as_micros()).unwrap_or(u64::MAX);
            let sig = Self::signal(METRICS_PATH, METRICS_IFACE, "StartUnitJobMetrics").map(|m| {
                m.append3(node.clone(), id.to_string(), job.unit.clone())
                    .append2(micros, job.start_propagation_us)
            });
            self.emit(sig);
        }
    }

    // ---- spanning calls ------------------------------------------------------------------

    /// Sends `member` to every online node; answers the caller once all parts are in.
    /// Any failing node fails the whole call, naming the node: a partial list would hide it.
    // [impl->req~manager.list-units~1]
    pub fn fan_out(
        &mut self,
        member: &'static str,
        kind: FanOut,
        ctx: Option<Context>,
    ) -> Option<Context> {
        let online: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes.get(*i).is_some_and(|n| n.online.is_some()))
            .collect();
        self.next_agg += 1;
        let agg = self.next_agg;
        self.aggregates.insert(
            agg,
            Aggregate {
                ctx,
                kind,
                remaining: online.len() + 1,
                parts: Vec::new(),
                failure: None,
            },
        );
        for idx in online {
            let name = self
                .nodes
                .get(idx)
                .map(|n| n.name.clone())
                .unwrap_or_default();
            if let Err(f) = self.call_node(idx, member, |_| {}, PendingKind::Part { agg }) {
                let e = &f.0;
                let failure = (
                    e.errorname().to_string(),
                    format!("node '{name}': {}", e.description()),
                );
                self.aggregate_part(agg, None, Some(failure));
            }
        }
        // The extra count keeps the aggregate open until every call was sent.
        self.aggregate_part(agg, None, None);
        None
    }

    fn aggregate_part(
        &mut self,
        agg: u64,
        part: Option<(String, Message)>,
        failure: Option<(String, String)>,
    ) {
        let Some(a) = self.aggregates.get_mut(&agg) else {
            return;
        };
        if let Some(p) = part {
            a.parts.push(p);
        }
        if let Some(f) = failure {
            a.failure.get_or_insert(f);
        }
        a.remaining = a.remaining.saturating_sub(1);
        if a.remaining > 0 {
            return;
        }
        let Some(a) = self.aggregates.remove(&agg) else {
            return;
        };
        let Some(mut ctx) = a.ctx else {
            return;
        };
        let result = match a.failure {
            Some(f) => Err(f),
            None => fan_out_reply(a.kind, a.parts, ctx.message())
                .map_err(|e| (error::PROTOCOL.to_string(), e)),
        };
        match result {
            Ok(reply) => {
                if !ctx.message().get_no_reply() {
                    self.outbox.push(reply);
                }
            }
            Err((name, text)) => {
                ctx.reply::<()>(Err(MethodErr::from((name, text))));
                let sink = VecSender(RefCell::new(Vec::new()));
                let _ = ctx.flush_messages(&sink);
                self.outbox.extend(sink.0.into_inner());
            }
        }
    }

    // ---- messages from agents ------------------------------------------------------------

    /// Everything a registered agent sends after Register.
    pub fn on_frame(&mut self, link: LinkId, mut msg: Message) {
        let Some(idx) = self.links.get(&link).copied() else {
            return;
        };
        self.touch(idx);
        let node_name = self
            .nodes
            .get(idx)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        match msg.msg_type() {
            MessageType::MethodReturn | MessageType::Error => {
                let serial = msg.get_reply_serial().unwrap_or(0);
                let pending = self
                    .nodes
                    .get_mut(idx)
                    .and_then(|n| n.online.as_mut())
                    .and_then(|o| o.pending.remove(&serial));
                match pending {
                    Some(p) => self.complete(idx, p, msg),
                    None => log_debug!(
                        "Node '{node_name}' answered serial {serial}, which has no call waiting (late or never sent)"
                    ),
                }
            }
            MessageType::Signal => self.on_signal(idx, &node_name, &msg),
            MessageType::MethodCall => {
                let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
                let text = if member == "Register" {
                    "already registered on this connection".to_string()
                } else {
                    format!("agents may not call '{member}'")
                };
                log_warn!("Node '{node_name}': {text}");
                if let Some(reply) = error_reply(&msg, error::PROTOCOL, &text) {
                    if let Some(online) = self.nodes.get_mut(idx).and_then(|n| n.online.as_mut()) {
                        let _ = online.link.send(reply, online.serials.next_serial());
                    }
                }
                let _ = msg.as_result();
            }
        }
    }

    fn on_signal(&mut self, idx: usize, node_name: &str, msg: &Message) {
        let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
        match member.as_str() {
            // [impl->req~link.heartbeat~1]
            "Heartbeat" => {
                // Echo, so the agent can tell a silent manager from a quiet one.
                if let Some(online) = self.nodes.get_mut(idx).and_then(|n| n.online.as_mut()) {
                    if let Some(echo) = Self::signal(
                        protocol::INTERNAL_MANAGER_PATH,
                        protocol::INTERNAL_MANAGER_IFACE,
                        "Heartbeat",
                    ) {
                        let _ = online.link.send(echo, online.serials.next_serial());
                    }
                }
            }
            "JobDone" => match msg.read2::<u32, &str>() {
                Ok((id, result)) => {
                    if self.jobs.get(&id).is_some_and(|j| j.node == idx) {
                        self.finish_job(id, result);
                    } else {
                        log_debug!("Node '{node_name}' reported unknown job {id}");
                    }
                }
                Err(e) => log_warn!("Node '{node_name}' sent a malformed JobDone: {e}"),
            },
            "JobStateChanged" => match msg.read2::<u32, &str>() {
                Ok((id, state)) => {
                    if let Some(job) = self.jobs.get_mut(&id).filter(|j| j.node == idx) {
                        job.state = state.to_string();
                        let sig = Self::properties_changed(
                            &job_path(id),
                            protocol::JOB_IFACE,
                            "State",
                            state.to_string(),
                        );
                        self.emit(sig);
                    }
                }
                Err(e) => log_warn!("Node '{node_name}' sent a malformed JobStateChanged: {e}"),
            },
            "UnitNew" | "UnitRemoved" | "UnitStateChanged" | "UnitPropertiesChanged" => {
                let mut items = msg.get_items();
                let unit = match items.first() {
                    Some(MessageItem::Str(u)) => u.clone(),
                    _ => {
                        log_warn!("Node '{node_name}' sent a malformed {member}");
                        return;
                    }
                };
                let expected = match member.as_str() {
                    "UnitNew" => "ss",
                    "UnitRemoved" => "s",
                    "UnitStateChanged" => "ssss",
                    _ => "ssa{sv}",
                };
                if signature_of(msg) != expected {
                    log_warn!("Node '{node_name}' sent a malformed {member}");
                    return;
                }
                if member == "UnitRemoved" {
                    items.push(MessageItem::Str("real".into()));
                }
                if member == "UnitStateChanged" {
                    self.proxy_target_changed(node_name, &items);
                }
                self.route_unit_event(node_name, &unit, &member, items);
            }
            "ProxyNew" => self.on_proxy_new(node_name, msg),
            "ProxyRemoved" => self.on_proxy_removed(node_name, msg),
            "JobMetrics" => {
                if !self.metrics {
                    return;
                }
                let Ok((id, unit, method, micros, prop)) = msg.read5::<u32, &str, &str, u64, u64>()
                else {
                    log_warn!("Node '{node_name}' sent a malformed JobMetrics");
                    return;
                };
                if let Some(job) = self.jobs.get_mut(&id).filter(|j| j.node == idx) {
                    job.start_propagation_us = prop;
                }
                let sig = Self::signal(METRICS_PATH, METRICS_IFACE, "AgentJobMetrics")
                    .map(|m| m.append3(node_name, unit, method).append1(micros));
                self.emit(sig);
            }
            other => log_debug!("Node '{node_name}' sent signal '{other}', ignored"),
        }
    }

    fn complete(&mut self, idx: usize, p: Pending, answer: Message) {
        match p.kind {
            PendingKind::Relay(ctx) => {
                let r = relay_answer(ctx.message(), answer);
                self.emit(r);
            }
            PendingKind::JobStart { ctx, job } => {
                if answer.msg_type() == MessageType::Error {
                    if let Some(j) = self.jobs.get(&job) {
                        let node = self
                            .nodes
                            .get(j.node)
                            .map(|n| n.name.as_str())
                            .unwrap_or("?");
                        let why = answer.get1::<&str>().unwrap_or("");
                        // [impl->req~log.events~1]
                        log_fields!(
                            Info,
                            [("NODE", node), ("UNIT", j.unit.as_str())],
                            "Job {job} {} of '{}' on node '{node}' refused: {why}",
                            j.job_type,
                            j.unit
                        );
                    }
                    self.drop_job(job);
                    let r = relay_answer(ctx.message(), answer);
                    self.emit(r);
                    return;
                }
                let early = match self.jobs.get_mut(&job) {
                    Some(j) => {
                        j.started = true;
                        j.early_result.take()
                    }
                    None => None,
                };
                let path = job_path(job);
                let Ok(opath) = Path::new(path) else {
                    return;
                };
                let sig = Self::signal(protocol::MANAGER_PATH, protocol::MANAGER_IFACE, "JobNew")
                    .map(|m| m.append2(job, opath.clone()));
                self.emit(sig);
                if !ctx.message().get_no_reply() {
                    let reply = ctx.message().method_return().append1(opath);
                    self.outbox.push(reply);
                }
                if let Some(result) = early {
                    self.finish_job(job, &result);
                }
            }
            PendingKind::Part { agg } => {
                let name = self
                    .nodes
                    .get(idx)
                    .map(|n| n.name.clone())
                    .unwrap_or_default();
                let mut answer = answer;
                if let Err(e) = answer.as_result() {
                    let failure = (
                        e.name().unwrap_or(error::PROTOCOL).to_string(),
                        format!("node '{name}': {}", e.message().unwrap_or("call failed")),
                    );
                    self.aggregate_part(agg, None, Some(failure));
                    return;
                }
                self.aggregate_part(agg, Some((name, answer)), None);
            }
            PendingKind::StartDep { target, unit } => {
                let mut answer = answer;
                match answer.as_result() {
                    Ok(_) => self.start_dep_done(&target, &unit),
                    Err(e) => {
                        let name = e.name().unwrap_or(error::PROTOCOL).to_string();
                        let text = e.message().unwrap_or("StartDep failed").to_string();
                        self.start_dep_failed(&target, &unit, &name, &text);
                    }
                }
            }
            PendingKind::Internal => {
                let mut answer = answer;
                if let Err(e) = answer.as_result() {
                    let node = self.nodes.get(idx).map(|n| n.name.as_str()).unwrap_or("?");
                    log_warn!(
                        "{} failed on node '{node}': {}",
                        p.member,
                        e.message().unwrap_or("")
                    );
                }
            }
        }
    }

    /// No job and no call in flight.
    pub fn is_idle(&self) -> bool {
        self.jobs.is_empty()
            && self
                .nodes
                .iter()
                .filter_map(|n| n.online.as_ref())
                .all(|o| o.pending.is_empty())
    }

    /// Ends everything on shutdown: pending calls fail, jobs end `cancelled`.
    pub fn shutdown(&mut self) {
        for idx in 0..self.nodes.len() {
            self.node_offline(idx, "manager shutting down");
        }
    }

    /// Remaining time until the earliest deadline, for the core's poll timeout.
    pub fn next_deadline(&self, now: Instant) -> Option<Duration> {
        self.nodes
            .iter()
            .filter_map(|n| n.online.as_ref())
            .flat_map(|o| o.pending.values())
            .map(|p| p.deadline.saturating_duration_since(now))
            .min()
    }
}

/// Builds the combined answer of a fan-out call from each node's reply.
/// Decodes each node's part with its static type and appends the map to the reply directly
/// (9,000 unit rows go through no generic `MessageItem` tree).
fn fan_out_reply(
    kind: FanOut,
    parts: Vec<(String, Message)>,
    call: &Message,
) -> Result<Message, String> {
    fn collect<T: Arg + for<'a> dbus::arg::Get<'a>>(
        parts: Vec<(String, Message)>,
    ) -> Result<HashMap<String, T>, String> {
        parts
            .into_iter()
            .map(|(node, msg)| {
                msg.read1::<T>()
                    .map(|v| (node.clone(), v))
                    .map_err(|e| format!("node '{node}' sent a malformed answer: {e}"))
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

/// Collects messages that crossroads' `Context` would send, so they go through the outbox.
struct VecSender(RefCell<Vec<Message>>);

impl dbus::channel::Sender for VecSender {
    fn send(&self, msg: Message) -> Result<u32, ()> {
        self.0.borrow_mut().push(msg);
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hirte_common::config::ManagerConfig;

    fn manager() -> Manager {
        let cfg = ManagerConfig {
            allowed_node_names: vec!["n1".into()],
            ..ManagerConfig::default()
        };
        Manager::new(cfg)
    }

    fn call(member: &str) -> Context {
        let mut m = Message::new_method_call(
            protocol::MANAGER_BUS_NAME,
            "/org/containers/hirte/node/n1",
            protocol::NODE_IFACE,
            member,
        )
        .unwrap();
        m.set_serial(7);
        m.set_sender(Some(dbus::strings::BusName::new(":1.5").unwrap()));
        Context::new(m).unwrap()
    }

    fn error_of(ctx: Option<Context>) -> String {
        let mut ctx = ctx.expect("an immediate answer");
        let sink = VecSender(RefCell::new(Vec::new()));
        ctx.flush_messages(&sink).unwrap();
        let mut msgs = sink.0.into_inner();
        let mut reply = msgs.remove(0);
        reply.as_result().unwrap_err().name().unwrap().to_string()
    }

    // [utest->req~bounds.jobs~1]
    #[test]
    fn job_table_is_bounded() {
        let mut m = manager();
        for id in 1..=MAX_JOBS as u32 {
            m.jobs.insert(
                id,
                Job {
                    id,
                    node: 0,
                    unit: "u".into(),
                    job_type: "start",
                    state: "waiting".into(),
                    started: true,
                    created: Instant::now(),
                    start_propagation_us: 0,
                    early_result: None,
                },
            );
        }
        let ctx = m.start_job(
            0,
            "StartUnit",
            "start",
            "x.service".into(),
            |_, _| {},
            call("StartUnit"),
        );
        assert_eq!(error_of(ctx), error::BUSY);
        assert_eq!(m.jobs.len(), MAX_JOBS);
    }

    #[test]
    fn job_ids_wrap_to_1_and_skip_ids_in_use() {
        let mut m = manager();
        m.next_job = u32::MAX - 1;
        assert_eq!(m.allocate_job_id(), u32::MAX);
        m.jobs.insert(
            1,
            Job {
                id: 1,
                node: 0,
                unit: "u".into(),
                job_type: "start",
                state: "waiting".into(),
                started: true,
                created: Instant::now(),
                start_propagation_us: 0,
                early_result: None,
            },
        );
        assert_eq!(m.allocate_job_id(), 2);
    }

    // [utest->req~api.node~1]
    #[test]
    fn calls_to_an_offline_node_fail_offline_and_leave_no_job() {
        let mut m = manager();
        let ctx = m.start_job(
            0,
            "StartUnit",
            "start",
            "x.service".into(),
            |_, _| {},
            call("StartUnit"),
        );
        assert_eq!(error_of(ctx), error::OFFLINE);
        assert!(m.jobs.is_empty());
        let ctx = m.relay(0, "ListUnits", |_| {}, call("ListUnits"));
        assert_eq!(error_of(ctx), error::OFFLINE);
    }

    // [utest->req~bounds.queues~1]
    #[test]
    fn a_call_to_a_node_whose_link_queue_is_full_gets_busy() {
        use hirte_common::bounds::LINK_OUTBOUND_DEPTH;
        let mut m = manager();
        let h = LinkHandle::new(1, hirte_common::stream::Peer::Unix).unwrap();
        let mut reg = hirte_common::handshake::register_call("n1").unwrap();
        reg.set_serial(1);
        m.on_register(h.clone(), "n1", &reg);
        // The connection thread is stuck writing: nothing leaves the queue.
        let mut serial = 100;
        while h.queue.len() < LINK_OUTBOUND_DEPTH {
            let sig = Message::new_signal("/a", "a.b", "C").unwrap();
            h.send(sig, serial).unwrap();
            serial += 1;
        }
        let mut ctx = m
            .relay(0, "ListUnits", |_| {}, call("ListUnits"))
            .expect("an immediate answer");
        let sink = VecSender(RefCell::new(Vec::new()));
        ctx.flush_messages(&sink).unwrap();
        let mut reply = sink.0.into_inner().remove(0);
        let err = reply.as_result().unwrap_err();
        assert_eq!(err.name(), Some(error::BUSY));
        assert_eq!(
            err.message(),
            Some("link to node 'n1' is congested; try again later")
        );
        // Nothing was left waiting for an answer that cannot come.
        assert!(m.is_idle());
    }

    // [utest->req~manager.status~1]
    #[test]
    fn status_without_nodes_online_is_down() {
        let m = manager();
        assert_eq!(m.status(), "down");
        assert!(m.is_idle());
    }
}
