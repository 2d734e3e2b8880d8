//! Cross-node dependencies as the manager decides them: proxies announced by requesting
//! nodes, the `hirte-dep@` anchors on target nodes, and the news passed between them. Each
//! event gives the actions to take (`DepAction`); the manager carries them out.

use crate::agent_msg::UnitEvent;
use crate::proxy::{Proxies, ProxyError};
use dbus::arg::messageitem::MessageItem;
use hirte_common::names::{validate_proxy_target, ProxyNameError};
use hirte_common::protocol;
use hirte_common::{log_debug, log_fields, log_warn};
use std::collections::BTreeSet;
use std::fmt;

/// What the manager must do for the proxies.
#[derive(Debug, PartialEq)]
pub enum DepAction {
    /// A signal (`Ready`, `Error`, `TargetStopped`) to one proxy object of a requesting node.
    Tell {
        requester: String,
        path: String,
        member: &'static str,
        items: Vec<MessageItem>,
    },
    /// Start the anchor of `unit` on `target` (`StartDep`), if `target` is online; its outcome
    /// comes back through `started` or `start_failed`.
    Start { target: String, unit: String },
    /// No proxy needs (target, unit) any more: the anchor goes (`StopDep`), and the target's
    /// watches are brought in line.
    Release { target: String, unit: String },
    /// The units the manager watches on `target` changed.
    Watch { target: String },
}

/// Why a proxy was refused; the requesting agent gets the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRefusal {
    UnknownTarget { target: String },
    NotAllowed { requester: String, target: String },
    BadUnit(ProxyNameError),
    Table(ProxyError),
}

impl fmt::Display for ProxyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyRefusal::UnknownTarget { target } => {
                write!(f, "no node named '{target}' is configured")
            }
            ProxyRefusal::NotAllowed { requester, target } => write!(
                f,
                "node '{requester}' may not depend on units of node '{target}' \
                 (AllowDependenciesOn= of [node {requester}])"
            ),
            ProxyRefusal::BadUnit(why) => write!(f, "{why}"),
            ProxyRefusal::Table(e) => write!(f, "{e}"),
        }
    }
}

/// What the manager knows about a `ProxyNew`'s target before deciding.
pub struct TargetCheck {
    /// A node of that name is configured.
    pub known: bool,
    /// The requester may depend on it (`AllowDependenciesOn=`).
    pub allowed: bool,
}

#[derive(Default)]
pub struct Dependencies {
    proxies: Proxies,
}

fn tell(requester: String, path: String, member: &'static str, why: Option<String>) -> DepAction {
    DepAction::Tell {
        requester,
        path,
        member,
        items: why.into_iter().map(MessageItem::Str).collect(),
    }
}

impl Dependencies {
    /// `ProxyNew(node, unit, proxy)` from a requesting node.
    // [impl->req~proxy.allow~1]
    pub fn proxy_new(
        &mut self,
        requester: &str,
        target: &str,
        unit: &str,
        path: &str,
        check: TargetCheck,
    ) -> Vec<DepAction> {
        let refusal = if !check.known {
            Err(ProxyRefusal::UnknownTarget {
                target: target.to_string(),
            })
        } else if !check.allowed {
            Err(ProxyRefusal::NotAllowed {
                requester: requester.to_string(),
                target: target.to_string(),
            })
        } else {
            validate_proxy_target(unit).map_err(ProxyRefusal::BadUnit)
        };
        let refusal = refusal.and_then(|()| {
            self.proxies
                .add(requester, target, unit, path)
                .map_err(ProxyRefusal::Table)
        });
        if let Err(why) = refusal {
            log_fields!(
                Warn,
                [("NODE", requester), ("UNIT", unit)],
                "Refused proxy of node '{requester}' for '{unit}' on node '{target}': {why}"
            );
            let why = Some(why.to_string());
            return vec![tell(requester.into(), path.into(), "Error", why)];
        }
        log_fields!(
            Info,
            [("NODE", requester), ("UNIT", unit)],
            "Node '{requester}' needs '{unit}' on node '{target}' (proxy {path})"
        );
        vec![
            DepAction::Watch {
                target: target.to_string(),
            },
            DepAction::Start {
                target: target.to_string(),
                unit: unit.to_string(),
            },
        ]
    }

    /// `ProxyRemoved(node, unit)` from a requesting node.
    pub fn proxy_removed(&mut self, requester: &str, target: &str, unit: &str) -> Vec<DepAction> {
        match self.proxies.remove(requester, target, unit) {
            None => {
                log_debug!("Node '{requester}' removed an unknown proxy for '{unit}'");
                Vec::new()
            }
            Some(last) => {
                log_fields!(
                    Info,
                    [("NODE", requester), ("UNIT", unit)],
                    "Node '{requester}' no longer needs '{unit}' on node '{target}'"
                );
                let release = DepAction::Release {
                    target: target.to_string(),
                    unit: unit.to_string(),
                };
                if last {
                    vec![release]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// A requesting node went offline: its proxies are gone (it announces them again when
    /// it is back).
    // [impl->req~proxy.log~1]
    pub fn requester_gone(&mut self, requester: &str) -> Vec<DepAction> {
        self.proxies
            .remove_requester(requester)
            .into_iter()
            .map(|(target, unit)| {
                log_fields!(
                    Info,
                    [("NODE", requester), ("UNIT", unit.as_str())],
                    "Node '{requester}' went offline: no proxy needs '{unit}' on node \
                     '{target}' any more, releasing it"
                );
                DepAction::Release { target, unit }
            })
            .collect()
    }

    /// A target node registered: every anchor some proxy needs is started (again).
    // [impl->req~proxy.refcount~1]
    // [impl->req~proxy.log~1]
    pub fn target_back(&self, target: &str) -> Vec<DepAction> {
        self.proxies
            .needed_on(target)
            .into_iter()
            .map(|unit| {
                log_fields!(
                    Info,
                    [("NODE", target), ("UNIT", unit.as_str())],
                    "Node '{target}' registered: starting '{unit}' there for the proxies that \
                     need it"
                );
                DepAction::Start {
                    target: target.to_string(),
                    unit,
                }
            })
            .collect()
    }

    /// The anchor is active, so is the target: waiting proxies are ready.
    pub fn started(&mut self, target: &str, unit: &str) -> Vec<DepAction> {
        self.proxies
            .take_waiting(target, unit)
            .into_iter()
            .map(|(requester, path)| tell(requester, path, "Ready", None))
            .collect()
    }

    /// The anchor could not be started: waiting proxies fail (their agents then remove
    /// them). An offline target is no failure: the anchor is started when it registers.
    pub fn start_failed(&self, target: &str, unit: &str, name: &str, text: &str) -> Vec<DepAction> {
        if name == protocol::error::OFFLINE {
            log_debug!("StartDep of '{unit}' waits for node '{target}': {text}");
            return Vec::new();
        }
        log_warn!("Could not start '{unit}' on node '{target}' for its proxies: {text}");
        // The agent's caller names unit and node; the cause is enough.
        self.proxies
            .waiting(target, unit)
            .into_iter()
            .map(|(requester, path)| tell(requester, path, "Error", Some(text.to_string())))
            .collect()
    }

    /// A unit event from a node: only `UnitStateChanged` matters here.
    pub fn unit_event(&self, node: &str, event: &UnitEvent) -> Vec<DepAction> {
        match event {
            UnitEvent::StateChanged {
                unit,
                active,
                reason,
                ..
            } => self.target_changed(node, unit, active, reason),
            _ => Vec::new(),
        }
    }

    /// `UnitStateChanged(unit, active, sub, reason)` from a node: a target that really
    /// stopped ends the proxies that were started for it.
    // [impl->req~proxy.target-stopped~1]
    pub fn target_changed(
        &self,
        node: &str,
        unit: &str,
        active: &str,
        reason: &str,
    ) -> Vec<DepAction> {
        if reason != "real" || !matches!(active, "inactive" | "failed") {
            return Vec::new();
        }
        if !self.proxies.is_needed(node, unit) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (requester, path) in self.proxies.ready(node, unit) {
            log_fields!(
                Info,
                [("NODE", requester.as_str()), ("UNIT", unit)],
                "'{unit}' on node '{node}' is {active}: stopping the proxy on node '{requester}'"
            );
            out.push(tell(
                requester,
                path,
                "TargetStopped",
                Some(active.to_string()),
            ));
        }
        out
    }

    /// Units of `target` the manager watches for proxies.
    pub fn watched_units(&self, target: &str) -> BTreeSet<String> {
        self.proxies.watched_units(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: TargetCheck = TargetCheck {
        known: true,
        allowed: true,
    };

    fn start(target: &str, unit: &str) -> DepAction {
        DepAction::Start {
            target: target.into(),
            unit: unit.into(),
        }
    }

    fn member_of(a: &DepAction) -> &'static str {
        match a {
            DepAction::Tell { member, .. } => member,
            _ => "",
        }
    }

    // [utest->req~proxy.refcount~1]
    #[test]
    fn a_proxy_starts_its_anchor_and_the_last_one_releases_it() {
        let mut d = Dependencies::default();
        let first = d.proxy_new("a", "t", "db.service", "/p/1", OK);
        let watch = DepAction::Watch { target: "t".into() };
        assert_eq!(first, vec![watch, start("t", "db.service")]);
        d.proxy_new("b", "t", "db.service", "/p/2", OK);
        assert!(d.watched_units("t").contains("db.service"));
        assert_eq!(d.target_back("t"), vec![start("t", "db.service")]);
        let ready = d.started("t", "db.service");
        assert_eq!(ready.len(), 2);
        assert!(ready.iter().all(|a| member_of(a) == "Ready"));
        assert!(d.proxy_removed("a", "t", "db.service").is_empty());
        let released = d.requester_gone("b");
        let release = DepAction::Release {
            target: "t".into(),
            unit: "db.service".into(),
        };
        assert_eq!(released, vec![release]);
        assert!(d.target_back("t").is_empty());
    }

    // [utest->req~proxy.allow~1]
    #[test]
    fn refused_proxies_are_told_why() {
        let mut d = Dependencies::default();
        for (check, unit, text) in [
            (
                TargetCheck {
                    known: false,
                    allowed: true,
                },
                "db.service",
                "no node named 't' is configured",
            ),
            (
                TargetCheck {
                    known: true,
                    allowed: false,
                },
                "db.service",
                "may not depend on units of node 't'",
            ),
            (OK, "db.socket", ""),
        ] {
            let actions = d.proxy_new("a", "t", unit, "/p/1", check);
            let [DepAction::Tell { member, items, .. }] = actions.as_slice() else {
                panic!("one Error for {unit}: {actions:?}");
            };
            assert_eq!(*member, "Error");
            let [MessageItem::Str(why)] = items.as_slice() else {
                panic!("a reason");
            };
            assert!(why.contains(text) && !why.is_empty(), "{why}");
        }
        assert!(d.watched_units("t").is_empty());
    }

    #[test]
    fn a_target_that_really_stops_ends_started_proxies_only() {
        let mut d = Dependencies::default();
        d.proxy_new("a", "t", "db.service", "/p/1", OK);
        // Not started yet: nothing to stop.
        assert!(d
            .target_changed("t", "db.service", "failed", "real")
            .is_empty());
        d.started("t", "db.service");
        assert!(d
            .target_changed("t", "db.service", "failed", "virtual")
            .is_empty());
        assert!(d
            .target_changed("t", "db.service", "active", "real")
            .is_empty());
        let stopped = d.target_changed("t", "db.service", "inactive", "real");
        assert_eq!(
            stopped.iter().map(member_of).collect::<Vec<_>>(),
            ["TargetStopped"]
        );
    }

    #[test]
    fn a_failed_start_fails_waiting_proxies_unless_the_target_is_offline() {
        let mut d = Dependencies::default();
        d.proxy_new("a", "t", "db.service", "/p/1", OK);
        let offline = protocol::error::OFFLINE;
        assert!(d
            .start_failed("t", "db.service", offline, "gone")
            .is_empty());
        let failed = d.start_failed("t", "db.service", protocol::error::TIMEOUT, "slow");
        assert_eq!(failed.iter().map(member_of).collect::<Vec<_>>(), ["Error"]);
    }
}
