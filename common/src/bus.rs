//! Writing to a D-Bus connection without blocking. libdbus' `flush()` waits, with no
//! timeout, until the bus has read everything; a bus that stops reading would hang the
//! caller's whole loop. Here writes go out as far as the socket takes them, and a bus that
//! takes nothing for `BUS_WRITE_TIMEOUT` becomes a defined outcome: an error to the caller.

use crate::bounds::BUS_WRITE_TIMEOUT;
use crate::timespan::format_timespan;
use dbus::blocking::Connection;
use std::time::{Duration, Instant};

/// Non-blocking write rounds per call: each round writes what the socket accepts.
const WRITE_ROUNDS: usize = 16;

/// How soon a loop with unsent messages should come back to write more.
pub const WRITE_RETRY: Duration = Duration::from_millis(10);

/// Why the bus can no longer be written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusError {
    /// libdbus reports the connection closed.
    Closed,
    /// The bus took nothing for this long.
    Stalled(Duration),
}

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusError::Closed => f.write_str("connection to the bus closed"),
            BusError::Stalled(d) => {
                write!(
                    f,
                    "the bus has not taken our messages for {}",
                    format_timespan(*d)
                )
            }
        }
    }
}

impl std::error::Error for BusError {}

/// Tracks how long messages have been waiting for the bus.
#[derive(Default)]
pub struct BusWriter {
    stalled_since: Option<Instant>,
}

impl BusWriter {
    /// Writes what the bus takes now. `Ok(true)`: messages are still waiting (call again
    /// within `WRITE_RETRY`); `Err`: the connection closed or the bus took nothing for
    /// `BUS_WRITE_TIMEOUT`.
    // [impl->req~bounds.bus-write~1]
    pub fn pump(&mut self, conn: &Connection) -> Result<bool, BusError> {
        let channel = conn.channel();
        for _ in 0..WRITE_ROUNDS {
            if !channel.has_messages_to_send() {
                break;
            }
            channel
                .read_write(Some(Duration::ZERO))
                .map_err(|()| BusError::Closed)?;
        }
        let waiting = channel.has_messages_to_send();
        self.check(waiting, Instant::now())?;
        Ok(waiting)
    }

    /// The timing decision alone, so that it can be tested without a bus.
    fn check(&mut self, waiting: bool, now: Instant) -> Result<(), BusError> {
        if !waiting {
            self.stalled_since = None;
            return Ok(());
        }
        let since = *self.stalled_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= BUS_WRITE_TIMEOUT {
            return Err(BusError::Stalled(BUS_WRITE_TIMEOUT));
        }
        Ok(())
    }
}

/// Sends what is waiting for at most `limit` (at exit: the last answers should go out, but
/// a stalled bus must not keep the process from ending).
pub fn flush_within(conn: &Connection, limit: Duration) {
    let until = Instant::now() + limit;
    let channel = conn.channel();
    while channel.has_messages_to_send() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || channel.read_write(Some(left.min(WRITE_RETRY))).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~bounds.bus-write~1]
    #[test]
    fn waiting_messages_are_a_stall_only_after_the_timeout() {
        let t0 = Instant::now();
        let mut w = BusWriter::default();
        assert!(w.check(true, t0).is_ok());
        assert!(w.check(true, t0 + BUS_WRITE_TIMEOUT / 2).is_ok());
        // Everything went out: the clock starts again.
        assert!(w.check(false, t0 + BUS_WRITE_TIMEOUT / 2).is_ok());
        assert!(w.check(true, t0 + BUS_WRITE_TIMEOUT).is_ok());
        let e = w.check(true, t0 + BUS_WRITE_TIMEOUT * 2).unwrap_err();
        assert_eq!(e.to_string(), "the bus has not taken our messages for 10s");
    }
}
