//! Exponential backoff with jitter, for the supervisor's plugin restarts and the bundled
//! plugins' retries (the EC2 API, SSH handshakes): one random source and one doubling
//! rule instead of a copy in each.
//!
//! Jitter spreads out retries that would otherwise come in lockstep (many plugins crashing
//! together, many tasks hitting one sshd's `MaxStartups`). Two shapes are offered because
//! the callers want different bounds: [`equal_jitter`] never waits longer than the
//! computed delay (a restart after a crash should not wait more than its policy says),
//! [`spread`] centres on it (a retry against a busy server).
//!
//! The randomness is the standard library's randomly seeded hasher: unpredictable enough
//! to de-synchronise processes and threads, not meant for anything secret.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A random number in `[0, 1)`.
///
/// Each call hashes with a fresh [`std::collections::hash_map::RandomState`], whose keys
/// are seeded from the operating system once per thread and then advanced per call, so
/// successive calls, threads and processes differ. Not for cryptographic use.
pub fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    // The top 53 bits: exactly the integers an f64 holds, so the quotient is below 1.
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `initial * 2^step`, at most `max` (saturating: a large `step` gives `max`).
pub fn exponential(initial: Duration, max: Duration, step: u32) -> Duration {
    initial.saturating_mul(2u32.saturating_pow(step)).min(max)
}

/// `delay` with its upper half random: between `delay / 2` and `delay` (AWS's "equal
/// jitter"). Never longer than `delay`.
pub fn equal_jitter(delay: Duration) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(random_unit())
}

/// `delay` scaled by a random factor in `[0.5, 1.5)`: on average `delay`, at most half
/// of it earlier or later.
pub fn spread(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + random_unit())
}

/// The pauses between retries: a delay that starts at `initial` and doubles after each
/// pause up to `max`, each pause [`spread`] around it.
#[derive(Debug, Clone)]
pub struct Backoff {
    delay: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { delay: initial.min(max), max }
    }

    /// The delay the next pause is spread around (before jitter): for a caller that
    /// gives up when even this would pass its deadline.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The next pause ([`spread`] around [`Backoff::delay`]); the delay then doubles, up
    /// to the maximum.
    pub fn next_pause(&mut self) -> Duration {
        let pause = spread(self.delay);
        self.delay = self.delay.saturating_mul(2).min(self.max);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn random_unit_is_in_the_unit_interval_and_varies() {
        let samples: Vec<f64> = (0..1000).map(|_| random_unit()).collect();
        assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
        let distinct: std::collections::HashSet<u64> = samples.iter().map(|x| (x * 1e9) as u64).collect();
        assert!(distinct.len() > 990, "only {} distinct values of 1000", distinct.len());
        // Both halves are reached (a constant or a biased source would not).
        assert!(samples.iter().any(|x| *x < 0.5) && samples.iter().any(|x| *x >= 0.5));
    }

    #[test]
    fn random_unit_differs_between_threads() {
        let here = random_unit();
        let there = std::thread::spawn(random_unit).join().unwrap();
        assert_ne!(here, there);
    }

    #[test]
    fn exponential_doubles_from_initial_and_stops_at_max() {
        let steps: Vec<Duration> = (0..6).map(|s| exponential(100 * MS, 1000 * MS, s)).collect();
        assert_eq!(steps, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]);
        assert_eq!(exponential(100 * MS, 1000 * MS, u32::MAX), 1000 * MS);
        assert_eq!(exponential(Duration::MAX, Duration::MAX, 40), Duration::MAX);
        assert_eq!(exponential(Duration::ZERO, 1000 * MS, 40), Duration::ZERO);
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half() {
        let d = 300 * MS;
        let samples: Vec<Duration> = (0..1000).map(|_| equal_jitter(d)).collect();
        assert!(samples.iter().all(|s| (150 * MS..=d).contains(s)), "{samples:?}");
        assert!(samples.iter().any(|s| *s < 225 * MS) && samples.iter().any(|s| *s >= 225 * MS));
        assert_eq!(equal_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn spread_stays_within_half_either_side() {
        let d = 200 * MS;
        let samples: Vec<Duration> = (0..1000).map(|_| spread(d)).collect();
        assert!(samples.iter().all(|s| (100 * MS..300 * MS).contains(s)), "{samples:?}");
        assert!(samples.iter().any(|s| *s < d) && samples.iter().any(|s| *s >= d));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_spreads_each_pause() {
        let mut b = Backoff::new(100 * MS, 700 * MS);
        let mut delays = Vec::new();
        for _ in 0..6 {
            let delay = b.delay();
            let pause = b.next_pause();
            assert!(pause >= delay / 2 && pause < delay * 3 / 2, "{pause:?} around {delay:?}");
            delays.push(delay);
        }
        assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 700 * MS, 700 * MS, 700 * MS]);
    }

    #[test]
    fn backoff_never_starts_above_its_cap() {
        assert_eq!(Backoff::new(5000 * MS, 2000 * MS).delay(), 2000 * MS);
    }
}
