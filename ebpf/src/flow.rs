//! Flow shape: how a TCP connection this host opened talks, when its payload says nothing
//! (TLS, Stratum V2). The packet hooks that already look up each packet's socket storage
//! count, for followed TCP sockets only, the client's writes (bursts of payload), the
//! server's payload that answers them and the server's payload that comes unasked (pushes,
//! as a pool pushes jobs), with the gaps between pushes. A connection old enough and quiet
//! enough ([`FLOW_MAX_RATE`]) is reported at most every [`FLOW_REPORT_NS`]; user space
//! judges the shape.
use aya_ebpf::programs::SkBuffContext;
use minerwatch_common::{
    EventHeader, FLOW_BURST_NS, FLOW_MAX_RATE, FLOW_PUSH_NS, FLOW_REPORT_NS, FlowEvent, SockState,
    kind, stat,
};

use crate::{
    maps::EVENTS,
    payload::tcp_payload,
    util::{count, lazy_wakeup},
};

/// TCP payload bytes in the packet; 0 for anything else (pure ACKs, other protocols).
#[inline(always)]
pub fn payload_len(ctx: &SkBuffContext) -> Result<u32, u32> {
    Ok(tcp_payload(ctx)?.map_or(0, |off| ctx.len().saturating_sub(off)))
}

/// Counts `len` payload bytes (more than 0) of one packet of a followed TCP socket; `out`
/// when it leaves.
#[inline(always)]
pub fn on_payload(st: &mut SockState, len: u32, out: bool) -> Result<(), u32> {
    // SAFETY: helper with no preconditions.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let f = &mut st.flow;
    if out {
        if now.wrapping_sub(f.last_out_ns) >= FLOW_BURST_NS {
            f.writes = f.writes.wrapping_add(1);
            f.write_bytes = 0;
        }
        f.write_bytes = f.write_bytes.saturating_add(len);
        if f.write_bytes > f.write_max {
            f.write_max = f.write_bytes;
        }
        f.out_bytes = f.out_bytes.wrapping_add(u64::from(len));
        f.last_out_ns = now;
    } else {
        if now.wrapping_sub(f.last_out_ns) >= FLOW_PUSH_NS
            && now.wrapping_sub(f.last_in_ns) >= FLOW_PUSH_NS
        {
            f.pushes = f.pushes.wrapping_add(1);
            if f.last_push_ns != 0 {
                let gap = now.wrapping_sub(f.last_push_ns) / 1_000_000;
                f.push_gap_ms = f.push_gap_ms.wrapping_add(gap);
                f.push_gap_ms_sq = f.push_gap_ms_sq.wrapping_add(gap.wrapping_mul(gap));
            }
            f.last_push_ns = now;
        } else if now.wrapping_sub(f.last_in_ns) >= FLOW_BURST_NS {
            f.replies = f.replies.wrapping_add(1);
        }
        f.in_bytes = f.in_bytes.wrapping_add(u64::from(len));
        f.last_in_ns = now;
    }
    if now.wrapping_sub(f.opened_ns) < FLOW_REPORT_NS
        || now.wrapping_sub(f.reported_ns) < FLOW_REPORT_NS
    {
        return Ok(());
    }
    f.reported_ns = now;
    let secs = now.wrapping_sub(f.opened_ns) / 1_000_000_000;
    if f.out_bytes.wrapping_add(f.in_bytes) > FLOW_MAX_RATE.wrapping_mul(secs) {
        return Ok(());
    }
    let ev = FlowEvent {
        // Packets may leave outside the process's context: who and where are the storage's.
        hdr: EventHeader {
            kind: kind::FLOW,
            tgid: st.tgid,
            tid: 0,
            _pad: 0,
            ktime_ns: now,
            cgroup_id: st.cgroup_id,
        },
        cookie: st.cookie,
        family: st.family,
        dport: st.dport,
        _pad: 0,
        daddr: st.daddr,
        flow: st.flow,
    };
    if EVENTS.output::<FlowEvent>(&ev, lazy_wakeup()).is_err() {
        count(stat::RINGBUF_FULL_FLOW);
    }
    Ok(())
}
