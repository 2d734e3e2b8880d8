//! `is-online node|agent|system`: exit 0 when online, optionally waiting for it.

use super::Ctx;
use crate::cli::{OnlineTarget, Wait};
use crate::client::CtlError;
use crate::signals::Interrupt;
use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
use dbus::blocking::Connection;
use hirte_common::protocol::{self, NODE_ONLINE};
use std::time::{Duration, Instant};

/// Between two looks while waiting: short enough to answer promptly, cheap for the manager.
const POLL: Duration = Duration::from_millis(100);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Looks with `probe` until it reports online or `wait` (ms) passed; prints the last state
/// unless quiet. 0 when online, 1 otherwise.
fn check(
    wait: Wait,
    online: &str,
    mut probe: impl FnMut() -> Result<String, CtlError>,
) -> Result<u8, CtlError> {
    let deadline = Instant::now() + Duration::from_millis(wait.wait.unwrap_or(0));
    let interrupt = match wait.wait {
        Some(_) => Some(Interrupt::install().map_err(|e| CtlError::failed(e.to_string()))?),
        None => None,
    };
    let state = loop {
        let state = probe()?;
        let stop = state == online
            || Instant::now() >= deadline
            || interrupt.as_ref().is_some_and(Interrupt::raised);
        if stop {
            break state;
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    };
    if !wait.quiet {
        crate::output::line(&state);
    }
    Ok(if state == online { 0 } else { 1 })
}

// [impl->req~ctl.is-online~1]
pub fn online(ctx: &Ctx, what: &OnlineTarget) -> Result<u8, CtlError> {
    let c = ctx.c;
    match what {
        OnlineTarget::Node { name, wait } => {
            let path = c.node_path(name)?;
            check(*wait, NODE_ONLINE, || {
                c.property::<String>(&path, protocol::NODE_IFACE, "Status")
            })
        }
        OnlineTarget::System { wait } => check(*wait, "up", || {
            c.property::<String>(protocol::MANAGER_PATH, protocol::MANAGER_IFACE, "Status")
        }),
        // Needs no manager; dispatched before connecting.
        OnlineTarget::Agent { wait } => agent(*wait),
    }
}

fn has_agent(conn: &Connection) -> bool {
    let proxy = conn.with_proxy(
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        CALL_TIMEOUT,
    );
    proxy
        .method_call::<(bool,), _, _, _>(
            "org.freedesktop.DBus",
            "NameHasOwner",
            (protocol::AGENT_BUS_NAME,),
        )
        .is_ok_and(|(b,)| b)
}

/// The local agent's connection state: on the session bus when DBUS_SESSION_BUS_ADDRESS names
/// one that has the agent (an agent run with --user), else on the system bus.
fn agent_status() -> Result<String, CtlError> {
    let mut buses = Vec::new();
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some() {
        if let Ok(conn) = Connection::new_session() {
            buses.push(conn);
        }
    }
    if let Ok(conn) = Connection::new_system() {
        buses.push(conn);
    }
    let conn = buses.into_iter().find(has_agent).ok_or_else(|| {
        CtlError::failed(format!(
            "no hirte-agent running here ({} has no owner on the session or system bus)",
            protocol::AGENT_BUS_NAME
        ))
    })?;
    let proxy = conn.with_proxy(
        protocol::AGENT_BUS_NAME,
        protocol::MANAGER_PATH,
        CALL_TIMEOUT,
    );
    proxy
        .get::<String>(protocol::AGENT_IFACE, "Status")
        .map_err(|e| {
            CtlError::failed(format!(
                "cannot read the agent's Status: {}",
                e.message().unwrap_or("unknown error")
            ))
        })
}

// [impl->req~ctl.is-online~1]
pub fn agent(wait: Wait) -> Result<u8, CtlError> {
    check(wait, NODE_ONLINE, || match agent_status() {
        // While waiting, an agent that is not there (yet) is simply not online.
        Err(CtlError::Failed { .. }) if wait.wait.is_some() => Ok("offline".to_string()),
        other => other,
    })
}
