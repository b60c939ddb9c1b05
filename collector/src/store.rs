//! The collector's database: SQLite in WAL mode, written by one thread. Batches from all
//! sensors are grouped into one transaction; an event is stored once per (node, boot, seq),
//! so a batch sent twice (a lost acknowledgement, a reconnect) is harmless. The same thread
//! keeps each node's last contact and raises `sensor_silent` when a node goes quiet.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use minerwatch_proto::v1::{Alert, Event, Node, Reason, SensorState, Severity, event::Body};
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the database writer has stopped")]
    Stopped,
    #[error("database {path}: schema version {found} is {reason}")]
    Schema {
        path: PathBuf,
        found: String,
        reason: String,
    },
}

const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL UNIQUE,
    boot_id TEXT NOT NULL,
    sensor_version TEXT NOT NULL,
    peer TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    last_kind TEXT NOT NULL,
    events INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    silent INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    node_id INTEGER NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time INTEGER NOT NULL,
    received INTEGER NOT NULL,
    kind TEXT NOT NULL,
    pid INTEGER,
    user TEXT,
    job INTEGER,
    body BLOB NOT NULL,
    account TEXT,
    partition TEXT,
    UNIQUE (node_id, boot_id, seq)
);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    node_id INTEGER NOT NULL,
    seq INTEGER,
    time INTEGER NOT NULL,
    received INTEGER NOT NULL,
    severity INTEGER NOT NULL,
    pid INTEGER,
    user TEXT,
    job INTEGER,
    source TEXT NOT NULL,
    body BLOB NOT NULL,
    account TEXT,
    partition TEXT
);
CREATE INDEX IF NOT EXISTS alerts_time ON alerts (time);
CREATE TABLE IF NOT EXISTS sink_cursors (name TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
";

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn open_conn(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = if read_only {
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    } else {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        Connection::open(path)
    }
    .map_err(err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // WAL with NORMAL: a commit survives a crash of the collector; only a power loss can
        // take the last transactions, which the sensors then send again.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let v: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        match v.as_deref().map(str::parse::<i64>) {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                    [SCHEMA_VERSION.to_string()],
                )
                .map_err(err)?;
            }
            Some(Ok(SCHEMA_VERSION)) => {}
            // Version 2 added the Slurm account and partition to events and alerts: the
            // columns and the version change in one transaction, or not at all.
            Some(Ok(1)) => conn
                .execute_batch(
                    "BEGIN IMMEDIATE;
                     ALTER TABLE events ADD COLUMN account TEXT;
                     ALTER TABLE events ADD COLUMN partition TEXT;
                     ALTER TABLE alerts ADD COLUMN account TEXT;
                     ALTER TABLE alerts ADD COLUMN partition TEXT;
                     UPDATE meta SET value = '2' WHERE key = 'schema';
                     COMMIT;",
                )
                .map_err(err)?,
            Some(other) => {
                return Err(StoreError::Schema {
                    path: path.to_path_buf(),
                    found: v.unwrap_or_default(),
                    reason: match other {
                        Ok(n) if n > SCHEMA_VERSION => {
                            "made by a newer collector: run that one, or a fresh database".into()
                        }
                        _ => "not a schema this collector knows".into(),
                    },
                });
            }
        }
    }
    Ok(conn)
}

/// Opens the database for queries (the `alerts`, `events`, `nodes` commands and the sinks).
pub fn open_read(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            source: rusqlite::Error::InvalidPath(path.to_path_buf()),
        });
    }
    open_conn(path, true)
}

/// Opens for writing small bookkeeping (sink cursors) beside the writer thread.
pub fn open_side(path: &Path) -> Result<Connection, StoreError> {
    open_conn(path, false)
}

#[derive(Debug, Clone)]
struct NodeState {
    id: i64,
    node: Node,
    last_seen: i64,
    last_seq: u64,
    /// The last record was a clean stop (`status` with state stopping), and why.
    stopped: Option<String>,
    silent: bool,
}

enum Job {
    Batch {
        events: Vec<Event>,
        peer: String,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Tick,
}

/// What the writer counts, for the log and the benchmark.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub stored: u64,
    pub duplicates: u64,
    pub alerts: u64,
}

/// The writer's handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Job>,
}

pub struct Settings {
    pub silent_after: Duration,
    pub retention: Duration,
}

impl Store {
    /// Opens (or creates) the database and starts the writer thread. `alerts` is notified
    /// after every commit that stored an alert.
    pub fn open(
        path: &Path,
        settings: Settings,
        alerts: std::sync::Arc<Notify>,
    ) -> Result<Self, StoreError> {
        let conn = open_conn(path, false)?;
        let mut w = WriterState::load(conn, settings, alerts)?;
        let (tx, mut rx) = mpsc::channel::<Job>(256);
        std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let mut jobs = vec![job];
                    while jobs.len() < 256 {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    w.run(jobs);
                }
            })
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        let ticker = tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if ticker.send(Job::Tick).await.is_err() {
                    return;
                }
            }
        });
        Ok(Store { tx })
    }

    /// Stores a batch; returns the highest sequence number in it once it is committed.
    pub async fn push(&self, events: Vec<Event>, peer: String) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Batch {
                events,
                peer,
                reply,
            })
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

struct WriterState {
    conn: Connection,
    settings: Settings,
    nodes: HashMap<String, NodeState>,
    started: i64,
    last_retention: i64,
    alerts: std::sync::Arc<Notify>,
    counts: Counts,
    last_log: i64,
}

fn kind_str(ev: &Event) -> &'static str {
    minerwatch_proto::kind_name(ev.kind())
}

impl WriterState {
    fn load(
        conn: Connection,
        settings: Settings,
        alerts: std::sync::Arc<Notify>,
    ) -> Result<Self, StoreError> {
        let mut nodes = HashMap::new();
        {
            let mut q = conn.prepare(
                "SELECT id, host, boot_id, sensor_version, last_seen, last_seq, last_kind, silent FROM nodes",
            )?;
            let rows = q.query_map([], |r| {
                let kind: String = r.get(6)?;
                Ok(NodeState {
                    id: r.get(0)?,
                    node: Node {
                        host: r.get(1)?,
                        boot_id: r.get(2)?,
                        sensor_version: r.get(3)?,
                    },
                    last_seen: r.get(4)?,
                    last_seq: r.get::<_, i64>(5)? as u64,
                    stopped: kind.strip_prefix("stop:").map(str::to_string),
                    silent: r.get::<_, i64>(7)? != 0,
                })
            })?;
            for n in rows {
                let n = n?;
                nodes.insert(n.node.host.clone(), n);
            }
        }
        Ok(Self {
            conn,
            settings,
            nodes,
            started: now_ns(),
            last_retention: 0,
            alerts,
            counts: Counts::default(),
            last_log: now_ns(),
        })
    }

    fn run(&mut self, jobs: Vec<Job>) {
        let mut replies = Vec::new();
        let mut ticked = false;
        let before = self.counts;
        let result = (|| -> Result<(), StoreError> {
            let tx = self.conn.transaction()?;
            for job in jobs {
                match job {
                    Job::Batch {
                        events,
                        peer,
                        reply,
                    } => {
                        let last = events.iter().map(|e| e.seq).max().unwrap_or(0);
                        Self::batch(&tx, &mut self.nodes, &mut self.counts, events, &peer)?;
                        replies.push((reply, last));
                    }
                    Job::Tick => ticked = true,
                }
            }
            if ticked {
                Self::check_silence(
                    &tx,
                    &mut self.nodes,
                    &mut self.counts,
                    self.settings.silent_after,
                    self.started,
                )?;
            }
            tx.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                for (reply, last) in replies {
                    let _ = reply.send(Ok(last));
                }
                if self.counts.alerts > before.alerts {
                    self.alerts.notify_waiters();
                }
            }
            Err(e) => {
                tracing::error!(reason = %e, "database write failed; sensors will resend");
                for (reply, _) in replies {
                    let _ = reply.send(Err(StoreError::Sql(rusqlite::Error::InvalidQuery)));
                }
            }
        }
        if ticked {
            self.housekeeping();
        }
    }

    fn batch(
        tx: &rusqlite::Transaction<'_>,
        nodes: &mut HashMap<String, NodeState>,
        counts: &mut Counts,
        events: Vec<Event>,
        peer: &str,
    ) -> Result<(), StoreError> {
        let now = now_ns();
        let mut insert_event = tx.prepare_cached(
            "INSERT OR IGNORE INTO events (node_id, boot_id, seq, time, received, kind, pid, user, job, body, account, partition)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        let mut buf = Vec::with_capacity(512);
        let mut resumed = Vec::new();
        // Node id -> (stored, duplicates) in this batch.
        let mut touched: HashMap<i64, (u64, u64)> = HashMap::new();
        for ev in &events {
            let node = ev.node.clone().unwrap_or_default();
            let state = match nodes.get_mut(&node.host) {
                Some(s) if s.node == node => s,
                _ => {
                    let id: i64 = tx.query_row(
                        "INSERT INTO nodes (host, boot_id, sensor_version, peer, first_seen, last_seen, last_seq, last_kind)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5, 0, '')
                         ON CONFLICT (host) DO UPDATE SET boot_id = excluded.boot_id,
                             sensor_version = excluded.sensor_version, peer = excluded.peer
                         RETURNING id",
                        params![node.host, node.boot_id, node.sensor_version, peer, now],
                        |r| r.get(0),
                    )?;
                    let prev = nodes.remove(&node.host);
                    nodes.entry(node.host.clone()).or_insert(NodeState {
                        id,
                        node: node.clone(),
                        last_seen: now,
                        last_seq: prev.as_ref().map_or(0, |p| p.last_seq),
                        stopped: None,
                        silent: prev.is_some_and(|p| p.silent),
                    })
                }
            };
            if state.silent {
                state.silent = false;
                resumed.push(state.clone());
            }
            state.last_seen = now;
            buf.clear();
            ev.encode(&mut buf).unwrap_or_default();
            let process = ev.process();
            let n = insert_event.execute(params![
                state.id,
                node.boot_id,
                ev.seq as i64,
                ev.time_unix_nano,
                now,
                kind_str(ev),
                ev.pid(),
                process.map(|p| p.user.as_str()).filter(|u| !u.is_empty()),
                process.and_then(|p| p.slurm_job).map(|j| j as i64),
                buf,
                process
                    .map(|p| p.slurm_account.as_str())
                    .filter(|a| !a.is_empty()),
                process
                    .map(|p| p.slurm_partition.as_str())
                    .filter(|a| !a.is_empty()),
            ])?;
            let t = touched.entry(state.id).or_default();
            if n == 0 {
                t.1 += 1;
                counts.duplicates += 1;
                continue;
            }
            t.0 += 1;
            counts.stored += 1;
            state.last_seq = state.last_seq.max(ev.seq);
            state.stopped = match &ev.body {
                Some(Body::Status(s)) if s.state() == SensorState::Stopping => {
                    Some(s.stop_reason.clone())
                }
                _ => None,
            };
            if let Some(Body::Alert(a)) = &ev.body {
                insert_alert(tx, state.id, Some(ev.seq), ev, a, &buf, now)?;
                counts.alerts += 1;
            }
        }
        for s in resumed {
            let (ev, a) = collector_alert(
                &s.node,
                "sensor_resumed",
                Severity::Info,
                format!("node {} reports again", s.node.host),
            );
            buf.clear();
            ev.encode(&mut buf).unwrap_or_default();
            insert_alert(tx, s.id, None, &ev, &a, &buf, now)?;
            counts.alerts += 1;
            tracing::info!(node = %s.node.host, "sensor reports again");
        }
        let mut update = tx.prepare_cached(
            "UPDATE nodes SET last_seen = ?2, last_seq = ?3, last_kind = ?4, silent = 0,
                 events = events + ?5, duplicates = duplicates + ?6 WHERE id = ?1",
        )?;
        for s in nodes.values() {
            let Some(&(stored, dups)) = touched.get(&s.id) else {
                continue;
            };
            let kind = match &s.stopped {
                Some(r) => format!("stop:{r}"),
                None => "event".into(),
            };
            update.execute(params![
                s.id,
                s.last_seen,
                s.last_seq as i64,
                kind,
                stored as i64,
                dups as i64
            ])?;
        }
        Ok(())
    }

    /// Raises `sensor_silent` for each node not heard from for `silent_after` (counted from
    /// the collector's own start at the earliest, so a restarted collector gives every node
    /// time to reconnect).
    fn check_silence(
        tx: &rusqlite::Transaction<'_>,
        nodes: &mut HashMap<String, NodeState>,
        counts: &mut Counts,
        silent_after: Duration,
        started: i64,
    ) -> Result<(), StoreError> {
        let now = now_ns();
        let limit = silent_after.as_nanos() as i64;
        let mut buf = Vec::new();
        for s in nodes.values_mut() {
            let since = s.last_seen.max(started);
            if s.silent || now - since < limit {
                continue;
            }
            s.silent = true;
            let quiet = Duration::from_nanos((now - s.last_seen).max(0) as u64).as_secs();
            let (severity, how) = match &s.stopped {
                Some(reason) => (
                    Severity::Medium,
                    format!("its last record was a clean stop ({reason})"),
                ),
                None => (
                    Severity::High,
                    "it did not say it was stopping: killed, crashed, or cut off".to_string(),
                ),
            };
            let detail = format!(
                "no event or heartbeat from node {} for {quiet} s (last event #{}); {how}",
                s.node.host, s.last_seq
            );
            let (ev, a) = collector_alert(&s.node, "sensor_silent", severity, detail);
            buf.clear();
            ev.encode(&mut buf).unwrap_or_default();
            insert_alert(tx, s.id, None, &ev, &a, &buf, now)?;
            tx.execute("UPDATE nodes SET silent = 1 WHERE id = ?1", [s.id])?;
            counts.alerts += 1;
            tracing::warn!(node = %s.node.host, quiet_s = quiet, "sensor silent");
        }
        Ok(())
    }

    fn housekeeping(&mut self) {
        let now = now_ns();
        if now - self.last_retention >= 60_000_000_000 {
            self.last_retention = now;
            let cutoff = now - self.settings.retention.as_nanos() as i64;
            for table in ["events", "alerts"] {
                match self
                    .conn
                    .execute(&format!("DELETE FROM {table} WHERE time < ?1"), [cutoff])
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(table, rows = n, "retention: removed old rows"),
                    Err(e) => tracing::warn!(table, reason = %e, "retention failed"),
                }
            }
        }
        if now - self.last_log >= 60_000_000_000 {
            self.last_log = now;
            tracing::info!(
                stored = self.counts.stored,
                duplicates = self.counts.duplicates,
                alerts = self.counts.alerts,
                nodes = self.nodes.len(),
                "collector totals"
            );
        }
    }
}

fn insert_alert(
    tx: &rusqlite::Transaction<'_>,
    node_id: i64,
    seq: Option<u64>,
    ev: &Event,
    a: &Alert,
    body: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    let p = a.process.as_ref();
    tx.prepare_cached(
        "INSERT INTO alerts (node_id, seq, time, received, severity, pid, user, job, source, body, account, partition)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        node_id,
        seq.map(|s| s as i64),
        ev.time_unix_nano,
        now,
        a.severity,
        p.map(|p| p.pid),
        p.map(|p| p.user.as_str()).filter(|u| !u.is_empty()),
        p.and_then(|p| p.slurm_job).map(|j| j as i64),
        a.source,
        body,
        p.map(|p| p.slurm_account.as_str()).filter(|a| !a.is_empty()),
        p.map(|p| p.slurm_partition.as_str()).filter(|a| !a.is_empty()),
    ])?;
    Ok(())
}

/// An alert the collector raises about a node (not in the node's sequence: seq 0).
fn collector_alert(node: &Node, code: &str, severity: Severity, detail: String) -> (Event, Alert) {
    let now = now_ns();
    let a = Alert {
        id: format!("{code}-{}-{now}", node.host),
        revision: 0,
        severity: severity as i32,
        score: 0,
        reasons: vec![Reason {
            code: code.to_string(),
            detail,
            weight: 0,
        }],
        process: None,
        connection: String::new(),
        first_seen_unix_nano: now,
        source: "collector".into(),
        scope: "node".into(),
        allowed: String::new(),
    };
    let ev = Event {
        node: Some(node.clone()),
        seq: 0,
        time_unix_nano: now,
        body: Some(Body::Alert(a.clone())),
    };
    (ev, a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use minerwatch_proto::v1::Heartbeat;

    fn ev(host: &str, boot: &str, seq: u64) -> Event {
        Event {
            node: Some(Node {
                host: host.into(),
                boot_id: boot.into(),
                sensor_version: "0.1.0".into(),
            }),
            seq,
            time_unix_nano: now_ns(),
            body: Some(Body::Heartbeat(Heartbeat {
                interval_seconds: 10,
            })),
        }
    }

    fn count(db: &Path) -> i64 {
        open_read(db)
            .unwrap()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_version_1_database_gains_the_slurm_columns_and_keeps_its_rows() {
        let dir = std::env::temp_dir().join(format!("mw-store-v1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("c.db");
        {
            // The tables as version 1 made them, with a row each.
            let old = SCHEMA
                .replace("    account TEXT,\n    partition TEXT,\n", "")
                .replace(",\n    account TEXT,\n    partition TEXT\n", "\n");
            assert!(!old.contains("account"), "{old}");
            let c = Connection::open(&db).unwrap();
            c.execute_batch(&old).unwrap();
            c.execute_batch(
                "INSERT INTO meta VALUES ('schema', '1');
                 INSERT INTO alerts (node_id, time, received, severity, source, body)
                     VALUES (1, 1, 1, 3, 'sensor', x'');",
            )
            .unwrap();
        }
        let c = open_conn(&db, false).unwrap();
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM alerts WHERE account IS NULL AND partition IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
        let v: String = c
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(v, "2");
        c.prepare("SELECT account, partition FROM events").unwrap();
        drop(c);
        // Opening again changes nothing.
        open_conn(&db, false).unwrap();
        // A newer collector's database is refused, not downgraded.
        Connection::open(&db)
            .unwrap()
            .execute("UPDATE meta SET value = '3' WHERE key = 'schema'", [])
            .unwrap();
        let e = open_conn(&db, false).unwrap_err().to_string();
        assert!(
            e.contains("schema version 3") && e.contains("newer collector"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn one_row_per_node_boot_and_sequence() {
        let dir = std::env::temp_dir().join(format!("mw-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("c.db");
        let store = Store::open(
            &db,
            Settings {
                silent_after: Duration::from_secs(3600),
                retention: Duration::from_secs(86_400),
            },
            std::sync::Arc::new(Notify::new()),
        )
        .unwrap();
        let batch = |host: &str, boot: &str| (1..=100).map(|s| ev(host, boot, s)).collect();
        assert_eq!(
            store.push(batch("n1", "b1"), "p".into()).await.unwrap(),
            100
        );
        // The same batch again (a lost acknowledgement): acknowledged, stored once.
        assert_eq!(
            store.push(batch("n1", "b1"), "p".into()).await.unwrap(),
            100
        );
        assert_eq!(count(&db), 100);
        // Another node, and the same node after a reboot, reuse the numbers: all kept.
        store.push(batch("n2", "b1"), "p".into()).await.unwrap();
        store.push(batch("n1", "b2"), "p".into()).await.unwrap();
        assert_eq!(count(&db), 300);
        let dups: i64 = open_read(&db)
            .unwrap()
            .query_row("SELECT duplicates FROM nodes WHERE host = 'n1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(dups, 100);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
