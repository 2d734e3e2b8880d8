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
            validate_proxy_target(unit).err().map(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use crate::events::LinkHandle;
    use crate::state::Manager;
    use dbus::Message;
    use hirte_common::bounds::{DEP_START_TIMEOUT, MAX_FRAME_SIZE};
    use hirte_common::config::ManagerConfig;
    use hirte_common::frame::FrameDecoder;
    use hirte_common::handshake::register_call;
    use hirte_common::protocol;
    use hirte_common::stream::Peer;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const PROXY: &str = "/org/containers/hirte/internal/proxy/1";

    /// Nodes `a` (may depend on `b`), `b` and `c`, all registered; links 1, 2, 3.
    fn cluster() -> (Manager, Vec<Arc<LinkHandle>>) {
        let text = "[hirte]\nAllowedNodeNames=a,b,c\nNodeHeartbeatThreshold=1h\n\
                    [node a]\nAllowDependenciesOn=b\n";
        let mut cfg = ManagerConfig::default();
        for e in hirte_common::config::parse_text(text, "hirte.conf", "hirte").unwrap() {
            cfg.apply(&e).unwrap();
        }
        let mut m = Manager::new(cfg);
        let mut links = Vec::new();
        for (id, name) in [(1, "a"), (2, "b"), (3, "c")] {
            let h = LinkHandle::new(id, Peer::Unix).unwrap();
            m.on_register(h.clone(), name, &register(name));
            links.push(h);
        }
        for h in &links {
            sent(h); // the Register answers and subscriptions
        }
        (m, links)
    }

    fn register(name: &str) -> Message {
        let mut r = register_call(name).unwrap();
        r.set_serial(1);
        r
    }

    /// What the manager queued for one link since the last look.
    fn sent(h: &LinkHandle) -> Vec<Message> {
        let mut d = FrameDecoder::new(MAX_FRAME_SIZE);
        while let Some(bytes) = h.queue.try_pop() {
            d.push(&bytes).unwrap();
        }
        std::iter::from_fn(|| d.next_message().unwrap()).collect()
    }

    fn member(m: &Message) -> String {
        m.member().map(|s| s.to_string()).unwrap_or_default()
    }

    fn from_agent(member: &str) -> Message {
        Message::new_signal(
            protocol::INTERNAL_AGENT_PATH,
            protocol::INTERNAL_AGENT_IFACE,
            member,
        )
        .unwrap()
    }

    fn proxy_new(target: &str, unit: &str) -> Message {
        from_agent("ProxyNew").append3(target, unit, dbus::Path::new(PROXY).unwrap())
    }

    fn start_dep_of(msgs: &[Message]) -> &Message {
        msgs.iter()
            .find(|m| member(m) == "StartDep")
            .expect("a StartDep call")
    }

    // [utest->req~proxy.refcount~1]
    #[test]
    fn start_dep_answer_makes_the_proxy_ready_and_last_release_stops_the_anchor() {
        let (mut m, links) = cluster();
        m.on_frame(1, proxy_new("b", "db.service"));
        let to_b = sent(&links[1]);
        let start = start_dep_of(&to_b);
        assert_eq!(start.read1::<&str>().unwrap(), "db.service");
        assert!(to_b.iter().any(|m| member(m) == "Subscribe"));
        let mut answer = start.method_return();
        answer.set_serial(99);
        m.on_frame(2, answer);
        let to_a = sent(&links[0]);
        assert_eq!(to_a.len(), 1);
        assert_eq!(member(&to_a[0]), "Ready");
        assert_eq!(to_a[0].path().unwrap().to_string(), PROXY);
        // The target really stops: the started proxy is told.
        let stopped = from_agent("UnitStateChanged").append3("db.service", "failed", "failed");
        m.on_frame(2, stopped.append1("real"));
        let to_a = sent(&links[0]);
        assert_eq!(member(&to_a[0]), "TargetStopped");
        assert_eq!(to_a[0].read1::<&str>().unwrap(), "failed");
        // Released: StopDep, and the watch ends.
        m.on_frame(1, from_agent("ProxyRemoved").append2("b", "db.service"));
        let to_b: Vec<String> = sent(&links[1]).iter().map(member).collect();
        assert!(to_b.contains(&"StopDep".to_string()), "{to_b:?}");
        assert!(to_b.contains(&"Unsubscribe".to_string()), "{to_b:?}");
    }

    // [utest->req~proxy.allow~1]
    #[test]
    fn proxies_outside_allow_dependencies_on_are_refused_with_a_reason() {
        let (mut m, links) = cluster();
        for (from, target, unit) in [
            (3, "b", "db.service"), // c may not depend on anything
            (1, "c", "db.service"), // a may depend on b only
            (1, "zz", "db.service"),
            (1, "b", "db.socket"),
        ] {
            m.on_frame(from, proxy_new(target, unit));
            let back = sent(&links[usize::try_from(from - 1).unwrap()]);
            assert_eq!(back.len(), 1, "{target} {unit}");
            assert_eq!(member(&back[0]), "Error");
            let why: &str = back[0].read1().unwrap();
            assert!(!why.is_empty());
            assert!(sent(&links[1]).iter().all(|m| member(m) != "StartDep"));
        }
    }

    // [utest->req~proxy.allow~1]
    #[test]
    fn malformed_proxy_signals_are_logged_and_change_nothing() {
        let (mut m, links) = cluster();
        m.on_frame(1, from_agent("ProxyNew").append2("b", "db.service"));
        m.on_frame(
            1,
            from_agent("ProxyNew").append3("b", "db.service", "/not/an/object"),
        );
        let elsewhere = dbus::Path::new("/org/containers/hirte/elsewhere").unwrap();
        m.on_frame(
            1,
            from_agent("ProxyNew").append3("b", "db.service", elsewhere),
        );
        m.on_frame(1, from_agent("ProxyNew").append3(1u32, 2u32, 3u32));
        m.on_frame(1, from_agent("ProxyRemoved").append1(7u32));
        m.on_frame(1, from_agent("ProxyRemoved").append2("b", "never.service"));
        for h in &links {
            assert!(sent(h).is_empty());
        }
        assert!(m.proxies.needed_on("b").is_empty());
    }

    // [utest->req~proxy.refcount~1]
    #[test]
    fn start_dep_unanswered_past_its_deadline_fails_the_waiting_proxy() {
        let (mut m, links) = cluster();
        m.on_frame(1, proxy_new("b", "db.service"));
        sent(&links[1]);
        m.tick(Instant::now() + DEP_START_TIMEOUT - Duration::from_secs(1));
        assert!(sent(&links[0]).is_empty());
        m.tick(Instant::now() + DEP_START_TIMEOUT + Duration::from_secs(1));
        let to_a = sent(&links[0]);
        assert_eq!(to_a.len(), 1);
        assert_eq!(member(&to_a[0]), "Error");
        let why: &str = to_a[0].read1().unwrap();
        assert!(why.contains("did not answer StartDep"), "{why}");
    }

    // [utest->req~proxy.refcount~1]
    #[test]
    fn an_offline_requester_releases_and_an_offline_target_is_started_on_return() {
        let (mut m, links) = cluster();
        m.on_frame(1, proxy_new("b", "db.service"));
        sent(&links[1]);
        // The target drops: the waiting proxy waits, no error.
        m.node_offline(1, "test");
        assert!(sent(&links[0]).is_empty());
        let b = LinkHandle::new(4, Peer::Unix).unwrap();
        m.on_register(b.clone(), "b", &register("b"));
        start_dep_of(&sent(&b));
        // The requester drops: nothing needs the unit, the anchor is stopped.
        m.node_offline(0, "test");
        assert!(sent(&b).iter().any(|m| member(m) == "StopDep"));
    }
}
