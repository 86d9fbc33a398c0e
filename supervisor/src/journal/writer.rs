//! The journal's writer thread, the same for both engines: it owns the one connection
//! that writes, applies every operation queued in one transaction and one commit, then
//! answers each.
//!
//! Each operation runs under a savepoint of its own: one that fails is undone alone, and
//! the others of its batch still commit (PostgreSQL would otherwise abort the whole
//! transaction at the first error). A failed commit fails every operation of its batch.
//! Between batches the engine tidies ([`Engine::tidy`]: SQLite truncates its write-ahead
//! log) at most once per [`TIDY_AFTER`].

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::health::Health;
use super::sql::{Arg, Db, Dialect, Row, SqlError};

/// Most operations applied in one transaction.
const BATCH: usize = 512;

/// How long after a commit the engine tidies (SQLite: the write-ahead log is checkpointed
/// and truncated, taking what was deleted, a finished task's body, out of every file).
/// Under load, commits in between share it.
pub const TIDY_AFTER: Duration = Duration::from_secs(1);

/// The answer of an operation, given the outcome of its batch's commit.
pub(crate) type Done = Box<dyn FnOnce(Result<(), String>) + Send>;
/// An operation: runs inside the batch's transaction, returns what to do once the batch
/// committed (or failed).
pub(crate) type Job = Box<dyn FnOnce(&mut dyn Db) -> Done + Send>;

/// What the writer thread is asked to do.
pub(crate) enum Op {
    /// Apply an operation in the next batch.
    Job(Job),
    /// Tidy now; answer when done.
    Tidy(oneshot::Sender<Result<(), String>>),
}

/// One connection that writes, as the writer thread needs it.
pub(crate) trait Engine: Send {
    /// The connection, inside the current transaction.
    fn db(&mut self) -> &mut dyn Db;
    /// Begins a transaction that writes.
    ///
    /// # Errors
    /// The engine's (a lost connection: the engine connects again at the next batch).
    fn begin(&mut self) -> Result<(), SqlError>;
    /// Commits it.
    ///
    /// # Errors
    /// The engine's; then nothing of the batch is kept.
    fn commit(&mut self) -> Result<(), SqlError>;
    /// Rolls it back (after a failed commit).
    fn rollback(&mut self);
    /// Rows changed since the connection opened (a batch of reads changes none).
    fn changes(&self) -> u64;
    /// Housekeeping between batches (SQLite: checkpoint and truncate the write-ahead log).
    ///
    /// # Errors
    /// When it could not be done all; it is tried again after [`TIDY_AFTER`].
    fn tidy(&mut self) -> Result<(), String>;
}

/// The writer thread's loop: apply everything queued, commit once, answer; tidy
/// [`TIDY_AFTER`] after a commit, or when asked. Ends when every handle is gone.
pub(crate) fn run(engine: &mut dyn Engine, ops: &std_mpsc::Receiver<Op>, health: &Health) {
    let mut due: Option<Instant> = None;
    loop {
        let first = match due {
            None => ops.recv().map_err(|_| std_mpsc::RecvTimeoutError::Disconnected),
            Some(at) => ops.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        let first = match first {
            Ok(op) => op,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                due = engine.tidy().err().map(|_| Instant::now() + TIDY_AFTER);
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let (batch, asked) = gather(first, ops);
        if !batch.is_empty() && apply(engine, batch, health) && due.is_none() {
            due = Some(Instant::now() + TIDY_AFTER);
        }
        if let Some(reply) = asked {
            let done = engine.tidy();
            due = done.is_err().then(|| Instant::now() + TIDY_AFTER);
            let _ = reply.send(done);
        } else if due.is_some_and(|at| at <= Instant::now()) {
            // Busy without a pause: tidy between batches.
            due = engine.tidy().err().map(|_| Instant::now() + TIDY_AFTER);
        }
    }
    // Every handle is gone: leave nothing deleted behind.
    let _ = engine.tidy();
}

/// `first` and the operations queued behind it, up to [`BATCH`] or a tidy request (which
/// ends the batch, so that it covers everything queued before it).
fn gather(first: Op, ops: &std_mpsc::Receiver<Op>) -> (Vec<Job>, Option<oneshot::Sender<Result<(), String>>>) {
    let mut batch = Vec::new();
    let mut next = Some(first);
    while let Some(op) = next.take() {
        match op {
            Op::Job(job) => batch.push(job),
            Op::Tidy(reply) => return (batch, Some(reply)),
        }
        if batch.len() < BATCH {
            next = ops.try_recv().ok();
        }
    }
    (batch, None)
}

/// Applies `batch` in one transaction, each operation under its own savepoint, and
/// answers each. Returns whether it committed.
fn apply(engine: &mut dyn Engine, batch: Vec<Job>, health: &Health) -> bool {
    let changes_before = engine.changes();
    let began = engine.begin();
    let dones: Vec<Done> = match &began {
        Ok(()) => batch.into_iter().map(|job| isolated(engine.db(), job)).collect(),
        // Nothing can run: every operation gets the reason.
        Err(e) => {
            let mut failing = Failing { why: e.clone(), dialect: engine.db().dialect() };
            batch.into_iter().map(|job| job(&mut failing)).collect()
        }
    };
    let committed = began.and_then(|()| engine.commit()).map_err(|e| {
        engine.rollback();
        tracing::error!("journal commit failed: {e}");
        health.failed(&e.message);
        e.message
    });
    // Something was written: the storage takes writes (a batch of reads says nothing).
    if committed.is_ok() && engine.changes() > changes_before {
        health.wrote();
    }
    let ok = committed.is_ok();
    for done in dones {
        done(committed.clone());
    }
    ok
}

/// Runs `job` under a savepoint: its statements are undone alone if it fails.
fn isolated(db: &mut dyn Db, job: Job) -> Done {
    if let Err(why) = db.exec("SAVEPOINT op", &[]) {
        return job(&mut Failing { why, dialect: db.dialect() });
    }
    let mut probe = Probe { db, failed: false };
    let done = job(&mut probe);
    let undo = probe.failed;
    let db = probe.db;
    if undo {
        let _ = db.exec("ROLLBACK TO SAVEPOINT op", &[]);
    }
    let _ = db.exec("RELEASE SAVEPOINT op", &[]);
    done
}

/// A `Db` that fails every statement with `why`: for operations whose transaction or
/// savepoint could not begin.
struct Failing {
    why: SqlError,
    dialect: Dialect,
}

impl Db for Failing {
    fn exec(&mut self, _: &str, _: &[Arg<'_>]) -> Result<u64, SqlError> {
        Err(self.why.clone())
    }
    fn rows(&mut self, _: &str, _: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        Err(self.why.clone())
    }
    fn dialect(&self) -> Dialect {
        self.dialect
    }
}

/// Passes statements through and remembers whether one failed (then the operation's
/// savepoint is rolled back, whatever the operation made of the error).
struct Probe<'a> {
    db: &'a mut dyn Db,
    failed: bool,
}

impl Db for Probe<'_> {
    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
        let out = self.db.exec(sql, args);
        self.failed |= out.is_err();
        out
    }
    fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        let out = self.db.rows(sql, args);
        self.failed |= out.is_err();
        out
    }
    fn dialect(&self) -> Dialect {
        self.db.dialect()
    }
}
