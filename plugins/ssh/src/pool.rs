//! Logged-in connections kept for the next task to the same machine.
//!
//! Logging in costs a TCP connection, a key exchange, authentication and (with OpenSSH)
//! a fresh sshd process; running one more command on a logged-in connection costs a
//! channel. A node's tasks (BOOTSTRAP, INSTALL, CONFIGURE, START, ...) come one after
//! another, so a connection is kept for [`Pool::idle`] after its last use and handed to
//! the next task with the same target: same user, host, port and credentials, and a host
//! key the task accepts. A connection the server closed is never handed out; the caller
//! retries once on a fresh one when the first command on a reused connection fails
//! (the server may have gone away while it sat in the pool).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::{Auth, Session, SshError, Target};

/// Connections by target.
#[derive(Clone)]
pub struct Pool {
    idle: Duration,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

struct Entry {
    auth: Auth,
    session: Arc<Session>,
    /// Bumped on every use; the expiry of an older use leaves the entry alone.
    uses: u64,
}

/// A connection from the pool, and whether it was used before.
pub struct Pooled {
    /// The logged-in connection.
    pub session: Arc<Session>,
    /// Whether it was kept from an earlier task (then the first command may meet a dead
    /// connection: see [`Pool::evict`]).
    pub reused: bool,
}

impl Pool {
    /// Keeps connections for `idle` after their last use.
    pub fn new(idle: Duration) -> Pool {
        Pool { idle, entries: Arc::default() }
    }

    /// How long an unused connection is kept.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// A connection to `target`: a kept one if it matches, else a new one (kept for the
    /// next task). Must be called within a tokio runtime.
    ///
    /// # Errors
    /// As [`Session::connect`].
    pub async fn get(&self, target: &Target, limit: Duration) -> Result<Pooled, SshError> {
        let key = key(target);
        if let Some(session) = self.take_kept(&key, target) {
            return Ok(Pooled { session, reused: true });
        }
        let session = Arc::new(Session::connect(target, limit).await?);
        self.keep(key, target.auth.clone(), Arc::clone(&session));
        Ok(Pooled { session, reused: false })
    }

    fn take_kept(&self, key: &str, target: &Target) -> Option<Arc<Session>> {
        let mut entries = self.lock();
        let entry = entries.get_mut(key)?;
        let usable = !entry.session.is_closed()
            && entry.auth == target.auth
            && (target.host_keys.0.is_empty() || target.host_keys.accepts(entry.session.host_key()));
        if !usable {
            entries.remove(key);
            return None;
        }
        entry.uses += 1;
        let (session, uses) = (Arc::clone(&entry.session), entry.uses);
        drop(entries);
        self.expire_after_idle(key.to_owned(), uses);
        Some(session)
    }

    fn keep(&self, key: String, auth: Auth, session: Arc<Session>) {
        if self.idle.is_zero() {
            return;
        }
        self.lock().insert(key.clone(), Entry { auth, session, uses: 0 });
        self.expire_after_idle(key, 0);
    }

    /// Forgets the connection to `target` (it failed, or its task was cancelled); it
    /// closes when the last task using it lets go.
    pub fn evict(&self, target: &Target) {
        self.lock().remove(&key(target));
    }

    fn expire_after_idle(&self, key: String, uses: u64) {
        let (pool, idle) = (Arc::clone(&self.entries), self.idle);
        tokio::spawn(async move {
            tokio::time::sleep(idle).await;
            let mut entries = pool.lock().unwrap_or_else(PoisonError::into_inner);
            if entries.get(&key).is_some_and(|e| e.uses == uses) {
                entries.remove(&key);
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn key(target: &Target) -> String {
    format!("{}@{}", target.user, target.addr())
}
