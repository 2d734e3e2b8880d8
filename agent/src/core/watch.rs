//! Which units the manager's monitors want from this node, and the translation of systemd's
//! unit signals into the agent's `Unit*` signals for them.

use super::Core;
use crate::systemd::{self, bad_args, unit_properties_rule, CallError, Systemd, UNIT_PATH_PREFIX};
use dbus::arg::{PropMap, RefArg};
use dbus::Message;
use hirte_common::bounds::{MAX_AGENT_SUBSCRIPTIONS, MAX_UNIT_MATCH_RULES};
use hirte_common::names::unescape_path_element;
use hirte_common::protocol;
use hirte_common::{log_debug, log_warn};
use std::collections::{BTreeSet, HashMap};

pub const WILDCARD: &str = "*";
const JOB_PATH_PREFIX: &str = "/org/freedesktop/systemd1/job/";

#[derive(Default)]
pub struct Watch {
    units: BTreeSet<String>,
    /// Last (active, sub) state reported per watched unit: systemd announces many property
    /// changes that leave the state as it was, and subscribers want each change once.
    last_state: HashMap<String, (String, String)>,
    /// The match rules for units' property changes in force on the node's bus.
    rules: BTreeSet<String>,
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

    pub fn remove(&mut self, unit: &str) {
        self.units.remove(unit);
        self.last_state.remove(unit);
    }

    /// Forgets every watched unit (a new manager session resubscribes); the bus' rules
    /// stay recorded until `Core::sync_unit_rules` removes them.
    pub fn clear(&mut self) {
        self.units.clear();
        self.last_state.clear();
    }

    /// A new connection to the node's bus has none of the rules.
    pub fn rules_lost(&mut self) {
        self.rules.clear();
    }

    /// One rule per watched unit; one for all units when `*` is watched or more than
    /// `MAX_UNIT_MATCH_RULES` are (the bus daemon limits rules per connection, 512 on a
    /// system bus by default); none when nothing is watched.
    // [impl->req~agent.unit-match-rules~1]
    fn wanted_rules(&self) -> BTreeSet<String> {
        if self.units.contains(WILDCARD) || self.units.len() > MAX_UNIT_MATCH_RULES {
            BTreeSet::from([unit_properties_rule(None)])
        } else {
            self.units
                .iter()
                .map(|u| unit_properties_rule(Some(u)))
                .collect()
        }
    }

    pub fn wants(&self, unit: &str) -> bool {
        self.units.contains(WILDCARD) || self.units.contains(unit)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Records a unit's state; false if it is the state last reported.
    pub fn state_is_new(&mut self, unit: &str, active: &str, sub: &str) -> bool {
        let now = (active.to_string(), sub.to_string());
        if self.last_state.get(unit) == Some(&now) {
            return false;
        }
        // Bounded like the watch list; past the bound, changes are reported undeduplicated.
        if self.last_state.len() < MAX_AGENT_SUBSCRIPTIONS || self.last_state.contains_key(unit) {
            self.last_state.insert(unit.to_string(), now);
        }
        true
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

impl<S: Systemd> Core<S> {
    /// `Subscribe(unit)`: the unit's changes from now on, and its state now.
    pub(crate) fn subscribe(&mut self, msg: &Message) -> Result<(), CallError> {
        let unit: &str = msg.read1().map_err(bad_args)?;
        if !self.watch.add(unit) {
            return Err(CallError::Busy("too many watched units".to_string()));
        }
        // The rule first: a change after the state read below is then not missed.
        self.sync_unit_rules();
        self.announce_current_state(unit);
        Ok(())
    }

    pub(crate) fn unsubscribe(&mut self, msg: &Message) -> Result<(), CallError> {
        let unit: &str = msg.read1().map_err(bad_args)?;
        self.watch.remove(unit);
        self.sync_unit_rules();
        Ok(())
    }

    /// Brings the bus' match rules for units' property changes in line with the watch, new
    /// rules before stale ones go (no change falls between). A rule the bus refuses (its
    /// per-connection limit) is replaced by the rule for all units: more signals, none lost.
    // [impl->req~agent.unit-match-rules~1]
    pub(crate) fn sync_unit_rules(&mut self) {
        let wanted = self.watch.wanted_rules();
        let missing: Vec<String> = wanted.difference(&self.watch.rules).cloned().collect();
        for rule in missing {
            match self.sd.set_match(&rule, true) {
                Ok(()) => {
                    self.watch.rules.insert(rule);
                }
                Err(e) => {
                    log_warn!("Cannot add the match rule {rule}: {e}; watching every unit instead");
                    let all = unit_properties_rule(None);
                    if self.sd.set_match(&all, true).is_ok() {
                        self.watch.rules.insert(all.clone());
                    }
                    // Only stale per-unit rules go; the rule for all units stays.
                    let stale: Vec<String> = (self.watch.rules.iter())
                        .filter(|r| !wanted.contains(*r) && **r != all)
                        .cloned()
                        .collect();
                    return self.remove_rules(stale);
                }
            }
        }
        let stale: Vec<String> = self.watch.rules.difference(&wanted).cloned().collect();
        self.remove_rules(stale);
    }

    fn remove_rules(&mut self, rules: Vec<String>) {
        for rule in rules {
            if let Err(e) = self.sd.set_match(&rule, false) {
                log_debug!("Removing the match rule {rule}: {e}");
            }
            self.watch.rules.remove(&rule);
        }
    }

    /// A new subscriber learns the unit's current state (reason `virtual`).
    fn announce_current_state(&mut self, unit: &str) {
        if unit == WILDCARD {
            return;
        }
        let Ok(call) = systemd::manager_call("GetUnit") else {
            return;
        };
        let Ok(reply) = self.sd.call(call.append1(unit)) else {
            return; // not loaded: nothing to report
        };
        let Ok(path) = reply.read1::<dbus::Path>() else {
            return;
        };
        let path = path.into_static();
        let get = |p: &str| self.sd.property::<String>(&path, systemd::UNIT_IFACE, p);
        let (active, sub) = (get("ActiveState"), get("SubState"));
        if let Some(sig) = agent_signal("UnitNew") {
            self.send(sig.append2(unit, "virtual"));
        }
        if let (Some(a), Some(s)) = (active, sub) {
            self.watch.state_is_new(unit, &a, &s);
            if let Some(sig) = state_changed(unit, &a, &s, "virtual") {
                self.send(sig);
            }
        }
    }

    /// systemd's `UnitNew`/`UnitRemoved(unit, path)`: passed on to the unit's watchers.
    pub(crate) fn on_unit_signal(&mut self, member: &str, msg: &Message) {
        let Ok((unit, _)) = msg.read2::<&str, dbus::Path>() else {
            return;
        };
        if !self.watch.wants(unit) {
            return;
        }
        let sig = agent_signal(member).map(|m| {
            if member == "UnitNew" {
                m.append2(unit, "real")
            } else {
                m.append1(unit)
            }
        });
        if let Some(s) = sig {
            self.send(s);
        }
    }

    // [impl->req~manager.monitors~1]
    pub(crate) fn on_properties_changed(&mut self, msg: &Message) {
        let path = msg.path().map(|p| p.to_string()).unwrap_or_default();
        // systemd sends a dozen large PropertiesChanged per job; decoding the dictionary is
        // the costly part, so signals nobody asked for are dropped before it.
        let is_job = path.starts_with(JOB_PATH_PREFIX);
        let relevant = if is_job {
            self.jobs.has_path(&path)
        } else {
            unit_from_path(&path).is_some_and(|u| self.watch.wants(&u))
        };
        if !relevant {
            return;
        }
        let Ok((iface, changed)) = msg.read2::<&str, PropMap>() else {
            return;
        };
        if is_job {
            if let Some(state) = prop_str(&changed, "State") {
                self.on_job_state(&path, &state);
            }
            return;
        }
        let Some(unit) = unit_from_path(&path) else {
            return;
        };
        if iface == systemd::UNIT_IFACE {
            if let Some(active) = prop_str(&changed, "ActiveState") {
                let sub = prop_str(&changed, "SubState").unwrap_or_default();
                if self.watch.state_is_new(&unit, &active, &sub) {
                    if let Some(sig) = state_changed(&unit, &active, &sub, "real") {
                        self.send(sig);
                    }
                }
            }
        }
        if let Some(sig) = agent_signal("UnitPropertiesChanged") {
            self.send(sig.append3(unit, iface, changed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::FromLink;
    use crate::testing::{error_name, member, properties_changed, Harness};

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

    fn unsubscribe(h: &mut Harness, unit: &str) {
        let m = h.manager_call("Unsubscribe").append1(unit);
        h.deliver(m);
        h.to_manager();
    }

    fn rules(h: &Harness) -> Vec<String> {
        h.core.systemd().matches.borrow().iter().cloned().collect()
    }

    /// The agent hears the property changes of the units it watches and no others: one
    /// rule per unit, one for all with `*` or past `MAX_UNIT_MATCH_RULES` units, and the
    /// rule for all units when the bus refuses one (its per-connection limit).
    // [utest->req~agent.unit-match-rules~1]
    #[test]
    fn rules_follow_the_watch_and_fall_back_to_all_units() {
        let mut h = Harness::new();
        assert!(rules(&h).is_empty());
        subscribe(&mut h, "a.service");
        subscribe(&mut h, "b-c.service");
        assert_eq!(
            rules(&h),
            vec![
                unit_properties_rule(Some("a.service")),
                unit_properties_rule(Some("b-c.service"))
            ]
        );
        assert!(rules(&h)[1].ends_with(",path='/org/freedesktop/systemd1/unit/b_2dc_2eservice'"));
        unsubscribe(&mut h, "a.service");
        assert_eq!(rules(&h), vec![unit_properties_rule(Some("b-c.service"))]);
        subscribe(&mut h, WILDCARD);
        assert_eq!(rules(&h), vec![unit_properties_rule(None)]);
        unsubscribe(&mut h, WILDCARD);
        unsubscribe(&mut h, "b-c.service");
        for i in 0..MAX_UNIT_MATCH_RULES {
            subscribe(&mut h, &format!("u{i}.service"));
        }
        assert_eq!(rules(&h).len(), MAX_UNIT_MATCH_RULES);
        subscribe(&mut h, "one-more.service");
        assert_eq!(rules(&h), vec![unit_properties_rule(None)]);
        // A new manager session starts from nothing.
        h.core.on_link_event(FromLink::Disconnected);
        assert!(rules(&h).is_empty());
        h.core.systemd().refuse_unit_matches.set(true);
        subscribe(&mut h, "a.service");
        assert_eq!(rules(&h), vec![unit_properties_rule(None)]);
    }

    fn subscribe(h: &mut Harness, unit: &str) -> Vec<Message> {
        let m = h.manager_call("Subscribe").append1(unit);
        h.deliver(m);
        h.to_manager()
    }

    fn unit_path(unit: &str) -> String {
        format!(
            "/org/freedesktop/systemd1/unit/{}",
            hirte_common::names::escape_path_element(unit)
        )
    }

    // [utest->req~manager.monitors~1]
    #[test]
    fn a_new_subscriber_learns_the_current_state() {
        let mut h = Harness::new();
        h.sd().property("ActiveState", "active".to_string());
        h.sd().property("SubState", "running".to_string());
        let out = subscribe(&mut h, "a.service");
        let members: Vec<String> = out.iter().map(member).collect();
        assert_eq!(members, ["UnitNew", "UnitStateChanged", ""]);
        assert_eq!(
            out[1].read3::<&str, &str, &str>().unwrap(),
            ("a.service", "active", "running")
        );
        // The same state from systemd is not news; a new one is, once.
        let path = unit_path("a.service");
        let same = properties_changed(
            &path,
            systemd::UNIT_IFACE,
            &[("ActiveState", "active"), ("SubState", "running")],
        );
        h.core.on_bus_message(same);
        let out = h.to_manager();
        assert_eq!(
            out.iter().map(member).collect::<Vec<_>>(),
            ["UnitPropertiesChanged"]
        );
        let stopping = properties_changed(
            &path,
            systemd::UNIT_IFACE,
            &[("ActiveState", "deactivating"), ("SubState", "stop")],
        );
        h.core.on_bus_message(stopping);
        let out = h.to_manager();
        assert_eq!(
            out.iter().map(member).collect::<Vec<_>>(),
            ["UnitStateChanged", "UnitPropertiesChanged"]
        );
        assert_eq!(out[0].get_items().len(), 4);
    }

    #[test]
    fn only_watched_units_are_passed_on() {
        let mut h = Harness::new();
        let changed = |u: &str| {
            properties_changed(
                &unit_path(u),
                systemd::UNIT_IFACE,
                &[("ActiveState", "active")],
            )
        };
        h.core.on_bus_message(changed("a.service"));
        assert!(h.to_manager().is_empty());
        let new = |u: &str| {
            Message::new_signal(systemd::PATH, systemd::MANAGER_IFACE, "UnitNew")
                .unwrap()
                .append2(u, dbus::Path::from(unit_path(u)))
        };
        h.core.on_bus_message(new("a.service"));
        assert!(h.to_manager().is_empty());
        subscribe(&mut h, WILDCARD);
        h.core.on_bus_message(new("b.service"));
        let out = h.to_manager();
        assert_eq!(out[0].read2::<&str, &str>().unwrap(), ("b.service", "real"));
        // A new manager session starts with no watches.
        h.core.on_link_event(crate::link::FromLink::Disconnected);
        h.core.on_bus_message(changed("b.service"));
        assert!(h.to_manager().is_empty());
        let unsub = h.manager_call("Unsubscribe").append1("b.service");
        h.deliver(unsub);
        assert_eq!(error_name(&h.to_manager()[0]), None);
    }

    // [utest->req~bounds.monitors~1]
    #[test]
    fn watches_are_bounded() {
        let mut h = Harness::new();
        for i in 0..MAX_AGENT_SUBSCRIPTIONS {
            subscribe(&mut h, &format!("u{i}.service"));
        }
        let out = subscribe(&mut h, "one-more.service");
        assert_eq!(error_name(&out[0]).as_deref(), Some(protocol::error::BUSY));
    }

    #[test]
    fn repeated_states_are_deduplicated_within_the_bound() {
        let mut w = Watch::default();
        assert!(w.state_is_new("a", "active", "running"));
        assert!(!w.state_is_new("a", "active", "running"));
        assert!(w.state_is_new("a", "failed", "failed"));
        w.remove("a");
        assert!(w.state_is_new("a", "failed", "failed"));
    }
}
