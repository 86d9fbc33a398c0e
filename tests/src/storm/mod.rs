//! The kill storm of issue 13: `storm-plugin` (`src/bin/storm_plugin.rs`) under
//! `loom-provisioner serve` while a thread SIGKILLs one of its processes every 20 ms, and
//! what can be counted from outside: results over HTTP, task starts in the plugin's own
//! record, kills, restarts in `/metrics`, processes in /proc.
//!
//! Here: the plugin and the load. [`killer`]: the storm itself. [`outcomes`]: what became
//! of the tasks. Used by `tests/storm.rs` (the suite's storm, and the full-size one that
//! `bench/chaos.sh` runs).

mod killer;
mod outcomes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use killer::{Killer, Kills};
pub use outcomes::{KILLED_IN_FLIGHT, Outcomes};

use crate::build::bin_dir;
use crate::daemon::Serve;
use crate::plugins::Plugins;
use crate::tasks::merge;

/// One plugin in the storm: `storm-plugin` registered under a name of its own, with
/// files of its own for its processes' pids and its task starts.
pub struct StormPlugin {
    /// The name tasks are routed by.
    pub name: String,
    pids: PathBuf,
    runlog: PathBuf,
}

impl StormPlugin {
    /// Registers `storm-plugin` in `plugins` as automator `name`, declaring `idempotent`
    /// tasks in its handshake, with `extra` manifest keys (`instances`, `restart`, ...).
    pub fn add(plugins: &Plugins, name: &str, idempotent: &[&str], extra: Value) -> StormPlugin {
        let (pids, runlog) = (plugins.file(&format!("{name}.pids")), plugins.file(&format!("{name}.runlog")));
        let env = json!({"STORM_PIDS": pids, "STORM_RUNLOG": runlog, "STORM_IDEMPOTENT": idempotent.join(",")});
        let mut manifest = json!({"executable": bin_dir().join("storm-plugin"), "env": env});
        merge(&mut manifest, extra);
        plugins.add("automator", name, manifest);
        StormPlugin { name: name.to_owned(), pids, runlog }
    }

    /// The task START for this plugin, with id `id`.
    pub fn task(&self, id: &str) -> Value {
        crate::tasks::action(id, "START", &self.name, json!({}))
    }

    /// Task id -> how many times one of the plugin's processes started it.
    pub fn starts(&self) -> HashMap<String, usize> {
        let mut starts = HashMap::new();
        for line in std::fs::read_to_string(&self.runlog).unwrap_or_default().lines() {
            *starts.entry(line.split(' ').next().unwrap_or_default().to_owned()).or_default() += 1;
        }
        starts
    }
}

/// The value of `name{plugin="<plugin>",...}` in the text of `/metrics`.
pub fn metric(serve: &Serve, name: &str, plugin: &str) -> Option<u64> {
    let (_, text) = serve.request("GET", "/metrics", None);
    let prefix = format!("{name}{{plugin=\"{plugin}\"");
    text.as_str()?.lines().find(|l| l.starts_with(&prefix))?.rsplit(' ').next()?.parse().ok()
}

/// `/v1/plugins`' instances of `plugin`: (phase, pid) each.
pub fn instances(serve: &Serve, plugin: &str) -> Vec<(String, Option<u32>)> {
    let (_, v) = serve.request("GET", "/v1/plugins", None);
    let Some(p) = v["plugins"].as_array().and_then(|ps| ps.iter().find(|p| p["name"] == plugin)) else {
        return Vec::new();
    };
    let instance = |i: &Value| {
        let pid = i["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
        (i["phase"].as_str().unwrap_or("?").to_owned(), pid)
    };
    p["instances"].as_array().map(|is| is.iter().map(instance).collect()).unwrap_or_default()
}

/// Submits `tasks` without waiting for them, `rate` a second on average (as fast as
/// `clients` threads can when `None`); panics on an answer other than 202.
pub fn submit_all(serve: &Arc<Serve>, tasks: &[Value], rate: Option<f64>, clients: usize) {
    in_parallel(serve, tasks, rate, clients, |serve, task| {
        let (code, v) = serve.submit(task, false);
        assert_eq!(code, 202, "{}: {v}", task["taskId"]);
    });
}

/// Waits until every task of `tasks` has finished: each is submitted again with
/// `wait=true`, which answers a known id with its record once it is done (and never runs
/// it again).
pub fn wait_all(serve: &Arc<Serve>, tasks: &[Value], clients: usize) {
    in_parallel(serve, tasks, None, clients, |serve, task| {
        let (code, v) = serve.submit(task, true);
        assert_eq!(code, 200, "{}: {v}", task["taskId"]);
    });
}

/// Runs `each` on every task, in order, spread over `threads` threads; with a `rate`, at
/// random times, that many a second on average (a Poisson process: at evenly spaced
/// times, the tasks of one plugin could fall in step with the kills). That is the load's
/// own pace, not a wait for anything: a thread that falls behind goes on at once.
fn in_parallel(serve: &Arc<Serve>, tasks: &[Value], rate: Option<f64>, threads: usize, each: fn(&Serve, &Value)) {
    let mut at = 0.0;
    let due: Arc<[f64]> = tasks
        .iter()
        .map(|_| {
            at += rate.map_or(0.0, |r| -(1.0 - uniform()).ln() / r);
            at
        })
        .collect();
    let tasks: Arc<[Value]> = tasks.into();
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (tasks, due, next, serve) =
                (Arc::clone(&tasks), Arc::clone(&due), Arc::clone(&next), Arc::clone(serve));
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(task) = tasks.get(i) else { return };
                    let due = began + Duration::from_secs_f64(due[i]);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    each(&serve, task);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a client thread");
    }
}

/// A random number: std's hasher keys are random per `RandomState`, and nothing here
/// needs more than that.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::hash::RandomState::new().build_hasher().finish()
}

/// A random number in [0, 1).
fn uniform() -> f64 {
    (random() >> 11) as f64 / (1u64 << 53) as f64
}
