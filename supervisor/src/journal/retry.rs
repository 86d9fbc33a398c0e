//! Writing a task's result until the journal has it: the daemon's tasks and the clusters'
//! tasks both record their results this way.

use std::future::Future;
use std::time::Duration;

use super::JournalError;

/// The wait after a first failed write.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest wait between two writes.
const MOST_DELAY: Duration = Duration::from_secs(10);

/// The waits between writes: 100 ms, doubling, at most 10 s; endless.
fn delays() -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(FIRST_DELAY), |d| Some((*d * 2).min(MOST_DELAY)))
}

/// Calls `write` (which records the result of task `task_id`) until it succeeds. After a
/// failure it logs `cannot record the result: <error>; trying again` (an error, with the
/// task's id) and waits, 100 ms at first, twice as long each time after, at most 10 s.
///
/// It never gives up: the task has run (a machine may exist, a service may have started)
/// and its result is the only record of what it did; given up, the result would be lost
/// while the journal still shows the task running. A journal that stays broken (a full
/// disk, say) costs a log line every 10 s until it is mended.
///
/// # Cancellation
/// Dropping the future stops the writes. The result is then not recorded, unless a write
/// already queued commits (a journal operation commits once queued, whether or not its
/// caller still waits; see [`super::Journal`]): the task stays `running` in the journal,
/// and the next start treats it as interrupted.
pub async fn until_recorded<F, Fut>(task_id: &str, mut write: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), JournalError>>,
{
    let mut delays = delays();
    while let Err(e) = write().await {
        tracing::error!(task_id = %task_id, "cannot record the result: {e}; trying again");
        tokio::time::sleep(delays.next().unwrap_or(MOST_DELAY)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn the_waits_double_from_100_ms_to_at_most_10_s_and_never_end() {
        let ms: Vec<u128> = delays().take(12).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000, 10_000, 10_000]);
        assert_eq!(delays().nth(1_000_000), Some(MOST_DELAY));
    }

    #[tokio::test]
    async fn a_failed_write_is_tried_again_until_it_is_recorded() {
        let calls = AtomicU32::new(0);
        until_recorded("t1", || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n < 3 {
                    Err(JournalError { place: "/j".into(), message: "disk full".into() })
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "two failures, then the write that succeeded; no more");
    }
}
