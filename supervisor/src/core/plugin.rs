//! One registered plugin: its processes ("instances"), the queue of tasks waiting for a
//! free slot, and the path of a task from submission to answer ([`Plugin::run_task`]).
//!
//! Each instance has `maxConcurrency` slots. A task takes a slot ([`Lease`]), goes out on
//! that instance's connection, and gives the slot back when the call ends, however it
//! ends. When no slot is free, the task waits in a FIFO queue of bounded length; when the
//! queue is full, submitters wait for room (back-pressure, not rejection). When every
//! instance is failed (too many crashes), tasks fail at once with the reason.
//!
//! The instances themselves (spawn, handshake, crash, restart) live in [`crate::core::instance`];
//! they report their phase changes here.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loom_protocol::{LogLevel, PluginKind, TaskName, TaskResult};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::core::instance::{self, Control};
use crate::core::manifest::PluginSpec;
use crate::wire::capture::CapturedOutput;
use crate::wire::connection::{Call, Connection, Outcome, Reply};
use crate::wire::envelope::TaskEnvelope;
use crate::wire::redact;

/// How long to wait for a killed process's calls to be failed, after a task timed out.
const KILL_SETTLE: Duration = Duration::from_secs(30);

/// A plugin and its instances.
pub struct Plugin {
    spec: Arc<PluginSpec>,
    log_level: LogLevel,
    state: Mutex<PoolState>,
    /// Room in the queue; a waiting task holds a permit.
    queue_room: Semaphore,
    /// Bumped on every phase change, for [`Plugin::wait_settled`].
    changes: watch::Sender<u64>,
    runtime: Mutex<Runtime>,
    /// Tasks inside [`Plugin::run_task`] (waiting or running).
    active: std::sync::atomic::AtomicUsize,
    /// Signalled when `active` drops to 0.
    idle: tokio::sync::Notify,
    /// What the last handshake declared safe to run twice.
    idempotent: Mutex<Vec<TaskName>>,
}

#[derive(Default)]
struct Runtime {
    controls: Vec<mpsc::UnboundedSender<Control>>,
    supervisors: Vec<JoinHandle<()>>,
}

struct PoolState {
    slots: Vec<Slot>,
    waiters: VecDeque<oneshot::Sender<Result<Lease, String>>>,
    stopping: bool,
}

struct Slot {
    phase: Phase,
    /// Changes whenever the instance's process changes, so a stale lease or kill request
    /// for an old process is recognised and ignored.
    generation: u64,
    conn: Option<Arc<Connection>>,
    declared: Arc<[TaskName]>,
    free: usize,
    capacity: usize,
    pid: Option<u32>,
    restarts: u64,
    last_error: Option<String>,
}

/// The phase of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not started yet (plugins start on first use unless started eagerly).
    NotStarted,
    /// Spawning, or waiting for the handshake.
    Starting,
    /// Serving tasks.
    Ready,
    /// Crashed; restarting (possibly after a backoff delay).
    Restarting,
    /// Crashed too often; tasks fail fast until `until`.
    Failed {
        /// When it will be tried again.
        until: Instant,
        /// Why, for the tasks that are refused meanwhile.
        reason: String,
    },
    /// Being stopped.
    Stopping,
    /// Stopped for good.
    Stopped,
}

/// A snapshot of one instance, for `plugins` listings and the API.
#[derive(Debug, Clone)]
pub struct InstanceStatus {
    /// Its phase.
    pub phase: Phase,
    /// The current process id, when a process is running.
    pub pid: Option<u32>,
    /// Restarts after crashes so far.
    pub restarts: u64,
    /// Calls in flight.
    pub in_flight: usize,
    /// The last crash or start failure.
    pub last_error: Option<String>,
}

/// Called once a task has a slot, just before it is sent; an error keeps it from being sent.
pub type BeforeSend<'a> = Box<
    dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> + Send + 'a,
>;

/// The right to send one task to one instance. Dropping it gives the slot back.
pub(crate) struct Lease {
    plugin: Arc<Plugin>,
    slot: usize,
    generation: u64,
    conn: Arc<Connection>,
    declared: Arc<[TaskName]>,
    armed: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.plugin.release(self.slot, self.generation);
        }
    }
}

impl Plugin {
    /// A plugin whose instances are not started yet; see [`Plugin::start`].
    pub fn new(spec: Arc<PluginSpec>, log_level: LogLevel) -> Arc<Plugin> {
        let slots = (0..spec.instances)
            .map(|_| Slot {
                phase: Phase::NotStarted,
                generation: 0,
                conn: None,
                declared: Arc::from([]),
                free: 0,
                capacity: 0,
                pid: None,
                restarts: 0,
                last_error: None,
            })
            .collect();
        Arc::new(Plugin {
            queue_room: Semaphore::new(spec.queue_capacity),
            spec,
            log_level,
            state: Mutex::new(PoolState { slots, waiters: VecDeque::new(), stopping: false }),
            changes: watch::Sender::new(0),
            runtime: Mutex::new(Runtime::default()),
            active: std::sync::atomic::AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            idempotent: Mutex::new(Vec::new()),
        })
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

    pub(crate) fn log_level(&self) -> LogLevel {
        self.log_level
    }

    /// Starts the instances, if not started already. Needs a tokio runtime.
    pub fn start(self: &Arc<Self>) {
        let mut rt = self.runtime.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !rt.supervisors.is_empty() || self.lock().stopping {
            return;
        }
        for slot in 0..self.spec.instances {
            let (tx, rx) = mpsc::unbounded_channel();
            rt.controls.push(tx);
            rt.supervisors.push(tokio::spawn(instance::supervise(Arc::clone(self), slot, rx)));
        }
    }

    /// Stops every instance gracefully (shutdown request, stdin EOF, SIGTERM, SIGKILL)
    /// and waits until they are gone. Waiting tasks fail; tasks in flight fail once their
    /// process is stopped.
    pub async fn stop(&self) {
        {
            let mut st = self.lock();
            st.stopping = true;
            let reason = "the plugin is shutting down".to_owned();
            fail_waiters(&mut st, &reason);
        }
        self.queue_room.close();
        let supervisors = {
            let mut rt = self.runtime.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for c in &rt.controls {
                let _ = c.send(Control::Stop);
            }
            std::mem::take(&mut rt.supervisors)
        };
        for s in supervisors {
            let _ = s.await;
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
            if self.active.load(std::sync::atomic::Ordering::SeqCst) == 0 {
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
        self.active.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the plugin's last handshake declared `task` safe to run twice.
    pub fn is_idempotent(&self, task: TaskName) -> bool {
        self.idempotent.lock().map(|v| v.contains(&task)).unwrap_or(false)
    }

    /// Asks every instance to stop and start again (not counted as a crash).
    pub fn restart(&self) {
        let rt = self.runtime.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for c in &rt.controls {
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
        let mut changes = self.changes.subscribe();
        while !condition(&self.status()) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// A snapshot of each instance.
    pub fn status(&self) -> Vec<InstanceStatus> {
        self.lock()
            .slots
            .iter()
            .map(|s| InstanceStatus {
                phase: s.phase.clone(),
                pid: s.pid,
                restarts: s.restarts,
                in_flight: if s.phase == Phase::Ready { s.capacity.saturating_sub(s.free) } else { 0 },
                last_error: s.last_error.clone(),
            })
            .collect()
    }

    /// Tasks waiting for a slot.
    pub fn queued(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Runs one task on this plugin and returns its result. Never fails: every way a task
    /// can go wrong (plugin failed, crashed, hung, answered nonsense) becomes a result with
    /// a non-zero status and the cause in `stderr`, naming the plugin and the task. The
    /// result is scrubbed of credentials except under `result` ([`redact::scrub_result`]).
    ///
    /// # Cancellation
    /// Dropping the future before the answer sends `cancel` for the task; its slot stays
    /// taken until the plugin answers it or the process ends.
    pub async fn run_task(self: &Arc<Self>, task: &TaskEnvelope) -> TaskResult {
        self.run_task_with(task, None).await
    }

    /// [`Plugin::run_task`], calling `before_send` once a slot is taken and just before the
    /// task goes out: the daemon journals the task as running there. If it fails, the task
    /// is not sent and fails with its reason.
    pub async fn run_task_with(
        self: &Arc<Self>,
        task: &TaskEnvelope,
        before_send: Option<BeforeSend<'_>>,
    ) -> TaskResult {
        let _active = Active::enter(self);
        let lease = match self.acquire().await {
            Ok(lease) => lease,
            Err(why) => return self.failure(task, &why, None),
        };
        if let Some(hook) = before_send
            && let Err(why) = hook().await
        {
            return self.failure(task, &format!("the task was not sent: {why}"), None);
        }
        if !lease.declared.contains(&task.task_name) {
            let declared: Vec<&str> = lease.declared.iter().map(|t| t.as_str()).collect();
            let why = format!(
                "the plugin does not handle {} (its handshake declared: {})",
                task.task_name,
                declared.join(", ")
            );
            return self.failure(task, &why, None);
        }
        let (slot, generation, conn) = (lease.slot, lease.generation, Arc::clone(&lease.conn));
        let timeout = self.spec.timeouts.get(task.task_name);
        let mut call = conn.request_task(task, Box::new(lease));
        let mut result = match tokio::time::timeout(timeout, call.wait()).await {
            Ok(reply) => self.result_of(task, &conn, reply),
            Err(_) => self.time_out(task, &mut call, timeout, slot, generation).await,
        };
        // With every value this process knows: its other tasks' too, should it mix them up.
        redact::scrub_result(&mut result, conn.redactor().as_ref());
        result
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
            if result.status == 0 {
                result.status = 1;
            }
            let note = format!("{}: {timed_out}; it stopped when cancelled", self.context(task));
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

    /// Turns the plugin's answer into a task result.
    fn result_of(&self, task: &TaskEnvelope, conn: &Connection, reply: Reply) -> TaskResult {
        match reply.outcome {
            Outcome::Result(raw) => match crate::wire::answer::read(raw.get()) {
                Ok(mut result) => {
                    if let Some(out) = reply.output {
                        fold_output(&mut result, out);
                    }
                    result
                }
                Err(why) => self.failure(task, &why, reply.output),
            },
            Outcome::Error(e) => {
                let message = conn.redactor().scrub(&e.message);
                self.failure(task, &format!("the plugin answered with error {}: {message}", e.code), reply.output)
            }
            Outcome::Lost(why) | Outcome::Unreadable(why) => self.failure(task, &why, reply.output),
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
        let rt = self.runtime.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = rt.controls.get(slot) {
            let _ = c.send(msg);
        }
    }

    /// Takes a slot, waiting in the queue if none is free.
    async fn acquire(self: &Arc<Self>) -> Result<Lease, String> {
        self.start();
        if let Some(now) = self.acquire_now(&mut self.lock()) {
            return now;
        }
        // Bounded queue: wait for room, then for a slot.
        let _room = self.queue_room.acquire().await.map_err(|_| "the plugin is shutting down".to_owned())?;
        let waiting = {
            let mut st = self.lock();
            if let Some(now) = self.acquire_now(&mut st) {
                return now;
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(tx);
            rx
        };
        waiting.await.unwrap_or_else(|_| Err("the plugin stopped".to_owned()))
    }

    /// A slot, or the reason to fail, if either is known without waiting. Tasks already
    /// waiting go first.
    fn acquire_now(self: &Arc<Self>, st: &mut PoolState) -> Option<Result<Lease, String>> {
        if let Some(why) = self.refusal(st) {
            return Some(Err(why));
        }
        if st.waiters.is_empty() { self.take_slot(st).map(Ok) } else { None }
    }

    /// Why a task must fail now rather than wait: shutting down, or every instance failed.
    fn refusal(&self, st: &PoolState) -> Option<String> {
        if st.stopping {
            return Some("the plugin is shutting down".to_owned());
        }
        let now = Instant::now();
        let mut reasons = st.slots.iter().map(|s| match &s.phase {
            Phase::Failed { until, reason } => {
                Some(format!("{reason}; it will be tried again in {}", secs(until.saturating_duration_since(now))))
            }
            _ => None,
        });
        let first = reasons.next()??;
        reasons.all(|r| r.is_some()).then_some(first)
    }

    /// A free slot on the ready instance with the most room.
    fn take_slot(self: &Arc<Self>, st: &mut PoolState) -> Option<Lease> {
        let (index, slot) = st
            .slots
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.phase == Phase::Ready && s.free > 0)
            .max_by_key(|(_, s)| s.free)?;
        let conn = Arc::clone(slot.conn.as_ref()?);
        slot.free -= 1;
        Some(Lease {
            plugin: Arc::clone(self),
            slot: index,
            generation: slot.generation,
            conn,
            declared: Arc::clone(&slot.declared),
            armed: true,
        })
    }

    /// Hands free slots to waiting tasks, first come first served.
    fn hand_out(self: &Arc<Self>, st: &mut PoolState) {
        while !st.waiters.is_empty() {
            let Some(lease) = self.take_slot(st) else {
                return;
            };
            let Some(waiter) = st.waiters.pop_front() else {
                return;
            };
            if let Err(Ok(mut unsent)) = waiter.send(Ok(lease)) {
                // That task gave up waiting; put the slot back without re-entering the lock.
                unsent.armed = false;
                if let Some(s) = st.slots.get_mut(unsent.slot) {
                    s.free += 1;
                }
            }
        }
    }

    fn release(self: &Arc<Self>, slot: usize, generation: u64) {
        let mut st = self.lock();
        let Some(s) = st.slots.get_mut(slot) else {
            return;
        };
        if s.generation != generation || s.phase != Phase::Ready {
            return;
        }
        s.free += 1;
        self.hand_out(&mut st);
    }

    // ----- Phase changes, reported by the instance supervisors. -----

    pub(crate) fn set_phase(&self, slot: usize, phase: Phase) {
        let mut st = self.lock();
        if let Some(s) = st.slots.get_mut(slot) {
            if s.phase == Phase::Ready && phase != Phase::Ready {
                s.generation += 1;
                s.conn = None;
                s.free = 0;
                s.pid = None;
            }
            s.phase = phase;
        }
        drop(st);
        self.changed();
    }

    /// The instance finished its handshake. Returns the generation of this process.
    pub(crate) fn set_ready(
        self: &Arc<Self>,
        slot: usize,
        conn: Arc<Connection>,
        capacity: usize,
        declared: Vec<TaskName>,
        idempotent: Vec<TaskName>,
    ) -> u64 {
        if let Ok(mut i) = self.idempotent.lock() {
            *i = idempotent;
        }
        let mut st = self.lock();
        let Some(s) = st.slots.get_mut(slot) else {
            return 0;
        };
        s.generation += 1;
        s.pid = Some(conn.pid());
        s.conn = Some(conn);
        s.capacity = capacity;
        s.free = capacity;
        s.declared = Arc::from(declared);
        s.phase = Phase::Ready;
        let generation = s.generation;
        self.hand_out(&mut st);
        drop(st);
        self.changed();
        generation
    }

    /// The instance crashed or failed to start, and will be restarted.
    pub(crate) fn set_crashed(&self, slot: usize, reason: &str, during_start: bool) {
        let mut st = self.lock();
        if let Some(s) = st.slots.get_mut(slot) {
            s.restarts += 1;
            s.last_error = Some(reason.to_owned());
        }
        // A process that cannot even start says nothing good about the next attempt: the
        // tasks waiting for it fail with the reason rather than wait on, unless another
        // instance is serving.
        if during_start && !st.slots.iter().any(|s| s.phase == Phase::Ready) {
            fail_waiters(&mut st, &format!("the plugin could not start: {reason}"));
        }
        drop(st);
        self.set_phase(slot, Phase::Restarting);
    }

    /// The instance crashed too often and stays failed until `until`.
    pub(crate) fn set_failed(&self, slot: usize, reason: String, until: Instant) {
        self.set_phase(slot, Phase::Failed { until, reason });
        let mut st = self.lock();
        if let Some(why) = self.refusal(&st) {
            fail_waiters(&mut st, &why);
        }
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // The pool's invariants hold between statements; recover from a poisoned lock.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts a task in [`Plugin::run_task`] while it lives; wakes a retiring plugin when the
/// last one leaves (also when the task's future is dropped).
struct Active<'a>(&'a Plugin);

impl<'a> Active<'a> {
    fn enter(p: &'a Plugin) -> Self {
        p.active.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Active(p)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn fail_waiters(st: &mut PoolState, reason: &str) {
    for w in st.waiters.drain(..) {
        let _ = w.send(Err(reason.to_owned()));
    }
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

/// "1.5 s", "30 s".
pub(crate) fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 { format!("{s:.0} s") } else { format!("{s:.1} s") }
}
