//! The pipeline: kernel events in, alerts and evidence out. It owns all mutable detection
//! state: the table of processes ([`process`], one record per process, forgotten in one
//! place) and the signals ([`signals`], one file each behind one interface). The run loop
//! ([`run`]) only moves records between the kernel, this and the outputs.
mod allow;
mod describe;
mod jobs;
pub use jobs::JobChange;
mod launch;
pub mod process;
mod run;
pub mod signals;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use minerwatch_common::FpuThread;
use minerwatch_detect::{Finding, Reason, Severity};

pub use run::{RunError, run};

use self::{
    process::{ProcessKey, Table},
    signals::{Found, Signal, Tick},
};
use crate::{
    api::{LossKind, Publisher, StatusReport, convert},
    config::Config,
    enrich::{
        proc::{self as procfs, Process},
        slurm::{self, Jobs},
        users::Users,
    },
    kernel::{
        CpuTotals, Event,
        events::{self, DecodeError, Meta},
    },
    output::{Outputs, StatsRecord, rfc3339},
};

/// An ancestor, as an alert names it.
#[derive(Debug, Clone)]
pub struct ParentInfo {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
}

/// An alert as the pipeline decided it: the verdict and who it is about. Rendered once, by
/// [`convert::alert`], for every output.
#[derive(Debug, Clone)]
pub struct AlertRecord {
    pub id: String,
    pub update: u32,
    pub severity: Severity,
    pub score: u32,
    pub reasons: Vec<Reason>,
    pub process: Process,
    pub user: Option<Arc<str>>,
    /// What Slurm said about the process's job.
    pub job: Option<Arc<slurm::JobInfo>>,
    pub connection: Option<SocketAddr>,
    pub parents: Vec<ParentInfo>,
    pub at: SystemTime,
    pub first_seen_at: SystemTime,
    pub scope: Scope,
    /// The allow-list entry it met, in words; its severity is held at low.
    pub allowed: Option<String>,
}

/// What an alert is about: one process, or a Slurm job with all its processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Process,
    Job,
}

/// The job a process is in, as its cgroup names it.
fn job_ref(p: &Process) -> Option<slurm::JobRef> {
    (p.job.is_some() || p.sluid.is_some()).then(|| slurm::JobRef {
        id: p.job,
        sluid: p.sluid.clone(),
    })
}

/// Longest an alert waits for its user's name from NSS: once per uid, the first time.
const USER_WAIT: Duration = Duration::from_millis(20);

/// What the pipeline counts about itself.
#[derive(Debug, Default)]
struct Counters {
    events: u64,
    decode_errors: u64,
    alerts: u64,
    reconciled: u64,
    /// Pool-feed reloads refused (a bad or unreadable feed; the lists in force stayed).
    pool_feed_errors: u64,
    /// Pool-feed reloads that went into force.
    pool_reloads: u64,
    /// Persistence-watch queue overflows (changes not seen), and directories watched.
    file_overflows: u64,
    files_watched: u64,
    /// Saturation findings that only refreshed the alert: no event, nothing changed.
    saturation_unsent: u64,
}

/// A saturation share that moved this much since the last event is sent again.
const SATURATION_STEP: f64 = 0.10;
/// Ongoing saturation is sent again after this long, so a SOC sees that it lasts.
const SATURATION_REFRESH_NS: u64 = 60_000_000_000;

/// When the last saturation event of a process was sent and its share then, and when its
/// saturation was last found (sent or not).
#[derive(Default)]
struct SaturationShown {
    sent: Option<(u64, f64)>,
    found_ns: u64,
}

/// What was last sent of each sustained finding (saturation of a CPU or of each GPU,
/// allocation breaches), by kind: each is found again at every tick while it lasts.
#[derive(Default)]
struct SustainedShown(hashbrown::HashMap<(&'static str, u32), SaturationShown>);

/// Saturation not found for this long ended; found again, it is a new start.
const SATURATION_GAP_NS: u64 = 2_500_000_000;

pub struct Pipeline {
    cfg: Config,
    table: Table,
    users: Users,
    /// What Slurm says about jobs (`squeue` on its own thread).
    jobs: Jobs,
    /// One alert per job, gathering its processes' alerts.
    job_alerts: jobs::JobAlerts,
    /// Alerts waiting (briefly) for Slurm's answer about their job, oldest first.
    held: std::collections::VecDeque<(AlertRecord, Instant)>,
    /// Jobs with processes here, for their start and end events.
    job_life: jobs::JobLife,
    allow: allow::Allow,
    /// GPUs through NVML, polled on their own thread.
    gpus: crate::enrich::gpu::Gpus,
    signals: Vec<Box<dyn Signal>>,
    counters: Counters,
    /// Launchers' evidence, held for the command they run.
    launches: launch::Launches,
    /// Alerts raised since the last flush, the latest per process: evidence that arrives in
    /// one batch of events (exec, connect, first bytes) makes one alert, not one per reason.
    pending: Vec<AlertRecord>,
    pub api: Publisher,
    pub out: Outputs,
    /// Processes whose exit was seen in this drain: forgotten once both rings are drained,
    /// since the decisive ring may still hold their last first bytes.
    exiting: Vec<ProcessKey>,
    /// Those of the drain before: forgotten at this settle (see [`Pipeline::settle`]).
    exited: Vec<ProcessKey>,
    /// tgids forgotten since the kernel's maps were last pruned.
    forgotten: Vec<u32>,
    /// Loss counters as last told to the stream, by name.
    reported: BTreeMap<&'static str, u64>,
    /// Wall clock minus CLOCK_MONOTONIC, to date kernel timestamps.
    wall_offset_ns: i128,
    /// Completes exec records from /proc, or from what earlier ones showed.
    describer: describe::Describer,
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn unix_ns(t: SystemTime) -> i128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

impl Pipeline {
    pub fn new(cfg: Config, known: Vec<Process>, api: Publisher, out: Outputs) -> Self {
        let me = std::process::id();
        let known: Vec<Process> = known.into_iter().filter(|p| p.pid != me).collect();
        let users = Users::spawn(known.iter().map(|p| p.uid));
        Pipeline {
            table: Table::new(Path::new("/proc"), known),
            signals: signals::all(&cfg),
            users,
            jobs: Jobs::spawn(cfg.slurm_squeue.clone()),
            job_alerts: jobs::JobAlerts::default(),
            held: std::collections::VecDeque::new(),
            job_life: jobs::JobLife::default(),
            allow: allow::Allow::new(cfg.allow.clone()),
            gpus: crate::enrich::gpu::Gpus::spawn(cfg.nvml_library.clone()),
            counters: Counters::default(),
            launches: launch::Launches::default(),
            pending: Vec::new(),
            exiting: Vec::new(),
            exited: Vec::new(),
            forgotten: Vec::new(),
            api,
            out,
            reported: BTreeMap::new(),
            wall_offset_ns: unix_ns(SystemTime::now()) - monotonic_ns() as i128,
            describer: describe::Describer::new(),
            cfg,
        }
    }

    pub fn cfg(&self) -> &Config {
        &self.cfg
    }

    pub fn processes(&self) -> usize {
        self.table.len()
    }

    fn wall(&self, ktime_ns: u64) -> SystemTime {
        let ns = (ktime_ns as i128 + self.wall_offset_ns).max(0) as u64;
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)
    }

    /// Activity (exec, exit, connect) is built only when an output takes it.
    fn activity(
        &mut self,
        at: SystemTime,
        body: impl FnOnce(&mut Self) -> minerwatch_proto::v1::event::Body,
    ) {
        if !self.api.wants_activity() && !self.cfg.events {
            return;
        }
        let body = body(self);
        let ev = self.api.emit(at, body, false);
        if self.cfg.events {
            self.out.event(&ev);
        }
    }

    /// Every process already running, and every connection already open, gets the checks a
    /// new one gets. Called once, after the hooks attached.
    pub fn start(&mut self, connections: Vec<Event>) {
        let now = monotonic_ns();
        let tgids: Vec<u32> = self.table.iter().map(|t| t.key.tgid).collect();
        let mut found = Vec::new();
        for tgid in tgids {
            let t = self.table.load(tgid);
            let mut own = Vec::new();
            for s in &mut self.signals {
                s.on_process(t, &mut own);
            }
            let key = t.key;
            let argv = t.info.argv.clone();
            let ancestors = self.ancestor_tgids(key.tgid);
            self.launches.on_exec(key, &argv, &ancestors, now, &mut own);
            found.append(&mut own);
        }
        let running = self.table.iter().map(|t| (t.key.tgid, &t.info.argv[..]));
        self.launches.join_running(running, &mut found);
        for ev in &connections {
            let t = self.table.load(ev.meta().tgid);
            for s in &mut self.signals {
                s.on_event(ev, t, &mut found);
            }
        }
        for f in found {
            self.raise(now, f);
        }
        self.flush();
    }

    /// One record from a ring.
    pub fn on_kernel(&mut self, ev: Result<Event, DecodeError>) {
        self.counters.events += 1;
        match ev {
            Ok(ev) => self.handle(ev),
            Err(e) => {
                self.counters.decode_errors += 1;
                tracing::debug!(reason = %e, "undecodable event");
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        tracing::trace!(event = ?ev, "event");
        let mut found = Vec::new();
        let Meta {
            tgid,
            ktime_ns: ktime,
            ..
        } = *ev.meta();
        match &ev {
            Event::Fork(f) => {
                let start = procfs::ns_to_ticks(f.child_start_ns);
                self.table.fork(f.meta.tgid, f.child, start, &f.comm);
                return;
            }
            Event::Exit(m) => {
                let at = self.wall(m.ktime_ns);
                let tgid = m.tgid;
                self.activity(at, |p| {
                    convert::exit(tgid, p.table.get(tgid).map(|t| &t.info))
                });
                if let Some(t) = self.table.get_mut(tgid) {
                    let key = t.key;
                    self.exiting.push(key);
                    // What the signals still hold for it is said now.
                    for s in &mut self.signals {
                        s.on_exit(t, &mut found);
                    }
                    // A launcher whose command never showed up: its evidence is its own.
                    let table = &self.table;
                    let alive = |k: ProcessKey| table.get(k.tgid).is_some_and(|t| t.key == k);
                    found.extend(self.launches.due(m.ktime_ns, Some(key), alive));
                }
                for f in found {
                    self.raise(m.ktime_ns, f);
                }
                return;
            }
            Event::Exec(e) => {
                let info = self.describer.describe(e, &self.table);
                // Asked now, so the name and the job are there when an alert needs them.
                self.users.want(info.uid);
                let job = job_ref(&info);
                if let Some(j) = &job {
                    self.jobs.want(j);
                    self.job_life.seen(j.clone(), info.pid, e.meta.ktime_ns);
                }
                let at = self.wall(e.meta.ktime_ns);
                self.activity(at, |p| {
                    let user = p.users.name(info.uid);
                    let job = job.and_then(|j| p.jobs.info(&j));
                    convert::exec(&info, user.as_deref(), job.as_deref())
                });
                let t = self.table.exec(info);
                for s in &mut self.signals {
                    s.on_process(t, &mut found);
                }
                let key = t.key;
                let argv = t.info.argv.clone();
                let ancestors = self.ancestor_tgids(key.tgid);
                self.launches
                    .on_exec(key, &argv, &ancestors, e.meta.ktime_ns, &mut found);
            }
            Event::Connect(c) => {
                let at = self.wall(c.meta.ktime_ns);
                self.activity(at, |_| convert::connect(c));
            }
            Event::PoolHit(_)
            | Event::Payload(_)
            | Event::Close(_)
            | Event::Sysctl(_)
            | Event::Dns(_)
            | Event::File(_)
            | Event::Rename(_)
            | Event::Kill(_)
            | Event::Flow(_) => {}
        }
        let t = match &ev {
            // A close concerns a stream already held, never a process to read from /proc.
            Event::Close(_) => match self.table.get_mut(tgid) {
                Some(t) => t,
                None => return,
            },
            _ => self.table.load(tgid),
        };
        for s in &mut self.signals {
            s.on_event(&ev, t, &mut found);
        }
        for f in found {
            self.raise(ktime, f);
        }
    }

    /// Forgets the processes that exited, and tells the signals about every process the
    /// table forgot (at exit, when an exec or fork showed a pid reused, at reconciliation).
    ///
    /// A process that exited is forgotten one settle later than its exit was read: a file
    /// change it made just before it exited can be read from fanotify after the rings were
    /// drained (fanotify is read first), and must still find its record.
    fn settle(&mut self) {
        let due = std::mem::replace(&mut self.exited, std::mem::take(&mut self.exiting));
        for key in due {
            // The pid may already belong to a newer process: only the one that exited goes.
            if self.table.get(key.tgid).is_some_and(|t| t.key == key) {
                self.table.forget(key.tgid);
            }
        }
        for key in self.table.take_forgotten() {
            for s in &mut self.signals {
                s.forget(key);
            }
            self.forgotten.push(key.tgid);
        }
    }

    /// The tgids of `tgid`'s ancestors, nearest first (as far as the table knows them).
    fn ancestor_tgids(&self, tgid: u32) -> Vec<u32> {
        self.table
            .ancestors(tgid, 16)
            .into_iter()
            .map(|p| p.pid)
            .collect()
    }

    /// tgids forgotten since the last call (their kernel map entries go too).
    pub fn take_forgotten(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.forgotten)
    }

    /// Changes to watched files, from the persistence watch; `overflows` and `watched` are
    /// its counts so far.
    pub fn on_files(
        &mut self,
        changes: Vec<crate::files::FileChange>,
        overflows: u64,
        watched: usize,
    ) {
        self.counters.file_overflows = overflows;
        self.counters.files_watched = watched as u64;
        for change in changes {
            let meta = Meta {
                tgid: change.pid,
                tid: 0,
                ktime_ns: monotonic_ns(),
                cgroup_id: 0,
            };
            self.counters.events += 1;
            self.handle(Event::File(events::FileEvent { meta, change }));
        }
    }

    /// The pool lists in force, for the signals that match against them.
    pub fn set_intel(&mut self, lists: &Arc<minerwatch_detect::intel::Lists>) {
        for s in &mut self.signals {
            s.on_intel(lists);
        }
    }

    /// A reload of the pool feeds was refused.
    pub fn intel_refused(&mut self) {
        self.counters.pool_feed_errors += 1;
    }

    /// The pool lists were reloaded (and given to the signals with [`Pipeline::set_intel`]).
    pub fn intel_reloaded(&mut self) {
        self.counters.pool_reloads += 1;
    }

    /// Once a second: CPU shares and every signal's tick.
    pub fn tick(
        &mut self,
        cpu: &CpuTotals,
        rounding: &[(u32, FpuThread)],
        dt: Duration,
        now_ns: u64,
    ) {
        let allocated = self.jobs.per_node();
        let gpu = self.gpus.snapshot();
        let tick = Tick {
            now_ns,
            dt,
            cpu,
            rounding,
            allocated: &allocated,
            gpu: &gpu.processes,
        };
        let table = &self.table;
        let alive = |k: ProcessKey| table.get(k.tgid).is_some_and(|t| t.key == k);
        let mut found = self.launches.due(now_ns, None, alive);
        for s in &mut self.signals {
            s.on_tick(&tick, &mut self.table, &mut found);
        }
        for f in found {
            self.raise(now_ns, f);
        }
        self.job_events(now_ns);
    }

    /// Jobs whose first process appeared, or whose last went, since the last tick.
    fn job_events(&mut self, now_ns: u64) {
        let mut present: hashbrown::HashMap<slurm::JobRef, u32> = hashbrown::HashMap::new();
        for t in self.table.iter() {
            if let Some(j) = job_ref(&t.info) {
                *present.entry(j).or_default() += 1;
            }
        }
        let jobs = &mut self.jobs;
        let changes = self
            .job_life
            .tick(now_ns, present, |j| jobs.info(j).is_some());
        for c in changes {
            let info = self.jobs.info(&c.job);
            let at = self.wall(now_ns);
            let ev = self.api.emit(at, convert::job(&c, info.as_deref()), true);
            self.out.event(&ev);
        }
    }

    /// Forgets what /proc shows gone or replaced (`live`: pid and start time of every
    /// running process, from a walk begun at `walk_ns` off this thread).
    pub fn reconcile(&mut self, live: &[(u32, u64)], walk_ns: u64) {
        let n = self.table.reconcile(live, walk_ns);
        if n > 0 {
            self.counters.reconciled += n as u64;
            tracing::debug!(forgotten = n, "reconciled the process table with /proc");
        }
        self.settle();
    }

    fn raise(&mut self, ktime_ns: u64, f: Found) {
        let Found {
            tgid,
            finding,
            peer,
        } = f;
        if let Some(body) = convert::evidence(tgid, &finding, peer)
            && self.evidence_due(tgid, ktime_ns, &finding)
        {
            let at = self.wall(ktime_ns);
            // Findings are rare and are evidence: JSON lines get them too. Stratum and
            // saturation are already whole in the alert (saturation would be one a second).
            let finding = matches!(body, minerwatch_proto::v1::event::Body::Finding(_));
            let ev = self.api.emit(at, body, true);
            if finding {
                self.out.event(&ev);
            }
        }
        let t = self.table.load(tgid);
        let Some(alert) = t.case.observe(tgid, ktime_ns, &finding) else {
            return;
        };
        let process = t.info.clone();
        let parents = self
            .table
            .ancestors(tgid, 8)
            .into_iter()
            .map(|a| ParentInfo {
                pid: a.pid,
                comm: a.comm.clone(),
                exe: a.exe.clone(),
            })
            .collect();
        let rec = AlertRecord {
            id: alert.id,
            update: alert.update,
            severity: alert.severity,
            score: alert.score,
            reasons: alert.reasons,
            user: self.users.name(process.uid),
            job: job_ref(&process).and_then(|j| self.jobs.info(&j)),
            process,
            connection: peer,
            parents,
            at: self.wall(alert.last_seen_ns),
            first_seen_at: self.wall(alert.first_seen_ns),
            scope: Scope::Process,
            allowed: None,
        };
        tracing::debug!(pid = tgid, severity = ?rec.severity, "alert");
        match self.pending.iter_mut().find(|r| r.process.pid == tgid) {
            // A later finding without a peer must not drop the one the pending alert has.
            Some(slot) => {
                let connection = rec.connection.or(slot.connection);
                *slot = AlertRecord { connection, ..rec };
            }
            None => self.pending.push(rec),
        }
    }

    /// Whether `finding` is sent as an evidence event. Sustained findings (CPU and GPU
    /// saturation, `outside_allocation`, `over_allocation`) are found again at every tick
    /// while they last; each it is sent when it starts (or starts again after a pause), when
    /// the share moves by
    /// [`SATURATION_STEP`], and once every [`SATURATION_REFRESH_NS`] while it goes on, not
    /// once a second for every busy process of a node. The alert keeps the latest either way.
    fn evidence_due(&mut self, tgid: u32, now_ns: u64, finding: &Finding) -> bool {
        let (code, share) = match finding {
            Finding::CpuSaturation { share, .. } => (("cpu", 0), *share),
            Finding::OutsideAllocation { share, .. } => (("outside", 0), *share),
            Finding::GpuSaturation { gpu, share, .. } => (("gpu", *gpu), *share),
            Finding::OverAllocation { resource, used, .. } => match resource {
                minerwatch_detect::Resource::Cpus => (("over_cpus", 0), *used),
                minerwatch_detect::Resource::Gpus => (("over_gpus", 0), *used),
            },
            _ => return true,
        };
        let shown = self
            .table
            .load(tgid)
            .state::<SustainedShown>()
            .0
            .entry(code)
            .or_default();
        let restarted = now_ns.saturating_sub(shown.found_ns) >= SATURATION_GAP_NS;
        shown.found_ns = now_ns;
        let due = restarted
            || shown.sent.is_none_or(|(at, was)| {
                (share - was).abs() >= SATURATION_STEP
                    || now_ns.saturating_sub(at) >= SATURATION_REFRESH_NS
            });
        if due {
            shown.sent = Some((now_ns, share));
        } else {
            self.counters.saturation_unsent += 1;
        }
        due
    }

    /// Writes the pending alerts, forgets what exited, and flushes every output. Called
    /// once both rings are drained.
    pub fn flush(&mut self) {
        self.write_alerts(false);
        self.settle();
        self.api.flush();
        self.out.flush();
    }

    /// Writes every alert, held ones too (at stop).
    pub fn flush_all(&mut self) {
        self.write_alerts(true);
        self.flush();
    }

    /// Writes the pending alerts. An alert about a job Slurm has been asked about but has
    /// not answered for yet is held (without blocking) until it answers, or for
    /// [`slurm::JOB_WAIT`], so the first alert of a job names its account and partition;
    /// later alerts about the same process wait behind it, in order.
    fn write_alerts(&mut self, all: bool) {
        let mut queue: Vec<(AlertRecord, Instant)> = std::mem::take(&mut self.held).into();
        for mut rec in std::mem::take(&mut self.pending) {
            if let Some(t) = self.table.get_mut(rec.process.pid) {
                rec.update = t.revisions;
                t.revisions += 1;
            }
            if rec.user.is_none() {
                // Looked up since the finding, or now (a bounded wait for the NSS thread).
                rec.user = self.users.name_within(rec.process.uid, USER_WAIT);
            }
            queue.push((rec, Instant::now()));
        }
        let mut waiting: Vec<u32> = Vec::new();
        for (mut rec, since) in queue {
            if rec.job.is_none()
                && let Some(j) = job_ref(&rec.process)
            {
                rec.job = self.jobs.info(&j);
            }
            let unanswered =
                rec.job.is_none() && job_ref(&rec.process).is_some_and(|j| self.jobs.asking(&j));
            let hold = !all
                && (waiting.contains(&rec.process.pid)
                    || (unanswered && since.elapsed() < slurm::JOB_WAIT));
            if hold {
                waiting.push(rec.process.pid);
                self.held.push_back((rec, since));
                continue;
            }
            self.write_alert(rec);
        }
    }

    fn write_alert(&mut self, mut rec: AlertRecord) {
        rec.allowed = self.allow.check(&rec);
        if rec.allowed.is_some() {
            rec.severity = rec.severity.min(allow::ALLOWED_SEVERITY);
        }
        self.counters.alerts += 1;
        let ev = self.api.emit(rec.at, convert::alert(&rec), true);
        self.out.event(&ev);
        if let Some(j) = job_ref(&rec.process)
            && let Some(job) = self.job_alerts.on_alert(j, &rec)
        {
            self.counters.alerts += 1;
            let ev = self.api.emit(job.at, convert::alert(&job), true);
            self.out.event(&ev);
        }
    }

    /// Every counter the pipeline and its signals keep, by name.
    fn own_counters(&self) -> BTreeMap<&'static str, u64> {
        let mut c = BTreeMap::from([
            ("events", self.counters.events),
            ("decode_errors", self.counters.decode_errors),
            ("alerts", self.counters.alerts),
            ("reconciled", self.counters.reconciled),
            ("pool_feed_errors", self.counters.pool_feed_errors),
            ("pool_reloads", self.counters.pool_reloads),
            ("launches_joined", self.launches.joined),
            ("launches_alone", self.launches.alone),
            ("launches_unheld", self.launches.unheld),
            ("launches_lost", self.launches.lost),
            ("launches_held", self.launches.held() as u64),
            ("file_overflows", self.counters.file_overflows),
            ("saturation_unsent", self.counters.saturation_unsent),
            ("files_watched", self.counters.files_watched),
            ("exe_paths_reused", self.describer.exes_reused),
            ("cgroup_paths_reused", self.describer.cgroups_reused),
        ]);
        for s in &self.signals {
            s.counters(&self.table, &mut c);
        }
        c
    }

    /// Tells the stream what was lost since the last call: kernel ring-buffer drops (from
    /// `kernel`, the kernel's counters), what signals count as lost, undecodable records.
    pub fn report_losses(&mut self, kernel: &BTreeMap<&'static str, u64>) {
        let drops: u64 = kernel
            .iter()
            .filter(|(n, _)| {
                n.starts_with("ringbuf_full_")
                    || **n == "payload_budget_dropped"
                    || **n == "dns_budget_dropped"
            })
            .map(|(_, v)| v)
            .sum();
        let own = self.own_counters();
        let mut checks = vec![
            ("kernel_ring", LossKind::KernelRing, drops),
            ("decode_errors", LossKind::Decode, own["decode_errors"]),
            // The persistence watch's queue is the kernel's too.
            (
                "file_overflows",
                LossKind::KernelRing,
                own["file_overflows"],
            ),
        ];
        for s in &self.signals {
            for &name in s.losses() {
                checks.push((
                    name,
                    LossKind::PayloadGap,
                    own.get(name).copied().unwrap_or(0),
                ));
            }
        }
        for (name, kind, now) in checks {
            let before = self.reported.insert(name, now).unwrap_or(0);
            if now > before {
                self.api.loss(&kind, now - before, 0, 0);
            }
        }
    }

    pub fn status_report(
        &self,
        kernel: &BTreeMap<&'static str, u64>,
        started: Instant,
    ) -> StatusReport {
        let mut counters: BTreeMap<String, u64> =
            kernel.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        counters.extend(
            self.own_counters()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        let (jsonl, terminal_errors) = self.out.health();
        counters.insert("jsonl_write_errors".into(), jsonl.write_errors);
        counters.insert("jsonl_dropped".into(), jsonl.dropped);
        counters.insert("jsonl_pending".into(), jsonl.pending);
        counters.insert("jsonl_reopened".into(), jsonl.reopened);
        counters.insert("terminal_errors".into(), terminal_errors);
        counters.insert("spool_errors".into(), self.api.spool_errors);
        let gpu = self.gpus.snapshot();
        counters.insert("gpus".into(), u64::from(gpu.devices));
        counters.insert("gpu_processes".into(), gpu.processes.len() as u64);
        counters.insert("nvml_errors".into(), gpu.errors);
        counters.insert(
            "slurm_query_errors".into(),
            self.jobs.errors.load(std::sync::atomic::Ordering::Relaxed),
        );
        let (cpu_seconds, rss_kb, _) = self_usage();
        StatusReport {
            gpu: gpu.status,
            uptime_s: started.elapsed().as_secs(),
            counters,
            processes: self.table.len(),
            cpu_seconds,
            rss_kb,
        }
    }

    pub fn stats_record(
        &self,
        kernel: BTreeMap<&'static str, u64>,
        bpf: BTreeMap<&'static str, crate::kernel::BpfCost>,
        started: Instant,
    ) -> StatsRecord {
        let (cpu_seconds, rss_kb, peak_rss_kb) = self_usage();
        let own = self.own_counters();
        let (jsonl, terminal_errors) = self.out.health();
        StatsRecord {
            kind: "stats",
            ts: rfc3339(SystemTime::now()),
            node: self.cfg.node.clone(),
            uptime_s: started.elapsed().as_secs(),
            events: own["events"],
            decode_errors: own["decode_errors"],
            kernel,
            payload_gaps: own.get("payload_gaps").copied().unwrap_or(0),
            alerts: own["alerts"],
            processes: self.table.len(),
            streams: own.get("streams").copied().unwrap_or(0),
            streams_capped: own.get("streams_capped").copied().unwrap_or(0),
            reconciled: own["reconciled"],
            jsonl,
            terminal_errors,
            cpu_seconds,
            rss_kb,
            peak_rss_kb,
            bpf,
        }
    }
}

/// The sensor's own CPU seconds, RSS and peak RSS (KiB).
pub fn self_usage() -> (f64, u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<u64> = after.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after the comm.
    let tick = procfs::clock_ticks() as f64;
    let cpu = (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) as f64 / tick;
    (cpu, kb("VmRSS:"), kb("VmHWM:"))
}
