//! [`ClusterSpec`] and [`Cluster`]: an N-node cluster on this machine.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dbus::blocking::Connection;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};

use crate::bus::{self, MANAGER_BUS_NAME};
use crate::cgroup::CgroupTree;
use crate::process::{
    self, child_pid, failed_output, format_output, log_to, open_log, pid_alive, run_with_timeout,
    signal_and_reap, tail, wait_timeout,
};
use crate::state::{self, ProcEntry, State, DIR_PREFIX, NAME_PREFIX};
use crate::{net, HarnessError};

/// TCP port of the manager (inside node 0's network namespace).
pub const MANAGER_PORT: u16 = 2020;
/// Default bound for `hirtectl`, `systemctl` and shell commands.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for a node's systemd and the system bus to come up.
pub const NODE_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for all started agents' nodes to show `online`.
pub const ONLINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace between SIGTERM and SIGKILL when stopping a daemon.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Step of the poll loops ([`wait_until`]).
pub const POLL_STEP: Duration = Duration::from_millis(20);

const LOG_TAIL_LINES: usize = 40;

static CLUSTER_COUNTER: AtomicU32 = AtomicU32::new(0);

/// What to bring up. Build with [`ClusterSpec::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Node names; the first hosts the manager. Names: 1-63 of `[A-Za-z0-9_.-]`, unique.
    pub nodes: Vec<String>,
    /// Extra lines appended under `[hirte]` of the manager's `hirte.conf`.
    pub manager_conf: String,
    /// Text appended to the manager's `hirte.conf` after the `[hirte]` section (and after
    /// [`ClusterSpec::manager_conf`]): further sections, e.g.
    /// `"[node n1]\nAllowDependenciesOn=n2\n"`.
    pub manager_sections: String,
    /// Extra lines appended under `[hirte-agent]` of every node's `agent.conf`.
    pub agent_conf: String,
    /// Start `hirte-agent` on every node (default true).
    pub start_agents: bool,
    /// Start `hirte` on the first node (default true).
    pub start_manager: bool,
    /// Where `hirte`, `hirte-agent`, `hirtectl` are; `None`: [`bin_dir`].
    pub bin_dir: Option<PathBuf>,
}

impl ClusterSpec {
    /// A spec with these nodes, manager and agents started, no extra config.
    pub fn new(nodes: &[&str]) -> Self {
        ClusterSpec {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            manager_conf: String::new(),
            manager_sections: String::new(),
            agent_conf: String::new(),
            start_agents: true,
            start_manager: true,
            bin_dir: None,
        }
    }

    /// Only the nodes' systemd instances, network and bus: no hirte daemons.
    pub fn systemd_only(nodes: &[&str]) -> Self {
        ClusterSpec {
            start_agents: false,
            start_manager: false,
            ..ClusterSpec::new(nodes)
        }
    }

    fn validate(&self) -> Result<(), HarnessError> {
        if self.nodes.is_empty() {
            return Err(HarnessError::InvalidSpec("no nodes".into()));
        }
        // 10.200.0.1 .. 10.200.0.250 on one /24.
        if self.nodes.len() > 250 {
            return Err(HarnessError::InvalidSpec("at most 250 nodes".into()));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let ok_chars = n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
            if n.is_empty() || n.len() > 63 || !ok_chars || n.starts_with('.') {
                return Err(HarnessError::InvalidSpec(format!(
                    "bad node name {n:?} (1-63 of [A-Za-z0-9_.-], not starting with '.')"
                )));
            }
            if n == "system.d" {
                return Err(HarnessError::InvalidSpec(
                    "node name system.d is reserved".into(),
                ));
            }
            if self.nodes.iter().take(i).any(|m| m == n) {
                return Err(HarnessError::InvalidSpec(format!("duplicate node {n}")));
            }
        }
        Ok(())
    }
}

/// One simulated node.
#[derive(Debug)]
struct Node {
    name: String,
    index: usize,
    netns: String,
    dir: PathBuf,
    systemd: Option<Child>,
    /// Kept after systemd exits so late `nsenter` calls fail cleanly instead of
    /// entering a recycled PID's namespaces (checked with the start time).
    systemd_pid: i32,
    systemd_start: u64,
    agent: Option<Child>,
}

impl Node {
    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    fn etc_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }
    fn bus_address(&self) -> String {
        format!("unix:path={}", self.run_dir().join("bus").display())
    }
    fn cg_systemd(&self) -> String {
        format!("n{}", self.index)
    }
    fn cg_agent(&self) -> String {
        format!("n{}-agent", self.index)
    }
    fn cg_aux(&self) -> String {
        format!("n{}-aux", self.index)
    }
}

/// What a cluster owns on the host; see [`Cluster::resources`] and
/// [`ClusterResources::leftovers`].
#[derive(Debug, Clone)]
pub struct ClusterResources {
    /// Network namespace names (`/run/netns/<name>`).
    pub netns: Vec<String>,
    /// The cluster's cgroup directory in each hierarchy.
    pub cgroups: Vec<PathBuf>,
    /// The cluster's temp dir.
    pub dir: PathBuf,
    /// Processes (pid, start time) seen in the cluster or started by it.
    pub pids: Vec<(i32, u64)>,
}

impl ClusterResources {
    /// Descriptions of every resource that still exists (empty = fully cleaned up).
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.netns {
            if net::exists(n) {
                out.push(format!("netns {n}"));
            }
        }
        for c in &self.cgroups {
            if c.exists() {
                out.push(format!("cgroup {}", c.display()));
            }
        }
        if self.dir.exists() {
            out.push(format!("dir {}", self.dir.display()));
        }
        let me = i32::try_from(std::process::id()).unwrap_or(-1);
        for &(pid, start) in &self.pids {
            // A zombie parented to PID 1 is gone from our point of view (init
            // reaps it); one parented to us would be our bug.
            match process::proc_stat(pid) {
                Some((state, ppid, st)) if st == start && (state != 'Z' || ppid == me) => {
                    out.push(format!("process {pid} (state {state})"));
                }
                _ => {}
            }
        }
        out
    }
}

/// A running cluster. Dropping it tears everything down (also while
/// unwinding from a panic); [`Cluster::keep`] leaves it running instead.
///
/// Layout of [`Cluster::dir`] (`$TMPDIR/hirte-cluster-<id>/`):
/// `cluster.state`, `system-bus.conf`, `system.d/`, `system_bus_socket`,
/// `bus.log`, `manager.log`, and per node `<node>/` with `etc/` (the node's
/// `HIRTE_CONFIG_DIR`: `agent.conf`, `agent.conf.d/`, and on the first node
/// `hirte.conf`, `hirte.conf.d/`), `run/` (`XDG_RUNTIME_DIR`, session bus
/// at `run/bus`, units in `run/systemd/user/`), `config/ data/ state/ cache/`,
/// `systemd.log`, `agent.log`, `proxy.log`.
///
/// When `hirte-proxy` is among the binaries, every node's `run/systemd/user/` holds the
/// checkout's user templates `hirte-proxy@.service` (running that binary, output to
/// `<node>/proxy.log`) and `hirte-dep@.service`, so units can depend on other nodes'.
///
/// Conventions: methods that only read state return `Option`; methods that
/// run a command return its `Output` (exit 127 with the reason on stderr if
/// the harness could not run it); methods that change the cluster return `Result`.
#[derive(Debug)]
pub struct Cluster {
    id: String,
    dir: PathBuf,
    spec: ClusterSpec,
    switch_ns: String,
    nodes: Vec<Node>,
    cgroups: CgroupTree,
    bus: Option<Child>,
    manager: Option<Child>,
    systemd_bin: PathBuf,
    bins: PathBuf,
    keep_dir: bool,
    finished: bool,
    startup: Duration,
}

/// Polls `f` every [`POLL_STEP`] until it returns true; `Timeout` error after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HarnessError::Timeout {
                what: what.to_string(),
                after: timeout,
                detail: String::new(),
            });
        }
        std::thread::sleep(POLL_STEP.min(deadline - now));
    }
}

/// Directory holding `hirte`, `hirte-agent`, `hirtectl`: `$HIRTE_BIN_DIR`, or
/// the cargo profile dir of the running executable (`target/<profile>/` for
/// test binaries in `deps/` and examples in `examples/`).
pub fn bin_dir() -> Result<PathBuf, HarnessError> {
    if let Some(d) = std::env::var_os("HIRTE_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().map_err(|e| HarnessError::io("current_exe", e))?;
    let parent = exe.parent().ok_or_else(|| {
        HarnessError::io(
            "current_exe has no parent",
            std::io::ErrorKind::NotFound.into(),
        )
    })?;
    let in_subdir = parent
        .file_name()
        .is_some_and(|f| f == "deps" || f == "examples");
    match (in_subdir, parent.parent()) {
        (true, Some(pp)) => Ok(pp.to_path_buf()),
        _ => Ok(parent.to_path_buf()),
    }
}

/// Path of a project binary (`hirte`, `hirte-agent`, `hirtectl`) in [`bin_dir`], checked to exist.
pub fn binary(name: &str) -> Result<PathBuf, HarnessError> {
    binary_in(&bin_dir()?, name)
}

fn binary_in(dir: &Path, name: &str) -> Result<PathBuf, HarnessError> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::MissingBinary {
            name: name.to_string(),
            path,
        })
    }
}

fn find_systemd() -> Result<PathBuf, HarnessError> {
    ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| HarnessError::MissingTool("/lib/systemd/systemd".into()))
}

fn check_tools() -> Result<(), HarnessError> {
    for t in ["ip", "nsenter", "unshare", "dbus-daemon", "systemctl", "sh"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(HarnessError::MissingTool(t.to_string()));
        }
    }
    Ok(())
}

/// The proxy template (user variant) as the harness installs it on every node.
const PROXY_UNIT: &str = "hirte-proxy@.service";
/// The dependency anchor template (user variant).
const DEP_UNIT: &str = "hirte-dep@.service";
/// Per node (`<dir>/<node>/`): stdout and stderr of every `hirte-proxy@` instance.
const PROXY_LOG: &str = "proxy.log";
/// The helper's installed path in the templates, replaced by the built one.
const PROXY_HELPER_PATH: &str = "/usr/libexec/hirte-proxy";

/// The checkout's user templates for cross-node dependencies
/// (`packaging/systemd/user/hirte-proxy@.service`, `hirte-dep@.service`) with the helper's
/// path replaced by `bins/hirte-proxy`. Empty when that helper is not in `bins` (a cluster
/// of stand-in binaries, or an install tree without it).
fn proxy_templates(bins: &Path) -> Result<Vec<(&'static str, String)>, HarnessError> {
    let Ok(helper) = binary_in(bins, "hirte-proxy") else {
        return Ok(Vec::new());
    };
    let helper = helper.to_string_lossy().into_owned();
    if helper.contains(|c: char| c.is_whitespace() || c == '%' || c == '"') {
        return Err(HarnessError::InvalidSpec(format!(
            "{helper}: a path with whitespace, '%' or '\"' cannot go into ExecStart= unquoted"
        )));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/user");
    let mut out = Vec::new();
    for name in [PROXY_UNIT, DEP_UNIT] {
        let p = dir.join(name);
        let text = std::fs::read_to_string(&p)
            .map_err(|e| HarnessError::io(format!("reading {}", p.display()), e))?;
        out.push((name, text.replace(PROXY_HELPER_PATH, &helper)));
    }
    Ok(out)
}

fn mkdir(p: &Path) -> Result<(), HarnessError> {
    std::fs::create_dir_all(p).map_err(|e| HarnessError::io(format!("creating {}", p.display()), e))
}

fn write_file(p: &Path, content: &str) -> Result<(), HarnessError> {
    if let Some(parent) = p.parent() {
        mkdir(parent)?;
    }
    std::fs::write(p, content).map_err(|e| HarnessError::io(format!("writing {}", p.display()), e))
}

/// Wraps `program args` so that it first moves itself into the given cgroups
/// (race-free: before it can fork), then execs; PID stays the same throughout.
fn in_cgroups(cmd: &mut Command, procs_files: &[PathBuf], program: &Path, args: &[&str]) {
    cmd.args([
        "sh",
        "-c",
        r#"while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@""#,
        "sh",
    ]);
    cmd.args(procs_files);
    cmd.arg("--").arg(program).args(args);
}

impl Cluster {
    /// Brings up the whole cluster: network, cgroups, each node's systemd
    /// user manager, the private system bus, then (per spec) the manager and
    /// the agents, and waits (≤ [`ONLINE_TIMEOUT`]) until every node is
    /// `online` when both are started. Anything already created is torn down
    /// if a step fails.
    pub fn start(spec: ClusterSpec) -> Result<Cluster, HarnessError> {
        let t0 = Instant::now();
        spec.validate()?;
        check_tools()?;
        let systemd_bin = find_systemd()?;
        let bins = match &spec.bin_dir {
            Some(d) => d.clone(),
            None => bin_dir()?,
        };
        if spec.start_manager {
            binary_in(&bins, "hirte")?;
            binary_in(&bins, "hirtectl")?;
        }
        if spec.start_agents {
            binary_in(&bins, "hirte-agent")?;
        }
        state::cleanup_stale();

        let n = CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{id}"));
        if dir.exists() {
            // Left by an earlier process with our PID (recycled); its owner is dead.
            state::cleanup_kept(&dir)?;
        }
        mkdir(&dir)?;
        let switch_ns = format!("{NAME_PREFIX}{id}-sw");
        let nodes = spec
            .nodes
            .iter()
            .enumerate()
            .map(|(index, name)| Node {
                name: name.clone(),
                index,
                netns: format!("{NAME_PREFIX}{id}-{index}"),
                dir: dir.join(name),
                systemd: None,
                systemd_pid: 0,
                systemd_start: 0,
                agent: None,
            })
            .collect();
        let cgroups = CgroupTree::plan(&format!("{NAME_PREFIX}{id}"))?;
        let mut c = Cluster {
            id,
            dir,
            spec,
            switch_ns,
            nodes,
            cgroups,
            bus: None,
            manager: None,
            systemd_bin,
            bins,
            keep_dir: std::env::var_os("HIRTE_KEEP_DIR").is_some_and(|v| v == "1"),
            finished: false,
            startup: Duration::ZERO,
        };
        // From here on, an error return drops `c`, which cleans up.
        c.save_state();
        c.bring_up()?;
        c.startup = t0.elapsed();
        Ok(c)
    }

    fn bring_up(&mut self) -> Result<(), HarnessError> {
        self.cgroups.create("bus")?;
        self.cgroups.create("manager")?;
        for n in &self.nodes {
            self.cgroups.create(&n.cg_systemd())?;
            self.cgroups.create(&n.cg_agent())?;
            self.cgroups.create(&n.cg_aux())?;
        }
        net::create_switch(&self.switch_ns, &self.dir)?;
        for n in &self.nodes {
            net::create_node(&n.netns, &self.switch_ns, n.index, &self.dir)?;
        }
        self.write_configs()?;
        self.spawn_bus()?;
        for i in 0..self.nodes.len() {
            self.spawn_systemd(i)?;
        }
        self.save_state();
        self.wait_infrastructure()?;
        if self.spec.start_manager {
            self.start_manager()?;
        }
        if self.spec.start_agents {
            let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
            for n in &names {
                self.start_agent(n)?;
            }
        }
        if self.spec.start_manager && self.spec.start_agents {
            self.wait_all_online(ONLINE_TIMEOUT)?;
        }
        Ok(())
    }

    fn write_configs(&self) -> Result<(), HarnessError> {
        let all = self.spec.nodes.join(",");
        let templates = proxy_templates(&self.bins)?;
        for n in &self.nodes {
            let run = n.run_dir();
            mkdir(&run)?;
            // systemd and dbus insist on a private runtime dir.
            std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| HarnessError::io(format!("chmod {}", run.display()), e))?;
            if !templates.is_empty() {
                let units = run.join("systemd/user");
                for (name, text) in &templates {
                    write_file(&units.join(name), text)?;
                }
                // No journal in a node: the helper's one-line reasons go to a file instead.
                let log = n.dir.join(PROXY_LOG);
                write_file(
                    &units.join(format!("{PROXY_UNIT}.d/hirte-tests.conf")),
                    &format!(
                        "[Service]\nStandardOutput=append:{log}\nStandardError=append:{log}\n",
                        log = log.display()
                    ),
                )?;
            }
            for d in ["config", "data", "state", "cache", "xdg-config", "xdg-data"] {
                mkdir(&n.dir.join(d))?;
            }
            let etc = n.etc_dir();
            mkdir(&etc.join("agent.conf.d"))?;
            let host = if n.index == 0 {
                "127.0.0.1".to_string()
            } else {
                net::node_ip(0)
            };
            write_file(
                &etc.join("agent.conf"),
                &format!(
                    "[hirte-agent]\nNodeName={}\nManagerHost={host}\nManagerPort={MANAGER_PORT}\n\
                     LogLevel=debug\nLogTarget=stderr\nHeartbeatInterval=1s\nReconnectInterval=500ms\n{}\n",
                    n.name, self.spec.agent_conf
                ),
            )?;
            if n.index == 0 {
                mkdir(&etc.join("hirte.conf.d"))?;
                write_file(
                    &etc.join("hirte.conf"),
                    &format!(
                        "[hirte]\nManagerPort={MANAGER_PORT}\nAllowedNodeNames={all}\n\
                         LogLevel=debug\nLogTarget=stderr\n{}\n{}\n",
                        self.spec.manager_conf, self.spec.manager_sections
                    ),
                )?;
            }
        }
        Ok(())
    }

    fn bus_socket(&self) -> PathBuf {
        self.dir.join("system_bus_socket")
    }

    fn spawn_bus(&mut self) -> Result<(), HarnessError> {
        let (conf, _) = bus::write_config(&self.dir, &self.bus_socket())?;
        let log = open_log(&self.dir.join("bus.log"), "dbus-daemon")?;
        // `env` just execs the cgroup wrapper: the bus stays in the host namespaces.
        let mut cmd = Command::new("env");
        cmd.current_dir(&self.dir);
        let procs = self.cgroups.procs_files("bus");
        in_cgroups(
            &mut cmd,
            &procs,
            Path::new("dbus-daemon"),
            &[
                &format!("--config-file={}", conf.display()),
                "--nofork",
                "--print-address",
            ],
        );
        log_to(&mut cmd, &log)?;
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io("spawning dbus-daemon", e))?;
        self.bus = Some(child);
        Ok(())
    }

    fn spawn_systemd(&mut self, i: usize) -> Result<(), HarnessError> {
        let procs = {
            let n = self
                .nodes
                .get(i)
                .ok_or_else(|| HarnessError::UnknownNode(i.to_string()))?;
            self.cgroups.procs_files(&n.cg_systemd())
        };
        let n = self
            .nodes
            .get(i)
            .ok_or_else(|| HarnessError::UnknownNode(i.to_string()))?;
        let log = open_log(&n.dir.join("systemd.log"), "systemd --user")?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", n.netns)).args([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            // - /run/netns copies would keep every netns that existed at this
            //   moment (also other clusters') alive after `ip netns del`.
            // - systemd --user refuses to run without /run/systemd/system.
            r#"set -e
umount -R -l /run/netns 2>/dev/null || true
mkdir -p /run/systemd
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir -p /run/systemd/system
sd=$1; shift
for f in "$@"; do echo $$ > "$f"; done
exec "$sd" --user"#,
            "sh",
        ]);
        cmd.arg(&self.systemd_bin).args(&procs);
        cmd.current_dir(&n.dir);
        self.node_env(&mut cmd, n);
        // No journal in the node: without this, systemd logs to the host's kmsg.
        cmd.env("SYSTEMD_LOG_TARGET", "console");
        log_to(&mut cmd, &log)?;
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawning systemd for {}", n.name), e))?;
        let pid = child_pid(&child).map(|p| p.as_raw()).unwrap_or(0);
        let node = self
            .nodes
            .get_mut(i)
            .ok_or_else(|| HarnessError::UnknownNode(i.to_string()))?;
        node.systemd_pid = pid;
        node.systemd_start = state::start_time(pid);
        node.systemd = Some(child);
        Ok(())
    }

    /// Waits for the system bus and every node's systemd to answer on D-Bus.
    fn wait_infrastructure(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + NODE_UP_TIMEOUT;
        let bus_addr = self.bus_address();
        let mut bus_ready = false;
        let mut ready = vec![false; self.nodes.len()];
        loop {
            if !bus_ready {
                if let Some(st) = self.bus.as_mut().and_then(|b| b.try_wait().ok().flatten()) {
                    return Err(HarnessError::ProcessExited {
                        what: "dbus-daemon".into(),
                        status: st.to_string(),
                        log_tail: tail(&self.dir.join("bus.log"), LOG_TAIL_LINES),
                    });
                }
                bus_ready = bus::connect(&bus_addr).is_ok();
            }
            for (n, r) in self.nodes.iter_mut().zip(ready.iter_mut()) {
                if *r {
                    continue;
                }
                if let Some(st) = n.systemd.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    return Err(HarnessError::ProcessExited {
                        what: format!("systemd --user of node {}", n.name),
                        status: st.to_string(),
                        log_tail: tail(&n.dir.join("systemd.log"), LOG_TAIL_LINES),
                    });
                }
                // Same check as `busctl --user status org.freedesktop.systemd1`,
                // without a process per poll.
                *r = bus::connect(&n.bus_address())
                    .and_then(|c| bus::name_has_owner(&c, "org.freedesktop.systemd1"))
                    .unwrap_or(false);
            }
            if bus_ready && ready.iter().all(|r| *r) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let missing: Vec<&str> = self
                    .nodes
                    .iter()
                    .zip(&ready)
                    .filter(|(_, r)| !**r)
                    .map(|(n, _)| n.name.as_str())
                    .collect();
                return Err(HarnessError::Timeout {
                    what: "system bus and node systemd instances".into(),
                    after: NODE_UP_TIMEOUT,
                    detail: format!("system bus ready: {bus_ready}; nodes not ready: {missing:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn node(&self, name: &str) -> Result<&Node, HarnessError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| HarnessError::UnknownNode(name.to_string()))
    }

    fn node_index(&self, name: &str) -> Result<usize, HarnessError> {
        self.node(name).map(|n| n.index)
    }

    fn first_node(&self) -> Result<&Node, HarnessError> {
        self.nodes
            .first()
            .ok_or_else(|| HarnessError::InvalidSpec("no nodes".into()))
    }

    /// Environment of every process of a node (systemd, agent, systemctl, shells).
    fn node_env(&self, cmd: &mut Command, n: &Node) {
        let run = n.run_dir();
        let vars: [(&str, OsString); 10] = [
            ("XDG_RUNTIME_DIR", run.clone().into()),
            ("XDG_CONFIG_HOME", n.dir.join("config").into()),
            ("XDG_DATA_HOME", n.dir.join("data").into()),
            ("XDG_STATE_HOME", n.dir.join("state").into()),
            ("XDG_CACHE_HOME", n.dir.join("cache").into()),
            // The node's own (empty) dirs instead of the host's /etc/xdg and
            // /usr/local/share:/usr/share: systemd --user would otherwise load the host's
            // user units there and turn /etc/xdg/autostart/*.desktop into
            // app-*@autostart.service units (desktop packages, e.g. chromium's recommends,
            // install some). The system's unit dirs (/usr/lib/systemd/user, /etc/systemd/user)
            // are searched regardless, so dbus.socket and the like stay.
            ("XDG_CONFIG_DIRS", n.dir.join("xdg-config").into()),
            ("XDG_DATA_DIRS", n.dir.join("xdg-data").into()),
            ("DBUS_SESSION_BUS_ADDRESS", n.bus_address().into()),
            ("HIRTE_CONFIG_DIR", n.etc_dir().into()),
            ("SYSTEMD_PAGER", OsString::new()),
        ];
        cmd.envs(vars);
        // Node processes must never reach the manager's bus or the host's,
        // nor inherit a service manager's hand-over from whatever runs the tests.
        for v in [
            "DBUS_SYSTEM_BUS_ADDRESS",
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "MANAGERPID",
            "INVOCATION_ID",
            "JOURNAL_STREAM",
            "WATCHDOG_PID",
            "WATCHDOG_USEC",
        ] {
            cmd.env_remove(v);
        }
        cmd.env("SYSTEMD_COLORS", "0");
    }

    /// `nsenter` into a node's network+mount namespaces, in cgroup `cg`, running `program args`.
    fn node_command(
        &self,
        n: &Node,
        cg: &str,
        program: &Path,
        args: &[&str],
    ) -> Result<Command, HarnessError> {
        // The PID must still be that node's systemd, or nsenter would enter a stranger's namespaces.
        if !pid_alive(n.systemd_pid, Some(n.systemd_start)) {
            return Err(HarnessError::ProcessExited {
                what: format!("systemd --user of node {}", n.name),
                status: "not running".into(),
                log_tail: tail(&n.dir.join("systemd.log"), LOG_TAIL_LINES),
            });
        }
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &n.systemd_pid.to_string(), "--net", "--mount"]);
        in_cgroups(&mut cmd, &self.cgroups.procs_files(cg), program, args);
        cmd.current_dir(&n.dir);
        self.node_env(&mut cmd, n);
        Ok(cmd)
    }

    fn run_in_node(&self, node: &str, program: &str, args: &[&str], timeout: Duration) -> Output {
        let res = self.node(node).and_then(|n| {
            let mut cmd = self.node_command(n, &n.cg_aux(), Path::new(program), args)?;
            run_with_timeout(&mut cmd, timeout, &self.dir)
        });
        res.unwrap_or_else(|e| failed_output(&e.to_string()))
    }

    // ----- public API -----

    /// Short unique id of this cluster (`<pid>-<counter>`), part of every name it creates.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The cluster's temp dir (see the type docs for its layout).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Directory the cluster takes `hirte`, `hirte-agent`, `hirtectl` from.
    pub fn bin_dir(&self) -> &Path {
        &self.bins
    }

    /// The spec the cluster was started with.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// Node names in spec order.
    pub fn nodes(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// Wall time [`Cluster::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Address of the manager's private system bus: `unix:path=<dir>/system_bus_socket`.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.bus_socket().display())
    }

    /// A new private connection to the manager's system bus.
    pub fn system_bus(&self) -> Result<Connection, HarnessError> {
        bus::connect(&self.bus_address())
    }

    /// Address of a node's session bus (where its systemd serves `org.freedesktop.systemd1`).
    pub fn node_bus_address(&self, node: &str) -> Option<String> {
        self.node(node).ok().map(Node::bus_address)
    }

    /// A new private connection to a node's session bus (reachable from the
    /// host: only the network namespace differs, and D-Bus here is a unix socket).
    pub fn node_bus(&self, node: &str) -> Result<Connection, HarnessError> {
        bus::connect(&self.node(node)?.bus_address())
    }

    /// The node's address, `10.200.0.<index+1>`.
    pub fn node_ip(&self, node: &str) -> Option<String> {
        self.node(node).ok().map(|n| net::node_ip(n.index))
    }

    /// The node's directory `<dir>/<node>/`.
    pub fn node_dir(&self, node: &str) -> Option<PathBuf> {
        self.node(node).ok().map(|n| n.dir.clone())
    }

    /// The node's `HIRTE_CONFIG_DIR` (`<dir>/<node>/etc/`): drop-ins written
    /// there before [`Cluster::start_agent`]/[`Cluster::start_manager`] take effect.
    pub fn node_config_dir(&self, node: &str) -> Option<PathBuf> {
        self.node(node).ok().map(Node::etc_dir)
    }

    /// The node's `XDG_RUNTIME_DIR`.
    pub fn node_runtime_dir(&self, node: &str) -> Option<PathBuf> {
        self.node(node).ok().map(Node::run_dir)
    }

    /// Name of the node's network namespace (`/run/netns/<name>`).
    pub fn node_netns(&self, node: &str) -> Option<String> {
        self.node(node).ok().map(|n| n.netns.clone())
    }

    /// PID of the node's `systemd --user`, if running.
    pub fn systemd_pid(&self, node: &str) -> Option<i32> {
        let n = self.node(node).ok()?;
        pid_alive(n.systemd_pid, Some(n.systemd_start)).then_some(n.systemd_pid)
    }

    /// `systemctl --user <args>` inside the node (its namespaces and
    /// environment), bounded by [`COMMAND_TIMEOUT`].
    pub fn systemctl(&self, node: &str, args: &[&str]) -> Output {
        let mut full = vec!["--user", "--no-pager"];
        full.extend_from_slice(args);
        self.run_in_node(node, "systemctl", &full, COMMAND_TIMEOUT)
    }

    /// `sh -c <cmd>` inside the node, bounded by [`COMMAND_TIMEOUT`].
    /// Background processes it leaves are killed at cleanup (they stay in the node's cgroup).
    pub fn node_shell(&self, node: &str, cmd: &str) -> Output {
        self.node_shell_timeout(node, cmd, COMMAND_TIMEOUT)
    }

    /// [`Cluster::node_shell`] with an explicit bound.
    pub fn node_shell_timeout(&self, node: &str, cmd: &str, timeout: Duration) -> Output {
        self.run_in_node(node, "sh", &["-c", cmd], timeout)
    }

    /// Writes `$XDG_RUNTIME_DIR/systemd/user/<name>` on the node (`name` may
    /// be a drop-in path such as `foo.service.d/x.conf`) and runs
    /// `systemctl --user daemon-reload` there.
    pub fn write_unit(&self, node: &str, name: &str, content: &str) -> Result<(), HarnessError> {
        let n = self.node(node)?;
        let rel = Path::new(name);
        let safe = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !safe {
            return Err(HarnessError::InvalidSpec(format!(
                "bad unit file name {name:?}"
            )));
        }
        write_file(&n.run_dir().join("systemd/user").join(rel), content)?;
        let out = self.systemctl(node, &["daemon-reload"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(HarnessError::CommandFailed {
                command: format!("systemctl --user daemon-reload on {node}"),
                output: format_output(&out),
            })
        }
    }

    /// Starts `hirte` in the first node's network+mount namespaces and waits
    /// (≤ [`NODE_UP_TIMEOUT`]) until it owns `org.containers.hirte` on the
    /// system bus. Output is appended to `<dir>/manager.log`.
    pub fn start_manager(&mut self) -> Result<(), HarnessError> {
        self.spawn_manager()?;
        let conn = self.system_bus()?;
        let deadline = Instant::now() + NODE_UP_TIMEOUT;
        loop {
            if let Some(st) = self
                .manager
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.manager = None;
                return Err(HarnessError::ProcessExited {
                    what: "manager (hirte)".into(),
                    status: st.to_string(),
                    log_tail: tail(&self.dir.join("manager.log"), LOG_TAIL_LINES),
                });
            }
            if bus::name_has_owner(&conn, MANAGER_BUS_NAME).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("manager to own {MANAGER_BUS_NAME}"),
                    after: NODE_UP_TIMEOUT,
                    detail: tail(&self.dir.join("manager.log"), LOG_TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts `hirte` like [`Cluster::start_manager`] without waiting for it to be ready.
    pub fn spawn_manager(&mut self) -> Result<(), HarnessError> {
        if let Some(m) = self.manager.as_mut() {
            if m.try_wait().ok().flatten().is_none() {
                return Err(HarnessError::AlreadyRunning("manager".into()));
            }
        }
        let bin = binary_in(&self.bins, "hirte")?;
        let n = self.first_node()?;
        let mut cmd = self.node_command(n, "manager", &bin, &[])?;
        cmd.env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .env("HIRTE_CONFIG_DIR", n.etc_dir())
            .current_dir(&self.dir);
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        let log = open_log(&self.dir.join("manager.log"), "hirte (manager)")?;
        log_to(&mut cmd, &log)?;
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io("spawning hirte", e))?;
        self.manager = Some(child);
        self.save_state();
        Ok(())
    }

    /// Sends `sig` to the manager, waits up to [`STOP_GRACE`] for it to exit
    /// (SIGKILL after that) and reaps it. For signals that should not end it
    /// (SIGSTOP, SIGCONT, SIGHUP) use [`Cluster::signal_manager`].
    /// Returns the exit status, `None` if no manager was running.
    pub fn kill_manager(&mut self, sig: Signal) -> Option<ExitStatus> {
        let mut child = self.manager.take()?;
        let st = signal_and_reap(&mut [&mut child], sig, STOP_GRACE)
            .into_iter()
            .next()
            .flatten();
        self.save_state();
        st
    }

    /// Sends `sig` to the manager without waiting.
    pub fn signal_manager(&self, sig: Signal) -> Result<(), HarnessError> {
        let pid = self
            .manager_pid()
            .ok_or_else(|| HarnessError::ProcessExited {
                what: "manager".into(),
                status: "not running".into(),
                log_tail: String::new(),
            })?;
        kill(nix::unistd::Pid::from_raw(pid), sig)
            .map_err(|e| HarnessError::io("kill manager", std::io::Error::from(e)))
    }

    /// PID of the manager if it is running (not exited).
    pub fn manager_pid(&self) -> Option<i32> {
        let pid = child_pid(self.manager.as_ref()?)?.as_raw();
        // Our unreaped child: its PID cannot be recycled, a zombie means it exited.
        pid_alive(pid, None).then_some(pid)
    }

    /// Waits up to `timeout` for the manager to exit by itself; reaps it.
    pub fn wait_manager_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let st = wait_timeout(self.manager.as_mut()?, timeout)?;
        self.manager = None;
        self.save_state();
        Some(st)
    }

    /// Starts `hirte-agent --user` inside the node (its namespaces, env and
    /// `HIRTE_CONFIG_DIR`), output appended to `<dir>/<node>/agent.log`.
    /// Does not wait: use [`Cluster::wait_node_state`] for `online`.
    pub fn start_agent(&mut self, node: &str) -> Result<(), HarnessError> {
        let i = self.node_index(node)?;
        if let Some(a) = self.nodes.get_mut(i).and_then(|n| n.agent.as_mut()) {
            if a.try_wait().ok().flatten().is_none() {
                return Err(HarnessError::AlreadyRunning(format!("agent on {node}")));
            }
        }
        let bin = binary_in(&self.bins, "hirte-agent")?;
        let n = self.node(node)?;
        let mut cmd = self.node_command(n, &n.cg_agent(), &bin, &["--user"])?;
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        let log = open_log(&n.dir.join("agent.log"), "hirte-agent --user")?;
        log_to(&mut cmd, &log)?;
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawning hirte-agent on {node}"), e))?;
        if let Some(n) = self.nodes.get_mut(i) {
            n.agent = Some(child);
        }
        self.save_state();
        Ok(())
    }

    /// Like [`Cluster::kill_manager`] for the node's agent.
    pub fn kill_agent(&mut self, node: &str, sig: Signal) -> Option<ExitStatus> {
        let i = self.node_index(node).ok()?;
        let mut child = self.nodes.get_mut(i)?.agent.take()?;
        let st = signal_and_reap(&mut [&mut child], sig, STOP_GRACE)
            .into_iter()
            .next()
            .flatten();
        self.save_state();
        st
    }

    /// Sends `sig` to the node's agent without waiting.
    pub fn signal_agent(&self, node: &str, sig: Signal) -> Result<(), HarnessError> {
        let pid = self
            .agent_pid(node)
            .ok_or_else(|| HarnessError::ProcessExited {
                what: format!("agent on {node}"),
                status: "not running".into(),
                log_tail: String::new(),
            })?;
        kill(nix::unistd::Pid::from_raw(pid), sig)
            .map_err(|e| HarnessError::io("kill agent", std::io::Error::from(e)))
    }

    /// PID of the node's agent if it is running.
    pub fn agent_pid(&self, node: &str) -> Option<i32> {
        let n = self.node(node).ok()?;
        let pid = child_pid(n.agent.as_ref()?)?.as_raw();
        pid_alive(pid, None).then_some(pid)
    }

    /// Waits up to `timeout` for the node's agent to exit by itself; reaps it.
    pub fn wait_agent_exit(&mut self, node: &str, timeout: Duration) -> Option<ExitStatus> {
        let i = self.node_index(node).ok()?;
        let n = self.nodes.get_mut(i)?;
        let st = wait_timeout(n.agent.as_mut()?, timeout)?;
        n.agent = None;
        self.save_state();
        Some(st)
    }

    /// Partitions (`up == false`) or heals a node: the switch side of its
    /// veth goes down/up, like pulling a cable (the node keeps its address;
    /// packets are dropped silently, so only timeouts/heartbeats notice).
    pub fn set_link(&self, node: &str, up: bool) -> Result<(), HarnessError> {
        let i = self.node_index(node)?;
        net::set_port(&self.switch_ns, i, up, &self.dir)
    }

    /// Runs `f` on a thread inside the node's network namespace (sockets it
    /// creates belong to that namespace and stay usable from any thread).
    /// A panic in `f` is propagated.
    pub fn in_node_net<T: Send>(
        &self,
        node: &str,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, HarnessError> {
        let path = Path::new("/run/netns").join(&self.node(node)?.netns);
        let file = std::fs::File::open(&path)
            .map_err(|e| HarnessError::io(format!("opening {}", path.display()), e))?;
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                // setns(CLONE_NEWNET) changes only this thread, which ends right after.
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| HarnessError::io("setns", std::io::Error::from(e)))?;
                Ok(f())
            });
            match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Whether a TCP connection from node `from` to a listener on node `to`'s
    /// address succeeds within `timeout` (an ICMP-free "ping"; the listener
    /// lives only for the probe).
    pub fn reachable(&self, from: &str, to: &str, timeout: Duration) -> Result<bool, HarnessError> {
        let ip = self
            .node_ip(to)
            .ok_or_else(|| HarnessError::UnknownNode(to.to_string()))?;
        let listener = self
            .in_node_net(to, || TcpListener::bind((ip.as_str(), 0)))?
            .map_err(|e| HarnessError::io(format!("listening on {ip} in {to}"), e))?;
        let addr: SocketAddr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("local_addr", e))?;
        let connected = self
            .in_node_net(from, move || TcpStream::connect_timeout(&addr, timeout))?
            .is_ok();
        Ok(connected)
    }

    /// `hirtectl <args>` against the manager's bus (`DBUS_SYSTEM_BUS_ADDRESS`
    /// set), in the host namespaces, killed after [`COMMAND_TIMEOUT`].
    pub fn hirtectl(&self, args: &[&str]) -> Output {
        self.hirtectl_timeout(args, COMMAND_TIMEOUT)
    }

    /// [`Cluster::hirtectl`] with an explicit bound.
    pub fn hirtectl_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        let res = binary_in(&self.bins, "hirtectl").and_then(|bin| {
            let mut cmd = Command::new(bin);
            cmd.args(args)
                .env_remove("DBUS_SESSION_BUS_ADDRESS")
                .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address());
            run_with_timeout(&mut cmd, timeout, &self.dir)
        });
        res.unwrap_or_else(|e| failed_output(&e.to_string()))
    }

    /// `(node, state)` rows of `hirtectl list-nodes`; `None` if it failed.
    pub fn list_nodes(&self) -> Option<Vec<(String, String)>> {
        let out = self.hirtectl_timeout(&["list-nodes"], Duration::from_secs(5));
        if !out.status.success() {
            return None;
        }
        Some(parse_list_nodes(&String::from_utf8_lossy(&out.stdout)))
    }

    /// The node's state per `hirtectl list-nodes` (`"online"`, `"offline"`, ...).
    pub fn node_state(&self, node: &str) -> Option<String> {
        self.list_nodes()?
            .into_iter()
            .find(|(n, _)| n == node)
            .map(|(_, s)| s)
    }

    /// Waits until `hirtectl list-nodes` shows `node` in `state`.
    pub fn wait_node_state(
        &self,
        node: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        let mut last = None;
        let r = wait_until(&format!("node {node} to be {state}"), timeout, || {
            last = self.node_state(node);
            last.as_deref() == Some(state)
        });
        r.map_err(|e| self.with_logs(e, &format!("last state of {node}: {last:?}")))
    }

    /// Waits until every node whose agent runs is `online`.
    pub fn wait_all_online(&self, timeout: Duration) -> Result<(), HarnessError> {
        let want: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.agent.is_some())
            .map(|n| n.name.as_str())
            .collect();
        let mut last = None;
        let r = wait_until("all nodes online", timeout, || {
            last = self.list_nodes();
            let rows = last.as_deref().unwrap_or(&[]);
            want.iter().all(|w| {
                rows.iter()
                    .any(|(n, s)| n.as_str() == *w && s.as_str() == "online")
            })
        });
        r.map_err(|e| self.with_logs(e, &format!("last list-nodes: {last:?}")))
    }

    /// Adds context and log tails to a timeout error (the dir may be gone by the time someone reads it).
    fn with_logs(&self, e: HarnessError, context: &str) -> HarnessError {
        match e {
            HarnessError::Timeout { what, after, .. } => HarnessError::Timeout {
                what,
                after,
                detail: format!("{context}\n{}", self.log_tails()),
            },
            other => other,
        }
    }

    /// [`wait_until`] (polls every 20 ms).
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        f: impl FnMut() -> bool,
    ) -> Result<(), HarnessError> {
        wait_until(what, timeout, f)
    }

    /// Everything the manager printed (all runs, separated by `=== hirte-tests` lines).
    pub fn manager_log(&self) -> String {
        read_lossy(&self.dir.join("manager.log"))
    }

    /// Everything the node's agent printed (all runs).
    pub fn agent_log(&self, node: &str) -> String {
        self.node(node)
            .map(|n| read_lossy(&n.dir.join("agent.log")))
            .unwrap_or_default()
    }

    /// What the node's `hirte-proxy@` instances printed (stdout and stderr of `hirte-proxy
    /// create|remove`, appended; the harness installs the templates with this log).
    pub fn proxy_log(&self, node: &str) -> String {
        self.node(node)
            .map(|n| read_lossy(&n.dir.join(PROXY_LOG)))
            .unwrap_or_default()
    }

    /// Output of the node's `systemd --user`.
    pub fn systemd_log(&self, node: &str) -> String {
        self.node(node)
            .map(|n| read_lossy(&n.dir.join("systemd.log")))
            .unwrap_or_default()
    }

    /// Ends of all daemon logs, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut s = String::new();
        let mut add = |title: String, p: PathBuf| {
            let t = tail(&p, LOG_TAIL_LINES);
            if !t.is_empty() {
                s.push_str(&format!(
                    "----- {title} (last {LOG_TAIL_LINES} lines) -----\n{t}\n"
                ));
            }
        };
        add("manager.log".into(), self.dir.join("manager.log"));
        for n in &self.nodes {
            add(format!("{}/agent.log", n.name), n.dir.join("agent.log"));
            add(format!("{}/{PROXY_LOG}", n.name), n.dir.join(PROXY_LOG));
        }
        add("bus.log".into(), self.dir.join("bus.log"));
        s
    }

    /// What the cluster owns right now (also its processes), to check after
    /// drop with [`ClusterResources::leftovers`].
    pub fn resources(&self) -> ClusterResources {
        let mut netns: Vec<String> = self.nodes.iter().map(|n| n.netns.clone()).collect();
        netns.push(self.switch_ns.clone());
        let mut pids: Vec<(i32, u64)> = self
            .cgroups
            .pids()
            .into_iter()
            .map(|p| (p, state::start_time(p)))
            .collect();
        for p in self.proc_entries() {
            pids.push((p.pid, p.start));
        }
        pids.sort_unstable();
        pids.dedup();
        ClusterResources {
            netns,
            cgroups: self.cgroups.roots.clone(),
            dir: self.dir.clone(),
            pids,
        }
    }

    /// Keep the temp dir (logs) when the cluster is dropped; processes,
    /// namespaces and cgroups are still removed. Also enabled by `HIRTE_KEEP_DIR=1`.
    pub fn keep_dir_on_drop(&mut self, keep: bool) {
        self.keep_dir = keep;
    }

    /// Leaves everything running and returns the cluster dir; its
    /// `cluster.state` lets [`crate::cleanup_kept`] (from any process) tear it down later.
    pub fn keep(mut self) -> PathBuf {
        self.finished = true;
        self.save_state_kept(true);
        self.dir.clone()
    }

    /// Tears the cluster down now and reports every step that failed
    /// (Drop does the same but can only log).
    pub fn shutdown(mut self) -> Result<(), HarnessError> {
        let errors = self.cleanup();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(HarnessError::Cleanup(errors))
        }
    }

    fn proc_entries(&self) -> Vec<ProcEntry> {
        let mut v = Vec::new();
        let mut add = |c: Option<&Child>, role: String| {
            if let Some(pid) = c.and_then(child_pid) {
                let pid = pid.as_raw();
                v.push(ProcEntry {
                    pid,
                    start: state::start_time(pid),
                    role,
                });
            }
        };
        for n in &self.nodes {
            add(n.agent.as_ref(), format!("agent {}", n.name));
        }
        add(self.manager.as_ref(), "manager".into());
        for n in &self.nodes {
            add(n.systemd.as_ref(), format!("systemd {}", n.name));
        }
        add(self.bus.as_ref(), "bus".into());
        v
    }

    fn save_state(&self) {
        self.save_state_kept(false);
    }

    fn save_state_kept(&self, kept: bool) {
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let mut netns: Vec<String> = self.nodes.iter().map(|n| n.netns.clone()).collect();
        netns.push(self.switch_ns.clone());
        let st = State {
            id: self.id.clone(),
            owner_pid: me,
            owner_start: state::start_time(me),
            kept,
            dir: self.dir.clone(),
            netns,
            cgroups: self.cgroups.roots.clone(),
            procs: self.proc_entries(),
        };
        if let Err(e) = st.save() {
            eprintln!("hirte-tests: cluster {}: {e}", self.id);
        }
    }

    /// Idempotent teardown; returns the failures instead of panicking.
    fn cleanup(&mut self) -> Vec<String> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let mut errors = Vec::new();
        // hirtectl/systemctl/shell calls are synchronous with a bound, so none
        // can still be running here (Drop needs exclusive access).
        let agents: Vec<Child> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.agent.take())
            .collect();
        reap(agents, "agent", Signal::SIGTERM, &mut errors);
        let manager: Vec<Child> = self.manager.take().into_iter().collect();
        reap(manager, "manager", Signal::SIGTERM, &mut errors);
        let systemds: Vec<Child> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.systemd.take())
            .collect();
        reap(systemds, "systemd", Signal::SIGTERM, &mut errors);
        // Before the cgroup sweep (it lives in the cluster's cgroup), after the
        // manager: nothing needs the bus any more.
        let bus: Vec<Child> = self.bus.take().into_iter().collect();
        reap(bus, "dbus-daemon", Signal::SIGTERM, &mut errors);
        if let Err(e) = self.cgroups.kill_all(Duration::from_secs(3)) {
            errors.push(e);
        }
        if let Err(e) = self.cgroups.remove_all(Duration::from_secs(2)) {
            errors.push(e);
        }
        let scratch = std::env::temp_dir();
        for ns in self
            .nodes
            .iter()
            .map(|n| n.netns.clone())
            .chain(std::iter::once(self.switch_ns.clone()))
        {
            if let Err(e) = net::delete(&ns, &scratch) {
                errors.push(e.to_string());
            }
        }
        if !self.keep_dir && self.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                errors.push(format!("removing {}: {e}", self.dir.display()));
            }
        } else if self.dir.exists() {
            // The state file would otherwise make cleanup_stale() treat the kept logs as a live cluster.
            let _ = std::fs::remove_file(self.dir.join(state::STATE_FILE));
            eprintln!("hirte-tests: kept cluster dir {}", self.dir.display());
        }
        errors
    }
}

/// Stops a group of daemons in parallel (SIGTERM, grace, SIGKILL) and reaps them.
fn reap(mut children: Vec<Child>, what: &str, sig: Signal, errors: &mut Vec<String>) {
    let mut refs: Vec<&mut Child> = children.iter_mut().collect();
    let st = signal_and_reap(&mut refs, sig, STOP_GRACE);
    for (c, s) in children.iter().zip(st) {
        if s.is_none() {
            errors.push(format!("{what} pid {} could not be reaped", c.id()));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if std::thread::panicking() {
            // The dir with the logs is about to go; show what the daemons said.
            let tails = self.log_tails();
            if !tails.is_empty() {
                eprintln!(
                    "hirte-tests: cluster {} torn down after a panic; logs:\n{tails}",
                    self.id
                );
            }
        }
        for e in self.cleanup() {
            eprintln!("hirte-tests: cleanup of cluster {}: {e}", self.id);
        }
    }
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Parses `hirtectl list-nodes` (`NODE STATE LAST SEEN` header, then
/// whitespace-separated rows) into `(node, state)`.
pub fn parse_list_nodes(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?;
            let state = it.next()?;
            (name != "NODE").then(|| (name.to_string(), state.to_string()))
        })
        .collect()
}

/// Map of node name to state, handy in assertions.
pub fn states_map(rows: &[(String, String)]) -> BTreeMap<String, String> {
    rows.iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_nodes() {
        let rows = parse_list_nodes("NODE STATE LAST SEEN\nn1 online now\nn2 offline 3s ago\n\n");
        assert_eq!(
            rows,
            vec![
                ("n1".to_string(), "online".to_string()),
                ("n2".to_string(), "offline".to_string())
            ]
        );
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(ClusterSpec::new(&[]).validate().is_err());
        assert!(ClusterSpec::new(&["a", "a"]).validate().is_err());
        assert!(ClusterSpec::new(&["a/b"]).validate().is_err());
        assert!(ClusterSpec::new(&["..x"]).validate().is_err());
        assert!(ClusterSpec::new(&["n1", "node-2", "x.y_z"])
            .validate()
            .is_ok());
    }
}
