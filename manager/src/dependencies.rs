//! Cross-node dependencies as the manager drives them: proxies announced by requesting
//! nodes, the `hirte-dep@` anchors on target nodes, and the news passed between them.

use crate::state::{Manager, PendingKind};
use dbus::arg::messageitem::MessageItem;
use dbus::Message;
use hirte_common::bounds::DEP_START_TIMEOUT;
use hirte_common::names::validate_proxy_target;
use hirte_common::protocol::{self, signature_of};
use hirte_common::{log_debug, log_fields, log_warn};

impl Manager {
    /// `ProxyNew(node, unit, proxy)` from a requesting node.
    // [impl->req~proxy.allow~1]
    pub(crate) fn on_proxy_new(&mut self, requester: &str, msg: &Message) {
        if signature_of(msg) != "sso" {
            log_warn!("Node '{requester}' sent a malformed ProxyNew");
            return;
        }
        let Ok((target, unit, path)) = msg.read3::<&str, &str, dbus::Path>() else {
            log_warn!("Node '{requester}' sent a malformed ProxyNew");
            return;
        };
        let path = path.to_string();
        if !path.starts_with(protocol::PROXY_PATH_PREFIX) {
            log_warn!("Node '{requester}' sent ProxyNew for object '{path}', ignored");
            return;
        }
        let refusal = if self.node_index(target).is_none() {
            Some(format!("no node named '{target}' is configured"))
        } else if !self.cfg.may_depend_on(requester, target) {
            Some(format!(
                "node '{requester}' may not depend on units of node '{target}' \
                 (AllowDependenciesOn= of [node {requester}])"
            ))
        } else {
            validate_proxy_target(unit).err()
        };
        let refusal = refusal.or_else(|| {
            self.proxies
                .add(requester, target, unit, &path)
                .err()
                .map(|e| e.to_string())
        });
        if let Some(why) = refusal {
            log_fields!(
                Warn,
                [("NODE", requester), ("UNIT", unit)],
                "Refused proxy of node '{requester}' for '{unit}' on node '{target}': {why}"
            );
            self.tell_proxy(requester, &path, "Error", vec![MessageItem::Str(why)]);
            return;
        }
        log_fields!(
            Info,
            [("NODE", requester), ("UNIT", unit)],
            "Node '{requester}' needs '{unit}' on node '{target}' (proxy {path})"
        );
        if let Some(t) = self.node_index(target) {
            self.sync_agent_subscriptions(t);
            self.start_dep(t, unit);
        }
    }

    /// `ProxyRemoved(node, unit)` from a requesting node.
    pub(crate) fn on_proxy_removed(&mut self, requester: &str, msg: &Message) {
        let Ok((target, unit)) = msg.read2::<&str, &str>() else {
            log_warn!("Node '{requester}' sent a malformed ProxyRemoved");
            return;
        };
        match self.proxies.remove(requester, target, unit) {
            None => log_debug!("Node '{requester}' removed an unknown proxy for '{unit}'"),
            Some(last) => {
                log_fields!(
                    Info,
                    [("NODE", requester), ("UNIT", unit)],
                    "Node '{requester}' no longer needs '{unit}' on node '{target}'"
                );
                if last {
                    self.release_dep(target, unit);
                }
            }
        }
    }

    /// A requesting node went offline: its proxies are gone (it announces them again when
    /// it is back).
    pub(crate) fn drop_proxies_of(&mut self, requester: &str) {
        for (target, unit) in self.proxies.remove_requester(requester) {
            self.release_dep(&target, &unit);
        }
    }

    /// A target node registered: every anchor some proxy needs is started (again).
    // [impl->req~proxy.refcount~1]
    pub(crate) fn start_needed_deps(&mut self, idx: usize) {
        let Some(name) = self.nodes.get(idx).map(|n| n.name.clone()) else {
            return;
        };
        for unit in self.proxies.needed_on(&name) {
            self.start_dep(idx, &unit);
        }
    }

    fn start_dep(&mut self, idx: usize, unit: &str) {
        let Some(target) = self.nodes.get(idx).map(|n| n.name.clone()) else {
            return;
        };
        if self.nodes.get(idx).is_some_and(|n| n.online.is_none()) {
            // Waiting proxies wait: the anchor is started when the node registers.
            return;
        }
        let kind = PendingKind::StartDep {
            target: target.clone(),
            unit: unit.to_string(),
        };
        let u = unit.to_string();
        let fill = |m: &mut Message| m.append_all((u,));
        if let Err(f) = self.call_node_within(idx, "StartDep", fill, kind, DEP_START_TIMEOUT) {
            let e = &f.0;
            let text = e.description().to_string();
            self.start_dep_failed(&target, unit, &e.errorname().to_string(), &text);
        }
    }

    /// No proxy needs (target, unit) any more: the anchor goes. Not when the manager
    /// itself is stopping: its restart must not stop services (the requesting agents
    /// announce their proxies again to the next manager).
    fn release_dep(&mut self, target: &str, unit: &str) {
        let Some(idx) = self.node_index(target) else {
            return;
        };
        if !self.draining && self.nodes.get(idx).is_some_and(|n| n.online.is_some()) {
            let u = unit.to_string();
            let fill = |m: &mut Message| m.append_all((u,));
            let _ = self.call_node(idx, "StopDep", fill, PendingKind::Internal);
        }
        self.sync_agent_subscriptions(idx);
    }

    /// The anchor is active, so is the target: waiting proxies are ready.
    pub(crate) fn start_dep_done(&mut self, target: &str, unit: &str) {
        for (requester, path) in self.proxies.take_waiting(target, unit) {
            self.tell_proxy(&requester, &path, "Ready", Vec::new());
        }
    }

    /// The anchor could not be started: waiting proxies fail (their agents then remove
    /// them). An offline target is no failure: the anchor is started when it registers.
    pub(crate) fn start_dep_failed(&mut self, target: &str, unit: &str, name: &str, text: &str) {
        if name == protocol::error::OFFLINE {
            log_debug!("StartDep of '{unit}' waits for node '{target}': {text}");
            return;
        }
        log_warn!("Could not start '{unit}' on node '{target}' for its proxies: {text}");
        // The agent's caller names unit and node; the cause is enough.
        for (requester, path) in self.proxies.waiting(target, unit) {
            let why = vec![MessageItem::Str(text.to_string())];
            self.tell_proxy(&requester, &path, "Error", why);
        }
    }

    /// `UnitStateChanged(unit, active, sub, reason)` from a node: a target that really
    /// stopped ends the proxies that were started for it.
    // [impl->req~proxy.target-stopped~1]
    pub(crate) fn proxy_target_changed(&mut self, node: &str, items: &[MessageItem]) {
        let [MessageItem::Str(unit), MessageItem::Str(active), _, MessageItem::Str(reason)] = items
        else {
            return;
        };
        if reason != "real" || !matches!(active.as_str(), "inactive" | "failed") {
            return;
        }
        if !self.proxies.is_needed(node, unit) {
            return;
        }
        for (requester, path) in self.proxies.ready(node, unit) {
            log_fields!(
                Info,
                [("NODE", requester.as_str()), ("UNIT", unit.as_str())],
                "'{unit}' on node '{node}' is {active}: stopping the proxy on node '{requester}'"
            );
            let state = vec![MessageItem::Str(active.clone())];
            self.tell_proxy(&requester, &path, "TargetStopped", state);
        }
    }

    /// A signal to one proxy object of a requesting node's agent.
    fn tell_proxy(&mut self, requester: &str, path: &str, member: &str, items: Vec<MessageItem>) {
        let Some(idx) = self.node_index(requester) else {
            return;
        };
        let Some(mut msg) = Self::signal(path, protocol::INTERNAL_PROXY_IFACE, member) else {
            return;
        };
        msg.append_items(&items);
        self.signal_node(idx, msg);
    }
}
