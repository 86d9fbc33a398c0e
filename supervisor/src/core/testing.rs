//! What the core's unit tests share: a plugins folder the supervisor trusts, with the
//! end-to-end test plugin (`tests/plugins/testplugin.py`, run by python3; its header lists
//! what it does on request) registered under chosen names, and tasks for it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use loom_protocol::PluginKind;
use serde_json::{Value, json};

use crate::core::registry::Registry;
use crate::core::supervisor::{Options, Supervisor};
use crate::wire::envelope::TaskEnvelope;

/// A plugins folder under the build's `target/tmp` (the supervisor refuses /tmp), removed
/// when dropped. Plugins still running then are killed with their `Child` handles.
pub(crate) struct Plugins {
    dir: tempfile::TempDir,
}

impl Plugins {
    /// An empty plugins folder.
    pub(crate) fn new() -> Plugins {
        Plugins { dir: crate::core::trust::test_dir() }
    }

    /// Registers the test plugin as the `kind` named `name`: one instance with one slot
    /// (`maxConcurrency` 1), the keys of `extra` on top. As root it runs as root, which the
    /// supervisor does only when the manifest says so.
    pub(crate) fn add(&self, kind: PluginKind, name: &str, extra: Value) -> &Plugins {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
        let mut manifest = json!({
            "executable": workspace.join("tests/plugins/testplugin.py"),
            "maxConcurrency": 1,
            "shutdownGraceSecs": 2,
        });
        if nix::unistd::geteuid().is_root() {
            manifest["user"] = json!("root");
        }
        for (key, value) in extra.as_object().cloned().unwrap_or_default() {
            manifest[key] = value;
        }
        let folder = self.dir.path().join(format!("{kind}s")).join(name);
        std::fs::create_dir_all(&folder).expect("the plugin's folder");
        std::fs::write(folder.join(format!("{name}.json")), json!({ name: manifest }).to_string()).expect("manifest");
        self
    }

    /// A file in the folder, for the test plugin's pid file and run log.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What is registered here.
    pub(crate) fn registry(&self) -> Registry {
        Registry::load(&[self.dir.path().to_path_buf()]).expect("the plugins folder")
    }

    /// A supervisor of what is registered here; each plugin starts on its first task.
    pub(crate) fn supervisor(&self) -> Supervisor {
        Supervisor::new(self.registry(), Options::default())
    }
}

/// A task as Loom sends it, with `config`.
pub(crate) fn task(id: &str, name: &str, config: Value) -> TaskEnvelope {
    let task = json!({"taskId": id, "jobId": "job-1", "taskName": name, "nodeId": "node-1", "config": config});
    TaskEnvelope::parse(serde_json::value::to_raw_value(&task).expect("json")).expect("a valid task")
}

/// A service-action task for `automator`, with `test` behaviour for the test plugin.
pub(crate) fn action(id: &str, name: &str, automator: &str, test: Value) -> TaskEnvelope {
    task(id, name, json!({"service": {"name": "svc", "action": {"type": automator}}, "test": test}))
}

/// The ids of the tasks a test plugin's run log (`TESTPLUGIN_RUNLOG`) says it started.
pub(crate) fn started(runlog: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(runlog).unwrap_or_default();
    text.lines().filter_map(|l| l.split(' ').next()).map(str::to_owned).collect()
}

/// Polls `f` once: `Some` if it completed.
pub(crate) fn poll_once<F: Future>(f: Pin<&mut F>) -> Option<F::Output> {
    match f.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Awaits `f`, failing the test if it has not completed after a minute: for what a
/// regression would make wait forever (a slot never freed, a call never failed). Far
/// beyond what it takes on a loaded machine; not a measure of speed.
pub(crate) async fn within_a_minute<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(60), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: still waiting after a minute"),
    }
}
