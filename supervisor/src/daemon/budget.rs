//! The memory budget for tasks: the bytes of request bodies being read, and of tasks
//! accepted over the API and not finished, that the daemon holds at once
//! (`max_pending_task_bytes`).
//!
//! A request reserves its body's size before reading it, and a task keeps its reservation
//! until its result is journaled, so whatever clients send, the tasks in memory stay
//! within the budget: beyond it, a request waits for room (up to a limit), then is refused
//! with 503. Reservations are counted in KiB (a semaphore's permits are `u32` per acquire).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget; cheap to share.
#[derive(Debug, Clone)]
pub struct Budget {
    room: Arc<Semaphore>,
    total_kib: usize,
}

/// Bytes reserved; given back when dropped.
#[derive(Debug)]
pub struct Reservation(OwnedSemaphorePermit);

/// Why no room was reserved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// More than the whole budget (413).
    #[error("{bytes} bytes is more than the daemon holds for tasks at once ({budget} bytes, max_pending_task_bytes)")]
    TooLarge {
        /// What was asked for.
        bytes: usize,
        /// The budget.
        budget: usize,
    },
    /// The budget stayed full while the request waited (503).
    #[error(
        "the daemon already holds {budget} bytes of tasks not yet finished (max_pending_task_bytes) and no room came free within {} s; try again later",
        waited.as_secs()
    )]
    Full {
        /// The budget.
        budget: usize,
        /// How long the request waited.
        waited: Duration,
    },
}

fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024).max(1)
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Budget {
        let total_kib = kib(bytes).min(Semaphore::MAX_PERMITS);
        Budget { room: Arc::new(Semaphore::new(total_kib)), total_kib }
    }

    /// The whole budget in bytes.
    pub fn bytes(&self) -> usize {
        self.total_kib.saturating_mul(1024)
    }

    /// Bytes reserved now.
    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.total_kib.saturating_sub(self.room.available_permits()).saturating_mul(1024)
    }

    /// Reserves `bytes`, waiting up to `wait` for room. Requests wait in order.
    ///
    /// # Errors
    /// [`BudgetError::TooLarge`] at once when `bytes` exceeds the whole budget;
    /// [`BudgetError::Full`] when no room came free within `wait`.
    ///
    /// # Cancellation
    /// Dropping the future gives up the place in line; nothing stays reserved.
    pub async fn reserve(&self, bytes: usize, wait: Duration) -> Result<Reservation, BudgetError> {
        let n = kib(bytes);
        if n > self.total_kib {
            return Err(BudgetError::TooLarge { bytes, budget: self.bytes() });
        }
        let n32 = u32::try_from(n).map_err(|_| BudgetError::TooLarge { bytes, budget: self.bytes() })?;
        match tokio::time::timeout(wait, Arc::clone(&self.room).acquire_many_owned(n32)).await {
            Ok(Ok(permit)) => Ok(Reservation(permit)),
            // The semaphore is never closed; treat it as full if it were.
            Ok(Err(_)) | Err(_) => Err(BudgetError::Full { budget: self.bytes(), waited: wait }),
        }
    }
}

impl Reservation {
    /// Gives back what is reserved beyond `bytes` (a body turned out smaller than the
    /// most it could have been).
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = kib(bytes);
        let have = self.0.num_permits();
        if have > keep {
            drop(self.0.split(have - keep));
        }
    }

    /// Bytes reserved.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.0.num_permits().saturating_mul(1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_and_give_it_back() {
        let budget = Budget::new(10 * 1024);
        let mut a = budget.reserve(8 * 1024, Duration::from_secs(1)).await.unwrap();
        assert_eq!(budget.in_use(), 8 * 1024);
        let full = budget.reserve(4 * 1024, Duration::from_millis(1)).await.unwrap_err();
        assert!(matches!(full, BudgetError::Full { .. }), "{full}");
        a.shrink_to(5000);
        assert_eq!((a.bytes(), budget.in_use()), (5 * 1024, 5 * 1024), "rounded up to whole KiB");
        let b = budget.reserve(4 * 1024, Duration::from_millis(1)).await.unwrap();
        drop((a, b));
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once() {
        let budget = Budget::new(1024 * 1024);
        let e = budget.reserve(2 * 1024 * 1024, Duration::from_secs(3600)).await.unwrap_err();
        assert_eq!(e, BudgetError::TooLarge { bytes: 2 * 1024 * 1024, budget: 1024 * 1024 });
        assert!(e.to_string().contains("max_pending_task_bytes"));
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_room_given_back() {
        let budget = Budget::new(4 * 1024);
        let first = budget.reserve(4 * 1024, Duration::from_secs(1)).await.unwrap();
        let waiting = budget.reserve(2 * 1024, Duration::from_secs(3600));
        tokio::pin!(waiting);
        // Polled once: it is in line, with no room.
        tokio::select! {
            biased;
            r = &mut waiting => panic!("room while the budget is full: {r:?}"),
            () = std::future::ready(()) => {}
        }
        drop(first);
        assert_eq!(waiting.await.map(|r| r.bytes()), Ok(2 * 1024));
    }
}
