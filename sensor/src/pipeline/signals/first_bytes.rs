//! The first bytes a client sends on each connection, reassembled per socket until the
//! Stratum classifier decides. A decided stream keeps only its flag, until the connection
//! closes or its process goes.
use std::{collections::BTreeMap, net::SocketAddr};

use hashbrown::HashMap;
use minerwatch_detect::{
    Finding,
    stratum::{self, Verdict},
};

use super::{Found, Signal};
use crate::{
    config::Config,
    kernel::{Event, events::Payload},
    pipeline::process::{Table, Tracked},
};

/// Most streams kept at once for one process; past this, new connections of that process
/// are not classified (counted as `streams_capped`). Miners hold one or a few.
const STREAMS_PER_PROCESS: usize = 256;

/// Bytes a client sent on one connection, until the classifier decides.
#[derive(Debug, Default)]
struct Stream {
    peer: Option<SocketAddr>,
    buf: Vec<u8>,
    /// Stream offset just past the last byte accounted for.
    seen: u32,
    /// Records were lost: wait for the start of the next line before classifying again.
    resync: bool,
    decided: bool,
}

/// One process's streams, by socket cookie.
#[derive(Debug, Default)]
struct Streams(HashMap<u64, Stream>);

#[derive(Default)]
struct FirstBytes {
    /// Connections on which records were lost and the stream had to resynchronise.
    payload_gaps: u64,
    streams_capped: u64,
}

pub fn new(_: &Config) -> Box<dyn Signal> {
    Box::new(FirstBytes::default())
}

impl Signal for FirstBytes {
    fn name(&self) -> &'static str {
        "first_bytes"
    }

    fn on_event(&mut self, ev: &Event, t: &mut Tracked, out: &mut Vec<Found>) {
        match ev {
            Event::Payload(p) => {
                if let Some(found) = self.on_payload(p, t) {
                    out.push(found);
                }
            }
            Event::Close(c) => {
                t.state::<Streams>().0.remove(&c.cookie);
            }
            _ => {}
        }
    }

    fn counters(&self, table: &Table, out: &mut BTreeMap<&'static str, u64>) {
        out.insert("payload_gaps", self.payload_gaps);
        out.insert("streams_capped", self.streams_capped);
        let held = table
            .iter()
            .filter_map(|t| t.peek::<Streams>())
            .map(|s| s.0.len());
        out.insert("streams", held.sum::<usize>() as u64);
    }

    fn losses(&self) -> &'static [&'static str] {
        &["payload_gaps"]
    }
}

impl FirstBytes {
    fn on_payload(&mut self, p: &Payload, t: &mut Tracked) -> Option<Found> {
        let tgid = t.key.tgid;
        let streams = &mut t.state::<Streams>().0;
        if !streams.contains_key(&p.cookie) && streams.len() >= STREAMS_PER_PROCESS {
            self.streams_capped += 1;
            return None;
        }
        let stream = streams.entry(p.cookie).or_default();
        stream.peer.get_or_insert(p.peer);
        if stream.decided || p.offset < stream.seen {
            return None;
        }
        if p.after_blank && stream.buf.is_empty() && !stream.resync {
            // The kernel skipped leading whitespace: nothing is missing.
            stream.seen = p.offset;
        }
        if p.offset > stream.seen {
            // Records were lost (a full ring): what is held no longer joins what comes.
            self.payload_gaps += 1;
            stream.buf.clear();
            stream.resync = true;
        }
        stream.seen = p.offset.saturating_add(p.total);
        let mut data = &p.data[..];
        if stream.resync {
            // A message starts after a newline: Stratum is one JSON object per line.
            match data.iter().position(|&c| c == b'\n') {
                Some(i) => {
                    data = &data[i + 1..];
                    stream.resync = false;
                }
                None => data = &[],
            }
        }
        stream.buf.extend_from_slice(data);
        // A packet longer than its capture means the bytes that follow are mid-message: what
        // we hold now is all the classifier will get. So it is when the kernel's budget is spent.
        let truncated = (p.total as usize) > p.data.len();
        let complete = truncated || p.last;
        let verdict = if stream.resync && !complete {
            Verdict::NeedMore
        } else {
            stratum::classify(&stream.buf, complete)
        };
        match verdict {
            Verdict::NeedMore => None,
            Verdict::NotStratum => {
                stream.decided = true;
                stream.buf = Vec::new();
                None
            }
            Verdict::Stratum(call) => {
                stream.decided = true;
                stream.buf = Vec::new();
                let peer = stream.peer;
                Some(Found {
                    tgid,
                    finding: Finding::Stratum { call, peer },
                    peer,
                })
            }
        }
    }
}
