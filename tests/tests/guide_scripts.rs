//! The guide's shell scripts (hirte-monitor.sh, check-hirte-health.sh, the node-state part of
//! backup-hirte.sh), copied verbatim, run against a real cluster with `hirtectl` on PATH.

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
use hirte_tests::{Cluster, ClusterSpec, Signal};

const NODES: [&str; 3] = ["primary", "agent1", "agent2"];

/// /usr/local/bin/hirte-monitor.sh from the guide ("Monitoring Integration"), verbatim.
const MONITOR_SH: &str = r#"#!/bin/bash
# Monitor all nodes
for node in $(hirtectl list-nodes | tail -n +2 | awk '{print $1}'); do
echo "=== Node: $node ==="
# Get failed units
failed=$(hirtectl list-units $node | grep -c failed) || failed=0
if [ $failed -gt 0 ]; then
echo "WARNING: $failed failed units on $node"
hirtectl list-units $node | grep failed
fi
# Check node connectivity
last_seen=$(hirtectl list-nodes | grep $node | awk '{print $3, $4}')
echo "Last seen: $last_seen"
echo ""
done
"#;

/// /usr/local/bin/check-hirte-health.sh from the guide ("Health Checks"), verbatim.
const HEALTH_SH: &str = r#"#!/bin/bash
ERRORS=0
# Check Hirte services
for service in hirte hirte-agent; do
if ! systemctl is-active --quiet $service; then
echo "ERROR: $service is not running"
((ERRORS++))
fi
done
# Check node connectivity
NODES=$(hirtectl list-nodes | tail -n +2 | wc -l)
if [ $NODES -lt 2 ]; then
echo "ERROR: Expected at least 2 nodes, found $NODES"
((ERRORS++))
fi
# Check for failed units
FAILED=$(hirtectl list-units | grep -c failed || true)
if [ $FAILED -gt 0 ]; then
echo "ERROR: $FAILED failed units detected"
((ERRORS++))
fi
exit $ERRORS
"#;

/// The "Backup node state" lines of the guide's backup-hirte.sh (the rest archives /etc).
const BACKUP_STATE_SH: &str = r#"#!/bin/bash
TIMESTAMP=$(date +%Y%m%d_%H%M%S)
mkdir -p $BACKUP_DIR
# Backup node state
hirtectl list-nodes > $BACKUP_DIR/nodes-$TIMESTAMP.txt
hirtectl list-units > $BACKUP_DIR/units-$TIMESTAMP.txt
"#;

/// `systemctl is-active --quiet hirte|hirte-agent` as the primary node's service manager
/// would answer it: the cluster's manager and primary agent processes stand in for the
/// guide's `hirte` and `hirte-agent` services.
const SYSTEMCTL_STUB: &str = r#"#!/bin/sh
[ "$1" = is-active ] && [ "$2" = --quiet ] || { echo "stub systemctl: $*" >&2; exit 2; }
case "$3" in
  hirte) pid=$STUB_HIRTE_PID ;;
  hirte-agent) pid=$STUB_HIRTE_AGENT_PID ;;
  *) exit 4 ;;
esac
[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
"#;

struct Bin(PathBuf);

impl Bin {
    /// A PATH dir with `hirtectl` (the built binary) and the `systemctl` stub, plus the scripts.
    fn new(c: &Cluster) -> Bin {
        let d = c.dir().join("guide-bin");
        std::fs::create_dir_all(&d).unwrap();
        let link = d.join("hirtectl");
        if !link.exists() {
            std::os::unix::fs::symlink(c.bin_dir().join("hirtectl"), &link).unwrap();
        }
        write_executable(&d, "systemctl", SYSTEMCTL_STUB);
        write_executable(&d, "hirte-monitor.sh", MONITOR_SH);
        write_executable(&d, "check-hirte-health.sh", HEALTH_SH);
        write_executable(&d, "backup-state.sh", BACKUP_STATE_SH);
        Bin(d)
    }

    fn run(&self, c: &Cluster, script: &str, env: &[(&str, String)]) -> Output {
        let path = format!(
            "{}:{}",
            self.0.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("bash");
        cmd.arg(self.0.join(script))
            .env("PATH", path)
            .env("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address())
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env(
                "STUB_HIRTE_PID",
                c.manager_pid().map(|p| p.to_string()).unwrap_or_default(),
            )
            .env(
                "STUB_HIRTE_AGENT_PID",
                c.agent_pid("primary")
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_timeout(&mut cmd, Duration::from_secs(120))
    }
}

/// The monitor output, split into (node, lines of its block).
fn blocks(out: &str) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<(String, Vec<String>)> = Vec::new();
    for l in out.lines() {
        if let Some(n) = l
            .strip_prefix("=== Node: ")
            .and_then(|r| r.strip_suffix(" ==="))
        {
            v.push((n.to_string(), Vec::new()));
        } else if let Some(last) = v.last_mut() {
            last.1.push(l.to_string());
        }
    }
    v
}

fn last_seen_of(block: &[String]) -> String {
    block
        .iter()
        .find_map(|l| l.strip_prefix("Last seen: "))
        .unwrap_or_else(|| panic!("no 'Last seen' line: {block:?}"))
        .trim()
        .to_string()
}

/// "now" or "<N>s ago" (N seconds; the node is heard from every second).
fn is_recent(s: &str) -> bool {
    s == "now"
        || s.strip_suffix("s ago")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

fn seconds_ago(s: &str) -> Option<u64> {
    s.strip_suffix("s ago")?.parse().ok()
}

fn hirte_dir(p: &Path) -> String {
    p.display().to_string()
}

// [itest->req~guide.scripts~1]
// [itest->req~ctl.list-nodes~1]
// [itest->req~ctl.list-units~1]
#[test]
fn guide_scripts_monitor_prints_nodes_last_seen_and_failed_units() {
    if !hirte_tests::require_root("guide_scripts_monitor_prints_nodes_last_seen_and_failed_units") {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let bin = Bin::new(&c);

    // Healthy cluster: a block per node, in list-nodes order, nothing failed, seen just now.
    let out = bin.run(&c, "hirte-monitor.sh", &[]);
    let text = ok(&out, "hirte-monitor.sh");
    assert!(stderr(&out).is_empty(), "{}", show(&out));
    let b = blocks(&text);
    let names: Vec<&str> = b.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, NODES, "{text}");
    for (n, lines) in &b {
        assert!(
            !lines.iter().any(|l| l.starts_with("WARNING")),
            "{n}: {text}"
        );
        let seen = last_seen_of(lines);
        assert!(is_recent(&seen), "{n}: last seen {seen:?}\n{text}");
    }

    // One failed unit on agent1: counted and listed there only.
    c.write_unit("agent1", "broken.service", FAILING_UNIT)
        .unwrap();
    let start = c.hirtectl(&["start", "agent1", "broken.service"]);
    assert!(!start.status.success());
    assert_eq!(is_active(&c, "agent1", "broken.service"), "failed");
    let out = bin.run(&c, "hirte-monitor.sh", &[]);
    let text = ok(&out, "hirte-monitor.sh with a failed unit");
    let b = blocks(&text);
    for (n, lines) in &b {
        let warnings: Vec<&String> = lines.iter().filter(|l| l.starts_with("WARNING")).collect();
        if n == "agent1" {
            assert_eq!(
                warnings,
                [&"WARNING: 1 failed units on agent1".to_string()],
                "{text}"
            );
            let row = lines
                .iter()
                .find(|l| l.starts_with("broken.service"))
                .unwrap_or_else(|| panic!("failed unit not listed: {text}"));
            let cells: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(cells[..3], ["broken.service", "failed", "failed"], "{row}");
        } else {
            assert!(warnings.is_empty(), "{n}: {text}");
        }
    }

    // agent2 gone for a few seconds: still listed, last seen "Ns ago".
    c.kill_agent("agent2", Signal::SIGKILL);
    c.wait_node_state("agent2", "offline", SOON).unwrap();
    c.wait_for("agent2 last seen 2s ago or more", SOON, || {
        let out = c.hirtectl(&["list-nodes"]);
        stdout(&out)
            .lines()
            .find(|l| l.starts_with("agent2"))
            .and_then(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                seconds_ago(&cells.get(2..)?.join(" "))
            })
            .is_some_and(|n| n >= 2)
    })
    .unwrap();
    let out = bin.run(&c, "hirte-monitor.sh", &[]);
    let text = stdout(&out);
    let b = blocks(&text);
    let agent2 = &b
        .iter()
        .find(|(n, _)| n == "agent2")
        .expect("agent2 block")
        .1;
    let seen = last_seen_of(agent2);
    assert!(
        seconds_ago(&seen).is_some_and(|n| n >= 2),
        "agent2 last seen {seen:?}\n{text}"
    );
    assert!(!agent2.iter().any(|l| l.starts_with("WARNING")), "{text}");
    // The error for the offline node's units is one line on stderr, the script goes on.
    assert!(
        stderr(&out).contains("agent2") && stderr(&out).contains("offline"),
        "{}",
        show(&out)
    );
    assert!(is_recent(&last_seen_of(
        &b.iter().find(|(n, _)| n == "primary").unwrap().1
    )));
}

// [itest->req~guide.scripts~1]
// [itest->req~ctl.list-units~1]
#[test]
fn guide_scripts_health_check_counts_nodes_and_failed_units() {
    if !hirte_tests::require_root("guide_scripts_health_check_counts_nodes_and_failed_units") {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let bin = Bin::new(&c);

    let out = bin.run(&c, "check-hirte-health.sh", &[]);
    assert!(out.status.success(), "healthy cluster: {}", show(&out));
    assert_eq!(stdout(&out), "", "{}", show(&out));
    assert_eq!(stderr(&out), "", "{}", show(&out));

    // Backup of the node state: both listings land in files, complete.
    let backup = c.dir().join("backup");
    let out = bin.run(&c, "backup-state.sh", &[("BACKUP_DIR", hirte_dir(&backup))]);
    ok(&out, "backup-state.sh");
    let files: Vec<PathBuf> = std::fs::read_dir(&backup)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let read = |prefix: &str| {
        let f = files
            .iter()
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix}* in {files:?}"));
        std::fs::read_to_string(f).unwrap()
    };
    let nodes = read("nodes-");
    assert_eq!(hirte_tests::parse_list_nodes(&nodes).len(), 3, "{nodes}");
    let units = read("units-");
    for n in NODES {
        assert!(
            units.lines().any(|l| l.starts_with(&format!("{n} "))),
            "{units}"
        );
    }

    // Two failed units on two nodes.
    for n in ["agent1", "agent2"] {
        c.write_unit(n, "broken.service", FAILING_UNIT).unwrap();
        let _ = c.hirtectl(&["start", n, "broken.service"]);
        assert_eq!(is_active(&c, n, "broken.service"), "failed");
    }
    let out = bin.run(&c, "check-hirte-health.sh", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(
        stdout(&out),
        "ERROR: 2 failed units detected\n",
        "{}",
        show(&out)
    );

    // A node down still counts as a node (listed offline); the failed unit there is not seen.
    c.kill_agent("agent2", Signal::SIGKILL);
    c.wait_node_state("agent2", "offline", SOON).unwrap();
    let out = bin.run(&c, "check-hirte-health.sh", &[]);
    assert_eq!(
        stdout(&out),
        "ERROR: 1 failed units detected\n",
        "{}",
        show(&out)
    );

    // The manager down: the service check fires, no nodes are found.
    c.kill_manager(Signal::SIGTERM);
    let out = bin.run(&c, "check-hirte-health.sh", &[]);
    assert_eq!(
        stdout(&out),
        "ERROR: hirte is not running\nERROR: Expected at least 2 nodes, found 0\n",
        "{}",
        show(&out)
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    for l in stderr(&out).lines() {
        assert!(
            l.starts_with("hirtectl: ") && l.contains("not running"),
            "{}",
            show(&out)
        );
    }
}

/// /usr/local/bin/deploy-stack.sh from the guide ("Multi-Node Orchestration"), verbatim.
const DEPLOY_SH: &str = r#"#!/bin/bash
set -e
echo "Deploying application stack..."
# Start database on primary node
echo "Starting database..."
hirtectl start primary postgresql.service
sleep 5
# Wait for database to be ready
until hirtectl exec primary "pg_isready -U postgres"; do
echo "Waiting for database..."
sleep 2
done
# Start backend services on agent nodes
echo "Starting backend services..."
hirtectl start agent app-backend.service
hirtectl start agent cache.service
# Wait for backends
sleep 10
# Start frontend services
echo "Starting frontend services..."
hirtectl start agent nginx.service
hirtectl start agent app-frontend.service
echo "Stack deployment complete!"
# Show status
hirtectl list-units primary | grep -E "postgresql|running"
hirtectl list-units agent | grep -E "app-|nginx|cache|running"
"#;

/// Python's `str.split(None, maxsplit)`: runs of blanks separate, the rest stays whole.
fn py_split(line: &str, maxsplit: usize) -> Vec<&str> {
    let mut v = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        if v.len() == maxsplit {
            v.push(rest.trim_end());
            break;
        }
        match rest.split_once(char::is_whitespace) {
            Some((a, b)) => {
                v.push(a);
                rest = b.trim_start();
            }
            None => {
                v.push(rest);
                break;
            }
        }
    }
    v
}

fn service(description: &str) -> String {
    format!("[Unit]\nDescription={description}\n[Service]\nExecStart=/bin/sleep infinity\n")
}

// [itest->req~guide.scripts~1]
// [itest->req~ctl.exec~1]
// [itest->req~ctl.unit-ops~1]
#[test]
fn guide_scripts_deploy_stack_polls_with_exec_and_stops_at_first_failed_start() {
    if !hirte_tests::require_root(
        "guide_scripts_deploy_stack_polls_with_exec_and_stops_at_first_failed_start",
    ) {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["primary", "agent"])).unwrap();
    let bin = Bin::new(&c);
    write_executable(&bin.0, "deploy-stack.sh", DEPLOY_SH);
    // The script's sleeps only pace it; on the host they return at once.
    write_executable(&bin.0, "sleep", "#!/bin/sh\nexit 0\n");
    // On primary, a pg_isready that says "not ready" once, then "ready"; reached through the
    // PATH of primary's service manager, which `hirtectl exec` commands inherit.
    let stubs = c.node_dir("primary").unwrap().join("stub-bin");
    std::fs::create_dir_all(&stubs).unwrap();
    let marker = c.node_runtime_dir("primary").unwrap().join("pg-ready");
    write_executable(
        &stubs,
        "pg_isready",
        &format!(
            "#!/bin/sh\n[ \"$*\" = \"-U postgres\" ] || exit 3\n\
             if [ -e {m} ]; then echo 'accepting connections'; exit 0; fi\n\
             touch {m}; echo 'no response'; exit 2\n",
            m = marker.display()
        ),
    );
    ok(
        &c.systemctl(
            "primary",
            &[
                "set-environment",
                &format!("PATH={}:/usr/local/bin:/usr/bin:/bin", stubs.display()),
            ],
        ),
        "set-environment",
    );
    c.write_unit("primary", "postgresql.service", &service("PostgreSQL"))
        .unwrap();
    for (u, d) in [
        ("app-backend.service", "Application Backend"),
        ("nginx.service", "Web server"),
        ("app-frontend.service", "Application Frontend"),
    ] {
        c.write_unit("agent", u, &service(d)).unwrap();
    }

    // cache.service is missing on agent: `set -e` stops the script at its start.
    let out = bin.run(&c, "deploy-stack.sh", &[]);
    let text = stdout(&out);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(text.contains("Waiting for database..."), "{}", show(&out));
    assert_eq!(text.matches("Waiting for database...").count(), 1, "{text}");
    assert!(
        text.contains("accepting connections"),
        "exec output: {text}"
    );
    assert!(text.contains("Starting backend services..."), "{text}");
    assert!(!text.contains("Starting frontend services..."), "{text}");
    assert!(!text.contains("Stack deployment complete!"), "{text}");
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.starts_with("hirtectl: ") && l.contains("cache.service")),
        "{}",
        show(&out)
    );
    assert_eq!(is_active(&c, "primary", "postgresql.service"), "active");
    assert_eq!(is_active(&c, "agent", "app-backend.service"), "active");
    assert_eq!(is_active(&c, "agent", "nginx.service"), "inactive");

    // With every unit there the whole stack comes up and the status lines show it.
    c.write_unit("agent", "cache.service", &service("Cache"))
        .unwrap();
    let out = bin.run(&c, "deploy-stack.sh", &[]);
    let text = ok(&out, "deploy-stack.sh");
    assert!(
        !text.contains("Waiting for database..."),
        "ready at once now: {text}"
    );
    assert!(text.contains("Stack deployment complete!"), "{text}");
    for u in [
        "postgresql.service",
        "app-backend.service",
        "cache.service",
        "nginx.service",
        "app-frontend.service",
    ] {
        let row = text
            .lines()
            .find(|l| l.starts_with(u))
            .unwrap_or_else(|| panic!("{u} not in the status lines: {text}"));
        assert!(row.contains("active") && row.contains("running"), "{row}");
    }
    for u in [
        "app-backend.service",
        "cache.service",
        "nginx.service",
        "app-frontend.service",
    ] {
        assert_eq!(is_active(&c, "agent", u), "active", "{u}");
    }
}

// [itest->req~guide.scripts~1]
// [itest->req~ctl.list-nodes~1]
// [itest->req~ctl.list-units~1]
#[test]
fn guide_scripts_dashboard_column_split_matches_listings() {
    if !hirte_tests::require_root("guide_scripts_dashboard_column_split_matches_listings") {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    c.write_unit("agent1", "web.service", &service("Web tier (demo)"))
        .unwrap();
    ok(
        &c.hirtectl(&["start", "agent1", "web.service"]),
        "start web",
    );
    c.kill_agent("agent2", Signal::SIGKILL);
    c.wait_node_state("agent2", "offline", SOON).unwrap();

    // The dashboard: `lines = stdout.strip().split('\n')[1:]`, `parts = line.split()`,
    // name = parts[0], state = parts[1], last_seen = ' '.join(parts[2:]).
    let out = ok(&c.hirtectl(&["list-nodes"]), "list-nodes");
    let mut nodes = Vec::new();
    for line in out.trim().split('\n').skip(1) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert!(parts.len() >= 3, "{line:?}");
        nodes.push((parts[0], parts[1], parts[2..].join(" ")));
    }
    let names: Vec<&str> = nodes.iter().map(|n| n.0).collect();
    assert_eq!(names, NODES, "{out}");
    for (name, state, seen) in &nodes {
        let want = if *name == "agent2" {
            "offline"
        } else {
            "online"
        };
        assert_eq!(*state, want, "{out}");
        assert!(is_recent(seen), "{name}: {seen:?}");
    }

    // Services: `line.split(None, 3)`: name, state = parts[1], description = parts[3].
    let out = ok(&c.hirtectl(&["list-units", "agent1"]), "list-units agent1");
    let mut seen_web = false;
    for line in out.trim().split('\n').skip(1) {
        let parts = py_split(line, 3);
        assert!(parts.len() >= 3, "{line:?}");
        assert!(
            [
                "active",
                "inactive",
                "failed",
                "activating",
                "deactivating",
                "reloading"
            ]
            .contains(&parts[1]),
            "state column of {line:?} is {:?}",
            parts[1]
        );
        if parts[0] == "web.service" {
            seen_web = true;
            assert_eq!(parts[1], "active");
            assert_eq!(parts.get(3).copied(), Some("Web tier (demo)"), "{line:?}");
        }
    }
    assert!(seen_web, "{out}");
}
