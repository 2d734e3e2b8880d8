//! Why the agent cannot start or go on: reported once, and the process ends.

use crate::core::PollError;
use crate::systemd::SubscribeError;
use hirte_common::config::ConfigError;
use hirte_common::tls::TlsError;
use std::fmt;

#[derive(Debug)]
pub enum AgentError {
    Config(ConfigError),
    HostNameUnknown(nix::Error),
    HostNameUnusable(ConfigError),
    /// The bus systemd is on (`system` or `session`) cannot be reached.
    Bus {
        which: &'static str,
        why: String,
    },
    Subscribe(SubscribeError),
    Signal(std::io::Error),
    Queue(nix::Error),
    Thread(std::io::Error),
    Poll(PollError),
    /// The TLS settings or files (`CertificateFile=` ...) are unusable.
    Tls(TlsError),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Config(e) => write!(f, "{e}"),
            AgentError::HostNameUnknown(e) => {
                write!(f, "NodeName is not set and the host name is unknown: {e}")
            }
            AgentError::HostNameUnusable(e) => {
                write!(
                    f,
                    "NodeName is not set and the host name is not usable: {e}"
                )
            }
            AgentError::Bus { which, why } => {
                write!(f, "cannot connect to the {which} bus for systemd: {why}")
            }
            AgentError::Subscribe(e) => write!(f, "{e}"),
            AgentError::Signal(e) => write!(f, "cannot install signal handler: {e}"),
            AgentError::Queue(e) => write!(f, "{e}"),
            AgentError::Thread(e) => write!(f, "cannot start link thread: {e}"),
            AgentError::Poll(e) => write!(f, "{e}"),
            AgentError::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl From<ConfigError> for AgentError {
    fn from(e: ConfigError) -> Self {
        AgentError::Config(e)
    }
}

impl From<TlsError> for AgentError {
    fn from(e: TlsError) -> Self {
        AgentError::Tls(e)
    }
}

impl From<SubscribeError> for AgentError {
    fn from(e: SubscribeError) -> Self {
        AgentError::Subscribe(e)
    }
}
