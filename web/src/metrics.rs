//! `/metrics`: the Prometheus text exposition format (version 0.0.4) of what hirte-web knows.

use crate::fleet::{Fleet, DURATION_BUCKETS};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value with `\`, `"` and newlines escaped as the format requires.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Seconds with microsecond precision, as Prometheus writes floats.
fn seconds(usec: u64) -> String {
    format!("{}.{:06}", usec / 1_000_000, usec % 1_000_000)
}

// [impl->req~web.metrics~1]
pub fn render(f: &Fleet) -> String {
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "hirte_up",
        "gauge",
        "Whether the Hirte manager answers on the system bus (1) or not (0).",
    );
    let _ = writeln!(out, "hirte_up {}", u8::from(f.reachable));

    family(
        &mut out,
        "hirte_build_info",
        "gauge",
        "Version of hirte-web; always 1.",
    );
    let _ = writeln!(
        out,
        "hirte_build_info{{version=\"{}\"}} 1",
        label(env!("CARGO_PKG_VERSION"))
    );

    // Node and unit series only while the manager answers: stale values would look current.
    let nodes = if f.reachable { f.nodes.as_slice() } else { &[] };
    family(
        &mut out,
        "hirte_node_online",
        "gauge",
        "Whether the node's agent is connected to the manager (1) or not (0).",
    );
    for n in nodes {
        let _ = writeln!(
            out,
            "hirte_node_online{{node=\"{}\"}} {}",
            label(&n.node),
            u8::from(n.state == hirte_common::protocol::NODE_ONLINE)
        );
    }
    family(
        &mut out,
        "hirte_node_last_seen_seconds",
        "gauge",
        "When the manager last heard from the node, in seconds since the epoch (0: never).",
    );
    for n in nodes {
        let _ = writeln!(
            out,
            "hirte_node_last_seen_seconds{{node=\"{}\"}} {}",
            label(&n.node),
            seconds(n.last_seen_usec)
        );
    }

    family(
        &mut out,
        "hirte_units",
        "gauge",
        "Units per node and active state (units the node's systemd has loaded).",
    );
    let mut per_state: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    if f.reachable {
        for u in &f.units {
            *per_state
                .entry((u.node.as_str(), u.active.as_str()))
                .or_default() += 1;
        }
    }
    for ((node, state), n) in per_state {
        let _ = writeln!(
            out,
            "hirte_units{{node=\"{}\",active_state=\"{}\"}} {n}",
            label(node),
            label(state)
        );
    }

    family(
        &mut out,
        "hirte_jobs_total",
        "counter",
        "Jobs that ended since hirte-web started, by node, job type and result.",
    );
    for ((node, job_type, result), n) in &f.jobs_total {
        let _ = writeln!(
            out,
            "hirte_jobs_total{{node=\"{}\",type=\"{}\",result=\"{}\"}} {n}",
            label(node),
            label(job_type),
            label(result)
        );
    }

    family(
        &mut out,
        "hirte_job_duration_seconds",
        "histogram",
        "Time from a job's JobNew to its JobRemoved signal, as hirte-web sees them.",
    );
    let h = &f.durations;
    for (le, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
        let _ = writeln!(out, "hirte_job_duration_seconds_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "hirte_job_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(out, "hirte_job_duration_seconds_sum {}", h.sum_seconds);
    let _ = writeln!(out, "hirte_job_duration_seconds_count {}", h.count);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{NodeRow, UnitRow};

    // [utest->req~web.metrics~1]
    #[test]
    fn renders_every_family() {
        let mut f = Fleet::default();
        f.set_listing(
            "degraded".into(),
            vec![NodeRow {
                node: "n\"1".into(),
                state: "online".into(),
                ip: "10.0.0.1".into(),
                last_seen_usec: 1_700_000_000_123_456,
            }],
            vec![UnitRow {
                node: "n\"1".into(),
                unit: "a.service".into(),
                load: "loaded".into(),
                active: "failed".into(),
                sub: "failed".into(),
                description: String::new(),
            }],
            1,
        );
        f.job_removed(3, "n\"1", "a.service", "done", 2, 0);
        let text = render(&f);
        for want in [
            "hirte_up 1\n",
            "hirte_node_online{node=\"n\\\"1\"} 1\n",
            "hirte_node_last_seen_seconds{node=\"n\\\"1\"} 1700000000.123456\n",
            "hirte_units{node=\"n\\\"1\",active_state=\"failed\"} 1\n",
            "hirte_jobs_total{node=\"n\\\"1\",type=\"unknown\",result=\"done\"} 1\n",
            "hirte_job_duration_seconds_bucket{le=\"0.005\"} 0\n",
            "hirte_job_duration_seconds_bucket{le=\"+Inf\"} 0\n",
            "hirte_job_duration_seconds_count 0\n",
            "# TYPE hirte_job_duration_seconds histogram\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(text.contains(&format!(
            "hirte_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        f.set_unreachable("gone".into(), 3);
        let text = render(&f);
        assert!(text.contains("hirte_up 0\n"));
        assert!(!text.contains("hirte_node_online{"), "{text}");
    }
}
