//! Cross-node dependencies on the agent's side: the local `CreateProxy`/`RemoveProxy`
//! calls of `hirte-proxy@` units, the manager's news about their targets, and the
//! `hirte-dep@` anchors the manager asks this node to hold for proxies elsewhere.

use super::jobs::JobKind;
use super::manager_calls::expect_signature;
use super::watch;
use super::{keep_call, Core};
use crate::proxy::AgentProxy;
use crate::systemd::{self, bad_args, CallError, Systemd};
use dbus::Message;
use hirte_common::names::{
    split_proxy_instance, validate_node_name, validate_proxy_target, MAX_UNIT_NAME_LEN,
};
use hirte_common::protocol::error_reply;
use hirte_common::protocol::{error, UnitRow, DEP_TEMPLATE, PROXY_TEMPLATE};
use hirte_common::timespan::format_timespan;
use hirte_common::{log_debug, log_info, log_warn};
use std::time::Instant;

/// `hirte-dep@NAME.service` for target `NAME.service`.
fn anchor_of(unit: &str) -> Result<String, CallError> {
    validate_proxy_target(unit).map_err(bad_args)?;
    let name = unit.strip_suffix(".service").unwrap_or(unit);
    Ok(format!("{DEP_TEMPLATE}{name}.service"))
}

/// The proxy's own unit: a service name, as systemd would accept it.
fn validate_local_service(name: &str) -> Result<(), CallError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@'));
    if name.len() > MAX_UNIT_NAME_LEN || !ok_chars || !name.ends_with(".service") {
        return Err(bad_args(format!("'{name}' is not a service unit name")));
    }
    Ok(())
}

impl<S: Systemd> Core<S> {
    /// Answers a waiting caller on the node's bus.
    fn answer_local(&self, call: &Message, reply: Option<Message>) {
        if call.get_no_reply() {
            return;
        }
        if let Some(r) = reply {
            self.sd.send(r);
        }
    }

    fn proxy_signal(&self, member: &str, p: &AgentProxy<Message>, path: Option<&str>) {
        let Some(sig) = watch::agent_signal(member) else {
            return;
        };
        let sig = sig.append2(p.node.as_str(), p.unit.as_str());
        let sig = match path.map(|p| dbus::Path::new(p.to_string())) {
            Some(Ok(path)) => sig.append1(path),
            Some(Err(_)) => return,
            None => sig,
        };
        self.send(sig);
    }

    /// `CreateProxy`/`RemoveProxy(local_service, node, unit)` on the node's bus.
    // [impl->req~proxy.agent-api~1]
    pub(crate) fn on_local_proxy_call(&mut self, msg: &Message) {
        let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
        let args = expect_signature(msg, &member, "sss")
            .and_then(|()| msg.read3::<String, String, String>().map_err(bad_args));
        let checked = args.and_then(|(service, node, unit)| {
            validate_local_service(&service)?;
            validate_node_name(&node).map_err(|e| bad_args(format!("'{node}': {e}")))?;
            validate_proxy_target(&unit).map_err(bad_args)?;
            Ok((service, node, unit))
        });
        let (service, node, unit) = match checked {
            Ok(a) => a,
            Err(e) => {
                log_warn!("{member} refused: {e}");
                self.answer_local(msg, error_reply(msg, e.name(), &e.to_string()));
                return;
            }
        };
        if member == "RemoveProxy" {
            self.remove_proxy(&service, &node, &unit);
            self.answer_local(msg, Some(msg.method_return()));
            return;
        }
        let Ok(call) = keep_call(msg) else {
            return;
        };
        let created = match self
            .proxies
            .create(&service, &node, &unit, call, Instant::now())
        {
            Ok(c) => c,
            Err(full) => {
                log_warn!("CreateProxy for {unit} on node '{node}' refused: {full}");
                self.answer_local(msg, error_reply(msg, error::BUSY, &full.to_string()));
                return;
            }
        };
        if let Some((old, _)) = created.replaced.and_then(|p| p.waiting) {
            let r = error_reply(&old, error::ACTIVATION_FAILED, "replaced by a new request");
            self.answer_local(&old, r);
        }
        log_info!("Proxy {service}: waiting for {unit} on node '{node}'");
        if self.linked {
            self.announce_proxy(created.id);
        }
    }

    /// A restarted agent takes over the proxies that are active on this node, so the
    /// manager learns of them again and the targets stay needed.
    // [impl->req~proxy.agent-api~1]
    pub(crate) fn adopt_running_proxies(&mut self) {
        let pattern = format!("{PROXY_TEMPLATE}*.service");
        let Ok(call) = systemd::manager_call("ListUnitsByPatterns") else {
            return;
        };
        let call = call.append2(vec!["active"], vec![pattern.as_str()]);
        let rows = match self.sd.call(call).and_then(|r| {
            r.read1::<Vec<UnitRow>>()
                .map_err(|e| CallError::BadReply(e.to_string()))
        }) {
            Ok(rows) => rows,
            Err(e) => {
                log_warn!("Cannot list active proxies: {e}");
                return;
            }
        };
        for row in rows {
            let service = row.0;
            let Some(instance) = service
                .strip_prefix(PROXY_TEMPLATE)
                .and_then(|i| i.strip_suffix(".service"))
            else {
                continue;
            };
            let Ok((node, unit)) = split_proxy_instance(&format!("{instance}.service"))
                .map(|(n, u)| (n.to_string(), u.to_string()))
            else {
                continue;
            };
            if self.proxies.adopt(&service, &node, &unit).is_some() {
                log_info!("Proxy {service}: active, taken over (needs {unit} on node '{node}')");
            }
        }
    }

    fn announce_proxy(&mut self, id: u32) {
        let path = AgentProxy::<Message>::path(id);
        if let Some(p) = self.proxies.get_mut(id) {
            p.announced = true;
        }
        let Some(p) = self.proxies.get(id) else {
            return;
        };
        self.proxy_signal("ProxyNew", p, Some(&path));
    }

    /// A new manager link learns every proxy (the manager forgot them with the old one).
    // [impl->req~proxy.refcount~1]
    pub(crate) fn announce_proxies(&mut self) {
        let ids: Vec<u32> = self.proxies.iter_mut().map(|(id, _)| id).collect();
        for id in ids {
            self.announce_proxy(id);
        }
    }

    pub(crate) fn proxies_unannounced(&mut self) {
        for (_, p) in self.proxies.iter_mut() {
            p.announced = false;
        }
    }

    /// Forgets a proxy and tells the manager, which releases the target.
    fn remove_proxy(&mut self, service: &str, node: &str, unit: &str) {
        let Some(p) = self
            .proxies
            .find(node, unit)
            .and_then(|id| self.proxies.remove(id))
        else {
            log_debug!("RemoveProxy: no proxy {service} (already removed)");
            return;
        };
        log_info!("Proxy {service}: released {unit} on node '{node}'");
        if let Some((call, _)) = &p.waiting {
            let r = error_reply(call, error::ACTIVATION_FAILED, "the proxy was removed");
            self.answer_local(call, r);
        }
        if p.announced {
            self.proxy_signal("ProxyRemoved", &p, None);
        }
    }

    /// Waiting callers past `PROXY_START_TIMEOUT` get `Timeout`; their proxies go.
    pub(crate) fn expire_proxies(&mut self) {
        for p in self.proxies.take_expired(Instant::now()) {
            let text = format!(
                "not active within {}",
                format_timespan(hirte_common::bounds::PROXY_START_TIMEOUT)
            );
            log_warn!(
                "Proxy {}: {} on node '{}' {text}",
                p.local_service,
                p.unit,
                p.node
            );
            if let Some((call, _)) = &p.waiting {
                self.answer_local(call, error_reply(call, error::TIMEOUT, &text));
            }
            if p.announced {
                self.proxy_signal("ProxyRemoved", &p, None);
            }
        }
    }

    /// `Ready()`, `Error(s)`, `TargetStopped(s)` from the manager to one proxy.
    // [impl->req~proxy.target-stopped~1]
    pub(crate) fn on_proxy_signal(&mut self, msg: &Message) {
        let path = msg.path().map(|p| p.to_string()).unwrap_or_default();
        let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
        let Some(id) = self.proxies.id_of_path(&path) else {
            log_debug!("{member} for unknown proxy {path}, ignored");
            return;
        };
        if !matches!(member.as_str(), "Ready" | "Error" | "TargetStopped") {
            log_debug!("Unknown proxy signal {member}, ignored");
            return;
        }
        let waiting = self
            .proxies
            .get_mut(id)
            .and_then(|p| p.waiting.take().map(|(call, _)| call));
        match (member.as_str(), waiting) {
            ("Ready", Some(call)) => {
                if let Some(p) = self.proxies.get_mut(id) {
                    log_info!(
                        "Proxy {}: {} on node '{}' is active",
                        p.local_service,
                        p.unit,
                        p.node
                    );
                }
                self.answer_local(&call, Some(call.method_return()));
            }
            ("Ready", None) => {} // Again after a reconnect: nothing changed here.
            ("Error", waiting) | ("TargetStopped", waiting) => {
                let why = msg.read1::<&str>().unwrap_or("no reason given").to_string();
                let Some(p) = self.proxies.remove(id) else {
                    return;
                };
                match waiting {
                    Some(call) => {
                        log_warn!("Proxy {}: {why}", p.local_service);
                        let r = error_reply(&call, error::ACTIVATION_FAILED, &why);
                        self.answer_local(&call, r);
                    }
                    None => {
                        // Started before: the proxy service ends, and with it its dependants.
                        let what = if member == "TargetStopped" {
                            format!("{} on node '{}' is {why}", p.unit, p.node)
                        } else {
                            why
                        };
                        log_info!("Proxy {}: {what}; stopping the proxy", p.local_service);
                        if let Ok(c) = systemd::manager_call("StopUnit") {
                            let c = c.append2(p.local_service.as_str(), "replace");
                            if let Err(e) = self.sd.call(c) {
                                log_warn!("Cannot stop {}: {e}", p.local_service);
                            }
                        }
                    }
                }
                if p.announced {
                    self.proxy_signal("ProxyRemoved", &p, None);
                }
            }
            _ => {} // Sorted out above.
        }
    }

    /// `StartDep(unit)`: starts the anchor; answered when its job ends.
    // [impl->req~proxy.dep~1]
    pub(crate) fn start_dep(&mut self, msg: &Message) -> Result<(), CallError> {
        let unit: &str = msg.read1().map_err(bad_args)?;
        let anchor = anchor_of(unit)?;
        self.jobs.check_room(&self.node)?;
        let call = systemd::manager_call("StartUnit")?.append2(anchor.as_str(), "replace");
        let path = self.sd.job_call(call)?;
        let copy = keep_call(msg)?;
        log_info!("Starting {anchor}: {unit} is needed by another node");
        let kind = JobKind::Dep {
            call: copy,
            unit: unit.to_string(),
        };
        self.record_job(path, &anchor, kind);
        Ok(())
    }

    /// The anchor's start job ended.
    pub(crate) fn dep_ended(&mut self, call: &Message, unit: &str, result: &str) {
        let reply = if result == "done" {
            Some(call.method_return())
        } else {
            let text = format!("its start job ended with result '{result}'");
            log_warn!("Anchor for {unit} failed: {result}");
            error_reply(call, error::ACTIVATION_FAILED, &text)
        };
        if let Some(r) = reply {
            self.send(r);
        }
    }

    /// `StopDep(unit)`: no proxy needs the target any more; the anchor goes.
    pub(crate) fn stop_dep(&mut self, msg: &Message) -> Result<(), CallError> {
        let unit: &str = msg.read1().map_err(bad_args)?;
        let anchor = anchor_of(unit)?;
        let call = systemd::manager_call("StopUnit")?.append2(anchor.as_str(), "replace");
        self.sd.call(call)?;
        log_info!("Stopping {anchor}: no other node needs {unit} any more");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::FromLink;
    use crate::testing::{error_name, job_removed, member, Harness};
    use hirte_common::protocol::{self, INTERNAL_PROXY_IFACE};

    fn local_call(h: &mut Harness, method: &str, args: (&str, &str, &str)) -> Option<Message> {
        let mut m = Message::new_method_call(
            protocol::AGENT_BUS_NAME,
            protocol::MANAGER_PATH,
            protocol::AGENT_IFACE,
            method,
        )
        .unwrap()
        .append3(args.0, args.1, args.2);
        m.set_serial(11);
        h.core.on_bus_message(m);
        h.sd().sent.borrow_mut().pop()
    }

    const SERVICE: &str = "hirte-proxy@b_x.service";

    /// A core whose link to the manager is up (proxies are announced only then).
    fn linked() -> Harness {
        let mut h = Harness::new();
        h.core
            .on_link_event(FromLink::Connected("tcp:host=m,port=1".into()));
        h.sd().sent.borrow_mut().clear();
        h
    }

    // [utest->req~proxy.agent-api~1]
    #[test]
    fn a_proxy_is_announced_and_answered_when_its_target_is_ready() {
        let mut h = linked();
        assert!(local_call(&mut h, "CreateProxy", (SERVICE, "b", "x.service")).is_none());
        let out = h.to_manager();
        assert_eq!(member(&out[0]), "ProxyNew");
        let (node, unit, path) = out[0].read3::<&str, &str, dbus::Path>().unwrap();
        assert_eq!((node, unit), ("b", "x.service"));
        let ready = Message::new_signal(path.to_string(), INTERNAL_PROXY_IFACE, "Ready").unwrap();
        h.deliver(ready);
        let answer = h.sd().sent.borrow_mut().pop().unwrap();
        assert_eq!(error_name(&answer), None);
        assert_eq!(answer.get_reply_serial(), Some(11));
        // Released: the manager hears of it.
        assert!(local_call(&mut h, "RemoveProxy", (SERVICE, "b", "x.service")).is_some());
        assert_eq!(member(&h.to_manager()[0]), "ProxyRemoved");
    }

    #[test]
    fn bad_proxy_calls_are_refused_with_invalid_args() {
        let mut h = Harness::new();
        for args in [
            ("not-a-service", "b", "x.service"),
            (SERVICE, "", "x.service"),
            (SERVICE, "b", "x.socket"),
        ] {
            let r = local_call(&mut h, "CreateProxy", args).unwrap();
            assert_eq!(
                error_name(&r).as_deref(),
                Some(error::INVALID_ARGS),
                "{args:?}"
            );
        }
        assert!(h.to_manager().is_empty());
    }

    #[test]
    fn a_target_that_fails_fails_the_waiting_proxy() {
        let mut h = linked();
        local_call(&mut h, "CreateProxy", (SERVICE, "b", "x.service"));
        let path = AgentProxy::<Message>::path(h.core.proxies.find("b", "x.service").unwrap());
        h.to_manager();
        let err = Message::new_signal(path, INTERNAL_PROXY_IFACE, "Error")
            .unwrap()
            .append1("node 'b' is offline");
        h.deliver(err);
        let answer = h.sd().sent.borrow_mut().pop().unwrap();
        assert_eq!(
            error_name(&answer).as_deref(),
            Some(error::ACTIVATION_FAILED)
        );
        assert_eq!(member(&h.to_manager()[0]), "ProxyRemoved");
        assert!(h.core.proxies.find("b", "x.service").is_none());
    }

    #[test]
    fn start_dep_holds_an_anchor_and_answers_when_it_is_up() {
        let mut h = Harness::new();
        let m = h.manager_call("StartDep").append1("x.service");
        h.deliver(m);
        assert!(h.to_manager().is_empty(), "answered when the job ends");
        let calls = h.sd().calls.borrow();
        let start = calls.last().unwrap();
        assert_eq!(
            start.read2::<&str, &str>().unwrap(),
            ("hirte-dep@x.service", "replace")
        );
        drop(calls);
        let job = h.sd().last_job_path();
        h.core
            .on_bus_message(job_removed(&job, "hirte-dep@x.service", "done"));
        assert_eq!(error_name(&h.to_manager()[0]), None);

        let m = h.manager_call("StartDep").append1("y.service");
        h.deliver(m);
        let job = h.sd().last_job_path();
        h.core
            .on_bus_message(job_removed(&job, "hirte-dep@y.service", "failed"));
        let r = h.to_manager();
        assert_eq!(error_name(&r[0]).as_deref(), Some(error::ACTIVATION_FAILED));

        let m = h.manager_call("StartDep").append1("../etc");
        h.deliver(m);
        let r = h.to_manager();
        assert_eq!(error_name(&r[0]).as_deref(), Some(error::INVALID_ARGS));

        let m = h.manager_call("StopDep").append1("x.service");
        h.deliver(m);
        assert_eq!(error_name(&h.to_manager()[0]), None);
        assert_eq!(h.sd().members().last().unwrap(), "StopUnit");
    }
}
