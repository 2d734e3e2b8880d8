//! `org.eclipse.bluechi.Agent` at `/org/eclipse/bluechi` on the node's bus (bus name
//! `org.eclipse.bluechi.Agent`): BlueChi's spelling of our local API, so `bluechi-is-online`,
//! `bluechi-proxy` and the `bluechi` Python bindings work against this agent. Same state as
//! `org.containers.hirte.Agent`; `CreateProxy`/`RemoveProxy` go to the core like ours.

use crate::local_api::{read, Status};
use crate::reconnect::SwitchRequest;
use dbus::Message;
use dbus_crossroads::{Crossroads, IfaceBuilder, MethodErr};
use hirte_common::wait::{now_monotonic_us, now_realtime_us};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const BUS_NAME: &str = "org.eclipse.bluechi.Agent";
pub const IFACE: &str = "org.eclipse.bluechi.Agent";
pub const PATH: &str = "/org/eclipse/bluechi";

/// Whether a call is one of the proxy methods on the BlueChi object.
pub fn is_proxy_call(msg: &Message, methods: &[&str]) -> bool {
    msg.interface().as_deref() == Some(IFACE)
        && msg.path().as_deref() == Some(PATH)
        && msg.member().is_some_and(|m| methods.contains(&m.as_ref()))
}

/// The monotonic time of a wall-clock stamp (BlueChi's `...Monotonic` twins); 0 stays 0.
fn monotonic_of(realtime_us: u64) -> u64 {
    if realtime_us == 0 {
        return 0;
    }
    let ago = now_realtime_us().saturating_sub(realtime_us);
    now_monotonic_us().saturating_sub(ago)
}

/// Registers the interface and exports it at `/org/eclipse/bluechi`.
// [impl->req~bluechi.agent~1]
pub fn export(
    cr: &mut Crossroads,
    status: &Arc<Mutex<Status>>,
    last_seen_us: &Arc<AtomicU64>,
    proxy_methods: [&'static str; 2],
    switch: Arc<SwitchRequest>,
) {
    let st = status.clone();
    let seen = last_seen_us.clone();
    let token = cr.register(IFACE, move |b: &mut IfaceBuilder<()>| {
        crate::local_api::shared_properties(b, &st);
        let stamps: [(&str, bool, bool); 4] = [
            ("DisconnectTimestamp", false, false),
            ("DisconnectTimestampMonotonic", false, true),
            ("LastSeenTimestamp", true, false),
            ("LastSeenTimestampMonotonic", true, true),
        ];
        for (name, last_seen, monotonic) in stamps {
            let (s, seen) = (st.clone(), seen.clone());
            b.property::<u64, _>(name)
                .get(move |_, _| {
                    let us = if last_seen {
                        seen.load(Ordering::Relaxed)
                    } else {
                        read(&s, |st| st.disconnect_us)
                    };
                    Ok(if monotonic { monotonic_of(us) } else { us })
                })
                .emits_changed_false();
        }
        let s = st.clone();
        b.property::<String, _>("ControllerAddress")
            .get(move |_, _| Ok(read(&s, |st| st.manager_address.clone())))
            .emits_changed_true();
        for name in proxy_methods {
            b.method(
                name,
                ("local_service_name", "node", "unit"),
                (),
                |_, _, (_, _, _): (String, String, String)| {
                    Err::<(), _>(MethodErr::failed("handled by the agent core"))
                },
            );
        }
        crate::local_api::switch_controller_method(b, switch.clone());
    });
    cr.insert(PATH, &[token], ());
}

#[cfg(test)]
mod tests {
    use super::{BUS_NAME, IFACE, PATH};
    use crate::link::FromLink;
    use crate::testing::{error_name, Harness};
    use dbus::arg::Variant;
    use dbus::Message;

    fn ask(h: &mut Harness, m: Message) -> Message {
        let mut m = m;
        m.set_serial(3);
        h.core.on_bus_message(m);
        h.sd().sent.borrow_mut().pop().unwrap()
    }

    fn get(h: &mut Harness, prop: &str) -> Message {
        let m = Message::new_method_call(BUS_NAME, PATH, "org.freedesktop.DBus.Properties", "Get")
            .unwrap()
            .append2(IFACE, prop);
        ask(h, m)
    }

    // [utest->req~bluechi.agent~1]
    #[test]
    fn bluechi_properties_follow_the_same_state() {
        let mut h = Harness::new();
        let text = |m: Message| m.read1::<Variant<String>>().unwrap().0;
        let number = |m: Message| m.read1::<Variant<u64>>().unwrap().0;
        assert_eq!(text(get(&mut h, "Status")), "offline");
        h.core
            .on_link_event(FromLink::Connected("tcp:host=b,port=1".into()));
        h.sd().sent.borrow_mut().clear();
        assert_eq!(text(get(&mut h, "Status")), "online");
        assert_eq!(text(get(&mut h, "ControllerAddress")), "tcp:host=b,port=1");
        assert_eq!(number(get(&mut h, "DisconnectTimestampMonotonic")), 0);
        h.core.on_link_event(FromLink::Disconnected);
        h.sd().sent.borrow_mut().clear();
        assert!(number(get(&mut h, "DisconnectTimestamp")) > 0);
        assert!(number(get(&mut h, "DisconnectTimestampMonotonic")) > 0);
    }

    // [utest->req~bluechi.switch-controller~2]
    #[test]
    fn switch_controller_moves_the_agent_or_names_a_bad_address() {
        let mut h = Harness::new();
        let call = |a: &str| {
            Message::new_method_call(BUS_NAME, PATH, IFACE, "SwitchController")
                .unwrap()
                .append1(a)
        };
        let answer = ask(&mut h, call("tcp:host=c,port=2"));
        assert_eq!(error_name(&answer), None);
        assert_eq!(h.switch.take().unwrap().endpoint(), "c:2");
        let answer = ask(&mut h, call("nonsense"));
        assert_eq!(
            error_name(&answer).as_deref(),
            Some("org.freedesktop.DBus.Error.InvalidArgs")
        );
        assert!(h.switch.take().is_none());
    }
}
