//! minerwatch's eBPF object: one module per hook family. Every hook is a thin shell over a
//! `try_` function; failures are counted in `STATS`, never silently dropped.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target offers no atomic read-modify-write through `core::sync`.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod cpu;
mod dns;
mod exec;
mod flow;
mod fpu;
mod maps;
mod net;
mod payload;
mod proc;
mod sysctl;
mod util;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that can reach here, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
