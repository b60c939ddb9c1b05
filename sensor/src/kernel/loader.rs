//! Loads the embedded eBPF object and attaches its hooks. Owns the one table of hooks: what
//! each is for, and what detection is lost when it cannot attach. A hook that fails is
//! reported and the rest run.
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, CgroupSysctl, PerfEvent,
        RawTracePoint,
        perf_event::{HardwareEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use minerwatch_common::{KernelOffsets, global};

use crate::kernel::btf::Btf;

/// How a program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Attach {
    RawTracePoint {
        name: &'static str,
    },
    /// A BTF-typed tracepoint (`tp_btf`), cheaper than a classic one: no record is filled.
    BtfTracePoint {
        name: &'static str,
    },
    /// cgroup/connect4|6 or sendmsg4|6 (the attach type is the program's section) on the
    /// root of the cgroup v2 tree.
    CgroupSockAddr(&'static str),
    /// cgroup_skb/egress on the root of the cgroup v2 tree.
    CgroupEgress,
    /// cgroup_skb/ingress on the root of the cgroup v2 tree.
    CgroupIngress,
    /// cgroup/sysctl on the root of the cgroup v2 tree.
    CgroupSysctl,
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
    /// A simpler program for the same attach point, for kernels that refuse this one.
    pub fallback: Option<Fallback>,
}

/// A hook's simpler stand-in, and what it does not do.
#[derive(Debug, Clone, Copy)]
pub struct Fallback {
    pub program: &'static str,
    pub lost: &'static str,
}

/// Every hook, in attach order. The connect hooks precede the payload hook so a connection
/// is never watched before its storage exists. None is a syscall tracepoint: enabling one
/// would put every syscall of every task on the node on the slow path.
pub const HOOKS: &[Hook] = &[
    Hook {
        program: "exec_done",
        attach: Attach::RawTracePoint {
            name: "sched_process_exec",
        },
        purpose: "successful program execution, with argv from the new image",
        lost: "all new-process visibility (exe, argv, location, lineage)",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "proc_fork",
        attach: Attach::RawTracePoint {
            name: "sched_process_fork",
        },
        purpose: "process creation (lineage)",
        lost: "parent chains of processes forked without exec",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "proc_exit",
        attach: Attach::RawTracePoint {
            name: "sched_process_exit",
        },
        purpose: "end of a process (its last thread)",
        lost: "timely forgetting of exited processes (the reconciliation with /proc does it later)",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "proc_rename",
        attach: Attach::RawTracePoint {
            name: "task_rename",
        },
        purpose: "a process's main thread renaming itself (prctl, /proc/self/comm)",
        lost: "renames: a miner that calls itself kworker after it started is not seen doing so",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "proc_kill",
        attach: Attach::RawTracePoint {
            name: "signal_generate",
        },
        purpose: "SIGKILL and SIGTERM one user process sends another (miners killing rivals)",
        lost: "rival_kill evidence",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "net_connect4",
        attach: Attach::CgroupSockAddr("connect4"),
        purpose: "IPv4 connects: TCP sockets followed, connected UDP reported",
        lost: "IPv4 connection visibility, and with it Stratum detection on IPv4",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "net_connect6",
        attach: Attach::CgroupSockAddr("connect6"),
        purpose: "IPv6 connects: TCP sockets followed, connected UDP reported",
        lost: "IPv6 connection visibility, and with it Stratum detection on IPv6",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "net_sendmsg4",
        attach: Attach::CgroupSockAddr("sendmsg4"),
        purpose: "destinations of unconnected IPv4 UDP sockets",
        lost: "IPv4 UDP destinations of unconnected sockets (DNS from some resolvers)",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "net_sendmsg6",
        attach: Attach::CgroupSockAddr("sendmsg6"),
        purpose: "destinations of unconnected IPv6 UDP sockets",
        lost: "IPv6 UDP destinations of unconnected sockets",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "net_tcp_state",
        attach: Attach::BtfTracePoint {
            name: "inet_sock_set_state",
        },
        purpose: "outcome of TCP connects, close of followed connections",
        lost: "TCP connect records and miner-port evidence; streams are kept until exit",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "net_egress",
        attach: Attach::CgroupEgress,
        purpose: "first bytes of followed TCP connections, from their packets",
        lost: "all Stratum detection",
        optional: false,
        fallback: Some(Fallback {
            program: "net_egress_plain",
            lost: "whitespace before a first message is not skipped, so 2 KiB of it hides a login (bpf_loop needs Linux 5.17)",
        }),
    },
    Hook {
        program: "net_ingress",
        attach: Attach::CgroupIngress,
        purpose: "DNS answers to followed UDP sockets (the queries leave through net_egress)",
        lost: "DNS answers: names a process looked up are not joined to the addresses it connects to",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "fpu_switch",
        attach: Attach::RawTracePoint {
            name: "x86_fpu_regs_deactivated",
        },
        purpose: "SSE rounding mode of each thread as it is switched out (RandomX fingerprint)",
        lost: "the RandomX fingerprint: a miner that hides its protocol raises at most medium",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "sysctl_write",
        attach: Attach::CgroupSysctl,
        purpose: "writes of vm.nr_* sysctls, with the writer (huge-page reservations)",
        lost: "huge-page reservations written to /proc/sys (a `sysctl` command line is still seen)",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "cpu_sample",
        attach: Attach::CpuClock,
        purpose: "on-CPU sampling (cpu-clock) for saturation",
        lost: "CPU saturation evidence",
        optional: false,
        fallback: None,
    },
    Hook {
        program: "cpu_hw_cycles",
        attach: Attach::Hardware(HardwareEvent::CpuCycles),
        purpose: "hardware cycle samples (IPC)",
        lost: "IPC beside CPU saturation evidence (needs a hardware PMU; most VMs have none)",
        optional: true,
        fallback: None,
    },
    Hook {
        program: "cpu_hw_insns",
        attach: Attach::Hardware(HardwareEvent::Instructions),
        purpose: "hardware instruction samples (IPC)",
        lost: "IPC beside CPU saturation evidence (needs a hardware PMU; most VMs have none)",
        optional: true,
        fallback: None,
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
    /// Attached as its fallback: what that costs, and why the full program was refused.
    pub degraded: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("must run as root (eBPF programs need CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)")]
    NotRoot,
    #[error("the kernel refused the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("no hook could attach; first error: {0}")]
    NothingAttached(String),
}

/// The offsets the programs need, from the kernel's BTF. A member that cannot be found is
/// left at zero and named in `missing`: the hooks that need it fall back as their docs say.
pub fn btf_offsets() -> Result<(KernelOffsets, Vec<String>), crate::kernel::btf::BtfError> {
    let btf = Btf::from_sys_fs()?;
    let mut missing = Vec::new();
    let mut get = |strukt: &str, member: &str| match btf.member_offset(strukt, member) {
        Ok(off) => off,
        Err(e) => {
            missing.push(e.to_string());
            0
        }
    };
    let mut o = KernelOffsets {
        task_tgid: get("task_struct", "tgid"),
        task_pid: get("task_struct", "pid"),
        task_comm: get("task_struct", "comm"),
        task_real_parent: get("task_struct", "real_parent"),
        task_mm: get("task_struct", "mm"),
        task_signal: get("task_struct", "signal"),
        mm_arg_start: get("mm_struct", "arg_start"),
        mm_arg_end: get("mm_struct", "arg_end"),
        signal_live: get("signal_struct", "live"),
        bprm_filename: get("linux_binprm", "filename"),
        sock_err: get("sock", "sk_err"),
        task_start_boottime: get("task_struct", "start_boottime"),
        mm_exe_file: get("mm_struct", "exe_file"),
        file_inode: get("file", "f_inode"),
        inode_ino: get("inode", "i_ino"),
        inode_sb: get("inode", "i_sb"),
        sb_dev: get("super_block", "s_dev"),
        task_cgroups: get("task_struct", "cgroups"),
        css_set_subsys: get("css_set", "subsys"),
        css_cgroup: get("cgroup_subsys_state", "cgroup"),
        cgroup_kn: get("cgroup", "kn"),
        kernfs_id: get("kernfs_node", "id"),
        ..KernelOffsets::ZERO
    };
    // The v1 cgroup key reads one `css_set.subsys` slot per mounted v1 hierarchy, by the
    // subsystem order /proc/cgroups shows; both must agree on how many subsystems there are.
    let v1 = crate::enrich::proc::CgroupV1::read();
    match btf.member_array_len("css_set", "subsys") {
        Ok(n) if n as usize == v1.subsystems => o.cgroup_v1_subsys = v1.mask(),
        Ok(n) => missing.push(format!(
            "css_set.subsys has {n} slots but /proc/cgroups lists {} subsystems",
            v1.subsystems
        )),
        Err(e) => missing.push(e.to_string()),
    }
    // The saved FPU registers moved behind `fpu.fpstate` in Linux 5.16; before that they
    // were `fpu.state` itself.
    match (
        btf.member_offset("fpu", "fpstate"),
        btf.member_offset("fpstate", "regs.xsave.i387.mxcsr"),
    ) {
        (Ok(ptr), Ok(mxcsr)) => (o.fpu_fpstate, o.fpu_mxcsr) = (ptr, mxcsr),
        (Err(e), _) | (_, Err(e)) => match btf.member_offset("fpu", "state.xsave.i387.mxcsr") {
            Ok(mxcsr) => o.fpu_mxcsr = mxcsr,
            Err(_) => missing.push(e.to_string()),
        },
    }
    // The exit hook reads `signal->live` whenever `task_signal` is known (`live` follows a
    // reference count, so it is never at offset 0).
    if o.signal_live == 0 {
        o.task_signal = 0;
    }
    Ok((o, missing))
}

/// The offsets by the member they locate, for people.
pub fn offset_table(o: &KernelOffsets) -> Vec<(&'static str, u32)> {
    vec![
        ("task_struct.tgid", o.task_tgid),
        ("task_struct.pid", o.task_pid),
        ("task_struct.comm", o.task_comm),
        ("task_struct.real_parent", o.task_real_parent),
        ("task_struct.mm", o.task_mm),
        ("task_struct.signal", o.task_signal),
        ("mm_struct.arg_start", o.mm_arg_start),
        ("mm_struct.arg_end", o.mm_arg_end),
        ("signal_struct.live", o.signal_live),
        ("linux_binprm.filename", o.bprm_filename),
        ("sock.sk_err", o.sock_err),
        ("task_struct.start_boottime", o.task_start_boottime),
        ("fpu.fpstate", o.fpu_fpstate),
        ("fpstate.regs.xsave.i387.mxcsr", o.fpu_mxcsr),
        ("mm_struct.exe_file", o.mm_exe_file),
        ("file.f_inode", o.file_inode),
        ("inode.i_ino", o.inode_ino),
        ("inode.i_sb", o.inode_sb),
        ("super_block.s_dev", o.sb_dev),
        ("task_struct.cgroups", o.task_cgroups),
        ("css_set.subsys", o.css_set_subsys),
        ("cgroup_subsys_state.cgroup", o.css_cgroup),
        ("cgroup.kn", o.cgroup_kn),
        ("kernfs_node.id", o.kernfs_id),
    ]
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

pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    pub offsets: KernelOffsets,
    /// Why some offsets are unknown (BTF missing, or members this kernel does not have).
    pub offsets_error: Option<String>,
}

/// Loads the object with the sensor's pid and BTF offsets and attaches every hook it can.
pub fn load(sample_hz: u64) -> Result<Loaded, LoadError> {
    if !is_root() {
        return Err(LoadError::NotRoot);
    }
    let (offsets, offsets_error) = match btf_offsets() {
        Ok((o, missing)) if missing.is_empty() => (o, None),
        Ok((o, missing)) => (o, Some(missing.join("; "))),
        Err(e) => (KernelOffsets::default(), Some(e.to_string())),
    };
    let me = std::process::id();
    let mut ebpf = EbpfLoader::new()
        .override_global(global::SENSOR_TGID, &me, true)
        .override_global(global::OFFSETS, &offsets, true)
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
        Attach::RawTracePoint { name } => format!("raw_tracepoint/{name}"),
        Attach::BtfTracePoint { name } => format!("tp_btf/{name}"),
        Attach::CgroupSockAddr(what) => format!(
            "cgroup/{what}@{}",
            cgroup2_root().unwrap_or_else(|| "?".into())
        ),
        Attach::CgroupEgress => format!(
            "cgroup_skb/egress@{}",
            cgroup2_root().unwrap_or_else(|| "?".into())
        ),
        Attach::CgroupIngress => format!(
            "cgroup_skb/ingress@{}",
            cgroup2_root().unwrap_or_else(|| "?".into())
        ),
        Attach::CgroupSysctl => format!(
            "cgroup/sysctl@{}",
            cgroup2_root().unwrap_or_else(|| "?".into())
        ),
        Attach::CpuClock => format!("perf_event/cpu-clock@{sample_hz}Hz"),
        Attach::Hardware(e) => format!("perf_event/hardware/{e:?}"),
    };
    let mut result = try_attach(ebpf, hook.program, hook.attach, sample_hz);
    let mut degraded = None;
    if let (Err(why), Some(fb)) = (&result, hook.fallback)
        && try_attach(ebpf, fb.program, hook.attach, sample_hz).is_ok()
    {
        tracing::warn!(hook = hook.program, fallback = fb.program, reason = %why, lost = fb.lost, "hook attached in its simpler form");
        degraded = Some(format!("{} ({why})", fb.lost));
        result = Ok(());
    }
    HookStatus {
        program: hook.program,
        attach_point,
        attached: result.is_ok(),
        error: result.err(),
        lost: hook.lost,
        optional: hook.optional,
        degraded,
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

fn try_attach(
    ebpf: &mut Ebpf,
    program: &str,
    attach: Attach,
    sample_hz: u64,
) -> Result<(), String> {
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?;
    match attach {
        Attach::RawTracePoint { name } => {
            let p: &mut RawTracePoint = prog.try_into().map_err(|e| chain(&e))?;
            p.load().map_err(|e| chain(&e))?;
            p.attach(name).map_err(|e| chain(&e))?;
        }
        Attach::BtfTracePoint { name } => {
            let btf = aya::Btf::from_sys_fs().map_err(|e| chain(&e))?;
            let p: &mut aya::programs::BtfTracePoint = prog.try_into().map_err(|e| chain(&e))?;
            p.load(name, &btf).map_err(|e| chain(&e))?;
            p.attach().map_err(|e| chain(&e))?;
        }
        Attach::CgroupSockAddr(_)
        | Attach::CgroupEgress
        | Attach::CgroupIngress
        | Attach::CgroupSysctl => {
            let root = cgroup2_root().ok_or("no cgroup v2 hierarchy is mounted")?;
            let dir = std::fs::File::open(&root).map_err(|e| format!("{root}: {e}"))?;
            // aya attaches through a BPF link, which coexists with other programs on the same
            // cgroup (systemd's among them) and must be created without attach flags.
            if let Attach::CgroupEgress | Attach::CgroupIngress = attach {
                let how = match attach {
                    Attach::CgroupIngress => CgroupSkbAttachType::Ingress,
                    _ => CgroupSkbAttachType::Egress,
                };
                let p: &mut CgroupSkb = prog.try_into().map_err(|e| chain(&e))?;
                p.load().map_err(|e| chain(&e))?;
                p.attach(dir, how, CgroupAttachMode::Single)
                    .map_err(|e| chain(&e))?;
            } else if let Attach::CgroupSysctl = attach {
                let p: &mut CgroupSysctl = prog.try_into().map_err(|e| chain(&e))?;
                p.load().map_err(|e| chain(&e))?;
                p.attach(dir, CgroupAttachMode::Single)
                    .map_err(|e| chain(&e))?;
            } else {
                let p: &mut CgroupSockAddr = prog.try_into().map_err(|e| chain(&e))?;
                p.load().map_err(|e| chain(&e))?;
                p.attach(dir, CgroupAttachMode::Single)
                    .map_err(|e| chain(&e))?;
            }
        }
        Attach::CpuClock | Attach::Hardware(_) => {
            let (config, policy) = match attach {
                Attach::Hardware(e) => (
                    PerfEventConfig::Hardware(e),
                    SamplePolicy::Period(minerwatch_common::HW_SAMPLE_PERIOD),
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
