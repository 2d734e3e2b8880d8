//! The agent's core thread: owns the node's bus connection (systemd and the local API),
//! executes the manager's calls, and turns systemd's signals into the agent's signals.
//!
//! Single-threaded on purpose: a systemd call's reply and the signals that follow it arrive
//! in order on one connection, so `JobRemoved` is always handled after its job was recorded.
//!
//! The logic is generic over [`Systemd`]; only the loop that waits on the bus needs the real
//! connection. `Core` composes the parts and is the one place where they meet; its fields are
//! private to this module. Each concern is a child module holding its own state type (with
//! private fields) and the core's handlers for it: the manager's calls (`manager_calls`),
//! jobs (`jobs`: `JobTable`), commands (`exec`), unit watches (`watch`: `Watch`) and
//! proxies (`dependencies`; the table is `crate::proxy::ProxyTable`).

mod dependencies;
mod exec;
mod jobs;
mod manager_calls;
mod watch;

use crate::link::FromLink;
use crate::local_api::LocalApi;
use crate::proxy::ProxyTable;
use crate::systemd::{bad_args, CallError, Systemd, SystemdBus};
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::{CORE_TICK, MAX_AGENT_SIGNAL_SIZE, MAX_EVENTS_PER_TURN, MAX_FRAME_SIZE};
use hirte_common::bus::{BusWriter, WRITE_RETRY};
use hirte_common::config::{self, AgentConfig};
use hirte_common::frame::SerialCounter;
use hirte_common::notify;
use hirte_common::protocol::{error, error_reply};
use hirte_common::queue::BoundedQueue;
use hirte_common::sys::{wait_for_bus, BusWait};
use hirte_common::wait::{earliest, poll_readable};
use hirte_common::{log_error, log_info, log_warn};
use jobs::JobTable;
use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use watch::Watch;

/// How soon results the full outbound queue held back are offered to it again.
const RETRY_INTERVAL: Duration = CORE_TICK;

/// The queues and flags the core shares with the link thread.
pub struct Channels {
    pub events: Arc<BoundedQueue<FromLink>>,
    pub outbound: Arc<BoundedQueue<Vec<u8>>>,
    pub shutdown: Arc<AtomicBool>,
    pub serials: Arc<SerialCounter>,
    pub session: Arc<AtomicU64>,
}

pub struct Core<S> {
    sd: S,
    node: String,
    events: Arc<BoundedQueue<FromLink>>,
    outbound: Arc<BoundedQueue<Vec<u8>>>,
    shutdown: Arc<AtomicBool>,
    serials: Arc<SerialCounter>,
    session: Arc<AtomicU64>,
    /// Job results that found the send queue full; retried first on every turn so no
    /// `JobDone` is lost while the link lives (bounded: one per job).
    retry: VecDeque<Vec<u8>>,
    jobs: JobTable,
    watch: Watch,
    metrics: bool,
    exec_seq: u64,
    /// Where commands' output files go (`exec::exec_dir`).
    exec_dir: PathBuf,
    local: LocalApi,
    /// Proxies this node's units asked for (`dependencies.rs`).
    proxies: ProxyTable<Message>,
    /// Whether the link to the manager is up (proxies are announced only then).
    linked: bool,
    /// Writes to the node's bus never block the core; a stalled bus counts as lost.
    bus_writer: BusWriter,
    /// Set by SIGHUP; the configuration is re-read at the start of the next turn.
    reload: Arc<AtomicBool>,
    /// `--config` of the command line, re-read on SIGHUP with the other layers.
    extra_config: Option<PathBuf>,
    /// `AllowExec=` of agent.conf: with `no` this node refuses `Exec`, transient units with
    /// `Exec*` properties and unit files from outside the unit directories, whatever the
    /// manager allows (`manager_calls.rs`).
    allow_exec: bool,
}

/// Why the core loop returned.
pub enum Exit {
    Shutdown,
    /// The node's bus (and with it systemd) went away; the caller reconnects.
    BusLost(String),
}

/// The core loop could not wait for work.
#[derive(Debug)]
pub struct PollError(nix::Error);

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "poll failed: {}", self.0)
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

impl<S: Systemd> Core<S> {
    pub fn new(sd: S, node: String, ch: Channels, local: LocalApi) -> Self {
        Core {
            sd,
            node,
            events: ch.events,
            outbound: ch.outbound,
            shutdown: ch.shutdown,
            serials: ch.serials,
            session: ch.session,
            retry: VecDeque::new(),
            jobs: JobTable::default(),
            watch: Watch::default(),
            metrics: false,
            exec_seq: 0,
            exec_dir: exec::exec_dir(),
            local,
            proxies: ProxyTable::default(),
            linked: false,
            bus_writer: BusWriter::default(),
            reload: Arc::new(AtomicBool::new(false)),
            extra_config: None,
            allow_exec: true,
        }
    }

    /// What `main` knows only after the core exists: the SIGHUP flag, the `--config` layer
    /// and `AllowExec=`.
    pub fn configure(
        &mut self,
        reload: Arc<AtomicBool>,
        extra_config: Option<PathBuf>,
        allow_exec: bool,
    ) {
        self.reload = reload;
        self.extra_config = extra_config;
        self.allow_exec = allow_exec;
    }

    /// The node's systemd (tests inspect the test double through it).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn systemd(&self) -> &S {
        &self.sd
    }

    /// Where commands' output files go; tests use a directory of their own.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn set_exec_dir(&mut self, dir: PathBuf) {
        self.exec_dir = dir;
    }

    #[cfg(fuzzing)]
    pub(crate) fn exec_dir(&self) -> &std::path::Path {
        &self.exec_dir
    }

    /// SIGHUP: re-reads the configuration; only the log level takes effect without a restart.
    fn reload_config(&self) {
        config::reload_config::<AgentConfig>(self.extra_config.as_deref());
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
                    self.refuse(&msg);
                }
            }
        }
    }

    fn refuse(&self, msg: &Message) {
        if msg.msg_type() == MessageType::MethodCall {
            let text = format!("systemd on node '{}' is not reachable", self.node);
            if let Some(r) = error_reply(msg, error::ACTIVATION_FAILED, &text) {
                self.send(r);
            }
        }
    }

    /// One event from the link thread.
    pub(crate) fn on_link_event(&mut self, ev: FromLink) {
        match ev {
            FromLink::Frame(msg) => {
                // Built before the handler runs: a call it fails on still gets its answer.
                // [impl->req~agent.panic-answered~1]
                let failed = (msg.msg_type() == MessageType::MethodCall)
                    .then(|| {
                        error_reply(
                            &msg,
                            "org.freedesktop.DBus.Error.Failed",
                            "internal error in the agent handling this call",
                        )
                    })
                    .flatten();
                if catch_unwind(AssertUnwindSafe(|| self.on_manager_message(msg))).is_err() {
                    log_error!("Internal error handling a manager call; call answered, continuing");
                    if let Some(reply) = failed {
                        self.send(reply);
                    }
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
                self.watch.clear();
                self.sync_unit_rules();
                self.local.set_connected(&self.sd, None);
                self.linked = false;
                self.proxies_unannounced();
            }
        }
    }

    /// One message from the node's bus: a systemd signal or a call on the local API.
    pub(crate) fn on_bus_message(&mut self, msg: Message) {
        match msg.msg_type() {
            MessageType::Signal => self.on_systemd_signal(&msg),
            MessageType::MethodCall if crate::local_api::is_proxy_call(&msg) => {
                self.on_local_proxy_call(&msg)
            }
            MessageType::MethodCall => self.local.handle(msg, &self.sd),
            _ => {}
        }
    }

    fn on_systemd_signal(&mut self, msg: &Message) {
        let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
        match member.as_str() {
            "JobRemoved" => self.on_job_removed(msg),
            "UnitNew" | "UnitRemoved" => self.on_unit_signal(&member, msg),
            "PropertiesChanged" => self.on_properties_changed(msg),
            _ => {}
        }
    }

    /// How long until `on_tick` has work: a command's or a proxy caller's deadline, or the
    /// retry of results the full outbound queue held back. `None`: nothing is due.
    // [impl->req~agent.core-idle-no-wakeups~1]
    pub(crate) fn next_deadline(&self, now: Instant) -> Option<Duration> {
        let at = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(now));
        let due = earliest(
            at(self.jobs.next_exec_deadline()),
            at(self.proxies.next_deadline()),
        );
        if self.retry.is_empty() {
            due
        } else {
            earliest(due, Some(RETRY_INTERVAL))
        }
    }

    /// Work that comes due with time rather than with a message.
    fn on_tick(&mut self) {
        self.expire_execs(Instant::now());
        self.expire_proxies();
        self.flush_retry();
    }

    /// Frames and queues a message; one that cannot go is logged and dropped. A signal
    /// above `MAX_AGENT_SIGNAL_SIZE` is one: the manager would cut the node off for it.
    pub(crate) fn send(&self, mut msg: Message) {
        // [impl->req~bounds.agent-flood~1]
        let max = if msg.msg_type() == MessageType::Signal {
            MAX_AGENT_SIGNAL_SIZE
        } else {
            MAX_FRAME_SIZE
        };
        match self.serials.encode(&mut msg, max) {
            Ok(bytes) => {
                if self.outbound.try_push(bytes).is_err() {
                    log_warn!("Outgoing queue to the manager is full; message dropped");
                }
            }
            Err(e) => log_warn!("Message to the manager dropped: {e}"),
        }
    }
}

/// The loop over the real bus.
impl Core<SystemdBus> {
    /// Continues on a new connection to the node's bus.
    pub fn attach(&mut self, sd: SystemdBus, local: LocalApi) {
        self.sd = sd;
        // The new connection has none of the watch's rules: add them again.
        self.watch.rules_lost();
        self.sync_unit_rules();
        self.bus_writer = BusWriter::default();
        self.local = local;
    }

    pub fn run(&mut self) -> Result<Exit, PollError> {
        let mut more = false;
        while !self.shutdown.load(Ordering::Relaxed) {
            notify::watchdog_tick();
            if self.reload.swap(false, Ordering::Relaxed) {
                self.reload_config();
                // The link thread re-reads TLS on its own flag; an idle one must wake to.
                // [impl->req~agent.idle-no-wakeups~1]
                self.outbound.wake_only();
            }
            let conn = self.sd.conn();
            // [impl->req~agent.core-idle-no-wakeups~1]
            // No timer but real deadlines: the signals' flags ring the events eventfd.
            let timeout = if more {
                // The last turn stopped at its cap: what is left is already read.
                Some(Duration::ZERO)
            } else if conn.channel().has_messages_to_send() {
                Some(WRITE_RETRY)
            } else {
                earliest(self.next_deadline(Instant::now()), notify::watchdog_due())
            };
            let waited = wait_for_bus(conn, self.events.wake_fd(), timeout).map_err(PollError)?;
            if waited == BusWait::Disconnected
                || conn.channel().read_write(Some(Duration::ZERO)).is_err()
            {
                return Ok(Exit::BusLost(
                    "connection to the node's bus closed".to_string(),
                ));
            }
            // [impl->req~bounds.core-turn~1]
            // At most `MAX_EVENTS_PER_TURN` bus messages and link events per turn, so the
            // watchdog and timers come round under a flood. Bus messages left over are
            // handled before any further link event, to keep their order.
            more = !self.drain_bus();
            self.events.clear_wake();
            for _ in 0..MAX_EVENTS_PER_TURN {
                if more {
                    break;
                }
                let Some(ev) = self.events.try_pop() else {
                    break;
                };
                self.on_link_event(ev);
                // Signals that arrived during a blocking systemd call are handled in order,
                // after the call whose job they may concern was recorded.
                more = !self.drain_bus();
            }
            more |= !self.events.is_empty();
            self.on_tick();
            // [impl->req~bounds.bus-write~1]
            if let Err(e) = self.bus_writer.pump(self.sd.conn()) {
                return Ok(Exit::BusLost(e.to_string()));
            }
        }
        log_info!("Shutting down");
        notify::stopping();
        Ok(Exit::Shutdown)
    }

    /// Handles up to `MAX_EVENTS_PER_TURN` bus messages; false if it stopped at that cap.
    fn drain_bus(&mut self) -> bool {
        for _ in 0..MAX_EVENTS_PER_TURN {
            let Some(msg) = self.sd.conn().channel().pop_message() else {
                return true;
            };
            self.on_bus_message(msg);
        }
        false
    }
}
