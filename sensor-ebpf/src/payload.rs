//! First bytes on new TCP connections. Every write-family syscall costs one hash lookup in
//! `WATCH`; only sockets put there by `net` (new TCP connects) or by user space (connections
//! that predate the sensor) pay for a copy, and only until their budget is spent.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated},
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::{
    PAYLOAD_CAP, PayloadEvent, WATCH_BYTES, WATCH_SENDS, kind, stat, syscall, watch_key,
};

use crate::{
    maps::{EVENTS, WATCH},
    util::{BPF_RB_FORCE_WAKEUP, count, current, header, sys_arg},
};

/// Iovecs read from one writev/sendmsg; Stratum clients write a message in one or two.
const MAX_IOV: u64 = 4;

/// The watched socket a send belongs to (BPF calls take at most five arguments).
#[derive(Clone, Copy)]
struct Sock {
    tgid: u32,
    tid: u32,
    key: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: *const u8,
    len: u64,
}

/// `syscalls:sys_enter_write` (fd, buf, count).
#[tracepoint]
pub fn net_write(ctx: TracePointContext) -> u32 {
    shell(try_plain(&ctx, syscall::WRITE))
}

/// `syscalls:sys_enter_sendto` (fd, buff, len, flags, addr, addr_len); also `send()`.
#[tracepoint]
pub fn net_sendto(ctx: TracePointContext) -> u32 {
    shell(try_plain(&ctx, syscall::SENDTO))
}

/// `syscalls:sys_enter_writev` (fd, vec, vlen).
#[tracepoint]
pub fn net_writev(ctx: TracePointContext) -> u32 {
    shell(try_writev(&ctx))
}

/// `syscalls:sys_enter_sendmsg` (fd, msg, flags).
#[tracepoint]
pub fn net_sendmsg(ctx: TracePointContext) -> u32 {
    shell(try_sendmsg(&ctx))
}

#[inline(always)]
fn shell(r: Result<(), u32>) -> u32 {
    if let Err(e) = r {
        count(e);
    }
    0
}

/// The watch entry for `fd` of the current process, if any: the cheap common-case exit.
#[inline(always)]
fn watched(ctx: &TracePointContext) -> Result<Option<Sock>, u32> {
    let Some((tgid, tid)) = current() else {
        return Ok(None);
    };
    let fd: u64 = sys_arg(ctx, 0)?;
    let key = watch_key(tgid, fd as u32);
    if WATCH.get_ptr(key).is_none() {
        return Ok(None);
    }
    Ok(Some(Sock { tgid, tid, key }))
}

fn try_plain(ctx: &TracePointContext, which: u32) -> Result<(), u32> {
    let Some(sock) = watched(ctx)? else {
        return Ok(());
    };
    let buf: *const u8 = sys_arg(ctx, 1)?;
    let len: u64 = sys_arg(ctx, 2)?;
    let iov = [Iovec { base: buf, len }];
    capture(sock, which, &iov, len)
}

fn try_writev(ctx: &TracePointContext) -> Result<(), u32> {
    let Some(sock) = watched(ctx)? else {
        return Ok(());
    };
    let vec: *const Iovec = sys_arg(ctx, 1)?;
    let vlen: u64 = sys_arg(ctx, 2)?;
    capture_iov(sock, syscall::WRITEV, vec, vlen)
}

fn try_sendmsg(ctx: &TracePointContext) -> Result<(), u32> {
    let Some(sock) = watched(ctx)? else {
        return Ok(());
    };
    let msg: *const u8 = sys_arg(ctx, 1)?;
    // struct user_msghdr: msg_iov at 16, msg_iovlen at 24 (x86_64).
    // SAFETY: user reads through the fault-tolerant helper.
    let vec: *const Iovec = unsafe { bpf_probe_read_user(msg.add(16) as *const *const Iovec) }
        .map_err(|_| stat::READ_USER_FAILED)?;
    let vlen: u64 = unsafe { bpf_probe_read_user(msg.add(24) as *const u64) }
        .map_err(|_| stat::READ_USER_FAILED)?;
    capture_iov(sock, syscall::SENDMSG, vec, vlen)
}

#[inline(always)]
fn capture_iov(sock: Sock, which: u32, vec: *const Iovec, vlen: u64) -> Result<(), u32> {
    let mut iov = [Iovec {
        base: core::ptr::null(),
        len: 0,
    }; MAX_IOV as usize];
    let mut total: u64 = 0;
    let mut i = 0;
    while i < MAX_IOV && i < vlen {
        // SAFETY: user reads through the fault-tolerant helper.
        iov[i as usize] = unsafe { bpf_probe_read_user(vec.add(i as usize)) }
            .map_err(|_| stat::READ_USER_FAILED)?;
        total += iov[i as usize].len;
        i += 1;
    }
    capture(sock, which, &iov, total)
}

#[inline(always)]
fn capture(sock: Sock, which: u32, iov: &[Iovec], total: u64) -> Result<(), u32> {
    let Sock { tgid, tid, key } = sock;
    if total == 0 {
        return Ok(());
    }
    let Some(state) = WATCH.get_ptr_mut(key) else {
        return Ok(());
    };
    // SAFETY: map value; one writer per socket in practice, and a race only skews a budget.
    let state = unsafe { &mut *state };
    let budget = WATCH_BYTES.saturating_sub(state.bytes) as usize;
    let cap = if budget < PAYLOAD_CAP {
        budget
    } else {
        PAYLOAD_CAP
    };

    let Some(mut entry) = EVENTS.reserve::<PayloadEvent>(0) else {
        return Err(stat::RINGBUF_FULL_PAYLOAD);
    };
    let ev = entry.as_mut_ptr();
    let mut off: usize = 0;
    let mut failed = false;
    // SAFETY: reserved ring-buffer memory; `at < PAYLOAD_CAP` and `n <= PAYLOAD_CAP`, so
    // `at + n <= PAYLOAD_BUF`, provably to the verifier.
    unsafe {
        for seg in iov.iter().take(MAX_IOV as usize) {
            if off >= cap {
                break;
            }
            let room = cap - off;
            let n = if (seg.len as usize) < room {
                seg.len as usize
            } else {
                room
            };
            if n == 0 {
                continue;
            }
            // Volatile reloads stop LLVM from folding the clamps below into what it already
            // knows; the verifier does not know it and needs to see them.
            let at = core::ptr::read_volatile(&off) & (PAYLOAD_CAP - 1);
            let mut n = core::ptr::read_volatile(&n);
            if n > PAYLOAD_CAP {
                n = PAYLOAD_CAP;
            }
            if generated::bpf_probe_read_user(
                (*ev).data.as_mut_ptr().add(at) as *mut c_void,
                n as u32,
                seg.base as *const c_void,
            ) < 0
            {
                failed = true;
                break;
            }
            off += n;
        }
        (*ev).hdr = header(kind::PAYLOAD, tgid, tid);
        (*ev).fd = key as u32 as i32;
        (*ev).syscall = which;
        (*ev).offset = state.bytes;
        (*ev).len = off as u32;
        (*ev).total = total as u32;
        (*ev)._pad = 0;
    }
    entry.submit(BPF_RB_FORCE_WAKEUP);
    state.bytes += off as u32;
    state.sends += 1;
    if state.bytes >= WATCH_BYTES || state.sends >= WATCH_SENDS {
        let _ = WATCH.remove(key);
    }
    if failed {
        return Err(stat::READ_USER_FAILED);
    }
    Ok(())
}
