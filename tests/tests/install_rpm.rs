//! The rpm packages of packaging/rpm/hirte.spec as `make rpm` built them: ci/test's `rpm`
//! step builds them before the tests, from `make rpm-sources`' tarballs with the network
//! cut off (a fat-LTO release build must not compete with the timing-sensitive cluster
//! tests). Checked here: the files `rpm -qlp` lists per package, the same files as the
//! Debian package, owned directories, stripped binaries with debuginfo packages, scriptlets
//! and dependencies, and rpmlint. Without built packages the tests print SKIP, except under
//! `CI=true`, where they fail.

// Test code: a failed step must fail the test, with a message saying which.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod install_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use install_support::*;

/// The binary packages a user installs (the guide's `dnf install hirte hirte-agent hirtectl`,
/// and the dashboard).
const PACKAGES: [&str; 4] = ["hirte", "hirte-agent", "hirtectl", "hirte-web"];
/// What EL9's default macros add: debug information and sources.
const DEBUG_PACKAGES: [&str; 5] = [
    "hirte-debuginfo",
    "hirte-agent-debuginfo",
    "hirtectl-debuginfo",
    "hirte-web-debuginfo",
    "hirte-debugsource",
];

/// Directories other packages own (filesystem, systemd, dbus-common, man-db's man1...):
/// ours need not own them.
const SYSTEM_DIRS: [&str; 19] = [
    "/etc",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/lib/systemd",
    "/usr/lib/systemd/system",
    "/usr/lib/systemd/user",
    "/usr/lib/sysusers.d",
    "/usr/lib/.build-id",
    "/usr/libexec",
    "/usr/share",
    "/usr/share/dbus-1",
    "/usr/share/dbus-1/system.d",
    "/usr/share/doc",
    "/usr/share/licenses",
    "/usr/share/man",
    "/usr/share/man/man1",
    "/usr/lib/debug",
    "/usr/src/debug",
];

/// The package that must ship `path`.
fn owner(path: &str) -> &'static str {
    let ctl = [
        "/usr/bin/hirtectl",
        "/usr/share/man/",
        "/usr/share/bash-completion/",
        "/usr/share/zsh/",
        "/usr/share/fish/",
        "/usr/share/licenses/hirtectl/",
    ];
    let agent = [
        "/usr/bin/hirte-agent",
        "/usr/libexec/hirte-proxy",
        "/usr/lib/systemd/system/hirte-agent.service",
        "/usr/lib/systemd/system/hirte-proxy@.service",
        "/usr/lib/systemd/system/hirte-dep@.service",
        "/usr/lib/systemd/user/",
        "/usr/share/dbus-1/system.d/org.containers.hirte.Agent.conf",
        "/usr/share/dbus-1/system.d/org.eclipse.bluechi.Agent.conf",
        "/etc/hirte/agent.conf",
        "/usr/share/licenses/hirte-agent/",
    ];
    let web = [
        "/usr/bin/hirte-web",
        "/usr/lib/systemd/system/hirte-web.service",
        "/usr/lib/sysusers.d/hirte-web.conf",
        "/etc/hirte/web.conf",
        "/usr/share/licenses/hirte-web/",
    ];
    if ctl.iter().any(|p| path.starts_with(p)) {
        "hirtectl"
    } else if web.iter().any(|p| path.starts_with(p)) {
        "hirte-web"
    } else if agent.iter().any(|p| path.starts_with(p)) {
        "hirte-agent"
    } else {
        "hirte"
    }
}

/// The packages of the last `make rpm`, by name (binary packages and `src`).
fn built_rpms(test: &str) -> Option<BTreeMap<String, PathBuf>> {
    let dir = repo_file(RPM_BUILD_DIR);
    let mut found = BTreeMap::new();
    for sub in ["RPMS/x86_64", "RPMS/aarch64", "SRPMS"] {
        let Ok(rd) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for p in rd.flatten().map(|e| e.path()) {
            if p.extension().is_none_or(|e| e != "rpm") {
                continue;
            }
            let name = if sub == "SRPMS" {
                "src".to_string()
            } else {
                query(&p, &["--qf", "%{NAME}"])
            };
            found.insert(name, p);
        }
    }
    if found.is_empty() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: no packages in {RPM_BUILD_DIR}: ci/test builds them with `make rpm` \
             before the tests (see its output)"
        );
        eprintln!("SKIP {test}: no packages in {RPM_BUILD_DIR} (run `make rpm`)");
        return None;
    }
    Some(found)
}

/// `rpm -qp ARGS PKG`, which must succeed.
fn query(pkg: &Path, args: &[&str]) -> String {
    let out = run(
        Command::new("rpm").arg("-qp").args(args).arg(pkg),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "rpm -qp {args:?}: {}", show(&out));
    stdout(&out)
}

/// A package's entries as (path, is a directory).
fn entries(pkg: &Path) -> Vec<(String, bool)> {
    query(pkg, &["--qf", "[%{FILEMODES:perms} %{FILENAMES}\\n]"])
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(perms, path)| (path.to_string(), perms.starts_with('d')))
        .collect()
}

/// The files (not directories) a package installs, without the build-id links rpm adds.
fn files(pkg: &Path) -> BTreeSet<String> {
    entries(pkg)
        .into_iter()
        .filter(|(p, dir)| !dir && !p.starts_with("/usr/lib/.build-id/"))
        .map(|(p, _)| p)
        .collect()
}

/// Two file lists are equal; otherwise fails naming what only one of them has.
#[track_caller]
fn assert_same_files(left: &BTreeSet<String>, right: &BTreeSet<String>, names: (&str, &str)) {
    let only_left: Vec<&String> = left.difference(right).collect();
    let only_right: Vec<&String> = right.difference(left).collect();
    assert!(
        only_left.is_empty() && only_right.is_empty(),
        "only in {}: {only_left:?}\nonly in {}: {only_right:?}",
        names.0,
        names.1
    );
}

/// The files of the binary packages together.
fn shipped_files(rpms: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    PACKAGES.iter().flat_map(|n| files(&rpms[*n])).collect()
}

// [itest->req~install.rpm~1]
#[test]
fn rpm_packages_hold_the_expected_files_in_owned_directories() {
    let test = "rpm_packages_hold_the_expected_files_in_owned_directories";
    let Some(rpms) = built_rpms(test) else {
        return;
    };
    for name in PACKAGES
        .iter()
        .chain(DEBUG_PACKAGES.iter())
        .chain(["src"].iter())
    {
        assert!(rpms.contains_key(*name), "{name} not built: {rpms:?}");
    }
    for name in PACKAGES {
        let pkg = &rpms[name];
        let listing = entries(pkg);
        eprintln!("{name}: {listing:?}");
        let owned_dirs: BTreeSet<&str> = listing
            .iter()
            .filter(|(_, dir)| *dir)
            .map(|(p, _)| p.as_str())
            .collect();
        for (path, dir) in &listing {
            if !dir && !path.starts_with("/usr/lib/.build-id/") {
                assert_eq!(owner(path), name, "{path} is in {name}");
            }
            // Every directory above an entry is ours or another package's well-known one.
            let mut parent = Path::new(path).parent();
            while let Some(d) = parent.and_then(Path::to_str).filter(|d| *d != "/") {
                let below_build_id = d.starts_with("/usr/lib/.build-id");
                assert!(
                    owned_dirs.contains(d) || SYSTEM_DIRS.contains(&d) || below_build_id,
                    "{name}: directory {d} of {path} is owned by no package"
                );
                parent = Path::new(d).parent();
            }
        }
        // The licence, as %license.
        let license = format!("/usr/share/licenses/{name}/LICENSE");
        assert!(
            query(pkg, &["--licensefiles"])
                .lines()
                .any(|l| l == license),
            "{name}: {license} not a licence file"
        );
        // Configuration files are %config(noreplace).
        let configs = query(pkg, &["--configfiles"]);
        for (path, _) in listing.iter().filter(|(p, _)| p.starts_with("/etc/hirte/")) {
            if !owned_dirs.contains(path.as_str()) {
                assert!(
                    configs.lines().any(|l| l == path),
                    "{name}: {path} not %config"
                );
            }
        }
    }
    // Everything `make install` installs (PREFIX=/usr, the spec's zsh directory), plus the
    // drop-in READMEs and the licences.
    let staged = make_install(&["ZSHCOMPDIR=/usr/share/zsh/site-functions"]);
    assert!(
        staged.output.status.success(),
        "make install: {}",
        show(&staged.output)
    );
    let mut expected: BTreeSet<String> = list_tree(&staged.destdir)
        .into_iter()
        .map(|p| {
            // rpm compresses man pages.
            if p.starts_with("/usr/share/man/") {
                format!("{p}.gz")
            } else {
                p
            }
        })
        .collect();
    for name in PACKAGES {
        expected.insert(format!("/usr/share/licenses/{name}/LICENSE"));
    }
    expected.insert("/etc/hirte/hirte.conf.d/README".into());
    expected.insert("/etc/hirte/agent.conf.d/README".into());
    expected.insert("/etc/hirte/web.conf.d/README".into());
    assert_same_files(
        &shipped_files(&rpms),
        &expected,
        ("the rpms", "make install"),
    );
}

// [itest->req~install.rpm~1]
#[test]
fn rpm_binaries_are_stripped_with_their_debug_information_in_debuginfo_packages() {
    let test = "rpm_binaries_are_stripped_with_their_debug_information_in_debuginfo_packages";
    let Some(rpms) = built_rpms(test) else {
        return;
    };
    let scratch = Scratch::new("rpm-extract");
    for (name, bins) in [
        ("hirte", &["/usr/bin/hirte"][..]),
        (
            "hirte-agent",
            &["/usr/bin/hirte-agent", "/usr/libexec/hirte-proxy"][..],
        ),
        ("hirtectl", &["/usr/bin/hirtectl"][..]),
        ("hirte-web", &["/usr/bin/hirte-web"][..]),
    ] {
        let mut cmd = Command::new("sh");
        cmd.current_dir(&scratch.path)
            .arg("-c")
            .arg("rpm2cpio \"$1\" | cpio -idm --quiet")
            .arg("sh")
            .arg(&rpms[name]);
        let out = run(&mut cmd, Duration::from_secs(60));
        assert!(out.status.success(), "unpacking {name}: {}", show(&out));
        let debug_files = files(&rpms[&format!("{name}-debuginfo")]);
        for bin in bins {
            let path = scratch.path.join(bin.trim_start_matches('/'));
            let out = run(
                Command::new("readelf").arg("-S").arg(&path),
                Duration::from_secs(30),
            );
            let sections = stdout(&out);
            assert!(out.status.success(), "readelf {bin}: {}", show(&out));
            assert!(!sections.contains(" .symtab"), "{bin} is not stripped");
            assert!(!sections.contains(" .debug_info"), "{bin} has debug info");
            assert!(sections.contains(".gnu_debuglink"), "{bin}: no debuglink");
            let prefix = format!("/usr/lib/debug{bin}-");
            assert!(
                debug_files
                    .iter()
                    .any(|f| f.starts_with(&prefix) && f.ends_with(".debug")),
                "{name}-debuginfo lacks {prefix}*.debug: {debug_files:?}"
            );
        }
    }
    let sources = files(&rpms["hirte-debugsource"]);
    assert!(
        sources
            .iter()
            .any(|f| f.starts_with("/usr/src/debug/") && f.ends_with("/manager/src/main.rs")),
        "hirte-debugsource lacks the manager's sources"
    );
}

// [itest->req~install.rpm~1]
#[test]
fn rpm_scriptlets_reload_the_bus_and_start_nothing() {
    let test = "rpm_scriptlets_reload_the_bus_and_start_nothing";
    let Some(rpms) = built_rpms(test) else {
        return;
    };
    // hirte-web ships no bus policy: no reload there, the rest as for the others.
    for name in ["hirte", "hirte-agent", "hirte-web"] {
        let scripts = query(&rpms[name], &["--scripts"]);
        eprintln!("{name}:\n{scripts}");
        // Sections as rpm prints them: "postinstall scriptlet (using /bin/sh):".
        let section = |which: &str| -> String {
            let head = format!("{which} scriptlet");
            let start = scripts
                .find(&head)
                .unwrap_or_else(|| panic!("{name}: no {which} scriptlet"));
            let rest = &scripts[start + head.len()..];
            let end = rest.find(" scriptlet").unwrap_or(rest.len());
            rest[..end].to_string()
        };
        for which in ["postinstall", "postuninstall"]
            .iter()
            .filter(|_| name != "hirte-web")
        {
            assert!(
                section(which).contains("org.freedesktop.DBus ReloadConfig"),
                "{name}: {which} does not reload the bus"
            );
        }
        assert!(section("preuninstall").contains("disable"), "{name}");
        for forbidden in ["systemctl enable", "systemctl start", "systemctl restart"] {
            assert!(!scripts.contains(forbidden), "{name} runs {forbidden}");
        }
        let requires = query(
            &rpms[name],
            &["--qf", "[%{REQUIREFLAGS:deptype} %{REQUIRENAME}\\n]"],
        );
        for dep in ["post systemd", "preun systemd", "postun systemd"] {
            assert!(
                requires.lines().any(|l| l == dep),
                "{name}: no Requires({dep}):\n{requires}"
            );
        }
        assert!(requires.lines().any(|l| l.ends_with(" dbus")), "{name}");
    }
    let scripts = query(&rpms["hirte"], &["--scripts"]);
    assert!(scripts.contains("groupadd -r hirte-operators"), "{scripts}");
}

// [itest->req~install.rpm~1]
#[test]
fn rpm_and_deb_ship_the_same_files() {
    let test = "rpm_and_deb_ship_the_same_files";
    if !hirte_tests::require_root(test) {
        return;
    }
    let Some(rpms) = built_rpms(test) else {
        return;
    };
    let out_dir = Scratch::new("deb-vs-rpm");
    let Some(deb) = build_deb(test, &out_dir) else {
        return;
    };
    let out = run(
        Command::new("dpkg-deb").arg("-c").arg(&deb),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", show(&out));
    // Each format's own conventions: Debian's copyright file and zsh directory, rpm's
    // %license directory.
    let deb_files: BTreeSet<String> = stdout(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|p| !p.ends_with('/'))
        .map(|p| p.trim_start_matches('.').to_string())
        .filter(|p| p != "/usr/share/doc/hirte/copyright")
        .map(|p| {
            p.replace(
                "/usr/share/zsh/vendor-completions/",
                "/usr/share/zsh/site-functions/",
            )
        })
        .collect();
    let rpm_files: BTreeSet<String> = shipped_files(&rpms)
        .into_iter()
        .filter(|p| !p.starts_with("/usr/share/licenses/"))
        .collect();
    assert_same_files(&deb_files, &rpm_files, ("the deb", "the rpms"));
}

// [itest->req~install.rpm~1]
#[test]
fn rpmlint_finds_no_errors() {
    let test = "rpmlint_finds_no_errors";
    let Some(rpms) = built_rpms(test) else {
        return;
    };
    if Command::new("rpmlint").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: rpmlint is missing (ci/setup installs it)"
        );
        eprintln!("SKIP {test}: rpmlint is not installed");
        return;
    }
    let mut cmd = Command::new("rpmlint");
    cmd.arg("-c").arg(repo_file(RPMLINT_CONFIG));
    cmd.args(rpms.values());
    let out = run(&mut cmd, Duration::from_secs(300));
    eprintln!("{}", show(&out));
    assert!(out.status.success(), "rpmlint: {}", show(&out));
}
