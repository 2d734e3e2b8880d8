//! Monitors: who wants which unit events of which nodes, and the signals their owners and
//! peers get. The manager turns `wanted_units` into agent subscriptions.

use crate::agent_msg::UnitEvent;
use crate::objects::{monitor_path, signal, ObjectOp, Outbox};
use dbus::Message;
use hirte_common::args::encoded_len;
use hirte_common::bounds::{
    MAX_MONITORS, MAX_MONITORS_PER_OWNER, MAX_MONITOR_EVENT_BYTES, MAX_PEERS_PER_MONITOR,
    MAX_SEEN_UNITS_PER_SUBSCRIPTION, MAX_SUBSCRIPTIONS_PER_MONITOR, MAX_UNITS_PER_SUBSCRIPTION,
};
use hirte_common::{log_peer, protocol};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub const WILDCARD: &str = "*";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorError {
    TooManyMonitors,
    TooManyForOwner,
    TooManySubscriptions,
    TooManyUnits,
    TooManyPeers,
    NoSuchMonitor(u32),
    NoSuchSubscription(u32),
    NoSuchPeer(u32),
    NotOwner,
    EmptyName,
}

impl fmt::Display for MonitorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MonitorError::TooManyMonitors => {
                write!(f, "{MAX_MONITORS} monitors exist; close one first")
            }
            MonitorError::TooManyForOwner => {
                write!(
                    f,
                    "a client may own at most {MAX_MONITORS_PER_OWNER} monitors"
                )
            }
            MonitorError::TooManySubscriptions => write!(
                f,
                "a monitor may hold at most {MAX_SUBSCRIPTIONS_PER_MONITOR} subscriptions"
            ),
            MonitorError::TooManyUnits => write!(
                f,
                "a subscription may name 1 to {MAX_UNITS_PER_SUBSCRIPTION} units"
            ),
            MonitorError::TooManyPeers => {
                write!(
                    f,
                    "a monitor may have at most {MAX_PEERS_PER_MONITOR} peers"
                )
            }
            MonitorError::NoSuchMonitor(id) => write!(f, "no monitor {id}"),
            MonitorError::NoSuchSubscription(id) => write!(f, "no subscription {id}"),
            MonitorError::NoSuchPeer(id) => write!(f, "no peer {id}"),
            MonitorError::NotOwner => write!(f, "only the monitor's owner may do that"),
            MonitorError::EmptyName => {
                write!(
                    f,
                    "a subscription needs a node and at least one unit, none empty"
                )
            }
        }
    }
}

pub struct Subscription {
    node: String,
    units: Vec<String>,
    /// Units a wildcard subscription saw, so they get virtual events when the node drops.
    seen: BTreeSet<(String, String)>,
}

impl Subscription {
    fn matches_node(&self, node: &str) -> bool {
        self.node == WILDCARD || self.node == node
    }

    fn matches(&self, node: &str, unit: &str) -> bool {
        self.matches_node(node) && self.units.iter().any(|u| u == WILDCARD || u == unit)
    }
}

struct Monitor {
    owner: String,
    peers: BTreeMap<u32, String>,
    subs: BTreeMap<u32, Subscription>,
}

impl Monitor {
    /// Bus names that receive this monitor's signals: the owner, then its peers.
    fn recipients(&self) -> Vec<String> {
        let mut r = vec![self.owner.clone()];
        r.extend(self.peers.values().cloned());
        r
    }
}

#[derive(Default)]
pub struct Monitors {
    monitors: BTreeMap<u32, Monitor>,
    next_id: u32,
}

fn next(counter: &mut u32) -> u32 {
    *counter = counter.checked_add(1).unwrap_or(1);
    *counter
}

impl Monitors {
    // [impl->req~bounds.monitors~1]
    fn create(&mut self, owner: &str) -> Result<u32, MonitorError> {
        if self.monitors.len() >= MAX_MONITORS {
            return Err(MonitorError::TooManyMonitors);
        }
        let owned = self.monitors.values().filter(|m| m.owner == owner).count();
        if owned >= MAX_MONITORS_PER_OWNER {
            return Err(MonitorError::TooManyForOwner);
        }
        let mut id = next(&mut self.next_id);
        while self.monitors.contains_key(&id) {
            id = next(&mut self.next_id);
        }
        self.monitors.insert(
            id,
            Monitor {
                owner: owner.to_string(),
                peers: BTreeMap::new(),
                subs: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    /// A new monitor of `owner`, whose object is added.
    pub fn open(&mut self, owner: &str, out: &mut Outbox) -> Result<u32, MonitorError> {
        let id = self.create(owner)?;
        out.object(ObjectOp::AddMonitor(id));
        Ok(id)
    }

    fn get_mut(&mut self, id: u32) -> Result<&mut Monitor, MonitorError> {
        self.monitors
            .get_mut(&id)
            .ok_or(MonitorError::NoSuchMonitor(id))
    }

    pub fn check_owner(&self, id: u32, caller: &str) -> Result<(), MonitorError> {
        match self.monitors.get(&id) {
            None => Err(MonitorError::NoSuchMonitor(id)),
            Some(m) if m.owner != caller => Err(MonitorError::NotOwner),
            Some(_) => Ok(()),
        }
    }

    pub fn subscribe(
        &mut self,
        id: u32,
        node: &str,
        units: Vec<String>,
    ) -> Result<u32, MonitorError> {
        if units.len() > MAX_UNITS_PER_SUBSCRIPTION {
            return Err(MonitorError::TooManyUnits);
        }
        if node.is_empty() || units.is_empty() || units.iter().any(String::is_empty) {
            return Err(MonitorError::EmptyName);
        }
        let m = self.get_mut(id)?;
        if m.subs.len() >= MAX_SUBSCRIPTIONS_PER_MONITOR {
            return Err(MonitorError::TooManySubscriptions);
        }
        let sub_id = m.subs.keys().next_back().map_or(1, |k| k.saturating_add(1));
        m.subs.insert(
            sub_id,
            Subscription {
                node: node.to_string(),
                units,
                seen: BTreeSet::new(),
            },
        );
        Ok(sub_id)
    }

    pub fn unsubscribe(&mut self, id: u32, sub: u32) -> Result<Subscription, MonitorError> {
        self.get_mut(id)?
            .subs
            .remove(&sub)
            .ok_or(MonitorError::NoSuchSubscription(sub))
    }

    pub fn add_peer(&mut self, id: u32, name: &str) -> Result<u32, MonitorError> {
        let m = self.get_mut(id)?;
        if m.peers.len() >= MAX_PEERS_PER_MONITOR {
            return Err(MonitorError::TooManyPeers);
        }
        let peer_id = m
            .peers
            .keys()
            .next_back()
            .map_or(1, |k| k.saturating_add(1));
        m.peers.insert(peer_id, name.to_string());
        Ok(peer_id)
    }

    pub fn remove_peer(&mut self, id: u32, peer: u32) -> Result<String, MonitorError> {
        self.get_mut(id)?
            .peers
            .remove(&peer)
            .ok_or(MonitorError::NoSuchPeer(peer))
    }

    /// Closes a monitor: its peers are told why, its object goes. False if there was none.
    pub fn close(&mut self, id: u32, reason: &str, out: &mut Outbox) -> bool {
        let Some(m) = self.monitors.remove(&id) else {
            return false;
        };
        let peers: Vec<String> = m.peers.values().cloned().collect();
        signals(id, &peers, "PeerRemoved", &[reason], out);
        out.object(ObjectOp::RemoveMonitor(id));
        true
    }

    /// Removes a peer on its owner's request; the peer is told why.
    pub fn remove_peer_with_notice(
        &mut self,
        id: u32,
        peer: u32,
        reason: &str,
        out: &mut Outbox,
    ) -> Result<(), MonitorError> {
        let name = self.remove_peer(id, peer)?;
        signals(id, &[name], "PeerRemoved", &[reason], out);
        Ok(())
    }

    /// Monitors owned by a bus name that left the bus.
    pub fn owned_by(&self, owner: &str) -> Vec<u32> {
        self.monitors
            .iter()
            .filter(|(_, m)| m.owner == owner)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Peers (monitor id, peer id) that are a bus name that left.
    pub fn peers_named(&self, name: &str) -> Vec<(u32, u32)> {
        self.monitors
            .iter()
            .flat_map(|(mid, m)| {
                m.peers
                    .iter()
                    .filter(|(_, n)| n.as_str() == name)
                    .map(move |(pid, _)| (*mid, *pid))
            })
            .collect()
    }

    /// The units the agent of `node` must watch: the union over all matching subscriptions.
    pub fn wanted_units(&self, node: &str) -> BTreeSet<String> {
        let mut all = BTreeSet::new();
        for m in self.monitors.values() {
            for s in m.subs.values().filter(|s| s.matches_node(node)) {
                if s.units.iter().any(|u| u == WILDCARD) {
                    return BTreeSet::from([WILDCARD.to_string()]);
                }
                all.extend(s.units.iter().cloned());
            }
        }
        all
    }

    /// Monitors (with their recipients) interested in an event; wildcard subscriptions
    /// remember the unit for later virtual events.
    fn route(&mut self, node: &str, unit: &str) -> Vec<(u32, Vec<String>)> {
        let mut out = Vec::new();
        for (id, m) in &mut self.monitors {
            let mut hit = false;
            for s in m.subs.values_mut().filter(|s| s.matches(node, unit)) {
                hit = true;
                if s.seen.len() < MAX_SEEN_UNITS_PER_SUBSCRIPTION {
                    s.seen.insert((node.to_string(), unit.to_string()));
                }
            }
            if hit {
                out.push((*id, m.recipients()));
            }
        }
        out
    }

    /// A unit event from an agent, for the monitors that want it. The copies for all their
    /// recipients stay within `MAX_MONITOR_EVENT_BYTES`; monitors beyond it miss the event,
    /// which is logged (rate-limited per node).
    // [impl->req~bounds.monitor-copies~1]
    pub fn route_event(&mut self, node: &str, event: &UnitEvent, out: &mut Outbox) {
        let member = event.member();
        let routes = self.route(node, event.unit());
        let total = routes.len();
        let (mut spent, mut size) = (0usize, None);
        for (done, (mid, recipients)) in routes.into_iter().enumerate() {
            let mut failed = None;
            let t = template(mid, member, |m| {
                failed = event.append_for_monitors(node, m).err();
                failed.is_none()
            });
            if let Some(e) = failed {
                log_peer!(
                    Warn,
                    node,
                    "Node '{node}' sent a {member} that cannot be relayed: {e}"
                );
                return;
            }
            let Some(t) = t else { continue };
            let size = *size.get_or_insert_with(|| encoded_len(&t));
            let cost = size.saturating_mul(recipients.len());
            if spent.saturating_add(cost) > MAX_MONITOR_EVENT_BYTES {
                log_peer!(
                    Warn,
                    node,
                    "Node '{node}': {member} of '{}' ({size} bytes) not sent to {} of {total} \
                     monitors: their copies would exceed {MAX_MONITOR_EVENT_BYTES} bytes",
                    event.unit(),
                    total - done
                );
                return;
            }
            spent += cost;
            send_to(&t, &recipients, out);
        }
    }

    /// When a node drops, its subscribers learn that its units are gone for them.
    // [impl->req~manager.monitor-virtual~1]
    pub fn node_gone(&self, node: &str, out: &mut Outbox) {
        for (mid, recipients, units) in self.units_of_node(node) {
            for unit in units {
                let u = unit.as_str();
                let state = [node, u, "inactive", "agent-offline", "virtual"];
                signals(mid, &recipients, "UnitStateChanged", &state, out);
                signals(mid, &recipients, "UnitRemoved", &[node, u, "virtual"], out);
            }
        }
    }

    /// Units that get virtual "gone" events when `node` drops, per monitor.
    fn units_of_node(&self, node: &str) -> Vec<(u32, Vec<String>, BTreeSet<String>)> {
        let mut out = Vec::new();
        for (id, m) in &self.monitors {
            let mut units = BTreeSet::new();
            for s in m.subs.values().filter(|s| s.matches_node(node)) {
                units.extend(s.units.iter().filter(|u| *u != WILDCARD).cloned());
                units.extend(
                    s.seen
                        .iter()
                        .filter(|(n, _)| n == node)
                        .map(|(_, u)| u.clone()),
                );
            }
            if !units.is_empty() {
                out.push((*id, m.recipients(), units));
            }
        }
        out
    }
}

/// A monitor's signal, its arguments filled by `fill` (false: it could not be built).
fn template(
    monitor: u32,
    member: &str,
    fill: impl FnOnce(&mut Message) -> bool,
) -> Option<Message> {
    let mut t = signal(&monitor_path(monitor), protocol::MONITOR_IFACE, member)?;
    fill(&mut t).then_some(t)
}

/// A copy of `template` to each recipient (unicast: only the owner and its peers get it).
/// Encoded once; each recipient gets a byte copy (libdbus), not a re-encoding.
fn send_to(template: &Message, recipients: &[String], out: &mut Outbox) {
    for r in recipients {
        let Ok(dest) = dbus::strings::BusName::new(r.clone()) else {
            continue;
        };
        let Ok(mut m) = template.duplicate() else {
            continue;
        };
        m.set_destination(Some(dest));
        out.send(Some(m));
    }
}

/// A monitor signal of string arguments to each recipient.
fn signals(monitor: u32, recipients: &[String], member: &str, args: &[&str], out: &mut Outbox) {
    let fill = |m: &mut Message| {
        let mut a = dbus::arg::IterAppend::new(m);
        args.iter().for_each(|s| a.append(*s));
        true
    };
    if let Some(t) = template(monitor, member, fill) {
        send_to(&t, recipients, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~manager.monitors~1]
    #[test]
    fn routes_by_node_and_unit_with_wildcards() {
        let mut m = Monitors::default();
        let a = m.create(":1.1").unwrap();
        let b = m.create(":1.2").unwrap();
        m.subscribe(a, "n1", vec!["x.service".into()]).unwrap();
        m.subscribe(b, "*", vec!["*".into()]).unwrap();
        m.add_peer(a, ":1.9").unwrap();
        let r = m.route("n1", "x.service");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1, vec![":1.1".to_string(), ":1.9".to_string()]);
        assert_eq!(m.route("n2", "x.service").len(), 1);
        assert_eq!(m.wanted_units("n1"), BTreeSet::from(["*".to_string()]));
        assert!(m.close(b, "done", &mut Outbox::default()));
        assert_eq!(
            m.wanted_units("n1"),
            BTreeSet::from(["x.service".to_string()])
        );
        assert!(m.wanted_units("n2").is_empty());
    }

    #[test]
    fn virtual_units_include_seen_ones() {
        let mut m = Monitors::default();
        let a = m.create(":1.1").unwrap();
        m.subscribe(a, "n1", vec!["*".into()]).unwrap();
        m.route("n1", "y.service");
        m.route("n2", "z.service");
        let v = m.units_of_node("n1");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].2, BTreeSet::from(["y.service".to_string()]));
    }

    #[test]
    fn wildcard_subscriptions_remember_a_bounded_number_of_units() {
        let mut m = Monitors::default();
        let a = m.create(":1.1").unwrap();
        m.subscribe(a, "n1", vec!["*".into()]).unwrap();
        for i in 0..MAX_SEEN_UNITS_PER_SUBSCRIPTION + 10 {
            assert_eq!(m.route("n1", &format!("u{i}.service")).len(), 1);
        }
        let v = m.units_of_node("n1");
        assert_eq!(v[0].2.len(), MAX_SEEN_UNITS_PER_SUBSCRIPTION);
    }

    fn destinations_and_members(out: &mut Outbox) -> Vec<(String, String)> {
        out.take()
            .1
            .iter()
            .map(|m| {
                let dest = m.destination().map(|d| d.to_string()).unwrap_or_default();
                (dest, m.member().map(|s| s.to_string()).unwrap_or_default())
            })
            .collect()
    }

    // [utest->req~manager.monitors~1]
    #[test]
    fn events_go_to_the_owner_and_its_peers_only() {
        let mut m = Monitors::default();
        let mut out = Outbox::default();
        let a = m.open(":1.1", &mut out).unwrap();
        assert_eq!(out.take().0, vec![ObjectOp::AddMonitor(a)]);
        m.subscribe(a, "n1", vec!["x.service".into()]).unwrap();
        m.add_peer(a, ":1.9").unwrap();
        let removed = |unit: &str| UnitEvent::Removed { unit: unit.into() };
        m.route_event("n1", &removed("x.service"), &mut out);
        m.route_event("n1", &removed("y.service"), &mut out);
        let sent = destinations_and_members(&mut out);
        assert_eq!(
            sent,
            [(":1.1", "UnitRemoved"), (":1.9", "UnitRemoved")]
                .map(|(d, m)| (d.to_string(), m.to_string()))
        );
    }

    #[test]
    fn a_dropped_node_gives_virtual_events_and_closing_tells_the_peers() {
        let mut m = Monitors::default();
        let mut out = Outbox::default();
        let a = m.open(":1.1", &mut out).unwrap();
        m.subscribe(a, "n1", vec!["x.service".into()]).unwrap();
        let peer = m.add_peer(a, ":1.9").unwrap();
        out.take();
        m.node_gone("n1", &mut out);
        let members: Vec<String> = destinations_and_members(&mut out)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        assert_eq!(
            members,
            [
                "UnitStateChanged",
                "UnitStateChanged",
                "UnitRemoved",
                "UnitRemoved"
            ]
        );
        m.remove_peer_with_notice(a, peer, "bye", &mut out).unwrap();
        assert_eq!(
            destinations_and_members(&mut out),
            vec![(":1.9".to_string(), "PeerRemoved".to_string())]
        );
        assert!(m.close(a, "done", &mut out));
        assert!(!m.close(a, "done", &mut out));
        assert_eq!(out.take().0, vec![ObjectOp::RemoveMonitor(a)]);
    }

    // [utest->req~bounds.monitors~1]
    #[test]
    fn bounds_are_enforced() {
        let mut m = Monitors::default();
        for _ in 0..MAX_MONITORS_PER_OWNER {
            m.create(":1.1").unwrap();
        }
        assert_eq!(m.create(":1.1"), Err(MonitorError::TooManyForOwner));
        let id = m.create(":1.2").unwrap();
        for _ in 0..MAX_SUBSCRIPTIONS_PER_MONITOR {
            m.subscribe(id, "n", vec!["u".into()]).unwrap();
        }
        assert_eq!(
            m.subscribe(id, "n", vec!["u".into()]),
            Err(MonitorError::TooManySubscriptions)
        );
        assert_eq!(m.subscribe(id, "n", vec![]), Err(MonitorError::EmptyName));
        assert_eq!(
            m.subscribe(id, "n", vec!["u".into(); MAX_UNITS_PER_SUBSCRIPTION + 1]),
            Err(MonitorError::TooManyUnits)
        );
        for _ in 0..MAX_PEERS_PER_MONITOR {
            m.add_peer(id, ":1.3").unwrap();
        }
        assert_eq!(m.add_peer(id, ":1.3"), Err(MonitorError::TooManyPeers));
        assert_eq!(m.check_owner(id, ":1.1"), Err(MonitorError::NotOwner));
        let mut many = Monitors::default();
        for i in 0..MAX_MONITORS {
            many.create(&format!(":1.{}", i)).unwrap();
        }
        assert_eq!(many.create(":2.0"), Err(MonitorError::TooManyMonitors));
    }

    fn props_event(bytes: usize) -> UnitEvent {
        let mut props = dbus::arg::PropMap::new();
        let big = Box::new("x".repeat(bytes)) as Box<dyn dbus::arg::RefArg>;
        props.insert("Description".into(), dbus::arg::Variant(big));
        let signal = Message::new_signal("/a", "a.b", "UnitPropertiesChanged")
            .unwrap()
            .append3("x.service", "org.freedesktop.systemd1.Unit", props);
        UnitEvent::PropertiesChanged {
            unit: "x.service".into(),
            iface: "org.freedesktop.systemd1.Unit".into(),
            signal,
        }
    }

    // [utest->req~bounds.monitor-copies~1]
    #[test]
    fn the_copies_of_one_event_stay_within_the_byte_budget() {
        let mut m = Monitors::default();
        let mut out = Outbox::default();
        for i in 0..MAX_MONITORS {
            let id = m.open(&format!(":1.{i}"), &mut out).unwrap();
            m.subscribe(id, "*", vec!["*".into()]).unwrap();
            for p in 0..MAX_PEERS_PER_MONITOR {
                m.add_peer(id, &format!(":2.{i}.{p}")).unwrap();
            }
        }
        out.take();
        let all = MAX_MONITORS * (1 + MAX_PEERS_PER_MONITOR);
        // A usual event reaches every recipient.
        m.route_event("n1", &props_event(1000), &mut out);
        assert_eq!(out.take().1.len(), all);
        // A large one: as many copies as the budget holds, whole monitors only.
        m.route_event("n1", &props_event(200_000), &mut out);
        let sent = out.take().1;
        let bytes: usize = sent.iter().map(encoded_len).sum();
        assert!(bytes <= MAX_MONITOR_EVENT_BYTES, "{bytes}");
        assert!(bytes > MAX_MONITOR_EVENT_BYTES - 9 * 201_000, "{bytes}");
        assert!(sent.len() < all && sent.len() % (1 + MAX_PEERS_PER_MONITOR) == 0);
    }
}
