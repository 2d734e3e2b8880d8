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
    let mut pfds = fds.map(|fd| PollFd::new(fd, PollFlags::POLLIN));
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut pfds, PollTimeout::from(ms)) {
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
    }
}
