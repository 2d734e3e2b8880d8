//! `hirtectl`: the operator's command line for the Hirte-rs manager.

mod cli;
mod client;
mod commands;
mod glob;
mod json;
mod output;
mod props;
mod signals;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;

/// One line, whatever the error text holds (D-Bus messages may carry newlines).
// [impl->req~ctl.errors~1]
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses the command line into the command and its name; usage errors become one line
/// (help and version print as usual).
fn parse() -> Result<(cli::Cli, String), ExitCode> {
    let parsed = cli::Cli::command().try_get_matches().and_then(|m| {
        let name = m.subcommand_name().unwrap_or("hirtectl").to_string();
        cli::Cli::from_arg_matches(&m).map(|cli| (cli, name))
    });
    match parsed {
        Ok(p) => Ok(p),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
            _ => {
                // clap's first paragraph is the message (e.g. the missing arguments, one per
                // line); usage and tips follow after a blank line.
                let text = e.to_string();
                let para: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).collect();
                let first = para.join(" ");
                let msg = first.strip_prefix("error: ").unwrap_or(&first);
                output::err_line(&format!(
                    "hirtectl: {} (see 'hirtectl --help')",
                    one_line(msg)
                ));
                Err(ExitCode::from(2))
            }
        },
    }
}

fn main() -> ExitCode {
    let (cli, name) = match parse() {
        Ok(p) => p,
        Err(code) => return code,
    };
    match commands::run(cli, &name) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            output::err_line(&format!("hirtectl: {}", one_line(&e.to_string())));
            ExitCode::from(e.exit_code())
        }
    }
}
