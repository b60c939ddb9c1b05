//! Benign workloads that keep a core busy for a whole saturation window must stay below
//! medium: stress-ng's CPU and matrix stressors, `openssl speed`, a compiler and linker run,
//! a numerical code on a BLAS (NumPy), and a program built and run from /tmp. One sensor for
//! the suite, one workload at a time. Each line of the table it prints gives the workload's
//! highest severity, its reasons, and how many of its threads were ever switched out with a
//! non-default rounding mode (0 means a RandomX share of 0 %).
use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use minerwatch_tests::{Proc, Sensor, has_reason, root_or_skip, scratch, severity_rank};
use serde_json::Value;

/// The saturation window; every workload runs longer than it.
const WINDOW: u64 = 5;
/// The window, plus room for a slow start (Python importing NumPy, stress-ng forking its
/// worker) and for a second of sampling that falls short of the threshold on a loaded 2-core
/// VM: with 3 s of room a workload was missed now and then.
const RUN: u64 = WINDOW + 5;

/// A C file that takes gcc -O2 a few seconds: many small functions.
fn big_c(n: usize) -> String {
    let mut s = String::from("#include <stdio.h>\n");
    for i in 0..n {
        let _ = writeln!(
            s,
            "double f{i}(double x) {{ double y = x; for (int k = 0; k < {i} % 7 + 3; k++) y = y * 1.0001 + {i}.5 / (y + 1.0); return y; }}"
        );
    }
    s += "int main(void) { double t = 0;\n";
    for i in 0..n {
        let _ = writeln!(s, "t += f{i}(t);");
    }
    s + "printf(\"%f\\n\", t); return 0; }\n"
}

const BUSY_C: &str = "#include <time.h>\n#include <stdlib.h>\nint main(int c, char **v) {\n\
    time_t end = time(0) + atoi(v[1]); volatile unsigned long x = 1;\n\
    while (time(0) < end) for (int i = 0; i < 1000000; i++) x = x * 6364136223846793005UL + 1;\n\
    return 0; }\n";

struct Workload {
    name: &'static str,
    cmd: Command,
    /// One process busy for the whole run, so it must get CPU saturation evidence (the
    /// compiler loop is many short processes).
    sustained: bool,
}

fn workloads(dir: &Path, tmp: &Path) -> Vec<Workload> {
    let run = RUN.to_string();
    let mut out = Vec::new();
    let mut add = |name, program: &Path, args: &[&str]| {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(dir);
        out.push(Workload {
            name,
            cmd,
            sustained: !name.starts_with("gcc"),
        });
    };
    add(
        "stress-ng --cpu 1",
        "stress-ng".as_ref(),
        &["--cpu", "1", "--timeout", &format!("{run}s"), "--quiet"],
    );
    add(
        "stress-ng --matrix 1",
        "stress-ng".as_ref(),
        &["--matrix", "1", "--timeout", &format!("{run}s"), "--quiet"],
    );
    add(
        "openssl speed",
        "openssl".as_ref(),
        &[
            "speed", "-seconds", &run, "-bytes", "16384", "-evp", "sha256",
        ],
    );
    // Compiles until it has run a window: gcc and its cc1, as, collect2 and ld.
    add(
        "gcc -O2 and ld",
        "/bin/sh".as_ref(),
        &[
            "-c",
            &format!(
                "end=$(($(date +%s) + {run})); while [ $(date +%s) -lt $end ]; do \
                 gcc -O2 -o big big.c || exit 1; done"
            ),
        ],
    );
    add(
        "NumPy matmul (BLAS)",
        "/usr/bin/python3".as_ref(),
        &[
            "-c",
            &format!(
                "import numpy as np, time\n\
                 a = np.random.rand(400, 400)\n\
                 end = time.time() + {run}\n\
                 while time.time() < end: a = np.tanh(a @ a / 400.0)\n"
            ),
        ],
    );
    add(
        "a program built and run from /tmp",
        &tmp.join("busy"),
        &[&run],
    );
    out
}

#[test]
fn benign_workloads_stay_below_medium_over_a_window() {
    if !root_or_skip("benign_workloads_stay_below_medium_over_a_window") {
        return;
    }
    let dir = scratch("benign");
    fs::write(dir.join("big.c"), big_c(400)).unwrap();
    // Built and run from /tmp, as users do on compute nodes.
    let tmp = Path::new("/tmp").join(format!("mw-benign-{}", std::process::id()));
    fs::create_dir_all(&tmp).unwrap();
    fs::write(tmp.join("busy.c"), BUSY_C).unwrap();
    let cc = Command::new("gcc")
        .args(["-O2", "-o", "busy", "busy.c"])
        .current_dir(&tmp)
        .status()
        .unwrap();
    assert!(cc.success(), "cannot build the /tmp program");

    let mut s = Sensor::start(
        "benign",
        &[
            "--saturation-window",
            &WINDOW.to_string(),
            "--stats-interval",
            "1",
        ],
    );
    let mut table = String::from(
        "\nworkload                              severity  rounding threads  reasons\n",
    );
    let mut failures = Vec::new();
    for mut w in workloads(&dir, &tmp) {
        let from = s.records().len();
        let started = Instant::now();
        let p = Proc::spawn(w.cmd.stdin(Stdio::null()).stdout(Stdio::null()));
        let pid = p.pid();
        // The threads that showed a non-default rounding mode, read while it still runs.
        std::thread::sleep(Duration::from_secs(RUN - 1));
        let rounding = s.status()["counters"]["rounding_threads"]
            .as_u64()
            .unwrap_or(0);
        let status = p.wait();
        assert!(status.success(), "{} failed: {status}", w.name);
        assert!(
            started.elapsed() >= Duration::from_secs(WINDOW),
            "{} ended early",
            w.name
        );
        s.settled(pid, Duration::from_secs(15));
        // Everything raised while it ran: its own process and any it started.
        let alerts: Vec<Value> = s.records()[from..]
            .iter()
            .filter(|r| r["kind"] == "alert")
            .cloned()
            .collect();
        let worst = alerts
            .iter()
            .max_by_key(|a| severity_rank(&a["severity"]))
            .cloned();
        let sev = worst.as_ref().map_or("none".to_string(), |a| {
            a["severity"].as_str().unwrap().to_string()
        });
        let reasons: Vec<String> = worst
            .as_ref()
            .and_then(|a| a["reasons"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|r| r["code"].as_str().unwrap_or("?").to_string())
            .collect();
        let _ = writeln!(
            table,
            "{:<37} {:<9} {:<17} {}",
            w.name,
            sev,
            rounding,
            reasons.join(", ")
        );
        // The window passed with the sensor watching: a sustained workload was seen busy.
        if w.sustained && !alerts.iter().any(|a| has_reason(a, "cpu_saturation")) {
            failures.push(format!(
                "{}: no cpu_saturation, so nothing was tested",
                w.name
            ));
        }
        if alerts.iter().any(|a| severity_rank(&a["severity"]) >= 2) {
            failures.push(format!("{}: {alerts:?}", w.name));
        }
    }
    let _ = fs::remove_dir_all(&tmp);
    eprintln!("{table}");
    assert!(
        failures.is_empty(),
        "benign workloads at medium or above:\n{failures:#?}{table}"
    );
}
