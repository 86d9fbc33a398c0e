//! The slots of one plugin's instances, and the queue of tasks waiting for one.
//!
//! Each ready instance has `maxConcurrency` slots. A task takes a slot ([`Lease`]) and
//! gives it back when the lease is dropped, however the task ends. When no slot is free,
//! the task waits in a FIFO queue of bounded length; when the queue is full, takers wait
//! for room (back-pressure, not rejection). When every instance is failed (too many
//! crashes), takers fail at once with the reason.
//!
//! The instance loops ([`crate::core::instance`]) report each instance's phase here; the
//! pool knows nothing of processes beyond the connection a lease sends on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use loom_protocol::{PluginKind, TaskName};
use tokio::sync::{Semaphore, oneshot, watch};

use crate::log::secs;
use crate::wire::connection::Connection;

/// The slots of one plugin's instances.
pub struct Pool {
    state: Mutex<PoolState>,
    /// Room in the queue; a waiting taker holds a permit.
    queue_room: Semaphore,
    /// The longest a taker waits for a slot; `None`: as long as the plugin lives.
    queue_timeout: Option<Duration>,
    /// Bumped on every phase change, for [`Pool::wait_for`].
    changes: watch::Sender<u64>,
    /// Told of every phase change, once set ([`Pool::observe`]).
    observer: std::sync::OnceLock<Observed>,
}

struct PoolState {
    slots: Vec<Slot>,
    waiters: VecDeque<oneshot::Sender<Result<Lease, AcquireError>>>,
    stopping: bool,
    /// What the last handshake declared safe to run twice.
    idempotent: Vec<TaskName>,
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
    requested_restarts: u64,
    last_error: Option<String>,
}

/// Why no slot was taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// The pool was closed ([`Pool::close`]).
    #[error("the plugin is shutting down")]
    ShuttingDown,
    /// The pool went away while the taker waited.
    #[error("the plugin stopped")]
    Stopped,
    /// The taker waited `queueTimeoutSecs` without a free slot (the plugin busy, or
    /// restarting).
    #[error("no slot came free within {} (queueTimeoutSecs): the plugin was busy or restarting; the task was not sent", secs(*.0))]
    QueueTimeout(Duration),
    /// Every instance is failed (it crashed too often): the first one's reason, and how
    /// long until it is tried again.
    #[error("{reason}; it will be tried again in {}", secs(*retry_in))]
    Failed {
        /// Why the instance was marked failed.
        reason: String,
        /// How long until it is tried again, as of the refusal.
        retry_in: Duration,
    },
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

/// An instance's phase changed: what a [`PhaseObserver`] is told.
#[derive(Debug)]
pub struct PhaseChange<'a> {
    /// The plugin.
    pub plugin: &'a str,
    /// Its kind.
    pub kind: PluginKind,
    /// The instance's index.
    pub instance: usize,
    /// Its new phase.
    pub phase: &'a Phase,
    /// Its process, when one runs (ready).
    pub pid: Option<u32>,
    /// Its restarts after crashes so far.
    pub restarts: u64,
}

/// Told of every phase change of every instance, after the pool's state has changed
/// (the layers above watch the plugins through it without the core knowing them). Called
/// from the instance loops: keep it quick, never block.
pub trait PhaseObserver: Send + Sync {
    /// One change.
    fn changed(&self, change: &PhaseChange<'_>);
}

/// The observer of one pool, and the plugin it tells about.
struct Observed {
    observer: Arc<dyn PhaseObserver>,
    plugin: String,
    kind: PluginKind,
    /// Held while a change is told ([`Pool::report`]).
    reporting: Mutex<()>,
}

impl Phase {
    /// Its name, as the API, the events and `plugins` listings give it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::NotStarted => "not started",
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Restarting => "restarting",
            Phase::Failed { .. } => "failed",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        }
    }
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
    /// Restarts asked for ([`crate::core::plugin::Plugin::restart`]) so far.
    pub requested_restarts: u64,
    /// Calls in flight.
    pub in_flight: usize,
    /// The last crash or start failure.
    pub last_error: Option<String>,
}

/// The right to send one task to one instance. Dropping it gives the slot back; a lease
/// handed to a connection with a call is dropped when that call ends.
pub struct Lease {
    pool: Arc<Pool>,
    slot: usize,
    generation: u64,
    conn: Arc<Connection>,
    declared: Arc<[TaskName]>,
    armed: bool,
}

impl Lease {
    /// The instance's index in its plugin.
    pub(crate) fn slot(&self) -> usize {
        self.slot
    }

    /// The process generation the slot belongs to.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The connection to send on.
    pub(crate) fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// The tasks the instance's handshake declared.
    pub(crate) fn declared(&self) -> &[TaskName] {
        &self.declared
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.pool.release(self.slot, self.generation);
        }
    }
}

impl Pool {
    /// A pool of `instances` instances, none started, with a queue of `queue_capacity`
    /// whose takers wait at most `queue_timeout` (`None`: as long as the plugin lives).
    pub fn new(instances: usize, queue_capacity: usize, queue_timeout: Option<Duration>) -> Arc<Pool> {
        let slots = (0..instances)
            .map(|_| Slot {
                phase: Phase::NotStarted,
                generation: 0,
                conn: None,
                declared: Arc::from([]),
                free: 0,
                capacity: 0,
                pid: None,
                restarts: 0,
                requested_restarts: 0,
                last_error: None,
            })
            .collect();
        Arc::new(Pool {
            state: Mutex::new(PoolState { slots, waiters: VecDeque::new(), stopping: false, idempotent: Vec::new() }),
            queue_room: Semaphore::new(queue_capacity),
            queue_timeout,
            changes: watch::Sender::new(0),
            observer: std::sync::OnceLock::new(),
        })
    }

    /// Tells `observer` of every phase change from now on, as of plugin `plugin` of
    /// `kind`. A second call changes nothing.
    pub(crate) fn observe(&self, observer: Arc<dyn PhaseObserver>, plugin: &str, kind: PluginKind) {
        let _ = self.observer.set(Observed { observer, plugin: plugin.to_owned(), kind, reporting: Mutex::new(()) });
    }

    /// Tells the observer, if any, of instance `slot` as it is now; outside the pool's
    /// lock, since the observer may take locks of its own.
    fn report(&self, slot: usize) {
        let Some(o) = self.observer.get() else { return };
        // One report at a time, snapshot and telling together: two changes made at once
        // are told in the order of their snapshots, so the last told is the phase now.
        let _in_order = o.reporting.lock().unwrap_or_else(PoisonError::into_inner);
        let snapshot = self.lock().slots.get(slot).map(|s| (s.phase.clone(), s.pid, s.restarts));
        if let Some((phase, pid, restarts)) = snapshot {
            let change = PhaseChange { plugin: &o.plugin, kind: o.kind, instance: slot, phase: &phase, pid, restarts };
            o.observer.changed(&change);
        }
    }

    /// Takes a slot, waiting in the queue if none is free.
    ///
    /// # Errors
    /// [`AcquireError`], when the pool is stopping or every instance is failed (also while
    /// waiting: waiters fail when the last instance is marked failed or could not start).
    ///
    /// # Cancellation
    /// Dropping the future leaves the queue; a slot handed to it meanwhile goes back.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, AcquireError> {
        if let Some(now) = self.acquire_now(&mut self.lock()) {
            return now;
        }
        match self.queue_timeout {
            Some(limit) => tokio::time::timeout(limit, self.wait_in_queue())
                .await
                .unwrap_or(Err(AcquireError::QueueTimeout(limit))),
            None => self.wait_in_queue().await,
        }
    }

    /// Waits for room in the bounded queue, then for a slot.
    async fn wait_in_queue(self: &Arc<Self>) -> Result<Lease, AcquireError> {
        let _room = self.queue_room.acquire().await.map_err(|_| AcquireError::ShuttingDown)?;
        let waiting = {
            let mut st = self.lock();
            if let Some(now) = self.acquire_now(&mut st) {
                return now;
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(tx);
            rx
        };
        waiting.await.unwrap_or(Err(AcquireError::Stopped))
    }

    /// Refuses every waiting and later taker with "the plugin is shutting down".
    pub fn close(&self) {
        let mut st = self.lock();
        st.stopping = true;
        fail_waiters(&mut st, &AcquireError::ShuttingDown);
        drop(st);
        self.queue_room.close();
    }

    /// Whether [`Pool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().stopping
    }

    /// Whether the last handshake declared `task` safe to run twice.
    pub fn is_idempotent(&self, task: TaskName) -> bool {
        self.lock().idempotent.contains(&task)
    }

    /// Waits until `condition` holds for the instances' status, checking after every
    /// phase change. Returns early if the pool is dropped.
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
                requested_restarts: s.requested_restarts,
                in_flight: if s.phase == Phase::Ready { s.capacity.saturating_sub(s.free) } else { 0 },
                last_error: s.last_error.clone(),
            })
            .collect()
    }

    /// Takers waiting for a slot (not those that gave up: their places are skipped).
    pub fn queued(&self) -> usize {
        self.lock().waiters.iter().filter(|w| !w.is_closed()).count()
    }

    /// A slot, or the reason to fail, if either is known without waiting. Takers already
    /// waiting go first.
    fn acquire_now(self: &Arc<Self>, st: &mut PoolState) -> Option<Result<Lease, AcquireError>> {
        if let Some(why) = refusal(st) {
            return Some(Err(why));
        }
        if st.waiters.is_empty() { self.take_slot(st).map(Ok) } else { None }
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
            pool: Arc::clone(self),
            slot: index,
            generation: slot.generation,
            conn,
            declared: Arc::clone(&slot.declared),
            armed: true,
        })
    }

    /// Hands free slots to waiting takers, first come first served.
    fn hand_out(self: &Arc<Self>, st: &mut PoolState) {
        while !st.waiters.is_empty() {
            let Some(lease) = self.take_slot(st) else {
                return;
            };
            let Some(waiter) = st.waiters.pop_front() else {
                return;
            };
            if let Err(Ok(mut unsent)) = waiter.send(Ok(lease)) {
                // That taker gave up waiting; put the slot back without re-entering the lock.
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

    // ----- Phase changes, reported by the instance loops. -----

    /// Instance `slot` entered `phase`. Leaving `Ready` takes its slots away: leases on
    /// them no longer count.
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
        self.report(slot);
    }

    /// The instance finished its handshake: its slots are free. Returns the generation
    /// of this process.
    pub(crate) fn set_ready(self: &Arc<Self>, slot: usize, ready: Ready) -> u64 {
        let mut st = self.lock();
        st.idempotent = ready.idempotent;
        let Some(s) = st.slots.get_mut(slot) else {
            return 0;
        };
        s.generation += 1;
        s.pid = Some(ready.conn.pid());
        s.conn = Some(ready.conn);
        s.capacity = ready.capacity;
        s.free = ready.capacity;
        s.declared = Arc::from(ready.declared);
        s.phase = Phase::Ready;
        let generation = s.generation;
        self.hand_out(&mut st);
        drop(st);
        self.changed();
        self.report(slot);
        generation
    }

    /// The instance crashed or failed to start, and will be restarted. Tasks waiting for a
    /// slot keep waiting: they never reached the dead process (the restart policy decides
    /// when the plugin is failed, and that fails them: [`Pool::set_failed`]).
    pub(crate) fn set_crashed(&self, slot: usize, reason: &str) {
        let mut st = self.lock();
        if let Some(s) = st.slots.get_mut(slot) {
            s.restarts += 1;
            s.last_error = Some(reason.to_owned());
        }
        drop(st);
        self.set_phase(slot, Phase::Restarting);
    }

    /// The instance was restarted because it was asked to be (not a crash).
    pub(crate) fn restarted_on_request(&self, slot: usize) {
        if let Some(s) = self.lock().slots.get_mut(slot) {
            s.requested_restarts += 1;
        }
        self.changed();
    }

    /// The instance crashed too often and stays failed until `until`.
    pub(crate) fn set_failed(&self, slot: usize, reason: String, until: Instant) {
        self.set_phase(slot, Phase::Failed { until, reason });
        let mut st = self.lock();
        if let Some(why) = refusal(&st) {
            fail_waiters(&mut st, &why);
        }
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The pool's invariants hold between statements; recover from a poisoned lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What an instance's handshake made of it.
pub(crate) struct Ready {
    /// Its connection.
    pub conn: Arc<Connection>,
    /// Its slots.
    pub capacity: usize,
    /// The tasks it handles.
    pub declared: Vec<TaskName>,
    /// The tasks it declared safe to run twice.
    pub idempotent: Vec<TaskName>,
}

/// Why a taker must fail now rather than wait: stopping, or every instance failed.
fn refusal(st: &PoolState) -> Option<AcquireError> {
    if st.stopping {
        return Some(AcquireError::ShuttingDown);
    }
    let now = Instant::now();
    let mut reasons = st.slots.iter().map(|s| match &s.phase {
        Phase::Failed { until, reason } => {
            Some(AcquireError::Failed { reason: reason.clone(), retry_in: until.saturating_duration_since(now) })
        }
        _ => None,
    });
    let first = reasons.next()??;
    reasons.all(|r| r.is_some()).then_some(first)
}

fn fail_waiters(st: &mut PoolState, reason: &AcquireError) {
    for w in st.waiters.drain(..) {
        let _ = w.send(Err(reason.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn conn(pid: u32) -> Arc<Connection> {
        Connection::new(Arc::from("p"), pid, tokio::io::sink(), Arc::default()).0
    }

    fn ready(pool: &Arc<Pool>, slot: usize, capacity: usize) -> u64 {
        let ready =
            Ready { conn: conn(100 + slot as u32), capacity, declared: vec![TaskName::Install], idempotent: vec![] };
        pool.set_ready(slot, ready)
    }

    /// Polls `f` once: `Some` if it completed.
    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        match f.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_first_waiter() {
        let pool = Pool::new(1, 10, None);
        ready(&pool, 0, 1);
        let held = pool.acquire().await.unwrap();
        let mut first = pin!(pool.acquire());
        let mut second = pin!(pool.acquire());
        assert!(poll_once(first.as_mut()).is_none() && poll_once(second.as_mut()).is_none());
        assert_eq!(pool.queued(), 2);
        drop(held);
        let got = poll_once(first.as_mut());
        assert!(got.as_ref().is_some_and(|r| r.is_ok()), "the first waiter gets the slot");
        assert!(poll_once(second.as_mut()).is_none(), "the second still waits");
    }

    #[tokio::test]
    async fn a_slot_handed_to_a_waiter_that_gave_up_goes_back() {
        let pool = Pool::new(1, 10, None);
        ready(&pool, 0, 1);
        let held = pool.acquire().await.unwrap();
        {
            let mut gave_up = pin!(pool.acquire());
            assert!(poll_once(gave_up.as_mut()).is_none());
        }
        drop(held);
        assert_eq!(pool.status()[0].in_flight, 0, "the slot is free again");
        assert!(pool.acquire().await.is_ok());
    }

    #[tokio::test]
    async fn the_queue_is_bounded_and_takers_wait_for_room() {
        let pool = Pool::new(1, 1, None);
        ready(&pool, 0, 1);
        let held = pool.acquire().await.unwrap();
        let mut queued = pin!(pool.acquire());
        let mut no_room = pin!(pool.acquire());
        assert!(poll_once(queued.as_mut()).is_none() && poll_once(no_room.as_mut()).is_none());
        assert_eq!(pool.queued(), 1, "one waits in the queue, the other for room in it");
        drop(held);
        let got = poll_once(queued.as_mut());
        assert!(got.is_some());
        assert!(poll_once(no_room.as_mut()).is_none(), "it had no room: now it waits for a slot");
        assert_eq!(pool.queued(), 1);
    }

    #[tokio::test]
    async fn the_instance_with_most_room_serves_and_a_lease_of_an_old_process_frees_nothing() {
        let pool = Pool::new(2, 10, None);
        ready(&pool, 0, 1);
        ready(&pool, 1, 3);
        let lease = pool.acquire().await.unwrap();
        assert_eq!(lease.slot(), 1);
        // Instance 1's process ends and a new one is ready: the old lease counts for nothing.
        pool.set_phase(1, Phase::Restarting);
        ready(&pool, 1, 2);
        drop(lease);
        assert_eq!(pool.status()[1].in_flight, 0);
        let a = pool.acquire().await.unwrap();
        assert_eq!(a.slot(), 1, "the new process, with room for 2");
        let _b = pool.acquire().await.unwrap();
        let _c = pool.acquire().await.unwrap();
        assert_eq!(pool.status().iter().map(|s| s.in_flight).collect::<Vec<_>>(), [1, 2]);
        let mut full = pin!(pool.acquire());
        assert!(poll_once(full.as_mut()).is_none(), "three slots in all: the fourth waits");
    }

    #[tokio::test]
    async fn when_every_instance_is_failed_takers_fail_at_once_and_waiters_learn_why() {
        let pool = Pool::new(1, 10, None);
        ready(&pool, 0, 1);
        let _held = pool.acquire().await.unwrap();
        let mut waiting = pin!(pool.acquire());
        assert!(poll_once(waiting.as_mut()).is_none());
        pool.set_crashed(0, "it crashed");
        let until = Instant::now() + std::time::Duration::from_secs(60);
        pool.set_failed(0, "marked failed".into(), until);
        let why = poll_once(waiting.as_mut()).and_then(|r| r.err()).map(|e| e.to_string()).unwrap_or_default();
        assert!(why.starts_with("marked failed; it will be tried again in"), "{why}");
        let now = pool.acquire().await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(now.starts_with("marked failed"), "{now}");
    }

    #[tokio::test]
    async fn waiters_keep_waiting_while_instances_crash_and_get_the_next_process() {
        let pool = Pool::new(1, 10, None);
        let mut waiting = pin!(pool.acquire());
        assert!(poll_once(waiting.as_mut()).is_none());
        for _ in 0..3 {
            pool.set_phase(0, Phase::Starting);
            pool.set_crashed(0, "killed during the handshake");
            assert!(poll_once(waiting.as_mut()).is_none(), "a task that never reached a process keeps waiting");
        }
        ready(&pool, 0, 1);
        assert!(poll_once(waiting.as_mut()).is_some_and(|r| r.is_ok()), "the next process serves it");
    }

    #[tokio::test]
    async fn a_taker_waits_at_most_the_queue_timeout() {
        // No instance ever becomes ready: the limit is what ends the wait (however late
        // a loaded machine fires it, the outcome is the same).
        let limit = std::time::Duration::from_millis(200);
        let pool = Pool::new(1, 10, Some(limit));
        let why = pool.acquire().await.err();
        assert_eq!(why, Some(AcquireError::QueueTimeout(limit)));
        assert!(why.is_some_and(|e| e.to_string().starts_with("no slot came free within 0.2 s (queueTimeoutSecs)")));
        assert_eq!(pool.queued(), 0, "it left the queue");
    }

    #[tokio::test]
    async fn closing_refuses_waiters_and_later_takers() {
        let pool = Pool::new(1, 10, None);
        ready(&pool, 0, 1);
        let _held = pool.acquire().await.unwrap();
        let mut waiting = pin!(pool.acquire());
        assert!(poll_once(waiting.as_mut()).is_none());
        pool.close();
        assert!(pool.is_closed());
        let why = poll_once(waiting.as_mut()).and_then(|r| r.err()).map(|e| e.to_string());
        assert_eq!(why.as_deref(), Some("the plugin is shutting down"));
        assert_eq!(pool.acquire().await.err().map(|e| e.to_string()).as_deref(), Some("the plugin is shutting down"));
    }

    #[tokio::test]
    async fn the_last_handshake_says_what_is_idempotent() {
        let pool = Pool::new(1, 1, None);
        assert!(!pool.is_idempotent(TaskName::Delete));
        let ready =
            Ready { conn: conn(1), capacity: 1, declared: vec![TaskName::Delete], idempotent: vec![TaskName::Delete] };
        pool.set_ready(0, ready);
        assert!(pool.is_idempotent(TaskName::Delete) && !pool.is_idempotent(TaskName::Create));
    }
}
