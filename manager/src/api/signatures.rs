//! The input signature of every method served, read from our own introspection data.

use super::{job_object_path, Tokens};
use crate::objects::monitor_path;
use dbus::Path;
use dbus_crossroads::Crossroads;
use hirte_common::protocol;

/// Input signatures of every method served, keyed by (interface, member).
pub type Signatures = std::collections::HashMap<(String, String), String>;

/// Reads the input signature of every method from our own introspection data, so the table
/// cannot drift from the handlers. The core refuses calls whose arguments differ with
/// `InvalidArgs`: crossroads alone answers a wrong type with `Failed` and ignores extra
/// arguments.
// [impl->req~api.errors~1]
pub fn input_signatures(cr: &mut Crossroads, tokens: &Tokens, node: Option<String>) -> Signatures {
    // Job and monitor objects exist only at run time: introspect a stand-in of each.
    let (job, monitor) = (job_object_path(0), Path::new(monitor_path(0)).ok());
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
    use crate::api::export;
    use crate::state::lock;

    #[test]
    fn introspection_gives_every_input_signature() {
        let cfg = hirte_common::config::ManagerConfig {
            allowed_node_names: vec!["n1".into()],
            ..Default::default()
        };
        let shared = std::sync::Arc::new(std::sync::Mutex::new(crate::state::Manager::new(cfg)));
        let mut cr = Crossroads::new();
        let tokens = export(&mut cr, &shared);
        let node = lock(&shared).nodes().get(0).unwrap().path().to_string();
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
