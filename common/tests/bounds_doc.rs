//! `safety/bounds.md` states each bound of `common/src/bounds.rs` with its value: this test
//! reads the table rows and checks every stated value against the constant, and that every
//! constant of `bounds.rs` has a row.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

use hirte_common::bounds::*;
use std::time::Duration;

const BOUNDS_MD: &str = include_str!("../../safety/bounds.md");
const BOUNDS_RS: &str = include_str!("../src/bounds.rs");

/// A constant's value in the unit the table uses: bytes or counts as they are, times in ms.
fn actual(name: &str) -> Option<u128> {
    let ms = |d: Duration| d.as_millis();
    let n = |v: usize| v as u128;
    Some(match name {
        "MAX_FRAME_SIZE" => n(MAX_FRAME_SIZE),
        "MAX_HANDSHAKE_FRAME_SIZE" => n(MAX_HANDSHAKE_FRAME_SIZE),
        "HANDSHAKE_TIMEOUT" => ms(HANDSHAKE_TIMEOUT),
        "MAX_PENDING_HANDSHAKES" => n(MAX_PENDING_HANDSHAKES),
        "FD_RESERVE" => u128::from(FD_RESERVE),
        "MAX_NODES" => n(MAX_NODES),
        "MAX_NODE_NAME_LEN" => n(MAX_NODE_NAME_LEN),
        "CORE_QUEUE_DEPTH" => n(CORE_QUEUE_DEPTH),
        "LINK_OUTBOUND_DEPTH" => n(LINK_OUTBOUND_DEPTH),
        "MAX_PENDING_CALLS_PER_NODE" => n(MAX_PENDING_CALLS_PER_NODE),
        "MAX_JOBS" => n(MAX_JOBS),
        "MAX_AGENT_JOBS" => n(MAX_AGENT_JOBS),
        "LINK_WRITE_TIMEOUT" => ms(LINK_WRITE_TIMEOUT),
        "CONNECT_TIMEOUT" => ms(CONNECT_TIMEOUT),
        "MANAGER_LOOKUP_TIMEOUT" => ms(MANAGER_LOOKUP_TIMEOUT),
        "BUS_WRITE_TIMEOUT" => ms(BUS_WRITE_TIMEOUT),
        "SYSTEMD_CALL_TIMEOUT" => ms(SYSTEMD_CALL_TIMEOUT),
        "CORE_TICK" => ms(CORE_TICK),
        "SHUTDOWN_JOIN_TIMEOUT" => ms(SHUTDOWN_JOIN_TIMEOUT),
        "CONNECTION_THREAD_STACK" => n(CONNECTION_THREAD_STACK),
        "READ_CHUNK" => n(READ_CHUNK),
        "MAX_MONITORS" => n(MAX_MONITORS),
        "MAX_MONITORS_PER_OWNER" => n(MAX_MONITORS_PER_OWNER),
        "MAX_SUBSCRIPTIONS_PER_MONITOR" => n(MAX_SUBSCRIPTIONS_PER_MONITOR),
        "MAX_UNITS_PER_SUBSCRIPTION" => n(MAX_UNITS_PER_SUBSCRIPTION),
        "MAX_PEERS_PER_MONITOR" => n(MAX_PEERS_PER_MONITOR),
        "MAX_SEEN_UNITS_PER_SUBSCRIPTION" => n(MAX_SEEN_UNITS_PER_SUBSCRIPTION),
        "MAX_AGENT_SUBSCRIPTIONS" => n(MAX_AGENT_SUBSCRIPTIONS),
        "MAX_UNIT_MATCH_RULES" => n(MAX_UNIT_MATCH_RULES),
        "EXEC_MAX_OUTPUT" => n(EXEC_MAX_OUTPUT),
        "MAX_AGENT_PROXIES" => n(MAX_AGENT_PROXIES),
        "MAX_PROXIES_PER_NODE" => n(MAX_PROXIES_PER_NODE),
        "PROXY_START_TIMEOUT" => ms(PROXY_START_TIMEOUT),
        "DEP_START_TIMEOUT" => ms(DEP_START_TIMEOUT),
        "WEB_WORKERS" => n(WEB_WORKERS),
        "WEB_ACCEPT_QUEUE_DEPTH" => n(WEB_ACCEPT_QUEUE_DEPTH),
        "WEB_MAX_REQUEST_HEAD" => n(WEB_MAX_REQUEST_HEAD),
        "WEB_MAX_HEADERS" => n(WEB_MAX_HEADERS),
        "WEB_REQUEST_TIMEOUT" => ms(WEB_REQUEST_TIMEOUT),
        "WEB_WRITE_TIMEOUT" => ms(WEB_WRITE_TIMEOUT),
        "WEB_MAX_EVENTS" => n(WEB_MAX_EVENTS),
        "WEB_MAX_JOBS" => n(WEB_MAX_JOBS),
        "WEB_MAX_JOB_TIMINGS" => n(WEB_MAX_JOB_TIMINGS),
        "WEB_MAX_JOB_SERIES" => n(WEB_MAX_JOB_SERIES),
        "WEB_REFRESH_INTERVAL" => ms(WEB_REFRESH_INTERVAL),
        "WEB_CALL_TIMEOUT" => ms(WEB_CALL_TIMEOUT),
        "MAX_CERT_CHAIN_LEN" => n(MAX_CERT_CHAIN_LEN),
        "MAX_CERT_CHAIN_BYTES" => n(MAX_CERT_CHAIN_BYTES),
        "MAX_PEM_FILE_SIZE" => n(MAX_PEM_FILE_SIZE),
        "MAX_AUDIT_CALLERS" => n(MAX_AUDIT_CALLERS),
        "MAX_AUDIT_OPEN" => n(MAX_AUDIT_OPEN),
        "AUDIT_CREDENTIALS_TIMEOUT" => ms(AUDIT_CREDENTIALS_TIMEOUT),
        "MAX_MANAGERS" => n(MAX_MANAGERS),
        "FAILBACK_PROBE_TIMEOUT" => ms(FAILBACK_PROBE_TIMEOUT),
        "RECONNECT_BACKOFF_START" => ms(RECONNECT_BACKOFF_START),
        "RECONNECT_SUMMARY_EVERY" => RECONNECT_SUMMARY_EVERY as u128,
        "CORE_QUEUE_BYTES" => n(CORE_QUEUE_BYTES),
        "MAX_UNASKED_BYTES_PER_WINDOW" => n(MAX_UNASKED_BYTES_PER_WINDOW),
        "MAX_UNASKED_FRAMES_PER_WINDOW" => n(MAX_UNASKED_FRAMES_PER_WINDOW),
        "UNASKED_WINDOW" => ms(UNASKED_WINDOW),
        "MAX_AGENT_SIGNAL_SIZE" => n(MAX_AGENT_SIGNAL_SIZE),
        "RESERVED_CONTROL_CALLS_PER_NODE" => n(RESERVED_CONTROL_CALLS_PER_NODE),
        "MAX_EVENTS_PER_TURN" => n(MAX_EVENTS_PER_TURN),
        "BLUECHI_PENDING_CALLS" => n(BLUECHI_PENDING_CALLS),
        "MAX_FANOUT_BYTES" => n(MAX_FANOUT_BYTES),
        "MAX_MONITOR_EVENT_BYTES" => n(MAX_MONITOR_EVENT_BYTES),
        _ => return None,
    })
}

/// The value a table cell starts with, in the unit of [`actual`]: `4 MiB (...)`, `8 KiB`,
/// `5 s`, `100 ms`, `1 to 256 units`, `4096 events ...`.
fn stated(cell: &str) -> Option<u128> {
    let cell = cell.trim();
    let cell = cell.strip_prefix("1 to ").unwrap_or(cell);
    let mut words = cell.split_whitespace();
    let number: u128 = words.next()?.replace(',', "").parse().ok()?;
    let unit = words.next().unwrap_or("").trim_end_matches([',', ';', '.']);
    let scale = match unit {
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        "s" => 1000,
        "ms" => 1,
        "min" => 60_000,
        _ => 1,
    };
    Some(number * scale)
}

/// `(constant, value cell, row)` of every table row whose first cell names a constant of
/// `bounds.rs` (rows of constants defined elsewhere name their file in the cell).
fn rows() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for line in BOUNDS_MD.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(first), Some(value)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        if first.contains(".rs`") || first.contains("(config)") {
            continue;
        }
        let names: Vec<&str> = first
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|n| actual(n).is_some())
            .collect();
        if let [name] = names[..] {
            out.push((name.to_string(), value.to_string(), line.to_string()));
        }
    }
    out
}

// [utest->req~bounds.documented~1]
#[test]
fn every_bound_in_safety_bounds_md_states_the_value_of_its_constant() {
    let rows = rows();
    let mut wrong = Vec::new();
    for (name, value, row) in &rows {
        let want = actual(name).unwrap();
        match stated(value) {
            Some(v) if v == want => {}
            other => wrong.push(format!(
                "{name}: bounds.md says {value:?} ({other:?}), bounds.rs has {want}\n  {row}"
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Every constant of bounds.rs has a row, and this test knows its value.
    for line in BOUNDS_RS.lines() {
        let Some(rest) = line.strip_prefix("pub const ") else {
            continue;
        };
        let name = rest.split(':').next().unwrap().trim();
        assert!(
            actual(name).is_some(),
            "{name} is new in bounds.rs: add it to actual() here"
        );
        assert!(
            rows.iter().any(|(n, _, _)| n == name),
            "{name} has no row of its own in safety/bounds.md"
        );
    }
}

#[test]
fn stated_values_parse() {
    assert_eq!(stated("4 MiB (4,194,304 bytes)"), Some(4 * 1024 * 1024));
    assert_eq!(stated("8 KiB"), Some(8192));
    assert_eq!(stated("5 s"), Some(5000));
    assert_eq!(stated("100 ms"), Some(100));
    assert_eq!(stated("1 to 256 units per subscription"), Some(256));
    assert_eq!(stated("4096 events from connection threads"), Some(4096));
    assert_eq!(stated("1 s, once per client"), Some(1000));
    assert_eq!(stated("about"), None);
}

/// Release builds unwind (a panic stays in its thread) and keep overflow checks (an overflow
/// in a bound's arithmetic is a contained panic, not a silently wrong value).
// [utest->req~bounds.overflow-checks~1]
#[test]
fn release_builds_unwind_and_keep_overflow_checks() {
    let manifest: toml::Table = include_str!("../../Cargo.toml").parse().unwrap();
    let release = &manifest["profile"]["release"];
    assert_eq!(
        release.get("overflow-checks").and_then(|v| v.as_bool()),
        Some(true)
    );
    assert_eq!(
        release.get("panic").and_then(|v| v.as_str()),
        Some("unwind")
    );
}
