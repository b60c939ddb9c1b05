//! The sensor's life: set up the edges, load the kernel side, then one loop that moves
//! records from the kernel to the pipeline and the pipeline's output to its sinks.
use std::{
    future::Future,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use minerwatch_detect::intel::Lists;
use tokio::{sync::watch, task::JoinSet};

use super::{Pipeline, monotonic_ns};
use crate::{
    api::{self, Publisher, SensorState},
    config::Config,
    enrich::proc as procfs,
    files::FileWatch,
    intel::Feeds,
    kernel::{
        Event, Kernel, KernelError, Ring,
        events::{Connect, Meta, Transport},
    },
    output::{Outputs, ReadyRecord, StopRecord, rfc3339},
    push,
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error(transparent)]
    Spool(#[from] push::spool::SpoolError),
    #[error(transparent)]
    Collector(#[from] push::client::PushError),
    #[error(transparent)]
    Intel(#[from] crate::intel::IntelError),
}

impl From<crate::kernel::LoadError> for RunError {
    fn from(e: crate::kernel::LoadError) -> Self {
        RunError::Kernel(e.into())
    }
}

/// How often the lifecycle ring is drained without a wake-up while it has records: the most
/// an exec-only finding waits on a busy node.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// The interval doubles while drains find nothing, up to this: an idle node wakes the
/// sensor five times a second, not twenty, and an exec after a quiet spell waits at most
/// this long.
const DRAIN_IDLE: Duration = Duration::from_millis(200);
/// Records handled per drain before the loop looks at its timers again: a flood cannot keep
/// it from them (the rest is read on the next turn).
const DRAIN_BATCH: usize = 4096;
/// How often the process table is checked against /proc, so a lost exit leaks nothing.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// How long a stopping sensor waits for collectors to acknowledge its last events.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Runs the sensor until `shutdown` completes. Returns after writing the final records.
pub async fn run(cfg: Config, shutdown: impl Future<Output = String>) -> Result<(), RunError> {
    let started = Instant::now();
    // Checked first: an unprivileged user is told the real reason, not that the socket
    // directory is not writable.
    if !crate::kernel::loader::is_root() {
        return Err(crate::kernel::LoadError::NotRoot.into());
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    // Everything that can fail on bad settings or a busy socket fails before the hooks load.
    let mut feeds = Feeds::open(&cfg)?;
    let mut publisher = edges(&cfg, &stop_rx, &mut tasks).await?;
    let mut kernel = Kernel::open(cfg.cpu_sample_hz, cfg.bpf_stats)?;
    report_hooks(&kernel);
    pools_to_kernel(&mut kernel, &feeds.lists());
    // Loading parsed the kernel's BTF twice (ours for offsets, aya's for relocations): give
    // the freed heap back instead of carrying it for the sensor's whole life.
    // SAFETY: no preconditions.
    unsafe { libc::malloc_trim(0) };
    let out = Outputs::open(cfg.jsonl.as_ref(), cfg.terminal, cfg.min_severity)?;
    let mut files = match FileWatch::open() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "no persistence watch (fanotify): cron, unit, preload, key and binary changes are not seen");
            None
        }
    };
    publisher.set_hooks(&kernel.hooks);
    let anchors = crate::enrich::slurm::init(&cfg.slurm_cgroup_anchors);
    if crate::enrich::slurm::slurm_node() {
        tracing::info!(anchors = ?anchors, "this node runs Slurm");
    }
    // Scanned after attaching, so nothing starts unseen between the scan and the hooks.
    let known = procfs::scan(Path::new("/proc"));
    let conns = watch_existing(&mut kernel);
    let mut p = Pipeline::new(cfg, known, publisher, out);
    p.set_intel(&feeds.lists());
    if let Some(w) = &files {
        p.on_files(Vec::new(), 0, w.watched());
    }
    tracing::info!(
        entries = feeds.lists().len(),
        sources = feeds.sources(),
        "pool lists loaded"
    );
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    ready(&mut p, &kernel, conns.len(), started);
    p.start(conns);

    let every = |d: Duration| {
        let mut t = tokio::time::interval(d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    };
    let mut second = every(Duration::from_secs(1));
    let mut drain_wait = DRAIN_EVERY;
    let drain = tokio::time::sleep(drain_wait);
    tokio::pin!(drain);
    let stats_every = p.cfg().stats_interval;
    let mut stats = every(if stats_every.is_zero() {
        Duration::from_secs(3600)
    } else {
        stats_every
    });
    let heartbeat_every = p.cfg().heartbeat_interval;
    let (mut heartbeat, mut reconcile) = (every(heartbeat_every), every(RECONCILE_EVERY));
    stats.tick().await;
    heartbeat.tick().await;
    reconcile.tick().await;
    let (live_tx, mut live_rx) = tokio::sync::mpsc::channel::<(u64, Vec<(u32, u64)>)>(1);
    let mut last = Instant::now();
    let mut recently_gone: Vec<u32> = Vec::new();
    tokio::pin!(shutdown);
    let reason = loop {
        tokio::select! {
            reason = &mut shutdown => break reason,
            ring = kernel.readable() => {
                // What the lifecycle ring holds happened before first bytes (the exec before
                // its connect and login): handled first, alerts carry the exec's evidence.
                ring?;
                drain_all(&mut kernel, &mut p, &mut files);
            }
            _ = &mut drain => {
                drain_wait = if drain_all(&mut kernel, &mut p, &mut files) > 0 {
                    DRAIN_EVERY
                } else {
                    (drain_wait * 2).min(DRAIN_IDLE)
                };
                drain.as_mut().reset(tokio::time::Instant::now() + drain_wait);
            }
            r = async {
                match &files {
                    Some(w) => w.readable().await,
                    None => std::future::pending().await,
                }
            } => {
                r?;
                drain_all(&mut kernel, &mut p, &mut files);
            }
            _ = hangup.recv() => reload_pools(&mut feeds, &mut kernel, &mut p, "SIGHUP"),
            _ = second.tick() => {
                if feeds.changed() {
                    reload_pools(&mut feeds, &mut kernel, &mut p, "a feed changed");
                }
                let mut cpu = kernel.cpu_totals();
                // Processes gone since the last two ticks (one may have been sampled after it
                // was read): their sample entries go, and they are not judged again. Only
                // the sampled few cost a map deletion, not every exit.
                let gone = p.take_forgotten();
                let sampled: Vec<u32> = gone
                    .iter()
                    .chain(&recently_gone)
                    .copied()
                    .filter(|t| cpu.holds(*t))
                    .collect();
                for &t in &sampled {
                    cpu.drop_tgid(t);
                }
                kernel.forget_samples(sampled);
                // Threads of gone processes leave the rounding-mode counts too.
                let mut rounding = kernel.fpu_threads();
                let dead: Vec<u32> = rounding
                    .iter()
                    .filter(|(_, t)| gone.contains(&t.tgid) || recently_gone.contains(&t.tgid))
                    .map(|(tid, _)| *tid)
                    .collect();
                if !dead.is_empty() {
                    rounding.retain(|(tid, _)| !dead.contains(tid));
                    kernel.forget_fpu_threads(dead);
                }
                recently_gone = gone;
                let dt = std::mem::replace(&mut last, Instant::now()).elapsed();
                p.tick(&cpu, &rounding, dt, monotonic_ns());
                let counters = kernel.counters();
                p.report_losses(&counters);
                let report = p.status_report(&counters, started);
                p.api.status(SensorState::Running, report, "");
                p.flush();
            }
            _ = reconcile.tick() => {
                // A /proc walk is slow on a busy node: it runs off this thread.
                let tx = live_tx.clone();
                let begun = monotonic_ns();
                tokio::task::spawn_blocking(move || {
                    // slurmd may have started, moved or gone since.
                    crate::enrich::slurm::learn_again();
                    tx.blocking_send((begun, procfs::live(Path::new("/proc"))))
                });
                kernel.prune_budgets(monotonic_ns());
                // Threads that ended inside a process that lives on: their counts go.
                let ended = kernel
                    .fpu_threads()
                    .into_iter()
                    .filter(|(tid, t)| !procfs::thread_exists(Path::new("/proc"), t.tgid, *tid))
                    .map(|(tid, _)| tid);
                kernel.forget_fpu_threads(ended.collect::<Vec<_>>());
            }
            Some((begun, live)) = live_rx.recv() => p.reconcile(&live, begun),
            _ = heartbeat.tick() => {
                p.api.heartbeat(heartbeat_every.as_secs() as u32);
                p.api.flush();
            }
            _ = stats.tick(), if !stats_every.is_zero() => {
                let rec = p.stats_record(kernel.counters(), kernel.costs(), started);
                p.out.stats(&rec);
                p.out.flush();
                p.api.status_event();
                p.api.flush();
            }
        }
    };
    // What the kernel handed over before the signal is still delivered.
    drain_all(&mut kernel, &mut p, &mut files);
    stop(&mut p, &kernel, reason, started, stop_tx, tasks).await;
    Ok(())
}

/// Writes the addresses and networks of `lists` into the kernel's trie.
fn pools_to_kernel(kernel: &mut Kernel, lists: &Lists) {
    let failed = kernel.set_pools(lists);
    if failed > 0 {
        tracing::error!(
            failed,
            "some pool networks could not be written to the kernel: connects to them are matched only by name"
        );
    }
}

/// Loads the pool feeds again: the new lists go into force everywhere at once, or, when a
/// feed is bad, none of it does and the lists in force stay.
fn reload_pools(feeds: &mut Feeds, kernel: &mut Kernel, p: &mut Pipeline, why: &str) {
    match feeds.reload() {
        Ok(lists) => {
            pools_to_kernel(kernel, &lists);
            p.set_intel(&lists);
            p.intel_reloaded();
            tracing::info!(entries = lists.len(), why, "pool lists reloaded");
        }
        Err(e) => {
            p.intel_refused();
            tracing::error!(reason = %e, why, "pool feed refused; the previous lists stay in force");
        }
    }
}

/// Drains the lifecycle ring, then the decisive one, a batch each; returns how many records.
fn drain_all(kernel: &mut Kernel, p: &mut Pipeline, files: &mut Option<FileWatch>) -> usize {
    let mut n = 0;
    // File changes are read first and handled after the rings: the writer's exec reached its
    // ring before its write, so its record is there (with its exe and argv) when the change
    // is judged; its exit, drained now too, forgets it only at the flush.
    let mut changes = Vec::new();
    if let Some(w) = files {
        w.read(&mut changes);
    }
    for ring in [Ring::Lifecycle, Ring::Decisive] {
        n += kernel.drain(ring, DRAIN_BATCH, |ev| p.on_kernel(ev));
    }
    if let Some(w) = files {
        n += changes.len();
        p.on_files(changes, w.overflows, w.watched());
    }
    p.flush();
    n
}

/// The API socket and port, the spool and the collector clients; returns the publisher
/// that feeds them.
async fn edges(
    cfg: &Config,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> Result<Publisher, RunError> {
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
        endpoints.push(push::client::endpoint(url, cfg.tls.as_ref())?);
    }
    let (spool, readers) = if cfg.collectors.is_empty() {
        (None, Vec::new())
    } else {
        let (w, r) = push::spool::open(&cfg.spool_dir, cfg.spool_max_bytes, &cfg.collectors)?;
        (Some(w), r)
    };
    let (publisher, shared) = Publisher::new(
        api::node(&cfg.node),
        spool,
        cfg.collectors.len(),
        cfg.push_activity,
    );
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some((listener, path)) = api_socket {
        tasks.spawn(api::service::serve_unix(
            listener,
            path,
            shared.clone(),
            stopped(stop.clone()),
        ));
    }
    if let (Some(listener), Some(tls)) = (api_tcp, cfg.tls.as_ref()) {
        tasks.spawn(api::service::serve_tcp(
            listener,
            tls,
            shared.clone(),
            stopped(stop.clone()),
        )?);
    }
    for ((reader, endpoint), status) in readers.into_iter().zip(endpoints).zip(&shared.collectors) {
        let client = push::client::Client::new(
            reader.name().to_string(),
            endpoint,
            reader,
            status.clone(),
            shared.node.clone(),
        );
        tasks.spawn(client.run(stop.clone()));
    }
    Ok(publisher)
}

fn report_hooks(kernel: &Kernel) {
    if let Some(e) = &kernel.offsets_error {
        tracing::warn!(reason = %e, "some BTF offsets are unknown: what they serve is off (see `minerwatch check`)");
    }
    for h in kernel.hooks.iter().filter(|h| !h.attached) {
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
}

/// TCP connections open before the sensor: followed from now on (their first bytes are
/// captured), and handed to the pipeline as connect events so they get the port check.
fn watch_existing(kernel: &mut Kernel) -> Vec<Event> {
    let me = std::process::id();
    let mut out = Vec::new();
    for c in procfs::open_tcp_connections(Path::new("/proc")) {
        if c.pid == me {
            continue;
        }
        // The socket itself, through a duplicate of the holder's fd: its storage is created
        // through it, and its packets carry its cookie.
        let (sock, cookie) = match procfs::socket_of(c.pid, c.fd) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(pid = c.pid, fd = c.fd, reason = %e, "cannot watch existing connection");
                continue;
            }
        };
        if kernel.watch(&sock, cookie, c.pid, c.peer).is_ok() {
            out.push(Event::Connect(Connect {
                meta: Meta {
                    tgid: c.pid,
                    tid: c.pid,
                    ktime_ns: monotonic_ns(),
                    cgroup_id: 0,
                },
                cookie,
                peer: c.peer,
                transport: Transport::Tcp,
                ret: 0,
                unconnected: false,
                preexisting: true,
            }));
        }
    }
    out
}

fn ready(p: &mut Pipeline, kernel: &Kernel, watched: usize, started: Instant) {
    let (hooks_attached, hooks_missing) = ReadyRecord::hooks(&kernel.hooks);
    let rec = ReadyRecord {
        kind: "ready",
        ts: rfc3339(SystemTime::now()),
        node: p.cfg().node.clone(),
        version: env!("CARGO_PKG_VERSION"),
        sensor_pid: std::process::id(),
        hooks_attached,
        hooks_missing,
        hooks_degraded: ReadyRecord::degraded(&kernel.hooks),
        processes_known: p.processes(),
        connections_watched: watched,
        saturation_window_s: p.cfg().saturation_window.as_secs(),
    };
    p.out.ready(&rec);
    let report = p.status_report(&kernel.counters(), started);
    p.api.status(SensorState::Ready, report, "");
}

/// The last records: losses, the stopping status, what collectors still take, final stats.
async fn stop(
    p: &mut Pipeline,
    kernel: &Kernel,
    reason: String,
    started: Instant,
    stop_tx: watch::Sender<bool>,
    mut tasks: JoinSet<()>,
) {
    // Alerts held for Slurm's answer go now, with what is known.
    p.flush_all();
    let counters = kernel.counters();
    p.report_losses(&counters);
    let report = p.status_report(&counters, started);
    p.api.status(SensorState::Stopping, report, &reason);
    p.api.flush();
    // Give collectors a moment to take the last events; what they do not take stays spooled
    // and is sent after the next start.
    let deadline = Instant::now() + STOP_GRACE;
    while !p.api.all_acked() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.api.close_clients();
    p.api.close_spool();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let rec = p.stats_record(kernel.counters(), kernel.costs(), started);
    p.out.stats(&rec);
    p.out.stop(&StopRecord {
        kind: "stop",
        ts: rfc3339(SystemTime::now()),
        node: p.cfg().node.clone(),
        reason,
    });
}
