//! The declared minimum Rust is true: `rust-version` of the workspace (Cargo.toml, inherited
//! by every member) is the highest `rust-version` of any package in Cargo.lock, so the
//! oldest toolchain the locked dependency set supports, and at most the Rust of RHEL/Rocky
//! 9's current minor release; the rpm spec's BuildRequires say the same; the resolver is
//! MSRV-aware, so `cargo update` and new dependencies stay within it.
//!
//! When this fails after a dependency was added or updated: `cargo update` (resolver 3 picks
//! versions that support our rust-version where they exist); if a crate has no such version,
//! raise `rust-version` in Cargo.toml and the spec's BuildRequires to what the message names,
//! as long as that stays within RHEL 9's Rust.

// Test code: a failed step must fail the test, with a message saying which.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod install_support;

use std::process::Command;
use std::time::Duration;

use install_support::*;
use serde_json::Value;

/// Rust of RHEL/Rocky 9's current minor release: 9.8 (May 2026) ships rust-toolset 1.92.0
/// (Red Hat's "Using Rust 1.92.0 Toolset"; UBI 9's rust and cargo went from 1.88.0 in 9.7 to
/// 1.92.0 in 9.8).
const RHEL9_RUST: Version = Version(1, 92, 0);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Version(u32, u32, u32);

impl Version {
    /// `1.85` or `1.85.0`.
    fn parse(text: &str) -> Version {
        let mut parts = text.split('.').map(|p| {
            p.parse::<u32>()
                .unwrap_or_else(|_| panic!("rust-version {text:?}"))
        });
        let major = parts.next().unwrap_or(0);
        let minor = parts.next().unwrap_or(0);
        let patch = parts.next().unwrap_or(0);
        Version(major, minor, patch)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.2 == 0 {
            write!(f, "{}.{}", self.0, self.1)
        } else {
            write!(f, "{}.{}.{}", self.0, self.1, self.2)
        }
    }
}

/// `cargo metadata` of the workspace, exactly as Cargo.lock pins it.
fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .args(["metadata", "--format-version", "1", "--locked"]);
    let out = run(&mut cmd, Duration::from_secs(120));
    assert!(out.status.success(), "cargo metadata: {}", show(&out));
    serde_json::from_slice(&out.stdout).expect("cargo metadata output is JSON")
}

// [itest->req~install.msrv~1]
#[test]
fn declared_minimum_rust_is_what_the_locked_dependencies_need() {
    let meta = metadata();
    let packages = meta["packages"].as_array().expect("packages");
    let mut ours: Option<Version> = None;
    let mut deps: Vec<(Version, String)> = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or_default();
        let version = p["version"].as_str().unwrap_or_default();
        let rust = p["rust_version"].as_str().map(Version::parse);
        if p["source"].is_null() {
            // A workspace member: inherits the workspace's rust-version.
            let rust = rust.unwrap_or_else(|| {
                panic!("{name}: no rust-version (add `rust-version.workspace = true`)")
            });
            assert!(
                ours.is_none_or(|o| o == rust),
                "{name}: rust-version {rust}, other members {ours:?}"
            );
            ours = Some(rust);
        } else if let Some(rust) = rust {
            deps.push((rust, format!("{name} {version}")));
        }
    }
    let ours = ours.expect("workspace members");
    deps.sort();
    let too_new: Vec<String> = deps
        .iter()
        .filter(|(rust, _)| *rust > ours)
        .map(|(rust, p)| format!("{p} needs Rust {rust}"))
        .collect();
    assert!(
        too_new.is_empty(),
        "Cargo.lock holds packages newer than the declared minimum Rust {ours}:\n{}\n\
         (cargo update keeps to {ours} where it can; otherwise raise rust-version)",
        too_new.join("\n")
    );
    let (needed, by) = deps.last().cloned().expect("locked dependencies");
    assert_eq!(
        ours, needed,
        "rust-version {ours} is not the oldest toolchain the locked dependencies support: \
         {needed} ({by}); set rust-version (Cargo.toml) and the spec's BuildRequires to {needed}"
    );
    assert!(
        ours <= RHEL9_RUST,
        "rust-version {ours} is newer than RHEL/Rocky 9's Rust {RHEL9_RUST}: the rpm would not \
         build with the distribution's toolchain"
    );

    let spec = read(&repo_file(RPM_SPEC));
    for tool in ["cargo", "rust"] {
        let line = format!("BuildRequires:  {tool} >= {ours}\n");
        assert!(spec.contains(&line), "{RPM_SPEC} lacks {line:?}");
    }
    let manifest = read(&repo_file(WORKSPACE_MANIFEST));
    assert!(
        manifest.contains("\nresolver = \"3\"\n"),
        "{WORKSPACE_MANIFEST}: resolver 3 (MSRV-aware) expected"
    );
}
