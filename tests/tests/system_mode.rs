//! The shipped system units under a real system-mode systemd, end to end: two Debian bookworm
//! containers booted with `systemd-nspawn --boot` (systemd as PID 1 with its own system bus and
//! journal), the .deb built from this tree installed with `dpkg -i`, configured with the
//! guide's files, started with `systemctl start hirte hirte-agent` as the guide does, and the
//! guide's walkthrough run with `hirtectl` inside the primary node. Every other integration
//! test runs `systemd --user`; this one is the evidence for the system units, the system-bus
//! policy and the package's maintainer scripts on a booted system.
//!
//! The root file system comes from Debian's archive (`mmdebstrap --variant=minbase`), built once
//! and cached in `/var/cache/hirte-test/<key>` (the key names the suite and package list); each
//! container sees it read-only under a tmpfs overlay (`--volatile=overlay`), so the cache is
//! never changed. The containers sit in their own network namespaces joined by a veth pair
//! (10.201.0.1 primary, 10.201.0.2 agent) and in their own cgroups; a guard object powers them
//! off and removes namespaces and cgroups also when the test fails. Commands run inside with
//! `nsenter --all` on the container's PID 1 (no machined on a host without systemd, so no
//! `machinectl`/`systemd-run -M`).
//!
//! The containers get the pure cgroup v2 hierarchy (as Debian boots by default) also on a
//! hybrid host, so the walkthrough can also freeze and thaw a unit on the agent node, which the
//! `systemd --user` managers of the other tests cannot: it prints `HIRTE-TEST-SHOWN:` lines for
//! that part (`freezing`) of `req~ctl.unit-control~1` and `req~api.node~1`.
//!
//! If system-mode systemd cannot boot on a machine, the test prints what nspawn and systemd said
//! as a `HIRTE-TEST-NOT-SHOWN:` line for `req~install.units~1` and then cannot run (fails; with
//! `HIRTE_ALLOW_SKIP=1` it is reported as skipped).

// Test code: a failed step must fail the test, with a message saying which.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod install_support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hirte_tests::guide;
use install_support::*;
use nix::fcntl::{Flock, FlockArg};

const TEST: &str = "system_mode_guide_walkthrough";
const SUITE: &str = "bookworm";
/// What the minimal base lacks for a booted node: systemd as init, the system bus, and `ip`
/// for diagnostics. Sorted: the list is the cache key.
const PACKAGES: [&str; 4] = ["dbus", "iproute2", "systemd", "systemd-sysv"];
const CACHE_DIR: &str = "/var/cache/hirte-test";
const MMDEBSTRAP_TIMEOUT: Duration = Duration::from_secs(600);
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const ONLINE_TIMEOUT: Duration = Duration::from_secs(30);
const POWEROFF_GRACE: Duration = Duration::from_secs(20);
const PRIMARY_IP: &str = "10.201.0.1";
const AGENT_IP: &str = "10.201.0.2";
/// Where the directory with the .deb appears inside the containers.
const DEB_MOUNT: &str = "/mnt/hirte-deb";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cached root file system, built when missing. None when the test cannot run.
fn rootfs() -> Option<PathBuf> {
    let key = format!("{SUITE}-minbase-{}", PACKAGES.join("_"));
    let cache = Path::new(CACHE_DIR);
    let dir = cache.join(&key);
    let done = cache.join(format!("{key}.complete"));
    if done.exists() && dir.is_dir() {
        return Some(dir);
    }
    if Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        hirte_tests::cannot_run(
            TEST,
            "mmdebstrap is not installed (ci/setup installs it: apt-get install mmdebstrap)",
        );
        return None;
    }
    std::fs::create_dir_all(cache).unwrap();
    // One builder at a time (parallel test runs share the cache).
    let lock = File::create(cache.join(format!("{key}.lock"))).unwrap();
    let deadline = Instant::now() + MMDEBSTRAP_TIMEOUT;
    let mut lock = Some(lock);
    let _guard = loop {
        match Flock::lock(lock.take().unwrap(), FlockArg::LockExclusiveNonblock) {
            Ok(g) => break g,
            Err((f, _)) => {
                assert!(Instant::now() < deadline, "waiting for {key}.lock");
                lock = Some(f);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    if done.exists() && dir.is_dir() {
        return Some(dir);
    }
    let tmp = cache.join(format!("{key}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&dir);
    let started = Instant::now();
    let out = run(
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--mode=root"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&tmp),
        MMDEBSTRAP_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "mmdebstrap {SUITE} into {}: {}",
        tmp.display(),
        show(&out)
    );
    std::fs::rename(&tmp, &dir).unwrap();
    File::create(&done).unwrap();
    eprintln!(
        "built {} in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Some(dir)
}

/// The cgroup hierarchies to place a container in: pure v2, or both halves of hybrid.
fn cgroup_roots() -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.procs").exists() {
        return vec![root.to_path_buf()];
    }
    ["unified", "systemd"]
        .iter()
        .map(|h| root.join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

/// Removes a cgroup subtree, deepest first; kills what is left in it (v2 `cgroup.kill`).
fn remove_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    fn dirs(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs(&p, out);
                }
            }
        }
        out.push(d.to_path_buf());
    }
    let mut all = Vec::new();
    dirs(dir, &mut all);
    let deadline = Instant::now() + Duration::from_secs(5);
    for d in all {
        while std::fs::remove_dir(&d).is_err() && d.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args), COMMAND_TIMEOUT)
}

/// One booted container.
struct Node {
    name: &'static str,
    netns: String,
    cgroups: Vec<PathBuf>,
    nspawn: Option<Child>,
    /// The container's PID 1 (systemd), as the host sees it.
    leader: Option<i32>,
    log: PathBuf,
}

impl Node {
    /// Runs `script` with `sh -c` inside the container (all its namespaces, its root), with
    /// a clean environment, as root.
    fn sh(&self, script: &str, args: &[&str]) -> Output {
        let leader = self.leader.expect("a booted container");
        run(
            Command::new("nsenter")
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("LANG", "C.UTF-8")
                .arg("--target")
                .arg(leader.to_string())
                .args(["--all", "--", "/bin/sh", "-c", script, "sh"])
                .args(args),
            COMMAND_TIMEOUT,
        )
    }

    /// `sh` that must succeed; returns stdout.
    fn ok(&self, script: &str, args: &[&str]) -> String {
        let o = self.sh(script, args);
        assert!(
            o.status.success(),
            "on {}: {script} {args:?}: {}",
            self.name,
            show(&o)
        );
        stdout(&o)
    }

    fn write_file(&self, path: &str, content: &str) {
        self.ok("printf '%s' \"$1\" > \"$2\"", &[content, path]);
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The journal inside, for failure messages.
    fn journal(&self) -> String {
        if self.leader.is_none() {
            return String::new();
        }
        stdout(&self.sh("journalctl -b --no-pager | tail -n 80", &[]))
    }
}

/// Both containers, their network and cgroups; torn down on drop.
struct Lab {
    nodes: Vec<Node>,
}

impl Lab {
    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    /// Network namespaces joined by a veth pair, with `eth0` in each.
    fn new(names: [&'static str; 2]) -> Lab {
        let pid = std::process::id();
        let mut lab = Lab { nodes: Vec::new() };
        for name in names {
            let netns = format!("hirte-sm-{pid}-{name}");
            let o = ip(&["netns", "add", &netns]);
            assert!(o.status.success(), "ip netns add {netns}: {}", show(&o));
            lab.nodes.push(Node {
                name,
                netns,
                cgroups: Vec::new(),
                nspawn: None,
                leader: None,
                log: std::env::temp_dir().join(format!("hirte-sm-{pid}-{name}.log")),
            });
        }
        let (a, b) = (lab.nodes[0].netns.clone(), lab.nodes[1].netns.clone());
        let o = ip(&[
            "-n", &a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b,
        ]);
        assert!(o.status.success(), "veth: {}", show(&o));
        for (ns, addr) in [(&a, PRIMARY_IP), (&b, AGENT_IP)] {
            for args in [
                vec![
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ],
                vec!["-n", ns, "link", "set", "eth0", "up"],
                vec!["-n", ns, "link", "set", "lo", "up"],
            ] {
                let o = ip(&args);
                assert!(o.status.success(), "ip {args:?}: {}", show(&o));
            }
        }
        lab
    }

    /// Boots `name` from `rootfs` with `deb_dir` visible read-only at [`DEB_MOUNT`], and waits
    /// until its systemd reports the system running. Err carries what nspawn and systemd said.
    fn boot(&mut self, name: &str, rootfs: &Path, deb_dir: &Path) -> Result<Duration, String> {
        let started = Instant::now();
        let pid = std::process::id();
        let node = self.nodes.iter_mut().find(|n| n.name == name).unwrap();
        for root in cgroup_roots() {
            let d = root.join(format!("hirte-sm-{pid}-{name}"));
            std::fs::create_dir_all(&d).map_err(|e| format!("cgroup {}: {e}", d.display()))?;
            node.cgroups.push(d);
        }
        let procs: Vec<String> = node
            .cgroups
            .iter()
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect();
        let log = File::create(&node.log).unwrap();
        // The shell moves itself into the container's cgroups, then becomes nspawn: nspawn
        // makes its `payload`/`supervisor` cgroups below its own, which must not be the root.
        let child = Command::new("sh")
            .arg("-c")
            .arg("for f in $HIRTE_SM_CGROUPS; do echo $$ > \"$f\" || exit 97; done; exec \"$@\"")
            .arg("sh")
            .arg("systemd-nspawn")
            .arg("--boot")
            .arg("--directory")
            .arg(rootfs)
            .args([
                "--volatile=overlay",
                "--register=no",
                "--keep-unit",
                "--console=pipe",
                "--link-journal=no",
            ])
            .arg(format!("--machine={name}"))
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                node.netns
            ))
            .arg(format!("--bind-ro={}:{DEB_MOUNT}", deb_dir.display()))
            .env("HIRTE_SM_CGROUPS", procs.join(" "))
            // The pure cgroup v2 hierarchy inside, as Debian boots by default, also on a host
            // with the hybrid layout: only there can systemd freeze units (`cgroup.freeze`).
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning systemd-nspawn: {e}"))?;
        let nspawn_pid = child.id();
        node.nspawn = Some(child);
        // PID 1 of the container is nspawn's child named systemd.
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Some(Ok(Some(st))) = node.nspawn.as_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "systemd-nspawn exited ({st}) before the container's systemd ran:\n{}",
                    node.log_text()
                ));
            }
            let children =
                std::fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children"))
                    .unwrap_or_default();
            let leader = children.split_whitespace().find_map(|c| {
                let comm = std::fs::read_to_string(format!("/proc/{c}/comm")).ok()?;
                (comm.trim() == "systemd").then(|| c.parse::<i32>().ok())?
            });
            if let Some(l) = leader {
                node.leader = Some(l);
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no systemd in the container after {BOOT_TIMEOUT:?}:\n{}",
                    node.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // `is-system-running --wait` returns once boot is over (running, or degraded).
        let mut state = String::new();
        while Instant::now() < deadline {
            let o = node.sh("systemctl is-system-running --wait", &[]);
            state = stdout(&o).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        match state.as_str() {
            "running" => Ok(started.elapsed()),
            "degraded" => Err(format!(
                "{name} booted degraded:\n{}\n{}",
                stdout(&node.sh("systemctl --failed --no-pager", &[])),
                node.journal()
            )),
            s => Err(format!(
                "{name}: system state '{s}' after {BOOT_TIMEOUT:?}\nnspawn:\n{}\njournal:\n{}",
                node.log_text(),
                node.journal()
            )),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(child) = n.nspawn.as_mut() {
                // SIGTERM asks nspawn to power the container off (SIGRTMIN+4 to its systemd).
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + POWEROFF_GRACE;
        for n in &mut self.nodes {
            if let Some(mut child) = n.nspawn.take() {
                while !matches!(child.try_wait(), Ok(Some(_))) {
                    if Instant::now() >= deadline {
                        eprintln!("{}: not powered off in {POWEROFF_GRACE:?}, killing", n.name);
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            for d in &n.cgroups {
                remove_cgroup(d);
            }
            let _ = ip(&["netns", "del", &n.netns]);
            if std::thread::panicking() {
                eprintln!("--- systemd-nspawn output of {}:\n{}", n.name, n.log_text());
            }
            let _ = std::fs::remove_file(&n.log);
        }
    }
}

/// `hirtectl list-nodes` rows as (name, state).
fn nodes_states(list: &str) -> Vec<(String, String)> {
    list.lines()
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// The one stderr line of a failed `hirtectl` run with its exit status, checked to be one line
/// without a panic.
fn failure_line(o: &Output, status: i32, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(o.status.code(), Some(status), "{what}: {}", show(o));
    assert_eq!(lines.len(), 1, "{what}: not one line: {}", show(o));
    assert!(!err.contains("panicked"), "{what}: {}", show(o));
    lines[0].trim().to_string()
}

/// The part of the freeze requirements that only a host with the cgroup v2 freezer shows; the
/// `systemd --user` tests (ctl_control.rs, node_api.rs) report it not shown under this key.
const FREEZING: &str = "freezing";

/// `hirtectl freeze` and `thaw` of `unit` (running, counting into `/run/ticker` on the agent
/// node) under the agent node's system manager: systemd's FreezerState, the unit's cgroup
/// (`cgroup.freeze`, `cgroup.events`) and its process, which stops counting while frozen.
/// Where systemd cannot freeze, reports its refusal as not shown.
fn freeze_and_thaw(primary: &Node, agent: &Node, unit: &str) {
    let prop = |p: &str| {
        agent
            .ok("systemctl show -p \"$1\" --value \"$2\"", &[p, unit])
            .trim()
            .to_string()
    };
    let cgroup = format!("{CGROUP_ROOT}{}", prop("ControlGroup"));
    let cg_file = |f: &str| agent.ok("cat \"$1/$2\"", &[&cgroup, f]);
    let ticks = || -> u64 {
        let t = agent.ok("cat /run/ticker", &[]);
        t.trim()
            .parse()
            .unwrap_or_else(|_| panic!("/run/ticker: {t:?}"))
    };
    let advancing = |what: &str| {
        let first = ticks();
        wait_for(what, Duration::from_secs(5), || ticks() > first);
    };
    advancing("the counter to run before freezing");

    let o = primary.sh("hirtectl freeze agent \"$1\"", &[unit]);
    if !o.status.success() {
        // systemd's own refusal, relayed as one line.
        let line = failure_line(&o, 1, "hirtectl freeze refused");
        let why = format!(
            "{FREEZING}: hirtectl freeze under system-mode systemd is refused ({line}); \
             the unit's cgroup is {cgroup}, {}",
            stdout(&agent.sh("stat -fc 'a %T file system' /sys/fs/cgroup", &[])).trim()
        );
        hirte_tests::not_shown("req~ctl.unit-control~1", &why);
        hirte_tests::not_shown("req~api.node~1", &why);
        return;
    }
    assert!(stdout(&o).trim().is_empty(), "freeze printed: {}", show(&o));
    // systemd answers FreezeUnit once the cgroup is frozen: no waiting.
    assert_eq!(prop("FreezerState"), "frozen");
    assert_eq!(cg_file("cgroup.freeze").trim(), "1");
    let events = cg_file("cgroup.events");
    assert!(events.lines().any(|l| l == "frozen 1"), "{events}");
    let pids = cg_file("cgroup.procs");
    assert!(!pids.trim().is_empty(), "no process in {cgroup}");
    let before = ticks();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(ticks(), before, "the frozen unit kept counting");
    let status = primary.ok("hirtectl status agent \"$1\"", &[unit]);
    let row: Vec<&str> = status
        .lines()
        .find(|l| l.split_whitespace().next() == Some(unit))
        .unwrap_or_else(|| panic!("{status}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[4], "frozen", "hirtectl status: {status}");
    assert_eq!(prop("ActiveState"), "active");

    let out = primary.ok("hirtectl thaw agent \"$1\"", &[unit]);
    assert!(out.trim().is_empty(), "thaw printed: {out}");
    assert_eq!(prop("FreezerState"), "running");
    assert_eq!(cg_file("cgroup.freeze").trim(), "0");
    let events = cg_file("cgroup.events");
    assert!(events.lines().any(|l| l == "frozen 0"), "{events}");
    advancing("the thawed unit to count again");
    let text = format!(
        "{FREEZING}: hirtectl freeze/thaw agent {unit} under system-mode systemd: FreezerState \
         frozen, cgroup.events 'frozen 1', counter stopped for 0.7 s; thawed: running, counting"
    );
    hirte_tests::shown("req~ctl.unit-control~1", &text);
    hirte_tests::shown("req~api.node~1", &text);
}

// [itest->req~install.units~1]
// [itest->req~install.deb~1]
// [itest->req~guide.walkthrough~1]
// [itest->req~ctl.unit-control~1]
// [itest->req~api.node~1]
#[test]
fn system_mode_guide_walkthrough() {
    if !hirte_tests::require_root(TEST) {
        return;
    }
    if Command::new("systemd-nspawn")
        .arg("--version")
        .output()
        .is_err()
    {
        hirte_tests::cannot_run(
            TEST,
            "systemd-nspawn is not installed (ci/setup installs it: apt-get install systemd-container)",
        );
        return;
    }
    let Some(rootfs) = rootfs() else {
        return;
    };
    let deb_dir = Scratch::new("system-mode-deb");
    let Some(deb) = build_deb(TEST, &deb_dir) else {
        return;
    };
    let deb_name = deb.file_name().unwrap().to_string_lossy().into_owned();

    let mut lab = Lab::new(["primary", "agent"]);
    for name in ["primary", "agent"] {
        match lab.boot(name, &rootfs, &deb_dir.path) {
            Ok(took) => eprintln!(
                "{name}: system-mode systemd running after {:.1} s",
                took.as_secs_f64()
            ),
            Err(why) => {
                // On one line for the matrix, with what nspawn or systemd said.
                let first: String = why
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .collect::<Vec<_>>()
                    .join(" | ")
                    .chars()
                    .take(600)
                    .collect();
                hirte_tests::not_shown(
                    "req~install.units~1",
                    &format!("system mode: system-mode systemd does not boot here: {first}"),
                );
                eprintln!("{why}");
                hirte_tests::cannot_run(TEST, &format!("system-mode systemd: {first}"));
                return;
            }
        }
    }
    let primary = lab.node("primary");
    let agent = lab.node("agent");

    // Step 1: install (the one package holds manager, agent and hirtectl).
    for n in [primary, agent] {
        let out = n.ok("dpkg -i \"$1\" 2>&1", &[&format!("{DEB_MOUNT}/{deb_name}")]);
        eprintln!("{}: dpkg -i:\n{out}", n.name);
        // postinst: the operators' group, no unit enabled or started.
        n.ok("getent group hirte-operators", &[]);
        let o = n.sh(
            "systemctl is-enabled hirte.service hirte-agent.service",
            &[],
        );
        assert_eq!(
            stdout(&o).lines().collect::<Vec<_>>(),
            ["disabled", "disabled"],
            "{}",
            show(&o)
        );
        let o = n.sh("systemctl is-active hirte.service hirte-agent.service", &[]);
        assert!(!o.status.success(), "started by dpkg: {}", show(&o));
    }
    assert!(!primary.ok("hirtectl --version", &[]).trim().is_empty());

    // Step 2: the guide's configuration files, verbatim but for the manager's address.
    primary.write_file("/etc/hirte/hirte.conf", &guide::hirte_conf("primary,agent"));
    primary.write_file("/etc/hirte/agent.conf", guide::PRIMARY_AGENT_CONF);
    agent.write_file(
        "/etc/hirte/agent.conf",
        &guide::agent_conf("agent", PRIMARY_IP),
    );

    // Step 4: start, enable, status, with the system manager's systemctl.
    primary.ok("systemctl start hirte hirte-agent", &[]);
    primary.ok("systemctl enable hirte hirte-agent 2>&1", &[]);
    agent.ok("systemctl start hirte-agent", &[]);
    agent.ok("systemctl enable hirte-agent 2>&1", &[]);
    let status = primary.ok("systemctl status --no-pager hirte hirte-agent", &[]);
    eprintln!("primary: systemctl status hirte hirte-agent:\n{status}");
    assert_eq!(
        status.matches("Active: active (running)").count(),
        2,
        "{status}"
    );
    assert!(
        status.contains("/lib/systemd/system/hirte.service; enabled"),
        "{status}"
    );
    let status = agent.ok("systemctl status --no-pager hirte-agent", &[]);
    assert!(status.contains("Active: active (running)"), "{status}");
    // Type=notify: the manager told systemd what it listens on, over the system manager's
    // notify socket.
    assert!(
        primary
            .ok("systemctl show -p StatusText hirte", &[])
            .contains("listening on"),
        "hirte's StatusText"
    );

    // Step 5: the agent's connection in the manager's journal, both nodes online.
    let want = format!("Agent 'agent' connected from {AGENT_IP}");
    wait_for(&want, ONLINE_TIMEOUT, || {
        stdout(&primary.sh("journalctl -u hirte --no-pager", &[])).contains(&want)
    });
    let deadline = Instant::now() + ONLINE_TIMEOUT;
    let list = loop {
        let list = primary.ok("hirtectl list-nodes", &[]);
        let rows = nodes_states(&list);
        if rows.len() == 2 && rows.iter().all(|(_, s)| s == "online") {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "not both online: {list}\n{}",
            primary.journal()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("hirtectl list-nodes:\n{list}");
    let mut names: Vec<String> = nodes_states(&list).into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(names, ["agent", "primary"], "{list}");

    // Testing Functionality: list-units on all nodes and on the agent, from the system
    // managers (their own units: hirte.service on primary, hirte-agent.service on both).
    let all = primary.ok("hirtectl list-units", &[]);
    assert!(all.contains("hirte.service"), "{all}");
    let on_agent = primary.ok("hirtectl list-units agent", &[]);
    assert!(on_agent.contains("hirte-agent.service"), "{on_agent}");
    // The agent node's own systemd: hirte.service is known there (hirte-agent.service is
    // ordered after it) but not running, unlike on the primary.
    let row = |list: &str, unit: &str| {
        list.lines()
            .find(|l| l.split_whitespace().next() == Some(unit))
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
    };
    assert_ne!(
        row(&on_agent, "hirte.service").as_deref(),
        Some("active"),
        "{on_agent}"
    );
    let on_primary = primary.ok("hirtectl list-units primary", &[]);
    assert_eq!(
        row(&on_primary, "hirte.service").as_deref(),
        Some("active"),
        "{on_primary}"
    );

    // The guide's httpd: a long-running service in the agent node's /etc/systemd/system.
    agent.write_file(
        "/etc/systemd/system/httpd.service",
        "[Unit]\nDescription=Test web server (guide walkthrough)\n\n[Service]\n\
         ExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n",
    );
    agent.ok("systemctl daemon-reload", &[]);
    let active = |want: &str| {
        let o = agent.sh("systemctl is-active httpd.service", &[]);
        assert_eq!(stdout(&o).trim(), want, "agent's systemd: {}", show(&o));
    };
    let out = primary.ok("hirtectl start agent httpd.service", &[]);
    assert!(out.contains("done"), "{out}");
    active("active");
    let out = primary.ok("hirtectl status agent httpd.service", &[]);
    assert!(
        out.contains("httpd.service") && out.contains("active"),
        "{out}"
    );
    primary.ok("hirtectl stop agent httpd.service", &[]);
    active("inactive");
    primary.ok("hirtectl restart agent httpd.service", &[]);
    active("active");
    primary.ok("hirtectl enable agent httpd.service", &[]);
    let o = agent.sh("systemctl is-enabled httpd.service", &[]);
    assert_eq!(stdout(&o).trim(), "enabled", "{}", show(&o));
    // `hirtectl exec` through the sandboxed system agent (its output via /run/hirte-agent).
    // It ran on the agent node: that node's agent.conf.
    let out = primary.ok("hirtectl exec agent /bin/cat /etc/hirte/agent.conf", &[]);
    assert!(out.contains("NodeName=agent\n"), "{out}");

    // Freezing and thawing a unit on the agent node, which `systemd --user` in the other
    // tests' namespaces refuses: a service that counts while it runs.
    agent.write_file(
        "/etc/systemd/system/ticker.service",
        "[Unit]\nDescription=Counts while it runs (freeze test)\n\n[Service]\nExecStart=/bin/sh \
         -c 'i=0; while :; do i=$((i+1)); echo $i > /run/ticker.new; \
         mv /run/ticker.new /run/ticker; sleep 0.05; done'\n",
    );
    agent.ok("systemctl daemon-reload", &[]);
    primary.ok("hirtectl start agent ticker.service", &[]);
    freeze_and_thaw(primary, agent, "ticker.service");
    // Refusals reach the operator as one line with systemd's words: not loaded (status 4,
    // as systemctl), and not active (1).
    let o = primary.sh("hirtectl freeze agent nosuch.service", &[]);
    let line = failure_line(&o, 4, "freeze of a unit that is not loaded");
    assert!(line.contains("nosuch.service"), "{line}");
    primary.ok("hirtectl stop agent ticker.service", &[]);
    // Stopped, the enabled httpd stays loaded (multi-user.target wants it), unlike ticker.
    primary.ok("hirtectl stop agent httpd.service", &[]);
    active("inactive");
    for verb in ["freeze", "thaw"] {
        let o = primary.sh(&format!("hirtectl {verb} agent httpd.service"), &[]);
        let line = failure_line(&o, 1, &format!("{verb} of an inactive unit"));
        // systemd's words: "Unit is inactive."
        assert!(line.contains("inactive"), "{line}");
        eprintln!("{verb} of an inactive unit: {line}");
    }

    // Nothing failed on either system manager meanwhile.
    for n in [primary, agent] {
        let o = n.sh("systemctl is-system-running", &[]);
        assert_eq!(
            stdout(&o).trim(),
            "running",
            "{}: {}\n{}",
            n.name,
            stdout(&n.sh("systemctl --failed --no-pager", &[])),
            n.journal()
        );
    }
    drop(lab);
}
