//! First bytes on new TCP connections, taken from the packets as they leave. A TCP socket
//! gets socket-local storage at `cgroup/connect4|6` (see `net`); `cgroup_skb/egress` copies
//! the payload of that socket's first packets. No program runs for writes to files or pipes
//! at all, and every send path is covered (write, send*, writev, sendfile, io_uring). A
//! packet of a socket that is not followed costs one storage lookup.
//!
//! The budget is counted in bytes ([`WATCH_BYTES`]), with a cap on records
//! ([`WATCH_RECORDS`]) that a login written one byte per packet stays far below; records are
//! sized to the bytes they carry. Whitespace before the first message is skipped, not sent
//! and not counted (up to [`BLANK_MAX`]), so padding cannot spend the budget. A record lost
//! to a full ring is a gap in the stream, flagged on the next record, never the end of
//! capture for that socket.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_loop, bpf_ringbuf_output, bpf_sk_fullsock, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use minerwatch_common::{
    BLANK_MAX, PAYLOAD_AFTER_BLANK, PAYLOAD_CAP, PAYLOAD_GAP, PAYLOAD_LAST, PROCESS_DNS_BYTES,
    PROCESS_PAYLOAD_BYTES, PayloadBudget, PayloadEvent, SOCK_DNS, SOCK_GAP, SOCK_STREAM_KEPT,
    SOCK_TCP, SOCK_WATCH, WATCH_BYTES, WATCH_RECORDS, kind, stat,
};

use crate::{
    maps::{DNS_BUDGETS, EVENTS_HI, PAYLOAD_BUDGETS, PAYLOAD_SCRATCH},
    net::storage_of,
    util::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, count},
};

pub const IPPROTO_TCP: u8 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_FLAG_SYN: u8 = 0x02;
/// Allow the packet: this hook only watches.
const ALLOW: i32 = 1;
/// Bytes of a payload record before its data.
pub const PAYLOAD_FIXED: u64 = (size_of::<PayloadEvent>() - PAYLOAD_CAP) as u64;

/// `cgroup_skb/egress` on the root cgroup v2 (4.10+; socket storage from here 5.2+; the
/// whitespace scan's `bpf_loop` 5.17+).
#[cgroup_skb(egress)]
pub fn net_egress(ctx: SkBuffContext) -> i32 {
    if let Err(e) = try_net_egress::<true>(&ctx) {
        count(e);
    }
    ALLOW
}

/// `net_egress` without the whitespace scan, for kernels without `bpf_loop` (before 5.17):
/// the loader attaches it when the full program is refused, and says what it lacks.
#[cgroup_skb(egress)]
pub fn net_egress_plain(ctx: SkBuffContext) -> i32 {
    if let Err(e) = try_net_egress::<false>(&ctx) {
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

pub fn load<T: Copy>(ctx: &SkBuffContext, off: u32, out: &mut T) -> Result<(), u32> {
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

/// Where the layer-4 header of a packet of protocol `proto` starts: after IPv4's header (its
/// IHL) or IPv6's fixed 40 bytes (extension headers are not followed); `None` for anything
/// else. Inlined, as its callers are: an out-of-line `Result<Option<_>, u32>` gets a BTF
/// union layout the kernel refuses.
#[inline(always)]
pub fn l4_offset(ctx: &SkBuffContext, proto: u8) -> Result<Option<u32>, u32> {
    let mut v: u8 = 0;
    load(ctx, 0, &mut v)?;
    let (at, off) = match v >> 4 {
        4 => (9, u32::from(v & 0x0f) * 4),
        6 => (6, 40),
        _ => return Ok(None),
    };
    let mut next: u8 = 0;
    load(ctx, at, &mut next)?;
    Ok((next == proto).then_some(off))
}

/// Where the TCP payload of a packet starts (after the header's data offset); `None` when
/// it is not TCP.
#[inline(always)]
pub fn tcp_payload(ctx: &SkBuffContext) -> Result<Option<u32>, u32> {
    let Some(l4) = l4_offset(ctx, IPPROTO_TCP)? else {
        return Ok(None);
    };
    let mut doff: u8 = 0;
    load(ctx, l4 + 12, &mut doff)?;
    Ok(Some(l4 + u32::from(doff >> 4) * 4))
}

/// Parses the IPv4/IPv6 and TCP headers; `None` for anything else.
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Result<Option<Tcp>, u32> {
    let Some(l4) = l4_offset(ctx, IPPROTO_TCP)? else {
        return Ok(None);
    };
    let mut hdr = [0u8; 14];
    load(ctx, l4, &mut hdr)?;
    Ok(Some(Tcp {
        seq: u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
        syn: hdr[13] & TCP_FLAG_SYN != 0,
        payload_off: l4 + u32::from(hdr[12] >> 4) * 4,
    }))
}

/// Chunks of a packet scanned for leading whitespace, [`PAYLOAD_CAP`] bytes each: 64 KiB,
/// the largest packet (a GSO segment) the hook sees.
const BLANK_CHUNKS: u32 = 64;
/// Words of 8 bytes in one chunk.
const CHUNK_WORDS: u32 = (PAYLOAD_CAP / 8) as u32;

/// What the whitespace scan shares with its `bpf_loop` callback.
#[repr(C)]
struct BlankScan {
    data: *const u8,
    len: u32,
    blank: u32,
}

#[inline(always)]
fn is_blank(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Eight bytes of the scan: counts the whitespace at their start, and goes on while all
/// eight are whitespace.
unsafe extern "C" fn blank_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `BlankScan`, alive for the whole `bpf_loop`.
    let scan = unsafe { &mut *ctx.cast::<BlankScan>() };
    let start = (index as u32 & (CHUNK_WORDS - 1)) * 8;
    if start >= scan.len {
        return 1;
    }
    let mut i = 0;
    while i < 8 {
        if start + i >= scan.len {
            return 1;
        }
        // SAFETY: `data` is the scratch buffer of PAYLOAD_CAP bytes; start + i < PAYLOAD_CAP.
        let c = unsafe { *scan.data.add(((start + i) as usize) & (PAYLOAD_CAP - 1)) };
        if !is_blank(c) {
            return 1;
        }
        scan.blank += 1;
        i += 1;
    }
    0
}

/// How many of the `total` bytes at `off` are whitespace before anything else, looking at
/// up to [`BLANK_CHUNKS`] chunks; `buf` is scratch of [`PAYLOAD_CAP`] bytes.
fn blank_prefix(ctx: &SkBuffContext, off: u32, total: u32, buf: &mut [u8; PAYLOAD_CAP]) -> u32 {
    let mut blank = 0u32;
    for _ in 0..BLANK_CHUNKS {
        let rest = total.saturating_sub(blank);
        // SAFETY: reload and clamp so the verifier sees 1 <= n <= PAYLOAD_CAP.
        let n = unsafe {
            let mut n = core::ptr::read_volatile(&rest);
            if n > PAYLOAD_CAP as u32 {
                n = PAYLOAD_CAP as u32;
            }
            if n == 0 {
                return blank;
            }
            if bpf_skb_load_bytes(ctx.as_ptr(), off + blank, buf.as_mut_ptr().cast(), n) < 0 {
                return blank;
            }
            n
        };
        let mut scan = BlankScan {
            data: buf.as_ptr(),
            len: n,
            blank: 0,
        };
        // SAFETY: the callback reads `scan` and `buf` only, both alive across the call.
        unsafe {
            bpf_loop(
                CHUNK_WORDS,
                blank_step as *mut c_void,
                core::ptr::from_mut(&mut scan).cast(),
                0,
            )
        };
        blank += scan.blank;
        if scan.blank < n {
            break;
        }
    }
    blank
}

/// A fresh budget, `size` bytes into its first second.
#[inline(always)]
fn fresh_budget(size: u32, now: u64) -> PayloadBudget {
    PayloadBudget {
        window_ns: now,
        bytes: size,
        _pad: 0,
    }
}

/// Takes `size` bytes of budget `b` (`limit` a second); false when they are spent.
#[inline(always)]
fn take(b: *mut PayloadBudget, size: u32, now: u64, limit: u32) -> bool {
    // SAFETY: a value of a budget map; concurrent updates from two CPUs can only miscount a
    // little, never fault.
    let b = unsafe { &mut *b };
    if now.wrapping_sub(b.window_ns) >= 1_000_000_000 {
        b.window_ns = now;
        b.bytes = 0;
    }
    if b.bytes.saturating_add(size) > limit {
        return false;
    }
    b.bytes += size;
    true
}

/// Takes `size` bytes of `tgid`'s DNS budget ([`PROCESS_DNS_BYTES`] a second); false when
/// it is spent. The map evicts its least recently used entry, so an entry can always be made.
pub fn within_dns_budget(tgid: u32, size: u32, now: u64) -> bool {
    match DNS_BUDGETS.get_ptr_mut(tgid) {
        Some(b) => take(b, size, now, PROCESS_DNS_BYTES),
        None => {
            let _ = DNS_BUDGETS.insert(tgid, fresh_budget(size, now), 0);
            true
        }
    }
}

/// Takes `size` bytes of `tgid`'s budget on the decisive ring; false when it is spent.
pub fn within_budget(tgid: u32, size: u32, now: u64) -> bool {
    match PAYLOAD_BUDGETS.get_ptr_mut(tgid) {
        Some(b) => take(b, size, now, PROCESS_PAYLOAD_BYTES),
        None => {
            // A full map means no budget for this process, not no capture: counted, let through.
            if PAYLOAD_BUDGETS
                .insert(tgid, fresh_budget(size, now), 0)
                .is_err()
            {
                count(stat::MAP_FULL);
            }
            true
        }
    }
}

#[inline(always)]
fn try_net_egress<const SKIP_BLANK: bool>(ctx: &SkBuffContext) -> Result<(), u32> {
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
    if st.flags & (SOCK_DNS | SOCK_TCP) == SOCK_DNS {
        return crate::dns::dns_record(ctx, st, 0);
    }
    if st.flags & SOCK_TCP == 0 {
        return Ok(());
    }
    // The headers are read once, and a packet without payload (SYN, pure ACK, FIN: most
    // packets of a short connection) leaves here.
    let Some(tcp) = parse(ctx)? else {
        return Ok(());
    };
    let len = ctx.len();
    if len <= tcp.payload_off {
        return Ok(());
    }
    let total = len - tcp.payload_off;
    if let Err(e) = crate::flow::on_payload(st, total, true) {
        count(e);
    }
    if st.flags & SOCK_WATCH == 0 {
        return Ok(());
    }
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
    let mut offset = st.bytes;
    st.bytes = st.bytes.wrapping_add(total);
    let ev = PAYLOAD_SCRATCH.get_ptr_mut(0).ok_or(stat::MAP_FULL)?;
    // SAFETY: this CPU's scratch slot, owned by this program invocation.
    let ev = unsafe { &mut *ev };
    let mut payload_off = tcp.payload_off;
    let mut total = total;
    let mut flags = 0;
    if SKIP_BLANK && st.blank == offset {
        // Nothing but whitespace so far: skip what this packet adds to it.
        let skip = blank_prefix(ctx, payload_off, total, &mut ev.data);
        st.blank = st.blank.wrapping_add(skip);
        if st.blank >= BLANK_MAX {
            st.flags &= !SOCK_WATCH;
            return Err(stat::PAYLOAD_BLANK_CAPPED);
        }
        if skip >= total {
            return Ok(());
        }
        payload_off += skip;
        offset = offset.wrapping_add(skip);
        total -= skip;
        if st.blank > 0 {
            flags |= PAYLOAD_AFTER_BLANK;
        }
    }
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
        if bpf_skb_load_bytes(ctx.as_ptr(), payload_off, ev.data.as_mut_ptr().cast(), n) < 0 {
            return Err(stat::READ_KERNEL_FAILED);
        }
        n
    };
    st.records += 1;
    if st.flags & SOCK_GAP != 0 {
        flags |= PAYLOAD_GAP;
    }
    let counted = st.bytes.wrapping_sub(st.blank);
    let done = counted >= WATCH_BYTES || st.records >= WATCH_RECORDS;
    if done {
        flags |= PAYLOAD_LAST;
        if counted < WATCH_BYTES {
            count(stat::PAYLOAD_RECORDS_CAPPED);
        }
    }
    // SAFETY: helper with no preconditions.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if !within_budget(st.tgid, PAYLOAD_FIXED as u32 + n, now) {
        // Like a lost record: the next one carries the gap.
        st.flags |= SOCK_GAP;
        st.records -= 1;
        return Err(stat::PAYLOAD_BUDGET_DROPPED);
    }
    ev.hdr.kind = kind::PAYLOAD;
    ev.hdr.tgid = st.tgid;
    ev.hdr.tid = 0;
    ev.hdr._pad = 0;
    ev.hdr.ktime_ns = now;
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
    // Only the captured bytes go into the ring. Alerts wait on the record that completes a
    // message: a connection's first record, one that ends a line (Stratum is one JSON object
    // per line) and the last wake the reader at once. The others (a stream of small packets)
    // wait for the next one that does, or the reader's 50 ms drain: a chatty connection does
    // not cost a wake-up per packet.
    // SAFETY: 1 <= n <= PAYLOAD_CAP, so the index is inside `data`.
    let last_byte = unsafe { *ev.data.as_ptr().add(((n - 1) as usize) & (PAYLOAD_CAP - 1)) };
    let wake = if st.records == 1 || done || last_byte == b'\n' || total > n {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
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
            wake,
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
