//! The proxies this node's units asked for (`hirte-proxy@NODE_UNIT.service` calling
//! `CreateProxy`): a bounded table with deadlines, no I/O. The core answers the callers and
//! talks to the manager; `T` is the waiting call (a D-Bus message in the agent).

use hirte_common::bounds::{MAX_AGENT_PROXIES, PROXY_START_TIMEOUT};
use hirte_common::protocol::PROXY_PATH_PREFIX;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

/// `create` found the table full (`MAX_AGENT_PROXIES`).
#[derive(Debug)]
pub struct TableFull;

impl fmt::Display for TableFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{MAX_AGENT_PROXIES} proxies exist on this node already")
    }
}

pub struct AgentProxy<T> {
    pub local_service: String,
    pub node: String,
    pub unit: String,
    /// The `CreateProxy` call still waiting for its answer, and until when.
    pub waiting: Option<(T, Instant)>,
    /// `ProxyNew` went to the manager on the current link.
    pub announced: bool,
}

impl<T> AgentProxy<T> {
    pub fn path(id: u32) -> String {
        format!("{PROXY_PATH_PREFIX}/{id}")
    }
}

/// What `create` did with an older proxy for the same target.
pub struct Created<T> {
    pub id: u32,
    pub replaced: Option<AgentProxy<T>>,
}

pub struct ProxyTable<T> {
    entries: BTreeMap<u32, AgentProxy<T>>,
    last_id: u32,
}

impl<T> Default for ProxyTable<T> {
    fn default() -> Self {
        ProxyTable {
            entries: BTreeMap::new(),
            last_id: 0,
        }
    }
}

impl<T> ProxyTable<T> {
    /// Records a proxy waiting for its target; `Err` when the table is full.
    // [impl->req~proxy.agent-api~1]
    pub fn create(
        &mut self,
        local_service: &str,
        node: &str,
        unit: &str,
        call: T,
        now: Instant,
    ) -> Result<Created<T>, TableFull> {
        let replaced = self
            .find(node, unit)
            .and_then(|id| self.entries.remove(&id));
        if replaced.is_none() && self.entries.len() >= MAX_AGENT_PROXIES {
            return Err(TableFull);
        }
        let waiting = Some((call, now + PROXY_START_TIMEOUT));
        let id = self.insert(local_service, node, unit, waiting);
        Ok(Created { id, replaced })
    }

    /// Records a proxy whose service is already active (found at start-up: an earlier
    /// agent process answered its caller). `None` when it exists or the table is full.
    pub fn adopt(&mut self, local_service: &str, node: &str, unit: &str) -> Option<u32> {
        if self.find(node, unit).is_some() || self.entries.len() >= MAX_AGENT_PROXIES {
            return None;
        }
        Some(self.insert(local_service, node, unit, None))
    }

    fn insert(
        &mut self,
        local_service: &str,
        node: &str,
        unit: &str,
        waiting: Option<(T, Instant)>,
    ) -> u32 {
        let id = self.next_id();
        self.entries.insert(
            id,
            AgentProxy {
                local_service: local_service.to_string(),
                node: node.to_string(),
                unit: unit.to_string(),
                waiting,
                announced: false,
            },
        );
        id
    }

    /// Ids wrap and skip ids in use (the table is bounded, so one is always free).
    fn next_id(&mut self) -> u32 {
        loop {
            self.last_id = self.last_id.checked_add(1).unwrap_or(1);
            if !self.entries.contains_key(&self.last_id) {
                return self.last_id;
            }
        }
    }

    pub fn find(&self, node: &str, unit: &str) -> Option<u32> {
        self.entries
            .iter()
            .find(|(_, p)| p.node == node && p.unit == unit)
            .map(|(id, _)| *id)
    }

    /// The id of a proxy object path the manager named.
    pub fn id_of_path(&self, path: &str) -> Option<u32> {
        let id: u32 = path
            .strip_prefix(PROXY_PATH_PREFIX)?
            .strip_prefix('/')?
            .parse()
            .ok()?;
        self.entries.contains_key(&id).then_some(id)
    }

    pub fn get(&self, id: u32) -> Option<&AgentProxy<T>> {
        self.entries.get(&id)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut AgentProxy<T>> {
        self.entries.get_mut(&id)
    }

    pub fn remove(&mut self, id: u32) -> Option<AgentProxy<T>> {
        self.entries.remove(&id)
    }

    /// The earliest deadline of a caller still waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|p| p.waiting.as_ref().map(|(_, d)| *d))
            .min()
    }

    /// Removes and returns the proxies whose caller waited past its deadline.
    pub fn take_expired(&mut self, now: Instant) -> Vec<AgentProxy<T>> {
        let ids: Vec<u32> = self
            .entries
            .iter()
            .filter(|(_, p)| p.waiting.as_ref().is_some_and(|(_, d)| *d <= now))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.entries.remove(&id))
            .collect()
    }

    /// Every proxy, for announcing them to a new manager link.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut AgentProxy<T>)> {
        self.entries.iter_mut().map(|(id, p)| (*id, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // [utest->req~proxy.agent-api~1]
    #[test]
    fn table_is_bounded_and_replaces_per_target() {
        let now = Instant::now();
        let mut t = ProxyTable::default();
        let first = t.create("p@a_x.service", "a", "x.service", 1, now).unwrap();
        assert!(first.replaced.is_none());
        let again = t.create("p@a_x.service", "a", "x.service", 2, now).unwrap();
        assert_eq!(again.replaced.and_then(|p| p.waiting).map(|w| w.0), Some(1));
        assert_ne!(first.id, again.id);
        for i in 1..MAX_AGENT_PROXIES {
            t.create("p", "a", &format!("u{i}.service"), 0, now)
                .unwrap();
        }
        assert!(t.create("p", "a", "one-more.service", 0, now).is_err());
        // Replacing needs no room.
        assert!(t.create("p", "a", "x.service", 3, now).is_ok());
        let path = AgentProxy::<u32>::path(t.find("a", "x.service").unwrap());
        assert!(t.id_of_path(&path).is_some());
        assert!(t
            .id_of_path("/org/containers/hirte/internal/proxy/999999")
            .is_none());
        assert!(t.id_of_path("/elsewhere/1").is_none());
        assert!(t.adopt("p", "a", "x.service").is_none());
    }

    // [utest->req~proxy.agent-api~1]
    #[test]
    fn waiting_callers_expire_after_the_start_timeout() {
        let now = Instant::now();
        let mut t = ProxyTable::default();
        let a = t.create("p", "a", "x.service", 1, now).unwrap().id;
        t.create("p", "a", "y.service", 2, now).unwrap();
        // x got its answer: no deadline any more.
        if let Some(p) = t.get_mut(a) {
            p.waiting = None;
        }
        assert!(t.take_expired(now + Duration::from_secs(1)).is_empty());
        let gone = t.take_expired(now + PROXY_START_TIMEOUT);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone.first().map(|p| p.unit.as_str()), Some("y.service"));
        assert!(t.find("a", "x.service").is_some());
    }
}
