//! The one place sensor records become `minerwatch.v1` messages. Everything the sensor knows
//! arrives here as its own types (process table entries, alert records, hook statuses) and
//! leaves as proto bodies.
use std::{net::SocketAddr, time::SystemTime};

use minerwatch_proto::v1::{
    self as pb, Alert, Connect, CpuSaturation, Hook, Loss, LossSource, Process, ProcessExec,
    ProcessExit, ProcessRef, Reason, StratumObserved, event::Body,
};

use minerwatch_detect::{
    Finding, Severity,
    stratum::{Proxy, StratumCall},
};

use crate::{
    enrich::{
        proc::{self as proctable, Process as Proc},
        slurm::JobInfo,
    },
    kernel::{events::Transport, loader::HookStatus},
    pipeline::{AlertRecord, Scope},
};

pub fn unix_nano(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

pub fn severity(s: Severity) -> pb::Severity {
    match s {
        Severity::Info => pb::Severity::Info,
        Severity::Low => pb::Severity::Low,
        Severity::Medium => pb::Severity::Medium,
        Severity::High => pb::Severity::High,
        Severity::Critical => pb::Severity::Critical,
    }
}

fn process(p: &Proc, user: Option<&str>, job: Option<&JobInfo>) -> Process {
    let job = job.filter(|j| p.job.is_none_or(|id| id == j.id));
    Process {
        pid: p.pid,
        ppid: p.ppid,
        uid: p.uid,
        user: user.unwrap_or_default().to_string(),
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        argv: p.argv.clone(),
        cgroup: p.cgroup.clone(),
        slurm_job: p.job.or(job.map(|j| j.id)),
        slurm_sluid: p.sluid.clone().unwrap_or_default(),
        slurm_job_verified: job.is_some(),
        slurm_account: job.map(|j| j.account.clone()).unwrap_or_default(),
        slurm_partition: job.map(|j| j.partition.clone()).unwrap_or_default(),
        slurm_user: job.map(|j| j.user.clone()).unwrap_or_default(),
        slurm_cpus: job.map_or(0, |j| j.cpus),
        slurm_gpus: job.map_or(0, |j| j.gpus),
        container_id: proctable::container_id(&p.cgroup).unwrap_or_default(),
        preexisting: p.preexisting,
        parents: Vec::new(),
    }
}

pub fn exec(p: &Proc, user: Option<&str>, job: Option<&JobInfo>) -> Body {
    Body::Exec(ProcessExec {
        process: Some(process(p, user, job)),
    })
}

pub fn exit(pid: u32, known: Option<&Proc>) -> Body {
    Body::Exit(ProcessExit {
        pid,
        comm: known.map(|p| p.comm.clone()).unwrap_or_default(),
        exe: known.map(|p| p.exe.clone()).unwrap_or_default(),
    })
}

pub fn connect(c: &crate::kernel::events::Connect) -> Body {
    Body::Connect(Connect {
        pid: c.meta.tgid,
        peer: c.peer.to_string(),
        transport: match c.transport {
            Transport::Tcp => pb::Transport::Tcp,
            Transport::Udp => pb::Transport::Udp,
        } as i32,
        result: c.ret,
        unconnected: c.unconnected,
    })
}

pub fn stratum(pid: u32, call: &StratumCall, peer: Option<SocketAddr>) -> Body {
    Body::Stratum(StratumObserved {
        pid,
        peer: peer.map(|p| p.to_string()).unwrap_or_default(),
        method: call.method.clone(),
        dialect: call.dialect.name().to_string(),
        agent: call.agent.clone().unwrap_or_default(),
        login: call.login.clone().unwrap_or_default(),
        proxy: match &call.proxy {
            None => String::new(),
            Some(Proxy::Socks4 { target }) => format!("socks4 to {target}"),
            Some(Proxy::Socks5 { target }) => format!("socks5 to {target}"),
            Some(Proxy::HttpConnect { target }) => format!("http-connect to {target}"),
        },
        partial: call.partial,
    })
}

pub fn saturation(pid: u32, share: f64, seconds: u64, in_job: bool, ipc: Option<f64>) -> Body {
    Body::Saturation(CpuSaturation {
        pid,
        share,
        seconds,
        in_job,
        ipc,
    })
}

/// The evidence event a finding is shown with in the stream: Stratum and saturation have
/// messages of their own, every other finding is a `Finding` with its facts.
pub fn evidence(pid: u32, f: &Finding, about: Option<SocketAddr>) -> Option<Body> {
    match f {
        Finding::Stratum { call, peer } => Some(stratum(pid, call, *peer)),
        Finding::CpuSaturation {
            share,
            secs,
            in_job,
            ipc,
            ..
        } => Some(saturation(pid, *share, *secs, *in_job, *ipc)),
        other => {
            let r = other.reason();
            Some(Body::Finding(minerwatch_proto::v1::Finding {
                pid,
                code: r.code.to_string(),
                detail: r.detail,
                weight: r.weight,
                weak: r.weak,
                peer: about.map(|p| p.to_string()).unwrap_or_default(),
                facts: other
                    .facts()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }))
        }
    }
}

/// The one rendering of an alert: JSON lines, the terminal, `GetEvents` and collectors all
/// show this message.
pub fn alert(a: &AlertRecord) -> Body {
    let mut p = process(&a.process, a.user.as_deref(), a.job.as_deref());
    p.parents = a
        .parents
        .iter()
        .map(|p| ProcessRef {
            pid: p.pid,
            comm: p.comm.clone(),
            exe: p.exe.clone(),
        })
        .collect();
    Body::Alert(Alert {
        id: a.id.clone(),
        revision: a.update,
        severity: severity(a.severity) as i32,
        score: a.score,
        reasons: a
            .reasons
            .iter()
            .map(|r| Reason {
                code: r.code.to_string(),
                detail: r.detail.clone(),
                weight: r.weight,
            })
            .collect(),
        process: Some(p),
        connection: a.connection.map(|c| c.to_string()).unwrap_or_default(),
        first_seen_unix_nano: unix_nano(a.first_seen_at),
        source: "sensor".into(),
        scope: match a.scope {
            Scope::Process => "process",
            Scope::Job => "job",
        }
        .into(),
        allowed: a.allowed.clone().unwrap_or_default(),
    })
}

/// A job started or ended on this node, with what Slurm says of it.
pub fn job(c: &crate::pipeline::JobChange, info: Option<&JobInfo>) -> Body {
    Body::Job(pb::SlurmJob {
        id: c.job.id.or(info.map(|j| j.id)),
        sluid: c.job.sluid.clone().unwrap_or_default(),
        what: if c.started { "started" } else { "ended" }.into(),
        verified: info.is_some(),
        user: info.map(|j| j.user.clone()).unwrap_or_default(),
        uid: info.map_or(0, |j| j.uid),
        account: info.map(|j| j.account.clone()).unwrap_or_default(),
        partition: info.map(|j| j.partition.clone()).unwrap_or_default(),
        cpus: info.map_or(0, |j| j.cpus),
        gpus: info.map_or(0, |j| j.gpus),
        nodes: info.map_or(0, |j| j.nodes),
        start_time: info.map(|j| j.start.clone()).unwrap_or_default(),
        processes: c.processes,
    })
}

/// Why events were lost, in the sensor's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossKind {
    KernelRing,
    PayloadGap,
    Decode,
    /// The spool bound was reached before `collector` acknowledged these.
    SpoolFull {
        collector: String,
    },
    /// The spool could not write: disk full or an I/O error.
    SpoolWrite {
        error: String,
    },
}

pub fn loss(kind: &LossKind, count: u64, first_seq: u64, last_seq: u64) -> Body {
    let (source, detail) = match kind {
        LossKind::KernelRing => (
            LossSource::KernelRing,
            "the kernel ring buffer was full".to_string(),
        ),
        LossKind::PayloadGap => (
            LossSource::PayloadGap,
            "connection bytes missing before classification".to_string(),
        ),
        LossKind::Decode => (LossSource::Decode, "undecodable kernel records".to_string()),
        LossKind::SpoolFull { collector } => (
            LossSource::SpoolFull,
            format!("spool bound reached before {collector} acknowledged them"),
        ),
        LossKind::SpoolWrite { error } => (
            LossSource::SpoolFull,
            format!("spool write failed: {error}"),
        ),
    };
    Body::Loss(Loss {
        source: source as i32,
        count,
        first_seq,
        last_seq,
        detail,
    })
}

pub fn hooks(statuses: &[HookStatus]) -> Vec<Hook> {
    statuses
        .iter()
        .map(|h| Hook {
            name: h.program.to_string(),
            attached: h.attached,
            optional: h.optional,
            attach_point: h.attach_point.clone(),
            // An attached hook's error says what its simpler form lacks.
            error: h
                .error
                .clone()
                .or_else(|| h.degraded.clone())
                .unwrap_or_default(),
            lost: h.lost.to_string(),
        })
        .collect()
}
