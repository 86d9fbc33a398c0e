//! One operation per cluster at a time, across processes (a `cluster up` in a terminal
//! and the daemon share the journal): an exclusive `flock` on
//! `<data_dir>/clusters/<name>.lock`, held for the operation. The kernel releases it
//! when the process dies, so a killed operation never leaves the cluster locked.
//!
//! In a fleet sharing a PostgreSQL journal ([`Locks::Fleet`]), a cluster is held by one
//! daemon at a time through a row in `cluster_owners`, valid while that daemon's lease
//! holds: when it dies, another daemon may take the cluster (and resume its operation)
//! once the lease ran out, and never before.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::journal::{Journal, Member};

/// Why a cluster's lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (or operation) holds it.
    #[error(
        "cluster {name} is busy: another operation{} is running on it; wait for it to finish, or stop it",
        holder.as_ref().map_or_else(String::new, |h| format!(" ({h})"))
    )]
    Busy {
        /// The cluster.
        name: String,
        /// Who holds it, as the holder wrote it in the lock file (`pid 1234`), if it did.
        holder: Option<String>,
    },
    /// The folder of the locks cannot be created.
    #[error("cannot create {}: {source}", dir.display())]
    Folder {
        /// The folder.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The lock file cannot be opened.
    /// The shared journal could not be asked.
    #[error("cannot take cluster {name} in the fleet's journal: {source}")]
    Journal {
        /// The cluster.
        name: String,
        /// Why.
        source: crate::journal::JournalError,
    },
    #[error("cannot open the lock file {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// A held cluster lock; dropping it releases the cluster.
pub struct ClusterLock {
    _held: Held,
}

/// Held for what dropping it does (the kernel's unlock, or the lease's release).
#[allow(dead_code)]
enum Held {
    File(Flock<File>),
    Lease(Lease),
}

/// A cluster held in the fleet's journal; released (in the background) when dropped.
struct Lease {
    journal: Journal,
    cluster: String,
    me: Member,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (journal, cluster, me) = (self.journal.clone(), std::mem::take(&mut self.cluster), self.me.clone());
        // Without a runtime (the process is ending) the lease ends with the daemon's.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = journal.release_cluster(&cluster, &me).await {
                    tracing::warn!(cluster = %cluster, "cannot release the cluster (it is free once this daemon's lease ends): {e}");
                }
            });
        }
    }
}

/// Where a cluster's operations take turns.
#[derive(Clone)]
pub enum Locks {
    /// Lock files in this folder: one daemon (or `cluster` command) per data folder.
    Files(PathBuf),
    /// The fleet's journal, for daemon `me`.
    Fleet {
        /// The shared journal.
        journal: Journal,
        /// This daemon.
        me: Member,
    },
}

impl Locks {
    /// Takes cluster `name` for an operation, or says who holds it.
    ///
    /// # Errors
    /// [`LockError::Busy`] when another operation holds it (anywhere in the fleet, this
    /// daemon included); others when the lock cannot be asked for.
    pub async fn acquire(&self, name: &str) -> Result<ClusterLock, LockError> {
        match self {
            Locks::Files(dir) => ClusterLock::acquire(dir, name),
            Locks::Fleet { journal, me } => match journal.take_cluster(name, me).await {
                Ok(None) => Ok(ClusterLock {
                    _held: Held::Lease(Lease { journal: journal.clone(), cluster: name.to_owned(), me: me.clone() }),
                }),
                Ok(Some(holder)) => Err(LockError::Busy { name: name.to_owned(), holder: Some(holder) }),
                Err(source) => Err(LockError::Journal { name: name.to_owned(), source }),
            },
        }
    }

    /// Whether an operation holds cluster `name` now (a journal that cannot be asked
    /// says no).
    pub async fn is_held(&self, name: &str) -> bool {
        match self {
            Locks::Files(dir) => ClusterLock::is_held(dir, name),
            Locks::Fleet { journal, .. } => journal.cluster_holder(name).await.ok().flatten().is_some(),
        }
    }
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.lock"))
}

impl ClusterLock {
    /// Takes the lock of cluster `name`, without waiting.
    ///
    /// # Errors
    /// [`LockError::Busy`]: another process (or operation) holds it, and the error says
    /// which process; or the lock file cannot be created.
    pub fn acquire(dir: &Path, name: &str) -> Result<ClusterLock, LockError> {
        std::fs::create_dir_all(dir).map_err(|source| LockError::Folder { dir: dir.to_path_buf(), source })?;
        let p = path(dir, name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|source| LockError::File { path: p.clone(), source })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut locked) => {
                // Who holds it, for the message another process shows.
                let _ = locked.set_len(0);
                let _ = locked.rewind();
                let _ = writeln!(locked, "pid {}", std::process::id());
                Ok(ClusterLock { _held: Held::File(locked) })
            }
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = Some(holder.trim()).filter(|h| !h.is_empty()).map(str::to_owned);
                Err(LockError::Busy { name: name.to_owned(), holder })
            }
        }
    }

    /// Whether an operation is running on cluster `name` now.
    pub fn is_held(dir: &Path, name: &str) -> bool {
        let Ok(file) = File::open(path(dir, name)) else { return false };
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_released_on_drop) => false,
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!ClusterLock::is_held(dir.path(), "c"));
        let held = ClusterLock::acquire(dir.path(), "c").unwrap();
        assert!(ClusterLock::is_held(dir.path(), "c"));
        let e = ClusterLock::acquire(dir.path(), "c").err().unwrap().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert_eq!(
            e,
            format!(
                "cluster c is busy: another operation (pid {}) is running on it; wait for it to finish, or stop it",
                std::process::id()
            )
        );
        drop(held);
        assert!(!ClusterLock::is_held(dir.path(), "c"));
        assert!(ClusterLock::acquire(dir.path(), "c").is_ok());
    }

    #[test]
    fn a_lock_that_cannot_be_made_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "").unwrap();
        let e = ClusterLock::acquire(&file.join("clusters"), "c").err().unwrap();
        assert!(matches!(e, LockError::Folder { .. }), "{e:?}");
        assert!(e.to_string().starts_with(&format!("cannot create {}: ", file.join("clusters").display())), "{e}");
    }
}
