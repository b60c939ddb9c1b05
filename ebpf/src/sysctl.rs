//! Miner tuning through /proc/sys: huge pages are what RandomX wants most, and a miner (or
//! its installer) reserves them by writing `vm.nr_hugepages`. A `cgroup/sysctl` program on
//! the root cgroup sees every sysctl access with the writer as `current`, which a file watch
//! would not give. Accesses are rare, so the cost is nothing a node can measure; only writes
//! of `vm/nr_*` are reported.
use core::ffi::c_char;

use aya_ebpf::{
    helpers::generated::{bpf_sysctl_get_name, bpf_sysctl_get_new_value},
    macros::cgroup_sysctl,
    programs::SysctlContext,
};
use minerwatch_common::{SYSCTL_NAME_CAP, SYSCTL_VALUE_CAP, SysctlEvent, kind, stat};

use crate::{
    maps::EVENTS_HI,
    util::{count, current, header},
};

/// The helper's errno when the name was longer than the buffer (it is still copied, cut).
const E2BIG: i64 = 7;
/// What the program returns: 1 lets the access go ahead. It never refuses one.
const ALLOW: i32 = 1;
const PREFIX: &[u8; 6] = b"vm/nr_";

/// `cgroup/sysctl` on the root of the cgroup v2 tree: every read and write of a sysctl by a
/// process in it. Kernel 5.2+.
#[cgroup_sysctl]
pub fn sysctl_write(ctx: SysctlContext) -> i32 {
    if let Err(e) = try_sysctl_write(&ctx) {
        count(e);
    }
    ALLOW
}

#[inline(always)]
fn try_sysctl_write(ctx: &SysctlContext) -> Result<(), u32> {
    // SAFETY: the context the kernel passed.
    if unsafe { (*ctx.sysctl).write } == 0 {
        return Ok(());
    }
    let Some((tgid, tid)) = current() else {
        return Ok(());
    };
    let mut ev = SysctlEvent {
        hdr: header(kind::SYSCTL, tgid, tid),
        name: [0; SYSCTL_NAME_CAP],
        value: [0; SYSCTL_VALUE_CAP],
        value_len: 0,
        _pad: 0,
    };
    // SAFETY: a buffer of the length given, on this program's stack.
    let n = unsafe {
        bpf_sysctl_get_name(
            ctx.sysctl,
            ev.name.as_mut_ptr() as *mut c_char,
            SYSCTL_NAME_CAP as u64,
            0,
        )
    };
    if n < 0 && n != -E2BIG {
        return Ok(());
    }
    let mut i = 0;
    while i < PREFIX.len() {
        if ev.name[i] != PREFIX[i] {
            return Ok(());
        }
        i += 1;
    }
    // SAFETY: as above.
    ev.value_len = unsafe {
        bpf_sysctl_get_new_value(
            ctx.sysctl,
            ev.value.as_mut_ptr() as *mut c_char,
            SYSCTL_VALUE_CAP as u64,
        )
    } as i32;
    EVENTS_HI
        .output::<SysctlEvent>(&ev, 0)
        .map_err(|_| stat::RINGBUF_FULL_SYSCTL)
}
