//! hirtectl's connection to the manager on the system bus, and its one-line errors.

use dbus::arg::{AppendAll, ReadAll};
use dbus::blocking::{Connection, Proxy};
use dbus::Message;
use hirte_common::protocol;
use std::fmt;
use std::time::{Duration, Instant};

/// Longest hirtectl waits for one answer from the manager.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything that can go wrong, each printed as one line.
// [impl->req~ctl.errors~1]
#[derive(Debug)]
pub enum CtlError {
    NoBus(String),
    ManagerNotRunning,
    Denied(String),
    NoReply,
    Call {
        name: String,
        message: String,
    },
    JobFailed {
        unit: String,
        op: String,
        result: String,
    },
    Usage(String),
    NotFound(String),
    /// Any other one-line failure, with the exit status it maps to.
    Failed {
        message: String,
        code: u8,
    },
}

impl CtlError {
    /// A plain failure with exit status 1.
    pub fn failed(message: impl Into<String>) -> Self {
        CtlError::Failed {
            message: message.into(),
            code: 1,
        }
    }
}

impl CtlError {
    /// Exit status: 4 for "no such unit/node" as systemctl does, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::NotFound(_) => 4,
            CtlError::Call { name, .. }
                if name == protocol::error::NODE_NOT_FOUND
                    || name == "org.freedesktop.systemd1.NoSuchUnit"
                    || name == "org.freedesktop.DBus.Error.FileNotFound" =>
            {
                4
            }
            CtlError::Usage(_) => 2,
            CtlError::Failed { code, .. } => *code,
            _ => 1,
        }
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::NoBus(e) => write!(f, "cannot connect to the system bus: {e}"),
            CtlError::ManagerNotRunning => write!(
                f,
                "the Hirte manager is not running (no owner of {} on the system bus)",
                protocol::MANAGER_BUS_NAME
            ),
            CtlError::Denied(e) => write!(f, "permission denied: {e}"),
            CtlError::NoReply => write!(
                f,
                "no answer from the manager within {}s",
                CALL_TIMEOUT.as_secs()
            ),
            CtlError::Call { name, message } => {
                if message.is_empty() {
                    write!(f, "{name}")
                } else {
                    write!(f, "{message}")
                }
            }
            CtlError::JobFailed { unit, op, result } => {
                write!(f, "{op} of {unit} ended with result '{result}'")
            }
            CtlError::Usage(e) => write!(f, "{e}"),
            CtlError::NotFound(e) => write!(f, "{e}"),
            CtlError::Failed { message, .. } => write!(f, "{message}"),
        }
    }
}

impl From<dbus::Error> for CtlError {
    fn from(e: dbus::Error) -> Self {
        let name = e.name().unwrap_or("").to_string();
        let message = e.message().unwrap_or("").to_string();
        match name.as_str() {
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner" => CtlError::ManagerNotRunning,
            "org.freedesktop.DBus.Error.AccessDenied" => CtlError::Denied(message),
            "org.freedesktop.DBus.Error.NoReply" | "org.freedesktop.DBus.Error.Timeout" => {
                CtlError::NoReply
            }
            _ => CtlError::Call { name, message },
        }
    }
}

pub struct Client {
    pub conn: Connection,
}

impl Client {
    pub fn connect() -> Result<Self, CtlError> {
        let conn = Connection::new_system()
            .map_err(|e| CtlError::NoBus(e.message().unwrap_or("unknown error").to_string()))?;
        Ok(Client { conn })
    }

    fn proxy<'a>(&'a self, path: &'a str) -> Proxy<'a, &'a Connection> {
        self.conn
            .with_proxy(protocol::MANAGER_BUS_NAME, path, CALL_TIMEOUT)
    }

    pub fn call<A: AppendAll, R: ReadAll + 'static>(
        &self,
        path: &str,
        iface: &str,
        member: &str,
        args: A,
    ) -> Result<R, CtlError> {
        Ok(self.proxy(path).method_call(iface, member, args)?)
    }

    /// [`Client::call`] with its own bound, for calls that legitimately take long (`Exec`).
    pub fn call_within<A: AppendAll, R: ReadAll + 'static>(
        &self,
        path: &str,
        iface: &str,
        member: &str,
        args: A,
        timeout: Duration,
    ) -> Result<R, CtlError> {
        let proxy = self
            .conn
            .with_proxy(protocol::MANAGER_BUS_NAME, path, timeout);
        Ok(proxy.method_call(iface, member, args)?)
    }

    /// Receives the signals `rule` selects (a D-Bus match rule).
    pub fn add_match(&self, rule: &str) -> Result<(), CtlError> {
        self.conn.add_match_no_cb(rule)?;
        Ok(())
    }

    /// Receives `NameOwnerChanged` of the manager's name, so waits end when it stops.
    pub fn watch_manager_owner(&self) -> Result<(), CtlError> {
        self.add_match(&format!(
            "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{}'",
            protocol::MANAGER_BUS_NAME
        ))
    }

    /// Fails with `ManagerNotRunning` unless the manager's name has an owner: for commands that
    /// otherwise only listen and would wait for nothing.
    pub fn require_manager(&self) -> Result<(), CtlError> {
        let bus = self.conn.with_proxy(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            CALL_TIMEOUT,
        );
        let (owned,): (bool,) = bus.method_call(
            "org.freedesktop.DBus",
            "NameHasOwner",
            (protocol::MANAGER_BUS_NAME,),
        )?;
        if owned {
            Ok(())
        } else {
            Err(CtlError::ManagerNotRunning)
        }
    }

    /// The next incoming message within `timeout`, if any.
    pub fn next_message(&self, timeout: Duration) -> Result<Option<Message>, CtlError> {
        Ok(self.conn.channel().blocking_pop_message(timeout)?)
    }

    pub fn manager<A: AppendAll, R: ReadAll + 'static>(
        &self,
        member: &str,
        args: A,
    ) -> Result<R, CtlError> {
        self.call(
            protocol::MANAGER_PATH,
            protocol::MANAGER_IFACE,
            member,
            args,
        )
    }

    /// The object path of a node, or a one-line "not found" error.
    pub fn node_path(&self, node: &str) -> Result<String, CtlError> {
        let (p,): (dbus::Path<'static>,) = self.manager("GetNode", (node,))?;
        Ok(p.to_string())
    }

    pub fn node<A: AppendAll, R: ReadAll + 'static>(
        &self,
        node: &str,
        member: &str,
        args: A,
    ) -> Result<R, CtlError> {
        let path = self.node_path(node)?;
        self.call(&path, protocol::NODE_IFACE, member, args)
    }

    pub fn property<T: for<'b> dbus::arg::Get<'b> + 'static>(
        &self,
        path: &str,
        iface: &str,
        name: &str,
    ) -> Result<T, CtlError> {
        use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
        Ok(self.proxy(path).get(iface, name)?)
    }

    /// Starts watching `JobRemoved` and the manager's presence; call before creating a job.
    pub fn watch_jobs(&self) -> Result<(), CtlError> {
        let rule = format!(
            "type='signal',sender='{}',path='{}',interface='{}',member='JobRemoved'",
            protocol::MANAGER_BUS_NAME,
            protocol::MANAGER_PATH,
            protocol::MANAGER_IFACE
        );
        self.conn.add_match_no_cb(&rule)?;
        self.watch_manager_owner()
    }

    /// Waits for the `JobRemoved` of `job` and returns its result.
    pub fn wait_job(&self, job: &str, timeout: Duration) -> Result<String, CtlError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CtlError::Usage(format!(
                    "job {job} did not finish within {}s",
                    timeout.as_secs()
                )));
            }
            let msg: Option<Message> = self.conn.channel().blocking_pop_message(left)?;
            let Some(msg) = msg else { continue };
            match msg.member().as_deref() {
                Some("JobRemoved") => {
                    if let Ok((_, path, _, _, result)) =
                        msg.read5::<u32, dbus::Path, &str, &str, &str>()
                    {
                        if &*path == job {
                            return Ok(result.to_string());
                        }
                    }
                }
                Some("NameOwnerChanged") if manager_left(&msg) => {
                    return Err(CtlError::ManagerNotRunning);
                }
                _ => {}
            }
        }
    }
}

/// Whether `msg` says the manager's name lost its owner (the manager stopped).
pub fn manager_left(msg: &Message) -> bool {
    msg.member().as_deref() == Some("NameOwnerChanged")
        && msg
            .read3::<&str, &str, &str>()
            .is_ok_and(|(name, _, new)| name == protocol::MANAGER_BUS_NAME && new.is_empty())
}
