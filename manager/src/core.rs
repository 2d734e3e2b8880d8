//! The core thread: the only owner of the model and of the system-bus connection.
//!
//! It waits in one `poll()` on the bus socket and the event queue's eventfd, so it reacts to
//! either at once and never spins. Its only timeout is the nearest real deadline (a call's,
//! a node's silence, the watchdog's next ping); the signals' flags ring the eventfd, so an
//! idle core sleeps until there is something to do.

use crate::api::bluechi::{is_bluechi_path, Gateway};
use crate::api::{check_unit_args, job_object_path, Tokens};
use crate::audit::Audit;
use crate::events::LinkEvent;
use crate::objects::{monitor_path, ObjectOp};
use crate::state::{contain, internal_error, lock, Shared};
use dbus::blocking::Connection;
use dbus_crossroads::Crossroads;
use hirte_common::bounds::MAX_EVENTS_PER_TURN;
use hirte_common::bus::{flush_within, BusWriter, WRITE_RETRY};
use hirte_common::config::{self, ManagerConfig};
use hirte_common::log_info;
use hirte_common::notify;
use hirte_common::protocol::{self, error, error_reply, signature_of};
use hirte_common::queue::BoundedQueue;
use hirte_common::sys::{wait_for_bus, BusWait};
use hirte_common::wait::earliest;
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub enum CoreError {
    Bus(String),
    Poll(nix::errno::Errno),
}

impl std::fmt::Display for CoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoreError::Bus(e) => write!(f, "lost the system bus: {e}"),
            CoreError::Poll(e) => write!(f, "poll failed: {e}"),
        }
    }
}

/// The flags the signal handlers set for the core.
pub struct CoreFlags {
    /// SIGTERM/SIGINT: finish and return.
    pub shutdown: Arc<AtomicBool>,
    /// SIGHUP: re-read the configuration.
    pub reload: Arc<AtomicBool>,
}

pub struct Core {
    conn: Connection,
    cr: Crossroads,
    tokens: Tokens,
    model: Shared,
    events: Arc<BoundedQueue<LinkEvent>>,
    shutdown: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    signatures: crate::api::Signatures,
    /// The `-c` file, re-read with the defaults on SIGHUP.
    extra_config: Option<PathBuf>,
    /// Bus writes never block the core; a bus that stops reading ends it (`BusWriter`).
    bus_writer: BusWriter,
    /// Records who made each call that changes something, once it is answered.
    audit: RefCell<Audit>,
    /// `AllowExec=`: with `no`, the calls that would run a command some other way are refused
    /// here, before the API sees them (`Exec` itself is refused by its handler).
    allow_exec: bool,
    /// The `org.eclipse.bluechi` face; `None` when `BlueChiBusName=no`.
    bluechi: Option<Gateway>,
    /// Whether the D-Bus call being handled was answered directly (not through the model).
    answering: Answering,
}

/// The D-Bus call the core is handling, and whether an answer to it was sent.
#[derive(Default)]
pub struct Answering {
    call: RefCell<Option<(u32, String)>>,
    answered: Cell<bool>,
}

impl Answering {
    fn start(&self, msg: &dbus::Message) {
        let key = msg.get_serial().zip(msg.sender().map(|s| s.to_string()));
        *self.call.borrow_mut() = key;
        self.answered.set(false);
    }

    fn saw(&self, reply: &dbus::Message) {
        let key = reply
            .get_reply_serial()
            .zip(reply.destination().map(|d| d.to_string()));
        if key.is_some() && key == *self.call.borrow() {
            self.answered.set(true);
        }
    }
}

/// The bus connection as dbus-crossroads sends its answers through it, with each answer
/// shown to the audit first.
struct Audited<'a> {
    conn: &'a Connection,
    audit: &'a RefCell<Audit>,
    answering: &'a Answering,
}

impl dbus::channel::Sender for Audited<'_> {
    fn send(&self, msg: dbus::Message) -> Result<u32, ()> {
        self.answering.saw(&msg);
        self.audit.borrow_mut().on_reply(&msg);
        self.conn.channel().send(msg)
    }
}

/// How long SIGTERM waits for jobs in flight to finish before cancelling them.
// [impl->req~manager.sigterm~1]
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Longest the timers wait while link events are still queued.
const TIMERS_UNDER_BACKLOG: Duration = Duration::from_secs(1);

/// How long the last answers may take to reach the bus at exit.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

impl Core {
    /// The core over the system bus `conn`, serving the API of `model`.
    pub fn new(
        conn: Connection,
        model: Shared,
        events: Arc<BoundedQueue<LinkEvent>>,
        flags: CoreFlags,
        extra_config: Option<PathBuf>,
        allow_exec: bool,
        bluechi: Option<Gateway>,
    ) -> Self {
        let mut cr = Crossroads::new();
        let tokens = crate::api::export(&mut cr, &model);
        let first_node = crate::state::lock(&model)
            .nodes()
            .get(0)
            .map(|n| n.path().to_string());
        let signatures = crate::api::input_signatures(&mut cr, &tokens, first_node);
        Core {
            conn,
            cr,
            tokens,
            model,
            events,
            shutdown: flags.shutdown,
            reload: flags.reload,
            signatures,
            extra_config,
            bus_writer: BusWriter::default(),
            audit: RefCell::default(),
            allow_exec,
            bluechi,
            answering: Answering::default(),
        }
    }

    pub fn run(&mut self) -> Result<(), CoreError> {
        self.watch_clients()?;
        let mut drain_until: Option<Instant> = None;
        let mut more = false;
        let mut last_timers = Instant::now();
        // When the timers are next due; only ever moved earlier until they run, so a
        // deadline cannot be starved by a stream of wake-ups that each recompute it.
        let mut timers_at: Option<Instant> = Some(last_timers);
        loop {
            notify::watchdog_tick();
            if self.reload.swap(false, Ordering::Relaxed) {
                self.reload_config();
            }
            if self.shutdown.load(Ordering::Relaxed) && drain_until.is_none() {
                log_info!("Shutting down: refusing new calls, letting jobs in flight finish");
                notify::stopping();
                lock(&self.model).start_draining();
                drain_until = Some(Instant::now() + SHUTDOWN_GRACE);
            }
            if let Some(until) = drain_until {
                let idle = lock(&self.model).is_idle();
                if idle || Instant::now() >= until {
                    log_info!("Shutting down");
                    self.guarded("shutdown", None, |core| lock(&core.model).shutdown());
                    self.apply_effects();
                    flush_within(&self.conn, SHUTDOWN_FLUSH);
                    return Ok(());
                }
            }
            let now = Instant::now();
            if let Some(d) = lock(&self.model).next_deadline(now) {
                timers_at = Some(timers_at.map_or(now + d, |t| t.min(now + d)));
            }
            // [impl->req~manager.idle-no-wakeups~1]
            let mut timeout = earliest(
                timers_at.map(|t| t.saturating_duration_since(now)),
                notify::watchdog_due(),
            );
            timeout = earliest(
                timeout,
                drain_until.map(|u| u.saturating_duration_since(now)),
            );
            if self.conn.channel().has_messages_to_send() {
                timeout = earliest(timeout, Some(WRITE_RETRY));
            }
            if more {
                // The last turn stopped at its cap: what is left is already read.
                timeout = Some(Duration::ZERO);
            }
            self.wait(timeout)?;
            self.conn
                .channel()
                .read_write(Some(Duration::ZERO))
                .map_err(|()| CoreError::Bus("connection closed".to_string()))?;
            // [impl->req~bounds.core-turn~1]
            // At most `MAX_EVENTS_PER_TURN` of each kind per turn: timers (heartbeats, call
            // deadlines) and the watchdog come round however much is queued.
            let mut handled = 0;
            while handled < MAX_EVENTS_PER_TURN {
                let Some(msg) = self.conn.channel().pop_message() else {
                    break;
                };
                handled += 1;
                // Built before the handler runs: a call it fails on still gets its answer.
                let owed = internal_error(&msg);
                self.answering.start(&msg);
                let owed = self.guarded("a D-Bus call", owed, |core| match msg.msg_type() {
                    dbus::message::MessageType::MethodCall => {
                        // [impl->req~audit.records~1]
                        core.audit.borrow_mut().on_call(&core.conn, &msg);
                        if core.bluechi_call(&msg) {
                            return;
                        }
                        let sender = Audited {
                            conn: &core.conn,
                            audit: &core.audit,
                            answering: &core.answering,
                        };
                        // Err(None): refused without an answer (the caller wants none).
                        let refusal = match core.check_arguments(&msg) {
                            Err(r) => Some(r),
                            Ok(()) => core.check_exec(&msg).map(Some),
                        };
                        if let Some(refusal) = refusal {
                            if let Some(refusal) = refusal {
                                let _ = dbus::channel::Sender::send(&sender, refusal);
                            }
                        } else {
                            let _ = core.cr.handle_message(msg, &sender);
                        }
                    }
                    dbus::message::MessageType::Signal => core.on_bus_signal(&msg),
                    _ => {}
                });
                if let Some(reply) = owed.filter(|_| !self.answering.answered.get()) {
                    self.audit.borrow_mut().on_reply(&reply);
                    let _ = self.conn.channel().send(reply);
                }
                self.apply_effects();
            }
            more = handled == MAX_EVENTS_PER_TURN;
            self.events.clear_wake();
            for _ in 0..MAX_EVENTS_PER_TURN {
                let Some(ev) = self.events.try_pop() else {
                    break;
                };
                self.guarded("an agent message", None, |core| {
                    let mut m = lock(&core.model);
                    match ev {
                        LinkEvent::Register { handle, name, call } => {
                            m.on_register(handle, &name, &call)
                        }
                        LinkEvent::Frame { link, msg, size } => {
                            if m.admit(link, &msg, size) {
                                m.on_frame(link, msg);
                            }
                        }
                        LinkEvent::Closed { link, reason } => m.on_link_closed(link, &reason),
                    }
                });
                self.apply_effects();
            }
            let backlog = !self.events.is_empty();
            more |= backlog;
            // Silence and lateness are judged once what the links delivered is handled, so
            // queued heartbeats and answers count; under a lasting backlog at least every
            // TIMERS_UNDER_BACKLOG, so timers cannot starve either.
            let due = timers_at.is_some_and(|t| Instant::now() >= t);
            if due && (!backlog || last_timers.elapsed() >= TIMERS_UNDER_BACKLOG) {
                last_timers = Instant::now();
                timers_at = None;
                self.guarded("timers", None, |core| {
                    lock(&core.model).tick(Instant::now())
                });
                self.apply_effects();
            }
            // [impl->req~bounds.bus-write~1]
            // Writing also reads: what it read waits in libdbus' queue, which poll() cannot
            // see, so after a write the next turn looks without sleeping.
            let wrote = self.conn.channel().has_messages_to_send();
            self.bus_writer
                .pump(&self.conn)
                .map_err(|e| CoreError::Bus(e.to_string()))?;
            more |= wrote;
        }
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<(), CoreError> {
        match wait_for_bus(&self.conn, self.events.wake_fd(), timeout) {
            Ok(BusWait::Ready(_)) => Ok(()),
            Ok(BusWait::Disconnected) => Err(CoreError::Bus(
                "connection to the system bus closed".to_string(),
            )),
            Err(e) => Err(CoreError::Poll(e)),
        }
    }

    /// SIGHUP: re-reads the configuration; only the log level takes effect without a restart.
    fn reload_config(&mut self) {
        config::reload_config::<ManagerConfig>(self.extra_config.as_deref());
    }

    /// Refuses a call whose arguments differ from the method's signature or name an invalid
    /// unit, with an `InvalidArgs` answer unless the caller wants none.
    fn check_arguments(&self, msg: &dbus::Message) -> Result<(), Option<dbus::Message>> {
        let (Some(iface), Some(member)) = (msg.interface(), msg.member()) else {
            return Ok(());
        };
        let Some(expected) = self
            .signatures
            .get(&(iface.to_string(), member.to_string()))
        else {
            return Ok(());
        };
        let got = signature_of(msg);
        let text = if got != expected.sig {
            if msg.get_no_reply() {
                // Crossroads drops it: it cannot read the arguments.
                return Ok(());
            }
            format!("{member} takes ({}), got ({got})", expected.sig)
        } else {
            // [impl->req~common.unit-name~1]
            match check_unit_args(msg, expected) {
                Ok(()) => return Ok(()),
                Err(e) => format!("{member}: {e}"),
            }
        };
        Err(error_reply(msg, error::INVALID_ARGS, &text))
    }

    /// `AllowExec=no` also closes `StartTransientUnit` with `Exec*` properties and
    /// `EnableUnitFiles` of files outside the unit directories.
    // [impl->req~api.exec-bypass~1]
    fn check_exec(&self, msg: &dbus::Message) -> Option<dbus::Message> {
        if self.allow_exec || msg.interface().as_deref() != Some(protocol::NODE_IFACE) {
            return None;
        }
        let text = hirte_common::exec_guard::refusal(&msg.member()?, msg)?;
        let name = dbus::strings::ErrorName::new(error::NOT_ALLOWED).ok()?;
        Some(msg.error(&name, &std::ffi::CString::new(text).ok()?))
    }

    /// Watches clients leaving the bus, to close the monitors they own.
    pub fn watch_clients(&self) -> Result<(), CoreError> {
        self.conn
            .add_match_no_cb(
                "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged'",
            )
            .map_err(|e| CoreError::Bus(e.message().unwrap_or("AddMatch failed").to_string()))
    }

    fn on_bus_signal(&mut self, msg: &dbus::Message) {
        if msg.member().as_deref() != Some("NameOwnerChanged") {
            return;
        }
        if let Ok((name, _old, new)) = msg.read3::<&str, &str, &str>() {
            if new.is_empty() && name.starts_with(':') {
                lock(&self.model).on_name_lost(name);
                self.audit.borrow_mut().forget(name);
            }
        }
    }

    /// Runs one step; a panic in it is contained (`state::contain`) and the manager goes on
    /// with the next message. Returns `owed` when the step panicked without answering it.
    fn guarded(
        &mut self,
        what: &str,
        owed: Option<dbus::Message>,
        f: impl FnOnce(&mut Core),
    ) -> Option<dbus::Message> {
        let model = self.model.clone();
        contain(&model, what, owed, || f(self))
    }

    /// Applies object-tree changes, then sends queued bus messages, in that order, so a job
    /// object exists before its `JobNew` and the reply naming it.
    fn apply_effects(&mut self) {
        let (ops, outbox) = lock(&self.model).take_effects();
        for op in ops {
            match op {
                ObjectOp::AddJob(id) => {
                    if let Some(p) = job_object_path(id) {
                        self.cr.insert(p, &[self.tokens.job], id);
                    }
                }
                ObjectOp::RemoveJob(id) => {
                    if let Some(p) = job_object_path(id) {
                        let _ = self.cr.remove::<u32>(&p);
                    }
                }
                ObjectOp::AddMonitor(id) => {
                    if let Ok(p) = dbus::Path::new(monitor_path(id)) {
                        self.cr.insert(p, &[self.tokens.monitor], id);
                    }
                }
                ObjectOp::RemoveMonitor(id) => {
                    if let Ok(p) = dbus::Path::new(monitor_path(id)) {
                        let _ = self.cr.remove::<u32>(&p);
                    }
                }
            }
        }
        let outbox = match self.bluechi.as_mut() {
            Some(gw) => {
                let mut out = Vec::with_capacity(outbox.len() * 2);
                for msg in outbox {
                    gw.outgoing(msg, &mut out);
                }
                out
            }
            None => outbox,
        };
        for msg in outbox {
            self.audit.borrow_mut().on_reply(&msg);
            let _ = self.conn.channel().send(msg);
        }
    }

    /// Answers a call on the BlueChi tree through the same objects; `false` when the call is
    /// not for that tree (or the tree is off).
    // [impl->req~bluechi.one-state~1]
    fn bluechi_call(&mut self, msg: &dbus::Message) -> bool {
        if self.bluechi.is_none() || !msg.path().is_some_and(|p| is_bluechi_path(&p)) {
            return false;
        }
        let Some(mut gw) = self.bluechi.take() else {
            return false;
        };
        let mut out = Vec::new();
        match gw.incoming(msg) {
            Err(refusal) => out.extend(refusal),
            Ok((call, t)) => {
                // The translated call is Hirte's: audited and checked as one.
                self.audit.borrow_mut().on_call(&self.conn, &call);
                let sink = crate::objects::VecSender::default();
                match self.check_exec(&call) {
                    Some(refusal) => out.push(refusal),
                    None => {
                        let _ = self.cr.handle_message(call, &sink);
                    }
                }
                let mut replies = sink.take();
                replies.append(&mut out);
                gw.answered(t, replies, &mut out);
            }
        }
        self.bluechi = Some(gw);
        for m in out {
            self.answering.saw(&m);
            self.audit.borrow_mut().on_reply(&m);
            let _ = self.conn.channel().send(m);
        }
        true
    }
}
