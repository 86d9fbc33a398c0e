//! Every table of the journal file, in one place: the daemon's tasks and the clusters'
//! records ([`crate::cluster::store`] reads and writes those). Tables are created when
//! the journal opens; a file from an older version gains the tables it lacks.

use rusqlite::Connection;

/// Schema version, in `PRAGMA user_version`. 2 added the cluster tables; a version 1 file
/// gains them when opened.
pub const VERSION: i64 = 2;

/// Submitted tasks: the body until the task is done, then its (scrubbed) result.
const TASKS: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    task_id      TEXT PRIMARY KEY,
    task_name    TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
    task         TEXT,
    result       TEXT,
    submitted_at INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, finished_at);
";

/// Clusters: each one's spec and state, each node's learned config, the mark of each
/// step, and every task attempt with its result.
const CLUSTERS: &str = "
CREATE TABLE IF NOT EXISTS clusters (
    name        TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    state       TEXT NOT NULL,
    jobs        INTEGER NOT NULL DEFAULT 0,
    last_job    TEXT,
    report      TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cluster_nodes (
    cluster     TEXT NOT NULL,
    node_id     TEXT NOT NULL,
    learned     TEXT NOT NULL,
    PRIMARY KEY (cluster, node_id)
);
CREATE TABLE IF NOT EXISTS cluster_steps (
    cluster     TEXT NOT NULL,
    step        TEXT NOT NULL,
    mark        TEXT NOT NULL CHECK (mark IN ('attempted', 'done')),
    PRIMARY KEY (cluster, step)
);
CREATE TABLE IF NOT EXISTS cluster_tasks (
    task_id     TEXT PRIMARY KEY,
    cluster     TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    step        TEXT NOT NULL,
    task_name   TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('running', 'done')),
    status      INTEGER,
    stdout      TEXT,
    stderr      TEXT,
    sends       INTEGER NOT NULL DEFAULT 1,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS cluster_tasks_by_cluster ON cluster_tasks (cluster, started_at);
";

/// Creates the tables and indexes that do not exist yet.
///
/// # Errors
/// SQLite's, when a statement fails.
pub(crate) fn create(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(TASKS)?;
    conn.execute_batch(CLUSTERS)
}
