//! The agent's settings: `[hirte-agent]` in `agent.conf`.

use super::address::ManagerAddress;
use super::entry::{bad, boolean, list, port, single, span, unknown_key, Entry, RawValue};
use super::error::ConfigError;
use super::layers::{load_layers, Settings};
use super::log_settings::LogConfig;
use super::tls_settings::{apply_tls, validate_tls};
use super::{MAX_INTERVAL, MIN_INTERVAL};
use crate::bounds::MAX_MANAGERS;
use crate::names::validate_node_name;
use crate::tls::TlsFiles;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Agent settings (`[hirte-agent]` in `agent.conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub node_name: String,
    pub manager_host: String,
    pub manager_port: u16,
    pub log: LogConfig,
    pub heartbeat_interval: Duration,
    pub reconnect_interval: Duration,
    /// Manager silent for this long: the link is considered dead and is re-established.
    pub manager_timeout: Option<Duration>,
    /// `ManagerAddress=unix:path=PATH`: connect to the manager's Unix socket instead of
    /// `manager_host`:`manager_port`. The last of `ManagerAddress`, `ManagerHost` and
    /// `ManagerPort` set decides between the two.
    pub manager_socket: Option<PathBuf>,
    /// `CertificateFile=` and friends: all three set, the link to the manager is mutual TLS.
    pub tls: TlsFiles,
    /// `ManagerName=`: the name the manager's certificate must carry; `None`: `ManagerHost`.
    pub manager_name: Option<String>,
    /// `AllowExec=`: whether this node runs `Exec` (and transient units with `Exec*`
    /// properties, and unit files from outside the unit directories) for the manager.
    pub allow_exec: bool,
    /// The managers after the first, in the order tried (`ManagerHost=a,b`,
    /// `ManagerAddress=A;B`): the agent fails over to them and stays where it registered.
    pub standby_managers: Vec<StandbyManager>,
    /// `ManagerPreferFirst=yes`: registered with a standby, the agent checks every
    /// `ReconnectInterval` whether the first manager listens again and moves back to it.
    pub manager_prefer_first: bool,
}

/// A manager after the first one in the agent's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StandbyManager {
    /// From `ManagerHost=a,b`: reached on `ManagerPort`, like the first.
    Host(String),
    /// From `ManagerAddress=A;B`.
    Address(ManagerAddress),
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node_name: String::new(),
            manager_host: "127.0.0.1".to_string(),
            manager_port: 2020,
            log: LogConfig::default(),
            heartbeat_interval: Duration::from_secs(5),
            reconnect_interval: Duration::from_secs(5),
            manager_timeout: None,
            manager_socket: None,
            tls: TlsFiles::default(),
            manager_name: None,
            allow_exec: true,
            standby_managers: Vec::new(),
            manager_prefer_first: false,
        }
    }
}

impl AgentConfig {
    /// Reads the layered files (see [`super::layers`]).
    pub fn load(dir: &Path, extra: Option<&Path>) -> Result<Self, ConfigError> {
        load_layers(dir, extra)
    }

    // [impl->req~config.agent-keys~1]
    pub fn apply(&mut self, e: &Entry) -> Result<(), ConfigError> {
        if self.log.apply(e)? || apply_tls(&mut self.tls, e)? {
            return Ok(());
        }
        match super::bluechi::our_key(&e.key) {
            "NodeName" => {
                let n = single(e)?;
                validate_node_name(n).map_err(|err| bad(e, err.to_string()))?;
                self.node_name = n.to_string();
            }
            // [impl->req~agent.manager-list~1]
            "ManagerHost" => {
                let hosts = list(e);
                check_count(e, hosts.len())?;
                for h in &hosts {
                    if h.chars().any(|c| c.is_whitespace() || c == '/') {
                        return Err(bad(e, format!("'{h}': expected a host name or IP address")));
                    }
                }
                let mut hosts = hosts.into_iter();
                let first = hosts
                    .next()
                    .ok_or_else(|| bad(e, "expected a host name or IP address"))?;
                self.manager_host = first;
                self.manager_socket = None;
                self.standby_managers = hosts.map(StandbyManager::Host).collect();
            }
            "ManagerPort" => {
                self.manager_port = port(e)?;
                self.manager_socket = None;
            }
            // BlueChi's spelling: tcp:host=HOST,port=PORT or unix:path=PATH
            // [impl->req~link.unix-socket~1]
            // A list is separated by ';' as D-Bus address lists are (a TOML array works too).
            "ManagerAddress" => {
                let texts: Vec<String> = match &e.value {
                    RawValue::Str(s) => s.split(';').map(|a| a.trim().to_string()).collect(),
                    RawValue::List(l) => l.iter().map(|a| a.trim().to_string()).collect(),
                };
                check_count(e, texts.len())?;
                let mut addresses = Vec::with_capacity(texts.len());
                for t in &texts {
                    addresses.push(ManagerAddress::parse(t).map_err(|r| bad(e, r))?);
                }
                let mut addresses = addresses.into_iter();
                match addresses.next() {
                    Some(ManagerAddress::Unix(p)) => self.manager_socket = Some(p),
                    Some(ManagerAddress::Tcp { host, port }) => {
                        self.manager_host = host;
                        self.manager_port = port;
                        self.manager_socket = None;
                    }
                    None => return Err(bad(e, "expected tcp:host=HOST,port=PORT")),
                }
                self.standby_managers = addresses.map(StandbyManager::Address).collect();
            }
            "ManagerPreferFirst" => self.manager_prefer_first = boolean(e)?,
            "HeartbeatInterval" => {
                self.heartbeat_interval = span(e, MIN_INTERVAL, MAX_INTERVAL)?;
            }
            "ReconnectInterval" => {
                self.reconnect_interval = span(e, MIN_INTERVAL, MAX_INTERVAL)?;
            }
            "ManagerHeartbeatThreshold" if super::bluechi::zero_means_default(e) => {
                self.manager_timeout = None;
            }
            "ManagerHeartbeatThreshold" => {
                self.manager_timeout = Some(span(e, MIN_INTERVAL, MAX_INTERVAL)?);
            }
            // [impl->req~agent.allow-exec~1]
            "AllowExec" => self.allow_exec = boolean(e)?,
            // [impl->req~tls.identity~1]
            "ManagerName" => {
                let n = single(e)?;
                if n.chars().any(|c| c.is_whitespace() || c == '/') {
                    return Err(bad(e, "expected a host name or IP address"));
                }
                self.manager_name = (!n.is_empty()).then(|| n.to_string());
            }
            _ if super::bluechi::ignored_with_warning(e, false) => {}
            _ => return Err(unknown_key(e)),
        }
        Ok(())
    }

    /// The first manager in the list.
    fn first_manager(&self) -> ManagerAddress {
        match &self.manager_socket {
            Some(p) => ManagerAddress::Unix(p.clone()),
            None => ManagerAddress::Tcp {
                host: self.manager_host.clone(),
                port: self.manager_port,
            },
        }
    }

    /// Every manager in the order the agent tries them; the first is never missing.
    pub fn managers(&self) -> Vec<ManagerAddress> {
        let standbys = self.standby_managers.iter().map(|m| match m {
            StandbyManager::Host(h) => ManagerAddress::Tcp {
                host: h.clone(),
                port: self.manager_port,
            },
            StandbyManager::Address(a) => a.clone(),
        });
        std::iter::once(self.first_manager())
            .chain(standbys)
            .collect()
    }

    /// The first manager's address in D-Bus syntax, as the local API's `ManagerAddress`
    /// shows it: `tcp:host=HOST,port=PORT` or `unix:path=PATH`.
    pub fn manager_address(&self) -> String {
        self.first_manager().to_string()
    }

    /// The managers as log lines name them: `HOST:PORT` or `unix:path=PATH`, comma-separated.
    pub fn manager_endpoint(&self) -> String {
        let names: Vec<String> = self
            .managers()
            .iter()
            .map(ManagerAddress::endpoint)
            .collect();
        names.join(", ")
    }

    /// How long the manager may stay silent: three of its heartbeat echoes, unless set.
    pub fn effective_manager_timeout(&self) -> Duration {
        self.manager_timeout
            .unwrap_or(self.heartbeat_interval.saturating_mul(3))
    }

    /// The name the manager's certificate must carry: `ManagerName`, else `ManagerHost`.
    pub fn effective_manager_name(&self) -> &str {
        self.manager_name.as_deref().unwrap_or(&self.manager_host)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_tls(&self.tls)?;
        validate_node_name(&self.node_name).map_err(|e| ConfigError::Invalid {
            reason: format!("NodeName: {e}"),
        })?;
        let managers = self.managers();
        for (i, m) in managers.iter().enumerate() {
            if managers.iter().take(i).any(|earlier| earlier == m) {
                return Err(ConfigError::Invalid {
                    reason: format!("manager {} is listed twice", m.endpoint()),
                });
            }
        }
        if self.effective_manager_timeout() <= self.heartbeat_interval {
            return Err(ConfigError::Invalid {
                reason: "ManagerHeartbeatThreshold must be longer than HeartbeatInterval"
                    .to_string(),
            });
        }
        Ok(())
    }
}

/// At most [`MAX_MANAGERS`] managers in one list.
fn check_count(e: &Entry, n: usize) -> Result<(), ConfigError> {
    if n > MAX_MANAGERS {
        return Err(bad(e, format!("more than {MAX_MANAGERS} managers")));
    }
    Ok(())
}

impl Settings for AgentConfig {
    const SECTION: &'static str = "hirte-agent";
    const FILE_BASE: &'static str = "agent";

    fn apply_entry(&mut self, e: &Entry) -> Result<(), ConfigError> {
        self.apply(e)
    }

    fn log_settings(&self) -> &LogConfig {
        &self.log
    }
}
