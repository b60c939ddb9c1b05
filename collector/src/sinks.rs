//! SOC sinks: every alert the collector stores (from sensors, and its own `sensor_silent`)
//! is forwarded to a JSON-lines file and/or syslog (RFC 5424 over UDP, or TCP with
//! octet-counting framing, RFC 6587). Each sink keeps its position in the database and
//! advances it only after a successful write, so a sink that is down (or a collector
//! restart) delays alerts but loses none; a write interrupted by a crash may be repeated.
use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use minerwatch_proto::{
    render,
    v1::{Event, Severity, event::Body},
};
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::{io::AsyncWriteExt, sync::Notify};

use crate::store::{self, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Jsonl(PathBuf),
    SyslogUdp(SocketAddr),
    SyslogTcp(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("bad syslog target `{0}`: use udp://host:port or tcp://host:port with an IP address")]
    BadSyslog(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Sink {
    pub fn syslog(url: &str) -> Result<Self, SinkError> {
        let bad = || SinkError::BadSyslog(url.to_string());
        let (scheme, addr) = url.split_once("://").ok_or_else(bad)?;
        let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
        match scheme {
            "udp" => Ok(Sink::SyslogUdp(addr)),
            "tcp" => Ok(Sink::SyslogTcp(addr)),
            _ => Err(bad()),
        }
    }

    fn name(&self) -> String {
        match self {
            Sink::Jsonl(p) => format!("jsonl:{}", p.display()),
            Sink::SyslogUdp(a) => format!("syslog-udp:{a}"),
            Sink::SyslogTcp(a) => format!("syslog-tcp:{a}"),
        }
    }
}

/// The alert as the SOC gets it: the event's JSON plus when the collector received it.
pub fn alert_json(ev: &Event, received_ns: i64) -> serde_json::Value {
    let mut v = render::to_json(ev);
    if let Some(o) = v.as_object_mut() {
        o.insert("received".into(), render::rfc3339(received_ns).into());
        o.insert("received_unix_nano".into(), received_ns.into());
    }
    v
}

/// Syslog severity for an alert: critical 2, high 3 (err), medium 4 (warning), low 5
/// (notice), info 6.
fn syslog_severity(s: Severity) -> u8 {
    match s {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Info | Severity::Unspecified => 6,
    }
}

/// SD-PARAM values escape `"`, `\` and `]` (RFC 5424 §6.3.3).
fn sd_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// Header fields are printable US-ASCII without spaces, or `-`.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if f.is_empty() { "-".into() } else { f }
}

/// One RFC 5424 message: facility local0 (16), the alert's severity, the node as HOSTNAME,
/// the first reason code as MSGID, key fields as structured data, the JSON as MSG.
pub fn syslog_line(ev: &Event, received_ns: i64) -> String {
    let (sev, code, pid, id) = match &ev.body {
        Some(Body::Alert(a)) => (
            a.severity(),
            a.reasons
                .first()
                .map(|r| r.code.clone())
                .unwrap_or_default(),
            a.process.as_ref().map_or(0, |p| p.pid),
            a.id.clone(),
        ),
        _ => (Severity::Info, String::new(), 0, String::new()),
    };
    let pri = 16 * 8 + syslog_severity(sev);
    let host = ev.node.as_ref().map(|n| n.host.as_str()).unwrap_or("");
    let ts = render::rfc3339(ev.time_unix_nano);
    // 32473 is the private enterprise number reserved for documentation (RFC 5612).
    let sd = format!(
        "[minerwatch@32473 severity=\"{}\" pid=\"{pid}\" seq=\"{}\" id=\"{}\"]",
        minerwatch_proto::severity_name(sev),
        ev.seq,
        sd_escape(&id)
    );
    format!(
        "<{pri}>1 {ts} {} minerwatch - {} {sd} {}",
        header_field(host, 255),
        header_field(&code, 32),
        alert_json(ev, received_ns)
    )
}

fn cursor(conn: &Connection, name: &str) -> Result<i64, StoreError> {
    Ok(conn
        .query_row(
            "SELECT last_id FROM sink_cursors WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Alerts stored after `after`, oldest first.
fn pending(conn: &Connection, after: i64) -> Result<Vec<(i64, Event, i64)>, StoreError> {
    let mut q = conn.prepare_cached(
        "SELECT id, body, received FROM alerts WHERE id > ?1 ORDER BY id LIMIT 500",
    )?;
    let rows = q.query_map([after], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, body, received) = row?;
        match Event::decode(&body[..]) {
            Ok(ev) => out.push((id, ev, received)),
            Err(e) => tracing::warn!(id, reason = %e, "undecodable alert row skipped"),
        }
    }
    Ok(out)
}

enum Conn {
    File(std::fs::File),
    Udp(tokio::net::UdpSocket),
    Tcp(Option<tokio::net::TcpStream>),
}

async fn deliver(sink: &Sink, conn: &mut Conn, ev: &Event, received: i64) -> Result<(), SinkError> {
    match (sink, conn) {
        (_, Conn::File(f)) => {
            let mut line = alert_json(ev, received).to_string();
            line.push('\n');
            f.write_all(line.as_bytes())?;
        }
        (Sink::SyslogUdp(addr), Conn::Udp(sock)) => {
            let mut msg = syslog_line(ev, received);
            // Keep one datagram within what every receiver takes.
            if msg.len() > 8192 {
                msg.truncate(msg.floor_char_boundary(8192));
            }
            sock.send_to(msg.as_bytes(), addr).await?;
        }
        (Sink::SyslogTcp(addr), Conn::Tcp(stream)) => {
            let msg = syslog_line(ev, received);
            let framed = format!("{} {msg}", msg.len());
            if stream.is_none() {
                *stream = Some(
                    tokio::time::timeout(
                        Duration::from_secs(5),
                        tokio::net::TcpStream::connect(addr),
                    )
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??,
                );
            }
            if let Some(s) = stream.as_mut()
                && let Err(e) = s.write_all(framed.as_bytes()).await
            {
                *stream = None;
                return Err(e.into());
            }
        }
        _ => unreachable!("sink and connection are made together"),
    }
    Ok(())
}

/// Runs one sink for the collector's life.
pub async fn run(sink: Sink, db: PathBuf, wake: Arc<Notify>) {
    let name = sink.name();
    let mut conn = match open(&sink).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(sink = %name, reason = %e, "sink not started");
            return;
        }
    };
    let side = match store::open_side(&db) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(sink = %name, reason = %e, "sink not started");
            return;
        }
    };
    let mut last = cursor(&side, &name).unwrap_or(0);
    let mut failing = false;
    loop {
        let notified = wake.notified();
        // logrotate moved or removed the file: write to the new one at its path.
        if let (Sink::Jsonl(path), Conn::File(f)) = (&sink, &conn)
            && rotated(path, f)
        {
            match open_append(path) {
                Ok(f) => conn = Conn::File(f),
                Err(e) => tracing::warn!(sink = %name, reason = %e, "cannot reopen the sink"),
            }
        }
        match pending(&side, last) {
            Ok(rows) if !rows.is_empty() => {
                let mut progressed = false;
                for (id, ev, received) in rows {
                    if let Err(e) = deliver(&sink, &mut conn, &ev, received).await {
                        if !failing {
                            tracing::warn!(sink = %name, reason = %e, "sink failing; alerts wait in the database");
                        }
                        failing = true;
                        break;
                    }
                    if failing {
                        tracing::info!(sink = %name, "sink delivering again");
                        failing = false;
                    }
                    last = id;
                    progressed = true;
                }
                if let Conn::File(f) = &mut conn {
                    let _ = f.flush();
                }
                if progressed {
                    let _ = side.execute(
                        "INSERT INTO sink_cursors (name, last_id) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id",
                        params![name, last],
                    );
                    if !failing {
                        continue;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(sink = %name, reason = %e, "sink cannot read alerts"),
        }
        // Woken by new alerts; retried every second while failing or idle.
        let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
    }
}

async fn open(sink: &Sink) -> Result<Conn, SinkError> {
    Ok(match sink {
        Sink::Jsonl(p) => Conn::File(open_append(p)?),
        Sink::SyslogUdp(a) => {
            let any = if a.is_ipv4() {
                std::net::IpAddr::from([0u8; 4])
            } else {
                std::net::IpAddr::from([0u16; 8])
            };
            Conn::Udp(tokio::net::UdpSocket::bind((any, 0)).await?)
        }
        Sink::SyslogTcp(_) => Conn::Tcp(None),
    })
}

/// The file at `path` is no longer the one we hold open.
fn rotated(path: &Path, f: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), f.metadata()) {
        (Ok(a), Ok(b)) => a.ino() != b.ino() || a.dev() != b.dev(),
        (Err(_), _) => true,
        _ => false,
    }
}

pub fn open_append(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .map_err(|e| std::io::Error::new(e.kind(), format!("JSON-lines sink {}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use minerwatch_proto::v1::{Alert, Node, Process, Reason};

    #[test]
    fn syslog_lines_follow_rfc5424() {
        let ev = Event {
            node: Some(Node {
                host: "node 7".into(),
                ..Default::default()
            }),
            seq: 9,
            time_unix_nano: 1_700_000_000_000_000_000,
            body: Some(Body::Alert(Alert {
                id: "a]\"1".into(),
                severity: Severity::High as i32,
                reasons: vec![Reason {
                    code: "stratum_protocol".into(),
                    ..Default::default()
                }],
                process: Some(Process {
                    pid: 42,
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let l = syslog_line(&ev, 0);
        assert!(
            l.starts_with("<131>1 2023-11-14T22:13:20.000Z node7 minerwatch - stratum_protocol [minerwatch@32473 severity=\"high\" pid=\"42\" seq=\"9\" id=\"a\\]\\\"1\"] {"),
            "{l}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&l[l.find("] {").unwrap() + 2..]).unwrap();
        assert_eq!(json["pid"], 42);
    }

    #[test]
    fn syslog_targets_are_checked() {
        assert_eq!(
            Sink::syslog("udp://127.0.0.1:514").unwrap(),
            Sink::SyslogUdp("127.0.0.1:514".parse().unwrap())
        );
        assert!(matches!(
            Sink::syslog("tcp://[::1]:601"),
            Ok(Sink::SyslogTcp(_))
        ));
        for bad in [
            "127.0.0.1:514",
            "http://127.0.0.1:514",
            "udp://siem.example:514",
        ] {
            assert!(Sink::syslog(bad).is_err(), "{bad}");
        }
    }
}
