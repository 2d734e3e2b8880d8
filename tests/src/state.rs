//! `<dir>/cluster.state`: what a cluster owns, so that a cluster can be torn
//! down by another process ([`cleanup_kept`]) or after its owner died
//! ([`cleanup_stale`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::cgroup::CgroupTree;
use crate::process::{pid_alive, proc_stat};
use crate::{net, HarnessError};

/// Name of the state file inside a cluster directory.
pub const STATE_FILE: &str = "cluster.state";
/// Prefix of every cluster directory under the temp dir.
pub const DIR_PREFIX: &str = "hirte-cluster-";
/// Prefix of every netns and cgroup name the harness creates.
pub(crate) const NAME_PREFIX: &str = "hirte-";

/// A process recorded in the state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcEntry {
    pub(crate) pid: i32,
    /// `/proc/<pid>/stat` start time, to never signal a recycled PID.
    pub(crate) start: u64,
    pub(crate) role: String,
}

/// Parsed `cluster.state`.
#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    pub(crate) id: String,
    pub(crate) owner_pid: i32,
    pub(crate) owner_start: u64,
    pub(crate) kept: bool,
    pub(crate) dir: PathBuf,
    pub(crate) netns: Vec<String>,
    pub(crate) cgroups: Vec<PathBuf>,
    pub(crate) procs: Vec<ProcEntry>,
}

impl State {
    pub(crate) fn render(&self) -> String {
        let mut s = String::from("# hirte-tests cluster state (see hirte_tests::cleanup_kept)\n");
        // Writing to a String cannot fail.
        let _ = writeln!(s, "id={}", self.id);
        let _ = writeln!(s, "owner={} {}", self.owner_pid, self.owner_start);
        let _ = writeln!(s, "kept={}", u8::from(self.kept));
        let _ = writeln!(s, "dir={}", self.dir.display());
        for n in &self.netns {
            let _ = writeln!(s, "netns={n}");
        }
        for c in &self.cgroups {
            let _ = writeln!(s, "cgroup={}", c.display());
        }
        for p in &self.procs {
            let _ = writeln!(s, "pid={} {} {}", p.pid, p.start, p.role);
        }
        s
    }

    /// Atomically replaces `<dir>/cluster.state`.
    pub(crate) fn save(&self) -> Result<(), HarnessError> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, self.render())
            .map_err(|e| HarnessError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| HarnessError::io(format!("renaming to {}", path.display()), e))
    }

    pub(crate) fn load(dir: &Path) -> Result<State, HarnessError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| HarnessError::io(format!("reading {}", path.display()), e))?;
        let bad = |reason: String| HarnessError::BadState {
            path: path.clone(),
            reason,
        };
        let mut st = State::default();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line without '=': {line}")))?;
            match k {
                "id" => st.id = v.to_string(),
                "owner" => {
                    let mut it = v.split_whitespace();
                    st.owner_pid = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    st.owner_start = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                }
                "kept" => st.kept = v == "1",
                "dir" => st.dir = PathBuf::from(v),
                "netns" => st.netns.push(v.to_string()),
                "cgroup" => st.cgroups.push(PathBuf::from(v)),
                "pid" => {
                    let mut it = v.splitn(3, ' ');
                    let pid = it.next().and_then(|x| x.parse().ok());
                    let start = it.next().and_then(|x| x.parse().ok());
                    match (pid, start) {
                        (Some(pid), Some(start)) => st.procs.push(ProcEntry {
                            pid,
                            start,
                            role: it.next().unwrap_or("").to_string(),
                        }),
                        _ => return Err(bad(format!("bad pid line: {line}"))),
                    }
                }
                _ => {}
            }
        }
        // A corrupted or foreign file must never make us delete arbitrary things.
        if st.id.is_empty() {
            return Err(bad("no id".into()));
        }
        for n in &st.netns {
            if !n.starts_with(NAME_PREFIX) || n.contains('/') {
                return Err(bad(format!("refusing netns name {n}")));
            }
        }
        for c in &st.cgroups {
            let ok = c.starts_with("/sys/fs/cgroup")
                && c.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(NAME_PREFIX));
            if !ok {
                return Err(bad(format!("refusing cgroup path {}", c.display())));
            }
        }
        Ok(st)
    }

    /// The owning test process is gone (or its PID was recycled).
    pub(crate) fn owner_dead(&self) -> bool {
        !pid_alive(self.owner_pid, Some(self.owner_start))
    }
}

/// Start time of a live process, for [`ProcEntry`].
pub(crate) fn start_time(pid: i32) -> u64 {
    proc_stat(pid).map(|(_, _, s)| s).unwrap_or(0)
}

/// Tears down everything a state file lists. Does every step even if one
/// fails and reports all failures.
fn teardown(st: &State, dir: &Path) -> Result<(), HarnessError> {
    let mut errors = Vec::new();
    // Daemons first (agents, manager, then systemd and bus), each gets SIGTERM
    // and a bounded grace; they are not our children, so poll /proc.
    let order = ["agent", "manager", "systemd", "bus"];
    for role in order {
        let procs: Vec<&ProcEntry> = st
            .procs
            .iter()
            .filter(|p| p.role.starts_with(role))
            .collect();
        terminate(&procs, Duration::from_secs(5));
    }
    let rest: Vec<&ProcEntry> = st.procs.iter().collect();
    terminate(&rest, Duration::from_millis(500));
    let cg = CgroupTree {
        roots: st.cgroups.clone(),
    };
    if let Err(e) = cg.kill_all(Duration::from_secs(3)) {
        errors.push(e);
    }
    if let Err(e) = cg.remove_all(Duration::from_secs(2)) {
        errors.push(e);
    }
    let scratch = std::env::temp_dir();
    for n in &st.netns {
        if let Err(e) = net::delete(n, &scratch) {
            errors.push(e.to_string());
        }
    }
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            errors.push(format!("removing {}: {e}", dir.display()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(HarnessError::Cleanup(errors))
    }
}

/// SIGTERM, wait up to `grace`, SIGKILL; only processes whose start time still matches.
fn terminate(procs: &[&ProcEntry], grace: Duration) {
    let live: Vec<&&ProcEntry> = procs
        .iter()
        .filter(|p| p.pid > 0 && pid_alive(p.pid, Some(p.start)))
        .collect();
    for p in &live {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && live.iter().any(|p| pid_alive(p.pid, Some(p.start))) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in &live {
        if pid_alive(p.pid, Some(p.start)) {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
    }
    // When the process that kept the cluster cleans it up itself, the daemons
    // are still its children: reap them (ECHILD for anyone else's, harmless).
    let until = Instant::now() + Duration::from_secs(2);
    for p in &live {
        while Instant::now() < until {
            match waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
                _ => break,
            }
        }
    }
}

fn is_cluster_dir(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.starts_with(DIR_PREFIX))
}

/// Stops and removes a cluster left running by [`crate::Cluster::keep`]
/// (or any cluster directory with a state file): kills its processes, its
/// cgroups, deletes its network namespaces and removes `dir`.
pub fn cleanup_kept(dir: &Path) -> Result<(), HarnessError> {
    if !is_cluster_dir(dir) {
        return Err(HarnessError::BadState {
            path: dir.to_path_buf(),
            reason: format!("not a cluster directory (name must start with {DIR_PREFIX})"),
        });
    }
    let st = State::load(dir)?;
    teardown(&st, dir)
}

/// Removes clusters whose owning process died without cleaning up (killed
/// test runner, Ctrl-C) and that were not kept on purpose. Called by
/// [`crate::Cluster::start`]; returns the directories cleaned.
pub fn cleanup_stale() -> Vec<PathBuf> {
    let mut cleaned = Vec::new();
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return cleaned;
    };
    for e in rd.flatten() {
        let dir = e.path();
        if !is_cluster_dir(&dir) {
            continue;
        }
        let Ok(st) = State::load(&dir) else { continue };
        if st.kept || !st.owner_dead() {
            continue;
        }
        match teardown(&st, &dir) {
            Ok(()) => cleaned.push(dir),
            Err(err) => eprintln!(
                "hirte-tests: cleaning stale cluster {}: {err}",
                dir.display()
            ),
        }
    }
    remove_orphans();
    cleaned
}

/// The `<pid>-<n>` id in `hirte-<pid>-<n>[-suffix]`, if the creating process is dead and
/// no cluster dir (which would hold a state file, possibly of a kept cluster) exists.
fn orphan_id(name: &str) -> Option<String> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let mut parts = rest.split('-');
    let pid: i32 = parts.next()?.parse().ok()?;
    let n: u32 = parts.next()?.parse().ok()?;
    let id = format!("{pid}-{n}");
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{id}"));
    (!pid_alive(pid, None) && !dir.exists()).then_some(id)
}

/// Network namespaces and cgroups of clusters whose directory is already
/// gone (a teardown interrupted half-way) and whose creator is dead.
fn remove_orphans() {
    let scratch = std::env::temp_dir();
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if orphan_id(&name).is_some() {
                if let Err(err) = net::delete(&name, &scratch) {
                    eprintln!("hirte-tests: removing orphan netns {name}: {err}");
                }
            }
        }
    }
    for h in crate::cgroup::hierarchies() {
        let Ok(rd) = std::fs::read_dir(&h) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if orphan_id(&name).is_some() {
                let cg = CgroupTree {
                    roots: vec![e.path()],
                };
                let res = cg
                    .kill_all(Duration::from_secs(3))
                    .and_then(|()| cg.remove_all(Duration::from_secs(2)));
                if let Err(err) = res {
                    eprintln!("hirte-tests: removing orphan cgroup {name}: {err}");
                }
            }
        }
    }
}
