//! A plugins folder of a test's own, and `loom-provisioner run` on it.
//!
//! Every plugin registered here gets `LOOM_TEST_MARKER=<unique>` in its environment,
//! which its children inherit; [`Plugins::leftovers`] scans /proc for that marker. As
//! root the supervisor runs a plugin only as the user its manifest names, so
//! [`Plugins::add`] names root unless the test names someone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::build::{nanos, provisioner, tempdir, test_plugin};
use crate::process::{kill9, pids_with_env, processes_with_env, run_with_input};
use crate::tasks::merge;

/// The environment variable that marks a test's plugins and their children.
pub(crate) const MARKER: &str = "LOOM_TEST_MARKER";

/// A temporary plugins folder.
pub struct Plugins {
    dir: tempfile::TempDir,
    pub(crate) marker: String,
    /// What to stop when the folder goes, besides its plugins' processes (such as local
    /// machines), to clean up after a failed test.
    cleanups: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

/// What a `run` printed and how it exited.
#[derive(Debug)]
pub struct Run {
    /// The exit code.
    pub code: Option<i32>,
    /// The result lines, parsed, in the order printed.
    pub results: Vec<Value>,
    /// The supervisor's log.
    pub stderr: String,
    /// How long the run took.
    pub elapsed: Duration,
}

impl Run {
    /// The result for `task_id`.
    pub fn result(&self, task_id: &str) -> &Value {
        self.results
            .iter()
            .find(|r| r["taskId"] == task_id)
            .unwrap_or_else(|| panic!("no result for {task_id}; results {:#?}\nlog:\n{}", self.results, self.stderr))
    }
}

impl Default for Plugins {
    fn default() -> Self {
        Self::new()
    }
}

impl Plugins {
    /// An empty plugins folder with a unique marker.
    pub fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let marker = format!("{}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), nanos());
        Plugins { dir: tempdir(), marker, cleanups: Mutex::default() }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Registers a plugin of `kind` ("provider"/"automator") named `name` with `manifest`;
    /// the test marker is added to its `env`, and `"user": "root"` when running as root
    /// and the manifest names no user.
    pub fn add(&self, kind: &str, name: &str, mut manifest: Value) -> PathBuf {
        let folder = self.dir.path().join(format!("{kind}s")).join(name);
        std::fs::create_dir_all(&folder).expect("mkdir");
        as_root_unless_named(&mut manifest);
        let env = manifest.as_object_mut().expect("object").entry("env").or_insert_with(|| json!({}));
        env[MARKER] = json!(self.marker);
        let path = folder.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&json!({ name: manifest })).expect("json")).expect("write");
        path
    }

    /// Registers the test plugin under `name`, with `extra` manifest keys.
    pub fn add_test_plugin(&self, kind: &str, name: &str, extra: Value) -> PathBuf {
        let mut manifest = json!({"executable": test_plugin(), "maxConcurrency": 8, "shutdownGraceSecs": 2});
        merge(&mut manifest, extra);
        self.add(kind, name, manifest)
    }

    /// A file in the plugins folder (for pid files).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `loom-provisioner run` on `tasks` (one JSON object per line on stdin).
    pub fn run(&self, tasks: &[Value], args: &[&str]) -> Run {
        let input: String = tasks.iter().map(|t| format!("{t}\n")).collect();
        self.run_input(&input, args)
    }

    /// Runs `loom-provisioner run` with `input` on stdin. Panics after 60 s.
    pub fn run_input(&self, input: &str, args: &[&str]) -> Run {
        self.run_env(input, args, &[])
    }

    /// Like [`Plugins::run_input`], with extra environment for the supervisor.
    pub fn run_env(&self, input: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(provisioner());
        cmd.arg("run").arg("--plugins-dir").arg(self.path()).args(args).envs(env.iter().copied());
        let started = Instant::now();
        let out = run_with_input(cmd, input, Duration::from_secs(60));
        Run {
            code: out.status.code(),
            results: String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("result line {l:?}: {e}")))
                .collect(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// Starts `loom-provisioner run` on `tasks` without waiting for it; stdin is written
    /// and closed, stdout is piped, stderr discarded.
    pub fn spawn_run(&self, tasks: &[Value]) -> std::process::Child {
        let mut child = Command::new(provisioner())
            .args(["run", "--plugins-dir"])
            .arg(self.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn loom-provisioner");
        let mut stdin = child.stdin.take().expect("stdin");
        for t in tasks {
            writeln!(stdin, "{t}").expect("write a task");
        }
        child
    }

    /// Processes still alive (zombies included) that carry this folder's marker.
    pub fn leftovers(&self) -> Vec<String> {
        processes_with_env(MARKER, &self.marker)
    }

    /// Asserts that no process of this folder's plugins is left.
    pub fn assert_no_leftovers(&self) {
        let left = self.leftovers();
        assert!(left.is_empty(), "processes left behind: {left:#?}");
    }

    /// Runs `cleanup` when this folder is dropped, after its plugins' processes are
    /// killed: for what they started that does not carry the marker.
    pub(crate) fn on_drop(&self, cleanup: impl FnOnce() + Send + 'static) {
        if let Ok(mut cleanups) = self.cleanups.lock() {
            cleanups.push(Box::new(cleanup));
        }
    }
}

impl Drop for Plugins {
    /// After a failed test, kills what it left behind so later tests start clean. (A
    /// passing test has already asserted that nothing is left.)
    fn drop(&mut self) {
        for pid in pids_with_env(MARKER, &self.marker) {
            kill9(pid);
        }
        let cleanups = self.cleanups.get_mut().map(std::mem::take).unwrap_or_default();
        for cleanup in cleanups {
            cleanup();
        }
    }
}

/// Adds `"user": "root"` to a manifest entry that names no user, when the tests run as
/// root (as CI does): the supervisor runs nobody as root unless the manifest says so.
pub(crate) fn as_root_unless_named(entry: &mut Value) {
    if nix::unistd::geteuid().is_root()
        && let Some(e) = entry.as_object_mut()
    {
        e.entry("user").or_insert_with(|| json!("root"));
    }
}
