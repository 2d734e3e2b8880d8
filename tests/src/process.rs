//! Child processes: commands with a deadline, stopping daemons, `/proc` probes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::HarnessError;

/// How long a process gets after SIGKILL before the harness gives up reaping it.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);

static SCRATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A human-readable command line, for errors.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// An anonymous read/write file in `dir`.
///
/// Output goes to files rather than pipes: a grandchild that keeps stdout open
/// (e.g. `sh -c 'sleep 100 &'`) would block a pipe reader, never a file reader.
fn scratch_file(dir: &Path) -> Result<File, HarnessError> {
    let n = SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(".hirte-tests-out-{}-{n}", std::process::id()));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| HarnessError::io(format!("creating {}", path.display()), e))?;
    std::fs::remove_file(&path)
        .map_err(|e| HarnessError::io(format!("unlinking {}", path.display()), e))?;
    Ok(f)
}

fn read_back(mut f: File) -> Vec<u8> {
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(0)).is_ok() {
        // Partial output is still useful; an error here only loses diagnostics.
        let _ = f.read_to_end(&mut buf);
    }
    buf
}

/// An `Output` for a command the harness could not even run (exit code 127,
/// like a shell's "command not found"), so callers that only look at
/// `status`/`stderr` see the reason.
pub(crate) fn failed_output(msg: &str) -> Output {
    Output {
        status: ExitStatus::from_raw(127 << 8),
        stdout: Vec::new(),
        stderr: format!("hirte-tests: {msg}\n").into_bytes(),
    }
}

/// Runs `cmd` to completion, killing it (SIGKILL) if it outlives `timeout`.
/// stdin is /dev/null; stdout/stderr are captured through unlinked files in `scratch`.
pub(crate) fn run_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
    scratch: &Path,
) -> Result<Output, HarnessError> {
    let out = scratch_file(scratch)?;
    let err = scratch_file(scratch)?;
    let desc = describe(cmd);
    let out_w = out
        .try_clone()
        .map_err(|e| HarnessError::io("dup stdout file", e))?;
    let err_w = err
        .try_clone()
        .map_err(|e| HarnessError::io("dup stderr file", e))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    let mut child = cmd
        .spawn()
        .map_err(|e| HarnessError::io(format!("spawning `{desc}`"), e))?;
    let (status, timed_out) = match wait_timeout(&mut child, timeout) {
        Some(s) => (s, false),
        None => {
            // Kill errors mean it already exited; the wait below settles it.
            let _ = child.kill();
            let s = wait_timeout(&mut child, KILL_GRACE)
                .unwrap_or_else(|| ExitStatus::from_raw(Signal::SIGKILL as i32));
            (s, true)
        }
    };
    let stdout = read_back(out);
    let mut stderr = read_back(err);
    if timed_out {
        stderr.extend_from_slice(
            format!("\nhirte-tests: `{desc}` killed after {timeout:?}\n").as_bytes(),
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Like [`run_with_timeout`] but turns a non-zero exit into an error.
pub(crate) fn run_checked(
    cmd: &mut Command,
    timeout: Duration,
    scratch: &Path,
) -> Result<Output, HarnessError> {
    let desc = describe(cmd);
    let out = run_with_timeout(cmd, timeout, scratch)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(HarnessError::CommandFailed {
            command: desc,
            output: format_output(&out),
        })
    }
}

/// Status plus both streams, for error messages.
pub(crate) fn format_output(out: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// Polls until `child` exits or `timeout` passes; `None` means still running
/// (or not waitable).
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut step = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(step.min(deadline - now));
        // Short first steps keep fast exits fast; 20 ms caps the polling cost.
        step = (step * 2).min(Duration::from_millis(20));
    }
}

/// The PID of a child as nix wants it; `None` for values that could address a
/// process group (0 or negative) so that a bogus id can never signal many processes.
pub(crate) fn child_pid(child: &Child) -> Option<Pid> {
    i32::try_from(child.id())
        .ok()
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
}

/// Sends `sig` to every child still running, waits up to `grace` for all of
/// them, SIGKILLs the rest and reaps them. Returns one status per child
/// (`None`: could not be reaped within [`KILL_GRACE`]).
pub(crate) fn signal_and_reap(
    children: &mut [&mut Child],
    sig: Signal,
    grace: Duration,
) -> Vec<Option<ExitStatus>> {
    let mut statuses: Vec<Option<ExitStatus>> = Vec::with_capacity(children.len());
    for c in children.iter_mut() {
        let st = c.try_wait().ok().flatten();
        if st.is_none() {
            if let Some(pid) = child_pid(c) {
                // ESRCH: exited between try_wait and kill; the wait below reaps it.
                let _ = kill(pid, sig);
                if sig != Signal::SIGSTOP {
                    // A process a test froze (SIGSTOP) would otherwise sit on
                    // SIGTERM for the whole grace period.
                    let _ = kill(pid, Signal::SIGCONT);
                }
            }
        }
        statuses.push(st);
    }
    let deadline = Instant::now() + grace;
    let mut step = Duration::from_millis(1);
    loop {
        let mut pending = false;
        for (c, st) in children.iter_mut().zip(statuses.iter_mut()) {
            if st.is_none() {
                *st = c.try_wait().ok().flatten();
                pending |= st.is_none();
            }
        }
        let now = Instant::now();
        if !pending || now >= deadline {
            break;
        }
        std::thread::sleep(step.min(deadline - now));
        step = (step * 2).min(Duration::from_millis(20));
    }
    for (c, st) in children.iter_mut().zip(statuses.iter_mut()) {
        if st.is_none() {
            let _ = c.kill();
            *st = wait_timeout(c, KILL_GRACE);
        }
    }
    statuses
}

/// `(state, ppid, starttime)` from `/proc/<pid>/stat`.
pub(crate) fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = s.get(s.rfind(')')? + 1..)?;
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    // starttime is field 22 overall; state was field 3, ppid field 4.
    let start = it.nth(17)?.parse().ok()?;
    Some((state, ppid, start))
}

/// The process exists, is not a zombie and (if given) has this start time.
pub(crate) fn pid_alive(pid: i32, start: Option<u64>) -> bool {
    match proc_stat(pid) {
        Some((state, _, st)) => state != 'Z' && (start.is_none() || start == Some(st)),
        None => false,
    }
}

/// Opens a daemon log for appending and writes a header line that marks the new run.
pub(crate) fn open_log(path: &Path, header: &str) -> Result<File, HarnessError> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| HarnessError::io(format!("opening log {}", path.display()), e))?;
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    writeln!(f, "=== hirte-tests [{secs:.3}] {header} ===")
        .map_err(|e| HarnessError::io(format!("writing log {}", path.display()), e))?;
    Ok(f)
}

/// Gives a child both stdout and stderr appended to `log`.
pub(crate) fn log_to(cmd: &mut Command, log: &File) -> Result<(), HarnessError> {
    let out = log
        .try_clone()
        .map_err(|e| HarnessError::io("dup log file", e))?;
    let err = log
        .try_clone()
        .map_err(|e| HarnessError::io("dup log file", e))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    Ok(())
}

/// The last `lines` lines of a file (empty if unreadable).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = s.lines().collect();
    let skip = all.len().saturating_sub(lines);
    all.iter()
        .skip(skip)
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}
