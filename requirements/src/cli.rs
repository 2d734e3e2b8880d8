//! Command line: hand-parsed, to keep the crate's dependencies minimal.

use std::fmt;

pub const USAGE: &str = "\
usage: hirte-trace [--config FILE] [--results FILE]... [--out DIR] [--no-results]

Checks requirement traceability (OpenFastTrace syntax) of the workspace.
All paths are relative to the workspace root.

  --config FILE    settings file (default: requirements/trace.toml)
  --results FILE   JUnit XML or libtest JSON results of the same CI run;
                   repeatable, replaces `results` of the settings file
  --out DIR        report directory (default: settings `out_dir`)
  --no-results     ignore test results, check tags only
  -h, --help       show this help

Exit status: 0 no defects, 1 defects found, 2 usage or input error.";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    pub config: Option<String>,
    pub results: Vec<String>,
    pub out: Option<String>,
    pub no_results: bool,
    pub help: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    MissingValue(String),
    Unknown(String),
    Repeated(String),
    Conflict,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::MissingValue(opt) => write!(f, "option {opt} needs a value"),
            CliError::Unknown(arg) => write!(f, "unknown argument `{arg}`"),
            CliError::Repeated(opt) => write!(f, "option {opt} given more than once"),
            CliError::Conflict => write!(f, "--results and --no-results exclude each other"),
        }
    }
}

fn set_once(slot: &mut Option<String>, opt: &str, value: String) -> Result<(), CliError> {
    if slot.is_some() {
        return Err(CliError::Repeated(opt.to_owned()));
    }
    *slot = Some(value);
    Ok(())
}

/// Parses the arguments after the program name. Options take their value
/// as the next argument or after `=`.
// [impl->req~trace.cli~1]
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Args, CliError> {
    let mut parsed = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (opt, inline) = match arg.split_once('=') {
            Some((opt, value)) if opt.starts_with("--") => (opt.to_owned(), Some(value.to_owned())),
            _ => (arg.clone(), None),
        };
        let takes_value = matches!(opt.as_str(), "--config" | "--results" | "--out");
        let value = if takes_value {
            match inline.or_else(|| args.next()) {
                Some(v) if !v.is_empty() => Some(v),
                _ => return Err(CliError::MissingValue(opt)),
            }
        } else if inline.is_some() {
            return Err(CliError::Unknown(arg));
        } else {
            None
        };
        match (opt.as_str(), value) {
            ("--config", Some(v)) => set_once(&mut parsed.config, &opt, v)?,
            ("--out", Some(v)) => set_once(&mut parsed.out, &opt, v)?,
            ("--results", Some(v)) => parsed.results.push(v),
            ("--no-results", None) => parsed.no_results = true,
            ("-h" | "--help", None) => parsed.help = true,
            _ => return Err(CliError::Unknown(arg)),
        }
    }
    if parsed.no_results && !parsed.results.is_empty() {
        return Err(CliError::Conflict);
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, CliError> {
        parse(list.iter().map(|s| s.to_string()))
    }

    // [utest->req~trace.cli~1]
    #[test]
    fn parses_all_options() {
        let a = args(&[
            "--config",
            "c.toml",
            "--results",
            "a.xml",
            "--results=b.json",
            "--out=out",
        ])
        .unwrap();
        assert_eq!(a.config.as_deref(), Some("c.toml"));
        assert_eq!(a.results, vec!["a.xml", "b.json"]);
        assert_eq!(a.out.as_deref(), Some("out"));
        assert!(!a.no_results);
        assert_eq!(args(&[]).unwrap(), Args::default());
        assert!(args(&["--no-results"]).unwrap().no_results);
        assert!(args(&["-h"]).unwrap().help);
    }

    // [utest->req~trace.cli~1]
    #[test]
    fn rejects_bad_usage() {
        assert_eq!(
            args(&["--out"]),
            Err(CliError::MissingValue("--out".into()))
        );
        assert_eq!(
            args(&["--config="]),
            Err(CliError::MissingValue("--config".into()))
        );
        assert_eq!(args(&["-x"]), Err(CliError::Unknown("-x".into())));
        assert_eq!(
            args(&["--no-results=1"]),
            Err(CliError::Unknown("--no-results=1".into()))
        );
        assert_eq!(
            args(&["--out", "a", "--out", "b"]),
            Err(CliError::Repeated("--out".into()))
        );
        assert_eq!(
            args(&["--no-results", "--results", "x"]),
            Err(CliError::Conflict)
        );
    }
}
