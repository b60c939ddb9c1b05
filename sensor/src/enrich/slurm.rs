//! Slurm jobs: which cgroups are jobs', and what Slurm says about each job.
//!
//! A process is in a job when one line of its `/proc/<pid>/cgroup` lies under an *anchor*:
//! a folder slurmstepd makes job cgroups in, owned by root and writable by root only, so no
//! user can make a folder there. Anchors are learned from slurmd's own cgroups (v1: the
//! `slurm` or `slurm_<node>` folder beside slurmd in each hierarchy; v2: `slurmstepd.scope`
//! beside slurmd's unit) or named in the config, and learned again when a path that looks
//! like a job's matches none (Slurm makes its folders with the first job).
//!
//! What a job is (user, account, partition, CPUs, GPUs, start) comes from `squeue`, on a
//! thread of its own since the controller may be slow or away; the pipeline reads the cache
//! and asks for what it lacks, like user names.
use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Condvar, Mutex, RwLock, mpsc},
    time::{Duration, Instant},
};

use hashbrown::HashMap;
pub use minerwatch_detect::slurm::{JobInfo, JobRef};
use minerwatch_detect::slurm::{SQUEUE_FORMAT, is_sluid, job_under, parse_squeue};

use super::proc::CgroupV1;

/// A folder job cgroups are made in: `hierarchy` is the id `/proc/<pid>/cgroup` lines start
/// with (0 for cgroup v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub hierarchy: u32,
    pub path: String,
}

/// The node's anchors, shared by whatever reads cgroup files (exec records, /proc scans).
#[derive(Debug, Default)]
struct Places {
    anchors: Vec<Anchor>,
    /// slurmd runs here, anchors were configured, or the node has a `slurm.conf` (a login
    /// node): sustained CPU outside every job is an allocation question.
    slurm_node: bool,
    configured: Vec<String>,
    learned_at: Option<Instant>,
    /// The `slurm.conf` slurmd runs with, when it names one (`-f`, or `SLURM_CONF`), so
    /// `squeue` asks the same controller.
    conf: Option<PathBuf>,
}

static PLACES: RwLock<Places> = RwLock::new(Places {
    anchors: Vec::new(),
    slurm_node: false,
    configured: Vec::new(),
    learned_at: None,
    conf: None,
});

/// Where a node that is part of a Slurm cluster keeps its config (Debian's, upstream's).
const SITE_CONFIGS: &[&str] = &["/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf"];

/// Learned again at most this often when a job-like path matches no anchor.
const RELEARN: Duration = Duration::from_secs(1);

/// Sets the configured anchors and learns slurmd's. Returns the anchors in force.
pub fn init(configured: &[String]) -> Vec<Anchor> {
    if let Ok(mut p) = PLACES.write() {
        p.configured = configured.to_vec();
    }
    learn()
}

/// Looks for slurmd and its anchors again.
pub fn learn_again() {
    learn();
}

/// Whether this node runs Slurm (slurmd seen, or anchors configured).
pub fn slurm_node() -> bool {
    PLACES.read().is_ok_and(|p| p.slurm_node)
}

/// Where a process is: in a job (and the line's path), in none, or in none that is known
/// yet (a path like a job's under no anchor known: slurmd's folder may be new, and the
/// anchors are being learned again off this thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Job(JobRef, String),
    None,
    NotYet,
}

/// Whether anchors are being learned on a thread now.
static LEARNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The job a process is in, from its `/proc/<pid>/cgroup`. Never blocks on a /proc walk.
pub fn job_of(cgroup_file: &str) -> Found {
    if let Some((j, p)) = find(cgroup_file) {
        return Found::Job(j, p);
    }
    if !looks_like_job(cgroup_file) {
        return Found::None;
    }
    let due = PLACES
        .read()
        .is_ok_and(|p| p.learned_at.is_none_or(|t| t.elapsed() >= RELEARN));
    if due && !LEARNING.swap(true, std::sync::atomic::Ordering::AcqRel) {
        let spawned = std::thread::Builder::new()
            .name("minerwatch-anchors".into())
            .spawn(|| {
                learn();
                LEARNING.store(false, std::sync::atomic::Ordering::Release);
            });
        if spawned.is_err() {
            LEARNING.store(false, std::sync::atomic::Ordering::Release);
        }
    }
    Found::NotYet
}

fn find(cgroup_file: &str) -> Option<(JobRef, String)> {
    let places = PLACES.read().ok()?;
    cgroup_file.lines().find_map(|line| {
        let (h, path) = split_line(line)?;
        places
            .anchors
            .iter()
            .filter(|a| a.hierarchy == h)
            .find_map(|a| job_under(path, &a.path))
            .map(|j| (j, path.to_string()))
    })
}

fn looks_like_job(cgroup_file: &str) -> bool {
    cgroup_file
        .lines()
        .filter_map(split_line)
        .any(|(_, p)| p.split('/').any(|s| s.starts_with("job_") || is_sluid(s)))
}

/// `4:memory:/a/b` → (4, "/a/b").
fn split_line(line: &str) -> Option<(u32, &str)> {
    let mut f = line.splitn(3, ':');
    let h = f.next()?.parse().ok()?;
    f.next()?;
    Some((h, f.next()?))
}

/// Finds slurmd and the anchors beside it, checks every anchor's owner, and puts them in
/// force.
fn learn() -> Vec<Anchor> {
    let v1 = CgroupV1::read();
    let v2_root = crate::kernel::loader::cgroup2_root();
    let mount = |h: u32| -> Option<String> {
        if h == 0 {
            v2_root.clone()
        } else {
            v1.hierarchies
                .iter()
                .find(|x| x.id == h)
                .and_then(|x| x.mount.clone())
        }
    };
    let configured = PLACES
        .read()
        .map(|p| p.configured.clone())
        .unwrap_or_default();
    let found = slurmd(Path::new("/proc"));
    let slurmd = found.as_ref().map(|s| s.cgroups.clone());
    let mut candidates: Vec<Anchor> = Vec::new();
    let hierarchies: Vec<u32> = std::iter::once(0)
        .chain(v1.hierarchies.iter().map(|h| h.id))
        .collect();
    for path in &configured {
        for &h in &hierarchies {
            candidates.push(Anchor {
                hierarchy: h,
                path: path.trim_end_matches('/').to_string(),
            });
        }
    }
    if let Some(text) = &slurmd {
        for (h, path) in text.lines().filter_map(split_line) {
            let base = path.trim_end_matches('/');
            if h == 0 {
                // slurmstepd.scope sits beside slurmd's own unit.
                let parent = base.rsplit_once('/').map_or("", |(p, _)| p);
                candidates.push(Anchor {
                    hierarchy: 0,
                    path: format!("{parent}/slurmstepd.scope"),
                });
            } else if let Some(m) = mount(h) {
                let Ok(dir) = std::fs::read_dir(format!("{m}{base}")) else {
                    continue;
                };
                for e in dir.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name == "slurm" || name.starts_with("slurm_") {
                        candidates.push(Anchor {
                            hierarchy: h,
                            path: format!("{base}/{name}"),
                        });
                    }
                }
            }
        }
    }
    let anchors: Vec<Anchor> = candidates
        .into_iter()
        .filter(|a| mount(a.hierarchy).is_some_and(|m| root_only(&format!("{m}{}", a.path))))
        .collect();
    if let Ok(mut p) = PLACES.write() {
        if p.anchors != anchors {
            tracing::info!(anchors = ?anchors, "Slurm job cgroups");
        }
        p.anchors = anchors.clone();
        // A login node runs no slurmd but has the cluster's config.
        p.slurm_node = slurmd.is_some()
            || !configured.is_empty()
            || SITE_CONFIGS.iter().any(|c| Path::new(c).exists());
        p.conf = found.and_then(|s| s.conf);
        p.learned_at = Some(Instant::now());
    }
    anchors
}

/// A folder that only root can add to: owned by root, not writable by group or others.
fn root_only(dir: &str) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0)
}

struct Slurmd {
    cgroups: String,
    conf: Option<PathBuf>,
}

/// A running slurmd: named `slurmd`, every uid root (real, effective, saved, file system),
/// and running a root-owned executable that only root can write, in a folder only root can
/// write: a user's symlink to a setuid program named `slurmd` is none of these. Its cgroup
/// file, and the config it was given when that file too is root's alone.
fn slurmd(proc_root: &Path) -> Option<Slurmd> {
    let dir = std::fs::read_dir(proc_root).ok()?;
    dir.flatten().find_map(|e| {
        let name = e.file_name();
        let pid: u32 = name.to_str()?.parse().ok()?;
        let d = proc_root.join(pid.to_string());
        let comm = std::fs::read_to_string(d.join("comm")).ok()?;
        if comm.trim_end() != "slurmd" || !all_uids_root(&std::fs::read_to_string(d.join("status")).ok()?) {
            return None;
        }
        let exe = std::fs::read_link(d.join("exe")).ok()?;
        if !root_only_file(&exe) {
            return None;
        }
        let cgroups = std::fs::read_to_string(d.join("cgroup")).ok()?;
        let split = |b: Vec<u8>| -> Vec<String> {
            b.split(|&c| c == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let argv = split(std::fs::read(d.join("cmdline")).unwrap_or_default());
        let env = split(std::fs::read(d.join("environ")).unwrap_or_default());
        let conf = conf_of(&argv, &env).filter(|c| {
            let ok = c.is_absolute() && root_only_file(c);
            if !ok {
                tracing::warn!(conf = %c.display(), "slurmd's config is not root's alone: squeue is not pointed at it");
            }
            ok
        });
        Some(Slurmd { cgroups, conf })
    })
}

/// `Uid:` and `Gid:` of `/proc/<pid>/status` are 0 in all four places.
fn all_uids_root(status: &str) -> bool {
    let zero = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .is_some_and(|v| {
                v.split_whitespace().count() == 4 && v.split_whitespace().all(|f| f == "0")
            })
    };
    zero("Uid:") && zero("Gid:")
}

/// A file owned by root that neither group nor others can write, in folders of which the
/// same is true, all the way up.
fn root_only_file(path: &Path) -> bool {
    let safe = |p: &Path| {
        std::fs::symlink_metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
    };
    let Ok(real) = std::fs::canonicalize(path) else {
        return false;
    };
    safe(&real) && real.ancestors().skip(1).all(safe)
}

/// `slurmd -f PATH` (or `-fPATH`), else `SLURM_CONF=PATH` in its environment.
fn conf_of(argv: &[String], env: &[String]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        if a == "-f" {
            return args.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("-f").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
    }
    env.iter()
        .find_map(|v| v.strip_prefix("SLURM_CONF="))
        .map(PathBuf::from)
}

/// What Slurm said about a job: its record, or that it knows no such job (a SLUID 22.05
/// cannot read, a job already gone, or no controller answering).
/// With when it was given and how many answers in a row said "no such job": that is asked
/// again after [`ASK_AGAIN`], doubled each time up to [`ASK_AGAIN_MAX`], since a job can be
/// seen (its processes, a preexisting one's folder) before its controller answers, and a
/// controller that is struggling must not be asked harder.
type Answer = (Option<Arc<JobInfo>>, Instant, u32);
type Cache = Arc<(Mutex<HashMap<JobRef, Answer>>, Condvar)>;

/// How long "no such job" first stands before the job is asked for again.
const ASK_AGAIN: Duration = Duration::from_secs(5);
const ASK_AGAIN_MAX: Duration = Duration::from_secs(300);

/// The pipeline's handle on the `squeue` thread.
pub struct Jobs {
    cache: Cache,
    asked: HashSet<JobRef>,
    /// A job to ask for, and how many times in a row Slurm said it knows none.
    tx: Option<mpsc::Sender<(JobRef, u32)>>,
    /// squeue runs that failed to start or answered nothing usable, for the status.
    pub errors: Arc<std::sync::atomic::AtomicU64>,
}

impl Jobs {
    /// Starts the thread that runs `squeue`; `None` asks nothing (every job unverified).
    pub fn spawn(squeue: Option<PathBuf>) -> Self {
        let cache: Cache = Arc::default();
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tx = squeue.and_then(|bin| {
            let (tx, rx) = mpsc::channel::<(JobRef, u32)>();
            let shared = cache.clone();
            let errs = errors.clone();
            std::thread::Builder::new()
                .name("minerwatch-slurm".into())
                .spawn(move || {
                    for (job, misses) in rx {
                        let info = ask(&bin, &job, &errs).map(Arc::new);
                        let misses = if info.is_some() { 0 } else { misses + 1 };
                        if let Ok(mut c) = shared.0.lock() {
                            c.insert(job, (info, Instant::now(), misses));
                        }
                        shared.1.notify_all();
                    }
                })
                .map_err(|e| tracing::warn!(reason = %e, "cannot start the Slurm thread: jobs show ids only"))
                .ok()
                .map(|_| tx)
        });
        Jobs {
            cache,
            asked: HashSet::new(),
            tx,
            errors,
        }
    }

    /// Asks for `job` if it was never asked for.
    pub fn want(&mut self, job: &JobRef) {
        self.ask(job, 0);
    }

    fn ask(&mut self, job: &JobRef, misses: u32) {
        if self.asked.len() >= KEPT {
            // Start over, answers and all, so no job is left asked but unanswered; those
            // still running are asked again as their processes show up.
            self.asked.clear();
            if let Ok(mut c) = self.cache.0.lock() {
                c.clear();
            }
        }
        if let Some(tx) = &self.tx
            && self.asked.insert(job.clone())
        {
            let _ = tx.send((job.clone(), misses));
        }
    }

    /// What Slurm said about `job`, waiting at most `wait` for the answer.
    pub fn info_within(&mut self, job: &JobRef, wait: Duration) -> Option<Arc<JobInfo>> {
        self.tx.as_ref()?;
        self.want(job);
        let deadline = Instant::now() + wait;
        let (lock, answered) = &*self.cache;
        let mut cache = lock.lock().ok()?;
        loop {
            match cache.get(job) {
                Some((Some(info), _, _)) => return Some(info.clone()),
                Some(&(None, at, misses)) => {
                    let after = ASK_AGAIN
                        .saturating_mul(1 << misses.saturating_sub(1).min(10))
                        .min(ASK_AGAIN_MAX);
                    if at.elapsed() >= after {
                        // Slurm knew nothing a while ago; ask again, and say nothing now.
                        cache.remove(job);
                        drop(cache);
                        self.asked.remove(job);
                        self.ask(job, misses);
                    }
                    return None;
                }
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            cache = answered.wait_timeout(cache, left).ok()?.0;
        }
    }

    /// `job` was asked for and Slurm has not answered yet.
    pub fn asking(&self, job: &JobRef) -> bool {
        self.tx.is_some()
            && self.asked.contains(job)
            && self.cache.0.lock().is_ok_and(|c| !c.contains_key(job))
    }

    /// (CPUs, GPUs) each job Slurm answered for holds on this node: its CPUs shared evenly
    /// over its nodes (Slurm's `%C` is the whole job's), its GPUs per node.
    pub fn per_node(&self) -> HashMap<u64, (u32, u32)> {
        let Ok(cache) = self.cache.0.lock() else {
            return HashMap::new();
        };
        cache
            .values()
            .filter_map(|(j, _, _)| j.as_ref())
            .map(|j| (j.id, (j.cpus.div_ceil(j.nodes.max(1)), j.gpus)))
            .collect()
    }

    /// Slurm's record of `job` if the thread has answered.
    pub fn info(&mut self, job: &JobRef) -> Option<Arc<JobInfo>> {
        self.info_within(job, Duration::ZERO)
    }
}

/// Jobs remembered; past this the cache starts over (a node runs a few jobs at a time).
const KEPT: usize = 4096;

/// Longest an alert about a job is held for Slurm's answer (it never blocks the pipeline).
pub const JOB_WAIT: Duration = Duration::from_millis(500);

/// Longest `squeue` may take before its answer is taken as none.
const SQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most of squeue's output read (one job's lines, an array's tasks).
const SQUEUE_MAX_OUTPUT: u64 = 1 << 20;

/// `squeue` for one job, run with a clean environment (the config slurmd uses, a fixed
/// PATH), its output read as it comes and cut off at [`SQUEUE_TIMEOUT`].
fn ask(bin: &Path, job: &JobRef, errors: &std::sync::atomic::AtomicU64) -> Option<JobInfo> {
    use std::io::Read as _;
    let id = match (&job.id, &job.sluid) {
        (Some(id), _) => id.to_string(),
        (None, Some(s)) => s.clone(),
        (None, None) => return None,
    };
    let failed = || {
        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        None
    };
    let mut cmd = Command::new(bin);
    cmd.env_clear().env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    if let Some(conf) = PLACES.read().ok().and_then(|p| p.conf.clone()) {
        cmd.env("SLURM_CONF", conf);
    }
    let child = cmd
        .args(["-h", "-t", "all", "-j", &id, "-o", SQUEUE_FORMAT])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(reason = %e, "cannot run squeue");
            return failed();
        }
    };
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return failed();
    };
    // Read on a thread of its own, so a long answer cannot fill the pipe and stall squeue.
    let reader = std::thread::Builder::new()
        .name("minerwatch-squeue-out".into())
        .spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.take(SQUEUE_MAX_OUTPUT).read_to_end(&mut out);
            out
        });
    let started = Instant::now();
    let finished = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.success(),
            Ok(None) if started.elapsed() < SQUEUE_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(2));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
        }
    };
    let out = reader.ok().and_then(|r| r.join().ok()).unwrap_or_default();
    if !finished {
        return failed();
    }
    // The line of the job asked for (an array's master lists its tasks too); for a SLUID,
    // the job squeue names for it.
    let info = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(parse_squeue)
        .find(|i| job.id.is_none_or(|id| id == i.id));
    if info.is_none() {
        return failed();
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn slurmd_is_root_in_every_uid_and_runs_a_file_only_root_writes() {
        let root = "Name:\tslurmd\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert!(all_uids_root(root));
        // A setuid program run by uid 1000: real uid 1000.
        assert!(!all_uids_root(
            "Uid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n"
        ));
        assert!(!all_uids_root("Gid:\t0\t0\t0\t0\n"));
        assert!(root_only_file(Path::new("/usr/bin/env")));
        assert!(!root_only_file(Path::new("/tmp")), "others may write /tmp");
        assert!(!root_only_file(Path::new("/nonexistent/slurmd")));
    }

    #[test]
    fn the_config_slurmd_was_given() {
        assert_eq!(
            conf_of(&v(&["slurmd", "-D", "-f", "/x/slurm.conf"]), &[]),
            Some(PathBuf::from("/x/slurm.conf"))
        );
        assert_eq!(
            conf_of(&v(&["slurmd", "-f/y.conf"]), &v(&["SLURM_CONF=/z"])),
            Some(PathBuf::from("/y.conf"))
        );
        assert_eq!(
            conf_of(&v(&["slurmd"]), &v(&["A=1", "SLURM_CONF=/z"])),
            Some(PathBuf::from("/z"))
        );
        assert_eq!(conf_of(&v(&["slurmd", "-D"]), &[]), None);
    }
}
