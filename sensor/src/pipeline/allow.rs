//! The allow-list: what a site has decided is allowed (a benchmark account, a sanctioned
//! research miner, one audited binary), each entry with its written reason. An allowed
//! alert is still raised, with every reason and the allowance it met, and the findings and
//! events behind it are all sent; only its severity is held at low, so it is seen and not
//! paged on.
use std::{
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use hashbrown::HashMap;
use minerwatch_detect::Severity;
use sha2::{Digest as _, Sha256};

use super::AlertRecord;
use crate::config::AllowEntry;

/// The most an allowed alert shows.
pub const ALLOWED_SEVERITY: Severity = Severity::Low;

/// Executables larger than this are not hashed (no sha256 entry can match them): hashing
/// runs on the pipeline's thread, and a miner is a few MiB.
const MAX_HASHED: u64 = 64 << 20;

/// FUSE's `f_type`: a file system a user may serve, which could stall a read for good.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// (device, inode, ctime s, ctime ns, size): a file's owner can set its mtime back, not its
/// ctime, and a rewrite or a new file in a reused inode changes the ctime.
type FileId = (u64, u64, i64, i64, u64);

pub struct Allow {
    entries: Vec<AllowEntry>,
    /// What identifies an executable's contents → its SHA-256, when hashed.
    hashes: HashMap<FileId, Option<String>>,
    proc_root: PathBuf,
}

impl Allow {
    pub fn new(entries: Vec<AllowEntry>) -> Self {
        if entries.iter().any(|e| e.account.is_some()) {
            tracing::warn!(
                "allow-list entries by account trust the account squeue reports: unless Slurm enforces accounts (slurmdbd, AccountingStorageEnforce=associations), any user can name one with sbatch -A"
            );
        }
        Allow {
            entries,
            hashes: HashMap::new(),
            proc_root: PathBuf::from("/proc"),
        }
    }

    /// The allowance `rec` meets, in words (`account benchmark: <reason>`), if any.
    pub fn check(&mut self, rec: &AlertRecord) -> Option<String> {
        if self.entries.is_empty() {
            return None;
        }
        let user = rec.user.as_deref();
        let job = rec.job.as_deref();
        let p = &rec.process;
        let mut hash: Option<Option<String>> = None;
        for e in &self.entries {
            let mut said = Vec::new();
            let mut ok = true;
            if let Some(u) = &e.user {
                ok &= user == Some(u.as_str());
                said.push(format!("user {u}"));
            }
            if let Some(a) = &e.account {
                ok &= job.is_some_and(|j| j.account == *a);
                said.push(format!("account {a}"));
            }
            if let Some(pt) = &e.partition {
                ok &= job.is_some_and(|j| j.partition == *pt);
                said.push(format!("partition {pt}"));
            }
            if let Some(x) = &e.exe {
                ok &= p.exe == *x;
                said.push(format!("executable {x}"));
            }
            if let Some(h) = &e.sha256 {
                if ok {
                    let dir = self.proc_root.join(p.pid.to_string());
                    let got = hash.get_or_insert_with(|| {
                        // The pid must still be the process the alert is about.
                        let same = p.start == 0
                            || crate::enrich::proc::start_of(&self.proc_root, p.pid)
                                == Some(p.start);
                        if same {
                            hash_file(&mut self.hashes, &dir.join("exe"))
                        } else {
                            None
                        }
                    });
                    ok &= got.as_deref().is_some_and(|g| g.eq_ignore_ascii_case(h));
                }
                said.push(format!("sha256 {}…", &h[..h.len().min(12)]));
            }
            if ok {
                return Some(format!("{}: {}", said.join(", "), e.reason));
            }
        }
        None
    }
}

/// The SHA-256 of the file `exe` (a `/proc/<pid>/exe` link) leads to, cached in `hashes` by
/// what identifies its contents.
fn hash_file(hashes: &mut HashMap<FileId, Option<String>>, exe: &Path) -> Option<String> {
    {
        let mut f = std::fs::File::open(exe).ok()?;
        let m = f.metadata().ok()?;
        if m.len() > MAX_HASHED {
            return None;
        }
        // SAFETY: a valid fd and out-pointer.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&f), &mut fs) } != 0
            || fs.f_type as i64 == FUSE_SUPER_MAGIC
        {
            return None;
        }
        let key = (m.dev(), m.ino(), m.ctime(), m.ctime_nsec(), m.len());
        if let Some(h) = hashes.get(&key) {
            return h.clone();
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let hashed = loop {
            match f.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => hasher.update(&buf[..n]),
                Err(_) => break false,
            }
        };
        let h = hashed.then(|| {
            hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        });
        if hashes.len() >= 1024 {
            hashes.clear();
        }
        hashes.insert(key, h.clone());
        h
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{enrich::proc::Process, pipeline::Scope};

    fn rec(user: &str, exe: &str) -> AlertRecord {
        let mut process = Process::unknown(std::process::id());
        process.exe = exe.into();
        AlertRecord {
            id: "1".into(),
            update: 0,
            severity: Severity::High,
            score: 60,
            reasons: Vec::new(),
            process,
            user: Some(user.into()),
            job: None,
            connection: None,
            parents: Vec::new(),
            at: SystemTime::now(),
            first_seen_at: SystemTime::now(),
            scope: Scope::Process,
            allowed: None,
        }
    }

    fn entry(f: impl FnOnce(&mut AllowEntry)) -> AllowEntry {
        let mut e = AllowEntry {
            reason: "why".into(),
            ..Default::default()
        };
        f(&mut e);
        e
    }

    #[test]
    fn every_selector_given_must_match() {
        let mut a = Allow::new(vec![entry(|e| {
            e.user = Some("alice".into());
            e.exe = Some("/opt/bench/xmrig".into());
        })]);
        assert_eq!(
            a.check(&rec("alice", "/opt/bench/xmrig")).as_deref(),
            Some("user alice, executable /opt/bench/xmrig: why")
        );
        assert_eq!(a.check(&rec("bob", "/opt/bench/xmrig")), None);
        assert_eq!(a.check(&rec("alice", "/tmp/xmrig")), None);
        // An account entry needs a job Slurm answered for.
        let mut a = Allow::new(vec![entry(|e| e.account = Some("bench".into()))]);
        assert_eq!(a.check(&rec("alice", "/x")), None);
    }

    #[test]
    fn a_sha256_entry_matches_the_running_executable_only() {
        let me = std::fs::read("/proc/self/exe").unwrap();
        let hex: String = Sha256::digest(&me)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut a = Allow::new(vec![entry(|e| e.sha256 = Some(hex.to_uppercase()))]);
        let said = a.check(&rec("root", "/whatever")).unwrap();
        assert!(
            said.starts_with(&format!("sha256 {}…: why", &hex[..12].to_uppercase())),
            "{said}"
        );
        let mut a = Allow::new(vec![entry(|e| e.sha256 = Some("0".repeat(64)))]);
        assert_eq!(a.check(&rec("root", "/whatever")), None);
    }
}
