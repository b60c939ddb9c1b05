//! The ABI shared by the eBPF programs and the `minerwatch` daemon.
//!
//! Data only: `#[repr(C)]` structs of fixed-width integers and byte arrays, with explicit
//! padding, and the constants both sides must agree on. Every wire struct has a size assert,
//! so a layout change on one side fails the build instead of corrupting events.
#![no_std]

use core::mem::size_of;

/// Names of the maps in the eBPF object.
pub mod map {
    /// BPF ring buffer for lifecycle events (exec, fork, exit, connect): large, and lossy
    /// under floods, with every loss counted.
    pub const EVENTS: &str = "EVENTS";
    /// BPF ring buffer for rare, decisive events (first bytes of connections): a flood of
    /// lifecycle events cannot crowd these out.
    pub const EVENTS_HI: &str = "EVENTS_HI";
    /// Per-CPU array of `u64` counters indexed by [`crate::stat`].
    pub const STATS: &str = "STATS";
    /// Socket-local storage ([`SockState`]) of every socket the sensor follows: freed by the
    /// kernel with the socket, so it has no capacity to run out of and nothing to evict.
    pub const SOCKS: &str = "SOCKS";
    /// cpu-clock samples per thread group id.
    pub const CPU_SAMPLES: &str = "CPU_SAMPLES";
    /// Hardware cycle-counter overflows per thread group id (nodes with a PMU).
    pub const HW_CYCLES: &str = "HW_CYCLES";
    /// Hardware instruction-counter overflows per thread group id (nodes with a PMU).
    pub const HW_INSNS: &str = "HW_INSNS";
    /// Each process's use of the decisive ring this second ([`crate::PayloadBudget`]).
    pub const PAYLOAD_BUDGETS: &str = "PAYLOAD_BUDGETS";
    /// Rounding modes seen at context switch, per thread ([`crate::FpuThread`]), for the
    /// threads that ever showed a non-default one.
    pub const FPU_THREADS: &str = "FPU_THREADS";
    /// Pool addresses and networks (LPM trie keyed by [`crate::PoolAddr`], value: the id of
    /// the list entry), matched at every connect.
    pub const POOL_ADDRS: &str = "POOL_ADDRS";
}

/// Names of the read-only globals the loader sets before loading.
pub mod global {
    /// Thread group id of the sensor itself; every hook skips it.
    pub const SENSOR_TGID: &str = "SENSOR_TGID";
    /// The [`crate::KernelOffsets`] of the running kernel, from BTF.
    pub const OFFSETS: &str = "OFFSETS";
}

/// Byte offsets of the kernel struct members the programs read, from the running kernel's
/// BTF (Rust eBPF has no CO-RE yet). One global, set once by the loader; zero means unknown,
/// and the hooks that need a field then fall back as their docs say.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.pid` (the thread id; equal to `tgid` for a group leader)
    pub task_pid: u32,
    /// `task_struct.comm`
    pub task_comm: u32,
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `task_struct.signal`
    pub task_signal: u32,
    /// `mm_struct.arg_start` (`arg_end` follows it)
    pub mm_arg_start: u32,
    /// `mm_struct.arg_end`
    pub mm_arg_end: u32,
    /// `signal_struct.live` (threads of the group still alive)
    pub signal_live: u32,
    /// `linux_binprm.filename`
    pub bprm_filename: u32,
    /// `sock.sk_err` (why a connect failed)
    pub sock_err: u32,
    /// `task_struct.start_boottime`: with the tgid, a process's identity (what
    /// `/proc/<pid>/stat` shows as `starttime`, in clock ticks).
    pub task_start_boottime: u32,
    /// `fpu.fpstate` (Linux 5.16+: the saved registers hang off a pointer), or 0 where the
    /// registers sit inside `struct fpu` itself (older kernels, `fpu.state`).
    pub fpu_fpstate: u32,
    /// Where the saved MXCSR is: inside `struct fpstate` (`regs.xsave.i387.mxcsr`) when
    /// `fpu_fpstate` is set, else inside `struct fpu` (`state.xsave.i387.mxcsr`). 0: unknown,
    /// and the rounding-mode hook does nothing.
    pub fpu_mxcsr: u32,
    /// `mm_struct.exe_file` (what `/proc/<pid>/exe` shows)
    pub mm_exe_file: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
    /// `task_struct.cgroups` (the task's `css_set`)
    pub task_cgroups: u32,
    /// `css_set.subsys` (one `cgroup_subsys_state *` per subsystem, in subsystem order)
    pub css_set_subsys: u32,
    /// `cgroup_subsys_state.cgroup`
    pub css_cgroup: u32,
    /// `cgroup.kn`
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (a cgroup's id; its directory's inode number)
    pub kernfs_id: u32,
    /// Bit `i`: subsystem `i` is the first of a mounted cgroup v1 hierarchy, and its cgroup
    /// goes into [`ExecEvent::cgroup_v1`]. 0 on a node with cgroup v2 only.
    pub cgroup_v1_subsys: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 104);

impl KernelOffsets {
    pub const ZERO: Self = Self {
        task_tgid: 0,
        task_pid: 0,
        task_comm: 0,
        task_real_parent: 0,
        task_mm: 0,
        task_signal: 0,
        mm_arg_start: 0,
        mm_arg_end: 0,
        signal_live: 0,
        bprm_filename: 0,
        sock_err: 0,
        task_start_boottime: 0,
        fpu_fpstate: 0,
        fpu_mxcsr: 0,
        mm_exe_file: 0,
        file_inode: 0,
        inode_ino: 0,
        inode_sb: 0,
        sb_dev: 0,
        task_cgroups: 0,
        css_set_subsys: 0,
        css_cgroup: 0,
        cgroup_kn: 0,
        kernfs_id: 0,
        cgroup_v1_subsys: 0,
        _pad: 0,
    };
}

/// Event kinds, the first field of every event.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 3;
    pub const CONNECT: u32 = 4;
    pub const PAYLOAD: u32 = 5;
    /// A followed TCP connection closed: user space drops what it kept for it.
    pub const CLOSE: u32 = 6;
    /// A connect to an address on a pool list ([`crate::ConnectEvent`] layout, with the list
    /// entry's id in `error`), on the decisive ring.
    pub const POOL_CONNECT: u32 = 7;
    /// A write to a huge-page sysctl ([`crate::SysctlEvent`]), on the decisive ring.
    pub const SYSCTL: u32 = 8;
    /// A DNS message a process sent or received on UDP port 53 ([`crate::PayloadEvent`]
    /// layout, [`crate::PAYLOAD_DNS_ANSWER`] set for one received), on the lifecycle ring so
    /// it keeps its order with the connects that follow.
    pub const DNS: u32 = 9;
    /// A process's main thread renamed itself ([`crate::RenameEvent`]).
    pub const RENAME: u32 = 10;
    /// A process sent SIGKILL or SIGTERM to another ([`crate::KillEvent`]).
    pub const KILL: u32 = 11;
    /// How a long-lived, low-volume TCP connection talks ([`crate::FlowEvent`]): at most one
    /// every [`crate::FLOW_REPORT_NS`] per connection, on the lifecycle ring.
    pub const FLOW: u32 = 12;
}

/// Indices into the per-CPU `STATS` array. Every failure in a hook lands in one of these.
pub mod stat {
    pub const RINGBUF_FULL_EXEC: u32 = 0;
    pub const RINGBUF_FULL_FORK: u32 = 1;
    pub const RINGBUF_FULL_EXIT: u32 = 2;
    pub const RINGBUF_FULL_CONNECT: u32 = 3;
    pub const RINGBUF_FULL_PAYLOAD: u32 = 4;
    /// An exec whose new image had no readable argument area (its argv is taken from /proc).
    pub const EXEC_ARGV_MISSING: u32 = 5;
    /// `bpf_probe_read_user*` failed (paged-out or bad user pointer).
    pub const READ_USER_FAILED: u32 = 6;
    /// `bpf_probe_read_kernel` failed.
    pub const READ_KERNEL_FAILED: u32 = 7;
    /// A map insert failed (a bounded hash map is full).
    pub const MAP_FULL: u32 = 8;
    /// Socket-local storage could not be created (out of memory): that socket is not followed.
    pub const SOCK_STORAGE_FAILED: u32 = 9;
    /// A close record was lost to a full ring (user space forgets the stream at exit instead).
    pub const RINGBUF_FULL_CLOSE: u32 = 10;
    /// A socket reached the most records it may send up before its byte budget was spent
    /// (many tiny packets): capture stopped for it.
    pub const PAYLOAD_RECORDS_CAPPED: u32 = 11;
    /// A connection sent more than `BLANK_MAX` bytes of whitespace first: capture stopped.
    pub const PAYLOAD_BLANK_CAPPED: u32 = 12;
    /// A payload record not sent because its process spent its budget on the decisive ring
    /// ([`crate::PROCESS_PAYLOAD_BYTES`] a second): one process cannot flood it.
    pub const PAYLOAD_BUDGET_DROPPED: u32 = 13;
    /// A thread showed a non-default rounding mode but `FPU_THREADS` was full: it is not
    /// counted until user space frees entries.
    pub const FPU_THREADS_FULL: u32 = 14;
    /// A connect to a listed pool address could not be reported (decisive ring full).
    pub const RINGBUF_FULL_POOL: u32 = 15;
    /// A huge-page sysctl write could not be reported (decisive ring full).
    pub const RINGBUF_FULL_SYSCTL: u32 = 16;
    /// A DNS message could not be reported (lifecycle ring full).
    pub const RINGBUF_FULL_DNS: u32 = 17;
    /// A rename could not be reported (lifecycle ring full).
    pub const RINGBUF_FULL_RENAME: u32 = 18;
    /// A kill could not be reported (lifecycle ring full).
    pub const RINGBUF_FULL_KILL: u32 = 19;
    /// A flow report could not be sent (lifecycle ring full); the next one carries the
    /// totals, so only the timing of one report is lost.
    pub const RINGBUF_FULL_FLOW: u32 = 20;
    /// A DNS message not reported because its process spent its DNS budget
    /// ([`crate::PROCESS_DNS_BYTES`] a second): a flood of datagrams to port 53 costs
    /// neither the first-bytes budget nor much of the lifecycle ring.
    pub const DNS_BUDGET_DROPPED: u32 = 21;
    /// Number of counters; the size of the `STATS` map.
    pub const COUNT: u32 = 22;

    /// Human names, indexed like the constants above.
    pub const NAMES: [&str; COUNT as usize] = [
        "ringbuf_full_exec",
        "ringbuf_full_fork",
        "ringbuf_full_exit",
        "ringbuf_full_connect",
        "ringbuf_full_payload",
        "exec_argv_missing",
        "read_user_failed",
        "read_kernel_failed",
        "map_full",
        "sock_storage_failed",
        "ringbuf_full_close",
        "payload_records_capped",
        "payload_blank_capped",
        "payload_budget_dropped",
        "fpu_threads_full",
        "ringbuf_full_pool",
        "ringbuf_full_sysctl",
        "ringbuf_full_dns",
        "ringbuf_full_rename",
        "ringbuf_full_kill",
        "ringbuf_full_flow",
        "dns_budget_dropped",
    ];
}

pub const COMM_LEN: usize = 16;
pub const FILENAME_CAP: usize = 256;
/// argv bytes captured per exec (NUL-separated, as the kernel laid them out for the new
/// image). A record carries only the bytes used.
pub const ARGV_CAP: usize = 2048;
/// Largest slice copied from one packet.
pub const PAYLOAD_CAP: usize = 1024;
/// A new TCP connection is watched until this many payload bytes were sent up...
pub const WATCH_BYTES: u32 = 2048;
/// ...or this many records, whatever they held: a login written one byte per packet (some
/// 600 records) is still captured whole, and tiny packets cannot flood the decisive ring.
pub const WATCH_RECORDS: u32 = 1024;
/// Bytes of payload records one process may put on the decisive ring per second, all its
/// connections together: a login is under 2 KiB, so a process would need hundreds of new
/// connections a second to reach it. Past it, records are dropped and counted.
pub const PROCESS_PAYLOAD_BYTES: u32 = 256 * 1024;
/// Bytes of DNS records one process may put on the lifecycle ring per second: a resolver
/// asking a few names is a few kilobytes. Budgeted apart from first bytes, so junk sent to
/// port 53 cannot spend the budget that a Stratum login needs.
pub const PROCESS_DNS_BYTES: u32 = 32 * 1024;

/// A process's use of the decisive ring in the current second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PayloadBudget {
    /// `bpf_ktime_get_ns()` when the current one-second window began.
    pub window_ns: u64,
    pub bytes: u32,
    pub _pad: u32,
}

/// Most leading whitespace skipped on one connection; past it the connection is no longer
/// watched (counted as `payload_blank_capped`).
pub const BLANK_MAX: u32 = 64 * 1024;

/// Events between two hardware-counter samples: cycles and instructions are sampled with
/// this period, so samples x period estimates each process's count.
pub const HW_SAMPLE_PERIOD: u64 = 10_000_000;

/// What one thread's context switches showed of its SSE rounding mode (MXCSR bits 13-14),
/// since its first switch with a non-default mode. Counted by the thread's own CPU as it is
/// switched out (one CPU at a time), read and pruned by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpuThread {
    pub tgid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` when the entry was made (its first non-default mode).
    pub first_ns: u64,
    /// Context switches counted.
    pub switches: u64,
    /// Of those, switches in each rounding mode other than to-nearest: down, up, toward zero.
    pub modes: [u64; 3],
}
const _: () = assert!(size_of::<FpuThread>() == 48);

/// Most threads followed by the rounding-mode hook; more are counted as `fpu_threads_full`.
pub const FPU_THREADS_MAX: u32 = 16384;

/// Most entries of `POOL_ADDRS` (addresses and networks of every pool list together).
pub const POOL_ADDRS_MAX: u32 = 65536;

/// The address part of a `POOL_ADDRS` key: IPv6, with IPv4 as IPv4-mapped (`::ffff:a.b.c.d`,
/// a /24 there being a /120), so one trie holds both.
pub type PoolAddr = [u8; 16];

/// `ExecEvent::flags`: argv was longer than [`ARGV_CAP`].
pub const EXEC_ARGV_TRUNCATED: u32 = 1;
/// `ExecEvent::flags`: no argv was captured for this exec.
pub const EXEC_ARGV_MISSING: u32 = 2;

/// Common prefix of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    /// Thread group id (the process id users see).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ktime_ns: u64,
    pub cgroup_id: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 32);

/// A successful exec, as the new image starts. The record is cut after the `argv_len`
/// bytes of `argv` that are used ([`EXEC_FIXED`] plus `argv_len` bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub hdr: EventHeader,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Thread id that called exec (differs from `hdr.tgid` when a non-leader thread did).
    pub old_tid: u32,
    /// Bytes used in `argv`.
    pub argv_len: u32,
    pub flags: u32,
    /// The process's `start_boottime` (ns; exec keeps it), or 0 without the BTF offset.
    pub start_ns: u64,
    /// The executed file's inode (`mm->exe_file->f_inode`: `i_ino`, and its `i_sb->s_dev` in
    /// the kernel's encoding), or 0 without the BTF offsets: with the filename, what user
    /// space needs to reuse a path it resolved before.
    pub exe_ino: u64,
    pub exe_dev: u32,
    pub _pad: u32,
    /// The cgroups the process is in on the v1 hierarchies, as one key ([`cgroup_v1_key`]
    /// over the kernfs ids of the subsystems in [`KernelOffsets::cgroup_v1_subsys`]); 0 on a
    /// node with cgroup v2 only, or without the BTF offsets.
    pub cgroup_v1: u64,
    pub comm: [u8; COMM_LEN],
    /// The path the kernel executed (`bprm->filename`).
    pub filename: [u8; FILENAME_CAP],
    /// NUL-separated arguments.
    pub argv: [u8; ARGV_CAP],
}
const _: () = assert!(size_of::<ExecEvent>() == 32 + 56 + COMM_LEN + FILENAME_CAP + ARGV_CAP);
/// Size of an [`ExecEvent`] without its `argv`: the shortest exec record.
pub const EXEC_FIXED: usize = 32 + 56 + COMM_LEN + FILENAME_CAP;

/// Most cgroup subsystems the v1 key covers (a kernel has 12 to 16).
pub const CGROUP_SUBSYS_MAX: u32 = 32;

/// One step of the v1 cgroup key: FNV-1a over each subsystem's cgroup id, in subsystem
/// order. The eBPF program and user space (which checks a path it read against the key)
/// compute it alike; a cgroup id (kernfs node id) is never reused, so equal keys mean the
/// same cgroups.
#[inline(always)]
pub fn cgroup_v1_step(key: u64, id: u64) -> u64 {
    let mut k = key;
    let mut i = 0;
    while i < 8 {
        k ^= (id >> (i * 8)) & 0xff;
        k = k.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    k
}

/// Where [`cgroup_v1_step`] starts.
pub const CGROUP_V1_KEY_START: u64 = 0xcbf2_9ce4_8422_2325;

/// A new process (not a new thread).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub hdr: EventHeader,
    pub child_tgid: u32,
    pub _pad: u32,
    /// The child's `start_boottime` (ns), or 0 without the BTF offset.
    pub child_start_ns: u64,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<ForkEvent>() == 64);

/// The last thread of a process exited (its thread group is dead, whichever thread was last).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub hdr: EventHeader,
}
const _: () = assert!(size_of::<ExitEvent>() == 32);

/// `ConnectEvent::proto` values.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// `ConnectEvent::flags`: a datagram sent on an unconnected UDP socket (`cgroup/sendmsg*`);
/// reported when the destination differs from the socket's previous one.
pub const CONNECT_UNCONNECTED_SEND: u8 = 1;

/// An outbound connection: a TCP connect with its outcome (reported when the handshake
/// ends), a connected UDP socket, or a new destination of an unconnected UDP socket.
/// `hdr.tgid` is the process that connected the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent {
    pub hdr: EventHeader,
    /// The socket's cookie (unique for the boot).
    pub cookie: u64,
    /// 0, or the errno (positive) a TCP connect failed with. In a
    /// [`kind::POOL_CONNECT`] record: the id of the pool-list entry that matched.
    pub error: u32,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`CONNECT_UNCONNECTED_SEND`] or 0.
    pub flags: u8,
    /// Destination port, host byte order.
    pub dport: u16,
    pub _pad: [u8; 6],
    /// Destination address: 4 bytes for IPv4, 16 for IPv6, network order.
    pub daddr: [u8; 16],
}
const _: () = assert!(size_of::<ConnectEvent>() == 72);

/// `PayloadEvent::flags`: records for this socket were lost before this one (a full ring):
/// the bytes between the previous record and `offset` are unknown.
pub const PAYLOAD_GAP: u32 = 1;
/// `PayloadEvent::flags`: the last record for this socket (budget spent).
pub const PAYLOAD_LAST: u32 = 2;
/// `PayloadEvent::flags`: every byte of the stream before this record was whitespace, not
/// sent up: a jump in `offset` is not a loss.
pub const PAYLOAD_AFTER_BLANK: u32 = 4;
/// `PayloadEvent::flags` of a [`kind::DNS`] record: a message the process received (an
/// answer), not one it sent.
pub const PAYLOAD_DNS_ANSWER: u32 = 8;
/// `PayloadEvent::flags` of a [`kind::DNS`] record: the message came over TCP, after its
/// two-byte length.
pub const PAYLOAD_DNS_TCP: u32 = 16;

/// Bytes of a sysctl's name a [`SysctlEvent`] carries (`vm/nr_overcommit_hugepages` is 26).
pub const SYSCTL_NAME_CAP: usize = 48;
/// Bytes of the written value it carries.
pub const SYSCTL_VALUE_CAP: usize = 24;

/// A process wrote a sysctl whose name starts with `vm/nr_` (the huge-page reservations
/// among them): the name as /proc/sys spells it, and the value written.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SysctlEvent {
    pub hdr: EventHeader,
    /// NUL-terminated, truncated at the cap.
    pub name: [u8; SYSCTL_NAME_CAP],
    /// As written (`"1280\n"`), not terminated; `value_len` bytes of it are valid.
    pub value: [u8; SYSCTL_VALUE_CAP],
    /// The helper's return: bytes copied, or a negative errno.
    pub value_len: i32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SysctlEvent>() == 112);

/// The main thread of a process changed its name (`prctl(PR_SET_NAME)`, a write to
/// `/proc/self/comm`, and exec, which user space tells apart by the exec record that follows).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RenameEvent {
    pub hdr: EventHeader,
    /// NUL-padded.
    pub old: [u8; COMM_LEN],
    pub new: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<RenameEvent>() == 32 + 32);

/// A user process sent SIGKILL or SIGTERM to another process, with `kill(2)` or its kin
/// (not the kernel: the OOM killer and others send with private siginfo, skipped).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KillEvent {
    pub hdr: EventHeader,
    pub target_tgid: u32,
    pub sig: u32,
}
const _: () = assert!(size_of::<KillEvent>() == 40);

/// Payload a process sent on a watched TCP socket, as it left in a packet. `hdr.tgid` is the
/// process that connected the socket (packets may leave outside its context).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PayloadEvent {
    pub hdr: EventHeader,
    /// The socket's cookie (unique for the boot).
    pub cookie: u64,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    /// `PAYLOAD_*` flags.
    pub flags: u32,
    /// Destination address: 4 bytes for IPv4, 16 for IPv6, network order.
    pub daddr: [u8; 16],
    /// Payload bytes of this connection before this packet (from the TCP sequence number).
    pub offset: u32,
    /// Bytes of `data` that are valid.
    pub len: u32,
    /// Payload bytes in the packet.
    pub total: u32,
    pub _pad1: u32,
    pub data: [u8; PAYLOAD_CAP],
}
const _: () = assert!(size_of::<PayloadEvent>() == 32 + 48 + PAYLOAD_CAP);

/// A followed TCP connection closed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CloseEvent {
    pub hdr: EventHeader,
    pub cookie: u64,
}
const _: () = assert!(size_of::<CloseEvent>() == 40);

/// `SockState::flags`: the first bytes of this TCP socket are captured.
pub const SOCK_WATCH: u32 = 1;
/// `SockState::flags`: a TCP connect is in flight; its outcome is reported.
pub const SOCK_CONNECTING: u32 = 2;
/// `SockState::flags`: user space keeps a stream for this socket and wants its close.
pub const SOCK_STREAM_KEPT: u32 = 4;
/// `SockState::flags`: the last payload record was lost; the next one carries [`PAYLOAD_GAP`].
pub const SOCK_GAP: u32 = 8;
/// `SockState::flags`: a UDP socket that talks to port 53: its datagrams, both ways, are
/// reported as DNS messages.
pub const SOCK_DNS: u32 = 16;
/// `SockState::flags`: a TCP socket this host connected: its flow is counted ([`Flow`]).
pub const SOCK_TCP: u32 = 32;
/// The DNS port.
pub const DNS_PORT: u16 = 53;

/// Socket-local storage (`SOCKS`) of a followed socket: who connected it, where to, and what
/// has been captured so far. Lives and dies with the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockState {
    pub cookie: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub flags: u32,
    /// Payload bytes that passed (the stream offset of the next expected byte), against
    /// [`WATCH_BYTES`].
    pub bytes: u32,
    /// Leading bytes of the stream that were all whitespace (JSON allows it before a
    /// message). They are not sent up and do not count against [`WATCH_BYTES`], so padding
    /// cannot spend the budget; [`BLANK_MAX`] bounds how much is skipped.
    pub blank: u32,
    /// Records sent up, against [`WATCH_RECORDS`].
    pub records: u32,
    /// Sequence number of the first payload byte, once `has_isn` is 1.
    pub isn: u32,
    pub has_isn: u32,
    pub family: u16,
    pub dport: u16,
    /// Destination (for TCP: of the connect; for unconnected UDP: of the last datagram).
    pub daddr: [u8; 16],
    /// How the connection talks, for TCP ([`SOCK_TCP`]).
    pub flow: Flow,
}
const _: () = assert!(size_of::<SockState>() == 64 + size_of::<Flow>());

/// A client write begins after this long without payload from the client: the packets of
/// one message (a share) count once.
pub const FLOW_BURST_NS: u64 = 100_000_000;
/// Server payload is a push (a new job) when it comes this long after anything the client
/// sent and after the server's own last payload: an answer to a request comes sooner.
pub const FLOW_PUSH_NS: u64 = 500_000_000;
/// A connection is reported once it is this old, and then at most this often.
pub const FLOW_REPORT_NS: u64 = 4_000_000_000;
/// Only connections that moved at most this many bytes a second on average are reported:
/// a pool connection moves a few hundred; bulk transfers are not what this looks for.
pub const FLOW_MAX_RATE: u64 = 16 * 1024;

/// Counters of one TCP connection's payload, both ways, kept in its socket storage by the
/// packet hooks (`cgroup_skb` egress and ingress). Updates from the two directions can race
/// on two CPUs and lose a count now and then; nothing else.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// `bpf_ktime_get_ns` at connect.
    pub opened_ns: u64,
    pub last_out_ns: u64,
    pub last_in_ns: u64,
    pub last_push_ns: u64,
    pub reported_ns: u64,
    pub out_bytes: u64,
    pub in_bytes: u64,
    /// Sum and sum of squares of the gaps between pushes, in milliseconds.
    pub push_gap_ms: u64,
    pub push_gap_ms_sq: u64,
    /// Client writes ([`FLOW_BURST_NS`] apart), and the bytes of the largest.
    pub writes: u32,
    pub write_max: u32,
    /// Bytes of the client write in progress.
    pub write_bytes: u32,
    /// Server payload that came unasked ([`FLOW_PUSH_NS`]).
    pub pushes: u32,
    /// Server payload that answered the client (came sooner).
    pub replies: u32,
    pub _pad: u32,
}

/// A report of a connection's [`Flow`], totals since connect.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlowEvent {
    pub hdr: EventHeader,
    pub cookie: u64,
    pub family: u16,
    pub dport: u16,
    pub _pad: u32,
    pub daddr: [u8; 16],
    pub flow: Flow,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data: repr(C), integer and byte-array fields only, explicit padding.
    unsafe impl aya::Pod for super::SockState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PayloadBudget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FpuThread {}
}
