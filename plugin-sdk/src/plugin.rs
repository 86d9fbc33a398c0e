//! The traits a plugin implements, and the error type its tasks return.

use std::fmt;
use std::future::Future;

use loom_protocol::{Task, TaskResult};
use serde_json::{Map, Value};

use crate::context::Context;

/// What a task method returns: a result (whose `status` may still be non-zero), or an
/// error, which the SDK turns into a result with status 1 (or the error's status) and
/// the message in `stderr`.
pub type TaskOutcome = Result<TaskResult, TaskError>;

/// A provider plugin allocates machines: CREATE, CONFIRM, DELETE.
///
/// Methods run concurrently (up to the plugin's `maxConcurrency`) on one tokio runtime;
/// return their futures as `async fn` in the impl. A panic in a method fails that task
/// only.
pub trait Provider: Send + Sync + 'static {
    /// Called once, with the manifest's `settings`, before any task. An error refuses the
    /// handshake; the supervisor reports it and retries per its restart policy.
    fn setup(&mut self, settings: &Map<String, Value>) -> Result<(), TaskError> {
        let _ = settings;
        Ok(())
    }
    /// Ask the provider for a machine. Return `providerid` (and, by convention, `ssh-auth`)
    /// in `result`; later tasks of the node see them at the top level of `config`.
    fn create(&self, task: Task, ctx: Context) -> impl Future<Output = TaskOutcome> + Send;
    /// Wait until the machine is ready; return `ipaddress`/`ipaddresses` and `hostname`.
    fn confirm(&self, task: Task, ctx: Context) -> impl Future<Output = TaskOutcome> + Send;
    /// Destroy the machine. Must succeed for an unknown or already deleted machine.
    fn delete(&self, task: Task, ctx: Context) -> impl Future<Output = TaskOutcome> + Send;
}

/// An automator plugin runs service actions on machines.
///
/// Same rules as [`Provider`]. [`Task::action_script`] and [`Task::action_data`] read
/// the action in both Loom's and Coopr's shape; [`Task::ssh_auth`] the credentials.
///
/// The six service actions (INSTALL to REMOVE) call [`Automator::action`] unless they are
/// overridden: an automator that runs every action the same way (a script, a recipe)
/// implements `bootstrap` and `action` only.
pub trait Automator: Send + Sync + 'static {
    /// Called once, with the manifest's `settings`, before any task.
    fn setup(&mut self, settings: &Map<String, Value>) -> Result<(), TaskError> {
        let _ = settings;
        Ok(())
    }
    /// Prepare the machine for later tasks. Must be idempotent and leave other automators'
    /// work alone: it runs again whenever a cluster is reconfigured.
    fn bootstrap(&self, task: Task, ctx: Context) -> impl Future<Output = TaskOutcome> + Send;
    /// Run a service action (the task's name says which). The default fails the task.
    fn action(&self, task: Task, ctx: Context) -> impl Future<Output = TaskOutcome> + Send {
        let _ = ctx;
        async move { Err(TaskError::new(format!("this automator does not implement {}", task.task_name))) }
    }
    /// Run the service's install action.
    fn install(&self, task: Task, ctx: Context) -> impl Future<Output = TaskOutcome> + Send {
        self.action(task, ctx)
    }
    /// Run the service's configure action.
    fn configure(&self, task: Task, ctx: Context) -> impl Future<Output = TaskOutcome> + Send {
        self.action(task, ctx)
    }
    /// Run the service's initialize action.
    fn initialize(&self, task: Task, ctx: Context) -> impl Future<Output = TaskOutcome> + Send {
        self.action(task, ctx)
    }
    /// Run the service's start action.
    fn start(&self, task: Task, ctx: Context) -> impl Future<Output = TaskOutcome> + Send {
        self.action(task, ctx)
    }
    /// Run the service's stop action.
    fn stop(&self, task: Task, ctx: Context) -> impl Future<Output = TaskOutcome> + Send {
        self.action(task, ctx)
    }
    /// Run the service's remove action.
    fn remove(&self, task: Task, ctx: Context) -> impl Future<Output = TaskOutcome> + Send {
        self.action(task, ctx)
    }
}

/// A task failure: a message for `stderr`, a status (1 unless set), and any result keys
/// worth keeping (Loom merged a failed task's result into the node too).
#[derive(Debug, Clone)]
pub struct TaskError {
    /// Goes into the result's `stderr`.
    pub message: String,
    /// The result's `status`; never 0.
    pub status: i64,
    /// Goes into the result's `result`.
    pub result: Map<String, Value>,
}

impl TaskError {
    /// A failure with status 1.
    pub fn new(message: impl Into<String>) -> Self {
        TaskError { message: message.into(), status: 1, result: Map::new() }
    }

    /// Sets the status (0 becomes 1: an error is never a success).
    pub fn with_status(mut self, status: i64) -> Self {
        self.status = if status == 0 { 1 } else { status };
        self
    }

    /// Adds a result key.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.result.insert(key.into(), value.into());
        self
    }

    pub(crate) fn into_result(self) -> TaskResult {
        TaskResult { status: self.status, result: self.result, stderr: self.message, ..TaskResult::default() }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Any error converts, so `?` works in task methods. (`TaskError` itself is not an
/// `std::error::Error`, which is what makes this blanket conversion possible.)
impl<E: std::error::Error> From<E> for TaskError {
    fn from(e: E) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        TaskError::new(message)
    }
}
