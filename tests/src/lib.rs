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

pub use bus::{connect as connect_bus, name_has_owner, BENCH_BUS_NAME, MANAGER_BUS_NAME};
pub use cluster::{
    bin_dir, binary, parse_list_nodes, states_map, wait_until, Cluster, ClusterResources,
    ClusterSpec, COMMAND_TIMEOUT, MANAGER_PORT, NODE_UP_TIMEOUT, ONLINE_TIMEOUT, POLL_STEP,
    STOP_GRACE,
};
pub use error::HarnessError;
pub use nix::sys::signal::Signal;
pub use node_manager::NodeManager;
pub use state::{cleanup_kept, cleanup_stale, DIR_PREFIX, STATE_FILE};

/// The line prefix a test prints on stdout when it did not run. nextest stores a passing test's
/// output in its JUnit report (`store-success-output` in `.config/nextest.toml`), and
/// `hirte-trace` counts a test whose output has this marker as skipped: no evidence.
pub const SKIP_MARKER: &str = "HIRTE-TEST-SKIPPED:";

/// The environment variable that lets a test which cannot run report itself as skipped instead
/// of failing (for a developer without root; the matrix then shows the skip as a defect).
pub const ALLOW_SKIP_ENV: &str = "HIRTE_ALLOW_SKIP";

/// A test that cannot run here: fails it, or, with `HIRTE_ALLOW_SKIP=1`, prints the
/// [`SKIP_MARKER`] line and returns false so that the test returns without asserting anything.
/// Either way the run cannot count it as a pass.
// [impl->req~trace.skipped-tests~1]
#[allow(clippy::panic)] // A test that cannot run must not look like a passing one.
pub fn cannot_run(test_name: &str, why: &str) -> bool {
    if std::env::var(ALLOW_SKIP_ENV).as_deref() == Ok("1") {
        println!("{SKIP_MARKER} {test_name}: {why}");
        eprintln!("SKIP {test_name}: {why}");
        return false;
    }
    panic!(
        "{test_name} cannot run: {why}. A test that did not run is no evidence; \
         {ALLOW_SKIP_ENV}=1 reports it as skipped instead of failing"
    );
}

/// Line prefixes hirte-trace reads from a test's output (requirements/README.md).
pub const MEASURED_MARKER: &str = "HIRTE-TEST-MEASURED:";
pub const NOT_SHOWN_MARKER: &str = "HIRTE-TEST-NOT-SHOWN:";
pub const SHOWN_MARKER: &str = "HIRTE-TEST-SHOWN:";

/// Reports a value the test measured and asserted for `requirement` (`req~x~1`); the matrix
/// shows it next to the test.
// [impl->req~trace.evidence-notes~1]
pub fn measured(requirement: &str, text: &str) {
    println!("{MEASURED_MARKER} {requirement}: {text}");
    eprintln!("measured for {requirement}: {text}");
}

/// Reports a part of `requirement` that this host cannot show: the matrix marks the
/// requirement "not shown on this host" instead of covered, unless a passing test reports the
/// same part shown ([`shown`]). `text` is `PART: details`; PART, up to the first `": "`, names
/// the part.
pub fn not_shown(requirement: &str, text: &str) {
    println!("{NOT_SHOWN_MARKER} {requirement}: {text}");
    eprintln!("not shown on this host for {requirement}: {text}");
}

/// Reports that this test showed the part of `requirement` that other tests report with
/// [`not_shown`] under the same PART (`text` is `PART: details`): that part then no longer
/// keeps the requirement from being covered.
// [impl->req~trace.evidence-notes~1]
pub fn shown(requirement: &str, text: &str) {
    println!("{SHOWN_MARKER} {requirement}: {text}");
    eprintln!("shown for {requirement}: {text}");
}

/// Asserts that `took` is within `bound` + `tolerance`, and reports the figure to the matrix.
#[allow(clippy::panic)] // An exceeded time bound is the test's failure.
pub fn assert_within(
    requirement: &str,
    what: &str,
    took: std::time::Duration,
    bound: std::time::Duration,
    tolerance: std::time::Duration,
) {
    let text = format!(
        "{what}: {:.3} s (bound {:.3} s, tolerance {:.3} s)",
        took.as_secs_f64(),
        bound.as_secs_f64(),
        tolerance.as_secs_f64()
    );
    if took > bound + tolerance {
        panic!("{requirement}: {text} exceeded");
    }
    measured(requirement, &text);
}

/// Whether the caller may run an integration test: true as root. Otherwise the test cannot
/// run ([`cannot_run`]): it fails, or with `HIRTE_ALLOW_SKIP=1` is reported as skipped.
pub fn require_root(test_name: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    cannot_run(
        test_name,
        "integration tests need root (namespaces, cgroups, systemd)",
    )
}
