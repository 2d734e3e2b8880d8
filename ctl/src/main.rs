//! `hirtectl`: the operator's command line for the Hirte-rs manager.

mod client;
mod output;

use clap::{Parser, Subcommand};
use client::{Client, CtlError};
use dbus::arg::{prop_cast, PropMap};
use hirte_common::protocol;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

#[derive(Parser)]
#[command(
    name = "hirtectl",
    version,
    about = "Control systemd units on the nodes of a Hirte-rs cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the nodes with their state and when each was last seen
    ListNodes,
    /// List the units of one node, or of all online nodes
    ListUnits {
        /// Only this node
        node: Option<String>,
    },
    /// Start a unit on a node and wait for the job to finish
    Start(UnitOp),
    /// Stop a unit on a node and wait for the job to finish
    Stop(UnitOp),
    /// Restart a unit on a node and wait for the job to finish
    Restart(UnitOp),
    /// Reload a unit on a node and wait for the job to finish
    Reload(UnitOp),
    /// Show the state of a unit on a node
    Status { node: String, unit: String },
    /// Enable unit files on a node (then reload its systemd)
    Enable {
        node: String,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Disable unit files on a node (then reload its systemd)
    Disable {
        node: String,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Reload the systemd configuration of a node
    DaemonReload { node: String },
}

#[derive(clap::Args)]
struct UnitOp {
    node: String,
    unit: String,
    /// Job mode, as systemctl's --job-mode
    #[arg(long, default_value = "replace")]
    mode: String,
    /// Longest time to wait for the job, in seconds
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    dbus::Path<'static>,
    u32,
    String,
    dbus::Path<'static>,
);

// [impl->req~ctl.list-nodes~1]
fn list_nodes(c: &Client) -> Result<(), CtlError> {
    let (nodes,): (Vec<(String, dbus::Path<'static>, String, String)>,) =
        c.manager("ListNodes", ())?;
    let now = SystemTime::now();
    let mut rows = Vec::new();
    for (name, path, state, _ip) in nodes {
        let seen: u64 = c.property(&path, protocol::NODE_IFACE, "LastSeenTimestamp")?;
        rows.push(vec![name, state, output::last_seen(seen, now)]);
    }
    print!("{}", output::table(&["NODE", "STATE", "LAST SEEN"], &rows));
    Ok(())
}

// [impl->req~ctl.list-units~1]
fn list_units(c: &Client, node: Option<&str>) -> Result<(), CtlError> {
    let unit_cells = |u: &UnitRow| vec![u.0.clone(), u.3.clone(), u.4.clone(), u.1.clone()];
    match node {
        Some(node) => {
            let (mut units,): (Vec<UnitRow>,) = c.node(node, "ListUnits", ())?;
            units.sort_by(|a, b| a.0.cmp(&b.0));
            let rows: Vec<Vec<String>> = units.iter().map(unit_cells).collect();
            print!(
                "{}",
                output::table(&["UNIT", "ACTIVE", "SUB", "DESCRIPTION"], &rows)
            );
        }
        None => {
            let (all,): (HashMap<String, Vec<UnitRow>>,) = c.manager("ListUnits", ())?;
            let mut nodes: Vec<_> = all.into_iter().collect();
            nodes.sort_by(|a, b| a.0.cmp(&b.0));
            let mut rows = Vec::new();
            for (name, mut units) in nodes {
                units.sort_by(|a, b| a.0.cmp(&b.0));
                for u in &units {
                    let mut r = vec![name.clone()];
                    r.extend(unit_cells(u));
                    rows.push(r);
                }
            }
            print!(
                "{}",
                output::table(&["NODE", "UNIT", "ACTIVE", "SUB", "DESCRIPTION"], &rows)
            );
        }
    }
    Ok(())
}

// [impl->req~ctl.unit-ops~1]
fn unit_op(c: &Client, member: &str, verb: &str, op: &UnitOp) -> Result<(), CtlError> {
    let path = c.node_path(&op.node)?;
    c.watch_jobs()?;
    let (job,): (dbus::Path<'static>,) =
        c.call(&path, protocol::NODE_IFACE, member, (&op.unit, &op.mode))?;
    let result = c.wait_job(&job, Duration::from_secs(op.timeout))?;
    println!("Unit {} {verb} operation result: {result}", op.unit);
    if result == "done" {
        Ok(())
    } else {
        Err(CtlError::JobFailed {
            unit: op.unit.clone(),
            op: verb.to_string(),
            result,
        })
    }
}

fn prop_str(props: &PropMap, key: &str) -> String {
    prop_cast::<String>(props, key).cloned().unwrap_or_default()
}

// [impl->req~ctl.status~1]
fn status(c: &Client, node: &str, unit: &str) -> Result<(), CtlError> {
    let (props,): (PropMap,) = c.node(
        node,
        "GetUnitProperties",
        (unit, "org.freedesktop.systemd1.Unit"),
    )?;
    if prop_str(&props, "LoadState") == "not-found" {
        return Err(CtlError::NotFound(format!(
            "unit {unit} could not be found on node '{node}'"
        )));
    }
    let row = vec![
        prop_str(&props, "Id"),
        prop_str(&props, "LoadState"),
        prop_str(&props, "ActiveState"),
        prop_str(&props, "SubState"),
        prop_str(&props, "FreezerState"),
        prop_str(&props, "UnitFileState"),
    ];
    print!(
        "{}",
        output::table(
            &["UNIT", "LOADED", "ACTIVE", "SUB", "FREEZER", "ENABLED"],
            &[row]
        )
    );
    Ok(())
}

/// Prints unit-file changes as systemctl does.
fn print_changes(changes: &[(String, String, String)]) {
    for (kind, file, dest) in changes {
        match kind.as_str() {
            "symlink" => println!("Created symlink {file} \u{2192} {dest}."),
            "unlink" => println!("Removed \"{file}\"."),
            other => println!("{other} {file} {dest}"),
        }
    }
}

// [impl->req~ctl.enable~1]
fn enable(c: &Client, node: &str, units: &[String], on: bool) -> Result<(), CtlError> {
    let path = c.node_path(node)?;
    if on {
        let (install_info, changes): (bool, Vec<(String, String, String)>) = c.call(
            &path,
            protocol::NODE_IFACE,
            "EnableUnitFiles",
            (units, false, false),
        )?;
        print_changes(&changes);
        if !install_info {
            eprintln!(
                "The unit files have no installation config (WantedBy=, RequiredBy=, Also=, Alias=); they were not enabled."
            );
        }
    } else {
        let (changes,): (Vec<(String, String, String)>,) = c.call(
            &path,
            protocol::NODE_IFACE,
            "DisableUnitFiles",
            (units, false),
        )?;
        print_changes(&changes);
    }
    // As systemctl does after enable/disable, so the new links take effect.
    c.call::<_, ()>(&path, protocol::NODE_IFACE, "Reload", ())
}

fn run(cli: Cli) -> Result<(), CtlError> {
    let c = Client::connect()?;
    match &cli.command {
        Command::ListNodes => list_nodes(&c),
        Command::ListUnits { node } => list_units(&c, node.as_deref()),
        Command::Start(op) => unit_op(&c, "StartUnit", "start", op),
        Command::Stop(op) => unit_op(&c, "StopUnit", "stop", op),
        Command::Restart(op) => unit_op(&c, "RestartUnit", "restart", op),
        Command::Reload(op) => unit_op(&c, "ReloadUnit", "reload", op),
        Command::Status { node, unit } => status(&c, node, unit),
        Command::Enable { node, units } => enable(&c, node, units, true),
        Command::Disable { node, units } => enable(&c, node, units, false),
        Command::DaemonReload { node } => c.node(node, "Reload", ()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hirtectl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
