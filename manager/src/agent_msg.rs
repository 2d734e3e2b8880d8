//! The signals an agent sends the manager, decoded and type-checked (sans-IO).

use dbus::arg::messageitem::MessageItem;
use dbus::Message;
use hirte_common::protocol::{self, signature_of};
use std::fmt;

/// One decoded signal from an agent.
#[derive(Debug)]
pub enum AgentSignal {
    Heartbeat,
    JobDone {
        id: u32,
        result: String,
    },
    JobStateChanged {
        id: u32,
        state: String,
    },
    /// `UnitNew`, `UnitRemoved`, `UnitStateChanged`, `UnitPropertiesChanged`: the arguments
    /// as monitors get them after the node (`UnitRemoved` gains its reason, `real`).
    Unit {
        member: String,
        unit: String,
        items: Vec<MessageItem>,
    },
    ProxyNew {
        target: String,
        unit: String,
        path: String,
    },
    ProxyRemoved {
        target: String,
        unit: String,
    },
    JobMetrics(JobMetrics),
    /// A signal the manager does not know; ignored.
    Unknown(String),
}

/// `JobMetrics`: how long systemd took for a job, and the unit's start propagation time.
#[derive(Debug)]
pub struct JobMetrics {
    pub id: u32,
    pub unit: String,
    pub method: String,
    pub micros: u64,
    pub propagation_us: u64,
}

/// Why a signal was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Malformed {
        member: String,
        detail: Option<String>,
    },
    /// `ProxyNew` for an object outside the agent's proxies.
    ForeignProxy { path: String },
}

impl DecodeError {
    pub fn member(&self) -> &str {
        match self {
            DecodeError::Malformed { member, .. } => member,
            DecodeError::ForeignProxy { .. } => "ProxyNew",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed {
                member,
                detail: None,
            } => write!(f, "sent a malformed {member}"),
            DecodeError::Malformed {
                member,
                detail: Some(d),
            } => write!(f, "sent a malformed {member}: {d}"),
            DecodeError::ForeignProxy { path } => {
                write!(f, "sent ProxyNew for object '{path}', ignored")
            }
        }
    }
}

fn malformed(member: &str) -> DecodeError {
    DecodeError::Malformed {
        member: member.to_string(),
        detail: None,
    }
}

fn malformed_because(member: &str, e: impl fmt::Display) -> DecodeError {
    DecodeError::Malformed {
        member: member.to_string(),
        detail: Some(e.to_string()),
    }
}

pub fn decode(msg: &Message) -> Result<AgentSignal, DecodeError> {
    let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
    match member.as_str() {
        "Heartbeat" => Ok(AgentSignal::Heartbeat),
        "JobDone" => match msg.read2::<u32, &str>() {
            Ok((id, result)) => Ok(AgentSignal::JobDone {
                id,
                result: result.to_string(),
            }),
            Err(e) => Err(malformed_because(&member, e)),
        },
        "JobStateChanged" => match msg.read2::<u32, &str>() {
            Ok((id, state)) => Ok(AgentSignal::JobStateChanged {
                id,
                state: state.to_string(),
            }),
            Err(e) => Err(malformed_because(&member, e)),
        },
        "UnitNew" | "UnitRemoved" | "UnitStateChanged" | "UnitPropertiesChanged" => {
            let mut items = msg.get_items();
            let Some(MessageItem::Str(unit)) = items.first() else {
                return Err(malformed(&member));
            };
            let unit = unit.clone();
            let expected = match member.as_str() {
                "UnitNew" => "ss",
                "UnitRemoved" => "s",
                "UnitStateChanged" => "ssss",
                _ => "ssa{sv}",
            };
            if signature_of(msg) != expected {
                return Err(malformed(&member));
            }
            if member == "UnitRemoved" {
                items.push(MessageItem::Str("real".into()));
            }
            Ok(AgentSignal::Unit {
                member,
                unit,
                items,
            })
        }
        "ProxyNew" => {
            if signature_of(msg) != "sso" {
                return Err(malformed(&member));
            }
            let Ok((target, unit, path)) = msg.read3::<&str, &str, dbus::Path>() else {
                return Err(malformed(&member));
            };
            let path = path.to_string();
            if !path.starts_with(protocol::PROXY_PATH_PREFIX) {
                return Err(DecodeError::ForeignProxy { path });
            }
            Ok(AgentSignal::ProxyNew {
                target: target.to_string(),
                unit: unit.to_string(),
                path,
            })
        }
        "ProxyRemoved" => match msg.read2::<&str, &str>() {
            Ok((target, unit)) => Ok(AgentSignal::ProxyRemoved {
                target: target.to_string(),
                unit: unit.to_string(),
            }),
            Err(_) => Err(malformed(&member)),
        },
        "JobMetrics" => match msg.read5::<u32, &str, &str, u64, u64>() {
            Ok((id, unit, method, micros, propagation_us)) => {
                Ok(AgentSignal::JobMetrics(JobMetrics {
                    id,
                    unit: unit.to_string(),
                    method: method.to_string(),
                    micros,
                    propagation_us,
                }))
            }
            Err(_) => Err(malformed(&member)),
        },
        _ => Ok(AgentSignal::Unknown(member)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(member: &str) -> Message {
        Message::new_signal(
            protocol::INTERNAL_AGENT_PATH,
            protocol::INTERNAL_AGENT_IFACE,
            member,
        )
        .unwrap()
    }

    #[test]
    fn unit_events_are_checked_and_removals_marked_real() {
        let m = sig("UnitRemoved").append1("a.service");
        let Ok(AgentSignal::Unit { unit, items, .. }) = decode(&m) else {
            panic!("a unit event");
        };
        assert_eq!(unit, "a.service");
        assert_eq!(items.len(), 2);
        let bad = sig("UnitStateChanged").append2("a.service", "active");
        assert_eq!(
            decode(&bad).unwrap_err().to_string(),
            "sent a malformed UnitStateChanged"
        );
        assert!(decode(&sig("UnitNew").append1(7u32)).is_err());
    }

    #[test]
    fn jobs_and_heartbeats_decode() {
        assert!(matches!(
            decode(&sig("Heartbeat")),
            Ok(AgentSignal::Heartbeat)
        ));
        let m = sig("JobDone").append2(4u32, "done");
        assert!(matches!(decode(&m), Ok(AgentSignal::JobDone { id: 4, .. })));
        let e = decode(&sig("JobStateChanged").append1("x")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("sent a malformed JobStateChanged: "));
        assert!(matches!(decode(&sig("Other")), Ok(AgentSignal::Unknown(m)) if m == "Other"));
    }

    // [utest->req~proxy.allow~1]
    #[test]
    fn proxy_announcements_must_name_a_proxy_object() {
        let ok = dbus::Path::new(format!("{}/1", protocol::PROXY_PATH_PREFIX)).unwrap();
        let m = sig("ProxyNew").append3("b", "db.service", ok);
        assert!(matches!(decode(&m), Ok(AgentSignal::ProxyNew { .. })));
        let elsewhere = dbus::Path::new("/org/containers/hirte/elsewhere").unwrap();
        let m = sig("ProxyNew").append3("b", "db.service", elsewhere);
        assert!(matches!(decode(&m), Err(DecodeError::ForeignProxy { .. })));
        let m = sig("ProxyNew").append3("b", "db.service", "/not/an/object");
        assert_eq!(decode(&m).unwrap_err().member(), "ProxyNew");
        assert!(decode(&sig("ProxyRemoved").append1(7u32)).is_err());
        assert!(decode(&sig("JobMetrics").append1(7u32)).is_err());
    }
}
