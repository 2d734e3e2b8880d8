//! Reading a finished command's output in tests and their failure messages.

use std::process::Output;

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Status, stdout and stderr, for an assertion message.
pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        stdout(o),
        stderr(o)
    )
}

/// Asserts success and returns stdout.
#[track_caller]
pub fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}", show(o));
    stdout(o)
}
