//! The manager's private system bus and D-Bus connection helpers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dbus::blocking::Connection;
use dbus::channel::Channel;

use crate::HarnessError;

/// Well-known name the manager owns on the system bus.
pub const MANAGER_BUS_NAME: &str = "org.containers.hirte";

/// Name the bench's stand-in server owns on the manager's bus (`hirte-bench` row 3: a large
/// answer through the bus daemon); root may own it and call it, as it may the manager.
pub const BENCH_BUS_NAME: &str = "org.containers.hirte.bench";

/// Used when the project's policy file is not (yet) there.
const FALLBACK_POLICY: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root">
    <allow own="org.containers.hirte"/>
    <allow send_destination="org.containers.hirte"/>
    <allow receive_sender="org.containers.hirte"/>
  </policy>
</busconfig>
"#;

/// The project's policy file, from `$HIRTE_DBUS_POLICY` or the checkout this crate was built from.
fn project_policy() -> PathBuf {
    match std::env::var_os("HIRTE_DBUS_POLICY") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("manager/dbus/org.containers.hirte.conf"),
    }
}

/// Writes `<dir>/system-bus.conf` (a system-type bus shaped like Debian's
/// `system.conf`: deny by default, holes punched by `system.d/`) and fills
/// `<dir>/system.d/`. Returns the config path and whether the project's own
/// policy file was used.
pub(crate) fn write_config(dir: &Path, socket: &Path) -> Result<(PathBuf, bool), HarnessError> {
    let sysd = dir.join("system.d");
    std::fs::create_dir_all(&sysd)
        .map_err(|e| HarnessError::io(format!("creating {}", sysd.display()), e))?;
    let src = project_policy();
    let dest = sysd.join("org.containers.hirte.conf");
    let used_project = match std::fs::read(&src) {
        Ok(bytes) => {
            std::fs::write(&dest, bytes)
                .map_err(|e| HarnessError::io(format!("writing {}", dest.display()), e))?;
            true
        }
        Err(_) => {
            std::fs::write(&dest, FALLBACK_POLICY)
                .map_err(|e| HarnessError::io(format!("writing {}", dest.display()), e))?;
            false
        }
    };
    // BlueChi's name (manager/dbus/org.eclipse.bluechi.conf) beside ours, with the same rules.
    let bluechi = src.with_file_name("org.eclipse.bluechi.conf");
    if let Ok(bytes) = std::fs::read(&bluechi) {
        let dest = sysd.join("org.eclipse.bluechi.conf");
        std::fs::write(&dest, bytes)
            .map_err(|e| HarnessError::io(format!("writing {}", dest.display()), e))?;
    }
    let conf = format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Peer"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
    <allow own="{bench}"/>
    <allow send_destination="{bench}"/>
  </policy>
  <includedir>{sysd}</includedir>
</busconfig>
"#,
        socket = socket.display(),
        sysd = sysd.display(),
        bench = BENCH_BUS_NAME
    );
    let path = dir.join("system-bus.conf");
    std::fs::write(&path, conf)
        .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))?;
    Ok((path, used_project))
}

/// A private blocking connection to the bus at `address` (no env lookup, so
/// it never touches the host's buses).
pub fn connect(address: &str) -> Result<Connection, HarnessError> {
    let mut ch = Channel::open_private(address)
        .map_err(|e| HarnessError::dbus(format!("connecting to {address}"), &e))?;
    ch.register()
        .map_err(|e| HarnessError::dbus(format!("Hello on {address}"), &e))?;
    Ok(Connection::from(ch))
}

/// `org.freedesktop.DBus.NameHasOwner(name)`.
pub fn name_has_owner(conn: &Connection, name: &str) -> Result<bool, HarnessError> {
    let proxy = conn.with_proxy(
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        Duration::from_secs(5),
    );
    let (has,): (bool,) = proxy
        .method_call("org.freedesktop.DBus", "NameHasOwner", (name,))
        .map_err(|e| HarnessError::dbus(format!("NameHasOwner({name})"), &e))?;
    Ok(has)
}
