//! The plugin manifest parser (`manifest::parse_entry`), on a manifest file's text.
//!
//! Input: the text of a manifest, `{"<name>": {...}, ...}`, read as the registry reads it
//! (JSON, each entry as a provider and as an automator). The manifest sits in a scratch
//! folder holding one executable, `plugin`, so that both a local and a PATH lookup of
//! `executable` are reached. Checked:
//! - an accepted plugin has the entry's name (1 to 64 safe characters), absolute folder
//!   and executable, at least one instance, slot and queue place, a line limit of at least
//!   1 KiB, timeouts above zero, per-task timeouts only for its kind's tasks, and limits
//!   within their ranges;
//! - warnings name a key the entry has; errors and warnings never depend on
//!   what `env` and `settings` hold: the same entry with every string in them replaced
//!   gives the same errors and warnings, so no message can quote one (they hold
//!   credentials);
//! - nothing panics.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loom_fuzz::scratch_dir;
use loom_protocol::PluginKind;
use loom_supervisor::inputs::{Entry, KeyProblem, Parsed, PluginSpec, parse_entry};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(entries)) = serde_json::from_slice::<Value>(data) else { return };
    let manifest = manifest_path();
    for (name, body) in &entries {
        for kind in [PluginKind::Provider, PluginKind::Automator] {
            let parsed = parse_entry(name, kind, manifest, body);
            check(&parsed, name, kind, body);
            let other = parse_entry(name, kind, manifest, &with_other_strings(body));
            assert_eq!(outcome(&other), outcome(&parsed), "errors and warnings depend on env or settings values");
        }
    }
});

/// `plugin.json` in a scratch folder holding an executable file `plugin`.
fn manifest_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch_dir("manifest");
        let exe = dir.join("plugin");
        std::fs::write(&exe, "#!/bin/sh\n").expect("scratch executable");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir.join("plugin.json")
    })
}

fn check(parsed: &Parsed, name: &str, kind: PluginKind, body: &Value) {
    for w in &parsed.warnings {
        let in_object = |object: &str, key: &str| body.get(object).is_some_and(|o| o.get(key).is_some());
        let named = match w.key.split_once('.') {
            Some((object @ ("restart" | "limits"), key)) if in_object(object, key) => true,
            _ => body.get(&w.key).is_some(),
        };
        assert!(named, "a warning names a key of the entry: {w:?}");
    }
    match &parsed.entry {
        Ok(Entry::Runnable(spec)) => check_spec(spec, name, kind),
        Ok(Entry::NotRunnable(why)) => assert!(!why.is_empty()),
        Err(p) => assert!(!p.message.is_empty(), "an error says what is wrong: {p:?}"),
    }
}

fn check_spec(spec: &PluginSpec, name: &str, kind: PluginKind) {
    assert_eq!(spec.name, name);
    assert_eq!(spec.kind, kind);
    assert!(!name.is_empty() && name.len() <= 64 && !name.starts_with('.'), "name {name:?}");
    assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')), "name {name:?}");
    assert!(spec.dir.is_absolute(), "folder {:?}", spec.dir);
    assert!(spec.executable.is_absolute(), "executable {:?}", spec.executable);
    assert!(spec.instances >= 1 && spec.max_concurrency >= 1 && spec.queue_capacity >= 1, "{spec:?}");
    assert!(spec.max_line_bytes >= 1024, "line limit {}", spec.max_line_bytes);
    assert!(!spec.timeouts.default.is_zero(), "default timeout");
    let limits = &spec.limits;
    assert!(limits.memory_max.is_none_or(|b| (1 << 20..=1 << 62).contains(&b)), "memoryMax {limits:?}");
    assert!(limits.core_size.is_none_or(|b| b <= 1 << 62), "coreSize {limits:?}");
    assert!(limits.pids_max.is_none_or(|n| (1..=4_194_304).contains(&n)), "pidsMax {limits:?}");
    assert!(limits.cpu_weight.is_none_or(|w| (1..=10_000).contains(&w)), "cpuWeight {limits:?}");
    assert!(limits.open_files.is_none_or(|n| n >= 1), "openFiles {limits:?}");
    for (task, t) in &spec.timeouts.per_task {
        assert!(!t.is_zero(), "timeout of {task}");
        assert_eq!(task.kind(), kind, "a {task} timeout on a {kind}");
    }
}

/// What a reader of the registry's problems sees.
fn outcome(parsed: &Parsed) -> (Result<&'static str, KeyProblem>, Vec<KeyProblem>) {
    let entry = match &parsed.entry {
        Ok(Entry::Runnable(_)) => Ok("runnable"),
        Ok(Entry::NotRunnable(_)) => Ok("not runnable"),
        Err(p) => Err(p.clone()),
    };
    (entry, parsed.warnings.clone())
}

/// `body` with every string inside `env` and `settings` replaced by another one.
fn with_other_strings(body: &Value) -> Value {
    fn replace(v: &mut Value) {
        match v {
            Value::String(s) => *s = format!("other-{}", s.len()),
            Value::Array(items) => items.iter_mut().for_each(replace),
            Value::Object(map) => map.values_mut().for_each(replace),
            _ => {}
        }
    }
    let mut body = body.clone();
    if let Value::Object(obj) = &mut body {
        for key in ["env", "settings"] {
            if let Some(v) = obj.get_mut(key) {
                replace(v);
            }
        }
    }
    body
}
