//! Calls to systemd's D-Bus API (`org.freedesktop.systemd1`), each with a bounded timeout.

use dbus::blocking::Connection;
use dbus::Message;
use hirte_common::bounds::SYSTEMD_CALL_TIMEOUT;

pub const DEST: &str = "org.freedesktop.systemd1";
pub const PATH: &str = "/org/freedesktop/systemd1";
pub const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
pub const JOB_IFACE: &str = "org.freedesktop.systemd1.Job";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";

/// A failed systemd call: D-Bus error name and message, relayed to the caller unchanged.
pub struct CallError {
    pub name: String,
    pub message: String,
}

impl CallError {
    fn from_dbus(e: &dbus::Error) -> Self {
        CallError {
            name: e
                .name()
                .unwrap_or("org.freedesktop.DBus.Error.Failed")
                .to_string(),
            message: e.message().unwrap_or("systemd call failed").to_string(),
        }
    }

    pub fn new(name: &str, message: impl Into<String>) -> Self {
        CallError {
            name: name.to_string(),
            message: message.into(),
        }
    }
}

/// Sends one call and waits (bounded) for its answer. Signals that arrive meanwhile stay queued
/// in libdbus for the core loop, in order, after this answer.
pub fn call(conn: &Connection, msg: Message) -> Result<Message, CallError> {
    // A blocking call may take up to its timeout: feed the watchdog first, so only a call
    // that outlasts WatchdogSec on its own, not a series of slow ones, trips it.
    hirte_common::notify::watchdog_tick();
    conn.channel()
        .send_with_reply_and_block(msg, SYSTEMD_CALL_TIMEOUT)
        .map_err(|e| CallError::from_dbus(&e))
}

/// Sends a call that queues a job (`StartUnit`, `StartTransientUnit`, ...) and returns the
/// job's object path, which its `JobRemoved` names.
pub fn job_call(conn: &Connection, msg: Message) -> Result<String, CallError> {
    call(conn, msg)?
        .read1::<dbus::Path>()
        .map(|p| p.to_string())
        .map_err(|e| CallError::new(hirte_common::protocol::error::INVALID_ARGS, e.to_string()))
}

pub fn manager_call(member: &str) -> Result<Message, CallError> {
    Message::new_method_call(DEST, PATH, MANAGER_IFACE, member)
        .map_err(|e| CallError::new("org.freedesktop.DBus.Error.InvalidArgs", e))
}

/// The object path of a unit; `LoadUnit` also finds units systemd has garbage-collected.
pub fn unit_path(conn: &Connection, unit: &str) -> Result<dbus::Path<'static>, CallError> {
    let reply = call(conn, manager_call("LoadUnit")?.append1(unit))?;
    reply
        .read1::<dbus::Path>()
        .map(|p| p.into_static())
        .map_err(|e| CallError::new("org.freedesktop.DBus.Error.InvalidArgs", e.to_string()))
}

pub fn properties_call(path: &dbus::Path<'static>, member: &str) -> Result<Message, CallError> {
    Message::new_method_call(DEST, path.clone(), PROPERTIES_IFACE, member)
        .map_err(|e| CallError::new("org.freedesktop.DBus.Error.InvalidArgs", e))
}
