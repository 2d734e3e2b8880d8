//! Test double for systemd (a real one cannot run inside a unit test; the integration tests
//! in `tests/` use real `systemd --user` managers) and a core wired to in-memory queues.

use crate::core::{Channels, Core};
use crate::link::FromLink;
use crate::local_api::LocalApi;
use crate::systemd::{CallError, Systemd};
use dbus::arg::{RefArg, Variant};
use dbus::Message;
use hirte_common::frame::{FrameDecoder, SerialCounter};
use hirte_common::protocol;
use hirte_common::queue::BoundedQueue;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

type Answer = Box<dyn Fn(&Message) -> Result<Message, CallError>>;
type PropValue = Box<dyn Fn() -> Box<dyn RefArg>>;

/// Answers calls from a script: by default each job method returns a new job path, `LoadUnit`
/// and `GetUnit` a unit path, everything else an empty return. Records every call and send.
#[derive(Default)]
pub struct FakeSystemd {
    pub calls: RefCell<Vec<Message>>,
    pub sent: RefCell<Vec<Message>>,
    answers: RefCell<HashMap<String, Answer>>,
    /// `Properties.Get` answers: property name -> value.
    props: RefCell<HashMap<String, PropValue>>,
    last_job: Cell<u32>,
    /// Match rules in force, as the bus daemon would keep them.
    pub matches: RefCell<std::collections::BTreeSet<String>>,
    /// Refuse rules for a single unit, as a bus daemon at its per-connection limit does.
    pub refuse_unit_matches: Cell<bool>,
}

pub const JOB_PATH: &str = "/org/freedesktop/systemd1/job/";

impl FakeSystemd {
    /// Every call of `member` gets what `answer` returns.
    pub fn answer(
        &self,
        member: &str,
        answer: impl Fn(&Message) -> Result<Message, CallError> + 'static,
    ) {
        self.answers
            .borrow_mut()
            .insert(member.to_string(), Box::new(answer));
    }

    /// `Get` of `name` returns `value`.
    pub fn property<T: RefArg + Clone + 'static>(&self, name: &str, value: T) {
        self.props.borrow_mut().insert(
            name.to_string(),
            Box::new(move || Box::new(value.clone()) as Box<dyn RefArg>),
        );
    }

    /// The members called, in order.
    pub fn members(&self) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .map(|m| m.member().map(|s| s.to_string()).unwrap_or_default())
            .collect()
    }

    pub fn last_job_path(&self) -> String {
        format!("{JOB_PATH}{}", self.last_job.get())
    }
}

impl Systemd for FakeSystemd {
    fn call(&self, mut msg: Message) -> Result<Message, CallError> {
        msg.set_serial(1);
        self.calls
            .borrow_mut()
            .push(msg.duplicate().map_err(CallError::BadReply)?);
        let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
        if let Some(answer) = self.answers.borrow().get(&member) {
            return answer(&msg);
        }
        let reply = msg.method_return();
        Ok(match member.as_str() {
            "StartUnit" | "StopUnit" | "RestartUnit" | "ReloadUnit" | "StartTransientUnit" => {
                self.last_job.set(self.last_job.get() + 1);
                reply.append1(dbus::Path::from(self.last_job_path()))
            }
            "LoadUnit" | "GetUnit" => {
                let unit: &str = msg.read1().unwrap_or_default();
                let name = hirte_common::names::escape_path_element(unit);
                reply.append1(dbus::Path::from(format!(
                    "/org/freedesktop/systemd1/unit/{name}"
                )))
            }
            "Get" => {
                let (_, name): (&str, &str) = msg.read2().unwrap_or_default();
                match self.props.borrow().get(name) {
                    Some(v) => reply.append1(Variant(v())),
                    None => {
                        return Err(CallError::Dbus {
                            name: "org.freedesktop.DBus.Error.UnknownProperty".into(),
                            message: format!("no property {name}"),
                        })
                    }
                }
            }
            _ => reply,
        })
    }

    fn send(&self, msg: Message) {
        self.sent.borrow_mut().push(msg);
    }

    fn set_match(&self, rule: &str, on: bool) -> Result<(), CallError> {
        if on && self.refuse_unit_matches.get() && rule.contains(",path='") {
            return Err(CallError::Dbus {
                name: "org.freedesktop.DBus.Error.LimitsExceeded".into(),
                message: "too many match rules".into(),
            });
        }
        let mut m = self.matches.borrow_mut();
        if on {
            m.insert(rule.to_string());
        } else {
            m.remove(rule);
        }
        Ok(())
    }
}

/// A core on a `FakeSystemd`, with the link's queues to read what it sends the manager.
pub struct Harness {
    pub core: Core<FakeSystemd>,
    pub outbound: Arc<BoundedQueue<Vec<u8>>>,
    pub session: Arc<AtomicU64>,
    /// What `SwitchController` asked the link thread for.
    pub switch: Arc<crate::reconnect::SwitchRequest>,
    serial: u32,
}

impl Harness {
    pub fn new() -> Self {
        let outbound = Arc::new(BoundedQueue::new(64).unwrap());
        let session = Arc::new(AtomicU64::new(1));
        let ch = Channels {
            events: Arc::new(BoundedQueue::new(8).unwrap()),
            outbound: outbound.clone(),
            shutdown: Arc::new(AtomicBool::new(false)),
            serials: Arc::new(SerialCounter::default()),
            session: session.clone(),
        };
        let switch = Arc::new(crate::reconnect::SwitchRequest::default());
        let local = LocalApi::new(
            "tcp:host=m,port=2020".into(),
            Arc::default(),
            switch.clone(),
        );
        let mut core = Core::new(FakeSystemd::default(), "n1".into(), ch, local);
        core.set_exec_dir(
            std::env::temp_dir().join(format!("hirte-agent-test-{}", std::process::id())),
        );
        Harness {
            core,
            outbound,
            session,
            switch,
            serial: 100,
        }
    }

    pub fn sd(&self) -> &FakeSystemd {
        self.core.systemd()
    }

    /// A call from the manager on the agent's internal interface.
    pub fn manager_call(&mut self, member: &str) -> Message {
        self.serial += 1;
        let mut m = Message::new_method_call(
            protocol::INTERNAL_AGENT_IFACE,
            protocol::INTERNAL_AGENT_PATH,
            protocol::INTERNAL_AGENT_IFACE,
            member,
        )
        .unwrap();
        m.set_serial(self.serial);
        m
    }

    /// Delivers a frame from the manager, as the link thread does.
    pub fn deliver(&mut self, msg: Message) {
        self.core.on_link_event(FromLink::Frame(msg));
    }

    /// What the core sent the manager since the last look.
    pub fn to_manager(&self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(bytes) = self.outbound.try_pop() {
            let mut d = FrameDecoder::new(hirte_common::bounds::MAX_FRAME_SIZE);
            d.push(&bytes).unwrap();
            out.push(d.next_message().unwrap().unwrap());
        }
        out
    }
}

/// systemd's `JobRemoved(id, job, unit, result)`.
pub fn job_removed(job: &str, unit: &str, result: &str) -> Message {
    Message::new_signal(
        crate::systemd::PATH,
        crate::systemd::MANAGER_IFACE,
        "JobRemoved",
    )
    .unwrap()
    .append2(1u32, dbus::Path::from(job.to_string()))
    .append2(unit, result)
}

/// systemd's `PropertiesChanged(iface, changed, invalidated)` on `path`.
pub fn properties_changed(path: &str, iface: &str, changed: &[(&str, &str)]) -> Message {
    let mut props = dbus::arg::PropMap::new();
    for (k, v) in changed {
        props.insert(
            k.to_string(),
            Variant(Box::new(v.to_string()) as Box<dyn RefArg>),
        );
    }
    Message::new_signal(
        path.to_string(),
        "org.freedesktop.DBus.Properties",
        "PropertiesChanged",
    )
    .unwrap()
    .append3(iface, props, Vec::<String>::new())
}

/// The error name of an answer, or `None` for a method return or a signal.
pub fn error_name(m: &Message) -> Option<String> {
    if m.msg_type() == dbus::message::MessageType::Error {
        let mut copy = m.duplicate().ok()?;
        let e = copy.as_result().err()?;
        e.name().map(str::to_string)
    } else {
        None
    }
}

pub fn member(m: &Message) -> String {
    m.member().map(|s| s.to_string()).unwrap_or_default()
}
