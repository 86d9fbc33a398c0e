//! `bench-noop-plugin`: the benchmark's plugin. As a plugin (no arguments), an automator
//! on the Rust SDK that answers every task at once with status 0 and logs nothing, except
//! INSTALL with `config.flood: N`, which sends N info log lines (yielding to other tasks
//! every 64 lines, as a task doing real work between its log lines would), and START
//! with `config.resultKeys: N`, which answers a result of N keys, or `config.sleepMs: N`,
//! which answers after N ms (a task that takes a while, for the fleet's failover). With
//! `--idempotent`, the same plugin declares START idempotent (safe to run twice), so that
//! a daemon taking over a dead one's START tasks runs them again. With
//! `--echo`, no protocol at all: it copies each stdin line to stdout, with blocking std
//! I/O, for the raw pipe floor. With `--raw`, the least a plugin can do: blocking std I/O,
//! no JSON parser, every task answered `{"status":0}`, so that the supervisor's own share
//! of a round trip can be measured.

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::process::ExitCode;

use loom_plugin_sdk::{Automator, Context, Plugin, Task, TaskOutcome, TaskResult};

struct Noop;

impl Automator for Noop {
    async fn bootstrap(&self, _task: Task, _ctx: Context) -> TaskOutcome {
        Ok(TaskResult::ok())
    }

    /// START with `config.resultKeys: N` answers a result of N keys (the hostile-input
    /// section's million-key answers); with `config.sleepMs: N`, after N ms.
    async fn action(&self, task: Task, _ctx: Context) -> TaskOutcome {
        if let Some(ms) = task.config.get("sleepMs").and_then(serde_json::Value::as_u64) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let keys = task.config.get("resultKeys").and_then(serde_json::Value::as_u64).unwrap_or(0);
        let mut result = TaskResult::ok();
        result.result = (0..keys).map(|i| (format!("k{i}"), serde_json::Value::from(i))).collect();
        Ok(result)
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

/// Answers each stdin line with what `answer` writes into the buffer it is given (nothing:
/// no answer), with blocking std I/O and a flush per answer, until stdin ends. The buffer
/// is reused, so the floor measures the pipe and not the allocator.
fn serve_lines(mut answer: impl FnMut(&str, &mut String)) -> ExitCode {
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    let (mut input, mut output) = (stdin.lock(), stdout.lock());
    let (mut line, mut back) = (String::new(), String::new());
    loop {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => return ExitCode::SUCCESS,
            Ok(_) => {}
        }
        back.clear();
        answer(&line, &mut back);
        if !back.is_empty() && output.write_all(back.as_bytes()).and_then(|()| output.flush()).is_err() {
            return ExitCode::FAILURE;
        }
    }
}

/// The number after `"id":` in a request line.
fn request_id(line: &str) -> Option<&str> {
    let rest = &line[line.find("\"id\":")? + 5..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|id| !id.is_empty())
}

fn raw(line: &str, out: &mut String) {
    let Some(id) = request_id(line) else { return };
    let result = if line.contains(r#""method":"handshake""#) {
        r#"{"protocolVersion":1,"name":"raw","version":"0","tasks":["BOOTSTRAP","INSTALL","CONFIGURE","INITIALIZE","START","STOP","REMOVE"],"maxConcurrency":4096}"#
    } else if line.contains(r#""method":"task""#) {
        r#"{"status":0}"#
    } else {
        "{}"
    };
    let _ = writeln!(out, "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{result}}}");
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("--echo") => return serve_lines(|line, out| out.push_str(line)),
        Some("--raw") => return serve_lines(raw),
        _ => {}
    }
    let plugin = Plugin::new("bench-noop", env!("CARGO_PKG_VERSION")).max_concurrency(4096);
    let idempotent = std::env::args().skip(1).any(|a| a == "--idempotent");
    let plugin = if idempotent { plugin.idempotent([loom_plugin_sdk::TaskName::Start]) } else { plugin };
    plugin.serve_automator(Noop)
}
