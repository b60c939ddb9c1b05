//! Signals: each turns what it sees into findings, behind one interface. A signal sees
//! processes as they become known ([`Signal::on_process`]), the kernel's events about a
//! process ([`Signal::on_event`]), its exit ([`Signal::on_exit`]), and a tick once a second
//! ([`Signal::on_tick`]). What it keeps about a process lives in that process's record
//! ([`Tracked::state`]), so it is forgotten with the process; state of its own that spans
//! processes is dropped in [`Signal::forget`].
//!
//! Adding a signal: a new file here with a type that implements [`Signal`], and its row in
//! [`REGISTRY`]. Nothing else in the pipeline changes.
mod allocation;
mod cpu;
mod dns;
mod fanout;
mod first_bytes;
mod flow;
mod gpu;
mod persistence;
mod pool;
mod port;
mod rename;
mod rival;
mod rounding;
mod shape;
mod tuning;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use hashbrown::HashMap;

use minerwatch_common::FpuThread;
use minerwatch_detect::{Finding, intel::Lists};

use super::process::{ProcessKey, Table, Tracked};
use crate::{
    config::Config,
    kernel::{CpuTotals, Event},
};

/// A finding about one process, with the connection it concerns when it concerns one.
#[derive(Debug, Clone)]
pub struct Found {
    pub tgid: u32,
    pub finding: Finding,
    pub peer: Option<SocketAddr>,
}

/// What a tick carries.
pub struct Tick<'a> {
    /// CLOCK_MONOTONIC now.
    pub now_ns: u64,
    /// Since the last tick.
    pub dt: Duration,
    pub cpu: &'a CpuTotals,
    /// Rounding-mode counts by thread id, for threads that ever showed a non-default mode.
    pub rounding: &'a [(u32, FpuThread)],
    /// (CPUs, GPUs) each Slurm job Slurm has answered for holds on this node, by job id.
    pub allocated: &'a HashMap<u64, (u32, u32)>,
    /// What NVML last said each process does on each GPU.
    pub gpu: &'a [crate::enrich::gpu::GpuProcess],
}

pub trait Signal: Send {
    /// Names the signal in logs and counters.
    fn name(&self) -> &'static str;

    /// A process became known: it exec'd, or it was running when the sensor started.
    fn on_process(&mut self, _p: &mut Tracked, _out: &mut Vec<Found>) {}

    /// A kernel event about process `p` (exec, connect, first bytes, close).
    fn on_event(&mut self, _ev: &Event, _p: &mut Tracked, _out: &mut Vec<Found>) {}

    /// Process `p` exited: the last chance to say evidence held back for it (its record
    /// and state go once both rings are drained).
    fn on_exit(&mut self, _p: &mut Tracked, _out: &mut Vec<Found>) {}

    /// Once a second, over the whole table.
    fn on_tick(&mut self, _tick: &Tick<'_>, _table: &mut Table, _out: &mut Vec<Found>) {}

    /// The pool lists in force: at start, and after each reload.
    fn on_intel(&mut self, _lists: &Arc<Lists>) {}

    /// `key` is gone. Per-process state in [`Tracked`] is already dropped with it.
    fn forget(&mut self, _key: ProcessKey) {}

    /// What the signal counts about itself, and what it holds in `table`, for stats and
    /// status.
    fn counters(&self, _table: &Table, _out: &mut BTreeMap<&'static str, u64>) {}

    /// Things it counts that are losses, by the counter's name, for loss records.
    fn losses(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Builds a signal from the configuration.
pub type NewSignal = fn(&Config) -> Box<dyn Signal>;

/// Every signal, in the order they see each event.
pub const REGISTRY: &[NewSignal] = &[
    shape::new,
    port::new,
    first_bytes::new,
    cpu::new,
    gpu::new,
    rounding::new,
    pool::new,
    dns::new,
    fanout::new,
    tuning::new,
    persistence::new,
    rename::new,
    rival::new,
    flow::new,
];

/// The signals for `cfg`.
pub fn all(cfg: &Config) -> Vec<Box<dyn Signal>> {
    REGISTRY.iter().map(|new| new(cfg)).collect()
}
