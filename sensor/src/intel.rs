//! The pool lists in force: the bundled one and the operator's feeds, loaded at start (a bad
//! feed stops the start with its path and line) and reloaded on SIGHUP or when a feed file
//! changes (a bad feed then is refused, said so, and the lists in force stay).
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use minerwatch_detect::intel::{FeedError, Lists};

use crate::config::Config;

/// The list that ships with the sensor (see `sensor/data/POOLS.md`).
pub const BUNDLED: &str = include_str!("../data/pools.txt");
/// How the bundled list is named in evidence.
pub const BUNDLED_NAME: &str = "bundled";

#[derive(Debug, thiserror::Error)]
pub enum IntelError {
    #[error("cannot read pool feed {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad pool feed {path}, {error}")]
    Parse { path: PathBuf, error: FeedError },
    #[error("the pool feeds hold {n} addresses and networks; the kernel takes at most {max}")]
    TooMany { n: usize, max: u32 },
}

/// The feeds and what was last loaded from them.
pub struct Feeds {
    bundled: bool,
    paths: Vec<PathBuf>,
    /// Modification times at the last load, to notice a change.
    seen: Vec<Option<SystemTime>>,
    lists: Arc<Lists>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Feeds {
    /// Loads every list; any error is fatal here (the sensor must not start half-blind).
    pub fn open(cfg: &Config) -> Result<Self, IntelError> {
        let mut f = Feeds {
            bundled: cfg.bundled_pools,
            paths: cfg.pool_feeds.clone(),
            seen: Vec::new(),
            lists: Arc::default(),
        };
        f.lists = Arc::new(f.load()?);
        Ok(f)
    }

    fn load(&mut self) -> Result<Lists, IntelError> {
        let mut lists = Lists::new();
        if self.bundled {
            lists
                .add(BUNDLED_NAME, BUNDLED)
                .map_err(|error| IntelError::Parse {
                    path: PathBuf::from("(bundled pools.txt)"),
                    error,
                })?;
        }
        let mut seen = Vec::new();
        for path in &self.paths {
            // Taken before the read: a write during the read is seen as a change next time.
            seen.push(mtime(path));
            let text = std::fs::read_to_string(path).map_err(|source| IntelError::Read {
                path: path.clone(),
                source,
            })?;
            lists
                .add(&path.display().to_string(), &text)
                .map_err(|error| IntelError::Parse {
                    path: path.clone(),
                    error,
                })?;
        }
        let n = lists.nets().count();
        if n > minerwatch_common::POOL_ADDRS_MAX as usize {
            return Err(IntelError::TooMany {
                n,
                max: minerwatch_common::POOL_ADDRS_MAX,
            });
        }
        self.seen = seen;
        Ok(lists)
    }

    pub fn lists(&self) -> Arc<Lists> {
        self.lists.clone()
    }

    /// A feed file changed since it was loaded.
    pub fn changed(&self) -> bool {
        self.paths
            .iter()
            .zip(&self.seen)
            .any(|(p, seen)| mtime(p) != *seen)
    }

    /// Loads every list again. On an error the lists in force stay, and the error says why;
    /// the changed file is not retried until it changes again.
    pub fn reload(&mut self) -> Result<Arc<Lists>, IntelError> {
        match self.load() {
            Ok(l) => {
                self.lists = Arc::new(l);
                Ok(self.lists.clone())
            }
            Err(e) => {
                self.seen = self.paths.iter().map(|p| mtime(p)).collect();
                Err(e)
            }
        }
    }

    pub fn sources(&self) -> usize {
        self.paths.len() + usize::from(self.bundled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_list_parses_and_holds_names_only() {
        let mut l = Lists::new();
        let n = l.add(BUNDLED_NAME, BUNDLED).unwrap();
        assert!(n >= 25, "{n}");
        assert_eq!(l.nets().count(), 0);
        assert!(l.match_name("pool.supportxmr.com").is_some());
        assert!(l.match_name("xmr-eu1.nanopool.org").is_some());
        assert!(l.match_name("example.org").is_none());
    }

    fn cfg(paths: &[&Path]) -> Config {
        let mut c = Config::from_file_config(Default::default()).unwrap();
        c.pool_feeds = paths.iter().map(|p| p.to_path_buf()).collect();
        c.bundled_pools = false;
        c
    }

    #[test]
    fn a_bad_feed_at_start_is_an_error_naming_file_and_line() {
        let dir = std::env::temp_dir().join(format!("mw-intel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.txt");
        std::fs::write(&p, "192.0.2.1\nnot a pool!\n").unwrap();
        let e = Feeds::open(&cfg(&[&p])).err().unwrap().to_string();
        assert!(e.contains("bad.txt, line 2"), "{e}");
        let missing = dir.join("missing.txt");
        let e = Feeds::open(&cfg(&[&missing])).err().unwrap().to_string();
        assert!(e.starts_with("cannot read pool feed"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_bad_reload_keeps_the_lists_in_force() {
        let dir = std::env::temp_dir().join(format!("mw-intel-r-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("feed.txt");
        std::fs::write(&p, "192.0.2.1\n").unwrap();
        let mut f = Feeds::open(&cfg(&[&p])).unwrap();
        assert!(!f.changed());
        std::fs::write(&p, "192.0.2.1\n192.0.2.300\n").unwrap();
        // Modification times have a granularity; force a visible change.
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(f.changed());
        assert!(f.reload().is_err());
        assert!(
            !f.changed(),
            "a refused file is not retried until it changes"
        );
        assert_eq!(f.lists().match_addr("192.0.2.1".parse().unwrap()), Some(0));
        std::fs::write(&p, "192.0.2.9\n").unwrap();
        let l = f.reload().unwrap();
        assert_eq!(l.match_addr("192.0.2.9".parse().unwrap()), Some(0));
        assert_eq!(l.match_addr("192.0.2.1".parse().unwrap()), None);
        std::fs::remove_dir_all(&dir).ok();
    }
}
