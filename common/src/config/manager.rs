//! The manager's settings: `[hirte]` in `hirte.conf`, and per-node `[node NAME]` sections
//! after it (as BlueChi's file has) that carry `AllowDependenciesOn=`.

use super::address::parse_socket_path;
use super::entry::{bad, boolean, list, node_names, port, single, span, unknown_key, Entry};
use super::error::{ConfigError, Origin};
use super::layers::{load_layers, Settings};
use super::log_settings::LogConfig;
use super::tls_settings::{apply_tls, validate_tls};
use super::{MAX_INTERVAL, MIN_INTERVAL};
use crate::bounds::MAX_NODES;
use crate::tls::TlsFiles;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Manager settings (`[hirte]` in `hirte.conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// TCP port agents connect to.
    pub port: u16,
    /// Address to listen on; `None` means all interfaces.
    pub address: Option<IpAddr>,
    /// Only these node names may register.
    pub allowed_node_names: Vec<String>,
    pub log: LogConfig,
    /// A node without a heartbeat for this long is offline.
    pub node_heartbeat_threshold: Duration,
    /// A call relayed to an agent that gets no answer for this long fails with `Timeout`.
    pub agent_call_timeout: Duration,
    /// Whether `Node.Exec` may run commands on nodes.
    pub allow_exec: bool,
    /// `[node NAME]` sections.
    pub node_sections: BTreeMap<String, NodeSection>,
    /// `ManagerSocket=`: a Unix socket for the local agent, besides TCP; `None`: none.
    pub socket: Option<PathBuf>,
    /// `ManagerSocketAllowedUsers=`: users (names or UIDs) whose processes may use the
    /// Unix socket, checked with SO_PEERCRED; empty: root only.
    pub socket_allowed_users: Vec<String>,
    /// `CertificateFile=` and friends: all three set, the TCP link is mutual TLS.
    pub tls: TlsFiles,
    /// `HirteBusName=`: own `org.containers.hirte` (the default).
    pub hirte_bus_name: bool,
    /// `BlueChiBusName=`: also own `org.eclipse.bluechi` and serve BlueChi's API (the default).
    pub bluechi_bus_name: bool,
}

/// Settings of one node (`[node NAME]` in `hirte.conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSection {
    /// Nodes whose services this node may start through proxies (`hirte-proxy@`).
    pub allow_dependencies_on: Vec<String>,
    /// Where the section was last set, for errors found once all files are read.
    pub at: Origin,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            port: 2020,
            address: None,
            allowed_node_names: Vec::new(),
            log: LogConfig::default(),
            node_heartbeat_threshold: Duration::from_secs(15),
            agent_call_timeout: Duration::from_secs(30),
            allow_exec: true,
            node_sections: BTreeMap::new(),
            socket: None,
            socket_allowed_users: Vec::new(),
            tls: TlsFiles::default(),
            hirte_bus_name: true,
            bluechi_bus_name: true,
        }
    }
}

impl ManagerConfig {
    /// Reads the layered files (see [`super::layers`]).
    pub fn load(dir: &Path, extra: Option<&Path>) -> Result<Self, ConfigError> {
        load_layers(dir, extra)
    }

    // [impl->req~config.manager-keys~1]
    pub fn apply(&mut self, e: &Entry) -> Result<(), ConfigError> {
        if let Some(node) = &e.node {
            return self.apply_node(node, e);
        }
        if self.log.apply(e)? || apply_tls(&mut self.tls, e)? {
            return Ok(());
        }
        match super::bluechi::our_key(&e.key) {
            "ManagerPort" => self.port = port(e)?,
            "ManagerAddress" => {
                let s = single(e)?;
                self.address = if s.is_empty() {
                    None
                } else {
                    Some(s.parse().map_err(|_| bad(e, "expected an IP address"))?)
                };
            }
            "AllowedNodeNames" => self.allowed_node_names = node_names(e)?,
            "NodeHeartbeatThreshold" => {
                self.node_heartbeat_threshold = span(e, MIN_INTERVAL, MAX_INTERVAL)?;
            }
            "AgentCallTimeout" => {
                self.agent_call_timeout = span(e, MIN_INTERVAL, MAX_INTERVAL)?;
            }
            "AllowExec" => self.allow_exec = boolean(e)?,
            // [impl->req~bluechi.switch~1]
            "HirteBusName" => self.hirte_bus_name = boolean(e)?,
            "BlueChiBusName" => self.bluechi_bus_name = boolean(e)?,
            _ if super::bluechi::ignored_with_warning(e, true) => {}
            // [impl->req~link.unix-socket~1]
            "ManagerSocket" => {
                let s = single(e)?;
                self.socket = if s.is_empty() {
                    None
                } else {
                    Some(parse_socket_path(s).map_err(|r| bad(e, r))?)
                };
            }
            // [impl->req~link.unix-peercred~1]
            "ManagerSocketAllowedUsers" => {
                let users = list(e);
                if users.len() > MAX_NODES {
                    return Err(bad(e, format!("more than {MAX_NODES} users")));
                }
                if let Some(u) = users.iter().find(|u| !valid_user(u)) {
                    return Err(bad(e, format!("'{u}' is not a user name or UID")));
                }
                self.socket_allowed_users = users;
            }
            _ => return Err(unknown_key(e)),
        }
        Ok(())
    }

    /// A key of a `[node NAME]` section.
    // [impl->req~proxy.allow~1]
    fn apply_node(&mut self, node: &str, e: &Entry) -> Result<(), ConfigError> {
        match e.key.as_str() {
            "AllowDependenciesOn" => {
                let names = node_names(e)?;
                self.node_sections.insert(
                    node.to_string(),
                    NodeSection {
                        allow_dependencies_on: names,
                        at: e.at.clone(),
                    },
                );
                Ok(())
            }
            _ if super::bluechi::ignored_with_warning(e, true) => Ok(()),
            _ => Err(unknown_key(e)),
        }
    }

    /// Whether node `from` may start units on node `to` through proxies.
    pub fn may_depend_on(&self, from: &str, to: &str) -> bool {
        self.node_sections
            .get(from)
            .is_some_and(|s| s.allow_dependencies_on.iter().any(|n| n == to))
    }

    /// Checks that need all settings together.
    // [impl->req~config.manager-open-refused~1]
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_tls(&self.tls)?;
        let everywhere = self.address.is_none_or(|a| a.is_unspecified());
        if self.allowed_node_names.is_empty() && everywhere {
            return Err(ConfigError::Invalid {
                reason: "AllowedNodeNames is empty while the manager listens on all interfaces; \
                         list the nodes that may connect"
                    .to_string(),
            });
        }
        if !self.hirte_bus_name && !self.bluechi_bus_name {
            return Err(ConfigError::Invalid {
                reason: "HirteBusName and BlueChiBusName are both off: the manager would have \
                         no API"
                    .to_string(),
            });
        }
        let mut seen = HashSet::new();
        for n in &self.allowed_node_names {
            if !seen.insert(n) {
                return Err(ConfigError::Invalid {
                    reason: format!("AllowedNodeNames lists '{n}' twice"),
                });
            }
        }
        // A name outside AllowedNodeNames in a node section is a typo or a leftover: say so.
        for (node, section) in &self.node_sections {
            let unknown = std::iter::once(node)
                .chain(section.allow_dependencies_on.iter())
                .find(|n| !self.allowed_node_names.contains(n));
            if let Some(n) = unknown {
                return Err(ConfigError::Invalid {
                    reason: format!(
                        "{}: [node {node}] names '{n}', which is not in AllowedNodeNames",
                        section.at
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Settings for ManagerConfig {
    const SECTION: &'static str = "hirte";
    const FILE_BASE: &'static str = "hirte";

    fn apply_entry(&mut self, e: &Entry) -> Result<(), ConfigError> {
        self.apply(e)
    }

    fn log_settings(&self) -> &LogConfig {
        &self.log
    }
}

/// A user name (as useradd takes them) or a numeric UID.
fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
