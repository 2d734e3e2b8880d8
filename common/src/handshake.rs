//! The first message on a new link must be `Register(s node_name)`. This checks it, without I/O,
//! so the manager's connection thread and the fuzzer share one definition.

use crate::names::{validate_node_name, NameError};
use crate::protocol::{INTERNAL_MANAGER_IFACE, INTERNAL_MANAGER_PATH};
use dbus::message::MessageType;
use dbus::Message;
use std::fmt;

/// Why a first message is not an acceptable Register call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    NotAMethodCall,
    WrongMember(String),
    WrongSignature(String),
    BadName(NameError),
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::NotAMethodCall => {
                write!(f, "first message must be the Register method call")
            }
            RegisterError::WrongMember(m) => {
                write!(f, "first message must be Register, got '{m}'")
            }
            RegisterError::WrongSignature(s) => {
                write!(f, "Register takes one string, got signature '{s}'")
            }
            RegisterError::BadName(e) => write!(f, "invalid node name: {e}"),
        }
    }
}

impl std::error::Error for RegisterError {}

/// Builds the agent's Register call (serial still to be set).
pub fn register_call(node_name: &str) -> Option<Message> {
    Message::new_method_call(
        crate::protocol::LINK_PEER,
        INTERNAL_MANAGER_PATH,
        INTERNAL_MANAGER_IFACE,
        "Register",
    )
    .ok()
    .map(|m| m.append1(node_name))
}

/// Accepts the first message of a link only if it is `Register(s)` with a valid node name.
// [impl->req~link.register-first~1]
pub fn check_register(msg: &Message) -> Result<String, RegisterError> {
    if msg.msg_type() != MessageType::MethodCall {
        return Err(RegisterError::NotAMethodCall);
    }
    let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
    let iface = msg.interface().map(|i| i.to_string()).unwrap_or_default();
    if member != "Register" || iface != INTERNAL_MANAGER_IFACE {
        return Err(RegisterError::WrongMember(format!("{iface}.{member}")));
    }
    let sig = crate::protocol::signature_of(msg);
    if sig != "s" {
        return Err(RegisterError::WrongSignature(sig));
    }
    let name: String = msg
        .read1()
        .map_err(|_| RegisterError::WrongSignature("s".to_string()))?;
    validate_node_name(&name).map_err(RegisterError::BadName)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~link.register-first~1]
    #[test]
    fn accepts_only_a_valid_register() {
        assert_eq!(
            check_register(&register_call("agent1").unwrap()),
            Ok("agent1".into())
        );
        assert!(matches!(
            check_register(&register_call("bad name").unwrap()),
            Err(RegisterError::BadName(_))
        ));
        let other = Message::new_method_call(
            crate::protocol::LINK_PEER,
            INTERNAL_MANAGER_PATH,
            INTERNAL_MANAGER_IFACE,
            "Heartbeat",
        )
        .unwrap();
        assert!(matches!(
            check_register(&other),
            Err(RegisterError::WrongMember(_))
        ));
        let wrong_sig = Message::new_method_call(
            crate::protocol::LINK_PEER,
            INTERNAL_MANAGER_PATH,
            INTERNAL_MANAGER_IFACE,
            "Register",
        )
        .unwrap()
        .append1(7u32);
        assert!(matches!(
            check_register(&wrong_sig),
            Err(RegisterError::WrongSignature(_))
        ));
        let signal =
            Message::new_signal(INTERNAL_MANAGER_PATH, INTERNAL_MANAGER_IFACE, "Register").unwrap();
        assert_eq!(check_register(&signal), Err(RegisterError::NotAMethodCall));
    }
}
