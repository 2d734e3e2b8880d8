//! The signals an agent sends the manager, decoded and type-checked (sans-IO).

use dbus::arg::IterAppend;
use dbus::Message;
use hirte_common::args::{copy_args, same_path, CopyError};
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
    /// `UnitNew`, `UnitRemoved`, `UnitStateChanged`, `UnitPropertiesChanged`.
    Unit(UnitEvent),
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

/// A unit event, decoded with its static types: no generic tree of its values is built.
// [impl->req~bounds.static-decode~1]
#[derive(Debug)]
pub enum UnitEvent {
    New {
        unit: String,
        reason: String,
    },
    Removed {
        unit: String,
    },
    StateChanged {
        unit: String,
        active: String,
        sub: String,
        reason: String,
    },
    /// `(unit, interface, a{sv})`: the properties stay in the agent's message and are copied
    /// value by value into each monitor's signal.
    PropertiesChanged {
        unit: String,
        iface: String,
        signal: Message,
    },
}

impl UnitEvent {
    pub fn member(&self) -> &'static str {
        match self {
            UnitEvent::New { .. } => "UnitNew",
            UnitEvent::Removed { .. } => "UnitRemoved",
            UnitEvent::StateChanged { .. } => "UnitStateChanged",
            UnitEvent::PropertiesChanged { .. } => "UnitPropertiesChanged",
        }
    }

    pub fn unit(&self) -> &str {
        match self {
            UnitEvent::New { unit, .. }
            | UnitEvent::Removed { unit }
            | UnitEvent::StateChanged { unit, .. }
            | UnitEvent::PropertiesChanged { unit, .. } => unit,
        }
    }

    /// The arguments of the monitor signal: the node, then the agent's arguments
    /// (`UnitRemoved` gains its reason, `real`).
    pub fn append_for_monitors(&self, node: &str, to: &mut Message) -> Result<(), CopyError> {
        let mut a = IterAppend::new(to);
        a.append(node);
        match self {
            UnitEvent::New { unit, reason } => {
                a.append(unit.as_str());
                a.append(reason.as_str());
            }
            UnitEvent::Removed { unit } => {
                a.append(unit.as_str());
                a.append("real");
            }
            UnitEvent::StateChanged {
                unit,
                active,
                sub,
                reason,
            } => {
                for s in [unit, active, sub, reason] {
                    a.append(s.as_str());
                }
            }
            UnitEvent::PropertiesChanged {
                unit,
                iface,
                signal,
            } => {
                a.append(unit.as_str());
                a.append(iface.as_str());
                let mut it = signal.iter_init();
                // unit and interface are in the agent's message too: only the dict is copied.
                if it.next() && it.next() {
                    copy_args(&mut it, &mut a, &same_path)?;
                }
            }
        }
        Ok(())
    }
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

/// A unit event: its signature checked first, then each argument read with its type.
fn decode_unit_event(member: &str, msg: Message) -> Result<UnitEvent, DecodeError> {
    let expected = match member {
        "UnitNew" => "ss",
        "UnitRemoved" => "s",
        "UnitStateChanged" => "ssss",
        _ => "ssa{sv}",
    };
    let got = signature_of(&msg);
    if got != expected {
        let why = format!("expected arguments ({expected}), got ({got})");
        return Err(malformed_because(member, why));
    }
    let owned = |s: &str| s.to_string();
    let bad = |e| malformed_because(member, e);
    Ok(match member {
        "UnitNew" => {
            let (unit, reason) = msg.read2::<&str, &str>().map_err(bad)?;
            UnitEvent::New {
                unit: owned(unit),
                reason: owned(reason),
            }
        }
        "UnitRemoved" => UnitEvent::Removed {
            unit: owned(msg.read1::<&str>().map_err(bad)?),
        },
        "UnitStateChanged" => {
            let (unit, active, sub, reason) = msg.read4::<&str, &str, &str, &str>().map_err(bad)?;
            UnitEvent::StateChanged {
                unit: owned(unit),
                active: owned(active),
                sub: owned(sub),
                reason: owned(reason),
            }
        }
        _ => {
            let (unit, iface) = msg.read2::<&str, &str>().map_err(bad)?;
            let (unit, iface) = (owned(unit), owned(iface));
            UnitEvent::PropertiesChanged {
                unit,
                iface,
                signal: msg,
            }
        }
    })
}

/// Decodes a signal from an agent (taken whole: a property event keeps it).
pub fn decode(msg: Message) -> Result<AgentSignal, DecodeError> {
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
            decode_unit_event(&member, msg).map(AgentSignal::Unit)
        }
        "ProxyNew" => {
            if signature_of(&msg) != "sso" {
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
        let Ok(AgentSignal::Unit(ev)) = decode(m) else {
            panic!("a unit event");
        };
        assert_eq!(ev.unit(), "a.service");
        let mut out = sig("UnitRemoved");
        ev.append_for_monitors("n1", &mut out).unwrap();
        assert_eq!(
            out.read3::<&str, &str, &str>().unwrap(),
            ("n1", "a.service", "real")
        );
        let bad = sig("UnitStateChanged").append2("a.service", "active");
        assert_eq!(
            decode(bad).unwrap_err().to_string(),
            "sent a malformed UnitStateChanged: expected arguments (ssss), got (ss)"
        );
        assert!(decode(sig("UnitNew").append1(7u32)).is_err());
    }

    // [utest->req~bounds.static-decode~1]
    #[test]
    fn property_events_are_typed_and_their_dict_copied_as_is() {
        let mut props = dbus::arg::PropMap::new();
        let v = |x: u64| dbus::arg::Variant(Box::new(x) as Box<dyn dbus::arg::RefArg>);
        props.insert("MainPID".into(), v(42));
        let m = sig("UnitPropertiesChanged").append3("a.service", "org.x.Unit", props);
        let Ok(AgentSignal::Unit(ev)) = decode(m) else {
            panic!("a unit event");
        };
        assert_eq!(
            (ev.member(), ev.unit()),
            ("UnitPropertiesChanged", "a.service")
        );
        let mut out = sig("UnitPropertiesChanged");
        ev.append_for_monitors("n1", &mut out).unwrap();
        let (node, unit, iface, got): (&str, &str, &str, dbus::arg::PropMap) = out.read4().unwrap();
        assert_eq!((node, unit, iface), ("n1", "a.service", "org.x.Unit"));
        assert_eq!(got["MainPID"].0.as_u64(), Some(42));
        // Wrong types anywhere (here: a dict of strings) are refused, naming what came.
        let strings = std::collections::HashMap::from([("a", "b")]);
        let wrong = sig("UnitPropertiesChanged").append3("a.service", "org.x.Unit", strings);
        assert_eq!(
            decode(wrong).unwrap_err().to_string(),
            "sent a malformed UnitPropertiesChanged: expected arguments (ssa{sv}), got (ssa{ss})"
        );
        let wrong = sig("UnitPropertiesChanged").append3("a.service", 7u32, props_of(3));
        assert!(decode(wrong)
            .unwrap_err()
            .to_string()
            .contains("got (sua{sv})"));
    }

    fn props_of(n: u32) -> dbus::arg::PropMap {
        (0..n)
            .map(|i| {
                let v = Box::new(i) as Box<dyn dbus::arg::RefArg>;
                (format!("p{i}"), dbus::arg::Variant(v))
            })
            .collect()
    }

    #[test]
    fn jobs_and_heartbeats_decode() {
        assert!(matches!(
            decode(sig("Heartbeat")),
            Ok(AgentSignal::Heartbeat)
        ));
        let m = sig("JobDone").append2(4u32, "done");
        assert!(matches!(decode(m), Ok(AgentSignal::JobDone { id: 4, .. })));
        let e = decode(sig("JobStateChanged").append1("x")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("sent a malformed JobStateChanged: "));
        assert!(matches!(decode(sig("Other")), Ok(AgentSignal::Unknown(m)) if m == "Other"));
    }

    // [utest->req~proxy.allow~1]
    #[test]
    fn proxy_announcements_must_name_a_proxy_object() {
        let ok = dbus::Path::new(format!("{}/1", protocol::PROXY_PATH_PREFIX)).unwrap();
        let m = sig("ProxyNew").append3("b", "db.service", ok);
        assert!(matches!(decode(m), Ok(AgentSignal::ProxyNew { .. })));
        let elsewhere = dbus::Path::new("/org/containers/hirte/elsewhere").unwrap();
        let m = sig("ProxyNew").append3("b", "db.service", elsewhere);
        assert!(matches!(decode(m), Err(DecodeError::ForeignProxy { .. })));
        let m = sig("ProxyNew").append3("b", "db.service", "/not/an/object");
        assert_eq!(decode(m).unwrap_err().member(), "ProxyNew");
        assert!(decode(sig("ProxyRemoved").append1(7u32)).is_err());
        assert!(decode(sig("JobMetrics").append1(7u32)).is_err());
    }
}
