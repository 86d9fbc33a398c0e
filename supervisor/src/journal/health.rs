//! Whether the journal can write: the reason when its last write failed (a full disk, a
//! file system turned read-only), and how many writes have failed. `/healthz` answers 503
//! with the reason while it cannot write, and `/metrics` counts the failures.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// The journal's ability to write, as its last writes found it.
#[derive(Debug, Default)]
pub struct Health {
    problem: Mutex<Option<String>>,
    failures: AtomicU64,
    /// The journal's folder: asked whether its file system is read-only when SQLite
    /// reports only "disk I/O error".
    folder: Option<PathBuf>,
}

impl Health {
    /// The health of a journal kept in `folder`.
    pub(crate) fn of_folder(folder: PathBuf) -> Health {
        Health { folder: Some(folder), ..Health::default() }
    }

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
        let why = match &self.folder {
            Some(folder) if why.contains("I/O error") && read_only(folder) => {
                format!("{why} (the file system is read-only)")
            }
            _ => why.to_owned(),
        };
        let mut problem = self.problem.lock().unwrap_or_else(PoisonError::into_inner);
        if problem.is_none() {
            tracing::error!("the journal cannot write: {why}; new tasks are refused until it can");
        }
        *problem = Some(why);
    }

    /// A write was committed.
    pub(crate) fn wrote(&self) {
        let mut problem = self.problem.lock().unwrap_or_else(PoisonError::into_inner);
        if problem.take().is_some() {
            tracing::info!("the journal can write again");
        }
    }
}

/// Whether the file system holding `folder` refuses writes as read-only now: SQLite then
/// says only "disk I/O error". Asked by trying to make a file, because an ext4 turned
/// read-only by an I/O error (`errors=remount-ro`) does not show it in its mount flags.
fn read_only(folder: &std::path::Path) -> bool {
    let probe = folder.join(format!(".loom-write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            false
        }
        Err(e) => e.raw_os_error() == Some(nix::libc::EROFS),
    }
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
    fn a_failure_on_a_writable_file_system_is_told_as_sqlite_says_it() {
        // (A read-only one is tested end to end: tests/tests/journal_faults.rs.)
        let writable = Health::of_folder(std::env::temp_dir());
        writable.failed("disk I/O error");
        assert_eq!(writable.problem().as_deref(), Some("disk I/O error"));
    }
}
