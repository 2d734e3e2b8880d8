//! `org.containers.hirte.Manager` (the cluster) and `org.containers.hirte.Metrics`.

use super::monitor::monitor_err;
use super::{caller, merr};
use crate::fanout::FanOut;
use crate::objects::{monitor_path, METRICS_IFACE};
use crate::state::{lock, Shared};
use dbus::Path;
use dbus_crossroads::{Crossroads, IfaceBuilder, IfaceToken};
use hirte_common::log;
use hirte_common::protocol::{self, error, UnitRow};
use std::collections::HashMap;

pub(super) fn register_metrics(cr: &mut Crossroads) -> IfaceToken<()> {
    cr.register(METRICS_IFACE, |b: &mut IfaceBuilder<()>| {
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

// [impl->req~api.manager~1]
pub(super) fn register(cr: &mut Crossroads, st: Shared) -> IfaceToken<()> {
    cr.register(protocol::MANAGER_IFACE, move |b: &mut IfaceBuilder<()>| {
        let s = st.clone();
        b.method("ListNodes", (), ("nodes",), move |_, _, ()| {
            let m = lock(&s);
            let rows: Vec<(String, Path<'static>, String, String)> = m
                .nodes()
                .iter()
                .filter_map(|n| {
                    let p = Path::new(n.path().to_string()).ok()?;
                    Some((
                        n.name().to_string(),
                        p,
                        n.status().to_string(),
                        n.peer_ip().to_string(),
                    ))
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
                let idx = m.nodes().index(&name).ok_or_else(|| {
                    merr(
                        error::NODE_NOT_FOUND,
                        format!("node '{name}' not found (not in AllowedNodeNames)"),
                    )
                })?;
                let path = m
                    .nodes()
                    .get(idx)
                    .and_then(|n| Path::new(n.path().to_string()).ok())
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
            let id = lock(&s)
                .change_monitors(|mons, out| mons.open(&caller(ctx), out))
                .map_err(monitor_err)?;
            let path = Path::new(monitor_path(id)).map_err(|e| merr(error::INVALID_ARGS, e))?;
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
                hirte_common::log_info!("Metrics {}", if on { "enabled" } else { "disabled" });
                lock(&s).set_metrics(member, on, ctx)
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
            .get(move |_, _| Ok(lock(&s).nodes().status().to_string()))
            .emits_changed_true();
        b.property::<String, _>("LogLevel")
            .get(|_, _| Ok(log::level().to_string()))
            .emits_changed_false();
        b.property::<String, _>("LogTarget")
            .get(|_, _| Ok(log::target().to_string()))
            .emits_changed_const();
    })
}
