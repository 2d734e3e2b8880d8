//! Jobs: unit operations the manager asked an agent to run, from the request until systemd's
//! result. Bounded by `MAX_JOBS`; a job becomes public (object, `JobNew`) once its agent
//! accepted it, and ends with `JobRemoved`.

use crate::agent_msg::JobMetrics;
use crate::objects::{
    job_path, relay_answer, signal, ObjectOp, Outbox, METRICS_IFACE, METRICS_PATH,
};
use dbus::{Message, Path};
use hirte_common::bounds::MAX_JOBS;
use hirte_common::log_fields;
use hirte_common::protocol;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

pub struct Job {
    id: u32,
    /// Index of its node in the node table.
    node: usize,
    unit: String,
    job_type: &'static str,
    state: String,
    /// Public (JobNew sent) once the agent accepted it.
    started: bool,
    created: Instant,
    /// The unit's inactive-to-active time the agent measured (metrics), else 0.
    start_propagation_us: u64,
    /// A result that arrived before the agent's acceptance was processed.
    early_result: Option<String>,
}

impl Job {
    pub fn node(&self) -> usize {
        self.node
    }

    pub fn unit(&self) -> &str {
        &self.unit
    }

    pub fn job_type(&self) -> &'static str {
        self.job_type
    }

    pub fn state(&self) -> &str {
        &self.state
    }
}

/// Why no job was created.
#[derive(Debug, PartialEq, Eq)]
pub enum JobError {
    TooMany,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::TooMany => write!(f, "{MAX_JOBS} jobs are in flight; try again later"),
        }
    }
}

#[derive(Default)]
pub struct JobTable {
    jobs: BTreeMap<u32, Job>,
    next_id: u32,
}

impl JobTable {
    /// A new, not yet public job on node `node`.
    // [impl->req~bounds.jobs~1]
    pub fn create(
        &mut self,
        node: usize,
        unit: String,
        job_type: &'static str,
    ) -> Result<u32, JobError> {
        if self.jobs.len() >= MAX_JOBS {
            return Err(JobError::TooMany);
        }
        let id = self.allocate_id();
        self.jobs.insert(
            id,
            Job {
                id,
                node,
                unit,
                job_type,
                state: "waiting".to_string(),
                started: false,
                created: Instant::now(),
                start_propagation_us: 0,
                early_result: None,
            },
        );
        Ok(id)
    }

    fn allocate_id(&mut self) -> u32 {
        loop {
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.jobs.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    pub fn get(&self, id: u32) -> Option<&Job> {
        self.jobs.get(&id)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Whether job `id` runs on node `node` (agents may only report their own jobs).
    pub fn is_on(&self, id: u32, node: usize) -> bool {
        self.jobs.get(&id).is_some_and(|j| j.node == node)
    }

    /// Jobs of one node.
    pub fn of_node(&self, node: usize) -> Vec<u32> {
        self.jobs
            .values()
            .filter(|j| j.node == node)
            .map(|j| j.id)
            .collect()
    }

    /// Removes a job whose object was never added (its request could not be sent).
    pub fn withdraw(&mut self, id: u32) {
        self.jobs.remove(&id);
    }

    /// Removes a job that was never accepted: its object goes (if it was added).
    pub fn discard(&mut self, id: u32, out: &mut Outbox) {
        if self.jobs.remove(&id).is_some() {
            out.object(ObjectOp::RemoveJob(id));
        }
    }

    /// Whether the agent accepted job `id` (it is public).
    pub fn is_started(&self, id: u32) -> bool {
        self.jobs.get(&id).is_some_and(|j| j.started)
    }

    /// The agent accepted the job: it is public. Returns a result that arrived before.
    fn accept(&mut self, id: u32) -> Option<String> {
        let j = self.jobs.get_mut(&id)?;
        j.started = true;
        j.early_result.take()
    }

    /// The agent accepted job `id` (requested by `call`): it is public (`JobNew`, then the
    /// reply naming it). Returns a result that arrived before, to finish it with.
    pub fn accepted(&mut self, id: u32, call: &Message, out: &mut Outbox) -> Option<String> {
        let early = self.accept(id);
        let opath = Path::new(job_path(id)).ok()?;
        let sig = signal(protocol::MANAGER_PATH, protocol::MANAGER_IFACE, "JobNew")
            .map(|m| m.append2(id, opath.clone()));
        out.send(sig);
        if !call.get_no_reply() {
            out.send(Some(call.method_return().append1(opath)));
        }
        early
    }

    /// The agent on node `node` refused job `id`: it goes, the caller gets the agent's error.
    pub fn refused(
        &mut self,
        id: u32,
        node: &str,
        call: &Message,
        answer: Message,
        out: &mut Outbox,
    ) {
        if let Some(j) = self.jobs.get(&id) {
            let why = answer.get1::<&str>().unwrap_or("");
            // [impl->req~log.events~1]
            log_fields!(
                Info,
                [("NODE", node), ("UNIT", j.unit.as_str())],
                "Job {id} {} of '{}' on node '{node}' refused: {why}",
                j.job_type,
                j.unit
            );
        }
        self.discard(id, out);
        out.send(relay_answer(call, answer));
    }

    /// The job's result. A job not accepted yet keeps the result for later (`None`); an
    /// accepted one is removed and returned.
    pub fn finish(&mut self, id: u32, result: &str) -> Option<Job> {
        let job = self.jobs.get_mut(&id)?;
        if !job.started {
            // The agent's acceptance is still on its way; finish once it is processed.
            job.early_result = Some(result.to_string());
            return None;
        }
        self.jobs.remove(&id)
    }

    /// Records a state change reported by node `node`; false if it is not its job.
    pub fn set_state(&mut self, id: u32, node: usize, state: &str) -> bool {
        match self.jobs.get_mut(&id).filter(|j| j.node == node) {
            Some(j) => {
                j.state = state.to_string();
                true
            }
            None => false,
        }
    }

    /// `JobMetrics` from node `node` (index, name): the unit's start propagation time is kept
    /// for the job's own metrics, and the agent's measurement is passed on.
    // [impl->req~manager.metrics~1]
    pub fn agent_metrics(&mut self, idx: usize, node: &str, m: JobMetrics, out: &mut Outbox) {
        if let Some(j) = self.jobs.get_mut(&m.id).filter(|j| j.node == idx) {
            j.start_propagation_us = m.propagation_us;
        }
        let sig = signal(METRICS_PATH, METRICS_IFACE, "AgentJobMetrics")
            .map(|s| s.append3(node, m.unit, m.method).append1(m.micros));
        out.send(sig);
    }
}

/// The effects of a finished job: log, `JobRemoved`, its object removed and, with metrics on,
/// the start's measured times.
pub fn announce_finished(job: &Job, node: &str, result: &str, metrics: bool, out: &mut Outbox) {
    let id = job.id;
    log_fields!(
        Info,
        [
            ("NODE", node),
            ("UNIT", job.unit.as_str()),
            ("JOB", id.to_string().as_str())
        ],
        "Job {id} {} of '{}' on node '{node}' finished: {result}",
        job.job_type,
        job.unit
    );
    let sig = signal(
        protocol::MANAGER_PATH,
        protocol::MANAGER_IFACE,
        "JobRemoved",
    )
    .and_then(|m| {
        let path = Path::new(job_path(id)).ok()?;
        let mut m = m.append3(id, path, node.to_string());
        m.append_all((job.unit.clone(), result.to_string()));
        Some(m)
    });
    out.send(sig);
    out.object(ObjectOp::RemoveJob(id));
    // [impl->req~manager.metrics~1]
    if metrics && job.job_type == "start" {
        let micros = u64::try_from(job.created.elapsed().as_micros()).unwrap_or(u64::MAX);
        let sig = signal(METRICS_PATH, METRICS_IFACE, "StartUnitJobMetrics").map(|m| {
            m.append3(node.to_string(), id.to_string(), job.unit.clone())
                .append2(micros, job.start_propagation_us)
        });
        out.send(sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~bounds.jobs~1]
    #[test]
    fn the_table_is_bounded() {
        let mut t = JobTable::default();
        for _ in 0..MAX_JOBS {
            t.create(0, "u".into(), "start").unwrap();
        }
        assert_eq!(t.create(0, "u".into(), "start"), Err(JobError::TooMany));
        assert_eq!(t.len(), MAX_JOBS);
    }

    #[test]
    fn job_ids_wrap_to_1_and_skip_ids_in_use() {
        let mut t = JobTable {
            next_id: u32::MAX - 1,
            ..JobTable::default()
        };
        assert_eq!(t.allocate_id(), u32::MAX);
        t.next_id = 0;
        assert_eq!(t.create(0, "u".into(), "start"), Ok(1));
        t.next_id = u32::MAX;
        assert_eq!(t.allocate_id(), 2);
    }

    #[test]
    fn a_result_before_acceptance_waits_for_it() {
        let mut t = JobTable::default();
        let id = t.create(3, "x.service".into(), "start").unwrap();
        assert!(t.finish(id, "done").is_none());
        assert!(t.get(id).is_some());
        assert_eq!(t.accept(id).as_deref(), Some("done"));
        let job = t.finish(id, "done").expect("finished");
        assert_eq!(job.node(), 3);
        assert!(t.is_empty());
    }

    #[test]
    fn only_the_jobs_node_may_change_it() {
        let mut t = JobTable::default();
        let id = t.create(1, "x.service".into(), "stop").unwrap();
        assert!(!t.set_state(id, 0, "running"));
        assert!(t.set_state(id, 1, "running"));
        assert_eq!(t.get(id).map(Job::state), Some("running"));
        assert!(t.is_on(id, 1) && !t.is_on(id, 0));
        assert_eq!(t.of_node(1), vec![id]);
        let mut out = Outbox::default();
        t.discard(id, &mut out);
        assert_eq!(out.take().0, vec![ObjectOp::RemoveJob(id)]);
    }

    #[test]
    fn a_finished_job_is_announced_and_its_object_removed() {
        let mut t = JobTable::default();
        let id = t.create(0, "x.service".into(), "start").unwrap();
        t.accept(id);
        let job = t.finish(id, "done").unwrap();
        let mut out = Outbox::default();
        announce_finished(&job, "n1", "done", true, &mut out);
        let (ops, msgs) = out.take();
        assert_eq!(ops, vec![ObjectOp::RemoveJob(id)]);
        let members: Vec<String> = msgs
            .iter()
            .filter_map(|m| m.member().map(|s| s.to_string()))
            .collect();
        assert_eq!(members, vec!["JobRemoved", "StartUnitJobMetrics"]);
    }
}
