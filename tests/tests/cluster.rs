//! Full path: manager, agents and hirtectl on a 3-node cluster. Needs the
//! daemons built (`cargo build --workspace`, or HIRTE_BIN_DIR).

use std::time::{Duration, Instant};

use hirte_tests::{Cluster, ClusterSpec, Signal};

#[test]
fn all_nodes_come_online_and_agent_restart_is_seen() {
    if !hirte_tests::require_root("all_nodes_come_online_and_agent_restart_is_seen") {
        return;
    }
    let t0 = Instant::now();
    let mut c = Cluster::start(ClusterSpec::new(&["n1", "n2", "n3"]))
        .unwrap_or_else(|e| panic!("cluster start failed: {e}"));
    eprintln!("3-node cluster with daemons online in {:?}", t0.elapsed());
    let rows = c.list_nodes().expect("hirtectl list-nodes");
    let states = hirte_tests::states_map(&rows);
    for n in ["n1", "n2", "n3"] {
        assert_eq!(
            states.get(n).map(String::as_str),
            Some("online"),
            "{rows:?}"
        );
    }
    assert!(c.manager_pid().is_some());
    assert!(c.agent_pid("n3").is_some());

    let old_pid = c.agent_pid("n3");
    c.kill_agent("n3", Signal::SIGKILL);
    c.wait_node_state("n3", "offline", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    c.start_agent("n3").unwrap();
    c.wait_node_state("n3", "online", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    // A new agent process registered again; its own run of the log (after the harness's
    // `=== hirte-tests` separator) says so.
    let new_pid = c.agent_pid("n3");
    assert!(
        new_pid.is_some() && new_pid != old_pid,
        "{old_pid:?} -> {new_pid:?}"
    );
    let log = c.agent_log("n3");
    let last_run = log.rsplit("=== hirte-tests").next().unwrap_or("");
    assert!(
        last_run.contains("Connected to manager at 10.200.0.1:2020 as node 'n3'"),
        "{last_run}"
    );
}
