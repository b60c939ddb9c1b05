//! Outbound connections: destination at connect() entry, TCP-ness from the socket's move to
//! SYN_SENT inside that call, outcome at exit. (Which sockets have their first bytes
//! captured is decided in `payload`, by cookie.)
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use sensor_common::{ConnectEvent, PROTO_TCP, PROTO_UNKNOWN, kind, stat};

use crate::{
    maps::{CONNECT_STASH, EVENTS},
    util::{count, current, header, lazy_wakeup, sys_arg},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_SYN_SENT: i32 = 2;
const IPPROTO_TCP: u16 = 6;

/// `syscalls:sys_enter_connect` (args: fd, uservaddr, addrlen).
#[tracepoint]
pub fn net_connect(ctx: TracePointContext) -> u32 {
    match try_net_connect(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            count(e);
            0
        }
    }
}

/// `sock:inet_sock_set_state` (4.16+): marks the in-flight connect as TCP when the socket
/// enters SYN_SENT in the connecting thread's context.
#[tracepoint]
pub fn net_tcp_state(ctx: TracePointContext) -> u32 {
    match try_net_tcp_state(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            count(e);
            0
        }
    }
}

/// `syscalls:sys_exit_connect` (ret).
#[tracepoint]
pub fn net_connect_ret(ctx: TracePointContext) -> u32 {
    match try_net_connect_ret(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            count(e);
            0
        }
    }
}

fn try_net_connect(ctx: &TracePointContext) -> Result<(), u32> {
    let Some((tgid, tid)) = current() else {
        return Ok(());
    };
    let fd: u64 = sys_arg(ctx, 0)?;
    let addr: *const u8 = sys_arg(ctx, 1)?;
    // SAFETY: user reads through the fault-tolerant helper.
    let family: u16 = unsafe { aya_ebpf::helpers::bpf_probe_read_user(addr as *const u16) }
        .map_err(|_| stat::READ_USER_FAILED)?;
    let mut ev = ConnectEvent {
        hdr: header(kind::CONNECT, tgid, tid),
        fd: fd as i32,
        ret: 0,
        family,
        proto: PROTO_UNKNOWN,
        _pad0: 0,
        dport: 0,
        _pad1: 0,
        daddr: [0; 16],
    };
    // sockaddr_in: family(2) port(2) addr(4); sockaddr_in6: family(2) port(2) flow(4) addr(16)
    let port: u16 = unsafe { aya_ebpf::helpers::bpf_probe_read_user(addr.add(2) as *const u16) }
        .map_err(|_| stat::READ_USER_FAILED)?;
    ev.dport = u16::from_be(port);
    match family {
        AF_INET => {
            let a: [u8; 4] =
                unsafe { aya_ebpf::helpers::bpf_probe_read_user(addr.add(4) as *const [u8; 4]) }
                    .map_err(|_| stat::READ_USER_FAILED)?;
            ev.daddr[..4].copy_from_slice(&a);
        }
        AF_INET6 => {
            ev.daddr =
                unsafe { aya_ebpf::helpers::bpf_probe_read_user(addr.add(8) as *const [u8; 16]) }
                    .map_err(|_| stat::READ_USER_FAILED)?;
        }
        _ => return Ok(()), // unix, netlink, ...: not network connections
    }
    CONNECT_STASH.insert(tid, ev, 0).map_err(|_| stat::MAP_FULL)
}

fn try_net_tcp_state(ctx: &TracePointContext) -> Result<(), u32> {
    // SAFETY: offsets from the tracepoint's format (newstate at 20, protocol at 30).
    let newstate: i32 = unsafe { ctx.read_at(20) }.map_err(|_| stat::READ_KERNEL_FAILED)?;
    if newstate != TCP_SYN_SENT {
        return Ok(());
    }
    let protocol: u16 = unsafe { ctx.read_at(30) }.map_err(|_| stat::READ_KERNEL_FAILED)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let Some((_, tid)) = current() else {
        return Ok(());
    };
    if let Some(ev) = CONNECT_STASH.get_ptr_mut(tid) {
        // SAFETY: map value owned by this thread's in-flight connect.
        unsafe { (*ev).proto = PROTO_TCP };
    }
    Ok(())
}

fn try_net_connect_ret(ctx: &TracePointContext) -> Result<(), u32> {
    let Some((tgid, tid)) = current() else {
        return Ok(());
    };
    let Some(stashed) = CONNECT_STASH.get_ptr(tid) else {
        return Ok(());
    };
    // SAFETY: map value pointer valid until removed below.
    let mut ev = unsafe { *stashed };
    let _ = CONNECT_STASH.remove(tid);
    let ret: i64 = sys_arg(ctx, 0)?;
    ev.ret = ret as i32;
    ev.hdr = header(kind::CONNECT, tgid, tid);
    EVENTS
        .output::<ConnectEvent>(&ev, lazy_wakeup())
        .map_err(|_| stat::RINGBUF_FULL_CONNECT)
}
