//! One module per group of commands; `run` dispatches the parsed command line.

mod control;
mod docs;
mod exec;
mod metrics;
mod monitor;
mod nodes;
mod online;
mod status;
mod units;
mod wait;

use crate::cli::{Cli, Command, MetricsAction};
use crate::client::{Client, CtlError};
use crate::glob::Glob;
use crate::output::Format;

/// What every command gets: the connection and the output format.
pub struct Ctx<'a> {
    pub c: &'a Client,
    pub format: Format,
}

impl Ctx<'_> {
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }
}

/// Whether the command prints something `-o json` can shape.
fn has_json(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::ListNodes { .. }
            | Command::ListUnits { .. }
            | Command::ListUnitFiles { .. }
            | Command::Status { .. }
            | Command::IsEnabled { .. }
            | Command::Monitor { .. }
            | Command::Metrics {
                action: MetricsAction::Listen { .. }
            }
    )
}

fn glob(f: &crate::cli::Filter) -> Option<Glob> {
    f.filter.as_deref().map(Glob::new)
}

/// Runs the command (`name` as typed, for messages); `Ok(status)` is the exit status of a
/// command that answers with it (is-enabled, is-online, exec), 0 for the others.
pub fn run(cli: Cli, name: &str) -> Result<u8, CtlError> {
    let cmd = &cli.command;
    if cli.output == Format::Json && !has_json(cmd) {
        return Err(CtlError::Usage(format!(
            "'{name}' has no JSON output (-o json applies to listing and status commands)"
        )));
    }
    // These need no manager.
    match cmd {
        Command::Completions { shell } => return docs::completions(*shell).map(|()| 0),
        Command::Man { dir } => return docs::man(dir.as_deref()).map(|()| 0),
        Command::IsOnline {
            what: crate::cli::OnlineTarget::Agent { wait },
        } => return online::agent(*wait),
        _ => {}
    }
    let c = Client::connect()?;
    let ctx = Ctx {
        c: &c,
        format: cli.output,
    };
    let done = |r: Result<(), CtlError>| r.map(|()| 0);
    match cmd {
        Command::ListNodes { filter } => done(nodes::list_nodes(&ctx, glob(filter).as_ref())),
        Command::ListUnits { node, filter } => done(units::list_units(
            &ctx,
            node.as_deref(),
            glob(filter).as_ref(),
        )),
        Command::ListUnitFiles { node, filter } => done(units::list_unit_files(
            &ctx,
            node.as_deref(),
            glob(filter).as_ref(),
        )),
        Command::Start(op) => done(units::unit_op(&ctx, "StartUnit", "start", op)),
        Command::Stop(op) => done(units::unit_op(&ctx, "StopUnit", "stop", op)),
        Command::Restart(op) => done(units::unit_op(&ctx, "RestartUnit", "restart", op)),
        Command::Reload(op) => done(units::unit_op(&ctx, "ReloadUnit", "reload", op)),
        Command::Status {
            node,
            units,
            watch,
            count,
            timeout,
        } => {
            let what = status::What::from_args(node.as_deref(), units);
            if *watch {
                done(status::watch(&ctx, &what, *count, *timeout))
            } else {
                done(status::once(&ctx, &what))
            }
        }
        Command::Enable {
            node,
            units,
            force,
            opts,
        } => done(units::enable(&ctx, node, units, Some(*force), opts)),
        Command::Disable { node, units, opts } => {
            done(units::enable(&ctx, node, units, None, opts))
        }
        Command::IsEnabled { node, units, quiet } => units::is_enabled(&ctx, node, units, *quiet),
        // [impl->req~ctl.daemon-reload~1]
        Command::DaemonReload { node } => done(c.node(node, "Reload", ())),
        Command::Freeze { node, unit } => done(control::freeze(&ctx, node, unit, true)),
        Command::Thaw { node, unit } => done(control::freeze(&ctx, node, unit, false)),
        Command::Kill {
            node,
            unit,
            kill_whom,
            signal,
        } => done(control::kill(&ctx, node, unit, *kill_whom, signal)),
        Command::ResetFailed { node, units } => {
            done(control::reset_failed(&ctx, node.as_deref(), units))
        }
        Command::SetProperty {
            node,
            unit,
            assignments,
        } => done(control::set_property(&ctx, node, unit, assignments)),
        Command::GetDefault { node } => done(control::get_default(&ctx, node)),
        Command::SetDefault { node, target } => done(control::set_default(&ctx, node, target)),
        Command::Monitor {
            node,
            units,
            properties,
            bounds,
        } => done(monitor::monitor(
            &ctx,
            node.as_deref(),
            units,
            *properties,
            *bounds,
        )),
        Command::SetLoglevel { first, second } => match second {
            Some(level) => done(control::set_loglevel(&ctx, Some(first), level)),
            None => done(control::set_loglevel(&ctx, None, first)),
        },
        Command::Exec {
            timeout,
            node,
            command,
        } => exec::exec(&ctx, node, *timeout, command),
        Command::Metrics { action } => done(metrics::metrics(&ctx, action)),
        Command::IsOnline { what } => online::online(&ctx, what),
        Command::Completions { .. } | Command::Man { .. } => Ok(0),
    }
}
