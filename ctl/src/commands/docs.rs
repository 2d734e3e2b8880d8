//! Shell completions and man pages, generated from the clap definitions so they cannot drift
//! from what the parser accepts.

use crate::cli::Cli;
use crate::client::CtlError;
use clap::CommandFactory;
use std::path::Path;

// [impl->req~ctl.docs~1]
pub fn completions(shell: clap_complete::Shell) -> Result<(), CtlError> {
    let mut cmd = Cli::command();
    // Into a buffer: the generator panics on a failed write (e.g. a closed pipe).
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "hirtectl", &mut buf);
    crate::output::out_bytes(&buf);
    Ok(())
}

/// Writes `hirtectl.1` and one page per visible (sub)command (`hirtectl-start.1`,
/// `hirtectl-metrics-listen.1`, ...), printing each path.
// [impl->req~ctl.docs~1]
pub fn man(dir: Option<&Path>) -> Result<(), CtlError> {
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| CtlError::failed(format!("cannot create {}: {e}", dir.display())))?;
    let mut cmd = Cli::command();
    // Sets the display names (hirtectl-start) and bin names (hirtectl start) of subcommands.
    cmd.build();
    write_pages(&cmd, dir)
}

fn write_pages(cmd: &clap::Command, dir: &Path) -> Result<(), CtlError> {
    let page = clap_mangen::Man::new(cmd.clone());
    let path = page.generate_to(dir).map_err(|e| {
        CtlError::failed(format!(
            "cannot write a man page into {}: {e}",
            dir.display()
        ))
    })?;
    crate::output::line(&path.display().to_string());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir)?;
    }
    Ok(())
}
