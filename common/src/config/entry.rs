//! One setting as read (`Key=Value` with its origin) and the readers that turn its text into
//! typed values, with the error messages every daemon shares.

use super::error::{ConfigError, Origin};
use crate::bounds::MAX_NODES;
use crate::names::validate_node_name;
use crate::timespan::{format_timespan, parse_timespan};
use std::fmt;
use std::time::Duration;

/// A value as written: one string, or a list (comma-separated or a TOML array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawValue {
    Str(String),
    List(Vec<String>),
}

impl RawValue {
    pub(super) fn as_text(&self) -> String {
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

pub(super) fn unknown_key(e: &Entry) -> ConfigError {
    ConfigError::UnknownKey {
        at: e.at.clone(),
        key: e.key.clone(),
    }
}

pub(super) fn bad(e: &Entry, reason: impl fmt::Display) -> ConfigError {
    ConfigError::BadValue {
        at: e.at.clone(),
        key: e.key.clone(),
        value: e.value.as_text(),
        reason: reason.to_string(),
    }
}

pub(super) fn single(e: &Entry) -> Result<&str, ConfigError> {
    match &e.value {
        RawValue::Str(s) => Ok(s.as_str()),
        RawValue::List(_) => Err(bad(e, "expected a single value, not a list")),
    }
}

pub(super) fn list(e: &Entry) -> Vec<String> {
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

pub(super) fn port(e: &Entry) -> Result<u16, ConfigError> {
    match single(e)?.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(bad(e, "expected a TCP port from 1 to 65535")),
    }
}

pub(super) fn boolean(e: &Entry) -> Result<bool, ConfigError> {
    match single(e)?.to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        _ => Err(bad(
            e,
            "expected a boolean (yes/no, true/false, 1/0, on/off)",
        )),
    }
}

pub(super) fn span(e: &Entry, min: Duration, max: Duration) -> Result<Duration, ConfigError> {
    let d = parse_timespan(single(e)?).map_err(|err| bad(e, err))?;
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

/// A list of node names (`AllowedNodeNames=`, `AllowDependenciesOn=`): each valid, at most
/// [`MAX_NODES`] of them.
pub(super) fn node_names(e: &Entry) -> Result<Vec<String>, ConfigError> {
    let names = list(e);
    if names.len() > MAX_NODES {
        return Err(bad(e, format!("more than {MAX_NODES} node names")));
    }
    for n in &names {
        validate_node_name(n).map_err(|err| bad(e, format!("'{n}': {err}")))?;
    }
    Ok(names)
}
