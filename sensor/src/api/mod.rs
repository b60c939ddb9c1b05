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
    spool: Option<Writer>,
    status_tx: watch::Sender<SensorStatus>,
    hooks: Vec<minerwatch_proto::v1::Hook>,
    started: SystemTime,
    /// Sequence numbers given out while the spool could not write: told as one loss.
    unspooled: Option<(u64, u64, String)>,
    pub spool_errors: u64,
    /// Collectors get activity too, not only decisive events and heartbeats.
    push_activity: bool,
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
        let last_seq = spool.as_ref().map_or(0, |s| s.last_seq());
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
        let ev = Event {
            node: Some(self.node.clone()),
            seq: self.last_seq,
            time_unix_nano: convert::unix_nano(at),
            body: Some(body),
        };
        let to_collectors =
            rare || self.push_activity || matches!(ev.body, Some(Body::Heartbeat(_)));
        if let Some(spool) = self.spool.as_mut().filter(|_| to_collectors) {
            match spool.append(&ev) {
                Ok(()) => {}
                Err(e) => {
                    self.spool_errors += 1;
                    let u = self
                        .unspooled
                        .get_or_insert((ev.seq, ev.seq, e.to_string()));
                    u.1 = ev.seq;
                    if self.spool_errors.is_power_of_two() {
                        tracing::error!(reason = %e, seq = ev.seq, "spool write failed: collectors will miss events");
                    }
                }
            }
        }
        let ev = Arc::new(ev);
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

    /// Writes what is buffered so collectors can take it, and reports spool losses.
    pub fn flush(&mut self) {
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        if let Err(e) = spool.flush() {
            self.spool_errors += 1;
            tracing::error!(reason = %e, "spool flush failed");
        }
        let dropped = spool.take_losses();
        if let Some((first, last, error)) = self.unspooled.take() {
            self.loss(
                &LossKind::SpoolWrite { error },
                last - first + 1,
                first,
                last,
            );
        }
        for d in dropped {
            self.loss(
                &LossKind::SpoolFull {
                    collector: d.collector,
                },
                d.last - d.first + 1,
                d.first,
                d.last,
            );
        }
        if let Some(spool) = self.spool.as_mut() {
            let _ = spool.flush();
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
        self.spool.as_ref().is_none_or(|s| s.all_acked())
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
