//! Network namespaces: one "switch" namespace with a bridge, one namespace per
//! node with `eth0` = 10.200.0.<index+1>/24 plugged into that bridge.
//!
//! The addresses exist only inside these namespaces; nothing here routes to
//! the host or beyond.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::process::run_checked;
use crate::HarnessError;

const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Node addresses are 10.200.0.<index + 1>.
pub(crate) fn node_ip(index: usize) -> String {
    format!("10.200.0.{}", index + 1)
}

/// The switch-side end of node `index`'s veth (names are per-namespace, so short and fixed).
pub(crate) fn port_name(index: usize) -> String {
    format!("p{index}")
}

fn ip(args: &[&str], scratch: &Path) -> Result<(), HarnessError> {
    run_checked(Command::new("ip").args(args), IP_TIMEOUT, scratch).map(|_| ())
}

/// Creates the switch namespace with bridge `br0` up.
pub(crate) fn create_switch(ns: &str, scratch: &Path) -> Result<(), HarnessError> {
    ip(&["netns", "add", ns], scratch)?;
    ip(&["-n", ns, "link", "add", "br0", "type", "bridge"], scratch)?;
    ip(&["-n", ns, "link", "set", "lo", "up"], scratch)?;
    ip(&["-n", ns, "link", "set", "br0", "up"], scratch)
}

/// Creates node namespace `ns` with `eth0` (veth) plugged into the switch.
pub(crate) fn create_node(
    ns: &str,
    switch: &str,
    index: usize,
    scratch: &Path,
) -> Result<(), HarnessError> {
    let port = port_name(index);
    let addr = format!("{}/24", node_ip(index));
    ip(&["netns", "add", ns], scratch)?;
    // Both ends are created directly inside their namespaces: no temporary
    // name in the host namespace that parallel clusters could collide on.
    ip(
        &[
            "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", &port, "netns",
            switch,
        ],
        scratch,
    )?;
    ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"], scratch)?;
    ip(&["-n", ns, "link", "set", "lo", "up"], scratch)?;
    ip(&["-n", ns, "link", "set", "eth0", "up"], scratch)?;
    ip(
        &["-n", switch, "link", "set", &port, "master", "br0", "up"],
        scratch,
    )
}

/// Takes the switch side of a node's link down or up. Down behaves like a
/// pulled cable: the node keeps its address and routes, packets are silently dropped.
pub(crate) fn set_port(
    switch: &str,
    index: usize,
    up: bool,
    scratch: &Path,
) -> Result<(), HarnessError> {
    let port = port_name(index);
    let state = if up { "up" } else { "down" };
    ip(&["-n", switch, "link", "set", &port, state], scratch)
}

/// Deletes a namespace; a namespace that does not exist is not an error (idempotent cleanup).
pub(crate) fn delete(ns: &str, scratch: &Path) -> Result<(), HarnessError> {
    if !exists(ns) {
        return Ok(());
    }
    ip(&["netns", "del", ns], scratch)
}

/// Whether `/run/netns/<ns>` exists.
pub(crate) fn exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}
