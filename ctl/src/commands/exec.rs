//! `exec NODE CMD...`: `Node.Exec`, the command's output passed through, its status returned.

use super::Ctx;
use crate::client::CtlError;
use crate::output;
use hirte_common::protocol::{self, error};
use std::time::Duration;

/// Exit status when the command did not finish in time, as timeout(1) uses.
pub const TIMED_OUT: u8 = 124;

/// Extra time hirtectl waits beyond the command's timeout for the manager's answer (the agent
/// and manager add their own margins).
const ANSWER_MARGIN: Duration = Duration::from_secs(60);

/// The command's exit status as ours (0-255; anything else, which should not happen, is 255).
fn exit_code(status: i32) -> u8 {
    u8::try_from(status).unwrap_or(255)
}

// [impl->req~ctl.exec~1]
pub fn exec(ctx: &Ctx, node: &str, timeout_secs: u64, command: &[String]) -> Result<u8, CtlError> {
    let path = ctx.c.node_path(node)?;
    let timeout = Duration::from_secs(timeout_secs);
    let usec = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX);
    let answer: Result<(i32, Vec<u8>, Vec<u8>), CtlError> = ctx.c.call_within(
        &path,
        protocol::NODE_IFACE,
        "Exec",
        (command, usec),
        timeout + ANSWER_MARGIN,
    );
    match answer {
        Ok((status, out, err)) => {
            // Output goes out unchanged, bytes as they are (it need not be UTF-8).
            output::out_bytes(&out);
            output::err_bytes(&err);
            Ok(exit_code(status))
        }
        Err(CtlError::Call { name, message }) if name == error::TIMEOUT => Err(CtlError::Failed {
            message: format!("exec on node '{node}': {message}"),
            code: TIMED_OUT,
        }),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(3), 3);
        assert_eq!(exit_code(137), 137);
        assert_eq!(exit_code(-1), 255);
        assert_eq!(exit_code(300), 255);
    }
}
