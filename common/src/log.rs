//! Logging to journald (native protocol), syslog, or stderr, with a level changeable at run time.
//!
//! journald is written with its native datagram protocol so structured fields (NODE, UNIT, JOB)
//! reach `journalctl`; when its socket is absent the logger falls back to syslog, then stderr,
//! so a log line is never silently lost at start-up.
//!
//! Logging cannot be turned against the daemons:
//! - The journald and syslog sockets are non-blocking: a stalled log daemon makes records
//!   drop (counted, and reported as `N log records dropped` with the next record that goes
//!   through), never a daemon thread wait.
//! - What a peer can trigger at will (refused and unregistered connections) is logged with
//!   [`log_peer!`]: at most `PEER_BURST` records per peer and `PEER_WINDOW`, the rest counted
//!   and summarised (`N similar messages from PEER suppressed`). The table of peers is fixed
//!   in size. Job and audit records (`log_fields!`) are never rate-limited.

use std::fmt;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Severity, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    /// syslog(3) priority.
    fn priority(self) -> u8 {
        match self {
            Level::Debug => 7,
            Level::Info => 6,
            Level::Warn => 4,
            Level::Error => 3,
        }
    }

    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Debug,
            1 => Level::Info,
            2 => Level::Warn,
            _ => Level::Error,
        }
    }
}

/// A log level or target that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownLogSetting {
    Level(String),
    Target(String),
}

impl fmt::Display for UnknownLogSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnknownLogSetting::Level(s) => {
                write!(f, "unknown log level '{s}' (debug, info, warn, error)")
            }
            UnknownLogSetting::Target(s) => {
                write!(f, "unknown log target '{s}' (journald, syslog, stderr)")
            }
        }
    }
}

impl std::error::Error for UnknownLogSetting {}

// The D-Bus handlers take error text as `Into<String>`.
impl From<UnknownLogSetting> for String {
    fn from(e: UnknownLogSetting) -> String {
        e.to_string()
    }
}

impl FromStr for Level {
    type Err = UnknownLogSetting;
    fn from_str(s: &str) -> Result<Self, UnknownLogSetting> {
        match s.to_ascii_lowercase().as_str() {
            "debug" => Ok(Level::Debug),
            "info" => Ok(Level::Info),
            "warn" | "warning" => Ok(Level::Warn),
            "error" => Ok(Level::Error),
            _ => Err(UnknownLogSetting::Level(s.to_string())),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Journald,
    Syslog,
    Stderr,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Journald => "journald",
            Target::Syslog => "syslog",
            Target::Stderr => "stderr",
        }
    }
}

impl FromStr for Target {
    type Err = UnknownLogSetting;
    fn from_str(s: &str) -> Result<Self, UnknownLogSetting> {
        match s.to_ascii_lowercase().as_str() {
            "journald" => Ok(Target::Journald),
            "syslog" => Ok(Target::Syslog),
            "stderr" => Ok(Target::Stderr),
            _ => Err(UnknownLogSetting::Target(s.to_string())),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

type SyslogLogger = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

enum Sink {
    Journald(UnixDatagram),
    Syslog(Box<SyslogLogger>),
    Stderr,
}

struct Logger {
    ident: String,
    sink: Mutex<Sink>,
    target: Target,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();
static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static QUIET: AtomicU8 = AtomicU8::new(0);

/// Opens syslog at its standard socket, or at `path` (tests).
fn open_syslog(ident: &str, path: Option<&std::path::Path>) -> Option<Sink> {
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: ident.to_string(),
        pid: std::process::id(),
    };
    match path {
        None => syslog::unix(formatter),
        Some(p) => syslog::unix_custom(formatter, p),
    }
    .ok()
    .map(|l| {
        never_block(&l);
        Sink::Syslog(Box::new(l))
    })
}

/// Connects to journald's native socket, or to `path` (tests). Non-blocking: see the module doc.
fn open_journald(path: Option<&std::path::Path>) -> Option<Sink> {
    let sock = UnixDatagram::unbound().ok()?;
    match path {
        None => sock.connect(JOURNAL_SOCKET).ok()?,
        Some(p) => sock.connect(p).ok()?,
    }
    sock.set_nonblocking(true).ok()?;
    Some(Sink::Journald(sock))
}

/// Makes a syslog connection unable to block a daemon thread: datagram sockets (the usual
/// `/dev/log`) non-blocking, streams with a short write timeout.
// [impl->req~log.non-blocking~1]
fn never_block(logger: &SyslogLogger) {
    let short = Some(Duration::from_millis(10));
    let _ = match &logger.backend {
        syslog::LoggerBackend::Unix(s) => s.set_nonblocking(true),
        syslog::LoggerBackend::UnixStream(s) => s.get_ref().set_write_timeout(short),
        syslog::LoggerBackend::Udp(s, _) => s.set_nonblocking(true),
        syslog::LoggerBackend::Tcp(s) => s.get_ref().set_write_timeout(short),
    };
}

/// One record in journald's native format: `KEY=value` lines, structured fields included.
// [impl->req~log.events~1]
fn journal_record(ident: &str, level: Level, fields: &[(&str, &str)], message: &str) -> String {
    let mut rec = format!(
        "MESSAGE={}\nPRIORITY={}\nSYSLOG_IDENTIFIER={}\n",
        one_line(message),
        level.priority(),
        ident
    );
    for (k, v) in fields {
        rec.push_str(&format!("{k}={}\n", one_line(v)));
    }
    rec
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Ok,
    /// The sink is busy (its buffer full): the record is dropped and counted.
    Busy,
    /// The sink broke.
    Failed,
}

fn outcome(r: std::io::Result<()>) -> Written {
    match r {
        Ok(()) => Written::Ok,
        Err(e) if is_busy(&e) => Written::Busy,
        Err(_) => Written::Failed,
    }
}

fn is_busy(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ) || e.raw_os_error() == Some(nix::libc::ENOBUFS)
}

/// Writes one record to a sink, never waiting for it.
fn write_record(
    sink: &mut Sink,
    ident: &str,
    level: Level,
    fields: &[(&str, &str)],
    message: &str,
) -> Written {
    match sink {
        Sink::Journald(sock) => outcome(
            sock.send(journal_record(ident, level, fields, message).as_bytes())
                .map(|_| ()),
        ),
        Sink::Syslog(l) => {
            let r = match level {
                Level::Debug => l.debug(message),
                Level::Info => l.info(message),
                Level::Warn => l.warning(message),
                Level::Error => l.err(message),
            };
            match r {
                Ok(()) => Written::Ok,
                Err(syslog::Error::Io(e) | syslog::Error::Write(e)) if is_busy(&e) => Written::Busy,
                Err(_) => Written::Failed,
            }
        }
        Sink::Stderr => {
            let mut line = format!(
                "{} {:<5} {}",
                timestamp(),
                level.as_str().to_uppercase(),
                message
            );
            for (k, v) in fields {
                line.push_str(&format!(" {k}={}", one_line(v)));
            }
            line.push('\n');
            outcome(std::io::stderr().write_all(line.as_bytes()))
        }
    }
}

/// Sets up the process-wide logger; the first call wins. Returns the target actually used.
// [impl->req~log.targets~1]
pub fn init(ident: &str, level: Level, target: Target, is_quiet: bool) -> Target {
    set_level(level);
    QUIET.store(u8::from(is_quiet), Ordering::Relaxed);
    let (sink, used) = match target {
        Target::Journald => match open_journald(None) {
            Some(s) => (s, Target::Journald),
            None => match open_syslog(ident, None) {
                Some(s) => (s, Target::Syslog),
                None => (Sink::Stderr, Target::Stderr),
            },
        },
        Target::Syslog => match open_syslog(ident, None) {
            Some(s) => (s, Target::Syslog),
            None => (Sink::Stderr, Target::Stderr),
        },
        Target::Stderr => (Sink::Stderr, Target::Stderr),
    };
    let _ = LOGGER.set(Logger {
        ident: ident.to_string(),
        sink: Mutex::new(sink),
        target: used,
    });
    used
}

/// Whether `init` ran (before it, records go to stderr without a sink).
pub fn initialized() -> bool {
    LOGGER.get().is_some()
}

/// A daemon's last word before it exits on an error: one line on stderr (`NAME: error`), and
/// in the log too unless the log is stderr itself (which would print it twice).
pub fn report_fatal(name: &str, error: &str) {
    if initialized() && target() != Target::Stderr {
        emit(Level::Error, &[], format_args!("{error}"));
    }
    eprintln!("{name}: {error}");
}

/// The target in use (after fallbacks).
pub fn target() -> Target {
    LOGGER.get().map(|l| l.target).unwrap_or(Target::Stderr)
}

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn level() -> Level {
    Level::from_u8(LEVEL.load(Ordering::Relaxed))
}

pub fn enabled(level: Level) -> bool {
    QUIET.load(Ordering::Relaxed) == 0 && level >= self::level()
}

/// Wall-clock time of day in UTC, for stderr lines (journald and syslog stamp their own).
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_millis()
    )
}

/// Field values must stay on one line in the journal's simple format.
fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// Records the sink refused as busy since the last one that went through.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Records dropped at a busy sink since start-up (a reported batch is not subtracted).
pub fn dropped_total() -> u64 {
    DROPPED_TOTAL.load(Ordering::Relaxed)
}
static DROPPED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Records one peer may log per window; the rest are counted and summarised.
pub const PEER_BURST: u32 = 5;
/// The window of [`PEER_BURST`].
pub const PEER_WINDOW: Duration = Duration::from_secs(10);
/// Peers the rate limiter tracks at once; a new one replaces the longest-quiet entry.
pub const PEER_SLOTS: usize = 64;

/// One peer's count in the current window.
#[derive(Debug, Clone)]
struct PeerCount {
    peer: String,
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Per-peer rate limit of the records a peer can trigger (fixed number of slots).
// [impl->req~log.peer-rate-limit~1]
#[derive(Debug, Default)]
pub struct PeerLimiter {
    slots: Vec<PeerCount>,
}

/// What the limiter decided for one record.
#[derive(Debug, PartialEq, Eq)]
pub struct Admit {
    /// Whether to log this record.
    pub log: bool,
    /// Summaries to log first: `(peer, suppressed)` of windows that ended.
    pub summaries: Vec<(String, u64)>,
}

impl PeerLimiter {
    pub fn admit(&mut self, peer: &str, now: Instant) -> Admit {
        let mut summaries = Vec::new();
        // Windows that ended: their suppressed counts are reported, the slot reused.
        for s in self.slots.iter_mut() {
            if now.duration_since(s.window_start) >= PEER_WINDOW {
                if s.suppressed > 0 {
                    summaries.push((s.peer.clone(), s.suppressed));
                }
                s.window_start = now;
                s.logged = 0;
                s.suppressed = 0;
            }
        }
        let slot = match self.slots.iter().position(|s| s.peer == peer) {
            Some(i) => self.slots.get_mut(i),
            None => {
                let fresh = PeerCount {
                    peer: peer.to_string(),
                    window_start: now,
                    logged: 0,
                    suppressed: 0,
                };
                if self.slots.len() < PEER_SLOTS {
                    self.slots.push(fresh);
                    self.slots.last_mut()
                } else {
                    // Replace the entry whose window started first; report what it held.
                    let oldest = self.slots.iter_mut().min_by_key(|s| s.window_start);
                    oldest.map(|s| {
                        if s.suppressed > 0 {
                            summaries.push((s.peer.clone(), s.suppressed));
                        }
                        *s = fresh;
                        s
                    })
                }
            }
        };
        let log = match slot {
            Some(s) if s.logged < PEER_BURST => {
                s.logged += 1;
                true
            }
            Some(s) => {
                s.suppressed += 1;
                false
            }
            None => true,
        };
        Admit { log, summaries }
    }
}

static PEERS: OnceLock<Mutex<PeerLimiter>> = OnceLock::new();

/// Like [`emit`] for a record `peer` can trigger at will: rate-limited per peer.
pub fn emit_peer(level: Level, peer: &str, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let admit = PEERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .admit(peer, Instant::now());
    for (p, n) in admit.summaries {
        emit(
            level,
            &[],
            format_args!("{n} similar messages from {p} suppressed"),
        );
    }
    if admit.log {
        emit(level, &[], args);
    }
}

/// Writes one log record, with optional structured fields (`NODE`, `UNIT`, `JOB`, ...).
pub fn emit(level: Level, fields: &[(&str, &str)], args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    write(level, fields, args);
}

/// An audit record (who changed what): written at info level whatever `LogLevel` and
/// `LogIsQuiet` say, so that no setting drops it.
// [impl->req~audit.records~1]
pub fn audit(fields: &[(&str, &str)], args: fmt::Arguments<'_>) {
    write(Level::Info, fields, args);
}

fn write(level: Level, fields: &[(&str, &str)], args: fmt::Arguments<'_>) {
    let message = args.to_string();
    let Some(logger) = LOGGER.get() else {
        eprintln!(
            "{} {:<5} {}",
            timestamp(),
            level.as_str().to_uppercase(),
            message
        );
        return;
    };
    let mut sink = logger.sink.lock().unwrap_or_else(PoisonError::into_inner);
    if !write_counted(&mut sink, &logger.ident, level, fields, &message) {
        // The sink broke (journald restarted, syslog gone): keep the line on stderr.
        eprintln!(
            "{} {:<5} {}",
            timestamp(),
            level.as_str().to_uppercase(),
            message
        );
    }
}

/// Writes a record and the count of those dropped before it; false if the sink broke. The
/// lock around it is held for one non-blocking send only.
fn write_counted(
    sink: &mut Sink,
    ident: &str,
    level: Level,
    fields: &[(&str, &str)],
    message: &str,
) -> bool {
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let note = format!("{dropped} log records dropped: the log sink was busy");
        if write_record(sink, ident, Level::Warn, &[], &note) != Written::Ok {
            DROPPED.fetch_add(dropped, Ordering::Relaxed);
        }
    }
    match write_record(sink, ident, level, fields, message) {
        Written::Ok => true,
        Written::Busy => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            DROPPED_TOTAL.fetch_add(1, Ordering::Relaxed);
            true
        }
        Written::Failed => false,
    }
}

/// A record a peer can trigger at will, rate-limited per peer:
/// `log_peer!(Warn, peer, "Refused connection from {peer}: ...")`.
#[macro_export]
macro_rules! log_peer {
    ($lvl:ident, $peer:expr, $($arg:tt)*) => {
        $crate::log::emit_peer($crate::log::Level::$lvl, &$peer.to_string(), format_args!($($arg)*))
    };
}

#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)*) => { $crate::log::emit($crate::log::Level::Debug, &[], format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => { $crate::log::emit($crate::log::Level::Info, &[], format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { $crate::log::emit($crate::log::Level::Warn, &[], format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => { $crate::log::emit($crate::log::Level::Error, &[], format_args!($($arg)*)) };
}
/// Like `log_info!` with structured fields first: `log_fields!(Info, [("NODE", n)], "...")`.
#[macro_export]
macro_rules! log_fields {
    ($lvl:ident, [$(($k:expr, $v:expr)),* $(,)?], $($arg:tt)*) => {
        $crate::log::emit($crate::log::Level::$lvl, &[$(($k, $v)),*], format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~log.targets~1]
    #[test]
    fn levels_and_targets_parse() {
        assert_eq!("debug".parse::<Level>(), Ok(Level::Debug));
        assert_eq!("WARN".parse::<Level>(), Ok(Level::Warn));
        assert!("loud".parse::<Level>().is_err());
        assert_eq!("journald".parse::<Target>(), Ok(Target::Journald));
        assert_eq!("syslog".parse::<Target>(), Ok(Target::Syslog));
        assert!("paper".parse::<Target>().is_err());
        assert!(Level::Debug < Level::Error);
    }

    fn listener(name: &str) -> (std::path::PathBuf, UnixDatagram) {
        let path = std::env::temp_dir().join(format!("hirte-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        (path, rx)
    }

    // [utest->req~log.events~1]
    // [utest->req~log.targets~1]
    #[test]
    fn journald_records_carry_structured_fields() {
        let (path, rx) = listener("journal");
        let mut sink = open_journald(Some(&path)).unwrap();
        let fields = [("NODE", "agent1"), ("UNIT", "httpd.service"), ("JOB", "7")];
        assert_eq!(
            write_record(
                &mut sink,
                "hirte",
                Level::Info,
                &fields,
                "Job 7 start\nof x"
            ),
            Written::Ok
        );
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        let rec = String::from_utf8_lossy(&buf[..n]).to_string();
        assert_eq!(
            rec,
            "MESSAGE=Job 7 start of x\nPRIORITY=6\nSYSLOG_IDENTIFIER=hirte\nNODE=agent1\nUNIT=httpd.service\nJOB=7\n"
        );
        std::fs::remove_file(&path).unwrap();
    }

    // [utest->req~log.targets~1]
    #[test]
    fn syslog_target_writes_rfc3164_lines() {
        let (path, rx) = listener("syslog");
        let mut sink = open_syslog("hirte-agent", Some(&path)).unwrap();
        assert_eq!(
            write_record(&mut sink, "hirte-agent", Level::Warn, &[], "link lost"),
            Written::Ok
        );
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        let line = String::from_utf8_lossy(&buf[..n]).to_string();
        // <28> = facility daemon (3) * 8 + warning (4)
        assert!(line.starts_with("<28>"), "{line}");
        assert!(
            line.contains("hirte-agent[") && line.ends_with("link lost"),
            "{line}"
        );
        std::fs::remove_file(&path).unwrap();
    }

    // [utest->req~log.non-blocking~1]
    #[test]
    fn a_stalled_sink_drops_and_counts_instead_of_blocking() {
        for kind in ["journal", "syslog"] {
            // Nobody reads: the socket's buffer fills, as with a stalled journald.
            let (path, _rx) = listener(&format!("stalled-{kind}"));
            let mut sink = match kind {
                "journal" => open_journald(Some(&path)).unwrap(),
                _ => open_syslog("hirte", Some(&path)).unwrap(),
            };
            let (tx, done) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut busy = 0;
                for i in 0..5_000 {
                    let msg = format!("record {i} {}", "x".repeat(200));
                    match write_record(&mut sink, "hirte", Level::Info, &[], &msg) {
                        Written::Busy => busy += 1,
                        Written::Ok => {}
                        Written::Failed => panic!("sink failed"),
                    }
                }
                let before = dropped_total();
                assert!(write_counted(
                    &mut sink,
                    "hirte",
                    Level::Info,
                    &[],
                    "one more"
                ));
                assert!(dropped_total() > before, "a busy record is counted");
                let _ = tx.send(busy);
            });
            let busy = done
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{kind}: a log write blocked"));
            assert!(busy > 0, "{kind}: nothing dropped");
            std::fs::remove_file(&path).unwrap();
        }
    }

    // [utest->req~log.non-blocking~1]
    #[test]
    fn the_drop_count_goes_out_with_the_next_record() {
        let (path, rx) = listener("dropcount");
        let mut sink = open_journald(Some(&path)).unwrap();
        DROPPED.store(7, Ordering::Relaxed);
        assert!(write_counted(&mut sink, "hirte", Level::Info, &[], "after"));
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        let first = String::from_utf8_lossy(&buf[..n]).to_string();
        // 7, or more if another test's busy record landed in between.
        assert!(
            first.starts_with("MESSAGE=")
                && first.contains(" log records dropped: the log sink was busy\n"),
            "{first}"
        );
        let n = rx.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("MESSAGE=after\n"));
        std::fs::remove_file(&path).unwrap();
    }

    // [utest->req~log.peer-rate-limit~1]
    #[test]
    fn peers_are_rate_limited_one_by_one_and_summarised() {
        let mut l = PeerLimiter::default();
        let t0 = Instant::now();
        let logged = (0..1000).filter(|_| l.admit("10.0.0.9", t0).log).count();
        assert_eq!(logged, PEER_BURST as usize);
        // Another peer is not held back by the first.
        assert!(l.admit("10.0.0.7", t0).log);
        // The next window reports the suppressed count, then logs again.
        let next = l.admit("10.0.0.9", t0 + PEER_WINDOW);
        assert!(next.log);
        assert_eq!(next.summaries, vec![("10.0.0.9".to_string(), 995)]);
        // The table is bounded: many peers reuse PEER_SLOTS slots, nothing is lost silently.
        let mut l = PeerLimiter::default();
        for p in 0..PEER_SLOTS {
            for _ in 0..=PEER_BURST {
                l.admit(&format!("p{p}"), t0);
            }
        }
        let a = l.admit("newcomer", t0 + Duration::from_millis(1));
        assert!(a.log);
        assert_eq!(a.summaries, vec![("p0".to_string(), 1)]);
        assert_eq!(l.slots.len(), PEER_SLOTS);
    }

    #[test]
    fn level_filter() {
        set_level(Level::Warn);
        assert!(!enabled(Level::Info));
        assert!(enabled(Level::Error));
        set_level(Level::Info);
        assert_eq!(level(), Level::Info);
    }
}
