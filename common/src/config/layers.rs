//! Where the settings come from and in which order (later wins): `<dir>/<name>.conf`, then
//! `<dir>/<name>.conf.d/*.conf` in name order, then the file given with `-c`. `<dir>` is
//! `/etc/hirte`, or `$HIRTE_CONFIG_DIR` when set (tests and the demo use that).

use super::entry::Entry;
use super::error::ConfigError;
use super::log_settings::LogConfig;
use super::parse_text;
use crate::{log, log_error, log_info};
use std::path::{Path, PathBuf};

/// Default configuration directory.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/hirte";
/// Environment variable that replaces the configuration directory.
pub const CONFIG_DIR_ENV: &str = "HIRTE_CONFIG_DIR";
/// Largest config file read, so a wrong `-c /dev/zero` cannot eat memory.
pub const MAX_CONFIG_FILE_SIZE: u64 = 1024 * 1024;

/// Reads one config file: a regular file of at most `MAX_CONFIG_FILE_SIZE` bytes. Opened
/// without blocking (a FIFO would wait for a writer) and checked on the open file, then read
/// through a limit, so a FIFO, a device like `/dev/zero` or a file that grows while read can
/// neither block the daemon nor fill its memory (also on SIGHUP).
// [impl->req~config.regular-file~1]
pub(super) fn read_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = path.display().to_string();
    let io = |e: std::io::Error| ConfigError::Io {
        file: file.clone(),
        reason: e.to_string(),
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(io)?;
    if !f.metadata().map_err(io)?.is_file() {
        return Err(ConfigError::NotRegular { file });
    }
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_SIZE {
        return Err(ConfigError::TooLarge { file });
    }
    String::from_utf8(bytes).map_err(|e| ConfigError::Io {
        file: file.clone(),
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
fn load_entries(
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

/// One daemon's settings: where its files are and how one entry applies.
pub trait Settings: Default + Sized {
    /// The section header of the daemon's own keys.
    const SECTION: &'static str;
    /// `<FILE_BASE>.conf` and `<FILE_BASE>.conf.d/`.
    const FILE_BASE: &'static str;

    /// Applies one entry; unknown keys and bad values are errors.
    fn apply_entry(&mut self, e: &Entry) -> Result<(), ConfigError>;

    /// The logging settings, the part a reload applies.
    fn log_settings(&self) -> &LogConfig;
}

/// Reads the layered files (see the module doc) in order onto the defaults.
pub fn load_layers<S: Settings>(dir: &Path, extra: Option<&Path>) -> Result<S, ConfigError> {
    let mut cfg = S::default();
    for e in load_entries(dir, S::FILE_BASE, S::SECTION, extra)? {
        cfg.apply_entry(&e)?;
    }
    Ok(cfg)
}

/// SIGHUP: re-reads the configuration; only the log level takes effect without a restart.
// [impl->req~ops.sighup~1]
pub fn reload_config<S: Settings>(extra: Option<&Path>) {
    match load_layers::<S>(&config_dir(), extra) {
        Ok(cfg) => {
            let level = cfg.log_settings().level;
            log::set_level(level);
            log_info!(
                "Configuration re-read: log level is now {level}; other settings need a restart"
            );
        }
        Err(e) => log_error!("Configuration not re-read: {e}"),
    }
}
