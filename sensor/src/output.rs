//! Outputs: JSON lines (the operator contract: one object per line, `kind` names the record)
//! and readable terminal text for people. Alerts and activity are stream events, rendered by
//! `minerwatch_proto::render` exactly as collectors and `minerwatch events` render them; the
//! sensor's own records (ready, stats, stop) are built here.
use std::{
    fs::OpenOptions,
    io::{self, Write},
    path::Path,
    time::SystemTime,
};

use std::collections::BTreeMap;

use serde::Serialize;

use minerwatch_detect::Severity;
pub use minerwatch_proto::render::printable;
use minerwatch_proto::{
    render,
    v1::{Event, event::Body},
};

use crate::{
    config::JsonlTarget,
    kernel::{BpfCost, loader::HookStatus},
};

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Debug, Clone, Serialize)]
pub struct MissingHook {
    pub hook: &'static str,
    /// Missing by nature on many machines (hardware counters in VMs).
    pub optional: bool,
    pub attach_point: String,
    pub error: String,
    pub lost: &'static str,
}

/// `{"kind":"ready",…}`: written once, after every hook that can attach is attached.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyRecord {
    pub kind: &'static str,
    pub ts: String,
    pub node: String,
    pub version: &'static str,
    pub sensor_pid: u32,
    pub hooks_attached: Vec<&'static str>,
    pub hooks_missing: Vec<MissingHook>,
    /// Hooks attached in a simpler form this kernel takes: hook -> what that costs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hooks_degraded: BTreeMap<&'static str, String>,
    pub processes_known: usize,
    pub connections_watched: usize,
    pub saturation_window_s: u64,
}

impl ReadyRecord {
    /// Hooks attached in a simpler form, with what that costs.
    pub fn degraded(statuses: &[HookStatus]) -> BTreeMap<&'static str, String> {
        statuses
            .iter()
            .filter_map(|h| Some((h.program, h.degraded.clone()?)))
            .collect()
    }

    pub fn hooks(statuses: &[HookStatus]) -> (Vec<&'static str>, Vec<MissingHook>) {
        let attached = statuses
            .iter()
            .filter(|h| h.attached)
            .map(|h| h.program)
            .collect();
        let missing = statuses
            .iter()
            .filter(|h| !h.attached)
            .map(|h| MissingHook {
                hook: h.program,
                optional: h.optional,
                attach_point: h.attach_point.clone(),
                error: h.error.clone().unwrap_or_default(),
                lost: h.lost,
            })
            .collect();
        (attached, missing)
    }
}

/// `{"kind":"stats",…}`: counters, periodically and at stop.
#[derive(Debug, Clone, Serialize)]
pub struct StatsRecord {
    pub kind: &'static str,
    pub ts: String,
    pub node: String,
    pub uptime_s: u64,
    pub events: u64,
    pub decode_errors: u64,
    /// Per-CPU kernel counters summed: ring-buffer drops and hook failures.
    pub kernel: BTreeMap<&'static str, u64>,
    /// Connections on which payload records were lost (a full ring) and the reassembler
    /// had to resynchronise.
    pub payload_gaps: u64,
    pub alerts: u64,
    pub processes: usize,
    /// Connections whose first bytes are held or whose verdict is kept.
    pub streams: u64,
    /// Processes forgotten because /proc showed them gone (their exit was never seen).
    pub reconciled: u64,
    /// New connections not classified because their process already had the most streams.
    pub streams_capped: u64,
    /// The JSON-lines sink: failed writes, records dropped, held, reopenings.
    pub jsonl: SinkHealth,
    pub terminal_errors: u64,
    pub cpu_seconds: f64,
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
    /// Per-hook in-kernel cost, when BPF run-time statistics are on (`--bpf-stats`):
    /// program -> runs and nanoseconds spent.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bpf: BTreeMap<&'static str, BpfCost>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StopRecord {
    pub kind: &'static str,
    pub ts: String,
    pub node: String,
    pub reason: String,
}

/// Most bytes of records held for a JSON-lines sink that cannot be written (disk full, a
/// closed pipe): past this, records are dropped and counted, never the sensor stopped.
const PENDING_CAP: usize = 8 * 1024 * 1024;

/// What a sink could not deliver, for the stats record and the status.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct SinkHealth {
    /// Write attempts that failed.
    pub write_errors: u64,
    /// Records dropped because the sink stayed unwritable past its buffer.
    pub dropped: u64,
    /// Records held, waiting for the sink to take them.
    pub pending: u64,
    /// Times the file was reopened (rotated away, removed).
    pub reopened: u64,
}

/// The JSON-lines sink. It never fails the sensor: a write that fails keeps the bytes and
/// retries on the next flush, up to [`PENDING_CAP`]; what overflows is counted, and when the
/// sink takes writes again it first writes a `{"kind":"loss","sink":"jsonl",…}` record. A file
/// that was rotated away or removed is reopened at its path.
struct Jsonl {
    target: JsonlTarget,
    file: Option<Box<dyn Write + Send>>,
    /// (device, inode) of the open file, to notice rotation.
    ident: Option<(u64, u64)>,
    pending: Vec<u8>,
    /// Complete records in `pending`.
    pending_records: u64,
    health: SinkHealth,
    /// Records dropped and not yet told in a loss record.
    untold_drops: u64,
    failing: Option<String>,
    /// When the path was last checked for rotation: at most once a second, not on every
    /// flush (twenty a second).
    checked: Option<std::time::Instant>,
}

fn ident_of(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

impl Jsonl {
    fn open(target: &JsonlTarget) -> io::Result<Self> {
        let (file, ident): (Box<dyn Write + Send>, _) = match target {
            JsonlTarget::Stdout => (Box::new(io::stdout()), None),
            JsonlTarget::File(p) => (Box::new(open_append(p)?), ident_of(p)),
        };
        Ok(Self {
            target: target.clone(),
            file: Some(file),
            ident,
            pending: Vec::with_capacity(64 * 1024),
            pending_records: 0,
            health: SinkHealth::default(),
            untold_drops: 0,
            failing: None,
            checked: None,
        })
    }

    fn push<T: Serialize>(&mut self, rec: &T) {
        let mark = self.pending.len();
        if serde_json::to_writer(&mut self.pending, rec).is_err() {
            self.pending.truncate(mark);
            return;
        }
        self.pending.push(b'\n');
        if self.pending.len() > PENDING_CAP {
            self.pending.truncate(mark);
            self.health.dropped += 1;
            self.untold_drops += 1;
        } else {
            self.pending_records += 1;
        }
    }

    /// A file sink whose path no longer names the open file is reopened there.
    fn reopen_if_moved(&mut self) {
        let JsonlTarget::File(p) = &self.target else {
            return;
        };
        let healthy = self.file.is_some() && self.failing.is_none();
        if healthy
            && self
                .checked
                .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
        {
            return;
        }
        self.checked = Some(std::time::Instant::now());
        let now = ident_of(p);
        if now.is_some() && now == self.ident && self.file.is_some() {
            return;
        }
        match open_append(p) {
            Ok(f) => {
                self.file = Some(Box::new(f));
                self.ident = ident_of(p);
                self.health.reopened += 1;
                tracing::info!(path = %p.display(), "JSON-lines output reopened");
            }
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: io::Error) {
        self.health.write_errors += 1;
        let text = e.to_string();
        if self.failing.as_deref() != Some(text.as_str()) {
            tracing::warn!(reason = %text, pending = self.pending_records, "JSON-lines output cannot be written; holding records and retrying");
            self.failing = Some(text);
        }
    }

    /// Writes what is pending, as far as the sink takes it.
    fn flush(&mut self) {
        self.reopen_if_moved();
        if self.untold_drops > 0 && self.failing.is_none() {
            self.tell_drops();
        }
        let Some(w) = self.file.as_mut() else {
            return;
        };
        let mut done = 0;
        let result = loop {
            if done == self.pending.len() {
                break w.flush();
            }
            match w.write(&self.pending[done..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        // Whole lines written leave the count; a torn one stays, its rest is written next.
        let lines = self.pending[..done].iter().filter(|&&c| c == b'\n').count() as u64;
        self.pending_records = self.pending_records.saturating_sub(lines);
        self.pending.drain(..done);
        match result {
            Ok(()) => {
                if let Some(why) = self.failing.take() {
                    // At the level of the warning it ends, so whoever saw one sees the other.
                    tracing::warn!(was = %why, "JSON-lines output writable again");
                    if self.untold_drops > 0 {
                        self.tell_drops();
                        self.flush();
                    }
                }
            }
            Err(e) => self.fail(e),
        }
        self.health.pending = self.pending_records;
    }

    fn tell_drops(&mut self) {
        let rec = serde_json::json!({
            "kind": "loss",
            "ts": rfc3339(SystemTime::now()),
            "sink": "jsonl",
            "records": self.untold_drops,
            "reason": "output not writable; records past the sensor's buffer were dropped",
        });
        self.untold_drops = 0;
        // The loss record goes first: it speaks of what is missing before what follows.
        let mut line = rec.to_string().into_bytes();
        line.push(b'\n');
        line.extend_from_slice(&self.pending);
        self.pending = line;
        self.pending_records += 1;
    }
}

/// Where records go. No output can stop the sensor: the JSON-lines sink holds, retries and
/// counts (see [`SinkHealth`]); the terminal is best effort.
pub struct Outputs {
    jsonl: Option<Jsonl>,
    terminal: Option<Box<dyn Write + Send>>,
    terminal_errors: u64,
    min_severity: Severity,
}

impl Outputs {
    /// Opens the sinks. Failing to open the JSON-lines file at start-up is an error: it is a
    /// configuration mistake the operator should see at once.
    pub fn open(
        jsonl: Option<&JsonlTarget>,
        terminal: bool,
        min_severity: Severity,
    ) -> io::Result<Self> {
        let term_to_stderr = matches!(jsonl, Some(JsonlTarget::Stdout));
        let jsonl = jsonl.map(Jsonl::open).transpose()?;
        let terminal: Option<Box<dyn Write + Send>> = match (terminal, term_to_stderr) {
            (false, _) => None,
            (true, true) => Some(Box::new(io::stderr())),
            (true, false) => Some(Box::new(io::stdout())),
        };
        Ok(Self {
            jsonl,
            terminal,
            terminal_errors: 0,
            min_severity,
        })
    }

    /// How the JSON-lines sink is doing, and terminal write failures.
    pub fn health(&self) -> (SinkHealth, u64) {
        (
            self.jsonl.as_ref().map(|j| j.health).unwrap_or_default(),
            self.terminal_errors,
        )
    }

    fn json<T: Serialize>(&mut self, rec: &T) {
        if let Some(j) = self.jsonl.as_mut() {
            j.push(rec);
        }
    }

    fn term(&mut self, text: &str) {
        if let Some(t) = self.terminal.as_mut()
            && t.write_all(text.as_bytes()).is_err()
        {
            self.terminal_errors += 1;
        }
    }

    pub fn ready(&mut self, r: &ReadyRecord) {
        self.json(r);
        let mut t = format!(
            "minerwatch {} watching {} ({} hooks attached, {} processes known, {} connections watched)\n",
            r.version,
            r.node,
            r.hooks_attached.len(),
            r.processes_known,
            r.connections_watched
        );
        for (hook, lost) in &r.hooks_degraded {
            t += &format!("  hook {hook} attached in a simpler form: {lost}\n");
        }
        for m in &r.hooks_missing {
            let what = if m.optional {
                "not available (optional)"
            } else {
                "MISSING"
            };
            t += &format!(
                "  hook {} {what}: {} ({})\n    lost: {}\n",
                m.hook, m.error, m.attach_point, m.lost
            );
        }
        self.term(&t);
        self.flush();
    }

    /// A stream event: an alert (at or above the minimum severity) to every sink, anything
    /// else to JSON lines only. The caller decides which activity is written.
    pub fn event(&mut self, ev: &Event) {
        if let Some(Body::Alert(a)) = &ev.body {
            if crate::api::convert::severity(self.min_severity) as i32 > a.severity {
                return;
            }
            if self.terminal.is_some() {
                self.term(&render::to_text(ev));
            }
        }
        if let Some(j) = self.jsonl.as_mut() {
            j.push(&render::to_json(ev));
        }
    }

    pub fn stats(&mut self, s: &StatsRecord) {
        self.json(s)
    }

    pub fn stop(&mut self, s: &StopRecord) {
        self.json(s);
        self.flush()
    }

    pub fn flush(&mut self) {
        if let Some(j) = self.jsonl.as_mut() {
            j.flush();
        }
        if let Some(t) = self.terminal.as_mut()
            && t.flush().is_err()
        {
            self.terminal_errors += 1;
        }
    }
}

fn open_append(p: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open JSON-lines output {}: {e}", p.display()),
            )
        })
}
