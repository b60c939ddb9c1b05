//! Helpers shared by the hooks: globals set by the loader, counters, event headers.
use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use minerwatch_common::{EventHeader, KernelOffsets};

use crate::maps::{EVENTS, STATS};

const BPF_RB_AVAIL_DATA: u64 = 0;
pub const BPF_RB_NO_WAKEUP: u64 = 1;
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// Unread bytes past which a lifecycle event wakes the reader after all.
const WAKE_ABOVE: u64 = 1024 * 1024;

/// Submit flags for high-volume, low-urgency events (exec, fork, exit, connect). Waking the
/// reader costs the submitting task several microseconds, so these do not, unless the ring
/// is filling up; user space drains on a short timer as well. Payload events go through
/// their own ring and force the wake-up.
#[inline(always)]
pub fn lazy_wakeup() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) > WAKE_ABOVE {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

// Read-only globals, patched by the loader (`EbpfLoader::override_global`) before loading.
#[unsafe(no_mangle)]
static SENSOR_TGID: u32 = 0;
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::ZERO;

/// The kernel's struct offsets, as the loader found them in BTF.
#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a valid static; volatile so the compiler cannot fold the pre-load value.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// Current (tgid, tid), or `None` for the sensor's own threads.
#[inline(always)]
pub fn current() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: a valid static; volatile so the compiler cannot fold the pre-load value.
    if tgid == unsafe { core::ptr::read_volatile(&SENSOR_TGID) } {
        return None;
    }
    Some((tgid, id as u32))
}

/// Adds one to a `STATS` counter.
#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        // SAFETY: this CPU's slot. A perf-event program interrupting a tracepoint on the same
        // CPU could lose one increment; the counters are for operators, not accounting.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn header(kind: u32, tgid: u32, tid: u32) -> EventHeader {
    EventHeader {
        kind,
        tgid,
        tid,
        _pad: 0,
        // SAFETY: helpers with no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    }
}

/// Reads a `T` at `base + off` in kernel memory, fault-tolerant.
#[inline(always)]
pub fn kread<T: Copy>(base: *const u8, off: u32) -> Result<T, u32> {
    // SAFETY: the helper tolerates any address.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(base.add(off as usize) as *const T) }
        .map_err(|_| minerwatch_common::stat::READ_KERNEL_FAILED)
}
