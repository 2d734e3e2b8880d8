//! The per-peer rate limit of records a peer can trigger at will (`log_peer!`).

use super::{emit, enabled, Level};
use std::fmt;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Records one peer may log per window; the rest are counted and summarised.
pub const PEER_BURST: u32 = 5;
/// The window of [`PEER_BURST`].
pub const PEER_WINDOW: Duration = Duration::from_secs(10);
/// Peers the rate limiter tracks at once; a new one replaces the longest-quiet entry.
pub const PEER_SLOTS: usize = 64;

/// One peer's count in the current window.
#[derive(Debug, Clone)]
struct PeerCount {
    peer: String,
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Per-peer rate limit of the records a peer can trigger (fixed number of slots).
// [impl->req~log.peer-rate-limit~1]
#[derive(Debug, Default)]
pub struct PeerLimiter {
    slots: Vec<PeerCount>,
}

/// What the limiter decided for one record.
#[derive(Debug, PartialEq, Eq)]
pub struct Admit {
    /// Whether to log this record.
    pub log: bool,
    /// Summaries to log first: `(peer, suppressed)` of windows that ended.
    pub summaries: Vec<(String, u64)>,
}

impl PeerLimiter {
    /// Peers tracked now (at most `PEER_SLOTS`).
    pub fn tracked(&self) -> usize {
        self.slots.len()
    }

    pub fn admit(&mut self, peer: &str, now: Instant) -> Admit {
        let mut summaries = Vec::new();
        // Windows that ended: their suppressed counts are reported, the slot reused.
        for s in self.slots.iter_mut() {
            if now.duration_since(s.window_start) >= PEER_WINDOW {
                if s.suppressed > 0 {
                    summaries.push((s.peer.clone(), s.suppressed));
                }
                s.window_start = now;
                s.logged = 0;
                s.suppressed = 0;
            }
        }
        let slot = match self.slots.iter().position(|s| s.peer == peer) {
            Some(i) => self.slots.get_mut(i),
            None => {
                let fresh = PeerCount {
                    peer: peer.to_string(),
                    window_start: now,
                    logged: 0,
                    suppressed: 0,
                };
                if self.slots.len() < PEER_SLOTS {
                    self.slots.push(fresh);
                    self.slots.last_mut()
                } else {
                    // Replace the entry whose window started first; report what it held.
                    let oldest = self.slots.iter_mut().min_by_key(|s| s.window_start);
                    oldest.map(|s| {
                        if s.suppressed > 0 {
                            summaries.push((s.peer.clone(), s.suppressed));
                        }
                        *s = fresh;
                        s
                    })
                }
            }
        };
        let log = match slot {
            Some(s) if s.logged < PEER_BURST => {
                s.logged += 1;
                true
            }
            Some(s) => {
                s.suppressed += 1;
                false
            }
            None => true,
        };
        Admit { log, summaries }
    }
}

static PEERS: OnceLock<Mutex<PeerLimiter>> = OnceLock::new();

/// Like [`emit`] for a record `peer` can trigger at will: rate-limited per peer. `fields`
/// are kept on the record (a refused node's `NODE`); job and audit records never come here.
pub fn emit_peer(level: Level, peer: &str, fields: &[(&str, &str)], args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let admit = PEERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .admit(peer, Instant::now());
    for (p, n) in admit.summaries {
        emit(
            level,
            &[],
            format_args!("{n} similar messages from {p} suppressed"),
        );
    }
    if admit.log {
        emit(level, fields, args);
    }
}
