//! Whether the journal can write: the reason when its last write failed (a full disk, a
//! file system turned read-only), and how many writes have failed. `/healthz` answers 503
//! with the reason while it cannot write, and `/metrics` counts the failures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// The journal's ability to write, as its last writes found it.
#[derive(Debug, Default)]
pub struct Health {
    problem: Mutex<Option<String>>,
    failures: AtomicU64,
}

impl Health {
    /// Why the last write failed, while no write has succeeded since.
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Writes that failed since the journal opened.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// A write failed because of `why`.
    pub(crate) fn failed(&self, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut problem = self.problem.lock().unwrap_or_else(PoisonError::into_inner);
        if problem.is_none() {
            tracing::error!("the journal cannot write: {why}; new tasks are refused until it can");
        }
        *problem = Some(why.to_owned());
    }

    /// A write was committed.
    pub(crate) fn wrote(&self) {
        let mut problem = self.problem.lock().unwrap_or_else(PoisonError::into_inner);
        if problem.take().is_some() {
            tracing::info!("the journal can write again");
        }
    }
}

/// Whether `e` says the storage under the journal cannot take a write (full, read-only,
/// failing), rather than something about one operation.
pub(crate) fn is_storage_error(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, ReadOnly, SystemIoFailure};
    matches!(e.sqlite_error_code(), Some(DiskFull | ReadOnly | SystemIoFailure | CannotOpen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_reported_until_a_write_succeeds_and_counted_for_good() {
        let h = Health::default();
        assert_eq!((h.problem(), h.failures()), (None, 0));
        h.failed("database or disk is full");
        h.failed("database or disk is full");
        assert_eq!(h.problem().as_deref(), Some("database or disk is full"));
        h.wrote();
        assert_eq!((h.problem(), h.failures()), (None, 2));
    }

    #[test]
    fn storage_errors_are_told_from_others() {
        let full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
        let constraint =
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT), None);
        assert!(is_storage_error(&full));
        assert!(!is_storage_error(&constraint));
        assert!(!is_storage_error(&rusqlite::Error::QueryReturnedNoRows));
    }
}
