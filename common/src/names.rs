//! Node names: what is valid, and how a name becomes a D-Bus object path element.

use crate::bounds::MAX_NODE_NAME_LEN;
use std::fmt;

/// Why a node name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong(usize),
    BadChar(char),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "node name is empty"),
            NameError::TooLong(n) => {
                write!(
                    f,
                    "node name is {n} bytes long, the limit is {MAX_NODE_NAME_LEN}"
                )
            }
            NameError::BadChar(c) => write!(
                f,
                "node name contains {c:?}; allowed are letters, digits, '-', '_' and '.'"
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// A node name is 1..=64 bytes of `[A-Za-z0-9._-]`: safe in logs, paths and tables.
// [impl->req~common.node-name~1]
pub fn validate_node_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NODE_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

/// Why a proxy's target unit or instance name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyNameError {
    NotService(String),
    EmptyUnit,
    UnitTooLong(String),
    BadChar { unit: String, c: char },
    NoSeparator(String),
    BadNode { instance: String, reason: NameError },
    NoUnit(String),
}

impl fmt::Display for ProxyNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyNameError::NotService(unit) => write!(f, "'{unit}' is not a .service unit"),
            ProxyNameError::EmptyUnit => write!(f, "the unit name is empty"),
            ProxyNameError::UnitTooLong(unit) => write!(f, "unit name '{unit}' is too long"),
            ProxyNameError::BadChar { unit, c } => write!(f, "unit name '{unit}' contains {c:?}"),
            ProxyNameError::NoSeparator(instance) => {
                write!(f, "no '_' between node and unit in '{instance}'")
            }
            ProxyNameError::BadNode { instance, reason } => write!(f, "'{instance}': {reason}"),
            ProxyNameError::NoUnit(instance) => {
                write!(f, "no unit after the node name in '{instance}'")
            }
        }
    }
}

impl std::error::Error for ProxyNameError {}

/// Longest unit name systemd accepts (`UNIT_NAME_MAX`).
pub const MAX_UNIT_NAME_LEN: usize = 255;

/// A unit that can be the target of a proxy: `NAME.service`, with `NAME` of systemd's unit
/// name characters but no `@` (the anchor `hirte-dep@NAME.service` makes `NAME` an instance,
/// and an instance cannot hold a template's `@`).
// [impl->req~proxy.agent-api~1]
pub fn validate_proxy_target(unit: &str) -> Result<(), ProxyNameError> {
    let Some(name) = unit.strip_suffix(".service") else {
        return Err(ProxyNameError::NotService(unit.to_string()));
    };
    if name.is_empty() {
        return Err(ProxyNameError::EmptyUnit);
    }
    // Room for the longest template prefix plus the suffix.
    if unit.len() + "hirte-proxy@".len() + MAX_NODE_NAME_LEN + 1 > MAX_UNIT_NAME_LEN {
        return Err(ProxyNameError::UnitTooLong(unit.to_string()));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\')))
    {
        Some(c) => Err(ProxyNameError::BadChar {
            unit: unit.to_string(),
            c,
        }),
        None => Ok(()),
    }
}

/// Why a unit name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitNameError {
    Empty,
    TooLong(usize),
    BadChar(char),
    NoSuffix,
    BadSuffix(String),
    BadInstance,
}

impl fmt::Display for UnitNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitNameError::Empty => write!(f, "unit name is empty"),
            UnitNameError::TooLong(n) => write!(
                f,
                "unit name is {n} bytes long, the limit is {MAX_UNIT_NAME_LEN}"
            ),
            UnitNameError::BadChar(c) => write!(
                f,
                "unit name contains {c:?}; allowed are letters, digits, ':', '-', '_', '.', '\\' and one '@'"
            ),
            UnitNameError::NoSuffix => write!(f, "unit name has no type suffix (e.g. '.service')"),
            UnitNameError::BadSuffix(s) => write!(f, "'.{s}' is not a unit type"),
            UnitNameError::BadInstance => {
                write!(f, "unit name has more than one '@' or nothing before it")
            }
        }
    }
}

impl std::error::Error for UnitNameError {}

/// The unit types systemd knows (`unit_type_to_string`).
const UNIT_SUFFIXES: [&str; 11] = [
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// A unit name as systemd's `unit_name_is_valid` accepts it: at most 255 bytes of
/// `[A-Za-z0-9:_.\\-]` with at most one `@` (a template or instance, something before it),
/// a non-empty name and a known type suffix.
// [impl->req~common.unit-name~1]
pub fn validate_unit_name(unit: &str) -> Result<(), UnitNameError> {
    if unit.is_empty() {
        return Err(UnitNameError::Empty);
    }
    if unit.len() > MAX_UNIT_NAME_LEN {
        return Err(UnitNameError::TooLong(unit.len()));
    }
    if let Some(c) = unit
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@')))
    {
        return Err(UnitNameError::BadChar(c));
    }
    let Some((name, suffix)) = unit.rsplit_once('.') else {
        return Err(UnitNameError::NoSuffix);
    };
    if name.is_empty() {
        return Err(UnitNameError::Empty);
    }
    if !UNIT_SUFFIXES.contains(&suffix) {
        return Err(UnitNameError::BadSuffix(suffix.to_string()));
    }
    if name.matches('@').count() > 1 || name.starts_with('@') {
        return Err(UnitNameError::BadInstance);
    }
    Ok(())
}

/// Splits a proxy instance `NODE_UNIT.service` (as `hirte-proxy@.service` passes it) at the
/// first `_` into the target node and unit. Node names with `_` cannot be targets.
// [impl->req~proxy.templates~1]
pub fn split_proxy_instance(instance: &str) -> Result<(&str, &str), ProxyNameError> {
    let Some((node, unit)) = instance.split_once('_') else {
        return Err(ProxyNameError::NoSeparator(instance.to_string()));
    };
    validate_node_name(node).map_err(|e| ProxyNameError::BadNode {
        instance: instance.to_string(),
        reason: e,
    })?;
    if unit.is_empty() || unit == ".service" {
        return Err(ProxyNameError::NoUnit(instance.to_string()));
    }
    validate_proxy_target(unit)?;
    Ok((node, unit))
}

/// Escapes a string into one object path element as sd-bus `bus_path_escape` does:
/// every byte outside `[A-Za-z0-9]`, and a leading digit, becomes `_xx`; "" becomes `_`.
// [impl->req~common.path-escape~1]
pub fn escape_path_element(s: &str) -> String {
    if s.is_empty() {
        return "_".to_string();
    }
    let mut out = String::with_capacity(s.len() * 3);
    for (i, b) in s.bytes().enumerate() {
        let plain = b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0);
        if plain {
            out.push(char::from(b));
        } else {
            out.push('_');
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

/// Reverses `escape_path_element`; `None` when the element is not a valid escape.
pub fn unescape_path_element(s: &str) -> Option<String> {
    if s == "_" {
        return Some(String::new());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'_' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~common.path-escape~1]
    #[test]
    fn escapes_like_sd_bus() {
        assert_eq!(escape_path_element("qm-node1"), "qm_2dnode1");
        assert_eq!(escape_path_element(""), "_");
        assert_eq!(escape_path_element("1abc"), "_31abc");
        assert_eq!(escape_path_element("a.b_c"), "a_2eb_5fc");
        for s in ["qm-node1", "", "1abc", "a.b_c", "x\u{e9}"] {
            assert_eq!(
                unescape_path_element(&escape_path_element(s)).as_deref(),
                Some(s)
            );
        }
        assert_eq!(unescape_path_element("_zz"), None);
    }

    // [utest->req~proxy.agent-api~1]
    #[test]
    fn proxy_instances_split_at_the_first_underscore() {
        assert_eq!(
            split_proxy_instance("agent2_my_db.service"),
            Ok(("agent2", "my_db.service"))
        );
        assert!(split_proxy_instance("nounderscore.service").is_err());
        assert!(split_proxy_instance("_db.service").is_err());
        assert!(split_proxy_instance("agent2_.service").is_err());
        assert!(split_proxy_instance("agent2_db.socket").is_err());
        assert!(validate_proxy_target("a@b.service").is_err());
        assert!(validate_proxy_target("db.service").is_ok());
        assert!(validate_proxy_target(&format!("{}.service", "a".repeat(200))).is_err());
    }

    // [utest->req~common.unit-name~1]
    #[test]
    fn validates_unit_names_like_systemd() {
        for ok in [
            "a.service",
            "getty@tty1.service",
            "getty@.service",
            "dev-sda1.device",
            "sys-devices-x\\x2dy.device",
            "-.mount",
            "user.slice",
        ] {
            assert_eq!(validate_unit_name(ok), Ok(()), "{ok}");
        }
        let long = format!("{}.service", "a".repeat(248));
        assert_eq!(long.len(), 256);
        assert_eq!(validate_unit_name(&long), Err(UnitNameError::TooLong(256)));
        assert!(validate_unit_name(&long[1..]).is_ok());
        assert_eq!(validate_unit_name(""), Err(UnitNameError::Empty));
        assert_eq!(validate_unit_name(".service"), Err(UnitNameError::Empty));
        assert_eq!(
            validate_unit_name("a b.service"),
            Err(UnitNameError::BadChar(' '))
        );
        assert_eq!(
            validate_unit_name("a/b.service"),
            Err(UnitNameError::BadChar('/'))
        );
        assert_eq!(validate_unit_name("*"), Err(UnitNameError::BadChar('*')));
        assert_eq!(
            validate_unit_name("noservice"),
            Err(UnitNameError::NoSuffix)
        );
        assert_eq!(
            validate_unit_name("a.exe"),
            Err(UnitNameError::BadSuffix("exe".into()))
        );
        assert_eq!(
            validate_unit_name("a@b@c.service"),
            Err(UnitNameError::BadInstance)
        );
        assert_eq!(
            validate_unit_name("@a.service"),
            Err(UnitNameError::BadInstance)
        );
        assert!(validate_unit_name("caf\u{e9}.service").is_err());
        assert_eq!(
            UnitNameError::TooLong(300).to_string(),
            "unit name is 300 bytes long, the limit is 255"
        );
    }

    // [utest->req~common.node-name~1]
    #[test]
    fn validates_node_names() {
        assert!(validate_node_name("agent-1.lab_x").is_ok());
        assert_eq!(validate_node_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_node_name(&"a".repeat(65)),
            Err(NameError::TooLong(65))
        );
        assert_eq!(validate_node_name("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(validate_node_name("a/b"), Err(NameError::BadChar('/')));
        assert!(validate_node_name("\u{e9}").is_err());
    }
}
