//! The manager's model: the one place where the node table, the calls in flight, the jobs,
//! the fan-outs, the monitors and the proxies meet. Owned by the core thread (behind a mutex
//! only because D-Bus handler closures must be `Send`); nothing here does I/O. A step's
//! effects go to the outbox, which the core applies after it.

use crate::agent_msg::{self, AgentSignal};
use crate::agents::Agents;
use crate::calls::{Call, CallError};
use crate::dependencies::{DepAction, Dependencies, TargetCheck};
use crate::events::{LinkHandle, LinkId};
use crate::fanout::{FanOut, FanOuts, Part};
use crate::jobs::{self, JobTable};
use crate::monitor::{MonitorError, Monitors, WILDCARD};
use crate::nodes::NodeTable;
use crate::objects::{job_path, properties_changed, relay_answer, ObjectOp, Outbox};
use dbus::message::MessageType;
use dbus::Message;
use dbus_crossroads::{Context, MethodErr};
use hirte_common::bounds::DEP_START_TIMEOUT;
use hirte_common::config::ManagerConfig;
use hirte_common::protocol::{self, error};
use hirte_common::{log_debug, log_fields, log_warn};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How soon subscriptions a node's full call window held back are tried again.
const SUBSCRIPTION_RETRY: Duration = hirte_common::bounds::CORE_TICK;

pub type Shared = Arc<Mutex<Manager>>;

/// Locks the model. Only the core thread takes it, and only inside `contain`, which clears a
/// lock a panic poisoned (with a logged note) after failing the calls the step held.
pub fn lock(m: &Shared) -> MutexGuard<'_, Manager> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

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

/// A call that could not be sent: why, and what was to be done with its answer.
type CallFailure = Box<(CallError, PendingKind)>;

pub struct Manager {
    cfg: ManagerConfig,
    agents: Agents<PendingKind>,
    jobs: JobTable,
    fan_outs: FanOuts,
    monitors: Monitors,
    deps: Dependencies,
    out: Outbox,
    metrics: bool,
    /// Set on SIGTERM: new calls are refused while jobs in flight finish.
    draining: bool,
    /// What the call whose answer is being handled is owed if that panics (`rescue.rs`).
    in_hand: Option<rescue::Rescue>,
}

impl Manager {
    pub fn new(cfg: ManagerConfig) -> Self {
        Manager {
            agents: Agents::new(&cfg.allowed_node_names, cfg.agent_call_timeout),
            cfg,
            jobs: JobTable::default(),
            fan_outs: FanOuts::default(),
            monitors: Monitors::default(),
            deps: Dependencies::default(),
            out: Outbox::default(),
            metrics: false,
            draining: false,
            in_hand: None,
        }
    }

    // ---- what the API and the core read --------------------------------------------------

    pub fn nodes(&self) -> &NodeTable {
        self.agents.nodes()
    }

    pub fn jobs(&self) -> &JobTable {
        &self.jobs
    }

    pub fn monitors(&self) -> &Monitors {
        &self.monitors
    }

    pub fn allow_exec(&self) -> bool {
        self.cfg.allow_exec
    }

    pub fn agent_call_timeout(&self) -> Duration {
        self.agents.call_timeout()
    }

    /// The effects of the steps so far, for the core: (object changes, messages).
    pub fn take_effects(&mut self) -> (Vec<ObjectOp>, Vec<Message>) {
        self.out.take()
    }

    /// No job and no call in flight.
    pub fn is_idle(&self) -> bool {
        self.jobs.is_empty() && self.agents.is_quiet()
    }

    /// Remaining time until the earliest deadline, for the core's poll timeout: a call's,
    /// a node's silence, or the retry of subscriptions a full call window held back.
    // [impl->req~manager.idle-no-wakeups~1]
    pub fn next_deadline(&self, now: Instant) -> Option<Duration> {
        let due = self
            .agents
            .next_deadline(now, self.cfg.node_heartbeat_threshold);
        if !self.agents.any_unsynced() {
            due
        } else {
            Some(due.map_or(SUBSCRIPTION_RETRY, |d| d.min(SUBSCRIPTION_RETRY)))
        }
    }

    /// SIGTERM: new calls are refused from now on.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    /// Ends everything on shutdown: pending calls fail, jobs end `cancelled`.
    pub fn shutdown(&mut self) {
        for idx in 0..self.nodes().len() {
            self.node_offline(idx, "manager shutting down");
        }
    }

    // ---- registration and liveness -------------------------------------------------------

    /// Decides on a Register from a new link.
    // [impl->req~manager.register~1]
    pub fn on_register(&mut self, handle: Arc<LinkHandle>, name: &str, call: &Message) {
        let peer = handle.peer;
        let idx = match self.agents.register(handle, name, call) {
            Ok(Some(idx)) => idx,
            Ok(None) => return,
            Err(e) => return inbound::log_refused(name, peer, &e),
        };
        log_fields!(
            Info,
            [("NODE", name)],
            "Agent '{name}' connected from {peer}"
        );
        self.agents.announce(idx, &mut self.out);
        self.sync_agent_subscriptions(idx);
        let starts = self.deps.target_back(name);
        self.run_deps(starts);
        if self.metrics {
            let _ = self.call_node(idx, "EnableMetrics", |_| {}, PendingKind::Internal);
        }
    }

    /// A registered link ended (the connection thread saw it go).
    pub fn on_link_closed(&mut self, link: LinkId, reason: &str) {
        if let Some(idx) = self.nodes().by_link(link) {
            self.node_offline(idx, reason);
        }
    }

    /// Marks a node offline: its calls fail with `Offline`, its jobs end `cancelled`.
    // [impl->req~manager.offline-cleanup~1]
    pub fn node_offline(&mut self, idx: usize, reason: &str) {
        let Some(calls) = self.agents.disconnect(idx, reason) else {
            return;
        };
        let name = self.nodes().name(idx);
        log_fields!(
            Info,
            [("NODE", name.as_str())],
            "Agent '{name}' disconnected: {reason}"
        );
        let text = format!("node '{name}' went offline: {reason}");
        for call in calls {
            self.fail_pending(call, error::OFFLINE, &text);
        }
        for id in self.jobs.of_node(idx) {
            self.finish_job(id, protocol::JOB_RESULT_CANCELLED);
        }
        self.agents.announce(idx, &mut self.out);
        self.monitors.node_gone(&name, &mut self.out);
        let releases = self.deps.requester_gone(&name);
        self.run_deps(releases);
    }

    /// Called every core tick: heartbeats, subscriptions to retry, call deadlines.
    // [impl->req~manager.heartbeat-threshold~1]
    pub fn tick(&mut self, now: Instant) {
        for (idx, reason) in self.agents.silent(now, self.cfg.node_heartbeat_threshold) {
            self.node_offline(idx, &reason);
        }
        for idx in self.agents.unsynced() {
            self.sync_agent_subscriptions(idx);
        }
        for (call, text) in self.agents.expired(now) {
            self.fail_pending(call, error::TIMEOUT, &text);
        }
    }

    // ---- monitors ------------------------------------------------------------------------

    /// Brings what a node's agent watches in line with what the monitors and proxies want.
    // [impl->req~manager.monitors~1]
    fn sync_agent_subscriptions(&mut self, idx: usize) {
        let Some(node) = self.nodes().get(idx) else {
            return;
        };
        let mut wanted = self.monitors.wanted_units(node.name());
        if !wanted.contains(WILDCARD) {
            wanted.extend(self.deps.watched_units(node.name()));
        }
        self.agents
            .sync_subscriptions(idx, wanted, || PendingKind::Internal);
    }

    fn sync_all_subscriptions(&mut self) {
        for idx in 0..self.nodes().len() {
            self.sync_agent_subscriptions(idx);
        }
    }

    /// Changes the monitors (`f` may queue their signals); the agents' watches follow.
    pub fn change_monitors<T>(
        &mut self,
        f: impl FnOnce(&mut Monitors, &mut Outbox) -> Result<T, MonitorError>,
    ) -> Result<T, MonitorError> {
        let result = f(&mut self.monitors, &mut self.out)?;
        self.sync_all_subscriptions();
        Ok(result)
    }

    /// Closes a monitor: its subscriptions end, its peers are told.
    pub fn close_monitor(&mut self, id: u32, reason: &str) {
        if self.monitors.close(id, reason, &mut self.out) {
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

    // ---- calls to agents -----------------------------------------------------------------

    /// Sends one call to a node's agent and remembers what to do with the answer.
    fn call_node(
        &mut self,
        idx: usize,
        member: &'static str,
        fill: impl FnOnce(&mut Message),
        kind: PendingKind,
    ) -> Result<(), CallFailure> {
        let timeout = self.agents.call_timeout();
        self.call_node_within(idx, member, fill, kind, timeout)
    }

    fn call_node_within(
        &mut self,
        idx: usize,
        member: &'static str,
        fill: impl FnOnce(&mut Message),
        kind: PendingKind,
        timeout: Duration,
    ) -> Result<(), CallFailure> {
        if self.draining && !matches!(kind, PendingKind::Internal) {
            return Err(Box::new((CallError::ShuttingDown, kind)));
        }
        self.agents.call(idx, member, fill, kind, timeout)
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
        let timeout = self.agents.call_timeout();
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
                    ctx.reply::<()>(Err(e.to_method_err()));
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
        let id = match self.jobs.create(idx, unit, job_type) {
            Ok(id) => id,
            Err(e) => {
                ctx.reply::<()>(Err(MethodErr::from((error::BUSY, e.to_string()))));
                return Some(ctx);
            }
        };
        let fill = |m: &mut Message| fill(m, id);
        match self.call_node(idx, member, fill, PendingKind::JobStart { ctx, job: id }) {
            Ok(()) => {
                self.out.object(ObjectOp::AddJob(id));
                None
            }
            Err(f) => match *f {
                (e, PendingKind::JobStart { mut ctx, .. }) => {
                    self.jobs.withdraw(id);
                    ctx.reply::<()>(Err(e.to_method_err()));
                    Some(ctx)
                }
                _ => None,
            },
        }
    }

    fn finish_job(&mut self, id: u32, result: &str) {
        if let Some(job) = self.jobs.finish(id, result) {
            let node = self.nodes().name(job.node());
            jobs::announce_finished(&job, &node, result, self.metrics, &mut self.out);
        }
    }

    /// Sends `member` to every online node; answers the caller once all parts are in.
    // [impl->req~manager.list-units~1]
    pub fn fan_out(
        &mut self,
        member: &'static str,
        kind: FanOut,
        ctx: Option<Context>,
    ) -> Option<Context> {
        let online = self.nodes().online();
        let agg = self.fan_outs.open(kind, ctx, online.len());
        for idx in online {
            if let Err(f) = self.call_node(idx, member, |_| {}, PendingKind::Part { agg }) {
                let e = &f.0;
                let part = Part::Failed {
                    name: e.error_name().to_string(),
                    text: format!("node '{}': {e}", self.nodes().name(idx)),
                };
                self.fan_outs.add(agg, part, &mut self.out);
            }
        }
        self.fan_outs.add(agg, Part::AllSent, &mut self.out);
        None
    }

    /// `EnableMetrics`/`DisableMetrics`: every node is told, the caller answered when all did.
    pub fn set_metrics(&mut self, member: &'static str, on: bool, ctx: Context) -> Option<Context> {
        self.metrics = on;
        self.fan_out(member, FanOut::Ack, Some(ctx))
    }

    // ---- proxies -------------------------------------------------------------------------

    /// Carries out what the proxies' bookkeeping decided, including what that leads to.
    fn run_deps(&mut self, actions: Vec<DepAction>) {
        let mut todo = VecDeque::from(actions);
        while let Some(action) = todo.pop_front() {
            match action {
                DepAction::Tell {
                    requester,
                    path,
                    member,
                    items,
                } => self.agents.tell_proxy(&requester, &path, member, &items),
                DepAction::Start { target, unit } => {
                    let Some(idx) = self.nodes().index(&target) else {
                        continue;
                    };
                    if !self.nodes().is_online(idx) {
                        // Waiting proxies wait: the anchor is started when the node registers.
                        continue;
                    }
                    let u = unit.clone();
                    let fill = |m: &mut Message| m.append_all((u,));
                    let kind = PendingKind::StartDep {
                        target: target.clone(),
                        unit: unit.clone(),
                    };
                    if let Err(f) =
                        self.call_node_within(idx, "StartDep", fill, kind, DEP_START_TIMEOUT)
                    {
                        let (e, text) = (f.0.error_name(), f.0.to_string());
                        todo.extend(self.deps.start_failed(&target, &unit, e, &text));
                    }
                }
                // Not when the manager itself is stopping: its restart must not stop services
                // (the requesting agents announce their proxies again to the next manager).
                DepAction::Release { target, unit } => {
                    let Some(idx) = self.nodes().index(&target) else {
                        continue;
                    };
                    if !self.draining && self.nodes().is_online(idx) {
                        let fill = |m: &mut Message| m.append_all((unit,));
                        let _ = self.call_node(idx, "StopDep", fill, PendingKind::Internal);
                    }
                    self.sync_agent_subscriptions(idx);
                }
                DepAction::Watch { target } => {
                    if let Some(idx) = self.nodes().index(&target) {
                        self.sync_agent_subscriptions(idx);
                    }
                }
            }
        }
    }

    // ---- messages from agents ------------------------------------------------------------

    /// Everything a registered agent sends after Register.
    // [impl->req~manager.node-isolation~1]
    pub fn on_frame(&mut self, link: LinkId, msg: Message) {
        let Some(idx) = self.agents.heard_from(link) else {
            return;
        };
        let node = self.nodes().name(idx);
        match msg.msg_type() {
            MessageType::MethodReturn | MessageType::Error => {
                self.on_answer(idx, msg, Manager::complete);
            }
            MessageType::Signal => match agent_msg::decode(msg) {
                Ok(sig) => self.on_signal(idx, &node, sig),
                // Metrics off: the agent's metrics are not looked at.
                Err(e) if e.member() == "JobMetrics" && !self.metrics => {}
                Err(e) => log_warn!("Node '{node}' {e}"),
            },
            MessageType::MethodCall => self.agents.refuse_call(idx, &msg),
        }
    }

    fn on_signal(&mut self, idx: usize, node: &str, sig: AgentSignal) {
        match sig {
            AgentSignal::Heartbeat => self.agents.echo_heartbeat(idx),
            AgentSignal::JobDone { id, result } => {
                if self.jobs.is_on(id, idx) {
                    self.finish_job(id, &result);
                } else {
                    log_debug!("Node '{node}' reported unknown job {id}");
                }
            }
            AgentSignal::JobStateChanged { id, state } => {
                if self.jobs.set_state(id, idx, &state) {
                    let path = job_path(id);
                    let sig = properties_changed(&path, protocol::JOB_IFACE, "State", state);
                    self.out.send(sig);
                }
            }
            AgentSignal::Unit(event) => {
                let stops = self.deps.unit_event(node, &event);
                self.run_deps(stops);
                self.monitors.route_event(node, &event, &mut self.out);
            }
            AgentSignal::ProxyNew { target, unit, path } => {
                let check = TargetCheck {
                    known: self.nodes().index(&target).is_some(),
                    allowed: self.cfg.may_depend_on(node, &target),
                };
                let actions = self.deps.proxy_new(node, &target, &unit, &path, check);
                self.run_deps(actions);
            }
            AgentSignal::ProxyRemoved { target, unit } => {
                let actions = self.deps.proxy_removed(node, &target, &unit);
                self.run_deps(actions);
            }
            AgentSignal::JobMetrics(metrics) => {
                if self.metrics {
                    self.jobs.agent_metrics(idx, node, metrics, &mut self.out);
                }
            }
            AgentSignal::Unknown(other) => {
                log_debug!("Node '{node}' sent signal '{other}', ignored")
            }
        }
    }

    /// An agent answered a call.
    fn complete(&mut self, idx: usize, call: Call<PendingKind>, mut answer: Message) {
        let member = call.member();
        match call.into_kind() {
            PendingKind::Relay(ctx) => self.out.send(relay_answer(ctx.message(), answer)),
            PendingKind::JobStart { ctx, job } => {
                if answer.msg_type() == MessageType::Error {
                    let node = self.jobs.get(job).map(|j| self.nodes().name(j.node()));
                    let node = node.unwrap_or_default();
                    self.jobs
                        .refused(job, &node, ctx.message(), answer, &mut self.out);
                } else if let Some(result) = self.jobs.accepted(job, ctx.message(), &mut self.out) {
                    self.finish_job(job, &result);
                }
            }
            PendingKind::Part { agg } => {
                let node = self.nodes().name(idx);
                let part = match answer.as_result() {
                    Err(e) => Part::Failed {
                        name: e.name().unwrap_or(error::PROTOCOL).to_string(),
                        text: format!("node '{node}': {}", e.message().unwrap_or("call failed")),
                    },
                    Ok(_) => Part::Answer { node, answer },
                };
                self.fan_outs.add(agg, part, &mut self.out);
            }
            PendingKind::StartDep { target, unit } => {
                let actions = match answer.as_result() {
                    Ok(_) => self.deps.started(&target, &unit),
                    Err(e) => {
                        let name = e.name().unwrap_or(error::PROTOCOL);
                        let text = e.message().unwrap_or("StartDep failed");
                        self.deps.start_failed(&target, &unit, name, text)
                    }
                };
                self.run_deps(actions);
            }
            PendingKind::Internal => {
                if let Err(e) = answer.as_result() {
                    log_warn!(
                        "{member} failed on node '{}': {}",
                        self.nodes().name(idx),
                        e.message().unwrap_or("")
                    );
                }
            }
        }
    }
}

// fuzz/: #[path] files find their children beside them, so they are named under cfg(fuzzing)
#[cfg_attr(fuzzing, path = "state/inbound.rs")]
mod inbound;
#[cfg_attr(fuzzing, path = "state/rescue.rs")]
mod rescue;
pub use rescue::{contain, internal_error};
#[cfg(test)]
mod tests;
