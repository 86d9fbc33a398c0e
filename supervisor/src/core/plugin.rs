//! One registered plugin: its instances, started and stopped here and supervised by
//! [`crate::core::instance`], its slots ([`crate::core::pool`]), and what happens to a
//! task between its slot and its result: the declared-task check, the call, its
//! timeout (`cancel`, a grace period, then the process is killed), and the answer turned
//! into a [`TaskResult`].
//!
//! Tasks come here through [`crate::core::supervisor::Supervisor::reserve`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use loom_protocol::{LogLevel, PluginKind, TaskName, TaskResult};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::core::instance::{self, Control};
use crate::core::manifest::PluginSpec;
use crate::core::pool::{InstanceStatus, Lease, Phase, Pool};
use crate::log::secs;
use crate::wire::capture::{CapturedOutput, OUTPUT_TAIL_BYTES, keep_tail};
use crate::wire::connection::{Call, Connection, Outcome, Reply};
use crate::wire::envelope::TaskEnvelope;
use crate::wire::redact;

/// How long to wait for a killed process's calls to be failed, after a task timed out.
const KILL_SETTLE: Duration = Duration::from_secs(30);

/// A plugin and its instances.
pub struct Plugin {
    spec: Arc<PluginSpec>,
    log_level: LogLevel,
    pool: Arc<Pool>,
    runtime: Mutex<Runtime>,
    /// Tasks holding a [`Busy`] mark: reserved, waiting or running.
    active: AtomicUsize,
    /// Signalled when `active` drops to 0.
    idle: Notify,
}

#[derive(Default)]
struct Runtime {
    controls: Vec<mpsc::UnboundedSender<Control>>,
    loops: Vec<JoinHandle<()>>,
}

/// Marks a task as the plugin's while it lives, so that a retiring plugin waits for it
/// (also when the task's future is dropped: the mark goes with it).
pub(crate) struct Busy(Arc<Plugin>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Plugin {
    /// A plugin whose instances are not started yet; see [`Plugin::start`].
    pub fn new(spec: Arc<PluginSpec>, log_level: LogLevel) -> Arc<Plugin> {
        Arc::new(Plugin {
            pool: Pool::new(spec.instances, spec.queue_capacity, spec.queue_timeout),
            spec,
            log_level,
            runtime: Mutex::new(Runtime::default()),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    /// Tells `observer` of every phase change of this plugin's instances from now on
    /// (call before [`Plugin::start`] to see the first `starting`).
    pub fn observe(&self, observer: &Arc<dyn crate::core::pool::PhaseObserver>) {
        self.pool.observe(Arc::clone(observer), self.name(), self.kind());
    }

    /// The manifest this plugin runs from.
    pub fn spec(&self) -> &Arc<PluginSpec> {
        &self.spec
    }

    /// The name tasks are routed by.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Provider or automator.
    pub fn kind(&self) -> PluginKind {
        self.spec.kind
    }

    /// Starts the instances, if not started already. Needs a tokio runtime.
    pub fn start(&self) {
        let mut rt = self.runtime();
        if !rt.loops.is_empty() || self.pool.is_closed() {
            return;
        }
        for slot in 0..self.spec.instances {
            let (tx, rx) = mpsc::unbounded_channel();
            rt.controls.push(tx);
            let run = instance::supervise(Arc::clone(&self.pool), Arc::clone(&self.spec), self.log_level, slot, rx);
            rt.loops.push(tokio::spawn(run));
        }
    }

    /// Stops every instance gracefully (shutdown request, stdin EOF, SIGTERM, SIGKILL)
    /// and waits until they are gone. Waiting tasks fail; tasks in flight fail once their
    /// process is stopped.
    pub async fn stop(&self) {
        self.pool.close();
        let loops = {
            let mut rt = self.runtime();
            for c in &rt.controls {
                let _ = c.send(Control::Stop);
            }
            std::mem::take(&mut rt.loops)
        };
        for l in loops {
            let _ = l.await;
        }
    }

    /// Takes the plugin out of service without dropping a task: waits until every task
    /// already handed to it has finished (those still queued included), at most `grace`,
    /// then stops it. Tasks left after `grace` fail with "the plugin is shutting down".
    /// The caller makes sure no new task reaches it (a reload swaps it out first).
    pub async fn retire(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.idle.notified();
            if self.active() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!(plugin = %self.spec.name, "{} tasks still running after {}; stopping anyway", self.active(), secs(grace));
                break;
            }
        }
        self.stop().await;
    }

    /// Tasks handed to the plugin and not finished.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Whether the plugin's last handshake declared `task` safe to run twice.
    pub fn is_idempotent(&self, task: TaskName) -> bool {
        self.pool.is_idempotent(task)
    }

    /// Asks every instance to stop and start again (not counted as a crash).
    pub fn restart(&self) {
        for c in &self.runtime().controls {
            let _ = c.send(Control::Restart);
        }
    }

    /// Waits until no instance is starting or restarting: each is ready, failed or stopped.
    pub async fn wait_settled(&self) {
        self.wait_for(|instances| {
            instances.iter().all(|s| matches!(s.phase, Phase::Ready | Phase::Failed { .. } | Phase::Stopped))
        })
        .await;
    }

    /// Waits until `condition` holds for the instances' status, checking after every
    /// phase change.
    pub async fn wait_for(&self, condition: impl Fn(&[InstanceStatus]) -> bool) {
        self.pool.wait_for(condition).await;
    }

    /// A snapshot of each instance.
    pub fn status(&self) -> Vec<InstanceStatus> {
        self.pool.status()
    }

    /// Tasks waiting for a slot.
    pub fn queued(&self) -> usize {
        self.pool.queued()
    }

    /// Marks a task as this plugin's until the mark is dropped ([`Plugin::retire`] waits
    /// for it).
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::SeqCst);
        Busy(Arc::clone(self))
    }

    /// Starts the plugin if need be and takes a slot, waiting in its queue if none is free.
    ///
    /// # Errors
    /// A failed result naming the plugin and the task, when the plugin is stopping or
    /// every instance is failed.
    ///
    /// # Cancellation
    /// Dropping the future leaves the queue.
    pub(crate) async fn acquire(self: &Arc<Self>, task: &TaskEnvelope) -> Result<Lease, TaskResult> {
        self.start();
        self.pool.acquire().await.map_err(|why| self.failure(task, &why.to_string(), None))
    }

    /// Sends `task` on the slot `lease` holds and returns its result. Never fails: every
    /// way a task can go wrong (undeclared task, crash, hang, nonsense answer) becomes a
    /// result with a non-zero status and the cause in `stderr`, naming the plugin and the
    /// task. The result is scrubbed of every credential the process knows, except under
    /// `result` ([`redact::scrub_result`]).
    ///
    /// # Cancellation
    /// Dropping the future before the answer sends `cancel` for the task; its slot stays
    /// taken until the plugin answers it or the process ends.
    pub(crate) async fn send(self: &Arc<Self>, lease: Lease, task: &TaskEnvelope) -> TaskResult {
        let mut lease = lease;
        let mut sent = 0;
        loop {
            let reply = match self.send_once(lease, task).await {
                Sent::Answered(result) => return self.with_attempts(result, sent + 1),
                Sent::Ended(reply) => reply,
            };
            let (conn, reply) = reply;
            let again = match &reply.outcome {
                // The process was gone before the task could be written: it never ran.
                Outcome::NotSent(_) => true,
                // It was on a process that ended: again only if running it twice is safe.
                Outcome::Lost(why) if sent < self.spec.retry_on_crash && self.is_idempotent(task.task_name) => {
                    sent += 1;
                    tracing::warn!(plugin = %self.spec.name, task_id = %task.task_id,
                        "task {} was on a process that ended ({}); {} declares it idempotent: sending it again (attempt {})",
                        task.task_name, conn.redactor().scrub(why), self.spec.name, sent + 1);
                    true
                }
                _ => false,
            };
            if !again {
                let mut result = self.result_of(task, &conn, reply);
                redact::scrub_result(&mut result, conn.redactor().as_ref());
                return self.with_attempts(result, sent + 1);
            }
            lease = match self.acquire(task).await {
                Ok(next) => next,
                // No process to send it to (stopping, failed): a task that never reached
                // the last one fails with why none takes it, one that ran with why the
                // last one ended.
                Err(refused) if matches!(reply.outcome, Outcome::NotSent(_)) => {
                    return self.with_attempts(refused, sent + 1);
                }
                Err(_) => {
                    let mut result = self.result_of(task, &conn, reply);
                    redact::scrub_result(&mut result, conn.redactor().as_ref());
                    return self.with_attempts(result, sent + 1);
                }
            };
        }
    }

    /// Sends the task once on `lease`'s process: its result, or the reply of a call the
    /// process's end cut short (for [`Plugin::send`] to decide whether to send it again).
    async fn send_once(&self, lease: Lease, task: &TaskEnvelope) -> Sent {
        if !lease.declared().contains(&task.task_name) {
            let declared: Vec<&str> = lease.declared().iter().map(|t| t.as_str()).collect();
            let why = format!(
                "the plugin does not handle {} (its handshake declared: {})",
                task.task_name,
                declared.join(", ")
            );
            return Sent::Answered(self.failure(task, &why, None));
        }
        let (slot, generation, conn) = (lease.slot(), lease.generation(), Arc::clone(lease.connection()));
        let timeout = self.spec.timeouts.get(task.task_name);
        let mut call = conn.request_task(task, Box::new(lease));
        let mut result = match tokio::time::timeout(timeout, call.wait()).await {
            Ok(reply) if matches!(reply.outcome, Outcome::Lost(_) | Outcome::NotSent(_)) => {
                return Sent::Ended((conn, reply));
            }
            Ok(reply) => self.result_of(task, &conn, reply),
            Err(_) => self.time_out(task, &mut call, timeout, slot, generation).await,
        };
        // With every value this process knows: its other tasks' too, should it mix them up.
        redact::scrub_result(&mut result, conn.redactor().as_ref());
        Sent::Answered(result)
    }

    /// A result sent more than once says so: `attempts` beside `status`, and a line in
    /// `stderr`.
    fn with_attempts(&self, mut result: TaskResult, attempts: u32) -> TaskResult {
        if attempts > 1 {
            result.extra.insert("attempts".into(), attempts.into());
            let note = format!(
                "{} {:?}: sent {attempts} times: the process running it ended, and the plugin declares the task idempotent",
                self.spec.kind, self.spec.name
            );
            result.stderr = join_lines(&result.stderr, &note);
        }
        result
    }

    /// [`Plugin::acquire`] and [`Plugin::send`] in one, for a task with nothing to do in
    /// between (the automators after the first of a BOOTSTRAP).
    pub(crate) async fn run(self: &Arc<Self>, task: &TaskEnvelope) -> TaskResult {
        let _busy = self.busy();
        match self.acquire(task).await {
            Ok(lease) => self.send(lease, task).await,
            Err(failed) => failed,
        }
    }

    /// The task was not sent because of `why` (its slot is given back): a failed result
    /// naming the plugin and the task.
    pub(crate) fn unsent(&self, task: &TaskEnvelope, why: &str) -> TaskResult {
        self.failure(task, &format!("the task was not sent: {why}"), None)
    }

    /// A task ran past its timeout: `cancel`, a grace period, then kill the process.
    async fn time_out(
        &self,
        task: &TaskEnvelope,
        call: &mut Call,
        timeout: Duration,
        slot: usize,
        generation: u64,
    ) -> TaskResult {
        let conn = Arc::clone(call.connection());
        let grace = self.spec.cancel_grace;
        tracing::warn!(plugin = %self.spec.name, pid = conn.pid(), task_id = %task.task_id,
            "task {} timed out after {}; sent cancel, waiting {} for its answer", task.task_name, secs(timeout), secs(grace));
        conn.cancel(&task.task_id);
        let timed_out = format!("timed out after {}", secs(timeout));
        if let Ok(reply) = tokio::time::timeout(grace, call.wait()).await {
            let mut result = self.result_of(task, &conn, reply);
            let cancelled = crate::wire::answer::is_cancelled(&result);
            if result.status == 0 {
                result.status = 1;
            }
            // A plugin that says `"cancelled": true` is reported as cancelled, not failed.
            let (outcome, note) = if cancelled {
                ("cancelled", "cancelled: the plugin stopped it when asked")
            } else {
                ("failed", "it stopped when cancelled")
            };
            tracing::info!(plugin = %self.spec.name, pid = conn.pid(), task_id = %task.task_id,
                "task {} {outcome} after its timeout (status {})", task.task_name, result.status);
            let note = format!("{}: {timed_out}; {note}", self.context(task));
            result.stderr = join_lines(&result.stderr, &note);
            return result;
        }
        let why = format!(
            "task {} ({}) {timed_out} and did not stop within {} of its cancel",
            task.task_id,
            task.task_name,
            secs(grace)
        );
        self.control(slot, Control::Kill { generation, reason: why });
        let output = match tokio::time::timeout(KILL_SETTLE, call.wait()).await {
            Ok(reply) => reply.output,
            Err(_) => None,
        };
        let why = format!(
            "{timed_out}; it did not stop within {} of its cancel, so the plugin process was killed and restarted",
            secs(grace)
        );
        self.failure(task, &why, output)
    }

    /// Turns the plugin's answer into a task result, its `stdout` and `stderr` cut to
    /// their last [`OUTPUT_TAIL_BYTES`] each (an answer may be 16 MiB long, and results
    /// go to the journal, the API and the log).
    fn result_of(&self, task: &TaskEnvelope, conn: &Connection, reply: Reply) -> TaskResult {
        let mut result = self.read_answer(task, conn, reply);
        keep_tail(&mut result.stdout, OUTPUT_TAIL_BYTES);
        keep_tail(&mut result.stderr, OUTPUT_TAIL_BYTES);
        result
    }

    fn read_answer(&self, task: &TaskEnvelope, conn: &Connection, reply: Reply) -> TaskResult {
        match reply.outcome {
            Outcome::Result(raw) => match crate::wire::answer::read(raw.get()) {
                Ok(mut result) => {
                    if let Some(out) = reply.output {
                        fold_output(&mut result, out);
                    }
                    result
                }
                Err(why) => self.failure(task, &why.to_string(), reply.output),
            },
            Outcome::Error(e) => {
                let message = conn.redactor().scrub(&e.message);
                self.failure(task, &format!("the plugin answered with error {}: {message}", e.code), reply.output)
            }
            Outcome::Lost(why) | Outcome::NotSent(why) | Outcome::Unreadable(why) => {
                self.failure(task, &why, reply.output)
            }
        }
    }

    /// A failed result whose stderr names the plugin, the task and the cause, after any
    /// output the task streamed.
    fn failure(&self, task: &TaskEnvelope, cause: &str, output: Option<CapturedOutput>) -> TaskResult {
        let mut result = TaskResult::failed(format!("{}: {cause}", self.context(task)));
        if let Some(out) = output {
            let stderr = std::mem::take(&mut result.stderr);
            fold_output(&mut result, out);
            result.stderr = join_lines(&result.stderr, &stderr);
        }
        result
    }

    fn context(&self, task: &TaskEnvelope) -> String {
        format!("{} {:?}, task {} ({})", self.spec.kind, self.spec.name, task.task_id, task.task_name)
    }

    fn control(&self, slot: usize, msg: Control) {
        let rt = self.runtime();
        if let Some(c) = rt.controls.get(slot) {
            let _ = c.send(msg);
        }
    }

    fn runtime(&self) -> MutexGuard<'_, Runtime> {
        // Only handles are kept there; a panic elsewhere cannot leave it inconsistent.
        self.runtime.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How one send of a task ended.
enum Sent {
    /// With a result (answered, refused, timed out).
    Answered(TaskResult),
    /// The process ended first, or before it could be written to: the connection and the
    /// reply, to be sent again or turned into a result.
    Ended((Arc<Connection>, Reply)),
}

/// Live output fills `stdout`/`stderr` where the plugin's answer left them empty.
fn fold_output(result: &mut TaskResult, output: CapturedOutput) {
    if result.stdout.is_empty() && !output.stdout.is_empty() {
        result.stdout = output.stdout.into_string();
    }
    if result.stderr.is_empty() && !output.stderr.is_empty() {
        result.stderr = output.stderr.into_string();
    }
}

fn join_lines(first: &str, second: &str) -> String {
    match (first.is_empty(), first.ends_with('\n')) {
        (true, _) => second.to_owned(),
        (false, true) => format!("{first}{second}"),
        (false, false) => format!("{first}\n{second}"),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::pin::pin;

    use loom_protocol::PluginKind::Automator;
    use serde_json::{Value, json};

    use super::*;
    use crate::core::testing::{Plugins, action, poll_once, started, within_a_minute};

    #[tokio::test]
    async fn a_task_past_its_timeout_gets_cancel_and_its_answer_is_kept_with_a_note() {
        let plugins = Plugins::new();
        plugins.add(Automator, "a", json!({"timeouts": {"INSTALL": 1}, "cancelGraceSecs": 60}));
        let sup = plugins.supervisor();
        let r = sup.run(&action("t1", "INSTALL", "a", json!({"action": "hang", "honorCancel": true}))).await;
        assert_eq!(r.status, 2, "the plugin's own status: {r:?}");
        let note = "automator \"a\", task t1 (INSTALL): timed out after 1 s; it stopped when cancelled";
        assert_eq!(r.stderr, format!("cancelled as asked\n{note}"));
        let plugin = sup.plugin(Automator, "a").expect("plugin a");
        assert_eq!(plugin.status()[0].restarts, 0, "the process was not killed");
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn a_task_the_plugin_says_it_cancelled_is_reported_as_cancelled_with_its_flag() {
        let plugins = Plugins::new();
        plugins.add(Automator, "a", json!({"timeouts": {"INSTALL": 1}, "cancelGraceSecs": 60}));
        let sup = plugins.supervisor();
        let test = json!({"action": "hang", "honorCancel": true, "sayCancelled": true});
        let r = sup.run(&action("t1", "INSTALL", "a", test)).await;
        assert_eq!(r.status, 2, "the plugin's own status: {r:?}");
        assert_eq!(r.extra.get("cancelled"), Some(&Value::Bool(true)), "the flag is passed on: {r:?}");
        let note =
            "automator \"a\", task t1 (INSTALL): timed out after 1 s; cancelled: the plugin stopped it when asked";
        assert_eq!(r.stderr, format!("cancelled as asked\n{note}"));
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn the_stdout_and_stderr_of_an_answer_are_cut_to_their_last_64_kib() {
        let plugins = Plugins::new();
        plugins.add(Automator, "a", json!({}));
        let sup = plugins.supervisor();
        let (out, err) = (format!("{}END-OUT", "o".repeat(200_000)), format!("{}END-ERR", "e".repeat(100_000)));
        let r = sup.run(&action("t1", "INSTALL", "a", json!({"stdout": out, "stderr": err}))).await;
        assert_eq!(r.status, 0, "{}", r.stderr.len());
        let cut = OUTPUT_TAIL_BYTES;
        let note = |n: usize| format!("[... {} earlier bytes not kept ...]\n", n - cut);
        assert_eq!(r.stdout, format!("{}{}END-OUT", note(out.len()), "o".repeat(cut - 7)));
        assert_eq!(r.stderr, format!("{}{}END-ERR", note(err.len()), "e".repeat(cut - 7)));
        let small = sup.run(&action("t2", "INSTALL", "a", json!({"stdout": "short"}))).await;
        assert_eq!(small.stdout, "short", "within the limit, kept whole");
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn a_task_that_ignores_its_cancel_gets_its_process_killed_and_restarted() {
        let plugins = Plugins::new();
        plugins.add(Automator, "a", json!({"timeouts": {"INSTALL": 1}, "cancelGraceSecs": 1}));
        let sup = plugins.supervisor();
        let first = sup.run(&action("t1", "START", "a", json!({}))).await;
        let r = sup.run(&action("t2", "INSTALL", "a", json!({"action": "hang"}))).await;
        assert_eq!(r.status, 1);
        let why = "automator \"a\", task t2 (INSTALL): timed out after 1 s; it did not stop within 1 s of its cancel, \
                   so the plugin process was killed and restarted";
        assert_eq!(r.stderr, why);
        let next = within_a_minute("the restarted process", sup.run(&action("t3", "START", "a", json!({})))).await;
        assert_eq!(next.status, 0, "{next:?}");
        assert_ne!(next.result["pid"], first.result["pid"], "a new process");
        let status = &sup.plugin(Automator, "a").expect("plugin a").status()[0];
        assert_eq!(status.restarts, 1);
        let killed = "was killed: task t2 (INSTALL) timed out after 1 s and did not stop within 1 s of its cancel";
        assert!(status.last_error.as_deref().is_some_and(|e| e.contains(killed)), "{status:?}");
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn retiring_waits_for_the_task_it_was_given_then_stops() {
        let plugins = Plugins::new();
        plugins.add(Automator, "a", json!({}));
        let sup = plugins.supervisor();
        // Long enough that a plugin stopped at once would fail it ("was stopped").
        let t1 = action("t1", "INSTALL", "a", json!({"action": "sleep", "ms": 1500}));
        let permit = sup.reserve(&t1).await.expect("a slot");
        let plugin = sup.plugin(Automator, "a").expect("plugin a");
        assert_eq!(plugin.active(), 1, "the permit's task is the plugin's");
        let answered = Cell::new(false);
        let send = async {
            let r = permit.send().await;
            answered.set(true);
            r
        };
        let retire = async {
            plugin.retire(Duration::from_secs(60)).await;
            answered.get()
        };
        let (r, answered_first) = tokio::join!(send, retire);
        assert_eq!(r.status, 0, "{r:?}");
        assert!(answered_first, "retire returned before the task was answered");
        assert_eq!(plugin.status()[0].phase, crate::core::pool::Phase::Stopped);
        let late = sup.run(&action("t2", "INSTALL", "a", json!({}))).await;
        assert_eq!(late.stderr, "automator \"a\", task t2 (INSTALL): the plugin is shutting down");
    }

    #[tokio::test]
    async fn stopping_fails_the_tasks_waiting_for_a_slot_and_those_that_come_later() {
        let plugins = Plugins::new();
        plugins.add(Automator, "a", json!({}));
        let sup = plugins.supervisor();
        let tasks = ["t1", "t2", "t3"].map(|id| action(id, "INSTALL", "a", json!({})));
        let held = sup.reserve(&tasks[0]).await.expect("a slot");
        let mut waiting = pin!(sup.reserve(&tasks[1]));
        assert!(poll_once(waiting.as_mut()).is_none(), "one slot: the second waits");
        let plugin = sup.plugin(Automator, "a").expect("plugin a");
        plugin.stop().await;
        let Some(Err(refused)) = poll_once(waiting.as_mut()) else { panic!("the waiting task was not failed") };
        assert_eq!(refused.route(), "a");
        let shutting_down = |id| format!("automator \"a\", task {id} (INSTALL): the plugin is shutting down");
        assert_eq!(refused.into_result().stderr, shutting_down("t2"));
        let Err(later) = sup.reserve(&tasks[2]).await else { panic!("a stopped plugin took a task") };
        assert_eq!(later.into_result().stderr, shutting_down("t3"));
        // The permit taken before the stop: its task fails at once, never sent, its process
        // being gone and no other coming.
        let r = held.send().await;
        assert_eq!(r.status, 1);
        assert_eq!(r.stderr, shutting_down("t1"));
    }

    #[tokio::test]
    async fn an_idempotent_task_on_a_process_that_crashed_is_sent_again_once() {
        let plugins = Plugins::new();
        let marker = plugins.file("crashed-once");
        plugins.add(Automator, "a", json!({"settings": {"idempotentTasks": ["INSTALL"]}}));
        let sup = plugins.supervisor();
        let once = json!({"action": "crash-once", "marker": marker});
        let r = within_a_minute("the retried task", sup.run(&action("t1", "INSTALL", "a", once))).await;
        assert_eq!(r.status, 0, "answered by the next process: {r:?}");
        assert_eq!(r.extra.get("attempts"), Some(&json!(2)));
        assert!(r.stderr.contains("automator \"a\": sent 2 times: the process running it ended"), "{}", r.stderr);
        assert_eq!(sup.plugin(Automator, "a").expect("plugin a").status()[0].restarts, 1);

        // Once by default: a task that crashes every process it reaches fails after two.
        let always = sup.run(&action("t2", "INSTALL", "a", json!({"action": "crash"}))).await;
        assert_eq!(always.status, 1);
        assert_eq!(always.extra.get("attempts"), Some(&json!(2)));
        assert!(always.stderr.contains("about to crash: boom"), "{}", always.stderr);
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn a_task_not_declared_idempotent_is_not_sent_again() {
        let plugins = Plugins::new();
        let marker = plugins.file("crashed-once");
        let runlog = plugins.file("runlog");
        plugins.add(
            Automator,
            "a",
            json!({"env": {"TESTPLUGIN_RUNLOG": runlog}, "settings": {"idempotentTasks": ["START"]}}),
        );
        let sup = plugins.supervisor();
        let once = json!({"action": "crash-once", "marker": marker});
        let r = sup.run(&action("t1", "INSTALL", "a", once)).await;
        assert_eq!(r.status, 1, "{r:?}");
        assert!(r.stderr.contains("crashing once as asked") && r.extra.get("attempts").is_none(), "{r:?}");
        assert_eq!(crate::core::testing::started(&runlog).len(), 1, "sent once");
        sup.shutdown().await;
    }

    /// A task sent to a process, with its first task's answer, its run log and its
    /// plugin's status after the second: for the tests of tasks that never reached a process.
    async fn second_task_after(first: Value) -> (TaskResult, TaskResult, Vec<String>, Option<String>) {
        let plugins = Plugins::new();
        let runlog = plugins.file("runlog");
        // No pings: nothing but the second task is written to the process after the first.
        plugins.add(Automator, "a", json!({"env": {"TESTPLUGIN_RUNLOG": runlog}, "pingIntervalSecs": 0}));
        let sup = plugins.supervisor();
        let r1 = within_a_minute("the first task", sup.run(&action("t1", "START", "a", first))).await;
        let r2 = within_a_minute("the second task", sup.run(&action("t2", "INSTALL", "a", json!({})))).await;
        let last_error = sup.plugin(Automator, "a").expect("plugin a").status()[0].last_error.clone();
        sup.shutdown().await;
        (r1, r2, started(&runlog), last_error)
    }

    #[tokio::test]
    async fn a_task_whose_write_fails_goes_to_the_next_process_and_is_not_counted_as_sent() {
        // The first task's process closes its stdin: the second task's line fails (EPIPE).
        let (r1, r2, started, last_error) = second_task_after(json!({"action": "close-stdin"})).await;
        assert_eq!(r1.status, 0, "{r1:?}");
        assert!(last_error.as_deref().is_some_and(|e| e.contains("stopped reading its stdin")), "{last_error:?}");
        assert_eq!(r2.status, 0, "the plugin never saw it: sent to the next process: {r2:?}");
        assert_ne!(r2.result["pid"], r1.result["pid"], "answered by the next process");
        assert!(r2.extra.get("attempts").is_none() && r2.stderr.is_empty(), "one attempt: {r2:?}");
        assert_eq!(started, ["t1", "t2"], "each started once");
    }

    #[tokio::test]
    async fn a_task_left_unread_in_the_pipe_of_a_process_that_died_goes_to_the_next_process() {
        // The first task's process reads no more, and exits once the second task's line is
        // in its stdin, whole and unread.
        let (r1, r2, started, last_error) = second_task_after(json!({"action": "stop-reading"})).await;
        assert_eq!(r1.status, 0, "{r1:?}");
        assert!(last_error.as_deref().is_some_and(|e| e.contains("exited with code 3")), "{last_error:?}");
        assert_eq!(r2.status, 0, "the plugin never read it: sent to the next process: {r2:?}");
        assert_ne!(r2.result["pid"], r1.result["pid"], "answered by the next process");
        assert!(r2.extra.get("attempts").is_none() && r2.stderr.is_empty(), "one attempt: {r2:?}");
        assert_eq!(started, ["t1", "t2"], "each started once");
    }

    #[tokio::test]
    async fn retry_on_crash_zero_turns_the_retry_off() {
        let plugins = Plugins::new();
        let marker = plugins.file("crashed-once");
        plugins.add(Automator, "a", json!({"retryOnCrash": 0, "settings": {"idempotentTasks": ["INSTALL"]}}));
        let sup = plugins.supervisor();
        let r = sup.run(&action("t1", "INSTALL", "a", json!({"action": "crash-once", "marker": marker}))).await;
        assert_eq!(r.status, 1, "{r:?}");
        sup.shutdown().await;
    }
}
