//! Integration-test harness of Hirte-rs: brings up an N-node cluster on one
//! machine and tears it down again.
//!
//! Each node gets its own network namespace (`eth0` = `10.200.0.<i+1>/24` on
//! a bridge in a separate "switch" namespace), its own mount namespace (a
//! private tmpfs on `/run/systemd`), its own cgroup, and a real
//! `systemd --user` serving `org.freedesktop.systemd1` on the node's session
//! bus. The manager (`hirte`) runs in the first node's namespaces and talks
//! to a private system-type `dbus-daemon`; `hirtectl` runs on the host
//! against that bus. Everything is removed when the [`Cluster`] is dropped,
//! including while a test panics. See `../shared/spec/sandbox.md` (next to the checkout) for why
//! each step is needed.
//!
//! ```no_run
//! use hirte_tests::{Cluster, ClusterSpec};
//! if !hirte_tests::require_root("example") { return; }
//! let c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();
//! assert_eq!(c.node_state("n2").as_deref(), Some("online"));
//! c.write_unit("n2", "hello.service", "[Service]\nType=oneshot\nExecStart=/bin/true\n").unwrap();
//! assert!(c.hirtectl(&["start", "n2", "hello.service"]).status.success());
//! ```
//!
//! Environment: `HIRTE_BIN_DIR` (where `hirte`, `hirte-agent`, `hirtectl`
//! are; default: the cargo profile dir of the running test), `HIRTE_KEEP_DIR=1`
//! (keep temp dirs with logs after teardown), `HIRTE_DBUS_POLICY` (policy file
//! to install instead of `manager/dbus/org.containers.hirte.conf`).

mod bus;
mod cgroup;
mod cluster;
mod error;
pub mod guide;
mod net;
mod node_manager;
pub mod output;
pub mod pki;
mod process;
mod state;

pub use bus::{connect as connect_bus, name_has_owner, MANAGER_BUS_NAME};
pub use cluster::{
    bin_dir, binary, parse_list_nodes, states_map, wait_until, Cluster, ClusterResources,
    ClusterSpec, COMMAND_TIMEOUT, MANAGER_PORT, NODE_UP_TIMEOUT, ONLINE_TIMEOUT, POLL_STEP,
    STOP_GRACE,
};
pub use error::HarnessError;
pub use nix::sys::signal::Signal;
pub use node_manager::NodeManager;
pub use state::{cleanup_kept, cleanup_stale, DIR_PREFIX, STATE_FILE};

/// Whether the caller may run an integration test: true as root. Otherwise
/// prints a SKIP line and returns false, except under `CI=true`, where it panics.
#[allow(clippy::panic)] // In CI a silently skipped integration test would hide a broken setup.
pub fn require_root(test_name: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test_name}: integration tests need root (namespaces, cgroups, systemd) and CI=true does not allow skipping them");
    }
    eprintln!(
        "SKIP {test_name}: integration tests need root (they create namespaces and run systemd)"
    );
    false
}
