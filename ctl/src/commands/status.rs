//! `status`: the node table, a node's units, or the state of given units; `-w` redraws on change.

use super::wait::{Next, Waiter};
use super::{nodes, units, Ctx};
use crate::cli::Bounds;
use crate::client::CtlError;
use crate::json::{self, Json, ToLine};
use crate::output;
use dbus::arg::{prop_cast, PropMap};
use hirte_common::protocol;
use std::io::IsTerminal;
use std::time::Duration;

/// What `status` shows, from its arguments.
pub enum What<'a> {
    Nodes,
    Node(&'a str),
    Units(&'a str, &'a [String]),
}

impl<'a> What<'a> {
    pub fn from_args(node: Option<&'a str>, units: &'a [String]) -> What<'a> {
        match node {
            None => What::Nodes,
            Some(n) if units.is_empty() => What::Node(n),
            Some(n) => What::Units(n, units),
        }
    }
}

fn prop_str(props: &PropMap, key: &str) -> String {
    prop_cast::<String>(props, key).cloned().unwrap_or_default()
}

struct UnitStatus {
    unit: String,
    load: String,
    active: String,
    sub: String,
    freezer: String,
    unit_file_state: String,
    description: String,
}

/// The state of each unit; units systemd cannot find are an error naming all of them.
fn unit_statuses(ctx: &Ctx, node: &str, names: &[String]) -> Result<Vec<UnitStatus>, CtlError> {
    let path = ctx.c.node_path(node)?;
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        let (props,): (PropMap,) = ctx.c.call(
            &path,
            protocol::NODE_IFACE,
            "GetUnitProperties",
            (name, "org.freedesktop.systemd1.Unit"),
        )?;
        if prop_str(&props, "LoadState") == "not-found" {
            missing.push(name.as_str());
            continue;
        }
        found.push(UnitStatus {
            unit: prop_str(&props, "Id"),
            load: prop_str(&props, "LoadState"),
            active: prop_str(&props, "ActiveState"),
            sub: prop_str(&props, "SubState"),
            freezer: prop_str(&props, "FreezerState"),
            unit_file_state: prop_str(&props, "UnitFileState"),
            description: prop_str(&props, "Description"),
        });
    }
    match missing.as_slice() {
        [] => Ok(found),
        [one] => Err(CtlError::NotFound(format!(
            "unit {one} could not be found on node '{node}'"
        ))),
        many => Err(CtlError::NotFound(format!(
            "units {} could not be found on node '{node}'",
            many.join(", ")
        ))),
    }
}

/// Everything `status` prints once, as text or one JSON line.
// [impl->req~ctl.status~1]
// [impl->req~ctl.json~1]
fn render(ctx: &Ctx, what: &What) -> Result<String, CtlError> {
    match what {
        What::Nodes => {
            let rows = nodes::fetch(ctx.c, None)?;
            Ok(if ctx.json() {
                format!("{}\n", nodes::json(&rows).to_line())
            } else {
                nodes::table(&rows, true)
            })
        }
        What::Node(node) => {
            let list = units::fetch(ctx.c, Some(node), None)?;
            Ok(if ctx.json() {
                format!(
                    "{}\n",
                    Json::Array(list.iter().map(units::Unit::json).collect()).to_line()
                )
            } else {
                units::units_table(&list, false, true)
            })
        }
        What::Units(node, names) => {
            let list = unit_statuses(ctx, node, names)?;
            if ctx.json() {
                let items = list
                    .iter()
                    .map(|s| {
                        json::obj([
                            ("node", json::str(*node)),
                            ("unit", json::str(&s.unit)),
                            ("load", json::str(&s.load)),
                            ("active", json::str(&s.active)),
                            ("sub", json::str(&s.sub)),
                            ("freezer", json::str(&s.freezer)),
                            ("unit_file_state", json::str(&s.unit_file_state)),
                            ("description", json::str(&s.description)),
                        ])
                    })
                    .collect();
                return Ok(format!("{}\n", Json::Array(items).to_line()));
            }
            let rows: Vec<Vec<String>> = list
                .into_iter()
                .map(|s| {
                    vec![
                        s.unit,
                        s.load,
                        s.active,
                        s.sub,
                        s.freezer,
                        s.unit_file_state,
                    ]
                })
                .collect();
            Ok(output::table(
                &["UNIT", "LOADED", "ACTIVE", "SUB", "FREEZER", "ENABLED"],
                &rows,
            ))
        }
    }
}

pub fn once(ctx: &Ctx, what: &What) -> Result<(), CtlError> {
    output::out(&render(ctx, what)?);
    Ok(())
}

/// Events within this long of each other cause one redraw.
const SETTLE: Duration = Duration::from_millis(150);

/// Signals that mean the shown state may have changed.
fn relevant(msg: &dbus::Message) -> bool {
    matches!(
        msg.member().as_deref(),
        Some("UnitStateChanged" | "UnitNew" | "UnitRemoved" | "NodeConnectionStateChanged")
    )
}

/// Draws, then redraws whenever a relevant event changed what is shown, until interrupted,
/// `count` redraws, or `timeout` seconds.
pub fn watch(
    ctx: &Ctx,
    what: &What,
    count: Option<u64>,
    timeout: Option<u64>,
) -> Result<(), CtlError> {
    let c = ctx.c;
    let waiter = Waiter::new(c, timeout)?;
    // Node state changes are broadcast by the manager; unit events come through a monitor.
    c.add_match(&format!(
        "type='signal',sender='{}',path='{}',interface='{}',member='NodeConnectionStateChanged'",
        protocol::MANAGER_BUS_NAME,
        protocol::MANAGER_PATH,
        protocol::MANAGER_IFACE
    ))?;
    let monitor = match what {
        What::Nodes => None,
        What::Node(node) => Some(super::monitor::open(c, node, &[])?),
        What::Units(node, names) => Some(super::monitor::open(c, node, names)?),
    };
    let tty = std::io::stdout().is_terminal();
    let mut shown = render(ctx, what)?;
    draw(&shown, tty, false);
    let separate = !ctx.json();
    let mut redraws = 0u64;
    let result = loop {
        if count.is_some_and(|n| redraws >= n) {
            break Ok(());
        }
        match waiter.next()? {
            Next::Stop => {
                let bounds = Bounds { count, timeout };
                break waiter
                    .count_not_reached(&bounds, redraws, "redraws")
                    .map_or(Ok(()), Err);
            }
            Next::Quiet => continue,
            Next::Message(m) if relevant(&m) => {}
            Next::Message(_) => continue,
        }
        // Let a burst of events settle, then draw once.
        while let Next::Message(_) = waiter.next_within(Some(SETTLE))? {}
        let now = match render(ctx, what) {
            Ok(s) => s,
            // A node going offline mid-watch is shown, not fatal.
            Err(e) => format!("hirtectl: {e}\n"),
        };
        if now != shown {
            draw(&now, tty, separate);
            shown = now;
            redraws += 1;
        }
    };
    if let Some(m) = monitor {
        super::monitor::close(c, &m);
    }
    result
}

/// `separate`: a blank line before a redrawn text table in a pipe (JSON is one document per
/// line anyway).
fn draw(text: &str, tty: bool, separate: bool) {
    let mut all = String::new();
    if tty {
        // Home and clear screen, so the table stays in place.
        all.push_str("\x1b[H\x1b[2J");
    } else if separate {
        all.push('\n');
    }
    all.push_str(text);
    output::out(&all);
}
