//! Miner tuning: the command lines that make MSRs writable or reserve huge pages, and the
//! huge-page sysctl writes the kernel reports with their writer.
use minerwatch_detect::{Finding, tuning};

use super::{Found, Signal};
use crate::{config::Config, kernel::Event, pipeline::process::Tracked};

struct MinerTuning;

pub fn new(_: &Config) -> Box<dyn Signal> {
    Box::new(MinerTuning)
}

impl Signal for MinerTuning {
    fn name(&self) -> &'static str {
        "miner_tuning"
    }

    fn on_process(&mut self, t: &mut Tracked, out: &mut Vec<Found>) {
        // Only a process that exec'd now: one found running at start did its tuning before.
        if t.info.preexisting {
            return;
        }
        if let Some(what) = tuning::from_argv(&t.info.argv) {
            out.push(Found {
                tgid: t.key.tgid,
                finding: Finding::MinerTuning(what),
                peer: None,
            });
        }
    }

    fn on_event(&mut self, ev: &Event, t: &mut Tracked, out: &mut Vec<Found>) {
        if let Event::Sysctl(s) = ev
            && let Some(what) = tuning::from_sysctl(&s.name, &s.value)
        {
            out.push(Found {
                tgid: t.key.tgid,
                finding: Finding::MinerTuning(what),
                peer: None,
            });
        }
    }
}
