//! A Rust SDK automator for the SDK's end-to-end tests. `config.probe` says what a task
//! does: "ok", "panic", "println", "tracing", "wait-cancel", "error", "io-error".

use std::process::ExitCode;

use loom_plugin_sdk::{Automator, Context, Plugin, Task, TaskError, TaskName, TaskOutcome, TaskResult, Value};

struct Probe;

async fn act(task: Task, ctx: Context) -> TaskOutcome {
    match task.config.get("probe").and_then(Value::as_str).unwrap_or("ok") {
        "panic" => panic!("probe panicked on purpose"),
        "println" => {
            // Would corrupt the protocol if fd 1 were still the protocol channel.
            println!("a stray println from plugin code");
            print!("and a partial line");
        }
        "tracing" => {
            tracing::warn!(answer = 42, "a tracing event from inside the task");
        }
        "wait-cancel" => {
            ctx.progress("waiting to be cancelled", Some(10.0));
            ctx.cancelled().await;
            return Err(TaskError::new("stopped: cancelled").with_status(7).with("partial", true));
        }
        "error" => return Err(TaskError::new("a plain failure").with("kept", "yes")),
        "io-error" => {
            std::fs::read("/no/such/file/for/the/probe")?;
        }
        _ => {}
    }
    Ok(TaskResult::ok().with("pid", std::process::id()))
}

impl Automator for Probe {
    async fn bootstrap(&self, task: Task, ctx: Context) -> TaskOutcome {
        act(task, ctx).await
    }
    async fn action(&self, task: Task, ctx: Context) -> TaskOutcome {
        act(task, ctx).await
    }
}

fn main() -> ExitCode {
    // REMOVE is left out, to test that undeclared tasks are refused.
    let tasks = [
        TaskName::Bootstrap,
        TaskName::Install,
        TaskName::Configure,
        TaskName::Initialize,
        TaskName::Start,
        TaskName::Stop,
    ];
    Plugin::new("sdk-probe", "0").max_concurrency(4).tasks(tasks).serve_automator(Probe)
}
