//! Process lifecycle: new processes (not threads) and the end of a process, so user space can
//! keep lineage and forget what is gone.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use sensor_common::{ExitEvent, ForkEvent, kind, stat};

use crate::{
    maps::EVENTS,
    util::{count, current, header, lazy_wakeup, task_tgid_off},
};

/// Raw tracepoint `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
/// Kernel 4.17+. Reads `child->tgid` at the BTF offset to tell a new process from a thread.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn proc_fork(ctx: RawTracePointContext) -> u32 {
    match try_proc_fork(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            count(e);
            0
        }
    }
}

fn try_proc_fork(ctx: &RawTracePointContext) -> Result<(), u32> {
    let Some((tgid, tid)) = current() else {
        return Ok(());
    };
    let off = task_tgid_off();
    if off == 0 {
        return Ok(());
    }
    let child: *const u8 = ctx.arg(1);
    // SAFETY: fault-tolerant kernel read at a BTF-derived offset.
    let child_tgid = unsafe { bpf_probe_read_kernel(child.add(off as usize) as *const u32) }
        .map_err(|_| stat::READ_KERNEL_FAILED)?;
    if child_tgid == tgid {
        return Ok(()); // a new thread of the same process
    }
    let ev = ForkEvent {
        hdr: header(kind::FORK, tgid, tid),
        child_tgid,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    EVENTS
        .output::<ForkEvent>(&ev, lazy_wakeup())
        .map_err(|_| stat::RINGBUF_FULL_FORK)
}

/// `sched:sched_process_exit`. Emits when the thread group leader exits, which for all but
/// processes whose leader called `pthread_exit` early is the end of the process.
#[tracepoint]
pub fn proc_exit(_ctx: TracePointContext) -> u32 {
    match try_proc_exit() {
        Ok(()) => 0,
        Err(e) => {
            count(e);
            0
        }
    }
}

fn try_proc_exit() -> Result<(), u32> {
    let Some((tgid, tid)) = current() else {
        return Ok(());
    };
    if tgid != tid {
        return Ok(());
    }
    // The sample maps are pruned by user space on this event, off the exiting task's path.
    let ev = ExitEvent {
        hdr: header(kind::EXIT, tgid, tid),
    };
    EVENTS
        .output::<ExitEvent>(&ev, lazy_wakeup())
        .map_err(|_| stat::RINGBUF_FULL_EXIT)
}
