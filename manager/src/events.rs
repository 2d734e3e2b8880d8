//! What connection threads and the core thread exchange.

use dbus::Message;
use hirte_common::bounds::LINK_OUTBOUND_DEPTH;
use hirte_common::queue::BoundedQueue;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

pub type LinkId = u64;

/// The core's side of one connection: a bounded queue of frames to send, and a close request.
pub struct LinkHandle {
    pub id: LinkId,
    pub peer: IpAddr,
    pub queue: BoundedQueue<Message>,
    close: Mutex<Option<String>>,
}

impl LinkHandle {
    pub fn new(id: LinkId, peer: IpAddr) -> nix::Result<Arc<Self>> {
        Ok(Arc::new(LinkHandle {
            id,
            peer,
            queue: BoundedQueue::new(LINK_OUTBOUND_DEPTH)?,
            close: Mutex::new(None),
        }))
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

    pub fn close_requested(&self) -> Option<String> {
        self.close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
    /// Any later message from a registered link.
    Frame { link: LinkId, msg: Message },
    /// A registered link ended.
    Closed { link: LinkId, reason: String },
}
