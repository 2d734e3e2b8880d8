//! Who did what: one structured record per D-Bus call that changes something (issue 11,
//! item 4), written when the call is answered, with the caller's UID, PID and command name
//! (the bus daemon's credentials of the caller, cached per connection), the node, unit, job
//! and result. journald fields `CALLER_UID=`, `CALLER_PID=`, `CALLER_COMM=`, `NODE=`,
//! `UNIT=`, `JOB=`; the text starts with the operator's verb (`start`, `stop`, ...), so the
//! guide's `journalctl -u hirte | grep -E "start|stop|restart"` shows who did it. Records
//! are written whatever the log level, and the shipped unit turns journald's rate limit off.
//!
//! It sees calls before the API handles them and every answer as it leaves (replies sent
//! at once by dbus-crossroads and those completed later from the outbox alike).

use dbus::blocking::Connection;
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::{AUDIT_CREDENTIALS_TIMEOUT, MAX_AUDIT_CALLERS, MAX_AUDIT_OPEN};
use hirte_common::names::unescape_path_element;
use hirte_common::protocol::{
    JOB_IFACE, JOB_PATH_PREFIX, MANAGER_IFACE, NODE_IFACE, NODE_PATH_PREFIX,
};
use std::collections::HashMap;

/// The calls that change something, and the verb their record starts with.
// [impl->req~audit.records~1]
fn verb(iface: &str, member: &str) -> Option<&'static str> {
    let v = match (iface, member) {
        (NODE_IFACE, "StartUnit") => "start",
        (NODE_IFACE, "StopUnit") => "stop",
        (NODE_IFACE, "RestartUnit") => "restart",
        (NODE_IFACE, "ReloadUnit") => "reload",
        (NODE_IFACE, "StartTransientUnit") => "start-transient",
        (NODE_IFACE, "EnableUnitFiles") => "enable",
        (NODE_IFACE, "DisableUnitFiles") => "disable",
        (NODE_IFACE, "KillUnit") => "kill",
        (NODE_IFACE, "FreezeUnit") => "freeze",
        (NODE_IFACE, "ThawUnit") => "thaw",
        (NODE_IFACE, "SetUnitProperties") => "set-property",
        (NODE_IFACE, "ResetFailed" | "ResetFailedUnit") => "reset-failed",
        (NODE_IFACE, "SetDefaultTarget") => "set-default",
        (NODE_IFACE, "Reload") => "daemon-reload",
        (NODE_IFACE, "Exec") => "exec",
        (NODE_IFACE, "SetLogLevel") | (MANAGER_IFACE, "SetLogLevel") => "set-loglevel",
        (MANAGER_IFACE, "EnableMetrics") => "metrics-on",
        (MANAGER_IFACE, "DisableMetrics") => "metrics-off",
        (JOB_IFACE, "Cancel") => "cancel",
        _ => return None,
    };
    Some(v)
}

/// The bus daemon's credentials of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: String,
    pub pid: String,
    pub comm: String,
}

impl Caller {
    fn unknown() -> Caller {
        Caller {
            uid: "?".into(),
            pid: "?".into(),
            comm: "?".into(),
        }
    }
}

/// A call seen, waiting for its answer.
struct Open {
    caller: Caller,
    verb: &'static str,
    node: String,
    unit: String,
    job: String,
}

#[derive(Default)]
pub struct Audit {
    callers: HashMap<String, Caller>,
    open: HashMap<(String, u32), Open>,
}

impl Audit {
    /// A method call arrived: if it changes something, note it until it is answered.
    pub fn on_call(&mut self, conn: &Connection, msg: &Message) {
        let (Some(iface), Some(member)) = (msg.interface(), msg.member()) else {
            return;
        };
        let Some(verb) = verb(&iface, &member) else {
            return;
        };
        let sender = msg.sender().map(|s| s.to_string()).unwrap_or_default();
        let caller = self.caller(&sender, |s| credentials(conn, s));
        let path = msg.path().map(|p| p.to_string()).unwrap_or_default();
        let node = path
            .strip_prefix(NODE_PATH_PREFIX)
            .and_then(|p| p.strip_prefix('/'))
            .and_then(unescape_path_element)
            .unwrap_or_default();
        let job = path
            .strip_prefix(JOB_PATH_PREFIX)
            .and_then(|p| p.strip_prefix('/'))
            .unwrap_or_default()
            .to_string();
        let unit = first_unit(msg, &member);
        let open = Open {
            caller,
            verb,
            node,
            unit,
            job,
        };
        let serial = msg.get_serial().unwrap_or(0);
        if let Some((open, result)) = self.note(sender, serial, msg.get_no_reply(), open) {
            record(&open, result);
        }
    }

    /// Keeps `open` until its answer, or hands it back with the result to record at once:
    /// no answer requested, or [`MAX_AUDIT_OPEN`] calls already waiting.
    fn note(
        &mut self,
        sender: String,
        serial: u32,
        no_reply: bool,
        open: Open,
    ) -> Option<(Open, &'static str)> {
        if no_reply {
            Some((open, "sent (no answer requested)"))
        } else if self.open.len() >= MAX_AUDIT_OPEN {
            Some((open, "answer not tracked (too many calls in flight)"))
        } else {
            self.open.insert((sender, serial), open);
            None
        }
    }

    /// A message leaves for the bus: if it answers a noted call, the record is written.
    pub fn on_reply(&mut self, msg: &Message) {
        let is_answer = matches!(
            msg.msg_type(),
            MessageType::MethodReturn | MessageType::Error
        );
        let (true, Some(dest), Some(serial)) =
            (is_answer, msg.destination(), msg.get_reply_serial())
        else {
            return;
        };
        let Some(mut open) = self.open.remove(&(dest.to_string(), serial)) else {
            return;
        };
        let result = match msg.msg_type() {
            MessageType::Error => match msg.duplicate().map(|mut m| m.as_result().err()) {
                Ok(Some(e)) => format!(
                    "refused: {}: {}",
                    e.name().unwrap_or("?"),
                    e.message().unwrap_or("")
                ),
                _ => "refused".to_string(),
            },
            _ => match msg.read1::<dbus::Path>() {
                Ok(p) if p.starts_with(JOB_PATH_PREFIX) => {
                    open.job = p.rsplit('/').next().unwrap_or_default().to_string();
                    format!("job {} queued", open.job)
                }
                _ => match (open.verb, msg.read1::<i32>()) {
                    ("exec", Ok(status)) => format!("exit status {status}"),
                    _ => "done".to_string(),
                },
            },
        };
        record(&open, &result);
    }

    /// A client left the bus: its credentials are forgotten (the name is never reused).
    pub fn forget(&mut self, name: &str) {
        self.callers.remove(name);
    }

    /// The cached credentials of `sender`, else those `lookup` gets from the bus daemon
    /// (`None`: no answer within [`AUDIT_CREDENTIALS_TIMEOUT`], or an error: all `?`).
    fn caller(&mut self, sender: &str, lookup: impl FnOnce(&str) -> Option<Caller>) -> Caller {
        if let Some(c) = self.callers.get(sender) {
            return c.clone();
        }
        let Some(c) = lookup(sender) else {
            return Caller::unknown();
        };
        if self.callers.len() >= MAX_AUDIT_CALLERS {
            self.callers.clear();
        }
        self.callers.insert(sender.to_string(), c.clone());
        c
    }
}

/// The unit a call is about: its first string argument for unit calls.
fn first_unit(msg: &Message, member: &str) -> String {
    match member {
        "EnableUnitFiles" | "DisableUnitFiles" => msg
            .read1::<Vec<String>>()
            .map(|f| f.join(","))
            .unwrap_or_default(),
        "Exec" => msg
            .read1::<Vec<String>>()
            .map(|a| a.join(" "))
            .unwrap_or_default(),
        "Reload" | "ResetFailed" | "Cancel" | "EnableMetrics" | "DisableMetrics" => String::new(),
        "SetLogLevel" => msg.read1::<String>().unwrap_or_default(),
        _ => msg.read1::<String>().unwrap_or_default(),
    }
}

/// `GetConnectionCredentials` of the bus daemon, and `/proc/PID/comm`.
fn credentials(conn: &Connection, sender: &str) -> Option<Caller> {
    if sender.is_empty() {
        return None;
    }
    let proxy = conn.with_proxy(
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        AUDIT_CREDENTIALS_TIMEOUT,
    );
    let (props,): (dbus::arg::PropMap,) = proxy
        .method_call(
            "org.freedesktop.DBus",
            "GetConnectionCredentials",
            (sender,),
        )
        .ok()?;
    let num = |k: &str| {
        props
            .get(k)
            .and_then(|v| v.0.as_u64())
            .map(|n| n.to_string())
    };
    let pid = num("ProcessID");
    let comm = pid
        .as_ref()
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
        .map(|c| c.trim().to_string());
    Some(Caller {
        uid: num("UnixUserID").unwrap_or_else(|| "?".into()),
        pid: pid.unwrap_or_else(|| "?".into()),
        comm: comm.unwrap_or_else(|| "?".into()),
    })
}

/// Writes one record, whatever the log level.
// [impl->req~audit.records~1]
fn record(o: &Open, result: &str) {
    let what = match (o.unit.is_empty(), o.node.is_empty()) {
        (false, false) => format!(" '{}' on node '{}'", o.unit, o.node),
        (true, false) => format!(" on node '{}'", o.node),
        (false, true) => format!(" '{}'", o.unit),
        (true, true) if !o.job.is_empty() => format!(" job {}", o.job),
        (true, true) => String::new(),
    };
    hirte_common::log::audit(
        &[
            ("CALLER_UID", o.caller.uid.as_str()),
            ("CALLER_PID", o.caller.pid.as_str()),
            ("CALLER_COMM", o.caller.comm.as_str()),
            ("NODE", o.node.as_str()),
            ("UNIT", o.unit.as_str()),
            ("JOB", o.job.as_str()),
        ],
        format_args!(
            "{}{what} by uid {} (pid {}, {}): {result}",
            o.verb, o.caller.uid, o.caller.pid, o.caller.comm
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~audit.records~1]
    #[test]
    fn every_changing_call_has_a_verb_and_reads_do_not() {
        for (i, m) in [
            (NODE_IFACE, "StartUnit"),
            (NODE_IFACE, "Exec"),
            (NODE_IFACE, "SetUnitProperties"),
            (JOB_IFACE, "Cancel"),
            (MANAGER_IFACE, "EnableMetrics"),
            (MANAGER_IFACE, "SetLogLevel"),
        ] {
            assert!(verb(i, m).is_some(), "{m}");
        }
        for (i, m) in [
            (NODE_IFACE, "ListUnits"),
            (NODE_IFACE, "GetUnitProperty"),
            (MANAGER_IFACE, "ListNodes"),
            (MANAGER_IFACE, "CreateMonitor"),
        ] {
            assert!(verb(i, m).is_none(), "{m}");
        }
        assert_eq!(verb(NODE_IFACE, "RestartUnit"), Some("restart"));
    }

    #[test]
    fn the_unit_is_the_first_argument() {
        let m = Message::new_method_call("x.y", "/a", NODE_IFACE, "StartUnit")
            .unwrap()
            .append2("web.service", "replace");
        assert_eq!(first_unit(&m, "StartUnit"), "web.service");
        let m = Message::new_method_call("x.y", "/a", NODE_IFACE, "EnableUnitFiles")
            .unwrap()
            .append3(vec!["a.service", "b.service"], false, false);
        assert_eq!(first_unit(&m, "EnableUnitFiles"), "a.service,b.service");
    }

    fn open_call(n: usize) -> Open {
        Open {
            caller: Caller::unknown(),
            verb: "start",
            node: "n".into(),
            unit: format!("u{n}.service"),
            job: String::new(),
        }
    }

    fn known(n: usize) -> Option<Caller> {
        Some(Caller {
            uid: "0".into(),
            pid: n.to_string(),
            comm: "hirtectl".into(),
        })
    }

    // [utest->req~audit.records~1]
    #[test]
    fn the_open_table_records_a_call_at_once_beyond_max_audit_open() {
        let mut audit = Audit::default();
        for n in 0..MAX_AUDIT_OPEN {
            let serial = u32::try_from(n).unwrap();
            assert!(audit
                .note(":1.1".into(), serial, false, open_call(n))
                .is_none());
        }
        let (open, result) = audit
            .note(":1.1".into(), u32::MAX, false, open_call(MAX_AUDIT_OPEN))
            .expect("the call beyond the bound is recorded at once");
        assert_eq!(result, "answer not tracked (too many calls in flight)");
        assert_eq!(open.unit, format!("u{MAX_AUDIT_OPEN}.service"));
        assert_eq!(audit.open.len(), MAX_AUDIT_OPEN);
        // An answer frees a place: the next call is tracked again.
        assert!(audit.open.remove(&(":1.1".to_string(), 0)).is_some());
        assert!(audit.note(":1.2".into(), 1, false, open_call(0)).is_none());
    }

    // [utest->req~audit.records~1]
    #[test]
    fn the_caller_cache_starts_over_beyond_max_audit_callers() {
        let mut audit = Audit::default();
        let mut asked = 0;
        for n in 0..MAX_AUDIT_CALLERS {
            audit.caller(&format!(":1.{n}"), |_| {
                asked += 1;
                known(n)
            });
        }
        assert_eq!(asked, MAX_AUDIT_CALLERS);
        assert_eq!(audit.callers.len(), MAX_AUDIT_CALLERS);
        // Cached: no second question to the bus daemon.
        let c = audit.caller(":1.0", |_| panic!("asked again"));
        assert_eq!(c.pid, "0");
        // Client 1025: the cache starts over and holds only it.
        let c = audit.caller(":1.9999", |_| known(9999));
        assert_eq!(c.pid, "9999");
        assert_eq!(audit.callers.len(), 1);
        // The first client's credentials are asked for again, once.
        let mut again = 0;
        let c = audit.caller(":1.0", |_| {
            again += 1;
            known(0)
        });
        assert_eq!((again, c.pid.as_str()), (1, "0"));
    }

    // [utest->req~audit.records~1]
    #[test]
    fn no_answer_about_the_credentials_makes_every_field_unknown() {
        let mut audit = Audit::default();
        // `credentials` gives `None` when the bus daemon does not answer in time.
        let c = audit.caller(":1.7", |_| None);
        assert_eq!(c, Caller::unknown());
        assert_eq!(
            (c.uid.as_str(), c.pid.as_str(), c.comm.as_str()),
            ("?", "?", "?")
        );
        // Not cached: the next call of that client asks again.
        let c = audit.caller(":1.7", |_| known(7));
        assert_eq!(c.pid, "7");
    }

    /// A bus daemon of our own (the real `dbus-daemon`), stopped with SIGSTOP so that it
    /// does not answer; resumed and ended on drop.
    struct Daemon(std::process::Child);

    impl Drop for Daemon {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    // [utest->req~audit.records~1]
    #[test]
    fn a_bus_daemon_that_does_not_answer_gives_unknown_credentials_after_the_timeout() {
        use std::io::BufRead;
        let child = std::process::Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("dbus-daemon (ci/setup installs it)");
        let mut daemon = Daemon(child);
        let mut address = String::new();
        std::io::BufReader::new(daemon.0.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        let mut channel = dbus::channel::Channel::open_private(address.trim()).unwrap();
        channel.register().unwrap();
        let conn = Connection::from(channel);
        let me = conn.unique_name().to_string();
        let mut audit = Audit::default();
        // Answered: real credentials (ours).
        let c = audit.caller(&me, |s| credentials(&conn, s));
        assert_eq!(c.pid, std::process::id().to_string());
        audit.forget(&me);

        let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.0.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let t0 = std::time::Instant::now();
        let c = audit.caller(&me, |s| credentials(&conn, s));
        let took = t0.elapsed();
        assert_eq!(c, Caller::unknown());
        // Tolerance: scheduling under load.
        assert!(
            took >= AUDIT_CREDENTIALS_TIMEOUT
                && took < AUDIT_CREDENTIALS_TIMEOUT + std::time::Duration::from_secs(2),
            "no answer took {took:?}, not {AUDIT_CREDENTIALS_TIMEOUT:?}"
        );
    }
}
