//! Which manager the link tries next and how long it waits first.
//!
//! [`ReconnectPolicy`] is the decision alone (no I/O, no clock: time comes in as arguments),
//! unit-tested below. [`Reconnect`] is the thin shell the link thread asks: it holds the
//! manager list, logs quietly, takes run-time switches (`SwitchController`) and probes the
//! first manager for failback.
//!
//! - Backoff: after a failed round over the list the agent waits a jittered delay
//!   (`d/2..=d`), `d` starting at [`RECONNECT_BACKOFF_START`] and doubling up to
//!   `ReconnectInterval`, so a fleet does not retry in lockstep and the wait between two
//!   rounds is never longer than `ReconnectInterval`.
//! - List: within a round the next manager is tried at once. A round starts where the agent
//!   last registered (it stays there), or at the first with `ManagerPreferFirst=yes`.

use crate::resolve::Resolver;
use hirte_common::bounds::{
    FAILBACK_PROBE_TIMEOUT, RECONNECT_BACKOFF_START, RECONNECT_SUMMARY_EVERY,
};
use hirte_common::config::{AgentConfig, ManagerAddress};
use hirte_common::queue::BoundedQueue;
use hirte_common::timespan::format_timespan;
use hirte_common::{log_debug, log_error, log_info, log_warn};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How loudly one failed attempt is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The first failure since the agent was last registered: a warning.
    First,
    /// Every [`RECONNECT_SUMMARY_EVERY`]th failure: a warning with the count.
    Summary(u32),
    /// The rest: debug only.
    Quiet,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub wait: Duration,
    pub report: Report,
}

/// The sans-IO reconnect decision over a list of `count` managers (indices into it).
// [impl->req~agent.reconnect-backoff~1]
// [impl->req~agent.manager-list~1]
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    count: usize,
    prefer_first: bool,
    cap: Duration,
    /// Backoff before jitter for the next failed round.
    delay: Duration,
    rng: u64,
    target: usize,
    /// Where a round starts: where the agent last registered (the first with prefer-first).
    home: usize,
    /// Attempts made in the current round.
    tried: usize,
    /// Failed attempts since the agent was last registered.
    failures: u32,
    /// Registered at `target`; the next failback probe is due then.
    next_probe: Option<Instant>,
}

impl ReconnectPolicy {
    /// `cap` is `ReconnectInterval`; `seed` varies the jitter between agents.
    pub fn new(count: usize, prefer_first: bool, cap: Duration, seed: u64) -> Self {
        ReconnectPolicy {
            count: count.max(1),
            prefer_first,
            cap,
            delay: RECONNECT_BACKOFF_START.min(cap),
            // xorshift must not start at zero.
            rng: seed | 1,
            target: 0,
            home: 0,
            tried: 0,
            failures: 0,
            next_probe: None,
        }
    }

    /// The manager to try now.
    pub fn target(&self) -> usize {
        self.target
    }

    /// Registered with the target at `now`.
    pub fn registered(&mut self, now: Instant) {
        self.home = if self.prefer_first { 0 } else { self.target };
        self.tried = 0;
        self.failures = 0;
        self.delay = RECONNECT_BACKOFF_START.min(self.cap);
        self.next_probe = Some(now + self.cap);
    }

    /// The session with the target ended: try the same manager again at once (a restarted
    /// manager may already be back), then the others.
    pub fn lost(&mut self) -> Duration {
        self.next_probe = None;
        self.tried = 0;
        Duration::ZERO
    }

    /// An attempt at the target failed (connect, handshake or refused registration).
    pub fn failed(&mut self) -> Retry {
        self.next_probe = None;
        self.failures = self.failures.saturating_add(1);
        self.tried += 1;
        let wait = if self.tried < self.count {
            self.target = (self.target + 1) % self.count;
            Duration::ZERO
        } else {
            self.tried = 0;
            self.target = self.home;
            let wait = self.jitter(self.delay);
            self.delay = self.delay.saturating_mul(2).min(self.cap);
            wait
        };
        let report = if self.failures == 1 {
            Report::First
        } else if self.failures.is_multiple_of(RECONNECT_SUMMARY_EVERY) {
            Report::Summary(self.failures)
        } else {
            Report::Quiet
        };
        Retry { wait, report }
    }

    /// Moves to manager `index` (a run-time switch, or failback): tried next and, once
    /// registered there, home.
    pub fn switch_to(&mut self, index: usize) {
        self.target = index.min(self.count - 1);
        self.home = self.target;
        self.tried = 0;
        self.next_probe = None;
    }

    /// When [`ReconnectPolicy::probe_first_due`] next says yes, if it ever will.
    pub fn next_probe(&self) -> Option<Instant> {
        self.next_probe
            .filter(|_| self.prefer_first && self.target != 0)
    }

    /// Registered with a standby under prefer-first: whether to check now whether the first
    /// manager listens again (then the next check is one cap later).
    pub fn probe_first_due(&mut self, now: Instant) -> bool {
        match self.next_probe {
            Some(at) if self.prefer_first && self.target != 0 && now >= at => {
                self.next_probe = Some(now + self.cap);
                true
            }
            _ => false,
        }
    }

    /// `d/2 ..= d`, from a xorshift64 stream.
    fn jitter(&mut self, d: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = d / 2;
        let span = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        let extra = if span == 0 { 0 } else { self.rng % (span + 1) };
        half + Duration::from_micros(extra)
    }
}

/// A run-time switch asked for on the local API, taken by the link thread.
#[derive(Default)]
pub struct SwitchRequest {
    to: Mutex<Option<ManagerAddress>>,
    /// The link's outbound queue, rung so that an idle session sees the request at once.
    wake: Option<Arc<BoundedQueue<Vec<u8>>>>,
}

impl SwitchRequest {
    /// A request that wakes the link thread waiting on `outbound`'s eventfd.
    pub fn waking(outbound: Arc<BoundedQueue<Vec<u8>>>) -> Self {
        SwitchRequest {
            to: Mutex::new(None),
            wake: Some(outbound),
        }
    }

    // [impl->req~agent.switch-controller~1]
    pub fn request(&self, to: ManagerAddress) {
        *self.to.lock().unwrap_or_else(PoisonError::into_inner) = Some(to);
        if let Some(q) = &self.wake {
            q.wake_only();
        }
    }

    fn is_pending(&self) -> bool {
        self.to
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    pub(crate) fn take(&self) -> Option<ManagerAddress> {
        self.to
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// The link thread's view: the list, the policy, and what it logs.
pub struct Reconnect {
    managers: Vec<ManagerAddress>,
    policy: ReconnectPolicy,
    prefer_first: bool,
    cap: Duration,
    switch: Arc<SwitchRequest>,
    /// The last refusal logged at error level (identical ones repeat at debug only).
    last_refusal: String,
    /// Looks up `ManagerHost` names, anew on every attempt, within `MANAGER_LOOKUP_TIMEOUT`.
    resolver: Resolver,
}

impl Reconnect {
    pub fn new(cfg: &AgentConfig, switch: Arc<SwitchRequest>) -> Self {
        let managers = cfg.managers();
        Reconnect {
            policy: ReconnectPolicy::new(
                managers.len(),
                cfg.manager_prefer_first,
                cfg.reconnect_interval,
                seed(&cfg.node_name),
            ),
            managers,
            prefer_first: cfg.manager_prefer_first,
            cap: cfg.reconnect_interval,
            switch,
            last_refusal: String::new(),
            resolver: Resolver::default(),
        }
    }

    /// The addresses of a manager host, looked up now (never cached: the name may have
    /// moved), or why there are none (failed, timed out, an earlier lookup still running).
    pub fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        self.resolver.resolve(host, port)
    }

    /// The manager to try now; a pending `SwitchController` is applied first. An address in
    /// the list moves the agent there; any other replaces the list (as BlueChi does).
    pub fn target(&mut self) -> ManagerAddress {
        if let Some(to) = self.switch.take() {
            match self.managers.iter().position(|m| *m == to) {
                Some(i) => self.policy.switch_to(i),
                None => {
                    self.managers = vec![to];
                    self.policy = ReconnectPolicy::new(1, false, self.cap, seed(""));
                }
            }
        }
        let i = self.policy.target();
        self.managers
            .get(i)
            .or(self.managers.first())
            .cloned()
            .unwrap_or(ManagerAddress::Tcp {
                host: "127.0.0.1".to_string(),
                port: 2020,
            })
    }

    pub fn registered(&mut self) {
        self.last_refusal.clear();
        self.policy.registered(Instant::now());
    }

    pub fn lost(&mut self) -> Duration {
        self.policy.lost()
    }

    /// Logs the failure as the policy says and returns the wait before the next attempt.
    pub fn failed(&mut self, to: &ManagerAddress, reason: &str, refused: bool) -> Duration {
        let retry = self.policy.failed();
        if refused {
            if reason != self.last_refusal {
                log_error!("{reason}");
                self.last_refusal = reason.to_string();
            } else {
                log_debug!("{}: {reason}", to.endpoint());
            }
            return retry.wait;
        }
        match retry.report {
            Report::First => log_warn!(
                "Cannot reach manager at {}: {reason}; retrying every {} at most",
                to.endpoint(),
                format_timespan(self.cap)
            ),
            Report::Summary(n) => log_warn!(
                "Still no manager after {n} attempts (last: {}: {reason}); retrying every {} at most",
                to.endpoint(),
                format_timespan(self.cap)
            ),
            Report::Quiet => log_debug!("Still cannot reach the manager: {reason}"),
        }
        retry.wait
    }

    /// Whether a wait should end early: a switch was asked for.
    pub fn switch_pending(&self) -> bool {
        self.switch.is_pending()
    }

    /// When the session must next ask [`Reconnect::leave_reason`] (the failback probe); a
    /// switch asked for wakes the link through the outbound queue instead.
    pub fn next_probe(&self) -> Option<Instant> {
        self.policy.next_probe()
    }

    /// Asked on every wake-up of a session: why the agent should leave its manager now, if it
    /// should (a `SwitchController` call, or the first manager listens again under
    /// `ManagerPreferFirst=yes`).
    // [impl->req~agent.manager-failback~1]
    pub fn leave_reason(&mut self, now: Instant) -> Option<String> {
        if self.switch_pending() {
            return Some("switching manager as asked on the local API".to_string());
        }
        if !self.prefer_first || !self.policy.probe_first_due(now) {
            return None;
        }
        let first = self.managers.first()?;
        if !listens(first, &self.resolver) {
            return None;
        }
        log_info!(
            "First manager {} listens again; moving back to it",
            first.endpoint()
        );
        self.policy.switch_to(0);
        Some(format!("moving back to {}", first.endpoint()))
    }
}

/// A connect that is closed at once: whether a manager accepts connections there.
fn listens(to: &ManagerAddress, resolver: &Resolver) -> bool {
    match to {
        ManagerAddress::Unix(p) => UnixStream::connect(p).is_ok(),
        ManagerAddress::Tcp { host, port } => match resolver.resolve(host, *port) {
            Ok(addrs) => addrs
                .iter()
                .any(|a| TcpStream::connect_timeout(a, FAILBACK_PROBE_TIMEOUT).is_ok()),
            Err(e) => {
                log_debug!("Failback probe: cannot resolve manager host: {e}");
                false
            }
        },
    }
}

/// Differs between agents (name, process, start time) so their jitter does too.
fn seed(name: &str) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    name.bytes().fold(
        nanos ^ u64::from(std::process::id()).rotate_left(32),
        |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(10);

    fn waits(p: &mut ReconnectPolicy, n: usize) -> Vec<Duration> {
        (0..n).map(|_| p.failed().wait).collect()
    }

    // [utest->req~agent.reconnect-backoff~1]
    #[test]
    fn backoff_starts_short_doubles_with_jitter_and_is_capped() {
        let mut p = ReconnectPolicy::new(1, false, CAP, 42);
        let w = waits(&mut p, 12);
        let mut d = RECONNECT_BACKOFF_START;
        for (i, wait) in w.iter().enumerate() {
            assert!(
                *wait >= d / 2 && *wait <= d,
                "attempt {i}: {wait:?} outside {:?}..={d:?}",
                d / 2
            );
            d = (d * 2).min(CAP);
        }
        assert!(w.iter().all(|x| *x <= CAP));
        // The first retry comes after 100-200 ms, not after ReconnectInterval.
        assert!(w[0] <= Duration::from_millis(200));
        // Once capped, the waits still vary.
        assert!(w[8..].windows(2).any(|p| p[0] != p[1]), "{w:?}");
    }

    #[test]
    fn a_small_reconnect_interval_caps_even_the_first_wait() {
        let mut p = ReconnectPolicy::new(1, false, Duration::from_millis(100), 7);
        assert!(waits(&mut p, 5)
            .iter()
            .all(|w| *w <= Duration::from_millis(100)));
    }

    // [utest->req~agent.reconnect-backoff~1]
    #[test]
    fn jitter_spreads_a_fleet() {
        let firsts: Vec<Duration> = (0..50u64)
            .map(|s| {
                ReconnectPolicy::new(1, false, CAP, seed(&format!("n{s}")))
                    .failed()
                    .wait
            })
            .collect();
        let distinct = firsts
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert!(distinct > 25, "{firsts:?}");
    }

    // [utest->req~agent.reconnect-backoff~1]
    #[test]
    fn registration_resets_the_backoff_and_the_summary_count() {
        let mut p = ReconnectPolicy::new(1, false, CAP, 3);
        let reports: Vec<Report> = (0..20).map(|_| p.failed().report).collect();
        assert_eq!(reports[0], Report::First);
        assert_eq!(reports[9], Report::Summary(10));
        assert_eq!(reports[19], Report::Summary(20));
        assert_eq!(reports.iter().filter(|r| **r == Report::Quiet).count(), 17);
        p.registered(Instant::now());
        assert_eq!(p.lost(), Duration::ZERO);
        let r = p.failed();
        assert_eq!(r.report, Report::First);
        assert!(r.wait <= RECONNECT_BACKOFF_START);
    }

    // [utest->req~agent.manager-list~1]
    #[test]
    fn list_is_tried_in_order_without_waiting_within_a_round() {
        let mut p = ReconnectPolicy::new(3, false, CAP, 1);
        assert_eq!(p.target(), 0);
        assert_eq!(p.failed().wait, Duration::ZERO);
        assert_eq!(p.target(), 1);
        assert_eq!(p.failed().wait, Duration::ZERO);
        assert_eq!(p.target(), 2);
        // The whole list failed: back to the first, after a backoff.
        assert!(p.failed().wait > Duration::ZERO);
        assert_eq!(p.target(), 0);
    }

    // [utest->req~agent.manager-list~1]
    #[test]
    fn the_agent_stays_where_it_registered() {
        let mut p = ReconnectPolicy::new(2, false, CAP, 1);
        p.failed();
        assert_eq!(p.target(), 1);
        p.registered(Instant::now());
        // Lost: the same manager first, at once, then the other.
        assert_eq!(p.lost(), Duration::ZERO);
        assert_eq!(p.target(), 1);
        assert_eq!(p.failed().wait, Duration::ZERO);
        assert_eq!(p.target(), 0);
        // A failed round starts again where it registered, not at the first.
        p.failed();
        assert_eq!(p.target(), 1);
        // No failback without prefer-first.
        p.registered(Instant::now());
        assert!(!p.probe_first_due(Instant::now() + CAP * 10));
    }

    // [utest->req~agent.manager-failback~1]
    #[test]
    fn prefer_first_probes_every_interval_and_rounds_start_at_the_first() {
        let t0 = Instant::now();
        let mut p = ReconnectPolicy::new(2, true, CAP, 1);
        p.failed();
        assert_eq!(p.target(), 1);
        p.registered(t0);
        assert!(!p.probe_first_due(t0));
        assert!(!p.probe_first_due(t0 + CAP - Duration::from_millis(1)));
        assert!(p.probe_first_due(t0 + CAP));
        assert!(!p.probe_first_due(t0 + CAP + Duration::from_secs(1)));
        assert!(p.probe_first_due(t0 + CAP * 2));
        // Lost the standby: it is retried once at once, then rounds start at the first.
        p.lost();
        assert_eq!(p.target(), 1);
        p.failed();
        assert_eq!(p.target(), 0);
        p.failed();
        assert_eq!(p.target(), 0);
        // Registered with the first: nothing to probe.
        p.registered(t0);
        assert!(!p.probe_first_due(t0 + CAP * 5));
    }

    // [utest->req~agent.switch-controller~1]
    #[test]
    fn switch_to_makes_that_manager_next_and_home() {
        let mut p = ReconnectPolicy::new(3, false, CAP, 1);
        p.registered(Instant::now());
        p.switch_to(2);
        assert_eq!(p.target(), 2);
        p.failed();
        assert_eq!(p.target(), 0);
        p.failed();
        p.failed();
        assert_eq!(p.target(), 2, "a round starts at the switched-to manager");
        p.switch_to(99);
        assert_eq!(p.target(), 2, "an index past the list is clamped");
    }

    fn cfg(text: &[(&str, &str)]) -> AgentConfig {
        let mut c = AgentConfig {
            node_name: "n".into(),
            ..AgentConfig::default()
        };
        for (k, v) in text {
            c.apply(&hirte_common::config::cli_entry(k, v)).unwrap();
        }
        c
    }

    // [utest->req~agent.switch-controller~1]
    #[test]
    fn a_switch_to_a_listed_manager_keeps_the_list_another_replaces_it() {
        let switch = Arc::new(SwitchRequest::default());
        let mut r = Reconnect::new(&cfg(&[("ManagerHost", "a,b")]), switch.clone());
        assert_eq!(r.target().endpoint(), "a:2020");
        assert!(r.leave_reason(Instant::now()).is_none());
        switch.request(ManagerAddress::parse("tcp:host=b,port=2020").unwrap());
        assert!(r.switch_pending());
        assert!(r.leave_reason(Instant::now()).is_some());
        assert_eq!(r.target().endpoint(), "b:2020");
        assert!(!r.switch_pending());
        r.registered();
        r.lost();
        assert_eq!(r.target().endpoint(), "b:2020");
        let t = r.target();
        r.failed(&t, "x", false);
        assert_eq!(r.target().endpoint(), "a:2020", "the list is kept");

        switch.request(ManagerAddress::parse("unix:path=/run/h.sock").unwrap());
        assert_eq!(r.target().to_string(), "unix:path=/run/h.sock");
        let t = r.target();
        r.failed(&t, "x", false);
        assert_eq!(
            r.target().to_string(),
            "unix:path=/run/h.sock",
            "an unlisted address is now the only manager"
        );
    }
}
