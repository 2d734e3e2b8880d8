//! `set-property NODE UNIT K=V...`: turns `K=V` words into the typed `(name, variant)` pairs
//! systemd's `SetUnitProperties` takes. systemd rejects a property sent with the wrong D-Bus
//! type, so each supported key has a fixed type here, and unknown keys are refused before
//! anything is sent.

use dbus::arg::{RefArg, Variant};
use std::fmt;

/// A typed property value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    U64(u64),
    Bool(bool),
}

impl Value {
    pub fn into_variant(self) -> Variant<Box<dyn RefArg>> {
        match self {
            Value::Str(s) => Variant(Box::new(s)),
            Value::U64(n) => Variant(Box::new(n)),
            Value::Bool(b) => Variant(Box::new(b)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Bool,
    /// A weight in the given inclusive range.
    Weight(u64, u64),
    /// Bytes with K/M/G/T/P/E suffixes (base 1024) or `infinity`.
    Bytes,
    /// A count or `infinity`.
    Count,
    /// `CPUQuota=20%`, sent as `CPUQuotaPerSecUSec`.
    Percent,
}

/// Keys `set-property` accepts, with their type. The D-Bus name equals the key except for
/// `CPUQuota` (see [`Kind::Percent`]).
const KEYS: &[(&str, Kind)] = &[
    ("Description", Kind::Text),
    ("CPUAccounting", Kind::Bool),
    ("MemoryAccounting", Kind::Bool),
    ("IOAccounting", Kind::Bool),
    ("BlockIOAccounting", Kind::Bool),
    ("TasksAccounting", Kind::Bool),
    ("IPAccounting", Kind::Bool),
    ("MemoryOOMGroup", Kind::Bool),
    ("CPUWeight", Kind::Weight(1, 10_000)),
    ("StartupCPUWeight", Kind::Weight(1, 10_000)),
    ("IOWeight", Kind::Weight(1, 10_000)),
    ("StartupIOWeight", Kind::Weight(1, 10_000)),
    ("CPUShares", Kind::Weight(2, 262_144)),
    ("StartupCPUShares", Kind::Weight(2, 262_144)),
    ("BlockIOWeight", Kind::Weight(10, 1_000)),
    ("StartupBlockIOWeight", Kind::Weight(10, 1_000)),
    ("MemoryMin", Kind::Bytes),
    ("MemoryLow", Kind::Bytes),
    ("MemoryHigh", Kind::Bytes),
    ("MemoryMax", Kind::Bytes),
    ("MemorySwapMax", Kind::Bytes),
    ("MemoryLimit", Kind::Bytes),
    ("TasksMax", Kind::Count),
    ("CPUQuota", Kind::Percent),
];

/// systemd's "no limit" for byte and count limits.
const INFINITY: u64 = u64::MAX;

/// The supported keys, for error messages and docs.
fn supported_keys() -> String {
    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

/// What is wrong with a `Key=Value` word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyError {
    NotAssignment(String),
    UnknownKey(String),
    BadValue {
        key: String,
        raw: String,
        why: String,
    },
}

impl fmt::Display for PropertyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyError::NotAssignment(word) => {
                write!(f, "'{word}' is not of the form Key=Value")
            }
            PropertyError::UnknownKey(key) => write!(
                f,
                "unknown or unsupported property '{key}' (supported: {})",
                supported_keys()
            ),
            PropertyError::BadValue { key, raw, why } => {
                write!(f, "invalid value '{raw}' for {key}: {why}")
            }
        }
    }
}

impl std::error::Error for PropertyError {}

/// Parses one `Key=Value` word into the D-Bus property name and typed value.
pub fn parse_assignment(word: &str) -> Result<(String, Value), PropertyError> {
    let (key, raw) = word
        .split_once('=')
        .ok_or_else(|| PropertyError::NotAssignment(word.to_string()))?;
    let key = key.trim();
    let (_, kind) = KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .ok_or_else(|| PropertyError::UnknownKey(key.to_string()))?;
    let bad = |why: &str| PropertyError::BadValue {
        key: key.to_string(),
        raw: raw.to_string(),
        why: why.to_string(),
    };
    let value = raw.trim();
    match kind {
        Kind::Text => Ok((key.to_string(), Value::Str(raw.to_string()))),
        Kind::Bool => parse_bool(value)
            .map(|b| (key.to_string(), Value::Bool(b)))
            .ok_or_else(|| bad("expected yes/no, true/false, on/off or 1/0")),
        Kind::Weight(lo, hi) => {
            let n: u64 = value
                .parse()
                .map_err(|_| bad(&format!("expected a number from {lo} to {hi}")))?;
            if n < *lo || n > *hi {
                return Err(bad(&format!("expected a number from {lo} to {hi}")));
            }
            Ok((key.to_string(), Value::U64(n)))
        }
        Kind::Bytes => parse_bytes(value)
            .map(|n| (key.to_string(), Value::U64(n)))
            .ok_or_else(|| bad("expected bytes with an optional K, M, G, T, P or E suffix (base 1024), or 'infinity'")),
        Kind::Count => {
            if value == "infinity" {
                return Ok((key.to_string(), Value::U64(INFINITY)));
            }
            value
                .parse::<u64>()
                .map(|n| (key.to_string(), Value::U64(n)))
                .map_err(|_| bad("expected a number or 'infinity'"))
        }
        Kind::Percent => parse_quota(value)
            .map(|us| ("CPUQuotaPerSecUSec".to_string(), Value::U64(us)))
            .ok_or_else(|| {
                bad("expected a percentage such as 20% or 150% (up to two decimals), or 'infinity'")
            }),
    }
}

/// Booleans as systemd spells them.
fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// `4096`, `100K`, `64M`, `1G` (base 1024, optional trailing `B`) or `infinity`. Decimals such
/// as `1.5G` are refused rather than rounded.
fn parse_bytes(s: &str) -> Option<u64> {
    if s == "infinity" {
        return Some(INFINITY);
    }
    let s = s.strip_suffix(['B', 'b']).unwrap_or(s);
    let (digits, shift) = match s.chars().last()? {
        'K' | 'k' => (s.get(..s.len() - 1)?, 10),
        'M' | 'm' => (s.get(..s.len() - 1)?, 20),
        'G' | 'g' => (s.get(..s.len() - 1)?, 30),
        'T' | 't' => (s.get(..s.len() - 1)?, 40),
        'P' | 'p' => (s.get(..s.len() - 1)?, 50),
        'E' | 'e' => (s.get(..s.len() - 1)?, 60),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let v = n.checked_mul(1u64.checked_shl(shift)?)?;
    // u64::MAX means "no limit" to systemd; a number that large must be spelled infinity.
    (v != INFINITY).then_some(v)
}

/// `20%` -> 200000 µs of CPU time per second; `12.5%` -> 125000; `infinity` -> no quota.
fn parse_quota(s: &str) -> Option<u64> {
    if s == "infinity" {
        return Some(INFINITY);
    }
    let num = s.strip_suffix('%')?;
    let (whole, frac) = match num.split_once('.') {
        Some((w, f)) => (w, f),
        None => (num, ""),
    };
    let digits = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit());
    if !digits(whole) || frac.len() > 2 || (!frac.is_empty() && !digits(frac)) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let frac: u64 = format!("{frac:0<2}").parse().ok()?;
    let hundredths = whole.checked_mul(100)?.checked_add(frac)?;
    // 1% of a second is 10 ms = 10000 µs, so one hundredth of a percent is 100 µs.
    let us = hundredths.checked_mul(100)?;
    (us > 0).then_some(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(w: &str) -> Result<(String, Value), String> {
        parse_assignment(w).map_err(|e| e.to_string())
    }

    #[test]
    fn typed_values() {
        assert_eq!(
            p("CPUWeight=200").unwrap(),
            ("CPUWeight".into(), Value::U64(200))
        );
        assert_eq!(
            p("MemoryMax=512M").unwrap(),
            ("MemoryMax".into(), Value::U64(512 << 20))
        );
        assert_eq!(
            p("MemoryMax=2G").unwrap(),
            ("MemoryMax".into(), Value::U64(2 << 30))
        );
        assert_eq!(
            p("MemoryHigh=100K").unwrap(),
            ("MemoryHigh".into(), Value::U64(100 << 10))
        );
        assert_eq!(
            p("MemoryMax=4096").unwrap(),
            ("MemoryMax".into(), Value::U64(4096))
        );
        assert_eq!(
            p("MemoryMax=infinity").unwrap(),
            ("MemoryMax".into(), Value::U64(u64::MAX))
        );
        assert_eq!(
            p("Description=My service = great").unwrap(),
            (
                "Description".into(),
                Value::Str("My service = great".into())
            )
        );
        assert_eq!(
            p("CPUAccounting=yes").unwrap(),
            ("CPUAccounting".into(), Value::Bool(true))
        );
        assert_eq!(
            p("MemoryAccounting=off").unwrap(),
            ("MemoryAccounting".into(), Value::Bool(false))
        );
        assert_eq!(
            p("TasksMax=infinity").unwrap(),
            ("TasksMax".into(), Value::U64(u64::MAX))
        );
        assert_eq!(
            p("TasksMax=64").unwrap(),
            ("TasksMax".into(), Value::U64(64))
        );
        assert_eq!(
            p("CPUQuota=20%").unwrap(),
            ("CPUQuotaPerSecUSec".into(), Value::U64(200_000))
        );
        assert_eq!(
            p("CPUQuota=12.5%").unwrap(),
            ("CPUQuotaPerSecUSec".into(), Value::U64(125_000))
        );
        assert_eq!(
            p("CPUQuota=150%").unwrap(),
            ("CPUQuotaPerSecUSec".into(), Value::U64(1_500_000))
        );
    }

    #[test]
    fn bad_input_is_refused_with_one_line() {
        for w in [
            "CPUWeight",
            "CPUWeight=0",
            "CPUWeight=10001",
            "CPUWeight=abc",
            "MemoryMax=12X",
            "MemoryMax=-1",
            "MemoryMax=",
            "MemoryMax=1.5G",
            "MemoryMax=99999999999E",
            "CPUAccounting=maybe",
            "CPUQuota=20",
            "CPUQuota=0%",
            "CPUQuota=1.234%",
            "TasksMax=lots",
            "NoSuchKey=1",
            "cpuweight=100",
        ] {
            let e = p(w).unwrap_err();
            assert!(!e.contains('\n'), "{w}: {e}");
        }
        assert!(p("Bogus=1").unwrap_err().contains("unknown"));
        assert!(p("Bogus=1").unwrap_err().contains("CPUWeight"));
    }
}
