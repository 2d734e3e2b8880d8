//! What can be wrong with a configuration, and where: every message names file, line and key.

use super::layers::MAX_CONFIG_FILE_SIZE;
use std::fmt;

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
    /// A FIFO, device, directory or socket where a config file was expected.
    NotRegular {
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
            ConfigError::NotRegular { file } => write!(f, "{file}: not a regular file"),
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
