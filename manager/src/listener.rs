//! Accepts agent connections and gives each its own thread, within fixed bounds.

use crate::events::{LinkEvent, LinkHandle, LiveLinks};
use crate::link::LinkThread;
use hirte_common::bounds::{CONNECTION_THREAD_STACK, MAX_NODES, MAX_PENDING_HANDSHAKES};
use hirte_common::linkio::prepare;
use hirte_common::queue::BoundedQueue;
use hirte_common::stream::{LinkStream, Peer};
use hirte_common::tls::{Reloadable, ServerPolicy, TlsFiles};
use hirte_common::wake::Waker;
use hirte_common::{log_debug, log_error, log_info, log_peer, log_warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{umask, Mode};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Live connection threads: registered plus handshaking.
// [impl->req~bounds.connections~1]
pub const MAX_CONNECTIONS: usize = MAX_NODES + MAX_PENDING_HANDSHAKES;

pub struct Listener {
    listener: TcpListener,
    /// `ManagerSocket=`: the local agent's Unix socket, polled by this same thread.
    unix: Option<UnixListener>,
    events: Arc<BoundedQueue<LinkEvent>>,
    /// Stops accepting (set on SIGTERM).
    shutdown: Arc<AtomicBool>,
    /// Ends the connections (set once the core has finished its shutdown).
    stop_links: Arc<AtomicBool>,
    /// TLS on the TCP link: the policy, and the files it is re-read from on SIGHUP.
    tls: Option<Arc<Reloadable<ServerPolicy>>>,
    tls_files: TlsFiles,
    /// Set by SIGHUP: re-read the TLS files.
    tls_reload: Arc<AtomicBool>,
    /// UIDs that may connect to the Unix socket (SO_PEERCRED).
    socket_uids: Vec<u32>,
    /// Connection threads running (registered plus handshaking); main waits for it at exit.
    live: Arc<AtomicUsize>,
    /// Their handles, to wake them all after a TLS reload (main does it at shutdown).
    links: Arc<LiveLinks>,
    /// Rung on SIGTERM, SIGINT and SIGHUP, and by main at shutdown: the thread sleeps in
    /// `poll()` with no timer.
    wake: Arc<Waker>,
}

impl Listener {
    #[allow(clippy::too_many_arguments)] // each is one handle the thread shares with main
    pub fn new(
        listener: TcpListener,
        unix: Option<UnixListener>,
        events: Arc<BoundedQueue<LinkEvent>>,
        shutdown: Arc<AtomicBool>,
        stop_links: Arc<AtomicBool>,
        tls: Option<Arc<Reloadable<ServerPolicy>>>,
        tls_files: TlsFiles,
        tls_reload: Arc<AtomicBool>,
        socket_uids: Vec<u32>,
        live: Arc<AtomicUsize>,
        links: Arc<LiveLinks>,
        wake: Arc<Waker>,
    ) -> Self {
        Listener {
            listener,
            unix,
            events,
            shutdown,
            stop_links,
            tls,
            tls_files,
            tls_reload,
            socket_uids,
            live,
            links,
            wake,
        }
    }

    /// Waits for a connection on either listening socket and accepts it. `None`: nothing
    /// this round (a wake-up to look at the flags, a failed accept, which is logged). When both are ready,
    /// `unix_first` says which goes first, so that a flood on one cannot starve the other.
    // [impl->req~link.unix-socket~1]
    fn accept(&self, unix_first: bool) -> Option<(LinkStream, Peer)> {
        // Fixed-size: the last slot is polled only when there is a Unix socket.
        let tcp = self.listener.as_fd();
        let mut fds = [
            PollFd::new(self.wake.fd(), PollFlags::POLLIN),
            PollFd::new(tcp, PollFlags::POLLIN),
            PollFd::new(
                self.unix.as_ref().map_or(tcp, |u| u.as_fd()),
                PollFlags::POLLIN,
            ),
        ];
        let n = if self.unix.is_some() { 3 } else { 2 };
        // [impl->req~manager.idle-no-wakeups~1]
        match poll(fds.get_mut(..n).unwrap_or_default(), PollTimeout::NONE) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => return None,
            Ok(_) => {}
            Err(e) => {
                log_error!("poll on the listening sockets failed: {e}");
                return None;
            }
        }
        let ready = |i: usize| {
            fds.get(..n)
                .and_then(|f| f.get(i))
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        if ready(0) {
            // A flag to look at (the loop does): no connection this round.
            self.wake.clear();
            return None;
        }
        let accepted = match (&self.unix, ready(1), ready(2)) {
            (Some(u), tcp, true) if unix_first || !tcp => match u.accept() {
                Ok((s, _)) => {
                    return self
                        .peer_allowed(&s)
                        .then_some((LinkStream::Unix(s), Peer::Unix))
                }
                Err(e) => Err(e),
            },
            (_, true, _) => self
                .listener
                .accept()
                .map(|(s, a)| (LinkStream::Tcp(s), Peer::Ip(a.ip()))),
            _ => return None,
        };
        accepted.map_err(|e| log_warn!("accept failed: {e}")).ok()
    }

    /// The Unix socket is plaintext: only the users configured (root by default) may use it.
    // [impl->req~link.unix-peercred~1]
    fn peer_allowed(&self, s: &UnixStream) -> bool {
        match getsockopt(s, PeerCredentials) {
            Ok(c) if c.uid() == 0 || self.socket_uids.contains(&c.uid()) => true,
            Ok(c) => {
                log_peer!(
                    Warn,
                    format_args!("unix uid {}", c.uid()),
                    "Refused connection on the Unix socket from uid {} (pid {}): not root and \
                     not in ManagerSocketAllowedUsers",
                    c.uid(),
                    c.pid()
                );
                false
            }
            Err(e) => {
                log_peer!(
                    Warn,
                    "unix",
                    "Refused connection on the Unix socket: cannot read its peer: {e}"
                );
                false
            }
        }
    }

    /// SIGHUP: new connections use the re-read certificates and CRL; the link threads check
    /// their sessions against them. A file that no longer loads keeps the old policy.
    // [impl->req~tls.reload~1]
    fn reload_tls(&self) {
        if !self.tls_reload.swap(false, Ordering::Relaxed) {
            return;
        }
        let Some(tls) = &self.tls else {
            return;
        };
        match ServerPolicy::load(&self.tls_files) {
            Ok(p) => {
                tls.replace(p);
                log_info!("Reloaded the TLS certificates and revocation list");
                // Idle link threads sleep without a timer: each checks its session now.
                self.links.wake_all();
            }
            Err(e) => log_error!("Keeping the TLS settings in force: {e}"),
        }
    }

    pub fn run(self) {
        let handshakes = Arc::new(AtomicUsize::new(0));
        let live = self.live.clone();
        let mut next_id: u64 = 0;
        let mut unix_first = false;
        while !self.shutdown.load(Ordering::Relaxed) {
            unix_first = !unix_first;
            self.reload_tls();
            let Some((stream, peer)) = self.accept(unix_first) else {
                continue;
            };
            if handshakes.load(Ordering::SeqCst) >= MAX_PENDING_HANDSHAKES
                || live.load(Ordering::SeqCst) >= MAX_CONNECTIONS
            {
                // [impl->req~log.peer-rate-limit~1]
                log_peer!(
                    Warn,
                    peer,
                    "Refused connection from {}: too many connections ({} handshaking, {} live)",
                    peer,
                    handshakes.load(Ordering::SeqCst),
                    live.load(Ordering::SeqCst)
                );
                continue;
            }
            if let Err(e) = prepare(&stream) {
                log_warn!("Connection from {peer}: cannot set socket options: {e}");
                continue;
            }
            next_id += 1;
            let handle = match LinkHandle::new(next_id, peer) {
                Ok(h) => h,
                Err(e) => {
                    log_warn!("Connection from {peer}: cannot allocate link: {e}");
                    continue;
                }
            };
            log_debug!("Connection {next_id} from {peer}");
            handshakes.fetch_add(1, Ordering::SeqCst);
            live.fetch_add(1, Ordering::SeqCst);
            self.links.insert(handle.clone());
            let link = LinkThread::new(
                stream,
                self.tls.clone(),
                handle,
                self.events.clone(),
                handshakes.clone(),
                self.stop_links.clone(),
            );
            let live2 = live.clone();
            let hs2 = handshakes.clone();
            let links = self.links.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("link-{next_id}"))
                .stack_size(CONNECTION_THREAD_STACK)
                .spawn(move || {
                    // A panic ends this connection only; it is logged, the manager goes on.
                    if catch_unwind(AssertUnwindSafe(|| link.run())).is_err() {
                        log_error!("Connection {next_id} thread panicked; connection dropped");
                    }
                    links.remove(next_id);
                    live2.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                log_error!("Cannot start a thread for connection {next_id}: {e}");
                self.links.remove(next_id);
                hs2.fetch_sub(1, Ordering::SeqCst);
                live.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// The manager's Unix socket file (`ManagerSocket=`): created at start, removed when dropped
/// (at clean exit) if it is still the socket this manager created.
// [impl->req~link.unix-socket~1]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Mode of the socket: the manager's user and group may connect.
    pub const MODE: u32 = 0o660;

    /// Listens on `path`. A stale socket there (left by a killed manager) is removed first;
    /// anything else at `path` is refused, never removed.
    pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), String> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(|e| {
                format!(
                    "ManagerSocket: cannot remove the old socket {}: {e}",
                    path.display()
                )
            })?,
            Ok(_) => {
                return Err(format!(
                    "ManagerSocket: {} exists and is not a socket; refusing to replace it",
                    path.display()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "ManagerSocket: cannot check {}: {e}",
                    path.display()
                ))
            }
        }
        // No moment with a wider mode: the socket is created 0660 (umask 0117), then set so.
        // Only this thread runs yet, so the process-wide umask is safe to change here.
        let old = umask(Mode::from_bits_truncate(0o117));
        let bound = UnixListener::bind(path);
        umask(old);
        let listener = bound.map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(format!("cannot check {}: {e}", path.display()));
            }
        };
        // From here on, an error drops `file`, which removes the socket again.
        let file = SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(Self::MODE))
            .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
        Ok((listener, file))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log_warn!("Cannot remove {}: {e}", self.path.display());
            }
        }
    }
}
