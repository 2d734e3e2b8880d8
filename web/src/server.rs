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

/// Sends `response` and closes the connection (after a short linger, see [`LINGER`]).
fn respond(mut stream: TcpStream, response: &Response, head_only: bool) {
    let _ = stream.set_write_timeout(Some(WEB_WRITE_TIMEOUT));
    if stream.write_all(&response.to_bytes(head_only)).is_err() {
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
