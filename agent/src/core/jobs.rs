//! Jobs the agent started in systemd and waits for: the manager's jobs (answered with
//! `JobDone`), `Exec` commands and `StartDep` anchors (answered when their job ends).

use super::exec::PendingExec;
use super::Core;
use crate::systemd::{self, bad_args, CallError, Systemd};
use dbus::arg::messageitem::MessageItem;
use dbus::Message;
use hirte_common::bounds::{MAX_AGENT_JOBS, MAX_FRAME_SIZE};
use hirte_common::protocol::error_reply;
use hirte_common::protocol::{self, error};
use hirte_common::queue::PushError;
use hirte_common::{log_debug, log_error, log_fields};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub enum JobKind {
    /// A job the manager created; reported back as `JobDone(id, result)`.
    Manager {
        id: u32,
        method: String,
        started: Instant,
    },
    /// A command run for `Exec`; answered when it ends.
    Exec(PendingExec),
    /// A `hirte-dep@` anchor started for `StartDep`; the call is answered when it ends.
    Dep { call: Message, unit: String },
}

pub struct AgentJob {
    pub unit: String,
    pub kind: JobKind,
    /// The manager session the job belongs to.
    pub session: u64,
    /// The job state last reported (`waiting`/`running`).
    state: Option<String>,
}

/// Jobs in flight, bounded by `MAX_AGENT_JOBS`. Keyed by (systemd job path, sequence):
/// systemd merges a second request for a unit whose job is still queued into the same job,
/// so one path can serve several manager jobs, and each of them must get its `JobDone`.
#[derive(Default)]
pub struct JobTable {
    jobs: BTreeMap<(String, u64), AgentJob>,
    seq: u64,
}

impl JobTable {
    pub fn check_room(&self, node: &str) -> Result<(), CallError> {
        if self.jobs.len() >= MAX_AGENT_JOBS {
            return Err(CallError::Busy(format!(
                "{MAX_AGENT_JOBS} jobs in flight on node '{node}'"
            )));
        }
        Ok(())
    }

    pub fn record(&mut self, path: String, unit: &str, kind: JobKind, session: u64) {
        self.seq += 1;
        let job = AgentJob {
            unit: unit.to_string(),
            kind,
            session,
            state: None,
        };
        self.jobs.insert((path, self.seq), job);
    }

    fn range_of<'a>(
        &'a mut self,
        path: &str,
    ) -> impl Iterator<Item = (&'a (String, u64), &'a mut AgentJob)> + 'a {
        let p = path.to_string();
        self.jobs.range_mut((p.clone(), 0)..=(p, u64::MAX))
    }

    /// Whether any job waits under this systemd job path.
    pub fn has_path(&self, path: &str) -> bool {
        let p = path.to_string();
        self.jobs
            .range((p.clone(), 0)..=(p, u64::MAX))
            .next()
            .is_some()
    }

    /// Removes and returns the jobs recorded under one systemd job path.
    pub fn take_path(&mut self, path: &str) -> Vec<AgentJob> {
        let keys: Vec<(String, u64)> = self.range_of(path).map(|(k, _)| k.clone()).collect();
        keys.iter().filter_map(|k| self.jobs.remove(k)).collect()
    }

    /// Records a job path's new state; returns the manager jobs for which it is news.
    /// systemd re-announces a job's properties whenever a request is merged into it; only a
    /// real state change is passed on, once per manager job.
    pub fn set_state(&mut self, path: &str, state: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for (_, j) in self.range_of(path) {
            if let JobKind::Manager { id, .. } = j.kind {
                if j.state.as_deref() != Some(state) {
                    j.state = Some(state.to_string());
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// The systemd job path of the manager's job `id`.
    pub fn path_of(&self, id: u32) -> Option<String> {
        self.jobs
            .iter()
            .find(|(_, j)| matches!(j.kind, JobKind::Manager { id: jid, .. } if jid == id))
            .map(|((p, _), _)| p.clone())
    }

    pub fn exec_count(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| matches!(j.kind, JobKind::Exec(_)))
            .count()
    }

    /// The earliest deadline of a running command.
    pub fn next_exec_deadline(&self) -> Option<Instant> {
        self.jobs
            .values()
            .filter_map(|j| match &j.kind {
                JobKind::Exec(p) => Some(p.deadline),
                _ => None,
            })
            .min()
    }

    /// Removes and returns the commands past their deadline.
    pub fn take_expired_execs(&mut self, now: Instant) -> Vec<PendingExec> {
        let keys: Vec<(String, u64)> = self
            .jobs
            .iter()
            .filter(|(_, j)| matches!(&j.kind, JobKind::Exec(p) if p.deadline <= now))
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter()
            .filter_map(|k| match self.jobs.remove(k)?.kind {
                JobKind::Exec(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    pub fn take_all(&mut self) -> Vec<AgentJob> {
        std::mem::take(&mut self.jobs).into_values().collect()
    }
}

/// The operation as the audit trail words it (`start`, `stop`, ...), so the guide's
/// `grep -E "start|stop|restart"` finds every job line.
fn job_verb(member: &str) -> &'static str {
    match member {
        "StartUnit" | "StartTransientUnit" => "start",
        "StopUnit" => "stop",
        "RestartUnit" => "restart",
        "ReloadUnit" => "reload",
        _ => "job",
    }
}

impl<S: Systemd> Core<S> {
    pub(crate) fn record_job(&mut self, path: String, unit: &str, kind: JobKind) {
        let session = self.session.load(Ordering::SeqCst);
        self.jobs.record(path, unit, kind, session);
    }

    fn record_manager_job(&mut self, path: String, unit: &str, id: u32, member: &str) {
        let kind = JobKind::Manager {
            id,
            method: member.to_string(),
            started: Instant::now(),
        };
        self.record_job(path, unit, kind);
    }

    /// `StartUnit`/`StopUnit`/`RestartUnit`/`ReloadUnit(unit, mode, id)`.
    pub(crate) fn start_job(&mut self, member: &str, msg: &Message) -> Result<(), CallError> {
        let (unit, mode, id) = msg.read3::<&str, &str, u32>().map_err(bad_args)?;
        self.jobs.check_room(&self.node)?;
        let call = systemd::manager_call(member)?.append2(unit, mode);
        let path = self.sd.job_call(call)?;
        log_fields!(
            Info,
            [("UNIT", unit), ("JOB", id.to_string().as_str())],
            "{} {unit} ({mode}) as job {id}",
            job_verb(member)
        );
        self.record_manager_job(path, unit, id, member);
        Ok(())
    }

    /// `StartTransientUnit(name, mode, properties, aux, id)`: systemd's call plus our job id.
    pub(crate) fn start_transient(&mut self, msg: &Message) -> Result<(), CallError> {
        self.jobs.check_room(&self.node)?;
        let mut items = msg.get_items();
        let id = match items.pop() {
            Some(MessageItem::UInt32(id)) => id,
            _ => return Err(bad_args("missing job id")),
        };
        let unit = match items.first() {
            Some(MessageItem::Str(u)) => u.clone(),
            _ => return Err(bad_args("missing unit name")),
        };
        let mut call = systemd::manager_call("StartTransientUnit")?;
        call.append_items(&items);
        let path = self.sd.job_call(call)?;
        log_fields!(
            Info,
            [("UNIT", unit.as_str())],
            "Transient unit {unit} as job {id}"
        );
        self.record_manager_job(path, &unit, id, "StartTransientUnit");
        Ok(())
    }

    /// `JobCancel(id)`.
    pub(crate) fn cancel_job(&mut self, msg: &Message) -> Result<(), CallError> {
        let id: u32 = msg.read1().map_err(bad_args)?;
        let path = self
            .jobs
            .path_of(id)
            .ok_or_else(|| bad_args(format!("no job {id} on this node")))?;
        let call = Message::new_method_call(systemd::DEST, path, systemd::JOB_IFACE, "Cancel")
            .map_err(bad_args)?;
        self.sd.call(call)?;
        Ok(())
    }

    // [impl->req~agent.job-done~1]
    pub(crate) fn on_job_removed(&mut self, msg: &Message) {
        let Ok((_, job_path, _unit, result)) = msg.read4::<u32, dbus::Path, &str, &str>() else {
            return;
        };
        for job in self.jobs.take_path(&job_path) {
            self.job_ended(job, result);
        }
    }

    /// A job's `State` changed: `JobStateChanged(id, state)` for each manager job it serves.
    pub(crate) fn on_job_state(&mut self, path: &str, state: &str) {
        for id in self.jobs.set_state(path, state) {
            if let Some(sig) = super::watch::agent_signal("JobStateChanged") {
                self.send(sig.append2(id, state));
            }
        }
    }

    fn job_ended(&mut self, job: AgentJob, result: &str) {
        match job.kind {
            JobKind::Manager {
                id,
                ref method,
                started,
            } => {
                log_fields!(
                    Info,
                    [
                        ("UNIT", job.unit.as_str()),
                        ("JOB", id.to_string().as_str())
                    ],
                    "Job {id} ({} {}) done: {result}",
                    job_verb(method),
                    job.unit
                );
                // [impl->req~manager.metrics~1]
                if self.metrics {
                    // Sent before JobDone so the manager has it when it ends the job.
                    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let prop = self.start_propagation_us(&job.unit);
                    if let Some(sig) = super::watch::agent_signal("JobMetrics") {
                        self.send(
                            sig.append3(id, job.unit.as_str(), method.as_str())
                                .append2(micros, prop),
                        );
                    }
                }
                self.send_job_done(job.session, id, result);
            }
            JobKind::Exec(p) => self.finish_exec(p, result),
            JobKind::Dep { call, unit } => self.dep_ended(&call, &unit, result),
        }
    }

    /// How long the unit took from leaving `inactive` to becoming `active` (0 if unknown).
    fn start_propagation_us(&self, unit: &str) -> u64 {
        let Ok(path) = self.sd.unit_path(unit) else {
            return 0;
        };
        let get = |p: &str| self.sd.property::<u64>(&path, systemd::UNIT_IFACE, p);
        match (
            get("InactiveExitTimestampMonotonic"),
            get("ActiveEnterTimestampMonotonic"),
        ) {
            (Some(exit), Some(enter)) if enter >= exit => enter - exit,
            _ => 0,
        }
    }

    /// systemd (or the node's bus) went away: its jobs are lost, say so instead of waiting.
    // [impl->req~agent.systemd-reconnect~1]
    pub fn bus_lost(&mut self) {
        for job in self.jobs.take_all() {
            match job.kind {
                JobKind::Manager { id, .. } => {
                    self.send_job_done(job.session, id, protocol::JOB_RESULT_CANCELLED);
                }
                JobKind::Exec(PendingExec { call, .. }) | JobKind::Dep { call, .. } => {
                    let r = error_reply(&call, error::ACTIVATION_FAILED, "systemd went away");
                    if let Some(r) = r {
                        self.send(r);
                    }
                }
            }
        }
        // Subscriptions belong to the manager's monitors: they are kept for the new bus.
    }

    /// A job's result: never dropped while the link lives; retried when the queue is full.
    // [impl->req~agent.job-done~1]
    fn send_job_done(&mut self, session: u64, id: u32, result: &str) {
        if session != self.session.load(Ordering::SeqCst) {
            log_debug!("Job {id} belonged to an earlier manager session; result not sent");
            return;
        }
        let Some(mut msg) = super::watch::agent_signal("JobDone").map(|m| m.append2(id, result))
        else {
            return;
        };
        let Ok(bytes) = self.serials.encode(&mut msg, MAX_FRAME_SIZE) else {
            return;
        };
        if !self.retry.is_empty() || self.outbound.try_push(bytes.clone()).is_err() {
            if self.retry.len() < MAX_AGENT_JOBS {
                self.retry.push_back(bytes);
            } else {
                log_error!("Result of job {id} lost: {MAX_AGENT_JOBS} results already waiting");
            }
        }
    }

    pub(crate) fn flush_retry(&mut self) {
        while let Some(bytes) = self.retry.pop_front() {
            if let Err(PushError::Full(b) | PushError::Closed(b)) = self.outbound.try_push(bytes) {
                self.retry.push_front(b);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{error_name, job_removed, member, properties_changed, Harness};
    use hirte_common::protocol::error;

    fn start(h: &mut Harness, unit: &str, id: u32) -> Message {
        let m = h.manager_call("StartUnit").append3(unit, "replace", id);
        h.deliver(m);
        h.to_manager().pop().unwrap()
    }

    #[test]
    fn a_started_job_is_answered_and_its_end_reported() {
        let mut h = Harness::new();
        let reply = start(&mut h, "a.service", 7);
        assert_eq!(error_name(&reply), None);
        let call = h.sd().calls.borrow().last().unwrap().duplicate().unwrap();
        assert_eq!(member(&call), "StartUnit");
        assert_eq!(
            call.read2::<&str, &str>().unwrap(),
            ("a.service", "replace")
        );
        let job = h.sd().last_job_path();
        h.core
            .on_bus_message(job_removed(&job, "a.service", "done"));
        let done = h.to_manager();
        assert_eq!(done.len(), 1);
        assert_eq!(member(&done[0]), "JobDone");
        assert_eq!(done[0].read2::<u32, &str>().unwrap(), (7, "done"));
        // Ended jobs are forgotten: a second JobRemoved reports nothing.
        h.core
            .on_bus_message(job_removed(&job, "a.service", "done"));
        assert!(h.to_manager().is_empty());
    }

    #[test]
    fn merged_jobs_each_get_their_result_and_state_once() {
        let mut h = Harness::new();
        let path = "/org/freedesktop/systemd1/job/42";
        h.sd().answer("StartUnit", move |m| {
            Ok(m.method_return().append1(dbus::Path::from(path)))
        });
        start(&mut h, "a.service", 1);
        start(&mut h, "a.service", 2);
        let running = properties_changed(path, systemd::JOB_IFACE, &[("State", "running")]);
        h.core.on_bus_message(running);
        let states = h.to_manager();
        assert_eq!(states.len(), 2);
        assert!(states.iter().all(|m| member(m) == "JobStateChanged"));
        // systemd re-announces on merges: the same state is not news.
        h.core.on_bus_message(properties_changed(
            path,
            systemd::JOB_IFACE,
            &[("State", "running")],
        ));
        assert!(h.to_manager().is_empty());
        h.core
            .on_bus_message(job_removed(path, "a.service", "failed"));
        let mut ids: Vec<u32> = h.to_manager().iter().map(|m| m.read1().unwrap()).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn bad_arguments_are_invalid_args() {
        let mut h = Harness::new();
        let m = h.manager_call("StartUnit").append1("a.service");
        h.deliver(m);
        let r = h.to_manager().pop().unwrap();
        assert_eq!(error_name(&r).as_deref(), Some(error::INVALID_ARGS));
        assert_eq!(r.read1::<&str>().unwrap(), "StartUnit takes (ssu), got (s)");
        let m = h.manager_call("JobCancel").append1(99u32);
        h.deliver(m);
        let r = h.to_manager().pop().unwrap();
        assert_eq!(error_name(&r).as_deref(), Some(error::INVALID_ARGS));
        assert!(h.sd().members().iter().all(|m| m != "Cancel"));
    }

    #[test]
    fn cancel_goes_to_the_jobs_object() {
        let mut h = Harness::new();
        start(&mut h, "a.service", 3);
        let m = h.manager_call("JobCancel").append1(3u32);
        h.deliver(m);
        assert_eq!(error_name(&h.to_manager().pop().unwrap()), None);
        let calls = h.sd().calls.borrow();
        let cancel = calls.last().unwrap();
        assert_eq!(member(cancel), "Cancel");
        assert_eq!(cancel.path().unwrap().to_string(), h.sd().last_job_path());
    }

    // [utest->req~bounds.jobs~1]
    #[test]
    fn jobs_are_bounded() {
        let mut h = Harness::new();
        for i in 0..MAX_AGENT_JOBS {
            let id = u32::try_from(i).unwrap();
            assert_eq!(error_name(&start(&mut h, "a.service", id)), None);
        }
        let r = start(&mut h, "a.service", 9999);
        assert_eq!(error_name(&r).as_deref(), Some(error::BUSY));
    }

    #[test]
    fn transient_units_lose_the_job_id_on_the_way_to_systemd() {
        let mut h = Harness::new();
        let props: crate::core::exec::Props = Vec::new();
        let aux: Vec<(String, crate::core::exec::Props)> = Vec::new();
        let m = h
            .manager_call("StartTransientUnit")
            .append3("t.service", "fail", props)
            .append2(aux, 5u32);
        h.deliver(m);
        assert_eq!(error_name(&h.to_manager().pop().unwrap()), None);
        let calls = h.sd().calls.borrow();
        let call = calls.last().unwrap();
        assert_eq!(
            hirte_common::protocol::signature_of(call),
            "ssa(sv)a(sa(sv))"
        );
        drop(calls);
        let job = h.sd().last_job_path();
        h.core
            .on_bus_message(job_removed(&job, "t.service", "done"));
        assert_eq!(h.to_manager()[0].read2::<u32, &str>().unwrap(), (5, "done"));
    }

    // H-A6: fails with the session check in send_job_done removed.
    // [utest->req~agent.job-done~1]
    #[test]
    fn results_of_an_earlier_session_are_not_sent() {
        let mut h = Harness::new();
        start(&mut h, "a.service", 1);
        h.session.fetch_add(1, Ordering::SeqCst);
        let job = h.sd().last_job_path();
        h.core
            .on_bus_message(job_removed(&job, "a.service", "done"));
        assert!(h.to_manager().is_empty());
    }

    #[test]
    fn losing_systemd_cancels_the_jobs() {
        let mut h = Harness::new();
        start(&mut h, "a.service", 4);
        h.core.bus_lost();
        let done = h.to_manager();
        assert_eq!(done[0].read2::<u32, &str>().unwrap(), (4, "cancelled"));
    }

    #[test]
    fn metrics_come_before_the_result() {
        let mut h = Harness::new();
        let m = h.manager_call("EnableMetrics");
        h.deliver(m);
        h.to_manager();
        h.sd().property("InactiveExitTimestampMonotonic", 1_000u64);
        h.sd().property("ActiveEnterTimestampMonotonic", 1_500u64);
        start(&mut h, "a.service", 8);
        let job = h.sd().last_job_path();
        h.core
            .on_bus_message(job_removed(&job, "a.service", "done"));
        let out = h.to_manager();
        assert_eq!(
            out.iter().map(member).collect::<Vec<_>>(),
            ["JobMetrics", "JobDone"]
        );
        let (id, unit, method, _, prop) = out[0].read5::<u32, &str, &str, u64, u64>().unwrap();
        assert_eq!((id, unit, method, prop), (8, "a.service", "StartUnit", 500));
    }

    #[test]
    fn job_verbs_match_the_audit_grep() {
        assert_eq!(job_verb("StartTransientUnit"), "start");
        assert_eq!(job_verb("RestartUnit"), "restart");
        assert_eq!(job_verb("Other"), "job");
    }
}
