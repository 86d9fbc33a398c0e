//! The claims file: which host is handed out to which node. Durable and shared: every
//! change happens under an exclusive lock on `<file>.lock` and is written to a temporary
//! file, flushed to disk and renamed over the old one, so neither two processes nor a
//! crash half-way can hand one host out twice.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Who holds a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    pub providerid: String,
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub node_id: Option<String>,
    /// Seconds since the epoch.
    pub claimed_at: u64,
}

/// The claims, by host (`address:port`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Claims {
    pub version: u32,
    pub claims: BTreeMap<String, Claim>,
}

/// The claims file, locked while this value lives.
pub struct Locked {
    path: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
    pub claims: Claims,
}

impl Locked {
    /// Locks and reads `path` (a missing file holds no claims). Blocks while another
    /// process holds the lock.
    pub fn open(path: &Path) -> Result<Locked, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let lock_path = path.with_extension("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("cannot lock {}: {e}", lock_path.display()))?;
        let claims = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is damaged ({e}); fix or remove it", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Claims { version: 1, ..Claims::default() },
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Locked { path: path.to_path_buf(), _lock: lock, claims })
    }

    /// Writes the claims durably (temporary file, fsync, rename, fsync of the folder).
    pub fn save(&self) -> Result<(), String> {
        let tmp = self.path.with_extension("tmp");
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", self.path.display());
        let mut f = std::fs::File::create(&tmp).map_err(fail)?;
        f.write_all(&serde_json::to_vec_pretty(&self.claims).map_err(|e| e.to_string())?).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &self.path).map_err(fail)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_survive_a_reopen_and_the_lock_excludes_others() {
        let dir = std::env::temp_dir().join(format!("loom-fixed-test-{}", std::process::id()));
        let path = dir.join("claims.json");
        {
            let mut l = Locked::open(&path).unwrap();
            assert!(l.claims.claims.is_empty());
            l.claims.claims.insert(
                "h:22".into(),
                Claim { providerid: "fixed:h:22".into(), cluster_id: None, node_id: Some("n".into()), claimed_at: 1 },
            );
            l.save().unwrap();
            // While held, a second opener would block: try a non-blocking lock to see.
            let f = std::fs::OpenOptions::new().write(true).open(path.with_extension("lock")).unwrap();
            assert!(nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err());
        }
        let l = Locked::open(&path).unwrap();
        assert_eq!(l.claims.claims["h:22"].node_id.as_deref(), Some("n"));
        drop(l);
        let _ = std::fs::remove_dir_all(dir);
    }
}
