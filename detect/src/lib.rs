//! The detection engine: pure functions over evidence. No I/O, no aya, no tokio — findings
//! go in, alert updates come out, so every rule is tested with plain data.
//!
//! Each finding becomes a *reason* with a code, a weight and its evidence in words. An alert
//! is one per process; it is emitted when first raised and again only when a new reason
//! appears or the severity rises, never once a second.
#![forbid(unsafe_code)]

pub mod dns;
pub mod fanout;
pub mod flow;
pub mod indicators;
pub mod intel;
pub mod persistence;
pub mod rounding;
pub mod saturation;
pub mod slurm;
pub mod stratum;
pub mod tls;
pub mod tuning;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hashbrown::HashMap;

use crate::stratum::{Proxy, StratumCall};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// Severity of a total weight. One weak signal (weight ≤ 30) stays below high; Stratum on
    /// the wire (60) is high by itself; independent evidence adds up to critical.
    pub fn from_score(score: u32) -> Self {
        match score {
            90.. => Severity::Critical,
            60.. => Severity::High,
            30.. => Severity::Medium,
            15.. => Severity::Low,
            _ => Severity::Info,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// Reason codes: stable strings, documented in the README.
pub mod code {
    pub const STRATUM: &str = "stratum_protocol";
    pub const MINER_CMDLINE: &str = "miner_cmdline";
    pub const FAKE_KERNEL_THREAD: &str = "fake_kernel_thread";
    pub const EXE_LOCATION: &str = "suspicious_exe_location";
    pub const CPU_SATURATION: &str = "cpu_saturation";
    /// Sustained CPU on a Slurm node by a process in no job: a login node, a stray process.
    pub const OUTSIDE_ALLOCATION: &str = "outside_allocation";
    /// A job using more CPUs than Slurm allocated it.
    pub const OVER_ALLOCATION: &str = "over_allocation";
    /// Sustained use of a GPU by one process.
    pub const GPU_SATURATION: &str = "gpu_saturation";
    pub const MINER_PORT: &str = "miner_port";
    pub const RANDOMX: &str = "randomx_fingerprint";
    pub const POOL_INTEL: &str = "pool_intel";
    pub const LATERAL_SCAN: &str = "lateral_scan";
    pub const MINER_TUNING: &str = "miner_tuning";
    pub const POOL_LIKE_NAME: &str = "pool_like_name";
    /// A name the process looked up in DNS is a pool's (on a list), or looks like one.
    pub const POOL_DNS: &str = "pool_dns";
    pub const PERSISTENCE: &str = "persistence";
    pub const PROCESS_RENAME: &str = "process_rename";
    pub const RIVAL_KILL: &str = "rival_kill";
    pub const FLOW_SHAPE: &str = "flow_shape";
}

/// What a Slurm job holds on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Cpus,
    Gpus,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Cpus => "CPUs",
            Resource::Gpus => "GPUs",
        }
    }
}

/// Evidence about one process, produced by the sensor from kernel events.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    Stratum {
        call: StratumCall,
        peer: Option<SocketAddr>,
    },
    MinerCmdline {
        indicators: Vec<String>,
    },
    FakeKernelThread {
        comm: String,
        exe: String,
    },
    ExeLocation {
        exe: String,
        why: &'static str,
    },
    /// `ipc`: instructions per cycle over the last interval, where hardware counters exist.
    /// `slurm_node`: the node runs Slurm, where CPU outside a job is
    /// [`Finding::OutsideAllocation`]'s to weigh, not this one's.
    CpuSaturation {
        share: f64,
        secs: u64,
        in_job: bool,
        slurm_node: bool,
        ipc: Option<f64>,
    },
    /// Sustained CPU by a process in no Slurm job, on a node that runs Slurm.
    OutsideAllocation {
        share: f64,
        secs: u64,
    },
    /// One process kept a GPU's streaming multiprocessors busy for the window.
    GpuSaturation {
        gpu: u32,
        share: f64,
        secs: u64,
        in_job: bool,
        memory_bytes: u64,
    },
    /// A Slurm job's processes together used more CPUs (or GPUs) on this node than it holds
    /// here, for the saturation window (raised on its busiest process).
    OverAllocation {
        job: u64,
        resource: Resource,
        used: f64,
        allocated: u32,
        secs: u64,
    },
    MinerPort {
        peer: SocketAddr,
    },
    /// A connection to an address, or a command line naming a host, on a pool list.
    /// One of its connections talks like a pool's ([`flow::judge`]), while it burns CPU.
    FlowShape {
        peer: SocketAddr,
        shape: flow::Shape,
        /// The connection began with a TLS handshake.
        tls: bool,
    },
    /// The process killed another that looks like a miner, not one of its own children.
    RivalKill {
        pid: u32,
        /// Why it looks like a miner: its name, or its miner command line.
        looks: String,
        sig: u32,
    },
    /// The process renamed itself after it started.
    ProcessRename {
        old: String,
        new: String,
    },
    /// The process changed a file that makes a program permanent or hides it.
    Persistence {
        path: String,
        target: persistence::Target,
        change: persistence::Change,
        /// The writer is the package manager: its job, weighing little.
        package_manager: bool,
    },
    /// A host name not on any list, with a word pools use in their names: weak alone.
    PoolLikeName {
        what: PoolSighting,
        word: &'static str,
    },
    PoolIntel {
        /// What was on the list: the address connected to, or the host named.
        what: PoolSighting,
        /// The list entry that matched (`198.51.100.0/24`, `pool.example.org`).
        entry: String,
        /// The list it is on (`bundled`, or the feed's path).
        source: String,
    },
    /// The node tuned the way a RandomX miner wants it: MSRs made writable, huge pages.
    MinerTuning(tuning::Tuning),
    /// Many distinct addresses tried on the ports worms spread through.
    LateralScan(fanout::Scan),
    /// A thread whose context switches show RandomX's use of the rounding modes
    /// ([`rounding::Verdict::RandomX`]), over `secs`; `threads` of the process showed it.
    RandomxFingerprint {
        tid: u32,
        counts: rounding::Rounding,
        secs: u64,
        threads: usize,
    },
}

/// How a process met a listed pool.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolSighting {
    Connect(SocketAddr),
    /// Named on its command line.
    Cmdline(String),
    /// Asked for by name in a TLS ClientHello (SNI) on a connection to `peer`.
    Sni {
        name: String,
        peer: SocketAddr,
    },
    /// Looked up in DNS (the query, or its answer), through `server`.
    Lookup {
        name: String,
        server: SocketAddr,
    },
    /// A connection to `peer`, an address a DNS answer gave the process for `name`.
    Resolved {
        peer: SocketAddr,
        name: String,
    },
}

impl PoolSighting {
    /// The process met the name in DNS (`pool_dns`), not on its command line, in a
    /// ClientHello or at a connect to a listed address (`pool_intel`).
    pub fn is_lookup(&self) -> bool {
        matches!(
            self,
            PoolSighting::Lookup { .. } | PoolSighting::Resolved { .. }
        )
    }

    /// How the process met the name or address, for a person.
    fn describe(&self) -> String {
        match self {
            PoolSighting::Connect(peer) => format!("connection to {peer}"),
            PoolSighting::Cmdline(host) => format!("command line names {host}"),
            PoolSighting::Sni { name, peer } => {
                format!("TLS connection to {peer} asks for {name} (SNI)")
            }
            PoolSighting::Lookup { name, server } => {
                format!("looked up {name} in DNS (through {server})")
            }
            PoolSighting::Resolved { peer, name } => {
                format!("connection to {peer}, which the process looked up as {name}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reason {
    pub code: &'static str,
    pub detail: String,
    #[serde(skip)]
    pub weight: u32,
    /// Normal on HPC nodes: counts toward [`WEAK_CAP`] only. Every reason of a [`WEAK`]
    /// code, and a pool-like name looked up in DNS (`pool_dns` at weight 10; a listed one is
    /// strong).
    #[serde(skip)]
    pub weak: bool,
}

impl Finding {
    pub fn reason(&self) -> Reason {
        let (code, weight, detail) = match self {
            Finding::Stratum { call, peer } => {
                let mut d = match (call.dialect, call.http) {
                    (stratum::Dialect::SoloRpc, _) => format!(
                        "solo-mining call `{}` to a node daemon's RPC{}",
                        call.method,
                        if call.http { " over HTTP" } else { "" }
                    ),
                    (dialect, true) => format!(
                        "mining call `{}` ({} dialect) over HTTP",
                        call.method,
                        dialect.name()
                    ),
                    (dialect, false) => {
                        format!("Stratum `{}` ({} dialect)", call.method, dialect.name())
                    }
                };
                if let Some(p) = peer {
                    d += &format!(" to {p}");
                }
                match &call.proxy {
                    Some(Proxy::Socks4 { target }) => d += &format!(" through SOCKS4 to {target}"),
                    Some(Proxy::Socks5 { target }) => d += &format!(" through SOCKS5 to {target}"),
                    Some(Proxy::HttpConnect { target }) => {
                        d += &format!(" through HTTP CONNECT to {target}")
                    }
                    None => {}
                }
                if let Some(a) = &call.agent {
                    d += &format!(" with agent {a}");
                }
                if let Some(l) = &call.login {
                    d += &format!(", login {}", truncate(l, 24));
                }
                (code::STRATUM, 60, d)
            }
            Finding::MinerCmdline { indicators } => (
                code::MINER_CMDLINE,
                30,
                format!("command line has {}", indicators.join(", ")),
            ),
            Finding::FakeKernelThread { comm, exe } => (
                code::FAKE_KERNEL_THREAD,
                30,
                format!("named `{comm}` like a kernel thread but runs user-space executable {exe}"),
            ),
            Finding::ExeLocation { exe, why } => {
                (code::EXE_LOCATION, 15, format!("executable {exe} {why}"))
            }
            Finding::CpuSaturation {
                share,
                secs,
                in_job,
                slurm_node,
                ipc,
            } => (
                code::CPU_SATURATION,
                if *in_job || *slurm_node { 5 } else { 15 },
                format!(
                    "{:.0} % of a core for {} {}{}",
                    share * 100.0,
                    human_secs(*secs),
                    if *in_job {
                        "inside a Slurm job"
                    } else {
                        "outside any Slurm job"
                    },
                    ipc.map(|i| format!(" (IPC {i:.2})")).unwrap_or_default()
                ),
            ),
            Finding::OutsideAllocation { share, secs } => (
                code::OUTSIDE_ALLOCATION,
                10,
                format!(
                    "{:.0} % of a core for {} by a process in no job allocation, on a Slurm node",
                    share * 100.0,
                    human_secs(*secs)
                ),
            ),
            Finding::GpuSaturation {
                gpu,
                share,
                secs,
                in_job,
                memory_bytes,
            } => (
                code::GPU_SATURATION,
                if *in_job { 5 } else { 15 },
                format!(
                    "GPU {gpu} at {:.0} % for {} {} ({} MiB of GPU memory)",
                    share * 100.0,
                    human_secs(*secs),
                    if *in_job {
                        "inside a Slurm job"
                    } else {
                        "outside any Slurm job"
                    },
                    memory_bytes >> 20
                ),
            ),
            Finding::OverAllocation {
                job,
                resource,
                used,
                allocated,
                secs,
            } => (
                code::OVER_ALLOCATION,
                15,
                format!(
                    "Slurm job {job} used {used:.1} {} on this node for {}, {} allocated",
                    resource.name(),
                    human_secs(*secs),
                    allocated
                ),
            ),
            Finding::MinerPort { peer } => (
                code::MINER_PORT,
                10,
                format!("connection to {peer}, a port mining pools commonly use"),
            ),
            Finding::PoolIntel {
                what,
                entry,
                source,
            } => (
                if what.is_lookup() {
                    code::POOL_DNS
                } else {
                    code::POOL_INTEL
                },
                45,
                format!("{}, on the pool list {source} as {entry}", what.describe()),
            ),
            Finding::FlowShape { peer, shape, tls } => {
                let t = &shape.totals;
                (
                    code::FLOW_SHAPE,
                    15,
                    format!(
                        "{}connection to {peer} open {}, talking like a pool's: {} of at most \
                         {} B, {} unasked every {:.1} s on average ({} ±{:.0} %), {}, {} B out \
                         and {} B in; while the process burns CPU",
                        if *tls { "TLS " } else { "" },
                        human_secs(t.age_secs),
                        count_of(t.writes.into(), "client write"),
                        t.write_max,
                        count_of(t.pushes.into(), "server push"),
                        shape.push_every,
                        if shape.periodic() {
                            "periodic"
                        } else {
                            "irregular"
                        },
                        shape.spread * 100.0,
                        count_of(t.replies.into(), "reply"),
                        group_thousands(t.out_bytes),
                        group_thousands(t.in_bytes),
                    ),
                )
            }
            Finding::RivalKill { pid, looks, sig } => (
                code::RIVAL_KILL,
                15,
                format!(
                    "sent {} to process {pid} ({looks}), not a child of its own, as miners do \
                     to rivals on a node they take over",
                    if *sig == 9 { "SIGKILL" } else { "SIGTERM" }
                ),
            ),
            Finding::ProcessRename { old, new } => (
                code::PROCESS_RENAME,
                10,
                format!(
                    "renamed itself from `{old}` to `{new}` after it started (prctl or \
                     /proc/self/comm)"
                ),
            ),
            Finding::Persistence {
                path,
                target,
                change,
                package_manager,
            } => (
                code::PERSISTENCE,
                if *package_manager { 5 } else { target.weight() },
                format!(
                    "{} {path}, {}{}",
                    change.verb(),
                    target.describe(),
                    if *package_manager {
                        ", as the package manager (which does this for a living)"
                    } else {
                        ""
                    }
                ),
            ),
            Finding::PoolLikeName { what, word } => (
                if what.is_lookup() {
                    code::POOL_DNS
                } else {
                    code::POOL_LIKE_NAME
                },
                10,
                format!("{}, which has the pool-like word `{word}`", what.describe()),
            ),
            Finding::MinerTuning(t) => match t {
                tuning::Tuning::Msr(what) => (
                    code::MINER_TUNING,
                    40,
                    format!(
                        "{what}: makes model-specific registers writable, as XMRig's MSR mod \
                         does to speed up RandomX"
                    ),
                ),
                tuning::Tuning::HugePages(what) => (
                    code::MINER_TUNING,
                    20,
                    format!("{what}: reserves huge pages, which RandomX wants"),
                ),
            },
            Finding::LateralScan(scan) => (
                code::LATERAL_SCAN,
                15,
                format!(
                    "tried {} addresses on port {} within {}, as worms spreading from a mining \
                     node do",
                    scan.targets,
                    scan.ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    human_secs(scan.secs.max(1))
                ),
            ),
            Finding::RandomxFingerprint {
                tid,
                counts: c,
                secs,
                threads,
            } => (
                code::RANDOMX,
                55,
                format!(
                    "RandomX rounding-mode switches in {:.0} % of {} context switches of thread {tid} \
                     over {} (down {}, up {}, toward zero {}: every mode, as RandomX sets them){}",
                    c.share() * 100.0,
                    group_thousands(c.switches),
                    human_secs(*secs),
                    c.down,
                    c.up,
                    c.toward_zero,
                    match threads {
                        0 | 1 => String::new(),
                        n => format!("; {n} threads of the process show it"),
                    }
                ),
            ),
        };
        Reason {
            code,
            detail,
            weight,
            weak: WEAK.contains(&code) || matches!(self, Finding::PoolLikeName { .. }),
        }
    }
}

impl Finding {
    /// The finding's facts by name, for machines: what the detail says in words, as values a
    /// SIEM can filter on. Names are stable; values are plain strings.
    pub fn facts(&self) -> Vec<(&'static str, String)> {
        fn sighting(what: &PoolSighting, out: &mut Vec<(&'static str, String)>) {
            let (how, rest): (&str, Vec<(&'static str, String)>) = match what {
                PoolSighting::Connect(peer) => ("connect", vec![("peer", peer.to_string())]),
                PoolSighting::Cmdline(host) => ("cmdline", vec![("name", host.clone())]),
                PoolSighting::Sni { name, peer } => (
                    "sni",
                    vec![("name", name.clone()), ("peer", peer.to_string())],
                ),
                PoolSighting::Lookup { name, server } => (
                    "lookup",
                    vec![("name", name.clone()), ("server", server.to_string())],
                ),
                PoolSighting::Resolved { peer, name } => (
                    "resolved",
                    vec![("name", name.clone()), ("peer", peer.to_string())],
                ),
            };
            out.push(("seen_as", how.to_string()));
            out.extend(rest);
        }
        let mut f = Vec::new();
        match self {
            Finding::Stratum { call, peer } => {
                f.push(("method", call.method.clone()));
                f.push(("dialect", call.dialect.name().to_string()));
                if let Some(p) = peer {
                    f.push(("peer", p.to_string()));
                }
            }
            Finding::MinerCmdline { indicators } => f.push(("indicators", indicators.join(", "))),
            Finding::FakeKernelThread { comm, exe } => {
                f.push(("comm", comm.clone()));
                f.push(("exe", exe.clone()));
            }
            Finding::ExeLocation { exe, .. } => f.push(("exe", exe.clone())),
            Finding::CpuSaturation { share, secs, .. }
            | Finding::OutsideAllocation { share, secs } => {
                f.push(("share", format!("{share:.2}")));
                f.push(("seconds", secs.to_string()));
            }
            Finding::GpuSaturation {
                gpu,
                share,
                secs,
                memory_bytes,
                ..
            } => f.extend([
                ("gpu", gpu.to_string()),
                ("share", format!("{share:.2}")),
                ("seconds", secs.to_string()),
                ("memory_bytes", memory_bytes.to_string()),
            ]),
            Finding::OverAllocation {
                job,
                resource,
                used,
                allocated,
                secs,
            } => f.extend([
                ("job", job.to_string()),
                ("resource", resource.name().to_ascii_lowercase()),
                ("used", format!("{used:.2}")),
                ("allocated", allocated.to_string()),
                ("seconds", secs.to_string()),
            ]),
            Finding::MinerPort { peer } => f.push(("peer", peer.to_string())),
            Finding::FlowShape { peer, shape, tls } => {
                let t = &shape.totals;
                f.extend([
                    ("peer", peer.to_string()),
                    ("tls", tls.to_string()),
                    ("age_seconds", t.age_secs.to_string()),
                    ("client_writes", t.writes.to_string()),
                    ("largest_write_bytes", t.write_max.to_string()),
                    ("server_pushes", t.pushes.to_string()),
                    ("server_replies", t.replies.to_string()),
                    ("push_every_seconds", format!("{:.1}", shape.push_every)),
                    ("push_spread", format!("{:.2}", shape.spread)),
                    ("bytes_out", t.out_bytes.to_string()),
                    ("bytes_in", t.in_bytes.to_string()),
                ]);
            }
            Finding::RivalKill { pid, looks, sig } => {
                f.push(("target_pid", pid.to_string()));
                f.push(("target_looks", looks.clone()));
                f.push(("signal", sig.to_string()));
            }
            Finding::ProcessRename { old, new } => {
                f.push(("old_name", old.clone()));
                f.push(("new_name", new.clone()));
            }
            Finding::Persistence {
                path,
                target,
                change,
                package_manager,
            } => {
                f.push(("path", path.clone()));
                f.push(("target", target.code().to_string()));
                f.push(("change", change.verb().to_string()));
                f.push(("package_manager", package_manager.to_string()));
            }
            Finding::PoolLikeName { what, word } => {
                sighting(what, &mut f);
                f.push(("word", word.to_string()));
            }
            Finding::PoolIntel {
                what,
                entry,
                source,
            } => {
                sighting(what, &mut f);
                f.push(("entry", entry.clone()));
                f.push(("list", source.clone()));
            }
            Finding::MinerTuning(t) => match t {
                tuning::Tuning::Msr(what) => {
                    f.extend([("kind", "msr".into()), ("what", what.clone())])
                }
                tuning::Tuning::HugePages(what) => {
                    f.extend([("kind", "huge_pages".into()), ("what", what.clone())])
                }
            },
            Finding::LateralScan(scan) => {
                f.push(("targets", scan.targets.to_string()));
                f.push((
                    "ports",
                    scan.ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ));
                f.push(("seconds", scan.secs.to_string()));
            }
            Finding::RandomxFingerprint {
                tid,
                counts,
                secs,
                threads,
            } => {
                f.extend([
                    ("tid", tid.to_string()),
                    ("switches", counts.switches.to_string()),
                    ("down", counts.down.to_string()),
                    ("up", counts.up.to_string()),
                    ("toward_zero", counts.toward_zero.to_string()),
                    ("seconds", secs.to_string()),
                    ("threads", threads.to_string()),
                ]);
            }
        }
        f
    }
}

/// Reasons that are normal on HPC nodes: running from /tmp or scratch, sustained CPU, a
/// port pools also use, fan-out to many hosts, a host name with a word like `pool`. However
/// many of them a process has, together they weigh at most [`WEAK_CAP`], below medium: only a miner-specific reason (Stratum, the fingerprint, a
/// miner command line, ...) takes an alert to medium and above.
pub const WEAK: &[&str] = &[
    code::EXE_LOCATION,
    code::CPU_SATURATION,
    code::OUTSIDE_ALLOCATION,
    code::OVER_ALLOCATION,
    code::GPU_SATURATION,
    code::MINER_PORT,
    code::LATERAL_SCAN,
    code::POOL_LIKE_NAME,
    code::PROCESS_RENAME,
    code::RIVAL_KILL,
    code::FLOW_SHAPE,
];

/// The most that [`WEAK`] reasons add up to.
pub const WEAK_CAP: u32 = 29;

/// The total weight of `reasons`, with the weak ones capped.
pub fn score<'a>(reasons: impl IntoIterator<Item = &'a Reason>) -> u32 {
    let (mut strong, mut weak) = (0, 0);
    for r in reasons {
        if r.weak {
            weak += r.weight;
        } else {
            strong += r.weight;
        }
    }
    strong + weak.min(WEAK_CAP)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}

/// `1204` as `1,204`.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n` things, in English: "1 reply", "3 replies", "2 server pushes".
fn count_of(n: u64, one: &str) -> String {
    let many = if let Some(stem) = one.strip_suffix('y') {
        format!("{stem}ies")
    } else if one.ends_with("sh") || one.ends_with('s') {
        format!("{one}es")
    } else {
        format!("{one}s")
    };
    format!(
        "{} {}",
        group_thousands(n),
        if n == 1 { one } else { &many }
    )
}

pub fn human_secs(s: u64) -> String {
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        _ => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// An alert as the engine last decided it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Alert {
    /// Stable for the life of the process: `<pid>-<first seen ns>`.
    pub id: String,
    pub pid: u32,
    pub severity: Severity,
    pub score: u32,
    /// Strongest first.
    pub reasons: Vec<Reason>,
    /// 0 when first raised, then +1 each time it is re-emitted with more evidence.
    pub update: u32,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

#[derive(Debug)]
struct State {
    id: String,
    first_seen_ns: u64,
    /// One entry per reason code: the latest evidence of that kind.
    reasons: BTreeMap<&'static str, Reason>,
    emitted_severity: Option<Severity>,
    emitted_codes: usize,
    updates: u32,
}

/// The verdict about one process: its reasons so far and what was last emitted. It lives in
/// the process's record, so it goes when the process goes; a new process reusing the pid
/// starts with a new case.
#[derive(Debug, Default)]
pub struct Case {
    state: Option<State>,
}

impl Case {
    /// Adds a finding for `pid` observed at `now_ns`. Returns the alert when it is new, has a
    /// new reason, or rose in severity; `None` when nothing a person needs to see changed.
    pub fn observe(&mut self, pid: u32, now_ns: u64, finding: &Finding) -> Option<Alert> {
        let st = self.state.get_or_insert_with(|| State {
            id: format!("{pid}-{now_ns}"),
            first_seen_ns: now_ns,
            reasons: BTreeMap::new(),
            emitted_severity: None,
            emitted_codes: 0,
            updates: 0,
        });
        let r = finding.reason();
        match st.reasons.get(r.code) {
            // Keep the stronger of two pieces of evidence of one kind.
            Some(old) if old.weight > r.weight => {}
            _ => {
                st.reasons.insert(r.code, r);
            }
        }
        let score = score(st.reasons.values());
        let severity = Severity::from_score(score);
        let changed =
            st.emitted_severity.is_none_or(|s| severity > s) || st.reasons.len() > st.emitted_codes;
        if !changed {
            return None;
        }
        let update = if st.emitted_severity.is_some() {
            st.updates + 1
        } else {
            0
        };
        st.updates = update;
        st.emitted_severity = Some(severity);
        st.emitted_codes = st.reasons.len();
        let mut reasons: Vec<Reason> = st.reasons.values().cloned().collect();
        reasons.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.code.cmp(b.code)));
        Some(Alert {
            id: st.id.clone(),
            pid,
            severity,
            score,
            reasons,
            update,
            first_seen_ns: st.first_seen_ns,
            last_seen_ns: now_ns,
        })
    }

    /// The case has evidence of kind `code`.
    pub fn has(&self, code: &str) -> bool {
        self.state
            .as_ref()
            .is_some_and(|s| s.reasons.contains_key(code))
    }

    /// Something was raised about this process.
    pub fn is_open(&self) -> bool {
        self.state.is_some()
    }
}

/// Cases by pid, for callers without a process record of their own (tests, tools).
#[derive(Debug, Default)]
pub struct Engine {
    procs: HashMap<u32, Case>,
}

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    /// [`Case::observe`] for `pid`'s case.
    pub fn observe(&mut self, pid: u32, now_ns: u64, finding: &Finding) -> Option<Alert> {
        self.procs
            .entry(pid)
            .or_default()
            .observe(pid, now_ns, finding)
    }

    /// The process is gone; a new process reusing the pid starts afresh.
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    pub fn tracked(&self) -> usize {
        self.procs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stratum::Dialect;

    #[test]
    fn counts_read_as_english() {
        assert_eq!(count_of(1, "reply"), "1 reply");
        assert_eq!(count_of(3, "reply"), "3 replies");
        assert_eq!(count_of(2, "server push"), "2 server pushes");
        assert_eq!(count_of(1_200, "client write"), "1,200 client writes");
    }

    fn login() -> Finding {
        Finding::Stratum {
            call: StratumCall {
                dialect: Dialect::Monero,
                method: "login".into(),
                agent: Some("XMRig/6.16.0".into()),
                login: Some("44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft".into()),
                proxy: None,
                partial: false,
                http: false,
            },
            peer: Some("10.1.2.3:443".parse().unwrap()),
        }
    }

    fn burn(in_job: bool) -> Finding {
        Finding::CpuSaturation {
            share: 0.98,
            secs: 1200,
            in_job,
            slurm_node: false,
            ipc: None,
        }
    }

    #[test]
    fn on_a_slurm_node_cpu_outside_jobs_is_low_and_inside_is_info() {
        let outside = |e: &mut Engine| {
            let sat = Finding::CpuSaturation {
                share: 0.98,
                secs: 1200,
                in_job: false,
                slurm_node: true,
                ipc: None,
            };
            e.observe(7, 100, &sat);
            e.observe(
                7,
                100,
                &Finding::OutsideAllocation {
                    share: 0.98,
                    secs: 1200,
                },
            )
        };
        let mut e = Engine::new();
        let a = outside(&mut e).unwrap();
        assert_eq!(a.severity, Severity::Low);
        assert!(a.reasons.iter().any(|r| r.code == code::OUTSIDE_ALLOCATION));
        // Again and again: still low, never more by itself.
        for _ in 0..5 {
            assert!(outside(&mut e).is_none_or(|a| a.severity == Severity::Low));
        }
        let inside = Finding::CpuSaturation {
            share: 0.98,
            secs: 1200,
            in_job: true,
            slurm_node: true,
            ipc: None,
        };
        let mut e = Engine::new();
        assert!(
            e.observe(8, 100, &inside)
                .is_none_or(|a| a.severity == Severity::Info)
        );
    }

    #[test]
    fn saturation_says_how_much_how_long_where_and_ipc() {
        let r = Finding::CpuSaturation {
            share: 0.98,
            secs: 1200,
            in_job: false,
            slurm_node: false,
            ipc: Some(2.13),
        };
        assert_eq!(
            r.reason().detail,
            "98 % of a core for 20 min outside any Slurm job (IPC 2.13)"
        );
        assert_eq!(
            burn(true).reason().detail,
            "98 % of a core for 20 min inside a Slurm job"
        );
    }

    #[test]
    fn stratum_alone_is_high_and_says_why() {
        let mut e = Engine::new();
        let a = e.observe(7, 100, &login()).unwrap();
        assert_eq!((a.severity, a.pid, a.update), (Severity::High, 7, 0));
        assert_eq!(
            a.reasons[0].detail,
            "Stratum `login` (Monero/CryptoNote dialect) to 10.1.2.3:443 with agent XMRig/6.16.0, \
             login 44AFFq5kSiGBoZ4NMDwYtN18…"
        );
    }

    #[test]
    fn one_weak_signal_never_high() {
        for f in [
            burn(false),
            burn(true),
            Finding::MinerPort {
                peer: "127.0.0.1:3333".parse().unwrap(),
            },
            Finding::ExeLocation {
                exe: "/tmp/x".into(),
                why: "is in /tmp",
            },
            Finding::MinerCmdline {
                indicators: vec!["--donate-level".into()],
            },
            Finding::FakeKernelThread {
                comm: "[kworker/0:1]".into(),
                exe: "/tmp/k".into(),
            },
        ] {
            let a = Engine::new().observe(1, 0, &f).unwrap();
            assert!(a.severity < Severity::High, "{f:?} gave {:?}", a.severity);
        }
        assert_eq!(
            Engine::new().observe(1, 0, &burn(false)).unwrap().severity,
            Severity::Low
        );
        assert_eq!(
            Engine::new().observe(1, 0, &burn(true)).unwrap().severity,
            Severity::Info
        );
    }

    #[test]
    fn independent_evidence_raises_severity_and_updates_once() {
        let mut e = Engine::new();
        assert_eq!(e.observe(9, 1, &burn(false)).unwrap().update, 0);
        // The same evidence again is not news.
        assert_eq!(e.observe(9, 2, &burn(false)), None);
        let a = e.observe(9, 3, &login()).unwrap();
        assert_eq!(
            (a.severity, a.update, a.reasons.len()),
            (Severity::High, 1, 2)
        );
        assert_eq!(a.reasons[0].code, code::STRATUM);
        let a = e
            .observe(
                9,
                4,
                &Finding::MinerCmdline {
                    indicators: vec!["-a rx/0".into()],
                },
            )
            .unwrap();
        assert_eq!(
            (a.severity, a.update, a.id.as_str()),
            (Severity::Critical, 2, "9-1")
        );
        assert_eq!(e.observe(9, 5, &login()), None);
    }

    #[test]
    fn weak_reasons_together_stay_below_medium() {
        let mut e = Engine::new();
        e.observe(3, 1, &burn(false));
        e.observe(
            3,
            2,
            &Finding::ExeLocation {
                exe: "/tmp/solver".into(),
                why: "is in /tmp",
            },
        );
        let a = e.observe(
            3,
            3,
            &Finding::MinerPort {
                peer: "10.0.0.1:3333".parse().unwrap(),
            },
        );
        let a = a.unwrap();
        assert_eq!((a.score, a.severity), (WEAK_CAP, Severity::Low));
        // One miner-specific reason on top counts in full.
        let a = e.observe(3, 4, &fingerprint()).unwrap();
        assert_eq!((a.score, a.severity), (55 + WEAK_CAP, Severity::High));
    }

    #[test]
    fn a_pool_like_lookup_is_weak_pool_dns_and_a_listed_one_strong() {
        let server: SocketAddr = "10.0.0.53:53".parse().unwrap();
        let lookup = |name: &str| PoolSighting::Lookup {
            name: name.into(),
            server,
        };
        let like = Finding::PoolLikeName {
            what: lookup("xmr.example.org"),
            word: "xmr",
        };
        let listed = Finding::PoolIntel {
            what: lookup("eu.pool.example"),
            entry: "pool.example".into(),
            source: "bundled".into(),
        };
        let (r1, r2) = (like.reason(), listed.reason());
        assert_eq!((r1.code, r1.weak), (code::POOL_DNS, true));
        assert_eq!((r2.code, r2.weak), (code::POOL_DNS, false));
        let mut e = Engine::new();
        e.observe(5, 1, &burn(false));
        e.observe(
            5,
            2,
            &Finding::ExeLocation {
                exe: "/tmp/x".into(),
                why: "is in /tmp",
            },
        );
        // Weak with the other weak ones: capped, low.
        let a = e.observe(5, 3, &like).unwrap();
        assert_eq!((a.score, a.severity), (WEAK_CAP, Severity::Low));
        // The listed lookup replaces it (one reason per code, the stronger) and counts in full.
        let a = e.observe(5, 4, &listed).unwrap();
        assert_eq!((a.score, a.severity), (45 + 29, Severity::High));
        assert_eq!(
            a.reasons
                .iter()
                .filter(|r| r.code == code::POOL_DNS)
                .count(),
            1
        );
        // Seen at a connect or in a ClientHello, a name stays pool_intel / pool_like_name.
        let sni = PoolSighting::Sni {
            name: "eu.pool.example".into(),
            peer: "10.0.0.1:443".parse().unwrap(),
        };
        let r = Finding::PoolLikeName {
            what: sni,
            word: "pool",
        }
        .reason();
        assert_eq!((r.code, r.weak), (code::POOL_LIKE_NAME, true));
    }

    fn fingerprint() -> Finding {
        Finding::RandomxFingerprint {
            tid: 4015,
            counts: rounding::Rounding {
                switches: 1204,
                down: 230,
                up: 241,
                toward_zero: 227,
            },
            secs: 60,
            threads: 1,
        }
    }

    #[test]
    fn fingerprint_is_medium_alone_and_high_with_sustained_cpu() {
        let mut e = Engine::new();
        let a = e.observe(4, 1, &fingerprint()).unwrap();
        assert_eq!(a.severity, Severity::Medium);
        assert_eq!(
            a.reasons[0].detail,
            "RandomX rounding-mode switches in 58 % of 1,204 context switches of thread 4015 \
             over 60 s (down 230, up 241, toward zero 227: every mode, as RandomX sets them)"
        );
        // Inside a job sustained CPU weighs least, and still makes it high.
        assert_eq!(
            e.observe(4, 2, &burn(true)).unwrap().severity,
            Severity::High
        );
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1204), "1,204");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn forget_starts_afresh() {
        let mut e = Engine::new();
        e.observe(5, 1, &login());
        e.forget(5);
        let a = e.observe(5, 9, &login()).unwrap();
        assert_eq!((a.update, a.id.as_str()), (0, "5-9"));
        assert_eq!(e.tracked(), 1);
    }
}
