//! Logging settings, the same keys in both daemons.

use super::entry::{bad, boolean, single, Entry};
use super::error::ConfigError;
use crate::log::{Level, Target};

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
    pub(super) fn apply(&mut self, e: &Entry) -> Result<bool, ConfigError> {
        match e.key.as_str() {
            "LogLevel" => {
                self.level = single(e)?.parse().map_err(|r| bad(e, r))?;
            }
            "LogTarget" => {
                self.target = single(e)?.parse().map_err(|r| bad(e, r))?;
            }
            "LogIsQuiet" => self.is_quiet = boolean(e)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}
