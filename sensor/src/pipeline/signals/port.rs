//! A TCP connection to a port that mining pools use.
use std::collections::HashSet;

use minerwatch_detect::Finding;

use super::{Found, Signal};
use crate::{
    config::Config,
    kernel::{Event, events::Transport},
    pipeline::process::Tracked,
};

struct MinerPort {
    ports: HashSet<u16>,
}

pub fn new(cfg: &Config) -> Box<dyn Signal> {
    Box::new(MinerPort {
        ports: cfg.miner_ports.iter().copied().collect(),
    })
}

impl Signal for MinerPort {
    fn name(&self) -> &'static str {
        "miner_port"
    }

    fn on_event(&mut self, ev: &Event, t: &mut Tracked, out: &mut Vec<Found>) {
        if let Event::Connect(c) = ev
            && c.ok()
            && c.transport == Transport::Tcp
            && self.ports.contains(&c.peer.port())
        {
            out.push(Found {
                tgid: t.key.tgid,
                finding: Finding::MinerPort { peer: c.peer },
                peer: Some(c.peer),
            });
        }
    }
}
