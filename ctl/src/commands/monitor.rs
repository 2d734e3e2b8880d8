//! `monitor`: a manager monitor (CreateMonitor + Subscribe), its events printed one per line.

use super::wait::{Next, Waiter};
use super::Ctx;
use crate::cli::Bounds;
use crate::client::{Client, CtlError};
use crate::json::{self, Json};
use crate::output;
use dbus::arg::{PropMap, RefArg};
use dbus::Message;
use hirte_common::protocol;
use std::time::Duration;

/// A monitor object this process owns (the manager closes it when we leave the bus).
pub struct Monitor {
    path: String,
}

/// Creates a monitor subscribed to `units` of `node` (`*` for all nodes; no units: all units).
// [impl->req~ctl.monitor~1]
pub fn open(c: &Client, node: &str, units: &[String]) -> Result<Monitor, CtlError> {
    // The manager accepts subscriptions for any name; a typo would just stay silent.
    if node != "*" {
        c.node_path(node)?;
    }
    let (path,): (dbus::Path<'static>,) = c.manager("CreateMonitor", ())?;
    let path = path.to_string();
    let iface = protocol::MONITOR_IFACE;
    let subscribed: Result<(u32,), CtlError> = match units {
        [] => c.call(&path, iface, "Subscribe", (node, "*")),
        [one] => c.call(&path, iface, "Subscribe", (node, one)),
        many => c.call(&path, iface, "SubscribeList", (node, many)),
    };
    let m = Monitor { path };
    if let Err(e) = subscribed {
        close(c, &m);
        return Err(e);
    }
    Ok(m)
}

/// Best effort: leaving the bus closes it anyway.
pub fn close(c: &Client, m: &Monitor) {
    let _ = c.call_within::<_, ()>(
        &m.path,
        protocol::MONITOR_IFACE,
        "Close",
        (),
        Duration::from_secs(2),
    );
}

/// One monitor signal.
#[derive(Debug, PartialEq)]
pub enum Event {
    State {
        node: String,
        unit: String,
        active: String,
        sub: String,
        reason: String,
    },
    New {
        node: String,
        unit: String,
        reason: String,
    },
    Removed {
        node: String,
        unit: String,
        reason: String,
    },
    Properties {
        node: String,
        unit: String,
        interface: String,
        props: Vec<(String, String)>,
    },
    PeerRemoved {
        reason: String,
    },
}

/// A property value as one short string (arrays space-separated).
fn value_text(v: &dyn RefArg) -> String {
    if let Some(s) = v.as_str() {
        return s.to_string();
    }
    if let Some(n) = v.as_u64() {
        return n.to_string();
    }
    if let Some(n) = v.as_i64() {
        return n.to_string();
    }
    if let Some(f) = v.as_f64() {
        return f.to_string();
    }
    if let Some(items) = v.as_iter() {
        return items.map(value_text).collect::<Vec<_>>().join(" ");
    }
    String::new()
}

impl Event {
    /// The event a monitor signal carries; `None` for other messages.
    pub fn parse(msg: &Message) -> Option<Event> {
        if msg.interface().as_deref() != Some(protocol::MONITOR_IFACE) {
            return None;
        }
        let s = |v: &str| v.to_string();
        match msg.member().as_deref()? {
            "UnitStateChanged" => {
                let (node, unit, active, sub, reason) =
                    msg.read5::<&str, &str, &str, &str, &str>().ok()?;
                Some(Event::State {
                    node: s(node),
                    unit: s(unit),
                    active: s(active),
                    sub: s(sub),
                    reason: s(reason),
                })
            }
            "UnitNew" => {
                let (node, unit, reason) = msg.read3::<&str, &str, &str>().ok()?;
                Some(Event::New {
                    node: s(node),
                    unit: s(unit),
                    reason: s(reason),
                })
            }
            "UnitRemoved" => {
                let (node, unit, reason) = msg.read3::<&str, &str, &str>().ok()?;
                Some(Event::Removed {
                    node: s(node),
                    unit: s(unit),
                    reason: s(reason),
                })
            }
            "UnitPropertiesChanged" => {
                let (node, unit, interface, props) =
                    msg.read4::<&str, &str, &str, PropMap>().ok()?;
                let mut props: Vec<(String, String)> = props
                    .iter()
                    .map(|(k, v)| (k.clone(), value_text(&v.0)))
                    .collect();
                props.sort();
                Some(Event::Properties {
                    node: s(node),
                    unit: s(unit),
                    interface: s(interface),
                    props,
                })
            }
            "PeerRemoved" => {
                let reason: &str = msg.read1().ok()?;
                Some(Event::PeerRemoved { reason: s(reason) })
            }
            _ => None,
        }
    }

    /// `n1 httpd.service: active/running (real)` and the like.
    pub fn text(&self) -> String {
        match self {
            Event::State {
                node,
                unit,
                active,
                sub,
                reason,
            } => format!("{node} {unit}: {active}/{sub} ({reason})"),
            Event::New { node, unit, reason } => format!("{node} {unit}: new ({reason})"),
            Event::Removed { node, unit, reason } => format!("{node} {unit}: removed ({reason})"),
            Event::Properties {
                node,
                unit,
                interface,
                props,
            } => {
                let kv: Vec<String> = props.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(
                    "{node} {unit}: properties changed ({interface}): {}",
                    kv.join(", ")
                )
            }
            Event::PeerRemoved { reason } => format!("monitor closed: {reason}"),
        }
    }

    /// One JSON object per event; `event` names its kind.
    pub fn json(&self) -> Json {
        match self {
            Event::State {
                node,
                unit,
                active,
                sub,
                reason,
            } => json::obj([
                ("event", json::str("state")),
                ("node", json::str(node)),
                ("unit", json::str(unit)),
                ("active", json::str(active)),
                ("sub", json::str(sub)),
                ("reason", json::str(reason)),
            ]),
            Event::New { node, unit, reason } => json::obj([
                ("event", json::str("new")),
                ("node", json::str(node)),
                ("unit", json::str(unit)),
                ("reason", json::str(reason)),
            ]),
            Event::Removed { node, unit, reason } => json::obj([
                ("event", json::str("removed")),
                ("node", json::str(node)),
                ("unit", json::str(unit)),
                ("reason", json::str(reason)),
            ]),
            Event::Properties {
                node,
                unit,
                interface,
                props,
            } => json::obj([
                ("event", json::str("properties")),
                ("node", json::str(node)),
                ("unit", json::str(unit)),
                ("interface", json::str(interface)),
                (
                    "properties",
                    json::object(
                        props
                            .iter()
                            .map(|(k, v)| (k.clone(), json::str(v)))
                            .collect(),
                    ),
                ),
            ]),
            Event::PeerRemoved { reason } => json::obj([
                ("event", json::str("closed")),
                ("reason", json::str(reason)),
            ]),
        }
    }
}

// [impl->req~ctl.monitor~1]
pub fn monitor(
    ctx: &Ctx,
    node: Option<&str>,
    units: &[String],
    properties: bool,
    bounds: Bounds,
) -> Result<(), CtlError> {
    let c = ctx.c;
    // Before subscribing, so no event is lost to a signal arriving in between.
    let waiter = Waiter::new(c, bounds.timeout)?;
    let m = open(c, node.unwrap_or("*"), units)?;
    let mut seen = 0u64;
    let result = loop {
        if bounds.count.is_some_and(|n| seen >= n) {
            break Ok(());
        }
        let msg = match waiter.next()? {
            Next::Message(msg) => msg,
            Next::Quiet => continue,
            Next::Stop => {
                break waiter
                    .count_not_reached(&bounds, seen, "events")
                    .map_or(Ok(()), Err)
            }
        };
        if msg.path().as_deref() != Some(m.path.as_str()) {
            continue;
        }
        let Some(ev) = Event::parse(&msg) else {
            continue;
        };
        match &ev {
            Event::PeerRemoved { reason } => {
                break Err(CtlError::failed(format!(
                    "the manager closed the monitor: {reason}"
                )))
            }
            Event::Properties { .. } if !properties => continue,
            _ => {}
        }
        if ctx.json() {
            output::print_json(&ev.json());
        } else {
            output::line(&ev.text());
        }
        seen += 1;
    };
    close(c, &m);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::ToLine;

    fn sig(member: &str) -> Message {
        Message::new_signal(
            "/org/containers/hirte/monitor/1",
            protocol::MONITOR_IFACE,
            member,
        )
        .unwrap()
    }

    #[test]
    fn state_lines() {
        let m = sig("UnitStateChanged").append3("n1", "a.service", "inactive");
        let m = m.append2("agent-offline", "virtual");
        let ev = Event::parse(&m).unwrap();
        assert_eq!(ev.text(), "n1 a.service: inactive/agent-offline (virtual)");
        assert_eq!(
            ev.json().to_line(),
            r#"{"event":"state","node":"n1","unit":"a.service","active":"inactive","sub":"agent-offline","reason":"virtual"}"#
        );
        let m = sig("UnitRemoved").append3("n1", "a.service", "virtual");
        assert_eq!(
            Event::parse(&m).unwrap().text(),
            "n1 a.service: removed (virtual)"
        );
        let m = sig("UnitNew").append3("n1", "a.service", "real");
        assert_eq!(Event::parse(&m).unwrap().text(), "n1 a.service: new (real)");
    }

    #[test]
    fn foreign_and_malformed_signals_are_ignored() {
        let m = Message::new_signal("/x", "org.example.Other", "UnitNew")
            .unwrap()
            .append3("n1", "a", "real");
        assert_eq!(Event::parse(&m), None);
        let m = sig("UnitNew").append1(7u32);
        assert_eq!(Event::parse(&m), None);
    }
}
