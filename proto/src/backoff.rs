//! The one backoff policy of every retry: exponential, with jitter (backon), so that
//! after an outage the workers, schedulers and webhook deliveries of a fleet do not
//! all try again at the same instant.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The waits of one run of tries, as an iterator.
pub type Delays = ExponentialBackoff;

/// Waits that double from `first` and stop growing at `max`. Each is drawn between
/// half and all of its nominal length (`first * 2^n`), so a wait is never longer than
/// `max` nor shorter than half of `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The waits between tries, one per failure, without end.
    pub fn delays(&self) -> Delays {
        // backon adds a random part of up to the current delay on top of it: the
        // nominal halves with jitter span [half, all) of the nominal delay.
        ExponentialBuilder::new()
            .with_min_delay(self.first / 2)
            .with_max_delay(self.max / 2)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The wait after `failures` failures in a row (1 for the first), where the count
    /// is kept elsewhere (a message's attempt header, a stored row).
    pub fn after_failures(&self, failures: u32) -> Duration {
        // Past 32 doublings every wait is `max`'s anyway.
        let skip = failures.saturating_sub(1).min(32) as usize;
        self.delays().nth(skip).unwrap_or(self.max).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

    #[test]
    fn waits_double_within_half_and_all_of_their_nominal_length_up_to_the_max() {
        for (failures, nominal) in [(1, 1), (2, 2), (3, 4), (4, 8), (6, 32), (7, 60), (40, 60)] {
            let nominal = Duration::from_secs(nominal);
            for _ in 0..200 {
                let wait = POLICY.after_failures(failures);
                assert!(
                    wait >= nominal / 2 && wait <= nominal,
                    "after {failures} failures: {wait:?} outside [{:?}, {nominal:?}]",
                    nominal / 2
                );
            }
        }
    }

    #[test]
    fn two_fleets_failing_together_do_not_retry_in_lockstep() {
        let waits: std::collections::BTreeSet<Duration> =
            (0..100).map(|_| POLICY.after_failures(5)).collect();
        assert!(
            waits.len() > 50,
            "100 workers after the same outage drew only {} distinct waits",
            waits.len()
        );
    }

    #[test]
    fn a_sequence_of_waits_grows_and_never_ends() {
        let waits: Vec<Duration> = POLICY.delays().take(20).collect();
        assert_eq!(waits.len(), 20);
        assert!(waits[0] < Duration::from_secs(1));
        assert!(waits[19] >= Duration::from_secs(30));
        assert!(waits.iter().all(|wait| *wait <= POLICY.max));
    }
}
