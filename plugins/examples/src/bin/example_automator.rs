//! `example-automator`: runs each service action's script on this host.
//!
//! BOOTSTRAP creates the work folder (`settings.workDir`, default `$TMPDIR/loom-example`);
//! it is idempotent. INSTALL to REMOVE run the action's script (Loom's `action.script` or
//! Coopr's `action.fields.script`) with `sh -c` in that folder, with the action's data in
//! `$LOOM_ACTION_DATA` and the task's id in `$LOOM_TASK_ID`, streaming its output live.
//! The exit code decides the status. `cancel` kills the script's process group.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use loom_plugin_sdk::{Automator, Context, Map, OutputStream, Plugin, Task, TaskError, TaskOutcome, TaskResult, Value};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

#[derive(Default)]
struct ExampleAutomator {
    work_dir: PathBuf,
}

impl ExampleAutomator {
    async fn run_action(&self, task: Task, ctx: Context) -> TaskOutcome {
        let Some(script) = task.action_script() else {
            return Err(TaskError::new(format!("{} has no script: set config.service.action.script", task.task_name)));
        };
        tokio::fs::create_dir_all(&self.work_dir).await?;
        ctx.info(format!("{}: running {script:?}", task.task_name));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&self.work_dir)
            .env("LOOM_ACTION_DATA", task.action_data().unwrap_or_default())
            .env("LOOM_TASK_ID", &task.task_id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let pgid = child.id();
        let out = tokio::spawn(stream(child.stdout.take(), ctx.clone(), OutputStream::Stdout));
        let err = tokio::spawn(stream(child.stderr.take(), ctx.clone(), OutputStream::Stderr));
        let status = tokio::select! {
            status = child.wait() => status?,
            () = ctx.cancelled() => {
                if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                    // The whole group: the script's own children too.
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
                let _ = child.wait().await;
                return Err(TaskError::new(format!("cancelled; killed {script:?}")));
            }
        };
        let (stdout, stderr) = (out.await.unwrap_or_default(), err.await.unwrap_or_default());
        let code = status.code().unwrap_or(-1);
        let result = TaskResult { status: i64::from(code != 0), stdout, stderr, ..TaskResult::default() };
        Ok(result.with("exitcode", code))
    }
}

/// Forwards a pipe line by line as `output` notifications and returns all of it.
async fn stream(pipe: Option<impl AsyncRead + Unpin>, ctx: Context, which: OutputStream) -> String {
    let Some(pipe) = pipe else { return String::new() };
    let mut lines = BufReader::new(pipe).lines();
    let mut all = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = format!("{line}\n");
        ctx.output(which, line.clone());
        all.push_str(&line);
    }
    all
}

impl Automator for ExampleAutomator {
    fn setup(&mut self, settings: &Map<String, Value>) -> Result<(), TaskError> {
        self.work_dir = match settings.get("workDir") {
            Some(Value::String(d)) => PathBuf::from(d),
            Some(_) => return Err(TaskError::new("settings.workDir must be a string")),
            None => std::env::temp_dir().join("loom-example"),
        };
        Ok(())
    }

    async fn bootstrap(&self, _task: Task, ctx: Context) -> TaskOutcome {
        tokio::fs::create_dir_all(&self.work_dir).await?;
        ctx.info(format!("work folder {} is ready", self.work_dir.display()));
        Ok(TaskResult::ok().with("example_workdir", self.work_dir.display().to_string()))
    }

    /// INSTALL to REMOVE alike: run the action's script.
    async fn action(&self, task: Task, ctx: Context) -> TaskOutcome {
        self.run_action(task, ctx).await
    }
}

fn main() -> ExitCode {
    Plugin::new("example-automator", env!("CARGO_PKG_VERSION"))
        .max_concurrency(16)
        .serve_automator(ExampleAutomator::default())
}
