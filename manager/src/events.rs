//! What connection threads and the core thread exchange.

use dbus::Message;
use hirte_common::bounds::{LINK_OUTBOUND_DEPTH, MAX_FRAME_SIZE};
use hirte_common::frame::{encode_message, FrameError, SerialCounter};
use hirte_common::protocol;
use hirte_common::queue::{BoundedQueue, PushError};
use hirte_common::stream::Peer;
use hirte_common::wait::{now_monotonic_us, now_realtime_us};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

pub type LinkId = u64;

/// The core's side of one connection: a bounded queue of frames to send, and a close request.
pub struct LinkHandle {
    pub id: LinkId,
    /// The peer's IP address, or `unix` for the manager's Unix socket.
    pub peer: Peer,
    /// Encoded frames, written by the connection thread in order.
    pub queue: BoundedQueue<Vec<u8>>,
    close: Mutex<Option<String>>,
    /// Set by the core once it accepted the node's name: only then does the connection
    /// thread lift the handshake frame cap and free its handshake slot.
    accepted: AtomicBool,
    /// Serials of what the manager sends on this link: the core's messages and the heartbeat
    /// echoes the connection thread sends itself share them.
    pub serials: SerialCounter,
    /// When the connection thread last answered a heartbeat itself, in µs of CLOCK_MONOTONIC
    /// and CLOCK_REALTIME (0: not yet); the core reads them for the node's liveness.
    heard_monotonic_us: AtomicU64,
    heard_realtime_us: AtomicU64,
}

/// When the connection thread last heard the node (see [`LinkHandle::heard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub monotonic_us: u64,
    pub realtime_us: u64,
}

impl LinkHandle {
    pub fn new(id: LinkId, peer: Peer) -> nix::Result<Arc<Self>> {
        Ok(Arc::new(LinkHandle {
            id,
            peer,
            queue: BoundedQueue::new(LINK_OUTBOUND_DEPTH)?,
            close: Mutex::new(None),
            accepted: AtomicBool::new(false),
            serials: SerialCounter::default(),
            heard_monotonic_us: AtomicU64::new(0),
            heard_realtime_us: AtomicU64::new(0),
        }))
    }

    /// The core accepted the Register: called before its reply is queued, so the connection
    /// thread knows before the agent can send anything else.
    // [impl->req~link.register-first~1]
    pub fn accept(&self) {
        self.accepted.store(true, Ordering::SeqCst);
    }

    pub fn is_accepted(&self) -> bool {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Asks the connection thread to send what is queued, then close.
    pub fn request_close(&self, reason: &str) {
        let mut c = self.close.lock().unwrap_or_else(PoisonError::into_inner);
        if c.is_none() {
            *c = Some(reason.to_string());
        }
        drop(c);
        // Wake the thread; a closed queue (thread already gone) is fine.
        self.queue.wake_only();
    }

    /// Frames and queues one message with the given serial. Encoding here, in the core,
    /// means a message too large for the link fails the one call, not the whole link.
    pub fn send(&self, mut msg: Message, serial: u32) -> Result<(), SendError> {
        msg.set_serial(serial);
        let bytes = encode_message(&msg, MAX_FRAME_SIZE).map_err(SendError::TooLarge)?;
        self.queue.try_push(bytes).map_err(|e| match e {
            PushError::Full(_) => SendError::Full,
            PushError::Closed(_) => SendError::Closed,
        })
    }

    /// A heartbeat the connection thread answered: the node is alive now.
    pub fn heard_now(&self) {
        self.heard_realtime_us
            .store(now_realtime_us(), Ordering::Relaxed);
        self.heard_monotonic_us
            .store(now_monotonic_us(), Ordering::Release);
    }

    /// The last heartbeat the connection thread answered itself, if any.
    pub fn heard(&self) -> Option<Heard> {
        let monotonic_us = self.heard_monotonic_us.load(Ordering::Acquire);
        (monotonic_us != 0).then(|| Heard {
            monotonic_us,
            realtime_us: self.heard_realtime_us.load(Ordering::Relaxed),
        })
    }

    /// Queues the manager's heartbeat echo with the link's next serial.
    // [impl->req~link.heartbeat~1]
    pub fn echo_heartbeat(&self) -> Result<(), SendError> {
        let echo = Message::new_signal(
            protocol::INTERNAL_MANAGER_PATH,
            protocol::INTERNAL_MANAGER_IFACE,
            "Heartbeat",
        )
        .map_err(|_| SendError::Closed)?;
        self.send(echo, self.serials.next_serial())
    }

    /// Test side of the connection thread: every message queued so far, decoded.
    #[cfg(test)]
    pub fn take_queued(&self) -> Vec<Message> {
        let mut d = hirte_common::frame::FrameDecoder::new(MAX_FRAME_SIZE);
        while let Some(bytes) = self.queue.try_pop() {
            d.push(&bytes).unwrap();
        }
        std::iter::from_fn(|| d.next_message().unwrap()).collect()
    }

    pub fn close_requested(&self) -> Option<String> {
        self.close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// An agent's `Heartbeat` signal.
pub fn is_heartbeat(msg: &Message) -> bool {
    msg.msg_type() == dbus::message::MessageType::Signal
        && msg.member().is_some_and(|m| &*m == "Heartbeat")
        && msg
            .interface()
            .is_some_and(|i| &*i == protocol::INTERNAL_AGENT_IFACE)
}

/// Every running connection thread's handle, so that a flag meant for all of them (shutdown,
/// a reloaded TLS policy) can wake each: the threads sleep on their queue's eventfd with no
/// timer. At most `MAX_CONNECTIONS` entries: the listener adds one only for a thread it
/// counted as live, and the thread's wrapper removes it when the thread ends.
// [impl->req~link.idle-no-wakeups~1]
#[derive(Default)]
pub struct LiveLinks {
    handles: Mutex<HashMap<LinkId, Arc<LinkHandle>>>,
}

impl LiveLinks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LinkId, Arc<LinkHandle>>> {
        self.handles.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn insert(&self, handle: Arc<LinkHandle>) {
        self.lock().insert(handle.id, handle);
    }

    pub fn remove(&self, id: LinkId) {
        self.lock().remove(&id);
    }

    /// Wakes every connection thread once, to look at its flags.
    pub fn wake_all(&self) {
        for h in self.lock().values() {
            h.queue.wake_only();
        }
    }
}

/// Why a message could not be queued for a link.
#[derive(Debug)]
pub enum SendError {
    TooLarge(FrameError),
    Full,
    Closed,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::TooLarge(e) => write!(f, "{e}"),
            SendError::Full => write!(f, "the link's send queue is full"),
            SendError::Closed => write!(f, "the link is closed"),
        }
    }
}

/// From a connection thread to the core.
pub enum LinkEvent {
    /// A syntactically valid Register arrived; the core decides on it.
    Register {
        handle: Arc<LinkHandle>,
        name: String,
        call: Message,
    },
    /// Any later message from a registered link, `size` bytes on the wire.
    Frame {
        link: LinkId,
        msg: Message,
        size: usize,
    },
    /// A registered link ended.
    Closed { link: LinkId, reason: String },
}

impl LinkEvent {
    /// Bytes the event holds, for the core queue's byte budget: a frame is kept as it came.
    pub fn weight(&self) -> usize {
        match self {
            LinkEvent::Frame { size, .. } => *size,
            LinkEvent::Register { .. } | LinkEvent::Closed { .. } => 0,
        }
    }
}
