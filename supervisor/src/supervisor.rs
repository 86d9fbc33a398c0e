//! The supervisor: every registered plugin, and the one entry point for tasks,
//! [`Supervisor::run_task`]. It reads the task's routing fields, picks the plugin as Loom
//! did ([`crate::router`]), and hands the task to that plugin's pool ([`crate::plugin`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::join_all;
use loom_protocol::{LogLevel, PluginKind, TaskResult};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::envelope::TaskEnvelope;
use crate::plugin::Plugin;
use crate::registry::{Availability, Registry};
use crate::router::{self, Route};

/// How the supervisor runs its plugins.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Start every plugin now (a daemon) rather than on its first task (`run`).
    pub eager: bool,
    /// The log level told to plugins in the handshake.
    pub log_level: LogLevel,
}

impl Default for Options {
    fn default() -> Self {
        Options { eager: false, log_level: LogLevel::Info }
    }
}

/// Runs plugins and routes tasks to them.
pub struct Supervisor {
    registry: Registry,
    plugins: BTreeMap<(PluginKind, String), Arc<Plugin>>,
}

/// One task's outcome, as `run` prints it: `{"taskId", "status", "result", "stdout",
/// "stderr"}` plus `hostname`/`ipaddresses` when set.
#[derive(Debug, Clone, Serialize)]
pub struct TaskReport {
    /// The task's id; `null` when the document had none.
    #[serde(rename = "taskId")]
    pub task_id: Option<String>,
    /// The result.
    #[serde(flatten)]
    pub result: TaskResult,
}

impl Supervisor {
    /// A supervisor for every runnable plugin in `registry`. With `options.eager`, starts
    /// them all now (needs a tokio runtime); otherwise each starts on its first task.
    pub fn new(registry: Registry, options: Options) -> Supervisor {
        let plugins: BTreeMap<_, _> = registry
            .plugins
            .iter()
            .filter_map(|r| match &r.availability {
                Availability::Runnable(spec) => {
                    Some(((r.kind, r.name.clone()), Plugin::new(Arc::clone(spec), options.log_level)))
                }
                Availability::NotRunnable(_) => None,
            })
            .collect();
        if options.eager {
            plugins.values().for_each(Plugin::start);
        }
        Supervisor { registry, plugins }
    }

    /// What was registered.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The runnable plugin of `kind` named `name`.
    pub fn plugin(&self, kind: PluginKind, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(&(kind, name.to_owned()))
    }

    /// Every runnable plugin.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    /// Runs one task given as JSON and reports its result. Never fails: a task that cannot
    /// be read, routed or run gets a result with status 1 and the cause in `stderr`.
    pub async fn run_task(&self, raw: Box<RawValue>) -> TaskReport {
        match TaskEnvelope::parse(raw) {
            Ok(task) => {
                let result = self.run(&task).await;
                TaskReport { task_id: Some(task.task_id), result }
            }
            Err(e) => {
                TaskReport { task_id: e.task_id.clone(), result: TaskResult::failed(format!("invalid task: {e}")) }
            }
        }
    }

    /// Runs one parsed task: routes it and waits for its result.
    pub async fn run(&self, task: &TaskEnvelope) -> TaskResult {
        match router::route(self, task) {
            Route::One(plugin) => plugin.run_task(task).await,
            Route::Bootstrap(targets) => router::bootstrap(task, targets).await,
            Route::Refused(why) => TaskResult::failed(why),
        }
    }

    /// Waits until every started plugin has finished starting (ready or failed).
    pub async fn wait_settled(&self) {
        join_all(self.plugins.values().map(|p| p.wait_settled())).await;
    }

    /// Stops every plugin gracefully, all at once, and waits until they are gone.
    pub async fn shutdown(&self) {
        join_all(self.plugins.values().map(|p| p.stop())).await;
    }
}
