//! The user's guide on one machine: a 3-node cluster (primary, agent1, agent2) configured
//! with the guide's files, then the guide's "Testing Functionality" walkthrough with real
//! hirtectl output, each step confirmed by agent1's own systemd. Run it through `ci/demo`.
//!
//! ```text
//! hirte-demo [--tls] [--keep STATE_FILE]   # run the walkthrough; --keep leaves the cluster
//!                                          # running and writes its dir to STATE_FILE;
//!                                          # --tls: mutual TLS with a PKI made by ci/pki
//! hirte-demo --stop DIR                    # tear down a cluster left by --keep
//! ```
//!
//! Exit status 0 only if every step did what the guide says.

use std::error::Error;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Output};
use std::time::Duration;

use hirte_tests::{cleanup_kept, guide, Cluster, ClusterSpec};

type Res<T> = Result<T, Box<dyn Error>>;

const NODES: [&str; 3] = ["primary", "agent1", "agent2"];
const UNIT: &str = "httpd.service";
const HTTP_PORT: u16 = 8080;
const USAGE: &str = "usage: hirte-demo [--tls] [--keep STATE_FILE] | --stop DIR";

/// The guide installs httpd with dnf; here a web server of Python's standard library
/// plays its part (or, without python3, a placeholder process).
fn httpd_unit(ip: &str) -> (String, bool) {
    let python = Path::new("/usr/bin/python3").is_file();
    let exec = if python {
        format!("/usr/bin/python3 -m http.server {HTTP_PORT} --bind {ip}")
    } else {
        "/bin/sleep infinity".to_string()
    };
    (
        format!(
            "[Unit]\nDescription=The Apache HTTP Server (demo stand-in)\n\n[Service]\n\
             ExecStart={exec}\n\n[Install]\nWantedBy=default.target\n"
        ),
        python,
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect::<String>()
}

/// Tracks failed steps; the demo goes on so the whole walkthrough is shown.
struct Demo {
    failures: Vec<String>,
}

impl Demo {
    fn fail(&mut self, what: String) {
        println!("!!! FAILED: {what}");
        self.failures.push(what);
    }

    /// Prints `$ hirtectl ARGS` and its output (trimmed to `max_rows` table rows if given).
    fn hirtectl(&mut self, c: &Cluster, args: &[&str], max_rows: Option<usize>) -> Output {
        println!("\n$ hirtectl {}", args.join(" "));
        let out = c.hirtectl(args);
        let so = text(&out.stdout);
        match max_rows {
            Some(n) => {
                let lines: Vec<&str> = so.lines().collect();
                let rows = lines.len().saturating_sub(1);
                for l in lines.iter().take(n + 1) {
                    println!("{l}");
                }
                if rows > n {
                    println!("... ({rows} units in total, {} more not shown)", rows - n);
                }
            }
            None => print!("{so}"),
        }
        let se = text(&out.stderr);
        if !se.is_empty() {
            print!("{se}");
        }
        if !out.status.success() {
            self.fail(format!(
                "hirtectl {} exited with {}",
                args.join(" "),
                out.status
            ));
        }
        out
    }

    /// `[node] systemctl --user ARGS -> output`, checked against `want`.
    fn confirm(&mut self, c: &Cluster, node: &str, args: &[&str], want: &str) {
        let mut full = vec!["--user"];
        full.extend_from_slice(args);
        let out = c.systemctl(node, args);
        let got = text(&out.stdout).trim().to_string();
        println!(
            "[{node}] systemctl {} -> {}",
            full.join(" "),
            got.replace('\n', " ")
        );
        if got != want {
            self.fail(format!(
                "[{node}] systemctl {}: expected {want:?}, got {got:?} {}",
                full.join(" "),
                text(&out.stderr).trim()
            ));
        }
    }
}

/// `GET /` from inside `from`'s network namespace; the HTTP status line.
fn http_get(c: &Cluster, from: &str, addr: SocketAddr) -> Option<String> {
    c.in_node_net(from, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        resp.lines().next().map(str::to_string)
    })
    .ok()
    .flatten()
}

fn write(path: &Path, content: &str) -> Res<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, content).map_err(|e| format!("writing {}: {e}", path.display()).into())
}

fn node_dir(c: &Cluster, node: &str, what: fn(&Cluster, &str) -> Option<PathBuf>) -> Res<PathBuf> {
    what(c, node).ok_or_else(|| format!("no node {node}").into())
}

/// Runs `ci/pki` (docs/security.md's openssl steps) with these arguments.
fn pki(args: &[&str]) -> Res<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/pki");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!("ci/pki {}: {}", args.join(" "), text(&out.stderr)).into());
    }
    Ok(())
}

/// `--tls`: a CA, a certificate per node and one for the manager (for its address and
/// 127.0.0.1), and a TLS drop-in next to each of the guide's files.
// [impl->req~tls.config~1]
fn configure_tls(c: &Cluster, manager_ip: &str) -> Res<()> {
    let dir = c.dir().join("pki");
    let d = dir.to_str().ok_or("pki path")?;
    println!("\n== Step 2b: a PKI for mutual TLS (ci/pki, the openssl steps of docs/security.md)");
    pki(&["init", d])?;
    for n in NODES {
        pki(&["node", d, n])?;
    }
    pki(&["manager", d, "hirte-manager", manager_ip, "127.0.0.1"])?;
    pki(&["crl", d])?;
    let keys = |cert: &str| {
        format!(
            "CertificateFile={d}/{cert}.pem\nKeyFile={d}/{cert}.key\nTrustedCertificateFile={d}/ca.pem\n"
        )
    };
    let etc = node_dir(c, "primary", Cluster::node_config_dir)?;
    let conf = format!(
        "[hirte]\n{}RevocationListFile={d}/ca.crl\n",
        keys("manager")
    );
    write(&etc.join("hirte.conf.d/50-tls.conf"), &conf)?;
    println!(
        "[primary] {}:",
        etc.join("hirte.conf.d/50-tls.conf").display()
    );
    print!("{}", indent(&conf));
    for n in NODES {
        let etc = node_dir(c, n, Cluster::node_config_dir)?;
        let conf = format!("[hirte-agent]\n{}", keys(n));
        write(&etc.join("agent.conf.d/50-tls.conf"), &conf)?;
        println!("[{n}] {}:", etc.join("agent.conf.d/50-tls.conf").display());
        print!("{}", indent(&conf));
    }
    Ok(())
}

/// Brings the cluster up with the guide's configuration files (and TLS drop-ins with `tls`).
fn bring_up(demo: &mut Demo, tls: bool) -> Res<Cluster> {
    let mut spec = ClusterSpec::new(&NODES);
    spec.start_manager = false;
    spec.start_agents = false;
    let mut c = Cluster::start(spec)?;
    for n in NODES {
        println!("   {n}: {}", c.node_ip(n).unwrap_or_default());
    }
    let manager_ip = c.node_ip("primary").ok_or("no primary")?;
    println!(
        "\n== Step 2: configure Hirte (the guide's files; /etc/hirte is HIRTE_CONFIG_DIR here)"
    );
    let etc = node_dir(&c, "primary", Cluster::node_config_dir)?;
    let hirte_conf = guide::hirte_conf("primary,agent1,agent2");
    write(&etc.join("hirte.conf"), &hirte_conf)?;
    write(&etc.join("agent.conf"), guide::PRIMARY_AGENT_CONF)?;
    println!("\n[primary] {}:", etc.join("hirte.conf").display());
    print!("{}", indent(&hirte_conf));
    println!("[primary] {}:", etc.join("agent.conf").display());
    print!("{}", indent(guide::PRIMARY_AGENT_CONF));
    for n in ["agent1", "agent2"] {
        let etc = node_dir(&c, n, Cluster::node_config_dir)?;
        let conf = guide::agent_conf(n, &manager_ip);
        write(&etc.join("agent.conf"), &conf)?;
        println!("[{n}] {}:", etc.join("agent.conf").display());
        print!("{}", indent(&conf));
    }
    if tls {
        configure_tls(&c, &manager_ip)?;
    }

    println!("== Step 4: start the services (hirte on primary, hirte-agent on every node)");
    c.start_manager()?;
    println!("[primary] hirte started");
    for n in NODES {
        c.start_agent(n)?;
        println!("[{n}] hirte-agent started");
    }
    if let Err(e) = c.wait_all_online(Duration::from_secs(15)) {
        demo.fail(format!("nodes did not come online: {e}"));
    }

    println!("\n== Step 5: verify connectivity");
    println!("$ journalctl -lfu hirte   (no journald in the nodes: the manager logs to stderr)");
    let log = c.manager_log();
    let connected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connected from") || l.contains("verified for node"))
        .collect();
    for l in &connected {
        println!("{l}");
    }
    for (n, ip) in [
        ("primary", "127.0.0.1".to_string()),
        ("agent1", c.node_ip("agent1").unwrap_or_default()),
        ("agent2", c.node_ip("agent2").unwrap_or_default()),
    ] {
        let want = format!("Agent '{n}' connected from {ip}");
        if !connected.iter().any(|l| l.contains(&want)) && log.contains("Starting hirte") {
            demo.fail(format!("manager log lacks {want:?}"));
        }
        let verified = format!("verified for node '{n}'");
        if tls && !connected.iter().any(|l| l.contains(&verified)) {
            demo.fail(format!("manager log lacks {verified:?}"));
        }
    }
    let out = demo.hirtectl(&c, &["list-nodes"], None);
    let rows = hirte_tests::parse_list_nodes(&text(&out.stdout));
    for n in NODES {
        if !rows.iter().any(|(r, s)| r == n && s == "online") {
            demo.fail(format!("{n} is not online in list-nodes"));
        }
    }
    Ok(c)
}

/// The guide's "Testing Functionality".
// [impl->req~guide.walkthrough~1]
fn walkthrough(c: &Cluster, demo: &mut Demo) -> Res<()> {
    println!("\n== Testing Functionality: basic service control");
    demo.hirtectl(c, &["list-units"], Some(6));
    let out = demo.hirtectl(c, &["list-units", "agent1"], Some(6));
    if !text(&out.stdout).contains("default.target") {
        demo.fail("list-units agent1 does not show default.target".into());
    }

    let ip = c.node_ip("agent1").ok_or("no agent1")?;
    let (unit, python) = httpd_unit(&ip);
    let unit_dir = node_dir(c, "agent1", Cluster::node_dir)?.join("config/systemd/user");
    let path = unit_dir.join(UNIT);
    println!("\n# Install a test service on agent node (the guide: dnf install -y httpd)");
    write(&path, &unit)?;
    if !python {
        println!("(no /usr/bin/python3: httpd.service runs a placeholder process, no HTTP check)");
    }
    println!("[agent1] wrote {}:", path.display());
    print!("{}", indent(&unit));
    let out = c.systemctl("agent1", &["daemon-reload"]);
    if out.status.success() {
        println!("[agent1] systemctl --user daemon-reload -> ok");
    } else {
        demo.fail(format!(
            "[agent1] systemctl --user daemon-reload -> {}: {}",
            out.status,
            text(&out.stderr).trim()
        ));
    }

    demo.hirtectl(c, &["start", "agent1", UNIT], None);
    demo.confirm(c, "agent1", &["is-active", UNIT], "active");
    let addr: SocketAddr = format!("{ip}:{HTTP_PORT}").parse()?;
    if python {
        let mut line = None;
        for _ in 0..100 {
            line = http_get(c, "agent2", addr);
            if line.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        match line {
            Some(l) if l.contains(" 200 ") => println!("[agent2] GET http://{addr}/ -> {l}"),
            other => demo.fail(format!("[agent2] GET http://{addr}/ -> {other:?}")),
        }
    }

    let out = demo.hirtectl(c, &["status", "agent1", UNIT], None);
    if !text(&out.stdout).contains("running") {
        demo.fail("status does not show the unit running".into());
    }
    demo.confirm(
        c,
        "agent1",
        &[
            "show",
            "-p",
            "ActiveState",
            "-p",
            "SubState",
            "--value",
            UNIT,
        ],
        "active\nrunning",
    );

    demo.hirtectl(c, &["stop", "agent1", UNIT], None);
    demo.confirm(c, "agent1", &["is-active", UNIT], "inactive");
    if python {
        let l = http_get(c, "agent2", addr);
        println!(
            "[agent2] GET http://{addr}/ -> {}",
            l.as_deref().unwrap_or("connection refused")
        );
        if l.is_some() {
            demo.fail("the web server still answers after stop".into());
        }
    }

    let before = c.systemctl("agent1", &["show", "-p", "MainPID", "--value", UNIT]);
    demo.hirtectl(c, &["restart", "agent1", UNIT], None);
    demo.confirm(c, "agent1", &["is-active", UNIT], "active");
    let after = c.systemctl("agent1", &["show", "-p", "MainPID", "--value", UNIT]);
    println!(
        "[agent1] MainPID {} -> {}",
        text(&before.stdout).trim(),
        text(&after.stdout).trim()
    );

    demo.hirtectl(c, &["enable", "agent1", UNIT], None);
    demo.confirm(c, "agent1", &["is-enabled", UNIT], "enabled");
    Ok(())
}

fn keep(c: Cluster, state_file: &Path) -> Res<()> {
    let bus = c.bus_address();
    let pid = c.systemd_pid("agent1").unwrap_or(0);
    let run = c.node_runtime_dir("agent1").unwrap_or_default();
    let node_bus = c.node_bus_address("agent1").unwrap_or_default();
    let dir = c.keep();
    write(state_file, &format!("{}\n", dir.display()))?;
    println!("\n== The cluster keeps running ({})", dir.display());
    println!("Use hirtectl against it (as root):");
    println!("    export DBUS_SYSTEM_BUS_ADDRESS={bus}");
    println!("    target/debug/hirtectl list-nodes");
    println!("    target/debug/hirtectl status agent1 {UNIT}");
    println!("Look inside agent1:");
    println!(
        "    nsenter -t {pid} --net --mount env XDG_RUNTIME_DIR={} DBUS_SESSION_BUS_ADDRESS={node_bus} systemctl --user status {UNIT}",
        run.display()
    );
    println!(
        "Logs: {}/manager.log, {}/<node>/agent.log",
        dir.display(),
        dir.display()
    );
    println!("Stop it with: ci/demo --stop");
    Ok(())
}

fn run(keep_state: Option<PathBuf>, tls: bool) -> Res<bool> {
    let mut demo = Demo {
        failures: Vec::new(),
    };
    println!(
        "== A 3-node Hirte cluster on this machine: primary (manager + agent), agent1, agent2"
    );
    println!("   (each node: own network and mount namespace, own systemd --user; real binaries)");
    let c = bring_up(&mut demo, tls)?;
    walkthrough(&c, &mut demo)?;
    let ok = demo.failures.is_empty();
    if ok {
        println!("\n== All steps succeeded.");
    } else {
        println!("\n== {} step(s) FAILED:", demo.failures.len());
        for f in &demo.failures {
            println!("   - {f}");
        }
        println!("{}", c.log_tails());
    }
    match keep_state {
        Some(state) => keep(c, &state)?,
        None => c.shutdown()?,
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tls = args.iter().any(|a| a == "--tls");
    let argv: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--tls")
        .collect();
    let result = match argv.as_slice() {
        [] => run(None, tls),
        ["--keep", state] => run(Some(PathBuf::from(state)), tls),
        ["--stop", dir] => cleanup_kept(Path::new(dir))
            .map(|()| {
                println!("stopped the demo cluster in {dir}");
                true
            })
            .map_err(Into::into),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hirte-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
