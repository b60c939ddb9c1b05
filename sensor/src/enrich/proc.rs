//! What /proc says about a process (exe, argv, parent, user, cgroup, Slurm job, start
//! time) and about the TCP connections that predate the sensor. Each process is read through
//! one directory handle, so every file describes the same process, and the start time it
//! reports is checked against the one expected: a pid reused in between is not mistaken for
//! the process meant. Names that are not UTF-8 are kept, escaped.
use std::{
    ffi::CString,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use hashbrown::HashMap;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Process {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22); 0 when unknown.
    pub start: u64,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    /// Resolved `/proc/<pid>/exe` (shows memfd and deleted files), else the exec filename.
    pub exe: String,
    pub argv: Vec<String>,
    /// The path of the Slurm job's cgroup when the process is in one, else the cgroup v2 path.
    pub cgroup: String,
    /// cgroup v2 id the path is known to be for: 0 when read from /proc at start, or read
    /// after the process may have moved (see `pipeline::describe`).
    pub cgroup_id: u64,
    /// The v1 cgroups' key the path is known to be for (0 on cgroup v2 nodes, and as above).
    #[serde(skip)]
    pub cgroup_v1: u64,
    /// Slurm job id, when the process is in a job's cgroup under slurmstepd's folder.
    pub job: Option<u64>,
    /// The job's SLUID, when its folder is named by one (Slurm 26.05).
    pub sluid: Option<String>,
    /// Known from /proc at start rather than seen starting.
    pub preexisting: bool,
    /// The package manager, or a process it started (maintainer scripts, triggers), as far
    /// as the sensor saw it start: what it writes to system files is the package manager's.
    #[serde(skip)]
    pub package_manager: bool,
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

/// This node has the cgroup v2 hierarchy only (no v1 controller hierarchies), as this
/// process's own `/proc/self/cgroup` shows: a single `0::` line.
pub fn unified_cgroups() -> bool {
    fs::read_to_string("/proc/self/cgroup").is_ok_and(|t| is_unified(&t))
}

fn is_unified(cgroup_file: &str) -> bool {
    let mut lines = cgroup_file.lines().filter(|l| !l.is_empty());
    lines.next().is_some_and(|l| l.starts_with("0::")) && lines.next().is_none()
}

/// Where `/proc/<pid>/cgroup` puts a process: a Slurm job's path and the job when a
/// hierarchy has it under slurmstepd's folder (see [`super::slurm`]), else the v2 (`0::`)
/// path.
pub fn parse_cgroup_file(text: &str) -> Placement {
    let unsure = match super::slurm::job_of(text) {
        super::slurm::Found::Job(job, path) => {
            return Placement {
                path,
                job: Some(job),
                unsure: false,
            };
        }
        super::slurm::Found::None => false,
        super::slurm::Found::NotYet => true,
    };
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| text.lines().find_map(|l| l.splitn(3, ':').nth(2)))
        .unwrap_or("")
        .to_string();
    Placement {
        path,
        job: None,
        unsure,
    }
}

/// A process's cgroup as reported, and its Slurm job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    pub path: String,
    pub job: Option<super::slurm::JobRef>,
    /// Its path looks like a job's under no anchor known yet: not to be reused for others.
    pub unsure: bool,
}

impl Process {
    /// A process we have no record of (it exited before we could read it).
    pub fn unknown(pid: u32) -> Self {
        Process {
            pid,
            start: 0,
            ppid: 0,
            uid: super::users::NO_UID,
            comm: String::new(),
            exe: String::new(),
            argv: Vec::new(),
            cgroup: String::new(),
            cgroup_id: 0,
            cgroup_v1: 0,
            job: None,
            sluid: None,
            preexisting: false,
            package_manager: false,
        }
    }
}

/// Clock ticks per second, the unit of /proc start times.
pub fn clock_ticks() -> u64 {
    // SAFETY: no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// A kernel start time (`start_boottime`, ns) in /proc's unit.
pub fn ns_to_ticks(ns: u64) -> u64 {
    ns / (1_000_000_000 / clock_ticks())
}

/// Bytes from a process (names, paths, arguments) as text: valid UTF-8 as it is, every other
/// byte as `\xNN`. Nothing is lost or replaced by a look-alike.
pub fn escape_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// `/proc/<pid>` opened once; every read goes through it.
struct ProcDir(OwnedFd);

impl ProcDir {
    fn open(proc_root: &Path, pid: u32) -> Option<Self> {
        let path = CString::new(
            proc_root
                .join(pid.to_string())
                .into_os_string()
                .into_encoded_bytes(),
        )
        .ok()?;
        // SAFETY: valid C string; the fd is owned below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        // SAFETY: a new fd we own.
        (fd >= 0).then(|| Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn read(&self, name: &str) -> Option<Vec<u8>> {
        let c = CString::new(name).ok()?;
        // SAFETY: valid dirfd and C string; the fd is owned below.
        let fd = unsafe {
            libc::openat(
                self.0.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a new fd we own.
        let mut f = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut buf).ok()?;
        Some(buf)
    }

    fn link(&self, name: &str) -> Option<Vec<u8>> {
        let c = CString::new(name).ok()?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: valid dirfd, C string and buffer of the length given.
        let n = unsafe {
            libc::readlinkat(
                self.0.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }

    /// What `name` is, following links (for `exe`: the executable file itself).
    fn stat(&self, name: &str) -> Option<libc::stat> {
        let c = CString::new(name).ok()?;
        // SAFETY: valid fd, C string and out-pointer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstatat(self.0.as_raw_fd(), c.as_ptr(), &mut st, 0) } == 0).then_some(st)
    }

    /// The directory's owner: the process's effective uid.
    fn owner(&self) -> Option<u32> {
        // SAFETY: valid fd and out-pointer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(self.0.as_raw_fd(), &mut st) } == 0).then_some(st.st_uid)
    }
}

/// The fields of `/proc/<pid>/stat` we use: comm, ppid, start time.
fn parse_stat(stat: &[u8]) -> Option<(String, u32, u64)> {
    // comm is parenthesised and may hold anything, parentheses too: split at the last ')'.
    let open = stat.iter().position(|&c| c == b'(')?;
    let close = stat.iter().rposition(|&c| c == b')')?;
    let comm = escape_bytes(&stat[open + 1..close]);
    let rest = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
    let f: Vec<&str> = rest.split(' ').collect();
    // After the comm: field 3 (state) is f[0], so field n is f[n - 3].
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

/// The start time of process `pid` (clock ticks since boot), `None` when it is gone.
pub fn start_of(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = fs::read(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&stat).map(|(_, _, start)| start)
}

/// Thread `tid` of process `tgid` is still running.
pub fn thread_exists(proc_root: &Path, tgid: u32, tid: u32) -> bool {
    proc_root
        .join(tgid.to_string())
        .join("task")
        .join(tid.to_string())
        .exists()
}

/// Reads one process from /proc; `None` when it is gone, or when `expect_start` is given and
/// the process under that pid is another one.
pub fn read_process(proc_root: &Path, pid: u32, expect_start: Option<u64>) -> Option<Process> {
    let dir = ProcDir::open(proc_root, pid)?;
    let (comm, ppid, start) = parse_stat(&dir.read("stat")?)?;
    if expect_start.is_some_and(|s| s != start) {
        return None;
    }
    let status = dir.read("status").unwrap_or_default();
    // The real uid from status; failing that, the owner of the directory (the effective uid).
    // Never a default: a process that cannot be read is not taken for root's.
    let uid = String::from_utf8_lossy(&status)
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .or_else(|| dir.owner())?;
    let argv = dir
        .read("cmdline")
        .map(|b| split_nul(&b))
        .unwrap_or_default();
    let exe = dir
        .link("exe")
        .map(|b| escape_bytes(&b))
        .unwrap_or_default();
    let placed = dir
        .read("cgroup")
        .map(|t| parse_cgroup_file(&String::from_utf8_lossy(&t)))
        .unwrap_or_default();
    let job = placed.job.unwrap_or_default();
    Some(Process {
        pid,
        start,
        ppid,
        uid,
        comm,
        package_manager: minerwatch_detect::persistence::is_package_manager(&exe, &argv),
        exe,
        job: job.id,
        sluid: job.sluid,
        cgroup: placed.path,
        cgroup_id: 0,
        cgroup_v1: 0,
        argv,
        preexisting: false,
    })
}

/// What an exec record leaves to /proc, each part only on request: the resolved executable
/// (memfd and deleted files show there) with the (device, inode) it is, the cgroup file and
/// the arguments. All `None` when the process is gone or, with `expect_start`, is another
/// one. The exe alone is a `readlink` and a `stat`; reading more goes through one directory
/// handle, checked against the start time.
#[derive(Debug, Default)]
pub struct ExecDetails {
    pub exe: Option<String>,
    pub exe_id: Option<(u64, u64)>,
    /// `/proc/<pid>/cgroup` as it is (see [`parse_cgroup_file`]).
    pub cgroup: Option<String>,
    pub argv: Option<Vec<String>>,
}

/// What [`exec_details`] is asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    pub exe: bool,
    pub cgroup: bool,
    pub argv: bool,
}

fn dev_ino(st: &libc::stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

pub fn exec_details(
    proc_root: &Path,
    pid: u32,
    expect_start: Option<u64>,
    want: Want,
) -> ExecDetails {
    if !want.cgroup && !want.argv {
        if !want.exe {
            return ExecDetails::default();
        }
        let link = proc_root.join(pid.to_string()).join("exe");
        let Ok(exe) = fs::read_link(&link) else {
            return ExecDetails::default();
        };
        use std::os::unix::fs::MetadataExt as _;
        return ExecDetails {
            exe: Some(escape_bytes(exe.as_os_str().as_encoded_bytes())),
            exe_id: fs::metadata(&link).ok().map(|m| (m.dev(), m.ino())),
            ..ExecDetails::default()
        };
    }
    let Some(dir) = ProcDir::open(proc_root, pid) else {
        return ExecDetails::default();
    };
    if let Some(want) = expect_start {
        let start = dir.read("stat").and_then(|s| parse_stat(&s)).map(|s| s.2);
        if start != Some(want) {
            return ExecDetails::default();
        }
    }
    let exe = want.exe.then(|| dir.link("exe")).flatten();
    ExecDetails {
        exe_id: exe
            .as_ref()
            .and_then(|_| dir.stat("exe"))
            .map(|st| dev_ino(&st)),
        exe: exe.map(|b| escape_bytes(&b)),
        cgroup: want
            .cgroup
            .then(|| dir.read("cgroup"))
            .flatten()
            .map(|t| String::from_utf8_lossy(&t).into_owned()),
        argv: want
            .argv
            .then(|| dir.read("cmdline"))
            .flatten()
            .map(|b| split_nul(&b)),
    }
}

/// The cgroup v1 hierarchies mounted here, as the exec hook's v1 key covers them
/// ([`minerwatch_common::cgroup_v1_step`]): the first subsystem of each, in the kernel's
/// subsystem order (the rows of `/proc/cgroups`), and where its tree is mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupV1 {
    /// Rows of `/proc/cgroups`: the kernel's number of subsystems.
    pub subsystems: usize,
    pub hierarchies: Vec<V1Hierarchy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    /// The subsystem's index (its row in `/proc/cgroups`).
    pub index: u32,
    /// The hierarchy id, as the first field of `/proc/<pid>/cgroup` lines shows it.
    pub id: u32,
    /// Its mount point, `None` when it is not mounted in this mount namespace.
    pub mount: Option<String>,
}

impl CgroupV1 {
    /// This node's hierarchies; none on a cgroup v2 node.
    pub fn read() -> Self {
        Self::parse(
            &fs::read_to_string("/proc/cgroups").unwrap_or_default(),
            &fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        )
    }

    pub fn parse(proc_cgroups: &str, mountinfo: &str) -> Self {
        let mut out = CgroupV1::default();
        for (index, line) in proc_cgroups
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .enumerate()
        {
            out.subsystems += 1;
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(name), Some(Ok(id)), Some(&"1")) =
                (f.first(), f.get(1).map(|h| h.parse::<u32>()), f.get(3))
            else {
                continue;
            };
            if id == 0 || out.hierarchies.iter().any(|h| h.id == id) {
                continue; // on the v2 tree, or a hierarchy already covered
            }
            out.hierarchies.push(V1Hierarchy {
                index: index as u32,
                id,
                mount: v1_mount(mountinfo, name),
            });
        }
        out
    }

    /// Bit `i` for each hierarchy's first subsystem `i`, for the exec hook; 0 when there
    /// are none, or more subsystems than the key covers.
    pub fn mask(&self) -> u32 {
        if self.subsystems > minerwatch_common::CGROUP_SUBSYS_MAX as usize {
            return 0;
        }
        self.hierarchies.iter().fold(0, |m, h| m | (1 << h.index))
    }

    /// The v1 key of the cgroups a `/proc/<pid>/cgroup` file names, from the inode of
    /// each cgroup's directory (a cgroup's id): what the kernel's key was if the process
    /// is still where it was. `None` when a hierarchy is not mounted here or a directory
    /// cannot be found (the process moved on, or the cgroup is gone).
    pub fn key_of(&self, cgroup_file: &str) -> Option<u64> {
        use std::os::unix::fs::MetadataExt as _;
        let mut key = minerwatch_common::CGROUP_V1_KEY_START;
        for h in &self.hierarchies {
            let path = cgroup_file.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                (f.next()?.parse::<u32>().ok()? == h.id).then(|| f.nth(1))?
            })?;
            let dir = format!("{}{}", h.mount.as_deref()?.trim_end_matches('/'), path);
            key = minerwatch_common::cgroup_v1_step(key, fs::metadata(dir).ok()?.ino());
        }
        Some(key)
    }
}

/// Where the v1 hierarchy of subsystem `name` is mounted (its root, not a bind mount of a
/// subtree), from `/proc/self/mountinfo`.
fn v1_mount(mountinfo: &str, name: &str) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split(' ');
        let (fstype, _source, opts) = (r.next()?, r.next()?, r.next()?);
        let l: Vec<&str> = left.split(' ').collect();
        (fstype == "cgroup" && l.get(3) == Some(&"/") && opts.split(',').any(|o| o == name))
            .then(|| l.get(4).map(|m| m.to_string()))?
    })
}

/// Every process in `proc_root` (normally `/proc`), marked as known before the sensor.
pub fn scan(proc_root: &Path) -> Vec<Process> {
    let mut out = Vec::new();
    if let Ok(dir) = fs::read_dir(proc_root) {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok())
                && let Some(mut p) = read_process(proc_root, pid, None)
            {
                p.preexisting = true;
                out.push(p);
            }
        }
    }
    out
}

/// Every live process's (pid, start time), for reconciliation: cheaper than [`scan`].
pub fn live(proc_root: &Path) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    if let Ok(dir) = fs::read_dir(proc_root) {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok())
                && let Some(start) = start_of(proc_root, pid)
            {
                out.push((pid, start));
            }
        }
    }
    out
}

/// NUL-separated arguments, each escaped as [`escape_bytes`] does.
pub fn split_nul(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == 0)
        .filter(|a| !a.is_empty())
        .map(escape_bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_CGROUPS: &str = "#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t3\t1\t1
cpu\t1\t1\t1
cpuacct\t1\t1\t1
memory\t4\t62\t1
net_cls\t0\t1\t1
freezer\t6\t1\t0
pids\t8\t1\t1
";
    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
90 35 0:32 /slurm /mnt/slurm-memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_hierarchies_in_subsystem_order_with_their_mounts() {
        let v1 = CgroupV1::parse(PROC_CGROUPS, MOUNTINFO);
        assert_eq!(v1.subsystems, 7);
        let got: Vec<(u32, u32, Option<&str>)> = v1
            .hierarchies
            .iter()
            .map(|h| (h.index, h.id, h.mount.as_deref()))
            .collect();
        // cpuacct shares cpu's hierarchy; net_cls is on the v2 tree; freezer is disabled;
        // pids is not mounted here; the bind mount of a memory subtree is not its root.
        assert_eq!(
            got,
            [
                (0, 3, Some("/sys/fs/cgroup/cpuset")),
                (1, 1, Some("/sys/fs/cgroup/cpu,cpuacct")),
                (3, 4, Some("/sys/fs/cgroup/memory")),
                (6, 8, None),
            ]
        );
        assert_eq!(v1.mask(), 0b100_1011);
        // Unmounted: no key can be checked, so nothing is reused.
        assert_eq!(
            v1.key_of("8:pids:/\n4:memory:/\n3:cpuset:/\n1:cpu,cpuacct:/\n"),
            None
        );
        // A cgroup v2 node has no hierarchies and an empty mask.
        let v2 = CgroupV1::parse("#subsys_name\thierarchy\nmemory\t0\t9\t1\n", "");
        assert!(v2.hierarchies.is_empty() && v2.mask() == 0);
        assert_eq!(
            v2.key_of("0::/"),
            Some(minerwatch_common::CGROUP_V1_KEY_START)
        );
    }

    #[test]
    fn unified_only_when_v2_alone() {
        assert!(is_unified("0::/user.slice/session-1.scope\n"));
        assert!(!is_unified(
            "12:memory:/slurm/uid_1000/job_42\n1:name=systemd:/\n0::/\n"
        ));
        assert!(!is_unified(""));
    }

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
    fn a_job_like_folder_outside_slurmstepd_is_no_job() {
        // No slurmd anchors hierarchy 12 or the v2 tree's /user.slice.
        let v1 = "12:cpuset:/user/uid_1000/job_99/step_0\n0::/user.slice\n";
        assert_eq!(
            parse_cgroup_file(v1),
            Placement {
                path: "/user.slice".into(),
                job: None,
                unsure: true,
            }
        );
        assert_eq!(
            parse_cgroup_file("3:memory:/\n0::/user.slice/a.scope\n").path,
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
    fn scan_sees_this_test_process_with_its_start_time() {
        let me = scan(Path::new("/proc"))
            .into_iter()
            .find(|p| p.pid == std::process::id())
            .expect("own process");
        assert!(me.preexisting && !me.exe.is_empty() && !me.argv.is_empty());
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(me.start > 0);
        assert!(read_process(Path::new("/proc"), me.pid, Some(me.start)).is_some());
        assert!(read_process(Path::new("/proc"), me.pid, Some(me.start + 1)).is_none());
    }

    #[test]
    fn bytes_that_are_not_utf8_are_kept_escaped() {
        assert_eq!(escape_bytes(b"xmr\xffig"), "xmr\\xffig");
        assert_eq!(escape_bytes("é".as_bytes()), "é");
        assert_eq!(split_nul(b"a\0\xc3\0"), ["a", "\\xc3"]);
        let (comm, ppid, start) =
            parse_stat(b"7 (a) b\xfe)) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0").unwrap();
        assert_eq!((comm.as_str(), ppid, start), ("a) b\\xfe)", 1, 4242));
    }
}
