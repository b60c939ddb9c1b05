//! A process as its exec shows it. The kernel's record has most of it (argv, parent, user,
//! start time); /proc adds the resolved executable and the cgroup path. At 5,000 execs a
//! second those /proc reads were most of the sensor's own CPU, and nearly all of them
//! returned what an earlier exec had: the same binary, the same job. So each is reused when
//! the kernel's record says it is the same thing, and read otherwise:
//!
//! - the executable by (filename, device, inode of `mm->exe_file`), kept only after `stat`
//!   of `/proc/<pid>/exe` showed that inode;
//! - the cgroup path by (cgroup v2 id, v1 key), kept only after the directories of the file
//!   read matched both (a cgroup's id is its directory's inode, and ids are never reused),
//!   so a path read after the process moved on is not kept under the ids it had at exec.
use std::{collections::HashMap, path::Path};

use super::process::Table;
use crate::{
    enrich::proc::{self as procfs, CgroupV1, Placement, Process, Want},
    kernel::events::Exec,
};

/// Most entries each cache keeps; past this it starts over (a node runs a few hundred
/// distinct binaries and cgroups).
const KEPT: usize = 4096;

pub struct Describer {
    proc_root: &'static Path,
    /// Where the cgroup v2 tree is mounted, when it is.
    v2_root: Option<String>,
    v1: CgroupV1,
    cgroups: HashMap<(u64, u64), Placement>,
    exes: HashMap<(String, u64, u64), String>,
    /// Paths reused rather than read, for the status counters.
    pub cgroups_reused: u64,
    pub exes_reused: u64,
}

impl Describer {
    pub fn new() -> Self {
        Describer {
            proc_root: Path::new("/proc"),
            v2_root: crate::kernel::loader::cgroup2_root(),
            v1: CgroupV1::read(),
            cgroups: HashMap::new(),
            exes: HashMap::new(),
            cgroups_reused: 0,
            exes_reused: 0,
        }
    }

    /// The process `e` starts, completed from /proc where nothing known says the same.
    pub fn describe(&mut self, e: &Exec, table: &Table) -> Process {
        let pid = e.meta.tgid;
        let start = procfs::ns_to_ticks(e.start_ns);
        let prev = table.get(pid).map(|t| &t.info);
        let ckey = self.cgroup_key(e);
        // The cgroup rarely changes at exec: a fork child inherits its parent's cgroups and
        // path, and another process in the same cgroups showed the same path.
        let known_cgroup = ckey.and_then(|k| {
            prev.filter(|p| !p.cgroup.is_empty() && (p.cgroup_id, p.cgroup_v1) == k)
                .map(|p| Placement {
                    path: p.cgroup.clone(),
                    job: (p.job.is_some() || p.sluid.is_some()).then(|| {
                        crate::enrich::slurm::JobRef {
                            id: p.job,
                            sluid: p.sluid.clone(),
                        }
                    }),
                    unsure: false,
                })
                .or_else(|| self.cgroups.get(&k).cloned())
        });
        let ekey = exe_key(e);
        let known_exe = ekey.as_ref().and_then(|k| self.exes.get(k).cloned());
        let need_argv = e.argv.is_empty() && e.argv_missing;
        let want = Want {
            exe: known_exe.is_none(),
            cgroup: known_cgroup.is_none(),
            argv: need_argv,
        };
        let more = procfs::exec_details(self.proc_root, pid, (start != 0).then_some(start), want);
        // Whether the path is known to be that of the cgroups at exec: only then is it
        // recorded under their key, for the process's children to reuse.
        let mut sure = known_cgroup.is_some();
        let placed = match known_cgroup {
            Some(known) => {
                self.cgroups_reused += 1;
                known
            }
            None => {
                // A process that is gone already (most execs are short) is described by its
                // parent's file, when that names the same cgroups.
                let own = more.cgroup.map(|text| {
                    let ok = ckey.is_some_and(|k| self.checks_out(&text, k));
                    (text, ok)
                });
                let read = own.or_else(|| {
                    let k = ckey?;
                    let parent = self.proc_root.join(e.ppid.to_string()).join("cgroup");
                    let text = std::fs::read_to_string(parent).ok()?;
                    self.checks_out(&text, k).then_some((text, true))
                });
                match read {
                    Some((text, verified)) => {
                        let placed = procfs::parse_cgroup_file(&text);
                        // A job-like path whose anchor is not known yet is read again next
                        // time, not reused as "no job".
                        if let (Some(k), true, false) = (ckey, verified, placed.unsure) {
                            keep(&mut self.cgroups, k, placed.clone());
                            sure = true;
                        }
                        placed
                    }
                    None => Placement::default(),
                }
            }
        };
        let exe = match known_exe {
            Some(known) => {
                self.exes_reused += 1;
                known
            }
            None => {
                // A process that is gone already: its path as executed, resolved here,
                // when that leads to the inode the kernel gave.
                // What /proc showed is another file than the kernel's when the pid is
                // already another process's (or this one exec'd again): not this exec's.
                let want_id = (e.exe_id.1 != 0).then_some(e.exe_id);
                let shown = match (more.exe, more.exe_id) {
                    (Some(_), id) if want_id.is_some() && id != want_id => None,
                    (exe, _) => exe,
                };
                let (exe, id) = match shown {
                    Some(exe) => (Some(exe), more.exe_id),
                    None => ekey
                        .as_ref()
                        .map(|k| resolve(&k.0))
                        .filter(|(_, id)| *id == want_id)
                        .unwrap_or((None, None)),
                };
                if let (Some(k), Some(exe), Some(id)) = (ekey, &exe, id)
                    && id == (k.1, k.2)
                    && !exe.ends_with(" (deleted)")
                {
                    keep(&mut self.exes, k, exe.clone());
                }
                exe.unwrap_or_else(|| e.filename.clone())
            }
        };
        let ppid = match (e.ppid, prev) {
            (0, Some(p)) => p.ppid,
            (p, _) => p,
        };
        let argv = if need_argv {
            more.argv.unwrap_or_default()
        } else {
            e.argv.clone()
        };
        // Started by the package manager: the record this exec replaces (the fork's copy of
        // the parent, or this process's previous image) says so.
        let started_by_installer = prev.is_some_and(|p| p.package_manager && p.start == start);
        Process {
            pid,
            start,
            ppid,
            uid: e.uid,
            comm: e.comm.clone(),
            package_manager: started_by_installer
                || minerwatch_detect::persistence::is_package_manager(&exe, &argv),
            exe,
            job: placed.job.as_ref().and_then(|j| j.id),
            sluid: placed.job.and_then(|j| j.sluid),
            cgroup: placed.path,
            cgroup_id: if sure { e.meta.cgroup_id } else { 0 },
            cgroup_v1: if sure { e.cgroup_v1 } else { 0 },
            argv,
            preexisting: false,
        }
    }

    /// What tells `e`'s cgroups apart: the v2 id and the v1 key. `None` when the kernel could
    /// not tell (no v2 id, or v1 hierarchies without their key), and the path is read.
    fn cgroup_key(&self, e: &Exec) -> Option<(u64, u64)> {
        let v1_known = self.v1.hierarchies.is_empty() || e.cgroup_v1 != 0;
        (e.meta.cgroup_id != 0 && v1_known).then_some((e.meta.cgroup_id, e.cgroup_v1))
    }

    /// The cgroup file read names the cgroups of `key`: the v2 directory's inode is the v2
    /// id, and the v1 directories give the v1 key.
    fn checks_out(&self, cgroup_file: &str, (v2, v1): (u64, u64)) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let Some(root) = &self.v2_root else {
            return false;
        };
        let v2_dir = cgroup_file
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| format!("{}{}", root.trim_end_matches('/'), p));
        let v2_ok = v2_dir.is_some_and(|d| std::fs::metadata(d).is_ok_and(|m| m.ino() == v2));
        let v1_ok = self.v1.hierarchies.is_empty() || self.v1.key_of(cgroup_file) == Some(v1);
        v2_ok && v1_ok
    }
}

/// What tells executables apart: the path as executed and the inode it led to. Only
/// absolute paths outside /proc and /dev (`fexecve` and memfd runs go through
/// `/dev/fd/<n>`, whose target changes with every process).
fn exe_key(e: &Exec) -> Option<(String, u64, u64)> {
    let f = &e.filename;
    let usable = f.starts_with('/') && !f.starts_with("/proc/") && !f.starts_with("/dev/");
    (usable && e.exe_id.1 != 0).then(|| (f.clone(), e.exe_id.0, e.exe_id.1))
}

/// `path` with every link resolved, and the (device, inode) it leads to.
fn resolve(path: &str) -> (Option<String>, Option<(u64, u64)>) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(real) = std::fs::canonicalize(path) else {
        return (None, None);
    };
    let id = std::fs::metadata(&real).ok().map(|m| (m.dev(), m.ino()));
    (
        Some(procfs::escape_bytes(real.as_os_str().as_encoded_bytes())),
        id,
    )
}

fn keep<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, k: K, v: V) {
    if map.len() >= KEPT {
        map.clear();
    }
    map.insert(k, v);
}
