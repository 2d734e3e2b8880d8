//! The installed units run the daemons under a real systemd: each node's `systemd --user`
//! starts the units that `make install` put into a scratch DESTDIR (their /usr/bin paths
//! made real by an overlay in the node's private mount namespace). The manager runs from
//! `hirte.service` and node n1's agent from the system `hirte-agent.service`, both with
//! their full sandboxing; node n2's agent runs from the user unit. Checked: Type=notify
//! readiness, the watchdog (a stopped agent is killed and restarted), reload by SIGHUP, a
//! clean stop, and that start and exec work through the sandboxed agents. The installed
//! templates of cross-node dependencies run too (n1 the system manager's, n2 the user
//! manager's): `hirte-dep@` starts, follows and releases its target as operations.md says,
//! and `hirte-proxy@` runs its helper from /usr/libexec with its sandboxing, reaches the
//! local agent and, refused by the manager (no `AllowDependenciesOn=`), fails with the cause.
//!
//! Test-only drop-ins point the daemons at the cluster's buses and configuration (below
//! /tmp, hence PrivateTmp=no), send their output to a file (the nodes have no journal) and
//! shorten WatchdogSec= so the watchdog fires within seconds.

// Test code: a failed step must fail the test, with a message saying which.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod install_support;

use std::time::{Duration, Instant};

use hirte_tests::{Cluster, ClusterSpec};
use install_support::*;

const PROBE: &str =
    "[Unit]\nDescription=unit test probe\n[Service]\nExecStart=/bin/sleep infinity\n";

const INACCESSIBLE_NODES: &str = "set -e
mkdir -p /run/systemd/inaccessible
cd /run/systemd/inaccessible
mkdir -p dir
touch reg
[ -p fifo ] || mkfifo fifo
[ -c chr ] || mknod chr c 0 0
[ -b blk ] || mknod blk b 0 0
chmod 0000 dir reg fifo chr blk";

fn show_prop(c: &Cluster, node: &str, unit: &str, prop: &str) -> String {
    let out = c.systemctl(node, &["show", "-p", prop, "--value", unit]);
    stdout(&out).trim().to_string()
}

fn unit_log(c: &Cluster, node: &str, name: &str) -> String {
    std::fs::read_to_string(c.node_dir(node).unwrap().join(name)).unwrap_or_default()
}

fn all_logs(c: &Cluster) -> String {
    format!(
        "--- n1 hirte.service\n{}\n--- n1 hirte-agent.service\n{}\n--- n2 hirte-agent.service (user)\n{}\n{}",
        unit_log(c, "n1", "unit-hirte.log"),
        unit_log(c, "n1", "unit-agent.log"),
        unit_log(c, "n2", "unit-agent.log"),
        c.log_tails()
    )
}

fn systemctl_ok(c: &Cluster, node: &str, args: &[&str]) {
    let out = c.systemctl(node, args);
    if !out.status.success() {
        let unit = args.last().copied().unwrap_or("");
        let st = c.systemctl(node, &["status", "--lines=0", unit]);
        panic!(
            "systemctl --user {args:?} on {node}: {}\n{}\n{}",
            show(&out),
            stdout(&st),
            all_logs(c)
        );
    }
}

fn dbus_prop(address: &str, dest: &str, path: &str, iface: &str, prop: &str) -> Option<String> {
    use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
    let conn = hirte_tests::connect_bus(address).ok()?;
    let p = conn.with_proxy(dest, path, Duration::from_secs(5));
    p.get::<String>(iface, prop).ok()
}

/// The installed `hirte-dep@.service` (`dest`, below DESTDIR) under `node`'s systemd:
/// starting the anchor starts its target and succeeds once the target is active; a
/// target that fails to start fails the anchor's start; the target's stop stops the anchor
/// (BindsTo=); stopping the anchor leaves the target running unless the target has
/// StopWhenUnneeded=yes.
fn check_dep_template(c: &Cluster, s: &Staged, node: &str, dest: &str) {
    c.write_unit(node, "hirte-dep@.service", &read(&s.path(dest)))
        .unwrap();
    c.write_unit(node, "dep-target.service", PROBE).unwrap();
    c.write_unit(
        node,
        "dep-shared.service",
        "[Unit]\nStopWhenUnneeded=yes\n[Service]\nExecStart=/bin/sleep infinity\n",
    )
    .unwrap();
    c.write_unit(
        node,
        "dep-broken.service",
        "[Service]\nType=oneshot\nExecStart=/bin/false\n",
    )
    .unwrap();
    let state = |unit: &str| show_prop(c, node, unit, "ActiveState");
    let wait_state = |unit: &str, want: &str| {
        wait_for(
            &format!("{unit} {want} on {node}"),
            Duration::from_secs(10),
            || state(unit) == want,
        )
    };

    systemctl_ok(c, node, &["start", "hirte-dep@dep-target.service"]);
    assert_eq!(state("dep-target.service"), "active", "{node}");
    assert_eq!(state("hirte-dep@dep-target.service"), "active", "{node}");
    systemctl_ok(c, node, &["stop", "dep-target.service"]);
    wait_state("hirte-dep@dep-target.service", "inactive");

    systemctl_ok(c, node, &["start", "hirte-dep@dep-target.service"]);
    systemctl_ok(c, node, &["stop", "hirte-dep@dep-target.service"]);
    assert_eq!(state("dep-target.service"), "active", "{node}");
    systemctl_ok(c, node, &["stop", "dep-target.service"]);

    systemctl_ok(c, node, &["start", "hirte-dep@dep-shared.service"]);
    assert_eq!(state("dep-shared.service"), "active", "{node}");
    systemctl_ok(c, node, &["stop", "hirte-dep@dep-shared.service"]);
    wait_state("dep-shared.service", "inactive");

    let out = c.systemctl(node, &["start", "hirte-dep@dep-broken.service"]);
    assert!(
        !out.status.success(),
        "anchor of a failing target started on {node}: {}",
        show(&out)
    );
    assert_ne!(state("hirte-dep@dep-broken.service"), "active", "{node}");
    let _ = c.systemctl(node, &["reset-failed"]);
}

/// The installed `hirte-proxy@.service` (`dest`) under `node`'s systemd, with `env` for
/// the helper's bus: `hirte-proxy@TARGET_probe.service` runs /usr/libexec/hirte-proxy
/// (sandboxed), which reaches the local agent; the manager refuses the proxy (the cluster
/// has no `AllowDependenciesOn=`), so the start fails with the helper's one-line cause in
/// the unit's output and the unit is not left active.
fn check_refused_proxy(c: &Cluster, s: &Staged, node: &str, dest: &str, target: &str, env: &str) {
    c.write_unit(node, "hirte-proxy@.service", &read(&s.path(dest)))
        .unwrap();
    // Sorts after any drop-in of the harness, so this output setting wins.
    let log = c.node_dir(node).unwrap().join("unit-proxy.log");
    c.write_unit(
        node,
        "hirte-proxy@.service.d/zz-install-test.conf",
        &format!(
            "[Service]\n{env}StandardOutput=append:{}\nStandardError=inherit\n",
            log.display()
        ),
    )
    .unwrap();
    let unit = format!("hirte-proxy@{target}_probe.service");
    let exec = show_prop(c, node, &unit, "ExecStart");
    assert!(
        exec.contains(&format!("path={PROXY_HELPER} ")),
        "{node} {unit}: {exec}"
    );
    let out = c.systemctl(node, &["start", "--no-block", &unit]);
    assert!(out.status.success(), "{}", show(&out));
    let cause = format!("cannot start probe.service on node '{target}'");
    wait_for(
        &format!("{unit} on {node} failed with '{cause}'"),
        Duration::from_secs(20),
        || {
            show_prop(c, node, &unit, "ActiveState") == "failed"
                && std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&cause))
        },
    );
    eprintln!(
        "{node} {unit}: {}",
        std::fs::read_to_string(&log).unwrap_or_default().trim()
    );
    assert_eq!(show_prop(c, node, &unit, "Result"), "exit-code");
    assert_eq!(show_prop(c, node, &unit, "ExecMainStatus"), "1");
    let _ = c.systemctl(node, &["reset-failed", &unit]);
}

/// Writes the installed unit `dest` (a path below DESTDIR) into the node plus a drop-in.
fn install_unit(c: &Cluster, s: &Staged, node: &str, name: &str, dest: &str, dropin: &str) {
    c.write_unit(
        node,
        &format!("{name}.d/50-test.conf"),
        &format!("[Service]\n{dropin}"),
    )
    .unwrap();
    c.write_unit(node, name, &read(&s.path(dest))).unwrap();
}

// [itest->req~install.units~1]
// [itest->req~ops.notify-watchdog~1]
// [itest->req~ops.sighup~1]
#[test]
fn installed_units_run_the_daemons_under_systemd() {
    if !hirte_tests::require_root("installed_units_run_the_daemons_under_systemd") {
        return;
    }
    let s = make_install(&[]);
    assert!(
        s.output.status.success(),
        "make install: {}",
        show(&s.output)
    );
    let mut spec = ClusterSpec::systemd_only(&["n1", "n2"]);
    spec.start_manager = false;
    let c = Cluster::start(spec).unwrap_or_else(|e| panic!("cluster start failed: {e}"));
    let destbin = s.path("/usr/bin");
    let destlibexec = s.path("/usr/libexec");
    for node in ["n1", "n2"] {
        let out = c.node_shell(
            node,
            &format!(
                "mount -t overlay overlay -o lowerdir={}:/usr/bin /usr/bin && test -x /usr/bin/hirte-agent && \
                 mount -t overlay overlay -o lowerdir={}:/usr/libexec /usr/libexec && test -x {PROXY_HELPER}",
                destbin.display(),
                destlibexec.display()
            ),
        );
        assert!(out.status.success(), "overlay on {node}: {}", show(&out));
        // What PID 1 creates at boot and the nodes' private /run/systemd lacks: the nodes
        // that ProtectHome=, ProtectKernelTunables= and ProtectKernelLogs= mount over the
        // paths they hide (without them the unit fails with 226/NAMESPACE).
        let out = c.node_shell(node, INACCESSIBLE_NODES);
        assert!(
            out.status.success(),
            "inaccessible nodes on {node}: {}",
            show(&out)
        );
    }
    let n1 = c.node_dir("n1").unwrap();
    let n2 = c.node_dir("n2").unwrap();
    let n1_etc = c.node_config_dir("n1").unwrap();
    let n2_etc = c.node_config_dir("n2").unwrap();

    // The manager from hirte.service, fully sandboxed, on the cluster's system bus.
    install_unit(
        &c,
        &s,
        "n1",
        "hirte.service",
        "/usr/lib/systemd/system/hirte.service",
        &format!(
            "Environment=DBUS_SYSTEM_BUS_ADDRESS={} HIRTE_CONFIG_DIR={}\nPrivateTmp=no\n\
             WatchdogSec=2s\nStandardOutput=append:{}\nStandardError=inherit\n",
            c.bus_address(),
            n1_etc.display(),
            n1.join("unit-hirte.log").display()
        ),
    );
    let t = Instant::now();
    systemctl_ok(&c, "n1", &["start", "hirte.service"]);
    eprintln!("hirte.service started (READY=1) in {:?}", t.elapsed());
    assert_eq!(
        show_prop(&c, "n1", "hirte.service", "ActiveState"),
        "active"
    );
    assert_eq!(show_prop(&c, "n1", "hirte.service", "Type"), "notify");
    assert!(
        hirte_tests::name_has_owner(&c.system_bus().unwrap(), "org.containers.hirte").unwrap(),
        "READY=1 before the bus name was owned\n{}",
        all_logs(&c)
    );

    // n1's agent from the system unit: CAP_SYS_ADMIN only, ProtectSystem=strict, ...; its
    // "system bus" is the node's bus, where the node's systemd is.
    install_unit(
        &c,
        &s,
        "n1",
        "hirte-agent.service",
        "/usr/lib/systemd/system/hirte-agent.service",
        &format!(
            "Environment=DBUS_SYSTEM_BUS_ADDRESS={} HIRTE_CONFIG_DIR={}\nPrivateTmp=no\n\
             WatchdogSec=2s\nStandardOutput=append:{}\nStandardError=inherit\n",
            c.node_bus_address("n1").unwrap(),
            n1_etc.display(),
            n1.join("unit-agent.log").display()
        ),
    );
    systemctl_ok(&c, "n1", &["start", "hirte-agent.service"]);

    // n2's agent from the user unit (`hirte-agent --user`).
    install_unit(
        &c,
        &s,
        "n2",
        "hirte-agent.service",
        "/usr/lib/systemd/user/hirte-agent.service",
        &format!(
            "Environment=HIRTE_CONFIG_DIR={}\nWatchdogSec=2s\nRestartSec=500ms\n\
             StandardOutput=append:{}\nStandardError=inherit\n",
            n2_etc.display(),
            n2.join("unit-agent.log").display()
        ),
    );
    systemctl_ok(&c, "n2", &["start", "hirte-agent.service"]);
    for node in ["n1", "n2"] {
        c.wait_node_state(node, "online", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}\n{}", all_logs(&c)));
        assert_eq!(show_prop(&c, node, "hirte-agent.service", "Type"), "notify");
    }

    // Work through the sandboxed daemons: start a unit, run a command (its output file is in
    // the agent's RuntimeDirectory).
    for node in ["n1", "n2"] {
        c.write_unit(node, "probe.service", PROBE).unwrap();
        let out = c.hirtectl(&["start", node, "probe.service"]);
        assert!(
            out.status.success(),
            "start on {node}: {}\n{}",
            show(&out),
            all_logs(&c)
        );
        let out = c.hirtectl(&["exec", node, "echo hello from exec"]);
        assert!(
            out.status.success() && stdout(&out).contains("hello from"),
            "exec on {node}: {}\n{}",
            show(&out),
            all_logs(&c)
        );
    }

    // The templates of cross-node dependencies, as installed, under real systemd managers.
    check_dep_template(&c, &s, "n1", "/usr/lib/systemd/system/hirte-dep@.service");
    check_dep_template(&c, &s, "n2", "/usr/lib/systemd/user/hirte-dep@.service");
    check_refused_proxy(
        &c,
        &s,
        "n1",
        "/usr/lib/systemd/system/hirte-proxy@.service",
        "n2",
        &format!(
            "Environment=DBUS_SYSTEM_BUS_ADDRESS={}\n",
            c.node_bus_address("n1").unwrap()
        ),
    );
    check_refused_proxy(
        &c,
        &s,
        "n2",
        "/usr/lib/systemd/user/hirte-proxy@.service",
        "n1",
        "",
    );

    // The watchdog: both daemons ping it (WatchdogSec=2s here) and stay up ...
    let pid_before = show_prop(&c, "n2", "hirte-agent.service", "MainPID");
    std::thread::sleep(Duration::from_secs(5));
    for (node, unit) in [
        ("n1", "hirte.service"),
        ("n1", "hirte-agent.service"),
        ("n2", "hirte-agent.service"),
    ] {
        assert_eq!(
            show_prop(&c, node, unit, "NRestarts"),
            "0",
            "{node} {unit}\n{}",
            all_logs(&c)
        );
        assert_eq!(
            show_prop(&c, node, unit, "ActiveState"),
            "active",
            "{node} {unit}"
        );
        assert_eq!(
            show_prop(&c, node, unit, "WatchdogUSec"),
            "2s",
            "{node} {unit}"
        );
    }
    assert_eq!(
        show_prop(&c, "n2", "hirte-agent.service", "MainPID"),
        pid_before
    );
    // ... and a main loop that stops pinging (SIGSTOP) is killed and restarted.
    let out = c.node_shell("n2", &format!("kill -STOP {pid_before}"));
    assert!(out.status.success(), "{}", show(&out));
    wait_for(
        "n2's agent restarted by the watchdog",
        Duration::from_secs(20),
        || {
            show_prop(&c, "n2", "hirte-agent.service", "NRestarts") == "1"
                && show_prop(&c, "n2", "hirte-agent.service", "ActiveState") == "active"
        },
    );
    let pid_after = show_prop(&c, "n2", "hirte-agent.service", "MainPID");
    assert_ne!(pid_after, pid_before);
    c.wait_node_state("n2", "online", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", all_logs(&c)));

    // Reload (SIGHUP): the new LogLevel applies, the process stays.
    std::fs::write(
        n2_etc.join("agent.conf.d/90-level.conf"),
        "[hirte-agent]\nLogLevel=error\n",
    )
    .unwrap();
    systemctl_ok(&c, "n2", &["reload", "hirte-agent.service"]);
    let n2_bus = c.node_bus_address("n2").unwrap();
    wait_for(
        "n2's agent LogLevel=error after reload",
        Duration::from_secs(10),
        || {
            dbus_prop(
                &n2_bus,
                "org.containers.hirte.Agent",
                "/org/containers/hirte",
                "org.containers.hirte.Agent",
                "LogLevel",
            )
            .as_deref()
                == Some("error")
        },
    );
    assert_eq!(
        show_prop(&c, "n2", "hirte-agent.service", "MainPID"),
        pid_after
    );
    std::fs::write(
        n1_etc.join("hirte.conf.d/90-level.conf"),
        "[hirte]\nLogLevel=warn\n",
    )
    .unwrap();
    let manager_pid = show_prop(&c, "n1", "hirte.service", "MainPID");
    systemctl_ok(&c, "n1", &["reload", "hirte.service"]);
    let bus = c.bus_address();
    wait_for(
        "manager LogLevel=warn after reload",
        Duration::from_secs(10),
        || {
            dbus_prop(
                &bus,
                "org.containers.hirte",
                "/org/containers/hirte",
                "org.containers.hirte.Manager",
                "LogLevel",
            )
            .as_deref()
                == Some("warn")
        },
    );
    assert_eq!(show_prop(&c, "n1", "hirte.service", "MainPID"), manager_pid);
    // A broken file on reload: the manager keeps running with what it has.
    std::fs::write(
        n1_etc.join("hirte.conf.d/91-bad.conf"),
        "[hirte]\nLogLevel=loud\n",
    )
    .unwrap();
    systemctl_ok(&c, "n1", &["reload", "hirte.service"]);
    wait_for(
        "manager logs the rejected reload",
        Duration::from_secs(10),
        || unit_log(&c, "n1", "unit-hirte.log").contains("Configuration not re-read"),
    );
    assert_eq!(
        show_prop(&c, "n1", "hirte.service", "ActiveState"),
        "active"
    );
    assert_eq!(
        dbus_prop(
            &bus,
            "org.containers.hirte",
            "/org/containers/hirte",
            "org.containers.hirte.Manager",
            "LogLevel"
        )
        .as_deref(),
        Some("warn")
    );
    assert!(c.list_nodes().is_some());

    // A clean stop (STOPPING=1, exit 0) of every unit.
    for (node, unit) in [
        ("n2", "hirte-agent.service"),
        ("n1", "hirte-agent.service"),
        ("n1", "hirte.service"),
    ] {
        systemctl_ok(&c, node, &["stop", unit]);
        assert_eq!(
            show_prop(&c, node, unit, "ActiveState"),
            "inactive",
            "{node} {unit}"
        );
        assert_eq!(
            show_prop(&c, node, unit, "Result"),
            "success",
            "{node} {unit}\n{}",
            all_logs(&c)
        );
    }
    drop(c);
    drop(s);
}
