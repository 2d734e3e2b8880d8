//! Tests of the logger: formats, targets, the non-blocking sinks and the per-peer limit.

use super::peers::PeerLimiter;
use super::*;
use std::time::Instant;

// [utest->req~log.targets~1]
#[test]
fn levels_and_targets_parse() {
    assert_eq!("debug".parse::<Level>(), Ok(Level::Debug));
    assert_eq!("WARN".parse::<Level>(), Ok(Level::Warn));
    assert!("loud".parse::<Level>().is_err());
    assert_eq!("journald".parse::<Target>(), Ok(Target::Journald));
    assert_eq!("syslog".parse::<Target>(), Ok(Target::Syslog));
    assert!("paper".parse::<Target>().is_err());
    assert!(Level::Debug < Level::Error);
}

fn listener(name: &str) -> (std::path::PathBuf, UnixDatagram) {
    let path = std::env::temp_dir().join(format!("hirte-log-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let rx = UnixDatagram::bind(&path).unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    (path, rx)
}

// [utest->req~log.events~1]
// [utest->req~log.targets~1]
#[test]
fn journald_records_carry_structured_fields() {
    let (path, rx) = listener("journal");
    let mut sink = open_journald(Some(&path)).unwrap();
    let fields = [("NODE", "agent1"), ("UNIT", "httpd.service"), ("JOB", "7")];
    assert_eq!(
        write_record(
            &mut sink,
            "hirte",
            Level::Info,
            &fields,
            "Job 7 start\nof x"
        ),
        Written::Ok
    );
    let mut buf = [0u8; 512];
    let n = rx.recv(&mut buf).unwrap();
    let rec = String::from_utf8_lossy(&buf[..n]).to_string();
    assert_eq!(
        rec,
        "MESSAGE=Job 7 start of x\nPRIORITY=6\nSYSLOG_IDENTIFIER=hirte\nNODE=agent1\nUNIT=httpd.service\nJOB=7\n"
    );
    std::fs::remove_file(&path).unwrap();
}

// [utest->req~log.targets~1]
#[test]
fn syslog_target_writes_rfc3164_lines() {
    let (path, rx) = listener("syslog");
    let mut sink = open_syslog("hirte-agent", Some(&path)).unwrap();
    assert_eq!(
        write_record(&mut sink, "hirte-agent", Level::Warn, &[], "link lost"),
        Written::Ok
    );
    let mut buf = [0u8; 512];
    let n = rx.recv(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]).to_string();
    // <28> = facility daemon (3) * 8 + warning (4)
    assert!(line.starts_with("<28>"), "{line}");
    assert!(
        line.contains("hirte-agent[") && line.ends_with("link lost"),
        "{line}"
    );
    std::fs::remove_file(&path).unwrap();
}

// [utest->req~log.non-blocking~1]
#[test]
fn a_stalled_sink_drops_and_counts_instead_of_blocking() {
    for kind in ["journal", "syslog"] {
        // Nobody reads: the socket's buffer fills, as with a stalled journald.
        let (path, _rx) = listener(&format!("stalled-{kind}"));
        let mut sink = match kind {
            "journal" => open_journald(Some(&path)).unwrap(),
            _ => open_syslog("hirte", Some(&path)).unwrap(),
        };
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut busy = 0;
            for i in 0..5_000 {
                let msg = format!("record {i} {}", "x".repeat(200));
                match write_record(&mut sink, "hirte", Level::Info, &[], &msg) {
                    Written::Busy => busy += 1,
                    Written::Ok => {}
                    Written::Failed => panic!("sink failed"),
                }
            }
            let before = dropped_total();
            assert!(write_counted(
                &mut sink,
                "hirte",
                Level::Info,
                &[],
                "one more"
            ));
            assert!(dropped_total() > before, "a busy record is counted");
            let _ = tx.send(busy);
        });
        let busy = done
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{kind}: a log write blocked"));
        assert!(busy > 0, "{kind}: nothing dropped");
        std::fs::remove_file(&path).unwrap();
    }
}

// [utest->req~log.non-blocking~1]
#[test]
fn the_drop_count_goes_out_with_the_next_record() {
    let (path, rx) = listener("dropcount");
    let mut sink = open_journald(Some(&path)).unwrap();
    DROPPED.store(7, Ordering::Relaxed);
    assert!(write_counted(&mut sink, "hirte", Level::Info, &[], "after"));
    let mut buf = [0u8; 512];
    let n = rx.recv(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).to_string();
    // 7, or more if another test's busy record landed in between.
    assert!(
        first.starts_with("MESSAGE=")
            && first.contains(" log records dropped: the log sink was busy\n"),
        "{first}"
    );
    let n = rx.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("MESSAGE=after\n"));
    std::fs::remove_file(&path).unwrap();
}

// [utest->req~log.peer-rate-limit~1]
#[test]
fn peers_are_rate_limited_one_by_one_and_summarised() {
    let mut l = PeerLimiter::default();
    let t0 = Instant::now();
    let logged = (0..1000).filter(|_| l.admit("10.0.0.9", t0).log).count();
    assert_eq!(logged, PEER_BURST as usize);
    // Another peer is not held back by the first.
    assert!(l.admit("10.0.0.7", t0).log);
    // The next window reports the suppressed count, then logs again.
    let next = l.admit("10.0.0.9", t0 + PEER_WINDOW);
    assert!(next.log);
    assert_eq!(next.summaries, vec![("10.0.0.9".to_string(), 995)]);
    // The table is bounded: many peers reuse PEER_SLOTS slots, nothing is lost silently.
    let mut l = PeerLimiter::default();
    for p in 0..PEER_SLOTS {
        for _ in 0..=PEER_BURST {
            l.admit(&format!("p{p}"), t0);
        }
    }
    let a = l.admit("newcomer", t0 + Duration::from_millis(1));
    assert!(a.log);
    assert_eq!(a.summaries, vec![("p0".to_string(), 1)]);
    assert_eq!(l.tracked(), PEER_SLOTS);
}

#[test]
fn level_filter() {
    set_level(Level::Warn);
    assert!(!enabled(Level::Info));
    assert!(enabled(Level::Error));
    set_level(Level::Info);
    assert_eq!(level(), Level::Info);
}
