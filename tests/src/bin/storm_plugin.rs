//! `storm-plugin`: the automator of the kill storm (`tests/tests/storm.rs`,
//! `bench/chaos.sh`). It answers each task with status 0 after a random 0 to 5 ms, and
//! writes down what an outside observer needs to count:
//!
//! - `STORM_PIDS`: a file it appends its pid to as it starts, before its handshake, so the
//!   storm can kill processes still starting as well as serving ones.
//! - `STORM_RUNLOG`: a file it appends `<taskId> <pid>` to as each task *starts*, one
//!   `write` of the whole line with `O_APPEND`, so that lines from processes running at
//!   once never interleave and a task run twice shows up twice.
//! - `STORM_IDEMPOTENT`: task names (comma-separated) it declares in `idempotentTasks`.
//!
//! Built on the Rust SDK with one thread, so it starts in a few milliseconds: the storm
//! kills a process every 20 ms.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use loom_plugin_sdk::{Automator, Context, Plugin, Task, TaskName, TaskOutcome, TaskResult};

struct Storm {
    runlog: Option<File>,
}

impl Storm {
    async fn act(&self, task: Task) -> TaskOutcome {
        let pid = std::process::id();
        if let Some(mut log) = self.runlog.as_ref() {
            // One write per line: with O_APPEND, the kernel puts it at the end whole.
            log.write_all(format!("{} {pid}\n", task.task_id).as_bytes())?;
        }
        tokio::time::sleep(Duration::from_micros(random() % 5_001)).await;
        Ok(TaskResult::ok().with("pid", pid))
    }
}

impl Automator for Storm {
    async fn bootstrap(&self, task: Task, _ctx: Context) -> TaskOutcome {
        self.act(task).await
    }

    async fn action(&self, task: Task, _ctx: Context) -> TaskOutcome {
        self.act(task).await
    }
}

/// A random number: std's hasher keys are random per `RandomState`, and nothing here
/// needs more than that.
fn random() -> u64 {
    std::hash::RandomState::new().build_hasher().finish()
}

/// Appends to `path`, creating it.
fn append(path: &std::ffi::OsStr) -> std::io::Result<File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

fn main() -> ExitCode {
    if let Some(path) = std::env::var_os("STORM_PIDS") {
        let written = append(&path).and_then(|mut f| f.write_all(format!("{}\n", std::process::id()).as_bytes()));
        if let Err(e) = written {
            eprintln!("storm-plugin: cannot write to STORM_PIDS: {e}");
            return ExitCode::FAILURE;
        }
    }
    let runlog = match std::env::var_os("STORM_RUNLOG").map(|p| append(&p)).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("storm-plugin: cannot open STORM_RUNLOG: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut idempotent = Vec::new();
    for name in std::env::var("STORM_IDEMPOTENT").unwrap_or_default().split(',').filter(|n| !n.is_empty()) {
        match name.parse::<TaskName>() {
            Ok(t) => idempotent.push(t),
            Err(e) => {
                eprintln!("storm-plugin: STORM_IDEMPOTENT: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    Plugin::new("storm", env!("CARGO_PKG_VERSION")).idempotent(idempotent).serve_automator(Storm { runlog })
}
