//! First bytes on new TCP connections, taken from the packets as they leave. A TCP socket
//! is registered (by cookie, with the process that connects it) at `cgroup/connect4|6`;
//! `cgroup_skb/egress` copies the payload of that socket's first packets. No program runs
//! for writes to files or pipes at all, and every send path is covered (write, send*,
//! writev, sendfile, io_uring). A packet of an unwatched socket costs one hash lookup.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    macros::{cgroup_skb, cgroup_sock_addr},
    programs::{SkBuffContext, SockAddrContext},
};
use sensor_common::{
    EventHeader, PAYLOAD_CAP, PayloadEvent, WATCH_BYTES, WATCH_SENDS, WatchState, kind, stat,
};

use crate::{
    maps::{EVENTS, WATCH},
    util::{BPF_RB_FORCE_WAKEUP, count, current},
};

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u8 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// Allow the connect: these hooks only watch.
const ALLOW: i32 = 1;

/// `cgroup/connect4` on the root cgroup v2 (4.17+): registers TCP sockets by cookie.
#[cgroup_sock_addr(connect4)]
pub fn net_sock_connect4(ctx: SockAddrContext) -> i32 {
    register(&ctx);
    ALLOW
}

/// `cgroup/connect6` on the root cgroup v2 (4.17+).
#[cgroup_sock_addr(connect6)]
pub fn net_sock_connect6(ctx: SockAddrContext) -> i32 {
    register(&ctx);
    ALLOW
}

#[inline(always)]
fn register(ctx: &SockAddrContext) {
    let Some((tgid, _)) = current() else {
        return;
    };
    // SAFETY: the context pointer the kernel passed; `type_` is readable in connect hooks.
    if unsafe { (*ctx.sock_addr).type_ } != SOCK_STREAM {
        return;
    }
    // SAFETY: helper allowed for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let st = WatchState {
        tgid,
        ..WatchState::default()
    };
    if WATCH.insert(cookie, st, 0).is_err() {
        count(stat::MAP_FULL);
    }
}

/// `cgroup_skb/egress` on the root cgroup v2 (4.10+).
#[cgroup_skb(egress)]
pub fn net_egress(ctx: SkBuffContext) -> i32 {
    if let Err(e) = try_net_egress(&ctx) {
        count(e);
    }
    ALLOW
}

/// Where a packet's TCP payload is, and where it goes.
struct Tcp {
    family: u16,
    daddr: [u8; 16],
    dport: u16,
    seq: u32,
    payload_off: u32,
}

fn load<T: Copy>(ctx: &SkBuffContext, off: u32, out: &mut T) -> Result<(), u32> {
    // SAFETY: bounded copy out of the skb into a local of size_of::<T>().
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr(),
            off,
            (out as *mut T).cast::<c_void>(),
            size_of::<T>() as u32,
        )
    };
    if r < 0 {
        Err(stat::READ_KERNEL_FAILED)
    } else {
        Ok(())
    }
}

/// Parses the IPv4/IPv6 and TCP headers; `None` for anything else.
fn parse(ctx: &SkBuffContext) -> Result<Option<Tcp>, u32> {
    let mut v: u8 = 0;
    load(ctx, 0, &mut v)?;
    let mut daddr = [0u8; 16];
    let (family, l4) = match v >> 4 {
        4 => {
            let mut proto: u8 = 0;
            load(ctx, 9, &mut proto)?;
            if proto != IPPROTO_TCP {
                return Ok(None);
            }
            let mut a = [0u8; 4];
            load(ctx, 16, &mut a)?;
            daddr[..4].copy_from_slice(&a);
            (AF_INET, u32::from(v & 0x0f) * 4)
        }
        6 => {
            let mut next: u8 = 0;
            load(ctx, 6, &mut next)?;
            if next != IPPROTO_TCP {
                return Ok(None); // extension headers are not followed
            }
            load(ctx, 24, &mut daddr)?;
            (AF_INET6, 40)
        }
        _ => return Ok(None),
    };
    let mut hdr = [0u8; 13];
    load(ctx, l4, &mut hdr)?;
    Ok(Some(Tcp {
        family,
        daddr,
        dport: u16::from_be_bytes([hdr[2], hdr[3]]),
        seq: u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
        payload_off: l4 + u32::from(hdr[12] >> 4) * 4,
    }))
}

fn try_net_egress(ctx: &SkBuffContext) -> Result<(), u32> {
    // SAFETY: helper allowed for cgroup_skb programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(state) = WATCH.get_ptr_mut(cookie) else {
        return Ok(());
    };
    // SAFETY: map value; packets of one socket leave one at a time under its lock.
    let state = unsafe { &mut *state };
    let Some(tcp) = parse(ctx)? else {
        return Ok(());
    };
    let len = ctx.len();
    if len <= tcp.payload_off {
        return Ok(()); // SYN, pure ACK, FIN
    }
    let total = len - tcp.payload_off;
    if state.has_isn == 0 {
        state.isn = tcp.seq;
        state.has_isn = 1;
    }
    // A retransmission or a reordered packet: the stream is reassembled in order only.
    if tcp.seq.wrapping_sub(state.isn) != state.bytes {
        return Ok(());
    }
    let budget = WATCH_BYTES.saturating_sub(state.bytes);
    let mut n = if total < budget { total } else { budget };
    if n > PAYLOAD_CAP as u32 {
        n = PAYLOAD_CAP as u32;
    }
    let Some(mut entry) = EVENTS.reserve::<PayloadEvent>(0) else {
        return Err(stat::RINGBUF_FULL_PAYLOAD);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved ring-buffer memory; `n` is reloaded and clamped so the verifier can
    // see 1 <= n <= PAYLOAD_CAP, the size of `data`.
    let copied = unsafe {
        let mut n = core::ptr::read_volatile(&n);
        if n > PAYLOAD_CAP as u32 {
            n = PAYLOAD_CAP as u32;
        }
        if n == 0 {
            0
        } else if bpf_skb_load_bytes(
            ctx.as_ptr(),
            tcp.payload_off,
            (*ev).data.as_mut_ptr().cast(),
            n,
        ) < 0
        {
            entry.discard(0);
            return Err(stat::READ_KERNEL_FAILED);
        } else {
            n
        }
    };
    // SAFETY: as above; every field user space reads is written.
    unsafe {
        (*ev).hdr = EventHeader {
            kind: kind::PAYLOAD,
            tgid: state.tgid,
            tid: 0,
            _pad: 0,
            ktime_ns: aya_ebpf::helpers::bpf_ktime_get_ns(),
            cgroup_id: bpf_skb_cgroup_id(ctx.as_ptr().cast()),
        };
        (*ev).cookie = cookie;
        (*ev).family = tcp.family;
        (*ev).dport = tcp.dport;
        (*ev)._pad0 = 0;
        (*ev).daddr = tcp.daddr;
        (*ev).offset = state.bytes;
        (*ev).len = copied;
        (*ev).total = total;
        (*ev)._pad1 = 0;
    }
    // Stratum alerts wait on this event: wake the reader even behind lazily sent events.
    entry.submit(BPF_RB_FORCE_WAKEUP);
    state.bytes += total;
    state.sends += 1;
    if state.bytes >= WATCH_BYTES || state.sends >= WATCH_SENDS {
        let _ = WATCH.remove(cookie);
    }
    Ok(())
}
