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
//! nothing within [`CHECKPOINT_AFTER`] of any commit, at most once per that interval under
//! load, and on [`Journal::checkpoint`] (a clean stop).
//!
//! Every table is created in [`schema`]; the clusters' records are read and written by
//! `cluster/store.rs` through [`Journal::run`]. Uses the core (whose files are checked
//! like the journal's, `core/trust.rs`), the wire and the log; nothing above.

mod health;
mod postgres;
mod retry;
pub mod schema;
pub mod spill;

pub use retry::until_recorded;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

pub use health::Health;
use health::is_storage_error;
use schema::VERSION as SCHEMA_VERSION;

/// Most operations applied in one transaction.
const BATCH: usize = 512;

/// How long after a commit the write-ahead log is checkpointed and truncated, taking what
/// was deleted (a finished task's body) out of every file. Under load, commits in between
/// share the checkpoint.
pub const CHECKPOINT_AFTER: Duration = Duration::from_secs(1);

type Done = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Done + Send>;

/// What the journal thread is asked to do.
enum Op {
    /// Apply an operation in the next batch.
    Job(Job),
    /// Checkpoint and truncate the write-ahead log now; answer when done.
    Checkpoint(oneshot::Sender<Result<(), String>>),
}

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
    path: PathBuf,
    health: Arc<Health>,
}

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
#[error("journal {}: {message}", path.display())]
pub struct JournalError {
    /// The database file.
    pub path: PathBuf,
    /// What happened.
    pub message: String,
}

impl Journal {
    /// Opens (creating if needed) `<data_dir>/journal.sqlite3` and starts its thread.
    ///
    /// # Errors
    /// When the folder or database cannot be created or read, has a newer schema, or
    /// cannot be trusted ([`open_safely`]).
    pub fn open(data_dir: &Path) -> Result<Journal, JournalError> {
        use std::os::unix::fs::PermissionsExt;
        let path = data_dir.join("journal.sqlite3");
        let fail = |message: String| JournalError { path: path.clone(), message };
        let (real, conn) = open_safely(data_dir).map_err(fail)?;
        // Tasks and results carry credentials.
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).map_err(|e| fail(e.to_string()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             PRAGMA secure_delete = ON;",
        )
        .and_then(|()| schema::create(&conn))
        .map_err(|e| fail(e.to_string()))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| fail(e.to_string()))?;
        if version > SCHEMA_VERSION {
            return Err(fail(format!(
                "schema version {version} is newer than this loom-provisioner understands ({SCHEMA_VERSION})"
            )));
        }
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}")).map_err(|e| fail(e.to_string()))?;

        let (tx, rx) = std_mpsc::channel::<Op>();
        let health = Arc::new(Health::of_folder(path.parent().map(Path::to_path_buf).unwrap_or_default()));
        let thread_health = Arc::clone(&health);
        std::thread::Builder::new()
            .name("loom-journal".into())
            .spawn(move || writer(&conn, &rx, &thread_health))
            .map_err(|e| fail(format!("cannot start the journal thread: {e}")))?;
        Ok(Journal { jobs: tx, path, health })
    }

    /// Whether the journal can write, as its last writes found it.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a new task as queued, unless one with this id exists: then returns it and
    /// records nothing.
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]); then nothing is recorded.
    pub async fn accept(
        &self,
        task_id: &str,
        task_name: &str,
        raw: std::sync::Arc<Box<RawValue>>,
    ) -> Result<Option<Record>, JournalError> {
        let (id, name) = (task_id.to_owned(), task_name.to_owned());
        self.run(move |c| {
            if let Some(existing) = get(c, &id)? {
                return Ok(Some(existing));
            }
            c.execute(
                "INSERT INTO tasks (task_id, task_name, state, task, submitted_at) VALUES (?1, ?2, 'queued', ?3, ?4)",
                params![id, name, raw.get(), now_ms()],
            )?;
            Ok(None)
        })
        .await
    }

    /// Marks a task running (committed before it reaches its plugin, so a crash never
    /// runs it twice unknowingly).
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]); then the task is still recorded as it was.
    pub async fn start(&self, task_id: &str) -> Result<(), JournalError> {
        let id = task_id.to_owned();
        self.run(move |c| {
            c.execute(
                "UPDATE tasks SET state = 'running', started_at = ?2, attempts = attempts + 1 WHERE task_id = ?1",
                params![id, now_ms()],
            )
            .map(drop)
        })
        .await
    }

    /// Records a task's result (JSON text) and forgets its body.
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]); then the task keeps its body and its state:
    /// try again ([`until_recorded`]).
    pub async fn finish(&self, task_id: &str, result: impl Into<std::sync::Arc<str>>) -> Result<(), JournalError> {
        let result: std::sync::Arc<str> = result.into();
        let id = task_id.to_owned();
        self.run(move |c| {
            c.execute(
                "UPDATE tasks SET state = 'done', result = ?2, finished_at = ?3, task = NULL WHERE task_id = ?1",
                params![id, &*result, now_ms()],
            )
            .map(drop)
        })
        .await
    }

    /// Puts a task back in the queue (a re-run after a restart).
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]).
    pub async fn requeue(&self, task_id: &str) -> Result<(), JournalError> {
        let id = task_id.to_owned();
        self.run(move |c| c.execute("UPDATE tasks SET state = 'queued' WHERE task_id = ?1", params![id]).map(drop))
            .await
    }

    /// The task with this id.
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]).
    pub async fn get(&self, task_id: &str) -> Result<Option<Record>, JournalError> {
        let id = task_id.to_owned();
        self.run(move |c| get(c, &id)).await
    }

    /// Every task not done, oldest first.
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]).
    pub async fn unfinished(&self) -> Result<Vec<Unfinished>, JournalError> {
        self.run(|c| {
            let mut q = c.prepare(
                "SELECT task_id, state, COALESCE(task, '') FROM tasks WHERE state != 'done' ORDER BY submitted_at",
            )?;
            let rows = q.query_map([], |r| {
                Ok(Unfinished { task_id: r.get(0)?, state: State::parse(&r.get::<_, String>(1)?), raw: r.get(2)? })
            })?;
            rows.collect()
        })
        .await
    }

    /// Deletes finished tasks older than `retention`; returns how many.
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]); then nothing is deleted.
    pub async fn prune(&self, retention: Duration) -> Result<usize, JournalError> {
        let before = now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        self.run(move |c| c.execute("DELETE FROM tasks WHERE state = 'done' AND finished_at <= ?1", params![before]))
            .await
    }

    /// Checkpoints the write-ahead log into the database and truncates it, now (after what
    /// is queued before). Deleted task bodies and results are then in no file. The journal
    /// does this by itself within [`CHECKPOINT_AFTER`] of a commit; call it before the
    /// process exits.
    ///
    /// # Errors
    /// When SQLite could not checkpoint it all (another connection reads the file) or the
    /// journal thread has stopped.
    pub async fn checkpoint(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        let fail = |message: String| JournalError { path: self.path.clone(), message };
        self.jobs.send(Op::Checkpoint(tx)).map_err(|_| fail("the journal thread has stopped".into()))?;
        rx.await.map_err(|_| fail("the journal thread dropped the request".into()))?.map_err(fail)
    }

    /// Task counts by state.
    ///
    /// # Errors
    /// When the journal fails ([`Journal`]).
    pub async fn counts(&self) -> Result<Counts, JournalError> {
        self.run(|c| {
            let mut q = c.prepare("SELECT state, COUNT(*) FROM tasks GROUP BY state")?;
            let mut counts = Counts::default();
            for row in q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (state, n) = row?;
                let n = u64::try_from(n).unwrap_or(0);
                match State::parse(&state) {
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
    /// Everything `f` does commits (or fails) together.
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
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, JournalError> {
        let (tx, rx) = oneshot::channel();
        let health = Arc::clone(&self.health);
        let job: Job = Box::new(move |c| {
            let out = f(c);
            if let Err(e) = &out
                && is_storage_error(e)
            {
                health.failed(&e.to_string());
            }
            Box::new(move |committed: Result<(), String>| {
                let answer = match (out, committed) {
                    (Err(e), _) => Err(e.to_string()),
                    (Ok(_), Err(e)) => Err(format!("commit failed: {e}")),
                    (Ok(v), Ok(())) => Ok(v),
                };
                let _ = tx.send(answer);
            })
        });
        let fail = |message: String| JournalError { path: self.path.clone(), message };
        self.jobs.send(Op::Job(job)).map_err(|_| fail("the journal thread has stopped".into()))?;
        rx.await.map_err(|_| fail("the journal thread dropped the request".into()))?.map_err(fail)
    }
}

/// Creates `data_dir` (mode 0700) if needed, checks it as [`crate::core::trust`] checks plugin
/// folders (owned by root or the daemon's user, writable by no one else, on its whole
/// path), and opens the database in it without following symbolic links: the database's
/// own name and its `-wal`, `-shm` and `-journal` companions (which SQLite opens by name
/// itself) must not be links, so nobody can point the journal, and the credentials in it,
/// at another file. Returns the database's path, links on the way resolved.
fn open_safely(data_dir: &Path) -> Result<(PathBuf, Connection), String> {
    use rusqlite::OpenFlags;
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| format!("cannot create the data folder {}: {e}", data_dir.display()))?;
    let dir = crate::core::trust::check(data_dir, crate::core::trust::Kind::Folder)
        .map_err(|e| format!("data folder: {e}"))?;
    let path = dir.join("journal.sqlite3");
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::symlink_metadata(&file) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symbolic link, and the journal never follows one (it could point the journal at another file); remove it",
                    file.display()
                ));
            }
            Ok(md) if !md.is_file() => return Err(format!("{} is not a regular file; remove it", file.display())),
            _ => {}
        }
    }
    // SQLITE_OPEN_NOFOLLOW: SQLite refuses a path with a link in it (O_NOFOLLOW and more).
    let conn = Connection::open_with_flags(&path, OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW)
        .map_err(|e| e.to_string())?;
    Ok((path, conn))
}

/// The journal thread: apply everything queued, commit once, answer; checkpoint the
/// write-ahead log [`CHECKPOINT_AFTER`] after a commit, or when asked.
fn writer(conn: &Connection, ops: &std_mpsc::Receiver<Op>, health: &Health) {
    let mut due: Option<Instant> = None;
    loop {
        let first = match due {
            None => ops.recv().map_err(|_| std_mpsc::RecvTimeoutError::Disconnected),
            Some(at) => ops.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        let first = match first {
            Ok(op) => op,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                due = checkpoint(conn).err().map(|_| Instant::now() + CHECKPOINT_AFTER);
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let (batch, asked) = gather(first, ops);
        if !batch.is_empty() && apply(conn, batch, health) && due.is_none() {
            due = Some(Instant::now() + CHECKPOINT_AFTER);
        }
        if let Some(reply) = asked {
            let done = checkpoint(conn);
            due = done.is_err().then(|| Instant::now() + CHECKPOINT_AFTER);
            let _ = reply.send(done);
        } else if due.is_some_and(|at| at <= Instant::now()) {
            // Busy without a pause: checkpoint between batches.
            due = checkpoint(conn).err().map(|_| Instant::now() + CHECKPOINT_AFTER);
        }
    }
    // Every handle is gone: leave nothing deleted behind.
    let _ = checkpoint(conn);
}

/// `first` and the operations queued behind it, up to [`BATCH`] or a checkpoint request
/// (which ends the batch, so that it covers everything queued before it).
fn gather(first: Op, ops: &std_mpsc::Receiver<Op>) -> (Vec<Job>, Option<oneshot::Sender<Result<(), String>>>) {
    let mut batch = Vec::new();
    let mut next = Some(first);
    while let Some(op) = next.take() {
        match op {
            Op::Job(job) => batch.push(job),
            Op::Checkpoint(reply) => return (batch, Some(reply)),
        }
        if batch.len() < BATCH {
            next = ops.try_recv().ok();
        }
    }
    (batch, None)
}

/// Applies `batch` in one transaction and answers each job. Returns whether it committed.
fn apply(conn: &Connection, batch: Vec<Job>, health: &Health) -> bool {
    let changes_before = conn.total_changes();
    let began = conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| e.to_string());
    let dones: Vec<Done> = batch.into_iter().map(|job| job(conn)).collect();
    let committed = began.and_then(|()| conn.execute_batch("COMMIT").map_err(|e| e.to_string()));
    match &committed {
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::error!("journal commit failed: {e}");
            health.failed(e);
        }
        // Something was written: the storage takes writes (a batch of reads says nothing).
        Ok(()) if conn.total_changes() > changes_before => health.wrote(),
        Ok(()) => {}
    }
    let ok = committed.is_ok();
    for done in dones {
        done(committed.clone());
    }
    ok
}

/// Copies the write-ahead log into the database and truncates it to nothing.
///
/// # Errors
/// When SQLite fails, or could not copy every frame (a reader holds an older snapshot):
/// the caller tries again later.
fn checkpoint(conn: &Connection) -> Result<(), String> {
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if busy != 0 {
        return Err("the write-ahead log is in use by another reader; it was not truncated".into());
    }
    Ok(())
}

fn get(c: &Connection, id: &str) -> rusqlite::Result<Option<Record>> {
    c.query_row(
        "SELECT task_id, task_name, state, submitted_at, started_at, finished_at, attempts, result FROM tasks WHERE task_id = ?1",
        params![id],
        |r| {
            let result: Option<String> = r.get(7)?;
            Ok(Record {
                task_id: r.get(0)?,
                task_name: r.get(1)?,
                state: State::parse(&r.get::<_, String>(2)?),
                submitted_at: rfc3339(r.get(3)?),
                started_at: r.get::<_, Option<i64>>(4)?.map(rfc3339),
                finished_at: r.get::<_, Option<i64>>(5)?.map(rfc3339),
                attempts: r.get(6)?,
                result: result.and_then(|t| RawValue::from_string(t).ok()),
            })
        },
    )
    .optional()
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

    fn raw(text: &str) -> std::sync::Arc<Box<RawValue>> {
        std::sync::Arc::new(RawValue::from_string(text.to_owned()).unwrap())
    }

    #[tokio::test]
    async fn a_task_goes_from_queued_to_done_and_is_accepted_once() {
        let dir = crate::core::trust::test_dir();
        let j = Journal::open(dir.path()).unwrap();
        assert!(j.accept("t1", "CREATE", raw(r#"{"taskId":"t1"}"#)).await.unwrap().is_none());
        let again = j.accept("t1", "CREATE", raw(r#"{"taskId":"t1","other":1}"#)).await.unwrap().unwrap();
        assert_eq!(again.state, State::Queued);
        j.start("t1").await.unwrap();
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
        let dir = crate::core::trust::test_dir();
        {
            let j = Journal::open(dir.path()).unwrap();
            j.accept("q", "INSTALL", raw("{\"q\":1}")).await.unwrap();
            j.accept("r", "INSTALL", raw("{\"r\":1}")).await.unwrap();
            j.start("r").await.unwrap();
            j.accept("d", "INSTALL", raw("{\"password\":\"hunter2\"}")).await.unwrap();
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
        let c = Connection::open(j.path()).unwrap();
        let body: Option<String> = c.query_row("SELECT task FROM tasks WHERE task_id = 'd'", [], |r| r.get(0)).unwrap();
        assert_eq!(body, None);
        let counts = j.counts().await.unwrap();
        assert_eq!((counts.queued, counts.running, counts.done), (1, 1, 1));
    }

    #[tokio::test]
    async fn an_operation_whose_caller_stopped_waiting_still_commits() {
        use futures_util::FutureExt;
        let dir = crate::core::trust::test_dir();
        let j = Journal::open(dir.path()).unwrap();
        // Polled once (which queues it), then dropped before its answer.
        let _ = j.accept("t", "CREATE", raw("{}")).now_or_never();
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
                let j = j.clone();
                tokio::spawn(async move { j.accept(&format!("t{i}"), "START", raw("{}")).await })
            })
            .collect();
        for h in handles {
            assert!(h.await.unwrap().unwrap().is_none());
        }
        assert_eq!(j.counts().await.unwrap().queued, 500);
    }

    #[tokio::test]
    async fn prune_removes_only_old_finished_tasks() {
        let dir = crate::core::trust::test_dir();
        let j = Journal::open(dir.path()).unwrap();
        j.accept("old", "START", raw("{}")).await.unwrap();
        j.finish("old", r#"{"status":0}"#).await.unwrap();
        j.accept("open", "START", raw("{}")).await.unwrap();
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
        let dir = crate::core::trust::test_dir();
        let j = Journal::open(dir.path()).unwrap();
        // Bodies of all sizes: one in its page, one in overflow pages.
        let small = r#"{"password":"body-secret-small"}"#.to_owned();
        let large = format!(r#"{{"password":"body-secret-large","pad":"{}"}}"#, "x".repeat(20_000));
        for (id, body) in [("s", &small), ("l", &large)] {
            j.accept(id, "CREATE", raw(body)).await.unwrap();
            j.start(id).await.unwrap();
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
        let dir = crate::core::trust::test_dir();
        let j = Journal::open(dir.path()).unwrap();
        j.accept("t", "CREATE", raw(r#"{"password":"body-secret-wal"}"#)).await.unwrap();
        j.finish("t", r#"{"status":0}"#).await.unwrap();
        // Nothing signals the journal thread's own checkpoint: watch the files, for far
        // longer than CHECKPOINT_AFTER.
        let deadline = Instant::now() + CHECKPOINT_AFTER * 30;
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
        assert_eq!(std::fs::metadata(j.path()).unwrap().permissions().mode() & 0o777, 0o600);
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
