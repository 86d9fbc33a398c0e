//! The check protocol's wait task (PROTOCOL.md, section 10), answered by the SDK itself.
//!
//! `loom-provisioner check` starts a plugin with `LOOM_CHECK=1` and, to have a task that
//! runs long, sends one whose `config` holds `"loom-check": {"waitSecs": N}`. Such a task
//! never reaches the plugin's code: the SDK waits N seconds and answers status 0, or, when
//! a `cancel` (or the end of stdin) comes first, answers at once with status 1 and
//! `"cancelled": true`. Without `LOOM_CHECK=1` the key is an ordinary config key.

use std::time::Duration;

use loom_protocol::{Task, TaskResult};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The environment variable `check` sets (the supervisor never does).
pub(crate) const ENV_CHECK: &str = "LOOM_CHECK";
/// The config key of a wait task.
const KEY: &str = "loom-check";
/// The longest wait the protocol allows.
const MAX_WAIT_SECS: f64 = 300.0;

/// Whether this process runs under `check` (read once, when serving starts).
pub(crate) fn enabled() -> bool {
    std::env::var(ENV_CHECK).is_ok_and(|v| v == "1")
}

/// For a task holding the `loom-check` key: how long to wait, or why the key is unusable
/// (the task then fails without reaching the plugin's code). `None` for any other task.
pub(crate) fn wait_of(task: &Task) -> Option<Result<Duration, String>> {
    let spec = task.config.get(KEY)?;
    let secs = spec.get("waitSecs").and_then(Value::as_f64).filter(|s| *s > 0.0 && *s <= MAX_WAIT_SECS);
    Some(
        secs.map(Duration::from_secs_f64)
            .ok_or_else(|| format!("{KEY}.waitSecs must be a number above 0, at most 300")),
    )
}

/// Waits `wait`, or until `cancel` fires; the wait task's answer either way.
pub(crate) async fn wait(wait: Duration, cancel: CancellationToken) -> TaskResult {
    tokio::select! {
        () = tokio::time::sleep(wait) => TaskResult::ok(),
        () = cancel.cancelled() => cancelled(),
    }
}

/// The answer of a task stopped by its cancel: status 1, `"cancelled": true`.
pub(crate) fn cancelled() -> TaskResult {
    let mut result = TaskResult::failed("cancelled");
    mark_cancelled(&mut result);
    result
}

/// Marks a failed answer as cancelled (PROTOCOL.md: non-zero status plus
/// `"cancelled": true`), so the supervisor reports "cancelled" rather than "failed". A task
/// that still succeeded stays a success.
pub(crate) fn mark_cancelled(result: &mut TaskResult) {
    if result.status != 0 {
        result.extra.insert("cancelled".to_owned(), Value::Bool(true));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn task(config: Value) -> Task {
        serde_json::from_value(json!({"taskId": "t", "taskName": "DELETE", "config": config})).unwrap()
    }

    #[test]
    fn only_a_task_with_the_key_is_a_wait_task_and_its_seconds_are_checked() {
        assert!(wait_of(&task(json!({"providerid": "x"}))).is_none());
        assert_eq!(wait_of(&task(json!({"loom-check": {"waitSecs": 1.5}}))).unwrap(), Ok(Duration::from_millis(1500)));
        assert_eq!(wait_of(&task(json!({"loom-check": {"waitSecs": 300}}))).unwrap(), Ok(Duration::from_secs(300)));
        for bad in [json!({"waitSecs": 0}), json!({"waitSecs": 301}), json!({"waitSecs": "5"}), json!({}), json!(5)] {
            let why = wait_of(&task(json!({"loom-check": bad}))).unwrap().unwrap_err();
            assert!(why.contains("loom-check.waitSecs"), "{why}");
        }
    }

    #[tokio::test]
    async fn a_cancel_ends_the_wait_at_once_with_a_cancelled_answer() {
        let cancel = CancellationToken::new();
        let waiting = tokio::spawn(wait(Duration::from_secs(300), cancel.clone()));
        cancel.cancel();
        let result = waiting.await.unwrap();
        assert_eq!((result.status, result.extra.get("cancelled")), (1, Some(&json!(true))), "{result:?}");
    }

    #[tokio::test]
    async fn an_uncancelled_wait_succeeds() {
        let result = wait(Duration::from_millis(1), CancellationToken::new()).await;
        assert_eq!(result.status, 0);
        assert!(result.extra.is_empty(), "{result:?}");
    }

    #[test]
    fn only_a_failure_is_marked_cancelled() {
        let mut ok = TaskResult::ok();
        mark_cancelled(&mut ok);
        assert!(ok.extra.is_empty());
        let mut failed = TaskResult::failed("stopped");
        mark_cancelled(&mut failed);
        assert_eq!(failed.extra.get("cancelled"), Some(&json!(true)));
    }
}
