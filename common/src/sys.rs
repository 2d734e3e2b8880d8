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
