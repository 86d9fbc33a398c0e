//! Tasks as Loom sends them: the JSON a test feeds the supervisor.

use serde_json::{Value, json};

/// A task as Loom sent it, with `config`.
pub fn task(id: &str, name: &str, config: Value) -> Value {
    json!({"taskId": id, "jobId": "job-1", "clusterId": "cluster-1", "taskName": name, "nodeId": "node-1", "config": config})
}

/// A service-action task for automator `automator`, with `test` behaviour for the test plugin.
pub fn action(id: &str, name: &str, automator: &str, test: Value) -> Value {
    task(
        id,
        name,
        json!({"service": {"name": "svc", "action": {"type": automator, "script": "true", "data": ""}}, "test": test}),
    )
}

/// Shallow-merges the members of `extra` into `base`.
pub fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}
