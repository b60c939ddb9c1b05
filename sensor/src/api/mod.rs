//! The sensor's gRPC edge: everything it observes becomes a `minerwatch.v1` event here,
//! numbered in one sequence, and goes to `GetEvents` clients ([`hub`]) and to the spool
//! that collectors are fed from ([`crate::push`]). Proto types stay inside this module and
//! `push`; the rest of the sensor speaks its own types.
pub mod client;
pub mod convert;
pub mod filter;
pub mod hub;
pub mod service;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

pub use minerwatch_proto::v1::SensorState;
use minerwatch_proto::v1::{CollectorStatus, Event, Heartbeat, Node, SensorStatus, event::Body};
use tokio::sync::watch;

use crate::{kernel::loader::HookStatus, push::spool::Writer};

pub use convert::LossKind;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad filter: {reason}")]
    BadFilter { reason: String },
    #[error("cannot serve on {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error("another minerwatch is already serving on {path}")]
    InUse { path: String },
    #[error("TLS for the sensor API: {0}")]
    Tls(String),
}

/// The one mapping from API errors to gRPC status codes.
impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::BadFilter { .. } => tonic::Status::invalid_argument(e.to_string()),
            ApiError::Bind { .. } | ApiError::InUse { .. } | ApiError::Tls(_) => {
                tonic::Status::unavailable(e.to_string())
            }
        }
    }
}

/// Who this sensor is, in every event.
pub fn node(host: &str) -> Node {
    Node {
        host: host.to_string(),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        sensor_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// What the sensor reports about itself, in its own terms; see [`Publisher::status`].
#[derive(Debug, Clone, Default)]
pub struct StatusReport {
    /// What the sensor knows of the node's GPUs, or why it knows nothing.
    pub gpu: String,
    pub uptime_s: u64,
    pub counters: BTreeMap<String, u64>,
    pub processes: usize,
    pub cpu_seconds: f64,
    pub rss_kb: u64,
}

/// Shared with the gRPC service and push clients: the latest status and each collector's.
#[derive(Clone)]
pub struct Shared {
    pub hub: Arc<Hub>,
    pub node: Node,
    pub status: watch::Receiver<SensorStatus>,
    pub collectors: Vec<Arc<Mutex<CollectorStatus>>>,
    /// The last sequence number given out, live (the status report is once a second).
    pub last_seq: Arc<AtomicU64>,
}

pub use hub::Hub;

impl Shared {
    /// The status as `GetStatus` answers it: the sensor's last report and the collectors' now.
    pub fn status(&self) -> SensorStatus {
        let mut s = self.status.borrow().clone();
        s.last_seq = self.last_seq.load(Ordering::Relaxed);
        s.collectors = self
            .collectors
            .iter()
            .filter_map(|c| c.lock().ok().map(|c| c.clone()))
            .collect();
        s
    }
}

/// Numbers and emits events. Owned by the sensor task; never waits on a client or collector.
pub struct Publisher {
    node: Node,
    last_seq: u64,
    shared_seq: Arc<AtomicU64>,
    hub: Arc<Hub>,
    spool: Option<SpoolFeed>,
    status_tx: watch::Sender<SensorStatus>,
    hooks: Vec<minerwatch_proto::v1::Hook>,
    started: SystemTime,
    /// Events for collectors that the spool did not take: told as one loss.
    unspooled: Option<Unspooled>,
    /// Spool appends and flushes that failed, here and on the spool thread.
    pub spool_errors: u64,
    /// Collectors get activity too, not only decisive events and heartbeats.
    push_activity: bool,
    /// The last event handed to the spool: what collectors must acknowledge at stop.
    last_spooled: u64,
    /// Numbers up to here are reserved in the spool directory (see [`RESERVE_STEP`]).
    reserved: u64,
}

/// Sequence numbers reserved on disk at a time, so those given out to the API and the JSON
/// lines (which the spool does not hold) are never given out again after a restart.
const RESERVE_STEP: u64 = 10_000;

/// A run of events for collectors that were not spooled.
#[derive(Debug, Clone)]
struct Unspooled {
    first: u64,
    last: u64,
    count: u64,
    error: String,
}

impl Unspooled {
    fn add(slot: &mut Option<Unspooled>, seq: u64, error: &str) {
        let u = slot.get_or_insert_with(|| Unspooled {
            first: seq,
            last: seq,
            count: 0,
            error: error.to_string(),
        });
        u.last = seq;
        u.count += 1;
    }
}

/// Events queued for the spool thread, at most: past this (a disk that stalls for seconds)
/// events are not spooled and the gap is told as a loss, rather than the pipeline waiting.
const SPOOL_QUEUE: usize = 65_536;

enum SpoolCmd {
    Append(Arc<Event>),
    Flush,
    Reserve(u64),
}

/// What the spool thread could not write, for the publisher to tell.
#[derive(Default)]
struct SpoolTrouble {
    errors: u64,
    unspooled: Option<Unspooled>,
}

/// The spool, written on a thread of its own: appends and fsyncs never stall the pipeline.
struct SpoolFeed {
    tx: Option<std::sync::mpsc::SyncSender<SpoolCmd>>,
    view: crate::push::spool::View,
    trouble: Arc<Mutex<SpoolTrouble>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SpoolFeed {
    fn start(mut w: Writer) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<SpoolCmd>(SPOOL_QUEUE);
        let trouble = Arc::new(Mutex::new(SpoolTrouble::default()));
        let view = w.view();
        let t = trouble.clone();
        let thread = std::thread::Builder::new()
            .name("minerwatch-spool".into())
            .spawn(move || {
                let fail = |seq: Option<u64>, e: &dyn std::fmt::Display| {
                    let Ok(mut t) = t.lock() else { return };
                    t.errors += 1;
                    if let Some(seq) = seq {
                        Unspooled::add(&mut t.unspooled, seq, &e.to_string());
                    }
                    if t.errors.is_power_of_two() {
                        tracing::error!(reason = %e, "spool write failed: collectors will miss events");
                    }
                };
                for cmd in rx {
                    match cmd {
                        SpoolCmd::Append(ev) => {
                            if let Err(e) = w.append(&ev) {
                                fail(Some(ev.seq), &e);
                            }
                        }
                        SpoolCmd::Flush => {
                            if let Err(e) = w.flush() {
                                fail(None, &e);
                            }
                        }
                        SpoolCmd::Reserve(seq) => {
                            if let Err(e) = w.reserve(seq) {
                                fail(None, &e);
                            }
                        }
                    }
                }
                if let Err(e) = w.flush() {
                    fail(None, &e);
                }
            })?;
        Ok(SpoolFeed {
            tx: Some(tx),
            view,
            trouble,
            thread: Some(thread),
        })
    }

    /// Queues `cmd`; what cannot be queued is returned with the reason.
    fn send(&self, cmd: SpoolCmd) -> Result<(), &'static str> {
        let tx = self.tx.as_ref().ok_or("the spool is closed")?;
        tx.try_send(cmd).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => "the spool's writer is behind (a slow disk)",
            std::sync::mpsc::TrySendError::Disconnected(_) => "the spool's writer stopped",
        })
    }

    /// Writes what is queued and waits for the thread to end.
    fn close(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Publisher {
    pub fn new(
        node: Node,
        spool: Option<Writer>,
        collectors: usize,
        push_activity: bool,
    ) -> (Self, Shared) {
        let hub = Arc::new(Hub::default());
        let (status_tx, status_rx) = watch::channel(SensorStatus::default());
        let last_seq = spool.as_ref().map_or(0, |s| s.resume_seq());
        let spool = spool.and_then(|w| {
            SpoolFeed::start(w)
                .map_err(|e| tracing::error!(reason = %e, "cannot start the spool thread: collectors get nothing"))
                .ok()
        });
        let shared_seq = Arc::new(AtomicU64::new(last_seq));
        let shared = Shared {
            hub: hub.clone(),
            node: node.clone(),
            status: status_rx,
            collectors: (0..collectors)
                .map(|_| Arc::new(Mutex::new(CollectorStatus::default())))
                .collect(),
            last_seq: shared_seq.clone(),
        };
        let p = Publisher {
            node,
            last_seq,
            shared_seq,
            hub,
            spool,
            status_tx,
            hooks: Vec::new(),
            started: SystemTime::now(),
            unspooled: None,
            spool_errors: 0,
            push_activity,
            last_spooled: last_seq,
            reserved: last_seq,
        };
        (p, shared)
    }

    /// High-rate events (exec, exit, connect) are built only when someone takes them.
    pub fn wants_activity(&self) -> bool {
        (self.push_activity && self.spool.is_some()) || self.hub.has_clients()
    }

    /// Numbers `body` and hands it on; returns the event. `rare` events (findings, alerts,
    /// losses, status) are also kept for `backlog` requests and always go to collectors;
    /// activity goes to them only with `push_activity`. Sequence numbers are one series for
    /// every event, so a collector that takes no activity sees gaps where activity was:
    /// filtered, not lost (losses are told as loss events).
    pub fn emit(&mut self, at: SystemTime, body: Body, rare: bool) -> Arc<Event> {
        self.last_seq += 1;
        self.shared_seq.store(self.last_seq, Ordering::Relaxed);
        if let Some(spool) = self.spool.as_ref()
            && self.last_seq + RESERVE_STEP / 2 > self.reserved
        {
            // Half a step ahead: the reservation is on disk long before it is reached.
            let upto = self.last_seq + RESERVE_STEP;
            if spool.send(SpoolCmd::Reserve(upto)).is_ok() {
                self.reserved = upto;
            }
        }
        let ev = Event {
            node: Some(self.node.clone()),
            seq: self.last_seq,
            time_unix_nano: convert::unix_nano(at),
            body: Some(body),
        };
        let to_collectors =
            rare || self.push_activity || matches!(ev.body, Some(Body::Heartbeat(_)));
        let ev = Arc::new(ev);
        if let Some(spool) = self.spool.as_ref().filter(|_| to_collectors) {
            self.last_spooled = ev.seq;
            if let Err(why) = spool.send(SpoolCmd::Append(ev.clone())) {
                self.spool_errors += 1;
                Unspooled::add(&mut self.unspooled, ev.seq, why);
                if self.spool_errors.is_power_of_two() {
                    tracing::error!(
                        reason = why,
                        seq = ev.seq,
                        "event not spooled: collectors will miss it"
                    );
                }
            }
        }
        if rare || self.hub.has_clients() {
            self.hub.publish(ev.clone(), rare);
        }
        ev
    }

    pub fn loss(&mut self, kind: &LossKind, count: u64, first_seq: u64, last_seq: u64) {
        tracing::warn!(?kind, count, first_seq, last_seq, "events lost");
        self.emit(
            SystemTime::now(),
            convert::loss(kind, count, first_seq, last_seq),
            true,
        );
    }

    /// Asks the spool thread to hand what it has to the OS, so collectors can take it, and
    /// reports what the spool lost.
    pub fn flush(&mut self) {
        let Some(spool) = self.spool.as_ref() else {
            return;
        };
        // A full queue will be flushed behind what fills it: nothing to tell.
        let _ = spool.send(SpoolCmd::Flush);
        let dropped = spool.view.take_losses();
        let thread_trouble = spool
            .trouble
            .lock()
            .map(|mut t| (std::mem::take(&mut t.errors), t.unspooled.take()))
            .unwrap_or_default();
        self.spool_errors += thread_trouble.0;
        for u in [self.unspooled.take(), thread_trouble.1]
            .into_iter()
            .flatten()
        {
            self.loss(
                &LossKind::SpoolWrite { error: u.error },
                u.count,
                u.first,
                u.last,
            );
        }
        for d in dropped {
            self.loss(
                &LossKind::SpoolFull {
                    collector: d.collector,
                },
                d.count,
                d.first,
                d.last,
            );
        }
        if let Some(spool) = self.spool.as_ref() {
            let _ = spool.send(SpoolCmd::Flush);
        }
    }

    /// Writes everything queued for the spool and stops its thread: the last thing before
    /// the sensor exits.
    pub fn close_spool(&mut self) {
        if let Some(spool) = self.spool.as_mut() {
            spool.close();
        }
    }

    pub fn set_hooks(&mut self, hooks: &[HookStatus]) {
        self.hooks = convert::hooks(hooks);
    }

    /// Updates what `GetStatus` answers; with `state` other than running, also emits it.
    pub fn status(&mut self, state: SensorState, report: StatusReport, stop_reason: &str) {
        let status = SensorStatus {
            state: state as i32,
            hooks: self.hooks.clone(),
            counters: report.counters.into_iter().collect(),
            uptime_seconds: report.uptime_s,
            started_unix_nano: convert::unix_nano(self.started),
            stop_reason: stop_reason.to_string(),
            last_seq: self.last_seq,
            collectors: Vec::new(),
            processes: report.processes as u32,
            cpu_seconds: report.cpu_seconds,
            rss_kb: report.rss_kb,
            gpu: report.gpu,
        };
        self.status_tx.send_replace(status.clone());
        if state != SensorState::Running {
            self.emit(SystemTime::now(), Body::Status(status), true);
        }
    }

    /// The periodic status record: the same as `GetStatus`, in the stream.
    pub fn status_event(&mut self) {
        let status = self.status_tx.borrow().clone();
        self.emit(SystemTime::now(), Body::Status(status), true);
    }

    /// Ends the `GetEvents` streams once their queues are sent, so clients see a clean end.
    pub fn close_clients(&self) {
        self.hub.close();
    }

    /// Every collector has acknowledged everything (true without collectors).
    pub fn all_acked(&self) -> bool {
        self.spool
            .as_ref()
            .is_none_or(|s| s.view.all_acked(self.last_spooled))
    }

    pub fn heartbeat(&mut self, interval_s: u32) {
        self.emit(
            SystemTime::now(),
            Body::Heartbeat(Heartbeat {
                interval_seconds: interval_s,
            }),
            false,
        );
    }
}
