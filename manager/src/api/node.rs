//! `org.containers.hirte.Node`: one object per configured node. Unit methods create jobs;
//! the rest is relayed as is to the node's agent.

use super::merr;
use crate::nodes::Node;
use crate::state::{lock, Shared};
use dbus::arg::{AppendAll, ArgAll, ReadAll, RefArg, Variant};
use dbus::Path;
use dbus_crossroads::{Crossroads, IfaceBuilder, IfaceToken};
use hirte_common::protocol::{self, error, UnitRow};
use std::time::Duration;

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
            let refusal = if !m.allow_exec() {
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
            let wait = timeout + m.agent_call_timeout();
            m.relay_within(idx, "Exec", |msg| msg.append_all((argv, micros)), ctx, wait)
        },
    );
}

type UnitFileChange = (String, String, String);

/// A Node property getter reading one field of the node the object stands for.
fn node_field<T: Default>(
    st: &Shared,
    f: fn(&Node) -> T,
) -> impl FnMut(&mut dbus_crossroads::PropContext, &mut usize) -> Result<T, dbus_crossroads::MethodErr>
{
    let s = st.clone();
    move |_, idx| Ok(lock(&s).nodes().get(*idx).map(f).unwrap_or_default())
}

// [impl->req~api.node~1]
pub(super) fn register(cr: &mut Crossroads, st: Shared) -> IfaceToken<usize> {
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
            .get(node_field(&st, |n| n.name().to_string()))
            .emits_changed_const();
        b.property::<String, _>("Status")
            .get(node_field(&st, |n| n.status().to_string()))
            .emits_changed_true();
        b.property::<String, _>("PeerIp")
            .get(node_field(&st, |n| n.peer_ip().to_string()))
            .emits_changed_false();
        b.property::<u64, _>("LastSeenTimestamp")
            .get(node_field(&st, Node::last_seen_realtime_us))
            .emits_changed_false();
        b.property::<u64, _>("LastSeenTimestampMonotonic")
            .get(node_field(&st, Node::last_seen_monotonic_us))
            .emits_changed_false();
    })
}
