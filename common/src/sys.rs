//! The one place in Hirte-rs with `unsafe`: borrowing the socket fd of a libdbus connection so
//! a `poll()` loop can wait on it next to our own eventfds, taking the socket systemd passed,
//! and setting glibc's allocator up for a daemon of many mostly idle threads.
#![allow(unsafe_code)]

use dbus::blocking::Connection;
use dbus::channel::{BusType, Channel};
use std::os::fd::BorrowedFd;

/// Connects to a bus with fd watching enabled, as [`wait_for_bus`] requires.
pub fn open_bus(bus: BusType) -> Result<Connection, dbus::Error> {
    let mut channel = Channel::get_private(bus)?;
    channel.set_watch_enabled(true);
    Ok(Connection::from(channel))
}

/// What [`wait_for_bus`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusWait {
    /// The bus, or `other`, may have something (or the timeout passed): `[bus, other]`.
    Ready([bool; 2]),
    /// libdbus has disconnected the connection (and closed its socket): nothing to wait on.
    Disconnected,
}

/// Waits until the connection's socket or `other` is readable, or `timeout` passes (`None`:
/// no timer, for a loop woken only through its fds). The connection must come from
/// [`open_bus`]. The socket's fd never leaves this function: libdbus closes it when
/// the connection disconnects, inside any libdbus call on it, long before the `Connection`
/// is dropped, so a borrow kept across such a call could name a closed or reused fd.
// [impl->req~common.bus-fd~1]
pub fn wait_for_bus(
    conn: &Connection,
    other: BorrowedFd<'_>,
    timeout: Option<std::time::Duration>,
) -> nix::Result<BusWait> {
    if !conn.channel().is_connected() {
        return Ok(BusWait::Disconnected);
    }
    let raw = conn.channel().watch().fd;
    // SAFETY: `raw` is the socket libdbus opened for `conn`; libdbus closes it only when the
    // connection disconnects (which happens inside a libdbus call on `conn`) or is freed.
    // It was connected just above, `Connection` is not `Sync` so no other thread can make
    // a libdbus call on it, and this thread makes none until the borrow ends with this
    // function: the fd is open for the whole borrow.
    let bus = unsafe { BorrowedFd::borrow_raw(raw) };
    crate::wait::poll_readable_until([bus, other], timeout).map(BusWait::Ready)
}

/// libdbus aborts the process on a failed argument check unless told otherwise. A peer must
/// never be able to crash a daemon, so a failed check becomes an error return (and at worst a
/// contained panic in the dbus crate). Call first thing in `main`, before threads exist.
pub fn disable_libdbus_abort() {
    std::env::set_var("DBUS_FATAL_WARNINGS", "0");
}

/// First fd systemd passes with socket activation (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// The listening socket systemd passed (`hirte.socket`), if this process was socket-activated.
// [impl->req~install.units~1]
// [impl->req~manager.socket-activation~1]
pub fn activated_listener() -> Option<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !pid_ok || count < 1 {
        return None;
    }
    // Children (Exec units are started by systemd, not us, but be safe) must not inherit these.
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    // SAFETY: with LISTEN_PID naming this process and LISTEN_FDS >= 1, systemd guarantees fd 3
    // is an open socket handed to us alone; nothing else in this process has claimed it, and
    // this function clears the variables so it can be taken only once.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(LISTEN_FDS_START) };
    Some(listener)
}

/// Largest allocation served from the heap; larger ones get their own mapping, returned to
/// the kernel when freed (a reply's buffer, a large frame).
const MMAP_THRESHOLD: i32 = 16 * 1024;
/// Free memory at the top of the heap above this goes back to the kernel.
const TRIM_THRESHOLD: i32 = 128 * 1024;

/// Keeps the daemon's resident memory near what it holds. glibc gives every thread that
/// allocates an arena of its own (up to 8 per core), each keeping the high-water mark of what
/// was allocated in it, and raises its mmap threshold after every large free (so the next
/// large buffer lands in a heap and stays resident). One arena, and fixed thresholds, stop
/// both. Call first thing in `main`, before threads exist. Does nothing with other C
/// libraries.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (param, value) in [
        (nix::libc::M_ARENA_MAX, 1),
        (nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (nix::libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ] {
        // SAFETY: mallopt only sets allocator parameters (it returns 0 for a value it
        // refuses, which leaves the default in force); it takes no pointers and is called
        // before any other thread exists.
        let _ = unsafe { nix::libc::mallopt(param, value) };
    }
}

/// Gives the free pages inside the heap back to the kernel (glibc returns only the top of
/// the heap by itself). For after a burst that freed much scattered memory, such as the
/// parts of a fan-out; it walks the free lists, so not for every step. Does nothing with
/// other C libraries.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free memory of the allocator's own arenas to the
        // kernel; it takes no pointers and is thread-safe (it locks each arena).
        let _ = unsafe { nix::libc::malloc_trim(0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    // [utest->req~common.bus-fd~1]
    #[test]
    fn a_disconnected_bus_is_reported_not_polled() {
        let dir = std::env::temp_dir().join(format!("hirte-sys-bus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let addr = format!("unix:path={}", dir.join("bus").display());
        let mut daemon = std::process::Command::new("dbus-daemon")
            .args([
                "--session",
                "--nofork",
                "--nopidfile",
                &format!("--address={addr}"),
            ])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut channel = loop {
            match Channel::open_private(&addr) {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("no bus: {e}"),
            }
        };
        channel.register().unwrap();
        channel.set_watch_enabled(true);
        let conn = Connection::from(channel);
        let raw = conn.channel().watch().fd;
        let wake = nix::sys::eventfd::EventFd::new().unwrap();
        use std::os::fd::AsFd;
        assert!(matches!(
            wait_for_bus(&conn, wake.as_fd(), Some(Duration::from_millis(1))),
            Ok(BusWait::Ready(_))
        ));
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        while conn
            .channel()
            .read_write(Some(Duration::from_millis(100)))
            .is_ok()
        {
            assert!(
                Instant::now() < deadline + Duration::from_secs(5),
                "never disconnected"
            );
        }
        // libdbus closed its socket while `conn` lives: the number it reported is stale.
        assert_eq!(
            nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFD),
            Err(nix::errno::Errno::EBADF)
        );
        assert_eq!(
            wait_for_bus(&conn, wake.as_fd(), Some(Duration::from_millis(1))),
            Ok(BusWait::Disconnected)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
