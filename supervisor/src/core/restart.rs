//! When to restart a crashed plugin process: at once the first time, then with exponential
//! backoff and jitter, and not at all (for a cool-down) after too many crashes in a window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::core::manifest::RestartPolicy;

/// What to do after a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start again after this delay (zero for the first crash in a while).
    RestartAfter(Duration),
    /// Too many crashes: stay failed until `until`.
    GiveUp {
        /// Crashes counted in the window, this one included.
        crashes: usize,
        /// When to try again.
        until: Instant,
    },
}

/// Crash history of one plugin instance.
#[derive(Debug)]
pub struct RestartTracker {
    policy: RestartPolicy,
    crashes: VecDeque<Instant>,
}

impl RestartTracker {
    /// No crashes yet.
    pub fn new(policy: RestartPolicy) -> Self {
        RestartTracker { policy, crashes: VecDeque::new() }
    }

    /// Records a crash at `now` and decides.
    pub fn record(&mut self, now: Instant) -> Decision {
        while self.crashes.front().is_some_and(|t| now.duration_since(*t) > self.policy.within) {
            self.crashes.pop_front();
        }
        self.crashes.push_back(now);
        let n = self.crashes.len();
        if n > self.policy.max_restarts as usize {
            return Decision::GiveUp { crashes: n, until: now + self.policy.cool_down };
        }
        Decision::RestartAfter(self.delay(n))
    }

    /// Forgets the history (after a cool-down, or an operator's restart).
    pub fn reset(&mut self) {
        self.crashes.clear();
    }

    /// The policy in force.
    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    /// 0 for the first crash; then `initial * 2^(n-2)`, capped, with the upper half
    /// randomised so that many plugins crashing together do not restart in lockstep.
    fn delay(&self, n: usize) -> Duration {
        if n <= 1 {
            return Duration::ZERO;
        }
        let exp = u32::try_from(n - 2).unwrap_or(u32::MAX).min(30);
        let base = self.policy.backoff_initial.saturating_mul(1 << exp).min(self.policy.backoff_max);
        loom_protocol::backoff::equal_jitter(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 3,
            within: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(300),
            cool_down: Duration::from_secs(30),
        }
    }

    #[test]
    fn first_restart_is_immediate_then_backoff_grows_with_jitter_and_a_cap() {
        let mut t = RestartTracker::new(policy());
        let now = Instant::now();
        assert_eq!(t.record(now), Decision::RestartAfter(Duration::ZERO));
        let Decision::RestartAfter(d2) = t.record(now) else { panic!() };
        assert!(d2 >= Duration::from_millis(50) && d2 <= Duration::from_millis(100), "{d2:?}");
        let Decision::RestartAfter(d3) = t.record(now) else { panic!() };
        assert!(d3 >= Duration::from_millis(100) && d3 <= Duration::from_millis(200), "{d3:?}");
    }

    #[test]
    fn gives_up_after_max_restarts_within_the_window() {
        let mut t = RestartTracker::new(policy());
        let now = Instant::now();
        for _ in 0..3 {
            assert!(matches!(t.record(now), Decision::RestartAfter(_)));
        }
        assert_eq!(t.record(now), Decision::GiveUp { crashes: 4, until: now + Duration::from_secs(30) });
    }

    #[test]
    fn crashes_outside_the_window_are_forgotten() {
        let mut t = RestartTracker::new(policy());
        let start = Instant::now();
        for _ in 0..3 {
            t.record(start);
        }
        let later = start + Duration::from_secs(61);
        assert_eq!(t.record(later), Decision::RestartAfter(Duration::ZERO));
    }
}
