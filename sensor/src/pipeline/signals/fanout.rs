//! Lateral spread: one process trying many addresses on SSH, Docker, Redis and the like in a
//! short time, as worms that spread from mining nodes do. Weak, and the cluster tools that
//! fan out for a living are not judged.
use minerwatch_detect::{
    Finding,
    fanout::{self, Fanout},
};

use super::{Found, Signal};
use crate::{config::Config, kernel::Event, pipeline::process::Tracked};

struct LateralScan;

pub fn new(_: &Config) -> Box<dyn Signal> {
    Box::new(LateralScan)
}

impl Signal for LateralScan {
    fn name(&self) -> &'static str {
        "lateral_scan"
    }

    fn on_event(&mut self, ev: &Event, t: &mut Tracked, out: &mut Vec<Found>) {
        // Every attempt counts, refused ones too: a scan is mostly refusals.
        let Event::Connect(c) = ev else { return };
        if c.preexisting || !fanout::SPREAD_PORTS.contains(&c.peer.port()) {
            return;
        }
        if fanout::is_fanout_tool(&t.info.exe, &t.info.comm) {
            return;
        }
        if let Some(scan) = t
            .state::<Fanout>()
            .attempt(c.peer.ip(), c.peer.port(), c.meta.ktime_ns)
        {
            out.push(Found {
                tgid: t.key.tgid,
                finding: Finding::LateralScan(scan),
                peer: None,
            });
        }
    }
}
