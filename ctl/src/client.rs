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
}

impl CtlError {
    /// Exit status: 4 for "no such unit/node" as systemctl does, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::NotFound(_) => 4,
            CtlError::Call { name, .. }
                if name == protocol::error::NODE_NOT_FOUND
                    || name == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                4
            }
            CtlError::Usage(_) => 2,
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
        let owner = format!(
            "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{}'",
            protocol::MANAGER_BUS_NAME
        );
        self.conn.add_match_no_cb(&owner)?;
        Ok(())
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
                Some("NameOwnerChanged") => {
                    if let Ok((_, _, new)) = msg.read3::<&str, &str, &str>() {
                        if new.is_empty() {
                            return Err(CtlError::ManagerNotRunning);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
