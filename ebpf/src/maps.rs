//! Every map of the object. Names are the `minerwatch_common::map` constants where user space
//! touches the map; the others are private scratch state of the hooks.
use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use minerwatch_common::{
    ExecEvent, FPU_THREADS_MAX, FpuThread, POOL_ADDRS_MAX, PayloadBudget, PayloadEvent, PoolAddr,
    SockState, stat,
};

/// Lifecycle events (exec, fork, exit, connect, close). 8 MiB absorbs a burst of tens of
/// thousands of execs while the reader sleeps (exec records are sized to their argv).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Rare, decisive events (first bytes of TCP connections). Their own ring, so a flood of
/// lifecycle events from any user cannot crowd them out.
#[map]
pub static EVENTS_HI: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

/// Each process's use of `EVENTS_HI` this second (tgid -> budget), removed at its exit. A
/// process that finds the map full goes without a budget (counted as `map_full`).
#[map]
pub static PAYLOAD_BUDGETS: HashMap<u32, PayloadBudget> = HashMap::with_max_entries(16384, 0);

/// Each process's DNS records this second (tgid -> budget). Least recently used entries go
/// when it is full, so the budgets of processes that are gone never block new ones.
#[map]
pub static DNS_BUDGETS: LruHashMap<u32, PayloadBudget> = LruHashMap::with_max_entries(4096, 0);

/// Per-CPU failure counters, indexed by `minerwatch_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Per-socket state, created at connect and freed by the kernel with the socket: no
/// capacity limit, no eviction, no cookie lookup per packet.
#[btf_map]
pub static SOCKS: SkStorage<SockState> = SkStorage::new();

/// cpu-clock samples per tgid, added to atomically. Not a per-CPU map: 32,768 per-CPU slots
/// of 8 bytes would lock 64 MiB on a 256-CPU node, for each of the three sample maps.
#[map]
pub static CPU_SAMPLES: HashMap<u32, u64> = HashMap::with_max_entries(32768, 0);

/// Hardware counter samples per tgid (see `minerwatch_common::HW_SAMPLE_PERIOD`).
#[map]
pub static HW_CYCLES: HashMap<u32, u64> = HashMap::with_max_entries(32768, 0);
#[map]
pub static HW_INSNS: HashMap<u32, u64> = HashMap::with_max_entries(32768, 0);

/// Rounding modes per thread id, for the threads that ever showed a non-default one; read
/// and pruned by user space (entries of exited threads are removed there).
#[map]
pub static FPU_THREADS: HashMap<u32, FpuThread> = HashMap::with_max_entries(FPU_THREADS_MAX, 0);

/// Pool addresses and networks from the pool lists, written by user space (entry id as the
/// value). Looked up at every connect.
#[map]
pub static POOL_ADDRS: LpmTrie<PoolAddr, u32> = LpmTrie::with_max_entries(POOL_ADDRS_MAX, 0);

/// Scratch space to build an `ExecEvent` (too large for the 512-byte stack); only the used
/// part is copied into the ring.
#[map]
pub static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space to build a `PayloadEvent`; only the captured bytes are copied into the ring.
/// Slot 0: TCP first bytes; 1 and 2: DNS queries and answers (see `dns`).
#[map]
pub static PAYLOAD_SCRATCH: PerCpuArray<PayloadEvent> = PerCpuArray::with_max_entries(3, 0);

/// The raw pointer the sk-storage helpers take for `SOCKS`.
#[inline(always)]
pub fn socks_ptr() -> *mut core::ffi::c_void {
    core::ptr::from_ref(&SOCKS).cast_mut().cast()
}
