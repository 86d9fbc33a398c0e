//! The durable journal: every accepted task and every result, in SQLite, committed before
//! the daemon acknowledges them.
//!
//! One thread owns the database. Callers queue operations and await their answers; the
//! thread applies everything queued in one transaction and one commit (`synchronous=FULL`,
//! so one fsync), then answers each. Under load many operations share a commit; alone, an
//! operation costs one.
//!
//! An operation is queued when its call is first polled, and from then on it commits
//! whether or not the caller still waits: dropping the future (a client that hung up, a
//! timeout) loses only the answer, never the write ([`Journal`]). A result that must not
//! be lost is written with [`until_recorded`].
//!
//! The task body (which holds credentials) is kept only until the task is done; results
//! (scrubbed of credentials except under their `result` member, see [`crate::wire::redact`])
//! are kept until pruned. The file is readable by its owner only.
//!
//! Deleted data does not linger in the files: `secure_delete` makes SQLite overwrite what
//! it deletes with zeros, and the write-ahead log (which still holds every page as it was
//! written, task bodies included) is checkpointed into the database and truncated to
//! nothing within [`writer::TIDY_AFTER`] of any commit, at most once per that interval under
//! load, and on [`Journal::checkpoint`] (a clean stop).
//!
//! Every table is created in [`schema`]; the clusters' records are read and written by
//! `cluster/store.rs` through [`Journal::run`]. Uses the core (whose files are checked
//! like the journal's, `core/trust.rs`), the wire and the log; nothing above.

#[cfg(test)]
pub(crate) mod contract;
pub mod copy;
mod fleet;
mod health;
mod postgres;
mod retry;
pub mod schema;
pub mod spill;
pub mod sql;
mod sqlite;
mod writer;

pub use retry::until_recorded;

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{broadcast, oneshot};

pub use fleet::{Fate, Member, Orphan, RESTARTED, Settings};
pub use health::Health;
use sql::{Arg, Db, Dialect, Row, SqlError};

use writer::{Done, Job, Op};

/// A handle on the journal; cheap to clone.
///
/// # Errors
/// Every operation fails with a [`JournalError`] when SQLite fails (the statement, or the
/// commit of the batch it is in: then nothing of that batch is kept) or the journal thread
/// has stopped.
///
/// # Cancellation
/// An operation is sent to the journal thread when its future is first polled. From then
/// on it is applied and committed with its batch even if the future is dropped; only its
/// answer is lost. A future dropped before it was polled does nothing.
#[derive(Clone)]
pub struct Journal {
    jobs: std_mpsc::Sender<Op>,
    place: Arc<str>,
    health: Arc<Health>,
    dialect: Dialect,
    events: broadcast::Sender<Event>,
    /// Held by every handle: the listener thread ends when the last one is dropped.
    _alive: Arc<()>,
}

/// Something that changed in the journal, for whoever waits on it: told after the
/// commit, by this process's own operations and (PostgreSQL) by the other daemons'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A task any daemon may claim was queued.
    Queued,
    /// A task is done.
    Done(Arc<str>),
    /// A daemon joined or left.
    Fleet,
    /// Something was missed (the listener reconnected): look again.
    Lagged,
}

/// Events kept for a subscriber that is behind; one further behind gets
/// [`Event::Lagged`]'s meaning (look again).
const EVENTS: usize = 1024;

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Accepted, not yet handed to a plugin.
    Queued,
    /// Handed to its plugin.
    Running,
    /// Finished, with a result.
    Done,
}

impl State {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Done => "done",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "queued" => State::Queued,
            "running" => State::Running,
            _ => State::Done,
        }
    }
}

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Its id.
    pub task_id: String,
    /// Its name.
    pub task_name: String,
    /// Where it is.
    pub state: State,
    /// When it was accepted (RFC 3339, UTC).
    pub submitted_at: String,
    /// When it was handed to its plugin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// How many times it was started (more than 1 after a re-run on recovery).
    pub attempts: u32,
    /// The plugin it was sent to, once started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Its `clusterId`, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Why it waits, while no daemon of the fleet can run it (`no live daemon runs
    /// automator:chef`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The result, once done: its JSON text as journaled (no tree is built of it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
}

/// A task that was accepted but not finished, for recovery after a restart.
#[derive(Debug, Clone)]
pub struct Unfinished {
    /// Its id.
    pub task_id: String,
    /// Queued or running when the daemon stopped.
    pub state: State,
    /// The task as submitted.
    pub raw: String,
}

/// Task counts by state.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Queued.
    pub queued: u64,
    /// Running.
    pub running: u64,
    /// Done and kept.
    pub done: u64,
}

/// The journal failed.
///
/// A message rather than kinds: its causes are free-form (SQLite's errors, a file or
/// folder that cannot be created or trusted, a thread that stopped), no caller acts on
/// one differently from another (every caller reports it, or tries again), and it is
/// cloned to every operation of a batch whose commit failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("journal {place}: {message}")]
pub struct JournalError {
    /// Where the journal is: its file, or its database server (never with a password).
    pub place: Arc<str>,
    /// What happened.
    pub message: String,
}

impl Journal {
    /// Opens (creating if needed) `<data_dir>/journal.sqlite3` and starts its thread.
    ///
    /// # Errors
    /// When the folder or database cannot be created or read, has a newer schema, or
    /// cannot be trusted.
    pub fn open(data_dir: &Path) -> Result<Journal, JournalError> {
        let path = data_dir.join(sqlite::FILE);
        let place: Arc<str> = path.display().to_string().into();
        let fail = |message: String| JournalError { place: Arc::clone(&place), message };
        let (engine, real) = sqlite::Sqlite::open(data_dir).map_err(fail)?;
        let health = Health::of_folder(real.parent().map(Path::to_path_buf).unwrap_or_default());
        Journal::launch(move || Ok(engine), Arc::from(real.display().to_string()), health, Dialect::Sqlite)
    }

    /// Opens the journal `settings` name: SQLite in `data_dir` when they name no
    /// PostgreSQL URL. On PostgreSQL it connects (blocking until it has, or failed),
    /// brings the schema up to date, and listens to the other daemons' notifications.
    ///
    /// # Errors
    /// As [`Journal::open`]; for PostgreSQL, when the URL is wrong, or the server cannot
    /// be reached, refuses the login, or has a newer schema. No error holds the password.
    pub fn open_with(settings: &Settings, data_dir: &Path) -> Result<Journal, JournalError> {
        let Some(url) = &settings.url else { return Journal::open(data_dir) };
        let target = postgres::connect::Target::parse(url, settings.password_file.as_deref())
            .map_err(|e| JournalError { place: "journal.url".into(), message: e.to_string() })?;
        let place: Arc<str> = target.place().into();
        let by = settings.member_name();
        let for_writer = target.clone();
        let journal = Journal::launch(
            move || postgres::engine::Pg::open(for_writer, &by),
            place,
            Health::default(),
            Dialect::Postgres,
        )?;
        postgres::listen::start(target, journal.events.clone(), Arc::downgrade(&journal._alive))
            .map_err(|e| journal.error(format!("cannot start the journal's listener thread: {e}")))?;
        Ok(journal)
    }

    /// Starts the writer thread on the engine `make` opens there (a PostgreSQL client
    /// must be made outside the async runtime); returns once it is open.
    fn launch<E: writer::Engine + 'static>(
        make: impl FnOnce() -> Result<E, String> + Send + 'static,
        place: Arc<str>,
        health: Health,
        dialect: Dialect,
    ) -> Result<Journal, JournalError> {
        let fail = |message: String| JournalError { place: Arc::clone(&place), message };
        let (tx, rx) = std_mpsc::channel::<Op>();
        let (opened_tx, opened) = std_mpsc::sync_channel::<Result<(), String>>(1);
        let health = Arc::new(health);
        let thread_health = Arc::clone(&health);
        std::thread::Builder::new()
            .name("loom-journal".into())
            .spawn(move || match make() {
                Ok(mut engine) => {
                    let _ = opened_tx.send(Ok(()));
                    writer::run(&mut engine, &rx, &thread_health);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })
            .map_err(|e| fail(format!("cannot start the journal thread: {e}")))?;
        opened.recv().map_err(|_| fail("the journal thread stopped while opening".into()))?.map_err(fail)?;
        let (events, _) = broadcast::channel(EVENTS);
        Ok(Journal { jobs: tx, place, health, dialect, events, _alive: Arc::new(()) })
    }

    /// Whether the journal can write, as its last writes found it.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Where the journal is: its file, or its database server (never with a password).
    pub fn place(&self) -> &str {
        &self.place
    }

    /// What changes from now on ([`Event`]). A receiver that falls behind by more than
    /// a thousand events gets `RecvError::Lagged`: treat it as [`Event::Lagged`].
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Waits until task `id` is done, wherever it runs, and returns it (at once if it
    /// is; `None` if it is unknown), or until it waits because no live daemon of the
    /// fleet can run it (then it is returned queued, saying why). Woken by
    /// [`Event::Done`]; looks again every 5 s, also in case a notification was lost (a
    /// database connection that dropped).
    ///
    /// # Errors
    /// When the journal fails.
    ///
    /// # Cancellation
    /// Dropping the future only stops the wait.
    pub async fn wait_done(&self, id: &str) -> Result<Option<Record>, JournalError> {
        let mut events = self.events();
        loop {
            let record = self.get(id).await?;
            if record.as_ref().is_none_or(|r| r.state == State::Done || r.waiting.is_some()) {
                return Ok(record);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Ok(Event::Done(done))) if &*done == id => break,
                    Ok(Ok(_)) => {}
                    // Lagged or closed, or time to look again.
                    Ok(Err(_)) | Err(_) => break,
                }
            }
        }
    }

    /// Which engine keeps it.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn error(&self, message: String) -> JournalError {
        JournalError { place: Arc::clone(&self.place), message }
    }

    /// Records a new task as queued, unless one with this id exists: then returns it and
    /// records nothing. `needs` is the plugins that can run it (a JSON array of plugin
    /// keys); `owner`, the daemon that claims it at once (it runs it), or `None` to leave
    /// it to whichever daemon claims it ([`Journal::claim`]).
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]); then nothing is recorded.
    pub async fn accept(
        &self,
        task_id: &str,
        task_name: &str,
        needs: &str,
        owner: Option<&Member>,
        raw: std::sync::Arc<Box<RawValue>>,
    ) -> Result<Option<Record>, JournalError> {
        let (id, name, needs) = (task_id.to_owned(), task_name.to_owned(), needs.to_owned());
        let owner = owner.map(|m| Arc::clone(&m.id));
        let unowned = owner.is_none();
        let cluster = cluster_of(raw.get());
        let accepted = self
            .run(move |c| {
                if let Some(existing) = get(c, &id)? {
                    return Ok(Some(existing));
                }
                c.exec(
                    "INSERT INTO tasks (task_id, task_name, state, task, submitted_at, needs, owner, cluster)
                     VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7)",
                    &[
                        (&id).into(),
                        (&name).into(),
                        raw.get().into(),
                        now_ms().into(),
                        (&needs).into(),
                        owner.as_deref().into(),
                        cluster.as_deref().into(),
                    ],
                )?;
                if owner.is_none() {
                    if c.dialect() == Dialect::Postgres {
                        // Said at once when no live daemon can run it.
                        c.exec(
                            &format!("UPDATE tasks q SET waiting = {} WHERE q.task_id = $1", fleet::WHY_WAITING),
                            &[(&id).into()],
                        )?;
                    }
                    c.notify("loom_queued", "")?;
                }
                Ok(None)
            })
            .await?;
        if accepted.is_none() && unowned {
            let _ = self.events.send(Event::Queued);
        }
        Ok(accepted)
    }

    /// Marks a task that `me` owns running, sent to `plugin`, which declared it
    /// idempotent or not (committed before it reaches its plugin, so a crash never runs
    /// it twice unknowingly). Returns its attempt (1, 2 ...), or `None` when `me` no
    /// longer owns it (its lease ran out and another daemon took it over): then it must
    /// not be sent. A task already running under `me` is started again: its earlier
    /// start was committed but its answer lost (a connection that dropped), and nothing
    /// is sent before an answer.
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]); then the task is still recorded as it was.
    pub async fn start(
        &self,
        task_id: &str,
        me: &Member,
        plugin: &str,
        idempotent: bool,
    ) -> Result<Option<u32>, JournalError> {
        let (id, owner, plugin) = (task_id.to_owned(), Arc::clone(&me.id), plugin.to_owned());
        self.run(move |c| {
            let lease = match c.dialect() {
                Dialect::Sqlite => String::new(),
                Dialect::Postgres => format!(
                    "AND EXISTS (SELECT 1 FROM daemons d WHERE d.id = $2 AND d.stopped = 0 AND d.lease_until > {})",
                    c.dialect().now_ms()
                ),
            };
            let row = c.row(
                &format!(
                    "UPDATE tasks SET state = 'running', started_at = $3, attempts = attempts + 1, plugin = $4, idempotent = $5
                     WHERE task_id = $1 AND owner = $2 AND state IN ('queued', 'running') {lease}
                     RETURNING attempts"
                ),
                &[(&id).into(), (&*owner).into(), now_ms().into(), (&plugin).into(), idempotent.into()],
            )?;
            row.map(|r| r.count(0)).transpose()
        })
        .await
    }

    /// Records the result (JSON text) of a task that `me` owns, and forgets its body.
    /// Returns `false`, recording nothing, when `me` no longer owns it: another daemon
    /// took it over after `me`'s lease ran out, and its record stands.
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]); then the task keeps its body and its state:
    /// try again ([`until_recorded`]).
    pub async fn finish_owned(&self, task_id: &str, me: &Member, result: Arc<str>) -> Result<bool, JournalError> {
        let (id, owner) = (task_id.to_owned(), Arc::clone(&me.id));
        let done = self
            .run(move |c| {
                let n = c.exec(
                    "UPDATE tasks SET state = 'done', result = $3, finished_at = $4, task = NULL, waiting = NULL, needs = NULL
                     WHERE task_id = $1 AND owner = $2 AND state <> 'done'",
                    &[(&id).into(), (&*owner).into(), (&*result).into(), now_ms().into()],
                )?;
                if n == 1 {
                    c.notify("loom_done", &id)?;
                }
                Ok(n == 1)
            })
            .await?;
        if done {
            let _ = self.events.send(Event::Done(task_id.into()));
        }
        Ok(done)
    }

    /// Records a task's result (JSON text) and forgets its body, whoever owns it, unless
    /// it is done already (a result spilled at a stop, a task an older journal left).
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]); then the task keeps its body and its state:
    /// try again ([`until_recorded`]).
    pub async fn finish(&self, task_id: &str, result: impl Into<std::sync::Arc<str>>) -> Result<(), JournalError> {
        let result: std::sync::Arc<str> = result.into();
        let id = task_id.to_owned();
        self.run(move |c| {
            c.exec(
                "UPDATE tasks SET state = 'done', result = $2, finished_at = $3, task = NULL, owner = NULL, waiting = NULL,
                     needs = NULL
                 WHERE task_id = $1 AND state <> 'done'",
                &[(&id).into(), (&*result).into(), now_ms().into()],
            )?;
            c.notify("loom_done", &id)
        })
        .await?;
        let _ = self.events.send(Event::Done(task_id.into()));
        Ok(())
    }

    /// Puts a task back in the queue (a re-run after a restart).
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]).
    pub async fn requeue(&self, task_id: &str) -> Result<(), JournalError> {
        let id = task_id.to_owned();
        self.run(move |c| {
            c.exec("UPDATE tasks SET state = 'queued', owner = NULL WHERE task_id = $1", &[(&id).into()])?;
            c.notify("loom_queued", "")
        })
        .await?;
        let _ = self.events.send(Event::Queued);
        Ok(())
    }

    /// The task with this id.
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]).
    pub async fn get(&self, task_id: &str) -> Result<Option<Record>, JournalError> {
        let id = task_id.to_owned();
        self.run(move |c| get(c, &id)).await
    }

    /// Tasks newest first, as [`Listing`] asks: at most `limit` (1 to 500), and the
    /// cursor of the next page when there may be more.
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]).
    pub async fn list(&self, listing: Listing) -> Result<(Vec<Summary>, Option<String>), JournalError> {
        self.run(move |c| list(c, &listing)).await
    }

    /// Every task not done, oldest first.
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]).
    pub async fn unfinished(&self) -> Result<Vec<Unfinished>, JournalError> {
        self.run(|c| {
            let rows = c.rows(
                "SELECT task_id, state, COALESCE(task, '') FROM tasks WHERE state != 'done' ORDER BY submitted_at",
                &[],
            )?;
            rows.iter()
                .map(|r| Ok(Unfinished { task_id: r.text(0)?, state: State::parse(&r.text(1)?), raw: r.text(2)? }))
                .collect()
        })
        .await
    }

    /// Deletes finished tasks older than `retention`; returns how many.
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]); then nothing is deleted.
    pub async fn prune(&self, retention: Duration) -> Result<usize, JournalError> {
        let before = now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        self.run(move |c| c.exec("DELETE FROM tasks WHERE state = 'done' AND finished_at <= $1", &[before.into()]))
            .await
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Takes what was deleted out of every file, now (after what is queued before):
    /// SQLite checkpoints its write-ahead log into the database and truncates it. The
    /// journal does this by itself within [`writer::TIDY_AFTER`] of a commit; call it before
    /// the process exits.
    ///
    /// # Errors
    /// When SQLite could not checkpoint it all (another connection reads the file) or the
    /// journal thread has stopped.
    pub async fn checkpoint(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(Op::Tidy(tx)).map_err(|_| self.error("the journal thread has stopped".into()))?;
        rx.await.map_err(|_| self.error("the journal thread dropped the request".into()))?.map_err(|e| self.error(e))
    }

    /// Task counts by state.
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]).
    pub async fn counts(&self) -> Result<Counts, JournalError> {
        self.run(|c| {
            let mut counts = Counts::default();
            for row in c.rows("SELECT state, COUNT(*) FROM tasks GROUP BY state", &[])? {
                let n = u64::try_from(row.int(1)?).unwrap_or(0);
                match State::parse(&row.text(0)?) {
                    State::Queued => counts.queued = n,
                    State::Running => counts.running = n,
                    State::Done => counts.done = n,
                }
            }
            Ok(counts)
        })
        .await
    }

    /// Runs `f` on the journal thread inside the next batch; answers after the commit.
    /// Everything `f` does commits (or fails) together: when one of its statements fails,
    /// everything it did is undone, whatever `f` made of the error.
    ///
    /// # Errors
    /// `f`'s error, or the batch's commit failed (then nothing `f` did is kept), or the
    /// journal thread has stopped.
    ///
    /// # Cancellation
    /// `f` is queued when this future is first polled (before its first wait), and then
    /// runs and commits even if the future is dropped: only the answer is lost.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Db) -> Result<T, SqlError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let (tx, rx) = oneshot::channel();
        let health = Arc::clone(&self.health);
        let job: Job = Box::new(move |c| {
            let out = f(c);
            if let Err(e) = &out
                && e.storage
            {
                health.failed(&e.message);
            }
            let done: Done = Box::new(move |committed: Result<(), String>| {
                let answer = match (out, committed) {
                    (Err(e), _) => Err(e.message),
                    (Ok(_), Err(e)) => Err(format!("commit failed: {e}")),
                    (Ok(v), Ok(())) => Ok(v),
                };
                let _ = tx.send(answer);
            });
            done
        });
        self.jobs.send(Op::Job(job)).map_err(|_| self.error("the journal thread has stopped".into()))?;
        rx.await.map_err(|_| self.error("the journal thread dropped the request".into()))?.map_err(|e| self.error(e))
    }
}

fn get(c: &mut dyn Db, id: &str) -> Result<Option<Record>, SqlError> {
    let row = c.row(
        "SELECT task_id, task_name, state, submitted_at, started_at, finished_at, attempts, result, waiting, plugin, cluster
         FROM tasks WHERE task_id = $1",
        &[id.into()],
    )?;
    row.map(|r| read_record(&r)).transpose()
}

/// Which tasks [`Journal::list`] returns: each given field must match exactly.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// `queued`, `running` or `done`.
    pub state: Option<String>,
    /// The plugin it was sent to.
    pub plugin: Option<String>,
    /// The task's name (`CREATE` ...).
    pub name: Option<String>,
    /// Its `clusterId`.
    pub cluster: Option<String>,
    /// Page size.
    pub limit: usize,
    /// Older than this cursor (from the previous page).
    pub before: Option<String>,
}

/// A task in a listing: no body, no result (those are `GET /v1/tasks/{id}`'s).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Its id.
    pub task_id: String,
    /// Its name.
    pub task_name: String,
    /// Where it is.
    pub state: State,
    /// The plugin it was sent to, once started.
    pub plugin: Option<String>,
    /// Its `clusterId`, if it had one.
    pub cluster_id: Option<String>,
    /// When it was accepted.
    pub submitted_at: String,
    /// When it was (last) started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// How many times it was started.
    pub attempts: u32,
    /// Its result's `status`, once done.
    pub status: Option<i64>,
}

/// Most tasks one listing returns.
pub const MAX_LISTING: usize = 500;

fn list(c: &mut dyn Db, l: &Listing) -> Result<(Vec<Summary>, Option<String>), SqlError> {
    let limit = l.limit.clamp(1, MAX_LISTING);
    let before = l.before.as_deref().and_then(cursor);
    let mut filters = Vec::new();
    let mut args: Vec<Arg<'_>> = Vec::new();
    for (column, value) in [("state", &l.state), ("plugin", &l.plugin), ("task_name", &l.name), ("cluster", &l.cluster)]
    {
        if let Some(v) = value {
            args.push(v.as_str().into());
            filters.push(format!("{column} = ${}", args.len()));
        }
    }
    if let Some((ms, id)) = &before {
        args.push((*ms).into());
        args.push(id.as_str().into());
        let (m, i) = (args.len() - 1, args.len());
        filters.push(format!("(submitted_at < ${m} OR (submitted_at = ${m} AND task_id < ${i}))"));
    }
    let filter = if filters.is_empty() { String::new() } else { format!("WHERE {}", filters.join(" AND ")) };
    // The status is read by the database: a result can be megabytes, a page has hundreds.
    let status = match c.dialect() {
        Dialect::Sqlite => "CASE WHEN json_valid(result) THEN json_extract(result, '$.status') END",
        Dialect::Postgres => {
            "CASE WHEN jsonb_typeof(result::jsonb -> 'status') = 'number' \
             THEN (result::jsonb ->> 'status')::numeric::bigint END"
        }
    };
    let rows = c.rows(
        &format!(
            "SELECT task_id, task_name, state, plugin, cluster, submitted_at, started_at, finished_at, attempts, {status}
             FROM tasks {filter} ORDER BY submitted_at DESC, task_id DESC LIMIT {}",
            limit + 1
        ),
        &args,
    )?;
    let mut out = Vec::with_capacity(limit);
    let mut last = None;
    for r in rows.iter().take(limit) {
        let submitted = r.int(5)?;
        let task_id = r.text(0)?;
        last = Some(format!("{submitted}_{task_id}"));
        out.push(Summary {
            task_id,
            task_name: r.text(1)?,
            state: State::parse(&r.text(2)?),
            plugin: r.opt_text(3)?,
            cluster_id: r.opt_text(4)?,
            submitted_at: rfc3339(submitted),
            started_at: r.opt_int(6)?.map(rfc3339),
            finished_at: r.opt_int(7)?.map(rfc3339),
            attempts: r.count(8)?,
            status: r.opt_int(9).ok().flatten(),
        });
    }
    let next = if rows.len() > limit { last } else { None };
    Ok((out, next))
}

/// A cursor `<submitted ms>_<task id>` (a listing's `next`); `None` when it is not one.
pub fn cursor(cursor: &str) -> Option<(i64, String)> {
    let (ms, id) = cursor.split_once('_')?;
    Some((ms.parse().ok()?, id.to_owned()))
}

/// A task's `clusterId` (a string or a number, as Loom sent either), if it has one.
fn cluster_of(task: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Task {
        #[serde(rename = "clusterId")]
        cluster_id: Option<serde_json::Value>,
    }
    match serde_json::from_str::<Task>(task).ok()?.cluster_id? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn read_record(r: &Row) -> Result<Record, SqlError> {
    Ok(Record {
        task_id: r.text(0)?,
        task_name: r.text(1)?,
        state: State::parse(&r.text(2)?),
        submitted_at: rfc3339(r.int(3)?),
        started_at: r.opt_int(4)?.map(rfc3339),
        finished_at: r.opt_int(5)?.map(rfc3339),
        attempts: r.count(6)?,
        result: r.opt_text(7)?.and_then(|t| RawValue::from_string(t).ok()),
        waiting: r.opt_text(8)?,
        plugin: r.opt_text(9)?,
        cluster_id: r.opt_text(10)?,
    })
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Milliseconds since the epoch as `2026-11-25T08:30:00.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn me() -> Member {
        Member::this_process("test")
    }

    fn raw(text: &str) -> std::sync::Arc<Box<RawValue>> {
        std::sync::Arc::new(RawValue::from_string(text.to_owned()).unwrap())
    }

    #[tokio::test]
    async fn a_task_goes_from_queued_to_done_and_is_accepted_once() {
        let me = me();
        let dir = crate::core::trust::test_dir();
        let j = Journal::open(dir.path()).unwrap();
        assert!(j.accept("t1", "CREATE", "[]", Some(&me), raw(r#"{"taskId":"t1"}"#)).await.unwrap().is_none());
        let again =
            j.accept("t1", "CREATE", "[]", Some(&me), raw(r#"{"taskId":"t1","other":1}"#)).await.unwrap().unwrap();
        assert_eq!(again.state, State::Queued);
        j.start("t1", &me, "p", false).await.unwrap();
        assert_eq!(j.get("t1").await.unwrap().unwrap().state, State::Running);
        j.finish("t1", r#"{"status":0}"#).await.unwrap();
        let done = j.get("t1").await.unwrap().unwrap();
        assert_eq!((done.state, done.attempts), (State::Done, 1));
        assert_eq!(done.result.map(|r| r.get().to_owned()).as_deref(), Some(r#"{"status":0}"#));
        assert!(j.get("nope").await.unwrap().is_none());
        assert!(j.unfinished().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn survives_a_reopen_with_unfinished_tasks_and_forgets_bodies_of_finished_ones() {
        let me = me();
        let dir = crate::core::trust::test_dir();
        {
            let j = Journal::open(dir.path()).unwrap();
            j.accept("q", "INSTALL", "[]", Some(&me), raw("{\"q\":1}")).await.unwrap();
            j.accept("r", "INSTALL", "[]", Some(&me), raw("{\"r\":1}")).await.unwrap();
            j.start("r", &me, "p", false).await.unwrap();
            j.accept("d", "INSTALL", "[]", Some(&me), raw("{\"password\":\"hunter2\"}")).await.unwrap();
            j.finish("d", r#"{"status":1}"#).await.unwrap();
        }
        let j = Journal::open(dir.path()).unwrap();
        let unfinished = j.unfinished().await.unwrap();
        let summary: Vec<_> = unfinished.iter().map(|u| (u.task_id.as_str(), u.state, u.raw.as_str())).collect();
        assert_eq!(summary, [("q", State::Queued, "{\"q\":1}"), ("r", State::Running, "{\"r\":1}")]);
        for (id, starts) in [("q", 0), ("r", 1)] {
            assert_eq!(j.get(id).await.unwrap().map(|r| r.attempts), Some(starts), "starts of {id}");
        }
        // The finished task's body (and its password) is gone; its result stays.
        let c = rusqlite::Connection::open(dir.path().join(sqlite::FILE)).unwrap();
        let body: Option<String> = c.query_row("SELECT task FROM tasks WHERE task_id = 'd'", [], |r| r.get(0)).unwrap();
        assert_eq!(body, None);
        let counts = j.counts().await.unwrap();
        assert_eq!((counts.queued, counts.running, counts.done), (1, 1, 1));
    }

    #[tokio::test]
    async fn an_operation_whose_caller_stopped_waiting_still_commits() {
        let me = me();
        use futures_util::FutureExt;
        let dir = crate::core::trust::test_dir();
        let j = Journal::open(dir.path()).unwrap();
        // Polled once (which queues it), then dropped before its answer.
        let _ = j.accept("t", "CREATE", "[]", Some(&me), raw("{}")).now_or_never();
        // Operations are applied in the order they were queued: this one sees it.
        assert_eq!(j.get("t").await.unwrap().map(|r| r.state), Some(State::Queued));
        let reopened = Journal::open(dir.path()).unwrap();
        assert_eq!(reopened.counts().await.unwrap().queued, 1, "committed");
    }

    #[tokio::test]
    async fn many_concurrent_operations_share_commits_and_all_land() {
        let dir = crate::core::trust::test_dir();
        let j = Journal::open(dir.path()).unwrap();
        let handles: Vec<_> = (0..500)
            .map(|i| {
                let (j, me) = (j.clone(), me());
                tokio::spawn(async move { j.accept(&format!("t{i}"), "START", "[]", Some(&me), raw("{}")).await })
            })
            .collect();
        for h in handles {
            assert!(h.await.unwrap().unwrap().is_none());
        }
        assert_eq!(j.counts().await.unwrap().queued, 500);
    }

    #[tokio::test]
    async fn prune_removes_only_old_finished_tasks() {
        let me = me();
        let dir = crate::core::trust::test_dir();
        let j = Journal::open(dir.path()).unwrap();
        j.accept("old", "START", "[]", Some(&me), raw("{}")).await.unwrap();
        j.finish("old", r#"{"status":0}"#).await.unwrap();
        j.accept("open", "START", "[]", Some(&me), raw("{}")).await.unwrap();
        assert_eq!(j.prune(Duration::from_secs(3600)).await.unwrap(), 0);
        assert_eq!(j.prune(Duration::ZERO).await.unwrap(), 1);
        assert!(j.get("old").await.unwrap().is_none());
        assert!(j.get("open").await.unwrap().is_some());
    }

    /// The files of the journal in `dir` that hold `needle`.
    fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read(e.path()).unwrap_or_default().windows(needle.len()).any(|w| w == needle.as_bytes())
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_finished_tasks_body_and_a_pruned_result_leave_every_file() {
        let me = me();
        let dir = crate::core::trust::test_dir();
        let j = Journal::open(dir.path()).unwrap();
        // Bodies of all sizes: one in its page, one in overflow pages.
        let small = r#"{"password":"body-secret-small"}"#.to_owned();
        let large = format!(r#"{{"password":"body-secret-large","pad":"{}"}}"#, "x".repeat(20_000));
        for (id, body) in [("s", &small), ("l", &large)] {
            j.accept(id, "CREATE", "[]", Some(&me), raw(body)).await.unwrap();
            j.start(id, &me, "p", false).await.unwrap();
        }
        j.checkpoint().await.unwrap();
        assert_eq!(files_holding(dir.path(), "body-secret-small"), ["journal.sqlite3"], "written");
        for id in ["s", "l"] {
            j.finish(id, r#"{"status":0,"stdout":"result-text-kept"}"#).await.unwrap();
        }
        j.checkpoint().await.unwrap();
        for needle in ["body-secret-small", "body-secret-large"] {
            assert!(
                files_holding(dir.path(), needle).is_empty(),
                "{needle} in {:?}",
                files_holding(dir.path(), needle)
            );
        }
        assert_eq!(files_holding(dir.path(), "result-text-kept"), ["journal.sqlite3"]);
        assert_eq!(j.prune(Duration::ZERO).await.unwrap(), 2);
        j.checkpoint().await.unwrap();
        assert!(files_holding(dir.path(), "result-text-kept").is_empty());
    }

    #[tokio::test]
    async fn the_write_ahead_log_is_truncated_soon_after_a_commit_without_being_asked() {
        let me = me();
        let dir = crate::core::trust::test_dir();
        let j = Journal::open(dir.path()).unwrap();
        j.accept("t", "CREATE", "[]", Some(&me), raw(r#"{"password":"body-secret-wal"}"#)).await.unwrap();
        j.finish("t", r#"{"status":0}"#).await.unwrap();
        // Nothing signals the journal thread's own checkpoint: watch the files, for far
        // longer than TIDY_AFTER.
        let deadline = Instant::now() + writer::TIDY_AFTER * 30;
        while !files_holding(dir.path(), "body-secret-wal").is_empty() {
            assert!(Instant::now() < deadline, "still in {:?}", files_holding(dir.path(), "body-secret-wal"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(std::fs::metadata(dir.path().join("journal.sqlite3-wal")).unwrap().len(), 0);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_595_400_123), "2026-11-25T08:30:00.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::core::trust::test_dir();
        let j = Journal::open(&dir.path().join("data")).unwrap();
        assert_eq!(std::fs::metadata(j.place()).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(dir.path().join("data")).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_data_folder_others_can_write_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::core::trust::test_dir();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        for mode in [0o777, 0o770, 0o1777] {
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Journal::open(&data).err().expect("refused").message;
            assert!(err.starts_with(&format!("data folder: {}", data.display())), "{err}");
            assert!(err.contains("chmod go-w") || err.contains("sticky"), "{err}");
        }
        assert!(!data.join("journal.sqlite3").exists(), "nothing was created in it");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(Journal::open(&data).is_ok());
    }

    #[test]
    fn the_journal_never_follows_a_symbolic_link() {
        let dir = crate::core::trust::test_dir();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "").unwrap();
        for name in ["journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm", "journal.sqlite3-journal"] {
            let data = dir.path().join(format!("data-{name}"));
            std::fs::create_dir(&data).unwrap();
            std::os::unix::fs::symlink(&elsewhere, data.join(name)).unwrap();
            let err = Journal::open(&data).err().expect("refused").message;
            assert!(err.contains(&format!("{} is a symbolic link", data.join(name).display())), "{err}");
        }
        assert_eq!(std::fs::metadata(&elsewhere).unwrap().len(), 0, "the link's target was not written");
        // A data folder reached through a (trusted) link is fine: the link is resolved first.
        let real = dir.path().join("real");
        std::os::unix::fs::symlink(&real, dir.path().join("via")).unwrap();
        std::fs::create_dir(&real).unwrap();
        assert!(Journal::open(&dir.path().join("via")).is_ok());
        assert!(real.join("journal.sqlite3").is_file());
    }
}
