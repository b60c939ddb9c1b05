//! The minerwatch gRPC API, package `minerwatch.v1`: the types and services generated from
//! `proto/minerwatch/v1/*.proto`, and what both ends of a connection share: TLS files,
//! the unix-socket transport, and how an event reads as JSON or as a line of text.
pub mod render;
pub mod transport;

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("minerwatch.v1");
}

use v1::{EventKind, Severity, event::Body};

/// The wire name of an event's kind: the same word the JSON-lines records use.
pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Unspecified => "unspecified",
        EventKind::Exec => "exec",
        EventKind::Exit => "exit",
        EventKind::Connect => "connect",
        EventKind::Stratum => "stratum",
        EventKind::Saturation => "saturation",
        EventKind::Alert => "alert",
        EventKind::Loss => "loss",
        EventKind::Status => "status",
        EventKind::Heartbeat => "heartbeat",
        EventKind::Finding => "finding",
        EventKind::Job => "job",
    }
}

/// `exec`, `alert`, ... (as [`kind_name`] writes them).
pub fn parse_kind(s: &str) -> Option<EventKind> {
    ALL_KINDS.iter().copied().find(|k| kind_name(*k) == s)
}

pub const ALL_KINDS: [EventKind; 11] = [
    EventKind::Exec,
    EventKind::Exit,
    EventKind::Connect,
    EventKind::Stratum,
    EventKind::Saturation,
    EventKind::Alert,
    EventKind::Loss,
    EventKind::Status,
    EventKind::Heartbeat,
    EventKind::Finding,
    EventKind::Job,
];

fn body_kind(body: Option<&Body>) -> EventKind {
    match body {
        None => EventKind::Unspecified,
        Some(Body::Exec(_)) => EventKind::Exec,
        Some(Body::Exit(_)) => EventKind::Exit,
        Some(Body::Connect(_)) => EventKind::Connect,
        Some(Body::Stratum(_)) => EventKind::Stratum,
        Some(Body::Saturation(_)) => EventKind::Saturation,
        Some(Body::Alert(_)) => EventKind::Alert,
        Some(Body::Loss(_)) => EventKind::Loss,
        Some(Body::Status(_)) => EventKind::Status,
        Some(Body::Heartbeat(_)) => EventKind::Heartbeat,
        Some(Body::Finding(_)) => EventKind::Finding,
        Some(Body::Job(_)) => EventKind::Job,
    }
}

impl v1::Event {
    pub fn kind(&self) -> EventKind {
        body_kind(self.body.as_ref())
    }

    /// The process the event is about, where it names one with its context.
    pub fn process(&self) -> Option<&v1::Process> {
        match self.body.as_ref()? {
            Body::Exec(e) => e.process.as_ref(),
            Body::Alert(a) => a.process.as_ref(),
            _ => None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        Some(match self.body.as_ref()? {
            Body::Exec(e) => e.process.as_ref()?.pid,
            Body::Exit(e) => e.pid,
            Body::Connect(c) => c.pid,
            Body::Stratum(s) => s.pid,
            Body::Saturation(s) => s.pid,
            Body::Finding(f) => f.pid,
            Body::Alert(a) => a.process.as_ref()?.pid,
            _ => return None,
        })
    }

    pub fn severity(&self) -> Option<Severity> {
        match self.body.as_ref()? {
            Body::Alert(a) => Some(a.severity()),
            _ => None,
        }
    }
}

/// `info`, `low`, ... as people and the JSON-lines contract write severities.
pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Unspecified => "unspecified",
        Severity::Info => "info",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

pub fn parse_severity(s: &str) -> Option<Severity> {
    [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ]
    .into_iter()
    .find(|v| severity_name(*v) == s)
}
