//! The supervisor: every registered plugin, and the one way in for a task.
//!
//! A task goes in two steps, in the manner of tokio's `mpsc::Sender::reserve`:
//! [`Supervisor::reserve`] routes it by Loom's rules ([`crate::core::router`]) and takes
//! a slot on its plugin (waiting in that plugin's queue if need be) and returns a
//! [`Permit`] that names the route; the caller records that the task is about to run
//! (the daemon's journal, a cluster's store), then [`Permit::send`] sends it and returns
//! its result. A task that cannot be routed or get a slot is [`Refused`] with a failed
//! result instead. [`Supervisor::run`] does both for callers with nothing to record.
//!
//! The set of plugins can be replaced while tasks run ([`Supervisor::reload`]): a task
//! takes a snapshot of the table when it is routed, so it finishes on the plugin it was
//! given; retired plugins drain before they stop.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use loom_protocol::{LogLevel, PluginKind, TaskResult};
use serde::Serialize;

use crate::core::plugin::{Busy, Plugin};
use crate::core::pool::{Lease, PhaseObserver};
use crate::core::registry::{Availability, Registry};
use crate::core::router::{self, Merged, Route, Table, Target};
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
    /// Told of every plugin's phase changes, also of plugins a reload adds.
    observer: Option<Arc<dyn PhaseObserver>>,
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

/// A task routed and holding a slot on its (first) plugin; nothing is sent yet.
///
/// Dropping it gives the slot back and sends nothing.
#[must_use = "a permit holds a slot until it is sent or dropped"]
pub struct Permit<'t> {
    task: &'t TaskEnvelope,
    /// The route's name for BOOTSTRAP (a join of names); a single plugin's is its name,
    /// borrowed, so the common case allocates nothing.
    bootstrap_route: Option<String>,
    reserved: Reserved,
}

enum Reserved {
    /// To one plugin, on this slot.
    One { plugin: Arc<Plugin>, lease: Lease, _busy: Busy },
    /// BOOTSTRAP: the results of the automators before the first one that took a slot
    /// (they cannot run), that one and its slot, the automators after it, and a busy mark
    /// on every one of them.
    Bootstrap { merged: Box<Merged>, first: Option<(String, Arc<Plugin>, Lease)>, rest: Vec<Target>, _busy: Vec<Busy> },
}

/// A task that was not sent: no plugin takes it, or its plugin is failed or stopping.
#[derive(Debug)]
pub struct Refused {
    route: String,
    result: TaskResult,
}

impl Refused {
    /// As [`Permit::route`]: `none` when no registered plugin takes the task.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The task's result: failed, the cause in `stderr`, credentials scrubbed.
    pub fn into_result(self) -> TaskResult {
        self.result
    }
}

impl Permit<'_> {
    /// The registered plugin the task goes to (for BOOTSTRAP, the registered automators,
    /// sorted, joined by `+`): a metrics label that never carries what a task says.
    pub fn route(&self) -> &str {
        match (&self.reserved, &self.bootstrap_route) {
            (Reserved::One { plugin, .. }, _) => plugin.name(),
            (Reserved::Bootstrap { .. }, Some(label)) => label,
            (Reserved::Bootstrap { .. }, None) => "none",
        }
    }

    /// Whether every plugin the task goes to declared it safe to run twice (what a
    /// daemon taking it over after a crash needs to know), read from the reservation
    /// rather than by routing the task again.
    pub fn is_idempotent(&self) -> bool {
        let name = self.task.task_name;
        match &self.reserved {
            Reserved::One { plugin, .. } => plugin.is_idempotent(name),
            Reserved::Bootstrap { first, rest, .. } => {
                first.as_ref().is_some_and(|(_, p, _)| p.is_idempotent(name))
                    && rest.iter().all(|(_, p)| p.as_ref().is_ok_and(|p| p.is_idempotent(name)))
            }
        }
    }

    /// Sends the task and returns its result. Never fails: every way a task can go wrong
    /// becomes a result with a non-zero status and the cause in `stderr`, naming the
    /// plugin and the task. The result is scrubbed of the task's credential values, except
    /// under its `result` member ([`redact::scrub_result`]): `run`'s output, the daemon's
    /// journal and API, and cluster operations all take it from here.
    ///
    /// # Cancellation
    /// Dropping the future before the answer sends `cancel` for the task; its slot stays
    /// taken until the plugin answers it or the process ends. A BOOTSTRAP's later
    /// automators are not sent.
    pub async fn send(self) -> TaskResult {
        let task = self.task;
        let mut result = match self.reserved {
            Reserved::One { plugin, lease, _busy } => plugin.send(lease, task).await,
            Reserved::Bootstrap { mut merged, first, rest, _busy } => {
                if let Some((name, plugin, lease)) = first {
                    merged.add(&name, plugin.send(lease, task).await);
                }
                for (name, target) in rest {
                    let r = match target {
                        Ok(plugin) => plugin.run(task).await,
                        Err(why) => TaskResult::failed(why),
                    };
                    merged.add(&name, r);
                }
                merged.finish()
            }
        };
        redact::scrub_result(&mut result, &TaskSecrets(&task.secrets));
        result
    }

    /// Gives the slot back without sending the task, because of `why` (the caller could
    /// not record that it runs): a failed result naming the plugin and the task.
    pub fn abandon(self, why: &str) -> TaskResult {
        let task = self.task;
        let mut result = match &self.reserved {
            Reserved::One { plugin, .. } | Reserved::Bootstrap { first: Some((_, plugin, _)), .. } => {
                plugin.unsent(task, why)
            }
            Reserved::Bootstrap { first: None, .. } => {
                TaskResult::failed(format!("task {}: the task was not sent: {why}", task.task_id))
            }
        };
        redact::scrub_result(&mut result, &TaskSecrets(&task.secrets));
        result
    }
}

impl Supervisor {
    /// A supervisor for every runnable plugin in `registry`. With `options.eager`, starts
    /// them all now (needs a tokio runtime); otherwise each starts on its first task.
    pub fn new(registry: Registry, options: Options) -> Supervisor {
        Supervisor::observed(registry, options, None)
    }

    /// [`Supervisor::new`], telling `observer` of every phase change of every plugin's
    /// instances (from the first `starting`; plugins a reload adds included).
    pub fn observed(registry: Registry, options: Options, observer: Option<Arc<dyn PhaseObserver>>) -> Supervisor {
        let table = Table::new(registry, options.log_level, observer.as_ref());
        if options.eager {
            table.plugins().for_each(|p| p.start());
        }
        Supervisor { table: RwLock::new(Arc::new(table)), options, observer }
    }

    /// The current plugins.
    pub fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The runnable plugin of `kind` named `name`, now.
    pub fn plugin(&self, kind: PluginKind, name: &str) -> Option<Arc<Plugin>> {
        self.table().plugin(kind, name).cloned()
    }

    /// Routes `task` and takes a slot on its plugin (for BOOTSTRAP, on the first of its
    /// automators that can run), starting the plugin if need be and waiting in its queue
    /// while no slot is free. Nothing is sent until [`Permit::send`].
    ///
    /// # Errors
    /// [`Refused`], with the task's failed result, when no registered plugin takes the
    /// task or its plugin is failed or stopping (also while waiting).
    ///
    /// # Cancellation
    /// Dropping the future leaves the queue; nothing was sent.
    pub async fn reserve<'t>(&self, task: &'t TaskEnvelope) -> Result<Permit<'t>, Refused> {
        let route = router::route(&self.table(), task);
        let bootstrap_route = matches!(route, Route::Bootstrap(_)).then(|| route.target());
        let refuse = |label: String, mut result: TaskResult| {
            redact::scrub_result(&mut result, &TaskSecrets(&task.secrets));
            Refused { route: label, result }
        };
        let reserved = match route {
            Route::Refused(why) => return Err(refuse("none".to_owned(), TaskResult::failed(why))),
            Route::One(plugin) => {
                let busy = plugin.busy();
                match plugin.acquire(task).await {
                    Ok(lease) => Reserved::One { plugin, lease, _busy: busy },
                    Err(failed) => return Err(refuse(plugin.name().to_owned(), failed)),
                }
            }
            Route::Bootstrap(targets) => match bootstrap_first(task, targets).await {
                Ok(reserved) => reserved,
                Err(failed) => return Err(refuse(bootstrap_route.unwrap_or_default(), failed)),
            },
        };
        Ok(Permit { task, bootstrap_route, reserved })
    }

    /// Runs one task: [`Supervisor::reserve`], then [`Permit::send`]; a refused task's
    /// result is its failure. For callers with nothing to record in between (`run`).
    pub async fn run(&self, task: &TaskEnvelope) -> TaskResult {
        match self.reserve(task).await {
            Ok(permit) => permit.send().await,
            Err(refused) => refused.into_result(),
        }
    }

    /// Where `task` would go now, as [`Permit::route`] names it, and whether every plugin
    /// there declared it safe to run twice: for a task that is not run (one found
    /// unfinished after a restart).
    pub fn route(&self, task: &TaskEnvelope) -> (String, bool) {
        let route = router::route(&self.table(), task);
        (route.target(), route.is_idempotent(task.task_name))
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
            let plugin = match old.entries().get(&key) {
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
                    if let Some(o) = &self.observer {
                        p.observe(o);
                    }
                    p.start();
                    p
                }
            };
            plugins.insert(key, plugin);
        }
        for (key, p) in old.entries() {
            if !plugins.contains_key(key) {
                report.removed.push(format!("{} {}", key.0, key.1));
                retired.push(Arc::clone(p));
            }
        }
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Table::with(registry, plugins));
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

/// Takes a slot on the first automator of a BOOTSTRAP that can run; those before it that
/// cannot add their failure to the merged result.
///
/// # Errors
/// The merged failure, when there are automators and none can take the task.
async fn bootstrap_first(task: &TaskEnvelope, targets: Vec<Target>) -> Result<Reserved, TaskResult> {
    let mut merged = Box::new(Merged::new(targets.len()));
    let none = targets.is_empty();
    // Every automator the task goes to is marked busy now, not only the one it waits for:
    // a reload meanwhile must let each of them finish its part before it stops.
    let marks: Vec<Busy> = targets.iter().filter_map(|(_, t)| t.as_ref().ok()).map(|p| p.busy()).collect();
    let mut targets = targets.into_iter();
    for (name, target) in targets.by_ref() {
        let plugin = match target {
            Ok(plugin) => plugin,
            Err(why) => {
                merged.add(&name, TaskResult::failed(why));
                continue;
            }
        };
        match plugin.acquire(task).await {
            Ok(lease) => {
                return Ok(Reserved::Bootstrap {
                    merged,
                    first: Some((name, plugin, lease)),
                    rest: targets.collect(),
                    _busy: marks,
                });
            }
            Err(failed) => merged.add(&name, failed),
        }
    }
    if none {
        Ok(Reserved::Bootstrap { merged, first: None, rest: Vec::new(), _busy: marks })
    } else {
        Err(merged.finish())
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use loom_protocol::PluginKind::Automator;
    use serde_json::json;

    use super::*;
    use crate::core::testing::{Plugins, action, poll_once, started, task};

    /// Automator `a`, with one slot, writing down each task it starts in `runlog`.
    fn one_slot() -> (Plugins, Supervisor) {
        let plugins = Plugins::new();
        plugins.add(Automator, "a", json!({"env": {"TESTPLUGIN_RUNLOG": plugins.file("runlog")}}));
        let sup = plugins.supervisor();
        (plugins, sup)
    }

    #[tokio::test]
    async fn a_permit_takes_the_slot_until_its_task_is_answered() {
        let (plugins, sup) = one_slot();
        let (t1, t2) = (action("t1", "INSTALL", "a", json!({})), action("t2", "INSTALL", "a", json!({})));
        let first = sup.reserve(&t1).await.expect("a slot");
        assert_eq!(first.route(), "a");
        assert_eq!(sup.route(&t1), ("a".to_owned(), false));
        let mut second = pin!(sup.reserve(&t2));
        assert!(poll_once(second.as_mut()).is_none(), "one slot: the second waits");
        assert_eq!(first.send().await.status, 0);
        let second = second.await.expect("the answered task's slot");
        assert_eq!(second.send().await.status, 0);
        assert_eq!(started(&plugins.file("runlog")), ["t1", "t2"]);
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn a_dropped_permit_sends_nothing_and_gives_its_slot_back() {
        let (plugins, sup) = one_slot();
        let (t1, t2) = (action("t1", "INSTALL", "a", json!({})), action("t2", "INSTALL", "a", json!({})));
        let first = sup.reserve(&t1).await.expect("a slot");
        let mut second = pin!(sup.reserve(&t2));
        assert!(poll_once(second.as_mut()).is_none());
        drop(first);
        let Some(Ok(second)) = poll_once(second.as_mut()) else {
            panic!("the dropped permit's slot was not handed on")
        };
        assert_eq!(second.send().await.status, 0);
        sup.shutdown().await;
        assert_eq!(started(&plugins.file("runlog")), ["t2"], "the dropped permit's task never reached the plugin");
    }

    #[tokio::test]
    async fn an_abandoned_permit_fails_its_task_by_name_and_gives_its_slot_back() {
        let (plugins, sup) = one_slot();
        let t1 = action("t1", "INSTALL", "a", json!({}));
        let abandoned = sup.reserve(&t1).await.expect("a slot").abandon("the journal is read-only");
        assert_eq!(abandoned.status, 1);
        let why = "automator \"a\", task t1 (INSTALL): the task was not sent: the journal is read-only";
        assert_eq!(abandoned.stderr, why);
        let plugin = sup.plugin(Automator, "a").expect("plugin a");
        assert_eq!(plugin.status()[0].in_flight, 0, "the slot is free");
        assert_eq!(plugin.active(), 0, "nothing for a retirement to wait for");
        assert_eq!(sup.run(&action("t2", "INSTALL", "a", json!({}))).await.status, 0);
        sup.shutdown().await;
        assert_eq!(started(&plugins.file("runlog")), ["t2"]);
    }

    #[tokio::test]
    async fn a_task_no_registered_plugin_takes_is_refused_with_route_none_and_scrubbed() {
        let (_plugins, sup) = one_slot();
        // The automator's name is also a credential of the task: the refusal quotes the name.
        let config = json!({"service": {"action": {"type": "SECRET-pw-42"}}, "ssh-auth": {"password": "SECRET-pw-42"}});
        let t = task("t1", "INSTALL", config);
        let Err(refused) = sup.reserve(&t).await else { panic!("an unknown automator took the task") };
        assert_eq!(refused.route(), "none");
        assert_eq!(sup.route(&t), ("none".to_owned(), false));
        let result = refused.into_result();
        assert_eq!(result.status, 1);
        let why = "task t1 (INSTALL): no automator named \"[redacted]\" is registered (registered automators: a)";
        assert_eq!(result.stderr, why);
        assert!(sup.plugin(Automator, "a").expect("plugin a").status()[0].pid.is_none(), "nothing was started");
    }

    #[tokio::test]
    async fn bootstrap_runs_each_automator_in_order_and_merges_their_results() {
        let plugins = Plugins::new();
        plugins.add(Automator, "a", json!({})).add(Automator, "b", json!({}));
        let sup = plugins.supervisor();
        let b_fails = json!({"status": 4, "stderr": "b failed", "result": {"only": "b"}});
        let test = json!({"stdout": "hello", "result": {"from": "each"}, "byPlugin": {"b": b_fails}});
        let t = task("b1", "BOOTSTRAP", json!({"automators": ["b", "a"], "test": test}));
        let permit = sup.reserve(&t).await.expect("a slot on b");
        assert_eq!(permit.route(), "a+b");
        let r = permit.send().await;
        assert_eq!(r.status, 4, "b's failure");
        assert_eq!(r.stdout, "==> b <==\nhello\n==> a <==\nhello\n", "a ran after b failed");
        assert_eq!(r.stderr, "==> b <==\nb failed\n");
        assert_eq!(
            (&r.result["handledBy"], &r.result["only"], &r.result["from"]),
            (&json!("a"), &json!("b"), &json!("each"))
        );

        let nothing = task("b2", "BOOTSTRAP", json!({"automators": []}));
        let permit = sup.reserve(&nothing).await.expect("nothing to wait for");
        assert_eq!(permit.route(), "none");
        let r = permit.send().await;
        assert_eq!((r.status, r.stdout.as_str()), (0, "no automators to bootstrap\n"));
        let abandoned = sup.reserve(&nothing).await.expect("nothing to wait for").abandon("no journal");
        assert_eq!(abandoned.stderr, "task b2: the task was not sent: no journal");
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn a_result_is_scrubbed_of_the_tasks_credentials_except_under_result() {
        let (_plugins, sup) = one_slot();
        // The second automator's name is a credential too: its refusal and header quote it.
        let test = json!({"stdout": "logged in with SECRET-pw-42", "result": {"echo": "SECRET-pw-42"}});
        let config =
            json!({"automators": ["a", "SECRET-pw-42"], "ssh-auth": {"password": "SECRET-pw-42"}, "test": test});
        let t = task("b1", "BOOTSTRAP", config);
        let permit = sup.reserve(&t).await.expect("a slot on a");
        assert_eq!(permit.route(), "a");
        let r = permit.send().await;
        assert_eq!(r.status, 1);
        assert_eq!(r.stdout, "==> a <==\nlogged in with [redacted]\n");
        let why = "task b1 (BOOTSTRAP): no automator named \"[redacted]\" is registered (registered automators: a)";
        assert_eq!(r.stderr, format!("==> [redacted] <==\n{why}\n"));
        assert_eq!(r.result["echo"], "SECRET-pw-42", "the result member goes on to the node's later tasks as it is");
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn a_bootstrap_routed_before_a_reload_finishes_on_every_automator_it_was_given() {
        let plugins = Plugins::new();
        plugins.add(Automator, "a", json!({})).add(Automator, "b", json!({}));
        let sup = plugins.supervisor();
        assert_eq!(sup.run(&action("t1", "INSTALL", "b", json!({}))).await.status, 0, "b is running");
        let t = task("b1", "BOOTSTRAP", json!({"automators": ["a", "b"]}));
        let permit = sup.reserve(&t).await.expect("a slot on a");
        std::fs::remove_dir_all(plugins.file("automators/b")).expect("b's folder");
        let report = sup.reload(plugins.registry(), Duration::from_secs(60));
        assert_eq!(report.removed, ["automator b"]);
        let r = permit.send().await;
        assert_eq!(r.status, 0, "README: on reload, removed plugins finish the tasks they have: {r:?}");
        sup.shutdown().await;
    }
}
