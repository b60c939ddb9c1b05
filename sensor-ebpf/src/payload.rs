//! First bytes on new TCP connections, taken from the packets as they leave. A TCP socket
//! gets socket-local storage at `cgroup/connect4|6` (see `net`); `cgroup_skb/egress` copies
//! the payload of that socket's first packets. No program runs for writes to files or pipes
//! at all, and every send path is covered (write, send*, writev, sendfile, io_uring). A
//! packet of a socket that is not followed costs one storage lookup.
//!
//! The budget is counted in bytes ([`WATCH_BYTES`]), with a cap on records
//! ([`WATCH_RECORDS`]) that a login written one byte per packet stays far below; records are
//! sized to the bytes they carry. A record lost to a full ring is a gap in the stream,
//! flagged on the next record, never the end of capture for that socket.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_ringbuf_output, bpf_sk_fullsock, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use sensor_common::{
    PAYLOAD_CAP, PAYLOAD_GAP, PAYLOAD_LAST, PayloadEvent, SOCK_GAP, SOCK_STREAM_KEPT, SOCK_WATCH,
    WATCH_BYTES, WATCH_RECORDS, kind, stat,
};

use crate::{
    maps::{EVENTS_HI, PAYLOAD_SCRATCH},
    net::storage_of,
    util::{BPF_RB_FORCE_WAKEUP, count},
};

const IPPROTO_TCP: u8 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_FLAG_SYN: u8 = 0x02;
/// Allow the packet: this hook only watches.
const ALLOW: i32 = 1;
/// Bytes of a payload record before its data.
const PAYLOAD_FIXED: u64 = (size_of::<PayloadEvent>() - PAYLOAD_CAP) as u64;

/// `cgroup_skb/egress` on the root cgroup v2 (4.10+; socket storage from here 5.2+).
#[cgroup_skb(egress)]
pub fn net_egress(ctx: SkBuffContext) -> i32 {
    if let Err(e) = try_net_egress(&ctx) {
        count(e);
    }
    ALLOW
}

/// Where a packet's TCP payload is.
struct Tcp {
    seq: u32,
    syn: bool,
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
    let l4 = match v >> 4 {
        4 => {
            let mut proto: u8 = 0;
            load(ctx, 9, &mut proto)?;
            if proto != IPPROTO_TCP {
                return Ok(None);
            }
            u32::from(v & 0x0f) * 4
        }
        6 => {
            let mut next: u8 = 0;
            load(ctx, 6, &mut next)?;
            if next != IPPROTO_TCP {
                return Ok(None); // extension headers are not followed
            }
            40
        }
        _ => return Ok(None),
    };
    let mut hdr = [0u8; 14];
    load(ctx, l4, &mut hdr)?;
    Ok(Some(Tcp {
        seq: u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
        syn: hdr[13] & TCP_FLAG_SYN != 0,
        payload_off: l4 + u32::from(hdr[12] >> 4) * 4,
    }))
}

fn try_net_egress(ctx: &SkBuffContext) -> Result<(), u32> {
    // SAFETY: the context's socket, as the kernel exposes it to cgroup_skb programs.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    // SAFETY: helper allowed for cgroup_skb programs.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return Ok(());
    }
    let st = storage_of(sk.cast());
    if st.is_null() {
        return Ok(());
    }
    // SAFETY: storage of this socket; its packets leave one at a time under its lock.
    let st = unsafe { &mut *st };
    if st.flags & SOCK_WATCH == 0 {
        return Ok(());
    }
    let Some(tcp) = parse(ctx)? else {
        return Ok(());
    };
    let len = ctx.len();
    if len <= tcp.payload_off {
        return Ok(()); // SYN, pure ACK, FIN
    }
    let total = len - tcp.payload_off;
    // Data in a SYN (TCP Fast Open) starts one past the SYN's sequence number.
    let seq = if tcp.syn {
        tcp.seq.wrapping_add(1)
    } else {
        tcp.seq
    };
    if st.has_isn == 0 {
        st.isn = seq;
        st.has_isn = 1;
    }
    // A retransmission or a reordered packet: the stream is reassembled in order only.
    if seq.wrapping_sub(st.isn) != st.bytes {
        return Ok(());
    }
    let offset = st.bytes;
    st.bytes = st.bytes.wrapping_add(total);
    let ev = PAYLOAD_SCRATCH.get_ptr_mut(0).ok_or(stat::MAP_FULL)?;
    // SAFETY: this CPU's scratch slot, owned by this program invocation.
    let ev = unsafe { &mut *ev };
    let n = if total > PAYLOAD_CAP as u32 {
        PAYLOAD_CAP as u32
    } else {
        total
    };
    // SAFETY: reload and clamp so the verifier sees 1 <= n <= PAYLOAD_CAP, the size of `data`.
    let n = unsafe {
        let mut n = core::ptr::read_volatile(&n);
        if n > PAYLOAD_CAP as u32 {
            n = PAYLOAD_CAP as u32;
        }
        if n == 0 {
            return Ok(());
        }
        if bpf_skb_load_bytes(
            ctx.as_ptr(),
            tcp.payload_off,
            ev.data.as_mut_ptr().cast(),
            n,
        ) < 0
        {
            return Err(stat::READ_KERNEL_FAILED);
        }
        n
    };
    st.records += 1;
    let mut flags = 0;
    if st.flags & SOCK_GAP != 0 {
        flags |= PAYLOAD_GAP;
    }
    let done = st.bytes >= WATCH_BYTES || st.records >= WATCH_RECORDS;
    if done {
        flags |= PAYLOAD_LAST;
        if st.bytes < WATCH_BYTES {
            count(stat::PAYLOAD_RECORDS_CAPPED);
        }
    }
    ev.hdr.kind = kind::PAYLOAD;
    ev.hdr.tgid = st.tgid;
    ev.hdr.tid = 0;
    ev.hdr._pad = 0;
    // SAFETY: helper with no preconditions.
    ev.hdr.ktime_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    ev.hdr.cgroup_id = st.cgroup_id;
    ev.cookie = st.cookie;
    ev.family = if st.family == AF_INET6 {
        AF_INET6
    } else {
        AF_INET
    };
    ev.dport = st.dport;
    ev.flags = flags;
    ev.daddr = st.daddr;
    ev.offset = offset;
    ev.len = n;
    ev.total = total;
    ev._pad1 = 0;
    // Only the captured bytes go into the ring. Stratum alerts wait on this record: wake the
    // reader at once.
    let size = PAYLOAD_FIXED + u64::from(n);
    let size = if size > size_of::<PayloadEvent>() as u64 {
        size_of::<PayloadEvent>() as u64
    } else {
        size
    };
    // SAFETY: `ev` is valid for size_of::<PayloadEvent>() bytes and `size` is at most that.
    let ret = unsafe {
        bpf_ringbuf_output(
            core::ptr::from_ref(&EVENTS_HI).cast_mut().cast(),
            core::ptr::from_mut(ev).cast(),
            size,
            BPF_RB_FORCE_WAKEUP,
        )
    };
    if ret < 0 {
        // The stream goes on: the next record carries the gap, user space resynchronises.
        st.flags |= SOCK_GAP;
        st.records -= 1;
        return Err(stat::RINGBUF_FULL_PAYLOAD);
    }
    st.flags &= !SOCK_GAP;
    st.flags |= SOCK_STREAM_KEPT;
    if done {
        st.flags &= !SOCK_WATCH;
    }
    Ok(())
}
