//! The guide's HA recipe, as shipped in `packaging/keepalived/` (docs/operations.md, "Manager
//! failover"): real keepalived on two namespaced manager nodes, a virtual IP on the cluster's
//! switch (10.200.0.100 exists only inside the test's namespaces), agents pointed at it.
//! Failover (keepalived stopped on the master), control through the new manager, failback
//! (keepalived back), and a crashed manager that the health check moves away from.
//!
//! `HIRTE_FAILOVER_RUNS=N` repeats the failover/failback cycle N times and prints one FIGURE
//! line per run (`ci/bench-failover` collects them for docs/reliability.md).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use hirte_tests::{Cluster, ClusterSpec, NodeManager};

const NODES: [&str; 3] = ["m1", "m2", "n1"];
const VIP: &str = "10.200.0.100";
/// The guide's agent settings (`HeartbeatInterval=5`, `ReconnectInterval=10`).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Room for a machine shared with other builds; the bound itself is stated apart.
const LOAD_TOLERANCE: Duration = Duration::from_secs(3);
/// keepalived's own timing: advert_int 1 s, 3 missed adverts plus skew, check fall 2.
const VRRP_SETTLE: Duration = Duration::from_secs(15);

fn packaging(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/keepalived")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// One manager node of the pair: its manager, and keepalived with the shipped script/config.
struct Side {
    node: &'static str,
    mgr: NodeManager,
    conf: PathBuf,
}

impl Side {
    fn new(c: &Cluster, node: &'static str, master: bool) -> Side {
        let mgr = NodeManager::prepare(c, node).unwrap();
        let dir = mgr.dir().to_path_buf();
        let svc = mgr.service_script().display().to_string();
        // The script's log lines go to ha.log instead of the host's syslog.
        let ha_log = write_executable(
            &dir,
            "ha-log",
            &format!("#!/bin/sh\necho \"$*\" >>{}/ha.log\n", dir.display()),
        );
        // The shipped script with this node's paths instead of systemctl and /run.
        let script = packaging("hirte-failover.sh")
            .replace(
                "STATE_FILE=/run/hirte/ha-state",
                &format!("STATE_FILE={}/ha-state", dir.display()),
            )
            .replace(
                "START=\"systemctl start hirte\"",
                &format!("START=\"{svc} start\""),
            )
            .replace(
                "STOP=\"systemctl stop hirte\"",
                &format!("STOP=\"{svc} stop\""),
            )
            .replace(
                "IS_ACTIVE=\"systemctl is-active --quiet hirte\"",
                &format!("IS_ACTIVE=\"{svc} status\""),
            )
            .replace(
                "LOG=\"logger -t hirte-ha\"",
                &format!("LOG=\"{}\"", ha_log.display()),
            );
        let script_path = write_executable(&dir, "hirte-failover.sh", &script);
        let mut conf = packaging("keepalived.conf")
            .replace(
                "/usr/local/bin/hirte-failover.sh",
                &script_path.display().to_string(),
            )
            .replace("192.168.1.100/24", &format!("{VIP}/24"));
        if !master {
            conf = conf
                .replace("state MASTER", "state BACKUP")
                .replace("priority 100", "priority 90");
        }
        let conf_path = dir.join("keepalived.conf");
        std::fs::write(&conf_path, conf).unwrap();
        Side {
            node,
            mgr,
            conf: conf_path,
        }
    }

    fn pidfile(&self) -> PathBuf {
        self.mgr.dir().join("keepalived.pid")
    }

    fn keepalived_log(&self) -> String {
        std::fs::read_to_string(self.mgr.dir().join("keepalived.log")).unwrap_or_default()
    }

    fn start_keepalived(&self, c: &Cluster) {
        let d = self.mgr.dir().display().to_string();
        let out = c.node_shell(
            self.node,
            &format!(
                "setsid keepalived -n -l -D -G -f {} -p {d}/keepalived.pid -r {d}/vrrp.pid -c {d}/checkers.pid >>{d}/keepalived.log 2>&1 </dev/null &",
                self.conf.display()
            ),
        );
        ok(&out, "start keepalived");
    }

    /// SIGTERM, as `systemctl stop keepalived`; returns once it is gone (notify_stop ran).
    fn stop_keepalived(&self, c: &Cluster) {
        let pid = std::fs::read_to_string(self.pidfile()).unwrap_or_default();
        let pid = pid.trim();
        assert!(!pid.is_empty(), "keepalived on {} not running", self.node);
        ok(
            &c.node_shell(
                self.node,
                &format!(
                    "kill -TERM {pid}; i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; ! kill -0 {pid} 2>/dev/null"
                ),
            ),
            "stop keepalived",
        );
    }

    fn kill_manager(&self) {
        let pid = std::fs::read_to_string(self.mgr.dir().join("manager.pid")).unwrap();
        let pid: i32 = pid.trim().parse().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
}

fn online_everywhere(m: &NodeManager) -> bool {
    m.list_nodes()
        .is_some_and(|rows| rows.len() == NODES.len() && rows.iter().all(|(_, s)| s == "online"))
}

/// Polls until `ip:2020` accepts a connection from n1 (the agents' view); the time it took.
fn wait_listening(c: &Cluster, ip: &str, t0: Instant, timeout: Duration) -> Duration {
    let addr: std::net::SocketAddr = format!("{ip}:2020").parse().unwrap();
    loop {
        let up = c
            .in_node_net("n1", move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
            .unwrap();
        if up {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < timeout, "{ip}:2020 never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_online(c: &Cluster, side: &Side, other: &Side, what: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    c.wait_for(what, timeout, || online_everywhere(&side.mgr))
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n--- {} keepalived:\n{}\n--- {} keepalived:\n{}\n--- manager {}:\n{}\n{}",
                side.node,
                side.keepalived_log(),
                other.node,
                other.keepalived_log(),
                side.node,
                side.mgr.log(),
                c.log_tails()
            )
        });
    t0.elapsed()
}

// [itest->req~failover.vip-recipe~1]
// [itest->req~agent.reconnect-backoff~1]
// [itest->req~manager.standby~1]
#[test]
fn failover_vip_keepalived_moves_the_manager_and_the_agents_follow() {
    if !hirte_tests::require_root("failover_vip_keepalived_moves_the_manager_and_the_agents_follow")
    {
        return;
    }
    let version = std::process::Command::new("keepalived")
        .arg("--version")
        .output();
    assert!(
        version.is_ok(),
        "keepalived is not installed (ci/setup installs the Debian package): {version:?}"
    );
    let mut spec = ClusterSpec::new(&NODES);
    spec.start_agents = false;
    spec.start_manager = false;
    let mut c = Cluster::start(spec).unwrap();
    let primary = Side::new(&c, "m1", true);
    let backup = Side::new(&c, "m2", false);
    primary.start_keepalived(&c);
    c.wait_for("the primary's manager (notify_master)", VRRP_SETTLE, || {
        primary.mgr.is_up()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", primary.keepalived_log()));
    backup.start_keepalived(&c);
    // The guide's agent settings: ManagerHost=VIP, HeartbeatInterval=5, ReconnectInterval=10.
    for n in NODES {
        let d = c.node_config_dir(n).unwrap().join("agent.conf.d");
        std::fs::write(
            d.join("50-vip.conf"),
            format!(
                "[hirte-agent]\nManagerHost={VIP}\nHeartbeatInterval=5s\nReconnectInterval=10s\n"
            ),
        )
        .unwrap();
        c.start_agent(n).unwrap();
    }
    wait_online(&c, &primary, &backup, "all online on the primary", SOON);
    c.write_unit("n1", "keep.service", SLEEP_UNIT).unwrap();
    // The backup runs no manager: nothing there can hold stale nodes.
    assert!(!backup.mgr.is_up(), "{}", backup.keepalived_log());

    let runs = failover_runs();
    let bound = HEARTBEAT + Duration::from_secs(1);
    let (ip1, ip2) = (c.node_ip("m1").unwrap(), c.node_ip("m2").unwrap());
    for run in 1..=runs {
        // Failover: keepalived stops on the master (notify_stop stops its manager).
        let t0 = Instant::now();
        primary.stop_keepalived(&c);
        let listen = wait_listening(&c, &ip2, t0, VRRP_SETTLE);
        let online = wait_online(&c, &backup, &primary, "all online on the backup", SOON);
        assert!(!primary.mgr.is_up(), "the old master's manager still runs");
        eprintln!(
            "FIGURE vip failover run {run}: new manager listening {listen:?} after keepalived stopped, all 3 agents online {online:?} after that (bound {bound:?}); measured {online:?}; load {}",
            load_average()
        );
        assert!(online <= bound + LOAD_TOLERANCE, "{online:?}");
        // Control through the new manager.
        let verb = if run % 2 == 1 { "start" } else { "stop" };
        ok(
            &backup.mgr.hirtectl(&[verb, "n1", "keep.service"]),
            "hirtectl through the new manager",
        );
        let want = if run % 2 == 1 { "active" } else { "inactive" };
        assert_eq!(is_active(&c, "n1", "keep.service"), want);

        // Failback: keepalived back on the primary, which preempts (priority 100 > 90).
        let t0 = Instant::now();
        primary.start_keepalived(&c);
        let listen = wait_listening(&c, &ip1, t0, VRRP_SETTLE);
        let online = wait_online(&c, &primary, &backup, "all online on the primary", SOON);
        c.wait_for("the backup's manager to stop (notify_backup)", SOON, || {
            !backup.mgr.is_up()
        })
        .unwrap();
        eprintln!(
            "FIGURE vip failback run {run}: primary listening {listen:?} after its keepalived started, all 3 agents online {online:?} after that (bound {bound:?}); measured {online:?}; load {}",
            load_average()
        );
        assert!(online <= bound + LOAD_TOLERANCE, "{online:?}");
    }

    // The primary's manager crashes: the health check fails (fall 2), the primary goes to
    // FAULT and the backup takes the VIP and starts its manager.
    let t0 = Instant::now();
    primary.kill_manager();
    wait_online(
        &c,
        &backup,
        &primary,
        "all online on the backup after a crash",
        VRRP_SETTLE,
    );
    eprintln!(
        "FIGURE vip crash: agents online on the backup {:?} after the primary's manager was killed",
        t0.elapsed()
    );
    let ha = std::fs::read_to_string(primary.mgr.dir().join("ha.log")).unwrap_or_default();
    assert!(
        primary.keepalived_log().contains("Entering FAULT STATE")
            && ha.contains("Became fault, stopping Hirte manager"),
        "{ha}\n{}",
        primary.keepalived_log()
    );
    ok(
        &backup.mgr.hirtectl(&["status", "n1", "keep.service"]),
        "status through the backup after the crash",
    );
}
