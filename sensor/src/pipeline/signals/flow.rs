//! Flow shape: a long-lived, quiet connection that talks like a pool's (small client writes,
//! server pushes), in a process that burns CPU. The kernel counts each followed TCP
//! connection's payload and reports it every few seconds once it is old enough and quiet
//! enough; the shape is judged in `minerwatch_detect::flow`.
use std::collections::BTreeMap;

use hashbrown::HashSet;
use minerwatch_detect::{
    Finding, code,
    flow::{Policy, Totals, judge},
    tls::starts_tls,
};

use super::{Found, Signal};
use crate::{
    config::Config,
    kernel::{Event, events::FlowReport},
    pipeline::process::{Table, Tracked},
};

/// Most TLS connections remembered for one process.
const TLS_KEPT: usize = 256;

/// What the signal keeps about one process.
#[derive(Default)]
struct Conns {
    /// Cookies of its connections that began with a TLS handshake.
    tls: HashSet<u64>,
    raised: bool,
}

struct FlowShape {
    policy: Policy,
    reports: u64,
    /// Reports judged: of a process with sustained CPU.
    judged: u64,
    shapes: u64,
}

pub fn new(cfg: &Config) -> Box<dyn Signal> {
    Box::new(FlowShape {
        policy: Policy {
            min_age_secs: cfg.flow_window.as_secs(),
        },
        reports: 0,
        judged: 0,
        shapes: 0,
    })
}

fn totals(r: &FlowReport) -> Totals {
    let f = &r.flow;
    Totals {
        age_secs: r.age_ns / 1_000_000_000,
        out_bytes: f.out_bytes,
        in_bytes: f.in_bytes,
        writes: f.writes,
        write_max: f.write_max,
        pushes: f.pushes,
        replies: f.replies,
        push_gap_ms: f.push_gap_ms,
        push_gap_ms_sq: f.push_gap_ms_sq,
    }
}

impl Signal for FlowShape {
    fn name(&self) -> &'static str {
        "flow_shape"
    }

    fn on_event(&mut self, ev: &Event, t: &mut Tracked, out: &mut Vec<Found>) {
        match ev {
            Event::Payload(p) if p.offset == 0 && starts_tls(&p.data) => {
                let c = t.state::<Conns>();
                if c.tls.len() < TLS_KEPT {
                    c.tls.insert(p.cookie);
                }
            }
            Event::Flow(r) => {
                self.reports += 1;
                // Evidence only beside sustained CPU in the same process; a later report
                // asks again.
                if !t.case.has(code::CPU_SATURATION) {
                    return;
                }
                self.judged += 1;
                let Some(shape) = judge(&totals(r), self.policy) else {
                    return;
                };
                let tgid = t.key.tgid;
                let c = t.state::<Conns>();
                if c.raised {
                    return;
                }
                c.raised = true;
                self.shapes += 1;
                out.push(Found {
                    tgid,
                    finding: Finding::FlowShape {
                        peer: r.peer,
                        shape,
                        tls: c.tls.contains(&r.cookie),
                    },
                    peer: Some(r.peer),
                });
            }
            _ => {}
        }
    }

    fn counters(&self, _: &Table, out: &mut BTreeMap<&'static str, u64>) {
        out.insert("flow_reports", self.reports);
        out.insert("flow_judged", self.judged);
        out.insert("flow_shapes", self.shapes);
    }
}
