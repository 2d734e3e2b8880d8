//! What one agent may send unasked: a budget of bytes and messages per interval (sans-IO).
//!
//! Answers to the manager's calls are bounded by the calls (`MAX_PENDING_CALLS_PER_NODE`);
//! everything else an agent sends (signals, stray answers, calls) is charged here. An agent
//! over budget is cut off rather than let the core fall behind for every other node.

use hirte_common::bounds::{
    MAX_UNASKED_BYTES_PER_WINDOW, MAX_UNASKED_FRAMES_PER_WINDOW, UNASKED_WINDOW,
};
use std::time::Instant;

pub struct FloodBudget {
    since: Instant,
    bytes: usize,
    frames: usize,
}

impl FloodBudget {
    pub fn new(now: Instant) -> Self {
        FloodBudget {
            since: now,
            bytes: 0,
            frames: 0,
        }
    }

    /// Charges one message of `size` bytes; the reason to cut the agent off when over.
    // [impl->req~bounds.agent-flood~1]
    pub fn charge(&mut self, size: usize, now: Instant) -> Result<(), String> {
        if now.saturating_duration_since(self.since) >= UNASKED_WINDOW {
            *self = FloodBudget::new(now);
        }
        self.bytes = self.bytes.saturating_add(size);
        self.frames += 1;
        let window = UNASKED_WINDOW.as_secs_f64();
        if self.bytes > MAX_UNASKED_BYTES_PER_WINDOW {
            return Err(format!(
                "flooding: more than {MAX_UNASKED_BYTES_PER_WINDOW} bytes of unasked messages within {window}s"
            ));
        }
        if self.frames > MAX_UNASKED_FRAMES_PER_WINDOW {
            return Err(format!(
                "flooding: more than {MAX_UNASKED_FRAMES_PER_WINDOW} unasked messages within {window}s"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // [utest->req~bounds.agent-flood~1]
    #[test]
    fn bytes_and_messages_per_window_are_bounded() {
        let t0 = Instant::now();
        let mut b = FloodBudget::new(t0);
        let frame = 4 * 1024 * 1024 - 1024;
        for _ in 0..4 {
            b.charge(frame, t0).unwrap();
        }
        let e = b.charge(frame, t0).unwrap_err();
        assert!(e.contains("more than 16777216 bytes"), "{e}");
        // A new window starts afresh.
        let later = t0 + UNASKED_WINDOW;
        let mut b = FloodBudget::new(t0);
        for _ in 0..MAX_UNASKED_FRAMES_PER_WINDOW {
            b.charge(16, t0 + Duration::from_millis(999)).unwrap();
        }
        assert!(b
            .charge(16, t0)
            .unwrap_err()
            .contains("8192 unasked messages"));
        b.charge(16, later).unwrap();
    }
}
