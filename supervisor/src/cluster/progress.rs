//! Showing an operation as it runs: [`Bars`] on a terminal (indicatif: one bar per
//! phase, one line per node with its running task and that task's latest output line),
//! [`Lines`] elsewhere (one timestamped line per task start and end), [`Log`] in the
//! daemon (tracing events).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use loom_protocol::TaskName;

use super::outcome::Outcome;
use super::plan::{JobKind, Plan, StepKey};
use crate::journal::{now_ms, rfc3339};

/// Something that happened during an operation.
pub enum Event<'a> {
    /// The plan is made; nothing has run.
    Planned {
        /// The cluster.
        cluster: &'a str,
        /// The operation's id.
        job_id: &'a str,
        /// The operation.
        kind: JobKind,
        /// Its steps.
        plan: &'a Plan,
    },
    /// A task is about to be sent (it may wait for a plugin slot).
    TaskStarted {
        /// Its step.
        key: &'a StepKey,
        /// Its id.
        task_id: &'a str,
        /// The task (a retried CONFIRM also sends DELETE and CREATE).
        task: TaskName,
        /// 1, 2, ...
        attempt: u32,
    },
    /// Live output of a task.
    Output {
        /// The task.
        task_id: &'a str,
        /// What it printed.
        data: &'a str,
    },
    /// A task answered.
    TaskFinished {
        /// Its step.
        key: &'a StepKey,
        /// Its id.
        task_id: &'a str,
        /// The task.
        task: TaskName,
        /// The plugin it went to (as the daemon's metrics name it: `shell`, `local+shell`
        /// for a BOOTSTRAP, `none` when no plugin could take it).
        plugin: &'a str,
        /// Its status (0: success).
        status: i64,
        /// How long it ran.
        elapsed: Duration,
        /// Its stderr (credentials scrubbed).
        stderr: &'a str,
        /// It failed and its step is tried again.
        retrying: bool,
    },
    /// The operation ended.
    Finished {
        /// How.
        outcome: &'a Outcome,
    },
}

/// Receives an operation's events. Called from the operation's tasks: keep it quick.
pub trait Progress: Send + Sync {
    /// One event.
    fn event(&self, event: &Event<'_>);

    /// Whether [`Event::Output`] is wanted (watching output costs a little).
    fn wants_output(&self) -> bool {
        false
    }
}

/// Shows nothing.
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _: &Event<'_>) {}
}

/// "1.2 s", "2 min 5 s".
fn took(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 { format!("{s:.1} s") } else { format!("{} min {} s", d.as_secs() / 60, d.as_secs() % 60) }
}

fn what(key: &StepKey, task: TaskName) -> String {
    match &key.service {
        Some(s) => format!("{task} {s}"),
        None => task.to_string(),
    }
}

/// The last line of `text` that is not blank.
pub(super) fn last_line(text: &str) -> &str {
    text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("")
}

fn summary(o: &Outcome) -> String {
    let mut s = format!(
        "cluster {}: {} {}: {} of {} steps succeeded",
        o.cluster,
        o.operation,
        if o.ok() { "finished" } else { "failed" },
        o.succeeded,
        o.steps
    );
    if !o.ok() {
        s.push_str(&format!(", {} failed, {} not run; the cluster is {}", o.failed.len(), o.not_run, o.state.as_str()));
    } else {
        s.push_str(&format!("; the cluster is {}", o.state.as_str()));
    }
    s
}

/// One timestamped line per event, for logs and pipes.
pub struct Lines {
    out: Mutex<Box<dyn Write + Send>>,
}

impl Lines {
    /// Lines on stderr.
    pub fn stderr() -> Lines {
        Lines { out: Mutex::new(Box::new(std::io::stderr())) }
    }

    fn line(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(out, "{} {text}", rfc3339(now_ms()));
        let _ = out.flush();
    }
}

impl Progress for Lines {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::Planned { cluster, job_id, kind, plan } => {
                self.line(&format!("cluster {cluster}: {} ({job_id}): {} steps", kind.as_str(), plan.steps.len()));
            }
            Event::TaskStarted { key, task_id, task, attempt } => {
                let again = if *attempt > 1 { format!(", attempt {attempt}") } else { String::new() };
                self.line(&format!("{}: {} started ({task_id}{again})", key.node, what(key, *task)));
            }
            Event::TaskFinished { key, task, status, elapsed, stderr, retrying, .. } => {
                if *status == 0 {
                    self.line(&format!("{}: {} ok in {}", key.node, what(key, *task), took(*elapsed)));
                } else {
                    let next = if *retrying { "; trying again" } else { "" };
                    self.line(&format!(
                        "{}: {} FAILED with status {status} in {}{next}: {}",
                        key.node,
                        what(key, *task),
                        took(*elapsed),
                        last_line(stderr)
                    ));
                }
            }
            Event::Output { .. } => {}
            Event::Finished { outcome } => {
                self.line(&summary(outcome));
                for note in &outcome.notes {
                    self.line(&format!("note: {note}"));
                }
            }
        }
    }
}

/// tracing events, for the daemon.
pub struct Log;

impl Progress for Log {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::Planned { cluster, job_id, kind, plan } => {
                tracing::info!(cluster, job_id, "{} started: {} steps", kind.as_str(), plan.steps.len());
            }
            Event::TaskStarted { key, task_id, task, attempt } => {
                tracing::info!(node = %key.node, task_id, attempt, "{} started", what(key, *task));
            }
            Event::TaskFinished { key, task_id, task, status, elapsed, stderr, retrying, .. } => {
                if *status == 0 {
                    tracing::info!(node = %key.node, task_id, "{} ok in {}", what(key, *task), took(*elapsed));
                } else {
                    tracing::warn!(node = %key.node, task_id, status, retrying, "{} failed: {}", what(key, *task), last_line(stderr));
                }
            }
            Event::Output { .. } => {}
            Event::Finished { outcome } => {
                if outcome.ok() {
                    tracing::info!("{}", summary(outcome));
                } else {
                    tracing::warn!("{}", summary(outcome));
                }
                for note in &outcome.notes {
                    tracing::info!(cluster = %outcome.cluster, "note: {note}");
                }
            }
        }
    }
}

/// Progress bars on a terminal.
pub struct Bars {
    multi: MultiProgress,
    state: Mutex<BarsState>,
}

#[derive(Default)]
struct BarsState {
    overall: Option<ProgressBar>,
    phases: BTreeMap<TaskName, ProgressBar>,
    nodes: HashMap<String, NodeLine>,
    /// Running task id -> its node.
    running: HashMap<String, String>,
}

struct NodeLine {
    bar: ProgressBar,
    left: usize,
    doing: String,
}

impl Bars {
    /// Bars on stderr; the log is routed through them so lines do not tear the bars.
    pub fn stderr() -> Arc<Bars> {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let for_log = multi.clone();
        let bars = Arc::new(Bars { multi, state: Mutex::new(BarsState::default()) });
        crate::log::route_stderr(Some(Arc::new(move |bytes: &[u8]| {
            for_log.suspend(|| {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(bytes);
                let _ = err.flush();
            });
        })));
        bars
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BarsState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn plan(&self, cluster: &str, kind: JobKind, plan: &Plan) {
        let mut st = self.lock();
        let bar_style = ProgressStyle::with_template("{prefix:<12} [{bar:30.cyan/blue}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let overall = self.multi.add(ProgressBar::new(plan.steps.len() as u64));
        overall.set_style(
            ProgressStyle::with_template("{prefix:.bold} [{elapsed_precise}] {pos}/{len} steps {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        overall.set_prefix(format!("cluster {cluster} {}", kind.as_str()));
        overall.enable_steady_tick(Duration::from_millis(250));
        st.overall = Some(overall);
        let mut per_phase: BTreeMap<TaskName, u64> = BTreeMap::new();
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for s in &plan.steps {
            *per_phase.entry(s.key.task).or_default() += 1;
            *per_node.entry(s.key.node.clone()).or_default() += 1;
        }
        let order = |t: &TaskName| TaskName::ALL.iter().position(|x| x == t);
        let mut phases: Vec<_> = per_phase.into_iter().collect();
        phases.sort_by_key(|(t, _)| order(t));
        for (task, n) in phases {
            let bar = self.multi.add(ProgressBar::new(n));
            bar.set_style(bar_style.clone());
            bar.set_prefix(task.as_str());
            st.phases.insert(task, bar);
        }
        let node_style = ProgressStyle::with_template("  {spinner} {prefix:<24} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        for (node, left) in per_node {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(node_style.clone());
            bar.set_prefix(node.clone());
            bar.set_message("waiting");
            bar.enable_steady_tick(Duration::from_millis(120));
            st.nodes.insert(node, NodeLine { bar, left, doing: String::new() });
        }
    }
}

impl Progress for Bars {
    fn wants_output(&self) -> bool {
        true
    }

    fn event(&self, event: &Event<'_>) {
        match event {
            Event::Planned { cluster, kind, plan, .. } => self.plan(cluster, *kind, plan),
            Event::TaskStarted { key, task_id, task, attempt } => {
                let mut st = self.lock();
                st.running.insert((*task_id).to_owned(), key.node.clone());
                if let Some(line) = st.nodes.get_mut(&key.node) {
                    let again = if *attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
                    line.doing = format!("{}{again}", what(key, *task));
                    line.bar.set_message(line.doing.clone());
                }
            }
            Event::Output { task_id, data } => {
                let st = self.lock();
                let text = last_line(data);
                if let Some(line) = st.running.get(*task_id).and_then(|n| st.nodes.get(n))
                    && !text.is_empty()
                {
                    let text: String = text.chars().take(200).collect();
                    line.bar.set_message(format!("{} | {text}", line.doing));
                }
            }
            Event::TaskFinished { key, task_id, task, status, stderr, retrying, .. } => {
                let mut st = self.lock();
                st.running.remove(*task_id);
                if *status != 0 {
                    let next = if *retrying { "trying again" } else { "failed" };
                    let text = format!("{} {}: {} ({next})", key.node, what(key, *task), last_line(stderr));
                    let _ = self.multi.println(text);
                    return;
                }
                if *task != key.task {
                    return;
                }
                if let Some(bar) = st.phases.get(&key.task) {
                    bar.inc(1);
                }
                if let Some(bar) = &st.overall {
                    bar.inc(1);
                }
                if let Some(line) = st.nodes.get_mut(&key.node) {
                    line.left = line.left.saturating_sub(1);
                    if line.left == 0 {
                        line.bar.finish_with_message("done");
                    } else {
                        line.bar.set_message(format!("{} done", what(key, *task)));
                    }
                }
            }
            Event::Finished { outcome } => {
                let st = self.lock();
                for line in st.nodes.values().filter(|l| !l.bar.is_finished()) {
                    line.bar.abandon_with_message(if outcome.ok() { "done" } else { "stopped" });
                }
                for bar in st.phases.values() {
                    bar.abandon();
                }
                if let Some(bar) = &st.overall {
                    bar.abandon_with_message(summary(outcome));
                }
                for note in &outcome.notes {
                    let _ = self.multi.println(format!("note: {note}"));
                }
            }
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        // Lines queued while the bars were up are printed above them, not after.
        crate::log::pump::flush(std::time::Duration::from_secs(2));
        crate::log::route_stderr(None);
    }
}
