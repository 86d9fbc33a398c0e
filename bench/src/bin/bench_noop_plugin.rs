//! `bench-noop-plugin`: the benchmark's plugin. As a plugin (no arguments), an automator
//! on the Rust SDK that answers every task at once with status 0 and logs nothing, except
//! INSTALL with `config.flood: N`, which sends N info log lines (yielding to other tasks
//! every 64 lines, as a task doing real work between its log lines would). With
//! `--echo`, no protocol at all: it copies each stdin line to stdout, with blocking std
//! I/O, for the raw pipe floor.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use loom_plugin_sdk::{Automator, Context, Plugin, Task, TaskOutcome, TaskResult};

struct Noop;

impl Automator for Noop {
    async fn bootstrap(&self, _task: Task, _ctx: Context) -> TaskOutcome {
        Ok(TaskResult::ok())
    }

    async fn action(&self, _task: Task, _ctx: Context) -> TaskOutcome {
        Ok(TaskResult::ok())
    }

    async fn install(&self, task: Task, ctx: Context) -> TaskOutcome {
        let lines = task.config.get("flood").and_then(serde_json::Value::as_u64).unwrap_or(0);
        for i in 0..lines {
            ctx.info(format!("flood line {i} of {lines}: the quick brown fox jumps over the lazy dog"));
            if i % 64 == 63 {
                tokio::task::yield_now().await;
            }
        }
        Ok(TaskResult::ok())
    }
}

fn echo() -> ExitCode {
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    let (mut input, mut output) = (stdin.lock(), stdout.lock());
    let mut line = String::new();
    loop {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => return ExitCode::SUCCESS,
            Ok(_) => {
                if output.write_all(line.as_bytes()).and_then(|()| output.flush()).is_err() {
                    return ExitCode::FAILURE;
                }
            }
        }
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--echo") {
        return echo();
    }
    Plugin::new("bench-noop", env!("CARGO_PKG_VERSION")).max_concurrency(4096).serve_automator(Noop)
}
