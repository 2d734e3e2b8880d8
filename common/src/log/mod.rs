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
//!   in size. Job and audit records (`log_fields!`, `audit`) are never rate-limited.

use std::fmt;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

mod peers;
pub use peers::{emit_peer, Admit, PeerLimiter, PEER_BURST, PEER_SLOTS, PEER_WINDOW};
use std::time::Duration;

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
        $crate::log::emit_peer($crate::log::Level::$lvl, &$peer.to_string(), &[], format_args!($($arg)*))
    };
}

/// [`log_peer!`] with structured fields: `log_peer_fields!(Warn, peer, [("NODE", n)], "...")`.
/// For what a peer triggers only: job and audit records use `log_fields!` and `audit`.
#[macro_export]
macro_rules! log_peer_fields {
    ($lvl:ident, $peer:expr, [$(($k:expr, $v:expr)),* $(,)?], $($arg:tt)*) => {
        $crate::log::emit_peer(
            $crate::log::Level::$lvl,
            &$peer.to_string(),
            &[$(($k, $v)),*],
            format_args!($($arg)*),
        )
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
mod tests;
