//! One record per process, keyed by an identity that survives pid reuse, holding every
//! signal's state for it; and the table of them, with the one place a process is forgotten.
use std::{
    any::{Any, TypeId},
    path::Path,
};

use hashbrown::HashMap;
use minerwatch_detect::Case;

use crate::enrich::proc::{self, Process};

/// A process for good: its tgid and its start time (clock ticks since boot, as
/// `/proc/<pid>/stat` gives it; 0 when the kernel could not say). A pid reused later belongs
/// to another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessKey {
    pub tgid: u32,
    pub start: u64,
}

/// Everything the sensor holds about one live process.
pub struct Tracked {
    pub key: ProcessKey,
    /// What it is: exe, argv, parent, user, cgroup.
    pub info: Process,
    /// The verdict so far.
    pub case: Case,
    /// Alert revisions written so far.
    pub revisions: u32,
    /// CLOCK_MONOTONIC when the record was made: a /proc walk begun before that cannot
    /// speak for it.
    pub since_ns: u64,
    /// Each signal's state for this process, by type; created on first use.
    slots: Vec<(TypeId, Box<dyn Any + Send>)>,
}

impl Tracked {
    pub fn new(info: Process) -> Self {
        Tracked {
            key: ProcessKey {
                tgid: info.pid,
                start: info.start,
            },
            info,
            case: Case::default(),
            revisions: 0,
            since_ns: super::monotonic_ns(),
            slots: Vec::new(),
        }
    }

    /// A signal's state for this process, created empty on first use.
    pub fn state<T: Default + Send + 'static>(&mut self) -> &mut T {
        let id = TypeId::of::<T>();
        let i = match self.slots.iter().position(|(t, _)| *t == id) {
            Some(i) => i,
            None => {
                self.slots.push((id, Box::new(T::default())));
                self.slots.len() - 1
            }
        };
        self.slots[i]
            .1
            .downcast_mut()
            .expect("slot holds the type it is keyed by")
    }

    /// A signal's state for this process, if it has any, to change.
    pub fn peek_mut<T: 'static>(&mut self) -> Option<&mut T> {
        let id = TypeId::of::<T>();
        self.slots
            .iter_mut()
            .find(|(t, _)| *t == id)
            .and_then(|(_, s)| s.downcast_mut())
    }

    /// A signal's state for this process, if it has any.
    pub fn peek<T: 'static>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.slots
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, s)| s.downcast_ref())
    }
}

/// The live processes by tgid (one process per tgid at a time; the key tells which).
#[derive(Default)]
pub struct Table {
    procs: HashMap<u32, Tracked>,
    /// Processes forgotten since the last [`Table::take_forgotten`]: the signals are told,
    /// and their kernel map entries go too.
    forgotten: Vec<ProcessKey>,
    proc_root: std::path::PathBuf,
}

impl Table {
    /// The table from a /proc scan.
    pub fn new(proc_root: &Path, known: Vec<Process>) -> Self {
        Table {
            procs: known
                .into_iter()
                .map(|p| (p.pid, Tracked::new(p)))
                .collect(),
            forgotten: Vec::new(),
            proc_root: proc_root.to_path_buf(),
        }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tracked> {
        self.procs.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Tracked> {
        self.procs.values_mut()
    }

    pub fn get(&self, tgid: u32) -> Option<&Tracked> {
        self.procs.get(&tgid)
    }

    pub fn get_mut(&mut self, tgid: u32) -> Option<&mut Tracked> {
        self.procs.get_mut(&tgid)
    }

    /// The record of `tgid`, read from /proc when the table has none (the process started
    /// unseen: events were lost, or it predates a hook). A process already gone gets an
    /// empty record, which reconciliation removes.
    pub fn load(&mut self, tgid: u32) -> &mut Tracked {
        let root = &self.proc_root;
        self.procs.entry(tgid).or_insert_with(|| {
            Tracked::new(
                proc::read_process(root, tgid, None).unwrap_or_else(|| Process::unknown(tgid)),
            )
        })
    }

    /// An exec: the same process (same key) with a new image. Its verdict and signal state
    /// stay; a record under another key (an exit was lost, the pid reused) is forgotten.
    pub fn exec(&mut self, info: Process) -> &mut Tracked {
        let tgid = info.pid;
        if let Some(t) = self.procs.get(&tgid)
            && info.start != 0
            && t.key.start != 0
            && t.key.start != info.start
        {
            self.forget(tgid);
        }
        let t = self
            .procs
            .entry(tgid)
            .or_insert_with(|| Tracked::new(info.clone()));
        if t.key.start == 0 {
            t.key.start = info.start;
        }
        t.info = info;
        t
    }

    /// A fork: the child starts as a copy of its parent's description until it execs.
    pub fn fork(&mut self, parent: u32, child: u32, start: u64, comm: &str) {
        let info = match self.procs.get(&parent) {
            Some(pp) => Process {
                pid: child,
                start,
                ppid: parent,
                preexisting: false,
                ..pp.info.clone()
            },
            None => Process {
                ppid: parent,
                start,
                comm: comm.to_string(),
                ..Process::unknown(child)
            },
        };
        if let Some(t) = self.procs.get(&child) {
            if start != 0 && t.key.start == start {
                return; // already known (read from /proc between attaching and the scan)
            }
            self.forget(child);
        }
        self.procs.insert(child, Tracked::new(info));
    }

    /// The one place a process is forgotten: its record, its verdict and every signal's
    /// state for it go together.
    pub fn forget(&mut self, tgid: u32) -> Option<Tracked> {
        let t = self.procs.remove(&tgid)?;
        self.forgotten.push(t.key);
        Some(t)
    }

    /// Forgets every process that `live` (pid and start time of each running process, from
    /// a /proc walk begun at `walk_ns`, CLOCK_MONOTONIC) shows gone or replaced: what lost
    /// exit events would have leaked. A record made after the walk began is left alone: the
    /// walk may have passed its pid before it started. Returns how many were forgotten.
    pub fn reconcile(&mut self, live: &[(u32, u64)], walk_ns: u64) -> usize {
        let live: HashMap<u32, u64> = live.iter().copied().collect();
        let stale: Vec<u32> = self
            .procs
            .values()
            .filter(|t| t.since_ns < walk_ns)
            .filter(|t| match live.get(&t.key.tgid) {
                None => true,
                Some(&start) => t.key.start != 0 && start != t.key.start,
            })
            .map(|t| t.key.tgid)
            .collect();
        for &tgid in &stale {
            self.forget(tgid);
        }
        stale.len()
    }

    /// Processes forgotten since the last call.
    pub fn take_forgotten(&mut self) -> Vec<ProcessKey> {
        std::mem::take(&mut self.forgotten)
    }

    /// Ancestors of `tgid`, nearest first, at most `max`.
    pub fn ancestors(&self, tgid: u32, max: usize) -> Vec<&Process> {
        let mut out = Vec::new();
        let mut cur = self.procs.get(&tgid).map(|t| t.info.ppid);
        while let Some(ppid) = cur {
            if ppid == 0 || out.len() >= max {
                break;
            }
            match self.procs.get(&ppid) {
                Some(t) => {
                    out.push(&t.info);
                    cur = Some(t.info.ppid);
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(pid: u32, start: u64) -> Process {
        Process {
            pid,
            start,
            ppid: 1,
            uid: 5,
            comm: "sh".into(),
            exe: "/bin/sh".into(),
            argv: vec!["sh".into()],
            cgroup: "/slurm/job_3".into(),
            cgroup_id: 77,
            cgroup_v1: 0,
            package_manager: false,
            job: Some(3),
            sluid: None,
            preexisting: true,
        }
    }

    #[derive(Default)]
    struct Count(u32);

    #[test]
    fn fork_inherits_and_ancestors_walk_up() {
        let mut t = Table::new(Path::new("/proc"), vec![sh(10, 100)]);
        t.fork(10, 11, 101, "sh");
        t.fork(11, 12, 102, "sh");
        let c = &t.get(12).unwrap().info;
        assert_eq!(
            (c.ppid, c.uid, c.job, c.preexisting, c.start),
            (11, 5, Some(3), false, 102)
        );
        let chain: Vec<u32> = t.ancestors(12, 8).iter().map(|p| p.pid).collect();
        assert_eq!(chain, [11, 10]);
    }

    #[test]
    fn exec_keeps_the_process_and_a_reused_pid_starts_afresh() {
        let mut t = Table::new(Path::new("/proc"), vec![sh(10, 100)]);
        t.load(10).state::<Count>().0 = 3;
        t.exec(sh(10, 100));
        assert_eq!(t.load(10).state::<Count>().0, 3, "exec keeps signal state");
        t.exec(sh(10, 200));
        assert_eq!(t.get(10).unwrap().peek::<Count>().map(|c| c.0), None);
        let gone: Vec<u32> = t.take_forgotten().iter().map(|k| k.tgid).collect();
        assert_eq!(gone, [10]);
    }

    #[test]
    fn reconciliation_forgets_the_gone_and_the_replaced() {
        let mut t = Table::new(
            Path::new("/proc"),
            vec![sh(10, 100), sh(11, 110), sh(12, 0)],
        );
        let walk = crate::pipeline::monotonic_ns();
        assert_eq!(t.reconcile(&[(10, 100), (11, 999), (12, 5)], walk), 1);
        assert!(t.get(11).is_none() && t.get(10).is_some() && t.get(12).is_some());
        // A process that started after the walk began is not in it, and is kept.
        t.fork(10, 13, 130, "sh");
        assert_eq!(t.reconcile(&[(10, 100)], walk), 1);
        assert_eq!(t.len(), 2);
        assert!(t.get(13).is_some());
        // A fork of a process already known under the same start time keeps its record.
        t.get_mut(13).unwrap().revisions = 2;
        t.fork(10, 13, 130, "sh");
        assert_eq!(t.get(13).unwrap().revisions, 2);
    }
}
