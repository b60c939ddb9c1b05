//! The ABI shared by the eBPF programs and the `minerwatch` daemon.
//!
//! Data only: `#[repr(C)]` structs of fixed-width integers and byte arrays, with explicit
//! padding, and the constants both sides must agree on. Every wire struct has a size assert,
//! so a layout change on one side fails the build instead of corrupting events.
#![no_std]

use core::mem::size_of;

/// Names of the maps in the eBPF object.
pub mod map {
    /// BPF ring buffer carrying every event to user space.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU array of `u64` counters indexed by [`crate::stat`].
    pub const STATS: &str = "STATS";
    /// TCP sockets whose first bytes are being captured, keyed by socket cookie.
    pub const WATCH: &str = "WATCH";
    /// cpu-clock samples per thread group id.
    pub const CPU_SAMPLES: &str = "CPU_SAMPLES";
    /// Hardware cycle-counter overflows per thread group id (nodes with a PMU).
    pub const HW_CYCLES: &str = "HW_CYCLES";
    /// Hardware instruction-counter overflows per thread group id (nodes with a PMU).
    pub const HW_INSNS: &str = "HW_INSNS";
}

/// Names of the read-only globals the loader sets before loading.
pub mod global {
    /// Thread group id of the sensor itself; every hook skips it.
    pub const SENSOR_TGID: &str = "SENSOR_TGID";
    /// Offset of `task_struct.tgid`, from BTF.
    pub const TASK_TGID_OFF: &str = "TASK_TGID_OFF";
    /// Offset of `task_struct.real_parent`, from BTF.
    pub const TASK_REAL_PARENT_OFF: &str = "TASK_REAL_PARENT_OFF";
}

/// Event kinds, the first field of every event.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 3;
    pub const CONNECT: u32 = 4;
    pub const PAYLOAD: u32 = 5;
}

/// Indices into the per-CPU `STATS` array. Every failure in a hook lands in one of these.
pub mod stat {
    pub const RINGBUF_FULL_EXEC: u32 = 0;
    pub const RINGBUF_FULL_FORK: u32 = 1;
    pub const RINGBUF_FULL_EXIT: u32 = 2;
    pub const RINGBUF_FULL_CONNECT: u32 = 3;
    pub const RINGBUF_FULL_PAYLOAD: u32 = 4;
    /// An exec completed but its argv was not stashed (exec started before the sensor).
    pub const EXEC_ARGV_MISSING: u32 = 5;
    /// `bpf_probe_read_user*` failed (paged-out or bad user pointer).
    pub const READ_USER_FAILED: u32 = 6;
    /// `bpf_probe_read_kernel` failed.
    pub const READ_KERNEL_FAILED: u32 = 7;
    /// A map insert failed (map full).
    pub const MAP_FULL: u32 = 8;
    /// Number of counters; the size of the `STATS` map.
    pub const COUNT: u32 = 9;

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
    ];
}

pub const COMM_LEN: usize = 16;
pub const FILENAME_CAP: usize = 256;
/// argv bytes captured per exec (NUL-separated); an argument may overrun by up to
/// [`ARG_READ_MAX`], which is why the buffer is larger.
pub const ARGV_CAP: usize = 1024;
pub const ARG_READ_MAX: usize = 256;
pub const ARGV_BUF: usize = ARGV_CAP + ARG_READ_MAX;
pub const ARGV_MAX_ARGS: u32 = 32;
/// Largest slice copied from one packet.
pub const PAYLOAD_CAP: usize = 1024;
/// A new TCP connection is watched until this many bytes were captured...
pub const WATCH_BYTES: u32 = 2048;
/// ...or this many data packets were seen, whichever comes first.
pub const WATCH_SENDS: u32 = 8;

/// Events between two hardware-counter samples: cycles and instructions are sampled with
/// this period, so samples x period estimates each process's count.
pub const HW_SAMPLE_PERIOD: u64 = 10_000_000;

/// `ExecEvent::flags`: argv was longer than [`ARGV_CAP`] or [`ARGV_MAX_ARGS`].
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

/// A successful execve/execveat.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub hdr: EventHeader,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Arguments captured.
    pub argc: u32,
    /// Bytes used in `argv`.
    pub argv_len: u32,
    pub flags: u32,
    pub comm: [u8; COMM_LEN],
    /// The path the kernel executed (`bprm->filename`).
    pub filename: [u8; FILENAME_CAP],
    /// NUL-separated arguments.
    pub argv: [u8; ARGV_BUF],
}
const _: () = assert!(size_of::<ExecEvent>() == 32 + 24 + COMM_LEN + FILENAME_CAP + ARGV_BUF);

/// A new process (not a new thread).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub hdr: EventHeader,
    pub child_tgid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<ForkEvent>() == 56);

/// The last thread of a process exited.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub hdr: EventHeader,
}
const _: () = assert!(size_of::<ExitEvent>() == 32);

/// `ConnectEvent::proto` values.
pub const PROTO_UNKNOWN: u8 = 0;
pub const PROTO_TCP: u8 = 6;

/// A connect() on an AF_INET or AF_INET6 socket, with its outcome.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent {
    pub hdr: EventHeader,
    pub fd: i32,
    /// Syscall return: 0, or a negative errno (`-EINPROGRESS` for non-blocking).
    pub ret: i32,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// [`PROTO_TCP`] when the kernel moved the socket to SYN_SENT during this call.
    pub proto: u8,
    pub _pad0: u8,
    /// Destination port, host byte order.
    pub dport: u16,
    pub _pad1: u16,
    /// Destination address: 4 bytes for IPv4, 16 for IPv6, network order.
    pub daddr: [u8; 16],
}
const _: () = assert!(size_of::<ConnectEvent>() == 64);

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
    pub _pad0: u32,
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

/// Value of the `WATCH` map (key: socket cookie): who connected it and what has been
/// captured so far.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WatchState {
    pub tgid: u32,
    pub sends: u32,
    pub bytes: u32,
    /// Sequence number of the first payload byte, once `has_isn` is 1.
    pub isn: u32,
    pub has_isn: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<WatchState>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data: repr(C), integer and byte-array fields only, explicit padding.
    unsafe impl aya::Pod for super::WatchState {}
}
