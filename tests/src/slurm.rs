//! A real one-node Slurm for the tests: munged, slurmctld and slurmd from Debian's packages,
//! with their own key, ports, state and spool under one folder, started once per test
//! binary and stopped when it exits. Jobs are submitted with `sbatch` and `srun` by an
//! ordinary user, as on a cluster.
use std::{
    fs,
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// Everything the cluster writes, root-owned.
pub const BASE: &str = "/run/minerwatch-test-slurm";
/// The unprivileged user jobs run as.
pub const USER: &str = "minerwatch-job";
/// The partition every job goes to.
pub const PARTITION: &str = "mwtest";

pub struct Slurm {
    pub conf: PathBuf,
    /// The node name, as Slurm knows it (the host name).
    pub node: String,
    pub uid: u32,
    gid: u32,
    /// munged, slurmctld, slurmd.
    daemons: Mutex<Vec<Child>>,
}

static CLUSTER: OnceLock<Slurm> = OnceLock::new();

/// The cluster, started on first use.
pub fn cluster() -> &'static Slurm {
    CLUSTER.get_or_init(|| {
        let s = Slurm::start();
        // SAFETY: `stop_at_exit` is an `extern "C" fn()` that touches only the static.
        unsafe { libc::atexit(stop_at_exit) };
        s
    })
}

extern "C" fn stop_at_exit() {
    if let Some(s) = CLUSTER.get() {
        s.stop();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (is Slurm installed? `cargo xtask setup`)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills the job steps of this test cluster that outlived their slurmd: slurmstepd
/// processes whose environment names this cluster's config (a real cluster's are left
/// alone).
fn kill_our_steps() {
    let ours = format!("SLURM_CONF={BASE}/slurm.conf");
    let Ok(dir) = fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let env = fs::read(e.path().join("environ")).unwrap_or_default();
        if comm.trim_end() == "slurmstepd" && env.split(|&b| b == 0).any(|v| v == ours.as_bytes()) {
            // SAFETY: plain kill(2) of a process this cluster started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A user's uid and primary gid.
fn ids(user: &str) -> (u32, u32) {
    let n = |flag: &str| -> u32 {
        run(Command::new("id").args([flag, user]))
            .trim()
            .parse()
            .unwrap()
    };
    (n("-u"), n("-g"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Kills what an earlier run left (its pid files, and job steps that outlived their
/// slurmd), so set-up is idempotent.
fn kill_leftovers(base: &Path) {
    kill_our_steps();
    for f in ["munge/pid", "slurmctld.pid", "slurmd.pid"] {
        if let Some(pid) = fs::read_to_string(base.join(f))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Slurm {
    fn start() -> Slurm {
        let base = Path::new(BASE);
        kill_leftovers(base);
        let _ = fs::remove_dir_all(base);
        for d in ["", "munge", "ctld", "spool"] {
            fs::create_dir_all(base.join(d)).unwrap();
        }
        if Command::new("id")
            .arg(USER)
            .output()
            .is_ok_and(|o| !o.status.success())
        {
            run(Command::new("useradd").args(["-M", "-s", "/bin/sh", "-d", "/nonexistent", USER]));
        }
        let (uid, gid) = ids(USER);
        let munge = base.join("munge");
        let (mu, mg) = ids("munge");
        run(Command::new("chown").args(["munge:munge"]).arg(&munge));
        run(Command::new("mungekey")
            .uid(mu)
            .gid(mg)
            .arg("-c")
            .arg("-k")
            .arg(munge.join("key")));
        let socket = munge.join("socket");
        let munged = Command::new("munged")
            .uid(mu)
            .gid(mg)
            .arg("-F")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", munge.join("key").display()))
            .arg(format!("--pid-file={}", munge.join("pid").display()))
            .arg(format!("--log-file={}", munge.join("log").display()))
            .arg(format!("--seed-file={}", munge.join("seed").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("munged (apt-get install munge)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "munged did not start: {:?}",
                fs::read_to_string(munge.join("log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let node = run(&mut Command::new("hostname")).trim().to_string();
        let mem_mb = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(1024, |kb| kb / 1024 / 2);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let conf = base.join("slurm.conf");
        let b = base.display();
        fs::write(
            &conf,
            format!(
                "ClusterName=minerwatch-test\n\
                 SlurmctldHost={node}\n\
                 SlurmctldPort={ctld}\n\
                 SlurmdPort={slurmd}\n\
                 SlurmUser=root\n\
                 AuthType=auth/munge\n\
                 AuthInfo=socket={sock}\n\
                 CredType=cred/munge\n\
                 ProctrackType=proctrack/cgroup\n\
                 TaskPlugin=task/cgroup\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core\n\
                 StateSaveLocation={b}/ctld\n\
                 SlurmdSpoolDir={b}/spool\n\
                 SlurmctldPidFile={b}/slurmctld.pid\n\
                 SlurmdPidFile={b}/slurmd.pid\n\
                 SlurmctldLogFile={b}/slurmctld.log\n\
                 SlurmdLogFile={b}/slurmd.log\n\
                 ReturnToService=2\n\
                 MpiDefault=none\n\
                 JobCompType=jobcomp/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 MinJobAge=600\n\
                 NodeName={node} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN\n\
                 PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP\n",
                ctld = free_port(),
                slurmd = free_port(),
                sock = socket.display(),
            ),
        )
        .unwrap();
        // Cores are not pinned, as at sites that do not: a job can use more than it asked.
        fs::write(
            base.join("cgroup.conf"),
            "CgroupPlugin=cgroup/v1\nConstrainCores=no\n",
        )
        .unwrap();
        let daemon = |prog: &str| {
            Command::new(prog)
                .args(["-D", "-f"])
                .arg(&conf)
                .env("SLURM_CONF", &conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{prog}: {e} (apt-get install slurm-wlm)"))
        };
        let daemons = vec![munged, daemon("slurmctld"), daemon("slurmd")];
        let s = Slurm {
            daemons: Mutex::new(daemons),
            conf,
            node,
            uid,
            gid,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = s.cmd("sinfo").args(["-h", "-o", "%T"]).output();
            if state.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Slurm node is not idle after 60 s: {}",
                fs::read_to_string(base.join("slurmd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    /// A Slurm command against this cluster.
    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("SLURM_CONF", &self.conf).stdin(Stdio::null());
        c
    }

    /// Submits `script` with `sbatch` as the test user, in account `account`; the job id.
    pub fn sbatch(&self, account: &str, extra: &[&str], script: &str) -> u64 {
        let dir = Path::new(BASE).join("jobs");
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!(
            "job-{}.sh",
            std::process::id() as u64 * 1000 + fastrand()
        ));
        fs::write(&file, format!("#!/bin/sh\n{script}\n")).unwrap();
        run(Command::new("chmod").arg("0755").arg(&file).arg(&dir));
        let out = run(self
            .as_user("sbatch")
            .args(["--parsable", "-A", account, "-p", PARTITION])
            .args(["-o", "/dev/null", "-D", "/"])
            .args(extra)
            .arg(&file));
        out.trim()
            .split(';')
            .next()
            .and_then(|j| j.parse().ok())
            .unwrap_or_else(|| panic!("sbatch said {out:?}"))
    }

    /// A command run as the test user, against this cluster.
    pub fn as_user(&self, prog: &str) -> Command {
        let mut c = self.cmd(prog);
        c.uid(self.uid)
            .gid(self.gid)
            .env("HOME", "/")
            .env("USER", USER);
        c
    }

    /// A copy of the program at `path` in a folder of the cluster's, readable by the test
    /// user and outside /tmp (a checkout under /tmp would make every job's program a
    /// `suspicious_exe_location`).
    pub fn install(&self, path: &str) -> String {
        let dir = Path::new(BASE).join("bin");
        fs::create_dir_all(&dir).unwrap();
        let name = Path::new(path).file_name().unwrap();
        let to = dir.join(name);
        if !to.exists() {
            let tmp = dir.join(format!(
                ".{}.{}",
                name.to_string_lossy(),
                std::process::id()
            ));
            fs::copy(path, &tmp).unwrap();
            fs::rename(&tmp, &to).unwrap();
        }
        to.to_string_lossy().into_owned()
    }

    /// Cancels a job (it may be over already).
    pub fn cancel(&self, job: u64) {
        let _ = self.cmd("scancel").arg(job.to_string()).output();
    }

    /// The job's state as squeue shows it (`RUNNING`, `COMPLETED`, ...).
    pub fn state(&self, job: u64) -> String {
        self.cmd("squeue")
            .args(["-h", "-t", "all", "-j", &job.to_string(), "-o", "%T"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    fn stop(&self) {
        // Jobs first, so no step outlives the cluster.
        let _ = self.cmd("scancel").args(["-u", USER]).status();
        std::thread::sleep(Duration::from_millis(300));
        let Ok(mut daemons) = self.daemons.lock() else {
            return;
        };
        for d in daemons.iter().rev() {
            // SAFETY: plain kill(2) of a child this process started and has not reaped.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for d in daemons.iter_mut() {
            while d.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        kill_our_steps();
    }
}

fn fastrand() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64)
}
