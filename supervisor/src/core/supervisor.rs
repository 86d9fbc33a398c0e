//! The supervisor: every registered plugin, and the one entry point for tasks,
//! [`Supervisor::run_task`]. It reads the task's routing fields, picks the plugin as Loom
//! did ([`crate::core::router`]), and hands the task to that plugin's pool ([`crate::core::plugin`]).
//!
//! The set of plugins can be replaced while tasks run ([`Supervisor::reload`]): a task
//! takes a snapshot of the table when it is routed, so it finishes on the plugin it was
//! given; retired plugins drain before they stop.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use loom_protocol::{LogLevel, PluginKind, TaskResult};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::core::plugin::{BeforeSend, Plugin};
use crate::core::registry::{Availability, Registry};
use crate::core::router::{self, Route};
use crate::wire::envelope::TaskEnvelope;
use crate::wire::redact::{self, TaskSecrets};

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
    table: RwLock<Arc<Table>>,
    options: Options,
}

/// The registered plugins at one moment.
pub struct Table {
    /// What was registered.
    pub registry: Registry,
    plugins: BTreeMap<(PluginKind, String), Arc<Plugin>>,
}

impl Table {
    /// The runnable plugin of `kind` named `name`.
    pub fn plugin(&self, kind: PluginKind, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(&(kind, name.to_owned()))
    }

    /// Every runnable plugin.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }
}

/// What a reload changed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReloadReport {
    /// Plugins started.
    pub added: Vec<String>,
    /// Plugins drained and stopped.
    pub removed: Vec<String>,
    /// Plugins whose manifest changed: a new one started, the old one drained.
    pub replaced: Vec<String>,
    /// Plugins left as they were.
    pub unchanged: Vec<String>,
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
        Supervisor { table: RwLock::new(Arc::new(Table { registry, plugins })), options }
    }

    /// The current plugins.
    pub fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The runnable plugin of `kind` named `name`, now.
    pub fn plugin(&self, kind: PluginKind, name: &str) -> Option<Arc<Plugin>> {
        self.table().plugin(kind, name).cloned()
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
        self.run_with(task, None).await
    }

    /// [`Supervisor::run`], calling `before_send` when the task gets a slot, just before
    /// it is sent to its (first) plugin. A task refused by routing never calls it.
    ///
    /// Every result leaves here scrubbed of the task's credential values, except under its
    /// `result` member ([`redact::scrub_result`]): `run`'s output, the daemon's journal and
    /// API, and cluster operations all take it from here.
    pub async fn run_with(&self, task: &TaskEnvelope, before_send: Option<BeforeSend<'_>>) -> TaskResult {
        let table = self.table();
        let mut result = match router::route(&table, task) {
            Route::One(plugin) => plugin.run_task_with(task, before_send).await,
            Route::Bootstrap(targets) => router::bootstrap(task, targets, before_send).await,
            Route::Refused(why) => TaskResult::failed(why),
        };
        redact::scrub_result(&mut result, &TaskSecrets(&task.secrets));
        result
    }

    /// The registered plugin (or, for BOOTSTRAP, the registered automators, sorted) `task`
    /// would go to, by name; `none` when there is none. Never a name taken from the task
    /// alone: this is a metrics label, so it must not carry what a task says.
    pub fn target(&self, task: &TaskEnvelope) -> String {
        match router::route(&self.table(), task) {
            Route::One(p) => p.name().to_owned(),
            Route::Bootstrap(targets) => {
                let mut names: Vec<&str> =
                    targets.iter().filter_map(|(_, p)| p.as_ref().ok()).map(|p| p.name()).collect();
                names.sort_unstable();
                names.dedup();
                if names.is_empty() { "none".into() } else { names.join("+") }
            }
            Route::Refused(_) => "none".into(),
        }
    }

    /// Whether every plugin `task` goes to declared it safe to run twice.
    pub fn is_idempotent(&self, task: &TaskEnvelope) -> bool {
        match router::route(&self.table(), task) {
            Route::One(p) => p.is_idempotent(task.task_name),
            Route::Bootstrap(targets) => {
                !targets.is_empty()
                    && targets.iter().all(|(_, p)| p.as_ref().is_ok_and(|p| p.is_idempotent(task.task_name)))
            }
            Route::Refused(_) => false,
        }
    }

    /// Waits until every started plugin has finished starting (ready or failed).
    pub async fn wait_settled(&self) {
        let table = self.table();
        join_all(table.plugins().map(|p| p.wait_settled())).await;
    }

    /// Replaces the plugins with those of `registry`: new ones start, unchanged ones stay,
    /// removed ones stop, changed ones are replaced. Tasks already routed finish on the
    /// plugin they were given: retired plugins drain (at most `grace`) before they stop.
    /// Returns once the table is swapped; the draining goes on in the background.
    pub fn reload(&self, registry: Registry, grace: Duration) -> ReloadReport {
        let old = self.table();
        let mut report = ReloadReport::default();
        let mut plugins = BTreeMap::new();
        let mut retired = Vec::new();
        for r in &registry.plugins {
            let Availability::Runnable(spec) = &r.availability else { continue };
            let key = (r.kind, r.name.clone());
            let label = format!("{} {}", r.kind, r.name);
            let plugin = match old.plugins.get(&key) {
                Some(p) if **p.spec() == **spec => {
                    report.unchanged.push(label);
                    Arc::clone(p)
                }
                existing => {
                    if let Some(p) = existing {
                        retired.push(Arc::clone(p));
                        report.replaced.push(label);
                    } else {
                        report.added.push(label);
                    }
                    let p = Plugin::new(Arc::clone(spec), self.options.log_level);
                    p.start();
                    p
                }
            };
            plugins.insert(key, plugin);
        }
        for (key, p) in &old.plugins {
            if !plugins.contains_key(key) {
                report.removed.push(format!("{} {}", key.0, key.1));
                retired.push(Arc::clone(p));
            }
        }
        *self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Table { registry, plugins });
        for p in retired {
            tokio::spawn(async move { p.retire(grace).await });
        }
        report
    }

    /// Stops every plugin gracefully, all at once, and waits until they are gone.
    pub async fn shutdown(&self) {
        let table = self.table();
        join_all(table.plugins().map(|p| p.stop())).await;
    }
}
