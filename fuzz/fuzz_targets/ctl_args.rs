//! hirtectl's argument handling. hirtectl is a binary crate, so its sans-IO modules are
//! compiled in from its sources: the clap definition (`cli.rs`, with `output.rs` and
//! `json.rs` it refers to), `--property` assignments (`props.rs`), signal names
//! (`signals.rs`), unit-name globs (`glob.rs`) and JSON escaping (`json.rs`).
//!
//! Input: NUL-separated words, used as argv after `hirtectl` and one by one as a property
//! assignment, a signal, a glob pattern and name, and a JSON string (read back strictly).
#![no_main]
#![allow(dead_code)]

#[path = "../../ctl/src/cli.rs"]
mod cli;
#[path = "../../ctl/src/glob.rs"]
mod glob;
#[path = "../../ctl/src/json.rs"]
mod json;
#[path = "../../ctl/src/output.rs"]
mod output;
#[path = "../../ctl/src/props.rs"]
mod props;
#[path = "../../ctl/src/signals.rs"]
mod signals;

use clap::Parser;
use json::ToLine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let words: Vec<&str> = text.split('\0').collect();
    let argv = std::iter::once("hirtectl").chain(words.iter().copied());
    // Errors (usage, --help, --version) come back as values; only a panic is a finding.
    let _ = cli::Cli::try_parse_from(argv);
    for w in &words {
        let _ = props::parse_assignment(w);
        let _ = signals::parse_signal(w);
        // What -o json writes, read back by serde_json's strict reader.
        let s = json::str(*w).to_line();
        assert_eq!(serde_json::from_str::<String>(&s).ok().as_deref(), Some(*w), "{s}");
    }
    if let [pattern, name, ..] = words.as_slice() {
        let g = glob::Glob::new(pattern);
        let _ = g.matches(name);
    }
});
