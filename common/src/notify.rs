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

/// How long until [`watchdog_tick`] must ping again (`None` without a watchdog): a loop that
/// sleeps with no timer wakes for it.
pub fn watchdog_due() -> Option<Duration> {
    global()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .watchdog_due(Instant::now())
}

/// Pings the watchdog now, whenever it was last pinged: call right before a blocking call,
/// so the call's own timeout is all the time that can pass without a ping.
pub fn watchdog_ping() {
    global()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .watchdog_ping();
}

/// `WatchdogSec` of this process (from `$WATCHDOG_USEC`), if systemd watches it.
pub fn watchdog_interval() -> Option<Duration> {
    global()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .watchdog
}

/// Time the watchdog needs left after a blocking call for the loop turn that follows it.
pub const WATCHDOG_MARGIN: Duration = Duration::from_secs(5);

/// The longest a blocking call may take under a watchdog of `interval`: `max_timeout`, but
/// never so long that the call plus the rest of its loop turn could outlast the interval
/// (at least `WATCHDOG_MARGIN` or half the interval is left). Callers ping right before
/// the call ([`watchdog_ping`]), so by construction no call can starve the watchdog.
// [impl->req~ops.watchdog-call-timeout~1]
pub fn call_timeout_under_watchdog(max_timeout: Duration, interval: Option<Duration>) -> Duration {
    match interval {
        None => max_timeout,
        Some(w) => max_timeout.min((w / 2).max(w.saturating_sub(WATCHDOG_MARGIN))),
    }
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
        if self.last_ping.is_none_or(|t| t.elapsed() >= interval / 2) {
            self.watchdog_ping();
        }
    }

    /// Time left until the next ping is due at `now`.
    pub fn watchdog_due(&self, now: Instant) -> Option<Duration> {
        let half = self.watchdog? / 2;
        Some(match self.last_ping {
            None => Duration::ZERO,
            Some(t) => half.saturating_sub(now.saturating_duration_since(t)),
        })
    }

    /// Pings now (before a blocking call), if systemd watches this process.
    pub fn watchdog_ping(&mut self) {
        if self.watchdog.is_some() {
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
        // Not due again before half the interval, and a loop without a timer knows when.
        let due = n.watchdog_due(Instant::now()).unwrap();
        assert!(
            due > Duration::from_secs(4) && due <= Duration::from_secs(5),
            "{due:?}"
        );
        assert_eq!(
            n.watchdog_due(Instant::now() + Duration::from_secs(6)),
            Some(Duration::ZERO)
        );
        assert_eq!(Notifier::new(None, None).watchdog_due(Instant::now()), None);
        n.watchdog_tick();
        rx.set_nonblocking(true).unwrap();
        assert!(rx.recv(&mut buf).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    // [utest->req~ops.watchdog-call-timeout~1]
    #[test]
    fn a_blocking_call_never_outlasts_the_watchdog() {
        let max = Duration::from_secs(25);
        // The shipped WatchdogSec=30s keeps the full systemd call timeout.
        assert_eq!(
            call_timeout_under_watchdog(max, Some(Duration::from_secs(30))),
            max
        );
        assert_eq!(call_timeout_under_watchdog(max, None), max);
        for ms in [
            1, 500, 2_000, 5_000, 9_999, 10_000, 29_999, 30_000, 60_000, 3_600_000,
        ] {
            let w = Duration::from_millis(ms);
            let t = call_timeout_under_watchdog(max, Some(w));
            assert!(t <= max && t < w, "{w:?}: {t:?}");
            assert!(t >= w / 2 || t == max, "{w:?}: {t:?} needlessly short");
        }
        // A ping before a call goes out even right after the loop's own ping.
        let path = std::env::temp_dir().join(format!("hirte-notify-ping-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut n = Notifier::new(path.to_str(), Some(Duration::from_secs(30)));
        n.watchdog_tick();
        n.watchdog_ping();
        let mut buf = [0u8; 64];
        for _ in 0..2 {
            let len = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..len], b"WATCHDOG=1");
        }
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
