//! A cluster as `cluster status` and `GET /v1/clusters/{name}` show it: state, nodes with
//! their addresses, endpoints and how to log in, the last failure's report. Never a
//! credential: of `ssh-auth` only the user, port and key file path are shown.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::lock::Locks;
use super::plan::Mark;
use super::spec::{self, ClusterSpec};
use super::store::{ClusterState, ClusterStore, TaskRow};
use crate::journal::JournalError;

/// A cluster, for people and scripts; read back from a daemon's answer by `cluster ...
/// --api`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub state: ClusterState,
    /// An operation was running when its process stopped: run it again to resume.
    pub interrupted: bool,
    /// An operation is running now.
    pub busy: bool,
    /// First brought up.
    pub created_at: String,
    /// Last changed.
    pub updated_at: String,
    /// The last operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_job: Option<String>,
    /// The nodes.
    pub nodes: Vec<NodeView>,
    /// Steps done and steps tried but not done.
    pub steps_done: usize,
    /// Steps tried and not (yet) done.
    pub steps_failed: usize,
    /// Why the last operation failed, and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
    /// Every task attempt, when asked for (not read back from JSON: a daemon's answer
    /// keeps them as JSON).
    #[serde(skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub tasks: Option<Vec<TaskRow>>,
}

/// One node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Its id.
    pub id: String,
    /// Its group.
    pub group: String,
    /// Its hostname.
    pub hostname: String,
    /// The address tasks reach it at, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The provider's id of its machine, once made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub providerid: Option<String>,
    /// Its services.
    pub services: Vec<String>,
    /// Where its services answer.
    pub endpoints: Vec<Endpoint>,
    /// How to log in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshView>,
}

/// A service's address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    /// The service.
    pub service: String,
    /// Its endpoint pattern, filled.
    pub url: String,
}

/// Login details without secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshView {
    /// The user.
    pub user: String,
    /// The port.
    pub port: u64,
    /// The key file on this host, when it is a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identityfile: Option<String>,
}

impl ClusterView {
    /// The cluster `name`, or `None` when unknown.
    ///
    /// # Errors
    /// When the journal fails.
    pub async fn load(
        store: &ClusterStore,
        locks: &Locks,
        name: &str,
        with_tasks: bool,
    ) -> Result<Option<ClusterView>, JournalError> {
        let Some(snap) = store.snapshot(name).await? else { return Ok(None) };
        let tasks = if with_tasks { Some(store.tasks(name).await?) } else { None };
        let busy = locks.is_held(name).await;
        let spec = ClusterSpec::from_value(&snap.cluster.spec, "stored spec", Path::new("/")).ok();
        let mut nodes = Vec::new();
        if let Some(spec) = &spec {
            for n in spec.nodes() {
                let learned = snap.learned.get(&n.id).cloned().unwrap_or_default();
                let touched = snap.marks.keys().any(|k| k.node == n.id);
                if !touched && learned.is_empty() {
                    continue;
                }
                let services = spec.services_of(&n).to_vec();
                let endpoints = services
                    .iter()
                    .filter_map(|s| {
                        let pattern = spec.services.get(s)?.endpoint.as_ref()?;
                        spec::address(&learned)?;
                        let url = spec::render(pattern, &|k| spec.var(&n, k, &learned));
                        Some(Endpoint { service: s.clone(), url })
                    })
                    .collect();
                nodes.push(NodeView {
                    id: n.id.clone(),
                    group: spec.node_groups.get(n.group).map(|g| g.name.clone()).unwrap_or_default(),
                    hostname: learned.get("hostname").and_then(Value::as_str).unwrap_or(&n.hostname).to_owned(),
                    address: spec::address(&learned),
                    providerid: learned.get("providerid").and_then(Value::as_str).map(str::to_owned),
                    services,
                    endpoints,
                    ssh: ssh_view(&learned),
                });
            }
        }
        let steps_done = snap.marks.values().filter(|m| **m == Mark::Done).count();
        Ok(Some(ClusterView {
            name: snap.cluster.name,
            state: snap.cluster.state,
            interrupted: snap.cluster.state.is_transient() && !busy,
            busy,
            created_at: snap.cluster.created_at,
            updated_at: snap.cluster.updated_at,
            last_job: snap.cluster.last_job,
            nodes,
            steps_done,
            steps_failed: snap.marks.len() - steps_done,
            report: snap.cluster.report,
            tasks,
        }))
    }

    /// The state as a person reads it.
    pub fn state_text(&self) -> String {
        match (self.interrupted, self.busy) {
            (true, _) => format!("{} (interrupted: run the operation again to resume)", self.state.as_str()),
            (_, true) => format!("{} (an operation is running)", self.state.as_str()),
            _ => self.state.as_str().to_owned(),
        }
    }

    /// The text `cluster status` prints.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "cluster {}: {}", self.name, self.state_text());
        let _ = writeln!(
            s,
            "  created {}, changed {}{}",
            self.created_at,
            self.updated_at,
            self.last_job.as_ref().map(|j| format!(", last operation {j}")).unwrap_or_default()
        );
        if !self.nodes.is_empty() {
            let w = self.nodes.iter().map(|n| n.id.len()).max().unwrap_or(4).max(4);
            let h = self.nodes.iter().map(|n| n.hostname.len()).max().unwrap_or(8).max(8);
            let _ = writeln!(s, "  {:<w$}  {:<h$}  {:<15}  services", "node", "hostname", "address");
            for n in &self.nodes {
                let _ = writeln!(
                    s,
                    "  {:<w$}  {:<h$}  {:<15}  {}",
                    n.id,
                    n.hostname,
                    n.address.as_deref().unwrap_or("-"),
                    n.services.join(", ")
                );
                for e in &n.endpoints {
                    let _ = writeln!(s, "  {:<w$}    {} at {}", "", e.service, e.url);
                }
                if let (Some(ssh), Some(addr)) = (&n.ssh, &n.address) {
                    let key = ssh.identityfile.as_ref().map(|k| format!("-i {k} ")).unwrap_or_default();
                    let _ = writeln!(s, "  {:<w$}    ssh {key}-p {} {}@{addr}", "", ssh.port, ssh.user);
                }
            }
        }
        if let Some(report) = &self.report {
            s.push_str(&report_text(report));
        }
        s
    }
}

fn ssh_view(learned: &Map<String, Value>) -> Option<SshView> {
    let auth = learned.get("ssh-auth")?.as_object()?;
    Some(SshView {
        user: auth.get("user")?.as_str()?.to_owned(),
        port: auth.get("port").and_then(Value::as_u64).unwrap_or(22),
        identityfile: auth.get("identityfile").and_then(Value::as_str).map(str::to_owned),
    })
}

/// A failure report as text: each failed step with its output's end, then what to do.
pub fn report_text(report: &Value) -> String {
    let mut s = String::new();
    let op = report.get("operation").and_then(Value::as_str).unwrap_or("operation");
    let job = report.get("job").and_then(Value::as_str).unwrap_or("");
    let _ = writeln!(s, "\n{op} {job} did not finish:");
    for f in report.get("failed").and_then(Value::as_array).into_iter().flatten() {
        let text = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let _ = writeln!(
            s,
            "  FAILED {} after {} attempt(s): task {} ({}) exited with status {}",
            text("step"),
            f.get("attempts").and_then(Value::as_u64).unwrap_or(0),
            text("taskId"),
            text("taskName"),
            f.get("status").and_then(Value::as_i64).unwrap_or(0)
        );
        for (name, stream) in [("stdout", text("stdout")), ("stderr", text("stderr"))] {
            let lines: Vec<&str> = stream.lines().collect();
            if lines.is_empty() {
                continue;
            }
            let _ = writeln!(s, "    {name} (last lines):");
            for l in &lines[lines.len().saturating_sub(15)..] {
                let _ = writeln!(s, "      {l}");
            }
        }
    }
    if let Some(n) = report.get("notRun").and_then(Value::as_u64).filter(|n| *n > 0) {
        let _ = writeln!(s, "  {n} step(s) were not started.");
    }
    for note in report.get("notes").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        let _ = writeln!(s, "  note: {note}");
    }
    if let Some(next) = report.get("next").and_then(Value::as_str) {
        let _ = writeln!(s, "  next: {next}");
    }
    s
}
