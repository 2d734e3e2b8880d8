//! Every configuration key of both daemons with a value of the wrong type, out of range, set
//! twice, plus unknown keys and malformed files: the real `hirte` and `hirte-agent` binaries
//! must refuse to start (exit status 1) with one line on stderr that names `file:line` and the
//! key. Needs no root: the daemons stop at the configuration, before any bus or socket (the
//! bus addresses point nowhere, so a configuration that passed would fail differently).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{show, stderr};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("hirte-badcfg-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(bin: &str, dir: &Path) -> Output {
    common::run_daemon_without_bus(bin, dir)
}

/// One daemon: its binary, file, section and a valid minimal head (two lines).
struct Daemon {
    bin: &'static str,
    file: &'static str,
    head: &'static str,
}

const MANAGER: Daemon = Daemon {
    bin: "hirte",
    file: "hirte.conf",
    head: "[hirte]\nAllowedNodeNames=primary,agent1\n",
};
const AGENT: Daemon = Daemon {
    bin: "hirte-agent",
    file: "agent.conf",
    head: "[hirte-agent]\nNodeName=agent1\n",
};

/// Bad values per key: (key, wrong type, out of range). `None` where the key has no range.
fn manager_cases() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        (
            "ManagerPort",
            vec![
                "twenty",
                "true",
                "[1, 2]",
                "1.5",
                "0",
                "65536",
                "-1",
                "99999999999",
            ],
        ),
        (
            "ManagerAddress",
            vec![
                "not-an-ip",
                "[\"127.0.0.1\"]",
                "300.1.1.1",
                "tcp:host=a,port=1",
            ],
        ),
        (
            "AllowedNodeNames",
            vec!["good,bad/name", "{ a = 1 }", "[1, [2]]", "ok,with space"],
        ),
        ("LogLevel", vec!["loud", "5", "[\"info\"]", "\"\""]),
        ("LogTarget", vec!["paper", "[\"stderr\"]", "7"]),
        ("LogIsQuiet", vec!["maybe", "2", "[true]"]),
        (
            "NodeHeartbeatThreshold",
            vec!["soon", "-5", "50ms", "2h", "[\"5s\"]", "5 parsecs", "1e400"],
        ),
        (
            "AgentCallTimeout",
            vec!["soon", "0", "99ms", "1h 1s", "[\"5s\"]"],
        ),
        ("AllowExec", vec!["perhaps", "3", "[\"yes\"]"]),
        ("CertificateFile", vec!["relative.pem", "[\"/a\", \"/b\"]"]),
        ("KeyFile", vec!["key.pem", "[\"/k\"]"]),
        ("TrustedCertificateFile", vec!["ca.pem", "[\"/ca\"]"]),
        ("RevocationListFile", vec!["ca.crl", "[\"/crl\"]"]),
        (
            "ManagerSocketAllowedUsers",
            vec!["a b", "bad!user", "{ a = 1 }"],
        ),
    ]
}

fn agent_cases() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        (
            "NodeName",
            vec!["a/b", "with space", "[\"a\", \"b\"]", "\"\""],
        ),
        (
            "ManagerHost",
            // A list is fine (`ManagerHost=a,b`), a bad host in it is not.
            vec!["\"\"", "has space", "a/b", "[\"h1\", \"h 2\"]", "h1,h2/x"],
        ),
        ("ManagerPreferFirst", vec!["maybe", "2", "[true]"]),
        (
            "ManagerPort",
            vec!["twenty", "false", "0", "65536", "[2020]"],
        ),
        (
            "ManagerAddress",
            vec![
                "udp:host=a,port=1",
                "tcp:host=a",
                "tcp:host=a,port=0",
                "tcp:port=1,host=",
                "[\"x\"]",
            ],
        ),
        (
            "HeartbeatInterval",
            vec!["soon", "-5", "50ms", "2h", "[\"1s\"]"],
        ),
        (
            "ReconnectInterval",
            vec!["later", "0", "1us", "61min", "[\"1s\"]"],
        ),
        (
            "ManagerHeartbeatThreshold",
            vec!["never", "99ms", "3601s", "[\"1s\"]"],
        ),
        ("LogLevel", vec!["loud", "[\"debug\"]"]),
        ("LogTarget", vec!["paper", "[\"stderr\"]"]),
        ("LogIsQuiet", vec!["maybe", "[false]"]),
        ("CertificateFile", vec!["relative.pem", "[\"/a\"]"]),
        ("KeyFile", vec!["key.pem"]),
        ("TrustedCertificateFile", vec!["ca.pem"]),
        ("RevocationListFile", vec!["ca.crl"]),
        ("ManagerName", vec!["has space", "a/b", "[\"m\"]"]),
        ("AllowExec", vec!["perhaps", "[\"no\"]"]),
    ]
}

/// Deviations collected over all cases, so one wrong message does not hide the others.
#[derive(Default)]
struct Findings {
    /// The `hirte: FILE:LINE: ...` line does not name the key.
    unnamed_key: Vec<String>,
    /// stderr is not exactly one line.
    shape: Vec<String>,
}

/// Checks one refusal: exit status 1, before any bus, a `BIN: FILE:LINE: ...` line (else it
/// panics at once); whether that line names `key` and is the only one goes to `findings`.
#[track_caller]
fn check(
    d: &Daemon,
    what: &str,
    dir: &Path,
    file: &Path,
    line: usize,
    key: &str,
    findings: &mut Findings,
) {
    let out = run(d.bin, dir);
    let err = stderr(&out);
    let at = format!("{}:{line}:", file.display());
    assert_eq!(out.status.code(), Some(1), "{what}: {}", show(&out));
    assert!(
        !err.contains("bus"),
        "{what}: got past the configuration: {}",
        show(&out)
    );
    assert!(!err.contains("panicked"), "{what}: {}", show(&out));
    let prefix = format!("{}: {at}", d.bin);
    let Some(msg) = err.lines().find(|l| l.starts_with(&prefix)) else {
        panic!("{what}: no line '{prefix} ...' on stderr: {}", show(&out));
    };
    if !msg.contains(key) {
        findings.unnamed_key.push(format!("{what}: {msg}"));
    }
    let lines = err.lines().filter(|l| !l.trim().is_empty()).count();
    if lines != 1 {
        findings
            .shape
            .push(format!("{what}: {lines} lines: {:?}", err.trim_end()));
    }
}

/// The daemon's valid head, with the line setting `key` (if any) replaced by another valid
/// setting, so that a case tests its own line and not a clash with the head.
fn head_for(d: &Daemon, key: &str) -> String {
    d.head
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{key}=")) {
                "ManagerPort=2020"
            } else {
                l
            }
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn every_key(
    d: &Daemon,
    cases: Vec<(&'static str, Vec<&'static str>)>,
    findings: &mut Findings,
) -> usize {
    let mut n = 0;
    for (key, values) in cases {
        for v in values {
            let t = TempDir::new("v");
            let f = t.write(
                d.file,
                format!("{}{key}={v}\n", head_for(d, key)).as_bytes(),
            );
            check(
                d,
                &format!("{} {key}={v}", d.bin),
                &t.0,
                &f,
                3,
                key,
                findings,
            );
            n += 1;
        }
        // Set twice in one file (both values valid on their own would not matter).
        let t = TempDir::new("dup");
        let f = t.write(
            d.file,
            format!("{}{key}=x\n# again\n{key}=y\n", head_for(d, key)).as_bytes(),
        );
        check(
            d,
            &format!("{} {key} twice", d.bin),
            &t.0,
            &f,
            5,
            key,
            findings,
        );
        n += 1;
        // The same bad value in a drop-in names the drop-in.
        let t = TempDir::new("dropin");
        t.write(d.file, d.head.as_bytes());
        let dropin = format!("{}.d/50-local.conf", d.file);
        let section = d.head.lines().next().unwrap();
        let f = t.write(&dropin, format!("{section}\n\n{key}=[[]]\n").as_bytes());
        check(
            d,
            &format!("{} {key} in a drop-in", d.bin),
            &t.0,
            &f,
            3,
            key,
            findings,
        );
        n += 1;
    }
    n
}

// [itest->req~config.errors~1]
// [itest->req~config.manager-keys~1]
// [itest->req~config.agent-keys~1]
// [itest->req~config.timespan~1]
#[test]
fn badinput_config_every_key_wrong_type_range_duplicate_refused_naming_file_line_key() {
    let mut findings = Findings::default();
    let mut n = every_key(&MANAGER, manager_cases(), &mut findings);
    n += every_key(&AGENT, agent_cases(), &mut findings);

    // Unknown keys: made up, the other daemon's, the wrong case.
    for (d, key) in [
        (&MANAGER, "Bogus"),
        (&MANAGER, "NodeName"),
        (&MANAGER, "ReconnectInterval"), // HeartbeatInterval is BlueChi's: a warning (bluechi.rs)
        (&MANAGER, "managerport"),
        (&AGENT, "Bogus"),
        (&AGENT, "AllowedNodeNames"),
        (&AGENT, "NodeHeartbeatThreshold"),
        (&AGENT, "nodename"),
    ] {
        let t = TempDir::new("unknown");
        let f = t.write(d.file, format!("{}{key}=1\n", d.head).as_bytes());
        check(
            d,
            &format!("{} unknown key {key}", d.bin),
            &t.0,
            &f,
            3,
            key,
            &mut findings,
        );
        n += 1;
    }
    // Malformed lines: named by file:line and the offending text.
    for (d, text, needle) in [
        (&MANAGER, "just some text", "just some text"),
        (&MANAGER, "Manager Port=1", "Manager Port"),
        (&MANAGER, "[hirte-agent]", "hirte-agent"),
        (&MANAGER, "[hirte", "[hirte"),
        (&MANAGER, "LogLevel=\"unterminated", "LogLevel"),
        (&MANAGER, "=5", "malformed key"),
        (&AGENT, "[hirte]", "hirte"),
        (&AGENT, "NodeName = 'x' trailing", "NodeName"),
    ] {
        let t = TempDir::new("malformed");
        let f = t.write(d.file, format!("{}{text}\n", d.head).as_bytes());
        check(
            d,
            &format!("{} line {text:?}", d.bin),
            &t.0,
            &f,
            3,
            needle,
            &mut findings,
        );
        n += 1;
    }
    // A key before any section.
    let t = TempDir::new("nosection");
    let f = t.write(MANAGER.file, b"# comment\nManagerPort=2020\n[hirte]\n");
    check(
        &MANAGER,
        "key before the section",
        &t.0,
        &f,
        2,
        "ManagerPort",
        &mut findings,
    );
    n += 1;
    // Files that are not text, or too large: refused, naming the file.
    for (what, bytes) in [
        (
            "non-UTF-8 bytes",
            b"[hirte]\nAllowedNodeNames=a\xff\xfe\n".to_vec(),
        ),
        ("a NUL byte", b"[hirte]\nAllowedNodeNames=a\0b\n".to_vec()),
        (
            "2 MiB",
            [b"[hirte]\n".to_vec(), vec![b'#'; 2 * 1024 * 1024]].concat(),
        ),
    ] {
        let t = TempDir::new("bytes");
        let f = t.write(MANAGER.file, &bytes);
        let out = run(MANAGER.bin, &t.0);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", show(&out));
        let name = f.display().to_string();
        assert!(
            stderr(&out)
                .lines()
                .any(|l| l.starts_with("hirte: ") && l.contains(&name)),
            "{what}: the file is not named: {}",
            show(&out)
        );
        n += 1;
    }
    eprintln!(
        "FIGURE {n} bad configurations refused; {} messages do not name the key, {} are not one line",
        findings.unnamed_key.len(),
        findings.shape.len()
    );
    assert!(
        findings.unnamed_key.is_empty(),
        "{} of {n} refusals do not name the key:\n{}",
        findings.unnamed_key.len(),
        findings.unnamed_key.join("\n")
    );
    assert!(
        findings.shape.is_empty(),
        "{} of {n} refusals are not exactly one line on stderr, e.g.:\n{}",
        findings.shape.len(),
        findings
            .shape
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
