//! The public D-Bus API as crossroads interfaces, one module per interface
//! (`org.containers.hirte.Manager`, `.Node`, `.Job`, `.Monitor`). Handlers parse and
//! type-check arguments (crossroads answers `InvalidArgs` on a wrong signature) and hand the
//! work to the model in `state`.

pub mod bluechi;
mod bluechi_members;
mod job;
mod manager;
mod monitor;
mod node;
mod signatures;

pub use signatures::{check_unit_args, input_signatures, Signatures};

use crate::objects::{job_path, METRICS_PATH};
use crate::state::{lock, Shared};
use dbus::Path;
use dbus_crossroads::{Context, Crossroads, IfaceToken, MethodErr};
use hirte_common::protocol;

pub struct Tokens {
    pub job: IfaceToken<u32>,
    pub monitor: IfaceToken<u32>,
}

/// Registers the interfaces and exports the manager and node objects.
pub fn export(cr: &mut Crossroads, shared: &Shared) -> Tokens {
    let manager = manager::register(cr, shared.clone());
    let node = node::register(cr, shared.clone());
    let job = job::register(cr, shared.clone());
    let monitor = monitor::register(cr, shared.clone());
    let metrics = manager::register_metrics(cr);
    cr.insert(protocol::MANAGER_PATH, &[manager], ());
    cr.insert(METRICS_PATH, &[metrics], ());
    let nodes: Vec<(String, usize)> = lock(shared)
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| (n.path().to_string(), i))
        .collect();
    for (path, idx) in nodes {
        cr.insert(path, &[node], idx);
    }
    Tokens { job, monitor }
}

/// Path of a job object, for the core's object operations.
pub fn job_object_path(id: u32) -> Option<Path<'static>> {
    Path::new(job_path(id)).ok()
}

fn merr(name: &'static str, text: impl Into<String>) -> MethodErr {
    MethodErr::from((name, text.into()))
}

/// The caller's unique bus name.
fn caller(ctx: &Context) -> String {
    ctx.message()
        .sender()
        .map(|s| s.to_string())
        .unwrap_or_default()
}
