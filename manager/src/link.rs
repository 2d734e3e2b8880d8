//! One thread per agent connection: it frames bytes and nothing else.
//!
//! The thread checks that the first frame is a valid `Register` within the handshake timeout,
//! then hands every decoded message to the core thread through the bounded event queue, and
//! writes the frames the core queues for it. It owns no manager state, so a misbehaving peer
//! can at worst end its own connection.

use crate::events::{LinkEvent, LinkHandle};
use hirte_common::bounds::{
    CORE_TICK, HANDSHAKE_TIMEOUT, MAX_FRAME_SIZE, MAX_HANDSHAKE_FRAME_SIZE, READ_CHUNK,
};
use hirte_common::frame::{encode_message, FrameDecoder};
use hirte_common::handshake::check_register;
use hirte_common::protocol::error;
use hirte_common::queue::{BoundedQueue, PushError};
use hirte_common::stream::LinkStream;
use hirte_common::wait::poll_readable;
use hirte_common::{log_info, log_warn};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connection thread waits for room in the core's queue before it gives up the link.
const CORE_PUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a link ended.
enum End {
    PeerClosed,
    Io(std::io::Error),
    Protocol(String),
    Requested(String),
    CoreGone,
    Shutdown,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::PeerClosed => write!(f, "connection closed by peer"),
            End::Io(e) => write!(f, "I/O error: {e}"),
            End::Protocol(e) => write!(f, "protocol error: {e}"),
            End::Requested(r) => write!(f, "{r}"),
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
    pub stream: LinkStream,
    pub handle: Arc<LinkHandle>,
    pub events: Arc<BoundedQueue<LinkEvent>>,
    pub handshakes: Arc<AtomicUsize>,
    pub shutdown: Arc<AtomicBool>,
}

impl LinkThread {
    pub fn run(self) {
        // Gives the handshake slot back however this thread ends, a panic included.
        let mut slot = HandshakeSlot(Some(self.handshakes.clone()));
        let mut registered = false;
        let end = self
            .serve(&mut registered, &mut slot)
            .err()
            .unwrap_or(End::Shutdown);
        let _ = self.stream.shutdown(Shutdown::Both);
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
        } else {
            // [impl->req~log.events~1]
            log_info!(
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

    fn serve(&self, registered: &mut bool, slot: &mut HandshakeSlot) -> Result<(), End> {
        let mut decoder = FrameDecoder::new(MAX_HANDSHAKE_FRAME_SIZE);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut stream = &self.stream;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            if self.shutdown.load(Ordering::Relaxed) {
                return Err(End::Shutdown);
            }
            // [impl->req~link.register-timeout~1]
            let timeout = if *registered {
                CORE_TICK
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(End::Protocol(format!(
                        "no Register within {}s",
                        HANDSHAKE_TIMEOUT.as_secs()
                    )));
                }
                left.min(CORE_TICK)
            };
            let [sock_ready, wake_ready] =
                poll_readable([self.stream.as_fd(), self.handle.queue.wake_fd()], timeout)
                    .map_err(|e| End::Io(e.into()))?;
            if wake_ready {
                self.handle.queue.clear_wake();
            }
            // Queued frames go out before a requested close, so a refusal reaches the peer.
            while let Some(bytes) = self.handle.queue.try_pop() {
                stream.write_all(&bytes).map_err(End::Io)?;
            }
            if let Some(reason) = self.handle.close_requested() {
                return Err(End::Requested(reason));
            }
            if !sock_ready {
                continue;
            }
            let n = stream.read(&mut buf).map_err(End::Io)?;
            if n == 0 {
                return Err(End::PeerClosed);
            }
            // [impl->req~link.bad-frame~1]
            decoder
                .push(buf.get(..n).unwrap_or_default())
                .map_err(|e| End::Protocol(e.to_string()))?;
            while let Some(msg) = decoder
                .next_message()
                .map_err(|e| End::Protocol(e.to_string()))?
            {
                if *registered {
                    self.push_event(LinkEvent::Frame {
                        link: self.handle.id,
                        msg,
                    })?;
                    continue;
                }
                // [impl->req~link.register-first~1]
                match check_register(&msg) {
                    Ok(name) => {
                        *registered = true;
                        slot.release();
                        decoder.set_max_frame(MAX_FRAME_SIZE);
                        self.push_event(LinkEvent::Register {
                            handle: self.handle.clone(),
                            name,
                            call: msg,
                        })?;
                    }
                    Err(e) => {
                        log_warn!("Refused connection from {}: {}", self.handle.peer, e);
                        self.refuse(&msg, &e.to_string());
                        return Err(End::Protocol(e.to_string()));
                    }
                }
            }
        }
    }

    /// Answers a bad first message with an error when it was a call, so the peer learns why.
    fn refuse(&self, msg: &dbus::Message, reason: &str) {
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
            let mut stream = &self.stream;
            let _ = stream.write_all(&bytes);
        }
    }
}
