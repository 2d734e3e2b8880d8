//! `hirtectl exec`: output passed through, the command's exit status, timeouts, the guide's
//! `until hirtectl exec ...` loop, and the refusal with AllowExec=no.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod ctl_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctl_common::*;
use hirte_tests::{Cluster, ClusterSpec};

// [itest->req~ctl.exec~1]
// [itest->req~api.exec~1]
// [itest->req~agent.exec~2]
#[test]
fn ctl_exec_passes_output_and_exit_status() {
    if !hirte_tests::require_root("ctl_exec_passes_output_and_exit_status") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();

    // A shell only when asked for with `sh -c`.
    let o = c.hirtectl(&["exec", "n2", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
    assert_eq!(stdout(&o), "out\n");
    assert_eq!(stderr(&o), "err\n");
    // Several arguments run as they are (spaces inside one stay), hyphens belong to them.
    let o = c.hirtectl(&["exec", "n2", "printf", "%s|", "a b", "-c", "--timeout"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(stdout(&o), "a b|-c|--timeout|");
    // It runs on that node: its network namespace has the node's address.
    let o = c.hirtectl(&["exec", "n2", "cat /proc/net/fib_trie"]);
    assert!(
        stdout(&o).contains(&c.node_ip("n2").unwrap()),
        "{}",
        show(&o)
    );
    // Killed by a signal: 128 + signal, as a shell reports it (`kill 0`: its own group).
    let o = c.hirtectl(&["exec", "n1", "sh", "-c", "kill -9 0"]);
    assert_eq!(o.status.code(), Some(137), "{}", show(&o));
    let o = c.hirtectl(&["exec", "n1", "false"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(stderr(&o).is_empty(), "{}", show(&o));
    let o = c.hirtectl(&["exec", "n1", "/no/such/program"]);
    assert_eq!(o.status.code(), Some(127), "{}", show(&o));

    // Timeout: one line, exit 124, well before the command would have ended.
    let t0 = Instant::now();
    let o = c.hirtectl(&["exec", "--timeout", "1", "n2", "sleep", "30"]);
    let line = one_line_failure(&o, Some(124), "exec past its timeout");
    assert!(line.contains("1s"), "{line}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let o = c.hirtectl(&["exec", "--timeout", "0", "n2", "true"]);
    one_line_failure(&o, Some(2), "exec with --timeout 0");

    // The guide's loop: `until hirtectl exec primary "pg_isready -U postgres"; do sleep 2; done`.
    let flag = c.node_dir("n2").unwrap().join("ready-flag");
    let script = format!(
        "n=0; until \"$HIRTECTL\" exec n2 \"test -e {}\"; do n=$((n+1)); [ $n -gt 100 ] && exit 9; sleep 0.2; done; echo ready after $n",
        flag.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env("HIRTECTL", c.bin_dir().join("hirtectl"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        child.try_wait().unwrap().is_none(),
        "loop ended before the flag existed"
    );
    std::fs::write(&flag, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout(&out);
    assert!(text.starts_with("ready after "), "{text}");
    assert_ne!(text.trim(), "ready after 0", "the loop must have waited");

    // Errors: one line.
    let o = c.hirtectl(&["exec", "nope", "true"]);
    one_line_failure(&o, Some(4), "exec on an unknown node");
    let o = c.hirtectl(&["exec", "n2"]);
    one_line_failure(&o, Some(2), "exec without a command");
}

// [itest->req~ctl.exec~1]
// [itest->req~ctl.errors~1]
#[test]
fn ctl_exec_offline_node_fails_in_one_line() {
    if !hirte_tests::require_root("ctl_exec_offline_node_fails_in_one_line") {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();
    c.kill_agent("n2", hirte_tests::Signal::SIGKILL);
    c.wait_node_state("n2", "offline", SOON).unwrap();
    let o = c.hirtectl(&["exec", "n2", "true"]);
    let line = one_line_failure(&o, Some(1), "exec on an offline node");
    assert!(line.contains("n2"), "{line}");
}

// [itest->req~ctl.exec~1]
// [itest->req~api.exec~1]
#[test]
fn ctl_exec_refused_when_allow_exec_is_no() {
    if !hirte_tests::require_root("ctl_exec_refused_when_allow_exec_is_no") {
        return;
    }
    let mut spec = ClusterSpec::new(&["n1"]);
    spec.manager_conf = "AllowExec=no".into();
    let c = Cluster::start(spec).unwrap();
    let marker = c.node_dir("n1").unwrap().join("ran");
    let cmd = format!("touch {}", marker.display());
    let o = c.hirtectl(&["exec", "n1", &cmd]);
    let line = one_line_failure(&o, Some(1), "exec with AllowExec=no");
    assert!(line.contains("AllowExec"), "{line}");
    assert!(stdout(&o).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "a refused command must not run");
    // Everything else still works.
    ctl_ok(&c, &["list-units", "n1"]);
}

/// `$` must reach the command as typed: systemd expands `$VAR`, `${VAR}` and `$$` in
/// ExecStart, so the agent has to escape them (`$$`) in the transient unit's command line.
// [itest->req~agent.exec~2]
// [itest->req~agent.exec-words~1]
#[test]
fn ctl_exec_dollar_signs_reach_the_command() {
    if !hirte_tests::require_root("ctl_exec_dollar_signs_reach_the_command") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["n1"])).unwrap();
    let o = c.hirtectl(&["exec", "n1", "sh", "-c", r#"x=ok; echo "[${x}]""#]);
    assert_eq!(
        (o.status.code(), stdout(&o)),
        (Some(0), "[ok]\n".to_string()),
        "the shell, not systemd, must expand ${{x}}: {}",
        show(&o)
    );
    let o = c.hirtectl(&["exec", "n1", "sh", "-c", "kill -9 $$"]);
    assert_eq!(
        o.status.code(),
        Some(137),
        "$$ is the shell's pid: {}",
        show(&o)
    );
    // Several arguments run without a shell: nothing expands them.
    let o = c.hirtectl(&["exec", "n1", "echo", "$HOME", "${HOME}"]);
    assert_eq!(stdout(&o), "$HOME ${HOME}\n", "{}", show(&o));
    // Nor one argument: it is split into words, never given to a shell.
    let o = c.hirtectl(&["exec", "n1", "echo $HOME 'a  b' ; exit 3"]);
    assert_eq!(
        (o.status.code(), stdout(&o)),
        (Some(0), "$HOME a  b ; exit 3\n".to_string()),
        "{}",
        show(&o)
    );
}

/// Arguments may hold secrets: they stay out of the agent's log and out of the transient
/// unit's description, which every user of the node can read.
// [itest->req~agent.exec-private~1]
#[test]
fn ctl_exec_arguments_stay_out_of_logs_and_unit_descriptions() {
    if !hirte_tests::require_root("ctl_exec_arguments_stay_out_of_logs_and_unit_descriptions") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["n1"])).unwrap();
    // `$0` of the shell is the secret; the command runs 3 s, long enough to look at its unit.
    let (o, desc) = std::thread::scope(|s| {
        let run = s.spawn(|| c.hirtectl(&["exec", "n1", "sh -c 'sleep 3' s3cr3t-token"]));
        let mut desc = String::new();
        for _ in 0..50 {
            let o = c.systemctl("n1", &["show", "-p", "Description", "hirte-exec-*.service"]);
            desc = stdout(&o);
            if desc.contains("Description=") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (run.join().unwrap(), desc)
    });
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(desc.trim(), "Description=hirte exec: sh", "{desc}");
    let log = c.agent_log("n1");
    assert!(log.contains("Exec of 'sh' (3 arguments)"), "{log}");
    assert!(!log.contains("s3cr3t"), "{log}");
}
