//! The agent's one connection to the manager: connect, Register, heartbeat, relay frames.
//!
//! Runs in its own thread so a slow systemd call in the core never delays heartbeats, and a
//! dead manager is noticed (no heartbeat echo for `ManagerHeartbeatThreshold`) without help
//! from the core.

use crate::core::Channels;
use crate::reconnect::Reconnect;
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::{CONNECT_TIMEOUT, CORE_TICK, HANDSHAKE_TIMEOUT, MAX_FRAME_SIZE};
use hirte_common::config::{AgentConfig, ManagerAddress};
use hirte_common::frame::SerialCounter;
use hirte_common::handshake::register_call;
use hirte_common::linkio::{prepare, FrameLink, LinkIoError};
use hirte_common::protocol;
use hirte_common::queue::{BoundedQueue, PushError};
use hirte_common::stream::LinkStream;
use hirte_common::tls::{ClientPolicy, PeerIdentity};
use hirte_common::wait::now_realtime_us;
use hirte_common::{log_error, log_info, log_warn};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// From the link thread to the core.
pub enum FromLink {
    /// Registered with the manager at this address (`tcp:host=H,port=P` or `unix:path=P`).
    Connected(String),
    Frame(Message),
    Disconnected,
}

/// How long the link waits for room in the core's queue before it drops the connection.
const CORE_PUSH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
enum LinkError {
    Resolve(String),
    Connect(String),
    Io(std::io::Error),
    Protocol(String),
    Refused(String),
    /// TLS refused the manager, or the manager refused us at the TLS layer.
    Tls(String),
    ManagerSilent(Duration),
    CoreStuck,
    Leaving(String),
    Shutdown,
}

impl From<LinkIoError> for LinkError {
    fn from(e: LinkIoError) -> Self {
        match e {
            LinkIoError::Closed => LinkError::Protocol("manager closed the connection".to_string()),
            LinkIoError::Io(e) => LinkError::Io(e),
            LinkIoError::Frame(e) => LinkError::Protocol(e.to_string()),
            LinkIoError::Tls(e) => LinkError::Tls(e.to_string()),
            e @ LinkIoError::HandshakeTimeout(_) => LinkError::Tls(e.to_string()),
        }
    }
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Resolve(e) => write!(f, "cannot resolve manager host: {e}"),
            LinkError::Connect(e) => write!(f, "cannot connect: {e}"),
            LinkError::Io(e) => write!(f, "I/O error: {e}"),
            LinkError::Protocol(e) => write!(f, "protocol error: {e}"),
            LinkError::Refused(e) => write!(f, "manager refused registration: {e}"),
            LinkError::Tls(e) => write!(f, "TLS: {e}"),
            LinkError::ManagerSilent(d) => write!(
                f,
                "no message from the manager for {}",
                hirte_common::timespan::format_timespan(*d)
            ),
            LinkError::CoreStuck => write!(f, "agent core not accepting messages"),
            LinkError::Leaving(why) => write!(f, "{why}"),
            LinkError::Shutdown => write!(f, "shutting down"),
        }
    }
}

/// What the link loop does after one attempt.
enum Step {
    Wait(Duration),
    Stop,
}

pub struct Link {
    cfg: AgentConfig,
    /// Encoded frames from the core, written in order.
    outbound: Arc<BoundedQueue<Vec<u8>>>,
    events: Arc<BoundedQueue<FromLink>>,
    shutdown: Arc<AtomicBool>,
    /// Serials shared with the core, which frames its own messages.
    serials: Arc<SerialCounter>,
    /// Incremented for every new manager session, so the core can drop stale job results.
    session: Arc<AtomicU64>,
    /// Wall-clock time (µs) of the last frame from the manager, for the local status API.
    last_seen_us: Arc<AtomicU64>,
    /// The TLS policy when the TCP link is TLS; re-read from `cfg.tls` on SIGHUP.
    tls: Option<ClientPolicy>,
    /// Set by SIGHUP.
    tls_reload: Arc<AtomicBool>,
    /// Counts TLS reloads, so a session knows to check its manager again.
    tls_generation: u64,
    /// Which manager next and how long to wait first (`reconnect.rs`).
    reconnect: Reconnect,
}

/// The manager's verified certificate (TLS only), to check again after SIGHUP.
struct Verified {
    identity: PeerIdentity,
    generation: u64,
}

impl Link {
    pub fn new(
        cfg: AgentConfig,
        ch: &Channels,
        last_seen_us: Arc<AtomicU64>,
        tls: Option<ClientPolicy>,
        tls_reload: Arc<AtomicBool>,
        reconnect: Reconnect,
    ) -> Self {
        Link {
            cfg,
            outbound: ch.outbound.clone(),
            events: ch.events.clone(),
            shutdown: ch.shutdown.clone(),
            serials: ch.serials.clone(),
            session: ch.session.clone(),
            last_seen_us,
            tls,
            tls_reload,
            tls_generation: 0,
            reconnect,
        }
    }

    // [impl->req~agent.reconnect~1]
    pub fn run(mut self) {
        while !self.shutdown.load(Ordering::Relaxed) {
            // A panic while talking to the manager must not leave a node that never
            // reconnects: it ends this attempt only, and the loop goes on.
            let step = catch_unwind(AssertUnwindSafe(|| self.attempt())).unwrap_or_else(|_| {
                log_error!("Internal error on the manager link; reconnecting");
                let _ = self
                    .events
                    .push_timeout(FromLink::Disconnected, CORE_PUSH_TIMEOUT);
                Step::Wait(self.cfg.reconnect_interval)
            });
            match step {
                Step::Stop => return,
                // Lost: the same manager at once (a restarted one may already be back);
                // failed: the next in the list, or a backoff (`reconnect.rs`).
                // [impl->req~manager.restart-recovery~1]
                Step::Wait(d) => self.sleep(d),
            }
        }
    }

    /// One connection attempt and, if it registers, the whole session.
    fn attempt(&mut self) -> Step {
        self.reload_tls();
        let target = self.reconnect.target();
        match self.connect(&target) {
            Ok((mut link, verified)) => {
                self.reconnect.registered();
                let end = self.session(&mut link, verified, &target);
                link.close();
                let _ = self
                    .events
                    .push_timeout(FromLink::Disconnected, CORE_PUSH_TIMEOUT);
                if let Err(LinkError::Shutdown) = end {
                    return Step::Stop;
                }
                let reason = end.err().map(|e| e.to_string()).unwrap_or_default();
                log_warn!("Lost the manager connection: {reason}; reconnecting");
                Step::Wait(self.reconnect.lost())
            }
            Err(e) => {
                let refused = matches!(e, LinkError::Refused(_) | LinkError::Tls(_));
                Step::Wait(self.reconnect.failed(&target, &e.to_string(), refused))
            }
        }
    }

    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.shutdown.load(Ordering::Relaxed) && !self.reconnect.switch_pending() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(CORE_TICK));
        }
    }

    /// Resolves the host anew on each attempt (its address may have moved; the lookup is
    /// bounded by `MANAGER_LOOKUP_TIMEOUT`, `resolve.rs`), connects, registers.
    /// With `ManagerAddress=unix:path=P` it connects to that socket instead (a missing socket
    /// fails at once and is retried like an unreachable host).
    fn connect(
        &mut self,
        target: &ManagerAddress,
    ) -> Result<(FrameLink, Option<Verified>), LinkError> {
        let (host, port) = match target {
            // [impl->req~link.unix-socket~1]
            ManagerAddress::Unix(path) => {
                let stream = UnixStream::connect(path)
                    .map(LinkStream::Unix)
                    .map_err(|e| LinkError::Connect(format!("{}: {e}", path.display())))?;
                prepare(&stream).map_err(LinkError::Io)?;
                let mut link = FrameLink::plain(stream, MAX_FRAME_SIZE);
                self.register(&mut link, Instant::now() + HANDSHAKE_TIMEOUT, target)?;
                return Ok((link, None));
            }
            ManagerAddress::Tcp { host, port } => (host.as_str(), *port),
        };
        // Bounded by MANAGER_LOOKUP_TIMEOUT; a failed or given-up lookup is a failed attempt.
        let addrs = self
            .reconnect
            .resolve(host, port)
            .map_err(LinkError::Resolve)?;
        let mut last = LinkError::Resolve(format!("'{host}' has no addresses"));
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    let stream = LinkStream::Tcp(stream);
                    prepare(&stream).map_err(LinkError::Io)?;
                    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
                    let (mut link, verified) = self.secure(stream, addr, deadline)?;
                    self.register(&mut link, deadline, target)?;
                    return Ok((link, verified));
                }
                Err(e) => last = LinkError::Connect(format!("{addr}: {e}")),
            }
        }
        Err(last)
    }

    /// With TLS, the handshake (within the handshake timeout): the manager must show a
    /// certificate from the trusted CAs for `ManagerName`, else the agent goes no further.
    // [impl->req~tls.link~1]
    // [impl->req~tls.refusal-log~1]
    fn secure(
        &self,
        stream: LinkStream,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<(FrameLink, Option<Verified>), LinkError> {
        let Some(tls) = &self.tls else {
            return Ok((FrameLink::plain(stream, MAX_FRAME_SIZE), None));
        };
        let (session, seen) = tls.session().map_err(|e| LinkError::Tls(e.to_string()))?;
        let mut link = FrameLink::tls(stream, session, MAX_FRAME_SIZE);
        let verified = link
            .handshake(deadline, HANDSHAKE_TIMEOUT)
            .map_err(|e| e.to_string())
            .and_then(|()| PeerIdentity::from_chain(link.peer_certificates().unwrap_or_default()));
        match verified {
            Ok(identity) => {
                log_info!(
                    "Manager at {addr} verified as '{}': certificate {} (SHA-256 fingerprint {})",
                    self.cfg.effective_manager_name(),
                    identity.subject,
                    identity.fingerprint
                );
                Ok((
                    link,
                    Some(Verified {
                        identity,
                        generation: self.tls_generation,
                    }),
                ))
            }
            Err(e) => Err(LinkError::Tls(format!(
                "refused the manager at {addr} (expected name '{}', certificate subject {}): {e}",
                self.cfg.effective_manager_name(),
                seen.subject()
            ))),
        }
    }

    /// SIGHUP: the next connections use the re-read certificates and CRL, and the session
    /// checks the manager's certificate against them.
    // [impl->req~tls.reload~1]
    fn reload_tls(&mut self) {
        if self.tls.is_none() || !self.tls_reload.swap(false, Ordering::Relaxed) {
            return;
        }
        let name = self.cfg.effective_manager_name().to_string();
        match ClientPolicy::load(&self.cfg.tls, &name, &self.cfg.node_name) {
            Ok(p) => {
                self.tls = Some(p);
                self.tls_generation = self.tls_generation.wrapping_add(1);
                log_info!("Reloaded the TLS certificates and revocation list");
            }
            Err(e) => log_error!("Keeping the TLS settings in force: {e}"),
        }
    }

    /// A session whose manager certificate expired, or fails the policy SIGHUP loaded, ends.
    // [impl->req~tls.reload~1]
    fn recheck(&mut self, verified: &mut Option<Verified>) -> Result<(), LinkError> {
        self.reload_tls();
        let Some(v) = verified.as_mut() else {
            return Ok(());
        };
        if v.identity.expired() {
            return Err(LinkError::Tls(
                "the manager's certificate has expired".to_string(),
            ));
        }
        if v.generation != self.tls_generation {
            v.generation = self.tls_generation;
            if let Some(tls) = &self.tls {
                tls.recheck(&v.identity.chain).map_err(|e| {
                    LinkError::Tls(format!("the manager's certificate is no longer valid: {e}"))
                })?;
            }
        }
        Ok(())
    }

    fn send(&mut self, link: &mut FrameLink, mut msg: Message) -> Result<(), LinkError> {
        let bytes = self
            .serials
            .encode(&mut msg, MAX_FRAME_SIZE)
            .map_err(|e| LinkError::Protocol(e.to_string()))?;
        link.write_frame(&bytes).map_err(LinkError::from)
    }

    // [impl->req~agent.register~1]
    /// Registers and waits for the manager's answer to that call. The manager's next frames
    /// may already be in the link's decoder (they can arrive in the same read).
    fn register(
        &mut self,
        link: &mut FrameLink,
        deadline: Instant,
        target: &ManagerAddress,
    ) -> Result<(), LinkError> {
        // Frames queued for an earlier connection belong to calls the manager has given up;
        // the new session number makes the core drop results of jobs from earlier ones.
        self.session.fetch_add(1, Ordering::SeqCst);
        while self.outbound.try_pop().is_some() {}
        let mut call = register_call(&self.cfg.node_name)
            .ok_or_else(|| LinkError::Protocol("cannot build Register".to_string()))?;
        let serial = {
            let bytes = self
                .serials
                .encode(&mut call, MAX_FRAME_SIZE)
                .map_err(|e| LinkError::Protocol(e.to_string()))?;
            link.write_frame(&bytes)?;
            call.get_serial()
        };
        let no_answer = || {
            LinkError::Protocol(format!(
                "no answer to Register within {}",
                hirte_common::timespan::format_timespan(HANDSHAKE_TIMEOUT)
            ))
        };
        loop {
            // Each wait is only for what is left of the handshake's time.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(no_answer());
            }
            link.read_within(left.min(CORE_TICK))?;
            let Some(mut reply) = link.next_message()? else {
                continue;
            };
            // [impl->req~agent.register~1]
            let answers_us = matches!(
                reply.msg_type(),
                MessageType::MethodReturn | MessageType::Error
            ) && reply.get_reply_serial() == serial;
            if !answers_us {
                return Err(LinkError::Protocol(
                    "the manager's first message is not the answer to Register".to_string(),
                ));
            }
            if let Err(e) = reply.as_result() {
                return Err(LinkError::Refused(
                    e.message().unwrap_or("no reason given").to_string(),
                ));
            }
            log_info!(
                "Connected to manager at {} as node '{}'",
                target.endpoint(),
                self.cfg.node_name
            );
            return Ok(());
        }
    }

    fn heartbeat() -> Option<Message> {
        Message::new_signal(
            protocol::INTERNAL_AGENT_PATH,
            protocol::INTERNAL_AGENT_IFACE,
            "Heartbeat",
        )
        .ok()
    }

    // [impl->req~link.heartbeat~1]
    fn session(
        &mut self,
        link: &mut FrameLink,
        mut verified: Option<Verified>,
        target: &ManagerAddress,
    ) -> Result<(), LinkError> {
        let address = target.to_string();
        self.last_seen_us
            .store(now_realtime_us(), Ordering::Relaxed);
        match self
            .events
            .push_timeout(FromLink::Connected(address), CORE_PUSH_TIMEOUT)
        {
            Ok(()) => {}
            Err(PushError::Closed(_)) => return Err(LinkError::Shutdown),
            Err(PushError::Full(_)) => return Err(LinkError::CoreStuck),
        }
        let mut last_rx = Instant::now();
        // Frames that came in the same read as the Register answer.
        self.deliver(link, &mut last_rx)?;
        let interval = self.cfg.heartbeat_interval;
        let silence = self.cfg.effective_manager_timeout();

        let mut next_beat = Instant::now();
        loop {
            if self.shutdown.load(Ordering::Relaxed) {
                return Err(LinkError::Shutdown);
            }
            self.recheck(&mut verified)?;
            let now = Instant::now();
            if now >= next_beat {
                if let Some(hb) = Self::heartbeat() {
                    self.send(link, hb)?;
                }
                next_beat = now + interval;
            }
            let silent_at = last_rx + silence;
            if now > silent_at {
                return Err(LinkError::ManagerSilent(silence));
            }
            if let Some(why) = self.reconnect.leave_reason(now) {
                return Err(LinkError::Leaving(why));
            }
            // [impl->req~agent.idle-no-wakeups~1]
            // The only timers are real deadlines: the next heartbeat, the manager's silence,
            // the certificate's end, the failback probe. Frames to send, shutdown, a TLS
            // reload and a switch all ring the outbound queue's eventfd.
            let mut until = next_beat.min(silent_at + Duration::from_millis(1));
            if let Some(probe) = self.reconnect.next_probe() {
                until = until.min(probe);
            }
            if let Some(v) = &verified {
                until = until.min(now + v.identity.valid_for());
            }
            let wait = until
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            link.turn(&self.outbound, Some(wait))?;
            self.deliver(link, &mut last_rx)?;
        }
    }

    /// Hands every complete frame to the core (heartbeat echoes only count as liveness).
    fn deliver(&self, link: &mut FrameLink, last_rx: &mut Instant) -> Result<(), LinkError> {
        while let Some(msg) = link.next_message()? {
            *last_rx = Instant::now();
            self.last_seen_us
                .store(now_realtime_us(), Ordering::Relaxed);
            let is_heartbeat = msg.msg_type() == MessageType::Signal
                && msg.member().is_some_and(|m| &*m == "Heartbeat");
            if is_heartbeat {
                continue;
            }
            match self
                .events
                .push_timeout(FromLink::Frame(msg), CORE_PUSH_TIMEOUT)
            {
                Ok(()) => {}
                Err(PushError::Closed(_)) => return Err(LinkError::Shutdown),
                Err(PushError::Full(_)) => return Err(LinkError::CoreStuck),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
