//! Bad input on the manager's public D-Bus API: wrong argument types, huge strings, unknown
//! nodes and objects, and thousands of monitors and subscriptions from one client. Each gets
//! a clear error (`InvalidArgs`, `NodeNotFound`, `Busy`, ...); the manager and every node
//! carry on.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use dbus::blocking::Connection;
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::{
    MAX_MONITORS, MAX_MONITORS_PER_OWNER, MAX_PEERS_PER_MONITOR, MAX_SUBSCRIPTIONS_PER_MONITOR,
    MAX_UNITS_PER_SUBSCRIPTION,
};
use hirte_tests::{Cluster, ClusterSpec, Signal};

const NODES: [&str; 3] = ["primary", "agent1", "agent2"];
const MONITOR_IFACE: &str = "org.containers.hirte.Monitor";
const BUSY: &str = "org.containers.hirte.Error.Busy";

/// `busctl --address=<bus> call org.containers.hirte PATH IFACE MEMBER SIG ARGS...`.
fn busctl(
    c: &Cluster,
    path: &str,
    iface: &str,
    member: &str,
    sig_and_args: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new("busctl");
    cmd.arg(format!("--address={}", c.bus_address()))
        .args(["call", BUS_NAME, path, iface, member])
        .args(sig_and_args);
    run_timeout(&mut cmd, Duration::from_secs(30))
}

/// The manager still serves: alive, every node online, a relayed call answers.
#[track_caller]
fn still_serves(c: &Cluster, after: &str) {
    assert!(
        c.manager_pid().is_some(),
        "manager died after {after}\n{}",
        c.log_tails()
    );
    assert_all_online(c, &NODES);
    let units = ok(
        &c.hirtectl(&["list-units", "agent2"]),
        &format!("list-units after {after}"),
    );
    assert!(units.contains("default.target"), "{units}");
}

fn method(path: &str, iface: &str, member: &str) -> Message {
    Message::new_method_call(BUS_NAME, path, iface, member).unwrap()
}

/// A blocking call with a raw message; the error as (name, message).
fn raw_call(conn: &Connection, msg: Message) -> Result<Message, (String, String)> {
    conn.channel()
        .send_with_reply_and_block(msg, Duration::from_secs(30))
        .map_err(|e| {
            (
                e.name().unwrap_or("").to_string(),
                e.message().unwrap_or("").to_string(),
            )
        })
}

/// Records a deviation unless `r` is an error with one of `names` and a non-empty message.
fn expect_error(
    problems: &mut Vec<String>,
    r: Result<impl std::fmt::Debug, (String, String)>,
    names: &[&str],
    what: &str,
) -> String {
    match r {
        Ok(v) => {
            problems.push(format!(
                "{what}: expected one of {names:?}, got success {v:?}"
            ));
            String::new()
        }
        Err((name, msg)) => {
            let short: String = msg.chars().take(160).collect();
            if !names.contains(&name.as_str()) {
                problems.push(format!(
                    "{what}: expected one of {names:?}, got {name}: {short}"
                ));
            } else if msg.trim().is_empty() {
                problems.push(format!("{what}: {name} without a message"));
            }
            msg
        }
    }
}

const INVALID: [&str; 2] = [
    "org.freedesktop.DBus.Error.InvalidArgs",
    "org.containers.hirte.Error.InvalidArgs",
];

// [itest->req~api.errors~1]
// [itest->req~link.max-frame~1]
// [itest->req~common.unit-name~1]
#[test]
fn badinput_dbus_wrong_types_huge_strings_unknown_nodes_clear_errors() {
    if !hirte_tests::require_root(
        "badinput_dbus_wrong_types_huge_strings_unknown_nodes_clear_errors",
    ) {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    let agent1 = node_path("agent1");
    let bus = c.system_bus().unwrap();
    let mut problems: Vec<String> = Vec::new();

    // Wrong argument types and counts, as an operator would type them with busctl: refused
    // with a message, nothing happens.
    let wrong: Vec<(&str, &str, &str, Vec<&str>)> = vec![
        (MANAGER_PATH, MANAGER_IFACE, "GetNode", vec!["u", "5"]),
        (MANAGER_PATH, MANAGER_IFACE, "GetNode", vec![]),
        (
            MANAGER_PATH,
            MANAGER_IFACE,
            "SetLogLevel",
            vec!["b", "true"],
        ),
        (
            &agent1,
            NODE_IFACE,
            "StartUnit",
            vec!["s", "only-one.service"],
        ),
        (&agent1, NODE_IFACE, "StartUnit", vec!["ii", "1", "2"]),
        (
            &agent1,
            NODE_IFACE,
            "KillUnit",
            vec!["sss", "a.service", "all", "9"],
        ),
        (
            &agent1,
            NODE_IFACE,
            "EnableUnitFiles",
            vec!["sbb", "a.service", "false", "false"],
        ),
        (&agent1, NODE_IFACE, "Exec", vec!["s", "/bin/true"]),
        (
            &agent1,
            NODE_IFACE,
            "SetUnitProperties",
            vec!["sbs", "a.service", "true", "x"],
        ),
    ];
    for (path, iface, member, args) in &wrong {
        let out = busctl(&c, path, iface, member, args);
        assert!(
            !out.status.success(),
            "{member} {args:?} succeeded: {}",
            show(&out)
        );
        assert!(
            !stderr(&out).trim().is_empty(),
            "{member} {args:?}: no message: {}",
            show(&out)
        );
    }
    // The same through the library, to see the error names: InvalidArgs, as api.md lists.
    let typed: Vec<(&str, &str, &str, Message)> = vec![
        (
            "GetNode(u)",
            MANAGER_PATH,
            MANAGER_IFACE,
            method(MANAGER_PATH, MANAGER_IFACE, "GetNode").append1(5u32),
        ),
        (
            "GetNode()",
            MANAGER_PATH,
            MANAGER_IFACE,
            method(MANAGER_PATH, MANAGER_IFACE, "GetNode"),
        ),
        (
            "StartUnit(ii)",
            &agent1,
            NODE_IFACE,
            method(&agent1, NODE_IFACE, "StartUnit").append2(1i32, 2i32),
        ),
        (
            "KillUnit(sss)",
            &agent1,
            NODE_IFACE,
            method(&agent1, NODE_IFACE, "KillUnit").append3("a.service", "all", "9"),
        ),
        ("Subscribe(uu) on a monitor", MANAGER_PATH, MANAGER_IFACE, {
            let (m,): (dbus::Path,) =
                call(&bus, MANAGER_PATH, MANAGER_IFACE, "CreateMonitor", ()).unwrap();
            method(&m, MONITOR_IFACE, "Subscribe").append2(1u32, 2u32)
        }),
    ];
    for (what, _, _, msg) in typed {
        expect_error(&mut problems, raw_call(&bus, msg), &INVALID, what);
    }
    // Extra arguments are a wrong signature too: they must not be silently dropped.
    for (what, msg) in [
        (
            "GetNode(ss)",
            method(MANAGER_PATH, MANAGER_IFACE, "GetNode").append2("agent1", "surplus"),
        ),
        (
            "CreateMonitor(s)",
            method(MANAGER_PATH, MANAGER_IFACE, "CreateMonitor").append1("surplus"),
        ),
        (
            "GetUnitFileState(ss)",
            method(&agent1, NODE_IFACE, "GetUnitFileState").append2("a.service", "surplus"),
        ),
    ] {
        expect_error(&mut problems, raw_call(&bus, msg), &INVALID, what);
    }
    // Values of the right type that are wrong.
    expect_error(
        &mut problems,
        call::<_, ()>(&bus, MANAGER_PATH, MANAGER_IFACE, "SetLogLevel", ("loud",)),
        &INVALID,
        "SetLogLevel(loud)",
    );
    let msg = expect_error(
        &mut problems,
        call::<_, (dbus::Path,)>(&bus, MANAGER_PATH, MANAGER_IFACE, "GetNode", ("nope",)),
        &["org.containers.hirte.Error.NodeNotFound"],
        "GetNode(nope)",
    );
    assert!(msg.contains("nope"), "{msg}");
    expect_error(
        &mut problems,
        call::<_, (dbus::Path,)>(&bus, MANAGER_PATH, MANAGER_IFACE, "GetNode", ("",)),
        &["org.containers.hirte.Error.NodeNotFound"],
        "GetNode(\"\")",
    );
    expect_error(
        &mut problems,
        call::<_, (dbus::Path,)>(
            &bus,
            &node_path("nope"),
            NODE_IFACE,
            "StartUnit",
            ("a.service", "replace"),
        ),
        &[
            "org.freedesktop.DBus.Error.UnknownObject",
            "org.freedesktop.DBus.Error.UnknownMethod",
        ],
        "StartUnit on an unknown node's path",
    );
    expect_error(
        &mut problems,
        call::<_, ()>(&bus, MANAGER_PATH, MANAGER_IFACE, "Frobnicate", ()),
        &["org.freedesktop.DBus.Error.UnknownMethod"],
        "an unknown method",
    );
    expect_error(
        &mut problems,
        call::<_, ()>(&bus, MANAGER_PATH, "org.example.Nope", "Frobnicate", ()),
        &[
            "org.freedesktop.DBus.Error.UnknownInterface",
            "org.freedesktop.DBus.Error.UnknownMethod",
        ],
        "an unknown interface",
    );
    expect_error(
        &mut problems,
        call::<_, ()>(
            &bus,
            "/org/containers/hirte/job/999999",
            JOB_IFACE,
            "Cancel",
            (),
        ),
        &[
            "org.freedesktop.DBus.Error.UnknownObject",
            "org.freedesktop.DBus.Error.UnknownMethod",
        ],
        "Cancel of a job that never existed",
    );
    expect_error(
        &mut problems,
        call::<_, (dbus::Path,)>(
            &bus,
            &agent1,
            NODE_IFACE,
            "StartUnit",
            ("no-such.service", "replace"),
        ),
        &[
            "org.freedesktop.systemd1.NoSuchUnit",
            "org.freedesktop.DBus.Error.InvalidArgs",
        ],
        "StartUnit of a unit that does not exist",
    );
    expect_error(
        &mut problems,
        call::<_, (dbus::Path,)>(
            &bus,
            &agent1,
            NODE_IFACE,
            "StartUnit",
            ("a.service", "bogus-mode"),
        ),
        &INVALID,
        "StartUnit with a bogus job mode",
    );
    still_serves(&c, "wrong arguments");

    // Huge strings: 1 MiB names get a clear error, and nothing else happens.
    let huge = "x".repeat(1024 * 1024);
    let t = Instant::now();
    let msg = expect_error(
        &mut problems,
        call::<_, (dbus::Path,)>(
            &bus,
            MANAGER_PATH,
            MANAGER_IFACE,
            "GetNode",
            (huge.as_str(),),
        ),
        &["org.containers.hirte.Error.NodeNotFound"],
        "GetNode(1 MiB)",
    );
    eprintln!(
        "FIGURE GetNode(1 MiB name): NodeNotFound with a {}-byte message in {:?}",
        msg.len(),
        t.elapsed()
    );
    let unit = format!("{huge}.service");
    let t = Instant::now();
    expect_error(
        &mut problems,
        call::<_, (dbus::Path,)>(
            &bus,
            &agent1,
            NODE_IFACE,
            "StartUnit",
            (unit.as_str(), "replace"),
        ),
        &INVALID,
        "StartUnit(1 MiB unit name)",
    );
    eprintln!(
        "FIGURE StartUnit(1 MiB unit name) answered in {:?}",
        t.elapsed()
    );
    expect_error(
        &mut problems,
        call::<_, ()>(
            &bus,
            MANAGER_PATH,
            MANAGER_IFACE,
            "SetLogLevel",
            (huge.as_str(),),
        ),
        &INVALID,
        "SetLogLevel(1 MiB)",
    );
    let many: Vec<String> = (0..100_000).map(|i| format!("u{i}.service")).collect();
    expect_error(
        &mut problems,
        call::<_, (bool, Vec<(String, String, String)>)>(
            &bus,
            &agent1,
            NODE_IFACE,
            "EnableUnitFiles",
            (many, false, false),
        ),
        &[
            "org.freedesktop.DBus.Error.InvalidArgs",
            "org.freedesktop.systemd1.NoSuchUnit",
            "org.freedesktop.DBus.Error.FileNotFound",
            "org.freedesktop.DBus.Error.LimitsExceeded",
            "org.containers.hirte.Error.InvalidArgs",
        ],
        "EnableUnitFiles with 100,000 names",
    );
    still_serves(&c, "1 MiB strings");
    // An argument larger than a link frame (4 MiB) cannot be relayed: the caller must get an
    // error, and the node must stay connected. GetUnitFileState is one of the read-only calls
    // the D-Bus policy grants to hirte-operators.
    let giant = "y".repeat(5 * 1024 * 1024);
    for member in ["StartUnit", "GetUnitFileState"] {
        let before = c.manager_log().len();
        let r: Result<String, (String, String)> = if member == "StartUnit" {
            call::<_, (dbus::Path,)>(
                &bus,
                &agent1,
                NODE_IFACE,
                member,
                (format!("{giant}.service"), "replace"),
            )
            .map(|(p,)| p.to_string())
        } else {
            call::<_, (String,)>(
                &bus,
                &agent1,
                NODE_IFACE,
                member,
                (format!("{giant}.service"),),
            )
            .map(|(s,)| s)
        };
        let answer = match &r {
            Ok(v) => format!("success {v:?}"),
            Err((n, m)) => format!("{n}: {}", m.chars().take(160).collect::<String>()),
        };
        // A later call through agent1's link is answered only after the manager has read
        // past whatever the giant call made the agent send: if that had cost the link, the
        // disconnect is logged by then.
        let later = c.hirtectl(&["list-units", "agent1"]);
        if !later.status.success() {
            problems.push(format!(
                "{member}(5 MiB unit name): a later list-units agent1 failed: {}",
                String::from_utf8_lossy(&later.stderr).trim()
            ));
        }
        let dropped: Vec<String> = c.manager_log()[before..]
            .lines()
            .filter(|l| l.contains("Agent 'agent1' disconnected"))
            .map(str::to_string)
            .collect();
        if !dropped.is_empty() || r.is_ok() {
            problems.push(format!(
                "{member}(5 MiB unit name): the caller got {answer}; the manager logged {dropped:?}"
            ));
        }
        c.wait_all_online(SOON).unwrap();
    }
    still_serves(&c, "5 MiB unit names");
    unit_names_are_checked_at_the_api(&bus, &agent1, &giant, &mut problems);
    assert!(
        problems.is_empty(),
        "{} deviations:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Unit names are checked before anything is done with them, monitors included (a 5 MiB
/// name in `Subscribe` was re-sent to every node on every tick): `InvalidArgs` naming the
/// problem, from the manager itself.
fn unit_names_are_checked_at_the_api(
    bus: &Connection,
    agent1: &str,
    giant: &str,
    problems: &mut Vec<String>,
) {
    const HIRTE_INVALID: [&str; 1] = ["org.containers.hirte.Error.InvalidArgs"];
    let (m,): (dbus::Path,) = call(bus, MANAGER_PATH, MANAGER_IFACE, "CreateMonitor", ()).unwrap();
    let long = format!("{}.service", "l".repeat(248));
    type Answer = Result<(u32,), (String, String)>;
    let cases: Vec<(&str, Answer, &str)> = vec![
        (
            "Subscribe(5 MiB unit name)",
            call(bus, &m, MONITOR_IFACE, "Subscribe", ("agent1", giant)),
            "5242880 bytes long, the limit is 255",
        ),
        (
            "Subscribe(256-byte unit name)",
            call(bus, &m, MONITOR_IFACE, "Subscribe", ("*", long.as_str())),
            "256 bytes long, the limit is 255",
        ),
        (
            "SubscribeList with one bad name",
            call(
                bus,
                &m,
                MONITOR_IFACE,
                "SubscribeList",
                ("agent1", vec!["a.service", "b c.service"]),
            ),
            "'b c.service': unit name contains ' '",
        ),
        (
            "Subscribe(no suffix)",
            call(bus, &m, MONITOR_IFACE, "Subscribe", ("agent1", "nosuffix")),
            "no type suffix",
        ),
    ];
    for (what, r, says) in cases {
        let text = expect_error(problems, r, &HIRTE_INVALID, what);
        if !text.is_empty() && !text.contains(says) {
            problems.push(format!("{what}: the error does not say '{says}': {text}"));
        }
    }
    let start = call::<_, (dbus::Path,)>(
        bus,
        agent1,
        NODE_IFACE,
        "StartUnit",
        ("../a.service", "replace"),
    );
    let text = expect_error(problems, start, &HIRTE_INVALID, "StartUnit(../a.service)");
    if !text.is_empty() && !text.starts_with("StartUnit: '../a.service': unit name contains '/'") {
        problems.push(format!("StartUnit(../a.service): {text}"));
    }
    // The wildcard and ordinary names still subscribe.
    for unit in ["*", "getty@tty1.service"] {
        if let Err(e) = call::<_, (u32,)>(bus, &m, MONITOR_IFACE, "Subscribe", ("agent1", unit)) {
            problems.push(format!("Subscribe({unit}) refused: {e:?}"));
        }
    }
}

/// Calls `CreateMonitor` until it fails; returns the monitor paths and the first error.
fn create_monitors(conn: &Connection, tries: usize) -> (Vec<String>, Vec<(String, String)>) {
    let mut paths = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..tries {
        match call::<_, (dbus::Path,)>(conn, MANAGER_PATH, MANAGER_IFACE, "CreateMonitor", ()) {
            Ok((p,)) => paths.push(p.to_string()),
            Err(e) => errors.push(e),
        }
    }
    (paths, errors)
}

// [itest->req~bounds.monitors~1]
// [itest->req~manager.monitor-owner-gone~1]
#[test]
fn badinput_dbus_thousands_of_monitors_and_subscriptions_busy_beyond_bounds() {
    if !hirte_tests::require_root(
        "badinput_dbus_thousands_of_monitors_and_subscriptions_busy_beyond_bounds",
    ) {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    c.write_unit("agent1", "work.service", SLEEP_UNIT).unwrap();
    let pid = c.manager_pid().unwrap();
    let rss = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let rss0 = rss();

    // One client, 1,000 monitors: 32 are created, the rest are Busy.
    let greedy = c.system_bus().unwrap();
    let t = Instant::now();
    let (mine, errors) = create_monitors(&greedy, 1000);
    assert_eq!(mine.len(), MAX_MONITORS_PER_OWNER);
    assert_eq!(errors.len(), 1000 - MAX_MONITORS_PER_OWNER);
    assert!(
        errors.iter().all(|(n, _)| n == BUSY),
        "{:?}",
        errors.first()
    );
    assert!(
        errors[0].1.contains("at most 32 monitors"),
        "{:?}",
        errors[0]
    );
    let monitors_took = t.elapsed();

    // One monitor, 2,000 subscriptions: 256 are taken, the rest are Busy.
    let mon = &mine[0];
    let t = Instant::now();
    let mut subs = 0;
    let mut busy = 0;
    for i in 0..2000 {
        match call::<_, (u32,)>(
            &greedy,
            mon,
            MONITOR_IFACE,
            "Subscribe",
            ("agent1", format!("u{i}.service")),
        ) {
            Ok(_) => subs += 1,
            Err((n, m)) => {
                assert_eq!(n, BUSY, "{m}");
                busy += 1;
            }
        }
    }
    assert_eq!(
        (subs, busy),
        (
            MAX_SUBSCRIPTIONS_PER_MONITOR,
            2000 - MAX_SUBSCRIPTIONS_PER_MONITOR
        )
    );
    let subs_took = t.elapsed();
    // Other bounds of one monitor.
    let too_many: Vec<String> = (0..=MAX_UNITS_PER_SUBSCRIPTION)
        .map(|i| format!("v{i}.service"))
        .collect();
    let (n, _) = call::<_, (u32,)>(
        &greedy,
        &mine[1],
        MONITOR_IFACE,
        "SubscribeList",
        ("agent1", too_many),
    )
    .unwrap_err();
    assert_eq!(n, BUSY);
    for i in 0..MAX_PEERS_PER_MONITOR {
        call::<_, (u32,)>(
            &greedy,
            &mine[1],
            MONITOR_IFACE,
            "AddPeer",
            (format!(":1.{}", 9000 + i),),
        )
        .unwrap();
    }
    let (n, _) =
        call::<_, (u32,)>(&greedy, &mine[1], MONITOR_IFACE, "AddPeer", (":1.9999",)).unwrap_err();
    assert_eq!(n, BUSY);
    // Empty names and other owners' monitors are refused, but not with Busy.
    let (n, _) = call::<_, (u32,)>(
        &greedy,
        &mine[1],
        MONITOR_IFACE,
        "Subscribe",
        ("", "x.service"),
    )
    .unwrap_err();
    // The empty node is a node outside AllowedNodeNames.
    assert_eq!(n, "org.containers.hirte.Error.NodeNotFound");
    let (n, _) = call::<_, (u32,)>(
        &greedy,
        &mine[1],
        MONITOR_IFACE,
        "Subscribe",
        ("agent1", ""),
    )
    .unwrap_err();
    assert_eq!(n, "org.containers.hirte.Error.InvalidArgs");
    // An empty unit list is bad input, not a bound.
    let (n, msg) = call::<_, (u32,)>(
        &greedy,
        &mine[1],
        MONITOR_IFACE,
        "SubscribeList",
        ("agent1", Vec::<String>::new()),
    )
    .unwrap_err();
    assert_eq!(n, "org.containers.hirte.Error.InvalidArgs", "{msg}");
    assert!(msg.contains("at least one unit"), "{msg}");
    let other = c.system_bus().unwrap();
    let (n, _) = call::<_, (u32,)>(
        &other,
        &mine[1],
        MONITOR_IFACE,
        "Subscribe",
        ("agent1", "x.service"),
    )
    .unwrap_err();
    assert_eq!(n, "org.containers.hirte.Error.NotAllowed");

    // The manager-wide bound: 256 monitors across all clients.
    let mut clients = vec![];
    let mut total = mine.len();
    let mut global_busy = None;
    while global_busy.is_none() && clients.len() < 16 {
        let conn = c.system_bus().unwrap();
        let (got, errs) = create_monitors(&conn, MAX_MONITORS_PER_OWNER);
        total += got.len();
        if let Some(e) = errs.into_iter().next() {
            global_busy = Some(e);
        }
        clients.push(conn);
    }
    assert_eq!(total, MAX_MONITORS);
    let (n, m) = global_busy.expect("the global bound was never reached");
    assert_eq!(n, BUSY);
    assert!(m.contains("256 monitors exist"), "{m}");
    still_serves(&c, "the monitor flood");
    let rss1 = rss();

    // The greedy client leaves: its monitors close, so there is room for someone else.
    // (Closing them sends 256 Unsubscribe calls to agent1; a subscription racing with them is
    // badinput_dbus_subscriptions_survive_a_full_call_window.)
    drop(greedy);
    let newcomer = c.system_bus().unwrap();
    let mut made = None;
    c.wait_for("room for a new monitor", SOON, || {
        made =
            call::<_, (dbus::Path,)>(&newcomer, MANAGER_PATH, MANAGER_IFACE, "CreateMonitor", ())
                .ok()
                .map(|(p,)| p.to_string());
        made.is_some()
    })
    .unwrap();
    // And monitors still work: a real unit's events reach the newcomer.
    let signals = Signals { conn: newcomer };
    let path = made.unwrap();
    call::<_, (u32,)>(
        &signals.conn,
        &path,
        MONITOR_IFACE,
        "Subscribe",
        ("agent1", "work.service"),
    )
    .unwrap();
    // The closed monitors' 256 Unsubscribe calls may still fill agent1's window.
    start_past_a_full_window(&c, "agent1", "work.service");
    let ev = signals.wait(SOON, |m| {
        m.member().as_deref() == Some("UnitStateChanged")
            && m.read3::<&str, &str, &str>()
                .is_ok_and(|(n, u, a)| n == "agent1" && u == "work.service" && a == "active")
    });
    assert!(
        ev.is_some(),
        "no UnitStateChanged(active) for work.service after the flood"
    );
    drop(clients);
    still_serves(&c, "the monitor owners leaving");
    eprintln!(
        "FIGURE 1000 CreateMonitor calls from one client in {monitors_took:?}, 2000 Subscribe calls in {subs_took:?}; manager RSS {rss0} -> {rss1} with {MAX_MONITORS} monitors"
    );
}

/// Many Subscribe calls sent at once (without waiting for each answer): every one that the
/// manager accepts must take effect, i.e. its unit's events must reach the monitor.
// [itest->req~manager.monitors~1]
// [itest->req~bounds.pending-calls~1]
// [itest->req~bounds.control-reserve~1]
#[test]
fn badinput_dbus_pipelined_subscriptions_all_take_effect() {
    if !hirte_tests::require_root("badinput_dbus_pipelined_subscriptions_all_take_effect") {
        return;
    }
    // The system bus lets one connection have at most 128 calls awaiting a reply, so two
    // clients send 100 each; the manager's own bound is 128 calls in flight per node.
    const PER_CLIENT: usize = 100;
    const N: usize = 2 * PER_CLIENT;
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    c.write_unit("agent1", "work.service", SLEEP_UNIT).unwrap();
    let clients: Vec<Connection> = (0..2).map(|_| c.system_bus().unwrap()).collect();
    let monitors: Vec<dbus::Path> = clients
        .iter()
        .map(|conn| {
            call::<_, (dbus::Path,)>(conn, MANAGER_PATH, MANAGER_IFACE, "CreateMonitor", ())
                .unwrap()
                .0
        })
        .collect();
    // N-1 units that do not exist, then the real one: all sent before any answer is read.
    let mut sent: Vec<(usize, u32)> = Vec::new();
    for i in 0..N {
        let k = i / PER_CLIENT;
        let unit = if i == N - 1 {
            "work.service".to_string()
        } else {
            format!("ghost{i}.service")
        };
        let msg = Message::new_method_call(BUS_NAME, &*monitors[k], MONITOR_IFACE, "Subscribe")
            .unwrap()
            .append2("agent1", unit);
        sent.push((k, clients[k].channel().send(msg).unwrap()));
    }
    let last = *sent.last().unwrap();
    let mut accepted = 0;
    let mut refused = Vec::new();
    let mut last_accepted = false;
    let deadline = Instant::now() + SOON;
    let mut pending: std::collections::BTreeSet<(usize, u32)> = sent.iter().copied().collect();
    while !pending.is_empty() && Instant::now() < deadline {
        for (k, conn) in clients.iter().enumerate() {
            while let Ok(Some(mut m)) = conn
                .channel()
                .blocking_pop_message(Duration::from_millis(20))
            {
                let Some(rs) = m.get_reply_serial() else {
                    continue;
                };
                if !pending.remove(&(k, rs)) {
                    continue;
                }
                match m.msg_type() {
                    MessageType::MethodReturn => {
                        accepted += 1;
                        last_accepted |= (k, rs) == last;
                    }
                    _ => refused.push(
                        m.as_result()
                            .err()
                            .and_then(|e| e.name().map(str::to_string)),
                    ),
                }
            }
        }
    }
    assert!(
        pending.is_empty(),
        "{} Subscribe calls never answered",
        pending.len()
    );
    assert!(
        last_accepted,
        "Subscribe(work.service) refused: {refused:?}"
    );
    let conn = clients.into_iter().nth(1).unwrap();
    let signals = Signals { conn };
    // The manager's own Subscribe calls may still fill agent1's window.
    start_past_a_full_window(&c, "agent1", "work.service");
    let ev = signals.wait(SOON, |m| {
        m.member().as_deref() == Some("UnitStateChanged")
            && m.read3::<&str, &str, &str>()
                .is_ok_and(|(n, u, a)| n == "agent1" && u == "work.service" && a == "active")
    });
    let log = c.manager_log();
    let busy_internal = log
        .lines()
        .filter(|l| l.contains("calls in flight"))
        .count();
    assert!(
        ev.is_some(),
        "{accepted} of {N} pipelined Subscribe calls were accepted (the last one, work.service, too), \
         but starting work.service produced no UnitStateChanged for the monitor; \
         {busy_internal} manager log lines mention calls in flight; agent1 log:\n{}",
        c.agent_log("agent1").lines().filter(|l| l.contains("Subscribe") || l.contains("work.service")).take(20).collect::<Vec<_>>().join("\n")
    );
}

/// The manager keeps at most 128 calls in flight per node; its own Subscribe/Unsubscribe calls
/// to an agent (made when monitors change) count too. When that window is full, a monitor's
/// subscription must still take effect once there is room again, not be marked done and
/// dropped. Deterministic: agent1 is stopped while a monitor with 200 subscriptions closes
/// (200 Unsubscribe calls) and another monitor subscribes to a real unit.
// [itest->req~manager.monitors~1]
// [itest->req~bounds.pending-calls~1]
#[test]
fn badinput_dbus_subscriptions_survive_a_full_call_window() {
    if !hirte_tests::require_root("badinput_dbus_subscriptions_survive_a_full_call_window") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&NODES)).unwrap();
    c.write_unit("agent1", "work.service", SLEEP_UNIT).unwrap();
    let big = c.system_bus().unwrap();
    let (m1,): (dbus::Path,) =
        call(&big, MANAGER_PATH, MANAGER_IFACE, "CreateMonitor", ()).unwrap();
    for chunk in 0..4 {
        let units: Vec<String> = (0..50)
            .map(|i| format!("ghost{}.service", chunk * 50 + i))
            .collect();
        call::<_, (u32,)>(&big, &m1, MONITOR_IFACE, "SubscribeList", ("agent1", units)).unwrap();
    }
    let watcher = Signals {
        conn: c.system_bus().unwrap(),
    };
    let (m2,): (dbus::Path,) = call(
        &watcher.conn,
        MANAGER_PATH,
        MANAGER_IFACE,
        "CreateMonitor",
        (),
    )
    .unwrap();

    c.signal_agent("agent1", Signal::SIGSTOP).unwrap();
    call::<_, ()>(&big, &m1, MONITOR_IFACE, "Close", ()).unwrap();
    let sub = call::<_, (u32,)>(
        &watcher.conn,
        &m2,
        MONITOR_IFACE,
        "Subscribe",
        ("agent1", "work.service"),
    );
    // The answer means the manager has handled the Subscribe while agent1's window was full.
    c.signal_agent("agent1", Signal::SIGCONT).unwrap();
    let sub = sub.expect("Subscribe(work.service) accepted");
    c.wait_all_online(SOON).unwrap();
    // The manager relays calls to a node in order: once a later call through agent1's link is
    // answered, the watch for work.service has reached the agent. Until the 200 Unsubscribe
    // calls have drained, such a call is refused with Busy (the window is full).
    c.wait_for("a call through agent1's drained window", SOON, || {
        c.hirtectl(&["list-units", "agent1"]).status.success()
    })
    .unwrap();
    ok(
        &c.hirtectl(&["start", "agent1", "work.service"]),
        "start work.service",
    );
    let ev = watcher.wait(SOON, |m| {
        m.member().as_deref() == Some("UnitStateChanged")
            && m.read3::<&str, &str, &str>()
                .is_ok_and(|(n, u, a)| n == "agent1" && u == "work.service" && a == "active")
    });
    assert!(
        ev.is_some(),
        "subscription {sub:?} to agent1/work.service was accepted while agent1's call window \
         was full, but starting work.service produced no UnitStateChanged for it"
    );
}

/// Starts `unit` on `node` with hirtectl once the node's window of 128 calls has room: the
/// manager's own Subscribe/Unsubscribe calls may fill it for a moment, and until they drain
/// a client's call gets Busy (req~bounds.pending-calls~1). A start is idempotent.
fn start_past_a_full_window(c: &Cluster, node: &str, unit: &str) {
    let mut last = None;
    let started = c.wait_for(&format!("start {unit} past a drained window"), SOON, || {
        let o = c.hirtectl(&["start", node, unit]);
        let busy = stderr(&o).contains("calls in flight; try again later");
        let done = o.status.success();
        last = Some(o);
        done || !busy
    });
    let last = last.expect("one attempt");
    started.unwrap_or_else(|e| panic!("{e}: {}", show(&last)));
    ok(&last, &format!("start {unit}"));
}
