//! One alert per Slurm job beside its processes' own: what every process of the job was
//! found doing, under the job's id, user, account and partition, so an admin sees the job
//! the way the scheduler shows it. Raised again when the job's severity rises or a reason of
//! a new kind appears, as process alerts are.
use std::{collections::BTreeMap, time::SystemTime};

use hashbrown::HashMap;
use minerwatch_detect::{Reason, Severity};

use super::{AlertRecord, Scope};
use crate::enrich::slurm::JobRef;

/// Jobs kept; past this the oldest half is forgotten (a node runs a few jobs at a time).
const KEPT: usize = 1024;

/// Reasons a job alert carries; past this, further processes' reasons are counted, not
/// listed (a job of thousands of alerting processes stays one readable alert).
const REASONS_KEPT: usize = 64;

#[derive(Debug)]
struct JobCase {
    revision: u32,
    severity: Severity,
    score: u32,
    /// By (code, pid): the latest detail of each process's reason.
    reasons: BTreeMap<(&'static str, u32), Reason>,
    first_seen_at: SystemTime,
    order: u64,
    /// The allowance every process alert gathered so far met; `None` once one met none.
    allowed: Option<Option<String>>,
    /// Reasons not listed (past [`REASONS_KEPT`]).
    omitted: u64,
}

#[derive(Debug, Default)]
pub struct JobAlerts {
    jobs: HashMap<JobRef, JobCase>,
    next: u64,
}

impl JobAlerts {
    /// The job alert `rec` (a process alert) makes, if it adds to what the job showed.
    pub fn on_alert(&mut self, job: JobRef, rec: &AlertRecord) -> Option<AlertRecord> {
        if rec.severity < Severity::Low {
            return None;
        }
        if self.jobs.len() >= KEPT && !self.jobs.contains_key(&job) {
            let mut orders: Vec<u64> = self.jobs.values().map(|c| c.order).collect();
            orders.sort_unstable();
            let cut = orders[orders.len() / 2];
            self.jobs.retain(|_, c| c.order >= cut);
        }
        self.next += 1;
        let order = self.next;
        let case = self.jobs.entry(job.clone()).or_insert_with(|| JobCase {
            revision: 0,
            severity: Severity::Info,
            score: 0,
            reasons: BTreeMap::new(),
            first_seen_at: rec.first_seen_at,
            order,
            allowed: None,
            omitted: 0,
        });
        // A job is allowed only while every alert in it was.
        case.allowed = Some(match &case.allowed {
            None => rec.allowed.clone(),
            Some(a) => a.clone().filter(|_| rec.allowed.is_some()),
        });
        case.order = order;
        let pid = rec.process.pid;
        let new_kind = rec
            .reasons
            .iter()
            .any(|r| !case.reasons.keys().any(|(code, _)| *code == r.code));
        let rose = rec.severity > case.severity;
        for r in &rec.reasons {
            let key = (r.code, pid);
            if case.reasons.len() >= REASONS_KEPT && !case.reasons.contains_key(&key) {
                case.omitted += 1;
                continue;
            }
            case.reasons.insert(
                key,
                Reason {
                    detail: format!("pid {pid} ({}): {}", rec.process.comm, r.detail),
                    ..r.clone()
                },
            );
        }
        case.severity = case.severity.max(rec.severity);
        case.score = case.score.max(rec.score);
        if !(rose || new_kind) {
            return None;
        }
        let mut reasons: Vec<Reason> = case.reasons.values().cloned().collect();
        reasons.sort_by_key(|r| std::cmp::Reverse(r.weight));
        if case.omitted > 0
            && let Some(last) = reasons.last_mut()
        {
            last.detail += &format!(" (and {} more findings of other processes)", case.omitted);
        }
        // Unique across restarts and Slurm's reuse of ids: the job and when it was first
        // seen alerting here.
        let since = case
            .first_seen_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let id = match (&job.id, &job.sluid) {
            (Some(id), _) => format!("job-{id}-{since}"),
            (None, Some(s)) => format!("job-{s}-{since}"),
            (None, None) => format!("job-unknown-{since}"),
        };
        let update = case.revision;
        case.revision += 1;
        Some(AlertRecord {
            id,
            update,
            severity: case.severity,
            score: case.score,
            reasons,
            scope: Scope::Job,
            first_seen_at: case.first_seen_at,
            allowed: case.allowed.clone().flatten(),
            ..rec.clone()
        })
    }
}

/// A job's start waits this long for Slurm's answer, then goes without it.
const START_WAIT_NS: u64 = 2_000_000_000;

#[derive(Debug)]
struct Live {
    first_seen_ns: u64,
    started_sent: bool,
    /// Distinct pids seen in the job (counted up to [`PIDS_KEPT`]).
    pids: hashbrown::HashSet<u32>,
    processes: u32,
}

const PIDS_KEPT: usize = 4096;

/// The jobs that have processes on this node, for their start and end events.
#[derive(Debug, Default)]
pub struct JobLife {
    live: HashMap<JobRef, Live>,
}

/// What a job did, for [`crate::api::convert::job`].
#[derive(Debug)]
pub struct JobChange {
    pub job: JobRef,
    pub started: bool,
    pub processes: u32,
}

impl JobLife {
    /// A process of `job` exec'd: the job is here, however briefly.
    pub fn seen(&mut self, job: JobRef, pid: u32, now_ns: u64) {
        let l = self.live.entry(job).or_insert(Live {
            first_seen_ns: now_ns,
            started_sent: false,
            pids: hashbrown::HashSet::new(),
            processes: 0,
        });
        if l.pids.len() < PIDS_KEPT {
            l.pids.insert(pid);
        }
        l.processes = l.processes.max(l.pids.len() as u32);
    }

    /// Given the jobs the table's processes are in now (with how many each), the starts and
    /// ends to tell. `answered` says whether Slurm has answered for a job. A job whose
    /// processes came and went between two ticks is told as started and ended.
    pub fn tick(
        &mut self,
        now_ns: u64,
        present: HashMap<JobRef, u32>,
        mut answered: impl FnMut(&JobRef) -> bool,
    ) -> Vec<JobChange> {
        let mut out = Vec::new();
        for (job, n) in &present {
            let l = self.live.entry(job.clone()).or_insert(Live {
                first_seen_ns: now_ns,
                started_sent: false,
                pids: hashbrown::HashSet::new(),
                processes: 0,
            });
            l.processes = l.processes.max(*n);
        }
        self.live.retain(|job, l| {
            let here = present.contains_key(job);
            if !l.started_sent
                && (!here
                    || answered(job)
                    || now_ns.saturating_sub(l.first_seen_ns) >= START_WAIT_NS)
            {
                l.started_sent = true;
                out.push(JobChange {
                    job: job.clone(),
                    started: true,
                    processes: l.processes,
                });
            }
            if !here {
                out.push(JobChange {
                    job: job.clone(),
                    started: false,
                    processes: l.processes,
                });
            }
            here
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u64) -> JobRef {
        JobRef {
            id: Some(n),
            sluid: None,
        }
    }

    fn told(c: &[JobChange]) -> Vec<(u64, bool)> {
        c.iter().map(|c| (c.job.id.unwrap(), c.started)).collect()
    }

    #[test]
    fn a_job_starts_when_slurm_answers_or_after_two_seconds_and_ends_with_its_last_process() {
        let mut l = JobLife::default();
        let s = 1_000_000_000;
        l.seen(job(1), 10, s);
        l.seen(job(1), 10, s);
        l.seen(job(1), 11, s);
        let here = |n| HashMap::from([(job(n), 2)]);
        assert!(l.tick(s, here(1), |_| false).is_empty(), "waits for Slurm");
        let c = l.tick(3 * s + 1, here(1), |_| false);
        assert_eq!(told(&c), [(1, true)], "told without Slurm after 2 s");
        assert_eq!(c[0].processes, 2, "distinct pids");
        assert!(l.tick(4 * s, here(1), |_| true).is_empty(), "told once");
        assert_eq!(told(&l.tick(5 * s, HashMap::new(), |_| true)), [(1, false)]);
        assert!(l.tick(6 * s, HashMap::new(), |_| true).is_empty());
    }

    #[test]
    fn a_job_that_came_and_went_between_ticks_is_told_both_ways() {
        let mut l = JobLife::default();
        l.seen(job(7), 10, 5);
        assert_eq!(
            told(&l.tick(10, HashMap::new(), |_| false)),
            [(7, true), (7, false)]
        );
    }
}
