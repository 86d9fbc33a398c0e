//! An operation that runs on a daemon, shown as it goes (`cluster ... --api`): the daemon's
//! `step.*` events for that cluster become the same progress lines the local command
//! prints ([`crate::cluster::progress::Lines`]).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use loom_protocol::TaskName;
use serde_json::Value;

use crate::cli::events::{EventStream, Received};
use crate::cluster::plan::StepKey;
use crate::cluster::progress::{Event, Progress};

/// The last stderr line of each running task is kept for its failure line; this many tasks
/// at most (a cluster runs fewer at once).
const MAX_TRACKED: usize = 4096;

/// Shows `cluster`'s step events from `stream` on `progress` until the stream ends. Ends
/// only with the stream; the caller drops it when the operation's answer came.
///
/// # Cancellation
/// Safe at any point: nothing is left half-shown but a line.
pub(super) async fn follow(mut stream: EventStream, cluster: &str, progress: &dyn Progress) {
    let mut last_stderr: HashMap<String, String> = HashMap::new();
    while let Some(event) = stream.next().await {
        if event.data.get("cluster").and_then(Value::as_str) == Some(cluster) {
            show(&event, progress, &mut last_stderr);
        }
    }
}

fn show(event: &Received, progress: &dyn Progress, last_stderr: &mut HashMap<String, String>) {
    let d = &event.data;
    let text = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or_default();
    let task_id = text("taskId");
    match event.name.as_str() {
        "step.output" if text("stream") == "stderr" => {
            if let Some(line) = text("data").lines().rev().map(str::trim).find(|l| !l.is_empty()) {
                if last_stderr.len() >= MAX_TRACKED && !last_stderr.contains_key(task_id) {
                    last_stderr.clear();
                }
                last_stderr.insert(task_id.to_owned(), line.to_owned());
            }
        }
        "step.started" | "step.finished" => {
            let (Some(key), Ok(task)) = (StepKey::decode(text("step")), TaskName::from_str(text("action"))) else {
                return;
            };
            let attempt = d.get("attempt").and_then(Value::as_u64).and_then(|a| u32::try_from(a).ok()).unwrap_or(1);
            if event.name == "step.started" {
                progress.event(&Event::TaskStarted { key: &key, task_id, task, attempt });
                return;
            }
            let stderr = last_stderr.remove(task_id).unwrap_or_default();
            progress.event(&Event::TaskFinished {
                key: &key,
                task_id,
                task,
                plugin: text("plugin"),
                status: d.get("status").and_then(Value::as_i64).unwrap_or(-1),
                elapsed: Duration::from_millis(d.get("durationMs").and_then(Value::as_u64).unwrap_or(0)),
                stderr: &stderr,
                retrying: text("outcome") == "retrying",
            });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl Progress for Seen {
        fn event(&self, event: &Event<'_>) {
            let line = match event {
                Event::TaskStarted { key, attempt, .. } => format!("started {} #{attempt}", key.encode()),
                Event::TaskFinished { key, status, stderr, retrying, elapsed, .. } => {
                    format!("finished {} {status} {stderr:?} {retrying} {}", key.encode(), elapsed.as_millis())
                }
                _ => return,
            };
            self.0.lock().unwrap().push(line);
        }
    }

    fn received(name: &str, data: Value) -> Received {
        Received { name: name.into(), data }
    }

    #[test]
    fn step_events_become_progress_with_the_failures_last_stderr_line() {
        let seen = Seen::default();
        let mut last = HashMap::new();
        let step = serde_json::json!({"cluster": "c", "step": "INSTALL n1 web", "action": "INSTALL", "taskId": "t1", "attempt": 2});
        show(&received("step.started", step.clone()), &seen, &mut last);
        let out =
            serde_json::json!({"cluster": "c", "taskId": "t1", "stream": "stderr", "data": "first\nno such file\n\n"});
        show(&received("step.output", out), &seen, &mut last);
        let mut done = step;
        done["status"] = 1.into();
        done["durationMs"] = 1500.into();
        done["outcome"] = "retrying".into();
        show(&received("step.finished", done), &seen, &mut last);
        show(&received("step.started", serde_json::json!({"step": "garbage", "action": "NOPE"})), &seen, &mut last);
        assert_eq!(
            *seen.0.lock().unwrap(),
            ["started INSTALL n1 web #2", "finished INSTALL n1 web 1 \"no such file\" true 1500"]
        );
        assert!(last.is_empty(), "a finished task's line is forgotten");
    }
}
