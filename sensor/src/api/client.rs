//! `minerwatch events` and `minerwatch status`: clients of the local sensor's API, for people
//! (text) and scripts (`--json`, one object per line).
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use minerwatch_proto::{
    parse_kind, parse_severity, render,
    transport::unix_channel,
    v1::{
        EventFilter, EventKind, GetEventsRequest, GetStatusRequest, Severity,
        sensor_service_client::SensorServiceClient,
    },
};
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no sensor is serving on {path}: is `minerwatch run` running? (--socket names another socket)"
    )]
    NoSensor { path: PathBuf },
    #[error("not allowed to use {path}: the socket is root's (run as root)")]
    Denied { path: PathBuf },
    #[error("bad {what} `{value}`: {reason}")]
    Arg {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("the sensor refused: {0}")]
    Refused(String),
    #[error("the stream from the sensor broke: {0}")]
    Broken(String),
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

/// What `minerwatch events` asks for.
#[derive(Debug, Default)]
pub struct EventsQuery {
    pub socket: PathBuf,
    pub follow: bool,
    pub backlog: Option<u32>,
    pub json: bool,
    pub kinds: Vec<String>,
    /// Every kind, exec/exit/connect/heartbeat included.
    pub all: bool,
    pub min_severity: Option<String>,
    pub pids: Vec<u32>,
    pub exe: Option<String>,
    pub users: Vec<String>,
    pub jobs: Vec<u64>,
}

/// What a person wants to see by default: findings, not every exec.
const DEFAULT_KINDS: [EventKind; 7] = [
    EventKind::Alert,
    EventKind::Job,
    EventKind::Stratum,
    EventKind::Saturation,
    EventKind::Finding,
    EventKind::Loss,
    EventKind::Status,
];

impl EventsQuery {
    fn request(&self) -> Result<GetEventsRequest, ClientError> {
        let mut kinds = Vec::new();
        for k in &self.kinds {
            let kind = parse_kind(k).ok_or_else(|| ClientError::Arg {
                what: "kind",
                value: k.clone(),
                reason:
                    "use exec, exit, connect, stratum, saturation, alert, loss, status or heartbeat"
                        .into(),
            })?;
            kinds.push(kind as i32);
        }
        if kinds.is_empty() && !self.all {
            kinds = DEFAULT_KINDS.iter().map(|k| *k as i32).collect();
        }
        let min_severity = match &self.min_severity {
            None => Severity::Unspecified,
            Some(s) => parse_severity(s).ok_or_else(|| ClientError::Arg {
                what: "severity",
                value: s.clone(),
                reason: "use info, low, medium, high or critical".into(),
            })?,
        };
        Ok(GetEventsRequest {
            allow: vec![EventFilter {
                kinds,
                min_severity: min_severity as i32,
                pids: self.pids.clone(),
                exe_regex: self.exe.clone().unwrap_or_default(),
                users: self.users.clone(),
                slurm_jobs: self.jobs.clone(),
            }],
            deny: Vec::new(),
            backlog: self.backlog.unwrap_or(if self.follow { 0 } else { 100 }),
            follow: self.follow,
        })
    }
}

fn status_error(path: &Path, s: tonic::Status) -> ClientError {
    let text = format!("{s:?}");
    match s.code() {
        Code::Unavailable | Code::Unknown if text.contains("ermission denied") => {
            ClientError::Denied {
                path: path.to_path_buf(),
            }
        }
        Code::Unavailable => ClientError::NoSensor {
            path: path.to_path_buf(),
        },
        Code::InvalidArgument | Code::ResourceExhausted => {
            ClientError::Refused(s.message().to_string())
        }
        _ => ClientError::Broken(s.message().to_string()),
    }
}

/// Prints events until the stream ends (or forever with `follow`). A closed stdout (`| head`)
/// ends it quietly.
pub async fn events(q: EventsQuery) -> Result<(), ClientError> {
    let req = q.request()?;
    let mut client = SensorServiceClient::new(unix_channel(&q.socket));
    let mut stream = client
        .get_events(req)
        .await
        .map_err(|s| status_error(&q.socket, s))?
        .into_inner();
    let mut out = std::io::stdout().lock();
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(s) => return Err(status_error(&q.socket, s)),
        };
        let Some(ev) = msg.event else { continue };
        let r = if q.json {
            writeln!(out, "{}", render::to_json(&ev))
        } else {
            write!(out, "{}", render::to_text(&ev))
        }
        .and_then(|()| out.flush());
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Prints the sensor's status: hooks, counters, collectors.
pub async fn status(socket: &Path, json: bool) -> Result<(), ClientError> {
    let mut client = SensorServiceClient::new(unix_channel(socket));
    let r = client
        .get_status(GetStatusRequest {})
        .await
        .map_err(|s| status_error(socket, s))?
        .into_inner();
    let node = r.node.unwrap_or_default();
    let s = r.status.unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if json {
        let ev = minerwatch_proto::v1::Event {
            node: Some(node),
            seq: s.last_seq,
            time_unix_nano: super::convert::unix_nano(std::time::SystemTime::now()),
            body: Some(minerwatch_proto::v1::event::Body::Status(s)),
        };
        writeln!(out, "{}", render::to_json(&ev))?;
        return Ok(());
    }
    writeln!(
        out,
        "minerwatch {} on {} (boot {}), up {} s, last event #{}",
        node.sensor_version, node.host, node.boot_id, s.uptime_seconds, s.last_seq
    )?;
    writeln!(
        out,
        "  {} processes known, {:.1} CPU seconds, {} KiB RSS",
        s.processes, s.cpu_seconds, s.rss_kb
    )?;
    writeln!(out, "  GPUs: {}", s.gpu)?;
    for h in &s.hooks {
        let state = match (h.attached, h.optional) {
            (true, _) => "attached".to_string(),
            (false, true) => format!("not available (optional): {}", h.error),
            (false, false) => format!("MISSING: {} (lost: {})", h.error, h.lost),
        };
        writeln!(out, "  hook {:<16} {state}", h.name)?;
    }
    for (k, v) in &s.counters {
        writeln!(out, "  {k:<22} {v}")?;
    }
    if s.collectors.is_empty() {
        writeln!(out, "  no collectors configured")?;
    }
    for c in &s.collectors {
        writeln!(
            out,
            "  collector {} {} acked #{} ({} behind){}",
            c.url,
            if c.connected {
                "connected"
            } else {
                "DISCONNECTED"
            },
            c.acked_seq,
            s.last_seq.saturating_sub(c.acked_seq),
            if c.last_error.is_empty() {
                String::new()
            } else {
                format!(", last error: {}", c.last_error)
            }
        )?;
    }
    Ok(())
}
