//! The running sensor: drains the ring buffer, keeps the process table and per-connection
//! byte streams, samples CPU, feeds findings to the detection engine and writes its alerts.
//! All state is owned by one task; nothing here is shared or locked.
use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf, SkStorage};
use hashbrown::HashMap;
use sensor_common::{SOCK_WATCH, SockState, map, stat};
use tokio::io::unix::AsyncFd;

use crate::{
    api::{self, LossKind, Publisher, StatusReport, convert},
    config::Config,
    detect::{
        Engine, Finding, indicators,
        saturation::{Policy, Tracker},
    },
    events::{Connect, Event, Exec, Payload, Transport},
    loader,
    output::{
        ActivityRecord, AlertRecord, BpfCost, Outputs, ParentInfo, ReadyRecord, StatsRecord,
        StopRecord, rfc3339,
    },
    proctable::{self, ProcTable, Process, Users},
    stratum::{self, Verdict},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    #[error("map {name} missing or of the wrong type: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error(transparent)]
    Spool(#[from] crate::push::spool::SpoolError),
    #[error(transparent)]
    Collector(#[from] crate::push::client::PushError),
}

/// Bytes a client sent on one connection, until the classifier decides. A decided stream
/// keeps only its flag, until the connection closes or its process exits.
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

/// Most streams kept at once for one process; past this, new connections of that process
/// are not classified (counted as `streams_capped`). Miners hold one or a few.
const STREAMS_PER_PROCESS: usize = 256;

/// What the sensor counts about itself.
#[derive(Debug, Default)]
struct Counters {
    events: u64,
    decode_errors: u64,
    payload_gaps: u64,
    alerts: u64,
    streams_capped: u64,
}

struct State {
    cfg: Config,
    procs: ProcTable,
    users: Users,
    engine: Engine,
    /// tgid -> socket cookie -> stream.
    streams: HashMap<u32, HashMap<u64, Stream>>,
    cpu_prev: HashMap<u32, u64>,
    cpu_trackers: HashMap<u32, Tracker>,
    /// Hardware sample totals per tgid last time (cycles, instructions) and the IPC since.
    hw_prev: HashMap<u32, (u64, u64)>,
    ipc: HashMap<u32, f64>,
    /// Processes gone since the last CPU tick, whose sample-map keys that tick removes.
    exited: Vec<u32>,
    counters: Counters,
    /// Alerts raised since the last flush, the latest per process: evidence that arrives in
    /// one batch of events (exec, connect, first bytes) makes one alert, not one per reason.
    pending: Vec<AlertRecord>,
    /// Revisions of each live process's alert written so far: the `update` field.
    revisions: HashMap<u32, u32>,
    out: Outputs,
    /// The event stream: `GetEvents` clients and the collector spool.
    api: Publisher,
    /// Loss counters as last reported in the stream.
    reported: Reported,
    /// Wall clock minus CLOCK_MONOTONIC, to date kernel timestamps.
    wall_offset_ns: i128,
}

/// Loss counters already told to the stream as loss records.
#[derive(Debug, Default)]
struct Reported {
    kernel_drops: u64,
    payload_gaps: u64,
    decode_errors: u64,
}

fn monotonic_ns() -> u64 {
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

impl State {
    fn wall(&self, ktime_ns: u64) -> SystemTime {
        let ns = (ktime_ns as i128 + self.wall_offset_ns).max(0) as u64;
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)
    }

    fn handle(&mut self, ev: Event) {
        tracing::trace!(event = ?ev, "event");
        match ev {
            Event::Exec(e) => self.on_exec(e),
            Event::Fork(f) => self.procs.fork(f.meta.tgid, f.child, &f.comm),
            Event::Close(c) => {
                if let Some(m) = self.streams.get_mut(&c.meta.tgid) {
                    m.remove(&c.cookie);
                    if m.is_empty() {
                        self.streams.remove(&c.meta.tgid);
                    }
                }
            }
            Event::Exit(m) => {
                if self.api.wants_activity() {
                    let body = convert::exit(m.tgid, self.procs.get(m.tgid));
                    self.api.emit(self.wall(m.ktime_ns), body, false);
                }
                if self.cfg.events {
                    self.out.activity(&ActivityRecord::new(
                        "exit",
                        rfc3339(self.wall(m.ktime_ns)),
                        m.tgid,
                    ));
                }
                self.procs.remove(m.tgid);
                self.streams.remove(&m.tgid);
                self.cpu_prev.remove(&m.tgid);
                self.cpu_trackers.remove(&m.tgid);
                self.hw_prev.remove(&m.tgid);
                self.ipc.remove(&m.tgid);
                self.exited.push(m.tgid);
                self.engine.forget(m.tgid);
                self.revisions.remove(&m.tgid);
            }
            Event::Connect(c) => self.on_connect(c),
            Event::Payload(p) => self.on_payload(p),
        }
    }

    fn on_exec(&mut self, e: Exec) {
        let pid = e.meta.tgid;
        let dir = Path::new("/proc").join(pid.to_string());
        // /proc/<pid>/exe shows what the file name cannot: memfd and deleted executables.
        let exe = std::fs::read_link(dir.join("exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| e.filename.clone());
        let prev = self.procs.get(pid);
        let ppid = match (e.ppid, prev) {
            (0, Some(p)) => p.ppid,
            (p, _) => p,
        };
        // The cgroup rarely changes at exec: reuse the known path unless the kernel reports
        // another cgroup id (a fork child inherits its parent's id and path).
        let cgroup = match prev {
            Some(p) if !p.cgroup.is_empty() && p.cgroup_id == e.meta.cgroup_id => p.cgroup.clone(),
            _ => std::fs::read_to_string(dir.join("cgroup"))
                .map(|t| proctable::parse_cgroup_file(&t))
                .unwrap_or_default(),
        };
        let argv = if e.argv.is_empty() && e.argv_missing {
            std::fs::read(dir.join("cmdline"))
                .map(|b| proctable::split_nul(&b))
                .unwrap_or_default()
        } else {
            e.argv
        };
        let p = Process {
            pid,
            ppid,
            uid: e.uid,
            comm: e.comm,
            exe,
            job: proctable::slurm_job(&cgroup),
            cgroup,
            cgroup_id: e.meta.cgroup_id,
            argv,
            preexisting: false,
        };
        let findings = shape_findings(&p);
        if self.api.wants_activity() {
            let body = convert::exec(&p, self.users.name(p.uid));
            self.api.emit(self.wall(e.meta.ktime_ns), body, false);
        }
        if self.cfg.events {
            self.out.activity(&ActivityRecord {
                ppid: Some(p.ppid),
                uid: Some(p.uid),
                comm: Some(&p.comm),
                exe: Some(&p.exe),
                argv: Some(&p.argv),
                cgroup: Some(&p.cgroup),
                job: p.job,
                ..ActivityRecord::new("exec", rfc3339(self.wall(e.meta.ktime_ns)), pid)
            });
        }
        self.procs.insert(p);
        for f in findings {
            self.raise(pid, e.meta.ktime_ns, &f, None);
        }
    }

    fn on_connect(&mut self, c: Connect) {
        if self.api.wants_activity() {
            self.api
                .emit(self.wall(c.meta.ktime_ns), convert::connect(&c), false);
        }
        if self.cfg.events {
            self.out.activity(&ActivityRecord {
                peer: Some(c.peer),
                transport: Some(match c.transport {
                    Transport::Tcp => "tcp",
                    Transport::Udp => "udp",
                }),
                ret: Some(c.ret),
                unconnected: c.unconnected.then_some(true),
                ..ActivityRecord::new("connect", rfc3339(self.wall(c.meta.ktime_ns)), c.meta.tgid)
            });
        }
        if !c.ok() || c.transport != Transport::Tcp {
            return;
        }
        if self.cfg.miner_ports.contains(&c.peer.port()) {
            self.raise(
                c.meta.tgid,
                c.meta.ktime_ns,
                &Finding::MinerPort { peer: c.peer },
                Some(c.peer),
            );
        }
    }

    fn on_payload(&mut self, p: Payload) {
        let streams = self.streams.entry(p.meta.tgid).or_default();
        if !streams.contains_key(&p.cookie) && streams.len() >= STREAMS_PER_PROCESS {
            self.counters.streams_capped += 1;
            return;
        }
        let stream = streams.entry(p.cookie).or_default();
        stream.peer.get_or_insert(p.peer);
        if stream.decided || p.offset < stream.seen {
            return;
        }
        if p.offset > stream.seen {
            // Records were lost (a full ring): what is held no longer joins what comes.
            self.counters.payload_gaps += 1;
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
        let peer = stream.peer;
        match verdict {
            Verdict::NeedMore => {}
            Verdict::NotStratum => {
                stream.decided = true;
                stream.buf = Vec::new();
            }
            Verdict::Stratum(call) => {
                stream.decided = true;
                stream.buf = Vec::new();
                let body = convert::stratum(p.meta.tgid, &call, peer);
                let at = self.wall(p.meta.ktime_ns);
                self.api.emit(at, body, true);
                self.raise(
                    p.meta.tgid,
                    p.meta.ktime_ns,
                    &Finding::Stratum { call, peer },
                    peer,
                );
            }
        }
    }

    /// CPU shares since the last poll, from the per-CPU sample counts.
    fn on_cpu_tick(&mut self, maps: &mut CpuMaps, dt: Duration, now_ns: u64) {
        let hz = self.cfg.cpu_sample_hz as f64;
        // Prune exited processes first: summed afterwards, they would be tracked (and kept in
        // `cpu_prev`/`hw_prev`) again after their exit had forgotten them, for good.
        for tgid in self.exited.drain(..) {
            let _ = maps.samples.remove(&tgid);
            if let Some(m) = maps.hw_cycles.as_mut() {
                let _ = m.remove(&tgid);
            }
            if let Some(m) = maps.hw_insns.as_mut() {
                let _ = m.remove(&tgid);
            }
        }
        let seen = sum_per_cpu(&maps.samples);
        if let (Some(cyc), Some(ins)) = (&maps.hw_cycles, &maps.hw_insns) {
            let (cyc, ins) = (sum_per_cpu(cyc), sum_per_cpu(ins));
            for (&tgid, &c) in &cyc {
                let i = ins.get(&tgid).copied().unwrap_or(0);
                let (pc, pi) = self.hw_prev.insert(tgid, (c, i)).unwrap_or((0, 0));
                // Both counters sample with one period, so the ratio of counts is the IPC.
                if c > pc {
                    self.ipc
                        .insert(tgid, i.saturating_sub(pi) as f64 / (c - pc) as f64);
                }
            }
        }
        let policy = Policy {
            window_ns: self.cfg.saturation_window.as_nanos() as u64,
            threshold: self.cfg.saturation_threshold,
        };
        let dt_ns = dt.as_nanos() as u64;
        let mut findings = Vec::new();
        for (&tgid, &total) in &seen {
            let prev = self.cpu_prev.insert(tgid, total).unwrap_or(0);
            let share = total.saturating_sub(prev) as f64 / (hz * dt.as_secs_f64());
            if share > 0.0 || self.cpu_trackers.contains_key(&tgid) {
                let t = self.cpu_trackers.entry(tgid).or_default();
                if let Some(s) = t.push(policy, now_ns, dt_ns, share) {
                    findings.push((tgid, s));
                }
            }
        }
        // Tracked processes that were not sampled at all this time were idle.
        self.cpu_trackers.retain(|tgid, t| {
            if !seen.contains_key(tgid) {
                t.push(policy, now_ns, dt_ns, 0.0);
            }
            !t.idle()
        });
        for (tgid, s) in findings {
            let in_job = self.procs.get(tgid).is_some_and(|p| p.job.is_some());
            let ipc = self.ipc.get(&tgid).copied();
            let body = convert::saturation(tgid, s.share, s.secs, in_job, ipc);
            self.api.emit(SystemTime::now(), body, true);
            let f = Finding::CpuSaturation {
                share: s.share,
                secs: s.secs,
                in_job,
                ipc: self.ipc.get(&tgid).copied(),
            };
            self.raise(tgid, now_ns, &f, None);
        }
    }

    fn raise(&mut self, pid: u32, ktime_ns: u64, f: &Finding, connection: Option<SocketAddr>) {
        let Some(alert) = self.engine.observe(pid, ktime_ns, f) else {
            return;
        };
        let p = self
            .procs
            .get(pid)
            .cloned()
            .or_else(|| proctable::read_process(Path::new("/proc"), pid));
        let parents = self
            .procs
            .ancestors(pid, 8)
            .into_iter()
            .map(|a| ParentInfo {
                pid: a.pid,
                comm: a.comm.clone(),
                exe: a.exe.clone(),
            })
            .collect();
        let p = p.unwrap_or_else(|| Process::unknown(pid));
        let (at, first_seen_at) = (
            self.wall(alert.last_seen_ns),
            self.wall(alert.first_seen_ns),
        );
        let rec = AlertRecord {
            kind: "alert",
            ts: rfc3339(at),
            node: self.cfg.node.clone(),
            id: alert.id,
            update: alert.update,
            pid,
            ppid: p.ppid,
            severity: alert.severity,
            score: alert.score,
            reasons: alert.reasons,
            user: self.users.name(p.uid).map(str::to_owned),
            comm: p.comm,
            exe: p.exe,
            argv: p.argv,
            uid: p.uid,
            cgroup: p.cgroup,
            job: p.job,
            connection,
            parents,
            first_seen: rfc3339(first_seen_at),
            preexisting: p.preexisting,
            at,
            first_seen_at,
        };
        tracing::debug!(pid, severity = ?rec.severity, "alert");
        match self.pending.iter_mut().find(|r| r.pid == pid) {
            // A later finding without a peer must not drop the one the pending alert has.
            Some(slot) => {
                let connection = rec.connection.or(slot.connection);
                *slot = AlertRecord { connection, ..rec };
            }
            None => self.pending.push(rec),
        }
    }

    /// Writes the pending alerts and flushes every output.
    fn flush(&mut self) {
        for mut rec in std::mem::take(&mut self.pending) {
            let n = self.revisions.entry(rec.pid).or_insert(0);
            rec.update = *n;
            *n += 1;
            self.counters.alerts += 1;
            self.out.alert(&rec);
            self.api.emit(rec.at, convert::alert(&rec), true);
        }
        self.api.flush();
        self.out.flush();
    }

    /// Tells the stream what was lost since the last call: kernel ring-buffer drops (from
    /// `kernel`, the counters as [`kernel_counters`] read them), payload gaps, undecodable
    /// records.
    fn report_losses(&mut self, kernel: &BTreeMap<&'static str, u64>) {
        let drops: u64 = kernel
            .iter()
            .filter(|(n, _)| n.starts_with("ringbuf_full_"))
            .map(|(_, v)| v)
            .sum();
        let checks = [
            (LossKind::KernelRing, drops, self.reported.kernel_drops),
            (
                LossKind::PayloadGap,
                self.counters.payload_gaps,
                self.reported.payload_gaps,
            ),
            (
                LossKind::Decode,
                self.counters.decode_errors,
                self.reported.decode_errors,
            ),
        ];
        for (kind, now, before) in checks {
            if now > before {
                self.api.loss(&kind, now - before, 0, 0);
            }
        }
        self.reported = Reported {
            kernel_drops: drops,
            payload_gaps: self.counters.payload_gaps,
            decode_errors: self.counters.decode_errors,
        };
    }
}

/// Findings from what a process is: where it runs from, what it is called, its arguments.
pub fn shape_findings(p: &Process) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(why) = indicators::exe_location(&p.exe) {
        out.push(Finding::ExeLocation {
            exe: p.exe.clone(),
            why,
        });
    }
    if let Some(name) =
        indicators::imitates_kernel_thread(&p.comm, p.argv.first().map(String::as_str), &p.exe)
    {
        out.push(Finding::FakeKernelThread {
            comm: name,
            exe: p.exe.clone(),
        });
    }
    let ind = indicators::miner_cmdline(&p.argv);
    if !ind.is_empty() {
        out.push(Finding::MinerCmdline { indicators: ind });
    }
    out
}

/// The per-CPU sample maps, read once a second. The hardware maps are read only when their
/// hooks attached.
struct CpuMaps {
    samples: PerCpuHashMap<MapData, u32, u64>,
    hw_cycles: Option<PerCpuHashMap<MapData, u32, u64>>,
    hw_insns: Option<PerCpuHashMap<MapData, u32, u64>>,
}

/// tgid -> samples summed over CPUs.
fn sum_per_cpu(map: &PerCpuHashMap<MapData, u32, u64>) -> HashMap<u32, u64> {
    map.iter()
        .filter_map(Result::ok)
        .map(|(tgid, per_cpu)| (tgid, per_cpu.iter().sum()))
        .collect()
}

fn self_usage() -> (f64, u64, u64) {
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
    // Fields from 3 (state) on; parse only what we need, so the indices stay right.
    let f: Vec<u64> = after.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after the comm.
    // SAFETY: no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) as f64 / tick;
    (cpu, kb("VmRSS:"), kb("VmHWM:"))
}

/// Runs the sensor until `shutdown` completes. Returns after writing the final records.
pub async fn run(cfg: Config, shutdown: impl Future<Output = String>) -> Result<(), RunError> {
    let started = Instant::now();
    // SAFETY: no preconditions. Checked first: an unprivileged user is told the real reason,
    // not that the socket directory is not writable.
    if unsafe { libc::geteuid() } != 0 {
        return Err(loader::LoadError::NotRoot.into());
    }
    // Everything that can fail on bad settings or a busy socket fails before the hooks load.
    let api_socket = match &cfg.socket {
        Some(path) => Some((api::service::bind_unix(path).await?, path.clone())),
        None => None,
    };
    let api_tcp = match cfg.listen {
        Some(addr) => Some(api::service::bind_tcp(addr).await?),
        None => None,
    };
    let mut endpoints = Vec::new();
    for url in &cfg.collectors {
        endpoints.push(crate::push::client::endpoint(url, cfg.tls.as_ref())?);
    }
    let (spool, readers) = if cfg.collectors.is_empty() {
        (None, Vec::new())
    } else {
        let (w, r) =
            crate::push::spool::open(&cfg.spool_dir, cfg.spool_max_bytes, &cfg.collectors)?;
        (Some(w), r)
    };
    let (mut publisher, shared) = Publisher::new(api::node(&cfg.node), spool, cfg.collectors.len());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some((listener, path)) = api_socket {
        let fut =
            api::service::serve_unix(listener, path, shared.clone(), stopped(stop_rx.clone()));
        tasks.spawn(fut);
    }
    if let (Some(listener), Some(tls)) = (api_tcp, cfg.tls.as_ref()) {
        let serve =
            api::service::serve_tcp(listener, tls, shared.clone(), stopped(stop_rx.clone()))?;
        tasks.spawn(serve);
    }

    for ((reader, endpoint), status) in readers.into_iter().zip(endpoints).zip(&shared.collectors) {
        let client = crate::push::client::Client::new(
            reader.name().to_string(),
            endpoint,
            reader,
            status.clone(),
        );
        tasks.spawn(client.run(stop_rx.clone()));
    }
    let mut loaded = loader::load(cfg.cpu_sample_hz)?;
    // Kernel BPF run-time accounting, on while this fd lives; costs a clock read per run.
    let _bpf_stats = if cfg.bpf_stats {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!(reason = %e, "cannot enable BPF run-time statistics");
                None
            }
        }
    } else {
        None
    };
    if let Some(e) = &loaded.offsets_error {
        tracing::warn!(reason = %e, "no BTF offsets: exec events carry no parent pid and fork events are off");
    }
    for h in loaded.hooks.iter().filter(|h| !h.attached) {
        let reason = h.error.as_deref().unwrap_or("");
        if h.optional {
            tracing::info!(
                hook = h.program,
                reason,
                lost = h.lost,
                "optional hook not available"
            );
        } else {
            tracing::warn!(hook = h.program, reason, lost = h.lost, "hook missing");
        }
    }
    let hw_attached = loaded
        .hooks
        .iter()
        .filter(|h| h.program.starts_with("cpu_hw_") && h.attached)
        .count()
        == 2;
    let ebpf = &mut loaded.ebpf;
    let ring: RingBuf<MapData> = bpf_map(ebpf, map::EVENTS)?;
    let ring_hi: RingBuf<MapData> = bpf_map(ebpf, map::EVENTS_HI)?;
    let stats: PerCpuArray<MapData, u64> = bpf_map(ebpf, map::STATS)?;
    let mut socks: SkStorage<MapData, SockState> = bpf_map(ebpf, map::SOCKS)?;
    let mut cpu_maps = CpuMaps {
        samples: bpf_map(ebpf, map::CPU_SAMPLES)?,
        hw_cycles: if hw_attached {
            Some(bpf_map(ebpf, map::HW_CYCLES)?)
        } else {
            None
        },
        hw_insns: if hw_attached {
            Some(bpf_map(ebpf, map::HW_INSNS)?)
        } else {
            None
        },
    };

    // Loading parsed the kernel's BTF twice (ours for offsets, aya's for relocations): give
    // the freed heap back instead of carrying it for the sensor's whole life.
    // SAFETY: no preconditions.
    unsafe { libc::malloc_trim(0) };
    let out = Outputs::open(cfg.jsonl.as_ref(), cfg.terminal, cfg.min_severity)?;
    // Bootstrap after attaching, so nothing starts unseen between the scan and the hooks.
    let procs = ProcTable::bootstrap(Path::new("/proc"));
    let me = std::process::id();
    let mut streams: HashMap<u32, HashMap<u64, Stream>> = HashMap::new();
    let mut watched = 0;
    for c in proctable::open_tcp_connections(Path::new("/proc")) {
        if c.pid == me {
            continue;
        }
        // The socket itself, through a duplicate of the holder's fd: its storage is created
        // through it, and its packets carry its cookie.
        let (sock, cookie) = match proctable::socket_of(c.pid, c.fd) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(pid = c.pid, fd = c.fd, reason = %e, "cannot watch existing connection");
                continue;
            }
        };
        let (family, daddr) = match c.peer.ip() {
            std::net::IpAddr::V4(a) => {
                let mut d = [0u8; 16];
                d[..4].copy_from_slice(&a.octets());
                (libc::AF_INET as u16, d)
            }
            std::net::IpAddr::V6(a) => (libc::AF_INET6 as u16, a.octets()),
        };
        let st = SockState {
            cookie,
            tgid: c.pid,
            flags: SOCK_WATCH,
            family,
            dport: c.peer.port(),
            daddr,
            ..SockState::default()
        };
        if socks.insert(&sock, st, 0).is_ok() {
            watched += 1;
            let stream = Stream {
                peer: Some(c.peer),
                ..Default::default()
            };
            streams.entry(c.pid).or_default().insert(cookie, stream);
        }
    }
    let (hooks_attached, hooks_missing) = ReadyRecord::hooks(&loaded.hooks);
    publisher.set_hooks(&loaded.hooks);
    let mut st = State {
        users: Users::load(Path::new("/etc/passwd")),
        engine: Engine::new(),
        streams,
        cpu_prev: HashMap::new(),
        cpu_trackers: HashMap::new(),
        hw_prev: HashMap::new(),
        ipc: HashMap::new(),
        exited: Vec::new(),
        counters: Counters::default(),
        pending: Vec::new(),
        revisions: HashMap::new(),
        wall_offset_ns: unix_ns(SystemTime::now()) - monotonic_ns() as i128,
        api: publisher,
        reported: Reported::default(),
        out,
        procs,
        cfg,
    };
    // Pre-existing processes and connections get the same shape and port checks as new ones.
    let now = monotonic_ns();
    let known: Vec<Process> = st.procs.iter().cloned().collect();
    st.out.ready(&ReadyRecord {
        kind: "ready",
        ts: rfc3339(SystemTime::now()),
        node: st.cfg.node.clone(),
        version: env!("CARGO_PKG_VERSION"),
        sensor_pid: me,
        hooks_attached,
        hooks_missing,
        processes_known: st.procs.len(),
        connections_watched: watched,
        saturation_window_s: st.cfg.saturation_window.as_secs(),
    });
    let report = st.status_report(&kernel_counters(&stats), started);
    st.api.status(api::SensorState::Ready, report, "");
    for p in known.iter().filter(|p| p.pid != me) {
        for f in shape_findings(p) {
            st.raise(p.pid, now, &f, None);
        }
    }
    let preexisting_conns: Vec<(u32, SocketAddr)> = st
        .streams
        .iter()
        .flat_map(|(&pid, m)| m.values().filter_map(move |s| s.peer.map(|p| (pid, p))))
        .collect();
    for (pid, peer) in preexisting_conns {
        if st.cfg.miner_ports.contains(&peer.port()) {
            st.raise(pid, now, &Finding::MinerPort { peer }, Some(peer));
        }
    }
    st.flush();

    // SAFETY: the RingBuf owns its map fd, and the AsyncFd owns the RingBuf, so the fd stays
    // open and the same for the AsyncFd's whole life.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| RunError::Output(std::io::Error::from(e)))?;
    // SAFETY: as above.
    let mut ring_hi =
        unsafe { AsyncFd::register_with_interest(ring_hi, tokio::io::Interest::READABLE) }
            .map_err(|e| RunError::Output(std::io::Error::from(e)))?;
    let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cpu_tick = tokio::time::interval(Duration::from_secs(1));
    cpu_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stats_every = st.cfg.stats_interval;
    let mut stats_tick = tokio::time::interval(if stats_every.is_zero() {
        Duration::from_secs(3600)
    } else {
        stats_every
    });
    stats_tick.tick().await;
    let heartbeat_every = st.cfg.heartbeat_interval;
    let mut heartbeat_tick = tokio::time::interval(heartbeat_every);
    heartbeat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat_tick.tick().await;
    let mut last_cpu = Instant::now();
    tokio::pin!(shutdown);
    let reason = loop {
        tokio::select! {
            reason = &mut shutdown => break reason,
            // First bytes have their own ring, which wakes us at once. What the lifecycle
            // ring holds happened before them (the exec before its process's connect and
            // login), so it is handled first: alerts then carry the exec's evidence.
            guard = ring_hi.readable_mut() => {
                let mut guard = guard?;
                st.drain(ring.get_mut());
                st.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                st.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            // Exec, fork and exit events do not wake us (see the eBPF `lazy_wakeup`).
            _ = drain_tick.tick() => {
                st.drain(ring.get_mut());
                st.drain(ring_hi.get_mut());
            }
            _ = cpu_tick.tick() => {
                let dt = last_cpu.elapsed();
                last_cpu = Instant::now();
                st.on_cpu_tick(&mut cpu_maps, dt, monotonic_ns());
                let kernel = kernel_counters(&stats);
                st.report_losses(&kernel);
                let report = st.status_report(&kernel, started);
                st.api.status(api::SensorState::Running, report, "");
                st.flush();
            }
            _ = heartbeat_tick.tick() => {
                st.api.heartbeat(heartbeat_every.as_secs() as u32);
                st.api.flush();
            }
            _ = stats_tick.tick(), if !stats_every.is_zero() => {
                let rec = st.stats_record(&stats, &loaded.ebpf, started);
                st.out.stats(&rec);
                st.out.flush();
                st.api.status_event();
                st.api.flush();
            }
        }
    };
    // What the kernel handed over before the signal is still delivered.
    st.drain(ring.get_mut());
    st.drain(ring_hi.get_mut());
    let kernel = kernel_counters(&stats);
    st.report_losses(&kernel);
    let report = st.status_report(&kernel, started);
    st.api.status(api::SensorState::Stopping, report, &reason);
    st.api.flush();
    // Give collectors a moment to take the last events; what they do not take stays spooled
    // and is sent after the next start.
    let deadline = Instant::now() + STOP_GRACE;
    while !st.api.all_acked() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    st.api.close_clients();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let rec = st.stats_record(&stats, &loaded.ebpf, started);
    st.out.stats(&rec);
    st.out.stop(&StopRecord {
        kind: "stop",
        ts: rfc3339(SystemTime::now()),
        node: st.cfg.node.clone(),
        reason,
    });
    Ok(())
}

/// The kernel's per-CPU counters (hook failures, ring-buffer drops), summed, by name.
fn kernel_counters(stats: &PerCpuArray<MapData, u64>) -> BTreeMap<&'static str, u64> {
    stat::NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let v = stats
                .get(&(i as u32), 0)
                .map(|vals| vals.iter().sum())
                .unwrap_or(0);
            (*name, v)
        })
        .collect()
}

/// Takes map `name` out of the object as a typed map.
fn bpf_map<T>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<T, RunError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf.take_map(name).ok_or(RunError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    T::try_from(m).map_err(|source| RunError::Map { name, source })
}

/// How often the ring is drained without a wake-up: the most an exec-only finding waits.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// Records handled per drain call before the loop looks at its timers again.
const DRAIN_BATCH: usize = 4096;
/// How long a stopping sensor waits for collectors to acknowledge its last events.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl State {
    /// Decodes and handles what is in one ring buffer now, at most [`DRAIN_BATCH`] records:
    /// a flood cannot keep the loop from its timers (the rest is read on the next turn).
    fn drain(&mut self, rb: &mut RingBuf<aya::maps::MapData>) {
        let mut n = 0;
        while n < DRAIN_BATCH
            && let Some(item) = rb.next()
        {
            n += 1;
            self.counters.events += 1;
            match Event::try_from(&item[..]) {
                Ok(ev) => {
                    drop(item);
                    self.handle(ev);
                }
                Err(e) => {
                    self.counters.decode_errors += 1;
                    tracing::debug!(reason = %e, "undecodable event");
                }
            }
        }
        self.flush();
    }

    fn status_report(
        &self,
        kernel: &BTreeMap<&'static str, u64>,
        started: Instant,
    ) -> StatusReport {
        let mut counters: BTreeMap<String, u64> =
            kernel.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        counters.insert("events".into(), self.counters.events);
        counters.insert("decode_errors".into(), self.counters.decode_errors);
        counters.insert("payload_gaps".into(), self.counters.payload_gaps);
        counters.insert("alerts".into(), self.counters.alerts);
        counters.insert("streams_capped".into(), self.counters.streams_capped);
        let (jsonl, terminal_errors) = self.out.health();
        counters.insert("jsonl_write_errors".into(), jsonl.write_errors);
        counters.insert("jsonl_dropped".into(), jsonl.dropped);
        counters.insert("jsonl_pending".into(), jsonl.pending);
        counters.insert("jsonl_reopened".into(), jsonl.reopened);
        counters.insert("terminal_errors".into(), terminal_errors);
        counters.insert("spool_errors".into(), self.api.spool_errors);
        let (cpu_seconds, rss_kb, _) = self_usage();
        StatusReport {
            uptime_s: started.elapsed().as_secs(),
            counters,
            processes: self.procs.len(),
            cpu_seconds,
            rss_kb,
        }
    }

    fn stats_record(
        &self,
        stats: &PerCpuArray<MapData, u64>,
        ebpf: &aya::Ebpf,
        started: Instant,
    ) -> StatsRecord {
        let kernel = kernel_counters(stats);
        let (cpu_seconds, rss_kb, peak_rss_kb) = self_usage();
        let mut bpf = BTreeMap::new();
        for hook in loader::HOOKS {
            if let Some(info) = ebpf.program(hook.program).and_then(|p| p.info().ok())
                && info.run_count() > 0
            {
                let run_ns = info.run_time().as_nanos() as u64;
                let runs = info.run_count();
                bpf.insert(
                    hook.program,
                    BpfCost {
                        runs,
                        run_ns,
                        ns_per_run: run_ns / runs,
                    },
                );
            }
        }
        StatsRecord {
            kind: "stats",
            ts: rfc3339(SystemTime::now()),
            node: self.cfg.node.clone(),
            uptime_s: started.elapsed().as_secs(),
            events: self.counters.events,
            decode_errors: self.counters.decode_errors,
            kernel,
            payload_gaps: self.counters.payload_gaps,
            alerts: self.counters.alerts,
            processes: self.procs.len(),
            streams: self.streams.values().map(|m| m.len()).sum(),
            streams_capped: self.counters.streams_capped,
            jsonl: self.out.health().0,
            terminal_errors: self.out.health().1,
            cpu_seconds,
            rss_kb,
            peak_rss_kb,
            bpf,
        }
    }
}
