//! The tasks `check` sends: plausible Loom tasks with planted credentials, the check
//! protocol's wait task, and a user's own (`--task`).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};

use loom_protocol::{PluginKind, TaskName};
use serde_json::{Map, Value, json};

/// The config key of a wait task (PROTOCOL.md section 10).
pub const WAIT_KEY: &str = "loom-check";

/// Recognisable fake credentials, fresh for each run, planted in every built-in task: a
/// plugin that shows one of them anywhere but a task answer's `result` leaks
/// credentials (P-4.2-credentials-private).
#[derive(Debug, Clone)]
pub struct Planted {
    /// (where it is planted, the value).
    pub values: Vec<(&'static str, String)>,
}

impl Planted {
    /// New values: `loomcheck-<8 hex>-<field>`.
    pub fn new() -> Planted {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        let tag = format!("{:08x}", h.finish() as u32);
        let v = |field: &str| format!("loomcheck-{tag}-{field}");
        Planted {
            values: vec![
                ("config.ssh-auth.password", v("sshpw")),
                ("config.provider.provisioner.api_password", v("apipw")),
                ("config.provider.provisioner.auth.secret_key", v("secretkey")),
                ("config.provider.provisioner.token", v("token")),
            ],
        }
    }

    fn get(&self, i: usize) -> &str {
        self.values.get(i).map_or("", |(_, v)| v.as_str())
    }

    /// The first planted value found in `text` (whole, or the half of one that a plugin
    /// cutting its output in chunks may show alone), and where it was planted.
    pub fn found_in(&self, text: &str) -> Option<&'static str> {
        self.values.iter().find_map(|(place, v)| {
            let half = v.len() / 2;
            let hit = text.contains(v.as_str()) || text.contains(&v[..half]) || text.contains(&v[half..]);
            hit.then_some(*place)
        })
    }
}

/// The tasks of one run: built-in ones, or the user's for the names they gave.
#[derive(Debug)]
pub struct Samples {
    plugin: String,
    /// The fake credentials in the built-in tasks.
    pub planted: Planted,
    user: BTreeMap<TaskName, Value>,
    /// A user's task that runs long enough to cancel (`--slow-task`).
    pub slow: Option<Value>,
    /// Credential values of the user's tasks, longest first: scrubbed from the report.
    pub secrets: Vec<String>,
}

impl Samples {
    /// Samples for `plugin`, with the user's tasks by name.
    pub fn new(plugin: &str, user: BTreeMap<TaskName, Value>, slow: Option<Value>, secrets: Vec<String>) -> Samples {
        Samples { plugin: plugin.to_owned(), planted: Planted::new(), user, slow, secrets }
    }

    /// A task of `name` with id `task_id`: the user's, or a plausible one as Loom sent
    /// them, with `learned` (what earlier tasks returned) on top of its config.
    pub fn task(&self, name: TaskName, task_id: &str, learned: &Map<String, Value>) -> Value {
        if let Some(user) = self.user.get(&name) {
            let mut t = user.clone();
            t["taskId"] = json!(task_id);
            return t;
        }
        self.builtin(name, task_id, learned)
    }

    fn builtin(&self, name: TaskName, task_id: &str, learned: &Map<String, Value>) -> Value {
        let p = &self.plugin;
        let mut task = json!({
            "taskId": task_id,
            "jobId": "check-job",
            "clusterId": "check-cluster",
            "taskName": name,
            "nodeId": "check-node",
            "config": {
                "cluster": {},
                "hostname": "check-node.local",
                "flavor": "small",
                "image": "check-image",
                "automators": [p],
                "provider": {"name": p, "providertype": p, "provisioner": {
                    "api_user": "loom-check",
                    "api_password": self.planted.get(1),
                    "auth": {"secret_key": self.planted.get(2)},
                    "token": self.planted.get(3),
                }},
                "providerid": "check-provider-id",
                "ipaddress": "127.0.0.1",
                "ssh-auth": {"user": "loom", "password": self.planted.get(0)},
                "service": {"name": "check-service", "action": {"type": p, "script": "echo loom-check", "data": ""}},
                "nodes": {}
            }
        });
        if let Some(config) = task["config"].as_object_mut() {
            config.extend(learned.clone());
        }
        task
    }

    /// The same action task in Coopr's form: `action.fields.{script, args}`.
    pub fn coopr_form(&self, name: TaskName, task_id: &str, learned: &Map<String, Value>) -> Value {
        let mut t = self.task(name, task_id, learned);
        let action = &mut t["config"]["service"]["action"];
        if let Some(script) = action.get("script").cloned() {
            let args = action.get("data").cloned().unwrap_or(json!(""));
            *action = json!({"type": action["type"].clone(), "fields": {"script": script, "args": args}});
        }
        t
    }

    /// A task that cannot harm anything: DELETE of a machine that does not exist, or
    /// REMOVE; else the last task the plugin declared. Always the built-in sample, with
    /// its fake credentials, never a user's `--task` (which may reach a real cloud).
    pub fn harmless(&self, kind: PluginKind, declared: &[TaskName], task_id: &str) -> Value {
        let name = harmless_name(kind, declared);
        let mut t = self.builtin(name, task_id, &Map::new());
        t["config"]["providerid"] = json!(format!("loom-check-unknown-{task_id}"));
        t
    }

    /// A wait task of the check protocol: `waitSecs` seconds of nothing.
    pub fn wait(&self, kind: PluginKind, declared: &[TaskName], task_id: &str, secs: f64) -> Value {
        let mut t = self.harmless(kind, declared, task_id);
        t["config"][WAIT_KEY] = json!({"waitSecs": secs});
        t
    }
}

/// DELETE for a provider, REMOVE for an automator, when declared; else the last declared.
pub fn harmless_name(kind: PluginKind, declared: &[TaskName]) -> TaskName {
    let want = match kind {
        PluginKind::Provider => TaskName::Delete,
        PluginKind::Automator => TaskName::Remove,
    };
    if declared.contains(&want) { want } else { declared.last().copied().unwrap_or(want) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_values_are_found_whole_or_halved() {
        let p = Planted::new();
        let v = p.values[0].1.clone();
        assert_eq!(p.found_in(&format!("password is {v}")), Some("config.ssh-auth.password"));
        assert!(p.found_in(&v[v.len() / 2..]).is_some());
        assert!(p.found_in("nothing here").is_none());
        let s = Samples::new("p", BTreeMap::new(), None, vec![]);
        let t = s.task(TaskName::Create, "t1", &Map::new());
        assert_eq!(t["config"]["ssh-auth"]["password"], json!(s.planted.values[0].1));
        let c = s.coopr_form(TaskName::Install, "t2", &Map::new());
        assert_eq!(c["config"]["service"]["action"]["fields"]["script"], json!("echo loom-check"));
    }
}
