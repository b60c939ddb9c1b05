//! `cargo xtask bench delivery`: how fast one sensor's events reach the collector over
//! loopback, and how long an alert takes from the kernel event to the collector's database.
//!
//! Throughput is measured twice: draining a backlog (the collector starts after the sensor
//! has spooled N events: the pipeline's own capacity, spool to SQLite), and live (the
//! collector is up while the events are made). Latency is the collector's receive time
//! minus the alert's own time (the kernel timestamp of its last evidence), one machine and
//! one clock.
use std::{
    io::BufRead,
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::step;

pub struct Delivery {
    pub backlog_events: u64,
    pub backlog_secs: f64,
    pub live_events: u64,
    pub live_secs: f64,
    /// Collector receive time minus alert time, ms, sorted.
    pub latency_ms: Vec<f64>,
    pub duplicates: u64,
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn collector(bin: &Path, listen: &str, db: &Path) -> Result<(Guard, String)> {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", listen, "--db"])
        .arg(db)
        .env("MINERWATCH_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("start minerwatch-collector")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line
        .split_whitespace()
        .nth(3)
        .with_context(|| format!("collector did not start: {line:?}"))?
        .to_string();
    Ok((Guard(child), addr))
}

fn sensor(bin: &Path, dir: &Path, url: &str) -> Result<(Guard, PathBuf)> {
    let socket = dir.join("mw.sock");
    let jsonl = dir.join("sensor.jsonl");
    let child = Command::new(bin)
        .args([
            "run",
            "--no-terminal",
            "--stats-interval",
            "0",
            "--collector",
            url,
            // Throughput is measured on everything the sensor sees, not only findings.
            "--push-activity",
        ])
        .arg("--spool-dir")
        .arg(dir.join("spool"))
        .arg("--socket")
        .arg(&socket)
        .arg("--jsonl")
        .arg(&jsonl)
        .stdin(Stdio::null())
        .spawn()
        .context("start minerwatch")?;
    let g = Guard(child);
    let end = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&jsonl)
        .unwrap_or_default()
        .contains("\"kind\":\"ready\"")
    {
        if Instant::now() > end {
            bail!("sensor not ready after 30 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok((g, socket))
}

fn status(bin: &Path, socket: &Path) -> Result<Value> {
    let out = Command::new(bin)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()?;
    if !out.status.success() {
        bail!("status: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// (last sequence number, acknowledged) from the sensor.
fn seqs(bin: &Path, socket: &Path) -> Result<(u64, u64)> {
    let st = status(bin, socket)?;
    Ok((
        st["last_seq"].as_u64().unwrap_or(0),
        st["collectors"][0]["acked_seq"].as_u64().unwrap_or(0),
    ))
}

/// Waits until the collector has acknowledged `target`. Returns the events and seconds from
/// the first acknowledgement past `from` to the one reaching `target`, so connection set-up
/// and reconnect backoff are not counted as delivery time.
fn rate_to(bin: &Path, socket: &Path, from: u64, target: u64) -> Result<(u64, f64)> {
    let end = Instant::now() + Duration::from_secs(600);
    let mut start: Option<(Instant, u64)> = None;
    loop {
        let (_, acked) = seqs(bin, socket)?;
        let now = Instant::now();
        if acked > from && start.is_none() {
            start = Some((now, acked));
        }
        if acked >= target {
            let (t0, a0) = start.unwrap_or((now, acked));
            let secs = (now - t0).as_secs_f64().max(1e-3);
            return Ok((acked - a0, secs));
        }
        if now > end {
            bail!("collector acknowledged {acked} of {target} within 600 s");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the collector has acknowledged everything numbered so far.
fn wait_acked(bin: &Path, socket: &Path) -> Result<()> {
    let (target, _) = seqs(bin, socket)?;
    rate_to(bin, socket, 0, target).map(|_| ())
}

/// `n` UDP connect() calls as fast as two threads go: n connect events.
fn connects(n: u64) -> Result<()> {
    let handles: Vec<_> = (0..2u16)
        .map(|w| {
            thread::spawn(move || -> Result<()> {
                let sock = UdpSocket::bind("127.0.0.1:0")?;
                for _ in 0..n / 2 {
                    sock.connect(("127.0.0.1", 9 + w))?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    Ok(())
}

pub fn run(root: &Path, events: u64, latency_runs: usize) -> Result<Delivery> {
    let sensor_bin = root.join("target/release/minerwatch");
    let collector_bin = root.join("target/release/minerwatch-collector");
    let client = root.join("target/release/mw-client");
    let dir = root.join("results/delivery");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    // Backlog: the collector is down while the sensor spools `events` events.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    step(&format!(
        "delivery: {events} connect events spooled with the collector down"
    ));
    let (s, socket) = sensor(&sensor_bin, &dir, &url)?;
    let (_, acked0) = seqs(&sensor_bin, &socket)?;
    connects(events)?;
    // Let the sensor take everything from the ring into the spool: settled when only our
    // own polling (a few events per poll) still adds to it.
    let mut prev = 0;
    loop {
        thread::sleep(Duration::from_millis(300));
        let (last, _) = seqs(&sensor_bin, &socket)?;
        if last <= prev + 20 {
            break;
        }
        prev = last;
    }
    step(&format!(
        "delivery: collector up, draining {} events",
        prev - acked0
    ));
    let (c, _) = collector(
        &collector_bin,
        &format!("127.0.0.1:{port}"),
        &dir.join("c.db"),
    )?;
    let (backlog, backlog_secs) = rate_to(&sensor_bin, &socket, acked0, prev)?;

    // Live: the same again with the collector up, timed from the first event made to the
    // acknowledgement of the last connect event.
    step(&format!(
        "delivery: {events} connect events with the collector up"
    ));
    wait_acked(&sensor_bin, &socket)?;
    let (last0, _) = seqs(&sensor_bin, &socket)?;
    let t0 = Instant::now();
    connects(events)?;
    rate_to(&sensor_bin, &socket, u64::MAX, last0 + events)?;
    let live_secs = t0.elapsed().as_secs_f64();
    let live_events = events;

    // Latency: alerts from Stratum logins, each from a new process.
    step(&format!("delivery: {latency_runs} alerts to the collector"));
    let pool_addr = crate::bench::stand_in_pool()?;
    for _ in 0..latency_runs {
        Command::new(&client)
            .args(["stratum", &pool_addr, "write"])
            .stdout(Stdio::null())
            .status()?;
        // One at a time, as alerts come in practice.
        thread::sleep(Duration::from_millis(20));
    }
    wait_acked(&sensor_bin, &socket)?;
    let out = Command::new(&collector_bin)
        .args(["alerts", "--json", "--limit", "100000", "--db"])
        .arg(dir.join("c.db"))
        .output()?;
    let mut latency_ms: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|a| {
            a["reasons"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["code"] == "stratum_protocol"))
        })
        .filter_map(|a| {
            let t = a["time_unix_nano"].as_i64()?;
            let r = a["received_unix_nano"].as_i64()?;
            Some((r - t) as f64 / 1e6)
        })
        .collect();
    latency_ms.sort_by(f64::total_cmp);
    if latency_ms.len() < latency_runs {
        bail!(
            "only {} of {latency_runs} alerts reached the collector",
            latency_ms.len()
        );
    }
    let nodes = Command::new(&collector_bin)
        .args(["nodes", "--json", "--db"])
        .arg(dir.join("c.db"))
        .output()?;
    let duplicates = serde_json::from_slice::<Value>(&nodes.stdout)
        .ok()
        .and_then(|n| n["duplicates"].as_u64())
        .unwrap_or(0);
    drop(s);
    drop(c);
    Ok(Delivery {
        backlog_events: backlog,
        backlog_secs,
        live_events,
        live_secs,
        latency_ms,
        duplicates,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// The Markdown section for results/bench.md.
pub fn report(d: &Delivery) -> String {
    let backlog_rate = d.backlog_events as f64 / d.backlog_secs;
    let live_rate = d.live_events as f64 / d.live_secs;
    format!(
        "**Delivery to the collector** (one sensor, loopback, batches of up to 2,000 events, SQLite on this disk)\n\n\
         | measure | value | target |\n|---|---|---|\n\
         | backlog drained from the spool | {} events in {:.2} s: **{:.0} events/s** | ≥ 50,000/s |\n\
         | live (collector up while events are made) | {} events in {:.2} s: {:.0} events/s | |\n\
         | alert, kernel event to collector database ({} alerts) | p50 **{:.1} ms**, p99 **{:.1} ms**, max {:.1} ms | p99 < 1 s |\n\
         | duplicates dropped by the collector | {} | |\n",
        d.backlog_events,
        d.backlog_secs,
        backlog_rate,
        d.live_events,
        d.live_secs,
        live_rate,
        d.latency_ms.len(),
        percentile(&d.latency_ms, 0.5),
        percentile(&d.latency_ms, 0.99),
        d.latency_ms.last().copied().unwrap_or(0.0),
        d.duplicates
    )
}
