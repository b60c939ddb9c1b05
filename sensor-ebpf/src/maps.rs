//! Every map of the object. Names are the `sensor_common::map` constants where user space
//! touches the map; the others are private scratch state of the hooks.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use sensor_common::{ConnectEvent, ExecEvent, WatchState, stat};

/// All events to user space. 8 MiB absorbs a burst of ~5,000 execs while the reader sleeps.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Per-CPU failure counters, indexed by `sensor_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Sockets whose first bytes are captured: socket cookie -> owner and progress. LRU, so a
/// socket that connects but never sends is forgotten in time.
#[map]
pub static WATCH: LruHashMap<u64, WatchState> = LruHashMap::with_max_entries(16384, 0);

/// cpu-clock samples per tgid, per CPU (no atomics needed); user space sums the CPUs.
#[map]
pub static CPU_SAMPLES: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(32768, 0);

/// Hardware counter samples per tgid, per CPU (see `sensor_common::HW_SAMPLE_PERIOD`).
#[map]
pub static HW_CYCLES: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(32768, 0);
#[map]
pub static HW_INSNS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(32768, 0);

/// argv captured at execve entry, by thread id, until `sched_process_exec` (or eviction
/// when the exec failed).
#[map]
pub static EXEC_STASH: LruHashMap<u32, ExecEvent> = LruHashMap::with_max_entries(1024, 0);

/// Scratch space to build an `ExecEvent` (too large for the 512-byte stack).
#[map]
pub static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// The destination of a connect() in flight, by thread id, until the syscall returns.
#[map]
pub static CONNECT_STASH: HashMap<u32, ConnectEvent> = HashMap::with_max_entries(8192, 0);
