//! Renaming: a process whose main thread takes another name after it started (`prctl`,
//! `/proc/self/comm`), as miners do to pass for a kernel thread or a daemon in `top` and
//! `ps`. Exec renames the process too; the exec record that follows tells those apart, so a
//! rename waits up to [`EXEC_WAIT_NS`] for it before it is judged (or until the process
//! exits). A name that imitates a kernel thread is `fake_kernel_thread`; any other rename is
//! weak evidence.
use std::collections::{BTreeMap, VecDeque};

use minerwatch_detect::{Finding, indicators};

use super::{Found, Signal, Tick};
use crate::{
    config::Config,
    kernel::Event,
    pipeline::process::{ProcessKey, Table, Tracked},
};

/// How long a rename waits for an exec record that would explain it.
const EXEC_WAIT_NS: u64 = 1_000_000_000;

#[derive(Default)]
struct Rename {
    /// Processes with a rename waiting, and since when, oldest first. An entry whose process
    /// is gone, or whose rename an exec explained, is dropped when it comes due: at most
    /// [`EXEC_WAIT_NS`] of renames (every exec renames), never searched one by one.
    waiting: VecDeque<(ProcessKey, u64)>,
    /// Renames judged, and renames that were an exec's.
    renames: u64,
    by_exec: u64,
}

pub fn new(_: &Config) -> Box<dyn Signal> {
    Box::<Rename>::default()
}

/// A process's last rename, until judged.
#[derive(Default)]
struct Pending(Option<(String, String)>);

impl Rename {
    fn judge(&mut self, t: &mut Tracked, out: &mut Vec<Found>) {
        let Some(p) = t.peek_mut::<Pending>() else {
            return;
        };
        let Some((old, new)) = p.0.take() else {
            return;
        };
        self.renames += 1;
        let tgid = t.key.tgid;
        if let Some(comm) = indicators::imitates_kernel_thread(&new, None, &t.info.exe) {
            out.push(Found {
                tgid,
                finding: Finding::FakeKernelThread {
                    comm,
                    exe: t.info.exe.clone(),
                },
                peer: None,
            });
        }
        out.push(Found {
            tgid,
            finding: Finding::ProcessRename { old, new },
            peer: None,
        });
    }
}

impl Signal for Rename {
    fn name(&self) -> &'static str {
        "rename"
    }

    fn on_process(&mut self, t: &mut Tracked, _: &mut Vec<Found>) {
        // The rename just before an exec record of the same name was the exec's.
        let comm = t.info.comm.clone();
        if let Some(p) = t.peek_mut::<Pending>()
            && p.0.as_ref().is_some_and(|(_, new)| *new == comm)
        {
            p.0 = None;
            self.by_exec += 1;
        }
    }

    fn on_event(&mut self, ev: &Event, t: &mut Tracked, _: &mut Vec<Found>) {
        let Event::Rename(r) = ev else { return };
        if r.old == r.new {
            return;
        }
        let key = t.key;
        let pending = t.state::<Pending>();
        if pending.0.is_none() {
            self.waiting.push_back((key, r.meta.ktime_ns));
        }
        // A chain of renames keeps the first name and the last.
        let old = pending
            .0
            .take()
            .map_or_else(|| r.old.clone(), |(old, _)| old);
        pending.0 = Some((old, r.new.clone()));
    }

    fn on_exit(&mut self, t: &mut Tracked, out: &mut Vec<Found>) {
        self.judge(t, out);
    }

    fn on_tick(&mut self, tick: &Tick<'_>, table: &mut Table, out: &mut Vec<Found>) {
        while let Some(&(key, since)) = self.waiting.front() {
            if tick.now_ns.saturating_sub(since) < EXEC_WAIT_NS {
                break;
            }
            self.waiting.pop_front();
            if let Some(t) = table.get_mut(key.tgid)
                && t.key == key
            {
                self.judge(t, out);
            }
        }
    }

    fn counters(&self, _: &Table, out: &mut BTreeMap<&'static str, u64>) {
        out.insert("renames", self.renames);
        out.insert("renames_by_exec", self.by_exec);
    }
}
