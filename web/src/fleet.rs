//! What hirte-web knows about the fleet: the last listing read from the manager, updated
//! between listings by the manager's signals. Pure data and update rules (no I/O), so the
//! collector thread writes it and the HTTP workers read it under one mutex.

use hirte_common::bounds::{WEB_MAX_EVENTS, WEB_MAX_JOBS, WEB_MAX_JOB_SERIES, WEB_MAX_JOB_TIMINGS};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// A node as `hirtectl -o json list-nodes` prints it (same fields, same order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    pub node: String,
    pub state: String,
    pub ip: String,
    pub last_seen_usec: u64,
}

/// A unit as `hirtectl -o json list-units` prints it (same fields, same order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitRow {
    pub node: String,
    pub unit: String,
    pub load: String,
    pub active: String,
    pub sub: String,
    pub description: String,
}

/// A job between the manager's `JobNew` and `JobRemoved`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    pub id: u32,
    pub node: String,
    pub unit: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub state: String,
    /// Wall clock when hirte-web saw `JobNew`.
    pub started_usec: u64,
    /// Monotonic clock at the same moment, for the duration.
    #[serde(skip)]
    pub started_mono_usec: u64,
}

/// One line of the page's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Increases by one per event; the page asks for events after the last it has.
    pub seq: u64,
    pub time_usec: u64,
    /// `unit`, `node`, `job` or `manager`.
    pub kind: &'static str,
    pub node: String,
    pub unit: String,
    pub text: String,
}

/// The manager's `StartUnitJobMetrics` of one start job (only while metrics are enabled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobTiming {
    pub time_usec: u64,
    pub node: String,
    pub unit: String,
    pub job_id: String,
    pub job_usec: u64,
    pub unit_start_usec: u64,
}

/// Upper bounds (seconds) of `hirte_job_duration_seconds`' buckets; `+Inf` follows.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Job durations (JobNew to JobRemoved as hirte-web sees them): cumulative buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or below `DURATION_BUCKETS[i]`.
    pub buckets: [u64; DURATION_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        for (bucket, le) in self.buckets.iter_mut().zip(DURATION_BUCKETS) {
            if seconds <= le {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

/// Key of `hirte_jobs_total`: (node, type, result).
pub type JobSeries = (String, String, String);

#[derive(Debug, Default)]
pub struct Fleet {
    /// The manager answered the last listing.
    pub reachable: bool,
    /// The manager's `Status` property (`up`, `degraded`, `down`); empty until read.
    pub status: String,
    /// Why the last listing failed; empty when it worked.
    pub error: String,
    /// Wall clock of the last listing that worked (0: none yet).
    pub refreshed_usec: u64,
    pub nodes: Vec<NodeRow>,
    /// Sorted by node, then unit (as hirtectl sorts them).
    pub units: Vec<UnitRow>,
    /// Changes whenever `units` does, so the page refetches them only then.
    pub units_version: u64,
    pub jobs: BTreeMap<u32, Job>,
    pub events: VecDeque<Event>,
    next_seq: u64,
    pub timings: VecDeque<JobTiming>,
    pub jobs_total: BTreeMap<JobSeries, u64>,
    /// `hirte_jobs_total` series not created because of [`WEB_MAX_JOB_SERIES`].
    pub dropped_series: u64,
    pub durations: Histogram,
}

/// Whether a node `state` (as the manager spells it) is online.
fn is_online(state: &str) -> bool {
    state == hirte_common::protocol::NODE_ONLINE
}

impl Fleet {
    /// A listing read from the manager.
    pub fn set_listing(
        &mut self,
        status: String,
        nodes: Vec<NodeRow>,
        mut units: Vec<UnitRow>,
        now_usec: u64,
    ) {
        units.sort_by(|a, b| (&a.node, &a.unit).cmp(&(&b.node, &b.unit)));
        if !self.reachable {
            self.push_event(now_usec, "manager", "", "", "manager reachable".to_string());
        }
        self.reachable = true;
        self.error.clear();
        self.status = status;
        self.nodes = nodes;
        self.set_units(units);
        self.refreshed_usec = now_usec;
    }

    fn set_units(&mut self, units: Vec<UnitRow>) {
        if units != self.units {
            self.units = units;
            self.units_version += 1;
        }
    }

    /// The manager could not be read; what is known stays for the page, marked stale.
    pub fn set_unreachable(&mut self, error: String, now_usec: u64) {
        if self.reachable {
            self.push_event(
                now_usec,
                "manager",
                "",
                "",
                format!("manager unreachable: {error}"),
            );
        }
        self.reachable = false;
        self.error = error;
    }

    /// A listing failed but the manager answered (e.g. one node timed out in `ListUnits`).
    pub fn set_error(&mut self, error: String) {
        self.error = error;
    }

    /// `Status` changed (`PropertiesChanged` of the manager).
    pub fn set_status(&mut self, status: String, now_usec: u64) {
        if status != self.status {
            self.push_event(
                now_usec,
                "manager",
                "",
                "",
                format!("manager status {status}"),
            );
            self.status = status;
        }
    }

    /// `NodeConnectionStateChanged`.
    pub fn node_state(&mut self, node: &str, state: &str, now_usec: u64) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.node == node) {
            n.state = state.to_string();
        }
        if !is_online(state) {
            // The manager's ListUnits leaves out offline nodes; so does the page.
            let before = self.units.len();
            self.units.retain(|u| u.node != node);
            if self.units.len() != before {
                self.units_version += 1;
            }
        }
        self.push_event(now_usec, "node", node, "", format!("node {state}"));
    }

    /// The monitor's `UnitStateChanged`.
    pub fn unit_state(
        &mut self,
        node: &str,
        unit: &str,
        active: &str,
        sub: &str,
        reason: &str,
        now_usec: u64,
    ) {
        let mut changed = true;
        if let Some(u) = self
            .units
            .iter_mut()
            .find(|u| u.node == node && u.unit == unit)
        {
            changed = u.active != active || u.sub != sub;
            if changed {
                u.active = active.to_string();
                u.sub = sub.to_string();
                self.units_version += 1;
            }
        }
        // Virtual states are the agent's report of what already was, except a node's drop;
        // a report of the state the unit already had is not news either.
        if changed && (reason == "real" || sub == "agent-offline") {
            self.push_event(now_usec, "unit", node, unit, format!("{active} ({sub})"));
        }
    }

    /// `JobNew`, with the job's properties when they could be read.
    pub fn job_new(&mut self, job: Job) {
        if self.jobs.len() < WEB_MAX_JOBS || self.jobs.contains_key(&job.id) {
            self.jobs.insert(job.id, job);
        }
    }

    /// `PropertiesChanged` of a job's `State`.
    pub fn job_state(&mut self, id: u32, state: &str) {
        if let Some(j) = self.jobs.get_mut(&id) {
            j.state = state.to_string();
        }
    }

    /// `JobRemoved`: counted, timed (when its start was seen) and logged.
    pub fn job_removed(
        &mut self,
        id: u32,
        node: &str,
        unit: &str,
        result: &str,
        now_usec: u64,
        now_mono_usec: u64,
    ) {
        let job = self.jobs.remove(&id);
        let job_type = job
            .as_ref()
            .map_or_else(|| "unknown".to_string(), |j| j.job_type.clone());
        let key = (node.to_string(), job_type.clone(), result.to_string());
        let room = self.jobs_total.len() < WEB_MAX_JOB_SERIES;
        match self.jobs_total.get_mut(&key) {
            Some(n) => *n += 1,
            None if room => {
                self.jobs_total.insert(key, 1);
            }
            None => self.dropped_series += 1,
        }
        let took = job.map(|j| now_mono_usec.saturating_sub(j.started_mono_usec));
        if let Some(us) = took {
            // Microseconds to seconds: exact enough for any job's duration.
            #[allow(clippy::cast_precision_loss)]
            self.durations.observe(us as f64 / 1e6);
        }
        let text = match took {
            Some(us) => format!("{job_type} job {id}: {result} after {}", format_usec(us)),
            None => format!("{job_type} job {id}: {result}"),
        };
        self.push_event(now_usec, "job", node, unit, text);
    }

    /// `StartUnitJobMetrics`.
    pub fn job_timing(&mut self, timing: JobTiming) {
        if self.timings.len() >= WEB_MAX_JOB_TIMINGS {
            self.timings.pop_front();
        }
        self.timings.push_back(timing);
    }

    fn push_event(
        &mut self,
        time_usec: u64,
        kind: &'static str,
        node: &str,
        unit: &str,
        text: String,
    ) {
        if self.events.len() >= WEB_MAX_EVENTS {
            self.events.pop_front();
        }
        self.next_seq += 1;
        self.events.push_back(Event {
            seq: self.next_seq,
            time_usec,
            kind,
            node: node.to_string(),
            unit: unit.to_string(),
            text,
        });
    }

    /// Sequence number of the newest event (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.next_seq
    }

    /// Units whose active state is `failed`, in listing order.
    pub fn failed_units(&self) -> impl Iterator<Item = &UnitRow> {
        self.units.iter().filter(|u| u.active == "failed")
    }
}

/// `1.5 s`, `12 ms`, `800 µs`: short, for the event log.
pub fn format_usec(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{}.{} s", us / 1_000_000, (us % 1_000_000) / 100_000)
    } else if us >= 1_000 {
        format!("{} ms", us / 1_000)
    } else {
        format!("{us} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(node: &str, unit: &str, active: &str) -> UnitRow {
        UnitRow {
            node: node.into(),
            unit: unit.into(),
            load: "loaded".into(),
            active: active.into(),
            sub: "x".into(),
            description: String::new(),
        }
    }

    fn node(name: &str, state: &str) -> NodeRow {
        NodeRow {
            node: name.into(),
            state: state.into(),
            ip: String::new(),
            last_seen_usec: 0,
        }
    }

    // [utest->req~web.live~1]
    #[test]
    fn listing_is_sorted_and_versioned() {
        let mut f = Fleet::default();
        f.set_listing(
            "up".into(),
            vec![node("b", "online"), node("a", "online")],
            vec![
                unit("b", "z.service", "active"),
                unit("a", "y.service", "failed"),
            ],
            1,
        );
        let names: Vec<_> = f.units.iter().map(|u| u.unit.as_str()).collect();
        assert_eq!(names, ["y.service", "z.service"]);
        assert_eq!(f.units_version, 1);
        assert_eq!(f.failed_units().count(), 1);
        let same = f.units.clone();
        f.set_listing("up".into(), f.nodes.clone(), same, 2);
        assert_eq!(f.units_version, 1, "unchanged units keep their version");
        f.unit_state("b", "z.service", "inactive", "dead", "real", 3);
        assert_eq!(f.units_version, 2);
        assert_eq!(f.units[1].active, "inactive");
        assert!(f.events.back().is_some_and(|e| e.text == "inactive (dead)"));
        // A virtual report is not news, nor is the same state again.
        let seq = f.last_seq();
        f.unit_state("b", "z.service", "active", "x", "virtual", 4);
        assert_eq!(f.units[1].active, "active");
        f.unit_state("b", "z.service", "active", "x", "real", 4);
        assert_eq!(f.last_seq(), seq);
        f.node_state("b", "offline", 5);
        assert!(f.units.iter().all(|u| u.node != "b"));
        assert_eq!(f.nodes[0].state, "offline");
    }

    #[test]
    fn events_are_bounded() {
        let mut f = Fleet::default();
        for i in 0..(WEB_MAX_EVENTS as u64 + 10) {
            f.node_state("n", "online", i);
        }
        assert_eq!(f.events.len(), WEB_MAX_EVENTS);
        assert_eq!(f.last_seq(), WEB_MAX_EVENTS as u64 + 10);
        assert_eq!(f.events.front().map(|e| e.seq), Some(11));
    }

    #[test]
    fn jobs_are_counted_and_timed() {
        let mut f = Fleet::default();
        f.job_new(Job {
            id: 7,
            node: "n".into(),
            unit: "u.service".into(),
            job_type: "start".into(),
            state: "waiting".into(),
            started_usec: 10,
            started_mono_usec: 1_000,
        });
        f.job_state(7, "running");
        assert_eq!(f.jobs[&7].state, "running");
        f.job_removed(7, "n", "u.service", "done", 20, 31_000);
        f.job_removed(8, "n", "u.service", "failed", 21, 32_000);
        assert!(f.jobs.is_empty());
        let key = |t: &str, r: &str| ("n".to_string(), t.to_string(), r.to_string());
        assert_eq!(f.jobs_total[&key("start", "done")], 1);
        assert_eq!(f.jobs_total[&key("unknown", "failed")], 1);
        assert_eq!(f.durations.count, 1);
        assert_eq!(f.durations.buckets[0], 0, "30 ms is above 5 ms");
        assert_eq!(f.durations.buckets[3], 1, "30 ms is below 50 ms");
        assert!(f
            .events
            .iter()
            .any(|e| e.text == "start job 7: done after 30 ms"));
    }

    #[test]
    fn job_series_are_bounded() {
        let mut f = Fleet::default();
        for i in 0..WEB_MAX_JOB_SERIES + 3 {
            f.job_removed(1, &format!("n{i}"), "u", "done", 0, 0);
        }
        assert_eq!(f.jobs_total.len(), WEB_MAX_JOB_SERIES);
        assert_eq!(f.dropped_series, 3);
    }

    #[test]
    fn jobs_and_timings_are_bounded() {
        let mut f = Fleet::default();
        let job = |id| Job {
            id,
            node: "n".into(),
            unit: "u".into(),
            job_type: "start".into(),
            state: "waiting".into(),
            started_usec: 0,
            started_mono_usec: 0,
        };
        for id in 0..=u32::try_from(WEB_MAX_JOBS).unwrap() {
            f.job_new(job(id));
        }
        assert_eq!(f.jobs.len(), WEB_MAX_JOBS);
        // The untracked job still counts when it ends.
        f.job_removed(u32::try_from(WEB_MAX_JOBS).unwrap(), "n", "u", "done", 0, 0);
        assert_eq!(
            f.jobs_total[&("n".into(), "unknown".into(), "done".into())],
            1
        );
        for i in 0..WEB_MAX_JOB_TIMINGS + 5 {
            f.job_timing(JobTiming {
                time_usec: i as u64,
                node: "n".into(),
                unit: "u".into(),
                job_id: i.to_string(),
                job_usec: 1,
                unit_start_usec: 1,
            });
        }
        assert_eq!(f.timings.len(), WEB_MAX_JOB_TIMINGS);
        assert_eq!(f.timings.front().map(|t| t.time_usec), Some(5));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_usec(800), "800 µs");
        assert_eq!(format_usec(12_345), "12 ms");
        assert_eq!(format_usec(1_500_000), "1.5 s");
    }
}
