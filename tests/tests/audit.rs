//! Who did what (issue 11, item 4): every call that changes something leaves one record with
//! the caller's UID, PID and command name, the node, unit, job and result, whatever the log
//! level; and `AllowExec=no` closes the ways around it (item 5). Real manager, agents,
//! systemd and hirtectl (see `hirte_tests`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use common::*;
use dbus::arg::{RefArg, Variant};
use hirte_tests::{Cluster, ClusterSpec};

const NODES: [&str; 2] = ["primary", "agent1"];

fn cluster(manager: &str, agent1: &str) -> Cluster {
    let mut spec = ClusterSpec::new(&NODES);
    spec.start_manager = false;
    spec.start_agents = false;
    let mut c = Cluster::start(spec).unwrap();
    let etc = c.node_config_dir("primary").unwrap().join("hirte.conf.d");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("50-test.conf"), format!("[hirte]\n{manager}")).unwrap();
    let etc = c.node_config_dir("agent1").unwrap().join("agent.conf.d");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("50-test.conf"), format!("[hirte-agent]\n{agent1}")).unwrap();
    c.start_manager().unwrap();
    for n in NODES {
        c.start_agent(n).unwrap();
    }
    c.wait_all_online(SOON).unwrap();
    c
}

// [itest->req~audit.records~1]
#[test]
fn audit_start_exec_and_refusal_name_the_caller_even_at_log_level_error() {
    if !hirte_tests::require_root(
        "audit_start_exec_and_refusal_name_the_caller_even_at_log_level_error",
    ) {
        return;
    }
    let c = cluster("LogLevel=error\n", "");
    c.write_unit("agent1", "audit.service", SLEEP_UNIT).unwrap();
    ok(&c.hirtectl(&["start", "agent1", "audit.service"]), "start");
    let start = manager_log_line(
        &c,
        &[
            "start 'audit.service' on node 'agent1' by uid 0 (pid ",
            ", hirtectl): job ",
            "CALLER_UID=0",
            "CALLER_COMM=hirtectl",
            "NODE=agent1",
            "UNIT=audit.service",
        ],
    );
    eprintln!("audit record: {start}");
    let job = start
        .split("JOB=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(job.parse::<u32>().is_ok(), "{start}");
    assert!(start.contains(&format!("job {job} queued")), "{start}");
    // The guide's audit report: the start shows who did it.
    let log = c.manager_log();
    let report = log
        .lines()
        .filter(|l| l.contains("start") || l.contains("stop") || l.contains("restart"));
    assert!(report.clone().any(|l| l.contains("by uid 0")), "{log}");

    ok(&c.hirtectl(&["exec", "agent1", "true"]), "exec");
    manager_log_line(
        &c,
        &[
            "exec 'true' on node 'agent1' by uid 0",
            "hirtectl): exit status 0",
            "CALLER_COMM=hirtectl",
            "NODE=agent1",
        ],
    );
    // A refused call is recorded with the refusal.
    let out = c.hirtectl(&["stop", "agent1", "no-such.service"]);
    assert!(!out.status.success());
    manager_log_line(
        &c,
        &[
            "stop 'no-such.service' on node 'agent1' by uid 0",
            "refused: ",
        ],
    );
    // Nothing else of the manager's info level reached the log at LogLevel=error.
    assert!(!c.manager_log().contains("connected from"));
}

// [itest->req~api.exec-bypass~1]
// [itest->req~agent.allow-exec~1]
#[test]
fn audit_allow_exec_no_closes_transient_exec_and_foreign_unit_files() {
    if !hirte_tests::require_root(
        "audit_allow_exec_no_closes_transient_exec_and_foreign_unit_files",
    ) {
        return;
    }
    // The manager refuses; agent1 refuses Exec by itself even when the manager allows it.
    let c = cluster("AllowExec=no\n", "AllowExec=no\n");
    let bus = c.system_bus().unwrap();
    let props = |name: &str, value: &str| -> Vec<(String, Variant<Box<dyn RefArg>>)> {
        vec![(
            name.to_string(),
            Variant(Box::new(value.to_string()) as Box<dyn RefArg>),
        )]
    };
    let transient = |props: Vec<(String, Variant<Box<dyn RefArg>>)>| {
        call::<_, (dbus::Path,)>(
            &bus,
            &node_path("agent1"),
            NODE_IFACE,
            "StartTransientUnit",
            (
                "bypass.service",
                "replace",
                props,
                Vec::<(String, Vec<(String, Variant<Box<dyn RefArg>>)>)>::new(),
            ),
        )
    };
    let e = transient(props("ExecStartPre", "/bin/true")).unwrap_err();
    assert_eq!(e.0, "org.containers.hirte.Error.NotAllowed", "{e:?}");
    assert!(e.1.contains("ExecStartPre"), "{e:?}");
    // Without Exec* properties a transient unit is still fine (a slice).
    call::<_, (dbus::Path,)>(
        &bus,
        &node_path("agent1"),
        NODE_IFACE,
        "StartTransientUnit",
        (
            "audit-test.slice",
            "replace",
            props("Description", "no command"),
            Vec::<(String, Vec<(String, Variant<Box<dyn RefArg>>)>)>::new(),
        ),
    )
    .unwrap();
    let e = call::<_, (bool, Vec<(String, String, String)>)>(
        &bus,
        &node_path("agent1"),
        NODE_IFACE,
        "EnableUnitFiles",
        (vec!["/tmp/evil.service"], false, false),
    )
    .unwrap_err();
    assert_eq!(e.0, "org.containers.hirte.Error.NotAllowed", "{e:?}");
    assert!(e.1.contains("/tmp/evil.service"), "{e:?}");
    let out = c.hirtectl(&["exec", "agent1", "true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("AllowExec=no"), "{}", show(&out));
    manager_log_line(
        &c,
        &[
            "start-transient 'bypass.service' on node 'agent1'",
            "refused:",
        ],
    );

    // The node's own AllowExec=no, with the manager allowing Exec.
    let mut c = c;
    c.kill_manager(hirte_tests::Signal::SIGTERM);
    let etc = c.node_config_dir("primary").unwrap().join("hirte.conf.d");
    std::fs::write(etc.join("50-test.conf"), "[hirte]\nAllowExec=yes\n").unwrap();
    c.start_manager().unwrap();
    c.wait_all_online(SOON).unwrap();
    let out = c.hirtectl(&["exec", "agent1", "true"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        stderr(&out).contains("node 'agent1'") && stderr(&out).contains("AllowExec=no"),
        "{}",
        show(&out)
    );
    ok(
        &c.hirtectl(&["exec", "primary", "true"]),
        "exec on a node that allows it",
    );
    let e = transient(props("ExecStart", "/bin/true")).unwrap_err();
    assert_eq!(e.0, "org.containers.hirte.Error.NotAllowed", "{e:?}");
}
