//! `cargo xtask bench sensor`: the sensor's own cost, measured in one run against a
//! baseline. Idle CPU and RSS; CPU, peak RSS and drop counters during an exec storm paced
//! at a target rate; and how much slower a flat-out exec storm runs with the sensor than
//! without it.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub struct Options {
    pub idle_secs: u64,
    pub storm_secs: u64,
    pub rate: u64,
    pub flat_out_execs: u64,
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
        super::run(
            Command::new("cc")
                .args(["-O2", "-static", "-nostdlib", "-o"])
                .arg(&bin)
                .arg(&src),
        )?;
    }
    Ok(bin)
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

/// Spawns `target` `n` times from two threads, as fast as possible, or paced at `rate`/s.
/// Returns (execs, seconds).
fn storm(target: &Path, n: u64, rate: Option<u64>) -> (u64, f64) {
    let start = Instant::now();
    let workers = 2;
    let per = n / workers;
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let target = target.to_path_buf();
            thread::spawn(move || {
                let t0 = Instant::now();
                for i in 0..per {
                    if let Some(r) = rate {
                        let due =
                            t0 + Duration::from_secs_f64(i as f64 * workers as f64 / r as f64);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            thread::sleep(wait);
                        }
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct SensorProc {
    child: Child,
    jsonl: PathBuf,
}

impl SensorProc {
    fn start(bin: &Path, jsonl: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(jsonl);
        let child = Command::new(bin)
            .args(["run", "--no-terminal", "--stats-interval", "0", "--jsonl"])
            .arg(jsonl)
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
    fn stop(mut self) -> Result<serde_json::Value> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("sensor exited with {status}");
        }
        let text = std::fs::read_to_string(&self.jsonl)?;
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["kind"] == "stats")
            .context("no final stats record")
    }
}

pub fn sensor(root: &Path, o: &Options) -> Result<()> {
    let bin = root.join("target/release/minerwatch");
    let target = exec_target(root)?;
    let out_dir = root.join("results");
    std::fs::create_dir_all(&out_dir)?;
    let jsonl = out_dir.join("bench-sensor.jsonl");

    // Flat-out exec storm, interleaved without / with the sensor, three rounds each.
    super::step(&format!(
        "flat-out exec storm: {} execs x 3 rounds, without and with the sensor",
        o.flat_out_execs
    ));
    let (mut base, mut with) = (Vec::new(), Vec::new());
    let mut storm_peak_cpu = 0.0f64;
    for _ in 0..3 {
        let (n, t) = storm(&target, o.flat_out_execs, None);
        base.push(n as f64 / t);
        let s = SensorProc::start(&bin, &jsonl)?;
        let (c0, _, _) = usage(s.pid());
        let (n, t) = storm(&target, o.flat_out_execs, None);
        let (c1, _, _) = usage(s.pid());
        storm_peak_cpu = storm_peak_cpu.max((c1 - c0) / t);
        with.push(n as f64 / t);
        s.stop()?;
    }
    let (base_rate, with_rate) = (median(base), median(with));

    super::step(&format!(
        "idle for {} s, then an exec storm paced at {}/s for {} s",
        o.idle_secs, o.rate, o.storm_secs
    ));
    let s = SensorProc::start(&bin, &jsonl)?;
    let pid = s.pid();
    thread::sleep(Duration::from_secs(1));
    let (c0, _, _) = usage(pid);
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(o.idle_secs));
    let (c1, idle_rss, _) = usage(pid);
    let idle_cpu = (c1 - c0) / t0.elapsed().as_secs_f64();
    let (n, t) = storm(&target, o.rate * o.storm_secs, Some(o.rate));
    let (c2, storm_rss, peak_rss) = usage(pid);
    let storm_cpu = (c2 - c1) / t;
    thread::sleep(Duration::from_millis(500));
    let stats = s.stop()?;
    let kernel = &stats["kernel"];
    let drops: u64 = kernel.as_object().map_or(0, |m| {
        m.iter()
            .filter(|(k, _)| k.starts_with("ringbuf_full"))
            .filter_map(|(_, v)| v.as_u64())
            .sum()
    });

    let mut md = String::new();
    let _ = writeln!(md, "| measure | value |\n|---|---|");
    let _ = writeln!(
        md,
        "| idle sensor CPU ({} s) | {:.2} % of a core |",
        o.idle_secs,
        idle_cpu * 100.0
    );
    let _ = writeln!(
        md,
        "| idle sensor RSS | {:.1} MiB |",
        idle_rss as f64 / 1024.0
    );
    let _ = writeln!(
        md,
        "| paced exec storm | {n} execs in {t:.1} s = {:.0} execs/s |",
        n as f64 / t
    );
    let _ = writeln!(
        md,
        "| sensor CPU during paced storm | {:.1} % of a core |",
        storm_cpu * 100.0
    );
    let _ = writeln!(
        md,
        "| sensor RSS after storm / peak | {:.1} / {:.1} MiB |",
        storm_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    let _ = writeln!(md, "| ring-buffer drops (all kinds) | {drops} |");
    let _ = writeln!(
        md,
        "| kernel counters | {} |",
        serde_json::to_string(kernel)?
    );
    let _ = writeln!(
        md,
        "| events decoded / decode errors | {} / {} |",
        stats["events"], stats["decode_errors"]
    );
    let _ = writeln!(
        md,
        "| flat-out exec storm, median of 3 | {base_rate:.0}/s without, {with_rate:.0}/s with the sensor: {:+.1} % time |",
        (base_rate / with_rate - 1.0) * 100.0
    );
    let _ = writeln!(
        md,
        "| sensor CPU during flat-out storm (max) | {:.1} % of a core |",
        storm_peak_cpu * 100.0
    );
    print!("{md}");
    let path = out_dir.join("bench-sensor.md");
    std::fs::write(&path, &md)?;
    eprintln!("saved {}", path.display());
    if drops > 0 {
        bail!("{drops} events dropped at {} execs/s", o.rate);
    }
    Ok(())
}
