//! The `sd_notify` protocol, written against `$NOTIFY_SOCKET` directly: READY, STOPPING,
//! STATUS and the watchdog keep-alive. Without `$NOTIFY_SOCKET` (not started by systemd
//! with `Type=notify`) every call is a no-op.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

static GLOBAL: OnceLock<Mutex<Notifier>> = OnceLock::new();

fn global() -> &'static Mutex<Notifier> {
    GLOBAL.get_or_init(|| Mutex::new(Notifier::from_env()))
}

/// The process-wide notifier (from the environment), usable from any code path that may
/// block, so a long but live operation keeps the watchdog fed.
pub fn ready(status: &str) {
    global()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .ready(status);
}

pub fn stopping() {
    global()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .stopping();
}

pub fn watchdog_tick() {
    global()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .watchdog_tick();
}

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
}

fn socket_addr(path: &str) -> Option<SocketAddr> {
    match path.strip_prefix('@') {
        // Abstract socket namespace, as systemd uses for its own notify socket.
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok(),
        None => SocketAddr::from_pathname(path).ok(),
    }
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honouring `$WATCHDOG_PID`).
    // [impl->req~ops.notify-watchdog~1]
    pub fn from_env() -> Self {
        let watchdog_for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|us| *us > 0 && watchdog_for_us)
            .map(Duration::from_micros);
        let path = std::env::var("NOTIFY_SOCKET").ok();
        Self::new(path.as_deref(), watchdog)
    }

    pub fn new(socket: Option<&str>, watchdog: Option<Duration>) -> Self {
        let target = socket
            .and_then(socket_addr)
            .and_then(|addr| UnixDatagram::unbound().ok().map(|s| (s, addr)));
        Notifier {
            target,
            watchdog,
            last_ping: None,
        }
    }

    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification; failures are ignored (systemd may be restarting).
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.target {
            let _ = sock.send_to_addr(state.as_bytes(), addr);
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    /// Called from the main loop on every turn: pings at half the watchdog interval, so a
    /// loop that hangs stops pinging and systemd restarts the daemon.
    pub fn watchdog_tick(&mut self) {
        let Some(interval) = self.watchdog else {
            return;
        };
        let due = self.last_ping.is_none_or(|t| t.elapsed() >= interval / 2);
        if due {
            self.notify("WATCHDOG=1");
            self.last_ping = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~ops.notify-watchdog~1]
    #[test]
    fn sends_ready_and_watchdog_to_the_socket() {
        let path = std::env::temp_dir().join(format!("hirte-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut n = Notifier::new(path.to_str(), Some(Duration::from_secs(10)));
        assert!(n.is_active());
        n.ready("serving");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");
        n.watchdog_tick();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        // Not due again before half the interval.
        n.watchdog_tick();
        rx.set_nonblocking(true).unwrap();
        assert!(rx.recv(&mut buf).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn silent_without_socket() {
        let mut n = Notifier::new(None, Some(Duration::from_millis(1)));
        assert!(!n.is_active());
        n.ready("x");
        n.watchdog_tick();
    }
}
