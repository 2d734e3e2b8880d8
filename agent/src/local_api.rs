//! `org.containers.hirte.Agent` on the node's own bus, so local services can ask whether this
//! node is connected to its manager (as `bluechi-is-online` does).

use crate::reconnect::SwitchRequest;
use crate::systemd::Systemd;
use dbus::arg::{PropMap, RefArg, Variant};
use dbus::blocking::Connection;
use dbus::channel::Sender;
use dbus::Message;
use dbus_crossroads::{Crossroads, IfaceBuilder};
use hirte_common::config::ManagerAddress;
use hirte_common::protocol::{self, NODE_OFFLINE, NODE_ONLINE};
use hirte_common::wait::now_realtime_us;
use hirte_common::{log, log_info, log_warn};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Methods the core answers itself (their answer may come much later).
const PROXY_METHODS: [&str; 2] = ["CreateProxy", "RemoveProxy"];

/// Whether a call on the node's bus is `CreateProxy`/`RemoveProxy` on our object.
pub fn is_proxy_call(msg: &Message) -> bool {
    if crate::bluechi_api::is_proxy_call(msg, &PROXY_METHODS) {
        return true;
    }
    msg.interface().as_deref() == Some(protocol::AGENT_IFACE)
        && msg.path().as_deref() == Some(protocol::MANAGER_PATH)
        && msg
            .member()
            .is_some_and(|m| PROXY_METHODS.contains(&m.as_ref()))
}

#[derive(Default)]
pub(crate) struct Status {
    pub(crate) connected: bool,
    pub(crate) manager_address: String,
    pub(crate) disconnect_us: u64,
}

/// Reads the shared status.
pub(crate) fn read<T>(st: &Arc<Mutex<Status>>, f: impl FnOnce(&Status) -> T) -> T {
    f(&st.lock().unwrap_or_else(PoisonError::into_inner))
}

/// The properties ours and BlueChi's interface share: `Status`, `LogLevel`, `LogTarget`.
pub(crate) fn shared_properties(b: &mut IfaceBuilder<()>, st: &Arc<Mutex<Status>>) {
    let s = st.clone();
    b.property::<String, _>("Status")
        .get(move |_, _| {
            let up = read(&s, |st| st.connected);
            Ok(if up { NODE_ONLINE } else { NODE_OFFLINE }.to_string())
        })
        .emits_changed_true();
    b.property::<String, _>("LogLevel")
        .get(|_, _| Ok(log::level().to_string()))
        .emits_changed_false();
    b.property::<String, _>("LogTarget")
        .get(|_, _| Ok(log::target().to_string()))
        .emits_changed_const();
}

pub struct LocalApi {
    cr: Crossroads,
    status: Arc<Mutex<Status>>,
}

/// `SwitchController(s dbus_address)` (BlueChi's name and signature, on both interfaces):
/// leave the current manager and register with this one; the link thread does it within a tick.
// [impl->req~agent.switch-controller~1]
// [impl->req~bluechi.switch-controller~2]
pub(crate) fn switch_controller_method(b: &mut IfaceBuilder<()>, switch: Arc<SwitchRequest>) {
    b.method(
        "SwitchController",
        ("dbus_address",),
        (),
        move |_, _, (address,): (String,)| {
            let to = ManagerAddress::parse(&address).map_err(|e| {
                dbus_crossroads::MethodErr::invalid_arg(&format!("'{address}': {e}"))
            })?;
            log_info!("Switching to manager {} as asked", to.endpoint());
            switch.request(to);
            Ok(())
        },
    );
}

impl LocalApi {
    /// The object, ready to answer; `claim_name` makes it reachable under its bus name.
    // [impl->req~agent.local-api~1]
    pub fn new(
        manager_address: String,
        last_seen_us: Arc<AtomicU64>,
        switch: Arc<SwitchRequest>,
    ) -> Self {
        let status = Arc::new(Mutex::new(Status {
            manager_address,
            ..Status::default()
        }));
        let mut cr = Crossroads::new();
        crate::bluechi_api::export(
            &mut cr,
            &status,
            &last_seen_us,
            PROXY_METHODS,
            switch.clone(),
        );
        let st = status.clone();
        let token = cr.register(protocol::AGENT_IFACE, move |b: &mut IfaceBuilder<()>| {
            shared_properties(b, &st);
            let s = st.clone();
            b.property::<String, _>("ManagerAddress")
                .get(move |_, _| Ok(read(&s, |st| st.manager_address.clone())))
                .emits_changed_false();
            let seen = last_seen_us.clone();
            b.property::<u64, _>("LastSeenTimestamp")
                .get(move |_, _| Ok(seen.load(Ordering::Relaxed)))
                .emits_changed_false();
            let s = st.clone();
            b.property::<u64, _>("DisconnectTimestamp")
                .get(move |_, _| Ok(read(&s, |st| st.disconnect_us)))
                .emits_changed_false();
            switch_controller_method(b, switch.clone());
            // Answered by the core (`dependencies.rs`), which may answer later; declared here
            // so that introspection shows them.
            for name in PROXY_METHODS {
                b.method(
                    name,
                    ("local_service", "node", "unit"),
                    (),
                    |_, _, (_, _, _): (String, String, String)| {
                        Err::<(), _>(dbus_crossroads::MethodErr::failed(
                            "handled by the agent core",
                        ))
                    },
                );
            }
        });
        cr.insert(protocol::MANAGER_PATH, &[token], ());
        LocalApi { cr, status }
    }

    /// Owns the well-known name, best effort (a missing D-Bus policy must not stop the agent
    /// from doing its real job).
    pub fn claim_name(sd: &Connection) {
        for name in [protocol::AGENT_BUS_NAME, crate::bluechi_api::BUS_NAME] {
            match sd.request_name(name, false, false, true) {
                Ok(
                    dbus::blocking::stdintf::org_freedesktop_dbus::RequestNameReply::PrimaryOwner,
                ) => {
                    log_info!("Serving {name} on the node bus");
                }
                Ok(_) => log_warn!(
                    "{name} is owned by another process; local status API not available under it"
                ),
                Err(e) => log_warn!(
                    "Cannot own {name} on the node bus ({}); local status API not available \
                     under it",
                    e.message().unwrap_or("unknown error")
                ),
            }
        }
    }

    pub fn handle(&mut self, msg: Message, sd: &impl Systemd) {
        let _ = self.cr.handle_message(msg, &BusSender(sd));
    }

    /// Records a link state change and announces it.
    pub fn set_connected(&mut self, sd: &impl Systemd, address: Option<String>) {
        let connected = address.is_some();
        {
            let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            if s.connected == connected {
                return;
            }
            s.connected = connected;
            match address {
                Some(a) => s.manager_address = a,
                None => s.disconnect_us = now_realtime_us(),
            }
        }
        let value = if connected { NODE_ONLINE } else { NODE_OFFLINE };
        let changed = || {
            let mut m = PropMap::new();
            m.insert(
                "Status".to_string(),
                Variant(Box::new(value.to_string()) as Box<dyn RefArg>),
            );
            m
        };
        let objects = [
            (protocol::MANAGER_PATH, protocol::AGENT_IFACE),
            (crate::bluechi_api::PATH, crate::bluechi_api::IFACE),
        ];
        for (path, iface) in objects {
            if let Ok(sig) =
                Message::new_signal(path, "org.freedesktop.DBus.Properties", "PropertiesChanged")
            {
                sd.send(sig.append3(iface, changed(), Vec::<String>::new()));
            }
        }
    }
}

/// The node's bus as `dbus-crossroads` sends its answers.
struct BusSender<'a, S>(&'a S);

impl<S: Systemd> Sender for BusSender<'_, S> {
    fn send(&self, msg: Message) -> Result<u32, ()> {
        self.0.send(msg);
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use crate::link::FromLink;
    use crate::testing::{error_name, Harness};
    use dbus::arg::Variant;
    use dbus::Message;
    use hirte_common::protocol::{self, NODE_OFFLINE, NODE_ONLINE};

    fn get(h: &mut Harness, prop: &str) -> Message {
        let mut m = Message::new_method_call(
            protocol::AGENT_BUS_NAME,
            protocol::MANAGER_PATH,
            "org.freedesktop.DBus.Properties",
            "Get",
        )
        .unwrap()
        .append2(protocol::AGENT_IFACE, prop);
        m.set_serial(3);
        h.core.on_bus_message(m);
        h.sd().sent.borrow_mut().pop().unwrap()
    }

    #[test]
    fn status_follows_the_link_and_changes_are_announced() {
        let mut h = Harness::new();
        let status = |m: Message| m.read1::<Variant<String>>().unwrap().0;
        assert_eq!(status(get(&mut h, "Status")), NODE_OFFLINE);
        h.core
            .on_link_event(FromLink::Connected("tcp:host=b,port=1".into()));
        // Announced on both objects: ours and BlueChi's.
        let changed: Vec<Message> = h.sd().sent.borrow_mut().drain(..).collect();
        let paths: Vec<String> = changed
            .iter()
            .map(|m| m.path().unwrap().to_string())
            .collect();
        assert_eq!(paths, [protocol::MANAGER_PATH, crate::bluechi_api::PATH]);
        assert!(changed
            .iter()
            .all(|m| &*m.member().unwrap() == "PropertiesChanged"));
        assert_eq!(status(get(&mut h, "Status")), NODE_ONLINE);
        assert_eq!(status(get(&mut h, "ManagerAddress")), "tcp:host=b,port=1");
        // The same state again is not announced.
        h.core
            .on_link_event(FromLink::Connected("tcp:host=b,port=1".into()));
        assert!(h.sd().sent.borrow().is_empty());
        h.core.on_link_event(FromLink::Disconnected);
        assert_eq!(status(get(&mut h, "Status")).as_str(), NODE_OFFLINE);
        let stamp = get(&mut h, "DisconnectTimestamp");
        assert!(stamp.read1::<Variant<u64>>().unwrap().0 > 0);
    }

    #[test]
    fn unknown_properties_are_errors() {
        let mut h = Harness::new();
        assert!(error_name(&get(&mut h, "NoSuchThing")).is_some());
    }
}
