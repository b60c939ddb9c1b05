//! GPUs through NVML, with a stand-in `libnvidia-ml.so.1` built here from
//! `fixtures/nvml-standin.c` (NVML's C ABI, answering from a state file), since these
//! machines have no GPU: a process a GPU is busy for through the window gets GPU evidence, a
//! MIG GPU is said to report per instance, and without the library the status says GPUs are
//! unavailable and the sensor runs on.
#![expect(
    clippy::unwrap_used,
    reason = "test: a failed set-up step must fail loudly"
)]
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use minerwatch_tests::{Proc, Sensor, has_reason, reason_detail, root_or_skip, scratch, workspace};

/// The stand-in, compiled into `dir`: with `cc_layout`, writing the 32-byte process entries
/// of drivers built against the 12.2 header.
fn standin_with(dir: &Path, cc_layout: bool) -> PathBuf {
    let lib = dir.join("libnvidia-ml.so.1");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror"])
        .args(cc_layout.then_some("-DSTANDIN_CC_LAYOUT"))
        .arg("-o")
        .arg(&lib)
        .arg(workspace().join("tests/fixtures/nvml-standin.c"))
        .output()
        .expect("cc (Debian's gcc) builds the NVML stand-in");
    assert!(
        out.status.success(),
        "the stand-in does not build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

fn standin(dir: &Path) -> PathBuf {
    standin_with(dir, false)
}

fn config(dir: &Path, library: &Path) -> PathBuf {
    let c = dir.join("minerwatch.toml");
    fs::write(
        &c,
        format!("nvml_library = {:?}\n", library.to_str().unwrap()),
    )
    .unwrap();
    c
}

#[test]
fn a_process_that_keeps_a_gpu_busy_for_the_window_gets_gpu_evidence() {
    if root_or_skip("a_process_that_keeps_a_gpu_busy_for_the_window_gets_gpu_evidence") {
        gpu_evidence(false);
    }
}

#[test]
fn gpu_evidence_is_read_right_from_drivers_with_the_longer_process_entry() {
    if root_or_skip("gpu_evidence_is_read_right_from_drivers_with_the_longer_process_entry") {
        gpu_evidence(true);
    }
}

fn gpu_evidence(cc_layout: bool) {
    let dir = scratch(if cc_layout { "gpu-cc" } else { "gpu" });
    let lib = standin_with(&dir, cc_layout);
    let state = dir.join("nvml-state");
    let busy = Proc::spawn(Command::new("sleep").arg("30").stdin(Stdio::null()));
    let idle = Proc::spawn(Command::new("sleep").arg("30").stdin(Stdio::null()));
    // GPU 0: one process at 5 %, one at 98 % with 1 GiB (second, so its entry is read at
    // the driver's stride). GPU 1 is MIG-partitioned.
    fs::write(
        &state,
        format!(
            "gpus 2\nmig 1 1\nproc 0 {} 5 1048576\nproc 0 {} 98 1073741824\nproc 1 {} 0 4096\n",
            idle.pid(),
            busy.pid(),
            idle.pid()
        ),
    )
    .unwrap();
    let cfg = config(&dir, &lib);
    let mut s = Sensor::start_with_env(
        &dir,
        &dir.join("out.jsonl"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--saturation-window",
            "3",
        ],
        &[("MINERWATCH_NVML_STANDIN", &state)],
    );
    let a = s
        .wait_alert(busy.pid(), "gpu_saturation", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no GPU evidence: {:?}\n{}", s.records(), s.stderr_text()));
    let why = reason_detail(&a, "gpu_saturation");
    assert!(
        why.starts_with("GPU 0 at 98 % for ")
            && why.contains("outside any Slurm job (1024 MiB of GPU memory)"),
        "{why}"
    );
    assert_eq!(
        a["severity"], "low",
        "a busy GPU alone stays below medium: {a}"
    );
    let status = s.status();
    let gpu = status["gpu"].as_str().unwrap();
    assert!(
        gpu.starts_with("2 GPUs (NVML, driver standin-1.0)"),
        "{gpu}"
    );
    assert!(
        gpu.contains("GPU 1 in MIG mode") && gpu.contains("not per process"),
        "{gpu}"
    );
    assert_eq!(status["counters"]["gpus"], 2, "{status}");
    // The process at 5 % never fills the window; the busy one's evidence is told when it
    // starts, not at every tick.
    std::thread::sleep(Duration::from_secs(4));
    let told = s
        .records()
        .iter()
        .filter(|r| {
            r["kind"] == "finding" && r["code"] == "gpu_saturation" && r["pid"] == busy.pid()
        })
        .count();
    assert!(
        (1..=2).contains(&told),
        "{told} gpu_saturation events in ~5 s"
    );
    assert!(
        !s.alerts_for(idle.pid())
            .iter()
            .any(|a| has_reason(a, "gpu_saturation")),
        "{:?}",
        s.alerts_for(idle.pid())
    );
}

#[test]
fn without_nvml_the_status_says_gpus_are_unavailable() {
    if !root_or_skip("without_nvml_the_status_says_gpus_are_unavailable") {
        return;
    }
    let dir = scratch("gpu-none");
    let cfg = config(&dir, &dir.join("no-such/libnvidia-ml.so.1"));
    let s = Sensor::start_writing(
        &dir,
        &dir.join("out.jsonl"),
        &["--config", cfg.to_str().unwrap()],
    );
    let status = s.status();
    let gpu = status["gpu"].as_str().unwrap();
    assert!(gpu.starts_with("unavailable: cannot load "), "{gpu}");
    assert_eq!(status["counters"]["gpus"], 0, "{status}");
    assert_eq!(status["state"], "running", "{status}");
}

#[test]
fn a_job_keeping_a_gpu_busy_with_none_allocated_is_over_its_allocation() {
    if !root_or_skip("a_job_keeping_a_gpu_busy_with_none_allocated_is_over_its_allocation") {
        return;
    }
    let c = minerwatch_tests::slurm::cluster();
    let dir = scratch("gpu-job");
    let lib = standin(&dir);
    let state = dir.join("nvml-state");
    fs::write(&state, "gpus 1\n").unwrap();
    let cfg = config(&dir, &lib);
    let mut s = Sensor::start_with_env(
        &dir,
        &dir.join("out.jsonl"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--saturation-window",
            "3",
        ],
        &[("MINERWATCH_NVML_STANDIN", &state)],
    );
    let job = c.sbatch("physics", &["-n", "1"], "exec sleep 30");
    let exec = s
        .wait_for(Duration::from_secs(20), |r| {
            r["kind"] == "exec" && r["job"] == job && r["comm"] == "sleep"
        })
        .unwrap_or_else(|| panic!("the job's process: {:?}", s.records()));
    let pid = exec["pid"].as_u64().unwrap() as u32;
    fs::write(&state, format!("gpus 1\nproc 0 {pid} 98 1048576\n")).unwrap();
    // Both come from one window; they may reach the alert in two updates.
    let a = s
        .wait_for(Duration::from_secs(20), |r| {
            r["kind"] == "alert"
                && r["pid"] == pid
                && has_reason(r, "over_allocation")
                && has_reason(r, "gpu_saturation")
        })
        .unwrap_or_else(|| panic!("no over-allocation with GPU evidence: {:?}", s.records()));
    let why = reason_detail(&a, "over_allocation");
    assert!(
        why.starts_with(&format!("Slurm job {job} used 1.0 GPUs on this node for "))
            && why.ends_with(", 0 allocated"),
        "{why}"
    );
    assert!(has_reason(&a, "gpu_saturation"), "{a}");
    assert!(
        reason_detail(&a, "gpu_saturation").contains("inside a Slurm job"),
        "{a}"
    );
    // The job's alert gathers its GPU process.
    let gathered = s
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "alert" && r["scope"] == "job" && r["job"] == job
        })
        .unwrap_or_else(|| panic!("no job alert: {:?}", s.records()));
    assert!(has_reason(&gathered, "gpu_saturation"), "{gathered}");
    c.cancel(job);
}
