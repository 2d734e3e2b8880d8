//! The user's guide, "Testing Functionality": every hirtectl command as written, each effect
//! confirmed by the agent node's own systemd; on a 3-node cluster primary/agent1/agent2, and
//! on the guide's own 2-node setup (primary, agent) with its configuration files verbatim.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use hirte_tests::{guide, Cluster, ClusterSpec};

const NODES: [&str; 3] = ["primary", "agent1", "agent2"];

/// The guide's "httpd": Python's web server on the agent node's address.
fn httpd_unit(ip: &str) -> String {
    format!(
        "[Unit]\nDescription=Test web server (guide walkthrough)\n\n[Service]\n\
         ExecStart=/usr/bin/python3 -m http.server 8080 --bind {ip}\n\n\
         [Install]\nWantedBy=default.target\n"
    )
}

/// An HTTP GET of `/` on `ip:8080` from inside `from`'s network namespace; the status line.
fn http_get_from(c: &Cluster, from: &str, ip: &str) -> Option<String> {
    let addr = format!("{ip}:8080");
    c.in_node_net(from, move || {
        let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        resp.lines().next().map(str::to_string)
    })
    .ok()
    .flatten()
}

/// The row of `unit` in `hirtectl status` output, split into cells.
fn status_row(out: &str, unit: &str) -> Vec<String> {
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        ["UNIT", "LOADED", "ACTIVE", "SUB", "FREEZER", "ENABLED"],
        "{out}"
    );
    let row = lines
        .find(|l| l.starts_with(unit))
        .unwrap_or_else(|| panic!("no row for {unit}: {out}"));
    row.split_whitespace().map(str::to_string).collect()
}

/// The walkthrough's commands on `agent` (a node of `nodes`, all online), each effect
/// confirmed by that node's systemd; `other` is a node that must stay untouched.
fn walkthrough_on(c: &Cluster, nodes: &[&str], agent: &str, other: &str) {
    let agent_ip = c.node_ip(agent).unwrap();

    // $ hirtectl list-nodes
    let out = ok(&c.hirtectl(&["list-nodes"]), "list-nodes");
    let rows = hirte_tests::parse_list_nodes(&out);
    assert_eq!(rows.len(), nodes.len(), "{out}");
    assert!(rows.iter().all(|(_, s)| s == "online"), "{out}");
    for n in nodes {
        assert!(rows.iter().any(|(r, _)| r == n), "{n} missing: {out}");
    }

    // $ hirtectl list-units: one row per unit, first column the node, all three nodes.
    let out = ok(&c.hirtectl(&["list-units"]), "list-units");
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NODE", "UNIT", "ACTIVE", "SUB", "DESCRIPTION"]);
    for n in nodes {
        let want = format!("{n} ");
        assert!(
            out.lines()
                .any(|l| l.starts_with(&want) && l.contains("default.target")),
            "no default.target row for {n}:\n{out}"
        );
    }

    // $ hirtectl list-units agent1: no node column, the same units agent1's systemd lists.
    let out = ok(&c.hirtectl(&["list-units", agent]), "list-units AGENT");
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["UNIT", "ACTIVE", "SUB", "DESCRIPTION"]);
    let sd = stdout(&c.systemctl(agent, &["list-units", "--all", "--plain", "--no-legend"]));
    let sd_units: std::collections::BTreeSet<&str> = sd
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let ours: std::collections::BTreeSet<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        sd_units.iter().filter(|u| u.ends_with(".target")).all(|u| ours.contains(u)),
        "targets of the node's systemd missing from hirtectl:\nsystemd: {sd_units:?}\nhirtectl: {ours:?}"
    );

    // "Install a test service on agent node": the unit file appears, hirtectl reloads systemd.
    write_config_unit(c, agent, "httpd.service", &httpd_unit(&agent_ip), false);
    ok(
        &c.hirtectl(&["daemon-reload", agent]),
        "daemon-reload AGENT",
    );
    assert_eq!(unit_prop(c, agent, "httpd.service", "LoadState"), "loaded");

    // $ hirtectl start agent1 httpd.service
    let out = ok(
        &c.hirtectl(&["start", agent, "httpd.service"]),
        "start httpd",
    );
    assert_eq!(
        out.trim(),
        "Unit httpd.service start operation result: done"
    );
    assert_eq!(is_active(c, agent, "httpd.service"), "active");
    assert_eq!(is_active(c, other, "httpd.service"), "inactive");
    // It serves, and other nodes reach it over the network.
    c.wait_for("httpd answering from the other node", SOON, || {
        http_get_from(c, other, &agent_ip).is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.systemd_log(agent)));
    let status_line = http_get_from(c, "primary", &agent_ip).unwrap();
    assert!(status_line.contains(" 200 "), "{status_line}");

    // $ hirtectl status agent1 httpd.service
    let out = ok(
        &c.hirtectl(&["status", agent, "httpd.service"]),
        "status httpd",
    );
    let row = status_row(&out, "httpd.service");
    assert_eq!(row[1..4], ["loaded", "active", "running"], "{out}");
    assert_eq!(row[5], "disabled", "{out}");
    let list = ok(&c.hirtectl(&["list-units", agent]), "list-units AGENT");
    let line = list
        .lines()
        .find(|l| l.starts_with("httpd.service"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("active") && line.contains("running"),
        "{line}"
    );

    // $ hirtectl stop agent1 httpd.service
    let out = ok(&c.hirtectl(&["stop", agent, "httpd.service"]), "stop");
    assert_eq!(out.trim(), "Unit httpd.service stop operation result: done");
    assert_eq!(is_active(c, agent, "httpd.service"), "inactive");
    assert!(http_get_from(c, other, &agent_ip).is_none());
    let out = ok(
        &c.hirtectl(&["status", agent, "httpd.service"]),
        "status after stop",
    );
    assert_eq!(status_row(&out, "httpd.service")[2], "inactive", "{out}");

    // $ hirtectl restart agent1 httpd.service (from stopped, then while running: new process)
    let out = ok(&c.hirtectl(&["restart", agent, "httpd.service"]), "restart");
    assert_eq!(
        out.trim(),
        "Unit httpd.service restart operation result: done"
    );
    assert_eq!(is_active(c, agent, "httpd.service"), "active");
    let pid1 = unit_prop(c, agent, "httpd.service", "MainPID");
    ok(
        &c.hirtectl(&["restart", agent, "httpd.service"]),
        "restart again",
    );
    assert_eq!(is_active(c, agent, "httpd.service"), "active");
    let pid2 = unit_prop(c, agent, "httpd.service", "MainPID");
    assert!(
        pid1 != "0" && pid2 != "0" && pid1 != pid2,
        "{pid1} -> {pid2}"
    );
    c.wait_for("httpd answering after restart", SOON, || {
        http_get_from(c, other, &agent_ip).is_some()
    })
    .unwrap();

    // $ hirtectl enable agent1 httpd.service
    let out = ok(&c.hirtectl(&["enable", agent, "httpd.service"]), "enable");
    assert!(
        out.contains("Created symlink") && out.contains("default.target.wants/httpd.service"),
        "{out}"
    );
    assert_eq!(is_enabled(c, agent, "httpd.service"), "enabled");
    assert!(config_unit_dir(c, agent)
        .join("default.target.wants/httpd.service")
        .exists());
    let out = ok(
        &c.hirtectl(&["status", agent, "httpd.service"]),
        "status after enable",
    );
    assert_eq!(status_row(&out, "httpd.service")[5], "enabled", "{out}");
    // And back.
    let out = ok(&c.hirtectl(&["disable", agent, "httpd.service"]), "disable");
    assert!(out.contains("Removed"), "{out}");
    assert_eq!(is_enabled(c, agent, "httpd.service"), "disabled");
    // Everything happened on that node only.
    assert_eq!(is_enabled(c, other, "httpd.service"), "");
    assert_all_online(c, nodes);
}

// [itest->req~guide.walkthrough~1]
// [itest->req~ctl.list-nodes~1]
// [itest->req~ctl.list-units~1]
// [itest->req~ctl.unit-ops~1]
// [itest->req~ctl.status~1]
// [itest->req~ctl.enable~1]
// [itest->req~ctl.daemon-reload~1]
// [itest->req~manager.node-relay~1]
// [itest->req~agent.relay~1]
#[test]
fn walkthrough_guide_testing_functionality_three_nodes() {
    if !hirte_tests::require_root("walkthrough_guide_testing_functionality_three_nodes") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    walkthrough_on(&c, &NODES, "agent1", "agent2");
}

// [itest->req~guide.walkthrough~1]
// [itest->req~config.syntax~1]
// [itest->req~manager.register~1]
// [itest->req~ctl.unit-ops~1]
#[test]
fn walkthrough_guide_verbatim_config_primary_and_agent() {
    if !hirte_tests::require_root("walkthrough_guide_verbatim_config_primary_and_agent") {
        return;
    }
    let mut spec = ClusterSpec::new(&["primary", "agent"]);
    spec.start_manager = false;
    spec.start_agents = false;
    let mut c = Cluster::start(spec).unwrap();
    let etc = |n: &str| c.node_config_dir(n).unwrap();
    std::fs::write(
        etc("primary").join("hirte.conf"),
        guide::hirte_conf("primary,agent"),
    )
    .unwrap();
    std::fs::write(etc("primary").join("agent.conf"), guide::PRIMARY_AGENT_CONF).unwrap();
    let primary_ip = c.node_ip("primary").unwrap();
    std::fs::write(
        etc("agent").join("agent.conf"),
        guide::agent_conf("agent", &primary_ip),
    )
    .unwrap();

    // Step 4: start the services.
    c.start_manager().unwrap();
    c.start_agent("primary").unwrap();
    c.start_agent("agent").unwrap();
    c.wait_all_online(SOON).unwrap();

    // Step 5: "journalctl -lfu hirte" shows the connection. There is no journald (nor
    // syslog) inside a node, so LogTarget=journald falls back to stderr, i.e. manager.log.
    let log = c.manager_log();
    assert!(log.contains("Starting hirte"), "no log on stderr:\n{log}");
    let want = format!(
        "Agent 'agent' connected from {}",
        c.node_ip("agent").unwrap()
    );
    assert!(log.contains(&want), "{want:?} not in:\n{log}");
    assert!(!log.contains("DEBUG"), "LogLevel=info not applied:\n{log}");
    // Step 5: list-nodes as the guide shows it.
    let out = ok(&c.hirtectl(&["list-nodes"]), "list-nodes");
    assert_eq!(
        hirte_tests::parse_list_nodes(&out),
        vec![
            ("primary".to_string(), "online".to_string()),
            ("agent".to_string(), "online".to_string())
        ],
        "{out}"
    );

    walkthrough_on(&c, &["primary", "agent"], "agent", "primary");
}
