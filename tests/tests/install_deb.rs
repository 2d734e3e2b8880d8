//! The Debian package: its cargo-deb metadata (`[package.metadata.deb]` in
//! manager/Cargo.toml) ships what `make install` installs, at the same paths, and, where
//! cargo-deb is installed (`cargo install cargo-deb --locked`), the .deb builds from the
//! test build's binaries and `dpkg-deb` lists the expected files, conffiles and scripts.

// Test code: a failed step must fail the test, with a message saying which.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod install_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use install_support::*;

/// `(source, destination, mode)` of every asset in the metadata.
fn deb_assets() -> Vec<(String, String, String)> {
    let toml = read(&repo_file(DEB_METADATA));
    let start = toml
        .find("[package.metadata.deb]")
        .expect("[package.metadata.deb] in manager/Cargo.toml");
    let section = &toml[start..];
    let assets_at = section.find("\nassets = [").expect("assets = [");
    let mut out = Vec::new();
    for line in section[assets_at..].lines().skip(1) {
        let line = line.trim();
        if line == "]" {
            break;
        }
        if !line.starts_with("[\"") {
            continue;
        }
        let parts: Vec<&str> = line.split('"').collect();
        assert!(parts.len() >= 7, "asset line {line}");
        out.push((parts[1].into(), parts[3].into(), parts[5].into()));
    }
    out
}

/// Where an asset lands: a destination ending in '/' keeps the source's file name.
fn dest_path(src: &str, dest: &str) -> String {
    if dest.ends_with('/') {
        let name = src.rsplit('/').next().unwrap_or(src);
        format!("/{dest}{name}")
    } else {
        format!("/{dest}")
    }
}

fn is_generated(path: &str) -> bool {
    path.starts_with("/usr/share/man/")
        || path.contains("completion")
        || path.starts_with("/usr/share/zsh/")
        || path == "/usr/share/doc/hirte/generated.txt"
}

// [itest->req~install.deb~1]
#[test]
fn deb_metadata_ships_what_make_install_installs() {
    if !hirte_tests::require_root("deb_metadata_ships_what_make_install_installs") {
        return;
    }
    let assets = deb_assets();
    let manager_dir = repo_file("manager");
    let mut deb: BTreeSet<String> = BTreeSet::new();
    for (src, dest, mode) in &assets {
        if src.contains('*') {
            assert_eq!(
                src, "../target/generated/share/**/*",
                "unexpected glob {src}"
            );
            assert_eq!(dest, "usr/share/");
            continue;
        }
        if let Some(bin) = src.strip_prefix("target/release/") {
            assert!(
                [
                    "hirte",
                    "hirte-agent",
                    "hirtectl",
                    "hirte-proxy",
                    "hirte-web"
                ]
                .contains(&bin),
                "{src}"
            );
            assert_eq!(mode, "755", "{src}");
        } else {
            assert!(manager_dir.join(src).is_file(), "asset {src} missing");
            assert_eq!(mode, "644", "{src}");
        }
        deb.insert(dest_path(src, dest));
    }
    // Same paths as make install (PREFIX=/usr), apart from the generated files and the
    // READMEs that stand for the empty drop-in directories (a .deb cannot hold empty ones
    // as assets; postinst creates them too).
    let s = make_install(&[]);
    assert!(
        s.output.status.success(),
        "make install: {}",
        show(&s.output)
    );
    let installed: BTreeSet<String> = list_tree(&s.destdir)
        .into_iter()
        .filter(|p| !is_generated(p))
        .collect();
    let deb_files: BTreeSet<String> = deb
        .iter()
        .filter(|p| !p.ends_with(".conf.d/README"))
        .cloned()
        .collect();
    assert_eq!(deb_files, installed, "deb assets vs make install");
    // Installed content equals the packaged source (units with PREFIX=/usr are unchanged).
    for (src, dest, _) in &assets {
        if src.contains('*') || src.starts_with("target/") || dest.contains(".conf.d/") {
            continue;
        }
        assert_eq!(
            read(&s.path(&dest_path(src, dest))),
            read(&manager_dir.join(src)),
            "{src}"
        );
    }

    // Conffiles, maintainer scripts.
    let toml = read(&repo_file(DEB_METADATA));
    assert!(toml.contains(
        "conf-files = [\"/etc/hirte/hirte.conf\", \"/etc/hirte/agent.conf\", \"/etc/hirte/web.conf\"]"
    ));
    assert!(toml.contains("maintainer-scripts = \"../packaging/debian/\""));
    for script in DEB_SCRIPTS {
        let p = repo_file(script);
        let mode = std::os::unix::fs::PermissionsExt::mode(&p.metadata().unwrap().permissions());
        assert_eq!(mode & 0o111, 0o111, "{script} not executable");
        let out = run(
            Command::new("sh").arg("-n").arg(&p),
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "{script}: {}", show(&out));
        let text = read(&p);
        let code: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        for forbidden in ["systemctl enable", "systemctl start", "systemctl restart"] {
            assert!(
                !code.iter().any(|l| l.contains(forbidden)),
                "{script} runs {forbidden}"
            );
        }
    }
    let postinst = read(&repo_file(DEB_SCRIPTS[0]));
    assert!(postinst.contains("addgroup --system hirte-operators"));
    assert!(postinst.contains("org.freedesktop.DBus.ReloadConfig"));
}

/// Builds the .deb from the test build's binaries and lists it. `ci/setup` installs cargo-deb,
/// so CI builds the package on every run; without cargo-deb the test fails.
// [itest->req~install.deb~1]
#[test]
fn deb_builds_and_lists_the_expected_files() {
    if !hirte_tests::require_root("deb_builds_and_lists_the_expected_files") {
        return;
    }
    let out_dir = Scratch::new("deb");
    let Some(deb) = build_deb("deb_builds_and_lists_the_expected_files", &out_dir) else {
        return;
    };
    let out = run(
        Command::new("dpkg-deb").arg("-c").arg(&deb),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", show(&out));
    let listing = stdout(&out);
    eprintln!("{}:\n{listing}", deb.display());
    // The helper is a binary of hirte-agent's package, not of hirte's: `--no-build` takes it
    // from the target directory as it does hirte-agent; it must be there and executable.
    let helper = listing
        .lines()
        .find(|l| l.ends_with(" ./usr/libexec/hirte-proxy"))
        .unwrap_or_else(|| panic!("./usr/libexec/hirte-proxy not in the package"));
    assert!(helper.starts_with("-rwxr-xr-x"), "{helper}");
    for f in [
        "./usr/bin/hirte",
        "./usr/bin/hirte-agent",
        "./usr/bin/hirtectl",
        "./usr/bin/hirte-web",
        "./usr/libexec/hirte-proxy",
        "./usr/lib/systemd/system/hirte.service",
        "./usr/lib/systemd/system/hirte-agent.service",
        "./usr/lib/systemd/system/hirte-proxy@.service",
        "./usr/lib/systemd/system/hirte-dep@.service",
        "./usr/lib/systemd/system/hirte-web.service",
        "./usr/lib/systemd/user/hirte-agent.service",
        "./usr/lib/systemd/user/hirte-proxy@.service",
        "./usr/lib/systemd/user/hirte-dep@.service",
        "./usr/share/dbus-1/system.d/org.containers.hirte.conf",
        "./usr/share/dbus-1/system.d/org.containers.hirte.Agent.conf",
        "./usr/lib/sysusers.d/hirte.conf",
        "./usr/lib/sysusers.d/hirte-web.conf",
        "./etc/hirte/hirte.conf",
        "./etc/hirte/agent.conf",
        "./etc/hirte/web.conf",
        "./etc/hirte/web.conf.d/README",
        "./etc/hirte/hirte.conf.d/README",
        "./etc/hirte/agent.conf.d/README",
        "./usr/share/doc/hirte/operations.md",
        "./usr/share/doc/hirte/stunnel.md",
        "./usr/share/doc/hirte/LICENSE",
        "./usr/share/doc/hirte/generated.txt",
        "./usr/share/doc/hirte/examples/hirte-server.conf",
        "./usr/share/doc/hirte/examples/hirte-client.conf",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {f}"))),
            "{f} not in the package"
        );
    }
    // Man pages (compressed by cargo-deb) and completions, as far as `make generate` made them.
    let generated = read(&repo_file("target/generated/share/doc/hirte/generated.txt"));
    for rel in generated.lines().skip(1) {
        let f = if rel.starts_with("man/") {
            format!("./usr/share/{rel}.gz")
        } else {
            format!("./usr/share/{rel}")
        };
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {f}"))),
            "generated {f} not in the package"
        );
    }
    let out = run(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .args(["Package", "Depends"]),
        Duration::from_secs(30),
    );
    let fields = stdout(&out);
    assert!(fields.contains("Package: hirte"), "{fields}");
    assert!(fields.contains("dbus | dbus-broker"), "{fields}");
    let mut ctrl = Command::new("sh");
    ctrl.arg("-c")
        .arg("dpkg-deb --ctrl-tarfile \"$1\" | tar -xO ./conffiles")
        .arg("sh")
        .arg(&deb);
    let out = run(&mut ctrl, Duration::from_secs(30));
    let conffiles = stdout(&out);
    for c in [
        "/etc/hirte/hirte.conf",
        "/etc/hirte/agent.conf",
        "/etc/hirte/web.conf",
    ] {
        assert!(
            conffiles.lines().any(|l| l == c),
            "{c} not a conffile: {conffiles}"
        );
    }
    let out = run(
        Command::new("dpkg-deb").arg("-I").arg(&deb),
        Duration::from_secs(30),
    );
    for script in ["postinst", "prerm", "postrm"] {
        assert!(
            stdout(&out).contains(script),
            "{script} missing: {}",
            show(&out)
        );
    }
    // The built package's own maintainer scripts: the operators' group and a policy reload,
    // and on a fresh install neither enable nor start.
    let mut ctrl = Command::new("sh");
    ctrl.arg("-c")
        .arg("dpkg-deb --ctrl-tarfile \"$1\" | tar -xO ./postinst")
        .arg("sh")
        .arg(&deb);
    let postinst = stdout(&run(&mut ctrl, Duration::from_secs(30)));
    assert!(
        postinst.contains("addgroup --system hirte-operators"),
        "{postinst}"
    );
    assert!(
        postinst.contains("org.freedesktop.DBus.ReloadConfig"),
        "{postinst}"
    );
    let commands: Vec<&str> = postinst
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    for verb in [
        "systemctl enable",
        "systemctl start",
        "deb-systemd-invoke start",
    ] {
        assert!(
            !commands.iter().any(|l| l.contains(verb)),
            "postinst runs '{verb}':\n{postinst}"
        );
    }
}
