//! Configuration files as both daemons read them: `parse_text`, then every entry applied to
//! `ManagerConfig` / `AgentConfig`, then the cross-key checks; and the time-span parser.
//! Every error about the text must name `FILE:LINE` with a line that exists.
#![no_main]

use hirte_common::config::{parse_text, AgentConfig, ConfigError, ManagerConfig};
use hirte_common::timespan::{format_timespan, parse_timespan};
use libfuzzer_sys::fuzz_target;

fn check(text: &str, section: &str) {
    let lines = text.lines().count().max(1);
    let res = parse_text(text, "f.conf", section).and_then(|entries| {
        if section == "hirte" {
            let mut c = ManagerConfig::default();
            for e in &entries {
                c.apply(e)?;
            }
            c.validate()
        } else {
            let mut c = AgentConfig::default();
            for e in &entries {
                c.apply(e)?;
            }
            let _ = c.effective_manager_timeout();
            c.validate()
        }
    });
    if let Err(e) = res {
        if matches!(e, ConfigError::Invalid { .. }) {
            return;
        }
        let msg = e.to_string();
        let line: usize = msg
            .strip_prefix("f.conf:")
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(line >= 1 && line <= lines, "line {line} of {lines}: {msg}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text, "hirte");
    check(&text, "hirte-agent");
    if let Ok(d) = parse_timespan(&text) {
        assert_eq!(parse_timespan(&format_timespan(d)), Ok(d), "{text:?}");
    }
});
