//! The systemd-style file syntax: `[section]` headers and `Key=Value` lines, `#`/`;` comments.

use super::entry::Entry;
use super::error::{ConfigError, Origin};
use super::toml_value::parse_value;
use crate::names::validate_node_name;

/// Prefix of a per-node section header (`[node NAME]`).
const NODE_SECTION_PREFIX: &str = "node ";

/// Parses one file's text. Only `section` is allowed, and `[node NAME]` sections after it when
/// `node_sections`; a key twice in one section of one file is an error.
// [impl->req~config.syntax~1]
pub(super) fn parse_key_value(
    text: &str,
    file: &str,
    section: &str,
    node_sections: bool,
) -> Result<Vec<Entry>, ConfigError> {
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
                Some(n) if node_sections => {
                    let n = n.trim().trim_matches('"');
                    validate_node_name(n).map_err(|e| ConfigError::Syntax {
                        at: at.clone(),
                        reason: format!("section [{name}]: {e}"),
                    })?;
                    Some(n.to_string())
                }
                // [impl->req~bluechi.config~1]
                _ if name == section || super::bluechi::section_alias(section) == Some(name) => {
                    None
                }
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
