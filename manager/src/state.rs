//! The manager's model: nodes, their links and in-flight calls, jobs. Owned by the core thread
//! (behind a mutex only because D-Bus handler closures must be `Send`); nothing here does I/O.
//! Effects are collected in `outbox` (bus messages) and `object_ops` (objects to add/remove),
//! which the core applies after each step.

use crate::events::{LinkHandle, LinkId};
use dbus::arg::{PropMap, RefArg, Variant};
use dbus::message::MessageType;
use dbus::strings::ErrorName;
use dbus::{Message, Path};
use dbus_crossroads::{Context, MethodErr};
use hirte_common::bounds::{MAX_JOBS, MAX_PENDING_CALLS_PER_NODE};
use hirte_common::config::ManagerConfig;
use hirte_common::frame::SerialCounter;
use hirte_common::names::escape_path_element;
use hirte_common::protocol::{self, error};
use hirte_common::{log_debug, log_fields, log_warn};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

pub type Shared = Arc<Mutex<Manager>>;

/// Locks the model. A panic while it was held is logged by the core; the data is still
/// consistent at message granularity, so we keep serving rather than stop the manager.
pub fn lock(m: &Shared) -> MutexGuard<'_, Manager> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One row of systemd's `ListUnits`.
pub type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    Path<'static>,
    u32,
    String,
    Path<'static>,
);

/// What to do with an agent's answer.
pub enum PendingKind {
    /// Relay the answer verbatim to the D-Bus caller.
    Relay(Context),
    /// A unit job was requested: on success the job becomes public.
    JobStart { ctx: Context, job: u32 },
    /// One node's part of a call that spans all nodes.
    Part { agg: u64 },
}

pub struct Pending {
    member: &'static str,
    deadline: Instant,
    kind: PendingKind,
}

/// A registered, live link to a node's agent.
pub struct Online {
    pub link: Arc<LinkHandle>,
    serials: SerialCounter,
    pending: HashMap<u32, Pending>,
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
    /// A result that arrived before the agent's acceptance was processed.
    pub early_result: Option<String>,
}

/// Spans-all-nodes calls (`Manager.ListUnits`): parts are collected, then one reply.
pub struct Aggregate {
    ctx: Context,
    remaining: usize,
    units: HashMap<String, Vec<UnitRow>>,
    failure: Option<String>,
}

/// Changes to the exported object tree, applied by the core (which owns `Crossroads`).
pub enum ObjectOp {
    AddJob(u32),
    RemoveJob(u32),
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
}

pub fn job_path(id: u32) -> String {
    format!("{}/{id}", protocol::JOB_PATH_PREFIX)
}

pub fn node_path(name: &str) -> String {
    format!("{}/{}", protocol::NODE_PATH_PREFIX, escape_path_element(name))
}

fn now_realtime_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn now_monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000
        })
        .unwrap_or(0)
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
    let mut reply = call.method_return();
    reply.append_items(&answer.get_items());
    Some(reply)
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

    fn signal(path: &str, iface: &str, member: &str) -> Option<Message> {
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
            log_fields!(Info, [("STATUS", status)], "Manager status is now '{status}'");
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
                        self.nodes.get(idx).map(|n| n.peer_ip.as_str()).unwrap_or("")
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
            if let Some(mut reply) = error_reply(call, err, &text) {
                reply.set_serial(1);
                let _ = handle.queue.try_push(reply);
            }
            handle.request_close(&text);
            return;
        }
        let Some(idx) = self.node_index(name) else {
            return;
        };
        let mut serials = SerialCounter::default();
        let mut reply = call.method_return();
        reply.set_serial(serials.next_serial());
        if handle.queue.try_push(reply).is_err() {
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
            });
        }
        self.touch(idx);
        log_fields!(
            Info,
            [("NODE", name)],
            "Agent '{name}' connected from {peer}"
        );
        self.announce_node_state(idx);
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
            PendingKind::Part { agg } => self.aggregate_part(agg, None, Some(text.to_string())),
        }
    }

    // ---- calls to agents -----------------------------------------------------------------

    /// Sends one call to a node's agent and remembers what to do with the answer.
    fn call_node(
        &mut self,
        idx: usize,
        member: &'static str,
        fill: impl FnOnce(&mut Message),
        kind: PendingKind,
    ) -> Result<(), (MethodErr, PendingKind)> {
        let deadline = Instant::now() + self.cfg.agent_call_timeout;
        let Some(node) = self.nodes.get_mut(idx) else {
            return Err((merr(error::NODE_NOT_FOUND, "no such node"), kind));
        };
        let Some(online) = node.online.as_mut() else {
            let text = format!("node '{}' is offline", node.name);
            return Err((merr(error::OFFLINE, text), kind));
        };
        // [impl->req~bounds.pending-calls~1]
        if online.pending.len() >= MAX_PENDING_CALLS_PER_NODE {
            let text = format!(
                "node '{}' has {MAX_PENDING_CALLS_PER_NODE} calls in flight; try again later",
                node.name
            );
            return Err((merr(error::BUSY, text), kind));
        }
        let Ok(mut msg) = Message::new_method_call(
            protocol::LINK_PEER,
            protocol::INTERNAL_AGENT_PATH,
            protocol::INTERNAL_AGENT_IFACE,
            member,
        ) else {
            return Err((merr(error::INVALID_ARGS, "bad member"), kind));
        };
        fill(&mut msg);
        let serial = online.serials.next_serial();
        msg.set_serial(serial);
        if online.link.queue.try_push(msg).is_err() {
            let text = format!("link to node '{}' is congested; try again later", node.name);
            log_warn!("{text}");
            return Err((merr(error::BUSY, text), kind));
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

    /// Forwards a Node method to the agent; the agent's answer is relayed as is.
    // [impl->req~manager.node-relay~1]
    pub fn relay(
        &mut self,
        idx: usize,
        member: &'static str,
        fill: impl FnOnce(&mut Message),
        ctx: Context,
    ) -> Option<Context> {
        match self.call_node(idx, member, fill, PendingKind::Relay(ctx)) {
            Ok(()) => None,
            Err((e, PendingKind::Relay(mut ctx))) => {
                ctx.reply::<()>(Err(e));
                Some(ctx)
            }
            Err(_) => None,
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
        mode: String,
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
                unit: unit.clone(),
                job_type,
                state: "waiting".to_string(),
                started: false,
                early_result: None,
            },
        );
        let fill = |m: &mut Message| m.append_all((unit, mode, id));
        match self.call_node(idx, member, fill, PendingKind::JobStart { ctx, job: id }) {
            Ok(()) => {
                self.object_ops.push(ObjectOp::AddJob(id));
                None
            }
            Err((e, PendingKind::JobStart { mut ctx, .. })) => {
                self.jobs.remove(&id);
                ctx.reply::<()>(Err(e));
                Some(ctx)
            }
            Err(_) => None,
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
        let sig = Self::signal(protocol::MANAGER_PATH, protocol::MANAGER_IFACE, "JobRemoved")
            .and_then(|m| {
                let path = Path::new(job_path(id)).ok()?;
                let mut m = m.append3(id, path, node);
                m.append_all((job.unit.clone(), result.to_string()));
                Some(m)
            });
        self.emit(sig);
        self.object_ops.push(ObjectOp::RemoveJob(id));
    }

    // ---- spanning calls ------------------------------------------------------------------

    /// `Manager.ListUnits`: asks every online node, answers once all did.
    // [impl->req~manager.list-units~1]
    pub fn list_all_units(&mut self, mut ctx: Context) -> Option<Context> {
        let online: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes.get(*i).is_some_and(|n| n.online.is_some()))
            .collect();
        if online.is_empty() {
            ctx.reply(Ok((HashMap::<String, Vec<UnitRow>>::new(),)));
            return Some(ctx);
        }
        self.next_agg += 1;
        let agg = self.next_agg;
        self.aggregates.insert(
            agg,
            Aggregate {
                ctx,
                remaining: online.len(),
                units: HashMap::new(),
                failure: None,
            },
        );
        for idx in online {
            let name = self
                .nodes
                .get(idx)
                .map(|n| n.name.clone())
                .unwrap_or_default();
            if let Err((e, _)) = self.call_node(idx, "ListUnits", |_| {}, PendingKind::Part { agg })
            {
                self.aggregate_part(agg, None, Some(format!("node '{name}': {e}")));
            }
        }
        None
    }

    fn aggregate_part(&mut self, agg: u64, rows: Option<(String, Vec<UnitRow>)>, failure: Option<String>) {
        let Some(a) = self.aggregates.get_mut(&agg) else {
            return;
        };
        if let Some((node, rows)) = rows {
            a.units.insert(node, rows);
        }
        if let Some(f) = failure {
            a.failure.get_or_insert(f);
        }
        a.remaining = a.remaining.saturating_sub(1);
        if a.remaining > 0 {
            return;
        }
        let Some(mut a) = self.aggregates.remove(&agg) else {
            return;
        };
        match a.failure {
            Some(f) => {
                a.ctx.reply::<()>(Err(merr(error::TIMEOUT, f)));
            }
            None => {
                a.ctx.reply(Ok((a.units,)));
            }
        }
        let mut ctx = a.ctx;
        let sink = VecSender(RefCell::new(Vec::new()));
        let _ = ctx.flush_messages(&sink);
        self.outbox.extend(sink.0.into_inner());
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
                if let Some(mut reply) = error_reply(&msg, error::PROTOCOL, &text) {
                    if let Some(online) = self.nodes.get_mut(idx).and_then(|n| n.online.as_mut()) {
                        reply.set_serial(online.serials.next_serial());
                        let _ = online.link.queue.try_push(reply);
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
                    if let Some(mut echo) = Self::signal(
                        protocol::INTERNAL_MANAGER_PATH,
                        protocol::INTERNAL_MANAGER_IFACE,
                        "Heartbeat",
                    ) {
                        echo.set_serial(online.serials.next_serial());
                        let _ = online.link.queue.try_push(echo);
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
                    let text = format!(
                        "node '{name}': {}",
                        e.message().unwrap_or("ListUnits failed")
                    );
                    self.aggregate_part(agg, None, Some(text));
                    return;
                }
                match answer.read1::<Vec<UnitRow>>() {
                    Ok(rows) => self.aggregate_part(agg, Some((name, rows)), None),
                    Err(e) => self.aggregate_part(
                        agg,
                        None,
                        Some(format!("node '{name}' sent a malformed unit list: {e}")),
                    ),
                }
            }
        }
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

/// Collects messages that crossroads' `Context` would send, so they go through the outbox.
struct VecSender(RefCell<Vec<Message>>);

impl dbus::channel::Sender for VecSender {
    fn send(&self, msg: Message) -> Result<u32, ()> {
        self.0.borrow_mut().push(msg);
        Ok(0)
    }
}
