//! Timing a command from `spawn` to its exit, without the polling steps of the harness'
//! `run_with_timeout` (which would round a 5 ms process up to its next poll).
//!
//! The wait is `waitid(WEXITED | WNOWAIT)`, so the child stays unreaped (its PID cannot be
//! recycled) until the watchdog can no longer kill it: the bound never signals a stranger.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use crate::bench::error::{BenchError, Result};

/// Runs `cmd` with stdin, stdout and stderr on /dev/null; returns its wall time (spawn to
/// exit) and status. Killed (SIGKILL) after `timeout`.
pub fn timed(cmd: &mut Command, timeout: Duration) -> Result<(Duration, ExitStatus)> {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    timed_raw(cmd, timeout)
}

fn timed_raw(cmd: &mut Command, timeout: Duration) -> Result<(Duration, ExitStatus)> {
    cmd.stdin(Stdio::null());
    let reaping = Arc::new(Mutex::new(false));
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let t0 = Instant::now();
        let mut child: Child = cmd
            .spawn()
            .map_err(|e| BenchError::io(format!("spawning {:?}", cmd.get_program()), e))?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
        let guard = reaping.clone();
        s.spawn(move || {
            if rx.recv_timeout(timeout).is_err() {
                let reaped = guard.lock().unwrap_or_else(PoisonError::into_inner);
                if !*reaped && pid.as_raw() > 0 {
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
        });
        let waited = loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        };
        let elapsed = t0.elapsed();
        *reaping.lock().unwrap_or_else(PoisonError::into_inner) = true;
        let _ = tx.send(());
        let status = child
            .wait()
            .map_err(|e| BenchError::io("waiting for a child", e))?;
        waited?;
        if elapsed >= timeout {
            return Err(BenchError::failed(format!(
                "{:?} killed after {timeout:?}",
                cmd.get_program()
            )));
        }
        Ok((elapsed, status))
    })
}

/// An unlinked scratch file for a child's output.
fn scratch() -> Result<std::fs::File> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(".hirte-bench-{}-{n}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| BenchError::io(format!("creating {}", path.display()), e))?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

fn read_back(mut f: std::fs::File) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(0)).is_ok() {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs `cmd` (bounded by `timeout`) and returns its stdout; an error with its stderr if it
/// failed.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let out = scratch()?;
    let err = scratch()?;
    let dup = |f: &std::fs::File| f.try_clone().map_err(|e| BenchError::io("dup", e));
    cmd.stdout(Stdio::from(dup(&out)?))
        .stderr(Stdio::from(dup(&err)?));
    let (_, status) = timed_raw(cmd, timeout)?;
    if !status.success() {
        return Err(BenchError::failed(format!(
            "{:?} {:?} failed ({status}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            read_back(err).trim()
        )));
    }
    Ok(read_back(out))
}
