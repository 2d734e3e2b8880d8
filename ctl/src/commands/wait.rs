//! Waiting for signals from the manager until interrupted, a count or a deadline: the loop
//! shared by `monitor`, `status -w` and `metrics listen`.

use crate::cli::Bounds;
use crate::client::{manager_left, Client, CtlError};
use crate::signals::Interrupt;
use dbus::Message;
use std::time::{Duration, Instant};

/// How often the interrupt flag is looked at while no message comes.
const POLL: Duration = Duration::from_millis(200);

pub enum Next {
    Message(Message),
    /// Nothing came within the limit given to [`Waiter::next_within`].
    Quiet,
    /// SIGINT/SIGTERM, or the deadline passed: end normally.
    Stop,
}

pub struct Waiter<'a> {
    c: &'a Client,
    interrupt: Interrupt,
    deadline: Option<Instant>,
    timeout: Option<u64>,
}

impl<'a> Waiter<'a> {
    /// Also watches the manager's name, so a stopped (or absent) manager ends the wait with an
    /// error.
    pub fn new(c: &'a Client, timeout_secs: Option<u64>) -> Result<Waiter<'a>, CtlError> {
        let interrupt = Interrupt::install().map_err(|e| CtlError::failed(e.to_string()))?;
        c.watch_manager_owner()?;
        // After the watch, so a manager stopping from now on is seen either way.
        c.require_manager()?;
        Ok(Waiter {
            c,
            interrupt,
            deadline: timeout_secs.map(|s| Instant::now() + Duration::from_secs(s)),
            timeout: timeout_secs,
        })
    }

    /// The next message, or `Stop`.
    pub fn next(&self) -> Result<Next, CtlError> {
        self.next_within(None)
    }

    /// Like [`Waiter::next`], with `Quiet` when nothing came within `limit` (debouncing).
    pub fn next_within(&self, limit: Option<Duration>) -> Result<Next, CtlError> {
        let until = limit.map(|l| Instant::now() + l);
        loop {
            let now = Instant::now();
            if self.interrupt.raised() || self.deadline.is_some_and(|d| now >= d) {
                return Ok(Next::Stop);
            }
            if until.is_some_and(|u| now >= u) {
                return Ok(Next::Quiet);
            }
            let mut wait = POLL;
            for end in [self.deadline, until].into_iter().flatten() {
                wait = wait.min(end.saturating_duration_since(now));
            }
            if let Some(m) = self.c.next_message(wait)? {
                if manager_left(&m) {
                    return Err(CtlError::failed("the Hirte manager stopped"));
                }
                return Ok(Next::Message(m));
            }
        }
    }

    /// Whether the deadline (not an interrupt) ended the wait.
    fn timed_out(&self) -> bool {
        !self.interrupt.raised() && self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The error for `--count N --timeout S` when the deadline came first.
    pub fn count_not_reached(&self, bounds: &Bounds, seen: u64, what: &str) -> Option<CtlError> {
        match (bounds.count, self.timeout) {
            (Some(n), Some(s)) if seen < n && self.timed_out() => Some(CtlError::failed(format!(
                "only {seen} of {n} {what} within {s}s"
            ))),
            _ => None,
        }
    }
}
