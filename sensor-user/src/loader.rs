//! Loads the embedded eBPF object and attaches its hooks. Owns the one table of hooks: what
//! each is for, and what detection is lost when it cannot attach. A hook that fails is
//! reported and the rest run.
use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, PerfEvent, RawTracePoint,
        TracePoint,
        perf_event::{HardwareEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use sensor_common::global;

use crate::btf::Btf;

/// How a program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Attach {
    TracePoint {
        category: &'static str,
        name: &'static str,
    },
    RawTracePoint {
        name: &'static str,
    },
    /// cgroup/connect4|6 (from the program's section) on the root of the cgroup v2 tree.
    CgroupConnect,
    /// cgroup_skb/egress on the root of the cgroup v2 tree.
    CgroupEgress,
    /// cpu-clock perf events, one per online CPU.
    CpuClock,
    /// Hardware perf events, one per online CPU, sampled every `HW_SAMPLE_PERIOD`.
    Hardware(HardwareEvent),
}

#[derive(Debug, Clone, Copy)]
pub struct Hook {
    pub program: &'static str,
    pub attach: Attach,
    pub purpose: &'static str,
    /// What a person loses when this hook is missing.
    pub lost: &'static str,
    /// Missing on many machines by nature (no hardware PMU in most VMs): its absence is
    /// reported but does not make the sensor degraded.
    pub optional: bool,
}

const fn tp(category: &'static str, name: &'static str) -> Attach {
    Attach::TracePoint { category, name }
}

/// Every hook, in attach order. Connect/state hooks precede the payload hooks so a connection
/// is never watched before its writes are seen.
pub const HOOKS: &[Hook] = &[
    Hook {
        program: "exec_enter",
        attach: tp("syscalls", "sys_enter_execve"),
        purpose: "argv of execve",
        lost: "command-line indicators for processes started by execve",
        optional: false,
    },
    Hook {
        program: "exec_enter_at",
        attach: tp("syscalls", "sys_enter_execveat"),
        purpose: "argv of execveat (fexecve, fileless execution)",
        lost: "command lines of processes started with execveat/fexecve",
        optional: false,
    },
    Hook {
        program: "exec_done",
        attach: tp("sched", "sched_process_exec"),
        purpose: "successful program execution",
        lost: "all new-process visibility (exe, argv, location, lineage)",
        optional: false,
    },
    Hook {
        program: "proc_fork",
        attach: Attach::RawTracePoint {
            name: "sched_process_fork",
        },
        purpose: "process creation (lineage)",
        lost: "parent chains of processes forked without exec",
        optional: false,
    },
    Hook {
        program: "proc_exit",
        attach: tp("sched", "sched_process_exit"),
        purpose: "process exit (clean-up)",
        lost: "timely forgetting of exited processes (the table is pruned from /proc instead)",
        optional: false,
    },
    Hook {
        program: "net_connect",
        attach: tp("syscalls", "sys_enter_connect"),
        purpose: "connect() destinations",
        lost: "all outbound connection visibility, and with it Stratum detection",
        optional: false,
    },
    Hook {
        program: "net_tcp_state",
        attach: tp("sock", "inet_sock_set_state"),
        purpose: "telling TCP connects from UDP",
        lost: "Stratum detection on new connections (no socket is watched)",
        optional: false,
    },
    Hook {
        program: "net_connect_ret",
        attach: tp("syscalls", "sys_exit_connect"),
        purpose: "connect() outcome",
        lost: "all outbound connection visibility, and with it Stratum detection",
        optional: false,
    },
    Hook {
        program: "net_sock_connect4",
        attach: Attach::CgroupConnect,
        purpose: "registering new IPv4 TCP sockets for first-bytes capture",
        lost: "Stratum detection on new IPv4 connections",
        optional: false,
    },
    Hook {
        program: "net_sock_connect6",
        attach: Attach::CgroupConnect,
        purpose: "registering new IPv6 TCP sockets for first-bytes capture",
        lost: "Stratum detection on new IPv6 connections",
        optional: false,
    },
    Hook {
        program: "net_egress",
        attach: Attach::CgroupEgress,
        purpose: "first bytes of watched TCP connections, from their packets",
        lost: "all Stratum detection",
        optional: false,
    },
    Hook {
        program: "cpu_sample",
        attach: Attach::CpuClock,
        purpose: "on-CPU sampling (cpu-clock) for saturation",
        lost: "CPU saturation evidence",
        optional: false,
    },
    Hook {
        program: "cpu_hw_cycles",
        attach: Attach::Hardware(HardwareEvent::CpuCycles),
        purpose: "hardware cycle samples (IPC)",
        lost: "IPC beside CPU saturation evidence (needs a hardware PMU; most VMs have none)",
        optional: true,
    },
    Hook {
        program: "cpu_hw_insns",
        attach: Attach::Hardware(HardwareEvent::Instructions),
        purpose: "hardware instruction samples (IPC)",
        lost: "IPC beside CPU saturation evidence (needs a hardware PMU; most VMs have none)",
        optional: true,
    },
];

#[derive(Debug, Clone, serde::Serialize)]
pub struct HookStatus {
    pub program: &'static str,
    pub attach_point: String,
    pub attached: bool,
    pub error: Option<String>,
    pub lost: &'static str,
    pub optional: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("must run as root (eBPF programs need CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)")]
    NotRoot,
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}")]
    Tracefs(std::io::Error),
    #[error("the kernel refused the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("no hook could attach; first error: {0}")]
    NothingAttached(String),
}

/// Offsets the programs need, from the kernel's BTF. Zero means unknown: the hooks that need
/// them fall back (no parent pid in exec events, no fork events).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Offsets {
    pub task_tgid: u32,
    pub task_real_parent: u32,
}

pub fn btf_offsets() -> Result<Offsets, crate::btf::BtfError> {
    let btf = Btf::from_sys_fs()?;
    Ok(Offsets {
        task_tgid: btf.member_offset("task_struct", "tgid")?,
        task_real_parent: btf.member_offset("task_struct", "real_parent")?,
    })
}

/// The eBPF object, built by build.rs for exactly this ABI.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/minerwatch"));

/// Where the cgroup v2 tree is mounted (`/sys/fs/cgroup` on unified systems,
/// `/sys/fs/cgroup/unified` on hybrid ones). Every process is somewhere in it.
pub fn cgroup2_root() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
    })
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Makes sure tracefs is reachable; some systems (this VM among them) do not mount it.
pub fn ensure_tracefs() -> Result<(), LoadError> {
    for p in [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ] {
        if Path::new(p).is_dir() {
            return Ok(());
        }
    }
    let ret = unsafe {
        // SAFETY: static NUL-terminated strings.
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(LoadError::Tracefs(std::io::Error::last_os_error()));
    }
    Ok(())
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    pub offsets: Option<Offsets>,
    pub offsets_error: Option<String>,
}

/// Loads the object with the sensor's pid and BTF offsets and attaches every hook it can.
pub fn load(sample_hz: u64) -> Result<Loaded, LoadError> {
    if !is_root() {
        return Err(LoadError::NotRoot);
    }
    ensure_tracefs()?;
    let (offsets, offsets_error) = match btf_offsets() {
        Ok(o) => (Some(o), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let o = offsets.unwrap_or_default();
    let me = std::process::id();
    let mut ebpf = EbpfLoader::new()
        .override_global(global::SENSOR_TGID, &me, true)
        .override_global(global::TASK_TGID_OFF, &o.task_tgid, true)
        .override_global(global::TASK_REAL_PARENT_OFF, &o.task_real_parent, true)
        .load(OBJECT)?;
    let hooks: Vec<HookStatus> = HOOKS
        .iter()
        .map(|h| attach(&mut ebpf, h, sample_hz))
        .collect();
    if !hooks.iter().any(|h| h.attached) {
        let first = hooks
            .iter()
            .find_map(|h| h.error.clone())
            .unwrap_or_default();
        return Err(LoadError::NothingAttached(first));
    }
    Ok(Loaded {
        ebpf,
        hooks,
        offsets,
        offsets_error,
    })
}

fn attach(ebpf: &mut Ebpf, hook: &Hook, sample_hz: u64) -> HookStatus {
    let attach_point = match hook.attach {
        Attach::TracePoint { category, name } => format!("tracepoint/{category}/{name}"),
        Attach::RawTracePoint { name } => format!("raw_tracepoint/{name}"),
        Attach::CgroupConnect => format!(
            "cgroup/{}@{}",
            if hook.program.ends_with('6') {
                "connect6"
            } else {
                "connect4"
            },
            cgroup2_root().unwrap_or_else(|| "?".into())
        ),
        Attach::CgroupEgress => format!(
            "cgroup_skb/egress@{}",
            cgroup2_root().unwrap_or_else(|| "?".into())
        ),
        Attach::CpuClock => format!("perf_event/cpu-clock@{sample_hz}Hz"),
        Attach::Hardware(e) => format!("perf_event/hardware/{e:?}"),
    };
    let result = try_attach(ebpf, hook, sample_hz);
    HookStatus {
        program: hook.program,
        attach_point,
        attached: result.is_ok(),
        error: result.err(),
        lost: hook.lost,
        optional: hook.optional,
    }
}

/// Error text with its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

fn try_attach(ebpf: &mut Ebpf, hook: &Hook, sample_hz: u64) -> Result<(), String> {
    let prog = ebpf
        .program_mut(hook.program)
        .ok_or_else(|| format!("program {} missing from the object", hook.program))?;
    match hook.attach {
        Attach::TracePoint { category, name } => {
            let p: &mut TracePoint = prog.try_into().map_err(|e| chain(&e))?;
            p.load().map_err(|e| chain(&e))?;
            p.attach(category, name).map_err(|e| chain(&e))?;
        }
        Attach::RawTracePoint { name } => {
            let p: &mut RawTracePoint = prog.try_into().map_err(|e| chain(&e))?;
            p.load().map_err(|e| chain(&e))?;
            p.attach(name).map_err(|e| chain(&e))?;
        }
        Attach::CgroupConnect | Attach::CgroupEgress => {
            let root = cgroup2_root().ok_or("no cgroup v2 hierarchy is mounted")?;
            let dir = std::fs::File::open(&root).map_err(|e| format!("{root}: {e}"))?;
            // aya attaches through a BPF link, which coexists with other programs on the same
            // cgroup (systemd's among them) and must be created without attach flags.
            if let Attach::CgroupEgress = hook.attach {
                let p: &mut CgroupSkb = prog.try_into().map_err(|e| chain(&e))?;
                p.load().map_err(|e| chain(&e))?;
                p.attach(dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
                    .map_err(|e| chain(&e))?;
            } else {
                let p: &mut CgroupSockAddr = prog.try_into().map_err(|e| chain(&e))?;
                p.load().map_err(|e| chain(&e))?;
                p.attach(dir, CgroupAttachMode::Single)
                    .map_err(|e| chain(&e))?;
            }
        }
        Attach::CpuClock | Attach::Hardware(_) => {
            let (config, policy) = match hook.attach {
                Attach::Hardware(e) => (
                    PerfEventConfig::Hardware(e),
                    SamplePolicy::Period(sensor_common::HW_SAMPLE_PERIOD),
                ),
                // A fixed period in nanoseconds: every sample stands for the same CPU time.
                _ => (
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    SamplePolicy::Period(1_000_000_000 / sample_hz.max(1)),
                ),
            };
            let p: &mut PerfEvent = prog.try_into().map_err(|e| chain(&e))?;
            p.load().map_err(|e| chain(&e))?;
            let cpus = online_cpus().map_err(|(_, e)| e.to_string())?;
            for cpu in cpus {
                p.attach(
                    config,
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    policy,
                    false,
                )
                .map_err(|e| format!("cpu {cpu}: {}", chain(&e)))?;
            }
        }
    }
    Ok(())
}
