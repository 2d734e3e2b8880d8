//! Configuration files of both daemons.
//!
//! Order (later wins): `<dir>/<name>.conf`, then `<dir>/<name>.conf.d/*.conf` in name order,
//! then the file given with `-c`, then command-line flags. `<dir>` is `/etc/hirte`, or
//! `$HIRTE_CONFIG_DIR` when set (tests and the demo use that).
//!
//! Syntax: systemd-style `Key=Value` lines under one section header, as the user's guide writes
//! them (`AllowedNodeNames=primary,agent`, `HeartbeatInterval=5`). TOML spellings of the same
//! keys are accepted too (`Key = "value"`, `Key = ["a", "b"]`, `Key = 5`, `Key = true`).
//! Anything unknown or malformed is an error naming file, line and key: a daemon refuses to
//! start rather than guess.
//!
//! The manager's file may also hold per-node sections, `[node NAME]`, after its own (as
//! BlueChi's does); they carry `AllowDependenciesOn=`.

use crate::bounds::MAX_NODES;
use crate::log::{Level, Target};
use crate::names::validate_node_name;
use crate::timespan::{format_timespan, parse_timespan};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default configuration directory.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/hirte";
/// Environment variable that replaces the configuration directory.
pub const CONFIG_DIR_ENV: &str = "HIRTE_CONFIG_DIR";
/// Largest config file read, so a wrong `-c /dev/zero` cannot eat memory.
pub const MAX_CONFIG_FILE_SIZE: u64 = 1024 * 1024;

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}", self.file, self.line)
        }
    }
}

/// Everything that can be wrong with a configuration.
// [impl->req~config.errors~1]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Io {
        file: String,
        reason: String,
    },
    TooLarge {
        file: String,
    },
    Syntax {
        at: Origin,
        reason: String,
    },
    UnknownSection {
        at: Origin,
        section: String,
    },
    OutsideSection {
        at: Origin,
        key: String,
    },
    UnknownKey {
        at: Origin,
        key: String,
    },
    DuplicateKey {
        at: Origin,
        key: String,
        first_line: usize,
    },
    BadValue {
        at: Origin,
        key: String,
        value: String,
        reason: String,
    },
    Invalid {
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { file, reason } => write!(f, "{file}: cannot read: {reason}"),
            ConfigError::TooLarge { file } => {
                write!(f, "{file}: larger than {MAX_CONFIG_FILE_SIZE} bytes")
            }
            ConfigError::Syntax { at, reason } => write!(f, "{at}: {reason}"),
            ConfigError::UnknownSection { at, section } => {
                write!(f, "{at}: unknown section [{section}]")
            }
            ConfigError::OutsideSection { at, key } => {
                write!(f, "{at}: key '{key}' appears before any section header")
            }
            ConfigError::UnknownKey { at, key } => write!(f, "{at}: unknown key '{key}'"),
            ConfigError::DuplicateKey {
                at,
                key,
                first_line,
            } => write!(
                f,
                "{at}: key '{key}' is set twice (first on line {first_line})"
            ),
            ConfigError::BadValue {
                at,
                key,
                value,
                reason,
            } => write!(f, "{at}: key '{key}': invalid value '{value}': {reason}"),
            ConfigError::Invalid { reason } => write!(f, "invalid configuration: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A value as written: one string, or a list (comma-separated or a TOML array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawValue {
    Str(String),
    List(Vec<String>),
}

impl RawValue {
    fn as_text(&self) -> String {
        match self {
            RawValue::Str(s) => s.clone(),
            RawValue::List(l) => l.join(","),
        }
    }
}

/// One `Key=Value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: RawValue,
    pub at: Origin,
    /// The node of a `[node NAME]` section; `None` in the daemon's own section.
    pub node: Option<String>,
}

/// Prefix of a per-node section header (`[node NAME]`).
pub const NODE_SECTION_PREFIX: &str = "node ";

/// Only the manager's file has per-node sections.
fn node_sections_allowed(section: &str) -> bool {
    section == ManagerConfig::SECTION
}

/// Turns a TOML-spelled value (`"x"`, `'x'`, `["a","b"]`) into a raw value; other text stays as is.
fn parse_value(key: &str, raw: &str, at: &Origin) -> Result<RawValue, ConfigError> {
    let raw = raw.trim();
    if !(raw.starts_with('"') || raw.starts_with('\'') || raw.starts_with('[')) {
        return Ok(RawValue::Str(raw.to_string()));
    }
    let doc = format!("v = {raw}");
    let table: toml::Table = doc
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::BadValue {
            at: at.clone(),
            key: key.to_string(),
            value: raw.to_string(),
            // toml's messages span lines; an error here is one line.
            reason: format!("malformed TOML value: {}", e.message().replace('\n', "; ")),
        })?;
    let scalar = |v: &toml::Value| -> Option<String> {
        match v {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            toml::Value::Float(x) => Some(x.to_string()),
            _ => None,
        }
    };
    let bad = || ConfigError::BadValue {
        at: at.clone(),
        key: key.to_string(),
        value: raw.to_string(),
        reason: "must be a string, number, boolean or a list of those".to_string(),
    };
    match table.get("v") {
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|v| scalar(v).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(RawValue::List),
        Some(v) => scalar(v).map(RawValue::Str).ok_or_else(bad),
        None => Err(bad()),
    }
}

/// Parses one file's text. Only `section` is allowed; a key twice in one file is an error.
// [impl->req~config.syntax~1]
pub fn parse_text(text: &str, file: &str, section: &str) -> Result<Vec<Entry>, ConfigError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut in_section = false;
    let mut node: Option<String> = None;
    for (idx, line) in text.lines().enumerate() {
        let at = Origin {
            file: file.to_string(),
            line: idx + 1,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| ConfigError::Syntax {
                    at: at.clone(),
                    reason: format!("malformed section header '{line}'"),
                })?
                .trim()
                .trim_matches('"');
            node = match name.strip_prefix(NODE_SECTION_PREFIX) {
                Some(n) if node_sections_allowed(section) => {
                    let n = n.trim().trim_matches('"');
                    validate_node_name(n).map_err(|e| ConfigError::Syntax {
                        at: at.clone(),
                        reason: format!("section [{name}]: {e}"),
                    })?;
                    Some(n.to_string())
                }
                _ if name == section => None,
                _ => {
                    return Err(ConfigError::UnknownSection {
                        at,
                        section: name.to_string(),
                    })
                }
            };
            in_section = true;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ConfigError::Syntax {
                at,
                reason: format!("expected Key=Value, got '{line}'"),
            });
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ConfigError::Syntax {
                at,
                reason: format!("malformed key '{key}'"),
            });
        }
        if !in_section {
            return Err(ConfigError::OutsideSection {
                at,
                key: key.to_string(),
            });
        }
        if let Some(first) = entries.iter().find(|e| e.key == key && e.node == node) {
            return Err(ConfigError::DuplicateKey {
                first_line: first.at.line,
                at,
                key: key.to_string(),
            });
        }
        let value = parse_value(key, value, &at)?;
        entries.push(Entry {
            key: key.to_string(),
            value,
            at,
            node: node.clone(),
        });
    }
    Ok(entries)
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    let file = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::Io {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    if meta.len() > MAX_CONFIG_FILE_SIZE {
        return Err(ConfigError::TooLarge { file });
    }
    std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
        file,
        reason: e.to_string(),
    })
}

/// The configuration directory in force.
pub fn config_dir() -> PathBuf {
    std::env::var_os(CONFIG_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR))
}

/// Reads the layered files for `<dir>/<base>.conf` (see the module doc) in order.
// [impl->req~config.layers~1]
pub fn load_entries(
    dir: &Path,
    base: &str,
    section: &str,
    extra: Option<&Path>,
) -> Result<Vec<Entry>, ConfigError> {
    let mut files = Vec::new();
    let main = dir.join(format!("{base}.conf"));
    if main.exists() {
        files.push(main);
    }
    let dropin_dir = dir.join(format!("{base}.conf.d"));
    if let Ok(read) = std::fs::read_dir(&dropin_dir) {
        let mut dropins: Vec<PathBuf> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        dropins.sort();
        files.extend(dropins);
    }
    if let Some(extra) = extra {
        // An explicit -c file must exist; the defaults need not.
        files.push(extra.to_path_buf());
    }
    let mut all = Vec::new();
    for f in files {
        let text = read_file(&f)?;
        all.extend(parse_text(&text, &f.display().to_string(), section)?);
    }
    Ok(all)
}

/// Applies the layered files in order onto the defaults.
fn load_layers<T>(
    mut cfg: T,
    dir: &Path,
    base: &str,
    section: &str,
    extra: Option<&Path>,
    apply: fn(&mut T, &Entry) -> Result<(), ConfigError>,
) -> Result<T, ConfigError> {
    for e in load_entries(dir, base, section, extra)? {
        apply(&mut cfg, &e)?;
    }
    Ok(cfg)
}

fn unknown_key(e: &Entry) -> ConfigError {
    ConfigError::UnknownKey {
        at: e.at.clone(),
        key: e.key.clone(),
    }
}

fn bad(e: &Entry, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        at: e.at.clone(),
        key: e.key.clone(),
        value: e.value.as_text(),
        reason: reason.into(),
    }
}

fn single(e: &Entry) -> Result<&str, ConfigError> {
    match &e.value {
        RawValue::Str(s) => Ok(s.as_str()),
        RawValue::List(_) => Err(bad(e, "expected a single value, not a list")),
    }
}

fn list(e: &Entry) -> Vec<String> {
    match &e.value {
        RawValue::Str(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        RawValue::List(l) => l.iter().map(|s| s.trim().to_string()).collect(),
    }
}

fn port(e: &Entry) -> Result<u16, ConfigError> {
    match single(e)?.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(bad(e, "expected a TCP port from 1 to 65535")),
    }
}

fn boolean(e: &Entry) -> Result<bool, ConfigError> {
    match single(e)?.to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        _ => Err(bad(
            e,
            "expected a boolean (yes/no, true/false, 1/0, on/off)",
        )),
    }
}

fn span(e: &Entry, min: Duration, max: Duration) -> Result<Duration, ConfigError> {
    let d = parse_timespan(single(e)?).map_err(|err| bad(e, err.to_string()))?;
    if d < min || d > max {
        return Err(bad(
            e,
            format!(
                "must be between {} and {}",
                format_timespan(min),
                format_timespan(max)
            ),
        ));
    }
    Ok(d)
}

/// Logging settings, the same keys in both daemons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub level: Level,
    pub target: Target,
    pub is_quiet: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: Level::Info,
            target: Target::Journald,
            is_quiet: false,
        }
    }
}

impl LogConfig {
    /// Applies a logging key; `Ok(false)` if the key is not a logging key.
    fn apply(&mut self, e: &Entry) -> Result<bool, ConfigError> {
        match e.key.as_str() {
            "LogLevel" => {
                self.level = single(e)?.parse().map_err(|r: String| bad(e, r))?;
            }
            "LogTarget" => {
                self.target = single(e)?.parse().map_err(|r: String| bad(e, r))?;
            }
            "LogIsQuiet" => self.is_quiet = boolean(e)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Ranges accepted for the liveness settings: fast enough to be useful, slow enough not to flood.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

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
        }
    }
}

impl ManagerConfig {
    pub const SECTION: &'static str = "hirte";
    pub const FILE_BASE: &'static str = "hirte";

    /// Reads the layered files (see the module doc).
    pub fn load(dir: &Path, extra: Option<&Path>) -> Result<Self, ConfigError> {
        load_layers(
            Self::default(),
            dir,
            Self::FILE_BASE,
            Self::SECTION,
            extra,
            Self::apply,
        )
    }

    // [impl->req~config.manager-keys~1]
    pub fn apply(&mut self, e: &Entry) -> Result<(), ConfigError> {
        if let Some(node) = &e.node {
            return self.apply_node(node, e);
        }
        if self.log.apply(e)? {
            return Ok(());
        }
        match e.key.as_str() {
            "ManagerPort" => self.port = port(e)?,
            "ManagerAddress" => {
                let s = single(e)?;
                self.address = if s.is_empty() {
                    None
                } else {
                    Some(s.parse().map_err(|_| bad(e, "expected an IP address"))?)
                };
            }
            "AllowedNodeNames" => {
                let names = list(e);
                if names.len() > MAX_NODES {
                    return Err(bad(e, format!("more than {MAX_NODES} node names")));
                }
                for n in &names {
                    validate_node_name(n).map_err(|err| bad(e, format!("'{n}': {err}")))?;
                }
                self.allowed_node_names = names;
            }
            "NodeHeartbeatThreshold" => {
                self.node_heartbeat_threshold = span(e, MIN_INTERVAL, MAX_INTERVAL)?;
            }
            "AgentCallTimeout" => {
                self.agent_call_timeout = span(e, MIN_INTERVAL, MAX_INTERVAL)?;
            }
            "AllowExec" => self.allow_exec = boolean(e)?,
            // [impl->req~link.unix-socket~1]
            "ManagerSocket" => {
                let s = single(e)?;
                self.socket = if s.is_empty() {
                    None
                } else {
                    Some(parse_socket_path(s).map_err(|r| bad(e, r))?)
                };
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
                let names = list(e);
                if names.len() > MAX_NODES {
                    return Err(bad(e, format!("more than {MAX_NODES} node names")));
                }
                for n in &names {
                    validate_node_name(n).map_err(|err| bad(e, format!("'{n}': {err}")))?;
                }
                self.node_sections.insert(
                    node.to_string(),
                    NodeSection {
                        allow_dependencies_on: names,
                        at: e.at.clone(),
                    },
                );
                Ok(())
            }
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
        let everywhere = self.address.is_none_or(|a| a.is_unspecified());
        if self.allowed_node_names.is_empty() && everywhere {
            return Err(ConfigError::Invalid {
                reason: "AllowedNodeNames is empty while the manager listens on all interfaces; \
                         list the nodes that may connect"
                    .to_string(),
            });
        }
        let mut seen = std::collections::HashSet::new();
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
        }
    }
}

impl AgentConfig {
    pub const SECTION: &'static str = "hirte-agent";
    pub const FILE_BASE: &'static str = "agent";

    pub fn load(dir: &Path, extra: Option<&Path>) -> Result<Self, ConfigError> {
        load_layers(
            Self::default(),
            dir,
            Self::FILE_BASE,
            Self::SECTION,
            extra,
            Self::apply,
        )
    }

    // [impl->req~config.agent-keys~1]
    pub fn apply(&mut self, e: &Entry) -> Result<(), ConfigError> {
        if self.log.apply(e)? {
            return Ok(());
        }
        match e.key.as_str() {
            "NodeName" => {
                let n = single(e)?;
                validate_node_name(n).map_err(|err| bad(e, err.to_string()))?;
                self.node_name = n.to_string();
            }
            "ManagerHost" => {
                let h = single(e)?;
                if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c == '/') {
                    return Err(bad(e, "expected a host name or IP address"));
                }
                self.manager_host = h.to_string();
                self.manager_socket = None;
            }
            "ManagerPort" => {
                self.manager_port = port(e)?;
                self.manager_socket = None;
            }
            // BlueChi's spelling: tcp:host=HOST,port=PORT or unix:path=PATH
            // [impl->req~link.unix-socket~1]
            "ManagerAddress" => {
                let s = single(e)?;
                if let Some(rest) = s.strip_prefix("unix:") {
                    self.manager_socket = Some(parse_unix_address(rest).map_err(|r| bad(e, r))?);
                } else {
                    let (host, p) = parse_tcp_address(s).map_err(|r| bad(e, r))?;
                    self.manager_host = host;
                    self.manager_port = p;
                    self.manager_socket = None;
                }
            }
            "HeartbeatInterval" => {
                self.heartbeat_interval = span(e, MIN_INTERVAL, MAX_INTERVAL)?;
            }
            "ReconnectInterval" => {
                self.reconnect_interval = span(e, MIN_INTERVAL, MAX_INTERVAL)?;
            }
            "ManagerHeartbeatThreshold" => {
                self.manager_timeout = Some(span(e, MIN_INTERVAL, MAX_INTERVAL)?);
            }
            _ => return Err(unknown_key(e)),
        }
        Ok(())
    }

    /// The manager's address in D-Bus syntax, as the local API's `ManagerAddress` shows it:
    /// `tcp:host=HOST,port=PORT` or `unix:path=PATH`.
    pub fn manager_address(&self) -> String {
        match &self.manager_socket {
            Some(p) => format!("unix:path={}", p.display()),
            None => format!("tcp:host={},port={}", self.manager_host, self.manager_port),
        }
    }

    /// The manager's address as log lines name it: `HOST:PORT` or `unix:path=PATH`.
    pub fn manager_endpoint(&self) -> String {
        match &self.manager_socket {
            Some(p) => format!("unix:path={}", p.display()),
            None => format!("{}:{}", self.manager_host, self.manager_port),
        }
    }

    /// How long the manager may stay silent: three of its heartbeat echoes, unless set.
    pub fn effective_manager_timeout(&self) -> Duration {
        self.manager_timeout
            .unwrap_or(self.heartbeat_interval.saturating_mul(3))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_node_name(&self.node_name).map_err(|e| ConfigError::Invalid {
            reason: format!("NodeName: {e}"),
        })?;
        if self.effective_manager_timeout() <= self.heartbeat_interval {
            return Err(ConfigError::Invalid {
                reason: "ManagerHeartbeatThreshold must be longer than HeartbeatInterval"
                    .to_string(),
            });
        }
        Ok(())
    }
}

/// Longest Unix socket path: `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Checks a Unix socket path: absolute, at most [`MAX_SOCKET_PATH`] bytes, no NUL.
// [impl->req~link.unix-socket~1]
pub fn parse_socket_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("empty socket path".to_string());
    }
    if !s.starts_with('/') {
        return Err("expected an absolute path".to_string());
    }
    if s.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "socket path of {} bytes is longer than {MAX_SOCKET_PATH}",
            s.len()
        ));
    }
    if s.contains('\0') {
        return Err("socket path contains a NUL byte".to_string());
    }
    Ok(PathBuf::from(s))
}

/// Parses what follows `unix:` in a D-Bus address: `path=PATH` (the only key accepted).
fn parse_unix_address(rest: &str) -> Result<PathBuf, String> {
    let mut path = None;
    for part in rest.split(',') {
        match part.split_once('=') {
            Some(("path", p)) if path.is_none() => path = Some(parse_socket_path(p)?),
            Some(("path", _)) => return Err("path given twice".to_string()),
            _ => {
                return Err(format!(
                    "unexpected '{part}' in address (expected unix:path=PATH)"
                ))
            }
        }
    }
    path.ok_or_else(|| "expected unix:path=PATH".to_string())
}

/// Parses `tcp:host=HOST,port=PORT`.
pub fn parse_tcp_address(s: &str) -> Result<(String, u16), String> {
    let rest = s
        .strip_prefix("tcp:")
        .ok_or_else(|| "expected tcp:host=HOST,port=PORT".to_string())?;
    let mut host = None;
    let mut port = None;
    for part in rest.split(',') {
        match part.split_once('=') {
            Some(("host", h)) if !h.is_empty() => host = Some(h.to_string()),
            Some(("port", p)) => {
                port = Some(
                    p.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("bad port '{p}'"))?,
                )
            }
            _ => return Err(format!("unexpected '{part}' in address")),
        }
    }
    match (host, port) {
        (Some(h), Some(p)) => Ok((h, p)),
        _ => Err("expected tcp:host=HOST,port=PORT".to_string()),
    }
}

/// A command-line override, given the same checks as a file line.
pub fn cli_entry(key: &str, value: &str) -> Entry {
    Entry {
        key: key.to_string(),
        value: RawValue::Str(value.to_string()),
        at: Origin {
            file: "command line".to_string(),
            line: 0,
        },
        node: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUIDE_MANAGER: &str = "[hirte]\nManagerPort=2020\nAllowedNodeNames=primary,agent\nLogLevel=info\nLogTarget=journald\n";
    const GUIDE_AGENT: &str = "[hirte-agent]\nNodeName=agent\nManagerHost=192.168.1.10\nManagerPort=2020\nLogLevel=info\nLogTarget=journald\nHeartbeatInterval=5\nReconnectInterval=10\n";

    fn manager(text: &str) -> Result<ManagerConfig, ConfigError> {
        let mut c = ManagerConfig::default();
        for e in parse_text(text, "hirte.conf", "hirte")? {
            c.apply(&e)?;
        }
        Ok(c)
    }

    fn agent(text: &str) -> Result<AgentConfig, ConfigError> {
        let mut c = AgentConfig::default();
        for e in parse_text(text, "agent.conf", "hirte-agent")? {
            c.apply(&e)?;
        }
        Ok(c)
    }

    // [utest->req~config.syntax~1]
    // [utest->req~config.manager-keys~1]
    #[test]
    fn guide_manager_config_loads_verbatim() {
        let c = manager(GUIDE_MANAGER).unwrap();
        assert_eq!(c.port, 2020);
        assert_eq!(c.allowed_node_names, vec!["primary", "agent"]);
        assert_eq!(c.log.level, Level::Info);
        assert_eq!(c.log.target, Target::Journald);
        c.validate().unwrap();
    }

    // [utest->req~config.agent-keys~1]
    #[test]
    fn guide_agent_config_loads_verbatim() {
        let c = agent(GUIDE_AGENT).unwrap();
        assert_eq!(c.node_name, "agent");
        assert_eq!(c.manager_host, "192.168.1.10");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.reconnect_interval, Duration::from_secs(10));
        assert_eq!(c.effective_manager_timeout(), Duration::from_secs(15));
        c.validate().unwrap();
    }

    #[test]
    fn toml_spelling_is_accepted() {
        let c = manager(
            "# comment\n[hirte]\nManagerPort = 2021\nAllowedNodeNames = [\"a\", \"b\"]\nLogLevel = \"debug\"\nAllowExec = false\nNodeHeartbeatThreshold = \"500ms\"\n",
        )
        .unwrap();
        assert_eq!(c.port, 2021);
        assert_eq!(c.allowed_node_names, vec!["a", "b"]);
        assert_eq!(c.log.level, Level::Debug);
        assert!(!c.allow_exec);
        assert_eq!(c.node_heartbeat_threshold, Duration::from_millis(500));
        let a =
            agent("[hirte-agent]\nManagerAddress=tcp:host=h1,port=99\nNodeName=\"n\"\n").unwrap();
        assert_eq!((a.manager_host.as_str(), a.manager_port), ("h1", 99));
    }

    // [utest->req~proxy.allow~1]
    #[test]
    fn node_sections_carry_allow_dependencies_on() {
        let c = manager(
            "[hirte]\nAllowedNodeNames=laptop,pi,x\n[node laptop]\nAllowDependenciesOn=pi,x\n[node pi]\nAllowDependenciesOn=\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.may_depend_on("laptop", "pi"));
        assert!(!c.may_depend_on("pi", "laptop"));
        assert!(!c.may_depend_on("x", "pi"));
        let e = manager("[hirte]\nAllowedNodeNames=a\n[node a]\nAllowed=true\n").unwrap_err();
        assert_eq!(e.to_string(), "hirte.conf:4: unknown key 'Allowed'");
        let e = manager("[hirte]\n[node a]\nAllowDependenciesOn=b\nAllowDependenciesOn=c\n")
            .unwrap_err();
        assert!(e.to_string().contains("set twice"), "{e}");
        // The same key in the daemon's section and a node section is no duplicate.
        let e = manager("[hirte]\nAllowedNodeNames=a\n[node a]\nAllowedNodeNames=a\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "hirte.conf:4: unknown key 'AllowedNodeNames'"
        );
        let e = manager("[hirte]\n[node bad name]\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("hirte.conf:2: section [node bad name]"),
            "{e}"
        );
        let c = manager("[hirte]\nAllowedNodeNames=a\n[node a]\nAllowDependenciesOn=zz\n").unwrap();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid configuration: hirte.conf:4: [node a] names 'zz', which is not in AllowedNodeNames"
        );
        let e = agent("[hirte-agent]\n[node a]\n").unwrap_err();
        assert_eq!(e.to_string(), "agent.conf:2: unknown section [node a]");
    }

    // [utest->req~config.agent-keys~1]
    #[test]
    fn manager_heartbeat_threshold_must_exceed_the_interval() {
        let text = "[hirte-agent]\nNodeName=n\nHeartbeatInterval=5s\nManagerHeartbeatThreshold=";
        for (threshold, ok) in [("5s", false), ("4s", false), ("5100ms", true)] {
            let c = agent(&format!("{text}{threshold}\n")).unwrap();
            let r = c.validate();
            assert_eq!(r.is_ok(), ok, "{threshold}: {r:?}");
            if let Err(e) = r {
                assert_eq!(
                    e.to_string(),
                    "invalid configuration: ManagerHeartbeatThreshold must be longer than HeartbeatInterval"
                );
            }
        }
        // The default (3 x HeartbeatInterval) always is.
        let c = agent("[hirte-agent]\nNodeName=n\nHeartbeatInterval=1h\n").unwrap();
        assert!(c.validate().is_ok());
    }

    // [utest->req~config.errors~1]
    #[test]
    fn errors_name_file_line_and_key() {
        let e = manager("[hirte]\nManagerPort=abc\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "hirte.conf:2: key 'ManagerPort': invalid value 'abc': expected a TCP port from 1 to 65535"
        );
        let e = manager("[hirte]\nBogus=1\n").unwrap_err();
        assert_eq!(e.to_string(), "hirte.conf:2: unknown key 'Bogus'");
        let e = manager("[other]\n").unwrap_err();
        assert_eq!(e.to_string(), "hirte.conf:1: unknown section [other]");
        let e = manager("ManagerPort=1\n").unwrap_err();
        assert!(matches!(e, ConfigError::OutsideSection { .. }));
        let e = manager("[hirte]\nManagerPort=1\nManagerPort=2\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "hirte.conf:3: key 'ManagerPort' is set twice (first on line 2)"
        );
        for bad_line in [
            "ManagerPort=0",
            "ManagerPort=70000",
            "LogLevel=loud",
            "LogTarget=paper",
            "AllowedNodeNames=ok,bad name",
            "NodeHeartbeatThreshold=1ms",
            "NodeHeartbeatThreshold=soon",
            "AllowExec=maybe",
            "ManagerAddress=not-an-ip",
            "ManagerPort=[1,2]",
            "LogLevel=\"unterminated",
            "just text",
        ] {
            let text = format!("[hirte]\n{bad_line}\n");
            let err = manager(&text).unwrap_err().to_string();
            assert!(err.starts_with("hirte.conf:2:"), "{bad_line}: {err}");
        }
        assert!(agent("[hirte-agent]\nHeartbeatInterval=-5\n").is_err());
        assert!(agent("[hirte-agent]\nNodeName=a/b\n").is_err());
        assert!(agent("[hirte-agent]\nManagerAddress=udp:x\n").is_err());
    }

    // [utest->req~link.unix-socket~1]
    // [utest->req~config.errors~1]
    #[test]
    fn manager_socket_and_unix_manager_address_are_checked() {
        // Manager: default none; an absolute path; empty = none again.
        assert_eq!(manager("[hirte]\n").unwrap().socket, None);
        let c = manager("[hirte]\nManagerSocket=/run/hirte/hirte.sock\n").unwrap();
        assert_eq!(c.socket, Some(PathBuf::from("/run/hirte/hirte.sock")));
        assert_eq!(manager("[hirte]\nManagerSocket=\n").unwrap().socket, None);
        let longest = format!("/{}", "s".repeat(MAX_SOCKET_PATH - 1));
        let c = manager(&format!("[hirte]\nManagerSocket={longest}\n")).unwrap();
        assert_eq!(c.socket, Some(PathBuf::from(&longest)));
        let e = manager("[hirte]\nManagerSocket=run/hirte.sock\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "hirte.conf:2: key 'ManagerSocket': invalid value 'run/hirte.sock': expected an absolute path"
        );
        let too_long = format!("{longest}x");
        let e = manager(&format!(
            "[hirte]\nAllowExec=yes\nManagerSocket={too_long}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("hirte.conf:3: key 'ManagerSocket'")
                && e.ends_with("socket path of 108 bytes is longer than 107"),
            "{e}"
        );
        assert!(manager("[hirte]\nManagerSocket=[\"/a\", \"/b\"]\n").is_err());

        // Agent: unix:path=PATH, shown back in D-Bus syntax; TCP is unchanged.
        let a = agent("[hirte-agent]\nManagerAddress=unix:path=/run/hirte/hirte.sock\n").unwrap();
        assert_eq!(
            a.manager_socket,
            Some(PathBuf::from("/run/hirte/hirte.sock"))
        );
        assert_eq!(a.manager_address(), "unix:path=/run/hirte/hirte.sock");
        assert_eq!(a.manager_endpoint(), "unix:path=/run/hirte/hirte.sock");
        let a = agent("[hirte-agent]\nManagerAddress=tcp:host=h,port=7\n").unwrap();
        assert_eq!(a.manager_socket, None);
        assert_eq!(a.manager_address(), "tcp:host=h,port=7");
        assert_eq!(a.manager_endpoint(), "h:7");
        assert_eq!(
            AgentConfig::default().manager_address(),
            "tcp:host=127.0.0.1,port=2020"
        );
        // The last of ManagerAddress / ManagerHost / ManagerPort decides.
        let a = agent("[hirte-agent]\nManagerAddress=unix:path=/s\nManagerPort=9\n").unwrap();
        assert_eq!((a.manager_socket, a.manager_port), (None, 9));
        let a = agent("[hirte-agent]\nManagerHost=h\nManagerAddress=unix:path=/s\n").unwrap();
        assert_eq!(a.manager_address(), "unix:path=/s");
        let mut a = agent("[hirte-agent]\nManagerAddress=unix:path=/s\n").unwrap();
        a.apply(&cli_entry("ManagerHost", "10.0.0.1")).unwrap();
        assert_eq!(a.manager_address(), "tcp:host=10.0.0.1,port=2020");

        for (value, reason) in [
            ("unix:path=", "empty socket path"),
            ("unix:path=relative.sock", "expected an absolute path"),
            (
                "unix:",
                "unexpected '' in address (expected unix:path=PATH)",
            ),
            (
                "unix:abstract=hirte",
                "unexpected 'abstract=hirte' in address (expected unix:path=PATH)",
            ),
            ("unix:path=/a,path=/b", "path given twice"),
        ] {
            let e = agent(&format!(
                "[hirte-agent]\nNodeName=n\nManagerAddress={value}\n"
            ))
            .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("agent.conf:3: key 'ManagerAddress': invalid value '{value}': {reason}")
            );
        }
        let e = agent(&format!(
            "[hirte-agent]\nManagerAddress=unix:path={too_long}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("agent.conf:2: key 'ManagerAddress'") && e.contains("longer than 107"),
            "{e}"
        );
    }

    #[test]
    fn allowed_node_names_are_bounded() {
        let names: Vec<String> = (0..=MAX_NODES).map(|i| format!("n{i}")).collect();
        let text = format!("[hirte]\nAllowedNodeNames={}\n", names.join(","));
        let err = manager(&text).unwrap_err().to_string();
        assert!(err.contains("more than 1024 node names"), "{err}");
        let ok = format!(
            "[hirte]\nAllowedNodeNames={}\n",
            names[..MAX_NODES].join(",")
        );
        assert_eq!(manager(&ok).unwrap().allowed_node_names.len(), MAX_NODES);
    }

    // [utest->req~config.manager-open-refused~1]
    #[test]
    fn open_manager_without_allowed_names_is_refused() {
        let c = manager("[hirte]\n").unwrap();
        assert!(c.validate().is_err());
        let c = manager("[hirte]\nManagerAddress=127.0.0.1\n").unwrap();
        assert!(c.validate().is_ok());
        let c = manager("[hirte]\nAllowedNodeNames=a,a\n").unwrap();
        assert!(c.validate().is_err());
    }

    // [utest->req~config.layers~1]
    #[test]
    fn layers_override_in_order() {
        let dir = std::env::temp_dir().join(format!("hirte-cfg-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("hirte.conf.d")).unwrap();
        std::fs::write(dir.join("hirte.conf"), GUIDE_MANAGER).unwrap();
        std::fs::write(
            dir.join("hirte.conf.d/20-b.conf"),
            "[hirte]\nManagerPort=3\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("hirte.conf.d/10-a.conf"),
            "[hirte]\nManagerPort=2\n",
        )
        .unwrap();
        std::fs::write(dir.join("hirte.conf.d/ignored.txt"), "garbage").unwrap();
        let c = ManagerConfig::load(&dir, None).unwrap();
        assert_eq!(c.port, 3);
        let extra = dir.join("extra.conf");
        std::fs::write(&extra, "[hirte]\nManagerPort=4\n").unwrap();
        assert_eq!(ManagerConfig::load(&dir, Some(&extra)).unwrap().port, 4);
        assert!(ManagerConfig::load(&dir, Some(&dir.join("missing.conf"))).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
