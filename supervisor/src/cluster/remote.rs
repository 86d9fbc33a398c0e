//! A cluster step whose plugin this daemon lacks, run by another daemon of the fleet:
//! the task goes into the shared journal's queue (owned by nobody, so a daemon that has
//! the plugin claims it) and the step waits for its result there.
//!
//! The task keeps the step's id: an operation resumed after a crash that sends the step
//! again finds it in the journal, and waits for it (or takes its result) instead of
//! running it twice.

use std::time::Duration;

use loom_protocol::TaskResult;

use crate::journal::{Journal, State};
use crate::wire::envelope::TaskEnvelope;

/// How often a step waiting for another daemon looks again (besides the notification of
/// its end), and how long it waits between tries while the journal fails.
const LOOK_AGAIN: Duration = Duration::from_secs(5);

/// Queues `task` for the fleet (unless it is there already) and waits for its result.
/// Never fails: a journal that cannot be written or read is tried again, and a result
/// that cannot be read becomes a failed result saying so.
///
/// # Cancellation
/// Dropping the future stops the wait; the task stays queued or running in the fleet,
/// and the operation that sends the step again (same id) waits for it.
pub async fn run(journal: &Journal, task: &TaskEnvelope) -> TaskResult {
    let needs = serde_json::to_string(&crate::core::router::needs(task)).unwrap_or_else(|_| "[]".to_owned());
    loop {
        match journal.accept(&task.task_id, task.task_name.as_str(), &needs, None, task.shared_raw()).await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(task_id = %task.task_id, "cannot queue the step for the fleet ({e}); trying again");
                tokio::time::sleep(LOOK_AGAIN).await;
            }
        }
    }
    loop {
        match journal.wait_done(&task.task_id).await {
            Ok(Some(record)) if record.state == State::Done => {
                let text = record.result.map(|r| r.get().to_owned()).unwrap_or_default();
                return result_of(&text).unwrap_or_else(|e| {
                    TaskResult::failed(format!("the result another daemon recorded cannot be read: {e}"))
                });
            }
            // Waiting for a daemon with its plugin (none is alive now): keep waiting.
            Ok(Some(_)) => tokio::time::sleep(LOOK_AGAIN).await,
            Ok(None) => return TaskResult::failed("the step's task vanished from the journal (pruned?)"),
            Err(e) => {
                tracing::warn!(task_id = %task.task_id, "cannot read the step's result ({e}); trying again");
                tokio::time::sleep(LOOK_AGAIN).await;
            }
        }
    }
}

/// The task's result in a journaled report (`{"taskId", "status", ...}`).
fn result_of(report: &str) -> Result<TaskResult, serde_json::Error> {
    let mut fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(report)?;
    fields.remove("taskId");
    serde_json::from_value(serde_json::Value::Object(fields))
}
