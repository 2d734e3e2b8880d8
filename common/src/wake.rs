//! Waking a thread that sleeps in `poll()` with no timer: an eventfd anyone may ring, and a
//! thread that turns signals into rings, so that the flags the signal handlers set are seen
//! at once instead of on a periodic tick.

use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::{AsFd, BorrowedFd};

/// An eventfd for one sleeping thread: `wake` from anywhere, `clear` after `poll()` saw it.
pub struct Waker(EventFd);

impl Waker {
    pub fn new() -> nix::Result<Self> {
        EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).map(Waker)
    }

    pub fn wake(&self) {
        // A failed write can only mean the counter is saturated: already woken.
        let _ = self.0.write(1);
    }

    pub fn clear(&self) {
        let _ = self.0.read();
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// The signals both daemons act on: SIGTERM and SIGINT stop, SIGHUP reloads.
const DAEMON_SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGHUP,
];

/// Starts the thread that calls `wake` after each SIGTERM, SIGINT or SIGHUP. Register the
/// signals' flags (`signal_hook::flag::register`) before: handlers run in registration
/// order, so a woken thread finds its flag already set.
// [impl->req~manager.idle-no-wakeups~1]
// [impl->req~agent.core-idle-no-wakeups~1]
pub fn wake_on_signals(
    wake: impl Fn() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    wake_on(&DAEMON_SIGNALS, wake)
}

/// The thread sleeps in `read()` on signal-hook's self-pipe and wakes for nothing else.
fn wake_on(
    signals: &[i32],
    wake: impl Fn() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut signals = signal_hook::iterator::Signals::new(signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                wake();
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::poll_readable;
    use std::time::Duration;

    #[test]
    fn a_rung_waker_is_readable_until_cleared() {
        let w = Waker::new().unwrap();
        assert_eq!(poll_readable([w.fd()], Duration::ZERO).unwrap(), [false]);
        w.wake();
        w.wake();
        assert_eq!(poll_readable([w.fd()], Duration::ZERO).unwrap(), [true]);
        w.clear();
        assert_eq!(poll_readable([w.fd()], Duration::ZERO).unwrap(), [false]);
    }

    // [utest->req~manager.idle-no-wakeups~1]
    // [utest->req~agent.core-idle-no-wakeups~1]
    #[test]
    fn a_signal_wakes_the_sleeping_thread() {
        use std::sync::Arc;
        let w = Arc::new(Waker::new().unwrap());
        let w2 = w.clone();
        wake_on(&[signal_hook::consts::SIGUSR2], move || w2.wake()).unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR2).unwrap();
        assert_eq!(
            poll_readable([w.fd()], Duration::from_secs(5)).unwrap(),
            [true]
        );
    }
}
