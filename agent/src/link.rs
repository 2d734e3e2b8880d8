//! The agent's one connection to the manager: connect, Register, heartbeat, relay frames.
//!
//! Runs in its own thread so a slow systemd call in the core never delays heartbeats, and a
//! dead manager is noticed (no heartbeat echo for `ManagerHeartbeatThreshold`) without help
//! from the core.

use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::{
    CONNECT_TIMEOUT, CORE_TICK, HANDSHAKE_TIMEOUT, LINK_WRITE_TIMEOUT, MAX_FRAME_SIZE, READ_CHUNK,
};
use hirte_common::config::AgentConfig;
use hirte_common::frame::{FrameDecoder, SerialCounter};
use hirte_common::handshake::register_call;
use hirte_common::protocol;
use hirte_common::queue::{BoundedQueue, PushError};
use hirte_common::stream::LinkStream;
use hirte_common::wait::{now_realtime_us, poll_readable};
use hirte_common::{log_debug, log_error, log_info, log_warn};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
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
    ManagerSilent(Duration),
    CoreStuck,
    Shutdown,
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Resolve(e) => write!(f, "cannot resolve manager host: {e}"),
            LinkError::Connect(e) => write!(f, "cannot connect: {e}"),
            LinkError::Io(e) => write!(f, "I/O error: {e}"),
            LinkError::Protocol(e) => write!(f, "protocol error: {e}"),
            LinkError::Refused(e) => write!(f, "manager refused registration: {e}"),
            LinkError::ManagerSilent(d) => write!(
                f,
                "no message from the manager for {}",
                hirte_common::timespan::format_timespan(*d)
            ),
            LinkError::CoreStuck => write!(f, "agent core not accepting messages"),
            LinkError::Shutdown => write!(f, "shutting down"),
        }
    }
}

/// What the link loop does after one attempt.
enum Step {
    Again,
    Wait,
    Stop,
}

pub struct Link {
    pub cfg: AgentConfig,
    /// Encoded frames from the core, written in order.
    pub outbound: Arc<BoundedQueue<Vec<u8>>>,
    pub events: Arc<BoundedQueue<FromLink>>,
    pub shutdown: Arc<AtomicBool>,
    /// Serials shared with the core, which frames its own messages.
    pub serials: Arc<SerialCounter>,
    /// Incremented for every new manager session, so the core can drop stale job results.
    pub session: Arc<AtomicU64>,
    /// Wall-clock time (µs) of the last frame from the manager, for the local status API.
    pub last_seen_us: Arc<AtomicU64>,
}

impl Link {
    // [impl->req~agent.reconnect~1]
    pub fn run(mut self) {
        let mut last_error = String::new();
        while !self.shutdown.load(Ordering::Relaxed) {
            // A panic while talking to the manager must not leave a node that never
            // reconnects: it ends this attempt only, and the loop goes on.
            let step = catch_unwind(AssertUnwindSafe(|| self.attempt(&mut last_error)))
                .unwrap_or_else(|_| {
                    log_error!("Internal error on the manager link; reconnecting");
                    let _ = self
                        .events
                        .push_timeout(FromLink::Disconnected, CORE_PUSH_TIMEOUT);
                    Step::Wait
                });
            match step {
                Step::Stop => return,
                // Try at once (a restarted manager may already be back), then every interval.
                // [impl->req~manager.restart-recovery~1]
                Step::Again => {}
                Step::Wait => self.sleep(self.cfg.reconnect_interval),
            }
        }
    }

    /// One connection attempt and, if it registers, the whole session.
    fn attempt(&mut self, last_error: &mut String) -> Step {
        match self.connect() {
            Ok((stream, decoder)) => {
                last_error.clear();
                let end = self.session(&stream, decoder);
                let _ = stream.shutdown(std::net::Shutdown::Both);
                let _ = self
                    .events
                    .push_timeout(FromLink::Disconnected, CORE_PUSH_TIMEOUT);
                if let Err(LinkError::Shutdown) = end {
                    return Step::Stop;
                }
                let reason = end.err().map(|e| e.to_string()).unwrap_or_default();
                log_warn!("Lost the manager connection: {reason}; reconnecting");
                Step::Again
            }
            Err(e) => {
                let text = e.to_string();
                if text != *last_error {
                    match e {
                        LinkError::Refused(_) => log_error!("{text}"),
                        _ => log_warn!(
                            "Cannot reach manager at {}: {text}; retrying every {}",
                            self.cfg.manager_endpoint(),
                            hirte_common::timespan::format_timespan(self.cfg.reconnect_interval)
                        ),
                    }
                    *last_error = text;
                } else {
                    log_debug!("Still cannot reach the manager: {text}");
                }
                Step::Wait
            }
        }
    }

    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.shutdown.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(CORE_TICK));
        }
    }

    /// Resolves the host anew on each attempt (its address may have moved), connects, registers.
    /// With `ManagerAddress=unix:path=P` it connects to that socket instead (a missing socket
    /// fails at once and is retried like an unreachable host).
    fn connect(&mut self) -> Result<(LinkStream, FrameDecoder), LinkError> {
        // [impl->req~link.unix-socket~1]
        if let Some(path) = self.cfg.manager_socket.clone() {
            let stream = UnixStream::connect(&path)
                .map(LinkStream::Unix)
                .map_err(|e| LinkError::Connect(format!("{}: {e}", path.display())))?;
            stream
                .set_write_timeout(Some(LINK_WRITE_TIMEOUT))
                .map_err(LinkError::Io)?;
            let decoder = self.register(&stream)?;
            return Ok((stream, decoder));
        }
        let addrs: Vec<SocketAddr> = (self.cfg.manager_host.as_str(), self.cfg.manager_port)
            .to_socket_addrs()
            .map_err(|e| LinkError::Resolve(e.to_string()))?
            .collect();
        let mut last = LinkError::Resolve("no addresses".to_string());
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    let stream = LinkStream::Tcp(stream);
                    stream.set_nodelay().map_err(LinkError::Io)?;
                    stream
                        .set_write_timeout(Some(LINK_WRITE_TIMEOUT))
                        .map_err(LinkError::Io)?;
                    let decoder = self.register(&stream)?;
                    return Ok((stream, decoder));
                }
                Err(e) => last = LinkError::Connect(format!("{addr}: {e}")),
            }
        }
        Err(last)
    }

    fn send(&mut self, stream: &LinkStream, mut msg: Message) -> Result<(), LinkError> {
        let bytes = self
            .serials
            .encode(&mut msg, MAX_FRAME_SIZE)
            .map_err(|e| LinkError::Protocol(e.to_string()))?;
        Self::write(stream, &bytes)
    }

    fn write(stream: &LinkStream, bytes: &[u8]) -> Result<(), LinkError> {
        let mut s = stream;
        s.write_all(bytes).map_err(LinkError::Io)
    }

    // [impl->req~agent.register~1]
    /// Registers and waits for the manager's answer to that call. Returns the decoder, which
    /// may already hold the manager's next frames (they can arrive in the same read).
    fn register(&mut self, stream: &LinkStream) -> Result<FrameDecoder, LinkError> {
        // Frames queued for an earlier connection belong to calls the manager has given up;
        // the new session number makes the core drop results of jobs from earlier ones.
        self.session.fetch_add(1, Ordering::SeqCst);
        while self.outbound.try_pop().is_some() {}
        let mut call = register_call(&self.cfg.node_name)
            .ok_or_else(|| LinkError::Protocol("cannot build Register".to_string()))?;
        let bytes = self
            .serials
            .encode(&mut call, MAX_FRAME_SIZE)
            .map_err(|e| LinkError::Protocol(e.to_string()))?;
        let serial = call.get_serial();
        Self::write(stream, &bytes)?;
        let mut decoder = FrameDecoder::new(MAX_FRAME_SIZE);
        let mut buf = vec![0u8; READ_CHUNK];
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut s = stream;
        let no_answer = || {
            LinkError::Protocol(format!(
                "no answer to Register within {}",
                hirte_common::timespan::format_timespan(HANDSHAKE_TIMEOUT)
            ))
        };
        loop {
            // Each read waits only for what is left of the handshake's time.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(no_answer());
            }
            stream.set_read_timeout(Some(left)).map_err(LinkError::Io)?;
            let n = match s.read(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(no_answer())
                }
                Err(e) => return Err(LinkError::Io(e)),
            };
            Self::take(&mut decoder, buf.get(..n).unwrap_or_default())?;
            if let Some(mut reply) = decoder
                .next_message()
                .map_err(|e| LinkError::Protocol(e.to_string()))?
            {
                stream.set_read_timeout(None).map_err(LinkError::Io)?;
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
                    self.cfg.manager_endpoint(),
                    self.cfg.node_name
                );
                return Ok(decoder);
            }
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
    fn session(&mut self, stream: &LinkStream, mut decoder: FrameDecoder) -> Result<(), LinkError> {
        let address = self.cfg.manager_address();
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
        self.deliver(&mut decoder, &mut last_rx)?;
        let interval = self.cfg.heartbeat_interval;
        let silence = self.cfg.effective_manager_timeout();

        let mut buf = vec![0u8; READ_CHUNK];
        let mut next_beat = Instant::now();
        loop {
            if self.shutdown.load(Ordering::Relaxed) {
                return Err(LinkError::Shutdown);
            }
            let now = Instant::now();
            if now >= next_beat {
                if let Some(hb) = Self::heartbeat() {
                    self.send(stream, hb)?;
                }
                next_beat = now + interval;
            }
            if now.saturating_duration_since(last_rx) > silence {
                return Err(LinkError::ManagerSilent(silence));
            }
            let wait = next_beat
                .saturating_duration_since(now)
                .min(CORE_TICK)
                .max(Duration::from_millis(1));
            let [sock_ready, wake_ready] =
                poll_readable([stream.as_fd(), self.outbound.wake_fd()], wait)
                    .map_err(|e| LinkError::Io(e.into()))?;
            if wake_ready {
                self.outbound.clear_wake();
            }
            while let Some(bytes) = self.outbound.try_pop() {
                Self::write(stream, &bytes)?;
            }
            if !sock_ready {
                continue;
            }
            let mut s = stream;
            let n = s.read(&mut buf).map_err(LinkError::Io)?;
            Self::take(&mut decoder, buf.get(..n).unwrap_or_default())?;
            self.deliver(&mut decoder, &mut last_rx)?;
        }
    }

    /// Feeds what one read returned to the decoder; nothing read means the manager closed.
    fn take(decoder: &mut FrameDecoder, bytes: &[u8]) -> Result<(), LinkError> {
        if bytes.is_empty() {
            return Err(LinkError::Protocol(
                "manager closed the connection".to_string(),
            ));
        }
        decoder
            .push(bytes)
            .map_err(|e| LinkError::Protocol(e.to_string()))
    }

    /// Hands every complete frame to the core (heartbeat echoes only count as liveness).
    fn deliver(&self, decoder: &mut FrameDecoder, last_rx: &mut Instant) -> Result<(), LinkError> {
        while let Some(msg) = decoder
            .next_message()
            .map_err(|e| LinkError::Protocol(e.to_string()))?
        {
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
