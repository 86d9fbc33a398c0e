//! What the daemon publishes on its event bus ([`crate::daemon::events`]), for
//! `GET /v1/events`. The names and fields are a contract with the web console (README.md,
//! "Events"):
//!
//! - `task.started` {taskId, name, plugin, clusterId?} and `task.finished` {taskId, name,
//!   plugin, status, outcome ("ok", "failed", "cancelled"), durationMs}: the API's tasks
//!   ([`Publisher::task_started`], from [`crate::daemon::service`]).
//! - `op.started` {cluster, jobId, operation} and `op.finished` {cluster, jobId,
//!   operation, outcome ("done", "failed", "interrupted"), state, steps, succeeded,
//!   failed, notRun, summary}: cluster operations; `step.started` {cluster, jobId, step,
//!   node, service, action, taskId, attempt} and `step.finished` {the same, plugin, status,
//!   durationMs, outcome ("ok", "failed", "retrying")}: their steps ([`Published`]).
//! - `step.output` {cluster (null for an API task), jobId (likewise), taskId, stream,
//!   data, truncated?, dropped?, droppedBytes?}: live output, scrubbed of credentials as
//!   the log is (by the plugin's connection, [`crate::wire::redact`]); at most
//!   [`MAX_OUTPUT`] bytes an event, and within a per-task and an overall rate: what does
//!   not fit is dropped and counted (the next event of the task, or a last one with empty
//!   data, says how much).
//! - `plugin.state` {plugin, kind, instance, phase, pid, restarts, reason?, retryAt?}:
//!   every phase change of a plugin's instance ([`PluginStates`]).
//!
//! No event carries a task's config, a result's body or a credential.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use loom_protocol::{OutputStream, TaskResult};
use serde_json::{Value, json};
use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::cluster::outcome::Outcome;
use crate::cluster::progress::{Event as Progressed, Progress};
use crate::core::pool::{Phase, PhaseChange, PhaseObserver};
use crate::daemon::events::Bus;
use crate::wire::connection::OutputLine;
use crate::wire::envelope::TaskEnvelope;

/// The most bytes of output in one event (the rest of the piece is cut).
pub const MAX_OUTPUT: usize = 8 * 1024;
/// Output bytes a second one task may publish, and its burst.
const TASK_RATE: (f64, f64) = (64.0 * 1024.0, 256.0 * 1024.0);
/// Output bytes a second all tasks together may publish, and their burst.
const ALL_RATE: (f64, f64) = (512.0 * 1024.0, 1024.0 * 1024.0);
/// Tasks whose output is followed at once; beyond, a task's output is not published.
const MAX_TRACKED: usize = 16 * 1024;

/// A task's `task.finished`, made when its answer came ([`Publisher::task_finished`]), published
/// when its result is journaled ([`Publisher::publish_finished`]).
pub struct Finished(Value);

/// Publishes the daemon's events.
pub struct Publisher {
    bus: Arc<Bus>,
    output: Mutex<Outputs>,
}

/// The tasks whose output is published, and the plugins' output not read yet.
struct Outputs {
    rx: broadcast::Receiver<Arc<OutputLine>>,
    tasks: HashMap<String, Followed>,
    all: Bucket,
    /// Pieces lost because the output channel overflowed, not yet logged.
    lost: u64,
}

/// A task whose output is published.
struct Followed {
    cluster: Option<String>,
    job: Option<String>,
    bucket: Bucket,
    dropped: u64,
    dropped_bytes: u64,
}

/// A token bucket of bytes.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new((rate, burst): (f64, f64)) -> Bucket {
        Bucket { tokens: burst, rate, burst, at: Instant::now() }
    }

    /// Takes `n` bytes if there is room.
    fn take(&mut self, n: usize) -> bool {
        let now = Instant::now();
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        let n = n as f64;
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }
}

impl Publisher {
    /// A publisher on `bus`, following the plugins' live output from now on (a task of
    /// its own reads it; it ends when the publisher is dropped). Needs a tokio runtime.
    pub fn start(bus: Arc<Bus>) -> Arc<Publisher> {
        let outputs = Outputs {
            rx: crate::wire::connection::watch_output(),
            tasks: HashMap::new(),
            all: Bucket::new(ALL_RATE),
            lost: 0,
        };
        let publisher = Arc::new(Publisher { bus, output: Mutex::new(outputs) });
        // A second receiver only to wake the reader: the pieces are read, in order, from
        // the first, also by whoever publishes a task's end (so that its output comes
        // before it).
        let wake = crate::wire::connection::watch_output();
        tokio::spawn(follow_output(Arc::downgrade(&publisher), wake));
        publisher
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// API task `task` goes to `plugin` (or is refused by it): `task.started`.
    pub fn task_started(&self, task: &TaskEnvelope, plugin: &str) {
        self.follow(&task.task_id, None, None);
        let mut data = json!({"taskId": task.task_id, "name": task.task_name.as_str(), "plugin": plugin});
        if let Some(cluster) = cluster_id(task) {
            data["clusterId"] = cluster;
        }
        self.bus.publish("task.started", &data);
    }

    /// API task `task` ended with `result` after `elapsed`: its last output is published,
    /// and its `task.finished` made, to publish once the result is journaled.
    pub fn task_finished(&self, task: &TaskEnvelope, plugin: &str, result: &TaskResult, elapsed: Duration) -> Finished {
        self.unfollow(&task.task_id);
        let outcome = match result.status {
            0 => "ok",
            _ if crate::wire::answer::is_cancelled(result) => "cancelled",
            _ => "failed",
        };
        Finished(json!({"taskId": task.task_id, "name": task.task_name.as_str(), "plugin": plugin,
                        "status": result.status, "outcome": outcome, "durationMs": millis(elapsed)}))
    }

    /// Publishes a task's `task.finished`, once its result is in the journal (a client that
    /// reads the task on this event finds it done).
    pub fn publish_finished(&self, finished: Finished) {
        self.bus.publish("task.finished", &finished.0);
    }

    /// A cluster operation was cut short (the daemon drains, or lost its lease): its
    /// `op.finished`, outcome `interrupted` (it resumes at the next start).
    pub fn op_interrupted(&self, cluster: &str, job_id: &str, operation: &str) {
        let data = json!({"cluster": cluster, "jobId": job_id, "operation": operation, "outcome": "interrupted",
                          "summary": "cut short by a shutdown; it resumes at the next start"});
        self.bus.publish("op.finished", &data);
    }

    /// Publishes the output of task `task_id` from now on.
    fn follow(&self, task_id: &str, cluster: Option<&str>, job: Option<&str>) {
        let mut out = self.lock_output();
        if out.tasks.len() < MAX_TRACKED {
            let followed = Followed {
                cluster: cluster.map(str::to_owned),
                job: job.map(str::to_owned),
                bucket: Bucket::new(TASK_RATE),
                dropped: 0,
                dropped_bytes: 0,
            };
            out.tasks.insert(task_id.to_owned(), followed);
        }
    }

    /// Task `task_id` answered: its output so far is published (and what was dropped
    /// counted), then no more.
    fn unfollow(&self, task_id: &str) {
        let mut out = self.lock_output();
        self.pump(&mut out);
        if let Some(t) = out.tasks.remove(task_id)
            && t.dropped > 0
        {
            self.publish_output(task_id, &t, None, "", false);
        }
    }

    /// Publishes the output pieces that arrived, in order.
    fn pump(&self, out: &mut Outputs) {
        loop {
            match out.rx.try_recv() {
                Ok(line) => self.piece(out, &line),
                Err(TryRecvError::Lagged(n)) => out.lost += n,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if out.lost > 0 {
            tracing::debug!("{} pieces of output were not published: they came faster than they were read", out.lost);
            out.lost = 0;
        }
    }

    /// One piece: cut to [`MAX_OUTPUT`], published if both rates allow, else counted.
    fn piece(&self, out: &mut Outputs, line: &OutputLine) {
        let Outputs { tasks, all, .. } = out;
        let Some(t) = tasks.get_mut(&line.task_id) else { return };
        let data = crate::wire::redact::bound(&line.data, MAX_OUTPUT);
        let truncated = data.len() < line.data.len();
        if !(t.bucket.take(data.len()) && all.take(data.len())) {
            t.dropped += 1;
            t.dropped_bytes += line.data.len() as u64;
            return;
        }
        self.publish_output(&line.task_id, t, Some(line.stream), &data, truncated);
        t.dropped = 0;
        t.dropped_bytes = 0;
    }

    fn publish_output(&self, task_id: &str, t: &Followed, stream: Option<OutputStream>, data: &str, cut: bool) {
        let stream = match stream {
            Some(OutputStream::Stdout) => json!("stdout"),
            Some(OutputStream::Stderr) => json!("stderr"),
            None => Value::Null,
        };
        let mut v = json!({"cluster": t.cluster, "jobId": t.job, "taskId": task_id, "stream": stream, "data": data});
        if cut {
            v["truncated"] = json!(true);
        }
        if t.dropped > 0 {
            v["dropped"] = json!(t.dropped);
            v["droppedBytes"] = json!(t.dropped_bytes);
        }
        self.bus.publish("step.output", &v);
    }

    fn lock_output(&self) -> MutexGuard<'_, Outputs> {
        // Nothing under the lock panics half-way.
        self.output.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Publishes the plugins' output as it arrives, until the publisher is dropped or the
/// output channel closes.
async fn follow_output(publisher: Weak<Publisher>, mut wake: broadcast::Receiver<Arc<OutputLine>>) {
    loop {
        match wake.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
        let Some(p) = publisher.upgrade() else { return };
        let mut out = p.lock_output();
        p.pump(&mut out);
    }
}

/// The task's `clusterId`, when it is a string or a number (Loom's tasks carry one).
fn cluster_id(task: &TaskEnvelope) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Ids {
        #[serde(rename = "clusterId")]
        cluster_id: Option<Value>,
    }
    let ids: Ids = serde_json::from_str(task.raw().get()).ok()?;
    ids.cluster_id.filter(|v| v.is_string() || v.is_number())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A cluster operation's progress, published (and passed on to `inner`).
pub struct Published<'a, P> {
    /// Where.
    pub publisher: &'a Publisher,
    /// Also told.
    pub inner: P,
    /// The operation, once planned: cluster, job id.
    op: Mutex<Option<(String, String)>>,
    /// The attempt of each step's task in flight, for its `step.finished` (the progress
    /// event of its end does not say).
    attempts: Mutex<HashMap<String, u32>>,
}

impl<'a, P> Published<'a, P> {
    /// `inner`, its events also published by `publisher`.
    pub fn new(publisher: &'a Publisher, inner: P) -> Published<'a, P> {
        Published { publisher, inner, op: Mutex::new(None), attempts: Mutex::new(HashMap::new()) }
    }

    fn lock_attempts(&self) -> MutexGuard<'_, HashMap<String, u32>> {
        self.attempts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn op(&self) -> (String, String) {
        self.op.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default()
    }
}

/// An operation cut short (a drain, a lost lease) never tells of its tasks' ends: their
/// output is no longer followed when it is dropped.
impl<P> Drop for Published<'_, P> {
    fn drop(&mut self) {
        let in_flight: Vec<String> = self.lock_attempts().keys().cloned().collect();
        for task_id in in_flight {
            self.publisher.unfollow(&task_id);
        }
    }
}

impl<P: Progress> Progress for Published<'_, P> {
    fn event(&self, event: &Progressed<'_>) {
        self.publish(event);
        self.inner.event(event);
    }

    fn wants_output(&self) -> bool {
        self.inner.wants_output()
    }
}

impl<P> Published<'_, P> {
    fn publish(&self, event: &Progressed<'_>) {
        let bus = &self.publisher.bus;
        match event {
            Progressed::Planned { cluster, job_id, kind, .. } => {
                *self.op.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(((*cluster).to_owned(), (*job_id).to_owned()));
                bus.publish("op.started", &json!({"cluster": cluster, "jobId": job_id, "operation": kind.as_str()}));
            }
            Progressed::TaskStarted { key, task_id, task, attempt } => {
                let (cluster, job) = self.op();
                self.publisher.follow(task_id, Some(&cluster), Some(&job));
                self.lock_attempts().insert((*task_id).to_owned(), *attempt);
                let data = json!({"cluster": cluster, "jobId": job, "step": key.encode(), "node": key.node,
                                  "service": key.service, "action": task.as_str(), "taskId": task_id,
                                  "attempt": attempt});
                bus.publish("step.started", &data);
            }
            Progressed::TaskFinished { key, task_id, task, plugin, status, elapsed, retrying, .. } => {
                self.publisher.unfollow(task_id);
                let attempt = self.lock_attempts().remove(*task_id);
                let (cluster, job) = self.op();
                let outcome = match (status, retrying) {
                    (0, _) => "ok",
                    (_, true) => "retrying",
                    _ => "failed",
                };
                let data = json!({"cluster": cluster, "jobId": job, "step": key.encode(), "node": key.node,
                                  "service": key.service, "action": task.as_str(), "taskId": task_id,
                                  "attempt": attempt, "plugin": plugin, "status": status, "durationMs": millis(*elapsed),
                                  "outcome": outcome});
                bus.publish("step.finished", &data);
            }
            Progressed::Output { .. } => {}
            Progressed::Finished { outcome } => bus.publish("op.finished", &op_finished(outcome)),
        }
    }
}

fn op_finished(o: &Outcome) -> Value {
    let failed: Vec<&str> = o.failed.iter().map(|f| f.step.as_str()).collect();
    let mut summary = format!("{} of {} steps succeeded", o.succeeded, o.steps);
    if !o.ok() {
        summary.push_str(&format!(", {} failed, {} not run", o.failed.len(), o.not_run));
    }
    summary.push_str(&format!("; the cluster is {}", o.state.as_str()));
    json!({"cluster": o.cluster, "jobId": o.job_id, "operation": o.operation,
           "outcome": if o.ok() { "done" } else { "failed" }, "state": o.state.as_str(), "steps": o.steps,
           "succeeded": o.succeeded, "failed": o.failed.len(), "failedSteps": failed, "notRun": o.not_run,
           "summary": summary})
}

/// Publishes `plugin.state` on every phase change of a plugin's instance.
pub struct PluginStates(pub Arc<Bus>);

impl PhaseObserver for PluginStates {
    fn changed(&self, c: &PhaseChange<'_>) {
        let phase = c.phase.as_str();
        let mut data = json!({"plugin": c.plugin, "kind": c.kind.as_str(), "instance": c.instance, "phase": phase,
                              "pid": c.pid, "restarts": c.restarts});
        if let Phase::Failed { until, reason } = c.phase {
            // The text `/v1/plugins` shows as `lastError`: the supervisor's own words
            // and exit statuses, no task's data; bounded.
            data["reason"] = json!(crate::wire::redact::printable(&crate::wire::redact::bound(reason, 2048)));
            let retry_in = until.saturating_duration_since(Instant::now());
            let at = crate::journal::now_ms().saturating_add(i64::try_from(retry_in.as_millis()).unwrap_or(i64::MAX));
            data["retryAt"] = json!(crate::journal::rfc3339(at));
        }
        self.0.publish("plugin.state", &data);
    }
}
