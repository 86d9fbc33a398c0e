//! The journal under faults: the daemon's data folder on a small tmpfs that fills up.
//! Tasks acknowledged before the disk filled are never failed for it: those that could
//! not be recorded as running stay queued and run once the journal can write again;
//! `/healthz` says why it cannot, and `/metrics` counts the failed writes. Needs root (a
//! tmpfs mount); skipped, saying so, otherwise.

// Tests fail by unwrapping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use loom_e2e::*;
use serde_json::json;

/// A tmpfs mounted at a folder for the test's lifetime (mode 0700: the daemon trusts only
/// folders no one else can write).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    /// Fills the file system with one file, until it is full.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        // What is left is less than a chunk: take it too.
        while f.write_all(&[0u8; 512]).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn state(serve: &Serve, id: &str) -> String {
    let (code, v) = serve.request("GET", &format!("/v1/tasks/{id}"), None);
    assert_eq!(code, 200, "{v}");
    v["state"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn acknowledged_tasks_wait_out_a_full_disk_and_nothing_is_failed_for_it() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs for the data folder needs root");
        return;
    }
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "one", json!({"maxConcurrency": 1, "settings": {"maxConcurrency": 1}}));
    let tmpfs = Tmpfs::mount(&plugins.path().join("serve").join("data"), "8m");
    let serve = Serve::start(&plugins, "");

    // One task holds the only slot until `go` exists; the others wait in the queue.
    let go = plugins.file("go");
    let (code, v) =
        serve.submit(&action("blocker", "INSTALL", "one", json!({"action": "wait-file", "path": go})), false);
    assert_eq!(code, 202, "{v}");
    let queued: Vec<String> = (0..5).map(|i| format!("q{i}")).collect();
    for id in &queued {
        let (code, v) = serve.submit(&action(id, "INSTALL", "one", json!({})), false);
        assert_eq!(code, 202, "{v}");
    }
    assert!(wait_until(Duration::from_secs(60), || state(&serve, "blocker") == "running"));
    assert!(queued.iter().all(|id| state(&serve, id) == "queued"));

    // The disk fills; the blocker finishes: its result and the queued tasks' "running"
    // records cannot be written.
    let filler = tmpfs.fill();
    std::fs::write(&go, "").unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || serve.request("GET", "/healthz", None).0 == 503),
        "healthz never said the journal cannot write"
    );
    let (code, health) = serve.request("GET", "/healthz", None);
    assert_eq!(code, 503);
    let why = health["journal"].as_str().unwrap_or_default();
    assert!(why.contains("journal.sqlite3") && why.contains("full"), "{health}");
    let (_, metrics) = serve.request("GET", "/metrics", None);
    let metrics = metrics.as_str().map(str::to_owned).unwrap_or_else(|| metrics.to_string());
    assert!(metrics.contains("loom_journal_writable 0"), "{metrics}");
    // A new task is refused (500, naming the journal), not acknowledged.
    let (code, v) = serve.submit(&action("late", "INSTALL", "one", json!({})), false);
    assert_eq!(code, 500, "{v}");
    // Nothing queued ran or failed meanwhile: each is still queued.
    assert!(queued.iter().all(|id| state(&serve, id) == "queued"), "a queued task left the queue");

    // Room again: everything acknowledged runs, and nothing failed for the full disk.
    std::fs::remove_file(&filler).unwrap();
    for id in queued.iter().chain(std::iter::once(&"blocker".to_owned())) {
        let done = wait_until(Duration::from_secs(120), || state(&serve, id) == "done");
        assert!(done, "task {id} did not finish after the disk had room again");
        let (_, v) = serve.request("GET", &format!("/v1/tasks/{id}"), None);
        assert_eq!(v["result"]["status"], 0, "{id}: {v}");
    }
    assert_eq!(serve.request("GET", "/healthz", None).0, 200);
    let (_, metrics) = serve.request("GET", "/metrics", None);
    let metrics = metrics.as_str().map(str::to_owned).unwrap_or_else(|| metrics.to_string());
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("loom_journal_write_failures_total "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(failures.is_some_and(|n| n > 0), "{metrics}");
}

#[test]
fn results_the_journal_cannot_take_at_a_stop_are_spilled_and_applied_at_the_next_start() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs for the data folder needs root");
        return;
    }
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "four", json!({"maxConcurrency": 4}));
    let tmpfs = Tmpfs::mount(&plugins.path().join("serve").join("data"), "8m");
    let runtime = plugins.path().join("runtime");
    let runtime_env = runtime.display().to_string();
    let mut serve = Serve::start_with(&plugins, "drain_grace_secs = 5", &[("RUNTIME_DIRECTORY", &runtime_env)]);

    let go = plugins.file("go");
    let ids = ["r0", "r1", "r2"];
    for id in ids {
        let (code, v) = serve.submit(&action(id, "INSTALL", "four", json!({"action": "wait-file", "path": go})), false);
        assert_eq!(code, 202, "{v}");
    }
    assert!(wait_until(Duration::from_secs(60), || ids.iter().all(|id| state(&serve, id) == "running")));
    // The disk fills, then the plugin answers: no result can be journaled.
    let filler = tmpfs.fill();
    std::fs::write(&go, "").unwrap();
    let unrecorded =
        |id: &str| serve.log_text().lines().any(|l| l.contains("cannot record the result") && l.contains(id));
    assert!(
        wait_until(Duration::from_secs(60), || ids.iter().all(|id| unrecorded(id))),
        "the results never reached the daemon; log:\n{}",
        serve.log_text()
    );

    // A stop now: the results go to a spill file instead of being lost.
    serve.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(serve.wait_exit(Duration::from_secs(120)), Some(0), "log:\n{}", serve.log_text());
    let spilled: Vec<PathBuf> =
        [runtime.join("journal-unwritten.jsonl"), serve.data_dir.join("journal-unwritten.jsonl")]
            .into_iter()
            .filter(|f| f.exists())
            .collect();
    assert_eq!(spilled.len(), 1, "one spill file; log:\n{}", serve.log_text());

    // The next start, with room again, applies them: each task has the result its plugin
    // gave, not "supervisor restarted while the task ran".
    std::fs::remove_file(&filler).unwrap();
    serve.spawn();
    for id in ids {
        let (_, v) = serve.request("GET", &format!("/v1/tasks/{id}"), None);
        assert_eq!(v["state"], "done", "{id}: {v}");
        assert_eq!(v["result"]["status"], 0, "{id}: {v}");
    }
    assert!(!spilled[0].exists(), "the spill file is removed once applied");
}
