//! Which units the manager's monitors want from this node, and the translation of systemd's
//! unit signals into the agent's `Unit*` signals for them.

use dbus::arg::{PropMap, RefArg};
use dbus::Message;
use hirte_common::bounds::MAX_AGENT_SUBSCRIPTIONS;
use hirte_common::names::unescape_path_element;
use hirte_common::protocol;
use std::collections::BTreeSet;

pub const WILDCARD: &str = "*";
const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";
pub const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";

#[derive(Default)]
pub struct Watch {
    units: BTreeSet<String>,
}

impl Watch {
    /// Adds a unit (or `*`); `false` when the bound is reached.
    // [impl->req~bounds.monitors~1]
    pub fn add(&mut self, unit: &str) -> bool {
        if self.units.len() >= MAX_AGENT_SUBSCRIPTIONS && !self.units.contains(unit) {
            return false;
        }
        self.units.insert(unit.to_string());
        true
    }

    pub fn remove(&mut self, unit: &str) -> bool {
        self.units.remove(unit)
    }

    pub fn wants(&self, unit: &str) -> bool {
        self.units.contains(WILDCARD) || self.units.contains(unit)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }
}

/// The unit a systemd unit object path names (`/org/freedesktop/systemd1/unit/foo_2eservice`).
pub fn unit_from_path(path: &str) -> Option<String> {
    unescape_path_element(path.strip_prefix(UNIT_PATH_PREFIX)?)
}

pub fn agent_signal(member: &str) -> Option<Message> {
    Message::new_signal(
        protocol::INTERNAL_AGENT_PATH,
        protocol::INTERNAL_AGENT_IFACE,
        member,
    )
    .ok()
}

/// `UnitStateChanged(unit, active, sub, reason)`.
pub fn state_changed(unit: &str, active: &str, sub: &str, reason: &str) -> Option<Message> {
    agent_signal("UnitStateChanged").map(|m| m.append3(unit, active, sub).append1(reason))
}

/// Reads a string property out of a `PropertiesChanged` dictionary.
pub fn prop_str(props: &PropMap, key: &str) -> Option<String> {
    props
        .get(key)
        .and_then(|v| v.0.as_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_come_back_from_paths() {
        assert_eq!(
            unit_from_path("/org/freedesktop/systemd1/unit/httpd_2eservice").as_deref(),
            Some("httpd.service")
        );
        assert_eq!(unit_from_path("/org/freedesktop/systemd1/job/7"), None);
    }

    #[test]
    fn wildcard_and_bound() {
        let mut w = Watch::default();
        assert!(!w.wants("a"));
        w.add("a");
        assert!(w.wants("a") && !w.wants("b"));
        w.add(WILDCARD);
        assert!(w.wants("b"));
        w.remove(WILDCARD);
        w.remove("a");
        assert!(w.is_empty());
        for i in 0..MAX_AGENT_SUBSCRIPTIONS {
            assert!(w.add(&format!("u{i}")));
        }
        assert!(!w.add("one-more"));
        assert!(w.add("u0"));
    }
}
