//! How an event reads: as a JSON object (the same field names as the sensor's JSON-lines
//! records, plus `seq` and `node`) and as text for a terminal.
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::{
    kind_name, severity_name,
    v1::{Event, LossSource, Process, SensorState, Transport, event::Body},
};

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(unix_nano: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(unix_nano.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Text from a process made safe for a terminal: control characters (escape sequences,
/// newlines) a hostile process put in its name or arguments show as `\xNN`.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out += &format!("\\x{:02x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// A command line for a person: escaped, and cut at 200 bytes.
pub fn argv_text(argv: &[String]) -> String {
    let mut text = printable(&argv.join(" "));
    if text.len() > 200 {
        text.truncate(text.floor_char_boundary(200));
        text += "…";
    }
    text
}

/// `bash(41850) <- sshd(41849) <- systemd(1)`.
pub fn parent_chain<'a>(parents: impl Iterator<Item = (&'a str, u32)>) -> String {
    parents
        .map(|(comm, pid)| format!("{}({pid})", printable(comm)))
        .collect::<Vec<_>>()
        .join(" <- ")
}

/// `Slurm job 12 (account physics, partition batch)`, or what is known of the job.
fn job_text(p: &Process) -> String {
    let id = match (p.slurm_job, p.slurm_sluid.as_str()) {
        (None, "") => return "no Slurm job".into(),
        (Some(j), _) => j.to_string(),
        (None, sluid) => printable(sluid),
    };
    if !p.slurm_job_verified {
        return format!("Slurm job {id} (not confirmed by Slurm)");
    }
    format!(
        "Slurm job {id} (account {}, partition {})",
        printable(&p.slurm_account),
        printable(&p.slurm_partition)
    )
}

fn opt_str(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::from(s)
    }
}

fn process_json(p: &Process) -> Value {
    json!({
        "pid": p.pid,
        "ppid": p.ppid,
        "uid": p.uid,
        "user": opt_str(&p.user),
        "comm": p.comm,
        "exe": p.exe,
        "argv": p.argv,
        "cgroup": p.cgroup,
        "job": p.slurm_job,
        "sluid": opt_str(&p.slurm_sluid),
        "job_verified": p.slurm_job_verified,
        "account": opt_str(&p.slurm_account),
        "partition": opt_str(&p.slurm_partition),
        "container": opt_str(&p.container_id),
        "preexisting": p.preexisting,
        "parents": p.parents.iter().map(|a| json!({"pid": a.pid, "comm": a.comm, "exe": a.exe})).collect::<Vec<_>>(),
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

pub fn loss_source_name(s: LossSource) -> &'static str {
    match s {
        LossSource::Unspecified => "unspecified",
        LossSource::KernelRing => "kernel_ring",
        LossSource::ClientQueue => "client_queue",
        LossSource::SpoolFull => "spool_full",
        LossSource::PayloadGap => "payload_gap",
        LossSource::Decode => "decode",
    }
}

fn state_name(s: SensorState) -> &'static str {
    match s {
        SensorState::Unspecified => "unspecified",
        SensorState::Ready => "ready",
        SensorState::Running => "running",
        SensorState::Stopping => "stopping",
    }
}

/// One JSON object per event: `kind`, `seq`, `ts`, `node`, then the body's fields.
pub fn to_json(ev: &Event) -> Value {
    let node = ev.node.clone().unwrap_or_default();
    let head = json!({
        "kind": kind_name(ev.kind()),
        "seq": ev.seq,
        "ts": rfc3339(ev.time_unix_nano),
        "time_unix_nano": ev.time_unix_nano,
        "node": node.host,
        "boot_id": node.boot_id,
        "sensor_version": node.sensor_version,
    });
    let body = match ev.body.as_ref() {
        None => json!({}),
        Some(Body::Exec(e)) => e.process.as_ref().map_or_else(|| json!({}), process_json),
        Some(Body::Exit(e)) => json!({"pid": e.pid, "comm": e.comm, "exe": e.exe}),
        Some(Body::Connect(c)) => json!({
            "pid": c.pid,
            "peer": c.peer,
            "transport": match c.transport() {
                Transport::Tcp => "tcp",
                Transport::Udp => "udp",
                _ => "other",
            },
            "ret": c.result,
            "unconnected": c.unconnected,
        }),
        Some(Body::Stratum(s)) => json!({
            "pid": s.pid,
            "peer": opt_str(&s.peer),
            "method": s.method,
            "dialect": s.dialect,
            "agent": opt_str(&s.agent),
            "login": opt_str(&s.login),
            "proxy": opt_str(&s.proxy),
            "partial": s.partial,
        }),
        Some(Body::Saturation(s)) => json!({
            "pid": s.pid,
            "share": s.share,
            "seconds": s.seconds,
            "in_job": s.in_job,
            "ipc": s.ipc,
        }),
        Some(Body::Alert(a)) => merge(
            a.process.as_ref().map_or_else(|| json!({}), process_json),
            json!({
                "id": a.id,
                "update": a.revision,
                "severity": severity_name(a.severity()),
                "score": a.score,
                "reasons": a.reasons.iter().map(|r| json!({"code": r.code, "detail": r.detail})).collect::<Vec<_>>(),
                "connection": opt_str(&a.connection),
                "first_seen": rfc3339(a.first_seen_unix_nano),
                "source": a.source,
                "scope": opt_str(&a.scope),
                "allowed": opt_str(&a.allowed),
            }),
        ),
        Some(Body::Loss(l)) => json!({
            "source": loss_source_name(l.source()),
            "count": l.count,
            "first_seq": l.first_seq,
            "last_seq": l.last_seq,
            "detail": l.detail,
        }),
        Some(Body::Status(s)) => json!({
            "state": state_name(s.state()),
            "uptime_s": s.uptime_seconds,
            "last_seq": s.last_seq,
            "hooks_attached": s.hooks.iter().filter(|h| h.attached).map(|h| h.name.as_str()).collect::<Vec<_>>(),
            "hooks_missing": s.hooks.iter().filter(|h| !h.attached).map(|h| json!({"hook": h.name, "optional": h.optional, "error": h.error, "lost": h.lost})).collect::<Vec<_>>(),
            "counters": s.counters,
            "collectors": s.collectors.iter().map(|c| json!({"url": c.url, "connected": c.connected, "acked_seq": c.acked_seq, "last_error": opt_str(&c.last_error)})).collect::<Vec<_>>(),
            "stop_reason": opt_str(&s.stop_reason),
            "gpu": opt_str(&s.gpu),
        }),
        Some(Body::Heartbeat(h)) => json!({"interval_s": h.interval_seconds}),
        Some(Body::Job(j)) => json!({
            "job": j.id,
            "sluid": opt_str(&j.sluid),
            "what": j.what,
            "job_verified": j.verified,
            "user": opt_str(&j.user),
            "uid": j.uid,
            "account": opt_str(&j.account),
            "partition": opt_str(&j.partition),
            "cpus": j.cpus,
            "gpus": j.gpus,
            "nodes": j.nodes,
            "start_time": opt_str(&j.start_time),
            "processes": j.processes,
        }),
        Some(Body::Finding(f)) => json!({
            "pid": f.pid,
            "code": f.code,
            "detail": f.detail,
            "weight": f.weight,
            "weak": f.weak,
            "peer": opt_str(&f.peer),
            // Sorted, so a record reads the same every time.
            "facts": f.facts.iter().collect::<std::collections::BTreeMap<_, _>>(),
        }),
    };
    merge(head, body)
}

/// A person's view: one line per event, an alert with its evidence on the lines below.
pub fn to_text(ev: &Event) -> String {
    let ts = rfc3339(ev.time_unix_nano);
    let host = printable(&ev.node.as_ref().map(|n| n.host.clone()).unwrap_or_default());
    let head = format!("{ts} {host} #{}", ev.seq);
    match ev.body.as_ref() {
        None => format!("{head} (empty event)\n"),
        Some(Body::Exec(e)) => {
            let p = e.process.clone().unwrap_or_default();
            format!(
                "{head} exec    pid {} ppid {} uid {} {} {}\n",
                p.pid,
                p.ppid,
                p.uid,
                printable(&p.exe),
                printable(&p.argv.join(" "))
            )
        }
        Some(Body::Exit(e)) => format!("{head} exit    pid {} ({})\n", e.pid, printable(&e.comm)),
        Some(Body::Connect(c)) => format!(
            "{head} connect pid {} -> {} {} {}\n",
            c.pid,
            c.peer,
            match c.transport() {
                Transport::Tcp => "tcp",
                Transport::Udp if c.unconnected => "udp (unconnected)",
                Transport::Udp => "udp",
                _ => "other",
            },
            if c.result == 0 {
                "ok".to_string()
            } else {
                format!("errno {}", -c.result)
            }
        ),
        Some(Body::Stratum(s)) => format!(
            "{head} stratum pid {} -> {} `{}` ({}){}{}\n",
            s.pid,
            s.peer,
            printable(&s.method),
            s.dialect,
            if s.agent.is_empty() {
                String::new()
            } else {
                format!(" agent {}", printable(&s.agent))
            },
            if s.proxy.is_empty() {
                String::new()
            } else {
                format!(" via {}", printable(&s.proxy))
            },
        ),
        Some(Body::Saturation(s)) => format!(
            "{head} cpu     pid {} at {:.0}% of a core for {} s{}\n",
            s.pid,
            s.share * 100.0,
            s.seconds,
            if s.in_job { " (in a Slurm job)" } else { "" }
        ),
        Some(Body::Alert(a)) => {
            let p = a.process.clone().unwrap_or_default();
            let user = if p.user.is_empty() {
                format!("uid {}", p.uid)
            } else {
                p.user.clone()
            };
            let job = job_text(&p);
            let what = if a.revision == 0 {
                "ALERT"
            } else {
                "ALERT UPDATE"
            };
            let mut s = format!(
                "{head} {what} [{}] pid {} ({}) user {}, {job}\n",
                severity_name(a.severity()).to_uppercase(),
                p.pid,
                printable(&p.comm),
                printable(&user),
            );
            if !p.exe.is_empty() {
                s += &format!("    exe   {}\n", printable(&p.exe));
            }
            if !p.argv.is_empty() {
                s += &format!("    argv  {}\n", argv_text(&p.argv));
            }
            if !p.parents.is_empty() {
                let chain = parent_chain(p.parents.iter().map(|a| (a.comm.as_str(), a.pid)));
                s += &format!("    from  {chain}\n");
            }
            if !p.cgroup.is_empty() {
                s += &format!("    cgroup {}\n", printable(&p.cgroup));
            }
            if !a.connection.is_empty() {
                s += &format!("    peer  {}\n", a.connection);
            }
            for r in &a.reasons {
                s += &format!("    why   {}: {}\n", r.code, printable(&r.detail));
            }
            if !a.allowed.is_empty() {
                s += &format!("    allowed {}\n", printable(&a.allowed));
            }
            s
        }
        Some(Body::Loss(l)) => format!(
            "{head} LOSS    {} event(s), {}{}{}\n",
            l.count,
            loss_source_name(l.source()),
            if l.first_seq > 0 {
                format!(" (seq {}..={})", l.first_seq, l.last_seq)
            } else {
                String::new()
            },
            if l.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", printable(&l.detail))
            }
        ),
        Some(Body::Status(s)) => {
            let missing: Vec<&str> = s
                .hooks
                .iter()
                .filter(|h| !h.attached && !h.optional)
                .map(|h| h.name.as_str())
                .collect();
            format!(
                "{head} status  {}, up {} s, {} hooks attached{}{}\n",
                state_name(s.state()),
                s.uptime_seconds,
                s.hooks.iter().filter(|h| h.attached).count(),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(", MISSING {}", missing.join(" "))
                },
                if s.stop_reason.is_empty() {
                    String::new()
                } else {
                    format!(", stopping: {}", printable(&s.stop_reason))
                },
            )
        }
        Some(Body::Heartbeat(_)) => format!("{head} heartbeat\n"),
        Some(Body::Job(j)) => {
            let p = Process {
                slurm_job: j.id,
                slurm_sluid: j.sluid.clone(),
                slurm_job_verified: j.verified,
                slurm_account: j.account.clone(),
                slurm_partition: j.partition.clone(),
                ..Default::default()
            };
            let who = if j.user.is_empty() {
                String::new()
            } else {
                format!(
                    ", user {}, {} CPUs, {} GPUs",
                    printable(&j.user),
                    j.cpus,
                    j.gpus
                )
            };
            format!("{head} {} {}{who}\n", job_text(&p), printable(&j.what))
        }
        Some(Body::Finding(f)) => format!(
            "{head} finding pid {} {} ({}): {}\n",
            f.pid,
            printable(&f.code),
            f.weight,
            printable(&f.detail)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Alert, Node, Reason};

    fn alert() -> Event {
        Event {
            node: Some(Node {
                host: "n1".into(),
                boot_id: "b".into(),
                sensor_version: "0.1.0".into(),
            }),
            seq: 7,
            time_unix_nano: 1_700_000_000_000_000_000,
            body: Some(Body::Alert(Alert {
                id: "a1".into(),
                severity: crate::v1::Severity::High as i32,
                reasons: vec![Reason {
                    code: "stratum_protocol".into(),
                    detail: "login".into(),
                    weight: 60,
                }],
                process: Some(Process {
                    pid: 42,
                    comm: "x\x1b[2Jmr".into(),
                    argv: vec!["./x".into(), "-o\npool".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn alert_json_keeps_the_jsonl_field_names() {
        let v = to_json(&alert());
        assert_eq!(v["kind"], "alert");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["pid"], 42);
        assert_eq!(v["severity"], "high");
        assert_eq!(v["reasons"][0]["code"], "stratum_protocol");
        assert_eq!(v["node"], "n1");
    }

    #[test]
    fn alerts_name_the_job_slurm_confirmed_or_say_it_did_not() {
        let mut ev = alert();
        let v = to_json(&ev);
        for k in ["job", "account", "partition", "sluid"] {
            assert!(v[k].is_null(), "{k} is null without a job: {v}");
        }
        assert!(to_text(&ev).contains("no Slurm job"));
        if let Some(Body::Alert(a)) = ev.body.as_mut()
            && let Some(p) = a.process.as_mut()
        {
            p.slurm_job = Some(12);
            p.slurm_job_verified = true;
            p.slurm_account = "physics".into();
            p.slurm_partition = "batch".into();
        }
        let v = to_json(&ev);
        assert_eq!(
            (v["job"].as_u64(), v["account"].as_str()),
            (Some(12), Some("physics"))
        );
        assert_eq!(v["partition"], "batch");
        assert!(to_text(&ev).contains("Slurm job 12 (account physics, partition batch)"));
        if let Some(Body::Alert(a)) = ev.body.as_mut()
            && let Some(p) = a.process.as_mut()
        {
            *p = Process {
                slurm_sluid: "sEKNKTV3WPV500".into(),
                ..Default::default()
            };
        }
        assert_eq!(to_json(&ev)["sluid"], "sEKNKTV3WPV500");
        assert!(to_text(&ev).contains("Slurm job sEKNKTV3WPV500 (not confirmed by Slurm)"));
    }

    #[test]
    fn an_alert_about_no_process_keeps_its_fields() {
        let mut ev = alert();
        if let Some(Body::Alert(a)) = ev.body.as_mut() {
            a.process = None;
        }
        let v = to_json(&ev);
        assert_eq!(v["severity"], "high");
        assert_eq!(v["reasons"][0]["code"], "stratum_protocol");
    }

    #[test]
    fn text_escapes_what_a_process_controls() {
        let t = to_text(&alert());
        assert!(t.contains("[HIGH] pid 42"));
        assert!(!t.contains('\x1b'));
        assert!(t.contains("-o\\x0apool"));
        assert_eq!(t.matches('\n').count(), 3, "{t}");
    }

    #[test]
    fn a_finding_reads_as_json_with_its_facts_and_as_one_escaped_line() {
        let ev = Event {
            seq: 8,
            body: Some(Body::Finding(crate::v1::Finding {
                pid: 9,
                code: "persistence".into(),
                detail: "wrote /etc/cron.d/x\n\x1b[2J".into(),
                weight: 20,
                weak: false,
                peer: String::new(),
                facts: [("path", "/etc/cron.d/x"), ("target", "cron")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })),
            ..Default::default()
        };
        let v = to_json(&ev);
        assert_eq!(v["kind"], "finding");
        assert_eq!(v["code"], "persistence");
        assert_eq!(v["facts"]["target"], "cron");
        assert_eq!(v["peer"], serde_json::Value::Null);
        let t = to_text(&ev);
        assert!(t.contains("finding pid 9 persistence (20)"), "{t}");
        assert!(!t.contains('\x1b'));
        assert_eq!(t.matches('\n').count(), 1, "{t}");
    }
}
