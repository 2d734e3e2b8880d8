//! The input signature of every method served, read from our own introspection data.

use super::{job_object_path, Tokens};
use crate::objects::monitor_path;
use dbus::Path;
use dbus_crossroads::Crossroads;
use hirte_common::names::validate_unit_name;
use hirte_common::protocol;

/// What the core checks of a call before its handler runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inputs {
    /// The input signature.
    pub sig: String,
    /// Positions of the arguments that name units (`s` or `as`).
    pub unit_args: Vec<usize>,
}

/// Input signatures of every method served, keyed by (interface, member).
pub type Signatures = std::collections::HashMap<(String, String), Inputs>;

/// Whether an input argument of this name on this interface names units (`unit`, `units`,
/// and the Node methods' `name` and `target`).
fn names_units(iface: &str, arg: &str) -> bool {
    matches!(arg, "unit" | "units")
        || (iface == protocol::NODE_IFACE && matches!(arg, "name" | "target"))
}

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

/// Checks the unit names among a call's arguments (`inputs.unit_args`); the error says
/// which name and why. A monitor's `*` (every unit) is not a name but allowed there.
// [impl->req~common.unit-name~1]
pub fn check_unit_args(msg: &dbus::Message, inputs: &Inputs) -> Result<(), String> {
    let wildcard_ok = msg.interface().as_deref() == Some(protocol::MONITOR_IFACE);
    let check = |unit: &str| {
        if wildcard_ok && unit == crate::monitor::WILDCARD {
            return Ok(());
        }
        validate_unit_name(unit).map_err(|e| {
            // The name itself may be megabytes: quote only its start.
            let shown: String = unit.chars().take(64).collect();
            let more = if shown.len() < unit.len() { "..." } else { "" };
            format!("'{shown}{more}': {e}")
        })
    };
    for &pos in &inputs.unit_args {
        let mut it = msg.iter_init();
        for _ in 0..pos {
            it.next();
        }
        if let Some(unit) = it.get::<&str>() {
            check(unit)?;
        } else if let Some(units) = it.get::<Vec<&str>>() {
            units.into_iter().try_for_each(check)?;
        }
    }
    Ok(())
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
    let mut method: Option<(String, Inputs)> = None;
    let mut nargs = 0;
    for raw in xml.split('<').skip(1) {
        let tag = raw.split('>').next().unwrap_or_default();
        if tag.starts_with("interface ") {
            iface = attr(tag, "name").unwrap_or_default().to_string();
        } else if tag.starts_with("method ") {
            let name = attr(tag, "name").unwrap_or_default().to_string();
            if tag.ends_with('/') {
                table.insert((iface.clone(), name), Inputs::default());
            } else {
                method = Some((name, Inputs::default()));
                nargs = 0;
            }
        } else if tag.starts_with("arg ") {
            if let Some((_, inputs)) = method.as_mut() {
                if attr(tag, "direction") != Some("out") {
                    if names_units(&iface, attr(tag, "name").unwrap_or_default()) {
                        inputs.unit_args.push(nargs);
                    }
                    nargs += 1;
                    inputs.sig.push_str(attr(tag, "type").unwrap_or_default());
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

    // [utest->req~common.unit-name~1]
    #[test]
    fn unit_arguments_are_checked_and_monitors_may_say_every_unit() {
        let subscribe = |unit: &str| {
            dbus::Message::new_method_call("a.b", "/a", protocol::MONITOR_IFACE, "Subscribe")
                .unwrap()
                .append2("n1", unit)
        };
        let inputs = Inputs {
            sig: "ss".into(),
            unit_args: vec![1],
        };
        assert_eq!(check_unit_args(&subscribe("a.service"), &inputs), Ok(()));
        assert_eq!(check_unit_args(&subscribe("*"), &inputs), Ok(()));
        let huge = "a".repeat(5 << 20);
        let e = check_unit_args(&subscribe(&huge), &inputs).unwrap_err();
        assert!(
            e.ends_with("...': unit name is 5242880 bytes long, the limit is 255"),
            "{e}"
        );
        assert!(e.len() < 200);
        let list = dbus::Message::new_method_call("a.b", "/a", protocol::NODE_IFACE, "X")
            .unwrap()
            .append2(vec!["a.service", "*"], 1u32);
        let inputs = Inputs {
            sig: "asu".into(),
            unit_args: vec![0],
        };
        assert!(check_unit_args(&list, &inputs)
            .unwrap_err()
            .starts_with("'*': "));
    }

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
        let inputs = |i: &str, m: &str| t.get(&(i.to_string(), m.to_string())).cloned();
        let get = |i: &str, m: &str| inputs(i, m).map(|i| i.sig);
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
        let units = |i: &str, m: &str| inputs(i, m).map(|i| i.unit_args);
        assert_eq!(units(protocol::NODE_IFACE, "StartUnit"), Some(vec![0]));
        assert_eq!(
            units(protocol::NODE_IFACE, "StartTransientUnit"),
            Some(vec![0])
        );
        assert_eq!(units(protocol::NODE_IFACE, "ListUnits"), Some(vec![]));
        assert_eq!(units(protocol::MONITOR_IFACE, "Subscribe"), Some(vec![1]));
        assert_eq!(
            units(protocol::MONITOR_IFACE, "SubscribeList"),
            Some(vec![1])
        );
        assert_eq!(units(protocol::MANAGER_IFACE, "GetNode"), Some(vec![]));
        assert_eq!(
            get("org.freedesktop.DBus.Properties", "Get").as_deref(),
            Some("ss")
        );
    }
}
