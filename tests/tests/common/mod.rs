//! Helpers shared by the integration test files (`mod common;` in each). Not a test target.

#![allow(dead_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use dbus::arg::{AppendAll, ReadAll};
use dbus::blocking::Connection;
use dbus::Message;
use hirte_common::bounds::MAX_FRAME_SIZE;
use hirte_common::frame::{encode_message, FrameDecoder};
use hirte_common::handshake::register_call;
use hirte_tests::{Cluster, MANAGER_PORT};

pub const BUS_NAME: &str = "org.containers.hirte";
pub const MANAGER_PATH: &str = "/org/containers/hirte";
pub const MANAGER_IFACE: &str = "org.containers.hirte.Manager";
pub const NODE_IFACE: &str = "org.containers.hirte.Node";
pub const JOB_IFACE: &str = "org.containers.hirte.Job";
pub const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
pub const ERR_PREFIX: &str = "org.containers.hirte.Error.";

/// Generous bound for things that should happen "at once" (a few heartbeats / reconnects).
pub const SOON: Duration = Duration::from_secs(10);

/// A long-running service that needs nothing but coreutils.
pub const SLEEP_UNIT: &str = "[Unit]\nDescription=Sleeps forever\n[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/true\n[Install]\nWantedBy=default.target\n";
/// A unit whose start always fails.
pub const FAILING_UNIT: &str =
    "[Unit]\nDescription=Always fails\n[Service]\nType=oneshot\nExecStart=/bin/false\n";
/// A unit whose start job stays in systemd's queue ("running") for a long time.
pub const SLOW_UNIT: &str =
    "[Unit]\nDescription=Slow to start\n[Service]\nType=oneshot\nExecStart=/bin/sleep 300\n";

pub use hirte_tests::output::{ok, show, stderr, stdout};

/// What is wrong with an operator-facing failure, if anything: it must exit non-zero
/// (an ordinary error code, not a signal, 101 or the harness' 127), print exactly one
/// non-empty line on stderr, and show no panic or backtrace text.
pub fn one_line_problem(o: &Output) -> Option<String> {
    if o.status.success() {
        return Some(format!("expected a failure, got {}", show(o)));
    }
    if !o.status.code().is_some_and(|c| c != 127 && c != 101) {
        return Some(format!(
            "exit status {:?} is not an error exit: {}",
            o.status,
            show(o)
        ));
    }
    let err = stderr(o);
    for bad in [
        "panicked",
        "RUST_BACKTRACE",
        "stack backtrace",
        "unwrap()",
        "thread 'main'",
    ] {
        if err.contains(bad) {
            return Some(format!("stderr has {bad:?}: {}", show(o)));
        }
    }
    let lines = err.lines().filter(|l| !l.trim().is_empty()).count();
    if lines != 1 {
        return Some(format!("stderr has {lines} lines, not 1: {}", show(o)));
    }
    None
}

/// Asserts [`one_line_problem`] finds nothing; returns the stderr line.
#[track_caller]
pub fn one_line_failure(o: &Output, what: &str) -> String {
    if let Some(p) = one_line_problem(o) {
        panic!("{what}: {p}");
    }
    stderr(o).trim().to_string()
}

/// `systemctl --user is-active UNIT` on the node, trimmed (`active`, `inactive`, `failed`...).
pub fn is_active(c: &Cluster, node: &str, unit: &str) -> String {
    stdout(&c.systemctl(node, &["is-active", unit]))
        .trim()
        .to_string()
}

/// `systemctl --user is-enabled UNIT` on the node, trimmed.
pub fn is_enabled(c: &Cluster, node: &str, unit: &str) -> String {
    stdout(&c.systemctl(node, &["is-enabled", unit]))
        .trim()
        .to_string()
}

/// `systemctl --user show -p PROP --value UNIT` on the node, trimmed.
pub fn unit_prop(c: &Cluster, node: &str, unit: &str, prop: &str) -> String {
    stdout(&c.systemctl(node, &["show", "-p", prop, "--value", unit]))
        .trim()
        .to_string()
}

/// The node's persistent user unit dir (`$XDG_CONFIG_HOME/systemd/user`, the
/// `/etc/systemd/system` of a user manager): units there can be enabled.
pub fn config_unit_dir(c: &Cluster, node: &str) -> PathBuf {
    c.node_dir(node)
        .expect("node dir")
        .join("config/systemd/user")
}

/// Writes a unit into [`config_unit_dir`]; `reload`: run `systemctl --user daemon-reload`.
pub fn write_config_unit(c: &Cluster, node: &str, name: &str, content: &str, reload: bool) {
    let dir = config_unit_dir(c, node);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), content).unwrap();
    if reload {
        ok(&c.systemctl(node, &["daemon-reload"]), "daemon-reload");
    }
}

/// Object path of a node, escaped as the API says (sd-bus `bus_path_escape`).
pub fn node_path(name: &str) -> String {
    format!(
        "/org/containers/hirte/node/{}",
        hirte_common::names::escape_path_element(name)
    )
}

/// A method call on the manager's bus; the D-Bus error as (name, message) on failure.
pub fn call<A: AppendAll, R: ReadAll + 'static>(
    conn: &Connection,
    path: &str,
    iface: &str,
    member: &str,
    args: A,
) -> Result<R, (String, String)> {
    conn.with_proxy(BUS_NAME, path, Duration::from_secs(30))
        .method_call(iface, member, args)
        .map_err(|e: dbus::Error| {
            (
                e.name().unwrap_or("").to_string(),
                e.message().unwrap_or("").to_string(),
            )
        })
}

/// A property of a manager object.
pub fn prop<T: for<'b> dbus::arg::Get<'b> + 'static>(
    conn: &Connection,
    path: &str,
    iface: &str,
    name: &str,
) -> Result<T, (String, String)> {
    use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
    conn.with_proxy(BUS_NAME, path, Duration::from_secs(30))
        .get(iface, name)
        .map_err(|e: dbus::Error| {
            (
                e.name().unwrap_or("").to_string(),
                e.message().unwrap_or("").to_string(),
            )
        })
}

/// A connection that only receives signals matching the given rules.
pub struct Signals {
    pub conn: Connection,
}

impl Signals {
    pub fn new(c: &Cluster, rules: &[&str]) -> Signals {
        let conn = c.system_bus().expect("system bus");
        for r in rules {
            conn.add_match_no_cb(r).expect("add match");
        }
        Signals { conn }
    }

    /// Signals on the manager object: JobNew, JobRemoved, NodeConnectionStateChanged,
    /// and PropertiesChanged of the manager and node objects.
    pub fn manager(c: &Cluster) -> Signals {
        Signals::new(
            c,
            &[
                "type='signal',sender='org.containers.hirte',interface='org.containers.hirte.Manager'",
                "type='signal',sender='org.containers.hirte',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'",
            ],
        )
    }

    /// The first signal (within `timeout`) that `pred` accepts; others are dropped.
    pub fn wait(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Message) -> bool,
    ) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Ok(Some(m)) = self.conn.channel().blocking_pop_message(left) {
                if pred(&m) {
                    return Some(m);
                }
            }
        }
    }

    /// Waits for `JobRemoved` of `job` and returns (id, node, unit, result).
    pub fn job_removed(
        &self,
        job: &str,
        timeout: Duration,
    ) -> Option<(u32, String, String, String)> {
        let m = self.wait(timeout, |m| {
            m.member().as_deref() == Some("JobRemoved")
                && m.read2::<u32, dbus::Path>().is_ok_and(|(_, p)| &*p == job)
        })?;
        let (id, _p, node, unit, result) = m
            .read5::<u32, dbus::Path, String, String, String>()
            .expect("JobRemoved signature (uosss)");
        Some((id, node, unit, result))
    }
}

/// A raw TCP client speaking (or abusing) the manager<->agent link protocol.
pub struct RawLink {
    pub stream: TcpStream,
    decoder: FrameDecoder,
}

impl RawLink {
    /// Connects to the manager's port from inside `from`'s network namespace
    /// (127.0.0.1 on the manager's own node, else the manager node's address).
    pub fn connect(c: &Cluster, from: &str) -> RawLink {
        let manager_node = c.nodes()[0].to_string();
        let ip = if from == manager_node {
            "127.0.0.1".to_string()
        } else {
            c.node_ip(&manager_node).unwrap()
        };
        let stream = c
            .in_node_net(from, move || {
                TcpStream::connect((ip.as_str(), MANAGER_PORT))
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("connecting to the manager from {from}: {e}"));
        stream.set_nodelay(true).unwrap();
        RawLink::from_stream(stream)
    }

    /// Connects to the manager's port on its own node from the loopback address
    /// `127.0.0.{host}`: the manager rate-limits log records per peer address
    /// (`log_peer!`), so a test that checks one log line per case gives each case its own
    /// peer.
    pub fn connect_from_loopback(c: &Cluster, host: u8) -> RawLink {
        use nix::sys::socket::{
            bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
        };
        let manager_node = c.nodes()[0].to_string();
        let stream = c
            .in_node_net(&manager_node, move || -> nix::Result<TcpStream> {
                let fd = socket(
                    AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, host, 0))?;
                connect(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, MANAGER_PORT))?;
                Ok(TcpStream::from(fd))
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("connecting to the manager from 127.0.0.{host}: {e}"));
        stream.set_nodelay(true).unwrap();
        RawLink::from_stream(stream)
    }

    /// Either end of a link: a connection the test made or accepted.
    pub fn from_stream(stream: TcpStream) -> RawLink {
        RawLink {
            stream,
            decoder: FrameDecoder::new(MAX_FRAME_SIZE),
        }
    }

    /// Writes bytes; a write error (the manager already closed) is returned, not fatal.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Frames and sends one message with the given serial.
    pub fn send_msg(&mut self, mut msg: Message, serial: u32) -> std::io::Result<()> {
        msg.set_serial(serial);
        let bytes = encode_message(&msg, MAX_FRAME_SIZE).unwrap();
        self.send_raw(&bytes)
    }

    /// Sends `Register(name)` and returns the manager's answer.
    pub fn register(&mut self, name: &str) -> Option<Message> {
        self.send_msg(register_call(name).unwrap(), 1).ok()?;
        self.read_msg(SOON)
    }

    /// The next complete message from the manager, if one comes within `timeout`.
    pub fn read_msg(&mut self, timeout: Duration) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Ok(Some(m)) = self.decoder.next_message() {
                return Some(m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => {
                    if self.decoder.push(&buf[..n]).is_err() {
                        return None;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
    }

    /// Whether the manager closes the connection within `timeout` (EOF or reset);
    /// anything it sends meanwhile is discarded.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
    }
}

/// An agent's `Heartbeat` signal, as a raw link sends it.
pub fn heartbeat() -> Message {
    Message::new_signal(
        "/org/containers/hirte/internal/agent",
        "org.containers.hirte.internal.Agent",
        "Heartbeat",
    )
    .unwrap()
}

/// The name of an error reply, `None` if the message is not an error.
pub fn error_name(mut m: Message) -> Option<String> {
    if m.msg_type() != dbus::message::MessageType::Error {
        return None;
    }
    m.as_result()
        .err()
        .and_then(|e| e.name().map(str::to_string))
}

/// Waits until `f(manager log)` holds; panics with the log tails otherwise.
#[track_caller]
pub fn wait_manager_log(c: &Cluster, what: &str, f: impl Fn(&str) -> bool) {
    wait_manager_log_since(c, 0, what, f);
}

/// Where the manager log ends now: with [`wait_manager_log_since`] a later case is not
/// satisfied by lines an earlier case wrote.
pub fn manager_log_mark(c: &Cluster) -> usize {
    c.manager_log().len()
}

/// Waits until `f` holds for what the manager logged after `mark`.
#[track_caller]
pub fn wait_manager_log_since(c: &Cluster, mark: usize, what: &str, f: impl Fn(&str) -> bool) {
    let since = || {
        let log = c.manager_log();
        log.get(mark..).map(str::to_owned).unwrap_or_default()
    };
    if c.wait_for(what, SOON, || f(&since())).is_err() {
        panic!(
            "manager log never showed {what} (after byte {mark})\n{}",
            c.log_tails()
        );
    }
}

/// Waits until `f(agent log of node)` holds; panics with the log tails otherwise.
#[track_caller]
pub fn wait_agent_log(c: &Cluster, node: &str, what: &str, f: impl Fn(&str) -> bool) {
    if c.wait_for(what, SOON, || f(&c.agent_log(node))).is_err() {
        panic!("agent log of {node} never showed {what}\n{}", c.log_tails());
    }
}

/// Every node online per `hirtectl list-nodes`, and the manager answering.
#[track_caller]
pub fn assert_all_online(c: &Cluster, nodes: &[&str]) {
    let rows = c
        .list_nodes()
        .unwrap_or_else(|| panic!("hirtectl list-nodes failed\n{}", c.log_tails()));
    let states = hirte_tests::states_map(&rows);
    for n in nodes {
        assert_eq!(
            states.get(*n).map(String::as_str),
            Some("online"),
            "{n}: {rows:?}"
        );
    }
}

/// Writes `text` to `dir/name` with mode 0755.
pub fn write_executable(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Runs `cmd` (stdin /dev/null, output captured), killing it after `timeout`.
pub fn run_timeout(cmd: &mut std::process::Command, timeout: Duration) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let st = child.wait().unwrap();
            panic!("{cmd:?} did not finish within {timeout:?} ({st:?})");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Runs `hirte` or `hirte-agent` (`--user`) with `HIRTE_CONFIG_DIR=dir` and no reachable bus:
/// for configurations that must stop the daemon before it needs one.
pub fn run_daemon_without_bus(bin: &str, dir: &Path) -> Output {
    let path = hirte_tests::binary(bin).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = std::process::Command::new(path);
    if bin == "hirte-agent" {
        cmd.arg("--user");
    }
    cmd.env("HIRTE_CONFIG_DIR", dir)
        .env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            "unix:path=/nonexistent/hirte-badcfg-bus",
        )
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            "unix:path=/nonexistent/hirte-badcfg-bus",
        )
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_BACKTRACE");
    run_timeout(&mut cmd, Duration::from_secs(20))
}

/// Waits for a manager log line holding every one of `parts`; returns it.
pub fn manager_log_line(c: &Cluster, parts: &[&str]) -> String {
    let what = parts.join(" ... ");
    wait_manager_log(c, &what, |l| {
        l.lines().any(|line| parts.iter().all(|p| line.contains(p)))
    });
    c.manager_log()
        .lines()
        .find(|line| parts.iter().all(|p| line.contains(p)))
        .unwrap_or_default()
        .to_string()
}

/// The load average (1, 5, 15 min), printed with every timing figure: the machine is shared.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `HIRTE_FAILOVER_RUNS` (default 1): how many failover cycles a failover test measures
/// (`ci/bench-failover` sets it for the figures).
pub fn failover_runs() -> usize {
    std::env::var("HIRTE_FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}
