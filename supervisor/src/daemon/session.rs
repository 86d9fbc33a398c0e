//! The web console's sessions: a browser trades the API's token once for a random session
//! id, which it then holds in an HttpOnly cookie (so the token is never in a URL, in the
//! page's storage or in later requests).
//!
//! Kept in memory only: a restart logs every browser out, which is what an operator who
//! restarts the daemon after changing the token expects. A session is bound to the token
//! it was opened with: after a reload that changes the token, it no longer works.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::config::Token;

/// The cookie's name.
pub const COOKIE: &str = "loom_session";

/// How long a session lasts after it was opened (a working day); the cookie's `Max-Age`.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at most; opening one more ends the oldest. Bounds memory whatever a client
/// with the token does.
const MAX_SESSIONS: usize = 256;

/// The open sessions, by the SHA-256 of their id: lookups never compare secrets byte by
/// byte, and the map holds no usable id.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
}

struct Session {
    opened: Instant,
    /// SHA-256 of the token it was opened with.
    token: [u8; 32],
}

/// Why no session was opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot make a session id: reading /dev/urandom failed: {0}")]
pub struct NoRandomness(#[from] std::io::Error);

impl Sessions {
    /// Opens a session for a browser that gave `token` (already checked by the caller);
    /// returns its id (64 hex digits from 32 random bytes).
    ///
    /// # Errors
    /// [`NoRandomness`] when the kernel's random source cannot be read.
    pub fn open(&self, token: &Token) -> Result<String, NoRandomness> {
        let id = random_hex()?;
        let mut open = self.lock();
        open.retain(|_, s| s.opened.elapsed() < LIFETIME);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open.iter().min_by_key(|(_, s)| s.opened).map(|(k, _)| *k)
        {
            open.remove(&oldest);
        }
        open.insert(digest(&id), Session { opened: Instant::now(), token: digest(token.as_str()) });
        Ok(id)
    }

    /// Whether `id` is an open session, not expired, opened with `token`.
    pub fn valid(&self, id: &str, token: &Token) -> bool {
        let open = self.lock();
        open.get(&digest(id)).is_some_and(|s| s.opened.elapsed() < LIFETIME && s.token == digest(token.as_str()))
    }

    /// Ends session `id` (nothing if there is none).
    pub fn close(&self, id: &str) {
        self.lock().remove(&digest(id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // The map holds no invariant a panic could break half-way.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The session id in a `Cookie` header's value, if there is one.
pub fn from_cookie_header(value: &str) -> Option<&str> {
    value.split(';').filter_map(|pair| pair.trim().split_once('=')).find(|(k, _)| *k == COOKIE).map(|(_, v)| v.trim())
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn random_hex() -> Result<String, NoRandomness> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> Token {
        Token::for_tests(t)
    }

    #[test]
    fn a_session_works_with_its_token_only_until_closed() {
        let sessions = Sessions::default();
        let id = sessions.open(&token("a-token-of-sixteen")).unwrap();
        assert_eq!(id.len(), 64);
        assert!(sessions.valid(&id, &token("a-token-of-sixteen")));
        assert!(!sessions.valid(&id, &token("another-token-16+")), "a changed token ends the session");
        assert!(!sessions.valid("0".repeat(64).as_str(), &token("a-token-of-sixteen")));
        sessions.close(&id);
        assert!(!sessions.valid(&id, &token("a-token-of-sixteen")));
    }

    #[test]
    fn sessions_are_bounded_and_the_oldest_goes_first() {
        let sessions = Sessions::default();
        let t = token("a-token-of-sixteen");
        let first = sessions.open(&t).unwrap();
        let ids: Vec<String> = (0..MAX_SESSIONS).map(|_| sessions.open(&t).unwrap()).collect();
        assert!(!sessions.valid(&first, &t));
        assert!(ids.iter().all(|id| sessions.valid(id, &t)));
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(from_cookie_header("a=1; loom_session=abc ; b=2"), Some("abc"));
        assert_eq!(from_cookie_header("loom_sessionx=abc"), None);
        assert_eq!(from_cookie_header(""), None);
    }
}
