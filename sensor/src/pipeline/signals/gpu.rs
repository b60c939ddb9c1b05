//! Sustained GPU use by one process, from NVML's per-process SM utilisation, with the same
//! window as CPU saturation: "GPU 0 at 98 % for 10 min by pid N outside any job". GPU
//! miners (Ethash, KawPow, Autolykos) keep a GPU's SMs busy the way training jobs do, so it
//! is weak evidence by itself, and the job's allocation decides how it weighs.
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

/// One process's use of each GPU it ran on.
#[derive(Debug, Default)]
struct GpuUse {
    by_gpu: HashMap<u32, (Tracker, u64)>,
}

struct GpuSaturation {
    policy: Policy,
    /// Per Slurm job: GPUs its processes keep busy on this node, against what it holds.
    jobs: JobUse,
}

/// A GPU counts as used by a job when one of its processes has at least this share of it.
const USED: f64 = 0.1;

pub fn new(cfg: &Config) -> Box<dyn Signal> {
    Box::new(GpuSaturation {
        policy: Policy {
            window_ns: cfg.saturation_window.as_nanos() as u64,
            threshold: cfg.saturation_threshold,
        },
        jobs: JobUse::default(),
    })
}

impl Signal for GpuSaturation {
    fn name(&self) -> &'static str {
        "gpu_saturation"
    }

    fn on_tick(&mut self, tick: &Tick<'_>, table: &mut Table, out: &mut Vec<Found>) {
        let dt_ns = tick.dt.as_nanos() as u64;
        let mut seen: Vec<(u32, u32)> = Vec::new();
        // Per job: the GPUs its processes use, and the busiest process.
        let mut by_job: HashMap<u64, (Vec<u32>, u32, f64)> = HashMap::new();
        for g in tick.gpu {
            // A MIG GPU gives no per-process share: nothing to judge.
            let Some(share) = g.share else { continue };
            let Some(t) = table.get_mut(g.pid) else {
                continue;
            };
            seen.push((g.pid, g.gpu));
            let in_job = t.info.job.is_some() || t.info.sluid.is_some();
            if let Some(job) = t.info.job
                && share >= USED
            {
                let e = by_job.entry(job).or_insert((Vec::new(), g.pid, 0.0));
                if !e.0.contains(&g.gpu) {
                    e.0.push(g.gpu);
                }
                if share > e.2 {
                    (e.1, e.2) = (g.pid, share);
                }
            }
            let st = t.state::<GpuUse>();
            let (tracker, mem) = st.by_gpu.entry(g.gpu).or_default();
            *mem = g.memory_bytes;
            if let Some(s) = tracker.push(self.policy, tick.now_ns, dt_ns, share) {
                out.push(Found {
                    tgid: g.pid,
                    finding: Finding::GpuSaturation {
                        gpu: g.gpu,
                        share: s.share,
                        secs: s.secs,
                        in_job,
                        memory_bytes: *mem,
                    },
                    peer: None,
                });
            }
        }
        let used: HashMap<u64, Used> = by_job
            .into_iter()
            .map(|(j, (gpus, top, _))| {
                let amount = gpus.len() as f64;
                (j, Used { amount, top })
            })
            .collect();
        self.jobs.judge(
            Resource::Gpus,
            self.policy.window_ns,
            tick.now_ns,
            dt_ns,
            &used,
            |j| tick.allocated.get(&j).map(|a| a.1),
            out,
        );
        // Processes NVML no longer lists on a GPU were idle there.
        for t in table.iter_mut() {
            let tgid = t.key.tgid;
            let policy = self.policy;
            if let Some(st) = t.peek_mut::<GpuUse>() {
                for (gpu, (tracker, _)) in st.by_gpu.iter_mut() {
                    if !seen.contains(&(tgid, *gpu)) {
                        tracker.push(policy, tick.now_ns, dt_ns, 0.0);
                    }
                }
                st.by_gpu.retain(|_, (t, _)| !t.idle());
            }
        }
    }
}
