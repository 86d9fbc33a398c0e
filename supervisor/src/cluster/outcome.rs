//! How a cluster operation ended: what succeeded, what failed for good and what the
//! operator does next. Built by [`super::job`], shown by [`super::progress`] and the
//! commands, stored (as [`Outcome::report`]) with a cluster left incomplete.

use serde::Serialize;
use serde_json::{Value, json};

use super::store::ClusterState;

/// A step that failed for good.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// `INSTALL web on demo-web-1`.
    pub step: String,
    /// The last task sent for it.
    pub task_id: String,
    /// That task's name (a CONFIRM's retry may end in DELETE or CREATE).
    pub task_name: String,
    /// The node.
    pub node: String,
    /// The service, for service actions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// The last status.
    pub status: i64,
    /// The end of the last attempt's stdout.
    pub stdout: String,
    /// The end of the last attempt's stderr.
    pub stderr: String,
}

/// How an operation ended.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The cluster.
    pub cluster: String,
    /// `<cluster>.j<N>`.
    pub job_id: String,
    /// `up`, `down`, ...
    pub operation: &'static str,
    /// The cluster's state now.
    pub state: ClusterState,
    /// Steps in the plan.
    pub steps: usize,
    /// Steps that succeeded.
    pub succeeded: usize,
    /// Steps not started because of a failure.
    pub not_run: usize,
    /// Steps that failed for good.
    pub failed: Vec<Failure>,
    /// Things the operator should know.
    pub notes: Vec<String>,
}

impl Outcome {
    /// Whether everything succeeded.
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.not_run == 0
    }

    /// The report stored with an incomplete cluster: what failed and what to do next.
    pub fn report(&self) -> Value {
        let next = next_steps(&self.cluster, self.operation, self.failed.first().map(|f| f.step.as_str()));
        json!({
            "job": self.job_id, "operation": self.operation, "failed": self.failed,
            "notRun": self.not_run, "notes": self.notes, "next": next,
        })
    }
}

/// What to do after `operation` failed at `step` (or was interrupted).
pub fn next_steps(cluster: &str, operation: &str, step: Option<&str>) -> String {
    let cause = step.map_or_else(|| "the interruption".to_owned(), |s| format!("what made {s} fail"));
    match operation {
        "up" => format!(
            "Fix {cause}, then run `loom-provisioner cluster up` with the spec again: it resumes where it stopped, and finished tasks are not run again. `loom-provisioner cluster down {cluster}` removes whatever was created."
        ),
        "down" => format!(
            "Fix {cause}, then run `loom-provisioner cluster down {cluster}` again; `--force` deletes the machines without stopping their services."
        ),
        other => format!(
            "Fix {cause}, then run `loom-provisioner cluster {other} {cluster}` again; `loom-provisioner cluster down {cluster}` removes the cluster."
        ),
    }
}
