//! `org.containers.hirte.Monitor`: subscriptions to unit events, owned by one bus client.

use super::{caller, merr};
use crate::monitor::{MonitorError, WILDCARD};
use crate::state::{lock, Manager, Shared};
use dbus_crossroads::{Context, Crossroads, IfaceBuilder, IfaceToken, MethodErr};
use hirte_common::protocol::{self, error};
use std::sync::MutexGuard;

/// A subscription to a node that can never exist would stay silent forever: refuse it.
fn check_node_known(m: &Manager, node: &str) -> Result<(), MethodErr> {
    if node == WILDCARD || m.nodes().index(node).is_some() {
        Ok(())
    } else {
        Err(merr(
            error::NODE_NOT_FOUND,
            format!("node '{node}' not found (not in AllowedNodeNames)"),
        ))
    }
}

pub(super) fn monitor_err(e: MonitorError) -> MethodErr {
    use MonitorError as E;
    let name = match e {
        E::NoSuchSubscription(_) | E::NoSuchPeer(_) => error::NO_SUCH_SUBSCRIPTION,
        E::NotOwner => error::NOT_ALLOWED,
        E::EmptyName | E::NoSuchMonitor(_) => error::INVALID_ARGS,
        _ => error::BUSY,
    };
    merr(name, e.to_string())
}

/// The model, locked, once the caller is known to own monitor `id`.
fn owned<'a>(s: &'a Shared, ctx: &Context, id: u32) -> Result<MutexGuard<'a, Manager>, MethodErr> {
    let m = lock(s);
    m.monitors()
        .check_owner(id, &caller(ctx))
        .map_err(monitor_err)?;
    Ok(m)
}

// [impl->req~api.monitor~1]
pub(super) fn register(cr: &mut Crossroads, st: Shared) -> IfaceToken<u32> {
    cr.register(protocol::MONITOR_IFACE, move |b: &mut IfaceBuilder<u32>| {
        let s = st.clone();
        b.method("Close", (), (), move |ctx, id: &mut u32, ()| {
            owned(&s, ctx, *id)?.close_monitor(*id, "closed by its owner");
            Ok(())
        });
        let s = st.clone();
        b.method(
            "Subscribe",
            ("node", "unit"),
            ("id",),
            move |ctx, id: &mut u32, (node, unit): (String, String)| {
                let mut m = owned(&s, ctx, *id)?;
                check_node_known(&m, &node)?;
                let sub = m
                    .change_monitors(|mons, _| mons.subscribe(*id, &node, vec![unit]))
                    .map_err(monitor_err)?;
                Ok((sub,))
            },
        );
        let s = st.clone();
        b.method(
            "SubscribeList",
            ("node", "units"),
            ("id",),
            move |ctx, id: &mut u32, (node, units): (String, Vec<String>)| {
                let mut m = owned(&s, ctx, *id)?;
                check_node_known(&m, &node)?;
                let sub = m
                    .change_monitors(|mons, _| mons.subscribe(*id, &node, units))
                    .map_err(monitor_err)?;
                Ok((sub,))
            },
        );
        let s = st.clone();
        b.method(
            "Unsubscribe",
            ("id",),
            (),
            move |ctx, id: &mut u32, (sub,): (u32,)| {
                owned(&s, ctx, *id)?
                    .change_monitors(|mons, _| mons.unsubscribe(*id, sub).map(drop))
                    .map_err(monitor_err)
            },
        );
        let s = st.clone();
        b.method(
            "AddPeer",
            ("bus_name",),
            ("id",),
            move |ctx, id: &mut u32, (name,): (String,)| {
                let mut m = owned(&s, ctx, *id)?;
                if dbus::strings::BusName::new(name.clone()).is_err() {
                    return Err(merr(
                        error::INVALID_ARGS,
                        format!("'{name}' is not a bus name"),
                    ));
                }
                let peer = m
                    .change_monitors(|mons, _| mons.add_peer(*id, &name))
                    .map_err(monitor_err)?;
                Ok((peer,))
            },
        );
        let s = st.clone();
        b.method(
            "RemovePeer",
            ("id", "reason"),
            (),
            move |ctx, id: &mut u32, (peer, reason): (u32, String)| {
                owned(&s, ctx, *id)?
                    .change_monitors(|mons, out| {
                        mons.remove_peer_with_notice(*id, peer, &reason, out)
                    })
                    .map_err(monitor_err)
            },
        );
        b.signal::<(String, String, String, dbus::arg::PropMap), _>(
            "UnitPropertiesChanged",
            ("node", "unit", "interface", "props"),
        );
        b.signal::<(String, String, String, String, String), _>(
            "UnitStateChanged",
            ("node", "unit", "active_state", "sub_state", "reason"),
        );
        b.signal::<(String, String, String), _>("UnitNew", ("node", "unit", "reason"));
        b.signal::<(String, String, String), _>("UnitRemoved", ("node", "unit", "reason"));
        b.signal::<(String,), _>("PeerRemoved", ("reason",));
    })
}
