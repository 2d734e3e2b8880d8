//! hirtectl listings and status: `-o json` checked field by field against docs/hirtectl.md,
//! `--filter`, list-unit-files, is-enabled, enable/disable options.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod ctl_common;

use std::time::{SystemTime, UNIX_EPOCH};

use ctl_common::*;
use hirte_tests::{Cluster, ClusterSpec};

/// A description that needs JSON escaping: quotes, a backslash, non-ASCII.
const ODD_DESCRIPTION: &str = r#"Says "hi" to C:\temp ✓"#;

fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn unit_names(items: &[J]) -> Vec<String> {
    items.iter().map(|u| u.s("unit").to_string()).collect()
}

// [itest->req~ctl.json~1]
// [itest->req~ctl.list-nodes~1]
// [itest->req~ctl.list-units~1]
// [itest->req~ctl.status~1]
#[test]
fn ctl_json_listings_have_the_documented_fields() {
    if !hirte_tests::require_root("ctl_json_listings_have_the_documented_fields") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();
    c.write_unit("n2", "web-a.service", SLEEP_UNIT).unwrap();
    c.write_unit(
        "n2",
        "web-b.service",
        &SLEEP_UNIT.replace("Sleeps forever", ODD_DESCRIPTION),
    )
    .unwrap();
    c.write_unit("n2", "db.service", SLEEP_UNIT).unwrap();
    for u in ["web-a.service", "web-b.service", "db.service"] {
        ctl_ok(&c, &["start", "n2", u]);
    }
    ctl_ok(&c, &["stop", "n2", "db.service"]);

    // list-nodes: global option before the command.
    let v = json(&ctl_ok(&c, &["-o", "json", "list-nodes"]));
    assert_documented("list-nodes", v.arr());
    let names: Vec<&str> = v.arr().iter().map(|n| n.s("node")).collect();
    assert_eq!(names, ["n1", "n2"]);
    let now = now_usec();
    for n in v.arr() {
        assert_eq!(n.s("state"), "online");
        let seen = n.u("last_seen_usec");
        assert!(seen > 0 && seen <= now + 1_000_000, "{n:?}");
        assert!(
            now - seen.min(now) < 60_000_000,
            "last seen long ago: {n:?}"
        );
    }
    assert_eq!(
        v.arr()[1].s("ip"),
        c.node_ip("n2").unwrap(),
        "n2 connects from its own address"
    );
    // ... and as the command's own option, with a filter.
    let v = json(&ctl_ok(
        &c,
        &["list-nodes", "--output", "json", "--filter", "n[2-9]"],
    ));
    assert_eq!(v.arr().len(), 1);
    assert_eq!(v.arr()[0].s("node"), "n2");

    // list-units of one node and of all nodes, filtered.
    let v = json(&ctl_ok(
        &c,
        &["list-units", "n2", "-o", "json", "--filter", "web-*"],
    ));
    assert_documented("list-units", v.arr());
    assert_eq!(unit_names(v.arr()), ["web-a.service", "web-b.service"]);
    let b = &v.arr()[1];
    assert_eq!(
        (b.s("node"), b.s("load"), b.s("active"), b.s("sub")),
        ("n2", "loaded", "active", "running")
    );
    assert_eq!(
        b.s("description"),
        unit_prop(&c, "n2", "web-b.service", "Description"),
        "escaping must round-trip"
    );
    assert_eq!(b.s("description"), ODD_DESCRIPTION);
    let v = json(&ctl_ok(
        &c,
        &["-o", "json", "list-units", "--filter", "*.service"],
    ));
    assert_documented("list-units", v.arr());
    let nodes: std::collections::BTreeSet<&str> = v.arr().iter().map(|u| u.s("node")).collect();
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), ["n1", "n2"]);
    assert!(v.arr().iter().all(|u| u.s("unit").ends_with(".service")));
    assert!(unit_names(v.arr()).contains(&"web-a.service".to_string()));

    // Text listings keep their columns, filtered too.
    let text = ctl_ok(&c, &["list-units", "n2", "--filter", "web-?.service"]);
    assert!(text.starts_with("UNIT "), "{text}");
    let r = rows(&text);
    assert_eq!(r.len(), 2, "{text}");
    assert_eq!(r[0][..3], ["web-a.service", "active", "running"]);
    let text = ctl_ok(&c, &["list-nodes", "--filter", "n1"]);
    assert_eq!(rows(&text).len(), 1, "{text}");
    assert_eq!(rows(&text)[0][..2], ["n1", "online"]);

    // list-unit-files.
    let v = json(&ctl_ok(
        &c,
        &["-o", "json", "list-unit-files", "n2", "--filter", "web-*"],
    ));
    assert_documented("list-unit-files", v.arr());
    assert_eq!(unit_names(v.arr()), ["web-a.service", "web-b.service"]);
    for f in v.arr() {
        assert!(f.s("path").ends_with(&format!("/{}", f.s("unit"))), "{f:?}");
        assert_eq!(f.s("state"), "disabled", "{f:?}");
    }
    let v = json(&ctl_ok(
        &c,
        &["-o", "json", "list-unit-files", "--filter", "db.service"],
    ));
    assert_eq!(v.arr().len(), 1, "only n2 has db.service: {v:?}");
    assert_eq!(v.arr()[0].s("node"), "n2");
    let text = ctl_ok(&c, &["list-unit-files", "--filter", "web-*"]);
    assert!(text.starts_with("NODE "), "{text}");
    let r = rows(&text);
    let cells: Vec<&[String]> = r.iter().map(|r| &r[..3]).collect();
    assert_eq!(
        cells,
        [
            ["n2", "web-a.service", "disabled"],
            ["n2", "web-b.service", "disabled"]
        ]
    );
    assert!(
        r[0][3].ends_with("/web-a.service"),
        "the path comes last: {text}"
    );

    // status: nodes, units of a node, given units.
    let text = ctl_ok(&c, &["status"]);
    assert!(text.starts_with("NODE "), "{text}");
    let r = rows(&text);
    assert_eq!(r[1][..3], ["n2", "online", &c.node_ip("n2").unwrap()[..]]);
    let v = json(&ctl_ok(&c, &["-o", "json", "status"]));
    assert_documented("list-nodes", v.arr());
    let v = json(&ctl_ok(&c, &["-o", "json", "status", "n2"]));
    assert_documented("list-units", v.arr());
    assert!(unit_names(v.arr()).contains(&"web-a.service".to_string()));
    let text = ctl_ok(&c, &["status", "n2"]);
    let web_a = rows(&text)
        .into_iter()
        .find(|r| r[0] == "web-a.service")
        .expect("web-a row");
    assert_eq!(web_a[..4], ["web-a.service", "loaded", "active", "running"]);
    let v = json(&ctl_ok(
        &c,
        &["status", "n2", "web-a.service", "db.service", "-o", "json"],
    ));
    assert_documented("status", v.arr());
    assert_eq!(unit_names(v.arr()), ["web-a.service", "db.service"]);
    assert_eq!(v.arr()[0].s("active"), "active");
    assert_eq!(v.arr()[0].s("freezer"), "running");
    assert_eq!(v.arr()[0].s("unit_file_state"), "disabled");
    assert_eq!(v.arr()[0].s("description"), "Sleeps forever");
    assert_eq!(v.arr()[1].s("active"), "inactive");
    let text = ctl_ok(&c, &["status", "n2", "web-a.service", "db.service"]);
    assert_eq!(
        rows(&text),
        [
            [
                "web-a.service",
                "loaded",
                "active",
                "running",
                "running",
                "disabled"
            ],
            [
                "db.service",
                "loaded",
                "inactive",
                "dead",
                "running",
                "disabled"
            ]
        ]
    );

    // is-enabled.
    let o = c.hirtectl(&["-o", "json", "is-enabled", "n2", "web-a.service"]);
    assert_eq!(o.status.code(), Some(1), "disabled: {}", show(&o));
    let v = json(&stdout(&o));
    assert_documented("is-enabled", v.arr());
    assert_eq!(v.arr()[0].s("state"), "disabled");
    assert_eq!(v.arr()[0].get("enabled"), Some(&J::Bool(false)));
}

// [itest->req~ctl.unit-files~1]
// [itest->req~ctl.enable~1]
// [itest->req~ctl.daemon-reload~1]
#[test]
fn ctl_enable_disable_options_and_is_enabled() {
    if !hirte_tests::require_root("ctl_enable_disable_options_and_is_enabled") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["n1"])).unwrap();
    let unit = format!("{SLEEP_UNIT}Alias=app-alias.service\n");
    write_config_unit(&c, "n1", "app.service", &unit);
    write_config_unit(&c, "n1", "other.service", SLEEP_UNIT);

    let o = c.hirtectl(&["is-enabled", "n1", "app.service"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert_eq!(stdout(&o), "disabled\n");
    let text = ctl_ok(&c, &["list-unit-files", "n1", "--filter", "app*.service"]);
    let path = config_unit_dir(&c, "n1").join("app.service");
    assert_eq!(
        rows(&text),
        [["app.service", "disabled", &path.display().to_string()[..]]]
    );

    // enable prints the links and reloads, so systemd sees the unit enabled at once.
    let out = ctl_ok(&c, &["enable", "n1", "app.service"]);
    assert!(out.contains("Created symlink"), "{out}");
    assert!(out.contains("default.target.wants/app.service"), "{out}");
    let o = c.hirtectl(&["is-enabled", "n1", "app.service"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(stdout(&o), "enabled\n");
    assert_eq!(
        stdout(&c.systemctl("n1", &["is-enabled", "app.service"])).trim(),
        "enabled"
    );
    assert_eq!(
        rows(&ctl_ok(
            &c,
            &["list-unit-files", "n1", "--filter", "app.service"]
        )),
        [["app.service", "enabled", &path.display().to_string()[..]]]
    );
    // Several units: 0 if any is enabled, one line each; -q prints nothing.
    let o = c.hirtectl(&["is-enabled", "n1", "other.service", "app.service"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(stdout(&o), "disabled\nenabled\n");
    let o = c.hirtectl(&["is-enabled", "-q", "n1", "app.service"]);
    assert_eq!((o.status.code(), stdout(&o)), (Some(0), String::new()));

    // disable --no-reload still changes the links.
    let out = ctl_ok(&c, &["disable", "n1", "app.service", "--no-reload"]);
    assert!(out.contains("Removed"), "{out}");
    assert_eq!(
        stdout(&c.hirtectl(&["is-enabled", "n1", "app.service"])),
        "disabled\n"
    );

    // --runtime: below the runtime dir, state enabled-runtime.
    let out = ctl_ok(&c, &["enable", "--runtime", "n1", "app.service"]);
    assert!(out.contains("Created symlink"), "{out}");
    let rt = c.node_runtime_dir("n1").unwrap();
    assert!(
        out.contains(&rt.display().to_string()),
        "link not in /run: {out}"
    );
    let o = c.hirtectl(&["is-enabled", "n1", "app.service"]);
    assert_eq!(
        (o.status.code(), stdout(&o)),
        (Some(0), "enabled-runtime\n".to_string())
    );
    ctl_ok(&c, &["disable", "--runtime", "n1", "app.service"]);
    assert_eq!(
        stdout(&c.hirtectl(&["is-enabled", "n1", "app.service"])),
        "disabled\n"
    );

    // --force replaces a link that is in the way (the alias points elsewhere).
    let alias = config_unit_dir(&c, "n1").join("app-alias.service");
    std::os::unix::fs::symlink(config_unit_dir(&c, "n1").join("other.service"), &alias).unwrap();
    let o = c.hirtectl(&["enable", "n1", "app.service"]);
    one_line_failure(&o, Some(1), "enable with a conflicting alias");
    let out = ctl_ok(&c, &["enable", "--force", "n1", "app.service"]);
    assert!(out.contains("app-alias.service"), "{out}");
    assert_eq!(
        std::fs::read_link(&alias).unwrap(),
        config_unit_dir(&c, "n1").join("app.service")
    );

    // daemon-reload: a changed unit file takes effect.
    let changed = SLEEP_UNIT.replace("Sleeps forever", "Reloaded description");
    std::fs::write(config_unit_dir(&c, "n1").join("other.service"), changed).unwrap();
    ctl_ok(&c, &["daemon-reload", "n1"]);
    let v = json(&ctl_ok(
        &c,
        &["-o", "json", "status", "n1", "other.service"],
    ));
    assert_eq!(v.arr()[0].s("description"), "Reloaded description");

    // A unit file that does not exist: exit 4, one line.
    let o = c.hirtectl(&["is-enabled", "n1", "nope.service"]);
    let line = one_line_failure(&o, Some(4), "is-enabled of a missing file");
    assert!(line.contains("nope.service"), "{line}");
}
