//! Write a Loom provisioner plugin in Rust.
//!
//! Implement [`Provider`] (CREATE, CONFIRM, DELETE) or [`Automator`] (BOOTSTRAP, INSTALL,
//! CONFIGURE, INITIALIZE, START, STOP, REMOVE), then hand it to [`Plugin::serve_provider`]
//! or [`Plugin::serve_automator`] from `main`. The SDK speaks protocol v1 (see
//! `PROTOCOL.md`) on stdin/stdout, runs tasks concurrently, answers `ping`, `shutdown`
//! and `cancel`, and exits when stdin closes.
//!
//! ```no_run
//! use loom_plugin_sdk::{Context, Plugin, Provider, Task, TaskOutcome, TaskResult};
//!
//! struct Example;
//!
//! impl Provider for Example {
//!     async fn create(&self, task: Task, ctx: Context) -> TaskOutcome {
//!         ctx.info(format!("creating {}", task.config["hostname"]));
//!         Ok(TaskResult::ok().with("providerid", "machine-1"))
//!     }
//!     async fn confirm(&self, _task: Task, _ctx: Context) -> TaskOutcome {
//!         Ok(TaskResult::ok().with("ipaddress", "127.0.0.1"))
//!     }
//!     async fn delete(&self, _task: Task, _ctx: Context) -> TaskOutcome {
//!         Ok(TaskResult::ok())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     Plugin::new("example", env!("CARGO_PKG_VERSION")).max_concurrency(8).serve_provider(Example)
//! }
//! ```
//!
//! Inside a task, `println!` is safe: the SDK moves the protocol off fd 1 and points fd 1
//! at stderr, which the supervisor logs. `tracing` events are forwarded to the supervisor
//! as `log` notifications, with the task's id.
//!
//! Under `loom-provisioner check` (`LOOM_CHECK=1`), a task whose `config` holds
//! `"loom-check": {"waitSecs": N}` is the check protocol's wait task (PROTOCOL.md): the
//! SDK answers it itself, without calling the plugin's code. A task that fails after its
//! `cancel` is answered with `"cancelled": true`.

mod check;
mod context;
mod forward;
mod plugin;
mod server;
mod stdio;

pub use context::Context;
pub use forward::ForwardLayer;
pub use loom_protocol::{Config, LogLevel, OutputStream, Task, TaskName, TaskResult};
pub use plugin::{Automator, Provider, TaskError, TaskOutcome};
pub use serde_json::{Map, Value, json};
pub use tokio_util::sync::CancellationToken;

use std::process::ExitCode;

/// A plugin's identity and options; ends in a call that serves it.
#[derive(Debug, Clone)]
pub struct Plugin {
    name: String,
    version: String,
    max_concurrency: Option<u32>,
    tasks: Option<Vec<TaskName>>,
    idempotent: Vec<TaskName>,
    forward_tracing: bool,
}

impl Plugin {
    /// A plugin called `name` (informational; the supervisor routes by the registered
    /// name) at `version`.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Plugin {
            name: name.into(),
            version: version.into(),
            max_concurrency: None,
            tasks: None,
            idempotent: Vec::new(),
            forward_tracing: true,
        }
    }

    /// At most `n` tasks at once (declared in the handshake; the supervisor's manifest
    /// value may be lower). Unset: the manifest decides.
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = Some(n.max(1));
        self
    }

    /// Declare only these tasks (default: every task of the plugin's kind).
    pub fn tasks(mut self, tasks: impl IntoIterator<Item = TaskName>) -> Self {
        self.tasks = Some(tasks.into_iter().collect());
        self
    }

    /// Declares tasks that are safe to run twice (CONFIRM, DELETE, BOOTSTRAP usually are):
    /// a daemon restarted while one ran runs it again rather than failing it.
    pub fn idempotent(mut self, tasks: impl IntoIterator<Item = TaskName>) -> Self {
        self.idempotent = tasks.into_iter().collect();
        self
    }

    /// Whether to install a global `tracing` subscriber that forwards events to the
    /// supervisor (default true; it is skipped if a subscriber is already set).
    pub fn forward_tracing(mut self, on: bool) -> Self {
        self.forward_tracing = on;
        self
    }

    /// Serves `provider` until stdin closes; returns the process's exit code.
    pub fn serve_provider(self, provider: impl Provider) -> ExitCode {
        run(server::serve(self, server::AsProvider(provider)))
    }

    /// Serves `automator` until stdin closes; returns the process's exit code.
    pub fn serve_automator(self, automator: impl Automator) -> ExitCode {
        run(server::serve(self, server::AsAutomator(automator)))
    }
}

/// Plugins are I/O-bound: one thread runs the protocol and every task; blocking work
/// belongs in `tokio::task::spawn_blocking`.
fn run(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(fut),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
