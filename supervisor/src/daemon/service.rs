//! The daemon's core, under `loom-provisioner serve`: accepts tasks, journals them before
//! saying so, runs them on the supervisor, journals their results, and recovers what a
//! crash interrupted. The HTTP layer ([`crate::daemon::http`]) and the signal handling
//! ([`crate::cli`]) sit on top.
//!
//! A task's life here: [`Daemon::submit`] journals it as queued (or finds it there: a
//! second submission never runs it twice). When this daemon can run it and has room, it
//! claims it at once and spawns [`Daemon::execute`], which journals it as running, runs
//! it, journals the result, and wakes whoever waits for it. Otherwise (a fleet sharing a
//! PostgreSQL journal) it stays in the fleet's queue, and the claim loop of whichever
//! daemon has its plugins and room takes it ([`Daemon::run_fleet`]); that loop also
//! renews this daemon's lease and takes over the tasks of daemons whose lease ran out
//! ([`crate::journal::Fate`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use loom_protocol::{LogLevel, TaskResult};
use serde_json::value::RawValue;
use tokio::sync::{Notify, watch};

use crate::cluster::job::{self, Engine, JobError, Options as JobOptions};
use crate::cluster::outcome::Outcome;
use crate::cluster::plan::Scope;
use crate::cluster::progress::Log;
use crate::cluster::{ClusterSpec, ClusterState, ClusterStore, JobKind};
use crate::core::pool::Phase;
use crate::core::registry::{LoadError, Registry};
use crate::core::supervisor::{Options, ReloadReport, Supervisor, TaskReport};
use crate::daemon::budget::{Budget, Reservation};
use crate::daemon::config::{Config, ConfigError, Listen};
use crate::daemon::metrics::{Counted, Metrics};
use crate::daemon::notify::Notifier;
use crate::daemon::published::{PluginStates, Published, Publisher};
use crate::journal::{Event, Fate, Journal, JournalError, Member, Orphan, Record, Settings};
use crate::wire::envelope::TaskEnvelope;

pub use crate::journal::RESTARTED;

/// The running daemon.
pub struct Daemon {
    config: RwLock<Config>,
    /// Where the API is served, once it is ([`Daemon::serving_on`]): a reload must not
    /// take the token away while that is off loopback.
    serving: std::sync::OnceLock<Listen>,
    /// The plugins.
    pub supervisor: Supervisor,
    /// The journal.
    pub journal: Journal,
    /// Counters and histograms.
    pub metrics: Metrics,
    /// The web console's sessions.
    pub sessions: crate::daemon::session::Sessions,
    /// When it started, in milliseconds since the epoch.
    pub started_ms: i64,
    /// What `GET /v1/events` streams.
    pub events: Arc<crate::daemon::events::Bus>,
    /// Publishes the tasks', operations' and plugins' events on `events`.
    pub publisher: Arc<Publisher>,
    /// systemd.
    pub notifier: Notifier,
    /// Room for tasks in memory (`max_pending_task_bytes`).
    pub budget: Budget,
    /// Tasks accepted and not finished: their result, once there is one.
    inflight: Mutex<HashMap<String, watch::Receiver<Option<()>>>>,
    /// Tasks being executed (journal writes included).
    active: AtomicUsize,
    idle: Notify,
    /// Results the journal has not taken yet (it cannot write), by task id: written to a
    /// spill file if the daemon stops before the journal takes them.
    unwritten: Mutex<HashMap<String, Arc<str>>>,
    draining: AtomicBool,
    /// The clusters, in the same journal.
    pub clusters: ClusterStore,
    /// This daemon in the journal's fleet (a new id after its lease ran out).
    me: Mutex<Member>,
    /// How it takes part in the fleet.
    fleet: Settings,
    /// The plugin keys it runs, and that list as JSON (`router::needs`' spelling).
    can: RwLock<Arc<(Vec<String>, String)>>,
    /// Wakes the claim loop: a task finished here (room), or the fleet changed.
    wake: Notify,
    /// Whether claimable tasks may be waiting in the journal for room here (the last
    /// claim was full, or there was no room): only then does a finished task wake the
    /// claim loop, which otherwise would ask the journal after every task for nothing.
    backlog: AtomicBool,
    /// Stops the heartbeat, once the daemon has left the fleet at the end of a drain.
    fleet_stop: tokio_util::sync::CancellationToken,
    /// Tasks the journal says this daemon owns that it does not work on, as of the last
    /// heartbeat: given up at the next one if still so ([`Daemon::reconcile`]).
    suspects: Mutex<std::collections::HashSet<String>>,
    /// Cancelled (and replaced) when this daemon's lease runs out: its cluster
    /// operations stop, since other daemons may have taken their clusters.
    lease_lost: Mutex<tokio_util::sync::CancellationToken>,
    /// Cluster operations running here, by cluster: their outcome once there is one.
    cluster_runs: Mutex<ClusterRuns>,
    cluster_stop: tokio_util::sync::CancellationToken,
    cluster_tasks: tokio_util::task::TaskTracker,
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Not a task (400).
    #[error("{0}")]
    Invalid(String),
    /// Shutting down (503).
    #[error("the daemon is shutting down and accepts no new tasks")]
    Draining,
    /// The journal failed (500): the task was not accepted.
    #[error("the task was not accepted: {0}")]
    Journal(#[from] JournalError),
}

/// Cluster operations running, by cluster: a receiver of each one's outcome (shared: every
/// waiter gets the same error).
type ClusterRuns = HashMap<String, watch::Receiver<Option<Result<Outcome, Arc<JobError>>>>>;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The journal cannot be opened.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A plugins folder cannot be read.
    #[error(transparent)]
    Plugins(#[from] LoadError),
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration cannot be read or is bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A plugins folder cannot be read.
    #[error(transparent)]
    Plugins(#[from] LoadError),
    /// The new configuration has no `token_file` while the API is served off loopback
    /// (on the socket systemd passed, or on the `listen` in force until a restart).
    #[error("{}: the API is served on {on}, not a loopback address, so token_file must stay set", config.display())]
    Unauthenticated {
        /// The configuration file.
        config: std::path::PathBuf,
        /// Where the API is served.
        on: std::net::SocketAddr,
    },
}

/// Why a cluster operation was not started.
#[derive(Debug, thiserror::Error)]
pub enum ClusterOpError {
    /// Shutting down (503).
    #[error("the daemon is shutting down and starts no new operations")]
    Draining,
    /// Refused: unknown cluster (404), busy (409), bad spec or missing plugin (400),
    /// journal (500).
    #[error(transparent)]
    Job(#[from] JobError),
}

/// A submission's outcome.
pub enum Submitted {
    /// New: accepted, queued.
    New(String),
    /// A task with this id exists; nothing new was run.
    Existing(Record),
}

impl Daemon {
    /// Opens the journal, loads the plugins and starts them.
    ///
    /// # Errors
    /// [`StartError`]: the journal cannot be opened or a plugins folder read.
    pub fn start(config: Config, plugin_level: LogLevel) -> Result<Arc<Daemon>, StartError> {
        let journal = Journal::open_with(&config.journal, &config.data_dir)?;
        let clusters = ClusterStore::new(journal.clone());
        let registry = Registry::load_logged(&config.plugin_dirs, &config.defaults)?;
        let events = Arc::new(crate::daemon::events::Bus::new());
        let states: Arc<dyn crate::core::pool::PhaseObserver> = Arc::new(PluginStates(Arc::clone(&events)));
        let options = Options { eager: true, log_level: plugin_level };
        let supervisor = Supervisor::observed(registry, options, Some(states));
        let budget = Budget::new(config.max_pending_task_bytes);
        let config_journal = config.journal.clone();
        Ok(Arc::new(Daemon {
            budget,
            config: RwLock::new(config),
            serving: std::sync::OnceLock::new(),
            supervisor,
            journal,
            metrics: Metrics::default(),
            sessions: crate::daemon::session::Sessions::default(),
            started_ms: crate::journal::now_ms(),
            publisher: Publisher::start(Arc::clone(&events)),
            events,
            notifier: Notifier::from_env(),
            inflight: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            unwritten: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            clusters,
            cluster_runs: Mutex::new(HashMap::new()),
            cluster_stop: tokio_util::sync::CancellationToken::new(),
            cluster_tasks: tokio_util::task::TaskTracker::new(),
            me: Mutex::new(Member::this_process(&config_journal.member_name())),
            fleet: config_journal,
            can: RwLock::new(Arc::new((Vec::new(), "[]".to_owned()))),
            wake: Notify::new(),
            backlog: AtomicBool::new(false),
            fleet_stop: tokio_util::sync::CancellationToken::new(),
            lease_lost: Mutex::new(tokio_util::sync::CancellationToken::new()),
            suspects: Mutex::new(std::collections::HashSet::new()),
        }))
        .inspect(|d| d.refresh_can())
    }

    /// This daemon in the fleet.
    pub fn me(&self) -> Member {
        self.me.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Whether other daemons may share the journal (PostgreSQL).
    pub fn shared(&self) -> bool {
        self.journal.dialect() == crate::journal::sql::Dialect::Postgres
    }

    fn can(&self) -> Arc<(Vec<String>, String)> {
        Arc::clone(&self.can.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Reads again which plugin keys this daemon runs (after a start or a reload).
    fn refresh_can(&self) {
        let keys = self.supervisor.table().can();
        let json = serde_json::to_string(&keys).unwrap_or_else(|_| "[]".to_owned());
        *self.can.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new((keys, json));
    }

    /// This daemon's plugins for the fleet's `daemons` table: kind, name, instances
    /// ready, tasks running and queued.
    fn plugins_json(&self) -> String {
        let table = self.supervisor.table();
        let list: Vec<serde_json::Value> = table
            .plugins()
            .map(|p| {
                let status = p.status();
                let ready = status.iter().filter(|s| s.phase == Phase::Ready).count();
                serde_json::json!({
                    "kind": p.kind().as_str(), "name": p.name(), "instances": status.len(),
                    "ready": ready, "active": p.active(), "queued": p.queued(),
                })
            })
            .collect();
        serde_json::Value::Array(list).to_string()
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.config.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Whether SIGTERM has been received.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Tasks accepted and not finished.
    pub fn in_flight(&self) -> usize {
        self.lock_inflight().len()
    }

    /// Accepts a task: journals it (committed) before answering, then runs it. A task
    /// whose id is known is returned as it is and not run again. `room`, the task's
    /// reservation in the budget, is held until its result is journaled.
    ///
    /// # Errors
    /// [`SubmitError`]: not a task, shutting down, or the journal failed.
    pub async fn submit(
        self: &Arc<Self>,
        raw: Box<RawValue>,
        room: Option<Reservation>,
    ) -> Result<Submitted, SubmitError> {
        if self.draining() {
            return Err(SubmitError::Draining);
        }
        let task = TaskEnvelope::parse(raw).map_err(|e| SubmitError::Invalid(e.to_string()))?;
        let id = task.task_id.clone();
        // Claim the id in memory first, so two submissions racing never both run it.
        let claimed = {
            let mut inflight = self.lock_inflight();
            if inflight.contains_key(&id) {
                None
            } else {
                let (tx, rx) = watch::channel(None);
                inflight.insert(id.clone(), rx);
                Some(tx)
            }
        };
        let Some(tx) = claimed else { return self.existing(&id).await };
        let needs = crate::core::router::needs(&task);
        // Claimed here at once when this daemon runs it and has room; otherwise left to
        // whichever daemon of the fleet claims it. Alone (SQLite), it takes every task:
        // one that none of its plugins runs fails at once, saying why.
        let mine = !self.shared()
            || (needs.iter().all(|n| self.can().0.contains(n))
                && self.active.load(Ordering::SeqCst) < self.fleet.max_claimed);
        let needs = serde_json::to_string(&needs).unwrap_or_else(|_| "[]".to_owned());
        let me = mine.then(|| self.me());
        // Journaling and starting the task go together, in a task of their own: if the
        // client goes away while the journal commits, the task still runs (it was
        // accepted), and its id is not left claimed with nothing running it.
        let daemon = Arc::clone(self);
        let accepted = tokio::spawn(async move {
            let accepted =
                daemon.journal.accept(&id, task.task_name.as_str(), &needs, me.as_ref(), task.shared_raw()).await;
            match accepted {
                Ok(None) if me.is_some() => {
                    daemon.spawn(task, tx, room);
                    Ok(Submitted::New(id))
                }
                Ok(None) => {
                    // In the fleet's queue: its body is in the journal, not held here.
                    daemon.lock_inflight().remove(&id);
                    Ok(Submitted::New(id))
                }
                Ok(Some(existing)) => {
                    daemon.lock_inflight().remove(&id);
                    Ok(Submitted::Existing(existing))
                }
                Err(e) => {
                    daemon.lock_inflight().remove(&id);
                    Err(e.into())
                }
            }
        });
        accepted.await.unwrap_or_else(|e| {
            Err(SubmitError::Journal(JournalError {
                place: self.journal.place().into(),
                message: format!("accepting the task failed: {e}"),
            }))
        })
    }

    async fn existing(&self, id: &str) -> Result<Submitted, SubmitError> {
        match self.journal.get(id).await? {
            Some(r) => Ok(Submitted::Existing(r)),
            None => Err(SubmitError::Invalid(format!("task {id} is being accepted; try again"))),
        }
    }

    /// The task, as the journal has it.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn get(&self, id: &str) -> Result<Option<Record>, JournalError> {
        self.journal.get(id).await
    }

    /// Waits until task `id` is done and returns it (at once if it is; `None` if unknown).
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn wait(&self, id: &str) -> Result<Option<Record>, JournalError> {
        let rx = self.lock_inflight().get(id).cloned();
        match rx {
            Some(mut rx) => {
                let _ = rx.wait_for(Option::is_some).await;
                self.journal.get(id).await
            }
            // Queued in the fleet, running on another daemon, or done.
            None => self.journal.wait_done(id).await,
        }
    }

    fn spawn(self: &Arc<Self>, task: TaskEnvelope, done: watch::Sender<Option<()>>, room: Option<Reservation>) {
        let daemon = Arc::clone(self);
        self.active.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            daemon.execute(&task).await;
            let id = task.task_id.clone();
            // The task's text and its room in the budget go together.
            drop((task, room));
            daemon.lock_inflight().remove(&id);
            let _ = done.send(Some(()));
            if daemon.active.fetch_sub(1, Ordering::SeqCst) == 1 {
                daemon.idle.notify_waiters();
            }
            // Room for another task of the fleet's queue, if one may wait there.
            if daemon.backlog.load(Ordering::SeqCst) {
                daemon.wake.notify_one();
            }
        });
    }

    /// Runs a journaled task and journals its result. The task is journaled as running
    /// when it leaves the queue for its plugin (committed before it is sent), so after a
    /// crash a task still waiting in a queue is known never to have run. When that record
    /// cannot be written (a full disk), the task is not sent: it stays queued and is tried
    /// again, with backoff, until the journal can write.
    ///
    /// A task that never reached a plugin because the daemon is stopping stays queued in
    /// the journal, and the next start runs it.
    async fn execute(&self, task: &TaskEnvelope) {
        let began = Instant::now();
        let mut wait = Duration::from_millis(100);
        let me = self.me();
        // From when it was sent (or refused), for `task.finished`.
        let sent;
        let (route, result) = loop {
            let permit = match self.supervisor.reserve(task).await {
                Ok(permit) => permit,
                Err(_) if self.draining() => return self.left_queued(task),
                Err(refused) => {
                    sent = Instant::now();
                    self.publisher.task_started(task, refused.route());
                    break (refused.route().to_owned(), refused.into_result());
                }
            };
            // Recorded with the task, so that whichever daemon takes it over after a
            // crash knows whether running it again is safe.
            match self.journal.start(&task.task_id, &me, permit.route(), permit.is_idempotent()).await {
                Ok(Some(_attempt)) => {
                    self.publisher.task_started(task, permit.route());
                    sent = Instant::now();
                    break (permit.route().to_owned(), permit.send().await);
                }
                Ok(None) => {
                    tracing::warn!(task_id = %task.task_id, "not sent: this daemon's lease ran out and another daemon took the task over");
                    return;
                }
                // It cannot be recorded as running, so it does not run: it stays queued in
                // the journal, its slot goes back, and it is tried again when the journal
                // can write (or at the next start).
                Err(e) => {
                    drop(permit);
                    if self.draining() {
                        return self.left_queued(task);
                    }
                    tracing::warn!(task_id = %task.task_id, "cannot record the task as running ({e}); it stays queued and is tried again in {}", crate::log::secs(wait));
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        };
        self.metrics.task(&route, task.task_name.as_str(), result.status, began.elapsed());
        self.publisher.task_finished(task, &route, &result, sent.elapsed());
        self.finish(task, result, &me).await;
    }

    /// A task that never reached a plugin because the daemon is stopping stays queued in
    /// the journal.
    fn left_queued(&self, task: &TaskEnvelope) {
        tracing::info!(task_id = %task.task_id, "not started before the shutdown; it stays queued for the next start");
    }

    async fn finish(&self, task: &TaskEnvelope, result: TaskResult, me: &Member) {
        let report = TaskReport { task_id: Some(task.task_id.clone()), result };
        // Straight to text: a tree of a large result would cost many times its size.
        let text: Arc<str> = serde_json::to_string(&report).unwrap_or_else(|_| "null".to_owned()).into();
        drop(report);
        // A result that cannot be written is retried: it must not be lost. Meanwhile it is
        // known here, so that a stop can spill it ([`Daemon::drain`]).
        self.lock_unwritten().insert(task.task_id.clone(), Arc::clone(&text));
        self.idle.notify_waiters();
        let record = || async {
            let recorded = self.journal.finish_owned(&task.task_id, me, Arc::clone(&text)).await?;
            if !recorded {
                tracing::warn!(task_id = %task.task_id, "its result is not recorded: this daemon's lease ran out while it ran, and another daemon took the task over");
            }
            Ok(())
        };
        crate::journal::until_recorded(&task.task_id, record).await;
        self.lock_unwritten().remove(&task.task_id);
    }

    fn lock_unwritten(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<str>>> {
        self.unwritten.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Joins the fleet (alone, with SQLite) and takes over what the daemon's last run
    /// (and, in a fleet, every daemon whose lease ran out) left: the results it spilled at
    /// its stop are applied first, then its tasks are requeued or failed by the rules of
    /// [`Fate`]. Returns the tasks of an older journal whose fate needs the plugins
    /// ([`Daemon::recover`]). Call before the API accepts tasks: one accepted after this
    /// is this run's, and must be neither failed as interrupted nor run a second time.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn join(&self) -> Result<Vec<Orphan>, JournalError> {
        let me = self.me();
        self.journal.join(&me, &self.plugins_json(), &self.can().1, self.fleet.lease).await?;
        crate::journal::spill::apply(&self.journal, &self.config().data_dir).await?;
        let mut decide = Vec::new();
        loop {
            let orphans = self.journal.take_over(&me).await?;
            if orphans.is_empty() {
                return Ok(decide);
            }
            decide.extend(log_orphans(orphans));
        }
    }

    /// Decides the fate of tasks an older journal left running (it did not record whether
    /// their plugin declared them idempotent): run again when the plugin they route to
    /// declares the task idempotent, failed with [`RESTARTED`] otherwise. Call once the
    /// plugins have finished their handshakes. Returns (re-run, failed).
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn recover(self: &Arc<Self>, left: Vec<Orphan>) -> Result<(usize, usize), JournalError> {
        let (mut rerun, mut failed) = (0, 0);
        for u in left {
            let parsed = RawValue::from_string(u.raw.clone())
                .map_err(|e| e.to_string())
                .and_then(|raw| TaskEnvelope::parse(raw).map_err(|e| e.to_string()));
            let why = match parsed {
                Ok(task) if self.supervisor.route(&task).1 => {
                    tracing::info!(task_id = %task.task_id, "running again after the restart (running before it)");
                    self.journal.requeue(&task.task_id).await?;
                    rerun += 1;
                    continue;
                }
                Ok(task) => format!(
                    "{RESTARTED}: {} {} was running on {} when the supervisor stopped, and that plugin does not declare {} idempotent, so it was not run again",
                    task.task_name,
                    task.task_id,
                    self.supervisor.route(&task).0,
                    task.task_name
                ),
                Err(why) => format!("{RESTARTED}, and the journaled task cannot be read again: {why}"),
            };
            tracing::warn!(task_id = %u.task_id, "{why}");
            let report = TaskReport { task_id: Some(u.task_id.clone()), result: TaskResult::failed(why) };
            self.journal.finish(&u.task_id, serde_json::to_string(&report).unwrap_or_default()).await?;
            failed += 1;
        }
        if rerun > 0 {
            self.wake.notify_one();
        }
        Ok((rerun, failed))
    }

    /// The daemon's part in the fleet, in the background until it drains: a claim loop
    /// (takes queued tasks it can run while it has room, woken by new tasks, finished
    /// ones and changes of the fleet, and every 2 s in a fleet as a safety net) and a
    /// heartbeat (renews its lease; in a fleet, takes over the tasks of daemons whose
    /// lease ran out and marks tasks no live daemon can run). Call once the plugins
    /// have finished their handshakes.
    pub fn run_fleet(self: &Arc<Self>) {
        tokio::spawn(Arc::clone(self).claim_loop());
        tokio::spawn(Arc::clone(self).heartbeat_loop());
    }

    async fn claim_loop(self: Arc<Self>) {
        let mut events = self.journal.events();
        // With SQLite nothing else writes the journal: only this process wakes the loop.
        let poll = if self.shared() { Duration::from_secs(2) } else { Duration::from_secs(3600) };
        loop {
            self.claim_some().await;
            tokio::select! {
                () = self.wake.notified() => {}
                event = events.recv() => {
                    if matches!(event, Ok(Event::Done(_))) {
                        continue;
                    }
                    // One claim for every event that arrived meanwhile.
                    while events.try_recv().is_ok() {}
                }
                () = tokio::time::sleep(poll) => {}
                () = self.cluster_stop.cancelled() => return,
            }
        }
    }

    /// Claims queued tasks while this daemon has room, and runs them.
    async fn claim_some(self: &Arc<Self>) {
        loop {
            let room = self.fleet.max_claimed.saturating_sub(self.active.load(Ordering::SeqCst));
            if room == 0 || self.draining() {
                // Tasks may wait for this room: a task that ends here looks again.
                self.backlog.store(room == 0, Ordering::SeqCst);
                return;
            }
            let me = self.me();
            let claimed = match self.journal.claim(&me, &self.can().1, room).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!("cannot claim queued tasks: {e}");
                    return;
                }
            };
            let full = claimed.len() == room;
            // Fewer than asked: none claimable is left (a new one wakes the loop itself).
            self.backlog.store(full, Ordering::SeqCst);
            for (id, raw) in claimed {
                self.run_claimed(id, raw, &me).await;
            }
            if !full {
                return;
            }
        }
    }

    /// Runs a task claimed from the fleet's queue.
    async fn run_claimed(self: &Arc<Self>, id: String, raw: String, me: &Member) {
        let parsed = RawValue::from_string(raw)
            .map_err(|e| e.to_string())
            .and_then(|raw| TaskEnvelope::parse(raw).map_err(|e| e.to_string()));
        let task = match parsed {
            Ok(task) => task,
            Err(why) => {
                let why = format!("the journaled task cannot be read again: {why}");
                tracing::error!(task_id = %id, "{why}");
                let report = TaskReport { task_id: Some(id.clone()), result: TaskResult::failed(why) };
                let text: Arc<str> = serde_json::to_string(&report).unwrap_or_default().into();
                let write = || async { self.journal.finish_owned(&id, me, Arc::clone(&text)).await.map(drop) };
                crate::journal::until_recorded(&id, write).await;
                return;
            }
        };
        let (tx, rx) = watch::channel(None);
        let earlier = self.lock_inflight().insert(id, rx);
        match earlier {
            None => self.spawn(task, tx, None),
            // Still running here under this daemon's id from before its lease ran out:
            // the new run waits for it to end.
            Some(mut earlier) => {
                let daemon = Arc::clone(self);
                tokio::spawn(async move {
                    let _ = earlier.wait_for(Option::is_some).await;
                    daemon.spawn(task, tx, None);
                });
            }
        }
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.fleet.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.fleet_stop.cancelled() => return,
            }
            self.beat().await;
        }
    }

    /// One heartbeat: renews the lease (joins again under a new id if it ran out), then,
    /// in a fleet, takes over what dead daemons left and marks what no daemon can run.
    async fn beat(self: &Arc<Self>) {
        let me = self.me();
        let (plugins, can) = (self.plugins_json(), self.can());
        match self.journal.heartbeat(&me, &plugins, &can.1, self.fleet.lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(
                    "this daemon's lease ran out before it could renew it (the journal was out of reach for more than {}): other daemons may have taken its tasks over; joining again",
                    crate::log::secs(self.fleet.lease)
                );
                let renewed = me.renewed();
                if let Err(e) = self.journal.join(&renewed, &plugins, &can.1, self.fleet.lease).await {
                    tracing::warn!("cannot join the fleet again: {e}");
                    return;
                }
                *self.me.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = renewed;
                std::mem::take(&mut *self.lock_lease_lost()).cancel();
            }
            Err(e) => {
                tracing::warn!("cannot renew this daemon's lease: {e}");
                return;
            }
        }
        if !self.shared() {
            return;
        }
        let me = self.me();
        loop {
            match self.journal.take_over(&me).await {
                Ok(orphans) if orphans.is_empty() => break,
                Ok(orphans) => {
                    let decide = log_orphans(orphans);
                    if let Err(e) = self.recover(decide).await {
                        tracing::warn!("cannot take over tasks: {e}");
                    }
                    self.wake.notify_one();
                }
                Err(e) => {
                    tracing::warn!("cannot take over the tasks of daemons whose lease ran out: {e}");
                    break;
                }
            }
        }
        self.reconcile(&me).await;
        if let Err(e) = self.journal.mark_waiting().await {
            tracing::warn!("cannot mark the tasks no daemon can run: {e}");
        }
        // The operations of clusters whose daemon died.
        if !self.draining()
            && let Err(e) = self.resume_clusters().await
        {
            tracing::warn!("cannot look for cluster operations to resume: {e}");
        }
    }

    /// Tasks the journal says this daemon owns but that it does not work on: a write
    /// that gave them to it (accept, claim) committed, but its answer was lost to a
    /// dropped connection, so nothing here runs them. Seen on two heartbeats in a row
    /// (one would race a claim being answered), they are given up by the rules of
    /// [`Fate`], for any daemon to claim.
    async fn reconcile(&self, me: &Member) {
        let owned = match self.journal.owned(me).await {
            Ok(owned) => owned,
            Err(e) => return tracing::warn!("cannot list the tasks this daemon owns: {e}"),
        };
        let idle: std::collections::HashSet<String> = {
            let inflight = self.lock_inflight();
            owned.into_iter().filter(|id| !inflight.contains_key(id)).collect()
        };
        let give_up: Vec<String> = {
            let mut suspects = self.suspects.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let again = idle.iter().filter(|id| suspects.contains(*id)).cloned().collect();
            *suspects = idle;
            again
        };
        if give_up.is_empty() {
            return;
        }
        match self.journal.release(me, give_up).await {
            Ok(orphans) => {
                for o in &orphans {
                    tracing::warn!(task_id = %o.task_id, "owned here but not run here (the answer of the write that gave it was lost); given up: {:?}", o.fate);
                }
                let mut suspects = self.suspects.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for o in orphans {
                    suspects.remove(&o.task_id);
                }
                self.wake.notify_one();
            }
            Err(e) => tracing::warn!("cannot give up tasks this daemon does not run: {e}"),
        }
    }

    fn lock_lease_lost(&self) -> std::sync::MutexGuard<'_, tokio_util::sync::CancellationToken> {
        self.lease_lost.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the clusters' operations take turns: lock files in the data folder, or, in
    /// a fleet, the shared journal (one operation per cluster in the whole fleet).
    pub fn cluster_locks(&self) -> crate::cluster::lock::Locks {
        use crate::cluster::lock::Locks;
        if self.shared() {
            Locks::Fleet { journal: self.journal.clone(), me: self.me() }
        } else {
            Locks::Files(crate::cluster::lock_dir(&self.config().data_dir))
        }
    }

    /// Starts a cluster operation with this daemon's plugins, in the background; returns
    /// its job id once it is recorded, or why it was refused (then nothing was sent).
    ///
    /// # Errors
    /// [`ClusterOpError`].
    pub async fn start_cluster_op(
        self: &Arc<Self>,
        spec: ClusterSpec,
        kind: JobKind,
    ) -> Result<String, ClusterOpError> {
        self.start_cluster_op_within(spec, kind, Scope::default()).await
    }

    /// [`Daemon::start_cluster_op`] on part of the cluster, or rolling ([`Scope`]).
    ///
    /// # Errors
    /// As [`Daemon::start_cluster_op`]; an unknown `--limit` name or a step the limit
    /// needs that is not done is [`JobError::Refused`].
    pub async fn start_cluster_op_within(
        self: &Arc<Self>,
        spec: ClusterSpec,
        kind: JobKind,
        scope: Scope,
    ) -> Result<String, ClusterOpError> {
        if self.draining() {
            return Err(ClusterOpError::Draining);
        }
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let daemon = Arc::clone(self);
        let lease_lost = self.lock_lease_lost().clone();
        self.cluster_tasks.spawn(async move {
            let engine =
                Engine { supervisor: &daemon.supervisor, store: &daemon.clusters, locks: daemon.cluster_locks() };
            let name = spec.name.clone();
            let options = JobOptions::resolve(&spec, None, None).with_scope(scope);
            let prepared = match job::prepare(&engine, spec, kind, options).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = ready_tx.send(Err(ClusterOpError::Job(e)));
                    return;
                }
            };
            let (done_tx, done_rx) = watch::channel(None);
            daemon.lock_cluster_runs().insert(name.clone(), done_rx);
            let _ = ready_tx.send(Ok(prepared.job_id().to_owned()));
            let job_id = prepared.job_id().to_owned();
            let progress = Counted { metrics: &daemon.metrics, inner: Published::new(&daemon.publisher, Log) };
            let outcome = tokio::select! {
                r = prepared.execute(&progress) => Some(r.map_err(Arc::new)),
                // Shutting down: the tasks in flight are cancelled and stay recorded as
                // running; the next start resumes the operation.
                () = daemon.cluster_stop.cancelled() => None,
                // This daemon's lease ran out: another daemon may hold the cluster now.
                () = lease_lost.cancelled() => None,
            };
            match outcome {
                Some(outcome) => {
                    let _ = done_tx.send(Some(outcome));
                }
                None => daemon.publisher.op_interrupted(&name, &job_id, kind.as_str()),
            }
            daemon.lock_cluster_runs().remove(&name);
        });
        ready_rx.await.unwrap_or(Err(ClusterOpError::Draining))
    }

    /// Waits for the operation running on cluster `name`, if one runs here; `None` when
    /// none does (or it was cut short by a shutdown).
    ///
    /// # Errors
    /// `Some(Err(_))`: the operation's [`JobError`] ([`Prepared::execute`]: the journal
    /// failed at its end), shared with every other waiter.
    ///
    /// # Cancellation
    /// Dropping the future stops the wait only; the operation runs on.
    ///
    /// [`Prepared::execute`]: crate::cluster::job::Prepared::execute
    pub async fn wait_cluster(&self, name: &str) -> Option<Result<Outcome, Arc<JobError>>> {
        let mut rx = self.lock_cluster_runs().get(name).cloned()?;
        rx.wait_for(Option::is_some).await.ok().and_then(|done| done.clone())
    }

    /// After a restart: resumes the `up` and `down` operations that were running when the
    /// daemon (or a `cluster` command using this journal) stopped; marks interrupted
    /// `restart-services` and `reconfigure` incomplete. Returns how many were resumed.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn resume_clusters(self: &Arc<Self>) -> Result<usize, JournalError> {
        let mut resumed = 0;
        for record in self.clusters.list().await? {
            if !record.state.is_transient() || self.cluster_locks().is_held(&record.name).await {
                continue;
            }
            let kind = match record.state {
                ClusterState::Creating => JobKind::Up,
                ClusterState::Deleting => JobKind::Down { force: false },
                _ => {
                    let report = serde_json::json!({
                        "job": record.last_job, "interrupted": "the daemon restarted", "failed": [],
                        "next": format!("Run the operation on cluster {} again.", record.name),
                    });
                    self.clusters.end(&record.name, ClusterState::Incomplete, Some(&report)).await?;
                    continue;
                }
            };
            let spec = match job::stored_spec(&self.clusters, &record.name).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(cluster = %record.name, "cannot resume: {e}");
                    continue;
                }
            };
            match self.start_cluster_op(spec, kind).await {
                Ok(job) => {
                    tracing::info!(cluster = %record.name, job, "resuming {} after a restart", kind.as_str());
                    resumed += 1;
                }
                // Another daemon of the fleet took it first: it resumes it.
                Err(ClusterOpError::Job(JobError::Busy(e))) => {
                    tracing::debug!(cluster = %record.name, "not resuming {} here: {e}", kind.as_str());
                }
                Err(e) => tracing::error!(cluster = %record.name, "cannot resume {}: {e}", kind.as_str()),
            }
        }
        Ok(resumed)
    }

    fn lock_cluster_runs(&self) -> std::sync::MutexGuard<'_, ClusterRuns> {
        self.cluster_runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops taking tasks, waits for those in flight (at most `grace`), then stops the
    /// plugins; tasks still running then fail, and their results are journaled. Results
    /// the journal cannot take (it cannot write) are not waited for: they are spilled to a
    /// file the next start applies (see [`Daemon::spill_unwritten`]). Cluster operations
    /// are cut short first: they resume at the next start. Last, the journal is
    /// checkpointed, so that the finished tasks' bodies are in none of its files, and the
    /// event bus closed (`GET /v1/events` streams end).
    pub async fn drain(&self, grace: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        self.cluster_stop.cancel();
        self.cluster_tasks.close();
        self.cluster_tasks.wait().await;
        if !self.wait_settled_or_unwritten(grace).await {
            tracing::warn!(
                "{} tasks still in flight after {} s; stopping the plugins",
                self.in_flight(),
                grace.as_secs()
            );
        }
        self.supervisor.shutdown().await;
        // The plugins' answers (or failures) still have to reach the journal, or at least
        // be known here as results it has not taken.
        let _ = self.wait_settled_or_unwritten(Duration::from_secs(30)).await;
        self.spill_unwritten().await;
        // What it claimed and never sent goes back to the fleet's queue; its lease ends.
        if let Err(e) = self.journal.leave(&self.me()).await {
            tracing::warn!(
                "cannot leave the fleet cleanly (the others take its tasks over when its lease runs out): {e}"
            );
        }
        self.fleet_stop.cancel();
        // The finished tasks' bodies leave the write-ahead log before the process does.
        if let Err(e) = self.journal.checkpoint().await {
            tracing::warn!("cannot checkpoint the journal: {e}");
        }
        // Last: the event streams end once they have sent what the drain published (the
        // tasks that finished meanwhile, the plugins stopping).
        self.events.close();
    }

    /// Waits (at most `limit`) until every task is done, or, while the journal cannot
    /// write, until every task left is only waiting for the journal to take its result.
    /// Returns whether that happened before `limit`.
    async fn wait_settled_or_unwritten(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.idle.notified();
            let active = self.active.load(Ordering::SeqCst);
            let stuck = self.journal.health().problem().is_some() && active <= self.lock_unwritten().len();
            if active == 0 || stuck {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// Results the journal has not taken go to a spill file the next start applies
    /// ([`crate::journal::spill`]). When no spill file can be written either, the daemon
    /// does not exit: it says why and tries again (the journal and the spill file) every
    /// 10 s, until one takes them, or it is killed.
    async fn spill_unwritten(&self) {
        loop {
            let results: Vec<Arc<str>> = self.lock_unwritten().values().cloned().collect();
            if results.is_empty() {
                return;
            }
            match crate::journal::spill::write(&self.config().data_dir, &results) {
                Ok(file) => {
                    tracing::warn!(
                        "{} results the journal could not take were written to {}; the next start applies them",
                        results.len(),
                        file.display()
                    );
                    return;
                }
                Err(why) => {
                    tracing::error!(
                        "not exiting: {} results are not written anywhere yet (the journal cannot write, nor: {why}); trying again in 10 s",
                        results.len()
                    );
                    let changed = self.idle.notified();
                    let _ = tokio::time::timeout(Duration::from_secs(10), changed).await;
                }
            }
        }
    }

    /// Re-reads the configuration and the plugins folders and applies them: new plugins
    /// start, removed ones drain and stop, changed ones are replaced, and no task is
    /// dropped. The listen address and the data folder need a restart to change.
    ///
    /// # Errors
    /// [`ReloadError`], a bad configuration or unreadable plugins folder: nothing changes
    /// then.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.config().path;
        let config = crate::daemon::config::load(&path)?;
        let old = self.config();
        // The address served stays until a restart, whatever the new `listen` says.
        let on = self.serving.get().unwrap_or(&old.listen);
        if let Listen::Tcp(on) = on
            && !on.ip().is_loopback()
            && config.token.is_none()
        {
            return Err(ReloadError::Unauthenticated { config: path, on: *on });
        }
        let registry = Registry::load_logged(&config.plugin_dirs, &config.defaults)?;
        if config.listen != old.listen || config.data_dir != old.data_dir {
            tracing::warn!("listen and data_dir changes take effect at the next restart");
        }
        if config.max_pending_task_bytes != old.max_pending_task_bytes {
            tracing::warn!(
                "max_pending_task_bytes changes take effect at the next restart; {} bytes are in force",
                self.budget.bytes()
            );
        }
        let report = self.supervisor.reload(registry, config.drain_grace);
        *self.config.write().unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        // The fleet's tasks this daemon claims from now on.
        self.refresh_can();
        self.wake.notify_one();
        Ok(report)
    }

    /// Records where the API is served (the socket systemd passed, or `listen`); called
    /// once, by [`crate::daemon::serve`], before the API takes requests. A second call
    /// changes nothing.
    pub fn serving_on(&self, listen: Listen) {
        let _ = self.serving.set(listen);
    }

    /// A one-line summary for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let table = self.supervisor.table();
        let (mut ready, mut failed, mut starting) = (0, 0, 0);
        for p in table.plugins() {
            let phases: Vec<Phase> = p.status().into_iter().map(|s| s.phase).collect();
            if phases.iter().all(|ph| *ph == Phase::Ready) {
                ready += 1;
            } else if phases.iter().any(|ph| matches!(ph, Phase::Failed { .. })) {
                failed += 1;
            } else {
                starting += 1;
            }
        }
        let draining = if self.draining() { "; draining" } else { "" };
        format!(
            "{ready} plugins ready, {starting} starting, {failed} failed; {} tasks in flight{draining}",
            self.in_flight()
        )
    }

    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<Option<()>>>> {
        self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Logs what became of tasks taken over from dead daemons; returns those left to
/// [`Daemon::recover`].
fn log_orphans(orphans: Vec<Orphan>) -> Vec<Orphan> {
    let mut decide = Vec::new();
    for o in orphans {
        match &o.fate {
            Fate::Requeued => {
                tracing::info!(task_id = %o.task_id, "taken over and queued again ({} when its daemon stopped)", o.state.as_str());
            }
            Fate::Failed(why) => tracing::warn!(task_id = %o.task_id, "{why}"),
            Fate::Decide => decide.push(o),
        }
    }
    decide
}
