//! The public D-Bus API (`org.containers.hirte.Manager`, `.Node`, `.Job`) as crossroads
//! interfaces. Handlers parse and type-check arguments (crossroads answers `InvalidArgs` on a
//! wrong signature) and hand the work to the model in `state`.

use crate::state::{job_path, lock, merr, FanOut, Shared, UnitRow};
use dbus::arg::{AppendAll, ArgAll, ReadAll, RefArg, Variant};
use dbus::Path;
use dbus_crossroads::{Crossroads, IfaceBuilder, IfaceToken};
use hirte_common::log;
use hirte_common::protocol::{self, error};
use std::collections::HashMap;
use std::time::Duration;

pub struct Tokens {
    pub job: IfaceToken<u32>,
    pub monitor: IfaceToken<u32>,
}

/// Registers the interfaces and exports the manager and node objects.
pub fn export(cr: &mut Crossroads, shared: &Shared) -> Tokens {
    let manager = register_manager(cr, shared.clone());
    let node = register_node(cr, shared.clone());
    let job = register_job(cr, shared.clone());
    let monitor = register_monitor(cr, shared.clone());
    let metrics = register_metrics(cr);
    cr.insert(protocol::MANAGER_PATH, &[manager], ());
    cr.insert(crate::state::METRICS_PATH, &[metrics], ());
    let nodes: Vec<(String, usize)> = lock(shared)
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.path.clone(), i))
        .collect();
    for (path, idx) in nodes {
        cr.insert(path, &[node], idx);
    }
    Tokens { job, monitor }
}

fn register_metrics(cr: &mut Crossroads) -> IfaceToken<()> {
    cr.register(crate::state::METRICS_IFACE, |b: &mut IfaceBuilder<()>| {
        b.signal::<(String, String, String, u64, u64), _>(
            "StartUnitJobMetrics",
            (
                "node",
                "job_id",
                "unit",
                "job_measured_time_micros",
                "unit_start_prop_time_micros",
            ),
        );
        b.signal::<(String, String, String, u64), _>(
            "AgentJobMetrics",
            ("node", "unit", "method", "systemd_job_time_micros"),
        );
    })
}

/// A subscription to a node that can never exist would stay silent forever: refuse it.
fn check_node_known(
    m: &crate::state::Manager,
    node: &str,
) -> Result<(), dbus_crossroads::MethodErr> {
    if node == crate::monitor::WILDCARD || m.node_index(node).is_some() {
        Ok(())
    } else {
        Err(merr(
            error::NODE_NOT_FOUND,
            format!("node '{node}' not found (not in AllowedNodeNames)"),
        ))
    }
}

fn caller(ctx: &dbus_crossroads::Context) -> String {
    ctx.message()
        .sender()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn monitor_err(e: crate::monitor::MonitorError) -> dbus_crossroads::MethodErr {
    use crate::monitor::MonitorError as E;
    let name = match e {
        E::NoSuchSubscription(_) | E::NoSuchPeer(_) => error::NO_SUCH_SUBSCRIPTION,
        E::NotOwner => error::NOT_ALLOWED,
        E::EmptyName | E::NoSuchMonitor(_) => error::INVALID_ARGS,
        _ => error::BUSY,
    };
    merr(name, e.to_string())
}

// [impl->req~api.monitor~1]
fn register_monitor(cr: &mut Crossroads, st: Shared) -> IfaceToken<u32> {
    cr.register(protocol::MONITOR_IFACE, move |b: &mut IfaceBuilder<u32>| {
        let s = st.clone();
        b.method("Close", (), (), move |ctx, id: &mut u32, ()| {
            let mut m = lock(&s);
            m.monitors
                .check_owner(*id, &caller(ctx))
                .map_err(monitor_err)?;
            m.close_monitor(*id, "closed by its owner");
            Ok(())
        });
        let s = st.clone();
        b.method(
            "Subscribe",
            ("node", "unit"),
            ("id",),
            move |ctx, id: &mut u32, (node, unit): (String, String)| {
                let mut m = lock(&s);
                m.monitors
                    .check_owner(*id, &caller(ctx))
                    .map_err(monitor_err)?;
                check_node_known(&m, &node)?;
                let sub = m
                    .monitors
                    .subscribe(*id, &node, vec![unit])
                    .map_err(monitor_err)?;
                m.sync_all_subscriptions();
                Ok((sub,))
            },
        );
        let s = st.clone();
        b.method(
            "SubscribeList",
            ("node", "units"),
            ("id",),
            move |ctx, id: &mut u32, (node, units): (String, Vec<String>)| {
                let mut m = lock(&s);
                m.monitors
                    .check_owner(*id, &caller(ctx))
                    .map_err(monitor_err)?;
                check_node_known(&m, &node)?;
                let sub = m
                    .monitors
                    .subscribe(*id, &node, units)
                    .map_err(monitor_err)?;
                m.sync_all_subscriptions();
                Ok((sub,))
            },
        );
        let s = st.clone();
        b.method(
            "Unsubscribe",
            ("id",),
            (),
            move |ctx, id: &mut u32, (sub,): (u32,)| {
                let mut m = lock(&s);
                m.monitors
                    .check_owner(*id, &caller(ctx))
                    .map_err(monitor_err)?;
                m.monitors.unsubscribe(*id, sub).map_err(monitor_err)?;
                m.sync_all_subscriptions();
                Ok(())
            },
        );
        let s = st.clone();
        b.method(
            "AddPeer",
            ("bus_name",),
            ("id",),
            move |ctx, id: &mut u32, (name,): (String,)| {
                let mut m = lock(&s);
                m.monitors
                    .check_owner(*id, &caller(ctx))
                    .map_err(monitor_err)?;
                if dbus::strings::BusName::new(name.clone()).is_err() {
                    return Err(merr(
                        error::INVALID_ARGS,
                        format!("'{name}' is not a bus name"),
                    ));
                }
                let peer = m.monitors.add_peer(*id, &name).map_err(monitor_err)?;
                Ok((peer,))
            },
        );
        let s = st.clone();
        b.method(
            "RemovePeer",
            ("id", "reason"),
            (),
            move |ctx, id: &mut u32, (peer, reason): (u32, String)| {
                let mut m = lock(&s);
                m.monitors
                    .check_owner(*id, &caller(ctx))
                    .map_err(monitor_err)?;
                let name = m.monitors.remove_peer(*id, peer).map_err(monitor_err)?;
                m.notify_peer_removed(*id, &name, &reason);
                Ok(())
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
        b.method(
            "GetNode",
            ("name",),
            ("node",),
            move |_, _, (name,): (String,)| {
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
            },
        );
        let s = st.clone();
        b.method_with_cr_custom::<(), (HashMap<String, Vec<UnitRow>>,), _, _>(
            "ListUnits",
            (),
            ("units",),
            move |ctx, _, ()| lock(&s).fan_out("ListUnits", FanOut::Units, Some(ctx)),
        );
        let s = st.clone();
        b.method("CreateMonitor", (), ("monitor",), move |ctx, _, ()| {
            let mut m = lock(&s);
            let owner = caller(ctx);
            let id = m.monitors.create(&owner).map_err(monitor_err)?;
            m.object_ops.push(crate::state::ObjectOp::AddMonitor(id));
            let path = Path::new(crate::state::monitor_path(id))
                .map_err(|e| merr(error::INVALID_ARGS, e))?;
            Ok((path,))
        });
        let s = st.clone();
        b.method_with_cr_custom::<(), (HashMap<String, Vec<(String, String)>>,), _, _>(
            "ListUnitFiles",
            (),
            ("unit_files",),
            move |ctx, _, ()| lock(&s).fan_out("ListUnitFiles", FanOut::UnitFiles, Some(ctx)),
        );
        for (member, on) in [("EnableMetrics", true), ("DisableMetrics", false)] {
            let s = st.clone();
            b.method_with_cr_custom::<(), (), _, _>(member, (), (), move |ctx, _, ()| {
                let mut m = lock(&s);
                m.metrics = on;
                hirte_common::log_info!("Metrics {}", if on { "enabled" } else { "disabled" });
                m.fan_out(member, FanOut::Ack, Some(ctx))
            });
        }
        b.method(
            "SetLogLevel",
            ("level",),
            (),
            move |_, _, (level,): (String,)| {
                let lvl = level
                    .parse::<log::Level>()
                    .map_err(|e| merr(error::INVALID_ARGS, e))?;
                log::set_level(lvl);
                hirte_common::log_info!("Log level set to {lvl}");
                Ok(())
            },
        );
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
    IA: ArgAll + ReadAll + AppendAll + 'static,
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
fn job_method(
    b: &mut IfaceBuilder<usize>,
    st: &Shared,
    member: &'static str,
    job_type: &'static str,
) {
    let s = st.clone();
    b.method_with_cr_custom::<(String, String), (Path<'static>,), _, _>(
        member,
        ("unit", "mode"),
        ("job",),
        move |ctx, cr, (unit, mode): (String, String)| {
            let Some(idx) = cr.data_mut::<usize>(ctx.path()).copied() else {
                return Some(ctx);
            };
            let fill = |m: &mut dbus::Message, id: u32| m.append_all((unit.clone(), mode, id));
            lock(&s).start_job(idx, member, job_type, unit.clone(), fill, ctx)
        },
    );
}

type Props = Vec<(String, Variant<Box<dyn RefArg>>)>;
type AuxUnits = Vec<(String, Props)>;

/// `StartTransientUnit`: a job like `StartUnit`, with the unit's properties.
fn transient_method(b: &mut IfaceBuilder<usize>, st: &Shared) {
    let s = st.clone();
    b.method_with_cr_custom::<(String, String, Props, AuxUnits), (Path<'static>,), _, _>(
        "StartTransientUnit",
        ("name", "mode", "properties", "aux"),
        ("job",),
        move |ctx, cr, (name, mode, props, aux): (String, String, Props, AuxUnits)| {
            let Some(idx) = cr.data_mut::<usize>(ctx.path()).copied() else {
                return Some(ctx);
            };
            let fill =
                |m: &mut dbus::Message, id: u32| m.append_all((name.clone(), mode, props, aux, id));
            lock(&s).start_job(idx, "StartTransientUnit", "start", name.clone(), fill, ctx)
        },
    );
}

/// Longest command `Exec` may run; a larger timeout is refused, not silently clipped.
pub const EXEC_MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Timeout of an `Exec` whose caller passed 0.
pub const EXEC_DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Arguments one `Exec` may pass.
pub const EXEC_MAX_ARGS: usize = 256;

// [impl->req~api.exec~1]
fn exec_method(b: &mut IfaceBuilder<usize>, st: &Shared) {
    let s = st.clone();
    b.method_with_cr_custom::<(Vec<String>, u64), (i32, Vec<u8>, Vec<u8>), _, _>(
        "Exec",
        ("argv", "timeout_usec"),
        ("exit_status", "stdout", "stderr"),
        move |mut ctx, cr, (argv, timeout_usec): (Vec<String>, u64)| {
            let Some(idx) = cr.data_mut::<usize>(ctx.path()).copied() else {
                return Some(ctx);
            };
            let mut m = lock(&s);
            let refusal = if !m.cfg.allow_exec {
                Some((
                    error::NOT_ALLOWED,
                    "Exec is disabled on this manager (AllowExec=no)".to_string(),
                ))
            } else if argv.is_empty() || argv.len() > EXEC_MAX_ARGS {
                Some((
                    error::INVALID_ARGS,
                    format!("Exec takes 1 to {EXEC_MAX_ARGS} arguments"),
                ))
            } else if Duration::from_micros(timeout_usec) > EXEC_MAX_TIMEOUT {
                Some((
                    error::INVALID_ARGS,
                    format!(
                        "Exec timeout above the maximum of {}s",
                        EXEC_MAX_TIMEOUT.as_secs()
                    ),
                ))
            } else {
                None
            };
            if let Some((name, text)) = refusal {
                ctx.reply::<()>(Err(merr(name, text)));
                return Some(ctx);
            }
            let timeout = match timeout_usec {
                0 => EXEC_DEFAULT_TIMEOUT,
                t => Duration::from_micros(t),
            };
            let micros = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX);
            // The agent enforces the timeout; the manager waits a little longer for its answer.
            let wait = timeout + m.cfg.agent_call_timeout;
            m.relay_within(idx, "Exec", |msg| msg.append_all((argv, micros)), ctx, wait)
        },
    );
}

type UnitFileChange = (String, String, String);

/// A Node property getter reading one field of the node the object stands for.
fn node_field<T: Default>(
    st: &Shared,
    f: fn(&crate::state::Node) -> T,
) -> impl FnMut(&mut dbus_crossroads::PropContext, &mut usize) -> Result<T, dbus_crossroads::MethodErr>
{
    let s = st.clone();
    move |_, idx| Ok(lock(&s).nodes.get(*idx).map(f).unwrap_or_default())
}

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
        transient_method(b, &st);
        exec_method(b, &st);
        relay::<(String,), ()>(b, &st, "FreezeUnit", ("unit",), ());
        relay::<(String,), ()>(b, &st, "ThawUnit", ("unit",), ());
        relay::<(String, String, i32), ()>(b, &st, "KillUnit", ("unit", "whom", "signal"), ());
        relay::<(String, bool, Props), ()>(
            b,
            &st,
            "SetUnitProperties",
            ("unit", "runtime", "properties"),
            (),
        );
        relay::<(), (Vec<(String, String)>,)>(b, &st, "ListUnitFiles", (), ("unit_files",));
        relay::<(String,), (String,)>(b, &st, "GetUnitFileState", ("file",), ("state",));
        relay::<(), ()>(b, &st, "ResetFailed", (), ());
        relay::<(String,), ()>(b, &st, "ResetFailedUnit", ("unit",), ());
        relay::<(), (String,)>(b, &st, "GetDefaultTarget", (), ("target",));
        relay::<(String, bool), (Vec<UnitFileChange>,)>(
            b,
            &st,
            "SetDefaultTarget",
            ("target", "force"),
            ("changes",),
        );
        relay::<(String,), ()>(b, &st, "SetLogLevel", ("level",), ());
        b.property::<String, _>("Name")
            .get(node_field(&st, |n| n.name.clone()))
            .emits_changed_const();
        b.property::<String, _>("Status")
            .get(node_field(&st, |n| n.status().to_string()))
            .emits_changed_true();
        b.property::<String, _>("PeerIp")
            .get(node_field(&st, |n| n.peer_ip.clone()))
            .emits_changed_false();
        b.property::<u64, _>("LastSeenTimestamp")
            .get(node_field(&st, |n| n.last_seen_realtime_us))
            .emits_changed_false();
        b.property::<u64, _>("LastSeenTimestampMonotonic")
            .get(node_field(&st, |n| n.last_seen_monotonic_us))
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
                ctx.reply::<()>(Err(merr(
                    error::INVALID_ARGS,
                    format!("job {id} has ended"),
                )));
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
        b.property::<u32, _>("Id")
            .get(|_, id| Ok(*id))
            .emits_changed_const();
        b.property::<String, _>("Node")
            .get(field(&st, |j, m| {
                m.nodes
                    .get(j.node)
                    .map(|n| n.name.clone())
                    .unwrap_or_default()
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

/// Input signatures of every method served, keyed by (interface, member).
pub type Signatures = std::collections::HashMap<(String, String), String>;

/// Reads the input signature of every method from our own introspection data, so the table
/// cannot drift from the handlers. The core refuses calls whose arguments differ with
/// `InvalidArgs`: crossroads alone answers a wrong type with `Failed` and ignores extra
/// arguments.
// [impl->req~api.errors~1]
pub fn input_signatures(cr: &mut Crossroads, tokens: &Tokens, node: Option<String>) -> Signatures {
    // Job and monitor objects exist only at run time: introspect a stand-in of each.
    let (job, monitor) = (
        job_object_path(0),
        Path::new(crate::state::monitor_path(0)).ok(),
    );
    if let Some(p) = &job {
        cr.insert(p.clone(), &[tokens.job], 0u32);
    }
    if let Some(p) = &monitor {
        cr.insert(p.clone(), &[tokens.monitor], 0u32);
    }
    let mut paths = vec![protocol::MANAGER_PATH.to_string()];
    paths.extend(node);
    paths.extend(job.iter().map(|p| p.to_string()));
    paths.extend(monitor.iter().map(|p| p.to_string()));
    let mut table = Signatures::new();
    for path in paths {
        if let Some(xml) = introspect(cr, &path) {
            parse_introspection(&xml, &mut table);
        }
    }
    if let Some(p) = &job {
        let _ = cr.remove::<u32>(p);
    }
    if let Some(p) = &monitor {
        let _ = cr.remove::<u32>(p);
    }
    table
}

fn introspect(cr: &mut Crossroads, path: &str) -> Option<String> {
    struct Collect(std::cell::RefCell<Vec<dbus::Message>>);
    impl dbus::channel::Sender for Collect {
        fn send(&self, msg: dbus::Message) -> Result<u32, ()> {
            self.0.borrow_mut().push(msg);
            Ok(0)
        }
    }
    let mut call = dbus::Message::new_method_call(
        protocol::MANAGER_BUS_NAME,
        path,
        "org.freedesktop.DBus.Introspectable",
        "Introspect",
    )
    .ok()?;
    call.set_serial(1);
    let sink = Collect(std::cell::RefCell::new(Vec::new()));
    cr.handle_message(call, &sink).ok()?;
    let reply = sink.0.into_inner().into_iter().next()?;
    reply.read1::<String>().ok()
}

/// The value of `attr="..."` in one XML tag.
fn attr<'a>(tag: &'a str, attr: &str) -> Option<&'a str> {
    let start = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
    let rest = tag.get(start..)?;
    rest.get(..rest.find('"')?)
}

/// Collects (interface, method) -> input signature from introspection XML.
fn parse_introspection(xml: &str, table: &mut Signatures) {
    let mut iface = String::new();
    let mut method: Option<(String, String)> = None;
    for raw in xml.split('<').skip(1) {
        let tag = raw.split('>').next().unwrap_or_default();
        if tag.starts_with("interface ") {
            iface = attr(tag, "name").unwrap_or_default().to_string();
        } else if tag.starts_with("method ") {
            let name = attr(tag, "name").unwrap_or_default().to_string();
            if tag.ends_with('/') {
                table.insert((iface.clone(), name), String::new());
            } else {
                method = Some((name, String::new()));
            }
        } else if tag.starts_with("arg ") {
            if let Some((_, sig)) = method.as_mut() {
                if attr(tag, "direction") != Some("out") {
                    sig.push_str(attr(tag, "type").unwrap_or_default());
                }
            }
        } else if tag.starts_with("/method") {
            if let Some((name, sig)) = method.take() {
                table.insert((iface.clone(), name), sig);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn introspection_gives_every_input_signature() {
        let cfg = hirte_common::config::ManagerConfig {
            allowed_node_names: vec!["n1".into()],
            ..Default::default()
        };
        let shared = std::sync::Arc::new(std::sync::Mutex::new(crate::state::Manager::new(cfg)));
        let mut cr = Crossroads::new();
        let tokens = export(&mut cr, &shared);
        let node = lock(&shared).nodes[0].path.clone();
        let t = input_signatures(&mut cr, &tokens, Some(node));
        let get = |i: &str, m: &str| t.get(&(i.to_string(), m.to_string())).cloned();
        assert_eq!(
            get(protocol::MANAGER_IFACE, "GetNode").as_deref(),
            Some("s")
        );
        assert_eq!(
            get(protocol::MANAGER_IFACE, "ListNodes").as_deref(),
            Some("")
        );
        assert_eq!(
            get(protocol::NODE_IFACE, "StartUnit").as_deref(),
            Some("ss")
        );
        assert_eq!(
            get(protocol::NODE_IFACE, "StartTransientUnit").as_deref(),
            Some("ssa(sv)a(sa(sv))")
        );
        assert_eq!(get(protocol::NODE_IFACE, "Exec").as_deref(), Some("ast"));
        assert_eq!(
            get(protocol::MONITOR_IFACE, "SubscribeList").as_deref(),
            Some("sas")
        );
        assert_eq!(get(protocol::JOB_IFACE, "Cancel").as_deref(), Some(""));
        assert_eq!(
            get("org.freedesktop.DBus.Properties", "Get").as_deref(),
            Some("ss")
        );
    }
}
