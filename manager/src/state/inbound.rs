//! The gate in front of `Manager::on_frame`: budgets of what agents send unasked.

use super::Manager;
use crate::events::LinkId;
use dbus::Message;
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
