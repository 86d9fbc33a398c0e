//! A Loom task and its result, as Loom's server and plugins exchanged them.
//!
//! The supervisor forwards the task object exactly as it was submitted; these owned types
//! are a convenient typed view for plugins and tools. Unknown top-level members are kept in
//! `extra`, so reading and writing a task or a result through them loses nothing.

use serde::Serialize;
use serde_json::{Map, Value};

pub use crate::names::{TaskName, UnknownTaskName};

mod config;
mod de;

pub use config::Config;

/// A Loom task: `taskId, jobId, clusterId, taskName, nodeId, config`.
///
/// Deserialized by hand (see `task/de.rs`), in one pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Unique per task; the supervisor reports results under it.
    pub task_id: String,
    /// Which of the ten tasks this is.
    pub task_name: TaskName,
    /// The job (cluster operation) this task belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The cluster this task belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The node this task runs for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Everything the task needs: `provider`, `service`, `automators`, `ssh-auth`, and every
    /// key that earlier tasks' results put there (`providerid`, `ipaddress`, ...). A `Map`
    /// (it derefs to one), read from the task's text when first used.
    #[serde(default)]
    pub config: Config,
    /// Any other top-level members, kept as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Task {
    /// `config.provider.providertype`, else `config.provider.name`: the provider plugin
    /// that Loom routed CREATE, CONFIRM and DELETE to.
    pub fn provider_type(&self) -> Option<&str> {
        let provider = self.config.get("provider")?;
        provider.get("providertype").or_else(|| provider.get("name"))?.as_str()
    }

    /// The provider's own fields: `config.provider.provisioner` (Loom nested credentials
    /// under its `auth`; Coopr kept them flat).
    pub fn provider_fields(&self) -> Option<&Map<String, Value>> {
        self.config.get("provider")?.get("provisioner")?.as_object()
    }

    /// `config.service.action`: Loom's `{type, script, data}` or Coopr's `{type, fields}`.
    pub fn service_action(&self) -> Option<&Map<String, Value>> {
        self.config.get("service")?.get("action")?.as_object()
    }

    /// `config.service.action.type`: the automator Loom routed service actions to.
    pub fn automator_type(&self) -> Option<&str> {
        self.service_action()?.get("type")?.as_str()
    }

    /// The action's script: Loom's `action.script`, else Coopr's `action.fields.script`.
    pub fn action_script(&self) -> Option<&str> {
        let action = self.service_action()?;
        action.get("script").or_else(|| action.get("fields")?.get("script"))?.as_str()
    }

    /// The action's data: Loom's `action.data`, else Coopr's `action.fields.args` or
    /// `action.fields.data`.
    pub fn action_data(&self) -> Option<&str> {
        let action = self.service_action()?;
        let fields = action.get("fields");
        action.get("data").or_else(|| fields?.get("args")).or_else(|| fields?.get("data"))?.as_str()
    }

    /// `config.ssh-auth`: `user` plus `password` or `identityfile`, as the provider left it.
    pub fn ssh_auth(&self) -> Option<&Map<String, Value>> {
        self.config.get("ssh-auth")?.as_object()
    }

    /// `config.automators`: the automators that BOOTSTRAP runs, in order.
    pub fn automators(&self) -> Vec<&str> {
        self.config
            .get("automators")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
}

/// What a plugin answers for a task: `status` (0 is success) plus what it learned.
///
/// Deserialized by hand (see `task/de.rs`), in one pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskResult {
    /// 0 for success; anything else is a failure that still carries its result keys.
    pub status: i64,
    /// Keys that later tasks of the node see at the top level of their `config`.
    #[serde(default)]
    pub result: Map<String, Value>,
    /// Captured standard output of what the task ran.
    #[serde(default)]
    pub stdout: String,
    /// Captured standard error, or why the task failed.
    #[serde(default)]
    pub stderr: String,
    /// The machine's hostname, when the task learned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The machine's addresses (`{"access_v4": ..., "bind_v4": ...}`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipaddresses: Option<Value>,
    /// Any other top-level members, kept as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TaskResult {
    /// A success with no result keys.
    pub fn ok() -> Self {
        TaskResult::default()
    }

    /// A failure with status 1 and the reason in `stderr`.
    pub fn failed(reason: impl Into<String>) -> Self {
        TaskResult { status: 1, stderr: reason.into(), ..TaskResult::default() }
    }

    /// Whether `status` is 0.
    pub fn is_success(&self) -> bool {
        self.status == 0
    }

    /// Sets `result[key] = value`, returning `self` for chaining.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.result.insert(key.into(), value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = include_str!("../tests/data/start-hbase-regionserver.json");
    const BOOTSTRAP: &str = include_str!("../tests/data/bootstrap-coopr-fixture.json");

    #[test]
    fn real_loom_tasks_read_and_write_back_unchanged() {
        for text in [START, BOOTSTRAP] {
            let original: Value = serde_json::from_str(text).unwrap();
            let task: Task = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_value(&task).unwrap(), original);
        }
    }

    #[test]
    fn loom_routing_fields() {
        let start: Task = serde_json::from_str(START).unwrap();
        assert_eq!(start.task_name, TaskName::Start);
        assert_eq!(start.automator_type(), Some("chef"));
        assert_eq!(start.provider_type(), Some("rackspace"));
        assert!(start.action_script().is_some_and(|s| s.starts_with("recipe[hadoop_wrapper")));
        assert!(start.action_data().is_some_and(|s| s.contains("hbase-regionserver")));
        let boot: Task = serde_json::from_str(BOOTSTRAP).unwrap();
        assert_eq!(boot.automators(), vec!["shell", "chef"]);
        assert_eq!(boot.ssh_auth().and_then(|a| a.get("user")), Some(&Value::from("root")));
    }

    #[test]
    fn coopr_action_fields() {
        let task: Task = serde_json::from_value(serde_json::json!({
            "taskId": "t", "taskName": "INSTALL",
            "config": {"service": {"name": "web", "action": {"type": "shell", "fields": {"script": "install.sh", "args": "--fast"}}}}
        }))
        .unwrap();
        assert_eq!(task.action_script(), Some("install.sh"));
        assert_eq!(task.action_data(), Some("--fast"));
    }

    #[test]
    fn unknown_task_names_are_named_in_the_error() {
        let err = "DESTROY".parse::<TaskName>().unwrap_err();
        assert!(err.to_string().contains("\"DESTROY\""));
        assert!(err.to_string().contains("INITIALIZE"));
        assert!(serde_json::from_str::<TaskName>("\"create\"").is_err(), "names are upper case");
    }

    #[test]
    fn result_keeps_unknown_members_and_requires_status() {
        let r: TaskResult = serde_json::from_str(r#"{"status":0,"result":{"a":1},"workerId":"w1"}"#).unwrap();
        assert_eq!(r.extra.get("workerId"), Some(&Value::from("w1")));
        assert!(serde_json::from_str::<TaskResult>(r#"{"result":{}}"#).is_err());
    }

    #[test]
    fn numbers_read_back_exactly_after_being_written() {
        // Found by the message_decode fuzz target: serde_json's default float reading is
        // not correctly rounded, so this value, written out and read again, came back as
        // 4.444444444444443e81 (and a plugin's result changed on its way through).
        let text = r#"{"status":0,"result":{"size":4.444444444444444e+81,"big":44444444444444444000000000000000000000000000000000000000000000000000000000000000000}}"#;
        let r: TaskResult = serde_json::from_str(text).unwrap();
        assert_eq!(r.result["size"].as_f64(), Some(4.444444444444444e81));
        let again: TaskResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }
}
