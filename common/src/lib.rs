//! Hirte-rs shared core: everything both daemons and `hirtectl` agree on.
//!
//! The protocol pieces here (`frame`, `handshake`, `names`, `timespan`, `config`) are sans-IO:
//! they take bytes or strings and return values or typed errors, so they are unit-tested and
//! fuzzed without sockets. The bounded structures (`queue`) and every numeric limit (`bounds`)
//! live here too, so the safety case can list them from one place.

pub mod args;
pub mod bounds;
pub mod bus;
pub mod config;
pub mod exec_guard;
pub mod frame;
pub mod handshake;
pub mod json;
pub mod linkio;
pub mod log;
pub mod names;
pub mod notify;
pub mod protocol;
pub mod queue;
pub mod stream;
pub mod sys;
pub mod timespan;
pub mod tls;
pub mod wait;
pub mod wake;
