//! On-CPU sampling: perf_event programs on every CPU. cpu-clock (software, works in VMs)
//! gives each process's share of a core; on nodes with a hardware PMU, cycle and
//! instruction samples give its IPC. Each sample adds one to the running process's counter,
//! atomically: the maps are shared by all CPUs, so their size does not grow with the CPUs.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{macros::perf_event, maps::HashMap, programs::PerfEventContext};
use minerwatch_common::stat;

use crate::{
    maps::{CPU_SAMPLES, HW_CYCLES, HW_INSNS},
    util::{count, current},
};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i64 = 17;

/// perf_event `PERF_COUNT_SW_CPU_CLOCK`, one event per CPU. Kernel 4.9+.
#[perf_event]
pub fn cpu_sample(_ctx: PerfEventContext) -> u32 {
    add_sample(&CPU_SAMPLES);
    0
}

/// perf_event `PERF_COUNT_HW_CPU_CYCLES`, sampled every `HW_SAMPLE_PERIOD` cycles. Needs a
/// hardware PMU (bare metal; most VMs expose none). Kernel 4.9+.
#[perf_event]
pub fn cpu_hw_cycles(_ctx: PerfEventContext) -> u32 {
    add_sample(&HW_CYCLES);
    0
}

/// perf_event `PERF_COUNT_HW_INSTRUCTIONS`, sampled every `HW_SAMPLE_PERIOD` instructions.
#[perf_event]
pub fn cpu_hw_insns(_ctx: PerfEventContext) -> u32 {
    add_sample(&HW_INSNS);
    0
}

/// Adds one sample for the running process to `map`.
#[inline(always)]
fn add_sample(map: &HashMap<u32, u64>) {
    let Some((tgid, _)) = current() else {
        return;
    };
    if tgid == 0 {
        return; // idle
    }
    match map.get_ptr_mut(tgid) {
        // SAFETY: a live value of this map, aligned for u64; other CPUs add to it only
        // through atomics too.
        // (The BPF target has no `AtomicU64::fetch_add`; this is the instruction it lowers to.)
        Some(p) => {
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
        }
        None => {
            // -EEXIST means another CPU inserted it first: that sample is lost, harmlessly.
            if let Err(e) = map.insert(tgid, 1, BPF_NOEXIST)
                && i64::from(e) != -EEXIST
            {
                count(stat::MAP_FULL);
            }
        }
    }
}
