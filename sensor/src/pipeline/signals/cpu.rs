//! Sustained CPU saturation, from the per-CPU sample counts, with the instructions per cycle
//! when the hardware counters are there.
use std::time::Duration;

use hashbrown::HashMap;

use minerwatch_detect::{
    Finding, Resource,
    saturation::{Policy, Tracker},
};

use super::{
    Found, Signal, Tick,
    allocation::{JobUse, Used},
};
use crate::{config::Config, pipeline::process::Table};

/// One process's CPU history.
#[derive(Debug, Default)]
struct Cpu {
    /// Sample total at the last tick.
    prev: u64,
    tracker: Tracker,
    tracking: bool,
    /// Hardware sample totals at the last tick (cycles, instructions), and the IPC since.
    hw_prev: (u64, u64),
    ipc: Option<f64>,
}

struct Saturation {
    hz: f64,
    policy: Policy,
    /// Each Slurm job's summed share on this node, against the CPUs it holds.
    jobs: JobUse,
}

pub fn new(cfg: &Config) -> Box<dyn Signal> {
    Box::new(Saturation {
        hz: cfg.cpu_sample_hz as f64,
        policy: Policy {
            window_ns: cfg.saturation_window.as_nanos() as u64,
            threshold: cfg.saturation_threshold,
        },
        jobs: JobUse::default(),
    })
}

impl Signal for Saturation {
    fn name(&self) -> &'static str {
        "cpu_saturation"
    }

    fn on_tick(&mut self, tick: &Tick<'_>, table: &mut Table, out: &mut Vec<Found>) {
        let dt_ns = tick.dt.as_nanos() as u64;
        let secs = tick.dt.max(Duration::from_millis(1)).as_secs_f64();
        let slurm_node = crate::enrich::slurm::slurm_node();
        // Per job on this node: its summed share, and its busiest process and that one's.
        let mut by_job: HashMap<u64, (Used, f64)> = HashMap::new();
        for (&tgid, &total) in &tick.cpu.samples {
            let t = table.load(tgid);
            let in_job = t.info.job.is_some() || t.info.sluid.is_some();
            let job = t.info.job;
            let st = t.state::<Cpu>();
            if let Some((cyc, ins)) = &tick.cpu.hw {
                let c = cyc.get(&tgid).copied().unwrap_or(0);
                let i = ins.get(&tgid).copied().unwrap_or(0);
                let (pc, pi) = std::mem::replace(&mut st.hw_prev, (c, i));
                // Both counters sample with one period, so the ratio of counts is the IPC.
                if c > pc {
                    st.ipc = Some(i.saturating_sub(pi) as f64 / (c - pc) as f64);
                }
            }
            let share = total.saturating_sub(std::mem::replace(&mut st.prev, total)) as f64
                / (self.hz * secs);
            if let Some(job) = job {
                let (u, best) = by_job.entry(job).or_insert((
                    Used {
                        amount: 0.0,
                        top: tgid,
                    },
                    0.0,
                ));
                u.amount += share;
                if share > *best {
                    (u.top, *best) = (tgid, share);
                }
            }
            if share > 0.0 || st.tracking {
                st.tracking = true;
                if let Some(s) = st.tracker.push(self.policy, tick.now_ns, dt_ns, share) {
                    out.push(Found {
                        tgid,
                        finding: Finding::CpuSaturation {
                            share: s.share,
                            secs: s.secs,
                            in_job,
                            slurm_node,
                            ipc: st.ipc,
                        },
                        peer: None,
                    });
                    if slurm_node && !in_job {
                        out.push(Found {
                            tgid,
                            finding: Finding::OutsideAllocation {
                                share: s.share,
                                secs: s.secs,
                            },
                            peer: None,
                        });
                    }
                }
                if st.tracker.idle() {
                    st.tracking = false;
                }
            }
        }
        let used: HashMap<u64, Used> = by_job.into_iter().map(|(j, (u, _))| (j, u)).collect();
        self.jobs.judge(
            Resource::Cpus,
            self.policy.window_ns,
            tick.now_ns,
            dt_ns,
            &used,
            |j| tick.allocated.get(&j).map(|a| a.0),
            out,
        );
        // Tracked processes that were not sampled at all this time were idle.
        for t in table.iter_mut() {
            if tick.cpu.samples.contains_key(&t.key.tgid) {
                continue;
            }
            let policy = self.policy;
            if let Some(st) = t.peek_mut::<Cpu>()
                && st.tracking
            {
                st.tracker.push(policy, tick.now_ns, dt_ns, 0.0);
                st.tracking = !st.tracker.idle();
            }
        }
    }
}
