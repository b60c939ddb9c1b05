//! The RandomX fingerprint, from the SSE rounding mode a thread was running with each time
//! it was switched out.
//!
//! A RandomX program sets the rounding mode (`CFROUND`) from the low bits of a register
//! whose value is pseudo-random, so while a thread hashes, all four modes are equally
//! likely: a third of its non-default switches are rounding down, a third up and a third
//! toward zero. Programs that change the rounding mode for good reasons do it differently:
//! interval arithmetic (CGAL, Boost.Interval, MPFI-style code) alternates upward and
//! downward rounding and never rounds toward zero; code that truncates sets toward zero
//! alone. So the fingerprint is not "a non-default mode was seen" but "all three non-default
//! modes, each a fair part of what was seen", in enough switches to tell.
//!
//! Counts are per thread: a miner thread inside a process with dozens of idle threads shows
//! the modes in half of its own switches and in 1 % of the process's.

/// One thread's context switches and the rounding modes they showed (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rounding {
    pub switches: u64,
    pub down: u64,
    pub up: u64,
    pub toward_zero: u64,
}

/// Switches a thread must have been seen in before it is judged. RandomX threads showed a
/// non-default mode in 27 % to 58 % of their switches here, so 64 switches give some 17 to
/// 37 of them, enough to see all three modes.
pub const MIN_SWITCHES: u64 = 64;
/// The least share of a thread's switches with a non-default mode.
pub const MIN_SHARE: f64 = 0.05;
/// The least share of the non-default switches that each of the three modes must have. For a
/// uniform choice it is a third; interval arithmetic gives 0 for toward-zero.
pub const MIN_MODE_SHARE: f64 = 0.1;

/// What a thread's counts say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough switches yet.
    TooFew,
    /// Rounding modes are used, but not the way RandomX uses them.
    NotRandomx,
    RandomX,
}

impl Rounding {
    /// Switches with a non-default mode.
    pub fn non_default(&self) -> u64 {
        self.down + self.up + self.toward_zero
    }

    /// Their share of all switches.
    pub fn share(&self) -> f64 {
        if self.switches == 0 {
            return 0.0;
        }
        self.non_default() as f64 / self.switches as f64
    }

    pub fn verdict(&self) -> Verdict {
        if self.switches < MIN_SWITCHES {
            return Verdict::TooFew;
        }
        let n = self.non_default();
        let spread = [self.down, self.up, self.toward_zero]
            .iter()
            .all(|&m| m as f64 >= MIN_MODE_SHARE * n as f64);
        if self.share() >= MIN_SHARE && spread && n > 0 {
            Verdict::RandomX
        } else {
            Verdict::NotRandomx
        }
    }

    /// Counts since `earlier` (the kernel's counters only grow).
    pub fn since(&self, earlier: &Rounding) -> Rounding {
        Rounding {
            switches: self.switches.saturating_sub(earlier.switches),
            down: self.down.saturating_sub(earlier.down),
            up: self.up.saturating_sub(earlier.up),
            toward_zero: self.toward_zero.saturating_sub(earlier.toward_zero),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(switches: u64, down: u64, up: u64, toward_zero: u64) -> Rounding {
        Rounding {
            switches,
            down,
            up,
            toward_zero,
        }
    }

    #[test]
    fn randomx_uses_every_mode() {
        // XMRig's hashing as measured here: 7 of 26 switches, over longer runs.
        assert_eq!(r(260, 22, 25, 23).verdict(), Verdict::RandomX);
        assert_eq!(r(1204, 230, 241, 227).verdict(), Verdict::RandomX);
    }

    #[test]
    fn too_few_switches_wait() {
        assert_eq!(r(26, 2, 3, 2).verdict(), Verdict::TooFew);
    }

    #[test]
    fn interval_arithmetic_is_not_randomx() {
        // Up and down alternate all the time, toward zero never.
        assert_eq!(r(1000, 500, 500, 0).verdict(), Verdict::NotRandomx);
        // Upward only (CGAL's protected blocks).
        assert_eq!(r(1000, 0, 990, 0).verdict(), Verdict::NotRandomx);
        // Truncation only.
        assert_eq!(r(1000, 0, 0, 700).verdict(), Verdict::NotRandomx);
        // A stray toward-zero switch among many up/down ones.
        assert_eq!(r(1000, 450, 450, 3).verdict(), Verdict::NotRandomx);
    }

    #[test]
    fn a_rare_mode_change_is_not_enough() {
        // Every mode, but in 1 % of switches: below the share.
        assert_eq!(r(3000, 10, 10, 10).verdict(), Verdict::NotRandomx);
    }

    #[test]
    fn since_subtracts_and_never_wraps() {
        assert_eq!(r(100, 10, 10, 10).since(&r(40, 4, 5, 6)), r(60, 6, 5, 4));
        assert_eq!(r(1, 0, 0, 0).since(&r(5, 1, 1, 1)), r(0, 0, 0, 0));
    }
}
