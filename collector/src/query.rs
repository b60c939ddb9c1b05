//! `alerts`, `events` and `nodes`: what the database holds, as a table for people or JSON
//! lines for scripts.
use std::{
    io::Write,
    time::{Duration, SystemTime},
};

use minerwatch_proto::{
    parse_kind, parse_severity, render,
    v1::{Event, event::Body},
};
use prost::Message;
use rusqlite::{Connection, types::Value};

use crate::{sinks::alert_json, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("bad {what} `{value}`: {reason}")]
    Arg {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

#[derive(Debug, Default)]
pub struct Filter {
    pub since: Option<String>,
    pub node: Option<String>,
    pub min_severity: Option<String>,
    pub user: Option<String>,
    pub job: Option<u64>,
    pub account: Option<String>,
    pub partition: Option<String>,
    pub kind: Option<String>,
    pub limit: u32,
    pub json: bool,
}

/// `1h`, `30m`, `2d` ago, or an RFC 3339 time.
pub fn parse_since(s: &str) -> Result<i64, QueryError> {
    let t = match humantime::parse_duration(s) {
        Ok(d) => SystemTime::now()
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|_| QueryError::Arg {
            what: "--since",
            value: s.to_string(),
            reason: "use a duration like 1h or 2d, or a time like 2026-11-24T10:00:00Z",
        })?,
    };
    Ok(t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64))
}

struct Sql {
    clauses: Vec<String>,
    params: Vec<Value>,
}

impl Sql {
    fn new(f: &Filter, table: &str) -> Result<Self, QueryError> {
        let mut s = Sql {
            clauses: Vec::new(),
            params: Vec::new(),
        };
        if let Some(since) = &f.since {
            s.add(
                &format!("{table}.time >= ?"),
                Value::Integer(parse_since(since)?),
            );
        }
        if let Some(n) = &f.node {
            s.add("nodes.host = ?", Value::Text(n.clone()));
        }
        if let Some(u) = &f.user {
            s.add(&format!("{table}.user = ?"), Value::Text(u.clone()));
        }
        if let Some(j) = f.job {
            s.add(&format!("{table}.job = ?"), Value::Integer(j as i64));
        }
        if let Some(a) = &f.account {
            s.add(&format!("{table}.account = ?"), Value::Text(a.clone()));
        }
        if let Some(p) = &f.partition {
            s.add(&format!("{table}.partition = ?"), Value::Text(p.clone()));
        }
        if let Some(sev) = &f.min_severity {
            let v = parse_severity(sev).ok_or_else(|| QueryError::Arg {
                what: "--min-severity",
                value: sev.clone(),
                reason: "use info, low, medium, high or critical",
            })?;
            if table != "alerts" {
                return Err(QueryError::Arg {
                    what: "--min-severity",
                    value: sev.clone(),
                    reason: "only alerts have a severity: use `minerwatch-collector alerts`",
                });
            }
            s.add("alerts.severity >= ?", Value::Integer(v as i64));
        }
        if let Some(k) = &f.kind {
            let kind = parse_kind(k).ok_or_else(|| QueryError::Arg {
                what: "--kind",
                value: k.clone(),
                reason: "use exec, exit, connect, stratum, saturation, alert, loss, status or heartbeat",
            })?;
            s.add(
                "events.kind = ?",
                Value::Text(minerwatch_proto::kind_name(kind).into()),
            );
        }
        Ok(s)
    }

    fn add(&mut self, clause: &str, v: Value) {
        self.clauses.push(clause.to_string());
        self.params.push(v);
    }

    fn where_clause(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }
}

fn rows(conn: &Connection, sql: &str, params: Vec<Value>) -> Result<Vec<(Event, i64)>, QueryError> {
    let mut q = conn.prepare(sql)?;
    let it = q.query_map(rusqlite::params_from_iter(params), |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut out = Vec::new();
    for row in it {
        let (body, received) = row?;
        if let Ok(ev) = Event::decode(&body[..]) {
            out.push((ev, received));
        }
    }
    // Queried newest first for the limit; shown oldest first.
    out.reverse();
    Ok(out)
}

fn cut(s: &str, n: usize) -> String {
    let p = render::printable(s);
    if p.chars().count() <= n {
        p
    } else {
        p.chars().take(n - 1).collect::<String>() + "…"
    }
}

/// The most recent `f.limit` rows of `table` (`alerts` or `events`) that pass `f`, oldest first.
fn select(conn: &Connection, f: &Filter, table: &str) -> Result<Vec<(Event, i64)>, QueryError> {
    let s = Sql::new(f, table)?;
    let sql = format!(
        "SELECT {table}.body, {table}.received FROM {table} JOIN nodes ON nodes.id = {table}.node_id
         {} ORDER BY {table}.time DESC, {table}.id DESC LIMIT {}",
        s.where_clause(),
        f.limit
    );
    rows(conn, &sql, s.params)
}

pub fn alerts(conn: &Connection, f: &Filter, out: &mut impl Write) -> Result<(), QueryError> {
    let list = select(conn, f, "alerts")?;
    if f.json {
        for (ev, received) in &list {
            writeln!(out, "{}", alert_json(ev, *received))?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:<16} {:<8} {:>7} {:<10} {:>7} {:<28} REASONS",
        "TIME", "NODE", "SEVERITY", "PID", "USER", "JOB", "EXE"
    )?;
    for (ev, _) in &list {
        let Some(Body::Alert(a)) = &ev.body else {
            continue;
        };
        let p = a.process.clone().unwrap_or_default();
        let codes: Vec<&str> = a.reasons.iter().map(|r| r.code.as_str()).collect();
        writeln!(
            out,
            "{:<24} {:<16} {:<8} {:>7} {:<10} {:>7} {:<28} {}",
            render::rfc3339(ev.time_unix_nano),
            cut(&ev.node.clone().unwrap_or_default().host, 16),
            minerwatch_proto::severity_name(a.severity()),
            if p.pid == 0 {
                "-".into()
            } else {
                p.pid.to_string()
            },
            cut(if p.user.is_empty() { "-" } else { &p.user }, 10),
            p.slurm_job.map_or("-".into(), |j| j.to_string()),
            cut(if p.exe.is_empty() { "-" } else { &p.exe }, 28),
            codes.join(",")
        )?;
    }
    Ok(())
}

pub fn events(conn: &Connection, f: &Filter, out: &mut impl Write) -> Result<(), QueryError> {
    for (ev, received) in select(conn, f, "events")? {
        if f.json {
            writeln!(out, "{}", alert_json(&ev, received))?;
        } else {
            write!(out, "{}", render::to_text(&ev))?;
        }
    }
    Ok(())
}

pub fn nodes(
    conn: &Connection,
    json: bool,
    silent_after: Duration,
    out: &mut impl Write,
) -> Result<(), QueryError> {
    let mut q = conn.prepare(
        "SELECT host, boot_id, sensor_version, peer, last_seen, last_seq, last_kind, events, duplicates, silent
         FROM nodes ORDER BY host",
    )?;
    let now = crate::store::now_ns();
    let list = q.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, i64>(7)?,
            r.get::<_, i64>(8)?,
            r.get::<_, i64>(9)?,
        ))
    })?;
    if !json {
        writeln!(
            out,
            "{:<20} {:<8} {:<8} {:>10} {:>20} {:>10} {:>10}  STATE",
            "NODE", "BOOT", "VERSION", "LAST SEEN", "LAST SEQ", "EVENTS", "DUPLICATES"
        )?;
    }
    for row in list {
        let (host, boot, version, peer, last_seen, last_seq, last_kind, events, dups, silent) =
            row?;
        let ago = Duration::from_nanos((now - last_seen).max(0) as u64).as_secs();
        let state = match (silent != 0, last_kind.strip_prefix("stop:")) {
            (true, Some(_)) => "SILENT (stopped)".to_string(),
            (true, None) => "SILENT".to_string(),
            (false, Some(r)) => format!("stopped ({r})"),
            (false, None) if ago > silent_after.as_secs() => "quiet".to_string(),
            (false, None) => "reporting".to_string(),
        };
        if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "node": host, "boot_id": boot, "sensor_version": version, "peer": peer,
                    "last_seen": render::rfc3339(last_seen), "last_seen_s_ago": ago,
                    "last_seq": last_seq, "events": events, "duplicates": dups, "state": state,
                })
            )?;
        } else {
            writeln!(
                out,
                "{:<20} {:<8} {:<8} {:>9}s {:>20} {:>10} {:>10}  {state}",
                cut(&host, 20),
                cut(&boot, 8),
                cut(&version, 8),
                ago,
                last_seq,
                events,
                dups
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_query_arguments_are_named() {
        let f = |build: fn(&mut Filter)| {
            let mut f = Filter::default();
            build(&mut f);
            f
        };
        for (filter, table, what) in [
            (
                f(|f| f.since = Some("yesterday".into())),
                "alerts",
                "--since",
            ),
            (
                f(|f| f.min_severity = Some("severe".into())),
                "alerts",
                "--min-severity",
            ),
            (
                f(|f| f.min_severity = Some("high".into())),
                "events",
                "--min-severity",
            ),
            (f(|f| f.kind = Some("execve".into())), "events", "--kind"),
        ] {
            match Sql::new(&filter, table) {
                Err(QueryError::Arg { what: w, .. }) => assert_eq!(w, what),
                Err(e) => panic!("{what}: {e}"),
                Ok(_) => panic!("{what} accepted"),
            }
        }
        assert!(Sql::new(&f(|f| f.since = Some("2h".into())), "events").is_ok());
    }
}
