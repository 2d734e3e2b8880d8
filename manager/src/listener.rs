//! Accepts agent connections and gives each its own thread, within fixed bounds.

use crate::events::{LinkEvent, LinkHandle};
use crate::link::LinkThread;
use hirte_common::bounds::{
    CONNECTION_THREAD_STACK, CORE_TICK, LINK_WRITE_TIMEOUT, MAX_NODES, MAX_PENDING_HANDSHAKES,
};
use hirte_common::queue::BoundedQueue;
use hirte_common::{log_debug, log_error, log_warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Live connection threads: registered plus handshaking.
// [impl->req~bounds.connections~1]
pub const MAX_CONNECTIONS: usize = MAX_NODES + MAX_PENDING_HANDSHAKES;

pub struct Listener {
    pub listener: TcpListener,
    pub events: Arc<BoundedQueue<LinkEvent>>,
    /// Stops accepting (set on SIGTERM).
    pub shutdown: Arc<AtomicBool>,
    /// Ends the connections (set once the core has finished its shutdown).
    pub stop_links: Arc<AtomicBool>,
}

impl Listener {
    pub fn run(self) {
        let handshakes = Arc::new(AtomicUsize::new(0));
        let live = Arc::new(AtomicUsize::new(0));
        let mut next_id: u64 = 0;
        while !self.shutdown.load(Ordering::Relaxed) {
            let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
            let ms = u16::try_from(CORE_TICK.as_millis()).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    log_error!("poll on the listening socket failed: {e}");
                    continue;
                }
            }
            let (stream, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) => {
                    log_warn!("accept failed: {e}");
                    continue;
                }
            };
            if handshakes.load(Ordering::SeqCst) >= MAX_PENDING_HANDSHAKES
                || live.load(Ordering::SeqCst) >= MAX_CONNECTIONS
            {
                log_warn!(
                    "Refused connection from {}: too many connections ({} handshaking, {} live)",
                    peer.ip(),
                    handshakes.load(Ordering::SeqCst),
                    live.load(Ordering::SeqCst)
                );
                continue;
            }
            let _ = stream.set_nodelay(true);
            if let Err(e) = stream.set_write_timeout(Some(LINK_WRITE_TIMEOUT)) {
                log_warn!(
                    "Connection from {}: cannot set write timeout: {e}",
                    peer.ip()
                );
                continue;
            }
            next_id += 1;
            let handle = match LinkHandle::new(next_id, peer.ip()) {
                Ok(h) => h,
                Err(e) => {
                    log_warn!("Connection from {}: cannot allocate link: {e}", peer.ip());
                    continue;
                }
            };
            log_debug!("Connection {next_id} from {}", peer.ip());
            handshakes.fetch_add(1, Ordering::SeqCst);
            live.fetch_add(1, Ordering::SeqCst);
            let link = LinkThread {
                stream,
                handle,
                events: self.events.clone(),
                handshakes: handshakes.clone(),
                shutdown: self.stop_links.clone(),
            };
            let live2 = live.clone();
            let hs2 = handshakes.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("link-{next_id}"))
                .stack_size(CONNECTION_THREAD_STACK)
                .spawn(move || {
                    // A panic ends this connection only; it is logged, the manager goes on.
                    if catch_unwind(AssertUnwindSafe(|| link.run())).is_err() {
                        log_error!("Connection {next_id} thread panicked; connection dropped");
                    }
                    live2.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                log_error!("Cannot start a thread for connection {next_id}: {e}");
                hs2.fetch_sub(1, Ordering::SeqCst);
                live.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}
