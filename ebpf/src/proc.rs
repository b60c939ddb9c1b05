//! Process lifecycle: new processes (not threads) and the end of a process, so user space can
//! keep lineage and forget what is gone.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_task, bpf_probe_read_kernel_str_bytes},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use minerwatch_common::{ExitEvent, ForkEvent, KillEvent, RenameEvent, kind, stat};

use crate::{
    maps::EVENTS,
    util::{count, current, header, kread, lazy_wakeup, offsets},
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
    let off = offsets().task_tgid;
    if off == 0 {
        return Ok(());
    }
    let child: *const u8 = ctx.arg(1);
    let child_tgid: u32 = kread(child, off)?;
    if child_tgid == tgid {
        return Ok(()); // a new thread of the same process
    }
    let start = offsets().task_start_boottime;
    let child_start_ns = if start == 0 { 0 } else { kread(child, start)? };
    let ev = ForkEvent {
        hdr: header(kind::FORK, tgid, tid),
        child_tgid,
        _pad: 0,
        child_start_ns,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    EVENTS
        .output::<ForkEvent>(&ev, lazy_wakeup())
        .map_err(|_| stat::RINGBUF_FULL_FORK)
}

/// Raw tracepoint `sched_process_exit(struct task_struct *p, ...)`, run by each exiting
/// thread after it left its group's live count. Emits only when no thread of the group is
/// left (`current->signal->live == 0`, BTF offsets): a leader that calls `pthread_exit` while
/// other threads go on does not end the process. Without the offsets it emits for the leader.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn proc_exit(_ctx: RawTracePointContext) -> u32 {
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
    let off = offsets();
    if off.task_signal != 0 {
        // SAFETY: helper with no preconditions.
        let task = unsafe { bpf_get_current_task() } as *const u8;
        let signal: *const u8 = kread(task, off.task_signal)?;
        let live: i32 = kread(signal, off.signal_live)?;
        if live != 0 {
            return Ok(()); // other threads of the group still run
        }
    } else if tgid != tid {
        return Ok(());
    }
    // Its decisive-ring budget goes with it (absent for most processes: a failed lookup).
    let _ = crate::maps::PAYLOAD_BUDGETS.remove(tgid);
    // The sample maps are pruned by user space on this event, off the exiting task's path.
    let ev = ExitEvent {
        hdr: header(kind::EXIT, tgid, tid),
    };
    EVENTS
        .output::<ExitEvent>(&ev, lazy_wakeup())
        .map_err(|_| stat::RINGBUF_FULL_EXIT)
}

/// Raw tracepoint `task_rename(struct task_struct *task, const char *comm)`, run before the
/// name changes. Only the renaming of a user process's main thread (the group leader, whose
/// name `ps` shows) is reported, whichever thread of the process did it: `prctl` in the main
/// thread and a worker thread writing `/proc/self/comm` both count. Threads naming
/// themselves (browsers, JVMs, thread pools) are normal, and the kernel naming the threads it
/// creates is not a process hiding. The renaming every exec does is told apart in user space.
#[raw_tracepoint(tracepoint = "task_rename")]
pub fn proc_rename(ctx: RawTracePointContext) -> u32 {
    if let Err(e) = try_proc_rename(&ctx) {
        count(e);
    }
    0
}

fn try_proc_rename(ctx: &RawTracePointContext) -> Result<(), u32> {
    let Some((tgid, tid)) = current() else {
        return Ok(());
    };
    let off = offsets();
    let task: *const u8 = ctx.arg(0);
    if off.task_pid == 0 || off.task_tgid == 0 {
        // Without the offsets: the main thread renaming itself only.
        // SAFETY: helper with no preconditions.
        let me = unsafe { bpf_get_current_task() } as *const u8;
        if tid != tgid || task != me {
            return Ok(());
        }
    } else {
        let pid: u32 = kread(task, off.task_pid)?;
        let task_tgid: u32 = kread(task, off.task_tgid)?;
        if pid != task_tgid || task_tgid != tgid {
            return Ok(()); // a thread, or another process (a new kernel thread's name)
        }
    }
    if off.task_mm != 0 {
        // The renaming thread's `mm`, not the leader's: a leader that called `pthread_exit`
        // has none left, yet its process runs on and may rename it.
        // SAFETY: helper with no preconditions.
        let me = unsafe { bpf_get_current_task() } as *const u8;
        let mm: u64 = kread(me, off.task_mm)?;
        if mm == 0 {
            return Ok(()); // a kernel thread
        }
    }
    let name: *const u8 = ctx.arg(1);
    let mut ev = RenameEvent {
        hdr: header(kind::RENAME, tgid, tid),
        old: [0; 16],
        new: [0; 16],
    };
    // The leader's name as it was (the renaming thread's own may differ).
    ev.old = match off.task_comm {
        0 => bpf_get_current_comm().unwrap_or([0; 16]),
        c => kread::<[u8; 16]>(task, c)?,
    };
    // SAFETY: `name` is the tracepoint's kernel string; the copy is bounded by `new`.
    if unsafe { bpf_probe_read_kernel_str_bytes(name, &mut ev.new) }.is_err() {
        return Err(stat::READ_KERNEL_FAILED);
    }
    EVENTS
        .output::<RenameEvent>(&ev, lazy_wakeup())
        .map_err(|_| stat::RINGBUF_FULL_RENAME)
}

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
/// `TRACE_SIGNAL_DELIVERED`: the signal was queued for the target.
const SIGNAL_DELIVERED: i32 = 0;
/// `kernel_siginfo.si_code`: at this offset in every kernel since siginfo was split.
const SI_CODE_OFF: u32 = 8;

/// Raw tracepoint `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct
/// *task, int group, int result)`. Only SIGKILL and SIGTERM that a user process sent to
/// another process (si_code at most 0: `kill`, `tgkill`, `sigqueue`) are reported; every other
/// signal returns after two comparisons.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn proc_kill(ctx: RawTracePointContext) -> u32 {
    if let Err(e) = try_proc_kill(&ctx) {
        count(e);
    }
    0
}

fn try_proc_kill(ctx: &RawTracePointContext) -> Result<(), u32> {
    let sig: u64 = ctx.arg(0);
    let sig = sig as i32;
    if sig != SIGKILL && sig != SIGTERM {
        return Ok(());
    }
    let result: u64 = ctx.arg(4);
    if result as i32 != SIGNAL_DELIVERED {
        return Ok(());
    }
    // SEND_SIG_NOINFO (0) and SEND_SIG_PRIV (1): sent by the kernel itself.
    let info: *const u8 = ctx.arg(1);
    if (info as usize) <= 1 {
        return Ok(());
    }
    let code: i32 = kread(info, SI_CODE_OFF)?;
    if code > 0 {
        return Ok(()); // a kernel-generated signal (SI_KERNEL, a fault)
    }
    let Some((tgid, tid)) = current() else {
        return Ok(());
    };
    let off = offsets().task_tgid;
    if off == 0 {
        return Ok(());
    }
    let task: *const u8 = ctx.arg(2);
    let target_tgid: u32 = kread(task, off)?;
    if target_tgid == tgid {
        return Ok(());
    }
    let ev = KillEvent {
        hdr: header(kind::KILL, tgid, tid),
        target_tgid,
        sig: sig as u32,
    };
    EVENTS
        .output::<KillEvent>(&ev, lazy_wakeup())
        .map_err(|_| stat::RINGBUF_FULL_KILL)
}
