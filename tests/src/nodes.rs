//! Loom's server between phases: per-node configs that a phase's results update, and
//! each phase's tasks built from them.

use serde_json::{Value, json};

use crate::plugins::{Plugins, Run};
use crate::tasks::{merge, task};

/// Per-node configs built up from results the way Loom's server did: each result's
/// `result` keys overwrite the node's config at the top level; `hostname` and
/// `ipaddresses` update it on success.
pub struct Nodes {
    /// Each node's config.
    pub configs: Vec<Value>,
}

impl Nodes {
    /// `n` nodes, node `i` starting from `base(i)`.
    pub fn new(n: usize, base: impl Fn(usize) -> Value) -> Nodes {
        Nodes { configs: (0..n).map(base).collect() }
    }

    /// One `name` task per node, id `<prefix>-<i>`, with `extra(i)` on top of its config.
    pub fn tasks(&self, prefix: &str, name: &str, extra: impl Fn(usize) -> Value) -> Vec<Value> {
        self.configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut config = c.clone();
                merge(&mut config, extra(i));
                let mut t = task(&format!("{prefix}-{i}"), name, config);
                t["nodeId"] = json!(format!("node-{i}"));
                t
            })
            .collect()
    }

    /// Merges the results of the tasks `<prefix>-<i>` of `run` into the nodes.
    pub fn absorb(&mut self, run: &Run, prefix: &str) {
        for (i, config) in self.configs.iter_mut().enumerate() {
            let r = run.result(&format!("{prefix}-{i}"));
            if let Some(keys) = r["result"].as_object() {
                for (k, v) in keys {
                    config[k] = v.clone();
                }
            }
            if r["status"] == 0 {
                for k in ["hostname", "ipaddresses"] {
                    if !r[k].is_null() {
                        config[k] = r[k].clone();
                    }
                }
            }
        }
    }

    /// Runs one phase on every node and merges the results; panics unless all succeed.
    pub fn phase(&mut self, plugins: &Plugins, prefix: &str, name: &str, extra: impl Fn(usize) -> Value) -> Run {
        let run = plugins.run(&self.tasks(prefix, name, extra), &[]);
        for (i, _) in self.configs.iter().enumerate() {
            let r = run.result(&format!("{prefix}-{i}"));
            assert_eq!(r["status"], 0, "{name} on node {i} failed: {r:#}\nlog:\n{}", run.stderr);
        }
        self.absorb(&run, prefix);
        run
    }
}
