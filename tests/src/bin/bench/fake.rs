//! Fake agents: TCP connections that `Register` and heartbeat exactly as `hirte-agent` does
//! (the frames come from `hirte_common`), answer the manager's calls with empty results, and
//! nothing else. Hundreds of them cost the bench one thread, so the manager can be measured
//! at 500 or 1,000 nodes on this 2-core machine; real agents cost two threads and a systemd
//! subscription each.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::MAX_FRAME_SIZE;
use hirte_common::frame::{encode_message, FrameDecoder, SerialCounter};
use hirte_common::handshake::register_call;
use hirte_common::protocol;
use hirte_tests::Cluster;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use crate::bench::error::{BenchError, Result};

/// Connections registering at once. A link thread frees its handshake slot only after it
/// wrote the Register answer, so under load a batch may still hold its slots when the next
/// one connects: two batches stay below the manager's `MAX_PENDING_HANDSHAKES` (64).
const REGISTER_BATCH: usize = 16;
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct FakeConn {
    name: String,
    stream: TcpStream,
    decoder: FrameDecoder,
    serials: SerialCounter,
    next_beat: Instant,
    alive: bool,
}

impl FakeConn {
    fn send(&mut self, mut msg: Message) -> Result<()> {
        msg.set_serial(self.serials.next_serial());
        let bytes = encode_message(&msg, MAX_FRAME_SIZE)
            .map_err(|e| BenchError::failed(format!("{}: encoding: {e}", self.name)))?;
        self.stream
            .write_all(&bytes)
            .map_err(|e| BenchError::io(format!("{}: write", self.name), e))
    }
}

fn heartbeat() -> Option<Message> {
    Message::new_signal(
        protocol::INTERNAL_AGENT_PATH,
        protocol::INTERNAL_AGENT_IFACE,
        "Heartbeat",
    )
    .ok()
}

/// The answer a fake agent gives to a manager call: empty, of the right type.
fn answer(call: &Message) -> Message {
    let reply = call.method_return();
    match call.member().as_deref() {
        Some("ListUnits") => reply.append1(Vec::<hirte_common::protocol::UnitRow>::new()),
        Some("ListUnitFiles") => reply.append1(Vec::<(String, String)>::new()),
        _ => reply,
    }
}

/// Waits (blocking, bounded by the socket's read timeout) for the answer to `Register`.
fn await_register_reply(c: &mut FakeConn) -> Result<()> {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    loop {
        if Instant::now() >= deadline {
            return Err(BenchError::failed(format!(
                "{}: no Register answer",
                c.name
            )));
        }
        let n = c
            .stream
            .read(&mut buf)
            .map_err(|e| BenchError::io(format!("{}: reading the Register answer", c.name), e))?;
        if n == 0 {
            return Err(BenchError::failed(format!(
                "{}: manager closed the connection during Register",
                c.name
            )));
        }
        c.decoder
            .push(buf.get(..n).unwrap_or_default())
            .map_err(|e| BenchError::failed(format!("{}: {e}", c.name)))?;
        if let Some(mut m) = c
            .decoder
            .next_message()
            .map_err(|e| BenchError::failed(format!("{}: {e}", c.name)))?
        {
            return match m.as_result() {
                Ok(_) => Ok(()),
                Err(e) => Err(BenchError::dbus(format!("{}: Register", c.name), &e)),
            };
        }
    }
}

fn register_all(addr: SocketAddr, names: &[String]) -> Result<Vec<FakeConn>> {
    let mut all = Vec::with_capacity(names.len());
    for chunk in names.chunks(REGISTER_BATCH) {
        let mut batch = Vec::with_capacity(chunk.len());
        for name in chunk {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| BenchError::io(format!("{name}: connecting to {addr}"), e))?;
            stream
                .set_nodelay(true)
                .map_err(|e| BenchError::io("set_nodelay", e))?;
            stream
                .set_read_timeout(Some(REGISTER_TIMEOUT))
                .map_err(|e| BenchError::io("set_read_timeout", e))?;
            let mut c = FakeConn {
                name: name.clone(),
                stream,
                decoder: FrameDecoder::new(MAX_FRAME_SIZE),
                serials: SerialCounter::default(),
                next_beat: Instant::now(),
                alive: true,
            };
            let call = register_call(name)
                .ok_or_else(|| BenchError::failed(format!("{name}: cannot build Register")))?;
            c.send(call)?;
            batch.push(c);
        }
        for c in &mut batch {
            await_register_reply(c)?;
            c.stream
                .set_nonblocking(true)
                .map_err(|e| BenchError::io("set_nonblocking", e))?;
        }
        all.extend(batch);
    }
    Ok(all)
}

/// Connects and registers one fake agent per name, from inside `node`'s network namespace
/// to the manager at `127.0.0.1:port` (the manager runs in that namespace).
pub fn connect(
    cluster: &Cluster,
    node: &str,
    port: u16,
    names: &[String],
) -> Result<Vec<FakeConn>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    cluster.in_node_net(node, move || register_all(addr, names))?
}

/// Counters of a running fleet.
#[derive(Default)]
pub struct Counters {
    /// Heartbeats written.
    pub sent: AtomicU64,
    /// Heartbeat echoes read back from the manager.
    pub echoes: AtomicU64,
    /// Calls from the manager answered.
    pub calls: AtomicU64,
    /// Connections the manager (or an error) closed.
    pub closed: AtomicU64,
    /// Connections the driver holds.
    pub held: AtomicU64,
}

/// The thread that heartbeats for every fake connection.
pub struct Fleet {
    stop: Arc<AtomicBool>,
    interval_ms: Arc<AtomicU64>,
    pub counters: Arc<Counters>,
    add: mpsc::Sender<Vec<FakeConn>>,
    handle: Option<JoinHandle<()>>,
}

impl Fleet {
    /// Starts the driver thread; its connections heartbeat every `interval`, staggered.
    pub fn start(interval: Duration) -> Result<Fleet> {
        let stop = Arc::new(AtomicBool::new(false));
        let interval_ms = Arc::new(AtomicU64::new(
            u64::try_from(interval.as_millis()).unwrap_or(1000),
        ));
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel();
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let d = Driver {
            stop: stop.clone(),
            interval_ms: interval_ms.clone(),
            counters: counters.clone(),
            rx,
            epoll,
            conns: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("fake-agents".into())
            .spawn(move || d.run())
            .map_err(|e| BenchError::io("spawning the fake-agent thread", e))?;
        Ok(Fleet {
            stop,
            interval_ms,
            counters,
            add: tx,
            handle: Some(handle),
        })
    }

    /// Hands registered connections to the driver.
    pub fn add(&self, conns: Vec<FakeConn>) -> Result<()> {
        self.add
            .send(conns)
            .map_err(|_| BenchError::failed("fake-agent thread is gone"))
    }

    pub fn set_interval(&self, d: Duration) {
        self.interval_ms.store(
            u64::try_from(d.as_millis()).unwrap_or(1000).max(1),
            Ordering::Relaxed,
        );
    }

    pub fn sent(&self) -> u64 {
        self.counters.sent.load(Ordering::Relaxed)
    }

    pub fn echoes(&self) -> u64 {
        self.counters.echoes.load(Ordering::Relaxed)
    }

    pub fn held(&self) -> u64 {
        self.counters.held.load(Ordering::Relaxed)
    }

    pub fn closed(&self) -> u64 {
        self.counters.closed.load(Ordering::Relaxed)
    }

    /// Stops the driver; every connection is closed (the manager sees EOF).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Driver {
    stop: Arc<AtomicBool>,
    interval_ms: Arc<AtomicU64>,
    counters: Arc<Counters>,
    rx: mpsc::Receiver<Vec<FakeConn>>,
    epoll: Epoll,
    conns: Vec<FakeConn>,
}

/// Heartbeats of connections whose turn is this close are sent in one wake-up.
const BATCH_SLACK: Duration = Duration::from_millis(2);

impl Driver {
    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 256];
        let mut buf = vec![0u8; 64 * 1024];
        while !self.stop.load(Ordering::Relaxed) {
            let interval = Duration::from_millis(self.interval_ms.load(Ordering::Relaxed));
            while let Ok(batch) = self.rx.try_recv() {
                self.adopt(batch, interval);
            }
            let now = Instant::now();
            let mut next = now + Duration::from_millis(20);
            for c in self.conns.iter_mut().filter(|c| c.alive) {
                if c.next_beat <= now + BATCH_SLACK {
                    let ok = heartbeat().map(|hb| c.send(hb));
                    match ok {
                        Some(Ok(())) => {
                            self.counters.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Err(e)) => eprintln!("hirte-bench: fake agent: {e}"),
                        None => {}
                    }
                    c.next_beat += interval;
                    if c.next_beat < now {
                        c.next_beat = now + interval;
                    }
                }
                next = next.min(c.next_beat);
            }
            let wait = next
                .saturating_duration_since(Instant::now())
                .max(BATCH_SLACK);
            let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
            let n = match self.epoll.wait(&mut events, ms) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => {
                    eprintln!("hirte-bench: fake agents: epoll_wait: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    0
                }
            };
            for ev in events.iter().take(n) {
                let idx = usize::try_from(ev.data()).unwrap_or(usize::MAX);
                self.service(idx, &mut buf);
            }
        }
        self.counters.held.store(0, Ordering::Relaxed);
    }

    fn adopt(&mut self, batch: Vec<FakeConn>, interval: Duration) {
        let k = batch.len().max(1);
        let now = Instant::now();
        for (i, mut c) in batch.into_iter().enumerate() {
            let idx = self.conns.len();
            // Spread the first beats over one interval, as independent agents would be.
            let offset = interval.mul_f64(i as f64 / k as f64);
            c.next_beat = now + offset;
            let ev = EpollEvent::new(EpollFlags::EPOLLIN, u64::try_from(idx).unwrap_or(0));
            if let Err(e) = self.epoll.add(&c.stream, ev) {
                eprintln!("hirte-bench: fake agent {}: epoll add: {e}", c.name);
                continue;
            }
            self.conns.push(c);
        }
        self.counters.held.store(
            u64::try_from(self.conns.iter().filter(|c| c.alive).count()).unwrap_or(0),
            Ordering::Relaxed,
        );
    }

    fn service(&mut self, idx: usize, buf: &mut [u8]) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if !c.alive {
            return;
        }
        loop {
            match c.stream.read(buf) {
                Ok(0) => {
                    c.alive = false;
                    break;
                }
                Ok(n) => {
                    if let Err(e) = c.decoder.push(buf.get(..n).unwrap_or_default()) {
                        eprintln!("hirte-bench: fake agent {}: {e}", c.name);
                        c.alive = false;
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.alive = false;
                    break;
                }
            }
        }
        loop {
            let msg = match c.decoder.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("hirte-bench: fake agent {}: {e}", c.name);
                    c.alive = false;
                    break;
                }
            };
            let kind = msg.msg_type();
            if kind == MessageType::Signal && msg.member().as_deref() == Some("Heartbeat") {
                self.counters.echoes.fetch_add(1, Ordering::Relaxed);
            } else if kind == MessageType::MethodCall && c.send(answer(&msg)).is_ok() {
                self.counters.calls.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !c.alive {
            let _ = self.epoll.delete(&c.stream);
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            self.counters.closed.fetch_add(1, Ordering::Relaxed);
            self.counters.held.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
