//! [`NodeManager`]: a further manager (`hirte`) inside any node, with its own private system
//! bus, for failover tests: a standby behind a manager list, or one side of a keepalived pair.
//!
//! It is started and stopped by a small service script (`<dir>/<node>/mgr/hirte-service
//! start|stop|status`) run inside the node, the way keepalived's notify scripts run
//! `systemctl start hirte` on a real host. Its processes live in the node's cgroup, so the
//! cluster's teardown ends them like every other node process.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::bus::{self, MANAGER_BUS_NAME};
use crate::cluster::{wait_until, Cluster, COMMAND_TIMEOUT, NODE_UP_TIMEOUT};
use crate::process::{failed_output, format_output, run_with_timeout};
use crate::HarnessError;

/// A manager in node `node`: config in `mgr/etc/hirte.conf` (the first node's manager config),
/// log `mgr/manager.log`, bus `mgr/system_bus_socket`.
#[derive(Debug, Clone)]
pub struct NodeManager {
    node: String,
    dir: PathBuf,
    hirtectl: PathBuf,
}

impl NodeManager {
    /// Writes the node's manager files and starts its bus (not the manager: see
    /// [`NodeManager::start`]).
    pub fn prepare(c: &Cluster, node: &str) -> Result<Self, HarnessError> {
        let node_dir = c
            .node_dir(node)
            .ok_or_else(|| HarnessError::UnknownNode(node.to_string()))?;
        let dir = node_dir.join("mgr");
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc)
            .map_err(|e| HarnessError::io(format!("creating {}", etc.display()), e))?;
        let first = c
            .nodes()
            .first()
            .and_then(|n| c.node_config_dir(n))
            .ok_or_else(|| HarnessError::InvalidSpec("no nodes".into()))?;
        std::fs::copy(first.join("hirte.conf"), etc.join("hirte.conf"))
            .map_err(|e| HarnessError::io("copying hirte.conf", e))?;
        let socket = dir.join("system_bus_socket");
        let (bus_conf, _) = bus::write_config(&dir, &socket)?;
        let hirte = c.bin_dir().join("hirte");
        let script = format!(
            r#"#!/bin/sh
# start|stop|status of this node's Hirte manager (as `systemctl start|stop|is-active hirte`).
D={dir}
case "$1" in
start)
  if [ -f "$D/manager.pid" ] && kill -0 "$(cat "$D/manager.pid")" 2>/dev/null; then exit 0; fi
  HIRTE_CONFIG_DIR="$D/etc" DBUS_SYSTEM_BUS_ADDRESS="unix:path={socket}" \
    setsid {hirte} >>"$D/manager.log" 2>&1 </dev/null &
  echo $! >"$D/manager.pid" ;;
stop)
  [ -f "$D/manager.pid" ] || exit 0
  pid=$(cat "$D/manager.pid")
  kill -TERM "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$pid" 2>/dev/null
  rm -f "$D/manager.pid" ;;
status)
  [ -f "$D/manager.pid" ] && kill -0 "$(cat "$D/manager.pid")" 2>/dev/null ;;
*) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
"#,
            dir = dir.display(),
            socket = socket.display(),
            hirte = hirte.display(),
        );
        let script_path = dir.join("hirte-service");
        std::fs::write(&script_path, script)
            .map_err(|e| HarnessError::io(format!("writing {}", script_path.display()), e))?;
        std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| HarnessError::io("chmod hirte-service", e))?;
        let m = NodeManager {
            node: node.to_string(),
            dir,
            hirtectl: c.bin_dir().join("hirtectl"),
        };
        let out = c.node_shell(
            node,
            &format!(
                "setsid dbus-daemon --config-file={} --nofork >>{}/bus.log 2>&1 </dev/null &",
                bus_conf.display(),
                m.dir.display()
            ),
        );
        check(&out, "starting the node manager's bus")?;
        wait_until("the node manager's bus", NODE_UP_TIMEOUT, || {
            bus::connect(&m.bus_address()).is_ok()
        })?;
        Ok(m)
    }

    /// The service script (`start|stop|status`), for keepalived's notify scripts.
    pub fn service_script(&self) -> PathBuf {
        self.dir.join("hirte-service")
    }

    /// `<dir>/<node>/mgr/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts the manager and waits until it owns its bus name.
    pub fn start(&self, c: &Cluster) -> Result<(), HarnessError> {
        self.service(c, "start")?;
        wait_until("the node manager's bus name", NODE_UP_TIMEOUT, || {
            self.is_up()
        })
        .map_err(|e| with_detail(e, &self.log()))
    }

    /// Stops it as `systemctl stop` would (SIGTERM, SIGKILL after 10 s).
    pub fn stop(&self, c: &Cluster) -> Result<(), HarnessError> {
        self.service(c, "stop")
    }

    /// Whether it owns `org.containers.hirte` on its bus.
    pub fn is_up(&self) -> bool {
        bus::connect(&self.bus_address())
            .and_then(|b| bus::name_has_owner(&b, MANAGER_BUS_NAME))
            .unwrap_or(false)
    }

    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.dir.join("system_bus_socket").display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("manager.log")).unwrap_or_default()
    }

    /// `hirtectl <args>` against this manager's bus.
    pub fn hirtectl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.hirtectl);
        cmd.args(args)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address());
        run_with_timeout(&mut cmd, COMMAND_TIMEOUT, &self.dir)
            .unwrap_or_else(|e| failed_output(&e.to_string()))
    }

    /// `(node, state)` rows of its `hirtectl list-nodes`; `None` when that failed.
    pub fn list_nodes(&self) -> Option<Vec<(String, String)>> {
        let out = self.hirtectl(&["list-nodes"]);
        out.status
            .success()
            .then(|| crate::cluster::parse_list_nodes(&String::from_utf8_lossy(&out.stdout)))
    }

    fn service(&self, c: &Cluster, verb: &str) -> Result<(), HarnessError> {
        let out = c.node_shell(
            &self.node,
            &format!("{} {verb}", self.service_script().display()),
        );
        check(&out, &format!("hirte-service {verb} on {}", self.node))
    }
}

fn check(out: &Output, what: &str) -> Result<(), HarnessError> {
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::CommandFailed {
            command: what.to_string(),
            output: format_output(out),
        })
    }
}

fn with_detail(e: HarnessError, detail: &str) -> HarnessError {
    match e {
        HarnessError::Timeout { what, after, .. } => HarnessError::Timeout {
            what,
            after,
            detail: detail.to_string(),
        },
        other => other,
    }
}
