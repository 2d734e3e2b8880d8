//! BlueChi's spellings, so a BlueChi configuration file works after a rename: the sections
//! `[bluechi-controller]` and `[bluechi-agent]`, the `Controller...` keys, and BlueChi keys we
//! have no use for, which are accepted with a warning naming them (never silently).

use super::entry::Entry;
use crate::log_warn;

/// BlueChi's section for our own section `ours`.
pub(super) fn section_alias(ours: &str) -> Option<&'static str> {
    match ours {
        "hirte" => Some("bluechi-controller"),
        "hirte-agent" => Some("bluechi-agent"),
        _ => None,
    }
}

/// Our key for a BlueChi key of the same meaning (`ControllerPort` -> `ManagerPort`).
// [impl->req~bluechi.config~1]
pub(super) fn our_key(key: &str) -> &str {
    match key {
        "ControllerHost" => "ManagerHost",
        "ControllerPort" => "ManagerPort",
        "ControllerAddress" => "ManagerAddress",
        "ControllerHeartbeatThreshold" => "ManagerHeartbeatThreshold",
        other => other,
    }
}

/// BlueChi's `ControllerHeartbeatThreshold=0` (its default: never give up on a silent
/// controller): here the agent always watches the manager, so 0 means our default, said once.
pub(super) fn zero_means_default(e: &Entry) -> bool {
    let zero = e.key == "ControllerHeartbeatThreshold"
        && e.value
            .as_text()
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            == "0";
    if zero {
        log_warn!(
            "{}: ControllerHeartbeatThreshold=0 (BlueChi: never) means the default here: \
             the agent reconnects when the manager falls silent",
            e.at
        );
    }
    zero
}

/// BlueChi keys without a counterpart here, and why they may be dropped.
const IGNORED: &[(&str, &str)] = &[
    (
        "UseTCP",
        "the manager always listens on TCP; ManagerSocket= adds a Unix socket",
    ),
    ("UseUDS", "set ManagerSocket= for a Unix socket"),
    ("IPReceiveErrors", "link errors are always reported"),
    ("TCPKeepAliveTime", "heartbeats detect a dead link"),
    ("TCPKeepAliveInterval", "heartbeats detect a dead link"),
    ("TCPKeepAliveCount", "heartbeats detect a dead link"),
    (
        "ConnectionRetryCountUntilQuiet",
        "reconnect attempts are logged at debug level",
    ),
    ("RequiredSelinuxContext", "no SELinux check of the peer"),
];

/// The same for the manager only: the agent has a `HeartbeatInterval=` of its own.
const IGNORED_BY_MANAGER: &[(&str, &str)] = &[(
    "HeartbeatInterval",
    "the manager does not send heartbeats; agents do, and NodeHeartbeatThreshold= applies",
)];

/// `true` (after a warning naming the key) when `e` is a BlueChi key we do not use.
pub(super) fn ignored_with_warning(e: &Entry, manager: bool) -> bool {
    let extra = if manager { IGNORED_BY_MANAGER } else { &[] };
    let Some((key, why)) = IGNORED.iter().chain(extra).find(|(k, _)| *k == e.key) else {
        return false;
    };
    log_warn!(
        "{}: BlueChi's {key}= has no effect here and is ignored ({why})",
        e.at
    );
    true
}
