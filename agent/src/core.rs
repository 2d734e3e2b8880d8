//! The agent's core thread: owns the node's bus connection (systemd and the local API),
//! executes the manager's calls, and turns systemd's signals into the agent's signals.
//!
//! Single-threaded on purpose: a systemd call's reply and the signals that follow it arrive
//! in order on one connection, so `JobRemoved` is always handled after its job was recorded.

use crate::exec::{self, PendingExec, MAX_AGENT_EXECS};
use crate::link::FromLink;
use crate::local_api::LocalApi;
use crate::proxy::ProxyTable;
use crate::systemd::{self, CallError};
use crate::watch::{self, Watch};
use dbus::arg::messageitem::MessageItem;
use dbus::arg::PropMap;
use dbus::blocking::Connection;
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::{CORE_TICK, MAX_AGENT_JOBS, MAX_AGENT_SUBSCRIPTIONS, MAX_FRAME_SIZE};
use hirte_common::bus::{BusWriter, WRITE_RETRY};
use hirte_common::config::{self, AgentConfig};
use hirte_common::frame::SharedSerials;
use hirte_common::notify;
use hirte_common::protocol::{self, error, signature_of};
use hirte_common::queue::{BoundedQueue, PushError};
use hirte_common::sys::bus_fd;
use hirte_common::wait::poll_readable;
use hirte_common::{log, log_debug, log_error, log_fields, log_info, log_warn};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Manager methods that map one to one onto systemd Manager methods of the same name and
/// signature; the agent relays them unchanged.
const SYSTEMD_RELAYED: &[(&str, &str)] = &[
    ("ListUnits", ""),
    ("ListUnitFiles", ""),
    ("Reload", ""),
    ("EnableUnitFiles", "asbb"),
    ("DisableUnitFiles", "asb"),
    ("FreezeUnit", "s"),
    ("ThawUnit", "s"),
    ("KillUnit", "ssi"),
    ("SetUnitProperties", "sba(sv)"),
    ("GetUnitFileState", "s"),
    ("ResetFailed", ""),
    ("ResetFailedUnit", "s"),
    ("GetDefaultTarget", ""),
    ("SetDefaultTarget", "sb"),
];

pub(crate) enum JobKind {
    /// A job the manager created; reported back as `JobDone(id, result)`.
    Manager {
        id: u32,
        method: String,
        started: Instant,
    },
    /// A command run for `Exec`; answered when it ends.
    Exec(PendingExec),
    /// A `hirte-dep@` anchor started for `StartDep`; the call is answered when it ends.
    Dep { call: Message, unit: String },
}

struct AgentJob {
    unit: String,
    kind: JobKind,
    /// The manager session the job belongs to.
    session: u64,
    /// The job state last reported (`waiting`/`running`).
    state: Option<String>,
}

pub struct Core {
    pub sd: Connection,
    pub node: String,
    pub events: Arc<BoundedQueue<FromLink>>,
    pub outbound: Arc<BoundedQueue<Vec<u8>>>,
    pub shutdown: Arc<AtomicBool>,
    serials: Arc<SharedSerials>,
    session: Arc<AtomicU64>,
    /// Job results that found the send queue full; retried first on every turn so no
    /// `JobDone` is lost while the link lives (bounded: one per job).
    retry: VecDeque<Vec<u8>>,
    /// Keyed by (systemd job path, sequence): systemd merges a second request for a unit
    /// whose job is still queued into the same job, so one path can serve several
    /// manager jobs, and each of them must get its JobDone.
    jobs: BTreeMap<(String, u64), AgentJob>,
    job_seq: u64,
    watch: Watch,
    /// Last (active, sub) state reported per watched unit: systemd announces many property
    /// changes that leave the state as it was, and subscribers want each change once.
    last_state: HashMap<String, (String, String)>,
    metrics: bool,
    exec_seq: u64,
    local: LocalApi,
    /// Proxies this node's units asked for (`dependencies.rs`).
    pub(crate) proxies: ProxyTable<Message>,
    /// Whether the link to the manager is up (proxies are announced only then).
    pub(crate) linked: bool,
    /// Writes to the node's bus never block the core; a stalled bus counts as lost.
    bus_writer: BusWriter,
    pub reload: Arc<AtomicBool>,
    pub extra_config: Option<PathBuf>,
}

/// Why the core loop returned.
pub enum Exit {
    Shutdown,
    /// The node's bus (and with it systemd) went away; the caller reconnects.
    BusLost(String),
}

/// Subscribes to what the agent needs from systemd.
pub fn subscribe(sd: &Connection) -> Result<(), String> {
    for rule in [
        "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.systemd1.Manager'",
        "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',path_namespace='/org/freedesktop/systemd1'",
    ] {
        sd.add_match_no_cb(rule)
            .map_err(|e| format!("cannot add match: {}", e.message().unwrap_or("")))?;
    }
    let msg = systemd::manager_call("Subscribe").map_err(|e| e.message)?;
    systemd::call(sd, msg).map_err(|e| format!("Subscribe: {}", e.message))?;
    Ok(())
}

pub(crate) fn error_reply(call: &Message, name: &str, text: &str) -> Option<Message> {
    let name = dbus::strings::ErrorName::new(name.to_string())
        .or_else(|_| dbus::strings::ErrorName::new(error::PROTOCOL.to_string()))
        .ok()?;
    let text = std::ffi::CString::new(text.replace('\0', " ")).ok()?;
    Some(call.error(&name, &text))
}

/// Copies systemd's return values into the reply to the manager.
fn relay_reply(call: &Message, answer: &Message) -> Message {
    protocol::copy_answer(call.method_return(), answer)
}

/// The operation as the audit trail words it (`start`, `stop`, ...), so the guide's
/// `grep -E "start|stop|restart"` finds every job line.
fn job_verb(member: &str) -> &'static str {
    match member {
        "StartUnit" | "StartTransientUnit" => "start",
        "StopUnit" => "stop",
        "RestartUnit" => "restart",
        "ReloadUnit" => "reload",
        _ => "job",
    }
}

/// A call to answer later (`Exec`, `StartDep`, `CreateProxy`). A copy loses its serial;
/// the answer must name the original call's.
pub(crate) fn keep_call(msg: &Message) -> Result<Message, CallError> {
    let mut copy = msg.duplicate().map_err(bad_args)?;
    if let Some(serial) = msg.get_serial() {
        copy.set_serial(serial);
    }
    Ok(copy)
}

pub(crate) fn bad_args(e: impl std::fmt::Display) -> CallError {
    CallError::new(error::INVALID_ARGS, e.to_string())
}

impl Core {
    pub fn new(sd: Connection, node: String, link: &crate::link::Link, local: LocalApi) -> Self {
        Core {
            sd,
            node,
            events: link.events.clone(),
            outbound: link.outbound.clone(),
            shutdown: link.shutdown.clone(),
            serials: link.serials.clone(),
            session: link.session.clone(),
            retry: VecDeque::new(),
            jobs: BTreeMap::new(),
            job_seq: 0,
            watch: Watch::default(),
            last_state: HashMap::new(),
            metrics: false,
            exec_seq: 0,
            local,
            proxies: ProxyTable::default(),
            linked: false,
            bus_writer: BusWriter::default(),
            reload: Arc::new(AtomicBool::new(false)),
            extra_config: None,
        }
    }

    /// SIGHUP: re-reads the configuration; only the log level takes effect without a restart.
    fn reload_config(&self) {
        config::reload_config::<AgentConfig>(self.extra_config.as_deref());
    }

    /// systemd (or the node's bus) went away: its jobs are lost, say so instead of waiting.
    // [impl->req~agent.systemd-reconnect~1]
    pub fn bus_lost(&mut self) {
        let jobs: Vec<AgentJob> = std::mem::take(&mut self.jobs).into_values().collect();
        for job in jobs {
            match job.kind {
                JobKind::Manager { id, .. } => {
                    self.send_job_done(&job, id, protocol::JOB_RESULT_CANCELLED);
                }
                JobKind::Exec(PendingExec { call, .. }) | JobKind::Dep { call, .. } => {
                    let r = error_reply(&call, error::ACTIVATION_FAILED, "systemd went away");
                    if let Some(r) = r {
                        self.send(r);
                    }
                }
            }
        }
        // Subscriptions belong to the manager's monitors: they are kept for the new bus.
    }

    /// While detached from systemd: answers the manager's calls with an error for `wait`.
    pub fn refuse_while_detached(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while !self.shutdown.load(Ordering::Relaxed) {
            notify::watchdog_tick();
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let _ = poll_readable([self.events.wake_fd()], left.min(CORE_TICK));
            self.events.clear_wake();
            while let Some(ev) = self.events.try_pop() {
                if let FromLink::Frame(msg) = ev {
                    if msg.msg_type() == MessageType::MethodCall {
                        let text = format!("systemd on node '{}' is not reachable", self.node);
                        if let Some(r) = error_reply(&msg, error::ACTIVATION_FAILED, &text) {
                            self.send(r);
                        }
                    }
                }
            }
        }
    }

    /// Continues on a new connection to the node's bus.
    pub fn attach(&mut self, sd: Connection, local: LocalApi) {
        self.sd = sd;
        self.bus_writer = BusWriter::default();
        self.local = local;
    }

    pub fn run(&mut self) -> Result<Exit, String> {
        while !self.shutdown.load(Ordering::Relaxed) {
            notify::watchdog_tick();
            if self.reload.swap(false, Ordering::Relaxed) {
                self.reload_config();
            }
            let tick = if self.sd.channel().has_messages_to_send() {
                WRITE_RETRY
            } else {
                CORE_TICK
            };
            poll_readable([bus_fd(&self.sd), self.events.wake_fd()], tick)
                .map_err(|e| format!("poll failed: {e}"))?;
            if self.sd.channel().read_write(Some(Duration::ZERO)).is_err() {
                return Ok(Exit::BusLost(
                    "connection to the node's bus closed".to_string(),
                ));
            }
            self.drain_bus();
            self.events.clear_wake();
            while let Some(ev) = self.events.try_pop() {
                match ev {
                    FromLink::Frame(msg) => {
                        if catch_unwind(AssertUnwindSafe(|| self.on_manager_message(msg))).is_err()
                        {
                            log_error!("Internal error handling a manager call; continuing");
                        }
                    }
                    FromLink::Connected(addr) => {
                        self.local.set_connected(&self.sd, Some(addr));
                        self.linked = true;
                        self.announce_proxies();
                    }
                    FromLink::Disconnected => {
                        // Results for the old session mean nothing to the next one (its
                        // manager ended those jobs `cancelled`; a restarted one reuses ids).
                        self.retry.clear();
                        // The manager resubscribes after it sees us again.
                        self.watch = Watch::default();
                        self.last_state.clear();
                        self.local.set_connected(&self.sd, None);
                        self.linked = false;
                        self.proxies_unannounced();
                    }
                }
                // Signals that arrived during a blocking systemd call are handled in order,
                // after the call whose job they may concern was recorded.
                self.drain_bus();
            }
            self.expire_execs();
            self.expire_proxies();
            self.flush_retry();
            // [impl->req~bounds.bus-write~1]
            if let Err(e) = self.bus_writer.pump(&self.sd) {
                return Ok(Exit::BusLost(e));
            }
        }
        log_info!("Shutting down");
        notify::stopping();
        Ok(Exit::Shutdown)
    }

    fn drain_bus(&mut self) {
        while let Some(msg) = self.sd.channel().pop_message() {
            match msg.msg_type() {
                MessageType::Signal => self.on_systemd_signal(&msg),
                MessageType::MethodCall if crate::local_api::is_proxy_call(&msg) => {
                    self.on_local_proxy_call(&msg)
                }
                MessageType::MethodCall => self.local.handle(msg, &self.sd),
                _ => {}
            }
        }
    }

    fn on_systemd_signal(&mut self, msg: &Message) {
        let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
        match member.as_str() {
            "JobRemoved" => self.on_job_removed(msg),
            "UnitNew" | "UnitRemoved" => {
                let Ok((unit, _)) = msg.read2::<&str, dbus::Path>() else {
                    return;
                };
                if self.watch.wants(unit) {
                    let sig = watch::agent_signal(&member).map(|m| {
                        if member == "UnitNew" {
                            m.append2(unit, "real")
                        } else {
                            m.append1(unit)
                        }
                    });
                    if let Some(s) = sig {
                        self.send(s);
                    }
                }
            }
            "PropertiesChanged" => self.on_properties_changed(msg),
            _ => {}
        }
    }

    // [impl->req~manager.monitors~1]
    fn on_properties_changed(&mut self, msg: &Message) {
        let path = msg.path().map(|p| p.to_string()).unwrap_or_default();
        // systemd sends a dozen large PropertiesChanged per job; decoding the dictionary is
        // the costly part, so signals nobody asked for are dropped before it.
        let is_job = path.starts_with("/org/freedesktop/systemd1/job/");
        let relevant = if is_job {
            self.jobs_of(&path).next().is_some()
        } else {
            watch::unit_from_path(&path).is_some_and(|u| self.watch.wants(&u))
        };
        if !relevant {
            return;
        }
        let Ok((iface, changed)) = msg.read2::<&str, PropMap>() else {
            return;
        };
        if is_job {
            if let Some(state) = watch::prop_str(&changed, "State") {
                // systemd re-announces a job's properties whenever a request is merged into
                // it; only a real state change is passed on, once per manager job.
                let p = path.clone();
                let mut ids: Vec<u32> = Vec::new();
                for (_, j) in self.jobs.range_mut((p.clone(), 0)..=(p, u64::MAX)) {
                    if let JobKind::Manager { id, .. } = j.kind {
                        if j.state.as_deref() != Some(state.as_str()) {
                            j.state = Some(state.clone());
                            ids.push(id);
                        }
                    }
                }
                for id in ids {
                    if let Some(sig) = watch::agent_signal("JobStateChanged") {
                        self.send(sig.append2(id, state.as_str()));
                    }
                }
            }
            return;
        }
        let Some(unit) = watch::unit_from_path(&path) else {
            return;
        };
        if !self.watch.wants(&unit) {
            return;
        }
        if iface == watch::UNIT_IFACE {
            if let Some(active) = watch::prop_str(&changed, "ActiveState") {
                let sub = watch::prop_str(&changed, "SubState").unwrap_or_default();
                if self.state_is_new(&unit, &active, &sub) {
                    if let Some(sig) = watch::state_changed(&unit, &active, &sub, "real") {
                        self.send(sig);
                    }
                }
            }
        }
        if let Some(sig) = watch::agent_signal("UnitPropertiesChanged") {
            self.send(sig.append3(unit, iface, changed));
        }
    }

    /// Records a unit's state; false if it is the state last reported.
    fn state_is_new(&mut self, unit: &str, active: &str, sub: &str) -> bool {
        let now = (active.to_string(), sub.to_string());
        if self.last_state.get(unit) == Some(&now) {
            return false;
        }
        // Bounded like the watch list; past the bound, changes are reported undeduplicated.
        if self.last_state.len() < MAX_AGENT_SUBSCRIPTIONS || self.last_state.contains_key(unit) {
            self.last_state.insert(unit.to_string(), now);
        }
        true
    }

    // [impl->req~agent.job-done~1]
    fn on_job_removed(&mut self, msg: &Message) {
        let Ok((_, job_path, _unit, result)) = msg.read4::<u32, dbus::Path, &str, &str>() else {
            return;
        };
        let keys: Vec<(String, u64)> = self.jobs_of(&job_path).map(|(k, _)| k.clone()).collect();
        for key in keys {
            if let Some(job) = self.jobs.remove(&key) {
                self.job_ended(job, result);
            }
        }
    }

    /// The jobs recorded under one systemd job path.
    fn jobs_of<'a>(
        &'a self,
        path: &str,
    ) -> impl Iterator<Item = (&'a (String, u64), &'a AgentJob)> + 'a {
        let p = path.to_string();
        self.jobs.range((p.clone(), 0)..=(p, u64::MAX))
    }

    fn job_ended(&mut self, job: AgentJob, result: &str) {
        match job.kind {
            JobKind::Manager {
                id,
                ref method,
                started,
            } => {
                log_fields!(
                    Info,
                    [
                        ("UNIT", job.unit.as_str()),
                        ("JOB", id.to_string().as_str())
                    ],
                    "Job {id} ({} {}) done: {result}",
                    job_verb(method),
                    job.unit
                );
                // [impl->req~manager.metrics~1]
                if self.metrics {
                    // Sent before JobDone so the manager has it when it ends the job.
                    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let prop = self.start_propagation_us(&job.unit);
                    if let Some(sig) = watch::agent_signal("JobMetrics") {
                        self.send(
                            sig.append3(id, job.unit.as_str(), method.as_str())
                                .append2(micros, prop),
                        );
                    }
                }
                self.send_job_done(&job, id, result);
            }
            JobKind::Exec(p) => self.finish_exec(p, result),
            JobKind::Dep { call, unit } => self.dep_ended(&call, &unit, result),
        }
    }

    /// How long the unit took from leaving `inactive` to becoming `active` (0 if unknown).
    fn start_propagation_us(&self, unit: &str) -> u64 {
        let Ok(path) = systemd::unit_path(&self.sd, unit) else {
            return 0;
        };
        let get = |p: &str| -> Option<u64> {
            let c = systemd::properties_call(&path, "Get")
                .ok()?
                .append2(watch::UNIT_IFACE, p);
            systemd::call(&self.sd, c)
                .ok()?
                .read1::<dbus::arg::Variant<u64>>()
                .ok()
                .map(|v| v.0)
        };
        match (
            get("InactiveExitTimestampMonotonic"),
            get("ActiveEnterTimestampMonotonic"),
        ) {
            (Some(exit), Some(enter)) if enter >= exit => enter - exit,
            _ => 0,
        }
    }

    /// Frames and queues a message; one that cannot go is logged and dropped.
    pub(crate) fn send(&self, mut msg: Message) {
        match self.serials.encode(&mut msg, MAX_FRAME_SIZE) {
            Ok(bytes) => {
                if self.outbound.try_push(bytes).is_err() {
                    log_warn!("Outgoing queue to the manager is full; message dropped");
                }
            }
            Err(e) => log_warn!("Message to the manager dropped: {e}"),
        }
    }

    /// A job's result: never dropped while the link lives; retried when the queue is full.
    // [impl->req~agent.job-done~1]
    fn send_job_done(&mut self, job: &AgentJob, id: u32, result: &str) {
        if job.session != self.session.load(Ordering::SeqCst) {
            log_debug!("Job {id} belonged to an earlier manager session; result not sent");
            return;
        }
        let Some(mut msg) = watch::agent_signal("JobDone").map(|m| m.append2(id, result)) else {
            return;
        };
        let Ok(bytes) = self.serials.encode(&mut msg, MAX_FRAME_SIZE) else {
            return;
        };
        if !self.retry.is_empty() || self.outbound.try_push(bytes.clone()).is_err() {
            if self.retry.len() < MAX_AGENT_JOBS {
                self.retry.push_back(bytes);
            } else {
                log_error!("Result of job {id} lost: {MAX_AGENT_JOBS} results already waiting");
            }
        }
    }

    fn flush_retry(&mut self) {
        while let Some(bytes) = self.retry.pop_front() {
            if let Err(PushError::Full(b) | PushError::Closed(b)) = self.outbound.try_push(bytes) {
                self.retry.push_front(b);
                return;
            }
        }
    }

    /// Sends the answer to a manager call; one too large for the link becomes an error.
    fn send_reply(&self, call: &Message, mut reply: Message) {
        match self.serials.encode(&mut reply, MAX_FRAME_SIZE) {
            Ok(bytes) => {
                if self.outbound.try_push(bytes).is_err() {
                    log_warn!("Outgoing queue to the manager is full; answer dropped");
                }
            }
            Err(e) => {
                log_warn!("Answer too large for the link: {e}");
                if let Some(err) = error_reply(call, error::BUSY, &format!("answer too large: {e}"))
                {
                    self.send(err);
                }
            }
        }
    }

    fn on_manager_message(&mut self, msg: Message) {
        if msg.msg_type() == MessageType::Signal
            && msg.interface().as_deref() == Some(protocol::INTERNAL_PROXY_IFACE)
        {
            self.on_proxy_signal(&msg);
            return;
        }
        if msg.msg_type() != MessageType::MethodCall {
            return;
        }
        let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
        let iface = msg.interface().map(|i| i.to_string()).unwrap_or_default();
        let result = if iface == protocol::INTERNAL_AGENT_IFACE {
            self.dispatch(&member, &msg)
        } else {
            Err(CallError::new(
                "org.freedesktop.DBus.Error.UnknownInterface",
                format!("unknown interface '{iface}'"),
            ))
        };
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                log_debug!("{member} failed: {} ({})", e.message, e.name);
                error_reply(&msg, &e.name, &e.message)
            }
        };
        if let Some(r) = reply {
            self.send_reply(&msg, r);
        }
    }

    pub(crate) fn expect_signature(
        msg: &Message,
        member: &str,
        sig: &str,
    ) -> Result<(), CallError> {
        let got = signature_of(msg);
        if got != sig {
            return Err(CallError::new(
                error::INVALID_ARGS,
                format!("{member} takes ({sig}), got ({got})"),
            ));
        }
        Ok(())
    }

    pub(crate) fn record_job(&mut self, path: String, unit: &str, kind: JobKind) {
        let session = self.session.load(Ordering::SeqCst);
        self.job_seq += 1;
        self.jobs.insert(
            (path, self.job_seq),
            AgentJob {
                unit: unit.to_string(),
                kind,
                session,
                state: None,
            },
        );
    }

    pub(crate) fn check_job_room(&self) -> Result<(), CallError> {
        if self.jobs.len() >= MAX_AGENT_JOBS {
            return Err(CallError::new(
                error::BUSY,
                format!("{MAX_AGENT_JOBS} jobs in flight on node '{}'", self.node),
            ));
        }
        Ok(())
    }

    /// Executes one manager call against systemd. `Ok(None)`: the answer comes later.
    // [impl->req~agent.relay~1]
    fn dispatch(&mut self, member: &str, msg: &Message) -> Result<Option<Message>, CallError> {
        if let Some((_, sig)) = SYSTEMD_RELAYED.iter().find(|(m, _)| *m == member) {
            Self::expect_signature(msg, member, sig)?;
            let mut call = systemd::manager_call(member)?;
            call.append_items(&msg.get_items());
            return Ok(Some(relay_reply(msg, &systemd::call(&self.sd, call)?)));
        }
        match member {
            "StartUnit" | "StopUnit" | "RestartUnit" | "ReloadUnit" => {
                Self::expect_signature(msg, member, "ssu")?;
                let (unit, mode, id) = msg.read3::<&str, &str, u32>().map_err(bad_args)?;
                self.check_job_room()?;
                let call = systemd::manager_call(member)?.append2(unit, mode);
                let path = systemd::job_call(&self.sd, call)?;
                log_fields!(
                    Info,
                    [("UNIT", unit), ("JOB", id.to_string().as_str())],
                    "{} {unit} ({mode}) as job {id}",
                    job_verb(member)
                );
                let kind = JobKind::Manager {
                    id,
                    method: member.to_string(),
                    started: Instant::now(),
                };
                self.record_job(path, unit, kind);
                Ok(Some(msg.method_return()))
            }
            "StartTransientUnit" => {
                Self::expect_signature(msg, member, "ssa(sv)a(sa(sv))u")?;
                self.check_job_room()?;
                let mut items = msg.get_items();
                let id = match items.pop() {
                    Some(MessageItem::UInt32(id)) => id,
                    _ => return Err(bad_args("missing job id")),
                };
                let unit = match items.first() {
                    Some(MessageItem::Str(u)) => u.clone(),
                    _ => return Err(bad_args("missing unit name")),
                };
                let mut call = systemd::manager_call(member)?;
                call.append_items(&items);
                let path = systemd::job_call(&self.sd, call)?;
                log_fields!(
                    Info,
                    [("UNIT", unit.as_str())],
                    "Transient unit {unit} as job {id}"
                );
                let kind = JobKind::Manager {
                    id,
                    method: member.to_string(),
                    started: Instant::now(),
                };
                self.record_job(path, &unit, kind);
                Ok(Some(msg.method_return()))
            }
            "JobCancel" => {
                Self::expect_signature(msg, member, "u")?;
                let id: u32 = msg.read1().map_err(bad_args)?;
                let path = self
                    .jobs
                    .iter()
                    .find(|(_, j)| matches!(j.kind, JobKind::Manager { id: jid, .. } if jid == id))
                    .map(|((p, _), _)| p.clone())
                    .ok_or_else(|| bad_args(format!("no job {id} on this node")))?;
                let call =
                    Message::new_method_call(systemd::DEST, path, systemd::JOB_IFACE, "Cancel")
                        .map_err(bad_args)?;
                systemd::call(&self.sd, call)?;
                Ok(Some(msg.method_return()))
            }
            "GetUnitProperties" => {
                Self::expect_signature(msg, member, "ss")?;
                let (unit, iface) = msg.read2::<&str, &str>().map_err(bad_args)?;
                let path = systemd::unit_path(&self.sd, unit)?;
                let call = systemd::properties_call(&path, "GetAll")?.append1(iface);
                Ok(Some(relay_reply(msg, &systemd::call(&self.sd, call)?)))
            }
            "GetUnitProperty" => {
                Self::expect_signature(msg, member, "sss")?;
                let (unit, iface, prop) = msg.read3::<&str, &str, &str>().map_err(bad_args)?;
                let path = systemd::unit_path(&self.sd, unit)?;
                let call = systemd::properties_call(&path, "Get")?.append2(iface, prop);
                Ok(Some(relay_reply(msg, &systemd::call(&self.sd, call)?)))
            }
            "SetLogLevel" => {
                Self::expect_signature(msg, member, "s")?;
                let level: &str = msg.read1().map_err(bad_args)?;
                let lvl = level.parse::<log::Level>().map_err(bad_args)?;
                log::set_level(lvl);
                log_info!("Log level set to {lvl}");
                Ok(Some(msg.method_return()))
            }
            "EnableMetrics" | "DisableMetrics" => {
                Self::expect_signature(msg, member, "")?;
                self.metrics = member == "EnableMetrics";
                Ok(Some(msg.method_return()))
            }
            "Subscribe" => {
                Self::expect_signature(msg, member, "s")?;
                let unit: &str = msg.read1().map_err(bad_args)?;
                if !self.watch.add(unit) {
                    return Err(CallError::new(error::BUSY, "too many watched units"));
                }
                self.announce_current_state(unit);
                Ok(Some(msg.method_return()))
            }
            "Unsubscribe" => {
                Self::expect_signature(msg, member, "s")?;
                let unit: &str = msg.read1().map_err(bad_args)?;
                self.watch.remove(unit);
                self.last_state.remove(unit);
                Ok(Some(msg.method_return()))
            }
            "Exec" => {
                Self::expect_signature(msg, member, "ast")?;
                self.start_exec(msg)?;
                Ok(None)
            }
            "StartDep" => {
                Self::expect_signature(msg, member, "s")?;
                self.start_dep(msg)?;
                Ok(None)
            }
            "StopDep" => {
                Self::expect_signature(msg, member, "s")?;
                self.stop_dep(msg)?;
                Ok(Some(msg.method_return()))
            }
            _ => Err(CallError::new(
                "org.freedesktop.DBus.Error.UnknownMethod",
                format!("unknown method '{member}'"),
            )),
        }
    }

    /// A new subscriber learns the unit's current state (reason `virtual`).
    fn announce_current_state(&mut self, unit: &str) {
        if unit == watch::WILDCARD {
            return;
        }
        let Ok(call) = systemd::manager_call("GetUnit") else {
            return;
        };
        let Ok(reply) = systemd::call(&self.sd, call.append1(unit)) else {
            return; // not loaded: nothing to report
        };
        let Ok(path) = reply.read1::<dbus::Path>() else {
            return;
        };
        let path = path.into_static();
        let get = |p: &str| -> Option<String> {
            let c = systemd::properties_call(&path, "Get")
                .ok()?
                .append2(watch::UNIT_IFACE, p);
            let r = systemd::call(&self.sd, c).ok()?;
            r.read1::<dbus::arg::Variant<String>>().ok().map(|v| v.0)
        };
        let (active, sub) = (get("ActiveState"), get("SubState"));
        if let Some(sig) = watch::agent_signal("UnitNew") {
            self.send(sig.append2(unit, "virtual"));
        }
        if let (Some(a), Some(s)) = (active, sub) {
            self.state_is_new(unit, &a, &s);
            if let Some(sig) = watch::state_changed(unit, &a, &s, "virtual") {
                self.send(sig);
            }
        }
    }

    // [impl->req~agent.exec~1]
    fn start_exec(&mut self, msg: &Message) -> Result<(), CallError> {
        let (argv, timeout_us) = msg.read2::<Vec<String>, u64>().map_err(bad_args)?;
        if argv.is_empty() {
            return Err(bad_args("Exec needs a command"));
        }
        let running = self
            .jobs
            .values()
            .filter(|j| matches!(j.kind, JobKind::Exec(_)))
            .count();
        if running >= MAX_AGENT_EXECS {
            return Err(CallError::new(
                error::BUSY,
                format!(
                    "{MAX_AGENT_EXECS} commands already running on node '{}'",
                    self.node
                ),
            ));
        }
        self.check_job_room()?;
        let dir = exec::exec_dir();
        exec::prepare_dir(&dir).map_err(|e| {
            CallError::new(error::ACTIVATION_FAILED, format!("{}: {e}", dir.display()))
        })?;
        self.exec_seq += 1;
        let unit = format!(
            "hirte-exec-{}-{}.service",
            std::process::id(),
            self.exec_seq
        );
        let out = dir.join(format!("{unit}.out"));
        let err = dir.join(format!("{unit}.err"));
        let timeout = Duration::from_micros(timeout_us.max(1));
        let props = exec::unit_properties(&argv, &out, &err, timeout);
        let aux: Vec<(String, exec::Props)> = Vec::new();
        let call =
            systemd::manager_call("StartTransientUnit")?.append3(unit.as_str(), "fail", props);
        let call = call.append1(aux);
        let path = systemd::job_call(&self.sd, call)?;
        let call_copy = keep_call(msg)?;
        log_info!("Exec '{}' as {unit}", argv.join(" "));
        self.record_job(
            path,
            &unit,
            JobKind::Exec(PendingExec {
                call: call_copy,
                unit: unit.clone(),
                out,
                err,
                deadline: Instant::now() + timeout + exec::EXEC_GRACE,
                timeout,
            }),
        );
        Ok(())
    }

    /// The service's `Result` (e.g. `timeout`) and its main process' exit code and status.
    fn service_status(&self, unit: &str) -> Option<(String, i32, i32)> {
        let path = systemd::unit_path(&self.sd, unit).ok()?;
        let get = |p: &str| -> Option<Message> {
            let c = systemd::properties_call(&path, "Get")
                .ok()?
                .append2("org.freedesktop.systemd1.Service", p);
            systemd::call(&self.sd, c).ok()
        };
        let int = |p: &str| get(p)?.read1::<dbus::arg::Variant<i32>>().ok().map(|v| v.0);
        let result = get("Result")?.read1::<dbus::arg::Variant<String>>().ok()?.0;
        Some((result, int("ExecMainCode")?, int("ExecMainStatus")?))
    }

    fn finish_exec(&mut self, p: PendingExec, result: &str) {
        let status = match result {
            "done" | "timeout" => None,
            _ => self.service_status(&p.unit),
        };
        let timed_out =
            result == "timeout" || status.as_ref().is_some_and(|(r, _, _)| r == "timeout");
        let reply = if timed_out {
            error_reply(
                &p.call,
                error::TIMEOUT,
                &format!(
                    "command did not finish within {}",
                    hirte_common::timespan::format_timespan(p.timeout)
                ),
            )
        } else {
            let status = match (result, status) {
                ("done", _) => 0,
                (_, Some((_, code, st))) => exec::exit_status(code, st),
                (_, None) => 255,
            };
            let out = exec::take_output(&p.out);
            let err = exec::take_output(&p.err);
            Some(p.call.method_return().append3(status, out, err))
        };
        // A failed transient unit stays loaded until reset; let systemd forget it.
        if let Ok(c) = systemd::manager_call("ResetFailedUnit") {
            let _ = systemd::call(&self.sd, c.append1(p.unit.as_str()));
        }
        let _ = std::fs::remove_file(&p.out);
        let _ = std::fs::remove_file(&p.err);
        if let Some(r) = reply {
            self.send(r);
        }
    }

    /// Backstop for systemd's own timeout: stop the unit and answer `Timeout`.
    fn expire_execs(&mut self) {
        let now = Instant::now();
        let expired: Vec<(String, u64)> = self
            .jobs
            .iter()
            .filter(|(_, j)| matches!(&j.kind, JobKind::Exec(p) if p.deadline <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(AgentJob {
                kind: JobKind::Exec(p),
                ..
            }) = self.jobs.remove(&key)
            {
                if let Ok(c) = systemd::manager_call("StopUnit") {
                    let _ = systemd::call(&self.sd, c.append2(p.unit.as_str(), "replace"));
                }
                // The command outlived its timeout and the grace (e.g. it ignores SIGTERM):
                // it must not outlive its slot in MAX_AGENT_EXECS either.
                if let Ok(c) = systemd::manager_call("KillUnit") {
                    let c = c.append3(
                        p.unit.as_str(),
                        "all",
                        nix::sys::signal::Signal::SIGKILL as i32,
                    );
                    let _ = systemd::call(&self.sd, c);
                }
                self.finish_exec(p, "timeout");
            }
        }
    }
}
