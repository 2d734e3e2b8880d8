//! Names of the public D-Bus API and of the internal manager<->agent protocol.

/// Well-known name of the manager on the system bus.
pub const MANAGER_BUS_NAME: &str = "org.containers.hirte";
pub const MANAGER_PATH: &str = "/org/containers/hirte";
pub const MANAGER_IFACE: &str = "org.containers.hirte.Manager";
pub const NODE_IFACE: &str = "org.containers.hirte.Node";
pub const JOB_IFACE: &str = "org.containers.hirte.Job";
pub const MONITOR_IFACE: &str = "org.containers.hirte.Monitor";
pub const NODE_PATH_PREFIX: &str = "/org/containers/hirte/node";
pub const JOB_PATH_PREFIX: &str = "/org/containers/hirte/job";
pub const MONITOR_PATH_PREFIX: &str = "/org/containers/hirte/monitor";

/// Well-known name of the agent on its node's local bus.
pub const AGENT_BUS_NAME: &str = "org.containers.hirte.Agent";
pub const AGENT_IFACE: &str = "org.containers.hirte.Agent";

/// Internal link: the agent calls the manager here (only `Register`).
pub const INTERNAL_MANAGER_IFACE: &str = "org.containers.hirte.internal.Manager";
pub const INTERNAL_MANAGER_PATH: &str = "/org/containers/hirte/internal";
/// Internal link: the manager calls the agent here; the agent's signals come from here too.
pub const INTERNAL_AGENT_IFACE: &str = "org.containers.hirte.internal.Agent";
pub const INTERNAL_AGENT_PATH: &str = "/org/containers/hirte/internal/agent";
/// Internal link: the manager tells an agent's proxy (`PROXY_PATH_PREFIX/ID`) how its target is.
pub const INTERNAL_PROXY_IFACE: &str = "org.containers.hirte.internal.Proxy";
pub const PROXY_PATH_PREFIX: &str = "/org/containers/hirte/internal/proxy";
/// Template on the requesting node; the instance is `NODE_UNIT` (unit without `.service`).
pub const PROXY_TEMPLATE: &str = "hirte-proxy@";
/// Template on the target node; the instance is the unit without `.service`.
pub const DEP_TEMPLATE: &str = "hirte-dep@";
/// Neither side of the link is a bus: messages carry this as destination for libdbus' sake.
pub const LINK_PEER: &str = "org.containers.hirte.Link";

/// Public error names (`org.containers.hirte.Error.<Name>`).
// [impl->req~api.errors~1]
pub mod error {
    pub const OFFLINE: &str = "org.containers.hirte.Error.Offline";
    pub const NODE_NOT_FOUND: &str = "org.containers.hirte.Error.NodeNotFound";
    pub const NOT_ALLOWED: &str = "org.containers.hirte.Error.NotAllowed";
    pub const BUSY: &str = "org.containers.hirte.Error.Busy";
    pub const TIMEOUT: &str = "org.containers.hirte.Error.Timeout";
    pub const INVALID_ARGS: &str = "org.containers.hirte.Error.InvalidArgs";
    pub const NO_SUCH_SUBSCRIPTION: &str = "org.containers.hirte.Error.NoSuchSubscription";
    pub const ACTIVATION_FAILED: &str = "org.containers.hirte.Error.ActivationFailed";
    /// Register refused: a node of that name is already online.
    pub const ADDRESS_IN_USE: &str = "org.containers.hirte.Error.AddressInUse";
    /// The link peer broke the protocol (e.g. a second Register).
    pub const PROTOCOL: &str = "org.containers.hirte.Error.Protocol";
}

/// Node status values.
pub const NODE_ONLINE: &str = "online";
pub const NODE_OFFLINE: &str = "offline";

/// Job result a job gets when its node goes away before systemd answered.
pub const JOB_RESULT_CANCELLED: &str = "cancelled";

/// The D-Bus signature of a message's arguments (e.g. `"ss"`, `""` for none).
pub fn signature_of(msg: &dbus::Message) -> String {
    let mut it = msg.iter_init();
    let mut sig = String::new();
    while it.arg_type() != dbus::arg::ArgType::Invalid {
        sig.push_str(&it.signature());
        if !it.next() {
            break;
        }
    }
    sig
}

/// One row of systemd's `ListUnits` (`(ssssssouso)`): name, description, load state, active
/// state, sub state, followed unit, unit path, job id, job type, job path.
pub type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    dbus::Path<'static>,
    u32,
    String,
    dbus::Path<'static>,
);

/// The reply to `call` carrying `answer`'s return values (both daemons relay answers
/// verbatim). The values are copied one by one (`args`), never through a generic tree: an
/// answer of many small values would take many times its size as `MessageItem`s. An answer
/// that cannot be copied (a file descriptor) becomes an `Error.Protocol` reply.
pub fn copy_answer(call: &dbus::Message, answer: &dbus::Message) -> dbus::Message {
    let mut reply = call.method_return();
    match crate::args::copy_all(answer, &mut reply, &crate::args::same_path) {
        Ok(()) => reply,
        Err(e) => {
            let text = format!("the answer cannot be relayed: {e}");
            error_reply(call, error::PROTOCOL, &text).unwrap_or_else(|| call.method_return())
        }
    }
}

/// An error reply to `call` named `name` (or `Error.Protocol` when `name` is not a valid
/// error name), unless the caller asked for no reply. A NUL in `text` becomes a space.
pub fn error_reply(call: &dbus::Message, name: &str, text: &str) -> Option<dbus::Message> {
    if call.get_no_reply() {
        return None;
    }
    let name = dbus::strings::ErrorName::new(name.to_string())
        .or_else(|_| dbus::strings::ErrorName::new(error::PROTOCOL.to_string()))
        .ok()?;
    let text = std::ffi::CString::new(text.replace('\0', " ")).ok()?;
    Some(call.error(&name, &text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> dbus::Message {
        let mut m = dbus::Message::new_method_call(LINK_PEER, MANAGER_PATH, MANAGER_IFACE, "X")
            .expect("a valid call");
        m.set_serial(3);
        m
    }

    #[test]
    fn error_reply_names_the_error_and_falls_back_to_protocol() {
        let mut r = error_reply(&call(), error::BUSY, "full\0up").expect("a reply");
        let e = r.as_result().expect_err("an error");
        assert_eq!(e.name(), Some(error::BUSY));
        assert_eq!(e.message(), Some("full up"));
        let mut r = error_reply(&call(), "not a name", "x").expect("a reply");
        assert_eq!(
            r.as_result().expect_err("an error").name(),
            Some(error::PROTOCOL)
        );
    }

    #[test]
    fn error_reply_respects_no_reply() {
        let mut c = call();
        c.set_no_reply(true);
        assert!(error_reply(&c, error::BUSY, "x").is_none());
    }
}
