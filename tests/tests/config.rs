//! Configuration files: the guide's files load as written; every kind of mistake stops the
//! daemon with one line naming file, line and key. The error cases run the binaries directly
//! (config is checked before any bus or socket is touched), so they need no root and no cluster.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use hirte_tests::guide;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "hirte-config-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `hirte` or `hirte-agent` with `HIRTE_CONFIG_DIR=dir` and no reachable bus, so a
/// configuration that passes fails right after at the bus instead of running.
fn run_daemon(bin: &str, dir: &Path, args: &[&str]) -> Output {
    let path = hirte_tests::binary(bin).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env("HIRTE_CONFIG_DIR", dir)
        .env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            "unix:path=/nonexistent/hirte-test-bus",
        )
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            "unix:path=/nonexistent/hirte-test-bus",
        )
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("RUST_BACKTRACE");
    run_timeout(&mut cmd, Duration::from_secs(20))
}

/// A refused configuration: non-zero exit, stderr naming `file:line` and `needle`. Whether
/// stderr is one line is collected in `shape` (checked once all cases ran, so one wrong
/// message shape does not hide the other cases).
#[track_caller]
fn assert_refused(
    o: &Output,
    what: &str,
    file: &Path,
    line: usize,
    needle: &str,
    shape: &mut Vec<String>,
) {
    let at = format!("{}:{line}", file.display());
    // Check the content first, so that a wrong message is reported as such.
    let err = stderr(o);
    assert!(!o.status.success(), "{what}: started anyway: {}", show(o));
    assert!(
        err.contains(&at),
        "{what}: stderr does not name {at}: {}",
        show(o)
    );
    assert!(
        err.contains(needle),
        "{what}: stderr does not name {needle:?}: {}",
        show(o)
    );
    assert!(
        !err.contains("bus"),
        "{what}: got past the config check: {}",
        show(o)
    );
    assert_eq!(o.status.code(), Some(1), "{what}: {}", show(o));
    let prog = if file.to_string_lossy().contains("agent.conf") {
        "hirte-agent: "
    } else {
        "hirte: "
    };
    assert!(
        err.lines()
            .any(|l| l.starts_with(prog) && l.contains(&at) && l.contains(needle)),
        "{what}: no line '{prog}{at}: ...{needle}...': {}",
        show(o)
    );
    if let Some(p) = one_line_problem(o) {
        shape.push(format!("{what}: {p}"));
    }
}

#[track_caller]
fn assert_no_shape_problems(shape: &[String]) {
    assert!(
        shape.is_empty(),
        "{} refusals are not one line on stderr:\n{}",
        shape.len(),
        shape.join("\n")
    );
}

// [itest->req~config.errors~1]
// [itest->req~config.manager-keys~1]
// [itest->req~config.layers~1]
#[test]
fn config_manager_refuses_bad_files_with_one_line_naming_file_line_key() {
    let ok_head = "[hirte]\nManagerPort=2020\nAllowedNodeNames=primary,agent\n";
    let cases: [(&str, String, usize, &str); 7] = [
        ("unknown key", format!("{ok_head}Bogus=1\n"), 4, "Bogus"),
        (
            "bad value",
            "[hirte]\nManagerPort=twenty\nAllowedNodeNames=a\n".to_string(),
            2,
            "ManagerPort",
        ),
        (
            "duplicate key",
            format!("{ok_head}LogLevel=info\nManagerPort=2021\n"),
            5,
            "ManagerPort",
        ),
        (
            "unknown section",
            format!("{ok_head}[hirte-agent]\nNodeName=x\n"),
            4,
            "hirte-agent",
        ),
        (
            "bad time span",
            format!("{ok_head}NodeHeartbeatThreshold=soon\n"),
            4,
            "NodeHeartbeatThreshold",
        ),
        (
            "bad node name",
            "[hirte]\nAllowedNodeNames=good,bad/name\n".to_string(),
            2,
            "AllowedNodeNames",
        ),
        (
            "bad log level",
            format!("{ok_head}LogLevel=loud\n"),
            4,
            "LogLevel",
        ),
    ];
    let mut shape = Vec::new();
    for (what, text, line, needle) in cases {
        let d = TempDir::new("m");
        let file = d.write("hirte.conf", &text);
        let out = run_daemon("hirte", &d.0, &[]);
        assert_refused(&out, what, &file, line, needle, &mut shape);
    }

    // The same in a drop-in and in a -c file: the error names that file.
    let d = TempDir::new("m-dropin");
    d.write("hirte.conf", &guide::hirte_conf("primary,agent"));
    let dropin = d.write(
        "hirte.conf.d/50-local.conf",
        "[hirte]\n# tuned\nAgentCallTimeout=-1\n",
    );
    let out = run_daemon("hirte", &d.0, &[]);
    assert_refused(
        &out,
        "bad drop-in",
        &dropin,
        3,
        "AgentCallTimeout",
        &mut shape,
    );

    let d = TempDir::new("m-extra");
    d.write("hirte.conf", &guide::hirte_conf("primary,agent"));
    let extra = d.write("extra.conf", "[hirte]\nManagerPort=1\nManagerPort=2\n");
    let out = run_daemon("hirte", &d.0, &["-c", extra.to_str().unwrap()]);
    assert_refused(
        &out,
        "duplicate in -c file",
        &extra,
        3,
        "ManagerPort",
        &mut shape,
    );
    assert_no_shape_problems(&shape);
}

// [itest->req~config.errors~1]
// [itest->req~config.agent-keys~1]
// [itest->req~config.timespan~1]
// [itest->req~config.layers~1]
#[test]
fn config_agent_refuses_bad_files_with_one_line_naming_file_line_key() {
    let ok_head = "[hirte-agent]\nNodeName=agent\nManagerHost=127.0.0.1\n";
    let cases: [(&str, String, usize, &str); 6] = [
        (
            "unknown key",
            format!("{ok_head}ManagerHots=x\n"),
            4,
            "ManagerHots",
        ),
        (
            "bad value",
            format!("{ok_head}HeartbeatInterval=5 parsecs\n"),
            4,
            "HeartbeatInterval",
        ),
        (
            "duplicate key",
            format!("{ok_head}ReconnectInterval=1s\nNodeName=other\n"),
            5,
            "NodeName",
        ),
        (
            "unknown section",
            "[hirte]\nNodeName=agent\n".to_string(),
            1,
            "[hirte]",
        ),
        (
            "bad node name",
            "[hirte-agent]\nNodeName=no/slashes\n".to_string(),
            2,
            "NodeName",
        ),
        (
            "bad port",
            format!("{ok_head}ManagerPort=0\n"),
            4,
            "ManagerPort",
        ),
    ];
    let mut shape = Vec::new();
    for (what, text, line, needle) in cases {
        let d = TempDir::new("a");
        let file = d.write("agent.conf", &text);
        let out = run_daemon("hirte-agent", &d.0, &["--user"]);
        assert_refused(&out, what, &file, line, needle, &mut shape);
    }
    let d = TempDir::new("a-dropin");
    d.write("agent.conf", guide::PRIMARY_AGENT_CONF);
    let dropin = d.write("agent.conf.d/10-x.conf", "[hirte-agent]\nLogTarget=paper\n");
    let out = run_daemon("hirte-agent", &d.0, &["--user"]);
    assert_refused(&out, "bad drop-in", &dropin, 2, "LogTarget", &mut shape);
    assert_no_shape_problems(&shape);
}

// [itest->req~config.manager-open-refused~1]
#[test]
fn config_manager_refuses_open_listener_without_allowed_node_names() {
    let d = TempDir::new("open");
    d.write("hirte.conf", "[hirte]\nManagerPort=2020\nLogLevel=info\n");
    let out = run_daemon("hirte", &d.0, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(err.contains("AllowedNodeNames"), "{}", show(&out));
    assert!(
        !err.contains("bus"),
        "got past the config check: {}",
        show(&out)
    );
    one_line_failure(&out, "empty AllowedNodeNames");
}

// [itest->req~config.syntax~1]
// [itest->req~config.timespan~1]
#[test]
fn config_guide_files_and_toml_spelling_pass_the_config_check() {
    // Each passes the config check and stops only at the (deliberately missing) bus.
    let d = TempDir::new("guide-m");
    d.write("hirte.conf", &guide::hirte_conf("primary,agent"));
    let out = run_daemon("hirte", &d.0, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("system bus"), "{}", show(&out));
    assert!(!stderr(&out).contains("hirte.conf"), "{}", show(&out));

    for (tag, text) in [
        ("guide-a1", guide::PRIMARY_AGENT_CONF.to_string()),
        ("guide-a2", guide::agent_conf("agent", "192.168.1.10")),
        (
            "spans",
            "[hirte-agent]\nNodeName=n1\nHeartbeatInterval=1min 30s\nReconnectInterval=500ms\nManagerHeartbeatThreshold=5min\n".to_string(),
        ),
        (
            "toml",
            "[hirte-agent]\nNodeName = \"n1\"\nManagerAddress = \"tcp:host=10.0.0.1,port=2020\"\nHeartbeatInterval = 2\n".to_string(),
        ),
    ] {
        let d = TempDir::new(tag);
        d.write("agent.conf", &text);
        let out = run_daemon("hirte-agent", &d.0, &["--user"]);
        assert!(!out.status.success(), "{tag}: {}", show(&out));
        assert!(stderr(&out).contains("session bus"), "{tag}: {}", show(&out));
        assert!(!stderr(&out).contains("agent.conf"), "{tag}: {}", show(&out));
    }
    let d = TempDir::new("toml-m");
    d.write(
        "hirte.conf",
        "[hirte]\nManagerPort = 2020\nAllowedNodeNames = [\"primary\", \"agent\"]\nLogLevel = \"debug\"\nNodeHeartbeatThreshold = \"10s\"\n",
    );
    let out = run_daemon("hirte", &d.0, &[]);
    assert!(stderr(&out).contains("system bus"), "{}", show(&out));
}
