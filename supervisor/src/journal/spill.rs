//! Results the journal could not take when the daemon stopped: written to a spill file
//! instead of being lost, and applied to the journal at the next start.
//!
//! When the daemon stops while the journal cannot write (a full disk, a file system
//! turned read-only), the results its plugins returned are still in memory. They go, one
//! JSON line each (the task's report, as the journal would have stored it), to
//! `journal-unwritten.jsonl` in the data folder, or, when that cannot be written either
//! (the same full or read-only disk), in the runtime folder (`$RUNTIME_DIRECTORY`, which
//! systemd's `RuntimeDirectory=` sets; else `/run/loom-provisioner` for root,
//! `$XDG_RUNTIME_DIR/loom-provisioner` otherwise), a different file system that outlives
//! the daemon (not a reboot). The next start applies every spill file it finds there to
//! the journal before it recovers unfinished tasks, so those tasks end with their real
//! results rather than "supervisor restarted while the task ran", and removes the file.
//! Spill files hold results, so they are readable by their owner only, and read only from
//! folders no one else can write ([`crate::core::trust`]).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::journal::{Journal, JournalError};

/// The spill file's name, in each folder it may be written to.
pub const FILE: &str = "journal-unwritten.jsonl";

/// Where a spill file may be, first choice first.
pub fn places(data_dir: &Path) -> Vec<PathBuf> {
    let mut places = vec![data_dir.join(FILE)];
    if let Some(runtime) = runtime_dir() {
        places.push(runtime.join(FILE));
    }
    places
}

fn runtime_dir() -> Option<PathBuf> {
    // systemd may list several folders, separated by ':'; the first is ours.
    let from_systemd = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| v.to_str().and_then(|s| s.split(':').next()).map(PathBuf::from));
    from_systemd.filter(|p| p.is_absolute()).or_else(|| {
        if nix::unistd::geteuid().is_root() {
            Some(PathBuf::from("/run/loom-provisioner"))
        } else {
            std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|p| p.join("loom-provisioner"))
        }
    })
}

/// Writes `results` (each a task's report, one line of JSON) to the first place that
/// takes them, flushed to disk. Returns the file.
///
/// # Errors
/// Every place's reason, when none could be written.
pub fn write(data_dir: &Path, results: &[Arc<str>]) -> Result<PathBuf, String> {
    let mut reasons = Vec::new();
    for file in places(data_dir) {
        match write_to(&file, results) {
            Ok(()) => return Ok(file),
            Err(e) => reasons.push(format!("{}: {e}", file.display())),
        }
    }
    Err(reasons.join("; "))
}

fn write_to(file: &Path, results: &[Arc<str>]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = file.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(file)?;
    let mut text = String::new();
    for r in results {
        // A report is one line (serde_json writes no newline); a line break would split it.
        text.push_str(&r.replace('\n', " "));
        text.push('\n');
    }
    let before = f.metadata()?.len();
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    if written.is_err() {
        // Leave no partial line (nor, when it was new, an empty file) behind.
        let _ = f.set_len(before);
        if before == 0 {
            let _ = std::fs::remove_file(file);
        }
    }
    written
}

/// Applies every spill file found to `journal` (each result finishes its task), and
/// removes each file once all of its results are in. Returns how many were applied.
///
/// # Errors
/// The journal's, when a result cannot be written: that file stays for the next start.
/// A file in a folder others can write is not read (logged, left alone); a line that is
/// not a task's report is skipped with a warning.
pub async fn apply(journal: &Journal, data_dir: &Path) -> Result<usize, JournalError> {
    let mut applied = 0;
    for file in places(data_dir) {
        let Some(dir) = file.parent() else { continue };
        if !file.exists() {
            continue;
        }
        if let Err(e) = crate::core::trust::check(dir, crate::core::trust::Kind::Folder) {
            tracing::error!("not reading the unwritten results in {}: {e}", file.display());
            continue;
        }
        let lines = match std::fs::File::open(&file) {
            Ok(f) => std::io::BufReader::new(f).lines().map_while(Result::ok).collect::<Vec<_>>(),
            Err(e) => {
                tracing::error!("cannot read the unwritten results in {}: {e}", file.display());
                continue;
            }
        };
        for (n, line) in lines.iter().enumerate() {
            let Some(task_id) = task_id_of(line) else {
                tracing::warn!("{} line {}: not a task's result; skipped", file.display(), n + 1);
                continue;
            };
            journal.finish(&task_id, line.as_str()).await?;
            applied += 1;
        }
        if let Err(e) = std::fs::remove_file(&file) {
            tracing::warn!("cannot remove {} after applying it: {e}", file.display());
        }
        tracing::info!(
            "applied {} results that could not be journaled before the last stop, from {}",
            lines.len(),
            file.display()
        );
    }
    Ok(applied)
}

fn task_id_of(line: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Report {
        #[serde(rename = "taskId")]
        task_id: String,
    }
    serde_json::from_str::<Report>(line).ok().map(|r| r.task_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_written_to_a_spill_file_finish_their_tasks_at_the_next_start() {
        let dir = crate::core::trust::test_dir();
        let data = dir.path().join("data");
        let journal = Journal::open(&data).unwrap();
        let raw = |id: &str| {
            serde_json::value::RawValue::from_string(format!(r#"{{"taskId":"{id}","taskName":"START"}}"#)).unwrap()
        };
        let me = crate::journal::Member::this_process("test");
        for id in ["t1", "t2"] {
            journal.accept(id, "START", "[]", Some(&me), Arc::new(raw(id))).await.unwrap();
            journal.start(id, &me, "p", false).await.unwrap();
        }
        let results: Vec<Arc<str>> = ["t1", "t2"]
            .iter()
            .map(|id| Arc::from(format!(r#"{{"taskId":"{id}","status":0,"result":{{}}}}"#)))
            .collect();
        let file = write(&data, &results).unwrap();
        assert_eq!(file, data.join(FILE), "the data folder first");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);

        assert_eq!(apply(&journal, &data).await.unwrap(), 2);
        assert!(!file.exists(), "removed once applied");
        for id in ["t1", "t2"] {
            let r = journal.get(id).await.unwrap().unwrap();
            assert_eq!(r.state, crate::journal::State::Done);
        }
        assert_eq!(apply(&journal, &data).await.unwrap(), 0, "nothing twice");
    }

    #[test]
    fn a_line_that_is_not_a_report_has_no_task() {
        assert_eq!(task_id_of(r#"{"taskId":"a","status":1}"#).as_deref(), Some("a"));
        assert_eq!(task_id_of("garbage"), None);
        assert_eq!(task_id_of(r#"{"status":1}"#), None);
    }
}
