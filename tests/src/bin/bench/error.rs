//! The bench's one error type.

use std::fmt;

use hirte_tests::HarnessError;

/// Everything that can stop a benchmark phase.
#[derive(Debug)]
pub enum BenchError {
    /// The cluster harness failed.
    Harness(HarnessError),
    /// A file, process or socket operation failed.
    Io {
        context: String,
        source: std::io::Error,
    },
    /// A D-Bus call failed or answered something unexpected.
    Dbus { context: String, message: String },
    /// Anything else, as one line.
    Failed(String),
}

impl BenchError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn dbus(context: impl Into<String>, err: &dbus::Error) -> Self {
        BenchError::Dbus {
            context: context.into(),
            message: format!(
                "{}: {}",
                err.name().unwrap_or("?"),
                err.message().unwrap_or("?")
            ),
        }
    }

    pub fn failed(text: impl Into<String>) -> Self {
        BenchError::Failed(text.into())
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Harness(e) => write!(f, "cluster harness: {e}"),
            BenchError::Io { context, source } => write!(f, "{context}: {source}"),
            BenchError::Dbus { context, message } => write!(f, "{context}: {message}"),
            BenchError::Failed(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<HarnessError> for BenchError {
    fn from(e: HarnessError) -> Self {
        BenchError::Harness(e)
    }
}

impl From<nix::errno::Errno> for BenchError {
    fn from(e: nix::errno::Errno) -> Self {
        BenchError::io("system call", std::io::Error::from(e))
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;
