//! Scrubbing credentials out of what plugins log.
//!
//! Tasks carry credentials (`ssh-auth`, provider API keys). The supervisor never logs a
//! task, but a plugin may echo one into a log notification, a stderr line or a stray
//! stdout line. Each plugin process has a [`Redactor`] holding the credential values of the
//! tasks it is running (found by [`crate::envelope`]), and every line taken from the plugin
//! passes through [`Redactor::scrub`] before it reaches the log.
//!
//! Values stay known for a while after their task ends, because stderr is read
//! independently of the protocol channel and may lag behind the task's answer.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// What replaces a credential.
pub const MASK: &str = "[redacted]";

/// How many values of finished tasks are remembered.
const RECENT: usize = 256;

/// The credential values currently known for one plugin process.
#[derive(Debug, Default)]
pub struct Redactor {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Values of running tasks, with how many tasks hold each.
    active: HashMap<String, usize>,
    /// Values of recently finished tasks, oldest first.
    recent: VecDeque<String>,
}

impl Redactor {
    /// Starts scrubbing `secrets` (a task began).
    pub fn add(&self, secrets: &[String]) {
        if secrets.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for s in secrets {
            *inner.active.entry(s.clone()).or_default() += 1;
        }
    }

    /// A task holding `secrets` ended; they are still scrubbed for a while.
    pub fn release(&self, secrets: &[String]) {
        if secrets.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for s in secrets {
            if let Some(n) = inner.active.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    inner.active.remove(s);
                    inner.recent.push_back(s.clone());
                }
            }
        }
        while inner.recent.len() > RECENT {
            inner.recent.pop_front();
        }
    }

    /// `text` with every known credential replaced by [`MASK`].
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let inner = self.lock();
        if inner.active.is_empty() && inner.recent.is_empty() {
            return Cow::Borrowed(text);
        }
        // Longest first, so a value that contains another is masked whole.
        let mut known: Vec<&str> =
            inner.active.keys().map(String::as_str).chain(inner.recent.iter().map(String::as_str)).collect();
        known.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = Cow::Borrowed(text);
        for secret in known {
            if out.contains(secret) {
                out = Cow::Owned(out.replace(secret, MASK));
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the sets inconsistent in a way that
        // matters; keep scrubbing.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_running_and_recent_values_longest_first() {
        let r = Redactor::default();
        assert_eq!(r.scrub("nothing known"), "nothing known");
        r.add(&["hunter2".into(), "hunter2-extended".into()]);
        assert_eq!(r.scrub("pw=hunter2-extended and hunter2"), "pw=[redacted] and [redacted]");
        r.release(&["hunter2".into(), "hunter2-extended".into()]);
        assert_eq!(r.scrub("late stderr: hunter2"), "late stderr: [redacted]");
    }

    #[test]
    fn shared_values_stay_active_until_every_holder_releases() {
        let r = Redactor::default();
        r.add(&["s3cret".into()]);
        r.add(&["s3cret".into()]);
        r.release(&["s3cret".into()]);
        assert_eq!(r.lock().active.get("s3cret"), Some(&1));
        r.release(&["s3cret".into()]);
        assert!(r.lock().active.is_empty());
        assert_eq!(r.scrub("s3cret"), MASK);
    }

    #[test]
    fn forgets_the_oldest_after_many_tasks() {
        let r = Redactor::default();
        for i in 0..(RECENT + 10) {
            let s = vec![format!("secret-{i:04}")];
            r.add(&s);
            r.release(&s);
        }
        assert_eq!(r.lock().recent.len(), RECENT);
        assert_eq!(r.scrub("secret-0000"), "secret-0000");
        assert_eq!(r.scrub(&format!("secret-{:04}", RECENT + 9)), MASK);
    }
}
