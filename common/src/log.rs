//! Logging to journald (native protocol), syslog, or stderr, with a level changeable at run time.
//!
//! journald is written with its native datagram protocol so structured fields (NODE, UNIT, JOB)
//! reach `journalctl`; when its socket is absent the logger falls back to syslog, then stderr,
//! so a log line is never silently lost at start-up.

use std::fmt;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

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
    .map(|l| Sink::Syslog(Box::new(l)))
}

/// Connects to journald's native socket, or to `path` (tests).
fn open_journald(path: Option<&std::path::Path>) -> Option<Sink> {
    let sock = UnixDatagram::unbound().ok()?;
    match path {
        None => sock.connect(JOURNAL_SOCKET).ok()?,
        Some(p) => sock.connect(p).ok()?,
    }
    Some(Sink::Journald(sock))
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

/// Writes one record to a sink; false if the sink failed.
fn write_record(
    sink: &mut Sink,
    ident: &str,
    level: Level,
    fields: &[(&str, &str)],
    message: &str,
) -> bool {
    match sink {
        Sink::Journald(sock) => sock
            .send(journal_record(ident, level, fields, message).as_bytes())
            .is_ok(),
        Sink::Syslog(l) => match level {
            Level::Debug => l.debug(message),
            Level::Info => l.info(message),
            Level::Warn => l.warning(message),
            Level::Error => l.err(message),
        }
        .is_ok(),
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
            std::io::stderr().write_all(line.as_bytes()).is_ok()
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
    let ok = write_record(&mut sink, &logger.ident, level, fields, &message);
    if !ok {
        // The sink broke (journald restarted, syslog gone): keep the line on stderr.
        eprintln!(
            "{} {:<5} {}",
            timestamp(),
            level.as_str().to_uppercase(),
            message
        );
    }
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
        assert!(write_record(
            &mut sink,
            "hirte",
            Level::Info,
            &fields,
            "Job 7 start\nof x"
        ));
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
        assert!(write_record(
            &mut sink,
            "hirte-agent",
            Level::Warn,
            &[],
            "link lost"
        ));
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

    #[test]
    fn level_filter() {
        set_level(Level::Warn);
        assert!(!enabled(Level::Info));
        assert!(enabled(Level::Error));
        set_level(Level::Info);
        assert_eq!(level(), Level::Info);
    }
}
