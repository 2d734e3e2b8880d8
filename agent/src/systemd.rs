//! Calls to systemd's D-Bus API (`org.freedesktop.systemd1`), each with a bounded timeout.
//!
//! The agent's logic talks to systemd only through the [`Systemd`] trait: [`SystemdBus`] is
//! the libdbus client, and the unit tests use a double that answers from a script.

use dbus::arg::{Arg, Get, Variant};
use dbus::blocking::Connection;
use dbus::channel::Sender;
use dbus::Message;
use hirte_common::bounds::SYSTEMD_CALL_TIMEOUT;
use hirte_common::names::escape_path_element;
use hirte_common::protocol::error;
use std::fmt;

pub const DEST: &str = "org.freedesktop.systemd1";
pub const PATH: &str = "/org/freedesktop/systemd1";
pub const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
pub const JOB_IFACE: &str = "org.freedesktop.systemd1.Job";
pub const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
pub const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";
const DBUS_INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";

/// Why a call the agent executes failed: its D-Bus error name and text go back to the
/// caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// systemd (or the bus) answered with this error; relayed unchanged.
    Dbus {
        name: String,
        message: String,
    },
    /// The caller's arguments are wrong.
    InvalidArgs(String),
    /// A bound is reached (jobs, commands, watches, frame size).
    Busy(String),
    /// What the call asked for did not happen (systemd away, a job failed).
    ActivationFailed(String),
    /// systemd's answer is not what its API documents, or a call could not be built.
    BadReply(String),
    UnknownMethod(String),
    UnknownInterface(String),
    /// This node's `AllowExec=no` refuses the call.
    NotAllowed(String),
}

impl CallError {
    fn from_dbus(e: &dbus::Error) -> Self {
        CallError::Dbus {
            name: e
                .name()
                .unwrap_or("org.freedesktop.DBus.Error.Failed")
                .to_string(),
            message: e.message().unwrap_or("systemd call failed").to_string(),
        }
    }

    /// The D-Bus error name the caller gets.
    pub fn name(&self) -> &str {
        match self {
            CallError::Dbus { name, .. } => name,
            CallError::InvalidArgs(_) => error::INVALID_ARGS,
            CallError::Busy(_) => error::BUSY,
            CallError::ActivationFailed(_) => error::ACTIVATION_FAILED,
            CallError::BadReply(_) => DBUS_INVALID_ARGS,
            CallError::UnknownMethod(_) => "org.freedesktop.DBus.Error.UnknownMethod",
            CallError::UnknownInterface(_) => "org.freedesktop.DBus.Error.UnknownInterface",
            CallError::NotAllowed(_) => error::NOT_ALLOWED,
        }
    }
}

/// The error's text, as the caller reads it.
impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Dbus { message, .. } => f.write_str(message),
            CallError::InvalidArgs(m)
            | CallError::Busy(m)
            | CallError::ActivationFailed(m)
            | CallError::BadReply(m)
            | CallError::NotAllowed(m) => f.write_str(m),
            CallError::UnknownMethod(m) => write!(f, "unknown method '{m}'"),
            CallError::UnknownInterface(i) => write!(f, "unknown interface '{i}'"),
        }
    }
}

/// A wrong argument, worded by whatever found it.
pub fn bad_args(e: impl fmt::Display) -> CallError {
    CallError::InvalidArgs(e.to_string())
}

/// The node's systemd as the agent's logic sees it.
pub trait Systemd {
    /// Sends one call and waits (bounded) for its answer.
    fn call(&self, msg: Message) -> Result<Message, CallError>;

    /// Queues a message on the node's bus without waiting (answers to local callers,
    /// signals of the local API).
    fn send(&self, msg: Message);

    /// Asks the bus for the signals `rule` matches (`AddMatch`), or no more (`RemoveMatch`).
    fn set_match(&self, rule: &str, on: bool) -> Result<(), CallError>;

    /// Sends a call that queues a job (`StartUnit`, `StartTransientUnit`, ...) and returns
    /// the job's object path, which its `JobRemoved` names.
    fn job_call(&self, msg: Message) -> Result<String, CallError> {
        self.call(msg)?
            .read1::<dbus::Path>()
            .map(|p| p.to_string())
            .map_err(bad_args)
    }

    /// The object path of a unit; `LoadUnit` also finds units systemd has garbage-collected.
    fn unit_path(&self, unit: &str) -> Result<dbus::Path<'static>, CallError> {
        self.call(manager_call("LoadUnit")?.append1(unit))?
            .read1::<dbus::Path>()
            .map(|p| p.into_static())
            .map_err(|e| CallError::BadReply(e.to_string()))
    }

    /// One property of an object (`None`: the call failed or the type is not `T`).
    fn property<T>(&self, path: &dbus::Path<'static>, iface: &str, name: &str) -> Option<T>
    where
        T: Arg + for<'a> Get<'a>,
    {
        let call = properties_call(path, "Get").ok()?.append2(iface, name);
        self.call(call)
            .ok()?
            .read1::<Variant<T>>()
            .ok()
            .map(|v| v.0)
    }

    /// A call whose answer is not needed (clean-up whose failure changes nothing).
    fn call_ignoring(&self, msg: Result<Message, CallError>) {
        if let Ok(m) = msg {
            let _ = self.call(m);
        }
    }
}

/// The libdbus client: the connection to the node's bus that systemd is on.
pub struct SystemdBus {
    conn: Connection,
    call_timeout: std::time::Duration,
}

impl SystemdBus {
    pub fn new(conn: Connection) -> Self {
        SystemdBus {
            conn,
            call_timeout: call_timeout(),
        }
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Subscribes to what the agent needs from systemd.
    pub fn subscribe(&self) -> Result<(), SubscribeError> {
        for rule in BASE_RULES {
            self.conn
                .add_match_no_cb(rule)
                .map_err(|e| SubscribeError::Match(e.message().unwrap_or("").to_string()))?;
        }
        self.call(manager_call("Subscribe")?)?;
        Ok(())
    }
}

/// Where systemd's unit objects live: the prefix plus the escaped unit name.
pub const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";

/// What the agent always hears from systemd: the Manager's signals (jobs, units appearing and
/// going) and the property changes of jobs. Units' property changes, a dozen large signals per
/// job, only for the units watched (`unit_properties_rule`).
const BASE_RULES: [&str; 2] = [
    "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.systemd1.Manager'",
    "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',path_namespace='/org/freedesktop/systemd1/job'",
];

/// The match rule for the property changes of one unit (`None`: of every unit).
// [impl->req~agent.unit-match-rules~1]
pub fn unit_properties_rule(unit: Option<&str>) -> String {
    let signals = "type='signal',sender='org.freedesktop.systemd1',\
                   interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'";
    match unit {
        // The escaped element is [A-Za-z0-9_] only: nothing to quote.
        Some(u) => format!(
            "{signals},path='{UNIT_PATH_PREFIX}{}'",
            escape_path_element(u)
        ),
        None => format!("{signals},path_namespace='/org/freedesktop/systemd1/unit'"),
    }
}

impl Systemd for SystemdBus {
    /// Signals that arrive meanwhile stay queued in libdbus for the core loop, in order,
    /// after this answer.
    fn call(&self, msg: Message) -> Result<Message, CallError> {
        // A blocking call may take up to its timeout, which is shorter than WatchdogSec
        // (`call_timeout`): pinging right before it, whenever the last ping was, keeps even
        // a call that runs into its timeout from starving the watchdog.
        // [impl->req~ops.watchdog-call-timeout~1]
        hirte_common::notify::watchdog_ping();
        self.conn
            .channel()
            .send_with_reply_and_block(msg, self.call_timeout)
            .map_err(|e| CallError::from_dbus(&e))
    }

    fn send(&self, msg: Message) {
        let _ = self.conn.send(msg);
    }

    fn set_match(&self, rule: &str, on: bool) -> Result<(), CallError> {
        // AddMatch/RemoveMatch are calls to the bus daemon, bounded by the dbus crate (10 s).
        hirte_common::notify::watchdog_ping();
        if on {
            self.conn.add_match_no_cb(rule)
        } else {
            self.conn.remove_match_no_cb(rule)
        }
        .map_err(|e| CallError::from_dbus(&e))
    }
}

/// The timeout of one call to systemd: `SYSTEMD_CALL_TIMEOUT`, shortened under a
/// `WatchdogSec` too short for it (see `notify::call_timeout_under_watchdog`).
pub fn call_timeout() -> std::time::Duration {
    hirte_common::notify::call_timeout_under_watchdog(
        SYSTEMD_CALL_TIMEOUT,
        hirte_common::notify::watchdog_interval(),
    )
}

/// Why the agent could not subscribe to systemd's signals.
#[derive(Debug)]
pub enum SubscribeError {
    Match(String),
    Call(CallError),
}

impl From<CallError> for SubscribeError {
    fn from(e: CallError) -> Self {
        SubscribeError::Call(e)
    }
}

impl fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscribeError::Match(e) => write!(f, "cannot add match: {e}"),
            SubscribeError::Call(e) => write!(f, "Subscribe: {e}"),
        }
    }
}

pub fn manager_call(member: &str) -> Result<Message, CallError> {
    Message::new_method_call(DEST, PATH, MANAGER_IFACE, member).map_err(CallError::BadReply)
}

pub fn properties_call(path: &dbus::Path<'static>, member: &str) -> Result<Message, CallError> {
    Message::new_method_call(DEST, path.clone(), PROPERTIES_IFACE, member)
        .map_err(CallError::BadReply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_their_dbus_names() {
        assert_eq!(bad_args("x").name(), error::INVALID_ARGS);
        assert_eq!(CallError::Busy("b".into()).to_string(), "b");
        let e = CallError::UnknownMethod("Nope".into());
        assert_eq!(e.name(), "org.freedesktop.DBus.Error.UnknownMethod");
        assert_eq!(e.to_string(), "unknown method 'Nope'");
        let e = CallError::Dbus {
            name: "org.freedesktop.systemd1.NoSuchUnit".into(),
            message: "Unit x.service not loaded.".into(),
        };
        assert_eq!(e.name(), "org.freedesktop.systemd1.NoSuchUnit");
        assert_eq!(e.to_string(), "Unit x.service not loaded.");
    }
}
