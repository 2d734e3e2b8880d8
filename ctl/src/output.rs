//! Plain-text tables, shaped so that the guide's `awk`/`grep` scripts work on them, and the
//! choice between them and JSON.

use crate::json::{Json, ToLine};
use std::io::{ErrorKind, Write};
use std::time::{Duration, SystemTime};

/// `-o text|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Exit status when stdout's reader went away: what a SIGPIPE death gives (128+13).
const BROKEN_PIPE_STATUS: i32 = 141;

/// Writes bytes to `w`, ending hirtectl when that fails. A reader that went away
/// (`hirtectl monitor | head -3`) ends it quietly, as SIGPIPE ends C tools; `print!` would
/// panic instead.
fn write_or_exit(w: &mut dyn Write, bytes: &[u8], what: &str) {
    if let Err(e) = w.write_all(bytes).and_then(|()| w.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_STATUS);
        }
        let _ = writeln!(std::io::stderr(), "hirtectl: cannot write to {what}: {e}");
        std::process::exit(1);
    }
}

/// Writes to stdout as is.
pub fn out_bytes(bytes: &[u8]) {
    write_or_exit(&mut std::io::stdout().lock(), bytes, "stdout");
}

/// Writes text to stdout as is.
pub fn out(text: &str) {
    out_bytes(text.as_bytes());
}

/// Writes one line to stdout.
pub fn line(text: &str) {
    let mut s = String::with_capacity(text.len() + 1);
    s.push_str(text);
    s.push('\n');
    out(&s);
}

/// Writes bytes to stderr (a command's own error output, `exec`).
pub fn err_bytes(bytes: &[u8]) {
    write_or_exit(&mut std::io::stderr().lock(), bytes, "stderr");
}

/// One line on stderr; a closed stderr is not worth dying for.
pub fn err_line(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Prints a JSON document on one line.
pub fn print_json(v: &Json) {
    line(&v.to_line());
}

/// Left-aligned columns separated by two spaces; the last column is not padded, so the
/// guide's scripts (`awk '{print $1}'`, `split(None, 3)`, `grep failed`) read it.
// [impl->req~guide.scripts~1]
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cols {
                l.push_str(cell);
            } else {
                let w = widths.get(i).copied().unwrap_or(0);
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `now`, `2s ago`, `5min ago`, `3h ago`, `2d ago`, or `never`: one or two words, so
/// `awk '{print $3, $4}'` prints all of it.
// [impl->req~ctl.list-nodes~1]
pub fn last_seen(realtime_us: u64, now: SystemTime) -> String {
    if realtime_us == 0 {
        return "never".to_string();
    }
    let seen = SystemTime::UNIX_EPOCH + Duration::from_micros(realtime_us);
    let age = now.duration_since(seen).unwrap_or_default().as_secs();
    match age {
        0 => "now".to_string(),
        1..=59 => format!("{age}s ago"),
        60..=3599 => format!("{}min ago", age / 60),
        3600..=86_399 => format!("{}h ago", age / 3600),
        _ => format!("{}d ago", age / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~ctl.list-nodes~1]
    #[test]
    fn last_seen_is_awk_friendly() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let us = |s: u64| s * 1_000_000;
        assert_eq!(last_seen(us(1_000_000), now), "now");
        assert_eq!(last_seen(us(999_998), now), "2s ago");
        assert_eq!(last_seen(us(1_000_000 - 300), now), "5min ago");
        assert_eq!(last_seen(us(1_000_000 - 7200), now), "2h ago");
        assert_eq!(last_seen(0, now), "never");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["NODE", "STATE", "LAST SEEN"],
            &[
                vec!["primary".into(), "online".into(), "now".into()],
                vec!["agent".into(), "online".into(), "2s ago".into()],
            ],
        );
        assert_eq!(
            t,
            "NODE     STATE   LAST SEEN\nprimary  online  now\nagent    online  2s ago\n"
        );
        for line in t.lines().skip(1) {
            assert!(line.split_whitespace().count() >= 3);
        }
    }
}
