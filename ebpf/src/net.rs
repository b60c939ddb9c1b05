//! Outbound connections, from the kernel's connect path rather than from syscalls: the
//! `cgroup/connect4|6` hooks see every connect (io_uring's too) with the kernel's copy of the
//! address, `cgroup/sendmsg4|6` the destinations of unconnected UDP sockets, and
//! `inet_sock_set_state` the outcome of each TCP handshake and the close of followed sockets.
//! State per socket lives in socket-local storage (`SOCKS`), freed with the socket.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_socket_cookie, bpf_sk_storage_get},
    macros::{btf_tracepoint, cgroup_sock_addr},
    maps::lpm_trie::Key,
    programs::{BtfTracePointContext, SockAddrContext},
};
use minerwatch_common::{
    CONNECT_UNCONNECTED_SEND, CloseEvent, ConnectEvent, DNS_PORT, PROTO_TCP, PROTO_UDP,
    SOCK_CONNECTING, SOCK_DNS, SOCK_STREAM_KEPT, SOCK_TCP, SOCK_WATCH, SockState, kind, stat,
};

use crate::{
    maps::{EVENTS, EVENTS_HI, POOL_ADDRS, SOCKS, socks_ptr},
    util::{count, current, header, kread, lazy_wakeup, offsets},
};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const ECONNREFUSED: u32 = 111;
/// Allow the operation: these hooks only watch.
const ALLOW: i32 = 1;

/// `cgroup/connect4` on the root cgroup v2 (4.17+): follows TCP sockets, reports connected
/// UDP sockets.
#[cgroup_sock_addr(connect4)]
pub fn net_connect4(ctx: SockAddrContext) -> i32 {
    if let Err(e) = on_connect::<AF_INET>(&ctx) {
        count(e);
    }
    ALLOW
}

/// `cgroup/connect6` on the root cgroup v2 (4.17+).
#[cgroup_sock_addr(connect6)]
pub fn net_connect6(ctx: SockAddrContext) -> i32 {
    if let Err(e) = on_connect::<AF_INET6>(&ctx) {
        count(e);
    }
    ALLOW
}

/// `cgroup/sendmsg4` on the root cgroup v2 (4.18+): runs only for sends on unconnected UDP
/// sockets, and carries no payload.
#[cgroup_sock_addr(sendmsg4)]
pub fn net_sendmsg4(ctx: SockAddrContext) -> i32 {
    if let Err(e) = on_sendmsg::<AF_INET>(&ctx) {
        count(e);
    }
    ALLOW
}

/// `cgroup/sendmsg6` on the root cgroup v2 (4.18+).
#[cgroup_sock_addr(sendmsg6)]
pub fn net_sendmsg6(ctx: SockAddrContext) -> i32 {
    if let Err(e) = on_sendmsg::<AF_INET6>(&ctx) {
        count(e);
    }
    ALLOW
}

/// The destination in a sock_addr context: (port, address). One copy per family: the
/// verifier allows `user_ip4` only in the v4 hooks and `user_ip6` only in the v6 ones, and
/// each field must be a 4-byte load at a constant offset of the context (volatile, so the
/// compiler cannot merge them into pointer arithmetic).
#[inline(always)]
fn destination<const FAMILY: u16>(ctx: &SockAddrContext) -> (u16, [u8; 16]) {
    let sa = ctx.sock_addr;
    // SAFETY: the context the kernel passed; these fields are readable in these hooks.
    let port = unsafe { core::ptr::read_volatile(&raw const (*sa).user_port) };
    let mut daddr = [0u8; 16];
    if FAMILY == AF_INET {
        // SAFETY: as above.
        let a = unsafe { core::ptr::read_volatile(&raw const (*sa).user_ip4) };
        daddr[..4].copy_from_slice(&a.to_ne_bytes());
    } else {
        // SAFETY: as above, each word at its own constant offset.
        let w = unsafe {
            [
                core::ptr::read_volatile(&raw const (*sa).user_ip6[0]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[1]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[2]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[3]),
            ]
        };
        daddr[..4].copy_from_slice(&w[0].to_ne_bytes());
        daddr[4..8].copy_from_slice(&w[1].to_ne_bytes());
        daddr[8..12].copy_from_slice(&w[2].to_ne_bytes());
        daddr[12..].copy_from_slice(&w[3].to_ne_bytes());
    }
    (u16::from_be(port as u16), daddr)
}

#[inline(always)]
fn connect_event(
    tgid: u32,
    tid: u32,
    st: &SockState,
    proto: u8,
    flags: u8,
    error: u32,
) -> ConnectEvent {
    let mut hdr = header(kind::CONNECT, tgid, tid);
    hdr.cgroup_id = st.cgroup_id;
    ConnectEvent {
        hdr,
        cookie: st.cookie,
        error,
        family: st.family,
        proto,
        flags,
        dport: st.dport,
        _pad: [0; 6],
        daddr: st.daddr,
    }
}

fn on_connect<const FAMILY: u16>(ctx: &SockAddrContext) -> Result<(), u32> {
    let family = FAMILY;
    let Some((tgid, tid)) = current() else {
        return Ok(());
    };
    // SAFETY: readable in connect hooks.
    let ty = unsafe { (*ctx.sock_addr).type_ };
    if ty != SOCK_STREAM && ty != SOCK_DGRAM {
        return Ok(());
    }
    let (dport, daddr) = destination::<FAMILY>(ctx);
    let proto = if ty == SOCK_DGRAM {
        PROTO_UDP
    } else {
        PROTO_TCP
    };
    let mut fresh = SockState {
        // SAFETY: helpers allowed for sock_addr programs.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        cgroup_id: unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() },
        tgid,
        flags: 0,
        family,
        dport,
        daddr,
        ..SockState::default()
    };
    pool_check(tid, &fresh, proto);
    if ty == SOCK_DGRAM {
        // A connected UDP socket (resolvers connect theirs): reported now. One connected to
        // port 53 is followed for its DNS messages; storage it had from an earlier
        // destination is brought up to date.
        let ev = connect_event(tgid, tid, &fresh, PROTO_UDP, 0, 0);
        let dns = dport == DNS_PORT;
        // SAFETY: the socket of this context; storage is created only for a DNS socket.
        let st = unsafe {
            if dns {
                SOCKS.get_or_insert_ptr_mut(ctx, Some(&mut fresh))
            } else {
                SOCKS.get_ptr_mut(ctx)
            }
        };
        if !st.is_null() {
            // SAFETY: storage of this socket, under the socket lock in the connect path.
            let st = unsafe { &mut *st };
            *st = fresh;
            if dns {
                st.flags = SOCK_DNS;
            }
        } else if dns {
            count(stat::SOCK_STORAGE_FAILED);
        }
        return EVENTS
            .output::<ConnectEvent>(&ev, lazy_wakeup())
            .map_err(|_| stat::RINGBUF_FULL_CONNECT);
    }
    fresh.flags = SOCK_WATCH | SOCK_CONNECTING | SOCK_TCP;
    if dport == DNS_PORT {
        fresh.flags |= SOCK_DNS; // DNS over TCP: its answers are read too
    }
    // SAFETY: helper with no preconditions.
    fresh.flow.opened_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    // SAFETY: the socket of this context; the helper creates the storage if missing.
    let st = unsafe { SOCKS.get_or_insert_ptr_mut(ctx, Some(&mut fresh)) };
    if st.is_null() {
        return Err(stat::SOCK_STORAGE_FAILED);
    }
    // A socket connected again after a failed connect starts over.
    // SAFETY: storage of this socket, under the socket lock in the connect path.
    unsafe { *st = fresh };
    Ok(())
}

/// Reports a connect to an address on a pool list, on the decisive ring: one trie lookup
/// per connect, and a record only for the few that match.
#[inline(always)]
fn pool_check(tid: u32, st: &SockState, proto: u8) {
    let mut addr = st.daddr;
    let mut bits = 128;
    if st.family == AF_INET {
        // IPv4-mapped: ::ffff:a.b.c.d
        addr = [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
        ];
    } else if st.family != AF_INET6 {
        bits = 0;
    }
    if bits == 0 {
        return;
    }
    let Some(&entry) = POOL_ADDRS.get(Key::new(bits, addr)) else {
        return;
    };
    let mut ev = connect_event(st.tgid, tid, st, proto, 0, entry);
    ev.hdr.kind = kind::POOL_CONNECT;
    if EVENTS_HI.output::<ConnectEvent>(&ev, 0).is_err() {
        count(stat::RINGBUF_FULL_POOL);
    }
}

fn on_sendmsg<const FAMILY: u16>(ctx: &SockAddrContext) -> Result<(), u32> {
    let family = FAMILY;
    let Some((tgid, tid)) = current() else {
        return Ok(());
    };
    // SAFETY: readable in sendmsg hooks.
    if unsafe { (*ctx.sock_addr).type_ } != SOCK_DGRAM {
        return Ok(());
    }
    let (dport, daddr) = destination::<FAMILY>(ctx);
    // SAFETY: the socket of this context.
    let st = unsafe { SOCKS.get_or_insert_ptr_mut(ctx, None) };
    if st.is_null() {
        return Err(stat::SOCK_STORAGE_FAILED);
    }
    // SAFETY: storage of this socket; concurrent senders on one socket may both report a
    // change, which costs a duplicate record and nothing else.
    let st = unsafe { &mut *st };
    if st.cookie != 0 && st.dport == dport && st.family == family && st.daddr == daddr {
        return Ok(()); // same destination as the last datagram
    }
    // SAFETY: helpers allowed for sock_addr programs.
    st.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    st.cgroup_id = unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() };
    st.tgid = tgid;
    st.family = family;
    st.dport = dport;
    st.daddr = daddr;
    // Datagrams to port 53 are DNS messages; the answers come back to this socket.
    if dport == DNS_PORT {
        st.flags |= SOCK_DNS;
    } else {
        st.flags &= !SOCK_DNS;
    }
    pool_check(tid, st, PROTO_UDP);
    let ev = connect_event(tgid, tid, st, PROTO_UDP, CONNECT_UNCONNECTED_SEND, 0);
    EVENTS
        .output::<ConnectEvent>(&ev, lazy_wakeup())
        .map_err(|_| stat::RINGBUF_FULL_CONNECT)
}

/// BTF tracepoint `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`
/// (5.5+; socket storage from tracing programs 5.11+). Only sockets with storage are looked
/// at: the end of a followed connect's handshake is its outcome, and the close of a socket
/// whose bytes user space keeps lets it drop them. `sk->sk_err` (BTF offset) says why a
/// connect failed.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn net_tcp_state(ctx: BtfTracePointContext) -> u32 {
    if let Err(e) = try_net_tcp_state(&ctx) {
        count(e);
    }
    0
}

fn try_net_tcp_state(ctx: &BtfTracePointContext) -> Result<(), u32> {
    let sk: *mut c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if old != TCP_SYN_SENT && new != TCP_CLOSE {
        return Ok(());
    }
    // SAFETY: `sk` is the tracepoint's trusted socket pointer; lookup only, no creation.
    let st = unsafe { bpf_sk_storage_get(socks_ptr(), sk, core::ptr::null_mut(), 0) };
    if st.is_null() {
        return Ok(());
    }
    // SAFETY: storage of this socket, under its lock on state changes.
    let st = unsafe { &mut *st.cast::<SockState>() };
    if old == TCP_SYN_SENT && st.flags & SOCK_CONNECTING != 0 {
        st.flags &= !SOCK_CONNECTING;
        let error = if new == TCP_ESTABLISHED {
            0
        } else {
            match offsets().sock_err {
                0 => ECONNREFUSED,
                off => match kread::<i32>(sk as *const u8, off) {
                    Ok(e) if e > 0 => e as u32,
                    _ => ECONNREFUSED,
                },
            }
        };
        let ev = connect_event(st.tgid, 0, st, PROTO_TCP, 0, error);
        if EVENTS.output::<ConnectEvent>(&ev, lazy_wakeup()).is_err() {
            count(stat::RINGBUF_FULL_CONNECT);
        }
    }
    if new == TCP_CLOSE && st.flags & SOCK_STREAM_KEPT != 0 {
        st.flags &= !(SOCK_STREAM_KEPT | SOCK_WATCH);
        let mut hdr = header(kind::CLOSE, st.tgid, 0);
        hdr.cgroup_id = st.cgroup_id;
        let ev = CloseEvent {
            hdr,
            cookie: st.cookie,
        };
        if EVENTS.output::<CloseEvent>(&ev, lazy_wakeup()).is_err() {
            count(stat::RINGBUF_FULL_CLOSE);
        }
    }
    Ok(())
}

/// Storage of `sk` if it has one (for the egress hook).
#[inline(always)]
pub fn storage_of(sk: *mut c_void) -> *mut SockState {
    // SAFETY: `sk` is a full socket from `bpf_sk_fullsock`; lookup only.
    unsafe { bpf_sk_storage_get(socks_ptr(), sk, core::ptr::null_mut(), 0) }.cast()
}
