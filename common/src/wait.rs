//! Waiting on several fds at once with a bounded timeout: the one blocking primitive of every
//! event loop in Hirte-rs.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::BorrowedFd;
use std::time::{Duration, SystemTime};

/// Waits until any fd is readable (or hung up) or `timeout` passes; says which are ready.
/// An interrupted wait (EINTR) reports nothing ready, so callers simply loop.
pub fn poll_readable<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Duration,
) -> nix::Result<[bool; N]> {
    poll_readable_until(fds, Some(timeout))
}

/// Like [`poll_readable`]; `None` waits for the fds alone, with no timer. For a loop whose
/// every reason to wake is an fd (an eventfd rung by whoever has work or a flag for it), so
/// that an idle thread costs no wake-ups. A timeout is rounded up to whole milliseconds
/// (a deadline is never woken for early) and capped at `i32::MAX` ms (24.8 days).
pub fn poll_readable_until<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Option<Duration>,
) -> nix::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| PollFd::new(fd, PollFlags::POLLIN));
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            PollTimeout::try_from(i32::try_from(ms).unwrap_or(i32::MAX)).unwrap_or(PollTimeout::MAX)
        }
    };
    match poll(&mut pfds, timeout) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok([false; N]),
        Err(e) => return Err(e),
    }
    Ok(pfds.map(|f| {
        f.revents().is_some_and(|r| {
            r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
        })
    }))
}

/// The sooner of two optional timeouts (`None`: no timer).
pub fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Wall-clock time in microseconds since the epoch, as D-Bus timestamps (`t`) carry it.
pub fn now_realtime_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// CLOCK_MONOTONIC in microseconds, comparable with systemd's `...Monotonic` properties.
pub fn now_monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000
        })
        .unwrap_or(0)
}

/// Checks `done` every few milliseconds until it holds or `timeout` has passed; says whether
/// it held. For the bounded joins at exit (`JoinHandle::is_finished`, a count of live threads).
pub fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::BoundedQueue;

    #[test]
    fn reports_which_fd_is_ready() {
        let a: BoundedQueue<u8> = BoundedQueue::new(1).unwrap();
        let b: BoundedQueue<u8> = BoundedQueue::new(1).unwrap();
        b.try_push(1).unwrap();
        let r = poll_readable([a.wake_fd(), b.wake_fd()], Duration::from_millis(10)).unwrap();
        assert_eq!(r, [false, true]);
        let r = poll_readable([a.wake_fd()], Duration::from_millis(1)).unwrap();
        assert_eq!(r, [false]);
        assert!(now_monotonic_us() > 0 && now_realtime_us() > 0);
        let (one, two) = (Some(Duration::from_secs(1)), Some(Duration::from_secs(2)));
        assert_eq!(earliest(one, two), one);
        assert_eq!(earliest(None, two), two);
        assert_eq!(earliest(None, None), None);
    }
}
