//! Lateral spread: one process trying many distinct addresses on the ports that worms
//! spreading from a mining node use (SSH, Telnet, the Docker API, Redis, etcd, the kubelet).
//! Cluster tools fan out over SSH legitimately, so it is weak evidence, and the known ones
//! are not judged at all.
use std::net::IpAddr;

use hashbrown::HashMap;

/// Ports worms brute-force or exploit to spread: SSH, Telnet, Docker (plain and TLS), Redis,
/// etcd, the kubelet.
pub const SPREAD_PORTS: &[u16] = &[22, 23, 2375, 2376, 6379, 2379, 10250];

/// Distinct addresses on those ports within [`WINDOW_NS`] that make a scan.
pub const MIN_TARGETS: usize = 32;
/// The window in which they must fall.
pub const WINDOW_NS: u64 = 30_000_000_000;

/// Programs that fan out over SSH for a living: parallel shells, configuration management,
/// MPI and batch launchers. Matched on the basename of the executable and on the name.
pub const FANOUT_TOOLS: &[&str] = &[
    "pdsh",
    "clush",
    "pssh",
    "parallel-ssh",
    "ansible",
    "ansible-playbook",
    "salt-ssh",
    "mpirun",
    "mpiexec",
    "mpiexec.hydra",
    "hydra_pmi_proxy",
    "orterun",
    "prterun",
    "prted",
    "srun",
    "slurmstepd",
    "nodeattr",
    "ssh-keyscan",
];

/// A tool from [`FANOUT_TOOLS`], by its executable or its name.
pub fn is_fanout_tool(exe: &str, comm: &str) -> bool {
    let base = exe.rsplit('/').next().unwrap_or(exe);
    // Interpreted tools (ansible, clush) run as `python3`: their argv[0] or name tells.
    FANOUT_TOOLS
        .iter()
        .any(|t| base == *t || comm == *t || (t.len() > 15 && comm == &t[..15]))
}

/// One process's attempts on spread ports.
#[derive(Debug, Default)]
pub struct Fanout {
    /// Each (address, port) tried, with when it was last tried: a sliding window, pruned
    /// when it holds enough to judge.
    targets: HashMap<(IpAddr, u16), u64>,
    /// Said already: once per process.
    pub reported: bool,
}

/// What a scan looked like, for the finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub targets: usize,
    pub ports: Vec<u16>,
    pub secs: u64,
}

impl Fanout {
    /// An attempt (made or refused) to `addr:port` at `now_ns`; the scan when this attempt
    /// makes one.
    pub fn attempt(&mut self, addr: IpAddr, port: u16, now_ns: u64) -> Option<Scan> {
        if self.reported || !SPREAD_PORTS.contains(&port) {
            return None;
        }
        self.targets.insert((addr.to_canonical(), port), now_ns);
        if self.targets.len() < MIN_TARGETS {
            return None;
        }
        self.targets
            .retain(|_, t| now_ns.saturating_sub(*t) <= WINDOW_NS);
        if self.targets.len() < MIN_TARGETS {
            return None;
        }
        self.reported = true;
        let oldest = self.targets.values().copied().min().unwrap_or(now_ns);
        let mut ports: Vec<u16> = self.targets.keys().map(|(_, p)| *p).collect();
        ports.sort_unstable();
        ports.dedup();
        let scan = Scan {
            targets: self.targets.len(),
            ports,
            secs: now_ns.saturating_sub(oldest).div_ceil(1_000_000_000),
        };
        // Nothing more is needed once said.
        self.targets = HashMap::new();
        Some(scan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 + i))
    }

    #[test]
    fn many_addresses_on_ssh_make_a_scan_once() {
        let mut f = Fanout::default();
        let mut found = None;
        for i in 0..50u32 {
            if let Some(s) = f.attempt(v4(i + 2), 22, u64::from(i) * 50_000_000) {
                assert!(found.is_none(), "said twice");
                found = Some((i, s));
            }
        }
        let (i, s) = found.expect("a scan");
        assert_eq!(i as usize, MIN_TARGETS - 1);
        assert_eq!(s.targets, MIN_TARGETS);
        assert_eq!(s.ports, vec![22]);
        assert_eq!(s.secs, 2);
    }

    #[test]
    fn repeats_other_ports_and_slow_fanout_do_not() {
        let mut f = Fanout::default();
        // The same few hosts again and again (a monitoring loop).
        for i in 0..1000u32 {
            assert!(f.attempt(v4(i % 8), 22, u64::from(i) * 1_000_000).is_none());
        }
        // Many hosts on a web port.
        for i in 0..100u32 {
            assert!(f.attempt(v4(i), 443, u64::from(i)).is_none());
        }
        // One new host every two seconds: never 32 within 30 s.
        let mut g = Fanout::default();
        for i in 0..100u32 {
            assert!(g.attempt(v4(i), 22, u64::from(i) * 2_000_000_000).is_none());
        }
    }

    #[test]
    fn cluster_tools_are_known_by_exe_or_name() {
        assert!(is_fanout_tool("/usr/bin/pdsh", "pdsh"));
        assert!(is_fanout_tool("/usr/bin/python3.11", "clush"));
        assert!(is_fanout_tool("/usr/bin/python3", "ansible-playboo"));
        assert!(!is_fanout_tool("/tmp/.x/kdevtmpfsi", "kdevtmpfsi"));
        assert!(!is_fanout_tool("/usr/bin/ssh", "ssh"));
    }
}
