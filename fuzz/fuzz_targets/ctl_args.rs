//! hirtectl's argument handling. hirtectl is a binary crate, so its sans-IO modules are
//! compiled in from its sources: the clap definition (`cli.rs`, with `output.rs` and
//! `json.rs` it refers to), `--property` assignments (`props.rs`), signal names
//! (`signals.rs`), unit-name globs (`glob.rs`) and JSON escaping (`json.rs`).
//!
//! Input: NUL-separated words, used as argv after `hirtectl` and one by one as a property
//! assignment, a signal, a glob pattern and name, and a JSON string.
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
use libfuzzer_sys::fuzz_target;

/// A strict reader of one JSON string literal as `escape_into` writes them.
fn unescape_json(lit: &str) -> Option<String> {
    let inner = lit.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut it = inner.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => match it.next()? {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = it.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                _ => return None,
            },
            '"' => return None,
            c if u32::from(c) < 0x20 => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let words: Vec<&str> = text.split('\0').collect();
    let argv = std::iter::once("hirtectl").chain(words.iter().copied());
    // Errors (usage, --help, --version) come back as values; only a panic is a finding.
    let _ = cli::Cli::try_parse_from(argv);
    for w in &words {
        let _ = props::parse_assignment(w);
        let _ = signals::parse_signal(w);
        let mut s = String::new();
        json::escape_into(w, &mut s);
        assert_eq!(unescape_json(&s).as_deref(), Some(*w), "{s}");
    }
    if let [pattern, name, ..] = words.as_slice() {
        let g = glob::Glob::new(pattern);
        let _ = g.matches(name);
    }
});
