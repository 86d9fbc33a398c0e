//! Running one cluster operation: the plan's steps on the supervisor, as many at once
//! as `parallel` allows and their order permits, each up to `attempts` times.
//!
//! For every task sent: it is built by [`super::task`] from the spec and what the node's
//! earlier tasks returned ([`super::task::merge`]); its start is journaled just before it goes out
//! (so after a crash it is known to have been sent, and is sent again with the same id:
//! a provider that deduplicates by task id, like `ec2`, does not make a second machine);
//! its answer, the node's merged config and the step's mark are journaled together.
//!
//! A failed step is tried again. A failed CONFIRM is retried as DELETE, CREATE, CONFIRM;
//! a failed CREATE that reported a `providerid` is deleted before it is tried again. A
//! CREATE answering a 2xx status created nothing and is not retried (Coopr's "refused").
//! When a step fails for good, no new step starts; the running ones finish; the cluster
//! is left `incomplete` with a report of what failed and what to do ([`Outcome`]).
//!
//! # Cancellation
//! Dropping [`Prepared::execute`]'s future cancels the tasks in flight (each gets a `cancel`). Their
//! journal entries stay `running`: the next operation sends them again.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use loom_protocol::{PluginKind, TaskName, TaskResult};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::lock::{ClusterLock, LockError, Locks};
use super::outcome::{Failure, Outcome};
use super::plan::{self, JobKind, Mark, Marks, Plan, StepKey};
use super::progress::{Event, Progress};
use super::remote;
use super::spec::{ClusterSpec, NodeSpec};
use super::store::{ClusterState, ClusterStore, Finished, TaskRow};
use super::task::{self, Tasks};
use crate::core::registry::{Availability, Registry};
use crate::core::router::Table;
use crate::core::supervisor::Supervisor;
use crate::journal::{JournalError, until_recorded};
use crate::wire::envelope::TaskEnvelope;

/// Tasks run at once unless told otherwise.
pub const DEFAULT_PARALLEL: usize = 8;
/// Attempts per step unless told otherwise (Loom's).
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Most bytes of a failed task's stdout and stderr in a report.
const REPORT_TAIL: usize = 4096;

/// How an operation runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most tasks at once.
    pub parallel: usize,
    /// Attempts per step.
    pub attempts: u32,
    /// What part of the cluster it touches (`--limit`), and how a restart rolls. Its
    /// `previous` is filled in by [`prepare`] from the stored spec.
    pub scope: plan::Scope,
}

impl Options {
    /// The spec's settings, overridden by the caller's.
    pub fn resolve(spec: &ClusterSpec, parallel: Option<usize>, attempts: Option<u32>) -> Options {
        Options {
            parallel: parallel.or(spec.parallel).unwrap_or(DEFAULT_PARALLEL).max(1),
            attempts: attempts.or(spec.attempts).unwrap_or(DEFAULT_ATTEMPTS).max(1),
            scope: plan::Scope::default(),
        }
    }

    /// The same, within `scope`.
    #[must_use]
    pub fn with_scope(self, scope: plan::Scope) -> Options {
        Options { scope, ..self }
    }
}

/// What an operation needs: the plugins, the journal, the folder of the cluster locks.
pub struct Engine<'a> {
    /// Runs the tasks.
    pub supervisor: &'a Supervisor,
    /// Records everything.
    pub store: &'a ClusterStore,
    /// Where the cluster's operations take turns.
    pub locks: Locks,
}

impl Engine<'_> {
    /// The fleet's journal, when this operation runs in a fleet and `task` needs a plugin
    /// this daemon lacks: then another daemon that has it runs it.
    fn runs_elsewhere(&self, task: &TaskEnvelope) -> Option<&crate::journal::Journal> {
        let Locks::Fleet { journal, .. } = &self.locks else { return None };
        let here = self.supervisor.table().can();
        let needs = crate::core::router::needs(task);
        (!needs.is_empty() && !needs.iter().all(|n| here.contains(n))).then_some(journal)
    }

    /// The plugin keys the other live daemons of the fleet run (none outside a fleet).
    ///
    /// # Errors
    /// When the journal fails.
    async fn fleet_plugins(&self) -> Result<BTreeSet<String>, JobError> {
        let Locks::Fleet { journal, .. } = &self.locks else { return Ok(BTreeSet::new()) };
        Ok(journal.fleet_can().await?)
    }
}

/// Why an operation did not start.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No such cluster.
    #[error("no cluster named {0:?}")]
    Unknown(String),
    /// Another operation holds the cluster (or its lock cannot be taken).
    #[error("{0}")]
    Busy(LockError),
    /// The plugins or the recorded state do not allow it; nothing was sent.
    #[error("{}", .0.join("\n"))]
    Refused(Vec<String>),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// An operation that has started (its job is recorded and the cluster locked) and has
/// not sent anything yet.
pub struct Prepared<'a> {
    engine: &'a Engine<'a>,
    spec: ClusterSpec,
    kind: JobKind,
    options: Options,
    plan: Plan,
    job_id: String,
    learned: HashMap<String, Map<String, Value>>,
    marks: Marks,
    interrupted: HashMap<StepKey, TaskRow>,
    /// Only part of the cluster: a `down` that succeeds leaves it active.
    partial: bool,
    /// With `--limit`: the cluster's state and report before (a limited operation that
    /// succeeds leaves an `incomplete` cluster so, unless it was an `up` that finished it).
    before: Option<(ClusterState, Option<Value>)>,
    /// A scale-down: the spec stored once it succeeds.
    settle: Option<Value>,
    _lock: ClusterLock,
}

/// Starts `kind` on the cluster described by `spec` (for `up`, the spec to bring up; for
/// the others, usually the stored one, which [`stored_spec`] reads); then
/// [`Prepared::execute`] runs it.
///
/// Locks the cluster, plans the operation and checks that it can run (the spec's nodes,
/// the plugins), then records its start. Fails at once if another operation holds the
/// cluster.
///
/// # Errors
/// [`JobError`]: nothing was sent, and nothing recorded.
pub async fn prepare<'a>(
    engine: &'a Engine<'a>,
    spec: ClusterSpec,
    kind: JobKind,
    options: Options,
) -> Result<Prepared<'a>, JobError> {
    let lock = engine.locks.acquire(&spec.name).await.map_err(JobError::Busy)?;
    let snapshot = engine.store.snapshot(&spec.name).await?;
    if kind != JobKind::Up && snapshot.is_none() {
        return Err(JobError::Unknown(spec.name.clone()));
    }
    let live = snapshot.filter(|s| s.cluster.state != ClusterState::Terminated || kind != JobKind::Up);
    let before =
        live.as_ref().filter(|_| !options.scope.limit.is_empty()).map(|s| (s.cluster.state, s.cluster.report.clone()));
    let stored = live.as_ref().map(|s| s.cluster.spec.clone());
    let (learned, marks, interrupted) = live.map(|s| (s.learned, s.marks, s.interrupted)).unwrap_or_default();
    let mut options = options;
    options.scope.previous = match (&stored, kind) {
        (Some(v), JobKind::Up | JobKind::Reconfigure { .. }) => {
            ClusterSpec::from_value(v, &format!("the stored spec of cluster {}", spec.name), Path::new("/")).ok()
        }
        _ => None,
    };
    check_nodes(&spec, options.scope.previous.as_ref(), &learned)?;
    let plan = plan::build(kind, &spec, &marks, &learned, &options.scope).map_err(JobError::Refused)?;
    let previous = options.scope.previous.as_ref();
    let shrinking = previous.is_some_and(|p| !plan::dropped_nodes(&spec, p, &marks, &learned).is_empty());
    let elsewhere = engine.fleet_plugins().await?;
    check_plugins(&spec, previous, &plan, &engine.supervisor.table(), &elsewhere)?;

    // A scale-down keeps a spec that still has the nodes it takes away until it has
    // succeeded: an operation after a failure finds them there, and the nodes it adds
    // too (a `down` then deletes every machine). Like a limited one, it runs as an
    // update: a daemon restart does not resume it as a plain `up`.
    let partial = shrinking || !options.scope.limit.is_empty() || options.scope.rolling.is_some();
    let recorded = match (&stored, shrinking) {
        (Some(v), true) => union_spec(v, &spec),
        _ => spec.to_value(),
    };
    let during = if partial { ClusterState::Updating } else { ClusterState::during(kind) };
    let job_id = engine.store.begin_as(&spec.name, &recorded, kind, during).await?;
    let settle = shrinking.then(|| spec.to_value());
    let mut interrupted_by_step = HashMap::new();
    for row in interrupted {
        if plan.find(&row.step).is_some() {
            interrupted_by_step.insert(row.step.clone(), row);
        } else {
            // Sent by an operation that was interrupted, and not part of this one.
            engine.store.abandon(&row.task_id).await?;
        }
    }
    Ok(Prepared {
        engine,
        spec,
        kind,
        options,
        plan,
        job_id,
        learned,
        marks,
        interrupted: interrupted_by_step,
        partial,
        before,
        settle,
        _lock: lock,
    })
}

impl Prepared<'_> {
    /// The operation's id.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// Runs the plan, records the outcome and releases the cluster.
    ///
    /// # Errors
    /// The journal failed at the end (every task's result was recorded before).
    pub async fn execute(self, progress: &dyn Progress) -> Result<Outcome, JobError> {
        let Prepared {
            engine,
            spec,
            kind,
            options,
            plan,
            job_id,
            learned,
            marks,
            interrupted,
            partial,
            before,
            settle,
            _lock,
        } = self;
        let previous = options.scope.previous.clone();
        let runner = Runner {
            engine,
            spec: &spec,
            nodes: spec.nodes(),
            previous: previous.as_ref().map(|p| (p, p.nodes())),
            job_id: job_id.clone(),
            options,
            progress,
            learned: Mutex::new(learned),
            marks: Mutex::new(marks),
            interrupted: Mutex::new(interrupted),
        };
        progress.event(&Event::Planned { cluster: &spec.name, job_id: &job_id, kind, plan: &plan });
        let (succeeded, failed, tolerated) = tokio::select! {
            done = runner.execute(&plan) => done,
            never = forward_output(progress) => match never {},
        };
        let not_run = plan.steps.len() - succeeded - failed.len();
        let finished_up = kind == JobKind::Up && plan::up(&spec, &runner.lock_marks()).steps.is_empty();
        let (state, kept_report) = match (failed.is_empty() && not_run == 0, kind, before) {
            (false, _, _) => (ClusterState::Incomplete, None),
            (true, _, Some((ClusterState::Incomplete, report))) if !finished_up => (ClusterState::Incomplete, report),
            (true, JobKind::Down { .. }, None) if !partial => (ClusterState::Terminated, None),
            (true, _, _) => (ClusterState::Active, None),
        };
        let rolled = rolling_note(&plan, &failed);
        let outcome = Outcome {
            cluster: spec.name.clone(),
            job_id,
            operation: kind.as_str(),
            state,
            steps: plan.steps.len(),
            succeeded,
            not_run,
            failed,
            notes: plan.notes.into_iter().chain(tolerated).chain(rolled).collect(),
        };
        if let (Some(settle), true) = (&settle, outcome.ok()) {
            let kept: BTreeSet<String> = spec.nodes().into_iter().map(|n| n.id).collect();
            engine.store.settle(&spec.name, settle, &kept).await?;
        }
        let report = if outcome.ok() { kept_report } else { Some(outcome.report()) };
        engine.store.end(&spec.name, state, report.as_ref()).await?;
        progress.event(&Event::Finished { outcome: &outcome });
        Ok(outcome)
    }
}

/// The stored spec `stored` with the node groups and services of `spec` it lacks, and
/// each shared group's count raised to `spec`'s where that is higher: every node of both
/// (an extra node of a shared group as `stored` describes the group). What a scale-down
/// records while it runs. `stored` itself when the union is not a valid spec (e.g. too
/// many nodes).
fn union_spec(stored: &Value, spec: &ClusterSpec) -> Value {
    let new = spec.to_value();
    let mut out = stored.clone();
    if let (Some(groups), Some(new_groups)) =
        (out.get_mut("nodeGroups").and_then(Value::as_array_mut), new.get("nodeGroups").and_then(Value::as_array))
    {
        for g in new_groups {
            let name = g.get("name");
            match groups.iter_mut().find(|o| o.get("name") == name) {
                Some(old) => {
                    let count = |v: &Value| v.get("count").and_then(Value::as_u64).unwrap_or(1);
                    if count(g) > count(old)
                        && let Some(o) = old.as_object_mut()
                    {
                        o.insert("count".into(), count(g).into());
                    }
                }
                None => groups.push(g.clone()),
            }
        }
    }
    if let (Some(services), Some(new_services)) =
        (out.get_mut("services").and_then(Value::as_object_mut), new.get("services").and_then(Value::as_object))
    {
        for (name, s) in new_services {
            services.entry(name.clone()).or_insert_with(|| s.clone());
        }
    }
    match ClusterSpec::from_value(&out, "the union of the stored spec and the new one", Path::new("/")) {
        Ok(_) => out,
        Err(_) => stored.clone(),
    }
}

/// Where a rolling restart stopped: the batch of the first failure, and how many
/// batches after it were not touched.
fn rolling_note(plan: &Plan, failed: &[Failure]) -> Option<String> {
    let first = failed.first()?;
    let at = plan.batches.iter().position(|b| b.contains(&first.node))?;
    let total = plan.batches.len();
    let nodes = plan.batches.get(at).map(|b| b.join(", ")).unwrap_or_default();
    Some(format!(
        "rolling restart stopped in batch {} of {total} (nodes {nodes}): {} failed; {} later batch(es) were not touched",
        at + 1,
        first.step,
        total - at - 1
    ))
}

/// Passes every task's live output to `progress`, if it wants it; never returns.
async fn forward_output(progress: &dyn Progress) -> std::convert::Infallible {
    if progress.wants_output() {
        let mut lines = crate::wire::connection::watch_output();
        loop {
            match lines.recv().await {
                Ok(line) => progress.event(&Event::Output { task_id: &line.task_id, data: &line.data }),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    std::future::pending().await
}

/// The spec a cluster was last run with.
///
/// # Errors
/// [`JobError::Unknown`], or the journal failed, or the stored spec is unreadable.
pub async fn stored_spec(store: &ClusterStore, name: &str) -> Result<ClusterSpec, JobError> {
    let record = store.get(name).await?.ok_or_else(|| JobError::Unknown(name.to_owned()))?;
    ClusterSpec::from_value(&record.spec, &format!("the stored spec of cluster {name}"), Path::new("/"))
        .map_err(|e| JobError::Refused(vec![e.to_string()]))
}

/// A spec may add nodes to a cluster, and drop nodes the cluster's stored spec
/// (`previous`) has (a scale-down takes them away); it may not drop machines that no
/// spec describes any more.
///
/// # Errors
/// [`JobError::Refused`] naming the nodes whose machines would be lost track of.
pub fn check_nodes(
    spec: &ClusterSpec,
    previous: Option<&ClusterSpec>,
    learned: &HashMap<String, Map<String, Value>>,
) -> Result<(), JobError> {
    let ids: BTreeSet<String> =
        spec.nodes().into_iter().chain(previous.map(ClusterSpec::nodes).unwrap_or_default()).map(|n| n.id).collect();
    let dropped: Vec<&String> =
        learned.iter().filter(|(id, l)| !ids.contains(*id) && l.contains_key("providerid")).map(|(id, _)| id).collect();
    if dropped.is_empty() {
        return Ok(());
    }
    let mut dropped: Vec<&str> = dropped.into_iter().map(String::as_str).collect();
    dropped.sort_unstable();
    Err(JobError::Refused(vec![format!(
        "nodeGroups: cluster {} has machines neither this spec nor its stored spec has ({}): take the cluster down first, or restore the node groups",
        spec.name,
        dropped.join(", ")
    )]))
}

/// Every plugin the plan needs is registered and runnable; else nothing runs.
/// A plugin this daemon lacks may run on another daemon of the fleet (`elsewhere`: the
/// `kind:name` keys live daemons run).
/// Steps of nodes only `previous` has (a scale-down) are checked against `previous`.
fn check_plugins(
    spec: &ClusterSpec,
    previous: Option<&ClusterSpec>,
    plan: &Plan,
    table: &Table,
    elsewhere: &BTreeSet<String>,
) -> Result<(), JobError> {
    let runnable = |kind: PluginKind, name: &str| table.plugin(kind, name).is_some();
    let problems: Vec<String> = needed_plugins(spec, previous, plan)
        .into_iter()
        .filter_map(|need| plugin_problem(&need, &table.registry, &runnable, elsewhere))
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(JobError::Refused(problems)) }
}

/// A plugin a plan sends tasks to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NeededPlugin {
    /// Provider or automator.
    pub kind: PluginKind,
    /// Its name.
    pub name: String,
    /// Where the spec names it: `provider.name`, `services.web.actions.start.type`.
    pub at: String,
}

/// The plugins `plan`'s steps go to, each once, sorted by kind and name. Steps of nodes
/// only `previous` (the stored spec) has, which a scale-down takes away, go by it.
pub fn needed_plugins(spec: &ClusterSpec, previous: Option<&ClusterSpec>, plan: &Plan) -> Vec<NeededPlugin> {
    let mut needed: BTreeSet<(PluginKind, String, String)> = BTreeSet::new();
    let here = spec.nodes();
    let there = previous.map(ClusterSpec::nodes).unwrap_or_default();
    for step in &plan.steps {
        let k = &step.key;
        let (spec, nodes) = match previous {
            Some(p) if !here.iter().any(|n| n.id == k.node) => (p, &there),
            _ => (spec, &here),
        };
        match (k.task.kind(), &k.service) {
            (PluginKind::Provider, _) => {
                needed.insert((PluginKind::Provider, spec.provider.name.clone(), "provider.name".into()));
            }
            (PluginKind::Automator, Some(s)) => {
                if let Some(t) = spec.services.get(s).and_then(|svc| svc.automator(k.task)) {
                    needed.insert((PluginKind::Automator, t.to_owned(), type_path(spec, t)));
                }
            }
            (PluginKind::Automator, None) => {
                if let Some(node) = nodes.iter().find(|n| n.id == k.node) {
                    for a in spec.automators_of(node) {
                        let at = type_path(spec, &a);
                        needed.insert((PluginKind::Automator, a, at));
                    }
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    needed
        .into_iter()
        .filter(|(kind, name, _)| seen.insert((*kind, name.clone())))
        .map(|(kind, name, at)| NeededPlugin { kind, name, at })
        .collect()
}

/// Why `need` cannot run here (`at: why`), or `None` when it can: `runnable` here, or on
/// another daemon of the fleet (`elsewhere`: the `kind:name` keys live daemons run).
pub fn plugin_problem(
    need: &NeededPlugin,
    registry: &Registry,
    runnable: &dyn Fn(PluginKind, &str) -> bool,
    elsewhere: &BTreeSet<String>,
) -> Option<String> {
    let NeededPlugin { kind, name, at } = need;
    if runnable(*kind, name) || elsewhere.contains(&format!("{kind}:{name}")) {
        return None;
    }
    let registered = registry.plugins.iter().find(|r| r.kind == *kind && r.name == *name);
    let why = match registered.map(|r| &r.availability) {
        Some(Availability::NotRunnable(why)) => {
            format!("{kind} plugin {name:?} is registered but cannot run: {why}")
        }
        _ => {
            let names: Vec<&str> =
                registry.plugins.iter().filter(|r| r.kind == *kind).map(|r| r.name.as_str()).collect();
            let list = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
            format!("no {kind} plugin named {name:?} is registered (registered {kind}s: {list})")
        }
    };
    Some(format!("{at}: {why}"))
}

/// Where the spec first names automator `automator`: `services.web.actions.start.type`.
fn type_path(spec: &ClusterSpec, automator: &str) -> String {
    spec.services
        .iter()
        .flat_map(|(name, s)| s.actions.iter().map(move |(task, a)| (name, task, a)))
        .find(|(_, _, a)| a.get("type").and_then(Value::as_str) == Some(automator))
        .map_or_else(
            || "services".to_owned(),
            |(name, task, _)| format!("services.{name}.actions.{}.type", task.as_str().to_ascii_lowercase()),
        )
}

struct Runner<'a> {
    engine: &'a Engine<'a>,
    spec: &'a ClusterSpec,
    nodes: Vec<NodeSpec>,
    /// The stored spec and its nodes, for the nodes a scale-down takes away.
    previous: Option<(&'a ClusterSpec, Vec<NodeSpec>)>,
    job_id: String,
    options: Options,
    progress: &'a dyn Progress,
    learned: Mutex<HashMap<String, Map<String, Value>>>,
    marks: Mutex<Marks>,
    interrupted: Mutex<HashMap<StepKey, TaskRow>>,
}

/// A task's answer, as it came back.
struct Answer {
    result: TaskResult,
    /// From hand-over to the plugin to the answer.
    elapsed: Duration,
    /// Where it went ([`Event::TaskFinished`]'s `plugin`).
    plugin: String,
}

/// One send's outcome.
struct Sent {
    task_id: String,
    status: i64,
    stdout: String,
    stderr: String,
    /// Not worth trying again.
    fatal: bool,
}

impl Runner<'_> {
    /// Runs the steps; returns how many succeeded, the failures, and notes on the
    /// failures that do not count ([`plan::Step::tolerated`]).
    async fn execute(&self, plan: &Plan) -> (usize, Vec<Failure>, Vec<String>) {
        let mut schedule = plan.schedule();
        let mut running = FuturesUnordered::new();
        let (mut succeeded, mut failures, mut notes) = (0, Vec::new(), Vec::new());
        loop {
            while failures.is_empty() && running.len() < self.options.parallel {
                let Some(i) = schedule.next_ready() else { break };
                running.push(async move { (i, self.run_step(&plan.steps[i].key).await) });
            }
            let Some((i, outcome)) = running.next().await else { break };
            match outcome {
                Ok(()) => {
                    succeeded += 1;
                    schedule.done(i);
                }
                Err(failure) => match &plan.steps[i].tolerated {
                    Some(why) => {
                        let said = super::progress::last_line(&failure.stderr);
                        notes.push(format!(
                            "{} failed with status {} ({said}); not counted as a failure: {why}",
                            failure.step, failure.status
                        ));
                        succeeded += 1;
                        schedule.done(i);
                    }
                    None => failures.push(failure),
                },
            }
        }
        (succeeded, failures, notes)
    }

    /// Runs one step, with its retries.
    async fn run_step(&self, key: &StepKey) -> Result<(), Failure> {
        let resumed = self.lock_interrupted().remove(key);
        let mut last: Option<(Sent, TaskName)> = None;
        let mut attempts = 0;
        for attempt in 1..=self.options.attempts {
            attempts = attempt;
            let sequence = self.sequence(key, attempt);
            // An interrupted send picks up where it was, with its task id.
            let (start, mut reuse) = match &resumed {
                Some(row) if attempt == 1 => {
                    let at = sequence.iter().position(|t| t.as_str() == row.task_name).unwrap_or(0);
                    (at, Some(row.task_id.clone()))
                }
                _ => (0, None),
            };
            let mut all_ok = true;
            for &task in &sequence[start..] {
                let sent = self.send(key, task, attempt, reuse.take()).await;
                let (ok, fatal) = (sent.status == 0, sent.fatal);
                last = Some((sent, task));
                if !ok {
                    all_ok = false;
                    if fatal {
                        return Err(self.failure(key, last, attempts));
                    }
                    break;
                }
            }
            if all_ok {
                return Ok(());
            }
        }
        Err(self.failure(key, last, attempts))
    }

    /// The tasks one attempt of a step sends.
    fn sequence(&self, key: &StepKey, attempt: u32) -> Vec<TaskName> {
        let has_machine = || self.lock_learned().get(&key.node).is_some_and(|l| l.contains_key("providerid"));
        match key.task {
            TaskName::Confirm if attempt > 1 => {
                if has_machine() {
                    vec![TaskName::Delete, TaskName::Create, TaskName::Confirm]
                } else {
                    vec![TaskName::Create, TaskName::Confirm]
                }
            }
            TaskName::Create if attempt > 1 && has_machine() => vec![TaskName::Delete, TaskName::Create],
            t => vec![t],
        }
    }

    fn failure(&self, key: &StepKey, last: Option<(Sent, TaskName)>, attempts: u32) -> Failure {
        let (sent, task) = last.unwrap_or_else(|| {
            let never = Sent {
                task_id: String::new(),
                status: 1,
                stdout: String::new(),
                stderr: "never sent".into(),
                fatal: true,
            };
            (never, key.task)
        });
        Failure {
            step: key.to_string(),
            task_id: sent.task_id,
            task_name: task.as_str().to_owned(),
            node: key.node.clone(),
            service: key.service.clone(),
            attempts,
            status: sent.status,
            stdout: super::store::tail(&sent.stdout, REPORT_TAIL).to_owned(),
            stderr: super::store::tail(&sent.stderr, REPORT_TAIL).to_owned(),
        }
    }

    /// Sends one task and records everything about it.
    async fn send(&self, key: &StepKey, task: TaskName, attempt: u32, reuse_id: Option<String>) -> Sent {
        let task_id = reuse_id.unwrap_or_else(|| self.tasks(&key.node).id(key, task, attempt));
        // Built under the lock, from the live configs: no copy of every node's config.
        let body = self.tasks(&key.node).body(key, task, &task_id, &self.lock_learned());
        let envelope = match RawValue::from_string(body.to_string())
            .map_err(|e| e.to_string())
            .and_then(|raw| TaskEnvelope::parse(raw).map_err(|e| e.to_string()))
        {
            Ok(e) => e,
            Err(why) => {
                let stderr = format!("loom-provisioner built an invalid task: {why}");
                return Sent { task_id, status: 1, stdout: String::new(), stderr, fatal: true };
            }
        };
        let store = self.engine.store;
        let cluster = &self.spec.name;
        self.progress.event(&Event::TaskStarted { key, task_id: &task_id, task, attempt });
        let mut began = Instant::now();
        if let Some(journal) = self.engine.runs_elsewhere(&envelope) {
            let recorded = store.started(cluster, &self.job_id, &task_id, key, task.as_str(), attempt).await;
            let result = match recorded {
                Ok(()) => remote::run(journal, &envelope).await,
                Err(e) => TaskResult::failed(format!("not sent: {e}")),
            };
            let plugin = crate::core::router::needs(&envelope).join("+");
            let answer = Answer { result, elapsed: began.elapsed(), plugin };
            return self.record(key, task, &task_id, attempt, answer).await;
        }
        let (result, plugin) = match self.engine.supervisor.reserve(&envelope).await {
            Ok(permit) => {
                let plugin = permit.route().to_owned();
                match store.started(cluster, &self.job_id, &task_id, key, task.as_str(), attempt).await {
                    Ok(()) => {
                        began = Instant::now();
                        (permit.send().await, plugin)
                    }
                    Err(e) => {
                        let result = permit.abandon(&e.to_string());
                        // Recorded all the same, as a task that was not sent.
                        let _ = store.started(cluster, &self.job_id, &task_id, key, task.as_str(), attempt).await;
                        (result, plugin)
                    }
                }
            }
            Err(refused) => {
                // Refused before it was sent (no plugin): still recorded.
                let _ = store.started(cluster, &self.job_id, &task_id, key, task.as_str(), attempt).await;
                let plugin = refused.route().to_owned();
                (refused.into_result(), plugin)
            }
        };
        let answer = Answer { result, elapsed: began.elapsed(), plugin };
        self.record(key, task, &task_id, attempt, answer).await
    }

    async fn record(&self, key: &StepKey, task: TaskName, task_id: &str, attempt: u32, answer: Answer) -> Sent {
        let Answer { result, elapsed, plugin } = answer;
        // A script may print a credential it was given: the supervisor scrubbed the result
        // (all but its `result` member) before it came here, so it reaches neither the
        // journal nor the report.
        let (stdout, stderr) = (result.stdout.clone(), result.stderr.clone());
        let fatal = task == TaskName::Create && task::created_nothing(&result);
        let status = result.status;
        // A CONFIRM retried as DELETE, CREATE, CONFIRM remakes the machine: its CREATE
        // counts as the node's CREATE.
        let done: Vec<StepKey> = match (status, task == key.task, task) {
            (0, true, _) => vec![key.clone()],
            (0, false, TaskName::Create) => vec![StepKey::node(TaskName::Create, &key.node)],
            _ => Vec::new(),
        };
        let (learned, undo) = {
            let mut all = self.lock_learned();
            let node = all.entry(key.node.clone()).or_default();
            let before = node.clone();
            task::merge(node, task, &result);
            let changed = (*node != before).then(|| node.clone());
            let mut marks = self.lock_marks();
            let undo = if status == 0 {
                let as_key = StepKey { task, ..key.clone() };
                plan::undone_by(&as_key, &marks)
            } else {
                Vec::new()
            };
            for k in &undo {
                marks.remove(k);
            }
            marks.entry(key.clone()).or_insert(Mark::Attempted);
            for k in &done {
                marks.insert(k.clone(), Mark::Done);
            }
            (changed, undo)
        };
        let finished = Finished {
            task_id: task_id.to_owned(),
            step: key.clone(),
            status,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            learned,
            done,
            undo,
        };
        self.persist(finished).await;
        let retrying = status != 0 && !fatal && attempt < self.options.attempts;
        let plugin = &plugin;
        self.progress.event(&Event::TaskFinished {
            key,
            task_id,
            task,
            plugin,
            status,
            elapsed,
            stderr: &stderr,
            retrying,
        });
        Sent { task_id: task_id.to_owned(), status, stdout, stderr, fatal }
    }

    /// Journals a result; a result that cannot be written is retried: it must not be lost
    /// ([`until_recorded`]).
    async fn persist(&self, finished: Finished) {
        let cluster = &self.spec.name;
        until_recorded(&finished.task_id, || self.engine.store.finished(cluster, finished.clone())).await;
    }

    /// What the tasks of `node` are built from: the stored spec for a node only it has
    /// (a scale-down takes it away), else this operation's.
    fn tasks(&self, node: &str) -> Tasks<'_> {
        match &self.previous {
            Some((spec, nodes)) if !self.nodes.iter().any(|n| n.id == node) => {
                Tasks { spec, nodes, job_id: &self.job_id }
            }
            _ => Tasks { spec: self.spec, nodes: &self.nodes, job_id: &self.job_id },
        }
    }

    fn lock_learned(&self) -> std::sync::MutexGuard<'_, HashMap<String, Map<String, Value>>> {
        self.learned.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_marks(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_interrupted(&self) -> std::sync::MutexGuard<'_, HashMap<StepKey, TaskRow>> {
        self.interrupted.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_scale_down_records_every_node_of_the_old_and_the_new_spec() {
        let spec = |groups: Value| {
            json!({"name": "c", "provider": {"name": "local"}, "nodeGroups": groups,
                   "services": {"s": {"actions": {"start": {"type": "shell", "script": "s"}}}}})
        };
        let old = spec(json!([{"name": "a", "count": 2, "services": ["s"]}]));
        let new = ClusterSpec::from_value(
            &json!({"name": "c", "provider": {"name": "local"},
                    "nodeGroups": [{"name": "a", "count": 1, "services": ["s"]}, {"name": "b", "count": 3, "services": ["t"]}],
                    "services": {"s": {"actions": {"start": {"type": "shell", "script": "s"}}}, "t": {"actions": {"start": {"type": "shell", "script": "s"}}}}}),
            "t",
            Path::new("/"),
        )
        .unwrap();
        let union = ClusterSpec::from_value(&union_spec(&old, &new), "t", Path::new("/")).unwrap();
        let ids: Vec<String> = union.nodes().into_iter().map(|n| n.id).collect();
        assert_eq!(ids, ["c-a-1", "c-a-2", "c-b-1", "c-b-2", "c-b-3"]);
        assert!(union.services.contains_key("t"));
        // A shared group grows to the larger count.
        let grown =
            ClusterSpec::from_value(&spec(json!([{"name": "a", "count": 3, "services": ["s"]}])), "t", Path::new("/"))
                .unwrap();
        let union = ClusterSpec::from_value(&union_spec(&old, &grown), "t", Path::new("/")).unwrap();
        assert_eq!(union.nodes().len(), 3);
    }

    #[test]
    fn a_spec_may_drop_nodes_its_stored_spec_has_but_not_machines_no_spec_has() {
        let spec = |count: u32| {
            ClusterSpec::from_value(
                &json!({"name": "c", "provider": {"name": "local"},
                        "nodeGroups": [{"name": "a", "count": count, "services": []}], "services": {}}),
                "t",
                Path::new("/"),
            )
            .unwrap()
        };
        let made = |ids: &[&str]| -> HashMap<String, Map<String, Value>> {
            ids.iter().map(|id| ((*id).to_owned(), json!({"providerid": "p"}).as_object().cloned().unwrap())).collect()
        };
        assert!(check_nodes(&spec(3), None, &made(&["c-a-1", "c-a-2"])).is_ok());
        assert!(check_nodes(&spec(1), Some(&spec(2)), &made(&["c-a-1", "c-a-2"])).is_ok());
        let e = check_nodes(&spec(1), Some(&spec(1)), &made(&["c-a-1", "c-a-2"])).unwrap_err().to_string();
        assert!(
            e.starts_with("nodeGroups: cluster c has machines neither this spec nor its stored spec has (c-a-2)"),
            "{e}"
        );
    }
}
