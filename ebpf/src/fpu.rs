//! The RandomX fingerprint: RandomX programs set the SSE rounding mode (MXCSR bits 13-14)
//! at random as they run, which almost nothing else does. When a thread is switched out its
//! registers are saved, so the rounding mode it was running with can be read then.
//!
//! Every context switch of every user thread on the node reaches this hook, so it does the
//! least it can: two kernel reads, and a hash lookup by thread id. Only a thread that ever
//! showed a non-default mode gets an entry; from then on each of its switches is counted
//! there, which gives user space the thread's share without one event per switch.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::raw_tracepoint, programs::RawTracePointContext};
use minerwatch_common::{FpuThread, stat};

use crate::{
    maps::FPU_THREADS,
    util::{count, current, kread, offsets},
};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i64 = 17;

/// Raw tracepoint `x86_fpu_regs_deactivated(struct fpu *fpu)`, run as a thread that uses the
/// FPU is switched out, after its registers were saved. Kernel 4.13+ (x86).
#[raw_tracepoint(tracepoint = "x86_fpu_regs_deactivated")]
pub fn fpu_switch(ctx: RawTracePointContext) -> u32 {
    match try_fpu_switch(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            count(e);
            0
        }
    }
}

#[inline(always)]
fn try_fpu_switch(ctx: &RawTracePointContext) -> Result<(), u32> {
    let off = offsets();
    if off.fpu_mxcsr == 0 {
        return Ok(());
    }
    // The task being switched out is still `current` here.
    let Some((tgid, tid)) = current() else {
        return Ok(());
    };
    if tgid == 0 {
        return Ok(());
    }
    let fpu: *const u8 = ctx.arg(0);
    let regs: *const u8 = if off.fpu_fpstate != 0 {
        kread(fpu, off.fpu_fpstate)?
    } else {
        fpu
    };
    let mxcsr: u32 = kread(regs, off.fpu_mxcsr)?;
    let mode = ((mxcsr >> 13) & 3) as usize;
    match FPU_THREADS.get_ptr_mut(tid) {
        Some(p) => {
            // SAFETY: a live value of this map. Only the CPU switching this thread out
            // writes it, and a thread is switched out on one CPU at a time.
            unsafe {
                (*p).switches += 1;
                if mode != 0 {
                    (*p).modes[mode - 1] += 1;
                }
            }
        }
        None if mode != 0 => {
            let mut t = FpuThread {
                tgid,
                // SAFETY: helper with no preconditions.
                first_ns: unsafe { bpf_ktime_get_ns() },
                switches: 1,
                ..FpuThread::default()
            };
            t.modes[mode - 1] = 1;
            if let Err(e) = FPU_THREADS.insert(tid, t, BPF_NOEXIST)
                && i64::from(e) != -EEXIST
            {
                count(stat::FPU_THREADS_FULL);
            }
        }
        None => {}
    }
    Ok(())
}
