//! `loom-plugin-shell`: Loom's shell automator, over SSH.
//!
//! - BOOTSTRAP creates the remote work folder and uploads the scripts folder named in
//!   `settings.scripts` to `<workDir>/scripts`, replacing what was there. It is idempotent.
//! - INSTALL, CONFIGURE, INITIALIZE, START, STOP and REMOVE upload the task JSON to
//!   `<workDir>/tasks/<taskId>.json`, then run the action's script from the scripts folder
//!   with its arguments (`sudo -E` unless the user is root), streaming its output. The exit
//!   code is the task's status.
//!
//! See README.md for the fields it reads and what it returns.

mod remote;
mod tail;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use loom_plugin_sdk::{
    Automator, CancellationToken, Context, Map, OutputStream, Plugin, Task, TaskError, TaskOutcome, TaskResult, Value,
};
use loom_plugin_ssh::{Exit, Pool, Session, SshError, Target, host_keys_json};

use crate::remote::Remote;
use crate::tail::Tail;

/// Default limit on connecting and logging in.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default time a logged-in connection is kept for the node's next task.
const KEEP_CONNECTIONS: Duration = Duration::from_secs(60);

struct Shell {
    /// Local folder uploaded by BOOTSTRAP.
    scripts: Option<PathBuf>,
    /// Remote work folder; `None`: `/var/cache/loom` for root, `.cache/loom` (in the
    /// user's home) for anyone else.
    work_dir: Option<String>,
    connect_timeout: Duration,
    sudo: bool,
    /// Logged-in connections, kept for the next task to the same machine.
    pool: Pool,
}

impl Default for Shell {
    fn default() -> Self {
        Shell {
            scripts: None,
            work_dir: None,
            connect_timeout: CONNECT_TIMEOUT,
            sudo: true,
            pool: Pool::new(KEEP_CONNECTIONS),
        }
    }
}

impl Automator for Shell {
    fn setup(&mut self, settings: &Map<String, Value>) -> Result<(), TaskError> {
        self.connect_timeout = match settings.get("connectTimeoutSecs") {
            None => CONNECT_TIMEOUT,
            Some(v) => v
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| TaskError::new("settings.connectTimeoutSecs must be a number of seconds"))?,
        };
        self.work_dir = match settings.get("workDir") {
            None => None,
            Some(Value::String(d)) if !d.is_empty() => Some(d.clone()),
            Some(_) => return Err(TaskError::new("settings.workDir must be a non-empty string")),
        };
        self.sudo = settings.get("sudo").and_then(Value::as_bool).unwrap_or(true);
        let keep = match settings.get("keepConnectionsSecs") {
            None => KEEP_CONNECTIONS,
            Some(v) => v.as_f64().and_then(|s| Duration::try_from_secs_f64(s).ok()).ok_or_else(|| {
                TaskError::new("settings.keepConnectionsSecs must be a number of seconds (0: a connection per task)")
            })?,
        };
        self.pool = Pool::new(keep);
        self.scripts = match settings.get("scripts") {
            None => None,
            Some(Value::String(p)) => {
                // Relative to the plugin's folder, which is our working directory.
                let path = std::path::absolute(p).unwrap_or_else(|_| PathBuf::from(p));
                if !path.is_dir() {
                    return Err(TaskError::new(format!("settings.scripts: {} is not a folder", path.display())));
                }
                Some(path)
            }
            Some(_) => return Err(TaskError::new("settings.scripts must be a path to a folder")),
        };
        Ok(())
    }

    async fn bootstrap(&self, task: Task, ctx: Context) -> TaskOutcome {
        let target = Target::from_task(&task)?;
        let remote = self.remote(&target);
        let archive = match &self.scripts {
            Some(dir) => Some(pack(dir)?),
            None => None,
        };
        ctx.info(format!("bootstrapping {} on {}", remote.display(""), target.addr()));
        let command = remote.bootstrap_command(archive.is_some());
        let (mut out, mut err) = (String::new(), String::new());
        let collect = |stream: OutputStream, text: &str| match stream {
            OutputStream::Stdout => out.push_str(text),
            OutputStream::Stderr => err.push_str(text),
        };
        // Not cancellable: BOOTSTRAP is short and leaves the machine consistent either way.
        let never = CancellationToken::new();
        let (session, ran) = self.exec(&target, &ctx, &command, archive.as_deref(), &never, collect).await?;
        let exit = ran?;
        if !exit.success() {
            return Err(TaskError::new(format!(
                "BOOTSTRAP on {target:?} failed: preparing {} {exit}: {}",
                remote.display(""),
                err.trim()
            )));
        }
        let mut result = TaskResult { stdout: out, stderr: err, ..TaskResult::default() };
        result.stdout.push_str(&match &self.scripts {
            Some(dir) => format!("uploaded {} to {}\n", dir.display(), remote.display("scripts")),
            None => format!("created {} (no scripts folder configured)\n", remote.display("")),
        });
        Ok(self.finish(result, &target, &session).await)
    }

    /// INSTALL to REMOVE alike: upload the task, run the script, stream its output.
    async fn action(&self, task: Task, ctx: Context) -> TaskOutcome {
        self.run_action(task, ctx).await
    }
}

impl Shell {
    fn remote(&self, target: &Target) -> Remote {
        let work_dir = self
            .work_dir
            .clone()
            .unwrap_or_else(|| if target.is_root() { "/var/cache/loom".into() } else { ".cache/loom".into() });
        Remote { work_dir, sudo: self.sudo && !target.is_root() }
    }

    /// A logged-in connection to `target`: one kept from an earlier task, or a new one.
    async fn connect(&self, target: &Target, ctx: &Context) -> Result<loom_plugin_ssh::Pooled, TaskError> {
        ctx.debug(format!("connecting to {target:?}"));
        tokio::select! {
            s = self.pool.get(target, self.connect_timeout) => Ok(s?),
            () = ctx.cancelled() => Err(TaskError::new("cancelled while connecting")),
        }
    }

    /// Runs `command` on a connection to `target` (a kept one when there is one), passing
    /// its output to `sink`. A kept connection that cannot start the command (it died
    /// while it waited; nothing ran) is forgotten and the command run on a new one.
    async fn exec(
        &self,
        target: &Target,
        ctx: &Context,
        command: &str,
        input: Option<&[u8]>,
        cancel: &CancellationToken,
        mut sink: impl FnMut(OutputStream, &str),
    ) -> Result<(Arc<Session>, Result<Exit, SshError>), TaskError> {
        let pooled = self.connect(target, ctx).await?;
        match pooled.session.exec(command, input, cancel, &mut sink).await {
            Err(SshError::NoChannel { reason, .. }) if pooled.reused => {
                ctx.debug(format!("the kept connection to {target:?} failed ({reason}); connecting again"));
                self.pool.evict(target);
                let fresh = self.connect(target, ctx).await?.session;
                let ran = fresh.exec(command, input, cancel, &mut sink).await;
                Ok((fresh, ran))
            }
            ran => Ok((pooled.session, ran)),
        }
    }

    /// Records the host key in the result when none was pinned; closes the connection
    /// unless the pool keeps it.
    async fn finish(&self, mut result: TaskResult, target: &Target, session: &Session) -> TaskResult {
        if target.host_keys.0.is_empty() {
            result.result.insert("ssh_host_keys".into(), host_keys_json(session.host_key()));
        }
        if self.pool.idle().is_zero() {
            session.close().await;
        }
        result
    }

    async fn run_action(&self, task: Task, ctx: Context) -> TaskOutcome {
        let action = Action::from_task(&task)?;
        let target = Target::from_task(&task)?;
        let remote = self.remote(&target);
        let json = serde_json::to_vec(&task).map_err(|e| TaskError::new(format!("cannot encode the task: {e}")))?;
        // Upload, check and run in one command: each command costs the remote login
        // shell's start-up (on some hosts, a tenth of a second).
        let command = remote.action_command(&task.task_id, &action.script, &action.args);
        ctx.info(format!("{}: running {} on {}", task.task_name, action.script, target.addr()));
        let (mut out, mut err) = (Tail::default(), Tail::default());
        let cancel = ctx.cancellation_token();
        let sink = |stream: OutputStream, text: &str| {
            ctx.output(stream, text);
            match stream {
                OutputStream::Stdout => out.push(text),
                OutputStream::Stderr => err.push(text),
            }
        };
        let (session, ran) = self.exec(&target, &ctx, &command, Some(&json), &cancel, sink).await?;
        let exit = match ran {
            Ok(exit) => exit,
            Err(SshError::Cancelled) => {
                let kill = remote.kill_command(&task.task_id);
                let _ = tokio::time::timeout(Duration::from_secs(10), session.run(&kill, None)).await;
                // Other tasks may share the connection: it is only forgotten, and closes
                // when the last of them lets go.
                self.pool.evict(&target);
                if self.pool.idle().is_zero() {
                    session.close().await;
                }
                return Err(TaskError::new(format!("cancelled: stopped {} on {target:?}", action.script)));
            }
            Err(e) => return Err(e.into()),
        };
        let (stdout, stderr) = (out.into_string(), err.into_string());
        if exit == Exit::Code(remote::SETUP_FAILED) {
            if stderr.contains(remote::UPLOAD_FAILED) {
                return Err(TaskError::new(format!(
                    "cannot upload the task to {}: {}",
                    session.addr(),
                    stderr.replace(remote::UPLOAD_FAILED, "").trim()
                )));
            }
            if stderr.contains(remote::NO_SCRIPT) {
                let hint = match &self.scripts {
                    Some(dir) => format!(
                        "BOOTSTRAP uploads {} there; is the script in it, and did BOOTSTRAP run?",
                        dir.display()
                    ),
                    None => {
                        "this automator has no settings.scripts to upload, so the script must already be there".into()
                    }
                };
                return Err(TaskError::new(format!(
                    "{}: script {} not found on {target:?}; {hint}",
                    task.task_name,
                    remote.script_display(&action.script)
                )));
            }
        }
        let mut result = TaskResult { status: exit.status(), stdout, stderr, ..TaskResult::default() };
        if !exit.success() {
            if !result.stderr.is_empty() && !result.stderr.ends_with('\n') {
                result.stderr.push('\n');
            }
            result.stderr.push_str(&format!("{}: script {} {exit} on {target:?}\n", task.task_name, action.script));
        }
        Ok(self.finish(result, &target, &session).await)
    }
}

/// The action's script and arguments, in Loom's or Coopr's shape.
struct Action {
    script: String,
    args: String,
}

impl Action {
    /// Loom: `{type, script, data}`, `data` passed as one argument. Coopr:
    /// `{type, fields: {script, args}}`, `args` passed as shell words, as Coopr did.
    fn from_task(task: &Task) -> Result<Action, TaskError> {
        let action = task.service_action().ok_or_else(|| {
            TaskError::new(format!("{} has no config.service.action: nothing to run", task.task_name))
        })?;
        let fields = action.get("fields");
        let text = |v: Option<&Value>| v.and_then(Value::as_str).filter(|s| !s.trim().is_empty()).map(str::to_owned);
        let script =
            text(action.get("script")).or_else(|| text(fields.and_then(|f| f.get("script")))).ok_or_else(|| {
                TaskError::new(format!(
                    "{} has no script: set config.service.action.script (or action.fields.script)",
                    task.task_name
                ))
            })?;
        let args = match (text(action.get("data")), text(fields.and_then(|f| f.get("args")))) {
            (Some(data), _) => loom_plugin_ssh::shell_quote(&data),
            (None, Some(args)) => args,
            (None, None) => String::new(),
        };
        Ok(Action { script, args })
    }
}

/// The scripts folder as a tar archive whose entries start with `scripts/`.
fn pack(dir: &Path) -> Result<Vec<u8>, TaskError> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(true);
    builder
        .append_dir_all("scripts", dir)
        .and_then(|()| builder.into_inner())
        .map_err(|e| TaskError::new(format!("cannot pack the scripts folder {}: {e}", dir.display())))
}

fn main() -> ExitCode {
    Plugin::new("shell", env!("CARGO_PKG_VERSION")).max_concurrency(64).serve_automator(Shell::default())
}
