//! Fan-out of the event stream to `GetEvents` clients. The sensor task publishes without
//! ever waiting: each client has a bounded queue, and what does not fit is counted for that
//! client alone and told to it as a loss record when it catches up.
use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use minerwatch_proto::v1::Event;
use tokio::sync::mpsc;

use super::filter::Filter;

/// Events one client may have queued before it counts as too slow.
pub const CLIENT_QUEUE: usize = 4096;
/// Recent events kept for `backlog` requests.
const RECENT: usize = 1024;

/// What a client missed: how many, and the first and last sequence numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

struct Client {
    filter: Arc<Filter>,
    tx: mpsc::Sender<Arc<Event>>,
    missed: Arc<Mutex<Missed>>,
}

#[derive(Default)]
struct Inner {
    clients: Vec<Client>,
    recent: VecDeque<Arc<Event>>,
}

/// Shared between the sensor task (publishing) and the gRPC service (subscribing).
#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
    clients: AtomicUsize,
}

/// A client's end: its queue and what it missed.
pub struct Subscription {
    pub rx: mpsc::Receiver<Arc<Event>>,
    pub missed: Arc<Mutex<Missed>>,
}

impl Hub {
    /// Anyone listening: when nobody is, the sensor need not build high-rate events.
    pub fn has_clients(&self) -> bool {
        self.clients.load(Ordering::Relaxed) > 0
    }

    /// Keeps events that are cheap and rare in the recent list; the high-rate kinds only
    /// when someone is listening, so an idle sensor builds none of them.
    pub fn publish(&self, ev: Arc<Event>, keep_recent: bool) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if keep_recent {
            if inner.recent.len() == RECENT {
                inner.recent.pop_front();
            }
            inner.recent.push_back(ev.clone());
        }
        let before = inner.clients.len();
        inner.clients.retain(|c| {
            if !c.filter.matches(&ev) {
                return !c.tx.is_closed();
            }
            match c.tx.try_send(ev.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if let Ok(mut m) = c.missed.lock() {
                        if m.count == 0 {
                            m.first_seq = ev.seq;
                        }
                        m.count += 1;
                        m.last_seq = ev.seq;
                    }
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if inner.clients.len() != before {
            self.clients.store(inner.clients.len(), Ordering::Relaxed);
        }
    }

    /// Ends every client's stream (after what is queued): the sensor is stopping.
    pub fn close(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.clients.clear();
        }
        self.clients.store(0, Ordering::Relaxed);
    }

    /// Registers a client. Its queue starts with up to `backlog` recent matching events, taken
    /// under the same lock as registration, so nothing falls between backlog and live events.
    pub fn subscribe(&self, filter: Filter, backlog: usize, follow: bool) -> Subscription {
        let filter = Arc::new(filter);
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE + backlog.min(RECENT));
        let missed = Arc::new(Mutex::new(Missed::default()));
        let Ok(mut inner) = self.inner.lock() else {
            return Subscription { rx, missed };
        };
        let recent: Vec<_> = inner
            .recent
            .iter()
            .filter(|e| filter.matches(e))
            .cloned()
            .collect();
        for ev in &recent[recent.len().saturating_sub(backlog)..] {
            let _ = tx.try_send(ev.clone());
        }
        if follow {
            inner.clients.push(Client {
                filter,
                tx,
                missed: missed.clone(),
            });
            self.clients.store(inner.clients.len(), Ordering::Relaxed);
        }
        Subscription { rx, missed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> Arc<Event> {
        Arc::new(Event {
            seq,
            ..Default::default()
        })
    }

    #[test]
    fn a_full_client_loses_only_its_own_events_and_knows_which() {
        let hub = Hub::default();
        let mut slow = hub.subscribe(Filter::new(&[], &[]).unwrap(), 0, true);
        let mut fast = hub.subscribe(Filter::new(&[], &[]).unwrap(), 0, true);
        let n = CLIENT_QUEUE as u64 + 10;
        for seq in 1..=n {
            hub.publish(ev(seq), false);
            // The fast client keeps up.
            assert_eq!(fast.rx.try_recv().unwrap().seq, seq);
        }
        let m = *slow.missed.lock().unwrap();
        assert_eq!(
            m,
            Missed {
                count: 10,
                first_seq: CLIENT_QUEUE as u64 + 1,
                last_seq: n
            }
        );
        assert_eq!(slow.rx.try_recv().unwrap().seq, 1);
    }

    #[test]
    fn backlog_then_live_without_a_gap_and_closed_clients_go() {
        let hub = Hub::default();
        for seq in 1..=5 {
            hub.publish(ev(seq), true);
        }
        let mut sub = hub.subscribe(Filter::new(&[], &[]).unwrap(), 2, true);
        hub.publish(ev(6), true);
        let got: Vec<u64> = std::iter::from_fn(|| sub.rx.try_recv().ok().map(|e| e.seq)).collect();
        assert_eq!(got, [4, 5, 6]);
        assert!(hub.has_clients());
        drop(sub);
        hub.publish(ev(7), true);
        assert!(!hub.has_clients());
    }
}
