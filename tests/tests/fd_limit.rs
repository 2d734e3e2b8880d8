//! The manager's open-file budget (`req~bounds.connections~1`): every connection holds two
//! descriptors, so at `MAX_CONNECTIONS` the manager needs 2,240; systemd starts services
//! with a soft `RLIMIT_NOFILE` of 1,024, which would make `accept` fail at about 500 nodes.
//! The real `hirte` is started under `prlimit` with no reachable bus: it raises its soft
//! limit (or warns how many nodes fit) before it stops on the missing bus. Needs no root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use common::{run_timeout, stderr};
use std::process::Command;
use std::time::Duration;

/// Runs `hirte` with the open-file limits `soft:hard`; its stderr.
fn run_with_nofile(soft: u32, hard: u32) -> String {
    let dir = std::env::temp_dir().join(format!(
        "hirte-fdlimit-{}-{soft}-{hard}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hirte.conf"),
        "[hirte]\nAllowedNodeNames=n1\nLogLevel=DEBUG\nLogTarget=stderr\n",
    )
    .unwrap();
    let hirte = hirte_tests::binary("hirte").unwrap_or_else(|e| panic!("{e}"));
    let nobus = "unix:path=/nonexistent/hirte-fdlimit-bus";
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={soft}:{hard}"))
        .arg("--")
        .arg(&hirte)
        .env("HIRTE_CONFIG_DIR", &dir)
        .env("DBUS_SYSTEM_BUS_ADDRESS", nobus)
        .env_remove("NOTIFY_SOCKET");
    let out = run_timeout(&mut cmd, Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dir);
    let err = stderr(&out);
    assert!(!err.contains("prlimit:"), "prlimit failed: {err}");
    err
}

// [itest->req~bounds.connections~1]
#[test]
fn fd_limit_manager_raises_its_soft_open_file_limit_to_its_bounds() {
    let err = run_with_nofile(1024, 8192);
    assert!(
        err.contains("open-file limit raised from 1024 to 2240"),
        "no raise logged:\n{err}"
    );
    // A hard limit below the bounds: raised as far as it goes, with the node count that fits.
    let err = run_with_nofile(1024, 1500);
    assert!(
        err.contains("open-file limit is at most 1500 (hard limit)")
            && err.contains("beyond about 718 nodes"),
        "no warning naming what fits:\n{err}"
    );
}
