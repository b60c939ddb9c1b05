//! What a Slurm job uses on this node against what it holds, over the saturation window:
//! shared by the CPU and GPU signals, each of which measures its own resource.
use hashbrown::HashMap;
use minerwatch_detect::{
    Finding, Resource,
    saturation::{Policy, Tracker},
};

use super::Found;

/// A job is over its allocation when it uses this much more than it holds (a job that fills
/// its CPUs exactly, with the sampling's noise, is not).
const OVER_BY: f64 = 0.5;

/// Per job: a window over its use of one resource.
#[derive(Debug, Default)]
pub struct JobUse {
    jobs: HashMap<u64, Tracker>,
}

/// One tick's use by one job: how much, and its busiest process (raised on).
#[derive(Debug, Clone, Copy)]
pub struct Used {
    pub amount: f64,
    pub top: u32,
}

impl JobUse {
    /// Judges every job that used `resource` this tick or is being watched, against what
    /// `allocated` says it holds here (jobs Slurm has not answered for are not judged).
    #[expect(
        clippy::too_many_arguments,
        reason = "one call per signal; all are inputs of the judgement"
    )]
    pub fn judge(
        &mut self,
        resource: Resource,
        window_ns: u64,
        now_ns: u64,
        dt_ns: u64,
        used: &HashMap<u64, Used>,
        allocated: impl Fn(u64) -> Option<u32>,
        out: &mut Vec<Found>,
    ) {
        let jobs: std::collections::BTreeSet<u64> =
            used.keys().chain(self.jobs.keys()).copied().collect();
        for job in jobs {
            let Some(held) = allocated(job) else {
                self.jobs.remove(&job);
                continue;
            };
            let u = used.get(&job).copied().unwrap_or(Used {
                amount: 0.0,
                top: 0,
            });
            let policy = Policy {
                window_ns,
                threshold: f64::from(held) + OVER_BY,
            };
            let tracker = self.jobs.entry(job).or_default();
            if let Some(s) = tracker.push(policy, now_ns, dt_ns, u.amount)
                && u.top != 0
            {
                out.push(Found {
                    tgid: u.top,
                    finding: Finding::OverAllocation {
                        job,
                        resource,
                        used: s.share,
                        allocated: held,
                        secs: s.secs,
                    },
                    peer: None,
                });
            }
        }
        self.jobs.retain(|_, t| !t.idle());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn run(held: Option<u32>, amount: f64, ticks: u64) -> Vec<Found> {
        let mut j = JobUse::default();
        let mut out = Vec::new();
        for i in 1..=ticks {
            let used = HashMap::from([(7, Used { amount, top: 42 })]);
            j.judge(Resource::Cpus, 3 * S, i * S, S, &used, |_| held, &mut out);
        }
        out
    }

    #[test]
    fn over_by_more_than_half_for_the_window_is_found_on_the_busiest_process() {
        let found = run(Some(1), 2.0, 4);
        assert!(!found.is_empty());
        assert!(found.iter().all(|f| f.tgid == 42));
        assert!(matches!(
            found[0].finding,
            Finding::OverAllocation {
                job: 7,
                allocated: 1,
                resource: Resource::Cpus,
                ..
            }
        ));
        assert!(run(Some(1), 1.4, 10).is_empty(), "within half a CPU");
        assert!(run(Some(1), 2.0, 2).is_empty(), "not for the whole window");
        assert!(
            run(None, 8.0, 10).is_empty(),
            "no answer from Slurm: not judged"
        );
    }
}
