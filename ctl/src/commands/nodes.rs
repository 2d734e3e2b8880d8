//! `list-nodes` and the node table of `status`.

use super::Ctx;
use crate::client::{Client, CtlError};
use crate::glob::{keep, Glob};
use crate::json::{self, Json};
use crate::output;
use hirte_common::protocol;
use std::time::SystemTime;

pub struct NodeRow {
    pub name: String,
    pub state: String,
    pub ip: String,
    pub last_seen_usec: u64,
}

/// Every node the manager knows, in its order.
pub fn fetch(c: &Client, filter: Option<&Glob>) -> Result<Vec<NodeRow>, CtlError> {
    let (nodes,): (Vec<(String, dbus::Path<'static>, String, String)>,) =
        c.manager("ListNodes", ())?;
    let mut rows = Vec::new();
    for (name, path, state, ip) in nodes {
        if !keep(filter, &name) {
            continue;
        }
        let last_seen_usec: u64 = c.property(&path, protocol::NODE_IFACE, "LastSeenTimestamp")?;
        rows.push(NodeRow {
            name,
            state,
            ip,
            last_seen_usec,
        });
    }
    Ok(rows)
}

/// `[{"node","state","ip","last_seen_usec"}]`, shared by list-nodes and status.
pub fn json(rows: &[NodeRow]) -> Json {
    Json::Array(
        rows.iter()
            .map(|r| {
                json::obj([
                    ("node", json::str(&r.name)),
                    ("state", json::str(&r.state)),
                    ("ip", json::str(&r.ip)),
                    ("last_seen_usec", Json::from(r.last_seen_usec)),
                ])
            })
            .collect(),
    )
}

/// The text table; `with_ip` adds the IP column (status), which list-nodes leaves out so that
/// the guide's `awk '{print $3, $4}'` still prints LAST SEEN.
pub fn table(rows: &[NodeRow], with_ip: bool) -> String {
    let now = SystemTime::now();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let seen = output::last_seen(r.last_seen_usec, now);
            if with_ip {
                // An empty cell would shift the columns for awk.
                let ip = if r.ip.is_empty() { "-" } else { r.ip.as_str() };
                vec![r.name.clone(), r.state.clone(), ip.to_string(), seen]
            } else {
                vec![r.name.clone(), r.state.clone(), seen]
            }
        })
        .collect();
    if with_ip {
        output::table(&["NODE", "STATE", "IP", "LAST SEEN"], &cells)
    } else {
        output::table(&["NODE", "STATE", "LAST SEEN"], &cells)
    }
}

// [impl->req~ctl.list-nodes~1]
// [impl->req~ctl.json~1]
pub fn list_nodes(ctx: &Ctx, filter: Option<&Glob>) -> Result<(), CtlError> {
    let rows = fetch(ctx.c, filter)?;
    if ctx.json() {
        output::print_json(&json(&rows));
    } else {
        output::out(&table(&rows, false));
    }
    Ok(())
}
