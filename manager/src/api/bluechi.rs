//! The `org.eclipse.bluechi` face of the manager: a gateway that translates BlueChi calls on
//! `/org/eclipse/bluechi/...` into the Hirte calls the crossroads tree answers, and Hirte's
//! answers and signals back into BlueChi's names, paths and error names. One model serves
//! both: a job started through either name is the same job, and every signal goes out on
//! both trees. What BlueChi lacks (e.g. `Node.Exec`) is not visible under its name.

use super::bluechi_members::{self as members, Interface};
use dbus::arg::messageitem::MessageItem;
use dbus::arg::PropMap;
use dbus::message::MessageType;
use dbus::strings::ErrorName;
use dbus::Message;
use hirte_common::args::copy_all;
use hirte_common::bounds::BLUECHI_PENDING_CALLS;
use hirte_common::protocol::{self, error};
use hirte_common::{log_info, log_warn};
use std::time::{Duration, Instant};

pub const BUS_NAME: &str = "org.eclipse.bluechi";
pub const PATH: &str = "/org/eclipse/bluechi";

const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const PEER: &str = "org.freedesktop.DBus.Peer";
const DBUS_ERROR: &str = "org.freedesktop.DBus.Error";
/// A deferred answer older than this was lost (the manager answers every call well before):
/// its slot may be reused.
const STALE_PENDING: Duration = Duration::from_secs(600);

/// Whether a call is addressed to the BlueChi tree.
pub fn is_bluechi_path(path: &str) -> bool {
    path == PATH
        || path
            .strip_prefix(PATH)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `/org/eclipse/bluechi/X` -> `/org/containers/hirte/X`.
fn to_hirte_path(path: &str) -> String {
    format!(
        "{}{}",
        protocol::MANAGER_PATH,
        path.get(PATH.len()..).unwrap_or_default()
    )
}

/// `/org/containers/hirte/X` -> `/org/eclipse/bluechi/X`; `None` for paths outside the public
/// tree (the internal objects have no BlueChi twin).
pub fn to_bluechi_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix(protocol::MANAGER_PATH)?;
    if !(rest.is_empty() || rest.starts_with('/')) || rest.starts_with("/internal") {
        return None;
    }
    Some(format!("{PATH}{rest}"))
}

/// BlueChi's name for one of our errors: BlueChi answers with its three own errors and the
/// standard D-Bus ones otherwise.
pub fn bluechi_error(name: &str) -> String {
    let std = |n: &str| format!("{DBUS_ERROR}.{n}");
    match name {
        error::OFFLINE => "org.eclipse.bluechi.Offline".to_string(),
        error::NO_SUCH_SUBSCRIPTION => "org.eclipse.bluechi.NoSuchSubscription".to_string(),
        error::ACTIVATION_FAILED => "org.eclipse.bluechi.ActivationFailed".to_string(),
        error::NODE_NOT_FOUND => std("ServiceUnknown"),
        error::INVALID_ARGS => std("InvalidArgs"),
        error::NOT_ALLOWED => std("AccessDenied"),
        error::ADDRESS_IN_USE => std("AddressInUse"),
        n if n.starts_with("org.containers.hirte.") => std("Failed"),
        n => n.to_string(),
    }
}

/// What the answer to a translated call needs besides renamed paths and errors.
#[derive(Clone, Copy)]
enum Answer {
    Plain,
    Introspect,
    GetAll(&'static Interface),
}

struct Pending {
    call: Message,
    answer: Answer,
    since: Instant,
}

/// A call translated for the crossroads tree: how to turn its answer back.
pub struct Translated {
    original: Message,
    answer: Answer,
}

pub struct Gateway {
    /// Calls whose answer comes later (relayed to agents); bounded by `BLUECHI_PENDING_CALLS`.
    pending: Vec<Pending>,
    /// `false` when `HirteBusName=no`: Hirte's own tree sends no signals.
    hirte_off: bool,
}

fn refuse(call: &Message, name: &str, text: String) -> Option<Message> {
    if call.get_no_reply() {
        return None;
    }
    let name = ErrorName::new(name).ok()?;
    let text = std::ffi::CString::new(text).ok()?;
    Some(call.error(&name, &text))
}

impl Gateway {
    /// Translates a call on the BlueChi tree; `Err` holds the refusal to send instead.
    // [impl->req~bluechi.controller~1]
    pub fn incoming(&mut self, msg: &Message) -> Result<(Message, Translated), Option<Message>> {
        let path = msg.path().map(|p| p.to_string()).unwrap_or_default();
        let iface = msg.interface().map(|i| i.to_string()).unwrap_or_default();
        let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
        let mut items = msg.get_items();
        let mut answer = Answer::Plain;
        let hirte_iface = match iface.as_str() {
            INTROSPECTABLE => {
                answer = Answer::Introspect;
                iface.clone()
            }
            PEER => iface.clone(),
            PROPERTIES => {
                let asked = match items.first() {
                    Some(MessageItem::Str(s)) => s.clone(),
                    _ => String::new(),
                };
                let Some(bc) = members::by_name(&asked) else {
                    return Err(refuse(
                        msg,
                        &format!("{DBUS_ERROR}.UnknownInterface"),
                        format!("unknown interface '{asked}'"),
                    ));
                };
                match (member.as_str(), items.get(1)) {
                    ("GetAll", _) => answer = Answer::GetAll(bc),
                    ("Get", Some(MessageItem::Str(p))) if !bc.has_property(p) => {
                        return Err(refuse(
                            msg,
                            &format!("{DBUS_ERROR}.UnknownProperty"),
                            format!("unknown property '{p}'"),
                        ))
                    }
                    ("Set", _) => {
                        return Err(refuse(
                            msg,
                            &format!("{DBUS_ERROR}.PropertyReadOnly"),
                            "the properties are read-only".to_string(),
                        ))
                    }
                    _ => {}
                }
                if let Some(first) = items.first_mut() {
                    *first = MessageItem::Str(bc.hirte.to_string());
                }
                iface.clone()
            }
            _ => {
                let Some(bc) = members::by_name(&iface) else {
                    return Err(refuse(
                        msg,
                        &format!("{DBUS_ERROR}.UnknownInterface"),
                        format!("unknown interface '{iface}'"),
                    ));
                };
                let Some((ins, _)) = bc.method(&member) else {
                    return Err(refuse(
                        msg,
                        &format!("{DBUS_ERROR}.UnknownMethod"),
                        format!("{iface} has no method '{member}'"),
                    ));
                };
                let expected: String = ins.iter().map(|(_, t)| *t).collect();
                let got = protocol::signature_of(msg);
                if got != expected {
                    return Err(refuse(
                        msg,
                        &format!("{DBUS_ERROR}.InvalidArgs"),
                        format!("{member} takes ({expected}), got ({got})"),
                    ));
                }
                bc.hirte.to_string()
            }
        };
        let dest = msg
            .destination()
            .map(|d| d.to_string())
            .unwrap_or_else(|| BUS_NAME.to_string());
        let mut call =
            Message::new_method_call(dest, to_hirte_path(&path), hirte_iface, member.clone())
                .map_err(|e| refuse(msg, error::INVALID_ARGS, e))?;
        call.append_items(&items);
        call.set_serial(msg.get_serial().unwrap_or(1));
        call.set_sender(msg.sender().map(|s| s.into_static()));
        call.set_no_reply(msg.get_no_reply());
        // A copy has serial 0 (libdbus resets it): the answer must name the caller's.
        let mut original = msg
            .duplicate()
            .map_err(|e| refuse(msg, error::PROTOCOL, e))?;
        original.set_serial(msg.get_serial().unwrap_or(1));
        Ok((call, Translated { original, answer }))
    }

    /// Turns the answers crossroads gave at once into BlueChi's; remembers the call when its
    /// answer comes later.
    // [impl->req~bluechi.bounds~1]
    pub fn answered(&mut self, t: Translated, replies: Vec<Message>, out: &mut Vec<Message>) {
        let mut answered = false;
        for r in replies {
            if is_reply(&r) {
                answered = true;
                out.extend(answer(&t.original, t.answer, &r));
            } else {
                self.outgoing(r, out);
            }
        }
        if answered || t.original.get_no_reply() {
            return;
        }
        let now = Instant::now();
        if self.pending.len() >= BLUECHI_PENDING_CALLS {
            self.pending
                .retain(|p| now.duration_since(p.since) < STALE_PENDING);
        }
        if self.pending.len() >= BLUECHI_PENDING_CALLS {
            log_warn!(
                "{BLUECHI_PENDING_CALLS} calls through {BUS_NAME} await an answer; refusing another"
            );
            // The answer, when it comes, goes out untranslated to a caller told it failed.
            out.extend(refuse(
                &t.original,
                &format!("{DBUS_ERROR}.LimitsExceeded"),
                format!("too many calls in flight (at most {BLUECHI_PENDING_CALLS})"),
            ));
            return;
        }
        self.pending.push(Pending {
            call: t.original,
            answer: t.answer,
            since: now,
        });
    }

    /// One message the manager sends: answers to BlueChi callers are translated; signals of
    /// the public tree are sent on both trees.
    pub fn outgoing(&mut self, msg: Message, out: &mut Vec<Message>) {
        if is_reply(&msg) {
            let dest = msg.destination().map(|d| d.to_string());
            let serial = msg.get_reply_serial();
            let found = self.pending.iter().position(|p| {
                p.call.get_serial() == serial && p.call.sender().map(|s| s.to_string()) == dest
            });
            match found {
                Some(i) => {
                    let p = self.pending.swap_remove(i);
                    out.extend(answer(&p.call, p.answer, &msg));
                }
                None => out.push(msg),
            }
            return;
        }
        if msg.msg_type() == MessageType::Signal {
            let twin = signal_twin(&msg);
            if !self.hirte_off || twin.is_none() {
                out.push(msg);
            }
            out.extend(twin);
            return;
        }
        out.push(msg);
    }

    /// The gateway; `hirte` tells whether Hirte's own tree is served too.
    pub fn new(hirte: bool) -> Self {
        log_info!(
            "Serving {BUS_NAME} at {PATH}{}",
            if hirte {
                " besides org.containers.hirte"
            } else {
                " only"
            }
        );
        Gateway {
            pending: Vec::with_capacity(BLUECHI_PENDING_CALLS),
            hirte_off: !hirte,
        }
    }
}

fn is_reply(m: &Message) -> bool {
    matches!(m.msg_type(), MessageType::MethodReturn | MessageType::Error)
}

/// BlueChi's answer to `call` from Hirte's answer `r`.
fn answer(call: &Message, kind: Answer, r: &Message) -> Option<Message> {
    if r.msg_type() == MessageType::Error {
        let e = r.duplicate().ok()?.as_result().err()?;
        let name = bluechi_error(e.name().unwrap_or(error::PROTOCOL));
        return refuse(call, &name, e.message().unwrap_or("").to_string());
    }
    let reply = call.method_return();
    match kind {
        // Copied value by value with the paths renamed: no generic tree of a large answer.
        // [impl->req~bounds.static-decode~1]
        Answer::Plain => {
            let mut reply = reply;
            match copy_all(r, &mut reply, &to_bluechi_path) {
                Ok(()) => Some(reply),
                Err(e) => refuse(
                    call,
                    &bluechi_error(error::PROTOCOL),
                    format!("the answer cannot be relayed: {e}"),
                ),
            }
        }
        Answer::Introspect => {
            let xml = r.read1::<&str>().ok()?;
            Some(reply.append1(introspection(xml)))
        }
        Answer::GetAll(bc) => {
            let mut props: PropMap = r.read1().ok()?;
            props.retain(|k, _| bc.has_property(k));
            Some(reply.append1(props))
        }
    }
}

/// The BlueChi copy of a signal of the public tree, if BlueChi has that signal.
fn signal_twin(msg: &Message) -> Option<Message> {
    let path = to_bluechi_path(&msg.path()?)?;
    let iface = msg.interface()?.to_string();
    let member = msg.member()?.to_string();
    let mut twin = if iface == PROPERTIES && member == "PropertiesChanged" {
        let (name, mut changed, gone): (String, PropMap, Vec<String>) = msg.read3().ok()?;
        let bc = members::by_hirte(&name)?;
        changed.retain(|k, _| bc.has_property(k));
        let gone: Vec<String> = gone.into_iter().filter(|k| bc.has_property(k)).collect();
        if changed.is_empty() && gone.is_empty() {
            return None;
        }
        Message::new_signal(path, PROPERTIES, member)
            .ok()?
            .append3(bc.name, changed, gone)
    } else {
        let bc = members::by_hirte(&iface)?;
        if !bc.has_signal(&member) {
            return None;
        }
        let mut m = Message::new_signal(path, bc.name, member).ok()?;
        copy_all(msg, &mut m, &to_bluechi_path).ok()?;
        m
    };
    twin.set_destination(msg.destination().map(|d| d.into_static()));
    Some(twin)
}

/// BlueChi's introspection of an object from ours: Hirte's interfaces become their BlueChi
/// descriptions, the standard ones and the child nodes stay.
pub fn introspection(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find("<interface ") {
        out.push_str(rest.get(..start).unwrap_or_default());
        let tail = rest.get(start..).unwrap_or_default();
        let end = tail
            .find("</interface>")
            .map_or(tail.len(), |e| e + "</interface>".len());
        let section = tail.get(..end).unwrap_or_default();
        let name = section.split('"').nth(1).unwrap_or_default();
        if name.starts_with("org.freedesktop.") {
            out.push_str(section);
        } else if let Some(bc) = members::by_hirte(name) {
            out.push_str(bc.xml().trim_start());
        }
        rest = tail.get(end..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbus::strings::BusName;
    use dbus::Path;

    fn call(path: &str, iface: &str, member: &str) -> Message {
        let mut m = Message::new_method_call(BUS_NAME, path, iface, member).unwrap();
        m.set_serial(7);
        m.set_sender(Some(BusName::new(":1.5").unwrap()));
        m
    }

    fn error_of(m: Option<Message>) -> String {
        let mut m = m.unwrap();
        m.as_result().unwrap_err().name().unwrap().to_string()
    }

    #[test]
    fn paths_map_both_ways_and_internal_objects_have_no_twin() {
        assert!(is_bluechi_path("/org/eclipse/bluechi"));
        assert!(is_bluechi_path("/org/eclipse/bluechi/node/a"));
        assert!(!is_bluechi_path("/org/eclipse/bluechix"));
        assert_eq!(
            to_hirte_path("/org/eclipse/bluechi/job/3"),
            "/org/containers/hirte/job/3"
        );
        assert_eq!(
            to_bluechi_path("/org/containers/hirte/node/agent_2d1").as_deref(),
            Some("/org/eclipse/bluechi/node/agent_2d1")
        );
        assert_eq!(
            to_bluechi_path("/org/containers/hirte/internal/agent"),
            None
        );
        assert_eq!(to_bluechi_path("/org/freedesktop/systemd1/job/4"), None);
    }

    // [utest->req~bluechi.controller~1]
    #[test]
    fn errors_get_bluechi_names() {
        assert_eq!(bluechi_error(error::OFFLINE), "org.eclipse.bluechi.Offline");
        assert_eq!(
            bluechi_error(error::NODE_NOT_FOUND),
            "org.freedesktop.DBus.Error.ServiceUnknown"
        );
        assert_eq!(
            bluechi_error(error::BUSY),
            "org.freedesktop.DBus.Error.Failed"
        );
        assert_eq!(
            bluechi_error("org.freedesktop.systemd1.NoSuchUnit"),
            "org.freedesktop.systemd1.NoSuchUnit"
        );
    }

    // [utest->req~bluechi.controller~1]
    #[test]
    fn calls_are_checked_against_bluechi_and_translated() {
        let mut gw = Gateway::new(true);
        let node = "/org/eclipse/bluechi/node/a";
        // Hirte's extra: not under BlueChi's name.
        let refused = gw.incoming(&call(node, "org.eclipse.bluechi.Node", "Exec"));
        assert_eq!(
            error_of(refused.err().flatten()),
            "org.freedesktop.DBus.Error.UnknownMethod"
        );
        let refused = gw.incoming(&call(node, "org.eclipse.bluechi.Node", "StartUnit"));
        assert_eq!(
            error_of(refused.err().flatten()),
            "org.freedesktop.DBus.Error.InvalidArgs"
        );
        let set = call(node, PROPERTIES, "Set").append3(
            "org.eclipse.bluechi.Node",
            "Name",
            dbus::arg::Variant("x"),
        );
        assert_eq!(
            error_of(gw.incoming(&set).err().flatten()),
            "org.freedesktop.DBus.Error.PropertyReadOnly"
        );
        let start = call(node, "org.eclipse.bluechi.Node", "StartUnit").append2("u", "replace");
        let (hirte, _) = gw.incoming(&start).ok().unwrap();
        assert_eq!(
            hirte.path().unwrap().to_string(),
            "/org/containers/hirte/node/a"
        );
        assert_eq!(
            hirte.interface().unwrap().to_string(),
            "org.containers.hirte.Node"
        );
        assert_eq!(hirte.get_serial(), Some(7));
        assert_eq!(hirte.read2::<&str, &str>().unwrap(), ("u", "replace"));
        let get = call(node, PROPERTIES, "Get").append2("org.eclipse.bluechi.Node", "Status");
        let (hirte, _) = gw.incoming(&get).ok().unwrap();
        assert_eq!(hirte.read1::<&str>().unwrap(), "org.containers.hirte.Node");
    }

    // [utest->req~bluechi.one-state~1]
    #[test]
    fn answers_and_signals_carry_bluechi_paths() {
        let mut gw = Gateway::new(true);
        let start = call(
            "/org/eclipse/bluechi/node/a",
            "org.eclipse.bluechi.Node",
            "StartUnit",
        )
        .append2("u", "replace");
        let (hirte, t) = gw.incoming(&start).ok().unwrap();
        // Answered later (relayed to the agent): remembered, then translated.
        let mut out = Vec::new();
        gw.answered(t, Vec::new(), &mut out);
        assert!(out.is_empty());
        let reply = hirte
            .method_return()
            .append1(Path::new("/org/containers/hirte/job/9").unwrap());
        gw.outgoing(reply, &mut out);
        let job: Path = out.pop().unwrap().read1().unwrap();
        assert_eq!(job.to_string(), "/org/eclipse/bluechi/job/9");

        let job_new =
            Message::new_signal(protocol::MANAGER_PATH, protocol::MANAGER_IFACE, "JobNew")
                .unwrap()
                .append2(9u32, Path::new("/org/containers/hirte/job/9").unwrap());
        gw.outgoing(job_new, &mut out);
        assert_eq!(out.len(), 2, "sent on both trees");
        let twin = out.pop().unwrap();
        assert_eq!(
            twin.interface().unwrap().to_string(),
            "org.eclipse.bluechi.Controller"
        );
        let (_, p): (u32, Path) = twin.read2().unwrap();
        assert_eq!(p.to_string(), "/org/eclipse/bluechi/job/9");
        // BlueChi has no NodeConnectionStateChanged.
        out.clear();
        let ncs = Message::new_signal(
            protocol::MANAGER_PATH,
            protocol::MANAGER_IFACE,
            "NodeConnectionStateChanged",
        )
        .unwrap()
        .append2("a", "online");
        gw.outgoing(ncs, &mut out);
        assert_eq!(out.len(), 1);
    }

    // [utest->req~bluechi.switch~1]
    #[test]
    fn with_hirte_off_only_the_bluechi_tree_signals() {
        let mut gw = Gateway::new(false);
        let mut out = Vec::new();
        let sig = Message::new_signal(protocol::MANAGER_PATH, protocol::MANAGER_IFACE, "JobNew")
            .unwrap()
            .append2(1u32, Path::new("/org/containers/hirte/job/1").unwrap());
        gw.outgoing(sig, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].path().unwrap().to_string(), PATH);
    }

    // [utest->req~bluechi.bounds~1]
    #[test]
    fn calls_awaiting_an_answer_are_bounded() {
        let mut gw = Gateway::new(true);
        let mut out = Vec::new();
        for i in 0..=BLUECHI_PENDING_CALLS {
            let mut m = call(
                "/org/eclipse/bluechi",
                "org.eclipse.bluechi.Controller",
                "ListUnits",
            );
            m.set_serial(u32::try_from(i).unwrap() + 1);
            let (_, t) = gw.incoming(&m).ok().unwrap();
            gw.answered(t, Vec::new(), &mut out);
        }
        assert_eq!(gw.pending.len(), BLUECHI_PENDING_CALLS);
        assert_eq!(
            error_of(out.pop()),
            "org.freedesktop.DBus.Error.LimitsExceeded"
        );
        assert!(out.is_empty());
    }

    // [utest->req~bluechi.introspection~1]
    #[test]
    fn introspection_shows_bluechi_interfaces_only() {
        let xml = "<node><interface name=\"org.freedesktop.DBus.Peer\"><method name=\"Ping\"/></interface>\
                   <interface name=\"org.containers.hirte.Node\"><method name=\"Exec\"/></interface>\
                   <node name=\"x\"/></node>";
        let out = introspection(xml);
        assert!(out.contains("org.freedesktop.DBus.Peer"));
        assert!(out.contains("<interface name=\"org.eclipse.bluechi.Node\">"));
        assert!(!out.contains("hirte") && !out.contains("Exec"));
        assert!(out.contains("<node name=\"x\"/>"));
    }
}
