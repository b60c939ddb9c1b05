//! Outputs: JSON lines (the operator contract: one object per line, `kind` names the record)
//! and readable terminal text for people. Records are built here from the sensor's state;
//! writers only format and write.
use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    net::SocketAddr,
    path::Path,
    time::SystemTime,
};

use std::collections::BTreeMap;

use serde::Serialize;

pub use minerwatch_proto::render::printable;
use minerwatch_proto::render::{argv_text, parent_chain};

use crate::{
    config::JsonlTarget,
    detect::{Reason, Severity},
    loader::HookStatus,
};

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Debug, Clone, Serialize)]
pub struct ParentInfo {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
}

/// `{"kind":"alert",…}`: the engine's verdict plus who it is about.
#[derive(Debug, Clone, Serialize)]
pub struct AlertRecord {
    pub kind: &'static str,
    pub ts: String,
    pub node: String,
    pub id: String,
    pub update: u32,
    pub pid: u32,
    pub ppid: u32,
    pub severity: Severity,
    pub score: u32,
    pub reasons: Vec<Reason>,
    pub comm: String,
    pub exe: String,
    pub argv: Vec<String>,
    pub uid: u32,
    pub user: Option<String>,
    pub cgroup: String,
    pub job: Option<u64>,
    pub connection: Option<SocketAddr>,
    pub parents: Vec<ParentInfo>,
    pub first_seen: String,
    /// The process was running before the sensor started.
    pub preexisting: bool,
    /// `ts` and `first_seen` as times, for the event stream.
    #[serde(skip)]
    pub at: SystemTime,
    #[serde(skip)]
    pub first_seen_at: SystemTime,
}

impl AlertRecord {
    pub fn severity(&self) -> Severity {
        self.severity
    }
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
    pub processes_known: usize,
    pub connections_watched: usize,
    pub saturation_window_s: u64,
}

impl ReadyRecord {
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
    /// Bytes the payload reassembler saw missing (a dropped payload event).
    pub payload_gaps: u64,
    pub alerts: u64,
    pub processes: usize,
    pub streams: usize,
    pub cpu_seconds: f64,
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
    /// Per-hook in-kernel cost, when BPF run-time statistics are on (`--bpf-stats`):
    /// program -> runs and nanoseconds spent.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bpf: BTreeMap<&'static str, BpfCost>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct BpfCost {
    pub runs: u64,
    pub run_ns: u64,
    pub ns_per_run: u64,
}

/// `{"kind":"exec"|"exit"|"connect",…}`: raw activity, written with `--events`.
#[derive(Debug, Clone, Serialize)]
pub struct ActivityRecord<'a> {
    pub kind: &'static str,
    pub ts: String,
    pub pid: u32,
    pub ppid: Option<u32>,
    pub uid: Option<u32>,
    pub comm: Option<&'a str>,
    pub exe: Option<&'a str>,
    pub argv: Option<&'a [String]>,
    pub cgroup: Option<&'a str>,
    pub job: Option<u64>,
    pub fd: Option<i32>,
    pub peer: Option<SocketAddr>,
    pub transport: Option<&'static str>,
    /// connect(): 0 or a negative errno.
    pub ret: Option<i32>,
}

impl ActivityRecord<'_> {
    pub fn new(kind: &'static str, ts: String, pid: u32) -> Self {
        ActivityRecord {
            kind,
            ts,
            pid,
            ppid: None,
            uid: None,
            comm: None,
            exe: None,
            argv: None,
            cgroup: None,
            job: None,
            fd: None,
            peer: None,
            transport: None,
            ret: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StopRecord {
    pub kind: &'static str,
    pub ts: String,
    pub node: String,
    pub reason: String,
}

/// Where records go. Write errors on the JSON-lines sink are returned: losing promised
/// output must not be silent.
pub struct Outputs {
    jsonl: Option<Box<dyn Write + Send>>,
    terminal: Option<Box<dyn Write + Send>>,
    min_severity: Severity,
}

impl Outputs {
    pub fn open(
        jsonl: Option<&JsonlTarget>,
        terminal: bool,
        min_severity: Severity,
    ) -> io::Result<Self> {
        let (jsonl, term_to_stderr): (Option<Box<dyn Write + Send>>, bool) = match jsonl {
            None => (None, false),
            Some(JsonlTarget::Stdout) => (Some(Box::new(BufWriter::new(io::stdout()))), true),
            Some(JsonlTarget::File(p)) => (Some(Box::new(BufWriter::new(open_append(p)?))), false),
        };
        let terminal: Option<Box<dyn Write + Send>> = match (terminal, term_to_stderr) {
            (false, _) => None,
            (true, true) => Some(Box::new(io::stderr())),
            (true, false) => Some(Box::new(io::stdout())),
        };
        Ok(Self {
            jsonl,
            terminal,
            min_severity,
        })
    }

    fn json<T: Serialize>(&mut self, rec: &T) -> io::Result<()> {
        if let Some(w) = self.jsonl.as_mut() {
            serde_json::to_writer(&mut *w, rec)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    pub fn ready(&mut self, r: &ReadyRecord) -> io::Result<()> {
        self.json(r)?;
        if let Some(t) = self.terminal.as_mut() {
            writeln!(
                t,
                "minerwatch {} watching {} ({} hooks attached, {} processes known, {} connections watched)",
                r.version,
                r.node,
                r.hooks_attached.len(),
                r.processes_known,
                r.connections_watched
            )?;
            for m in &r.hooks_missing {
                let what = if m.optional {
                    "not available (optional)"
                } else {
                    "MISSING"
                };
                writeln!(
                    t,
                    "  hook {} {what}: {} ({})\n    lost: {}",
                    m.hook, m.error, m.attach_point, m.lost
                )?;
            }
        }
        self.flush()
    }

    pub fn alert(&mut self, a: &AlertRecord) -> io::Result<()> {
        if a.severity < self.min_severity {
            return Ok(());
        }
        self.json(a)?;
        if let Some(t) = self.terminal.as_mut() {
            t.write_all(format_alert(a).as_bytes())?;
        }
        Ok(())
    }

    pub fn activity(&mut self, a: &ActivityRecord<'_>) -> io::Result<()> {
        self.json(a)
    }

    pub fn stats(&mut self, s: &StatsRecord) -> io::Result<()> {
        self.json(s)
    }

    pub fn stop(&mut self, s: &StopRecord) -> io::Result<()> {
        self.json(s)?;
        self.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(w) = self.jsonl.as_mut() {
            w.flush()?;
        }
        if let Some(t) = self.terminal.as_mut() {
            t.flush()?;
        }
        Ok(())
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

/// A person's view of an alert: who, what, why, evidence.
pub fn format_alert(a: &AlertRecord) -> String {
    let sev = a.severity.as_str().to_uppercase();
    let what = if a.update == 0 {
        "ALERT"
    } else {
        "ALERT UPDATE"
    };
    let user = a.user.clone().unwrap_or_else(|| format!("uid {}", a.uid));
    let job = a
        .job
        .map_or("no Slurm job".to_string(), |j| format!("Slurm job {j}"));
    let mut s = format!(
        "{} {what} [{sev}] pid {} ({}) user {}, {job} on {}\n",
        a.ts,
        a.pid,
        printable(&a.comm),
        printable(&user),
        printable(&a.node)
    );
    s += &format!(
        "    exe   {}\n",
        if a.exe.is_empty() {
            "?".to_string()
        } else {
            printable(&a.exe)
        }
    );
    if !a.argv.is_empty() {
        s += &format!("    argv  {}\n", argv_text(&a.argv));
    }
    if !a.parents.is_empty() {
        let chain = parent_chain(a.parents.iter().map(|p| (p.comm.as_str(), p.pid)));
        s += &format!("    from  {chain}\n");
    }
    if !a.cgroup.is_empty() {
        s += &format!("    cgroup {}\n", printable(&a.cgroup));
    }
    for r in &a.reasons {
        s += &format!("    why   {}: {}\n", r.code, printable(&r.detail));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> AlertRecord {
        AlertRecord {
            kind: "alert",
            ts: "2026-11-24T14:15:50.095Z".into(),
            node: "n1".into(),
            id: "7-1".into(),
            update: 0,
            pid: 7,
            ppid: 1,
            severity: Severity::High,
            score: 60,
            reasons: vec![Reason {
                code: "stratum_protocol",
                detail: "Stratum `login`".into(),
                weight: 60,
            }],
            comm: "x\u{1b}]0;pwned\u{7}".into(),
            exe: "/tmp/a".into(),
            argv: vec!["a".into(), "b\nALERT [LOW] fake line".into()],
            uid: 1000,
            user: Some("alice".into()),
            cgroup: "/slurm/job_4".into(),
            job: Some(4),
            connection: None,
            parents: vec![ParentInfo {
                pid: 1,
                comm: "init".into(),
                exe: "/sbin/init".into(),
            }],
            first_seen: "2026-11-24T14:15:50.095Z".into(),
            preexisting: false,
            at: SystemTime::UNIX_EPOCH,
            first_seen_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn terminal_text_is_readable_and_safe() {
        let t = format_alert(&alert());
        assert!(t.starts_with("2026-11-24T14:15:50.095Z ALERT [HIGH] pid 7 (x\\x1b]0;pwned\\x07) user alice, Slurm job 4 on n1\n"), "{t}");
        assert!(t.contains("argv  a b\\x0aALERT [LOW] fake line\n"), "{t}");
        assert!(t.contains("why   stratum_protocol: Stratum `login`"), "{t}");
        assert!(!t.contains('\u{1b}') && t.lines().count() == 6, "{t}");
    }

    #[test]
    fn alert_json_has_the_contract_fields() {
        let v = serde_json::to_value(alert()).unwrap();
        assert_eq!(v["kind"], "alert");
        assert_eq!(v["severity"], "high");
        assert_eq!(v["pid"], 7);
        assert_eq!(
            v["reasons"][0],
            serde_json::json!({"code": "stratum_protocol", "detail": "Stratum `login`"})
        );
        assert_eq!(v["job"], 4);
    }
}
