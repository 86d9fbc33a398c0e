//! The last hour, minute by minute: tasks finished, of which failed, and the most tasks
//! waiting at once. The console's health charts; bounded at 60 minutes whatever the load.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// Minutes kept.
pub const MINUTES: usize = 60;

/// One minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Minute {
    /// Its start, in milliseconds since the epoch.
    pub start_ms: i64,
    /// Tasks that finished in it (those of the task API and of cluster operations).
    pub finished: u64,
    /// Of which ended with a status other than 0.
    pub failed: u64,
    /// The most tasks accepted and not finished, as sampled in it.
    pub queued: u64,
}

/// The minutes, oldest first.
#[derive(Default)]
pub struct Recent {
    minutes: Mutex<VecDeque<Minute>>,
}

impl Recent {
    /// A task finished at `now_ms` with `status`.
    pub fn finished(&self, now_ms: i64, status: i64) {
        self.at(now_ms, |m| {
            m.finished += 1;
            m.failed += u64::from(status != 0);
        });
    }

    /// `queued` tasks wait at `now_ms`.
    pub fn sample(&self, now_ms: i64, queued: u64) {
        self.at(now_ms, |m| m.queued = m.queued.max(queued));
    }

    /// The last [`MINUTES`] minutes up to `now_ms`, oldest first, quiet ones as zeros.
    pub fn last_hour(&self, now_ms: i64) -> Vec<Minute> {
        let kept = self.lock();
        let current = minute_of(now_ms);
        (0..MINUTES as i64)
            .rev()
            .map(|back| {
                let start_ms = current - back * 60_000;
                kept.iter()
                    .find(|m| m.start_ms == start_ms)
                    .copied()
                    .unwrap_or(Minute { start_ms, ..Minute::default() })
            })
            .collect()
    }

    fn at(&self, now_ms: i64, change: impl FnOnce(&mut Minute)) {
        let start_ms = minute_of(now_ms);
        let mut kept = self.lock();
        if kept.back().is_none_or(|m| m.start_ms < start_ms) {
            kept.push_back(Minute { start_ms, ..Minute::default() });
        }
        while kept.front().is_some_and(|m| m.start_ms <= start_ms - MINUTES as i64 * 60_000) {
            kept.pop_front();
        }
        // A clock stepped back lands in the newest minute rather than growing the list.
        if let Some(m) = kept.back_mut() {
            change(m);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Minute>> {
        self.minutes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn minute_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_count_what_finished_and_failed_and_the_hour_is_bounded() {
        let r = Recent::default();
        let t0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000;
        r.finished(t0 + 1, 0);
        r.finished(t0 + 59_999, 2);
        r.sample(t0 + 10, 7);
        r.sample(t0 + 20, 3);
        r.finished(t0 + 60_000, 0);
        let hour = r.last_hour(t0 + 60_000);
        assert_eq!(hour.len(), MINUTES);
        assert_eq!(hour[MINUTES - 2], Minute { start_ms: t0, finished: 2, failed: 1, queued: 7 });
        assert_eq!(hour[MINUTES - 1].finished, 1);
        // Three hours later the old minutes are gone, and the list stays within the hour.
        for i in 0..180 {
            r.finished(t0 + i * 60_000, 0);
        }
        assert!(r.lock().len() <= MINUTES);
        assert_eq!(r.last_hour(t0 + 179 * 60_000).iter().map(|m| m.finished).sum::<u64>(), 60);
    }
}
