//! The stunnel recipe of docs/stunnel.md with the shipped example configurations
//! (packaging/stunnel/): a TLS server in front of the manager on node n1 (port 2021 ->
//! 127.0.0.1:2020), a TLS client on node n2 (127.0.0.1:2020 -> n1:2021), mutual certificate
//! checks, and n2's agent with ManagerHost=127.0.0.1. The manager listens on 127.0.0.1 only,
//! so the tunnel is n2's only way in. Everything stays inside the cluster's namespaces.

// Test code: a failed step must fail the test, with a message saying which.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod install_support;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hirte_tests::{Cluster, ClusterSpec};
use install_support::*;

const PROBE: &str = "[Unit]\nDescription=stunnel probe\n[Service]\nExecStart=/bin/sleep infinity\n";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The stunnel binary (Debian: stunnel4), installed by ci/setup.
fn stunnel_binary() -> Option<&'static str> {
    ["stunnel4", "stunnel"].into_iter().find(|t| have(t))
}

fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(dir);
    let out = run(&mut cmd, Duration::from_secs(60));
    assert!(out.status.success(), "openssl {args:?}: {}", show(&out));
}

/// A self-signed certificate and its key: `<name>.crt`, `<name>.key`.
fn self_signed(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            &format!("subjectAltName=DNS:{cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// The shipped configuration with its paths and address filled in, logging to a file.
fn adapt(shipped: &str, dir: &Path, manager_ip: &str, log: &Path) -> String {
    let text = read(&repo_file(shipped))
        .replace("/etc/stunnel/", &format!("{}/", dir.display()))
        .replace("MANAGER_ADDRESS", manager_ip)
        .replace(
            "syslog = yes",
            &format!("syslog = no\noutput = {}", log.display()),
        )
        .replace("debug = notice", "debug = info");
    assert!(text.contains("verifyPeer = yes"), "{text}");
    text
}

fn listening(c: &Cluster, node: &str, addr: &'static str) -> bool {
    c.in_node_net(node, move || {
        TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200)).is_ok()
    })
    .unwrap_or(false)
}

/// Starts stunnel in the node's namespaces and returns its PID. Backgrounded there, it
/// stays in the node's cgroup, which the cluster's teardown empties.
fn start_stunnel(c: &Cluster, node: &str, bin: &str, conf: &Path) -> u32 {
    let out = c.node_shell(
        node,
        &format!(
            "{bin} {} </dev/null >/dev/null 2>&1 & echo $!",
            conf.display()
        ),
    );
    assert!(out.status.success(), "{}", show(&out));
    stdout(&out)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no PID: {}", show(&out)))
}

fn peer_ip(c: &Cluster, node: &str) -> Option<String> {
    let conn = c.system_bus().ok()?;
    let p = conn.with_proxy(
        "org.containers.hirte",
        "/org/containers/hirte",
        Duration::from_secs(5),
    );
    let (nodes,): (Vec<(String, dbus::Path<'static>, String, String)>,) = p
        .method_call("org.containers.hirte.Manager", "ListNodes", ())
        .ok()?;
    nodes.into_iter().find(|n| n.0 == node).map(|n| n.3)
}

// [itest->req~ops.stunnel~1]
#[test]
fn agent_reaches_the_manager_through_stunnel() {
    if !hirte_tests::require_root("agent_reaches_the_manager_through_stunnel") {
        return;
    }
    let Some(bin) = stunnel_binary().filter(|_| have("openssl")) else {
        hirte_tests::cannot_run(
            "agent_reaches_the_manager_through_stunnel",
            "stunnel4 or openssl missing (ci/setup installs them)",
        );
        return;
    };
    let tls = Scratch::new("stunnel");
    let dir = &tls.path;
    self_signed(dir, "hirte-server", "hirte.local");
    self_signed(dir, "hirte-agent", "n2.hirte.local");
    std::fs::copy(dir.join("hirte-agent.crt"), dir.join("hirte-agents.crt")).unwrap();

    let mut spec = ClusterSpec::new(&["n1", "n2"]);
    spec.start_agents = false;
    // As the recipe says: the plain port on loopback only.
    spec.manager_conf = "ManagerAddress=127.0.0.1".to_string();
    let mut c = Cluster::start(spec).unwrap_or_else(|e| panic!("cluster start failed: {e}"));
    let manager_ip = c.node_ip("n1").unwrap();

    let server_log = dir.join("server.log");
    let client_log = dir.join("client.log");
    let server_conf = dir.join("hirte-server.conf");
    let client_conf = dir.join("hirte-client.conf");
    std::fs::write(
        &server_conf,
        adapt(STUNNEL_SERVER_CONF, dir, &manager_ip, &server_log),
    )
    .unwrap();
    std::fs::write(
        &client_conf,
        adapt(STUNNEL_CLIENT_CONF, dir, &manager_ip, &client_log),
    )
    .unwrap();
    let logs = |c: &Cluster| {
        format!(
            "--- stunnel server\n{}\n--- stunnel client\n{}\n{}",
            std::fs::read_to_string(&server_log).unwrap_or_default(),
            std::fs::read_to_string(&client_log).unwrap_or_default(),
            c.log_tails()
        )
    };

    start_stunnel(&c, "n1", bin, &server_conf);
    wait_for("stunnel server on n1:2021", Duration::from_secs(10), || {
        listening(&c, "n2", "10.200.0.1:2021")
    });
    // Without the tunnel n2 cannot reach the manager's port at all.
    assert!(!listening(&c, "n2", "10.200.0.1:2020"));
    let client_pid = start_stunnel(&c, "n2", bin, &client_conf);
    wait_for(
        "stunnel client on n2's 127.0.0.1:2020",
        Duration::from_secs(10),
        || listening(&c, "n2", "127.0.0.1:2020"),
    );

    std::fs::write(
        c.node_config_dir("n2")
            .unwrap()
            .join("agent.conf.d/50-stunnel.conf"),
        "[hirte-agent]\nManagerHost=127.0.0.1\n",
    )
    .unwrap();
    c.start_agent("n1").unwrap();
    c.start_agent("n2").unwrap();
    for n in ["n1", "n2"] {
        c.wait_node_state(n, "online", Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("{e}\n{}", logs(&c)));
    }
    // The manager sees n2 coming from its local stunnel.
    assert_eq!(
        peer_ip(&c, "n2").as_deref(),
        Some("127.0.0.1"),
        "{}",
        logs(&c)
    );
    assert!(
        read(&server_log).contains("accepted connection from 10.200.0.2"),
        "{}",
        logs(&c)
    );

    // The framing survives the tunnel: a job, a listing (large frames) and exec.
    c.write_unit("n2", "probe.service", PROBE).unwrap();
    let out = c.hirtectl(&["start", "n2", "probe.service"]);
    assert!(out.status.success(), "{}\n{}", show(&out), logs(&c));
    let st = c.systemctl("n2", &["is-active", "probe.service"]);
    assert_eq!(stdout(&st).trim(), "active");
    let out = c.hirtectl(&["list-units", "n2"]);
    assert!(
        out.status.success() && stdout(&out).contains("probe.service"),
        "{}",
        show(&out)
    );
    let out = c.hirtectl(&["exec", "n2", "echo through the tunnel"]);
    assert!(
        out.status.success() && stdout(&out).contains("through the tunnel"),
        "{}",
        show(&out)
    );
    let out = c.hirtectl(&["stop", "n2", "probe.service"]);
    assert!(out.status.success(), "{}", show(&out));

    // A TLS client without an accepted certificate gets no link to the manager.
    let out = c.node_shell(
        "n2",
        &format!(
            "printf 'x' | timeout 10 openssl s_client -quiet -connect {manager_ip}:2021 -CAfile {} -servername hirte.local 2>&1; echo rc=$?",
            dir.join("hirte-server.crt").display()
        ),
    );
    wait_for(
        "the server refuses a client without certificate",
        Duration::from_secs(10),
        || {
            let log = read(&server_log);
            log.contains("peer did not return a certificate")
                || log.contains("certificate required")
                || log.contains("SSL_accept")
        },
    );
    eprintln!("s_client without certificate: {}", stdout(&out).trim());

    // Cutting the tunnel takes n2 offline at once; restoring it brings it back.
    let out = c.node_shell("n2", &format!("kill {client_pid}"));
    assert!(out.status.success(), "{}", show(&out));
    c.wait_node_state("n2", "offline", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&c)));
    start_stunnel(&c, "n2", bin, &client_conf);
    c.wait_node_state("n2", "online", Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&c)));
    let out = c.hirtectl(&["start", "n2", "probe.service"]);
    assert!(out.status.success(), "{}\n{}", show(&out), logs(&c));
    drop(c);
    drop(tls);
}
