//! Every table of the journal, in one place, for both engines: the daemon's tasks, the
//! daemons sharing the journal, and the clusters' records ([`crate::cluster::store`]
//! reads and writes those).
//!
//! SQLite: tables are created when the journal opens; a file from an older version gains
//! the tables and columns it lacks. PostgreSQL: [`POSTGRES`] lists numbered migrations,
//! applied in order under a lock (`journal/postgres`), in schema `loom`.

use rusqlite::Connection;

/// Schema version, in `PRAGMA user_version`. 2 added the cluster tables; 3 the daemons
/// and each task's owner (the daemon that claimed it), needs (the plugins that can run
/// it), plugin, idempotence and why it waits. Older files gain them when opened.
pub const VERSION: i64 = 3;

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

/// Columns of `tasks` added in version 3: added to an older file's table when missing.
///
/// - `needs`: the plugins that can run the task, a JSON array of `kind:name`
///   (`router::needs`); a daemon claims only tasks whose needs it has.
/// - `owner`: the daemon (its id in `daemons`) that claimed it, while it is queued there
///   or running; NULL while any daemon may claim it.
/// - `plugin`: the plugin it was sent to; `idempotent`: whether that plugin declared the
///   task safe to run twice (1) or not (0), decided when it started, so that another
///   daemon can take it over without having the plugin.
/// - `waiting`: why no daemon takes it, while none can.
/// - `cluster`: the task's `clusterId`, kept after its body is forgotten, for listings.
const TASK_COLUMNS: [(&str, &str); 6] = [
    ("needs", "TEXT"),
    ("owner", "TEXT"),
    ("plugin", "TEXT"),
    ("idempotent", "INTEGER"),
    ("waiting", "TEXT"),
    ("cluster", "TEXT"),
];

/// The daemons using the journal: each start of one is a row, alive while its lease (a
/// time in milliseconds, renewed by its heartbeat) lies ahead.
const DAEMONS: &str = "
CREATE TABLE IF NOT EXISTS daemons (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    version     TEXT NOT NULL,
    plugins     TEXT NOT NULL DEFAULT '[]',
    can         TEXT NOT NULL DEFAULT '[]',
    started_at  INTEGER NOT NULL,
    seen_at     INTEGER NOT NULL,
    lease_until INTEGER NOT NULL,
    stopped     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner);
CREATE TABLE IF NOT EXISTS cluster_owners (
    cluster     TEXT PRIMARY KEY,
    daemon      TEXT NOT NULL,
    since       INTEGER NOT NULL
);
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
    let mut has = std::collections::HashSet::new();
    {
        let mut q = conn.prepare("SELECT name FROM pragma_table_info('tasks')")?;
        for name in q.query_map([], |r| r.get::<_, String>(0))? {
            has.insert(name?);
        }
    }
    for (column, kind) in TASK_COLUMNS {
        if !has.contains(column) {
            conn.execute_batch(&format!("ALTER TABLE tasks ADD COLUMN {column} {kind}"))?;
        }
    }
    // Listings are newest first.
    conn.execute_batch("CREATE INDEX IF NOT EXISTS tasks_by_submitted ON tasks (submitted_at)")?;
    conn.execute_batch(DAEMONS)?;
    conn.execute_batch(CLUSTERS)
}

/// PostgreSQL's migrations, in order: (version, statements). Tables as SQLite's, in
/// schema `loom` (the connection's search path), integers as `bigint`, and a `seq` where
/// SQLite's `rowid` gives the order rows were made in.
pub(crate) const POSTGRES: &[(i32, &str)] = &[
    (
        1,
        "
CREATE TABLE loom.tasks (
    task_id      text PRIMARY KEY,
    task_name    text NOT NULL,
    state        text NOT NULL CHECK (state IN ('queued', 'running', 'done')),
    task         text,
    result       text,
    submitted_at bigint NOT NULL,
    started_at   bigint,
    finished_at  bigint,
    attempts     bigint NOT NULL DEFAULT 0,
    needs        text,
    owner        text,
    plugin       text,
    idempotent   bigint,
    waiting      text,
    seq          bigserial NOT NULL
);
CREATE INDEX tasks_queued ON loom.tasks (seq) WHERE state = 'queued' AND owner IS NULL;
CREATE INDEX tasks_by_owner ON loom.tasks (owner) WHERE state <> 'done';
CREATE INDEX tasks_by_state ON loom.tasks (state, finished_at);
CREATE TABLE loom.daemons (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    host        text NOT NULL,
    pid         bigint NOT NULL,
    version     text NOT NULL,
    plugins     text NOT NULL DEFAULT '[]',
    can         text NOT NULL DEFAULT '[]',
    started_at  bigint NOT NULL,
    seen_at     bigint NOT NULL,
    lease_until bigint NOT NULL,
    stopped     bigint NOT NULL DEFAULT 0
);
CREATE TABLE loom.clusters (
    name        text PRIMARY KEY,
    spec        text NOT NULL,
    state       text NOT NULL,
    jobs        bigint NOT NULL DEFAULT 0,
    last_job    text,
    report      text,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL
);
CREATE TABLE loom.cluster_nodes (
    cluster     text NOT NULL,
    node_id     text NOT NULL,
    learned     text NOT NULL,
    PRIMARY KEY (cluster, node_id)
);
CREATE TABLE loom.cluster_steps (
    cluster     text NOT NULL,
    step        text NOT NULL,
    mark        text NOT NULL CHECK (mark IN ('attempted', 'done')),
    PRIMARY KEY (cluster, step)
);
CREATE TABLE loom.cluster_tasks (
    task_id     text PRIMARY KEY,
    cluster     text NOT NULL,
    job_id      text NOT NULL,
    step        text NOT NULL,
    task_name   text NOT NULL,
    attempt     bigint NOT NULL,
    state       text NOT NULL CHECK (state IN ('running', 'done')),
    status      bigint,
    stdout      text,
    stderr      text,
    sends       bigint NOT NULL DEFAULT 1,
    started_at  bigint NOT NULL,
    finished_at bigint,
    seq         bigserial NOT NULL
);
CREATE INDEX cluster_tasks_by_cluster ON loom.cluster_tasks (cluster, started_at);
CREATE TABLE loom.cluster_owners (
    cluster     text PRIMARY KEY,
    daemon      text NOT NULL,
    since       bigint NOT NULL
);
",
    ),
    (
        2,
        "
ALTER TABLE loom.tasks ADD COLUMN cluster text;
CREATE INDEX tasks_by_submitted ON loom.tasks (submitted_at);
",
    ),
];
