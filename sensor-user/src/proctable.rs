//! The process table: what we know about every live process (exe, argv, parent, user,
//! cgroup, Slurm job). Bootstrapped from /proc at start so processes and TCP connections
//! that predate the sensor are known, then kept current by exec/fork/exit events.
use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use hashbrown::HashMap;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    /// Resolved `/proc/<pid>/exe` (shows memfd and deleted files), else the exec filename.
    pub exe: String,
    pub argv: Vec<String>,
    /// cgroup v2 path, or the first v1 path naming a Slurm job.
    pub cgroup: String,
    /// cgroup v2 id the path was read for (0 when read from /proc at start).
    pub cgroup_id: u64,
    pub job: Option<u64>,
    /// Known from /proc at start rather than seen starting.
    pub preexisting: bool,
}

/// Slurm job id from a cgroup path (`…/job_1234/…`, v1 or v2 layouts).
pub fn slurm_job(cgroup: &str) -> Option<u64> {
    cgroup
        .split('/')
        .find_map(|seg| seg.strip_prefix("job_")?.parse().ok())
}

/// Container id from a cgroup path: the 64-hex id that Docker (`docker-<id>.scope`,
/// `/docker/<id>`), containerd (`cri-containerd-<id>.scope`) and Podman (`libpod-<id>.scope`)
/// put in it.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.split('/').rev().find_map(|seg| {
        let seg = seg.strip_suffix(".scope").unwrap_or(seg);
        let id = seg.rsplit('-').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

/// Picks the cgroup to report from `/proc/<pid>/cgroup`: a Slurm job path if any hierarchy
/// has one, else the v2 (`0::`) path.
pub fn parse_cgroup_file(text: &str) -> String {
    let paths: Vec<&str> = text
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .collect();
    if let Some(p) = paths.iter().find(|p| slurm_job(p).is_some()) {
        return p.to_string();
    }
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or(paths.first().copied())
        .unwrap_or("")
        .to_string()
}

#[derive(Default)]
pub struct ProcTable {
    procs: HashMap<u32, Process>,
}

impl Process {
    /// A process we have no record of (it exited before we could read it).
    pub fn unknown(pid: u32) -> Self {
        Process {
            pid,
            ppid: 0,
            uid: 0,
            comm: String::new(),
            exe: String::new(),
            argv: Vec::new(),
            cgroup: String::new(),
            cgroup_id: 0,
            job: None,
            preexisting: false,
        }
    }
}

impl ProcTable {
    /// Reads every process in `proc_root` (normally `/proc`).
    pub fn bootstrap(proc_root: &Path) -> Self {
        let mut t = Self::default();
        if let Ok(dir) = fs::read_dir(proc_root) {
            for e in dir.flatten() {
                if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok())
                    && let Some(mut p) = read_process(proc_root, pid)
                {
                    p.preexisting = true;
                    t.procs.insert(pid, p);
                }
            }
        }
        t
    }

    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.procs.get(&pid)
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Process> {
        self.procs.values()
    }

    pub fn insert(&mut self, p: Process) {
        self.procs.insert(p.pid, p);
    }

    /// A fork: the child starts as a copy of its parent until it execs.
    pub fn fork(&mut self, parent: u32, child: u32, comm: &str) {
        let p = match self.procs.get(&parent) {
            Some(pp) => Process {
                pid: child,
                ppid: parent,
                preexisting: false,
                ..pp.clone()
            },
            None => Process {
                ppid: parent,
                comm: comm.to_string(),
                ..Process::unknown(child)
            },
        };
        self.procs.insert(child, p);
    }

    pub fn remove(&mut self, pid: u32) -> Option<Process> {
        self.procs.remove(&pid)
    }

    /// Ancestors of `pid`, nearest first, at most `max`.
    pub fn ancestors(&self, pid: u32, max: usize) -> Vec<&Process> {
        let mut out = Vec::new();
        let mut cur = self.procs.get(&pid).map(|p| p.ppid);
        while let Some(ppid) = cur {
            if ppid == 0 || out.len() >= max {
                break;
            }
            match self.procs.get(&ppid) {
                Some(p) => {
                    out.push(p);
                    cur = Some(p.ppid);
                }
                None => break,
            }
        }
        out
    }
}

/// Reads one process from /proc; `None` when it is gone or is a kernel thread we can't read.
pub fn read_process(proc_root: &Path, pid: u32) -> Option<Process> {
    let dir = proc_root.join(pid.to_string());
    let stat = fs::read_to_string(dir.join("stat")).ok()?;
    // comm is parenthesised and may contain spaces and parentheses: split at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let ppid = stat[close + 2..].split(' ').nth(1)?.parse().ok()?;
    let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let argv = fs::read(dir.join("cmdline"))
        .map(|b| split_nul(&b))
        .unwrap_or_default();
    let exe = fs::read_link(dir.join("exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let cgroup = fs::read_to_string(dir.join("cgroup"))
        .map(|t| parse_cgroup_file(&t))
        .unwrap_or_default();
    Some(Process {
        pid,
        ppid,
        uid,
        comm,
        exe,
        job: slurm_job(&cgroup),
        cgroup,
        cgroup_id: 0,
        argv,
        preexisting: false,
    })
}

pub fn split_nul(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// An established TCP connection found in /proc at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenConnection {
    pub pid: u32,
    pub fd: u32,
    pub peer: SocketAddr,
}

/// Parses `/proc/net/tcp` or `tcp6`: established sockets' inode -> remote address.
pub fn parse_proc_net_tcp(text: &str, v6: bool) -> HashMap<u64, SocketAddr> {
    let mut out = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "01" {
            continue; // not ESTABLISHED
        }
        let Some((addr, port)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(port), Ok(inode)) = (u16::from_str_radix(port, 16), f[9].parse::<u64>()) else {
            continue;
        };
        // The kernel prints each 32-bit word of the address in host (little-endian) order.
        let words: Vec<u32> = (0..addr.len() / 8)
            .filter_map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok())
            .collect();
        let ip = match (v6, words.as_slice()) {
            (false, [w]) => IpAddr::V4(Ipv4Addr::from(w.to_le_bytes())),
            (true, [a, b, c, d]) => {
                let mut o = [0u8; 16];
                for (i, w) in [a, b, c, d].iter().enumerate() {
                    o[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
                }
                let v6 = Ipv6Addr::from(o);
                v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
            }
            _ => continue,
        };
        out.insert(inode, SocketAddr::new(ip, port));
    }
    out
}

/// Every established TCP connection with the process and descriptor that holds it.
pub fn open_tcp_connections(proc_root: &Path) -> Vec<OpenConnection> {
    let mut inodes = HashMap::new();
    for (file, v6) in [("net/tcp", false), ("net/tcp6", true)] {
        if let Ok(t) = fs::read_to_string(proc_root.join(file)) {
            inodes.extend(parse_proc_net_tcp(&t, v6));
        }
    }
    let mut out = Vec::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(dir) = fs::read_dir(proc_root) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
                && let Some(&peer) = inodes.get(&inode)
                && let Some(fd) = fd.file_name().to_str().and_then(|s| s.parse().ok())
            {
                out.push(OpenConnection { pid, fd, peer });
            }
        }
    }
    out
}

/// Socket `fd` of process `pid` and its cookie, through a duplicate of the descriptor
/// (`pidfd_getfd`, Linux 5.6+, needs ptrace rights over `pid`: root has them).
pub fn socket_of(pid: u32, fd: u32) -> std::io::Result<(std::os::fd::OwnedFd, u64)> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let last = std::io::Error::last_os_error;
    // SAFETY: plain syscalls; every returned fd is owned (and closed) below.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0);
        if pidfd < 0 {
            return Err(last());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let dup = libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd(),
            fd as libc::c_int,
            0,
        );
        if dup < 0 {
            return Err(last());
        }
        let dup = OwnedFd::from_raw_fd(dup as i32);
        let mut cookie: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        let r = libc::getsockopt(
            dup.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        if r < 0 {
            return Err(last());
        }
        Ok((dup, cookie))
    }
}

/// uid -> user name, from /etc/passwd, cached.
#[derive(Default)]
pub struct Users {
    names: HashMap<u32, String>,
}

impl Users {
    pub fn load(passwd: &Path) -> Self {
        let mut names = HashMap::new();
        if let Ok(t) = fs::read_to_string(passwd) {
            for l in t.lines() {
                let f: Vec<&str> = l.split(':').collect();
                if let (Some(name), Some(Ok(uid))) = (f.first(), f.get(2).map(|u| u.parse())) {
                    names.insert(uid, name.to_string());
                }
            }
        }
        Self { names }
    }

    pub fn name(&self, uid: u32) -> Option<&str> {
        self.names.get(&uid).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_common_runtimes() {
        let id = "a".repeat(64);
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/docker/{id}"),
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"),
            format!("/machine.slice/libpod-{id}.scope/container"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id.as_str()), "{path}");
        }
        assert_eq!(
            container_id("/user.slice/user-1000.slice/session-3.scope"),
            None
        );
        assert_eq!(container_id("/slurm/uid_1000/job_42/step_0"), None);
    }

    #[test]
    fn slurm_jobs_from_cgroup_paths() {
        assert_eq!(
            slurm_job("/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0"),
            Some(4242)
        );
        assert_eq!(slurm_job("/slurm/uid_1000/job_77/step_batch"), Some(77));
        assert_eq!(
            slurm_job("/user.slice/user-1000.slice/session-3.scope"),
            None
        );
        let v1 = "12:cpuset:/slurm/uid_1000/job_99/step_0\n0::/user.slice\n";
        assert_eq!(parse_cgroup_file(v1), "/slurm/uid_1000/job_99/step_0");
        assert_eq!(
            parse_cgroup_file("3:memory:/\n0::/user.slice/a.scope\n"),
            "/user.slice/a.scope"
        );
    }

    #[test]
    fn proc_net_tcp_established_only() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:0D05 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1\n\
           1: 0100007F:A1B2 0100007F:0D05 01 00000000:00000000 00:00000000 00000000     0        0 222 1\n";
        let m = parse_proc_net_tcp(v4, false);
        assert_eq!(m.len(), 1);
        assert_eq!(m[&222], "127.0.0.1:3333".parse().unwrap());
        let v6 = "header\n\
           0: 00000000000000000000000001000000:A1B2 0000000000000000FFFF00000100007F:115C 01 0:0 0:0 0 0 0 333 1\n";
        assert_eq!(
            parse_proc_net_tcp(v6, true)[&333],
            "127.0.0.1:4444".parse().unwrap()
        );
    }

    #[test]
    fn bootstrap_sees_this_test_process() {
        let t = ProcTable::bootstrap(Path::new("/proc"));
        let me = t.get(std::process::id()).expect("own process in table");
        assert!(me.preexisting && !me.exe.is_empty() && !me.argv.is_empty());
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
    }

    #[test]
    fn fork_inherits_and_ancestors_walk_up() {
        let mut t = ProcTable::default();
        t.insert(Process {
            pid: 10,
            ppid: 1,
            uid: 5,
            comm: "sh".into(),
            exe: "/bin/sh".into(),
            argv: vec!["sh".into()],
            cgroup: "/slurm/job_3".into(),
            cgroup_id: 77,
            job: Some(3),
            preexisting: true,
        });
        t.fork(10, 11, "sh");
        t.fork(11, 12, "sh");
        let c = t.get(12).unwrap();
        assert_eq!(
            (c.ppid, c.uid, c.job, c.preexisting),
            (11, 5, Some(3), false)
        );
        let chain: Vec<u32> = t.ancestors(12, 8).iter().map(|p| p.pid).collect();
        assert_eq!(chain, [11, 10]);
    }
}
