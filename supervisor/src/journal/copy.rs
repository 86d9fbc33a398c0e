//! Copying a journal into another (`loom-provisioner journal migrate`): from one daemon's
//! SQLite file to the PostgreSQL of a fleet, keeping every task (queued, running and
//! done, with its results and attempts) and every cluster (spec, nodes' learned config,
//! step marks, task attempts).
//!
//! Rows are copied in the order they were made, a page at a time. What belongs to a
//! running daemon is not copied (its row in `daemons`, the clusters it holds): the source
//! must be left by its daemon first, and its unfinished tasks arrive owned by nobody, so
//! the fleet treats them as a restart would (queued ones run, running ones are taken over
//! by their plugin's word). A task of an older journal that does not say which plugins it
//! needs gets them from its body.

use serde_json::value::RawValue;

use super::sql::{Arg, Db, Dialect, Row, SqlError, Value};
use super::{Journal, JournalError};
use crate::wire::envelope::TaskEnvelope;

/// Rows read and written at a time.
const PAGE: i64 = 500;

/// Each table copied, with its columns, in an order that keeps references whole.
const TABLES: [(&str, &str); 5] = [
    (
        "tasks",
        "task_id, task_name, state, task, result, submitted_at, started_at, finished_at, attempts, needs, plugin, idempotent",
    ),
    ("clusters", "name, spec, state, jobs, last_job, report, created_at, updated_at"),
    ("cluster_nodes", "cluster, node_id, learned"),
    ("cluster_steps", "cluster, step, mark"),
    (
        "cluster_tasks",
        "task_id, cluster, job_id, step, task_name, attempt, state, status, stdout, stderr, sends, started_at, finished_at",
    ),
];

/// What was copied: rows by table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied(pub Vec<(&'static str, u64)>);

/// Why a copy was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target already holds tasks or clusters.
    #[error("{place} already holds {what}: a journal is copied into an empty one only (nothing was copied)")]
    NotEmpty {
        /// The target.
        place: String,
        /// What it holds.
        what: String,
    },
    /// A daemon still uses the source.
    #[error("a daemon still uses {place} ({who}); stop it first, so that nothing changes while it is copied")]
    InUse {
        /// The source.
        place: String,
        /// The daemon.
        who: String,
    },
    /// Reading or writing failed; what was copied so far was removed again.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Copies every task and cluster of `from` into `to`, which must be empty.
///
/// # Errors
/// [`CopyError`]: the target is not empty, a daemon uses the source, or a journal
/// failed (then the target is emptied again, as far as it can be).
pub async fn copy(from: &Journal, to: &Journal) -> Result<Copied, CopyError> {
    if let Some(who) = live_daemon(from).await? {
        return Err(CopyError::InUse { place: from.place().to_owned(), who });
    }
    let held = holdings(to).await?;
    if !held.is_empty() {
        return Err(CopyError::NotEmpty { place: to.place().to_owned(), what: held.join(" and ") });
    }
    let mut copied = Copied::default();
    for (table, columns) in TABLES {
        match copy_table(from, to, table, columns).await {
            Ok(n) => copied.0.push((table, n)),
            Err(e) => {
                empty(to).await;
                return Err(e.into());
            }
        }
    }
    Ok(copied)
}

/// A daemon whose lease holds on `journal` and that may still run, described. One of
/// this host whose process is gone (a daemon killed just now) does not count: its lease
/// outlives it by design, but nothing will write any more.
async fn live_daemon(journal: &Journal) -> Result<Option<String>, JournalError> {
    let rows = journal
        .run(|c| {
            let now = c.dialect().now_ms();
            c.rows(&format!("SELECT name, host, pid FROM daemons WHERE lease_until > {now} AND stopped = 0"), &[])
        })
        .await?;
    let here = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    for r in rows {
        let (Ok(name), Ok(host), Ok(pid)) = (r.text(0), r.text(1), r.int(2)) else { continue };
        let gone = host == here
            && i32::try_from(pid).is_ok_and(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH)
            });
        if !gone {
            return Ok(Some(format!("daemon {name} on {host}, pid {pid}")));
        }
    }
    Ok(None)
}

/// What `journal` holds: "12 tasks", "1 cluster".
async fn holdings(journal: &Journal) -> Result<Vec<String>, JournalError> {
    journal
        .run(|c| {
            let mut held = Vec::new();
            for (table, what) in [("tasks", "tasks"), ("clusters", "clusters")] {
                let n = c.row(&format!("SELECT COUNT(*) FROM {table}"), &[])?.map(|r| r.int(0)).transpose()?;
                if let Some(n) = n.filter(|n| *n > 0) {
                    held.push(format!("{n} {what}"));
                }
            }
            Ok(held)
        })
        .await
}

async fn copy_table(
    from: &Journal,
    to: &Journal,
    table: &'static str,
    columns: &'static str,
) -> Result<u64, JournalError> {
    let mut copied = 0u64;
    let mut offset = 0i64;
    loop {
        let order = match from.dialect() {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "1",
        };
        let page = from
            .run(move |c| {
                c.rows(
                    &format!("SELECT {columns} FROM {table} ORDER BY {order} LIMIT $1 OFFSET $2"),
                    &[PAGE.into(), offset.into()],
                )
            })
            .await?;
        let n = page.len();
        if n == 0 {
            return Ok(copied);
        }
        let page: Vec<Row> = if table == "tasks" { page.into_iter().map(with_needs).collect() } else { page };
        to.run(move |c| insert(c, table, columns, &page)).await?;
        copied += n as u64;
        offset += PAGE;
    }
}

fn insert(c: &mut dyn Db, table: &str, columns: &str, rows: &[Row]) -> Result<(), SqlError> {
    let width = columns.split(',').count();
    let placeholders: Vec<String> = (1..=width).map(|i| format!("${i}")).collect();
    let sql = format!("INSERT INTO {table} ({columns}) VALUES ({})", placeholders.join(", "));
    for row in rows {
        let args: Vec<Arg<'_>> = row
            .0
            .iter()
            .map(|v| match v {
                Value::Null => Arg::Null,
                Value::Int(i) => Arg::Int(*i),
                Value::Text(t) => Arg::Text(t),
            })
            .collect();
        c.exec(&sql, &args)?;
    }
    Ok(())
}

/// A task row (columns as in [`TABLES`]) with its `needs` filled in from its body when
/// an older journal did not record them, for an unfinished task.
fn with_needs(mut row: Row) -> Row {
    const TASK: usize = 3;
    const NEEDS: usize = 9;
    if !matches!(row.0.get(NEEDS), Some(Value::Null)) {
        return row;
    }
    let needs = match row.0.get(TASK) {
        Some(Value::Text(body)) => RawValue::from_string(body.clone())
            .ok()
            .and_then(|raw| TaskEnvelope::parse(raw).ok())
            .map(|task| crate::core::router::needs(&task)),
        _ => None,
    };
    if let Some(needs) = needs {
        row.0[NEEDS] = Value::Text(serde_json::to_string(&needs).unwrap_or_else(|_| "[]".to_owned()));
    }
    row
}

/// Removes what a failed copy wrote (best effort: the target was empty before).
async fn empty(journal: &Journal) {
    let result = journal
        .run(|c| {
            for (table, _) in TABLES.iter().rev() {
                c.exec(&format!("DELETE FROM {table}"), &[])?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = result {
        tracing::error!("cannot remove what the failed copy wrote to {}: {e}", journal.place());
    }
}
