//! Process execution: argv is read from user memory at syscall entry (the only moment it is
//! reliably there) and stashed by thread id; `sched_process_exec` fires only for an exec
//! that succeeded and emits the event with the new image's identity.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_comm, bpf_get_current_task, bpf_get_current_uid_gid, generated},
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::{
    ARG_READ_MAX, ARGV_CAP, ARGV_MAX_ARGS, EXEC_ARGV_MISSING, EXEC_ARGV_TRUNCATED, ExecEvent,
    FILENAME_CAP, kind, stat,
};

use crate::{
    maps::{EVENTS, EXEC_SCRATCH, EXEC_STASH},
    util::{count, current, header, lazy_wakeup, sys_arg, task_real_parent_off, task_tgid_off},
};

/// `syscalls:sys_enter_execve` (args: filename, argv, envp). Any kernel with syscall
/// tracepoints (4.7+ for BPF attachment).
#[tracepoint]
pub fn exec_enter(ctx: TracePointContext) -> u32 {
    match sys_arg::<*const *const u8>(&ctx, 1).and_then(stash_argv) {
        Ok(()) => 0,
        Err(e) => {
            count(e);
            0
        }
    }
}

/// `syscalls:sys_enter_execveat` (args: dfd, filename, argv, envp, flags).
#[tracepoint]
pub fn exec_enter_at(ctx: TracePointContext) -> u32 {
    match sys_arg::<*const *const u8>(&ctx, 2).and_then(stash_argv) {
        Ok(()) => 0,
        Err(e) => {
            count(e);
            0
        }
    }
}

/// `sched:sched_process_exec` (filename as `__data_loc` at 8, pid at 12, old_pid at 16).
/// Kernel 3.4+. Parent tgid comes from `task_struct` offsets resolved from BTF.
#[tracepoint]
pub fn exec_done(ctx: TracePointContext) -> u32 {
    match try_exec_done(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            count(e);
            0
        }
    }
}

fn stash_argv(argv: *const *const u8) -> Result<(), u32> {
    let Some((_, tid)) = current() else {
        return Ok(());
    };
    let ev = EXEC_SCRATCH.get_ptr_mut(0).ok_or(stat::MAP_FULL)?;
    // SAFETY: per-CPU scratch slot owned by this program invocation.
    let ev = unsafe { &mut *ev };
    ev.argc = 0;
    ev.flags = 0;
    let mut off: usize = 0;
    let mut i: u32 = 0;
    while i < ARGV_MAX_ARGS {
        // SAFETY: reading a user pointer through the helper, which tolerates faults.
        let arg = unsafe { aya_ebpf::helpers::bpf_probe_read_user(argv.add(i as usize)) }
            .map_err(|_| stat::READ_USER_FAILED)?;
        if arg.is_null() {
            break;
        }
        if off >= ARGV_CAP {
            ev.flags |= EXEC_ARGV_TRUNCATED;
            break;
        }
        let at = off & (ARGV_CAP - 1);
        // SAFETY: `at + ARG_READ_MAX <= ARGV_BUF`, the helper bounds the write to its size.
        let n = unsafe {
            generated::bpf_probe_read_user_str(
                ev.argv.as_mut_ptr().add(at) as *mut c_void,
                ARG_READ_MAX as u32,
                arg as *const c_void,
            )
        };
        if n < 0 {
            return Err(stat::READ_USER_FAILED);
        }
        off += n as usize;
        ev.argc += 1;
        i += 1;
    }
    if i == ARGV_MAX_ARGS {
        ev.flags |= EXEC_ARGV_TRUNCATED;
    }
    ev.argv_len = off as u32;
    EXEC_STASH.insert(tid, ev, 0).map_err(|_| stat::MAP_FULL)
}

fn try_exec_done(ctx: &TracePointContext) -> Result<(), u32> {
    let Some((tgid, tid)) = current() else {
        return Ok(());
    };
    // SAFETY: offsets from the tracepoint's format (stable since 3.4).
    let old_tid: u32 = unsafe { ctx.read_at(16) }.map_err(|_| stat::READ_KERNEL_FAILED)?;
    let loc: u32 = unsafe { ctx.read_at(8) }.map_err(|_| stat::READ_KERNEL_FAILED)?;

    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        return Err(stat::RINGBUF_FULL_EXEC);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at reserved ring-buffer memory of the right size; every field
    // user space reads is written below before submit.
    unsafe {
        (*ev).hdr = header(kind::EXEC, tgid, tid);
        (*ev).ppid = parent_tgid();
        let ugid = bpf_get_current_uid_gid();
        (*ev).uid = ugid as u32;
        (*ev).gid = (ugid >> 32) as u32;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        generated::bpf_probe_read_kernel_str(
            (*ev).filename.as_mut_ptr() as *mut c_void,
            FILENAME_CAP as u32,
            src as *const c_void,
        );
        match EXEC_STASH.get_ptr(old_tid) {
            Some(stash) => {
                (*ev).argc = (*stash).argc;
                (*ev).argv_len = (*stash).argv_len;
                (*ev).flags = (*stash).flags;
                // One helper call copies the whole buffer; a byte loop would cost far more.
                generated::bpf_probe_read_kernel(
                    (*ev).argv.as_mut_ptr() as *mut c_void,
                    (*ev).argv.len() as u32,
                    (*stash).argv.as_ptr() as *const c_void,
                );
                let _ = EXEC_STASH.remove(old_tid);
            }
            None => {
                count(stat::EXEC_ARGV_MISSING);
                (*ev).argc = 0;
                (*ev).argv_len = 0;
                (*ev).flags = EXEC_ARGV_MISSING;
            }
        }
    }
    entry.submit(lazy_wakeup());
    Ok(())
}

/// `current->real_parent->tgid`, or 0 when BTF offsets are unknown or a read fails.
#[inline(always)]
fn parent_tgid() -> u32 {
    let parent_off = task_real_parent_off();
    let tgid_off = task_tgid_off();
    if parent_off == 0 || tgid_off == 0 {
        return 0;
    }
    // SAFETY: kernel reads through the fault-tolerant helper at BTF-derived offsets.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let Ok(parent) = aya_ebpf::helpers::bpf_probe_read_kernel(
            task.add(parent_off as usize) as *const *const u8
        ) else {
            count(stat::READ_KERNEL_FAILED);
            return 0;
        };
        aya_ebpf::helpers::bpf_probe_read_kernel(parent.add(tgid_off as usize) as *const u32)
            .unwrap_or_else(|_| {
                count(stat::READ_KERNEL_FAILED);
                0
            })
    }
}
