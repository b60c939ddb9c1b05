//! On-CPU sampling: a perf_event program on cpu-clock (software, works in VMs) on every
//! CPU. Each sample adds one to the running process's counter; user space turns counts
//! into a share of a core.
use aya_ebpf::{macros::perf_event, programs::PerfEventContext};
use sensor_common::stat;

use crate::{
    maps::CPU_SAMPLES,
    util::{count, current},
};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i64 = 17;

/// perf_event `PERF_COUNT_SW_CPU_CLOCK`, one event per CPU. Kernel 4.9+.
#[perf_event]
pub fn cpu_sample(_ctx: PerfEventContext) -> u32 {
    let Some((tgid, _)) = current() else {
        return 0;
    };
    if tgid == 0 {
        return 0; // idle
    }
    match CPU_SAMPLES.get_ptr_mut(&tgid) {
        // SAFETY: this CPU's slot of a per-CPU map value; nothing else writes it meanwhile.
        Some(p) => unsafe { *p += 1 },
        None => {
            // -EEXIST means another CPU inserted it first: that sample is lost, harmlessly.
            if let Err(e) = CPU_SAMPLES.insert(&tgid, &1, BPF_NOEXIST)
                && i64::from(e) != -EEXIST
            {
                count(stat::MAP_FULL);
            }
        }
    }
    0
}
