//! Helpers of the hirtectl integration tests (`mod ctl_common;` in each `ctl_*.rs`): running
//! hirtectl in the foreground and background, a tiny JSON parser, and the field lists that
//! docs/hirtectl.md documents. Not a test target (a directory with mod.rs).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use dbus::arg::{AppendAll, ReadAll};
use dbus::blocking::Connection;
use hirte_tests::Cluster;

pub const BUS_NAME: &str = "org.containers.hirte";
pub const MANAGER_PATH: &str = "/org/containers/hirte";
pub const MANAGER_IFACE: &str = "org.containers.hirte.Manager";
pub const NODE_IFACE: &str = "org.containers.hirte.Node";
pub const JOB_IFACE: &str = "org.containers.hirte.Job";

/// Bound for things that should happen within a few heartbeats.
pub const SOON: Duration = Duration::from_secs(10);

/// A long-running service that can be enabled.
pub const SLEEP_UNIT: &str = "[Unit]\nDescription=Sleeps forever\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=default.target\n";
/// A oneshot whose start always fails.
pub const FAILING_UNIT: &str =
    "[Unit]\nDescription=Always fails\n[Service]\nType=oneshot\nExecStart=/bin/false\n";

pub use hirte_tests::output::{ok, show, stderr, stdout};

/// Runs hirtectl and asserts success; returns stdout.
#[track_caller]
pub fn ctl_ok(c: &Cluster, args: &[&str]) -> String {
    let o = c.hirtectl(args);
    assert!(
        o.status.success(),
        "hirtectl {args:?} failed: {}\n{}",
        show(&o),
        c.log_tails()
    );
    stdout(&o)
}

/// Asserts an operator-facing failure: the exit status `code` (any non-zero if `None`),
/// exactly one non-empty line on stderr, no panic text. Returns that line.
#[track_caller]
pub fn one_line_failure(o: &Output, code: Option<i32>, what: &str) -> String {
    assert!(
        !o.status.success(),
        "{what}: expected a failure, got {}",
        show(o)
    );
    match code {
        Some(want) => assert_eq!(o.status.code(), Some(want), "{what}: {}", show(o)),
        None => assert!(
            o.status.code().is_some_and(|c| c != 101 && c != 127),
            "{what}: not an ordinary error exit: {}",
            show(o)
        ),
    }
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: stderr must be one line: {}",
        show(o)
    );
    for bad in [
        "panicked",
        "RUST_BACKTRACE",
        "backtrace",
        "org.freedesktop.DBus.Error",
    ] {
        assert!(
            !err.contains(bad),
            "{what}: stderr has {bad:?}: {}",
            show(o)
        );
    }
    assert!(
        lines[0].starts_with("hirtectl: "),
        "{what}: error line should say who speaks: {}",
        show(o)
    );
    lines[0].to_string()
}

/// Data rows of a text table (header dropped), split on whitespace.
pub fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// `systemctl --user show -p PROP --value UNIT` on the node, trimmed.
pub fn unit_prop(c: &Cluster, node: &str, unit: &str, prop: &str) -> String {
    stdout(&c.systemctl(node, &["show", "-p", prop, "--value", unit]))
        .trim()
        .to_string()
}

/// `systemctl --user is-active UNIT` on the node.
pub fn is_active(c: &Cluster, node: &str, unit: &str) -> String {
    stdout(&c.systemctl(node, &["is-active", unit]))
        .trim()
        .to_string()
}

/// The node's persistent user unit dir (`$XDG_CONFIG_HOME/systemd/user`): units there can
/// be enabled and disabled.
pub fn config_unit_dir(c: &Cluster, node: &str) -> PathBuf {
    c.node_dir(node)
        .expect("node dir")
        .join("config/systemd/user")
}

/// Writes a unit into [`config_unit_dir`] and reloads the node's systemd.
pub fn write_config_unit(c: &Cluster, node: &str, name: &str, content: &str) {
    let dir = config_unit_dir(c, node);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), content).unwrap();
    ok(&c.systemctl(node, &["daemon-reload"]), "daemon-reload");
}

/// Waits until `f` holds, polling; panics with the daemon logs otherwise.
#[track_caller]
pub fn eventually(c: &Cluster, what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    if c.wait_for(what, timeout, f).is_err() {
        panic!("timed out waiting for {what}\n{}", c.log_tails());
    }
}

// ----- D-Bus -----------------------------------------------------------------------------

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

/// Object path of a node, escaped as sd-bus does.
pub fn node_path(name: &str) -> String {
    format!(
        "/org/containers/hirte/node/{}",
        hirte_common::names::escape_path_element(name)
    )
}

// ----- hirtectl in the background ---------------------------------------------------------

/// hirtectl running in the background (monitor, status -w, metrics listen), its stdout read
/// line by line as it comes.
pub struct Bg {
    child: Child,
    lines: Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
    err: Option<std::thread::JoinHandle<String>>,
}

impl Bg {
    /// Starts `hirtectl args` against the cluster's manager bus.
    pub fn spawn(c: &Cluster, args: &[&str]) -> Bg {
        Bg::spawn_env(c, args, &[])
    }

    pub fn spawn_env(c: &Cluster, args: &[&str], env: &[(&str, &str)]) -> Bg {
        let mut cmd = Command::new(c.bin_dir().join("hirtectl"));
        cmd.args(args)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning hirtectl");
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Bg {
            child,
            lines,
            seen: Vec::new(),
            err: Some(err),
        }
    }

    /// The first new line that `pred` accepts within `timeout` (earlier ones are kept in `seen`).
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return Some(l);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None
                }
            }
        }
    }

    /// Like [`Bg::wait_line`], panicking with what was seen and the logs on timeout.
    #[track_caller]
    pub fn expect_line(&mut self, c: &Cluster, what: &str, pred: impl Fn(&str) -> bool) -> String {
        match self.wait_line(SOON, pred) {
            Some(l) => l,
            None => panic!(
                "no line {what} within {SOON:?}; seen: {:#?}\n{}",
                self.seen,
                c.log_tails()
            ),
        }
    }

    /// Calls `poke` (something that causes an event) until a line that `pred` accepts comes:
    /// the way to know that a background listener is subscribed before the test goes on.
    #[track_caller]
    pub fn poke_until(
        &mut self,
        c: &Cluster,
        what: &str,
        mut poke: impl FnMut(),
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + SOON;
        loop {
            poke();
            if let Some(l) = self.wait_line(Duration::from_millis(700), &pred) {
                return l;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no line {what} within {SOON:?}; seen: {:#?}\n{}",
                    self.seen,
                    c.log_tails()
                );
            }
        }
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signalling hirtectl");
    }

    /// Waits (bounded) for the process to exit; returns its status code, every stdout line
    /// (those already seen first) and stderr.
    pub fn finish(mut self, timeout: Duration) -> (Option<i32>, Vec<String>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let st = self.child.wait().unwrap();
                panic!(
                    "hirtectl did not exit within {timeout:?} (killed: {st:?}); seen {:#?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF, which comes right after the exit.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        let err = self
            .err
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status.code(), std::mem::take(&mut self.seen), err)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ----- JSON ------------------------------------------------------------------------------

/// A parsed JSON value (numbers kept as their text).
#[derive(Debug, Clone, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    pub fn get(&self, key: &str) -> Option<&J> {
        match self {
            J::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string field `key` (panics if missing or not a string).
    #[track_caller]
    pub fn s(&self, key: &str) -> &str {
        match self.get(key) {
            Some(J::Str(s)) => s,
            other => panic!("field {key} is not a string: {other:?} in {self:?}"),
        }
    }

    /// The unsigned integer field `key`.
    #[track_caller]
    pub fn u(&self, key: &str) -> u64 {
        match self.get(key) {
            Some(J::Num(n)) => n.parse().unwrap_or_else(|_| panic!("{key}={n} not a u64")),
            other => panic!("field {key} is not a number: {other:?}"),
        }
    }

    #[track_caller]
    pub fn arr(&self) -> &[J] {
        match self {
            J::Arr(items) => items,
            other => panic!("not an array: {other:?}"),
        }
    }

    pub fn keys(&self) -> BTreeSet<String> {
        match self {
            J::Obj(fields) => fields.iter().map(|(k, _)| k.clone()).collect(),
            _ => BTreeSet::new(),
        }
    }
}

/// Parses one JSON document (RFC 8259); trailing garbage is an error.
pub fn parse_json(text: &str) -> Result<J, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut p = Parser { s: &chars, i: 0 };
    let v = p.value()?;
    p.ws();
    if p.i != chars.len() {
        return Err(format!("trailing characters at {}", p.i));
    }
    Ok(v)
}

/// [`parse_json`], panicking with the text on error.
#[track_caller]
pub fn json(text: &str) -> J {
    parse_json(text.trim_end_matches('\n'))
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {text:?}"))
}

struct Parser<'a> {
    s: &'a [char],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\n' | '\r')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: char) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {c:?} at {}", self.i))
        }
    }
    fn lit(&mut self, word: &str, v: J) -> Result<J, String> {
        for c in word.chars() {
            self.eat(c)?;
        }
        Ok(v)
    }
    fn value(&mut self) -> Result<J, String> {
        self.ws();
        match self.peek() {
            Some('{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.peek() == Some('}') {
                    self.i += 1;
                    return Ok(J::Obj(fields));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.ws();
                    self.eat(':')?;
                    let v = self.value()?;
                    fields.push((k, v));
                    self.ws();
                    match self.peek() {
                        Some(',') => self.i += 1,
                        Some('}') => {
                            self.i += 1;
                            return Ok(J::Obj(fields));
                        }
                        _ => return Err(format!("expected , or }} at {}", self.i)),
                    }
                }
            }
            Some('[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(']') {
                    self.i += 1;
                    return Ok(J::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.peek() {
                        Some(',') => self.i += 1,
                        Some(']') => {
                            self.i += 1;
                            return Ok(J::Arr(items));
                        }
                        _ => return Err(format!("expected , or ] at {}", self.i)),
                    }
                }
            }
            Some('"') => Ok(J::Str(self.string()?)),
            Some('t') => self.lit("true", J::Bool(true)),
            Some('f') => self.lit("false", J::Bool(false)),
            Some('n') => self.lit("null", J::Null),
            Some(c) if c == '-' || c.is_ascii_digit() => {
                let start = self.i;
                while matches!(self.peek(), Some(c) if c.is_ascii_digit() || "+-.eE".contains(c)) {
                    self.i += 1;
                }
                Ok(J::Num(self.s[start..self.i].iter().collect()))
            }
            other => Err(format!("unexpected {other:?} at {}", self.i)),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        self.eat('"')?;
        let mut out = String::new();
        loop {
            let c = self.peek().ok_or("unterminated string")?;
            self.i += 1;
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let e = self.peek().ok_or("bad escape")?;
                    self.i += 1;
                    match e {
                        '"' => out.push('"'),
                        '\\' => out.push('\\'),
                        '/' => out.push('/'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        'u' => {
                            let hex: String = self
                                .s
                                .get(self.i..self.i + 4)
                                .ok_or("bad \\u")?
                                .iter()
                                .collect();
                            self.i += 4;
                            let n = u32::from_str_radix(&hex, 16).map_err(|e| e.to_string())?;
                            out.push(char::from_u32(n).ok_or("surrogate in \\u")?);
                        }
                        _ => return Err(format!("bad escape \\{e}")),
                    }
                }
                c if (c as u32) < 0x20 => return Err("raw control character in string".into()),
                c => out.push(c),
            }
        }
    }
}

// ----- docs/hirtectl.md ------------------------------------------------------------------

pub fn docs_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/hirtectl.md")
}

/// The field names documented for the JSON shape `shape`: the first column (in backticks) of
/// the table under the heading `### JSON: <shape>` in docs/hirtectl.md.
#[track_caller]
pub fn documented_fields(shape: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(docs_path()).expect("docs/hirtectl.md");
    let heading = format!("### JSON: {shape}");
    let start = text
        .lines()
        .position(|l| l.trim() == heading)
        .unwrap_or_else(|| panic!("docs/hirtectl.md has no heading {heading:?}"));
    let mut fields = BTreeSet::new();
    for line in text.lines().skip(start + 1) {
        if line.starts_with("#") {
            break;
        }
        let Some(cell) = line.trim().strip_prefix('|') else {
            continue;
        };
        let first = cell.split('|').next().unwrap_or("").trim();
        if let Some(name) = first.strip_prefix('`').and_then(|f| f.strip_suffix('`')) {
            fields.insert(name.to_string());
        }
    }
    assert!(!fields.is_empty(), "no fields documented under {heading:?}");
    fields
}

/// Asserts that every object of `items` has exactly the documented fields of `shape`.
#[track_caller]
pub fn assert_documented(shape: &str, items: &[J]) {
    let want = documented_fields(shape);
    assert!(!items.is_empty(), "{shape}: no items to check");
    for it in items {
        assert_eq!(
            it.keys(),
            want,
            "{shape}: fields differ from docs/hirtectl.md in {it:?}"
        );
    }
}

/// Runs hirtectl with extra environment (e.g. DBUS_SESSION_BUS_ADDRESS), bounded by 30 s;
/// returns (exit code, stdout, stderr).
pub fn run_env(c: &Cluster, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let bg = Bg::spawn_env(c, args, env);
    let (code, lines, err) = bg.finish(Duration::from_secs(30));
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    (code, out, err)
}
