//! DNS, observed, never performed: the names a process asks its name server for (queries on
//! its own UDP sockets to port 53, and TCP ones from their first bytes) and the addresses the
//! answers give it. A listed name is pool intelligence and a pool-like one weak evidence, as
//! for command lines and SNI; an address the process then connects to is joined to the name
//! it looked up ("10.2.3.4:443, which the process looked up as pool.example"). A lookup's
//! evidence waits up to [`JOIN_WAIT_NS`] for that connect, so the alert says both at once; a
//! lookup not followed by a connect to what it gave is raised as a lookup, then or when the
//! process exits.
//!
//! Lookups answered over unix sockets (nscd, sssd, systemd-resolved's varlink) and DNS over
//! HTTPS or TLS carry no port-53 datagrams of the process's own: not seen here.
use std::{collections::BTreeMap, net::IpAddr, net::SocketAddr, sync::Arc};

use hashbrown::HashMap;
use minerwatch_detect::{
    Finding, PoolSighting, dns,
    intel::{self, Lists},
};

use super::{Found, Signal, Tick};
use crate::{
    config::Config,
    kernel::Event,
    pipeline::process::{ProcessKey, Table, Tracked},
};

/// Most looked-up addresses kept per process, for joining to its connects.
const ADDRS_PER_PROCESS: usize = 256;

/// How long a lookup's evidence waits for the connect that uses its answer.
const JOIN_WAIT_NS: u64 = 1_000_000_000;

#[derive(Default)]
struct Dns {
    lists: Arc<Lists>,
    queries: u64,
    answers: u64,
    /// Messages that were not DNS (a port-53 socket speaking something else, or cut short).
    unparsed: u64,
    /// Lookups of listed pool names.
    pools: u64,
    /// Processes with a lookup's evidence waiting for a connect.
    waiting: Vec<ProcessKey>,
}

pub fn new(_: &Config) -> Box<dyn Signal> {
    Box::<Dns>::default()
}

/// What a process looked up.
#[derive(Default)]
struct Looked {
    /// Address to the name asked for, from the answers of listed and pool-like names only
    /// (the only ones a connect is joined to), so junk lookups cannot fill it.
    addrs: HashMap<IpAddr, String>,
    said_listed: bool,
    said_like: bool,
    /// A connect was joined to a listed name, to a pool-like one.
    joined_listed: bool,
    joined_like: bool,
    /// Evidence of lookups, by name, waiting for a connect to one of their addresses, and
    /// since when the oldest of it waits.
    pending: Vec<(String, Finding)>,
    since_ns: u64,
    /// In [`Dns::waiting`].
    queued: bool,
}

impl Dns {
    /// The finding for `name`, met as `what`, and whether the name is listed; `None` for a
    /// name that is neither listed nor pool-like.
    fn judge(&self, name: &str, what: PoolSighting) -> Option<(Finding, bool)> {
        if let Some(id) = self.lists.match_name(name) {
            let (entry, source) = self.lists.entry(id)?;
            let finding = Finding::PoolIntel {
                what,
                entry: entry.to_string(),
                source: source.to_string(),
            };
            return Some((finding, true));
        }
        let word = intel::pool_like(name)?;
        Some((Finding::PoolLikeName { what, word }, false))
    }

    fn on_message(
        &mut self,
        data: &[u8],
        server: SocketAddr,
        answer: bool,
        now_ns: u64,
        t: &mut Tracked,
    ) {
        let Some(msg) = dns::parse(data) else {
            self.unparsed += 1;
            return;
        };
        if answer {
            self.answers += 1;
        } else {
            self.queries += 1;
        }
        let Some(name) = msg.questions.first() else {
            return;
        };
        let judged = self.judge(
            name,
            PoolSighting::Lookup {
                name: name.clone(),
                server,
            },
        );
        let key = t.key;
        let looked = t.state::<Looked>();
        if answer && judged.is_some() {
            for addr in &msg.addrs {
                let addr = addr.to_canonical();
                if looked.addrs.len() < ADDRS_PER_PROCESS || looked.addrs.contains_key(&addr) {
                    looked.addrs.insert(addr, name.clone());
                }
            }
        }
        let Some((finding, listed)) = judged else {
            return;
        };
        let said = if listed {
            &mut looked.said_listed
        } else {
            &mut looked.said_like
        };
        if std::mem::replace(said, true) {
            return;
        }
        if listed {
            self.pools += 1;
        }
        if looked.pending.is_empty() {
            looked.since_ns = now_ns;
        }
        if !std::mem::replace(&mut looked.queued, true) {
            self.waiting.push(key);
        }
        looked.pending.push((name.clone(), finding));
    }

    /// A connect to an address the process looked up under a listed or pool-like name.
    fn on_connect(&mut self, peer: SocketAddr, t: &mut Tracked) -> Option<Found> {
        let looked = t.peek_mut::<Looked>()?;
        let name = looked.addrs.get(&peer.ip().to_canonical())?.clone();
        let what = PoolSighting::Resolved {
            peer,
            name: name.clone(),
        };
        let (finding, listed) = self.judge(&name, what)?;
        let joined = if listed {
            &mut looked.joined_listed
        } else {
            &mut looked.joined_like
        };
        if std::mem::replace(joined, true) {
            return None;
        }
        // This says what the lookup's own evidence would have.
        looked.pending.retain(|(n, _)| *n != name);
        Some(Found {
            tgid: t.key.tgid,
            finding,
            peer: Some(peer),
        })
    }
}

impl Signal for Dns {
    fn name(&self) -> &'static str {
        "dns"
    }

    fn on_intel(&mut self, lists: &Arc<Lists>) {
        self.lists = lists.clone();
    }

    fn on_event(&mut self, ev: &Event, t: &mut Tracked, out: &mut Vec<Found>) {
        match ev {
            Event::Dns(d) => self.on_message(&d.data, d.server, d.answer, d.meta.ktime_ns, t),
            // DNS over TCP: a two-byte length, then the message, in the first bytes.
            Event::Payload(p) if p.peer.port() == minerwatch_common::DNS_PORT && p.offset == 0 => {
                if let Some(msg) = p.data.get(2..) {
                    self.on_message(msg, p.peer, false, p.meta.ktime_ns, t);
                }
            }
            Event::Connect(c) if !c.preexisting => out.extend(self.on_connect(c.peer, t)),
            _ => {}
        }
    }

    fn on_tick(&mut self, tick: &Tick<'_>, table: &mut Table, out: &mut Vec<Found>) {
        self.waiting.retain(|&key| {
            let Some(t) = table.get_mut(key.tgid).filter(|t| t.key == key) else {
                return false;
            };
            let Some(looked) = t.peek_mut::<Looked>() else {
                return false;
            };
            if !looked.pending.is_empty()
                && tick.now_ns.saturating_sub(looked.since_ns) < JOIN_WAIT_NS
            {
                return true;
            }
            out.extend(looked.pending.drain(..).map(|(_, finding)| Found {
                tgid: key.tgid,
                finding,
                peer: None,
            }));
            looked.queued = false;
            false
        });
    }

    fn on_exit(&mut self, t: &mut Tracked, out: &mut Vec<Found>) {
        let tgid = t.key.tgid;
        if let Some(looked) = t.peek_mut::<Looked>() {
            out.extend(looked.pending.drain(..).map(|(_, finding)| Found {
                tgid,
                finding,
                peer: None,
            }));
        }
    }

    fn forget(&mut self, key: ProcessKey) {
        self.waiting.retain(|k| *k != key);
    }

    fn counters(&self, table: &Table, out: &mut BTreeMap<&'static str, u64>) {
        out.insert("dns_queries", self.queries);
        out.insert("dns_answers", self.answers);
        out.insert("dns_unparsed", self.unparsed);
        out.insert("dns_pools", self.pools);
        let held = table
            .iter()
            .filter_map(|t| t.peek::<Looked>())
            .map(|l| l.addrs.len());
        out.insert("dns_addrs", held.sum::<usize>() as u64);
    }
}
