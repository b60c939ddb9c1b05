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

#[derive(Debug)]
struct JobCase {
    revision: u32,
    severity: Severity,
    score: u32,
    /// By (code, pid): the latest detail of each process's reason.
    reasons: BTreeMap<(&'static str, u32), Reason>,
    first_seen_at: SystemTime,
    order: u64,
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
        });
        case.order = order;
        let pid = rec.process.pid;
        let new_kind = rec
            .reasons
            .iter()
            .any(|r| !case.reasons.keys().any(|(code, _)| *code == r.code));
        let rose = rec.severity > case.severity;
        for r in &rec.reasons {
            case.reasons.insert(
                (r.code, pid),
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
        let id = match (&job.id, &job.sluid) {
            (Some(id), _) => format!("job-{id}"),
            (None, Some(s)) => format!("job-{s}"),
            (None, None) => "job-unknown".into(),
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
            ..rec.clone()
        })
    }
}
