//! `cargo xtask bench …`: the sensor's cost, measured in one run against a baseline.
//!
//! - `sensor`: idle CPU and RSS; CPU, RSS and drops in an exec storm paced at a target rate.
//! - `overhead`: exec, connect, small-write and CPU-bound workloads with no sensor, with
//!   minerwatch, with auditd (execve+connect rules) and with a bpftrace script printing the
//!   same events, interleaved A B C D A B C D …, medians and ratios to the baseline.
//! - `throughput`: the highest connect-event rate the sensor takes with zero loss.
//! - `latency`: from a Stratum login leaving a process to its alert record (p50, p99).
//! - `all`: everything, plus per-hook BPF cost, into `results/bench.md` and
//!   `results/overhead.svg`. `--smoke` makes it seconds long, for CI.
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{run, step};

/// Sizes of every part; `smoke()` is seconds long.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub rounds: usize,
    pub execs: u64,
    pub connects: u64,
    pub writes: u64,
    /// Files written and closed in a directory the persistence watch marks (fanotify).
    pub watched_files: u64,
    pub cpu_iters: u64,
    /// Round trips of the context-switch workload (two threads, two pipes).
    pub switches: u64,
    pub idle_secs: u64,
    pub storm_secs: u64,
    pub storm_rate: u64,
    pub rates: &'static [u64],
    pub rate_secs: f64,
    pub latency_runs: usize,
    /// Connect events for each delivery measurement (backlog and live).
    pub delivery_events: u64,
}

impl Sizes {
    pub fn full() -> Self {
        Sizes {
            rounds: 5,
            execs: 3000,
            connects: 5000,
            writes: 200_000,
            watched_files: 3000,
            cpu_iters: 400_000_000,
            switches: 200_000,
            idle_secs: 30,
            storm_secs: 10,
            storm_rate: 5000,
            rates: &[10_000, 25_000, 50_000, 100_000, 200_000],
            rate_secs: 3.0,
            latency_runs: 100,
            delivery_events: 500_000,
        }
    }

    pub fn smoke() -> Self {
        Sizes {
            rounds: 1,
            execs: 100,
            connects: 200,
            writes: 5_000,
            watched_files: 100,
            cpu_iters: 10_000_000,
            switches: 5_000,
            idle_secs: 2,
            storm_secs: 1,
            storm_rate: 1000,
            rates: &[10_000],
            rate_secs: 0.5,
            latency_runs: 5,
            delivery_events: 20_000,
        }
    }
}

// `monotonic_ns` and `usage` repeat small helpers of the sensor crate on purpose: xtask
// bootstraps the eBPF toolchain, so it must build before the sensor crate can.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU seconds (user+system) and current/peak RSS in KiB of `pid`.
fn usage(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    // Fields from 3 (state) on; parse only what we need, so the indices stay right.
    let f: Vec<u64> = after.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
    // SAFETY: no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / tick;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kb("VmRSS:"), kb("VmHWM:"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ---------------------------------------------------------------------------------------
// The sensor and the tools it is compared with

/// The sensor as a child process writing JSON lines to a file.
struct SensorProc {
    child: Child,
    jsonl: PathBuf,
}

impl SensorProc {
    fn start(bin: &Path, jsonl: &Path, extra: &[&str]) -> Result<Self> {
        let _ = std::fs::remove_file(jsonl);
        let child = Command::new(bin)
            .args(["run", "--no-terminal", "--stats-interval", "0", "--jsonl"])
            .arg(jsonl)
            .arg("--socket")
            .arg(jsonl.with_extension("sock"))
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .context("start minerwatch")?;
        let s = SensorProc {
            child,
            jsonl: jsonl.to_path_buf(),
        };
        let end = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(jsonl)
            .unwrap_or_default()
            .contains("\"kind\":\"ready\"")
        {
            if Instant::now() > end {
                bail!("sensor not ready after 30 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the sensor and returns its final `stats` record.
    fn stop(mut self) -> Result<Value> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("sensor exited with {status}");
        }
        let text = std::fs::read_to_string(&self.jsonl)?;
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["kind"] == "stats")
            .context("no final stats record")
    }
}

impl Drop for SensorProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    None,
    Minerwatch,
    Auditd,
    Bpftrace,
}

impl Tool {
    const ALL: [Tool; 4] = [Tool::None, Tool::Minerwatch, Tool::Auditd, Tool::Bpftrace];

    fn name(self) -> &'static str {
        match self {
            Tool::None => "no sensor",
            Tool::Minerwatch => "minerwatch",
            Tool::Auditd => "auditd",
            Tool::Bpftrace => "bpftrace",
        }
    }
}

/// A running tool; stopping it (also on drop) restores the machine.
enum Running {
    None,
    Minerwatch(Option<SensorProc>),
    Auditd,
    Bpftrace(Child),
}

/// The bpftrace script: the same events minerwatch traces, printed.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:syscalls:sys_enter_execve { printf("exec %d %d %s %s\n", pid, uid, comm, str(args->filename)); }
tracepoint:syscalls:sys_enter_execveat { printf("exec %d %d %s\n", pid, uid, comm); }
tracepoint:syscalls:sys_enter_connect { printf("connect %d %s fd=%d\n", pid, comm, args->fd); }
"#;

impl Running {
    fn start(tool: Tool, ctx: &Ctx) -> Result<Running> {
        Ok(match tool {
            Tool::None => Running::None,
            Tool::Minerwatch => {
                let jsonl = ctx.out.join("overhead.jsonl");
                Running::Minerwatch(Some(SensorProc::start(&ctx.bin, &jsonl, &[])?))
            }
            Tool::Auditd => {
                if !Path::new("/var/run/auditd.pid").exists() || !pid_alive("/var/run/auditd.pid") {
                    run(&mut Command::new("auditd"))?;
                }
                run(Command::new("auditctl").arg("-D").stdout(Stdio::null()))?;
                // The rules sites use to audit process execution and outbound connections.
                run(Command::new("auditctl").args([
                    "-a",
                    "always,exit",
                    "-F",
                    "arch=b64",
                    "-S",
                    "execve,execveat",
                    "-k",
                    "mw_exec",
                ]))?;
                run(Command::new("auditctl").args([
                    "-a",
                    "always,exit",
                    "-F",
                    "arch=b64",
                    "-S",
                    "connect",
                    "-k",
                    "mw_net",
                ]))?;
                Running::Auditd
            }
            Tool::Bpftrace => {
                // bpftrace's tracepoints need tracefs, which minerwatch no longer mounts (it
                // attaches no classic tracepoint); some systems, this VM among them, lack it.
                if !Path::new("/sys/kernel/tracing/events").is_dir()
                    && !Path::new("/sys/kernel/debug/tracing/events").is_dir()
                {
                    crate::run(Command::new("mount").args([
                        "-t",
                        "tracefs",
                        "nodev",
                        "/sys/kernel/tracing",
                    ]))?;
                }
                let log = ctx.out.join("bpftrace.out");
                let _ = std::fs::remove_file(&log);
                let child = Command::new("bpftrace")
                    .arg("-o")
                    .arg(&log)
                    .arg("-e")
                    .arg(BPFTRACE_SCRIPT)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("start bpftrace")?;
                // Guarded from here on: an early return stops it.
                let mut running = Running::Bpftrace(child);
                // With -o, bpftrace announces "Attaching N probes..." in its output file.
                let end = Instant::now() + Duration::from_secs(60);
                while !std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("Attaching")
                {
                    if let Running::Bpftrace(c) = &mut running
                        && let Ok(Some(status)) = c.try_wait()
                    {
                        bail!("bpftrace exited before attaching: {status}");
                    }
                    if Instant::now() > end {
                        bail!("bpftrace did not attach within 60 s");
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                thread::sleep(Duration::from_millis(300));
                running
            }
        })
    }

    fn sensor_pid(&self) -> Option<u32> {
        match self {
            Running::Minerwatch(Some(s)) => Some(s.pid()),
            _ => None,
        }
    }

    /// Stops the tool; for the sensor, also checks it stopped cleanly. Dropping `self`
    /// restores the machine for the others (rules removed, bpftrace stopped).
    fn stop(mut self) -> Result<()> {
        if let Running::Minerwatch(s) = &mut self
            && let Some(s) = s.take()
        {
            return s.stop().map(drop);
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Running::Auditd => {
                let _ = Command::new("auditctl")
                    .arg("-D")
                    .stdout(Stdio::null())
                    .status();
            }
            Running::Bpftrace(child) => {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                let _ = child.wait();
            }
            _ => {}
        }
    }
}

fn pid_alive(pidfile: &str) -> bool {
    std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        // SAFETY: signal 0 only checks that the process exists.
        .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
}

/// Stops the auditd this bench may have started (rules are removed by `Running`).
fn stop_auditd() {
    if let Some(pid) = std::fs::read_to_string("/var/run/auditd.pid")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        // SAFETY: signalling auditd, which this bench started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

// ---------------------------------------------------------------------------------------
// Workloads

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Exec,
    Connect,
    WriteFile,
    WriteSocket,
    WatchedFile,
    Cpu,
    Switch,
}

/// Where the watched-file workload writes: a system-binary directory the persistence watch
/// marks, under a backup name (`name~`) that is never judged, removed after each run: the
/// cost measured is the watch's, not that of an alert per file.
const WATCHED_DIR: &str = "/usr/local/bin";

impl Workload {
    const ALL: [Workload; 7] = [
        Workload::Exec,
        Workload::Connect,
        Workload::WriteFile,
        Workload::WriteSocket,
        Workload::WatchedFile,
        Workload::Cpu,
        Workload::Switch,
    ];

    fn name(self, s: &Sizes) -> String {
        match self {
            Workload::Exec => format!("exec storm ({} x /bin/true)", s.execs),
            Workload::Connect => format!("connect storm ({} loopback connect/close)", s.connects),
            Workload::WriteFile => format!("1-byte writes to a file ({})", s.writes),
            Workload::WriteSocket => format!("1-byte writes to a TCP socket ({})", s.writes),
            Workload::WatchedFile => format!(
                "files written and closed in watched {WATCHED_DIR} ({})",
                s.watched_files
            ),
            Workload::Cpu => "CPU-bound fixed work (hash loop)".to_string(),
            Workload::Switch => format!(
                "context switches ({} pipe round trips between two threads)",
                s.switches
            ),
        }
    }

    /// Operations one run does (execs, connects, writes; 1 for the CPU loop).
    fn ops(self, s: &Sizes) -> u64 {
        match self {
            Workload::Exec => s.execs,
            Workload::Connect => s.connects,
            Workload::WriteFile | Workload::WriteSocket => s.writes,
            Workload::WatchedFile => s.watched_files,
            Workload::Cpu => 1,
            Workload::Switch => s.switches,
        }
    }

    fn short(self) -> &'static str {
        match self {
            Workload::Exec => "exec",
            Workload::Connect => "connect",
            Workload::WriteFile => "write file",
            Workload::WriteSocket => "write socket",
            Workload::WatchedFile => "watched file",
            Workload::Cpu => "CPU-bound",
            Workload::Switch => "context switch",
        }
    }

    /// Runs the workload once; returns its wall-clock seconds.
    fn run(self, s: &Sizes, ctx: &Ctx) -> Result<f64> {
        let t = Instant::now();
        match self {
            Workload::Exec => {
                for _ in 0..s.execs {
                    Command::new("/bin/true").stdin(Stdio::null()).status()?;
                }
            }
            Workload::Connect => {
                for _ in 0..s.connects {
                    drop(TcpStream::connect(ctx.closer)?);
                }
            }
            Workload::WriteFile => {
                let mut f = std::fs::File::create(ctx.out.join("writes.bin"))?;
                for _ in 0..s.writes {
                    f.write_all(b"x")?;
                }
            }
            Workload::WriteSocket => {
                let mut c = TcpStream::connect(ctx.listener)?;
                c.set_nodelay(true)?;
                for _ in 0..s.writes {
                    c.write_all(b"x")?;
                }
            }
            Workload::WatchedFile => {
                std::fs::create_dir_all(WATCHED_DIR).with_context(|| {
                    format!("cannot make {WATCHED_DIR} for the watched-file workload")
                })?;
                let path = Path::new(WATCHED_DIR)
                    .join(format!("minerwatch-bench-{}~", std::process::id()));
                let r = (|| -> Result<()> {
                    for _ in 0..s.watched_files {
                        std::fs::File::create(&path)?.write_all(b"x")?;
                    }
                    Ok(())
                })();
                let _ = std::fs::remove_file(&path);
                r?;
            }
            Workload::Switch => ping_pong(s.switches)?,
            Workload::Cpu => {
                let mut x: u64 = 0x9e3779b97f4a7c15;
                for i in 0..s.cpu_iters {
                    x ^= i;
                    x = x.wrapping_mul(0xff51afd7ed558ccd);
                    x ^= x >> 33;
                }
                std::hint::black_box(x);
            }
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

/// `n` round trips of one byte between this thread and another over two pipes: each side
/// blocks until the other writes, so every trip switches threads at least twice (the
/// rounding-mode hook runs at each).
fn ping_pong(n: u64) -> Result<()> {
    use std::io::Read;
    let (mut to_r, mut to_w) = std::io::pipe()?;
    let (mut back_r, mut back_w) = std::io::pipe()?;
    let peer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut b = [0u8; 1];
        for _ in 0..n {
            to_r.read_exact(&mut b)?;
            back_w.write_all(&b)?;
        }
        Ok(())
    });
    let mut b = [0u8; 1];
    for _ in 0..n {
        to_w.write_all(b"x")?;
        back_r.read_exact(&mut b)?;
    }
    peer.join()
        .map_err(|_| anyhow::anyhow!("the ping-pong thread panicked"))??;
    Ok(())
}

/// What every part needs.
struct Ctx {
    bin: PathBuf,
    out: PathBuf,
    /// A loopback listener that accepts and drains, for the socket-write workload.
    listener: std::net::SocketAddr,
    /// A loopback listener that accepts and closes at once, for the connect storm.
    closer: std::net::SocketAddr,
}

/// Accepts and closes in one loop: no thread per connection, so the accept queue never
/// overflows (an overflow costs a 1 s SYN retransmit and ruins the measurement).
fn closing_listener() -> Result<std::net::SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    // A deep accept queue (listen may be called again to change it): a moment without the
    // accepting thread on a CPU must not drop SYNs.
    use std::os::fd::AsRawFd as _;
    // SAFETY: a listening socket we own.
    unsafe { libc::listen(l.as_raw_fd(), 4096) };
    thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    Ok(addr)
}

impl Ctx {
    fn new(root: &Path) -> Result<Ctx> {
        let ctx = Ctx {
            bin: root.join("target/release/minerwatch"),
            out: root.join("results"),
            listener: drain_listener()?,
            closer: closing_listener()?,
        };
        std::fs::create_dir_all(&ctx.out)?;
        Ok(ctx)
    }
}

fn drain_listener() -> Result<std::net::SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 65536];
                while std::io::Read::read(&mut c, &mut buf).is_ok_and(|n| n > 0) {}
            });
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------------
// Parts

pub struct Overhead {
    /// [workload][tool] -> median seconds
    pub medians: Vec<[f64; 4]>,
    /// [workload][tool] -> (lowest, highest) slowdown in % over the rounds, each round's
    /// tool against the same round's baseline.
    pub spread: Vec<[(f64, f64); 4]>,
    /// Sensor CPU seconds per workload (median), its peak RSS per workload (max over the
    /// rounds), and its peak RSS over the whole run.
    pub sensor_cpu: Vec<f64>,
    pub sensor_rss_kb: Vec<u64>,
    pub sensor_peak_rss_kb: u64,
    pub tools: Vec<bool>,
}

fn overhead(s: &Sizes, ctx: &Ctx) -> Result<Overhead> {
    let tools: Vec<bool> = Tool::ALL
        .iter()
        .map(|t| match t {
            Tool::Auditd => which("auditctl"),
            Tool::Bpftrace => which("bpftrace"),
            _ => true,
        })
        .collect();
    let mut times = vec![[const { Vec::new() }; 4]; Workload::ALL.len()];
    let mut sensor_cpu = vec![Vec::new(); Workload::ALL.len()];
    let mut sensor_rss = vec![0u64; Workload::ALL.len()];
    let mut peak = 0;
    for round in 0..s.rounds {
        // Rotate the order each round (A B C D, B C D A, …) so no tool always runs first.
        for k in 0..Tool::ALL.len() {
            let ti = (k + round) % Tool::ALL.len();
            let tool = Tool::ALL[ti];
            if !tools[ti] {
                continue;
            }
            step(&format!(
                "overhead round {}/{}: {}",
                round + 1,
                s.rounds,
                tool.name()
            ));
            let running = Running::start(tool, ctx)?;
            for (wi, w) in Workload::ALL.iter().enumerate() {
                if let Some(pid) = running.sensor_pid() {
                    // Writing 5 to clear_refs resets the peak RSS (VmHWM), so the peak read
                    // after the workload is this workload's own.
                    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
                }
                let before = running.sensor_pid().map(usage);
                let secs = w.run(s, ctx)?;
                times[wi][ti].push(secs);
                if let (Some(pid), Some((c0, _, _))) = (running.sensor_pid(), before) {
                    let (c1, _, hwm) = usage(pid);
                    sensor_cpu[wi].push(c1 - c0);
                    sensor_rss[wi] = sensor_rss[wi].max(hwm);
                    peak = peak.max(hwm);
                }
            }
            running.stop()?;
        }
    }
    stop_auditd();
    let spread = times
        .iter()
        .map(|per_tool| {
            let mut sp = [(f64::NAN, f64::NAN); 4];
            for (i, v) in per_tool.iter().enumerate() {
                let ratios: Vec<f64> = v
                    .iter()
                    .zip(&per_tool[0])
                    .map(|(t, b)| (t / b - 1.0) * 100.0)
                    .collect();
                if !ratios.is_empty() {
                    sp[i] = (
                        ratios.iter().copied().fold(f64::INFINITY, f64::min),
                        ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    );
                }
            }
            sp
        })
        .collect();
    let medians = times
        .into_iter()
        .map(|per_tool| {
            let mut m = [f64::NAN; 4];
            for (i, v) in per_tool.into_iter().enumerate() {
                if !v.is_empty() {
                    m[i] = median(v);
                }
            }
            m
        })
        .collect();
    Ok(Overhead {
        medians,
        spread,
        sensor_cpu: sensor_cpu.into_iter().map(median).collect(),
        sensor_rss_kb: sensor_rss,
        sensor_peak_rss_kb: peak,
        tools,
    })
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub struct Idle {
    pub cpu_share: f64,
    pub rss_kb: u64,
    /// Kernel memory locked by the sensor's maps: here, and projected to a 256-CPU node.
    pub maps: MapMemory,
    pub storm_rate: f64,
    pub storm_cpu_share: f64,
    pub storm_drops: u64,
    pub storm_events: u64,
}

/// A static program that only exits: an exec costs the kernel's work, not a dynamic loader's.
fn exec_target(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("exit0.c");
    let bin = dir.join("exit0");
    if !bin.exists() {
        std::fs::write(
            &src,
            "void _start(void) { __asm__ volatile(\"mov $60, %eax\\n xor %edi, %edi\\n syscall\"); }\n",
        )?;
        run(Command::new("cc")
            .args(["-O2", "-static", "-nostdlib", "-o"])
            .arg(&bin)
            .arg(&src))?;
    }
    Ok(bin)
}

/// Spawns `target` `n` times from two threads, paced at `rate`/s. Returns (execs, seconds).
fn paced_execs(target: &Path, n: u64, rate: u64) -> (u64, f64) {
    let start = Instant::now();
    let workers = 2;
    let per = n / workers;
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let target = target.to_path_buf();
            thread::spawn(move || {
                let t0 = Instant::now();
                for i in 0..per {
                    let due = t0 + Duration::from_secs_f64(i as f64 * workers as f64 / rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    let _ = Command::new(&target).stdin(Stdio::null()).status();
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    (per * workers, start.elapsed().as_secs_f64())
}

fn drops(stats: &Value) -> u64 {
    stats["kernel"].as_object().map_or(0, |m| {
        m.iter()
            .filter(|(k, _)| k.starts_with("ringbuf_full"))
            .filter_map(|(_, v)| v.as_u64())
            .sum()
    })
}

#[derive(Debug, Default)]
pub struct MapMemory {
    pub maps: usize,
    pub bytes: u64,
    /// The same maps on a 256-CPU node: per-CPU maps grow with the CPUs, the rest do not.
    pub bytes_256: u64,
    pub cpus: u64,
}

/// Sums `memlock` over the BPF maps process `pid` holds (from /proc/<pid>/fdinfo). Map types
/// 5, 6, 10 and 21 are the per-CPU ones (hash, array, LRU hash, cgroup storage).
fn map_memory(pid: u32) -> MapMemory {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mut m = MapMemory {
        cpus,
        ..MapMemory::default()
    };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return m;
    };
    for fd in fds.flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(ty), Some(memlock)) = (field("map_type:"), field("memlock:")) else {
            continue;
        };
        m.maps += 1;
        m.bytes += memlock;
        m.bytes_256 += if matches!(ty, 5 | 6 | 10 | 21) {
            memlock * 256 / cpus
        } else {
            memlock
        };
    }
    m
}

fn idle_and_storm(s: &Sizes, ctx: &Ctx, root: &Path) -> Result<Idle> {
    let target = exec_target(root)?;
    step(&format!(
        "idle for {} s, then execs paced at {}/s for {} s",
        s.idle_secs, s.storm_rate, s.storm_secs
    ));
    let sensor = SensorProc::start(&ctx.bin, &ctx.out.join("idle.jsonl"), &[])?;
    let pid = sensor.pid();
    thread::sleep(Duration::from_secs(1));
    let (c0, _, _) = usage(pid);
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(s.idle_secs));
    let (c1, rss, _) = usage(pid);
    let cpu_share = (c1 - c0) / t0.elapsed().as_secs_f64();
    let maps = map_memory(pid);
    let (n, t) = paced_execs(&target, s.storm_rate * s.storm_secs, s.storm_rate);
    let (c2, _, _) = usage(pid);
    thread::sleep(Duration::from_millis(300));
    let stats = sensor.stop()?;
    Ok(Idle {
        cpu_share,
        rss_kb: rss,
        maps,
        storm_rate: n as f64 / t,
        storm_cpu_share: (c2 - c1) / t,
        storm_drops: drops(&stats),
        storm_events: stats["events"].as_u64().unwrap_or(0),
    })
}

pub struct Rate {
    pub target: u64,
    pub achieved: f64,
    pub sent: u64,
    pub decoded: u64,
    pub dropped: u64,
    pub sensor_cpu_share: f64,
}

/// UDP connect() calls, paced: each is one connect event through the whole pipeline.
fn throughput(s: &Sizes, ctx: &Ctx) -> Result<Vec<Rate>> {
    let mut out = Vec::new();
    for &rate in s.rates {
        step(&format!(
            "throughput: connect events paced at {rate}/s for {} s",
            s.rate_secs
        ));
        let sensor = SensorProc::start(&ctx.bin, &ctx.out.join("throughput.jsonl"), &[])?;
        thread::sleep(Duration::from_millis(300));
        let (c0, _, _) = usage(sensor.pid());
        let n = (rate as f64 * s.rate_secs) as u64;
        let workers: u64 = 2;
        let t0 = Instant::now();
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                thread::spawn(move || -> Result<u64> {
                    let sock = UdpSocket::bind("127.0.0.1:0")?;
                    let per = n / workers;
                    let start = Instant::now();
                    // Pace in batches of 100 to keep the clock out of the way.
                    for i in 0..per {
                        if i % 100 == 0 {
                            let due = start
                                + Duration::from_secs_f64(i as f64 * workers as f64 / rate as f64);
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                thread::sleep(wait);
                            }
                        }
                        sock.connect(("127.0.0.1", 9 + (w as u16)))?;
                    }
                    Ok(per)
                })
            })
            .collect();
        let mut sent = 0;
        for h in handles {
            sent += h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        let secs = t0.elapsed().as_secs_f64();
        let (c1, _, _) = usage(sensor.pid());
        thread::sleep(Duration::from_millis(300));
        let stats = sensor.stop()?;
        let dropped = drops(&stats);
        out.push(Rate {
            target: rate,
            achieved: sent as f64 / secs,
            sent,
            decoded: stats["events"].as_u64().unwrap_or(0),
            dropped,
            sensor_cpu_share: (c1 - c0) / secs,
        });
    }
    Ok(out)
}

/// A loopback listener that takes one read from each connection: where Stratum logins go.
pub fn stand_in_pool() -> Result<String> {
    let pool = TcpListener::bind("127.0.0.1:0")?;
    let addr = pool.local_addr()?.to_string();
    thread::spawn(move || {
        for c in pool.incoming().flatten() {
            thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut c, &mut buf);
            });
        }
    });
    Ok(addr)
}

/// Milliseconds from a Stratum login leaving a client to its alert record, sorted.
fn latency(s: &Sizes, ctx: &Ctx, client: &Path) -> Result<Vec<f64>> {
    step(&format!(
        "latency: {} Stratum logins, each from a new process",
        s.latency_runs
    ));
    let pool_addr = stand_in_pool()?;
    let mut sensor = Command::new(&ctx.bin)
        .args([
            "run",
            "--no-terminal",
            "--stats-interval",
            "0",
            "--jsonl",
            "-",
        ])
        .arg("--socket")
        .arg(ctx.out.join("latency.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("start minerwatch")?;
    // Arrival time (CLOCK_MONOTONIC) of each Stratum alert, by pid.
    let seen: Arc<Mutex<std::collections::HashMap<u64, u64>>> = Arc::default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stdout = sensor.stdout.take().context("sensor stdout")?;
    let seen2 = seen.clone();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let at = monotonic_ns();
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["kind"] == "ready" {
                let _ = ready_tx.send(());
            }
            let stratum = v["reasons"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["code"] == "stratum_protocol"));
            if v["kind"] == "alert" && stratum {
                seen2
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(v["pid"].as_u64().unwrap_or(0))
                    .or_insert(at);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .context("sensor not ready")?;
    let mut lat = Vec::new();
    for _ in 0..s.latency_runs {
        let out = Command::new(client)
            .args(["stratum", &pool_addr, "write"])
            .env("MW_STAMP", "1")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let sent: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("sent ")?.parse().ok())
            .context("client printed no send time")?;
        // The client has exited; its pid is known from the process we spawned.
        let end = Instant::now() + Duration::from_secs(5);
        let pid = out_pid(&out);
        let got = loop {
            if let Some(&at) = seen.lock().unwrap_or_else(|e| e.into_inner()).get(&pid) {
                break Some(at);
            }
            if Instant::now() > end {
                break None;
            }
            thread::sleep(Duration::from_millis(1));
        };
        match got {
            Some(at) => lat.push(at.saturating_sub(sent) as f64 / 1e6),
            None => bail!("no alert within 5 s for login from pid {pid}"),
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(sensor.id() as i32, libc::SIGINT) };
    sensor.wait()?;
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

/// The pid of a finished client: it prints it beside the send time.
fn out_pid(out: &std::process::Output) -> u64 {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("pid ")?.parse().ok())
        .unwrap_or(0)
}

/// One workload's in-kernel cost: what every hook spent while it ran once, against its
/// wall time. Precise where the wall-time ratios are noisy.
struct KernelCost {
    workload: Workload,
    wall_s: f64,
    ops: u64,
    /// hook -> (runs, ns)
    hooks: Vec<(String, u64, u64)>,
}

impl KernelCost {
    fn ns(&self) -> u64 {
        self.hooks.iter().map(|h| h.2).sum()
    }
}

/// Per-hook BPF cost, one sensor per workload (so each workload's runs are its own), and
/// the totals over all of them.
fn bpf_costs(s: &Sizes, ctx: &Ctx) -> Result<(Value, Vec<KernelCost>)> {
    step("per-hook BPF cost (kernel BPF statistics), each workload on its own");
    let mut total = serde_json::Map::new();
    let mut per = Vec::new();
    for w in Workload::ALL {
        let sensor =
            SensorProc::start(&ctx.bin, &ctx.out.join("bpfstats.jsonl"), &["--bpf-stats"])?;
        let wall_s = w.run(s, ctx)?;
        let bpf = sensor.stop()?["bpf"].clone();
        let mut hooks = Vec::new();
        for (k, v) in bpf.as_object().into_iter().flatten() {
            let (runs, ns) = (
                v["runs"].as_u64().unwrap_or(0),
                v["run_ns"].as_u64().unwrap_or(0),
            );
            hooks.push((k.clone(), runs, ns));
            let t = total
                .entry(k.clone())
                .or_insert_with(|| serde_json::json!({"runs": 0, "run_ns": 0}));
            t["runs"] = (t["runs"].as_u64().unwrap_or(0) + runs).into();
            t["run_ns"] = (t["run_ns"].as_u64().unwrap_or(0) + ns).into();
        }
        per.push(KernelCost {
            workload: w,
            wall_s,
            ops: w.ops(s),
            hooks,
        });
    }
    for v in total.values_mut() {
        let (runs, ns) = (
            v["runs"].as_u64().unwrap_or(0),
            v["run_ns"].as_u64().unwrap_or(0),
        );
        v["ns_per_run"] = (ns / runs.max(1)).into();
    }
    Ok((Value::Object(total), per))
}

// ---------------------------------------------------------------------------------------
// Report

fn machine() -> String {
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split(':')
                .nth(1)
                .map(str::trim)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    // SAFETY: no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!(
        "{cpus} CPUs ({cpu}), {:.0} GiB, kernel {}",
        mem_kb as f64 / 1048576.0,
        read("/proc/sys/kernel/osrelease").trim()
    )
}

fn pct(base: f64, v: f64) -> String {
    if v.is_nan() || base.is_nan() {
        "n/a".into()
    } else {
        format!("{:+.1} %", (v / base - 1.0) * 100.0)
    }
}

/// Bar chart of the slowdown of each workload under each tool.
fn svg(o: &Overhead, s: &Sizes) -> String {
    let colors = ["#888", "#2a7", "#c53", "#36c"];
    let (w, h, left, top, bottom) = (760.0, 340.0, 60.0, 40.0, 60.0);
    let vals: Vec<[f64; 4]> = o
        .medians
        .iter()
        .map(|m| m.map(|v| (v / m[0] - 1.0) * 100.0))
        .collect();
    let max = vals
        .iter()
        .flat_map(|v| v[1..].iter().copied())
        .filter(|v| v.is_finite())
        .fold(5.0f64, f64::max);
    let plot_h = h - top - bottom;
    let group_w = (w - left - 20.0) / vals.len() as f64;
    let bar_w = group_w / 4.0;
    let mut g = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\
         <rect width='100%' height='100%' fill='white'/>\
         <text x='{left}' y='20' font-size='14'>Slowdown against no sensor (median of {} rounds; lower is better)</text>",
        s.rounds
    );
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        let y = top + plot_h - plot_h * v / max;
        let _ = write!(
            g,
            "<line x1='{left}' x2='{}' y1='{y:.1}' y2='{y:.1}' stroke='#ddd'/><text x='5' y='{:.1}'>{v:.0} %</text>",
            w - 20.0,
            y + 4.0
        );
    }
    for (wi, v) in vals.iter().enumerate() {
        let x0 = left + group_w * wi as f64 + bar_w * 0.5;
        for t in 1..4 {
            if !o.tools[t] || !v[t].is_finite() {
                continue;
            }
            let val = v[t].max(0.0);
            let bh = plot_h * val / max;
            let x = x0 + bar_w * (t - 1) as f64;
            let _ = write!(
                g,
                "<rect x='{x:.1}' y='{:.1}' width='{:.1}' height='{bh:.1}' fill='{}'/><text x='{:.1}' y='{:.1}' font-size='10' text-anchor='middle'>{:.1}</text>",
                top + plot_h - bh,
                bar_w * 0.9,
                colors[t],
                x + bar_w * 0.45,
                top + plot_h - bh - 3.0,
                v[t]
            );
        }
        let _ = write!(
            g,
            "<text x='{:.1}' y='{:.1}' text-anchor='middle'>{}</text>",
            x0 + bar_w * 1.5,
            h - bottom + 18.0,
            Workload::ALL[wi].short()
        );
    }
    for (t, tool) in Tool::ALL.iter().enumerate().skip(1) {
        let x = left + 150.0 * (t - 1) as f64;
        let _ = write!(
            g,
            "<rect x='{x}' y='{}' width='12' height='12' fill='{}'/><text x='{}' y='{}'>{}</text>",
            h - 24.0,
            colors[t],
            x + 16.0,
            h - 14.0,
            tool.name()
        );
    }
    g + "</svg>\n"
}

pub fn all(root: &Path, s: &Sizes) -> Result<()> {
    let ctx = Ctx::new(root)?;
    build_client(root)?;
    let client = root.join("target/release/mw-client");

    let idle = idle_and_storm(s, &ctx, root)?;
    let o = overhead(s, &ctx)?;
    let rates = throughput(s, &ctx)?;
    let lat = latency(s, &ctx, &client)?;
    let (bpf, per_workload) = bpf_costs(s, &ctx)?;
    let delivered = crate::delivery::run(root, s.delivery_events, s.latency_runs)?;

    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {}. Command: `cargo xtask bench all{}`.\n",
        machine(),
        if s.rounds == 1 { " --smoke" } else { "" }
    );
    let _ = writeln!(
        md,
        "**Overhead**: wall time of each workload, median of {} interleaved rounds, and the slowdown against no sensor.\n",
        s.rounds
    );
    let _ = writeln!(
        md,
        "Each slowdown is the median, with the lowest and highest of the rounds (each round against its own baseline) in brackets.\n"
    );
    let _ = writeln!(
        md,
        "| workload | no sensor | minerwatch | auditd | bpftrace | minerwatch CPU | minerwatch peak RSS |\n|---|---|---|---|---|---|---|"
    );
    for (wi, m) in o.medians.iter().enumerate() {
        let sp = &o.spread[wi];
        let with = |i: usize| {
            if m[i].is_nan() {
                "n/a".to_string()
            } else {
                format!("{} [{:+.1}..{:+.1}]", pct(m[0], m[i]), sp[i].0, sp[i].1)
            }
        };
        let _ = writeln!(
            md,
            "| {} | {:.3} s | {} | {} | {} | {:.2} s | {:.1} MiB |",
            Workload::ALL[wi].name(s),
            m[0],
            with(1),
            with(2),
            with(3),
            o.sensor_cpu[wi],
            o.sensor_rss_kb[wi] as f64 / 1024.0
        );
    }
    let _ = writeln!(
        md,
        "\n**In-kernel cost per operation** (kernel BPF statistics, each workload once under its own sensor): the time every hook spent, per operation, beside the operation's own time. This is the precise figure; the wall-time ratios above move a few points from run to run.\n"
    );
    let _ = writeln!(
        md,
        "| workload | operations | wall per operation | hooks' time per operation | share | hooks that ran (runs, ns per run) |\n|---|---|---|---|---|---|"
    );
    for k in &per_workload {
        let ops = k.ops.max(1) as f64;
        let per_op_ns = k.ns() as f64 / ops;
        let wall_ns = k.wall_s * 1e9 / ops;
        let hooks: Vec<String> = k
            .hooks
            .iter()
            .filter(|h| h.1 > 0)
            .map(|h| format!("{} ({}, {})", h.0, h.1, h.2 / h.1.max(1)))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} ns | {:.0} ns | {:.2} % | {} |",
            k.workload.short(),
            k.ops,
            wall_ns,
            per_op_ns,
            per_op_ns / wall_ns * 100.0,
            hooks.join(", ")
        );
    }
    let exec = &o.medians[0];
    let (mw, au, bt) = (
        (exec[1] / exec[0] - 1.0) * 100.0,
        (exec[2] / exec[0] - 1.0) * 100.0,
        (exec[3] / exec[0] - 1.0) * 100.0,
    );
    let ratio = if mw > 0.05 {
        format!("auditd's overhead is {:.1} x minerwatch's", au / mw)
    } else {
        "minerwatch's overhead is within the run-to-run noise".into()
    };
    let _ = writeln!(
        md,
        "\nExec storm: minerwatch {mw:+.1} %, auditd {au:+.1} %, bpftrace {bt:+.1} %; {ratio}.\n"
    );
    let _ = writeln!(
        md,
        "**The sensor itself**\n\n| measure | value |\n|---|---|"
    );
    let _ = writeln!(
        md,
        "| idle CPU ({} s) | {:.2} % of a core |",
        s.idle_secs,
        idle.cpu_share * 100.0
    );
    let _ = writeln!(md, "| idle RSS | {:.1} MiB |", idle.rss_kb as f64 / 1024.0);
    let _ = writeln!(
        md,
        "| kernel memory locked by its {} maps | {:.1} MiB on {} CPUs; {:.1} MiB on a 256-CPU node (per-CPU maps grow with the CPUs) |",
        idle.maps.maps,
        idle.maps.bytes as f64 / 1048576.0,
        idle.maps.cpus,
        idle.maps.bytes_256 as f64 / 1048576.0
    );
    let _ = writeln!(
        md,
        "| peak RSS over the overhead rounds | {:.1} MiB |",
        o.sensor_peak_rss_kb as f64 / 1024.0
    );
    let _ = writeln!(
        md,
        "| execs paced at {:.0}/s | {:.1} % of a core, {} events, {} dropped |",
        idle.storm_rate,
        idle.storm_cpu_share * 100.0,
        idle.storm_events,
        idle.storm_drops
    );
    let _ = writeln!(
        md,
        "\n**Pipeline throughput**: connect events (UDP connect) paced through kernel, ring buffer, decoding and detection.\n"
    );
    let _ = writeln!(
        md,
        "| target rate | achieved | events sent | decoded | dropped | sensor CPU |\n|---|---|---|---|---|---|"
    );
    for r in &rates {
        let _ = writeln!(
            md,
            "| {}/s | {:.0}/s | {} | {} | {} | {:.1} % |",
            r.target,
            r.achieved,
            r.sent,
            r.decoded,
            r.dropped,
            r.sensor_cpu_share * 100.0
        );
    }
    let best = rates
        .iter()
        .filter(|r| r.dropped == 0)
        .map(|r| r.achieved)
        .fold(0.0, f64::max);
    let _ = writeln!(md, "\nHighest rate with zero loss: {best:.0} events/s.\n");
    let _ = writeln!(
        md,
        "**Detection latency**, Stratum login leaving a process to its alert record, {} runs: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms.\n",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    let _ = writeln!(
        md,
        "**Per-hook BPF cost** (kernel BPF statistics, one pass of every workload):\n\n| hook | runs | ns per run |\n|---|---|---|"
    );
    if let Some(m) = bpf.as_object() {
        for (k, v) in m {
            let _ = writeln!(md, "| {k} | {} | {} |", v["runs"], v["ns_per_run"]);
        }
    }
    print!("{md}");
    md += "\n";
    md += &crate::delivery::report(&delivered);
    std::fs::write(ctx.out.join("bench.md"), &md)?;
    std::fs::write(ctx.out.join("overhead.svg"), svg(&o, s))?;
    eprintln!(
        "saved {} and {}",
        ctx.out.join("bench.md").display(),
        ctx.out.join("overhead.svg").display()
    );
    if rates.iter().any(|r| r.target <= 50_000 && r.dropped > 0) {
        bail!("events were dropped at or below 50,000/s");
    }
    Ok(())
}

/// Delivery to the collector only: throughput and alert latency.
pub fn delivery(root: &Path, s: &Sizes) -> Result<()> {
    build_client(root)?;
    let d = crate::delivery::run(root, s.delivery_events, s.latency_runs)?;
    let md = crate::delivery::report(&d);
    print!("{md}");
    std::fs::create_dir_all(root.join("results"))?;
    std::fs::write(root.join("results/delivery.md"), &md)?;
    Ok(())
}

fn build_client(root: &Path) -> Result<()> {
    step("building the benchmark client");
    run(Command::new("cargo")
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "minerwatch-tests",
            "--bin",
            "mw-client",
        ])
        .current_dir(root))
}

/// The older single-purpose bench: idle and a paced exec storm only.
pub fn sensor(root: &Path, s: &Sizes) -> Result<()> {
    let ctx = Ctx::new(root)?;
    let i = idle_and_storm(s, &ctx, root)?;
    println!(
        "idle {:.2} % of a core, {:.1} MiB; execs at {:.0}/s: {:.1} % of a core, {} events, {} dropped",
        i.cpu_share * 100.0,
        i.rss_kb as f64 / 1024.0,
        i.storm_rate,
        i.storm_cpu_share * 100.0,
        i.storm_events,
        i.storm_drops
    );
    if i.storm_drops > 0 {
        bail!("{} events dropped", i.storm_drops);
    }
    Ok(())
}
