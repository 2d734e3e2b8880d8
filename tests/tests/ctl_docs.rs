//! hirtectl's documentation: `--help` lists every command, man pages exist for each, shell
//! completions know them, docs/hirtectl.md describes them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod ctl_common;

use std::process::{Command, Output};

use ctl_common::*;

/// Every visible command (nested ones as "parent child").
const COMMANDS: &[&str] = &[
    "list-nodes",
    "list-units",
    "list-unit-files",
    "start",
    "stop",
    "restart",
    "reload",
    "status",
    "enable",
    "disable",
    "is-enabled",
    "daemon-reload",
    "freeze",
    "thaw",
    "kill",
    "reset-failed",
    "set-property",
    "get-default",
    "set-default",
    "monitor",
    "set-loglevel",
    "exec",
    "metrics",
    "metrics enable",
    "metrics disable",
    "metrics listen",
    "is-online",
    "is-online node",
    "is-online agent",
    "is-online system",
];

fn hirtectl(args: &[&str]) -> Output {
    let bin = hirte_tests::binary("hirtectl").expect("hirtectl built");
    Command::new(bin)
        .args(args)
        .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
        .output()
        .expect("running hirtectl")
}

// [itest->req~ctl.docs~1]
#[test]
fn ctl_help_man_pages_and_completions_cover_every_command() {
    if !hirte_tests::require_root("ctl_help_man_pages_and_completions_cover_every_command") {
        return;
    }
    // --help: one line with a description per top-level command, none missing or extra.
    let help = ok(&hirtectl(&["--help"]), "hirtectl --help");
    let listed: Vec<(String, String)> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let (name, desc) = l.trim().split_once(char::is_whitespace).unwrap_or((l, ""));
            (name.to_string(), desc.trim().to_string())
        })
        .collect();
    let top: Vec<&str> = COMMANDS
        .iter()
        .filter(|c| !c.contains(' '))
        .copied()
        .collect();
    assert_eq!(
        listed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        top,
        "{help}"
    );
    for (name, desc) in &listed {
        assert!(desc.len() > 10, "{name} has no description: {help}");
    }
    for cmd in COMMANDS {
        let mut args: Vec<&str> = cmd.split(' ').collect();
        args.push("--help");
        let out = ok(&hirtectl(&args), &format!("{cmd} --help"));
        assert!(out.contains("Usage: hirtectl "), "{cmd}: {out}");
    }

    // man DIR: hirtectl.1 and one page per command, each a roff page with its name.
    let dir = std::env::temp_dir().join(format!("hirtectl-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = ok(&hirtectl(&["man", dir.to_str().unwrap()]), "hirtectl man");
    let mut want = vec!["hirtectl.1".to_string()];
    want.extend(
        COMMANDS
            .iter()
            .map(|c| format!("hirtectl-{}.1", c.replace(' ', "-"))),
    );
    let mut have: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    have.sort();
    want.sort();
    assert_eq!(have, want, "man pages");
    assert_eq!(
        out.lines().count(),
        want.len(),
        "one path printed per page: {out}"
    );
    for page in &want {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        let name = page.trim_end_matches(".1");
        assert!(
            text.contains(&format!(".TH {name} 1")),
            "{page} has no title line: {}",
            &text[..text.len().min(300)]
        );
        assert!(text.contains(".SH NAME"), "{page}");
        assert!(text.contains(".SH SYNOPSIS"), "{page}");
    }
    // man(1) can format them (when groff is there).
    if Command::new("groff").arg("-v").output().is_ok() {
        let o = Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(dir.join("hirtectl-exec.1"))
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        let text = ok(&o, "man -l hirtectl-exec.1");
        assert!(text.contains("--timeout"), "{text}");
    }
    let top_page = std::fs::read_to_string(dir.join("hirtectl.1")).unwrap();
    assert!(
        top_page.contains("Exit status"),
        "exit statuses in hirtectl(1)"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Completions: each names every command; bash's script is valid bash.
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&hirtectl(&["completions", shell]), shell);
        for cmd in COMMANDS {
            let last = cmd.rsplit(' ').next().unwrap();
            assert!(script.contains(last), "{shell} completion lacks {cmd}");
        }
    }
    let bash = ok(&hirtectl(&["completions", "bash"]), "bash");
    let check = Command::new("bash")
        .args(["-n", "-c", &bash])
        .output()
        .unwrap();
    ok(&check, "bash -n on the completion script");
    // Hidden helpers stay out of --help.
    assert!(
        !help.contains("completions") && !help.contains("\n  man "),
        "{help}"
    );

    // docs/hirtectl.md describes every command.
    let docs = std::fs::read_to_string(docs_path()).unwrap();
    for cmd in COMMANDS {
        let first = cmd.split(' ').next().unwrap();
        assert!(
            docs.contains(&format!("hirtectl {first}"))
                || docs.contains(&format!("hirtectl {cmd}")),
            "docs/hirtectl.md does not mention {cmd}"
        );
    }
}
