//! The persistence watch: fanotify marks on the few directories where a miner makes itself
//! permanent (cron, systemd units, `/etc` for `ld.so.preload`, accounts and sudoers, `.ssh`
//! for `authorized_keys`, the system binary directories), for close-after-write, create and
//! move-into only. The kernel reports the writer's pid with each event; no `open()` or
//! `write()` anywhere else on the node runs any sensor code, and there is no event per
//! write, only per close. A full queue is one overflow event, counted as a loss.
use std::{
    collections::BTreeMap,
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use minerwatch_detect::persistence::{self, Change};
use tokio::io::unix::AsyncFd;

/// One change to a watched file, by the process that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub pid: u32,
    /// The watched directory, as the sensor resolved it at start (`/bin` is `/usr/bin` on a
    /// merged-/usr system).
    pub dir: Arc<str>,
    pub name: String,
    pub change: Change,
}

impl FileChange {
    pub fn path(&self) -> String {
        format!("{}/{}", self.dir.trim_end_matches('/'), self.name)
    }
}

/// A directory as events name it: its filesystem's id (`statfs`'s `f_fsid`, 8 bytes), then
/// its file handle (type, then bytes). A handle alone is unique only within one filesystem.
type Handle = Vec<u8>;

pub struct FileWatch {
    fd: AsyncFd<OwnedFd>,
    dirs: BTreeMap<Handle, Arc<str>>,
    me: i32,
    /// Events read, queue overflows, and events naming a directory the sensor did not mark.
    pub events: u64,
    pub overflows: u64,
    pub unknown: u64,
}

/// Marked for: a file written and closed, created, or renamed in.
const MASK: u64 =
    libc::FAN_CLOSE_WRITE | libc::FAN_CREATE | libc::FAN_MOVED_TO | libc::FAN_EVENT_ON_CHILD;

impl FileWatch {
    /// Marks every watched directory that exists. Fails when fanotify itself is unavailable;
    /// a directory that cannot be marked is skipped and said in the log.
    pub fn open() -> io::Result<FileWatch> {
        // SAFETY: plain syscall; the fd is owned below.
        let raw = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_NOTIF
                    | libc::FAN_CLOEXEC
                    | libc::FAN_NONBLOCK
                    | libc::FAN_REPORT_DFID_NAME,
                (libc::O_RDONLY | libc::O_CLOEXEC) as u32,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut dirs = BTreeMap::new();
        for dir in candidates() {
            let Ok(real) = dir.canonicalize() else {
                continue;
            };
            if !real.is_dir() {
                continue;
            }
            match mark(&fd, &real) {
                Ok(handle) => {
                    dirs.entry(handle)
                        .or_insert_with(|| Arc::from(real.to_string_lossy().as_ref()));
                }
                Err(e) => {
                    tracing::warn!(dir = %real.display(), error = %e, "cannot watch this directory for persistence")
                }
            }
        }
        // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the same for the
        // AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(FileWatch {
            fd,
            dirs,
            me: std::process::id() as i32,
            events: 0,
            overflows: 0,
            unknown: 0,
        })
    }

    /// Directories watched.
    pub fn watched(&self) -> usize {
        self.dirs.len()
    }

    /// Waits until events may be there to read.
    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        // Cleared before reading: `read` takes everything, so a wake-up for what arrives
        // after is not lost.
        guard.clear_ready();
        Ok(())
    }

    /// Everything queued now.
    pub fn read(&mut self, out: &mut Vec<FileChange>) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n <= 0 {
                return;
            }
            self.parse(&buf[..n as usize], out);
        }
    }

    fn parse(&mut self, mut b: &[u8], out: &mut Vec<FileChange>) {
        let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        let u32_at =
            |b: &[u8], i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap_or_default());
        while b.len() >= 24 {
            let len = u32_at(b, 0) as usize;
            if len < 24 || len > b.len() {
                return;
            }
            let (ev, rest) = b.split_at(len);
            b = rest;
            let meta_len = u16_at(ev, 6) as usize;
            let mask = u64::from_ne_bytes(ev[8..16].try_into().unwrap_or_default());
            let pid = u32_at(ev, 20) as i32;
            self.events += 1;
            if mask & libc::FAN_Q_OVERFLOW != 0 {
                self.overflows += 1;
                continue;
            }
            if pid == self.me || pid <= 0 {
                continue;
            }
            let change = if mask & libc::FAN_MOVED_TO != 0 {
                Change::MovedIn
            } else if mask & libc::FAN_CREATE != 0 {
                Change::Created
            } else {
                Change::Wrote
            };
            // Info records: header (type, pad, length), fsid (8), file_handle (bytes, type,
            // handle), then the name, NUL-terminated.
            let mut info = ev.get(meta_len..).unwrap_or_default();
            while info.len() >= 4 {
                let kind = info[0];
                let ilen = u16_at(info, 2) as usize;
                if ilen < 4 || ilen > info.len() {
                    break;
                }
                let (rec, next) = info.split_at(ilen);
                info = next;
                if kind != libc::FAN_EVENT_INFO_TYPE_DFID_NAME || rec.len() < 20 {
                    continue;
                }
                let hbytes = u32_at(rec, 12) as usize;
                let Some(handle) = rec.get(16..20 + hbytes) else {
                    continue;
                };
                let key: Handle = [&rec[4..12], handle].concat();
                let name = &rec[20 + hbytes..];
                let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
                let Some(dir) = self.dirs.get(&key) else {
                    self.unknown += 1;
                    continue;
                };
                out.push(FileChange {
                    pid: pid as u32,
                    dir: dir.clone(),
                    name: String::from_utf8_lossy(name).into_owned(),
                    change,
                });
            }
        }
    }
}

/// The directories to watch: the fixed ones, and the `.ssh` directory of root and of every
/// home directory under /home (those that exist at start).
fn candidates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = persistence::watched_dirs().map(PathBuf::from).collect();
    v.push(PathBuf::from("/root/.ssh"));
    if let Ok(homes) = std::fs::read_dir("/home") {
        v.extend(homes.flatten().map(|h| h.path().join(".ssh")));
    }
    v
}

/// Marks `dir` and returns its [`Handle`].
fn mark(fd: &OwnedFd, dir: &Path) -> io::Result<Handle> {
    let c = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: valid fd and NUL-terminated path.
    let r = unsafe {
        libc::fanotify_mark(
            fd.as_raw_fd(),
            libc::FAN_MARK_ADD,
            MASK,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[] }, 128 bytes
    // of handle at most (MAX_HANDLE_SZ).
    let mut buf = [0u8; 8 + 128];
    buf[..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id = 0;
    // SAFETY: `buf` is a file_handle with room for 128 bytes, as its first field says.
    let r = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut mount_id,
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes = u32::from_ne_bytes(buf[..4].try_into().unwrap_or_default()) as usize;
    // SAFETY: all-zero bytes are a valid statfs (plain integers).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs to fill.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fsid_t` is two plain ints, as the kernel's `__kernel_fsid_t` in the event.
    let fsid: [u8; 8] = unsafe { std::mem::transmute(st.f_fsid) };
    // As events carry it: the fsid, then the handle's type and bytes.
    Ok([&fsid[..], &buf[4..8 + bytes.min(128)]].concat())
}
