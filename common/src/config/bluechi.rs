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

#[cfg(test)]
mod tests {
    use crate::config::{parse_text, AgentConfig, ConfigError, ManagerConfig};

    /// BlueChi's own files, renamed only: the sample configurations of BlueChi 1.2's docs.
    const CONTROLLER: &str = "[bluechi-controller]\nControllerPort=842\nAllowedNodeNames=a,b\n\
                              LogLevel=DEBUG\nLogTarget=journald\nUseTCP=true\n\
                              HeartbeatInterval=0\nNodeHeartbeatThreshold=6000ms\n";
    const AGENT: &str =
        "[bluechi-agent]\nNodeName=a\nControllerHost=10.0.0.1\nControllerPort=842\n\
                         HeartbeatInterval=2000ms\nControllerHeartbeatThreshold=0s\n\
                         TCPKeepAliveTime=1\nIPReceiveErrors=true\n";

    fn manager(text: &str) -> Result<ManagerConfig, ConfigError> {
        let mut c = ManagerConfig::default();
        for e in parse_text(text, "hirte.conf", "hirte")? {
            c.apply(&e)?;
        }
        Ok(c)
    }

    fn agent(text: &str) -> Result<AgentConfig, ConfigError> {
        let mut c = AgentConfig::default();
        for e in parse_text(text, "agent.conf", "hirte-agent")? {
            c.apply(&e)?;
        }
        Ok(c)
    }

    // [utest->req~bluechi.config~1]
    #[test]
    fn bluechi_files_work_after_a_rename() {
        let m = manager(CONTROLLER).unwrap();
        assert_eq!(m.port, 842);
        assert_eq!(m.allowed_node_names, ["a", "b"]);
        let a = agent(AGENT).unwrap();
        assert_eq!(a.manager_address(), "tcp:host=10.0.0.1,port=842");
        let a =
            agent("[bluechi-agent]\nNodeName=a\nControllerAddress=tcp:host=h,port=9\n").unwrap();
        assert_eq!(a.manager_address(), "tcp:host=h,port=9");
    }

    // [utest->req~bluechi.config~1]
    #[test]
    fn bluechi_keys_keep_their_spelling_in_errors_and_unknown_keys_stay_errors() {
        let e = agent("[bluechi-agent]\nControllerPort=x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ControllerPort"), "{e}");
        let e = manager("[bluechi-controller]\nControllerPrt=1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ControllerPrt"), "{e}");
        // The other daemon's section is still refused.
        assert!(agent("[bluechi-controller]\nNodeName=a\n").is_err());
    }
}
