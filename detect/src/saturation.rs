//! Sustained CPU saturation of one process: the mean on-CPU share over a sliding window must
//! stay at or above a threshold for the whole window. Short bursts (a compile, a test run)
//! never fill the window; a miner does.
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub window_ns: u64,
    /// Share of one core (1.0 = a whole core).
    pub threshold: f64,
}

/// Saturation that has lasted long enough to report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Saturated {
    /// Mean share of a core over the window.
    pub share: f64,
    /// How long it has been saturated, at least the window.
    pub secs: u64,
}

#[derive(Debug, Default)]
pub struct Tracker {
    /// (end of interval, interval length, share during it), oldest first.
    samples: VecDeque<(u64, u64, f64)>,
    since_ns: Option<u64>,
}

impl Tracker {
    /// Records the share observed over the `dt_ns` ending at `now_ns`.
    pub fn push(
        &mut self,
        policy: Policy,
        now_ns: u64,
        dt_ns: u64,
        share: f64,
    ) -> Option<Saturated> {
        self.samples.push_back((now_ns, dt_ns, share));
        let start = now_ns.saturating_sub(policy.window_ns);
        // Drop samples that ended before the window; one that straddles its start stays, or
        // timer jitter (ticks a little over their period) would leave the window short of
        // full at most ticks of a short window.
        while self
            .samples
            .front()
            .is_some_and(|&(end, _, _)| end <= start)
        {
            self.samples.pop_front();
        }
        let covered: u64 = self.samples.iter().map(|&(_, dt, _)| dt).sum();
        let weighted: f64 = self.samples.iter().map(|&(_, dt, s)| s * dt as f64).sum();
        let mean = if covered == 0 {
            0.0
        } else {
            weighted / covered as f64
        };
        // Allow for timer jitter: 95 % of the window counts as the window.
        let full = covered as f64 >= policy.window_ns as f64 * 0.95;
        if full && mean >= policy.threshold {
            let since = *self.since_ns.get_or_insert(start);
            Some(Saturated {
                share: mean,
                secs: (now_ns - since) / 1_000_000_000,
            })
        } else {
            if mean < policy.threshold {
                self.since_ns = None;
            }
            None
        }
    }

    /// True when the window holds no activity at all, so the tracker can be dropped.
    pub fn idle(&self) -> bool {
        self.samples.iter().all(|&(_, _, s)| s == 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const P: Policy = Policy {
        window_ns: 10 * S,
        threshold: 0.9,
    };

    fn run(shares: &[f64]) -> Vec<Option<Saturated>> {
        let mut t = Tracker::default();
        shares
            .iter()
            .enumerate()
            .map(|(i, &s)| t.push(P, (i as u64 + 1) * S, S, s))
            .collect()
    }

    #[test]
    fn saturation_needs_a_full_window() {
        let r = run(&[1.0; 12]);
        assert!(r[..9].iter().all(Option::is_none));
        let s = r[9].unwrap();
        assert_eq!((s.share, s.secs), (1.0, 10));
        assert_eq!(r[11].unwrap().secs, 12, "duration keeps growing");
    }

    #[test]
    fn a_burst_or_a_half_busy_process_is_not_saturation() {
        assert!(
            run(&[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
                .iter()
                .all(Option::is_none)
        );
        assert!(run(&[0.5; 20]).iter().all(Option::is_none));
    }

    #[test]
    fn a_brief_dip_is_averaged_out_but_a_long_one_resets() {
        let mut shares = vec![1.0; 10];
        shares.push(0.5);
        shares.extend([1.0; 3]);
        assert!(run(&shares)[13].is_some());
        let mut shares = vec![1.0; 10];
        shares.extend([0.0; 10]);
        assert!(run(&shares)[19].is_none());
    }

    #[test]
    fn ticks_a_little_late_still_fill_a_short_window() {
        // A 3 s window, ticks every 1.003 s: saturated at every tick from the third on.
        let p = Policy {
            window_ns: 3 * S,
            threshold: 0.9,
        };
        let dt = S + 3_000_000;
        let mut t = Tracker::default();
        let r: Vec<bool> = (1..=10)
            .map(|i| t.push(p, i * dt, dt, 1.0).is_some())
            .collect();
        assert!(
            r[..2].iter().all(|s| !s) && r[2..].iter().all(|s| *s),
            "{r:?}"
        );
    }

    #[test]
    fn multithreaded_share_above_one_counts() {
        assert_eq!(run(&[3.9; 10])[9].unwrap().share, 3.9);
    }
}
