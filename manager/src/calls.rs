//! Calls in flight to the agents, each with its deadline and what to do with its answer
//! (`K`, the caller's business). Bounded per node (`MAX_PENDING_CALLS_PER_NODE`).

use crate::events::SendError;
use hirte_common::bounds::{MAX_PENDING_CALLS_PER_NODE, RESERVED_CONTROL_CALLS_PER_NODE};
use hirte_common::frame::FrameError;
use hirte_common::protocol::error;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

/// Why a call to an agent was not sent.
#[derive(Debug)]
pub enum CallError {
    ShuttingDown,
    NoSuchNode,
    Offline {
        node: String,
    },
    /// The node's window of calls in flight is full (for this kind of call).
    WindowFull {
        node: String,
        in_flight: usize,
    },
    BadMember,
    TooLarge(FrameError),
    Congested {
        node: String,
    },
}

impl CallError {
    /// From a failed send on the node's link.
    pub fn from_send(e: SendError, node: &str) -> Self {
        let node = node.to_string();
        match e {
            SendError::TooLarge(e) => CallError::TooLarge(e),
            SendError::Full => CallError::Congested { node },
            SendError::Closed => CallError::Offline { node },
        }
    }

    /// The D-Bus error name the caller gets.
    pub fn error_name(&self) -> &'static str {
        match self {
            CallError::ShuttingDown
            | CallError::WindowFull { .. }
            | CallError::Congested { .. } => error::BUSY,
            CallError::NoSuchNode => error::NODE_NOT_FOUND,
            CallError::Offline { .. } => error::OFFLINE,
            CallError::BadMember | CallError::TooLarge(_) => error::INVALID_ARGS,
        }
    }

    pub fn to_method_err(&self) -> dbus_crossroads::MethodErr {
        dbus_crossroads::MethodErr::from((self.error_name(), self.to_string()))
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::ShuttingDown => write!(f, "the manager is shutting down"),
            CallError::NoSuchNode => write!(f, "no such node"),
            CallError::Offline { node } => write!(f, "node '{node}' is offline"),
            CallError::WindowFull { node, in_flight } => write!(
                f,
                "node '{node}' has {in_flight} calls in flight; try again later"
            ),
            CallError::BadMember => write!(f, "bad member"),
            CallError::TooLarge(e) => write!(f, "call too large: {e}"),
            CallError::Congested { node } => {
                write!(f, "link to node '{node}' is congested; try again later")
            }
        }
    }
}

/// One call waiting for its answer.
pub struct Call<K> {
    member: &'static str,
    deadline: Instant,
    kind: K,
}

impl<K> Call<K> {
    pub fn member(&self) -> &'static str {
        self.member
    }

    pub fn kind(&self) -> &K {
        &self.kind
    }

    pub fn into_kind(self) -> K {
        self.kind
    }
}

/// Calls in flight, per node (index in the node table) and serial.
pub struct CallTable<K> {
    calls: HashMap<usize, BTreeMap<u32, Call<K>>>,
}

impl<K> Default for CallTable<K> {
    fn default() -> Self {
        CallTable {
            calls: HashMap::new(),
        }
    }
}

/// Calls that only read (and the manager's own subscription calls): open to the read-only
/// operators, so they may not take the slots kept for calls that change state.
fn is_read_only(member: &str) -> bool {
    matches!(
        member,
        "ListUnits"
            | "GetUnitProperties"
            | "GetUnitProperty"
            | "ListUnitFiles"
            | "GetUnitFileState"
            | "GetDefaultTarget"
            | "Subscribe"
            | "Unsubscribe"
    )
}

impl<K> CallTable<K> {
    /// Calls to `node` awaiting their answer.
    pub fn in_flight(&self, node: usize) -> usize {
        self.calls.get(&node).map_or(0, BTreeMap::len)
    }

    /// Whether one more call `member` to `node` fits its window; read-only calls leave
    /// `RESERVED_CONTROL_CALLS_PER_NODE` slots free for calls that change state.
    // [impl->req~bounds.pending-calls~1]
    // [impl->req~bounds.control-reserve~1]
    pub fn has_room(&self, node: usize, member: &str) -> bool {
        let limit = if is_read_only(member) {
            MAX_PENDING_CALLS_PER_NODE - RESERVED_CONTROL_CALLS_PER_NODE
        } else {
            MAX_PENDING_CALLS_PER_NODE
        };
        self.in_flight(node) < limit
    }

    /// Records a call sent with `serial`, answered by `deadline`.
    pub fn insert(
        &mut self,
        node: usize,
        serial: u32,
        member: &'static str,
        deadline: Instant,
        kind: K,
    ) {
        let call = Call {
            member,
            deadline,
            kind,
        };
        self.calls.entry(node).or_default().insert(serial, call);
    }

    /// Whether an answer with `serial` from `node` has a call waiting for it.
    pub fn is_waiting(&self, node: usize, serial: u32) -> bool {
        self.calls
            .get(&node)
            .is_some_and(|c| c.contains_key(&serial))
    }

    /// The call an answer with `serial` from `node` belongs to.
    pub fn answer(&mut self, node: usize, serial: u32) -> Option<Call<K>> {
        let calls = self.calls.get_mut(&node)?;
        let call = calls.remove(&serial);
        if calls.is_empty() {
            self.calls.remove(&node);
        }
        call
    }

    /// Every call to a node that went away, in the order they were sent.
    pub fn drop_node(&mut self, node: usize) -> Vec<Call<K>> {
        self.calls
            .remove(&node)
            .map(|c| c.into_values().collect())
            .unwrap_or_default()
    }

    /// Calls whose deadline has passed, removed, by node.
    // [impl->req~manager.call-timeout~1]
    pub fn expired(&mut self, now: Instant) -> Vec<(usize, Call<K>)> {
        let mut out = Vec::new();
        for (node, calls) in &mut self.calls {
            let due: Vec<u32> = calls
                .iter()
                .filter(|(_, c)| c.deadline <= now)
                .map(|(s, _)| *s)
                .collect();
            for s in due {
                if let Some(c) = calls.remove(&s) {
                    out.push((*node, c));
                }
            }
        }
        self.calls.retain(|_, c| !c.is_empty());
        out.sort_by_key(|(node, _)| *node);
        out
    }

    /// Remaining time until the earliest deadline.
    pub fn next_deadline(&self, now: Instant) -> Option<Duration> {
        self.calls
            .values()
            .flat_map(BTreeMap::values)
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.values().all(BTreeMap::is_empty)
    }

    /// What every call in flight waits for, in no particular order.
    pub fn kinds(&self) -> impl Iterator<Item = &K> {
        self.calls
            .values()
            .flat_map(BTreeMap::values)
            .map(|c| &c.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_per_node_is_bounded() {
        let mut t = CallTable::default();
        let now = Instant::now();
        for s in 0..MAX_PENDING_CALLS_PER_NODE as u32 {
            assert!(t.has_room(0, "X"));
            t.insert(0, s, "X", now, ());
        }
        assert!(!t.has_room(0, "X"));
        assert!(t.has_room(1, "X"));
        assert!(t.answer(0, 0).is_some());
        assert!(t.has_room(0, "X"));
    }

    #[test]
    fn deadlines_expire_calls_and_give_the_next_timeout() {
        let mut t = CallTable::default();
        let now = Instant::now();
        t.insert(0, 1, "A", now + Duration::from_secs(1), 'a');
        t.insert(1, 1, "B", now + Duration::from_secs(5), 'b');
        assert_eq!(t.next_deadline(now), Some(Duration::from_secs(1)));
        assert!(t.expired(now).is_empty());
        let gone = t.expired(now + Duration::from_secs(2));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, 0);
        assert_eq!(gone[0].1.member(), "A");
        assert_eq!(t.next_deadline(now), Some(Duration::from_secs(5)));
        assert!(t.answer(0, 1).is_none());
        assert_eq!(t.drop_node(1).pop().map(Call::into_kind), Some('b'));
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(now), None);
    }

    #[test]
    fn errors_name_the_node_and_map_to_dbus_names() {
        let e = CallError::from_send(SendError::Full, "n1");
        assert_eq!(e.error_name(), error::BUSY);
        assert_eq!(
            e.to_string(),
            "link to node 'n1' is congested; try again later"
        );
        let e = CallError::from_send(SendError::Closed, "n1");
        assert_eq!(e.error_name(), error::OFFLINE);
        assert_eq!(e.to_string(), "node 'n1' is offline");
        assert_eq!(CallError::NoSuchNode.error_name(), error::NODE_NOT_FOUND);
    }
}
