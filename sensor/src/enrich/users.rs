//! User names through NSS (`getpwuid_r`), so nodes whose users live in LDAP or SSSD show
//! names, not numbers. Lookups can block on the network, so they run on a thread of their
//! own; the pipeline reads the cache and asks for what it lacks. An alert about a uid not
//! yet known waits a few milliseconds for it, once per uid; past that the alert goes without
//! the name, and the next one about the process has it.
use std::{
    collections::HashSet,
    ffi::CStr,
    sync::{Arc, Condvar, Mutex, mpsc},
    time::{Duration, Instant},
};

use hashbrown::HashMap;

/// What a lookup found: a name, or that the uid has none; signalled on every answer.
type Cache = Arc<(Mutex<HashMap<u32, Option<Arc<str>>>>, Condvar)>;

/// The uid that is no uid (`(uid_t)-1`): a process whose uid could not be read.
pub const NO_UID: u32 = u32::MAX;

/// The pipeline's handle on the resolver thread.
pub struct Users {
    cache: Cache,
    asked: HashSet<u32>,
    tx: Option<mpsc::Sender<u32>>,
}

/// One NSS lookup (blocking).
pub fn lookup(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: all-zero is a valid passwd; the out-pointers and buffer are valid for the
        // call, and the strings it sets point into `buf`, read before `buf` changes.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        let r =
            unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut res) };
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if r != 0 || res.is_null() || pw.pw_name.is_null() {
            return None;
        }
        // SAFETY: NSS set pw_name to a NUL-terminated string inside `buf`.
        let name = unsafe { CStr::from_ptr(pw.pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

impl Users {
    /// Starts the resolver thread and asks it for `warm` (the uids already running) first.
    pub fn spawn(warm: impl IntoIterator<Item = u32>) -> Self {
        let cache: Cache = Arc::default();
        let (tx, rx) = mpsc::channel::<u32>();
        let shared = cache.clone();
        let spawned = std::thread::Builder::new()
            .name("minerwatch-users".into())
            .spawn(move || {
                for uid in rx {
                    let name = lookup(uid).map(Arc::from);
                    if let Ok(mut c) = shared.0.lock() {
                        c.insert(uid, name);
                    }
                    shared.1.notify_all();
                }
            });
        let tx = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(reason = %e, "cannot start the user-name thread: alerts show uids only");
                None
            }
        };
        let mut users = Users {
            cache,
            asked: HashSet::new(),
            tx,
        };
        for uid in warm {
            users.want(uid);
        }
        users
    }

    /// Asks for `uid`'s name if it was never asked for.
    pub fn want(&mut self, uid: u32) {
        if uid != NO_UID
            && self.asked.insert(uid)
            && let Some(tx) = &self.tx
        {
            let _ = tx.send(uid);
        }
    }

    /// The name of `uid` if known now; asks for it otherwise.
    pub fn name(&mut self, uid: u32) -> Option<Arc<str>> {
        self.name_within(uid, Duration::ZERO)
    }

    /// The name of `uid`, waiting at most `wait` for the lookup thread to answer.
    pub fn name_within(&mut self, uid: u32, wait: Duration) -> Option<Arc<str>> {
        if uid == NO_UID {
            return None;
        }
        self.want(uid);
        let deadline = Instant::now() + wait;
        let (lock, answered) = &*self.cache;
        let mut cache = lock.lock().ok()?;
        loop {
            if let Some(name) = cache.get(&uid) {
                return name.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            cache = answered.wait_timeout(cache, left).ok()?.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_through_nss() {
        assert_eq!(lookup(0).as_deref(), Some("root"));
        assert_eq!(lookup(3_999_999_999), None);
    }

    #[test]
    fn the_thread_fills_the_cache() {
        let mut u = Users::spawn([]);
        assert_eq!(
            u.name_within(0, Duration::from_secs(5)).as_deref(),
            Some("root")
        );
        assert_eq!(u.name(0).as_deref(), Some("root"));
        assert_eq!(u.name_within(NO_UID, Duration::from_secs(5)), None);
    }
}
