//! Process execution, from the new image itself: `sched_process_exec` fires only for an exec
//! that succeeded, and the arguments are read from the new image's argument area
//! (`mm->arg_start..arg_end`), the kernel's own copy. No syscall tracepoint is involved, so
//! no syscall on the node takes the slow path, and another thread cannot change argv between
//! the syscall and the read.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_task, bpf_get_current_uid_gid, generated},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use minerwatch_common::{
    ARGV_CAP, CGROUP_SUBSYS_MAX, CGROUP_V1_KEY_START, EXEC_ARGV_MISSING, EXEC_ARGV_TRUNCATED,
    EXEC_FIXED, FILENAME_CAP, cgroup_v1_step, kind, stat,
};

use crate::{
    maps::{EVENTS, EXEC_SCRATCH},
    util::{count, current, header, kread, lazy_wakeup, offsets},
};

/// Raw tracepoint `sched_process_exec(struct task_struct *p, pid_t old_pid, struct
/// linux_binprm *bprm)`. Reads `bprm->filename`, `current->mm->arg_start/arg_end` and the
/// parent at BTF offsets; without them the record has no filename, argv or parent (user
/// space falls back to /proc). Needs the object's minimum kernel (5.8) only.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn exec_done(ctx: RawTracePointContext) -> u32 {
    match try_exec_done(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            count(e);
            0
        }
    }
}

fn try_exec_done(ctx: &RawTracePointContext) -> Result<(), u32> {
    let Some((tgid, tid)) = current() else {
        return Ok(());
    };
    let off = offsets();
    let ev = EXEC_SCRATCH.get_ptr_mut(0).ok_or(stat::MAP_FULL)?;
    // SAFETY: this CPU's scratch slot, owned by this program invocation.
    let ev = unsafe { &mut *ev };
    ev.hdr = header(kind::EXEC, tgid, tid);
    ev.ppid = parent_tgid();
    let ugid = bpf_get_current_uid_gid();
    ev.uid = ugid as u32;
    ev.gid = (ugid >> 32) as u32;
    // The raw argument is a pid_t in a u64 slot.
    ev.old_tid = ctx.arg::<u64>(1) as u32;
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.flags = 0;
    ev.argv_len = 0;
    ev.start_ns = 0;
    if off.task_start_boottime != 0 {
        // SAFETY: helper with no preconditions.
        let task = unsafe { bpf_get_current_task() } as *const u8;
        ev.start_ns = kread(task, off.task_start_boottime).unwrap_or(0);
    }
    ev.filename[0] = 0;
    if off.bprm_filename != 0 {
        let bprm: *const u8 = ctx.arg(2);
        if let Ok(name) = kread::<*const u8>(bprm, off.bprm_filename) {
            // SAFETY: bounded string copy through the fault-tolerant helper.
            unsafe {
                generated::bpf_probe_read_kernel_str(
                    ev.filename.as_mut_ptr() as *mut c_void,
                    FILENAME_CAP as u32,
                    name as *const c_void,
                )
            };
        }
    }
    // SAFETY: helper with no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    (ev.exe_dev, ev.exe_ino) = exe_inode(task);
    ev._pad = 0;
    ev.cgroup_v1 = cgroup_v1_key(task);
    match read_args(ev) {
        Ok(()) => {}
        Err(e) => {
            count(e);
            count(stat::EXEC_ARGV_MISSING);
            ev.flags = EXEC_ARGV_MISSING;
            ev.argv_len = 0;
        }
    }
    // Only the used part of argv goes into the ring.
    let size = EXEC_FIXED as u64 + u64::from(ev.argv_len);
    let size = if size > size_of_val(ev) as u64 {
        size_of_val(ev) as u64
    } else {
        size
    };
    // SAFETY: `ev` is valid for `size_of_val(ev)` bytes and `size` is at most that.
    let ret = unsafe {
        generated::bpf_ringbuf_output(
            core::ptr::from_ref(&EVENTS).cast_mut().cast(),
            core::ptr::from_mut(ev).cast(),
            size,
            lazy_wakeup(),
        )
    };
    if ret < 0 {
        return Err(stat::RINGBUF_FULL_EXEC);
    }
    Ok(())
}

/// Copies the new image's argument area into `ev.argv`.
#[inline(always)]
fn read_args(ev: &mut minerwatch_common::ExecEvent) -> Result<(), u32> {
    let off = offsets();
    if off.task_mm == 0 || off.mm_arg_start == 0 || off.mm_arg_end == 0 {
        return Err(stat::READ_KERNEL_FAILED);
    }
    // SAFETY: helper with no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mm: *const u8 = kread(task, off.task_mm)?;
    if mm.is_null() {
        return Err(stat::READ_KERNEL_FAILED);
    }
    let start: u64 = kread(mm, off.mm_arg_start)?;
    let end: u64 = kread(mm, off.mm_arg_end)?;
    if end <= start {
        return Err(stat::READ_USER_FAILED);
    }
    let mut len = end - start;
    if len > ARGV_CAP as u64 {
        len = ARGV_CAP as u64;
        ev.flags |= EXEC_ARGV_TRUNCATED;
    }
    // SAFETY: reload and clamp so the verifier sees 1 <= len <= ARGV_CAP, the size of `argv`.
    let len = unsafe {
        let mut n = core::ptr::read_volatile(&len) as u32;
        if n > ARGV_CAP as u32 {
            n = ARGV_CAP as u32;
        }
        if n == 0 {
            return Err(stat::READ_USER_FAILED);
        }
        n
    };
    // SAFETY: bounded copy of user memory into the scratch buffer, fault-tolerant.
    let r = unsafe {
        generated::bpf_probe_read_user(
            ev.argv.as_mut_ptr() as *mut c_void,
            len,
            start as *const c_void,
        )
    };
    if r < 0 {
        return Err(stat::READ_USER_FAILED);
    }
    ev.argv_len = len;
    Ok(())
}

/// `current->mm->exe_file`'s inode: (`i_sb->s_dev`, `i_ino`), or zeros when the BTF
/// offsets are unknown or a read fails (user space then reads `/proc/<pid>/exe`).
#[inline(always)]
fn exe_inode(task: *const u8) -> (u32, u64) {
    let off = offsets();
    if off.task_mm == 0 || off.mm_exe_file == 0 || off.file_inode == 0 || off.inode_ino == 0 {
        return (0, 0);
    }
    let read = || -> Result<(u32, u64), u32> {
        let mm: *const u8 = kread(task, off.task_mm)?;
        let file: *const u8 = kread(mm, off.mm_exe_file)?;
        let inode: *const u8 = kread(file, off.file_inode)?;
        let ino: u64 = kread(inode, off.inode_ino)?;
        let sb: *const u8 = kread(inode, off.inode_sb)?;
        let dev: u32 = kread(sb, off.sb_dev)?;
        Ok((dev, ino))
    };
    read().unwrap_or((0, 0))
}

/// The key of the task's cgroups on the v1 hierarchies: [`cgroup_v1_step`] over the cgroup
/// id (`css->cgroup->kn->id`) of the first subsystem of each mounted v1 hierarchy, in
/// subsystem order. 0 on a node with cgroup v2 only (no subsystem selected) or when a read
/// fails (user space then reads `/proc/<pid>/cgroup`).
#[inline(always)]
fn cgroup_v1_key(task: *const u8) -> u64 {
    let off = offsets();
    let mask = off.cgroup_v1_subsys;
    if mask == 0 || off.task_cgroups == 0 || off.kernfs_id == 0 {
        return 0;
    }
    let Ok(cset) = kread::<*const u8>(task, off.task_cgroups) else {
        return 0;
    };
    let mut key = CGROUP_V1_KEY_START;
    for i in 0..CGROUP_SUBSYS_MAX {
        if mask & (1 << i) == 0 {
            continue;
        }
        let read = || -> Result<u64, u32> {
            let css: *const u8 = kread(cset, off.css_set_subsys + i * 8)?;
            let cgrp: *const u8 = kread(css, off.css_cgroup)?;
            let kn: *const u8 = kread(cgrp, off.cgroup_kn)?;
            kread(kn, off.kernfs_id)
        };
        match read() {
            Ok(id) => key = cgroup_v1_step(key, id),
            Err(_) => return 0,
        }
    }
    key
}

/// `current->real_parent->tgid`, or 0 when BTF offsets are unknown or a read fails.
#[inline(always)]
fn parent_tgid() -> u32 {
    let off = offsets();
    if off.task_real_parent == 0 || off.task_tgid == 0 {
        return 0;
    }
    // SAFETY: helper with no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let parent = match kread::<*const u8>(task, off.task_real_parent) {
        Ok(p) => p,
        Err(e) => {
            count(e);
            return 0;
        }
    };
    kread::<u32>(parent, off.task_tgid).unwrap_or_else(|e| {
        count(e);
        0
    })
}
