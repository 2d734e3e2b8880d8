//! Signals: names and numbers for `kill --signal`, and SIGINT/SIGTERM ending the commands that
//! run until interrupted (`monitor`, `status -w`, `metrics listen`).

use nix::sys::signal::Signal;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Highest signal number Linux has (SIGRTMAX).
const MAX_SIGNAL: i32 = 64;

/// A signal that cannot be named or caught.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalError {
    OutOfRange(i32),
    Unknown(String),
    Handler { signal: i32, reason: String },
}

impl fmt::Display for SignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalError::OutOfRange(n) => {
                write!(f, "signal number {n} is out of range 1-{MAX_SIGNAL}")
            }
            SignalError::Unknown(s) => write!(
                f,
                "unknown signal '{s}' (use a number or a name such as TERM, KILL, HUP, USR1)"
            ),
            SignalError::Handler { signal, reason } => {
                write!(f, "cannot install a handler for signal {signal}: {reason}")
            }
        }
    }
}

impl std::error::Error for SignalError {}

/// `15`, `TERM`, `SIGTERM`, `sigkill` -> the signal number.
pub fn parse_signal(s: &str) -> Result<i32, SignalError> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=MAX_SIGNAL).contains(&n) {
            Ok(n)
        } else {
            Err(SignalError::OutOfRange(n))
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name)
        .map(|sig| sig as i32)
        .map_err(|_| SignalError::Unknown(s.to_string()))
}

/// Set once SIGINT or SIGTERM arrives; long-running commands poll it and end cleanly.
#[derive(Clone)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    pub fn install() -> Result<Interrupt, SignalError> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, flag.clone()).map_err(|e| SignalError::Handler {
                signal: sig,
                reason: e.to_string(),
            })?;
        }
        Ok(Interrupt(flag))
    }

    pub fn raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse_signal("15"), Ok(15));
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("SIGKILL"), Ok(9));
        assert_eq!(parse_signal("hup"), Ok(1));
        assert_eq!(parse_signal("sigusr1"), Ok(10));
        assert_eq!(parse_signal("64"), Ok(64));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("65").is_err());
        assert!(parse_signal("-9").is_err());
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("").is_err());
    }
}
