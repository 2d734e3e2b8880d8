//! Where the daemons' log records go (`req~log.targets~1`): `LogTarget=journald` writes the
//! journal's native protocol to `/run/systemd/journal/socket`; without that socket the
//! records go to syslog (`/dev/log`), without both to stderr; `LogIsQuiet=yes` suppresses
//! every record.
//!
//! The real `hirte` and `hirte-agent` run with no reachable bus: they log their start and
//! then stop on the missing bus, which is enough to see where records go. Each run is in a
//! private mount namespace (`unshare -m`) whose `/run` and `/dev` are fresh tmpfs, so the
//! test decides which log sockets exist: the journal's and syslog's are datagram sockets of
//! this test (symlinked into place), or absent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use common::{run_timeout, stderr};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// Which log sockets the daemon finds.
#[derive(Clone, Copy)]
struct Sockets {
    journal: bool,
    syslog: bool,
}

/// A run's outputs: its stderr and the datagrams each log socket received.
struct Seen {
    out: Output,
    journal: Vec<String>,
    syslog: Vec<String>,
}

impl Seen {
    fn stderr(&self) -> String {
        stderr(&self.out)
    }
}

/// Mounts fresh `/run` and `/dev` (keeping `/dev/null`), links the sockets asked for, and
/// runs the daemon. `$1`: the test directory, `$2`: "journal" and/or "syslog", then the
/// command.
const SCRIPT: &str = r#"set -e
T=$1; WANT=$2; shift 2
mkdir -p "$T/olddev"
mount --bind /dev "$T/olddev"
mount -t tmpfs none /run
mount -t tmpfs none /dev
touch /dev/null
mount --bind "$T/olddev/null" /dev/null
case "$WANT" in *journal*)
  mkdir -p /run/systemd/journal
  ln -s "$T/journal.sock" /run/systemd/journal/socket ;;
esac
case "$WANT" in *syslog*) ln -s "$T/syslog.sock" /dev/log ;; esac
exec "$@"
"#;

fn test_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hirte-logtargets-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn drain(sock: &UnixDatagram) -> Vec<String> {
    sock.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

/// Runs `bin` (`hirte` or `hirte-agent`) with `conf` as its configuration, no bus, and the
/// log sockets of `sockets`.
fn run(tag: &str, bin: &str, conf: &str, sockets: Sockets) -> Seen {
    let dir = test_dir(tag);
    let (file, head) = match bin {
        "hirte" => ("hirte.conf", "[hirte]\nAllowedNodeNames=n1\n"),
        _ => ("agent.conf", "[hirte-agent]\nNodeName=n1\n"),
    };
    std::fs::write(dir.join(file), format!("{head}{conf}")).unwrap();
    let journal = UnixDatagram::bind(dir.join("journal.sock")).unwrap();
    let syslog = UnixDatagram::bind(dir.join("syslog.sock")).unwrap();
    let mut want = Vec::new();
    if sockets.journal {
        want.push("journal");
    }
    if sockets.syslog {
        want.push("syslog");
    }
    let path = hirte_tests::binary(bin).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", SCRIPT, "sh"])
        .arg(&dir)
        .arg(want.join(","))
        .arg(&path);
    if bin == "hirte-agent" {
        cmd.arg("--user");
    }
    let nobus = "unix:path=/nonexistent/hirte-logtargets-bus";
    cmd.env("HIRTE_CONFIG_DIR", &dir)
        .env("DBUS_SYSTEM_BUS_ADDRESS", nobus)
        .env("DBUS_SESSION_BUS_ADDRESS", nobus)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_BACKTRACE");
    let out = run_timeout(&mut cmd, Duration::from_secs(20));
    let seen = Seen {
        journal: drain(&journal),
        syslog: drain(&syslog),
        out,
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !seen.stderr().contains("unshare:") && !seen.stderr().contains("mount:"),
        "the test's namespace setup failed: {}",
        seen.stderr()
    );
    seen
}

fn root(name: &str) -> bool {
    hirte_tests::require_root(name)
}

/// The start record of each daemon, as its message begins.
fn start_record(bin: &str) -> String {
    format!("Starting {bin} ")
}

fn describe(s: &Seen) -> String {
    format!(
        "stderr:\n{}\njournal: {:?}\nsyslog: {:?}",
        s.stderr(),
        s.journal,
        s.syslog
    )
}

/// `LogTarget=journald`: with the journal socket, records go there in the native format
/// (`MESSAGE=`, `PRIORITY=`, `SYSLOG_IDENTIFIER=`); without it, to syslog (facility daemon);
/// without both, to stderr. Never to two places.
// [itest->req~log.targets~1]
#[test]
fn log_targets_journald_falls_back_to_syslog_then_stderr() {
    if !root("log_targets_journald_falls_back_to_syslog_then_stderr") {
        return;
    }
    for bin in ["hirte", "hirte-agent"] {
        let start = start_record(bin);
        let conf = "LogTarget=journald\n";

        let s = run(
            &format!("{bin}-j"),
            bin,
            conf,
            Sockets {
                journal: true,
                syslog: true,
            },
        );
        let rec = s
            .journal
            .iter()
            .find(|r| r.contains(&format!("MESSAGE={start}")));
        let rec = rec
            .unwrap_or_else(|| panic!("{bin}: no start record in the journal\n{}", describe(&s)));
        assert!(
            rec.contains("PRIORITY=6\n") && rec.contains(&format!("SYSLOG_IDENTIFIER={bin}\n")),
            "{bin}: journal record {rec:?}"
        );
        assert!(
            s.syslog.is_empty(),
            "{bin}: syslog written too\n{}",
            describe(&s)
        );
        assert!(
            !s.stderr().contains(&start),
            "{bin}: stderr written too\n{}",
            describe(&s)
        );

        let s = run(
            &format!("{bin}-s"),
            bin,
            conf,
            Sockets {
                journal: false,
                syslog: true,
            },
        );
        // RFC 3164 as syslog(3) writes it: <facility daemon (3) * 8 + info (6)> ... ident[pid]:
        let rec = s.syslog.iter().find(|r| r.contains(&start));
        let rec =
            rec.unwrap_or_else(|| panic!("{bin}: no start record in syslog\n{}", describe(&s)));
        assert!(
            rec.starts_with("<30>") && rec.contains(&format!("{bin}[")),
            "{bin}: syslog record {rec:?}"
        );
        assert!(
            !s.stderr().contains(&start),
            "{bin}: stderr written too\n{}",
            describe(&s)
        );

        let s = run(
            &format!("{bin}-e"),
            bin,
            conf,
            Sockets {
                journal: false,
                syslog: false,
            },
        );
        assert!(
            s.stderr()
                .lines()
                .any(|l| l.contains("INFO") && l.contains(&start)),
            "{bin}: no start record on stderr\n{}",
            describe(&s)
        );
        assert!(
            s.journal.is_empty() && s.syslog.is_empty(),
            "{}",
            describe(&s)
        );
    }
}

/// `LogIsQuiet=yes` suppresses every record, warnings and errors included, on every target;
/// what remains is the one-line fatal error on stderr, which is not a log record. The same
/// run without it logs (so the suppression is not an accident of the setup).
// [itest->req~log.targets~1]
#[test]
fn log_targets_is_quiet_suppresses_every_record() {
    if !root("log_targets_is_quiet_suppresses_every_record") {
        return;
    }
    for bin in ["hirte", "hirte-agent"] {
        let start = start_record(bin);
        let both = Sockets {
            journal: true,
            syslog: true,
        };

        let s = run(
            &format!("{bin}-loud"),
            bin,
            "LogTarget=stderr\nLogLevel=debug\n",
            both,
        );
        assert!(
            s.stderr().lines().any(|l| l.contains(&start)),
            "{bin}: the control run logged nothing\n{}",
            describe(&s)
        );
        assert!(
            s.stderr().lines().any(|l| l.contains("WARN")),
            "{bin}: the control run logged no warning\n{}",
            describe(&s)
        );

        let quiet = "LogTarget=stderr\nLogLevel=debug\nLogIsQuiet=yes\n";
        let s = run(&format!("{bin}-q"), bin, quiet, both);
        let lines: Vec<&str> = s
            .out
            .stderr
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| std::str::from_utf8(l).unwrap_or(""))
            .collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with(&format!("{bin}: ")),
            "{bin}: LogIsQuiet=yes still logged\n{}",
            describe(&s)
        );

        let quiet = "LogTarget=journald\nLogLevel=debug\nLogIsQuiet=yes\n";
        let s = run(&format!("{bin}-qj"), bin, quiet, both);
        assert!(
            s.journal.is_empty() && s.syslog.is_empty(),
            "{bin}: LogIsQuiet=yes still wrote to the journal or syslog\n{}",
            describe(&s)
        );
    }
}
