//! Clusters in the journal: each cluster's spec and state, each node's learned config
//! (its tasks' results, merged), the mark of each step, and every task attempt with its
//! result. A task's start is committed before it is sent, and its result, the node's
//! merged config and the step's mark commit together, so a supervisor killed at any
//! point leaves a state that `cluster up` can resume from.
//!
//! The tables live in the daemon's journal file (`journal.sqlite3`, mode 0600): node
//! configs hold the `ssh-auth` their provider returned and specs hold provider fields,
//! both needed for as long as the cluster lives (its next task, `down`, a resume after a
//! restart). When it is terminated, both go (see [`ClusterStore::end`]). Task outputs
//! kept here were scrubbed of credentials by the supervisor.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::{Map, Value};

use super::plan::{JobKind, Mark, Marks, StepKey};
use crate::journal::sql::{Db, Dialect, Row, SqlError};
use crate::journal::{Journal, JournalError, now_ms, rfc3339};

/// Where a cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// `up` is running (or was, when its process died).
    Creating,
    /// Every service is up.
    Active,
    /// An operation failed or was interrupted: see the report.
    Incomplete,
    /// `down` is running.
    Deleting,
    /// `restart-services` or `reconfigure` is running.
    Updating,
    /// `down` finished: nothing is left.
    Terminated,
}

impl ClusterState {
    /// Every state, in the order of a cluster's life.
    pub const ALL: [ClusterState; 6] = [
        ClusterState::Creating,
        ClusterState::Active,
        ClusterState::Updating,
        ClusterState::Incomplete,
        ClusterState::Deleting,
        ClusterState::Terminated,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Creating => "creating",
            ClusterState::Active => "active",
            ClusterState::Incomplete => "incomplete",
            ClusterState::Deleting => "deleting",
            ClusterState::Updating => "updating",
            ClusterState::Terminated => "terminated",
        }
    }

    fn parse(s: &str) -> ClusterState {
        match s {
            "creating" => ClusterState::Creating,
            "active" => ClusterState::Active,
            "deleting" => ClusterState::Deleting,
            "updating" => ClusterState::Updating,
            "terminated" => ClusterState::Terminated,
            _ => ClusterState::Incomplete,
        }
    }

    /// The state while `kind` runs.
    pub fn during(kind: JobKind) -> ClusterState {
        match kind {
            JobKind::Up => ClusterState::Creating,
            JobKind::Down { .. } => ClusterState::Deleting,
            JobKind::RestartServices | JobKind::Reconfigure { .. } => ClusterState::Updating,
        }
    }

    /// Whether an operation was running in this state.
    pub fn is_transient(self) -> bool {
        matches!(self, ClusterState::Creating | ClusterState::Deleting | ClusterState::Updating)
    }
}

/// A cluster as stored.
#[derive(Debug, Clone)]
pub struct ClusterRecord {
    /// Its name.
    pub name: String,
    /// Its spec, in stored form ([`super::spec::ClusterSpec::to_value`]).
    pub spec: Value,
    /// Where it is.
    pub state: ClusterState,
    /// How many operations it has had.
    pub jobs: u32,
    /// The last operation's id.
    pub last_job: Option<String>,
    /// Why the last operation failed, when it did.
    pub report: Option<Value>,
    /// When it was first brought up (RFC 3339).
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
}

/// One task attempt.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRow {
    /// Its id (sent to the plugin).
    pub task_id: String,
    /// The operation that sent it.
    pub job_id: String,
    /// The step it belongs to.
    #[serde(serialize_with = "as_encoded")]
    pub step: StepKey,
    /// The task sent (differs from the step's for a CONFIRM retried as DELETE, CREATE).
    pub task_name: String,
    /// 1, 2, 3 ...
    pub attempt: u32,
    /// `running` until it answered (a `running` task with no operation running was
    /// interrupted and is sent again, with the same id, by the next operation).
    pub state: String,
    /// Its exit status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    /// The last part of its stdout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// The last part of its stderr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// How many times it was sent (more than 1 after an interruption).
    pub sends: u32,
    /// When it was (last) sent, RFC 3339.
    pub started_at: String,
    /// When it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// `started_at` in milliseconds since the epoch.
    pub started_ms: i64,
    /// `finished_at` in milliseconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
}

fn as_encoded<S: serde::Serializer>(k: &StepKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&k.encode())
}

/// Everything known about a cluster.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The cluster.
    pub cluster: ClusterRecord,
    /// Each node's learned config.
    pub learned: HashMap<String, Map<String, Value>>,
    /// Each step's mark.
    pub marks: Marks,
    /// Tasks sent and never answered (the process died), oldest first.
    pub interrupted: Vec<TaskRow>,
}

/// What a finished task changes, committed at once.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The task.
    pub task_id: String,
    /// Its step.
    pub step: StepKey,
    /// Its status.
    pub status: i64,
    /// Its stdout (tail).
    pub stdout: String,
    /// Its stderr (tail).
    pub stderr: String,
    /// The node's learned config after merging the result (`None`: unchanged).
    pub learned: Option<Map<String, Value>>,
    /// Steps to mark done.
    pub done: Vec<StepKey>,
    /// Marks this success undoes.
    pub undo: Vec<StepKey>,
}

/// The cluster tables of a journal.
#[derive(Clone)]
pub struct ClusterStore {
    journal: Journal,
}

/// Most characters of a task's stdout or stderr kept.
pub const OUTPUT_TAIL: usize = 16 * 1024;

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

impl ClusterStore {
    /// The cluster tables of `journal`.
    pub fn new(journal: Journal) -> ClusterStore {
        ClusterStore { journal }
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// One cluster.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn get(&self, name: &str) -> Result<Option<ClusterRecord>, JournalError> {
        let name = name.to_owned();
        self.journal.run(move |c| cluster(c, &name)).await
    }

    /// Every cluster, by name.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn list(&self) -> Result<Vec<ClusterRecord>, JournalError> {
        self.journal
            .run(|c| c.rows(&format!("{SELECT_CLUSTER} ORDER BY name"), &[])?.iter().map(read_cluster).collect())
            .await
    }

    /// How many clusters are in each state (states with none are left out).
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn count_by_state(&self) -> Result<Vec<(ClusterState, u64)>, JournalError> {
        self.journal
            .run(|c| {
                let rows = c.rows("SELECT state, COUNT(*) FROM clusters GROUP BY state", &[])?;
                let mut counts: Vec<(ClusterState, u64)> = Vec::new();
                for r in &rows {
                    let (state, n) = (ClusterState::parse(&r.text(0)?), u64::from(r.count(1)?));
                    match counts.iter_mut().find(|(s, _)| *s == state) {
                        Some((_, total)) => *total += n,
                        None => counts.push((state, n)),
                    }
                }
                Ok(counts)
            })
            .await
    }

    /// Everything known about a cluster.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn snapshot(&self, name: &str) -> Result<Option<Snapshot>, JournalError> {
        let name = name.to_owned();
        self.journal
            .run(move |c| {
                let Some(cluster) = cluster(c, &name)? else { return Ok(None) };
                let mut learned = HashMap::new();
                for row in c.rows("SELECT node_id, learned FROM cluster_nodes WHERE cluster = $1", &[(&name).into()])? {
                    let (node, text) = (row.text(0)?, row.text(1)?);
                    let map = serde_json::from_str::<Map<String, Value>>(&text).unwrap_or_default();
                    learned.insert(node, map);
                }
                let mut marks = Marks::new();
                for row in c.rows("SELECT step, mark FROM cluster_steps WHERE cluster = $1", &[(&name).into()])? {
                    let (step, mark) = (row.text(0)?, row.text(1)?);
                    if let Some(key) = StepKey::decode(&step) {
                        marks.insert(key, if mark == "done" { Mark::Done } else { Mark::Attempted });
                    }
                }
                let interrupted = tasks_where(c, &name, "AND state = 'running'")?;
                Ok(Some(Snapshot { cluster, learned, marks, interrupted }))
            })
            .await
    }

    /// Every task attempt of a cluster, in the order they were sent.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn tasks(&self, name: &str) -> Result<Vec<TaskRow>, JournalError> {
        let name = name.to_owned();
        self.journal.run(move |c| tasks_where(c, &name, "")).await
    }

    /// Starts an operation: records the spec, the state and the job; returns the job's
    /// id (`<cluster>.j<N>`). An `up` of a terminated cluster starts it afresh.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn begin(&self, name: &str, spec: &Value, kind: JobKind) -> Result<String, JournalError> {
        self.begin_as(name, spec, kind, ClusterState::during(kind)).await
    }

    /// [`ClusterStore::begin`], with the cluster in `state` while it runs (an operation
    /// on part of the cluster runs as `updating`, which a restarted daemon does not
    /// resume).
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn begin_as(
        &self,
        name: &str,
        spec: &Value,
        kind: JobKind,
        state: ClusterState,
    ) -> Result<String, JournalError> {
        let (name, spec) = (name.to_owned(), spec.to_string());
        let state = state.as_str();
        self.journal
            .run(move |c| {
                let now = now_ms();
                let existing = cluster(c, &name)?;
                if existing.as_ref().is_some_and(|e| e.state == ClusterState::Terminated) && kind == JobKind::Up {
                    for table in ["cluster_nodes", "cluster_steps"] {
                        c.exec(&format!("DELETE FROM {table} WHERE cluster = $1"), &[(&name).into()])?;
                    }
                }
                let jobs = existing.map_or(0, |e| e.jobs) + 1;
                let job = format!("{name}.j{jobs}");
                c.exec(
                    "INSERT INTO clusters (name, spec, state, jobs, last_job, report, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, NULL, $6, $6)
                     ON CONFLICT (name) DO UPDATE SET spec = $2, state = $3, jobs = $4, last_job = $5,
                         report = NULL, updated_at = $6",
                    &[(&name).into(), (&spec).into(), state.into(), jobs.into(), (&job).into(), now.into()],
                )?;
                Ok(job)
            })
            .await
    }

    /// Records that a task is being sent (committed before it is). A task id seen before
    /// (an interrupted attempt sent again) counts one more send.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn started(
        &self,
        cluster: &str,
        job: &str,
        task_id: &str,
        step: &StepKey,
        task_name: &str,
        attempt: u32,
    ) -> Result<(), JournalError> {
        let (cluster, job, id, step, name) =
            (cluster.to_owned(), job.to_owned(), task_id.to_owned(), step.encode(), task_name.to_owned());
        self.journal
            .run(move |c| {
                let now = now_ms();
                c.exec(
                    "INSERT INTO cluster_tasks (task_id, cluster, job_id, step, task_name, attempt, state, started_at)
                     VALUES ($1, $2, $3, $4, $5, $6, 'running', $7)
                     ON CONFLICT (task_id) DO UPDATE SET state = 'running', sends = cluster_tasks.sends + 1, started_at = $7",
                    &[(&id).into(), (&cluster).into(), (&job).into(), (&step).into(), (&name).into(), attempt.into(), now.into()],
                )?;
                c.exec(
                    "INSERT INTO cluster_steps (cluster, step, mark) VALUES ($1, $2, 'attempted') ON CONFLICT DO NOTHING",
                    &[(&cluster).into(), (&step).into()],
                )?;
                Ok(())
            })
            .await
    }

    /// Records a task's answer, the node's merged config and the step's mark, together.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn finished(&self, cluster: &str, f: Finished) -> Result<(), JournalError> {
        let cluster = cluster.to_owned();
        self.journal
            .run(move |c| {
                let now = now_ms();
                c.exec(
                    "UPDATE cluster_tasks SET state = 'done', status = $2, stdout = $3, stderr = $4, finished_at = $5
                     WHERE task_id = $1",
                    &[
                        (&f.task_id).into(),
                        f.status.into(),
                        tail(&f.stdout, OUTPUT_TAIL).into(),
                        tail(&f.stderr, OUTPUT_TAIL).into(),
                        now.into(),
                    ],
                )?;
                for k in &f.undo {
                    c.exec(
                        "DELETE FROM cluster_steps WHERE cluster = $1 AND step = $2",
                        &[(&cluster).into(), (&k.encode()).into()],
                    )?;
                }
                for k in &f.done {
                    c.exec(
                        "INSERT INTO cluster_steps (cluster, step, mark) VALUES ($1, $2, 'done')
                         ON CONFLICT (cluster, step) DO UPDATE SET mark = 'done'",
                        &[(&cluster).into(), (&k.encode()).into()],
                    )?;
                }
                if let Some(learned) = &f.learned {
                    let text = Value::Object(learned.clone()).to_string();
                    c.exec(
                        "INSERT INTO cluster_nodes (cluster, node_id, learned) VALUES ($1, $2, $3)
                         ON CONFLICT (cluster, node_id) DO UPDATE SET learned = $3",
                        &[(&cluster).into(), (&f.step.node).into(), (&text).into()],
                    )?;
                }
                c.exec("UPDATE clusters SET updated_at = $2 WHERE name = $1", &[(&cluster).into(), now.into()])?;
                Ok(())
            })
            .await
    }

    /// Closes a task that was interrupted and that the next operation does not send
    /// again (it was part of another kind of operation).
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn abandon(&self, task_id: &str) -> Result<(), JournalError> {
        let id = task_id.to_owned();
        self.journal
            .run(move |c| {
                c.exec(
                    "UPDATE cluster_tasks SET state = 'done', status = -1, finished_at = $2,
                         stderr = 'interrupted: the operation that sent it stopped, and the next operation was a different one'
                     WHERE task_id = $1",
                    &[(&id).into(), now_ms().into()],
                )
                .map(drop)
            })
            .await
    }

    /// Ends an operation with the cluster's new state and, on failure, the report. A
    /// terminated cluster keeps no credential: its node configs (with the `ssh-auth` its
    /// provider returned) are deleted, and the credential values of its stored spec
    /// (provider fields, node group configs) are replaced by [`crate::wire::redact::MASK`]. An
    /// `up` of it takes a spec again.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn end(&self, name: &str, state: ClusterState, report: Option<&Value>) -> Result<(), JournalError> {
        let (name, report) = (name.to_owned(), report.map(Value::to_string));
        self.journal
            .run(move |c| {
                c.exec(
                    "UPDATE clusters SET state = $2, report = $3, updated_at = $4 WHERE name = $1",
                    &[(&name).into(), state.as_str().into(), report.as_ref().into(), now_ms().into()],
                )?;
                if state == ClusterState::Terminated {
                    c.exec("DELETE FROM cluster_nodes WHERE cluster = $1", &[(&name).into()])?;
                    c.exec("DELETE FROM cluster_steps WHERE cluster = $1", &[(&name).into()])?;
                    mask_spec(c, &name)?;
                }
                Ok(())
            })
            .await
    }

    /// After a scale-down succeeded: records `spec` as the cluster's, and forgets what was
    /// recorded about nodes not in `kept` (their configs and step marks; their tasks stay
    /// in the history).
    ///
    /// # Errors
    /// When the journal fails; nothing is changed then.
    pub async fn settle(&self, name: &str, spec: &Value, kept: &BTreeSet<String>) -> Result<(), JournalError> {
        let (name, spec, kept) = (name.to_owned(), spec.to_string(), kept.clone());
        self.journal
            .run(move |c| {
                c.exec(
                    "UPDATE clusters SET spec = $2, updated_at = $3 WHERE name = $1",
                    &[(&name).into(), (&spec).into(), now_ms().into()],
                )?;
                for row in c.rows("SELECT node_id FROM cluster_nodes WHERE cluster = $1", &[(&name).into()])? {
                    let node = row.text(0)?;
                    if !kept.contains(&node) {
                        c.exec(
                            "DELETE FROM cluster_nodes WHERE cluster = $1 AND node_id = $2",
                            &[(&name).into(), (&node).into()],
                        )?;
                    }
                }
                for row in c.rows("SELECT step FROM cluster_steps WHERE cluster = $1", &[(&name).into()])? {
                    let step = row.text(0)?;
                    if StepKey::decode(&step).is_some_and(|k| !kept.contains(&k.node)) {
                        c.exec(
                            "DELETE FROM cluster_steps WHERE cluster = $1 AND step = $2",
                            &[(&name).into(), (&step).into()],
                        )?;
                    }
                }
                Ok(())
            })
            .await
    }

    /// Forgets a terminated cluster and its history. Returns whether it was there.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn forget(&self, name: &str) -> Result<bool, JournalError> {
        let name = name.to_owned();
        self.journal
            .run(move |c| {
                for table in ["cluster_nodes", "cluster_steps", "cluster_tasks"] {
                    c.exec(&format!("DELETE FROM {table} WHERE cluster = $1"), &[(&name).into()])?;
                }
                Ok(c.exec("DELETE FROM clusters WHERE name = $1", &[(&name).into()])? > 0)
            })
            .await
    }
}

/// Replaces the credential values of cluster `name`'s stored spec with
/// [`crate::wire::redact::MASK`] (same rule as for tasks: under credential-named keys).
fn mask_spec(c: &mut dyn Db, name: &str) -> Result<(), SqlError> {
    let spec = c.row("SELECT spec FROM clusters WHERE name = $1", &[name.into()])?.map(|r| r.text(0)).transpose()?;
    let Some(mut spec) = spec.and_then(|t| serde_json::from_str::<Value>(&t).ok()) else { return Ok(()) };
    // `services` is keyed by service names (data, not field names): each is masked by its
    // own members (Coopr's `actions.<task>.fields.password`).
    let services = spec.get_mut("services").map(Value::take);
    crate::wire::redact::mask_credentials(&mut spec);
    if let Some(mut services) = services {
        services
            .as_object_mut()
            .into_iter()
            .flat_map(|m| m.values_mut())
            .for_each(crate::wire::redact::mask_credentials);
        spec["services"] = services;
    }
    c.exec("UPDATE clusters SET spec = $2 WHERE name = $1", &[name.into(), (&spec.to_string()).into()]).map(drop)
}

const SELECT_CLUSTER: &str = "SELECT name, spec, state, jobs, last_job, report, created_at, updated_at FROM clusters";

fn cluster(c: &mut dyn Db, name: &str) -> Result<Option<ClusterRecord>, SqlError> {
    c.row(&format!("{SELECT_CLUSTER} WHERE name = $1"), &[name.into()])?.map(|r| read_cluster(&r)).transpose()
}

fn read_cluster(r: &Row) -> Result<ClusterRecord, SqlError> {
    Ok(ClusterRecord {
        name: r.text(0)?,
        spec: serde_json::from_str(&r.text(1)?).unwrap_or(Value::Null),
        state: ClusterState::parse(&r.text(2)?),
        jobs: r.count(3)?,
        last_job: r.opt_text(4)?,
        report: r.opt_text(5)?.and_then(|t| serde_json::from_str(&t).ok()),
        created_at: rfc3339(r.int(6)?),
        updated_at: rfc3339(r.int(7)?),
    })
}

fn tasks_where(c: &mut dyn Db, cluster: &str, filter: &str) -> Result<Vec<TaskRow>, SqlError> {
    // The order tasks were first recorded in, for tasks started in the same millisecond.
    let recorded = match c.dialect() {
        Dialect::Sqlite => "rowid",
        Dialect::Postgres => "seq",
    };
    let rows = c.rows(
        &format!(
            "SELECT task_id, job_id, step, task_name, attempt, state, status, stdout, stderr, sends, started_at, finished_at
             FROM cluster_tasks WHERE cluster = $1 {filter} ORDER BY started_at, {recorded}"
        ),
        &[cluster.into()],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let Some(step) = StepKey::decode(&r.text(2)?) else { continue };
        let (started, finished) = (r.int(10)?, r.opt_int(11)?);
        out.push(TaskRow {
            task_id: r.text(0)?,
            job_id: r.text(1)?,
            step,
            task_name: r.text(3)?,
            attempt: r.count(4)?,
            state: r.text(5)?,
            status: r.opt_int(6)?,
            stdout: r.opt_text(7)?,
            stderr: r.opt_text(8)?,
            sends: r.count(9)?,
            started_at: rfc3339(started),
            finished_at: finished.map(rfc3339),
            started_ms: started,
            finished_ms: finished,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use loom_protocol::TaskName;
    use serde_json::json;

    #[tokio::test]
    async fn a_job_records_tasks_marks_and_learned_config_and_survives_a_reopen() {
        let dir = crate::core::trust::test_dir();
        let create = StepKey::node(TaskName::Create, "c-a-1");
        {
            let store = ClusterStore::new(Journal::open(dir.path()).unwrap());
            let job = store.begin("c", &json!({"name": "c"}), JobKind::Up).await.unwrap();
            assert_eq!(job, "c.j1");
            store.started("c", &job, "t1", &create, "CREATE", 1).await.unwrap();
            let learned = json!({"providerid": "p-1"}).as_object().cloned();
            let f = Finished {
                task_id: "t1".into(),
                step: create.clone(),
                status: 0,
                stdout: "x".repeat(OUTPUT_TAIL + 10),
                stderr: String::new(),
                learned,
                done: vec![create.clone()],
                undo: vec![],
            };
            store.finished("c", f).await.unwrap();
            let confirm = StepKey::node(TaskName::Confirm, "c-a-1");
            store.started("c", &job, "t2", &confirm, "CONFIRM", 1).await.unwrap();
        }
        let store = ClusterStore::new(Journal::open(dir.path()).unwrap());
        let snap = store.snapshot("c").await.unwrap().unwrap();
        assert_eq!(snap.cluster.state, ClusterState::Creating);
        assert_eq!(snap.marks.get(&create), Some(&Mark::Done));
        assert_eq!(snap.learned["c-a-1"]["providerid"], "p-1");
        let interrupted: Vec<_> = snap.interrupted.iter().map(|t| t.task_id.as_str()).collect();
        assert_eq!(interrupted, ["t2"]);
        let tasks = store.tasks("c").await.unwrap();
        assert_eq!(tasks[0].stdout.as_ref().map(String::len), Some(OUTPUT_TAIL));
        // Sending the interrupted task again keeps its id and counts the send.
        let job = store.begin("c", &json!({"name": "c"}), JobKind::Up).await.unwrap();
        assert_eq!(job, "c.j2");
        store.started("c", &job, "t2", &tasks[1].step, "CONFIRM", 1).await.unwrap();
        assert_eq!(store.tasks("c").await.unwrap()[1].sends, 2);
    }

    #[tokio::test]
    async fn a_terminated_cluster_keeps_no_credential() {
        let dir = crate::core::trust::test_dir();
        let store = ClusterStore::new(Journal::open(dir.path()).unwrap());
        let spec = json!({"name": "c", "provider": {"name": "p", "fields": {"api_user": "me", "api_key": "spec-key-1"}},
                          "nodeGroups": [{"name": "n", "config": {"credentials": {"pw": "spec-pw-2"}}}],
                          "services": {"keystore": {"actions": {"install": {"type": "shell", "script": "k.sh",
                                                    "fields": {"password": "action-pw-4"}}}}}});
        let job = store.begin("c", &spec, JobKind::Up).await.unwrap();
        let create = StepKey::node(TaskName::Create, "c-n-1");
        store.started("c", &job, "t1", &create, "CREATE", 1).await.unwrap();
        let learned = json!({"ssh-auth": {"user": "root", "password": "learned-pw-3"}}).as_object().cloned();
        let f = Finished {
            task_id: "t1".into(),
            step: create.clone(),
            status: 0,
            stdout: String::new(),
            stderr: String::new(),
            learned,
            done: vec![create],
            undo: vec![],
        };
        store.finished("c", f).await.unwrap();
        store.end("c", ClusterState::Active, None).await.unwrap();
        // Alive: everything is kept, since its next operation needs it.
        assert_eq!(store.get("c").await.unwrap().unwrap().spec, spec);
        store.end("c", ClusterState::Terminated, None).await.unwrap();
        let kept = store.get("c").await.unwrap().unwrap().spec;
        assert_eq!(kept["provider"]["fields"], json!({"api_user": "me", "api_key": crate::wire::redact::MASK}));
        assert_eq!(kept["nodeGroups"][0]["config"]["credentials"]["pw"], crate::wire::redact::MASK);
        let install = &kept["services"]["keystore"]["actions"]["install"];
        assert_eq!(
            (install["script"].as_str(), install["fields"]["password"].as_str()),
            (Some("k.sh"), Some(crate::wire::redact::MASK))
        );
        store.journal().checkpoint().await.unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let bytes = std::fs::read(e.path()).unwrap();
            for needle in ["spec-key-1", "spec-pw-2", "learned-pw-3", "action-pw-4"] {
                assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} in {e:?}");
            }
        }
    }

    #[tokio::test]
    async fn terminated_clusters_forget_nodes_and_marks_and_start_afresh() {
        let dir = crate::core::trust::test_dir();
        let store = ClusterStore::new(Journal::open(dir.path()).unwrap());
        let create = StepKey::node(TaskName::Create, "c-a-1");
        let job = store.begin("c", &json!({}), JobKind::Up).await.unwrap();
        store.started("c", &job, "t1", &create, "CREATE", 1).await.unwrap();
        store.end("c", ClusterState::Terminated, None).await.unwrap();
        let snap = store.snapshot("c").await.unwrap().unwrap();
        assert!(snap.marks.is_empty());
        assert_eq!(snap.cluster.state, ClusterState::Terminated);
        store.begin("c", &json!({}), JobKind::Up).await.unwrap();
        assert_eq!(store.get("c").await.unwrap().unwrap().state, ClusterState::Creating);
        assert!(store.forget("c").await.unwrap());
        assert!(store.list().await.unwrap().is_empty());
    }

    /// The cluster tables on both engines (`crate::journal::contract`).
    async fn the_cluster_tables_work(journal: Journal) {
        let store = ClusterStore::new(journal);
        let job = store.begin("c", &json!({"name": "c"}), JobKind::Up).await.unwrap();
        let create = StepKey::node(TaskName::Create, "c-a-1");
        store.started("c", &job, "t1", &create, "CREATE", 1).await.unwrap();
        store.started("c", &job, "t1", &create, "CREATE", 1).await.unwrap();
        let tasks = store.tasks("c").await.unwrap();
        assert_eq!((tasks.len(), tasks[0].sends), (1, 2));
        let snap = store.snapshot("c").await.unwrap().unwrap();
        assert_eq!(snap.interrupted.len(), 1);
        assert_eq!(snap.marks.get(&create), Some(&Mark::Attempted));
        store.end("c", ClusterState::Terminated, None).await.unwrap();
        assert_eq!(store.get("c").await.unwrap().unwrap().state, ClusterState::Terminated);
        assert!(store.forget("c").await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cluster_tables_work_on_sqlite() {
        the_cluster_tables_work(crate::journal::contract::sqlite().open()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cluster_tables_work_on_postgres() {
        if let Some(fresh) = crate::journal::contract::postgres() {
            the_cluster_tables_work(fresh.open()).await;
        }
    }
}
