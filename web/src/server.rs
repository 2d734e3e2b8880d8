//! The HTTP server: one accepting thread, a fixed pool of workers, a bounded queue between.
//!
//! Why not a server crate: tiny_http (the usual small synchronous one) hands every connection
//! to a pool that starts another thread whenever all are busy, and has no read timeout, so
//! many slow clients would mean many threads. Here the number of threads is fixed
//! ([`WEB_WORKERS`]), a connection waits in a queue of [`WEB_ACCEPT_QUEUE_DEPTH`] or is
//! answered `503` at once, and a worker gives a client [`WEB_REQUEST_TIMEOUT`] for its
//! request head before answering `408`.

use crate::fleet::Fleet;
use crate::http::{self, Parsed, Response};
use crate::routes;
use hirte_common::bounds::{
    WEB_ACCEPT_QUEUE_DEPTH, WEB_MAX_REQUEST_HEAD, WEB_REQUEST_TIMEOUT, WEB_WORKERS,
    WEB_WRITE_TIMEOUT,
};
use hirte_common::wait::poll_readable;
use hirte_common::{log_error, log_warn};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// How often the accept loop and idle workers look at the shutdown flag.
const TICK: Duration = Duration::from_millis(200);
/// After answering, unread request bytes are drained this long so the client reads the
/// answer instead of a connection reset.
const LINGER: Duration = Duration::from_millis(200);
/// Bytes drained at most while lingering.
const LINGER_BYTES: usize = 64 * 1024;

pub type Shared = Arc<Mutex<Fleet>>;

/// Reads the request head within [`WEB_REQUEST_TIMEOUT`] and at most
/// [`WEB_MAX_REQUEST_HEAD`] bytes; returns the answer to send.
// [impl->req~web.bad-input~1]
fn answer(stream: &mut TcpStream, fleet: &Shared) -> (Response, bool) {
    let deadline = Instant::now() + WEB_REQUEST_TIMEOUT;
    let mut buf = vec![0u8; WEB_MAX_REQUEST_HEAD];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (timeout(), false);
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return (Response::error(500, "cannot set a read timeout"), false);
        }
        let Some(free) = buf.get_mut(len..) else {
            return (http::too_large(), false);
        };
        match stream.read(free) {
            Ok(0) => return (Response::error(400, "connection closed mid-request"), false),
            Ok(n) => len += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (timeout(), false)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return (Response::error(400, &format!("read failed: {e}")), false),
        }
        match http::parse(buf.get(..len).unwrap_or(&[])) {
            Parsed::Partial => continue,
            Parsed::Reject(r) => return (r, false),
            Parsed::Request(req) => {
                let fleet = fleet.lock().unwrap_or_else(PoisonError::into_inner);
                return (routes::route(&req, &fleet), req.head_only);
            }
        }
    }
}

fn timeout() -> Response {
    Response::error(
        408,
        &format!(
            "request head not received within {} s",
            WEB_REQUEST_TIMEOUT.as_secs()
        ),
    )
}

/// Writes `bytes`, giving up when the kernel took none of them for [`WEB_WRITE_TIMEOUT`].
///
/// Not `write_all` under a write timeout of `WEB_WRITE_TIMEOUT`: a `send` that took some
/// bytes waits out its whole timeout before returning, so a client that stops reading
/// would hold the worker two or three timeouts long (15 s measured on loopback).
fn write_with_progress(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.set_write_timeout(Some(TICK))?;
    let mut rest = bytes;
    let mut progress = Instant::now();
    while !rest.is_empty() {
        match stream.write(rest) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                rest = rest.get(n..).unwrap_or_default();
                progress = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if progress.elapsed() >= WEB_WRITE_TIMEOUT {
                    return Err(e);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `response` and closes the connection (after a short linger, see [`LINGER`]).
// [impl->req~web.bounds~1]
fn respond(mut stream: TcpStream, response: &Response, head_only: bool) {
    if write_with_progress(&mut stream, &response.to_bytes(head_only)).is_err() {
        return;
    }
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(LINGER));
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES && Instant::now() < until {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

fn serve_one(mut stream: TcpStream, fleet: &Shared) {
    let (response, head_only) = answer(&mut stream, fleet);
    respond(stream, &response, head_only);
}

fn worker(queue: Arc<Mutex<Receiver<TcpStream>>>, fleet: Shared, shutdown: Arc<AtomicBool>) {
    while !shutdown.load(Ordering::Relaxed) {
        let next = queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv_timeout(TICK);
        let stream = match next {
            Ok(s) => s,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // A panic stays in this request: logged, the connection dropped, the worker goes on.
        if catch_unwind(AssertUnwindSafe(|| serve_one(stream, &fleet))).is_err() {
            log_error!("hirte-web: a request handler panicked; the connection was dropped");
        }
    }
}

/// The `503` for a connection that finds the queue full: written without waiting (a client
/// that does not read it loses it), then the connection is closed.
fn refuse(stream: TcpStream) {
    let r = Response::error(
        503,
        &format!(
            "busy: {WEB_WORKERS} requests in progress and {WEB_ACCEPT_QUEUE_DEPTH} waiting; try again"
        ),
    )
    .with_header("Retry-After", "1");
    let _ = stream.set_nonblocking(true);
    let _ = (&stream).write_all(&r.to_bytes(false));
    let _ = stream.shutdown(Shutdown::Both);
}

/// Serves `listener` until `shutdown` is set.
// [impl->req~web.bounds~1]
pub fn run(listener: TcpListener, fleet: Shared, shutdown: Arc<AtomicBool>) -> Result<(), String> {
    let (tx, rx) = sync_channel::<TcpStream>(WEB_ACCEPT_QUEUE_DEPTH);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::with_capacity(WEB_WORKERS);
    for i in 0..WEB_WORKERS {
        let (rx, fleet, shutdown) = (rx.clone(), fleet.clone(), shutdown.clone());
        let handle = thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || worker(rx, fleet, shutdown))
            .map_err(|e| format!("cannot start HTTP worker thread: {e}"))?;
        workers.push(handle);
    }
    let mut busy_logged = false;
    while !shutdown.load(Ordering::Relaxed) {
        match poll_readable([listener.as_fd()], TICK) {
            Ok([true]) => {}
            Ok([false]) => continue,
            Err(e) => return Err(format!("waiting for connections failed: {e}")),
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                // E.g. EMFILE: log and go on; the next poll retries.
                log_warn!("accepting a connection failed: {e}");
                thread::sleep(TICK);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match tx.try_send(stream) {
            Ok(()) => busy_logged = false,
            Err(TrySendError::Full(s)) => {
                if !busy_logged {
                    log_warn!(
                        "HTTP queue full ({WEB_ACCEPT_QUEUE_DEPTH} connections waiting): answering 503"
                    );
                    busy_logged = true;
                }
                refuse(s);
            }
            Err(TrySendError::Disconnected(_)) => return Err("HTTP workers are gone".into()),
        }
    }
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::UnitRow;

    /// Larger than what loopback's socket buffers hold on both sides together.
    const LARGE: usize = 32 * 1024 * 1024;
    /// Scheduling under load on top of the timeout.
    const TOLERANCE: Duration = Duration::from_secs(3);

    /// Reads until the server closes; `None` if it is still open after `wait`.
    fn read_to_close(stream: &mut TcpStream, wait: Duration) -> Option<usize> {
        stream.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Some(total),
                Ok(n) => total += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(_) => return Some(total),
            }
        }
    }

    // [itest->req~web.bounds~1]
    #[test]
    fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let writer = thread::spawn(move || {
            let r = Response::new(200, "text/plain", vec![b'x'; LARGE]);
            let t0 = Instant::now();
            respond(server_side, &r, false);
            t0.elapsed()
        });
        // The client reads nothing until the server has given up.
        let took = writer.join().unwrap();
        assert!(
            took >= WEB_WRITE_TIMEOUT && took <= WEB_WRITE_TIMEOUT + TOLERANCE,
            "the write gave up after {took:?}, not {WEB_WRITE_TIMEOUT:?} (+{TOLERANCE:?})"
        );
        let got = read_to_close(&mut client, Duration::from_secs(5))
            .expect("the connection is closed once the write gave up");
        assert!(got < LARGE, "received {got} of {LARGE} bytes");
    }

    // [itest->req~web.bounds~1]
    #[test]
    fn the_server_goes_on_serving_while_a_client_stops_reading() {
        let mut fleet = Fleet::default();
        let unit = |n: usize| UnitRow {
            node: "n1".into(),
            unit: format!("u{n}.service"),
            load: "loaded".into(),
            active: "active".into(),
            sub: "running".into(),
            description: "d".repeat(200),
        };
        fleet.set_listing(
            "up".into(),
            Vec::new(),
            (0..LARGE / 200).map(unit).collect(),
            1,
        );
        let fleet: Shared = Arc::new(Mutex::new(fleet));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Arc::new(AtomicBool::new(false));
        let server = {
            let shutdown = shutdown.clone();
            thread::spawn(move || run(listener, fleet, shutdown))
        };
        let mut stalled = TcpStream::connect(addr).unwrap();
        stalled
            .write_all(b"GET /api/units HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // Its answer is being written (listing 160 000 units takes a while in a debug build).
        stalled
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stalled.peek(&mut [0u8; 1]).unwrap();
        let t0 = Instant::now();
        // Meanwhile others are answered at once.
        for _ in 0..WEB_WORKERS * 2 {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = [0u8; 12];
            c.read_exact(&mut head).unwrap();
            assert_eq!(&head, b"HTTP/1.1 200");
        }
        assert!(t0.elapsed() < WEB_WRITE_TIMEOUT);
        // The stalled client's connection is dropped after the write timeout.
        thread::sleep(WEB_WRITE_TIMEOUT + TOLERANCE);
        let got = read_to_close(&mut stalled, Duration::from_secs(5))
            .expect("the stalled connection is closed");
        let whole = fleet_len(addr);
        assert!(got < whole, "received {got} of {whole} bytes");
        shutdown.store(true, Ordering::Relaxed);
        server.join().unwrap().unwrap();
    }

    /// The size of the whole `/api/units` answer, read by a client that does read.
    fn fleet_len(addr: std::net::SocketAddr) -> usize {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /api/units HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        read_to_close(&mut c, Duration::from_secs(10)).unwrap()
    }
}
