//! hirte-web's page in a real browser: headless Chromium (Debian packages chromium and
//! chromium-driver) driven over W3C WebDriver by chromedriver, against a real cluster with an
//! active and a failed unit. The test reads the rendered DOM, watches a live event arrive,
//! checks the browser console, and takes the screenshots for docs/ (written to
//! `target/hirte-web-*.png`; with `HIRTE_UPDATE_SCREENSHOTS=1` also to `docs/`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod ctl_common;
mod web_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ctl_common::*;
use hirte_tests::{Cluster, ClusterSpec};
use web_common::*;

/// Bound for the page to show what the test waits for (hirte-web polls every second).
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Writes a screenshot to target/ and, when asked, to docs/.
fn keep_screenshot(png: &[u8], name: &str) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let target = workspace().join("target").join(name);
    std::fs::write(&target, png).unwrap();
    if std::env::var("HIRTE_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        std::fs::write(workspace().join("docs").join(name), png).unwrap();
    }
}

/// Text of the elements matching `selector`, one per line.
fn texts(b: &Browser, selector: &str) -> String {
    b.eval_str(&format!(
        "return Array.from(document.querySelectorAll({})).map(e => e.textContent.trim()).join('\\n')",
        js(selector)
    ))
}

// [itest->req~web.page~1]
// [itest->req~web.live~1]
#[test]
fn web_page_shows_the_fleet_live_in_chromium() {
    if !hirte_tests::require_root("web_page_shows_the_fleet_live_in_chromium") {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(&["n1", "n2"])).unwrap();
    c.write_unit("n2", "web-a.service", SLEEP_UNIT).unwrap();
    c.write_unit("n2", "broken.service", FAILING_UNIT).unwrap();
    ctl_ok(&c, &["start", "n2", "web-a.service"]);
    let o = c.hirtectl(&["start", "n2", "broken.service"]);
    assert!(!o.status.success(), "{}", show(&o));
    let web = Web::start(&c);
    // Job timing shows the manager's metrics signals: on, and one start job while watched.
    ctl_ok(&c, &["metrics", "enable"]);

    let t0 = Instant::now();
    let b = Browser::start(c.dir(), 1280, 800);
    let browser_up = t0.elapsed();
    let t1 = Instant::now();
    b.navigate(&web.url("/"));
    b.wait_true(
        "the page to load the fleet",
        PAGE_TIMEOUT,
        "return document.body.dataset.loaded === 'yes' && \
         document.querySelectorAll('#units tr[data-unit]').length > 0",
    );
    let loaded = t1.elapsed();
    eprintln!("chromium up in {browser_up:?}; page loaded with the fleet in {loaded:?}");

    // Manager status and both nodes online, with their peer IPs.
    assert_eq!(texts(&b, "#manager"), "manager up");
    let nodes = texts(&b, "#nodes tbody tr");
    for n in ["n1", "n2"] {
        let line = nodes
            .lines()
            .find(|l| l.starts_with(n))
            .unwrap_or_else(|| panic!("no row for {n}: {nodes}"));
        assert!(line.contains("online"), "{line}");
        assert!(line.contains(&c.node_ip(n).unwrap()) || n == "n1", "{line}");
    }
    // The failed unit first, highlighted: in the failed table and marked in the units table.
    assert_eq!(
        b.eval_str(
            "return Array.from(document.querySelectorAll('#failed tbody tr.failed td:nth-child(2)')).map(e => e.textContent).join(',')"
        ),
        "broken.service"
    );
    assert_eq!(
        b.eval_str(
            "const r = document.querySelector('#units table[data-node=\"n2\"] tr[data-unit=\"broken.service\"]'); \
             return r ? r.className + '|' + getComputedStyle(r.cells[0]).backgroundColor : 'missing'"
        ),
        "failed|rgb(253, 232, 231)",
        "the failed row is marked and tinted"
    );
    assert_eq!(
        b.eval_str(
            "return document.querySelector('#units table[data-node=\"n2\"] tbody tr').dataset.unit"
        ),
        "broken.service",
        "failed units come first in their node's table"
    );
    // The filter narrows the units table.
    b.eval(
        "const f = document.getElementById('unit-filter'); f.value = 'web-a'; \
         f.dispatchEvent(new Event('input')); return true",
    );
    assert_eq!(
        texts(&b, "#units tr[data-unit]"),
        "web-a.serviceactiverunningloadedSleeps forever"
    );
    b.eval(
        "const f = document.getElementById('unit-filter'); f.value = ''; \
         f.dispatchEvent(new Event('input')); return true",
    );

    // A start job is timed: the manager's StartUnitJobMetrics reach the job timing table.
    c.write_unit("n1", "web-b.service", SLEEP_UNIT).unwrap();
    ctl_ok(&c, &["start", "n1", "web-b.service"]);
    b.wait_true(
        "the start's timing on the page",
        PAGE_TIMEOUT,
        "return Array.from(document.querySelectorAll('#timings tbody tr')).some(r => \
         r.textContent.startsWith('n1web-b.service'))",
    );

    // A stop through hirtectl appears as an event on the open page, without a reload.
    ctl_ok(&c, &["stop", "n2", "web-a.service"]);
    let t2 = Instant::now();
    b.wait_true(
        "the stop event on the page",
        PAGE_TIMEOUT,
        "return Array.from(document.querySelectorAll('#events li')).some(li => \
         li.textContent.includes('n2/web-a.service') && li.textContent.includes('inactive (dead)'))",
    );
    eprintln!(
        "stop event shown {:?} after hirtectl returned",
        t2.elapsed()
    );
    keep_screenshot(&b.screenshot(), "hirte-web.png");
    // Its row follows: inactive, or gone once systemd unloads the stopped unit (as it leaves
    // `hirtectl list-units`).
    b.wait_true(
        "the unit's row to follow",
        PAGE_TIMEOUT,
        "const r = document.querySelector('#units tr[data-unit=\"web-a.service\"]'); \
         return !r || r.textContent.includes('inactive')",
    );

    // Phone: one column, nothing wider than the screen.
    b.set_window(390, 844);
    b.wait_true(
        "the page to fit a phone's width",
        PAGE_TIMEOUT,
        "return document.documentElement.scrollWidth <= window.innerWidth",
    );
    keep_screenshot(&b.screenshot(), "hirte-web-phone.png");

    // No errors in the browser console (failed loads, CSP violations, script errors).
    let console = b.console();
    let errors: Vec<_> = console
        .iter()
        .filter(|(level, _)| level == "SEVERE" || level == "WARNING")
        .collect();
    assert!(errors.is_empty(), "console: {errors:?}");

    // Clean-up of the browser: no process of this session is left.
    let profile_pids = b.profile_processes();
    assert!(
        !profile_pids.is_empty(),
        "the browser runs with its own profile"
    );
    drop(b);
    // Killed processes may linger a moment as zombies until init reaps them.
    let alive = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    };
    let gone = c.wait_for(
        "the browser's processes to end",
        Duration::from_secs(5),
        || !profile_pids.iter().any(alive),
    );
    let left: Vec<&i32> = profile_pids.iter().filter(|p| alive(p)).collect();
    assert!(gone.is_ok(), "browser processes left: {left:?}");
}
