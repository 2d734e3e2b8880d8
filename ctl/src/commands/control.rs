//! Unit control beyond jobs (freeze, thaw, kill, reset-failed, set-property), default targets
//! and log levels.

use super::Ctx;
use crate::cli::KillWhom;
use crate::client::CtlError;
use crate::props;
use crate::signals::parse_signal;
use dbus::arg::{RefArg, Variant};
use hirte_common::protocol::{self, NODE_ONLINE};

// [impl->req~ctl.unit-control~1]
pub fn freeze(ctx: &Ctx, node: &str, unit: &str, on: bool) -> Result<(), CtlError> {
    let member = if on { "FreezeUnit" } else { "ThawUnit" };
    ctx.c.node(node, member, (unit,))
}

// [impl->req~ctl.unit-control~1]
pub fn kill(
    ctx: &Ctx,
    node: &str,
    unit: &str,
    whom: KillWhom,
    signal: &str,
) -> Result<(), CtlError> {
    let signo = parse_signal(signal).map_err(|e| CtlError::Usage(e.to_string()))?;
    ctx.c.node(node, "KillUnit", (unit, whom.as_str(), signo))
}

/// No node: every online node (offline ones have nothing to reset that we could reach).
// [impl->req~ctl.unit-control~1]
pub fn reset_failed(ctx: &Ctx, node: Option<&str>, units: &[String]) -> Result<(), CtlError> {
    let c = ctx.c;
    let Some(node) = node else {
        let (nodes,): (Vec<(String, dbus::Path<'static>, String, String)>,) =
            c.manager("ListNodes", ())?;
        for (_, path, _, _) in nodes.iter().filter(|n| n.2 == NODE_ONLINE) {
            c.call::<_, ()>(path, protocol::NODE_IFACE, "ResetFailed", ())?;
        }
        return Ok(());
    };
    let path = c.node_path(node)?;
    if units.is_empty() {
        return c.call(&path, protocol::NODE_IFACE, "ResetFailed", ());
    }
    for unit in units {
        c.call::<_, ()>(&path, protocol::NODE_IFACE, "ResetFailedUnit", (unit,))?;
    }
    Ok(())
}

/// Runtime only, as `systemctl set-property --runtime`: safer on a safety system, since a
/// reboot restores the configured values.
// [impl->req~ctl.unit-control~1]
pub fn set_property(
    ctx: &Ctx,
    node: &str,
    unit: &str,
    assignments: &[String],
) -> Result<(), CtlError> {
    let mut list: Vec<(String, Variant<Box<dyn RefArg>>)> = Vec::new();
    for a in assignments {
        let (name, value) =
            props::parse_assignment(a).map_err(|e| CtlError::Usage(e.to_string()))?;
        list.push((name, value.into_variant()));
    }
    ctx.c.node(node, "SetUnitProperties", (unit, true, list))
}

// [impl->req~ctl.default-target~1]
pub fn get_default(ctx: &Ctx, node: &str) -> Result<(), CtlError> {
    let (target,): (String,) = ctx.c.node(node, "GetDefaultTarget", ())?;
    crate::output::line(&target);
    Ok(())
}

/// With force, as systemctl does: an existing default.target link is replaced.
// [impl->req~ctl.default-target~1]
pub fn set_default(ctx: &Ctx, node: &str, target: &str) -> Result<(), CtlError> {
    let (changes,): (Vec<(String, String, String)>,) =
        ctx.c.node(node, "SetDefaultTarget", (target, true))?;
    super::units::print_changes(&changes);
    Ok(())
}

// [impl->req~ctl.set-loglevel~1]
pub fn set_loglevel(ctx: &Ctx, node: Option<&str>, level: &str) -> Result<(), CtlError> {
    match node {
        Some(n) => ctx.c.node(n, "SetLogLevel", (level,)),
        None => ctx.c.manager("SetLogLevel", (level,)),
    }
}
