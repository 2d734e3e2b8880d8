//! The one read/write loop of a link connection, for the manager's connection threads and
//! the agent's link thread alike: wait for the peer or for queued frames, write what is
//! queued, read what arrived into the frame decoder. Plain or TLS (rustls driven by hand over
//! the blocking socket, so that one `poll()` still covers the socket and the queue's eventfd,
//! and a partial TLS record never blocks the thread).

use crate::bounds::{LINK_WRITE_TIMEOUT, READ_CHUNK};
use crate::frame::{FrameDecoder, FrameError};
use crate::queue::BoundedQueue;
use crate::stream::LinkStream;
use crate::wait::poll_readable_until;
use dbus::Message;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};
use rustls::pki_types::CertificateDer;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// Why a link connection cannot go on.
#[derive(Debug)]
pub enum LinkIoError {
    /// The peer closed the connection.
    Closed,
    Io(io::Error),
    Frame(FrameError),
    /// TLS refused the peer or its bytes (a failed handshake, a bad record, an alert).
    Tls(rustls::Error),
    /// The TLS handshake did not finish in time.
    HandshakeTimeout(Duration),
}

impl fmt::Display for LinkIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkIoError::Closed => write!(f, "connection closed by peer"),
            LinkIoError::Io(e) => write!(f, "I/O error: {e}"),
            LinkIoError::Frame(e) => write!(f, "protocol error: {e}"),
            LinkIoError::Tls(e) => write!(f, "{e}"),
            LinkIoError::HandshakeTimeout(d) => write!(
                f,
                "TLS handshake not finished within {}",
                crate::timespan::format_timespan(*d)
            ),
        }
    }
}

impl std::error::Error for LinkIoError {}

impl From<io::Error> for LinkIoError {
    fn from(e: io::Error) -> Self {
        LinkIoError::Io(e)
    }
}

impl From<nix::Error> for LinkIoError {
    fn from(e: nix::Error) -> Self {
        LinkIoError::Io(e.into())
    }
}

impl From<FrameError> for LinkIoError {
    fn from(e: FrameError) -> Self {
        LinkIoError::Frame(e)
    }
}

/// One connection's bytes: the socket, and the TLS session when the link is TLS.
pub struct FrameLink {
    stream: LinkStream,
    tls: Option<Box<rustls::Connection>>,
    decoder: FrameDecoder,
    /// Fixed read buffer: a large frame takes several reads.
    buf: Box<[u8]>,
}

impl FrameLink {
    /// A plaintext link (TCP without TLS files, or the Unix socket).
    pub fn plain(stream: LinkStream, max_frame: usize) -> Self {
        FrameLink {
            stream,
            tls: None,
            decoder: FrameDecoder::new(max_frame),
            buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
        }
    }

    /// A TLS link; call [`FrameLink::handshake`] before anything else.
    // [impl->req~tls.link~1]
    pub fn tls(
        stream: LinkStream,
        session: impl Into<rustls::Connection>,
        max_frame: usize,
    ) -> Self {
        let mut link = Self::plain(stream, max_frame);
        link.tls = Some(Box::new(session.into()));
        link
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn set_max_frame(&mut self, max: usize) {
        self.decoder.set_max_frame(max);
    }

    /// The peer's certificate chain, once a TLS handshake has verified it.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.tls.as_ref().and_then(|t| t.peer_certificates())
    }

    /// Runs the TLS handshake to its end or `deadline` (nothing to do on a plain link).
    /// A refusal is sent to the peer as a TLS alert before the error returns.
    // [impl->req~tls.link~1]
    pub fn handshake(&mut self, deadline: Instant, timeout: Duration) -> Result<(), LinkIoError> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Ok(());
        };
        while tls.is_handshaking() {
            flush_tls(tls, &self.stream)?;
            if !tls.is_handshaking() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LinkIoError::HandshakeTimeout(timeout));
            }
            let [ready] = poll_readable_until([self.stream.as_fd()], Some(left))?;
            if ready {
                read_tls(tls, &self.stream)?;
            }
        }
        flush_tls(tls, &self.stream)?;
        Ok(())
    }

    /// Writes one encoded frame, blocking at most `LINK_WRITE_TIMEOUT` for the whole frame: a
    /// peer that takes a few bytes now and then cannot hold the thread longer than that.
    // [impl->req~link.write-deadline~1]
    pub fn write_frame(&mut self, bytes: &[u8]) -> Result<(), LinkIoError> {
        let deadline = Instant::now() + LINK_WRITE_TIMEOUT;
        let Some(tls) = self.tls.as_deref_mut() else {
            let mut w = DeadlineWriter {
                stream: &self.stream,
                deadline,
            };
            return w.write_all(bytes).map_err(LinkIoError::Io);
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            // rustls takes what fits its send buffer; flushing makes room for the rest.
            let n = tls.writer().write(rest)?;
            rest = rest.get(n..).unwrap_or_default();
            flush_tls_until(tls, &self.stream, deadline)?;
            if n == 0 && !rest.is_empty() && !tls.wants_write() {
                return Err(LinkIoError::Io(ErrorKind::WriteZero.into()));
            }
        }
        Ok(())
    }

    /// One turn of a link's loop: waits up to `timeout` (`None`: no timer, only the fds) for
    /// bytes from the peer or a wake-up of `outbound`, writes every frame queued there, then
    /// reads once if the peer sent something. Complete frames are then taken with
    /// [`FrameLink::next_message`]. Anything else the loop must look at (a close request, a
    /// shutdown or reload flag) wakes it through `outbound` ([`BoundedQueue::wake_only`]).
    pub fn turn(
        &mut self,
        outbound: &BoundedQueue<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<(), LinkIoError> {
        let [sock_ready, wake_ready] = self.wait(Some(outbound.wake_fd()), timeout)?;
        if wake_ready {
            outbound.clear_wake();
        }
        while let Some(bytes) = outbound.try_pop() {
            self.write_frame(&bytes)?;
        }
        if sock_ready {
            self.read_once()?;
        }
        Ok(())
    }

    /// Like [`FrameLink::turn`] without reading: waits up to `timeout` for a wake-up of
    /// `outbound` and writes what is queued. For a connection that must not be read yet.
    pub fn turn_write_only(
        &mut self,
        outbound: &BoundedQueue<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<(), LinkIoError> {
        let [wake_ready] = poll_readable_until([outbound.wake_fd()], timeout)?;
        if wake_ready {
            outbound.clear_wake();
        }
        while let Some(bytes) = outbound.try_pop() {
            self.write_frame(&bytes)?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for bytes from the peer and reads them; false: none came.
    pub fn read_within(&mut self, timeout: Duration) -> Result<bool, LinkIoError> {
        let [ready, _] = self.wait(None, Some(timeout))?;
        if ready {
            self.read_once()?;
        }
        Ok(ready)
    }

    /// The next complete message received, if any.
    pub fn next_message(&mut self) -> Result<Option<Message>, LinkIoError> {
        Ok(self.decoder.next_message()?)
    }

    /// Bytes of the last message taken (see `FrameDecoder::last_frame_len`).
    pub fn last_frame_len(&self) -> usize {
        self.decoder.last_frame_len()
    }

    /// Polls the socket and `other`; the socket counts as ready at once when TLS holds
    /// decrypted bytes not yet read.
    fn wait(
        &mut self,
        other: Option<BorrowedFd<'_>>,
        timeout: Option<Duration>,
    ) -> Result<[bool; 2], LinkIoError> {
        if let Some(tls) = self.tls.as_deref_mut() {
            let state = tls.process_new_packets().map_err(LinkIoError::Tls)?;
            if state.plaintext_bytes_to_read() > 0 {
                return Ok([true, false]);
            }
        }
        match other {
            Some(fd) => Ok(poll_readable_until([self.stream.as_fd(), fd], timeout)?),
            None => {
                let [sock] = poll_readable_until([self.stream.as_fd()], timeout)?;
                Ok([sock, false])
            }
        }
    }

    /// One read from the socket (it is readable) into the decoder; what TLS decrypted first.
    fn read_once(&mut self) -> Result<(), LinkIoError> {
        let n = match self.tls.as_deref_mut() {
            None => match (&self.stream).read(&mut self.buf) {
                Ok(0) => return Err(LinkIoError::Closed),
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => 0,
                Err(e) => return Err(e.into()),
            },
            Some(tls) => match take_plaintext(tls, &mut self.buf)? {
                Some(n) => n,
                None => {
                    read_tls(tls, &self.stream)?;
                    take_plaintext(tls, &mut self.buf)?.unwrap_or(0)
                }
            },
        };
        self.decoder.push(self.buf.get(..n).unwrap_or_default())?;
        Ok(())
    }

    /// Ends the connection: a TLS close_notify (best effort), then the socket.
    pub fn close(&mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.send_close_notify();
            let _ = flush_tls(tls, &self.stream);
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Writes every TLS record rustls has ready (handshake, data, alerts), within one
/// `LINK_WRITE_TIMEOUT`.
fn flush_tls(tls: &mut rustls::Connection, stream: &LinkStream) -> Result<(), LinkIoError> {
    flush_tls_until(tls, stream, Instant::now() + LINK_WRITE_TIMEOUT)
}

/// Writes every TLS record rustls has ready, by `deadline`.
fn flush_tls_until(
    tls: &mut rustls::Connection,
    stream: &LinkStream,
    deadline: Instant,
) -> Result<(), LinkIoError> {
    let mut w = DeadlineWriter { stream, deadline };
    while tls.wants_write() {
        tls.write_tls(&mut w)?;
    }
    Ok(())
}

/// Writes to the socket without blocking past `deadline`: each write waits (poll) for room
/// only as long as is left, then sends what fits. The socket's own write timeout would
/// restart with every chunk the kernel takes, so a slow reader could stretch one frame
/// without end.
struct DeadlineWriter<'a> {
    stream: &'a LinkStream,
    deadline: Instant,
}

impl Write for DeadlineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!("frame not written within {}s", LINK_WRITE_TIMEOUT.as_secs()),
                ));
            }
            let mut pfd = [PollFd::new(self.stream.as_fd(), PollFlags::POLLOUT)];
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            match poll(&mut pfd, PollTimeout::from(ms)) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match send(self.stream.as_fd().as_raw_fd(), buf, flags) {
                Ok(n) => return Ok(n),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One read of TLS records from the socket, and their processing. A refusal (bad record,
/// failed verification) is sent to the peer as an alert before the error returns.
fn read_tls(tls: &mut rustls::Connection, stream: &LinkStream) -> Result<(), LinkIoError> {
    let mut s = stream;
    match tls.read_tls(&mut s) {
        Ok(0) => return Err(LinkIoError::Closed),
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
            return Ok(())
        }
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = tls.process_new_packets() {
        let _ = flush_tls(tls, stream);
        return Err(LinkIoError::Tls(e));
    }
    // Key updates and the like want an answer.
    flush_tls(tls, stream)
}

/// Decrypted bytes, if TLS holds any; `None`: none yet (a record is still incomplete).
fn take_plaintext(
    tls: &mut rustls::Connection,
    buf: &mut [u8],
) -> Result<Option<usize>, LinkIoError> {
    match tls.reader().read(buf) {
        Ok(0) => Err(LinkIoError::Closed),
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(LinkIoError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// Socket options every link connection gets: no Nagle delay, bounded blocking writes and reads.
pub fn prepare(stream: &LinkStream) -> io::Result<()> {
    stream.set_nodelay()?;
    stream.set_write_timeout(Some(LINK_WRITE_TIMEOUT))?;
    // Reads follow a poll that said readable; the timeout only bounds a spurious wake-up.
    stream.set_read_timeout(Some(LINK_WRITE_TIMEOUT))
}
