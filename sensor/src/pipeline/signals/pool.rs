//! Pool intelligence: a connection to an address on a pool list (matched in the kernel at
//! connect; in user space for connections older than the sensor), or a command line that
//! names a listed pool host. Works whatever the protocol, TLS included.
use std::{collections::BTreeMap, sync::Arc};

use minerwatch_detect::{
    Finding, PoolSighting,
    intel::{self, Lists},
};

use super::{Found, Signal};
use crate::{config::Config, kernel::Event, pipeline::process::Tracked};

struct PoolIntel {
    lists: Arc<Lists>,
    /// Connections to listed addresses seen, and command lines naming listed hosts.
    connects: u64,
    cmdlines: u64,
}

pub fn new(_: &Config) -> Box<dyn Signal> {
    Box::new(PoolIntel {
        lists: Arc::default(),
        connects: 0,
        cmdlines: 0,
    })
}

/// Per process: said once, not once per connection of a miner that reconnects.
#[derive(Default)]
struct Said {
    connect: bool,
}

impl PoolIntel {
    fn finding(&self, what: PoolSighting, id: u32) -> Option<Finding> {
        let (entry, source) = self.lists.entry(id)?;
        Some(Finding::PoolIntel {
            what,
            entry: entry.to_string(),
            source: source.to_string(),
        })
    }
}

impl Signal for PoolIntel {
    fn name(&self) -> &'static str {
        "pool_intel"
    }

    fn on_intel(&mut self, lists: &Arc<Lists>) {
        self.lists = lists.clone();
    }

    fn on_process(&mut self, t: &mut Tracked, out: &mut Vec<Found>) {
        for host in intel::hosts_in_argv(&t.info.argv) {
            let Some(id) = self.lists.match_name(&host) else {
                continue;
            };
            if let Some(finding) = self.finding(PoolSighting::Cmdline(host), id) {
                self.cmdlines += 1;
                out.push(Found {
                    tgid: t.key.tgid,
                    finding,
                    peer: None,
                });
                // One listed host is the evidence; the rest say nothing more.
                break;
            }
        }
    }

    fn on_event(&mut self, ev: &Event, t: &mut Tracked, out: &mut Vec<Found>) {
        let (peer, id) = match ev {
            // The kernel matched it against the trie written from these lists. An id from
            // lists since replaced is matched again here.
            Event::PoolHit(h) => {
                let peer = h.connect.peer;
                let id = match self.lists.entry(h.entry) {
                    Some(_) => Some(h.entry),
                    None => self.lists.match_addr(peer.ip()),
                };
                (peer, id)
            }
            Event::Connect(c) if c.preexisting => (c.peer, self.lists.match_addr(c.peer.ip())),
            _ => return,
        };
        let Some(id) = id else { return };
        let said = t.state::<Said>();
        if std::mem::replace(&mut said.connect, true) {
            return;
        }
        if let Some(finding) = self.finding(PoolSighting::Connect(peer), id) {
            self.connects += 1;
            out.push(Found {
                tgid: t.key.tgid,
                finding,
                peer: Some(peer),
            });
        }
    }

    fn counters(&self, _: &crate::pipeline::process::Table, out: &mut BTreeMap<&'static str, u64>) {
        out.insert("pool_entries", self.lists.len() as u64);
        out.insert("pool_connects", self.connects);
        out.insert("pool_cmdlines", self.cmdlines);
    }
}
