//! The daemons that share a journal, and how tasks move between them.
//!
//! Each start of a daemon is a row in `daemons`, alive while its lease (on the database's
//! clock) lies ahead; its heartbeat renews it ([`Journal::heartbeat`]). A task accepted
//! by any daemon is queued with the plugins it needs; a daemon that has them claims it
//! ([`Journal::claim`], `FOR UPDATE SKIP LOCKED` on PostgreSQL, so two daemons never
//! claim one task), records it running just before sending it ([`Journal::start`], only
//! while it still owns it and its lease holds) and records its result only while it still
//! owns it ([`Journal::finish_owned`]).
//!
//! When a daemon's lease runs out (it was killed, its machine died, it lost the
//! database), any other daemon takes its tasks over ([`Journal::take_over`]): those it
//! had claimed but not sent go back to the queue; those it was running go back too when
//! their plugin declared the task idempotent, and fail otherwise, naming the daemon: a
//! task that may have run is never run twice unless its plugin says that is safe. A
//! daemon alone on a SQLite file takes over its own previous run's tasks at its start.

use std::sync::Arc;
use std::time::Duration;

use loom_protocol::TaskResult;
use serde::Serialize;
use serde_json::value::RawValue;

use super::sql::{Db, Dialect, Row, SqlError};
use super::{Journal, JournalError, State, now_ms, rfc3339};
use crate::core::supervisor::TaskReport;

/// What a restart says about a task that was running when the daemon stopped.
pub const RESTARTED: &str = "supervisor restarted while the task ran";

/// PostgreSQL: why queued task `q` waits (NULL when a live daemon has every plugin it
/// needs).
pub(crate) const WHY_WAITING: &str = "CASE WHEN EXISTS (
        SELECT 1 FROM daemons d
        WHERE d.lease_until > CAST(extract(epoch FROM clock_timestamp()) * 1000 AS bigint) AND d.stopped = 0
            AND q.needs::jsonb <@ d.can::jsonb)
    THEN NULL
    ELSE 'no live daemon runs ' || COALESCE((SELECT string_agg(n, ' and ') FROM jsonb_array_elements_text(q.needs::jsonb) n), 'it')
    END";

/// Most orphaned tasks taken over in one transaction.
const TAKE_OVER_BATCH: i64 = 500;

/// How long the row of a daemon that stopped (and owns nothing) is kept, for `status`.
const FORGET_DAEMONS_AFTER: Duration = Duration::from_secs(24 * 3600);

/// This daemon, as the journal knows it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Unique to this start: `<name>-<start ms>-<pid>`.
    pub id: Arc<str>,
    /// The daemon's name (`[journal] name`, else the host name); a new start under the
    /// same name ends the previous one's lease at once.
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
}

impl Member {
    /// This process, named `name`.
    pub fn this_process(name: &str) -> Member {
        let pid = std::process::id();
        let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
        Member { id: format!("{name}-{}-{pid}", now_ms()).into(), name: name.to_owned(), host, pid }
    }

    /// Another id for the same daemon: after its lease ran out, it joins again as new.
    pub fn renewed(&self) -> Member {
        Member { id: format!("{}-{}-{}", self.name, now_ms(), self.pid).into(), ..self.clone() }
    }
}

/// A daemon of the fleet, as `status` and `/v1/plugins` show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Its id (one start of it).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its host.
    pub host: String,
    /// Its process id.
    pub pid: i64,
    /// Its version.
    pub version: String,
    /// Its plugins and their capacity, as its last heartbeat said.
    pub plugins: Box<RawValue>,
    /// When it started.
    pub started_at: String,
    /// Its last heartbeat.
    pub seen_at: String,
    /// Whether its lease holds.
    pub alive: bool,
    /// Whether it stopped cleanly.
    pub stopped: bool,
}

/// What became of a task whose daemon died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Back in the queue: it was never sent, or its plugin declared it idempotent.
    Requeued,
    /// Failed with this reason: it may have run, and its plugin does not declare it
    /// idempotent.
    Failed(String),
    /// Left for the caller: a task of an older journal that does not say whether its
    /// plugin declared it idempotent (the caller asks its plugins, then calls
    /// [`Journal::requeue`] or [`Journal::finish`]).
    Decide,
}

/// A task taken over from a dead daemon.
#[derive(Debug, Clone)]
pub struct Orphan {
    /// Its id.
    pub task_id: String,
    /// Its name.
    pub task_name: String,
    /// Queued or running when its daemon died.
    pub state: State,
    /// The task as submitted (empty when done now).
    pub raw: String,
    /// What became of it.
    pub fate: Fate,
}

impl Journal {
    /// Registers this start of a daemon with its plugins (`plugins`, JSON) and the
    /// plugin keys it can run (`can`, a JSON array of `kind:name`), under a lease of
    /// `lease`. Earlier starts under the same name (with SQLite: every earlier start) are
    /// dead from now on, so their tasks are taken over at once instead of after a lease.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn join(&self, me: &Member, plugins: &str, can: &str, lease: Duration) -> Result<(), JournalError> {
        let (me, plugins, can) = (me.clone(), plugins.to_owned(), can.to_owned());
        let lease = millis(lease);
        let version = env!("CARGO_PKG_VERSION");
        self.run(move |c| {
            let now = c.dialect().now_ms();
            let earlier = match c.dialect() {
                Dialect::Sqlite => "id <> $1",
                Dialect::Postgres => "id <> $1 AND name = $2",
            };
            c.exec(
                &format!("UPDATE daemons SET lease_until = {now} WHERE {earlier} AND lease_until > {now}"),
                &[(&*me.id).into(), (&me.name).into()],
            )?;
            c.exec(
                &format!(
                    "INSERT INTO daemons (id, name, host, pid, version, plugins, can, started_at, seen_at, lease_until)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, {now}, {now}, {now} + $8)"
                ),
                &[
                    (&*me.id).into(),
                    (&me.name).into(),
                    (&me.host).into(),
                    me.pid.into(),
                    version.into(),
                    (&plugins).into(),
                    (&can).into(),
                    lease.into(),
                ],
            )?;
            c.notify("loom_fleet", "")
        })
        .await
    }

    /// Renews this daemon's lease and says what it runs now. Returns `false` when its
    /// lease had already run out (or it left): then other daemons may have taken its
    /// tasks over, and it must join again under a new id ([`Member::renewed`]).
    ///
    /// # Errors
    /// When the journal fails; the lease is then not renewed.
    pub async fn heartbeat(
        &self,
        me: &Member,
        plugins: &str,
        can: &str,
        lease: Duration,
    ) -> Result<bool, JournalError> {
        let (id, plugins, can) = (Arc::clone(&me.id), plugins.to_owned(), can.to_owned());
        let lease = millis(lease);
        self.run(move |c| {
            let now = c.dialect().now_ms();
            let renewed = c.exec(
                &format!(
                    "UPDATE daemons SET seen_at = {now}, lease_until = {now} + $4, plugins = $2, can = $3
                     WHERE id = $1 AND lease_until > {now} AND stopped = 0"
                ),
                &[(&*id).into(), (&plugins).into(), (&can).into(), lease.into()],
            )?;
            Ok(renewed == 1)
        })
        .await
    }

    /// A clean stop: the tasks this daemon claimed and never sent go back to the queue
    /// for the others, and its lease ends.
    ///
    /// # Errors
    /// When the journal fails; the others then take its tasks over when its lease runs
    /// out.
    pub async fn leave(&self, me: &Member) -> Result<(), JournalError> {
        let id = Arc::clone(&me.id);
        self.run(move |c| {
            let now = c.dialect().now_ms();
            c.exec("UPDATE tasks SET owner = NULL WHERE owner = $1 AND state = 'queued'", &[(&*id).into()])?;
            c.exec(&format!("UPDATE daemons SET stopped = 1, lease_until = {now} WHERE id = $1"), &[(&*id).into()])?;
            c.notify("loom_queued", "")?;
            c.notify("loom_fleet", "")
        })
        .await
    }

    /// The daemons of the fleet: alive, or stopped within the last day.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn peers(&self) -> Result<Vec<Peer>, JournalError> {
        let forget = millis(FORGET_DAEMONS_AFTER);
        self.run(move |c| {
            let now = c.dialect().now_ms();
            let rows = c.rows(
                &format!(
                    "SELECT id, name, host, pid, version, plugins, started_at, seen_at,
                            CASE WHEN lease_until > {now} AND stopped = 0 THEN 1 ELSE 0 END, stopped
                     FROM daemons WHERE lease_until > {now} - $1 ORDER BY name, started_at"
                ),
                &[forget.into()],
            )?;
            rows.iter().map(read_peer).collect()
        })
        .await
    }

    /// Claims up to `limit` queued tasks that no daemon owns and whose needs are all in
    /// `can` (a JSON array of plugin keys), oldest first, while this daemon's lease holds.
    /// Returns their ids and bodies. With SQLite (one daemon) every unowned task is
    /// claimed: the daemon fails what none of its plugins runs, as it always did.
    ///
    /// # Errors
    /// When the journal fails; then nothing was claimed.
    pub async fn claim(&self, me: &Member, can: &str, limit: usize) -> Result<Vec<(String, String)>, JournalError> {
        let (id, can) = (Arc::clone(&me.id), can.to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            let sql = match c.dialect() {
                Dialect::Sqlite => {
                    "UPDATE tasks SET owner = $1, waiting = NULL WHERE task_id IN (
                         SELECT task_id FROM tasks WHERE state = 'queued' AND owner IS NULL
                         ORDER BY rowid LIMIT $3)
                     RETURNING task_id, COALESCE(task, '')"
                }
                Dialect::Postgres => {
                    "WITH picked AS (
                         SELECT task_id FROM tasks
                         WHERE state = 'queued' AND owner IS NULL AND needs::jsonb <@ $2::text::jsonb
                         ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED)
                     UPDATE tasks t SET owner = $1, waiting = NULL FROM picked
                     WHERE t.task_id = picked.task_id AND EXISTS (
                         SELECT 1 FROM daemons d WHERE d.id = $1 AND d.stopped = 0
                             AND d.lease_until > CAST(extract(epoch FROM clock_timestamp()) * 1000 AS bigint))
                     RETURNING t.task_id, COALESCE(t.task, '')"
                }
            };
            let rows = c.rows(sql, &[(&*id).into(), (&can).into(), limit.into()])?;
            rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?))).collect()
        })
        .await
    }

    /// Takes over the tasks of daemons whose lease ran out (and, in a journal from an
    /// older version, tasks left running with no owner), up to a batch: see [`Fate`].
    /// Call until it returns nothing. Concurrent calls from several daemons never take
    /// one task twice.
    ///
    /// # Errors
    /// When the journal fails; then nothing was taken.
    pub async fn take_over(&self, me: &Member) -> Result<Vec<Orphan>, JournalError> {
        let (id, my_name) = (Arc::clone(&me.id), me.name.clone());
        self.run(move |c| {
            let now = c.dialect().now_ms();
            let lock = match c.dialect() {
                Dialect::Sqlite => "",
                Dialect::Postgres => "FOR UPDATE OF t SKIP LOCKED",
            };
            let rows = c.rows(
                &format!(
                    "SELECT t.task_id, t.task_name, t.state, COALESCE(t.task, ''), t.idempotent, COALESCE(t.plugin, 'its plugin'),
                            d.name, d.host, d.pid
                     FROM tasks t LEFT JOIN daemons d ON d.id = t.owner
                     WHERE t.state <> 'done' AND (
                         (t.owner IS NOT NULL AND t.owner <> $1 AND (d.id IS NULL OR d.lease_until <= {now} OR d.stopped = 1))
                         OR (t.owner IS NULL AND t.state = 'running'))
                     ORDER BY t.submitted_at LIMIT $2 {lock}"
                ),
                &[(&*id).into(), TAKE_OVER_BATCH.into()],
            )?;
            let mut orphans = Vec::with_capacity(rows.len());
            for row in &rows {
                orphans.push(adopt(c, row, &my_name)?);
            }
            if orphans.iter().any(|o| o.fate == Fate::Requeued) {
                c.notify("loom_queued", "")?;
            }
            // Daemons long gone that own nothing are forgotten.
            c.exec(
                &format!(
                    "DELETE FROM daemons WHERE lease_until < {now} - $1
                     AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.owner = daemons.id AND tasks.state <> 'done')"
                ),
                &[millis(FORGET_DAEMONS_AFTER).into()],
            )?;
            Ok(orphans)
        })
        .await
    }

    /// Says, on each queued task that no daemon owns, why it waits when no live daemon
    /// has every plugin it needs (and clears that once one has). PostgreSQL only: with
    /// SQLite the daemon claims every task itself.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn mark_waiting(&self) -> Result<u64, JournalError> {
        if self.dialect() != Dialect::Postgres {
            return Ok(0);
        }
        self.run(|c| {
            c.exec(
                &format!(
                    "UPDATE tasks t SET waiting = w.why FROM (
                         SELECT q.task_id, {WHY_WAITING} AS why
                         FROM tasks q WHERE q.state = 'queued' AND q.owner IS NULL) w
                     WHERE t.task_id = w.task_id AND t.waiting IS DISTINCT FROM w.why"
                ),
                &[],
            )
        })
        .await
    }

    /// Queued tasks by the plugins they need (a JSON array), across the fleet.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn queued_by_needs(&self) -> Result<Vec<(String, u64)>, JournalError> {
        self.run(|c| {
            let rows =
                c.rows("SELECT COALESCE(needs, '[]'), COUNT(*) FROM tasks WHERE state = 'queued' GROUP BY 1", &[])?;
            rows.iter().map(|r| Ok((r.text(0)?, u64::try_from(r.int(1)?).unwrap_or(0)))).collect()
        })
        .await
    }
}

impl Journal {
    /// Takes cluster `name` for daemon `me`, unless a live daemon (`me` included: one
    /// operation at a time) holds it. Returns `None` when taken, else who holds it.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn take_cluster(&self, name: &str, me: &Member) -> Result<Option<String>, JournalError> {
        let (name, id) = (name.to_owned(), Arc::clone(&me.id));
        self.run(move |c| {
            let now = c.dialect().now_ms();
            let taken = c.row(
                &format!(
                    "INSERT INTO cluster_owners (cluster, daemon, since) VALUES ($1, $2, {now})
                     ON CONFLICT (cluster) DO UPDATE SET daemon = $2, since = {now}
                     WHERE NOT EXISTS (SELECT 1 FROM daemons d WHERE d.id = cluster_owners.daemon
                                       AND d.lease_until > {now} AND d.stopped = 0)
                     RETURNING daemon"
                ),
                &[(&name).into(), (&*id).into()],
            )?;
            match taken {
                Some(_) => Ok(None),
                None => Ok(Some(holder(c, &name)?.unwrap_or_else(|| "another daemon".to_owned()))),
            }
        })
        .await
    }

    /// Releases cluster `name` if daemon `me` holds it.
    ///
    /// # Errors
    /// When the journal fails; the cluster is then free once `me`'s lease ends.
    pub async fn release_cluster(&self, name: &str, me: &Member) -> Result<(), JournalError> {
        let (name, id) = (name.to_owned(), Arc::clone(&me.id));
        self.run(move |c| {
            c.exec("DELETE FROM cluster_owners WHERE cluster = $1 AND daemon = $2", &[(&name).into(), (&*id).into()])
                .map(drop)
        })
        .await
    }

    /// The live daemon that holds cluster `name`, described (`daemon d1 on host-a, pid
    /// 4242`), if one does.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn cluster_holder(&self, name: &str) -> Result<Option<String>, JournalError> {
        let name = name.to_owned();
        self.run(move |c| holder(c, &name)).await
    }
}

impl Journal {
    /// The plugin keys (`kind:name`) the live daemons of the fleet run.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn fleet_can(&self) -> Result<std::collections::BTreeSet<String>, JournalError> {
        self.run(|c| {
            let now = c.dialect().now_ms();
            let rows = c.rows(&format!("SELECT can FROM daemons WHERE lease_until > {now} AND stopped = 0"), &[])?;
            let mut keys = std::collections::BTreeSet::new();
            for r in rows {
                keys.extend(serde_json::from_str::<Vec<String>>(&r.text(0)?).unwrap_or_default());
            }
            Ok(keys)
        })
        .await
    }

    /// The tasks `me` owns and has not finished.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn owned(&self, me: &Member) -> Result<Vec<String>, JournalError> {
        let id = Arc::clone(&me.id);
        self.run(move |c| {
            let rows = c.rows("SELECT task_id FROM tasks WHERE owner = $1 AND state <> 'done'", &[(&*id).into()])?;
            rows.iter().map(|r| r.text(0)).collect()
        })
        .await
    }

    /// Gives up tasks `me` owns but does not work on (a write that claimed them
    /// committed, but its answer was lost): by the rules of [`Fate`], as if `me` had
    /// died. Returns what became of them.
    ///
    /// # Errors
    /// When the journal fails; then nothing changed.
    pub async fn release(&self, me: &Member, ids: Vec<String>) -> Result<Vec<Orphan>, JournalError> {
        let (id, my_name) = (Arc::clone(&me.id), me.name.clone());
        self.run(move |c| {
            let mut orphans = Vec::new();
            for task in &ids {
                let row = c.row(
                    "SELECT t.task_id, t.task_name, t.state, COALESCE(t.task, ''), t.idempotent,
                            COALESCE(t.plugin, 'its plugin'), NULL, NULL, NULL
                     FROM tasks t WHERE t.task_id = $1 AND t.owner = $2 AND t.state <> 'done'",
                    &[task.into(), (&*id).into()],
                )?;
                if let Some(row) = row {
                    orphans.push(adopt(c, &row, &my_name)?);
                }
            }
            if orphans.iter().any(|o| o.fate == Fate::Requeued) {
                c.notify("loom_queued", "")?;
            }
            Ok(orphans)
        })
        .await
    }
}

/// The live daemon holding cluster `name`, described.
fn holder(c: &mut dyn Db, name: &str) -> Result<Option<String>, SqlError> {
    let now = c.dialect().now_ms();
    let row = c.row(
        &format!(
            "SELECT d.name, d.host, d.pid FROM cluster_owners o JOIN daemons d ON d.id = o.daemon
             WHERE o.cluster = $1 AND d.lease_until > {now} AND d.stopped = 0"
        ),
        &[name.into()],
    )?;
    row.map(|r| Ok(format!("daemon {} on {}, pid {}", r.text(0)?, r.text(1)?, r.int(2)?))).transpose()
}

/// Applies the rules of [`Fate`] to one orphaned task (a row of `take_over`'s query).
fn adopt(c: &mut dyn Db, row: &Row, my_name: &str) -> Result<Orphan, SqlError> {
    let (task_id, task_name) = (row.text(0)?, row.text(1)?);
    let state = State::parse(&row.text(2)?);
    let raw = row.text(3)?;
    let fate = match (state, row.opt_int(4)?) {
        (State::Queued, _) => {
            c.exec("UPDATE tasks SET owner = NULL WHERE task_id = $1", &[(&task_id).into()])?;
            Fate::Requeued
        }
        (_, Some(1)) => {
            c.exec("UPDATE tasks SET state = 'queued', owner = NULL WHERE task_id = $1", &[(&task_id).into()])?;
            Fate::Requeued
        }
        (_, Some(_)) => {
            let plugin = row.text(5)?;
            let why = match (row.opt_text(6)?, row.opt_text(7)?, row.opt_int(8)?) {
                (Some(name), Some(host), Some(pid)) if name != my_name => format!(
                    "daemon {name} (host {host}, pid {pid}) stopped while {task_name} {task_id} ran on {plugin}, and that plugin does not declare {task_name} idempotent, so it was not run again"
                ),
                _ => format!(
                    "{RESTARTED}: {task_name} {task_id} was running on {plugin} when the supervisor stopped, and that plugin does not declare {task_name} idempotent, so it was not run again"
                ),
            };
            let report = TaskReport { task_id: Some(task_id.clone()), result: TaskResult::failed(why.clone()) };
            let text = serde_json::to_string(&report).unwrap_or_else(|_| "null".to_owned());
            c.exec(
                "UPDATE tasks SET state = 'done', result = $2, finished_at = $3, task = NULL, owner = NULL, needs = NULL
                 WHERE task_id = $1",
                &[(&task_id).into(), (&text).into(), now_ms().into()],
            )?;
            c.notify("loom_done", &task_id)?;
            Fate::Failed(why)
        }
        (_, None) => Fate::Decide,
    };
    Ok(Orphan { task_id, task_name, state, raw, fate })
}

fn read_peer(r: &Row) -> Result<Peer, SqlError> {
    Ok(Peer {
        id: r.text(0)?,
        name: r.text(1)?,
        host: r.text(2)?,
        pid: r.int(3)?,
        version: r.text(4)?,
        plugins: RawValue::from_string(r.text(5)?).unwrap_or_else(|_| RawValue::NULL.to_owned()),
        started_at: rfc3339(r.int(6)?),
        seen_at: rfc3339(r.int(7)?),
        alive: r.int(8)? == 1,
        stopped: r.int(9)? == 1,
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Where the journal is and how this daemon takes part in the fleet (`[journal]` in
/// `serve`'s configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// A PostgreSQL URL (`postgres://...`, `postgresql:///db?host=/run/postgresql`), for a
    /// journal shared by several daemons; `None`: SQLite in the data folder.
    pub url: Option<String>,
    /// A file holding the database password (one line), when the URL has none.
    pub password_file: Option<std::path::PathBuf>,
    /// This daemon's name in the fleet; the host name when `None`.
    pub name: Option<String>,
    /// How long a daemon's lease lasts without a heartbeat: after it, other daemons take
    /// its tasks over.
    pub lease: Duration,
    /// How often a daemon renews its lease.
    pub heartbeat: Duration,
    /// Most tasks a daemon of a fleet holds at once (running, or waiting in its plugins'
    /// queues); the others wait in the fleet's queue for whichever daemon has room.
    pub max_claimed: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            url: None,
            password_file: None,
            name: None,
            lease: Duration::from_secs(12),
            heartbeat: Duration::from_secs(3),
            max_claimed: 256,
        }
    }
}

impl Settings {
    /// This daemon's name: `name`, else the host name.
    pub fn member_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "loom".to_owned())
        })
    }
}
