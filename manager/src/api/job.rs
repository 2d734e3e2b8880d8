//! `org.containers.hirte.Job`: one object per job in flight.

use super::merr;
use crate::jobs::Job;
use crate::state::{lock, Manager, Shared};
use dbus_crossroads::{Crossroads, IfaceBuilder, IfaceToken};
use hirte_common::protocol::{self, error};

// [impl->req~api.job~1]
pub(super) fn register(cr: &mut Crossroads, st: Shared) -> IfaceToken<u32> {
    cr.register(protocol::JOB_IFACE, move |b: &mut IfaceBuilder<u32>| {
        let s = st.clone();
        b.method_with_cr_custom::<(), (), _, _>("Cancel", (), (), move |ctx, cr, ()| {
            let Some(id) = cr.data_mut::<u32>(ctx.path()).copied() else {
                return Some(ctx);
            };
            let mut m = lock(&s);
            let Some(node) = m.jobs().get(id).map(Job::node) else {
                let mut ctx = ctx;
                ctx.reply::<()>(Err(merr(
                    error::INVALID_ARGS,
                    format!("job {id} has ended"),
                )));
                return Some(ctx);
            };
            m.relay(node, "JobCancel", |msg| msg.append_all((id,)), ctx)
        });
        let field = |st: &Shared, f: fn(&Job, &Manager) -> String| {
            let s = st.clone();
            move |_: &mut dbus_crossroads::PropContext, id: &mut u32| {
                let m = lock(&s);
                m.jobs()
                    .get(*id)
                    .map(|j| f(j, &m))
                    .ok_or_else(|| merr(error::INVALID_ARGS, format!("job {id} has ended")))
            }
        };
        b.property::<u32, _>("Id")
            .get(|_, id| Ok(*id))
            .emits_changed_const();
        b.property::<String, _>("Node")
            .get(field(&st, |j, m| m.nodes().name(j.node())))
            .emits_changed_const();
        b.property::<String, _>("Unit")
            .get(field(&st, |j, _| j.unit().to_string()))
            .emits_changed_const();
        b.property::<String, _>("JobType")
            .get(field(&st, |j, _| j.job_type().to_string()))
            .emits_changed_const();
        b.property::<String, _>("State")
            .get(field(&st, |j, _| j.state().to_string()))
            .emits_changed_true();
    })
}
