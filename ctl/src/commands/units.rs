//! Unit listings, unit operations (start/stop/...), unit files (enable/disable/is-enabled).

use super::Ctx;
use crate::cli::{UnitFileOpts, UnitOp};
use crate::client::{Client, CtlError};
use crate::glob::{keep, Glob};
use crate::json::{self, Json};
use crate::output;
use hirte_common::protocol;
use std::collections::HashMap;
use std::time::Duration;

pub use hirte_common::protocol::UnitRow;

/// A unit as the listings show it.
pub struct Unit {
    pub node: String,
    pub name: String,
    pub load: String,
    pub active: String,
    pub sub: String,
    pub description: String,
}

impl Unit {
    fn from_row(node: &str, r: UnitRow) -> Unit {
        Unit {
            node: node.to_string(),
            name: r.0,
            description: r.1,
            load: r.2,
            active: r.3,
            sub: r.4,
        }
    }

    pub fn json(&self) -> Json {
        json::obj([
            ("node", json::str(&self.node)),
            ("unit", json::str(&self.name)),
            ("load", json::str(&self.load)),
            ("active", json::str(&self.active)),
            ("sub", json::str(&self.sub)),
            ("description", json::str(&self.description)),
        ])
    }
}

/// Units of one node, or of every online node (sorted by node, then unit).
pub fn fetch(c: &Client, node: Option<&str>, filter: Option<&Glob>) -> Result<Vec<Unit>, CtlError> {
    let mut per_node: Vec<(String, Vec<UnitRow>)> = match node {
        Some(n) => {
            let (units,): (Vec<UnitRow>,) = c.node(n, "ListUnits", ())?;
            vec![(n.to_string(), units)]
        }
        None => {
            let (all,): (HashMap<String, Vec<UnitRow>>,) = c.manager("ListUnits", ())?;
            all.into_iter().collect()
        }
    };
    per_node.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (n, mut rows) in per_node {
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        out.extend(
            rows.into_iter()
                .filter(|r| keep(filter, &r.0))
                .map(|r| Unit::from_row(&n, r)),
        );
    }
    Ok(out)
}

/// Text table of units; the NODE column only when listing several nodes.
pub fn units_table(units: &[Unit], with_node: bool, with_load: bool) -> String {
    let rows: Vec<Vec<String>> = units
        .iter()
        .map(|u| {
            let mut r = Vec::new();
            if with_node {
                r.push(u.node.clone());
            }
            r.push(u.name.clone());
            if with_load {
                r.push(u.load.clone());
            }
            r.extend([u.active.clone(), u.sub.clone(), u.description.clone()]);
            r
        })
        .collect();
    let mut header = Vec::new();
    if with_node {
        header.push("NODE");
    }
    header.push("UNIT");
    if with_load {
        header.push("LOADED");
    }
    header.extend(["ACTIVE", "SUB", "DESCRIPTION"]);
    output::table(&header, &rows)
}

// [impl->req~ctl.list-units~1]
pub fn list_units(ctx: &Ctx, node: Option<&str>, filter: Option<&Glob>) -> Result<(), CtlError> {
    let units = fetch(ctx.c, node, filter)?;
    if ctx.json() {
        output::print_json(&Json::Array(units.iter().map(Unit::json).collect()));
    } else {
        output::out(&units_table(&units, node.is_none(), false));
    }
    Ok(())
}

/// The unit name of a unit file path (`/etc/systemd/system/foo.service` -> `foo.service`).
fn file_unit(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

// [impl->req~ctl.unit-files~1]
pub fn list_unit_files(
    ctx: &Ctx,
    node: Option<&str>,
    filter: Option<&Glob>,
) -> Result<(), CtlError> {
    let mut per_node: Vec<(String, Vec<(String, String)>)> = match node {
        Some(n) => {
            let (files,): (Vec<(String, String)>,) = ctx.c.node(n, "ListUnitFiles", ())?;
            vec![(n.to_string(), files)]
        }
        None => {
            let (all,): (HashMap<String, Vec<(String, String)>>,) =
                ctx.c.manager("ListUnitFiles", ())?;
            all.into_iter().collect()
        }
    };
    per_node.sort_by(|a, b| a.0.cmp(&b.0));
    // (node, unit, path, state)
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    for (n, mut files) in per_node {
        files.sort_by(|a, b| file_unit(&a.0).cmp(file_unit(&b.0)).then(a.0.cmp(&b.0)));
        for (path, state) in files {
            let unit = file_unit(&path).to_string();
            if keep(filter, &unit) {
                rows.push((n.clone(), unit, path, state));
            }
        }
    }
    if ctx.json() {
        let items = rows
            .iter()
            .map(|(n, u, p, s)| {
                json::obj([
                    ("node", json::str(n)),
                    ("unit", json::str(u)),
                    ("path", json::str(p)),
                    ("state", json::str(s)),
                ])
            })
            .collect();
        output::print_json(&Json::Array(items));
        return Ok(());
    }
    let cells: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(n, u, p, s)| {
            if node.is_none() {
                vec![n, u, s, p]
            } else {
                vec![u, s, p]
            }
        })
        .collect();
    // The name first (what scripts grep and awk for), the path last.
    let header: &[&str] = if node.is_none() {
        &["NODE", "UNIT FILE", "STATE", "PATH"]
    } else {
        &["UNIT FILE", "STATE", "PATH"]
    };
    output::out(&output::table(header, &cells));
    Ok(())
}

// [impl->req~ctl.unit-ops~1]
pub fn unit_op(ctx: &Ctx, member: &str, verb: &str, op: &UnitOp) -> Result<(), CtlError> {
    let c = ctx.c;
    let path = c.node_path(&op.node)?;
    c.watch_jobs()?;
    let (job,): (dbus::Path<'static>,) =
        c.call(&path, protocol::NODE_IFACE, member, (&op.unit, &op.mode))?;
    let result = c.wait_job(&job, Duration::from_secs(op.timeout))?;
    output::line(&format!(
        "Unit {} {verb} operation result: {result}",
        op.unit
    ));
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

/// Prints unit-file changes as systemctl does.
pub fn print_changes(changes: &[(String, String, String)]) {
    for (kind, file, dest) in changes {
        match kind.as_str() {
            "symlink" => output::line(&format!("Created symlink {file} \u{2192} {dest}.")),
            "unlink" => output::line(&format!("Removed \"{file}\".")),
            other => output::line(&format!("{other} {file} {dest}")),
        }
    }
}

/// enable (`force` is `Some`) or disable (`None`).
// [impl->req~ctl.enable~1]
pub fn enable(
    ctx: &Ctx,
    node: &str,
    units: &[String],
    force: Option<bool>,
    opts: &UnitFileOpts,
) -> Result<(), CtlError> {
    let c = ctx.c;
    let path = c.node_path(node)?;
    match force {
        Some(force) => {
            let (install_info, changes): (bool, Vec<(String, String, String)>) = c.call(
                &path,
                protocol::NODE_IFACE,
                "EnableUnitFiles",
                (units, opts.runtime, force),
            )?;
            print_changes(&changes);
            if !install_info {
                output::err_line(
                    "The unit files have no installation config (WantedBy=, RequiredBy=, Also=, Alias=); they were not enabled."
                );
            }
        }
        None => {
            let (changes,): (Vec<(String, String, String)>,) = c.call(
                &path,
                protocol::NODE_IFACE,
                "DisableUnitFiles",
                (units, opts.runtime),
            )?;
            print_changes(&changes);
        }
    }
    if opts.no_reload {
        return Ok(());
    }
    // As systemctl does after enable/disable, so the new links take effect.
    c.call::<_, ()>(&path, protocol::NODE_IFACE, "Reload", ())
}

/// Unit-file states `is-enabled` answers 0 for, as systemctl does.
const ENABLED_STATES: &[&str] = &[
    "enabled",
    "enabled-runtime",
    "static",
    "alias",
    "indirect",
    "generated",
    "transient",
];

/// Prints each unit's state; 0 if at least one is enabled, 1 otherwise (as systemctl).
// [impl->req~ctl.unit-files~1]
pub fn is_enabled(ctx: &Ctx, node: &str, units: &[String], quiet: bool) -> Result<u8, CtlError> {
    let path = ctx.c.node_path(node)?;
    let mut states = Vec::new();
    for unit in units {
        let r: Result<(String,), CtlError> =
            ctx.c
                .call(&path, protocol::NODE_IFACE, "GetUnitFileState", (unit,));
        match r {
            Ok((state,)) => states.push((unit.clone(), state)),
            Err(CtlError::Call { name, .. })
                if name == "org.freedesktop.DBus.Error.FileNotFound" =>
            {
                return Err(CtlError::NotFound(format!(
                    "unit file {unit} not found on node '{node}'"
                )))
            }
            Err(e) => return Err(e),
        }
    }
    if ctx.json() {
        let items = states
            .iter()
            .map(|(u, s)| {
                json::obj([
                    ("node", json::str(node)),
                    ("unit", json::str(u)),
                    ("state", json::str(s)),
                    ("enabled", Json::Bool(ENABLED_STATES.contains(&s.as_str()))),
                ])
            })
            .collect();
        output::print_json(&Json::Array(items));
    } else if !quiet {
        for (_, s) in &states {
            output::line(s);
        }
    }
    let any = states
        .iter()
        .any(|(_, s)| ENABLED_STATES.contains(&s.as_str()));
    Ok(if any { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_file_names() {
        assert_eq!(file_unit("/etc/systemd/system/a.service"), "a.service");
        assert_eq!(file_unit("b.socket"), "b.socket");
    }
}
