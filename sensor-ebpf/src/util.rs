//! Helpers shared by the hooks: globals set by the loader, counters, event headers.
use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use sensor_common::EventHeader;

use crate::maps::{EVENTS, STATS};

const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// Unread bytes past which a lifecycle event wakes the reader after all.
const WAKE_ABOVE: u64 = 1024 * 1024;

/// Submit flags for high-volume, low-urgency events (exec, fork, exit, connect). Waking the
/// reader costs the submitting task several microseconds, so these do not, unless the ring
/// is filling up; user space drains on a short timer as well. Payload events, on which the
/// strongest alerts depend, force the wake-up: the default (adaptive) one would not fire
/// while lazily submitted events sit unread in front of them.
#[inline(always)]
pub fn lazy_wakeup() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) > WAKE_ABOVE {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

// Read-only globals, patched by the loader (`EbpfLoader::set_global`) before loading.
#[unsafe(no_mangle)]
static SENSOR_TGID: u32 = 0;
#[unsafe(no_mangle)]
static TASK_TGID_OFF: u32 = 0;
#[unsafe(no_mangle)]
static TASK_REAL_PARENT_OFF: u32 = 0;

#[inline(always)]
fn global(v: &'static u32) -> u32 {
    // SAFETY: a valid static; volatile so the compiler cannot fold the pre-load value.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn task_tgid_off() -> u32 {
    global(&TASK_TGID_OFF)
}

#[inline(always)]
pub fn task_real_parent_off() -> u32 {
    global(&TASK_REAL_PARENT_OFF)
}

/// Current (tgid, tid), or `None` for the sensor's own threads.
#[inline(always)]
pub fn current() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == global(&SENSOR_TGID) {
        return None;
    }
    Some((tgid, id as u32))
}

/// Adds one to a `STATS` counter.
#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
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

/// Reads a syscall tracepoint argument (`args[n]` of `trace_event_raw_sys_enter`).
#[inline(always)]
pub fn sys_arg<T>(ctx: &aya_ebpf::programs::TracePointContext, n: usize) -> Result<T, u32> {
    // SAFETY: syscall tracepoint records hold 8-byte args from offset 16.
    unsafe { ctx.read_at::<T>(16 + 8 * n) }.map_err(|_| sensor_common::stat::READ_KERNEL_FAILED)
}
