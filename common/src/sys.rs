//! The one place in Hirte-rs with `unsafe`: borrowing the socket fd of a libdbus connection so
//! a `poll()` loop can wait on it next to our own eventfds.
#![allow(unsafe_code)]

use dbus::blocking::Connection;
use dbus::channel::{BusType, Channel};
use std::os::fd::BorrowedFd;

/// Connects to a bus with fd watching enabled, as [`bus_fd`] requires.
pub fn open_bus(bus: BusType) -> Result<Connection, dbus::Error> {
    let mut channel = Channel::get_private(bus)?;
    channel.set_watch_enabled(true);
    Ok(Connection::from(channel))
}

/// The fd of the connection's socket, borrowed for no longer than the connection itself.
/// The connection must come from [`open_bus`].
pub fn bus_fd(conn: &Connection) -> BorrowedFd<'_> {
    let raw = conn.channel().watch().fd;
    // SAFETY: `raw` is the socket libdbus opened for `conn` and closes only when `conn` is
    // dropped; the returned borrow is tied to `&conn`, so it cannot outlive the fd.
    unsafe { BorrowedFd::borrow_raw(raw) }
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
