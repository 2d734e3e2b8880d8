//! `Exec`: runs a command as a transient oneshot unit, so systemd supervises it like any other
//! service (cgroup, timeout, kill), and returns its exit status with bounded output.

use super::jobs::JobKind;
use super::{keep_call, Core};
use crate::systemd::{self, bad_args, CallError, Systemd};
use dbus::arg::{RefArg, Variant};
use dbus::Message;
use hirte_common::bounds::EXEC_MAX_OUTPUT;
use hirte_common::log_info;
use hirte_common::protocol::error;
use hirte_common::protocol::error_reply;
use hirte_common::timespan::format_timespan;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Commands running at once on one agent; more are refused with `Busy`.
pub const MAX_AGENT_EXECS: usize = 16;
/// Extra time the agent grants systemd's own timeout before it stops the unit itself.
pub const EXEC_GRACE: Duration = Duration::from_secs(5);

pub struct PendingExec {
    pub call: Message,
    pub unit: String,
    pub out: PathBuf,
    pub err: PathBuf,
    pub deadline: Instant,
    pub timeout: Duration,
}

/// Where output files go: private to root (or the user, for --user).
pub fn exec_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run"));
    base.join("hirte-agent")
}

pub fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Why a one-string command cannot be split into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WordsError {
    UnclosedQuote(char),
    TrailingBackslash,
    Empty,
}

impl std::fmt::Display for WordsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WordsError::UnclosedQuote(q) => write!(f, "command has an unclosed {q} quote"),
            WordsError::TrailingBackslash => f.write_str("command ends in a backslash"),
            WordsError::Empty => f.write_str("command is empty"),
        }
    }
}

/// Splits one command string into words as systemd splits `ExecStart=`: blanks separate
/// words, `'...'` and `"..."` group, a backslash takes the next character literally (not
/// inside single quotes). Nothing else is special: no variables, globs, pipes or `;`.
// [impl->req~agent.exec-words~1]
pub fn split_words(line: &str) -> Result<Vec<String>, WordsError> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => word.get_or_insert_with(String::new).push(c),
            (_, '\\') => {
                let next = chars.next().ok_or(WordsError::TrailingBackslash)?;
                word.get_or_insert_with(String::new).push(next);
            }
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(q) = quote {
        return Err(WordsError::UnclosedQuote(q));
    }
    words.extend(word);
    if words.is_empty() {
        return Err(WordsError::Empty);
    }
    Ok(words)
}

/// The words of the command: one argument is split into words ([`split_words`]), several
/// are taken as they are. No shell ever interprets them; who wants one writes `sh -c '...'`.
pub fn command_words(argv: &[String]) -> Result<Vec<String>, WordsError> {
    match argv {
        [one] => split_words(one),
        _ => Ok(argv.to_vec()),
    }
}

/// The argv systemd runs: the words, the program looked up in PATH (systemd wants an
/// absolute path over D-Bus), by a shell that only `exec`s its positional parameters.
pub fn command_line(words: &[String]) -> Vec<String> {
    let mut v = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        "exec \"$@\"".to_string(),
        "hirte-exec".to_string(),
    ];
    v.extend(words.iter().cloned());
    v
}

/// The program's name alone: arguments may hold secrets, and the unit's description is
/// readable by every user of the node, as is the info log.
// [impl->req~agent.exec-private~1]
pub fn program_name(words: &[String]) -> &str {
    words.first().map(String::as_str).unwrap_or_default()
}

/// Unit properties as systemd's `StartTransientUnit` takes them.
pub type Props = Vec<(String, Variant<Box<dyn RefArg>>)>;

fn prop<T: RefArg + 'static>(name: &str, v: T) -> (String, Variant<Box<dyn RefArg>>) {
    (name.to_string(), Variant(Box::new(v) as Box<dyn RefArg>))
}

/// systemd expands `$VAR` and `${VAR}` in ExecStart arguments, even ones set over D-Bus;
/// doubling `$` passes the caller's arguments through unchanged.
pub fn escape_for_exec_start(arg: &str) -> String {
    arg.replace('$', "$$")
}

/// Properties of the transient unit.
pub fn unit_properties(words: &[String], out: &Path, err: &Path, timeout: Duration) -> Props {
    let line: Vec<String> = command_line(words)
        .iter()
        .map(|a| escape_for_exec_start(a))
        .collect();
    let exec_start = vec![("/bin/sh".to_string(), line.clone(), false)];
    vec![
        prop(
            "Description",
            format!("hirte exec: {}", program_name(words)),
        ),
        prop("Type", "oneshot".to_string()),
        prop("ExecStart", exec_start),
        prop("StandardOutputFileToTruncate", out.display().to_string()),
        prop("StandardErrorFileToTruncate", err.display().to_string()),
        prop(
            "TimeoutStartUSec",
            u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX),
        ),
    ]
}

/// Reads at most `EXEC_MAX_OUTPUT` bytes of a file, then removes it.
pub fn take_output(path: &Path) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let limit = u64::try_from(EXEC_MAX_OUTPUT).unwrap_or(u64::MAX);
        let _ = f.take(limit).read_to_end(&mut buf);
    }
    let _ = std::fs::remove_file(path);
    buf
}

/// Exit status from systemd's `ExecMainCode`/`ExecMainStatus`: the code, or 128+signal.
pub fn exit_status(code: i32, status: i32) -> i32 {
    match code {
        1 => status,
        2 | 3 => 128 + status,
        _ => 255,
    }
}

impl<S: Systemd> Core<S> {
    /// `Exec(argv, timeout_us)`: answered when the command ends.
    // [impl->req~agent.exec~2]
    pub(crate) fn start_exec(&mut self, msg: &Message) -> Result<(), CallError> {
        let (argv, timeout_us) = msg.read2::<Vec<String>, u64>().map_err(bad_args)?;
        if argv.is_empty() {
            return Err(bad_args("Exec needs a command"));
        }
        let words = command_words(&argv).map_err(bad_args)?;
        if self.jobs.exec_count() >= MAX_AGENT_EXECS {
            return Err(CallError::Busy(format!(
                "{MAX_AGENT_EXECS} commands already running on node '{}'",
                self.node
            )));
        }
        self.jobs.check_room(&self.node)?;
        let dir = self.exec_dir.clone();
        prepare_dir(&dir)
            .map_err(|e| CallError::ActivationFailed(format!("{}: {e}", dir.display())))?;
        self.exec_seq += 1;
        let unit = format!(
            "hirte-exec-{}-{}.service",
            std::process::id(),
            self.exec_seq
        );
        let out = dir.join(format!("{unit}.out"));
        let err = dir.join(format!("{unit}.err"));
        let timeout = Duration::from_micros(timeout_us.max(1));
        let props = unit_properties(&words, &out, &err, timeout);
        let aux: Vec<(String, Props)> = Vec::new();
        let call = systemd::manager_call("StartTransientUnit")?
            .append3(unit.as_str(), "fail", props)
            .append1(aux);
        let path = self.sd.job_call(call)?;
        let call = keep_call(msg)?;
        log_info!(
            "Exec of '{}' ({} arguments) as {unit}",
            program_name(&words),
            words.len().saturating_sub(1)
        );
        let pending = PendingExec {
            call,
            unit: unit.clone(),
            out,
            err,
            deadline: Instant::now() + timeout + EXEC_GRACE,
            timeout,
        };
        self.record_job(path, &unit, JobKind::Exec(pending));
        Ok(())
    }

    /// The service's `Result` (e.g. `timeout`) and its main process' exit code and status.
    fn service_status(&self, unit: &str) -> Option<(String, i32, i32)> {
        let path = self.sd.unit_path(unit).ok()?;
        let get = |p: &str| self.sd.property::<i32>(&path, systemd::SERVICE_IFACE, p);
        let result = self
            .sd
            .property::<String>(&path, systemd::SERVICE_IFACE, "Result")?;
        Some((result, get("ExecMainCode")?, get("ExecMainStatus")?))
    }

    pub(crate) fn finish_exec(&mut self, p: PendingExec, result: &str) {
        let status = match result {
            "done" | "timeout" => None,
            _ => self.service_status(&p.unit),
        };
        let timed_out =
            result == "timeout" || status.as_ref().is_some_and(|(r, _, _)| r == "timeout");
        let reply = if timed_out {
            let text = format!(
                "command did not finish within {}",
                format_timespan(p.timeout)
            );
            error_reply(&p.call, error::TIMEOUT, &text)
        } else {
            let status = match (result, status) {
                ("done", _) => 0,
                (_, Some((_, code, st))) => exit_status(code, st),
                (_, None) => 255,
            };
            let out = take_output(&p.out);
            let err = take_output(&p.err);
            Some(p.call.method_return().append3(status, out, err))
        };
        // A failed transient unit stays loaded until reset; let systemd forget it.
        self.sd.call_ignoring(
            systemd::manager_call("ResetFailedUnit").map(|c| c.append1(p.unit.as_str())),
        );
        let _ = std::fs::remove_file(&p.out);
        let _ = std::fs::remove_file(&p.err);
        if let Some(r) = reply {
            self.send(r);
        }
    }

    /// Backstop for systemd's own timeout: stop the unit and answer `Timeout`.
    pub(crate) fn expire_execs(&mut self, now: Instant) {
        for p in self.jobs.take_expired_execs(now) {
            let unit = p.unit.as_str();
            self.sd.call_ignoring(
                systemd::manager_call("StopUnit").map(|c| c.append2(unit, "replace")),
            );
            // The command outlived its timeout and the grace (e.g. it ignores SIGTERM):
            // it must not outlive its slot in MAX_AGENT_EXECS either.
            let sigkill = nix::sys::signal::Signal::SIGKILL as i32;
            self.sd.call_ignoring(
                systemd::manager_call("KillUnit").map(|c| c.append3(unit, "all", sigkill)),
            );
            self.finish_exec(p, "timeout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{error_name, job_removed, member, Harness};

    // [utest->req~agent.exec~2]
    // [utest->req~agent.exec-words~1]
    #[test]
    fn command_lines() {
        let w = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        // The guide's form: one string, split into words, no shell.
        assert_eq!(
            command_words(&w(&["pg_isready -U postgres"])),
            Ok(w(&["pg_isready", "-U", "postgres"]))
        );
        assert_eq!(
            command_line(&w(&["pg_isready", "-U", "postgres"])),
            w(&[
                "/bin/sh",
                "-c",
                "exec \"$@\"",
                "hirte-exec",
                "pg_isready",
                "-U",
                "postgres"
            ])
        );
        // Quotes group and backslashes escape as in ExecStart=; shell syntax is a word.
        assert_eq!(
            split_words(r#"  echo 'a  b' "c \"d\"" e\ f ; $HOME|x '' "#),
            Ok(w(&["echo", "a  b", r#"c "d""#, "e f", ";", "$HOME|x", ""]))
        );
        assert_eq!(split_words("echo 'x"), Err(WordsError::UnclosedQuote('\'')));
        assert_eq!(split_words("echo \\"), Err(WordsError::TrailingBackslash));
        assert_eq!(split_words("  "), Err(WordsError::Empty));
        // Several arguments pass unchanged.
        assert_eq!(command_words(&w(&["echo", "a b"])), Ok(w(&["echo", "a b"])));
        assert_eq!(exit_status(1, 3), 3);
        assert_eq!(escape_for_exec_start("${HOME} $$ $1"), "$${HOME} $$$$ $$1");
        assert_eq!(exit_status(2, 9), 137);
    }

    // [utest->req~agent.exec-private~1]
    #[test]
    fn arguments_stay_out_of_the_unit_description() {
        let mut h = Harness::new();
        exec(&mut h, &["mysql --password=hunter2 -e 'select 1'"]);
        let calls = h.sd().calls.borrow();
        let call = calls.last().unwrap();
        let (_, _, props) = call
            .read3::<String, String, Vec<(String, Variant<Box<dyn RefArg>>)>>()
            .unwrap();
        let desc = props
            .iter()
            .find(|(k, _)| k == "Description")
            .and_then(|(_, v)| v.0.as_str().map(str::to_string))
            .unwrap();
        assert_eq!(desc, "hirte exec: mysql");
        let exec_start = format!(
            "{:?}",
            props.iter().find(|(k, _)| k == "ExecStart").unwrap().1
        );
        assert!(exec_start.contains("--password=hunter2"), "{exec_start}");
        assert!(exec_start.contains("select 1"), "{exec_start}");
    }

    #[test]
    fn a_command_that_cannot_be_split_is_refused() {
        let mut h = Harness::new();
        let out = exec(&mut h, &["echo 'unclosed"]);
        assert_eq!(
            error_name(&out[0]).as_deref(),
            Some("org.containers.hirte.Error.InvalidArgs")
        );
        assert!(h.sd().calls.borrow().is_empty(), "systemd not called");
    }

    #[test]
    fn output_is_bounded() {
        let p = std::env::temp_dir().join(format!("hirte-exec-test-{}", std::process::id()));
        std::fs::write(&p, vec![b'x'; EXEC_MAX_OUTPUT + 100]).unwrap();
        assert_eq!(take_output(&p).len(), EXEC_MAX_OUTPUT);
        assert!(!p.exists());
    }

    fn exec(h: &mut Harness, argv: &[&str]) -> Vec<Message> {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        let m = h.manager_call("Exec").append2(argv, 1_000_000u64);
        h.deliver(m);
        h.to_manager()
    }

    // [utest->req~agent.exec~2]
    #[test]
    fn a_command_runs_as_a_transient_unit_and_answers_when_it_ends() {
        let mut h = Harness::new();
        assert!(exec(&mut h, &["true"]).is_empty(), "answered later");
        let calls = h.sd().calls.borrow();
        let call = calls.last().unwrap();
        assert_eq!(member(call), "StartTransientUnit");
        let (unit, mode) = call.read2::<String, &str>().unwrap();
        assert!(unit.starts_with("hirte-exec-") && mode == "fail");
        drop(calls);
        let job = h.sd().last_job_path();
        h.core.on_bus_message(job_removed(&job, &unit, "done"));
        let out = h.to_manager();
        assert_eq!(out.len(), 1);
        let (status, _, _) = out[0].read3::<i32, Vec<u8>, Vec<u8>>().unwrap();
        assert_eq!(status, 0);
        assert_eq!(h.sd().members().last().unwrap(), "ResetFailedUnit");
    }

    #[test]
    fn a_failed_command_reports_its_exit_status() {
        let mut h = Harness::new();
        exec(&mut h, &["false"]);
        h.sd().property("Result", "exit-code".to_string());
        h.sd().property("ExecMainCode", 1i32);
        h.sd().property("ExecMainStatus", 3i32);
        let job = h.sd().last_job_path();
        h.core.on_bus_message(job_removed(&job, "u", "failed"));
        let out = h.to_manager();
        assert_eq!(out[0].read3::<i32, Vec<u8>, Vec<u8>>().unwrap().0, 3);
        // systemd's own timeout is a Timeout error, not an exit status.
        exec(&mut h, &["sleep", "9"]);
        h.sd().property("Result", "timeout".to_string());
        let job = h.sd().last_job_path();
        h.core.on_bus_message(job_removed(&job, "u", "failed"));
        let out = h.to_manager();
        assert_eq!(error_name(&out[0]).as_deref(), Some(error::TIMEOUT));
    }

    #[test]
    fn commands_are_bounded_and_need_a_command() {
        let mut h = Harness::new();
        let r = exec(&mut h, &[]);
        assert_eq!(error_name(&r[0]).as_deref(), Some(error::INVALID_ARGS));
        for _ in 0..MAX_AGENT_EXECS {
            assert!(exec(&mut h, &["sleep", "1"]).is_empty());
        }
        let r = exec(&mut h, &["sleep", "1"]);
        assert_eq!(error_name(&r[0]).as_deref(), Some(error::BUSY));
    }

    #[test]
    fn a_command_past_its_deadline_is_killed_and_answered() {
        let mut h = Harness::new();
        exec(&mut h, &["sleep", "100"]);
        h.core.expire_execs(Instant::now());
        assert!(h.to_manager().is_empty(), "still within timeout and grace");
        h.core
            .expire_execs(Instant::now() + Duration::from_secs(1) + EXEC_GRACE);
        let out = h.to_manager();
        assert_eq!(error_name(&out[0]).as_deref(), Some(error::TIMEOUT));
        assert_eq!(
            out[0].read1::<&str>().unwrap(),
            "command did not finish within 1s"
        );
        let members = h.sd().members();
        assert_eq!(
            members[members.len() - 3..],
            ["StopUnit", "KillUnit", "ResetFailedUnit"]
        );
        // The slot is free again.
        h.core
            .expire_execs(Instant::now() + Duration::from_secs(100));
        assert!(h.to_manager().is_empty());
    }
}
