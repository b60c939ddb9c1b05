//! Rivals: a process that kills another that looks like a miner (its name, or a miner
//! command line), not one of its own children, as mining malware does to the miners already
//! on a node it takes over. An administrator killing a miner by hand does the same, so this
//! is weak evidence: it adds to a killer that shows more.
use std::collections::BTreeMap;

use hashbrown::HashMap;
use minerwatch_detect::{Finding, indicators};

use super::{Found, Signal};
use crate::{
    config::Config,
    kernel::Event,
    pipeline::process::{ProcessKey, Table, Tracked},
};

/// Most miner-looking processes kept at once.
const KEPT_MAX: usize = 4096;

#[derive(Default)]
struct Rival {
    /// Miner-looking processes: why, and their parent.
    miners: HashMap<u32, (ProcessKey, String, u32)>,
    kills: u64,
}

pub fn new(_: &Config) -> Box<dyn Signal> {
    Box::<Rival>::default()
}

impl Signal for Rival {
    fn name(&self) -> &'static str {
        "rival"
    }

    fn on_process(&mut self, t: &mut Tracked, _: &mut Vec<Found>) {
        let p = &t.info;
        let looks = match indicators::miner_name(&p.comm, &p.exe) {
            Some(name) => format!("named {name}"),
            None if !indicators::miner_cmdline(&p.argv).is_empty() => {
                "with a miner's command line".to_string()
            }
            None => {
                self.miners.remove(&p.pid);
                return;
            }
        };
        if self.miners.len() < KEPT_MAX || self.miners.contains_key(&p.pid) {
            self.miners.insert(p.pid, (t.key, looks, p.ppid));
        }
    }

    fn on_event(&mut self, ev: &Event, t: &mut Tracked, out: &mut Vec<Found>) {
        let Event::Kill(k) = ev else { return };
        let Some((_, looks, ppid)) = self.miners.get(&k.target) else {
            return;
        };
        // A parent stopping its child (a launcher, a job script, a supervisor) is its business.
        if *ppid == t.key.tgid {
            return;
        }
        self.kills += 1;
        out.push(Found {
            tgid: t.key.tgid,
            finding: Finding::RivalKill {
                pid: k.target,
                looks: looks.clone(),
                sig: k.sig,
            },
            peer: None,
        });
    }

    fn forget(&mut self, key: ProcessKey) {
        if self
            .miners
            .get(&key.tgid)
            .is_some_and(|(k, _, _)| *k == key)
        {
            self.miners.remove(&key.tgid);
        }
    }

    fn counters(&self, _: &Table, out: &mut BTreeMap<&'static str, u64>) {
        out.insert("rival_kills", self.kills);
        out.insert("miner_looking", self.miners.len() as u64);
    }
}
