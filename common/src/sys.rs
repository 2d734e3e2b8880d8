//! The one place in Hirte-rs with `unsafe`: borrowing the socket fd of a libdbus connection so
//! a `poll()` loop can wait on it next to our own eventfds.
#![allow(unsafe_code)]

use dbus::blocking::Connection;
use std::os::fd::BorrowedFd;

/// The fd of the connection's socket, borrowed for no longer than the connection itself.
pub fn bus_fd(conn: &Connection) -> BorrowedFd<'_> {
    let raw = conn.channel().watch().fd;
    // SAFETY: `raw` is the socket libdbus opened for `conn` and closes only when `conn` is
    // dropped; the returned borrow is tied to `&conn`, so it cannot outlive the fd.
    unsafe { BorrowedFd::borrow_raw(raw) }
}
