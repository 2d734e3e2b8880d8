//! The public D-Bus API (`org.containers.hirte.Manager`, `.Node`, `.Job`) as crossroads
//! interfaces. Handlers parse and type-check arguments (crossroads answers `InvalidArgs` on a
//! wrong signature) and hand the work to the model in `state`.

use crate::state::{job_path, lock, merr, Shared, UnitRow};
use dbus::arg::{AppendAll, ArgAll, ReadAll};
use dbus::Path;
use dbus_crossroads::{Crossroads, IfaceBuilder, IfaceToken};
use hirte_common::log;
use hirte_common::protocol::{self, error};
use std::collections::HashMap;

pub struct Tokens {
    pub job: IfaceToken<u32>,
}

/// Registers the interfaces and exports the manager and node objects.
pub fn export(cr: &mut Crossroads, shared: &Shared) -> Tokens {
    let manager = register_manager(cr, shared.clone());
    let node = register_node(cr, shared.clone());
    let job = register_job(cr, shared.clone());
    cr.insert(protocol::MANAGER_PATH, &[manager], ());
    let nodes: Vec<(String, usize)> = lock(shared)
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.path.clone(), i))
        .collect();
    for (path, idx) in nodes {
        cr.insert(path, &[node], idx);
    }
    Tokens { job }
}

// [impl->req~api.manager~1]
fn register_manager(cr: &mut Crossroads, st: Shared) -> IfaceToken<()> {
    cr.register(protocol::MANAGER_IFACE, move |b: &mut IfaceBuilder<()>| {
        let s = st.clone();
        b.method("ListNodes", (), ("nodes",), move |_, _, ()| {
            let m = lock(&s);
            let rows: Vec<(String, Path<'static>, String, String)> = m
                .nodes
                .iter()
                .filter_map(|n| {
                    let p = Path::new(n.path.clone()).ok()?;
                    Some((n.name.clone(), p, n.status().to_string(), n.peer_ip.clone()))
                })
                .collect();
            Ok((rows,))
        });
        let s = st.clone();
        b.method("GetNode", ("name",), ("node",), move |_, _, (name,): (String,)| {
            let m = lock(&s);
            let idx = m.node_index(&name).ok_or_else(|| {
                merr(
                    error::NODE_NOT_FOUND,
                    format!("node '{name}' not found (not in AllowedNodeNames)"),
                )
            })?;
            let path = m
                .nodes
                .get(idx)
                .and_then(|n| Path::new(n.path.clone()).ok())
                .ok_or_else(|| merr(error::NODE_NOT_FOUND, "no such node"))?;
            Ok((path,))
        });
        let s = st.clone();
        b.method_with_cr_custom::<(), (HashMap<String, Vec<UnitRow>>,), _, _>(
            "ListUnits",
            (),
            ("units",),
            move |ctx, _, ()| lock(&s).list_all_units(ctx),
        );
        b.method("SetLogLevel", ("level",), (), move |_, _, (level,): (String,)| {
            let lvl = level
                .parse::<log::Level>()
                .map_err(|e| merr(error::INVALID_ARGS, e))?;
            log::set_level(lvl);
            hirte_common::log_info!("Log level set to {lvl}");
            Ok(())
        });
        b.signal::<(u32, Path<'static>), _>("JobNew", ("id", "job"));
        b.signal::<(u32, Path<'static>, String, String, String), _>(
            "JobRemoved",
            ("id", "job", "node", "unit", "result"),
        );
        b.signal::<(String, String), _>("NodeConnectionStateChanged", ("node", "state"));
        let s = st.clone();
        b.property::<String, _>("Status")
            .get(move |_, _| Ok(lock(&s).status().to_string()))
            .emits_changed_true();
        b.property::<String, _>("LogLevel")
            .get(|_, _| Ok(log::level().to_string()))
            .emits_changed_false();
        b.property::<String, _>("LogTarget")
            .get(|_, _| Ok(log::target().to_string()))
            .emits_changed_const();
    })
}

/// A Node method relayed as is to the agent (same name, same arguments).
fn relay<IA, OA>(
    b: &mut IfaceBuilder<usize>,
    st: &Shared,
    member: &'static str,
    ins: IA::strs,
    outs: OA::strs,
) where
    IA: ArgAll + ReadAll + AppendAll + Send + 'static,
    OA: ArgAll + AppendAll,
{
    let s = st.clone();
    b.method_with_cr_custom::<IA, OA, _, _>(member, ins, outs, move |ctx, cr, args: IA| {
        let Some(idx) = cr.data_mut::<usize>(ctx.path()).copied() else {
            return Some(ctx);
        };
        lock(&s).relay(idx, member, |m| m.append_all(args), ctx)
    });
}

/// A Node method that creates a job.
fn job_method(b: &mut IfaceBuilder<usize>, st: &Shared, member: &'static str, job_type: &'static str) {
    let s = st.clone();
    b.method_with_cr_custom::<(String, String), (Path<'static>,), _, _>(
        member,
        ("unit", "mode"),
        ("job",),
        move |ctx, cr, (unit, mode): (String, String)| {
            let Some(idx) = cr.data_mut::<usize>(ctx.path()).copied() else {
                return Some(ctx);
            };
            lock(&s).start_job(idx, member, job_type, unit, mode, ctx)
        },
    );
}

type UnitFileChange = (String, String, String);

// [impl->req~api.node~1]
fn register_node(cr: &mut Crossroads, st: Shared) -> IfaceToken<usize> {
    cr.register(protocol::NODE_IFACE, move |b: &mut IfaceBuilder<usize>| {
        job_method(b, &st, "StartUnit", "start");
        job_method(b, &st, "StopUnit", "stop");
        job_method(b, &st, "RestartUnit", "restart");
        job_method(b, &st, "ReloadUnit", "reload");
        relay::<(), (Vec<UnitRow>,)>(b, &st, "ListUnits", (), ("units",));
        relay::<(String, String), (dbus::arg::PropMap,)>(
            b,
            &st,
            "GetUnitProperties",
            ("unit", "interface"),
            ("props",),
        );
        relay::<(String, String, String), (dbus::arg::Variant<Box<dyn dbus::arg::RefArg>>,)>(
            b,
            &st,
            "GetUnitProperty",
            ("unit", "interface", "property"),
            ("value",),
        );
        relay::<(Vec<String>, bool, bool), (bool, Vec<UnitFileChange>)>(
            b,
            &st,
            "EnableUnitFiles",
            ("files", "runtime", "force"),
            ("carries_install_info", "changes"),
        );
        relay::<(Vec<String>, bool), (Vec<UnitFileChange>,)>(
            b,
            &st,
            "DisableUnitFiles",
            ("files", "runtime"),
            ("changes",),
        );
        relay::<(), ()>(b, &st, "Reload", (), ());
        b.property::<String, _>("Name")
            .get({
                let s = st.clone();
                move |_, idx| Ok(lock(&s).nodes.get(*idx).map(|n| n.name.clone()).unwrap_or_default())
            })
            .emits_changed_const();
        b.property::<String, _>("Status")
            .get({
                let s = st.clone();
                move |_, idx| {
                    Ok(lock(&s)
                        .nodes
                        .get(*idx)
                        .map(|n| n.status().to_string())
                        .unwrap_or_default())
                }
            })
            .emits_changed_true();
        b.property::<String, _>("PeerIp")
            .get({
                let s = st.clone();
                move |_, idx| Ok(lock(&s).nodes.get(*idx).map(|n| n.peer_ip.clone()).unwrap_or_default())
            })
            .emits_changed_false();
        b.property::<u64, _>("LastSeenTimestamp")
            .get({
                let s = st.clone();
                move |_, idx| Ok(lock(&s).nodes.get(*idx).map(|n| n.last_seen_realtime_us).unwrap_or(0))
            })
            .emits_changed_false();
        b.property::<u64, _>("LastSeenTimestampMonotonic")
            .get({
                let s = st.clone();
                move |_, idx| Ok(lock(&s).nodes.get(*idx).map(|n| n.last_seen_monotonic_us).unwrap_or(0))
            })
            .emits_changed_false();
    })
}

// [impl->req~api.job~1]
fn register_job(cr: &mut Crossroads, st: Shared) -> IfaceToken<u32> {
    cr.register(protocol::JOB_IFACE, move |b: &mut IfaceBuilder<u32>| {
        let s = st.clone();
        b.method_with_cr_custom::<(), (), _, _>("Cancel", (), (), move |ctx, cr, ()| {
            let Some(id) = cr.data_mut::<u32>(ctx.path()).copied() else {
                return Some(ctx);
            };
            let mut m = lock(&s);
            let Some(node) = m.jobs.get(&id).map(|j| j.node) else {
                let mut ctx = ctx;
                ctx.reply::<()>(Err(merr(error::INVALID_ARGS, format!("job {id} has ended"))));
                return Some(ctx);
            };
            m.relay(node, "JobCancel", |msg| msg.append_all((id,)), ctx)
        });
        let field = |st: &Shared, f: fn(&crate::state::Job, &crate::state::Manager) -> String| {
            let s = st.clone();
            move |_: &mut dbus_crossroads::PropContext, id: &mut u32| {
                let m = lock(&s);
                m.jobs
                    .get(id)
                    .map(|j| f(j, &m))
                    .ok_or_else(|| merr(error::INVALID_ARGS, format!("job {id} has ended")))
            }
        };
        b.property::<u32, _>("Id").get(|_, id| Ok(*id)).emits_changed_const();
        b.property::<String, _>("Node")
            .get(field(&st, |j, m| {
                m.nodes.get(j.node).map(|n| n.name.clone()).unwrap_or_default()
            }))
            .emits_changed_const();
        b.property::<String, _>("Unit")
            .get(field(&st, |j, _| j.unit.clone()))
            .emits_changed_const();
        b.property::<String, _>("JobType")
            .get(field(&st, |j, _| j.job_type.to_string()))
            .emits_changed_const();
        b.property::<String, _>("State")
            .get(field(&st, |j, _| j.state.clone()))
            .emits_changed_true();
    })
}

/// Path of a job object, for the core's object operations.
pub fn job_object_path(id: u32) -> Option<Path<'static>> {
    Path::new(job_path(id)).ok()
}
