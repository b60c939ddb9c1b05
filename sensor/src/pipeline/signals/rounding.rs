//! The RandomX fingerprint: the rounding modes each thread was running with when it was
//! switched out (the `fpu_switch` hook counts them per thread in the kernel), judged by
//! [`minerwatch_detect::rounding`].
//!
//! A miner alone on an otherwise idle core is rarely switched out, so it would take long to
//! gather enough switches. While some process keeps a core busy, the signal makes them: a
//! thread of the sensor visits every CPU in turn and sleeps there for a moment, and waking
//! up it preempts whatever runs on that CPU. That is some 40 extra context switches a second
//! per busy CPU, and none at all on an idle node.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hashbrown::HashMap;
use minerwatch_common::FpuThread;
use minerwatch_detect::{
    Finding,
    rounding::{Rounding, Verdict},
};

use super::{Found, Signal, Tick};
use crate::{config::Config, pipeline::process::Table};

/// A process counts as busy, and worth nudging for, from this share of a core.
const BUSY_SHARE: f64 = 0.5;
/// One visit of every CPU takes at least this long.
const NUDGE_ROUND: Duration = Duration::from_millis(50);
/// How long the nudging thread sleeps on each CPU it visits.
const NUDGE_NAP: Duration = Duration::from_millis(1);

/// What the signal keeps about one process.
#[derive(Debug, Default)]
struct Threads {
    /// Its threads that showed a non-default mode.
    threads: hashbrown::HashSet<u32>,
    /// Reported already (one finding per process; its alert is updated with more evidence).
    reported: bool,
    /// cpu-clock samples at the last tick, for its share of a core.
    samples: u64,
}

struct Fingerprint {
    hz: f64,
    nudger: Nudger,
}

pub fn new(cfg: &Config) -> Box<dyn Signal> {
    Box::new(Fingerprint {
        hz: cfg.cpu_sample_hz as f64,
        nudger: Nudger::default(),
    })
}

/// The kernel's counts as the detection crate reads them.
fn counts(t: &FpuThread) -> Rounding {
    Rounding {
        switches: t.switches,
        down: t.modes[0],
        up: t.modes[1],
        toward_zero: t.modes[2],
    }
}

impl Signal for Fingerprint {
    fn name(&self) -> &'static str {
        "randomx_fingerprint"
    }

    fn on_tick(&mut self, tick: &Tick<'_>, table: &mut Table, out: &mut Vec<Found>) {
        // Judge every thread that ever showed a non-default mode; keep the busiest that
        // looks like RandomX for each process.
        let mut best: HashMap<u32, (u32, Rounding, u64, usize)> = HashMap::new();
        for (tid, t) in tick.rounding {
            let Some(p) = table.get_mut(t.tgid) else {
                continue;
            };
            let st = p.state::<Threads>();
            st.threads.insert(*tid);
            let c = counts(t);
            if st.reported || c.verdict() != Verdict::RandomX {
                continue;
            }
            let e = best.entry(t.tgid).or_insert((*tid, c, t.first_ns, 0));
            e.3 += 1;
            if c.switches > e.1.switches {
                (e.0, e.1, e.2) = (*tid, c, t.first_ns);
            }
        }
        for (tgid, (tid, c, since, threads)) in best {
            let Some(p) = table.get_mut(tgid) else {
                continue;
            };
            p.state::<Threads>().reported = true;
            out.push(Found {
                tgid,
                finding: Finding::RandomxFingerprint {
                    tid,
                    counts: c,
                    secs: tick.now_ns.saturating_sub(since) / 1_000_000_000,
                    threads,
                },
                peer: None,
            });
        }
        // Make switches while something keeps a core busy.
        let secs = tick.dt.max(Duration::from_millis(1)).as_secs_f64();
        let mut busy = false;
        for (&tgid, &total) in &tick.cpu.samples {
            let Some(p) = table.get_mut(tgid) else {
                continue;
            };
            let st = p.state::<Threads>();
            let share = total.saturating_sub(std::mem::replace(&mut st.samples, total)) as f64
                / (self.hz * secs);
            busy |= share >= BUSY_SHARE && !st.reported;
        }
        self.nudger.set(busy);
    }

    fn counters(&self, table: &Table, out: &mut std::collections::BTreeMap<&'static str, u64>) {
        let threads = table
            .iter()
            .filter_map(|t| t.peek::<Threads>())
            .map(|s| s.threads.len() as u64)
            .sum();
        out.insert("rounding_threads", threads);
        out.insert(
            "rounding_nudges",
            self.nudger.nudges.load(Ordering::Relaxed),
        );
    }
}

/// The thread that makes context switches happen on busy CPUs, started on first use.
#[derive(Default)]
struct Nudger {
    want: Arc<AtomicBool>,
    nudges: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Nudger {
    fn set(&mut self, on: bool) {
        self.want.store(on, Ordering::Relaxed);
        if !on {
            return;
        }
        match &self.thread {
            Some(t) => t.thread().unpark(),
            None => {
                let (want, nudges) = (self.want.clone(), self.nudges.clone());
                match std::thread::Builder::new()
                    .name("mw-nudge".into())
                    .spawn(move || nudge(&want, &nudges))
                {
                    Ok(t) => self.thread = Some(t),
                    Err(e) => tracing::warn!(reason = %e, "cannot start the context-switch nudger"),
                }
            }
        }
    }
}

/// Visits every CPU the sensor may run on, naps there, and goes on, while `want` is set.
fn nudge(want: &AtomicBool, nudges: &AtomicU64) {
    let cpus = allowed_cpus();
    loop {
        if !want.load(Ordering::Relaxed) {
            std::thread::park_timeout(Duration::from_secs(1));
            continue;
        }
        let round = Instant::now();
        for &cpu in &cpus {
            if pin(cpu) {
                std::thread::sleep(NUDGE_NAP);
                nudges.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(rest) = NUDGE_ROUND.checked_sub(round.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// The CPUs this thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; the call writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid, writable cpu_set_t of `size` bytes.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Moves this thread to `cpu`.
fn pin(cpu: usize) -> bool {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` comes from `allowed_cpus`, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid cpu_set_t of the size given.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}
