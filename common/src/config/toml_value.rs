//! The TOML spellings of a value (`"x"`, `'x'`, `["a", "b"]`), parsed by the `toml` crate.

use super::entry::RawValue;
use super::error::{ConfigError, Origin};

/// Turns a TOML-spelled value (`"x"`, `'x'`, `["a","b"]`) into a raw value; other text stays as is.
pub(super) fn parse_value(key: &str, raw: &str, at: &Origin) -> Result<RawValue, ConfigError> {
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
