//! Addresses in the settings: Unix socket paths and BlueChi's D-Bus-style
//! `tcp:host=HOST,port=PORT` / `unix:path=PATH`.

use std::fmt;
use std::path::{Path, PathBuf};

/// Longest Unix socket path: `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// What is wrong with an address; shown as the reason of a bad value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    EmptyPath,
    RelativePath,
    PathTooLong { len: usize },
    NulInPath,
    PathTwice,
    UnexpectedUnixPart(String),
    NotUnixPath,
    NotTcp,
    BadPort(String),
    UnexpectedTcpPart(String),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::EmptyPath => write!(f, "empty socket path"),
            AddressError::RelativePath => write!(f, "expected an absolute path"),
            AddressError::PathTooLong { len } => {
                write!(
                    f,
                    "socket path of {len} bytes is longer than {MAX_SOCKET_PATH}"
                )
            }
            AddressError::NulInPath => write!(f, "socket path contains a NUL byte"),
            AddressError::PathTwice => write!(f, "path given twice"),
            AddressError::UnexpectedUnixPart(part) => {
                write!(
                    f,
                    "unexpected '{part}' in address (expected unix:path=PATH)"
                )
            }
            AddressError::NotUnixPath => write!(f, "expected unix:path=PATH"),
            AddressError::NotTcp => write!(f, "expected tcp:host=HOST,port=PORT"),
            AddressError::BadPort(p) => write!(f, "bad port '{p}'"),
            AddressError::UnexpectedTcpPart(part) => write!(f, "unexpected '{part}' in address"),
        }
    }
}

impl std::error::Error for AddressError {}

/// Checks a Unix socket path: absolute, at most [`MAX_SOCKET_PATH`] bytes, no NUL.
// [impl->req~link.unix-socket~1]
pub fn parse_socket_path(s: &str) -> Result<PathBuf, AddressError> {
    if s.is_empty() {
        return Err(AddressError::EmptyPath);
    }
    if !s.starts_with('/') {
        return Err(AddressError::RelativePath);
    }
    if s.len() > MAX_SOCKET_PATH {
        return Err(AddressError::PathTooLong { len: s.len() });
    }
    if s.contains('\0') {
        return Err(AddressError::NulInPath);
    }
    Ok(PathBuf::from(s))
}

/// Parses what follows `unix:` in a D-Bus address: `path=PATH` (the only key accepted).
pub(super) fn parse_unix_address(rest: &str) -> Result<PathBuf, AddressError> {
    let mut path = None;
    for part in rest.split(',') {
        match part.split_once('=') {
            Some(("path", p)) if path.is_none() => path = Some(parse_socket_path(p)?),
            Some(("path", _)) => return Err(AddressError::PathTwice),
            _ => return Err(AddressError::UnexpectedUnixPart(part.to_string())),
        }
    }
    path.ok_or(AddressError::NotUnixPath)
}

/// Parses `tcp:host=HOST,port=PORT`.
pub fn parse_tcp_address(s: &str) -> Result<(String, u16), AddressError> {
    let rest = s.strip_prefix("tcp:").ok_or(AddressError::NotTcp)?;
    let mut host = None;
    let mut port = None;
    for part in rest.split(',') {
        match part.split_once('=') {
            Some(("host", h)) if !h.is_empty() => host = Some(h.to_string()),
            Some(("port", p)) => {
                port = Some(
                    p.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| AddressError::BadPort(p.to_string()))?,
                )
            }
            _ => return Err(AddressError::UnexpectedTcpPart(part.to_string())),
        }
    }
    match (host, port) {
        (Some(h), Some(p)) => Ok((h, p)),
        _ => Err(AddressError::NotTcp),
    }
}

/// One manager an agent can register with, in BlueChi's address syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagerAddress {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl ManagerAddress {
    /// Parses `tcp:host=HOST,port=PORT` or `unix:path=PATH` (as `ManagerAddress=` and
    /// `SwitchController` take them).
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        match s.strip_prefix("unix:") {
            Some(rest) => parse_unix_address(rest).map(ManagerAddress::Unix),
            None => parse_tcp_address(s).map(|(host, port)| ManagerAddress::Tcp { host, port }),
        }
    }

    /// The address as log lines name it: `HOST:PORT` or `unix:path=PATH`.
    pub fn endpoint(&self) -> String {
        match self {
            ManagerAddress::Tcp { host, port } => format!("{host}:{port}"),
            ManagerAddress::Unix(p) => format!("unix:path={}", p.display()),
        }
    }

    /// The socket path of a `unix:` address.
    pub fn socket_path(&self) -> Option<&Path> {
        match self {
            ManagerAddress::Unix(p) => Some(p),
            ManagerAddress::Tcp { .. } => None,
        }
    }
}

/// D-Bus syntax, as the local API's `ManagerAddress` property shows it.
impl fmt::Display for ManagerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManagerAddress::Tcp { host, port } => write!(f, "tcp:host={host},port={port}"),
            ManagerAddress::Unix(p) => write!(f, "unix:path={}", p.display()),
        }
    }
}
