//! The manager's calls to this node (`org.containers.hirte.internal.Agent`): checks each
//! call's arguments and executes it against systemd, or hands it to the module that owns it.

use super::Core;
use crate::systemd::{self, bad_args, CallError, Systemd};
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::MAX_FRAME_SIZE;
use hirte_common::protocol::error_reply;
use hirte_common::protocol::{self, error, signature_of};
use hirte_common::{log, log_debug, log_info, log_warn};

/// Manager methods that map one to one onto systemd Manager methods of the same name and
/// signature; the agent relays them unchanged.
const SYSTEMD_RELAYED: &[(&str, &str)] = &[
    ("ListUnits", ""),
    ("ListUnitFiles", ""),
    ("Reload", ""),
    ("EnableUnitFiles", "asbb"),
    ("DisableUnitFiles", "asb"),
    ("FreezeUnit", "s"),
    ("ThawUnit", "s"),
    ("KillUnit", "ssi"),
    ("SetUnitProperties", "sba(sv)"),
    ("GetUnitFileState", "s"),
    ("ResetFailed", ""),
    ("ResetFailedUnit", "s"),
    ("GetDefaultTarget", ""),
    ("SetDefaultTarget", "sb"),
];

/// The signature of each method the agent executes itself.
const SIGNATURES: &[(&str, &str)] = &[
    ("StartUnit", "ssu"),
    ("StopUnit", "ssu"),
    ("RestartUnit", "ssu"),
    ("ReloadUnit", "ssu"),
    ("StartTransientUnit", "ssa(sv)a(sa(sv))u"),
    ("JobCancel", "u"),
    ("GetUnitProperties", "ss"),
    ("GetUnitProperty", "sss"),
    ("SetLogLevel", "s"),
    ("EnableMetrics", ""),
    ("DisableMetrics", ""),
    ("Subscribe", "s"),
    ("Unsubscribe", "s"),
    ("Exec", "ast"),
    ("StartDep", "s"),
    ("StopDep", "s"),
];

/// `InvalidArgs` unless the call's arguments have the signature `sig`.
pub(crate) fn expect_signature(msg: &Message, member: &str, sig: &str) -> Result<(), CallError> {
    let got = signature_of(msg);
    if got != sig {
        return Err(bad_args(format!("{member} takes ({sig}), got ({got})")));
    }
    Ok(())
}

/// Copies systemd's return values into the reply to the manager.
fn relay_reply(call: &Message, answer: &Message) -> Message {
    protocol::copy_answer(call, answer)
}

impl<S: Systemd> Core<S> {
    pub(crate) fn on_manager_message(&mut self, msg: Message) {
        if msg.msg_type() == MessageType::Signal
            && msg.interface().as_deref() == Some(protocol::INTERNAL_PROXY_IFACE)
        {
            self.on_proxy_signal(&msg);
            return;
        }
        if msg.msg_type() != MessageType::MethodCall {
            return;
        }
        let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
        let iface = msg.interface().map(|i| i.to_string()).unwrap_or_default();
        let result = if iface == protocol::INTERNAL_AGENT_IFACE {
            self.dispatch(&member, &msg)
        } else {
            Err(CallError::UnknownInterface(iface))
        };
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                log_debug!("{member} failed: {e} ({})", e.name());
                error_reply(&msg, e.name(), &e.to_string())
            }
        };
        if let Some(r) = reply {
            self.send_reply(&msg, r);
        }
    }

    /// Sends the answer to a manager call; one too large for the link becomes an error.
    fn send_reply(&self, call: &Message, mut reply: Message) {
        match self.serials.encode(&mut reply, MAX_FRAME_SIZE) {
            Ok(bytes) => {
                if self.outbound.try_push(bytes).is_err() {
                    log_warn!("Outgoing queue to the manager is full; answer dropped");
                }
            }
            Err(e) => {
                log_warn!("Answer too large for the link: {e}");
                if let Some(err) = error_reply(call, error::BUSY, &format!("answer too large: {e}"))
                {
                    self.send(err);
                }
            }
        }
    }

    /// Executes one manager call. `Ok(None)`: the answer comes later.
    // [impl->req~agent.relay~1]
    /// The node's own `AllowExec=no`.
    // [impl->req~agent.allow-exec~1]
    fn check_exec(&self, member: &str, msg: &Message) -> Result<(), CallError> {
        if self.allow_exec {
            return Ok(());
        }
        let why = match member {
            "Exec" => Some("Exec is disabled on this node".to_string()),
            _ => hirte_common::exec_guard::refusal(member, msg),
        };
        match why {
            Some(why) => Err(CallError::NotAllowed(format!(
                "{why} (node '{}', AllowExec=no in agent.conf)",
                self.node
            ))),
            None => Ok(()),
        }
    }

    fn dispatch(&mut self, member: &str, msg: &Message) -> Result<Option<Message>, CallError> {
        self.check_exec(member, msg)?;
        if let Some((_, sig)) = SYSTEMD_RELAYED.iter().find(|(m, _)| *m == member) {
            expect_signature(msg, member, sig)?;
            let mut call = systemd::manager_call(member)?;
            call.append_items(&msg.get_items());
            return Ok(Some(relay_reply(msg, &self.sd.call(call)?)));
        }
        let Some((_, sig)) = SIGNATURES.iter().find(|(m, _)| *m == member) else {
            return Err(CallError::UnknownMethod(member.to_string()));
        };
        expect_signature(msg, member, sig)?;
        match member {
            "StartUnit" | "StopUnit" | "RestartUnit" | "ReloadUnit" => {
                self.start_job(member, msg)?
            }
            "StartTransientUnit" => self.start_transient(msg)?,
            "JobCancel" => self.cancel_job(msg)?,
            "GetUnitProperties" => {
                let (unit, iface) = msg.read2::<&str, &str>().map_err(bad_args)?;
                let path = self.sd.unit_path(unit)?;
                let call = systemd::properties_call(&path, "GetAll")?.append1(iface);
                return Ok(Some(relay_reply(msg, &self.sd.call(call)?)));
            }
            "GetUnitProperty" => {
                let (unit, iface, prop) = msg.read3::<&str, &str, &str>().map_err(bad_args)?;
                let path = self.sd.unit_path(unit)?;
                let call = systemd::properties_call(&path, "Get")?.append2(iface, prop);
                return Ok(Some(relay_reply(msg, &self.sd.call(call)?)));
            }
            "SetLogLevel" => {
                let level: &str = msg.read1().map_err(bad_args)?;
                let lvl = level.parse::<log::Level>().map_err(bad_args)?;
                log::set_level(lvl);
                log_info!("Log level set to {lvl}");
            }
            "EnableMetrics" | "DisableMetrics" => self.metrics = member == "EnableMetrics",
            "Subscribe" => self.subscribe(msg)?,
            "Unsubscribe" => self.unsubscribe(msg)?,
            "Exec" => {
                self.start_exec(msg)?;
                return Ok(None);
            }
            "StartDep" => {
                self.start_dep(msg)?;
                return Ok(None);
            }
            "StopDep" => self.stop_dep(msg)?,
            _ => return Err(CallError::UnknownMethod(member.to_string())),
        }
        Ok(Some(msg.method_return()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{error_name, member, Harness};

    fn answer(h: &mut Harness, m: Message) -> Message {
        h.deliver(m);
        let mut out = h.to_manager();
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    // [utest->req~agent.panic-answered~1]
    #[test]
    fn a_call_whose_handler_panics_is_still_answered() {
        let mut h = Harness::new();
        h.sd().answer("GetDefaultTarget", |_| panic!("handler bug"));
        let m = h.manager_call("GetDefaultTarget");
        let serial = m.get_serial();
        let r = answer(&mut h, m);
        assert_eq!(r.get_reply_serial(), serial);
        assert_eq!(
            error_name(&r).as_deref(),
            Some("org.freedesktop.DBus.Error.Failed")
        );
        // The core goes on: the next call is served.
        h.sd().answer("GetDefaultTarget", |m| {
            Ok(m.method_return().append1("x.target"))
        });
        let m = h.manager_call("GetDefaultTarget");
        assert_eq!(answer(&mut h, m).read1::<&str>().unwrap(), "x.target");
    }

    #[test]
    fn relayed_calls_carry_systemds_answer_and_errors() {
        let mut h = Harness::new();
        h.sd().answer("GetDefaultTarget", |m| {
            Ok(m.method_return().append1("graphical.target"))
        });
        let m = h.manager_call("GetDefaultTarget");
        let r = answer(&mut h, m);
        assert_eq!(r.read1::<&str>().unwrap(), "graphical.target");
        h.sd().answer("FreezeUnit", |_| {
            Err(CallError::Dbus {
                name: "org.freedesktop.systemd1.NoSuchUnit".into(),
                message: "Unit x.service not loaded.".into(),
            })
        });
        let m = h.manager_call("FreezeUnit").append1("x.service");
        let r = answer(&mut h, m);
        assert_eq!(
            error_name(&r).as_deref(),
            Some("org.freedesktop.systemd1.NoSuchUnit")
        );
        assert_eq!(r.read1::<&str>().unwrap(), "Unit x.service not loaded.");
        let m = h.manager_call("KillUnit").append2("x.service", "all");
        let r = answer(&mut h, m);
        assert_eq!(error_name(&r).as_deref(), Some(error::INVALID_ARGS));
        assert_eq!(r.read1::<&str>().unwrap(), "KillUnit takes (ssi), got (ss)");
    }

    #[test]
    fn unknown_methods_and_interfaces_are_named() {
        let mut h = Harness::new();
        let m = h.manager_call("Frobnicate");
        let r = answer(&mut h, m);
        assert_eq!(
            error_name(&r).as_deref(),
            Some("org.freedesktop.DBus.Error.UnknownMethod")
        );
        assert_eq!(r.read1::<&str>().unwrap(), "unknown method 'Frobnicate'");
        let mut m = Message::new_method_call("x.y", "/x", "org.example.Other", "Ping").unwrap();
        m.set_serial(5);
        let r = answer(&mut h, m);
        assert_eq!(
            error_name(&r).as_deref(),
            Some("org.freedesktop.DBus.Error.UnknownInterface")
        );
        assert!(h.sd().calls.borrow().is_empty());
    }

    #[test]
    fn unit_properties_are_read_from_the_units_object() {
        let mut h = Harness::new();
        h.sd().property("ActiveState", "active".to_string());
        let m = h.manager_call("GetUnitProperty").append3(
            "a.service",
            systemd::UNIT_IFACE,
            "ActiveState",
        );
        let r = answer(&mut h, m);
        let v: dbus::arg::Variant<String> = r.read1().unwrap();
        assert_eq!(v.0, "active");
        assert_eq!(h.sd().members(), ["LoadUnit", "Get"]);
        let calls = h.sd().calls.borrow();
        assert_eq!(
            calls[1].path().unwrap().to_string(),
            "/org/freedesktop/systemd1/unit/a_2eservice"
        );
    }

    #[test]
    fn log_level_must_be_a_level() {
        let mut h = Harness::new();
        let m = h.manager_call("SetLogLevel").append1("loud");
        let r = answer(&mut h, m);
        assert_eq!(error_name(&r).as_deref(), Some(error::INVALID_ARGS));
    }

    #[test]
    fn signals_and_returns_from_the_manager_get_no_answer() {
        let mut h = Harness::new();
        let sig = Message::new_signal(
            protocol::INTERNAL_AGENT_PATH,
            protocol::INTERNAL_AGENT_IFACE,
            "Something",
        )
        .unwrap();
        h.deliver(sig);
        assert!(h.to_manager().is_empty());
        let mut m = h.manager_call("ListUnits");
        m.set_serial(9);
        assert_eq!(member(&answer(&mut h, m)), "");
    }
}
