//! Shared by the `install_*.rs` integration tests (`mod install_support;` in each): where the
//! shipped assets are, `make install` into a scratch `DESTDIR`, a `hirte-operators` member
//! for the D-Bus policy checks, and commands run as that user. Not a test target.
//!
//! `hirte-trace` reads tags only in `.rs` and shell files, so the `impl` tags of the
//! installation assets (units, policy, Makefile, package metadata, stunnel recipe) stand next
//! to the constants below that name them; the assets carry `#` tags too where they can.

#![allow(dead_code)]
// Test code: a failed step must fail the test, with a message saying which.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod policy;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

// [impl->req~install.units~1]
/// Units for the system manager, as shipped (ExecStart= names /usr/bin).
pub const SYSTEM_UNITS: [&str; 3] = [
    "packaging/systemd/hirte.service",
    "packaging/systemd/hirte.socket",
    "packaging/systemd/hirte-agent.service",
];
/// The agent's unit for user managers (`hirte-agent --user`).
pub const USER_UNIT: &str = "packaging/systemd/user/hirte-agent.service";

// [impl->req~proxy.templates~1]
/// Templates of cross-node dependencies, as shipped (ExecStart= names
/// /usr/libexec/hirte-proxy), with where `make install` puts them (PREFIX=/usr).
pub const PROXY_TEMPLATES: [(&str, &str); 4] = [
    (
        "packaging/systemd/hirte-proxy@.service",
        "/usr/lib/systemd/system/hirte-proxy@.service",
    ),
    (
        "packaging/systemd/hirte-dep@.service",
        "/usr/lib/systemd/system/hirte-dep@.service",
    ),
    (
        "packaging/systemd/user/hirte-proxy@.service",
        "/usr/lib/systemd/user/hirte-proxy@.service",
    ),
    (
        "packaging/systemd/user/hirte-dep@.service",
        "/usr/lib/systemd/user/hirte-dep@.service",
    ),
];
/// The helper `hirte-proxy@.service` runs; installed to LIBEXECDIR, not to the PATH.
pub const PROXY_HELPER: &str = "/usr/libexec/hirte-proxy";

// [impl->req~install.policy-operators~1]
// [impl->req~api.policy~1]
/// The manager's D-Bus policy (root: all; hirte-operators: read-only; others: nothing).
pub const MANAGER_POLICY: &str = "manager/dbus/org.containers.hirte.conf";
/// The agent's local API policy (root owns and calls; everybody reads properties).
pub const AGENT_POLICY: &str = "manager/dbus/org.containers.hirte.Agent.conf";
/// Creates the group on systemd systems (`systemd-sysusers`).
pub const SYSUSERS: &str = "packaging/sysusers.d/hirte.conf";
/// Group whose members may use the read-only API.
pub const OPERATORS_GROUP: &str = "hirte-operators";

// [impl->req~install.make-install~1]
/// `make install` / `make uninstall` / `make deb`.
pub const MAKEFILE: &str = "Makefile";
/// Default configuration files (installed to /etc/hirte).
pub const DEFAULT_CONFIGS: [&str; 2] =
    ["packaging/config/hirte.conf", "packaging/config/agent.conf"];

// [impl->req~install.deb~1]
/// cargo-deb metadata (`[package.metadata.deb]`) and the maintainer scripts.
pub const DEB_METADATA: &str = "manager/Cargo.toml";
pub const DEB_SCRIPTS: [&str; 3] = [
    "packaging/debian/postinst",
    "packaging/debian/prerm",
    "packaging/debian/postrm",
];

// [impl->req~install.rpm~1]
/// The rpm spec, the macros it needs where EL's are missing, the rpmlint settings, the licence
/// every package ships, and where `make rpm` puts the packages.
pub const RPM_SPEC: &str = "packaging/rpm/hirte.spec";
pub const RPM_COMPAT_MACROS: &str = "packaging/rpm/macros.hirte-compat";
pub const RPMLINT_CONFIG: &str = "packaging/rpm/rpmlint.toml";
pub const LICENSE: &str = "LICENSE";
pub const RPM_BUILD_DIR: &str = "target/rpm/build";

// [impl->req~install.msrv~1]
/// Declares the minimum Rust (`rust-version`) and the MSRV-aware resolver.
pub const WORKSPACE_MANIFEST: &str = "Cargo.toml";

// [impl->req~ops.stunnel~1]
/// The stunnel recipe of docs/stunnel.md as configuration files.
pub const STUNNEL_SERVER_CONF: &str = "packaging/stunnel/hirte-server.conf";
pub const STUNNEL_CLIENT_CONF: &str = "packaging/stunnel/hirte-client.conf";

/// Every configuration key of the daemons (common/src/config.rs), for the checks that the
/// default files and docs/operations.md document all of them.
pub const MANAGER_KEYS: [&str; 10] = [
    "ManagerPort",
    "ManagerAddress",
    "AllowedNodeNames",
    "NodeHeartbeatThreshold",
    "AgentCallTimeout",
    "AllowExec",
    "ManagerSocket",
    "LogLevel",
    "LogTarget",
    "LogIsQuiet",
];
/// Keys of the manager's per-node sections (`[node NAME]`).
pub const NODE_SECTION_KEYS: [&str; 1] = ["AllowDependenciesOn"];
pub const AGENT_KEYS: [&str; 10] = [
    "NodeName",
    "ManagerHost",
    "ManagerPort",
    "ManagerAddress",
    "HeartbeatInterval",
    "ReconnectInterval",
    "ManagerHeartbeatThreshold",
    "LogLevel",
    "LogTarget",
    "LogIsQuiet",
];

/// The checkout's root directory.
pub fn repo_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    p.canonicalize().unwrap_or(p)
}

pub fn repo_file(rel: &str) -> PathBuf {
    repo_root().join(rel)
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command with a bound; killed (exit by signal) when it takes longer.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    // Read both pipes on threads so a chatty command cannot block on a full pipe.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = std::io::Read::read_to_end(o, &mut v);
        }
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = std::io::Read::read_to_end(e, &mut v);
        }
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

static SCRATCH_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A temp directory removed on drop (also while a test panics).
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(what: &str) -> Scratch {
        let n = SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("hirte-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Scratch { path }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("HIRTE_KEEP_DIR").is_some_and(|v| v == "1") {
            eprintln!("kept {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Result of `make install` into a scratch DESTDIR.
pub struct Staged {
    pub scratch: Scratch,
    pub destdir: PathBuf,
    pub output: Output,
}

impl Staged {
    /// `<DESTDIR><abs>`
    pub fn path(&self, abs: &str) -> PathBuf {
        self.destdir.join(abs.trim_start_matches('/'))
    }
}

/// `make install DESTDIR=<scratch>/root` with the binaries the harness uses (no cargo run:
/// the integration tests already built them), generated files in the scratch dir.
pub fn make_install(extra: &[&str]) -> Staged {
    let scratch = Scratch::new("destdir");
    let destdir = scratch.path.join("root");
    let bins = hirte_tests::bin_dir().expect("bin dir");
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(repo_root())
        .arg("--no-print-directory")
        .arg("install")
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg("NO_BUILD=1")
        .arg(format!("BINSRC={}", bins.display()))
        .arg(format!(
            "GENDIR={}",
            scratch.path.join("generated").display()
        ))
        .args(extra);
    let output = run(&mut cmd, Duration::from_secs(120));
    Staged {
        scratch,
        destdir,
        output,
    }
}

/// Builds the .deb into `out` from the test build's binaries (`make generate`, then
/// `cargo deb --no-build --profile dev`: cargo-deb takes the `target/release/` assets from
/// target/debug). `None`, after a SKIP line naming `test`, where cargo-deb is not installed
/// (`cargo install cargo-deb --locked`; ci/setup does) or the binaries are elsewhere.
pub fn build_deb(test: &str, out: &Scratch) -> Option<PathBuf> {
    let have_cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_cargo_deb {
        hirte_tests::cannot_run(
            test,
            "cargo-deb is not installed (ci/setup installs it: cargo install cargo-deb --locked)",
        );
        return None;
    }
    let bins = hirte_tests::bin_dir().unwrap();
    if bins != repo_root().join("target/debug") {
        hirte_tests::cannot_run(test, "the binaries are not in target/debug");
        return None;
    }
    // install_deb.rs and system_mode.rs build the package in parallel processes: one at a
    // time, or one's `make generate` rewrites target/generated under the other's cargo deb.
    let _lock = deb_build_lock();
    let mut generate = Command::new("make");
    generate
        .arg("-C")
        .arg(repo_root())
        .args(["--no-print-directory", "generate", "NO_BUILD=1"])
        .arg(format!("BINSRC={}", bins.display()));
    let o = run(&mut generate, Duration::from_secs(60));
    assert!(o.status.success(), "make generate: {}", show(&o));
    let mut cmd = Command::new("cargo");
    cmd.current_dir(repo_root())
        .args([
            "deb",
            "-p",
            "hirte",
            "--no-build",
            "--profile",
            "dev",
            "--fast",
            "-o",
        ])
        .arg(&out.path);
    let o = run(&mut cmd, Duration::from_secs(180));
    assert!(o.status.success(), "cargo deb: {}", show(&o));
    let deb = std::fs::read_dir(&out.path)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    Some(deb)
}

/// Every file and symlink below `root`, as absolute paths inside it (`/usr/bin/hirte`).
pub fn list_tree(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                walk(base, &p, out);
            } else if let Ok(rel) = p.strip_prefix(base) {
                out.push(format!("/{}", rel.display()));
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}

/// Serialises the package builds of [`build_deb`].
fn deb_build_lock() -> Flock<File> {
    file_lock("hirte-tests-deb-build.lock")
}

/// Serialises the tests that create the `hirte-operators` group and its members (nextest runs
/// test binaries in parallel processes).
fn operators_lock() -> Flock<File> {
    file_lock("hirte-tests-operators.lock")
}

/// An exclusive lock on the file `name` in the temporary directory, shared by the test
/// binaries nextest runs in parallel processes.
fn file_lock(name: &str) -> Flock<File> {
    let path = std::env::temp_dir().join(name);
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    Flock::lock(f, FlockArg::LockExclusive).unwrap_or_else(|(_, e)| panic!("flock: {e}"))
}

fn getent(db: &str, key: &str) -> Option<Vec<String>> {
    let out = Command::new("getent").args([db, key]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(stdout(&out).trim().split(':').map(str::to_string).collect())
}

const USER_PREFIX: &str = "hirteop";

/// Removes operator users left by test processes that died without cleaning up.
fn remove_stale_users() {
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return;
    };
    for line in passwd.lines() {
        let name = line.split(':').next().unwrap_or("");
        let Some(pid) = name.strip_prefix(USER_PREFIX) else {
            continue;
        };
        let alive = pid
            .split('x')
            .next()
            .is_some_and(|p| Path::new("/proc").join(p).exists());
        if !alive {
            let _ = Command::new("userdel").arg(name).output();
        }
    }
}

/// A system user in group `hirte-operators`, removed again on drop (also while a test panics),
/// together with the group if this created it. Holds a lock so that parallel tests do not
/// delete each other's group.
pub struct Operator {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    created_group: bool,
    _lock: Flock<File>,
}

static OPERATOR_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Operator {
    pub fn create() -> Operator {
        let lock = operators_lock();
        remove_stale_users();
        let created_group = if getent("group", OPERATORS_GROUP).is_none() {
            let out = run(
                Command::new("groupadd").args(["--system", OPERATORS_GROUP]),
                Duration::from_secs(30),
            );
            assert!(out.status.success(), "groupadd: {}", show(&out));
            true
        } else {
            false
        };
        let n = OPERATOR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{USER_PREFIX}{}x{n}", std::process::id());
        // From here on, Drop cleans up whatever exists.
        let mut op = Operator {
            name: name.clone(),
            uid: 0,
            gid: 0,
            created_group,
            _lock: lock,
        };
        let out = run(
            Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--groups",
                OPERATORS_GROUP,
                &name,
            ]),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "useradd: {}", show(&out));
        let pw = getent("passwd", &name).expect("new user in passwd");
        op.uid = pw.get(2).and_then(|s| s.parse().ok()).expect("uid");
        op.gid = pw.get(3).and_then(|s| s.parse().ok()).expect("gid");
        let groups = Command::new("id")
            .args(["-nG", &name])
            .output()
            .expect("id");
        assert!(
            stdout(&groups)
                .split_whitespace()
                .any(|g| g == OPERATORS_GROUP),
            "{name} is not in {OPERATORS_GROUP}: {}",
            show(&groups)
        );
        op
    }

    /// `program args` as this user (its groups from /etc/group), environment kept.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .args(args);
        cmd
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if getent("passwd", &self.name).is_some() {
            let out = Command::new("userdel").arg(&self.name).output();
            if !out.as_ref().is_ok_and(|o| o.status.success()) {
                eprintln!("userdel {} failed: {out:?}", self.name);
            }
        }
        if self.created_group {
            let out = Command::new("groupdel").arg(OPERATORS_GROUP).output();
            if !out.as_ref().is_ok_and(|o| o.status.success()) {
                eprintln!("groupdel {OPERATORS_GROUP} failed: {out:?}");
            }
        }
    }
}

/// `program args` as `nobody`, without supplementary groups.
pub fn as_nobody(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        program,
    ])
    .args(args);
    cmd
}

/// Builds a command that runs `program args` as some user.
pub type Wrap<'a> = dyn Fn(&str, &[&str]) -> Command + 'a;

/// `busctl --address=ADDR call DEST PATH IFACE MEMBER [SIG ARGS...]` wrapped in `wrap`
/// (root when `wrap` is None).
pub fn busctl_call(
    wrap: Option<&Wrap<'_>>,
    address: &str,
    dest: &str,
    path: &str,
    iface: &str,
    member: &str,
    args: &[&str],
) -> Output {
    let addr = format!("--address={address}");
    let mut full: Vec<&str> = vec![&addr, "--timeout=20", "call", dest, path, iface, member];
    full.extend_from_slice(args);
    let mut cmd = match wrap {
        Some(w) => w("busctl", &full),
        None => {
            let mut c = Command::new("busctl");
            c.args(&full);
            c
        }
    };
    cmd.env_remove("DBUS_SESSION_BUS_ADDRESS");
    run(&mut cmd, Duration::from_secs(30))
}

/// dbus-daemon's log text for a call its policy refused; busctl says "Access denied"
/// (`org.freedesktop.DBus.Error.AccessDenied`).
pub const BUS_REFUSAL: &str = "Rejected send message";

/// Asserts that the bus itself refused `member` from `uid` (not the manager): busctl failed
/// with "Access denied" and the bus logged its policy refusal of that call.
pub fn assert_refused_by_bus(o: &Output, what: &str, bus_log: &Path, uid: u32, member: &str) {
    assert!(!o.status.success(), "{what} should be refused: {}", show(o));
    assert!(
        stderr(o).contains("Access denied"),
        "{what} should be refused with AccessDenied: {}",
        show(o)
    );
    let needle = format!("(uid={uid} ");
    let member_field = format!("member=\"{member}\"");
    let logged = |log: &str| {
        log.lines()
            .any(|l| l.contains(BUS_REFUSAL) && l.contains(&needle) && l.contains(&member_field))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(bus_log).unwrap_or_default();
        if logged(&log) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the bus did not log a policy refusal of {member} from uid {uid}; {}",
            show(o)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn assert_ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}", show(o));
    stdout(o)
}

/// Waits for `f`, polling every 50 ms.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
