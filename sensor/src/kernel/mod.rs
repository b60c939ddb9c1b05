//! The only module that imports aya: loading and attaching ([`loader`], with the one table
//! of hooks), BTF offsets ([`btf`]), decoding ring records ([`events`]), and [`Kernel`], which
//! owns the maps: the two rings, the counters, the CPU sample maps, and typed handles for
//! everything user space writes into the kernel (today the watch list in socket storage).
pub mod btf;
pub mod events;
pub mod loader;

use std::{collections::BTreeMap, net::SocketAddr, os::fd::AsRawFd};

use aya::maps::{
    HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, SkStorage,
    lpm_trie::{Key as LpmKey, LpmTrie},
};
use hashbrown::HashMap;
use minerwatch_common::{
    Flow, FpuThread, PayloadBudget, PoolAddr, SOCK_TCP, SOCK_WATCH, SockState, map, stat,
};
use minerwatch_detect::intel::Lists;
use tokio::io::unix::AsyncFd;

pub use events::Event;
pub use loader::{HookStatus, LoadError};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("map {name} missing or of the wrong type: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("cannot poll a ring buffer: {0}")]
    Poll(#[from] std::io::Error),
}

/// Which ring a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// Exec, fork, exit, connect, close: many, and lazily woken.
    Lifecycle,
    /// First bytes of connections: rare, decisive, woken at once.
    Decisive,
}

/// Per-hook in-kernel cost, with `--bpf-stats`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BpfCost {
    pub runs: u64,
    pub run_ns: u64,
    pub ns_per_run: u64,
}

/// CPU samples per tgid, and the hardware counters' when they attached.
#[derive(Debug, Default)]
pub struct CpuTotals {
    pub samples: HashMap<u32, u64>,
    /// (cycles, instructions) sample counts.
    pub hw: Option<(HashMap<u32, u64>, HashMap<u32, u64>)>,
}

impl CpuTotals {
    /// `tgid` has an entry in one of the sample maps.
    pub fn holds(&self, tgid: u32) -> bool {
        self.samples.contains_key(&tgid)
            || self
                .hw
                .as_ref()
                .is_some_and(|(c, i)| c.contains_key(&tgid) || i.contains_key(&tgid))
    }

    /// Leaves `tgid` out of these totals.
    pub fn drop_tgid(&mut self, tgid: u32) {
        self.samples.remove(&tgid);
        if let Some((c, i)) = self.hw.as_mut() {
            c.remove(&tgid);
            i.remove(&tgid);
        }
    }
}

/// Samples per tgid.
type SampleMap = BpfHashMap<MapData, u32, u64>;

/// The loaded programs and the maps user space reads and writes.
pub struct Kernel {
    ebpf: aya::Ebpf,
    pub hooks: Vec<HookStatus>,
    pub offsets_error: Option<String>,
    lifecycle: AsyncFd<RingBuf<MapData>>,
    decisive: AsyncFd<RingBuf<MapData>>,
    stats: PerCpuArray<MapData, u64>,
    socks: SkStorage<MapData, SockState>,
    samples: SampleMap,
    budgets: BpfHashMap<MapData, u32, PayloadBudget>,
    hw: Option<(SampleMap, SampleMap)>,
    fpu: BpfHashMap<MapData, u32, FpuThread>,
    pools: LpmTrie<MapData, PoolAddr, u32>,
    /// What `pools` holds now: (prefix length, address) -> entry id.
    pool_keys: HashMap<(u32, PoolAddr), u32>,
    _bpf_stats: Option<std::os::fd::OwnedFd>,
}

/// Takes map `name` out of the object as a typed map.
fn take<T>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf.take_map(name).ok_or(KernelError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    T::try_from(m).map_err(|source| KernelError::Map { name, source })
}

/// tgid -> samples.
fn read_samples(map: &SampleMap) -> HashMap<u32, u64> {
    map.iter().filter_map(Result::ok).collect()
}

impl Kernel {
    /// Loads and attaches every hook that can attach; `bpf_stats` turns on the kernel's
    /// run-time accounting for as long as the sensor runs.
    pub fn open(sample_hz: u64, bpf_stats: bool) -> Result<Self, KernelError> {
        let loaded = loader::load(sample_hz)?;
        let bpf_stats = bpf_stats
            .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
            .and_then(|r| {
                r.map_err(|e| tracing::warn!(reason = %e, "cannot enable BPF run-time statistics"))
                    .ok()
            });
        let hw_attached = loaded
            .hooks
            .iter()
            .filter(|h| h.program.starts_with("cpu_hw_") && h.attached)
            .count()
            == 2;
        let mut ebpf = loaded.ebpf;
        let ring = |rb: RingBuf<MapData>| {
            // SAFETY: the RingBuf owns its map fd, and the AsyncFd owns the RingBuf, so the fd
            // stays open and the same for the AsyncFd's whole life.
            unsafe { AsyncFd::register_with_interest(rb, tokio::io::Interest::READABLE) }
                .map_err(|e| KernelError::Poll(std::io::Error::from(e)))
        };
        let lifecycle = ring(take(&mut ebpf, map::EVENTS)?)?;
        let decisive = ring(take(&mut ebpf, map::EVENTS_HI)?)?;
        let hw = if hw_attached {
            Some((
                take(&mut ebpf, map::HW_CYCLES)?,
                take(&mut ebpf, map::HW_INSNS)?,
            ))
        } else {
            None
        };
        Ok(Kernel {
            stats: take(&mut ebpf, map::STATS)?,
            socks: take(&mut ebpf, map::SOCKS)?,
            samples: take(&mut ebpf, map::CPU_SAMPLES)?,
            budgets: take(&mut ebpf, map::PAYLOAD_BUDGETS)?,
            fpu: take(&mut ebpf, map::FPU_THREADS)?,
            pools: take(&mut ebpf, map::POOL_ADDRS)?,
            pool_keys: HashMap::new(),
            hw,
            lifecycle,
            decisive,
            hooks: loaded.hooks,
            offsets_error: loaded.offsets_error,
            ebpf,
            _bpf_stats: bpf_stats,
        })
    }

    /// Waits until a ring has records. The decisive ring wakes at once; the lifecycle ring
    /// mostly does not (see the eBPF `lazy_wakeup`), so callers also drain on a timer.
    pub async fn readable(&mut self) -> Result<Ring, KernelError> {
        tokio::select! {
            g = self.decisive.readable_mut() => { g?.clear_ready(); Ok(Ring::Decisive) }
            g = self.lifecycle.readable_mut() => { g?.clear_ready(); Ok(Ring::Lifecycle) }
        }
    }

    /// Hands up to `max` records of `ring` to `f`, decoded; undecodable records as errors.
    /// Returns how many were read.
    pub fn drain(
        &mut self,
        ring: Ring,
        max: usize,
        mut f: impl FnMut(Result<Event, events::DecodeError>),
    ) -> usize {
        let rb = match ring {
            Ring::Lifecycle => self.lifecycle.get_mut(),
            Ring::Decisive => self.decisive.get_mut(),
        };
        let mut n = 0;
        while n < max
            && let Some(item) = rb.next()
        {
            n += 1;
            let ev = Event::try_from(&item[..]);
            drop(item);
            f(ev);
        }
        n
    }

    /// The kernel's per-CPU counters (hook failures, ring-buffer drops), summed, by name.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        stat::NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let v = self
                    .stats
                    .get(&(i as u32), 0)
                    .map(|vals| vals.iter().sum())
                    .unwrap_or(0);
                (*name, v)
            })
            .collect()
    }

    /// In-kernel cost per program that ran, when run-time statistics are on.
    pub fn costs(&self) -> BTreeMap<&'static str, BpfCost> {
        let mut out = BTreeMap::new();
        for hook in loader::HOOKS {
            if let Some(info) = self.ebpf.program(hook.program).and_then(|p| p.info().ok())
                && info.run_count() > 0
            {
                let run_ns = info.run_time().as_nanos() as u64;
                let runs = info.run_count();
                out.insert(
                    hook.program,
                    BpfCost {
                        runs,
                        run_ns,
                        ns_per_run: run_ns / runs,
                    },
                );
            }
        }
        out
    }

    /// CPU sample totals now.
    pub fn cpu_totals(&self) -> CpuTotals {
        CpuTotals {
            samples: read_samples(&self.samples),
            hw: self
                .hw
                .as_ref()
                .map(|(c, i)| (read_samples(c), read_samples(i))),
        }
    }

    /// Drops the CPU sample entries of processes that are gone. (Their payload budget goes
    /// in the exit hook, or with [`Kernel::prune_budgets`].)
    pub fn forget_samples(&mut self, tgids: impl IntoIterator<Item = u32>) {
        for tgid in tgids {
            let _ = self.samples.remove(&tgid);
            if let Some((c, i)) = self.hw.as_mut() {
                let _ = c.remove(&tgid);
                let _ = i.remove(&tgid);
            }
        }
    }

    /// Rounding-mode counts of every thread that ever showed a non-default mode, by thread
    /// id. Small: most threads never do.
    pub fn fpu_threads(&self) -> Vec<(u32, FpuThread)> {
        self.fpu.iter().filter_map(Result::ok).collect()
    }

    /// Drops the rounding-mode counts of threads that are gone.
    pub fn forget_fpu_threads(&mut self, tids: impl IntoIterator<Item = u32>) {
        for tid in tids {
            let _ = self.fpu.remove(&tid);
        }
    }

    /// Makes the kernel's pool-address trie hold the addresses and networks of `lists`:
    /// new entries first, then the ones no longer listed, so a reload never leaves a gap.
    /// Returns how many entries could not be written.
    pub fn set_pools(&mut self, lists: &Lists) -> usize {
        let mut want = HashMap::new();
        for (addr, prefix, id) in lists.nets() {
            // IPv4 as IPv4-mapped IPv6, as the connect hooks look it up.
            let (bytes, bits) = match addr {
                std::net::IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), 96 + u32::from(prefix)),
                std::net::IpAddr::V6(a) => (a.octets(), u32::from(prefix)),
            };
            // The first entry for a network wins, as in `Lists::match_addr`.
            want.entry((bits, bytes)).or_insert(id);
        }
        let mut failed = Vec::new();
        for (&(bits, bytes), &id) in &want {
            if self.pool_keys.get(&(bits, bytes)) != Some(&id)
                && let Err(e) = self.pools.insert(&LpmKey::new(bits, bytes), id, 0)
            {
                tracing::warn!(reason = %e, "cannot add a pool network to the kernel's trie");
                failed.push((bits, bytes));
            }
        }
        for key in &failed {
            want.remove(key);
        }
        for key in self.pool_keys.keys() {
            if !want.contains_key(key) {
                let _ = self.pools.remove(&LpmKey::new(key.0, key.1));
            }
        }
        self.pool_keys = want;
        failed.len()
    }

    /// Drops payload budgets not used for a minute (`now`: CLOCK_MONOTONIC ns). The exit
    /// hook removes a process's own; this catches sockets that outlived the process that
    /// connected them, whose packets charge a tgid that no longer exits.
    pub fn prune_budgets(&mut self, now: u64) {
        let stale: Vec<u32> = self
            .budgets
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, b)| now.saturating_sub(b.window_ns) > 60_000_000_000)
            .map(|(tgid, _)| tgid)
            .collect();
        for tgid in stale {
            let _ = self.budgets.remove(&tgid);
        }
    }

    /// Follows an existing TCP connection as if the sensor had seen it connect: its first
    /// bytes from now on are sent up, tagged with `cookie`. `sock` is the socket itself.
    pub fn watch(
        &mut self,
        sock: &impl AsRawFd,
        cookie: u64,
        tgid: u32,
        peer: SocketAddr,
    ) -> Result<(), aya::maps::MapError> {
        let (family, daddr) = match peer.ip() {
            std::net::IpAddr::V4(a) => {
                let mut d = [0u8; 16];
                d[..4].copy_from_slice(&a.octets());
                (libc::AF_INET as u16, d)
            }
            std::net::IpAddr::V6(a) => (libc::AF_INET6 as u16, a.octets()),
        };
        // Its flow is counted from now: older than that it is, but nothing before is known.
        let flow = Flow {
            opened_ns: crate::pipeline::monotonic_ns(),
            ..Flow::default()
        };
        let st = SockState {
            cookie,
            tgid,
            flags: SOCK_WATCH | SOCK_TCP,
            family,
            dport: peer.port(),
            daddr,
            flow,
            ..SockState::default()
        };
        self.socks.insert(sock, st, 0)
    }
}
