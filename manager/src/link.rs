//! One thread per agent connection: it frames bytes and nothing else.
//!
//! The thread checks that the first frame is a valid `Register` within the handshake timeout,
//! then hands every decoded message to the core thread through the bounded event queue, and
//! writes the frames the core queues for it. It owns no manager state, so a misbehaving peer
//! can at worst end its own connection.

use crate::events::{is_heartbeat, LinkEvent, LinkHandle};
use hirte_common::bounds::{
    CORE_TICK, HANDSHAKE_TIMEOUT, MAX_FRAME_SIZE, MAX_HANDSHAKE_FRAME_SIZE,
};
use hirte_common::frame::encode_message;
use hirte_common::handshake::check_register;
use hirte_common::linkio::{FrameLink, LinkIoError};
use hirte_common::protocol::error;
use hirte_common::queue::{BoundedQueue, PushError};
use hirte_common::stream::{LinkStream, Peer};
use hirte_common::tls::{check_node_name, PeerIdentity, Reloadable, ServerPolicy};
use hirte_common::{log_info, log_peer, log_warn};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connection thread waits for room in the core's queue before it gives up the link.
const CORE_PUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a link ended.
enum End {
    Protocol(String),
    Requested(String),
    /// Refused at the TLS handshake or at Register, already logged.
    Refused,
    Link(LinkIoError),
    CoreGone,
    Shutdown,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Protocol(e) => write!(f, "protocol error: {e}"),
            End::Requested(r) => write!(f, "{r}"),
            End::Refused => write!(f, "refused"),
            End::Link(e) => write!(f, "{e}"),
            End::CoreGone => write!(f, "manager core not accepting events"),
            End::Shutdown => write!(f, "manager shutting down"),
        }
    }
}

/// One of the `MAX_PENDING_HANDSHAKES` slots, held until the connection registers or ends.
struct HandshakeSlot(Option<Arc<AtomicUsize>>);

impl HandshakeSlot {
    fn release(&mut self) {
        if let Some(counter) = self.0.take() {
            counter.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.release();
    }
}

pub struct LinkThread {
    /// Taken by the thread when it starts.
    stream: Option<LinkStream>,
    handle: Arc<LinkHandle>,
    events: Arc<BoundedQueue<LinkEvent>>,
    handshakes: Arc<AtomicUsize>,
    shutdown: Arc<AtomicBool>,
    /// The TLS policy when the TCP link is TLS (never for the Unix socket).
    tls: Option<Arc<Reloadable<ServerPolicy>>>,
}

/// A TLS peer's verified certificate, and the policy generation it was last checked against.
struct Verified {
    identity: PeerIdentity,
    generation: u64,
}

impl LinkThread {
    pub fn new(
        stream: LinkStream,
        tls: Option<Arc<Reloadable<ServerPolicy>>>,
        handle: Arc<LinkHandle>,
        events: Arc<BoundedQueue<LinkEvent>>,
        handshakes: Arc<AtomicUsize>,
        shutdown: Arc<AtomicBool>,
    ) -> Self {
        LinkThread {
            stream: Some(stream),
            handle,
            events,
            handshakes,
            shutdown,
            tls,
        }
    }

    pub fn run(mut self) {
        // Gives the handshake slot back however this thread ends, a panic included.
        let mut slot = HandshakeSlot(Some(self.handshakes.clone()));
        let mut registered = false;
        let Some(stream) = self.stream.take() else {
            return;
        };
        let (end, mut link) = match self.open(stream) {
            Ok((mut link, verified)) => (
                self.serve(&mut link, verified, &mut registered, &mut slot)
                    .err()
                    .unwrap_or(End::Shutdown),
                Some(link),
            ),
            Err(end) => (end, None),
        };
        if let Some(l) = link.as_mut() {
            l.close();
        }
        self.handle.queue.close();
        let reason = end.to_string();
        if registered {
            // The core must learn of every registered link's end, or the node stays online.
            if let Err(PushError::Full(_)) = self.events.push_timeout(
                LinkEvent::Closed {
                    link: self.handle.id,
                    reason,
                },
                CORE_PUSH_TIMEOUT,
            ) {
                log_warn!(
                    "Connection {} from {}: core queue full, close not delivered",
                    self.handle.id,
                    self.handle.peer
                );
            }
        } else if !matches!(end, End::Refused) {
            // [impl->req~log.events~1]
            // [impl->req~log.peer-rate-limit~1]
            log_peer!(
                Info,
                self.handle.peer,
                "Connection from {} closed before registering: {}",
                self.handle.peer,
                reason
            );
        }
    }

    fn push_event(&self, ev: LinkEvent) -> Result<(), End> {
        match self.events.push_timeout(ev, CORE_PUSH_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(PushError::Full(_)) => Err(End::CoreGone),
            Err(PushError::Closed(_)) => Err(End::Shutdown),
        }
    }

    /// The connection's byte pump; for TLS, after a handshake within the handshake timeout.
    // [impl->req~tls.link~1]
    fn open(&self, stream: LinkStream) -> Result<(FrameLink, Option<Verified>), End> {
        let tls = match (&self.tls, self.handle.peer) {
            (Some(tls), Peer::Ip(_)) => tls,
            _ => return Ok((FrameLink::plain(stream, MAX_HANDSHAKE_FRAME_SIZE), None)),
        };
        let (generation, policy) = tls.get();
        let (session, seen) = policy.session().map_err(|e| End::Protocol(e.to_string()))?;
        let mut link = FrameLink::tls(stream, session, MAX_HANDSHAKE_FRAME_SIZE);
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let shown = link.handshake(deadline, HANDSHAKE_TIMEOUT).and_then(|()| {
            link.peer_certificates()
                .ok_or(LinkIoError::Closed)
                .map(<[_]>::to_vec)
        });
        let identity = shown
            .map_err(|e| e.to_string())
            .and_then(|chain| PeerIdentity::from_chain(&chain));
        match identity {
            Ok(identity) => Ok((
                link,
                Some(Verified {
                    identity,
                    generation,
                }),
            )),
            Err(reason) => {
                // [impl->req~tls.refusal-log~1]
                log_peer!(
                    Warn,
                    self.handle.peer,
                    "Refused connection from {}: claimed name (none yet), certificate subject {}: \
                     TLS handshake failed: {reason}",
                    self.handle.peer,
                    seen.subject()
                );
                Err(End::Refused)
            }
        }
    }

    fn serve(
        &self,
        link: &mut FrameLink,
        mut verified: Option<Verified>,
        registered: &mut bool,
        slot: &mut HandshakeSlot,
    ) -> Result<(), End> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        // `registered`: the core has the Register (it must learn of the end); `accepted`: it
        // took the name, so the link is a node's (full frame size, handshake slot freed).
        let mut accepted = false;
        let mut last_echo: Option<Instant> = None;
        loop {
            if self.shutdown.load(Ordering::Relaxed) {
                return Err(End::Shutdown);
            }
            // [impl->req~link.register-first~1]
            if *registered && !accepted && self.handle.is_accepted() {
                accepted = true;
                slot.release();
                link.set_max_frame(MAX_FRAME_SIZE);
            }
            // [impl->req~link.register-timeout~1]
            // [impl->req~link.idle-no-wakeups~1]
            // The only timers are real deadlines: the Register's before acceptance, the
            // certificate's end after it. Frames to send, a close request, shutdown and a TLS
            // reload all ring the queue's eventfd (`LinkHandle`, `LiveLinks::wake_all`).
            let timeout = if accepted {
                match verified.as_mut() {
                    Some(v) => {
                        self.recheck(v)?;
                        Some(v.identity.valid_for())
                    }
                    None => None,
                }
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(End::Protocol(format!(
                        "no Register within {}s",
                        HANDSHAKE_TIMEOUT.as_secs()
                    )));
                }
                Some(left)
            };
            // Queued frames go out before a requested close, so a refusal reaches the peer.
            // Waiting for the core's decision, only its answer is written: the peer's next
            // bytes are read once the core's acceptance lifted the handshake frame cap.
            if *registered && !accepted {
                link.turn_write_only(&self.handle.queue, timeout)
            } else {
                link.turn(&self.handle.queue, timeout)
            }
            .map_err(End::Link)?;
            if let Some(reason) = self.handle.close_requested() {
                return Err(End::Requested(reason));
            }
            // [impl->req~link.bad-frame~1]
            while let Some(msg) = link.next_message().map_err(End::Link)? {
                // [impl->req~link.heartbeat~1]
                // [impl->req~manager.idle-no-wakeups~1]
                // A node's heartbeat is answered here, in the wake-up that read it, and its
                // time left for the core: the core sleeps on. One per `CORE_TICK` at most;
                // more go to the core, which charges them to the node's unasked budget.
                if accepted
                    && is_heartbeat(&msg)
                    && last_echo.is_none_or(|t| t.elapsed() >= CORE_TICK)
                {
                    last_echo = Some(Instant::now());
                    self.handle.heard_now();
                    // A full queue drops the echo: the agent's own threshold judges that.
                    let _ = self.handle.echo_heartbeat();
                    continue;
                }
                if *registered {
                    self.push_event(LinkEvent::Frame {
                        link: self.handle.id,
                        msg,
                        size: link.last_frame_len(),
                    })?;
                    continue;
                }
                // [impl->req~link.register-first~1]
                // Each refusal is one record (here or in check_identity), rate-limited per
                // peer; the end is then not logged again as "closed before registering".
                let peer = self.handle.peer;
                let checked = check_register(&msg).map_err(|e| {
                    log_peer!(Warn, peer, "Refused connection from {peer}: {e}");
                    e.to_string()
                });
                let name =
                    checked.and_then(|name| self.check_identity(&name, &verified).map(|()| name));
                match name {
                    Ok(name) => {
                        *registered = true;
                        self.push_event(LinkEvent::Register {
                            handle: self.handle.clone(),
                            name,
                            call: msg,
                        })?;
                    }
                    Err(e) => {
                        Self::refuse(link, &msg, &e);
                        return Err(End::Refused);
                    }
                }
            }
        }
    }

    /// On TLS, the name registered must be one the certificate carries; every refusal and
    /// every accepted identity is one log line.
    // [impl->req~tls.identity~1]
    // [impl->req~tls.refusal-log~1]
    fn check_identity(&self, name: &str, verified: &Option<Verified>) -> Result<(), String> {
        let Some(v) = verified else {
            return Ok(());
        };
        let id = &v.identity;
        match check_node_name(&id.names, name) {
            Ok(()) => {
                log_info!(
                    "Connection from {}: certificate {} verified for node '{name}' \
                     (SHA-256 fingerprint {})",
                    self.handle.peer,
                    id.subject,
                    id.fingerprint
                );
                Ok(())
            }
            Err(why) => {
                let reason = format!("the certificate does not carry the name '{name}': {why}");
                log_peer!(
                    Warn,
                    self.handle.peer,
                    "Refused connection from {}: claimed name '{name}', certificate subject {}: \
                     {reason}",
                    self.handle.peer,
                    id.subject
                );
                Err(reason)
            }
        }
    }

    /// A session whose certificate has expired, or is no longer valid under the policy that
    /// SIGHUP loaded (a new CRL), is closed.
    // [impl->req~tls.reload~1]
    fn recheck(&self, v: &mut Verified) -> Result<(), End> {
        if v.identity.expired() {
            return Err(self.revoked(v, "the certificate has expired".to_string()));
        }
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let (generation, policy) = tls.get();
        if generation != v.generation {
            v.generation = generation;
            policy
                .recheck(&v.identity.chain)
                .map_err(|e| self.revoked(v, e))?;
        }
        Ok(())
    }

    fn revoked(&self, v: &Verified, reason: String) -> End {
        log_warn!(
            "Closing connection {} from {}: certificate subject {} is no longer valid: {reason}",
            self.handle.id,
            self.handle.peer,
            v.identity.subject
        );
        End::Requested(format!("certificate no longer valid: {reason}"))
    }

    /// Answers a bad first message with an error when it was a call, so the peer learns why.
    fn refuse(link: &mut FrameLink, msg: &dbus::Message, reason: &str) {
        if msg.msg_type() != dbus::message::MessageType::MethodCall {
            return;
        }
        let Ok(text) = std::ffi::CString::new(reason) else {
            return;
        };
        let Ok(name) = dbus::strings::ErrorName::new(error::PROTOCOL) else {
            return;
        };
        let mut reply = msg.error(&name, &text);
        reply.set_serial(1);
        if let Ok(bytes) = encode_message(&reply, MAX_HANDSHAKE_FRAME_SIZE) {
            let _ = link.write_frame(&bytes);
        }
    }
}

#[cfg(test)]
#[path = "link/tests.rs"]
mod tests;
