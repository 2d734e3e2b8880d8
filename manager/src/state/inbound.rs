//! The gate in front of `Manager::on_frame`: budgets of what agents send unasked; the log of
//! refused registrations, which a peer can repeat at will.

use super::Manager;
use crate::events::LinkId;
use crate::nodes::RegisterError;
use dbus::Message;
use hirte_common::log_peer_fields;
use hirte_common::stream::Peer;
use std::time::Instant;

impl Manager {
    /// Whether a frame goes on to `on_frame`; an agent over its unasked budget is cut off
    /// here (its link closed, the node offline, its calls failed).
    // [impl->req~bounds.agent-flood~1]
    pub fn admit(&mut self, link: LinkId, msg: &Message, size: usize) -> bool {
        match self.agents.admit(link, msg, size, Instant::now()) {
            Ok(go_on) => go_on,
            Err((idx, reason)) => {
                self.node_offline(idx, &reason);
                false
            }
        }
    }
}

/// A Register the core refused: keyed by the peer's address, so one peer retrying (or
/// flooding) is rate-limited while other peers' refusals and every job record still show.
// [impl->req~log.peer-rate-limit~1]
pub(super) fn log_refused(name: &str, peer: Peer, e: &RegisterError) {
    log_peer_fields!(
        Warn,
        peer,
        [("NODE", name)],
        "Refused agent '{name}' from {peer}: {e}"
    );
}
