//! The D-Bus calls the bench times: systemd's own API on a node's bus, and the manager's.

use std::time::{Duration, Instant};

use dbus::arg::{RefArg, Variant};
use dbus::blocking::Connection;
use dbus::message::MessageType;
use dbus::Message;

use crate::bench::error::{BenchError, Result};

pub const SD_DEST: &str = "org.freedesktop.systemd1";
pub const SD_PATH: &str = "/org/freedesktop/systemd1";
pub const SD_MANAGER: &str = "org.freedesktop.systemd1.Manager";
pub const SD_UNIT: &str = "org.freedesktop.systemd1.Unit";
pub const PROPS: &str = "org.freedesktop.DBus.Properties";
pub const HIRTE_DEST: &str = "org.containers.hirte";
pub const HIRTE_PATH: &str = "/org/containers/hirte";
pub const HIRTE_MANAGER: &str = "org.containers.hirte.Manager";
pub const HIRTE_NODE: &str = "org.containers.hirte.Node";

/// Bound of every single call or job wait of the bench.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub fn method(dest: &str, path: &str, iface: &str, member: &str) -> Result<Message> {
    Message::new_method_call(dest, path, iface, member)
        .map_err(|e| BenchError::failed(format!("building {iface}.{member}: {e}")))
}

/// Sends `msg` and waits (bounded) for its answer; an error answer is an error.
pub fn call(conn: &Connection, msg: Message) -> Result<Message> {
    let what = format!(
        "{}.{}",
        msg.interface().map(|i| i.to_string()).unwrap_or_default(),
        msg.member().map(|m| m.to_string()).unwrap_or_default()
    );
    conn.channel()
        .send_with_reply_and_block(msg, CALL_TIMEOUT)
        .map_err(|e| BenchError::dbus(what, &e))
}

/// `(job path, result)` of a `JobRemoved` signal, systemd's `(uoss)` or the manager's `(uosss)`.
fn job_removed(m: &Message) -> Option<(String, String)> {
    if m.msg_type() != MessageType::Signal || m.member().as_deref() != Some("JobRemoved") {
        return None;
    }
    if let Ok((_, p, _, _, r)) = m.read5::<u32, dbus::Path, &str, &str, &str>() {
        return Some((p.to_string(), r.to_string()));
    }
    m.read4::<u32, dbus::Path, &str, &str>()
        .ok()
        .map(|(_, p, _, r)| (p.to_string(), r.to_string()))
}

/// Sends a call that answers a job path (`StartUnit`, `Node.StartUnit`, ...) and waits for
/// that job's `JobRemoved`; returns the job's result. Signals of other jobs are skipped.
pub fn job_roundtrip(conn: &Connection, call: Message) -> Result<String> {
    let ch = conn.channel();
    let serial = ch
        .send(call)
        .map_err(|()| BenchError::failed("cannot send a job call"))?;
    let deadline = Instant::now() + CALL_TIMEOUT;
    let mut job: Option<String> = None;
    // JobRemoved of our job can only follow the reply, but keep a few in case of reordering.
    let mut early: Vec<(String, String)> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BenchError::failed(format!(
                "job {job:?} did not finish within {CALL_TIMEOUT:?}"
            )));
        }
        let Some(mut m) = ch
            .blocking_pop_message(left)
            .map_err(|e| BenchError::dbus("waiting for a job", &e))?
        else {
            continue;
        };
        if m.get_reply_serial() == Some(serial) {
            if let Err(e) = m.as_result() {
                return Err(BenchError::dbus("job call", &e));
            }
            let p: dbus::Path = m
                .read1()
                .map_err(|e| BenchError::failed(format!("job call answered {e}")))?;
            let p = p.to_string();
            if let Some((_, r)) = early.iter().find(|(q, _)| *q == p) {
                return Ok(r.clone());
            }
            job = Some(p);
            continue;
        }
        if let Some((p, r)) = job_removed(&m) {
            match &job {
                Some(j) if *j == p => return Ok(r),
                None if early.len() < 64 => early.push((p, r)),
                _ => {}
            }
        }
    }
}

/// A string property read: the answer `v` must hold a string.
pub fn read_string_variant(m: &Message) -> Result<String> {
    let v: Variant<Box<dyn RefArg>> = m
        .read1()
        .map_err(|e| BenchError::failed(format!("property answer: {e}")))?;
    v.0.as_str()
        .map(str::to_string)
        .ok_or_else(|| BenchError::failed("property is not a string"))
}

/// `systemd1.Manager.<member>(unit, "replace")` on a node's bus.
pub fn sd_job_call(member: &str, unit: &str) -> Result<Message> {
    Ok(method(SD_DEST, SD_PATH, SD_MANAGER, member)?.append2(unit, "replace"))
}

/// `hirte Node.<member>(unit, "replace")` on the manager's bus.
pub fn node_job_call(node_path: &str, member: &str, unit: &str) -> Result<Message> {
    Ok(method(HIRTE_DEST, node_path, HIRTE_NODE, member)?.append2(unit, "replace"))
}

/// Object path of a node from `Manager.GetNode`.
pub fn node_path(conn: &Connection, node: &str) -> Result<String> {
    let r = call(
        conn,
        method(HIRTE_DEST, HIRTE_PATH, HIRTE_MANAGER, "GetNode")?.append1(node),
    )?;
    let p: dbus::Path = r
        .read1()
        .map_err(|e| BenchError::failed(format!("GetNode answered {e}")))?;
    Ok(p.to_string())
}

/// Object path of a unit from systemd's `LoadUnit`.
pub fn unit_path(conn: &Connection, unit: &str) -> Result<String> {
    let r = call(
        conn,
        method(SD_DEST, SD_PATH, SD_MANAGER, "LoadUnit")?.append1(unit),
    )?;
    let p: dbus::Path = r
        .read1()
        .map_err(|e| BenchError::failed(format!("LoadUnit answered {e}")))?;
    Ok(p.to_string())
}

/// Receives the manager's `JobRemoved` signals on this connection.
pub fn watch_manager_jobs(conn: &Connection) -> Result<()> {
    let rule = format!(
        "type='signal',sender='{HIRTE_DEST}',path='{HIRTE_PATH}',interface='{HIRTE_MANAGER}',member='JobRemoved'"
    );
    conn.add_match_no_cb(&rule)
        .map_err(|e| BenchError::dbus("AddMatch JobRemoved", &e))
}

/// Receives systemd's `JobRemoved` on this node-bus connection. systemd sends it to the
/// job's client and its subscribers as a broadcast, so the bus delivers it only through a match.
pub fn watch_systemd_jobs(conn: &Connection) -> Result<()> {
    let rule = format!(
        "type='signal',sender='{SD_DEST}',path='{SD_PATH}',interface='{SD_MANAGER}',member='JobRemoved'"
    );
    conn.add_match_no_cb(&rule)
        .map_err(|e| BenchError::dbus("AddMatch systemd JobRemoved", &e))
}

/// `(node, state)` rows of `Manager.ListNodes`.
pub fn list_nodes(conn: &Connection) -> Result<Vec<(String, String)>> {
    let r = call(
        conn,
        method(HIRTE_DEST, HIRTE_PATH, HIRTE_MANAGER, "ListNodes")?,
    )?;
    let rows: Vec<(String, dbus::Path, String, String)> = r
        .read1()
        .map_err(|e| BenchError::failed(format!("ListNodes answered {e}")))?;
    Ok(rows.into_iter().map(|(n, _, s, _)| (n, s)).collect())
}
