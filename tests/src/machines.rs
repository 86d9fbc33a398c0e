//! Local machines: the `local` provider and the `shell` automator registered in a plugins
//! folder, the example web app's steps on them, and cleaning up what the machines run.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::build::{bin_dir, workspace};
use crate::nodes::Nodes;
use crate::plugins::Plugins;
use crate::process::{kill9, pids_with_cmdline, pids_with_env, processes_with_env};
use crate::tasks::merge;

/// The environment variable the `local` provider gives every process of a machine (its
/// id).
const MACHINE_ID: &str = "LOOM_LOCAL_MACHINE";

/// Registers the `local` provider (state in `state_dir`) and the `shell` automator with
/// the test web app's scripts.
pub fn add_local_and_shell(plugins: &Plugins, state_dir: &Path, local_settings: Value) {
    let scripts = plugins.path().join("scripts");
    let shell = json!({"scripts": scripts, "workDir": state_dir.join("work"), "connectTimeoutSecs": 5});
    register_local_and_shell(plugins, state_dir, &["examples/webapp", "tests/fixtures/scripts"], local_settings, shell);
}

/// Registers the `local` provider (state in `state_dir`, `local_settings` on top) and
/// the `shell` automator (`shell_settings`), with the scripts of the workspace folders
/// `script_dirs` copied into `<plugins>/scripts`. The machines are stopped when `plugins`
/// is dropped.
pub(crate) fn register_local_and_shell(
    plugins: &Plugins,
    state_dir: &Path,
    script_dirs: &[&str],
    local_settings: Value,
    shell_settings: Value,
) {
    let state = state_dir.to_path_buf();
    plugins.on_drop(move || stop_machines(&state));
    let scripts = plugins.path().join("scripts");
    std::fs::create_dir_all(&scripts).expect("mkdir scripts");
    for dir in script_dirs {
        for e in std::fs::read_dir(workspace().join(dir)).expect("scripts folder").flatten() {
            std::fs::copy(e.path(), scripts.join(e.file_name())).expect("copy a script");
        }
    }
    let mut settings = json!({"stateDir": state_dir});
    merge(&mut settings, local_settings);
    plugins.add(
        "provider",
        "local",
        // Its machines are sshd processes that must outlive each run of it.
        json!({"executable": bin_dir().join("loom-plugin-local"), "maxConcurrency": 16, "keepDescendants": true,
               "settings": settings}),
    );
    plugins.add(
        "automator",
        "shell",
        json!({"executable": bin_dir().join("loom-plugin-shell"), "maxConcurrency": 32, "settings": shell_settings}),
    );
}

/// Live processes started inside local machine `id`.
pub fn machine_processes(id: &str) -> Vec<String> {
    processes_with_env(MACHINE_ID, id)
}

/// A service action of the example web app (`examples/webapp`) for the `shell` automator.
pub fn webapp(script: &str, port: u16) -> Value {
    json!({"service": {"name": "webapp", "action": {"type": "shell", "script": script, "data": port.to_string()}}})
}

impl Nodes {
    /// BOOTSTRAP, then INSTALL, CONFIGURE and START of the example web app on port
    /// `port(i)` of node `i`; panics unless every step succeeds.
    pub fn start_webapp(&mut self, plugins: &Plugins, port: impl Fn(usize) -> u16) {
        self.phase(plugins, "bootstrap", "BOOTSTRAP", |_| json!({}));
        for (step, script) in [("install", "install.sh"), ("configure", "configure.sh"), ("start", "start.sh")] {
            let run = self.phase(plugins, step, &step.to_uppercase(), |i| webapp(script, port(i)));
            // The command's output comes back in the result.
            assert!(
                run.results.iter().all(|r| !r["stdout"].as_str().unwrap_or_default().is_empty()),
                "{:#?}",
                run.results
            );
        }
    }

    /// STOP and REMOVE of the web app.
    pub fn remove_webapp(&mut self, plugins: &Plugins, port: impl Fn(usize) -> u16) {
        self.phase(plugins, "stop", "STOP", |i| webapp("stop.sh", port(i)));
        self.phase(plugins, "remove", "REMOVE", |i| webapp("remove.sh", port(i)));
    }
}

/// Kills what still runs in the machines of the `local` provider whose state folder is
/// `state`, and deletes their network namespaces: after a failed test, so that later
/// tests start clean.
fn stop_machines(state: &Path) {
    // The machines' own sshd listeners carry no marker: find them by their
    // configuration's path.
    let mut pids = pids_with_cmdline(&state.display().to_string());
    let mut namespaces = Vec::new();
    for e in std::fs::read_dir(state).into_iter().flatten().flatten() {
        pids.extend(pids_with_env(MACHINE_ID, &e.file_name().to_string_lossy()));
        let record: Option<Value> =
            std::fs::read(e.path().join("machine.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(ns) = record.as_ref().and_then(|r| r["netns"].as_str()) {
            let out = Command::new("ip").args(["netns", "pids", ns]).output();
            pids.extend(out.iter().flat_map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<i32>>()
            }));
            namespaces.push(ns.to_owned());
        }
    }
    for pid in pids {
        kill9(pid);
    }
    for ns in namespaces {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
}
