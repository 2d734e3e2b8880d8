//! hirte-web against a real cluster: its JSON is hirtectl's `-o json`, its metrics pass
//! `promtool check metrics`, it follows the manager going away and coming back, and bad HTTP
//! input gets clear errors within the bounds of safety/bounds.md. The page in a real browser
//! is web_browser.rs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod ctl_common;
mod install_support;
mod web_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctl_common::*;
use hirte_common::bounds::{
    WEB_ACCEPT_QUEUE_DEPTH, WEB_CALL_TIMEOUT, WEB_MAX_REQUEST_HEAD, WEB_REFRESH_INTERVAL,
    WEB_REQUEST_TIMEOUT, WEB_WORKERS,
};
use hirte_tests::{Cluster, ClusterSpec, Signal};
use web_common::*;

/// Runs `promtool check metrics` on `text`; its exit status and output.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, installed by ci/setup)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The value of the sample `series` (exact name and labels) in a metrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `web-a.service`: sleeps forever; its start takes half a second, so that its jobs outlive
/// hirte-web's read of the job object on `JobNew` (a job that ends before that read is
/// counted with type `unknown`: the API's `JobNew` carries only the id and path).
const WEB_A_UNIT: &str = "[Unit]\nDescription=Sleeps forever\n[Service]\nExecStartPre=/bin/sleep 0.5\nExecStart=/bin/sleep infinity\n";

/// A cluster n1, n2 with `web-a.service` active and `broken.service` failed on n2.
fn cluster_with_failed_unit() -> Cluster {
    let c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();
    c.write_unit("n2", "web-a.service", WEB_A_UNIT).unwrap();
    c.write_unit("n2", "broken.service", FAILING_UNIT).unwrap();
    ctl_ok(&c, &["start", "n2", "web-a.service"]);
    let o = c.hirtectl(&["start", "n2", "broken.service"]);
    assert!(
        !o.status.success(),
        "broken.service must fail: {}",
        show(&o)
    );
    assert_eq!(is_active(&c, "n2", "broken.service"), "failed");
    c
}

/// `/api/nodes` without the `last_seen_usec` values (they move with every heartbeat).
fn without_last_seen(text: &str) -> Vec<(String, String, String)> {
    json(text)
        .arr()
        .iter()
        .map(|n| {
            assert!(n.u("last_seen_usec") > 0, "{n:?}");
            (
                n.s("node").to_string(),
                n.s("state").to_string(),
                n.s("ip").to_string(),
            )
        })
        .collect()
}

// [itest->req~web.api~1]
// [itest->req~web.metrics~1]
// [itest->req~web.live~1]
#[test]
fn web_json_is_hirtectls_and_metrics_pass_promtool() {
    if !hirte_tests::require_root("web_json_is_hirtectls_and_metrics_pass_promtool") {
        return;
    }
    let mut c = cluster_with_failed_unit();
    let web = Web::start(&c);

    // /api/units: byte for byte what hirtectl prints (once hirte-web has read the fleet).
    let mut last = (String::new(), String::new());
    let same = c.wait_for(
        "/api/units equal to hirtectl -o json list-units",
        SOON,
        || {
            let r = web.get("/api/units");
            let ctl = stdout(&c.hirtectl(&["-o", "json", "list-units"]));
            last = (r.body.clone(), ctl.clone());
            r.status == 200 && r.body == ctl
        },
    );
    assert!(
        same.is_ok(),
        "web:\n{}\nhirtectl:\n{}\n{}",
        last.0,
        last.1,
        web.log_text()
    );
    let r = web.get("/api/units?node=n2");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.body, ctl_ok(&c, &["-o", "json", "list-units", "n2"]));
    let broken = json(&r.body)
        .arr()
        .iter()
        .find(|u| u.s("unit") == "broken.service")
        .cloned()
        .expect("broken.service listed");
    assert_eq!((broken.s("active"), broken.s("sub")), ("failed", "failed"));

    // /api/nodes: hirtectl's document; only the heartbeat times may differ.
    let r = web.get("/api/nodes");
    assert_eq!(r.status, 200);
    assert_eq!(
        without_last_seen(&r.body),
        without_last_seen(&ctl_ok(&c, &["-o", "json", "list-nodes"]))
    );
    assert_documented("list-nodes", json(&r.body).arr());
    assert_eq!(web.get("/api/units?node=nope").status, 404);

    // A job while hirte-web watches: counted, timed, logged as an event.
    ctl_ok(&c, &["restart", "n2", "web-a.service"]);
    let mut text = String::new();
    let counted = c.wait_for("the restart job in /metrics", SOON, || {
        text = web.get("/metrics").body;
        sample(
            &text,
            "hirte_jobs_total{node=\"n2\",type=\"restart\",result=\"done\"}",
        ) == Some(1.0)
    });
    assert!(counted.is_ok(), "{text}");
    let r = web.get("/metrics");
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = r.body;
    assert_eq!(sample(&m, "hirte_up"), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "hirte_node_online{node=\"n1\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "hirte_node_online{node=\"n2\"}"),
        Some(1.0),
        "{m}"
    );
    let seen = sample(&m, "hirte_node_last_seen_seconds{node=\"n2\"}").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - seen).abs() < 60.0, "last seen {seen}, now {now}");
    assert_eq!(
        sample(&m, "hirte_units{node=\"n2\",active_state=\"failed\"}"),
        Some(1.0),
        "{m}"
    );
    assert!(sample(&m, "hirte_units{node=\"n2\",active_state=\"active\"}").unwrap() >= 1.0);
    assert!(
        sample(&m, "hirte_job_duration_seconds_count").unwrap() >= 1.0,
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "hirte_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{m}"
    );
    let (ok, out) = promtool_check(&m);
    assert!(ok, "promtool check metrics failed:\n{out}\n{m}");

    // Live: a stop shows up in the event log and in the unit's row without waiting for a
    // listing.
    let since = json(&web.get("/api/state").body).u("last_seq");
    ctl_ok(&c, &["stop", "n2", "web-a.service"]);
    let mut state = String::new();
    let live = c.wait_for("the stop as an event", SOON, || {
        state = web.get(&format!("/api/state?since={since}")).body;
        state.contains("\"unit\":\"web-a.service\",\"text\":\"inactive (dead)\"")
    });
    assert!(live.is_ok(), "{state}");

    // The manager goes away: hirte_up 0, the API says why; it comes back: all is read again.
    c.kill_manager(Signal::SIGTERM);
    let mut m = String::new();
    let down = c.wait_for("hirte_up 0", SOON, || {
        m = web.get("/metrics").body;
        sample(&m, "hirte_up") == Some(0.0)
    });
    assert!(down.is_ok(), "{m}");
    assert!(promtool_check(&m).0, "{m}");
    let r = web.get("/api/nodes");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(json(&r.body).s("error").contains("manager"), "{}", r.body);
    c.start_manager().unwrap();
    c.wait_all_online(Duration::from_secs(30)).unwrap();
    let up = c.wait_for("hirte_up 1 again", SOON, || {
        let m = web.get("/metrics").body;
        sample(&m, "hirte_up") == Some(1.0)
            && sample(&m, "hirte_node_online{node=\"n2\"}") == Some(1.0)
    });
    assert!(up.is_ok(), "{}", web.log_text());
    // The new monitor works: a start is seen live again.
    let since = json(&web.get("/api/state").body).u("last_seq");
    ctl_ok(&c, &["start", "n2", "web-a.service"]);
    let live = c.wait_for("the start as an event", SOON, || {
        let s = web.get(&format!("/api/state?since={since}")).body;
        s.contains("\"unit\":\"web-a.service\",\"text\":\"active (running)\"")
    });
    assert!(live.is_ok(), "{}", web.log_text());
    assert_eq!(web.stop(), Some(0), "hirte-web exits 0 on SIGTERM");
}

/// Reads what the server sends until it closes; the status code (0 if none).
fn status_of(mut s: TcpStream) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw).status
}

// [itest->req~web.bad-input~1]
// [itest->req~web.read-only~1]
// [itest->req~web.bounds~1]
#[test]
fn web_answers_bad_requests_with_clear_errors() {
    if !hirte_tests::require_root("web_answers_bad_requests_with_clear_errors") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["n1"])).unwrap();
    let mut web = Web::start(&c);
    let a = web.addr;

    let r = web.get("/no/such/page");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no page '/no/such/page'"), "{}", r.body);
    for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = request(a, m, "/api/units", Some("{}"));
        assert_eq!(r.status, 405, "{m}: {r:?}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"), "{m}");
    }
    let r = request(a, "HEAD", "/metrics", None);
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert!(
        r.header("Content-Length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );
    let r = exchange(a, b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").unwrap();
    assert_eq!(r.status, 413, "{r:?}");
    let r = exchange(
        a,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 400, "a TLS hello: {r:?}");
    let r = web.get("/api/units?node=%zz");
    assert_eq!(r.status, 400);

    // Oversized head: 431 (the client gets the answer, not a reset).
    let mut big = format!("GET /?{} HTTP/1.1\r\n", "a".repeat(WEB_MAX_REQUEST_HEAD));
    big.push_str("\r\n");
    let r = exchange(a, big.as_bytes()).unwrap();
    assert_eq!(r.status, 431, "{r:?}");
    assert!(
        r.body.contains(&WEB_MAX_REQUEST_HEAD.to_string()),
        "{}",
        r.body
    );

    // Slow head: 408 after WEB_REQUEST_TIMEOUT (tolerance: 2 s for a loaded machine).
    let t0 = Instant::now();
    let mut s = TcpStream::connect(a).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert_eq!(status_of(s), 408);
    let took = t0.elapsed();
    assert!(
        took >= WEB_REQUEST_TIMEOUT - Duration::from_millis(100)
            && took <= WEB_REQUEST_TIMEOUT + Duration::from_secs(2),
        "408 after {took:?}"
    );

    // Many connections: every worker busy with a silent client and the queue full, the next
    // connection gets 503 at once; when they time out, pages are served again.
    let idle: Vec<TcpStream> = (0..WEB_WORKERS + WEB_ACCEPT_QUEUE_DEPTH)
        .map(|_| TcpStream::connect(a).unwrap())
        .collect();
    // The accepting thread may still be taking them off the kernel's backlog (a loaded
    // machine): a request that is queued instead of refused waits (and fills the queue more).
    let mut refused = None;
    let mut extra = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(a).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut raw = Vec::new();
        if s.read_to_end(&mut raw).is_ok() {
            refused = Some((parse_response(&raw), t0.elapsed()));
            break;
        }
        extra.push(s);
    }
    let (r, took) = refused.unwrap_or_else(|| panic!("never refused\n{}", web.log_text()));
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("busy"), "{}", r.body);
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert!(took < Duration::from_secs(1), "503 took {took:?}");
    drop(extra);
    // The silent clients give up: their connections end at once and pages are served again.
    drop(idle);
    let served = c.wait_for("pages served again", WEB_REQUEST_TIMEOUT * 2, || {
        exchange(a, b"GET / HTTP/1.1\r\n\r\n").is_ok_and(|r| r.status == 200)
    });
    assert!(served.is_ok(), "{}", web.log_text());
    assert!(web.running(), "hirte-web survived: {}", web.log_text());
    let r = web.get("/");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<title>Hirte fleet</title>"));
    assert!(
        web.log_text().contains("HTTP queue full"),
        "{}",
        web.log_text()
    );
}

// [itest->req~web.config~1]
#[test]
fn web_reads_its_config_and_refuses_bad_settings() {
    if !hirte_tests::require_root("web_reads_its_config_and_refuses_bad_settings") {
        return;
    }
    let c = Cluster::start(ClusterSpec::systemd_only(&["n1"])).unwrap();
    let etc = c.dir().join("web-conf");
    std::fs::create_dir_all(etc.join("web.conf.d")).unwrap();
    let port = free_port();
    std::fs::write(
        etc.join("web.conf"),
        format!("[hirte-web]\nListenAddress=127.0.0.1:{port}\nLogTarget=stderr\n"),
    )
    .unwrap();
    let bin = c.bin_dir().join("hirte-web");
    let run = |args: &[&str], env_dir: &std::path::Path| {
        Command::new(&bin)
            .args(args)
            .env("HIRTE_CONFIG_DIR", env_dir)
            .env("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // From web.conf: listening on its port; no manager on the bus: hirte_up 0.
    let child = run(&[], &etc);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = c.wait_for("hirte-web on the configured port", SOON, || {
        exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")
            .is_ok_and(|r| r.status == 200 && sample(&r.body, "hirte_up") == Some(0.0))
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    );
    let out = child.wait_with_output().unwrap();
    assert!(up.is_ok(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0));

    // Bad settings: one line naming file, line and key; exit status 1; nothing listens.
    std::fs::write(
        etc.join("web.conf.d/10-bad.conf"),
        "[hirte-web]\nListenAddress=everywhere\n",
    )
    .unwrap();
    let out = run(&[], &etc).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("10-bad.conf:2: key 'ListenAddress': invalid value 'everywhere'"),
        "{err}"
    );
    std::fs::remove_file(etc.join("web.conf.d/10-bad.conf")).unwrap();
    // The command line wins over the file, and is checked the same way.
    let out = run(&["--listen", "nowhere"], &etc)
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("command line: key 'ListenAddress'"), "{err}");
    std::fs::write(etc.join("web.conf"), "[hirte-web]\nPort=80\n").unwrap();
    let out = run(&[], &etc).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("web.conf:2: unknown key 'Port'"), "{err}");
}

// [itest->req~web.read-only~1]
// [itest->req~web.live~1]
#[test]
fn web_works_as_a_member_of_hirte_operators() {
    if !hirte_tests::require_root("web_works_as_a_member_of_hirte_operators") {
        return;
    }
    // The shipped policy on the cluster's bus; the group must exist before the bus starts.
    let op = install_support::Operator::create();
    std::env::set_var(
        "HIRTE_DBUS_POLICY",
        install_support::repo_file(install_support::MANAGER_POLICY),
    );
    let c = cluster_with_failed_unit();
    let bin = c.bin_dir().join("hirte-web").display().to_string();
    let web = Web::start_command(&c, op.command(&bin, &[]));

    // Listings, properties, the monitor and job properties all pass the operators' policy.
    let mut body = String::new();
    let same = c.wait_for("/api/units as the operator", SOON, || {
        body = web.get("/api/units").body;
        body == stdout(&c.hirtectl(&["-o", "json", "list-units"]))
    });
    assert!(same.is_ok(), "{body}\n{}", web.log_text());
    let since = json(&web.get("/api/state").body).u("last_seq");
    ctl_ok(&c, &["restart", "n2", "web-a.service"]);
    let seen = c.wait_for("the restart, typed, as the operator", SOON, || {
        let s = web.get(&format!("/api/state?since={since}")).body;
        s.contains("restart job") && s.contains("\"text\":\"active (running)\"")
    });
    assert!(seen.is_ok(), "{}", web.log_text());
    let m = web.get("/metrics").body;
    assert_eq!(
        sample(
            &m,
            "hirte_jobs_total{node=\"n2\",type=\"restart\",result=\"done\"}"
        ),
        Some(1.0),
        "{m}"
    );
    let log = web.log_text();
    assert!(!log.contains("AccessDenied"), "{log}");
    assert!(!log.contains("WARN"), "{log}");
    drop(web);
    drop(c);
    drop(op);
}

/// Sends SIGCONT to the stopped manager when dropped, so a failing test still lets the
/// harness stop it.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

// [itest->req~web.live~1]
#[test]
fn web_serves_the_last_listing_while_the_manager_does_not_answer() {
    if !hirte_tests::require_root("web_serves_the_last_listing_while_the_manager_does_not_answer") {
        return;
    }
    let c = cluster_with_failed_unit();
    let web = Web::start(&c);
    let listed = c.wait_for("/api/nodes lists n1 and n2", SOON, || {
        let r = web.get("/api/nodes");
        r.status == 200 && r.body.contains("\"n1\"") && r.body.contains("\"n2\"")
    });
    assert!(listed.is_ok(), "{}", web.log_text());
    let last = without_last_seen(&web.get("/api/nodes").body);

    // The manager stops answering (SIGSTOP: still on the bus, its calls wait).
    let pid = c.manager_pid().expect("the manager runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let resume = Resume(pid);
    let stopped = Instant::now();

    // Until a call has waited WEB_CALL_TIMEOUT, the last listing is served, and hirte-web's
    // own requests are answered at once.
    let limit = WEB_CALL_TIMEOUT + WEB_REFRESH_INTERVAL + Duration::from_secs(5);
    let gave_up = loop {
        let asked = Instant::now();
        let r = web.get("/api/nodes");
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "a request took {:?} while the manager hung",
            asked.elapsed()
        );
        if r.status != 200 {
            assert_eq!(r.status, 503, "{r:?}");
            break stopped.elapsed();
        }
        assert_eq!(without_last_seen(&r.body), last);
        assert!(stopped.elapsed() < limit, "still reachable after {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    // Tolerance: a listing may have started up to 1 s before the SIGSTOP, and the next one
    // up to WEB_REFRESH_INTERVAL after it.
    assert!(
        gave_up >= WEB_CALL_TIMEOUT - Duration::from_secs(1) && gave_up < limit,
        "hirte-web gave the manager up after {gave_up:?}, not {WEB_CALL_TIMEOUT:?}"
    );
    let r = web.get("/api/nodes");
    assert!(json(&r.body).s("error").contains("manager"), "{}", r.body);

    // The manager answers again: so does the listing.
    drop(resume);
    let back = c.wait_for("/api/nodes 200 again", Duration::from_secs(30), || {
        web.get("/api/nodes").status == 200
    });
    assert!(back.is_ok(), "{}", web.log_text());
    assert_eq!(web.stop(), Some(0), "hirte-web exits 0 on SIGTERM");
}
