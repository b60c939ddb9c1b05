//! Slurm jobs, against a real one-node Slurm (munged, slurmctld, slurmd) started once for
//! this file: jobs submitted with `sbatch` by an ordinary user are named in alerts with what
//! Slurm says of them; CPU outside every job is its own low finding; folders named like jobs
//! that slurmstepd did not make are no jobs.
#![expect(
    clippy::unwrap_used,
    reason = "test: a failed set-up step must fail loudly"
)]
use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use minerwatch_tests::{
    Collector, Proc, Sensor, has_reason, listener, root_or_skip, scratch, severity_rank,
    slurm::{self, cluster},
};
use serde_json::Value;

const CLIENT: &str = env!("CARGO_BIN_EXE_mw-client");
const WINDOW: &str = "3";

fn alert_where(s: &mut Sensor, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    s.wait_for(timeout, |r| r["kind"] == "alert" && pred(r))
        .unwrap_or_else(|| {
            panic!(
                "no such alert; alerts: {:#?}\nstderr: {}",
                s.records()
                    .into_iter()
                    .filter(|r| r["kind"] == "alert")
                    .collect::<Vec<_>>(),
                s.stderr_text()
            )
        })
}

#[test]
fn a_stratum_client_submitted_with_sbatch_names_its_job_user_account_and_partition() {
    if !root_or_skip("a_stratum_client_submitted_with_sbatch_names_its_job") {
        return;
    }
    let c = cluster();
    let client = c.install(CLIENT);
    let (_l, addr) = listener(0);
    let mut s = Sensor::start("slurm-stratum", &[]);
    let job = c.sbatch(
        "physics",
        &[],
        &format!("exec {client} stratum {addr} write"),
    );
    let alert = alert_where(&mut s, Duration::from_secs(30), |a| {
        a["job"] == job && has_reason(a, "stratum_protocol") && a["scope"] == "process"
    });
    // The job's own alert gathers it, under the job's id and what Slurm says of it.
    let gathered = alert_where(&mut s, Duration::from_secs(10), |a| {
        a["job"] == job && a["scope"] == "job"
    });
    c.cancel(job);
    // The job's start and end on this node are events of their own.
    let started = s
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "job" && r["job"] == job && r["what"] == "started"
        })
        .unwrap_or_else(|| panic!("no job start: {:?}", s.records()));
    assert_eq!(
        (
            started["account"].as_str(),
            started["user"].as_str(),
            started["job_verified"].as_bool()
        ),
        (Some("physics"), Some(slurm::USER), Some(true)),
        "{started}"
    );
    assert_eq!(started["cpus"], 1, "{started}");
    s.wait_for(Duration::from_secs(15), |r| {
        r["kind"] == "job" && r["job"] == job && r["what"] == "ended"
    })
    .unwrap_or_else(|| panic!("no job end after scancel: {:?}", s.records()));
    assert!(
        gathered["id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("job-{job}-")),
        "{gathered}"
    );
    assert_eq!(gathered["severity"], alert["severity"], "{gathered}");
    assert_eq!(
        (
            gathered["account"].as_str(),
            gathered["partition"].as_str(),
            gathered["user"].as_str()
        ),
        (Some("physics"), Some(slurm::PARTITION), Some(slurm::USER)),
        "{gathered}"
    );
    let why = gathered["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == "stratum_protocol")
        .unwrap_or_else(|| panic!("{gathered}"));
    assert!(
        why["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("pid {} (mw-client): ", alert["pid"])),
        "{gathered}"
    );
    assert!(severity_rank(&alert["severity"]) >= 3, "{alert}");
    assert_eq!(alert["account"], "physics", "{alert}");
    assert_eq!(alert["partition"], slurm::PARTITION, "{alert}");
    assert_eq!(alert["job_verified"], true, "{alert}");
    assert_eq!(alert["user"], slurm::USER, "{alert}");
    assert_eq!(alert["uid"], c.uid, "{alert}");
    assert_eq!(alert["scope"], "process", "{alert}");
    assert!(alert["sluid"].is_null(), "{alert}");
    let cgroup = alert["cgroup"].as_str().unwrap();
    assert!(
        cgroup.contains(&format!("/uid_{}/job_{job}/step_batch", c.uid)),
        "the job's own cgroup, not the one before slurmstepd moved it: {alert}"
    );
}

#[test]
fn cpu_outside_every_job_is_a_low_finding_and_inside_a_job_no_more_than_info() {
    if !root_or_skip("cpu_outside_every_job_is_a_low_finding") {
        return;
    }
    let c = cluster();
    let client = c.install(CLIENT);
    // Info too, so the job's saturation is seen to have been judged.
    let mut s = Sensor::start(
        "slurm-cpu",
        &["--saturation-window", WINDOW, "--min-severity", "info"],
    );
    // Outside any job: a login node's stray burner.
    let outside = Proc::spawn(
        Command::new(&client)
            .args(["burn", "8"])
            .stdin(Stdio::null()),
    );
    let pid = outside.pid();
    let job = c.sbatch("chemistry", &[], &format!("exec {client} burn 8"));
    let low = alert_where(&mut s, Duration::from_secs(20), |a| {
        a["pid"] == pid && has_reason(a, "outside_allocation")
    });
    assert_eq!(low["severity"], "low", "{low}");
    assert!(
        has_reason(&low, "cpu_saturation"),
        "saturation itself is evidence beside it: {low}"
    );
    outside.wait();
    // The same burner inside a job: saturation seen, in the job, and nothing above info.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.state(job) == "RUNNING" || c.state(job) == "PENDING" {
        assert!(Instant::now() < deadline, "job {job} did not end");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(2));
    let records = s.records();
    let in_job: Vec<&Value> = records
        .iter()
        .filter(|r| r["job"] == job && r["kind"] == "exec")
        .collect();
    assert!(
        !in_job.is_empty(),
        "the job's processes were seen: {records:?}"
    );
    let pids: Vec<&Value> = in_job.iter().map(|r| &r["pid"]).collect();
    let saturated = records.iter().any(|r| {
        r["kind"] == "alert" && pids.contains(&&r["pid"]) && has_reason(r, "cpu_saturation")
    });
    assert!(
        saturated,
        "the job's burner was seen saturating a core: {records:?}"
    );
    for a in records
        .iter()
        .filter(|r| r["kind"] == "alert" && pids.contains(&&r["pid"]))
    {
        assert!(a["severity"] == "info", "a job's CPU alone: {a}");
        assert!(!has_reason(a, "outside_allocation"), "{a}");
    }
    for a in records
        .iter()
        .filter(|r| r["kind"] == "alert" && r["pid"] == pid)
    {
        assert!(
            severity_rank(&a["severity"]) <= 1,
            "CPU alone stays below medium: {a}"
        );
    }
}

#[test]
fn a_job_that_uses_more_cpus_than_it_holds_is_over_its_allocation() {
    if !root_or_skip("a_job_that_uses_more_cpus_than_it_holds") {
        return;
    }
    let c = cluster();
    let client = c.install(CLIENT);
    let mut s = Sensor::start("slurm-over", &["--saturation-window", WINDOW]);
    // One CPU asked for, two burned: cores are not pinned here (ConstrainCores=no).
    let job = c.sbatch(
        "physics",
        &["-n", "1", "-c", "1"],
        &format!("{client} burn 8 & {client} burn 8; wait"),
    );
    let a = alert_where(&mut s, Duration::from_secs(25), |a| {
        a["job"] == job && has_reason(a, "over_allocation") && a["scope"] == "process"
    });
    c.cancel(job);
    let why = minerwatch_tests::reason_detail(&a, "over_allocation");
    assert!(
        why.starts_with(&format!("Slurm job {job} used ")) && why.ends_with(", 1 allocated"),
        "{why}"
    );
    assert_eq!(
        a["severity"], "low",
        "a policy breach, not a miner by itself: {a}"
    );
}

#[test]
fn an_allowed_account_is_shown_with_its_reason_and_loses_no_events() {
    if !root_or_skip("an_allowed_account_is_shown_with_its_reason") {
        return;
    }
    let c = cluster();
    let client = c.install(CLIENT);
    let dir = scratch("slurm-allow");
    let config = dir.join("minerwatch.toml");
    fs::write(
        &config,
        "[[allow]]\naccount = \"benchmark\"\nreason = \"the procurement's mining benchmark, ticket 4711\"\n",
    )
    .unwrap();
    let (_l, addr) = listener(0);
    let collector = Collector::start("slurm-collector", "127.0.0.1:0", &[]);
    let url = format!("http://{}", collector.addr);
    let spool = dir.join("spool");
    let mut s = Sensor::start(
        "slurm-allow",
        &[
            "--config",
            config.to_str().unwrap(),
            "--collector",
            &url,
            "--spool-dir",
            spool.to_str().unwrap(),
        ],
    );
    let allowed = c.sbatch(
        "benchmark",
        &[],
        &format!("exec {client} stratum {addr} write"),
    );
    let other = c.sbatch(
        "physics",
        &[],
        &format!("exec {client} stratum {addr} write"),
    );
    let a = alert_where(&mut s, Duration::from_secs(30), |a| {
        a["job"] == allowed && a["scope"] == "process" && has_reason(a, "stratum_protocol")
    });
    let b = alert_where(&mut s, Duration::from_secs(30), |a| {
        a["job"] == other && a["scope"] == "process" && has_reason(a, "stratum_protocol")
    });
    c.cancel(allowed);
    c.cancel(other);
    assert_eq!(
        a["allowed"], "account benchmark: the procurement's mining benchmark, ticket 4711",
        "{a}"
    );
    assert_eq!(a["severity"], "low", "allowed: seen, not paged on: {a}");
    assert!(b["allowed"].is_null(), "{b}");
    assert!(severity_rank(&b["severity"]) >= 3, "{b}");
    // Nothing behind the allowed alert was held back: its exec and its connect are there.
    let pid = a["pid"].clone();
    let records = s.records();
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "exec" && r["pid"] == pid && r["job"] == allowed),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "connect" && r["pid"] == pid && r["peer"] == addr.as_str()),
        "{records:?}"
    );
}

#[test]
fn a_job_slurm_does_not_answer_for_is_shown_by_its_id_unconfirmed() {
    if !root_or_skip("a_job_slurm_does_not_answer_for_is_shown_by_its_id_unconfirmed") {
        return;
    }
    let c = cluster();
    let client = c.install(CLIENT);
    let dir = scratch("slurm-silent");
    let config = dir.join("minerwatch.toml");
    // A controller that never answers, as far as the sensor can tell.
    fs::write(&config, "slurm_squeue = \"/nonexistent/squeue\"\n").unwrap();
    let (_l, addr) = listener(0);
    let mut s = Sensor::start(
        "slurm-silent",
        &[
            "--config",
            config.to_str().unwrap(),
            "--stats-interval",
            "1",
        ],
    );
    let job = c.sbatch(
        "physics",
        &[],
        &format!("exec {client} stratum {addr} write"),
    );
    let a = alert_where(&mut s, Duration::from_secs(30), |a| {
        a["job"] == job && a["scope"] == "process" && has_reason(a, "stratum_protocol")
    });
    c.cancel(job);
    assert!(severity_rank(&a["severity"]) >= 3, "{a}");
    assert_eq!(a["job_verified"], false, "{a}");
    assert!(a["account"].is_null() && a["partition"].is_null(), "{a}");
    let counters = s.wait_counters(Duration::from_secs(10), |c| {
        c["slurm_query_errors"].as_u64().unwrap_or(0) >= 1
    });
    assert!(
        counters["slurm_query_errors"].as_u64().unwrap_or(0) >= 1,
        "{counters}"
    );
}

/// A cgroup folder made for one test under a hierarchy's mount, removed (with every folder
/// the test made) when dropped.
struct Cgroup {
    top: PathBuf,
    leaf: PathBuf,
}

impl Cgroup {
    /// `rel` under `mount`; with `owner`, everything the test made is that user's, as a
    /// delegated subtree is.
    fn make(mount: &std::path::Path, rel: &str, owner: Option<u32>) -> Cgroup {
        let rel = rel.trim_start_matches('/');
        let top = mount.join(rel.split('/').next().unwrap());
        let leaf = mount.join(rel);
        fs::create_dir_all(&leaf).unwrap();
        if let Some(uid) = owner {
            let ok = Command::new("chown")
                .arg("-R")
                .arg(uid.to_string())
                .arg(&top)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        Cgroup { top, leaf }
    }

    /// Runs the Stratum client in this cgroup.
    fn stratum(&self, addr: &str) -> Proc {
        let procs = self.leaf.join("cgroup.procs");
        Proc::spawn(
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {} && exec {CLIENT} stratum {addr} write",
                    procs.display()
                ))
                .stdin(Stdio::null()),
        )
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Deepest first; a folder whose processes are still exiting is tried again.
        for _ in 0..20 {
            let mut dirs: Vec<PathBuf> = walk(&self.top);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in &dirs {
                let _ = fs::remove_dir(d);
            }
            if !self.top.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn walk(d: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![d.to_path_buf()];
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

/// Where a cgroup file system of `fstype` is mounted (for v1, the one holding `option`).
fn mount_of(fstype: &str, option: &str) -> PathBuf {
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| {
            f.len() > 3
                && f[2] == fstype
                && f[3].split(',').any(|o| o == option || option.is_empty())
        })
        .map(|f| PathBuf::from(f[1]))
        .unwrap_or_else(|| {
            panic!("no {fstype} {option} mount (this test is for the hybrid layout here)")
        })
}

#[test]
fn folders_named_like_jobs_are_jobs_only_under_slurmstepd_s_own() {
    if !root_or_skip("folders_named_like_jobs_are_jobs_only_under_slurmstepd_s_own") {
        return;
    }
    let c = cluster();
    let tag = std::process::id();
    let dir = scratch("slurm-anchors");
    // A 26.05-style SLUID layout under an anchor root made (named in the config), and the
    // same under a folder a user owns, named in the config too: a user's is never an anchor.
    let v2 = mount_of("cgroup2", "");
    let root_anchor = format!("/minerwatch-test-{tag}/slurmstepd.scope");
    let user_anchor = format!("/minerwatch-test-user-{tag}/slurmstepd.scope");
    let config = dir.join("minerwatch.toml");
    fs::write(
        &config,
        format!("slurm_cgroup_anchors = [{root_anchor:?}, {user_anchor:?}]\n"),
    )
    .unwrap();
    let sluid = "sEKNKTV3WPV500";
    let anchored = Cgroup::make(
        &v2,
        &format!("{root_anchor}/{sluid}/step_0/user/task_0"),
        None,
    );
    let users = Cgroup::make(&v2, &format!("{user_anchor}/{sluid}/step_0"), Some(c.uid));
    // A v1 folder a user made, named like slurmstepd's.
    let fake = Cgroup::make(
        &mount_of("cgroup", "freezer"),
        &format!("minerwatch-test-user-{tag}/uid_{}/job_99/step_0", c.uid),
        Some(c.uid),
    );
    let mut s = Sensor::start("slurm-anchors", &["--config", config.to_str().unwrap()]);
    let (_l, addr) = listener(0);
    let in_anchor = anchored.stratum(&addr);
    let in_users = users.stratum(&addr);
    let in_fake = fake.stratum(&addr);
    let a = alert_where(&mut s, Duration::from_secs(15), |a| {
        a["pid"] == in_anchor.pid() && has_reason(a, "stratum_protocol")
    });
    assert_eq!(a["sluid"], sluid, "{a}");
    assert!(a["job"].is_null(), "{a}");
    assert_eq!(
        a["job_verified"], false,
        "Slurm 22.05 cannot confirm a SLUID: {a}"
    );
    assert!(a["account"].is_null(), "{a}");
    for (p, what) in [
        (&in_users, "under a user's folder"),
        (&in_fake, "a user's job_99"),
    ] {
        let a = alert_where(&mut s, Duration::from_secs(15), |a| {
            a["pid"] == p.pid() && has_reason(a, "stratum_protocol")
        });
        assert!(a["job"].is_null() && a["sluid"].is_null(), "{what}: {a}");
    }
    drop((in_anchor, in_users, in_fake));
    let _ = s.stop_with(libc::SIGTERM);
}
