//! One operation per cluster at a time, across processes (a `cluster up` in a terminal
//! and the daemon share the journal): an exclusive `flock` on
//! `<data_dir>/clusters/<name>.lock`, held for the operation. The kernel releases it
//! when the process dies, so a killed operation never leaves the cluster locked.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// A held cluster lock; dropping it releases the cluster.
pub struct ClusterLock {
    _file: Flock<File>,
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.lock"))
}

impl ClusterLock {
    /// Takes the lock of cluster `name`, without waiting.
    ///
    /// # Errors
    /// Another process (or operation) holds it: the text says which process; or the
    /// lock file cannot be created.
    pub fn acquire(dir: &Path, name: &str) -> Result<ClusterLock, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let p = path(dir, name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|e| format!("cannot open the lock file {}: {e}", p.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut locked) => {
                // Who holds it, for the message another process shows.
                let _ = locked.set_len(0);
                let _ = locked.rewind();
                let _ = writeln!(locked, "pid {}", std::process::id());
                Ok(ClusterLock { _file: locked })
            }
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let by = if holder.is_empty() { String::new() } else { format!(" ({holder})") };
                Err(format!(
                    "cluster {name} is busy: another operation{by} is running on it; wait for it to finish, or stop it"
                ))
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
        let e = ClusterLock::acquire(dir.path(), "c").err().unwrap();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(held);
        assert!(!ClusterLock::is_held(dir.path(), "c"));
        assert!(ClusterLock::acquire(dir.path(), "c").is_ok());
    }
}
