//! The task each step sends, built as Loom's server built it: `taskId, jobId, clusterId,
//! taskName, nodeId, config`, where `config` is what the spec gives the node, overwritten
//! by what its earlier tasks returned ([`merge`]), plus every node's addresses (`nodes`)
//! and, for a service action, the action with its placeholders filled (`service`).
//!
//! Pure functions of the spec and of what the nodes' tasks returned; [`super::job`] keeps
//! those results, journals them and sends what is built here.

use std::collections::HashMap;

use loom_protocol::{TaskName, TaskResult};
use serde_json::{Map, Value, json};

use super::plan::StepKey;
use super::spec::{ClusterSpec, NodeSpec};

/// The tasks of one operation: what each is built from.
pub struct Tasks<'a> {
    /// The cluster.
    pub spec: &'a ClusterSpec,
    /// Its nodes ([`ClusterSpec::nodes`]).
    pub nodes: &'a [NodeSpec],
    /// The operation's id, `<cluster>.j<N>`.
    pub job_id: &'a str,
}

impl Tasks<'_> {
    /// `demo-web-1.INSTALL.web.j3a1`: unique, readable, usable as a file name.
    pub fn id(&self, key: &StepKey, task: TaskName, attempt: u32) -> String {
        let job = self.job_id.rsplit('.').next().unwrap_or(self.job_id);
        match &key.service {
            Some(s) => format!("{}.{task}.{s}.{job}a{attempt}", key.node),
            None => format!("{}.{task}.{job}a{attempt}", key.node),
        }
    }

    /// The task as Loom's server sent it: `taskId, jobId, clusterId, taskName, nodeId,
    /// config`, where `config` is the node's spec-given config, overwritten by what its
    /// tasks returned (`learned`, by node id), plus `nodes` (every node) and `service`
    /// (for service actions).
    pub fn body(
        &self,
        key: &StepKey,
        task: TaskName,
        task_id: &str,
        learned: &HashMap<String, Map<String, Value>>,
    ) -> Value {
        let node = self.nodes.iter().find(|n| n.id == key.node);
        let mut config = match node {
            Some(n) => node_config(self.spec, n, learned.get(&n.id)),
            None => Map::new(),
        };
        config.insert("nodes".into(), nodes_view(self.spec, self.nodes, learned));
        if let (Some(service), Some(n)) = (&key.service, node) {
            let action = self
                .spec
                .services
                .get(service)
                .and_then(|s| s.actions.get(&task))
                .map(|a| render_action(self.spec, n, a, learned.get(&n.id)))
                .unwrap_or_default();
            config.insert("service".into(), json!({"name": service, "action": Value::Object(action)}));
        }
        json!({
            "taskId": task_id,
            "jobId": self.job_id,
            "clusterId": self.spec.name,
            "taskName": task.as_str(),
            "nodeId": key.node,
            "config": Value::Object(config),
        })
    }
}

/// Merges a task's result into its node's learned config as Loom's server did: result
/// keys by shallow overwrite (also when the task failed); `hostname` and `ipaddresses`
/// only on success. A DELETE that succeeded leaves nothing; a CREATE answering a 2xx
/// status created nothing and changes nothing.
pub fn merge(learned: &mut Map<String, Value>, task: TaskName, result: &TaskResult) {
    if task == TaskName::Delete && result.is_success() {
        learned.clear();
        return;
    }
    if task == TaskName::Create && created_nothing(result) {
        return;
    }
    for (k, v) in &result.result {
        learned.insert(k.clone(), v.clone());
    }
    if result.is_success() {
        if let Some(h) = &result.hostname {
            learned.insert("hostname".into(), Value::String(h.clone()));
        }
        if let Some(ip) = &result.ipaddresses {
            learned.insert("ipaddresses".into(), ip.clone());
        }
    }
}

/// Coopr's CREATE convention: a 2xx status means the provider made nothing (it refused).
pub(super) fn created_nothing(result: &TaskResult) -> bool {
    (200..300).contains(&result.status)
}

/// A node's `config` before `nodes` and `service`: what the spec gives it, then what its
/// tasks returned on top.
pub fn node_config(spec: &ClusterSpec, node: &NodeSpec, learned: Option<&Map<String, Value>>) -> Map<String, Value> {
    let mut c = Map::new();
    if let Some(g) = spec.node_groups.get(node.group) {
        c.extend(g.config.clone());
        if let Some(f) = &g.flavor {
            c.insert("flavor".into(), f.clone().into());
            c.insert("hardwaretype".into(), json!({"name": f, "flavor": f}));
        }
        if let Some(i) = &g.image {
            c.insert("image".into(), i.clone().into());
            c.insert("imagetype".into(), json!({"name": i, "image": i}));
        }
    }
    c.insert("hostname".into(), node.hostname.clone().into());
    c.insert("nodenum".into(), node.nodenum.to_string().into());
    c.insert("services".into(), spec.services_of(node).to_vec().into());
    c.insert("automators".into(), spec.automators_of(node).into());
    c.insert(
        "provider".into(),
        json!({
            "name": spec.provider.name,
            "providertype": spec.provider.name,
            "provisioner": Value::Object(spec.provider.fields.clone()),
        }),
    );
    c.insert("cluster".into(), Value::Object(spec.config.clone()));
    if let Some(l) = learned {
        for (k, v) in l {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// `config.nodes`: every node's hostname, number, addresses and services, by id.
fn nodes_view(spec: &ClusterSpec, nodes: &[NodeSpec], learned: &HashMap<String, Map<String, Value>>) -> Value {
    let mut all = Map::new();
    for n in nodes {
        let l = learned.get(&n.id);
        let mut o = Map::new();
        let hostname = l.and_then(|l| l.get("hostname")).cloned().unwrap_or_else(|| n.hostname.clone().into());
        o.insert("hostname".into(), hostname);
        o.insert("nodenum".into(), n.nodenum.to_string().into());
        for key in ["ipaddress", "ipaddresses"] {
            if let Some(v) = l.and_then(|l| l.get(key)) {
                o.insert(key.into(), v.clone());
            }
        }
        o.insert("services".into(), spec.services_of(n).to_vec().into());
        o.insert("automators".into(), spec.automators_of(n).into());
        all.insert(n.id.clone(), Value::Object(o));
    }
    Value::Object(all)
}

/// The action with its placeholders filled for `node` (`data`, `script` and string
/// `fields`, including arrays of strings).
fn render_action(
    spec: &ClusterSpec,
    node: &NodeSpec,
    action: &Map<String, Value>,
    learned: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let empty = Map::new();
    let learned = learned.unwrap_or(&empty);
    let var = |k: &str| spec.var(node, k, learned);
    let fill = |v: &Value| -> Value {
        match v {
            Value::String(s) => Value::String(super::spec::render(s, &var)),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.clone(), |s| Value::String(super::spec::render(s, &var))))
                    .collect(),
            ),
            other => other.clone(),
        }
    };
    action
        .iter()
        .map(|(k, v)| {
            let v = match (k.as_str(), v) {
                ("type", _) => v.clone(),
                ("fields", Value::Object(f)) => {
                    Value::Object(f.iter().map(|(fk, fv)| (fk.clone(), fill(fv))).collect())
                }
                _ => fill(v),
            };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn results_merge_shallowly_even_on_failure_and_addresses_only_on_success() {
        let mut learned = Map::new();
        let created = TaskResult::ok().with("providerid", "p-1").with("ssh-auth", json!({"user": "u"}));
        merge(&mut learned, TaskName::Create, &created);
        let mut failed = TaskResult::failed("boom").with("ssh-auth", json!({"user": "v"}));
        failed.hostname = Some("h".into());
        merge(&mut learned, TaskName::Confirm, &failed);
        assert_eq!(Value::Object(learned.clone()), json!({"providerid": "p-1", "ssh-auth": {"user": "v"}}));
        let mut ok = TaskResult::ok().with("ipaddress", "10.0.0.5");
        ok.ipaddresses = Some(json!({"access_v4": "10.0.0.5"}));
        merge(&mut learned, TaskName::Confirm, &ok);
        assert_eq!(learned["ipaddresses"]["access_v4"], "10.0.0.5");
        let mut refused = TaskResult::ok().with("providerid", "p-2");
        refused.status = 201;
        merge(&mut learned, TaskName::Create, &refused);
        assert_eq!(learned["providerid"], "p-1");
        merge(&mut learned, TaskName::Delete, &TaskResult::ok());
        assert!(learned.is_empty());
    }

    #[test]
    fn a_task_carries_what_loom_sent() {
        let spec = ClusterSpec::from_value(
            &json!({
                "name": "demo",
                "provider": {"name": "local", "fields": {"network": "loopback"}},
                "config": {"greeting": "hi"},
                "nodeGroups": [{"name": "web", "count": 2, "flavor": "small", "services": ["web"]}],
                "services": {"web": {"actions": {"start": {"type": "shell", "script": "web.sh", "data": "{ipaddress}:{n+8080}"}}}}
            }),
            "t",
            Path::new("/"),
        )
        .unwrap();
        let nodes = spec.nodes();
        let learned: Map<String, Value> =
            json!({"providerid": "p", "ipaddress": "127.0.0.1"}).as_object().cloned().unwrap_or_default();
        let config = node_config(&spec, &nodes[1], Some(&learned));
        assert_eq!(
            config["provider"],
            json!({"name": "local", "providertype": "local", "provisioner": {"network": "loopback"}})
        );
        assert_eq!(config["cluster"], json!({"greeting": "hi"}));
        assert_eq!((config["nodenum"].as_str(), config["providerid"].as_str()), (Some("1001"), Some("p")));
        assert_eq!(config["hardwaretype"]["flavor"], "small");
        let action = render_action(&spec, &nodes[1], &spec.services["web"].actions[&TaskName::Start], Some(&learned));
        assert_eq!(Value::Object(action), json!({"type": "shell", "script": "web.sh", "data": "127.0.0.1:8082"}));
        let all: HashMap<String, Map<String, Value>> = [(nodes[1].id.clone(), learned)].into();
        let view = nodes_view(&spec, &nodes, &all);
        assert_eq!(view["demo-web-2"]["ipaddress"], "127.0.0.1");
        assert_eq!(view["demo-web-1"]["hostname"], "demo-web-1");
    }

    #[test]
    fn each_task_names_its_step_and_operation_and_carries_the_nodes_and_its_action() {
        let spec = ClusterSpec::from_value(
            &json!({
                "name": "demo",
                "provider": {"name": "local"},
                "nodeGroups": [{"name": "web", "count": 2, "services": ["web"]}],
                "services": {"web": {"actions": {"start": {"type": "shell", "script": "web.sh", "data": "{n+8080}"}}}}
            }),
            "t",
            Path::new("/"),
        )
        .unwrap();
        let nodes = spec.nodes();
        let tasks = Tasks { spec: &spec, nodes: &nodes, job_id: "demo.j3" };
        let start = StepKey::service(TaskName::Start, "demo-web-2", "web");
        assert_eq!(tasks.id(&start, TaskName::Start, 2), "demo-web-2.START.web.j3a2");
        let create = StepKey::node(TaskName::Create, "demo-web-1");
        assert_eq!(tasks.id(&create, TaskName::Create, 1), "demo-web-1.CREATE.j3a1");

        let learned: HashMap<String, Map<String, Value>> =
            [("demo-web-2".to_owned(), json!({"ipaddress": "10.0.0.2"}).as_object().cloned().unwrap())].into();
        let body = tasks.body(&start, TaskName::Start, "t-1", &learned);
        assert_eq!(
            (&body["taskId"], &body["jobId"], &body["clusterId"], &body["taskName"], &body["nodeId"]),
            (&json!("t-1"), &json!("demo.j3"), &json!("demo"), &json!("START"), &json!("demo-web-2"))
        );
        let config = &body["config"];
        assert_eq!(config["hostname"], "demo-web-2");
        assert_eq!(config["ipaddress"], "10.0.0.2");
        assert_eq!(
            config["service"],
            json!({"name": "web", "action": {"type": "shell", "script": "web.sh", "data": "8082"}})
        );
        assert_eq!(config["nodes"]["demo-web-2"]["ipaddress"], "10.0.0.2");
        assert_eq!(config["nodes"]["demo-web-1"]["hostname"], "demo-web-1");
        // A node task carries no service; a node the spec does not have, only the nodes.
        assert!(tasks.body(&create, TaskName::Create, "t-2", &learned)["config"].get("service").is_none());
        let gone = StepKey::node(TaskName::Delete, "demo-web-9");
        let config = &tasks.body(&gone, TaskName::Delete, "t-3", &learned)["config"];
        assert_eq!(config.as_object().map(|c| c.keys().collect::<Vec<_>>()), Some(vec![&"nodes".to_owned()]));
    }
}
