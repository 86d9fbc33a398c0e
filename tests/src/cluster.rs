//! A rig for `loom-provisioner cluster`: a plugins folder with local machines, the
//! example cluster's scripts and a journal of its own, and the commands run on it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::build::{provisioner, workspace};
use crate::machines::register_local_and_shell;
use crate::plugins::Plugins;
use crate::process::run_with_input;

/// A world for `cluster` commands: the `local` provider and `shell` automator with the
/// example cluster's scripts and the tests' own (`tests/fixtures/cluster`), a journal of
/// its own. Machines, their work folder (`work/`, where scripts keep `runlog` and the
/// example keeps its `apps/`) and the journal live in the plugins folder.
pub struct ClusterRig {
    /// The plugins folder.
    pub plugins: Plugins,
    /// The journal's folder.
    pub data: PathBuf,
    /// The scripts BOOTSTRAP uploads (change one to "fix" it).
    pub scripts: PathBuf,
    /// The machines' shared work folder.
    pub work: PathBuf,
    /// The local provider's state folder.
    pub machines: PathBuf,
}

/// What a `cluster` command printed and how it exited.
#[derive(Debug)]
pub struct ClusterRun {
    /// Its exit code.
    pub code: Option<i32>,
    /// Its stdout, as JSON (`null` when it printed none).
    pub json: Value,
    /// Its stderr: progress lines and the log.
    pub stderr: String,
}

impl ClusterRig {
    /// A rig whose `local` provider has `local_settings` on top of its defaults.
    pub fn new(local_settings: Value) -> ClusterRig {
        let plugins = Plugins::new();
        let machines = plugins.path().join("machines");
        let scripts = plugins.path().join("scripts");
        let work = machines.join("work");
        let shell = json!({"scripts": scripts, "workDir": work, "sudo": false, "connectTimeoutSecs": 20});
        register_local_and_shell(
            &plugins,
            &machines,
            &["examples/local-cluster/scripts", "tests/fixtures/cluster"],
            local_settings,
            shell,
        );
        let data = plugins.path().join("data");
        ClusterRig { plugins, data, scripts, work, machines }
    }

    /// The example cluster (`examples/local-cluster.json`) with its ports moved from
    /// 18100.. to `port_base`.., and `web_nodes` web servers.
    pub fn example(port_base: u16, web_nodes: u32) -> Value {
        let text = std::fs::read_to_string(workspace().join("examples/local-cluster.json")).expect("example spec");
        let mut spec: Value =
            serde_json::from_str(&text.replace("18100", &port_base.to_string())).expect("example spec is JSON");
        spec["nodeGroups"][1]["count"] = json!(web_nodes);
        spec.as_object_mut().expect("object").remove("pluginDirs");
        spec
    }

    /// Writes `spec` to `<plugins>/<file>`.
    pub fn write_spec(&self, file: &str, spec: &Value) -> PathBuf {
        let path = self.plugins.path().join(file);
        std::fs::write(&path, serde_json::to_vec_pretty(spec).expect("json")).expect("write the spec");
        path
    }

    /// `loom-provisioner cluster <args>` with this rig's journal (and, for operations,
    /// its plugins, plain progress lines and JSON output), not yet started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(provisioner());
        cmd.arg("cluster").args(args).arg("--data-dir").arg(&self.data);
        if matches!(args.first(), Some(&("up" | "down" | "restart-services" | "reconfigure"))) {
            cmd.arg("--plugins-dir").arg(self.plugins.path()).args(["--progress", "lines", "--json"]);
        }
        cmd
    }

    /// Runs `loom-provisioner cluster <args>` to the end (5 minutes at most).
    pub fn cluster(&self, args: &[&str]) -> ClusterRun {
        let out = run_with_input(self.command(args), "", Duration::from_secs(300));
        let stdout = String::from_utf8_lossy(&out.stdout);
        ClusterRun {
            code: out.status.code(),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `cluster status NAME --json --tasks`.
    pub fn status(&self, name: &str) -> Value {
        let run = self.cluster(&["status", name, "--json", "--tasks"]);
        assert_eq!(run.code, Some(0), "cluster status failed: {}", run.stderr);
        run.json
    }

    /// Lines of the scripts' run log (`<task id> <data>` per run).
    pub fn runlog(&self) -> Vec<String> {
        std::fs::read_to_string(self.work.join("runlog")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Folders of machines the local provider still has.
    pub fn machines_left(&self) -> Vec<String> {
        std::fs::read_dir(&self.machines)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("local-"))
            .collect()
    }
}
