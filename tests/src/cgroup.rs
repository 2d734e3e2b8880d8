//! The cluster's cgroup subtree: one directory per cluster in every relevant
//! hierarchy, one sub-cgroup per role (node systemd, agent, helpers, manager, bus).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::HarnessError;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The hierarchies a node must be placed in: hybrid (v1 `name=systemd` plus
/// `unified`), pure v2, or legacy v1 (`name=systemd` only).
pub(crate) fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    let named = root.join("systemd");
    let unified = root.join("unified");
    let mut out = Vec::new();
    if root.join("cgroup.procs").exists() {
        // Pure v2: the root itself is the hierarchy.
        out.push(root.to_path_buf());
        return out;
    }
    if named.join("cgroup.procs").exists() {
        out.push(named);
    }
    if unified.join("cgroup.procs").exists() {
        out.push(unified);
    }
    out
}

/// One cluster's cgroup directory in each hierarchy.
#[derive(Debug, Clone)]
pub(crate) struct CgroupTree {
    pub(crate) roots: Vec<PathBuf>,
}

impl CgroupTree {
    /// Plans (does not create) `<hierarchy>/<name>` for every hierarchy.
    pub(crate) fn plan(name: &str) -> Result<Self, HarnessError> {
        let roots: Vec<PathBuf> = hierarchies().into_iter().map(|h| h.join(name)).collect();
        if roots.is_empty() {
            return Err(HarnessError::MissingTool(format!(
                "a writable cgroup hierarchy under {CGROUP_ROOT} (systemd, unified or v2)"
            )));
        }
        Ok(CgroupTree { roots })
    }

    /// Creates `<root>/<sub>` in every hierarchy and returns their `cgroup.procs` files.
    pub(crate) fn create(&self, sub: &str) -> Result<Vec<PathBuf>, HarnessError> {
        let mut procs = Vec::new();
        for r in &self.roots {
            let d = r.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|e| HarnessError::io(format!("creating cgroup {}", d.display()), e))?;
            procs.push(d.join("cgroup.procs"));
        }
        Ok(procs)
    }

    /// The `cgroup.procs` files of `<root>/<sub>` (for a sub-cgroup already created).
    pub(crate) fn procs_files(&self, sub: &str) -> Vec<PathBuf> {
        self.roots
            .iter()
            .map(|r| r.join(sub).join("cgroup.procs"))
            .collect()
    }

    /// Every PID in any cgroup of the subtree, in any hierarchy.
    pub(crate) fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for r in &self.roots {
            for d in subdirs_depth_first(r) {
                if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
                    pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs everything in the subtree until it is empty (bounded).
    pub(crate) fn kill_all(&self, timeout: Duration) -> Result<(), String> {
        let me = i32::try_from(std::process::id()).unwrap_or(-1);
        for r in &self.roots {
            // cgroup v2 (also the `unified` half of hybrid) kills the whole subtree atomically,
            // which also catches processes forking while we iterate.
            let k = r.join("cgroup.kill");
            if k.exists() {
                let _ = std::fs::write(&k, "1");
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let pids: Vec<i32> = self
                .pids()
                .into_iter()
                .filter(|p| *p > 0 && *p != me)
                .collect();
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "processes still in cgroups {:?} after {timeout:?}: {pids:?}",
                    self.roots
                ));
            }
            for p in pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes the subtree depth-first, retrying while the kernel still
    /// reports it busy (exiting tasks leave cgroups a little after SIGKILL).
    pub(crate) fn remove_all(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut last_err = None;
            for r in &self.roots {
                for d in subdirs_depth_first(r) {
                    if let Err(e) = std::fs::remove_dir(&d) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            last_err = Some(format!("rmdir {}: {e}", d.display()));
                        }
                    }
                }
            }
            match last_err {
                None => return Ok(()),
                Some(e) if Instant::now() >= deadline => return Err(e),
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// `dir` and all directories below it, children before parents.
fn subdirs_depth_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    // Bounded by the real depth of the tree; cgroupfs has no symlinks to loop on.
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
        if d.is_dir() {
            out.push(d.to_path_buf());
        }
    }
    walk(dir, &mut out);
    out
}
