//! The one error type of the harness.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building, driving or tearing down a cluster.
#[derive(Debug)]
pub enum HarnessError {
    /// A file-system or process-spawn call failed.
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A helper command (`ip`, `systemctl`, ...) ran but failed.
    CommandFailed {
        /// The command line.
        command: String,
        /// Exit status plus captured stdout/stderr.
        output: String,
    },
    /// A bounded wait ran out.
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        after: Duration,
        /// Context for debugging (log tails, last observed state).
        detail: String,
    },
    /// A project binary is not where the harness looks for it.
    MissingBinary {
        /// Binary name.
        name: String,
        /// Path that was checked.
        path: PathBuf,
    },
    /// A tool of the host (`ip`, `nsenter`, systemd, `dbus-daemon`) is missing.
    MissingTool(String),
    /// The [`crate::ClusterSpec`] cannot be built.
    InvalidSpec(String),
    /// No node of that name in this cluster.
    UnknownNode(String),
    /// The daemon is already running (stop it first).
    AlreadyRunning(String),
    /// A process exited while the harness waited for it to become ready.
    ProcessExited {
        /// Which process.
        what: String,
        /// Its exit status.
        status: String,
        /// The end of its log.
        log_tail: String,
    },
    /// A D-Bus call or connection failed.
    Dbus {
        /// What the harness was doing.
        context: String,
        /// The D-Bus error.
        message: String,
    },
    /// A state file of a kept cluster is missing or malformed.
    BadState {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Teardown finished but some steps failed (each entry one failure).
    Cleanup(Vec<String>),
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn dbus(context: impl Into<String>, err: &dbus::Error) -> Self {
        HarnessError::Dbus {
            context: context.into(),
            message: format!(
                "{}: {}",
                err.name().unwrap_or("?"),
                err.message().unwrap_or("?")
            ),
        }
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::Io { context, source } => write!(f, "{context}: {source}"),
            HarnessError::CommandFailed { command, output } => {
                write!(f, "command failed: {command}\n{output}")
            }
            HarnessError::Timeout {
                what,
                after,
                detail,
            } => write!(f, "timed out after {after:?} waiting for {what}\n{detail}"),
            HarnessError::MissingBinary { name, path } => write!(
                f,
                "binary `{name}` not found at {} (run `cargo build --workspace` first, \
                 or set HIRTE_BIN_DIR to the directory holding hirte, hirte-agent and hirtectl)",
                path.display()
            ),
            HarnessError::MissingTool(t) => write!(f, "required host tool missing: {t}"),
            HarnessError::InvalidSpec(s) => write!(f, "invalid cluster spec: {s}"),
            HarnessError::UnknownNode(n) => write!(f, "no node named `{n}` in this cluster"),
            HarnessError::AlreadyRunning(w) => write!(f, "{w} is already running"),
            HarnessError::ProcessExited {
                what,
                status,
                log_tail,
            } => write!(
                f,
                "{what} exited early ({status}); end of its log:\n{log_tail}"
            ),
            HarnessError::Dbus { context, message } => write!(f, "{context}: {message}"),
            HarnessError::BadState { path, reason } => {
                write!(f, "bad cluster state file {}: {reason}", path.display())
            }
            HarnessError::Cleanup(errs) => {
                write!(f, "cleanup incomplete: {}", errs.join("; "))
            }
        }
    }
}

impl std::error::Error for HarnessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HarnessError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
