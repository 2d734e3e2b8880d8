//! Cross-node dependencies: which proxies the requesting nodes hold, and how many of them
//! need each (target node, unit). Pure bookkeeping; `dependencies.rs` decides what follows.

use hirte_common::bounds::MAX_PROXIES_PER_NODE;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Why a proxy was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    TooMany { node: String },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::TooMany { node } => write!(
                f,
                "node '{node}' already has {MAX_PROXIES_PER_NODE} proxies"
            ),
        }
    }
}

/// (requesting node, target node, unit)
type Key = (String, String, String);

struct Proxy {
    /// The agent's object for this proxy (where `Ready`/`Error`/`TargetStopped` go).
    path: String,
    /// `Ready` was sent: from now on the target's stop is reported.
    ready: bool,
}

/// A proxy to tell something: (requesting node, its object path).
pub type Recipient = (String, String);

#[derive(Default)]
pub struct Proxies {
    proxies: BTreeMap<Key, Proxy>,
    /// (target node, unit) -> number of proxies that need it.
    deps: BTreeMap<(String, String), u32>,
}

impl Proxies {
    /// Records a proxy. A proxy for the same key replaces the old one (the agent replaced
    /// it), keeping the count. `Ok(true)`: the count for (target, unit) went up.
    // [impl->req~proxy.refcount~1]
    pub fn add(
        &mut self,
        requester: &str,
        target: &str,
        unit: &str,
        path: &str,
    ) -> Result<bool, ProxyError> {
        let key = (requester.to_string(), target.to_string(), unit.to_string());
        let fresh = Proxy {
            path: path.to_string(),
            ready: false,
        };
        if let Some(p) = self.proxies.get_mut(&key) {
            *p = fresh;
            return Ok(false);
        }
        // [impl->req~proxy.allow~1]
        if self.of_requester(requester).count() >= MAX_PROXIES_PER_NODE {
            return Err(ProxyError::TooMany {
                node: requester.to_string(),
            });
        }
        self.proxies.insert(key, fresh);
        *self
            .deps
            .entry((target.to_string(), unit.to_string()))
            .or_insert(0) += 1;
        Ok(true)
    }

    fn of_requester<'a>(&'a self, requester: &'a str) -> impl Iterator<Item = &'a Key> + 'a {
        self.proxies.keys().filter(move |(r, _, _)| r == requester)
    }

    /// Forgets a proxy. `Some(true)`: nothing needs (target, unit) any more.
    pub fn remove(&mut self, requester: &str, target: &str, unit: &str) -> Option<bool> {
        let key = (requester.to_string(), target.to_string(), unit.to_string());
        self.proxies.remove(&key)?;
        let dep = (target.to_string(), unit.to_string());
        let count = self.deps.get_mut(&dep)?;
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.deps.remove(&dep);
            return Some(true);
        }
        Some(false)
    }

    /// Forgets every proxy of a node that went offline; returns the (target, unit) pairs
    /// nothing needs any more.
    pub fn remove_requester(&mut self, requester: &str) -> Vec<(String, String)> {
        let keys: Vec<Key> = self.of_requester(requester).cloned().collect();
        let mut released = Vec::new();
        for (r, t, u) in keys {
            if self.remove(&r, &t, &u) == Some(true) {
                released.push((t, u));
            }
        }
        released
    }

    /// Units of `target` some proxy needs (started again when `target` registers).
    pub fn needed_on(&self, target: &str) -> Vec<String> {
        self.deps
            .keys()
            .filter(|(t, _)| t == target)
            .map(|(_, u)| u.clone())
            .collect()
    }

    /// Whether any proxy needs (target, unit).
    pub fn is_needed(&self, target: &str, unit: &str) -> bool {
        self.deps
            .contains_key(&(target.to_string(), unit.to_string()))
    }

    /// Units of `target` the manager watches for proxies.
    pub fn watched_units(&self, target: &str) -> BTreeSet<String> {
        self.needed_on(target).into_iter().collect()
    }

    /// The anchor for (target, unit) is up: every waiting proxy becomes ready.
    pub fn take_waiting(&mut self, target: &str, unit: &str) -> Vec<Recipient> {
        let mut out = Vec::new();
        for ((r, t, u), p) in &mut self.proxies {
            if t == target && u == unit && !p.ready {
                p.ready = true;
                out.push((r.clone(), p.path.clone()));
            }
        }
        out
    }

    /// The proxies of (target, unit) still waiting for it (told when its start fails).
    pub fn waiting(&self, target: &str, unit: &str) -> Vec<Recipient> {
        self.select(target, unit, false)
    }

    /// The started proxies of (target, unit) (told when it stops).
    pub fn ready(&self, target: &str, unit: &str) -> Vec<Recipient> {
        self.select(target, unit, true)
    }

    fn select(&self, target: &str, unit: &str, ready: bool) -> Vec<Recipient> {
        self.proxies
            .iter()
            .filter(|((_, t, u), p)| t == target && u == unit && p.ready == ready)
            .map(|((r, _, _), p)| (r.clone(), p.path.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~proxy.refcount~1]
    #[test]
    fn counts_proxies_per_target_unit() {
        let mut p = Proxies::default();
        assert_eq!(p.add("a", "t", "db.service", "/p/1"), Ok(true));
        assert_eq!(p.add("b", "t", "db.service", "/p/7"), Ok(true));
        // The same proxy again (agent replaced it): counted once.
        assert_eq!(p.add("a", "t", "db.service", "/p/2"), Ok(false));
        assert_eq!(p.needed_on("t"), vec!["db.service".to_string()]);
        assert_eq!(
            p.take_waiting("t", "db.service"),
            vec![("a".into(), "/p/2".into()), ("b".into(), "/p/7".into())]
        );
        assert!(p.take_waiting("t", "db.service").is_empty());
        assert_eq!(p.ready("t", "db.service").len(), 2);
        assert_eq!(p.remove("a", "t", "db.service"), Some(false));
        assert_eq!(p.remove("a", "t", "db.service"), None);
        assert!(p.is_needed("t", "db.service"));
        assert_eq!(
            p.remove_requester("b"),
            vec![("t".to_string(), "db.service".to_string())]
        );
        assert!(!p.is_needed("t", "db.service"));
        assert!(p.needed_on("t").is_empty());
    }

    // [utest->req~proxy.allow~1]
    #[test]
    fn proxies_per_node_are_bounded() {
        let mut p = Proxies::default();
        for i in 0..MAX_PROXIES_PER_NODE {
            p.add("a", "t", &format!("u{i}.service"), "/p").unwrap();
        }
        assert!(matches!(
            p.add("a", "t", "one-more.service", "/p"),
            Err(ProxyError::TooMany { .. })
        ));
        // Other nodes are not affected, and replacing an existing proxy still works.
        assert_eq!(p.add("b", "t", "one-more.service", "/p"), Ok(true));
        assert_eq!(p.add("a", "t", "u0.service", "/q"), Ok(false));
    }
}
