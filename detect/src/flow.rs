//! Flow shape: what a connection to a mining pool looks like when its payload is hidden
//! (TLS, Stratum V2). A miner keeps one connection open for as long as it mines; it writes
//! little and seldom (a login, then shares of a few hundred bytes); and the pool pushes new
//! jobs unasked, whenever a block or the difficulty changes. A client that asks and is
//! answered (a licence heartbeat, a database, HTTP keep-alive) has replies but no pushes.
//!
//! The same shape fits other long-lived, pushed-to workers (Dask and Ray workers, message
//! queues), so it is weak evidence: it adds to a fingerprint or a pool sighting and never
//! raises an alert to medium by itself.

/// A connection's totals since it opened, as the kernel counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub age_secs: u64,
    pub out_bytes: u64,
    pub in_bytes: u64,
    /// Client writes (bursts of payload), and the largest in bytes.
    pub writes: u32,
    pub write_max: u32,
    /// Server payload that came unasked, and that answered the client.
    pub pushes: u32,
    pub replies: u32,
    /// Sum and sum of squares of the gaps between pushes, in milliseconds.
    pub push_gap_ms: u64,
    pub push_gap_ms_sq: u64,
}

/// What is asked of a connection before its shape counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Open at least this long.
    pub min_age_secs: u64,
}

/// Pushes needed: one job after the login's answer is any server's; three are a stream.
pub const MIN_PUSHES: u32 = 3;
/// A share, a login or a keep-alive is a few hundred bytes, a ClientHello under two
/// kilobytes; a client that writes more at once is uploading, not mining.
pub const MAX_WRITE: u32 = 4096;
/// A job is a few hundred bytes (a kilobyte or two with a TLS record around a long blob).
pub const MAX_PUSH_AVG: u64 = 4096;
/// Gaps between pushes whose spread is below this share of their mean are periodic.
pub const PERIODIC_CV: f64 = 0.2;

/// The shape of a connection that looks like a miner's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub totals: Totals,
    /// Mean gap between pushes, in seconds.
    pub push_every: f64,
    /// Standard deviation of the gaps over their mean.
    pub spread: f64,
}

impl Shape {
    pub fn periodic(&self) -> bool {
        self.spread < PERIODIC_CV
    }
}

/// The connection's shape when it is a miner's: long-lived, small client writes, server
/// pushes. `None` otherwise.
pub fn judge(t: &Totals, policy: Policy) -> Option<Shape> {
    if t.age_secs < policy.min_age_secs
        || t.pushes < MIN_PUSHES
        || t.writes == 0
        || t.write_max > MAX_WRITE
    {
        return None;
    }
    let server_msgs = u64::from(t.pushes) + u64::from(t.replies);
    if t.in_bytes / server_msgs > MAX_PUSH_AVG {
        return None;
    }
    // Gaps are counted from the second push on.
    let gaps = f64::from(t.pushes - 1);
    let mean = t.push_gap_ms as f64 / gaps;
    if mean <= 0.0 {
        return None;
    }
    let var = (t.push_gap_ms_sq as f64 / gaps - mean * mean).max(0.0);
    Some(Shape {
        totals: *t,
        push_every: mean / 1000.0,
        spread: var.sqrt() / mean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy { min_age_secs: 60 };

    /// A miner: logged in, a few shares, the pool pushing jobs every 20 to 40 s.
    fn miner() -> Totals {
        let gaps = [20_000u64, 41_000, 28_000, 35_000, 22_000];
        Totals {
            age_secs: 180,
            out_bytes: 3_000,
            in_bytes: 5_000,
            writes: 9,
            write_max: 520,
            pushes: gaps.len() as u32 + 1,
            replies: 9,
            push_gap_ms: gaps.iter().sum(),
            push_gap_ms_sq: gaps.iter().map(|g| g * g).sum(),
        }
    }

    #[test]
    fn a_miners_connection_has_the_shape() {
        let s = judge(&miner(), POLICY).expect("shape");
        assert!((s.push_every - 29.2).abs() < 0.1, "{s:?}");
        assert!(s.spread > 0.2 && s.spread < 0.4, "{s:?}");
        assert!(!s.periodic());
    }

    #[test]
    fn pushes_at_one_pace_are_periodic() {
        let t = Totals {
            pushes: 5,
            push_gap_ms: 4 * 30_000,
            push_gap_ms_sq: 4 * 30_000 * 30_000,
            ..miner()
        };
        let s = judge(&t, POLICY).expect("shape");
        assert!(s.periodic(), "{s:?}");
        assert_eq!(s.spread, 0.0);
    }

    #[test]
    fn ask_and_answer_young_uploads_and_bulk_replies_do_not() {
        // A licence heartbeat: every server message answers the client.
        let heartbeat = Totals {
            pushes: 0,
            replies: 60,
            push_gap_ms: 0,
            push_gap_ms_sq: 0,
            ..miner()
        };
        assert_eq!(judge(&heartbeat, POLICY), None);
        assert_eq!(
            judge(
                &Totals {
                    age_secs: 59,
                    ..miner()
                },
                POLICY
            ),
            None
        );
        assert_eq!(
            judge(
                &Totals {
                    write_max: 64 * 1024,
                    ..miner()
                },
                POLICY
            ),
            None
        );
        assert_eq!(
            judge(
                &Totals {
                    in_bytes: 10_000_000,
                    ..miner()
                },
                POLICY
            ),
            None
        );
        assert_eq!(
            judge(
                &Totals {
                    writes: 0,
                    ..miner()
                },
                POLICY
            ),
            None
        );
        // Two pushes are not a stream.
        assert_eq!(
            judge(
                &Totals {
                    pushes: 2,
                    push_gap_ms: 10,
                    push_gap_ms_sq: 100,
                    ..miner()
                },
                POLICY
            ),
            None
        );
    }

    #[test]
    fn counters_that_make_no_sense_are_no_shape_and_no_panic() {
        let t = Totals {
            pushes: u32::MAX,
            replies: u32::MAX,
            push_gap_ms: 0,
            push_gap_ms_sq: u64::MAX,
            ..miner()
        };
        assert_eq!(judge(&t, POLICY), None);
        let t = Totals {
            push_gap_ms_sq: 0,
            ..miner()
        };
        // Squares below the mean's: a spread of zero, not NaN.
        assert_eq!(judge(&t, POLICY).map(|s| s.spread), Some(0.0));
    }
}
