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
//!
//! Modules: `key_value` and `toml_value` parse the two syntaxes, `layers` finds and orders the
//! files (and re-reads them on SIGHUP), `entry` reads typed values out of one setting; `manager`, `agent`, `log_settings` and
//! `tls_settings` are the daemons' settings, `address` their address syntaxes.

mod address;
mod agent;
mod bluechi;
mod entry;
mod error;
mod key_value;
mod layers;
mod log_settings;
mod manager;
mod tls_settings;
mod toml_value;

#[cfg(test)]
mod tests;

pub use address::{
    parse_socket_path, parse_tcp_address, AddressError, ManagerAddress, MAX_SOCKET_PATH,
};
pub use agent::{AgentConfig, StandbyManager};
pub use entry::{cli_entry, Entry, RawValue};
pub use error::{ConfigError, Origin};
pub use layers::{
    config_dir, load_layers, reload_config, Settings, CONFIG_DIR_ENV, DEFAULT_CONFIG_DIR,
    MAX_CONFIG_FILE_SIZE,
};
pub use log_settings::LogConfig;
pub use manager::{ManagerConfig, NodeSection};

use std::time::Duration;

/// Ranges accepted for the liveness settings: fast enough to be useful, slow enough not to flood.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Parses one file's text for the daemon whose section is `section`. Only the manager's file
/// has per-node sections.
pub fn parse_text(text: &str, file: &str, section: &str) -> Result<Vec<Entry>, ConfigError> {
    let node_sections = section == <ManagerConfig as Settings>::SECTION;
    key_value::parse_key_value(text, file, section, node_sections)
}
