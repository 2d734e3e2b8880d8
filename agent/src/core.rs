//! The agent's core thread: owns the systemd bus connection, executes the manager's calls,
//! and turns systemd's `JobRemoved` into `JobDone` for the manager.

use crate::link::FromLink;
use crate::systemd::{self, CallError};
use dbus::blocking::Connection;
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::{CORE_TICK, MAX_AGENT_JOBS};
use hirte_common::protocol::{self, error, signature_of};
use hirte_common::queue::BoundedQueue;
use hirte_common::sys::bus_fd;
use hirte_common::{log_debug, log_error, log_fields, log_info, log_warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A systemd job started for the manager.
struct AgentJob {
    id: u32,
    unit: String,
}

pub struct Core {
    pub sd: Connection,
    pub node: String,
    pub events: Arc<BoundedQueue<FromLink>>,
    pub outbound: Arc<BoundedQueue<Message>>,
    pub shutdown: Arc<AtomicBool>,
    jobs: HashMap<String, AgentJob>,
}

/// Subscribes to what the agent needs from systemd.
pub fn subscribe(sd: &Connection) -> Result<(), String> {
    sd.add_match_no_cb(
        "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.systemd1.Manager',member='JobRemoved'",
    )
    .map_err(|e| format!("cannot add match: {}", e.message().unwrap_or("")))?;
    let msg = systemd::manager_call("Subscribe").map_err(|e| e.message)?;
    systemd::call(sd, msg).map_err(|e| format!("Subscribe: {}", e.message))?;
    Ok(())
}

fn error_reply(call: &Message, name: &str, text: &str) -> Option<Message> {
    let name = dbus::strings::ErrorName::new(name.to_string())
        .or_else(|_| dbus::strings::ErrorName::new(error::PROTOCOL.to_string()))
        .ok()?;
    let text = std::ffi::CString::new(text.replace('\0', " ")).ok()?;
    Some(call.error(&name, &text))
}

/// Copies systemd's return values into the reply to the manager.
fn relay_reply(call: &Message, answer: &Message) -> Message {
    let mut reply = call.method_return();
    reply.append_items(&answer.get_items());
    reply
}

impl Core {
    pub fn new(
        sd: Connection,
        node: String,
        events: Arc<BoundedQueue<FromLink>>,
        outbound: Arc<BoundedQueue<Message>>,
        shutdown: Arc<AtomicBool>,
    ) -> Self {
        Core {
            sd,
            node,
            events,
            outbound,
            shutdown,
            jobs: HashMap::new(),
        }
    }

    pub fn run(&mut self) -> Result<(), String> {
        while !self.shutdown.load(Ordering::Relaxed) {
            {
                let mut fds = [
                    PollFd::new(bus_fd(&self.sd), PollFlags::POLLIN),
                    PollFd::new(self.events.wake_fd(), PollFlags::POLLIN),
                ];
                let ms = u16::try_from(CORE_TICK.as_millis()).unwrap_or(u16::MAX);
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(format!("poll failed: {e}")),
                }
            }
            self.sd
                .channel()
                .read_write(Some(Duration::ZERO))
                .map_err(|()| "lost the connection to systemd's bus".to_string())?;
            self.drain_bus();
            self.events.clear_wake();
            while let Some(ev) = self.events.try_pop() {
                match ev {
                    FromLink::Frame(msg) => {
                        if catch_unwind(AssertUnwindSafe(|| self.on_manager_message(msg))).is_err()
                        {
                            log_error!("Internal error handling a manager call; continuing");
                        }
                    }
                    FromLink::Connected => log_debug!("Link up"),
                    FromLink::Disconnected => log_debug!("Link down"),
                }
                // Signals that arrived during a blocking systemd call are handled in order,
                // after the call whose job they may concern was recorded.
                self.drain_bus();
            }
        }
        log_info!("Shutting down");
        Ok(())
    }

    fn drain_bus(&mut self) {
        while let Some(msg) = self.sd.channel().pop_message() {
            if msg.msg_type() == MessageType::Signal
                && msg.member().is_some_and(|m| &*m == "JobRemoved")
            {
                self.on_job_removed(&msg);
            }
        }
    }

    // [impl->req~agent.job-done~1]
    fn on_job_removed(&mut self, msg: &Message) {
        let Ok((_, job_path, unit, result)) = msg.read4::<u32, dbus::Path, &str, &str>() else {
            return;
        };
        let Some(job) = self.jobs.remove(&job_path.to_string()) else {
            return;
        };
        log_fields!(
            Debug,
            [("UNIT", unit), ("JOB", job.id.to_string().as_str())],
            "Job {} for {} done: {result}",
            job.id,
            job.unit
        );
        if let Ok(sig) = Message::new_signal(
            protocol::INTERNAL_AGENT_PATH,
            protocol::INTERNAL_AGENT_IFACE,
            "JobDone",
        ) {
            self.send(sig.append2(job.id, result));
        }
    }

    fn send(&self, msg: Message) {
        if self.outbound.try_push(msg).is_err() {
            log_warn!("Outgoing queue to the manager is full; message dropped");
        }
    }

    fn on_manager_message(&mut self, msg: Message) {
        if msg.msg_type() != MessageType::MethodCall {
            return;
        }
        let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
        let iface = msg.interface().map(|i| i.to_string()).unwrap_or_default();
        let result = if iface == protocol::INTERNAL_AGENT_IFACE {
            self.dispatch(&member, &msg)
        } else {
            Err(CallError::new(
                "org.freedesktop.DBus.Error.UnknownInterface",
                format!("unknown interface '{iface}'"),
            ))
        };
        let reply = match result {
            Ok(r) => Some(r),
            Err(e) => {
                log_debug!("{member} failed: {} ({})", e.message, e.name);
                error_reply(&msg, &e.name, &e.message)
            }
        };
        if let Some(r) = reply {
            self.send(r);
        }
    }

    fn expect_signature(msg: &Message, member: &str, sig: &str) -> Result<(), CallError> {
        let got = signature_of(msg);
        if got != sig {
            return Err(CallError::new(
                error::INVALID_ARGS,
                format!("{member} takes ({sig}), got ({got})"),
            ));
        }
        Ok(())
    }

    /// Executes one manager call against systemd.
    // [impl->req~agent.relay~1]
    fn dispatch(&mut self, member: &str, msg: &Message) -> Result<Message, CallError> {
        match member {
            "StartUnit" | "StopUnit" | "RestartUnit" | "ReloadUnit" => {
                Self::expect_signature(msg, member, "ssu")?;
                let (unit, mode, id) = msg
                    .read3::<&str, &str, u32>()
                    .map_err(|e| CallError::new(error::INVALID_ARGS, e.to_string()))?;
                if self.jobs.len() >= MAX_AGENT_JOBS {
                    return Err(CallError::new(
                        error::BUSY,
                        format!("{MAX_AGENT_JOBS} jobs in flight on node '{}'", self.node),
                    ));
                }
                let call = systemd::manager_call(member)?.append2(unit, mode);
                let answer = systemd::call(&self.sd, call)?;
                let path = answer
                    .read1::<dbus::Path>()
                    .map_err(|e| CallError::new(error::INVALID_ARGS, e.to_string()))?
                    .to_string();
                log_fields!(
                    Info,
                    [("UNIT", unit), ("JOB", id.to_string().as_str())],
                    "{member} {unit} ({mode}) as job {id}"
                );
                self.jobs.insert(
                    path,
                    AgentJob {
                        id,
                        unit: unit.to_string(),
                    },
                );
                Ok(msg.method_return())
            }
            "JobCancel" => {
                Self::expect_signature(msg, member, "u")?;
                let id: u32 = msg
                    .read1()
                    .map_err(|e| CallError::new(error::INVALID_ARGS, e.to_string()))?;
                let path = self
                    .jobs
                    .iter()
                    .find(|(_, j)| j.id == id)
                    .map(|(p, _)| p.clone())
                    .ok_or_else(|| {
                        CallError::new(error::INVALID_ARGS, format!("no job {id} on this node"))
                    })?;
                let call = Message::new_method_call(systemd::DEST, path, systemd::JOB_IFACE, "Cancel")
                    .map_err(|e| CallError::new(error::INVALID_ARGS, e))?;
                systemd::call(&self.sd, call)?;
                Ok(msg.method_return())
            }
            "GetUnitProperties" => {
                Self::expect_signature(msg, member, "ss")?;
                let (unit, iface) = msg
                    .read2::<&str, &str>()
                    .map_err(|e| CallError::new(error::INVALID_ARGS, e.to_string()))?;
                let path = systemd::unit_path(&self.sd, unit)?;
                let call = systemd::properties_call(&path, "GetAll")?.append1(iface);
                Ok(relay_reply(msg, &systemd::call(&self.sd, call)?))
            }
            "GetUnitProperty" => {
                Self::expect_signature(msg, member, "sss")?;
                let (unit, iface, prop) = msg
                    .read3::<&str, &str, &str>()
                    .map_err(|e| CallError::new(error::INVALID_ARGS, e.to_string()))?;
                let path = systemd::unit_path(&self.sd, unit)?;
                let call = systemd::properties_call(&path, "Get")?.append2(iface, prop);
                Ok(relay_reply(msg, &systemd::call(&self.sd, call)?))
            }
            // Same name and arguments as systemd's Manager method: relayed as is.
            "ListUnits" | "Reload" | "EnableUnitFiles" | "DisableUnitFiles" => {
                let sig = match member {
                    "EnableUnitFiles" => "asbb",
                    "DisableUnitFiles" => "asb",
                    _ => "",
                };
                Self::expect_signature(msg, member, sig)?;
                let mut call = systemd::manager_call(member)?;
                call.append_items(&msg.get_items());
                Ok(relay_reply(msg, &systemd::call(&self.sd, call)?))
            }
            _ => Err(CallError::new(
                "org.freedesktop.DBus.Error.UnknownMethod",
                format!("unknown method '{member}'"),
            )),
        }
    }
}
