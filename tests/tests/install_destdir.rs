//! `make install` into a scratch DESTDIR: what lands where, the installed units and the
//! proxy templates (instantiated) pass `systemd-analyze verify` (in a mount namespace where
//! the installed binaries are at their /usr/bin and /usr/libexec paths), the installed policy is the one install_policy.rs checks and works on a
//! system-type bus, the default configurations load, and `make uninstall` undoes it.

// Test code: a failed step must fail the test, with a message saying which.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod install_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hirte_common::config::{AgentConfig, ManagerConfig};
use hirte_tests::{Cluster, ClusterSpec};
use install_support::policy::check_manager_policy;
use install_support::*;

/// Files `make install` always installs (PREFIX=/usr).
const ALWAYS: [&str; 27] = [
    "/usr/bin/hirte",
    "/usr/bin/hirte-agent",
    "/usr/bin/hirtectl",
    "/usr/bin/hirte-web",
    "/usr/libexec/hirte-proxy",
    "/usr/lib/systemd/system/hirte.service",
    "/usr/lib/systemd/system/hirte.socket",
    "/usr/lib/systemd/system/hirte-agent.service",
    "/usr/lib/systemd/system/hirte-proxy@.service",
    "/usr/lib/systemd/system/hirte-dep@.service",
    "/usr/lib/systemd/system/hirte-web.service",
    "/usr/lib/systemd/user/hirte-agent.service",
    "/usr/lib/systemd/user/hirte-proxy@.service",
    "/usr/lib/systemd/user/hirte-dep@.service",
    "/usr/share/dbus-1/system.d/org.containers.hirte.conf",
    "/usr/share/dbus-1/system.d/org.containers.hirte.Agent.conf",
    "/usr/lib/sysusers.d/hirte.conf",
    "/usr/lib/sysusers.d/hirte-web.conf",
    "/usr/share/doc/hirte/operations.md",
    "/usr/share/doc/hirte/stunnel.md",
    "/usr/share/doc/hirte/README.md",
    "/usr/share/doc/hirte/LICENSE",
    "/usr/share/doc/hirte/generated.txt",
    "/etc/hirte/hirte.conf",
    "/etc/hirte/agent.conf",
    "/etc/hirte/web.conf",
    "/usr/share/man/man1/hirtectl.1",
];

fn assert_staged(s: &Staged) {
    assert!(
        s.output.status.success(),
        "make install: {}",
        show(&s.output)
    );
}

/// Runs `systemd-analyze verify` on the installed units in a private mount namespace whose
/// /usr/bin and /usr/libexec are overlays of DESTDIR's on the host's, so ExecStart= paths
/// exist. The templates are verified as instances: `hirte-proxy@n2_probe.service` (a
/// proxy for probe.service on node n2) and `hirte-dep@probe.service`, whose BindsTo= needs
/// a probe.service (a stand-in in the scratch directory).
/// What the host has at the paths a DESTDIR install must not touch: (path, inode, mtime).
fn host_usr_bin_state() -> Vec<(String, Option<(u64, i64)>)> {
    use std::os::unix::fs::MetadataExt;
    [
        "/usr/bin/hirte",
        "/usr/bin/hirte-agent",
        "/usr/bin/hirtectl",
    ]
    .iter()
    .map(|p| {
        let meta = std::fs::metadata(p).ok().map(|m| (m.ino(), m.mtime()));
        ((*p).to_string(), meta)
    })
    .collect()
}

fn verify_units(s: &Staged) -> std::process::Output {
    let run_dir = s.scratch.path.join("xdg-run");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::set_permissions(
        &run_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let probe_dir = s.scratch.path.join("probe-units");
    std::fs::create_dir_all(&probe_dir).unwrap();
    std::fs::write(
        probe_dir.join("probe.service"),
        "[Unit]\nDescription=target of the proxy templates\n[Service]\nExecStart=/bin/sleep infinity\n",
    )
    .unwrap();
    let script = r#"set -e
mount -t overlay overlay -o "lowerdir=$1/usr/bin:/usr/bin" /usr/bin
mount -t overlay overlay -o "lowerdir=$1/usr/libexec:/usr/libexec" /usr/libexec
test -x /usr/bin/hirte && test -x /usr/bin/hirte-agent && test -x /usr/libexec/hirte-proxy
test -x /usr/bin/hirte-web
sys="$1/usr/lib/systemd/system"
user="$1/usr/lib/systemd/user"
systemd-analyze verify "$sys/hirte.service" "$sys/hirte.socket" "$sys/hirte-agent.service" \
  "$sys/hirte-proxy@n2_probe.service" "$sys/hirte-dep@probe.service" "$3/probe.service" \
  "$sys/hirte-web.service"
XDG_RUNTIME_DIR="$2" systemd-analyze --user verify "$user/hirte-agent.service" \
  "$user/hirte-proxy@n2_probe.service" "$user/hirte-dep@probe.service" "$3/probe.service"
"#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(&s.destdir)
    .arg(&run_dir)
    .arg(&probe_dir)
    .env("SYSTEMD_LOG_COLOR", "0");
    run(&mut cmd, Duration::from_secs(60))
}

// [itest->req~install.make-install~1]
#[test]
fn make_install_stages_everything_and_uninstall_removes_it() {
    if !hirte_tests::require_root("make_install_stages_everything_and_uninstall_removes_it") {
        return;
    }
    let s = make_install(&[]);
    assert_staged(&s);
    let files = list_tree(&s.destdir);
    for f in ALWAYS {
        assert!(files.iter().any(|x| x == f), "{f} not installed: {files:?}");
    }
    for shell_file in [
        "/usr/share/bash-completion/completions/hirtectl",
        "/usr/share/zsh/site-functions/_hirtectl",
        "/usr/share/fish/vendor_completions.d/hirtectl.fish",
    ] {
        assert!(
            files.iter().any(|x| x == shell_file),
            "{shell_file}: {files:?}"
        );
    }
    // Nothing outside the standard places.
    for f in &files {
        let known = [
            "/usr/bin/",
            "/usr/libexec/hirte-proxy",
            "/usr/lib/systemd/",
            "/usr/lib/sysusers.d/",
            "/usr/share/dbus-1/system.d/",
            "/usr/share/doc/hirte/",
            "/usr/share/man/man",
            "/usr/share/bash-completion/completions/",
            "/usr/share/zsh/site-functions/",
            "/usr/share/fish/vendor_completions.d/",
            "/etc/hirte/",
        ];
        assert!(known.iter().any(|k| f.starts_with(k)), "unexpected {f}");
    }
    // Empty drop-in directories.
    for d in [
        "/etc/hirte/hirte.conf.d",
        "/etc/hirte/agent.conf.d",
        "/etc/hirte/web.conf.d",
    ] {
        let p = s.path(d);
        assert!(p.is_dir(), "{d}");
        assert_eq!(std::fs::read_dir(&p).unwrap().count(), 0, "{d} not empty");
    }
    // Binaries are the built ones (same version line; the bytes may differ when a build runs
    // meanwhile), executable.
    let bins = hirte_tests::bin_dir().unwrap();
    for (b, dir) in [
        ("hirte", "/usr/bin"),
        ("hirte-agent", "/usr/bin"),
        ("hirtectl", "/usr/bin"),
        ("hirte-proxy", "/usr/libexec"),
    ] {
        let installed = s.path(&format!("{dir}/{b}"));
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&installed.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o755, "{b}");
        let version = |p: &Path| stdout(&Command::new(p).arg("--version").output().unwrap());
        assert_eq!(version(&installed), version(&bins.join(b)), "{b}");
        assert!(version(&installed).starts_with(&format!("{b} ")), "{b}");
    }
    let out = Command::new(s.path("/usr/bin/hirtectl"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());

    // The default configuration is the guide's, loads as the daemons load it, and documents
    // every key.
    let etc = s.path("/etc/hirte");
    let m = ManagerConfig::load(&etc, None).unwrap_or_else(|e| panic!("hirte.conf: {e}"));
    m.validate().unwrap();
    assert_eq!(m.port, 2020);
    assert_eq!(m.allowed_node_names, vec!["primary", "agent"]);
    let a = AgentConfig::load(&etc, None).unwrap_or_else(|e| panic!("agent.conf: {e}"));
    a.validate().unwrap();
    assert_eq!(
        (
            a.node_name.as_str(),
            a.manager_host.as_str(),
            a.manager_port
        ),
        ("primary", "127.0.0.1", 2020)
    );
    assert_eq!(a.heartbeat_interval, Duration::from_secs(5));
    let hirte_conf = read(&etc.join("hirte.conf"));
    for k in MANAGER_KEYS.iter().chain(NODE_SECTION_KEYS.iter()) {
        assert!(
            hirte_conf.contains(&format!("\n# {k}:")),
            "hirte.conf does not document {k}"
        );
    }
    let agent_conf = read(&etc.join("agent.conf"));
    for k in AGENT_KEYS {
        assert!(
            agent_conf.contains(&format!("\n# {k}:")),
            "agent.conf does not document {k}"
        );
    }
    let ops = read(&repo_file("docs/operations.md"));
    for k in MANAGER_KEYS
        .iter()
        .chain(NODE_SECTION_KEYS.iter())
        .chain(AGENT_KEYS.iter())
    {
        assert!(
            ops.contains(&format!("| `{k}` |")),
            "docs/operations.md has no table row for {k}"
        );
    }

    // The commented per-node example is valid as it stands once uncommented.
    let example_dir = s.scratch.path.join("example-etc");
    std::fs::create_dir_all(&example_dir).unwrap();
    let uncommented: String = hirte_conf
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest.starts_with("[node ") || rest.starts_with("AllowDependenciesOn=") =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(uncommented, hirte_conf.trim_end(), "no [node NAME] example");
    std::fs::write(example_dir.join("hirte.conf"), uncommented).unwrap();
    let m = ManagerConfig::load(&example_dir, None)
        .unwrap_or_else(|e| panic!("hirte.conf with its example uncommented: {e}"));
    m.validate().unwrap();
    assert!(m.may_depend_on("agent", "primary"));
    assert!(!m.may_depend_on("primary", "agent"));

    // A second install keeps an edited configuration and puts the shipped one beside it.
    let edited = format!("{hirte_conf}\n# edited by the operator\n");
    std::fs::write(etc.join("hirte.conf"), &edited).unwrap();
    let mut again = Command::new("make");
    again
        .arg("-C")
        .arg(repo_root())
        .args(["--no-print-directory", "install-config"])
        .arg(format!("DESTDIR={}", s.destdir.display()));
    let out = run(&mut again, Duration::from_secs(60));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(read(&etc.join("hirte.conf")), edited);
    assert_eq!(read(&etc.join("hirte.conf.dist")), hirte_conf);

    // Uninstall removes everything but the edited configuration.
    let mut un = Command::new("make");
    un.arg("-C")
        .arg(repo_root())
        .args(["--no-print-directory", "uninstall"])
        .arg(format!("DESTDIR={}", s.destdir.display()));
    let out = run(&mut un, Duration::from_secs(60));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(list_tree(&s.destdir), vec!["/etc/hirte/hirte.conf"]);
}

// [itest->req~install.make-install~1]
#[test]
fn make_install_honours_prefix_and_skips_missing_generators() {
    if !hirte_tests::require_root("make_install_honours_prefix_and_skips_missing_generators") {
        return;
    }
    // Stand-in binaries: a hirtectl without the man and completions commands, as before
    // they existed.
    let fake = Scratch::new("fakebins");
    for b in ["hirte", "hirte-agent", "hirte-proxy", "hirte-web"] {
        std::fs::write(fake.path.join(b), "#!/bin/sh\nexit 0\n").unwrap();
    }
    std::fs::write(
        fake.path.join("hirtectl"),
        "#!/bin/sh\necho \"error: unrecognized subcommand '$1'\" >&2\nexit 2\n",
    )
    .unwrap();
    for b in [
        "hirte",
        "hirte-agent",
        "hirtectl",
        "hirte-proxy",
        "hirte-web",
    ] {
        std::fs::set_permissions(
            fake.path.join(b),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    let s = make_install(&[
        "PREFIX=/opt/hirte",
        &format!("BINSRC={}", fake.path.display()),
    ]);
    assert_staged(&s);
    let log = stdout(&s.output);
    assert!(
        log.contains("'hirtectl man DIR' is not available")
            || log.contains("hirtectl man DIR' is not available"),
        "{log}"
    );
    for sh in ["bash", "zsh", "fish"] {
        assert!(
            log.contains(&format!("completions {sh}' is not available")),
            "{log}"
        );
    }
    let files = list_tree(&s.destdir);
    assert!(
        files
            .iter()
            .all(|f| !f.contains("/man/") && !f.contains("completion")),
        "{files:?}"
    );
    for f in ["/opt/hirte/bin/hirtectl", "/opt/hirte/libexec/hirte-proxy"] {
        assert!(files.contains(&f.to_string()), "{f}: {files:?}");
    }
    assert!(
        files.contains(&"/etc/hirte/hirte.conf".to_string()),
        "{files:?}"
    );
    let unit = read(&s.path("/opt/hirte/lib/systemd/system/hirte.service"));
    assert!(
        unit.contains("\nExecStart=/opt/hirte/bin/hirte\n"),
        "{unit}"
    );
    let unit = read(&s.path("/opt/hirte/lib/systemd/user/hirte-agent.service"));
    assert!(
        unit.contains("\nExecStart=/opt/hirte/bin/hirte-agent --user\n"),
        "{unit}"
    );
    // The proxy templates name the helper in LIBEXECDIR (PREFIX/libexec).
    for (dir, user) in [("system", ""), ("user", "--user ")] {
        let unit = read(&s.path(&format!(
            "/opt/hirte/lib/systemd/{dir}/hirte-proxy@.service"
        )));
        for op in ["ExecStart=", "ExecStop=", "ExecStopPost=-"] {
            let verb = if op == "ExecStart=" {
                "create"
            } else {
                "remove"
            };
            let line = format!("\n{op}/opt/hirte/libexec/hirte-proxy {user}{verb} %i.service\n");
            assert!(
                unit.contains(&line),
                "{dir} proxy template lacks {line:?}: {unit}"
            );
        }
        assert!(!unit.contains("/usr/libexec/"), "{unit}");
    }
    assert!(s
        .path("/opt/hirte/share/dbus-1/system.d/org.containers.hirte.conf")
        .is_file());
}

// [itest->req~install.units~1]
// [itest->req~install.policy-operators~1]
// [itest->req~install.web~1]
#[test]
fn installed_units_verify_and_installed_policy_guards_the_bus() {
    if !hirte_tests::require_root("installed_units_verify_and_installed_policy_guards_the_bus") {
        return;
    }
    let host_bin = host_usr_bin_state();
    let s = make_install(&[]);
    assert_staged(&s);

    // Units as shipped, ExecStart= at /usr/bin.
    for (src, dest) in [
        (SYSTEM_UNITS[0], "/usr/lib/systemd/system/hirte.service"),
        (SYSTEM_UNITS[1], "/usr/lib/systemd/system/hirte.socket"),
        (
            SYSTEM_UNITS[2],
            "/usr/lib/systemd/system/hirte-agent.service",
        ),
        (USER_UNIT, "/usr/lib/systemd/user/hirte-agent.service"),
    ]
    .into_iter()
    .chain(PROXY_TEMPLATES)
    {
        assert_eq!(read(&s.path(dest)), read(&repo_file(src)), "{dest}");
    }
    let m = read(&s.path("/usr/lib/systemd/system/hirte.service"));
    for line in [
        "Type=notify",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "ExecStart=/usr/bin/hirte\n",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ] {
        assert!(m.contains(line), "hirte.service lacks {line}");
    }
    let a = read(&s.path("/usr/lib/systemd/user/hirte-agent.service"));
    assert!(a.contains("ExecStart=/usr/bin/hirte-agent --user\n"), "{a}");
    // hirte-web: a dedicated user in hirte-operators, no privileges, read-only file system.
    let w = read(&s.path("/usr/lib/systemd/system/hirte-web.service"));
    assert_eq!(w, read(&repo_file("packaging/systemd/hirte-web.service")));
    for line in [
        "\nExecStart=/usr/bin/hirte-web\n",
        "\nUser=hirte-web\n",
        "\nSupplementaryGroups=hirte-operators\n",
        "\nNoNewPrivileges=yes\n",
        "\nCapabilityBoundingSet=\n",
        "\nProtectSystem=strict\n",
        "\nProtectHome=yes\n",
        "\nPrivateTmp=yes\n",
    ] {
        assert!(w.contains(line), "hirte-web.service lacks {line:?}");
    }
    assert!(!w.contains("\nUser=root"), "{w}");
    let sysusers = read(&s.path("/usr/lib/sysusers.d/hirte-web.conf"));
    assert!(
        sysusers.contains("\nm hirte-web hirte-operators\n"),
        "{sysusers}"
    );
    // The templates as requirements/proxy.md describes them.
    for (dir, user) in [("system", ""), ("user", "--user ")] {
        let p = read(&s.path(&format!("/usr/lib/systemd/{dir}/hirte-proxy@.service")));
        for line in [
            "\nStopWhenUnneeded=yes\n".to_string(),
            "\nType=oneshot\n".to_string(),
            "\nRemainAfterExit=yes\n".to_string(),
            format!("\nExecStart={PROXY_HELPER} {user}create %i.service\n"),
            format!("\nExecStop={PROXY_HELPER} {user}remove %i.service\n"),
        ] {
            assert!(
                p.contains(&line),
                "{dir} hirte-proxy@.service lacks {line:?}"
            );
        }
        let d = read(&s.path(&format!("/usr/lib/systemd/{dir}/hirte-dep@.service")));
        for line in [
            "\nBindsTo=%i.service\n",
            "\nAfter=%i.service\n",
            "\nType=oneshot\n",
            "\nRemainAfterExit=yes\n",
        ] {
            assert!(d.contains(line), "{dir} hirte-dep@.service lacks {line:?}");
        }
    }

    let out = verify_units(&s);
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        show(&out)
    );
    assert!(
        stderr(&out).trim().is_empty() && stdout(&out).trim().is_empty(),
        "systemd-analyze verify reported something: {}",
        show(&out)
    );
    // The host's /usr/bin is untouched: everything went to DESTDIR.
    assert_eq!(host_usr_bin_state(), host_bin);

    // Sandboxing exposure as recorded in docs/operations.md (offline review of the files).
    for unit in ["hirte.service", "hirte-agent.service"] {
        let mut cmd = Command::new("systemd-analyze");
        cmd.args(["security", "--offline=yes", "--no-pager"])
            .arg(s.path(&format!("/usr/lib/systemd/system/{unit}")))
            .env("SYSTEMD_COLORS", "0");
        let out = run(&mut cmd, Duration::from_secs(60));
        let text = stdout(&out) + &stderr(&out);
        let score = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no exposure level for {unit}: {}", show(&out)));
        eprintln!("{unit}: exposure {score}");
        assert!(score <= 2.0, "{unit}: exposure {score} above 2.0\n{text}");
    }

    // The installed policy is the one install_policy.rs checks, and it works as installed.
    let installed = s.path("/usr/share/dbus-1/system.d/org.containers.hirte.conf");
    assert_eq!(read(&installed), read(&repo_file(MANAGER_POLICY)));
    assert_eq!(
        read(&s.path("/usr/share/dbus-1/system.d/org.containers.hirte.Agent.conf")),
        read(&repo_file(AGENT_POLICY))
    );
    let op = Operator::create();
    // The only test in this binary that starts a cluster.
    std::env::set_var("HIRTE_DBUS_POLICY", &installed);
    let c = Cluster::start(ClusterSpec::new(&["n1", "n2"]))
        .unwrap_or_else(|e| panic!("cluster start failed: {e}"));
    assert_eq!(
        read(&c.dir().join("system.d/org.containers.hirte.conf")),
        read(&installed)
    );
    check_manager_policy(&c, &op);
    drop(c);
    drop(op);
}
