//! Pool intelligence: a connection to an address on a pool list (matched in the kernel at
//! connect; in user space for connections older than the sensor), a command line that names
//! a listed pool host, or a TLS ClientHello that asks for one (SNI, in clear before the
//! encryption starts). Works whatever the protocol. A name on no list but with a pool-like
//! word in it (`xmr`, `pool`, `monero`, ...) is weak evidence of its own.
use std::{collections::BTreeMap, sync::Arc};

use minerwatch_detect::{
    Finding, PoolSighting,
    intel::{self, Lists},
    tls,
};

use super::{Found, Signal};
use crate::{config::Config, kernel::Event, pipeline::process::Tracked};

struct PoolIntel {
    lists: Arc<Lists>,
    /// Connections to listed addresses seen, and command lines naming listed hosts.
    connects: u64,
    cmdlines: u64,
    /// TLS ClientHellos whose server name was read, and those that named a listed pool.
    sni_names: u64,
    sni_pools: u64,
}

pub fn new(_: &Config) -> Box<dyn Signal> {
    Box::new(PoolIntel {
        lists: Arc::default(),
        connects: 0,
        cmdlines: 0,
        sni_names: 0,
        sni_pools: 0,
    })
}

/// Per process: said once, not once per connection of a miner that reconnects.
#[derive(Default)]
struct Said {
    connect: bool,
    sni: bool,
    /// A pool-like name was said (from the command line or a ClientHello).
    like: bool,
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
        let hosts = intel::hosts_in_argv(&t.info.argv);
        for host in &hosts {
            let Some(id) = self.lists.match_name(host) else {
                continue;
            };
            if let Some(finding) = self.finding(PoolSighting::Cmdline(host.clone()), id) {
                self.cmdlines += 1;
                out.push(Found {
                    tgid: t.key.tgid,
                    finding,
                    peer: None,
                });
                // One listed host is the evidence; the rest say nothing more.
                return;
            }
        }
        let like = hosts
            .into_iter()
            .find_map(|h| intel::pool_like(&h).map(|w| (h, w)));
        if let Some((host, word)) = like {
            t.state::<Said>().like = true;
            out.push(Found {
                tgid: t.key.tgid,
                finding: Finding::PoolLikeName {
                    what: PoolSighting::Cmdline(host),
                    word,
                },
                peer: None,
            });
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
            Event::Payload(p) if p.offset == 0 => {
                if let Some(found) = self.on_client_hello(&p.data, p.peer, t) {
                    out.push(found);
                }
                return;
            }
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
        out.insert("sni_names", self.sni_names);
        out.insert("sni_pools", self.sni_pools);
    }
}

impl PoolIntel {
    /// The first bytes of a connection: if they are a ClientHello, the name it asks for.
    fn on_client_hello(
        &mut self,
        data: &[u8],
        peer: std::net::SocketAddr,
        t: &mut Tracked,
    ) -> Option<Found> {
        let name = tls::client_hello_sni(data)?;
        self.sni_names += 1;
        let said = t.state::<Said>();
        let finding = match self.lists.match_name(&name) {
            Some(id) => {
                if std::mem::replace(&mut said.sni, true) {
                    return None;
                }
                self.sni_pools += 1;
                self.finding(PoolSighting::Sni { name, peer }, id)?
            }
            None => {
                let word = intel::pool_like(&name)?;
                if std::mem::replace(&mut said.like, true) {
                    return None;
                }
                Finding::PoolLikeName {
                    what: PoolSighting::Sni { name, peer },
                    word,
                }
            }
        };
        Some(Found {
            tgid: t.key.tgid,
            finding,
            peer: Some(peer),
        })
    }
}
