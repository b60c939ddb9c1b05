//! DNS, observed: the datagrams a process sends to port 53 and the answers it gets back, on
//! its own sockets. A socket gets [`SOCK_DNS`] in its storage when it is connected to port 53
//! or sends a datagram there (`net`); `cgroup_skb/egress` copies the queries that leave a UDP
//! one (a TCP one's query is in its first bytes), and `cgroup_skb/ingress` (this file) the
//! answers that reach either: each TCP segment is sent up as it comes, and user space keeps
//! those that hold a whole message's start. The sensor never
//! sends a query itself. The same hook counts the received payload of followed TCP sockets
//! for their flow shape (`flow`). A received packet of any other socket costs one storage
//! lookup.
use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_ringbuf_output, bpf_sk_fullsock, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use minerwatch_common::{
    PAYLOAD_CAP, PAYLOAD_DNS_ANSWER, PAYLOAD_DNS_TCP, PayloadEvent, SOCK_DNS, SOCK_TCP, SockState,
    kind, stat,
};

use crate::{
    maps::{EVENTS, PAYLOAD_SCRATCH},
    net::storage_of,
    payload::{PAYLOAD_FIXED, l4_offset, tcp_payload, within_dns_budget},
    util::{count, lazy_wakeup},
};

const IPPROTO_UDP: u8 = 17;
const AF_INET6: u16 = 10;
/// Allow the packet: this hook only watches.
const ALLOW: i32 = 1;
/// Scratch slots: the egress hook can be interrupted on its CPU by the ingress hook (a
/// softirq), so each has its own.
const SLOT_EGRESS: u32 = 1;
const SLOT_INGRESS: u32 = 2;

/// `cgroup_skb/ingress` on the root cgroup v2 (4.10+): answers to the DNS queries of
/// followed sockets, and the server's side of followed TCP flows.
#[cgroup_skb(ingress)]
pub fn net_ingress(ctx: SkBuffContext) -> i32 {
    if let Err(e) = try_net_ingress(&ctx) {
        count(e);
    }
    ALLOW
}

fn try_net_ingress(ctx: &SkBuffContext) -> Result<(), u32> {
    // SAFETY: the receiving socket, as the kernel sets it for cgroup_skb programs.
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
    // SAFETY: storage of this socket; only the flow counters are written here.
    let st = unsafe { &mut *st };
    let mut flags = PAYLOAD_DNS_ANSWER;
    if st.flags & SOCK_TCP != 0 {
        let len = crate::flow::payload_len(ctx)?;
        if len == 0 {
            return Ok(()); // SYN-ACK, pure ACK, FIN
        }
        if let Err(e) = crate::flow::on_payload(st, len, false) {
            count(e);
        }
        flags |= PAYLOAD_DNS_TCP;
    }
    if st.flags & SOCK_DNS == 0 {
        return Ok(());
    }
    dns_record(ctx, st, flags)
}

/// Where the payload of the packet starts: after the UDP header, or after the TCP header
/// for a TCP socket; `None` when the packet is neither.
#[inline(always)]
fn dns_payload(ctx: &SkBuffContext, st: &SockState) -> Result<Option<u32>, u32> {
    if st.flags & SOCK_TCP == 0 {
        return Ok(l4_offset(ctx, IPPROTO_UDP)?.map(|l4| l4 + 8));
    }
    tcp_payload(ctx)
}

/// Reports the DNS message in this packet of a [`SOCK_DNS`] socket: up to [`PAYLOAD_CAP`]
/// bytes (a query is far smaller; an answer's first kilobyte holds its question and first
/// records), within the process's DNS budget (apart from its first-bytes budget).
#[inline(always)]
pub fn dns_record(ctx: &SkBuffContext, st: &SockState, flags: u32) -> Result<(), u32> {
    let Some(off) = dns_payload(ctx, st)? else {
        return Ok(());
    };
    let len = ctx.len();
    if len <= off {
        return Ok(());
    }
    let total = len - off;
    let slot = if flags & PAYLOAD_DNS_ANSWER != 0 {
        SLOT_INGRESS
    } else {
        SLOT_EGRESS
    };
    let ev = PAYLOAD_SCRATCH.get_ptr_mut(slot).ok_or(stat::MAP_FULL)?;
    // SAFETY: this CPU's scratch slot for this direction, owned by this invocation.
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
        if bpf_skb_load_bytes(ctx.as_ptr(), off, ev.data.as_mut_ptr().cast(), n) < 0 {
            return Err(stat::READ_KERNEL_FAILED);
        }
        n
    };
    // SAFETY: helper with no preconditions.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if !within_dns_budget(st.tgid, PAYLOAD_FIXED as u32 + n, now) {
        return Err(stat::DNS_BUDGET_DROPPED);
    }
    ev.hdr.kind = kind::DNS;
    ev.hdr.tgid = st.tgid;
    ev.hdr.tid = 0;
    ev.hdr._pad = 0;
    ev.hdr.ktime_ns = now;
    ev.hdr.cgroup_id = st.cgroup_id;
    ev.cookie = st.cookie;
    ev.family = if st.family == AF_INET6 { AF_INET6 } else { 2 };
    ev.dport = st.dport;
    ev.flags = flags;
    ev.daddr = st.daddr;
    ev.offset = 0;
    ev.len = n;
    ev.total = total;
    ev._pad1 = 0;
    let size = PAYLOAD_FIXED + u64::from(n);
    let size = if size > size_of::<PayloadEvent>() as u64 {
        size_of::<PayloadEvent>() as u64
    } else {
        size
    };
    // SAFETY: `ev` is valid for size_of::<PayloadEvent>() bytes and `size` is at most that.
    let ret = unsafe {
        bpf_ringbuf_output(
            core::ptr::from_ref(&EVENTS).cast_mut().cast(),
            core::ptr::from_mut(ev).cast(),
            size,
            lazy_wakeup(),
        )
    };
    if ret < 0 {
        return Err(stat::RINGBUF_FULL_DNS);
    }
    Ok(())
}
