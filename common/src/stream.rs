//! The manager <-> agent link's byte stream: a TCP connection or, for the local agent, a Unix
//! socket (`ManagerSocket=` / `ManagerAddress=unix:path=...`). Both carry the same frames;
//! everything above this type (framing, handshake, timeouts, bounds) is the same for both.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// One link connection.
// [impl->req~link.unix-socket~1]
#[derive(Debug)]
pub enum LinkStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Where a link connection came from, as the manager logs and reports it (`PeerIp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Ip(IpAddr),
    /// The manager's Unix socket: printed as `unix`.
    Unix,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Ip(ip) => write!(f, "{ip}"),
            Peer::Unix => write!(f, "unix"),
        }
    }
}

impl LinkStream {
    pub fn try_clone(&self) -> io::Result<LinkStream> {
        match self {
            LinkStream::Tcp(s) => s.try_clone().map(LinkStream::Tcp),
            LinkStream::Unix(s) => s.try_clone().map(LinkStream::Unix),
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            LinkStream::Tcp(s) => s.shutdown(how),
            LinkStream::Unix(s) => s.shutdown(how),
        }
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            LinkStream::Tcp(s) => s.set_read_timeout(t),
            LinkStream::Unix(s) => s.set_read_timeout(t),
        }
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            LinkStream::Tcp(s) => s.set_write_timeout(t),
            LinkStream::Unix(s) => s.set_write_timeout(t),
        }
    }

    /// `TCP_NODELAY` on TCP (frames are small and must not wait); nothing to do on a Unix socket.
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            LinkStream::Tcp(s) => s.set_nodelay(true),
            LinkStream::Unix(_) => Ok(()),
        }
    }
}

impl AsFd for LinkStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            LinkStream::Tcp(s) => s.as_fd(),
            LinkStream::Unix(s) => s.as_fd(),
        }
    }
}

impl Read for &LinkStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            LinkStream::Tcp(s) => (&*s).read(buf),
            LinkStream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &LinkStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            LinkStream::Tcp(s) => (&*s).write(buf),
            LinkStream::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match *self {
            LinkStream::Tcp(s) => (&*s).flush(),
            LinkStream::Unix(s) => (&*s).flush(),
        }
    }
}

impl Read for LinkStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for LinkStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~link.unix-socket~1]
    #[test]
    fn unix_and_tcp_streams_carry_bytes_alike() {
        let (a, b) = UnixStream::pair().unwrap();
        let a = LinkStream::Unix(a);
        let b = LinkStream::Unix(b);
        a.set_nodelay().unwrap();
        a.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        (&a).write_all(b"frame").unwrap();
        let mut buf = [0u8; 5];
        (&b).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"frame");
        let c = a.try_clone().unwrap();
        c.shutdown(Shutdown::Both).unwrap();
        assert_eq!((&b).read(&mut buf).unwrap(), 0);

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let t = LinkStream::Tcp(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        t.set_nodelay().unwrap();
        let (mut server, _) = l.accept().unwrap();
        (&t).write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        server.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        assert_eq!(Peer::Unix.to_string(), "unix");
        assert_eq!(
            Peer::Ip(IpAddr::from([127, 0, 0, 1])).to_string(),
            "127.0.0.1"
        );
    }
}
