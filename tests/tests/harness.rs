//! Tests of the harness itself, with real systemd user managers but without
//! the hirte daemons (spec with start_manager = start_agents = false).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use hirte_tests::{cleanup_kept, Cluster, ClusterResources, ClusterSpec};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn assert_gone(res: &ClusterResources) {
    let left = res.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn three_nodes_run_units_and_reach_each_other() {
    if !hirte_tests::require_root("three_nodes_run_units_and_reach_each_other") {
        return;
    }
    let t0 = Instant::now();
    let c = Cluster::start(ClusterSpec::systemd_only(&["n1", "n2", "n3"])).unwrap();
    eprintln!("3-node cluster up in {:?}", t0.elapsed());
    assert_eq!(c.nodes(), vec!["n1", "n2", "n3"]);
    assert_eq!(c.node_ip("n3").as_deref(), Some("10.200.0.3"));
    assert!(c.bus_address().starts_with("unix:path="));
    c.system_bus().unwrap();

    // A oneshot unit on n2 runs inside n2 (its runtime dir, its network namespace).
    c.write_unit(
        "n2",
        "probe.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart=/bin/sh -c 'ip -4 -o addr show dev eth0 > %t/probe.out'\n",
    )
    .unwrap();
    let t = Instant::now();
    let out = c.systemctl("n2", &["start", "probe.service"]);
    eprintln!("systemctl --user start took {:?}", t.elapsed());
    assert!(out.status.success(), "{out:?}");
    let out = c.systemctl("n2", &["show", "-p", "ActiveState", "probe.service"]);
    assert_eq!(stdout(&out), "ActiveState=active");
    let probe =
        std::fs::read_to_string(c.node_runtime_dir("n2").unwrap().join("probe.out")).unwrap();
    assert!(probe.contains("10.200.0.2/24"), "{probe}");
    // Nodes are separate systemd instances.
    let out = c.systemctl("n1", &["show", "-p", "LoadState", "probe.service"]);
    assert_eq!(stdout(&out), "LoadState=not-found");

    // Mount namespace: private /run/systemd on the node, host's untouched.
    let out = c.node_shell("n3", "grep ' /run/systemd ' /proc/self/mountinfo && test -d /run/systemd/system && echo $XDG_RUNTIME_DIR");
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("tmpfs"), "{out:?}");
    assert!(stdout(&out).ends_with(&c.node_runtime_dir("n3").unwrap().display().to_string()));
    assert!(!std::path::Path::new("/run/systemd/system").exists());

    // Every node reaches every other over the bridge.
    let t = Instant::now();
    for from in ["n1", "n2", "n3"] {
        for to in ["n1", "n2", "n3"] {
            assert!(
                c.reachable(from, to, Duration::from_secs(1)).unwrap(),
                "{from} -> {to}"
            );
        }
    }
    eprintln!("9 reachability probes took {:?}", t.elapsed());

    // Partition n3, then heal it.
    c.set_link("n3", false).unwrap();
    assert!(!c.reachable("n1", "n3", Duration::from_millis(300)).unwrap());
    assert!(c.reachable("n1", "n2", Duration::from_secs(1)).unwrap());
    c.set_link("n3", true).unwrap();
    c.wait_for("n3 reachable again", Duration::from_secs(5), || {
        c.reachable("n1", "n3", Duration::from_millis(200))
            .unwrap_or(false)
    })
    .unwrap();

    // Unknown nodes are reported, not panicked on.
    assert_eq!(c.systemctl("nope", &["status"]).status.code(), Some(127));
    assert!(c.node_ip("nope").is_none());

    let res = c.resources();
    assert!(
        res.pids.len() >= 6,
        "systemd + session bus per node: {:?}",
        res.pids
    );
    assert!(res.leftovers().len() > 3);
    let t = Instant::now();
    drop(c);
    eprintln!("3-node cluster down in {:?}", t.elapsed());
    assert_gone(&res);
}

#[test]
fn panic_inside_test_still_cleans_up() {
    if !hirte_tests::require_root("panic_inside_test_still_cleans_up") {
        return;
    }
    let mut res = None;
    let r = catch_unwind(AssertUnwindSafe(|| {
        let c = Cluster::start(ClusterSpec::systemd_only(&["a", "b"])).unwrap();
        // A background process the test forgot about must go too.
        let out = c.node_shell("b", "sleep 1000 >/dev/null 2>&1 & echo $!");
        assert!(out.status.success(), "{out:?}");
        res = Some(c.resources());
        panic!("deliberate failure while the cluster is up");
    }));
    assert!(r.is_err());
    let res = res.unwrap();
    assert!(!res.pids.is_empty());
    assert_gone(&res);
}

#[test]
fn parallel_clusters_are_isolated() {
    if !hirte_tests::require_root("parallel_clusters_are_isolated") {
        return;
    }
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Cluster::start(ClusterSpec::systemd_only(&["n1", "n2"])));
        let b = s.spawn(|| Cluster::start(ClusterSpec::systemd_only(&["n1", "n2"])));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert_ne!(a.id(), b.id());
    assert_ne!(a.dir(), b.dir());
    a.write_unit(
        "n1",
        "only-a.service",
        "[Service]\nType=oneshot\nExecStart=/bin/true\n",
    )
    .unwrap();
    let out = b.systemctl("n1", &["show", "-p", "LoadState", "only-a.service"]);
    assert_eq!(stdout(&out), "LoadState=not-found");
    // Same addresses, different networks: each cluster's n1 is 10.200.0.1.
    assert!(a.reachable("n2", "n1", Duration::from_secs(1)).unwrap());
    assert!(b.reachable("n2", "n1", Duration::from_secs(1)).unwrap());
    let (ra, rb) = (a.resources(), b.resources());
    drop(a);
    assert_gone(&ra);
    // b is unaffected by a's teardown.
    let out = b.systemctl("n2", &["is-system-running"]);
    assert!(!stdout(&out).is_empty());
    assert!(b.systemd_pid("n2").is_some());
    b.shutdown().unwrap();
    assert_gone(&rb);
}

#[test]
fn kept_cluster_is_cleaned_up_from_its_dir() {
    if !hirte_tests::require_root("kept_cluster_is_cleaned_up_from_its_dir") {
        return;
    }
    let c = Cluster::start(ClusterSpec::systemd_only(&["solo"])).unwrap();
    let res = c.resources();
    let pid = c.systemd_pid("solo").unwrap();
    let dir = c.keep();
    // Still running after the handle is gone.
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(dir.join(hirte_tests::STATE_FILE).exists());
    assert!(
        hirte_tests::cleanup_stale().iter().all(|d| d != &dir),
        "kept != stale"
    );
    cleanup_kept(&dir).unwrap();
    assert_gone(&res);
    // Idempotent: the second call finds nothing to do (no dir -> error, nothing else).
    assert!(cleanup_kept(&dir).is_err());
}

#[test]
fn failed_start_reports_the_log_and_cleans_up() {
    if !hirte_tests::require_root("failed_start_reports_the_log_and_cleans_up") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let bins = std::env::temp_dir().join(format!("hirte-fakebin-{}", std::process::id()));
    std::fs::create_dir_all(&bins).unwrap();
    let seen = std::env::temp_dir().join(format!("hirte-fakebin-{}.seen", std::process::id()));
    // A manager that records which cluster it ran in, then dies like on a bad config.
    let script = format!(
        "#!/bin/sh\necho \"$HIRTE_CONFIG_DIR\" > {}\necho 'fake manager: bad config' >&2\nexit 3\n",
        seen.display()
    );
    for b in ["hirte", "hirtectl"] {
        let p = bins.join(b);
        std::fs::write(&p, &script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut spec = ClusterSpec::new(&["m"]);
    spec.start_agents = false;
    spec.bin_dir = Some(bins.clone());
    let err = Cluster::start(spec).unwrap_err();
    let msg = err.to_string();
    std::fs::remove_dir_all(&bins).ok();
    assert!(
        matches!(err, hirte_tests::HarnessError::ProcessExited { .. }),
        "{msg}"
    );
    assert!(msg.contains("fake manager: bad config"), "{msg}");
    assert!(msg.contains("exit status: 3"), "{msg}");

    let etc = std::path::PathBuf::from(std::fs::read_to_string(&seen).unwrap().trim());
    std::fs::remove_file(&seen).ok();
    let dir = etc.parent().and_then(|p| p.parent()).unwrap().to_path_buf();
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let id = name.strip_prefix(hirte_tests::DIR_PREFIX).unwrap();
    assert!(!dir.exists(), "{dir:?}");
    for ns in [format!("hirte-{id}-0"), format!("hirte-{id}-sw")] {
        assert!(
            !std::path::Path::new("/run/netns").join(&ns).exists(),
            "{ns}"
        );
    }
    for h in ["systemd", "unified", ""] {
        let cg = std::path::Path::new("/sys/fs/cgroup")
            .join(h)
            .join(format!("hirte-{id}"));
        assert!(!cg.exists(), "{cg:?}");
    }
}

/// A node's systemd --user sees its own unit dirs and the system's, never the host's
/// XDG dirs: no `/etc/xdg` (its autostart entries would become `app-*@autostart.service`),
/// the node's own `XDG_CONFIG_DIRS`/`XDG_DATA_DIRS` instead; so what a desktop package
/// installs on the host cannot change what the tests see.
#[test]
fn nodes_do_not_see_the_hosts_xdg_dirs() {
    if !hirte_tests::require_root("nodes_do_not_see_the_hosts_xdg_dirs") {
        return;
    }
    let c = Cluster::start(ClusterSpec::systemd_only(&["n1"])).unwrap();
    let path = stdout(&c.systemctl("n1", &["show", "-p", "UnitPath", "--value"]));
    let dirs: Vec<&str> = path.split_whitespace().collect();
    assert!(!dirs.is_empty(), "UnitPath empty");
    for d in &dirs {
        assert!(
            !d.starts_with("/etc/xdg"),
            "host desktop dir {d} in the node's UnitPath: {path}"
        );
    }
    let node_dir = c.node_dir("n1").unwrap();
    for own in ["xdg-config", "xdg-data"] {
        let own = node_dir
            .join(own)
            .join("systemd/user")
            .display()
            .to_string();
        assert!(dirs.contains(&own.as_str()), "{own} not searched: {path}");
    }
    let autostart = stdout(&c.systemctl(
        "n1",
        &[
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "app-*@autostart.service",
        ],
    ));
    assert_eq!(autostart, "", "autostart units from the host");
}

/// Runs one test of this binary again, as user `nobody`, and returns its output.
fn run_self_as_nobody(test: &str, allow_skip: bool) -> std::io::Result<std::process::Output> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["--exact", test, "--show-output", "--test-threads=1"])
        .env_remove(hirte_tests::ALLOW_SKIP_ENV)
        .uid(65534)
        .gid(65534);
    if allow_skip {
        cmd.env(hirte_tests::ALLOW_SKIP_ENV, "1");
    }
    cmd.output()
}

/// Without root an integration test cannot run: it fails, or with HIRTE_ALLOW_SKIP=1 it
/// passes but prints the marker that hirte-trace reads as "skipped". It never passes silently.
// [itest->req~trace.skipped-tests~1]
#[test]
fn a_test_without_root_fails_or_reports_itself_skipped() {
    if !hirte_tests::require_root("a_test_without_root_fails_or_reports_itself_skipped") {
        return;
    }
    let victim = "three_nodes_run_units_and_reach_each_other";
    let out = run_self_as_nobody(victim, false).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "a non-root run passed: {text}");
    assert!(
        text.contains(&format!("{victim} cannot run: integration tests need root")),
        "{text}"
    );
    assert!(text.contains("1 failed"), "{text}");

    let out = run_self_as_nobody(victim, true).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.lines().any(|l| l
            == format!(
                "{} {victim}: integration tests need root (namespaces, cgroups, systemd)",
                hirte_tests::SKIP_MARKER
            )),
        "{text}"
    );
}
